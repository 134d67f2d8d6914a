//! A wave of slow closes: 1,000 streams that read nothing overflow at once
//! (one batch bursts past each one's queue) while a publisher keeps
//! publishing. Every publish succeeds, the
//! healthy streams lose nothing, and the log holds a bounded number of lines
//! (slow closes are logged after every lock is released, at most one line a
//! second with a count, not one line per stream under the dispatch lock).
//!
//! Its own test binary: it installs the process's log subscriber.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::{eventually, Lines, TestServer};

const STALLED: usize = 1000;
const HEALTHY: usize = 8;
const EVENTS: usize = 200;
/// Frames a stream's queue holds; one more overflows it (two more in one
/// publish: its first event may be written straight to the idle stream's
/// socket, a direct send, before the rest are queued).
const QUEUE: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_of_slow_closes_costs_publishers_nothing_and_logs_little() {
    let lines = Lines::default();
    let sink = lines.clone();
    tracing_subscriber::fmt()
        .with_env_filter("herald=info")
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .init();
    let server = Arc::new(
        TestServer::with(|c| {
            c.streams.queue.max_frames = QUEUE;
            // Publisher backpressure would hold the publisher while these
            // queues are deep; this test is about the closes themselves.
            c.publish.backpressure = None;
        })
        .await,
    );

    // Streams that send their request and then read nothing.
    let mut stalled = Vec::new();
    for i in 0..STALLED {
        stalled.push(server.stalled(&format!("stalled-{i}"), None).await);
    }
    let mut healthy = Vec::new();
    for i in 0..HEALTHY {
        healthy.push(server.subscribe(&format!("healthy-{i}?topic=live")).await);
    }
    server.wait_connections(STALLED + HEALTHY).await;
    let progress = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = healthy
        .into_iter()
        .map(|mut c| {
            let progress = progress.clone();
            tokio::spawn(async move {
                for n in 0..EVENTS {
                    let ev = c.next().await;
                    let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
                    assert_eq!(v["n"], n, "every event, in order");
                    progress.fetch_add(1, Ordering::Relaxed);
                }
                c
            })
        })
        .collect();

    // The publisher keeps publishing to the healthy streams (paced to stay
    // within their queues); halfway, one batch overflows every stalled
    // stream's queue at once.
    let wave = {
        let server = server.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            eventually(
                || progress.load(Ordering::Relaxed) >= HEALTHY * EVENTS / 2,
                "halfway",
            )
            .await;
            let burst: Vec<_> = (0..STALLED)
                .flat_map(|i| {
                    (0..=QUEUE + 1).map(move |k| json!({"user": format!("stalled-{i}"), "data": k}))
                })
                .collect();
            let (status, reply) = server.publish(serde_json::Value::Array(burst)).await;
            assert_eq!(status, 200, "the wave's publish: {reply}");
        })
    };
    for n in 0..EVENTS {
        eventually(
            || progress.load(Ordering::Relaxed) + HEALTHY * (QUEUE / 2) >= HEALTHY * n,
            "healthy readers",
        )
        .await;
        let (status, reply) = server
            .publish(json!({"topic": "live", "data": {"n": n}}))
            .await;
        assert_eq!(status, 200, "publish {n}: {reply}");
    }
    wave.await.unwrap();
    let mut kept = Vec::new();
    for r in readers {
        kept.push(
            tokio::time::timeout(Duration::from_secs(60), r)
                .await
                .expect("healthy streams keep up")
                .unwrap(),
        );
    }
    let registry = server.fanout.registry().clone();
    eventually(
        || registry.connections() == HEALTHY,
        "the stalled streams closed",
    )
    .await;

    let log = lines.text();
    let slow_lines = log
        .lines()
        .filter(|l| l.contains("closing slow SSE connections"))
        .count();
    let all_lines = log.lines().count();
    eprintln!("{STALLED} slow closes logged in {slow_lines} lines ({all_lines} log lines in all)");
    assert!(slow_lines >= 1, "the wave is logged: {log}");
    assert!(
        slow_lines <= 3,
        "{slow_lines} lines for {STALLED} slow closes"
    );
    assert!(all_lines <= 20, "{all_lines} log lines:\n{log}");
    drop((stalled, kept));
}
