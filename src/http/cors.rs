//! CORS for pages on other origins (`--cors-origins`, `--cors-credentials`).
//!
//! - A request whose `Origin` is allowed gets `Access-Control-Allow-Origin`
//!   (the origin itself, or `*` when any origin is allowed and credentials
//!   are off), `Vary: Origin`, `Access-Control-Allow-Credentials: true` when
//!   enabled, and `Access-Control-Expose-Headers` for herald's own header.
//! - A preflight (`OPTIONS` with `Access-Control-Request-Method`) from an
//!   allowed origin gets 204 with the methods and headers herald accepts;
//!   from any other origin a 403 saying so.
//! - A request from an origin not allowed gets no CORS headers: the browser
//!   then keeps the response from the page.
//!
//! This is the only code that writes CORS headers, for every transport.

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use crate::config::Cors;
use crate::sse::frame::RESUMED_AFTER_HEADER;

use super::{json_error, Body};

/// Request headers a page may send.
const ALLOW_HEADERS: &str = "authorization, content-type, last-event-id, cache-control";
/// How long a browser may cache a preflight answer (seconds).
const MAX_AGE: &str = "600";

// === impl Cors ===

impl Cors {
    /// Whether CORS is configured at all.
    pub fn enabled(&self) -> bool {
        !self.origins.is_empty()
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if it is allowed.
    fn allowed<'a>(&self, origin: Option<&'a [u8]>) -> Option<&'a str> {
        let origin = std::str::from_utf8(origin?).ok()?;
        if self.origins.iter().any(|o| o == origin) {
            Some(origin)
        } else if self.origins.iter().any(|o| o == "*") {
            // `*` is refused with credentials at startup.
            Some("*")
        } else {
            None
        }
    }

    /// Adds the CORS headers to `headers` when `origin` is allowed (and
    /// they are not there yet).
    pub(crate) fn apply(&self, origin: Option<&[u8]>, headers: &mut HeaderMap) {
        if !self.enabled() || headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
            return;
        }
        let Some(allow) = self.allowed(origin) else {
            return;
        };
        let Ok(allow) = HeaderValue::from_str(allow) else {
            return;
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        headers.append(header::VARY, HeaderValue::from_static("origin"));
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(RESUMED_AFTER_HEADER),
        );
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// Answers an `OPTIONS` request on an API route.
    pub(crate) fn preflight(&self, origin: Option<&[u8]>, methods: &'static str) -> Response<Body> {
        let Some(_) = origin else {
            let mut r = super::text(StatusCode::NO_CONTENT, "");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(methods));
            return r;
        };
        if self.allowed(origin).is_none() {
            let shown = origin.map(String::from_utf8_lossy).unwrap_or_default();
            let why = if self.origins.is_empty() {
                format!(
                    "cross-origin requests are not enabled (origin {shown:?}); see --cors-origins"
                )
            } else {
                format!("origin {shown:?} is not in --cors-origins")
            };
            return json_error(StatusCode::FORBIDDEN, &why);
        }
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        self.apply(origin, h);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(methods),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE),
        );
        r
    }
}
