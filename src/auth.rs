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

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The query parameter a browser page can carry its token in.
pub const QUERY_PARAM: &str = "access_token";

/// Validated auth settings. `Debug` shows no secret.
#[derive(Clone, Default)]
pub struct Auth {
    /// One decoding key per accepted algorithm. Empty: streams are open.
    keys: Vec<(Algorithm, DecodingKey)>,
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

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    topics: Option<serde_json::Value>,
    #[serde(default)]
    publish: Option<bool>,
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
        Ok(self)
    }

    /// Adds a public key in PEM: RSA (RS256) or EC P-256 (ES256).
    pub fn with_public_key_pem(mut self, pem: &[u8]) -> Result<Self, KeyError> {
        if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            self.keys.push((Algorithm::RS256, k));
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            self.keys.push((Algorithm::ES256, k));
        } else {
            return Err(KeyError("is not a PEM RSA or EC (P-256) public key".into()));
        }
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
        !self.keys.is_empty()
    }

    /// Whether publishing needs a token or the secret.
    pub fn publish_protected(&self) -> bool {
        !self.keys.is_empty() || self.publish_secret.is_some()
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
            if self.keys.is_empty() {
                return Err(Denied::Invalid("not the publisher secret".into()));
            }
        }
        let claims = self.decode(token)?;
        if claims.publish == Some(true) {
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

    fn decode(&self, token: &str) -> Result<Claims, Denied> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Denied::Invalid("not a signed JWT (bad header or algorithm)".into()))?;
        let Some((alg, key)) = self.keys.iter().find(|(a, _)| *a == header.alg) else {
            return Err(Denied::Invalid(format!(
                "algorithm {:?} is not accepted here",
                header.alg
            )));
        };
        let mut v = Validation::new(*alg);
        v.leeway = 0;
        v.validate_nbf = true;
        v.required_spec_claims = HashSet::from(["exp".to_owned()]);
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
        jsonwebtoken::decode::<Claims>(token, key, &v)
            .map(|d| d.claims)
            .map_err(|e| Denied::Invalid(describe(&e)))
    }
}

/// What went wrong with a token, in words (never the token itself).
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        K::InvalidSignature => "the signature does not verify".into(),
        K::InvalidAudience => "wrong audience (aud)".into(),
        K::InvalidIssuer => "wrong issuer (iss)".into(),
        K::MissingRequiredClaim(c) => format!("the {c} claim is missing"),
        K::InvalidAlgorithm => "the algorithm does not match the key".into(),
        K::Json(_) => "the claims are not what herald expects (exp must be a number)".into(),
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
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
}
