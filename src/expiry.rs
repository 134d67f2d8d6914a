//! Ends streams when their token expires.
//!
//! A stream opened with a JWT is entered here under its `exp`. A once-a-second
//! task ([`Expiries::expire_due`]) queues a `herald-token-expired` event on
//! each stream whose time has come and ends it, so the page can fetch a fresh
//! token and reconnect. One ordered map for all streams: no timer per
//! connection. Entries of streams that closed earlier are dropped when their
//! time comes (they hold only a weak reference).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::registry::queue::CloseReason;
use crate::registry::Subscriber;
use crate::sse::frame;

/// Streams by expiry time.
#[derive(Debug, Default)]
pub(crate) struct Expiries {
    next: AtomicU64,
    due: Mutex<BTreeMap<(u64, u64), Weak<Subscriber>>>,
}

impl Expiries {
    /// Ends `sub` at `at` (seconds since the epoch).
    pub(crate) fn add(&self, at: u64, sub: &Arc<Subscriber>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.due.lock().insert((at, n), Arc::downgrade(sub));
    }

    /// Ends every stream whose token expired at or before `now`; returns how
    /// many were still open. `open` (streams open now) bounds the entries
    /// kept for streams that closed before their expiry: past twice that,
    /// they are dropped, so reconnecting clients with long-lived tokens do
    /// not pile entries up.
    pub(crate) fn expire_due(&self, now: u64, open: usize) -> usize {
        let due = {
            let mut map = self.due.lock();
            let mut later = map.split_off(&(now + 1, 0));
            if later.len() > (2 * open).max(1024) {
                later.retain(|_, sub| sub.strong_count() > 0);
            }
            std::mem::replace(&mut *map, later)
        };
        let mut ended = 0;
        for ((exp, _), sub) in due {
            let Some(sub) = sub.upgrade() else { continue };
            sub.end(CloseReason::Expired, Some(frame::token_expired(exp)));
            ended += 1;
        }
        ended
    }

    /// Streams waiting for their expiry (including closed ones not yet due).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.due.lock().len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Name;
    use crate::registry::Registry;

    #[test]
    fn ends_due_streams_and_forgets_closed_ones() {
        let registry = Arc::new(Registry::new(4));
        let e = Expiries::default();
        let live = registry.insert(Name::new("a").unwrap(), vec![], None, None);
        e.add(100, live.subscriber());
        for _ in 0..3000 {
            let gone = registry.insert(Name::new("b").unwrap(), vec![], None, None);
            e.add(200, gone.subscriber());
        }
        assert_eq!(e.len(), 3001);
        // Nothing due yet; the closed streams' entries go.
        assert_eq!(e.expire_due(50, 1), 0);
        assert_eq!(e.len(), 1);
        assert!(live.subscriber().queue.closed().is_none());
        assert_eq!(e.expire_due(100, 1), 1);
        assert_eq!(live.subscriber().queue.closed(), Some(CloseReason::Expired));
        assert!(e.is_empty());
    }
}
