//! Resume with `Last-Event-ID`: exactly the missed events, in order, then
//! live ones — also while a publisher keeps publishing across the seam — and
//! the named reset event when the id is older than the buffer.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::{TestServer, Transport};

async fn reconnect_gets_exactly_the_missed_events_then_live(t: Transport) {
    let server = TestServer::on(t).await;
    let mut c = server.subscribe("r?topic=t").await;
    for i in 0..3 {
        server.publish_ok(json!({"user": "r", "data": i})).await;
    }
    let seen = c.next_n(3).await;
    let last = seen[2].id.clone();
    drop(c);

    // Missed while away: some for us, some not.
    server.publish_ok(json!({"user": "r", "data": 3})).await;
    server
        .publish_ok(json!({"user": "other", "data": "x"}))
        .await;
    server.publish_ok(json!({"topic": "t", "data": 4})).await;
    server
        .publish_ok(json!({"topic": "nope", "data": "x"}))
        .await;
    server
        .publish_ok(json!({"broadcast": true, "data": 5}))
        .await;

    let mut c = server.subscribe_with("r?topic=t", Some(&last)).await;
    assert_eq!(c.headers["herald-resumed-after"], last.as_str());
    let replayed: Vec<String> = c.next_n(3).await.into_iter().map(|e| e.data).collect();
    assert_eq!(replayed, ["3", "4", "5"]);
    server.publish_ok(json!({"user": "r", "data": 6})).await;
    assert_eq!(c.next().await.data, "6");
    c.assert_quiet(Duration::from_millis(100)).await;
}

async fn last_event_id_query_parameter_works_like_the_header(t: Transport) {
    let server = TestServer::on(t).await;
    let first = server.publish_ok(json!({"user": "q", "data": 1})).await;
    server.publish_ok(json!({"user": "q", "data": 2})).await;
    let mut c = server.subscribe(&format!("q?lastEventId={first}")).await;
    assert_eq!(c.next().await.data, "2");
}

/// A publisher runs flat out while a client repeatedly disconnects and
/// resumes: across all sessions the client sees every event exactly once,
/// in order.
async fn no_gap_no_duplicate_at_the_seam_under_concurrent_publishing(t: Transport) {
    let server = Arc::new(TestServer::on(t).await);
    const TOTAL: u64 = 2000;
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let server = server.clone();
        let done = done.clone();
        tokio::spawn(async move {
            for i in 0..TOTAL {
                // Small batches so the seam falls at many points.
                let (status, _) = server.publish(json!({"user": "seam", "data": i})).await;
                assert_eq!(status, 200);
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    let mut got: Vec<u64> = Vec::new();
    let mut last: Option<String> = None;
    let mut sessions = 0;
    while got.len() < TOTAL as usize {
        sessions += 1;
        let mut c = server.subscribe_with("seam", last.as_deref()).await;
        if last.is_none() {
            // First session: the stream continues after the id in the header;
            // the events up to it are not ours to expect.
            let after = c.headers["herald-resumed-after"]
                .to_str()
                .unwrap()
                .to_owned();
            let start: u64 = after.rsplit('-').next().unwrap().parse().unwrap();
            got.extend(0..start);
            last = Some(after);
        }
        // Read a few, then drop the connection mid-stream.
        let take = if done.load(Ordering::SeqCst) {
            usize::MAX
        } else {
            37
        };
        let mut n = 0;
        while n < take && got.len() < TOTAL as usize {
            let ev = c.next().await;
            got.push(ev.data.parse().unwrap());
            last = Some(ev.id);
            n += 1;
        }
    }
    publisher.await.unwrap();
    assert!(
        sessions > 3,
        "the test must actually reconnect ({sessions} sessions)"
    );
    let first_bad = got.iter().enumerate().find(|(i, v)| **v != *i as u64);
    assert_eq!(
        first_bad, None,
        "every event exactly once, in order (index, value)"
    );
    assert_eq!(got.len(), TOTAL as usize);
}

async fn an_id_older_than_the_buffer_gets_the_reset_event(t: Transport) {
    let server = TestServer::on_with(t, |c| c.streams.replay.max_events = 5).await;
    let old = server.publish_ok(json!({"user": "z", "data": 0})).await;
    let mut latest = String::new();
    for i in 1..=10 {
        latest = server.publish_ok(json!({"user": "z", "data": i})).await;
    }
    let mut c = server.subscribe_with("z", Some(&old)).await;
    assert_eq!(
        c.headers["herald-resumed-after"],
        latest.as_str(),
        "not the requested id: a gap"
    );
    let reset = c.next().await;
    assert_eq!(reset.event, "herald-reset");
    assert_eq!(
        reset.id, latest,
        "the reset event carries the new resume point"
    );
    let body: serde_json::Value = serde_json::from_str(&reset.data).unwrap();
    assert_eq!(body["lastEventId"], old.as_str());
    assert_eq!(body["resumedAfter"], latest.as_str());
    // Then live.
    server
        .publish_ok(json!({"user": "z", "data": "live"}))
        .await;
    assert_eq!(c.next().await.data, r#""live""#);
}

async fn an_id_from_another_run_gets_the_reset_event(t: Transport) {
    let server = TestServer::on(t).await;
    let mut c = server.subscribe_with("z", Some("1-5")).await;
    assert_eq!(c.next().await.event, "herald-reset");
}

async fn events_older_than_max_age_are_not_replayed(t: Transport) {
    let server =
        TestServer::on_with(t, |c| c.streams.replay.max_age = Duration::from_millis(200)).await;
    let first = server.publish_ok(json!({"user": "age", "data": 1})).await;
    server.publish_ok(json!({"user": "age", "data": 2})).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut c = server.subscribe_with("age", Some(&first)).await;
    assert_eq!(c.next().await.event, "herald-reset");
}

/// An id herald cannot read (another system's, garbled) is a reset, never a
/// 400 (a 400 makes EventSource stop reconnecting for good).
async fn an_unreadable_id_gets_the_reset_event_and_the_stream(t: Transport) {
    let server = TestServer::on(t).await;
    let mut c = server.subscribe_with("z", Some("4711:abc:x")).await;
    let reset = c.next().await;
    assert_eq!(reset.event, "herald-reset");
    assert!(
        reset.data.contains("last-event-id-unreadable"),
        "{}",
        reset.data
    );
    server.publish_ok(json!({"user": "z", "data": "on"})).await;
    assert_eq!(c.next().await.data, r#""on""#);
}

/// `since=` starts a stream from a time (milliseconds since the epoch or
/// RFC 3339); Last-Event-ID wins over it.
async fn since_starts_a_stream_from_a_time(t: Transport) {
    let server = TestServer::on(t).await;
    server.publish_ok(json!({"user": "s", "data": 1})).await;
    let first = server.publish_ok(json!({"user": "s", "data": 2})).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let at = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.publish_ok(json!({"user": "s", "data": 3})).await;
    server.publish_ok(json!({"user": "s", "data": 4})).await;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let rfc = humantime::format_rfc3339_millis(at).to_string();
    for q in [format!("since={ms}"), format!("since={rfc}")] {
        let mut c = server.subscribe(&format!("s?{q}")).await;
        let got: Vec<String> = c.next_n(2).await.into_iter().map(|e| e.data).collect();
        assert_eq!(got, ["3", "4"], "{q}");
    }
    // since=1 alone would give all four.
    let mut c = server.subscribe_with("s?since=1", Some(&first)).await;
    let got: Vec<String> = c.next_n(2).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, ["3", "4"], "the id wins: events after 2");
    let (status, _, body) = server.get("/api/sse/subscribe/s?since=yesterday").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("RFC 3339"), "{body}");
}

on_every_transport!(
    an_unreadable_id_gets_the_reset_event_and_the_stream,
    since_starts_a_stream_from_a_time,
    reconnect_gets_exactly_the_missed_events_then_live,
    last_event_id_query_parameter_works_like_the_header,
    no_gap_no_duplicate_at_the_seam_under_concurrent_publishing,
    an_id_older_than_the_buffer_gets_the_reset_event,
    an_id_from_another_run_gets_the_reset_event,
    events_older_than_max_age_are_not_replayed,
);
