//! One SSE connection as the registry sees it: who it is for, what it
//! subscribed to, and its outbound queue. The [`Subscription`] handle, owned by
//! the connection's body, unregisters it on drop, so a connection that ends for
//! any reason (client gone, slow, shutdown, error) leaves no trace.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::abort::Abort;
use crate::event::{Name, Target};

use super::queue::{CloseReason, Queue};
use super::shard::Key;
use super::Registry;

/// A registered connection.
#[derive(Debug)]
pub struct Subscriber {
    /// Unique per process; tells two tabs of one user apart on unregister.
    pub(crate) id: u64,
    pub user: Name,
    pub topics: Box<[Name]>,
    /// For logs when the server closes the connection.
    pub peer: Option<SocketAddr>,
    pub queue: Queue,
    /// Kills the connection when the queue overflows (see `abort.rs`).
    pub abort: Option<Arc<Abort>>,
    /// Other streams share the connection (HTTP/2): an overflow ends only
    /// this stream (its body answers with an error, and hyper resets it),
    /// never the connection.
    pub shared_conn: bool,
    /// Event frames written to this connection. Only its writer adds (once
    /// per batch), so no cache line is shared between cores; `/metrics` sums
    /// these at scrape time (see `Registry::delivered`).
    pub delivered: AtomicU64,
    /// Its position in its user's list, its shard's flat list, and each
    /// topic's list (aligned with `topics`): written and read only under
    /// that list's shard lock (atomics only because the subscriber is
    /// shared).
    pub(crate) slots: Box<[AtomicU32]>,
}

/// Owns a registration; dropping it unregisters.
#[derive(Debug)]
pub struct Subscription {
    sub: Arc<Subscriber>,
    registry: Arc<Registry>,
}

// === impl Subscriber ===

impl Subscriber {
    /// Whether an event for `target` is meant for this connection.
    pub fn wants(&self, target: &Target) -> bool {
        match target {
            Target::Broadcast => true,
            Target::User(u) => *u == self.user,
            Target::Topic(t) => self.topics.contains(t),
            Target::Many(all) => all.iter().any(|t| self.wants(t)),
        }
    }

    fn slot_index(key: Key) -> usize {
        match key {
            Key::User => 0,
            Key::All => 1,
            Key::Topic(i) => i + 2,
        }
    }

    /// Its position in a list (see `slots`).
    pub(crate) fn slot(&self, key: Key) -> usize {
        self.slots[Self::slot_index(key)].load(Ordering::Relaxed) as usize
    }

    pub(crate) fn set_slot(&self, key: Key, pos: usize) {
        self.slots[Self::slot_index(key)].store(pos as u32, Ordering::Relaxed);
    }

    /// Kills the underlying connection, if it has a kill switch and is
    /// this stream's alone.
    pub fn abort(&self) {
        if let Some(a) = self.abort.as_ref().filter(|_| !self.shared_conn) {
            a.trip();
        }
    }

    /// The one way the server ends a stream: closes its queue with `reason`
    /// (`last` is queued first, and what is queued is still delivered, when
    /// the reason allows it) and wakes its writer. Call it with no shard or
    /// dispatch lock held. A stream that had ended already is left as is.
    pub fn end(&self, reason: CloseReason, last: Option<Bytes>) {
        if let Some(w) = self.queue.close(reason, last) {
            w.wake();
        }
    }
}

// === impl Subscription ===

impl Subscription {
    pub(crate) fn new(sub: Arc<Subscriber>, registry: Arc<Registry>) -> Self {
        Self { sub, registry }
    }

    pub fn subscriber(&self) -> &Arc<Subscriber> {
        &self.sub
    }

    /// The registry it is in.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.registry.remove(&self.sub);
    }
}
