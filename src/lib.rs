//! herald: a Server-Sent Events fan-out server.
//!
//! ```text
//!  Kafka (kafka::consumer thread) ─┐
//!  POST /api/publish ── publish::Sink ┴─► fanout::Fanout::publish ── id, encode ONCE (sse::frame)
//!                                          │        └─► replay::Replay (bounded: count/bytes/age)
//!                                          ▼
//!                     registry::Registry: 2^k shards, parking_lot locks,
//!                     user → streams, topic → streams
//!                                          │  Bytes::clone per stream (refcount)
//!                                          ▼
//!                     registry::queue::Queue (bounded frames+bytes; overflow closes "slow")
//!                                          │  drained whole per wake-up
//!                                          ▼
//!                     stream::Stream (prefix, coalescing, end reasons, accounting)
//!                                          │
//!              http::h1 (herald's HTTP/1.1 writer) or http::Body via hyper (h2, h2c, TLS) ──► socket
//! ```
//!
//! Where things live (ARCHITECTURE.md has the full map, the lock order and
//! where to add a stream feature):
//! - `config`: flags/env -> validated [`config::Config`], by subsystem.
//! - `app`: what a node is made of, startup order, housekeeping tasks, the
//!   staged drain; [`app::start`] for tests and `main`.
//! - `server`: accept loop, connection cap and limits, per-connection task
//!   (herald's writer or hyper), TLS handshake.
//! - `http`: router; the one subscribe admission; publish; health, metrics;
//!   CORS; the two transports (`h1`, `body`).
//! - `stream`: the stream core every transport drives.
//! - `event`, `sse`: what an event is; the SSE wire format, protocol frames
//!   and ids.
//! - `registry`, `fanout`, `replay`, `expiry`: who is connected and their
//!   queues, dispatch, history, token expiry.
//! - `publish`: where published events go (this node or Kafka).
//! - `kafka`: consumer thread, producer, shared client settings, record
//!   mapping.
//! - `guard`, `abort`, `timed_io`: limits, a connection's kill switch, the
//!   write timeout.
//! - `lifecycle`, `limits`, `shutdown`, `metrics`: phase and readiness,
//!   process limits, signals, metric names.

mod abort;
pub mod app;
pub mod auth;
pub mod config;
pub mod event;
pub(crate) mod expiry;
pub mod fanout;
mod fmt;
pub mod forwarded;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod guard;
pub(crate) mod http;
pub mod jwks;
pub(crate) mod kafka;
pub mod lifecycle;
pub mod limits;
pub(crate) mod linger;
pub mod memory;
pub(crate) mod metrics;
pub(crate) mod publish;
pub mod registry;
pub mod replay;
pub(crate) mod runtimes;
pub(crate) mod server;
pub mod shutdown;
pub mod sse;
pub mod stream;
pub(crate) mod timed_io;
pub mod tls;
pub mod token;

pub use app::{run, start, Running, StartError};

/// Internals the benches measure (not a public API).
#[doc(hidden)]
pub mod bench {
    pub use crate::http::h1::write_chunk;

    /// One Kafka record mapped by a rule, the way ingest does before the
    /// dispatch lock: `format` is `string` (the default rule, text passed
    /// through), `json` (a field as the user, a field dropped), `avro` or
    /// `protobuf` (the same mapping, decoded with a held schema). Returns a
    /// closure mapping the same record each call (the data's length).
    pub fn map_record(format: &str) -> Box<dyn FnMut() -> usize> {
        crate::kafka::mapping::bench_case(format)
    }

    /// A publish body's work before and after dispatch, as the handler
    /// does it: parse and validate `body`, then build the answer naming
    /// the events' ids. Returns the answer's length.
    pub fn publish_body_and_reply(body: &[u8]) -> usize {
        crate::http::publish::bench_case(body)
    }
}
pub use config::{Cli, Config, ConfigError};
pub use kafka::mapping::Mappings;
