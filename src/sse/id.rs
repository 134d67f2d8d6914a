//! Event ids as they appear on the wire and come back in `Last-Event-ID`.
//!
//! Locally published events are numbered by a per-run sequence. The run's
//! *epoch* (its start time in milliseconds, hex) is part of the id so that an
//! id from an earlier run of the server is recognised as such (and answered
//! with a reset) instead of being mistaken for a position in this run:
//! `18f3a2b4c01-42` is event 42 of run `18f3a2b4c01`.
//!
//! Parsing is strict and bounded: anything else is an [`IdError`], which the
//! subscribe handler answers with a 400.

use std::fmt;
use std::str::FromStr;

/// Longest `Last-Event-ID` considered at all.
pub const MAX_ID_BYTES: usize = 128;

/// An event's identity on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventId {
    /// Published through this node's HTTP API: sequence `seq` of run `epoch`.
    Local { epoch: u64, seq: u64 },
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
}

// === impl EventId ===

impl EventId {
    /// The node-local sequence number, when the id carries one.
    pub fn local_seq(&self, epoch: u64) -> Option<u64> {
        match *self {
            EventId::Local { epoch: e, seq } if e == epoch => Some(seq),
            EventId::Local { .. } => None,
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventId::Local { epoch, seq } => write!(f, "{epoch:x}-{seq}"),
        }
    }
}

impl FromStr for EventId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_ID_BYTES {
            return Err(IdError::TooLong);
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
        assert_eq!("18f3a2b4c01-42".parse::<EventId>(), Ok(id));
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

    proptest! {
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
