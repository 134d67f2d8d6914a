//! Housekeeping: the node's periodic tasks, each one task for all streams
//! (no timer per connection), all started by [`spawn`] and stopped by the
//! drain.
//! - heartbeats (`--heartbeat-interval`) and the metrics recorder's upkeep;
//! - ending streams whose token expired (once a second, with auth);
//! - the lag probe: how late the runtime wakes a task, one of the two
//!   signals of "herald is behind" (`fanout::congestion`).

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::fanout::congestion::LAG_PROBE;
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
    let s = streams.clone();
    tasks.push(every(config.streams.heartbeat, stop, move || {
        s.fanout.heartbeat();
        if let Some(h) = &metrics {
            h.run_upkeep();
        }
    }));
    let fanout = streams.fanout.clone();
    let until = stop.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            let due = tokio::time::Instant::now() + LAG_PROBE;
            tokio::select! {
                _ = until.cancelled() => break,
                _ = tokio::time::sleep_until(due) => {}
            }
            fanout.record_lag(tokio::time::Instant::now().saturating_duration_since(due));
        }
    }));
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
