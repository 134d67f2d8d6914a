//! `--adversaries N`: a hostile-client mix against the node, alongside the
//! healthy streams, while publishing runs. N of each kind:
//! - slowloris: one byte of the HTTP/2 preface, half an HTTP/1.1 head, or a
//!   whole h2c preface with no stream, then nothing;
//! - stalled readers: streams that read nothing (small receive buffers);
//! - resume floods: streams resuming from the oldest id, read nothing,
//!   reconnect every second;
//! - junk writers: streams that write bytes at the server;
//!
//! plus one `/metrics` flood over one keep-alive connection, and a connect
//! flood: 8N connections at once from a single address, each reconnecting
//! as soon as answered.
//! Each kind reports how many connections the server closed and how fast;
//! the server's own close and refusal counters, before and after, say why.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpSocket, TcpStream};

/// The HTTP/2 connection preface and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// What one kind of adversary saw.
#[derive(Debug, Default)]
pub(crate) struct Kind {
    pub(crate) opened: AtomicU64,
    /// Closed by the server (EOF or reset) while the run lasted.
    pub(crate) closed: AtomicU64,
    /// Sum of open-to-close times of those, ms.
    pub(crate) closed_after_ms: AtomicU64,
    /// Requests answered 2xx (floods).
    pub(crate) answered: AtomicU64,
    /// Requests answered with a refusal, 4xx or 5xx (floods).
    pub(crate) refused: AtomicU64,
}

/// Every kind, by name.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) kinds: Vec<(&'static str, Arc<Kind>)>,
}

impl Report {
    fn kind(&mut self, name: &'static str) -> Arc<Kind> {
        let k = Arc::new(Kind::default());
        self.kinds.push((name, k.clone()));
        k
    }

    /// One line per kind, and the same as JSON.
    pub(crate) fn print(&self) -> serde_json::Value {
        let mut all = serde_json::Map::new();
        for (name, k) in &self.kinds {
            let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
            let closed = c(&k.closed);
            let avg = c(&k.closed_after_ms).checked_div(closed).unwrap_or(0);
            println!(
                "adversary {name}: opened={} closed_by_server={closed} (after {avg} ms on average) answered={} refused={}",
                c(&k.opened),
                c(&k.answered),
                c(&k.refused)
            );
            all.insert(
                (*name).into(),
                serde_json::json!({"opened": c(&k.opened), "closed": closed, "closed_after_ms": avg, "answered": c(&k.answered), "refused": c(&k.refused)}),
            );
        }
        serde_json::Value::Object(all)
    }
}

/// Every kind, by the name it is reported and chosen under.
pub(crate) const KINDS: [&str; 8] = [
    "slowloris_preface_byte",
    "slowloris_half_head",
    "slowloris_h2c_no_stream",
    "stalled_readers",
    "junk_writers",
    "resume_floods",
    "metrics_flood",
    "connect_flood_one_address",
];

/// Starts `n` of each kind in `only` (every kind when empty) against
/// `target`; they run until `until`.
pub(crate) async fn start(target: SocketAddr, n: usize, only: &[String], until: Instant) -> Report {
    let mut report = Report::default();
    let oldest = oldest_id(target).await;
    let n_of = |name: &str| {
        if only.is_empty() || only.iter().any(|k| k == name) {
            n
        } else {
            0
        }
    };
    for (name, first) in [
        ("slowloris_preface_byte", &b"P"[..]),
        (
            "slowloris_half_head",
            b"GET /api/sse/subscribe/x HTTP/1.1\r\nhost",
        ),
        ("slowloris_h2c_no_stream", H2_PREFACE),
    ] {
        let kind = report.kind(name);
        for i in 0..n_of(name) {
            tokio::spawn(hold(
                target,
                src(i),
                first.to_vec(),
                kind.clone(),
                until,
                None,
            ));
        }
    }
    let stalled = report.kind("stalled_readers");
    for i in 0..n_of("stalled_readers") {
        let req = format!("GET /api/sse/subscribe/adv-stalled-{i} HTTP/1.1\r\nhost: x\r\n\r\n");
        tokio::spawn(hold(
            target,
            src(i),
            req.into_bytes(),
            stalled.clone(),
            until,
            None,
        ));
    }
    let junk = report.kind("junk_writers");
    for i in 0..n_of("junk_writers") {
        let req = format!("GET /api/sse/subscribe/adv-junk-{i} HTTP/1.1\r\nhost: x\r\n\r\n");
        tokio::spawn(hold(
            target,
            src(i),
            req.into_bytes(),
            junk.clone(),
            until,
            Some(vec![b'j'; 64 * 1024]),
        ));
    }
    let resume = report.kind("resume_floods");
    for i in 0..n_of("resume_floods") {
        let req = format!(
            "GET /api/sse/subscribe/adv-resume-{i} HTTP/1.1\r\nhost: x\r\nlast-event-id: {oldest}\r\n\r\n"
        );
        let kind = resume.clone();
        tokio::spawn(async move {
            while Instant::now() < until {
                let round = (Instant::now() + Duration::from_secs(1)).min(until);
                hold(
                    target,
                    src(i),
                    req.clone().into_bytes(),
                    kind.clone(),
                    round,
                    None,
                )
                .await;
            }
        });
    }
    let metrics = report.kind("metrics_flood");
    for _ in 0..n_of("metrics_flood").min(1) {
        tokio::spawn(flood(
            target,
            None,
            b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n",
            metrics.clone(),
            until,
        ));
    }
    // 8N connections at once from one address, each reconnecting as soon
    // as answered: past `--max-connections-per-ip` they are refused.
    let connects = report.kind("connect_flood_one_address");
    for _ in 0..8 * n_of("connect_flood_one_address") {
        tokio::spawn(flood(
            target,
            Some(Ipv4Addr::new(127, 0, 3, 2)),
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            connects.clone(),
            until,
        ));
    }
    report
}

/// Adversaries' source addresses (127.0.3.x), apart from the healthy ones.
fn src(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 3, 10 + (i % 240) as u8)
}

/// The id a stream opened now continues after: the oldest position of the
/// run (before any event), to resume from.
async fn oldest_id(target: SocketAddr) -> String {
    let Ok(mut s) = TcpStream::connect(target).await else {
        return "0-0".into();
    };
    let _ = s
        .write_all(b"GET /api/sse/subscribe/adv-probe HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("herald-resumed-after:"))
        .map_or_else(|| "0-0".into(), |v| v.trim().to_owned())
}

/// One connection: sends `first`, then reads nothing (or writes `junk`
/// forever), until the server closes it or `until`.
async fn hold(
    target: SocketAddr,
    src: Ipv4Addr,
    first: Vec<u8>,
    kind: Arc<Kind>,
    until: Instant,
    junk: Option<Vec<u8>>,
) {
    let Ok(sock) = TcpSocket::new_v4() else {
        return;
    };
    let _ = sock.set_recv_buffer_size(2048);
    if sock.bind(SocketAddr::new(IpAddr::V4(src), 0)).is_err() {
        return;
    }
    let Ok(mut s) = sock.connect(target).await else {
        return;
    };
    let t = Instant::now();
    kind.opened.fetch_add(1, Ordering::Relaxed);
    if s.write_all(&first).await.is_err() {
        return closed(&kind, t);
    }
    let until = tokio::time::Instant::from_std(until);
    match junk {
        Some(junk) => loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                w = s.write_all(&junk) => if w.is_err() { return closed(&kind, t) },
            }
        },
        None => {
            // Wait for the close without reading data: the socket's
            // readiness says when the peer's FIN or RST arrived even with
            // data left unread (a peek would return that data forever).
            // A server that closes a stream with data still queued for it
            // cannot send its FIN past the unread data: those closes show
            // in the server's counters, not here.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => return,
                    r = s.ready(Interest::READABLE) => match r {
                        Ok(r) if !r.is_read_closed() && !r.is_error() => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        _ => return closed(&kind, t),
                    },
                }
            }
        }
    }
}

fn closed(kind: &Kind, since: Instant) {
    kind.closed.fetch_add(1, Ordering::Relaxed);
    kind.closed_after_ms
        .fetch_add(since.elapsed().as_millis() as u64, Ordering::Relaxed);
}

/// Sends `request` over and over (keep-alive, or a new connection each time
/// with `connection: close`) as fast as answered, until `until`.
async fn flood(
    target: SocketAddr,
    src: Option<Ipv4Addr>,
    request: &'static [u8],
    kind: Arc<Kind>,
    until: Instant,
) {
    let keep_alive = src.is_none();
    let mut conn: Option<TcpStream> = None;
    // A /metrics page needs room; a refusal or /healthz does not.
    let mut buf = vec![0u8; if keep_alive { 256 * 1024 } else { 4096 }];
    while Instant::now() < until {
        if conn.is_none() {
            let Ok(sock) = TcpSocket::new_v4() else {
                return;
            };
            if let Some(ip) = src {
                let _ = sock.bind(SocketAddr::new(IpAddr::V4(ip), 0));
            }
            match sock.connect(target).await {
                Ok(s) => {
                    kind.opened.fetch_add(1, Ordering::Relaxed);
                    conn = Some(s);
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(s) = conn.as_mut() else { continue };
        let status = if s.write_all(request).await.is_ok() {
            read_answer(s, &mut buf, keep_alive).await
        } else {
            None
        };
        match status {
            Some(200..=299) => kind.answered.fetch_add(1, Ordering::Relaxed),
            Some(_) => kind.refused.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
        if status.is_none() || !keep_alive {
            conn = None;
        }
    }
}

/// Reads one answer: the head and `content-length` bytes (keep-alive), or
/// to the close.
async fn read_answer(s: &mut TcpStream, buf: &mut [u8], keep_alive: bool) -> Option<u16> {
    let mut got = 0;
    loop {
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf[got..])).await;
        let n = match r {
            Ok(Ok(0)) if got > 0 && !keep_alive => return status(&buf[..got]),
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        got += n;
        if !keep_alive {
            continue;
        }
        if let Some(p) = memchr::memmem::find(&buf[..got], b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got >= p + 4 + len {
                return status(&buf[..got]);
            }
        }
        if got == buf.len() {
            return None;
        }
    }
}

/// The status code of an HTTP/1.1 answer.
fn status(answer: &[u8]) -> Option<u16> {
    answer.get(9..12)?.iter().try_fold(0u16, |n, d| {
        d.is_ascii_digit().then(|| n * 10 + u16::from(d - b'0'))
    })
}
