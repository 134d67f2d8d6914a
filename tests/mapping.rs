//! Kafka topics not written for herald, against librdkafka's mock cluster
//! and a stand-in schema registry: a mapping file routes Avro `orders` by a
//! field of the value, drops a field, names the event type; records that
//! can not be decoded go to the dead-letter topic with where they came from
//! and why, while their partition keeps flowing; a registry outage does not
//! stop records whose schema is held.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use apache_avro::types::Value;
use herald::config::{SchemaRegistryConfig, StartPosition};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use support::kafka::{kafka, producer};
use support::registry::Registry;
use support::TestServer;

const ORDER: &str = r#"{"type":"record","name":"Order","fields":[
  {"name":"id","type":"string"},
  {"name":"customerId","type":"string"},
  {"name":"card","type":"string"},
  {"name":"total","type":{"type":"bytes","logicalType":"decimal","precision":9,"scale":2}}]}"#;

const MAPPING: &str = r#"
[[topics]]
topic = "orders"
value = "avro"
user = "field:/customerId"
event = "const:order"
drop = ["/card"]
"#;

/// A record as Confluent's Avro serializer frames it.
fn framed(id: u32, customer: &str, order: &str) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(ORDER).unwrap();
    let v = Value::Record(vec![
        ("id".into(), Value::String(order.into())),
        ("customerId".into(), Value::String(customer.into())),
        ("card".into(), Value::String("4111111111111111".into())),
        (
            "total".into(),
            Value::Decimal(apache_avro::Decimal::from(1230i32.to_be_bytes().to_vec())),
        ),
    ]);
    let mut out = vec![0];
    out.extend(id.to_be_bytes());
    #[allow(deprecated)]
    out.extend(apache_avro::to_avro_datum(&schema, v).unwrap());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_avro_topic_by_field_with_dead_letters_and_a_registry_outage() {
    let cluster = support::kafka::cluster();
    cluster.create_topic("orders", 2, 1).unwrap();
    cluster.create_topic("dead", 1, 1).unwrap();
    let registry = Registry::start();
    registry.add(1, "AVRO", ORDER);
    let dir = std::env::temp_dir().join(format!("herald-mapping-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mapping.toml");
    std::fs::write(&file, MAPPING).unwrap();

    let mut k = kafka(&cluster, StartPosition::Latest);
    k.topics.push("orders".into());
    k.mappings = herald::Mappings::load(&file).unwrap();
    k.schema_registry = Some(SchemaRegistryConfig {
        url: registry.url.clone(),
        basic_auth: Some("user:secret".into()),
        ca: None,
    });
    k.dead_letter_topic = Some("dead".into());
    let server = TestServer::with(|c| c.kafka = Some(k)).await;
    let p = producer(&cluster.bootstrap_servers());
    let send = |key: &'static str, value: Vec<u8>| {
        let p = p.clone();
        async move {
            let r = FutureRecord::to("orders")
                .key(key)
                .payload(&value)
                .partition(1);
            p.send(r, Duration::from_secs(10)).await.unwrap().offset
        }
    };

    let mut c = server.subscribe("c-42").await;
    send("o-1", framed(1, "c-42", "o-1")).await;
    let ev = c.next().await;
    assert_eq!(ev.event, "order");
    assert_eq!(
        ev.data,
        r#"{"customerId":"c-42","id":"o-1","total":"12.30"}"#
    );

    // An unknown schema id and a corrupt datum: dead letters; the
    // partition keeps flowing.
    let unknown_at = send("o-2", framed(99, "c-42", "o-2")).await;
    let mut corrupt = framed(1, "c-42", "o-3");
    corrupt.truncate(9);
    let corrupt_at = send("o-3", corrupt).await;
    send("o-4", framed(1, "c-42", "o-4")).await;
    assert!(c.next().await.data.contains(r#""id":"o-4""#));

    let dead: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "dead-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dead.subscribe(&["dead"]).unwrap();
    let mut letters = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while letters.len() < 2 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = dead.poll(Duration::from_millis(200)) {
            let h = m.headers().unwrap();
            let get = |name: &str| {
                h.iter()
                    .find(|x| x.key == name)
                    .map(|x| String::from_utf8(x.value.unwrap().to_vec()).unwrap())
            };
            letters.push((
                m.key().map(|k| String::from_utf8(k.to_vec()).unwrap()),
                get("herald-source-topic"),
                get("herald-source-partition"),
                get("herald-source-offset"),
                get("herald-error"),
                get("herald-error-detail").is_some(),
            ));
        }
    }
    assert_eq!(
        letters,
        vec![
            (
                Some("o-2".into()),
                Some("orders".into()),
                Some("1".into()),
                Some(unknown_at.to_string()),
                Some("unknown_schema".into()),
                true
            ),
            (
                Some("o-3".into()),
                Some("orders".into()),
                Some("1".into()),
                Some(corrupt_at.to_string()),
                Some("decode".into()),
                true
            ),
        ]
    );

    // The schema was fetched once (and the unknown id once).
    assert_eq!(registry.requests.load(Ordering::SeqCst), 2);
    assert_eq!(
        registry.auth.lock().as_deref(),
        Some("Basic dXNlcjpzZWNyZXQ="),
        "basic auth from USER:PASSWORD"
    );
    // Registry down: a held schema keeps its records flowing; a new id is
    // dead-lettered as unavailable.
    registry.up.store(false, Ordering::SeqCst);
    send("o-5", framed(7, "c-42", "o-5")).await;
    send("o-6", framed(1, "c-42", "o-6")).await;
    assert!(c.next().await.data.contains(r#""id":"o-6""#));
    let page = server.metrics();
    for reason in ["unknown_schema", "decode", "registry_unavailable"] {
        assert_eq!(
            support::metric(&page, "herald_kafka_records_skipped_total", Some(reason)),
            1.0,
            "{reason}"
        );
    }
    assert_eq!(
        support::metric(&page, "herald_kafka_dead_letters_total", Some("queued")),
        3.0
    );

    // A node whose every topic has a rule has nowhere to publish in
    // herald's own format: a clear 501, never a write into `orders`.
    let mut k = kafka(&cluster, StartPosition::Latest);
    k.topics = vec!["orders".into()];
    k.publish_topic = None;
    k.mappings = herald::Mappings::load(&file).unwrap();
    k.schema_registry = Some(SchemaRegistryConfig {
        url: registry.url.clone(),
        basic_auth: None,
        ca: None,
    });
    let mapped_only = TestServer::with(|c| c.kafka = Some(k)).await;
    let (status, reply) = mapped_only
        .publish(serde_json::json!({"user": "c-42", "data": {"x": 1}}))
        .await;
    assert_eq!(status, 501, "{reply}");
    assert!(
        reply.to_string().contains("--kafka-publish-topic"),
        "{reply}"
    );
}
