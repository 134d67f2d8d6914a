//! Wiring: owns startup order and shutdown order.
//!
//! Startup: metrics recorder, registry and dispatcher (with its replay
//! buffer), Kafka ingest and publisher (Kafka mode; topics checked first),
//! heartbeat task, listeners and accept loops, then readiness.
//!
//! Shutdown, each stage bounded by the overall deadline:
//! 1. readiness off, new streams refused (503), accepting stops;
//! 2. every SSE stream is ended, spread over the drain period, each with a
//!    `retry:` hint, so clients do not all reconnect in the same instant;
//! 3. connections are told to wind down (keep-alive off) and awaited;
//! 4. Kafka ingest stops; whatever remains at the deadline is dropped with
//!    the runtime.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::fanout::{self, Fanout};
use crate::http::{AppState, Routes};
use crate::ingest::{Ingest, Publisher};
use crate::metrics as m;
use crate::registry::Registry;
use crate::server::{self, Serve};

/// A started server. Dropping it does not stop it: call [`Running::shutdown`]
/// and await [`Running::stopped`] (tests use a fixture that does both).
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
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
}

/// Binds the configured listeners and starts serving; returns at once.
pub async fn start(config: Config, max_connections: u64) -> std::io::Result<Running> {
    let listener = server::bind(config.listen, config.reuse_port)?;
    let admin = match config.admin_listen {
        Some(a) => Some(server::bind(a, config.reuse_port)?),
        None => None,
    };
    start_on(config, listener, admin, max_connections).await
}

/// Starts serving on listeners the caller bound. In Kafka mode, ingest is
/// started (and the topics checked) before anything is served; a failure
/// there is returned as an error.
pub async fn start_on(
    config: Config,
    listener: TcpListener,
    admin: Option<TcpListener>,
    max_connections: u64,
) -> std::io::Result<Running> {
    let handle = config.metrics.then(m::install);
    let config = Arc::new(config);
    let registry = Arc::new(Registry::new(config.shards));
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let fanout = Arc::new(Fanout::new(registry, epoch, config.queue, config.replay));
    let (ingest, publisher) = match config.kafka.clone() {
        Some(kafka) => {
            let f = fanout.clone();
            let age = config.replay.max_age;
            let k = kafka.clone();
            let ingest = tokio::task::spawn_blocking(move || Ingest::start(&k, age, f))
                .await
                .map_err(std::io::Error::other)?
                .map_err(std::io::Error::other)?;
            let publisher = Publisher::new(&kafka).map_err(std::io::Error::other)?;
            (Some(ingest), Some(Arc::new(publisher)))
        }
        None => (None, None),
    };
    let max_connections = max_connections.clamp(1, Semaphore::MAX_PERMITS as u64);
    let permits = Arc::new(Semaphore::new(max_connections as usize));
    let state = Arc::new(AppState {
        fanout: fanout.clone(),
        config: config.clone(),
        ready: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        metrics: handle.clone(),
        permits: permits.clone(),
        max_connections,
        rejected: metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => "limit"),
        publish_rejected: metrics::counter!(m::PUBLISH_REJECTED),
        publisher,
        ingest: ingest.as_ref().map(|i| i.status().clone()),
        expiries: crate::expiry::Expiries::default(),
        per_ip: Arc::new(crate::guard::PerIp::new(config.limits.connections_per_ip)),
        connect_rate: (config.limits.connect_rate > 0.0).then(|| {
            let r = config.limits.connect_rate;
            crate::guard::Bucket::new(r, r.max(1.0))
        }),
        publishers: crate::guard::Publishers::new(
            config.limits.publish_rate,
            config.limits.publish_bytes_rate,
        ),
    });

    let stop = CancellationToken::new();
    let stop_accept = CancellationToken::new();
    let graceful = CancellationToken::new();
    let (tracker, mut all_closed) = mpsc::channel::<()>(1);

    let addr = listener.local_addr()?;
    let admin_addr = admin.as_ref().map(TcpListener::local_addr).transpose()?;
    let serve = |routes| Serve {
        state: state.clone(),
        routes,
        permits: permits.clone(),
        max_connections,
        stop_accept: stop_accept.clone(),
        graceful: graceful.clone(),
        tracker: tracker.clone(),
        fast_path: config.sse_fast_path,
    };
    let main_routes = if admin.is_some() {
        Routes::Api
    } else {
        Routes::All
    };
    let mut accepts = vec![tokio::spawn(server::accept_loop(
        listener,
        serve(main_routes),
    ))];
    if let Some(admin) = admin {
        accepts.push(tokio::spawn(server::accept_loop(
            admin,
            serve(Routes::Admin),
        )));
    }
    drop(tracker);

    // Heartbeats and metrics upkeep: one task for all connections.
    let ticker = {
        let fanout = fanout.clone();
        let stop = stop.clone();
        let every = config.heartbeat;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        fanout.heartbeat();
                        if let Some(h) = &handle {
                            h.run_upkeep();
                        }
                    }
                }
            }
        })
    };

    // Streams whose token expired are ended once a second.
    let expirer = config.auth.streams_protected().then(|| {
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        let open = state.fanout.registry().connections();
                        let ended = state.expiries.expire_due(crate::auth::now_secs(), open);
                        if ended > 0 {
                            tracing::debug!(ended, "streams ended at their token's expiry");
                        }
                    }
                }
            }
        })
    });

    state.ready.store(true, Ordering::Relaxed);
    tracing::info!(%addr, admin = ?admin_addr, max_connections, epoch = format_args!("{epoch:x}"), "herald serving");

    let task = {
        let state = state.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            let deadline = tokio::time::Instant::now() + config.shutdown_deadline;
            // 1. Refuse new work.
            state.ready.store(false, Ordering::Relaxed);
            state.draining.store(true, Ordering::SeqCst);
            stop_accept.cancel();
            for a in accepts {
                let _ = a.await;
            }
            ticker.abort();
            if let Some(e) = expirer {
                e.abort();
            }
            // 2. End every stream, spread over the drain period.
            let registry = state.fanout.registry().clone();
            let retry_ms = config.retry.as_millis() as u64;
            let streams = tokio::time::timeout_at(
                deadline,
                fanout::close_all(&registry, config.shutdown_drain, retry_ms),
            )
            .await
            .unwrap_or(0);
            // 3. Connections wind down; wait for the last one.
            graceful.cancel();
            let clean = tokio::time::timeout_at(deadline, all_closed.recv())
                .await
                .is_ok();
            // 4. Stop ingest.
            if let Some(ingest) = ingest {
                let _ = tokio::task::spawn_blocking(move || ingest.stop()).await;
            }
            if clean {
                tracing::info!(streams, "drained: all connections closed");
            } else {
                tracing::warn!(
                    streams,
                    remaining = registry.connections(),
                    "drain deadline reached with connections still open"
                );
            }
        })
    };

    Ok(Running {
        addr,
        admin_addr,
        state,
        stop,
        task,
    })
}

/// Runs until `signal` resolves, then drains. For `main`.
pub async fn run(
    config: Config,
    max_connections: u64,
    signal: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let running = start(config, max_connections).await?;
    signal.await;
    running.shutdown();
    running.stopped().await;
    Ok(())
}
