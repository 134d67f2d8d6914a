//! Kafka fixtures: librdkafka's mock cluster (a real Kafka-protocol
//! listener on loopback, in process), a producer, herald nodes reading it,
//! and readers of herald's cursors.

use std::time::Duration;

use herald::config::{Config, KafkaConfig, StartPosition};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{eventually, SseClient, TestServer};

pub const TOPIC: &str = "events";

pub fn kafka(
    cluster: &MockCluster<'_, impl rdkafka::ClientContext>,
    start: StartPosition,
) -> KafkaConfig {
    KafkaConfig {
        brokers: cluster.bootstrap_servers(),
        topics: vec![TOPIC.to_owned()],
        start,
        properties: vec![],
        publish_topic: Some(TOPIC.to_owned()),
        publish_timeout: Duration::from_secs(2),
        publish_transactions: true,
        metadata_interval: Duration::from_millis(200),
        backpressure: Some(Duration::from_secs(5)),
        catchup: Default::default(),
        mappings: Default::default(),
        schema_registry: None,
        dead_letter_topic: None,
    }
}

pub fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let c = MockCluster::new(1).unwrap();
    c.create_topic(TOPIC, 8, 1).unwrap();
    c
}

pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap()
}

pub async fn produce(
    p: &FutureProducer,
    partition: Option<i32>,
    key: Option<&str>,
    headers: &[(&str, &[u8])],
    value: &[u8],
) -> (i32, i64) {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut r = FutureRecord::to(TOPIC).payload(value).headers(h);
    if let Some(k) = key {
        r = r.key(k);
    }
    if let Some(p) = partition {
        r = r.partition(p);
    }
    let d = p.send(r, Duration::from_secs(10)).await.unwrap();
    (d.partition, d.offset)
}

/// The offset an event id (a cursor) names for `partition` of the topic.
pub fn position(id: &str, partition: i32) -> i64 {
    let c = herald::sse::Cursor::decode(id).unwrap_or_else(|e| panic!("{id:?} {e}"));
    c.get(herald::sse::cursor::fingerprint(TOPIC), partition)
        .unwrap()
}

/// Partition and offset of a publish reply's `topic:partition:offset`.
pub fn record_position(id: &str) -> (i32, i64) {
    let mut it = id.rsplitn(3, ':');
    let off = it.next().unwrap().parse().unwrap();
    let part = it.next().unwrap().parse().unwrap();
    assert_eq!(it.next(), Some(TOPIC), "{id}");
    (part, off)
}

pub async fn server(
    cluster: &MockCluster<'_, impl rdkafka::ClientContext>,
    tweak: impl FnOnce(&mut Config),
) -> TestServer {
    let k = kafka(cluster, StartPosition::Latest);
    TestServer::with(|c| {
        c.kafka = Some(k);
        tweak(c);
    })
    .await
}

/// Reads `n` events (none of them herald's own) as record numbers (their
/// data); the last id.
pub async fn read(c: &mut SseClient, n: usize) -> (Vec<usize>, String) {
    let mut got = Vec::with_capacity(n);
    let mut last = String::new();
    for ev in c.next_n(n).await {
        assert_eq!(ev.event, "message", "{ev:?}");
        got.push(ev.data.parse().unwrap());
        last = ev.id;
    }
    (got, last)
}

/// Waits until `node` has consumed `n` records (the sum of its position).
pub async fn consumed(node: &TestServer, n: i64) {
    let f = node.fanout.clone();
    eventually(
        || f.position().iter().flatten().sum::<i64>() >= n,
        "records consumed",
    )
    .await;
}

/// Waits until no stream on `node` is being caught up from Kafka.
pub async fn joined_live(node: &TestServer) {
    eventually(|| node.catchups() == 0, "catch-ups done").await;
}
