//! Configuration: clap flags with `HERALD_*` environment twins ([`Cli`],
//! grouped by domain in `--help`), each value typed by its parser
//! (`parse`), then checked across flags in one fallible step
//! ([`Cli::validate`]) into a [`Config`] whose parts each subsystem takes.
//! Every problem names the flag (and the environment variable, when the
//! value came from one: [`load`]) before anything binds.

mod file;
pub(crate) mod parse;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, ValueEnum};

pub use crate::auth::Auth;
use crate::registry::queue;
use crate::replay;

/// Default per-connection queue depth. At most this many frames wait for a
/// client; with 40-byte entries that is 40 KiB of handles worst case.
pub const DEFAULT_QUEUE_FRAMES: usize = 1024;
/// Default per-connection queued bytes. Worst case (every client stalled) is
/// connections x this: 20k connections x 256 KiB = 5 GiB, but frames are shared
/// with the replay buffer and other subscribers, so a broadcast burst costs far
/// less. Lower it for very large fleets of slow clients.
pub const DEFAULT_QUEUE_BYTES: &str = "256KiB";
/// Default replay window: 10k events / 64 MiB / 5 minutes, whichever is hit
/// first; enough for a browser tab that lost its network for a while.
pub const DEFAULT_REPLAY_EVENTS: usize = 10_000;
pub const DEFAULT_REPLAY_BYTES: &str = "64MiB";
/// File descriptors kept back from the connection cap: 64 for listeners,
/// logs, Kafka sockets and the rest of the process, plus the connections
/// that can be open beyond the cap: 256 being answered a refusal
/// (`server::MAX_REJECTING`) and 64 on the admin listener
/// (`server::ADMIN_CONNECTIONS`).
pub const FD_RESERVE: u64 = 64 + 256 + 64;

/// herald: Server-Sent Events fan-out server.
///
/// Every flag can also be set through the environment variable shown.
/// Durations take a unit (500ms, 15s, 5m, 1h 30m) or are 0; sizes are bytes
/// or take a unit (64KiB, 1MiB); booleans in the environment take
/// true/false, 1/0, yes/no or on/off.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub streams: StreamArgs,
    #[command(flatten)]
    pub publish: PublishArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub ops: OpsArgs,
}

/// What `herald` does besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print a signed token for a user, to try herald with: `herald token
    /// --user alice --topics news` (the key from HERALD_JWT_SECRET or
    /// --secret, or --private-key).
    Token(crate::token::TokenArgs),
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Loaded {
    /// Serve with this configuration.
    Serve(Box<Config>),
    /// `herald token`.
    Token(crate::token::TokenArgs),
}

/// Where herald listens and how it takes connections.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Listening")]
pub struct ListenArgs {
    /// Address to serve SSE, publish, health and metrics on (IP:PORT or
    /// HOST:PORT).
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080", value_name = "ADDR", value_parser = parse::listen_addr)]
    pub listen: SocketAddr,

    /// Separate address for /metrics, /healthz and /readyz (optional), and
    /// the admin API with --admin-token.
    #[arg(long, env = "HERALD_ADMIN_LISTEN", value_name = "ADDR", value_parser = parse::listen_addr)]
    pub admin_listen: Option<SocketAddr>,

    /// Bearer token of the admin API on --admin-listen (at least 16 bytes):
    /// close a user's streams, maintenance, drain (see the README).
    #[arg(long, env = "HERALD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Set SO_REUSEPORT on the listener, so several herald processes can
    /// share one port (kernel load-balances new connections). Kafka mode
    /// only: every process then reads every event.
    #[arg(long, env = "HERALD_REUSE_PORT", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub reuse_port: bool,

    /// PEM certificate chain: serve HTTPS (ALPN h2 and http/1.1). Needs
    /// --tls-key.
    #[arg(long, env = "HERALD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<String>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "HERALD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<String>,

    /// After a TLS 1.3 handshake (and an HTTP/1.1 stream's head), herald
    /// seals and opens the connection's records itself with rustls's cipher
    /// for the suite: a stream then holds none of rustls's buffers. false
    /// keeps every connection on rustls's own connection.
    #[arg(long, env = "HERALD_TLS_OWN_RECORDS", default_value = "true", action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub tls_own_records: bool,

    /// Most simultaneous HTTP connections on the main listener; past it new
    /// ones get a 503 (probe and scrape on --admin-listen, which has its
    /// own budget). 0 = as many as the open-file limit allows.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: u64,

    /// HTTP worker threads (0 = one per core).
    #[arg(long, env = "HERALD_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Threads, each with a runtime of its own, for the plain (not TLS)
    /// HTTP/1.1 connections that carry no stream on herald's writer:
    /// publish requests and the other API routes. auto = half the cores,
    /// rounded up; 0 = none: every connection on the worker threads.
    #[arg(long, env = "HERALD_API_THREADS", default_value = "auto", value_name = "auto|N", value_parser = parse::api_threads)]
    pub api_threads: usize,

    /// Serve HTTP/1.1 SSE streams (plain or TLS) on herald's own writer
    /// instead of hyper's (about 8x less memory per idle connection). Other
    /// HTTP/1.1 requests always go through hyper.
    #[arg(long, env = "HERALD_SSE_FAST_PATH", default_value = "true", action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub sse_fast_path: bool,

    /// Serve HTTP/2 connections (h2 over TLS, h2c) on herald's own HTTP/2
    /// server instead of hyper's (a fraction of the memory per connection
    /// and stream); `false` serves them through hyper.
    #[arg(long, env = "HERALD_OWN_HTTP2", default_value = "true", action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub own_http2: bool,
}

/// How streams behave.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Streams")]
pub struct StreamArgs {
    /// Longest a stream stays silent: one sent nothing for about three
    /// quarters of this gets a heartbeat comment (spread over the interval,
    /// a slice of the streams at a time; streams getting events get none).
    #[arg(long, env = "HERALD_HEARTBEAT_INTERVAL", default_value = "15s", value_name = "DURATION", value_parser = parse::duration_10ms)]
    pub heartbeat_interval: Duration,

    /// Reconnection delay advertised to browsers (`retry:`).
    #[arg(long, env = "HERALD_SSE_RETRY", default_value = "3s", value_name = "DURATION", value_parser = parse::duration)]
    pub sse_retry: Duration,

    /// Most frames queued for one connection before it is closed as slow.
    #[arg(long, env = "HERALD_QUEUE_MAX_FRAMES", default_value_t = DEFAULT_QUEUE_FRAMES, value_parser = parse::positive)]
    pub queue_max_frames: usize,

    /// Most bytes queued for one connection before it is closed as slow.
    #[arg(long, env = "HERALD_QUEUE_MAX_BYTES", default_value = DEFAULT_QUEUE_BYTES, value_name = "SIZE", value_parser = parse::size_nonzero)]
    pub queue_max_bytes: usize,

    /// Most events kept for resuming clients.
    #[arg(long, env = "HERALD_REPLAY_MAX_EVENTS", default_value_t = DEFAULT_REPLAY_EVENTS)]
    pub replay_max_events: usize,

    /// Most frame bytes kept for resuming clients.
    #[arg(long, env = "HERALD_REPLAY_MAX_BYTES", default_value = DEFAULT_REPLAY_BYTES, value_name = "SIZE", value_parser = parse::size)]
    pub replay_max_bytes: usize,

    /// Oldest event kept for resuming clients.
    #[arg(long, env = "HERALD_REPLAY_MAX_AGE", default_value = "5m", value_name = "DURATION", value_parser = parse::duration)]
    pub replay_max_age: Duration,

    /// Least time between two writes to one stream: events arriving sooner
    /// after a write wait and leave together in the next one. A stream that
    /// was quiet writes at once, so this only delays streams receiving more
    /// than one event per window, and it cuts their syscalls per event
    /// (0 = write every wake-up). At most 1s.
    #[arg(long, env = "HERALD_WRITE_COALESCE", default_value = "0ms", value_name = "DURATION", value_parser = parse::coalesce_window)]
    pub write_coalesce: Duration,

    /// The same, only on a busy node (queuing 100,000 frames/s or more)
    /// and only after a write that carried two or more events: a stream
    /// whose events arrive faster than it writes them then writes at most
    /// once per window, in fewer, fuller writes. A stream that wrote one
    /// event, and every stream on a node that is not busy, writes at once
    /// (0 = never). At most 1s.
    #[arg(long, env = "HERALD_WRITE_COALESCE_BUSY", default_value = "150ms", value_name = "DURATION", value_parser = parse::coalesce_window)]
    pub write_coalesce_busy: Duration,

    /// Registry shards (a power of two).
    #[arg(long, env = "HERALD_SHARDS", default_value_t = 64, value_parser = parse::shards)]
    pub shards: usize,
}

/// The publish API.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Publishing")]
pub struct PublishArgs {
    /// Largest accepted publish request body (bytes, or 1MiB...).
    #[arg(long, env = "HERALD_PUBLISH_MAX_BODY", default_value = "1MiB", value_name = "SIZE", value_parser = parse::size_nonzero)]
    pub publish_max_body: usize,

    /// When herald falls behind on delivery (many streams with deep queues),
    /// an HTTP publish waits up to this long for the writers to catch up,
    /// then gets a 503 and nothing is published; the Kafka consumer pauses
    /// up to this long per burst (0 = never wait: queues overflow and
    /// their streams close as slow). At most 60s.
    #[arg(long, env = "HERALD_PUBLISH_BACKPRESSURE", default_value = "5s", value_name = "DURATION", value_parser = parse::backpressure_wait)]
    pub publish_backpressure: Duration,
}

/// Who may subscribe and publish, and from which origins.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Auth and CORS")]
pub struct AuthArgs {
    /// HS256 shared secret for subscriber (and publisher) JWTs. With it or
    /// --jwt-public-key, streams and publishing need a token.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Path of a PEM public key (RSA for RS256, EC P-256 for ES256, Ed25519
    /// for EdDSA) for JWTs; read again on SIGHUP.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<String>,

    /// The identity provider's JWKS endpoint (https, or http on loopback):
    /// tokens with a `kid` are checked against its keys (RSA, EC P-256,
    /// Ed25519), fetched at start, every --jwt-jwks-refresh, and when a
    /// token names an unknown kid (at most every 10s); the last good set is
    /// kept while the endpoint is down.
    #[arg(long, env = "HERALD_JWT_JWKS_URL", value_name = "URL")]
    pub jwt_jwks_url: Option<String>,

    /// How often the JWKS key set is fetched again.
    #[arg(long, env = "HERALD_JWT_JWKS_REFRESH", default_value = "5m", value_name = "DURATION", value_parser = parse::duration)]
    pub jwt_jwks_refresh: Duration,

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
    #[arg(long, env = "HERALD_JWT_QUERY_PARAM", default_value = "true", action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub jwt_query_param: bool,

    /// Static secret a publisher may send as its Bearer token instead of a
    /// JWT with `"publish": true`.
    #[arg(long, env = "HERALD_PUBLISH_SECRET", hide_env_values = true)]
    pub publish_secret: Option<String>,

    /// Serve without auth on a non-loopback address (otherwise herald refuses
    /// to start there without --jwt-secret or --jwt-public-key).
    #[arg(long, env = "HERALD_INSECURE_NO_AUTH", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub insecure_no_auth: bool,

    /// Origins allowed to call herald from a browser (CORS), comma-separated,
    /// e.g. `https://app.example.com`; `*` for any (only without
    /// --cors-credentials). Empty: no CORS headers.
    #[arg(long, env = "HERALD_CORS_ORIGINS", value_delimiter = ',', value_name = "ORIGIN", value_parser = parse::cors_origin)]
    pub cors_origins: Vec<String>,

    /// Allow credentials (cookies) on cross-origin requests
    /// (`EventSource(url, {withCredentials: true})`).
    #[arg(long, env = "HERALD_CORS_CREDENTIALS", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub cors_credentials: bool,
}

/// What one client may cost.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Most open streams per user (0 = no limit); past it a 429.
    #[arg(long, env = "HERALD_MAX_STREAMS_PER_USER", default_value_t = 0)]
    pub max_streams_per_user: usize,

    /// Most open connections per client address (0 = no limit); past it a
    /// 429. Behind a proxy every client shares its address, unless the
    /// proxy is in --trusted-proxies (then its clients' streams are counted
    /// per client address).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Proxies whose `Forwarded` / `X-Forwarded-For` headers name the
    /// client (comma-separated ranges or addresses, e.g.
    /// `10.0.0.0/8,127.0.0.1`): from them the client's address (the
    /// rightmost hop not itself a trusted proxy) is used for per-address
    /// limits and logs; from any other peer the headers are ignored. Empty
    /// (default): no proxy is trusted.
    #[arg(long, env = "HERALD_TRUSTED_PROXIES", value_name = "CIDR[,CIDR]", value_delimiter = ',', value_parser = crate::forwarded::parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Most new connections per second for the node (0 = no limit); past it
    /// a 503 with Retry-After. Smooths reconnect storms; probes and scrapes
    /// on the main listener count too (use --admin-listen).
    #[arg(long, env = "HERALD_MAX_CONNECT_RATE", default_value = "0", value_name = "PER_SECOND", value_parser = parse::rate)]
    pub max_connect_rate: f64,

    /// Most publish requests per second per publisher (token subject, the
    /// publisher secret, or the client address when publishing is open);
    /// 0 = no limit. Past it a 429 with Retry-After.
    #[arg(long, env = "HERALD_PUBLISH_RATE", default_value = "0", value_name = "PER_SECOND", value_parser = parse::rate)]
    pub publish_rate: f64,

    /// Most publish body bytes per second per publisher (0 = no limit).
    #[arg(long, env = "HERALD_PUBLISH_BYTES_RATE", default_value = "0", value_name = "PER_SECOND", value_parser = parse::rate)]
    pub publish_bytes_rate: f64,

    /// From accept, the time a client has to finish its TLS handshake and
    /// send a whole first request head (slowloris); the connection is closed
    /// after it. Also the time a publish body has to arrive (408 after it).
    #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT", default_value = "10s", value_name = "DURATION", value_parser = parse::duration_100ms)]
    pub header_read_timeout: Duration,

    /// A connection with no request open (no stream, no pending answer)
    /// this long is closed (keep-alive and HTTP/2 connections).
    #[arg(long, env = "HERALD_IDLE_TIMEOUT", default_value = "60s", value_name = "DURATION", value_parser = parse::duration_100ms)]
    pub idle_timeout: Duration,

    /// Largest request head (8KiB to 1MiB); past it a 431.
    #[arg(long, env = "HERALD_MAX_HEADER_BYTES", default_value = "16KiB", value_name = "SIZE", value_parser = parse::header_size)]
    pub max_header_bytes: usize,

    /// A peer that reads nothing for this long is cut off: a write that
    /// waits this long closes the connection, and a stream whose oldest
    /// queued frame waited this long is closed as slow at its next frame
    /// (heartbeats included) (0 = never).
    #[arg(long, env = "HERALD_WRITE_TIMEOUT", default_value = "30s", value_name = "DURATION", value_parser = parse::duration)]
    pub write_timeout: Duration,

    /// Kernel send buffer of each client connection (SO_SNDBUF, set on the
    /// listener; Linux counts twice this). Bounds what a client that stops
    /// reading holds in the kernel beyond its queue; 0 leaves it to the
    /// kernel, which grows it up to net.ipv4.tcp_wmem's max (4 MiB by
    /// default) per connection. Capped by net.core.wmem_max.
    #[arg(long, env = "HERALD_SOCKET_SEND_BUFFER", default_value = "128KiB", value_name = "SIZE", value_parser = parse::size)]
    pub socket_send_buffer: usize,
}

/// Where to start reading Kafka at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartPosition {
    /// Only new records.
    Latest,
    /// From the oldest record kept.
    Earliest,
    /// From --replay-max-age ago (offsets for times), so a restarted node
    /// can serve resumes at once.
    ReplayWindow,
}

impl StartPosition {
    pub fn label(self) -> &'static str {
        match self {
            StartPosition::Latest => "latest",
            StartPosition::Earliest => "earliest",
            StartPosition::ReplayWindow => "replay-window",
        }
    }
}

/// Kafka ingest and publishing.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (host:port[,host:port...]). Without it herald
    /// runs embedded: events come only from the HTTP publish API.
    #[arg(long, env = "HERALD_KAFKA_BROKERS", value_name = "HOST:PORT,...", value_parser = parse::kafka_brokers)]
    pub kafka_brokers: Option<String>,

    /// Kafka topics to consume, comma-separated. Every node reads every
    /// partition of each (no consumer group splits them).
    #[arg(long, env = "HERALD_KAFKA_TOPICS", value_delimiter = ',', value_name = "TOPIC", value_parser = parse::kafka_topic)]
    pub kafka_topics: Vec<String>,

    /// Where to start reading at startup.
    #[arg(long, env = "HERALD_KAFKA_START", default_value = "latest", value_enum)]
    pub kafka_start: StartPosition,

    /// A librdkafka client property, key=value (repeatable; in the
    /// environment, separate several with ';'). For SASL/TLS and tuning;
    /// applied to the consumer and the producer.
    #[arg(
        long = "kafka-property",
        env = "HERALD_KAFKA_PROPERTY",
        value_delimiter = ';',
        value_name = "KEY=VALUE", value_parser = parse::property
    )]
    pub kafka_property: Vec<(String, String)>,

    /// Topic that POST /api/publish produces to (default: the first of
    /// --kafka-topics; must be one of them, so published events come back).
    #[arg(long, env = "HERALD_KAFKA_PUBLISH_TOPIC", value_name = "TOPIC", value_parser = parse::kafka_topic)]
    pub kafka_publish_topic: Option<String>,

    /// How long a publish waits for the broker's acknowledgement before it is
    /// answered 503.
    #[arg(long, env = "HERALD_KAFKA_PUBLISH_TIMEOUT", default_value = "5s", value_name = "DURATION", value_parser = parse::duration_100ms)]
    pub kafka_publish_timeout: Duration,

    /// Publish each request as one Kafka transaction (all or nothing; the
    /// broker must support transactions). `false`: one idempotent write per
    /// event, for brokers without transactions; a failed batch then says
    /// which events were written.
    #[arg(long, env = "HERALD_KAFKA_PUBLISH_TRANSACTIONS", default_value = "true", action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub kafka_publish_transactions: bool,

    /// How often to check the topics for new partitions (and the broker for
    /// health).
    #[arg(long, env = "HERALD_KAFKA_METADATA_INTERVAL", default_value = "10s", value_name = "DURATION", value_parser = parse::duration_100ms)]
    pub kafka_metadata_interval: Duration,

    /// Kafka consumers that catch up streams whose Last-Event-ID the replay
    /// buffer no longer holds (each serves many streams at once).
    #[arg(
        long,
        env = "HERALD_CATCHUP_READERS",
        default_value = "4",
        value_name = "N"
    )]
    pub catchup_readers: NonZeroUsize,

    /// Streams that may wait for a catch-up reader (their stream is open,
    /// heartbeats flow); past it such a subscribe is answered 503 with
    /// Retry-After.
    #[arg(
        long,
        env = "HERALD_CATCHUP_MAX_WAITING",
        default_value = "10000",
        value_name = "N"
    )]
    pub catchup_max_waiting: NonZeroUsize,

    /// Concurrent catch-ups one user may have (429 past it).
    #[arg(
        long,
        env = "HERALD_MAX_CATCHUPS_PER_USER",
        default_value = "8",
        value_name = "N"
    )]
    pub max_catchups_per_user: NonZeroUsize,

    /// Per-topic mapping rules (TOML or YAML): where the user, SSE topic
    /// and event type come from, formats, projection. Its topics are read
    /// too. Without it every topic uses the default rule (key = user,
    /// sse-topic / sse-event headers, UTF-8 value).
    #[arg(long, env = "HERALD_KAFKA_MAPPING", value_name = "FILE")]
    pub kafka_mapping: Option<std::path::PathBuf>,

    /// Schema registry (Confluent REST API) for Avro, Protobuf and JSON
    /// Schema values, e.g. http://registry:8081.
    #[arg(long, env = "HERALD_SCHEMA_REGISTRY_URL", value_name = "URL")]
    pub schema_registry_url: Option<String>,

    /// Basic auth for the schema registry, USER:PASSWORD (Confluent Cloud:
    /// API key and secret). Prefer the environment variable.
    #[arg(
        long,
        env = "HERALD_SCHEMA_REGISTRY_AUTH",
        value_name = "USER:PASSWORD",
        hide_env_values = true
    )]
    pub schema_registry_auth: Option<String>,

    /// PEM file of the CA certificates that sign the schema registry's
    /// certificate (default: the bundled web PKI roots).
    #[arg(long, env = "HERALD_SCHEMA_REGISTRY_CA", value_name = "FILE")]
    pub schema_registry_ca: Option<std::path::PathBuf>,

    /// Topic that records herald can not map are written to, with headers
    /// naming the source topic, partition, offset and error (default: such
    /// records are skipped, counted and logged).
    #[arg(long, env = "HERALD_KAFKA_DEAD_LETTER_TOPIC", value_name = "TOPIC", value_parser = parse::kafka_topic)]
    pub kafka_dead_letter_topic: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colour only on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs, metrics and shutdown.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Logging, metrics and shutdown")]
pub struct OpsArgs {
    /// Settings from a TOML file: each key a flag's name without `--`
    /// (`listen = "0.0.0.0:8080"`, `heartbeat-interval = "15s"`,
    /// `cors-origins = ["https://a.example"]`, `access-log = true`).
    /// Flags and HERALD_* variables override it.
    #[arg(long, env = "HERALD_CONFIG", value_name = "PATH")]
    pub config: Option<std::path::PathBuf>,

    /// Log filter: a level (error, warn, info, debug, trace, off) and/or
    /// target=level pairs, e.g. info,herald=debug.
    #[arg(long, env = "HERALD_LOG", default_value = "info", value_name = "FILTER", value_parser = parse::log_filter)]
    pub log: String,

    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text", value_enum)]
    pub log_format: LogFormat,

    /// Access log: one line per stream opened and one per stream closed
    /// (user, topics, client address, resume, close reason, duration,
    /// events), target `herald::access`, whatever --log says. Never a
    /// token.
    #[arg(long, env = "HERALD_ACCESS_LOG", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub access_log: bool,

    /// Record metrics (and serve /metrics). Off only to measure what
    /// metrics cost.
    #[arg(long, env = "HERALD_METRICS", default_value = "true", action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub metrics: bool,

    /// On SIGTERM/SIGINT, streams are ended spread over this period.
    #[arg(long, env = "HERALD_SHUTDOWN_DRAIN", default_value = "2s", value_name = "DURATION", value_parser = parse::duration)]
    pub shutdown_drain: Duration,

    /// On SIGTERM/SIGINT, the process exits within this deadline whatever
    /// connections remain. Must exceed --shutdown-drain.
    #[arg(long, env = "HERALD_SHUTDOWN_DEADLINE", default_value = "10s", value_name = "DURATION", value_parser = parse::duration)]
    pub shutdown_deadline: Duration,
}

/// A flag's value was refused by a check across flags or a file it names.
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

/// Validated configuration, by subsystem.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub streams: StreamConfig,
    pub publish: PublishConfig,
    pub auth: Auth,
    /// `--jwt-jwks-url`.
    pub jwks: Option<crate::jwks::JwksConfig>,
    /// `--jwt-public-key`'s file, read again on SIGHUP.
    pub public_key_file: Option<std::path::PathBuf>,
    pub cors: Cors,
    pub limits: Limits,
    /// `--trusted-proxies`.
    pub proxies: crate::forwarded::TrustedProxies,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    /// Record metrics and serve `/metrics`.
    pub metrics: bool,
    /// `None`: embedded mode.
    pub kafka: Option<KafkaConfig>,
}

/// Listeners and connections.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// `--admin-token` (validated: only with an admin listener).
    pub admin_token: Option<Arc<[u8]>>,
    pub reuse_port: bool,
    /// SO_SNDBUF for client connections (`None`: the kernel's autotuning).
    pub send_buffer: Option<NonZeroUsize>,
    /// `--tls-cert`/`--tls-key` loaded (None: plain TCP).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `--tls-own-records`.
    pub tls_own_records: bool,
    /// `None`: derive from the open-file limit at start.
    pub max_connections: Option<NonZeroU64>,
    /// `None`: one per core.
    pub worker_threads: Option<NonZeroUsize>,
    /// `--api-threads` (0: none).
    pub api_threads: usize,
    /// Serve HTTP/1.1 streams on herald's own writer.
    pub sse_fast_path: bool,
    /// Serve HTTP/2 on herald's own server.
    pub own_http2: bool,
    /// From accept to a whole first request head.
    pub header_read_timeout: Duration,
    /// Longest a connection may stay with no request open.
    pub idle_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Longest a write may wait on a peer that does not read.
    pub write_timeout: Option<Duration>,
}

/// Streams.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub heartbeat: Duration,
    pub retry: Duration,
    pub queue: queue::Limits,
    pub replay: replay::Limits,
    pub shards: usize,
    /// Least time between two writes to one stream.
    pub write_coalesce: Option<Duration>,
    /// The same, only for busy streams on a busy node.
    pub write_coalesce_busy: Option<Duration>,
}

/// The publish API.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    pub max_body: usize,
    /// Longest wait of a publish while herald is behind.
    pub backpressure: Option<Duration>,
}

/// Per-client limits (`None`: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    pub streams_per_user: Option<NonZeroUsize>,
    pub connections_per_ip: Option<NonZeroUsize>,
    /// New connections per second, whole node.
    pub connect_rate: Option<f64>,
    /// Publish requests per second per publisher.
    pub publish_rate: Option<f64>,
    /// Publish body bytes per second per publisher.
    pub publish_bytes_rate: Option<f64>,
}

/// The drain on SIGTERM/SIGINT.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownConfig {
    pub drain: Duration,
    pub deadline: Duration,
}

/// Logging.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub filter: String,
    pub format: LogFormat,
    /// `--access-log`.
    pub access: bool,
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
    /// Where `POST /api/publish` writes; `None` when every topic read has a
    /// mapping rule (publishing is then off: a 501).
    pub publish_topic: Option<String>,
    pub publish_timeout: Duration,
    /// One transaction per publish (else idempotent writes per event).
    pub publish_transactions: bool,
    pub metadata_interval: Duration,
    /// `--publish-backpressure`: longest pause per burst while herald is
    /// behind on delivery.
    pub backpressure: Option<Duration>,
    /// Catching streams up from Kafka.
    pub catchup: CatchUpConfig,
    /// `--kafka-mapping`: per-topic rules (empty: the default rule).
    pub mappings: crate::kafka::mapping::Mappings,
    /// `--schema-registry-*`.
    pub schema_registry: Option<SchemaRegistryConfig>,
    /// `--kafka-dead-letter-topic`.
    pub dead_letter_topic: Option<String>,
}

/// Where the schema registry is and how to reach it.
#[derive(Clone, PartialEq, Eq)]
pub struct SchemaRegistryConfig {
    /// Base URL, `http://` or `https://`.
    pub url: String,
    /// `USER:PASSWORD` for basic auth (never logged).
    pub basic_auth: Option<String>,
    /// DER certificates trusted for an `https` registry (`None`: web PKI).
    pub ca: Option<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for SchemaRegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistryConfig")
            .field("url", &self.url)
            .field("basic_auth", &self.basic_auth.as_ref().map(|_| "<set>"))
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .finish()
    }
}

/// Catch-up readers (see `kafka::catchup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUpConfig {
    /// `--catchup-readers`: Kafka consumers reading for streams.
    pub readers: NonZeroUsize,
    /// `--catchup-max-waiting`: streams waiting for a reader; past it a
    /// subscribe needing one is a 503.
    pub max_waiting: NonZeroUsize,
    /// `--max-catchups-per-user`: a user's concurrent catch-ups.
    pub per_user: NonZeroUsize,
}

impl Default for CatchUpConfig {
    fn default() -> Self {
        Self {
            readers: NonZeroUsize::new(4).unwrap_or(NonZeroUsize::MIN),
            max_waiting: NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN),
            per_user: NonZeroUsize::new(8).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

/// Parses the process's arguments and environment into a [`Config`] (or a
/// subcommand). The
/// error is the whole message to print: it names the flag, and the
/// environment variable when the value came from one.
pub fn load() -> Result<Loaded, clap::Error> {
    load_from(std::env::args_os())
}

/// [`load`] from these arguments (and the process environment).
pub fn load_from<I, T>(args: I) -> Result<Loaded, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = Cli::command();
    let mut matches = cmd
        .try_get_matches_from_mut(args.clone())
        .map_err(|e| name_env_source(&cmd, e))?;
    if let (Some(path), None) = (
        matches.get_one::<std::path::PathBuf>("config").cloned(),
        matches.subcommand_name(),
    ) {
        let extra = file::args(&cmd, &matches, &path)
            .map_err(|msg| cmd.error(clap::error::ErrorKind::ValueValidation, msg))?;
        if !extra.is_empty() {
            let all = args.iter().cloned().chain(extra);
            matches = cmd.try_get_matches_from_mut(all).map_err(|e| {
                let e = name_env_source(&cmd, e);
                let msg = format!(
                    "{} (settings from --config {})",
                    e.render().to_string().trim_end(),
                    path.display()
                );
                cmd.error(e.kind(), msg)
            })?;
        }
    }
    let mut cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))?;
    if let Some(Command::Token(t)) = cli.command.take() {
        return Ok(Loaded::Token(t));
    }
    cli.validate()
        .map(|c| Loaded::Serve(Box::new(c)))
        .map_err(|e| {
            let id = e.flag.replace('-', "_");
            let from_env = matches!(matches.value_source(&id), Some(ValueSource::EnvVariable));
            let env = cmd
                .get_arguments()
                .find(|a| a.get_id() == id.as_str())
                .and_then(|a| a.get_env())
                .map(|v| v.to_string_lossy().into_owned());
            let mut msg = e.to_string();
            if let (true, Some(env)) = (from_env, env) {
                msg.push_str(&format!(" (set by the environment variable {env})"));
            }
            cmd.error(clap::error::ErrorKind::ValueValidation, msg)
        })
}

/// A value error whose value came from the environment says which variable.
fn name_env_source(cmd: &clap::Command, e: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return e;
    };
    let long = arg
        .trim_start_matches('-')
        .split([' ', '='])
        .next()
        .unwrap_or("");
    let Some(env) = cmd
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
    else {
        return e;
    };
    let on_command_line =
        std::env::args().any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
    if on_command_line || std::env::var_os(env).is_none() {
        return e;
    }
    let mut cmd = cmd.clone();
    let text = e.to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("error: ");
    cmd.error(
        e.kind(),
        format!(
            "{first} (set by the environment variable {})",
            env.to_string_lossy()
        ),
    )
}

// === impl Cli ===

impl Cli {
    /// Checks the rules between flags and loads the files they name.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let err = |flag: &'static str, value: &dyn ToString, problem: &str| ConfigError {
            flag,
            value: value.to_string(),
            problem: problem.to_owned(),
        };
        let Cli {
            command: _,
            listen: l,
            streams: s,
            publish: p,
            auth: a,
            limits: lim,
            kafka: k,
            ops,
        } = self;
        if let Some(t) = &l.admin_token {
            if l.admin_listen.is_none() {
                return Err(err(
                    "admin-token",
                    &"(hidden)",
                    "needs --admin-listen: the admin API is served there only",
                ));
            }
            if t.len() < 16 {
                return Err(err("admin-token", &"(hidden)", "must be at least 16 bytes"));
            }
        }
        if ops.shutdown_deadline <= ops.shutdown_drain {
            return Err(err(
                "shutdown-deadline",
                &humantime::format_duration(ops.shutdown_deadline),
                "must be longer than --shutdown-drain",
            ));
        }
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        let backpressure = nonzero(p.publish_backpressure);
        let kafka = kafka_config(k, backpressure)?;
        let auth = auth_config(&a)?;
        if !auth.streams_protected() && !l.listen.ip().is_loopback() && !a.insecure_no_auth {
            return Err(err(
                "listen",
                &l.listen,
                "is not a loopback address and no --jwt-secret or --jwt-public-key is set: anyone could read any user's stream and publish. Configure a key, or pass --insecure-no-auth to serve open anyway",
            ));
        }
        // Flags that would do nothing are refused, not ignored.
        if !auth.streams_protected() {
            for (flag, set) in [
                ("jwt-audience", a.jwt_audience.is_some()),
                ("jwt-issuer", a.jwt_issuer.is_some()),
            ] {
                if set {
                    return Err(err(
                        flag,
                        &"(set)",
                        "needs --jwt-secret, --jwt-public-key or --jwt-jwks-url: without a key no token is checked",
                    ));
                }
            }
            if !a.jwt_query_param {
                return Err(err(
                    "jwt-query-param",
                    &"false",
                    "needs --jwt-secret, --jwt-public-key or --jwt-jwks-url: without a key no token is read",
                ));
            }
        }
        if a.cors_credentials && a.cors_origins.is_empty() {
            return Err(err(
                "cors-credentials",
                &"true",
                "needs --cors-origins: without origins no CORS header is sent",
            ));
        }
        if l.reuse_port && kafka.is_none() {
            return Err(err(
                "reuse-port",
                &"true",
                "needs --kafka-brokers: in embedded mode each process has its own streams and publishes, so processes sharing a port would split the fan-out (a publish would reach only the streams of the process that took it)",
            ));
        }
        if a.cors_credentials && a.cors_origins.iter().any(|o| o == "*") {
            return Err(err(
                "cors-origins",
                &"*",
                "* cannot be combined with --cors-credentials (browsers refuse it); list the origins",
            ));
        }
        let tls = match (&l.tls_cert, &l.tls_key) {
            (Some(c), Some(key)) => Some(crate::tls::load(c, key).map_err(|(flag, problem)| {
                let value = if flag == "tls-cert" { c } else { key };
                err(flag, value, &problem)
            })?),
            _ => None,
        };
        let positive_rate = |r: f64| (r > 0.0).then_some(r);
        Ok(Config {
            server: ServerConfig {
                listen: l.listen,
                admin_listen: l.admin_listen,
                admin_token: l.admin_token.as_deref().map(|t| Arc::from(t.as_bytes())),
                reuse_port: l.reuse_port,
                send_buffer: NonZeroUsize::new(lim.socket_send_buffer),
                tls,
                tls_own_records: l.tls_own_records,
                max_connections: NonZeroU64::new(l.max_connections),
                worker_threads: NonZeroUsize::new(l.worker_threads),
                api_threads: l.api_threads,
                sse_fast_path: l.sse_fast_path,
                own_http2: l.own_http2,
                header_read_timeout: lim.header_read_timeout,
                idle_timeout: lim.idle_timeout,
                max_header_bytes: lim.max_header_bytes,
                write_timeout: nonzero(lim.write_timeout),
            },
            streams: StreamConfig {
                heartbeat: s.heartbeat_interval,
                retry: s.sse_retry,
                queue: queue::Limits {
                    max_frames: s.queue_max_frames,
                    max_bytes: s.queue_max_bytes,
                    stall: nonzero(lim.write_timeout),
                },
                replay: replay::Limits {
                    max_events: s.replay_max_events,
                    max_bytes: s.replay_max_bytes,
                    max_age: s.replay_max_age,
                },
                shards: s.shards,
                write_coalesce: nonzero(s.write_coalesce),
                write_coalesce_busy: nonzero(s.write_coalesce_busy),
            },
            publish: PublishConfig {
                max_body: p.publish_max_body,
                backpressure,
            },
            auth,
            public_key_file: a.jwt_public_key.clone().map(Into::into),
            jwks: a.jwt_jwks_url.clone().map(|url| crate::jwks::JwksConfig {
                url,
                refresh: a.jwt_jwks_refresh,
                min_gap: Duration::from_secs(10),
            }),
            cors: Cors {
                origins: a.cors_origins,
                credentials: a.cors_credentials,
            },
            limits: Limits {
                streams_per_user: NonZeroUsize::new(lim.max_streams_per_user),
                connections_per_ip: NonZeroUsize::new(lim.max_connections_per_ip),
                connect_rate: positive_rate(lim.max_connect_rate),
                publish_rate: positive_rate(lim.publish_rate),
                publish_bytes_rate: positive_rate(lim.publish_bytes_rate),
            },
            proxies: crate::forwarded::TrustedProxies::new(lim.trusted_proxies),
            shutdown: ShutdownConfig {
                drain: ops.shutdown_drain,
                deadline: ops.shutdown_deadline,
            },
            log: LogConfig {
                filter: ops.log,
                format: ops.log_format,
                access: ops.access_log,
            },
            metrics: ops.metrics,
            kafka,
        })
    }
}

/// A JWKS URL: https, or http to a loopback address (a sidecar, tests):
/// keys fetched in the clear could be replaced on the way.
fn jwks_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|_| "is not a URL".to_owned())?;
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if loopback => Ok(()),
        Some("http") => Err("must be https (plain http only to a loopback address): keys fetched in the clear could be replaced on the way".into()),
        _ => Err("must be an https:// URL".into()),
    }
}

fn auth_config(a: &AuthArgs) -> Result<Auth, ConfigError> {
    let err = |flag: &'static str, value: &str, problem: String| ConfigError {
        flag,
        value: value.to_owned(),
        problem,
    };
    let mut auth = Auth::open();
    if a.jwt_cookie.is_empty()
        || !a
            .jwt_cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        return Err(err(
            "jwt-cookie",
            &a.jwt_cookie,
            "must be a cookie name: letters, digits, _ - .".into(),
        ));
    }
    auth.cookie = a.jwt_cookie.clone();
    auth.query_param = a.jwt_query_param;
    if let Some(secret) = &a.jwt_secret {
        // Never echo a secret back.
        auth = auth
            .with_secret(secret.as_bytes())
            .map_err(|e| err("jwt-secret", "(hidden)", e.0))?;
    }
    if let Some(path) = &a.jwt_public_key {
        let pem = std::fs::read(path)
            .map_err(|e| err("jwt-public-key", path, format!("cannot be read: {e}")))?;
        auth = auth
            .with_public_key_pem(&pem)
            .map_err(|e| err("jwt-public-key", path, e.0))?;
    }
    if let Some(url) = &a.jwt_jwks_url {
        jwks_url(url).map_err(|e| err("jwt-jwks-url", url, e))?;
        if a.jwt_jwks_refresh < Duration::from_secs(1) {
            return Err(err(
                "jwt-jwks-refresh",
                &humantime::format_duration(a.jwt_jwks_refresh).to_string(),
                "must be at least 1s".into(),
            ));
        }
        auth = auth.with_jwks();
    }
    if let Some(s) = &a.publish_secret {
        if s.len() < 16 {
            return Err(err(
                "publish-secret",
                "(hidden)",
                "must be at least 16 bytes".into(),
            ));
        }
    }
    Ok(auth
        .with_audience(a.jwt_audience.clone())
        .with_issuer(a.jwt_issuer.clone())
        .with_publish_secret(a.publish_secret.as_ref().map(|s| s.as_bytes().to_vec())))
}

fn kafka_config(
    k: KafkaArgs,
    backpressure: Option<Duration>,
) -> Result<Option<KafkaConfig>, ConfigError> {
    let err = |flag: &'static str, value: &str, problem: &str| ConfigError {
        flag,
        value: value.to_owned(),
        problem: problem.to_owned(),
    };
    let topics_text = k.kafka_topics.join(",");
    let Some(brokers) = k.kafka_brokers else {
        if !k.kafka_topics.is_empty() {
            return Err(err("kafka-topics", &topics_text, "needs --kafka-brokers"));
        }
        for (flag, set) in [
            ("kafka-mapping", k.kafka_mapping.is_some()),
            ("schema-registry-url", k.schema_registry_url.is_some()),
            (
                "kafka-dead-letter-topic",
                k.kafka_dead_letter_topic.is_some(),
            ),
        ] {
            if set {
                return Err(err(flag, "", "needs --kafka-brokers"));
            }
        }
        if let Some(t) = &k.kafka_publish_topic {
            return Err(err("kafka-publish-topic", t, "needs --kafka-brokers"));
        }
        return Ok(None);
    };
    let mut topics: Vec<String> = Vec::new();
    for t in k.kafka_topics {
        if !topics.contains(&t) {
            topics.push(t);
        }
    }
    let mappings = match &k.kafka_mapping {
        Some(path) => crate::kafka::mapping::Mappings::load(path)
            .map_err(|problem| err("kafka-mapping", &path.display().to_string(), &problem))?,
        None => Default::default(),
    };
    for t in mappings.topics() {
        if !topics.iter().any(|x| x == t) {
            topics.push(t.to_owned());
        }
    }
    if topics.is_empty() {
        return Err(err(
            "kafka-topics",
            "",
            "is required with --kafka-brokers (or a --kafka-mapping file naming topics)",
        ));
    }
    let schema_registry = match k.schema_registry_url {
        None if mappings.needs_registry() => {
            return Err(err(
                "kafka-mapping",
                &k.kafka_mapping
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                "reads avro, protobuf or json-schema: needs --schema-registry-url",
            ))
        }
        None => None,
        Some(url) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(err(
                    "schema-registry-url",
                    &url,
                    "must start with http:// or https://",
                ));
            }
            if let Some(auth) = &k.schema_registry_auth {
                if !auth.contains(':') {
                    return Err(err(
                        "schema-registry-auth",
                        "<hidden>",
                        "must be USER:PASSWORD",
                    ));
                }
            }
            let ca = match &k.schema_registry_ca {
                None => None,
                Some(path) => Some(crate::tls::load_certs(path).map_err(|problem| {
                    err("schema-registry-ca", &path.display().to_string(), &problem)
                })?),
            };
            Some(SchemaRegistryConfig {
                url,
                basic_auth: k.schema_registry_auth,
                ca,
            })
        }
    };
    if let Some(d) = &k.kafka_dead_letter_topic {
        if topics.contains(d) {
            return Err(err(
                "kafka-dead-letter-topic",
                d,
                "is a topic herald reads (its dead letters would come back)",
            ));
        }
    }
    // herald publishes its own record format (the default rule's): never
    // into a topic whose readers expect another one.
    let publish_topic = match k.kafka_publish_topic {
        Some(t) if !topics.contains(&t) => {
            return Err(err(
                "kafka-publish-topic",
                &t,
                "must be one of --kafka-topics (or published events would never come back)",
            ))
        }
        Some(t) if mappings.has_rule(&t) => {
            return Err(err(
                "kafka-publish-topic",
                &t,
                "has a --kafka-mapping rule: herald writes its own record format (key = user, sse-topic / sse-event headers), which that topic's readers do not expect; name a topic without a rule",
            ))
        }
        Some(t) => Some(t),
        None => topics.iter().find(|t| !mappings.has_rule(t)).cloned(),
    };
    Ok(Some(KafkaConfig {
        brokers,
        topics,
        start: k.kafka_start,
        properties: k.kafka_property,
        publish_topic,
        publish_timeout: k.kafka_publish_timeout,
        publish_transactions: k.kafka_publish_transactions,
        metadata_interval: k.kafka_metadata_interval,
        backpressure,
        catchup: CatchUpConfig {
            readers: k.catchup_readers,
            max_waiting: k.catchup_max_waiting,
            per_user: k.max_catchups_per_user,
        },
        mappings,
        schema_registry,
        dead_letter_topic: k.kafka_dead_letter_topic,
    }))
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

#[cfg(test)]
mod tests;
