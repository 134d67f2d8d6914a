//! Subscribe + publish through a real server, parsed by an independent SSE
//! parser: the seed page's flow, routing isolation, topics, broadcast, tabs,
//! headers, and h2c.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{TestServer, Transport};

async fn seed_page_flow_user_123(t: Transport) {
    let server = TestServer::on(t).await;
    let mut page = server.subscribe("123").await;
    assert_eq!(page.headers["content-type"], "text/event-stream");
    assert_eq!(page.headers["cache-control"], "no-cache");
    assert_eq!(page.headers["x-accel-buffering"], "no");

    let message = json!({"from": "alice", "text": "hello \"bob\"\nline two", "n": [1, 2.5]});
    let id = server
        .publish_ok(json!({"user": "123", "data": message}))
        .await;

    let ev = page.next().await;
    assert_eq!(ev.event, "message", "default event type");
    assert_eq!(ev.id, id);
    let parsed: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(
        parsed, message,
        "JSON.parse(event.data) gives the published data"
    );
}

async fn preamble_sets_retry_and_resume_point(t: Transport) {
    let server = TestServer::on(t).await;
    let first = server
        .publish_ok(json!({"broadcast": true, "data": 0}))
        .await;
    let resp = server
        .http
        .get(server.url("/api/sse/subscribe/u"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["herald-resumed-after"], first.as_str());
    let mut body = resp.bytes_stream();
    use futures_util::StreamExt;
    let head = tokio::time::timeout(Duration::from_secs(5), body.next())
        .await
        .expect("headers and preamble flush at once")
        .unwrap()
        .unwrap();
    let head = String::from_utf8(head.to_vec()).unwrap();
    assert_eq!(head, format!(": herald\nretry: 3000\nid: {first}\n\n"));
}

async fn user_events_reach_only_that_user_and_all_its_tabs(t: Transport) {
    let server = TestServer::on(t).await;
    let mut a1 = server.subscribe("alice").await;
    let mut a2 = server.subscribe("alice").await;
    let mut b = server.subscribe("bob").await;

    server
        .publish_ok(json!({"user": "alice", "data": "for alice"}))
        .await;
    server
        .publish_ok(json!({"user": "bob", "data": "for bob"}))
        .await;

    assert_eq!(a1.next().await.data, r#""for alice""#);
    assert_eq!(a2.next().await.data, r#""for alice""#);
    assert_eq!(b.next().await.data, r#""for bob""#);
    a1.assert_quiet(Duration::from_millis(200)).await;
    a2.assert_quiet(Duration::from_millis(50)).await;
}

async fn topics_and_broadcast_reach_the_right_sets(t: Transport) {
    let server = TestServer::on(t).await;
    let mut news = server.subscribe("u1?topic=news").await;
    let mut both = server.subscribe("u2?topic=news&topic=sport").await;
    let mut none = server.subscribe("u3").await;

    server
        .publish_ok(json!({"topic": "sport", "event": "score", "data": {"home": 1}}))
        .await;
    server
        .publish_ok(json!({"topic": "news", "data": "n"}))
        .await;
    server
        .publish_ok(json!({"broadcast": true, "data": "all"}))
        .await;

    let ev = both.next().await;
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("score", r#"{"home":1}"#)
    );
    assert_eq!(both.next().await.data, r#""n""#);
    assert_eq!(both.next().await.data, r#""all""#);

    assert_eq!(news.next().await.data, r#""n""#);
    assert_eq!(news.next().await.data, r#""all""#);

    assert_eq!(none.next().await.data, r#""all""#);
    for c in [&mut news, &mut both, &mut none] {
        c.assert_quiet(Duration::from_millis(100)).await;
    }
}

async fn batch_publish_keeps_order_and_returns_ids(t: Transport) {
    let server = TestServer::on(t).await;
    let mut c = server.subscribe("u").await;
    let batch: Vec<_> = (0..50).map(|i| json!({"user": "u", "data": i})).collect();
    let (status, reply) = server.publish(serde_json::Value::Array(batch)).await;
    assert_eq!(status, 200);
    let ids: Vec<String> = reply["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 50);
    for (i, ev) in c.next_n(50).await.into_iter().enumerate() {
        assert_eq!(ev.data, i.to_string());
        assert_eq!(ev.id, ids[i]);
    }
}

async fn disconnect_unregisters(t: Transport) {
    let server = TestServer::on(t).await;
    let c = server.subscribe("gone?topic=t").await;
    server.wait_connections(1).await;
    drop(c);
    server.wait_connections(0).await;
    assert_eq!(server.fanout.registry().keys(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_streams_too() {
    let server = TestServer::start().await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .get(server.url("/api/sse/subscribe/h2user"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let mut c = support::SseClient::new(resp);
    // A second stream multiplexed on the same connection.
    let resp2 = h2
        .get(server.url("/api/sse/subscribe/h2user?topic=x"))
        .send()
        .await
        .unwrap();
    let mut c2 = support::SseClient::new(resp2);
    server
        .publish_ok(json!({"user": "h2user", "data": "over h2"}))
        .await;
    assert_eq!(c.next().await.data, r#""over h2""#);
    assert_eq!(c2.next().await.data, r#""over h2""#);
}

async fn write_coalescing_holds_a_busy_stream_for_the_window(t: Transport) {
    let window = Duration::from_millis(400);
    let server = TestServer::on_with(t, |c| c.streams.write_coalesce = Some(window)).await;
    let mut s = server.subscribe("c").await;

    // A quiet stream writes at once.
    let t = std::time::Instant::now();
    server.publish_ok(json!({"user": "c", "data": 0})).await;
    assert_eq!(s.next().await.data, "0");
    let first = t.elapsed();
    assert!(
        first < Duration::from_millis(300),
        "first event took {first:?}"
    );

    // Events right after a write wait out the window, then leave together,
    // in order and complete.
    for i in 1..=3 {
        server.publish_ok(json!({"user": "c", "data": i})).await;
    }
    let got: Vec<String> = s.next_n(3).await.into_iter().map(|e| e.data).collect();
    let held = t.elapsed();
    assert_eq!(got, ["1", "2", "3"]);
    assert!(held >= window, "held only {held:?}");
}

/// Events for one user published from several connections at once reach
/// each of its streams once each, in the order herald numbered them. On
/// herald's writer most go out as direct sends from the publishing request
/// (the stream idle), the rest through the stream's queue when one is in
/// flight: the two must never overtake each other.
async fn concurrent_publishes_for_one_user_arrive_once_in_order(t: Transport) {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 150;
    let server = std::sync::Arc::new(TestServer::on(t).await);
    // Read while publishing: the queues stay short.
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut tab = server.subscribe("u").await;
        readers.push(tokio::spawn(async move {
            let got = tab.next_n(PUBLISHERS * EACH).await;
            tab.assert_quiet(Duration::from_millis(200)).await;
            got
        }));
    }
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let server = server.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    let pad = "x".repeat(i * 37 % 3000);
                    let body = json!({"user": "u", "data": {"p": p, "i": i, "pad": pad}});
                    assert_eq!(server.publish(body).await.0, 200);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let seq = |id: &str| id.rsplit('-').next().unwrap().parse::<u64>().unwrap();
    for reader in readers {
        let got = reader.await.unwrap();
        let seqs: Vec<u64> = got.iter().map(|e| seq(&e.id)).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "ids out of order: {seqs:?}"
        );
        // Each publisher's own events in the order it sent them.
        for p in 0..PUBLISHERS {
            let mine: Vec<u64> = got
                .iter()
                .map(|e| serde_json::from_str::<serde_json::Value>(&e.data).unwrap())
                .filter(|v| v["p"] == p)
                .map(|v| v["i"].as_u64().unwrap())
                .collect();
            assert_eq!(mine, (0..EACH as u64).collect::<Vec<_>>(), "publisher {p}");
        }
    }
    if t == Transport::Herald {
        let direct = support::metric(&server.metrics(), "herald_events_sent_direct_total", None);
        assert!(direct > 0.0, "no direct sends");
    }
}

on_every_transport!(
    concurrent_publishes_for_one_user_arrive_once_in_order,
    seed_page_flow_user_123,
    preamble_sets_retry_and_resume_point,
    user_events_reach_only_that_user_and_all_its_tabs,
    topics_and_broadcast_reach_the_right_sets,
    batch_publish_keeps_order_and_returns_ids,
    disconnect_unregisters,
    write_coalescing_holds_a_busy_stream_for_the_window,
);
