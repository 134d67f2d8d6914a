//! Who is connected: a power-of-two array of `Shard`s, each a
//! `parking_lot`-locked pair of maps (user -> connections, topic ->
//! connections) and a flat list of the connections whose user hashes there,
//! the shard chosen by hashing the key.
//!
//! - A user or topic event locks exactly one shard. An event for a user
//!   whose streams take no topics locks it before the dispatch lock is
//!   released (`lock_user`): that shard alone orders what those streams get.
//! - A broadcast walks the shards' flat lists in turn, holding one lock at
//!   a time, prefetching each queue a few subscribers ahead (`push_all`).
//! - Routing hands each matching subscriber to a [`RouteSink`] under the shard
//!   lock (a push is a short, non-blocking queue operation); the sink wakes
//!   tasks and closes slow streams only after every lock is released.
//! - A subscriber with topics is registered under its user's shard and each
//!   topic's shard; locks are taken one after another, never nested.
//! - Each subscriber owns its outbound [`queue::Queue`], which lives here,
//!   beside its owner: the dispatcher pushes into it, the stream drains it.

pub mod load;
pub mod queue;
mod shard;
mod subscriber;

use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::abort::Abort;
use crate::event::{Name, Target};
use queue::Queue;

use shard::{Key, Maps, Shard};
pub use subscriber::{Subscriber, Subscription};

/// Receives the subscribers an event routes to.
pub trait RouteSink {
    /// Called under a shard lock for each matching subscriber: keep it short
    /// (no logging, no waking, no allocation beyond the push itself).
    fn push(&mut self, sub: &Arc<Subscriber>);
}

/// Passes each subscriber on once.
struct Once<'a, S: ?Sized> {
    sink: &'a mut S,
    seen: std::collections::HashSet<*const Subscriber>,
}

impl<S: RouteSink + ?Sized> RouteSink for Once<'_, S> {
    fn push(&mut self, sub: &Arc<Subscriber>) {
        if self.seen.insert(Arc::as_ptr(sub)) {
            self.sink.push(sub);
        }
    }
}

/// A user's shard, locked, its streams all topic-free (`Registry::lock_user`).
#[derive(Debug)]
pub struct UserShard<'a> {
    maps: parking_lot::MutexGuard<'a, shard::Maps>,
    user: &'a Name,
}

impl UserShard<'_> {
    /// Hands the user's streams to `sink`; the shard unlocks when this drops.
    pub fn route<S: RouteSink + ?Sized>(&self, sink: &mut S) {
        route_user(&self.maps, self.user, sink);
    }
}

/// Hands each of `subs` to `sink` in order, asking the CPU for each one's
/// queue [`AHEAD`] places before it is pushed to. A broadcast's pushes wait
/// on memory, not work: each queue was last written by the stream's worker,
/// often the other core, and fetching it took two thirds of a push (perf,
/// BENCHMARKS.md). Prefetched, those fetches overlap.
fn push_all<'a, S: RouteSink + ?Sized>(
    subs: impl Iterator<Item = &'a Arc<Subscriber>>,
    sink: &mut S,
) {
    let mut ahead: [Option<&Arc<Subscriber>>; AHEAD] = [None; AHEAD];
    let mut n = 0;
    for s in subs {
        s.queue.prefetch();
        if let Some(due) = ahead[n % AHEAD].replace(s) {
            sink.push(due);
        }
        n += 1;
    }
    for i in n..n + AHEAD {
        if let Some(due) = ahead[i % AHEAD].take() {
            sink.push(due);
        }
    }
}

/// How far ahead [`push_all`] prefetches.
const AHEAD: usize = 8;

fn route_user<S: RouteSink + ?Sized>(maps: &Maps, user: &Name, sink: &mut S) {
    for s in maps.users.get(user).into_iter().flatten() {
        sink.push(s);
    }
}

/// A user already holds as many streams as it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// The sharded registry of open SSE connections.
#[derive(Debug)]
pub struct Registry {
    shards: Box<[Shard]>,
    /// `shards.len() - 1`; shard count is a power of two.
    mask: usize,
    hasher: RandomState,
    next_id: AtomicU64,
    /// Event frames written to connections that have since closed.
    retired_delivered: AtomicU64,
    /// Whether the runtime keeps up (the lag probe's findings).
    load: load::Load,
}

// === impl Registry ===

impl Registry {
    /// `shards` is rounded up to a power of two (at least 1).
    pub fn new(shards: usize) -> Self {
        let n = shards.max(1).next_power_of_two();
        Self {
            shards: (0..n).map(|_| Shard::default()).collect(),
            mask: n - 1,
            hasher: RandomState::new(),
            next_id: AtomicU64::new(1),
            retired_delivered: AtomicU64::new(0),
            load: load::Load::default(),
        }
    }

    /// Whether the runtime keeps up: the lag probe's findings.
    pub fn load(&self) -> &load::Load {
        &self.load
    }

    fn shard(&self, key: &Name) -> &Shard {
        let h = self.hasher.hash_one(key.as_str()) as usize;
        &self.shards[h & self.mask]
    }

    /// Registers a connection. The returned handle unregisters on drop.
    pub fn insert(
        self: &Arc<Self>,
        user: Name,
        topics: Vec<Name>,
        peer: Option<SocketAddr>,
        abort: Option<Arc<Abort>>,
    ) -> Subscription {
        let sub = self.subscriber(user, topics, peer, abort, false);
        match self.register(sub, None) {
            Ok(s) => s,
            Err(Full) => unreachable!("no limit given"),
        }
    }

    /// A new, not yet registered subscriber (allocates; locks a shard only
    /// to share a topic name already registered). `shared_conn`: HTTP/2,
    /// other streams on the same connection.
    pub fn subscriber(
        &self,
        user: Name,
        topics: Vec<Name>,
        peer: Option<SocketAddr>,
        abort: Option<Arc<Abort>>,
        shared_conn: bool,
    ) -> Arc<Subscriber> {
        let mut topics = topics;
        topics.sort();
        topics.dedup();
        // One copy of each topic name for all its streams: a stream of 64
        // long topic names then holds 64 pointers, not 64 strings.
        for t in topics.iter_mut() {
            if let Some((known, _)) = self.shard(t).inner.lock().topics.get_key_value(t) {
                *t = known.clone();
            }
        }
        let slots = (0..topics.len() + 2).map(|_| Default::default()).collect();
        Arc::new(Subscriber {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user,
            slots,
            topics: topics.into_boxed_slice(),
            peer,
            queue: Queue::new(),
            abort,
            shared_conn,
            delivered: AtomicU64::new(0),
        })
    }

    /// Registers `sub` under its user and topics, unless its user already
    /// holds `max_per_user` streams (checked and taken under the user's
    /// shard lock: concurrent opens cannot overshoot). The returned handle
    /// unregisters on drop.
    pub fn register(
        self: &Arc<Self>,
        sub: Arc<Subscriber>,
        max_per_user: Option<std::num::NonZeroUsize>,
    ) -> Result<Subscription, Full> {
        {
            let mut maps = self.shard(&sub.user).inner.lock();
            let open = maps.users.get(&sub.user).map_or(0, Vec::len);
            if max_per_user.is_some_and(|m| open >= m.get()) {
                return Err(Full);
            }
            Maps::insert(&mut maps.users, &sub.user, Key::User, &sub);
            maps.insert_all(&sub);
        }
        for (i, t) in sub.topics.iter().enumerate() {
            Maps::insert(
                &mut self.shard(t).inner.lock().topics,
                t,
                Key::Topic(i),
                &sub,
            );
        }
        Ok(Subscription::new(sub, self.clone()))
    }

    /// The streams of `user` (a copy of the list, taken under its shard
    /// lock).
    pub fn user_subscribers(&self, user: &Name) -> Vec<Arc<Subscriber>> {
        self.shard(user)
            .inner
            .lock()
            .users
            .get(user)
            .cloned()
            .unwrap_or_default()
    }

    /// Open streams of `user`.
    pub fn user_streams(&self, user: &Name) -> usize {
        self.shard(user)
            .inner
            .lock()
            .users
            .get(user)
            .map_or(0, Vec::len)
    }

    pub(crate) fn remove(&self, sub: &Subscriber) {
        self.retired_delivered
            .fetch_add(sub.delivered.load(Ordering::Relaxed), Ordering::Relaxed);
        {
            let mut maps = self.shard(&sub.user).inner.lock();
            if Maps::remove(&mut maps.users, &sub.user, Key::User, sub) {
                maps.remove_all(sub);
            }
        }
        for (i, t) in sub.topics.iter().enumerate() {
            Maps::remove(
                &mut self.shard(t).inner.lock().topics,
                t,
                Key::Topic(i),
                sub,
            );
        }
    }

    /// Locks the shard of `user` for a dispatch that releases the dispatch
    /// lock before routing (lock coupling, `Fanout::publish`). `None` when
    /// one of the user's streams also subscribed to topics: an event for a
    /// topic reaches that stream through another shard, so only the
    /// dispatch lock keeps the two events in order for it.
    pub fn lock_user<'a>(&'a self, user: &'a Name) -> Option<UserShard<'a>> {
        let maps = self.shard(user).inner.lock();
        let alone = maps
            .users
            .get(user)
            .is_none_or(|subs| subs.iter().all(|s| s.topics.is_empty()));
        alone.then_some(UserShard { maps, user })
    }

    /// Waits until no dispatch still routes to `sub`'s shards: locks each
    /// in turn (never nested). Called under the dispatch lock, after which
    /// no new dispatch can start, it leaves none in flight.
    pub fn settle(&self, sub: &Subscriber) {
        drop(self.shard(&sub.user).inner.lock());
        for t in sub.topics.iter() {
            drop(self.shard(t).inner.lock());
        }
    }

    /// Hands every subscriber `target` reaches to `sink`.
    pub fn route<S: RouteSink + ?Sized>(&self, target: &Target, sink: &mut S) {
        match target {
            Target::User(u) => {
                let maps = self.shard(u).inner.lock();
                route_user(&maps, u, sink);
            }
            Target::Topic(t) => {
                let maps = self.shard(t).inner.lock();
                push_all(maps.topics.get(t).into_iter().flatten(), sink);
            }
            Target::Broadcast => self.for_each(sink),
            Target::Many(all) => {
                // A stream reached through several of them (its user and a
                // topic, two topics) gets the event once.
                let mut once = Once {
                    sink,
                    seen: std::collections::HashSet::new(),
                };
                for t in all.iter() {
                    // Never nested: a `Many` inside is ignored.
                    if let Target::User(_) | Target::Topic(_) = t {
                        self.route(t, &mut once as &mut dyn RouteSink);
                    }
                }
            }
        }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The queue of every connection registered in shard `index` (under its
    /// user; `index` is taken modulo the shard count), under that shard's
    /// lock.
    pub fn for_shard(&self, index: usize, mut f: impl FnMut(&Queue)) {
        let maps = self.shards[index & self.mask].inner.lock();
        for s in &maps.all {
            f(&s.queue);
        }
    }

    /// Every subscriber, one shard lock at a time.
    pub fn for_each<S: RouteSink + ?Sized>(&self, sink: &mut S) {
        self.for_shards(0..self.shards.len(), sink);
    }

    /// Every subscriber of shards `range` (clamped to the shard count), one
    /// shard lock at a time.
    pub fn for_shards<S: RouteSink + ?Sized>(&self, range: std::ops::Range<usize>, sink: &mut S) {
        let end = range.end.min(self.shards.len());
        for shard in self
            .shards
            .get(range.start.min(end)..end)
            .unwrap_or_default()
        {
            let maps = shard.inner.lock();
            push_all(maps.all.iter(), sink);
        }
    }

    /// Event frames written to connections so far, open and closed: summed
    /// here, at scrape time, instead of counted on a shared counter per write.
    pub fn delivered(&self) -> u64 {
        let live: u64 = self
            .shards
            .iter()
            .map(|s| {
                let m = s.inner.lock();
                m.all
                    .iter()
                    .map(|sub| sub.delivered.load(Ordering::Relaxed))
                    .sum::<u64>()
            })
            .sum();
        live + self.retired_delivered.load(Ordering::Relaxed)
    }

    /// Open connections (sums the shards' flat lists).
    pub fn connections(&self) -> usize {
        self.shards.iter().map(|s| s.inner.lock().all.len()).sum()
    }

    /// Distinct users and topics with at least one connection.
    pub fn keys(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(u, t), s| {
            let m = s.inner.lock();
            (u + m.users.len(), t + m.topics.len())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Vec<u64>);
    impl RouteSink for Collect {
        fn push(&mut self, sub: &Arc<Subscriber>) {
            self.0.push(sub.id);
        }
    }

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn route(r: &Registry, t: &Target) -> Vec<u64> {
        let mut c = Collect(Vec::new());
        r.route(t, &mut c);
        c.0.sort();
        c.0
    }

    #[test]
    fn a_user_shard_is_handed_out_only_while_the_users_streams_take_no_topics() {
        let r = Arc::new(Registry::new(4));
        let u = name("u");
        let mut c = Collect(Vec::new());
        r.lock_user(&u)
            .expect("no streams: nothing to order")
            .route(&mut c);
        assert!(c.0.is_empty());
        let plain = r.insert(u.clone(), vec![], None, None);
        r.lock_user(&u).expect("topic-free").route(&mut c);
        assert_eq!(c.0, [plain.subscriber().id]);
        // A topic event reaches this one through the topic's shard.
        let with_topic = r.insert(u.clone(), vec![name("news")], None, None);
        assert!(r.lock_user(&u).is_none());
        drop(with_topic);
        assert!(r.lock_user(&u).is_some());
    }

    #[test]
    fn routes_users_topics_broadcast_and_unregisters_on_drop() {
        let r = Arc::new(Registry::new(5));
        assert_eq!(r.shards.len(), 8);
        let a1 = r.insert(name("a"), vec![name("news"), name("news")], None, None);
        let a2 = r.insert(name("a"), vec![], None, None);
        let b = r.insert(name("b"), vec![name("news"), name("sport")], None, None);
        let (ia1, ia2, ib) = (a1.subscriber().id, a2.subscriber().id, b.subscriber().id);

        assert_eq!(route(&r, &Target::User(name("a"))), vec![ia1, ia2]);
        assert_eq!(route(&r, &Target::User(name("b"))), vec![ib]);
        assert_eq!(route(&r, &Target::User(name("c"))), Vec::<u64>::new());
        assert_eq!(route(&r, &Target::Topic(name("news"))), vec![ia1, ib]);
        assert_eq!(route(&r, &Target::Topic(name("sport"))), vec![ib]);
        assert_eq!(route(&r, &Target::Broadcast), vec![ia1, ia2, ib]);
        assert_eq!(r.connections(), 3);

        drop(a1);
        assert_eq!(route(&r, &Target::Topic(name("news"))), vec![ib]);
        assert_eq!(route(&r, &Target::User(name("a"))), vec![ia2]);
        drop(a2);
        drop(b);
        assert_eq!(r.connections(), 0);
        assert_eq!(r.keys(), (0, 0));
    }

    #[test]
    fn removal_in_any_order_keeps_every_list_consistent() {
        let r = Arc::new(Registry::new(4));
        let mut subs: Vec<Option<Subscription>> = (0..300)
            .map(|i| {
                let topics = vec![name("t"), name(&format!("x{}", i % 7))];
                Some(r.insert(name(&format!("u{}", i % 5)), topics, None, None))
            })
            .collect();
        // A fixed shuffle: every 7th, then the rest backwards.
        let mut order: Vec<usize> = (0..300).step_by(7).collect();
        order.extend((0..300).rev().filter(|i| i % 7 != 0));
        for (k, &i) in order.iter().enumerate() {
            subs[i] = None;
            if k % 37 == 0 {
                let left: Vec<u64> = subs.iter().flatten().map(|s| s.subscriber().id).collect();
                let mut want = left.clone();
                want.sort();
                assert_eq!(route(&r, &Target::Topic(name("t"))), want);
                assert_eq!(route(&r, &Target::Broadcast), want);
                assert_eq!(r.connections(), left.len());
            }
        }
        assert_eq!(r.connections(), 0);
        assert_eq!(r.keys(), (0, 0));
    }

    /// Prefetching ahead hands every subscriber over once, in order, for
    /// lists shorter than, as long as, and longer than the lookahead.
    #[test]
    fn push_all_hands_over_each_subscriber_once_in_order() {
        let r = Arc::new(Registry::new(1));
        for n in [0, 1, AHEAD - 1, AHEAD, AHEAD + 1, 3 * AHEAD + 5] {
            let subs: Vec<_> = (0..n)
                .map(|i| r.insert(name(&format!("u{i}")), vec![], None, None))
                .collect();
            let list: Vec<_> = subs.iter().map(|s| s.subscriber().clone()).collect();
            let mut got = Collect(Vec::new());
            push_all(list.iter(), &mut got);
            let want: Vec<u64> = list.iter().map(|s| s.id).collect();
            assert_eq!(got.0, want, "{n} subscribers");
        }
    }

    #[test]
    fn streams_share_one_copy_of_each_topic_name() {
        let r = Arc::new(Registry::new(4));
        let long = "t".repeat(200);
        let a = r.insert(name("a"), vec![name(&long)], None, None);
        let b = r.insert(name("b"), vec![name(&long)], None, None);
        let (ta, tb) = (&a.subscriber().topics[0], &b.subscriber().topics[0]);
        assert!(std::ptr::eq(ta.as_str(), tb.as_str()), "one allocation");
    }
}
