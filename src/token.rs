//! `herald token`: prints a signed token for trying herald out (like
//! `centrifugo gentoken`): a user, the topics it may join, whether it may
//! publish, and how long it lives, signed with the key herald checks:
//! `--secret` (HS256, the value of `--jwt-secret`) or `--private-key` (the
//! PEM private key matching `--jwt-public-key`: RSA for RS256, EC P-256 for
//! ES256, Ed25519 for EdDSA). Both read herald's own environment variables,
//! so on a configured machine `herald token --user alice` is enough.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};

/// The `herald token` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// The user the token is for (its `sub`: the user id in the stream's
    /// path).
    #[arg(long)]
    pub user: String,

    /// Topics the user may join, comma-separated, or `*` for any (the
    /// `topics` claim). None: only the user's own events.
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,

    /// Let the token publish too (`"publish": true`).
    #[arg(long)]
    pub publish: bool,

    /// How long the token is valid (`exp`); a stream it opened ends then.
    #[arg(long, default_value = "1h", value_parser = crate::config::parse::duration)]
    pub ttl: Duration,

    /// HS256 shared secret (as `--jwt-secret`).
    #[arg(
        long,
        env = "HERALD_JWT_SECRET",
        hide_env_values = true,
        conflicts_with = "private_key"
    )]
    pub secret: Option<String>,

    /// PEM private key: RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA).
    #[arg(long, env = "HERALD_JWT_PRIVATE_KEY", value_name = "PATH")]
    pub private_key: Option<std::path::PathBuf>,

    /// `aud` claim (as `--jwt-audience`).
    #[arg(long, env = "HERALD_JWT_AUDIENCE")]
    pub audience: Option<String>,

    /// `iss` claim (as `--jwt-issuer`).
    #[arg(long, env = "HERALD_JWT_ISSUER")]
    pub issuer: Option<String>,
}

/// The signed token, or what is wrong with the arguments.
pub fn sign(args: &TokenArgs) -> Result<String, String> {
    let (alg, key) = match (&args.secret, &args.private_key) {
        (Some(secret), None) => {
            if secret.len() < 16 {
                return Err("--secret must be at least 16 bytes (as --jwt-secret)".into());
            }
            (Algorithm::HS256, EncodingKey::from_secret(secret.as_bytes()))
        }
        (None, Some(path)) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("--private-key {}: cannot be read: {e}", path.display()))?;
            private_key(&pem).map_err(|e| format!("--private-key {}: {e}", path.display()))?
        }
        (None, None) => {
            return Err(
                "needs a key: --secret (or HERALD_JWT_SECRET) or --private-key (or HERALD_JWT_PRIVATE_KEY)"
                    .into(),
            )
        }
        (Some(_), Some(_)) => return Err("give --secret or --private-key, not both".into()),
    };
    if args.user.is_empty() {
        return Err("--user must not be empty".into());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(args.user));
    claims.insert("iat".into(), json!(now));
    claims.insert(
        "exp".into(),
        json!(now.saturating_add(args.ttl.as_secs().max(1))),
    );
    match args.topics.as_slice() {
        [] => {}
        [all] if all == "*" => {
            claims.insert("topics".into(), json!("*"));
        }
        topics => {
            claims.insert("topics".into(), json!(topics));
        }
    }
    if args.publish {
        claims.insert("publish".into(), json!(true));
    }
    if let Some(aud) = &args.audience {
        claims.insert("aud".into(), json!(aud));
    }
    if let Some(iss) = &args.issuer {
        claims.insert("iss".into(), json!(iss));
    }
    jsonwebtoken::encode(&Header::new(alg), &Value::Object(claims), &key)
        .map_err(|e| format!("cannot sign: {e}"))
}

/// The algorithm and key of a PEM private key.
fn private_key(pem: &[u8]) -> Result<(Algorithm, EncodingKey), String> {
    if memchr::memmem::find(pem, b"PRIVATE KEY-----").is_none() {
        return Err("is not a PEM private key (a public key verifies, it cannot sign)".into());
    }
    if let Ok(k) = EncodingKey::from_rsa_pem(pem) {
        Ok((Algorithm::RS256, k))
    } else if let Ok(k) = EncodingKey::from_ec_pem(pem) {
        Ok((Algorithm::ES256, k))
    } else if let Ok(k) = EncodingKey::from_ed_pem(pem) {
        Ok((Algorithm::EdDSA, k))
    } else {
        Err("is not a PEM RSA, EC P-256 or Ed25519 private key".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Auth, Sources};

    fn args(extra: &[&str]) -> Result<TokenArgs, clap::Error> {
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            t: TokenArgs,
        }
        use clap::Parser;
        Wrap::try_parse_from(["token"].iter().chain(extra)).map(|w| w.t)
    }

    fn bearer(token: &str) -> Vec<u8> {
        format!("Bearer {token}").into_bytes()
    }

    #[test]
    fn a_token_opens_what_it_names_and_nothing_more() {
        let secret = "0123456789abcdef0123";
        let t = sign(
            &args(&[
                "--user",
                "alice",
                "--topics",
                "news,sport",
                "--secret",
                secret,
            ])
            .unwrap(),
        )
        .unwrap();
        let auth = Auth::default().with_secret(secret.as_bytes()).unwrap();
        let header = bearer(&t);
        let via = Sources {
            authorization: Some(&header),
            ..Default::default()
        };
        let grant = auth.subscribe("alice", &["news"], via).unwrap();
        let exp = grant.expires_at.unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!((now + 3590..=now + 3600).contains(&exp), "1h by default");
        assert!(
            auth.subscribe("bob", &[] as &[&str], via).is_err(),
            "another user"
        );
        assert!(
            auth.subscribe("alice", &["other"], via).is_err(),
            "another topic"
        );
        assert!(auth.publish(Some(&header)).is_err(), "no publish claim");

        let t = sign(
            &args(&[
                "--user",
                "svc",
                "--publish",
                "--topics",
                "*",
                "--ttl",
                "5m",
                "--secret",
                secret,
            ])
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            auth.publish(Some(&bearer(&t))).unwrap().as_deref(),
            Some("sub:svc")
        );
        let wrong = Auth::default().with_secret(b"another secret, 16+").unwrap();
        assert!(wrong.publish(Some(&bearer(&t))).is_err());
    }

    #[test]
    fn private_keys_sign_for_their_public_keys_with_aud_and_iss() {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
        for kind in ["rsa", "ec"] {
            let private = format!("{keys}/{kind}-private.pem");
            let t = sign(
                &args(&[
                    "--user",
                    "u",
                    "--private-key",
                    &private,
                    "--audience",
                    "web",
                    "--issuer",
                    "idp",
                ])
                .unwrap(),
            )
            .unwrap();
            let public = std::fs::read(format!("{keys}/{kind}-public.pem")).unwrap();
            let auth = Auth::default()
                .with_public_key_pem(&public)
                .unwrap()
                .with_audience(Some("web".into()))
                .with_issuer(Some("idp".into()));
            let header = bearer(&t);
            let via = Sources {
                authorization: Some(&header),
                ..Default::default()
            };
            assert!(auth.subscribe("u", &[] as &[&str], via).is_ok(), "{kind}");
            let other_aud = auth.clone().with_audience(Some("mobile".into()));
            assert!(
                other_aud.subscribe("u", &[] as &[&str], via).is_err(),
                "{kind}"
            );
        }
    }

    #[test]
    fn bad_arguments_say_what_is_wrong() {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
        let cases: [(&[&str], &str); 5] = [
            (&["--user", "u"], "needs a key"),
            (&["--user", "u", "--secret", "short"], "at least 16 bytes"),
            (
                &["--user", "", "--secret", "0123456789abcdef0123"],
                "must not be empty",
            ),
            (
                &["--user", "u", "--private-key", "/nonexistent.pem"],
                "cannot be read",
            ),
            (
                &[
                    "--user",
                    "u",
                    "--private-key",
                    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa-public.pem"),
                ],
                "a public key verifies",
            ),
        ];
        for (a, want) in cases {
            let e = sign(&args(a).unwrap()).unwrap_err();
            assert!(e.contains(want), "{a:?}: {e}");
        }
        let both = args(&[
            "--user",
            "u",
            "--secret",
            "x",
            "--private-key",
            &format!("{keys}/ec-private.pem"),
        ]);
        assert!(both.is_err());
        assert!(
            args(&["--secret", "0123456789abcdef0123"]).is_err(),
            "--user is required"
        );
        assert!(args(&["--user", "u", "--ttl", "soon"]).is_err());
    }
}
