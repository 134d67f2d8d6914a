//! herald's own HTTP/2 server against a client that breaks the protocol or
//! its limits, spoken frame by frame over h2c: every case ends with the
//! error code RFC 9113 names (GOAWAY for the connection, RST_STREAM for a
//! stream) or a clear HTTP answer, costs the node a bounded amount, and the
//! server keeps serving.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use serde_json::json;
use support::TestServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const FRAME_SIZE_ERROR: u32 = 0x6;
const COMPRESSION_ERROR: u32 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const CANCEL: u32 = 0x8;

fn frame(ty: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[ty, flags]);
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A request head, HPACK-encoded (the client's own encoder and table).
fn head(
    enc: &mut loona_hpack::Encoder<'_>,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let mut fields: Vec<(&[u8], &[u8])> = vec![
        (b":method", method.as_bytes()),
        (b":scheme", b"http"),
        (b":authority", b"localhost"),
        (b":path", path.as_bytes()),
    ];
    fields.extend(extra.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    enc.encode(fields)
}

struct Frame {
    ty: u8,
    flags: u8,
    id: u32,
    payload: Vec<u8>,
}

/// A raw h2c client.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
    enc: loona_hpack::Encoder<'static>,
}

impl Raw {
    /// Connected, preface and an empty SETTINGS sent.
    async fn open(s: &TestServer) -> Self {
        Self::open_with(s, &[]).await
    }

    async fn open_with(s: &TestServer, settings: &[(u16, u32)]) -> Self {
        let mut tcp = TcpStream::connect(s.addr).await.unwrap();
        let mut p = Vec::new();
        for (k, v) in settings {
            p.extend_from_slice(&k.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        let mut first = PREFACE.to_vec();
        first.extend(frame(SETTINGS, 0, 0, &p));
        tcp.write_all(&first).await.unwrap();
        Self {
            tcp,
            buf: Vec::new(),
            enc: loona_hpack::Encoder::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The server may have closed already (that is what some tests wait for).
        let _ = self.tcp.write_all(bytes).await;
    }

    async fn request(
        &mut self,
        id: u32,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        end: bool,
    ) {
        let block = head(&mut self.enc, method, path, extra);
        let flags = END_HEADERS | if end { END_STREAM } else { 0 };
        self.send(&frame(HEADERS, flags, id, &block)).await;
    }

    /// The next frame, `None` once the server closed.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    return Some(Frame {
                        ty: f[3],
                        flags: f[4],
                        id: u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff,
                        payload: f[9..].to_vec(),
                    });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), self.tcp.read(&mut chunk))
                .await
                .expect("the server answered within 10 s")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Frames until GOAWAY (its code returned) or the close (`None`).
    async fn goaway(&mut self) -> Option<u32> {
        while let Some(f) = self.next().await {
            if f.ty == GOAWAY {
                return Some(u32::from_be_bytes(f.payload[4..8].try_into().unwrap()));
            }
        }
        None
    }

    /// Frames until one of `ty` on stream `id`.
    async fn until(&mut self, ty: u8, id: u32) -> Frame {
        loop {
            let f = self.next().await.expect("the connection stayed open");
            if f.ty == ty && f.id == id {
                return f;
            }
        }
    }

    /// A response's status and body (DATA until END_STREAM).
    async fn response(&mut self, id: u32) -> (u16, String) {
        let mut dec = loona_hpack::Decoder::new();
        let h = self.until(HEADERS, id).await;
        let mut status = 0;
        dec.decode_with_cb(&h.payload, |n, v| {
            if &*n == b":status" {
                status = std::str::from_utf8(&v).unwrap().parse().unwrap();
            }
        })
        .unwrap();
        let mut body = Vec::new();
        if h.flags & END_STREAM == 0 {
            loop {
                let d = self.until(DATA, id).await;
                body.extend_from_slice(&d.payload);
                if d.flags & END_STREAM != 0 {
                    break;
                }
            }
        }
        (status, String::from_utf8(body).unwrap())
    }
}

/// After a hostile connection: the node still serves a stream.
async fn still_serves(s: &TestServer) {
    let mut w = s.subscribe("witness").await;
    s.publish_ok(json!({"user": "witness", "data": "ok"})).await;
    assert_eq!(w.next().await.data, r#""ok""#);
}

/// Each protocol violation ends the connection with its error code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_end_the_connection_with_their_code() {
    let s = TestServer::start().await;
    let ping = frame(PING, 0, 0, &[0; 8]);
    let window = |id: u32, n: u32| frame(WINDOW_UPDATE, 0, id, &n.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        (
            "DATA on an idle stream",
            frame(DATA, 0, 1, b"x"),
            PROTOCOL_ERROR,
        ),
        ("DATA on stream 0", frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),
        (
            "HEADERS on an even stream",
            frame(HEADERS, END_HEADERS, 2, &[0x82]),
            PROTOCOL_ERROR,
        ),
        (
            "PUSH_PROMISE from a client",
            frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2]),
            PROTOCOL_ERROR,
        ),
        (
            "CONTINUATION without HEADERS",
            frame(CONTINUATION, END_HEADERS, 1, &[0x82]),
            PROTOCOL_ERROR,
        ),
        (
            "PING of 7 bytes",
            frame(PING, 0, 0, &[0; 7]),
            FRAME_SIZE_ERROR,
        ),
        (
            "PING on a stream",
            frame(PING, 0, 1, &[0; 8]),
            PROTOCOL_ERROR,
        ),
        (
            "SETTINGS of 5 bytes",
            frame(SETTINGS, 0, 0, &[0; 5]),
            FRAME_SIZE_ERROR,
        ),
        (
            "SETTINGS_ENABLE_PUSH 2",
            frame(SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 2]),
            PROTOCOL_ERROR,
        ),
        (
            "SETTINGS_INITIAL_WINDOW_SIZE 2^31",
            frame(SETTINGS, 0, 0, &[0, 4, 0x80, 0, 0, 0]),
            FLOW_CONTROL_ERROR,
        ),
        (
            "SETTINGS_MAX_FRAME_SIZE 100",
            frame(SETTINGS, 0, 0, &[0, 5, 0, 0, 0, 100]),
            PROTOCOL_ERROR,
        ),
        ("WINDOW_UPDATE of 0", window(0, 0), PROTOCOL_ERROR),
        (
            "the connection window past 2^31-1",
            [window(0, 0x7fff_ffff), window(0, 0x7fff_ffff)].concat(),
            FLOW_CONTROL_ERROR,
        ),
        (
            "a frame over 16 KiB",
            frame(0xfa, 0, 0, &[0; 16_385]),
            FRAME_SIZE_ERROR,
        ),
        (
            "a header block that does not decode",
            frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                1,
                &[0xff, 0xff, 0xff, 0xff, 0x0f],
            ),
            COMPRESSION_ERROR,
        ),
        (
            "RST_STREAM on an idle stream",
            frame(RST_STREAM, 0, 9, &[0, 0, 0, 8]),
            PROTOCOL_ERROR,
        ),
        (
            "GOAWAY of 4 bytes",
            frame(GOAWAY, 0, 0, &[0, 0, 3, 0xe8]),
            FRAME_SIZE_ERROR,
        ),
        (
            "a header block interrupted by PING",
            [frame(HEADERS, 0, 1, &[0x82]), ping.clone()].concat(),
            PROTOCOL_ERROR,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut c = Raw::open(&s).await;
        c.send(&bytes).await;
        assert_eq!(c.goaway().await, Some(code), "{what}");
        assert!(c.next().await.is_none(), "{what}: closed after GOAWAY");
    }
    // A first frame that is not SETTINGS.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(&[PREFACE, &ping].concat()).await.unwrap();
    let mut c = Raw {
        tcp,
        buf: Vec::new(),
        enc: loona_hpack::Encoder::new(),
    };
    assert_eq!(
        c.goaway().await,
        Some(PROTOCOL_ERROR),
        "PING before SETTINGS"
    );
    still_serves(&s).await;
}

/// A CONTINUATION flood is cut at `--max-header-bytes`; PING, SETTINGS and
/// reset floods at the idle-frame budget: each with ENHANCE_YOUR_CALM,
/// after a bounded number of frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_cut_off() {
    let s = TestServer::with(|c| c.server.max_header_bytes = 8192).await;

    // CONTINUATION: 1 KiB at a time, never ending the block.
    let mut c = Raw::open(&s).await;
    c.send(&frame(HEADERS, 0, 1, &[0x82])).await;
    for _ in 0..64 {
        c.send(&frame(CONTINUATION, 0, 1, &[0x40; 1024])).await;
    }
    assert_eq!(
        c.goaway().await,
        Some(ENHANCE_YOUR_CALM),
        "CONTINUATION flood"
    );

    // PING: answered up to the budget, then the connection ends.
    let mut c = Raw::open(&s).await;
    let pings: Vec<u8> = (0..1000u64)
        .flat_map(|i| frame(PING, 0, 0, &i.to_be_bytes()))
        .collect();
    c.send(&pings).await;
    let mut acks = 0;
    let code = loop {
        let f = c.next().await.expect("GOAWAY before the close");
        match f.ty {
            PING => acks += 1,
            GOAWAY => break u32::from_be_bytes(f.payload[4..8].try_into().unwrap()),
            _ => {}
        }
    };
    assert_eq!(code, ENHANCE_YOUR_CALM, "PING flood");
    assert_eq!(acks, 200, "PINGs answered");

    // WINDOW_UPDATE with nothing received.
    let mut c = Raw::open(&s).await;
    let updates: Vec<u8> = (0..1000)
        .flat_map(|_| frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()))
        .collect();
    c.send(&updates).await;
    assert_eq!(
        c.goaway().await,
        Some(ENHANCE_YOUR_CALM),
        "WINDOW_UPDATE flood"
    );

    // SETTINGS, re-sent over and over.
    let mut c = Raw::open(&s).await;
    let settings: Vec<u8> = (0..1000).flat_map(|_| frame(SETTINGS, 0, 0, &[])).collect();
    c.send(&settings).await;
    assert_eq!(c.goaway().await, Some(ENHANCE_YOUR_CALM), "SETTINGS flood");

    // Rapid reset: streams opened and reset at once. Each costs an
    // admission; the connection ends within the budget, and no stream is
    // left registered.
    let mut c = Raw::open(&s).await;
    let mut id = 1;
    let code = loop {
        assert!(id < 2 * 1000, "rapid reset never cut off");
        c.request(id, "GET", "/api/sse/subscribe/rapid", &[], true)
            .await;
        c.send(&frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()))
            .await;
        id += 2;
        if id % 100 == 1 {
            // Look for a GOAWAY now and then without blocking on it.
            let mut probe = [0u8; 1];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(1), c.tcp.peek(&mut probe)).await
            {
                break None;
            }
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(1), c.tcp.peek(&mut probe)).await
            {
                if let Some(code) = c.goaway_if_any().await {
                    break Some(code);
                }
            }
        }
    };
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "rapid reset");
    assert!(id / 2 <= 400, "cut off after {} streams", id / 2);
    let rapid = herald::event::Name::new("rapid").unwrap();
    support::eventually(
        || s.fanout.registry().user_streams(&rapid) == 0,
        "the reset streams unregistered",
    )
    .await;
    still_serves(&s).await;
}

impl Raw {
    /// Reads what is there; the GOAWAY code if one came.
    async fn goaway_if_any(&mut self) -> Option<u32> {
        loop {
            let more = tokio::time::timeout(Duration::from_millis(50), self.next()).await;
            match more {
                Ok(Some(f)) if f.ty == GOAWAY => {
                    return Some(u32::from_be_bytes(f.payload[4..8].try_into().unwrap()))
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

/// HPACK: a header list over `--max-header-bytes` once decoded (a table
/// entry referenced over and over) is answered 431 and costs no more than
/// its compressed size; the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoded_header_list_over_the_limit_is_answered_431() {
    let s = TestServer::with(|c| c.server.max_header_bytes = 8192).await;
    let mut c = Raw::open(&s).await;
    // Stream 1 puts a 3 KB header into the dynamic table...
    let big = "b".repeat(3000);
    c.request(1, "GET", "/healthz", &[("x-big", &big)], true)
        .await;
    assert_eq!(c.response(1).await.0, 200);
    // ...stream 3 references it 2,000 times (6 MB decoded from ~2 KB).
    let mut block = head(&mut c.enc, "GET", "/healthz", &[]);
    let index = 62u8; // the newest dynamic entry
    block.extend(std::iter::repeat_n(0x80 | index, 2000));
    c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 3, &block))
        .await;
    let (status, body) = c.response(3).await;
    assert_eq!(status, 431, "{body}");
    assert!(body.contains("--max-header-bytes"), "{body}");
    // The connection is still good.
    c.request(5, "GET", "/healthz", &[], true).await;
    assert_eq!(c.response(5).await.0, 200);
}

/// Request bodies over h2: in pieces, within the windows; too large is
/// 413; a malformed request is reset, not answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_and_malformed_requests() {
    let s = TestServer::with(|c| c.publish.max_body = 100_000).await;
    let mut w = s.subscribe("body").await;
    let mut c = Raw::open(&s).await;
    let ct = [("content-type", "application/json")];
    c.request(1, "POST", "/api/publish", &ct, false).await;
    let body = json!({"user": "body", "data": "p".repeat(90_000)}).to_string();
    // 90 KB: past the 64 KiB initial windows, so herald must give them back.
    for piece in body.as_bytes().chunks(10_000) {
        c.send(&frame(DATA, 0, 1, piece)).await;
    }
    c.send(&frame(DATA, END_STREAM, 1, &[])).await;
    let (status, reply) = c.response(1).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(w.next().await.data.len(), 90_002);

    // Over the limit: 413, and the stream is closed (RST_STREAM NO_ERROR
    // tells the client to stop sending).
    c.request(3, "POST", "/api/publish", &ct, false).await;
    let big = vec![b' '; 16_000];
    let mut sent = 0;
    while sent < 120_000 {
        c.send(&frame(DATA, 0, 3, &big)).await;
        sent += big.len();
        if sent >= 64_000 {
            break;
        }
    }
    // The window is given back only while the router reads; it stops at
    // the limit.
    c.send(
        &[
            frame(DATA, 0, 3, &big),
            frame(DATA, 0, 3, &big),
            frame(DATA, END_STREAM, 3, &big),
        ]
        .concat(),
    )
    .await;
    let (status, reply) = c.response(3).await;
    assert_eq!(status, 413, "{reply}");

    // Malformed: uppercase header name, a connection header, no :path.
    for (id, extra) in [(5u32, ("X-Upper", "1")), (7, ("connection", "close"))] {
        c.request(id, "GET", "/healthz", &[extra], true).await;
        let f = c.until(RST_STREAM, id).await;
        assert_eq!(
            u32::from_be_bytes(f.payload[..4].try_into().unwrap()),
            PROTOCOL_ERROR
        );
    }
    let no_path = c
        .enc
        .encode(vec![(&b":method"[..], &b"GET"[..]), (b":scheme", b"http")]);
    c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 9, &no_path))
        .await;
    let f = c.until(RST_STREAM, 9).await;
    assert_eq!(
        u32::from_be_bytes(f.payload[..4].try_into().unwrap()),
        PROTOCOL_ERROR
    );
    // PRIORITY on the way is fine; the connection serves on.
    c.send(&frame(PRIORITY, 0, 11, &[0, 0, 0, 0, 16])).await;
    c.request(11, "GET", "/healthz", &[], true).await;
    assert_eq!(c.response(11).await.0, 200);
}

/// A client that opens a stream and never gives herald window: the
/// stream's frames wait (at most one batch held by the connection), its
/// queue fills, the stream is reset as slow and unregistered; the
/// connection and its other streams go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_window_is_cut_off_alone() {
    let s = TestServer::with(|c| {
        c.streams.queue.max_frames = 16;
        c.streams.queue.max_bytes = 1 << 20;
    })
    .await;
    // Window 0 for every stream.
    let mut c = Raw::open_with(&s, &[(0x4, 0)]).await;
    c.request(1, "GET", "/api/sse/subscribe/stuck", &[], true)
        .await;
    c.request(3, "GET", "/api/sse/subscribe/fine", &[], true)
        .await;
    c.until(HEADERS, 1).await;
    c.until(HEADERS, 3).await;
    let pad = "s".repeat(4096);
    // Whether the stuck stream's queue was closed as slow.
    struct Closed(bool);
    impl herald::registry::RouteSink for Closed {
        fn push(&mut self, sub: &std::sync::Arc<herald::registry::Subscriber>) {
            self.0 |= sub.queue.closed() == Some(herald::stream::CloseReason::Slow);
        }
    }
    let stuck = herald::event::Name::new("stuck").unwrap();
    let overflowed = || {
        let mut c = Closed(false);
        s.fanout
            .registry()
            .route(&herald::event::Target::User(stuck.clone()), &mut c);
        c.0
    };
    let mut n = 0;
    while !overflowed() {
        assert!(n < 500, "the stream without window never overflowed");
        s.publish_ok(json!({"user": "stuck", "data": pad})).await;
        n += 1;
    }
    // The next time the connection wakes (here: window for the connection,
    // none for the stream), the held stream is reset and unregistered.
    c.send(&frame(WINDOW_UPDATE, 0, 0, &1u32.to_be_bytes()))
        .await;
    let f = c.until(RST_STREAM, 1).await;
    assert_eq!(
        u32::from_be_bytes(f.payload[..4].try_into().unwrap()),
        CANCEL
    );
    support::eventually(
        || s.fanout.registry().user_streams(&stuck) == 0,
        "the reset stream unregistered",
    )
    .await;
    // Stream 3 gets its event once the client gives it window.
    c.send(&frame(WINDOW_UPDATE, 0, 3, &100_000u32.to_be_bytes()))
        .await;
    s.publish_ok(json!({"user": "fine", "data": "here"})).await;
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("data: \"here\"") {
        got.extend(c.until(DATA, 3).await.payload);
    }
}

/// On drain, a connection hyper serves over HTTP/2 (`--own-http2 false`)
/// with no request open goes through hyper's graceful shutdown (so frames it
/// still had queued are written), but a client that never answers its
/// GOAWAY ping cannot hold the drain: the connection is let go within the
/// idle bound (1 s), far inside the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_idle_h2_client_does_not_hold_the_drain() {
    let s = TestServer::on_with(support::Transport::H2c, |c| {
        c.shutdown.deadline = Duration::from_secs(10);
    })
    .await;
    let mut raw = Raw::open(&s).await;
    raw.request(1, "GET", "/healthz", &[], true).await;
    assert_eq!(raw.response(1).await.0, 200);
    // From here on the client reads but never writes (no PING ack).
    let reader = tokio::spawn(async move {
        let code = raw.goaway().await;
        while raw.next().await.is_some() {}
        code
    });
    let took = s.shutdown().await;
    assert!(took < Duration::from_millis(2500), "drain took {took:?}");
    assert_eq!(reader.await.unwrap(), Some(0), "a GOAWAY with NO_ERROR");
}

/// A complete answer the client gives no window for (SETTINGS_INITIAL_WINDOW_SIZE
/// 0, no WINDOW_UPDATE) waits at most `--write-timeout`, as a write that
/// does not move would: then its stream is reset (CANCEL), counted as a
/// write timeout, and the connection, no longer holding anything, goes
/// back to its idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_held_for_want_of_window_is_reset_after_the_write_timeout() {
    let s = TestServer::with(|c| {
        c.server.write_timeout = Some(Duration::from_millis(600));
        c.server.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let before = support::metric(
        &s.metrics(),
        "herald_limited_total",
        Some("reason=\"write_timeout\""),
    );
    let mut c = Raw::open_with(&s, &[(0x4, 0)]).await;
    let asked = std::time::Instant::now();
    c.request(1, "GET", "/healthz", &[], true).await;
    let h = c.until(HEADERS, 1).await;
    assert_eq!(h.flags & END_STREAM, 0, "a body follows");
    let f = c.until(RST_STREAM, 1).await;
    let waited = asked.elapsed();
    assert_eq!(
        u32::from_be_bytes(f.payload[..4].try_into().unwrap()),
        CANCEL
    );
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(5),
        "reset after {waited:?}"
    );
    assert_eq!(
        support::metric(
            &s.metrics(),
            "herald_limited_total",
            Some("reason=\"write_timeout\""),
        ),
        before + 1.0
    );
    // The connection still serves: a PING is answered.
    c.send(&frame(PING, 0, 0, b"still up")).await;
    let pong = c.until(PING, 0).await;
    assert_eq!(&pong.payload, b"still up");
    still_serves(&s).await;
}

/// A client's GOAWAY ends the connection: a request sent after it (in the
/// same packet) is not served, so nothing is left waiting on a connection
/// herald no longer reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_after_a_clients_goaway_is_served() {
    let s = TestServer::start().await;
    let mut c = Raw::open(&s).await;
    let block = head(&mut c.enc, "GET", "/healthz", &[]);
    let bytes = [
        frame(GOAWAY, 0, 0, &[0; 8]),
        frame(HEADERS, END_HEADERS | END_STREAM, 1, &block),
    ]
    .concat();
    c.send(&bytes).await;
    let mut answered = false;
    while let Some(f) = c.next().await {
        answered |= f.ty == HEADERS;
    }
    assert!(
        !answered,
        "a request after the client's GOAWAY was answered"
    );
    still_serves(&s).await;
}
