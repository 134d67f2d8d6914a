//! A TLS 1.3 stream after its request head, its records sealed by herald
//! with rustls's own record encrypter.
//!
//! Why (measured, BENCHMARKS.md "Every transport"): rustls's buffered
//! connection keeps, for a stream's whole life, its read buffer (4 KiB, never
//! shrunk below one read), its session state (~2.3 KB) and both directions'
//! keys: 8 of an idle TLS stream's 13 KB. An SSE stream only writes once its
//! head is read, so herald then takes the connection's traffic secrets from
//! rustls (`dangerous_extract_secrets`, the entry point rustls offers for
//! kernel TLS) and keeps the socket and one encrypter for the negotiated
//! suite, built by the suite's own AEAD (`Tls13AeadAlgorithm::encrypter`):
//! herald holds no cipher code, only the record framing around it.
//!
//! - Writes: what a write is handed is sealed into records of at most
//!   16 KiB (one record for a typical batch) and written in one syscall; the
//!   sealed bytes are held only until the socket takes them, so an idle
//!   stream holds no buffer.
//! - Reads: an SSE client has nothing to send after its head. The first
//!   bytes it sends end the stream; they are decrypted only to name why (a
//!   decrypter built then, not kept): an alert (close_notify) or a key
//!   update is the client leaving (herald does not follow key updates; the
//!   client reconnects and resumes from its `Last-Event-ID`), anything else
//!   a protocol error.
//! - A clean end writes a close_notify alert, then FIN.
//! - A key seals at most the suite's confidentiality limit of records (2^24
//!   for AES-GCM): the stream ends before it, and the client reconnects.
//! - TLS 1.2, or a connection with handshake records still to send, stays
//!   on rustls's connection ([`seal`] hands it back).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rustls::crypto::cipher::{
    InboundOpaqueMessage, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::{ConnectionTrafficSecrets, ContentType, ProtocolVersion, SupportedCipherSuite};
use rustls::{ServerConnection, Tls13CipherSuite};
use tokio::io::AsyncWrite;
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
    /// To read the one record a leaving client sends: boxed, used once.
    rx: Option<Box<Rx>>,
    /// The close_notify is sealed (shutdown started).
    closing: bool,
}

struct Rx {
    suite: &'static Tls13CipherSuite,
    seq: u64,
    secrets: ConnectionTrafficSecrets,
}

/// What [`seal`] made of a connection (returned once, moved on at once:
/// its size is no stream's).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Sealing {
    Sealed(Sealed),
    /// Not a TLS 1.3 connection ready for it: rustls keeps serving it.
    Kept(TlsStream<TcpStream>),
    /// rustls refused the secrets (a bug, not the client's doing): the
    /// connection is dropped.
    Failed(rustls::Error),
}

/// Takes a TLS 1.3 connection off rustls's buffered connection (module docs).
pub(crate) fn seal(tls: TlsStream<TcpStream>) -> Sealing {
    let conn: &ServerConnection = tls.get_ref().1;
    let suite = match conn.negotiated_cipher_suite() {
        Some(SupportedCipherSuite::Tls13(suite))
            if conn.protocol_version() == Some(ProtocolVersion::TLSv1_3)
                && !conn.wants_write()
                && !conn.is_handshaking() =>
        {
            suite
        }
        _ => return Sealing::Kept(tls),
    };
    let (tcp, conn) = tls.into_inner();
    let secrets = match conn.dangerous_extract_secrets() {
        Ok(s) => s,
        Err(e) => return Sealing::Failed(e),
    };
    let (seq, tx) = secrets.tx;
    let (key, iv) = match tx {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
        _ => return Sealing::Failed(rustls::Error::General("unknown AEAD".into())),
    };
    Sealing::Sealed(Sealed {
        tcp,
        tx: suite.aead_alg.encrypter(key, iv),
        seq,
        limit: suite.common.confidentiality_limit,
        out: Vec::new(),
        sent: 0,
        rx: Some(Box::new(Rx {
            suite,
            seq: secrets.rx.0,
            secrets: secrets.rx.1,
        })),
        closing: false,
    })
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
        let (key, iv) = match rx.secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv }
            | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
            | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
            _ => return CloseReason::Protocol,
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

    /// A real handshake over loopback at `version`: the server's side (its
    /// head read, as herald reads it) and the client's.
    async fn pair(
        version: &'static rustls::SupportedProtocolVersion,
    ) -> (TlsStream<TcpStream>, ClientStream<TcpStream>) {
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut c = tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .unwrap();
            c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            c.flush().await.unwrap();
            c
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut s = tokio_rustls::TlsAcceptor::from(server)
                .accept(tcp)
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
        let (s, c) = pair(&rustls::version::TLS13).await;
        match seal(s) {
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
        let (s, _c) = pair(&rustls::version::TLS12).await;
        assert!(matches!(seal(s), Sealing::Kept(_)));
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
