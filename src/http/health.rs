//! `/healthz` (the process is up), `/readyz` (it is serving: listeners bound,
//! not draining) and `/metrics` (Prometheus text; gauges computed here, at
//! scrape time, so nothing on the hot path maintains them).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};

use crate::metrics as m;

use super::{response, text, AppState, Body};

pub(super) fn healthz() -> Response<Body> {
    text(StatusCode::OK, "ok\n")
}

pub(super) fn readyz(state: &Arc<AppState>) -> Response<Body> {
    if state.draining.load(Ordering::Relaxed) {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n")
    } else if !state.ready.load(Ordering::Relaxed) {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready: starting\n")
    } else if state.ingest.as_ref().is_some_and(|i| !i.connected()) {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: Kafka is unreachable (open streams are still served)\n",
        )
    } else {
        text(StatusCode::OK, "ready\n")
    }
}

pub(super) fn metrics(state: &Arc<AppState>) -> Response<Body> {
    let Some(handle) = &state.metrics else {
        return text(
            StatusCode::NOT_FOUND,
            "metrics are disabled (--metrics false)\n",
        );
    };
    let registry = state.fanout.registry();
    metrics::counter!(m::EVENTS_DELIVERED).absolute(registry.delivered());
    m::sample_process();
    metrics::gauge!(m::CONNECTIONS_OPEN).set(registry.connections() as f64);
    let in_use = state.max_connections as usize - state.permits.available_permits();
    metrics::gauge!(m::HTTP_CONNECTIONS_OPEN).set(in_use as f64);
    let (events, bytes) = state.fanout.replay_len();
    metrics::gauge!(m::REPLAY_EVENTS).set(events as f64);
    metrics::gauge!(m::REPLAY_BYTES).set(bytes as f64);
    let body = handle.render();
    response(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(body),
    )
}
