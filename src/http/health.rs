//! `/healthz` (the process is up), `/readyz` (it is serving: listeners bound,
//! not draining, Kafka reachable) and `/metrics` (Prometheus text).
//!
//! The gauges that walk every stream (written frames, open streams) or the
//! process's file descriptors are computed at scrape time, so nothing on the
//! hot path maintains them, but at most once per [`GAUGE_REFRESH`]: a
//! scrape's cost does not grow with the number of streams, however often
//! `/metrics` is asked for (it is unauthenticated on the main listener
//! unless `--admin-listen` moves it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::Mutex;

use crate::fanout::Fanout;
use crate::lifecycle::Lifecycle;
use crate::metrics as m;
use crate::server::ConnectionCap;

use super::{response, text, Body};

/// What health and metrics read.
#[derive(Debug)]
pub(crate) struct Health {
    pub(crate) lifecycle: Arc<Lifecycle>,
    /// `None` with `--metrics false`.
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) fanout: Arc<Fanout>,
    pub(crate) connections: Arc<ConnectionCap>,
    /// When the gauges were last computed.
    pub(crate) refreshed: Mutex<Option<Instant>>,
}

/// The computed gauges are at most this old.
pub(crate) const GAUGE_REFRESH: Duration = Duration::from_secs(1);

pub(super) fn healthz() -> Response<Body> {
    text(StatusCode::OK, "ok\n")
}

impl Health {
    pub(super) fn readyz(&self) -> Response<Body> {
        match self.lifecycle.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{}\n", why.message()),
            ),
        }
    }

    pub(super) fn metrics(&self) -> Response<Body> {
        let Some(handle) = &self.metrics else {
            return text(
                StatusCode::NOT_FOUND,
                "metrics are disabled (--metrics false)\n",
            );
        };
        self.refresh();
        let body = handle.render();
        response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(body),
        )
    }

    /// Computes the gauges unless they are fresh (one scrape at a time; the
    /// others render what is there).
    fn refresh(&self) {
        let Some(mut last) = self.refreshed.try_lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < GAUGE_REFRESH) {
            return;
        }
        *last = Some(Instant::now());
        let registry = self.fanout.registry();
        metrics::counter!(m::EVENTS_DELIVERED).absolute(registry.delivered());
        m::sample_process();
        metrics::gauge!(m::CONNECTIONS_OPEN).set(registry.connections() as f64);
        metrics::gauge!(m::HTTP_CONNECTIONS_OPEN).set(self.connections.in_use() as f64);
        let (events, bytes) = self.fanout.replay_len();
        metrics::gauge!(m::REPLAY_EVENTS).set(events as f64);
        metrics::gauge!(m::REPLAY_BYTES).set(bytes as f64);
    }
}
