//! A schema registry client (the Confluent REST API: `GET /schemas/ids/{id}`,
//! references through `GET /subjects/{subject}/versions/{version}`), with
//! every schema fetched once and kept.
//!
//! Lookups happen on the ingest side (the consumer thread, catch-up
//! readers), never under the dispatch lock. A schema already held costs a
//! read lock and a hash lookup. A miss fetches it (bounded by
//! [`FETCH_TIMEOUT`]); a failed fetch is remembered for a while
//! ([`RETRY_UNAVAILABLE`], [`RETRY_UNKNOWN`]), so during a registry outage
//! records whose schemas are held keep flowing and the others fail fast
//! (skipped or dead-lettered with the reason) instead of stalling every
//! partition behind one timeout after another.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use parking_lot::RwLock;
use serde::Deserialize;

use super::Schema;
use crate::config::SchemaRegistryConfig;
use crate::kafka::record::{Rejected, Skip};
use crate::metrics as m;

/// Longest wait for one registry answer.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a registry that could not be reached is not asked again for
/// the same schema id.
pub(crate) const RETRY_UNAVAILABLE: Duration = Duration::from_secs(10);
/// How long an id the registry does not know is not asked again.
pub(crate) const RETRY_UNKNOWN: Duration = Duration::from_secs(60);
/// Bound on a schema's references, transitively (a hostile or broken
/// registry cannot make herald fetch forever).
const MAX_REFERENCES: usize = 64;
/// Bound on a registry answer.
const MAX_ANSWER_BYTES: u64 = 4 << 20;
/// Bound on distinct schema ids held (ids come from records: a topic of
/// junk must not grow the cache without end).
const MAX_CACHED: usize = 10_000;

/// The registry and what it answered.
pub(crate) struct Registry {
    base: String,
    auth: Option<String>,
    agent: ureq::Agent,
    cache: RwLock<HashMap<u32, Entry>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("base", &self.base)
            .finish()
    }
}

#[derive(Clone)]
enum Entry {
    Held(Arc<Schema>),
    Failed {
        until: Instant,
        skip: Skip,
        detail: Arc<str>,
    },
}

/// What `GET /schemas/ids/{id}` and `GET /subjects/../versions/..` answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Answer {
    pub(crate) schema: String,
    #[serde(default)]
    pub(crate) schema_type: Option<String>,
    #[serde(default)]
    pub(crate) references: Vec<Reference>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Reference {
    pub(crate) name: String,
    pub(crate) subject: String,
    pub(crate) version: i64,
}

/// A schema's text and its references' texts (name -> text), in the order
/// they were fetched (dependencies after their dependents).
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) kind: String,
    pub(crate) schema: String,
    pub(crate) references: Vec<(String, String)>,
}

impl Registry {
    pub(crate) fn new(cfg: &SchemaRegistryConfig) -> Self {
        let mut builder = ureq::Agent::config_builder()
            .timeout_global(Some(FETCH_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0);
        if let Some(ca) = &cfg.ca {
            builder = builder.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(
                        ca.iter()
                            .map(|c| ureq::tls::Certificate::from_der(c).to_owned())
                            .collect(),
                    )))
                    .build(),
            );
        }
        let auth = cfg.basic_auth.as_ref().map(|userinfo| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(userinfo)
            )
        });
        Self {
            base: cfg.url.trim_end_matches('/').to_owned(),
            auth,
            agent: builder.build().new_agent(),
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Holds `schema` under `id` as if fetched (benches, tests).
    pub(crate) fn hold(&self, id: u32, schema: Arc<Schema>) {
        self.cache.write().insert(id, Entry::Held(schema));
    }

    /// The schema with registry id `id`: held, or fetched and parsed now.
    pub(crate) fn schema(&self, id: u32) -> Result<Arc<Schema>, Rejected> {
        let now = Instant::now();
        match self.cache.read().get(&id) {
            Some(Entry::Held(s)) => return Ok(s.clone()),
            Some(Entry::Failed {
                until,
                skip,
                detail,
            }) if *until > now => {
                return Err(Rejected::new(*skip, detail.to_string()));
            }
            _ => {}
        }
        let got = self
            .fetch(id)
            .and_then(|f| Schema::parse(&f).map_err(|e| Rejected::new(Skip::BadSchema, e)));
        let entry = match &got {
            Ok(s) => {
                metrics::counter!(m::SCHEMA_FETCHES, "outcome" => "ok").increment(1);
                Entry::Held(s.clone())
            }
            Err(r) => {
                let retry = if r.skip == Skip::UnknownSchema {
                    RETRY_UNKNOWN
                } else {
                    RETRY_UNAVAILABLE
                };
                metrics::counter!(m::SCHEMA_FETCHES, "outcome" => r.skip.as_str()).increment(1);
                tracing::warn!(schema_id = id, error = %r, retry_in = ?retry, "cannot get a schema from the registry");
                Entry::Failed {
                    until: now + retry,
                    skip: r.skip,
                    detail: r.detail.as_deref().unwrap_or_default().into(),
                }
            }
        };
        let mut cache = self.cache.write();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, e| matches!(e, Entry::Held(_)));
        }
        if cache.len() < MAX_CACHED || matches!(entry, Entry::Held(_)) {
            cache.insert(id, entry);
        }
        metrics::gauge!(m::SCHEMAS_HELD).set(cache.len() as f64);
        got
    }

    fn fetch(&self, id: u32) -> Result<Fetched, Rejected> {
        let root: Answer = self.get(&format!("/schemas/ids/{id}"))?;
        let mut references = Vec::new();
        let mut todo: Vec<Reference> = root.references;
        let mut seen = std::collections::HashSet::new();
        while let Some(r) = todo.pop() {
            if !seen.insert(r.name.clone()) {
                continue;
            }
            if seen.len() > MAX_REFERENCES {
                return Err(Rejected::new(
                    Skip::BadSchema,
                    format!("more than {MAX_REFERENCES} schema references"),
                ));
            }
            let subject = percent_encoding::utf8_percent_encode(
                &r.subject,
                percent_encoding::NON_ALPHANUMERIC,
            );
            let a: Answer = self.get(&format!("/subjects/{subject}/versions/{}", r.version))?;
            todo.extend(a.references);
            references.push((r.name, a.schema));
        }
        Ok(Fetched {
            kind: root.schema_type.unwrap_or_else(|| "AVRO".into()),
            schema: root.schema,
            references,
        })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Rejected> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .agent
            .get(&url)
            .header("accept", "application/vnd.schemaregistry.v1+json");
        if let Some(a) = &self.auth {
            req = req.header("authorization", a);
        }
        let unavailable = |e: String| Rejected::new(Skip::RegistryUnavailable, e);
        let mut resp = req.call().map_err(|e| unavailable(format!("{url}: {e}")))?;
        let status = resp.status();
        if status == 404 {
            return Err(Rejected::new(
                Skip::UnknownSchema,
                format!("{url}: 404 (the registry does not know it)"),
            ));
        }
        if !status.is_success() {
            return Err(unavailable(format!("{url}: HTTP {status}")));
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()
            .map_err(|e| unavailable(format!("{url}: {e}")))?;
        serde_json::from_slice(&body)
            .map_err(|e| unavailable(format!("{url}: unreadable answer: {e}")))
    }
}
