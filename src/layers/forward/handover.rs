//! Moving a keyed operation to a task of its own when the shop hangs up: the operation still ends and
//! settles its idempotency record, and the common case (the shop waits) pays for no task and no
//! wake-up between tasks.

use std::task::{Context, Poll};

use crate::layers::BoxFuture;

/// A keyed operation, run inside the shop's request while the shop waits, and moved to a task of its
/// own if the shop goes away first.
pub(super) struct Detachable<T: Send + 'static> {
    op: Option<BoxFuture<T>>,
}

impl<T: Send + 'static> Detachable<T> {
    pub(super) fn new(op: BoxFuture<T>) -> Self {
        Self { op: Some(op) }
    }
}

impl<T: Send + 'static> std::future::Future for Detachable<T> {
    type Output = T;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(op) = self.op.as_mut() else {
            panic!("Detachable polled after it finished");
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| op.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => {
                self.op = None;
                Poll::Ready(out)
            }
            // A panicked operation is not resumed anywhere: the shop's request reports it.
            Err(panic) => {
                self.op = None;
                std::panic::resume_unwind(panic)
            }
        }
    }
}

impl<T: Send + 'static> Drop for Detachable<T> {
    fn drop(&mut self) {
        if let Some(op) = self.op.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(op);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_detachable_operation_dropped_midway_finishes_in_a_task_of_its_own() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let done = Arc::new(AtomicU32::new(0));
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let d = Arc::clone(&done);
        let mut op = Detachable::new(Box::pin(async move {
            let _ = wait.await;
            d.fetch_add(1, Ordering::SeqCst);
        }));
        // Started inside the request, then the shop goes away.
        assert!(futures_poll_once(&mut op).is_pending());
        drop(op);
        assert_eq!(done.load(Ordering::SeqCst), 0);
        go.send(()).unwrap();
        for _ in 0..100 {
            if done.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            done.load(Ordering::SeqCst),
            1,
            "the rest ran in the background"
        );

        // Run to the end inside the request: nothing is left to detach.
        let d = Arc::clone(&done);
        let out = Detachable::new(Box::pin(async move { d.fetch_add(1, Ordering::SeqCst) })).await;
        assert_eq!(out, 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(done.load(Ordering::SeqCst), 2, "ran exactly once");
    }

    /// Polls `f` once with a waker that does nothing.
    fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        std::pin::Pin::new(f).poll(&mut cx)
    }
}
