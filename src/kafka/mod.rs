//! Kafka: the consumer that feeds the dispatcher (ingest), the producer
//! behind `POST /api/publish` in Kafka mode, the settings they share, and
//! the pure record -> event mapping.
//!
//! - `consumer`: one dedicated thread (never the HTTP workers: a burst of
//!   connections cannot starve consumption, a slow broker cannot stall
//!   HTTP) reading every partition of every configured topic, assigned
//!   directly, never shared through a consumer group; start positions,
//!   partition pickup, broker health; whole polled bursts dispatched in
//!   partition order under one lock.
//! - `producer`: publishes, answered on the broker's acknowledgement.
//! - `polled`: a producer with its own poll thread (the publish pool and
//!   the dead-letter writer).
//! - `catchup`: the pool of readers that catch streams up from Kafka
//!   when the replay buffer can not serve their cursor.
//! - `client`: client settings, start errors, error kinds.
//! - `record`: key / headers / value -> [`crate::event::Event`].

pub(crate) mod catchup;
pub(crate) mod client;
pub(crate) mod consumer;
pub(crate) mod dead_letter;
pub(crate) mod format;
pub(crate) mod mapping;
pub(crate) mod polled;
pub(crate) mod producer;
pub(crate) mod record;

pub(crate) use client::StartError;
pub(crate) use consumer::Ingest;
pub(crate) use producer::{ProduceFailure, Producer};
