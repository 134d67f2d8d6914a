//! `--access-log`: one line when a stream opens and one when it closes, with
//! the user, topics, client address, close reason, duration and events, and
//! never the token (here in the query string, where a URL log would leak it).
//!
//! Its own test binary: it installs the process's log subscriber.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use herald::auth::Auth;
use serde_json::json;
use support::{eventually, Lines, TestServer, Transport};

const SECRET: &str = "access-log-test-secret";

fn token(args: &[&str]) -> String {
    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        t: herald::token::TokenArgs,
    }
    use clap::Parser;
    let base = ["token", "--secret", SECRET];
    let w = Wrap::try_parse_from(base.iter().chain(args)).unwrap();
    herald::token::sign(&w.t).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_logged_when_they_open_and_close_without_their_token() {
    let lines = Lines::default();
    let sink = lines.clone();
    tracing_subscriber::fmt()
        .with_env_filter(format!("warn,{}=info", herald::stream::ACCESS_LOG))
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .init();
    let mut server = TestServer::with(|c| {
        c.auth = Auth::default().with_secret(SECRET.as_bytes()).unwrap();
        c.auth.query_param = true;
        c.log.access = true;
    })
    .await;
    server.publish_token = Some(token(&["--user", "backend", "--publish"]));
    let user_token = token(&["--user", "ann", "--topics", "news,sport"]);

    let mut c = server
        .subscribe(&format!(
            "ann?topic=news&topic=sport&access_token={user_token}"
        ))
        .await;
    server.publish_ok(json!({"user": "ann", "data": 1})).await;
    server.publish_ok(json!({"topic": "news", "data": 2})).await;
    assert_eq!(c.next_n(2).await.len(), 2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(c);
    eventually(|| lines.text().contains("stream closed"), "the close line").await;

    // One ended by the server: its reason is the server's.
    let _kept = server
        .subscribe(&format!("ann?access_token={}", token(&["--user", "ann"])))
        .await;
    server.shutdown().await;
    eventually(
        || lines.text().matches("stream closed").count() == 2,
        "the second close line",
    )
    .await;

    let log = lines.text();
    let opens: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("stream opened"))
        .collect();
    let closes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("stream closed"))
        .collect();
    assert_eq!((opens.len(), closes.len()), (2, 2), "{log}");
    for want in [
        "user=ann",
        "topics=news,sport",
        "peer=127.0.0.1:",
        "transport=\"h1\"",
        "start=\"live\"",
    ] {
        assert!(opens[0].contains(want), "{want} in {}", opens[0]);
    }
    for want in ["user=ann", "reason=\"client\"", "events=2", "duration_ms="] {
        assert!(closes[0].contains(want), "{want} in {}", closes[0]);
    }
    let ms: u64 = closes[0]
        .split("duration_ms=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms >= 50, "the stream lived at least 50 ms: {ms}");
    assert!(closes[1].contains("reason=\"shutdown\""), "{}", closes[1]);
    assert!(
        !log.contains(&user_token) && !log.contains("access_token"),
        "no token in the log"
    );

    // The transport: hyper's HTTP/1.1 and HTTP/2 say so.
    for (t, user, label) in [
        (Transport::Hyper, "via-hyper", "hyper-h1"),
        (Transport::H2c, "via-h2", "h2"),
    ] {
        let server = TestServer::on_with(t, |c| c.log.access = true).await;
        let _c = server.subscribe(user).await;
        let want = format!("user={user} topics= peer=127.0.0.1:");
        eventually(|| lines.text().contains(&want), "the open line").await;
        let log = lines.text();
        let line = log.lines().find(|l| l.contains(&want)).unwrap();
        assert!(line.contains(&format!("transport=\"{label}\"")), "{line}");
    }
}
