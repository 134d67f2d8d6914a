//! A stream caught up from Kafka: what it reads while a reader
//! (`kafka::catchup`) fills it, and how it joins the live fan-out.
//!
//! The stream is registered from the start, its queue parked (no events,
//! but heartbeats and its end). A reader pushes the frames meant for it into
//! its [`Feed`], bounded like a queue: a full feed holds the reader (never
//! grows), and a feed nobody drains for `--write-timeout` closes the stream
//! as slow. When the reader has passed the oldest position the replay buffer
//! still holds, it joins the stream to the live fan-out under the dispatch
//! lock (`Fanout::join_live`) and ends the feed with the range to read from
//! the buffer: the stream then reads the feed's last frames, that range, and
//! its queue, with no gap and no duplicate at either seam.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use parking_lot::{Condvar, Mutex};

use crate::event::Name;
use crate::registry::Subscriber;
use crate::replay::{Range, Vector};

/// Where a stream to catch up is sent (Kafka mode).
pub trait CatchUp: Send + Sync + fmt::Debug {
    /// Takes the stream, or refuses when too many wait already.
    fn submit(&self, req: Request) -> Result<(), Refused>;

    /// Streams waiting or being read for.
    fn in_progress(&self) -> usize;
}

/// Why a catch-up was refused (the admission answers 503 or 429).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("too many streams are waiting to be caught up from Kafka")]
    Busy,
    #[error("this user already has the most concurrent catch-ups allowed")]
    PerUser,
}

/// A stream to catch up.
#[derive(Debug)]
pub struct Request {
    pub subscriber: Arc<Subscriber>,
    pub user: Name,
    /// Where it stands, in the node's layout (`Replay::vector_of`).
    pub from: Vector,
    /// Start from this time instead (µs since the epoch): the reader
    /// looks up the offsets.
    pub since_us: Option<u64>,
    pub feed: Arc<Feed>,
    /// When it was opened (for the time-to-live histogram).
    pub opened: Instant,
}

/// Frames on their way from a reader thread to one stream: bounded.
#[derive(Debug)]
pub struct Feed {
    state: Mutex<FeedState>,
    room: Condvar,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct FeedState {
    buf: BytesMut,
    events: usize,
    waker: Option<Waker>,
    end: Option<FeedEnd>,
    /// The stream is gone: the reader drops it.
    gone: bool,
}

/// How a feed ends.
#[derive(Debug, PartialEq, Eq)]
pub enum FeedEnd {
    /// Joined the live fan-out: read this range of the buffer, then the
    /// queue.
    Live(Range),
    /// The reader failed (Kafka unreachable for too long): the stream ends
    /// and the client reconnects with its last id, losing nothing.
    Failed,
}

/// Why a push into a feed failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stalled {
    /// Nobody drained it within the deadline.
    Full,
    /// The stream is gone.
    Gone,
}

/// What a stream reads from its feed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item {
    Data(Bytes, usize),
    End(FeedEnd),
}

// === impl Feed ===

impl Feed {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(FeedState::default()),
            room: Condvar::new(),
            max_bytes: max_bytes.max(1),
        }
    }

    /// Appends a frame holding `events` events (reader thread). Waits while
    /// the feed is full, until `deadline`.
    pub fn push(&self, frame: &[u8], events: usize, deadline: Instant) -> Result<(), Stalled> {
        let mut st = self.state.lock();
        loop {
            if st.gone {
                return Err(Stalled::Gone);
            }
            if st.buf.is_empty() || st.buf.len() + frame.len() <= self.max_bytes {
                break;
            }
            if self.room.wait_until(&mut st, deadline).timed_out() {
                return Err(Stalled::Full);
            }
        }
        st.buf.extend_from_slice(frame);
        st.events += events;
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Ends the feed (after its last frame).
    pub fn finish(&self, end: FeedEnd) {
        let mut st = self.state.lock();
        st.end = Some(end);
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// [`Feed::finish`] for a caller holding a lock: the waker to wake
    /// once it is released.
    pub fn finish_under_lock(&self, end: FeedEnd) -> Option<Waker> {
        let mut st = self.state.lock();
        st.end = Some(end);
        st.waker.take()
    }

    /// Whether the stream is gone.
    pub fn is_gone(&self) -> bool {
        self.state.lock().gone
    }

    /// Everything fed so far as one write, or the end once all is read.
    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<Item> {
        let mut st = self.state.lock();
        if !st.buf.is_empty() {
            let bytes = st.buf.split().freeze();
            let events = std::mem::take(&mut st.events);
            drop(st);
            self.room.notify_all();
            return Poll::Ready(Item::Data(bytes, events));
        }
        if let Some(end) = st.end.take() {
            return Poll::Ready(Item::End(end));
        }
        match &mut st.waker {
            Some(w) => w.clone_from(cx.waker()),
            None => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The stream ended: a waiting reader lets go.
    pub(crate) fn close(&self) {
        let mut st = self.state.lock();
        st.gone = true;
        st.buf = BytesMut::new();
        drop(st);
        self.room.notify_all();
    }
}
