//! Identity-provider keys that rotate: `--jwt-jwks-url` against a local JWKS
//! server whose keys change while streams stay open (RS256, ES256, EdDSA,
//! chosen by `kid`), a refresh on an unknown `kid` (rate-limited), the last
//! good set kept through an outage; and `--jwt-public-key` reloaded on
//! SIGHUP by the real binary without dropping its streams.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald::auth::Auth;
use herald::jwks::JwksConfig;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde_json::json;
use support::{eventually, metric, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Signer {
    kid: &'static str,
    alg: Algorithm,
    key: EncodingKey,
}

fn signer(kid: &'static str, alg: Algorithm) -> Signer {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(include_bytes!("keys/rsa-private.pem")),
        Algorithm::ES256 => EncodingKey::from_ec_pem(include_bytes!("keys/ec-private.pem")),
        _ => EncodingKey::from_ed_pem(include_bytes!("keys/ed-private.pem")),
    }
    .unwrap();
    Signer { kid, alg, key }
}

impl Signer {
    fn jwk(&self) -> Jwk {
        let mut j = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        j.common.key_id = Some(self.kid.into());
        j
    }

    fn token(&self, user: &str, publish: bool) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.into());
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        jsonwebtoken::encode(
            &h,
            &json!({"sub": user, "exp": exp, "publish": publish}),
            &self.key,
        )
        .unwrap()
    }
}

/// A JWKS endpoint: serves `keys` (or a 500 while `down`), counts fetches.
#[derive(Clone, Default)]
struct Endpoint {
    keys: Arc<Mutex<Option<String>>>,
    fetches: Arc<AtomicUsize>,
}

impl Endpoint {
    fn set(&self, signers: &[&Signer]) {
        let set = JwkSet {
            keys: signers.iter().map(|s| s.jwk()).collect(),
        };
        *self.keys.lock() = Some(serde_json::to_string(&set).unwrap());
    }

    fn down(&self) {
        *self.keys.lock() = None;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut c, _)) = listener.accept().await else {
                    return;
                };
                let this = this.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut n = 0;
                    while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        match c.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => n += k,
                        }
                    }
                    this.fetches.fetch_add(1, Ordering::SeqCst);
                    let reply = match this.keys.lock().clone() {
                        Some(body) => format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
                    };
                    let _ = c.write_all(reply.as_bytes()).await;
                });
            }
        });
        url
    }
}

async fn server(url: &str, refresh: Duration, min_gap: Duration) -> TestServer {
    let url = url.to_owned();
    TestServer::with(move |c| {
        c.auth = Auth::open().with_jwks();
        c.jwks = Some(JwksConfig {
            url,
            refresh,
            min_gap,
        });
    })
    .await
}

/// The status a stream request with `token` gets (the stream is dropped).
async fn status(s: &TestServer, user: &str, token: &str) -> u16 {
    s.http
        .get(s.url(&format!("/api/sse/subscribe/{user}?access_token={token}")))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_while_streams_stay_open_and_an_outage_keeps_the_last_set() {
    let (rsa, ec, ed) = (
        signer("k-rsa", Algorithm::RS256),
        signer("k-ec", Algorithm::ES256),
        signer("k-ed", Algorithm::EdDSA),
    );
    let jwks = Endpoint::default();
    jwks.set(&[&rsa]);
    let url = jwks.serve().await;
    let mut s = server(&url, Duration::from_millis(200), Duration::from_millis(100)).await;
    let mut open = s
        .subscribe(&format!("u?access_token={}", rsa.token("u", false)))
        .await;
    assert_eq!(
        status(&s, "u", &ec.token("u", false)).await,
        401,
        "not in the set yet"
    );

    // The provider rotates: the RSA key out, EC and Ed25519 in.
    jwks.set(&[&ec, &ed]);
    let (ec_token, ed_token) = (ec.token("u", false), ed.token("u", false));
    for _ in 0..100 {
        if status(&s, "u", &ec_token).await == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status(&s, "u", &ec_token).await,
        200,
        "ES256 after the refresh"
    );
    assert_eq!(
        status(&s, "u", &ed_token).await,
        200,
        "EdDSA after the refresh"
    );
    assert_eq!(
        status(&s, "u", &rsa.token("u", false)).await,
        401,
        "the removed key"
    );
    // The stream opened with the removed key goes on.
    s.publish_token = Some(ec.token("backend", true));
    s.publish_ok(json!({"user": "u", "data": "after rotation"}))
        .await;
    assert_eq!(open.next().await.data, r#""after rotation""#);

    // The endpoint goes down: refreshes fail, the last good set stays.
    let before = jwks.fetches();
    jwks.down();
    eventually(
        || jwks.fetches() >= before + 3,
        "refreshes during the outage",
    )
    .await;
    assert_eq!(
        status(&s, "u", &ec_token).await,
        200,
        "the last good set is kept"
    );
    let errors = metric(
        &s.metrics(),
        "herald_jwks_refreshes_total",
        Some("outcome=\"error\""),
    );
    assert!(errors >= 3.0, "{errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_fetches_the_set_again_at_most_once_per_gap() {
    let (rsa, ec) = (
        signer("k1", Algorithm::RS256),
        signer("k2", Algorithm::ES256),
    );
    let jwks = Endpoint::default();
    jwks.set(&[&rsa]);
    let url = jwks.serve().await;
    let s = server(&url, Duration::from_secs(3600), Duration::from_millis(500)).await;
    assert_eq!(jwks.fetches(), 1, "fetched at start");
    jwks.set(&[&rsa, &ec]);
    // The first token with the new kid is refused and asks for a fetch.
    let token = ec.token("v", false);
    assert_eq!(status(&s, "v", &token).await, 401);
    eventually(|| jwks.fetches() == 2, "a fetch for the unknown kid").await;
    let mut got = 0;
    for _ in 0..100 {
        got = status(&s, "v", &token).await;
        if got == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(got, 200);
    // A flood of made-up kids: at most one more fetch per gap.
    let fetched = jwks.fetches();
    let t0 = std::time::Instant::now();
    for i in 0..50 {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(format!("made-up-{i}"));
        let t = jsonwebtoken::encode(&h, &json!({"sub": "v", "exp": 4_000_000_000u64}), &rsa.key)
            .unwrap();
        assert_eq!(status(&s, "v", &t).await, 401);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let gaps = (t0.elapsed().as_millis() / 500) as usize + 1;
    assert!(
        jwks.fetches() - fetched <= gaps,
        "{} fetches for 50 unknown kids in {:?}",
        jwks.fetches() - fetched,
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_does_not_start_without_a_key_set() {
    let jwks = Endpoint::default();
    jwks.down();
    let url = jwks.serve().await;
    let mut config = herald::config::Config::default_for_tests();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.auth = Auth::open().with_jwks();
    config.jwks = Some(JwksConfig {
        url: url.clone(),
        refresh: Duration::from_secs(60),
        min_gap: Duration::from_secs(1),
    });
    let e = herald::app::start(config, 100)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--jwt-jwks-url") && e.contains(&url) && e.contains("500"),
        "{e}"
    );
}

/// The binary, with `--jwt-public-key` on a file that is replaced, then
/// SIGHUP: new tokens are checked with the new key, the stream opened with
/// the old one stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_public_key_without_dropping_streams() {
    let dir = std::env::temp_dir().join(format!("herald-sighup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("key.pem");
    std::fs::write(&key_file, include_bytes!("keys/rsa-public.pem")).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--log", "warn"])
            .arg("--jwt-public-key")
            .arg(&key_file)
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = support::client();
    eventually_async(|| async {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    let (rsa, ec) = (signer("r", Algorithm::RS256), signer("e", Algorithm::ES256));
    let get = |token: String| {
        let http = http.clone();
        let url = format!("{base}/api/sse/subscribe/w?access_token={token}");
        async move { http.get(url).send().await.unwrap() }
    };
    let open = get(rsa.token("w", false)).await;
    assert_eq!(open.status(), 200);
    let mut body = open.bytes_stream();
    assert_eq!(get(ec.token("w", false)).await.status(), 401);

    std::fs::write(&key_file, include_bytes!("keys/ec-public.pem")).unwrap();
    let pid = child.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    eventually_async(|| async { get(ec.token("w", false)).await.status() == 200 }).await;
    assert_eq!(
        get(rsa.token("w", false)).await.status(),
        401,
        "the old key is gone"
    );
    // The old stream is still served.
    let resp = http
        .post(format!("{base}/api/publish"))
        .bearer_auth(ec.token("svc", true))
        .header("content-type", "application/json")
        .body(json!({"user": "w", "data": "after reload"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    use futures_util::StreamExt;
    let mut seen = String::new();
    while !seen.contains("after reload") {
        let chunk = tokio::time::timeout(support::WAIT, body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // A bad file keeps the current key.
    std::fs::write(&key_file, b"not a key").unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(ec.token("w", false)).await.status(), 200);
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A child process killed (and reaped) when dropped, even on a failed
/// assertion.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn eventually_async<F, Fut>(mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met within 10 s");
}
