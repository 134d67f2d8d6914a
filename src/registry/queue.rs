//! A connection's outbound queue: bounded in frames and bytes, pushed by the
//! dispatcher without ever waiting, drained whole by the connection's stream (`crate::stream`).
//!
//! Rules:
//! - `try_push` never blocks beyond the queue's own short lock and never
//!   allocates except to grow the deque. A push that would exceed either bound
//!   closes the queue as [`CloseReason::Slow`] and frees what it held: the
//!   client reconnects with `Last-Event-ID` and is replayed what it missed.
//! - The waker is handed back to the caller instead of being woken under the
//!   lock, so the dispatcher can wake after releasing its shard lock, and only
//!   on the empty -> non-empty edge: a burst costs one wake-up per connection.
//! - `poll_drain` takes everything queued in one go and returns it as one
//!   [`Bytes`] (copied together when there is more than one frame), so a burst
//!   leaves in one write instead of one write per frame.
//!
//! Memory: an idle queue is one lock word, an empty `VecDeque` (no heap) and
//! an `Option<Waker>`; under load it holds at most `max_frames` entries of 40
//! bytes (a frame handle and its event's timestamp, for the delivery-lag
//! histogram) plus `max_bytes` of frames shared with every other subscriber.

use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;

/// Deque capacity a stream keeps between drains (40 bytes per entry).
const KEEP_CAPACITY: usize = 16;

/// Bounds of one connection's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most frames queued at once.
    pub max_frames: usize,
    /// Most frame bytes queued at once. A frame larger than this on its own is
    /// still accepted into an empty queue, so one big event can not wedge a
    /// healthy client.
    pub max_bytes: usize,
    /// A queue whose oldest frame has waited this long is stalled: its
    /// client reads nothing (or its transport holds it, as HTTP/2 flow
    /// control does), so the next push closes it as slow, even one that
    /// would fit (`--write-timeout`; `None`: never).
    pub stall: Option<std::time::Duration>,
}

/// Why a stream ended: one label per reason, for the
/// `herald_sse_connections_closed_total{reason}` counter and logs. The queue
/// records the reasons the server decides (slow, shutdown, expired); the
/// transports report the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client went away (closed its side, or the connection dropped).
    Client,
    /// The client did not read fast enough: the queue filled up.
    Slow,
    /// The server is shutting down: deliver what is queued, then end.
    Shutdown,
    /// The stream's token expired: deliver what is queued (ending with the
    /// `herald-token-expired` event), then end.
    Expired,
    /// A write waited longer than `--write-timeout` on a peer that reads
    /// nothing.
    WriteTimeout,
    /// The transport failed (an I/O error, an HTTP/2 reset).
    Error,
    /// The client sent bytes on its stream (an SSE client sends nothing).
    Protocol,
    /// Not a stream: a connection refused at the connection cap.
    Refused,
}

impl CloseReason {
    /// Every reason, for registering the metric's label values.
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Client,
        CloseReason::Slow,
        CloseReason::Shutdown,
        CloseReason::Expired,
        CloseReason::WriteTimeout,
        CloseReason::Error,
        CloseReason::Protocol,
        CloseReason::Refused,
    ];

    /// Whether queued frames are still delivered before the end.
    pub fn delivers_queued(self) -> bool {
        matches!(self, CloseReason::Shutdown | CloseReason::Expired)
    }

    /// Metric label for the close.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Slow => "slow",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Expired => "expired",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::Error => "error",
            CloseReason::Protocol => "protocol",
            CloseReason::Refused => "limit",
        }
    }
}

/// Outcome of a push. Not an error: a full queue is an expected event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// The queue was full: it is now closed as slow and its frames dropped.
    /// `dropped` counts them, this frame included.
    Overflow { dropped: usize },
    /// The queue was already closed; nothing queued.
    Closed,
    /// An event frame for a parked queue; not queued.
    Parked,
    /// A heartbeat for a queue that took a frame recently; not queued.
    Recent,
}

/// What the body gets from one drain.
#[derive(Debug)]
pub struct Batch {
    pub bytes: Bytes,
    pub frames: usize,
    /// Event frames among them (heartbeats and hints excluded).
    pub events: usize,
    /// Timestamp (µs since the epoch) of the oldest event frame, 0 if none.
    pub oldest_us: u64,
}

/// A bounded, drain-all queue of shared frames.
#[derive(Debug, Default)]
pub struct Queue {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Frames with their event's timestamp (µs since the epoch; 0 for
    /// frames that are not events: heartbeats, hints).
    frames: VecDeque<(Bytes, u64)>,
    /// Sum of `frames[i].len()`.
    bytes: usize,
    /// When the oldest queued frame was pushed (µs since the epoch).
    oldest_at_us: u64,
    /// When the last frame was pushed, or the queue made (µs since the
    /// epoch): a new stream has just been sent its preamble.
    last_push_us: u64,
    /// The body's waker, set while it waits on an empty queue.
    waker: Option<Waker>,
    closed: Option<CloseReason>,
    /// Event frames are not queued (the stream is being caught up from
    /// Kafka and joins the live fan-out later); heartbeats and the end are.
    parked: bool,
}

// === impl Queue ===

impl Queue {
    pub fn new() -> Self {
        let q = Self::default();
        q.state.lock().last_push_us = crate::fanout::unix_micros();
        q
    }

    /// Queues `frame` unless that would break `limits`. `now_us` is the
    /// caller's clock (µs since the epoch, one read per dispatched batch).
    /// Returns the outcome and, when the body must be woken, its waker: wake
    /// it after releasing any outer lock.
    pub fn try_push(
        &self,
        frame: &Bytes,
        ts_us: u64,
        now_us: u64,
        limits: Limits,
    ) -> (Push, Option<Waker>) {
        self.push_if_quiet(frame, ts_us, now_us, 0, limits)
    }

    /// [`Queue::try_push`], unless a frame was pushed within the last
    /// `quiet_us` ([`Push::Recent`]): a heartbeat goes only to a stream that
    /// has sent nothing for a while.
    pub fn push_if_quiet(
        &self,
        frame: &Bytes,
        ts_us: u64,
        now_us: u64,
        quiet_us: u64,
        limits: Limits,
    ) -> (Push, Option<Waker>) {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return (Push::Closed, None);
        }
        if st.parked && ts_us != 0 {
            return (Push::Parked, None);
        }
        if quiet_us > 0 && now_us.saturating_sub(st.last_push_us) < quiet_us {
            return (Push::Recent, None);
        }
        let stalled = !st.frames.is_empty()
            && limits
                .stall
                .is_some_and(|s| now_us.saturating_sub(st.oldest_at_us) > s.as_micros() as u64);
        let fits = !stalled
            && st.frames.len() < limits.max_frames
            && (st.bytes + frame.len() <= limits.max_bytes || st.frames.is_empty());
        if !fits {
            let dropped = st.frames.len() + 1;
            st.closed = Some(CloseReason::Slow);
            st.frames = VecDeque::new();
            st.bytes = 0;
            return (Push::Overflow { dropped }, st.waker.take());
        }
        if st.frames.is_empty() {
            st.oldest_at_us = now_us;
        }
        st.last_push_us = now_us;
        st.frames.push_back((frame.clone(), ts_us));
        st.bytes += frame.len();
        (Push::Queued, st.waker.take())
    }

    /// Stops queueing event frames (see `State::parked`) and drops those
    /// queued: the catch-up that follows delivers them (a stream parked
    /// again after a gap in its replay held live events past it).
    pub fn park(&self) {
        let mut st = self.state.lock();
        st.parked = true;
        if st.frames.iter().any(|&(_, ts)| ts != 0) {
            st.frames.retain(|&(_, ts)| ts == 0);
            st.bytes = st.frames.iter().map(|(f, _)| f.len()).sum();
        }
    }

    /// Queues event frames again. Call under the dispatch lock, so that
    /// the first event after it is the first one the stream gets live.
    pub fn unpark(&self) {
        self.state.lock().parked = false;
    }

    /// Closes the queue. With [`CloseReason::Shutdown`] or `Expired`, `last`
    /// (e.g. a `retry:` hint) is queued first, ignoring the limits, and what
    /// is queued is still delivered. Returns the waker to wake.
    pub fn close(&self, reason: CloseReason, last: Option<Bytes>) -> Option<Waker> {
        let mut st = self.state.lock();
        if st.closed.is_some() {
            return None;
        }
        if let Some(last) = last {
            st.bytes += last.len();
            st.frames.push_back((last, 0));
        }
        st.closed = Some(reason);
        st.waker.take()
    }

    /// Whether the queue has been closed, and why.
    pub fn closed(&self) -> Option<CloseReason> {
        self.state.lock().closed
    }

    /// `Ready` once there is something to drain (or the queue is closed);
    /// `Pending` (waker stored) while it is empty. Takes nothing.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.state.lock();
        if !st.frames.is_empty() || st.closed.is_some() {
            return Poll::Ready(());
        }
        match &mut st.waker {
            Some(w) => w.clone_from(cx.waker()),
            None => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Takes everything queued as one batch; `Ready(Err)` once closed and
    /// empty; `Pending` (waker stored) when there is nothing yet.
    pub fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<Result<Batch, CloseReason>> {
        let mut st = self.state.lock();
        match st.frames.len() {
            0 => {
                if let Some(reason) = st.closed {
                    return Poll::Ready(Err(reason));
                }
                match &mut st.waker {
                    Some(w) => w.clone_from(cx.waker()),
                    None => st.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            1 => {
                st.bytes = 0;
                let (bytes, ts) = st.frames.pop_front().unwrap_or_default();
                let events = usize::from(ts != 0);
                Poll::Ready(Ok(Batch {
                    bytes,
                    frames: 1,
                    events,
                    oldest_us: ts,
                }))
            }
            n => {
                let len = std::mem::replace(&mut st.bytes, 0);
                // Copying a burst into one buffer is cheaper than handing the
                // HTTP layer n chunks (n chunk headers, n iovecs, and hyper
                // flushes every 16 queued buffers). The copy is made under
                // the lock so the deque keeps its capacity: a stream under
                // steady load then never reallocates it.
                let mut buf = BytesMut::with_capacity(len);
                let (mut events, mut oldest_us) = (0, 0);
                for (f, ts) in st.frames.drain(..) {
                    buf.put_slice(&f);
                    if ts != 0 {
                        events += 1;
                        if oldest_us == 0 {
                            oldest_us = ts;
                        }
                    }
                }
                // A burst's worth of capacity is given back, so a stream
                // that once absorbed a burst does not keep its deque.
                if st.frames.capacity() > KEEP_CAPACITY {
                    st.frames.shrink_to(KEEP_CAPACITY);
                }
                drop(st);
                Poll::Ready(Ok(Batch {
                    bytes: buf.freeze(),
                    frames: n,
                    events,
                    oldest_us,
                }))
            }
        }
    }

    /// Frames and bytes queued now (for tests and gauges).
    pub fn len(&self) -> (usize, usize) {
        let st = self.state.lock();
        (st.frames.len(), st.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    const LIMITS: Limits = Limits {
        max_frames: 3,
        max_bytes: 10,
        stall: None,
    };

    fn drain(q: &Queue, w: &Waker) -> Poll<Result<Batch, CloseReason>> {
        q.poll_drain(&mut Context::from_waker(w))
    }

    #[test]
    fn drains_everything_in_one_batch_and_wakes_once() {
        let q = Queue::new();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        assert!(drain(&q, &waker).is_pending());

        let (p, w) = q.try_push(&Bytes::from_static(b"ab"), 5, 0, LIMITS);
        assert_eq!(p, Push::Queued);
        w.expect("first push wakes").wake();
        let (p, w) = q.try_push(&Bytes::from_static(b"cd"), 7, 0, LIMITS);
        assert_eq!(p, Push::Queued);
        assert!(w.is_none(), "second push must not wake again");
        assert_eq!(count.0.load(Ordering::Relaxed), 1);

        match drain(&q, &waker) {
            Poll::Ready(Ok(b)) => {
                assert_eq!(&b.bytes[..], b"abcd");
                assert_eq!((b.frames, b.events, b.oldest_us), (2, 2, 5));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(q.len(), (0, 0));
        assert!(drain(&q, &waker).is_pending());
    }

    #[test]
    fn a_heartbeat_goes_only_to_a_queue_quiet_for_long_enough() {
        let q = Queue::new();
        let hb = Bytes::from_static(b":\n\n");
        let made = q.state.lock().last_push_us;
        // Just made (its preamble just went out): recent.
        assert_eq!(
            q.push_if_quiet(&hb, 0, made + 499, 500, LIMITS).0,
            Push::Recent
        );
        assert_eq!(
            q.push_if_quiet(&hb, 0, made + 500, 500, LIMITS).0,
            Push::Queued
        );
        let q = Queue::default();
        assert_eq!(q.push_if_quiet(&hb, 0, 1_000, 500, LIMITS).0, Push::Queued);
        assert_eq!(
            q.try_push(&Bytes::from_static(b"e"), 1, 2_000, LIMITS).0,
            Push::Queued
        );
        // 499 µs after the event: recent, nothing queued.
        assert_eq!(q.push_if_quiet(&hb, 0, 2_499, 500, LIMITS).0, Push::Recent);
        assert_eq!(q.len().0, 2);
        assert_eq!(q.push_if_quiet(&hb, 0, 2_500, 500, LIMITS).0, Push::Queued);
        assert_eq!(q.len().0, 3);
    }

    #[test]
    fn parking_again_drops_queued_events_and_keeps_heartbeats() {
        let q = Queue::new();
        q.try_push(&Bytes::from_static(b"e1"), 1, 0, LIMITS);
        q.try_push(&Bytes::from_static(b":"), 0, 0, LIMITS);
        q.try_push(&Bytes::from_static(b"e2"), 2, 0, LIMITS);
        q.park();
        assert_eq!(q.len(), (1, 1));
        assert_eq!(
            q.try_push(&Bytes::from_static(b"e3"), 3, 0, LIMITS).0,
            Push::Parked
        );
    }

    #[test]
    fn overflow_by_frames_closes_as_slow_and_frees() {
        let q = Queue::new();
        let f = Bytes::from_static(b"x");
        for _ in 0..3 {
            assert_eq!(q.try_push(&f, 1, 0, LIMITS).0, Push::Queued);
        }
        assert_eq!(
            q.try_push(&f, 1, 0, LIMITS).0,
            Push::Overflow { dropped: 4 }
        );
        assert_eq!(q.len(), (0, 0));
        assert_eq!(q.try_push(&f, 1, 0, LIMITS).0, Push::Closed);
        let w = Waker::noop();
        assert!(matches!(drain(&q, w), Poll::Ready(Err(CloseReason::Slow))));
    }

    #[test]
    fn overflow_by_bytes_but_big_frame_fits_empty_queue() {
        let q = Queue::new();
        let big = Bytes::from(vec![b'x'; 50]);
        assert_eq!(q.try_push(&big, 1, 0, LIMITS).0, Push::Queued);
        assert_eq!(
            q.try_push(&Bytes::from_static(b"y"), 1, 0, LIMITS).0,
            Push::Overflow { dropped: 2 }
        );
    }

    #[test]
    fn shutdown_delivers_queued_then_ends() {
        let q = Queue::new();
        q.try_push(&Bytes::from_static(b"a"), 9, 0, LIMITS);
        q.close(CloseReason::Shutdown, Some(Bytes::from_static(b"r")));
        let w = Waker::noop();
        match drain(&q, w) {
            Poll::Ready(Ok(b)) => {
                assert_eq!(&b.bytes[..], b"ar");
                assert_eq!(
                    (b.frames, b.events, b.oldest_us),
                    (2, 1, 9),
                    "the hint is not an event"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            drain(&q, w),
            Poll::Ready(Err(CloseReason::Shutdown))
        ));
    }

    #[test]
    fn a_stalled_queue_is_closed_at_the_next_push() {
        let limits = Limits {
            max_frames: 100,
            max_bytes: 1000,
            stall: Some(std::time::Duration::from_secs(1)),
        };
        let q = Queue::new();
        let f = Bytes::from_static(b"x");
        assert_eq!(q.try_push(&f, 1, 10_000_000, limits).0, Push::Queued);
        assert_eq!(q.try_push(&f, 1, 10_900_000, limits).0, Push::Queued);
        // The oldest frame has waited more than a second: stalled.
        assert_eq!(
            q.try_push(&f, 1, 11_000_001, limits).0,
            Push::Overflow { dropped: 3 }
        );
        assert_eq!(q.closed(), Some(CloseReason::Slow));
        // A queue drained in time starts afresh.
        let q = Queue::new();
        assert_eq!(q.try_push(&f, 1, 0, limits).0, Push::Queued);
        assert!(matches!(drain(&q, Waker::noop()), Poll::Ready(Ok(_))));
        assert_eq!(q.try_push(&f, 1, 5_000_000, limits).0, Push::Queued);
    }
}
