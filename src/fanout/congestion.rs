//! Publisher backpressure: is herald itself behind on delivery?
//!
//! A queue that fills because its client does not read is that client's
//! problem: it overflows and the connection closes as `slow`. But when
//! herald as a whole falls behind (publishers outpace what the machine can
//! write), every queue fills at once, and closing them all would turn an
//! overload into a reconnect storm. So publishers ask first: while herald is
//! behind, new events wait (HTTP publishes up to `--publish-backpressure`,
//! then get a 503; the Kafka consumer pauses between bursts) and the writers
//! catch up.
//!
//! Behind means both:
//! - a sizeable share of the sampled streams hold a deep queue; and
//! - the writers are not getting to run: the runtime's lag probe is late
//!   (`registry::load`, [`Load::runtime_behind`](crate::registry::load::Load::runtime_behind)).
//!
//! Clients that do not read only make queues deep: their writers are parked
//! on the socket, not waiting to run, so the runtime is not late and they
//! never hold publishers; they overflow and close as `slow` (a client can no
//! longer switch backpressure on for everyone). A real overload makes both
//! true.
//!
//! The depth signal is sampled, not counted: a few registry shards (rotating)
//! are walked and their queues' depths read, at most once per [`RECHECK`];
//! the answer is cached in between. Nothing is added to the per-event or
//! per-write path.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::registry::queue;
use crate::registry::Registry;

/// How long a sample stays fresh.
pub const RECHECK: Duration = Duration::from_millis(5);

/// A queue this fraction of its limit full (frames or bytes) counts as deep.
const DEEP_DIVISOR: usize = 4;

/// Congested when at least one in this many sampled streams is deep...
const SHARE_DIVISOR: usize = 8;

/// ...and at least this many are: a handful of stuck clients on a small
/// server never holds publishers back.
const MIN_DEEP: usize = 32;

/// Shards are sampled until this many streams were seen (or all shards).
const MIN_SAMPLE: usize = 256;

/// What one sample found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub seen: usize,
    pub deep: usize,
}

impl Sample {
    pub fn congested(self) -> bool {
        self.deep >= MIN_DEEP && self.deep * SHARE_DIVISOR >= self.seen
    }
}

/// The cached signal.
#[derive(Debug)]
pub struct Congestion {
    deep_frames: usize,
    deep_bytes: usize,
    born: Instant,
    /// µs since `born` of the last sample, +1 (0: never sampled).
    sampled_at: AtomicU64,
    congested: AtomicBool,
    /// Next shard to sample.
    next_shard: AtomicUsize,
    /// One sampler at a time; others use the cached answer.
    sampling: AtomicBool,
}

impl Congestion {
    pub fn new(limits: queue::Limits) -> Self {
        Self {
            deep_frames: (limits.max_frames / DEEP_DIVISOR).max(1),
            deep_bytes: (limits.max_bytes / DEEP_DIVISOR).max(1),
            born: Instant::now(),
            sampled_at: AtomicU64::new(0),
            congested: AtomicBool::new(false),
            next_shard: AtomicUsize::new(0),
            sampling: AtomicBool::new(false),
        }
    }

    fn now_us(&self) -> u64 {
        self.born.elapsed().as_micros() as u64 + 1
    }

    /// The cached answer (behind: deep queues and a late runtime),
    /// re-sampled when older than [`RECHECK`].
    pub fn congested(&self, registry: &Registry) -> bool {
        let now = self.now_us();
        let at = self.sampled_at.load(Ordering::Acquire);
        let fresh = at != 0 && now.saturating_sub(at) < RECHECK.as_micros() as u64;
        if fresh || self.sampling.swap(true, Ordering::Acquire) {
            return self.congested.load(Ordering::Relaxed);
        }
        let c = registry.load().runtime_behind() && self.sample(registry).congested();
        self.congested.store(c, Ordering::Relaxed);
        self.sampled_at.store(now, Ordering::Release);
        self.sampling.store(false, Ordering::Release);
        c
    }

    /// Walks shards from the rotating start until 256 streams
    /// were seen or every shard was.
    pub fn sample(&self, registry: &Registry) -> Sample {
        let shards = registry.shard_count();
        let start = self.next_shard.load(Ordering::Relaxed);
        let mut s = Sample { seen: 0, deep: 0 };
        let mut walked = 0;
        while walked < shards && s.seen < MIN_SAMPLE {
            registry.for_shard((start + walked) % shards, |q| {
                let (frames, bytes) = q.len();
                s.seen += 1;
                if frames >= self.deep_frames || bytes >= self.deep_bytes {
                    s.deep += 1;
                }
            });
            walked += 1;
        }
        self.next_shard
            .store((start + walked) % shards, Ordering::Relaxed);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;
    use crate::event::{Name, Target};
    use crate::fanout::{Fanout, Source, Subscribed};
    use crate::replay;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    const LIMITS: queue::Limits = queue::Limits {
        max_frames: 64,
        max_bytes: 1 << 20,
        stall: None,
    };

    fn fanout() -> Fanout {
        let replay = replay::Limits {
            max_events: 0,
            max_bytes: 0,
            max_age: Duration::ZERO,
        };
        Fanout::new(Arc::new(Registry::new(8)), 1, LIMITS, replay)
    }

    fn streams(f: &Fanout, n: usize, prefix: &str) -> Vec<Subscribed> {
        (0..n)
            .map(|i| {
                let user = Name::new(&format!("{prefix}{i}")).unwrap();
                f.subscribe(crate::fanout::Join::user(user)).unwrap()
            })
            .collect()
    }

    fn publish(f: &Fanout, target: Target, n: usize) {
        f.publish(&vec![Event::new(target, "x"); n], Source::Http);
    }

    fn drain(s: &Subscribed) {
        let q = &s.subscription.subscriber().queue;
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            q.poll_drain(&mut cx, true, None),
            Poll::Ready(Ok(_))
        ));
    }

    #[test]
    fn all_streams_behind_is_congestion_and_it_clears_when_they_drain() {
        let f = fanout();
        let subs = streams(&f, 300, "u");
        let sampler = Congestion::new(LIMITS);
        assert!(!sampler.sample(f.registry()).congested());
        // A quarter of the queue (16 frames) is deep.
        publish(&f, Target::Broadcast, 15);
        assert!(!sampler.sample(f.registry()).congested());
        publish(&f, Target::Broadcast, 1);
        let s = sampler.sample(f.registry());
        assert!(s.seen >= MIN_SAMPLE, "{s:?}");
        assert_eq!(s.deep, s.seen);
        assert!(s.congested());
        assert!(!f.congested(), "deep queues alone: clients not reading");
        std::thread::sleep(RECHECK + Duration::from_millis(1));
        f.record_lag(crate::registry::load::LAG_BEHIND * 2);
        assert!(f.congested(), "deep queues and a late runtime: behind");
        subs.iter().for_each(drain);
        assert!(!sampler.sample(f.registry()).congested());
        // The cached answer holds for RECHECK, then follows.
        std::thread::sleep(RECHECK + Duration::from_millis(1));
        assert!(!f.congested());
    }

    #[test]
    fn a_stuck_minority_is_not_congestion() {
        let f = fanout();
        let _healthy = streams(&f, 400, "h");
        let _stuck = streams(&f, 40, "s");
        for i in 0..40 {
            let user = Name::new(&format!("s{i}")).unwrap();
            publish(&f, Target::User(user), 40);
        }
        // Every shard, so every stuck stream is in the sample.
        let mut seen = 0;
        let mut deep = 0;
        for _ in 0..f.registry().shard_count() {
            let s = Congestion::new(LIMITS).sample(f.registry());
            assert!(!s.congested(), "{s:?}");
            seen += s.seen;
            deep += s.deep;
        }
        assert!(seen >= 440 && deep >= 40, "seen {seen} deep {deep}");
    }

    #[test]
    fn the_kafka_thread_pauses_up_to_the_limit_or_until_stopped() {
        use std::sync::atomic::AtomicBool;
        let f = fanout();
        let subs = streams(&f, 64, "u");
        let go = AtomicBool::new(false);
        let t = Instant::now();
        f.room_blocking(Duration::from_millis(400), &go);
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "not behind: no pause"
        );

        publish(&f, Target::Broadcast, 20);
        f.record_lag(crate::registry::load::LAG_BEHIND * 2);
        // Past the cached "not behind".
        std::thread::sleep(RECHECK + Duration::from_millis(1));
        let t = Instant::now();
        f.room_blocking(Duration::from_millis(400), &go);
        let paused = t.elapsed();
        assert!(paused >= Duration::from_millis(400), "{paused:?}");
        assert!(paused < Duration::from_secs(2), "{paused:?}");

        let stop = AtomicBool::new(true);
        let t = Instant::now();
        f.room_blocking(Duration::from_secs(10), &stop);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "stopping ends the pause"
        );

        // Writers catching up end the pause early.
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(30));
                subs.iter().for_each(drain);
            });
            let t = Instant::now();
            f.room_blocking(Duration::from_secs(10), &go);
            assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        });
    }

    #[tokio::test(start_paused = true)]
    async fn room_waits_then_refuses_and_zero_never_waits() {
        let f = fanout();
        let _subs = streams(&f, 64, "u");
        publish(&f, Target::Broadcast, 20);
        f.record_lag(crate::registry::load::LAG_BEHIND * 2);
        assert_eq!(f.room(Duration::ZERO).await, Ok(false));
        assert_eq!(f.room(Duration::from_millis(50)).await, Err(()));
    }

    #[test]
    fn thresholds() {
        assert!(!Sample { seen: 0, deep: 0 }.congested());
        // A few stuck clients on a small server: never.
        assert!(!Sample { seen: 40, deep: 31 }.congested());
        assert!(Sample { seen: 40, deep: 32 }.congested());
        // A large server: the share decides.
        assert!(!Sample {
            seen: 1000,
            deep: 124
        }
        .congested());
        assert!(Sample {
            seen: 1000,
            deep: 125
        }
        .congested());
    }
}
