//! The write path: one stream's queue drained by the stream core
//! (`Stream::poll_next`) and written as one HTTP/1.1 chunk by herald's
//! writer, into a real socket (a Unix socket pair whose other end a thread
//! reads and discards). This is where most of herald's CPU per delivered
//! event goes under load: a drain plus one write per wake-up. Compares 1,
//! 10 and 50 queued frames per write (the more frames a write carries, the
//! cheaper each event).
//!
//! Timed: the drain and the write. Untimed: the dispatcher's pushes that
//! fill the queue before each.
//!
//! A second group times the queue alone (pushes and drain) for a stream
//! written a few more frames than its deque keeps between drains.
//!
//! Run: `cargo bench --bench write_path`. Results: BENCHMARKS.md.

#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::event::Name;
use herald::registry::queue::Limits;
use herald::registry::Registry;
use herald::stream::{Next, Settings, Stream};

const LIMITS: Limits = Limits {
    max_frames: 1024,
    max_bytes: 1 << 20,
    stall: None,
};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        let mut sink = vec![0u8; 1 << 20];
        while theirs.read(&mut sink).is_ok_and(|n| n > 0) {}
    });
    ours.set_nonblocking(true).unwrap();
    let mut socket = rt.block_on(async { tokio::net::UnixStream::from_std(ours).unwrap() });

    let registry = Arc::new(Registry::new(1));
    let sub = registry.insert(Name::new("bench").unwrap(), vec![], None, None);
    let subscriber = sub.subscriber().clone();
    let settings = Settings {
        access_log: false,
        retry: Duration::from_secs(3),
        coalesce: herald::stream::Coalesce::default(),
        account: false,
    };
    let mut stream = Stream::new(sub, Bytes::from_static(b": herald\n\n"), &settings);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(
        stream.poll_next(&mut cx),
        Poll::Ready(Next::Data(_))
    ));

    let frame = Bytes::from(format!(
        "id: 18f3a2b4c01-42\ndata: {}\n\n",
        r#"{"from":"alice","text":"hello","n":[1,2,3]}"#
    ));
    let mut g = c.benchmark_group("write_path");
    for frames in [1usize, 10, 50] {
        g.throughput(Throughput::Elements(frames as u64));
        g.bench_function(BenchmarkId::new("drain_and_write", frames), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    for _ in 0..frames {
                        let _ = subscriber.queue.try_push(&frame, 1, 0, LIMITS);
                    }
                    let t = Instant::now();
                    let Poll::Ready(Next::Data(batch)) = stream.poll_next(&mut cx) else {
                        panic!("a queued batch");
                    };
                    rt.block_on(herald::bench::write_chunk(&mut socket, &batch))
                        .unwrap();
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();

    // The queue's own work for a stream whose every write carries a few
    // more frames than the deque keeps between drains (S3's ~15-25 under
    // the busy window): the dispatcher's pushes and the drain, timed
    // together (growing the deque is the pushes' cost, giving capacity
    // back the drain's).
    let mut g = c.benchmark_group("queue");
    let frames = 24usize;
    g.throughput(Throughput::Elements(frames as u64));
    g.bench_function(BenchmarkId::new("push_and_drain", frames), |b| {
        b.iter(|| {
            for _ in 0..frames {
                let _ = subscriber.queue.try_push(&frame, 1, 0, LIMITS);
            }
            let Poll::Ready(Next::Data(batch)) = stream.poll_next(&mut cx) else {
                panic!("a queued batch");
            };
            batch
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
