//! The producer behind `POST /api/publish` in Kafka mode: each event is
//! produced to `--kafka-publish-topic` (keyed and headered per the record
//! mapping, so it reads back as the same event) and the publish is answered
//! once the broker has acknowledged every event, or fails after
//! `--kafka-publish-timeout`. Delivery to streams happens when the consumer
//! reads the records back, on every node.

use std::sync::Arc;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;
use crate::event::{Event, Target};
use crate::sse::EventId;

use super::client::{self, StartError};
use super::record::{EVENT_HEADER, TOPIC_HEADER};

/// Produces published events to Kafka.
pub(crate) struct Producer {
    producer: FutureProducer,
    topic: Arc<str>,
}

/// A publish the broker did not acknowledge.
#[derive(Debug, thiserror::Error)]
#[error("Kafka did not acknowledge {failed} of {total} events: {first}")]
pub(crate) struct ProduceFailure {
    pub failed: usize,
    pub total: usize,
    pub first: String,
    /// Ids of the events that were acknowledged (in request order, `None`
    /// for failed ones).
    pub ids: Vec<Option<EventId>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("topic", &self.topic)
            .finish()
    }
}

// === impl Producer ===

impl Producer {
    pub(crate) fn new(cfg: &KafkaConfig) -> Result<Self, StartError> {
        let mut cc = client::config(cfg);
        cc.set(
            "message.timeout.ms",
            cfg.publish_timeout.as_millis().to_string(),
        )
        // A publish is a request waiting for its answer: send at once.
        .set("linger.ms", "1");
        client::apply_user_properties(&mut cc, cfg);
        Ok(Self {
            producer: cc.create().map_err(|e| StartError::Client(e.to_string()))?,
            topic: Arc::from(cfg.publish_topic.as_str()),
        })
    }

    /// Produces each event (keyed and headered per the record mapping) and
    /// waits for every acknowledgement; returns their ids in order.
    pub(crate) async fn publish(
        &self,
        events: &[Event<'_>],
    ) -> Result<Vec<EventId>, ProduceFailure> {
        let mut pending = Vec::with_capacity(events.len());
        for ev in events {
            // Ordering: Kafka keeps order within a partition, so events that
            // must stay in order share one. A user's events are keyed by the
            // user (the contract); a topic's events are keyed by the topic
            // name (routing follows the `sse-topic` header, the key only
            // picks the partition); broadcasts carry no key (that is what
            // makes them broadcasts) and all go to partition 0.
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
            }
            if let Some(e) = ev.kind() {
                headers = headers.insert(Header {
                    key: EVENT_HEADER,
                    value: Some(e),
                });
            }
            let mut record = FutureRecord::to(&self.topic)
                .payload(ev.data.as_ref())
                .headers(headers);
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(p) = partition {
                record = record.partition(p);
            }
            pending.push(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| e.to_string()),
            );
        }
        let mut ids = Vec::with_capacity(events.len());
        let mut first_error = None;
        for p in pending {
            let result = match p {
                Ok(fut) => match fut.await {
                    Ok(Ok(d)) => Ok(EventId::Kafka {
                        topic: self.topic.clone(),
                        partition: d.partition,
                        offset: d.offset,
                    }),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("the producer was shut down".to_owned()),
                },
                Err(e) => Err(e),
            };
            match result {
                Ok(id) => ids.push(Some(id)),
                Err(e) => {
                    first_error.get_or_insert(e);
                    ids.push(None);
                }
            }
        }
        match first_error {
            None => Ok(ids.into_iter().flatten().collect()),
            Some(first) => Err(ProduceFailure {
                failed: ids.iter().filter(|i| i.is_none()).count(),
                total: ids.len(),
                first,
                ids,
            }),
        }
    }
}
