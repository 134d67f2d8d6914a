//! The admin API, on `--admin-listen` only, behind `--admin-token` (a
//! Bearer token, compared in constant time). Every action is logged (target
//! `herald::admin`) and counted (`herald_admin_actions_total{action}`).
//!
//! - `GET /admin/status`: this node's streams, connections, users and phase.
//! - `POST /admin/users/{user}/close` `{"reason": "logout", "block_seconds": 0}`:
//!   ends every stream of the user with a `herald-closed` event carrying the
//!   reason; with `block_seconds`, the user's new streams are refused (403)
//!   that long.
//! - `POST /admin/maintenance` `{"seconds": 600, "message": "..."}`: new
//!   streams are refused (503 with `Retry-After`) that long; open streams go
//!   on. `DELETE /admin/maintenance` ends it early.
//! - `POST /admin/drain` `{"rate": 500}`: the node stops being ready and
//!   refuses new streams, then ends its streams at `rate` per second (each
//!   with a `retry:` hint, so browsers reconnect to other nodes) without a
//!   reconnect stampede; the process keeps running (SIGTERM still ends it).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use metrics::counter;
use serde::Deserialize;
use serde_json::json;

use super::body::{read_limited, ReadError, RequestBody};
use super::{json_error, response, Body};
use crate::event::Name;
use crate::fanout;
use crate::lifecycle::Phase;
use crate::metrics as m;
use crate::server::ConnectionCap;
use crate::stream::Streams;

/// Where the admin API lives.
pub(crate) const PREFIX: &str = "/admin/";
/// Largest request body the admin API reads.
const MAX_BODY: usize = 4096;
/// Longest a reason or message may be.
const MAX_TEXT: usize = 256;
/// Longest block or maintenance.
const MAX_PERIOD: Duration = Duration::from_secs(7 * 24 * 3600);

/// The admin API's state.
#[derive(Debug)]
pub(crate) struct Admin {
    /// `--admin-token`; `None`: the API answers 404.
    pub(crate) token: Option<Arc<[u8]>>,
    pub(crate) streams: Arc<Streams>,
    pub(crate) connections: Arc<ConnectionCap>,
    /// The `retry:` hint drained streams get.
    pub(crate) retry: Duration,
    /// How long a body may take to arrive.
    pub(crate) body_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Close {
    reason: String,
    #[serde(default)]
    block_seconds: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Maintenance {
    seconds: u64,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Drain {
    rate: f64,
}

/// An action, for its log line and counter.
#[derive(Debug, Clone, Copy)]
enum Action {
    CloseUser,
    Maintenance,
    MaintenanceEnd,
    Drain,
}

impl Action {
    const ALL: [Action; 4] = [
        Action::CloseUser,
        Action::Maintenance,
        Action::MaintenanceEnd,
        Action::Drain,
    ];

    fn label(self) -> &'static str {
        match self {
            Action::CloseUser => "close_user",
            Action::Maintenance => "maintenance",
            Action::MaintenanceEnd => "maintenance_end",
            Action::Drain => "drain",
        }
    }

    fn count(self) {
        counter!(m::ADMIN_ACTIONS, "action" => self.label()).increment(1);
    }
}

/// Registers the action counter's series at zero.
pub(crate) fn describe() {
    for a in Action::ALL {
        counter!(m::ADMIN_ACTIONS, "action" => a.label()).increment(0);
    }
}

impl Admin {
    pub(crate) async fn handle(&self, req: Request<RequestBody>) -> Response<Body> {
        let Some(token) = &self.token else {
            return json_error(
                StatusCode::NOT_FOUND,
                "the admin API is off: start herald with --admin-token",
            );
        };
        if !authorized(&req, token) {
            let mut r = json_error(
                StatusCode::UNAUTHORIZED,
                "the admin API needs Authorization: Bearer <--admin-token>",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"herald-admin\""),
            );
            return r;
        }
        let path = req.uri().path().to_owned();
        let rest = path.strip_prefix(PREFIX).unwrap_or_default();
        match (req.method().clone(), rest) {
            (Method::GET, "status") => self.status(),
            (Method::POST, "maintenance") => match self.body::<Maintenance>(req).await {
                Ok(b) => self.maintenance(b),
                Err(r) => r,
            },
            (Method::DELETE, "maintenance") => {
                self.streams.lifecycle.set_maintenance(None);
                Action::MaintenanceEnd.count();
                tracing::info!(target: "herald::admin", action = "maintenance_end", "maintenance ended");
                ok(json!({ "maintenance": false }))
            }
            (Method::POST, "drain") => match self.body::<Drain>(req).await {
                Ok(b) => self.drain(b),
                Err(r) => r,
            },
            (method, rest) => match rest
                .strip_prefix("users/")
                .and_then(|r| r.strip_suffix("/close"))
            {
                Some(user) if method == Method::POST => {
                    let user = match percent_encoding::percent_decode_str(user).decode_utf8() {
                        Ok(u) => u.into_owned(),
                        Err(_) => return bad("the user id is not UTF-8"),
                    };
                    let Ok(user) = Name::new(&user) else {
                        return bad("not a valid user id");
                    };
                    match self.body::<Close>(req).await {
                        Ok(b) => self.close_user(&user, b),
                        Err(r) => r,
                    }
                }
                _ => json_error(
                    StatusCode::NOT_FOUND,
                    "no such admin action: GET status, POST users/{user}/close, POST or DELETE maintenance, POST drain",
                ),
            },
        }
    }

    fn status(&self) -> Response<Body> {
        let registry = self.streams.fanout().registry();
        let (users, topics) = registry.keys();
        let lifecycle = &self.streams.lifecycle;
        let maintenance = lifecycle.maintenance();
        let phase = match (lifecycle.phase(), &maintenance) {
            (Phase::Starting, _) => "starting",
            (Phase::Draining, _) => "draining",
            (Phase::Serving, Some(_)) => "maintenance",
            (Phase::Serving, None) => "serving",
        };
        ok(json!({
            "phase": phase,
            "streams": registry.connections(),
            "connections": self.connections.in_use(),
            "users": users,
            "topics": topics,
            "maintenance_seconds_left": maintenance.map(|(left, _)| left.as_secs()),
        }))
    }

    fn close_user(&self, user: &Name, b: Close) -> Response<Body> {
        if let Err(e) = text(&b.reason, "reason") {
            return bad(&e);
        }
        let block = match period(b.block_seconds, "block_seconds") {
            Ok(p) => p,
            Err(e) => return bad(&e),
        };
        match self.streams.close_user(user, &b.reason, block) {
            Ok(closed) => {
                Action::CloseUser.count();
                tracing::info!(
                    target: "herald::admin",
                    action = "close_user",
                    user = %user,
                    reason = %b.reason,
                    block_seconds = b.block_seconds,
                    closed,
                    "closed a user's streams"
                );
                ok(
                    json!({ "user": user.as_str(), "closed": closed, "blocked_seconds": b.block_seconds }),
                )
            }
            Err(_) => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "{} users are blocked already; wait for blocks to end",
                    crate::stream::MAX_BLOCKED
                ),
            ),
        }
    }

    fn maintenance(&self, b: Maintenance) -> Response<Body> {
        let message = b.message.unwrap_or_else(|| "try again later".to_owned());
        if let Err(e) = text(&message, "message") {
            return bad(&e);
        }
        let Ok(Some(d)) = period(b.seconds, "seconds") else {
            return bad("seconds must be between 1 and 604800 (a week)");
        };
        self.streams
            .lifecycle
            .set_maintenance(Some((d, Arc::from(message.as_str()))));
        Action::Maintenance.count();
        tracing::info!(target: "herald::admin", action = "maintenance", seconds = b.seconds, message = %message, "maintenance: new streams refused");
        ok(json!({ "maintenance": true, "seconds": b.seconds }))
    }

    fn drain(&self, b: Drain) -> Response<Body> {
        if !(b.rate.is_finite() && b.rate >= 1.0 && b.rate <= 1e6) {
            return bad("rate must be between 1 and 1000000 streams per second");
        }
        if !self.streams.lifecycle.begin_draining() {
            return json_error(StatusCode::CONFLICT, "this node is draining already");
        }
        let registry = self.streams.fanout().registry().clone();
        let streams = registry.connections();
        let spread = Duration::from_secs_f64(streams as f64 / b.rate);
        let retry_ms = self.retry.as_millis() as u64;
        Action::Drain.count();
        tracing::info!(target: "herald::admin", action = "drain", rate = b.rate, streams, seconds = spread.as_secs_f64(), "draining: not ready, new streams refused, open ones ended at the rate");
        tokio::spawn(async move {
            let closed = fanout::close_all(&registry, spread, retry_ms).await;
            tracing::info!(target: "herald::admin", action = "drain", closed, "drain done: every stream ended");
        });
        ok(json!({ "draining": true, "streams": streams, "seconds": spread.as_secs_f64() }))
    }

    /// The request's JSON body as `T`, or the answer to give.
    async fn body<T: serde::de::DeserializeOwned>(
        &self,
        req: Request<RequestBody>,
    ) -> Result<T, Response<Body>> {
        let bytes = read_limited(req.into_body(), MAX_BODY, self.body_timeout)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => json_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("an admin request body is at most {MAX_BODY} bytes"),
                ),
                ReadError::Slow => json_error(
                    StatusCode::REQUEST_TIMEOUT,
                    "the body did not arrive in time",
                ),
                ReadError::Failed(e) => bad(&format!("could not read the body: {e}")),
            })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| bad(&format!("the body is not what this action takes: {e}")))
    }
}

/// Whether the request carries the admin token.
fn authorized<B>(req: &Request<B>, token: &[u8]) -> bool {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|given| crate::auth::constant_time_eq(given, token))
}

/// A reason or message: printable and short.
fn text(s: &str, what: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_TEXT {
        return Err(format!("{what} must be 1 to {MAX_TEXT} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} must not hold control characters"));
    }
    Ok(())
}

/// `seconds` as a period (`None` for 0), at most [`MAX_PERIOD`].
fn period(seconds: u64, what: &str) -> Result<Option<Duration>, String> {
    let d = Duration::from_secs(seconds);
    if d > MAX_PERIOD {
        return Err(format!(
            "{what} is at most {} (a week)",
            MAX_PERIOD.as_secs()
        ));
    }
    Ok((seconds > 0).then_some(d))
}

fn ok(v: serde_json::Value) -> Response<Body> {
    response(
        StatusCode::OK,
        "application/json",
        Bytes::from(v.to_string()),
    )
}

fn bad(msg: &str) -> Response<Body> {
    json_error(StatusCode::BAD_REQUEST, msg)
}
