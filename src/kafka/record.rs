//! What happens to a Kafka record that cannot become an event: the
//! [`Skip`] reason (a metrics label) and its detail ([`Rejected`]). The
//! rules that turn a record into an event are in `mapping`; decoding is in
//! `format`. The caller counts a rejected record, logs it with its position
//! (or sends it to the dead-letter topic) and moves on, so one bad record
//! never stalls its partition.

/// Header naming the topic an event is for (the default rule's).
pub(crate) const TOPIC_HEADER: &str = "sse-topic";
/// Header naming the SSE event type (the default rule's).
pub(crate) const EVENT_HEADER: &str = "sse-event";

/// Why a record was skipped. `as_str` is its metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub(crate) enum Skip {
    #[error("the value is not UTF-8")]
    ValueNotUtf8,
    #[error("the record has no value (tombstone)")]
    NoValue,
    #[error("the user is not a valid user id (UTF-8, 1-256 bytes, no control characters)")]
    BadUser,
    #[error("the SSE topic is not a valid topic name")]
    BadTopic,
    #[error("the event type is not valid (UTF-8, no CR/LF/NUL, 1-128 bytes)")]
    BadEvent,
    #[error("the event type is one of herald's own events (herald-...)")]
    ReservedEvent,
    #[error("the record names no user (the rule skips such records)")]
    NoUser,
    #[error("the record names more targets than herald sends one record to")]
    TooManyTargets,
    #[error("the value has no field at the rule's data pointer")]
    NoData,
    #[error("the value is not JSON")]
    NotJson,
    #[error("the value has no schema registry header")]
    NotFramed,
    #[error("the schema registry does not know the record's schema id")]
    UnknownSchema,
    #[error("the schema registry cannot be reached")]
    RegistryUnavailable,
    #[error("the record's schema cannot be used")]
    BadSchema,
    #[error("the value does not decode with its schema")]
    Decode,
}

/// A record refused: the reason, and what exactly was wrong when there is
/// more to say (a decoder's message, a field's path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejected {
    pub(crate) skip: Skip,
    pub(crate) detail: Option<String>,
}

// === impl Skip ===

impl Skip {
    /// Every reason, for registering the metric's label values.
    pub(crate) const ALL: [Skip; 15] = [
        Skip::ValueNotUtf8,
        Skip::NoValue,
        Skip::BadUser,
        Skip::BadTopic,
        Skip::BadEvent,
        Skip::ReservedEvent,
        Skip::NoUser,
        Skip::TooManyTargets,
        Skip::NoData,
        Skip::NotJson,
        Skip::NotFramed,
        Skip::UnknownSchema,
        Skip::RegistryUnavailable,
        Skip::BadSchema,
        Skip::Decode,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Skip::ValueNotUtf8 => "value_not_utf8",
            Skip::NoValue => "no_value",
            Skip::BadUser => "bad_user",
            Skip::BadTopic => "bad_topic",
            Skip::BadEvent => "bad_event",
            Skip::ReservedEvent => "reserved_event",
            Skip::NoUser => "no_user",
            Skip::TooManyTargets => "too_many_targets",
            Skip::NoData => "no_data",
            Skip::NotJson => "not_json",
            Skip::NotFramed => "not_framed",
            Skip::UnknownSchema => "unknown_schema",
            Skip::RegistryUnavailable => "registry_unavailable",
            Skip::BadSchema => "bad_schema",
            Skip::Decode => "decode",
        }
    }
}

// === impl Rejected ===

impl Rejected {
    pub(crate) fn new(skip: Skip, detail: String) -> Self {
        Self {
            skip,
            detail: Some(detail),
        }
    }
}

impl From<Skip> for Rejected {
    fn from(skip: Skip) -> Self {
        Self { skip, detail: None }
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{}: {d}", self.skip),
            None => write!(f, "{}", self.skip),
        }
    }
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
}
