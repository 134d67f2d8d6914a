//! `sse-load`: opens many SSE connections to herald (spread over source
//! addresses 127.0.0.2.. to get past the ephemeral-port limit of one source,
//! and past ~19,000 connections over child processes, since no process may
//! hold more than 20,000 open files), publishes events through herald's HTTP
//! API or straight into Kafka, parses every stream, and reports end-to-end
//! latency (HDR histogram), delivered vs expected, gaps and duplicates, and
//! the server's CPU time and RSS read from /proc.
//!
//! Every loop is bounded: connections by --connections, publishing by
//! --publish-seconds, settling by --settle-seconds, holding by
//! --hold-seconds. Targets loopback only.
//!
//! Example (the figures in BENCHMARKS.md):
//!   sse-load --target 127.0.0.1:8080 --connections 10000 \
//!            --publish-seconds 10 --rate 50 --server-pid $(pgrep -n herald)
//!
//! Child processes (automatic when --connections exceeds --per-process):
//! each runs `sse-load --child` over its share of connection indexes and its
//! own source addresses, prints `tick CONNECTED FRAMES EVENTS CLOSED
//! RECONNECTED` ten times a second, obeys `storm` and `report` lines on
//! stdin, and answers `report` with one `report {json}` line (gaps,
//! duplicates and its latency histogram), which the parent merges.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, Clone, Parser)]
struct Args {
    /// herald's address(es), comma-separated (loopback only). Connection i
    /// goes to target i % (number of targets); HTTP publishing goes to the
    /// first.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8080")]
    target: Vec<SocketAddr>,
    /// SSE connections to open.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Distinct users; connection i is user i % users (default: one per
    /// connection).
    #[arg(long)]
    users: Option<usize>,
    /// Request path template: `{i}` is the connection index, `{u}` the user
    /// index. Targeted events go to user `load-{u}`, so keep that form when
    /// publishing with --targeted.
    #[arg(long, default_value = "/api/sse/subscribe/load-{u}")]
    path: String,
    /// Distinct source addresses (127.0.0.2, .3, ...) per process.
    #[arg(long, default_value_t = 4)]
    sources: u8,
    /// Connections opened at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Publish for this long after connecting (0 = none).
    #[arg(long, default_value_t = 0)]
    publish_seconds: u64,
    /// Payload bytes per published event.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Events per publish request (1 = single-object body; HTTP only).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Concurrent publishers (HTTP: one keep-alive connection each, sending
    /// its next request when the previous one is answered).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Events per second over all publishers (0 = as fast as accepted).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Publish each event to one random user (`load-{u}`) instead of
    /// broadcasting.
    #[arg(long, default_value_t = false)]
    targeted: bool,
    /// Publish straight into Kafka at these bootstrap servers instead of
    /// through herald's HTTP API (user events keyed by user; broadcasts
    /// unkeyed, all to partition 0 so their order holds).
    #[arg(long)]
    kafka_brokers: Option<String>,
    /// Topic to produce to with --kafka-brokers.
    #[arg(long, default_value = "herald")]
    kafka_topic: String,
    /// Reconnect storm: this many seconds into publishing, every stream
    /// drops its connection and reconnects at once with `Last-Event-ID`
    /// (0 = no storm). Gaps and duplicates are counted across the seam.
    #[arg(long, default_value_t = 0)]
    storm_after: u64,
    /// Max wait for deliveries to finish after publishing.
    #[arg(long, default_value_t = 30)]
    settle_seconds: u64,
    /// Server pid(s), comma-separated, to read CPU time and RSS from /proc
    /// (summed).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Keep the connections open this long before exiting.
    #[arg(long, default_value_t = 0)]
    hold_seconds: u64,
    /// Sign a JWT per stream with this HS256 secret (sub = `load-{u}`,
    /// topics `*`, valid for an hour), made before connecting, sent as
    /// `Authorization: Bearer` (herald started with the same --jwt-secret).
    #[arg(long, env = "SSE_LOAD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Most connections per process; more are spread over child processes.
    #[arg(long, default_value_t = 19_000)]
    per_process: usize,
    /// Internal: run as a child of another sse-load.
    #[arg(long, hide = true, default_value_t = false)]
    child: bool,
    /// Internal: index of this process's first connection.
    #[arg(long, hide = true, default_value_t = 0)]
    first_index: usize,
    /// Internal: total connections over all processes (for user indexes).
    #[arg(long, hide = true)]
    total_connections: Option<usize>,
    /// Internal: first source address offset (127.0.0.2 + offset).
    #[arg(long, hide = true, default_value_t = 0)]
    source_offset: u8,
}

impl Args {
    fn total(&self) -> usize {
        self.total_connections.unwrap_or(self.connections)
    }

    fn users(&self) -> usize {
        self.users.unwrap_or(self.total()).max(1)
    }

    /// Streams held by user `u`.
    fn streams_of(&self, u: usize) -> u64 {
        let (n, users) = (self.total(), self.users());
        (n / users + usize::from(u < n % users)) as u64
    }

    /// Gaps and duplicates are only meaningful for one ordered sequence.
    fn check_order(&self) -> bool {
        !self.targeted && self.publishers <= 1
    }
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

impl Totals {
    /// All latency shards in one histogram.
    fn merged_latency(&self) -> hdrhistogram::Histogram<u64> {
        let mut all =
            hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
        for h in &self.latency {
            let _ = all.add(&*h.lock());
        }
        all
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
    if let Some(bad) = args.target.iter().find(|t| !t.ip().is_loopback()) {
        eprintln!("sse-load: --target {bad} is not a loopback address");
        std::process::exit(2);
    }
    if args.target.is_empty() {
        eprintln!("sse-load: --target needs at least one address");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if args.child {
        rt.block_on(child(args));
    } else {
        rt.block_on(run(args));
    }
}

/// Opens this process's connections (indexes `first_index..+connections`),
/// each in its own task, at most `concurrency` connecting at once. Returns
/// once every connection has been started.
async fn open_connections(
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
    let mut tokens = tokens.into_iter();
    for local in 0..args.connections {
        let i = args.first_index + local;
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let totals = totals.clone();
        let target = args.target[i % args.target.len()];
        let src_k = args.source_offset as usize + local % args.sources.max(1) as usize;
        let src = Ipv4Addr::new(127, 0, 0, 2 + (src_k % 250) as u8);
        let path = args
            .path
            .replace("{i}", &i.to_string())
            .replace("{u}", &(i % users).to_string());
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

/// Child mode: hold a share of the connections, report counts ten times a
/// second, obey `storm` / `report` on stdin.
async fn child(args: Args) {
    let totals = Arc::new(Totals::default());
    let (storm_tx, storm_rx) = tokio::sync::watch::channel(false);
    let ticker = {
        let totals = totals.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
                println!(
                    "tick {} {} {} {} {}",
                    c(&totals.connected),
                    c(&totals.frames),
                    c(&totals.events),
                    c(&totals.closed),
                    c(&totals.reconnected)
                );
            }
        })
    };
    open_connections(&args, &totals, &storm_rx).await;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(l)) if l == "storm" => {
                let _ = storm_tx.send(true);
            }
            Ok(Some(l)) if l == "report" => break,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    ticker.abort();
    let all = totals.merged_latency();
    let hist: Vec<[u64; 2]> = all
        .iter_recorded()
        .map(|v| [v.value_iterated_to(), v.count_at_value()])
        .collect();
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let report = serde_json::json!({
        "connected": c(&totals.connected), "frames": c(&totals.frames),
        "events": c(&totals.events), "closed": c(&totals.closed),
        "reconnected": c(&totals.reconnected),
        "gaps": c(&totals.gaps), "dups": c(&totals.dups), "latency": hist,
    });
    println!("report {report}");
}

/// The parent's handle on one child: it feeds the child's counts into the
/// parent's totals and forwards commands.
struct ChildProc {
    proc: tokio::process::Child,
    commands: tokio::sync::mpsc::Sender<&'static str>,
    report: tokio::sync::oneshot::Receiver<serde_json::Value>,
}

/// Spreads `args.connections` over child processes of at most
/// `per_process` connections each, with distinct source addresses.
fn spawn_children(args: &Args, totals: &Arc<Totals>) -> Vec<ChildProc> {
    let per = args.per_process.max(1);
    let n = args.connections.div_ceil(per);
    let exe = std::env::current_exe().expect("own executable");
    let targets: Vec<String> = args.target.iter().map(ToString::to_string).collect();
    (0..n)
        .map(|k| {
            let first = k * per;
            let count = per.min(args.connections - first);
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.arg("--child")
                .args(["--target", &targets.join(",")])
                .args(["--connections", &count.to_string()])
                .args(["--first-index", &first.to_string()])
                .args(["--total-connections", &args.connections.to_string()])
                .args(["--users", &args.users().to_string()])
                .args(["--path", &args.path])
                .args(["--sources", &args.sources.to_string()])
                .args(["--source-offset", &(k * args.sources as usize).to_string()])
                .args(["--concurrency", &args.concurrency.to_string()])
                .args(["--publishers", &args.publishers.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            if args.targeted {
                cmd.arg("--targeted");
            }
            if let Some(secret) = &args.jwt_secret {
                cmd.env("SSE_LOAD_JWT_SECRET", secret);
            }
            let mut proc = cmd.spawn().expect("spawn child sse-load");
            let mut stdin = proc.stdin.take().expect("child stdin");
            let stdout = proc.stdout.take().expect("child stdout");
            let (commands, mut rx) = tokio::sync::mpsc::channel::<&'static str>(4);
            tokio::spawn(async move {
                while let Some(c) = rx.recv().await {
                    if stdin.write_all(format!("{c}\n").as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
            let (report_tx, report) = tokio::sync::oneshot::channel();
            let totals = totals.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                let mut last = [0u64; 5];
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(rest) = line.strip_prefix("tick ") {
                        let now: Vec<u64> =
                            rest.split(' ').filter_map(|v| v.parse().ok()).collect();
                        if now.len() != 5 {
                            continue;
                        }
                        let fields = [
                            &totals.connected,
                            &totals.frames,
                            &totals.events,
                            &totals.closed,
                            &totals.reconnected,
                        ];
                        for (j, f) in fields.iter().enumerate() {
                            f.fetch_add(now[j].saturating_sub(last[j]), Ordering::Relaxed);
                            last[j] = last[j].max(now[j]);
                        }
                    } else if let Some(rest) = line.strip_prefix("report ") {
                        if let Ok(v) = serde_json::from_str(rest) {
                            let _ = report_tx.send(v);
                        }
                        break;
                    }
                }
            });
            ChildProc {
                proc,
                commands,
                report,
            }
        })
        .collect()
}

/// Asks every child for its report and merges gaps, duplicates and latency
/// into `totals` (the counts already arrived through the ticks).
async fn collect_children(children: Vec<ChildProc>, totals: &Totals) {
    for c in &children {
        let _ = c.commands.send("report").await;
    }
    for mut c in children {
        match tokio::time::timeout(Duration::from_secs(60), c.report).await {
            Ok(Ok(r)) => {
                let n = |k: &str| r[k].as_u64().unwrap_or(0);
                totals.gaps.fetch_add(n("gaps"), Ordering::Relaxed);
                totals.dups.fetch_add(n("dups"), Ordering::Relaxed);
                let mut h = totals.latency[0].lock();
                for pair in r["latency"].as_array().into_iter().flatten() {
                    if let (Some(v), Some(k)) = (pair[0].as_u64(), pair[1].as_u64()) {
                        let _ = h.record_n(v.max(1), k);
                    }
                }
            }
            _ => eprintln!("sse-load: a child process did not report"),
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), c.proc.wait()).await;
    }
}

async fn run(args: Args) {
    let totals = Arc::new(Totals::default());
    let pids = args.server_pid.clone();
    let proc0 = read_procs(&pids);

    // Connect, here or in child processes.
    let t = Instant::now();
    let (storm_tx, storm_rx) = tokio::sync::watch::channel(false);
    let children = if args.connections > args.per_process {
        let c = spawn_children(&args, &totals);
        eprintln!(
            "sse-load: {} connections over {} child processes",
            args.connections,
            c.len()
        );
        c
    } else {
        open_connections(&args, &totals, &storm_rx).await;
        Vec::new()
    };
    // Wait until every connection has its preamble (bounded).
    let deadline = Instant::now() + Duration::from_secs(180);
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
    summary.insert("processes".into(), children.len().max(1).into());
    summary.insert("connect_seconds".into(), t.elapsed().as_secs_f64().into());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = read_procs(&pids);
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
        summary.insert("server_rss_idle_kib".into(), p1.rss_kib.into());
        // Server CPU spent accepting and setting up the streams.
        let setup_us = (p1.cpu_ticks - p0.cpu_ticks) as f64 * 1e6 / ticks_per_second();
        summary.insert(
            "server_cpu_us_per_connection".into(),
            (setup_us / connected.max(1) as f64).into(),
        );
    }

    if args.publish_seconds > 0 {
        let frames0 = totals.events.load(Ordering::Relaxed);
        let cpu0 = read_procs(&pids);
        // The generator's own CPU: this process and its children.
        let gen_pids: Vec<u32> = std::iter::once(std::process::id())
            .chain(children.iter().filter_map(|c| c.proc.id()))
            .collect();
        let me0 = read_procs(&gen_pids).expect("own pid");
        let t = Instant::now();
        let pubs = args.publishers.max(1);
        let kafka = args.kafka_brokers.as_ref().map(|b| {
            ClientConfig::new()
                .set("bootstrap.servers", b)
                .set("linger.ms", "0")
                .set("queue.buffering.max.messages", "1000000")
                .create::<FutureProducer>()
                .expect("Kafka producer")
        });
        let mut tasks = Vec::new();
        for k in 0..pubs {
            let plan = Plan {
                target: args.target[0],
                seconds: args.publish_seconds,
                payload: args.payload,
                batch: args.batch,
                rate: args.rate / pubs as f64,
                targeted: args.targeted,
                seed: k as u64,
            };
            let a = args.clone();
            tasks.push(match &kafka {
                Some(p) => tokio::spawn(publish_kafka(plan, a, p.clone())),
                None => tokio::spawn(publish(plan, a)),
            });
        }
        if args.storm_after > 0 {
            let delay = Duration::from_secs(args.storm_after);
            let commands: Vec<_> = children.iter().map(|c| c.commands.clone()).collect();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = storm_tx.send(true);
                for c in commands {
                    let _ = c.send("storm").await;
                }
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
                    let open = (totals.connected.load(Ordering::Relaxed)
                        + totals.reconnected.load(Ordering::Relaxed))
                    .saturating_sub(totals.closed.load(Ordering::Relaxed));
                    eprintln!(
                        "progress: {} events received ({}/s), {open} streams open",
                        now - frames0,
                        now - last
                    );
                    last = now;
                }
            })
        };
        let (mut published, mut expected) = (0, 0);
        for t in tasks {
            let (p, e) = t.await.expect("publisher");
            published += p;
            expected += e;
        }
        if !args.targeted {
            expected = published * connected;
        }
        progress.abort();
        let publish_secs = t.elapsed().as_secs_f64();
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
        // Children's counts arrive ten times a second: let the last tick in.
        if !children.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let wall = t.elapsed().as_secs_f64();
        let received = totals.events.load(Ordering::Relaxed) - frames0;
        let cpu1 = read_procs(&pids);
        let me1 = read_procs(&gen_pids).expect("own pid");
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
        for (k, v) in [
            ("published", published),
            ("expected", expected),
            ("received", received),
            ("lost", expected.saturating_sub(received)),
        ] {
            summary.insert(k.into(), v.into());
        }
        summary.insert(
            "delivered_per_second".into(),
            ((received as f64 / wall).round() as u64).into(),
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
            connected.saturating_sub(totals.closed.load(Ordering::Relaxed))
        );
    }
    // Children report gaps, duplicates and latency only now.
    collect_children(children, &totals).await;
    if args.publish_seconds > 0 {
        let all = totals.merged_latency();
        let ms = |q: f64| all.value_at_quantile(q) as f64 / 1000.0;
        for (k, v) in [
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
    path: &str,
    last_id: Option<String>,
    token: Option<&str>,
) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let mut s = sock.connect(target).await?;
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
    /// Events per second for this publisher; 0 = as fast as accepted.
    rate: f64,
    /// One random user per event (`load-{u}`) instead of broadcasts.
    targeted: bool,
    /// Distinguishes publishers' random sequences.
    seed: u64,
}

/// Paces a publisher and makes its events: each carries a sequence number
/// `n` and its send time `t` (µs since the epoch).
struct Events {
    plan: Plan,
    users: usize,
    pad: String,
    start: Instant,
    end: Instant,
    rng: u64,
    /// Events made so far (the next sequence number).
    n: u64,
}

impl Events {
    fn new(plan: Plan, args: &Args) -> Self {
        let start = Instant::now();
        Self {
            plan,
            users: args.users(),
            pad: "x".repeat(plan.payload),
            start,
            end: start + Duration::from_secs(plan.seconds),
            rng: 0x9E37_79B9_7F4A_7C15u64 ^ now_us() ^ (plan.seed << 32),
            n: 0,
        }
    }

    /// Waits until the next event is due; false once the time is up.
    async fn next_due(&self) -> bool {
        if Instant::now() >= self.end {
            return false;
        }
        if self.plan.rate > 0.0 {
            let due = self.start + Duration::from_secs_f64(self.n as f64 / self.plan.rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        Instant::now() < self.end
    }

    /// The next event: its user index (targeted) and its JSON data.
    fn next(&mut self) -> (Option<usize>, String) {
        let (n, t, pad) = (self.n, now_us(), &self.pad);
        self.n += 1;
        let user = self.plan.targeted.then(|| {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            (self.rng % self.users as u64) as usize
        });
        (user, format!(r#"{{"n":{n},"t":{t},"p":"{pad}"}}"#))
    }
}

/// Publishes over one keep-alive HTTP connection, each request sent when the
/// previous one is answered (and, with a rate, not before its time).
/// Returns (events published, deliveries expected for targeted events).
async fn publish(plan: Plan, args: Args) -> (u64, u64) {
    let target = plan.target;
    let mut s = TcpStream::connect(target).await.expect("publisher connect");
    s.set_nodelay(true).ok();
    let mut events = Events::new(plan, &args);
    let (mut published, mut expected) = (0u64, 0u64);
    let mut buf = vec![0u8; 64 * 1024];
    // With --jwt-secret, a publisher token (`"publish": true`).
    let auth = args.jwt_secret.as_ref().map_or(String::new(), |secret| {
        let claims = serde_json::json!({"sub": "sse-load", "exp": now_us() / 1_000_000 + 3600, "publish": true});
        let t = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign publisher token");
        format!("authorization: Bearer {t}\r\n")
    });
    let batch = plan.batch.max(1);
    while events.next_due().await {
        let mut items = Vec::with_capacity(batch);
        for _ in 0..batch {
            let (user, data) = events.next();
            items.push(match user {
                Some(u) => {
                    expected += args.streams_of(u);
                    format!(r#"{{"user":"load-{u}","data":{data}}}"#)
                }
                None => format!(r#"{{"broadcast":true,"data":{data}}}"#),
            });
        }
        let body = if batch == 1 {
            items.pop().unwrap_or_default()
        } else {
            format!("[{}]", items.join(","))
        };
        let req = format!(
            "POST /api/publish HTTP/1.1\r\nhost: {target}\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
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
        published += batch as u64;
    }
    (published, expected)
}

/// Produces events straight into Kafka: user events keyed by user (herald
/// maps the key to the user), broadcasts unkeyed and all to partition 0 so
/// their order holds. Up to 10,000 unacknowledged at once; only
/// acknowledged events count as published.
async fn publish_kafka(plan: Plan, args: Args, producer: FutureProducer) -> (u64, u64) {
    let mut events = Events::new(plan, &args);
    let mut in_flight = FuturesUnordered::new();
    let (mut published, mut expected, mut failed) = (0u64, 0u64, 0u64);
    let mut settle = |r: Option<(bool, u64)>| match r {
        Some((true, e)) => {
            published += 1;
            expected += e;
        }
        _ => failed += 1,
    };
    while events.next_due().await {
        let (user, data) = events.next();
        let key = user.map(|u| format!("load-{u}"));
        let mut record = FutureRecord::<String, String>::to(&args.kafka_topic).payload(&data);
        record = match &key {
            Some(k) => record.key(k),
            None => record.partition(0),
        };
        let streams = user.map_or(0, |u| args.streams_of(u));
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight
                        .push(async move { (delivery.await.is_ok_and(|r| r.is_ok()), streams) });
                    break;
                }
                Err((_, r)) => {
                    // Local queue full: let deliveries drain, then retry.
                    record = r;
                    match in_flight.next().await {
                        Some(done) => settle(Some(done)),
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
            }
        }
        while in_flight.len() >= 10_000 {
            let done = in_flight.next().await;
            settle(done);
        }
    }
    while let Some(done) = in_flight.next().await {
        settle(Some(done));
    }
    if failed > 0 {
        eprintln!("sse-load: {failed} events were not acknowledged by Kafka");
    }
    (published, expected)
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

/// Summed CPU time and RSS of `pids` (None without pids).
fn read_procs(pids: &[u32]) -> Option<Proc> {
    (!pids.is_empty()).then(|| {
        pids.iter().map(|&p| read_proc(p)).fold(
            Proc {
                cpu_ticks: 0,
                rss_kib: 0,
            },
            |a, b| Proc {
                cpu_ticks: a.cpu_ticks + b.cpu_ticks,
                rss_kib: a.rss_kib + b.rss_kib,
            },
        )
    })
}

fn ticks_per_second() -> f64 {
    // USER_HZ is 100 on Linux for every architecture herald targets.
    100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        Args::parse_from(std::iter::once("sse-load").chain(extra.iter().copied()))
    }

    #[test]
    fn streams_per_user_add_up() {
        let a = args(&["--connections", "10", "--users", "3"]);
        let per: Vec<u64> = (0..3).map(|u| a.streams_of(u)).collect();
        assert_eq!(per, [4, 3, 3]);
        // A child counts users over all processes, not its share.
        let c = args(&[
            "--connections",
            "5",
            "--total-connections",
            "10",
            "--users",
            "3",
        ]);
        assert_eq!(c.streams_of(0), 4);
        assert_eq!(args(&["--connections", "7"]).streams_of(6), 1);
    }

    #[test]
    fn reads_numbers_after_keys() {
        let f = br#"id: 1-2
data: {"n":42,"t":1700000000123456,"p":"x"}"#;
        assert_eq!(field(f, b"\"n\":"), Some(42));
        assert_eq!(field(f, b"\"t\":"), Some(1_700_000_000_123_456));
        assert_eq!(field(f, b"\"q\":"), None);
    }

    #[test]
    fn only_loopback_targets_parse_as_several() {
        let a = args(&["--target", "127.0.0.1:1,127.0.0.1:2"]);
        assert_eq!(a.target.len(), 2);
        assert!(a.target.iter().all(|t| t.ip().is_loopback()));
    }
}
