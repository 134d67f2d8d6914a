//! `--kafka-dead-letter-topic`: a record herald can not map is written
//! there as it was (key, value, headers) plus headers saying where it came
//! from and why, so it can be inspected and replayed. Writing never blocks
//! ingest: the record is handed to the producer's queue and ingest moves
//! on; a full queue or a failed delivery is counted and logged, never
//! retried by stalling the partition.

use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::ClientContext;

use super::client::{self, StartError};
use super::polled::Polled;
use super::record::Rejected;
use crate::config::KafkaConfig;
use crate::metrics as m;

/// Header: the topic the record was read from.
pub(crate) const SOURCE_TOPIC: &str = "herald-source-topic";
/// Header: its partition (decimal).
pub(crate) const SOURCE_PARTITION: &str = "herald-source-partition";
/// Header: its offset (decimal).
pub(crate) const SOURCE_OFFSET: &str = "herald-source-offset";
/// Header: the reason, as the skip metric's label (`unknown_schema`, ...).
pub(crate) const ERROR: &str = "herald-error";
/// Header: the reason in words, with the decoder's message.
pub(crate) const ERROR_DETAIL: &str = "herald-error-detail";

/// Counts deliveries that failed after the record was queued.
#[derive(Debug)]
pub(crate) struct Counted;

impl ClientContext for Counted {}

impl ProducerContext for Counted {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, msg)) = result {
            metrics::counter!(m::KAFKA_DEAD_LETTERS, "outcome" => "failed").increment(1);
            tracing::warn!(topic = msg.topic(), %error, "a dead letter was not written");
        }
    }
}

/// The dead-letter writer.
pub(crate) struct DeadLetters {
    topic: String,
    producer: Polled<Counted>,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .finish()
    }
}

impl DeadLetters {
    pub(crate) fn start(cfg: &KafkaConfig) -> Result<Option<Self>, StartError> {
        let Some(topic) = &cfg.dead_letter_topic else {
            return Ok(None);
        };
        let mut c = client::config(cfg);
        c.set("enable.idempotence", "true").set("linger.ms", "20");
        client::apply_user_properties(&mut c, cfg);
        let producer = Polled::start(&c, Counted, "kafka-dead-ltrs")
            .map_err(|e| StartError::Client(e.to_string()))?;
        metrics::counter!(m::KAFKA_DEAD_LETTERS, "outcome" => "queued").increment(0);
        metrics::counter!(m::KAFKA_DEAD_LETTERS, "outcome" => "failed").increment(0);
        Ok(Some(Self {
            topic: topic.clone(),
            producer,
        }))
    }

    /// Queues `msg` with why it was refused; never waits.
    pub(crate) fn send<M: Message>(&self, msg: &M, why: &Rejected) {
        let mut headers = OwnedHeaders::new();
        if let Some(h) = msg.headers() {
            for h in h.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let detail = why.to_string();
        for (key, value) in [
            (SOURCE_TOPIC, msg.topic()),
            (SOURCE_PARTITION, &partition),
            (SOURCE_OFFSET, &offset),
            (ERROR, why.skip.as_str()),
            (ERROR_DETAIL, &detail),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
        if let Some(k) = msg.key() {
            record = record.key(k);
        }
        if let Some(v) = msg.payload() {
            record = record.payload(v);
        }
        match self.producer.send(record) {
            Ok(()) => metrics::counter!(m::KAFKA_DEAD_LETTERS, "outcome" => "queued").increment(1),
            Err((error, _)) => {
                metrics::counter!(m::KAFKA_DEAD_LETTERS, "outcome" => "failed").increment(1);
                tracing::warn!(topic = %self.topic, %error, "cannot queue a dead letter");
            }
        }
    }

    /// Waits (bounded) for queued dead letters on shutdown.
    pub(crate) fn flush(&self) {
        use rdkafka::producer::Producer as _;
        let _ = self.producer.flush(std::time::Duration::from_secs(5));
    }
}
