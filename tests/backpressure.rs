//! Publisher backpressure holds publishers only while herald itself is
//! behind (deep queues *and* a runtime late to run its writers), never
//! because some clients stopped reading: those overflow and close as slow.
//!
//! "Deep" is produced without load: with `--write-coalesce 1s` a stream
//! writes its first event at once and then holds later ones for a second,
//! so a few quick publishes leave every queue deep while every client is
//! healthy. "Late" is what the runtime's lag probe records; the tests that
//! need herald behind record a late wake-up the way the probe would
//! (`Fanout::record_lag`), and it holds for the probe's 100 ms window.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{metric, SseClient, TestServer, Transport};

/// More than the fewest deep streams that count as congestion (32).
const STREAMS: usize = 40;

/// A late wake-up of the lag probe: herald's runtime is behind.
const LATE: Duration = Duration::from_millis(500);

async fn deep(t: Transport, backpressure: Duration) -> (TestServer, Vec<SseClient>) {
    let server = TestServer::on_with(t, |c| {
        c.streams.write_coalesce = Some(Duration::from_secs(1));
        c.publish.backpressure = (!backpressure.is_zero()).then_some(backpressure);
        // Deep from 4 queued frames; overflow (slow) at 16.
        c.streams.queue.max_frames = 16;
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..STREAMS {
        clients.push(server.subscribe(&format!("u{i}")).await);
    }
    // Written at once (quiet streams); opens every stream's window.
    server
        .publish_ok(json!({"broadcast": true, "data": 0}))
        .await;
    for c in &mut clients {
        assert_eq!(c.next().await.data, "0");
    }
    // Held by the window: every queue is now deep.
    let (status, reply) = server
        .publish(json!([
            {"broadcast": true, "data": 1}, {"broadcast": true, "data": 2},
            {"broadcast": true, "data": 3}, {"broadcast": true, "data": 4},
            {"broadcast": true, "data": 5}
        ]))
        .await;
    assert_eq!(status, 200, "{reply}");
    // Past the cached sample's lifetime.
    tokio::time::sleep(Duration::from_millis(20)).await;
    (server, clients)
}

async fn counter(server: &TestServer, outcome: &str) -> f64 {
    metric(
        &server.metrics(),
        "herald_publish_backpressure_total",
        Some(&format!("outcome=\"{outcome}\"")),
    )
}

async fn a_publish_waits_while_herald_is_behind_and_nothing_is_lost(t: Transport) {
    let (server, mut clients) = deep(t, Duration::from_secs(10)).await;
    let before = counter(&server, "waited").await;
    server.fanout.record_lag(LATE);
    let t = Instant::now();
    server
        .publish_ok(json!({"broadcast": true, "data": 6}))
        .await;
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(20), "{waited:?}");
    assert!(counter(&server, "waited").await > before);
    for c in &mut clients {
        let got: Vec<String> = c.next_n(6).await.into_iter().map(|e| e.data).collect();
        assert_eq!(got, ["1", "2", "3", "4", "5", "6"]);
    }
    assert_eq!(server.fanout.registry().connections(), STREAMS);
}

async fn past_the_limit_a_publish_is_refused_with_a_503_and_publishes_nothing(t: Transport) {
    let (server, mut clients) = deep(t, Duration::from_millis(30)).await;
    server.fanout.record_lag(LATE);
    let resp = server
        .http
        .post(server.url("/api/publish"))
        .header("content-type", "application/json")
        .body(json!({"broadcast": true, "data": 100}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains("behind on delivery"), "{msg}");
    assert!(msg.contains("nothing was published"), "{msg}");
    assert!(counter(&server, "refused").await >= 1.0);

    // Once the streams drain, publishing works again, and the refused
    // event never reached anyone.
    for c in &mut clients {
        let got: Vec<String> = c.next_n(5).await.into_iter().map(|e| e.data).collect();
        assert_eq!(got, ["1", "2", "3", "4", "5"]);
    }
    server
        .publish_ok(json!({"broadcast": true, "data": 101}))
        .await;
    for c in &mut clients {
        assert_eq!(c.next().await.data, "101");
    }
    assert_eq!(server.fanout.registry().connections(), STREAMS);
}

async fn deep_queues_alone_never_hold_a_publish(t: Transport) {
    // Deep queues, but the runtime is on time: clients holding frames is
    // not herald being behind.
    let (server, mut clients) = deep(t, Duration::from_secs(10)).await;
    let t = Instant::now();
    server
        .publish_ok(json!({"broadcast": true, "data": 6}))
        .await;
    assert!(
        // Held would mean until the 1 s window ends.
        t.elapsed() < Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    for c in &mut clients {
        let got: Vec<String> = c.next_n(6).await.into_iter().map(|e| e.data).collect();
        assert_eq!(got, ["1", "2", "3", "4", "5", "6"]);
    }
}

async fn with_backpressure_off_a_publish_is_never_held(t: Transport) {
    let (server, mut clients) = deep(t, Duration::ZERO).await;
    server.fanout.record_lag(LATE);
    let t = Instant::now();
    server
        .publish_ok(json!({"broadcast": true, "data": 6}))
        .await;
    assert!(
        t.elapsed() < Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    for c in &mut clients {
        let got: Vec<String> = c.next_n(6).await.into_iter().map(|e| e.data).collect();
        assert_eq!(got, ["1", "2", "3", "4", "5", "6"]);
    }
}

on_every_transport!(
    a_publish_waits_while_herald_is_behind_and_nothing_is_lost,
    past_the_limit_a_publish_is_refused_with_a_503_and_publishes_nothing,
    deep_queues_alone_never_hold_a_publish,
    with_backpressure_off_a_publish_is_never_held,
);
