//! herald's own HTTP/2 server (RFC 9113): h2 over TLS (ALPN) and h2c by
//! prior knowledge, every request on the connection, SSE streams
//! multiplexed by one task (`--own-http2`, on by default).
//!
//! Why (measured, see BENCHMARKS.md): hyper's h2 holds ~28 KiB per
//! connection that no setting removes (a 16 KiB write and an 8 KiB read
//! buffer allocated at the handshake, a 4 KiB HPACK table) plus a task and
//! its state per stream. An SSE connection is mostly idle: here a connection
//! holds its HPACK decoder (the entries the client actually indexed), a few
//! hundred bytes of state, and per stream a slot beside the stream core's
//! [`Stream`]. Read and write buffers exist only while bytes are in them.
//!
//! It is a transport only, like `h1`: every request goes through the one
//! router (`http::handle`, so subscribe admission, publish and CORS are the
//! ones every transport uses) and every stream through the stream core.
//!
//! What it does:
//! - Sends its SETTINGS first (at most [`MAX_STREAMS`] concurrent streams,
//!   the header list limit `--max-header-bytes`), checks the client's
//!   preface and that its first frame is SETTINGS, acknowledges SETTINGS
//!   and PING, keeps both flow-control windows in each direction.
//! - A request (HEADERS, CONTINUATION) is decoded with `loona-hpack` into
//!   an `http::Request` whose body is the stream's DATA ([`DataBody`]);
//!   the router's future is polled by the connection task itself, and its
//!   response written as HEADERS and DATA. A streaming response's frames
//!   come from [`Stream::poll_next`], as DATA frames within the client's
//!   windows; a stream the client stops reading stops being polled, so its
//!   queue in the core fills and the core's slow-client rule applies.
//! - One task per connection, one `poll_fn` loop: write what is queued;
//!   read and handle frames while less than [`WRITE_HIGH`] is queued (a
//!   client that sends PINGs and does not read stops being read); poll the
//!   router futures; then the streams.
//! - Errors: a connection error sends GOAWAY with its code and closes; a
//!   stream error resets the stream (RST_STREAM). Each limit says which:
//!   a header block over `--max-header-bytes` compressed (CONTINUATION
//!   floods) ends the connection (ENHANCE_YOUR_CALM), a decoded header list
//!   over it is answered 431; frames that do nothing for the server (PING,
//!   SETTINGS, PRIORITY, unknown types, empty DATA, the client's resets:
//!   rapid reset; WINDOW_UPDATEs beyond two per DATA frame sent) are
//!   limited to [`IDLE_FRAMES`] per [`IDLE_FRAMES_PER`] (ENHANCE_YOUR_CALM); request bodies take the stream's window only while
//!   the router reads them, at most [`BODY_UNREAD`] ahead of it.
//! - Timeouts: no request by the head deadline, or no stream open for
//!   `--idle-timeout`, closes the connection (GOAWAY); writes go through
//!   `TimedIo` (`--write-timeout`), and a complete answer the client gives
//!   no window for is reset after it too (an event stream held so is the
//!   core's to close: its queue stalls). The client's GOAWAY ends the
//!   connection: nothing it sent after is served. A dead peer is found by
//!   the heartbeat's writes, as on HTTP/1.1. On drain: GOAWAY, no new
//!   streams, and the connection closes once its streams have ended (the
//!   core ends SSE streams); a connection with no stream open closes at
//!   once.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::abort::Abort;
use crate::guard::Limit;
use crate::stream::{io_reason, CloseReason, Next, Stream};
use crate::timed_io::TimedIo;

use super::{Api, Body, RequestBody, Routes};

/// The client connection preface.
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Most streams open at once on a connection (SETTINGS_MAX_CONCURRENT_STREAMS).
const MAX_STREAMS: usize = 100;
/// Largest frame payload herald receives (the protocol's default; herald
/// does not raise SETTINGS_MAX_FRAME_SIZE).
const MAX_FRAME: usize = 16_384;
/// The protocol's initial window, herald's receive window on the
/// connection and on each stream.
const WINDOW: i64 = 65_535;
/// The largest window the protocol allows.
const WINDOW_MAX: i64 = (1 << 31) - 1;
/// Reading stops while this much is queued for the client.
const WRITE_HIGH: usize = 64 * 1024;
/// Frames that do nothing for the server allowed per [`IDLE_FRAMES_PER`].
const IDLE_FRAMES: u32 = 200;
const IDLE_FRAMES_PER: Duration = Duration::from_secs(10);
/// Request body bytes received and not yet read by the router, per stream:
/// the stream's window is given back only below this.
const BODY_UNREAD: usize = 64 * 1024;
/// Most bytes one read takes.
const READ_CHUNK: usize = 8192;
/// Rounds of the connection loop before it yields to other tasks.
const ROUNDS: usize = 32;
/// The HPACK dynamic table herald's decoder allows (the protocol default).
const HPACK_TABLE: usize = 4096;

/// Frame types.
mod kind {
    pub(super) const DATA: u8 = 0x0;
    pub(super) const HEADERS: u8 = 0x1;
    pub(super) const PRIORITY: u8 = 0x2;
    pub(super) const RST_STREAM: u8 = 0x3;
    pub(super) const SETTINGS: u8 = 0x4;
    pub(super) const PUSH_PROMISE: u8 = 0x5;
    pub(super) const PING: u8 = 0x6;
    pub(super) const GOAWAY: u8 = 0x7;
    pub(super) const WINDOW_UPDATE: u8 = 0x8;
    pub(super) const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
mod flag {
    pub(super) const END_STREAM: u8 = 0x1;
    pub(super) const ACK: u8 = 0x1;
    pub(super) const END_HEADERS: u8 = 0x4;
    pub(super) const PADDED: u8 = 0x8;
    pub(super) const PRIORITY: u8 = 0x20;
}

/// Settings identifiers.
mod setting {
    pub(super) const ENABLE_PUSH: u16 = 0x2;
    pub(super) const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub(super) const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub(super) const MAX_FRAME_SIZE: u16 = 0x5;
    pub(super) const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// Error codes (RFC 9113 section 7), in GOAWAY and RST_STREAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Code {
    NoError = 0x0,
    Protocol = 0x1,
    FlowControl = 0x3,
    StreamClosed = 0x5,
    FrameSize = 0x6,
    Refused = 0x7,
    Cancel = 0x8,
    Compression = 0x9,
    EnhanceYourCalm = 0xb,
}

/// A connection error: GOAWAY with `code`, then close.
#[derive(Debug)]
struct ConnError {
    code: Code,
    why: &'static str,
}

fn conn_err(code: Code, why: &'static str) -> ConnError {
    ConnError { code, why }
}

/// A request's answer as the router works on it.
pub(crate) type Routed = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// What one connection needs from the node.
pub(crate) struct Ctx<'a> {
    /// The router (`http::handle` on a node; a stand-in when fuzzed).
    pub(crate) route: &'a (dyn Fn(Request<RequestBody>) -> Routed + Sync),
    pub(crate) peer: SocketAddr,
    pub(crate) graceful: &'a CancellationToken,
    pub(crate) head_deadline: Instant,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    /// `--write-timeout`: also the longest a complete response may wait
    /// for window (`None`: no bound).
    pub(crate) write_timeout: Option<Duration>,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// The node's router for a connection from `peer`.
pub(crate) fn router(
    api: Arc<Api>,
    routes: Routes,
    peer: SocketAddr,
    abort: Arc<Abort>,
) -> impl Fn(Request<RequestBody>) -> Routed + Sync {
    move |req| {
        let api = api.clone();
        let abort = abort.clone();
        Box::pin(async move { super::handle(&api, routes, req, peer, &abort).await })
    }
}

/// Serves one HTTP/2 connection until it ends.
pub(crate) async fn serve<I>(io: TimedIo<I>, ctx: Ctx<'_>)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn::new(io, &ctx);
    let end = poll_fn(|cx| conn.poll(cx, &ctx)).await;
    conn.finish(end, &ctx).await;
}

/// How the connection loop ended.
#[derive(Debug)]
enum End {
    /// Nothing left to serve (drained, idle, the client's GOAWAY).
    Done,
    /// The client closed the connection.
    Closed,
    /// A connection error: GOAWAY queued.
    Error(ConnError),
    /// Reading or writing failed.
    Io(io::Error),
    /// No request by the head deadline.
    TimedOut,
}

/// A complete response waiting for window ([`Conn::hold`]).
enum Held {
    /// It may wait until then.
    Until(Instant),
    /// No `--write-timeout`: it may wait as long as the connection lasts.
    Unbounded,
    /// It has waited `--write-timeout`: the stream is reset.
    Over,
}

/// One request stream.
struct Slot {
    id: u32,
    /// What the client lets herald send on it.
    send_window: i64,
    /// What herald lets the client send on it.
    recv_window: i64,
    /// A HEAD request: the response has no body.
    head: bool,
    /// Since when a complete response has waited for window (the client
    /// gives none): reset after `--write-timeout`, like a write that
    /// does not move.
    held_since: Option<Instant>,
    /// The request body, while the client is still sending it.
    inbox: Option<Arc<Mutex<Inbox>>>,
    state: State,
}

/// Where a stream's response is.
enum State {
    /// The router is working on it.
    Routing(Routed),
    /// A complete body, the rest of it to send (then END_STREAM).
    Full(Bytes),
    /// An event stream, and the part of its last batch the windows did not
    /// take yet.
    Sse(Box<Stream>, Bytes),
    /// The last frame is queued.
    Done,
}

/// A request body as it arrives: DATA frames' payloads, not yet read by the
/// router.
#[derive(Debug, Default)]
struct Inbox {
    data: VecDeque<Bytes>,
    unread: usize,
    ended: bool,
    /// The stream was reset: the body fails.
    reset: bool,
    waker: Option<Waker>,
}

/// A request body read from the connection's DATA frames.
#[derive(Debug)]
pub(crate) struct DataBody(Option<Arc<Mutex<Inbox>>>);

/// The stream was reset before its request body ended.
#[derive(Debug, thiserror::Error)]
#[error("the request stream was reset before its body ended")]
pub(crate) struct BodyReset;

impl http_body::Body for DataBody {
    type Data = Bytes;
    type Error = BodyReset;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyReset>>> {
        let Some(inbox) = &self.0 else {
            return Poll::Ready(None);
        };
        let mut inbox = inbox.lock();
        if let Some(b) = inbox.data.pop_front() {
            inbox.unread -= b.len();
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if inbox.reset {
            return Poll::Ready(Some(Err(BodyReset)));
        }
        if inbox.ended {
            return Poll::Ready(None);
        }
        inbox.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.0 {
            None => SizeHint::with_exact(0),
            Some(_) => SizeHint::default(),
        }
    }
}

impl Inbox {
    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// A header block being received (HEADERS without END_HEADERS, then
/// CONTINUATION).
struct Block {
    id: u32,
    end_stream: bool,
    bytes: Vec<u8>,
}

struct Conn<I> {
    io: TimedIo<I>,
    /// Bytes read and not yet handled (empty and unallocated when idle).
    rbuf: BytesMut,
    /// Frames queued for the client (unallocated when idle).
    out: Vec<u8>,
    /// How much of `out` is written.
    written: usize,
    preface: bool,
    /// The client's first SETTINGS arrived.
    settings: bool,
    decoder: loona_hpack::Decoder<'static>,
    block: Option<Box<Block>>,
    slots: Vec<Slot>,
    /// Highest stream id the client opened.
    last_id: u32,
    /// Any request arrived.
    served: bool,
    send_window: i64,
    /// Received on the connection and not yet given back (the client may
    /// send `WINDOW` minus this).
    recv_unacked: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    /// GOAWAY sent: no new streams above it.
    goaway: Option<u32>,
    /// The client's GOAWAY arrived, or its side is closed.
    peer_done: bool,
    /// WINDOW_UPDATEs the client may send for the DATA it received: two
    /// per DATA frame (its stream's and the connection's). One beyond that
    /// gives back window for nothing: an idle frame.
    updates_owed: u32,
    /// Idle frames in the current budget window, and when it started.
    idle_frames: u32,
    idle_since: Instant,
    /// The head deadline, then the idle timeout: armed only while no
    /// stream is open.
    timer: Option<Pin<Box<Sleep>>>,
    /// The earliest a held response times out ([`Conn::hold`]): armed only
    /// while one waits for window.
    held_timer: Option<Pin<Box<Sleep>>>,
    /// The node's drain, watched only while no stream is open.
    drain: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    fn new(io: TimedIo<I>, ctx: &Ctx<'_>) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HPACK_TABLE);
        let mut conn = Self {
            io,
            rbuf: BytesMut::new(),
            out: Vec::new(),
            written: 0,
            preface: false,
            settings: false,
            decoder,
            block: None,
            slots: Vec::new(),
            last_id: 0,
            served: false,
            send_window: WINDOW,
            recv_unacked: 0,
            peer_initial_window: WINDOW,
            peer_max_frame: MAX_FRAME,
            goaway: None,
            peer_done: false,
            updates_owed: 0,
            idle_frames: 0,
            idle_since: Instant::now(),
            timer: Some(Box::pin(tokio::time::sleep_until(ctx.head_deadline))),
            held_timer: None,
            drain: None,
        };
        let max_list = u32::try_from(ctx.max_header_bytes).unwrap_or(u32::MAX);
        let mut settings = Vec::with_capacity(12);
        settings.extend_from_slice(&setting::MAX_CONCURRENT_STREAMS.to_be_bytes());
        settings.extend_from_slice(&(MAX_STREAMS as u32).to_be_bytes());
        settings.extend_from_slice(&setting::MAX_HEADER_LIST_SIZE.to_be_bytes());
        settings.extend_from_slice(&max_list.to_be_bytes());
        conn.frame(kind::SETTINGS, 0, 0, &settings);
        conn
    }

    /// Queues one frame.
    fn frame(&mut self, ty: u8, flags: u8, id: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        self.out.extend_from_slice(&len.to_be_bytes()[1..]);
        self.out.push(ty);
        self.out.push(flags);
        self.out
            .extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
        self.out.extend_from_slice(payload);
    }

    fn rst(&mut self, id: u32, code: Code) {
        self.frame(kind::RST_STREAM, 0, id, &(code as u32).to_be_bytes());
    }

    fn window_update(&mut self, id: u32, n: i64) {
        if n > 0 {
            self.frame(kind::WINDOW_UPDATE, 0, id, &(n as u32).to_be_bytes());
        }
    }

    fn send_goaway(&mut self, code: Code) {
        if self.goaway.is_some() && code == Code::NoError {
            return;
        }
        let mut p = [0u8; 8];
        p[..4].copy_from_slice(&self.last_id.to_be_bytes());
        p[4..].copy_from_slice(&(code as u32).to_be_bytes());
        self.frame(kind::GOAWAY, 0, 0, &p);
        self.goaway = Some(self.last_id);
    }

    /// The connection loop (module docs).
    fn poll(&mut self, cx: &mut Context<'_>, ctx: &Ctx<'_>) -> Poll<End> {
        if self.goaway.is_none() && ctx.graceful.is_cancelled() {
            self.send_goaway(Code::NoError);
        }
        for _ in 0..ROUNDS {
            if let Err(e) = self.poll_flush(cx) {
                return Poll::Ready(End::Io(e));
            }
            let mut progress = false;
            if self.out.len() - self.written < WRITE_HIGH && !self.peer_done {
                match self.poll_read(cx, ctx) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(end)) => return Poll::Ready(end),
                    Poll::Pending => {}
                }
            }
            progress |= self.poll_routing(cx);
            progress |= self.poll_streams(cx, ctx);
            if self.slots.is_empty() {
                // A drain must wake a connection with no stream open (one
                // with streams is woken by their ends): registered only
                // then, so a busy connection's wake-ups do not touch the
                // node-wide token.
                let drain = self
                    .drain
                    .get_or_insert_with(|| Box::pin(ctx.graceful.clone().cancelled_owned()));
                if drain.as_mut().poll(cx).is_ready() {
                    self.send_goaway(Code::NoError);
                }
                if self.goaway.is_some() || self.peer_done {
                    return Poll::Ready(End::Done);
                }
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(ctx.idle_timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(if self.served {
                        End::Done
                    } else {
                        End::TimedOut
                    });
                }
            } else {
                self.timer = None;
                self.drain = None;
            }
            let queued = self.out.len() > self.written;
            if !progress && !queued {
                return Poll::Pending;
            }
            if !progress {
                // Only writing left: `poll_flush` registered for it.
                if let Err(e) = self.poll_flush(cx) {
                    return Poll::Ready(End::Io(e));
                }
                if self.out.len() > self.written {
                    return Poll::Pending;
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes what is queued, as far as the socket takes it; frees the
    /// buffer once it is all written.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.written < self.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => self.written += n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(()),
            }
        }
        if self.out.capacity() > 0 {
            self.out = Vec::new();
            self.written = 0;
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// Reads and handles whole frames. `Ready(Ok)` when any arrived.
    fn poll_read(&mut self, cx: &mut Context<'_>, ctx: &Ctx<'_>) -> Poll<Result<(), End>> {
        // Onto the stack, then only a partial frame is kept: an idle
        // connection holds no read buffer (a buffer reserved for a read that
        // comes back `Pending` would stay with it).
        // Uninitialized: zeroing 8 KiB on every poll (most come back
        // `Pending`) showed in profiles.
        let mut stack = [const { std::mem::MaybeUninit::<u8>::uninit() }; READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut stack);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(End::Io(e))),
            Poll::Ready(Ok(())) => {}
        }
        if buf.filled().is_empty() {
            self.peer_done = true;
            return Poll::Ready(Err(End::Closed));
        }
        self.rbuf.extend_from_slice(buf.filled());
        if let Err(e) = self.handle_frames(cx, ctx) {
            return Poll::Ready(Err(End::Error(e)));
        }
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }

    fn handle_frames(&mut self, cx: &mut Context<'_>, ctx: &Ctx<'_>) -> Result<(), ConnError> {
        if !self.preface {
            let n = self.rbuf.len().min(PREFACE.len());
            if self.rbuf[..n] != PREFACE[..n] {
                return Err(conn_err(Code::Protocol, "not an HTTP/2 connection preface"));
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            self.rbuf.advance(PREFACE.len());
            self.preface = true;
        }
        while self.rbuf.len() >= 9 {
            let h = &self.rbuf[..9];
            let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
            if len > MAX_FRAME {
                return Err(conn_err(
                    Code::FrameSize,
                    "frame larger than SETTINGS_MAX_FRAME_SIZE",
                ));
            }
            if self.rbuf.len() < 9 + len {
                break;
            }
            let (ty, flags) = (h[3], h[4]);
            let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let mut frame = self.rbuf.split_to(9 + len);
            frame.advance(9);
            self.on_frame(ty, flags, id, frame.freeze(), ctx)?;
            if self.peer_done {
                // The client's GOAWAY: its streams are closed, it reads no
                // more answers, and what it sent after is not served (a
                // request there would wait on a connection no longer read).
                self.rbuf.clear();
                break;
            }
            if ty == kind::HEADERS || ty == kind::CONTINUATION {
                // A new request is routed at once (nearly every answer is
                // ready on the first poll): its head and the router's
                // future are freed before the next one is read, so a burst
                // of requests does not hold them all at once.
                self.poll_routing(cx);
            }
        }
        Ok(())
    }

    /// Counts a frame that does nothing for the server against the budget.
    fn idle_frame(&mut self) -> Result<(), ConnError> {
        let now = Instant::now();
        if now.duration_since(self.idle_since) >= IDLE_FRAMES_PER {
            self.idle_since = now;
            self.idle_frames = 0;
        }
        self.idle_frames += 1;
        if self.idle_frames > IDLE_FRAMES {
            return Err(conn_err(
                Code::EnhanceYourCalm,
                "too many frames that do nothing (PING, SETTINGS, PRIORITY, resets, empty DATA)",
            ));
        }
        Ok(())
    }

    fn on_frame(
        &mut self,
        ty: u8,
        flags: u8,
        id: u32,
        payload: Bytes,
        ctx: &Ctx<'_>,
    ) -> Result<(), ConnError> {
        if !self.settings && ty != kind::SETTINGS {
            return Err(conn_err(Code::Protocol, "the first frame must be SETTINGS"));
        }
        if self.block.is_some() && ty != kind::CONTINUATION {
            return Err(conn_err(Code::Protocol, "a header block was interrupted"));
        }
        match ty {
            kind::DATA => self.on_data(flags, id, payload),
            kind::HEADERS => self.on_headers(flags, id, payload, ctx),
            kind::CONTINUATION => self.on_continuation(flags, id, &payload, ctx),
            kind::PRIORITY => {
                if id == 0 {
                    return Err(conn_err(Code::Protocol, "PRIORITY on stream 0"));
                }
                if payload.len() != 5 {
                    return Err(conn_err(Code::FrameSize, "PRIORITY of the wrong size"));
                }
                self.idle_frame()
            }
            kind::RST_STREAM => {
                if id == 0 || id > self.last_id {
                    return Err(conn_err(Code::Protocol, "RST_STREAM on an idle stream"));
                }
                if payload.len() != 4 {
                    return Err(conn_err(Code::FrameSize, "RST_STREAM of the wrong size"));
                }
                self.close_slot(id, CloseReason::Client);
                self.idle_frame()
            }
            kind::SETTINGS => self.on_settings(flags, id, &payload),
            kind::PUSH_PROMISE => Err(conn_err(Code::Protocol, "a client sent PUSH_PROMISE")),
            kind::PING => {
                if id != 0 {
                    return Err(conn_err(Code::Protocol, "PING on a stream"));
                }
                if payload.len() != 8 {
                    return Err(conn_err(Code::FrameSize, "PING of the wrong size"));
                }
                self.idle_frame()?;
                if flags & flag::ACK == 0 {
                    self.frame(kind::PING, flag::ACK, 0, &payload);
                }
                Ok(())
            }
            kind::GOAWAY => {
                if id != 0 {
                    return Err(conn_err(Code::Protocol, "GOAWAY on a stream"));
                }
                if payload.len() < 8 {
                    return Err(conn_err(Code::FrameSize, "GOAWAY too short"));
                }
                self.peer_done = true;
                for i in (0..self.slots.len()).rev() {
                    let sid = self.slots[i].id;
                    self.close_slot(sid, CloseReason::Client);
                }
                Ok(())
            }
            kind::WINDOW_UPDATE => self.on_window_update(id, &payload),
            _ => self.idle_frame(),
        }
    }

    fn on_settings(&mut self, flags: u8, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if id != 0 {
            return Err(conn_err(Code::Protocol, "SETTINGS on a stream"));
        }
        if flags & flag::ACK != 0 {
            if !payload.is_empty() {
                return Err(conn_err(Code::FrameSize, "SETTINGS ack with a payload"));
            }
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(conn_err(Code::FrameSize, "SETTINGS of the wrong size"));
        }
        for s in payload.chunks_exact(6) {
            let key = u16::from_be_bytes([s[0], s[1]]);
            let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match key {
                setting::ENABLE_PUSH if value > 1 => {
                    return Err(conn_err(Code::Protocol, "SETTINGS_ENABLE_PUSH not 0 or 1"))
                }
                setting::INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > WINDOW_MAX {
                        return Err(conn_err(
                            Code::FlowControl,
                            "SETTINGS_INITIAL_WINDOW_SIZE too large",
                        ));
                    }
                    let delta = value - self.peer_initial_window;
                    self.peer_initial_window = value;
                    for slot in &mut self.slots {
                        slot.send_window += delta;
                        if slot.send_window > WINDOW_MAX {
                            return Err(conn_err(Code::FlowControl, "a stream window overflowed"));
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(conn_err(
                            Code::Protocol,
                            "SETTINGS_MAX_FRAME_SIZE out of range",
                        ));
                    }
                    self.peer_max_frame = value as usize;
                }
                _ => {}
            }
        }
        if self.settings {
            self.idle_frame()?;
        }
        self.frame(kind::SETTINGS, flag::ACK, 0, &[]);
        self.settings = true;
        Ok(())
    }

    fn on_window_update(&mut self, id: u32, payload: &[u8]) -> Result<(), ConnError> {
        if payload.len() != 4 {
            return Err(conn_err(Code::FrameSize, "WINDOW_UPDATE of the wrong size"));
        }
        let inc = i64::from(
            u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff,
        );
        match self.updates_owed.checked_sub(1) {
            Some(owed) => self.updates_owed = owed,
            None => self.idle_frame()?,
        }
        if id == 0 {
            if inc == 0 {
                return Err(conn_err(Code::Protocol, "WINDOW_UPDATE of 0"));
            }
            self.send_window += inc;
            if self.send_window > WINDOW_MAX {
                return Err(conn_err(
                    Code::FlowControl,
                    "the connection window overflowed",
                ));
            }
            return Ok(());
        }
        if id > self.last_id {
            return Err(conn_err(Code::Protocol, "WINDOW_UPDATE on an idle stream"));
        }
        let Some(i) = self.slot(id) else {
            return Ok(());
        };
        if inc == 0 {
            self.rst(id, Code::Protocol);
            self.close_slot(id, CloseReason::Error);
            return Ok(());
        }
        self.slots[i].send_window += inc;
        if self.slots[i].send_window > WINDOW_MAX {
            self.rst(id, Code::FlowControl);
            self.close_slot(id, CloseReason::Error);
        }
        Ok(())
    }

    fn on_data(&mut self, flags: u8, id: u32, payload: Bytes) -> Result<(), ConnError> {
        if id == 0 {
            return Err(conn_err(Code::Protocol, "DATA on stream 0"));
        }
        if id > self.last_id {
            return Err(conn_err(Code::Protocol, "DATA on an idle stream"));
        }
        let len = payload.len() as i64;
        self.recv_unacked += len;
        if self.recv_unacked > WINDOW {
            return Err(conn_err(
                Code::FlowControl,
                "DATA beyond the connection window",
            ));
        }
        // The connection's window is given back as data arrives (what a
        // stream may hold is bounded by its own window).
        if self.recv_unacked >= WINDOW / 2 {
            let n = std::mem::take(&mut self.recv_unacked);
            self.window_update(0, n);
        }
        let end = flags & flag::END_STREAM != 0;
        if payload.is_empty() && !end {
            self.idle_frame()?;
        }
        let data = unpad(flags, payload).ok_or(conn_err(Code::Protocol, "bad padding"))?;
        let Some(i) = self.slot(id) else {
            // A stream herald closed: the data is dropped.
            return Ok(());
        };
        let slot = &mut self.slots[i];
        let Some(inbox) = slot.inbox.clone() else {
            self.rst(id, Code::StreamClosed);
            self.close_slot(id, CloseReason::Protocol);
            return Ok(());
        };
        slot.recv_window -= len;
        if slot.recv_window < 0 {
            self.rst(id, Code::FlowControl);
            self.close_slot(id, CloseReason::Protocol);
            return Ok(());
        }
        let mut inbox = inbox.lock();
        if !data.is_empty() {
            inbox.unread += data.len();
            inbox.data.push_back(data);
        }
        if end {
            inbox.ended = true;
        }
        inbox.wake();
        let give = inbox.unread < BODY_UNREAD && !end;
        drop(inbox);
        if end {
            self.slots[i].inbox = None;
        } else if give {
            self.slots[i].recv_window += len;
            self.window_update(id, len);
        }
        Ok(())
    }

    fn on_headers(
        &mut self,
        flags: u8,
        id: u32,
        payload: Bytes,
        ctx: &Ctx<'_>,
    ) -> Result<(), ConnError> {
        if id == 0 || id.is_multiple_of(2) {
            return Err(conn_err(Code::Protocol, "HEADERS on an invalid stream id"));
        }
        let mut p = unpad(flags, payload).ok_or(conn_err(Code::Protocol, "bad padding"))?;
        if flags & flag::PRIORITY != 0 {
            if p.len() < 5 {
                return Err(conn_err(
                    Code::Protocol,
                    "HEADERS too short for its priority",
                ));
            }
            p.advance(5);
        }
        let block = Block {
            id,
            end_stream: flags & flag::END_STREAM != 0,
            bytes: p.to_vec(),
        };
        self.check_block_size(&block, ctx)?;
        if flags & flag::END_HEADERS == 0 {
            self.block = Some(Box::new(block));
            return Ok(());
        }
        self.on_block(block, ctx)
    }

    fn on_continuation(
        &mut self,
        flags: u8,
        id: u32,
        payload: &[u8],
        ctx: &Ctx<'_>,
    ) -> Result<(), ConnError> {
        let Some(mut block) = self.block.take() else {
            return Err(conn_err(Code::Protocol, "CONTINUATION without HEADERS"));
        };
        if block.id != id {
            return Err(conn_err(Code::Protocol, "CONTINUATION on another stream"));
        }
        block.bytes.extend_from_slice(payload);
        self.check_block_size(&block, ctx)?;
        if payload.is_empty() && flags & flag::END_HEADERS == 0 {
            self.idle_frame()?;
        }
        if flags & flag::END_HEADERS == 0 {
            self.block = Some(block);
            return Ok(());
        }
        self.on_block(*block, ctx)
    }

    fn check_block_size(&self, block: &Block, ctx: &Ctx<'_>) -> Result<(), ConnError> {
        if block.bytes.len() > ctx.max_header_bytes {
            Limit::HeaderTooLarge.count();
            return Err(conn_err(
                Code::EnhanceYourCalm,
                "a header block larger than --max-header-bytes",
            ));
        }
        Ok(())
    }

    /// A whole header block: a new request, or trailers.
    fn on_block(&mut self, block: Block, ctx: &Ctx<'_>) -> Result<(), ConnError> {
        let decoded = self.decode(&block.bytes, ctx.max_header_bytes);
        if block.id <= self.last_id {
            // Trailers on a request whose body is arriving (ignored), or a
            // stream that is over.
            let Some(i) = self.slot(block.id) else {
                return Err(conn_err(Code::StreamClosed, "HEADERS on a closed stream"));
            };
            let Some(inbox) = self.slots[i].inbox.take() else {
                return Err(conn_err(
                    Code::StreamClosed,
                    "HEADERS on a half-closed stream",
                ));
            };
            decoded?;
            if !block.end_stream {
                self.rst(block.id, Code::Protocol);
                self.close_slot(block.id, CloseReason::Protocol);
                return Ok(());
            }
            let mut inbox = inbox.lock();
            inbox.ended = true;
            inbox.wake();
            return Ok(());
        }
        self.last_id = block.id;
        let decoded = decoded?;
        if self.goaway.is_some() {
            // After GOAWAY: decoded (the table must stay in step), not served.
            return Ok(());
        }
        if self.slots.len() >= MAX_STREAMS {
            self.rst(block.id, Code::Refused);
            return self.idle_frame();
        }
        let (parts, too_large) = match decoded {
            Decoded::Request(parts) => (*parts, false),
            Decoded::TooLarge => {
                let (parts, ()) = Request::new(()).into_parts();
                (parts, true)
            }
            Decoded::Malformed => {
                self.rst(block.id, Code::Protocol);
                return self.idle_frame();
            }
        };
        self.served = true;
        self.timer = None;
        // Not the path: its query may hold a token.
        tracing::trace!(stream = block.id, method = %parts.method, "h2 request");
        let head = parts.method == Method::HEAD;
        let inbox = (!block.end_stream).then(|| Arc::new(Mutex::new(Inbox::default())));
        let future: Routed = if too_large {
            Limit::HeaderTooLarge.count();
            let resp = super::json_error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &format!(
                    "the request head is larger than {} bytes (--max-header-bytes)",
                    ctx.max_header_bytes
                ),
            );
            Box::pin(std::future::ready(resp))
        } else {
            (ctx.route)(Request::from_parts(
                parts,
                RequestBody::H2(DataBody(inbox.clone())),
            ))
        };
        if self.slots.len() == self.slots.capacity() && self.slots.len() < 4 {
            // One at a time at first: a browser holds one or two streams.
            self.slots.reserve_exact(1);
        }
        self.slots.push(Slot {
            id: block.id,
            send_window: self.peer_initial_window,
            recv_window: WINDOW,
            head,
            held_since: None,
            inbox,
            state: State::Routing(future),
        });
        Ok(())
    }

    /// Decodes a header block into a request head. A decoding error is the
    /// connection's (the table is out of step); a malformed request is
    /// the stream's.
    fn decode(&mut self, block: &[u8], max: usize) -> Result<Decoded, ConnError> {
        let mut fields = Fields::default();
        let decoded = self
            .decoder
            .decode_with_cb(block, |name, value| fields.add(&name, &value, max));
        if decoded.is_err() {
            return Err(conn_err(
                Code::Compression,
                "the header block does not decode",
            ));
        }
        Ok(fields.finish())
    }

    fn slot(&self, id: u32) -> Option<usize> {
        self.slots.iter().position(|s| s.id == id)
    }

    /// Drops a stream; an event stream is ended with `reason`.
    fn close_slot(&mut self, id: u32, reason: CloseReason) {
        let Some(i) = self.slot(id) else {
            return;
        };
        let slot = self.slots.swap_remove(i);
        if let Some(inbox) = slot.inbox {
            let mut inbox = inbox.lock();
            inbox.reset = true;
            inbox.wake();
        }
        if let State::Sse(mut stream, _) = slot.state {
            stream.end(reason);
        }
    }

    /// Polls the router futures; queues each response's HEADERS.
    fn poll_routing(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        for i in 0..self.slots.len() {
            let State::Routing(future) = &mut self.slots[i].state else {
                continue;
            };
            let Poll::Ready(resp) = future.as_mut().poll(cx) else {
                continue;
            };
            progress = true;
            let (parts, body) = resp.into_parts();
            let id = self.slots[i].id;
            let head = self.slots[i].head;
            let (state, end) = match body {
                Body::Full(b) => {
                    let b = b.unwrap_or_default();
                    let len = b.len();
                    let b = if head { Bytes::new() } else { b };
                    let end = b.is_empty();
                    self.headers(id, &parts, Some(len), end);
                    (if end { State::Done } else { State::Full(b) }, end)
                }
                Body::Sse(stream) => {
                    self.headers(id, &parts, None, false);
                    (State::Sse(stream, Bytes::new()), false)
                }
            };
            self.slots[i].state = state;
            if end {
                self.finished(i);
            }
        }
        self.slots.retain(|s| !matches!(s.state, State::Done));
        progress
    }

    /// A response is complete: a request body still arriving is cut off.
    fn finished(&mut self, i: usize) {
        self.slots[i].state = State::Done;
        if let Some(inbox) = self.slots[i].inbox.take() {
            let id = self.slots[i].id;
            let mut inbox = inbox.lock();
            inbox.reset = true;
            inbox.wake();
            drop(inbox);
            self.rst(id, Code::NoError);
        }
    }

    /// Queues a response's HEADERS (and CONTINUATIONs).
    fn headers(&mut self, id: u32, parts: &http::response::Parts, len: Option<usize>, end: bool) {
        let mut block = Vec::with_capacity(128);
        encode_status(parts.status, &mut block);
        for (name, value) in &parts.headers {
            if is_connection_header(name) || name == header::CONTENT_LENGTH {
                continue;
            }
            encode_field(name.as_str().as_bytes(), value.as_bytes(), &mut block);
        }
        if let Some(len) = len {
            encode_field(b"content-length", len.to_string().as_bytes(), &mut block);
        }
        let max = self.peer_max_frame;
        let mut chunks = block.chunks(max).peekable();
        let mut first = true;
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let mut flags = if last { flag::END_HEADERS } else { 0 };
            let ty = if first {
                kind::HEADERS
            } else {
                kind::CONTINUATION
            };
            if first && end {
                flags |= flag::END_STREAM;
            }
            self.frame(ty, flags, id, chunk);
            first = false;
        }
    }

    /// Queues DATA for every stream that has some and window for it.
    fn poll_streams(&mut self, cx: &mut Context<'_>, ctx: &Ctx<'_>) -> bool {
        let mut progress = false;
        // The earliest a held response times out.
        let mut held_until: Option<Instant> = None;
        let mut i = 0;
        while i < self.slots.len() {
            if self.out.len() - self.written >= WRITE_HIGH {
                break;
            }
            let state = std::mem::replace(&mut self.slots[i].state, State::Done);
            // `Some(None)`: ended cleanly; `Some(Some(code))`: reset.
            let (state, end) = match state {
                State::Full(mut rest) => {
                    let sent = self.data(i, &mut rest, true);
                    progress |= sent;
                    if rest.is_empty() {
                        (State::Done, Some(None))
                    } else {
                        match self.hold(i, sent, ctx.write_timeout) {
                            Held::Until(at) => {
                                held_until = Some(held_until.map_or(at, |h| h.min(at)));
                                (State::Full(rest), None)
                            }
                            Held::Unbounded => (State::Full(rest), None),
                            Held::Over => {
                                Limit::WriteTimeout.count();
                                (State::Done, Some(Some(Code::Cancel)))
                            }
                        }
                    }
                }
                State::Sse(mut stream, mut pending) => {
                    let mut end = None;
                    if !pending.is_empty() && stream.cut_off() {
                        // Held for want of window, and the core gave up on it.
                        end = Some(Some(Code::Cancel));
                    } else if pending.is_empty() {
                        match stream.poll_next(cx) {
                            Poll::Pending => {}
                            Poll::Ready(Next::Data(b)) => pending = b,
                            Poll::Ready(Next::End) => end = Some(None),
                            // Wire bytes come only through a wire, and these
                            // streams install none: not reached.
                            Poll::Ready(Next::Abort | Next::Wire(_)) => {
                                end = Some(Some(Code::Cancel))
                            }
                        }
                    }
                    if !pending.is_empty() {
                        progress |= self.data(i, &mut pending, false);
                    }
                    (State::Sse(stream, pending), end)
                }
                other => (other, None),
            };
            self.slots[i].state = state;
            let Some(code) = end else {
                i += 1;
                continue;
            };
            progress = true;
            let id = self.slots[i].id;
            match code {
                None if matches!(self.slots[i].state, State::Sse(..)) => {
                    self.frame(kind::DATA, flag::END_STREAM, id, &[])
                }
                None => {}
                Some(code) => self.rst(id, code),
            }
            self.finished(i);
            self.slots.swap_remove(i);
        }
        match held_until {
            Some(at) => {
                let timer = self
                    .held_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    progress = true;
                }
            }
            None => self.held_timer = None,
        }
        progress
    }

    /// Slot `i`'s complete response still waits for window (`sent`: some
    /// of it went out this time): until when it may, or that it is over.
    fn hold(&mut self, i: usize, sent: bool, timeout: Option<Duration>) -> Held {
        let Some(timeout) = timeout else {
            return Held::Unbounded;
        };
        let now = Instant::now();
        let since = match self.slots[i].held_since {
            Some(since) if !sent => since,
            _ => *self.slots[i].held_since.insert(now),
        };
        match since + timeout {
            at if at > now => Held::Until(at),
            _ => Held::Over,
        }
    }

    /// Queues as much of `bytes` as the windows allow as DATA frames (the
    /// last with END_STREAM when `end` and it is all sent). Whether any was
    /// queued.
    fn data(&mut self, i: usize, bytes: &mut Bytes, end: bool) -> bool {
        let id = self.slots[i].id;
        let mut sent = false;
        // One allocation for the batch's frames, not one per append.
        self.out
            .reserve(bytes.len() + 9 * (bytes.len() / self.peer_max_frame + 1));
        while !bytes.is_empty() {
            let window = self.send_window.min(self.slots[i].send_window);
            if window <= 0 {
                break;
            }
            let n = bytes.len().min(window as usize).min(self.peer_max_frame);
            let chunk = bytes.split_to(n);
            let flags = if end && bytes.is_empty() {
                flag::END_STREAM
            } else {
                0
            };
            self.frame(kind::DATA, flags, id, &chunk);
            self.updates_owed = self.updates_owed.saturating_add(2);
            self.send_window -= n as i64;
            self.slots[i].send_window -= n as i64;
            sent = true;
        }
        sent
    }

    /// After the loop: GOAWAY for an error, what is queued written, the
    /// streams ended with why.
    async fn finish(&mut self, end: End, ctx: &Ctx<'_>) {
        let reason = match &end {
            End::Done => CloseReason::Shutdown,
            End::Closed => CloseReason::Client,
            End::Io(e) => io_reason(e),
            End::Error(e) => {
                tracing::debug!(peer = %ctx.peer, why = e.why, "HTTP/2 connection error");
                self.send_goaway(e.code);
                CloseReason::Protocol
            }
            End::TimedOut => {
                Limit::HeaderTimeout.count();
                self.send_goaway(Code::NoError);
                CloseReason::Client
            }
        };
        for i in (0..self.slots.len()).rev() {
            let id = self.slots[i].id;
            self.close_slot(id, reason);
        }
        if matches!(end, End::Io(_) | End::Closed) {
            return;
        }
        if matches!(end, End::Done) {
            self.send_goaway(Code::NoError);
        }
        let flushed = poll_fn(|cx| {
            if let Err(e) = self.poll_flush(cx) {
                return Poll::Ready(Err(e));
            }
            if self.out.len() > self.written {
                return Poll::Pending;
            }
            Pin::new(&mut self.io).poll_shutdown(cx)
        });
        let _ = flushed.await;
    }
}

/// The payload without its padding (PADDED), if the padding fits.
fn unpad(flags: u8, mut p: Bytes) -> Option<Bytes> {
    if flags & flag::PADDED == 0 {
        return Some(p);
    }
    let pad = *p.first()? as usize;
    p.advance(1);
    if pad > p.len() {
        return None;
    }
    p.truncate(p.len() - pad);
    Some(p)
}

/// A decoded request head.
enum Decoded {
    Request(Box<http::request::Parts>),
    /// The header list is over `--max-header-bytes`: answered 431.
    TooLarge,
    /// Not a valid HTTP/2 request: the stream is reset.
    Malformed,
}

/// A request head as its fields are decoded.
#[derive(Default)]
struct Fields {
    method: Option<Method>,
    scheme: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    headers: http::HeaderMap,
    /// The list's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it.
    size: usize,
    regular: bool,
    malformed: bool,
    too_large: bool,
}

impl Fields {
    fn add(&mut self, name: &[u8], value: &[u8], max: usize) {
        self.size += name.len() + value.len() + 32;
        if self.size > max {
            self.too_large = true;
        }
        if self.malformed || self.too_large {
            return;
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            let Ok(v) = std::str::from_utf8(value) else {
                self.malformed = true;
                return;
            };
            let slot = match pseudo {
                b"method" => {
                    if self.method.is_some() {
                        self.malformed = true;
                    }
                    self.method = Method::from_bytes(value).ok();
                    self.malformed |= self.method.is_none() || self.regular;
                    return;
                }
                b"scheme" => &mut self.scheme,
                b"authority" => &mut self.authority,
                b"path" => &mut self.path,
                _ => {
                    self.malformed = true;
                    return;
                }
            };
            self.malformed |= slot.is_some() || self.regular;
            *slot = Some(v.to_owned());
            return;
        }
        self.regular = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            self.malformed = true;
            return;
        }
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            self.malformed = true;
            return;
        };
        if is_connection_header(&name) || (name == header::TE && value != "trailers") {
            self.malformed = true;
            return;
        }
        self.headers.append(name, value);
    }

    fn finish(self) -> Decoded {
        if self.too_large {
            return Decoded::TooLarge;
        }
        if self.malformed {
            return Decoded::Malformed;
        }
        let (Some(method), Some(path), Some(scheme)) = (self.method, self.path, self.scheme) else {
            return Decoded::Malformed;
        };
        if method == Method::CONNECT || path.is_empty() {
            return Decoded::Malformed;
        }
        let mut uri = Uri::builder()
            .scheme(scheme.as_str())
            .path_and_query(path.as_str());
        if let Some(a) = &self.authority {
            uri = uri.authority(a.as_str());
        }
        let Ok(uri) = uri.build() else {
            return Decoded::Malformed;
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .version(Version::HTTP_2);
        if let Some(h) = builder.headers_mut() {
            *h = self.headers;
            if let Some(a) = self.authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
                h.entry(header::HOST).or_insert(a);
            }
        }
        match builder.body(()) {
            Ok(r) => Decoded::Request(Box::new(r.into_parts().0)),
            Err(_) => Decoded::Malformed,
        }
    }
}

/// Headers HTTP/2 forbids (RFC 9113 section 8.2.2).
fn is_connection_header(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == "keep-alive"
        || name == "proxy-connection"
}

/// `:status`: indexed when the static table has it, else a literal with
/// its indexed name.
fn encode_status(status: StatusCode, out: &mut Vec<u8>) {
    let index = match status.as_u16() {
        200 => 8,
        204 => 9,
        206 => 10,
        304 => 11,
        400 => 12,
        404 => 13,
        500 => 14,
        _ => 0,
    };
    if index > 0 {
        out.push(0x80 | index);
        return;
    }
    // Literal without indexing, name from static entry 8.
    out.push(0x08);
    encode_string(status.as_str().as_bytes(), out);
}

/// A field as a literal without indexing and a literal name: herald keeps
/// no encoder table (nothing per connection), and responses are small.
fn encode_field(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    encode_string(name, out);
    encode_string(value, out);
}

fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    // Writing to a Vec does not fail.
    let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}
