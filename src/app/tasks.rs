//! Housekeeping: the node's periodic tasks, each one task for all streams
//! (no timer per connection), all started by [`spawn`] and stopped by the
//! drain.
//! - heartbeats (`--heartbeat-interval`), spread over the interval a slice
//!   of the registry per tick ([`HeartbeatPlan`]), and the metrics
//!   recorder's upkeep;
//! - ending streams whose token expired (once a second, with auth);
//! - the lag probe: how late the runtime wakes a task, one of the two
//!   signals of "herald is behind" (`fanout::congestion`);
//! - the one-second tick that spaces idle workers' heap collections
//!   (`crate::memory`); the JWKS refresh; `--jwt-public-key` on SIGHUP.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::registry::load::LAG_PROBE;
use crate::stream::Streams;

/// How often streams are checked for an expired token.
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// Starts the periodic tasks; they end when `stop` is cancelled.
pub(super) fn spawn(
    config: &Config,
    streams: &Arc<Streams>,
    metrics: Option<PrometheusHandle>,
    stop: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    let plan = HeartbeatPlan::new(
        config.streams.heartbeat,
        streams.fanout.registry().shard_count(),
    );
    let s = streams.clone();
    let mut next = 0;
    tasks.push(every(plan.period, stop, move || {
        let shards = plan.slice(&mut next);
        s.fanout.heartbeat(shards, plan.quiet);
    }));
    if let Some(h) = metrics {
        tasks.push(every(config.streams.heartbeat, stop, move || {
            h.run_upkeep()
        }));
    }
    let fanout = streams.fanout.clone();
    let until = stop.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            let due = tokio::time::Instant::now() + LAG_PROBE;
            tokio::select! {
                _ = until.cancelled() => break,
                _ = tokio::time::sleep_until(due) => {}
            }
            let late = tokio::time::Instant::now().saturating_duration_since(due);
            if fanout.record_lag(late) {
                tokio::select! {
                    _ = until.cancelled() => break,
                    _ = fanout.park_probe() => {}
                }
            }
        }
    }));
    // The clock idle workers' heap collections are spaced by.
    tasks.push(every(Duration::from_secs(1), stop, crate::memory::tick));
    if let Some(j) = &config.jwks {
        tasks.push(tokio::spawn(crate::jwks::refresh(
            config.auth.clone(),
            j.clone(),
            stop.clone(),
        )));
    }
    if let Some(path) = &config.public_key_file {
        tasks.push(tokio::spawn(reload_on_sighup(
            config.auth.clone(),
            path.clone(),
            stop.clone(),
        )));
    }
    if config.auth.streams_protected() {
        let s = streams.clone();
        tasks.push(every(EXPIRY_CHECK, stop, move || {
            let open = s.fanout.registry().connections();
            let ended = s.expiries.expire_due(crate::auth::now_secs(), open);
            if ended > 0 {
                tracing::debug!(ended, "streams ended at their token's expiry");
            }
        }));
    }
    tasks
}

/// On SIGHUP, reads `--jwt-public-key` again and checks new tokens with it
/// (open streams are not touched); a file that does not read as a key keeps
/// the old one.
async fn reload_on_sighup(
    auth: crate::auth::Auth,
    path: std::path::PathBuf,
    stop: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: --jwt-public-key is not reloadable");
        return;
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        // A small file: read in place (once per SIGHUP).
        let read = std::fs::read(&path).map_err(|e| format!("cannot be read: {e}"));
        match read.and_then(|pem| auth.reload_public_key_pem(&pem).map_err(|e| e.0)) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "SIGHUP: --jwt-public-key reloaded")
            }
            Err(error) => tracing::warn!(
                path = %path.display(),
                %error,
                "SIGHUP: --jwt-public-key not reloaded; the previous key stays"
            ),
        }
    }
}

/// How the heartbeat task walks the registry: every shard once per quarter
/// of the interval, a slice of shards per tick (ticks at least 10 ms apart),
/// so no tick holds a shard lock long or wakes every stream at once (one
/// walk of 10,000 streams was a 100 ms stall for the events behind it). A
/// stream sent nothing for three quarters of the interval gets a heartbeat:
/// none is silent longer than the interval, and a busy one gets none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeartbeatPlan {
    pub(crate) period: Duration,
    pub(crate) per_tick: usize,
    pub(crate) shards: usize,
    pub(crate) quiet: Duration,
}

impl HeartbeatPlan {
    const MIN_TICK: Duration = Duration::from_millis(10);

    pub(crate) fn new(interval: Duration, shards: usize) -> Self {
        let shards = shards.max(1);
        let pass = interval / 4;
        let ticks = (pass.as_nanos() / Self::MIN_TICK.as_nanos()).clamp(1, shards as u128) as usize;
        Self {
            period: (pass / ticks as u32).max(Duration::from_millis(1)),
            per_tick: shards.div_ceil(ticks),
            shards,
            quiet: interval * 3 / 4,
        }
    }

    /// The shards of the tick that starts at `next`; moves `next` on.
    pub(crate) fn slice(&self, next: &mut usize) -> std::ops::Range<usize> {
        let start = *next;
        let end = (start + self.per_tick).min(self.shards);
        *next = if end >= self.shards { 0 } else { end };
        start..end
    }
}

/// Runs `f` every `period` (first after one period) until `stop`; a late
/// tick is delayed, never bunched.
pub(crate) fn every(
    period: Duration,
    stop: &CancellationToken,
    mut f: impl FnMut() + Send + 'static,
) -> JoinHandle<()> {
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => f(),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Visits every shard once per pass of `plan`; returns the pass's ticks.
    fn pass(plan: &HeartbeatPlan) -> Vec<std::ops::Range<usize>> {
        let mut next = 0;
        let mut ticks = vec![plan.slice(&mut next)];
        while next != 0 {
            ticks.push(plan.slice(&mut next));
        }
        ticks
    }

    #[test]
    fn the_default_walks_one_shard_per_tick_over_a_quarter_interval() {
        let plan = HeartbeatPlan::new(Duration::from_secs(15), 64);
        assert_eq!(plan.per_tick, 1);
        assert_eq!(plan.quiet, Duration::from_millis(11_250));
        let ticks = pass(&plan);
        assert_eq!(ticks.len(), 64);
        assert!(ticks.iter().enumerate().all(|(i, r)| *r == (i..i + 1)));
        // A pass takes a quarter interval: a stream quiet for 3/4 of it is
        // visited within 1/4 more, so none is silent past the interval.
        assert!(plan.period * 64 <= Duration::from_millis(3_750));
        assert!(plan.quiet + plan.period * 64 <= Duration::from_secs(15));
    }

    #[test]
    fn short_intervals_take_several_shards_per_tick_10_ms_apart() {
        for (ms, shards) in [(50, 64), (1_000, 64), (200, 1), (10, 8), (2_000, 4096)] {
            let interval = Duration::from_millis(ms);
            let plan = HeartbeatPlan::new(interval, shards);
            let ticks = pass(&plan);
            let covered: usize = ticks.iter().map(|r| r.len()).sum();
            assert_eq!(covered, shards, "{ms} ms, {shards} shards");
            assert!(ticks.windows(2).all(|w| w[0].end == w[1].start));
            assert!(plan.period >= Duration::from_millis(1));
            assert!(
                plan.period >= HeartbeatPlan::MIN_TICK || ticks.len() == 1,
                "{plan:?}"
            );
            assert!(
                plan.quiet + plan.period * ticks.len() as u32
                    <= interval + Duration::from_millis(1),
                "{plan:?}"
            );
        }
    }
}
