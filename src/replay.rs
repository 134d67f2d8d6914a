//! The replay buffer: the most recent events, bounded by count, bytes and age,
//! so a client that reconnects with `Last-Event-ID` gets what it missed.
//!
//! Entries are kept in dispatch order, numbered by the node-local sequence the
//! dispatcher assigns (contiguous: every dispatched event is appended). Frames
//! are the same shared [`Bytes`] the live subscribers got; the buffer costs a
//! handle per entry plus the frames it keeps alive.
//!
//! It only answers "what came after sequence `n`": when `n` is older than the
//! oldest retained entry, some events are gone and the caller is told so
//! ([`After::Gap`]) rather than silently given a partial history.
//!
//! Ages use `tokio::time::Instant` so tests can pause time.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::event::Target;
use crate::sse::EventId;

/// Bounds of the buffer; an entry is evicted once any of them is exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    id: EventId,
    target: Target,
    frame: Bytes,
    at: Instant,
}

/// Bounded history of dispatched events.
#[derive(Debug)]
pub struct Replay {
    entries: VecDeque<Entry>,
    bytes: usize,
    limits: Limits,
}

/// Answer to "what came after sequence `n`?".
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    /// Everything after `n` is retained; these are the frames the filter kept.
    Complete(Vec<Bytes>),
    /// Events after `n` were evicted (or `n` was never issued): a gap.
    Gap,
}

// === impl Replay ===

impl Replay {
    pub fn new(limits: Limits) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            limits,
        }
    }

    /// Appends the event with sequence `seq` (one more than the last).
    pub fn push(&mut self, seq: u64, id: EventId, target: Target, frame: Bytes, now: Instant) {
        debug_assert!(self.entries.back().is_none_or(|e| e.seq + 1 == seq));
        self.bytes += frame.len();
        self.entries.push_back(Entry {
            seq,
            id,
            target,
            frame,
            at: now,
        });
        while self.entries.len() > self.limits.max_events
            || (self.bytes > self.limits.max_bytes && !self.entries.is_empty())
        {
            self.pop_front();
        }
        self.expire(now);
    }

    /// Drops entries older than the age bound.
    pub fn expire(&mut self, now: Instant) {
        while let Some(front) = self.entries.front() {
            if now.saturating_duration_since(front.at) <= self.limits.max_age {
                break;
            }
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.frame.len();
        }
    }

    /// Frames of events after `seen` (the last sequence the client saw) that
    /// `wants` accepts, given that `latest` is the last sequence dispatched.
    pub fn after(&self, seen: u64, latest: u64, wants: impl Fn(&Target) -> bool) -> After {
        if seen > latest {
            return After::Gap;
        }
        // The oldest sequence still held; `latest + 1` when nothing is held.
        let oldest = self.entries.front().map_or(latest + 1, |e| e.seq);
        if seen + 1 < oldest {
            return After::Gap;
        }
        let skip = (seen + 1 - oldest) as usize;
        After::Complete(
            self.entries
                .iter()
                .skip(skip)
                .filter(|e| wants(&e.target))
                .map(|e| e.frame.clone())
                .collect(),
        )
    }

    /// The sequence number of the retained event with this id (newest first:
    /// resumes are mostly of recent events).
    pub fn seq_of(&self, id: &EventId) -> Option<u64> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.id == *id)
            .map(|e| e.seq)
    }

    /// Entries and frame bytes held.
    pub fn len(&self) -> (usize, usize) {
        (self.entries.len(), self.bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(seq: u64) -> EventId {
        EventId::Local { epoch: 1, seq }
    }

    #[test]
    fn finds_retained_ids() {
        let now = Instant::now();
        let mut r = Replay::new(limits(2, 1000));
        fill(&mut r, 1..=3, now);
        assert_eq!(r.seq_of(&id(3)), Some(3));
        assert_eq!(r.seq_of(&id(1)), None, "evicted");
    }

    fn limits(max_events: usize, max_bytes: usize) -> Limits {
        Limits {
            max_events,
            max_bytes,
            max_age: Duration::from_secs(60),
        }
    }

    fn fill(r: &mut Replay, seqs: std::ops::RangeInclusive<u64>, now: Instant) {
        for s in seqs {
            r.push(s, id(s), Target::Broadcast, Bytes::from(s.to_string()), now);
        }
    }

    fn frames(a: After) -> Vec<String> {
        match a {
            After::Complete(v) => v
                .iter()
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
                .collect(),
            After::Gap => panic!("unexpected gap"),
        }
    }

    #[test]
    fn replays_what_followed() {
        let now = Instant::now();
        let mut r = Replay::new(limits(10, 1000));
        fill(&mut r, 1..=5, now);
        assert_eq!(frames(r.after(2, 5, |_| true)), ["3", "4", "5"]);
        assert_eq!(frames(r.after(0, 5, |_| true)), ["1", "2", "3", "4", "5"]);
        assert_eq!(frames(r.after(5, 5, |_| true)), Vec::<String>::new());
        assert_eq!(r.after(6, 5, |_| true), After::Gap);
    }

    #[test]
    fn count_and_byte_bounds_evict_and_report_gaps() {
        let now = Instant::now();
        let mut r = Replay::new(limits(3, 1000));
        fill(&mut r, 1..=5, now);
        assert_eq!(r.len().0, 3);
        assert_eq!(r.after(1, 5, |_| true), After::Gap);
        assert_eq!(frames(r.after(2, 5, |_| true)), ["3", "4", "5"]);

        let mut r = Replay::new(limits(100, 4));
        fill(&mut r, 10..=13, now);
        assert_eq!(r.len(), (2, 4));
        assert_eq!(frames(r.after(11, 13, |_| true)), ["12", "13"]);
        assert_eq!(r.after(10, 13, |_| true), After::Gap);
    }

    #[test]
    fn age_bound_evicts_and_empty_buffer_still_knows_latest() {
        let t0 = Instant::now();
        let mut r = Replay::new(limits(100, 1000));
        fill(&mut r, 1..=2, t0);
        r.expire(t0 + Duration::from_secs(61));
        assert!(r.is_empty());
        // Client saw everything: nothing missed even though nothing is held.
        assert_eq!(frames(r.after(2, 2, |_| true)), Vec::<String>::new());
        assert_eq!(r.after(1, 2, |_| true), After::Gap);
    }

    #[test]
    fn filter_keeps_only_wanted_targets() {
        let now = Instant::now();
        let mut r = Replay::new(limits(10, 1000));
        r.push(1, id(1), Target::Broadcast, Bytes::from_static(b"b"), now);
        let u = crate::event::Name::new("u").unwrap();
        r.push(
            2,
            id(2),
            Target::User(u.clone()),
            Bytes::from_static(b"u"),
            now,
        );
        let only_broadcast = |t: &Target| *t == Target::Broadcast;
        assert_eq!(frames(r.after(0, 2, only_broadcast)), ["b"]);
    }
}
