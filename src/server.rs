//! Serves a tower service on a TCP listener: HTTP/1.1 and HTTP/2 (prior knowledge) on the same port,
//! with a graceful drain on shutdown.
//!
//! Stopping a server closes its listener at once (new connections are refused), lets in-flight
//! requests finish up to the drain timeout, then closes what is left.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::{Service, ServiceExt};

use crate::body::ProxyBody;
use crate::ctx::ClientAddr;

/// Limits applied to every connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head; larger gets 431 (HTTP/1.1) or a stream error (HTTP/2).
    pub max_header_bytes: usize,
    /// How long a connection may take to send its request head.
    pub header_read_timeout: Duration,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Starts serving `service` on `listener`.
    pub fn spawn<S>(listener: TcpListener, service: S, limits: Limits, name: &'static str) -> Self
    where
        S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (stop, stop_rx) = watch::channel(None);
        let task = tokio::spawn(run(listener, service, limits, stop_rx, name));
        Self { addr, stop, task }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and drains: in-flight requests get up to `drain` to finish.
    pub async fn shutdown(self, drain: Duration) {
        let _ = self.stop.send(Some(drain));
        let _ = self.task.await;
    }
}

async fn run<S>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    mut stop: watch::Receiver<Option<Duration>>,
    name: &'static str,
) where
    S: Service<Request<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    let drain = loop {
        tokio::select! {
            changed = stop.changed() => {
                let drain = *stop.borrow();
                if changed.is_err() || drain.is_some() {
                    break drain.unwrap_or(Duration::ZERO);
                }
            }
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(server = name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = service.clone().map_request(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(ClientAddr(peer));
                    req
                });
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(server = name, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    };
    drop(listener);
    tracing::info!(
        server = name,
        in_flight_connections = graceful.count(),
        "draining"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!(server = name, "drained"),
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(server = name, ?drain, "drain timeout reached; closing the connections left")
        }
    }
}
