//! herald's own HTTP/1.1 writer for SSE streams: a subscribe request that
//! arrives whole in the connection's first segment (plain TCP), or as the
//! first request of an HTTP/1.1 TLS connection, is served without hyper.
//!
//! Why (measured, see BENCHMARKS.md): an SSE stream is one request followed
//! by an endless body, so after the head hyper's machinery is pure overhead:
//! its per-connection read and write buffers (8 KiB each, allocated up front),
//! a ~1.5 KB connection future, and a dispatcher that polls the body one
//! frame at a time. With 10,000 idle streams hyper cost ~19-32 KB RSS per
//! connection; this path holds a stream in a fraction of that.
//!
//! It is a transport only: the subscribe admission (`subscribe::admit`) and
//! every stream behaviour (`crate::stream`) are shared with hyper's path.
//! What it does:
//! - [`classify`] *peeks* (consumes nothing) the first bytes. It takes a
//!   complete `GET /api/sse/subscribe/...` HTTP/1.1 head with no body whose
//!   target and headers parse with the parsers hyper uses (`httparse`,
//!   `http::Uri`, `HeaderName`/`HeaderValue`); the h2c preface goes to
//!   herald's HTTP/2 server (`h2`); anything else (other routes, HEAD,
//!   HTTP/1.0, a head split over segments, a target `http` refuses) goes to
//!   hyper untouched, so nothing is read two ways.
//! - Over TLS there is no peek: [`read_head`] reads the first head through
//!   the session; [`serve_tls`] takes a subscribe head with nothing after it,
//!   and anything else goes to hyper, which reads the bytes read so far
//!   first ([`Rewind`]).
//! - [`serve`] consumes the head and asks the admission. A refusal is written
//!   as a complete response and the connection closed. A stream gets its
//!   response head and first bytes in one write, then: [`Stream::poll_next`]
//!   -> one chunk in one `send`, until the stream ends; the read side is
//!   watched for the client going away (or sending anything, which ends the
//!   stream: an SSE client has nothing to send), both polled in one
//!   `poll_fn` (no future built per wait).
//! - Direct sends (plain TCP only; a TLS session is its task's alone): the
//!   socket is shared ([`Socket`]) between the stream's
//!   task and the dispatcher, which writes a live event for an idle stream
//!   itself, as a chunk (`Wire` for [`Socket`]; the ownership rules are the
//!   queue's, `registry::queue`). The task writes the rest of a partial one
//!   ([`Next::Wire`]) before anything else.
//! - Ends: a clean end writes the final chunk and FIN; an abort (slow) drops
//!   the connection (the dispatcher also trips the connection's `Abort`, for
//!   a task stuck in a write); the client closing ends it at the next read
//!   event. Every write goes through `TimedIo` (`--write-timeout`).

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::abort::Abort;
use crate::stream::{io_reason, CloseReason, Framing, Next, Sent, Stream, Wire, FRAMING_HEAD_MAX};
use crate::timed_io::TimedIo;

use super::subscribe::{Admission, Subscribe, PREFIX};

/// Most headers parsed.
const MAX_HEADERS: usize = 48;
/// What the first look at a connection reads: a subscribe head fits.
const FIRST_PEEK: usize = 4096;

/// A request this path serves: its head, parsed, and its length to consume.
#[derive(Debug)]
pub(crate) struct Taken {
    head_len: usize,
    parts: Parts,
}

/// Who serves a new connection.
#[derive(Debug)]
pub(crate) enum Route {
    H1(Box<Taken>),
    /// The HTTP/2 connection preface (h2c by prior knowledge).
    H2,
    Hyper,
    /// The peer closed (or the node is draining): drop the connection.
    Close,
    /// Nothing arrived by the head deadline: drop the connection.
    TimedOut,
    /// A head longer than `--max-header-bytes` arrived: answer 431.
    TooLarge,
}

/// Peeks at the first segment and decides who serves the connection. No
/// byte by `deadline`: close.
pub(crate) async fn classify(
    stream: &TcpStream,
    deadline: tokio::time::Instant,
    max_head: usize,
) -> Route {
    // Heap, not stack: a stack buffer would live in every connection
    // task's future for the task's whole life. Freed once classified. A
    // small buffer first (nearly every head fits it); a whole
    // `--max-header-bytes` one only for a head that fills it.
    let mut buf = vec![0u8; FIRST_PEEK.min(max_head + 1)];
    let mut n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => return Route::Close,
        Err(_) => return Route::TimedOut,
        Ok(Ok(n)) => n,
    };
    if n == buf.len() && n <= max_head && head_incomplete(&buf) {
        buf = vec![0u8; max_head + 1];
        n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return Route::Close,
            Ok(n) => n,
        };
    }
    let first = &buf[..n.min(super::h2::PREFACE.len())];
    if super::h2::PREFACE.starts_with(first) {
        return Route::H2;
    }
    match take(&buf[..n]) {
        Some(t) => Route::H1(Box::new(t)),
        None if n > max_head && head_incomplete(&buf[..n]) => Route::TooLarge,
        None => Route::Hyper,
    }
}

/// Whether `bytes` are an HTTP/1 request head that has not ended yet.
fn head_incomplete(bytes: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    matches!(
        httparse::Request::new(&mut headers).parse(bytes),
        Ok(httparse::Status::Partial)
    )
}

/// Answers a head past `--max-header-bytes` with a JSON 431 and closes.
pub(crate) async fn refuse_large_head(mut stream: TcpStream, max_head: usize) {
    let resp = super::json_error(
        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        &format!("the request head is larger than {max_head} bytes (--max-header-bytes)"),
    );
    let head = response_head(&resp, BodyFraming::Close(resp.body().bytes().len()));
    let _ = write_all(&mut stream, &[&head, resp.body().bytes()]).await;
    let _ = stream.shutdown().await;
}

/// A taken request, for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn taken_for_tests(head: &[u8]) -> Option<Box<Taken>> {
    take(head).map(Box::new)
}

/// The request head, if this path takes it (see the module doc).
fn take(bytes: &[u8]) -> Option<Taken> {
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
    if !target.starts_with(PREFIX) {
        return None;
    }
    let uri = Uri::try_from(target).ok()?;
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .version(Version::HTTP_11);
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        // A body on a GET, or a protocol switch: hyper's to frame.
        if name == http::header::CONTENT_LENGTH
            || name == http::header::TRANSFER_ENCODING
            || name == http::header::UPGRADE
            || name == http::header::EXPECT
        {
            return None;
        }
        builder = builder.header(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    let (parts, ()) = builder.body(()).ok()?.into_parts();
    Some(Taken { head_len, parts })
}

/// A stream's connection, shared by its task (writing through [`Shared`])
/// and the dispatcher (direct sends through its [`Wire`]).
#[derive(Debug)]
struct Socket(TcpStream);

impl Wire for Socket {
    /// The frame as one chunk, if the socket takes it now; the bytes it
    /// did not take of a partial write come back to be written next.
    fn send(&self, frame: &[u8]) -> Sent {
        let mut size = [0u8; FRAMING_HEAD_MAX];
        let parts = chunk(frame, &mut size);
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let slices = parts.map(IoSlice::new);
        match try_send(&self.0, &slices) {
            Ok(n) if n >= total => Sent::All,
            // Full (or failed: the stream's own write will say how).
            Ok(0) | Err(_) => Sent::Nothing,
            Ok(n) => {
                let mut rest = Vec::with_capacity(total - n);
                let mut skip = n;
                for p in parts {
                    let from = skip.min(p.len());
                    rest.extend_from_slice(&p[from..]);
                    skip -= from;
                }
                Sent::Part(Bytes::from(rest))
            }
        }
    }
}

/// Most bytes [`try_send`] gathers into one buffer.
const GATHER_MAX: usize = 16 * 1024;

thread_local! {
    /// [`try_send`]'s buffer, one per thread (it holds bytes only during a
    /// call).
    static GATHER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes `bufs` to `tcp` if it takes them now, as `try_write_vectored`
/// does, in one `send(2)` of one buffer: parts of up to [`GATHER_MAX`] bytes
/// in all are copied together first. A chunk of one frame is three parts
/// (size line, data, CRLF), and a vectored write of them costs the kernel
/// more than the copy (BENCHMARKS.md, "One send per write"); a stream's
/// batch of several frames comes framed already (`Stream::set_framing`).
fn try_send(tcp: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    match bufs {
        [one] => tcp.try_write(one),
        _ if bufs.iter().map(|b| b.len()).sum::<usize>() > GATHER_MAX => {
            tcp.try_write_vectored(bufs)
        }
        _ => GATHER.with_borrow_mut(|buf| {
            buf.clear();
            for b in bufs {
                buf.extend_from_slice(b);
            }
            tcp.try_write(buf)
        }),
    }
}

/// The task's writing half of a [`Socket`].
#[derive(Debug)]
struct Shared(Arc<Socket>);

impl Shared {
    fn tcp(&self) -> &TcpStream {
        &self.0 .0
    }
}

impl AsyncWrite for Shared {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.tcp().poll_write_ready(cx))?;
            match try_send(self.tcp(), bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(self.tcp()).shutdown(std::net::Shutdown::Write))
    }
}

/// Serves a taken request: the admission's answer, or the stream until it
/// ends.
pub(crate) async fn serve(
    stream: TcpStream,
    taken: Box<Taken>,
    peer: SocketAddr,
    subscribe: &Subscribe,
    write_timeout: Option<Duration>,
    conn: &Arc<Abort>,
) -> io::Result<()> {
    // The setup's state (head, admission, first write) lives in its own box,
    // freed once the stream is live: a task's future is allocated at the size
    // of its largest state, for the connection's whole life.
    let setup = async move {
        let mut stream = stream;
        // Consume exactly the head we peeked.
        let mut head = vec![0u8; taken.head_len];
        stream.read_exact(&mut head).await?;
        drop(head);
        let socket = Arc::new(Socket(stream));
        let io = TimedIo::new(Shared(socket.clone()), write_timeout, conn.clone());
        start(io, &taken, peer, subscribe, conn, Some(socket)).await
    };
    let Some((mut io, mut s)) = Box::pin(setup).await? else {
        return Ok(());
    };
    run(&mut io, &mut s).await
}

/// Serves a taken request that arrived over TLS (its head already read,
/// [`read_head`]), on records herald seals (`tls::Sealed`) or rustls's
/// connection: as [`serve`], without direct sends (the TLS session is the
/// task's alone).
pub(crate) async fn serve_tls<T: Watch>(
    tls: T,
    taken: Box<Taken>,
    peer: SocketAddr,
    subscribe: &Subscribe,
    write_timeout: Option<Duration>,
    conn: &Arc<Abort>,
) -> io::Result<()> {
    let io = TimedIo::new(tls, write_timeout, conn.clone());
    let setup = async move { start(io, &taken, peer, subscribe, conn, None).await };
    let Some((mut io, mut s)) = Box::pin(setup).await? else {
        return Ok(());
    };
    run(&mut io, &mut s).await
}

/// Decides a taken head; writes a refusal (`None`), or the stream's
/// response head with its first bytes, and hands the stream its wire (if
/// the transport has one).
async fn start<W: Watch>(
    mut io: TimedIo<W>,
    taken: &Taken,
    peer: SocketAddr,
    subscribe: &Subscribe,
    conn: &Arc<Abort>,
    wire: Option<Arc<Socket>>,
) -> io::Result<Option<(TimedIo<W>, Stream)>> {
    match subscribe.admit(&taken.parts, peer, conn, true) {
        Admission::Answer(resp) => {
            let head = response_head(&resp, BodyFraming::Close(resp.body().bytes().len()));
            write_all(&mut io, &[&head, resp.body().bytes()]).await?;
            let _ = io.shutdown().await;
            Ok(None)
        }
        Admission::Stream(resp, mut stream) => {
            let head = response_head(&resp, BodyFraming::Chunked);
            let first = match poll_fn(|cx| stream.poll_next(cx)).await {
                Next::Data(b) => b,
                _ => Bytes::new(),
            };
            let mut size = [0u8; FRAMING_HEAD_MAX];
            let [line, data, end] = chunk(&first, &mut size);
            // (An empty chunk would end the body: the head alone then.)
            let parts: &[&[u8]] = if first.is_empty() {
                &[&head]
            } else {
                &[&head, line, data, end]
            };
            if let Err(e) = write_all(&mut io, parts).await {
                stream.end(io_reason(&e));
                return Err(e);
            }
            if let Some(socket) = wire {
                stream.set_wire(socket);
            }
            stream.set_framing(&CHUNK);
            Ok(Some((io, stream)))
        }
    }
}

/// The live stream: whatever the core hands out, into the socket.
async fn run<W: Watch>(io: &mut TimedIo<W>, s: &mut Stream) -> io::Result<()> {
    loop {
        let next = poll_fn(|cx| match s.poll_next(cx) {
            Poll::Ready(next) => Poll::Ready(Ok(next)),
            Poll::Pending => io.get_mut().poll_gone(cx).map(Err),
        })
        .await;
        let written = match next {
            Ok(Next::Data(batch)) => write_chunk(io, &batch).await,
            Ok(Next::Wire(bytes)) => write_all(io, &[&bytes]).await,
            Ok(Next::End) => {
                // Once per stream: boxed, so it does not size every future.
                let r = Box::pin(write_all(io, &[b"0\r\n\r\n"])).await;
                let _ = Box::pin(io.shutdown()).await;
                return r;
            }
            Ok(Next::Abort) => return Ok(()),
            Err(reason) => {
                s.end(reason);
                return Ok(());
            }
        };
        if let Err(e) = written {
            s.end(io_reason(&e));
            return Err(e);
        }
    }
}

/// A stream's connection as its task sees it: written to, and watched for
/// the client going away.
pub(crate) trait Watch: AsyncWrite + Unpin {
    /// `Ready` with why the stream must end once the client has closed its
    /// side (or the connection failed), or has sent anything: an SSE client
    /// has nothing to send on a stream, so bytes are a protocol error, and
    /// reading and discarding them forever would let one client burn a core.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason>;
}

impl Watch for Shared {
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        let stream = self.tcp();
        let mut one = [0u8; 1];
        loop {
            match stream.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(CloseReason::Client),
                Poll::Ready(Ok(())) => match stream.try_read(&mut one) {
                    Ok(0) => return Poll::Ready(CloseReason::Client),
                    Ok(_) => return Poll::Ready(CloseReason::Protocol),
                    // Readiness cleared: poll again to register the waker.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(CloseReason::Client),
                },
            }
        }
    }
}

impl Watch for crate::tls::Sealed {
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        crate::tls::Sealed::poll_gone(self, cx)
    }
}

impl Watch for crate::tls::Tls {
    /// Application data after the head is the protocol error; a
    /// close_notify or the connection closing is the client gone.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        let mut one = [0u8; 1];
        let mut buf = ReadBuf::new(&mut one);
        match Pin::new(self).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(CloseReason::Client),
            Poll::Ready(Ok(())) => Poll::Ready(CloseReason::Protocol),
            Poll::Ready(Err(_)) => Poll::Ready(CloseReason::Client),
        }
    }
}

/// A TLS connection's first request head, read (not peeked: TLS has no
/// peek) by [`read_head`].
#[derive(Debug)]
pub(crate) enum Head {
    /// A subscribe head this path takes, and nothing after it.
    Taken(Box<Taken>),
    /// Anything else: the bytes read so far, for hyper to read first.
    Hyper(Vec<u8>),
    /// The peer closed (or the connection failed) before a whole head.
    Close,
    /// No whole head by the deadline.
    TimedOut,
}

/// Reads a TLS connection's first request head, until it is whole, longer
/// than `max_head` (hyper answers that), or `deadline`.
pub(crate) async fn read_head<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    deadline: tokio::time::Instant,
    max_head: usize,
) -> Head {
    let mut buf = Vec::with_capacity(FIRST_PEEK.min(max_head + 1));
    loop {
        if buf.len() == buf.capacity() {
            // Doubling; a head past `max_head` ends the loop below.
            buf.reserve(buf.len().max(1024));
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_) => return Head::TimedOut,
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Close,
            Ok(Ok(_)) => {}
        }
        if buf.len() > max_head || !head_incomplete(&buf) {
            break;
        }
    }
    match take(&buf) {
        Some(t) if t.head_len == buf.len() => Head::Taken(Box::new(t)),
        _ => Head::Hyper(buf),
    }
}

/// A connection whose first bytes were read already ([`Head::Hyper`]):
/// hyper reads them first, then the connection.
#[derive(Debug)]
pub(crate) struct Rewind<I> {
    read: Vec<u8>,
    at: usize,
    inner: I,
}

impl<I> Rewind<I> {
    pub(crate) fn new(read: Vec<u8>, inner: I) -> Self {
        Self { read, at: 0, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.read.len() {
            let n = buf.remaining().min(self.read.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.read[at..at + n]);
            self.at += n;
            if self.at == self.read.len() {
                self.read = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a response's body is framed on the wire.
#[derive(Debug, Clone, Copy)]
enum BodyFraming {
    /// An endless stream: chunked, connection kept.
    Chunked,
    /// A complete body of this length, then the connection closes.
    Close(usize),
}

/// The HTTP/1.1 response head for `resp` (its status and headers, a `date`,
/// and the body framing).
fn response_head<B>(resp: &Response<B>, framing: BodyFraming) -> Vec<u8> {
    use std::fmt::Write;
    let status = resp.status();
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    for (name, value) in resp.headers() {
        s.push_str(name.as_str());
        s.push_str(": ");
        s.push_str(&String::from_utf8_lossy(value.as_bytes()));
        s.push_str("\r\n");
    }
    let _ = write!(
        s,
        "date: {}\r\n",
        httpdate::fmt_http_date(SystemTime::now())
    );
    match framing {
        BodyFraming::Chunked => s.push_str("transfer-encoding: chunked\r\n\r\n"),
        BodyFraming::Close(n) => {
            let _ = write!(s, "content-length: {n}\r\nconnection: close\r\n\r\n");
        }
    }
    s.into_bytes()
}

/// Writes one chunk of the chunked encoding: size line, data, CRLF.
pub async fn write_chunk<W: AsyncWrite + Unpin>(io: &mut W, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut size = [0u8; FRAMING_HEAD_MAX];
    write_all(io, &chunk(data, &mut size)).await
}

/// One chunk of the chunked encoding around `data`: its size line (written
/// into `size`), `data`, CRLF. The one place a chunk is framed, with
/// [`CHUNK`] (the same, for a stream's batch framed as it is copied).
fn chunk<'a>(data: &'a [u8], size: &'a mut [u8; FRAMING_HEAD_MAX]) -> [&'a [u8]; 3] {
    let len = chunk_size_line(data.len(), size);
    let size: &'a [u8; FRAMING_HEAD_MAX] = size;
    [&size[..len], data, CHUNK.tail]
}

/// A chunk, as a stream's batch is framed (`Stream::set_framing`).
static CHUNK: Framing = Framing {
    head: chunk_size_line,
    tail: b"\r\n",
};

/// `{len:x}\r\n` into `out`; returns its length.
fn chunk_size_line(n: usize, out: &mut [u8; FRAMING_HEAD_MAX]) -> usize {
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
/// The socket is tried first (it is almost always writable); a write that
/// cannot proceed waits, bounded by the `TimedIo`'s write timeout.
async fn write_all<W: AsyncWrite + Unpin>(io: &mut W, parts: &[&[u8]]) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut written = 0;
    while written < total {
        let n = poll_fn(|cx| {
            let mut skip = written;
            let mut slices = [IoSlice::new(&[]); 4];
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
            Pin::new(&mut *io).poll_write_vectored(cx, &slices[..k])
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        written += n;
    }
    // A TLS session may hold records the socket did not take yet; a plain
    // socket has nothing to flush.
    poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines() {
        let mut b = [0u8; FRAMING_HEAD_MAX];
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

    #[test]
    fn takes_only_what_it_reads_like_hyper() {
        let t = take(b"GET /api/sse/subscribe/u?topic=a HTTP/1.1\r\nHost: x\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n")
            .unwrap();
        assert_eq!(t.parts.uri.path(), "/api/sse/subscribe/u");
        assert_eq!(t.parts.uri.query(), Some("topic=a"));
        assert_eq!(t.parts.headers.get_all("cookie").iter().count(), 2);
        for handed_over in [
            &b"HEAD /api/sse/subscribe/u HTTP/1.1\r\n\r\n"[..],
            b"GET /api/sse/subscribe/u HTTP/1.0\r\n\r\n",
            b"GET /api/publish HTTP/1.1\r\n\r\n",
            b"GET /api/sse/subscribe/u HTTP/1.1\r\ncontent-length: 1\r\n\r\nx",
            b"GET /api/sse/subscribe/u HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            b"GET /api/sse/subscribe/u HTTP/1.1\r\nhost: x\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(
                take(handed_over).is_none(),
                "{:?}",
                String::from_utf8_lossy(handed_over)
            );
        }
    }

    /// What `classify` decides for a first segment of `head`, with the
    /// default 16 KiB `--max-header-bytes`.
    async fn classified(head: &[u8]) -> Route {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(head).await.unwrap();
        // The whole head is in the server's receive queue before the peek.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        classify(&server, deadline, 16 * 1024).await
    }

    #[tokio::test]
    async fn a_long_head_is_read_whole_before_it_is_classified() {
        let head = |pad: usize| {
            format!(
                "GET /api/sse/subscribe/u HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
                "a".repeat(pad)
            )
        };
        // Under the first look, past it (the buffer grows), past the limit.
        assert!(matches!(
            classified(head(100).as_bytes()).await,
            Route::H1(_)
        ));
        assert!(matches!(
            classified(head(FIRST_PEEK).as_bytes()).await,
            Route::H1(_)
        ));
        assert!(matches!(
            classified(head(12 * 1024).as_bytes()).await,
            Route::H1(_)
        ));
        assert!(matches!(
            classified(head(20 * 1024).as_bytes()).await,
            Route::TooLarge
        ));
        // The h2 preface (4 KiB after it), or its first bytes: HTTP/2.
        let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        h2.resize(FIRST_PEEK, 0);
        assert!(matches!(classified(&h2).await, Route::H2));
        assert!(matches!(classified(b"PRI * HT").await, Route::H2));
        // Neither: hyper's.
        assert!(matches!(
            classified(b"PRI * HTTP/1.1\r\n\r\n").await,
            Route::Hyper
        ));
    }

    #[test]
    fn response_heads() {
        let mut r = Response::new(());
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("text/event-stream"),
        );
        let h = String::from_utf8(response_head(&r, BodyFraming::Chunked)).unwrap();
        assert!(
            h.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ndate: "),
            "{h}"
        );
        assert!(h.ends_with("\r\ntransfer-encoding: chunked\r\n\r\n"), "{h}");
        *r.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
        let h = String::from_utf8(response_head(&r, BodyFraming::Close(12))).unwrap();
        assert!(h.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{h}");
        assert!(
            h.ends_with("content-length: 12\r\nconnection: close\r\n\r\n"),
            "{h}"
        );
    }
}
