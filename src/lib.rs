//! herald: a Server-Sent Events fan-out server.
//!
//! ```text
//!  Kafka (ingest thread) ─┐
//!  POST /api/publish ─────┴─► fanout::Fanout::publish ── id, encode ONCE (sse::frame)
//!                              │        └─► replay::Replay (bounded: count/bytes/age)
//!                              ▼
//!                   registry::Registry: 2^k shards, parking_lot locks,
//!                   user → connections, topic → connections
//!                              │  Bytes::clone per connection (refcount)
//!                              ▼
//!                   fanout::queue::Queue (bounded frames+bytes; overflow closes "slow")
//!                              │  drained whole per wake-up
//!                              ▼
//!         http::fast (HTTP/1.1 streams) or http::SseBody via hyper (h2c) ──► socket
//! ```
//!
//! Where things live:
//! - `config`: flags/env -> validated [`config::Config`].
//! - `app`: startup and shutdown order; [`app::start`] for tests and `main`.
//! - `server`: accept loop, connection cap, EMFILE backoff, per-connection task.
//! - `abort`: per-connection kill switch used to drop stalled clients.
//! - `http`: router and handlers (subscribe, publish, health, metrics) and bodies.
//! - `event`, `sse`: what an event is; the SSE wire format and ids.
//! - `registry`, `fanout`, `replay`: who is connected, dispatch, history.
//! - `ingest`: Kafka consumer thread, record mapping, publisher for Kafka mode.
//! - `limits`, `shutdown`, `metrics`: process limits, signals, metric names.

pub mod abort;
pub mod app;
pub mod auth;
pub mod config;
pub mod event;
pub mod expiry;
pub mod fanout;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod http;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod registry;
pub mod replay;
pub mod server;
pub mod shutdown;
pub mod sse;
pub mod timed_io;
pub mod tls;

pub use app::{run, start, Running};
pub use config::{Cli, Config, ConfigError};
