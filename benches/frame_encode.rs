//! Frame encoding: one event -> one SSE frame (`sse::frame::event`), for the
//! payload shapes herald sees: a small JSON object (the seed page's
//! messages), a 1 KiB one, and multi-line text (Kafka values).
//!
//! Run: `cargo bench --bench frame_encode`. Results: BENCHMARKS.md.

#![allow(clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::sse::{frame, EventId};

fn bench(c: &mut Criterion) {
    let id = EventId::Kafka {
        topic: "messages".into(),
        partition: 3,
        offset: 1_234_567,
    };
    let small = r#"{"from":"alice","text":"hello"}"#.to_owned();
    let kib = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1010));
    let lines = "line of text\n".repeat(20);
    let mut g = c.benchmark_group("frame_encode");
    for (name, data) in [
        ("small_json", &small),
        ("1KiB_json", &kib),
        ("20_lines", &lines),
    ] {
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(name), data, |b, data| {
            b.iter(|| frame::event(black_box(&id), Some("chat"), black_box(data)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
