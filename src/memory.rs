//! Giving memory back after a spike. mimalloc frees a page only once every
//! block in it is free, and a block freed by another thread waits on its
//! page until the owning thread collects: a runtime worker that went idle
//! after a burst of streams never does, so the node kept its peak RSS.
//! Each worker, when it parks (nothing to run), collects its own heap at
//! most once per [`COLLECT_EVERY`] ticks of a clock that housekeeping
//! advances once a second ([`tick`]): an atomic load per park, no clock
//! read.
//!
//! And the kernel must not back the heap with transparent huge pages:
//! mimalloc asked for them on its arena (`madvise`), and the kernel then
//! collapses a 2 MiB range with even one touched 4 KiB page into a huge
//! page, which no free shrinks. With them RSS kept 12 MB of a 19,000-stream
//! spike, and grew after the streams closed as ranges were collapsed;
//! without, ~2.5 MB. mimalloc is built without the `madvise` (its `no_thp`
//! feature, Cargo.toml) and the process opts out ([`small_pages`]), which
//! also covers kernels set to use huge pages everywhere.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Ticks (seconds) between two collections on one thread.
pub const COLLECT_EVERY: u64 = 5;

static TICKS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COLLECTED_AT: Cell<u64> = const { Cell::new(0) };
}

/// Advances the clock collections are spaced by (call once a second).
pub fn tick() {
    TICKS.fetch_add(1, Ordering::Relaxed);
}

/// For a runtime worker about to park: collects this thread's heap if it
/// has not for [`COLLECT_EVERY`] ticks. Returns whether it did.
pub fn on_park() -> bool {
    let now = TICKS.load(Ordering::Relaxed);
    if now.wrapping_sub(COLLECTED_AT.get()) < COLLECT_EVERY {
        return false;
    }
    COLLECTED_AT.set(now);
    collect();
    true
}

/// Disables transparent huge pages for this process (Linux; call before
/// serving). A kernel that refuses leaves them on: RSS comes back less,
/// nothing else changes.
#[allow(unsafe_code)]
pub fn small_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integers only and sets a flag on this
    // process's address space; no memory is touched.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

#[allow(unsafe_code)]
fn collect() {
    // SAFETY: mi_collect takes no pointer and only walks the calling
    // thread's own heap (and frees what is free); safe from any thread at
    // any time. Where mimalloc is not the global allocator (tests) its heap
    // is empty and this does nothing.
    unsafe { libmimalloc_sys::mi_collect(false) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_collects_at_most_once_per_period() {
        std::thread::spawn(|| {
            // A fresh thread has never collected: the first park may.
            for _ in 0..COLLECT_EVERY {
                tick();
            }
            assert!(on_park());
            assert!(!on_park(), "not again within the period");
            for _ in 0..COLLECT_EVERY {
                tick();
            }
            assert!(on_park());
        })
        .join()
        .unwrap();
    }
}
