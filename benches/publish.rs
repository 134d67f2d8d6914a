//! A publish request's own work around dispatch: parse and validate the
//! body (one targeted event, as the seed's page sends, and a batch of 16),
//! then build the `{"id"}` / `{"ids"}` answer.
//!
//! Run: `cargo bench --bench publish`. Results: BENCHMARKS.md.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let one = br#"{"user": "user-4711", "event": "notification", "data": {"text": "Your order 1234 has shipped", "n": 1, "tags": ["a", "b"]}}"#.to_vec();
    let mut batch = b"[".to_vec();
    for i in 0..16 {
        if i > 0 {
            batch.push(b',');
        }
        batch.extend_from_slice(&one);
    }
    batch.push(b']');
    let mut g = c.benchmark_group("publish_body_and_reply");
    for (name, body, n) in [("one", &one, 1), ("batch16", &batch, 16)] {
        g.throughput(Throughput::Elements(n));
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| herald::bench::publish_body_and_reply(black_box(body)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
