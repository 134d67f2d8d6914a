//! Settings and error handling shared by the consumer and the producer: the
//! librdkafka client configuration, user properties, start errors, and the
//! closed set of error kinds used as a metrics label.

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;

use crate::config::KafkaConfig;
use crate::metrics as m;

/// Bound on startup metadata and offset lookups.
pub(crate) const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Why Kafka ingest or the producer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid Kafka client configuration: {0}")]
    Client(String),
    #[error("cannot read metadata of Kafka topic {topic:?} from {brokers} within {STARTUP_TIMEOUT:?}: {error}")]
    Metadata {
        topic: String,
        brokers: String,
        error: String,
    },
    #[error("Kafka topic {0:?} does not exist (herald does not create topics)")]
    UnknownTopic(String),
    #[error("cannot look up start offsets (offsets for times): {0}")]
    Offsets(String),
    #[error("cannot assign partitions: {0}")]
    Assign(String),
    #[error("cannot start the ingest thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot start Kafka transactions for publishing (the broker must support them): {0}")]
    Transactions(String),
}

/// The client configuration both sides start from.
pub(crate) fn config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        // librdkafka's default backs off up to 10 s between reconnects; an
        // SSE fan-out wants records flowing again soon after a broker returns.
        .set("reconnect.backoff.max.ms", "1000");
    c
}

/// The configuration of a consumer that assigns itself partitions and never
/// commits (ingest, catch-up readers). `group` is only a name: librdkafka
/// requires one for `assign`.
pub(crate) fn reader_config(cfg: &KafkaConfig, group: &str) -> ClientConfig {
    let mut c = config(cfg);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("allow.auto.create.topics", "false")
        // An assigned offset that is gone (retention): start from the
        // oldest record kept rather than skip to the end.
        .set("auto.offset.reset", "earliest")
        // librdkafka pauses fetching for this long once its local queue
        // passes a threshold (default 1 s). herald drains that queue as
        // fast as it fills, so a long pause only idles the consumer:
        // measured 0.18M -> 0.92M records/s on the mock cluster.
        .set("fetch.queue.backoff.ms", "10")
        // A broker that holds a fetch for its whole max wait even when
        // records arrive (librdkafka's mock cluster does) would add up
        // to this much latency: measured p50 241 ms at the default
        // 500 ms, 27 ms at 50 ms. 100 ms costs at most 10 idle fetches
        // a second per broker; a broker that answers early is unaffected.
        .set("fetch.wait.max.ms", "100");
    c
}

/// Applies `--kafka-property` settings last, so they override herald's.
pub(crate) fn apply_user_properties(c: &mut ClientConfig, cfg: &KafkaConfig) {
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
}

/// Kafka error kinds, a closed set for the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Transport,
    Consume,
    Other,
}

impl ErrorKind {
    pub(crate) const ALL: [ErrorKind; 3] =
        [ErrorKind::Transport, ErrorKind::Consume, ErrorKind::Other];

    pub(crate) fn of(error: &KafkaError) -> Self {
        use rdkafka::types::RDKafkaErrorCode as C;
        match error.rdkafka_error_code() {
            Some(
                C::BrokerTransportFailure | C::AllBrokersDown | C::Resolve | C::OperationTimedOut,
            ) => ErrorKind::Transport,
            _ if matches!(error, KafkaError::MessageConsumption(_)) => ErrorKind::Consume,
            _ => ErrorKind::Other,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            ErrorKind::Transport => "transport",
            ErrorKind::Consume => "consume",
            ErrorKind::Other => "other",
        }
    }

    /// Counts one error of this kind.
    pub(crate) fn count(self) {
        metrics::counter!(m::KAFKA_ERRORS, "kind" => self.label()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The librdkafka herald links reaches the clusters users run: TLS,
    /// SASL PLAIN / SCRAM / OAUTHBEARER, and
    /// every compression codec a producer may have used.
    #[test]
    fn librdkafka_is_built_with_tls_sasl_and_every_codec() {
        let native = ClientConfig::new().create_native_config().unwrap();
        let features = native.get("builtin.features").unwrap();
        let have: Vec<&str> = features.split(',').collect();
        for want in [
            "gzip",
            "snappy",
            "lz4",
            "zstd",
            "ssl",
            "sasl_plain",
            "sasl_scram",
            "sasl_oauthbearer",
        ] {
            assert!(have.contains(&want), "{want} missing from {features}");
        }
    }
}
