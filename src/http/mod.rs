//! The router. Endpoints and their answers:
//!
//! | route | method | answers |
//! |---|---|---|
//! | `/api/sse/subscribe/{userId}` | GET | 200 event stream; 400 bad user id, topic or `Last-Event-ID`; 503 shutting down |
//! | `/api/publish` | POST | 200 `{"id"}` / `{"ids"}`; 400 bad JSON or field; 413 body too large; 415 not JSON; 503 Kafka did not acknowledge |
//! | `/` | GET | 200 the demo page (embedded) |
//! | `/healthz` | GET | 200 while the process runs |
//! | `/readyz` | GET | 200 when serving; 503 while starting or draining |
//! | `/metrics` | GET | 200 Prometheus text |
//!
//! Anything else is 404; a known path with another method is 405 with an
//! `allow` header. Errors on `/api/*` are JSON `{"error": "..."}`, others are
//! plain text; every one says what was wrong. When an admin listener is
//! configured, the main listener serves only the API routes and the admin
//! listener only health and metrics ([`Routes`]).

mod body;
pub(crate) mod cors;
pub(crate) mod fast;
mod health;
pub mod publish;
pub mod subscribe;

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use metrics::Counter;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Semaphore;

use crate::abort::Abort;
use crate::config::Config;
use crate::fanout::Fanout;
use crate::ingest::{Publisher, Status as IngestStatus};

pub use body::{Body, BodyError, SseBody, Stream};

/// State shared by every request handler.
#[derive(Debug)]
pub struct AppState {
    pub fanout: Arc<Fanout>,
    pub config: Arc<Config>,
    /// True once listeners are up; false again when draining starts.
    pub ready: AtomicBool,
    /// Set when draining starts: no new streams.
    pub draining: AtomicBool,
    /// `None` with `--metrics false`.
    pub metrics: Option<PrometheusHandle>,
    /// Connection-cap semaphore (available permits = free slots).
    pub permits: Arc<Semaphore>,
    pub max_connections: u64,
    pub(crate) rejected: Counter,
    pub(crate) publish_rejected: Counter,
    /// Kafka mode: publishes are produced here (None: embedded mode).
    pub publisher: Option<Arc<Publisher>>,
    /// Kafka mode: ingest health, for readiness.
    pub ingest: Option<Arc<IngestStatus>>,
    /// Streams to end when their token expires.
    pub expiries: crate::expiry::Expiries,
    /// Open connections per client address (`--max-connections-per-ip`).
    pub per_ip: Arc<crate::guard::PerIp>,
    /// New connections per second (`--max-connect-rate`).
    pub connect_rate: Option<crate::guard::Bucket>,
    /// Per-publisher request and byte rates.
    pub publishers: crate::guard::Publishers,
}

/// The demo page served at `/`: subscribes with the seed page's code,
/// shows events, ids, types and reconnects, and publishes.
const DEMO_PAGE: &str = include_str!("assets/demo.html");

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Everything (no admin listener configured).
    All,
    /// API only (an admin listener serves the rest).
    Api,
    /// Health and metrics only.
    Admin,
}

/// Routes one request; adds CORS headers for allowed origins.
pub async fn handle(
    state: &Arc<AppState>,
    routes: Routes,
    req: Request<Incoming>,
    peer: SocketAddr,
    abort: &Arc<Abort>,
) -> Response<Body> {
    let cors = &state.config.cors;
    let origin = (!cors.origins.is_empty())
        .then(|| req.headers().get(header::ORIGIN).cloned())
        .flatten();
    let mut resp = route(state, routes, req, peer, abort).await;
    if origin.is_some()
        && !resp
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    {
        cors::apply(cors, origin.as_ref().map(|v| v.as_bytes()), &mut resp);
    }
    resp
}

async fn route(
    state: &Arc<AppState>,
    routes: Routes,
    req: Request<Incoming>,
    peer: SocketAddr,
    abort: &Arc<Abort>,
) -> Response<Body> {
    let path = req.uri().path();
    let api = routes != Routes::Admin;
    if api && cors::is_options(req.method()) {
        let origin = req.headers().get(header::ORIGIN).map(|v| v.as_bytes());
        if path.starts_with(subscribe::PREFIX) {
            return cors::preflight(&state.config.cors, origin, "GET, HEAD, OPTIONS");
        }
        if path == publish::PATH {
            return cors::preflight(&state.config.cors, origin, "POST, OPTIONS");
        }
    }
    let admin = routes != Routes::Api;
    if api {
        if let Some(rest) = path.strip_prefix(subscribe::PREFIX) {
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return method_not_allowed(req.method(), "GET");
            }
            let rest = rest.to_owned();
            return subscribe::handle(state, &req, &rest, peer, abort);
        }
        if path == "/" || path == "/index.html" {
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return method_not_allowed(req.method(), "GET");
            }
            return response(
                StatusCode::OK,
                "text/html; charset=utf-8",
                Bytes::from_static(DEMO_PAGE.as_bytes()),
            );
        }
        if path == publish::PATH {
            if req.method() != Method::POST {
                return method_not_allowed(req.method(), "POST");
            }
            return publish::handle(state, req, peer).await;
        }
    }
    if admin {
        let known = matches!(path, "/healthz" | "/readyz" | "/metrics");
        if known && req.method() != Method::GET && req.method() != Method::HEAD {
            return method_not_allowed(req.method(), "GET");
        }
        match path {
            "/healthz" => return health::healthz(),
            "/readyz" => return health::readyz(state),
            "/metrics" => return health::metrics(state),
            _ => {}
        }
    }
    let shown: String = path.chars().take(200).collect();
    text(StatusCode::NOT_FOUND, format!("no route for {shown}\n"))
}

fn method_not_allowed(method: &Method, allow: &'static str) -> Response<Body> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed here; use {allow}\n"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    resp
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    response(status, "text/plain; charset=utf-8", body.into())
}

/// A JSON error response: `{"error": message}`.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": message }).to_string();
    response(status, "application/json", Bytes::from(body))
}

pub(crate) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Body> {
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}
