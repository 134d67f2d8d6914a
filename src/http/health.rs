//! `/healthz` (the process is up), `/readyz` (it is serving: listeners bound,
//! not draining, Kafka reachable) and `/metrics` (Prometheus text; gauges
//! computed here, at scrape time, so nothing on the hot path maintains them).

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;

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
}

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
        let registry = self.fanout.registry();
        metrics::counter!(m::EVENTS_DELIVERED).absolute(registry.delivered());
        m::sample_process();
        metrics::gauge!(m::CONNECTIONS_OPEN).set(registry.connections() as f64);
        metrics::gauge!(m::HTTP_CONNECTIONS_OPEN).set(self.connections.in_use() as f64);
        let (events, bytes) = self.fanout.replay_len();
        metrics::gauge!(m::REPLAY_EVENTS).set(events as f64);
        metrics::gauge!(m::REPLAY_BYTES).set(bytes as f64);
        let body = handle.render();
        response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(body),
        )
    }
}
