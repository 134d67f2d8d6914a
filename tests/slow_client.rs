//! A client that stops reading is closed once its queue overflows, while a
//! healthy client on the same events receives every one of them, in order,
//! and the server's memory stays bounded.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::{eventually, metric, TestServer, Transport};
use tokio::io::AsyncReadExt;

const PAYLOAD: usize = 32 * 1024;
const BATCH: usize = 4; // 128 KiB per burst: under the 256 KiB queue bound
const BATCHES: usize = 256; // 1024 events, 32 MiB in all

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn stalled_client_is_closed_healthy_client_gets_everything(t: Transport) {
    // The counters below are process-wide: one transport at a time.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let _ = tracing_subscriber::fmt()
        .with_env_filter("herald=debug")
        .with_test_writer()
        .try_init();
    let server = TestServer::on_with(t, |c| {
        c.streams.queue.max_frames = 64;
        c.streams.queue.max_bytes = 256 * 1024;
        c.streams.replay.max_bytes = 1024 * 1024;
    })
    .await;
    let (_, _, page) = server.get("/metrics").await;
    let slow_before = metric(
        &page,
        "herald_sse_connections_closed_total",
        Some("reason=\"slow\""),
    );

    // The stalled client: tiny receive buffer, reads the response head, then
    // never reads again.
    let mut stalled = server.stalled("stalled", None).await;
    let mut head = [0u8; 512];
    let n = stalled.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));

    let healthy = server.subscribe("healthy").await;
    server.wait_connections(2).await;
    // How many events the healthy client has read: the publisher stays at
    // most one batch ahead of it, so "healthy" means keeping up, not
    // out-running a debug-build parser.
    let progress = Arc::new(AtomicUsize::new(0));
    let seen = progress.clone();
    let reader = tokio::spawn(async move {
        let mut healthy = healthy;
        for i in 0..BATCH * BATCHES {
            seen.store(i, Ordering::Release);
            let ev = healthy.next().await;
            let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
            assert_eq!(v["n"], i, "healthy client: every event, in order");
        }
        // Kept open until the checks below are done.
        healthy
    });

    let rss_before = rss_kib();
    let pad = "x".repeat(PAYLOAD);
    for b in 0..BATCHES {
        let behind = b.saturating_sub(1) * BATCH;
        eventually(
            || progress.load(Ordering::Acquire) >= behind,
            "healthy reader",
        )
        .await;
        let batch: Vec<_> = (0..BATCH)
            .map(|i| json!({"broadcast": true, "data": {"n": b * BATCH + i, "pad": pad}}))
            .collect();
        let (status, reply) = server.publish(serde_json::Value::Array(batch)).await;
        assert_eq!(status, 200, "{reply}");
    }
    let _healthy = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("healthy client kept up")
        .unwrap();
    let rss_after = rss_kib();

    // The stalled connection was closed by the server, for being slow.
    server.wait_connections(1).await;
    let registry = server.fanout.registry().clone();
    eventually(
        || registry.connections() == 1,
        "stalled client unregistered",
    )
    .await;
    let (_, _, page) = server.get("/metrics").await;
    let slow_after = metric(
        &page,
        "herald_sse_connections_closed_total",
        Some("reason=\"slow\""),
    );
    assert_eq!(slow_after - slow_before, 1.0, "closed and counted as slow");
    assert!(
        metric(
            &page,
            "herald_events_dropped_total",
            Some("reason=\"slow\"")
        ) >= 1.0
    );

    // Reading now drains what the kernel buffered, then hits the close.
    let mut sink = vec![0u8; 1 << 16];
    let mut total = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("server did not close the stalled connection"),
        }
    }
    let published = (PAYLOAD * BATCH * BATCHES) as u64;
    assert!(
        (total as u64) < published / 2,
        "the stalled client got {total} of {published} bytes: it should have been cut off early"
    );

    // 32 MiB went out; the stalled client's share was never held for it.
    let grown_kib = rss_after.saturating_sub(rss_before);
    assert!(
        grown_kib < 24 * 1024,
        "RSS grew by {grown_kib} KiB while publishing {} KiB",
        published / 1024
    );
    eprintln!("stalled client received {total} bytes before the close; RSS grew {grown_kib} KiB");
}

on_h1_transports!(stalled_client_is_closed_healthy_client_gets_everything);
