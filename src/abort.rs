//! A connection's kill switch.
//!
//! A client that stops reading stalls hyper's writes; hyper then stops polling
//! the response body, so a body can not end its own connection. Instead the
//! connection task runs its hyper connection inside [`Abortable`], and the
//! dispatcher, on closing a slow subscriber, trips that connection's
//! [`Abort`]: the task wakes, drops the connection (closing the socket and
//! freeing every buffer) and the dropped body unregisters the subscriber.
//!
//! Cost: one small allocation per connection (flag + waker slot).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

/// Shared between a connection task and whatever may need to kill it.
#[derive(Debug, Default)]
pub struct Abort {
    tripped: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

/// Runs `F` until it completes or its [`Abort`] is tripped.
#[derive(Debug)]
pub struct Abortable<F> {
    inner: Pin<Box<F>>,
    abort: Arc<Abort>,
}

/// The connection was aborted before it completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aborted;

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
}

// === impl Abortable ===

impl<F: Future> Abortable<F> {
    pub fn new(inner: F, abort: Arc<Abort>) -> Self {
        Self {
            inner: Box::pin(inner),
            abort,
        }
    }

    /// The wrapped future, e.g. to ask a hyper connection to shut down.
    pub fn inner_mut(&mut self) -> Pin<&mut F> {
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
