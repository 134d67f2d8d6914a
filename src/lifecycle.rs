//! The node's phase (starting, serving, draining) and the health of what it
//! depends on (Kafka ingest): what readiness answers, what refuses new
//! streams while draining. Written by `app` (and the Kafka consumer, for its
//! health), read everywhere else; it imports nothing of herald's.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Listeners bound, not yet serving.
    Starting,
    /// Serving.
    Serving,
    /// Draining for shutdown: no new streams, not ready.
    Draining,
}

/// The phase, and ingest's health in Kafka mode.
#[derive(Debug)]
pub struct Lifecycle {
    phase: AtomicU8,
    ingest: Option<Arc<IngestHealth>>,
    /// Maintenance (the admin API): new streams are refused until then,
    /// with this message; open streams go on.
    maintenance: parking_lot::Mutex<Option<(Instant, Arc<str>)>>,
}

/// What the Kafka consumer reports about itself (it writes, readiness and
/// metrics read).
#[derive(Debug, Default)]
pub struct IngestHealth {
    /// The last metadata refresh succeeded.
    pub(crate) connected: AtomicBool,
    /// The consumer thread ended when nobody asked it to (a panic).
    pub(crate) stopped: AtomicBool,
}

impl IngestHealth {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Why the node is not ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    Starting,
    Draining,
    KafkaUnreachable,
    IngestStopped,
}

impl NotReady {
    pub fn message(self) -> &'static str {
        match self {
            NotReady::Starting => "not ready: starting",
            NotReady::Draining => "not ready: draining",
            NotReady::KafkaUnreachable => {
                "not ready: Kafka is unreachable (open streams are still served)"
            }
            NotReady::IngestStopped => {
                "not ready: Kafka ingest stopped unexpectedly (see the log); restart this node"
            }
        }
    }
}

impl Lifecycle {
    pub fn new(ingest: Option<Arc<IngestHealth>>) -> Self {
        Self {
            phase: AtomicU8::new(Phase::Starting as u8),
            ingest,
            maintenance: parking_lot::Mutex::new(None),
        }
    }

    /// Refuse new streams for `period` with `message` (`None`: end a
    /// maintenance early).
    pub fn set_maintenance(&self, window: Option<(Duration, Arc<str>)>) {
        *self.maintenance.lock() = window.map(|(d, m)| (Instant::now() + d, m));
    }

    /// While in maintenance: how long it still lasts, and its message.
    pub fn maintenance(&self) -> Option<(Duration, Arc<str>)> {
        let mut m = self.maintenance.lock();
        match &*m {
            Some((until, msg)) => match until.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some((left, msg.clone())),
                _ => {
                    *m = None;
                    None
                }
            },
            None => None,
        }
    }

    pub fn set(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::SeqCst) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Draining,
        }
    }

    /// Enters `Draining`; `false` if the node was draining already (so one
    /// caller starts a drain).
    pub fn begin_draining(&self) -> bool {
        self.phase.swap(Phase::Draining as u8, Ordering::SeqCst) != Phase::Draining as u8
    }

    pub fn draining(&self) -> bool {
        self.phase() == Phase::Draining
    }

    /// `Ok` when the node serves and what it depends on is reachable.
    pub fn ready(&self) -> Result<(), NotReady> {
        match self.phase() {
            Phase::Starting => Err(NotReady::Starting),
            Phase::Draining => Err(NotReady::Draining),
            Phase::Serving
                if self
                    .ingest
                    .as_ref()
                    .is_some_and(|i| i.stopped.load(Ordering::Acquire)) =>
            {
                Err(NotReady::IngestStopped)
            }
            Phase::Serving if self.ingest.as_ref().is_some_and(|i| !i.connected()) => {
                Err(NotReady::KafkaUnreachable)
            }
            Phase::Serving => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_caller_begins_a_drain() {
        let l = Lifecycle::new(None);
        l.set(Phase::Serving);
        assert!(l.begin_draining());
        assert!(!l.begin_draining(), "already draining");
        assert_eq!(l.ready(), Err(NotReady::Draining));
    }

    #[test]
    fn readiness_follows_phase_and_ingest() {
        let ingest = Arc::new(IngestHealth::default());
        ingest.connected.store(true, Ordering::Relaxed);
        let l = Lifecycle::new(Some(ingest.clone()));
        assert_eq!(l.ready(), Err(NotReady::Starting));
        l.set(Phase::Serving);
        assert_eq!(l.ready(), Ok(()));
        ingest.connected.store(false, Ordering::Relaxed);
        assert_eq!(l.ready(), Err(NotReady::KafkaUnreachable));
        ingest.stopped.store(true, Ordering::Relaxed);
        assert_eq!(l.ready(), Err(NotReady::IngestStopped));
        l.set(Phase::Draining);
        assert_eq!(l.ready(), Err(NotReady::Draining));
    }
}
