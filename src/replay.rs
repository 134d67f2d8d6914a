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

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Instant;

use crate::event::Target;
use crate::sse::cursor::{self, Cursor};
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

/// A Kafka record's place: topic (index into the node's topics),
/// partition, offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub topic: usize,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug)]
struct Entry {
    seq: u64,
    /// Where it was in Kafka (Kafka mode).
    pos: Option<Pos>,
    target: Target,
    frame: Bytes,
    /// When it happened (µs since the epoch), for `since=`.
    ts_us: u64,
    at: Instant,
}

/// Bounded history of dispatched events, and (Kafka mode) the node's
/// position on every partition it reads.
#[derive(Debug)]
pub struct Replay {
    entries: VecDeque<Entry>,
    bytes: usize,
    limits: Limits,
    topics: Vec<TopicLog>,
    /// The newest time (µs since the epoch) of an evicted entry.
    evicted_us: u64,
}

/// One topic's partitions, by partition number.
#[derive(Debug)]
struct TopicLog {
    name: Arc<str>,
    fingerprint: u32,
    /// The node's position: the offset after the last record dispatched
    /// (or skipped), per partition.
    next: Vec<i64>,
    /// Every record dispatched from this offset on is still held: the last
    /// evicted one's offset + 1, or where the node started reading.
    floor: Vec<i64>,
    /// Offsets of the entries held, with their sequence, oldest first.
    held: Vec<VecDeque<(i64, u64)>>,
}

/// A position per partition, in the node's layout (topic index, then
/// partition): the next offset a stream has not seen.
pub type Vector = Arc<[Vec<i64>]>;

/// The events a resuming stream is owed: sequences `next..=last`, less
/// (for a cursor) the records below `from` on their partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub next: u64,
    pub last: u64,
    pub from: Option<Vector>,
    /// With `from`: the entries read so far carried ids at or past `from`
    /// on every partition, so later ones do too (positions only grow).
    pub dominated: bool,
    /// With `from`: where the stream stands after the entries read so far
    /// (`from`, raised past each one), where a catch-up from Kafka takes
    /// over if the rest was evicted before it was read.
    pub reached: Option<Vec<Vec<i64>>>,
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
            topics: Vec::new(),
            evicted_us: 0,
        }
    }

    /// The index of `topic` among the node's topics (added if new).
    fn topic(&mut self, topic: &str) -> usize {
        if let Some(i) = self.topic_index(topic) {
            return i;
        }
        self.topics.push(TopicLog {
            name: Arc::from(topic),
            fingerprint: cursor::fingerprint(topic),
            next: Vec::new(),
            floor: Vec::new(),
            held: Vec::new(),
        });
        self.topics.len() - 1
    }

    fn topic_index(&self, topic: &str) -> Option<usize> {
        self.topics.iter().position(|t| &*t.name == topic)
    }

    /// The node starts reading `partition` of `topic` at `offset` (resolved,
    /// not "latest"): its position and floor.
    pub fn start_partition(&mut self, topic: &str, partition: i32, offset: i64) {
        let t = self.topic(topic);
        self.start_at(t, partition, offset);
    }

    /// [`Replay::start_partition`] by topic index; a partition already
    /// started is left as is.
    fn start_at(&mut self, t: usize, partition: i32, offset: i64) {
        let p = partition.max(0) as usize;
        let log = &mut self.topics[t];
        if log.next.len() <= p {
            log.next.resize(p + 1, -1);
            log.floor.resize(p + 1, -1);
            log.held.resize_with(p + 1, VecDeque::new);
        }
        if log.next[p] < 0 {
            log.next[p] = offset.max(0);
            log.floor[p] = offset.max(0);
        }
    }

    /// Records that the record at `offset` was dispatched or skipped:
    /// moves the node's position past it. Its place, for [`Replay::push`].
    /// One lookup of the topic per event.
    pub fn advance(&mut self, topic: &str, partition: i32, offset: i64) -> Pos {
        let t = self.topic(topic);
        self.start_at(t, partition, offset);
        let next = &mut self.topics[t].next[partition.max(0) as usize];
        *next = (*next).max(offset + 1);
        Pos {
            topic: t,
            partition,
            offset,
        }
    }

    /// Whether the node reads Kafka (has positions).
    pub fn has_positions(&self) -> bool {
        !self.topics.is_empty()
    }

    /// The node's position as a cursor's wire form.
    pub fn cursor(&self) -> String {
        let mut s = String::with_capacity(48);
        cursor::encode_topics(
            self.topics
                .iter()
                .map(|t| (t.fingerprint, t.next.as_slice())),
            &mut s,
        );
        s
    }

    /// A client's cursor in the node's layout: its offset where it names
    /// the partition; 0 (from the beginning) for a partition of a topic it
    /// names that it does not (added since); the node's position for a
    /// topic it does not name (nothing owed from before). What it names
    /// that the node does not read is ignored.
    pub fn vector_of(&self, c: &Cursor) -> Vector {
        self.topics
            .iter()
            .map(|t| {
                let named = c.names(t.fingerprint);
                (0..t.next.len())
                    .map(|p| match c.get(t.fingerprint, p as i32) {
                        Some(o) => o,
                        None if named => 0,
                        None => t.next[p],
                    })
                    .collect()
            })
            .collect::<Vec<_>>()
            .into()
    }

    /// The node's position, in its layout.
    pub fn position(&self) -> Vector {
        self.topics
            .iter()
            .map(|t| t.next.clone())
            .collect::<Vec<_>>()
            .into()
    }

    /// The names and partition counts of the node's topics, in its layout.
    pub fn layout(&self) -> Vec<(Arc<str>, usize)> {
        self.topics
            .iter()
            .map(|t| (t.name.clone(), t.next.len()))
            .collect()
    }

    /// Whether the buffer holds everything owed to a stream at `v`: on
    /// every partition, `floor <= v <= next`.
    pub fn covers(&self, v: &[Vec<i64>]) -> bool {
        self.topics.iter().enumerate().all(|(t, log)| {
            (0..log.next.len()).all(|p| {
                let at = v.get(t).and_then(|x| x.get(p)).copied().unwrap_or(-1);
                log.floor[p] <= at && at <= log.next[p]
            })
        })
    }

    /// The range owed to a stream at `v` (which [`Replay::covers`]), given
    /// that `latest` is the last sequence dispatched. O(partitions · log n).
    pub fn range_from(&self, v: Vector, latest: u64) -> Range {
        let mut first = latest + 1;
        for (t, log) in self.topics.iter().enumerate() {
            for (p, held) in log.held.iter().enumerate() {
                let at = v.get(t).and_then(|x| x.get(p)).copied().unwrap_or(0);
                let i = held.partition_point(|&(o, _)| o < at);
                if let Some(&(_, seq)) = held.get(i) {
                    first = first.min(seq);
                }
            }
        }
        Range {
            next: first,
            last: latest,
            reached: Some(v.to_vec()),
            from: Some(v),
            dominated: false,
        }
    }

    /// Appends the event with sequence `seq` (one more than the last).
    pub fn push(
        &mut self,
        seq: u64,
        pos: Option<Pos>,
        target: Target,
        frame: Bytes,
        ts_us: u64,
        now: Instant,
    ) {
        debug_assert!(self.entries.back().is_none_or(|e| e.seq + 1 == seq));
        if self.limits.max_events == 0 {
            // Nothing is held: the floor is the position.
            self.evicted_us = self.evicted_us.max(ts_us);
            if let Some(pos) = pos {
                let p = pos.partition as usize;
                self.topics[pos.topic].floor[p] = pos.offset + 1;
            }
            return;
        }
        self.bytes += frame.len();
        if let Some(pos) = pos {
            self.topics[pos.topic].held[pos.partition as usize].push_back((pos.offset, seq));
        }
        self.entries.push_back(Entry {
            seq,
            pos,
            target,
            frame,
            ts_us,
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
            self.evicted_us = self.evicted_us.max(e.ts_us);
            if let Some(pos) = e.pos {
                let log = &mut self.topics[pos.topic];
                let p = pos.partition as usize;
                log.held[p].pop_front();
                log.floor[p] = log.floor[p].max(pos.offset + 1);
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
            from: None,
            dominated: true,
            reached: None,
        })
    }

    /// What a new stream starting at time `ts_us` (µs since the epoch) is
    /// owed (`since=`, embedded mode): every entry from then on; `None`
    /// when an entry that recent was evicted. O(log n).
    pub fn since(&self, ts_us: u64, latest: u64) -> Option<Range> {
        if self.evicted_us >= ts_us {
            return None;
        }
        let i = self.entries.partition_point(|e| e.ts_us < ts_us);
        Some(Range {
            next: self.entries.get(i).map_or(latest + 1, |e| e.seq),
            last: latest,
            from: None,
            dominated: true,
            reached: None,
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
            if let (Some(at), Some(pos)) = (&mut range.reached, e.pos) {
                if let Some(o) = at
                    .get_mut(pos.topic)
                    .and_then(|x| x.get_mut(pos.partition as usize))
                {
                    *o = (*o).max(pos.offset + 1);
                }
            }
            let seen = match (&range.from, e.pos) {
                (Some(v), Some(pos)) => v
                    .get(pos.topic)
                    .and_then(|x| x.get(pos.partition as usize))
                    .is_some_and(|&at| pos.offset < at),
                _ => false,
            };
            if !seen && wants(&e.target) {
                match (&range.from, range.dominated) {
                    (Some(v), false) => match self.merged_id(&e.frame, v) {
                        Some(frame) => buf.put_slice(&frame),
                        None => {
                            range.dominated = true;
                            buf.put_slice(&e.frame);
                        }
                    },
                    _ => buf.put_slice(&e.frame),
                }
                frames += 1;
            }
        }
        Chunk::Frames(buf.freeze(), frames)
    }

    /// For a stream resuming from `v`, a cursor of another node: the
    /// frame's id is this node's position after it, which may be behind
    /// `v` on partitions the stream had read further elsewhere. Such a
    /// frame is re-issued with the greater of the two on every partition
    /// (else the stream's next resume would repeat those records); `None`
    /// when the frame's id is at or past `v` everywhere already.
    fn merged_id(&self, frame: &[u8], v: &[Vec<i64>]) -> Option<Bytes> {
        let c = Cursor::decode(crate::sse::frame::id_of(frame)?).ok()?;
        let mut behind = false;
        let merged: Vec<(u32, Vec<i64>)> = self
            .topics
            .iter()
            .enumerate()
            .map(|(t, log)| {
                let next = (0..log.next.len())
                    .map(|p| {
                        let mine = c.get(log.fingerprint, p as i32).unwrap_or(0);
                        let theirs = v.get(t).and_then(|x| x.get(p)).copied().unwrap_or(0);
                        behind |= mine < theirs;
                        mine.max(theirs)
                    })
                    .collect();
                (log.fingerprint, next)
            })
            .collect();
        if !behind {
            return None;
        }
        let mut id = String::with_capacity(48);
        cursor::encode_topics(merged.iter().map(|(fp, n)| (*fp, n.as_slice())), &mut id);
        Some(crate::sse::frame::with_id(frame, &id))
    }

    /// The sequence number of the retained event with this id: arithmetic
    /// for this run's local ids (`local` maps them), a search of its
    /// partition for a record's position. O(log n).
    pub fn seq_of(&self, id: &EventId, local: impl Fn(&EventId) -> Option<u64>) -> Option<u64> {
        match id {
            EventId::Local { .. } => local(id),
            EventId::Kafka {
                topic,
                partition,
                offset,
            } => {
                let held = self.topics[self.topic_index(topic)?]
                    .held
                    .get(usize::try_from(*partition).ok()?)?;
                let i = held.partition_point(|&(o, _)| o < *offset);
                held.get(i)
                    .filter(|(o, _)| o == offset)
                    .map(|&(_, seq)| seq)
            }
            EventId::Cursor(_) => None,
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
            r.push(
                s,
                None,
                Target::Broadcast,
                Bytes::from(s.to_string()),
                s,
                now,
            );
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
            r.push(s, None, target, Bytes::from_static(b"x"), s, now);
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
        r.start_partition("t", 0, 10);
        for (seq, off) in [(1, 10), (2, 11), (3, 12)] {
            let pos = r.advance("t", 0, off);
            r.push(
                seq,
                Some(pos),
                Target::Broadcast,
                Bytes::from_static(b"k"),
                seq,
                now,
            );
        }
        assert_eq!(r.seq_of(&kafka(12), |_| None), Some(3));
        assert_eq!(r.seq_of(&kafka(10), |_| None), None, "evicted");
        assert_eq!(r.seq_of(&kafka(99), |_| None), None);
        assert_eq!(r.seq_of(&id(7), |_| Some(7)), Some(7));
    }

    /// Two partitions, interleaved: (partition, offset) per sequence.
    fn two_partitions(r: &mut Replay, now: Instant) {
        r.start_partition("t", 0, 100);
        r.start_partition("t", 1, 200);
        for (seq, (p, off)) in [(0, 100), (1, 200), (0, 101), (1, 201), (0, 102), (1, 202)]
            .into_iter()
            .enumerate()
        {
            let pos = r.advance("t", p, off);
            let frame = Bytes::from(format!("{p}:{off} "));
            r.push(seq as u64 + 1, Some(pos), Target::Broadcast, frame, 1, now);
        }
    }

    fn read(r: &Replay, mut range: Range) -> String {
        let mut out = String::new();
        loop {
            match r.chunk(&mut range, 1 << 16, |_| true) {
                Chunk::Frames(b, _) => out.push_str(std::str::from_utf8(&b).unwrap()),
                Chunk::Done => return out,
                Chunk::Gap => panic!("gap"),
            }
        }
    }

    #[test]
    fn a_cursor_replays_exactly_what_each_partition_is_owed() {
        let now = Instant::now();
        let mut r = Replay::new(limits(100, 1 << 20));
        two_partitions(&mut r, now);
        assert_eq!(r.position().to_vec(), vec![vec![103, 203]]);
        // Seen 0:100..=101 and 1:200 (another node's order).
        let v: Vector = vec![vec![102, 201]].into();
        assert!(r.covers(&v));
        assert_eq!(read(&r, r.range_from(v, 6)), "1:201 0:102 1:202 ");
        // Ahead of the node on one partition: not covered (yet).
        assert!(!r.covers(&[vec![104, 201]]));
        // The node's own cursor: nothing owed.
        let v = r.position();
        assert_eq!(read(&r, r.range_from(v, 6)), "");
        // Round trip through the wire form.
        let c = Cursor::decode(&r.cursor()).unwrap();
        assert_eq!(r.vector_of(&c), r.position());
    }

    #[test]
    fn eviction_raises_the_floor_per_partition() {
        let now = Instant::now();
        let mut r = Replay::new(limits(4, 1 << 20));
        two_partitions(&mut r, now);
        // 0:100 and 1:200 evicted.
        assert!(!r.covers(&[vec![100, 201]]), "0:100 is gone");
        assert!(!r.covers(&[vec![101, 200]]), "1:200 is gone");
        assert!(r.covers(&[vec![101, 201]]));
        // A cursor that names no partition of a topic the node reads
        // starts it at the node's position; unknown topics are ignored.
        let other = Cursor {
            topics: vec![cursor::TopicOffsets {
                fingerprint: cursor::fingerprint("elsewhere"),
                next: vec![5],
            }],
        };
        assert_eq!(r.vector_of(&other), r.position());
    }

    #[test]
    fn since_starts_at_the_first_entry_that_late_unless_one_was_evicted() {
        let now = Instant::now();
        // Entry s has time s.
        let mut r = Replay::new(limits(3, 1000));
        fill(&mut r, 1..=5, now);
        let read_all = |range: Range| read(&r, range);
        assert_eq!(read_all(r.since(4, 5).unwrap()), "45");
        assert_eq!(read_all(r.since(6, 5).unwrap()), "");
        assert_eq!(r.since(2, 5), None, "entry 2 was evicted");
    }

    #[test]
    fn a_foreign_cursor_ahead_elsewhere_is_kept_in_the_replayed_ids() {
        let now = Instant::now();
        let mut r = Replay::new(limits(100, 1 << 20));
        r.start_partition("t", 0, 0);
        r.start_partition("t", 1, 0);
        for (seq, (p, off)) in [(0, 0), (1, 0), (0, 1), (1, 1)].into_iter().enumerate() {
            let pos = r.advance("t", p, off);
            let frame = crate::sse::frame::event(r.cursor(), None, &format!("{p}:{off}"));
            r.push(seq as u64 + 1, Some(pos), Target::Broadcast, frame, 1, now);
        }
        // Another node gave this stream 0:0 and 1:0..=1: it is owed 0:1,
        // whose own id here ([2, 1]) is behind it on partition 1.
        let v: Vector = vec![vec![1, 2]].into();
        assert!(r.covers(&v));
        let mut range = r.range_from(v, 4);
        let Chunk::Frames(bytes, 1) = r.chunk(&mut range, 1 << 16, |_| true) else {
            panic!("one frame")
        };
        let id = crate::sse::frame::id_of(&bytes).unwrap();
        let c = Cursor::decode(id).unwrap();
        let fp = cursor::fingerprint("t");
        assert_eq!((c.get(fp, 0), c.get(fp, 1)), (Some(2), Some(2)));
        assert!(std::str::from_utf8(&bytes).unwrap().contains("data: 0:1\n"));
    }

    #[test]
    fn with_nothing_held_the_floor_is_the_position() {
        let now = Instant::now();
        let mut r = Replay::new(limits(0, 0));
        two_partitions(&mut r, now);
        assert!(r.covers(&r.position()));
        assert!(!r.covers(&[vec![102, 203]]));
    }
}
