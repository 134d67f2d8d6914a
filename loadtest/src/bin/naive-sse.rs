//! `naive-sse`: the baseline herald is measured against, built the way SSE
//! tutorials build it: axum's `Sse` response over `tokio::sync::broadcast`
//! channels, one for everyone and one per user (a map of senders, so an
//! event for one user wakes that user's streams only), every subscriber
//! formatting its own copy (`Event::default().data(...)`). Same routes as
//! herald, so the same load generator drives both:
//!   GET  /api/sse/subscribe/{user}   (sends one comment first, like herald's
//!                                     preamble, so the generator sees it open)
//!   POST /api/publish                {"user"|"broadcast", "data"} or an array
//!   GET  /stats                      `connections N ingested N delivered N
//!                                    ready 0|1`,
//!                                    for the measuring scripts
//! Usage: `naive-sse [ADDR] [BOOTSTRAP TOPIC]` (default 127.0.0.1:8081;
//! loopback only). With a broker, it also consumes TOPIC from its end the
//! way a tutorial's Kafka-to-SSE gateway does (rdkafka's `StreamConsumer`,
//! one record at a time): the record's key is the user, its value the
//! data (UTF-8 text, passed on as it came, as herald's default rule does),
//! sent to that user's channel like a publish. `ready` is 1 once it
//! reads every partition from its end (records produced after that all
//! arrive).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{stream, Stream, StreamExt};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

/// One published event, shared by every subscriber's receiver.
struct Msg {
    id: u64,
    data: Data,
}

/// A publish's JSON value, re-encoded by each subscriber, or a Kafka
/// record's value, passed on as it came (UTF-8 text).
enum Data {
    Json(serde_json::Value),
    Text(Box<str>),
}

impl Data {
    fn text(&self) -> String {
        match self {
            Data::Json(v) => v.to_string(),
            Data::Text(t) => t.to_string(),
        }
    }
}

#[derive(Clone)]
struct App {
    /// Broadcasts.
    tx: broadcast::Sender<Arc<Msg>>,
    /// A channel per user with a stream open.
    users: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<Msg>>>>>,
    seq: Arc<AtomicU64>,
    stats: Arc<Stats>,
}

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    ingested: AtomicU64,
    /// Events handed to a stream's response (formatted, about to be written).
    delivered: AtomicU64,
    ready: AtomicBool,
}

/// Counts a stream open while it lives.
struct Open(Arc<Stats>);

impl Open {
    fn new(stats: &Arc<Stats>) -> Self {
        stats.connections.fetch_add(1, Ordering::Relaxed);
        Self(stats.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl App {
    /// Sends `msg` to `user`'s streams, if any are open.
    fn to_user(&self, user: &str, msg: Arc<Msg>) {
        let mut users = self.users.lock();
        if let Some(tx) = users.get(user) {
            if tx.send(msg).is_err() {
                // Its last stream has gone.
                users.remove(user);
            }
        }
    }
}

/// A receiver's messages as SSE events, formatted per subscriber as
/// tutorials do (a lagging receiver skips what it missed).
fn events(
    rx: broadcast::Receiver<Arc<Msg>>,
    stats: Arc<Stats>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    BroadcastStream::new(rx)
        .filter_map(|m| std::future::ready(m.ok()))
        .map(move |m| {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
            Ok(Event::default().id(m.id.to_string()).data(m.data.text()))
        })
}

async fn subscribe(
    Path(user): Path<String>,
    State(app): State<App>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let everyone = app.tx.subscribe();
    let mine = app
        .users
        .lock()
        .entry(user)
        .or_insert_with(|| broadcast::channel(1024).0)
        .subscribe();
    let open = Open::new(&app.stats);
    let events = stream::select(
        events(everyone, app.stats.clone()),
        events(mine, app.stats.clone()),
    )
    .map(move |e| {
        let _open = &open;
        e
    });
    let hello = stream::once(async { Ok(Event::default().comment("naive")) });
    Sse::new(hello.chain(events)).keep_alive(KeepAlive::new().interval(Duration::from_secs(3600)))
}

async fn publish(
    State(app): State<App>,
    Json(body): Json<serde_json::Value>,
) -> Json<serde_json::Value> {
    let items = match body {
        serde_json::Value::Array(v) => v,
        one => vec![one],
    };
    let mut ids = Vec::new();
    for item in items {
        let id = app.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let data = item.get("data").cloned().unwrap_or(serde_json::Value::Null);
        let msg = Arc::new(Msg {
            id,
            data: Data::Json(data),
        });
        match item.get("user").and_then(|u| u.as_str()) {
            Some(user) => app.to_user(user, msg),
            None => {
                let _ = app.tx.send(msg);
            }
        }
        ids.push(id.to_string());
    }
    Json(serde_json::json!({ "id": ids.first(), "ids": ids }))
}

async fn stats(State(app): State<App>) -> String {
    let s = &app.stats;
    format!(
        "connections {} ingested {} delivered {} ready {}\n",
        s.connections.load(Ordering::Relaxed),
        s.ingested.load(Ordering::Relaxed),
        s.delivered.load(Ordering::Relaxed),
        u8::from(s.ready.load(Ordering::Relaxed)),
    )
}

/// Consumes `topic` from its end, one record at a time: key = user, value
/// = data. Starts at each partition's high watermark, read before
/// the first fetch, so `ready` means every record produced from then on
/// arrives (a group subscription resolves "latest" later, at an unknown
/// time).
async fn consume(app: App, bootstrap: String, topic: String) {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "naive-sse")
        .create()
        .expect("consumer");
    let wait = Duration::from_secs(10);
    let meta = consumer
        .fetch_metadata(Some(&topic), wait)
        .expect("metadata");
    let mut start = TopicPartitionList::new();
    for t in meta.topics() {
        for p in t.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(&topic, p.id(), wait)
                .expect("watermarks");
            start
                .add_partition_offset(&topic, p.id(), Offset::Offset(high))
                .expect("offset");
        }
    }
    consumer.assign(&start).expect("assign");
    app.stats.ready.store(true, Ordering::Relaxed);
    loop {
        let Ok(m) = consumer.recv().await else {
            continue;
        };
        let (Some(Ok(user)), Some(Ok(text))) = (m.key_view::<str>(), m.payload_view::<str>())
        else {
            continue;
        };
        let id = app.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let data = Data::Text(text.into());
        app.to_user(user, Arc::new(Msg { id, data }));
        app.stats.ingested.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8081".into())
        .parse()
        .expect("ADDR");
    assert!(addr.ip().is_loopback(), "naive-sse binds loopback only");
    let (tx, _) = broadcast::channel(1024);
    let app = App {
        tx,
        users: Arc::default(),
        seq: Arc::new(AtomicU64::new(0)),
        stats: Arc::default(),
    };
    if let (Some(bootstrap), Some(topic)) = (args.next(), args.next()) {
        tokio::spawn(consume(app.clone(), bootstrap, topic));
    }
    let router = Router::new()
        .route("/api/sse/subscribe/{user}", get(subscribe))
        .route("/api/publish", post(publish))
        .route("/stats", get(stats))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    axum::serve(listener, router).await.expect("serve");
}
