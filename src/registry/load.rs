//! How loaded the node is, from a probe task on the HTTP runtime that wakes
//! every [`LAG_PROBE`] ([`Load::tick`]). Two signals:
//! - **behind** (publisher backpressure, `fanout::congestion`, with queue
//!   depth): the probe woke [`LAG_BEHIND`] late or worse, so tasks wait that
//!   long to run and the writers are behind. A healthy loaded node is late
//!   by a few ms.
//! - **busy** (the streams' `--write-coalesce-busy` window): the dispatcher
//!   queued at least [`BUSY_RATE`] frames per second over the last
//!   [`BUSY_WINDOW`] (one atomic add per publish call). At that rate a write
//!   per frame costs the node most of a core (~2-5 us per write, BENCHMARKS.md).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the lag probe wakes.
pub const LAG_PROBE: Duration = Duration::from_millis(5);

/// The runtime is behind when the probe wakes this late (or has not run
/// for this long).
pub const LAG_BEHIND: Duration = Duration::from_millis(20);

/// A late wake-up counts for this long.
pub const LAG_WINDOW: Duration = Duration::from_millis(100);

/// Frames queued per second from which the node is busy.
pub const BUSY_RATE: u64 = 100_000;

/// The busy signal is re-decided over this period.
pub const BUSY_WINDOW: Duration = Duration::from_millis(100);

/// The probe's findings.
#[derive(Debug)]
pub struct Load {
    born: Instant,
    /// µs since `born` of the probe's last wake-up, +1 (0: never).
    probed_at: AtomicU64,
    /// µs since `born` of its last late wake-up, +1 (0: never).
    late_at: AtomicU64,
    /// Frames queued since the busy period began.
    queued: AtomicU64,
    /// µs since `born` the busy period began (the probe's alone).
    period_at: AtomicU64,
    /// [`Load::busy`], as of the last period.
    busy: AtomicBool,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            born: Instant::now(),
            probed_at: AtomicU64::new(0),
            late_at: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            period_at: AtomicU64::new(0),
            busy: AtomicBool::new(false),
        }
    }
}

impl Load {
    fn now_us(&self) -> u64 {
        self.born.elapsed().as_micros() as u64 + 1
    }

    /// Counts frames the dispatcher queued (once per publish call).
    pub fn count_queued(&self, frames: u64) {
        if frames > 0 {
            self.queued.fetch_add(frames, Ordering::Relaxed);
        }
    }

    /// The probe woke `late`: records it, and decides [`Load::busy`] once
    /// per [`BUSY_WINDOW`].
    pub fn tick(&self, late: Duration) {
        let now = self.now_us();
        self.probed_at.store(now, Ordering::Release);
        if late >= LAG_BEHIND {
            self.late_at.store(now, Ordering::Release);
        }
        let from = self.period_at.load(Ordering::Relaxed);
        let span = now.saturating_sub(from);
        if span >= BUSY_WINDOW.as_micros() as u64 {
            let queued = self.queued.swap(0, Ordering::Relaxed);
            // A first period (or one after a stall) of any length counts.
            let busy = queued.saturating_mul(1_000_000) >= BUSY_RATE.saturating_mul(span);
            self.busy.store(busy, Ordering::Relaxed);
            self.period_at.store(now, Ordering::Relaxed);
        }
    }

    /// Whether the dispatcher queued frames at [`BUSY_RATE`] or more over
    /// the last [`BUSY_WINDOW`]: one atomic load, for the per-write path.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    /// Whether the probe woke [`LAG_BEHIND`] late within the last
    /// [`LAG_WINDOW`].
    pub fn behind(&self) -> bool {
        let late = self.late_at.load(Ordering::Acquire);
        late != 0 && self.now_us().saturating_sub(late) <= LAG_WINDOW.as_micros() as u64
    }

    /// [`Load::behind`], or the probe has not woken for [`LAG_BEHIND`]
    /// past its period (its runtime is stuck). Never recorded (no probe):
    /// no.
    pub fn runtime_behind(&self) -> bool {
        let probed = self.probed_at.load(Ordering::Acquire);
        if probed == 0 {
            return false;
        }
        self.behind()
            || self.now_us().saturating_sub(probed) > (LAG_PROBE + LAG_BEHIND).as_micros() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runtime_is_behind_when_the_probe_is_late_or_silent() {
        let l = Load::default();
        assert!(!l.runtime_behind(), "no probe: never behind");
        l.tick(Duration::from_millis(1));
        assert!(!l.runtime_behind() && !l.behind());
        l.tick(LAG_BEHIND);
        assert!(l.runtime_behind() && l.behind(), "late");
        // A late wake-up counts for the window, then is forgotten.
        for _ in 0..(LAG_WINDOW.as_millis() / 5 + 2) {
            std::thread::sleep(Duration::from_millis(5));
            l.tick(Duration::from_millis(1));
        }
        assert!(!l.runtime_behind() && !l.behind());
        // A probe that stops running (its runtime is stuck) counts as late
        // for backpressure; `behind` alone only says when it last woke late.
        std::thread::sleep(LAG_PROBE + LAG_BEHIND + Duration::from_millis(10));
        assert!(l.runtime_behind(), "silent");
        assert!(!l.behind());
    }

    #[test]
    fn busy_is_a_rate_of_queued_frames_decided_per_period() {
        let l = Load::default();
        let tick = || l.tick(Duration::ZERO);
        tick();
        assert!(!l.busy(), "nothing queued");
        // Just under the rate over one period, then at it.
        let period = BUSY_WINDOW + Duration::from_millis(1);
        for (per_period, busy) in [(BUSY_RATE / 20, false), (BUSY_RATE / 5, true)] {
            std::thread::sleep(Duration::from_millis(1));
            tick();
            l.count_queued(per_period);
            std::thread::sleep(period);
            tick();
            assert_eq!(l.busy(), busy, "{per_period} frames in {period:?}");
        }
        // The rate stops: not busy after the next period.
        std::thread::sleep(period);
        tick();
        assert!(!l.busy());
    }
}
