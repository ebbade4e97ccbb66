//! The allocation guard: how many times the sidecar calls the allocator per keyed payment, on the
//! default policies of the loadtest's config, must stay at or below [`LIMIT`] (issue 16).
//!
//! Allocations are counted, not timed, so the figure is the same on every machine and every run, and
//! the guard belongs in `cargo test`. It is a test binary of its own because its
//! `#[global_allocator]` (a counting wrapper around the system allocator) must affect nothing else.
//!
//! **What is counted.** Every call to `alloc`, `alloc_zeroed` and `realloc` of the process's global
//! allocator (a `realloc` counts as one, like a fresh allocation: it may move the block), on every
//! thread, while the test sends [`PAYMENTS`] keyed payments (`POST /v1/charges`, a new
//! `Idempotency-Key` each, a 23-byte form body; the provider answers 200 with a 40-byte JSON body)
//! one after another on one keep-alive connection:
//! - `through`: the test's client → the sidecar → a mock provider (hyper's HTTP/1.1 server on
//!   127.0.0.1:0), after [`WARM_UP`] payments that open the sidecar's provider connection and fill
//!   its tables;
//! - `direct`: the same payments from the same client straight to the same mock provider, on a
//!   connection of their own.
//!
//! The sidecar's share is `through − direct`: the client's and the mock provider's own allocations
//! cancel out, and what is left is what the sidecar allocated to take the shop's request, forward it
//! and pass the answer back (its server and client connections included), divided by [`PAYMENTS`].
//! It is slightly over the sidecar's own count: the mock provider also parses the headers the
//! sidecar adds (`x-request-id`, the provider's idempotency key). Deallocations are not counted.
//!
//! The sidecar runs in-process, on the test's one-thread runtime (the binary's default is one
//! request thread too), with the loadtest's default policies: breakers, health checks, slow start, a
//! provider quota, a route rate limit, retries with the default budget, metrics and the idempotency
//! store, measured on `local` (the default backend, guarded) and on `memory` (printed). Two
//! differences with the loadtest: health checks run every hour, so that no probe falls inside the
//! counted window (what they cost is per interval, not per payment), and no log subscriber is
//! installed (the access log's formatting is the binary's, not the request path's).

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use switchyard::app::{App, Options};

/// The allocator wrapper: the system allocator, with every allocation counted.
struct Counting;

/// Allocations (`alloc`, `alloc_zeroed`, `realloc`) since the process started.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counter is
// an atomic, touched without allocating.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by this allocator (so by `System`) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator (so by `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Payments counted in each measurement.
const PAYMENTS: u64 = 200;

/// Payments sent through the sidecar before counting starts.
const WARM_UP: u64 = 50;

/// The most allocations per payment the sidecar may make: 25, as issue 16 asks (its goal is 20,
/// which the profile's count of the sidecar alone meets on `memory`: 19.0). The sidecar measured
/// 54.02 when the guard was written; 37.02 once its own provider pool replaced hyper-util's legacy
/// client and one request context replaced seven extensions; 28.02 once six layers' futures and the
/// body read were named instead of boxed and the provider's headers copied into a map with room;
/// 24.02 once the request context went beside the request (`ctx::Req`) instead of into
/// `http::Extensions` and the shop's key header stopped being copied only to be replaced. (This
/// count is a little over the sidecar's own: the mock provider also parses the headers the sidecar
/// adds.)
const LIMIT: f64 = 25.0;

/// The mock provider's answer body.
const CHARGE: &[u8] = br#"{"id":"ch_1","object":"charge","paid":1}"#;

/// A mock provider: hyper's HTTP/1.1 server on 127.0.0.1:0 that answers every request (health
/// checks too) 200 with [`CHARGE`], after reading the request's body.
async fn mock_provider() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(StatusCode::OK)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(CHARGE)))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// One keep-alive HTTP/1.1 connection to `addr`.
async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// Sends payments `from..from + n` on `send`, each with a key of its own; every answer must be a
/// 200 with the provider's body. Keys are fixed-width, so every measurement allocates alike.
async fn pay(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    tag: &str,
    from: u64,
    n: u64,
) {
    for i in from..from + n {
        let req = Request::post("/v1/charges")
            .header("host", "psp")
            .header("idempotency-key", format!("{tag}-{i:08}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from_static(b"amount=1000&currency=eur")))
            .unwrap();
        send.ready().await.unwrap();
        let answer = send.send_request(req).await.unwrap();
        let status = answer.status();
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(status, StatusCode::OK, "payment {i}: {body:?}");
        assert_eq!(&body[..], CHARGE, "payment {i}");
    }
}

/// The loadtest's switchyard config (loadtest/src/configs.rs) with `primary` and `backup`, the
/// `state` section given, and health checks every hour.
fn config(primary: SocketAddr, backup: SocketAddr, state: &str) -> String {
    let provider = |name: &str, addr: SocketAddr| {
        format!(
            "  {name}:
    url: http://{addr}
    connect_timeout: 250ms
    timeout: 1000ms
    pool_max_idle: 256
    breaker: {{ consecutive_failures: 5, failure_rate: 0.5, window: 10s, min_requests: 20, open_for: 1s, max_open_for: 10s, half_open_probes: 3 }}
    health_check: {{ path: /healthz, interval: 1h, timeout: 500ms, unhealthy_after: 2, healthy_after: 2 }}
    slow_start: 2s
    quota: {{ rps: 1000000, burst: 100000 }}
"
        )
    };
    format!(
        "listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
drain_timeout: 1s
providers:
{}{}routes:
  - name: payments
    match:
      path_prefix: /v1/
      methods: [GET, POST]
    targets:
      - {{ provider: psp-primary, priority: 0 }}
      - {{ provider: psp-backup, priority: 1 }}
    timeout: 5000ms
    max_body: 64KiB
    rate_limit: {{ rps: 1000000, burst: 100000 }}
{state}",
        provider("psp-primary", primary),
        provider("psp-backup", backup),
    )
}

/// Allocations made while `f` runs.
async fn count<F: std::future::Future<Output = ()>>(f: F) -> u64 {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    f.await;
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

/// Allocations per payment of the sidecar on the `state` section given, and of the client and the
/// mock provider alone (`direct`).
async fn per_payment(state: &str, tag: &str) -> (f64, f64) {
    let primary = mock_provider().await;
    let backup = mock_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, config(primary, backup, state)).unwrap();
    let mut options = Options::new(path);
    options.watch = false;
    options.sighup = false;
    let app = App::start(options).await.unwrap();

    let mut shop = connect(app.shop_addr()).await;
    pay(&mut shop, tag, 0, WARM_UP).await;
    let mut direct = connect(primary).await;
    pay(&mut direct, "warm", 0, WARM_UP).await;

    let through = count(pay(&mut shop, tag, WARM_UP, PAYMENTS)).await;
    let alone = count(pay(&mut direct, tag, WARM_UP, PAYMENTS)).await;
    drop((shop, direct));
    app.shutdown().await;
    (
        through.saturating_sub(alone) as f64 / PAYMENTS as f64,
        alone as f64 / PAYMENTS as f64,
    )
}

/// The guard. One test function, so that no other test of this binary allocates while it counts.
#[test]
fn a_keyed_payment_allocates_at_most_the_limit() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let state_dir = tempfile::tempdir().unwrap();
        let local = format!(
            "state:\n  backend: local\n  dir: {}\n",
            state_dir.path().display()
        );
        let (memory, direct) = per_payment("state:\n  backend: memory\n", "memory").await;
        let (local, _) = per_payment(&local, "local").await;
        println!(
            "allocations per keyed payment: switchyard {local:.2} (state local), {memory:.2} \
             (state memory); test client and mock provider alone {direct:.2}"
        );
        assert!(
            local <= LIMIT,
            "switchyard allocates {local:.2} times per keyed payment (state local), over the guard's \
             {LIMIT}; profile with DHAT (loadtest/README.md) to find what was added"
        );
        // The memory backend is measured to be compared, and must work; it is not the default.
        assert!(memory > 0.0);
    });
}
