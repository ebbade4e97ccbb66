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
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
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
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        // The buffer bound alone is loose (one read may bring more than it): this one is exact.
        .max_header_size(limits.max_header_bytes);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
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
                let (h1, h2) = (h1.clone(), h2.clone());
                let watcher = graceful.watcher();
                let sniff_within = limits.header_read_timeout;
                let mut stopping = stop.clone();
                tokio::spawn(async move {
                    let io_svc = TowerToHyperService::new(svc);
                    // A connection that has not said which protocol when the drain starts is closed.
                    let protocol = tokio::select! {
                        p = sniff(&stream, sniff_within) => p,
                        _ = stopping.wait_for(Option::is_some) => Protocol::Gone,
                    };
                    let result = match protocol {
                        Protocol::Http2 => {
                            watcher.watch(h2.serve_connection(TokioIo::new(stream), io_svc)).await
                        }
                        Protocol::Http1 => {
                            watcher.watch(h1.serve_connection(TokioIo::new(stream), io_svc)).await
                        }
                        Protocol::Gone => return,
                    };
                    if let Err(e) = result {
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

/// Which protocol a new connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    /// Closed, failed or silent past the header timeout before sending anything telling.
    Gone,
}

/// The HTTP/2 connection preface starts with the method `PRI`, which HTTP/1.x never uses (RFC 9113
/// §3.4), so three bytes tell the protocols apart.
const PREFACE_START: &[u8; 3] = b"PRI";

/// Tells HTTP/1.1 from HTTP/2 with prior knowledge by peeking at the first bytes, without consuming
/// them. (hyper-util's auto server reads them instead and hands them back through a rewinding reader,
/// which costs every HTTP/1.1 connection a second read-buffer allocation that doubles it to 16 KiB.)
async fn sniff(stream: &TcpStream, within: Duration) -> Protocol {
    let look = async {
        let mut buf = [0u8; PREFACE_START.len()];
        // Only a client that splits its first three bytes over several packets comes back here; the
        // pause (doubling, at most 50 ms) keeps such a slow client from spinning the loop.
        let mut pause = Duration::from_millis(1);
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return Protocol::Gone,
                Ok(n) => n,
            };
            if buf[..n] != PREFACE_START[..n] {
                return Protocol::Http1;
            }
            if n == PREFACE_START.len() {
                return Protocol::Http2;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    };
    tokio::time::timeout(within, look)
        .await
        .unwrap_or(Protocol::Gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A connected pair: the client's end, and the server's end as `sniff` sees it.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// What `sniff` says when the client sends `chunks`, pausing between them.
    async fn sniffed(chunks: &[&[u8]], within: Duration) -> Protocol {
        let (mut client, server) = pair().await;
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for c in chunks {
                client.write_all(&c).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client
        });
        let got = sniff(&server, within).await;
        drop(writer.await.unwrap());
        got
    }

    #[tokio::test]
    async fn http1_methods_and_the_http2_preface_are_told_apart_even_when_split() {
        let s = Duration::from_secs(5);
        assert_eq!(
            sniffed(&[b"POST /v1/x HTTP/1.1\r\n"], s).await,
            Protocol::Http1
        );
        assert_eq!(
            sniffed(&[b"P", b"UT /v1/x HTTP/1.1\r\n"], s).await,
            Protocol::Http1
        );
        assert_eq!(
            sniffed(&[b"PR", b"OPFIND / HTTP/1.1\r\n"], s).await,
            Protocol::Http1
        );
        assert_eq!(sniffed(&[b"GET / HTTP/1.1\r\n"], s).await, Protocol::Http1);
        assert_eq!(
            sniffed(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], s).await,
            Protocol::Http2
        );
        assert_eq!(
            sniffed(&[b"P", b"R", b"I * HTTP/2.0\r\n\r\nSM\r\n\r\n"], s).await,
            Protocol::Http2
        );
    }

    #[tokio::test]
    async fn silent_or_closed_connections_are_gone_without_being_read() {
        // Nothing sent within the header timeout.
        let (_client, server) = pair().await;
        let t0 = std::time::Instant::now();
        assert_eq!(
            sniff(&server, Duration::from_millis(100)).await,
            Protocol::Gone
        );
        assert!(t0.elapsed() >= Duration::from_millis(100));
        // A client that stops after "P" is given up on too.
        assert_eq!(
            sniffed(&[b"P"], Duration::from_millis(100)).await,
            Protocol::Gone
        );
        // Closed at once.
        let (client, server) = pair().await;
        drop(client);
        assert_eq!(sniff(&server, Duration::from_secs(5)).await, Protocol::Gone);
        // Peeking consumed nothing: the bytes are still there for the HTTP stack.
        let (mut client, server) = pair().await;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(
            sniff(&server, Duration::from_secs(5)).await,
            Protocol::Http1
        );
        let mut buf = [0u8; 32];
        let n = server.try_read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
    }
}
