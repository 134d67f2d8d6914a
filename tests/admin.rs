//! The admin API on `--admin-listen`: refused without its token and absent
//! from the API listener; closing a user's streams with a reason event
//! (exactly that user's); a block; maintenance; a drain at a given rate;
//! status counts; every action counted.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{eventually, metric, TestServer, WAIT};

const TOKEN: &str = "admin-token-for-tests";

async fn server() -> TestServer {
    TestServer::with(|c| {
        c.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        c.server.admin_token = Some(Arc::from(TOKEN.as_bytes()));
        c.shutdown.drain = Duration::from_millis(100);
    })
    .await
}

/// An admin request; returns status and JSON body.
async fn admin(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("http://{}/admin/{path}", s.admin_addr.unwrap());
    let mut req = s.http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn actions(s: &TestServer, action: &str) -> f64 {
    metric(
        &s.metrics(),
        "herald_admin_actions_total",
        Some(&format!("action=\"{action}\"")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token_and_its_listener() {
    let s = server().await;
    for token in [None, Some("wrong-token-of-some-length")] {
        let (status, body) = admin(&s, reqwest::Method::GET, "status", token, None).await;
        assert_eq!(status, 401, "{body}");
        assert!(body["error"].as_str().unwrap().contains("--admin-token"));
    }
    // Not on the API listener.
    let (status, _, _) = s.get("/admin/status").await;
    assert_eq!(status, 404);
    let (status, body) = admin(&s, reqwest::Method::GET, "status", Some(TOKEN), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["phase"], "serving");
    // Without a token configured, the API is off.
    let off =
        TestServer::with(|c| c.server.admin_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let (status, body) = admin(&off, reqwest::Method::GET, "status", Some(TOKEN), None).await;
    assert_eq!(status, 404, "{body}");
    // Bad bodies are refused, naming the problem.
    for (path, bad) in [
        ("users/u/close", json!({"reason": ""})),
        (
            "users/u/close",
            json!({"reason": "x", "block_seconds": 99_999_999}),
        ),
        ("users/u/close", json!({"why": "x"})),
        ("maintenance", json!({"seconds": 0})),
        ("drain", json!({"rate": 0})),
    ] {
        let (status, body) = admin(
            &s,
            reqwest::Method::POST,
            path,
            Some(TOKEN),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, 400, "{path} {bad}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_user_ends_exactly_its_streams_with_the_reason() {
    let s = server().await;
    let before = actions(&s, "close_user");
    let mut tabs = vec![s.subscribe("kicked").await, s.subscribe("kicked").await];
    let mut other = s.subscribe("bystander").await;
    s.wait_connections(3).await;
    let (_, status) = admin(&s, reqwest::Method::GET, "status", Some(TOKEN), None).await;
    assert_eq!(
        (status["streams"].as_u64(), status["users"].as_u64()),
        (Some(3), Some(2))
    );

    let (code, body) = admin(
        &s,
        reqwest::Method::POST,
        "users/kicked/close",
        Some(TOKEN),
        Some(json!({"reason": "logout", "block_seconds": 60})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["closed"], 2);
    for tab in &mut tabs {
        let events = tab.until_end().await;
        let last = events.last().unwrap();
        assert_eq!(last.event, "herald-closed");
        assert_eq!(
            serde_json::from_str::<Value>(&last.data).unwrap()["reason"],
            "logout"
        );
    }
    // The bystander is untouched.
    s.publish_ok(json!({"user": "bystander", "data": "still here"}))
        .await;
    assert_eq!(other.next().await.data, r#""still here""#);
    // Blocked: a new stream of the user is refused, saying why.
    let (status, _, text) = s.get("/api/sse/subscribe/kicked").await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("closed by the operator: logout"), "{text}");
    assert!(actions(&s, "close_user") > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_refuses_new_streams_and_keeps_open_ones() {
    let s = server().await;
    let mut open = s.subscribe("m").await;
    let (code, _) = admin(
        &s,
        reqwest::Method::POST,
        "maintenance",
        Some(TOKEN),
        Some(json!({"seconds": 600, "message": "database upgrade"})),
    )
    .await;
    assert_eq!(code, 200);
    let resp = s
        .http
        .get(s.url("/api/sse/subscribe/n"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((590..=600).contains(&retry), "{retry}");
    assert!(resp.text().await.unwrap().contains("database upgrade"));
    s.publish_ok(json!({"user": "m", "data": 1})).await;
    assert_eq!(open.next().await.data, "1");
    let (_, status) = admin(&s, reqwest::Method::GET, "status", Some(TOKEN), None).await;
    assert_eq!(status["phase"], "maintenance");
    let (code, _) = admin(
        &s,
        reqwest::Method::DELETE,
        "maintenance",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(code, 200);
    let _c = s.subscribe("n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_streams_at_the_rate_asked() {
    const STREAMS: usize = 40;
    const RATE: f64 = 20.0;
    let s = server().await;
    let mut clients = Vec::new();
    for i in 0..STREAMS {
        clients.push(s.subscribe(&format!("d{i}")).await);
    }
    s.wait_connections(STREAMS).await;
    let drain = || {
        admin(
            &s,
            reqwest::Method::POST,
            "drain",
            Some(TOKEN),
            Some(json!({"rate": RATE})),
        )
    };
    let t0 = Instant::now();
    let (code, body) = drain().await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["streams"], STREAMS);
    // Not ready, no new streams, a second drain refused.
    let admin_url = format!("http://{}/readyz", s.admin_addr.unwrap());
    assert_eq!(s.http.get(&admin_url).send().await.unwrap().status(), 503);
    let (status, _, _) = s.get("/api/sse/subscribe/late").await;
    assert_eq!(status, 503);
    let (code, _) = drain().await;
    assert_eq!(code, 409);
    // Each stream ends with a retry hint; record when.
    let mut ended = Vec::new();
    for c in &mut clients {
        let _ = tokio::time::timeout(WAIT, c.until_end()).await.unwrap();
        ended.push(t0.elapsed());
    }
    eventually(
        || s.fanout.registry().connections() == 0,
        "every stream closed",
    )
    .await;
    // 40 streams at 20/s: spread over ~2 s, not all at once.
    let last = *ended.iter().max().unwrap();
    assert!(
        last >= Duration::from_millis(1500),
        "drained in {last:?}, faster than the rate"
    );
    assert!(last <= Duration::from_secs(5), "drained in {last:?}");
    let early = ended
        .iter()
        .filter(|d| **d < Duration::from_millis(500))
        .count();
    assert!(
        early <= STREAMS / 2,
        "{early} of {STREAMS} ended in the first 0.5 s"
    );
    assert!(actions(&s, "drain") >= 1.0);
}
