//! A connection's kill switch, and what the transport saw end it.
//!
//! A client that stops reading stalls hyper's writes; hyper then stops polling
//! the response body, so a body can not end its own connection. Instead the
//! connection task runs its hyper connection inside [`Abortable`], and the
//! dispatcher, on closing a slow subscriber, trips that connection's
//! [`Abort`]: the task wakes, drops the connection (closing the socket and
//! freeing every buffer) and the dropped body unregisters the subscriber.
//!
//! The transport also records here why the connection failed when it was not
//! the client leaving (a write timeout): a stream on it that ends without a
//! reason of its own is counted under this one (see `crate::stream`).
//!
//! Cost: one small allocation per connection (flags + waker slot).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::registry::queue::CloseReason;

/// Shared between a connection task and whatever may need to kill it.
#[derive(Debug, Default)]
pub struct Abort {
    tripped: AtomicBool,
    /// Index into `CloseReason::ALL` + 1 of what ended the connection on
    /// the server's side (0: nothing recorded).
    failure: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

/// Runs `F` until it completes or its [`Abort`] is tripped.
#[derive(Debug)]
pub(crate) struct Abortable<F> {
    inner: Pin<Box<F>>,
    abort: Arc<Abort>,
}

/// The connection was aborted before it completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Aborted;

// === impl Abort ===

impl Abort {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Kills the connection (idempotent).
    pub fn trip(&self) {
        self.tripped.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().take() {
            w.wake();
        }
    }

    pub fn is_tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }

    /// Records why the transport ended the connection (the first reason
    /// recorded wins).
    pub fn record(&self, reason: CloseReason) {
        let i = CloseReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0) as u8
            + 1;
        let _ = self
            .failure
            .compare_exchange(0, i, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// What the transport recorded, if anything.
    pub fn recorded(&self) -> Option<CloseReason> {
        match self.failure.load(Ordering::Relaxed) {
            0 => None,
            i => CloseReason::ALL.get(i as usize - 1).copied(),
        }
    }
}

// === impl Abortable ===

impl<F: Future> Abortable<F> {
    pub(crate) fn new(inner: F, abort: Arc<Abort>) -> Self {
        Self {
            inner: Box::pin(inner),
            abort,
        }
    }

    /// The wrapped future, e.g. to ask a hyper connection to shut down.
    pub(crate) fn inner_mut(&mut self) -> Pin<&mut F> {
        self.inner.as_mut()
    }
}

impl<F: Future> Future for Abortable<F> {
    type Output = Result<F::Output, Aborted>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.abort.is_tripped() {
            return Poll::Ready(Err(Aborted));
        }
        {
            let mut slot = self.abort.waker.lock();
            match &mut *slot {
                Some(w) => w.clone_from(cx.waker()),
                None => *slot = Some(cx.waker().clone()),
            }
        }
        // Tripped between the check and the waker store: do not miss it.
        if self.abort.is_tripped() {
            return Poll::Ready(Err(Aborted));
        }
        self.inner.as_mut().poll(cx).map(Ok)
    }
}

impl<F> Unpin for Abortable<F> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trip_ends_a_pending_future() {
        let abort = Abort::new();
        let fut = Abortable::new(std::future::pending::<()>(), abort.clone());
        let task = tokio::spawn(fut);
        tokio::task::yield_now().await;
        abort.trip();
        assert_eq!(task.await.unwrap(), Err(Aborted));
    }

    #[tokio::test]
    async fn completes_normally() {
        let fut = Abortable::new(async { 7 }, Abort::new());
        assert_eq!(fut.await, Ok(7));
    }
}
