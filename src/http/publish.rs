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
//! `{"id": "..."}` or `{"ids": [...]}`.
//!
//! Kafka mode: the events are produced to `--kafka-publish-topic` (key = user,
//! header `sse-topic` / `sse-event` per the record mapping) and the answer
//! waits for the broker's acknowledgement; the ids are the Kafka positions,
//! and delivery to streams happens when the consumer reads them back, on
//! every node. No acknowledgement within `--kafka-publish-timeout`: 503,
//! with the ids of any events of a batch that did get through.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{Name, Target};
use crate::fanout::{Outgoing, Source};
use crate::sse::frame;

use super::{json_error, response, AppState, Body};

pub const PATH: &str = "/api/publish";
/// Most events in one batch.
pub const MAX_BATCH: usize = 10_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Item<'a> {
    user: Option<String>,
    topic: Option<String>,
    broadcast: Option<bool>,
    event: Option<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// A validated item.
#[derive(Debug)]
pub(crate) struct Valid {
    pub(crate) target: Target,
    pub(crate) event: Option<String>,
    pub(crate) data: String,
}

pub(super) async fn handle(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    let authorization = req.headers().get(header::AUTHORIZATION);
    let who = match state
        .config
        .auth
        .publish(authorization.map(header::HeaderValue::as_bytes))
    {
        Ok(who) => who,
        Err(denied) => {
            metrics::counter!(crate::metrics::AUTH_DENIED, "endpoint" => "publish", "reason" => denied.reason())
                .increment(1);
            return super::subscribe::denied_response(&denied);
        }
    };
    let publishers = &state.publishers;
    let who = who.unwrap_or_else(|| format!("ip:{}", peer.ip()));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if let Err(refused) = publishers.charge(&who, declared.unwrap_or(0)) {
        return limited(refused);
    }
    let result = read_and_validate(state, req).await;
    let items = match result {
        Ok(items) => items,
        Err((status, msg)) => {
            state.publish_rejected.increment(1);
            return json_error(status, &msg);
        }
    };
    if declared.is_none() && publishers.enabled() {
        // No content-length: charge the bytes that came (no request).
        if let Err(refused) = publishers.charge_bytes(&who, items.2) {
            return limited(refused);
        }
    }
    let batch = items.1;
    let items = items.0;
    if let Some(publisher) = &state.publisher {
        let events: Vec<_> = items
            .iter()
            .map(|v| (v.target.clone(), v.event.as_deref(), v.data.as_str()))
            .collect();
        return match publisher.publish(&events).await {
            Ok(ids) => reply(&ids, batch),
            Err(failure) => {
                tracing::warn!(error = %failure, "publish to Kafka failed");
                let ids: Vec<Option<String>> = failure
                    .ids
                    .iter()
                    .map(|i| i.as_ref().map(ToString::to_string))
                    .collect();
                let body = serde_json::json!({
                    "error": format!("{failure} (within --kafka-publish-timeout); retry later"),
                    "ids": ids,
                });
                response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "application/json",
                    Bytes::from(body.to_string()),
                )
            }
        };
    }
    let outgoing: Vec<Outgoing<'_>> = items
        .iter()
        .map(|v| Outgoing {
            target: v.target.clone(),
            event: v.event.as_deref(),
            data: &v.data,
            id: None,
            timestamp_us: 0,
        })
        .collect();
    if state
        .fanout
        .room(state.config.publish_backpressure)
        .await
        .is_err()
    {
        let secs = 1;
        let msg = format!(
            "herald is behind on delivery (many streams have deep queues) and stayed behind for --publish-backpressure ({} ms); nothing was published; retry in {secs} s",
            state.config.publish_backpressure.as_millis()
        );
        return retry_later(StatusCode::SERVICE_UNAVAILABLE, &msg, secs);
    }
    let ids = state.fanout.publish(&outgoing, Source::Http);
    reply(&ids, batch)
}

/// 429 with `Retry-After`, counted by reason.
fn limited(refused: crate::guard::Refused) -> Response<Body> {
    crate::guard::count(refused.reason);
    let secs = crate::guard::retry_after_secs(refused.retry_after);
    let what = if refused.reason == "publish_rate" {
        "publish requests per second (--publish-rate)"
    } else {
        "publish bytes per second (--publish-bytes-rate)"
    };
    retry_later(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("this publisher is over its limit of {what}; retry in {secs} s"),
        secs,
    )
}

/// A JSON error with `Retry-After: secs`.
fn retry_later(status: StatusCode, msg: &str, secs: u64) -> Response<Body> {
    let mut resp = json_error(status, msg);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    resp
}

fn reply(ids: &[crate::sse::EventId], batch: bool) -> Response<Body> {
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let body = if batch {
        serde_json::json!({ "ids": ids })
    } else {
        serde_json::json!({ "id": ids.first() })
    };
    response(
        StatusCode::OK,
        "application/json",
        Bytes::from(body.to_string()),
    )
}

type Reject = (StatusCode, String);

async fn read_and_validate(
    state: &Arc<AppState>,
    req: Request<Incoming>,
) -> Result<(Vec<Valid>, bool, usize), Reject> {
    let max = state.config.publish_max_body;
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        if !ct.starts_with("application/json") && !ct.contains("+json") {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content-type must be application/json".into(),
            ));
        }
    }
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than the {max}-byte limit (--publish-max-body)"),
        )
    };
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH) {
        if len
            .to_str()
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|n| n > max as u64)
        {
            return Err(too_large());
        }
    }
    let body = match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("could not read the body: {e}"),
            ));
        }
    };
    let (items, batch) = parse(&body).map_err(|m| (StatusCode::BAD_REQUEST, m))?;
    Ok((items, batch, body.len()))
}

/// Parses and validates a publish body; `bool` is whether it was a batch.
pub(crate) fn parse(body: &[u8]) -> Result<(Vec<Valid>, bool), String> {
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

fn validate(item: Item<'_>) -> Result<Valid, String> {
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
    Ok(Valid {
        target,
        event: item.event,
        data: compact_json(item.data.get()),
    })
}

/// Strips insignificant whitespace from valid JSON text, keeping everything
/// else (key order, number spelling, string escapes) byte for byte.
pub fn compact_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> (Vec<Valid>, bool) {
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
        assert_eq!(v[0].event.as_deref(), Some("e"));
        assert_eq!(v[0].data, r#""x y""#);
        assert_eq!(v[1].target, Target::Broadcast);
    }

    #[test]
    fn compaction_keeps_strings_and_numbers() {
        assert_eq!(
            compact_json("{ \"k\" : \"a \\\" b\\n\" ,\n \"n\": 1.50e3 }"),
            "{\"k\":\"a \\\" b\\n\",\"n\":1.50e3}"
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
