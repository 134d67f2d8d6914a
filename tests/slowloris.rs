//! Slowloris, every way it used to work: a client that never finishes its
//! first request, over any protocol, is closed within
//! `--header-read-timeout` of connecting; a connection with no request open
//! is closed after `--idle-timeout`; a drain does not wait for either.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use std::time::{Duration, Instant};

use support::TestServer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const HEAD: Duration = Duration::from_millis(500);
const IDLE: Duration = Duration::from_millis(700);
/// Generous bound on "closed at the deadline".
const SLACK: Duration = Duration::from_millis(1500);

const CERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/tls-cert.pem");
const CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/tls-ca.pem");
const KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/tls-key.pem");

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

async fn server(tls: bool) -> TestServer {
    TestServer::with(|c| {
        c.server.header_read_timeout = HEAD;
        c.server.idle_timeout = IDLE;
        if tls {
            c.server.tls = Some(herald::tls::load(CERT, KEY).unwrap());
        }
    })
    .await
}

/// Reads (and discards) until the server closes; how long that took.
async fn closed_after<S: AsyncRead + Unpin>(s: &mut S, since: Instant) -> Duration {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server held the connection for 15 s"),
        }
    }
}

async fn tls_connect(s: &TestServer, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(CA).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap()
}

async fn write<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) {
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_first_request_is_closed_within_the_head_timeout() {
    let s = server(false).await;
    // One byte of the HTTP/2 preface (hyper's protocol detection waits for
    // the rest), the whole preface and SETTINGS with no stream, half an
    // HTTP/1.1 head.
    for (what, bytes) in [
        ("a preface prefix", &b"P"[..]),
        ("h2c with no stream", H2_PREFACE),
        ("half a head", b"GET /api/sse/subscribe/u HTTP/1.1\r\nhost"),
    ] {
        let t = Instant::now();
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        write(&mut c, bytes).await;
        let took = closed_after(&mut c, t).await;
        assert!(took >= HEAD - Duration::from_millis(50), "{what}: {took:?}");
        // One deadline from accept, not one per stage (once up to twice).
        assert!(
            took < HEAD + Duration::from_millis(400),
            "{what}: held {took:?}"
        );
    }
    // Nothing at all.
    let t = Instant::now();
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    assert!(closed_after(&mut c, t).await < SLACK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tls_client_is_closed_within_the_head_timeout() {
    let s = server(true).await;
    // The handshake done, then nothing (HTTP/1.1), or an h2 preface and no
    // stream.
    let t = Instant::now();
    let mut c = tls_connect(&s, b"http/1.1").await;
    assert!(closed_after(&mut c, t).await < SLACK);
    let t = Instant::now();
    let mut c = tls_connect(&s, b"h2").await;
    write(&mut c, H2_PREFACE).await;
    assert!(closed_after(&mut c, t).await < SLACK);
    // A handshake never finished.
    let t = Instant::now();
    let mut raw = TcpStream::connect(s.addr).await.unwrap();
    write(&mut raw, b"\x16\x03\x01").await;
    assert!(closed_after(&mut raw, t).await < SLACK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_no_request_open_is_closed_after_the_idle_timeout() {
    let s = server(false).await;
    // HTTP/1.1 keep-alive after one answered request.
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    write(&mut c, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Waiting for its next request head is bounded by the head timeout
    // (hyper's timer, the shorter here).
    let t = Instant::now();
    let took = closed_after(&mut c, t).await;
    assert!(
        took >= HEAD - Duration::from_millis(50) && took < HEAD + SLACK,
        "{took:?}"
    );

    // h2c: a stream that ended leaves the connection idle, closed after
    // the idle timeout.
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(s.url("/healthz")).body(()).unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        chunk.unwrap();
    }
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), conn)
        .await
        .expect("the server closed the idle h2 connection")
        .unwrap()
        .ok();
    let took = t.elapsed();
    assert!(
        took >= IDLE - Duration::from_millis(50) && took < IDLE + SLACK,
        "{took:?}"
    );
    drop(send);

    // While a stream is open the connection is not idle.
    let h2 = support::client_for(support::Transport::H2c);
    let mut open = support::SseClient::new(
        h2.get(s.url("/api/sse/subscribe/busy"))
            .send()
            .await
            .unwrap(),
    );
    tokio::time::sleep(IDLE * 2).await;
    s.publish_ok(serde_json::json!({"user": "busy", "data": 1}))
        .await;
    assert_eq!(
        open.next().await.data,
        "1",
        "an open stream keeps its connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_does_not_wait_for_connections_without_a_request() {
    let s = TestServer::with(|c| {
        c.server.header_read_timeout = Duration::from_secs(30);
        c.server.idle_timeout = Duration::from_secs(30);
        c.shutdown.deadline = Duration::from_secs(20);
    })
    .await;
    let mut idle = Vec::new();
    for bytes in [
        &b"P"[..],
        H2_PREFACE,
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
    ] {
        let mut c = TcpStream::connect(s.addr).await.unwrap();
        write(&mut c, bytes).await;
        idle.push(c);
    }
    s.wait_connections(0).await;
    support::eventually(|| s.http_connections().0 == 3, "three connections").await;
    let took = s.shutdown().await;
    assert!(took < Duration::from_secs(3), "the drain waited {took:?}");
    drop(idle);
}
