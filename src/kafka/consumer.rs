//! The Kafka consumer thread (ingest).
//!
//! A `BaseConsumer` polled by one dedicated OS thread. At start it
//! reads each topic's metadata (a missing topic or an unreachable broker is
//! an error before anything is served), picks start offsets (latest,
//! earliest, or offsets-for-times `--replay-max-age` ago) and assigns itself
//! every partition. Then it loops: poll a burst (up to [`MAX_BURST`] records
//! already fetched), map each record (skipping, counting and logging bad
//! ones with their position), and hand the mapped burst to the dispatcher,
//! one task on the streams' runtime that dispatches bursts in order (at
//! most [`BURSTS_IN_FLIGHT`] wait for it). Dispatching there, a record's
//! stream task is woken on the worker that encoded its frame and queued
//! next to it, on warm caches; woken from this thread, every record's
//! frame, queue and waker crossed cores (0.8x the CPU per record with
//! 10,000 users, BENCHMARKS.md). Every
//! `--kafka-metadata-interval` it re-reads metadata: new partitions are
//! assigned from their beginning, and the result is the broker health that
//! readiness reports. librdkafka reconnects by itself; after an outage the
//! assigned partitions continue from where they stopped, so every retained
//! record is delivered, in order, without a restart.
//!
//! The consumer's `group.id` exists only because librdkafka requires one for
//! `assign`; nothing is ever committed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};

use super::dead_letter::DeadLetters;
use super::mapping::Mapper;
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{KafkaConfig, StartPosition};
use crate::event::Event;
use crate::fanout::{Fanout, Source};
use crate::lifecycle::IngestHealth as Status;
use crate::metrics as m;
use crate::sse::EventId;

use super::client::{self, ErrorKind, StartError, STARTUP_TIMEOUT};
use super::record;

/// Most records dispatched under one lock. Larger bursts mean fewer lock
/// round-trips and more frames per socket write; this bound keeps one burst
/// from holding the dispatcher for long (~a few ms at 10k subscribers).
pub(crate) const MAX_BURST: usize = 512;
/// Mapped bursts waiting for the dispatcher at most. Bounds the records
/// copied out of librdkafka's buffers to `BURSTS_IN_FLIGHT * MAX_BURST`.
/// With 2, the consumer thread blocked on a full queue so often that bursts
/// shrank and a record cost more than before (BENCHMARKS.md); 16 is what
/// was measured cheaper.
pub(crate) const BURSTS_IN_FLIGHT: usize = 16;
/// Longest wait in one poll; also how quickly a stop request is noticed.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// Bound on the periodic metadata refresh (the health probe).
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// How often librdkafka reports statistics (consumer lag per partition).
const STATS_INTERVAL_MS: &str = "1000";

/// Receives librdkafka's statistics and errors on the consumer thread (they
/// are served by `poll`): lag gauges per partition, error counts by kind.
struct IngestContext {
    log: ErrorLog,
}

impl ClientContext for IngestContext {
    fn stats(&self, stats: Statistics) {
        for (name, topic) in &stats.topics {
            for (id, p) in &topic.partitions {
                // -1 is librdkafka's "internal" pseudo-partition.
                if *id < 0 || p.hi_offset < 0 {
                    continue;
                }
                let position = if p.app_offset >= 0 {
                    p.app_offset
                } else {
                    p.next_offset
                };
                if position < 0 {
                    continue;
                }
                metrics::gauge!(m::KAFKA_LAG, "topic" => name.clone(), "partition" => id.to_string())
                    .set((p.hi_offset - position).max(0) as f64);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        ErrorKind::of(&error).count();
        self.log.error(&error, reason);
    }

    /// librdkafka's own log lines (from its threads, also before anything
    /// polls): an error line is kept as the client's last error, so a start
    /// that fails on TLS or SASL says so.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, line: &str) {
        use RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                self.log.remember(line);
                tracing::error!(target: "librdkafka", "{fac} {line}");
            }
            L::Warning => tracing::warn!(target: "librdkafka", "{fac} {line}"),
            L::Notice | L::Info => tracing::info!(target: "librdkafka", "{fac} {line}"),
            L::Debug => tracing::debug!(target: "librdkafka", "{fac} {line}"),
        }
    }
}

/// How often a continuing Kafka outage is summarised in the log.
const OUTAGE_SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// Kafka errors in the log: the first of an outage, then one summary line
/// per [`OUTAGE_SUMMARY_EVERY`] with how many followed, then one line when
/// it ends; not the same error several times a second (every error is
/// still counted in `herald_kafka_errors_total`).
#[derive(Debug, Default)]
pub(crate) struct ErrorLog {
    state: parking_lot::Mutex<Outage>,
}

#[derive(Debug, Default)]
struct Outage {
    /// Set while errors keep coming: when the last line was written.
    logged_at: Option<Instant>,
    /// Errors since then.
    since_logged: u64,
    /// Errors since the outage began.
    total: u64,
    /// The last error's text (a start failure names it: a TLS or SASL
    /// failure is only told through the client's error callback).
    last: Option<String>,
}

impl ErrorLog {
    fn error(&self, error: &KafkaError, reason: &str) {
        self.remember(&format!("{error}: {reason}"));
        let mut o = self.state.lock();
        o.total += 1;
        match o.logged_at {
            None => {
                o.logged_at = Some(Instant::now());
                drop(o);
                tracing::warn!(%error, reason, "Kafka client error (repeats are summarised every 30 s)");
            }
            Some(at) if at.elapsed() >= OUTAGE_SUMMARY_EVERY => {
                let (errors, total) = (o.since_logged + 1, o.total);
                o.since_logged = 0;
                o.logged_at = Some(Instant::now());
                drop(o);
                tracing::warn!(%error, errors, total, "Kafka still failing: errors in the last 30 s (last shown)");
            }
            Some(_) => o.since_logged += 1,
        }
    }

    /// Keeps `error` as the client's last error.
    fn remember(&self, error: &str) {
        self.state.lock().last = Some(error.to_owned());
    }

    /// The last error the client reported, if any.
    fn last(&self) -> Option<String> {
        self.state.lock().last.clone()
    }

    /// The broker answers again: ends an outage with one line.
    fn recovered(&self) {
        let mut o = self.state.lock();
        if o.logged_at.take().is_some() {
            let total = std::mem::take(&mut o.total);
            o.since_logged = 0;
            drop(o);
            tracing::info!(errors = total, "Kafka reachable again: ready");
        }
    }
}

impl ConsumerContext for IngestContext {}

/// Registers every label value of the ingest counters at 0, so dashboards
/// and alerts see the series before the first error or skip.
fn register_counters() {
    for kind in ErrorKind::ALL {
        metrics::counter!(m::KAFKA_ERRORS, "kind" => kind.label()).increment(0);
    }
    for skip in record::Skip::ALL {
        metrics::counter!(m::KAFKA_SKIPPED, "reason" => skip.as_str()).increment(0);
    }
}

/// The running consumer thread.
#[derive(Debug)]
pub(crate) struct Ingest {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    status: Arc<Status>,
    /// The readers that catch streams up from Kafka.
    catchup: Arc<super::catchup::Pool>,
}

// === impl Ingest ===

impl Ingest {
    /// Connects, checks the topics, assigns every partition at the start
    /// position and starts the consumer thread. Blocking (up to about
    /// `STARTUP_TIMEOUT`): call from a blocking context.
    /// `runtime`: the streams' runtime, where the dispatcher task runs.
    pub(crate) fn start(
        cfg: &KafkaConfig,
        replay_age: Duration,
        stall: Duration,
        fanout: Arc<Fanout>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Self, StartError> {
        let mut cc = client::reader_config(cfg, &format!("herald-{:x}", fanout.epoch()));
        cc.set("statistics.interval.ms", STATS_INTERVAL_MS);
        client::apply_user_properties(&mut cc, cfg);
        let consumer: BaseConsumer<IngestContext> = cc
            .create_with_context(IngestContext {
                log: ErrorLog::default(),
            })
            .map_err(|e| StartError::Client(e.to_string()))?;

        let mut partitions: HashMap<String, i32> = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        let start_ms = SystemTime::now()
            .checked_sub(replay_age)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as i64);
        for topic in &cfg.topics {
            let count =
                partition_count(&consumer, topic, STARTUP_TIMEOUT).map_err(|e| match e {
                    Lookup::Missing => StartError::UnknownTopic(topic.clone()),
                    Lookup::Failed(error) => {
                        // Serves the client's queued log lines and errors
                        // (nothing is assigned yet: no record is taken).
                        let _ = consumer.poll(Duration::from_millis(100));
                        StartError::Metadata {
                            topic: topic.clone(),
                            brokers: cfg.brokers.clone(),
                            error: match consumer.context().log.last() {
                                Some(last) => format!("{error} (the client's last error: {last})"),
                                None => error.to_string(),
                            },
                        }
                    }
                })?;
            partitions.insert(topic.clone(), count);
            for p in 0..count {
                let offset = match cfg.start {
                    StartPosition::Latest => Offset::End,
                    StartPosition::Earliest => Offset::Beginning,
                    // A timestamp, resolved to an offset just below.
                    StartPosition::ReplayWindow => Offset::Offset(start_ms),
                };
                tpl.add_partition_offset(topic, p, offset)
                    .map_err(|e| StartError::Assign(e.to_string()))?;
            }
        }
        if cfg.start == StartPosition::ReplayWindow {
            tpl = consumer
                .offsets_for_times(tpl, STARTUP_TIMEOUT)
                .map_err(|e| StartError::Offsets(e.to_string()))?;
        }
        // Every start position resolved to an offset before anything is
        // served: "latest" resolved lazily by librdkafka, after the node
        // already reported ready, missed records produced in between. The
        // resolved offsets are also the node's first position (its cursor).
        let mut starts = Vec::with_capacity(tpl.count());
        for e in tpl.clone().elements() {
            let (low, high) = consumer
                .fetch_watermarks(e.topic(), e.partition(), STARTUP_TIMEOUT)
                .map_err(|err| StartError::Offsets(err.to_string()))?;
            let at = match e.offset() {
                Offset::Beginning => low,
                Offset::Offset(o) if o >= 0 => o.clamp(low, high),
                // End, or no record at or after the replay window's time.
                _ => high,
            };
            tpl.set_partition_offset(e.topic(), e.partition(), Offset::Offset(at))
                .map_err(|e| StartError::Assign(e.to_string()))?;
            starts.push((e.topic().to_owned(), e.partition(), at));
        }
        fanout.start_partitions(
            &starts
                .iter()
                .map(|(t, p, o)| (t.as_str(), *p, *o))
                .collect::<Vec<_>>(),
        );
        consumer
            .assign(&tpl)
            .map_err(|e| StartError::Assign(e.to_string()))?;

        let status = Arc::new(Status::default());
        status.connected.store(true, Ordering::Relaxed);
        metrics::gauge!(m::KAFKA_PARTITIONS).set(tpl.count() as f64);
        metrics::gauge!(m::KAFKA_CONNECTED).set(1.0);
        metrics::counter!(m::KAFKA_ASSIGNMENTS).increment(1);
        register_counters();
        tracing::info!(
            brokers = %cfg.brokers,
            topics = %cfg.topics.join(","),
            partitions = tpl.count(),
            start = cfg.start.label(),
            "Kafka ingest assigned"
        );

        let mapper = Arc::new(super::mapping::Mapper::new(cfg));
        let dead_letters = super::dead_letter::DeadLetters::start(cfg)?;
        let catchup = Arc::new(
            super::catchup::Pool::start(cfg, stall, fanout.clone(), mapper.clone())
                .map_err(StartError::Thread)?,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (dispatcher, bursts) = tokio::sync::mpsc::channel(BURSTS_IN_FLIGHT);
        runtime.spawn(dispatch_bursts(bursts, fanout.clone()));
        let worker = Worker {
            consumer,
            fanout,
            dispatcher,
            topics: mapper.topics().to_vec(),
            mapper,
            dead_letters,
            partitions,
            status: status.clone(),
            stop: stop.clone(),
            metadata_interval: cfg.metadata_interval,
            backpressure: cfg.backpressure,
        };
        let watched = status.clone();
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("herald-ingest".into())
            .spawn(move || {
                // A panic here would stop consumption with nobody told:
                // caught, logged, and readiness turns 503 (an orchestrator
                // then replaces the node).
                let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run()));
                if ended.is_err() || !stopping.load(Ordering::Relaxed) {
                    watched.stopped.store(true, Ordering::Release);
                    watched.connected.store(false, Ordering::Relaxed);
                    metrics::gauge!(m::KAFKA_CONNECTED).set(0.0);
                    tracing::error!("Kafka ingest stopped unexpectedly: no more records are consumed; not ready");
                }
            })
            .map_err(StartError::Thread)?;
        Ok(Self {
            stop,
            thread: Some(thread),
            status,
            catchup,
        })
    }

    pub(crate) fn catchup(&self) -> &Arc<super::catchup::Pool> {
        &self.catchup
    }

    pub(crate) fn status(&self) -> &Arc<Status> {
        &self.status
    }

    /// Stops the thread and waits for it (it notices within `POLL_WAIT`,
    /// or after a metadata refresh in progress).
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.catchup.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Lookup {
    Missing,
    Failed(KafkaError),
}

fn partition_count(
    consumer: &BaseConsumer<IngestContext>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, Lookup> {
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(Lookup::Failed)?;
    let t = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or(Lookup::Missing)?;
    if t.error().is_some() || t.partitions().is_empty() {
        return Err(Lookup::Missing);
    }
    Ok(t.partitions().len() as i32)
}

/// State owned by the consumer thread.
struct Worker {
    consumer: BaseConsumer<IngestContext>,
    fanout: Arc<Fanout>,
    /// The dispatcher task's queue; the task ends when this is dropped.
    dispatcher: tokio::sync::mpsc::Sender<Burst>,
    /// Configured topics, shared into every event id.
    topics: Vec<Arc<str>>,
    /// Each topic's rule.
    mapper: Arc<super::mapping::Mapper>,
    /// Where records that can not be mapped go, if anywhere.
    dead_letters: Option<super::dead_letter::DeadLetters>,
    /// Partitions assigned per topic.
    partitions: HashMap<String, i32>,
    status: Arc<Status>,
    stop: Arc<AtomicBool>,
    metadata_interval: Duration,
    backpressure: Option<Duration>,
}

// === impl Worker ===

impl Worker {
    fn run(mut self) {
        let mut next_refresh = Instant::now() + self.metadata_interval;
        while !self.stop.load(Ordering::Relaxed) {
            let mut burst: Vec<BorrowedMessage<'_>> = Vec::new();
            let mut wait = POLL_WAIT;
            while burst.len() < MAX_BURST {
                match self.consumer.poll(wait) {
                    Some(Ok(msg)) => burst.push(msg),
                    Some(Err(error)) => {
                        ErrorKind::of(&error).count();
                        self.consumer.context().log.error(&error, "consume");
                        break;
                    }
                    None => break,
                }
                // After the first record, take only what is already fetched.
                wait = Duration::ZERO;
            }
            if !burst.is_empty() {
                // Behind on delivery: let the writers catch up first.
                if let Some(max) = self.backpressure {
                    self.fanout.room_blocking(max, &self.stop);
                }
                let mapped = map_burst(&self.mapper, self.dead_letters.as_ref(), &burst);
                let nothing = mapped.events.is_empty() && mapped.skipped.is_empty();
                if !nothing && self.dispatcher.blocking_send(mapped).is_err() {
                    // The runtime is shutting down.
                    break;
                }
            }
            drop(burst);
            if Instant::now() >= next_refresh {
                self.refresh();
                next_refresh = Instant::now() + self.metadata_interval;
            }
        }
        if let Some(d) = &self.dead_letters {
            d.flush();
        }
        tracing::info!("Kafka ingest stopped");
    }

    /// Re-reads metadata: health, and partitions added since the last look.
    fn refresh(&mut self) {
        let mut healthy = true;
        for topic in self.topics.clone() {
            match partition_count(&self.consumer, &topic, REFRESH_TIMEOUT) {
                Ok(count) => {
                    let known = self.partitions.get(&*topic).copied().unwrap_or(0);
                    let added = added_partitions(known, count);
                    if !added.is_empty() {
                        let mut tpl = TopicPartitionList::new();
                        let mut starts = Vec::new();
                        for (p, offset) in added {
                            let _ = tpl.add_partition_offset(&topic, p, offset);
                            starts.push((&*topic, p, 0));
                        }
                        match self.consumer.incremental_assign(&tpl) {
                            Ok(()) => {
                                // Read from their beginning: the node holds
                                // all of them (cursors start them at 0).
                                self.fanout.start_partitions(&starts);
                                tracing::info!(%topic, from = known, to = count, "Kafka partitions added; consuming them from the beginning");
                                self.partitions.insert(topic.to_string(), count);
                                let total: i32 = self.partitions.values().sum();
                                metrics::gauge!(m::KAFKA_PARTITIONS).set(total as f64);
                                metrics::counter!(m::KAFKA_ASSIGNMENTS).increment(1);
                            }
                            Err(error) => {
                                tracing::warn!(%topic, %error, "cannot assign new partitions")
                            }
                        }
                    }
                }
                Err(Lookup::Missing) => {
                    healthy = false;
                    tracing::warn!(%topic, "Kafka topic no longer exists");
                }
                Err(Lookup::Failed(error)) => {
                    healthy = false;
                    if self.status.connected() {
                        tracing::warn!(%topic, %error, "Kafka unreachable: serving open streams, not ready; retrying");
                    }
                    self.consumer.context().log.error(&error, "metadata");
                }
            }
        }
        let was = self.status.connected.swap(healthy, Ordering::Relaxed);
        metrics::gauge!(m::KAFKA_CONNECTED).set(if healthy { 1.0 } else { 0.0 });
        if healthy && !was {
            self.consumer.context().log.recovered();
        }
    }
}

/// Partitions to assign when a topic grew from `known` to `observed`
/// partitions, with where to start each: from the beginning, so nothing
/// produced to a new partition before this node noticed it is missed.
/// (Kafka never shrinks a topic; a smaller count is ignored.)
fn added_partitions(known: i32, observed: i32) -> Vec<(i32, Offset)> {
    (known..observed.max(known))
        .map(|p| (p, Offset::Beginning))
        .collect()
}

/// A burst of records mapped on the consumer thread, owning its text, for
/// the dispatcher: its events, then the positions of the records skipped.
#[derive(Debug)]
struct Burst {
    events: Vec<Event<'static>>,
    skipped: Vec<(Arc<str>, i32, i64)>,
}

/// Maps a burst (decoding included, before any lock). Records that can not
/// be mapped are counted and logged with their position (or
/// dead-lettered), never dispatched, never fatal.
fn map_burst(
    mapper: &Mapper,
    dead_letters: Option<&DeadLetters>,
    burst: &[BorrowedMessage<'_>],
) -> Burst {
    let mut events = Vec::with_capacity(burst.len());
    let mut skipped = Vec::new();
    let mut headers = Vec::new();
    for msg in burst {
        let Some(t) = mapper.topic(msg.topic()) else {
            continue;
        };
        match mapper.map(t, msg, &mut headers) {
            Ok(mut event) => {
                event.id = Some(EventId::Kafka {
                    topic: mapper.topics()[t].clone(),
                    partition: msg.partition(),
                    offset: msg.offset(),
                });
                // The record's timestamp (create or log-append time):
                // delivery lag is measured from when it entered Kafka.
                event.timestamp_us = record::timestamp_us(msg.timestamp().to_millis());
                events.push(event.into_owned());
            }
            Err(why) => {
                skipped.push((mapper.topics()[t].clone(), msg.partition(), msg.offset()));
                metrics::counter!(m::KAFKA_SKIPPED, "reason" => why.skip.as_str()).increment(1);
                match dead_letters {
                    Some(d) => d.send(msg, &why),
                    None => tracing::warn!(
                        topic = msg.topic(),
                        partition = msg.partition(),
                        offset = msg.offset(),
                        reason = %why,
                        "skipping Kafka record"
                    ),
                }
            }
        }
    }
    Burst { events, skipped }
}

/// The dispatcher: each burst's events under one lock, in the order the
/// consumer mapped them, until the consumer thread ends.
async fn dispatch_bursts(mut bursts: tokio::sync::mpsc::Receiver<Burst>, fanout: Arc<Fanout>) {
    while let Some(b) = bursts.recv().await {
        if !b.events.is_empty() {
            fanout.publish(&b.events, Source::Kafka);
        }
        // After the events: a stream's position never passes a record it
        // has not been given.
        if !b.skipped.is_empty() {
            fanout.skipped(&b.skipped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_partitions_start_from_the_beginning() {
        assert_eq!(
            added_partitions(4, 6),
            vec![(4, Offset::Beginning), (5, Offset::Beginning)]
        );
        assert!(added_partitions(4, 4).is_empty());
        assert!(added_partitions(4, 2).is_empty());
    }

    /// Every line written, for counting.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn an_outage_is_logged_once_then_summarised_then_ended() {
        let lines = Lines::default();
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let log = ErrorLog::default();
            let error = KafkaError::Global(rdkafka::types::RDKafkaErrorCode::AllBrokersDown);
            for _ in 0..150 {
                log.error(&error, "transport");
            }
            log.recovered();
            log.recovered();
        });
        let text = String::from_utf8(lines.0.lock().clone()).unwrap();
        let n = text.lines().count();
        assert_eq!(n, 2, "one line when it starts, one when it ends:\n{text}");
        assert!(text.contains("errors=150"), "{text}");
    }
}
