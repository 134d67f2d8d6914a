//! Wiring: what a node is made of, in what order it starts, and how it
//! stops.
//!
//! Startup ([`start_on`]): the metrics recorder, the dispatcher (registry
//! and replay buffer), Kafka ingest and producer (Kafka mode; topics checked
//! first), the HTTP endpoints each given what they use, housekeeping tasks
//! (`tasks`), the accept loops, then readiness.
//!
//! Shutdown (`drain`), each stage bounded by the overall deadline:
//! 1. readiness off, new streams refused (503), accepting stops;
//! 2. every SSE stream is ended, spread over the drain period, each with a
//!    `retry:` hint, so clients do not all reconnect in the same instant;
//! 3. connections are told to wind down (keep-alive off) and awaited;
//! 4. Kafka ingest stops; whatever remains at the deadline is dropped with
//!    the runtime.

mod drain;
mod tasks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::fanout::Fanout;
use crate::fmt::OrNone;
use crate::guard::{Bucket, PerIp, Publishers};
use crate::http::publish::Publish;
use crate::http::subscribe::Subscribe;
use crate::http::{Api, Health, Routes};
use crate::kafka::{self, Ingest, Producer};
use crate::lifecycle::{Lifecycle, Phase};
use crate::metrics as m;
use crate::publish::Sink;
use crate::registry::Registry;
use crate::server::{self, ConnectLimits, ConnectionCap, HttpSettings, Serve};
use crate::stream::{self, Coalesce, Streams};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound (the message names the address).
    #[error("{0}")]
    Bind(#[from] std::io::Error),
    /// Kafka ingest or the producer could not start.
    #[error("{0}")]
    Kafka(#[from] kafka::StartError),
    /// The task starting Kafka ingest failed.
    #[error("starting Kafka ingest failed: {0}")]
    Ingest(#[from] tokio::task::JoinError),
    /// The JWKS key set could not be fetched at start.
    #[error("--jwt-jwks-url: {0}")]
    Jwks(String),
    /// `--api-threads`: a thread or its runtime could not be started.
    #[error("--api-threads: cannot start a runtime: {0}")]
    ApiThreads(std::io::Error),
}

/// A started server. Dropping it does not stop it: call [`Running::shutdown`]
/// and await [`Running::stopped`] (tests use a fixture that does both).
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    api: Arc<Api>,
    cap: Arc<ConnectionCap>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

// === impl Running ===

impl Running {
    /// Starts the drain (idempotent).
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Resolves when the drain has finished (or hit its deadline).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }

    /// The dispatcher (its registry of open streams, its replay buffer).
    pub fn fanout(&self) -> &Arc<Fanout> {
        &self.api.health.fanout
    }

    /// Streams being caught up from Kafka now (waiting or reading).
    pub fn catchups(&self) -> usize {
        self.api
            .subscribe
            .streams
            .catchup
            .as_ref()
            .map_or(0, |c| c.in_progress())
    }

    /// The metrics recorder (`None` with `--metrics false`).
    pub fn metrics(&self) -> Option<&PrometheusHandle> {
        self.api.health.metrics.as_ref()
    }

    /// Where the node is in its life.
    pub fn phase(&self) -> Phase {
        self.api.health.lifecycle.phase()
    }

    /// HTTP connections open now, and the cap.
    pub fn http_connections(&self) -> (u64, u64) {
        (self.cap.in_use(), self.cap.max())
    }
}

/// Binds the configured listeners and starts serving; returns at once.
pub async fn start(config: Config, max_connections: u64) -> Result<Running, StartError> {
    let s = &config.server;
    let listener = server::bind(s.listen, s.reuse_port, s.send_buffer, "listen")?;
    let admin = match s.admin_listen {
        Some(a) => Some(server::bind(a, s.reuse_port, None, "admin-listen")?),
        None => None,
    };
    start_on(config, listener, admin, max_connections).await
}

/// What a node is made of, before it serves.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) api: Arc<Api>,
    pub(crate) streams: Arc<Streams>,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) cap: Arc<ConnectionCap>,
    /// The admin listener's own budget.
    pub(crate) admin_cap: Arc<ConnectionCap>,
    pub(crate) limits: Arc<ConnectLimits>,
    pub(crate) http: Arc<HttpSettings>,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) ingest: Option<Ingest>,
    /// This run's id epoch.
    pub(crate) epoch: u64,
}

impl Node {
    /// Builds the node: the metrics recorder, the dispatcher, Kafka ingest
    /// and producer (Kafka mode; blocking up to the startup timeout), and
    /// the endpoints, each given what it uses.
    pub(crate) async fn build(config: &Config, max_connections: u64) -> Result<Self, StartError> {
        let metrics = config.metrics.then(m::install);
        let api_runtimes = match config.server.api_threads {
            0 => None,
            n => Some(Arc::new(
                crate::runtimes::ApiRuntimes::start(n).map_err(StartError::ApiThreads)?,
            )),
        };
        if let Some(j) = &config.jwks {
            // Without keys no token would verify: do not start.
            let url = j.url.clone();
            let keys = tokio::task::spawn_blocking(move || crate::jwks::fetch(&url))
                .await?
                .map_err(StartError::Jwks)?;
            metrics::gauge!(m::JWKS_KEYS).set(keys.len() as f64);
            config.auth.set_jwks(keys);
        }
        let registry = Arc::new(Registry::new(config.streams.shards));
        let epoch = run_epoch();
        let fanout = Arc::new(Fanout::new(
            registry,
            epoch,
            config.streams.queue,
            config.streams.replay,
        ));
        let (ingest, sink) = match config.kafka.clone() {
            Some(k) => {
                let f = fanout.clone();
                let age = config.streams.replay.max_age;
                // A catch-up feed nobody drains this long closes its stream.
                let stall = config
                    .server
                    .write_timeout
                    .unwrap_or(std::time::Duration::from_secs(30));
                let kc = k.clone();
                // Ingest first: its metadata check names the broker, the
                // topic and the client's last error (a TLS or SASL failure)
                // where the producer could only say its transactions timed
                // out.
                let rt = tokio::runtime::Handle::current();
                let ingest =
                    tokio::task::spawn_blocking(move || Ingest::start(&k, age, stall, f, &rt))
                        .await??;
                let producer = match kc.publish_topic.clone() {
                    // Every topic has a mapping rule: publishing is off.
                    None => None,
                    Some(topic) => {
                        match tokio::task::spawn_blocking(move || Producer::new(&kc, &topic, epoch))
                            .await?
                        {
                            Ok(p) => Some(Arc::new(p)),
                            Err(e) => {
                                tokio::task::spawn_blocking(move || ingest.stop()).await?;
                                return Err(e.into());
                            }
                        }
                    }
                };
                (Some(ingest), producer.map_or(Sink::Off, Sink::Kafka))
            }
            None => (
                None,
                Sink::Local {
                    fanout: fanout.clone(),
                    backpressure: config.publish.backpressure,
                },
            ),
        };
        let lifecycle = Arc::new(Lifecycle::new(ingest.as_ref().map(|i| i.status().clone())));
        let mut streams = Streams::new(
            fanout.clone(),
            lifecycle.clone(),
            stream::Settings {
                retry: config.streams.retry,
                coalesce: Coalesce {
                    always: config.streams.write_coalesce,
                    busy: config.streams.write_coalesce_busy,
                },
                account: config.metrics,
                access_log: config.log.access,
            },
        );
        if let Some(ingest) = &ingest {
            streams = streams.with_catchup(ingest.catchup().clone());
        }
        let streams = Arc::new(streams);
        let cap = Arc::new(ConnectionCap::new(max_connections));
        let auth = Arc::new(config.auth.clone());
        let cors = Arc::new(config.cors.clone());
        let limits = config.limits;
        let per_ip = Arc::new(PerIp::new(limits.connections_per_ip));
        let proxies = Arc::new(config.proxies.clone());
        let api = Arc::new(Api {
            subscribe: Subscribe {
                streams: streams.clone(),
                auth: auth.clone(),
                cors: cors.clone(),
                max_per_user: limits.streams_per_user,
                per_ip: per_ip.clone(),
                proxies: proxies.clone(),
            },
            publish: Publish {
                sink,
                auth,
                publishers: Publishers::new(limits.publish_rate, limits.publish_bytes_rate),
                proxies: proxies.clone(),
                max_body: config.publish.max_body,
                body_timeout: config.server.header_read_timeout,
            },
            health: Health {
                lifecycle: lifecycle.clone(),
                metrics: metrics.clone(),
                fanout,
                connections: cap.clone(),
                refreshed: Default::default(),
            },
            admin: crate::http::admin::Admin {
                token: config.server.admin_token.clone(),
                streams: streams.clone(),
                connections: cap.clone(),
                retry: config.streams.retry,
                body_timeout: config.server.header_read_timeout,
            },
            cors,
        });
        Ok(Self {
            api,
            streams,
            lifecycle,
            cap,
            admin_cap: Arc::new(ConnectionCap::new(crate::server::ADMIN_CONNECTIONS)),
            limits: Arc::new(ConnectLimits {
                per_ip,
                proxies,
                rate: limits.connect_rate.map(|r| Bucket::new(r, r.max(1.0))),
            }),
            http: Arc::new(HttpSettings {
                header_read_timeout: config.server.header_read_timeout,
                idle_timeout: config.server.idle_timeout,
                max_header_bytes: config.server.max_header_bytes,
                write_timeout: config.server.write_timeout,
                fast_path: config.server.sse_fast_path,
                own_h2: config.server.own_http2,
                tls: config.server.tls.clone(),
                tls_own_records: config.server.tls_own_records,
                api_runtimes,
            }),
            metrics,
            ingest,
            epoch,
        })
    }

    /// What an accept loop for `routes` shares with its connections.
    pub(crate) fn serve(
        &self,
        routes: Routes,
        stop_accept: &CancellationToken,
        graceful: &CancellationToken,
        tracker: &mpsc::Sender<()>,
    ) -> Serve {
        Serve {
            api: self.api.clone(),
            routes,
            cap: if routes == Routes::Admin {
                self.admin_cap.clone()
            } else {
                self.cap.clone()
            },
            limits: self.limits.clone(),
            http: self.http.clone(),
            stop_accept: stop_accept.clone(),
            graceful: graceful.clone(),
            tracker: tracker.clone(),
        }
    }
}

/// This run's id epoch: its start time in ms, shifted, with 16 random bits
/// below (seeded by the OS), so two processes started in the same
/// millisecond never share an id space (see `sse::id`).
fn run_epoch() -> u64 {
    use std::hash::BuildHasher;
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let random = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    (ms << 16) | (random & 0xffff)
}

/// Starts serving on listeners the caller bound. In Kafka mode, ingest is
/// started (and the topics checked) before anything is served; a failure
/// there is returned as an error.
pub async fn start_on(
    config: Config,
    listener: TcpListener,
    admin: Option<TcpListener>,
    max_connections: u64,
) -> Result<Running, StartError> {
    let mut node = Node::build(&config, max_connections).await?;
    let stop = CancellationToken::new();
    let housekeeping = tasks::spawn(&config, &node.streams, node.metrics.clone(), &stop);

    let stop_accept = CancellationToken::new();
    let graceful = CancellationToken::new();
    let (tracker, all_closed) = mpsc::channel::<()>(1);
    let addr = listener.local_addr()?;
    let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
    let main_routes = if admin.is_some() {
        Routes::Api
    } else {
        Routes::All
    };
    let mut accepts = vec![tokio::spawn(server::accept_loop(
        listener,
        node.serve(main_routes, &stop_accept, &graceful, &tracker),
    ))];
    if let Some(admin) = admin {
        accepts.push(tokio::spawn(server::accept_loop(
            admin,
            node.serve(Routes::Admin, &stop_accept, &graceful, &tracker),
        )));
    }
    drop(tracker);

    node.lifecycle.set(Phase::Serving);
    tracing::info!(
        %addr,
        admin = %OrNone(admin_addr),
        max_connections = node.cap.max(),
        epoch = format_args!("{:x}", node.epoch),
        "herald serving"
    );

    let drain = drain::Drain {
        lifecycle: node.lifecycle.clone(),
        fanout: node.streams.fanout.clone(),
        stop_accept,
        accepts,
        housekeeping,
        graceful,
        all_closed,
        ingest: node.ingest.take(),
        shutdown: config.shutdown,
        retry: config.streams.retry,
    };
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            drain.run().await;
        })
    };

    Ok(Running {
        addr,
        admin_addr,
        api: node.api,
        cap: node.cap,
        stop,
        task,
    })
}

/// Runs until `signal` resolves, then drains. For `main`.
pub async fn run(
    config: Config,
    max_connections: u64,
    signal: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let running = start(config, max_connections).await?;
    signal.await;
    running.shutdown();
    running.stopped().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_runs_started_together_get_different_epochs() {
        let (a, b) = (super::run_epoch(), super::run_epoch());
        assert_ne!(a, b, "the random bits differ");
        assert_eq!(
            a >> 16 >> 8,
            b >> 16 >> 8,
            "the same start time (to 256 ms)"
        );
        let id = crate::sse::EventId::Local { epoch: a, seq: 7 };
        assert_eq!(id.to_string().parse::<crate::sse::EventId>(), Ok(id));
    }
}
