//! What a listener puts on every request it serves ([`ListenerCtx`]): its name, when the request body
//! must have arrived, the process-wide budget of buffered body bytes ([`BufferBudget`]), and when a
//! shutdown's drain timeout cuts the requests still in flight ([`Cutoff`]).
//!
//! Every part that holds a request body in memory (the shop's `BufferBody`, the webhook runtime, the
//! admin API) reads it with [`read_body`], which reserves each byte from the budget before keeping it
//! and gives up at the body deadline. The [`Reservation`] travels with the bytes and hands them back to
//! the budget when dropped, so the total held by all requests together never passes
//! `limits.max_buffered_bytes`, whatever many slow or large uploads are open at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use pin_project_lite::pin_project;
use prometheus::{IntCounterVec, IntGauge};
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::body::BoxError;

/// The `reason` label of a refusal for want of buffer room.
pub const REASON_BUFFERED_BYTES: &str = "buffered_bytes";
/// The `reason` label of a connection refused at a connection limit.
pub const REASON_CONNECTIONS: &str = "connections";

/// The process-wide budget of buffered request body bytes. Cheap to clone: clones share one budget.
#[derive(Clone)]
pub struct BufferBudget {
    inner: Arc<Inner>,
}

struct Inner {
    used: AtomicUsize,
    max: usize,
    gauge: IntGauge,
    rejections: IntCounterVec,
}

impl std::fmt::Debug for BufferBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferBudget")
            .field("used", &self.used())
            .field("max", &self.inner.max)
            .finish()
    }
}

impl BufferBudget {
    /// A budget of `max` bytes; `gauge` shows the bytes held, `rejections` counts refusals by
    /// `listener` and `reason`.
    pub fn new(max: usize, gauge: IntGauge, rejections: IntCounterVec) -> Self {
        Self {
            inner: Arc::new(Inner {
                used: AtomicUsize::new(0),
                max,
                gauge,
                rejections,
            }),
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Acquire)
    }

    /// An empty reservation, for `listener`, to grow as bytes arrive.
    pub fn reservation(&self, listener: &'static str) -> Reservation {
        Reservation {
            budget: self.clone(),
            listener,
            held: 0,
        }
    }

    fn take(&self, n: usize) -> bool {
        let taken = self
            .inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.inner.max)
            })
            .is_ok();
        if taken {
            self.inner.gauge.add(n as i64);
        }
        taken
    }

    fn give_back(&self, n: usize) {
        self.inner.used.fetch_sub(n, Ordering::AcqRel);
        self.inner.gauge.sub(n as i64);
    }
}

/// Bytes taken from a [`BufferBudget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: BufferBudget,
    listener: &'static str,
    held: usize,
}

/// The budget has no room for the bytes asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the process-wide buffer budget is spent")]
pub struct NoRoom;

impl Reservation {
    /// Takes `n` more bytes, or refuses (and counts the refusal) when the budget has no room.
    pub fn grow(&mut self, n: usize) -> Result<(), NoRoom> {
        if n == 0 {
            return Ok(());
        }
        if !self.budget.take(n) {
            self.budget
                .inner
                .rejections
                .with_label_values(&[self.listener, REASON_BUFFERED_BYTES])
                .inc();
            return Err(NoRoom);
        }
        self.held += n;
        Ok(())
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held > 0 {
            self.budget.give_back(self.held);
        }
    }
}

/// Resolves when the server's drain timeout has run out while the request was in flight.
///
/// A cancellation token rather than a `watch` channel: its wait is a named future
/// ([`WaitForCancellationFutureOwned`]), so the `Deadline` layer can hold it without a box.
#[derive(Debug, Clone)]
pub struct Cutoff(CancellationToken);

impl Cutoff {
    /// A cutoff that comes when `cut` is cancelled; never, if it is dropped without being cancelled
    /// (the server is gone already).
    pub fn new(cut: CancellationToken) -> Self {
        Self(cut)
    }

    /// Waits until requests in flight must be cut.
    pub fn cut(&self) -> WaitForCancellationFutureOwned {
        self.0.clone().cancelled_owned()
    }
}

/// Put on every request (in its [`crate::ctx::RequestCtx`]) by the listener that accepted it.
#[derive(Debug, Clone)]
pub struct ListenerCtx {
    /// The listener's name (`shop`, `webhooks`, `admin`): a metric label.
    pub name: &'static str,
    /// When the body must have arrived in full.
    pub body_deadline: tokio::time::Instant,
    /// The listener's body read timeout (for the error message).
    pub body_read_timeout: Duration,
    /// The process-wide buffer budget.
    pub budget: BufferBudget,
    /// When the server's drain timeout runs out.
    pub cutoff: Cutoff,
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// It is longer than the limit (declared or as read).
    #[error("the body is over {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// It did not arrive by the listener's body deadline.
    #[error("the body did not arrive within {timeout:?}")]
    Timeout {
        /// The listener's body read timeout.
        timeout: Duration,
    },
    /// The buffer budget had no room for it.
    #[error(transparent)]
    Overloaded(#[from] NoRoom),
    /// The client broke off or sent a malformed body.
    #[error("the body could not be read to its end: {0}")]
    Failed(BoxError),
}

/// Reads `body` in full, up to `limit` bytes (a `declared` length over it is refused before reading),
/// reserving every byte from the budget of `ctx` and giving up at its body deadline. Without a `ctx`
/// (a service used outside a listener) only the limit applies.
///
/// A named future ([`ReadBody`]), so that the `BufferBody` layer holds it without a box.
pub fn read_body<B>(
    body: B,
    limit: usize,
    declared: Option<u64>,
    ctx: Option<&ListenerCtx>,
) -> ReadBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut refused = None;
    let mut reservation = None;
    if declared.is_some_and(|n| n > limit as u64) {
        refused = Some(ReadError::TooLarge { limit });
    } else {
        reservation = ctx.map(|c| c.budget.reservation(c.name));
        if let (Some(r), Some(n)) = (reservation.as_mut(), declared) {
            // Known up front: take it all now, so a burst of large uploads is refused before any
            // is read.
            refused = r.grow(n as usize).err().map(ReadError::from);
        }
    }
    ReadBody {
        body,
        deadline: ctx.map(|c| tokio::time::sleep_until(c.body_deadline)),
        timeout: ctx.map_or(Duration::ZERO, |c| c.body_read_timeout),
        refused,
        reservation,
        collected: Collected {
            limit,
            declared,
            ..Collected::default()
        },
    }
}

pin_project! {
    /// The future of [`read_body`]: the body's bytes and their reservation.
    pub struct ReadBody<B> {
        #[pin]
        body: B,
        #[pin]
        deadline: Option<Sleep>,
        timeout: Duration,
        refused: Option<ReadError>,
        reservation: Option<Reservation>,
        collected: Collected,
    }
}

impl<B> Future for ReadBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<(Bytes, Option<Reservation>), ReadError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(refused) = this.refused.take() {
            return Poll::Ready(Err(refused));
        }
        // The frames that are there first, then the deadline (as `tokio::time::timeout` does).
        loop {
            match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(mut data) = frame.into_data() else {
                        continue; // trailers
                    };
                    // Zero-copy for hyper's `Bytes` chunks.
                    let data = data.copy_to_bytes(data.remaining());
                    this.collected.push(data, this.reservation)?;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(ReadError::Failed(e.into()))),
                Poll::Ready(None) => {
                    let bytes = std::mem::take(this.collected).into_bytes();
                    return Poll::Ready(Ok((bytes, this.reservation.take())));
                }
                Poll::Pending => break,
            }
        }
        match this.deadline.as_pin_mut().map(|d| d.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(ReadError::Timeout {
                timeout: *this.timeout,
            })),
            _ => Poll::Pending,
        }
    }
}

/// The frames read so far, in one buffer. With a declared length the buffer is allocated once at
/// that size: growing it by doubling would hold up to twice the bytes for a while, and leave the
/// allocator with freed blocks of every size.
#[derive(Default)]
struct Collected {
    limit: usize,
    declared: Option<u64>,
    /// The first chunk, kept as it came (a body of one chunk is never copied).
    first: Option<Bytes>,
    /// The chunks from the second on, with the first copied in front.
    rest: Option<BytesMut>,
    len: usize,
}

impl Collected {
    /// Adds `data`, reserving its bytes first.
    fn push(
        &mut self,
        data: Bytes,
        reservation: &mut Option<Reservation>,
    ) -> Result<(), ReadError> {
        if data.is_empty() {
            return Ok(());
        }
        self.len += data.len();
        if self.len > self.limit {
            return Err(ReadError::TooLarge { limit: self.limit });
        }
        if let Some(r) = reservation.as_mut() {
            if self.len > r.held() {
                r.grow(self.len - r.held())?;
            }
        }
        match (&mut self.first, &mut self.rest) {
            (None, _) => self.first = Some(data),
            (Some(f), None) => {
                let expected = self.declared.map_or(0, |n| n as usize).min(self.limit);
                let mut buf = BytesMut::with_capacity(expected.max(f.len() + data.len()));
                buf.extend_from_slice(f);
                buf.extend_from_slice(&data);
                self.rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
        Ok(())
    }

    /// The whole body.
    fn into_bytes(self) -> Bytes {
        match (self.first, self.rest) {
            (_, Some(buf)) => buf.freeze(),
            (Some(f), None) => f,
            (None, None) => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn budget(max: usize) -> BufferBudget {
        let rejections =
            IntCounterVec::new(prometheus::Opts::new("r", "r"), &["listener", "reason"]).unwrap();
        BufferBudget::new(max, IntGauge::new("g", "g").unwrap(), rejections)
    }

    fn ctx(budget: &BufferBudget, within: Duration) -> ListenerCtx {
        ListenerCtx {
            name: "shop",
            body_deadline: tokio::time::Instant::now() + within,
            body_read_timeout: within,
            budget: budget.clone(),
            cutoff: Cutoff::new(CancellationToken::new()),
        }
    }

    #[test]
    fn reservations_never_pass_the_budget_and_give_back_on_drop() {
        let b = budget(100);
        let mut one = b.reservation("shop");
        one.grow(60).unwrap();
        let mut two = b.reservation("shop");
        assert_eq!(two.grow(41), Err(NoRoom));
        two.grow(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(one);
        assert_eq!(b.used(), 40);
        two.grow(60).unwrap();
        drop(two);
        assert_eq!(b.used(), 0);
        assert_eq!(
            b.inner
                .rejections
                .with_label_values(&["shop", REASON_BUFFERED_BYTES])
                .get(),
            1
        );
    }

    #[tokio::test]
    async fn a_body_is_read_whole_and_its_bytes_stay_reserved_while_held() {
        let b = budget(1000);
        let c = ctx(&b, Duration::from_secs(5));
        let chunks: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> =
            ["ab", "cd", "e"]
                .iter()
                .map(|s| Ok(http_body::Frame::data(Bytes::from_static(s.as_bytes()))))
                .collect();
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let (bytes, reservation) = read_body(body, 10, None, Some(&c)).await.unwrap();
        assert_eq!(&bytes[..], b"abcde");
        assert_eq!(b.used(), 5);
        drop(reservation);
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn limits_budget_and_deadline_refuse() {
        let b = budget(8);
        let c = ctx(&b, Duration::from_secs(5));
        let big = Full::new(Bytes::from_static(b"0123456789"));
        assert!(matches!(
            read_body(big.clone(), 4, None, Some(&c)).await,
            Err(ReadError::TooLarge { limit: 4 })
        ));
        assert!(matches!(
            read_body(big.clone(), 100, Some(10), Some(&c)).await,
            Err(ReadError::Overloaded(NoRoom))
        ));
        assert!(matches!(
            read_body(big, 100, None, Some(&c)).await,
            Err(ReadError::Overloaded(NoRoom))
        ));
        assert_eq!(b.used(), 0, "a refused body gives back what it took");

        // A body that never ends is given up at the deadline.
        let c = ctx(&b, Duration::from_millis(50));
        let stalled = StreamBody::new(futures_util::stream::pending::<
            Result<http_body::Frame<Bytes>, std::convert::Infallible>,
        >());
        assert!(matches!(
            read_body(stalled, 100, None, Some(&c)).await,
            Err(ReadError::Timeout { .. })
        ));
    }
}
