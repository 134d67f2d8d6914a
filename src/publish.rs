//! Publishing behind one interface: a [`Sink`] takes a validated batch of
//! events and answers their ids, whether it dispatches them on this node
//! (embedded mode) or produces them to Kafka (every node then delivers them
//! when it reads them back). Its failures are a typed [`PublishError`]; the
//! HTTP handler maps each to an answer in one place.

use std::sync::Arc;
use std::time::Duration;

use crate::event::Event;
use crate::fanout::{Fanout, Source};
use crate::kafka::{ProduceFailure, Producer};
use crate::sse::EventId;

/// Where published events go.
#[derive(Debug)]
pub(crate) enum Sink {
    /// Embedded mode: dispatched here, after waiting up to `backpressure`
    /// while herald is behind on delivery.
    Local {
        fanout: Arc<Fanout>,
        backpressure: Option<Duration>,
    },
    /// Kafka mode.
    Kafka(Arc<Producer>),
    /// Kafka mode with no topic to publish to (every topic read has a
    /// mapping rule).
    Off,
}

/// Why a batch was not published.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    /// herald stayed behind on delivery for the whole wait; nothing was
    /// published.
    #[error("herald is behind on delivery (many streams have deep queues) and stayed behind for --publish-backpressure ({} ms); nothing was published", .waited.as_millis())]
    Behind { waited: Duration },
    /// Kafka did not take the publish's transaction (within
    /// `--kafka-publish-timeout`); none of it was written.
    #[error("{0}")]
    Kafka(#[from] ProduceFailure),
    /// Kafka mode without a publish topic.
    #[error("publishing is off on this node: every Kafka topic it reads has a --kafka-mapping rule, and herald publishes only to a topic in its own record format (name one with --kafka-publish-topic)")]
    Off,
}

// === impl Sink ===

impl Sink {
    /// Publishes a batch, in order; returns each event's id.
    pub(crate) async fn publish(&self, events: &[Event<'_>]) -> Result<Vec<EventId>, PublishError> {
        match self {
            Sink::Local {
                fanout,
                backpressure,
            } => {
                if let Some(max) = *backpressure {
                    if fanout.room(max).await.is_err() {
                        return Err(PublishError::Behind { waited: max });
                    }
                }
                Ok(fanout.publish(events, Source::Http))
            }
            Sink::Kafka(producer) => Ok(producer.publish(events).await?),
            Sink::Off => Err(PublishError::Off),
        }
    }
}
