//! `naive-sse`: the baseline herald is measured against, built the way SSE
//! tutorials build it: axum's `Sse` response over `tokio::sync::broadcast`
//! channels, one for everyone and one per user (a map of senders, so an
//! event for one user wakes that user's streams only), every subscriber
//! formatting its own copy (`Event::default().data(...)`). Same routes as
//! herald, so the same load generator drives both:
//!   GET  /api/sse/subscribe/{user}   (sends one comment first, like herald's
//!                                     preamble, so the generator sees it open)
//!   POST /api/publish                {"user"|"broadcast", "data"} or an array
//! Usage: `naive-sse [ADDR]` (default 127.0.0.1:8081; loopback only)

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{stream, Stream, StreamExt};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

/// One published event, shared by every subscriber's receiver.
struct Msg {
    id: u64,
    data: serde_json::Value,
}

#[derive(Clone)]
struct App {
    /// Broadcasts.
    tx: broadcast::Sender<Arc<Msg>>,
    /// A channel per user with a stream open.
    users: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<Msg>>>>>,
    seq: Arc<AtomicU64>,
}

/// A receiver's messages as SSE events, formatted per subscriber as
/// tutorials do (a lagging receiver skips what it missed).
fn events(
    rx: broadcast::Receiver<Arc<Msg>>,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    BroadcastStream::new(rx).filter_map(|m| async move {
        m.ok().map(|m| {
            Ok(Event::default()
                .id(m.id.to_string())
                .data(m.data.to_string()))
        })
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
    let events = stream::select(events(everyone), events(mine));
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
        let msg = Arc::new(Msg { id, data });
        match item.get("user").and_then(|u| u.as_str()) {
            Some(user) => {
                let mut users = app.users.lock();
                if let Some(tx) = users.get(user) {
                    if tx.send(msg).is_err() {
                        // Its last stream has gone.
                        users.remove(user);
                    }
                }
            }
            None => {
                let _ = app.tx.send(msg);
            }
        }
        ids.push(id.to_string());
    }
    Json(serde_json::json!({ "id": ids.first(), "ids": ids }))
}

#[tokio::main]
async fn main() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8081".into())
        .parse()
        .expect("ADDR");
    assert!(addr.ip().is_loopback(), "naive-sse binds loopback only");
    let (tx, _) = broadcast::channel(1024);
    let app = App {
        tx,
        users: Arc::default(),
        seq: Arc::new(AtomicU64::new(0)),
    };
    let router = Router::new()
        .route("/api/sse/subscribe/{user}", get(subscribe))
        .route("/api/publish", post(publish))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    axum::serve(listener, router).await.expect("serve");
}
