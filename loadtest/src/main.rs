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
//!
//! Stalled streams (`--stalled N`): N more connections that read nothing
//! after their request, each its own user (`stalled-{k}`); with
//! `--stalled-burst-after S`, S seconds into publishing one burst of
//! `--stalled-burst` events per stalled user overflows all their queues at
//! once (a wave of slow closes), while the publishers' request latency is
//! recorded.
//!
//! Layout: `args` (the command line), `stream` (connections and the stream
//! reader), `children` (child processes), `publish` (publishers), `procfs`
//! (CPU and RSS), `report` (what is printed).

mod adversary;
mod args;
mod children;
mod h2;
mod procfs;
mod publish;
mod report;
mod stream;
mod tls;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;

use args::Args;
use children::{child, collect_children, spawn_children, ChildProc};
use procfs::{read_procs, ticks_per_second, Proc};
use publish::{latency_histogram, publish, publish_kafka, stalled_burst, Plan, Published};
use report::Report;
use stream::{open_connections, open_stalled, Totals};

fn main() {
    let args = Args::parse();
    if let Some(bad) = args.target.iter().find(|t| !t.ip().is_loopback()) {
        eprintln!("sse-load: --target {bad} is not a loopback address");
        std::process::exit(2);
    }
    if let Some(bad) = args
        .adversary_kinds
        .iter()
        .find(|k| !adversary::KINDS.contains(&k.as_str()))
    {
        eprintln!(
            "sse-load: --adversary-kinds: no kind {bad:?}; the kinds are {}",
            adversary::KINDS.join(", ")
        );
        std::process::exit(2);
    }
    if args.h2 && args.storm_after > 0 {
        eprintln!("sse-load: --storm-after is for HTTP/1.1 streams; drop --h2 or the storm");
        std::process::exit(2);
    }
    if args.streams_per_connection > 1 && !args.h2 {
        eprintln!("sse-load: --streams-per-connection needs --h2 (HTTP/1.1 holds one stream per connection)");
        std::process::exit(2);
    }
    if args.target.is_empty() {
        eprintln!("sse-load: --target needs at least one address");
        std::process::exit(2);
    }
    if let Some(ca) = &args.tls_ca {
        if let Err(e) = tls::init(ca) {
            eprintln!("sse-load: --tls-ca {e}");
            std::process::exit(2);
        }
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

async fn run(args: Args) {
    let totals = Arc::new(Totals::default());
    let mut report = Report::default();
    let proc0 = read_procs(&args.server_pid);
    let (storm_tx, storm_rx) = tokio::sync::watch::channel(false);
    let (children, connected) = connect(&args, &totals, &storm_rx, &mut report).await;
    let stalled = open_stalled(&args).await;
    if !stalled.is_empty() {
        println!("stalled={} (reading nothing)", stalled.len());
    }
    measure_idle(&args, proc0, connected, &mut report).await;
    if args.publish_seconds > 0 {
        publish_phase(&args, &totals, &children, connected, storm_tx, &mut report).await;
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
        report.stream_latency(&totals);
    }
    report.finish(&totals);
    drop(stalled);
}

/// Opens every connection (here or in child processes) and waits, bounded,
/// until each has its preamble. Returns the children and how many
/// connected.
async fn connect(
    args: &Args,
    totals: &Arc<Totals>,
    storm_rx: &tokio::sync::watch::Receiver<bool>,
    report: &mut Report,
) -> (Vec<ChildProc>, u64) {
    let t = Instant::now();
    let children = if args.connections > args.per_process {
        let c = spawn_children(args, totals);
        eprintln!(
            "sse-load: {} connections over {} child processes",
            args.connections,
            c.len()
        );
        c
    } else {
        open_connections(args, totals, storm_rx).await;
        Vec::new()
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while (totals.frames.load(Ordering::Relaxed) as usize) < args.connections
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = totals.connected.load(Ordering::Relaxed);
    println!("connected={connected} in {:.2}s", t.elapsed().as_secs_f64());
    report.set("connections", connected);
    report.set("processes", children.len().max(1));
    report.set("connect_seconds", t.elapsed().as_secs_f64());
    (children, connected)
}

/// Server RSS per idle connection and CPU per connection set up.
async fn measure_idle(args: &Args, proc0: Option<Proc>, connected: u64, report: &mut Report) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = read_procs(&args.server_pid);
    let (Some(p0), Some(p1)) = (proc0, idle) else {
        return;
    };
    let per = (p1.rss_kib as f64 - p0.rss_kib as f64) * 1024.0 / connected.max(1) as f64;
    println!(
        "server_rss_before_kib={} server_rss_idle_kib={} rss_per_connection_bytes={per:.0}",
        p0.rss_kib, p1.rss_kib
    );
    report.set("rss_per_connection_bytes", per.round() as i64);
    report.set("server_rss_idle_kib", p1.rss_kib);
    // Server CPU spent accepting and setting up the streams.
    let setup_us = (p1.cpu_ticks - p0.cpu_ticks) as f64 * 1e6 / ticks_per_second();
    report.set(
        "server_cpu_us_per_connection",
        setup_us / connected.max(1) as f64,
    );
}

/// Publishes for `--publish-seconds` (with a storm and a stalled burst when
/// asked), lets deliveries settle, and reports throughput, loss and CPU.
async fn publish_phase(
    args: &Args,
    totals: &Arc<Totals>,
    children: &[ChildProc],
    connected: u64,
    storm_tx: tokio::sync::watch::Sender<bool>,
    report: &mut Report,
) {
    let pids = &args.server_pid;
    let frames0 = totals.events.load(Ordering::Relaxed);
    let cpu0 = read_procs(pids);
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
    let burst = (args.stalled > 0 && args.stalled_burst_after > 0).then(|| {
        let a = args.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(a.stalled_burst_after)).await;
            let t = Instant::now();
            let sent = stalled_burst(a.target[0], &a, a.stalled, a.stalled_burst).await;
            println!(
                "stalled_burst events={sent} to {} stalled streams in {:.3}s",
                a.stalled,
                t.elapsed().as_secs_f64()
            );
        })
    });
    let adversaries = if args.adversaries > 0 {
        let until = Instant::now() + Duration::from_secs(args.publish_seconds);
        let before = scrape(args.target[0]).await;
        Some((
            adversary::start(
                args.target[0],
                args.adversaries,
                &args.adversary_kinds,
                until,
            )
            .await,
            before,
        ))
    } else {
        None
    };
    let progress = progress(totals.clone(), frames0);
    let (mut published, mut expected) = (0, 0);
    let mut publish_latency = latency_histogram();
    for t in tasks {
        let Published {
            events,
            expected: e,
            latency,
        } = t.await.expect("publisher");
        published += events;
        expected += e;
        let _ = publish_latency.add(&latency);
    }
    if !args.targeted {
        expected = published * connected;
    }
    progress.abort();
    if let Some(b) = burst {
        let _ = b.await;
    }
    let publish_secs = t.elapsed().as_secs_f64();
    settle(args, totals, frames0, expected).await;
    // Children's counts arrive ten times a second: let the last tick in.
    if !children.is_empty() {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let wall = t.elapsed().as_secs_f64();
    let received = totals.events.load(Ordering::Relaxed) - frames0;
    let cpu1 = read_procs(pids);
    let me1 = read_procs(&gen_pids).expect("own pid");
    let gen_cpu = (me1.cpu_ticks - me0.cpu_ticks) as f64 / ticks_per_second();
    report.set("generator_cpu_seconds", gen_cpu);
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
    report.set("publish_seconds", publish_secs);
    for (k, v) in [
        ("published", published),
        ("expected", expected),
        ("received", received),
        ("lost", expected.saturating_sub(received)),
    ] {
        report.set(k, v);
    }
    report.set(
        "delivered_per_second",
        (received as f64 / wall).round() as u64,
    );
    report.publish_latency(&publish_latency);
    if let Some((adv, before)) = adversaries {
        report.set("adversaries", adv.print());
        let after = scrape(args.target[0]).await;
        let mut why = serde_json::Map::new();
        for family in [
            "herald_sse_connections_closed_total",
            "herald_limited_total",
        ] {
            for (series, v) in deltas(&before, &after, family) {
                println!("server {series} +{v}");
                why.insert(series, v.into());
            }
        }
        report.set("server_closes_and_refusals", serde_json::Value::Object(why));
    }
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        let cpu_ns = (b.cpu_ticks - a.cpu_ticks) as f64 * 1e9 / ticks_per_second();
        report.set(
            "cpu_ns_per_delivered_event",
            (cpu_ns / received.max(1) as f64).round() as i64,
        );
        report.set("server_cpu_seconds", cpu_ns / 1e9);
        println!(
            "server_cpu_seconds={:.2} generator_cpu_seconds={gen_cpu:.2} cpu_ns_per_delivered_event={:.0} server_rss_after_kib={}",
            cpu_ns / 1e9,
            cpu_ns / received.max(1) as f64,
            b.rss_kib
        );
    }
}

/// The node's `/metrics` page (empty if it cannot be read).
async fn scrape(target: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(target).await else {
        return String::new();
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The series of `family` that grew between two pages, and by how much.
fn deltas(before: &str, after: &str, family: &str) -> Vec<(String, f64)> {
    let values = |page: &str| -> std::collections::HashMap<String, f64> {
        page.lines()
            .filter(|l| l.starts_with(family) && !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect()
    };
    let (b, a) = (values(before), values(after));
    let mut out: Vec<(String, f64)> = a
        .into_iter()
        .filter_map(|(k, v)| {
            let d = v - b.get(&k).copied().unwrap_or(0.0);
            (d > 0.0).then_some((k, d))
        })
        .collect();
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out
}

/// Progress once a second while publishing (stderr; the caller aborts it).
fn progress(totals: Arc<Totals>, frames0: u64) -> tokio::task::JoinHandle<()> {
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
}

/// Waits (bounded by `--settle-seconds`, or 3 s without progress) for the
/// expected deliveries.
async fn settle(args: &Args, totals: &Totals, frames0: u64, expected: u64) {
    let until = Instant::now() + Duration::from_secs(args.settle_seconds);
    let mut last = 0;
    let mut last_change = Instant::now();
    while Instant::now() < until {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::field;

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
