//! Cursors: where a stream stands on every Kafka partition herald reads.
//!
//! In Kafka mode an event's id is the node's *position vector* right after
//! it: for every topic and partition the node reads, the offset of the next
//! record it has not yet dispatched. Every stream that got the event on this
//! node has by then been given every record meant for it below those
//! offsets (dispatch is one total order), so the vector is the same for all
//! of them: it is encoded once, into the shared frame. Any node resumes a
//! stream exactly from it, from its replay buffer when that still holds
//! everything from the cursor on, else by reading Kafka (`kafka::catchup`).
//!
//! Wire form: `c.` and then base64url (no padding) of
//!
//! ```text
//! version                 1 byte (1)
//! topic count             varint
//! per topic:
//!   CRC-32 of its name    4 bytes, little-endian
//!   partition count       varint
//!   base                  varint, the smallest of the offsets
//!   per partition 0..n:   varint, its offset minus base
//! ```
//!
//! One topic of 8 partitions is an id of 25 characters near offset 10^3 and
//! about 36 near 10^6 (partitions within 1% of each other). Offsets are
//! stored relative to their smallest so that balanced partitions cost one to
//! three bytes each.
//!
//! Decoding is strict and bounded ([`MAX_CURSOR_CHARS`], [`MAX_TOPICS`]):
//! anything else is a [`CursorError`], which resume answers with a reset
//! event, never a 400.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use integer_encoding::VarInt;

/// What every cursor starts with on the wire.
pub const PREFIX: &str = "c.";

/// Longest cursor text read at all (about 1,100 partitions' worth).
pub const MAX_CURSOR_CHARS: usize = 4096;

/// Most topics a cursor may name.
pub const MAX_TOPICS: usize = 64;

const VERSION: u8 = 1;

/// A position on every partition of some topics: for each, the offset of
/// the next record not yet seen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor {
    pub topics: Vec<TopicOffsets>,
}

/// One topic's part of a [`Cursor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicOffsets {
    /// [`fingerprint`] of the topic's name.
    pub fingerprint: u32,
    /// Next offset per partition, by partition number.
    pub next: Vec<i64>,
}

/// Why a cursor could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("is longer than {MAX_CURSOR_CHARS} characters")]
    TooLong,
    #[error("is not base64url")]
    Encoding,
    #[error("is of an unknown version")]
    Version,
    #[error("is cut short or has bytes left over")]
    Truncated,
    #[error("names more than {MAX_TOPICS} topics")]
    TooManyTopics,
    #[error("holds an offset out of range")]
    Offset,
}

/// How a cursor names a topic: CRC-32 of its name.
pub fn fingerprint(topic: &str) -> u32 {
    crc32fast::hash(topic.as_bytes())
}

// === impl Cursor ===

impl Cursor {
    /// The next offset on `partition` of the topic with this fingerprint,
    /// if the cursor names it.
    pub fn get(&self, fingerprint: u32, partition: i32) -> Option<i64> {
        let t = self.topics.iter().find(|t| t.fingerprint == fingerprint)?;
        t.next.get(usize::try_from(partition).ok()?).copied()
    }

    /// Whether the cursor names the topic at all.
    pub fn names(&self, fingerprint: u32) -> bool {
        self.topics.iter().any(|t| t.fingerprint == fingerprint)
    }

    /// Appends the wire form (with [`PREFIX`]) to `out`.
    pub fn encode_into(&self, out: &mut String) {
        encode_topics(
            self.topics
                .iter()
                .map(|t| (t.fingerprint, t.next.as_slice())),
            out,
        );
    }

    /// The wire form.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        self.encode_into(&mut s);
        s
    }

    /// Reads a cursor's wire form (with or without [`PREFIX`]).
    pub fn decode(s: &str) -> Result<Self, CursorError> {
        let s = s.strip_prefix(PREFIX).unwrap_or(s);
        if s.len() > MAX_CURSOR_CHARS {
            return Err(CursorError::TooLong);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| CursorError::Encoding)?;
        let mut r = Reader(&raw);
        if r.byte()? != VERSION {
            return Err(CursorError::Version);
        }
        let n = r.varint()?;
        if n > MAX_TOPICS as u64 {
            return Err(CursorError::TooManyTopics);
        }
        let mut topics = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let fp = u32::from_le_bytes([r.byte()?, r.byte()?, r.byte()?, r.byte()?]);
            let parts = r.varint()?;
            // Each partition takes at least a byte: a count larger than the
            // bytes left is a lie, refused before allocating for it.
            if parts > r.0.len() as u64 {
                return Err(CursorError::Truncated);
            }
            let base = r.offset(0)?;
            let mut next = Vec::with_capacity(parts as usize);
            for _ in 0..parts {
                next.push(r.offset(base)?);
            }
            topics.push(TopicOffsets {
                fingerprint: fp,
                next,
            });
        }
        if !r.0.is_empty() {
            return Err(CursorError::Truncated);
        }
        Ok(Self { topics })
    }
}

/// Appends the wire form of a cursor over these topics (fingerprint, next
/// offset per partition) to `out`, without building a [`Cursor`].
pub fn encode_topics<'a>(
    topics: impl ExactSizeIterator<Item = (u32, &'a [i64])>,
    out: &mut String,
) {
    let mut raw = [0u8; 512];
    let mut heap = Vec::new();
    let mut w = Writer {
        stack: &mut raw,
        len: 0,
        heap: &mut heap,
    };
    w.put(&[VERSION]);
    w.varint(topics.len() as u64);
    for (fp, next) in topics {
        w.put(&fp.to_le_bytes());
        w.varint(next.len() as u64);
        let base = next.iter().copied().min().unwrap_or(0).max(0);
        w.varint(base as u64);
        for &o in next {
            w.varint((o.max(0) - base) as u64);
        }
    }
    let bytes = w.bytes();
    out.push_str(PREFIX);
    URL_SAFE_NO_PAD.encode_string(bytes, out);
}

/// Bytes on the stack until they do not fit (no allocation for a cursor of
/// up to ~100 partitions).
struct Writer<'a> {
    stack: &'a mut [u8; 512],
    len: usize,
    heap: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn put(&mut self, b: &[u8]) {
        if self.heap.is_empty() && self.len + b.len() <= self.stack.len() {
            self.stack[self.len..self.len + b.len()].copy_from_slice(b);
            self.len += b.len();
            return;
        }
        if self.heap.is_empty() {
            self.heap.extend_from_slice(&self.stack[..self.len]);
        }
        self.heap.extend_from_slice(b);
    }

    fn varint(&mut self, v: u64) {
        let mut buf = [0u8; 10];
        let n = v.encode_var(&mut buf);
        self.put(&buf[..n]);
    }

    fn bytes(&self) -> &[u8] {
        if self.heap.is_empty() {
            &self.stack[..self.len]
        } else {
            self.heap
        }
    }
}

#[cfg(test)]
fn put_varint(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 10];
    let n = v.encode_var(&mut buf);
    out.extend_from_slice(&buf[..n]);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, CursorError> {
        let (&b, rest) = self.0.split_first().ok_or(CursorError::Truncated)?;
        self.0 = rest;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, CursorError> {
        let (v, n) = u64::decode_var(self.0).ok_or(CursorError::Truncated)?;
        self.0 = &self.0[n..];
        Ok(v)
    }

    /// A varint added to `base`, as a non-negative offset.
    fn offset(&mut self, base: i64) -> Result<i64, CursorError> {
        let v = i64::try_from(self.varint()?).map_err(|_| CursorError::Offset)?;
        base.checked_add(v).ok_or(CursorError::Offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cursor(next: &[i64]) -> Cursor {
        Cursor {
            topics: vec![TopicOffsets {
                fingerprint: fingerprint("events"),
                next: next.to_vec(),
            }],
        }
    }

    #[test]
    fn round_trips_and_is_compact() {
        let c = cursor(&[
            1_000_000, 1_000_013, 999_998, 1_000_200, 1_000_001, 1_000_002, 1_000_003, 1_000_004,
        ]);
        let s = c.encode();
        assert!(s.starts_with(PREFIX));
        assert_eq!(Cursor::decode(&s), Ok(c.clone()));
        assert!(s.len() <= 40, "{} chars: {s}", s.len());
        assert_eq!(c.get(fingerprint("events"), 3), Some(1_000_200));
        assert_eq!(c.get(fingerprint("events"), 8), None);
        assert_eq!(c.get(fingerprint("other"), 0), None);
        assert_eq!(c.get(fingerprint("events"), -1), None);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert_eq!(Cursor::decode("c.!!"), Err(CursorError::Encoding));
        assert_eq!(Cursor::decode("c."), Err(CursorError::Truncated));
        assert_eq!(Cursor::decode("c.Ag"), Err(CursorError::Version));
        let mut s = cursor(&[5, 6]).encode();
        s.truncate(s.len() - 2);
        assert!(Cursor::decode(&s).is_err());
        // 2^63 as an offset.
        let mut raw = vec![1, 1, 0, 0, 0, 0, 1];
        put_varint(&mut raw, 0);
        put_varint(&mut raw, 1 << 63);
        let s = URL_SAFE_NO_PAD.encode(&raw);
        assert_eq!(Cursor::decode(&s), Err(CursorError::Offset));
        // A partition count far beyond the bytes sent.
        let mut raw = vec![1, 1, 0, 0, 0, 0];
        put_varint(&mut raw, 1 << 40);
        assert_eq!(
            Cursor::decode(&URL_SAFE_NO_PAD.encode(&raw)),
            Err(CursorError::Truncated)
        );
        let mut raw = vec![1];
        put_varint(&mut raw, 1000);
        assert_eq!(
            Cursor::decode(&URL_SAFE_NO_PAD.encode(&raw)),
            Err(CursorError::TooManyTopics)
        );
        assert_eq!(
            Cursor::decode(&"A".repeat(MAX_CURSOR_CHARS + 1)),
            Err(CursorError::TooLong)
        );
    }

    /// The id sizes BENCHMARKS.md quotes (`cargo test --lib cursor_sizes
    /// -- --nocapture`): partitions spread over 1% above a base offset.
    #[test]
    fn cursor_sizes() {
        for (topics, parts, base) in [
            (1, 4, 1_000i64),
            (1, 8, 1_000),
            (1, 8, 1_000_000),
            (1, 8, 1_000_000_000),
            (1, 32, 1_000_000),
            (1, 64, 1_000_000),
            (3, 8, 1_000_000),
        ] {
            let spread = |p: i64| base + base / 100 * p / parts;
            let c = Cursor {
                topics: (0..topics)
                    .map(|t| TopicOffsets {
                        fingerprint: fingerprint(&format!("topic{t}")),
                        next: (0..parts).map(spread).collect(),
                    })
                    .collect(),
            };
            let old = format!("messages:{}:{}", parts - 1, spread(parts - 1));
            let len = c.encode().len();
            eprintln!(
                "{topics} topic(s) x {parts} partitions near {base}: {len} chars (old id {})",
                old.len()
            );
            // Relative offsets: no partition costs more than the varint of
            // the spread (at most 4 bytes here), not of the offset.
            let raw_max = 2 + topics as usize * (4 + 2 + 5 + parts as usize * 4);
            assert!(len <= 2 + raw_max.div_ceil(3) * 4, "{len}");
        }
    }

    proptest! {
        #[test]
        fn any_cursor_round_trips(
            topics in proptest::collection::vec(
                (any::<u32>(), proptest::collection::vec(0i64..i64::MAX / 2, 0..40)),
                0..6,
            )
        ) {
            let c = Cursor {
                topics: topics
                    .into_iter()
                    .map(|(fingerprint, next)| TopicOffsets { fingerprint, next })
                    .collect(),
            };
            prop_assert_eq!(Cursor::decode(&c.encode()), Ok(c));
        }

        #[test]
        fn decoding_never_panics(s in "[A-Za-z0-9_-]{0,80}") {
            let _ = Cursor::decode(&s);
        }
    }
}
