//! Response bodies. [`SseBody`] is the hot one: it writes the stream preamble,
//! then any replayed frames, then drains the connection's queue, everything
//! queued per wake-up as one chunk.
//!
//! It ends itself: on shutdown the queue is closed and the body returns end of
//! stream once what was queued is written (hyper's graceful shutdown alone
//! would wait forever on an endless body). A slow close returns an error,
//! which makes hyper drop the connection at once instead of trying to finish
//! a chunked body the client is not reading. Dropping the body (client gone,
//! connection error) drops the [`Subscription`], which unregisters it.
//!
//! Per connection it holds the subscription handle, an optional preamble and
//! a (usually empty) replay iterator: no timer (heartbeats are pushed through
//! the queue by one task for all connections), no shutdown future.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body::{Frame, SizeHint};

use crate::fanout::queue::{CloseReason, Queue};
use crate::metrics as m;
use crate::registry::Subscription;

/// Replayed frames are sent in chunks of about this many bytes.
const REPLAY_CHUNK_BYTES: usize = 64 * 1024;

/// Why a stream was ended with an error (hyper then closes the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("SSE connection closed: the client did not keep up and its queue overflowed")]
    Slow,
}

/// Every response body herald sends.
#[derive(Debug)]
pub enum Body {
    /// A complete body (possibly empty).
    Full(Option<Bytes>),
    /// An event stream.
    Sse(Box<SseBody>),
}

/// An SSE event stream fed by a subscription's queue.
#[derive(Debug)]
pub struct SseBody {
    head: Option<Bytes>,
    replay: std::vec::IntoIter<Bytes>,
    stream: Stream,
    /// `--write-coalesce` (zero: none).
    window: Duration,
    /// Set after a write when there is a window: the next batch is not
    /// taken before it fires. Allocated on the first write, then reused.
    hold: Option<Pin<Box<tokio::time::Sleep>>>,
    holding: bool,
}

/// An open stream's registration, whichever engine writes it (this body or
/// the HTTP/1.1 fast path): counts the open, and on drop counts the close by
/// reason and unregisters.
#[derive(Debug)]
pub struct Stream {
    sub: Subscription,
    /// Set when the writer ended the stream itself.
    pub(crate) ended: Option<&'static str>,
    /// Count deliveries and sample delivery lag (`--metrics`).
    account: bool,
    /// Batches written, for sampling the lag histogram.
    batches: u32,
}

/// One delivery-lag sample per this many written batches per stream: the
/// histogram's buckets are shared by every core, so sampling keeps them from
/// becoming a per-write contention point.
const LAG_SAMPLE_EVERY: u32 = 16;

// === impl Body ===

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        Body::Full((!b.is_empty()).then_some(b))
    }

    pub fn empty() -> Self {
        Body::Full(None)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Sse(s) => s.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Sse(_) => SizeHint::default(),
        }
    }
}

// === impl SseBody ===

impl SseBody {
    pub fn new(head: Bytes, replay: Vec<Bytes>, stream: Stream, window: Duration) -> Self {
        Self {
            head: Some(head),
            replay: replay.into_iter(),
            stream,
            window,
            hold: None,
            holding: false,
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.head.is_some() || self.replay.len() > 0 {
            let before = self.replay.len();
            let chunk = self.next_prefix_chunk();
            self.stream.account(before - self.replay.len(), 0);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if self.holding {
            // Something to send within the window since the last write:
            // let the window pass so what arrives meanwhile joins it.
            if self.stream.queue().poll_ready(cx).is_pending() {
                return Poll::Pending;
            }
            if let Some(sleep) = &mut self.hold {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            self.holding = false;
        }
        match self.stream.queue().poll_drain(cx) {
            Poll::Ready(Ok(batch)) => {
                self.stream.account(batch.events, batch.oldest_us);
                if !self.window.is_zero() {
                    let at = tokio::time::Instant::now() + self.window;
                    match &mut self.hold {
                        Some(sleep) => sleep.as_mut().reset(at),
                        None => self.hold = Some(Box::pin(tokio::time::sleep_until(at))),
                    }
                    self.holding = true;
                }
                Poll::Ready(Some(Ok(Frame::data(batch.bytes))))
            }
            Poll::Ready(Err(r @ (CloseReason::Shutdown | CloseReason::Expired))) => {
                self.stream.ended = Some(r.label());
                Poll::Ready(None)
            }
            Poll::Ready(Err(CloseReason::Slow)) => {
                self.stream.ended = Some("slow");
                Poll::Ready(Some(Err(BodyError::Slow)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// The preamble and/or up to ~64 KiB of replayed frames, as one chunk.
    fn next_prefix_chunk(&mut self) -> Bytes {
        let head = self.head.take();
        if self.replay.len() == 0 {
            return head.unwrap_or_default();
        }
        let mut buf = BytesMut::with_capacity(REPLAY_CHUNK_BYTES.min(
            head.as_ref().map_or(0, Bytes::len)
                + self.replay.as_slice().iter().map(Bytes::len).sum::<usize>(),
        ));
        if let Some(h) = head {
            buf.put_slice(&h);
        }
        while buf.len() < REPLAY_CHUNK_BYTES {
            match self.replay.next() {
                Some(f) => buf.put_slice(&f),
                None => break,
            }
        }
        buf.freeze()
    }
}

// === impl Stream ===

impl Stream {
    pub fn new(sub: Subscription, account: bool) -> Self {
        if account {
            metrics::counter!(m::CONNECTIONS_OPENED).increment(1);
        }
        Self {
            sub,
            ended: None,
            account,
            batches: 0,
        }
    }

    /// Records that `events` event frames were written; `oldest_us` is the
    /// oldest one's timestamp (0: none, e.g. replayed frames).
    pub(crate) fn account(&mut self, events: usize, oldest_us: u64) {
        if !self.account || events == 0 {
            return;
        }
        self.sub
            .subscriber()
            .delivered
            .fetch_add(events as u64, Ordering::Relaxed);
        if oldest_us != 0 && self.batches.is_multiple_of(LAG_SAMPLE_EVERY) {
            static LAG: OnceLock<metrics::Histogram> = OnceLock::new();
            let lag_us = crate::fanout::unix_micros().saturating_sub(oldest_us);
            LAG.get_or_init(|| metrics::histogram!(m::DELIVERY_LAG))
                .record(lag_us as f64 / 1e6);
        }
        self.batches = self.batches.wrapping_add(1);
    }

    pub fn queue(&self) -> &Queue {
        &self.sub.subscriber().queue
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if !self.account {
            return;
        }
        // An aborted (stalled) connection drops the body without polling it
        // again, so the queue is the authority on why it closed.
        let reason = match self.queue().closed() {
            Some(r) => r.label(),
            None => self.ended.unwrap_or("client"),
        };
        metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason).increment(1);
    }
}
