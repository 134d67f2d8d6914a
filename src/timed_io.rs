//! The write timeout (`--write-timeout`), the one mechanism for every
//! transport: herald's HTTP/1.1 writer, herald's HTTP/2 server and hyper
//! all write through a [`TimedIo`].
//!
//! Without it a stream to a peer that stopped reading (gone without a FIN, or
//! stalled) would hold its socket until TCP gives up, which can take many
//! minutes. [`TimedIo`] arms a timer when a write cannot proceed and fails the
//! write with `TimedOut` if nothing moved before it fires; any progress
//! disarms it. A timeout is counted and recorded on the connection (so its
//! streams are counted as closed by `write_timeout`). Reads are passed
//! through. The timer is allocated on the first stalled write only.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::abort::Abort;
use crate::guard::Limit;
use crate::registry::queue::CloseReason;

/// `I` with a write timeout.
#[derive(Debug)]
pub(crate) struct TimedIo<I> {
    inner: I,
    /// `None`: no timeout.
    timeout: Option<Duration>,
    /// Armed while a write is stalled.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// The connection a timeout is recorded on.
    conn: Arc<Abort>,
}

impl<I> TimedIo<I> {
    pub(crate) fn new(inner: I, timeout: Option<Duration>, conn: Arc<Abort>) -> Self {
        Self {
            inner,
            timeout,
            timer: None,
            armed: false,
            conn,
        }
    }

    pub(crate) fn get_mut(&mut self) -> &mut I {
        &mut self.inner
    }

    /// Called when a write made no progress: arms the timer if needed and
    /// tells whether it has fired.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(timeout) = self.timeout else {
            return false;
        };
        if !self.armed {
            let at = Instant::now() + timeout;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.armed = true;
        }
        match &mut self.timer {
            Some(t) => t.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }

    /// Passes a write's outcome through: progress disarms the timer; a
    /// stall arms it, and once it fires the write fails with `TimedOut`.
    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending if self.stalled(cx) => {
                self.conn.record(CloseReason::WriteTimeout);
                Poll::Ready(Err(Self::timed_out()))
            }
            Poll::Pending => Poll::Pending,
            ready => {
                self.armed = false;
                ready
            }
        }
    }

    fn timed_out() -> io::Error {
        Limit::WriteTimeout.count();
        io::Error::new(
            io::ErrorKind::TimedOut,
            "write timed out: the peer is not reading (--write-timeout)",
        )
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for TimedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TimedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
