//! `--profile`: instructions and allocations per payment, for switchyard and for the bare hyper proxy,
//! counted by valgrind's callgrind. Counts are the same on every run and every machine load, where
//! wall-clock figures on a shared two-core machine move by ±30 % (issue 16).
//!
//! Each proxy runs under `valgrind --tool=callgrind` with the loadtest's config (switchyard: the
//! default policies, [`crate::configs::switchyard_yaml`], with the state backends asked for) in
//! front of a mock provider of this process (hyper's HTTP/1.1 server answering 200 with a small JSON
//! body). One keep-alive connection sends [`WARM_UP`] keyed payments; then callgrind's counters are
//! zeroed (`callgrind_control --zero`), [`PAYMENTS`] more are sent one after another, and the counters
//! are dumped (`callgrind_control --dump`). The per-payment figures are the dump's totals divided by
//! [`PAYMENTS`]: start-up, warm-up and shutdown are outside the window. (An earlier version ran each
//! proxy twice and subtracted; once-per-process work whose length depends on timing, such as the
//! clock calibration of `quanta`, then fell into the difference, by up to 7k instructions per
//! payment.)
//! - instructions: callgrind's `Ir` total over every thread of the proxy;
//! - allocations: calls to the C allocator's `malloc`, `calloc`, `realloc`, `posix_memalign`,
//!   `aligned_alloc` and `memalign` (what Rust's global allocator calls), or jemalloc's (switchyard's
//!   binary), from callgrind's call counts.
//!
//! Only the proxy runs under valgrind: the client and the mock provider are not counted. What runs
//! on a timer in the proxy (health checks every second) is counted when it falls in the window: a
//! few probes over its few seconds under valgrind (about 1 % of the figure).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::configs::{self, State, Upstreams};
use crate::fleet::{self, Process, Stream};
use crate::options::StateArg;
use crate::{err, Options, Result};

/// Payments counted.
pub const PAYMENTS: u64 = 1_000;

/// Payments sent before, in both runs of a proxy.
pub const WARM_UP: u64 = 100;

/// How long a proxy under valgrind may take to start, or to stop and write its figures.
const VALGRIND_GRACE: Duration = Duration::from_secs(120);

/// The mock provider's answer body.
const CHARGE: &[u8] = br#"{"id":"ch_1","object":"charge","paid":true}"#;

/// The C allocator's entry points, as callgrind names them.
/// The switchyard binary's allocator is jemalloc, whose entry points carry the `_rjem_` prefix
/// (tikv-jemallocator; `mallocx` and `rallocx` for alignments above 16); the bare hyper proxy uses
/// the system's.
const ALLOCATOR: [&str; 14] = [
    "malloc",
    "calloc",
    "realloc",
    "posix_memalign",
    "aligned_alloc",
    "memalign",
    "__libc_malloc",
    "_rjem_malloc",
    "_rjem_mallocx",
    "_rjem_calloc",
    "_rjem_realloc",
    "_rjem_rallocx",
    "_rjem_posix_memalign",
    "_rjem_aligned_alloc",
];

/// What callgrind counted in one run of a proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Instructions executed, every thread.
    pub instructions: u64,
    /// Calls to the C allocator.
    pub allocations: u64,
}

/// The per-payment figures of one proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct PerPayment {
    /// `switchyard (state local)`, `bare hyper proxy`.
    pub target: String,
    /// Instructions per payment.
    pub instructions: f64,
    /// Allocations per payment.
    pub allocations: f64,
}

impl PerPayment {
    fn from_window(target: String, window: Counts) -> Self {
        let per = |n: u64| n as f64 / PAYMENTS as f64;
        Self {
            target,
            instructions: per(window.instructions),
            allocations: per(window.allocations),
        }
    }
}

/// Reads the totals of a callgrind output file written with `--compress-strings=no`: the `totals:`
/// (or `summary:`) line, and the `calls=` lines under a `cfn=` that names an allocator function.
pub fn parse_callgrind(text: &str) -> Result<Counts> {
    let mut counts = Counts::default();
    let mut total = None;
    let mut callee_is_allocator = false;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("cfn=") {
            // With compressed strings a name is `(id) name`; without, just the name.
            let name = name.rsplit(") ").next().unwrap_or(name).trim();
            callee_is_allocator = ALLOCATOR.contains(&name);
        } else if let Some(calls) = line.strip_prefix("calls=") {
            if callee_is_allocator {
                let n = calls.split_whitespace().next().unwrap_or("0");
                counts.allocations += n.parse::<u64>().unwrap_or(0);
            }
        } else if let Some(t) = line
            .strip_prefix("totals:")
            .or_else(|| line.strip_prefix("summary:"))
        {
            let n = t.split_whitespace().next().unwrap_or("");
            total = n.parse::<u64>().ok();
        }
    }
    counts.instructions = total.ok_or("callgrind output without totals")?;
    Ok(counts)
}

/// Fails with a clear message when valgrind is not installed.
fn check_valgrind() -> Result<()> {
    match Command::new("valgrind")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        _ => Err(err!(
            "--profile needs valgrind (callgrind counts the instructions and allocations): \
             install it (`apt-get install valgrind`) and run again"
        )),
    }
}

/// A mock provider on 127.0.0.1:0, a task of this runtime: 200 and [`CHARGE`] to every request.
async fn mock_provider() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    let mut answer = Response::new(Full::new(Bytes::from_static(CHARGE)));
                    answer.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(answer)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Sends `n` keyed payments (keys `tag-FROM`...) one after another on one connection to `proxy`;
/// every answer must be the provider's 200.
async fn pay(proxy: SocketAddr, tag: &str, n: u64) -> Result<()> {
    let stream = TcpStream::connect(proxy).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| err!("handshake with {proxy}: {e}"))?;
    let conn = tokio::spawn(conn);
    for i in 0..n {
        let req = Request::post("/v1/charges")
            .header(http::header::HOST, "psp")
            .header("idempotency-key", format!("{tag}-{i:08}"))
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Full::new(Bytes::from_static(b"amount=1000&currency=eur")))
            .map_err(|e| err!("request: {e}"))?;
        send.ready()
            .await
            .map_err(|e| err!("payment {i} to {proxy}: {e}"))?;
        let answer = send
            .send_request(req)
            .await
            .map_err(|e| err!("payment {i} to {proxy}: {e}"))?;
        let status = answer.status();
        let body = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| err!("payment {i} to {proxy}: {e}"))?
            .to_bytes();
        if status != StatusCode::OK || body != CHARGE {
            return Err(err!(
                "payment {i} to {proxy}: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
    }
    drop(send);
    let _ = conn.await;
    Ok(())
}

/// `valgrind --tool=callgrind` writing to `out`, before the proxy's own command line.
fn under_callgrind(out: &Path, program: &Path) -> Command {
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .args(["--compress-strings=no", "--compress-pos=no"])
        .arg(program);
    cmd
}

/// Runs `callgrind_control` with `args` for the proxy `pid`.
fn callgrind_control(role: &str, pid: u32, what: &str) -> Result<()> {
    let out = Command::new("callgrind_control")
        .arg(format!("--{what}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err!("{role}: callgrind_control --{what}: {e}"))?;
    if !out.status.success() {
        return Err(err!(
            "{role}: callgrind_control --{what} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Runs a proxy (started by `start`, which returns the process and its shop address): [`WARM_UP`]
/// payments, the counters zeroed, [`PAYMENTS`] payments, the counters dumped; then stops it and
/// reads the dump.
async fn one_run<F, Fut>(dir: &Path, role: &str, start: F) -> Result<Counts>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = Result<(Process, SocketAddr)>>,
{
    let out = dir.join(format!("{role}.callgrind"));
    // The dump of the window: callgrind numbers the dumps it is asked for, from 1.
    let window = dir.join(format!("{role}.callgrind.1"));
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&window);
    let (mut process, listen) = start(out.clone()).await?;
    pay(listen, &format!("{role}-warm"), WARM_UP).await?;
    callgrind_control(role, process.pid(), "zero")?;
    pay(listen, &format!("{role}-counted"), PAYMENTS).await?;
    callgrind_control(role, process.pid(), "dump")?;
    if !process.stop(VALGRIND_GRACE) {
        return Err(err!(
            "{role} did not stop within {VALGRIND_GRACE:?}: {}",
            process.log_tail()
        ));
    }
    let text = std::fs::read_to_string(&window)
        .map_err(|e| err!("{role}: no callgrind dump {}: {e}", window.display()))?;
    parse_callgrind(&text).map_err(|e| err!("{role}: {}: {e}", window.display()))
}

/// Profiles switchyard on each state backend of `--state` (default: `memory`, the loadtest's default,
/// and `local`, switchyard's) and the bare hyper proxy; prints one line each and returns them.
pub async fn run(opts: &Options) -> Result<Vec<PerPayment>> {
    check_valgrind()?;
    let release = !cfg!(debug_assertions);
    let switchyard = fleet::find_switchyard(opts.switchyard_bin.as_deref(), release, opts.quiet)?;
    let bare = fleet::find_bare_proxy(opts.bare_proxy_bin.as_deref(), release, opts.quiet)?;
    let dir = opts.out.join("profile");
    std::fs::create_dir_all(&dir)?;
    let dir = std::fs::canonicalize(&dir)?;
    let pidfile = dir.join("pids");
    let primary = mock_provider().await?;
    let backup = mock_provider().await?;
    let states = if opts.state.is_empty() {
        vec![StateArg::Memory, StateArg::Local]
    } else {
        opts.state.clone()
    };
    let mut results = Vec::new();
    for state in states {
        let target = format!("switchyard (state {})", state.name());
        let role = format!("switchyard-{}", state.name());
        let config = dir.join(format!("{role}.yaml"));
        let state_dir = dir.join(format!("{role}.state"));
        let _ = std::fs::remove_dir_all(&state_dir);
        let backend = match state {
            StateArg::Memory => State::Memory,
            StateArg::Local => State::Local {
                dir: state_dir.display().to_string(),
            },
            StateArg::Redis => {
                return Err("--profile measures the memory and local backends".into())
            }
        };
        let upstreams = Upstreams {
            primary: (opts.primary.clone(), primary),
            backup: (opts.backup.clone(), backup),
            attempt_timeout: configs::ATTEMPT_TIMEOUT,
            route_extra: opts.route_extra.clone(),
            config_extra: opts.config_extra.clone(),
        };
        std::fs::write(&config, configs::switchyard_yaml(&upstreams, &backend, 0))?;
        if !opts.quiet {
            eprintln!("loadtest: profile: {target} ...");
        }
        let (switchyard, dir_, pidfile_) = (&switchyard, &dir, &pidfile);
        let window = one_run(&dir, &role.clone(), |out| async move {
            let mut cmd = under_callgrind(&out, switchyard);
            cmd.arg("run")
                .arg("--config")
                .arg(&config)
                .args(["--log-format", "json"])
                .env("RUST_LOG", "warn,switchyard::app=info");
            let mut process = Process::spawn(&role, cmd, dir_, pidfile_)?;
            let (listen, _) = process
                .wait_for_line(Stream::Stderr, VALGRIND_GRACE, fleet::serving_line)
                .await?;
            Ok((process, listen))
        })
        .await?;
        results.push(PerPayment::from_window(target, window));
    }
    let role = "bare-proxy".to_owned();
    if !opts.quiet {
        eprintln!("loadtest: profile: bare hyper proxy ...");
    }
    let (bare, dir_, pidfile_) = (&bare, &dir, &pidfile);
    let window = one_run(&dir, &role.clone(), |out| async move {
        let cmd = under_callgrind(&out, bare);
        fleet::spawn_bare_proxy(cmd, &role, primary, dir_, pidfile_, VALGRIND_GRACE).await
    })
    .await?;
    results.push(PerPayment::from_window("bare hyper proxy".into(), window));
    Ok(results)
}

/// The printed table: one line per proxy, and each switchyard's ratio to the bare proxy.
pub fn table(results: &[PerPayment]) -> String {
    let bare = results.iter().find(|r| r.target == "bare hyper proxy");
    let mut out = format!(
        "per payment ({PAYMENTS} keyed payments, one connection, callgrind):\n{:<28} {:>14} {:>12}\n",
        "target", "instructions", "allocations"
    );
    for r in results {
        let ratio = match bare {
            Some(b) if b.instructions > 0.0 && r.target != b.target => {
                format!(
                    "  ({:.2}× the bare proxy's instructions)",
                    r.instructions / b.instructions
                )
            }
            _ => String::new(),
        };
        out.push_str(&format!(
            "{:<28} {:>14.0} {:>12.1}{ratio}\n",
            r.target, r.instructions, r.allocations
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_totals_and_allocator_calls() {
        let text = "events: Ir\nfn=main\n0 10\ncfn=malloc\ncalls=3 0\n0 300\ncfn=free\ncalls=3 0\n0 90\n\
                    cfn=(12) realloc\ncalls=2 0\n0 50\ncfn=(13) malloc_usable_size\ncalls=7 0\n0 1\ntotals: 12345\n";
        assert_eq!(
            parse_callgrind(text).unwrap(),
            Counts {
                instructions: 12345,
                allocations: 5
            }
        );
        assert!(parse_callgrind("events: Ir\n").is_err());
        // jemalloc's prefixed entry points count; its frees and internals do not.
        let text = "events: Ir\nfn=main\ncfn=(1) _rjem_malloc\ncalls=4 0\n0 80\ncfn=(2) _rjem_sdallocx\n\
                    calls=4 0\n0 40\ncfn=(3) _rjem_rallocx\ncalls=1 0\n0 9\ncfn=(4) _rjem_je_arena_ralloc\n\
                    calls=1 0\n0 9\ntotals: 99\n";
        assert_eq!(parse_callgrind(text).unwrap().allocations, 5);
    }

    #[test]
    fn per_payment_is_the_window_divided_by_its_payments() {
        let window = Counts {
            instructions: 90_000 * PAYMENTS,
            allocations: 60 * PAYMENTS + PAYMENTS / 2,
        };
        let p = PerPayment::from_window("x".into(), window);
        assert_eq!(p.instructions, 90_000.0);
        assert_eq!(p.allocations, 60.5);
    }
}
