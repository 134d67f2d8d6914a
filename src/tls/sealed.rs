//! TLS 1.3 connections after their handshake (and, for an HTTP/1.1 stream,
//! its request head): records sealed and opened by herald with rustls's own
//! cipher for the suite (`--tls-own-records`, on by default).
//!
//! Why (measured, BENCHMARKS.md "Every transport"): rustls's buffered
//! connection keeps, for a connection's whole life, its read buffer (4 KiB,
//! never shrunk below one read), its session state (~2.3 KB) and both
//! directions' keys: 8 of an idle TLS stream's 13 KB. So once the handshake
//! is done herald takes the connection's traffic secrets from rustls
//! (`dangerous_extract_secrets`, the entry point rustls offers for kernel
//! TLS) and keeps the socket and the suite's encrypter (and, for h2, its
//! decrypter), built by the suite's own AEAD
//! (`Tls13AeadAlgorithm::encrypter`): herald holds no cipher code, only the
//! record framing around it.
//!
//! - Writes: what a write is handed is sealed into records of at most
//!   16 KiB (one record for a typical batch) and written in one syscall; the
//!   sealed bytes are held only until the socket takes them, so an idle
//!   stream holds no buffer.
//! - Reads, on an HTTP/1.1 stream: an SSE client has nothing to send after
//!   its head. The first bytes it sends end the stream; they are decrypted
//!   only to name why (a decrypter built then, not kept): an alert
//!   (close_notify) or a key update is the client leaving (herald does not
//!   follow key updates; the client reconnects and resumes from its
//!   `Last-Event-ID`), anything else a protocol error.
//! - Reads, on an HTTP/2 connection ([`Mode::Duplex`], hyper on top): each
//!   record is read whole into a buffer held only until it is decrypted and
//!   read (an idle connection holds none), opened in place by the suite's
//!   decrypter. A close_notify is the end of the stream of bytes; any other
//!   alert, a key update, or a record that does not open is an error that
//!   closes the connection (its clients reconnect).
//! - Until then, rustls reads the connection one record at a time and
//!   herald keeps a copy of the record being read ([`RecordReads`]): when
//!   the secrets leave rustls, what it opened but was not read yet, and the
//!   part of a record it holds unopened, go on to herald's reader.
//! - A clean end writes a close_notify alert, then FIN.
//! - A key seals at most the suite's confidentiality limit of records (2^24
//!   for AES-GCM): the stream ends before it, and the client reconnects.
//! - TLS 1.2, or a connection with handshake records still to send or
//!   plaintext not yet read, stays on rustls's connection ([`seal`] hands
//!   it back).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustls::crypto::cipher::{
    InboundOpaqueMessage, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::{ConnectionTrafficSecrets, ContentType, ProtocolVersion, SupportedCipherSuite};
use rustls::{ServerConnection, Tls13CipherSuite};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::stream::CloseReason;

/// Largest plaintext in one record (TLS's limit, 2^14).
const MAX_RECORD: usize = 16 * 1024;

/// Most plaintext sealed per write call: four full records.
const MAX_WRITE: usize = 4 * MAX_RECORD;

/// Bytes of the record header.
const HEADER: usize = 5;

/// Bytes read to tell why a client sent something: an alert or a key
/// update record (24-27 bytes) fits.
const PEEK: usize = 64;

/// Largest record body a peer may send (TLS 1.3: 2^14 plaintext + 256).
const MAX_CIPHERTEXT: usize = MAX_RECORD + 256;

/// Least a read asks the socket for (records follow one another).
const READ_CHUNK: usize = 2048;

/// Empty application-data records accepted in a row (as rustls does: a
/// peer must not make herald spin on nothing).
const MAX_EMPTY: u8 = 32;

/// What the connection does after its secrets leave rustls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// An HTTP/1.1 SSE stream: writes only; what the client sends ends it.
    Stream,
    /// Reads and writes (HTTP/2 through hyper).
    Duplex,
}

/// The socket as rustls reads it until [`seal`]: never past the end of the
/// record being read, whose bytes so far are kept (`partial`), so that the
/// part of a record rustls holds unopened when its secrets leave is known.
/// Off once a connection stays on rustls. Writes go straight to the socket.
pub(crate) struct RecordReads {
    tcp: TcpStream,
    on: bool,
    /// The record header read so far, and what is left of the record's body.
    head: [u8; HEADER],
    have: usize,
    left: usize,
    /// The bytes of the record being read, as handed to rustls.
    partial: Vec<u8>,
}

impl RecordReads {
    /// `on`: the connection may leave rustls (`--tls-own-records`).
    pub(crate) fn new(tcp: TcpStream, on: bool) -> Self {
        Self {
            tcp,
            on,
            head: [0; HEADER],
            have: 0,
            left: 0,
            partial: Vec::new(),
        }
    }

    /// rustls keeps the connection: reads go straight to the socket (one
    /// read for whatever is there, no copy kept).
    fn off(&mut self) {
        self.on = false;
        self.partial = Vec::new();
    }
}

impl AsyncRead for RecordReads {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.on {
            return Pin::new(&mut this.tcp).poll_read(cx, buf);
        }
        let limit = match this.left {
            0 => HEADER - this.have,
            left => left,
        };
        let k = limit.min(buf.remaining());
        if k == 0 {
            return Poll::Ready(Ok(()));
        }
        let dst = buf.initialize_unfilled_to(k);
        let mut part = ReadBuf::new(dst);
        ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut part))?;
        let n = part.filled().len();
        this.partial.extend_from_slice(&dst[..n]);
        if this.left == 0 {
            this.head[this.have..this.have + n].copy_from_slice(&dst[..n]);
            this.have += n;
            if this.have == HEADER {
                this.left = usize::from(u16::from_be_bytes([this.head[3], this.head[4]]));
                this.have = 0;
            }
        } else {
            this.left -= n;
        }
        if this.left == 0 && this.have == 0 {
            // A whole record: rustls opens it.
            this.partial.clear();
        }
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for RecordReads {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// A TLS connection as herald's server reads it.
pub(crate) type Tls = TlsStream<RecordReads>;

/// A TLS 1.3 connection whose records herald seals (see the module docs).
pub(crate) struct Sealed {
    tcp: TcpStream,
    tx: Box<dyn MessageEncrypter>,
    /// The next record's sequence number, and the first it may not use.
    seq: u64,
    limit: u64,
    /// Sealed records not yet taken by the socket, and how much of them was.
    out: Vec<u8>,
    sent: usize,
    /// To read the one record a leaving client sends ([`Mode::Stream`]):
    /// boxed, used once.
    rx: Option<Box<Rx>>,
    /// What reads the connection ([`Mode::Duplex`]).
    reader: Option<Box<Reader>>,
    /// The close_notify is sealed (shutdown started).
    closing: bool,
}

struct Rx {
    suite: &'static Tls13CipherSuite,
    seq: u64,
    secrets: ConnectionTrafficSecrets,
    /// The client sent something after its head before the handover (read
    /// by rustls): the stream ends at once, for this reason.
    gone: Option<CloseReason>,
}

/// The read side of a [`Mode::Duplex`] connection.
struct Reader {
    open: Box<dyn MessageDecrypter>,
    seq: u64,
    /// Received bytes not yet a whole record (released once empty).
    sealed: Vec<u8>,
    /// Opened bytes not yet read, and how many were (released once read).
    plain: Vec<u8>,
    at: usize,
    empty_in_a_row: u8,
    /// The client's close_notify arrived: reads see the end.
    closed: bool,
}

/// What [`seal`] made of a connection (returned once, moved on at once:
/// its size is no stream's).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Sealing {
    Sealed(Sealed),
    /// Not a TLS 1.3 connection ready for it: rustls keeps serving it.
    Kept(Tls),
    /// rustls refused the secrets (a bug, not the client's doing): the
    /// connection is dropped.
    Failed(rustls::Error),
}

/// A connection that stays on rustls: reads go straight to the socket.
pub(crate) fn keep(mut tls: Tls) -> Tls {
    tls.get_mut().0.off();
    tls
}

/// Takes a TLS 1.3 connection off rustls's buffered connection (module
/// docs); what cannot be is handed back ([`keep`]).
pub(crate) fn seal(mut tls: Tls, mode: Mode) -> Sealing {
    if !tls.get_ref().0.on {
        return Sealing::Kept(tls);
    }
    let conn: &ServerConnection = tls.get_ref().1;
    let suite = match conn.negotiated_cipher_suite() {
        Some(SupportedCipherSuite::Tls13(suite))
            if conn.protocol_version() == Some(ProtocolVersion::TLSv1_3)
                && !conn.wants_write()
                && !conn.is_handshaking() =>
        {
            suite
        }
        _ => return Sealing::Kept(keep(tls)),
    };
    // What rustls opened and nobody read yet: hyper reads it first.
    let (read, closed) = opened_unread(tls.get_mut().1);
    let (io, conn) = tls.into_inner();
    match take_secrets(io, conn, suite, mode, read, closed) {
        Ok(sealed) => Sealing::Sealed(sealed),
        Err(e) => Sealing::Failed(e),
    }
}

/// The connection's secrets out of rustls, into herald's record layer.
fn take_secrets(
    io: RecordReads,
    conn: ServerConnection,
    suite: &'static Tls13CipherSuite,
    mode: Mode,
    read: Vec<u8>,
    closed: bool,
) -> Result<Sealed, rustls::Error> {
    let secrets = conn.dangerous_extract_secrets()?;
    let (seq, tx) = secrets.tx;
    let (key, iv) = key_iv(tx)?;
    let tx = suite.aead_alg.encrypter(key, iv);
    let (rx_seq, rx) = secrets.rx;
    let (rx, reader) = match mode {
        Mode::Stream => (
            Some(Box::new(Rx {
                suite,
                seq: rx_seq,
                secrets: rx,
                // Anything after the head, read before the handover,
                // already tells why the stream ends.
                gone: match (closed, read.is_empty()) {
                    (_, false) => Some(CloseReason::Protocol),
                    (true, true) => Some(CloseReason::Client),
                    (false, true) => None,
                },
            })),
            None,
        ),
        Mode::Duplex => {
            let (key, iv) = key_iv(rx)?;
            let reader = Reader {
                open: suite.aead_alg.decrypter(key, iv),
                seq: rx_seq,
                // The part of a record rustls held unopened.
                sealed: io.partial,
                plain: read,
                at: 0,
                empty_in_a_row: 0,
                closed,
            };
            (None, Some(Box::new(reader)))
        }
    };
    Ok(Sealed {
        tcp: io.tcp,
        tx,
        seq,
        limit: suite.common.confidentiality_limit,
        out: Vec::new(),
        sent: 0,
        rx,
        reader,
        closing: false,
    })
}

/// The plaintext rustls opened that was not read yet, and whether the
/// client's close_notify came.
fn opened_unread(conn: &mut ServerConnection) -> (Vec<u8>, bool) {
    use std::io::Read as _;
    let mut read = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        match conn.reader().read(&mut chunk) {
            Ok(0) => return (read, true),
            Ok(n) => read.extend_from_slice(&chunk[..n]),
            // WouldBlock: nothing more (or the peer closed uncleanly,
            // which the socket will tell again).
            Err(_) => return (read, false),
        }
    }
}

/// A suite's key and IV, whichever AEAD it is.
fn key_iv(
    secrets: ConnectionTrafficSecrets,
) -> Result<(rustls::crypto::cipher::AeadKey, rustls::crypto::cipher::Iv), rustls::Error> {
    match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((key, iv)),
        _ => Err(rustls::Error::General("unknown AEAD".into())),
    }
}

fn tls_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {what}"))
}

impl Sealed {
    /// Seals `plain` (at most one record's worth) as one record of `typ`,
    /// appended to what is waiting for the socket.
    fn seal_record(&mut self, typ: ContentType, plain: OutboundChunks<'_>) -> io::Result<()> {
        if self.seq >= self.limit {
            return Err(io::Error::other(
                "the TLS key's record limit is reached: the stream ends (the client reconnects)",
            ));
        }
        let msg = OutboundPlainMessage {
            typ,
            version: ProtocolVersion::TLSv1_2,
            payload: plain,
        };
        let record = self.tx.encrypt(msg, self.seq).map_err(io::Error::other)?;
        self.seq += 1;
        if self.out.is_empty() {
            self.out = record.encode();
        } else {
            self.out.extend_from_slice(&record.encode());
        }
        Ok(())
    }

    /// Writes what is sealed; `Ready(Ok)` once the socket has all of it (the
    /// buffer is then released: an idle stream holds none).
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        if !self.out.is_empty() {
            self.out = Vec::new();
            self.sent = 0;
        }
        Poll::Ready(Ok(()))
    }

    /// `Ready` with why the stream ends once the client closed the
    /// connection or sent anything (module docs).
    pub(crate) fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<CloseReason> {
        if let Some(why) = self.rx.as_ref().and_then(|rx| rx.gone) {
            return Poll::Ready(why);
        }
        let mut buf = [0u8; PEEK];
        loop {
            match self.tcp.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(CloseReason::Client),
                Poll::Ready(Ok(())) => match self.tcp.try_read(&mut buf) {
                    Ok(0) => return Poll::Ready(CloseReason::Client),
                    Ok(n) => return Poll::Ready(self.why(&mut buf[..n])),
                    // Readiness cleared: poll again to register the waker.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(CloseReason::Client),
                },
            }
        }
    }

    /// What the client's first bytes after its head were: an alert or a
    /// key update is it leaving, anything else a protocol error.
    fn why(&mut self, bytes: &mut [u8]) -> CloseReason {
        let Some(rx) = self.rx.take() else {
            return CloseReason::Protocol;
        };
        let [typ, _, _, hi, lo, ..] = *bytes else {
            return CloseReason::Protocol;
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if ContentType::from(typ) != ContentType::ApplicationData || HEADER + len > bytes.len() {
            return CloseReason::Protocol;
        }
        let Ok((key, iv)) = key_iv(rx.secrets) else {
            return CloseReason::Protocol;
        };
        let mut rx_dec = rx.suite.aead_alg.decrypter(key, iv);
        let msg = InboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            &mut bytes[HEADER..HEADER + len],
        );
        match rx_dec.decrypt(msg, rx.seq) {
            Ok(plain) if matches!(plain.typ, ContentType::Alert | ContentType::Handshake) => {
                CloseReason::Client
            }
            _ => CloseReason::Protocol,
        }
    }
}

impl Reader {
    /// Hands out opened bytes into `buf`; true if it got any.
    fn hand_out(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.at >= self.plain.len() {
            return false;
        }
        let n = buf.remaining().min(self.plain.len() - self.at);
        buf.put_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        if self.at == self.plain.len() {
            self.plain = Vec::new();
            self.at = 0;
        }
        true
    }

    /// Opens the first record in `sealed` if it is whole: `Ok(false)` if it
    /// is not yet.
    fn open_one(&mut self) -> io::Result<bool> {
        let [typ, _, _, hi, lo, ..] = self.sealed[..] else {
            return Ok(false);
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len > MAX_CIPHERTEXT {
            return Err(tls_error("record too large"));
        }
        if ContentType::from(typ) != ContentType::ApplicationData {
            return Err(tls_error("unexpected record type after the handshake"));
        }
        if self.sealed.len() < HEADER + len {
            return Ok(false);
        }
        let msg = InboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            &mut self.sealed[HEADER..HEADER + len],
        );
        let plain = self
            .open
            .decrypt(msg, self.seq)
            .map_err(|_| tls_error("a record did not decrypt"))?;
        self.seq += 1;
        match plain.typ {
            ContentType::ApplicationData if plain.payload.is_empty() => {
                self.empty_in_a_row += 1;
                if self.empty_in_a_row > MAX_EMPTY {
                    return Err(tls_error("too many empty records"));
                }
            }
            ContentType::ApplicationData => {
                self.empty_in_a_row = 0;
                self.plain.extend_from_slice(plain.payload);
            }
            // Level, then description: close_notify is 0.
            ContentType::Alert if plain.payload.get(1) == Some(&0) => self.closed = true,
            ContentType::Alert => return Err(tls_error("the client sent an alert")),
            ContentType::Handshake => {
                return Err(tls_error(
                    "post-handshake message (key update): not followed, the connection closes",
                ))
            }
            _ => return Err(tls_error("unexpected inner record type")),
        }
        self.sealed.drain(..HEADER + len);
        if self.sealed.is_empty() {
            self.sealed = Vec::new();
        }
        Ok(true)
    }
}

impl AsyncRead for Sealed {
    /// [`Mode::Duplex`]: records read whole, opened, handed out (module
    /// docs). A [`Mode::Stream`] connection is never read this way.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(r) = this.reader.as_deref_mut() else {
            return Poll::Ready(Err(io::Error::other("a sealed stream is not read")));
        };
        loop {
            if r.hand_out(buf) || r.closed {
                return Poll::Ready(Ok(()));
            }
            if r.open_one()? {
                continue;
            }
            let need = match r.sealed[..] {
                [_, _, _, hi, lo, ..] => HEADER + usize::from(u16::from_be_bytes([hi, lo])),
                _ => HEADER,
            };
            match this.tcp.poll_read_ready(cx) {
                Poll::Pending => {
                    if r.sealed.is_empty() {
                        // Idle: hold no buffer.
                        r.sealed = Vec::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            r.sealed.reserve((need - r.sealed.len()).max(READ_CHUNK));
            match this.tcp.try_read_buf(&mut r.sealed) {
                Ok(0) if r.sealed.is_empty() => {
                    // The client closed without a close_notify: the end all
                    // the same (HTTP/2 frames its own ends).
                    r.closed = true;
                }
                Ok(0) => return Poll::Ready(Err(tls_error("connection closed inside a record"))),
                Ok(_) => {}
                // Readiness cleared: polled again above.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Sealed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// Seals up to [`MAX_WRITE`] bytes of `bufs` once what was sealed
    /// before is on the socket, and starts writing them. They count as
    /// written when sealed; `poll_flush` waits for the socket.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        let mut parts: [&[u8]; 8] = [&[]; 8];
        let mut k = 0;
        for b in bufs.iter().filter(|b| !b.is_empty()).take(parts.len()) {
            parts[k] = b;
            k += 1;
        }
        let parts = &parts[..k];
        let total = parts.iter().map(|p| p.len()).sum::<usize>().min(MAX_WRITE);
        let mut start = 0;
        while start < total {
            let end = (start + MAX_RECORD).min(total);
            let chunks = OutboundChunks::Multiple {
                chunks: parts,
                start,
                end,
            };
            this.seal_record(ContentType::ApplicationData, chunks)?;
            start = end;
        }
        // Start the write now; what the socket does not take waits for the
        // next write or the flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_send(cx)
    }

    /// A close_notify alert, then FIN.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            ready!(this.poll_send(cx))?;
            this.closing = true;
            // Level warning (1), description close_notify (0).
            this.seal_record(ContentType::Alert, OutboundChunks::Single(&[1, 0]))?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::client::TlsStream as ClientStream;

    use super::*;

    const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");

    /// herald's server configuration, and a client's at `version` trusting
    /// the test CA.
    pub(super) fn configs(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (Arc<rustls::ServerConfig>, rustls::ClientConfig) {
        let server = crate::tls::load(
            &format!("{KEYS}/tls-cert.pem"),
            &format!("{KEYS}/tls-key.pem"),
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for der in
            crate::tls::load_certs(std::path::Path::new(&format!("{KEYS}/tls-ca.pem"))).unwrap()
        {
            roots.add(der.into()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (server, client)
    }

    /// A real handshake over loopback at `version`: the server's side (its
    /// head read, as herald reads it) and the client's.
    async fn pair(
        version: &'static rustls::SupportedProtocolVersion,
        request: &'static [u8],
    ) -> (Tls, ClientStream<TcpStream>) {
        let (server, client) = configs(version);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut c = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .unwrap();
            c.write_all(request).await.unwrap();
            c.flush().await.unwrap();
            c
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut s = tokio_rustls::TlsAcceptor::from(server)
                .accept(RecordReads::new(tcp, true))
                .await
                .unwrap();
            let mut head = [0u8; 18];
            s.read_exact(&mut head).await.unwrap();
            s
        };
        let (c, s) = tokio::join!(connect, accept);
        (s, c)
    }

    async fn sealed() -> (Sealed, ClientStream<TcpStream>) {
        let (s, c) = pair(&rustls::version::TLS13, b"GET / HTTP/1.1\r\n\r\n").await;
        match seal(s, Mode::Stream) {
            Sealing::Sealed(s) => (s, c),
            Sealing::Kept(_) => panic!("a TLS 1.3 connection was kept on rustls"),
            Sealing::Failed(e) => panic!("{e}"),
        }
    }

    fn gone(s: &mut Sealed) -> Poll<CloseReason> {
        s.poll_gone(&mut Context::from_waker(std::task::Waker::noop()))
    }

    /// What herald seals, a rustls client reads: small writes, vectored
    /// writes, a write of several records; the clean end is a close_notify
    /// (the client sees an orderly end, not a truncation).
    #[tokio::test]
    async fn a_rustls_client_reads_what_herald_seals() {
        let (mut s, mut c) = sealed().await;
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let parts = [
            IoSlice::new(b"5\r\n"),
            IoSlice::new(b"hello"),
            IoSlice::new(b"\r\n"),
        ];
        let n = s.write_vectored(&parts).await.unwrap();
        assert_eq!(n, 10, "a vectored write is sealed whole");
        s.flush().await.unwrap();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        s.write_all(&big).await.unwrap();
        s.flush().await.unwrap();
        assert!(s.out.capacity() == 0, "nothing held once written");
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        let mut want = b"HTTP/1.1 200 OK\r\n\r\n5\r\nhello\r\n".to_vec();
        want.extend_from_slice(&big);
        assert_eq!(got.len(), want.len());
        assert!(got == want);
    }

    /// The client's close_notify is it leaving; application data after the
    /// head is a protocol error; a FIN is the client leaving.
    #[tokio::test]
    async fn what_a_client_sends_names_why_the_stream_ends() {
        let (mut s, mut c) = sealed().await;
        assert!(gone(&mut s).is_pending());
        c.shutdown().await.unwrap(); // close_notify, then FIN
        let why = std::future::poll_fn(|cx| s.poll_gone(cx)).await;
        assert_eq!(why, CloseReason::Client);

        let (mut s, mut c) = sealed().await;
        c.write_all(b"GET /again HTTP/1.1\r\n\r\n").await.unwrap();
        c.flush().await.unwrap();
        let why = std::future::poll_fn(|cx| s.poll_gone(cx)).await;
        assert_eq!(why, CloseReason::Protocol);

        let (mut s, c) = sealed().await;
        let (tcp, _) = c.into_inner();
        drop(tcp);
        let why = std::future::poll_fn(|cx| s.poll_gone(cx)).await;
        assert_eq!(why, CloseReason::Client);
    }

    /// Bytes after the head that rustls opened before the handover end the
    /// stream at once as a protocol error (they are not lost).
    #[tokio::test]
    async fn bytes_after_the_head_read_before_the_handover_end_the_stream() {
        let (s, _c) = pair(&rustls::version::TLS13, b"GET / HTTP/1.1\r\n\r\njunk").await;
        let Sealing::Sealed(mut s) = seal(s, Mode::Stream) else {
            panic!("not sealed");
        };
        assert_eq!(gone(&mut s), Poll::Ready(CloseReason::Protocol));
    }

    /// Junk that is not a record, or a forged record, is a protocol error.
    #[tokio::test]
    async fn forged_records_are_protocol_errors() {
        for junk in [
            &b"\x17\x03\x03\x00\x13abcdefghijklmnopqrs"[..],
            b"\x15\x03\x03",
            b"x",
        ] {
            let (mut s, c) = sealed().await;
            let (mut tcp, _) = c.into_inner();
            tcp.write_all(junk).await.unwrap();
            let why = std::future::poll_fn(|cx| s.poll_gone(cx)).await;
            assert_eq!(why, CloseReason::Protocol, "{junk:?}");
        }
    }

    /// TLS 1.2 stays on rustls's connection.
    #[tokio::test]
    async fn tls12_is_kept_on_rustls() {
        let (s, _c) = pair(&rustls::version::TLS12, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(matches!(seal(s, Mode::Stream), Sealing::Kept(_)));
    }

    /// At the key's record limit the stream ends instead of sealing more.
    #[tokio::test]
    async fn the_record_limit_ends_the_stream() {
        let (mut s, _c) = sealed().await;
        s.limit = s.seq + 1;
        s.write_all(b"one").await.unwrap();
        let e = s.write_all(b"two").await.unwrap_err();
        assert!(e.to_string().contains("record limit"), "{e}");
    }
}

#[cfg(test)]
mod duplex_tests {
    use std::io::{Read as _, Write as _};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::tests::configs;
    use super::*;

    /// A client (rustls's own, blocking, on its thread) whose first bytes
    /// leave in the same write as its handshake's Finished, so they reach
    /// herald in the same segment (all but the last `hold_back` bytes of
    /// that write, which follow 100 ms later); then whatever `after` does.
    async fn duplex(
        first: &'static [u8],
        hold_back: usize,
        after: impl FnOnce(&mut rustls::ClientConnection, &mut std::net::TcpStream) + Send + 'static,
    ) -> (Sealing, std::thread::JoinHandle<()>) {
        let (server, client) = configs(&rustls::version::TLS13);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut conn = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
            let mut sock = std::net::TcpStream::connect(addr).unwrap();
            // Written before the handshake ends: sent right after Finished.
            conn.writer().write_all(first).unwrap();
            // ClientHello out; the server's flight in, up to its Finished:
            // the client's Finished is then queued, not sent.
            while conn.wants_write() {
                conn.write_tls(&mut sock).unwrap();
            }
            while conn.is_handshaking() {
                conn.read_tls(&mut sock).unwrap();
                conn.process_new_packets().unwrap();
            }
            let mut flight = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut flight).unwrap();
            }
            let (now, later) = flight.split_at(flight.len() - hold_back);
            sock.write_all(now).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
            sock.write_all(later).unwrap();
            after(&mut conn, &mut sock);
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = tokio_rustls::TlsAcceptor::from(server)
            .accept(RecordReads::new(tcp, true))
            .await
            .unwrap();
        (seal(tls, Mode::Duplex), client)
    }

    fn sealed(s: Sealing) -> Sealed {
        match s {
            Sealing::Sealed(s) => s,
            Sealing::Kept(_) => panic!("kept on rustls"),
            Sealing::Failed(e) => panic!("{e}"),
        }
    }

    /// Both ways through herald's records: what the client sent with its
    /// Finished (rustls read no part of it), a message of several records,
    /// herald's answer; the client's close_notify is the end; nothing is
    /// held while idle.
    #[tokio::test]
    async fn a_duplex_connection_reads_and_writes_records() {
        let big: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        let sent = big.clone();
        let (s, client) = duplex(b"PRI * HTTP/2.0\r\n", 0, move |conn, sock| {
            conn.writer().write_all(&sent).unwrap();
            while conn.wants_write() {
                conn.write_tls(sock).unwrap();
            }
            let mut got = Vec::new();
            while got.len() < 5 {
                conn.complete_io(sock).unwrap();
                let mut b = [0u8; 64];
                if let Ok(n) = conn.reader().read(&mut b) {
                    got.extend_from_slice(&b[..n]);
                }
            }
            assert_eq!(got, b"hello");
            conn.send_close_notify();
            while conn.wants_write() {
                conn.write_tls(sock).unwrap();
            }
        })
        .await;
        let mut s = sealed(s);
        let mut got = vec![0u8; 16];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PRI * HTTP/2.0\r\n");
        let mut got = vec![0u8; big.len()];
        s.read_exact(&mut got).await.unwrap();
        assert!(got == big, "50,000 bytes over several records");
        let r = s.reader.as_ref().unwrap();
        assert_eq!(r.plain.capacity(), 0, "all read: no buffer");
        s.write_all(b"hello").await.unwrap();
        s.flush().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "close_notify: the end");
        client.join().unwrap();
    }

    /// The client's first record arrives in two parts, the first with its
    /// Finished: rustls holds that part unopened when the secrets leave,
    /// and herald's reader opens the whole record.
    #[tokio::test]
    async fn a_record_rustls_held_in_part_is_read_whole() {
        let (s, client) = duplex(b"GET /api/sse/subscribe/u over h2", 7, |_, _| {
            std::thread::sleep(std::time::Duration::from_millis(200));
        })
        .await;
        let mut s = sealed(s);
        assert!(
            s.reader.as_ref().unwrap().sealed.len() > HEADER,
            "part of a record"
        );
        let mut got = [0u8; 32];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET /api/sse/subscribe/u over h2");
        client.join().unwrap();
    }

    /// While nothing arrives, the reader holds no buffer.
    #[tokio::test]
    async fn an_idle_duplex_connection_holds_no_buffer() {
        let (s, client) = duplex(b"ping", 0, |_, _| {
            std::thread::sleep(std::time::Duration::from_millis(300));
        })
        .await;
        let mut s = sealed(s);
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(50), s.read(&mut [0u8; 8])).await;
        assert!(waited.is_err(), "nothing to read yet");
        let r = s.reader.as_ref().unwrap();
        assert_eq!((r.sealed.capacity(), r.plain.capacity()), (0, 0));
        client.join().unwrap();
    }

    /// A key update, a forged record, an oversized record and a plaintext
    /// alert each end the connection with an error, never a hang or a panic.
    #[tokio::test]
    async fn what_herald_cannot_follow_is_an_error() {
        let (s, client) = duplex(b"x", 0, |conn, sock| {
            conn.refresh_traffic_keys().unwrap();
            conn.writer().write_all(b"after").unwrap();
            while conn.wants_write() {
                conn.write_tls(sock).unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        })
        .await;
        let mut s = sealed(s);
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.unwrap();
        let e = s.read(&mut [0u8; 8]).await.unwrap_err();
        assert!(e.to_string().contains("key update"), "{e}");
        client.join().unwrap();

        for junk in [
            &b"\x17\x03\x03\x00\x13abcdefghijklmnopqrs"[..],
            b"\x17\x03\x03\xff\xff",
            b"\x15\x03\x03\x00\x02\x01\x00",
        ] {
            let (s, client) = duplex(b"x", 0, move |_, sock| {
                sock.write_all(junk).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(200));
            })
            .await;
            let mut s = sealed(s);
            let mut one = [0u8; 1];
            s.read_exact(&mut one).await.unwrap();
            let e = s.read(&mut [0u8; 8]).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{junk:?}: {e}");
            client.join().unwrap();
        }
    }

    /// rustls reads the socket a record at a time until the secrets leave:
    /// two records written at once are read as header, body, header, body.
    #[tokio::test]
    async fn record_reads_stop_at_each_record() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        c.write_all(b"\x17\x03\x03\x00\x03abc\x17\x03\x03\x00\x02de")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut r = RecordReads::new(tcp, true);
        let mut lens = Vec::new();
        let mut buf = [0u8; 64];
        for _ in 0..4 {
            lens.push(r.read(&mut buf).await.unwrap());
        }
        assert_eq!(lens, [5, 3, 5, 2]);
        assert_eq!(&buf[..2], b"de");
        // Off (the connection stays on rustls): whatever is there, at once.
        c.write_all(b"\x17\x03\x03\x00\x01f\x17\x03\x03\x00\x01g")
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        r.off();
        assert_eq!(r.read(&mut buf).await.unwrap(), 12);
        assert!(r.partial.capacity() == 0, "no copy kept");
    }
}
