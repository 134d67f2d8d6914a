//! Subscriber and publisher auth (JWT, publisher secret), CORS, and the
//! stream ended at its token's expiry. Tokens are made here with the
//! `jsonwebtoken` encoder and the test keys in `tests/keys/`.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use base64::Engine;
use herald::auth::Auth;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{metric, SseClient, TestServer, Transport, WAIT};

const SECRET: &[u8] = b"test-secret-0123456789abcdef";
const PUBLISH_SECRET: &str = "publisher-secret-0123456789";

fn now() -> u64 {
    herald::auth::now_secs()
}

fn hs(claims: &Value) -> String {
    sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

/// A token with `alg: none` and no signature.
fn unsigned(claims: &Value) -> String {
    let b = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b(&json!({"alg": "none", "typ": "JWT"})),
        b(claims)
    )
}

fn auth() -> Auth {
    Auth::open()
        .with_secret(SECRET)
        .unwrap()
        .with_public_key_pem(include_bytes!("keys/rsa-public.pem"))
        .unwrap()
        .with_publish_secret(Some(PUBLISH_SECRET.as_bytes().to_vec()))
}

async fn server(t: Transport) -> TestServer {
    let mut s = TestServer::on_with(t, |c| c.auth = auth()).await;
    s.publish_token = Some(PUBLISH_SECRET.to_owned());
    s
}

/// Counters are process-wide (every test server in this binary shares the
/// recorder), so tests compare before and after.
async fn denied(s: &TestServer, label: &str) -> f64 {
    metric(
        &s.get("/metrics").await.2,
        "herald_auth_denied_total",
        Some(label),
    )
}

#[derive(Debug, Clone, Copy)]
enum Via {
    Header,
    Cookie,
    Query,
}

/// Opens `user`'s stream (with `query`, e.g. `topic=a`) carrying `token`.
async fn open(s: &TestServer, user: &str, query: &str, token: &str, via: Via) -> reqwest::Response {
    let mut url = s.url(&format!("/api/sse/subscribe/{user}?{query}"));
    let mut req = s.http.get(&url);
    match via {
        Via::Header => req = req.header("authorization", format!("Bearer {token}")),
        Via::Cookie => req = req.header("cookie", format!("other=1; herald_token={token}")),
        Via::Query => {
            url.push_str(&format!("&access_token={token}"));
            req = s.http.get(&url);
        }
    }
    tokio::time::timeout(WAIT, req.send())
        .await
        .unwrap()
        .unwrap()
}

async fn status_and_error(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let body: Value =
        serde_json::from_str(&resp.text().await.unwrap_or_default()).unwrap_or(Value::Null);
    (status, body["error"].as_str().unwrap_or("").to_owned())
}

async fn tokens_are_checked_through_header_cookie_and_query(t: Transport) {
    let s = server(t).await;
    let forbidden0 = denied(&s, "reason=\"forbidden\"").await;
    let invalid0 = denied(&s, "reason=\"invalid\"").await;
    let exp = now() + 3600;
    let rsa = EncodingKey::from_rsa_pem(include_bytes!("keys/rsa-private.pem")).unwrap();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "valid HS256",
            hs(&json!({"sub": "alice", "exp": exp, "topics": ["news"]})),
            200,
            "",
        ),
        (
            "valid RS256",
            sign(
                Algorithm::RS256,
                &rsa,
                &json!({"sub": "alice", "exp": exp, "topics": "*"}),
            ),
            200,
            "",
        ),
        (
            "expired",
            hs(&json!({"sub": "alice", "exp": now() - 10, "topics": "*"})),
            401,
            "expired",
        ),
        (
            "not yet valid",
            hs(&json!({"sub": "alice", "exp": exp, "nbf": now() + 600, "topics": "*"})),
            401,
            "not valid yet",
        ),
        (
            "wrong signature",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(b"another-secret-0123456789abc"),
                &json!({"sub": "alice", "exp": exp, "topics": "*"}),
            ),
            401,
            "signature",
        ),
        (
            "algorithm without a key (HS512)",
            sign(
                Algorithm::HS512,
                &EncodingKey::from_secret(SECRET),
                &json!({"sub": "alice", "exp": exp, "topics": "*"}),
            ),
            401,
            "not accepted",
        ),
        (
            "alg none",
            unsigned(&json!({"sub": "alice", "exp": exp, "topics": "*"})),
            401,
            "invalid token",
        ),
        (
            "RS256 public key used as an HS256 secret",
            sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(include_bytes!("keys/rsa-public.pem")),
                &json!({"sub": "alice", "exp": exp, "topics": "*"}),
            ),
            401,
            "signature",
        ),
        ("garbage", "not.a.jwt".to_owned(), 401, "invalid token"),
        (
            "no exp",
            hs(&json!({"sub": "alice", "topics": "*"})),
            401,
            "exp",
        ),
        (
            "wrong sub",
            hs(&json!({"sub": "bob", "exp": exp, "topics": "*"})),
            403,
            "sub",
        ),
        (
            "wrong topic",
            hs(&json!({"sub": "alice", "exp": exp, "topics": ["sport"]})),
            403,
            "news",
        ),
        (
            "no topics claim",
            hs(&json!({"sub": "alice", "exp": exp})),
            403,
            "news",
        ),
    ];
    for via in [Via::Header, Via::Cookie, Via::Query] {
        for (name, token, want, says) in &cases {
            let resp = open(&s, "alice", "topic=news", token, via).await;
            if *want == 200 {
                assert_eq!(resp.status(), 200, "{name} via {via:?}");
                let mut stream = SseClient::new(resp);
                s.publish_ok(json!({"topic": "news", "data": name})).await;
                assert_eq!(stream.next().await.data, json!(name).to_string());
                continue;
            }
            if *want == 401 {
                assert!(resp.headers().contains_key("www-authenticate"), "{name}");
            }
            let (status, error) = status_and_error(resp).await;
            assert_eq!(status, *want, "{name} via {via:?}: {error}");
            assert!(
                error.contains(says),
                "{name} via {via:?}: {error:?} lacks {says:?}"
            );
            assert!(!error.contains(token.as_str()), "the token is echoed");
        }
    }
    // No token at all.
    let resp = s
        .http
        .get(s.url("/api/sse/subscribe/alice"))
        .send()
        .await
        .unwrap();
    let (status, error) = status_and_error(resp).await;
    assert_eq!(
        (status, error.contains("needs a token")),
        (401, true),
        "{error}"
    );

    assert!(denied(&s, "reason=\"forbidden\"").await - forbidden0 >= 9.0);
    assert!(denied(&s, "reason=\"invalid\"").await - invalid0 >= 24.0);
    let page = s.get("/metrics").await.2;
    assert!(
        !page.contains("alice"),
        "user ids must not be metric labels"
    );
}

async fn es256_audience_and_issuer(t: Transport) {
    let s = TestServer::on_with(t, |c| {
        c.auth = Auth::open()
            .with_public_key_pem(include_bytes!("keys/ec-public.pem"))
            .unwrap()
            .with_audience(Some("herald".into()))
            .with_issuer(Some("https://id.example".into()));
    })
    .await;
    let ec = EncodingKey::from_ec_pem(include_bytes!("keys/ec-private.pem")).unwrap();
    let exp = now() + 60;
    let good = json!({"sub": "u", "exp": exp, "aud": "herald", "iss": "https://id.example"});
    let t = sign(Algorithm::ES256, &ec, &good);
    assert_eq!(open(&s, "u", "", &t, Via::Header).await.status(), 200);
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("other");
    let t = sign(Algorithm::ES256, &ec, &wrong_aud);
    let (status, error) = status_and_error(open(&s, "u", "", &t, Via::Header).await).await;
    assert_eq!(
        (status, error.as_str()),
        (401, "invalid token: wrong audience (aud)")
    );
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    let t = sign(Algorithm::ES256, &ec, &wrong_iss);
    let (status, error) = status_and_error(open(&s, "u", "", &t, Via::Header).await).await;
    assert_eq!(
        (status, error.as_str()),
        (401, "invalid token: wrong issuer (iss)")
    );
}

async fn query_tokens_can_be_disabled(t: Transport) {
    let s = TestServer::on_with(t, |c| {
        let mut a = auth();
        a.query_param = false;
        c.auth = a;
    })
    .await;
    let t = hs(&json!({"sub": "u", "exp": now() + 60}));
    let (status, error) = status_and_error(open(&s, "u", "", &t, Via::Query).await).await;
    assert_eq!(status, 401);
    assert!(error.contains("disabled"), "{error}");
    assert_eq!(open(&s, "u", "", &t, Via::Header).await.status(), 200);
}

async fn a_stream_ends_when_its_token_expires(t: Transport) {
    let s = server(t).await;
    let expired = || {
        metric(
            &s.metrics(),
            "herald_sse_connections_closed_total",
            Some("reason=\"expired\""),
        )
    };
    let closed0 = expired();
    let exp = now() + 2;
    let t = hs(&json!({"sub": "u", "exp": exp}));
    let resp = open(&s, "u", "", &t, Via::Query).await;
    assert_eq!(resp.status(), 200);
    let mut stream = SseClient::new(resp);
    s.publish_ok(json!({"user": "u", "data": 1})).await;
    assert_eq!(stream.next().await.data, "1");
    let started = std::time::Instant::now();
    let rest = stream.until_end().await;
    let last = rest.last().expect("an event before the end");
    assert_eq!(last.event, herald::sse::frame::TOKEN_EXPIRED_EVENT);
    let data: Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(data, json!({"reason": "token-expired", "exp": exp}));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(herald::auth::now_secs() >= exp);
    support::eventually(
        || s.fanout.registry().connections() == 0,
        "the expired stream to unregister",
    )
    .await;
    assert!(expired() > closed0, "counted as expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_needs_a_publisher_token_or_the_secret() {
    let s = server(Transport::Herald).await;
    let before = denied(&s, "endpoint=\"publish\"").await;
    let body = json!({"broadcast": true, "data": 1}).to_string();
    let post = |auth: Option<String>| {
        let mut r = s
            .http
            .post(s.url("/api/publish"))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let exp = now() + 60;
    let cases = [
        (None, 401),
        (Some("Bearer wrong-secret".to_owned()), 401),
        (
            Some(format!("Bearer {}", hs(&json!({"sub": "svc", "exp": exp})))),
            403,
        ),
        (
            Some(format!(
                "Bearer {}",
                hs(&json!({"exp": exp, "publish": false}))
            )),
            403,
        ),
        (
            Some(format!(
                "Bearer {}",
                hs(&json!({"exp": now() - 5, "publish": true}))
            )),
            401,
        ),
        (
            Some(format!(
                "Bearer {}",
                hs(&json!({"exp": exp, "publish": true}))
            )),
            200,
        ),
        (Some(format!("Bearer {PUBLISH_SECRET}")), 200),
    ];
    for (auth, want) in cases {
        let shown = auth.clone();
        let resp = post(auth).await.unwrap();
        assert_eq!(
            resp.status().as_u16(),
            want,
            "{shown:?}: {:?}",
            resp.text().await
        );
    }
    assert!(denied(&s, "endpoint=\"publish\"").await - before >= 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_secret_alone_protects_only_publishing() {
    let s = TestServer::with(|c| {
        c.auth = Auth::open().with_publish_secret(Some(PUBLISH_SECRET.as_bytes().to_vec()));
    })
    .await;
    let mut stream = s.subscribe("open").await;
    let (status, _) = s.publish(json!({"user": "open", "data": 1})).await;
    assert_eq!(status, 401);
    let resp = s
        .http
        .post(s.url("/api/publish"))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {PUBLISH_SECRET}"))
        .body(json!({"user": "open", "data": 2}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(stream.next().await.data, "2");
}

async fn cors_preflight_and_stream_headers(t: Transport) {
    let s = TestServer::on_with(t, |c| {
        c.cors = herald::config::Cors {
            origins: vec!["https://app.example".into()],
            credentials: true,
        };
    })
    .await;
    let preflight = |origin: &'static str, path: &'static str| {
        s.http
            .request(reqwest::Method::OPTIONS, s.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .send()
    };
    let ok = preflight("https://app.example", "/api/publish")
        .await
        .unwrap();
    assert_eq!(ok.status(), 204);
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("content-type") && allowed.contains("authorization"));
    assert_eq!(h["vary"], "origin");

    let refused = preflight("https://evil.example", "/api/publish")
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert!(!refused
        .headers()
        .contains_key("access-control-allow-origin"));
    assert!(refused
        .text()
        .await
        .unwrap()
        .contains("not in --cors-origins"));

    // The stream and the publish answer carry the headers for the allowed
    // origin only.
    let stream = s
        .http
        .get(s.url("/api/sse/subscribe/u"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(stream.headers()["access-control-allow-credentials"], "true");
    let expose = stream.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(expose.contains("herald-resumed-after"));
    let mut events = SseClient::new(stream);
    let other = s
        .http
        .get(s.url("/api/sse/subscribe/u"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    let published = s
        .http
        .post(s.url("/api/publish"))
        .header("origin", "https://app.example")
        .header("content-type", "application/json")
        .body(json!({"user": "u", "data": 7}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        published.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(events.next().await.data, "7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_off_refuses_preflights() {
    let s = TestServer::start().await;
    let resp = s
        .http
        .request(reqwest::Method::OPTIONS, s.url("/api/publish"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("--cors-origins"));
}

on_every_transport!(
    tokens_are_checked_through_header_cookie_and_query,
    es256_audience_and_issuer,
    query_tokens_can_be_disabled,
    a_stream_ends_when_its_token_expires,
    cors_preflight_and_stream_headers,
);
