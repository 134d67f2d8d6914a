//! The SSE connections: opening them (bounded concurrency, spread over
//! source addresses), and reading each stream: frames, latency of this
//! tool's events, gaps and duplicates, the last id for a reconnect.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::args::Args;
use crate::tls::{self, Io};

/// Counters shared by all connections (one relaxed add per read, not per frame).
pub(crate) struct Totals {
    pub(crate) frames: AtomicU64,
    /// Event frames published by this tool (carrying `"n":` and `"t":`).
    pub(crate) events: AtomicU64,
    pub(crate) reconnected: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) connected: AtomicU64,
    pub(crate) closed: AtomicU64,
    /// Broadcast mode: events skipped / seen twice, per connection, summed.
    pub(crate) gaps: AtomicU64,
    pub(crate) dups: AtomicU64,
    /// Publish-to-receive latency in µs, sharded to keep the locks cold.
    pub(crate) latency: Vec<parking_lot::Mutex<hdrhistogram::Histogram<u64>>>,
}

pub(crate) const LATENCY_SHARDS: usize = 32;

impl Default for Totals {
    fn default() -> Self {
        Self {
            frames: AtomicU64::new(0),
            events: AtomicU64::new(0),
            reconnected: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            dups: AtomicU64::new(0),
            latency: (0..LATENCY_SHARDS)
                .map(|_| {
                    parking_lot::Mutex::new(
                        hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
                            .expect("histogram"),
                    )
                })
                .collect(),
        }
    }
}

impl Totals {
    /// All latency shards in one histogram.
    pub(crate) fn merged_latency(&self) -> hdrhistogram::Histogram<u64> {
        let mut all =
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
        for h in &self.latency {
            let _ = all.add(&*h.lock());
        }
        all
    }
}

pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The number after `key` (e.g. `"n":`) in `frame`, if any.
pub(crate) fn field(frame: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(frame, key)? + key.len();
    let digits = frame[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&frame[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Opens this process's connections (indexes `first_index..+connections`),
/// each in its own task, at most `concurrency` connecting at once. Returns
/// once every connection has been started.
pub(crate) async fn open_connections(
    args: &Args,
    totals: &Arc<Totals>,
    storm_rx: &tokio::sync::watch::Receiver<bool>,
) {
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let check_order = args.check_order();
    let users = args.users();
    // Tokens first, so signing does not count in the connect rate.
    let tokens: Vec<Option<String>> = (0..args.connections)
        .map(|local| {
            let secret = args.jwt_secret.as_ref()?;
            let u = (args.first_index + local) % users;
            let claims = serde_json::json!({
                "sub": format!("load-{u}"),
                "exp": now_us() / 1_000_000 + 3600,
                "topics": "*",
            });
            jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .ok()
        })
        .collect();
    if args.h2 {
        return crate::h2::open_connections(args, totals, tokens, sem).await;
    }
    let mut tokens = tokens.into_iter();
    for local in 0..args.connections {
        let (i, target, src, path) = endpoint(args, local);
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let totals = totals.clone();
        let mut storm = storm_rx.clone();
        let token = tokens.next().flatten();
        tokio::spawn(async move {
            let mut state = StreamState::default();
            let token = token.as_deref();
            match connect(target, src, &path, None, token).await {
                Ok(stream) => {
                    totals.connected.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    let stormed =
                        read_stream(stream, &totals, i, check_order, &mut state, &mut storm).await;
                    if stormed {
                        // Reconnect at once, resuming after the last id seen.
                        match connect(target, src, &path, state.last_id.clone(), token).await {
                            Ok(stream) => {
                                totals.reconnected.fetch_add(1, Ordering::Relaxed);
                                let mut never = tokio::sync::watch::channel(false).1;
                                read_stream(
                                    stream,
                                    &totals,
                                    i,
                                    check_order,
                                    &mut state,
                                    &mut never,
                                )
                                .await;
                            }
                            Err(e) => eprintln!("reconnect {i}: {e}"),
                        }
                    }
                }
                Err(e) => {
                    drop(permit);
                    eprintln!("connection {i}: {e}");
                }
            }
            totals.closed.fetch_add(1, Ordering::Relaxed);
        });
    }
}

/// Where this process's connection `local` goes: its index over all
/// processes, target, source address and request path.
pub(crate) fn endpoint(args: &Args, local: usize) -> (usize, SocketAddr, Ipv4Addr, String) {
    let i = args.first_index + local;
    let target = args.target[i % args.target.len()];
    let src_k = args.source_offset as usize + local % args.sources.max(1) as usize;
    let src = Ipv4Addr::new(127, 0, 0, 2 + (src_k % 250) as u8);
    let path = args
        .path
        .replace("{i}", &i.to_string())
        .replace("{u}", &(i % args.users()).to_string());
    (i, target, src, path)
}

pub(crate) async fn connect(
    target: SocketAddr,
    src: Ipv4Addr,
    path: &str,
    last_id: Option<String>,
    token: Option<&str>,
) -> std::io::Result<Box<dyn Io>> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let mut s = tls::wrap(sock.connect(target).await?, target).await?;
    let resume = last_id.map_or(String::new(), |id| format!("last-event-id: {id}\r\n"));
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {target}\r\naccept: text/event-stream\r\n{resume}{auth}\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    Ok(s)
}

/// Reads until EOF: counts frame ends (a blank line, `\n\n`; herald and the
/// baseline end lines with LF only, so the chunked framing's CRLFs never form
/// one), and for event frames carrying `"n":` and `"t":` (published by this
/// tool) records latency and, for broadcasts, gaps and duplicates.
pub(crate) async fn read_stream(
    mut s: Box<dyn Io>,
    totals: &Totals,
    shard: usize,
    check_order: bool,
    state: &mut StreamState,
    storm: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    let mut frames = Frames::new(totals, shard, check_order);
    let mut head_done = false;
    loop {
        let n = tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            },
            changed = storm.changed() => {
                if changed.is_ok() && *storm.borrow() {
                    return true;
                }
                continue;
            }
        };
        frames.push(&buf[..n]);
        if !head_done {
            match memchr::memmem::find(&frames.carry, b"\r\n\r\n") {
                Some(p) => {
                    head_done = true;
                    frames.carry.drain(..p + 4);
                }
                None => continue,
            }
        }
        frames.take(state);
    }
}

/// A stream's body as it arrives, cut into SSE frames (one place for every
/// transport).
pub(crate) struct Frames<'a> {
    totals: &'a Totals,
    shard: usize,
    check_order: bool,
    /// Bytes of a frame not complete yet.
    pub(crate) carry: Vec<u8>,
}

impl<'a> Frames<'a> {
    pub(crate) fn new(totals: &'a Totals, shard: usize, check_order: bool) -> Self {
        Self {
            totals,
            shard,
            check_order,
            carry: Vec::new(),
        }
    }

    /// Bytes just received.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.totals
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.carry.extend_from_slice(bytes);
    }

    /// Counts every frame complete in `carry`, which keeps what is left.
    pub(crate) fn take(&mut self, state: &mut StreamState) {
        let totals = self.totals;
        let carry = &mut self.carry;
        let mut frames = 0u64;
        let mut events = 0u64;
        let mut start = 0;
        let now = now_us();
        let mut lat = Vec::new();
        while let Some(end) = memchr::memmem::find(&carry[start..], b"\n\n") {
            let frame = &carry[start..start + end];
            frames += 1;
            let id_at = if frame.starts_with(b"id: ") {
                Some(4)
            } else {
                memchr::memmem::find(frame, b"\nid: ").map(|p| p + 5)
            };
            if let Some(id) = id_at.map(|p| &frame[p..]) {
                let len = memchr::memchr(b'\n', id).unwrap_or(id.len());
                state.last_id = std::str::from_utf8(&id[..len]).ok().map(str::to_owned);
            }
            if let (Some(seq), Some(t)) = (field(frame, b"\"n\":"), field(frame, b"\"t\":")) {
                lat.push(now.saturating_sub(t).max(1));
                events += 1;
                let last_n = &mut state.last_n;
                if self.check_order {
                    match *last_n {
                        Some(l) if seq <= l => {
                            totals.dups.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(l) if seq > l + 1 => {
                            totals.gaps.fetch_add(seq - l - 1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                    *last_n = Some(last_n.map_or(seq, |l| l.max(seq)));
                }
            }
            start += end + 2;
        }
        carry.drain(..start);
        if !lat.is_empty() {
            let mut h = totals.latency[self.shard % LATENCY_SHARDS].lock();
            for l in lat {
                let _ = h.record(l);
            }
        }
        if frames > 0 {
            totals.frames.fetch_add(frames, Ordering::Relaxed);
        }
        if events > 0 {
            totals.events.fetch_add(events, Ordering::Relaxed);
        }
    }
}

/// What a stream remembers across a reconnect.
#[derive(Default)]
pub(crate) struct StreamState {
    /// The last `id:` seen (sent back as `Last-Event-ID`).
    pub(crate) last_id: Option<String>,
    /// Highest sequence number seen (gap and duplicate detection).
    pub(crate) last_n: Option<u64>,
}

/// `--stalled` connections: each sends its request (user `stalled-{k}`)
/// with a small receive buffer and never reads.
pub(crate) async fn open_stalled(args: &Args) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(args.stalled);
    for k in 0..args.stalled {
        let target = args.target[k % args.target.len()];
        let src = Ipv4Addr::new(127, 0, 2, 2 + (k % 250) as u8);
        let sock = match TcpSocket::new_v4() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("stalled {k}: {e}");
                continue;
            }
        };
        let _ = sock.set_recv_buffer_size(2048);
        if sock.bind(SocketAddr::new(IpAddr::V4(src), 0)).is_err() {
            continue;
        }
        match sock.connect(target).await {
            Ok(mut s) => {
                let req = format!(
                    "GET /api/sse/subscribe/stalled-{k} HTTP/1.1\r\nhost: {target}\r\n\r\n"
                );
                if s.write_all(req.as_bytes()).await.is_ok() {
                    out.push(s);
                }
            }
            Err(e) => eprintln!("stalled {k}: {e}"),
        }
    }
    out
}
