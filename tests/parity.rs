//! Transport parity: every subscribe case gets the same status and message
//! from herald's own HTTP/1.1 writer, from hyper's HTTP/1.1, and (where the
//! request can be said in HTTP/2) from h2c: good requests, each 4xx, odd
//! targets (`#`, `<`, `%`), duplicated headers, cookies split over several
//! fields. One admission decides them all; this table holds it to that.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use herald::auth::Auth;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use support::{TestServer, Transport, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &[u8] = b"parity-secret-0123456789abcdef";

fn token(sub: &str) -> String {
    let claims = json!({"sub": sub, "exp": herald::auth::now_secs() + 600, "topics": "*"});
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// What a request got: status, and the JSON `error` (or the raw body).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    message: String,
}

/// One request over raw HTTP/1.1: the head only for a 200 stream, else the
/// whole body.
async fn h1(server: &TestServer, target: &str, headers: &[(&str, &str)]) -> Answer {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let mut req = format!("GET {target} HTTP/1.1\r\nhost: parity\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before a head: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    if status == 200 && len == 0 {
        return Answer {
            status,
            message: String::new(),
        };
    }
    while got.len() < head_end + len {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    answer(status, &got[head_end..head_end + len])
}

/// The same request over h2c.
async fn h2c(server: &TestServer, target: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = server.http.get(server.url(target));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(WAIT, req.send())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let status = resp.status().as_u16();
    if status == 200 {
        return Answer {
            status,
            message: String::new(),
        };
    }
    let body = resp.bytes().await.unwrap();
    answer(status, &body)
}

fn answer(status: u16, body: &[u8]) -> Answer {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    Answer { status, message }
}

struct Case {
    name: &'static str,
    target: &'static str,
    headers: Vec<(&'static str, String)>,
    status: u16,
    /// Part of the message every transport must give.
    says: &'static str,
    /// Whether HTTP/2 can carry it (a target reqwest would re-encode, or
    /// a request line only HTTP/1.1 has, cannot).
    h2: bool,
}

fn case(name: &'static str, target: &'static str, status: u16, says: &'static str) -> Case {
    Case {
        name,
        target,
        headers: vec![],
        status,
        says,
        h2: true,
    }
}

async fn servers() -> Vec<TestServer> {
    let mut v = Vec::new();
    for t in [Transport::Herald, Transport::Hyper, Transport::H2c] {
        v.push(
            TestServer::on_with(t, |c| {
                c.auth = Auth::open().with_secret(SECRET).unwrap();
                c.limits.streams_per_user = std::num::NonZeroUsize::new(1);
            })
            .await,
        );
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscribe_case_gets_the_same_answer_on_every_transport() {
    let servers = servers().await;
    let good = format!("Bearer {}", token("u"));
    let with = |mut c: Case, headers: Vec<(&'static str, String)>| {
        c.headers = headers;
        c
    };
    let cases = vec![
        with(
            case("good", "/api/sse/subscribe/u", 200, ""),
            vec![("authorization", good.clone())],
        ),
        with(
            case(
                "fragment dropped by the URI parser",
                "/api/sse/subscribe/u#x",
                200,
                "",
            ),
            vec![("authorization", good.clone())],
        ),
        Case {
            h2: false,
            ..with(
                case(
                    "< is refused by the URI parser",
                    "/api/sse/subscribe/u<x",
                    400,
                    "",
                ),
                vec![("authorization", good.clone())],
            )
        },
        with(
            case(
                "a lone % is kept in the user id",
                "/api/sse/subscribe/u%",
                403,
                "sub",
            ),
            vec![("authorization", good.clone())],
        ),
        case("no token", "/api/sse/subscribe/u", 401, "needs a token"),
        with(
            case("another user's token", "/api/sse/subscribe/v", 403, "sub"),
            vec![("authorization", good.clone())],
        ),
        with(
            case(
                "empty user",
                "/api/sse/subscribe/",
                400,
                "non-empty user id",
            ),
            vec![("authorization", good.clone())],
        ),
        with(
            case("not UTF-8", "/api/sse/subscribe/%FF", 400, "UTF-8"),
            vec![("authorization", good.clone())],
        ),
        with(
            case(
                "control character",
                "/api/sse/subscribe/%0A",
                400,
                "control",
            ),
            vec![("authorization", good.clone())],
        ),
        with(
            case("empty topic", "/api/sse/subscribe/u?topic=", 400, "empty"),
            vec![("authorization", good.clone())],
        ),
        with(
            // Never a 400 for an id: the stream opens with a reset.
            case(
                "unreadable resume id",
                "/api/sse/subscribe/u?lastEventId=zzz",
                200,
                "",
            ),
            vec![("authorization", good.clone())],
        ),
        with(
            case(
                "Authorization twice",
                "/api/sse/subscribe/u",
                400,
                "Authorization header is given more than once",
            ),
            vec![
                ("authorization", good.clone()),
                ("authorization", good.clone()),
            ],
        ),
        with(
            case(
                "Last-Event-ID twice",
                "/api/sse/subscribe/u",
                400,
                "Last-Event-ID header is given more than once",
            ),
            vec![
                ("authorization", good.clone()),
                ("last-event-id", "1-1".into()),
                ("last-event-id", "1-2".into()),
            ],
        ),
        with(
            case(
                "token in the second of two cookie fields",
                "/api/sse/subscribe/c",
                200,
                "",
            ),
            vec![
                ("cookie", "a=1".into()),
                ("cookie", format!("herald_token={}", token("c"))),
            ],
        ),
        with(
            case(
                "past the per-user limit",
                "/api/sse/subscribe/full",
                429,
                "--max-streams-per-user",
            ),
            vec![("authorization", format!("Bearer {}", token("full")))],
        ),
    ];
    // The per-user case needs one stream of `full` open on each server.
    let mut held = Vec::new();
    for s in &servers {
        let resp = s
            .http
            .get(s.url("/api/sse/subscribe/full"))
            .header("authorization", format!("Bearer {}", token("full")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        held.push(resp);
    }
    for c in &cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut answers = Vec::new();
        for s in &servers {
            let a = match s.transport {
                Transport::H2c if !c.h2 => continue,
                Transport::H2c => h2c(s, c.target, &headers).await,
                _ => h1(s, c.target, &headers).await,
            };
            answers.push((s.transport, a));
        }
        let (_, first) = &answers[0];
        assert_eq!(first.status, c.status, "{}: {answers:?}", c.name);
        assert!(first.message.contains(c.says), "{}: {answers:?}", c.name);
        for (t, a) in &answers {
            assert_eq!(a, first, "{} differs on {t:?}: {answers:?}", c.name);
        }
    }
    // The odd targets subscribed the same user everywhere.
    for s in &servers {
        let users = |u: &str| {
            s.fanout
                .registry()
                .user_streams(&herald::event::Name::new(u).unwrap())
        };
        support::eventually(
            || users("u") == 0 && users("c") == 0,
            "closed streams unregister",
        )
        .await;
        let mut probe = s
            .http
            .get(s.url("/api/sse/subscribe/u#frag"))
            .header("authorization", &good)
            .send()
            .await
            .unwrap();
        assert_eq!(probe.status(), 200);
        assert_eq!(users("u"), 1, "{:?}: `#` ends the path", s.transport);
        let _ = tokio::time::timeout(Duration::from_millis(10), probe.chunk()).await;
    }
    drop(held);
}
