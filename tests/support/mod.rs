//! Test fixture: a real herald on 127.0.0.1:0 (drained on drop), an SSE
//! client that parses streams with an independent parser (eventsource-stream,
//! not herald's code), and helpers to publish and to read raw bytes.
//!
//! Stream tests run once per [`Transport`]: write the test as
//! `async fn name(t: Transport)` and list it in [`on_every_transport!`].
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use herald::config::Config;
use herald::fanout::Fanout;
use herald::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub mod kafka;
pub mod registry;

/// Upper bound on any single wait in a test: generous, only hit on failure.
pub const WAIT: Duration = Duration::from_secs(20);

/// How a test's streams reach herald.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/1.1 on herald's own writer (the fast path).
    Herald,
    /// HTTP/1.1 through hyper (`--sse-fast-path false`).
    Hyper,
    /// HTTP/2 over plain TCP (h2c, prior knowledge) through hyper
    /// (`--own-http2 false`).
    H2c,
    /// HTTPS, HTTP/1.1 (ALPN): streams on herald's own writer over TLS,
    /// everything else through hyper. The test certificate in `tests/keys`.
    Tls,
    /// HTTPS, HTTP/2 (ALPN h2): the browser's way, streams multiplexed on
    /// one connection, on herald's own HTTP/2 server.
    TlsH2,
}

pub const TLS_CERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/tls-cert.pem");
pub const TLS_CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/tls-ca.pem");
pub const TLS_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/tls-key.pem");

/// Runs each listed `async fn(Transport)` once per transport, as
/// `name::herald`, `name::hyper`, `name::h2c`, `name::tls` and
/// `name::tls_h2`.
#[macro_export]
macro_rules! on_every_transport {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn herald() {
                super::$name(super::support::Transport::Herald).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hyper() {
                super::$name(super::support::Transport::Hyper).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn h2c() {
                super::$name(super::support::Transport::H2c).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tls() {
                super::$name(super::support::Transport::Tls).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tls_h2() {
                super::$name(super::support::Transport::TlsH2).await
            }
        }
    )+};
}

/// Like [`on_every_transport!`] for tests whose client speaks raw
/// HTTP/1.1: `name::herald` and `name::hyper`.
#[macro_export]
macro_rules! on_h1_transports {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn herald() {
                super::$name(super::support::Transport::Herald).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hyper() {
                super::$name(super::support::Transport::Hyper).await
            }
        }
    )+};
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// With `--admin-listen` configured.
    pub admin_addr: Option<SocketAddr>,
    /// The dispatcher (registry, replay buffer).
    pub fanout: Arc<Fanout>,
    pub transport: Transport,
    running: Option<Running>,
    /// Speaks the server's transport.
    pub http: reqwest::Client,
    /// Sent as `Authorization: Bearer` by the publish helpers.
    pub publish_token: Option<String>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::with_cap(10_000, tweak).await
    }

    pub async fn on(t: Transport) -> Self {
        Self::on_with(t, |_| {}).await
    }

    pub async fn on_with(t: Transport, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::build(t, 10_000, tweak).await
    }

    pub async fn with_cap(max_connections: u64, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::build(Transport::Herald, max_connections, tweak).await
    }

    async fn build(t: Transport, max_connections: u64, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::default_for_tests();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.shutdown.drain = Duration::from_millis(100);
        config.shutdown.deadline = Duration::from_secs(5);
        config.server.sse_fast_path = !matches!(t, Transport::Hyper | Transport::H2c);
        config.server.own_http2 = !matches!(t, Transport::Hyper | Transport::H2c);
        if matches!(t, Transport::Tls | Transport::TlsH2) {
            config.server.tls = Some(herald::tls::load(TLS_CERT, TLS_KEY).unwrap());
        }
        tweak(&mut config);
        let running = herald::app::start(config, max_connections).await.unwrap();
        Self {
            addr: running.addr,
            admin_addr: running.admin_addr,
            fanout: running.fanout().clone(),
            transport: t,
            running: Some(running),
            http: client_for(t),
            publish_token: None,
        }
    }

    /// The Prometheus text page (metrics on).
    /// Streams being caught up from Kafka now.
    pub fn catchups(&self) -> usize {
        self.running.as_ref().map_or(0, Running::catchups)
    }

    pub fn metrics(&self) -> String {
        self.running.as_ref().unwrap().metrics().unwrap().render()
    }

    /// Starts the drain without waiting for it.
    pub fn begin_shutdown(&self) {
        self.running.as_ref().unwrap().shutdown();
    }

    /// The node's phase.
    pub fn phase(&self) -> herald::lifecycle::Phase {
        self.running.as_ref().unwrap().phase()
    }

    /// HTTP connections open, and the cap.
    pub fn http_connections(&self) -> (u64, u64) {
        self.running.as_ref().unwrap().http_connections()
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = match self.transport {
            Transport::Tls | Transport::TlsH2 => "https",
            _ => "http",
        };
        format!("{scheme}://{}{}", self.addr, path)
    }

    /// Opens `/api/sse/subscribe/{path}` and checks the 200 + headers.
    pub async fn subscribe(&self, path: &str) -> SseClient {
        self.subscribe_with(path, None).await
    }

    pub async fn subscribe_with(&self, path: &str, last_event_id: Option<&str>) -> SseClient {
        let mut req = self
            .http
            .get(self.url(&format!("/api/sse/subscribe/{path}")));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200, "subscribe {path}");
        SseClient::new(resp)
    }

    /// Waits until `n` streams are registered (subscribe returns once headers
    /// are out, which is after registration; this is for streams opened from
    /// other tasks).
    pub async fn wait_connections(&self, n: usize) {
        let registry = self.fanout.registry().clone();
        eventually(|| registry.connections() == n, &format!("{n} connections")).await;
    }

    /// POSTs a JSON body; returns status and parsed JSON reply.
    pub async fn publish(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.publish_raw(body.to_string().into_bytes(), "application/json")
            .await
    }

    pub async fn publish_raw(&self, body: Vec<u8>, ct: &str) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .post(self.url("/api/publish"))
            .header("content-type", ct)
            .body(body);
        if let Some(t) = &self.publish_token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, json)
    }

    /// Publishes one event and returns its id.
    pub async fn publish_ok(&self, body: serde_json::Value) -> String {
        let (status, reply) = self.publish(body).await;
        assert_eq!(status, 200, "{reply}");
        reply["id"].as_str().unwrap().to_owned()
    }

    /// Starts the drain and waits for it; returns how long it took.
    pub async fn shutdown(mut self) -> Duration {
        let running = self.running.take().unwrap();
        let t = std::time::Instant::now();
        running.shutdown();
        running.stopped().await;
        t.elapsed()
    }

    /// A GET, returning status, headers and body text.
    pub async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.unwrap())
    }

    /// Opens a stream on herald's HTTP/1.1 path that will read nothing: a
    /// 2 KiB receive buffer, the request sent (resuming after
    /// `last_event_id` if given), nothing read.
    pub async fn stalled(&self, path: &str, last_event_id: Option<&str>) -> TcpStream {
        let sock = TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(2048).unwrap();
        let mut s = sock.connect(self.addr).await.unwrap();
        let resume = last_event_id.map_or(String::new(), |id| format!("last-event-id: {id}\r\n"));
        s.write_all(
            format!("GET /api/sse/subscribe/{path} HTTP/1.1\r\nhost: x\r\n{resume}\r\n").as_bytes(),
        )
        .await
        .unwrap();
        s
    }

    /// Sends raw bytes on a fresh connection; returns what came back until
    /// the server closed or paused for 2 s.
    pub async fn raw(&self, request: &[u8]) -> String {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
        }
    }
}

/// An HTTP/1.1 client, one connection per request.
pub fn client() -> reqwest::Client {
    client_for(Transport::Herald)
}

/// A client speaking `t`: HTTP/1.1 (one connection per request), or h2c
/// with prior knowledge (streams multiplexed on one connection).
pub fn client_for(t: Transport) -> reqwest::Client {
    let b = reqwest::Client::builder().no_proxy();
    match t {
        Transport::Herald | Transport::Hyper => b.pool_max_idle_per_host(0),
        Transport::H2c => b.http2_prior_knowledge(),
        Transport::Tls => https_client(b, true).pool_max_idle_per_host(0),
        Transport::TlsH2 => https_client(b, false),
    }
    .build()
    .unwrap()
}

/// `b` trusting only the test CA, https only; HTTP/1.1 only if asked.
pub fn https_client(b: reqwest::ClientBuilder, http1_only: bool) -> reqwest::ClientBuilder {
    let root = reqwest::Certificate::from_pem(&std::fs::read(TLS_CA).unwrap()).unwrap();
    let b = b
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .https_only(true);
    if http1_only {
        b.http1_only()
    } else {
        b
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

/// A parsed SSE stream.
pub struct SseClient {
    pub headers: reqwest::header::HeaderMap,
    events: EventStream,
}

impl SseClient {
    pub fn new(resp: reqwest::Response) -> Self {
        let headers = resp.headers().clone();
        let events = resp
            .bytes_stream()
            .eventsource()
            .map(|r| r.map_err(|e| e.to_string()));
        Self {
            headers,
            events: Box::pin(events),
        }
    }

    /// The stream on `s`, a connection that sent its request (see
    /// [`TestServer::stalled`]) and read nothing since: the response head,
    /// then the chunked body, read as the events are asked for.
    pub async fn from_raw(mut s: TcpStream) -> Self {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut b = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, s.read(&mut b))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed before the response head");
            buf.extend_from_slice(&b[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        buf.drain(..head_end);
        // Undoes the chunked encoding: each item is one chunk's data.
        let body = futures_util::stream::unfold((s, buf), |(mut s, mut buf)| async move {
            loop {
                if let Some(line) = buf.windows(2).position(|w| w == b"\r\n") {
                    let size = std::str::from_utf8(&buf[..line])
                        .ok()
                        .and_then(|t| usize::from_str_radix(t.trim(), 16).ok());
                    let Some(size) = size else {
                        return Some((Err("a bad chunk size".to_string()), (s, Vec::new())));
                    };
                    if size == 0 {
                        return None;
                    }
                    if buf.len() >= line + 2 + size + 2 {
                        let data = Bytes::copy_from_slice(&buf[line + 2..line + 2 + size]);
                        buf.drain(..line + 2 + size + 2);
                        return Some((Ok(data), (s, buf)));
                    }
                }
                let mut b = [0u8; 16384];
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buf.extend_from_slice(&b[..n]),
                }
            }
        });
        let events = body.eventsource().map(|r| r.map_err(|e| e.to_string()));
        Self {
            headers: Default::default(),
            events: Box::pin(events),
        }
    }

    /// The next event; panics on end of stream or after [`WAIT`].
    pub async fn next(&mut self) -> Event {
        match tokio::time::timeout(WAIT, self.events.next()).await {
            Ok(Some(Ok(e))) => e,
            Ok(Some(Err(e))) => panic!("stream error: {e}"),
            Ok(None) => panic!("stream ended"),
            Err(_) => panic!("no event within {WAIT:?}"),
        }
    }

    pub async fn next_n(&mut self, n: usize) -> Vec<Event> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.next().await);
        }
        v
    }

    /// Asserts no event arrives within `d`.
    pub async fn assert_quiet(&mut self, d: Duration) {
        if let Ok(Some(e)) = tokio::time::timeout(d, self.events.next()).await {
            panic!("unexpected event: {e:?}");
        }
    }

    /// Waits for the end of the stream (events before it are returned).
    pub async fn until_end(&mut self) -> Vec<Event> {
        let mut v = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.events.next()).await {
                Ok(Some(Ok(e))) => v.push(e),
                Ok(Some(Err(_))) | Ok(None) => return v,
                Err(_) => panic!("stream did not end within {WAIT:?}"),
            }
        }
    }
}

/// A raw (unparsed) subscription, for bytes the parser hides (comments).
pub async fn raw_stream(
    http: &reqwest::Client,
    url: &str,
) -> Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>> {
    let resp = http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    Box::pin(resp.bytes_stream())
}

/// Polls `cond` until it holds, up to [`WAIT`]; for state with no event to
/// wait on (registry counts after a disconnect).
pub async fn eventually(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of a counter (with optional label) in a Prometheus text page.
pub fn metric(page: &str, name: &str, label: Option<&str>) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && l[name.len()..].starts_with(['{', ' '])
                && label.is_none_or(|lb| l.contains(lb))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every log line, in memory (a test binary that installs the process's
/// log subscriber writes to it).
#[derive(Clone, Default)]
#[allow(dead_code)]
pub struct Lines(pub std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);

#[allow(dead_code)]
impl Lines {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock()).into_owned()
    }
}

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
