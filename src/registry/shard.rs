//! One registry shard: a `parking_lot` mutex over the user and topic maps of
//! the keys that hash to it. Never held across `.await`; critical sections
//! are a map lookup plus whatever the caller's [`super::RouteSink`] does per
//! subscriber (a queue push).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::event::Name;

use super::subscriber::Subscriber;

/// Subscribers of one key. Most keys have one or two (tabs).
pub(crate) type Subs = Vec<Arc<Subscriber>>;

#[derive(Debug, Default)]
pub(crate) struct Shard {
    pub(crate) inner: Mutex<Maps>,
}

#[derive(Debug, Default)]
pub(crate) struct Maps {
    /// user id -> that user's connections. Every subscriber is in exactly one
    /// shard's `users`, which is what a broadcast walks.
    pub(crate) users: HashMap<Name, Subs>,
    /// topic -> connections subscribed to it.
    pub(crate) topics: HashMap<Name, Subs>,
    /// Connections whose user hashes here (== sum of `users` list lengths).
    pub(crate) connections: usize,
}

// === impl Maps ===

impl Maps {
    pub(crate) fn insert(map: &mut HashMap<Name, Subs>, key: &Name, sub: &Arc<Subscriber>) {
        map.entry(key.clone()).or_default().push(sub.clone());
    }

    /// Removes `sub` from `key`'s list; drops the key when its list empties.
    pub(crate) fn remove(map: &mut HashMap<Name, Subs>, key: &Name, sub: &Subscriber) -> bool {
        let Some(list) = map.get_mut(key) else {
            return false;
        };
        let Some(pos) = list.iter().position(|s| s.id == sub.id) else {
            return false;
        };
        list.swap_remove(pos);
        if list.is_empty() {
            map.remove(key);
        } else if list.capacity() > 8 && list.len() * 4 < list.capacity() {
            list.shrink_to_fit();
        }
        true
    }
}
