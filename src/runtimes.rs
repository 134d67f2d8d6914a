//! `--api-threads`: current-thread runtimes, one thread each, for the plain
//! HTTP/1.1 connections the first peek hands to hyper (publish requests and
//! the other API routes; `server::connection` decides).
//!
//! Why (measured, BENCHMARKS.md, issue 14): on the work-stealing runtime a
//! publish request that arrives while the other worker sleeps often wakes
//! it for nothing (tokio's searching handoff), two context switches and a
//! futex call each time, at thousands of requests a second. On a runtime
//! of its own a request is read, dispatched and answered on one thread.
//! Streams stay on the work-stealing runtime: a broadcast's writes spread
//! over every core there, and a stream woken from another runtime would
//! cost its thread a wake-up per event.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The runtimes, round robin; they stop when this is dropped.
#[derive(Debug)]
pub(crate) struct ApiRuntimes {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped with `self`: each runtime's thread then ends.
    _stop: Vec<oneshot::Sender<()>>,
}

impl ApiRuntimes {
    /// Starts `n` runtimes, each built and run on its own thread (so a
    /// runtime is only ever dropped there, never in the caller's async
    /// context, where dropping one panics).
    pub(crate) fn start(n: usize) -> std::io::Result<Self> {
        let mut handles = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = oneshot::channel::<()>();
            let (built_tx, built) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("herald-api-{i}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        // An idle thread gives freed memory back (crate::memory).
                        .on_thread_park(|| {
                            crate::memory::on_park();
                        })
                        .build();
                    match rt {
                        Ok(rt) => {
                            let _ = built_tx.send(Ok(rt.handle().clone()));
                            let _ = rt.block_on(rx);
                        }
                        Err(e) => {
                            let _ = built_tx.send(Err(e));
                        }
                    }
                })?;
            // Once, at start: the thread answers as soon as it has built.
            let handle = built.recv().map_err(std::io::Error::other)??;
            handles.push(handle);
            stop.push(tx);
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            _stop: stop,
        })
    }

    /// The runtime for the next connection.
    pub(crate) fn pick(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.handles[i % self.handles.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_round_robin_and_the_threads_end_with_it() {
        let rts = ApiRuntimes::start(2).unwrap();
        let ids: Vec<_> = (0..4)
            .map(|_| rts.pick().spawn(async { std::thread::current().id() }))
            .map(|j| futures_block(j).unwrap())
            .collect();
        assert_eq!(ids[0], ids[2]);
        assert_eq!(ids[1], ids[3]);
        assert_ne!(ids[0], ids[1]);
        let h = rts.pick().clone();
        drop(rts);
        // Its thread ends and drops the runtime: a task spawned then never
        // runs (its thread may take a moment to get there).
        let stopped = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            futures_block(h.spawn(async {})).is_err()
        });
        assert!(stopped, "the runtime stopped with its owner");
    }

    fn futures_block<T>(j: tokio::task::JoinHandle<T>) -> Result<T, tokio::task::JoinError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(j)
    }
}
