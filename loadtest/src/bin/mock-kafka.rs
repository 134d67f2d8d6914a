//! `mock-kafka`: librdkafka's in-process mock cluster as a separate process,
//! for measuring herald's Kafka ingest without installing a broker.
//!
//! Starts a 1-broker mock cluster with topic `bench` (8 partitions), prints
//! `bootstrap=<host:port>`, then reads commands from stdin, one per line:
//!   produce N USERS   N records, keyed `load-{i % USERS}` (USERS=0: no key,
//!                     i.e. broadcasts), 64-byte JSON values, as fast as the
//!                     producer goes; prints `produced N in S s`.
//!   produce N USERS FORMAT
//!                     N order records to topic `bench-FORMAT` (json, avro,
//!                     protobuf), keyed by order id, the user in the value's
//!                     `customerId` (`load-{i % USERS}`), with a `card`
//!                     field to drop; avro and protobuf in the schema
//!                     registry's wire format (schema ids 1 and 2).
//! It also serves those schemas as a schema registry (`GET
//! /schemas/ids/{1,2}`) and prints `registry=<url>` after the bootstrap line.
//! Exits when stdin closes. Bounded: N is at most 10,000,000.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn main() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    for t in ["bench", "bench-json", "bench-avro", "bench-protobuf"] {
        cluster.create_topic(t, 8, 1).expect("topic");
    }
    let bootstrap = cluster.bootstrap_servers();
    println!("bootstrap={bootstrap}");
    println!("registry={}", registry());
    std::io::stdout().flush().ok();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("batch.num.messages", "10000")
        .create()
        .expect("producer");
    let value = br#"{"n":0,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.first() != Some(&"produce") || !(3..=4).contains(&parts.len()) {
            eprintln!("mock-kafka: expected `produce N USERS [FORMAT]`");
            continue;
        }
        let n: usize = parts[1].parse::<usize>().unwrap_or(0).min(10_000_000);
        let users: usize = parts[2].parse().unwrap_or(0);
        let t = Instant::now();
        let mut key = String::new();
        let mut buf = Vec::new();
        let topic = parts
            .get(3)
            .map_or("bench".to_owned(), |f| format!("bench-{f}"));
        for i in 0..n {
            key.clear();
            let mut r = BaseRecord::<str, [u8]>::to(&topic);
            if let Some(format) = parts.get(3) {
                // Keyed by order id; the user is in the value.
                key.push_str(&format!("o-{i}"));
                order(format, i, users.max(1), &mut buf);
                r = r.key(key.as_str()).payload(&buf[..]);
            } else {
                r = r.payload(&value[..]);
                if users > 0 {
                    key.push_str("load-");
                    key.push_str(&(i % users).to_string());
                    r = r.key(key.as_str());
                }
            }
            // Local queue full: let it drain, then send the same record.
            while let Err((_, back)) = producer.send(r) {
                std::thread::sleep(Duration::from_millis(1));
                r = back;
            }
        }
        producer.flush(Duration::from_secs(60)).ok();
        println!("produced {n} in {:.3} s", t.elapsed().as_secs_f64());
        std::io::stdout().flush().ok();
    }
}

const AVRO: &str = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"string"},{"name":"customerId","type":"string"},{"name":"card","type":"string"},{"name":"seq","type":"long"},{"name":"note","type":["null","string"]}]}"#;
const PROTO: &str = "syntax = \"proto3\"; message Order { string id = 1; string customer_id = 2; string card = 3; int64 seq = 4; string note = 5; }";

/// Order `i` for user `load-{i % users}` in `format`, into `out`.
fn order(format: &str, i: usize, users: usize, out: &mut Vec<u8>) {
    out.clear();
    let id = format!("o-{i}");
    let user = format!("load-{}", i % users);
    let (card, note) = ("4111111111111111", "leave at the door");
    match format {
        "avro" => {
            out.extend([0, 0, 0, 0, 1]);
            for s in [&id[..], &user, card] {
                zigzag(s.len() as i64, out);
                out.extend(s.as_bytes());
            }
            zigzag(i as i64, out);
            out.push(2); // union branch 1: string
            zigzag(note.len() as i64, out);
            out.extend(note.as_bytes());
        }
        "protobuf" => {
            out.extend([0, 0, 0, 0, 2, 0]);
            for (tag, s) in [(1u8, &id[..]), (2, &user), (3, card), (5, note)] {
                out.extend([tag << 3 | 2, s.len() as u8]);
                out.extend(s.as_bytes());
            }
            out.push(4 << 3);
            varint(i as u64, out);
        }
        _ => out.extend(
            format!(
                r#"{{"id":"{id}","customerId":"{user}","card":"{card}","seq":{i},"note":"{note}"}}"#
            )
            .as_bytes(),
        ),
    }
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64, out: &mut Vec<u8>) {
    varint(((v << 1) ^ (v >> 63)) as u64, out);
}

/// A schema registry answering `GET /schemas/ids/1` (Avro) and `/2`
/// (Protobuf) on a loopback port; returns its URL.
fn registry() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("registry port");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let n = std::io::Read::read(&mut conn, &mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let body = if head.starts_with("GET /schemas/ids/1 ") {
                serde_json::json!({"schema": AVRO, "schemaType": "AVRO"}).to_string()
            } else if head.starts_with("GET /schemas/ids/2 ") {
                serde_json::json!({"schema": PROTO, "schemaType": "PROTOBUF"}).to_string()
            } else {
                String::new()
            };
            let status = if body.is_empty() {
                "404 Not Found"
            } else {
                "200 OK"
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}
