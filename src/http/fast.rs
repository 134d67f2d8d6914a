//! The HTTP/1.1 SSE fast path: a subscribe request that arrives whole in the
//! connection's first segment is served without hyper.
//!
//! Why (measured, see BENCHMARKS.md): an SSE stream is one request followed
//! by an endless body, so after the head hyper's machinery is pure overhead:
//! its per-connection read and write buffers (8 KiB each, allocated up front),
//! a ~1.5 KB connection future, and a dispatcher that polls the body one
//! frame at a time. With 10,000 idle streams hyper cost ~19-32 KB RSS per
//! connection; this path holds a stream in a fraction of that and writes each
//! drained batch with one vectored write.
//!
//! What it does:
//! - [`classify`] *peeks* (consumes nothing) the first bytes. Only a complete
//!   `GET /api/sse/subscribe/...` HTTP/1.1 head with no body and valid
//!   parameters is taken; anything else (other routes, h2c, HEAD, HTTP/1.0,
//!   a head split over segments, bad parameters so hyper answers the 400,
//!   draining so hyper answers the 503) goes to hyper untouched.
//! - [`serve`] consumes the head, registers the stream exactly as the hyper
//!   handler does (`subscribe::open`), writes the response head and preamble,
//!   then loops: drain the queue -> one chunked, vectored write; watch the
//!   read side for the client going away (anything it sends is discarded),
//!   both polled directly in one `poll_fn` (no future built per wait).
//! - Ends: shutdown closes the queue -> queued frames, the final chunk, FIN;
//!   a slow close trips the connection's `Abort` (the task is dropped, the
//!   socket closed); the client closing ends it at the next read event.
//!
//! It never allocates per frame: a batch is one `Bytes` from the queue.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::abort::Abort;
use crate::fanout::queue::{Batch, CloseReason};

use super::subscribe::{self, Params};
use super::AppState;

/// Largest head the fast path looks at; longer heads go to hyper.
const PEEK_BYTES: usize = 4096;
/// Most headers parsed.
const MAX_HEADERS: usize = 48;

/// A request the fast path will serve.
#[derive(Debug)]
pub(crate) struct Accepted {
    /// Bytes of the request head, to consume.
    head_len: usize,
    params: Params,
    grant: crate::auth::Grant,
    /// CORS response headers for an allowed origin.
    cors_lines: Option<String>,
}

/// What to do with a new connection.
#[derive(Debug)]
pub(crate) enum Route {
    Fast(Accepted),
    Hyper,
    /// Nothing arrived in time, or the peer closed: drop the connection.
    Close,
}

/// Peeks at the first segment and decides who serves the connection.
pub(crate) async fn classify(stream: &TcpStream, state: &AppState, wait: Duration) -> Route {
    // Heap, not stack: a stack buffer would live in every connection
    // task's future for the task's whole life.
    let mut buf = vec![0u8; PEEK_BYTES];
    let n = match tokio::time::timeout(wait, stream.peek(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Route::Close,
        Ok(Ok(n)) => n,
    };
    match accept(&buf[..n], state) {
        Some(a) => Route::Fast(a),
        None => Route::Hyper,
    }
}

fn accept(bytes: &[u8], state: &AppState) -> Option<Accepted> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    if req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    let target = req.path?;
    let rest = target.strip_prefix(subscribe::PREFIX)?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let mut last_event_id = None;
    let (mut authorization, mut cookie, mut origin) = (None, None, None);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            // A body on a GET: let hyper deal with the framing.
            return None;
        }
        if name.eq_ignore_ascii_case("last-event-id") {
            last_event_id = Some(h.value);
        }
        if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(h.value);
        }
        if name.eq_ignore_ascii_case("cookie") {
            cookie = Some(h.value);
        }
        if name.eq_ignore_ascii_case("origin") {
            origin = Some(h.value);
        }
        if name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"upgrade") {
            return None;
        }
    }
    if state.draining.load(Ordering::Relaxed) {
        return None;
    }
    let params = subscribe::parse(rest, query, last_event_id).ok()?;
    if subscribe::over_user_limit(state, &params.user) {
        return None;
    }
    // A refusal is answered (and counted) by hyper's handler.
    let grant = state
        .config
        .auth
        .subscribe(
            params.user.as_str(),
            &params.topics.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            crate::auth::Sources {
                authorization,
                cookie,
                query: params.token.as_deref(),
            },
        )
        .ok()?;
    let cors = &state.config.cors;
    let cors_lines = (!cors.origins.is_empty())
        .then(|| super::cors::allowed_origin(cors, origin))
        .flatten()
        .map(|allow| super::cors::header_lines(cors, &allow));
    Some(Accepted {
        head_len,
        params,
        grant,
        cors_lines,
    })
}

/// Serves an accepted subscribe request until the stream ends.
pub(crate) async fn serve(
    stream: TcpStream,
    accepted: Accepted,
    peer: SocketAddr,
    state: &Arc<AppState>,
    abort: &Arc<Abort>,
) -> io::Result<()> {
    // The setup's state (head, response, replay) lives in its own box, freed
    // once the stream is live: a task's future is allocated at the size of
    // its largest state, for the connection's whole life.
    let (stream, s) = Box::pin(start(stream, accepted, peer, state, abort)).await?;
    run(stream, s, state).await
}

/// Consumes the head, registers the stream, writes the response head, the
/// preamble and any replayed frames.
async fn start(
    mut stream: TcpStream,
    accepted: Accepted,
    peer: SocketAddr,
    state: &Arc<AppState>,
    abort: &Arc<Abort>,
) -> io::Result<(TcpStream, super::Stream)> {
    // Consume exactly the head we peeked.
    let mut head = vec![0u8; accepted.head_len];
    stream.read_exact(&mut head).await?;
    drop(head);

    let opened = subscribe::open(state, accepted.params, accepted.grant, peer, abort);
    let mut s = opened.stream;
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n{}: {}\r\n{}transfer-encoding: chunked\r\ndate: {}\r\n\r\n",
        subscribe::RESUMED_AFTER_HEADER,
        opened.after,
        accepted.cors_lines.as_deref().unwrap_or(""),
        httpdate::fmt_http_date(SystemTime::now()),
    );
    let wt = state.config.limits.write_timeout;
    write_all(&stream, &[response.as_bytes()], wt).await?;
    write_chunk(&stream, &opened.head, wt).await?;
    let replayed = opened.replay.len();
    for f in opened.replay {
        write_chunk(&stream, &f, wt).await?;
    }
    s.account(replayed, 0);
    Ok((stream, s))
}

/// The live stream: drain the queue into the socket until it ends.
async fn run(mut stream: TcpStream, mut s: super::Stream, state: &AppState) -> io::Result<()> {
    let wt = state.config.limits.write_timeout;
    let mut scratch = [0u8; 64];
    let window = state.config.write_coalesce;
    // With a coalescing window: when the next write may happen.
    let mut hold_until: Option<tokio::time::Instant> = None;
    loop {
        if let Some(at) = hold_until.take() {
            // Wait for something to send; if it came within the window
            // since the last write, let the window pass first so what
            // arrives meanwhile leaves in the same write.
            if poll_fn(|cx| poll_wait(&stream, &s, &mut scratch, cx)).await {
                return Ok(());
            }
            if tokio::time::Instant::now() < at {
                // Boxed: only coalescing streams pay for a timer.
                Box::pin(tokio::time::sleep_until(at)).await;
            }
        }
        match poll_fn(|cx| poll_next(&stream, &s, &mut scratch, cx)).await {
            Next::Batch(batch) => {
                write_chunk(&stream, &batch.bytes, wt).await?;
                s.account(batch.events, batch.oldest_us);
                if !window.is_zero() {
                    hold_until = Some(tokio::time::Instant::now() + window);
                }
            }
            Next::Closed(r @ (CloseReason::Shutdown | CloseReason::Expired)) => {
                s.ended = Some(r.label());
                // Once per stream: boxed, so it does not size every future.
                Box::pin(write_all(&stream, &[b"0\r\n\r\n"], wt)).await?;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                return Ok(());
            }
            Next::Closed(CloseReason::Slow) => {
                s.ended = Some("slow");
                return Ok(());
            }
            Next::ClientGone => return Ok(()),
        }
    }
}

/// What woke the stream.
enum Next {
    Batch(Batch),
    Closed(CloseReason),
    ClientGone,
}

/// Waits for a batch to write or for the client to go away, without building
/// a future per wait: the queue and the socket's read readiness both store
/// this task's waker directly.
fn poll_next(
    stream: &TcpStream,
    s: &super::Stream,
    scratch: &mut [u8],
    cx: &mut Context<'_>,
) -> Poll<Next> {
    match s.queue().poll_drain(cx) {
        Poll::Ready(Ok(batch)) => return Poll::Ready(Next::Batch(batch)),
        Poll::Ready(Err(reason)) => return Poll::Ready(Next::Closed(reason)),
        Poll::Pending => {}
    }
    poll_client_gone(stream, scratch, cx).map(|()| Next::ClientGone)
}

/// Like [`poll_next`] but takes nothing from the queue: `Ready(false)` when
/// there is something to drain (or the queue closed), `Ready(true)` when the
/// client went away.
fn poll_wait(
    stream: &TcpStream,
    s: &super::Stream,
    scratch: &mut [u8],
    cx: &mut Context<'_>,
) -> Poll<bool> {
    if s.queue().poll_ready(cx).is_ready() {
        return Poll::Ready(false);
    }
    poll_client_gone(stream, scratch, cx).map(|()| true)
}

/// `Ready` once the client has closed its side (or the socket failed);
/// anything it sends meanwhile is read and discarded.
fn poll_client_gone(stream: &TcpStream, scratch: &mut [u8], cx: &mut Context<'_>) -> Poll<()> {
    loop {
        match stream.poll_read_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(())) => match stream.try_read(scratch) {
                Ok(0) => return Poll::Ready(()),
                // Anything a client sends on a stream is ignored.
                Ok(_) => {}
                // Readiness cleared: poll again to register the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(()),
            },
        }
    }
}

/// Waits until the socket takes more, failing with `TimedOut` after `wt`
/// (non-zero; `--write-timeout`).
async fn wait_writable(stream: &TcpStream, wt: Duration) -> io::Result<()> {
    if wt.is_zero() {
        return stream.writable().await;
    }
    match tokio::time::timeout(wt, stream.writable()).await {
        Ok(r) => r,
        Err(_) => {
            crate::guard::count("write_timeout");
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "write timed out: the peer is not reading (--write-timeout)",
            ))
        }
    }
}

/// Writes one chunk of the chunked encoding: size line, data, CRLF.
async fn write_chunk(stream: &TcpStream, data: &Bytes, wt: Duration) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut size = [0u8; 18];
    let len = chunk_size_line(data.len(), &mut size);
    write_all(stream, &[&size[..len], data, b"\r\n"], wt).await
}

/// `{len:x}\r\n` into `out`; returns its length.
fn chunk_size_line(n: usize, out: &mut [u8; 18]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = ((usize::BITS - n.leading_zeros()).div_ceil(4)).max(1) as usize;
    for i in 0..digits {
        out[digits - 1 - i] = HEX[(n >> (4 * i)) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// Writes all of `parts` with vectored writes, resuming after short writes.
/// Waiting longer than `wt` (non-zero) for the socket to take more fails with
/// `TimedOut` (`--write-timeout`).
async fn write_all(stream: &TcpStream, parts: &[&[u8]], wt: Duration) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut written = 0;
    while written < total {
        let mut skip = written;
        let mut slices: [IoSlice<'_>; 3] =
            [IoSlice::new(&[]), IoSlice::new(&[]), IoSlice::new(&[])];
        let mut k = 0;
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            slices[k] = IoSlice::new(&p[skip..]);
            skip = 0;
            k += 1;
            if k == slices.len() {
                break;
            }
        }
        // Try first: the socket is almost always writable, and awaiting
        // readiness before every write costs a poll for nothing.
        match stream.try_write_vectored(&slices[..k]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            // Rare (the peer's window and our send buffer are full): the
            // wait lives in a box so every stream's future stays small.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                Box::pin(wait_writable(stream, wt)).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines() {
        let mut b = [0u8; 18];
        for (n, want) in [
            (1usize, "1\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (0x1a2b, "1a2b\r\n"),
        ] {
            let len = chunk_size_line(n, &mut b);
            assert_eq!(std::str::from_utf8(&b[..len]).unwrap(), want);
        }
        let len = chunk_size_line(usize::MAX, &mut b);
        assert_eq!(len, 18);
    }
}
