//! Every metric herald exports: names (units in the name, `herald_` prefix),
//! descriptions, and the process-wide Prometheus recorder.
//!
//! Hot-path rule: nothing here is touched per delivered frame. The dispatcher
//! counts once per dispatched event (how many queues it reached), bodies count
//! on connection close, gauges are computed when `/metrics` is scraped.
//! Label values come from closed sets only (reasons, sources), never user ids.

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub(crate) const CONNECTIONS_OPENED: &str = "herald_sse_connections_opened_total";
pub(crate) const CONNECTIONS_CLOSED: &str = "herald_sse_connections_closed_total";
pub(crate) const CONNECTIONS_OPEN: &str = "herald_sse_connections";
pub(crate) const HTTP_CONNECTIONS_OPEN: &str = "herald_http_connections";
pub(crate) const EVENTS_INGESTED: &str = "herald_events_ingested_total";
pub(crate) const EVENTS_DELIVERED: &str = "herald_events_delivered_total";
pub(crate) const EVENTS_QUEUED: &str = "herald_events_queued_total";
pub(crate) const EVENTS_SENT_DIRECT: &str = "herald_events_sent_direct_total";
pub(crate) const DELIVERY_LAG: &str = "herald_delivery_lag_seconds";
pub(crate) const EVENTS_DROPPED: &str = "herald_events_dropped_total";
pub(crate) const EVENTS_REPLAYED: &str = "herald_events_replayed_total";
pub(crate) const RESUMES: &str = "herald_resumes_total";
pub(crate) const STREAM_RESETS: &str = "herald_stream_resets_total";
pub(crate) const CATCHUP_STREAMS: &str = "herald_catchup_streams";
pub(crate) const CATCHUP_READERS: &str = "herald_catchup_readers_busy";
pub(crate) const CATCHUP_RECORDS: &str = "herald_catchup_records_read_total";
pub(crate) const CATCHUP_DURATION: &str = "herald_catchup_duration_seconds";
pub(crate) const FANOUT_DURATION: &str = "herald_fanout_duration_seconds";
pub(crate) const DISPATCH_LOCK_HELD: &str = "herald_dispatch_lock_held_seconds";
pub(crate) const ADMIN_ACTIONS: &str = "herald_admin_actions_total";
pub(crate) const JWKS_REFRESHES: &str = "herald_jwks_refreshes_total";
pub(crate) const JWKS_KEYS: &str = "herald_jwks_keys";
pub(crate) const REPLAY_EVENTS: &str = "herald_replay_buffer_events";
pub(crate) const REPLAY_BYTES: &str = "herald_replay_buffer_bytes";
pub(crate) const PUBLISH_REJECTED: &str = "herald_publish_rejected_total";
pub(crate) const KAFKA_SKIPPED: &str = "herald_kafka_records_skipped_total";
pub(crate) const KAFKA_DEAD_LETTERS: &str = "herald_kafka_dead_letters_total";
pub(crate) const SCHEMA_FETCHES: &str = "herald_schema_registry_fetches_total";
pub(crate) const SCHEMAS_HELD: &str = "herald_schema_registry_schemas";
pub(crate) const KAFKA_LAG: &str = "herald_kafka_consumer_lag_records";
pub(crate) const KAFKA_ERRORS: &str = "herald_kafka_errors_total";
pub(crate) const KAFKA_ASSIGNMENTS: &str = "herald_kafka_assignments_total";
pub(crate) const PROCESS_RSS: &str = "herald_process_resident_memory_bytes";
pub(crate) const PROCESS_FDS: &str = "herald_process_open_fds";
pub(crate) const PROCESS_MAX_FDS: &str = "herald_process_max_fds";
pub(crate) const PROCESS_CPU: &str = "herald_process_cpu_seconds_total";
pub(crate) const KAFKA_CONNECTED: &str = "herald_kafka_connected";
pub(crate) const KAFKA_PARTITIONS: &str = "herald_kafka_partitions";
pub(crate) const AUTH_DENIED: &str = "herald_auth_denied_total";
pub(crate) const LIMITED: &str = "herald_limited_total";
pub(crate) const PUBLISH_BACKPRESSURE: &str = "herald_publish_backpressure_total";

/// Buckets for the delivery lag: 1 ms .. 60 s.
const LAG_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets for the fan-out time of one event: 1 µs .. 100 ms.
const FANOUT_BUCKETS: &[f64] = &[
    1e-6, 5e-6, 25e-6, 100e-6, 250e-6, 1e-3, 2.5e-3, 10e-3, 25e-3, 100e-3,
];

/// Buckets for the time a caught-up stream takes to join live: 10 ms ..
/// 5 min.
const CATCHUP_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Installs the Prometheus recorder once per process and returns its handle.
/// Later calls (several servers in one test process) share it.
pub(crate) fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(FANOUT_DURATION.to_owned()),
                    FANOUT_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(DISPATCH_LOCK_HELD.to_owned()),
                        FANOUT_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(DELIVERY_LAG.to_owned()),
                        LAG_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(CATCHUP_DURATION.to_owned()),
                        CATCHUP_BUCKETS,
                    )
                })
                .map(PrometheusBuilder::build_recorder);
            let recorder = match recorder {
                Ok(r) => r,
                // Only fails on empty buckets, which FANOUT_BUCKETS is not.
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding); then
            // this handle renders nothing herald counts, which is visible.
            let _ = metrics::set_global_recorder(recorder);
            describe_all();
            register_reasons();
            handle
        })
        .clone()
}

/// Every label value of the reason-labelled counters (and the counters
/// only refusals bump) at zero, so dashboards and alerts see each series
/// before its first event.
fn register_reasons() {
    use crate::auth::{Denied, Endpoint};
    metrics::counter!(PUBLISH_REJECTED).increment(0);
    for limit in crate::guard::Limit::ALL {
        metrics::counter!(LIMITED, "reason" => limit.label()).increment(0);
    }
    for reason in crate::registry::queue::CloseReason::ALL {
        metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason.label()).increment(0);
    }
    for reason in crate::sse::frame::ResetReason::ALL {
        metrics::counter!(STREAM_RESETS, "reason" => reason.label()).increment(0);
    }
    for endpoint in [Endpoint::Subscribe, Endpoint::Publish] {
        for denied in [
            Denied::Missing(""),
            Denied::Invalid(String::new()),
            Denied::Forbidden(String::new()),
        ] {
            metrics::counter!(AUTH_DENIED, "endpoint" => endpoint.label(), "reason" => denied.reason())
                .increment(0);
        }
    }
}

fn describe_all() {
    describe_counter!(CONNECTIONS_OPENED, Unit::Count, "SSE streams opened.");
    describe_counter!(
        CONNECTIONS_CLOSED,
        Unit::Count,
        "SSE streams closed, by reason: client (went away), slow (queue overflow), shutdown, expired (token expired), write_timeout (the peer read nothing for --write-timeout), error (transport failure), protocol (the client sent bytes on its stream); and limit: connections refused with a 503 at the connection cap."
    );
    describe_counter!(
        AUTH_DENIED,
        Unit::Count,
        "Requests refused by auth, by endpoint (subscribe, publish) and reason (missing, invalid: 401; forbidden: 403)."
    );
    describe_counter!(
        LIMITED,
        Unit::Count,
        "Requests refused by a limit, by reason (per_user, per_ip, connect_rate, publish_rate, publish_bytes, header_timeout, header_too_large, write_timeout)."
    );
    describe_counter!(
        PUBLISH_BACKPRESSURE,
        Unit::Count,
        "Publishes held back because herald was behind on delivery (many streams with deep queues), by source (http, kafka) and outcome (waited, then published; refused: HTTP 503 after --publish-backpressure)."
    );
    describe_gauge!(CONNECTIONS_OPEN, Unit::Count, "Open SSE streams.");
    describe_gauge!(
        HTTP_CONNECTIONS_OPEN,
        Unit::Count,
        "Open HTTP connections (SSE and other)."
    );
    describe_counter!(EVENTS_INGESTED, Unit::Count, "Events accepted, by source.");
    describe_counter!(
        EVENTS_DELIVERED,
        Unit::Count,
        "Event frames written to connections (one per event per receiving connection)."
    );
    describe_counter!(
        EVENTS_QUEUED,
        Unit::Count,
        "Event frames queued to connections by the dispatcher."
    );
    describe_counter!(
        EVENTS_SENT_DIRECT,
        Unit::Count,
        "Of the queued event frames, those the publishing request wrote to an idle stream's socket itself (herald's HTTP/1.1 writer)."
    );
    describe_histogram!(
        DELIVERY_LAG,
        Unit::Seconds,
        "From the event's timestamp (Kafka record time, or publish time) to its write to a connection; sampled (one write in 16 per connection)."
    );
    describe_counter!(
        EVENTS_DROPPED,
        Unit::Count,
        "Event frames discarded, by reason (slow: the connection's queue overflowed and it was closed)."
    );
    describe_counter!(
        EVENTS_REPLAYED,
        Unit::Count,
        "Event frames sent from the replay buffer on resume."
    );
    describe_counter!(
        RESUMES,
        Unit::Count,
        "Subscriptions carrying a Last-Event-ID, by outcome (clean: from the replay buffer; catchup: from Kafka; gap: reset)."
    );
    describe_counter!(
        STREAM_RESETS,
        Unit::Count,
        "herald-reset events sent, by reason (last-event-id-not-retained, retention, last-event-id-unreadable)."
    );
    describe_gauge!(
        CATCHUP_STREAMS,
        Unit::Count,
        "Streams being caught up from Kafka, by state (reading: a reader serves them; waiting: every reader is busy)."
    );
    describe_gauge!(
        CATCHUP_READERS,
        Unit::Count,
        "Catch-up readers (Kafka consumers) serving streams now."
    );
    describe_counter!(
        CATCHUP_RECORDS,
        Unit::Count,
        "Kafka records read by catch-up readers."
    );
    describe_histogram!(
        CATCHUP_DURATION,
        Unit::Seconds,
        "Time from a stream's open to its joining the live fan-out, for streams caught up from Kafka."
    );
    describe_histogram!(
        FANOUT_DURATION,
        Unit::Seconds,
        "Time to route one event and queue it to every receiving connection (one sample per dispatched batch: the batch's time per event)."
    );
    describe_counter!(
        ADMIN_ACTIONS,
        Unit::Count,
        "Admin API actions taken, by action (close_user, maintenance, maintenance_end, drain)."
    );
    crate::http::admin::describe();
    describe_counter!(
        JWKS_REFRESHES,
        Unit::Count,
        "JWKS key set fetches after the first, by outcome (ok, error: the last good set is kept)."
    );
    describe_gauge!(JWKS_KEYS, Unit::Count, "Signing keys in the JWKS key set.");
    describe_histogram!(
        DISPATCH_LOCK_HELD,
        Unit::Seconds,
        "Time one event holds the dispatch lock (sampled: the last event of each dispatched batch). An event for one user releases it once its user's shard is locked."
    );
    describe_gauge!(
        REPLAY_EVENTS,
        Unit::Count,
        "Events held in the replay buffer."
    );
    describe_gauge!(
        REPLAY_BYTES,
        Unit::Bytes,
        "Frame bytes held in the replay buffer."
    );
    describe_counter!(
        KAFKA_SKIPPED,
        Unit::Count,
        "Kafka records herald could not map, by reason (kafka::record::Skip); also counted when sent to the dead-letter topic."
    );
    describe_counter!(
        KAFKA_DEAD_LETTERS,
        Unit::Count,
        "Records written to --kafka-dead-letter-topic, by outcome (queued, failed: the producer refused or the broker did not take it)."
    );
    describe_counter!(
        SCHEMA_FETCHES,
        Unit::Count,
        "Schema registry lookups of a schema not held yet, by outcome (ok, unknown_schema, registry_unavailable, bad_schema)."
    );
    describe_gauge!(
        SCHEMAS_HELD,
        Unit::Count,
        "Schema ids held (fetched, or remembered as failed for a while)."
    );
    describe_gauge!(
        KAFKA_CONNECTED,
        Unit::Count,
        "1 while the last Kafka metadata refresh succeeded, else 0."
    );
    describe_gauge!(KAFKA_PARTITIONS, Unit::Count, "Kafka partitions assigned.");
    describe_gauge!(
        KAFKA_LAG,
        Unit::Count,
        "Records in each partition not yet consumed (high watermark - position), from librdkafka statistics."
    );
    describe_counter!(
        KAFKA_ERRORS,
        Unit::Count,
        "Kafka client errors, by kind (transport, consume, other)."
    );
    describe_counter!(
        KAFKA_ASSIGNMENTS,
        Unit::Count,
        "Partition assignments made (at start and when partitions are added)."
    );
    describe_gauge!(PROCESS_RSS, Unit::Bytes, "Resident memory of the process.");
    describe_gauge!(PROCESS_FDS, Unit::Count, "Open file descriptors.");
    describe_gauge!(
        PROCESS_MAX_FDS,
        Unit::Count,
        "The open-file limit (soft RLIMIT_NOFILE)."
    );
    describe_counter!(PROCESS_CPU, Unit::Seconds, "CPU time used (user + system).");
    describe_counter!(
        PUBLISH_REJECTED,
        Unit::Count,
        "Publish requests refused with a 4xx."
    );
}

/// Reads the process's memory, open fds, fd limit and CPU time from /proc
/// into their gauges (at scrape time).
pub(crate) fn sample_process() {
    let page = 4096.0;
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(rss) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
        {
            metrics::gauge!(PROCESS_RSS).set(rss * page);
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!(PROCESS_FDS).set(dir.count() as f64);
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        if let Some(soft) = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<f64>().ok())
        {
            metrics::gauge!(PROCESS_MAX_FDS).set(soft);
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name: utime and stime are the 12th and
        // 13th, in clock ticks (100 per second on Linux).
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| f.get(i).and_then(|v| v.parse::<u64>().ok()))
            .sum();
        metrics::counter!(PROCESS_CPU).absolute(ticks / 100);
    }
}
