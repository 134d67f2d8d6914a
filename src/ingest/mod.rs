//! Ingest: events from Kafka into the dispatcher, on a thread of their own.
//!
//! - `kafka`: the consumer thread (every partition of every configured topic,
//!   assigned directly, never shared through a consumer group), start
//!   positions, partition pickup, broker health; and the producer behind
//!   `POST /api/publish` in Kafka mode.
//! - `record`: the pure record -> event mapping.
//!
//! The consumer never runs on the HTTP workers: a burst of connections can
//! not starve consumption, and a slow broker can not stall HTTP. It hands the
//! dispatcher whole polled bursts, in partition order, under one lock.

pub mod kafka;
pub mod record;

pub use kafka::{Ingest, IngestError, Publisher, Status};
