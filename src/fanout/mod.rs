//! Dispatch: give each event its id, encode it once, keep it for replay and
//! queue the same [`Bytes`] to every connection it is for.
//!
//! One lock (`Fanout::state`, "the dispatch lock") orders everything that
//! must agree on "before" and "after": sequence numbers, replay appends,
//! routing, and new subscriptions. (An event for one user hands the order
//! on to that user's shard lock and routes after releasing it: see
//! `Fanout::publish`. A subscription registering meanwhile waits for that
//! shard, so the event is in its snapshot and not in its queue.) Because a subscriber is registered and its
//! replay snapshot taken under that lock, every event lands exactly once in
//! either the snapshot or the live queue: resume has no gap and no duplicate
//! at the seam.
//!
//! Lock order is dispatch > registry shard > connection queue. Under the
//! dispatch and shard locks only pushes happen: the wakers of the queues that
//! went non-empty and the streams that overflowed are collected there, and
//! woken, closed and logged after every lock is released (`Delivery`).
//!
//! Slow clients: a push that overflows a queue closes that connection
//! (reason `slow`); it is counted, and logged at most once a second with a
//! count; the publisher carries on. When many queues are deep at once,
//! herald itself is behind, and publishers are held back before they get
//! here (see `congestion`).

pub mod congestion;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use metrics::{counter, histogram, Counter, Histogram};
use parking_lot::{Mutex, MutexGuard};
use tokio::time::Instant;

use crate::abort::Abort;
use crate::event::{Event, Name, Target};
use crate::metrics as m;
use crate::registry::queue::{self, CloseReason, Push};
pub use crate::registry::Full;
use crate::registry::{Registry, RouteSink, Subscriber, Subscription};
use crate::replay::Vector;
use crate::replay::{self, Chunk, Range, Replay};
use crate::sse::frame::ResetReason;
use crate::sse::{frame, Cursor, EventId, IdError};

/// Where an event came from (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Http,
    Kafka,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Kafka => "kafka",
        }
    }
}

/// What happened to a publish held back because herald was behind: the
/// `herald_publish_backpressure_total{outcome}` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// It waited, then was published.
    Waited,
    /// It waited the whole `--publish-backpressure` and was refused.
    Refused,
}

impl Held {
    fn label(self) -> &'static str {
        match self {
            Held::Waited => "waited",
            Held::Refused => "refused",
        }
    }

    fn count(self, source: Source) {
        counter!(m::PUBLISH_BACKPRESSURE, "source" => source.label(), "outcome" => self.label())
            .increment(1);
    }
}

/// Who joins the fan-out (see [`Fanout::subscribe`]).
#[derive(Debug)]
pub struct Join {
    pub user: Name,
    pub topics: Vec<Name>,
    pub peer: Option<SocketAddr>,
    /// The connection's kill switch (and where its transport records what
    /// ended it).
    pub conn: Option<Arc<Abort>>,
    /// Other streams share the connection (HTTP/2).
    pub shared_conn: bool,
    /// Resume after this id (or an id that could not be read).
    pub resume: Option<Result<EventId, IdError>>,
    /// Without `resume`: start from this time (µs since the epoch).
    pub since_us: Option<u64>,
    /// `--max-streams-per-user`.
    pub max_per_user: Option<std::num::NonZeroUsize>,
}

impl Join {
    /// A stream of `user` with nothing else set.
    pub fn user(user: Name) -> Self {
        Self {
            user,
            topics: Vec::new(),
            peer: None,
            conn: None,
            shared_conn: false,
            resume: None,
            since_us: None,
            max_per_user: None,
        }
    }
}

/// A new subscription and what to send before live events.
#[derive(Debug)]
pub struct Subscribed {
    pub subscription: Subscription,
    /// The id the stream continues after: every later event reaches the
    /// connection (replay, then live).
    pub after: EventId,
    /// The id of the last event dispatched before the subscription: live
    /// events start after it.
    pub latest: EventId,
    /// The retained events to replay first (read a chunk at a time with
    /// [`Fanout::replay_chunk`]).
    pub replay: Option<Range>,
    /// The stream can not resume where it asked: it starts with a
    /// `herald-reset` event saying why, then live events.
    pub reset: Option<ResetReason>,
    /// The buffer does not hold what a cursor is owed: the stream is
    /// registered parked and must be caught up from Kafka from this
    /// position (see `stream::catchup`) before it joins the live fan-out.
    pub catchup: Option<Vector>,
    /// With `catchup`: start from this time instead of the position.
    pub since_us: Option<u64>,
}

/// How a subscription starts (decided under the dispatch lock).
enum Start {
    Live,
    Replay(Range),
    Reset(ResetReason),
    CatchUp(Vector),
}

/// The dispatcher.
#[derive(Debug)]
pub struct Fanout {
    registry: Arc<Registry>,
    /// This run's id epoch (see `sse::id`).
    epoch: u64,
    queue_limits: queue::Limits,
    congestion: congestion::Congestion,
    state: Mutex<State>,
    counters: Counters,
    /// Rate limit of the slow-close log lines.
    slow_log: Mutex<SlowLog>,
}

#[derive(Debug)]
struct State {
    /// Last sequence number issued; 0 before the first event.
    seq: u64,
    /// Id of the last event dispatched (`<epoch>-0` before the first).
    latest: EventId,
    replay: Replay,
}

#[derive(Debug)]
struct Counters {
    ingested_http: Counter,
    ingested_kafka: Counter,
    queued: Counter,
    sent_direct: Counter,
    dropped_slow: Counter,
    replayed: Counter,
    resume_clean: Counter,
    resume_gap: Counter,
    resume_catchup: Counter,
    fanout_seconds: Histogram,
    lock_held_seconds: Histogram,
}

/// What pushes leave to do once every lock is released: wake the writers of
/// queues that went non-empty, kill the connections whose queue overflowed.
/// Per thread and reused, so the pushes themselves never allocate once the
/// vectors have grown to a burst's size.
#[derive(Debug, Default)]
struct Delivery {
    wakers: Vec<Waker>,
    /// Frames claimed for direct sends, with their event's timestamp.
    direct: Vec<(Arc<Subscriber>, Bytes, u64)>,
    /// Overflowed streams and the frames each dropped.
    slow: Vec<(Arc<Subscriber>, usize)>,
}

thread_local! {
    static DELIVERY: RefCell<Delivery> = RefCell::new(Delivery::default());
}

/// One `Fanout::publish` call's state across its events.
struct Batch {
    /// The dispatcher's clock, read once per batch after the first lock.
    now: Instant,
    now_us: u64,
    /// Direct sends the batch may still claim.
    claims: usize,
    /// When the sampled event took the dispatch lock.
    locked_at: Option<Instant>,
    /// How long the sampled event held it.
    held: Option<Duration>,
    /// Frames queued by the batch's events.
    queued: u64,
}

/// Pushes one frame to each routed subscriber; collects wakers and overflows.
struct PushSink<'a> {
    frame: &'a Bytes,
    /// The event's timestamp, 0 for frames that are not events.
    ts_us: u64,
    /// The dispatcher's clock for this batch (µs since the epoch).
    now_us: u64,
    /// Heartbeats: skip queues pushed to within this long (0: none).
    quiet_us: u64,
    /// Direct sends this dispatch may still claim.
    claims: usize,
    limits: queue::Limits,
    out: &'a mut Delivery,
    queued: u64,
    dropped: u64,
}

/// At most one slow-close log line per this period; the line counts the
/// closes since the previous one.
const SLOW_LOG_EVERY: Duration = Duration::from_secs(1);

/// Most frames one HTTP publish writes to sockets itself (direct sends, see
/// `registry::queue`): an event for one user reaches its idle streams
/// without waking their tasks, while a broadcast's writes stay spread over
/// the workers. Kafka ingest claims none: its one thread is the node's
/// ingest budget, and a write costs it more than a wake-up (measured: twice
/// the CPU per record, BENCHMARKS.md).
pub const DIRECT_SENDS: usize = 16;

#[derive(Debug, Default)]
struct SlowLog {
    last: Option<std::time::Instant>,
    /// Slow closes not yet logged.
    pending: u64,
}

// === impl Fanout ===

impl Fanout {
    pub fn new(
        registry: Arc<Registry>,
        epoch: u64,
        queue_limits: queue::Limits,
        replay: replay::Limits,
    ) -> Self {
        // At zero from the start, so dashboards see the series before the
        // first overload.
        for (source, held) in [
            (Source::Http, Held::Waited),
            (Source::Http, Held::Refused),
            (Source::Kafka, Held::Waited),
        ] {
            counter!(m::PUBLISH_BACKPRESSURE, "source" => source.label(), "outcome" => held.label())
                .increment(0);
        }
        Self {
            registry,
            epoch,
            queue_limits,
            congestion: congestion::Congestion::new(queue_limits),
            state: Mutex::new(State {
                seq: 0,
                latest: EventId::Local { epoch, seq: 0 },
                replay: Replay::new(replay),
            }),
            counters: Counters {
                ingested_http: counter!(m::EVENTS_INGESTED, "source" => "http"),
                ingested_kafka: counter!(m::EVENTS_INGESTED, "source" => "kafka"),
                queued: counter!(m::EVENTS_QUEUED),
                sent_direct: counter!(m::EVENTS_SENT_DIRECT),
                dropped_slow: counter!(m::EVENTS_DROPPED, "reason" => "slow"),
                replayed: counter!(m::EVENTS_REPLAYED),
                resume_clean: counter!(m::RESUMES, "outcome" => "clean"),
                resume_gap: counter!(m::RESUMES, "outcome" => "gap"),
                resume_catchup: counter!(m::RESUMES, "outcome" => "catchup"),
                fanout_seconds: histogram!(m::FANOUT_DURATION),
                lock_held_seconds: histogram!(m::DISPATCH_LOCK_HELD),
            },
            slow_log: Mutex::new(SlowLog::default()),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn local_id(&self, seq: u64) -> EventId {
        EventId::Local {
            epoch: self.epoch,
            seq,
        }
    }

    /// Records how late the runtime's lag probe woke (`registry::load`);
    /// returns whether the probe may park (no publish for a while).
    pub fn record_lag(&self, late: std::time::Duration) -> bool {
        self.registry.load().tick(late)
    }

    /// Parks the lag probe until the next publish call.
    pub async fn park_probe(&self) {
        self.registry.load().park().await
    }

    /// Whether herald is behind on delivery (see `congestion`): sampled at
    /// most every few ms, cheap to ask per publish.
    pub fn congested(&self) -> bool {
        self.congestion.congested(&self.registry)
    }

    /// Waits (async) until herald is not behind, for at most `max`.
    /// `Ok(waited)`, or `Err(())` when still behind after `max` (the caller
    /// refuses the publish; nothing was dispatched). A zero `max` never
    /// waits.
    pub async fn room(&self, max: std::time::Duration) -> Result<bool, ()> {
        if max.is_zero() || !self.congested() {
            return Ok(false);
        }
        let deadline = Instant::now() + max;
        loop {
            tokio::time::sleep(congestion::RECHECK).await;
            if !self.congested() {
                Held::Waited.count(Source::Http);
                return Ok(true);
            }
            if Instant::now() >= deadline {
                Held::Refused.count(Source::Http);
                return Err(());
            }
        }
    }

    /// Like [`Fanout::room`] for a thread (the Kafka consumer): sleeps until
    /// herald is not behind, `max` passed or `stop` is set; then the caller
    /// dispatches anyway (Kafka keeps the records; pausing longer would
    /// only trade the consumer's group membership for queue room).
    pub fn room_blocking(&self, max: std::time::Duration, stop: &std::sync::atomic::AtomicBool) {
        if max.is_zero() || !self.congested() {
            return;
        }
        let deadline = std::time::Instant::now() + max;
        while self.congested()
            && std::time::Instant::now() < deadline
            && !stop.load(std::sync::atomic::Ordering::Relaxed)
        {
            std::thread::sleep(congestion::RECHECK);
        }
        Held::Waited.count(Source::Kafka);
    }

    /// Publishes a batch in order; returns each event's id. Callers
    /// validate event types and names first.
    ///
    /// Each event takes the dispatch lock for its id, encoding and replay
    /// append. An event for one user then locks that user's shard and, when
    /// none of the user's streams also takes topics, releases the dispatch
    /// lock before routing (lock coupling): the next event can start while
    /// this one is queued, and any later event reaching these streams needs
    /// this shard, so it is queued after. Other targets route under the
    /// dispatch lock.
    pub fn publish(&self, events: &[Event<'_>], source: Source) -> Vec<EventId> {
        let mut ids = Vec::with_capacity(events.len());
        DELIVERY.with_borrow_mut(|out| {
            let mut first = Some(self.state.lock());
            // One clock read per batch, not per event: reading the clock
            // twice per event was a quarter of Kafka ingest's CPU (perf,
            // 2026-11-23).
            let now = Instant::now();
            let mut batch = Batch {
                now,
                now_us: unix_micros(),
                claims: match source {
                    Source::Http => DIRECT_SENDS,
                    Source::Kafka => 0,
                },
                locked_at: None,
                held: None,
                queued: 0,
            };
            for (i, ev) in events.iter().enumerate() {
                let st = first.take().unwrap_or_else(|| self.state.lock());
                // The lock's hold is sampled once per batch, on its last
                // event (the first runs on cold caches after the thread
                // slept): a clock read per event would cost more than the
                // lock.
                batch.locked_at = (i + 1 == events.len()).then(|| match i {
                    0 => now,
                    _ => Instant::now(),
                });
                ids.push(self.dispatch(st, ev, &mut batch, out));
            }
            drop(first);
            if !events.is_empty() {
                let per_event = now.elapsed().as_secs_f64() / events.len() as f64;
                self.counters.fanout_seconds.record(per_event);
            }
            if let Some(h) = batch.held {
                self.counters.lock_held_seconds.record(h.as_secs_f64());
            }
            self.registry.load().count_queued(batch.queued);
            self.deliver(out);
        });
        match source {
            Source::Http => &self.counters.ingested_http,
            Source::Kafka => &self.counters.ingested_kafka,
        }
        .increment(events.len() as u64);
        ids
    }

    /// One event of a batch, `st` locked: its id, encoding and replay
    /// append, then routing (see `publish`). Returns its id.
    fn dispatch(
        &self,
        mut st: MutexGuard<'_, State>,
        ev: &Event<'_>,
        batch: &mut Batch,
        out: &mut Delivery,
    ) -> EventId {
        st.seq += 1;
        let (id, pos) = match &ev.id {
            // Kafka mode: the id is the node's position after the record,
            // the same for every stream it reaches.
            Some(EventId::Kafka {
                topic,
                partition,
                offset,
            }) => {
                let pos = st.replay.advance(topic, *partition, *offset);
                (EventId::Cursor(Arc::from(st.replay.cursor())), Some(pos))
            }
            Some(id) => (id.clone(), None),
            None => (self.local_id(st.seq), None),
        };
        let frame = frame::event(&id, ev.kind(), &ev.data);
        let ts_us = if ev.timestamp_us == 0 {
            batch.now_us
        } else {
            ev.timestamp_us
        };
        let seq = st.seq;
        st.replay
            .push(seq, pos, ev.target.clone(), frame.clone(), ts_us, batch.now);
        st.latest = id.clone();
        let mut sink = PushSink {
            frame: &frame,
            ts_us,
            now_us: batch.now_us,
            quiet_us: 0,
            claims: batch.claims,
            limits: self.queue_limits,
            out,
            queued: 0,
            dropped: 0,
        };
        let shard = match &ev.target {
            Target::User(u) => self.registry.lock_user(u),
            _ => None,
        };
        match shard {
            Some(shard) => {
                drop(st);
                batch.held = batch.locked_at.map(|t| t.elapsed());
                shard.route(&mut sink);
            }
            None => {
                self.registry.route(&ev.target, &mut sink);
                drop(st);
                batch.held = batch.locked_at.map(|t| t.elapsed());
            }
        }
        self.counters.queued.increment(sink.queued);
        batch.queued += sink.queued;
        if sink.dropped > 0 {
            self.counters.dropped_slow.increment(sink.dropped);
        }
        batch.claims = sink.claims;
        id
    }

    /// With no lock held: wakes the writers, makes the direct sends (after
    /// the wake-ups, so the other streams' writes start meanwhile), kills
    /// overflowed connections and logs them (rate-limited).
    fn deliver(&self, out: &mut Delivery) {
        for w in out.wakers.drain(..) {
            w.wake();
        }
        let mut sent = 0;
        for (sub, frame, ts_us) in out.direct.drain(..) {
            let (reached, waker) = sub.queue.send_claimed(&frame, ts_us);
            if reached {
                sent += 1;
                sub.delivered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                crate::stream::sample_lag(ts_us);
            }
            if let Some(w) = waker {
                w.wake();
            }
        }
        if sent > 0 {
            self.counters.sent_direct.increment(sent);
        }
        if out.slow.is_empty() {
            return;
        }
        let closed = out.slow.len() as u64;
        for (sub, _) in &out.slow {
            sub.abort();
        }
        let mut log = self.slow_log.lock();
        log.pending += closed;
        let now = std::time::Instant::now();
        if log
            .last
            .is_none_or(|t| now.duration_since(t) >= SLOW_LOG_EVERY)
        {
            let streams = std::mem::take(&mut log.pending);
            log.last = Some(now);
            drop(log);
            let (sub, dropped) = &out.slow[0];
            tracing::warn!(
                streams,
                user = %sub.user,
                peer = %crate::fmt::OrNone(sub.peer),
                dropped = *dropped,
                max_frames = self.queue_limits.max_frames,
                max_bytes = self.queue_limits.max_bytes,
                "closing slow SSE connections: their queues are full (one example; count since the last such line)"
            );
        }
        out.slow.clear();
    }

    /// Registers a connection and decides what it gets before live events:
    /// with `resume`, the retained events after that id, a reset, or (a
    /// cursor the buffer can not serve) a catch-up. `Full` when its user
    /// holds `max_per_user` streams already.
    pub fn subscribe(&self, join: Join) -> Result<Subscribed, Full> {
        // Allocated and decoded before the dispatch lock; registered under it.
        let sub = self.registry.subscriber(
            join.user,
            join.topics,
            join.peer,
            join.conn,
            join.shared_conn,
        );
        let resume = join.resume;
        let cursor = match &resume {
            Some(Ok(EventId::Cursor(text))) => Some(Cursor::decode(text)),
            _ => None,
        };
        let mut st = self.state.lock();
        st.replay.expire(Instant::now());
        let start = match (&resume, cursor) {
            (None, _) => match join.since_us {
                None => Start::Live,
                // Kafka mode: the reader looks the time up.
                Some(_) if st.replay.has_positions() => Start::CatchUp(st.replay.position()),
                Some(t) => match st.replay.since(t, st.seq) {
                    Some(range) => Start::Replay(range),
                    None => Start::Reset(ResetReason::NotRetained),
                },
            },
            (Some(Err(_)), _) | (_, Some(Err(_))) => Start::Reset(ResetReason::Unreadable),
            (Some(Ok(_)), Some(Ok(c))) if st.replay.has_positions() => {
                let v = st.replay.vector_of(&c);
                if st.replay.covers(&v) {
                    Start::Replay(st.replay.range_from(v, st.seq))
                } else {
                    Start::CatchUp(v)
                }
            }
            (Some(Ok(id)), _) => {
                // O(1) under the lock: the range is read later, a chunk at
                // a time.
                match st
                    .replay
                    .seq_of(id, |id| id.local_seq(self.epoch))
                    .and_then(|seen| st.replay.resume(seen, st.seq))
                {
                    Some(range) => Start::Replay(range),
                    None => Start::Reset(ResetReason::NotRetained),
                }
            }
        };
        if matches!(start, Start::CatchUp(_)) {
            // Live events wait until the catch-up reaches the buffer.
            sub.queue.park();
        }
        let subscription = self.registry.register(sub, join.max_per_user)?;
        let latest = st.latest.clone();
        drop(st);
        // A resume continues after the id asked for; the rest after the
        // last event dispatched.
        let requested = resume.as_ref().and_then(|r| r.as_ref().ok()).cloned();
        let mut out = Subscribed {
            subscription,
            after: latest.clone(),
            latest,
            replay: None,
            reset: None,
            catchup: None,
            since_us: None,
        };
        match start {
            Start::Live => {}
            Start::Replay(range) => {
                self.counters.resume_clean.increment(1);
                out.after = requested.unwrap_or(out.after);
                out.replay = Some(range);
            }
            Start::Reset(reason) => {
                self.counters.resume_gap.increment(1);
                reason.count();
                out.reset = Some(reason);
            }
            Start::CatchUp(v) => {
                self.counters.resume_catchup.increment(1);
                out.after = requested.unwrap_or(out.after);
                out.catchup = Some(v);
                out.since_us = join.since_us.filter(|_| resume.is_none());
            }
        }
        Ok(out)
    }

    /// Joins a parked stream (one being caught up from Kafka, now at `v`)
    /// to the live fan-out, if the buffer holds everything from `v` on:
    /// then live events reach its queue from here, and the range it must
    /// read from the buffer first is handed to `hand` under the dispatch
    /// lock (so the stream learns it before any live event can reach its
    /// queue; `hand` returns a waker to wake after the lock). Atomic with
    /// dispatch: no gap and no duplicate at the seam. `false`: not yet.
    pub fn join_live(
        &self,
        sub: &Subscriber,
        v: &Vector,
        hand: impl FnOnce(Range) -> Option<Waker>,
    ) -> bool {
        let st = self.state.lock();
        if !st.replay.covers(v) {
            return false;
        }
        // An event dispatched before this lock may still be routing to the
        // stream (lock coupling, `publish`): it is in the range handed
        // over, so it must not reach the live queue too.
        self.registry.settle(sub);
        let waker = hand(st.replay.range_from(v.clone(), st.seq));
        sub.queue.unpark();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// The id of the last event dispatched (in Kafka mode, the node's
    /// cursor).
    pub fn latest(&self) -> EventId {
        self.state.lock().latest.clone()
    }

    /// The node's position on every partition (Kafka mode), in its layout.
    pub fn position(&self) -> Vector {
        self.state.lock().replay.position()
    }

    /// The node's topics and their partition counts, in its layout.
    pub fn layout(&self) -> Vec<(Arc<str>, usize)> {
        self.state.lock().replay.layout()
    }

    /// Kafka ingest starts reading these partitions at these (resolved)
    /// offsets.
    pub fn start_partitions(&self, parts: &[(&str, i32, i64)]) {
        let mut st = self.state.lock();
        for &(topic, partition, offset) in parts {
            st.replay.start_partition(topic, partition, offset);
        }
        st.latest = EventId::Cursor(Arc::from(st.replay.cursor()));
    }

    /// Kafka ingest skipped these records (bad ones): the node's position
    /// moves past them all the same.
    pub fn skipped(&self, records: &[(Arc<str>, i32, i64)]) {
        let mut st = self.state.lock();
        for (topic, partition, offset) in records {
            st.replay.advance(topic, *partition, *offset);
        }
        st.latest = EventId::Cursor(Arc::from(st.replay.cursor()));
    }

    /// Reads the next chunk (about `max_bytes`) of a resuming stream's
    /// range: the retained events `wants` accepts. A short hold of the
    /// dispatch lock (bounded by `replay::CHUNK_SCAN` entries).
    pub fn replay_chunk(
        &self,
        range: &mut Range,
        max_bytes: usize,
        wants: impl Fn(&Target) -> bool,
    ) -> Chunk {
        let chunk = self.state.lock().replay.chunk(range, max_bytes, wants);
        if let Chunk::Frames(_, n) = &chunk {
            self.counters.replayed.increment(*n as u64);
        }
        chunk
    }

    /// Queues a heartbeat comment to each connection of registry shards
    /// `shards` that has been sent nothing for `quiet` (the heartbeat task
    /// walks the registry a slice per tick: no tick holds a lock long or
    /// wakes every stream at once). A connection whose queue is full is
    /// closed as slow, like for any other frame.
    pub fn heartbeat(&self, shards: std::ops::Range<usize>, quiet: Duration) {
        DELIVERY.with_borrow_mut(|out| {
            let mut sink = PushSink {
                frame: &frame::HEARTBEAT,
                ts_us: 0,
                now_us: unix_micros(),
                quiet_us: quiet.as_micros() as u64,
                claims: 0,
                limits: self.queue_limits,
                out,
                queued: 0,
                dropped: 0,
            };
            self.registry.for_shards(shards, &mut sink);
            if sink.dropped > 0 {
                self.counters.dropped_slow.increment(sink.dropped);
            }
            self.deliver(out);
        });
        // Expire by age even when nothing is published.
        self.state.lock().replay.expire(Instant::now());
    }

    /// Events and bytes held for replay.
    pub fn replay_len(&self) -> (usize, usize) {
        self.state.lock().replay.len()
    }
}

// === impl PushSink ===

impl RouteSink for PushSink<'_> {
    fn push(&mut self, sub: &Arc<Subscriber>) {
        let (outcome, waker) = sub.queue.push(
            self.frame,
            self.ts_us,
            self.now_us,
            self.quiet_us,
            self.claims > 0,
            self.limits,
        );
        match outcome {
            Push::Queued => self.queued += 1,
            Push::Claimed => {
                self.queued += 1;
                self.claims -= 1;
                self.out
                    .direct
                    .push((sub.clone(), self.frame.clone(), self.ts_us));
            }
            Push::Overflow { dropped } => {
                self.dropped += dropped as u64;
                self.out.slow.push((sub.clone(), dropped));
            }
            Push::Closed | Push::Parked | Push::Recent => {}
        }
        if let Some(w) = waker {
            self.out.wakers.push(w);
        }
    }
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Closes every connection for shutdown, spread over `spread` so a fleet's
/// clients do not all reconnect in the same instant. Each gets a `retry:`
/// hint first. Returns how many were closed.
pub async fn close_all(registry: &Registry, spread: std::time::Duration, retry_ms: u64) -> usize {
    struct Collect(Vec<Arc<Subscriber>>);
    impl RouteSink for Collect {
        fn push(&mut self, sub: &Arc<Subscriber>) {
            self.0.push(sub.clone());
        }
    }
    let mut all = Collect(Vec::with_capacity(registry.connections() + 64));
    registry.for_each(&mut all);
    let all = all.0;
    let total = all.len();
    if total == 0 {
        return 0;
    }
    const STEP: std::time::Duration = std::time::Duration::from_millis(50);
    let steps = (spread.as_millis() / STEP.as_millis()).max(1) as usize;
    let per_step = total.div_ceil(steps);
    let hint = frame::retry_hint(retry_ms);
    for (i, chunk) in all.chunks(per_step).enumerate() {
        if i > 0 {
            tokio::time::sleep(STEP).await;
        }
        for sub in chunk {
            sub.end(CloseReason::Shutdown, Some(hint.clone()));
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fanout() -> Arc<Fanout> {
        Arc::new(Fanout::new(
            Arc::new(Registry::new(4)),
            7,
            queue::Limits {
                max_frames: 64,
                max_bytes: 1 << 20,
                stall: None,
            },
            replay::Limits {
                max_events: 100,
                max_bytes: 1 << 20,
                max_age: Duration::from_secs(60),
            },
        ))
    }

    /// Whether the dispatch lock is free and `seq` events were dispatched,
    /// within 5 s.
    fn dispatched_and_free(f: &Fanout, seq: u64) -> bool {
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < until {
            if let Some(st) = f.state.try_lock_for(Duration::from_millis(10)) {
                if st.seq == seq {
                    return true;
                }
            }
        }
        false
    }

    #[test]
    fn an_event_for_one_user_frees_the_dispatch_lock_before_it_routes() {
        let f = fanout();
        let u = Name::new("u").unwrap();
        let sub = f.registry.insert(u.clone(), vec![], None, None);
        // The test holds the stream's queue: the publish assigns the id,
        // appends to the replay, locks the user's shard, then waits at the
        // push.
        let held = sub.subscriber().queue.hold_for_tests();
        let publisher = {
            let f = f.clone();
            std::thread::spawn(move || {
                let ev = Event::new(Target::User(Name::new("u").unwrap()), "1");
                f.publish(&[ev], Source::Kafka)
            })
        };
        assert!(
            dispatched_and_free(&f, 1),
            "the dispatch lock is free while the event is routed"
        );
        drop(held);
        assert_eq!(publisher.join().unwrap().len(), 1);
        assert_eq!(sub.subscriber().queue.len().0, 1);

        // A user with a topic stream, and a broadcast: routed under the
        // dispatch lock (a topic event reaches the stream another way).
        let _topics = f
            .registry
            .insert(u.clone(), vec![Name::new("t").unwrap()], None, None);
        for target in [Target::User(u.clone()), Target::Broadcast] {
            let held = sub.subscriber().queue.hold_for_tests();
            let seq = f.state.lock().seq + 1;
            let publisher = {
                let f = f.clone();
                std::thread::spawn(move || f.publish(&[Event::new(target, "2")], Source::Kafka))
            };
            // Dispatched (seq taken) but the lock stays held until routed.
            std::thread::sleep(Duration::from_millis(50));
            assert!(f.state.try_lock_for(Duration::from_millis(50)).is_none());
            drop(held);
            publisher.join().unwrap();
            assert!(dispatched_and_free(&f, seq));
        }
        assert_eq!(sub.subscriber().queue.len().0, 3);
    }

    /// Two publishers, one sending to a user, one to a topic, and a stream
    /// reached by both (the user's own stream with the topic) beside a
    /// topic-free one: each queue gets the events in id order.
    #[test]
    fn concurrent_user_and_topic_events_reach_a_stream_in_id_order() {
        const N: usize = 2000;
        let f = Arc::new(Fanout::new(
            Arc::new(Registry::new(4)),
            7,
            queue::Limits {
                max_frames: 4 * N,
                max_bytes: 1 << 24,
                stall: None,
            },
            replay::Limits {
                max_events: 10,
                max_bytes: 1 << 20,
                max_age: Duration::from_secs(60),
            },
        ));
        let name = |s: &str| Name::new(s).unwrap();
        let both = f.registry.insert(name("u"), vec![name("t")], None, None);
        let plain = f.registry.insert(name("v"), vec![], None, None);
        let publishers: Vec<_> = [
            Target::User(name("u")),
            Target::Topic(name("t")),
            Target::User(name("v")),
        ]
        .into_iter()
        .map(|target| {
            let f = f.clone();
            std::thread::spawn(move || {
                for _ in 0..N {
                    f.publish(&[Event::new(target.clone(), "x")], Source::Http);
                }
            })
        })
        .collect();
        for p in publishers {
            p.join().unwrap();
        }
        for (sub, want) in [(&both, 2 * N), (&plain, N)] {
            let cx = &mut std::task::Context::from_waker(std::task::Waker::noop());
            let mut seqs = Vec::new();
            while let std::task::Poll::Ready(Ok(batch)) =
                sub.subscriber().queue.poll_drain(cx, true, None)
            {
                let text = std::str::from_utf8(&batch.bytes).unwrap();
                seqs.extend(
                    text.lines()
                        .filter_map(|l| l.strip_prefix("id: 7-"))
                        .map(|s| s.parse::<u64>().unwrap()),
                );
            }
            assert_eq!(seqs.len(), want);
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in id order");
        }
    }
}
