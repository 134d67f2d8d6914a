//! `GET /api/sse/subscribe/{userId}[?topic=a&topic=b&lastEventId=...]`
//!
//! The seed page's endpoint. Validates the user id (percent-decoded path
//! segment), `topic` parameters and the resume id (`Last-Event-ID` header,
//! else `lastEventId` query parameter), registers the connection through the
//! dispatcher and answers with an endless `text/event-stream`:
//!
//! 1. a preamble: a comment (so the headers and first bytes flush at once),
//!    `retry:`, and `id:` of the position the stream continues after (so even
//!    a browser that has seen no event yet resumes from the right place);
//! 2. on a clean resume, the retained events after the given id; when that id
//!    is too old (or from another run), a `herald-reset` event instead, whose
//!    `id` is where the stream continues (see README "Resuming");
//! 3. live events and heartbeat comments.
//!
//! The `herald-resumed-after` response header carries the id the stream
//! continues after: equal to the requested id on a clean resume, different
//! after a gap.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;

use bytes::{Bytes, BytesMut};

use crate::abort::Abort;
use crate::auth::{self, Denied, Grant, Sources};
use crate::event::Name;
use crate::fanout::queue::CloseReason;
use crate::sse::{frame, EventId};

use super::{json_error, AppState, Body, SseBody, Stream};

pub const PREFIX: &str = "/api/sse/subscribe/";
/// Most `topic` parameters on one stream.
pub const MAX_TOPICS: usize = 64;
pub const RESUMED_AFTER_HEADER: &str = "herald-resumed-after";

/// What a subscribe request asks for, validated.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Params {
    pub(crate) user: Name,
    pub(crate) topics: Vec<Name>,
    pub(crate) resume: Option<EventId>,
    /// The `access_token` query parameter, if any.
    pub(crate) token: Option<String>,
}

pub(super) fn handle<B>(
    state: &Arc<AppState>,
    req: &Request<B>,
    rest: &str,
    peer: SocketAddr,
    abort: &Arc<Abort>,
) -> Response<Body> {
    let last_event_id = req
        .headers()
        .get("last-event-id")
        .map(HeaderValue::as_bytes);
    let params = match parse(rest, req.uri().query(), last_event_id) {
        Ok(p) => p,
        Err(msg) => return json_error(StatusCode::BAD_REQUEST, &msg),
    };
    if state.draining.load(Ordering::Relaxed) {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "herald is shutting down; reconnect to another node",
        );
    }
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    let grant = match authorize(
        state,
        &params,
        req.headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
        req.headers().get(header::COOKIE).map(HeaderValue::as_bytes),
    ) {
        Ok(g) => g,
        Err(denied) => return denied_response(&denied),
    };
    if over_user_limit(state, &params.user) {
        crate::guard::count("per_user");
        let max = state.config.limits.streams_per_user;
        let mut r = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("this user already has {max} open streams (--max-streams-per-user); close one first"),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    }
    if req.method() == Method::HEAD {
        return resp;
    }
    let opened = open(state, params, grant, peer, abort);
    if let Ok(v) = HeaderValue::from_str(&opened.after.to_string()) {
        resp.headers_mut().insert(RESUMED_AFTER_HEADER, v);
    }
    *resp.body_mut() = Body::Sse(Box::new(SseBody::new(
        opened.head,
        opened.replay,
        opened.stream,
        state.config.write_coalesce,
    )));
    resp
}

/// A registered stream and what to write before live events.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The id the stream continues after (the `herald-resumed-after` header).
    pub(crate) after: EventId,
    /// Preamble (and the reset event after a gap).
    pub(crate) head: Bytes,
    /// Replayed frames, in order.
    pub(crate) replay: Vec<Bytes>,
    pub(crate) stream: Stream,
}

/// Registers the stream with the dispatcher and builds its first bytes.
/// Shared by the hyper handler and the HTTP/1.1 fast path.
pub(crate) fn open(
    state: &Arc<AppState>,
    params: Params,
    grant: Grant,
    peer: SocketAddr,
    abort: &Arc<Abort>,
) -> Opened {
    let requested = params.resume.clone();
    let sub = state.fanout.subscribe(
        params.user,
        params.topics,
        Some(peer),
        Some(abort.clone()),
        params.resume,
    );
    if let Some(at) = grant.expires_at {
        state.expiries.add(at, sub.subscription.subscriber());
    }
    let retry = state.config.retry.as_millis() as u64;
    // A stream registered after the drain took its snapshot of open streams
    // would be missed by it: end it here instead (it still gets its preamble).
    if state.draining.load(Ordering::SeqCst) {
        let hint = frame::FrameBuilder::new(0).retry(retry);
        if let Some(w) = sub
            .subscription
            .subscriber()
            .queue
            .close(CloseReason::Shutdown, Some(hint.finish()))
        {
            w.wake();
        }
    }
    let head = frame::FrameBuilder::new(0).comment("herald").retry(retry);
    let head = if sub.gap {
        let data = serde_json::json!({
            "reason": "last-event-id-not-retained",
            "lastEventId": requested.map(|id| id.to_string()),
            "resumedAfter": sub.after.to_string(),
        })
        .to_string();
        let mut b = BytesMut::from(&head.finish()[..]);
        b.extend_from_slice(&frame::event(&sub.after, Some(frame::RESET_EVENT), &data));
        b.freeze()
    } else {
        head.id(&sub.after).finish()
    };
    Opened {
        after: sub.after,
        head,
        replay: sub.replay,
        stream: Stream::new(sub.subscription, state.config.metrics),
    }
}

/// Decides whether the request may open this stream (see `auth`); counts
/// refusals by reason.
pub(crate) fn authorize(
    state: &AppState,
    params: &Params,
    authorization: Option<&[u8]>,
    cookie: Option<&[u8]>,
) -> Result<Grant, Denied> {
    let sources = Sources {
        authorization,
        cookie,
        query: params.token.as_deref(),
    };
    let topics: Vec<&str> = params.topics.iter().map(Name::as_str).collect();
    state
        .config
        .auth
        .subscribe(params.user.as_str(), &topics, sources)
        .inspect_err(|d| {
            metrics::counter!(crate::metrics::AUTH_DENIED, "endpoint" => "subscribe", "reason" => d.reason())
                .increment(1);
        })
}

/// Whether `user` already holds `--max-streams-per-user` streams.
pub(crate) fn over_user_limit(state: &AppState, user: &Name) -> bool {
    let max = state.config.limits.streams_per_user;
    max > 0 && state.fanout.registry().user_streams(user) >= max
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

/// Validates the path rest, query and headers of a subscribe request.
pub(crate) fn parse(
    rest: &str,
    query: Option<&str>,
    last_event_id: Option<&[u8]>,
) -> Result<Params, String> {
    if rest.is_empty() || rest.contains('/') {
        return Err("the path must be /api/sse/subscribe/{userId} with a non-empty user id".into());
    }
    let user = percent_decode_str(rest)
        .decode_utf8()
        .map_err(|_| "the user id is not valid UTF-8 once percent-decoded".to_owned())?;
    let user = Name::new(&user).map_err(|e| format!("the user id {e}"))?;

    let mut topics = Vec::new();
    let mut query_resume = None;
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
            auth::QUERY_PARAM => {
                token = Some(value.map_err(|_| "access_token is not valid UTF-8".to_owned())?);
            }
            _ => {}
        }
    }

    let header = match last_event_id {
        Some(v) => Some(
            std::str::from_utf8(v)
                .ok()
                .filter(|s| s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
                .ok_or_else(|| "the Last-Event-ID header is not valid text".to_owned())?
                .to_owned(),
        ),
        None => None,
    };
    // The header is what a browser sends on reconnect; it wins.
    let resume = match header.or(query_resume) {
        Some(id) if id.is_empty() => None,
        Some(id) => Some(
            id.parse::<EventId>()
                .map_err(|e| format!("Last-Event-ID {e}"))?,
        ),
        None => None,
    };
    Ok(Params {
        user,
        topics,
        resume,
        token,
    })
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

    fn p(rest: &str, q: Option<&str>) -> Result<Params, String> {
        parse(rest, q, None)
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
            Some(EventId::Local {
                epoch: 0xff,
                seq: 3
            })
        );
    }

    #[test]
    fn header_wins_over_query() {
        let got = parse("u", Some("lastEventId=1-2"), Some(b"1-9")).unwrap();
        assert_eq!(got.resume, Some(EventId::Local { epoch: 1, seq: 9 }));
    }

    #[test]
    fn refuses_bad_input_with_a_reason() {
        assert!(p("", None).unwrap_err().contains("non-empty user id"));
        assert!(p("a/b", None).is_err());
        assert!(p("%FF", None).unwrap_err().contains("UTF-8"));
        assert!(p("%0A", None).unwrap_err().contains("control"));
        assert!(p("u", Some("topic=")).unwrap_err().contains("empty"));
        assert!(p("u", Some("topic=%FF")).unwrap_err().contains("UTF-8"));
        assert!(p("u", Some("lastEventId=zzz"))
            .unwrap_err()
            .starts_with("Last-Event-ID"));
        let many = vec!["topic=t"; MAX_TOPICS + 1].join("&");
        assert!(p("u", Some(&many)).unwrap_err().contains("at most"));
        assert!(p(&"x".repeat(300), None).unwrap_err().contains("256"));
    }
}
