//! The stream core: everything an SSE stream does, whichever transport
//! carries it. herald's HTTP/1.1 writer (`http::h1`) and hyper's body
//! (`http::body`: h2 over TLS, h2c, HTTP/1.1 with the fast path off) only move
//! the bytes a [`Stream`] hands them and report how the connection ended.
//!
//! A stream, from open to close:
//! 1. [`Streams::open`] registers it with the dispatcher (which decides the
//!    resume: replayed frames, or a gap), enters its token's expiry, and
//!    ends it at once if the node is draining.
//! 2. [`Stream::poll_next`] hands out, in order: the preamble (or the reset
//!    event after a gap) and the replayed frames, packed into writes of up
//!    to [`PREFIX_WRITE_BYTES`]; then whatever the queue holds per wake-up,
//!    as one write, at most one write per `--write-coalesce` window (or,
//!    on a busy node, per `--write-coalesce-busy` window: [`Coalesce`]).
//! 3. It ends when the queue closes ([`Next::End`]: shutdown, token expiry,
//!    after what was queued; [`Next::Abort`]: slow, cut off now), or when
//!    the transport reports the client gone or a failed write
//!    ([`Stream::end`]).
//! 4. Dropping it unregisters it and counts the close by its reason.
//!
//! Accounting: frames handed to the transport count as delivered (on the
//! subscriber, summed at scrape time); one delivery-lag sample per
//! [`LAG_SAMPLE_EVERY`] writes.
//!
//! Where to add a stream feature: here, once. A transport learns nothing
//! new unless the feature changes how bytes leave (a new [`Next`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::time::Sleep;

use crate::abort::Abort;
use crate::event::Name;
use crate::expiry::Expiries;
use crate::fanout::{unix_micros, Fanout, Full, Join};
use crate::lifecycle::Lifecycle;
use crate::metrics as m;
use crate::registry::load::Load;
pub use crate::registry::queue::CloseReason;
use crate::registry::queue::{Batch, Queue};
pub use crate::registry::queue::{Framing, Sent, Wire, FRAMING_HEAD_MAX};
use crate::registry::{Subscriber, Subscription};
use crate::replay::{Chunk, Range};
use crate::sse::frame::{self, ResetReason};
use crate::sse::{EventId, IdError};

pub mod catchup;

use catchup::{CatchUp, Feed, FeedEnd, Item, Refused};

/// The preamble and replayed frames leave in writes of about this size.
pub const PREFIX_WRITE_BYTES: usize = 64 * 1024;

/// One delivery-lag sample per this many written batches per stream: the
/// histogram's buckets are shared by every core, so sampling keeps them from
/// becoming a per-write contention point.
pub const LAG_SAMPLE_EVERY: u32 = 16;

/// How every stream behaves (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The reconnection delay advertised to browsers (`retry:`).
    pub retry: Duration,
    /// Least time between two writes to one stream.
    pub coalesce: Coalesce,
    /// Count opens, closes and deliveries (`--metrics`).
    pub account: bool,
    /// Log each stream's open and close (`--access-log`).
    pub access_log: bool,
}

/// Least time between two writes to one stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct Coalesce {
    /// Always (`--write-coalesce`).
    pub always: Option<Duration>,
    /// After a write of two or more events on a busy node
    /// (`--write-coalesce-busy`; busy: `registry::load`): the stream's
    /// events arrive faster than it writes them, so holding its next write
    /// costs little latency and saves writes, the node's main cost. A
    /// stream that wrote one event, or any stream on a node that is not
    /// busy, is never held.
    pub busy: Option<Duration>,
}

/// [`Coalesce`] as a stream holds it: µs, 0 = none (8 bytes, not 32).
#[derive(Debug, Clone, Copy)]
struct Window {
    always_us: u32,
    busy_us: u32,
}

impl Window {
    fn new(c: Coalesce) -> Self {
        let us = |d: Option<Duration>| d.map_or(0, |d| d.as_micros().min(u32::MAX as u128) as u32);
        Self {
            always_us: us(c.always),
            busy_us: us(c.busy),
        }
    }

    /// The window after a write of `events` now, if any.
    fn after_write(self, events: usize, load: &Load) -> Option<Duration> {
        let us = if self.always_us != 0 {
            self.always_us
        } else if self.busy_us != 0 && events >= 2 && load.busy() {
            self.busy_us
        } else {
            return None;
        };
        Some(Duration::from_micros(us.into()))
    }
}

/// Opens streams: the dispatcher, token expiries and the node's phase.
#[derive(Debug)]
pub struct Streams {
    pub(crate) fanout: Arc<Fanout>,
    pub(crate) expiries: Expiries,
    pub(crate) lifecycle: Arc<Lifecycle>,
    pub(crate) settings: Settings,
    /// Where cursors the buffer can not serve are caught up (Kafka mode).
    pub(crate) catchup: Option<Arc<dyn CatchUp>>,
    /// Users an operator closed with a block: their new streams are refused
    /// until then, with the reason (at most [`MAX_BLOCKED`]).
    blocked: parking_lot::Mutex<std::collections::HashMap<Name, (std::time::Instant, Arc<str>)>>,
}

/// Most users blocked at once (the admin API's closes with a block).
pub const MAX_BLOCKED: usize = 100_000;

/// The block list is full (see [`MAX_BLOCKED`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockListFull;

/// What an admitted subscribe request opens.
#[derive(Debug)]
pub struct OpenRequest {
    pub user: Name,
    pub topics: Vec<Name>,
    /// The id to resume after, or one that could not be read.
    pub resume: Option<Result<EventId, IdError>>,
    /// Without `resume`: start from this time (µs since the epoch).
    pub since_us: Option<u64>,
    /// The token's `exp` (seconds since the epoch): the stream ends then.
    pub expires_at: Option<u64>,
    pub peer: SocketAddr,
    /// The connection's kill switch.
    pub conn: Arc<Abort>,
    /// Which transport serves it (HTTP/2 streams share their connection:
    /// an overflow ends only the stream).
    pub transport: Transport,
    /// `--max-streams-per-user`.
    pub max_per_user: Option<std::num::NonZeroUsize>,
    /// Whatever the admission reserved for the stream's life (an HTTP/2
    /// stream's per-address slot), released when it ends.
    pub lease: Option<Lease>,
}

/// Why a stream could not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Its user holds `--max-streams-per-user` streams already.
    Full,
    /// Its catch-up from Kafka can not be taken now.
    CatchUp(Refused),
}

impl From<Full> for OpenError {
    fn from(_: Full) -> Self {
        OpenError::Full
    }
}

impl From<Refused> for OpenError {
    fn from(r: Refused) -> Self {
        OpenError::CatchUp(r)
    }
}

/// The transport serving a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// herald's own HTTP/1.1 writer (plain or TLS, the request first on
    /// its connection).
    Herald,
    /// hyper's HTTP/1.1 (a connection that served a request first, or the
    /// fast path off).
    Hyper,
    /// HTTP/2 over TLS, or h2c (hyper).
    H2,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Herald => "h1",
            Transport::Hyper => "hyper-h1",
            Transport::H2 => "h2",
        }
    }
}

/// Something held for a stream's life and released when it ends.
pub type Lease = Box<dyn std::any::Any + Send + Sync>;

/// An open stream and the id it continues after (the
/// `herald-resumed-after` response header).
#[derive(Debug)]
pub struct Opened {
    pub after: EventId,
    pub stream: Stream,
}

/// What a transport does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Write these bytes (one write).
    Data(Bytes),
    /// Write these bytes as they are, already framed as the transport
    /// frames a write: the rest of a direct send (its own [`Wire`]'s), or a
    /// batch framed as it was copied together (its [`Framing`], see
    /// [`Stream::set_framing`]). Only a transport that installed one of
    /// them gets this.
    Wire(Bytes),
    /// The stream ended cleanly: finish the response (HTTP/1.1's last
    /// chunk, h2's END_STREAM) and close.
    End,
    /// Cut the stream off now: close the connection (HTTP/1.1) or reset the
    /// stream (h2).
    Abort,
}

/// One SSE stream's state, shared by every transport.
#[derive(Debug)]
pub struct Stream {
    sub: Subscription,
    /// The preamble and replayed frames not yet handed out; freed once they
    /// are, so a live stream does not carry it.
    prefix: Option<Box<Prefix>>,
    /// Least time between writes.
    window: Window,
    /// The window's timer: allocated on the first held write, reused while
    /// writes are held, freed on the first write that is not.
    hold: Option<Pin<Box<Sleep>>>,
    /// Set after a write within a window: the next batch waits for the timer.
    holding: bool,
    account: bool,
    /// How the transport frames a write, for batches framed as they are
    /// copied together.
    framing: Option<&'static Framing>,
    /// Batches written, for sampling the lag histogram.
    batches: u32,
    /// Why the stream ended, once it has (the queue's reason, or what the
    /// transport reported).
    ended: Option<CloseReason>,
    /// Held until the stream ends (see [`OpenRequest::lease`]).
    _lease: Option<Lease>,
    /// With `--access-log`: when it opened (logged when it ends).
    access: Option<Box<std::time::Instant>>,
}

#[derive(Debug)]
struct Prefix {
    head: Option<Bytes>,
    /// Being caught up from Kafka: its feed, read before the replay.
    catchup: Option<CatchingUp>,
    replay: Option<Replaying>,
    /// Live events drained while switching from the feed to the buffer:
    /// written after the replay.
    stash: Option<Batch>,
    /// Kafka mode: the catch-up a replay that meets a gap (its range
    /// evicted before it was read) goes on from instead of a reset.
    refill: Option<Arc<dyn CatchUp>>,
}

/// A stream being caught up from Kafka.
#[derive(Debug)]
struct CatchingUp {
    feed: Arc<Feed>,
    fanout: Arc<Fanout>,
    requested: Option<String>,
}

impl CatchingUp {
    /// Hands `subscriber` (registered parked) to the catch-up readers, from
    /// `from` or the time `since_us`; refused when too many wait already.
    fn start(
        catchup: &dyn CatchUp,
        subscriber: &Arc<Subscriber>,
        from: crate::replay::Vector,
        since_us: Option<u64>,
        fanout: Arc<Fanout>,
        requested: Option<String>,
    ) -> Result<Self, Refused> {
        let feed = Arc::new(Feed::new(PREFIX_WRITE_BYTES * 4));
        catchup.submit(catchup::Request {
            subscriber: subscriber.clone(),
            user: subscriber.user.clone(),
            from,
            since_us,
            feed: feed.clone(),
            opened: std::time::Instant::now(),
        })?;
        Ok(Self {
            feed,
            fanout,
            requested,
        })
    }
}

/// A resume being read from the replay buffer, a chunk per write: the
/// stream holds one chunk at most, never a copy of its whole range.
#[derive(Debug)]
struct Replaying {
    fanout: Arc<Fanout>,
    range: Range,
    /// Where live events start (a gap found mid-replay resets to it).
    latest: EventId,
    /// The id the client asked to resume after.
    requested: Option<String>,
}

// === impl Streams ===

impl Streams {
    pub fn new(fanout: Arc<Fanout>, lifecycle: Arc<Lifecycle>, settings: Settings) -> Self {
        Self {
            fanout,
            expiries: Expiries::default(),
            lifecycle,
            settings,
            catchup: None,
            blocked: Default::default(),
        }
    }

    /// Ends every stream of `user` with a `herald-closed` event carrying
    /// `reason` (what is queued is delivered first) and, with `block`,
    /// refuses the user's new streams for that long. Returns how many
    /// streams were closed.
    pub fn close_user(
        &self,
        user: &Name,
        reason: &str,
        block: Option<Duration>,
    ) -> Result<usize, BlockListFull> {
        if let Some(d) = block {
            let now = std::time::Instant::now();
            let mut blocked = self.blocked.lock();
            if blocked.len() >= MAX_BLOCKED {
                blocked.retain(|_, (until, _)| *until > now);
            }
            if blocked.len() >= MAX_BLOCKED && !blocked.contains_key(user) {
                return Err(BlockListFull);
            }
            blocked.insert(user.clone(), (now + d, Arc::from(reason)));
        }
        let subs = self.fanout.registry().user_subscribers(user);
        let last = frame::closed_by_operator(reason);
        for sub in &subs {
            sub.end(CloseReason::Admin, Some(last.clone()));
        }
        Ok(subs.len())
    }

    /// Why `user`'s new streams are refused, while an operator's block
    /// lasts.
    pub fn blocked(&self, user: &Name) -> Option<Arc<str>> {
        let mut blocked = self.blocked.lock();
        match blocked.get(user) {
            Some((until, reason)) if *until > std::time::Instant::now() => Some(reason.clone()),
            Some(_) => {
                blocked.remove(user);
                None
            }
            None => None,
        }
    }

    /// Streams whose cursors the buffer can not serve are sent to
    /// `catchup`.
    pub fn with_catchup(mut self, catchup: Arc<dyn CatchUp>) -> Self {
        self.catchup = Some(catchup);
        self
    }

    pub fn fanout(&self) -> &Arc<Fanout> {
        &self.fanout
    }

    /// Registers a stream and builds its first bytes; `Full` when its user
    /// holds `--max-streams-per-user` streams already, `CatchUp` when its
    /// cursor needs a catch-up from Kafka that can not be taken now.
    pub fn open(&self, req: OpenRequest) -> Result<Opened, OpenError> {
        let requested = match &req.resume {
            Some(Ok(id)) => Some(id.to_string()),
            _ => None,
        };
        let lease = req.lease;
        let sub = self.fanout.subscribe(Join {
            user: req.user,
            topics: req.topics,
            peer: Some(req.peer),
            conn: Some(req.conn),
            shared_conn: req.transport == Transport::H2,
            resume: req.resume,
            since_us: req.since_us,
            max_per_user: req.max_per_user,
        })?;
        let subscriber = sub.subscription.subscriber().clone();
        let catching = match (sub.catchup, &self.catchup) {
            (Some(from), Some(catchup)) => Some(CatchingUp::start(
                catchup.as_ref(),
                &subscriber,
                from,
                sub.since_us,
                self.fanout.clone(),
                requested.clone(),
            )?),
            // Not reading Kafka: nothing can serve it (not reached: a
            // cursor needs positions, which only Kafka mode has).
            (Some(_), None) => {
                subscriber.queue.unpark();
                None
            }
            (None, _) => None,
        };
        if let Some(at) = req.expires_at {
            self.expiries.add(at, &subscriber);
        }
        let retry = self.settings.retry.as_millis() as u64;
        // A stream registered after the drain took its snapshot of open
        // streams would be missed by it: end it here instead (it still gets
        // its preamble).
        if self.lifecycle.draining() {
            subscriber.end(CloseReason::Shutdown, Some(frame::retry_hint(retry)));
        }
        let head = match sub.reset {
            Some(reason) => frame::reset(retry, reason, requested.as_deref(), &sub.after),
            None => frame::preamble(retry, &sub.after),
        };
        let replay = sub.replay.map(|range| Replaying {
            fanout: self.fanout.clone(),
            range,
            latest: sub.latest.clone(),
            requested: requested.clone(),
        });
        if self.settings.access_log {
            let s = sub.subscription.subscriber();
            tracing::info!(
                target: ACCESS_LOG,
                event = "open",
                user = %s.user,
                topics = %Topics(&s.topics),
                peer = %crate::fmt::OrNone(s.peer),
                transport = req.transport.label(),
                resume = requested.as_deref().unwrap_or(""),
                start = match (&catching, &sub.reset, &replay) {
                    (Some(_), _, _) => "catch-up",
                    (_, Some(_), _) => "reset",
                    (_, _, Some(_)) => "replay",
                    _ => "live",
                },
                "stream opened"
            );
        }
        let mut stream =
            Stream::with_replay(sub.subscription, head, replay, &self.settings).leasing(lease);
        if let Some(prefix) = &mut stream.prefix {
            prefix.catchup = catching;
            prefix.refill = self.catchup.clone();
        }
        Ok(Opened {
            after: sub.after,
            stream,
        })
    }
}

// === impl Stream ===

impl Stream {
    /// A stream that starts with `head` (its preamble, or a reset).
    pub fn new(sub: Subscription, head: Bytes, settings: &Settings) -> Self {
        Self::with_replay(sub, head, None, settings)
    }

    fn with_replay(
        sub: Subscription,
        head: Bytes,
        replay: Option<Replaying>,
        settings: &Settings,
    ) -> Self {
        if settings.account {
            metrics::counter!(m::CONNECTIONS_OPENED).increment(1);
        }
        Self {
            sub,
            prefix: Some(Box::new(Prefix {
                head: Some(head),
                catchup: None,
                replay,
                stash: None,
                refill: None,
            })),
            window: Window::new(settings.coalesce),
            hold: None,
            holding: false,
            account: settings.account,
            framing: None,
            batches: 0,
            ended: None,
            _lease: None,
            access: settings
                .access_log
                .then(|| Box::new(std::time::Instant::now())),
        }
    }

    fn leasing(mut self, lease: Option<Lease>) -> Self {
        self._lease = lease;
        self
    }

    /// Lets the dispatcher write live events straight to this stream's
    /// socket through `wire` while the stream is idle (herald's HTTP/1.1
    /// writer; see `registry::queue`). Not with `--write-coalesce`, whose
    /// point is to hold writes back. (While a write is held for
    /// `--write-coalesce-busy`, the queue's writer is the stream, so no
    /// direct send overtakes it.)
    pub fn set_wire(&mut self, wire: Arc<dyn Wire>) {
        if self.window.always_us == 0 {
            self.queue().set_wire(Some(wire));
        }
    }

    /// Has live batches of several frames framed as `framing` frames a
    /// write, in the copy that puts them together ([`Next::Wire`]): the
    /// transport then writes one buffer, not the data between its head and
    /// tail (herald's HTTP/1.1 writer: a chunk).
    pub fn set_framing(&mut self, framing: &'static Framing) {
        self.framing = Some(framing);
    }

    /// The next thing to write, or how the stream ends. `Pending` stores the
    /// task's waker in the queue (and the coalescing timer): nothing is
    /// allocated per wait.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        if let Some(prefix) = &mut self.prefix {
            if prefix.catchup.is_some() {
                match prefix.poll_catchup(&self.sub, cx) {
                    Poll::Ready(Ok((bytes, events))) => {
                        self.account(events, 0);
                        return Poll::Ready(Next::Data(bytes));
                    }
                    Poll::Ready(Err(reason)) => {
                        self.ended.get_or_insert(reason);
                        return Poll::Ready(if reason.delivers_queued() {
                            Next::End
                        } else {
                            Next::Abort
                        });
                    }
                    Poll::Pending if prefix.catchup.is_some() => return Poll::Pending,
                    // Joined the live fan-out: on to the replay.
                    Poll::Pending => {}
                }
            }
            let (chunk, replayed) = prefix.next_write(self.sub.subscriber());
            // Live events drained while joining go after the whole replay
            // (an empty chunk: the head and the replay are done).
            let stash = if chunk.is_empty() {
                prefix.stash.take()
            } else {
                None
            };
            if prefix.is_done() {
                self.prefix = None;
            }
            self.account(replayed, 0);
            if !chunk.is_empty() {
                return Poll::Ready(Next::Data(chunk));
            }
            if self.prefix.as_ref().is_some_and(|p| p.catchup.is_some()) {
                // A gap sent it back to Kafka: wait on its feed.
                return self.poll_next(cx);
            }
            if let Some(batch) = stash {
                self.account(batch.events, batch.oldest_us);
                return Poll::Ready(Next::Data(batch.bytes));
            }
        }
        if self.holding {
            // A write within the window: let the window pass so what arrives
            // meanwhile joins the next write. Only the timer wakes the stream
            // (no waker in the queue: a push does not wake it to wait again);
            // a queue closed meanwhile is seen when the window ends.
            if let Some(sleep) = &mut self.hold {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            self.holding = false;
        }
        // Live, and the transport has written everything handed out (it
        // asks for more only then): direct sends may start.
        match self.queue().poll_drain(cx, true, self.framing) {
            Poll::Ready(Ok(batch)) if batch.wire => Poll::Ready(Next::Wire(batch.bytes)),
            Poll::Ready(Ok(batch)) => {
                self.account(batch.events, batch.oldest_us);
                match self
                    .window
                    .after_write(batch.events, self.sub.registry().load())
                {
                    Some(window) => {
                        let at = tokio::time::Instant::now() + window;
                        match &mut self.hold {
                            Some(sleep) => sleep.as_mut().reset(at),
                            None => self.hold = Some(Box::pin(tokio::time::sleep_until(at))),
                        }
                        self.holding = true;
                    }
                    None => self.hold = None,
                }
                Poll::Ready(if batch.framed {
                    Next::Wire(batch.bytes)
                } else {
                    Next::Data(batch.bytes)
                })
            }
            Poll::Ready(Err(reason)) => {
                self.ended.get_or_insert(reason);
                Poll::Ready(if reason.delivers_queued() {
                    Next::End
                } else {
                    Next::Abort
                })
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Whether the server closed the stream's queue for a reason that drops
    /// what is queued (a slow client): a transport holding a batch it may
    /// not write yet (HTTP/2 flow control) ends the stream instead of
    /// waiting on the client.
    pub fn cut_off(&self) -> bool {
        self.queue().closed().is_some_and(|r| !r.delivers_queued())
    }

    /// The transport saw the stream end (the client left, a write failed);
    /// the first reason recorded wins.
    pub fn end(&mut self, reason: CloseReason) {
        self.ended.get_or_insert(reason);
    }

    /// Records that `events` event frames were handed out; `oldest_us` is
    /// the oldest one's timestamp (0: none, e.g. replayed frames).
    fn account(&mut self, events: usize, oldest_us: u64) {
        if !self.account || events == 0 {
            return;
        }
        self.sub
            .subscriber()
            .delivered
            .fetch_add(events as u64, Ordering::Relaxed);
        if oldest_us != 0 && self.batches.is_multiple_of(LAG_SAMPLE_EVERY) {
            record_lag(oldest_us);
        }
        self.batches = self.batches.wrapping_add(1);
    }

    fn queue(&self) -> &Queue {
        &self.sub.subscriber().queue
    }

    /// Why the stream ended, as it would be counted now.
    pub fn reason(&self) -> CloseReason {
        let sub = self.sub.subscriber();
        // An aborted (stalled) connection drops the stream without polling
        // it again, so the queue is the authority on why it closed.
        self.queue()
            .closed()
            .or(self.ended)
            .or_else(|| sub.abort.as_ref().and_then(|a| a.recorded()))
            .unwrap_or(CloseReason::Client)
    }
}

/// One delivery-lag sample: the event stamped `oldest_us` is leaving now.
fn record_lag(oldest_us: u64) {
    static LAG: OnceLock<metrics::Histogram> = OnceLock::new();
    let lag_us = unix_micros().saturating_sub(oldest_us);
    LAG.get_or_init(|| metrics::histogram!(m::DELIVERY_LAG))
        .record(lag_us as f64 / 1e6);
}

/// For a frame the dispatcher wrote itself (a direct send): one lag sample
/// per [`LAG_SAMPLE_EVERY`] such sends on this thread, as a stream samples
/// its writes.
pub(crate) fn sample_lag(ts_us: u64) {
    thread_local! {
        static SENDS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    let n = SENDS.get();
    SENDS.set(n.wrapping_add(1));
    if n.is_multiple_of(LAG_SAMPLE_EVERY) {
        record_lag(ts_us);
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // The queue may outlive the stream (held by a catch-up or an expiry
        // entry): it must not keep the socket open.
        self.queue().set_wire(None);
        if let Some(c) = self.prefix.as_ref().and_then(|p| p.catchup.as_ref()) {
            c.feed.close();
        }
        if self.account {
            metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => self.reason().label())
                .increment(1);
        }
        if let Some(opened) = &self.access {
            let sub = self.sub.subscriber();
            tracing::info!(
                target: ACCESS_LOG,
                event = "close",
                user = %sub.user,
                peer = %crate::fmt::OrNone(sub.peer),
                reason = self.reason().label(),
                duration_ms = opened.elapsed().as_millis() as u64,
                events = sub.delivered.load(std::sync::atomic::Ordering::Relaxed),
                "stream closed"
            );
        }
    }
}

/// Topics for a log line, comma-separated.
struct Topics<'a>(&'a [Name]);

impl std::fmt::Display for Topics<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, t) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(t.as_str())?;
        }
        Ok(())
    }
}

/// The access log's target (`--access-log`).
pub const ACCESS_LOG: &str = "herald::access";

/// The close reason a failed read or write on a stream's connection means.
pub fn io_reason(e: &io::Error) -> CloseReason {
    match e.kind() {
        io::ErrorKind::TimedOut => CloseReason::WriteTimeout,
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::UnexpectedEof
        | io::ErrorKind::WriteZero => CloseReason::Client,
        _ => CloseReason::Error,
    }
}

// === impl Prefix ===

impl Prefix {
    /// The head (if not yet written) and the next chunk of the replay,
    /// about [`PREFIX_WRITE_BYTES`], as one buffer; and how many replayed
    /// frames it holds. Empty only once the prefix is done.
    fn next_write(&mut self, sub: &Arc<Subscriber>) -> (Bytes, usize) {
        let head = self.head.take();
        let Some(r) = &mut self.replay else {
            return (head.unwrap_or_default(), 0);
        };
        loop {
            let (tail, frames) =
                match r
                    .fanout
                    .replay_chunk(&mut r.range, PREFIX_WRITE_BYTES, |t| sub.wants(t))
                {
                    // The scan bound came first, nothing matched yet: go on.
                    Chunk::Frames(b, 0) if b.is_empty() && head.is_none() => continue,
                    Chunk::Frames(b, n) => (b, n),
                    Chunk::Done => {
                        self.replay = None;
                        (Bytes::new(), 0)
                    }
                    Chunk::Gap => (self.gap(sub), 0),
                };
            return match head {
                None => (tail, frames),
                Some(h) if tail.is_empty() => (h, 0),
                Some(h) => {
                    let mut buf = BytesMut::with_capacity(h.len() + tail.len());
                    buf.put_slice(&h);
                    buf.put_slice(&tail);
                    (buf.freeze(), frames)
                }
            };
        }
    }

    /// The rest of the replay was evicted before this client read it. In
    /// Kafka mode the stream is caught up from where it stands (live events
    /// it queued meanwhile are dropped: the catch-up brings them); if no
    /// catch-up can be taken now it ends as slow, and the client resumes
    /// from the last id it got. Else a reset, and the stream goes on where
    /// live events start.
    fn gap(&mut self, sub: &Arc<Subscriber>) -> Bytes {
        let Some(r) = self.replay.take() else {
            return Bytes::new();
        };
        if let (Some(refill), Some(at)) = (&self.refill, r.range.reached) {
            sub.queue.park();
            self.stash = None;
            match CatchingUp::start(refill.as_ref(), sub, at.into(), None, r.fanout, r.requested) {
                Ok(c) => self.catchup = Some(c),
                Err(_) => sub.end(CloseReason::Slow, None),
            }
            return Bytes::new();
        }
        frame::reset_event(ResetReason::NotRetained, r.requested.as_deref(), &r.latest)
    }

    fn is_done(&self) -> bool {
        self.head.is_none()
            && self.catchup.is_none()
            && self.replay.is_none()
            && self.stash.is_none()
    }

    /// While being caught up: the head, then what the feed holds, and the
    /// queue's heartbeats; `Pending` with `catchup` cleared once the stream
    /// joined the live fan-out (the replay is then set); the end if the
    /// queue closed or the feed failed.
    fn poll_catchup(
        &mut self,
        sub: &Subscription,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(Bytes, usize), CloseReason>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Ok((head, 0)));
        }
        let Some(c) = &self.catchup else {
            return Poll::Pending;
        };
        loop {
            match c.feed.poll(cx) {
                Poll::Ready(Item::Data(bytes, events)) => return Poll::Ready(Ok((bytes, events))),
                Poll::Ready(Item::End(FeedEnd::Live(range))) => {
                    self.replay = Some(Replaying {
                        fanout: c.fanout.clone(),
                        range,
                        latest: c.fanout.latest(),
                        requested: c.requested.clone(),
                    });
                    self.catchup = None;
                    return Poll::Pending;
                }
                Poll::Ready(Item::End(FeedEnd::Failed)) => {
                    return Poll::Ready(Err(CloseReason::Error));
                }
                Poll::Pending => {}
            }
            // The queue, parked: heartbeats and the end. An event in it
            // means the stream was just joined to the live fan-out, after
            // its feed ended: keep the batch for after the replay.
            match sub.subscriber().queue.poll_drain(cx, false, None) {
                Poll::Ready(Ok(batch)) if batch.events == 0 => {
                    return Poll::Ready(Ok((batch.bytes, 0)))
                }
                Poll::Ready(Ok(batch)) => {
                    self.stash = Some(batch);
                    continue;
                }
                Poll::Ready(Err(reason)) => return Poll::Ready(Err(reason)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests;
