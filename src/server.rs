//! Serves a tower service on a TCP listener: HTTP/1.1 and HTTP/2 (prior knowledge) on the same port,
//! with a graceful drain on shutdown, and bounded under hostile clients.
//!
//! Every connection holds a permit of its listener's `max_connections` (and, for the shop and webhook
//! listeners, of the process-wide one); past either it is accepted and closed at once, and counted in
//! `switchyard_overload_rejections_total{reason="connections"}`. A new connection has
//! `preface_timeout` to say which protocol it speaks (the whole HTTP/2 preface), HTTP/1.1 has
//! `header_read_timeout` for each request head, and an HTTP/2 connection with no request for
//! `h2_idle_timeout` is closed with a GOAWAY (keep-alive pings close a dead peer's sooner). Every
//! request goes down the stack beside a [`RequestCtx`] ([`Req`]) with its peer and [`ListenerCtx`]: its body deadline and the
//! buffer budget. Failed accepts (out of file descriptors) back off instead of spinning, and are
//! logged at most once per interval.
//!
//! Stopping a server closes its listener at once (new connections are refused), asks every connection
//! to finish (GOAWAY, or `Connection: close` after the request in flight), and lets in-flight requests
//! finish up to the drain timeout. Then the requests still in flight are cut: the request stack answers
//! them itself (503 `shutting_down`, with `x-switchyard-outcome: unknown` when a provider may have
//! been reached), so they are logged and audited, and what is left is closed a moment later.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;

use crate::body::ProxyBody;
use crate::budget::{BufferBudget, Cutoff, ListenerCtx, REASON_CONNECTIONS};
use crate::config::{Limits as LimitsConfig, ListenerLimits};
use crate::ctx::{Req, RequestCtx};
use crate::metrics::Metrics;

/// How long the answers to cut requests get to be written before the connections are closed.
const CUT_GRACE: Duration = Duration::from_secs(1);
/// Failed accepts and refused connections are logged at most once per this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// First and longest pause after a failed accept.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Limits applied to every connection of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head; larger gets 431 (HTTP/1.1) or a stream error (HTTP/2).
    pub max_header_bytes: usize,
    /// Most header fields in a request head (HTTP/1.1; 431 past it).
    pub max_headers: usize,
    /// How long a connection may take to send its request head (HTTP/1.1: also the wait for the next).
    pub header_read_timeout: Duration,
    /// How long a new connection may take to send its first bytes (the whole HTTP/2 preface).
    pub preface_timeout: Duration,
    /// How long an HTTP/2 connection may stay without a request.
    pub h2_idle_timeout: Duration,
    /// Time between HTTP/2 keep-alive pings.
    pub h2_keep_alive_interval: Duration,
    /// Wait for a ping's answer.
    pub h2_keep_alive_timeout: Duration,
    /// Most connections open on this listener.
    pub max_connections: usize,
    /// How long a request body may take to arrive in full.
    pub body_read_timeout: Duration,
}

impl Limits {
    /// The limits of a listener from the config's `max_header_bytes`, `limits:` and the listener's own
    /// section of it.
    pub fn new(max_header_bytes: usize, all: &LimitsConfig, listener: &ListenerLimits) -> Self {
        Self {
            max_header_bytes,
            max_headers: all.max_headers,
            header_read_timeout: all.header_read_timeout,
            preface_timeout: all.preface_timeout,
            h2_idle_timeout: all.h2_idle_timeout,
            h2_keep_alive_interval: all.h2_keep_alive_interval,
            h2_keep_alive_timeout: all.h2_keep_alive_timeout,
            max_connections: listener.max_connections,
            body_read_timeout: listener.body_read_timeout,
        }
    }
}

/// What the listeners share: metrics, the buffer budget and (for the shop and webhook listeners) the
/// process-wide connection limit.
#[derive(Clone)]
pub struct Shared {
    /// The metrics.
    pub metrics: Metrics,
    /// The process-wide budget of buffered body bytes.
    pub budget: BufferBudget,
    /// The process-wide connection limit, for the listeners it applies to.
    pub connections: Option<Arc<Semaphore>>,
}

/// Where a stopping server is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    /// Finish what is in flight; take no new requests.
    Draining,
    /// The drain timeout ran out: requests in flight are answered by the stack itself.
    Cut,
    /// Close what is left.
    Closed,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Starts serving `service` on `listener`, on the current runtime.
    pub fn spawn<S>(
        listener: TcpListener,
        service: S,
        limits: Limits,
        name: &'static str,
        shared: Shared,
    ) -> Self
    where
        S: Service<Req<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        Self::spawn_on(
            &tokio::runtime::Handle::current(),
            listener,
            service,
            limits,
            name,
            shared,
        )
    }

    /// Starts serving `service` on `listener`, on `runtime` (its connections and requests run there).
    pub fn spawn_on<S>(
        runtime: &tokio::runtime::Handle,
        listener: TcpListener,
        service: S,
        limits: Limits,
        name: &'static str,
        shared: Shared,
    ) -> Self
    where
        S: Service<Req<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (stop, stop_rx) = watch::channel(None);
        // A listener is driven by the runtime it is registered with: move it over to `runtime`.
        let listener = listener.into_std();
        let task = runtime.spawn(async move {
            match listener.and_then(TcpListener::from_std) {
                Ok(listener) => run(listener, service, limits, stop_rx, name, shared).await,
                Err(e) => tracing::error!(server = name, error = %e, "cannot serve the listener"),
            }
        });
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

/// Logs a repeated event at most once per [`LOG_EVERY`], with how many were not logged.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    unlogged: u64,
}

impl Throttled {
    /// Whether to log now, and how many were skipped since the last line.
    fn tick(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// What a connection holds while open: its permits, and its share of the connections gauge.
struct Admitted {
    _listener: OwnedSemaphorePermit,
    _process: Option<OwnedSemaphorePermit>,
    gauge: prometheus::IntGauge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

async fn run<S>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    mut stop: watch::Receiver<Option<Duration>>,
    name: &'static str,
    shared: Shared,
) where
    S: Service<Req<Incoming>, Response = Response<ProxyBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_header_bytes.max(8192))
        // The buffer bound alone is loose (one read may bring more than it): this one is exact.
        .max_header_size(limits.max_header_bytes);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .keep_alive_interval(limits.h2_keep_alive_interval)
        .keep_alive_timeout(limits.h2_keep_alive_timeout)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let max = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(max as usize));
    let (phase, phase_rx) = watch::channel(Phase::Serving);
    let cut = tokio_util::sync::CancellationToken::new();
    let gauge = shared
        .metrics
        .listener_connections
        .with_label_values(&[name]);
    let refused = shared
        .metrics
        .overload_rejections_total
        .with_label_values(&[name, REASON_CONNECTIONS]);
    let accept_errors = shared
        .metrics
        .accept_errors_total
        .with_label_values(&[name]);
    let (mut accept_log, mut refuse_log) = (Throttled::default(), Throttled::default());
    let mut backoff = ACCEPT_BACKOFF.0;
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
                        accept_errors.inc();
                        if let Some(unlogged) = accept_log.tick(Instant::now()) {
                            tracing::warn!(server = name, error = %e, unlogged, ?backoff, "accept failed; backing off");
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                        continue;
                    }
                };
                backoff = ACCEPT_BACKOFF.0;
                let admitted = Arc::clone(&slots).try_acquire_owned().ok().and_then(|own| {
                    let process = match &shared.connections {
                        Some(all) => Some(Arc::clone(all).try_acquire_owned().ok()?),
                        None => None,
                    };
                    gauge.inc();
                    Some(Admitted { _listener: own, _process: process, gauge: gauge.clone() })
                });
                let Some(admitted) = admitted else {
                    // Closing at once (rather than leaving it in the backlog) tells the client now.
                    refused.inc();
                    if let Some(unlogged) = refuse_log.tick(Instant::now()) {
                        tracing::warn!(server = name, unlogged, "connection limit reached; closing new connections");
                    }
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let budget = shared.budget.clone();
                let cutoff = Cutoff::new(cut.clone());
                let body_read_timeout = limits.body_read_timeout;
                // The shop's credentials are marked sensitive first, so no log or HPACK table ever
                // keeps them; then each request gets the context the layers fill in place (see
                // `crate::ctx`).
                let svc = ServiceBuilder::new()
                    .layer(SetSensitiveRequestHeadersLayer::new([
                        http::header::AUTHORIZATION,
                        http::header::PROXY_AUTHORIZATION,
                        http::header::COOKIE,
                    ]))
                    .map_request(move |req: Request<Incoming>| Req {
                        http: req,
                        ctx: RequestCtx {
                            client: Some(peer),
                            listener: Some(ListenerCtx {
                                name,
                                body_deadline: Instant::now() + body_read_timeout,
                                body_read_timeout,
                                budget: budget.clone(),
                                cutoff: cutoff.clone(),
                            }),
                            ..RequestCtx::default()
                        },
                    })
                    .service(service.clone());
                let (h1, h2) = (h1.clone(), h2.clone());
                let mut phase = phase_rx.clone();
                tokio::spawn(async move {
                    let _admitted = admitted;
                    // A connection that has not said which protocol when the drain starts is closed.
                    let protocol = tokio::select! {
                        p = sniff(&stream, limits.preface_timeout) => p,
                        _ = phase.wait_for(|p| *p != Phase::Serving) => Protocol::Gone,
                    };
                    match protocol {
                        Protocol::Http2 => {
                            let activity = Arc::new(Activity::default());
                            let tracked = Arc::clone(&activity);
                            let svc = tower::service_fn(move |req: Request<Incoming>| {
                                let busy = tracked.enter();
                                let answer = svc.clone().oneshot(req);
                                async move {
                                    // The stream is in flight until its response body ends too.
                                    answer.await.map(|resp| {
                                        resp.map(|body| {
                                            body.map_frame(move |frame| {
                                                let _busy = &busy;
                                                frame
                                            })
                                            .boxed_unsync()
                                        })
                                    })
                                }
                            });
                            let conn = h2.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
                            let idle = Idle {
                                activity,
                                timeout: limits.h2_idle_timeout,
                                grace: limits.h2_keep_alive_timeout,
                            };
                            drive(Box::pin(conn), phase, Some(idle), name).await;
                        }
                        Protocol::Http1 => {
                            let conn = h1.serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
                            drive(Box::pin(conn), phase, None, name).await;
                        }
                        Protocol::Gone => {}
                    }
                });
            }
        }
    };
    drop(listener);
    let _ = phase.send(Phase::Draining);
    let open = || slots.available_permits();
    tracing::info!(
        server = name,
        in_flight_connections = (max as usize).saturating_sub(open()),
        "draining"
    );
    let all_closed = || Arc::clone(&slots).acquire_many_owned(max);
    tokio::select! {
        _ = all_closed() => tracing::info!(server = name, "drained"),
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(server = name, ?drain, "drain timeout reached; answering the requests still in flight and closing");
            let _ = phase.send(Phase::Cut);
            cut.cancel();
            let _ = tokio::time::timeout(CUT_GRACE, all_closed()).await;
            let _ = phase.send(Phase::Closed);
            let _ = tokio::time::timeout(Duration::from_millis(100), all_closed()).await;
        }
    }
}

/// The requests in flight on one HTTP/2 connection, and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    since: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            since: Mutex::new(Instant::now()),
        }
    }
}

/// Marks a request in flight on a connection until dropped.
struct Busy(Arc<Activity>);

impl Activity {
    fn enter(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// When the connection will have been idle for `timeout`, if it is idle now.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = *self.since.lock().unwrap_or_else(|p| p.into_inner());
        Some(since + timeout)
    }

    /// Resolves once the connection has been idle for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            match self.idle_deadline(timeout) {
                Some(at) if at <= Instant::now() => return,
                Some(at) => tokio::time::sleep_until(at).await,
                None => tokio::time::sleep(timeout).await,
            }
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An HTTP/1.1 or HTTP/2 connection being served.
type Connection = std::pin::Pin<
    Box<dyn GracefulConnection<Error = hyper::Error, Output = Result<(), hyper::Error>> + Send>,
>;

/// How an HTTP/2 connection's idleness is bounded.
struct Idle {
    activity: Arc<Activity>,
    /// Time without a request before the GOAWAY.
    timeout: Duration,
    /// Time after the GOAWAY for a peer that neither opens nor ends a stream before it is closed (a
    /// peer that never answers the GOAWAY's ping would otherwise keep it open).
    grace: Duration,
}

/// Runs a connection to its end: asks it to finish when the server drains or (HTTP/2) it has been idle
/// too long, and drops it when the server closes or (HTTP/2) it stays idle after being asked.
async fn drive(
    mut conn: Connection,
    mut phase: watch::Receiver<Phase>,
    idle: Option<Idle>,
    name: &'static str,
) {
    // Set once the connection is asked to finish: when an idle one is closed for good.
    let mut finish_by: Option<Instant> = None;
    loop {
        let now = *phase.borrow_and_update();
        if now == Phase::Closed {
            return;
        }
        if now >= Phase::Draining && finish_by.is_none() {
            conn.as_mut().graceful_shutdown();
            finish_by = idle.as_ref().map(|i| Instant::now() + i.grace);
            if idle.is_none() {
                // HTTP/1.1 ends by itself after the request in flight.
                finish_by = Some(far_future());
            }
        }
        let watch_idle = async {
            match (&idle, finish_by) {
                (Some(i), None) => i.activity.idle_for(i.timeout).await,
                (Some(_), Some(at)) => tokio::time::sleep_until(at).await,
                (None, _) => std::future::pending().await,
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(server = name, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = phase.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = watch_idle => {
                let Some(i) = &idle else { continue };
                match finish_by {
                    None => {
                        tracing::debug!(server = name, "closing an idle HTTP/2 connection");
                        conn.as_mut().graceful_shutdown();
                        finish_by = Some(Instant::now() + i.grace);
                    }
                    Some(_) if i.activity.idle_deadline(Duration::ZERO).is_some() => return,
                    Some(_) => finish_by = Some(Instant::now() + i.grace),
                }
            }
        }
    }
}

/// A time no timer reaches.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

/// Which protocol a new connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    /// Closed, failed or silent past the preface timeout before sending anything telling (or, for
    /// HTTP/2, before sending the whole preface).
    Gone,
}

/// The HTTP/2 connection preface (RFC 9113 §3.4). It starts with the method `PRI`, which HTTP/1.x never
/// uses, so three bytes tell the protocols apart.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The bytes that tell HTTP/2 from HTTP/1.x.
const TELLING: usize = 3;

/// Tells HTTP/1.1 from HTTP/2 with prior knowledge by peeking at the first bytes, without consuming
/// them, and for HTTP/2 waits for the whole preface, all within `within`: hyper's HTTP/2 server would
/// otherwise wait for the rest of a partial preface for ever. (hyper-util's auto server reads the bytes
/// instead and hands them back through a rewinding reader, which costs every HTTP/1.1 connection a
/// second read-buffer allocation that doubles it to 16 KiB.)
async fn sniff(stream: &TcpStream, within: Duration) -> Protocol {
    let look = async {
        let mut buf = [0u8; PREFACE.len()];
        // Only a client that splits its first bytes over several packets comes back here; the pause
        // (doubling, at most 50 ms) keeps such a slow client from spinning the loop.
        let mut pause = Duration::from_millis(1);
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) | Err(_) => return Protocol::Gone,
                Ok(n) => n,
            };
            let telling = n.min(TELLING);
            if buf[..telling] != PREFACE[..telling] {
                return Protocol::Http1;
            }
            if n == PREFACE.len() {
                // A wrong preface past "PRI" is for the HTTP/2 server to refuse (with a GOAWAY).
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

    #[test]
    fn repeated_events_are_logged_once_per_interval_with_the_count_skipped() {
        let t0 = Instant::now();
        let mut log = Throttled::default();
        assert_eq!(log.tick(t0), Some(0));
        assert_eq!(log.tick(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.tick(t0 + Duration::from_secs(2)), None);
        assert_eq!(log.tick(t0 + LOG_EVERY), Some(2));
        assert_eq!(log.tick(t0 + LOG_EVERY), None);
    }

    #[tokio::test]
    async fn a_connection_is_idle_only_with_nothing_in_flight() {
        let activity = Arc::new(Activity::default());
        let timeout = Duration::from_millis(50);
        let busy = activity.enter();
        assert_eq!(activity.idle_deadline(timeout), None);
        tokio::time::sleep(timeout * 2).await;
        assert_eq!(
            activity.idle_deadline(timeout),
            None,
            "a long request is not idleness"
        );
        drop(busy);
        let deadline = activity.idle_deadline(timeout).unwrap();
        assert!(deadline > Instant::now());
        activity.idle_for(timeout).await;
        assert!(Instant::now() >= deadline);
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
        // A client that stops after "P" is given up on too, and so is one that stops in the preface.
        assert_eq!(
            sniffed(&[b"P"], Duration::from_millis(100)).await,
            Protocol::Gone
        );
        assert_eq!(
            sniffed(&[b"PRI * HTTP/2.0\r\n"], Duration::from_millis(100)).await,
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
