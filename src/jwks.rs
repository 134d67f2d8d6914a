//! `--jwt-jwks-url`: the identity provider's signing keys, fetched from its
//! JWKS endpoint and kept fresh.
//!
//! - Fetched at start (herald does not start without a usable set), then
//!   every `--jwt-jwks-refresh`, and again when a token names a `kid` the set
//!   does not hold (a key the provider just started using), at most once per
//!   [`JwksConfig::min_gap`]: a flood of made-up `kid`s costs one fetch.
//! - RSA (RS256, or the key's `alg`), EC P-256 (ES256) and Ed25519 (EdDSA)
//!   keys with a `kid` are used; symmetric (`oct`) keys, keys without a
//!   `kid`, encryption keys and unknown types are skipped; at most
//!   100 are used (the document itself is read up to 1 MiB).
//! - A failed fetch (the endpoint down, a bad answer, no usable key) keeps
//!   the last good set; it is logged and counted
//!   (`herald_jwks_refreshes_total{outcome}`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::metrics as m;

/// Largest JWKS document read.
const MAX_BYTES: u64 = 1 << 20;
/// Longest a fetch may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Most keys used from one document (providers publish a handful).
const MAX_KEYS: usize = 100;

/// Where the keys come from and how often they are fetched again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksConfig {
    pub url: String,
    /// `--jwt-jwks-refresh`.
    pub refresh: Duration,
    /// Least time between two fetches asked for by unknown `kid`s.
    pub min_gap: Duration,
}

/// Keys by `kid`.
pub type Keys = HashMap<String, (Algorithm, DecodingKey)>;

/// Fetches and reads the key set (blocking: run it off the runtime).
pub fn fetch(url: &str) -> Result<Keys, String> {
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let mut resp = agent
        .get(url)
        .header("accept", "application/json")
        .call()
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BYTES)
        .read_to_vec()
        .map_err(|e| format!("{url}: {e}"))?;
    let set: JwkSet =
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not a JWKS document: {e}"))?;
    let keys: Keys = set.keys.iter().filter_map(usable).take(MAX_KEYS).collect();
    if keys.is_empty() {
        return Err(format!(
            "{url}: no usable key (RSA, EC P-256 or Ed25519 signing keys with a kid)"
        ));
    }
    Ok(keys)
}

/// A signing key herald can check tokens with, by its `kid`.
fn usable(jwk: &Jwk) -> Option<(String, (Algorithm, DecodingKey))> {
    let kid = jwk.common.key_id.clone()?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS384)) => Algorithm::RS384,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS512)) => Algorithm::RS512,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS256)) => Algorithm::PS256,
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
            if p.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        (AlgorithmParameters::OctetKeyPair(p), None | Some(KeyAlgorithm::EdDSA))
            if p.curve == EllipticCurve::Ed25519 =>
        {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some((kid, (alg, key)))
}

/// Keeps `auth`'s JWKS set fresh until `stop`.
pub async fn refresh(auth: Auth, cfg: JwksConfig, stop: CancellationToken) {
    let mut last = Instant::now();
    loop {
        let asked = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(cfg.refresh) => false,
            _ = auth.unknown_kid() => true,
        };
        if asked {
            let wait = cfg.min_gap.saturating_sub(last.elapsed());
            if !wait.is_zero() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        last = Instant::now();
        let url = cfg.url.clone();
        let got = tokio::task::spawn_blocking(move || fetch(&url))
            .await
            .unwrap_or_else(|e| Err(format!("the fetch task failed: {e}")));
        match got {
            Ok(keys) => {
                let n = keys.len();
                auth.set_jwks(keys);
                metrics::counter!(m::JWKS_REFRESHES, "outcome" => "ok").increment(1);
                metrics::gauge!(m::JWKS_KEYS).set(n as f64);
                tracing::debug!(keys = n, asked, "JWKS key set refreshed");
            }
            Err(error) => {
                metrics::counter!(m::JWKS_REFRESHES, "outcome" => "error").increment(1);
                tracing::warn!(%error, keys = auth.jwks_len(), "JWKS refresh failed; keeping the last good key set");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;

    fn jwk(kid: &str, pem: &[u8], alg: Algorithm) -> Jwk {
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
            _ => EncodingKey::from_ed_pem(pem),
        }
        .unwrap();
        let mut j = Jwk::from_encoding_key(&key, alg).unwrap();
        j.common.key_id = Some(kid.into());
        j
    }

    #[test]
    fn signing_keys_with_a_kid_are_used_and_the_rest_skipped() {
        let rsa = jwk(
            "r",
            include_bytes!("../tests/keys/rsa-private.pem"),
            Algorithm::RS256,
        );
        let ec = jwk(
            "e",
            include_bytes!("../tests/keys/ec-private.pem"),
            Algorithm::ES256,
        );
        let ed = jwk(
            "d",
            include_bytes!("../tests/keys/ed-private.pem"),
            Algorithm::EdDSA,
        );
        for (j, alg) in [
            (&rsa, Algorithm::RS256),
            (&ec, Algorithm::ES256),
            (&ed, Algorithm::EdDSA),
        ] {
            assert_eq!(usable(j).map(|(_, (a, _))| a), Some(alg));
        }
        let mut no_kid = rsa.clone();
        no_kid.common.key_id = None;
        let mut enc = rsa.clone();
        enc.common.public_key_use = Some(PublicKeyUse::Encryption);
        let oct = Jwk::from_encoding_key(
            &EncodingKey::from_secret(b"0123456789abcdef"),
            Algorithm::HS256,
        )
        .map(|mut j| {
            j.common.key_id = Some("o".into());
            j
        })
        .unwrap();
        for j in [&no_kid, &enc, &oct] {
            assert!(usable(j).is_none());
        }
    }
}
