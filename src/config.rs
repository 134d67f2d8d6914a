//! Configuration: clap flags with `HERALD_*` environment twins ([`Cli`]),
//! turned in one fallible step ([`Cli::validate`]) into a typed [`Config`].
//! Every problem is a [`ConfigError`] naming the flag, reported before
//! anything binds.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

pub use crate::auth::Auth;
use crate::{fanout::queue, replay};

/// Default per-connection queue depth. At most this many frames wait for a
/// client; with 32-byte handles that is 32 KiB of handles worst case.
pub const DEFAULT_QUEUE_FRAMES: usize = 1024;
/// Default per-connection queued bytes. Worst case (every client stalled) is
/// connections x this: 20k connections x 256 KiB = 5 GiB, but frames are shared
/// with the replay buffer and other subscribers, so a broadcast burst costs far
/// less. Lower it for very large fleets of slow clients.
pub const DEFAULT_QUEUE_BYTES: usize = 256 * 1024;
/// Default replay window: 10k events / 64 MiB / 5 minutes, whichever is hit
/// first; enough for a browser tab that lost its network for a while.
pub const DEFAULT_REPLAY_EVENTS: usize = 10_000;
pub const DEFAULT_REPLAY_BYTES: usize = 64 * 1024 * 1024;
/// File descriptors kept back from the connection cap for listeners, logs,
/// Kafka sockets and the rest of the process.
pub const FD_RESERVE: u64 = 64;

/// herald: Server-Sent Events fan-out server.
///
/// Every flag can also be set through the environment variable shown.
/// Durations take a unit: 500ms, 15s, 5m, 1h.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald", version, about, long_about = None)]
pub struct Cli {
    /// Address to serve SSE, publish, health and metrics on.
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Separate address for /metrics, /healthz and /readyz (optional).
    #[arg(long, env = "HERALD_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,

    /// Set SO_REUSEPORT on the listener, so several herald processes can
    /// share one port (kernel load-balances new connections).
    #[arg(long, env = "HERALD_REUSE_PORT", default_value_t = false)]
    pub reuse_port: bool,

    /// Most simultaneous HTTP connections; past it new ones get a 503.
    /// 0 = as many as the open-file limit allows.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: u64,

    /// Interval between heartbeat comments on every stream.
    #[arg(long, env = "HERALD_HEARTBEAT_INTERVAL", default_value = "15s")]
    pub heartbeat_interval: String,

    /// Reconnection delay advertised to browsers (`retry:`).
    #[arg(long, env = "HERALD_SSE_RETRY", default_value = "3s")]
    pub sse_retry: String,

    /// Most frames queued for one connection before it is closed as slow.
    #[arg(long, env = "HERALD_QUEUE_MAX_FRAMES", default_value_t = DEFAULT_QUEUE_FRAMES)]
    pub queue_max_frames: usize,

    /// Most bytes queued for one connection before it is closed as slow.
    #[arg(long, env = "HERALD_QUEUE_MAX_BYTES", default_value_t = DEFAULT_QUEUE_BYTES)]
    pub queue_max_bytes: usize,

    /// Most events kept for resuming clients.
    #[arg(long, env = "HERALD_REPLAY_MAX_EVENTS", default_value_t = DEFAULT_REPLAY_EVENTS)]
    pub replay_max_events: usize,

    /// Most frame bytes kept for resuming clients.
    #[arg(long, env = "HERALD_REPLAY_MAX_BYTES", default_value_t = DEFAULT_REPLAY_BYTES)]
    pub replay_max_bytes: usize,

    /// Oldest event kept for resuming clients.
    #[arg(long, env = "HERALD_REPLAY_MAX_AGE", default_value = "5m")]
    pub replay_max_age: String,

    /// Largest accepted publish request body, in bytes.
    #[arg(long, env = "HERALD_PUBLISH_MAX_BODY", default_value_t = 1024 * 1024)]
    pub publish_max_body: usize,

    /// Serve HTTP/1.1 SSE streams on herald's own writer instead of hyper's
    /// (about 8x less memory per idle connection). Other requests and h2c
    /// always go through hyper.
    #[arg(long, env = "HERALD_SSE_FAST_PATH", default_value_t = true, action = clap::ArgAction::Set)]
    pub sse_fast_path: bool,

    /// Least time between two writes to one stream: events arriving sooner
    /// after a write wait and leave together in the next one. A stream that
    /// was quiet writes at once, so this only delays streams receiving more
    /// than one event per window, and it cuts their syscalls per event
    /// (0ms = write every wake-up). At most 1s.
    #[arg(long, env = "HERALD_WRITE_COALESCE", default_value = "0ms")]
    pub write_coalesce: String,

    /// When herald falls behind on delivery (many streams with deep queues),
    /// an HTTP publish waits up to this long for the writers to catch up,
    /// then gets a 503 and nothing is published; the Kafka consumer pauses
    /// up to this long per burst (0ms = never wait: queues overflow and
    /// their streams close as slow). At most 60s.
    #[arg(long, env = "HERALD_PUBLISH_BACKPRESSURE", default_value = "5s")]
    pub publish_backpressure: String,

    /// HS256 shared secret for subscriber (and publisher) JWTs. With it or
    /// --jwt-public-key, streams and publishing need a token.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Path of a PEM public key (RSA for RS256, EC P-256 for ES256) for JWTs.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<String>,

    /// Required `aud` claim (optional).
    #[arg(long, env = "HERALD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim (optional).
    #[arg(long, env = "HERALD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Cookie that may carry a subscriber's token.
    #[arg(long, env = "HERALD_JWT_COOKIE", default_value = "herald_token")]
    pub jwt_cookie: String,

    /// Accept a subscriber's token in the `access_token` query parameter
    /// (what a page without cookies needs; it can end up in access logs).
    #[arg(long, env = "HERALD_JWT_QUERY_PARAM", default_value_t = true, action = clap::ArgAction::Set)]
    pub jwt_query_param: bool,

    /// Static secret a publisher may send as its Bearer token instead of a
    /// JWT with `"publish": true`.
    #[arg(long, env = "HERALD_PUBLISH_SECRET", hide_env_values = true)]
    pub publish_secret: Option<String>,

    /// Serve without auth on a non-loopback address (otherwise herald refuses
    /// to start there without --jwt-secret or --jwt-public-key).
    #[arg(long, env = "HERALD_INSECURE_NO_AUTH", default_value_t = false)]
    pub insecure_no_auth: bool,

    /// Origins allowed to call herald from a browser (CORS), comma-separated,
    /// e.g. `https://app.example.com`; `*` for any (only without
    /// --cors-credentials). Empty: no CORS headers.
    #[arg(long, env = "HERALD_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Allow credentials (cookies) on cross-origin requests
    /// (`EventSource(url, {withCredentials: true})`).
    #[arg(long, env = "HERALD_CORS_CREDENTIALS", default_value_t = false)]
    pub cors_credentials: bool,

    /// PEM certificate chain: serve HTTPS (ALPN h2 and http/1.1). Needs
    /// --tls-key.
    #[arg(long, env = "HERALD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<String>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "HERALD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<String>,

    /// Most open streams per user (0 = no limit); past it a 429.
    #[arg(long, env = "HERALD_MAX_STREAMS_PER_USER", default_value_t = 0)]
    pub max_streams_per_user: usize,

    /// Most open connections per client address (0 = no limit); past it a
    /// 429. Behind a proxy every client shares its address.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Most new connections per second for the node (0 = no limit); past it
    /// a 503 with Retry-After. Smooths reconnect storms.
    #[arg(long, env = "HERALD_MAX_CONNECT_RATE", default_value_t = 0.0)]
    pub max_connect_rate: f64,

    /// Most publish requests per second per publisher (token subject, the
    /// publisher secret, or the client address when publishing is open);
    /// 0 = no limit. Past it a 429 with Retry-After.
    #[arg(long, env = "HERALD_PUBLISH_RATE", default_value_t = 0.0)]
    pub publish_rate: f64,

    /// Most publish body bytes per second per publisher (0 = no limit).
    #[arg(long, env = "HERALD_PUBLISH_BYTES_RATE", default_value_t = 0.0)]
    pub publish_bytes_rate: f64,

    /// Longest wait for a request's head (slowloris): the connection is
    /// closed after it.
    #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT", default_value = "10s")]
    pub header_read_timeout: String,

    /// Largest request head in bytes (at least 8192); past it a 431.
    #[arg(long, env = "HERALD_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// A write that waits this long on a peer that reads nothing closes the
    /// connection (0ms = never).
    #[arg(long, env = "HERALD_WRITE_TIMEOUT", default_value = "30s")]
    pub write_timeout: String,

    /// Registry shards (a power of two).
    #[arg(long, env = "HERALD_SHARDS", default_value_t = 64)]
    pub shards: usize,

    /// On SIGTERM/SIGINT, streams are ended spread over this period.
    #[arg(long, env = "HERALD_SHUTDOWN_DRAIN", default_value = "2s")]
    pub shutdown_drain: String,

    /// On SIGTERM/SIGINT, the process exits within this deadline whatever
    /// connections remain. Must exceed --shutdown-drain.
    #[arg(long, env = "HERALD_SHUTDOWN_DEADLINE", default_value = "10s")]
    pub shutdown_deadline: String,

    /// HTTP worker threads (0 = one per core).
    #[arg(long, env = "HERALD_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Kafka bootstrap servers (host:port[,host:port...]). Without it herald
    /// runs embedded: events come only from the HTTP publish API.
    #[arg(long, env = "HERALD_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,

    /// Kafka topics to consume, comma-separated. Every node reads every
    /// partition of each (no consumer group splits them).
    #[arg(long, env = "HERALD_KAFKA_TOPICS", value_delimiter = ',')]
    pub kafka_topics: Vec<String>,

    /// Where to start reading at startup: latest (only new records), earliest,
    /// or replay-window (from --replay-max-age ago, so a restarted node can
    /// serve resumes at once).
    #[arg(long, env = "HERALD_KAFKA_START", default_value = "latest")]
    pub kafka_start: String,

    /// A librdkafka client property, key=value (repeatable; in the
    /// environment, separate several with ';'). For SASL/TLS and tuning;
    /// applied to the consumer and the producer.
    #[arg(
        long = "kafka-property",
        env = "HERALD_KAFKA_PROPERTY",
        value_delimiter = ';'
    )]
    pub kafka_property: Vec<String>,

    /// Topic that POST /api/publish produces to (default: the first of
    /// --kafka-topics; must be one of them, so published events come back).
    #[arg(long, env = "HERALD_KAFKA_PUBLISH_TOPIC")]
    pub kafka_publish_topic: Option<String>,

    /// How long a publish waits for the broker's acknowledgement before it is
    /// answered 503.
    #[arg(long, env = "HERALD_KAFKA_PUBLISH_TIMEOUT", default_value = "5s")]
    pub kafka_publish_timeout: String,

    /// How often to check the topics for new partitions (and the broker for
    /// health).
    #[arg(long, env = "HERALD_KAFKA_METADATA_INTERVAL", default_value = "10s")]
    pub kafka_metadata_interval: String,

    /// Log filter (tracing EnvFilter syntax), e.g. info or herald=debug.
    #[arg(long, env = "HERALD_LOG", default_value = "info")]
    pub log: String,

    /// Log format: text (human) or json (one object per line).
    #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Record metrics (and serve /metrics). Off only to measure what
    /// metrics cost.
    #[arg(long, env = "HERALD_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics: bool,
}

/// A flag's value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid --{flag} {value:?}: {problem}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub value: String,
    pub problem: String,
}

/// CORS settings (`--cors-origins`, `--cors-credentials`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cors {
    /// Allowed origins, `*` for any; empty: no CORS headers.
    pub origins: Vec<String>,
    pub credentials: bool,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub reuse_port: bool,
    /// `None`: derive from the open-file limit at start.
    pub max_connections: Option<u64>,
    pub heartbeat: Duration,
    pub retry: Duration,
    pub queue: queue::Limits,
    pub replay: replay::Limits,
    pub publish_max_body: usize,
    pub shards: usize,
    pub sse_fast_path: bool,
    /// Least time between two writes to one stream (zero: none).
    pub write_coalesce: Duration,
    /// Longest wait of a publish while herald is behind (zero: none).
    pub publish_backpressure: Duration,
    pub auth: Auth,
    pub cors: Cors,
    pub limits: crate::guard::Limits,
    /// `--tls-cert`/`--tls-key` loaded (None: plain TCP).
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    pub shutdown_drain: Duration,
    pub shutdown_deadline: Duration,
    pub worker_threads: Option<usize>,
    pub log: String,
    pub log_json: bool,
    pub metrics: bool,
    /// `None`: embedded mode.
    pub kafka: Option<KafkaConfig>,
}

/// Where a node starts reading its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPosition {
    Latest,
    Earliest,
    /// From `--replay-max-age` ago (offsets for times).
    ReplayWindow,
}

/// Validated Kafka settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    pub brokers: String,
    /// Distinct, valid topic names, in the order given.
    pub topics: Vec<String>,
    pub start: StartPosition,
    /// librdkafka properties, in the order given.
    pub properties: Vec<(String, String)>,
    pub publish_topic: String,
    pub publish_timeout: Duration,
    pub metadata_interval: Duration,
    /// `--publish-backpressure`: longest pause per burst while herald is
    /// behind on delivery.
    pub backpressure: Duration,
}

// === impl Cli ===

impl Cli {
    /// Checks every flag and the rules between them.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let err = |flag: &'static str, value: &dyn ToString, problem: &str| ConfigError {
            flag,
            value: value.to_string(),
            problem: problem.to_owned(),
        };
        let addr = |flag: &'static str, v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|_| err(flag, &v, "expected IP:PORT, e.g. 127.0.0.1:8080"))
        };
        let dur = |flag: &'static str, v: &str| {
            parse_duration(v).map_err(|problem| err(flag, &v, problem))
        };
        let positive = |flag: &'static str, v: usize| {
            if v == 0 {
                Err(err(flag, &v, "must be at least 1"))
            } else {
                Ok(v)
            }
        };

        let heartbeat = duration_at_least("heartbeat-interval", &self.heartbeat_interval, 10)?;
        let retry = dur("sse-retry", &self.sse_retry)?;
        let shutdown_drain = dur("shutdown-drain", &self.shutdown_drain)?;
        // A duration with an upper bound; `why` follows "must be at most N s".
        let dur_at_most = |flag: &'static str, v: &str, max_s: u64, why: &str| {
            let d = dur(flag, v)?;
            if d > Duration::from_secs(max_s) {
                return Err(err(flag, &v, &format!("must be at most {max_s}s ({why})")));
            }
            Ok(d)
        };
        let write_coalesce = dur_at_most(
            "write-coalesce",
            &self.write_coalesce,
            1,
            "it delays events by up to that much",
        )?;
        let publish_backpressure = dur_at_most(
            "publish-backpressure",
            &self.publish_backpressure,
            60,
            "a publisher waits up to that long",
        )?;
        let shutdown_deadline = dur("shutdown-deadline", &self.shutdown_deadline)?;
        if shutdown_deadline <= shutdown_drain {
            return Err(err(
                "shutdown-deadline",
                &self.shutdown_deadline,
                "must be longer than --shutdown-drain",
            ));
        }
        if !self.shards.is_power_of_two() || self.shards > 65_536 {
            return Err(err(
                "shards",
                &self.shards,
                "must be a power of two up to 65536",
            ));
        }
        if self.log.trim().is_empty() {
            return Err(err("log", &self.log, "must not be empty"));
        }
        let kafka = self.kafka_config(publish_backpressure)?;
        let listen = addr("listen", &self.listen)?;
        let auth = self.auth_config()?;
        if !auth.streams_protected() && !listen.ip().is_loopback() && !self.insecure_no_auth {
            return Err(err(
                "listen",
                &self.listen,
                "is not a loopback address and no --jwt-secret or --jwt-public-key is set: anyone could read any user's stream and publish. Configure a key, or pass --insecure-no-auth to serve open anyway",
            ));
        }
        let cors = self.cors_config()?;
        let rate = |flag: &'static str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(err(flag, &v, "must be a number, 0 or more"))
            }
        };
        if self.max_header_bytes < 8192 || self.max_header_bytes > 1 << 20 {
            return Err(err(
                "max-header-bytes",
                &self.max_header_bytes,
                "must be between 8192 and 1048576",
            ));
        }
        let limits = crate::guard::Limits {
            streams_per_user: self.max_streams_per_user,
            connections_per_ip: self.max_connections_per_ip,
            connect_rate: rate("max-connect-rate", self.max_connect_rate)?,
            publish_rate: rate("publish-rate", self.publish_rate)?,
            publish_bytes_rate: rate("publish-bytes-rate", self.publish_bytes_rate)?,
            header_read_timeout: duration_at_least(
                "header-read-timeout",
                &self.header_read_timeout,
                100,
            )?,
            max_header_bytes: self.max_header_bytes,
            write_timeout: dur("write-timeout", &self.write_timeout)?,
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some(crate::tls::load(c, k).map_err(|(flag, problem)| {
                let value = if flag == "tls-cert" { c } else { k };
                err(flag, value, &problem)
            })?),
            _ => None,
        };
        Ok(Config {
            listen,
            admin_listen: self
                .admin_listen
                .as_deref()
                .map(|a| addr("admin-listen", a))
                .transpose()?,
            reuse_port: self.reuse_port,
            max_connections: (self.max_connections > 0).then_some(self.max_connections),
            heartbeat,
            retry,
            queue: queue::Limits {
                max_frames: positive("queue-max-frames", self.queue_max_frames)?,
                max_bytes: positive("queue-max-bytes", self.queue_max_bytes)?,
            },
            replay: replay::Limits {
                max_events: self.replay_max_events,
                max_bytes: self.replay_max_bytes,
                max_age: dur("replay-max-age", &self.replay_max_age)?,
            },
            publish_max_body: positive("publish-max-body", self.publish_max_body)?,
            shards: self.shards,
            sse_fast_path: self.sse_fast_path,
            write_coalesce,
            publish_backpressure,
            auth,
            cors,
            limits,
            tls,
            shutdown_drain,
            shutdown_deadline,
            worker_threads: (self.worker_threads > 0).then_some(self.worker_threads),
            log_json: match self.log_format.as_str() {
                "text" => false,
                "json" => true,
                other => return Err(err("log-format", &other, "expected text or json")),
            },
            log: self.log,
            metrics: self.metrics,
            kafka,
        })
    }

    fn auth_config(&self) -> Result<Auth, ConfigError> {
        let err = |flag: &'static str, value: &str, problem: String| ConfigError {
            flag,
            value: value.to_owned(),
            problem,
        };
        let mut auth = Auth::open();
        if self.jwt_cookie.is_empty()
            || !self
                .jwt_cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        {
            return Err(err(
                "jwt-cookie",
                &self.jwt_cookie,
                "must be a cookie name: letters, digits, _ - .".into(),
            ));
        }
        auth.cookie = self.jwt_cookie.clone();
        auth.query_param = self.jwt_query_param;
        if let Some(secret) = &self.jwt_secret {
            // Never echo a secret back.
            auth = auth
                .with_secret(secret.as_bytes())
                .map_err(|e| err("jwt-secret", "(hidden)", e.0))?;
        }
        if let Some(path) = &self.jwt_public_key {
            let pem = std::fs::read(path)
                .map_err(|e| err("jwt-public-key", path, format!("cannot be read: {e}")))?;
            auth = auth
                .with_public_key_pem(&pem)
                .map_err(|e| err("jwt-public-key", path, e.0))?;
        }
        if let Some(s) = &self.publish_secret {
            if s.len() < 16 {
                return Err(err(
                    "publish-secret",
                    "(hidden)",
                    "must be at least 16 bytes".into(),
                ));
            }
        }
        Ok(auth
            .with_audience(self.jwt_audience.clone())
            .with_issuer(self.jwt_issuer.clone())
            .with_publish_secret(self.publish_secret.as_ref().map(|s| s.as_bytes().to_vec())))
    }

    fn cors_config(&self) -> Result<Cors, ConfigError> {
        let origins: Vec<String> = self
            .cors_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        for o in &origins {
            let ok = o == "*"
                || ((o.starts_with("http://") || o.starts_with("https://"))
                    && !o.contains(|c: char| c.is_whitespace() || c.is_control()));
            if !ok {
                return Err(ConfigError {
                    flag: "cors-origins",
                    value: o.clone(),
                    problem: "expected * or an origin like https://app.example.com".into(),
                });
            }
        }
        if self.cors_credentials && origins.iter().any(|o| o == "*") {
            return Err(ConfigError {
                flag: "cors-origins",
                value: "*".into(),
                problem: "* cannot be combined with --cors-credentials (browsers refuse it); list the origins".into(),
            });
        }
        Ok(Cors {
            origins,
            credentials: self.cors_credentials,
        })
    }

    fn kafka_config(&self, backpressure: Duration) -> Result<Option<KafkaConfig>, ConfigError> {
        let err = |flag: &'static str, value: &str, problem: &str| ConfigError {
            flag,
            value: value.to_owned(),
            problem: problem.to_owned(),
        };
        let topics_text = self.kafka_topics.join(",");
        let Some(brokers) = self.kafka_brokers.as_deref() else {
            if !self.kafka_topics.is_empty() {
                return Err(err("kafka-topics", &topics_text, "needs --kafka-brokers"));
            }
            if let Some(t) = &self.kafka_publish_topic {
                return Err(err("kafka-publish-topic", t, "needs --kafka-brokers"));
            }
            return Ok(None);
        };
        if brokers.trim().is_empty()
            || brokers.split(',').any(|b| {
                let b = b.trim();
                b.is_empty() || !b.contains(':') || b.contains(char::is_whitespace)
            })
        {
            return Err(err(
                "kafka-brokers",
                brokers,
                "expected host:port[,host:port...]",
            ));
        }
        let mut topics: Vec<String> = Vec::new();
        for t in &self.kafka_topics {
            let t = t.trim();
            if !crate::sse::id::is_kafka_topic(t) {
                return Err(err(
                    "kafka-topics",
                    &topics_text,
                    "each topic must be 1-249 characters of [A-Za-z0-9._-]",
                ));
            }
            if !topics.iter().any(|x| x == t) {
                topics.push(t.to_owned());
            }
        }
        if topics.is_empty() {
            return Err(err("kafka-topics", "", "is required with --kafka-brokers"));
        }
        let start = match self.kafka_start.as_str() {
            "latest" => StartPosition::Latest,
            "earliest" => StartPosition::Earliest,
            "replay-window" => StartPosition::ReplayWindow,
            other => {
                return Err(err(
                    "kafka-start",
                    other,
                    "expected latest, earliest or replay-window",
                ))
            }
        };
        let mut properties = Vec::new();
        for p in &self.kafka_property {
            match p.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    properties.push((k.trim().to_owned(), v.to_owned()));
                }
                _ => return Err(err("kafka-property", p, "expected key=value")),
            }
        }
        let publish_topic = match &self.kafka_publish_topic {
            Some(t) if topics.iter().any(|x| x == t) => t.clone(),
            Some(t) => {
                return Err(err(
                    "kafka-publish-topic",
                    t,
                    "must be one of --kafka-topics (or published events would never come back)",
                ))
            }
            None => topics[0].clone(),
        };
        let publish_timeout =
            duration_at_least("kafka-publish-timeout", &self.kafka_publish_timeout, 100)?;
        let metadata_interval = duration_at_least(
            "kafka-metadata-interval",
            &self.kafka_metadata_interval,
            100,
        )?;
        Ok(Some(KafkaConfig {
            brokers: brokers.to_owned(),
            topics,
            start,
            properties,
            publish_topic,
            publish_timeout,
            metadata_interval,
            backpressure,
        }))
    }
}

// === impl Config ===

impl Config {
    /// Defaults, as with no flags: for tests and embedding.
    pub fn default_for_tests() -> Self {
        match Cli::parse_from(["herald"]).validate() {
            Ok(c) => c,
            Err(e) => unreachable!("defaults are valid: {e}"),
        }
    }
}

/// Parses a duration flag that must be at least `min_ms` milliseconds.
fn duration_at_least(
    flag: &'static str,
    value: &str,
    min_ms: u64,
) -> Result<Duration, ConfigError> {
    let err = |problem: String| ConfigError {
        flag,
        value: value.to_owned(),
        problem,
    };
    let d = parse_duration(value).map_err(|p| err(p.to_owned()))?;
    if d < Duration::from_millis(min_ms) {
        return Err(err(format!("must be at least {min_ms}ms")));
    }
    Ok(d)
}

/// Parses `500ms`, `15s`, `5m`, `1h` (a whole number and a unit).
pub fn parse_duration(s: &str) -> Result<Duration, &'static str> {
    const HINT: &str = "expected a whole number with a unit: ms, s, m or h (e.g. 15s)";
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or(HINT)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| HINT)?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or("too large")?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or("too large")?),
        _ => return Err(HINT),
    };
    if d > Duration::from_secs(7 * 24 * 3600) {
        return Err("must be at most a week");
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("herald").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_validate() {
        let c = Config::default_for_tests();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.heartbeat, Duration::from_secs(15));
        assert_eq!(c.max_connections, None);
        assert_eq!(c.shards, 64);
    }

    #[test]
    fn errors_name_the_flag() {
        let e = cli(&["--listen", "nope"]).validate().unwrap_err();
        assert_eq!(e.flag, "listen");
        assert!(
            e.to_string().starts_with("invalid --listen \"nope\""),
            "{e}"
        );
        let e = cli(&["--heartbeat-interval", "15"]).validate().unwrap_err();
        assert_eq!(e.flag, "heartbeat-interval");
        let e = cli(&["--shards", "3"]).validate().unwrap_err();
        assert_eq!(e.flag, "shards");
        let e = cli(&["--listen", "0.0.0.0:8080"]).validate().unwrap_err();
        assert_eq!(e.flag, "listen");
        assert!(e.problem.contains("--insecure-no-auth"), "{e}");
        assert!(cli(&["--listen", "0.0.0.0:8080", "--insecure-no-auth"])
            .validate()
            .is_ok());
        let keyed = cli(&[
            "--listen",
            "0.0.0.0:8080",
            "--jwt-secret",
            "0123456789abcdef0123",
        ])
        .validate()
        .unwrap();
        assert!(keyed.auth.streams_protected() && keyed.auth.publish_protected());
        let e = cli(&["--jwt-public-key", "/nonexistent.pem"])
            .validate()
            .unwrap_err();
        assert_eq!(e.flag, "jwt-public-key");
        let e = cli(&["--jwt-public-key", "Cargo.toml"])
            .validate()
            .unwrap_err();
        assert!(e.problem.contains("PEM"), "{e}");
        let e = cli(&["--publish-secret", "short"]).validate().unwrap_err();
        assert_eq!((e.flag, e.value.as_str()), ("publish-secret", "(hidden)"));
        let e = cli(&["--cors-origins", "*", "--cors-credentials"])
            .validate()
            .unwrap_err();
        assert_eq!(e.flag, "cors-origins");
        let e = cli(&["--cors-origins", "app.example"])
            .validate()
            .unwrap_err();
        assert_eq!(e.flag, "cors-origins");
        let c = cli(&["--cors-origins", "https://a.example/, http://b.example"])
            .validate()
            .unwrap();
        assert_eq!(c.cors.origins, ["https://a.example", "http://b.example"]);
        let e = cli(&["--tls-cert", "Cargo.toml", "--tls-key", "Cargo.toml"])
            .validate()
            .unwrap_err();
        assert_eq!(e.flag, "tls-cert");
        let e = cli(&[
            "--tls-cert",
            "tests/keys/tls-cert.pem",
            "--tls-key",
            "tests/keys/ec-private.pem",
        ])
        .validate()
        .unwrap_err();
        assert_eq!(e.flag, "tls-key");
        assert!(cli(&[
            "--tls-cert",
            "tests/keys/tls-cert.pem",
            "--tls-key",
            "tests/keys/tls-key.pem"
        ])
        .validate()
        .unwrap()
        .tls
        .is_some());
        let e = cli(&["--write-coalesce", "2s"]).validate().unwrap_err();
        assert_eq!(e.flag, "write-coalesce");
        let c = cli(&["--write-coalesce", "25ms"]).validate().unwrap();
        assert_eq!(c.write_coalesce, Duration::from_millis(25));
        let e = cli(&["--publish-backpressure", "61s"])
            .validate()
            .unwrap_err();
        assert_eq!(e.flag, "publish-backpressure");
        assert!(e.problem.contains("at most 60s"), "{}", e.problem);
        let e = cli(&["--publish-backpressure", "soon"])
            .validate()
            .unwrap_err();
        assert_eq!(e.flag, "publish-backpressure");
        let c = cli(&["--publish-backpressure", "0ms"]).validate().unwrap();
        assert_eq!(c.publish_backpressure, Duration::ZERO);
        assert_eq!(
            Config::default_for_tests().publish_backpressure,
            Duration::from_secs(5)
        );
        let e = cli(&["--shutdown-drain", "20s"]).validate().unwrap_err();
        assert_eq!(e.flag, "shutdown-deadline");
        let e = cli(&["--queue-max-frames", "0"]).validate().unwrap_err();
        assert_eq!(e.flag, "queue-max-frames");
    }

    #[test]
    fn kafka_flags() {
        let c = cli(&[
            "--kafka-brokers",
            "127.0.0.1:9092",
            "--kafka-topics",
            "a,b,a",
        ])
        .validate()
        .unwrap();
        let k = c.kafka.unwrap();
        assert_eq!(k.topics, ["a", "b"]);
        assert_eq!(k.publish_topic, "a");
        assert_eq!(k.start, StartPosition::Latest);
        let c = cli(&[
            "--kafka-brokers",
            "h:1",
            "--kafka-topics",
            "t",
            "--kafka-start",
            "replay-window",
            "--kafka-property",
            "security.protocol=SASL_SSL",
            "--kafka-property",
            "x=a=b",
        ])
        .validate()
        .unwrap();
        let k = c.kafka.unwrap();
        assert_eq!(k.start, StartPosition::ReplayWindow);
        assert_eq!(k.properties[1], ("x".to_owned(), "a=b".to_owned()));
        assert!(cli(&[]).validate().unwrap().kafka.is_none());

        let k = ["--kafka-brokers", "h:1", "--kafka-topics", "t"];
        let cases: [(Vec<&str>, &str); 7] = [
            (vec!["--kafka-topics", "t"], "kafka-topics"),
            (vec!["--kafka-brokers", "h:1"], "kafka-topics"),
            (
                vec!["--kafka-brokers", "nohostport", "--kafka-topics", "t"],
                "kafka-brokers",
            ),
            (
                vec!["--kafka-brokers", "h:1", "--kafka-topics", "bad topic"],
                "kafka-topics",
            ),
            ([&k[..], &["--kafka-start", "x"]].concat(), "kafka-start"),
            (
                [&k[..], &["--kafka-property", "novalue"]].concat(),
                "kafka-property",
            ),
            (
                [&k[..], &["--kafka-publish-topic", "u"]].concat(),
                "kafka-publish-topic",
            ),
        ];
        for (args, flag) in cases {
            assert_eq!(cli(&args).validate().unwrap_err().flag, flag, "{args:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "s",
            "15",
            "1.5s",
            "-1s",
            "15x",
            "99999999999999999999s",
            "200h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
