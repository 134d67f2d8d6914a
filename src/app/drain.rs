//! The staged drain on SIGTERM/SIGINT (see `app` for the stages), each
//! stage bounded by `--shutdown-deadline`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ShutdownConfig;
use crate::fanout::{self, Fanout};
use crate::kafka::Ingest;
use crate::lifecycle::{Lifecycle, Phase};

/// What the drain stops, in order.
#[derive(Debug)]
pub(super) struct Drain {
    pub(super) lifecycle: Arc<Lifecycle>,
    pub(super) fanout: Arc<Fanout>,
    /// Cancelled to stop the accept loops.
    pub(super) stop_accept: CancellationToken,
    pub(super) accepts: Vec<JoinHandle<()>>,
    pub(super) housekeeping: Vec<JoinHandle<()>>,
    /// Cancelled to tell connections to wind down.
    pub(super) graceful: CancellationToken,
    /// Closed once every connection task has ended.
    pub(super) all_closed: mpsc::Receiver<()>,
    pub(super) ingest: Option<Ingest>,
    pub(super) shutdown: ShutdownConfig,
    pub(super) retry: Duration,
}

impl Drain {
    pub(super) async fn run(mut self) {
        let deadline = tokio::time::Instant::now() + self.shutdown.deadline;
        // 1. Refuse new work.
        self.lifecycle.set(Phase::Draining);
        self.stop_accept.cancel();
        for a in self.accepts {
            let _ = a.await;
        }
        for t in self.housekeeping {
            t.abort();
        }
        // 2. End every stream, spread over the drain period.
        let registry = self.fanout.registry().clone();
        let streams = tokio::time::timeout_at(
            deadline,
            fanout::close_all(
                &registry,
                self.shutdown.drain,
                self.retry.as_millis() as u64,
            ),
        )
        .await
        .unwrap_or(0);
        // 3. Connections wind down; wait for the last one.
        self.graceful.cancel();
        let clean = tokio::time::timeout_at(deadline, self.all_closed.recv())
            .await
            .is_ok();
        // 4. Stop ingest.
        if let Some(ingest) = self.ingest {
            let _ = tokio::task::spawn_blocking(move || ingest.stop()).await;
        }
        if clean {
            tracing::info!(streams, "drained: all connections closed");
        } else {
            tracing::warn!(
                streams,
                remaining = registry.connections(),
                "drain deadline reached with connections still open"
            );
        }
    }
}
