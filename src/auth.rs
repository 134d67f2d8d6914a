//! Who may subscribe to what, and who may publish.
//!
//! With a key configured (`--jwt-secret` for HS256, `--jwt-public-key` for
//! RS256 or ES256, or both), a stream needs a JWT:
//! - found in `Authorization: Bearer`, else the cookie `--jwt-cookie`, else
//!   the `access_token` query parameter (unless `--jwt-query-param false`):
//!   browsers' `EventSource` cannot set headers;
//! - signed with a configured key and algorithm (`none` and any algorithm
//!   without a configured key are refused), `exp` required, `nbf`, and
//!   `aud`/`iss` when configured, enforced with no leeway;
//! - `sub` equal to the path's user id, and a `topics` claim (an array of
//!   names, or `"*"`) covering every `topic=` asked for.
//!
//! Publishing needs a Bearer JWT with `"publish": true`, or the static
//! `--publish-secret` (compared in constant time).
//!
//! A missing or bad token is a 401, a valid one that does not cover the
//! request a 403. Nothing here logs a token.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde_json::Value;

/// The keys tokens are checked against now.
#[derive(Default)]
struct Live {
    set: RwLock<Arc<KeySet>>,
    /// Woken when a token names a `kid` the JWKS set does not hold (the
    /// refresher fetches again, rate-limited).
    unknown_kid: tokio::sync::Notify,
}

#[derive(Default)]
struct KeySet {
    /// By algorithm: the flags' keys.
    fixed: Vec<(Algorithm, DecodingKey)>,
    /// By `kid`: the JWKS set.
    by_kid: HashMap<String, (Algorithm, DecodingKey)>,
}

/// The query parameter a browser page can carry its token in.
pub const QUERY_PARAM: &str = "access_token";

/// Validated auth settings. `Debug` shows no secret.
#[derive(Clone, Default)]
pub struct Auth {
    /// The keys the flags give (the HS256 secret, a PEM public key), one per
    /// algorithm. Empty, and no JWKS: streams are open.
    keys: Vec<(Algorithm, DecodingKey)>,
    /// `--jwt-jwks-url` is set: tokens with a `kid` are checked against the
    /// key set fetched from it (see `crate::jwks`).
    jwks: bool,
    /// The keys checked now (shared by clones): the flags' keys, reloadable
    /// (SIGHUP), and the JWKS set, refreshed.
    live: Arc<Live>,
    audience: Option<String>,
    issuer: Option<String>,
    /// Cookie holding the token.
    pub cookie: String,
    /// Whether `access_token` is accepted.
    pub query_param: bool,
    publish_secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field(
                "algorithms",
                &self.keys.iter().map(|(a, _)| a).collect::<Vec<_>>(),
            )
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("cookie", &self.cookie)
            .field("query_param", &self.query_param)
            .field(
                "publish_secret",
                &self.publish_secret.as_ref().map(|_| "***"),
            )
            .finish()
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// 401: no token where one is needed.
    #[error("{0}")]
    Missing(&'static str),
    /// 401: a token that is not valid (signature, algorithm, time, format).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// 403: a valid token that does not cover this request.
    #[error("{0}")]
    Forbidden(String),
}

impl Denied {
    /// The HTTP status to answer with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Denied::Missing(_) | Denied::Invalid(_) => http::StatusCode::UNAUTHORIZED,
            Denied::Forbidden(_) => http::StatusCode::FORBIDDEN,
        }
    }

    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Missing(_) => "missing",
            Denied::Invalid(_) => "invalid",
            Denied::Forbidden(_) => "forbidden",
        }
    }

    /// Counts this refusal on `endpoint`.
    pub fn count(&self, endpoint: Endpoint) {
        metrics::counter!(crate::metrics::AUTH_DENIED, "endpoint" => endpoint.label(), "reason" => self.reason())
            .increment(1);
    }
}

/// What a token was asked for: the `endpoint` label of
/// `herald_auth_denied_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Subscribe,
    Publish,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Subscribe => "subscribe",
            Endpoint::Publish => "publish",
        }
    }
}

/// What a valid subscribe token grants beyond the request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// When the token expires (seconds since the epoch): the stream is ended
    /// then. `None` when streams are open (no key configured).
    pub expires_at: Option<u64>,
}

/// The claims herald reads, checked by [`Auth::claims`] (jsonwebtoken checks
/// only the signature and algorithm, so every claim error names its claim).
#[derive(Debug)]
struct Claims {
    /// A string, or a number matched by its decimal text (`123` matches
    /// user `"123"`).
    sub: Option<String>,
    /// Seconds since the epoch, rounded down (RFC 7519 allows fractions).
    exp: u64,
    topics: Option<serde_json::Value>,
    publish: bool,
}

/// Where the token may come from in one request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sources<'a> {
    pub authorization: Option<&'a [u8]>,
    pub cookie: Option<&'a [u8]>,
    /// The decoded `access_token` query parameter.
    pub query: Option<&'a str>,
}

/// Problems building [`Auth`] from flags.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

impl Auth {
    /// No keys: streams and publishing are open.
    pub fn open() -> Self {
        Self {
            cookie: "herald_token".into(),
            query_param: true,
            ..Self::default()
        }
    }

    /// Adds the HS256 shared secret.
    pub fn with_secret(mut self, secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < 16 {
            return Err(KeyError("must be at least 16 bytes".into()));
        }
        self.keys
            .push((Algorithm::HS256, DecodingKey::from_secret(secret)));
        self.renew();
        Ok(self)
    }

    /// A fresh live key set from the flags' keys (a builder's copy never
    /// shares one with the value it was cloned from).
    fn renew(&mut self) {
        self.live = Arc::new(Live {
            set: RwLock::new(Arc::new(KeySet {
                fixed: self.keys.clone(),
                by_kid: HashMap::new(),
            })),
            unknown_kid: tokio::sync::Notify::new(),
        });
    }

    /// Tokens with a `kid` are checked against a JWKS key set
    /// (`crate::jwks` fetches it and calls [`Auth::set_jwks`]).
    pub fn with_jwks(mut self) -> Self {
        self.jwks = true;
        self
    }

    /// Replaces the JWKS key set (by `kid`).
    pub fn set_jwks(&self, by_kid: HashMap<String, (Algorithm, DecodingKey)>) {
        let mut set = self.live.set.write();
        *set = Arc::new(KeySet {
            fixed: set.fixed.clone(),
            by_kid,
        });
    }

    /// Keys now in the JWKS set.
    pub fn jwks_len(&self) -> usize {
        self.live.set.read().by_kid.len()
    }

    /// Waits until a token names a `kid` the JWKS set does not hold.
    pub async fn unknown_kid(&self) {
        self.live.unknown_kid.notified().await;
    }

    /// Replaces the PEM public key (SIGHUP) and keeps the HS256 secret and
    /// the JWKS set; open streams are not touched. On error nothing
    /// changes.
    pub fn reload_public_key_pem(&self, pem: &[u8]) -> Result<(), KeyError> {
        let (alg, key) = public_key_pem(pem)?;
        let mut set = self.live.set.write();
        let mut fixed: Vec<_> = set
            .fixed
            .iter()
            .filter(|(a, _)| *a == Algorithm::HS256)
            .cloned()
            .collect();
        fixed.push((alg, key));
        *set = Arc::new(KeySet {
            fixed,
            by_kid: set.by_kid.clone(),
        });
        Ok(())
    }

    /// Adds a public key in PEM: RSA (RS256), EC P-256 (ES256) or Ed25519
    /// (EdDSA). A private key is refused (it would verify nothing).
    pub fn with_public_key_pem(mut self, pem: &[u8]) -> Result<Self, KeyError> {
        self.keys.push(public_key_pem(pem)?);
        self.renew();
        Ok(self)
    }

    pub fn with_audience(mut self, aud: Option<String>) -> Self {
        self.audience = aud;
        self
    }

    pub fn with_issuer(mut self, iss: Option<String>) -> Self {
        self.issuer = iss;
        self
    }

    pub fn with_publish_secret(mut self, secret: Option<Vec<u8>>) -> Self {
        self.publish_secret = secret;
        self
    }

    /// Whether subscribing needs a token.
    pub fn streams_protected(&self) -> bool {
        !self.keys.is_empty() || self.jwks
    }

    /// Whether publishing needs a token or the secret.
    pub fn publish_protected(&self) -> bool {
        self.streams_protected() || self.publish_secret.is_some()
    }

    /// Decides a subscribe request for `user` joining `topics`.
    pub fn subscribe(
        &self,
        user: &str,
        topics: &[impl AsRef<str>],
        from: Sources<'_>,
    ) -> Result<Grant, Denied> {
        if !self.streams_protected() {
            return Ok(Grant { expires_at: None });
        }
        let token = self.find(from)?;
        let claims = self.decode(token)?;
        match claims.sub.as_deref() {
            Some(sub) if sub == user => {}
            Some(_) => {
                return Err(Denied::Forbidden(
                    "the token's sub is not the user id of this stream".into(),
                ))
            }
            None => {
                return Err(Denied::Forbidden(
                    "the token has no sub claim naming the user".into(),
                ))
            }
        }
        for t in topics {
            if !covers(claims.topics.as_ref(), t.as_ref()) {
                return Err(Denied::Forbidden(format!(
                    "the token's topics claim does not include {:?}",
                    t.as_ref()
                )));
            }
        }
        Ok(Grant {
            expires_at: Some(claims.exp),
        })
    }

    /// Decides a publish request from its `Authorization` header. Returns
    /// who is publishing (the token's `sub`, or `publisher-secret`) for the
    /// per-publisher limits; `None` when publishing is open.
    pub fn publish(&self, authorization: Option<&[u8]>) -> Result<Option<String>, Denied> {
        if !self.publish_protected() {
            return Ok(None);
        }
        let token = bearer(authorization).ok_or(Denied::Missing(
            "publishing needs Authorization: Bearer <token>",
        ))?;
        if let Some(secret) = &self.publish_secret {
            if constant_time_eq(token.as_bytes(), secret) {
                return Ok(Some("publisher-secret".into()));
            }
            if !self.streams_protected() {
                return Err(Denied::Invalid("not the publisher secret".into()));
            }
        }
        let claims = self.decode(token)?;
        if claims.publish {
            Ok(Some(format!(
                "sub:{}",
                claims.sub.as_deref().unwrap_or("(none)")
            )))
        } else {
            Err(Denied::Forbidden(
                "the token does not carry \"publish\": true".into(),
            ))
        }
    }

    /// The token of a subscribe request: header, then cookie, then query.
    fn find<'a>(&self, from: Sources<'a>) -> Result<&'a str, Denied> {
        if let Some(t) = bearer(from.authorization) {
            return Ok(t);
        }
        if let Some(t) = from.cookie.and_then(|c| cookie(c, &self.cookie)) {
            return Ok(t);
        }
        if let Some(q) = from.query {
            if !self.query_param {
                return Err(Denied::Missing(
                    "tokens in the access_token query parameter are disabled; use the Authorization header or the cookie",
                ));
            }
            return Ok(q);
        }
        Err(Denied::Missing(
            "this stream needs a token: Authorization: Bearer, the cookie, or access_token",
        ))
    }

    /// Verifies the signature (a configured key and algorithm, never
    /// `none`), then checks the claims with no leeway: `exp` required,
    /// `nbf`, `aud` and `iss` required when configured, and the types of
    /// `sub`, `topics` and `publish`.
    fn decode(&self, token: &str) -> Result<Claims, Denied> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Denied::Invalid("not a signed JWT (bad header or algorithm)".into()))?;
        let set = self.live.set.read().clone();
        let by_alg = set.fixed.iter().find(|(a, _)| *a == header.alg);
        let chosen = match (header.kid.as_deref(), by_alg) {
            // A kid the JWKS set holds: that key, and its algorithm only.
            (Some(kid), _) if self.jwks && set.by_kid.contains_key(kid) => set.by_kid.get(kid),
            (_, Some(fixed)) => Some(fixed),
            (Some(_), None) if self.jwks => {
                self.live.unknown_kid.notify_one();
                return Err(Denied::Invalid(
                    "the token's signing key (kid) is not in the key set; it is being fetched again, retry shortly".into(),
                ));
            }
            (None, None) if self.jwks && set.fixed.is_empty() => {
                return Err(Denied::Invalid(
                    "the token has no kid naming its signing key".into(),
                ))
            }
            _ => None,
        };
        let Some((alg, key)) = chosen else {
            return Err(Denied::Invalid(format!(
                "algorithm {:?} is not accepted here",
                header.alg
            )));
        };
        if *alg != header.alg {
            return Err(Denied::Invalid(
                "the token's algorithm is not its key's (kid)".into(),
            ));
        }
        let mut v = Validation::new(*alg);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims = HashSet::new();
        let claims = jsonwebtoken::decode::<Value>(token, key, &v)
            .map_err(|e| Denied::Invalid(describe(&e)))?
            .claims;
        self.claims(&claims, now_secs_f64())
    }

    /// Checks decoded claims at time `now` (seconds since the epoch).
    fn claims(&self, c: &Value, now: f64) -> Result<Claims, Denied> {
        let invalid = |m: &str| Denied::Invalid(m.to_owned());
        if !c.is_object() {
            return Err(invalid("the claims are not a JSON object"));
        }
        let time = |name: &str| -> Result<Option<f64>, Denied> {
            match c.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|t| t.is_finite())
                    .map(Some)
                    .ok_or_else(|| {
                        Denied::Invalid(format!(
                            "the {name} claim must be a number (seconds since the epoch)"
                        ))
                    }),
            }
        };
        let exp = time("exp")?.ok_or_else(|| invalid("the exp claim is missing"))?;
        if now >= exp {
            return Err(invalid("the token has expired"));
        }
        if time("nbf")?.is_some_and(|nbf| now < nbf) {
            return Err(invalid("the token is not valid yet (nbf)"));
        }
        if let Some(want) = &self.audience {
            let ok = match c.get("aud") {
                None => return Err(invalid("the aud claim is missing (--jwt-audience is set)")),
                Some(Value::String(a)) => a == want,
                Some(Value::Array(all)) => all.iter().any(|a| a.as_str() == Some(want)),
                Some(_) => {
                    return Err(invalid(
                        "the aud claim must be a string or an array of strings",
                    ))
                }
            };
            if !ok {
                return Err(invalid("wrong audience (aud)"));
            }
        }
        if let Some(want) = &self.issuer {
            match c.get("iss") {
                None => return Err(invalid("the iss claim is missing (--jwt-issuer is set)")),
                Some(Value::String(i)) if i == want => {}
                Some(Value::String(_)) => return Err(invalid("wrong issuer (iss)")),
                Some(_) => return Err(invalid("the iss claim must be a string")),
            }
        }
        let sub = match c.get("sub") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) if n.is_u64() || n.is_i64() => Some(n.to_string()),
            Some(_) => {
                return Err(invalid(
                    "the sub claim must be a string (or a whole number)",
                ))
            }
        };
        let publish = match c.get("publish") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("the publish claim must be true or false")),
        };
        Ok(Claims {
            sub,
            exp: exp.max(0.0) as u64,
            topics: c.get("topics").cloned(),
            publish,
        })
    }
}

/// A PEM public key and its algorithm.
fn public_key_pem(pem: &[u8]) -> Result<(Algorithm, DecodingKey), KeyError> {
    if memchr::memmem::find(pem, b"PRIVATE KEY-----").is_some() {
        return Err(KeyError(
            "is a private key; give the matching public key (openssl pkey -pubout)".into(),
        ));
    }
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        Ok((Algorithm::RS256, k))
    } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        Ok((Algorithm::ES256, k))
    } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        Ok((Algorithm::EdDSA, k))
    } else {
        Err(KeyError(
            "is not a PEM RSA, EC (P-256) or Ed25519 public key".into(),
        ))
    }
}

/// What went wrong with a token, in words (never the token itself).
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => "the signature does not verify".into(),
        K::InvalidAlgorithm => "the algorithm does not match the key".into(),
        K::Json(_) => "the claims are not a JSON object".into(),
        _ => "malformed token".into(),
    }
}

/// Whether a `topics` claim lets the holder join `topic`.
fn covers(claim: Option<&serde_json::Value>, topic: &str) -> bool {
    match claim {
        Some(serde_json::Value::String(s)) => s == "*",
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .any(|i| i.as_str().is_some_and(|s| s == "*" || s == topic)),
        _ => false,
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(h: Option<&[u8]>) -> Option<&str> {
    let h = std::str::from_utf8(h?).ok()?.trim();
    let (scheme, token) = h.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie<'a>(h: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(h)
        .ok()?
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// Equal in time that depends only on the lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Seconds since the epoch, with fractions.
fn now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bearer_and_cookie() {
        assert_eq!(bearer(Some(b"Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some(b"bearer   abc ")), Some("abc"));
        assert_eq!(bearer(Some(b"Basic abc")), None);
        assert_eq!(bearer(Some(b"Bearer ")), None);
        assert_eq!(
            cookie(b"a=1; herald_token=xyz; b=2", "herald_token"),
            Some("xyz")
        );
        assert_eq!(cookie(b"herald_token_x=1", "herald_token"), None);
    }

    #[test]
    fn topics_claim() {
        let j = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert!(covers(Some(&j(r#""*""#)), "a"));
        assert!(covers(Some(&j(r#"["a","b"]"#)), "b"));
        assert!(covers(Some(&j(r#"["*"]"#)), "z"));
        assert!(!covers(Some(&j(r#"["a"]"#)), "b"));
        assert!(!covers(Some(&j(r#""a""#)), "a"));
        assert!(!covers(None, "a"));
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secre"));
    }

    #[test]
    fn debug_hides_secrets() {
        let a = Auth::open()
            .with_secret(b"0123456789abcdef-very-secret")
            .unwrap()
            .with_publish_secret(Some(b"pub-secret".to_vec()));
        let d = format!("{a:?}");
        assert!(
            !d.contains("very-secret") && !d.contains("pub-secret"),
            "{d}"
        );
    }

    #[test]
    fn claims_name_what_is_wrong() {
        let a = Auth::open()
            .with_audience(Some("app".into()))
            .with_issuer(Some("idp".into()));
        let j = |v: serde_json::Value| a.claims(&v, 1000.0);
        let err = |v: serde_json::Value| j(v).unwrap_err().to_string();
        let ok = serde_json::json!({"sub": "u", "exp": 2000, "aud": "app", "iss": "idp"});
        assert_eq!(j(ok.clone()).unwrap().sub.as_deref(), Some("u"));
        // Configured means required.
        assert!(
            err(serde_json::json!({"sub": "u", "exp": 2000, "iss": "idp"}))
                .contains("aud claim is missing")
        );
        assert!(
            err(serde_json::json!({"sub": "u", "exp": 2000, "aud": "app"}))
                .contains("iss claim is missing")
        );
        assert!(err(serde_json::json!({"sub": "u", "exp": 2000})).contains("aud claim is missing"));
        assert!(
            err(serde_json::json!({"sub": "u", "exp": 2000, "aud": ["x", "app"], "iss": "x"}))
                .contains("wrong issuer")
        );
        assert!(
            j(serde_json::json!({"sub": "u", "exp": 2000, "aud": ["x", "app"], "iss": "idp"}))
                .is_ok()
        );
        let open = Auth::open();
        let j = |v: serde_json::Value| open.claims(&v, 1000.0);
        let err = |v: serde_json::Value| j(v).unwrap_err().to_string();
        // Each claim's error names it.
        assert!(err(serde_json::json!({"sub": "u"})).contains("exp claim is missing"));
        assert!(err(serde_json::json!({"exp": "soon"})).contains("exp claim must be a number"));
        assert!(err(serde_json::json!({"exp": 999})).contains("expired"));
        assert!(err(serde_json::json!({"exp": 2000, "nbf": 1500})).contains("not valid yet"));
        assert!(err(serde_json::json!({"exp": 2000, "sub": ["u"]}))
            .contains("sub claim must be a string"));
        assert!(err(serde_json::json!({"exp": 2000, "publish": "true"}))
            .contains("publish claim must be true or false"));
        // A fractional NumericDate (JavaScript's Date.now()/1000 + 3600) and a
        // numeric sub (the seed's user ids) are accepted.
        let c = j(serde_json::json!({"exp": 1500.75, "sub": 123, "publish": true})).unwrap();
        assert_eq!(
            (c.exp, c.sub.as_deref(), c.publish),
            (1500, Some("123"), true)
        );
        assert!(err(serde_json::json!({"exp": 1000.5, "nbf": 1000.25})).contains("not valid yet"));
    }

    #[test]
    fn a_private_key_is_not_a_public_key() {
        let e = Auth::open()
            .with_public_key_pem(include_bytes!("../tests/keys/rsa-private.pem"))
            .unwrap_err();
        assert!(e.0.contains("private key"), "{}", e.0);
        assert!(Auth::open()
            .with_public_key_pem(include_bytes!("../tests/keys/rsa-public.pem"))
            .is_ok());
    }
}
