//! Request bodies from either HTTP server, and response bodies. An SSE body
//! is a transport over the stream core (`crate::stream`): it hands hyper
//! whatever [`Stream::poll_next`] gives, and nothing else. hyper carries it
//! over HTTP/1.1 (fast path off) and HTTP/2 with `--own-http2 false`;
//! herald's HTTP/2 server (`h2`) takes the stream out of the body.
//!
//! It ends itself: a clean end (shutdown, token expiry) ends the body, so
//! hyper finishes the response; an abort (slow) is an error, which makes
//! hyper drop an HTTP/1.1 connection at once (instead of trying to finish a
//! chunked body the client is not reading) and reset an h2 stream. Dropping
//! the body (client gone, connection error) drops the [`Stream`], which
//! unregisters it and counts the close.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::stream::{Next, Stream};

/// Why a stream was ended with an error (hyper then closes the connection
/// or resets the h2 stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("SSE stream cut off: the client did not keep up and its queue overflowed")]
    Aborted,
}

/// Why a request body could not be read whole.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// More than the limit.
    TooLarge,
    /// Not all there within the time allowed.
    Slow,
    /// The connection failed while reading.
    Failed(String),
}

/// Reads a request body of at most `max` bytes within `timeout` (a client
/// that sends more, or too slowly, costs the node no more than that).
pub(crate) async fn read_limited(
    body: RequestBody,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, ReadError> {
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Err(_) => Err(ReadError::Slow),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ReadError::TooLarge),
        Ok(Err(e)) => Err(ReadError::Failed(e.to_string())),
    }
}

/// A request body, from whichever transport carried the request.
#[derive(Debug)]
pub(crate) enum RequestBody {
    Hyper(Incoming),
    /// herald's own HTTP/2 server (`h2`).
    H2(super::h2::DataBody),
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::H2(b) => b.size_hint(),
        }
    }
}

/// Every response body herald sends.
#[derive(Debug)]
pub(crate) enum Body {
    /// A complete body (possibly empty).
    Full(Option<Bytes>),
    /// An event stream.
    Sse(Box<Stream>),
}

// === impl Body ===

impl Body {
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        Body::Full((!b.is_empty()).then_some(b))
    }

    pub(crate) fn empty() -> Self {
        Body::Full(None)
    }

    /// The bytes of a complete body (empty for a stream).
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Body::Full(Some(b)) => b,
            _ => &[],
        }
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
            Body::Sse(s) => s.poll_next(cx).map(|next| match next {
                Next::Data(b) => Some(Ok(Frame::data(b))),
                Next::End => None,
                // Wire bytes come only through a wire, and hyper's streams
                // install none: not reached.
                Next::Abort | Next::Wire(_) => Some(Err(BodyError::Aborted)),
            }),
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
