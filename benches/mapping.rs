//! Kafka record mapping per value format: the work ingest does per record
//! before the dispatch lock (decode, route by a field, drop a field,
//! re-encode), for the same order record as UTF-8 text under the default
//! rule, JSON, Avro and Protobuf (schemas held, as after the first record).
//!
//! Run: `cargo bench --bench mapping`. Results: BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("map_record");
    g.throughput(Throughput::Elements(1));
    for format in ["string", "json", "avro", "protobuf"] {
        let mut map = herald::bench::map_record(format);
        g.bench_function(BenchmarkId::from_parameter(format), |b| b.iter(&mut map));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
