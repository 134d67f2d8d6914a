//! `POST /api/publish`: one event object, or a JSON array of them (a batch).
//!
//! ```json
//! {"user": "123", "data": {"text": "hi"}}
//! {"topic": "news", "event": "headline", "data": "..."}
//! {"broadcast": true, "data": [1, 2]}
//! ```
//!
//! Exactly one target (`user`, `topic`, or `broadcast: true`); optional
//! `event` (the SSE event type; no CR, LF or NUL); `data` any JSON value,
//! whose compact JSON text (key order and number spelling kept as sent) is
//! the SSE `data`, so the page's `JSON.parse(event.data)` gives it back.
//! Unknown fields are refused (ids are assigned by herald, not the caller).
//!
//! A batch is validated whole before any of it is published. Answers
//! `{"id": "..."}` or `{"ids": [...]}`. Where the events go is the
//! [`Sink`]'s business (this node, or Kafka); every way a publish can be
//! refused is a [`Refusal`], answered in [`Refusal::into_response`].

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::auth::{self, Auth, Denied};
use crate::event::{Event, Name, Target};
use crate::guard::{self, Publishers, Refused};
use crate::publish::{PublishError, Sink};
use crate::sse::{frame, EventId};

use super::body::{read_limited, ReadError, RequestBody};
use super::{json_error, response, Body};

pub(crate) const PATH: &str = "/api/publish";
/// Most events in one batch.
pub(crate) const MAX_BATCH: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item<'a> {
    // Borrowed from the body unless escaped: a name is copied once, into
    // its `Name`.
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    topic: Option<Cow<'a, str>>,
    broadcast: Option<bool>,
    event: Option<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// The publish endpoint: who may publish, how much, and where it goes.
#[derive(Debug)]
pub(crate) struct Publish {
    pub(crate) sink: Sink,
    pub(crate) auth: Arc<Auth>,
    pub(crate) publishers: Publishers,
    /// `--trusted-proxies`: whose address an open publisher is counted by.
    pub(crate) proxies: Arc<crate::forwarded::TrustedProxies>,
    /// `--publish-max-body`.
    pub(crate) max_body: usize,
    /// Longest a body may take to arrive (`--header-read-timeout`).
    pub(crate) body_timeout: std::time::Duration,
}

/// Why a publish request was refused; each maps to one answer.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// 401 / 403.
    Denied(Denied),
    /// 429 with `Retry-After`.
    Limited(Refused),
    /// 415.
    MediaType,
    /// 413.
    TooLarge(usize),
    /// 400: the body could not be read.
    Unreadable(String),
    /// 408: the body did not arrive in time.
    SlowBody(std::time::Duration),
    /// 400: the body is not a valid publish.
    Invalid(String),
    /// 503 (with `Retry-After` or the acknowledged ids).
    Sink(PublishError),
}

// === impl Publish ===

impl Publish {
    pub(crate) async fn handle(
        &self,
        req: Request<RequestBody>,
        peer: SocketAddr,
    ) -> Response<Body> {
        match self.publish(req, peer).await {
            Ok((ids, batch)) => reply(&ids, batch),
            Err(refusal) => refusal.into_response(),
        }
    }

    async fn publish(
        &self,
        req: Request<RequestBody>,
        peer: SocketAddr,
    ) -> Result<(Vec<EventId>, bool), Refusal> {
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(header::HeaderValue::as_bytes);
        let who = self.auth.publish(authorization).map_err(|denied| {
            denied.count(auth::Endpoint::Publish);
            Refusal::Denied(denied)
        })?;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        // Named only when a limit is charged to it (none by default).
        let who = self.publishers.limited().then(|| {
            who.unwrap_or_else(|| format!("ip:{}", self.proxies.client(peer, req.headers()).ip()))
        });
        if let Some(who) = &who {
            self.publishers
                .charge(who, declared.unwrap_or(0))
                .map_err(Refusal::Limited)?;
        }
        let body = self.read_body(req).await?;
        if let (Some(who), None) = (&who, declared) {
            // No content-length: charge the bytes that came (no request).
            self.publishers
                .charge_bytes(who, body.len())
                .map_err(Refusal::Limited)?;
        }
        let (events, batch) = parse(&body).map_err(Refusal::Invalid)?;
        let ids = self.sink.publish(&events).await.map_err(Refusal::Sink)?;
        Ok((ids, batch))
    }

    async fn read_body(&self, req: Request<RequestBody>) -> Result<Bytes, Refusal> {
        // A JSON media type is required: a missing one, or a CORS-simple
        // one (`text/plain`), would let any web page publish without a
        // preflight.
        if !req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_media_type)
        {
            return Err(Refusal::MediaType);
        }
        let max = self.max_body;
        if let Some(len) = req.headers().get(header::CONTENT_LENGTH) {
            if len
                .to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|n| n > max as u64)
            {
                return Err(Refusal::TooLarge(max));
            }
        }
        read_limited(req.into_body(), max, self.body_timeout)
            .await
            .map_err(|e| match e {
                ReadError::Slow => Refusal::SlowBody(self.body_timeout),
                ReadError::TooLarge => Refusal::TooLarge(max),
                ReadError::Failed(e) => {
                    Refusal::Unreadable(format!("could not read the body: {e}"))
                }
            })
    }
}

// === impl Refusal ===

impl Refusal {
    /// The one mapping from a refused publish to its HTTP answer.
    pub(crate) fn into_response(self) -> Response<Body> {
        match self {
            Refusal::Denied(denied) => super::subscribe::denied_response(&denied),
            Refusal::Limited(refused) => {
                refused.reason.count();
                let secs = guard::retry_after_secs(refused.retry_after);
                let what = match refused.reason {
                    guard::Limit::PublishRate => "publish requests per second (--publish-rate)",
                    _ => "publish bytes per second (--publish-bytes-rate)",
                };
                retry_later(
                    StatusCode::TOO_MANY_REQUESTS,
                    &format!("this publisher is over its limit of {what}; retry in {secs} s"),
                    secs,
                )
            }
            Refusal::MediaType => rejected(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content-type must be application/json (or another JSON media type, type/subtype+json)",
            ),
            Refusal::SlowBody(t) => rejected(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the body did not arrive within {} ms (--header-read-timeout)",
                    t.as_millis()
                ),
            ),
            Refusal::TooLarge(max) => rejected(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than the {max}-byte limit (--publish-max-body)"),
            ),
            Refusal::Unreadable(msg) | Refusal::Invalid(msg) => {
                rejected(StatusCode::BAD_REQUEST, &msg)
            }
            Refusal::Sink(e @ PublishError::Off) => {
                rejected(StatusCode::NOT_IMPLEMENTED, &e.to_string())
            }
            Refusal::Sink(e @ PublishError::Behind { .. }) => {
                let secs = 1;
                retry_later(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("{e}; retry in {secs} s"),
                    secs,
                )
            }
            Refusal::Sink(PublishError::Kafka(failure)) => {
                tracing::warn!(error = %failure, "publish to Kafka failed");
                let Some(written) = &failure.written else {
                    return retry_later(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("{failure}; retry the same request (it was all or nothing)"),
                        1,
                    );
                };
                // Per-event mode: say which were written.
                let ids: Vec<Option<String>> = written
                    .iter()
                    .map(|i| i.as_ref().map(ToString::to_string))
                    .collect();
                let body = serde_json::json!({
                    "error": format!("{failure}: the events with an id were written; those with null were not (or not acknowledged)"),
                    "ids": ids,
                });
                let mut resp = response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    Bytes::from(body.to_string()),
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(1u64));
                resp
            }
        }
    }
}

/// `application/json`, or any `type/subtype+json`, parameters aside.
fn is_json_media_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    !kind.is_empty()
        && !kind.contains(char::is_whitespace)
        && (essence == "application/json" || subtype.ends_with("+json"))
}

/// A 4xx for a bad request, counted.
fn rejected(status: StatusCode, msg: &str) -> Response<Body> {
    metrics::counter!(crate::metrics::PUBLISH_REJECTED).increment(1);
    json_error(status, msg)
}

/// A JSON error with `Retry-After: secs`.
fn retry_later(status: StatusCode, msg: &str, secs: u64) -> Response<Body> {
    let mut resp = json_error(status, msg);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    resp
}

/// `{"id": "..."}` for one event, `{"ids": [...]}` for a batch.
fn reply(ids: &[EventId], batch: bool) -> Response<Body> {
    #[derive(serde::Serialize)]
    struct One {
        id: Option<String>,
    }
    #[derive(serde::Serialize)]
    struct Many {
        ids: Vec<String>,
    }
    let body = if batch {
        let ids = ids.iter().map(ToString::to_string).collect();
        serde_json::to_vec(&Many { ids })
    } else {
        let id = ids.first().map(ToString::to_string);
        serde_json::to_vec(&One { id })
    };
    // Strings only: serializing them cannot fail.
    let body = body.unwrap_or_default();
    response(StatusCode::OK, "application/json", Bytes::from(body))
}

/// `bench::publish_body_and_reply`.
pub(crate) fn bench_case(body: &[u8]) -> usize {
    // A bench of a refused body would measure the error path unnoticed.
    let (events, batch) = parse(body).expect("the bench's body is a valid publish");
    let ids: Vec<EventId> = (1..=events.len() as u64)
        .map(|seq| EventId::Local { epoch: 1, seq })
        .collect();
    reply(&ids, batch).body().bytes().len()
}

/// Parses and validates a publish body; `bool` is whether it was a batch.
pub(crate) fn parse(body: &[u8]) -> Result<(Vec<Event<'static>>, bool), String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'{') => {
            let item: Item<'_> =
                serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
            Ok((vec![validate(item)?], false))
        }
        Some(b'[') => {
            let items: Vec<Item<'_>> =
                serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
            if items.is_empty() {
                return Err("the batch is empty".into());
            }
            if items.len() > MAX_BATCH {
                return Err(format!("a batch holds at most {MAX_BATCH} events"));
            }
            let valid = items
                .into_iter()
                .enumerate()
                .map(|(i, it)| validate(it).map_err(|e| format!("item {i}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((valid, true))
        }
        None => Err("the body is empty; expected a JSON object or array".into()),
        Some(_) => Err("the body must be a JSON object or an array of objects".into()),
    }
}

fn validate(item: Item<'_>) -> Result<Event<'static>, String> {
    let target = match (item.user, item.topic, item.broadcast) {
        (Some(u), None, None | Some(false)) => {
            Target::User(Name::new(&u).map_err(|e| format!("`user` {e}"))?)
        }
        (None, Some(t), None | Some(false)) => {
            Target::Topic(Name::new(&t).map_err(|e| format!("`topic` {e}"))?)
        }
        (None, None, Some(true)) => Target::Broadcast,
        (None, None, None | Some(false)) => {
            return Err("no target: give one of `user`, `topic` or `\"broadcast\": true`".into())
        }
        _ => return Err(
            "more than one target: give exactly one of `user`, `topic` or `\"broadcast\": true`"
                .into(),
        ),
    };
    if let Some(e) = &item.event {
        frame::check_event_type(e).map_err(|err| format!("`event` {err}"))?;
    }
    Ok(Event::new(target, compact_json(item.data.get())).with_kind(item.event))
}

/// Strips insignificant whitespace from valid JSON text, keeping everything
/// else (key order, number spelling, string escapes) byte for byte.
pub(crate) fn compact_json(json: &str) -> String {
    // Works on bytes: the four whitespace bytes, `"` and `\` are ASCII and
    // never part of a multi-byte character, so every cut is at a character
    // boundary and the kept runs are copied whole.
    let mut out = String::with_capacity(json.len());
    let bytes = json.as_bytes();
    let (mut run, mut in_string, mut escaped) = (0, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push_str(&json[run..i]);
            run = i + 1;
        }
    }
    out.push_str(&json[run..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> (Vec<Event<'static>>, bool) {
        parse(body.as_bytes()).unwrap()
    }

    fn err(body: &str) -> String {
        parse(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn single_and_batch() {
        let (v, batch) = ok(r#"{"user":"123","data":{"a": 1,  "b":[1, 2]}}"#);
        assert!(!batch);
        assert_eq!(v[0].target, Target::User(Name::new("123").unwrap()));
        assert_eq!(v[0].data, r#"{"a":1,"b":[1,2]}"#);
        let (v, batch) =
            ok(r#"[{"topic":"n","event":"e","data":"x y"},{"broadcast":true,"data":null}]"#);
        assert!(batch);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].kind(), Some("e"));
        assert_eq!(v[0].data, r#""x y""#);
        assert_eq!(v[1].target, Target::Broadcast);
    }

    #[test]
    fn only_json_media_types() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.herald+json",
            "text/x+json",
        ] {
            assert!(is_json_media_type(ok), "{ok}");
        }
        for bad in [
            "",
            "text/plain",
            "text/plain;x=+json",
            "application/jsonx",
            "json",
            "multipart/form-data; boundary=+json",
        ] {
            assert!(!is_json_media_type(bad), "{bad}");
        }
    }

    #[test]
    fn compaction_keeps_strings_and_numbers() {
        assert_eq!(
            compact_json("{ \"k\" : \"a \\\" b\\n\" ,\n \"n\": 1.50e3 }"),
            "{\"k\":\"a \\\" b\\n\",\"n\":1.50e3}"
        );
    }

    #[test]
    fn compaction_cuts_only_between_tokens() {
        // Multi-byte characters, an escaped backslash before a closing quote,
        // whitespace at both ends and inside strings.
        assert_eq!(
            compact_json(" { \"é\" : \"ü ñ\\\\\" ,\r\n \"k\":[ 1 ,\t2 ], \"s\": \" \\\" \" }\n"),
            "{\"é\":\"ü ñ\\\\\",\"k\":[1,2],\"s\":\" \\\" \"}"
        );
        assert_eq!(compact_json("\"x\""), "\"x\"");
        assert_eq!(compact_json("  "), "");
    }

    #[test]
    fn escaped_names_are_unescaped() {
        let (v, _) = ok(r#"{"user":"a\u0062","data":1}"#);
        assert_eq!(v[0].target, Target::User(Name::new("ab").unwrap()));
        let (v, _) = ok(r#"{"topic":"n\u00e9","data":1}"#);
        assert_eq!(v[0].target, Target::Topic(Name::new("né").unwrap()));
    }

    #[test]
    fn replies_name_the_ids() {
        let body = |r: Response<Body>| String::from_utf8(r.body().bytes().to_vec()).unwrap();
        let id = |seq| EventId::Local { epoch: 10, seq };
        assert_eq!(body(reply(&[id(1)], false)), r#"{"id":"a-1"}"#);
        assert_eq!(
            body(reply(&[id(1), id(2)], true)),
            r#"{"ids":["a-1","a-2"]}"#
        );
    }

    #[test]
    fn bad_bodies_say_why() {
        assert!(err("").contains("empty"));
        assert!(err("42").contains("JSON object"));
        assert!(err("{").contains("invalid JSON"));
        assert!(err("[]").contains("batch is empty"));
        assert!(err(r#"{"data":1}"#).contains("no target"));
        assert!(err(r#"{"broadcast":false,"data":1}"#).contains("no target"));
        assert!(err(r#"{"user":"a","topic":"b","data":1}"#).contains("more than one target"));
        assert!(err(r#"{"user":"a","broadcast":true,"data":1}"#).contains("more than one"));
        assert!(err(r#"{"user":"a"}"#).contains("missing field `data`"));
        assert!(err(r#"{"user":"","data":1}"#).contains("`user` is empty"));
        assert!(err(r#"{"user":"a","event":"x\ny","data":1}"#).contains("CR, LF or NUL"));
        assert!(err(r#"{"user":"a","id":"1\n2","data":1}"#).contains("unknown field `id`"));
        assert!(err(r#"[{"user":"a","data":1},{"data":2}]"#).starts_with("item 1: no target"));
    }
}
