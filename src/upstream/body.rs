//! The request body sent to a provider, which notes when the connection first asks for its bytes.
//!
//! hyper asks for the body only once it is writing the request. A request whose body was never asked
//! for cannot have been processed by the provider (it still waits for the body it was announced), so
//! an attempt that fails before that point is "not sent", and may safely go to another provider.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// A full body with a "written" flag.
#[derive(Debug)]
pub struct TrackedBody {
    data: Option<Bytes>,
    len: u64,
    polled: Arc<AtomicBool>,
}

impl TrackedBody {
    /// A body of `data`, and the flag that turns true when hyper first reads it.
    pub fn new(data: Bytes) -> (Self, Arc<AtomicBool>) {
        let polled = Arc::new(AtomicBool::new(false));
        let len = data.len() as u64;
        let data = (!data.is_empty()).then_some(data);
        (
            Self {
                data,
                len,
                polled: Arc::clone(&polled),
            },
            polled,
        )
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.polled.store(true, Ordering::Release);
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn flags_the_first_read() {
        let (body, polled) = TrackedBody::new(Bytes::from_static(b"amount=1"));
        assert!(!polled.load(Ordering::Acquire));
        assert_eq!(body.size_hint().exact(), Some(8));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "amount=1");
        assert!(polled.load(Ordering::Acquire));
        let (empty, _) = TrackedBody::new(Bytes::new());
        assert!(empty.is_end_stream());
    }
}
