//! What a listener puts on every request it serves ([`ListenerCtx`]): its name, when the request body
//! must have arrived, the process-wide budget of buffered body bytes ([`BufferBudget`]), and when a
//! shutdown's drain timeout cuts the requests still in flight ([`Cutoff`]).
//!
//! Every part that holds a request body in memory (the shop's `BufferBody`, the webhook runtime, the
//! admin API) reads it with [`read_body`], which reserves each byte from the budget before keeping it
//! and gives up at the body deadline. The [`Reservation`] travels with the bytes and hands them back to
//! the budget when dropped, so the total held by all requests together never passes
//! `limits.max_buffered_bytes`, whatever many slow or large uploads are open at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;
use prometheus::{IntCounterVec, IntGauge};

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
#[derive(Debug, Clone)]
pub struct Cutoff(tokio::sync::watch::Receiver<bool>);

impl Cutoff {
    /// A cutoff that comes when `cut` turns true.
    pub fn new(cut: tokio::sync::watch::Receiver<bool>) -> Self {
        Self(cut)
    }

    /// Waits until requests in flight must be cut; never, when the server is gone already.
    pub async fn cut(mut self) {
        if self.0.wait_for(|cut| *cut).await.is_err() {
            std::future::pending::<()>().await;
        }
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
pub async fn read_body<B>(
    body: B,
    limit: usize,
    declared: Option<u64>,
    ctx: Option<&ListenerCtx>,
) -> Result<(Bytes, Option<Reservation>), ReadError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge { limit });
    }
    let mut reservation = ctx.map(|c| c.budget.reservation(c.name));
    if let (Some(r), Some(n)) = (reservation.as_mut(), declared) {
        // Known up front: take it all now, so a burst of large uploads is refused before any is read.
        r.grow(n as usize)?;
    }
    let read = collect(body, limit, declared, &mut reservation);
    let bytes = match ctx {
        Some(c) => tokio::time::timeout_at(c.body_deadline, read)
            .await
            .map_err(|_| ReadError::Timeout {
                timeout: c.body_read_timeout,
            })??,
        None => read.await?,
    };
    Ok((bytes, reservation))
}

/// Reads the frames into one buffer. With a declared length the buffer is allocated once at that size:
/// growing it by doubling would hold up to twice the bytes for a while, and leave the allocator with
/// freed blocks of every size.
async fn collect<B>(
    body: B,
    limit: usize,
    declared: Option<u64>,
    reservation: &mut Option<Reservation>,
) -> Result<Bytes, ReadError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReadError::Failed(e.into()))?;
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers
        };
        // Zero-copy for hyper's `Bytes` chunks.
        let data = data.copy_to_bytes(data.remaining());
        if data.is_empty() {
            continue;
        }
        len += data.len();
        if len > limit {
            return Err(ReadError::TooLarge { limit });
        }
        if let Some(r) = reservation.as_mut() {
            if len > r.held() {
                r.grow(len - r.held())?;
            }
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let expected = declared.map_or(0, |n| n as usize).min(limit);
                let mut buf = BytesMut::with_capacity(expected.max(f.len() + data.len()));
                buf.extend_from_slice(f);
                buf.extend_from_slice(&data);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    Ok(match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
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
            cutoff: Cutoff::new(tokio::sync::watch::channel(false).1),
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
