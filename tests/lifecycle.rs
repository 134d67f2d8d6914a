//! Heartbeats on idle streams, shutdown ending open streams within the
//! deadline (in-process and for the real binary on SIGTERM), and the
//! connection cap answering 503.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use support::{raw_stream, TestServer, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running herald binary: the child, the address it logged, the log lines
/// read so far, and the rest as they come.
struct Spawned {
    child: std::process::Child,
    addr: String,
    seen: Vec<String>,
    lines: std::sync::mpsc::Receiver<String>,
}

/// Spawns the binary with `args` (under `ulimit -n` when `nofile` is given)
/// and waits for the log line naming its address, text or JSON format.
fn spawn_herald(args: &[&str], nofile: Option<u32>) -> Spawned {
    let bin = env!("CARGO_BIN_EXE_herald");
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("sh");
            c.args([
                "-c",
                &format!("ulimit -n {n} && exec {bin} \"$@\""),
                "herald",
            ]);
            c.args(args);
            c
        }
        None => {
            let mut c = Command::new(bin);
            c.args(args);
            c
        }
    };
    let mut child = cmd
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let addr = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("herald logged its address");
        let plain = strip_ansi(&line);
        seen.push(line);
        if let Some(at) = plain.find("addr") {
            let rest = plain[at + 4..].trim_start_matches(['=', '"', ':']);
            let addr: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            if !addr.is_empty() {
                break addr;
            }
        }
    };
    Spawned {
        child,
        addr,
        seen,
        lines,
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn idle_streams_get_heartbeat_comments(t: Transport) {
    let server = TestServer::on_with(t, |c| c.streams.heartbeat = Duration::from_millis(50)).await;
    let mut raw = raw_stream(&server.http, &server.url("/api/sse/subscribe/idle")).await;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.matches(":\n\n").count() < 3 {
        assert!(Instant::now() < deadline, "no heartbeats: {seen:?}");
        let chunk = tokio::time::timeout(Duration::from_secs(5), raw.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(seen.starts_with(": herald\n"), "{seen:?}");
}

async fn shutdown_ends_open_streams_within_the_deadline(t: Transport) {
    let server = TestServer::on_with(t, |c| {
        c.shutdown.drain = Duration::from_millis(300);
        c.shutdown.deadline = Duration::from_secs(3);
    })
    .await;
    let mut streams = Vec::new();
    for i in 0..20 {
        streams.push(server.subscribe(&format!("u{i}")).await);
    }
    // An idle keep-alive connection too.
    assert_eq!(server.get("/healthz").await.0, 200);
    let mut raw = raw_stream(&server.http, &server.url("/api/sse/subscribe/raw")).await;
    drain_ends(server, streams, Duration::from_secs(3)).await;
    // The stream ended cleanly, with a retry hint before the end.
    let mut tail = String::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), raw.next())
        .await
        .unwrap()
    {
        tail.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(tail.ends_with("retry: 3000\n\n"), "{tail:?}");
}

async fn draining_server_refuses_new_streams_and_is_not_ready(t: Transport) {
    let server = TestServer::on_with(t, |c| {
        c.shutdown.drain = Duration::from_millis(500);
    })
    .await;
    // Keep connections open across the drain start to ask on (accepting
    // stops when it starts).
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let mut ready = TcpStream::connect(server.addr).await.unwrap();
    // Enough streams that ending them, spread over the drain period, keeps
    // the drain in its second stage (connections still served) for a while.
    let mut hold = Vec::new();
    for i in 0..20 {
        hold.push(server.subscribe(&format!("hold{i}")).await);
    }
    support::eventually(
        || server.http_connections().0 == 22,
        "22 connections accepted",
    )
    .await;
    server.begin_shutdown();
    support::eventually(
        || server.phase() == herald::lifecycle::Phase::Draining,
        "draining",
    )
    .await;
    conn.write_all(b"GET /api/sse/subscribe/late HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = conn.read(&mut buf).await.unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("shutting down"), "{reply}");
    ready
        .write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let n = ready.read(&mut buf).await.unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("draining"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_get_503_with_a_message() {
    let server = TestServer::with_cap(2, |_| {}).await;
    let _a = server.subscribe("a").await;
    let _b = server.subscribe("b").await;
    let reply = server
        .raw(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(
        reply.contains("connection limit (2 connections)")
            && reply.contains("content-type: application/json")
            && reply.contains(r#"{"error":"herald is at its connection limit"#),
        "{reply}"
    );
    drop(_a);
    server.wait_connections(1).await;
    // A slot is free again.
    support::eventually(|| server.http_connections().0 == 1, "permit back").await;
    let reply = server
        .raw(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// The real binary: bad flags exit 2 naming the flag; SIGTERM ends open
/// streams and the process exits 0 within the deadline; the heap is kept off
/// transparent huge pages.
#[test]
fn binary_rejects_bad_flags_and_drains_on_sigterm() {
    let bin = env!("CARGO_BIN_EXE_herald");
    let out = Command::new(bin)
        .args(["--listen", "nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--listen"), "{err}");

    // Open (no key) on a non-loopback address: refused, saying why.
    let out = Command::new(bin)
        .args(["--listen", "0.0.0.0:0"])
        .env_remove("HERALD_JWT_SECRET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--listen") && err.contains("--insecure-no-auth"),
        "{err}"
    );
    // A secret is never echoed back, even when refused.
    let out = Command::new(bin)
        .args(["--jwt-secret", "short-secret"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--jwt-secret") && !err.contains("short-secret"),
        "{err}"
    );

    let out = Command::new(bin).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--heartbeat-interval",
        "--replay-max-age",
        "HERALD_LISTEN",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }

    let Spawned {
        mut child, addr, ..
    } = spawn_herald(
        &[
            "--listen",
            "127.0.0.1:0",
            "--shutdown-drain",
            "200ms",
            "--shutdown-deadline",
            "2s",
        ],
        None,
    );
    // The heap stays on small pages, so a spike's memory can come back
    // (herald::memory::small_pages).
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.split_whitespace().eq(["THP_enabled:", "0"])),
        "transparent huge pages still on: {status}"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stream_ended = rt.block_on(async {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /api/sse/subscribe/p HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        let t = Instant::now();
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
        (t.elapsed(), String::from_utf8_lossy(&rest).into_owned())
    });
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "herald did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        stream_ended.0 < Duration::from_secs(2),
        "stream ended after {:?}",
        stream_ended.0
    );
    assert!(
        stream_ended.1.contains("retry: 3000"),
        "{:?}",
        stream_ended.1
    );
    assert!(
        stream_ended.1.ends_with("0\r\n\r\n"),
        "clean chunked end: {:?}",
        stream_ended.1
    );
}

/// Under a tiny open-file limit, a flood of connections exhausts file
/// descriptors (over-cap sockets are held briefly to answer 503): accept
/// fails with EMFILE, herald backs off instead of spinning or dying, and
/// serves again once the flood is gone.
#[test]
fn survives_running_out_of_file_descriptors() {
    let Spawned {
        mut child,
        addr,
        lines: rx,
        ..
    } = spawn_herald(
        &["--listen", "127.0.0.1:0", "--log", "herald=debug"],
        Some(100),
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // 400 silent connections against a limit of 100 descriptors.
        let mut flood = Vec::new();
        for _ in 0..400 {
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(&addr)).await
            {
                flood.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(flood);
        // Serving again: a fresh request is answered.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
            if out.starts_with(b"HTTP/1.1 200") {
                break;
            }
            assert!(Instant::now() < deadline, "herald did not recover");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "herald must still be running"
    );
    let logs: Vec<String> = rx.try_iter().collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("out of resources; backing off")),
        "EMFILE was never hit; the test did not test anything: {logs:?}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// `--log-format json` writes one JSON object per line; `--metrics false`
/// turns /metrics off with a message.
#[test]
fn json_logs_and_metrics_off() {
    let Spawned {
        mut child,
        addr,
        seen,
        ..
    } = spawn_herald(
        &[
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--metrics",
            "false",
        ],
        None,
    );
    for line in &seen {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
    }
    assert!(
        seen.iter().any(|l| l.contains("\"herald serving\"")),
        "{seen:?}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reply = rt.block_on(async {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    });
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    assert!(reply.contains("metrics are disabled"), "{reply}");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}

/// Tokens and secrets never reach the logs (even at trace level, for
/// accepted and refused requests alike), and user ids are never metric
/// labels.
#[test]
fn no_secrets_in_logs_or_metrics() {
    const SECRET: &str = "log-test-secret-0123456789abcdef";
    let Spawned {
        mut child,
        addr,
        lines: rx,
        mut seen,
    } = spawn_herald(
        &[
            "--listen",
            "127.0.0.1:0",
            "--log",
            "trace",
            "--jwt-secret",
            SECRET,
        ],
        None,
    );
    let exp = herald::auth::now_secs() + 60;
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let sign = |claims: serde_json::Value| {
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let good = sign(serde_json::json!({"sub": "secret-user-7", "exp": exp}));
    let wrong = sign(serde_json::json!({"sub": "someone-else", "exp": exp}));
    let publisher = sign(serde_json::json!({"exp": exp, "publish": true}));
    let startup = seen.len();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let metrics = rt.block_on(async {
        let http = support::client();
        let base = format!("http://{addr}");
        // hyper's path too (h2c), with the token in a header and a cookie.
        let h2 = support::client_for(support::Transport::H2c);
        let over_h2 = h2
            .get(format!("{base}/api/sse/subscribe/secret-user-7"))
            .header("authorization", format!("Bearer {good}"))
            .send()
            .await
            .unwrap();
        assert_eq!(over_h2.status(), 200);
        assert_eq!(over_h2.version(), reqwest::Version::HTTP_2);
        let refused_h2 = h2
            .get(format!("{base}/api/sse/subscribe/secret-user-7"))
            .header("cookie", format!("herald_token={wrong}"))
            .send()
            .await
            .unwrap();
        assert_eq!(refused_h2.status(), 403);
        drop(over_h2);
        let ok = http
            .get(format!(
                "{base}/api/sse/subscribe/secret-user-7?access_token={good}"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        let refused = http
            .get(format!(
                "{base}/api/sse/subscribe/secret-user-7?access_token={wrong}"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403);
        let published = http
            .post(format!("{base}/api/publish"))
            .header("authorization", format!("Bearer {publisher}"))
            .header("content-type", "application/json")
            .body(r#"{"user":"secret-user-7","data":1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(published.status(), 200);
        drop(ok);
        http.get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(!metrics.contains("secret-user-7"), "user id in metrics");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    // Every line, to the end of the output (the reader thread ends at EOF).
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        seen.push(line);
    }
    let during = seen.len() - startup;
    let logs = seen.join("\n");
    assert!(
        during > 20,
        "trace logging showed only {during} lines for the requests: {logs}"
    );
    assert!(
        logs.contains("h2") && logs.contains("drained"),
        "the h2 requests and the drain are in the log: {logs}"
    );
    for secret in [SECRET, &good, &wrong, &publisher] {
        assert!(!logs.contains(secret), "a secret or token was logged");
    }
}

/// `--api-threads 0` and `2`: with API threads, the connections hyper
/// serves (publish requests here) run on runtimes of their own, streams on
/// the worker threads; without, all on the worker threads. Either way
/// events reach each stream once, in order, and the drain ends every stream
/// within its deadline.
async fn api_threads_serve_publishes_and_streams_and_drain_in_time(t: Transport) {
    for threads in [0, 2] {
        publishes_and_streams_and_drain_in_time(t, threads).await;
    }
}

async fn publishes_and_streams_and_drain_in_time(t: Transport, threads: usize) {
    let server = TestServer::on_with(t, |c| {
        c.server.api_threads = threads;
        c.shutdown.drain = Duration::from_millis(300);
        c.shutdown.deadline = Duration::from_secs(3);
    })
    .await;
    let api_threads = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|name| name.starts_with("herald-api-"))
        .count();
    assert!(api_threads >= threads, "{api_threads} API threads");
    let mut a = server.subscribe("a").await;
    let mut b = server.subscribe("b").await;
    // Several publish connections: both runtimes serve some.
    let publishes: Vec<_> = (0..4)
        .map(|p| {
            let http = reqwest::Client::new();
            let url = server.url("/api/publish");
            tokio::spawn(async move {
                for i in 0..10 {
                    let user = if p % 2 == 0 { "a" } else { "b" };
                    let r = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(serde_json::json!({"user": user, "data": p * 100 + i}).to_string())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 200);
                }
            })
        })
        .collect();
    for p in publishes {
        p.await.unwrap();
    }
    for (s, from) in [(&mut a, [0, 200]), (&mut b, [100, 300])] {
        let got: Vec<i64> = s
            .next_n(20)
            .await
            .into_iter()
            .map(|e| e.data.parse().unwrap())
            .collect();
        for p in from {
            let mine: Vec<i64> = got.iter().copied().filter(|d| d / 100 * 100 == p).collect();
            assert_eq!(mine, (p..p + 10).collect::<Vec<_>>(), "once each, in order");
        }
    }
    drain_ends(server, [a, b], Duration::from_secs(3)).await;
}

/// Drains `server` and checks it took less than `within` and ended every
/// one of `streams`.
async fn drain_ends(
    server: TestServer,
    streams: impl IntoIterator<Item = support::SseClient>,
    within: Duration,
) {
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| tokio::spawn(async move { s.until_end().await }))
        .collect();
    let took = server.shutdown().await;
    assert!(took < within, "drain took {took:?}");
    for r in readers {
        r.await.unwrap();
    }
}

on_h1_transports!(
    draining_server_refuses_new_streams_and_is_not_ready,
    api_threads_serve_publishes_and_streams_and_drain_in_time,
);

on_every_transport!(
    idle_streams_get_heartbeat_comments,
    shutdown_ends_open_streams_within_the_deadline,
);

/// What a new user trips on at the command line: errors name the flag and,
/// when the value came from the environment, the variable; booleans take
/// 1/0; a bad log filter is refused; an address in use says which; logs to
/// a pipe carry no colour codes.
#[test]
fn the_binary_explains_configuration_mistakes() {
    let bin = env!("CARGO_BIN_EXE_herald");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = Command::new(bin);
        c.args(args).env_remove("NO_COLOR");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[], &[("HERALD_WRITE_TIMEOUT", "soon")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--write-timeout") && err.contains("HERALD_WRITE_TIMEOUT"),
        "{err}"
    );
    let (code, err) = run(&["--write-timeout", "soon"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--write-timeout") && !err.contains("HERALD_"),
        "{err}"
    );
    let (code, err) = run(&["--log", "debugg"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--log") && err.contains("not a level"),
        "{err}"
    );
    let (code, err) = run(&["--queue-max-bytes", "64MB!"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--queue-max-bytes") && err.contains("64KiB"),
        "{err}"
    );

    // An address in use: exit 1, naming the address and the flag.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run(&["--listen", &addr], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr} (--listen)")),
        "{err}"
    );

    // Booleans from the environment take 1; the text log on a pipe is plain.
    let mut child = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--write-timeout", "0"])
        .env_remove("NO_COLOR")
        .env("HERALD_INSECURE_NO_AUTH", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let serving = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("herald serving"))
        .expect("herald started");
    assert!(
        !serving.contains('\u{1b}'),
        "colour codes in a pipe: {serving:?}"
    );
    assert!(serving.contains("admin=none"), "{serving}");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}
