//! Past `--per-process` connections: child processes of this tool, each
//! holding its share (indexes and source addresses), reporting counts ten
//! times a second and its histogram at the end; and the child's own loop.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::args::Args;
use crate::stream::{open_connections, Totals};

/// Child mode: hold a share of the connections, report counts ten times a
/// second, obey `storm` / `report` on stdin.
pub(crate) async fn child(args: Args) {
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
pub(crate) struct ChildProc {
    pub(crate) proc: tokio::process::Child,
    pub(crate) commands: tokio::sync::mpsc::Sender<&'static str>,
    pub(crate) report: tokio::sync::oneshot::Receiver<serde_json::Value>,
}

/// Spreads `args.connections` over child processes of at most
/// `per_process` connections each, with distinct source addresses.
pub(crate) fn spawn_children(args: &Args, totals: &Arc<Totals>) -> Vec<ChildProc> {
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
            if args.h2 {
                cmd.arg("--h2").arg("--streams-per-connection");
                cmd.arg(args.streams_per_connection.to_string());
            }
            if let Some(ca) = &args.tls_ca {
                cmd.arg("--tls-ca").arg(ca);
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
pub(crate) async fn collect_children(children: Vec<ChildProc>, totals: &Totals) {
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
