//! A lingering close for connections hyper serves: after hyper shuts its
//! side down (FIN, or close_notify then FIN over TLS), what the client still
//! sends is read and dropped until it closes too, for at most [`LINGER`] and
//! [`LINGER_BYTES`].
//!
//! Why: a socket closed with unread bytes in its receive queue, or one that
//! receives bytes once closed, answers with a reset. An HTTP/2 client acks
//! the last frames it reads (WINDOW_UPDATE) after the server's GOAWAY; if
//! the reset reaches it first, its connection fails and it drops what it
//! had received but not yet read, such as a stream's last event and its
//! end (seen in `tests/lifecycle.rs` at shutdown, h2c and TLS + h2).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Longest a closed connection waits for its client to close.
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// Most bytes read and dropped while lingering.
pub(crate) const LINGER_BYTES: usize = 64 * 1024;

/// `I` with a lingering close (module docs).
#[derive(Debug)]
pub(crate) struct Linger<I> {
    inner: I,
    /// Set once our side is shut down: the deadline and what was dropped.
    lingering: Option<Box<(Pin<Box<Sleep>>, usize)>>,
}

impl<I> Linger<I> {
    pub(crate) fn new(inner: I) -> Self {
        Self {
            inner,
            lingering: None,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Linger<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Linger<I> {
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
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Our side down, then read and drop until the client closes (EOF or an
    /// error), [`LINGER`] passes or [`LINGER_BYTES`] were dropped.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.lingering.is_none() {
            ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            let deadline = Box::pin(tokio::time::sleep(LINGER));
            this.lingering = Some(Box::new((deadline, 0)));
        }
        let Some(lingering) = this.lingering.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        let mut scratch = [0u8; 2048];
        loop {
            if lingering.0.as_mut().poll(cx).is_ready() || lingering.1 >= LINGER_BYTES {
                return Poll::Ready(Ok(()));
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => lingering.1 += buf.filled().len(),
                // The client is gone: nothing to wait for.
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// After our FIN the client may still write: its bytes are read (no
    /// reset), and the close ends when it closes; a client that never
    /// closes is let go after the linger time.
    #[tokio::test]
    async fn a_close_waits_for_the_client_within_bounds() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = listener.accept().await.unwrap();
        let mut s = Linger::new(s);
        let close = tokio::spawn(async move {
            s.shutdown().await.unwrap();
        });
        let mut end = Vec::new();
        c.read_to_end(&mut end).await.unwrap();
        assert!(end.is_empty(), "our FIN arrived");
        c.write_all(b"a late ack").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !close.is_finished(),
            "still lingering while the client is open"
        );
        c.write_all(b"another").await.unwrap();
        drop(c);
        tokio::time::timeout(Duration::from_secs(1), close)
            .await
            .unwrap()
            .unwrap();

        tokio::time::pause();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let (s, _) = listener.accept().await.unwrap();
        let mut s = Linger::new(s);
        let close = tokio::spawn(async move { s.shutdown().await.unwrap() });
        tokio::time::sleep(LINGER + Duration::from_millis(10)).await;
        close.await.unwrap();
        c.write_all(b"x").await.ok();
    }
}
