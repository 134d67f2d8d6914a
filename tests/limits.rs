//! Each admission limit tripped: the status code and `Retry-After` the
//! client sees, the `herald_limited_total{reason}` counter, and the server
//! still serving everyone else afterwards.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::{metric, SseClient, TestServer, Transport, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Counters are process-wide; tests compare before and after. Read from the
/// recorder directly: a scrape would itself be a (limited) connection.
async fn limited(s: &TestServer, reason: &str) -> f64 {
    let page = s.metrics();
    metric(
        &page,
        "herald_limited_total",
        Some(&format!("reason=\"{reason}\"")),
    )
}

/// Reads what the server sends until it closes (or `WAIT`).
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn still_serves(s: &TestServer) {
    let mut c = s.subscribe("someone-else").await;
    s.publish_ok(json!({"user": "someone-else", "data": "ok"}))
        .await;
    assert_eq!(c.next().await.data, r#""ok""#);
}

async fn streams_per_user(t: Transport) {
    let s = TestServer::on_with(t, |c| {
        c.limits.streams_per_user = std::num::NonZeroUsize::new(2)
    })
    .await;
    let before = limited(&s, "per_user").await;
    let a = s.subscribe("u").await;
    let _b = s.subscribe("u").await;
    let third = s
        .http
        .get(s.url("/api/sse/subscribe/u"))
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 429);
    assert_eq!(third.headers()["retry-after"], "5");
    assert!(third
        .text()
        .await
        .unwrap()
        .contains("--max-streams-per-user"));
    assert!(limited(&s, "per_user").await > before);
    drop(a);
    s.wait_connections(1).await;
    let _c = s.subscribe("u").await;
    still_serves(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip() {
    let s =
        TestServer::with(|c| c.limits.connections_per_ip = std::num::NonZeroUsize::new(3)).await;
    let before = limited(&s, "per_ip").await;
    let src = "127.0.0.7".parse().unwrap();
    let connect = || async move {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(std::net::SocketAddr::new(src, 0)).unwrap();
        let mut c = sock.connect(s.addr).await.unwrap();
        c.write_all(b"GET /api/sse/subscribe/ip HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        c
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect().await);
    }
    s.wait_connections(3).await;
    let mut fourth = connect().await;
    let reply = read_to_close(&mut fourth).await;
    assert!(reply.starts_with("HTTP/1.1 429"), "{reply}");
    assert!(reply.contains("retry-after: 5") && reply.contains("--max-connections-per-ip"));
    assert!(limited(&s, "per_ip").await > before);
    // Other addresses are not affected.
    still_serves(&s).await;
    drop(held);
}

/// A connection from `src` sending `request`; with `head`, the response
/// head read (up to its blank line).
async fn from(s: &TestServer, src: &str, request: String) -> (TcpStream, String) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(std::net::SocketAddr::new(src.parse().unwrap(), 0))
        .unwrap();
    let mut c = sock.connect(s.addr).await.unwrap();
    c.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            match c.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(WAIT, read).await;
    (c, String::from_utf8_lossy(&head).into_owned())
}

fn subscribe_via(forwarded: &str) -> String {
    format!("GET /api/sse/subscribe/p HTTP/1.1\r\nhost: x\r\n{forwarded}\r\n")
}

/// Behind a trusted proxy (127.0.0.9), streams are counted per forwarded
/// client address, not per the proxy's; anyone else's forwarding headers
/// are ignored, however they vary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_count_streams_per_forwarded_client() {
    let s = TestServer::with(|c| {
        c.limits.connections_per_ip = std::num::NonZeroUsize::new(2);
        c.proxies = herald::forwarded::TrustedProxies::new(vec!["127.0.0.9/32".parse().unwrap()]);
    })
    .await;
    let before = limited(&s, "per_ip").await;
    let mut held = Vec::new();
    // Through the proxy: two clients, two streams each (four connections
    // from the proxy's one address, past the per-address limit of 2). The
    // client's own prepended hop is not believed.
    for client in ["203.0.113.1", "203.0.113.2"] {
        for fake in ["6.6.6.6", "7.7.7.7"] {
            let xff = format!("x-forwarded-for: {fake}, {client}\r\n");
            let (c, head) = from(&s, "127.0.0.9", subscribe_via(&xff)).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{client}: {head}");
            held.push(c);
        }
    }
    // A third stream of the first client, whatever it prepends: refused at
    // admission, by its address.
    let xff = "x-forwarded-for: 8.8.8.8, 203.0.113.1\r\n";
    let (_c, head) = from(&s, "127.0.0.9", subscribe_via(xff)).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    let (_c, head) = from(
        &s,
        "127.0.0.9",
        subscribe_via("forwarded: for=203.0.113.1\r\n"),
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.1 429"),
        "Forwarded names the same client: {head}"
    );
    // A third client through the proxy still gets in.
    let (c, head) = from(
        &s,
        "127.0.0.9",
        subscribe_via("forwarded: for=203.0.113.3\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    held.push(c);

    // Not a trusted proxy: spoofed headers change nothing; the third
    // connection from 127.0.0.10 is refused whatever it claims.
    for (i, spoof) in ["203.0.113.50", "203.0.113.51", "203.0.113.52"]
        .iter()
        .enumerate()
    {
        let xff = format!("x-forwarded-for: {spoof}\r\nforwarded: for={spoof}\r\n");
        let (c, head) = from(&s, "127.0.0.10", subscribe_via(&xff)).await;
        if i < 2 {
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            held.push(c);
        } else {
            assert!(head.starts_with("HTTP/1.1 429"), "{head}");
        }
    }
    assert!(limited(&s, "per_ip").await >= before + 3.0);
    still_serves(&s).await;
    drop(held);
}

/// An open publisher is counted by its forwarded address behind a trusted
/// proxy, by its socket address otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_count_open_publishers_per_forwarded_client() {
    let s = TestServer::with(|c| {
        c.limits.publish_rate = Some(0.5);
        c.proxies = herald::forwarded::TrustedProxies::new(vec!["127.0.0.9/32".parse().unwrap()]);
    })
    .await;
    let publish = |src: &'static str, xff: &'static str| {
        let body = r#"{"broadcast":true,"data":1}"#;
        let req = format!(
            "POST /api/publish HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\nx-forwarded-for: {xff}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let s = &s;
        async move {
            let (_c, head) = from(s, src, req).await;
            head.split(' ').nth(1).unwrap_or_default().to_owned()
        }
    };
    // Through the proxy: one request each for two clients, then the first
    // client again (past its rate).
    assert_eq!(publish("127.0.0.9", "198.51.100.1").await, "200");
    assert_eq!(publish("127.0.0.9", "198.51.100.2").await, "200");
    assert_eq!(publish("127.0.0.9", "6.6.6.6, 198.51.100.1").await, "429");
    // Directly: a new claimed address each time is still one publisher.
    assert_eq!(publish("127.0.0.11", "198.51.100.3").await, "200");
    assert_eq!(publish("127.0.0.11", "198.51.100.4").await, "429");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_second() {
    let s = TestServer::with(|c| c.limits.connect_rate = Some(5.0)).await;
    let before = limited(&s, "connect_rate").await;
    let mut refused = 0;
    for _ in 0..20 {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let reply = read_to_close(&mut c).await;
        if reply.starts_with("HTTP/1.1 503") {
            assert!(reply.contains("retry-after: 1") && reply.contains("--max-connect-rate"));
            refused += 1;
        } else {
            assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        }
    }
    assert!(refused >= 10, "only {refused} of 20 refused at 5/s");
    assert!(limited(&s, "connect_rate").await - before >= refused as f64);
    tokio::time::sleep(Duration::from_millis(400)).await;
    still_serves(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_requests_and_bytes_per_publisher() {
    let s = TestServer::with(|c| c.limits.publish_rate = Some(2.0)).await;
    let before = limited(&s, "publish_rate").await;
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for i in 0..4 {
            v.push(s.publish(json!({"broadcast": true, "data": i})).await.0);
        }
        v
    };
    assert_eq!(&statuses[..2], [200, 200]);
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    let resp = s
        .http
        .post(s.url("/api/publish"))
        .header("content-type", "application/json")
        .body(json!({"broadcast": true, "data": 9}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(resp.text().await.unwrap().contains("--publish-rate"));
    assert!(limited(&s, "publish_rate").await > before);

    let s = TestServer::with(|c| c.limits.publish_bytes_rate = Some(1000.0)).await;
    let before = limited(&s, "publish_bytes").await;
    let big = "x".repeat(700);
    assert_eq!(
        s.publish(json!({"broadcast": true, "data": big})).await.0,
        200
    );
    let (status, reply) = s.publish(json!({"broadcast": true, "data": big})).await;
    assert_eq!(status, 429, "{reply}");
    assert!(reply["error"]
        .as_str()
        .unwrap()
        .contains("--publish-bytes-rate"));
    assert!(limited(&s, "publish_bytes").await > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let s = TestServer::with(|c| c.server.header_read_timeout = Duration::from_millis(500)).await;
    let before = limited(&s, "header_timeout").await;
    // One byte every 100 ms: never a complete head before the timeout.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let t = std::time::Instant::now();
    let request = b"GET /api/sse/subscribe/trickle HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut closed = false;
    for b in request {
        if c.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(1), c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "a trickled head was served");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(limited(&s, "header_timeout").await > before);

    // A head past --max-header-bytes gets a 431.
    let huge = format!(
        "GET /api/sse/subscribe/u HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let reply = s.raw(huge.as_bytes()).await;
    assert!(
        reply.starts_with("HTTP/1.1 431")
            && reply.contains("application/json")
            && reply.contains("--max-header-bytes"),
        "{}",
        &reply[..reply.len().min(200)]
    );
    still_serves(&s).await;
}

async fn a_peer_that_stops_reading_is_closed_by_the_write_timeout(t: Transport) {
    let s = TestServer::on_with(t, |c| {
        c.server.write_timeout = Some(Duration::from_millis(300));
        // Big enough queues that the write timeout, not the overflow, acts.
        c.streams.queue.max_frames = 100_000;
        c.streams.queue.max_bytes = 256 << 20;
        c.streams.replay.max_bytes = 1 << 20;
    })
    .await;
    let before = limited(&s, "write_timeout").await;
    let timed_out = |page: &str| {
        metric(
            page,
            "herald_sse_connections_closed_total",
            Some("reason=\"write_timeout\""),
        )
    };
    let timed_out_before = timed_out(&s.metrics());
    let mut stalled = s.stalled("stalled", None).await;
    let mut head = [0u8; 256];
    let _ = stalled.read(&mut head).await.unwrap();
    s.wait_connections(1).await;
    let chunk = "y".repeat(64 * 1024);
    let mut closed = false;
    for _ in 0..400 {
        s.publish_ok(json!({"user": "stalled", "data": chunk}))
            .await;
        if s.fanout.registry().connections() == 0 {
            closed = true;
            break;
        }
    }
    if !closed {
        support::eventually(
            || s.fanout.registry().connections() == 0,
            "the stalled stream to be closed",
        )
        .await;
    }
    assert!(limited(&s, "write_timeout").await > before);
    assert!(
        timed_out(&s.metrics()) > timed_out_before,
        "the stream's close is counted as write_timeout, not client"
    );
    still_serves(&s).await;
    drop(stalled);
}

async fn limits_are_off_by_default(t: Transport) {
    let s = TestServer::on(t).await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        streams.push(s.subscribe("many").await);
    }
    s.publish_ok(json!({"user": "many", "data": 1})).await;
    for c in &mut streams {
        assert_eq!(c.next().await.data, "1");
    }
    let _: Vec<SseClient> = streams;
}

on_h1_transports!(a_peer_that_stops_reading_is_closed_by_the_write_timeout);

on_every_transport!(streams_per_user, limits_are_off_by_default,);
