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

use http::{header, HeaderValue, Method, Response, StatusCode};

use crate::config::Cors;

use super::{json_error, Body};

/// Request headers a page may send.
const ALLOW_HEADERS: &str = "authorization, content-type, last-event-id, cache-control";
/// How long a browser may cache a preflight answer (seconds).
const MAX_AGE: &str = "600";

/// The `Access-Control-Allow-Origin` value for `origin`, if it is allowed.
pub(crate) fn allowed_origin(cors: &Cors, origin: Option<&[u8]>) -> Option<String> {
    let origin = std::str::from_utf8(origin?).ok()?;
    if cors.origins.iter().any(|o| o == origin) {
        Some(origin.to_owned())
    } else if cors.origins.iter().any(|o| o == "*") {
        // `*` is refused with credentials at startup.
        Some("*".to_owned())
    } else {
        None
    }
}

/// The CORS response header lines (each ending in CRLF) for an allowed
/// origin: for the HTTP/1.1 fast path, which writes its head itself.
pub(crate) fn header_lines(cors: &Cors, allow: &str) -> String {
    let mut s = format!(
        "access-control-allow-origin: {allow}\r\nvary: origin\r\naccess-control-expose-headers: {}\r\n",
        super::subscribe::RESUMED_AFTER_HEADER
    );
    if cors.credentials {
        s.push_str("access-control-allow-credentials: true\r\n");
    }
    s
}

/// Adds the CORS headers to `resp` when `origin` is allowed.
pub(crate) fn apply(cors: &Cors, origin: Option<&[u8]>, resp: &mut Response<Body>) {
    let Some(allow) = allowed_origin(cors, origin) else {
        return;
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&allow) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.append(header::VARY, HeaderValue::from_static("origin"));
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(super::subscribe::RESUMED_AFTER_HEADER),
    );
    if cors.credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// Answers an `OPTIONS` request on an API route.
pub(crate) fn preflight(
    cors: &Cors,
    origin: Option<&[u8]>,
    methods: &'static str,
) -> Response<Body> {
    let Some(_) = origin else {
        let mut r = super::text(StatusCode::NO_CONTENT, "");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(methods));
        return r;
    };
    if allowed_origin(cors, origin).is_none() {
        let shown = origin.map(String::from_utf8_lossy).unwrap_or_default();
        let why = if cors.origins.is_empty() {
            format!("cross-origin requests are not enabled (origin {shown:?}); see --cors-origins")
        } else {
            format!("origin {shown:?} is not in --cors-origins")
        };
        return json_error(StatusCode::FORBIDDEN, &why);
    }
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    apply(cors, origin, &mut r);
    let h = r.headers_mut();
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

/// Whether `m` is a preflight's method.
pub(crate) fn is_options(m: &Method) -> bool {
    m == Method::OPTIONS
}
