//! The router. Endpoints and their answers:
//!
//! | route | method | answers |
//! |---|---|---|
//! | `/api/sse/subscribe/{userId}` | GET, HEAD | 200 event stream (see `subscribe`); 400 bad user id, topic, `Last-Event-ID` or a duplicated header; 401/403 auth; 429 per-user limit; 503 shutting down |
//! | `/api/publish` | POST | 200 `{"id"}` / `{"ids"}`; 400 bad JSON or field; 401/403 auth; 413 body too large; 415 not JSON; 429 publisher limits; 503 behind on delivery, or Kafka did not acknowledge |
//! | `/api/...` | OPTIONS | 204 CORS preflight; 403 origin not allowed |
//! | `/` | GET | 200 the demo page (embedded) |
//! | `/healthz` | GET | 200 while the process runs |
//! | `/readyz` | GET | 200 when serving; 503 while starting or draining |
//! | `/metrics` | GET | 200 Prometheus text |
//!
//! Anything else is 404; a known path with another method is 405 with an
//! `allow` header. Every error is JSON `{"error": "..."}` saying what was
//! wrong (the refusals before HTTP in `server` too); `/healthz`, `/readyz`
//! and `/metrics` answer plain text. When an admin listener is
//! configured, the main listener serves only the API routes and the admin
//! listener only health and metrics ([`Routes`]).
//!
//! Subscribe requests reach [`subscribe::Subscribe::admit`] from here (hyper:
//! HTTP/1.1 with the fast path off, HTTP/2 with `--own-http2 false`;
//! herald's HTTP/2 server, [`h2`], for every request it reads) or from
//! herald's own HTTP/1.1 writer ([`h1`]); every transport shares one
//! admission and one stream core.

pub(crate) mod admin;
mod body;
pub(crate) mod cors;
pub(crate) mod h1;
pub(crate) mod h2;
mod health;
pub(crate) mod publish;
pub(crate) mod subscribe;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};

use crate::abort::Abort;
use crate::config::Cors;

pub(crate) use body::{Body, BodyError, RequestBody};
pub(crate) use health::Health;

/// Every HTTP endpoint, each with what it uses.
#[derive(Debug)]
pub(crate) struct Api {
    pub(crate) subscribe: subscribe::Subscribe,
    pub(crate) publish: publish::Publish,
    pub(crate) health: Health,
    pub(crate) admin: admin::Admin,
    pub(crate) cors: Arc<Cors>,
}

/// The demo page served at `/`: subscribes with the seed page's code,
/// shows events, ids, types and reconnects, and publishes.
const DEMO_PAGE: &str = include_str!("assets/demo.html");

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Routes {
    /// Everything (no admin listener configured).
    All,
    /// API only (an admin listener serves the rest).
    Api,
    /// Health and metrics only.
    Admin,
}

/// Routes one request; adds CORS headers for allowed origins.
pub(crate) async fn handle(
    api: &Api,
    routes: Routes,
    req: Request<RequestBody>,
    peer: SocketAddr,
    abort: &Arc<Abort>,
) -> Response<Body> {
    let origin = api
        .cors
        .enabled()
        .then(|| req.headers().get(header::ORIGIN).cloned())
        .flatten();
    let mut resp = route(api, routes, req, peer, abort).await;
    api.cors
        .apply(origin.as_ref().map(|v| v.as_bytes()), resp.headers_mut());
    resp
}

async fn route(
    api: &Api,
    routes: Routes,
    req: Request<RequestBody>,
    peer: SocketAddr,
    abort: &Arc<Abort>,
) -> Response<Body> {
    let path = req.uri().path();
    let serves_api = routes != Routes::Admin;
    if serves_api && req.method() == Method::OPTIONS {
        let origin = req.headers().get(header::ORIGIN).map(|v| v.as_bytes());
        if path.starts_with(subscribe::PREFIX) {
            return api.cors.preflight(origin, "GET, HEAD, OPTIONS");
        }
        if path == publish::PATH {
            return api.cors.preflight(origin, "POST, OPTIONS");
        }
    }
    let admin = routes != Routes::Api;
    if serves_api {
        if path.starts_with(subscribe::PREFIX) {
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return method_not_allowed(req.method(), "GET");
            }
            let (parts, _body) = req.into_parts();
            return match api.subscribe.admit(&parts, peer, abort, false) {
                subscribe::Admission::Stream(head, stream) => {
                    head.map(|()| Body::Sse(Box::new(stream)))
                }
                subscribe::Admission::Answer(resp) => resp,
            };
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
            return api.publish.handle(req, peer).await;
        }
    }
    // The admin API: on the admin listener only.
    if routes == Routes::Admin && path.starts_with(admin::PREFIX) {
        return api.admin.handle(req).await;
    }
    if admin {
        let known = matches!(path, "/healthz" | "/readyz" | "/metrics");
        if known && req.method() != Method::GET && req.method() != Method::HEAD {
            return method_not_allowed(req.method(), "GET");
        }
        match path {
            "/healthz" => return health::healthz(),
            "/readyz" => return api.health.readyz(),
            "/metrics" => return api.health.metrics(),
            _ => {}
        }
    }
    let shown: String = path.chars().take(200).collect();
    json_error(StatusCode::NOT_FOUND, &format!("no route for {shown}"))
}

fn method_not_allowed(method: &Method, allow: &'static str) -> Response<Body> {
    let mut resp = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method {method} is not allowed here; use {allow}"),
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
