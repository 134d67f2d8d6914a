//! `GET /api/sse/subscribe/{userId}[?topic=a&topic=b&lastEventId=...]`: the
//! one admission of a subscribe request, for every transport.
//!
//! [`Subscribe::admit`] decides a request from its head alone (method, target,
//! headers: `http::request::Parts`, which herald's HTTP/1.1 writer builds with
//! the same parsers hyper uses) in one order:
//! 1. draining: 503 (reconnect elsewhere);
//! 2. the target and headers ([`Params::parse`]): 400 naming what is wrong;
//! 3. auth (see `auth`): 401 / 403;
//! 4. the per-user stream limit: 429;
//! 5. `HEAD`: the stream's headers, no stream;
//! 6. open (see `stream`): 200 `text/event-stream`.
//!
//! Every answer, refusals included, carries the CORS headers of an allowed
//! origin; every refusal is counted once, here.
//!
//! Header rules: every `Cookie` field is read (HTTP/2 splits cookies into
//! several fields, RFC 9113 §8.2.3); `Authorization` or `Last-Event-ID`
//! given twice is a 400. The resume id is the `Last-Event-ID` header (what
//! browsers send on reconnect), else the `lastEventId` query parameter.
//!
//! The `herald-resumed-after` response header carries the id the stream
//! continues after: equal to the requested id on a clean resume, different
//! after a gap (then the stream starts with a `herald-reset` event).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;

use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use percent_encoding::percent_decode_str;

use crate::abort::Abort;
use crate::auth::{self, Auth, Denied, Sources};
use crate::config::Cors;
use crate::event::Name;
use crate::forwarded::TrustedProxies;
use crate::guard::{Limit, PerIp};
use crate::sse::frame::RESUMED_AFTER_HEADER;
use crate::sse::{EventId, IdError};
use crate::stream::catchup::Refused;
use crate::stream::{Lease, OpenError, OpenRequest, Stream, Streams, Transport};

use super::{json_error, Body};

pub(crate) const PREFIX: &str = "/api/sse/subscribe/";
/// Most `topic` parameters on one stream.
pub(crate) const MAX_TOPICS: usize = 64;

/// What a subscribe request asks for, validated. Borrows the request's
/// header values.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Params<'a> {
    pub(crate) user: Name,
    pub(crate) topics: Vec<Name>,
    /// The id to resume after, or why it could not be read (the stream
    /// then starts with a reset, never a 400).
    pub(crate) resume: Option<Result<EventId, IdError>>,
    /// `since=`: start from this time (µs since the epoch) when there is
    /// no id to resume after.
    pub(crate) since_us: Option<u64>,
    /// The `access_token` query parameter, if any.
    pub(crate) token: Option<String>,
    pub(crate) authorization: Option<&'a [u8]>,
    /// Every `Cookie` field, joined with `; `.
    pub(crate) cookie: Option<Cow<'a, [u8]>>,
}

/// Decides subscribe requests and opens their streams.
#[derive(Debug)]
pub(crate) struct Subscribe {
    pub(crate) streams: Arc<Streams>,
    pub(crate) auth: Arc<Auth>,
    pub(crate) cors: Arc<Cors>,
    /// `--max-streams-per-user`.
    pub(crate) max_per_user: Option<NonZeroUsize>,
    /// `--max-connections-per-ip`, which also counts HTTP/2 streams (each
    /// is as good as a connection to a client) and the streams a trusted
    /// proxy forwards, by client address.
    pub(crate) per_ip: Arc<PerIp>,
    /// `--trusted-proxies`.
    pub(crate) proxies: Arc<TrustedProxies>,
}

/// The decision on a subscribe request.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Stream: the response head (200 and its headers) and the stream.
    Stream(Response<()>, Stream),
    /// Answer with this and serve no stream (a refusal, or `HEAD`).
    Answer(Response<Body>),
}

// === impl Subscribe ===

impl Subscribe {
    /// The one decision on a subscribe request (see the module doc).
    /// `own_writer`: herald's HTTP/1.1 writer serves it (else hyper).
    pub(crate) fn admit(
        &self,
        req: &Parts,
        peer: SocketAddr,
        conn: &Arc<Abort>,
        own_writer: bool,
    ) -> Admission {
        let origin = req.headers.get(header::ORIGIN).map(HeaderValue::as_bytes);
        let answer = |mut resp: Response<Body>| {
            self.cors.apply(origin, resp.headers_mut());
            Admission::Answer(resp)
        };
        if self.streams.lifecycle.draining() {
            return answer(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "herald is shutting down; reconnect to another node",
            ));
        }
        if let Some((left, message)) = self.streams.lifecycle.maintenance() {
            let mut r = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("herald is in maintenance: {message}"),
            );
            let secs = left.as_secs().clamp(1, 3600);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return answer(r);
        }
        let params = match Params::parse(req) {
            Ok(p) => p,
            Err(msg) => return answer(json_error(StatusCode::BAD_REQUEST, &msg)),
        };
        let topics: Vec<&str> = params.topics.iter().map(Name::as_str).collect();
        let sources = Sources {
            authorization: params.authorization,
            cookie: params.cookie.as_deref(),
            query: params.token.as_deref(),
        };
        let grant = match self.auth.subscribe(params.user.as_str(), &topics, sources) {
            Ok(g) => g,
            Err(denied) => {
                denied.count(auth::Endpoint::Subscribe);
                return answer(denied_response(&denied));
            }
        };
        if let Some(reason) = self.streams.blocked(&params.user) {
            return answer(json_error(
                StatusCode::FORBIDDEN,
                &format!("this user's streams were closed by the operator: {reason}"),
            ));
        }
        let too_many = |max: NonZeroUsize| {
            Limit::PerUser.count();
            let mut r = json_error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("this user already has {max} open streams (--max-streams-per-user); close one first"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        };
        if let Some(max) = self.max_per_user {
            // Advisory (HEAD, early answer); the stream itself is counted
            // and refused atomically when it registers.
            if self.streams.fanout.registry().user_streams(&params.user) >= max.get() {
                return answer(too_many(max));
            }
        }
        let mut head = Response::new(());
        let h = head.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        self.cors.apply(origin, h);
        if req.method == Method::HEAD {
            return Admission::Answer(head.map(|()| Body::empty()));
        }
        let h2 = req.version == http::Version::HTTP_2;
        // A trusted proxy's connection was not counted when accepted: its
        // streams are, by the client's address.
        let proxied = self.proxies.contains(peer.ip());
        let peer = self.proxies.client(peer, &req.headers);
        let lease = if h2 || proxied {
            match self.per_ip.acquire(peer.ip()) {
                Some(slot) => slot.map(|s| Box::new(s) as Lease),
                None => {
                    Limit::PerIp.count();
                    let mut r = json_error(
                        StatusCode::TOO_MANY_REQUESTS,
                        &format!(
                            "this address already holds {} connections and HTTP/2 streams (--max-connections-per-ip); close some first",
                            self.per_ip.max()
                        ),
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                    return answer(r);
                }
            }
        } else {
            None
        };
        let opened = match self.streams.open(OpenRequest {
            user: params.user,
            topics: params.topics,
            resume: params.resume,
            since_us: params.since_us,
            expires_at: grant.expires_at,
            peer,
            conn: conn.clone(),
            transport: match (h2, own_writer) {
                (true, _) => Transport::H2,
                (false, true) => Transport::Herald,
                (false, false) => Transport::Hyper,
            },
            max_per_user: self.max_per_user,
            lease,
        }) {
            Ok(o) => o,
            Err(OpenError::Full) => {
                let max = self.max_per_user.unwrap_or(NonZeroUsize::MIN);
                return answer(too_many(max));
            }
            Err(OpenError::CatchUp(refused)) => return answer(catchup_refused(refused)),
        };
        if let Ok(v) = HeaderValue::from_str(&opened.after.to_string()) {
            head.headers_mut().insert(RESUMED_AFTER_HEADER, v);
        }
        Admission::Stream(head, opened.stream)
    }
}

/// 503 (every catch-up slot taken) or 429 (this user's), with
/// `Retry-After`.
fn catchup_refused(refused: Refused) -> Response<Body> {
    let status = match refused {
        Refused::Busy => StatusCode::SERVICE_UNAVAILABLE,
        Refused::PerUser => StatusCode::TOO_MANY_REQUESTS,
    };
    let mut r = json_error(status, &format!("{refused}; retry shortly"));
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    r
}

/// 401 (with `WWW-Authenticate`) or 403, with the reason as JSON.
pub(crate) fn denied_response(denied: &Denied) -> Response<Body> {
    let mut resp = json_error(denied.status(), &denied.to_string());
    if denied.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"herald\""),
        );
    }
    resp
}

// === impl Params ===

impl<'a> Params<'a> {
    /// Validates a subscribe request's target and headers.
    pub(crate) fn parse(req: &'a Parts) -> Result<Self, String> {
        let rest = req.uri.path().strip_prefix(PREFIX).unwrap_or_default();
        Self::from_parts(rest, req.uri.query(), &req.headers)
    }

    /// [`Params::parse`] from the path after [`PREFIX`], the query and the
    /// headers.
    pub(crate) fn from_parts(
        rest: &str,
        query: Option<&str>,
        headers: &'a HeaderMap,
    ) -> Result<Self, String> {
        let Target {
            user,
            topics,
            resume: query_resume,
            since_us,
            token,
        } = parse_target(rest, query)?;
        let authorization = single(headers, "authorization", "Authorization")?;
        let last_event_id = single(headers, "last-event-id", "Last-Event-ID")?;
        let mut cookies = headers.get_all(header::COOKIE).iter();
        let cookie = match (cookies.next(), cookies.next()) {
            (None, _) => None,
            (Some(one), None) => Some(Cow::Borrowed(one.as_bytes())),
            (Some(first), Some(second)) => {
                let mut joined = first.as_bytes().to_vec();
                for c in std::iter::once(second).chain(cookies) {
                    joined.extend_from_slice(b"; ");
                    joined.extend_from_slice(c.as_bytes());
                }
                Some(Cow::Owned(joined))
            }
        };
        // Not text: unreadable (a reset, like any id herald can not read).
        let header = last_event_id.map(|v| {
            std::str::from_utf8(v)
                .ok()
                .filter(|s| s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
                .unwrap_or("\u{0}")
        });
        // The header is what a browser sends on reconnect; it wins. An empty
        // one (a browser that has seen no id yet) does not cancel the query.
        let resume = match header.filter(|h| !h.is_empty()).or(query_resume.as_deref()) {
            Some("") | None => None,
            Some(id) => Some(id.parse::<EventId>()),
        };
        Ok(Params {
            user,
            topics,
            // An id to resume after wins over a time.
            since_us: since_us.filter(|_| resume.is_none()),
            resume,
            token,
            authorization,
            cookie,
        })
    }
}

/// The value of a header that may appear at most once.
fn single<'a>(headers: &'a HeaderMap, name: &str, shown: &str) -> Result<Option<&'a [u8]>, String> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(_), Some(_)) => Err(format!(
            "the {shown} header is given more than once; send it once"
        )),
        (one, _) => Ok(one.map(HeaderValue::as_bytes)),
    }
}

/// What the path and query say.
struct Target {
    user: Name,
    topics: Vec<Name>,
    resume: Option<String>,
    since_us: Option<u64>,
    token: Option<String>,
}

/// The user (path after [`PREFIX`], percent-decoded), topics, `lastEventId`
/// and `access_token` of a subscribe target.
fn parse_target(rest: &str, query: Option<&str>) -> Result<Target, String> {
    if rest.is_empty() || rest.contains('/') {
        return Err("the path must be /api/sse/subscribe/{userId} with a non-empty user id".into());
    }
    let user = percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| "the user id is not valid UTF-8 once percent-decoded".to_owned())?;
    let user = Name::new(&user).map_err(|e| format!("the user id {e}"))?;

    let mut topics = Vec::new();
    let mut query_resume = None;
    let mut since_us = None;
    let mut token = None;
    for (key, value) in query_pairs(query.unwrap_or("")) {
        match key.as_str() {
            "topic" => {
                let v = value.map_err(|_| "a topic is not valid UTF-8".to_owned())?;
                let t = Name::new(&v).map_err(|e| format!("topic {v:?} {e}"))?;
                topics.push(t);
                if topics.len() > MAX_TOPICS {
                    return Err(format!("at most {MAX_TOPICS} topics per stream"));
                }
            }
            "lastEventId" => {
                let v = value.map_err(|_| "lastEventId is not valid UTF-8".to_owned())?;
                query_resume = Some(v);
            }
            "since" => {
                let v = value.map_err(|_| "since is not valid UTF-8".to_owned())?;
                since_us = Some(parse_since(&v)?);
            }
            auth::QUERY_PARAM => {
                token = Some(value.map_err(|_| "access_token is not valid UTF-8".to_owned())?);
            }
            _ => {}
        }
    }
    Ok(Target {
        user,
        topics,
        resume: query_resume,
        since_us,
        token,
    })
}

/// `since=`: an RFC 3339 time (`2026-12-01T10:00:00Z`) or milliseconds
/// since the epoch; µs since the epoch.
fn parse_since(v: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "since {v:?} is neither an RFC 3339 time (2026-12-01T10:00:00Z) nor milliseconds since the epoch"
        )
    };
    if !v.is_empty() && v.len() <= 16 && v.bytes().all(|b| b.is_ascii_digit()) {
        let ms: u64 = v.parse().map_err(|_| bad())?;
        return ms.checked_mul(1000).ok_or_else(bad);
    }
    let t = humantime::parse_rfc3339_weak(v).map_err(|_| bad())?;
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .map_err(|_| bad())
}

/// `application/x-www-form-urlencoded` pairs: `+` is a space, `%XX` decoded.
/// A value that is not UTF-8 after decoding is an `Err(())`.
fn query_pairs(q: &str) -> impl Iterator<Item = (String, Result<String, ()>)> + '_ {
    q.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            percent_decode_str(&s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| ())
        };
        (decode(k).unwrap_or_default(), decode(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(rest: &str, q: Option<&str>) -> Result<Params<'static>, String> {
        static EMPTY: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
        Params::from_parts(rest, q, EMPTY.get_or_init(HeaderMap::new))
    }

    fn with_headers(q: Option<&str>, headers: &[(&str, &str)]) -> Result<Params<'static>, String> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let map: &'static HeaderMap = Box::leak(Box::new(map));
        Params::from_parts("u", q, map)
    }

    #[test]
    fn parses_user_topics_and_resume() {
        let got = p(
            "a%40b.c",
            Some("topic=news&topic=sp+ort&x=1&lastEventId=ff-3"),
        )
        .unwrap();
        assert_eq!(got.user.as_str(), "a@b.c");
        let topics: Vec<_> = got.topics.iter().map(Name::as_str).collect();
        assert_eq!(topics, ["news", "sp ort"]);
        assert_eq!(
            got.resume,
            Some(Ok(EventId::Local {
                epoch: 0xff,
                seq: 3
            }))
        );
    }

    #[test]
    fn header_wins_over_query_and_an_empty_header_does_not_cancel_it() {
        let got = with_headers(Some("lastEventId=1-2"), &[("last-event-id", "1-9")]).unwrap();
        assert_eq!(got.resume, Some(Ok(EventId::Local { epoch: 1, seq: 9 })));
        let got = with_headers(Some("lastEventId=1-2"), &[("last-event-id", "")]).unwrap();
        assert_eq!(got.resume, Some(Ok(EventId::Local { epoch: 1, seq: 2 })));
    }

    #[test]
    fn cookies_are_joined_and_single_headers_refuse_duplicates() {
        let got = with_headers(None, &[("cookie", "a=1"), ("cookie", "herald_token=t")]).unwrap();
        assert_eq!(got.cookie.as_deref(), Some(&b"a=1; herald_token=t"[..]));
        let e = with_headers(
            None,
            &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
        )
        .unwrap_err();
        assert!(
            e.contains("Authorization header is given more than once"),
            "{e}"
        );
        let e =
            with_headers(None, &[("last-event-id", "1-1"), ("last-event-id", "1-2")]).unwrap_err();
        assert!(
            e.contains("Last-Event-ID header is given more than once"),
            "{e}"
        );
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        assert!(p("", None).unwrap_err().contains("non-empty user id"));
        assert!(p("a/b", None).is_err());
        assert!(p("%FF", None).unwrap_err().contains("UTF-8"));
        assert!(p("%0A", None).unwrap_err().contains("control"));
        assert!(p("u", Some("topic=")).unwrap_err().contains("empty"));
        assert!(p("u", Some("topic=%FF")).unwrap_err().contains("UTF-8"));
        // An unreadable id is not a 400 (EventSource would give up for
        // good): the stream starts with a reset.
        assert!(matches!(
            p("u", Some("lastEventId=zzz")).unwrap().resume,
            Some(Err(IdError::Malformed))
        ));
        let many = vec!["topic=t"; MAX_TOPICS + 1].join("&");
        assert!(p("u", Some(&many)).unwrap_err().contains("at most"));
        assert!(p(&"x".repeat(300), None).unwrap_err().contains("256"));
    }
}
