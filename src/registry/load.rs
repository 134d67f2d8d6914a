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
//!
//! On a node that publishes nothing for [`IDLE_PARK`] the probe parks
//! ([`Load::park`]) until the next publish call: neither signal means
//! anything without publishes, and an idle node's workers were woken 200
//! times a second for it (~1% of a core each, BENCHMARKS.md).

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

/// The probe parks after this long without a publish call.
pub const IDLE_PARK: Duration = Duration::from_secs(1);

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
    /// µs since `born` of the last tick that found a publish call since the
    /// one before (the probe's alone).
    active_at: AtomicU64,
    /// A publish call since the last tick.
    published: AtomicBool,
    /// The probe is parked until the next publish call.
    parked: AtomicBool,
    wake: tokio::sync::Notify,
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
            active_at: AtomicU64::new(0),
            published: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        }
    }
}

impl Load {
    fn now_us(&self) -> u64 {
        self.born.elapsed().as_micros() as u64 + 1
    }

    /// Counts frames the dispatcher queued (once per publish call, with
    /// none too), and wakes a parked probe.
    pub fn count_queued(&self, frames: u64) {
        if frames > 0 {
            self.queued.fetch_add(frames, Ordering::Relaxed);
        }
        // Plain loads while the flags are already set: this is per publish.
        if !self.published.load(Ordering::Relaxed) {
            self.published.store(true, Ordering::SeqCst);
        }
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            // Its silence while parked was not a stuck runtime.
            self.probed_at.store(self.now_us(), Ordering::Release);
            self.wake.notify_one();
        }
    }

    /// The probe woke `late`: records it, and decides [`Load::busy`] once
    /// per [`BUSY_WINDOW`]. Returns whether the probe may park: no publish
    /// call for [`IDLE_PARK`].
    pub fn tick(&self, late: Duration) -> bool {
        let now = self.now_us();
        self.probed_at.store(now, Ordering::Release);
        if self.published.swap(false, Ordering::Relaxed) {
            self.active_at.store(now, Ordering::Relaxed);
        }
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
        now.saturating_sub(self.active_at.load(Ordering::Relaxed)) >= IDLE_PARK.as_micros() as u64
    }

    /// Parks the probe until the next publish call (at once if one came
    /// since its last tick). While parked the node is neither busy nor
    /// behind: a stuck runtime is noticed again from the probe's silence
    /// once a publish has woken it, so at most that publish passes
    /// backpressure unchecked.
    pub async fn park(&self) {
        let notified = self.wake.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        self.busy.store(false, Ordering::Relaxed);
        self.parked.store(true, Ordering::SeqCst);
        // A publish call that saw `parked` unset before this store had set
        // `published` first (both SeqCst), so do not sleep; if that call
        // unparked it after all, it notified and the await takes the
        // permit. (A call that found `published` still set skips its store;
        // if the last tick had just cleared it, that call goes by unseen
        // and the next one wakes the probe.)
        if self.published.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            return;
        }
        notified.await;
    }

    /// Whether the probe is parked (tests).
    #[cfg(test)]
    pub fn parked(&self) -> bool {
        self.parked.load(Ordering::SeqCst)
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
    /// past its period (its runtime is stuck). Never recorded (no probe)
    /// or parked: no.
    pub fn runtime_behind(&self) -> bool {
        let probed = self.probed_at.load(Ordering::Acquire);
        if probed == 0 || self.parked.load(Ordering::Acquire) {
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
    fn the_probe_parks_without_publishes_and_the_next_publish_wakes_it() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let l = std::sync::Arc::new(Load::default());
        assert!(!l.tick(Duration::ZERO), "just started");
        l.count_queued(3);
        std::thread::sleep(IDLE_PARK / 2);
        assert!(!l.tick(Duration::ZERO), "a publish within IDLE_PARK");
        std::thread::sleep(IDLE_PARK / 2 + Duration::from_millis(20));
        assert!(
            !l.tick(Duration::ZERO),
            "IDLE_PARK since the tick that saw it"
        );
        std::thread::sleep(IDLE_PARK / 2 + Duration::from_millis(20));
        assert!(l.tick(Duration::ZERO), "no publish for IDLE_PARK");
        rt.block_on(async {
            let parked = tokio::spawn({
                let l = l.clone();
                async move { l.park().await }
            });
            tokio::task::yield_now().await;
            assert!(l.parked());
            // Silent while parked is not a stuck runtime.
            tokio::time::sleep(LAG_PROBE + LAG_BEHIND + Duration::from_millis(10)).await;
            assert!(!l.runtime_behind() && !l.busy());
            l.count_queued(0);
            assert!(!l.parked());
            tokio::time::timeout(Duration::from_secs(1), parked)
                .await
                .expect("a publish call wakes the probe")
                .unwrap();
            assert!(!l.runtime_behind(), "woken: its silence counts from now");
            assert!(!l.tick(Duration::ZERO), "the tick sees the publish");
            // A publish between the tick and the park: it does not sleep.
            l.count_queued(1);
            tokio::time::timeout(Duration::from_secs(1), l.park())
                .await
                .expect("returns at once");
            assert!(!l.parked());
        });
        // Parked again, then silent past the probe's period once woken:
        // the stuck runtime shows again.
        rt.block_on(async {
            l.tick(Duration::ZERO);
            let park = tokio::spawn({
                let l = l.clone();
                async move { l.park().await }
            });
            tokio::task::yield_now().await;
            assert!(l.parked());
            l.count_queued(1);
            park.await.unwrap();
        });
        std::thread::sleep(LAG_PROBE + LAG_BEHIND + Duration::from_millis(10));
        assert!(l.runtime_behind(), "silent after the wake-up");
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
