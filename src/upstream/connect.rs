//! The TCP connector under TLS, without the connection info hyper-util's `HttpConnector` attaches.
//!
//! `HttpConnector` describes every connection with an `HttpInfo` (its two addresses), and the pooled
//! client copies that into the extensions of every response it receives: a map, its table and a box,
//! three allocations per attempt, for a value nothing in the proxy reads. [`PlainConnector`] makes the
//! same connections and reports them without it; everything else (errors, timeouts, ALPN through
//! the TLS layer above) is `HttpConnector`'s own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

/// An [`HttpConnector`] whose connections carry no `HttpInfo`.
#[derive(Clone)]
pub(super) struct PlainConnector(pub(super) HttpConnector);

type Connecting = <HttpConnector as Service<Uri>>::Future;
type ConnectError = <HttpConnector as Service<Uri>>::Error;

impl Service<Uri> for PlainConnector {
    type Response = PlainStream;
    type Error = ConnectError;
    type Future = PlainConnecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        PlainConnecting(self.0.call(dst))
    }
}

/// The connect future of [`PlainConnector`].
pub(super) struct PlainConnecting(Connecting);

impl Future for PlainConnecting {
    type Output = Result<PlainStream, ConnectError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map_ok(PlainStream)
    }
}

/// A TCP connection made by [`PlainConnector`].
pub(super) struct PlainStream(TokioIo<TcpStream>);

impl Connection for PlainStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for PlainStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for PlainStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}
