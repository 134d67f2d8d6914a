//! Kafka ingest against librdkafka's mock cluster (a real Kafka-protocol
//! listener on loopback, in process): record mapping, bad records skipped
//! while the partition keeps flowing, per-partition order over 8 partitions,
//! ids from positions and resume by them, publish -> Kafka -> SSE, two nodes
//! on one topic, a missing topic, and a broker outage.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use herald::config::{Config, StartPosition};
use rdkafka::producer::{FutureRecord, Producer};
use serde_json::json;
use support::eventually;

use support::kafka::{cluster, kafka, position, produce, producer, record_position, server, TOPIC};

/// A producer may stamp a record with any time: one from the far future
/// (once an overflow that killed the ingest thread) is delivered, and the
/// node stays ready; a reserved event type is skipped, named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_record_timestamp_or_event_type_leaves_ingest_running() {
    let cluster = cluster();
    let server = server(&cluster, |_| {}).await;
    let p = producer(&cluster.bootstrap_servers());
    let mut c = server.subscribe("t").await;
    let far = FutureRecord::to(TOPIC)
        .partition(1)
        .key("t")
        .payload("far future")
        .timestamp(i64::MAX);
    p.send(far, Duration::from_secs(10)).await.unwrap();
    produce(
        &p,
        Some(1),
        Some("t"),
        &[("sse-event", b"herald-reset")],
        b"forged",
    )
    .await;
    produce(&p, Some(1), Some("t"), &[], b"after").await;
    assert_eq!(c.next().await.data, "far future");
    assert_eq!(c.next().await.data, "after", "the forged reset is skipped");
    assert_eq!(server.get("/readyz").await.0, 200);
    assert!(
        support::metric(
            &server.metrics(),
            "herald_kafka_records_skipped_total",
            Some("reserved_event")
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_map_to_users_topics_broadcasts_and_event_types() {
    let cluster = cluster();
    let server = server(&cluster, |_| {}).await;
    let p = producer(&cluster.bootstrap_servers());
    let mut alice = server.subscribe("alice?topic=news").await;
    let mut bob = server.subscribe("bob").await;

    let (part, off) = produce(&p, None, Some("alice"), &[], br#"{"text":"hi alice"}"#).await;
    let ev = alice.next().await;
    assert_eq!(ev.data, r#"{"text":"hi alice"}"#, "value unchanged");
    assert_eq!(ev.event, "message");
    assert_eq!(
        position(&ev.id, part),
        off + 1,
        "the id is a cursor: the node's position after this record"
    );

    produce(&p, None, None, &[], b"to everyone").await;
    assert_eq!(alice.next().await.data, "to everyone");
    assert_eq!(bob.next().await.data, "to everyone");

    produce(
        &p,
        None,
        Some("bob"),
        &[("sse-topic", b"news"), ("sse-event", b"headline")],
        b"line 1\nline 2",
    )
    .await;
    let ev = alice.next().await;
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("headline", "line 1\nline 2")
    );
    bob.assert_quiet(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_record_is_skipped_and_its_partition_keeps_flowing() {
    let cluster = cluster();
    let server = server(&cluster, |_| {}).await;
    let p = producer(&cluster.bootstrap_servers());
    let mut c = server.subscribe("u").await;
    produce(&p, Some(3), Some("u"), &[], b"before").await;
    produce(&p, Some(3), Some("u"), &[], b"\xff\xfe not utf-8").await;
    produce(
        &p,
        Some(3),
        Some("u"),
        &[("sse-event", b"bad\nevent")],
        b"x",
    )
    .await;
    produce(&p, Some(3), Some("u"), &[], b"after").await;
    assert_eq!(c.next().await.data, "before");
    assert_eq!(c.next().await.data, "after");
    let (_, _, page) = server.get("/metrics").await;
    assert!(
        support::metric(
            &page,
            "herald_kafka_records_skipped_total",
            Some("value_not_utf8")
        ) >= 1.0
    );
    assert!(
        support::metric(
            &page,
            "herald_kafka_records_skipped_total",
            Some("bad_event")
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_partitions_keep_per_partition_order() {
    let cluster = cluster();
    let server = server(&cluster, |_| {}).await;
    let p = producer(&cluster.bootstrap_servers());
    let mut c = server.subscribe("watcher").await;
    const PER: usize = 100;
    let mut sends = Vec::new();
    for i in 0..PER {
        for part in 0..8 {
            let value = format!("{part}:{i}");
            let r = FutureRecord::<(), _>::to(TOPIC)
                .partition(part)
                .payload(&value);
            sends.push(p.send_result(r).map_err(|(e, _)| e).unwrap());
        }
    }
    for s in sends {
        s.await.unwrap().unwrap();
    }
    let mut next = [0usize; 8];
    for _ in 0..PER * 8 {
        let ev = c.next().await;
        let (part, i) = ev.data.split_once(':').unwrap();
        let (part, i): (usize, usize) = (part.parse().unwrap(), i.parse().unwrap());
        assert_eq!(i, next[part], "partition {part} out of order");
        next[part] += 1;
        assert_eq!(
            position(&ev.id, part as i32),
            i as i64 + 1,
            "the cursor moved past it"
        );
    }
    assert_eq!(next, [PER; 8]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_by_kafka_position() {
    let cluster = cluster();
    let server = server(&cluster, |_| {}).await;
    let p = producer(&cluster.bootstrap_servers());
    let mut c = server.subscribe("r").await;
    for i in 0..3 {
        produce(&p, None, Some("r"), &[], i.to_string().as_bytes()).await;
    }
    let last = c.next_n(3).await.pop().unwrap().id;
    drop(c);
    for i in 3..6 {
        produce(&p, None, Some("r"), &[], i.to_string().as_bytes()).await;
    }
    // Wait until herald has consumed them (they are in its replay buffer).
    let fanout = server.fanout.clone();
    eventually(|| fanout.replay_len().0 >= 6, "records consumed").await;
    let mut c = server.subscribe_with("r", Some(&last)).await;
    let got: Vec<String> = c.next_n(3).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, ["3", "4", "5"]);
    // An id of an event this node does not hold: the reset event.
    let mut c = server
        .subscribe_with("r", Some(&format!("{TOPIC}:0:999999")))
        .await;
    assert_eq!(c.next().await.event, "herald-reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_goes_through_kafka_and_every_node_delivers_it() {
    let cluster = cluster();
    let node_a = server(&cluster, |_| {}).await;
    let node_b = server(&cluster, |_| {}).await;
    let mut on_a = node_a.subscribe("123").await;
    let mut on_b = node_b.subscribe("123").await;
    let message = json!({"from": "api", "n": [1, 2]});
    let (status, reply) = node_a
        .publish(json!({"user": "123", "data": message}))
        .await;
    assert_eq!(status, 200, "{reply}");
    // The reply names the record's position; streams name cursors past it.
    let id = reply["id"].as_str().unwrap().to_owned();
    let (part, off) = record_position(&id);
    for c in [&mut on_a, &mut on_b] {
        let ev = c.next().await;
        assert_eq!(position(&ev.id, part), off + 1);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&ev.data).unwrap(),
            message
        );
    }
    // Batch, with topic and event type, through node b.
    let mut t = node_a.subscribe("x?topic=t").await;
    let (status, reply) = node_b
        .publish(json!([{"topic": "t", "event": "e", "data": 1}, {"broadcast": true, "data": 2}]))
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["ids"].as_array().unwrap().len(), 2);
    // Different targets may sit in different partitions: either order.
    let mut got: Vec<(String, String)> = t
        .next_n(2)
        .await
        .into_iter()
        .map(|e| (e.event, e.data))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [("e".into(), "1".into()), ("message".into(), "2".into())]
    );
    // Events of one topic (and broadcasts among themselves) keep their order.
    let batch: Vec<_> = (0..20).map(|i| json!({"topic": "t", "data": i})).collect();
    let (status, _) = node_b.publish(serde_json::Value::Array(batch)).await;
    assert_eq!(status, 200);
    let batch: Vec<_> = (20..40)
        .map(|i| json!({"broadcast": true, "data": i}))
        .collect();
    let (status, _) = node_b.publish(serde_json::Value::Array(batch)).await;
    assert_eq!(status, 200);
    let mut topic_seen = Vec::new();
    let mut broadcast_seen = Vec::new();
    for ev in t.next_n(40).await {
        let n: u32 = ev.data.parse().unwrap();
        if n < 20 {
            topic_seen.push(n)
        } else {
            broadcast_seen.push(n)
        }
    }
    assert_eq!(topic_seen, (0..20).collect::<Vec<_>>());
    assert_eq!(broadcast_seen, (20..40).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_a_clear_startup_error() {
    let cluster = cluster();
    let mut config = Config::default_for_tests();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let mut k = kafka(&cluster, StartPosition::Latest);
    k.topics = vec!["nope".to_owned()];
    k.publish_topic = Some("nope".to_owned());
    config.kafka = Some(k);
    let err = tokio::time::timeout(Duration::from_secs(30), herald::app::start(config, 100))
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(err.to_string().contains("\"nope\" does not exist"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_keeps_streams_and_delivers_everything_after() {
    let cluster = cluster();
    let server = server(&cluster, |c| {
        c.streams.heartbeat = Duration::from_millis(100)
    })
    .await;
    let p = producer(&cluster.bootstrap_servers());
    let mut c = server.subscribe("o").await;
    produce(&p, Some(1), Some("o"), &[], b"0").await;
    assert_eq!(c.next().await.data, "0");

    cluster.broker_down(1).unwrap();
    let addr = server.addr;
    let ready = || async move {
        let r = support::client()
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        r.status().as_u16()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ready().await != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "readiness never reflected the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Publishing through herald while the broker is down: a bounded 503.
    let t = std::time::Instant::now();
    let (status, reply) = server.publish(json!({"user": "o", "data": "lost?"})).await;
    assert_eq!(status, 503, "{reply}");
    // ... aborted: it never reaches the stream (below, 1..=20 and nothing else).
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("nothing was published"),
        "{reply}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "took {:?}",
        t.elapsed()
    );
    // Producers keep producing (their client buffers until the broker returns).
    let sends: Vec<_> = (1..=20)
        .map(|i| {
            let v = i.to_string();
            p.send_result(FutureRecord::to(TOPIC).partition(1).key("o").payload(&v))
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.broker_up(1).unwrap();
    for s in sends {
        s.await.unwrap().unwrap();
    }
    // The open stream survived (heartbeats kept it alive) and gets every
    // record, in order, without a restart.
    for i in 1..=20 {
        assert_eq!(c.next().await.data, i.to_string());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ready().await != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.flush(Duration::from_secs(1)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_client_property_is_a_clear_startup_error() {
    let cluster = cluster();
    let mut config = Config::default_for_tests();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let mut k = kafka(&cluster, StartPosition::Latest);
    k.properties = vec![("no.such.property".to_owned(), "1".to_owned())];
    config.kafka = Some(k);
    let err = tokio::time::timeout(Duration::from_secs(30), herald::app::start(config, 100))
        .await
        .expect("no hang")
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("invalid Kafka client configuration") && msg.contains("no.such.property"),
        "{msg}"
    );
}

// `--kafka-start replay-window` is covered end to end against tansu
// (e2e/kafka-browser.mjs, the restart check): librdkafka's mock cluster answers
// every offsets-for-times lookup with the end offset, so it cannot be tested here.

/// Publishing in Kafka mode is one idempotent transaction per request:
/// with the broker failing produce requests (injected), librdkafka's retries
/// neither reorder nor duplicate, and every user's events arrive exactly
/// once, in order. (That a 503 wrote nothing needs a broker that hides
/// aborted transactions from read-committed consumers; librdkafka's mock
/// cluster does not, so the end-to-end test on tansu covers it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_survive_broker_errors_in_order_without_duplicates() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let cluster = cluster();
    let server = server(&cluster, |_| {}).await;
    const USERS: usize = 4;
    const BATCHES: usize = 12;
    let mut streams = Vec::new();
    for u in 0..USERS {
        streams.push(server.subscribe(&format!("b{u}")).await);
    }
    for b in 0..BATCHES {
        // Transient broker errors on the next produce requests.
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            ],
        );
        let batch: Vec<_> = (0..USERS)
            .flat_map(|u| (0..3).map(move |i| json!({"user": format!("b{u}"), "data": b * 3 + i})))
            .collect();
        let (status, reply) = server.publish(serde_json::Value::Array(batch)).await;
        assert_eq!(status, 200, "{reply}");
    }
    for (u, s) in streams.iter_mut().enumerate() {
        let got: Vec<usize> = s
            .next_n(BATCHES * 3)
            .await
            .into_iter()
            .map(|e| e.data.parse().unwrap())
            .collect();
        assert_eq!(got, (0..BATCHES * 3).collect::<Vec<_>>(), "user b{u}");
        s.assert_quiet(Duration::from_millis(300)).await;
    }
}

/// For brokers without transactions (`--kafka-publish-transactions false`):
/// publishes still reach every node; when the broker is away a batch
/// answers 503 naming which of its events were written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_event_publishing_says_which_events_were_written() {
    let cluster = cluster();
    let server = server(&cluster, |c| {
        if let Some(k) = c.kafka.as_mut() {
            k.publish_transactions = false;
        }
    })
    .await;
    let mut s = server.subscribe("pe").await;
    let id = server
        .publish_ok(json!({"user": "pe", "data": "over per-event writes"}))
        .await;
    let ev = s.next().await;
    let (part, off) = record_position(&id);
    assert_eq!(
        (position(&ev.id, part), ev.data.as_str()),
        (off + 1, r#""over per-event writes""#)
    );
    cluster.broker_down(1).unwrap();
    let (status, reply) = server
        .publish(json!([{"user": "pe", "data": 1}, {"user": "pe", "data": 2}]))
        .await;
    assert_eq!(status, 503, "{reply}");
    let ids = reply["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 2, "{reply}");
    assert!(ids.iter().all(serde_json::Value::is_null), "{reply}");
    cluster.broker_up(1).unwrap();
}

/// Ready means ready: start positions are resolved before the node serves,
/// so a record produced as soon as it is up is never missed (a lazily
/// resolved "latest" once skipped it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_produced_right_after_ready_is_delivered() {
    let cluster = cluster();
    let p = producer(&cluster.bootstrap_servers());
    for i in 0..50 {
        produce(&p, Some(i % 8), Some("old"), &[], b"before").await;
    }
    for round in 0..3 {
        let node = server(&cluster, |_| {}).await;
        assert_eq!(node.get("/readyz").await.0, 200);
        let mut c = node.subscribe("fresh").await;
        for part in 0..8 {
            produce(
                &p,
                Some(part),
                Some("fresh"),
                &[],
                format!("{round}:{part}").as_bytes(),
            )
            .await;
        }
        let mut got: Vec<String> = c.next_n(8).await.into_iter().map(|e| e.data).collect();
        got.sort();
        let want: Vec<String> = (0..8).map(|part| format!("{round}:{part}")).collect();
        assert_eq!(got, want, "round {round}");
    }
}
