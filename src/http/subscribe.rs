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

use crate::abort::Abort;
use crate::event::Name;
use crate::sse::{frame, EventId};

use super::{json_error, AppState, Body, SseBody};

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
}

pub(super) fn handle<B>(
    state: &Arc<AppState>,
    req: &Request<B>,
    rest: &str,
    peer: SocketAddr,
    abort: &Arc<Abort>,
) -> Response<Body> {
    let params = match parse(rest, req.uri().query(), req.headers()) {
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
    if req.method() == Method::HEAD {
        return resp;
    }

    let had_resume = params.resume.is_some();
    let sub = state.fanout.subscribe(
        params.user,
        params.topics,
        Some(peer),
        Some(abort.clone()),
        params.resume,
    );
    let retry = state.config.retry.as_millis() as u64;
    let mut head = frame::FrameBuilder::new(0).comment("herald").retry(retry);
    if sub.gap {
        let data = serde_json::json!({
            "reason": if had_resume { "last-event-id-not-retained" } else { "unknown" },
            "lastEventId": params_resume_text(req),
            "resumedAfter": sub.after.to_string(),
        })
        .to_string();
        head = head.comment("resume gap");
        let reset = frame::event(sub.after, Some(frame::RESET_EVENT), &data);
        let mut b = bytes::BytesMut::from(&head.finish()[..]);
        b.extend_from_slice(&reset);
        return stream(resp, sub.after, b.freeze(), sub.replay, sub.subscription);
    }
    let head = head.id(sub.after).finish();
    stream(resp, sub.after, head, sub.replay, sub.subscription)
}

fn stream(
    mut resp: Response<Body>,
    after: EventId,
    head: bytes::Bytes,
    replay: Vec<bytes::Bytes>,
    subscription: crate::registry::Subscription,
) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(&after.to_string()) {
        resp.headers_mut().insert(RESUMED_AFTER_HEADER, v);
    }
    *resp.body_mut() = Body::Sse(Box::new(SseBody::new(head, replay, subscription)));
    resp
}

/// The resume id as the client sent it (already validated), for the reset
/// event's payload.
fn params_resume_text<B>(req: &Request<B>) -> Option<String> {
    if let Some(v) = req.headers().get("last-event-id") {
        return v.to_str().ok().map(str::to_owned);
    }
    query_pairs(req.uri().query().unwrap_or(""))
        .find(|(k, _)| k == "lastEventId")
        .and_then(|(_, v)| v.ok())
}

/// Validates the path rest, query and headers of a subscribe request.
pub(crate) fn parse(
    rest: &str,
    query: Option<&str>,
    headers: &http::HeaderMap,
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
            _ => {}
        }
    }

    let header = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| "the Last-Event-ID header is not valid text".to_owned())?
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
        parse(rest, q, &http::HeaderMap::new())
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
        let mut h = http::HeaderMap::new();
        h.insert("last-event-id", HeaderValue::from_static("1-9"));
        let got = parse("u", Some("lastEventId=1-2"), &h).unwrap();
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
