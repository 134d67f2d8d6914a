//! Pure mapping from a Kafka record to an [`Event`]: key -> user; no key ->
//! broadcast; header `sse-topic` -> topic (instead of the user); header
//! `sse-event` -> SSE event type; value -> `data`, unchanged (UTF-8). The
//! event borrows the record's bytes; the consumer adds its id (the record's
//! position) and timestamp.
//!
//! A record that can not be mapped is [`Skip`]ped with a reason (a metrics
//! label); the caller counts and logs it with its position and moves on, so
//! one bad record never stalls its partition.

use std::borrow::Cow;

use crate::event::{Event, Name, Target};
use crate::sse::frame;

/// Header naming the topic an event is for.
pub(crate) const TOPIC_HEADER: &str = "sse-topic";
/// Header naming the SSE event type.
pub(crate) const EVENT_HEADER: &str = "sse-event";

/// Why a record was skipped. `as_str` is its metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Skip {
    #[error("the value is not UTF-8")]
    ValueNotUtf8,
    #[error("the record has no value (tombstone)")]
    NoValue,
    #[error("the key is not a valid user id (UTF-8, 1-256 bytes, no control characters)")]
    BadKey,
    #[error("the sse-topic header is not a valid topic name")]
    BadTopicHeader,
    #[error("the sse-event header is not a valid event type (UTF-8, no CR/LF/NUL, 1-128 bytes)")]
    BadEventHeader,
    #[error("the sse-event header names one of herald's own events (herald-...)")]
    ReservedEvent,
}

// === impl Skip ===

impl Skip {
    /// Every reason, for registering the metric's label values.
    pub(crate) const ALL: [Skip; 6] = [
        Skip::ValueNotUtf8,
        Skip::NoValue,
        Skip::BadKey,
        Skip::BadTopicHeader,
        Skip::BadEventHeader,
        Skip::ReservedEvent,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Skip::ValueNotUtf8 => "value_not_utf8",
            Skip::NoValue => "no_value",
            Skip::BadKey => "bad_key",
            Skip::BadTopicHeader => "bad_topic_header",
            Skip::BadEventHeader => "bad_event_header",
            Skip::ReservedEvent => "reserved_event",
        }
    }
}

/// Maps one record. `headers` yields (name, value) pairs; later duplicates
/// of a header win, as with most Kafka clients' "last value" lookups.
pub(crate) fn map<'a>(
    key: Option<&'a [u8]>,
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    value: Option<&'a [u8]>,
) -> Result<Event<'a>, Skip> {
    let mut topic = None;
    let mut event = None;
    for (name, v) in headers {
        if name == TOPIC_HEADER {
            topic = Some(v.unwrap_or_default());
        } else if name == EVENT_HEADER {
            event = Some(v.unwrap_or_default());
        }
    }
    let data = std::str::from_utf8(value.ok_or(Skip::NoValue)?).map_err(|_| Skip::ValueNotUtf8)?;
    let event = match event {
        Some(e) => {
            let e = std::str::from_utf8(e).map_err(|_| Skip::BadEventHeader)?;
            frame::check_event_type(e).map_err(|err| match err {
                frame::FieldError::Reserved => Skip::ReservedEvent,
                _ => Skip::BadEventHeader,
            })?;
            Some(e)
        }
        None => None,
    };
    let target = match (topic, key) {
        (Some(t), _) => {
            let t = std::str::from_utf8(t).map_err(|_| Skip::BadTopicHeader)?;
            Target::Topic(Name::new(t).map_err(|_| Skip::BadTopicHeader)?)
        }
        (None, Some(k)) => {
            let k = std::str::from_utf8(k).map_err(|_| Skip::BadKey)?;
            Target::User(Name::new(k).map_err(|_| Skip::BadKey)?)
        }
        (None, None) => Target::Broadcast,
    };
    Ok(Event {
        target,
        kind: event.map(Cow::Borrowed),
        data: Cow::Borrowed(data),
        id: None,
        timestamp_us: 0,
    })
}

/// A record's timestamp (ms since the epoch, any i64 a producer chose) as
/// µs since the epoch; 0 (none) when absent, before the epoch, or too far
/// ahead to represent.
pub(crate) fn timestamp_us(ms: Option<i64>) -> u64 {
    ms.and_then(|ms| u64::try_from(ms).ok())
        .filter(|ms| *ms > 0)
        .and_then(|ms| ms.checked_mul(1000))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn key_header_and_value_mapping() {
        let m = map(Some(b"123"), [], Some(br#"{"a":1}"#)).unwrap();
        assert_eq!(m.target, Target::User(name("123")));
        assert_eq!((m.kind(), &*m.data), (None, r#"{"a":1}"#));

        let m = map(None, [], Some(b"x")).unwrap();
        assert_eq!(m.target, Target::Broadcast);

        let h = [
            ("sse-topic", Some(&b"news"[..])),
            ("sse-event", Some(&b"headline"[..])),
        ];
        let m = map(Some(b"123"), h, Some(b"line1\nline2")).unwrap();
        assert_eq!(m.target, Target::Topic(name("news")), "topic wins over key");
        assert_eq!(m.kind(), Some("headline"));
        assert_eq!(m.data, "line1\nline2", "value unchanged");

        let m = map(None, [("other", Some(&b"v"[..]))], Some(b"")).unwrap();
        assert_eq!((m.target, &*m.data), (Target::Broadcast, ""));
    }

    #[test]
    fn any_timestamp_converts_without_overflow() {
        assert_eq!(timestamp_us(Some(1_700_000_000_000)), 1_700_000_000_000_000);
        assert_eq!(timestamp_us(None), 0);
        assert_eq!(timestamp_us(Some(-1)), 0);
        assert_eq!(timestamp_us(Some(0)), 0);
        assert_eq!(timestamp_us(Some(i64::MAX)), 0);
        assert_eq!(
            timestamp_us(Some(i64::MAX / 1000)),
            (i64::MAX / 1000) as u64 * 1000
        );
    }

    #[test]
    fn bad_records_are_skipped_with_a_reason() {
        assert_eq!(map(None, [], Some(b"\xff")), Err(Skip::ValueNotUtf8));
        assert_eq!(map(None, [], None), Err(Skip::NoValue));
        assert_eq!(map(Some(b"\xff"), [], Some(b"x")), Err(Skip::BadKey));
        assert_eq!(map(Some(b""), [], Some(b"x")), Err(Skip::BadKey));
        assert_eq!(map(Some(b"a\nb"), [], Some(b"x")), Err(Skip::BadKey));
        let h = [("sse-event", Some(&b"a\nb"[..]))];
        assert_eq!(map(None, h, Some(b"x")), Err(Skip::BadEventHeader));
        let h = [("sse-event", Some(&b"a\rb"[..]))];
        assert_eq!(map(None, h, Some(b"x")), Err(Skip::BadEventHeader));
        let h = [("sse-event", None)];
        assert_eq!(map(None, h, Some(b"x")), Err(Skip::BadEventHeader));
        let h = [("sse-topic", Some(&b"\xff"[..]))];
        assert_eq!(map(None, h, Some(b"x")), Err(Skip::BadTopicHeader));
        assert_eq!(Skip::BadKey.as_str(), "bad_key");
        let h = [("sse-event", Some(&b"herald-reset"[..]))];
        assert_eq!(map(None, h, Some(b"x")), Err(Skip::ReservedEvent));
    }
}
