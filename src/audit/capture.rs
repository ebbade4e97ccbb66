//! A body wrapper that keeps a copy of the first bytes that pass through it, and runs a closure once the
//! body has ended (or was dropped unfinished): how bodies reach audit records without being buffered
//! on the request path.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::record::RecordedBody;

/// The bytes seen so far, shared between the body and whoever records it.
#[derive(Debug, Default)]
pub struct Captured {
    content_type: Option<String>,
    bytes: BytesMut,
    truncated: bool,
    limit: usize,
}

/// A handle on what a [`Capture`] body has seen.
pub type CaptureSlot = Arc<Mutex<Captured>>;

impl Captured {
    /// An empty capture of at most `limit` bytes of a body of `content_type`.
    pub fn slot(content_type: Option<String>, limit: usize) -> CaptureSlot {
        Arc::new(Mutex::new(Self {
            content_type,
            bytes: BytesMut::new(),
            truncated: false,
            limit,
        }))
    }

    fn push(&mut self, data: &[u8]) {
        let room = self.limit.saturating_sub(self.bytes.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }

    /// What was seen, as a record body.
    pub fn take(slot: &CaptureSlot) -> RecordedBody {
        let mut c = slot.lock().unwrap_or_else(|p| p.into_inner());
        RecordedBody {
            content_type: c.content_type.clone(),
            bytes: std::mem::take(&mut c.bytes).freeze(),
            truncated: c.truncated,
        }
    }
}

type OnEnd = Box<dyn FnOnce() + Send + 'static>;

pin_project! {
    /// A body that copies what passes through into a [`CaptureSlot`] (when it has one) and calls its
    /// `on_end` once, when the body ends, fails, or is dropped.
    pub struct Capture<B> {
        #[pin]
        inner: B,
        slot: Option<CaptureSlot>,
        on_end: Option<OnEnd>,
    }

    impl<B> PinnedDrop for Capture<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(f) = this.project().on_end.take() {
                f();
            }
        }
    }
}

impl<B> Capture<B> {
    /// Wraps `inner`; `slot` receives a copy of its data, `on_end` runs once at its end.
    pub fn new(inner: B, slot: Option<CaptureSlot>, on_end: Option<OnEnd>) -> Self {
        Self {
            inner,
            slot,
            on_end,
        }
    }

    /// Passes `inner` through untouched.
    pub fn plain(inner: B) -> Self {
        Self::new(inner, None, None)
    }
}

impl<B> Body for Capture<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(slot), Some(data)) = (this.slot.as_ref(), frame.data_ref()) {
                    slot.lock().unwrap_or_else(|p| p.into_inner()).push(data);
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(f) = this.on_end.take() {
                    f();
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn keeps_the_first_bytes_and_runs_on_end_once() {
        let slot = Captured::slot(Some("text/plain".into()), 4);
        let ends = Arc::new(AtomicUsize::new(0));
        let e = Arc::clone(&ends);
        let body = Capture::new(
            Full::new(Bytes::from_static(b"hello world")),
            Some(Arc::clone(&slot)),
            Some(Box::new(move || {
                e.fetch_add(1, Ordering::SeqCst);
            })),
        );
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all, "hello world", "the body passes through whole");
        assert_eq!(ends.load(Ordering::SeqCst), 1);
        let got = Captured::take(&slot);
        assert_eq!(got.bytes, "hell");
        assert!(got.truncated);
        assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    }

    #[tokio::test]
    async fn a_body_dropped_unread_still_runs_on_end() {
        let ends = Arc::new(AtomicUsize::new(0));
        let e = Arc::clone(&ends);
        let body = Capture::new(
            Full::new(Bytes::from_static(b"x")),
            None,
            Some(Box::new(move || {
                e.fetch_add(1, Ordering::SeqCst);
            })),
        );
        drop(body);
        assert_eq!(ends.load(Ordering::SeqCst), 1);
    }
}
