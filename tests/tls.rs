//! HTTPS with ALPN: h2 multiplexes several streams over one connection,
//! HTTP/1.1 works too, and a plain-text client on the TLS port is refused
//! without harming anyone else. Uses the self-signed test certificate in
//! `tests/keys/`.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::{SseClient, TestServer};

const CERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/tls-cert.pem");
const CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/tls-ca.pem");
const KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/tls-key.pem");

async fn tls_server() -> TestServer {
    TestServer::with(|c| c.server.tls = Some(herald::tls::load(CERT, KEY).unwrap())).await
}

fn client(http1_only: bool) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(&std::fs::read(CA).unwrap()).unwrap();
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .https_only(true)
        .no_proxy();
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

fn open_connections(s: &TestServer) -> u64 {
    s.http_connections().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_multiplexes_streams_on_one_connection() {
    let s = tls_server().await;
    let base = format!("https://127.0.0.1:{}", s.addr.port());
    let http = client(false);
    let mut streams = Vec::new();
    for topic in ["a", "b", "c"] {
        let resp = http
            .get(format!("{base}/api/sse/subscribe/u?topic={topic}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        streams.push(SseClient::new(resp));
    }
    assert_eq!(open_connections(&s), 1, "three streams, one connection");
    for topic in ["a", "b", "c"] {
        let resp = http
            .post(format!("{base}/api/publish"))
            .header("content-type", "application/json")
            .body(json!({"topic": topic, "data": topic}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    for (stream, topic) in streams.iter_mut().zip(["a", "b", "c"]) {
        assert_eq!(stream.next().await.data, json!(topic).to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_over_tls_and_plain_text_refused() {
    let s = tls_server().await;
    let base = format!("https://127.0.0.1:{}", s.addr.port());
    let http = client(true);
    let resp = http
        .get(format!("{base}/api/sse/subscribe/v"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    let mut stream = SseClient::new(resp);

    // Plain HTTP on the TLS port: no answer, connection closed.
    let reply = s
        .raw(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    assert!(!reply.contains("200 OK"), "{reply}");

    let resp = http
        .post(format!("{base}/api/publish"))
        .header("content-type", "application/json")
        .body(json!({"user": "v", "data": 1}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(stream.next().await.data, "1");
}
