//! Prototype for issue 14's broadcast target: does submitting a broadcast's
//! socket writes through `io_uring` (one `io_uring_enter` for a batch of
//! sends) cost less CPU per delivered frame than one `write` syscall per
//! stream, as herald's writers make today?
//!
//! Not herald's code path: the smallest setup that isolates the write.
//! `STREAMS` loopback TCP connections; a reader thread (a tokio
//! current-thread runtime, one task per connection, like an SSE client)
//! drains the other ends. Each round sends one SSE-sized frame (a chunk of
//! ~130 bytes) to every connection, then waits until the reader has it all,
//! so socket buffers never fill. The ways to send a round, alternated:
//! - `write`: one `write(2)` per connection, from one thread;
//! - `uring`: one `Send` entry per connection, submitted in batches of
//!   `BATCH` with one `io_uring_enter` each, completions reaped;
//! - `writev`: the chunk as its three parts (size line, data, CRLF) in one
//!   `writev(2)` per connection, as herald's HTTP/1.1 writer wrote them;
//! - `gather`: the three parts copied into one buffer, then one `write(2)`
//!   per connection, as herald's writer sends a single frame now
//!   (BENCHMARKS.md, "One send per write").
//!
//! Reported per delivered frame: the sending thread's CPU time and the whole
//! process's (the reader thread's and any io_uring worker threads'
//! included), as the median of `ROUNDS` rounds each.
//!
//! Run: `cargo bench --bench uring_send`. In `cargo test --bench` (no
//! `--bench` argument) it runs a few small rounds and checks that both ways
//! deliver every byte; where the kernel refuses io_uring (some sandboxes
//! do), that quick run says so and checks the `write` way only, while the
//! measurement itself fails. Results: BENCHMARKS.md.

// Submitting to io_uring and reading thread CPU clocks are FFI.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use tokio::io::AsyncReadExt;

/// Entries submitted per `io_uring_enter`.
const BATCH: usize = 256;

/// A frame the size of a small broadcast as a chunk on the wire.
fn frame() -> Vec<u8> {
    let body = format!(
        "id: 18f3a2b4c01-123456\ndata: {{\"text\":\"{}\"}}\n\n",
        "x".repeat(64)
    );
    let mut f = format!("{:x}\r\n", body.len()).into_bytes();
    f.extend_from_slice(body.as_bytes());
    f.extend_from_slice(b"\r\n");
    f
}

/// CPU time of the calling thread, or of the whole process.
fn cpu(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `streams` connected pairs: the sending ends, and a reader thread
/// draining the other ends, counting the bytes it got.
fn connect(streams: usize) -> (Vec<TcpStream>, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut clients = Vec::with_capacity(streams);
    let mut servers = Vec::with_capacity(streams);
    for _ in 0..streams {
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        clients.push(c);
        servers.push(s);
    }
    let got = Arc::new(AtomicU64::new(0));
    let counter = got.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for c in clients {
                c.set_nonblocking(true).unwrap();
                let mut c = tokio::net::TcpStream::from_std(c).unwrap();
                let counter = counter.clone();
                tasks.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n @ 1..) = c.read(&mut buf).await {
                        counter.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    });
    (servers, got)
}

fn send_writes(socks: &mut [TcpStream], frame: &[u8]) {
    for s in socks {
        s.write_all(frame).unwrap();
    }
}

/// `frame` as a chunk's three parts: size line, data, CRLF.
fn parts(frame: &[u8]) -> [&[u8]; 3] {
    let line = frame.iter().position(|&b| b == b'\n').unwrap() + 1;
    [&frame[..line], &frame[line..frame.len() - 2], b"\r\n"]
}

fn send_writevs(socks: &mut [TcpStream], frame: &[u8]) {
    let slices = parts(frame).map(std::io::IoSlice::new);
    for s in socks {
        // The reader keeps every buffer nearly empty: a short write would
        // be a broken prototype.
        assert_eq!(s.write_vectored(&slices).unwrap(), frame.len());
    }
}

fn send_gathered(socks: &mut [TcpStream], frame: &[u8], buf: &mut Vec<u8>) {
    let parts = parts(frame);
    for s in socks {
        buf.clear();
        for p in parts {
            buf.extend_from_slice(p);
        }
        s.write_all(buf).unwrap();
    }
}

fn send_uring(ring: &mut IoUring, socks: &[TcpStream], frame: &[u8]) {
    for batch in socks.chunks(BATCH) {
        for (i, s) in batch.iter().enumerate() {
            let send =
                opcode::Send::new(types::Fd(s.as_raw_fd()), frame.as_ptr(), frame.len() as u32)
                    .build()
                    .user_data(i as u64);
            // SAFETY: `frame` and the sockets outlive the submission: every
            // entry's completion is reaped below before they can go.
            unsafe { ring.submission().push(&send).unwrap() };
        }
        ring.submit_and_wait(batch.len()).unwrap();
        let mut done = 0;
        while done < batch.len() {
            for cqe in ring.completion() {
                // A short or failed send would be a broken prototype, not a
                // measurement: the reader keeps every buffer nearly empty.
                assert_eq!(cqe.result(), frame.len() as i32, "send {}", cqe.user_data());
                done += 1;
            }
            if done < batch.len() {
                ring.submit_and_wait(batch.len() - done).unwrap();
            }
        }
    }
}

/// Waits until the reader has `want` bytes in all.
fn settle(got: &AtomicU64, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.load(Ordering::Relaxed) < want {
        assert!(Instant::now() < deadline, "the reader is stuck");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The ways a round is sent (module doc).
#[derive(Clone, Copy, PartialEq)]
enum Way {
    Write,
    Uring,
    Writev,
    Gather,
}

const WAYS: [(Way, &str); 4] = [
    (Way::Write, "write(2) per stream"),
    (Way::Uring, "io_uring, 256 per enter"),
    (Way::Writev, "writev(2) of 3 parts"),
    (Way::Gather, "3 parts copied, write(2)"),
];

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (streams, rounds) = if full { (4000, 60) } else { (64, 3) };
    let frame = frame();
    let (mut socks, got) = connect(streams);
    let mut ring = match IoUring::new(BATCH as u32) {
        Ok(ring) => Some(ring),
        Err(e) if !full => {
            eprintln!("io_uring is refused here ({e}): the other ways run");
            None
        }
        Err(e) => panic!("io_uring_setup: {e}"),
    };
    let mut gather = Vec::new();
    let mut sent = 0u64;
    // Per way: the sender thread's and the process's CPU per frame, by round.
    let mut took: [(Vec<f64>, Vec<f64>); 4] = Default::default();
    for round in 0..rounds * WAYS.len() {
        let way = WAYS[round % WAYS.len()].0;
        let (t0, p0) = (
            cpu(libc::CLOCK_THREAD_CPUTIME_ID),
            cpu(libc::CLOCK_PROCESS_CPUTIME_ID),
        );
        match (way, ring.as_mut()) {
            (Way::Uring, Some(ring)) => send_uring(ring, &socks, &frame),
            (Way::Uring, None) => continue,
            (Way::Write, _) => send_writes(&mut socks, &frame),
            (Way::Writev, _) => send_writevs(&mut socks, &frame),
            (Way::Gather, _) => send_gathered(&mut socks, &frame, &mut gather),
        }
        sent += (streams * frame.len()) as u64;
        settle(&got, sent);
        let per = |d: Duration| d.as_nanos() as f64 / streams as f64;
        let (thread, process) = &mut took[round % WAYS.len()];
        thread.push(per(cpu(libc::CLOCK_THREAD_CPUTIME_ID) - t0));
        process.push(per(cpu(libc::CLOCK_PROCESS_CPUTIME_ID) - p0));
    }
    assert_eq!(got.load(Ordering::Relaxed), sent, "every byte delivered");
    if !full {
        return;
    }
    println!(
        "{streams} streams, {rounds} rounds each, {} B frames: per delivered frame, sender thread / whole process:",
        frame.len()
    );
    let medians = took.map(|(t, p)| (median(t), median(p)));
    for ((_, name), (t, p)) in WAYS.iter().zip(medians) {
        println!("  {name:<26} {t:>7.0} ns / {p:>7.0} ns");
    }
    let ratio = |a: Way, b: Way| {
        let (a, b) = (medians[a as usize], medians[b as usize]);
        format!("{:.2}x / {:.2}x", a.0 / b.0, a.1 / b.1)
    };
    println!(
        "  io_uring / write:          {}",
        ratio(Way::Uring, Way::Write)
    );
    println!(
        "  gather / writev:           {}",
        ratio(Way::Gather, Way::Writev)
    );
}
