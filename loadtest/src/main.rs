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
#[derive(Default)]
struct Totals {
    frames: AtomicU64,
    bytes: AtomicU64,
    connected: AtomicU64,
    closed: AtomicU64,
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
    for i in 0..args.connections {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let totals = totals.clone();
        let target = args.target;
        let src = Ipv4Addr::new(127, 0, 0, 2 + (i % args.sources.max(1) as usize) as u8);
        tokio::spawn(async move {
            match connect(target, src, i).await {
                Ok(stream) => {
                    totals.connected.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                    read_stream(stream, &totals).await;
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
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = pid.map(read_proc);
    if let (Some(p0), Some(p1)) = (proc0, idle) {
        let per = (p1.rss_kib as f64 - p0.rss_kib as f64) * 1024.0 / connected.max(1) as f64;
        println!(
            "server_rss_before_kib={} server_rss_idle_kib={} rss_per_connection_bytes={per:.0}",
            p0.rss_kib, p1.rss_kib
        );
    }

    if args.publish_seconds > 0 {
        let frames0 = totals.frames.load(Ordering::Relaxed);
        let cpu0 = pid.map(read_proc);
        let t = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..args.publishers.max(1) {
            let (target, secs, payload, batch) =
                (args.target, args.publish_seconds, args.payload, args.batch);
            tasks.push(tokio::spawn(publish(target, secs, payload, batch)));
        }
        let mut published = 0;
        for t in tasks {
            published += t.await.expect("publisher");
        }
        let publish_secs = t.elapsed().as_secs_f64();
        let expected = published * connected;
        let settle = Instant::now() + Duration::from_secs(args.settle_seconds);
        let mut last = 0;
        let mut last_change = Instant::now();
        while Instant::now() < settle {
            let got = totals.frames.load(Ordering::Relaxed) - frames0;
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
        let received = totals.frames.load(Ordering::Relaxed) - frames0;
        let cpu1 = pid.map(read_proc);
        println!(
            "published={published} in {publish_secs:.2}s ({:.0}/s) expected_deliveries={expected} received={received} lost={}",
            published as f64 / publish_secs,
            expected.saturating_sub(received)
        );
        println!(
            "delivered_per_second={:.0} (over {wall:.2}s incl. settle)",
            received as f64 / wall
        );
        if let (Some(a), Some(b)) = (cpu0, cpu1) {
            let cpu_ns = (b.cpu_ticks - a.cpu_ticks) as f64 * 1e9 / ticks_per_second();
            println!(
                "server_cpu_seconds={:.2} cpu_ns_per_delivered_event={:.0} server_rss_after_kib={}",
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
}

async fn connect(target: SocketAddr, src: Ipv4Addr, i: usize) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let mut s = sock.connect(target).await?;
    let req = format!(
        "GET /api/sse/subscribe/load-{i} HTTP/1.1\r\nhost: {target}\r\naccept: text/event-stream\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    Ok(s)
}

/// Reads until EOF, counting frame ends (a blank line: `\n\n`).
async fn read_stream(mut s: TcpStream, totals: &Totals) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut prev_nl = false;
    let mut head_done = false;
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut data = &buf[..n];
        if !head_done {
            match memchr::memmem::find(data, b"\r\n\r\n") {
                Some(p) => {
                    head_done = true;
                    data = &data[p + 4..];
                }
                None => continue,
            }
        }
        // herald ends lines with LF only, so a frame ends at "\n\n"; the
        // chunked framing's CRLFs never form that pair.
        let mut frames = 0u64;
        for &b in data {
            let nl = b == b'\n';
            if nl && prev_nl {
                frames += 1;
            }
            prev_nl = nl;
        }
        totals.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if frames > 0 {
            totals.frames.fetch_add(frames, Ordering::Relaxed);
        }
    }
}

/// Publishes broadcast events over one keep-alive connection, each request
/// sent when the previous one is answered. Returns events published.
async fn publish(target: SocketAddr, seconds: u64, payload: usize, batch: usize) -> u64 {
    let mut s = TcpStream::connect(target).await.expect("publisher connect");
    s.set_nodelay(true).ok();
    let pad = "x".repeat(payload);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    // Each publisher numbers its own events; only counts matter here.
    while Instant::now() < end {
        let one = |k: u64| format!(r#"{{"broadcast":true,"data":{{"n":{k},"p":"{pad}"}}}}"#);
        let body = if batch <= 1 {
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
        n += batch.max(1) as u64;
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
