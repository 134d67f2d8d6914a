//! `mock-kafka`: librdkafka's in-process mock cluster as a separate process,
//! for measuring herald's Kafka ingest without installing a broker.
//!
//! Starts a 1-broker mock cluster with topic `bench` (8 partitions), prints
//! `bootstrap=<host:port>`, then reads commands from stdin, one per line:
//!   produce N USERS   N records, keyed `load-{i % USERS}` (USERS=0: no key,
//!                     i.e. broadcasts), 64-byte JSON values, as fast as the
//!                     producer goes; prints `produced N in S s`.
//! Exits when stdin closes. Bounded: N is at most 10,000,000.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn main() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("bench", 8, 1).expect("topic");
    let bootstrap = cluster.bootstrap_servers();
    println!("bootstrap={bootstrap}");
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
        if parts.first() != Some(&"produce") || parts.len() != 3 {
            eprintln!("mock-kafka: expected `produce N USERS`");
            continue;
        }
        let n: usize = parts[1].parse::<usize>().unwrap_or(0).min(10_000_000);
        let users: usize = parts[2].parse().unwrap_or(0);
        let t = Instant::now();
        let mut key = String::new();
        for i in 0..n {
            loop {
                let mut r = BaseRecord::<str, [u8]>::to("bench").payload(&value[..]);
                if users > 0 {
                    key.clear();
                    key.push_str("load-");
                    key.push_str(&(i % users).to_string());
                    r = r.key(key.as_str());
                }
                match producer.send(r) {
                    Ok(()) => break,
                    // Local queue full: let it drain.
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }
        producer.flush(Duration::from_secs(60)).ok();
        println!("produced {n} in {:.3} s", t.elapsed().as_secs_f64());
        std::io::stdout().flush().ok();
    }
}
