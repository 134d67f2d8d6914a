//! HTTPS with ALPN: h2 multiplexes several streams over one connection,
//! HTTP/1.1 works too, and a plain-text client on the TLS port is refused
//! without harming anyone else. Uses the self-signed test certificate in
//! `tests/keys/`.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::{eventually, https_client, metric, SseClient, TestServer, Transport, TLS_CA};

async fn tls_server() -> TestServer {
    TestServer::on(Transport::Tls).await
}

fn client(http1_only: bool) -> reqwest::Client {
    https_client(reqwest::Client::builder().no_proxy(), http1_only)
        .build()
        .unwrap()
}

fn open_connections(s: &TestServer) -> u64 {
    s.http_connections().0
}

/// On herald's own HTTP/2 server and on hyper's (`--own-http2 false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_multiplexes_streams_on_one_connection() {
    h2_multiplexes(true).await;
    h2_multiplexes(false).await;
}

async fn h2_multiplexes(own_http2: bool) {
    let s = TestServer::on_with(Transport::Tls, |c| c.server.own_http2 = own_http2).await;
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

/// An HTTP/1.1 TLS subscribe is served by herald's own writer, not hyper:
/// bytes a client sends after its request end the stream as a protocol
/// error (hyper would read them as a next request), and a non-subscribe
/// request on such a connection still reaches hyper whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_tls_streams_are_on_heralds_writer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::on(Transport::Tls).await;
    let connector = connector();
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::IpAddress(s.addr.ip().into());
        connector.connect(name, tcp).await.unwrap()
    };
    // A stream, then junk from its client.
    let mut tls = connect().await;
    tls.write_all(b"GET /api/sse/subscribe/w HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 1024];
    let n = tls.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    tls.write_all(b"junk").await.unwrap();
    let closed = |reason: &str| {
        metric(
            &s.metrics(),
            "herald_sse_connections_closed_total",
            Some(&format!("reason=\"{reason}\"")),
        )
    };
    eventually(|| closed("protocol") == 1.0, "a protocol close").await;
    // Another request, split over two TLS records so the head is read in
    // parts: hyper answers it after the bytes read so far.
    let mut tls = connect().await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    tls.write_all(b"host: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tls.read_to_end(&mut reply).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
}

/// `--tls-own-records false`: every connection stays on rustls's own
/// connection, and HTTP/1.1 and h2 streams over TLS work as with herald's
/// records (the default, which the rest of the suite runs on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_work_on_rustls_records_too() {
    let s = TestServer::on_with(Transport::Tls, |c| c.server.tls_own_records = false).await;
    let base = format!("https://127.0.0.1:{}", s.addr.port());
    let mut streams = Vec::new();
    for (http1, user) in [(true, "h1"), (false, "h2")] {
        let resp = client(http1)
            .get(format!("{base}/api/sse/subscribe/{user}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let want = if http1 {
            reqwest::Version::HTTP_11
        } else {
            reqwest::Version::HTTP_2
        };
        assert_eq!(resp.version(), want);
        streams.push((user, SseClient::new(resp)));
    }
    for (user, stream) in &mut streams {
        s.publish_ok(json!({"user": user, "data": user})).await;
        assert_eq!(stream.next().await.data, json!(user).to_string());
    }
}

/// A rustls client trusting the test CA (TLS 1.3 and 1.2).
fn connector() -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(TLS_CA).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// Which records a stream is on shows in a key update from its client:
/// rustls follows it and the stream goes on; herald's records end the
/// stream as the client leaving (it reconnects and resumes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_update_ends_a_stream_only_on_heralds_records() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for own in [true, false] {
        let s = TestServer::on_with(Transport::Tls, |c| c.server.tls_own_records = own).await;
        let tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let name = rustls_pki_types::ServerName::IpAddress(s.addr.ip().into());
        let mut tls = connector().connect(name, tcp).await.unwrap();
        tls.write_all(b"GET /api/sse/subscribe/k HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tls.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
        tls.get_mut().1.refresh_traffic_keys().unwrap();
        tls.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        s.publish(json!({"user": "k", "data": "after"})).await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(support::WAIT, async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                if String::from_utf8_lossy(&got).contains("after") {
                    return;
                }
            }
        });
        read.await.unwrap();
        let got = String::from_utf8_lossy(&got);
        if own {
            // Ended (the read loop saw the connection close), not a timeout.
            assert!(!got.contains("after"), "{got}");
        } else {
            assert!(got.contains("after"), "{got}");
        }
    }
}
