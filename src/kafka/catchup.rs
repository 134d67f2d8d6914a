//! Catch-up readers: streams whose cursor the replay buffer can not serve
//! (away too long, another node's cursor, a restarted node) are read from
//! Kafka, then joined to the live fan-out (see `stream::catchup`).
//!
//! A small pool (`--catchup-readers`, 4) of threads, each with one Kafka
//! consumer kept for its life: never a consumer per client. A free reader
//! takes every stream waiting (up to [`MAX_PER_JOB`]) and reads from the
//! smallest of their positions, partition by partition; each stream gets
//! the records meant for it at or past its own position, with a cursor of
//! its own as the id. Streams that arrive while a reader runs join it when
//! the reader has not passed them yet; the others wait (their stream is
//! open, heartbeats flow) up to `--catchup-max-waiting` streams, past which
//! a subscribe is answered 503 with `Retry-After`; a user has at most
//! `--max-catchups-per-user` at once (429).
//!
//! A reader never gives a stream a record the node has not dispatched yet:
//! it holds that partition until the node has, so it can always join the
//! stream to the live fan-out once it has passed the buffer's floor on
//! every partition. A cursor older than what Kafka keeps (retention) starts
//! at the oldest record kept, after a `herald-reset` event (`retention`);
//! positions past the end are treated as the end; a cursor still ahead of
//! the node after [`AHEAD_WAIT`] is taken at the node's position.
//!
//! Memory per stream: its feed (bounded, see `stream::catchup::Feed`) and
//! its position vector. A feed not drained within `--write-timeout` ends
//! the stream as slow.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};

use super::mapping::Mapper;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{CatchUpConfig, KafkaConfig};
use crate::event::Name;
use crate::fanout::Fanout;
use crate::metrics as m;
use crate::registry::queue::CloseReason;
use crate::replay::Vector;
use crate::sse::cursor::{self};
use crate::sse::frame::{self, ResetReason};
use crate::sse::EventId;
use crate::stream::catchup::{CatchUp, FeedEnd, Refused, Request, Stalled};

use super::client;

/// Most streams one reader serves at once.
pub(crate) const MAX_PER_JOB: usize = 4096;
/// Most records taken per poll.
const BURST: usize = 512;
const POLL_WAIT: Duration = Duration::from_millis(50);
/// How long a cursor may stay ahead of the node before it is taken at the
/// node's position (a real cursor from another node is milliseconds ahead).
pub(crate) const AHEAD_WAIT: Duration = Duration::from_secs(5);
/// Kafka failing this long fails the reader's streams (they reconnect with
/// their last id and lose nothing).
const FAIL_AFTER: Duration = Duration::from_secs(30);
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);

/// The pool.
#[derive(Debug)]
pub(crate) struct Pool {
    shared: Arc<Shared>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

#[derive(Debug)]
struct Shared {
    waiting: Mutex<Waiting>,
    ready: Condvar,
    settings: CatchUpConfig,
    /// Streams that write slower than this are closed.
    stall: Duration,
    fanout: Arc<Fanout>,
    /// The same rules (and schema cache) as ingest.
    mapper: Arc<Mapper>,
    busy: AtomicUsize,
    reading: AtomicUsize,
    stop: AtomicBool,
}

#[derive(Debug, Default)]
struct Waiting {
    queue: VecDeque<Request>,
    /// Catch-ups per user, waiting or reading.
    per_user: HashMap<Name, usize>,
}

/// One stream being read for.
struct Client {
    req: Request,
    /// Its position (next offset per partition, in the node's layout).
    at: Vec<Vec<i64>>,
}

// === impl Pool ===

impl Pool {
    /// Starts the reader threads (idle until a stream needs one). Their
    /// consumers connect on first use.
    pub(crate) fn start(
        cfg: &KafkaConfig,
        stall: Duration,
        fanout: Arc<Fanout>,
        mapper: Arc<Mapper>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Waiting::default()),
            ready: Condvar::new(),
            settings: cfg.catchup,
            stall,
            fanout,
            mapper,
            busy: AtomicUsize::new(0),
            reading: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        shared.gauges(0);
        metrics::counter!(m::CATCHUP_RECORDS).increment(0);
        let mut threads = Vec::new();
        for n in 0..cfg.catchup.readers.get() {
            let s = shared.clone();
            let kafka = cfg.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("herald-catchup-{n}"))
                    .spawn(move || Reader::new(s, kafka, n).run())?,
            );
        }
        Ok(Self {
            shared,
            threads: Mutex::new(threads),
        })
    }

    /// Stops the readers (their streams end; clients reconnect).
    pub(crate) fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.ready.notify_all();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }
}

impl CatchUp for Pool {
    fn submit(&self, req: Request) -> Result<(), Refused> {
        let s = &self.shared;
        let mut w = s.waiting.lock();
        let mine = w.per_user.get(&req.user).copied().unwrap_or(0);
        if mine >= s.settings.per_user.get() {
            return Err(Refused::PerUser);
        }
        if w.queue.len() >= s.settings.max_waiting.get() {
            return Err(Refused::Busy);
        }
        *w.per_user.entry(req.user.clone()).or_default() += 1;
        w.queue.push_back(req);
        let waiting = w.queue.len();
        drop(w);
        s.gauges(waiting);
        s.ready.notify_one();
        Ok(())
    }

    fn in_progress(&self) -> usize {
        let s = &self.shared;
        s.waiting.lock().queue.len() + s.reading.load(Ordering::Relaxed)
    }
}

// === impl Shared ===

impl Shared {
    fn gauges(&self, waiting: usize) {
        metrics::gauge!(m::CATCHUP_STREAMS, "state" => "waiting").set(waiting as f64);
        metrics::gauge!(m::CATCHUP_STREAMS, "state" => "reading")
            .set(self.reading.load(Ordering::Relaxed) as f64);
        metrics::gauge!(m::CATCHUP_READERS).set(self.busy.load(Ordering::Relaxed) as f64);
    }

    /// A stream's catch-up is over (joined, failed or gone).
    fn release(&self, user: &Name) {
        let mut w = self.waiting.lock();
        if let Some(n) = w.per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                w.per_user.remove(user);
            }
        }
        self.reading.fetch_sub(1, Ordering::Relaxed);
        let waiting = w.queue.len();
        drop(w);
        self.gauges(waiting);
    }

    /// Blocks until streams wait (or stop): takes up to [`MAX_PER_JOB`].
    fn take(&self) -> Option<Vec<Request>> {
        let mut w = self.waiting.lock();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            if !w.queue.is_empty() {
                let n = w.queue.len().min(MAX_PER_JOB);
                let taken: Vec<Request> = w.queue.drain(..n).collect();
                self.reading.fetch_add(taken.len(), Ordering::Relaxed);
                let waiting = w.queue.len();
                drop(w);
                self.gauges(waiting);
                return Some(taken);
            }
            self.ready.wait_for(&mut w, Duration::from_millis(500));
        }
    }

    /// Waiting streams a running reader at `pos` can serve without going
    /// back: those at or past it on every partition.
    fn take_joinable(&self, pos: &[Vec<i64>], room: usize) -> Vec<Request> {
        let mut w = self.waiting.lock();
        if w.queue.is_empty() || room == 0 {
            return Vec::new();
        }
        let mut taken = Vec::new();
        let mut i = 0;
        while i < w.queue.len() && taken.len() < room {
            // A stream from a time has no position until a reader looks it
            // up at the start of its own job.
            if w.queue[i].since_us.is_none() && at_or_past(&w.queue[i].from, pos) {
                if let Some(r) = w.queue.remove(i) {
                    taken.push(r);
                }
            } else {
                i += 1;
            }
        }
        self.reading.fetch_add(taken.len(), Ordering::Relaxed);
        let waiting = w.queue.len();
        drop(w);
        if !taken.is_empty() {
            self.gauges(waiting);
        }
        taken
    }
}

/// Whether `v` is at or past `pos` on every partition `pos` has.
fn at_or_past(v: &[Vec<i64>], pos: &[Vec<i64>]) -> bool {
    pos.iter().enumerate().all(|(t, ps)| {
        ps.iter()
            .enumerate()
            .all(|(p, &o)| v.get(t).and_then(|x| x.get(p)).is_some_and(|&a| a >= o))
    })
}

/// One reader thread.
struct Reader {
    shared: Arc<Shared>,
    kafka: KafkaConfig,
    n: usize,
    consumer: Option<BaseConsumer>,
}

/// Where a running job is.
struct Job {
    clients: Vec<Client>,
    /// The node's topics (name, fingerprint), in its layout.
    topics: Vec<(Arc<str>, u32)>,
    /// The reader's position: next offset per partition.
    pos: Vec<Vec<i64>>,
    /// Records read at or past the node's position, per partition, waiting
    /// until the node has dispatched them; the partition is paused.
    held: HashMap<(usize, i32), VecDeque<OwnedMessage>>,
    started: Instant,
    failing_since: Option<Instant>,
}

impl Reader {
    fn new(shared: Arc<Shared>, kafka: KafkaConfig, n: usize) -> Self {
        Self {
            shared,
            kafka,
            n,
            consumer: None,
        }
    }

    fn run(mut self) {
        while let Some(reqs) = self.shared.take() {
            self.shared.busy.fetch_add(1, Ordering::Relaxed);
            let clients: Vec<Client> = reqs.into_iter().map(Client::new).collect();
            let shared = self.shared.clone();
            let stop = match self.consumer() {
                Ok(consumer) => {
                    let mut job = Job::new(&shared.fanout, clients);
                    job.run(consumer, &shared)
                }
                Err(error) => {
                    tracing::warn!(%error, "catch-up reader cannot create its Kafka consumer");
                    for c in clients {
                        c.req.feed.finish(FeedEnd::Failed);
                        self.shared.release(&c.req.user);
                    }
                    false
                }
            };
            if let Some(c) = &self.consumer {
                let _ = c.unassign();
            }
            self.shared.busy.fetch_sub(1, Ordering::Relaxed);
            self.shared.gauges(self.shared.waiting.lock().queue.len());
            if stop {
                break;
            }
        }
    }

    fn consumer(&mut self) -> Result<&BaseConsumer, rdkafka::error::KafkaError> {
        if self.consumer.is_none() {
            let group = format!("herald-catchup-{:x}-{}", self.shared.fanout.epoch(), self.n);
            let mut cc = client::reader_config(&self.kafka, &group);
            client::apply_user_properties(&mut cc, &self.kafka);
            self.consumer = Some(cc.create()?);
        }
        Ok(self.consumer.as_ref().unwrap_or_else(|| unreachable!()))
    }
}

impl Client {
    fn new(req: Request) -> Self {
        let at = req.from.iter().cloned().collect();
        Self { req, at }
    }

    /// Its cursor's wire form.
    fn cursor(&self, topics: &[(Arc<str>, u32)]) -> EventId {
        let mut s = String::with_capacity(48);
        cursor::encode_topics(
            topics
                .iter()
                .zip(&self.at)
                .map(|((_, fp), next)| (*fp, next.as_slice())),
            &mut s,
        );
        EventId::Cursor(Arc::from(s))
    }
}

impl Job {
    fn new(fanout: &Fanout, clients: Vec<Client>) -> Self {
        let layout = fanout.layout();
        let topics = layout
            .iter()
            .map(|(name, _)| (name.clone(), cursor::fingerprint(name)))
            .collect();
        let pos = layout.iter().map(|(_, n)| vec![0; *n]).collect();
        Self {
            clients,
            topics,
            pos,
            held: HashMap::new(),
            started: Instant::now(),
            failing_since: None,
        }
    }

    /// Reads until every stream joined the live fan-out or left. `true`
    /// when the pool is stopping.
    fn run(&mut self, consumer: &BaseConsumer, shared: &Shared) -> bool {
        if let Err(error) = self.start(consumer, shared) {
            tracing::warn!(%error, "catch-up cannot start: its streams end and reconnect");
            self.fail_all(shared);
            return false;
        }
        let mut node = shared.fanout.position();
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                self.fail_all(shared);
                return true;
            }
            self.try_join(shared, &node);
            if self.clients.is_empty() {
                return false;
            }
            for req in shared.take_joinable(&self.pos, MAX_PER_JOB - self.clients.len()) {
                self.clients.push(Client::new(req));
            }
            // Poll a burst.
            let mut burst: Vec<BorrowedMessage<'_>> = Vec::new();
            let mut wait = POLL_WAIT;
            let mut error = false;
            while burst.len() < BURST {
                match consumer.poll(wait) {
                    Some(Ok(msg)) => burst.push(msg),
                    Some(Err(e)) => {
                        super::client::ErrorKind::of(&e).count();
                        error = true;
                        break;
                    }
                    None => break,
                }
                wait = Duration::ZERO;
            }
            if error && burst.is_empty() {
                let since = *self.failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= FAIL_AFTER {
                    tracing::warn!("catch-up: Kafka failing; its streams end and reconnect");
                    self.fail_all(shared);
                    return false;
                }
            } else {
                self.failing_since = None;
            }
            metrics::counter!(m::CATCHUP_RECORDS).increment(burst.len() as u64);
            node = shared.fanout.position();
            self.release_held(consumer, shared, &node);
            for msg in &burst {
                let Some(t) = self.topic(msg.topic()) else {
                    continue;
                };
                let key = (t, msg.partition());
                let ahead = msg.offset() >= at(&node, t, msg.partition());
                if ahead || self.held.contains_key(&key) {
                    if !self.held.contains_key(&key) {
                        let mut tpl = TopicPartitionList::new();
                        tpl.add_partition(msg.topic(), msg.partition());
                        let _ = consumer.pause(&tpl);
                    }
                    self.held.entry(key).or_default().push_back(msg.detach());
                    continue;
                }
                self.deliver(shared, msg);
            }
        }
    }

    /// Assigns the partitions from the smallest position of the job's
    /// streams, after clamping each to what Kafka keeps.
    fn start(&mut self, consumer: &BaseConsumer, shared: &Shared) -> Result<(), String> {
        let node = shared.fanout.position();
        self.resolve_times(consumer)?;
        let mut tpl = TopicPartitionList::new();
        for (t, (name, _)) in self.topics.clone().iter().enumerate() {
            for p in 0..self.pos[t].len() {
                let (low, high) = consumer
                    .fetch_watermarks(name, p as i32, WATERMARK_TIMEOUT)
                    .map_err(|e| e.to_string())?;
                let mut start = i64::MAX;
                for c in &mut self.clients {
                    clamp(c, t, p, low, high);
                    start = start.min(c.at[t][p]);
                }
                if start == i64::MAX {
                    start = at(&node, t, p as i32);
                }
                self.pos[t][p] = start;
                tpl.add_partition_offset(name, p as i32, Offset::Offset(start))
                    .map_err(|e| e.to_string())?;
            }
        }
        // Streams whose cursor Kafka no longer holds: say so first.
        let topics = self.topics.clone();
        self.clients.retain_mut(|c| {
            if !c.retention() {
                return true;
            }
            ResetReason::Retention.count();
            let reset = frame::reset_event(ResetReason::Retention, None, c.cursor(&topics));
            let ok = c
                .req
                .feed
                .push(&reset, 0, Instant::now() + shared.stall)
                .is_ok();
            if !ok {
                shared.release(&c.req.user);
            }
            ok
        });
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        // A partition a previous job paused (holding a record the node had
        // not dispatched yet) stays paused in this consumer across assigns:
        // it would never be read again.
        consumer.resume(&tpl).map_err(|e| e.to_string())
    }

    /// Streams that start from a time (`since=`): their offsets, looked
    /// up once for all of them (the first record at or after the time; the
    /// end when there is none).
    fn resolve_times(&mut self, consumer: &BaseConsumer) -> Result<(), String> {
        let mut times: Vec<u64> = self.clients.iter().filter_map(|c| c.req.since_us).collect();
        times.sort_unstable();
        times.dedup();
        for t_us in times {
            let ms = (t_us / 1000) as i64;
            let mut tpl = TopicPartitionList::new();
            for (t, (name, _)) in self.topics.iter().enumerate() {
                for p in 0..self.pos[t].len() {
                    tpl.add_partition_offset(name, p as i32, Offset::Offset(ms))
                        .map_err(|e| e.to_string())?;
                }
            }
            let found = consumer
                .offsets_for_times(tpl, WATERMARK_TIMEOUT)
                .map_err(|e| e.to_string())?;
            let mut at: Vec<Vec<i64>> =
                self.pos.iter().map(|ps| vec![i64::MAX; ps.len()]).collect();
            for e in found.elements() {
                if let (Some(t), Offset::Offset(o)) = (self.topic(e.topic()), e.offset()) {
                    if o >= 0 {
                        if let Some(x) = at
                            .get_mut(t)
                            .and_then(|v| v.get_mut(e.partition() as usize))
                        {
                            *x = o;
                        }
                    }
                }
            }
            // i64::MAX (no record that late) is clamped to the end.
            for c in self
                .clients
                .iter_mut()
                .filter(|c| c.req.since_us == Some(t_us))
            {
                c.at = at.clone();
                c.req.from = at.clone().into();
            }
        }
        Ok(())
    }

    fn topic(&self, name: &str) -> Option<usize> {
        self.topics.iter().position(|(t, _)| &**t == name)
    }

    /// Hands one record to every stream it is for and moves positions.
    fn deliver(&mut self, shared: &Shared, msg: &impl Message) {
        let Some(t) = self.topic(msg.topic()) else {
            return;
        };
        let (p, o) = (msg.partition() as usize, msg.offset());
        if let Some(x) = self.pos[t].get_mut(p) {
            *x = (*x).max(o + 1);
        }
        // A record ingest skipped is skipped here too (dead letters are
        // ingest's to write, once).
        let mut headers = Vec::new();
        let event = shared
            .mapper
            .topic(msg.topic())
            .and_then(|i| shared.mapper.map(i, msg, &mut headers).ok());
        let topics = &self.topics;
        let deadline = Instant::now() + shared.stall;
        // Frames are encoded per distinct cursor: streams at the same place
        // share one.
        let mut last: Option<(EventId, bytes::Bytes)> = None;
        self.clients.retain_mut(|c| {
            let Some(mine) = c.at.get_mut(t).and_then(|v| v.get_mut(p)) else {
                return true;
            };
            if o < *mine {
                return true;
            }
            *mine = o + 1;
            let Some(ev) = &event else {
                return true;
            };
            if !c.req.subscriber.wants(&ev.target) {
                return true;
            }
            let id = c.cursor(topics);
            let bytes = match &last {
                Some((l, b)) if *l == id => b.clone(),
                _ => {
                    let b = frame::event(&id, ev.kind(), &ev.data);
                    last = Some((id, b.clone()));
                    b
                }
            };
            match c.req.feed.push(&bytes, 1, deadline) {
                Ok(()) => true,
                Err(Stalled::Full) => {
                    c.req.subscriber.end(CloseReason::Slow, None);
                    shared.release(&c.req.user);
                    false
                }
                Err(Stalled::Gone) => {
                    shared.release(&c.req.user);
                    false
                }
            }
        });
    }

    /// Delivers held records the node has dispatched by now; resumes their
    /// partitions once empty.
    fn release_held(&mut self, consumer: &BaseConsumer, shared: &Shared, node: &[Vec<i64>]) {
        let keys: Vec<(usize, i32)> = self.held.keys().copied().collect();
        for key in keys {
            loop {
                let next = match self.held.get_mut(&key).and_then(|q| q.front()) {
                    Some(m) if m.offset() < at(node, key.0, key.1) => {
                        self.held.get_mut(&key).and_then(VecDeque::pop_front)
                    }
                    _ => None,
                };
                match next {
                    Some(msg) => self.deliver(shared, &msg),
                    None => break,
                }
            }
            if self.held.get(&key).is_some_and(VecDeque::is_empty) {
                self.held.remove(&key);
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&self.topics[key.0].0, key.1);
                let _ = consumer.resume(&tpl);
            }
        }
    }

    /// Joins every stream the buffer can take from its position.
    fn try_join(&mut self, shared: &Shared, node: &[Vec<i64>]) {
        let ahead_too_long = self.started.elapsed() >= AHEAD_WAIT;
        let fanout = &shared.fanout;
        self.clients.retain_mut(|c| {
            if c.req.feed.is_gone() {
                shared.release(&c.req.user);
                return false;
            }
            // Caught up with the reader: from here the reader's position is
            // the stream's (records below it were handed out or not meant
            // for it).
            for (t, ps) in self.pos.iter().enumerate() {
                for (p, &o) in ps.iter().enumerate() {
                    if let Some(x) = c.at.get_mut(t).and_then(|v| v.get_mut(p)) {
                        *x = (*x).max(o);
                    }
                }
            }
            if ahead_too_long {
                for (t, ps) in node.iter().enumerate() {
                    for (p, &o) in ps.iter().enumerate() {
                        if let Some(x) = c.at.get_mut(t).and_then(|v| v.get_mut(p)) {
                            *x = (*x).min(o);
                        }
                    }
                }
            }
            let v: Vector = c.at.clone().into();
            let feed = c.req.feed.clone();
            let joined = fanout.join_live(&c.req.subscriber, &v, |range| {
                feed.finish_under_lock(FeedEnd::Live(range))
            });
            if joined {
                metrics::histogram!(m::CATCHUP_DURATION)
                    .record(c.req.opened.elapsed().as_secs_f64());
                shared.release(&c.req.user);
            }
            !joined
        });
    }

    fn fail_all(&mut self, shared: &Shared) {
        for c in self.clients.drain(..) {
            c.req.feed.finish(FeedEnd::Failed);
            shared.release(&c.req.user);
        }
    }
}

impl Client {
    /// Whether clamping moved it forward past records Kafka dropped.
    fn retention(&self) -> bool {
        self.req
            .from
            .iter()
            .zip(&self.at)
            .any(|(from, at)| from.iter().zip(at).any(|(f, a)| a > f))
    }
}

/// Clamps a stream's position on one partition to what Kafka holds: before
/// the oldest record kept is the oldest (a retention reset), past the end is
/// the end.
fn clamp(c: &mut Client, t: usize, p: usize, low: i64, high: i64) {
    if let Some(x) = c.at.get_mut(t).and_then(|v| v.get_mut(p)) {
        *x = (*x).clamp(low, high.max(low));
    }
}

/// The position at partition `p` of topic `t`.
fn at(v: &[Vec<i64>], t: usize, p: i32) -> i64 {
    v.get(t)
        .and_then(|x| x.get(p as usize))
        .copied()
        .unwrap_or(0)
}
