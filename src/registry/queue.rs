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
//!   [`Bytes`] (copied together when there is more than one frame, and
//!   framed in that copy as the transport frames a write when it asks:
//!   [`Framing`]), so a burst leaves in one write instead of one write per
//!   frame.
//!
//! - Direct sends: a transport that can write without waiting (herald's
//!   HTTP/1.1 writer) installs its [`Wire`] once the stream is live. An
//!   event for an empty queue whose stream is not writing is then *claimed*
//!   ([`Push::Claimed`]) instead of queued: the dispatcher writes it to the
//!   socket itself after releasing its locks ([`Queue::send_claimed`]), and
//!   the stream's task is neither woken nor polled. One writer at a time:
//!   while a claim is out the stream drains nothing, and while the stream
//!   writes a batch nothing is claimed, so bytes leave in dispatch order.
//!
//! Memory: an idle queue is one lock word, an empty `VecDeque` (no heap), an
//! `Option<Waker>` and the wire's handle; under load it holds at most
//! `max_frames` entries of 40
//! bytes (a frame handle and its event's timestamp, for the delivery-lag
//! histogram) plus `max_bytes` of frames shared with every other subscriber.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;

/// Deque capacity a stream is brought back to after a burst (40 bytes per
/// entry); it keeps up to twice this between drains.
const KEEP_CAPACITY: usize = 16;

/// The timestamp that marks a queued entry as wire bytes: the rest of a
/// direct send the socket took only part of, already framed by the
/// transport, to be written before anything else.
const WIRE_BYTES: u64 = u64::MAX;

/// A transport's way to write one frame at once, without waiting (see the
/// module doc: direct sends).
pub trait Wire: Send + Sync + std::fmt::Debug {
    /// Writes `frame`, framed as this transport frames it, if the socket
    /// takes it now.
    fn send(&self, frame: &[u8]) -> Sent;
}

/// How much of a direct send the socket took.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// All of it.
    All,
    /// Nothing (the socket is full, or failed): the frame is queued.
    Nothing,
    /// Part: these wire bytes (framing included) must follow.
    Part(Bytes),
}

/// How a transport frames one write, so that a batch copied together is
/// framed in the same copy ([`Queue::poll_drain`]) and leaves as one
/// buffer: a head made from the data's length, and a fixed tail.
#[derive(Debug)]
pub struct Framing {
    /// Writes the head for `len` bytes of data into `out`; returns its
    /// length.
    pub head: fn(len: usize, out: &mut [u8; FRAMING_HEAD_MAX]) -> usize,
    pub tail: &'static [u8],
}

/// The longest head a [`Framing`] writes.
pub const FRAMING_HEAD_MAX: usize = 18;

/// Whether the CPU has `prefetchw` (CPUID 8000_0001h, ECX bit 8).
#[cfg(target_arch = "x86_64")]
static PREFETCHW: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::arch::x86_64::__cpuid(0x8000_0001).ecx & (1 << 8) != 0);

/// Who writes to the connection now.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// Not live yet (the preamble, a replay or a catch-up is being
    /// written): nothing is claimed until the stream first drains live.
    #[default]
    Off,
    /// Nobody: the next event may be claimed.
    Idle,
    /// The stream, a drained batch (until it asks for the next one).
    Stream,
    /// A dispatcher, a claimed frame (until [`Queue::send_claimed`]).
    Dispatcher,
}

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
    /// Closed by an operator (the admin API: a user's streams closed with a
    /// reason): deliver what is queued (ending with the `herald-closed`
    /// event), then end.
    Admin,
}

impl CloseReason {
    /// Every reason, for registering the metric's label values.
    pub const ALL: [CloseReason; 9] = [
        CloseReason::Client,
        CloseReason::Slow,
        CloseReason::Shutdown,
        CloseReason::Expired,
        CloseReason::WriteTimeout,
        CloseReason::Error,
        CloseReason::Protocol,
        CloseReason::Refused,
        CloseReason::Admin,
    ];

    /// Whether queued frames are still delivered before the end.
    pub fn delivers_queued(self) -> bool {
        matches!(
            self,
            CloseReason::Shutdown | CloseReason::Expired | CloseReason::Admin
        )
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
            CloseReason::Admin => "admin",
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
    /// Claimed for a direct send: the caller must hand the frame to
    /// [`Queue::send_claimed`] once it holds no lock.
    Claimed,
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
    /// Wire bytes, already framed (the rest of a direct send): written as
    /// they are. Such a batch holds nothing else.
    pub wire: bool,
    /// Framed as the drain was asked to (its frames copied together):
    /// written as they are.
    pub framed: bool,
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
    /// The transport's direct writer, once the stream is live.
    wire: Option<Arc<dyn Wire>>,
    writer: Writer,
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
        self.push(frame, ts_us, now_us, 0, false, limits)
    }

    /// The general push: [`Queue::try_push`], and
    /// - unless a frame was pushed within the last `quiet_us`
    ///   ([`Push::Recent`]): a heartbeat goes only to a stream that has sent
    ///   nothing for a while;
    /// - for an event with `may_claim`, when the stream is idle with nothing
    ///   queued and a wire installed: a claim for a direct send
    ///   ([`Push::Claimed`]).
    pub fn push(
        &self,
        frame: &Bytes,
        ts_us: u64,
        now_us: u64,
        quiet_us: u64,
        may_claim: bool,
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
        st.last_push_us = now_us;
        if may_claim
            && ts_us != 0
            && st.frames.is_empty()
            && st.writer == Writer::Idle
            && st.wire.is_some()
        {
            st.writer = Writer::Dispatcher;
            return (Push::Claimed, None);
        }
        if st.frames.is_empty() {
            st.oldest_at_us = now_us;
        }
        st.frames.push_back((frame.clone(), ts_us));
        st.bytes += frame.len();
        // While a claim is out the stream may not drain: its sender wakes
        // it once the claimed frame is on the wire.
        let waker = match st.writer {
            Writer::Dispatcher => None,
            _ => st.waker.take(),
        };
        (Push::Queued, waker)
    }

    /// Asks the CPU to bring this queue's state into its cache for
    /// writing, ahead of a [`Queue::push`]: a hint, with no effect on what
    /// the program does (and none off x86-64). For writing (`prefetchw`,
    /// where the CPU has it) because the line is usually held modified by
    /// the core whose stream last drained it: a plain prefetch would only
    /// share it, and the push's lock would still wait to take it over.
    #[inline]
    pub fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            let at = std::ptr::from_ref(&self.state).cast::<u8>();
            let lines = [at, at.wrapping_add(64)];
            if *PREFETCHW {
                for line in lines {
                    // SAFETY: a prefetch changes no memory and never faults,
                    // whatever the address; the CPU has the instruction.
                    #[allow(unsafe_code)]
                    unsafe {
                        std::arch::asm!("prefetchw [{0}]", in(reg) line, options(nostack, preserves_flags, readonly));
                    }
                }
            } else {
                for line in lines {
                    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                    // SAFETY: as above; SSE is part of x86-64.
                    #[allow(unsafe_code)]
                    unsafe {
                        _mm_prefetch::<_MM_HINT_T0>(line.cast());
                    }
                }
            }
        }
    }

    /// Sends a frame claimed by [`Queue::push`] through the wire,
    /// with no lock held by the caller. What the socket does not take is
    /// queued in front (the rest of a partial write as wire bytes), so the
    /// stream writes it before anything pushed since. Returns whether the
    /// frame reached the socket (whole, or its start with the rest queued),
    /// and the waker to wake when the stream has something to do.
    pub fn send_claimed(&self, frame: &Bytes, ts_us: u64) -> (bool, Option<Waker>) {
        let wire = self.state.lock().wire.clone();
        let sent = wire.map_or(Sent::Nothing, |w| w.send(frame));
        let mut st = self.state.lock();
        st.writer = Writer::Idle;
        let reached = match sent {
            Sent::All => true,
            Sent::Part(rest) => {
                st.bytes += rest.len();
                st.frames.push_front((rest, WIRE_BYTES));
                true
            }
            Sent::Nothing => {
                // Closed since the claim: delivered only if queued frames
                // still are.
                if st.closed.is_none_or(CloseReason::delivers_queued) {
                    if st.frames.is_empty() {
                        st.oldest_at_us = crate::fanout::unix_micros();
                    }
                    st.bytes += frame.len();
                    st.frames.push_front((frame.clone(), ts_us));
                }
                false
            }
        };
        let waker = if !st.frames.is_empty() || st.closed.is_some() {
            st.waker.take()
        } else {
            None
        };
        (reached, waker)
    }

    /// Installs (or, with `None`, removes) the transport's direct writer.
    /// It is used only once the stream drains live events
    /// ([`Queue::poll_drain`] with `live`): until then the stream writes
    /// its preamble and any replay. Remove it when the stream ends, so the
    /// queue does not keep the socket open.
    pub fn set_wire(&self, wire: Option<Arc<dyn Wire>>) {
        // The old handle is dropped after the lock is released: the last
        // one closes the socket.
        let old = std::mem::replace(&mut self.state.lock().wire, wire);
        drop(old);
    }

    /// Holds the queue's lock until the returned guard drops: a push to it
    /// waits meanwhile.
    #[cfg(test)]
    pub(crate) fn hold_for_tests(&self) -> impl Sized + '_ {
        self.state.lock()
    }

    /// Stops queueing event frames (see `State::parked`) and drops those
    /// queued: the catch-up that follows delivers them (a stream parked
    /// again after a gap in its replay held live events past it).
    pub fn park(&self) {
        let mut st = self.state.lock();
        st.parked = true;
        let event = |ts: u64| ts != 0 && ts != WIRE_BYTES;
        if st.frames.iter().any(|&(_, ts)| event(ts)) {
            st.frames.retain(|&(_, ts)| !event(ts));
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

    /// Takes everything queued as one batch; `Ready(Err)` once closed and
    /// empty; `Pending` (waker stored) when there is nothing yet. `live`:
    /// the stream is past its preamble and replay, and has written all it
    /// was handed, so direct sends may start (see the module doc).
    /// `framing`: a batch of several frames, which is copied together, is
    /// framed in that copy (a single frame is handed out as it is, shared).
    pub fn poll_drain(
        &self,
        cx: &mut Context<'_>,
        live: bool,
        framing: Option<&Framing>,
    ) -> Poll<Result<Batch, CloseReason>> {
        let mut st = self.state.lock();
        if st.writer == Writer::Dispatcher {
            // A direct send is in flight: its sender wakes us after it.
            match &mut st.waker {
                Some(w) => w.clone_from(cx.waker()),
                None => st.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        if live || st.writer != Writer::Off {
            st.writer = if st.frames.is_empty() {
                Writer::Idle
            } else {
                Writer::Stream
            };
        }
        if st.frames.front().is_some_and(|&(_, ts)| ts == WIRE_BYTES) {
            let (bytes, _) = st.frames.pop_front().unwrap_or_default();
            st.bytes -= bytes.len();
            return Poll::Ready(Ok(Batch {
                bytes,
                frames: 1,
                events: 0,
                oldest_us: 0,
                wire: true,
                framed: false,
            }));
        }
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
                    wire: false,
                    framed: false,
                }))
            }
            n => {
                let len = std::mem::replace(&mut st.bytes, 0);
                // Copying a burst into one buffer is cheaper than handing the
                // HTTP layer n chunks (n chunk headers, n iovecs, and hyper
                // flushes every 16 queued buffers). The copy is made under
                // the lock so the deque keeps its capacity: a stream under
                // steady load then never reallocates it.
                let mut head = [0u8; FRAMING_HEAD_MAX];
                let (head_len, tail) = match framing {
                    Some(f) => ((f.head)(len, &mut head), f.tail),
                    None => (0, &[][..]),
                };
                let mut buf = BytesMut::with_capacity(head_len + len + tail.len());
                buf.put_slice(&head[..head_len]);
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
                // that once absorbed a burst does not keep its deque; one
                // grown only to twice what it keeps is left so, so that a
                // stream whose writes each carry a few more frames than
                // that is not grown and shrunk on every write.
                if st.frames.capacity() > 2 * KEEP_CAPACITY {
                    st.frames.shrink_to(KEEP_CAPACITY);
                }
                drop(st);
                buf.put_slice(tail);
                Poll::Ready(Ok(Batch {
                    bytes: buf.freeze(),
                    frames: n,
                    events,
                    oldest_us,
                    wire: false,
                    framed: framing.is_some(),
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
        q.poll_drain(&mut Context::from_waker(w), true, None)
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
    fn a_batch_of_several_frames_is_framed_in_its_copy_a_single_frame_is_not() {
        static BRACKETS: Framing = Framing {
            head: |len, out| {
                out[..3].copy_from_slice(format!("<{len}>").as_bytes());
                3
            },
            tail: b"</>",
        };
        let q = Queue::new();
        let framed = |q: &Queue| match q.poll_drain(
            &mut Context::from_waker(Waker::noop()),
            true,
            Some(&BRACKETS),
        ) {
            Poll::Ready(Ok(b)) => (b.bytes, b.framed, b.events),
            other => panic!("{other:?}"),
        };
        q.try_push(&Bytes::from_static(b"ab"), 5, 0, LIMITS);
        q.try_push(&Bytes::from_static(b":"), 0, 0, LIMITS);
        q.try_push(&Bytes::from_static(b"cd"), 7, 0, LIMITS);
        let (bytes, was_framed, events) = framed(&q);
        assert_eq!(
            (&bytes[..], was_framed, events),
            (&b"<5>ab:cd</>"[..], true, 2)
        );
        // One frame is handed out shared, as it is: the transport frames it.
        let one = Bytes::from_static(b"ef");
        q.try_push(&one, 9, 0, LIMITS);
        let (bytes, was_framed, _) = framed(&q);
        assert_eq!((&bytes[..], was_framed), (&b"ef"[..], false));
        assert_eq!(bytes.as_ptr(), one.as_ptr(), "not copied");
    }

    #[test]
    fn a_burst_gives_its_capacity_back_a_few_frames_more_than_kept_do_not() {
        let big = Limits {
            max_frames: 1000,
            max_bytes: 1 << 20,
            stall: None,
        };
        let q = Queue::new();
        let fill = |n: usize| {
            for _ in 0..n {
                q.try_push(&Bytes::from_static(b"e"), 1, 0, big);
            }
            assert!(drain(&q, Waker::noop()).is_ready());
            q.state.lock().frames.capacity()
        };
        // A burst of 500: brought back to what a stream keeps.
        assert_eq!(fill(500), KEEP_CAPACITY);
        // Writes of 24 frames grow it once, then leave it as it is.
        let grown = fill(24);
        assert!((24..=2 * KEEP_CAPACITY).contains(&grown), "{grown}");
        for _ in 0..3 {
            assert_eq!(fill(24), grown);
        }
        assert_eq!(fill(2), grown, "kept between drains");
        assert_eq!(fill(500), KEEP_CAPACITY);
    }

    #[test]
    fn a_heartbeat_goes_only_to_a_queue_quiet_for_long_enough() {
        let q = Queue::new();
        let hb = Bytes::from_static(b":\n\n");
        let made = q.state.lock().last_push_us;
        // Just made (its preamble just went out): recent.
        assert_eq!(
            q.push(&hb, 0, made + 499, 500, false, LIMITS).0,
            Push::Recent
        );
        assert_eq!(
            q.push(&hb, 0, made + 500, 500, false, LIMITS).0,
            Push::Queued
        );
        let q = Queue::default();
        assert_eq!(q.push(&hb, 0, 1_000, 500, false, LIMITS).0, Push::Queued);
        assert_eq!(
            q.try_push(&Bytes::from_static(b"e"), 1, 2_000, LIMITS).0,
            Push::Queued
        );
        // 499 µs after the event: recent, nothing queued.
        assert_eq!(q.push(&hb, 0, 2_499, 500, false, LIMITS).0, Push::Recent);
        assert_eq!(q.len().0, 2);
        assert_eq!(q.push(&hb, 0, 2_500, 500, false, LIMITS).0, Push::Queued);
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

    /// A socket that takes up to `room` bytes per send (usize::MAX: all).
    #[derive(Debug)]
    struct FakeWire {
        room: parking_lot::Mutex<usize>,
        took: parking_lot::Mutex<Vec<u8>>,
    }

    impl FakeWire {
        fn new(room: usize) -> Arc<Self> {
            Arc::new(Self {
                room: parking_lot::Mutex::new(room),
                took: parking_lot::Mutex::new(Vec::new()),
            })
        }
    }

    impl Wire for FakeWire {
        fn send(&self, frame: &[u8]) -> Sent {
            let n = frame.len().min(*self.room.lock());
            self.took.lock().extend_from_slice(&frame[..n]);
            match n {
                0 => Sent::Nothing,
                n if n == frame.len() => Sent::All,
                n => Sent::Part(Bytes::copy_from_slice(&frame[n..])),
            }
        }
    }

    const ROOMY: Limits = Limits {
        max_frames: 100,
        max_bytes: 1000,
        stall: None,
    };

    fn claim(q: &Queue, frame: &'static [u8]) -> (Push, Option<Waker>) {
        q.push(&Bytes::from_static(frame), 7, 0, 0, true, ROOMY)
    }

    /// A queue with a wire whose stream waits on it (waker stored).
    fn live(room: usize) -> (Queue, Arc<FakeWire>, Arc<Count>, Waker) {
        let q = Queue::new();
        let wire = FakeWire::new(room);
        q.set_wire(Some(wire.clone()));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        assert!(drain(&q, &waker).is_pending());
        (q, wire, count, waker)
    }

    #[test]
    fn an_idle_live_stream_gets_an_event_sent_directly() {
        let (q, wire, count, waker) = live(usize::MAX);
        let (p, w) = claim(&q, b"e1");
        assert_eq!(p, Push::Claimed);
        assert!(w.is_none(), "a claim wakes nobody");
        // Pushed while the claim is out: queued behind it, nobody woken,
        // and the stream drains nothing until the claimed frame is out.
        let (p, w) = claim(&q, b"e2");
        assert_eq!(p, Push::Queued);
        assert!(w.is_none());
        assert!(drain(&q, &waker).is_pending());
        let (reached, w) = q.send_claimed(&Bytes::from_static(b"e1"), 7);
        assert!(reached);
        assert_eq!(&wire.took.lock()[..], b"e1");
        w.expect("e2 waits: wake the stream").wake();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        match drain(&q, &waker) {
            Poll::Ready(Ok(b)) => assert_eq!((&b.bytes[..], b.wire), (&b"e2"[..], false)),
            other => panic!("{other:?}"),
        }
        // The stream has a batch in flight: no claim until it asks again.
        assert_eq!(claim(&q, b"e3").0, Push::Queued);
        assert!(matches!(drain(&q, &waker), Poll::Ready(Ok(_))));
        assert!(drain(&q, &waker).is_pending());
        assert_eq!(claim(&q, b"e4").0, Push::Claimed);
        let (reached, w) = q.send_claimed(&Bytes::from_static(b"e4"), 7);
        assert!(reached && w.is_none(), "nothing else queued: no wake-up");
        assert_eq!(&wire.took.lock()[..], b"e1e4");
    }

    #[test]
    fn no_claim_without_a_wire_before_live_for_heartbeats_or_behind_queued_frames() {
        let q = Queue::new();
        assert_eq!(claim(&q, b"e").0, Push::Queued, "no wire");
        // A wire, but the stream is still writing its preamble or replay
        // (it drains only heartbeats, not live): nothing is claimed.
        let q = Queue::new();
        q.set_wire(Some(FakeWire::new(usize::MAX)));
        assert_eq!(claim(&q, b"e").0, Push::Queued, "not live yet");
        let w = Waker::noop();
        assert!(q
            .poll_drain(&mut Context::from_waker(w), false, None)
            .is_ready());
        assert!(q
            .poll_drain(&mut Context::from_waker(w), false, None)
            .is_pending());
        assert_eq!(claim(&q, b"e").0, Push::Queued, "still not live");
        assert!(q
            .poll_drain(&mut Context::from_waker(w), true, None)
            .is_ready());
        assert!(q
            .poll_drain(&mut Context::from_waker(w), true, None)
            .is_pending());
        assert_eq!(claim(&q, b"e").0, Push::Claimed, "live and idle");
        let (q, _wire, _count, _waker) = live(usize::MAX);
        let hb = Bytes::from_static(b":\n\n");
        assert_eq!(q.push(&hb, 0, 0, 0, true, ROOMY).0, Push::Queued);
        assert_eq!(claim(&q, b"e").0, Push::Queued, "behind a queued frame");
        let (q, _wire, _count, _waker) = live(usize::MAX);
        let f = Bytes::from_static(b"e");
        assert_eq!(q.push(&f, 7, 0, 0, false, ROOMY).0, Push::Queued);
        let (q, _wire, _count, _waker) = live(usize::MAX);
        q.set_wire(None);
        assert_eq!(claim(&q, b"e").0, Push::Queued, "wire taken back");
    }

    #[test]
    fn what_the_socket_does_not_take_is_written_first() {
        // Part: the rest, as wire bytes, before a frame pushed meanwhile.
        let (q, wire, _count, waker) = live(2);
        assert_eq!(claim(&q, b"abcde").0, Push::Claimed);
        assert_eq!(claim(&q, b"f").0, Push::Queued);
        let (reached, w) = q.send_claimed(&Bytes::from_static(b"abcde"), 7);
        assert!(reached, "its start is on the wire");
        assert!(w.is_some());
        assert_eq!(&wire.took.lock()[..], b"ab");
        match drain(&q, &waker) {
            Poll::Ready(Ok(b)) => {
                assert_eq!(&b.bytes[..], b"cde");
                assert!(b.wire);
                assert_eq!(b.events, 0, "counted when sent");
            }
            other => panic!("{other:?}"),
        }
        match drain(&q, &waker) {
            Poll::Ready(Ok(b)) => {
                assert_eq!((&b.bytes[..], b.wire, b.events), (&b"f"[..], false, 1))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(q.len(), (0, 0));
        // Nothing: the frame itself is queued, in front.
        let (q, _wire, _count, waker) = live(0);
        assert_eq!(claim(&q, b"g").0, Push::Claimed);
        assert_eq!(claim(&q, b"h").0, Push::Queued);
        let (reached, w) = q.send_claimed(&Bytes::from_static(b"g"), 7);
        assert!(!reached);
        assert!(w.is_some());
        match drain(&q, &waker) {
            Poll::Ready(Ok(b)) => assert_eq!((&b.bytes[..], b.events), (&b"gh"[..], 2)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_queue_closed_during_a_claim_still_ends_its_stream() {
        let (q, _wire, _count, waker) = live(0);
        assert_eq!(claim(&q, b"e").0, Push::Claimed);
        q.close(CloseReason::Slow, None)
            .expect("close wakes the stream")
            .wake();
        assert!(drain(&q, &waker).is_pending(), "the claim is out");
        let (reached, w) = q.send_claimed(&Bytes::from_static(b"e"), 7);
        assert!(!reached);
        w.expect("the stream must see the close").wake();
        assert!(matches!(
            drain(&q, &waker),
            Poll::Ready(Err(CloseReason::Slow))
        ));
        // A shutdown delivers what is queued: the unsent frame first.
        let (q, _wire, _count, waker) = live(0);
        assert_eq!(claim(&q, b"e").0, Push::Claimed);
        q.close(CloseReason::Shutdown, Some(Bytes::from_static(b"r")));
        assert!(drain(&q, &waker).is_pending(), "the claim is out");
        let (_, w) = q.send_claimed(&Bytes::from_static(b"e"), 7);
        assert!(w.is_some());
        match drain(&q, &waker) {
            Poll::Ready(Ok(b)) => assert_eq!(&b.bytes[..], b"er"),
            other => panic!("{other:?}"),
        }
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
