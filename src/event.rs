//! What flows through herald: an [`Event`] is who it is for ([`Target`]),
//! its SSE event type, its `data` text, and its id when it already has one
//! (a Kafka position). The publish API, Kafka ingest and the Kafka producer
//! all speak this one type; the dispatcher encodes it once into a shared
//! frame and nothing downstream formats it again.
//!
//! User ids and topic names are validated once here ([`Name`]), at the edge
//! (path, publish body, Kafka records), so the registry can trust them.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use crate::sse::EventId;

/// Longest user id or topic name accepted, in bytes. Keys live in registry
/// maps; a cap keeps a hostile client from parking megabytes in a key.
pub const MAX_NAME_BYTES: usize = 256;

/// A validated user id or topic name: 1..=[`MAX_NAME_BYTES`] bytes of UTF-8,
/// no control characters. Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

/// Why a user id or topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("is empty")]
    Empty,
    #[error("is {0} bytes long; the limit is {MAX_NAME_BYTES}")]
    TooLong(usize),
    #[error("contains a control character")]
    Control,
}

/// Who an event is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every connection of one user (all tabs).
    User(Name),
    /// Every connection that subscribed to the topic.
    Topic(Name),
    /// Every connection.
    Broadcast,
    /// Several users and topics (a Kafka record whose mapping names a list):
    /// each stream they reach gets the event once. Never nested, never
    /// `Broadcast` inside.
    Many(Arc<[Target]>),
}

/// One event on its way to the dispatcher, from any source. `data` and
/// `kind` borrow where they can (a Kafka record's value) and own where they
/// must (a publish body after compaction). Event types are checked at the
/// edge (`sse::frame::check_event_type`) before an `Event` is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event<'a> {
    pub target: Target,
    /// The SSE event type; `None` is the default type, `message`.
    pub kind: Option<Cow<'a, str>>,
    /// The `data` text (may hold line breaks; the encoder splits them).
    pub data: Cow<'a, str>,
    /// Its id when it has one already (a Kafka position); `None` gets a
    /// node-local id when dispatched.
    pub id: Option<EventId>,
    /// When it happened, in µs since the epoch (a Kafka record's
    /// timestamp); 0 is "now". The delivery-lag histogram measures from it.
    pub timestamp_us: u64,
}

// === impl Name ===

impl Name {
    pub fn new(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_BYTES {
            return Err(NameError::TooLong(s.len()));
        }
        if s.chars().any(char::is_control) {
            return Err(NameError::Control);
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

// === impl Event ===

impl<'a> Event<'a> {
    /// An event of the default type for `target`, id assigned on dispatch.
    pub fn new(target: Target, data: impl Into<Cow<'a, str>>) -> Self {
        Self {
            target,
            kind: None,
            data: data.into(),
            id: None,
            timestamp_us: 0,
        }
    }

    /// The same event with SSE event type `kind`.
    pub fn with_kind(mut self, kind: Option<impl Into<Cow<'a, str>>>) -> Self {
        self.kind = kind.map(Into::into);
        self
    }

    /// The event type as text, if any.
    pub fn kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }

    /// The same event owning its text (to outlive what it borrowed).
    pub fn into_owned(self) -> Event<'static> {
        Event {
            target: self.target,
            kind: self.kind.map(|k| Cow::Owned(k.into_owned())),
            data: Cow::Owned(self.data.into_owned()),
            id: self.id,
            timestamp_us: self.timestamp_us,
        }
    }
}

// === impl Target ===

impl Target {
    /// A closed label set for metrics and logs (never the user id itself).
    pub fn kind(&self) -> &'static str {
        match self {
            Target::User(_) => "user",
            Target::Topic(_) => "topic",
            Target::Broadcast => "broadcast",
            Target::Many(_) => "many",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert_eq!(Name::new("123").unwrap().as_str(), "123");
        assert_eq!(Name::new(""), Err(NameError::Empty));
        assert_eq!(Name::new("a\nb"), Err(NameError::Control));
        assert_eq!(Name::new("a\0b"), Err(NameError::Control));
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert_eq!(
            Name::new(&long),
            Err(NameError::TooLong(MAX_NAME_BYTES + 1))
        );
        assert!(Name::new(&"é".repeat(MAX_NAME_BYTES / 2)).is_ok());
    }
}
