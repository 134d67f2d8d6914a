//! Registry churn: subscribe + unsubscribe (insert, then drop the handle) on
//! 1 and 2 threads at once, each with a topic, against a registry that
//! already holds 10,000 connections; what a reconnect storm costs the
//! registry. Reports time per subscribe/unsubscribe pair per thread.
//!
//! Also: 20,000 subscribers of one topic dropped at once
//! (`registry_drop/one_topic_20000`).
//!
//! Run: `cargo bench --bench registry_churn`. Results: BENCHMARKS.md.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::event::Name;
use herald::registry::Registry;

fn bench(c: &mut Criterion) {
    let registry = Arc::new(Registry::new(64));
    let _resident: Vec<_> = (0..10_000)
        .map(|i| {
            registry.insert(
                Name::new(&format!("resident-{i}")).unwrap(),
                vec![],
                None,
                None,
            )
        })
        .collect();
    let users: Arc<Vec<Name>> = Arc::new(
        (0..4096)
            .map(|i| Name::new(&format!("churn-{i}")).unwrap())
            .collect(),
    );
    let topic = Name::new("news").unwrap();
    let mut g = c.benchmark_group("registry_churn");
    g.throughput(Throughput::Elements(1));
    for threads in [1usize, 2] {
        g.bench_function(BenchmarkId::new("subscribe_unsubscribe", threads), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for t in 0..threads {
                        let (registry, users, topic) =
                            (registry.clone(), users.clone(), topic.clone());
                        s.spawn(move || {
                            for i in 0..iters as usize {
                                let user = users[(i * threads + t) % users.len()].clone();
                                drop(registry.insert(user, vec![topic.clone()], None, None));
                            }
                        });
                    }
                });
                // Wall time: each thread did `iters` pairs concurrently.
                start.elapsed()
            })
        });
    }
    g.finish();

    // A drain, a network blip or a slow-close wave: 20,000 subscribers of
    // one topic close together. Each removal is O(1) (a swap with the last
    // entry), so dropping them all is linear, not quadratic.
    let mut g = c.benchmark_group("registry_drop");
    g.sample_size(10);
    g.throughput(Throughput::Elements(20_000));
    g.bench_function("one_topic_20000", |b| {
        b.iter_batched(
            || {
                let registry = Arc::new(Registry::new(64));
                let subs: Vec<_> = (0..20_000)
                    .map(|i| {
                        registry.insert(
                            Name::new(&format!("u{i}")).unwrap(),
                            vec![Name::new("hot").unwrap()],
                            None,
                            None,
                        )
                    })
                    .collect();
                (registry, subs)
            },
            |(registry, subs)| {
                drop(subs);
                registry
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
