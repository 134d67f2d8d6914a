//! Health, readiness and the metrics page, with exact figures: this binary
//! holds this one test, so the process-wide recorder counts only what it
//! does.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_metrics() {
    let server = TestServer::start().await;
    assert_eq!(server.get("/healthz").await.0, 200);
    assert_eq!(server.get("/readyz").await.0, 200);
    let before = server.get("/metrics").await.2;
    let mut c = server.subscribe("m").await;
    server.publish_ok(json!({"user": "m", "data": 1})).await;
    c.next().await;
    // Past the gauges' refresh interval.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, headers, page) = server.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(
        page.contains("# HELP herald_events_ingested_total"),
        "{page}"
    );
    let m = |page: &str, name: &str, label: Option<&str>| support::metric(page, name, label);
    let delta = |name: &str, label: Option<&str>| m(&page, name, label) - m(&before, name, label);
    assert_eq!(
        delta("herald_events_ingested_total", Some("source=\"http\"")),
        1.0
    );
    assert_eq!(delta("herald_sse_connections_opened_total", None), 1.0);
    assert_eq!(m(&page, "herald_sse_connections", None), 1.0);
    // Written frames are summed at scrape time; the first write of a stream
    // is always a lag sample.
    assert_eq!(delta("herald_events_delivered_total", None), 1.0, "{page}");
    assert_eq!(delta("herald_delivery_lag_seconds_count", None), 1.0);
    assert!(m(&page, "herald_process_resident_memory_bytes", None) > 1e6);
    assert!(m(&page, "herald_process_open_fds", None) >= 3.0);
    assert!(m(&page, "herald_process_max_fds", None) >= 64.0);
    // Every reason-labelled family is there from the start, at zero.
    for series in [
        "herald_limited_total{reason=\"per_ip\"} 0",
        "herald_auth_denied_total{endpoint=\"publish\",reason=\"invalid\"} 0",
        "herald_sse_connections_closed_total{reason=\"protocol\"} 0",
        "herald_publish_rejected_total 0",
    ] {
        assert!(page.contains(series), "{series} missing:\n{page}");
    }
}
