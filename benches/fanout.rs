//! Fan-out: dispatching one event through `Fanout::publish` to N in-memory
//! subscribers (no sockets), broadcast and targeted, N = 10,000 and 100,000.
//! Reports time per publish; divide by N for ns per subscriber (broadcast).
//! Each subscriber's queue is drained after every publish, outside the
//! timing, and holds a waker, so each push also takes and wakes it (a no-op
//! waker here: the scheduler's share of a real wake-up is not included).
//!
//! `heartbeat`: one tick of the heartbeat task at 20,000 idle streams (one
//! shard of 64, what a tick walks at the default interval) against the
//! whole registry in one call (before issue 14): the longest a periodic task
//! holds a shard lock, and the work one tick hands the runtime.
//!
//! `kafka_records`: what the ingest thread does per record in Kafka mode
//! with 10,000 connected users, each record for the next user in turn (so
//! every lookup meets a cold entry, as in `scripts/measure-ingest` case C):
//! batches of 64 records on 8 partitions, the cursor encoded per record.
//! The queues reached are drained after each batch, outside the timing.
//!
//! Run: `cargo bench --bench fanout`. Results: BENCHMARKS.md.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::event::{Event, Name, Target};
use herald::fanout::{Fanout, Source};
use herald::registry::queue;
use herald::registry::{Registry, Subscription};
use herald::replay;
use herald::sse::id::EventId;

fn setup(n: usize) -> (Arc<Fanout>, Vec<Subscription>) {
    let registry = Arc::new(Registry::new(64));
    let fanout = Arc::new(Fanout::new(
        registry.clone(),
        1,
        queue::Limits {
            max_frames: 1024,
            max_bytes: 1 << 20,
            stall: None,
        },
        replay::Limits {
            max_events: 1000,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(300),
        },
    ));
    let subs = (0..n)
        .map(|i| registry.insert(Name::new(&format!("user-{i}")).unwrap(), vec![], None, None))
        .collect();
    (fanout, subs)
}

/// Drains every queue and leaves a waker in it, as an idle connection would.
fn drain(subs: &[Subscription]) {
    let mut cx = Context::from_waker(Waker::noop());
    for s in subs {
        while s
            .subscriber()
            .queue
            .poll_drain(&mut cx, true, None)
            .is_ready()
        {}
    }
}

/// Publishes `iters` events to `target`, timing only the publishes; drains
/// `receivers` (the subscribers the target reaches) after each, untimed.
fn timed_publishes(
    fanout: &Fanout,
    target: &Target,
    iters: u64,
    receivers: &[Subscription],
) -> Duration {
    let data = r#"{"from":"alice","text":"hello"}"#;
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let event = Event::new(target.clone(), data);
        let t = Instant::now();
        fanout.publish(&[event], Source::Http);
        total += t.elapsed();
        drain(receivers);
    }
    total
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    g.sample_size(20);
    for n in [10_000usize, 100_000] {
        let (fanout, subs) = setup(n);
        drain(&subs);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("broadcast", n), |b| {
            b.iter_custom(|iters| timed_publishes(&fanout, &Target::Broadcast, iters, &subs))
        });
        g.throughput(Throughput::Elements(1));
        let user = Target::User(Name::new(&format!("user-{}", n / 2)).unwrap());
        g.bench_function(BenchmarkId::new("targeted", n), |b| {
            b.iter_custom(|iters| timed_publishes(&fanout, &user, iters, &subs[n / 2..n / 2 + 1]))
        });
    }
    g.finish();
}

fn kafka_records(c: &mut Criterion) {
    const BATCH: usize = 64;
    const PARTITIONS: usize = 8;
    let mut g = c.benchmark_group("kafka_records");
    g.sample_size(20);
    g.throughput(Throughput::Elements(BATCH as u64));
    let n = 10_000;
    let (fanout, subs) = setup(n);
    drain(&subs);
    let users: Vec<Target> = (0..n)
        .map(|i| Target::User(Name::new(&format!("user-{i}")).unwrap()))
        .collect();
    let topic: std::sync::Arc<str> = std::sync::Arc::from("bench");
    let data = r#"{"from":"alice","text":"hello, this is a record of about 64 bytes"}"#;
    let mut next = 0usize;
    let mut offsets = [0i64; PARTITIONS];
    g.bench_function(BenchmarkId::new("targeted", n), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let first = next;
                let batch: Vec<Event<'_>> = (0..BATCH)
                    .map(|k| {
                        let i = (first + k) % n;
                        let partition = i % PARTITIONS;
                        offsets[partition] += 1;
                        let mut ev = Event::new(users[i].clone(), data);
                        ev.id = Some(EventId::Kafka {
                            topic: topic.clone(),
                            partition: partition as i32,
                            offset: offsets[partition],
                        });
                        ev
                    })
                    .collect();
                next = (first + BATCH) % n;
                let t = Instant::now();
                fanout.publish(&batch, Source::Kafka);
                total += t.elapsed();
                drop(batch);
                let mut cx = Context::from_waker(Waker::noop());
                for k in 0..BATCH {
                    let q = &subs[(first + k) % n].subscriber().queue;
                    while q.poll_drain(&mut cx, true, None).is_ready() {}
                }
            }
            total
        })
    });
    g.finish();
}

fn heartbeat(c: &mut Criterion) {
    let mut g = c.benchmark_group("heartbeat");
    g.sample_size(20);
    let n = 20_000;
    let (fanout, subs) = setup(n);
    drain(&subs);
    let quiet = Duration::from_millis(1);
    for (name, shards) in [("one_tick", 0..1), ("whole_registry", 0..64)] {
        g.bench_function(BenchmarkId::new(name, n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Quiet for longer than `quiet`: every stream is due.
                    std::thread::sleep(quiet);
                    let t = Instant::now();
                    fanout.heartbeat(shards.clone(), quiet);
                    total += t.elapsed();
                    drain(&subs);
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, kafka_records, heartbeat);
criterion_main!(benches);
