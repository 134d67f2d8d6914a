//! The replay buffer: the most recent events, bounded by count, bytes and age,
//! so a client that reconnects with `Last-Event-ID` gets what it missed.
//!
//! Entries are kept in dispatch order, numbered by the node-local sequence the
//! dispatcher assigns (contiguous: every dispatched event is appended), so
//! an entry is found by arithmetic on its sequence. Kafka ids (positions) are
//! found through an index. Frames are the same shared [`Bytes`] the live
//! subscribers got; the buffer costs a handle per entry plus the frames it
//! keeps alive.
//!
//! A resume is a range of sequences, not a copy: the stream reads it a chunk
//! at a time ([`Replay::chunk`], at most [`CHUNK_SCAN`] entries and about a
//! write's worth of bytes per call), so a resuming client holds no more than
//! one chunk and nothing here is O(buffer) under the dispatch lock. When the
//! range's start is older than the oldest retained entry, some events are
//! gone and the caller is told so ([`Chunk::Gap`]) rather than silently given
//! a partial history, whether at subscribe time or while a slow reader is
//! still replaying.
//!
//! Ages use `tokio::time::Instant` so tests can pause time.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Instant;

use crate::event::Target;
use crate::sse::EventId;

/// Most entries one chunk looks at, matching or not: bounds the time a
/// chunk holds the dispatch lock (a few µs).
pub const CHUNK_SCAN: usize = 4096;

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
    /// Kafka ids (positions) of retained entries -> their sequence.
    positions: HashMap<EventId, u64>,
}

/// The events a resuming stream is owed: sequences `next..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub next: u64,
    pub last: u64,
}

/// One read of a [`Range`].
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Frames the filter kept (possibly none, when the scan bound was hit
    /// first), concatenated, and how many.
    Frames(Bytes, usize),
    /// The range is done.
    Done,
    /// Events of the range were evicted before they were read: a gap.
    Gap,
}

// === impl Replay ===

impl Replay {
    pub fn new(limits: Limits) -> Self {
        Self {
            entries: VecDeque::new(),
            bytes: 0,
            limits,
            positions: HashMap::new(),
        }
    }

    /// Appends the event with sequence `seq` (one more than the last).
    pub fn push(&mut self, seq: u64, id: EventId, target: Target, frame: Bytes, now: Instant) {
        debug_assert!(self.entries.back().is_none_or(|e| e.seq + 1 == seq));
        if self.limits.max_events == 0 {
            return;
        }
        self.bytes += frame.len();
        if matches!(id, EventId::Kafka { .. }) {
            self.positions.insert(id.clone(), seq);
        }
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
            if matches!(e.id, EventId::Kafka { .. }) {
                self.positions.remove(&e.id);
            }
        }
    }

    /// The oldest sequence still held; `latest + 1` when nothing is.
    fn oldest(&self, latest: u64) -> u64 {
        self.entries.front().map_or(latest + 1, |e| e.seq)
    }

    /// What a client that saw sequence `seen` is owed, given that `latest`
    /// is the last sequence dispatched; `None` when some of it is gone (or
    /// `seen` was never issued). O(1).
    pub fn resume(&self, seen: u64, latest: u64) -> Option<Range> {
        if seen > latest || seen + 1 < self.oldest(latest) {
            return None;
        }
        Some(Range {
            next: seen + 1,
            last: latest,
        })
    }

    /// Reads the next frames of `range` that `wants` accepts: up to about
    /// `max_bytes`, looking at most at [`CHUNK_SCAN`] entries; advances
    /// `range`.
    pub fn chunk(
        &self,
        range: &mut Range,
        max_bytes: usize,
        wants: impl Fn(&Target) -> bool,
    ) -> Chunk {
        if range.next > range.last {
            return Chunk::Done;
        }
        let oldest = self.oldest(range.last);
        if range.next < oldest {
            return Chunk::Gap;
        }
        let mut buf = BytesMut::new();
        let mut frames = 0;
        let start = (range.next - oldest) as usize;
        for e in self.entries.range(start..).take(CHUNK_SCAN) {
            if e.seq > range.last || buf.len() >= max_bytes {
                break;
            }
            range.next = e.seq + 1;
            if wants(&e.target) {
                buf.put_slice(&e.frame);
                frames += 1;
            }
        }
        Chunk::Frames(buf.freeze(), frames)
    }

    /// The sequence number of the retained event with this id: arithmetic
    /// for this run's local ids (`local` maps them), an index lookup for
    /// Kafka positions. O(1).
    pub fn seq_of(&self, id: &EventId, local: impl Fn(&EventId) -> Option<u64>) -> Option<u64> {
        match id {
            EventId::Local { .. } => local(id),
            EventId::Kafka { .. } => self.positions.get(id).copied(),
        }
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

    fn kafka(offset: i64) -> EventId {
        EventId::Kafka {
            topic: "t".into(),
            partition: 0,
            offset,
        }
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

    /// Everything `seen..` holds, read chunk by chunk, as one string.
    fn replay(r: &Replay, seen: u64, latest: u64, max_bytes: usize) -> Option<(String, usize)> {
        let mut range = r.resume(seen, latest)?;
        let (mut out, mut chunks) = (String::new(), 0);
        loop {
            match r.chunk(&mut range, max_bytes, |_| true) {
                Chunk::Frames(b, _) => {
                    out.push_str(std::str::from_utf8(&b).unwrap());
                    chunks += 1;
                }
                Chunk::Done => return Some((out, chunks)),
                Chunk::Gap => return None,
            }
        }
    }

    #[test]
    fn replays_what_followed_in_chunks() {
        let now = Instant::now();
        let mut r = Replay::new(limits(10, 1000));
        fill(&mut r, 1..=5, now);
        assert_eq!(replay(&r, 2, 5, 1000), Some(("345".into(), 1)));
        assert_eq!(replay(&r, 0, 5, 1000), Some(("12345".into(), 1)));
        assert_eq!(
            replay(&r, 0, 5, 2),
            Some(("12345".into(), 3)),
            "2 bytes per chunk"
        );
        assert_eq!(replay(&r, 5, 5, 1000), Some((String::new(), 0)));
        assert_eq!(r.resume(6, 5), None, "never issued");
    }

    #[test]
    fn count_and_byte_bounds_evict_and_report_gaps() {
        let now = Instant::now();
        let mut r = Replay::new(limits(3, 1000));
        fill(&mut r, 1..=5, now);
        assert_eq!(r.len().0, 3);
        assert_eq!(r.resume(1, 5), None);
        assert_eq!(replay(&r, 2, 5, 1000), Some(("345".into(), 1)));

        let mut r = Replay::new(limits(100, 4));
        fill(&mut r, 10..=13, now);
        assert_eq!(r.len(), (2, 4));
        assert_eq!(replay(&r, 11, 13, 1000), Some(("1213".into(), 1)));
        assert_eq!(r.resume(10, 13), None);
    }

    #[test]
    fn eviction_while_replaying_is_a_gap() {
        let now = Instant::now();
        let mut r = Replay::new(limits(4, 1000));
        fill(&mut r, 1..=4, now);
        let mut range = r.resume(0, 4).unwrap();
        assert_eq!(
            r.chunk(&mut range, 1, |_| true),
            Chunk::Frames(Bytes::from_static(b"1"), 1)
        );
        fill(&mut r, 5..=6, now);
        assert_eq!(r.chunk(&mut range, 1, |_| true), Chunk::Gap);
    }

    #[test]
    fn age_bound_evicts_and_empty_buffer_still_knows_latest() {
        let t0 = Instant::now();
        let mut r = Replay::new(limits(100, 1000));
        fill(&mut r, 1..=2, t0);
        r.expire(t0 + Duration::from_secs(61));
        assert!(r.is_empty());
        // Client saw everything: nothing missed even though nothing is held.
        assert_eq!(replay(&r, 2, 2, 1000), Some((String::new(), 0)));
        assert_eq!(r.resume(1, 2), None);
    }

    #[test]
    fn filter_keeps_only_wanted_targets_and_scans_boundedly() {
        let now = Instant::now();
        let mut r = Replay::new(limits(10_000, 1 << 20));
        let u = crate::event::Name::new("u").unwrap();
        for s in 1..=9000 {
            let target = if s % 3000 == 0 {
                Target::User(u.clone())
            } else {
                Target::Broadcast
            };
            r.push(s, id(s), target, Bytes::from_static(b"x"), now);
        }
        let mut range = r.resume(0, 9000).unwrap();
        let only_u = |t: &Target| *t != Target::Broadcast;
        let mut got = 0;
        let mut calls = 0;
        loop {
            match r.chunk(&mut range, 1 << 16, only_u) {
                Chunk::Frames(_, n) => got += n,
                Chunk::Done => break,
                Chunk::Gap => panic!("gap"),
            }
            calls += 1;
        }
        assert_eq!(got, 3);
        assert!(calls >= 9000 / CHUNK_SCAN, "bounded scans: {calls}");
    }

    #[test]
    fn kafka_ids_are_indexed_and_forgotten_on_eviction() {
        let now = Instant::now();
        let mut r = Replay::new(limits(2, 1000));
        for (seq, off) in [(1, 10), (2, 11), (3, 12)] {
            r.push(
                seq,
                kafka(off),
                Target::Broadcast,
                Bytes::from_static(b"k"),
                now,
            );
        }
        assert_eq!(r.seq_of(&kafka(12), |_| None), Some(3));
        assert_eq!(r.seq_of(&kafka(10), |_| None), None, "evicted");
        assert_eq!(r.seq_of(&kafka(99), |_| None), None);
        assert_eq!(r.positions.len(), 2);
        assert_eq!(r.seq_of(&id(7), |_| Some(7)), Some(7));
    }
}
