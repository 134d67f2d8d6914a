//! A stand-in schema registry for hermetic tests: answers
//! `GET /schemas/ids/{id}` from a map, counts requests, and can be taken
//! down (connections refused answers: 503) to test an outage. The e2e tests
//! use real serializers against a registry process instead.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

#[derive(Clone)]
pub struct Registry {
    pub url: String,
    schemas: Arc<Mutex<HashMap<u32, String>>>,
    pub up: Arc<AtomicBool>,
    pub requests: Arc<AtomicUsize>,
    /// The last `authorization` header seen.
    pub auth: Arc<Mutex<Option<String>>>,
}

impl Registry {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let r = Registry {
            url,
            schemas: Default::default(),
            up: Arc::new(AtomicBool::new(true)),
            requests: Default::default(),
            auth: Default::default(),
        };
        let me = r.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("authorization:") {
                        let v = h[h.len() - v.len()..].trim().to_owned();
                        *me.auth.lock() = Some(v);
                    }
                }
                me.requests.fetch_add(1, Ordering::SeqCst);
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                let (status, body) = if !me.up.load(Ordering::SeqCst) {
                    ("503 Service Unavailable", "{}".to_owned())
                } else {
                    match path
                        .strip_prefix("/schemas/ids/")
                        .and_then(|id| id.parse::<u32>().ok())
                        .and_then(|id| me.schemas.lock().get(&id).cloned())
                    {
                        Some(body) => ("200 OK", body),
                        None => ("404 Not Found", r#"{"error_code":40403}"#.to_owned()),
                    }
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        r
    }

    /// Registers `schema` (its JSON text) under `id` as `kind` (AVRO, ...).
    pub fn add(&self, id: u32, kind: &str, schema: &str) {
        let body = serde_json::json!({"schema": schema, "schemaType": kind}).to_string();
        self.schemas.lock().insert(id, body);
    }
}
