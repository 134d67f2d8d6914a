//! Event ids as they appear on the wire and come back in `Last-Event-ID`.
//!
//! Locally published events are numbered by a per-run sequence. The run's
//! *epoch* (its start time in milliseconds and 16 random bits below, hex) is
//! part of the id so that an
//! id from an earlier run of the server is recognised as such (and answered
//! with a reset) instead of being mistaken for a position in this run:
//! `18f3a2b4c01-42` is event 42 of run `18f3a2b4c01`.
//!
//! Kafka-sourced events are named by their position, `topic:partition:offset`
//! (`messages:3:1042`): the same on every node that reads the topic. Kafka
//! topic names can not contain `:`, so the two forms never collide.
//!
//! In Kafka mode every event's id is a cursor (`c.` and base64url, see
//! [`super::cursor`]): the node's position on every partition after it.
//! `topic:partition:offset` ids from earlier versions are still read.
//!
//! Parsing is strict and bounded: anything else is an [`IdError`], which
//! resume answers with a `herald-reset` event (never a 400: a 400 makes
//! `EventSource` stop reconnecting for good).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use super::cursor::{self, Cursor, CursorError};

/// Longest `Last-Event-ID` considered at all, but for cursors (see
/// [`cursor::MAX_CURSOR_CHARS`]).
pub const MAX_ID_BYTES: usize = 128;

/// Longest Kafka topic name (Kafka's own limit).
pub const MAX_TOPIC_BYTES: usize = 249;

/// An event's identity on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventId {
    /// Published through this node's HTTP API: sequence `seq` of run `epoch`.
    Local { epoch: u64, seq: u64 },
    /// Consumed from Kafka at this position (the id of earlier versions;
    /// inside herald, a record's position).
    Kafka {
        topic: Arc<str>,
        partition: i32,
        offset: i64,
    },
    /// A position on every partition (Kafka mode): the cursor's wire form,
    /// checked (see [`super::cursor`]).
    Cursor(Arc<str>),
}

/// Why a `Last-Event-ID` could not be understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_ID_BYTES} bytes")]
    TooLong,
    #[error(
        "is not an id this server issued (expected `<run>-<sequence>`, e.g. `18f3a2b4c01-42`)"
    )]
    Malformed,
    #[error("is not a cursor this server issued: it {0}")]
    Cursor(#[from] CursorError),
}

// === impl EventId ===

impl EventId {
    /// The node-local sequence number, when the id carries one.
    pub fn local_seq(&self, epoch: u64) -> Option<u64> {
        match *self {
            EventId::Local { epoch: e, seq } if e == epoch => Some(seq),
            _ => None,
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventId::Local { epoch, seq } => write!(f, "{epoch:x}-{seq}"),
            EventId::Kafka {
                topic,
                partition,
                offset,
            } => write!(f, "{topic}:{partition}:{offset}"),
            EventId::Cursor(text) => f.write_str(text),
        }
    }
}

impl FromStr for EventId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        // Cursors never hold a `:`; `topic:partition:offset` ids may start
        // with `c.` (a topic `c.x`).
        if s.starts_with(cursor::PREFIX) && !s.contains(':') {
            Cursor::decode(s)?;
            return Ok(EventId::Cursor(Arc::from(s)));
        }
        if s.len() > MAX_ID_BYTES {
            return Err(IdError::TooLong);
        }
        if s.contains(':') {
            return parse_kafka(s);
        }
        let (epoch, seq) = s.split_once('-').ok_or(IdError::Malformed)?;
        let hex = |c: char| c.is_ascii_hexdigit() && !c.is_ascii_uppercase();
        if epoch.is_empty() || epoch.len() > 16 || !epoch.chars().all(hex) {
            return Err(IdError::Malformed);
        }
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError::Malformed);
        }
        let epoch = u64::from_str_radix(epoch, 16).map_err(|_| IdError::Malformed)?;
        let seq = seq.parse::<u64>().map_err(|_| IdError::Malformed)?;
        Ok(EventId::Local { epoch, seq })
    }
}

/// Whether `s` is a legal Kafka topic name: 1-249 of `[A-Za-z0-9._-]`.
pub fn is_kafka_topic(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TOPIC_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn parse_kafka(s: &str) -> Result<EventId, IdError> {
    let mut parts = s.rsplitn(3, ':');
    let offset = parts.next().ok_or(IdError::Malformed)?;
    let partition = parts.next().ok_or(IdError::Malformed)?;
    let topic = parts.next().ok_or(IdError::Malformed)?;
    let digits = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    if !is_kafka_topic(topic) || !digits(partition) || !digits(offset) {
        return Err(IdError::Malformed);
    }
    Ok(EventId::Kafka {
        topic: Arc::from(topic),
        partition: partition.parse().map_err(|_| IdError::Malformed)?,
        offset: offset.parse().map_err(|_| IdError::Malformed)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn local_ids_round_trip() {
        let id = EventId::Local {
            epoch: 0x18f3a2b4c01,
            seq: 42,
        };
        assert_eq!(id.to_string(), "18f3a2b4c01-42");
        assert_eq!("18f3a2b4c01-42".parse::<EventId>(), Ok(id.clone()));
        assert_eq!(id.local_seq(0x18f3a2b4c01), Some(42));
        assert_eq!(id.local_seq(1), None);
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "-",
            "abc",
            "1-",
            "-1",
            "g-1",
            "A-1",
            "1-x",
            "1-+1",
            "1-1-1",
            "1 -1",
            "11111111111111111-1",
            "1-99999999999999999999999",
        ] {
            assert_eq!(bad.parse::<EventId>(), Err(IdError::Malformed), "{bad:?}");
        }
        assert_eq!("".parse::<EventId>(), Err(IdError::Empty));
        assert_eq!("1".repeat(200).parse::<EventId>(), Err(IdError::TooLong));
    }

    #[test]
    fn kafka_ids_round_trip_and_are_checked() {
        let id = EventId::Kafka {
            topic: Arc::from("user.events-v2"),
            partition: 7,
            offset: 1042,
        };
        assert_eq!(id.to_string(), "user.events-v2:7:1042");
        assert_eq!("user.events-v2:7:1042".parse::<EventId>(), Ok(id));
        for bad in [
            "t:1",
            ":1:2",
            "t::2",
            "t:1:",
            "t:-1:2",
            "t:1:x",
            "t/x:1:2",
            "a:b:1:2",
            "t:99999999999:1",
        ] {
            assert_eq!(bad.parse::<EventId>(), Err(IdError::Malformed), "{bad:?}");
        }
        assert!(is_kafka_topic("messages"));
        assert!(!is_kafka_topic("a b"));
        assert!(!is_kafka_topic(&"t".repeat(250)));
    }

    #[test]
    fn cursors_are_read_and_checked() {
        let c = Cursor {
            topics: vec![cursor::TopicOffsets {
                fingerprint: cursor::fingerprint("events"),
                next: vec![3, 4],
            }],
        };
        let text = c.encode();
        assert_eq!(
            text.parse::<EventId>(),
            Ok(EventId::Cursor(Arc::from(text.as_str())))
        );
        assert!(matches!("c.zz".parse::<EventId>(), Err(IdError::Cursor(_))));
        // An old id of a topic named `c.x` is still an old id.
        assert!(matches!(
            "c.x:1:2".parse::<EventId>(),
            Ok(EventId::Kafka { .. })
        ));
    }

    proptest! {
        #[test]
        fn any_kafka_id_round_trips(topic in "[A-Za-z0-9._-]{1,40}", partition in 0i32.., offset in 0i64..) {
            let id = EventId::Kafka { topic: Arc::from(topic.as_str()), partition, offset };
            prop_assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
        }

        #[test]
        fn any_local_id_round_trips(epoch: u64, seq: u64) {
            let id = EventId::Local { epoch, seq };
            prop_assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<EventId>();
        }
    }
}
