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
    /// Every connection whose user hashes here, in one flat list: what a
    /// broadcast walks (reading `users`' lists would cost a cache miss per
    /// user for the list itself).
    pub(crate) all: Subs,
}

/// Which of a subscriber's lists an entry is in: its user's, or its
/// `i`-th topic's. The subscriber keeps its position in each (see
/// `Subscriber::slot`), so removal is O(1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    User,
    /// Its shard's flat list (`Maps::all`).
    All,
    Topic(usize),
}

// === impl Maps ===

impl Maps {
    /// Appends `sub` to `name`'s list, recording its position.
    pub(crate) fn insert(
        map: &mut HashMap<Name, Subs>,
        name: &Name,
        key: Key,
        sub: &Arc<Subscriber>,
    ) {
        push(map.entry(name.clone()).or_default(), key, sub);
    }

    /// Adds `sub` to the shard's flat list (its user's shard).
    pub(crate) fn insert_all(&mut self, sub: &Arc<Subscriber>) {
        push(&mut self.all, Key::All, sub);
    }

    /// Removes `sub` from the shard's flat list (if there).
    pub(crate) fn remove_all(&mut self, sub: &Subscriber) {
        take(&mut self.all, Key::All, sub, |_| Some(Key::All));
    }

    /// Removes `sub` from `name`'s list in O(1) (a swap with the last entry,
    /// whose recorded position is updated); drops the key when its list
    /// empties. False when `sub` was not there.
    pub(crate) fn remove(
        map: &mut HashMap<Name, Subs>,
        name: &Name,
        key: Key,
        sub: &Subscriber,
    ) -> bool {
        let Some(list) = map.get_mut(name) else {
            return false;
        };
        // The moved subscriber's key: the same, at its own index among its
        // (sorted) topics; a topic's list holds only its subscribers.
        let taken = take(list, key, sub, |moved| match key {
            Key::User | Key::All => Some(key),
            Key::Topic(_) => moved.topics.binary_search(name).ok().map(Key::Topic),
        });
        if list.is_empty() {
            map.remove(name);
        }
        taken
    }
}

/// Appends `sub` to `list`, recording its position under `key`.
fn push(list: &mut Subs, key: Key, sub: &Arc<Subscriber>) {
    sub.set_slot(key, list.len());
    list.push(sub.clone());
}

/// Removes `sub` (at its recorded position under `key`) from `list` in O(1):
/// a swap with the last entry, whose position is updated under the key
/// `moved_key` gives for it. False when `sub` was not there.
fn take(
    list: &mut Subs,
    key: Key,
    sub: &Subscriber,
    moved_key: impl FnOnce(&Subscriber) -> Option<Key>,
) -> bool {
    let pos = sub.slot(key);
    if list.get(pos).is_none_or(|s| s.id != sub.id) {
        return false;
    }
    list.swap_remove(pos);
    if let Some(moved) = list.get(pos) {
        if let Some(k) = moved_key(moved) {
            moved.set_slot(k, pos);
        }
    }
    if list.capacity() > 8 && list.len() * 4 < list.capacity() {
        list.shrink_to_fit();
    }
    true
}
