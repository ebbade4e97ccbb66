//! The processes of a run: sandbox providers, switchyard, the bare hyper proxy, Envoy, HAProxy, nginx.
//! Each is started with its output in files of the run's folder, its id appended to a pid file, and
//! is killed and reaped when its handle is dropped — at the end of the run, on an error, or while a
//! panic unwinds. A process with workers of its own (nginx) is asked to stop them first, and what is
//! left of its tree is killed.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{err, procfs, Result};

/// Which output of a process to read.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A child process, killed and reaped on drop.
#[derive(Debug)]
pub struct Process {
    role: String,
    child: std::process::Child,
    stdout: PathBuf,
    stderr: PathBuf,
    /// Stop it with SIGTERM and let it stop its own children, then kill what is left of its tree.
    has_workers: bool,
}

impl Process {
    /// Starts `cmd` with stdin closed and its output in `dir/ROLE.stdout` and `dir/ROLE.stderr`; its
    /// id is appended to `pidfile` as `ROLE PID`.
    pub fn spawn(role: &str, mut cmd: Command, dir: &Path, pidfile: &Path) -> Result<Self> {
        let stdout = dir.join(format!("{role}.stdout"));
        let stderr = dir.join(format!("{role}.stderr"));
        let program = cmd.get_program().to_string_lossy().into_owned();
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?);
        let child = cmd
            .spawn()
            .map_err(|e| err!("cannot start {role} ({program}): {e}"))?;
        let process = Self {
            role: role.to_owned(),
            child,
            stdout,
            stderr,
            has_workers: false,
        };
        let mut pids = OpenOptions::new().create(true).append(true).open(pidfile)?;
        writeln!(pids, "{} {}", process.role, process.pid())?;
        Ok(process)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its role (`psp-primary`, `switchyard`, `switchyard-2`, `redis-server`, `bare-proxy`, `envoy`,
    /// `haproxy`, `nginx`).
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The last lines of its error output, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n");
        format!("{} (log {}):\n{tail}", self.role, self.stderr.display())
    }

    /// Waits until a line of `stream` gives `Some` through `parse`; fails when the process exits or
    /// `timeout` passes first.
    pub async fn wait_for_line<T>(
        &mut self,
        stream: Stream,
        timeout: Duration,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<T> {
        let path = match stream {
            Stream::Stdout => self.stdout.clone(),
            Stream::Stderr => self.stderr.clone(),
        };
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(found) = text.lines().find_map(&parse) {
                return Ok(found);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(err!(
                    "{} exited ({status}) while starting: {}",
                    self.role,
                    self.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(err!(
                    "{} did not start within {timeout:?}: {}",
                    self.role,
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks it to stop with SIGTERM and waits up to `grace` for it to exit; whether it exited (a
    /// profiler it runs under writes its figures as the process ends).
    pub fn stop(&mut self, grace: Duration) -> bool {
        if !signal(self.pid(), "TERM") {
            return !self.running();
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Appends its current child processes to `pidfile` as `ROLE-worker PID`, and returns them.
    pub fn note_workers(&self, pidfile: &Path) -> Result<Vec<u32>> {
        let workers = procfs::descendants(self.pid());
        let mut pids = OpenOptions::new().create(true).append(true).open(pidfile)?;
        for w in &workers {
            writeln!(pids, "{}-worker {w}", self.role)?;
        }
        Ok(workers)
    }

    /// SIGTERM (nginx's fast shutdown: the master stops its workers and reaps them), then up to
    /// [`TREE_STOP_GRACE`] for it to exit.
    fn terminate_tree(&mut self) {
        if !signal(self.pid(), "TERM") {
            return;
        }
        let deadline = Instant::now() + TREE_STOP_GRACE;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// How long a process with workers gets to stop them before its tree is killed.
const TREE_STOP_GRACE: Duration = Duration::from_secs(3);

impl Drop for Process {
    fn drop(&mut self) {
        // Its descendants now, while they are surely its own: a killed master leaves its workers
        // running.
        let workers = if self.has_workers && self.running() {
            let workers = procfs::descendants(self.pid());
            self.terminate_tree();
            workers
        } else {
            Vec::new()
        };
        let _ = self.child.kill();
        let _ = self.child.wait();
        for w in workers.into_iter().filter(|w| procfs::alive(*w)) {
            signal(w, "KILL");
        }
    }
}

/// Sends signal `name` (`TERM`, `KILL`) to process `pid` with the shell's `kill` (std has no
/// signal but SIGKILL to its own children, and this crate has no unsafe code); whether it was sent.
fn signal(pid: u32, name: &str) -> bool {
    Command::new("sh")
        .args(["-c", "kill -s \"$1\" \"$2\"", "sh", name, &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A sandbox provider process.
#[derive(Debug)]
pub struct SandboxProcess {
    /// The process.
    pub process: Process,
    /// Where it takes payments.
    pub addr: SocketAddr,
    /// Its control API, `http://host:port`.
    pub control: String,
}

/// How long a process may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Starts `switchyard sandbox` named `name` on ports the system picks.
pub async fn start_sandbox(
    switchyard: &Path,
    name: &str,
    dir: &Path,
    pidfile: &Path,
) -> Result<SandboxProcess> {
    let mut cmd = Command::new(switchyard);
    cmd.args(["sandbox", "--listen", "127.0.0.1:0", "--name", name])
        .args(["--control", "127.0.0.1:0"])
        .env("RUST_LOG", "warn");
    let mut process = Process::spawn(name, cmd, dir, pidfile)?;
    let listening = format!("sandbox {name} listening on ");
    let addr = process
        .wait_for_line(Stream::Stdout, START_TIMEOUT, |l| {
            l.strip_prefix(&listening)?
                .trim()
                .parse::<SocketAddr>()
                .ok()
        })
        .await?;
    let control = process
        .wait_for_line(Stream::Stdout, START_TIMEOUT, |l| {
            l.strip_prefix("sandbox control on ")?
                .trim()
                .parse::<SocketAddr>()
                .ok()
        })
        .await?;
    Ok(SandboxProcess {
        process,
        addr,
        control: format!("http://{control}"),
    })
}

/// A switchyard process.
#[derive(Debug)]
pub struct ProxyProcess {
    /// The process.
    pub process: Process,
    /// The shop listener.
    pub listen: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    /// The webhook listeners of its own (`webhooks[].listen`), bound addresses.
    pub webhooks: Vec<SocketAddr>,
}

/// The bound addresses of the webhook listeners in the "switchyard is serving" line
/// (`webhooks: "CONFIGURED=BOUND,..."`); none when the line has no such field.
pub fn serving_webhooks(line: &str) -> Vec<SocketAddr> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return Vec::new();
    };
    let fields = v.get("fields").unwrap_or(&v);
    fields
        .get("webhooks")
        .and_then(|w| w.as_str())
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| pair.split_once('=')?.1.parse().ok())
        .collect()
}

/// Reads `listen` and `admin` from the JSON log line "switchyard is serving".
pub fn serving_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields").unwrap_or(&v);
    if fields.get("message")?.as_str()? != "switchyard is serving" {
        return None;
    }
    let addr = |k: &str| fields.get(k)?.as_str()?.parse::<SocketAddr>().ok();
    Some((addr("listen")?, addr("admin")?))
}

/// Starts `switchyard run --config CONFIG --log-format json` as `role` (`switchyard`, or
/// `switchyard-2`... for the other sidecars of a fleet: its log files are named after it) and waits
/// until it serves. Per-request log lines are off unless `request_log`.
pub async fn start_switchyard(
    switchyard: &Path,
    role: &str,
    config: &Path,
    dir: &Path,
    pidfile: &Path,
    request_log: bool,
) -> Result<ProxyProcess> {
    let mut cmd = Command::new(switchyard);
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .args(["--log-format", "json"])
        .env(
            "RUST_LOG",
            if request_log {
                "info"
            } else {
                "warn,switchyard::app=info"
            },
        );
    let mut process = Process::spawn(role, cmd, dir, pidfile)?;
    let (listen, admin, webhooks) = process
        .wait_for_line(Stream::Stderr, START_TIMEOUT, |line| {
            serving_line(line).map(|(l, a)| (l, a, serving_webhooks(line)))
        })
        .await?;
    Ok(ProxyProcess {
        process,
        listen,
        admin,
        webhooks,
    })
}

/// Starts the bare hyper proxy (`bare-proxy`) on a port the system picks, forwarding to `upstream`,
/// and waits until it listens; returns it and its address.
pub async fn start_bare_proxy(
    bin: &Path,
    upstream: SocketAddr,
    dir: &Path,
    pidfile: &Path,
) -> Result<(Process, SocketAddr)> {
    spawn_bare_proxy(
        Command::new(bin),
        "bare-proxy",
        upstream,
        dir,
        pidfile,
        START_TIMEOUT,
    )
    .await
}

/// Runs `cmd` (the bare proxy's binary, or a wrapper such as valgrind in front of it) with the
/// bare proxy's arguments, and waits up to `grace` for the address it listens on.
pub async fn spawn_bare_proxy(
    mut cmd: Command,
    role: &str,
    upstream: SocketAddr,
    dir: &Path,
    pidfile: &Path,
    grace: Duration,
) -> Result<(Process, SocketAddr)> {
    cmd.args(["--listen", "127.0.0.1:0", "--upstream"])
        .arg(upstream.to_string());
    let mut process = Process::spawn(role, cmd, dir, pidfile)?;
    let listen = process
        .wait_for_line(Stream::Stdout, grace, |l| {
            l.strip_prefix(crate::bare_proxy::READY_PREFIX)?
                .trim()
                .parse::<SocketAddr>()
                .ok()
        })
        .await?;
    Ok((process, listen))
}

/// The bare hyper proxy binary (`--bare-proxy-bin`, else `bare-proxy` of this package; `cargo run`
/// builds only `loadtest`, so it is built here too).
pub fn find_bare_proxy(explicit: Option<&Path>, release: bool, quiet: bool) -> Result<PathBuf> {
    find_workspace_binary(
        "loadtest",
        "bare-proxy",
        "--bare-proxy-bin",
        explicit,
        release,
        quiet,
    )
}

/// Starts Envoy on `config`. Readiness is the caller's to check (an answer through it).
pub fn start_envoy(envoy: &Path, config: &Path, dir: &Path, pidfile: &Path) -> Result<Process> {
    let mut cmd = Command::new(envoy);
    cmd.arg("-c")
        .arg(config)
        .args(["--disable-hot-restart", "--log-level", "warn"]);
    Process::spawn("envoy", cmd, dir, pidfile)
}

/// Starts HAProxy on `config` in the foreground (`-db`: one process, no daemon), so that it is
/// stopped by its process id. Readiness is the caller's to check (an answer through it).
pub fn start_haproxy(haproxy: &Path, config: &Path, dir: &Path, pidfile: &Path) -> Result<Process> {
    let mut cmd = Command::new(haproxy);
    cmd.arg("-db").arg("-f").arg(config);
    Process::spawn("haproxy", cmd, dir, pidfile)
}

/// Starts nginx with `dir` as its prefix and `config`, in the foreground (`daemon off`): a master
/// process and its workers, stopped together when the handle is dropped. Readiness is the
/// caller's to check (an answer through it).
pub fn start_nginx(nginx: &Path, config: &Path, dir: &Path, pidfile: &Path) -> Result<Process> {
    let mut cmd = Command::new(nginx);
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(config)
        .args(["-g", "daemon off;"]);
    let mut process = Process::spawn("nginx", cmd, dir, pidfile)?;
    process.has_workers = true;
    Ok(process)
}

/// A `redis-server` process of a run.
#[derive(Debug)]
pub struct RedisProcess {
    /// The process.
    pub process: Process,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// Starts `redis-server` on a free loopback port, with its folder in `dir`, nothing saved (`--save ""`,
/// `--appendonly no`) and `noeviction` (a sidecar refuses a Redis that could evict its records), and
/// waits until it answers PING. Killed by its process id, as every process of a run.
pub async fn start_redis(redis: &Path, dir: &Path, pidfile: &Path) -> Result<RedisProcess> {
    let port = free_port()?;
    let data = dir.join("redis");
    std::fs::create_dir_all(&data)?;
    let mut cmd = Command::new(redis);
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--maxmemory-policy", "noeviction", "--daemonize", "no"])
        .args(["--protected-mode", "yes", "--loglevel", "warning"])
        .arg("--dir")
        .arg(&data);
    let mut process = Process::spawn("redis-server", cmd, dir, pidfile)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if let Err(e) = crate::redis::wait_ready(addr, START_TIMEOUT).await {
        let log = std::fs::read_to_string(&process.stdout).unwrap_or_default();
        let exited = !process.running();
        return Err(err!(
            "{e}{}; its log ({}):\n{}",
            if exited { " (it exited)" } else { "" },
            process.stdout.display(),
            log.lines().rev().take(8).collect::<Vec<_>>().join("\n")
        ));
    }
    Ok(RedisProcess { process, addr })
}

/// A loopback port that was free a moment ago (for Envoy, HAProxy and nginx, which cannot report
/// a port they picked).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The Envoy binary: `explicit`, else `envoy` on PATH; `None` when there is none.
pub fn find_envoy(explicit: Option<&Path>) -> Option<PathBuf> {
    find_binary("envoy", explicit)
}

/// A binary named `name`: `explicit`, else on PATH, else (for daemons that packages install
/// there, such as Debian's `haproxy` and `nginx`) in `/usr/local/sbin` or `/usr/sbin`, which are
/// not on an ordinary user's PATH; `None` when there is none.
pub fn find_binary(name: &str, explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return is_executable(p).then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/local/sbin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A proxy's version (`envoy --version`, `haproxy -v`, `nginx -v`), when it answers.
pub fn version(bin: &Path, flag: &str) -> Option<String> {
    let out = Command::new(bin)
        .arg(flag)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    // nginx writes it to stderr.
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_version(&text)
}

/// The word after "version" (and a colon) on the first line that has one, else the first line:
/// "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL", "HAProxy version 2.6.12-1 2023/03/20
/// - https://haproxy.org/", "nginx version: nginx/1.22.1".
pub fn parse_version(text: &str) -> Option<String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.clone().next()?;
    let word = lines.find_map(|l| {
        let (_, after) = l.split_once("version")?;
        after
            .trim_start_matches(':')
            .split_whitespace()
            .next()
            .map(str::to_owned)
    });
    Some(word.unwrap_or_else(|| first.to_owned()))
}

/// The switchyard binary (`--switchyard-bin`, else `switchyard` of this workspace).
pub fn find_switchyard(explicit: Option<&Path>, release: bool, quiet: bool) -> Result<PathBuf> {
    find_workspace_binary(
        "switchyard",
        "switchyard",
        "--switchyard-bin",
        explicit,
        release,
        quiet,
    )
}

/// Binary `bin` of workspace package `package`: `explicit` (given with `flag`), else built by cargo in
/// the given profile (a no-op when it is up to date), else the one beside this executable (or one
/// folder up, for a test binary in `target/*/deps`).
fn find_workspace_binary(
    package: &str,
    bin: &str,
    flag: &str,
    explicit: Option<&Path>,
    release: bool,
    quiet: bool,
) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return if is_executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(err!("{flag} {}: not an executable file", p.display()))
        };
    }
    match cargo_build(package, bin, release, quiet) {
        Built::Binary(p) => return Ok(p),
        Built::Failed(why) => {
            // Never fall back to a binary from an earlier build: it would measure old code.
            return Err(err!(
                "cargo could not build {bin} ({why}); fix the build, or pass {flag} to measure a binary of your choice"
            ));
        }
        Built::NoCargo => {}
    }
    // No cargo to ask (the loadtest binary was copied elsewhere): the binary beside it, said aloud.
    let exe = std::env::current_exe()?;
    let beside = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join(bin))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            let release = if cfg!(debug_assertions) { "" } else { " --release" };
            err!(
                "cannot find the {bin} binary beside {}: build it with `cargo build{release} -p {package}` or pass {flag}",
                exe.display()
            )
        })?;
    if !quiet {
        eprintln!(
            "loadtest: no cargo to build {bin} with; using {} as it is",
            beside.display()
        );
    }
    Ok(beside)
}

/// What asking cargo for a binary gave.
enum Built {
    /// The binary, up to date.
    Binary(PathBuf),
    /// Cargo ran and could not build it.
    Failed(String),
    /// Cargo could not be run at all.
    NoCargo,
}

/// Variables `cargo run` sets for the program it runs. Passed on to the nested cargo, they change
/// what build scripts that watch them see (ring's reads CARGO_MANIFEST_DIR and CARGO_PKG_*), so the
/// nested build recompiled ring, rustls and switchyard instead of reusing `cargo build`'s work.
fn set_by_cargo_run(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
        )
}

/// Builds binary `bin` of workspace package `package` with cargo in the given profile (a no-op
/// when it is up to date, with the feature set `cargo build` resolves for it).
fn cargo_build(package: &str, bin: &str, release: bool, quiet: bool) -> Built {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new("."));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "-p", package, "--bin", bin])
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(if quiet {
            Stdio::null()
        } else {
            Stdio::inherit()
        });
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_by_cargo_run) {
            cmd.env_remove(&name);
        }
    }
    if release {
        cmd.arg("--release");
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(_) => return Built::NoCargo,
    };
    if !out.status.success() {
        return Built::Failed(format!("cargo build exited with {}", out.status));
    }
    let built = String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        if v.get("reason")?.as_str()? != "compiler-artifact"
            || v.pointer("/target/name")?.as_str()? != bin
        {
            return None;
        }
        v.get("executable")?.as_str().map(PathBuf::from)
    });
    match built.filter(|p| is_executable(p)) {
        Some(p) => Built::Binary(p),
        None => Built::Failed("cargo named no executable".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nested_build_drops_what_cargo_run_set_and_keeps_the_users_settings() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_BIN_NAME",
            "CARGO_CRATE_NAME",
        ] {
            assert!(set_by_cargo_run(name), "{name}");
        }
        for name in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "CARGO_PROFILE_RELEASE_LTO",
            "CARGO",
            "PATH",
        ] {
            assert!(!set_by_cargo_run(name), "{name}");
        }
    }

    #[test]
    fn reads_the_serving_line() {
        let line = r#"{"timestamp":"x","level":"INFO","listen":"127.0.0.1:4000","admin":"127.0.0.1:4001","routes":1,"providers":2,"message":"switchyard is serving","target":"switchyard::app"}"#;
        let (l, a) = serving_line(line).unwrap();
        assert_eq!(l.port(), 4000);
        assert_eq!(a.port(), 4001);
        assert!(serving_line(r#"{"message":"other"}"#).is_none());
        assert!(serving_line("not json").is_none());
        assert!(serving_webhooks(line).is_empty());
        let line = r#"{"listen":"127.0.0.1:4000","admin":"127.0.0.1:4001","webhooks":"127.0.0.1:0=127.0.0.1:4002,0.0.0.0:8443=0.0.0.0:8443","message":"switchyard is serving"}"#;
        let w = serving_webhooks(line);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].port(), 4002);
    }

    #[test]
    fn reads_version_lines() {
        let envoy = "/x/envoy  version: 6c9a/1.40.0/Clean/RELEASE/BoringSSL\n";
        assert_eq!(
            parse_version(envoy).as_deref(),
            Some("6c9a/1.40.0/Clean/RELEASE/BoringSSL")
        );
        let haproxy =
            "HAProxy version 2.6.12-1 2023/03/20 - https://haproxy.org/\nStatus: long-term\n";
        assert_eq!(parse_version(haproxy).as_deref(), Some("2.6.12-1"));
        assert_eq!(
            parse_version("\nnginx version: nginx/1.22.1\n").as_deref(),
            Some("nginx/1.22.1")
        );
        assert_eq!(parse_version("v9\n").as_deref(), Some("v9"));
        assert_eq!(parse_version(""), None);
    }
}
