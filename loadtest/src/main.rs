//! `sse-load`: opens many SSE connections to herald (spread over source
//! addresses 127.0.0.2.. to get past the ephemeral-port limit of one source),
//! optionally publishes broadcasts as fast as they are answered, counts every
//! frame each connection receives, and reads the server's CPU time and RSS
//! from /proc to report RSS per idle connection and CPU per delivered event.
//!
//! Every loop is bounded: connections by --connections, publishing by
//! --publish-seconds, settling by --settle-seconds. Targets loopback only.
//!
//! Example (the figures in BENCHMARKS.md):
//!   sse-load --target 127.0.0.1:8080 --connections 10000 \
//!            --publish-seconds 10 --server-pid $(pgrep -n herald)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, Parser)]
struct Args {
    /// herald's address (must be loopback).
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// SSE connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Distinct source addresses (127.0.0.2, .3, ...) to spread them over.
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// Connections opened at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Publish broadcasts for this long after connecting (0 = none).
    #[arg(long, default_value_t = 0)]
    publish_seconds: u64,
    /// Payload bytes per published event.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Events per publish request (1 = single-object body).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Concurrent publisher connections, each sending its next request when
    /// the previous one is answered.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Events per second over all publishers (0 = as fast as answered).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Publish each event to one random user (the streams are users
    /// load-0..N-1) instead of broadcasting.
    #[arg(long, default_value_t = false)]
    targeted: bool,
    /// Reconnect storm: this many seconds into publishing, every stream
    /// drops its connection and reconnects at once with `Last-Event-ID`
    /// (0 = no storm). Gaps and duplicates are counted across the seam.
    #[arg(long, default_value_t = 0)]
    storm_after: u64,
    /// Max wait for deliveries to finish after publishing.
    #[arg(long, default_value_t = 30)]
    settle_seconds: u64,
    /// herald's pid, to read its CPU time and RSS from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Keep the connections open this long before exiting.
    #[arg(long, default_value_t = 0)]
    hold_seconds: u64,
}

/// Counters shared by all connections (one relaxed add per read, not per frame).
struct Totals {
    frames: AtomicU64,
    /// Event frames published by this tool (carrying `"n":` and `"t":`).
    events: AtomicU64,
    reconnected: AtomicU64,
    bytes: AtomicU64,
    connected: AtomicU64,
    closed: AtomicU64,
    /// Broadcast mode: events skipped / seen twice, per connection, summed.
    gaps: AtomicU64,
    dups: AtomicU64,
    /// Publish-to-receive latency in µs, sharded to keep the locks cold.
    latency: Vec<parking_lot::Mutex<hdrhistogram::Histogram<u64>>>,
}

const LATENCY_SHARDS: usize = 32;

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

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The number after `key` (e.g. `"n":`) in `frame`, if any.
fn field(frame: &[u8], key: &[u8]) -> Option<u64> {
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

fn main() {
    let args = Args::parse();
    if !args.target.ip().is_loopback() {
        eprintln!("sse-load: --target must be a loopback address");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let totals = Arc::new(Totals::default());
    let pid = args.server_pid;
    let proc0 = pid.map(read_proc);

    // Connect.
    let t = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let check_order = !args.targeted && args.publishers <= 1;
    let (storm_tx, storm_rx) = tokio::sync::watch::channel(false);
    for i in 0..args.connections {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let totals = totals.clone();
        let target = args.target;
        let src = Ipv4Addr::new(127, 0, 0, 2 + (i % args.sources.max(1) as usize) as u8);
        let mut storm = storm_rx.clone();
        tokio::spawn(async move {
            let mut state = StreamState::default();
            match connect(target, src, i, None).await {
                Ok(stream) => {
                    totals.connected.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    let stormed =
                        read_stream(stream, &totals, i, check_order, &mut state, &mut storm).await;
                    if stormed {
                        // Reconnect at once, resuming after the last id seen.
                        match connect(target, src, i, state.last_id.clone()).await {
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
    // Wait until every connection has its preamble (bounded).
    let deadline = Instant::now() + Duration::from_secs(120);
    while (totals.frames.load(Ordering::Relaxed) as usize) < args.connections
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = totals.connected.load(Ordering::Relaxed);
    println!("connected={connected} in {:.2}s", t.elapsed().as_secs_f64());
    // Everything measured, for the JSON line at the end.
    let mut summary = serde_json::Map::new();
    summary.insert("connections".into(), connected.into());
    summary.insert("connect_seconds".into(), t.elapsed().as_secs_f64().into());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = pid.map(read_proc);
    if let (Some(p0), Some(p1)) = (proc0, idle) {
        let per = (p1.rss_kib as f64 - p0.rss_kib as f64) * 1024.0 / connected.max(1) as f64;
        println!(
            "server_rss_before_kib={} server_rss_idle_kib={} rss_per_connection_bytes={per:.0}",
            p0.rss_kib, p1.rss_kib
        );
        summary.insert(
            "rss_per_connection_bytes".into(),
            (per.round() as i64).into(),
        );
    }

    if args.publish_seconds > 0 {
        let frames0 = totals.events.load(Ordering::Relaxed);
        let cpu0 = pid.map(read_proc);
        let me0 = read_proc(std::process::id());
        let t = Instant::now();
        let mut tasks = Vec::new();
        let pubs = args.publishers.max(1);
        for _ in 0..pubs {
            let plan = Plan {
                target: args.target,
                seconds: args.publish_seconds,
                payload: args.payload,
                batch: args.batch,
                rate: args.rate / pubs as f64,
                users: if args.targeted { args.connections } else { 0 },
            };
            tasks.push(tokio::spawn(publish(plan)));
        }
        if args.storm_after > 0 {
            let delay = Duration::from_secs(args.storm_after);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = storm_tx.send(true);
            });
        }
        // Progress once a second while publishing (stderr; bounded by the
        // publishers' own duration).
        let progress = {
            let totals = totals.clone();
            tokio::spawn(async move {
                let mut last = totals.events.load(Ordering::Relaxed);
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let now = totals.events.load(Ordering::Relaxed);
                    let open = totals.connected.load(Ordering::Relaxed)
                        + totals.reconnected.load(Ordering::Relaxed)
                        - totals.closed.load(Ordering::Relaxed);
                    eprintln!(
                        "progress: {} events received ({}/s), {open} streams open",
                        now - frames0,
                        now - last
                    );
                    last = now;
                }
            })
        };
        let mut published = 0;
        for t in tasks {
            published += t.await.expect("publisher");
        }
        progress.abort();
        let publish_secs = t.elapsed().as_secs_f64();
        let expected = if args.targeted {
            published
        } else {
            published * connected
        };
        let settle = Instant::now() + Duration::from_secs(args.settle_seconds);
        let mut last = 0;
        let mut last_change = Instant::now();
        while Instant::now() < settle {
            let got = totals.events.load(Ordering::Relaxed) - frames0;
            if got >= expected {
                break;
            }
            if got != last {
                last = got;
                last_change = Instant::now();
            } else if last_change.elapsed() > Duration::from_secs(3) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let wall = t.elapsed().as_secs_f64();
        let received = totals.events.load(Ordering::Relaxed) - frames0;
        let cpu1 = pid.map(read_proc);
        let me1 = read_proc(std::process::id());
        let gen_cpu = (me1.cpu_ticks - me0.cpu_ticks) as f64 / ticks_per_second();
        summary.insert("generator_cpu_seconds".into(), gen_cpu.into());
        println!(
            "published={published} in {publish_secs:.2}s ({:.0}/s) expected_deliveries={expected} received={received} lost={} reconnected={}",
            published as f64 / publish_secs,
            expected.saturating_sub(received),
            totals.reconnected.load(Ordering::Relaxed)
        );
        println!(
            "delivered_per_second={:.0} (over {wall:.2}s incl. settle)",
            received as f64 / wall
        );
        let mut all =
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
        for h in &totals.latency {
            let _ = all.add(&*h.lock());
        }
        let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
        for (k, v) in [
            ("published", published),
            ("expected", expected),
            ("received", received),
            ("lost", expected.saturating_sub(received)),
            ("gaps", totals.gaps.load(Ordering::Relaxed)),
            ("dups", totals.dups.load(Ordering::Relaxed)),
            ("reconnected", totals.reconnected.load(Ordering::Relaxed)),
        ] {
            summary.insert(k.into(), v.into());
        }
        for (k, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            summary.insert(format!("latency_{k}_ms"), ms(q).into());
        }
        summary.insert("latency_max_ms".into(), (all.max() as f64 / 1000.0).into());
        println!(
            "latency_ms p50={:.2} p90={:.2} p99={:.2} p99.9={:.2} max={:.2} samples={} gaps={} dups={}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            all.max() as f64 / 1000.0,
            all.len(),
            totals.gaps.load(Ordering::Relaxed),
            totals.dups.load(Ordering::Relaxed)
        );
        if let (Some(a), Some(b)) = (cpu0, cpu1) {
            let cpu_ns = (b.cpu_ticks - a.cpu_ticks) as f64 * 1e9 / ticks_per_second();
            summary.insert(
                "cpu_ns_per_delivered_event".into(),
                ((cpu_ns / received.max(1) as f64).round() as i64).into(),
            );
            summary.insert("server_cpu_seconds".into(), (cpu_ns / 1e9).into());
            println!(
                "server_cpu_seconds={:.2} generator_cpu_seconds={gen_cpu:.2} cpu_ns_per_delivered_event={:.0} server_rss_after_kib={}",
                cpu_ns / 1e9,
                cpu_ns / received.max(1) as f64,
                b.rss_kib
            );
        }
    }
    if args.hold_seconds > 0 {
        // Passive mode: count what arrives while holding (events published
        // by someone else, e.g. straight into Kafka).
        let frames0 = totals.frames.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(args.hold_seconds)).await;
        let received = totals.frames.load(Ordering::Relaxed) - frames0;
        println!(
            "held={}s frames_received_while_holding={received} open={}",
            args.hold_seconds,
            connected - totals.closed.load(Ordering::Relaxed)
        );
    }
    println!("closed_by_server={}", totals.closed.load(Ordering::Relaxed));
    summary.insert(
        "closed".into(),
        totals.closed.load(Ordering::Relaxed).into(),
    );
    println!("json {}", serde_json::Value::Object(summary));
}

async fn connect(
    target: SocketAddr,
    src: Ipv4Addr,
    i: usize,
    last_id: Option<String>,
) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let mut s = sock.connect(target).await?;
    let resume = last_id.map_or(String::new(), |id| format!("last-event-id: {id}\r\n"));
    let req = format!(
        "GET /api/sse/subscribe/load-{i} HTTP/1.1\r\nhost: {target}\r\naccept: text/event-stream\r\n{resume}\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    Ok(s)
}

/// Reads until EOF: counts frame ends (a blank line, `\n\n`; herald and the
/// baseline end lines with LF only, so the chunked framing's CRLFs never form
/// one), and for event frames carrying `"n":` and `"t":` (published by this
/// tool) records latency and, for broadcasts, gaps and duplicates.
async fn read_stream(
    mut s: TcpStream,
    totals: &Totals,
    shard: usize,
    check_order: bool,
    state: &mut StreamState,
    storm: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    let mut carry: Vec<u8> = Vec::new();
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
        totals.bytes.fetch_add(n as u64, Ordering::Relaxed);
        carry.extend_from_slice(&buf[..n]);
        if !head_done {
            match memchr::memmem::find(&carry, b"\r\n\r\n") {
                Some(p) => {
                    head_done = true;
                    carry.drain(..p + 4);
                }
                None => continue,
            }
        }
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
                if check_order {
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
            let mut h = totals.latency[shard % LATENCY_SHARDS].lock();
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
struct StreamState {
    /// The last `id:` seen (sent back as `Last-Event-ID`).
    last_id: Option<String>,
    /// Highest sequence number seen (gap and duplicate detection).
    last_n: Option<u64>,
}

/// What one publisher sends.
#[derive(Debug, Clone, Copy)]
struct Plan {
    target: SocketAddr,
    seconds: u64,
    payload: usize,
    batch: usize,
    /// Events per second for this publisher; 0 = as fast as answered.
    rate: f64,
    /// 0: broadcast; else a random user among load-0..users-1.
    users: usize,
}

/// Publishes over one keep-alive connection, each request sent when the
/// previous one is answered (and, with a rate, not before its time). Each
/// event carries a sequence number `n` and its send time `t` (µs).
/// Returns events published.
async fn publish(plan: Plan) -> u64 {
    let target = plan.target;
    let mut s = TcpStream::connect(target).await.expect("publisher connect");
    s.set_nodelay(true).ok();
    let pad = "x".repeat(plan.payload);
    let start = Instant::now();
    let end = start + Duration::from_secs(plan.seconds);
    let mut n = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ now_us();
    let batch = plan.batch.max(1);
    while Instant::now() < end {
        if plan.rate > 0.0 {
            let due = start + Duration::from_secs_f64(n as f64 / plan.rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let mut one = |k: u64| {
            let t = now_us();
            if plan.users > 0 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let u = rng % plan.users as u64;
                format!(r#"{{"user":"load-{u}","data":{{"n":{k},"t":{t},"p":"{pad}"}}}}"#)
            } else {
                format!(r#"{{"broadcast":true,"data":{{"n":{k},"t":{t},"p":"{pad}"}}}}"#)
            }
        };
        let body = if batch == 1 {
            one(n)
        } else {
            let items: Vec<String> = (0..batch as u64).map(|k| one(n + k)).collect();
            format!("[{}]", items.join(","))
        };
        let req = format!(
            "POST /api/publish HTTP/1.1\r\nhost: {target}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("publish write");
        // Read one response: head, then content-length bytes.
        let mut got = 0usize;
        loop {
            let r = s.read(&mut buf[got..]).await.expect("publish read");
            assert!(r > 0, "server closed the publisher");
            got += r;
            if let Some(p) = memchr::memmem::find(&buf[..got], b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..p]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "publish failed: {head}");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got >= p + 4 + len {
                    break;
                }
            }
        }
        n += batch as u64;
    }
    n
}

#[derive(Debug, Clone, Copy)]
struct Proc {
    cpu_ticks: u64,
    rss_kib: u64,
}

fn read_proc(pid: u32) -> Proc {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is 3rd.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Proc {
        cpu_ticks: utime + stime,
        rss_kib,
    }
}

fn ticks_per_second() -> f64 {
    // USER_HZ is 100 on Linux for every architecture herald targets.
    100.0
}
