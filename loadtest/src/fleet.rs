//! The processes of a run: sandbox providers, switchyard, Envoy. Each is started with its output in
//! files of the run's folder, its id appended to a pid file, and is killed and reaped when its handle
//! is dropped — at the end of the run, on an error, or while a panic unwinds.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{err, Result};

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
        };
        let mut pids = OpenOptions::new().create(true).append(true).open(pidfile)?;
        writeln!(pids, "{} {}", process.role, process.pid())?;
        Ok(process)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its role (`psp-primary`, `switchyard`, `envoy`).
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
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// Starts `switchyard run --config CONFIG --log-format json` and waits until it serves.
/// Per-request log lines are off unless `request_log`.
pub async fn start_switchyard(
    switchyard: &Path,
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
    let mut process = Process::spawn("switchyard", cmd, dir, pidfile)?;
    let (listen, admin) = process
        .wait_for_line(Stream::Stderr, START_TIMEOUT, serving_line)
        .await?;
    Ok(ProxyProcess {
        process,
        listen,
        admin,
    })
}

/// Starts Envoy on `config`. Readiness is the caller's to check (an answer through it).
pub fn start_envoy(envoy: &Path, config: &Path, dir: &Path, pidfile: &Path) -> Result<Process> {
    let mut cmd = Command::new(envoy);
    cmd.arg("-c")
        .arg(config)
        .args(["--disable-hot-restart", "--log-level", "warn"]);
    Process::spawn("envoy", cmd, dir, pidfile)
}

/// A loopback port that was free a moment ago (for Envoy, which cannot report a port it picked).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The Envoy binary: `explicit`, else `envoy` on PATH; `None` when there is none.
pub fn find_envoy(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return is_executable(p).then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("envoy"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Envoy's version line (`envoy --version`), when it answers.
pub fn envoy_version(envoy: &Path) -> Option<String> {
    let out = Command::new(envoy)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| !l.trim().is_empty())?;
    // "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL": keep what follows "version:".
    Some(
        line.split_once("version:")
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| line.trim().to_owned()),
    )
}

/// The switchyard binary: `explicit`, else built by cargo from this workspace in the given profile
/// (a no-op when it is up to date), else the one beside this executable.
pub fn find_switchyard(explicit: Option<&Path>, release: bool, quiet: bool) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return if is_executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(err!(
                "--switchyard-bin {}: not an executable file",
                p.display()
            ))
        };
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or_else(|| Path::new("."));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "-p", "switchyard", "--bin", "switchyard"])
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(if quiet {
            Stdio::null()
        } else {
            Stdio::inherit()
        });
    if release {
        cmd.arg("--release");
    }
    let built = cmd.output().ok().and_then(|out| {
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            if v.get("reason")?.as_str()? != "compiler-artifact"
                || v.pointer("/target/name")?.as_str()? != "switchyard"
            {
                return None;
            }
            v.get("executable")?.as_str().map(PathBuf::from)
        })
    });
    if let Some(p) = built.filter(|p| is_executable(p)) {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let beside = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("switchyard"))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            err!("cannot find the switchyard binary: build it (`cargo build --release`) or pass --switchyard-bin")
        })?;
    if !quiet {
        eprintln!(
            "loadtest: cargo could not build switchyard; using {} as it is",
            beside.display()
        );
    }
    Ok(beside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_serving_line() {
        let line = r#"{"timestamp":"x","level":"INFO","listen":"127.0.0.1:4000","admin":"127.0.0.1:4001","routes":1,"providers":2,"message":"switchyard is serving","target":"switchyard::app"}"#;
        let (l, a) = serving_line(line).unwrap();
        assert_eq!(l.port(), 4000);
        assert_eq!(a.port(), 4001);
        assert!(serving_line(r#"{"message":"other"}"#).is_none());
        assert!(serving_line("not json").is_none());
    }
}
