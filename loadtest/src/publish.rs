//! Publishers: through herald's HTTP API (one keep-alive connection each)
//! or straight into Kafka, paced or flat out; each event carries its
//! sequence number and send time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::args::Args;
use crate::stream::now_us;

/// What one publisher sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) target: SocketAddr,
    pub(crate) seconds: u64,
    pub(crate) payload: usize,
    pub(crate) batch: usize,
    /// Events per second for this publisher; 0 = as fast as accepted.
    pub(crate) rate: f64,
    /// One random user per event (`load-{u}`) instead of broadcasts.
    pub(crate) targeted: bool,
    /// Distinguishes publishers' random sequences.
    pub(crate) seed: u64,
}

/// Paces a publisher and makes its events: each carries a sequence number
/// `n` and its send time `t` (µs since the epoch).
pub(crate) struct Events {
    pub(crate) plan: Plan,
    pub(crate) users: usize,
    pub(crate) pad: String,
    pub(crate) start: Instant,
    pub(crate) end: Instant,
    pub(crate) rng: u64,
    /// Events made so far (the next sequence number).
    pub(crate) n: u64,
}

impl Events {
    pub(crate) fn new(plan: Plan, args: &Args) -> Self {
        let start = Instant::now();
        Self {
            plan,
            users: args.users(),
            pad: "x".repeat(plan.payload),
            start,
            end: start + Duration::from_secs(plan.seconds),
            rng: 0x9E37_79B9_7F4A_7C15u64 ^ now_us() ^ (plan.seed << 32),
            n: 0,
        }
    }

    /// Waits until the next event is due; false once the time is up.
    pub(crate) async fn next_due(&self) -> bool {
        if Instant::now() >= self.end {
            return false;
        }
        if self.plan.rate > 0.0 {
            let due = self.start + Duration::from_secs_f64(self.n as f64 / self.plan.rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        Instant::now() < self.end
    }

    /// The next event: its user index (targeted) and its JSON data.
    pub(crate) fn next(&mut self) -> (Option<usize>, String) {
        let (n, t, pad) = (self.n, now_us(), &self.pad);
        self.n += 1;
        let user = self.plan.targeted.then(|| {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            (self.rng % self.users as u64) as usize
        });
        (user, format!(r#"{{"n":{n},"t":{t},"p":"{pad}"}}"#))
    }
}

/// One keep-alive HTTP connection to herald's publish API.
pub(crate) struct Publisher {
    s: Box<dyn crate::tls::Io>,
    target: SocketAddr,
    /// `authorization: ...\r\n` with --jwt-secret, else empty.
    auth: String,
    buf: Vec<u8>,
}

impl Publisher {
    pub(crate) async fn connect(target: SocketAddr, args: &Args) -> Self {
        let s = TcpStream::connect(target).await.expect("publisher connect");
        s.set_nodelay(true).ok();
        let s = crate::tls::wrap(s, target)
            .await
            .expect("publisher TLS handshake");
        // With --jwt-secret, a publisher token (`"publish": true`).
        let auth = args.jwt_secret.as_ref().map_or(String::new(), |secret| {
            let claims = serde_json::json!({"sub": "sse-load", "exp": now_us() / 1_000_000 + 3600, "publish": true});
            let t = jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .expect("sign publisher token");
            format!("authorization: Bearer {t}\r\n")
        });
        Self {
            s,
            target,
            auth,
            buf: vec![0u8; 64 * 1024],
        }
    }

    /// POSTs `body` and reads the answer (which must be a 200); returns how
    /// long the request took.
    pub(crate) async fn post(&mut self, body: &str) -> Duration {
        let t = Instant::now();
        let req = format!(
            "POST /api/publish HTTP/1.1\r\nhost: {}\r\n{}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.target,
            self.auth,
            body.len()
        );
        self.s
            .write_all(req.as_bytes())
            .await
            .expect("publish write");
        // Read one response: head, then content-length bytes.
        let mut got = 0usize;
        loop {
            if got == self.buf.len() {
                self.buf.resize(got * 2, 0);
            }
            let r = self
                .s
                .read(&mut self.buf[got..])
                .await
                .expect("publish read");
            assert!(r > 0, "server closed the publisher");
            got += r;
            if let Some(p) = memchr::memmem::find(&self.buf[..got], b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..p]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "publish failed: {head}");
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got >= p + 4 + len {
                    break;
                }
            }
        }
        t.elapsed()
    }
}

/// What a publisher did: events published, deliveries expected (targeted
/// events), and how long each publish request took (µs; HTTP only).
pub(crate) struct Published {
    pub(crate) events: u64,
    pub(crate) expected: u64,
    pub(crate) latency: hdrhistogram::Histogram<u64>,
}

/// A histogram of request latencies in µs.
pub(crate) fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")
}

/// Publishes over one keep-alive HTTP connection, each request sent when the
/// previous one is answered (and, with a rate, not before its time).
pub(crate) async fn publish(plan: Plan, args: Args) -> Published {
    let mut conn = Publisher::connect(plan.target, &args).await;
    let mut events = Events::new(plan, &args);
    let (mut published, mut expected) = (0u64, 0u64);
    let mut latency = latency_histogram();
    let batch = plan.batch.max(1);
    while events.next_due().await {
        let mut items = Vec::with_capacity(batch);
        for _ in 0..batch {
            let (user, data) = events.next();
            items.push(match user {
                Some(u) => {
                    expected += args.streams_of(u);
                    format!(r#"{{"user":"load-{u}","data":{data}}}"#)
                }
                None => format!(r#"{{"broadcast":true,"data":{data}}}"#),
            });
        }
        let body = if batch == 1 {
            items.pop().unwrap_or_default()
        } else {
            format!("[{}]", items.join(","))
        };
        let took = conn.post(&body).await;
        let _ = latency.record(took.as_micros().max(1) as u64);
        published += batch as u64;
    }
    Published {
        events: published,
        expected,
        latency,
    }
}

/// The stalled streams' burst: `per_user` events to each of `users` stalled
/// users (`stalled-{k}`), in batches of at most 10,000, enough to overflow
/// every stalled queue at once. Returns the events sent.
pub(crate) async fn stalled_burst(
    target: SocketAddr,
    args: &Args,
    users: usize,
    per_user: usize,
) -> u64 {
    let mut conn = Publisher::connect(target, args).await;
    let items: Vec<String> = (0..users)
        .flat_map(|k| (0..per_user).map(move |i| format!(r#"{{"user":"stalled-{k}","data":{i}}}"#)))
        .collect();
    for chunk in items.chunks(10_000) {
        conn.post(&format!("[{}]", chunk.join(","))).await;
    }
    items.len() as u64
}

/// Produces events straight into Kafka: user events keyed by user (herald
/// maps the key to the user), broadcasts unkeyed and all to partition 0 so
/// their order holds. Up to 10,000 unacknowledged at once; only
/// acknowledged events count as published.
pub(crate) async fn publish_kafka(plan: Plan, args: Args, producer: FutureProducer) -> Published {
    let mut events = Events::new(plan, &args);
    let mut in_flight = FuturesUnordered::new();
    let (mut published, mut expected, mut failed) = (0u64, 0u64, 0u64);
    let mut settle = |r: Option<(bool, u64)>| match r {
        Some((true, e)) => {
            published += 1;
            expected += e;
        }
        _ => failed += 1,
    };
    while events.next_due().await {
        let (user, data) = events.next();
        let key = user.map(|u| format!("load-{u}"));
        let mut record = FutureRecord::<String, String>::to(&args.kafka_topic).payload(&data);
        record = match &key {
            Some(k) => record.key(k),
            None => record.partition(0),
        };
        let streams = user.map_or(0, |u| args.streams_of(u));
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    in_flight
                        .push(async move { (delivery.await.is_ok_and(|r| r.is_ok()), streams) });
                    break;
                }
                Err((_, r)) => {
                    // Local queue full: let deliveries drain, then retry.
                    record = r;
                    match in_flight.next().await {
                        Some(done) => settle(Some(done)),
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
            }
        }
        while in_flight.len() >= 10_000 {
            let done = in_flight.next().await;
            settle(done);
        }
    }
    while let Some(done) = in_flight.next().await {
        settle(Some(done));
    }
    if failed > 0 {
        eprintln!("sse-load: {failed} events were not acknowledged by Kafka");
    }
    Published {
        events: published,
        expected,
        latency: latency_histogram(),
    }
}
