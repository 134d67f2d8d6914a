//! The producer behind `POST /api/publish` in Kafka mode.
//!
//! A publish (one event or a batch) is **one Kafka transaction**: every
//! event is produced to `--kafka-publish-topic` (keyed and headered per the
//! record mapping, so it reads back as the same event), then the transaction
//! commits, or aborts if any event failed or the broker did not acknowledge
//! within `--kafka-publish-timeout`. So the answer is true for the whole
//! batch: a 200 means all of it is written, in order, and a 503 means none of
//! it is visible to any herald node (their consumers read committed records
//! only), so the client may retry the same request without duplicates. The
//! producers are idempotent (a transactional producer is), so librdkafka's
//! own retries after a transient broker error neither reorder nor duplicate.
//!
//! A Kafka producer runs one transaction at a time, so publishes use a small
//! pool of them ([`POOL`]), each with its own `transactional.id`
//! (`herald-<run>-<k>`). Delivery to streams happens when the consumer reads
//! the committed records back, on every node.
//!
//! For brokers without transactions (`--kafka-publish-transactions false`)
//! each event is one idempotent write: in order and once per partition
//! despite retries, but a batch can then be partly written; its failure
//! names which events were (their ids) and which were not.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::ClientContext;
use tokio::sync::oneshot;

use crate::config::KafkaConfig;
use crate::event::{Event, Target};
use crate::sse::EventId;

use super::client::{self, StartError, STARTUP_TIMEOUT};
use super::polled::Polled;
use super::record::{EVENT_HEADER, TOPIC_HEADER};

/// Transactional producers per node: publishes running at once.
pub(crate) const POOL: usize = 4;

/// The name of each publish producer's poll thread.
const POLL_THREAD: &str = "kafka-publish";

/// Produces published events to Kafka, one transaction per publish (or
/// idempotent writes per event).
pub(crate) struct Producer {
    /// Transactional producers; empty in per-event mode.
    pool: Vec<tokio::sync::Mutex<Slot>>,
    /// The producer of per-event mode.
    single: Option<Polled<Acks>>,
    next: AtomicUsize,
    topic: Arc<str>,
    timeout: Duration,
}

/// One transactional producer; replaced when librdkafka says it is no
/// longer usable (a fatal error, e.g. fenced by a newer instance).
struct Slot {
    producer: Polled<Acks>,
    config: rdkafka::config::ClientConfig,
    /// The last abort did not complete (the broker was away): finish it
    /// before the next transaction.
    needs_abort: bool,
}

/// Where an event landed, or why it did not.
type Ack = Result<(i32, i64), KafkaError>;

/// Hands each delivery report to the publish awaiting it.
struct Acks;

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<oneshot::Sender<Ack>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiting: Self::DeliveryOpaque) {
        let ack = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.clone()),
        };
        // The publish may have given up waiting; then nobody needs it.
        let _ = waiting.send(ack);
    }
}

/// A publish Kafka did not take.
#[derive(Debug, thiserror::Error)]
#[error("Kafka did not take the publish ({total} events): {reason}; {}", if .written.is_some() { "see which were written" } else { "nothing was published" })]
pub(crate) struct ProduceFailure {
    pub(crate) total: usize,
    pub(crate) reason: String,
    /// Per-event mode only: the ids of the events that were written, in
    /// request order (`None`: not written, or not known to be).
    pub(crate) written: Option<Vec<Option<EventId>>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("topic", &self.topic)
            .field("pool", &self.pool.len())
            .finish()
    }
}

// === impl Producer ===

impl Producer {
    /// Creates the pool and initialises each producer's transactions
    /// (blocking, up to the startup timeout each: call from a blocking
    /// context). `run` names this node's run (the id epoch).
    pub(crate) fn new(cfg: &KafkaConfig, topic: &str, run: u64) -> Result<Self, StartError> {
        let topic = Arc::from(topic);
        if !cfg.publish_transactions {
            let mut cc = client::config(cfg);
            cc.set(
                "message.timeout.ms",
                cfg.publish_timeout.as_millis().to_string(),
            )
            .set("linger.ms", "1")
            .set("enable.idempotence", "true");
            client::apply_user_properties(&mut cc, cfg);
            return Ok(Self {
                pool: Vec::new(),
                single: Some(
                    Polled::start(&cc, Acks, POLL_THREAD)
                        .map_err(|e| StartError::Client(e.to_string()))?,
                ),
                next: AtomicUsize::new(0),
                topic,
                timeout: cfg.publish_timeout,
            });
        }
        let mut pool = Vec::with_capacity(POOL);
        for k in 0..POOL {
            let mut cc = client::config(cfg);
            cc.set(
                "message.timeout.ms",
                cfg.publish_timeout.as_millis().to_string(),
            )
            // A publish is a request waiting for its answer: send at once.
            .set("linger.ms", "1")
            .set("transactional.id", format!("herald-{run:x}-{k}"))
            // Longer than a publish waits, so the broker does not abort a
            // transaction the producer is still committing.
            .set(
                "transaction.timeout.ms",
                (cfg.publish_timeout.as_millis() * 4)
                    .max(60_000)
                    .to_string(),
            );
            client::apply_user_properties(&mut cc, cfg);
            let slot = Slot::create(cc)?;
            pool.push(tokio::sync::Mutex::new(slot));
        }
        Ok(Self {
            pool,
            single: None,
            next: AtomicUsize::new(0),
            topic,
            timeout: cfg.publish_timeout,
        })
    }

    /// Produces the events as one transaction; returns their ids in order,
    /// or fails with nothing published.
    pub(crate) async fn publish(
        &self,
        events: &[Event<'_>],
    ) -> Result<Vec<EventId>, ProduceFailure> {
        if let Some(p) = &self.single {
            return self.per_event(p, events).await;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        let mut slot = self.pool[k].lock().await;
        let fail = |reason: String| ProduceFailure {
            total: events.len(),
            reason,
            written: None,
        };
        if slot.needs_abort {
            match self.abort(&slot.producer).await {
                Ok(()) => slot.needs_abort = false,
                Err(e) => {
                    return Err(fail(format!(
                        "the previous publish is still being aborted: {e}"
                    )))
                }
            }
        }
        let result = self.transaction(&slot.producer, events).await;
        match result {
            Ok(ids) => Ok(ids),
            Err(e) => {
                // Nothing of an aborted transaction is visible; a producer
                // that can no longer be used is replaced.
                let aborted = self.abort(&slot.producer).await;
                slot.needs_abort = aborted.is_err();
                let fatal = is_fatal(&e) || matches!(&aborted, Err(a) if is_fatal(a));
                if fatal {
                    tracing::error!(error = %e, "Kafka publish producer unusable; replacing it");
                    let config = slot.config.clone();
                    match tokio::task::spawn_blocking(move || Slot::create(config)).await {
                        Ok(Ok(fresh)) => *slot = fresh,
                        Ok(Err(error)) => {
                            tracing::error!(%error, "cannot replace the Kafka publish producer")
                        }
                        Err(error) => {
                            tracing::error!(%error, "cannot replace the Kafka publish producer")
                        }
                    }
                }
                let mut reason = e.to_string();
                if matches!(&e, KafkaError::Transaction(t) if t.code() == rdkafka::types::RDKafkaErrorCode::UnsupportedFeature)
                {
                    reason.push_str(
                        " (this broker has no transactions: start herald with --kafka-publish-transactions false)",
                    );
                }
                Err(fail(reason))
            }
        }
    }

    /// Per-event mode: one idempotent write per event; every
    /// acknowledgement awaited.
    async fn per_event(
        &self,
        producer: &Polled<Acks>,
        events: &[Event<'_>],
    ) -> Result<Vec<EventId>, ProduceFailure> {
        let pending: Vec<_> = events.iter().map(|ev| self.send(producer, ev)).collect();
        let mut written = Vec::with_capacity(events.len());
        let mut first_error = None;
        for p in pending {
            let result = match p {
                Ok(ack) => self.landed(ack).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(id) => written.push(Some(id)),
                Err(e) => {
                    first_error.get_or_insert(e);
                    written.push(None);
                }
            }
        }
        match first_error {
            None => Ok(written.into_iter().flatten().collect()),
            Some(e) => Err(ProduceFailure {
                total: events.len(),
                reason: e.to_string(),
                written: Some(written),
            }),
        }
    }

    /// Aborts the producer's open transaction (blocking, up to the publish
    /// timeout).
    async fn abort(&self, producer: &Polled<Acks>) -> Result<(), KafkaError> {
        let p = producer.handle();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || p.abort_transaction(timeout))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }

    /// Begin, produce every event, commit.
    async fn transaction(
        &self,
        producer: &Polled<Acks>,
        events: &[Event<'_>],
    ) -> Result<Vec<EventId>, KafkaError> {
        producer.begin_transaction()?;
        let mut pending = Vec::with_capacity(events.len());
        for ev in events {
            pending.push(self.send(producer, ev)?);
        }
        let mut ids = Vec::with_capacity(events.len());
        for ack in pending {
            ids.push(self.landed(ack).await?);
        }
        let p = producer.handle();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || p.commit_transaction(timeout))
            .await
            .map_err(|_| KafkaError::Canceled)??;
        Ok(ids)
    }

    /// Queues the record for one event; the receiver gets its delivery
    /// report. Ordering: Kafka keeps order within a
    /// partition, so events that must stay in order share one. A user's
    /// events are keyed by the user (the contract); a topic's events by the
    /// topic name (routing follows the `sse-topic` header, the key only picks
    /// the partition); broadcasts carry no key (that is what makes them
    /// broadcasts) and all go to partition 0.
    fn send(
        &self,
        producer: &Polled<Acks>,
        ev: &Event<'_>,
    ) -> Result<oneshot::Receiver<Ack>, KafkaError> {
        let (tx, rx) = oneshot::channel();
        let mut headers = OwnedHeaders::new();
        let mut key = None;
        let mut partition = None;
        match &ev.target {
            Target::User(u) => key = Some(u.as_str()),
            Target::Topic(t) => {
                key = Some(t.as_str());
                headers = headers.insert(Header {
                    key: TOPIC_HEADER,
                    value: Some(t.as_str()),
                })
            }
            Target::Broadcast => partition = Some(0),
            // The publish API never makes these (only Kafka mappings do).
            // Fail closed if one ever got here: an empty `sse-topic` is a
            // record every node skips (`bad_topic`), never a broadcast.
            Target::Many(_) => {
                partition = Some(0);
                headers = headers.insert(Header {
                    key: TOPIC_HEADER,
                    value: Some(""),
                })
            }
        }
        if let Some(e) = ev.kind() {
            headers = headers.insert(Header {
                key: EVENT_HEADER,
                value: Some(e),
            });
        }
        let mut record = BaseRecord::<str, str, _>::with_opaque_to(&self.topic, Box::new(tx))
            .payload(ev.data.as_ref())
            .headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = partition {
            record = record.partition(p);
        }
        producer.send(record).map_err(|(e, _)| e)?;
        Ok(rx)
    }

    /// The id of a sent event once Kafka acknowledged it.
    async fn landed(&self, ack: oneshot::Receiver<Ack>) -> Result<EventId, KafkaError> {
        // A dropped sender: the producer went away without a report.
        let (partition, offset) = ack.await.map_err(|_| KafkaError::Canceled)??;
        Ok(EventId::Kafka {
            topic: self.topic.clone(),
            partition,
            offset,
        })
    }
}

// === impl Slot ===

impl Slot {
    /// A transactional producer, its transactions initialised (blocking).
    fn create(config: rdkafka::config::ClientConfig) -> Result<Self, StartError> {
        let producer = Polled::start(&config, Acks, POLL_THREAD)
            .map_err(|e| StartError::Client(e.to_string()))?;
        producer
            .init_transactions(STARTUP_TIMEOUT)
            .map_err(|e| StartError::Transactions(e.to_string()))?;
        Ok(Self {
            producer,
            config,
            needs_abort: false,
        })
    }
}

fn is_fatal(e: &KafkaError) -> bool {
    matches!(e, KafkaError::Transaction(t) if t.is_fatal())
}
