//! A real `redis-server` for the shared-state tests, and the faults they inject into it.
//!
//! [`RedisServer`] starts Debian's `redis-server` (installed by `.ci/run`) on a Unix socket in a temp
//! folder, or on a free port of 127.0.0.1, with no persistence, and kills it by PID when dropped. A test
//! that needs Redis never skips: without the binary it fails and says what to install. Faults:
//! [`RedisServer::pause`] (SIGSTOP, then SIGCONT after a while: every command hangs meanwhile),
//! [`RedisServer::kill`], [`RedisServer::restart`] (same endpoint, empty data, like a Redis without
//! persistence coming back), [`RedisServer::flushall`]; and [`CutProxy`], an in-process TCP proxy that
//! lets a command run and then closes the connection before its reply reaches the client (a reply lost
//! after the command was applied).
//!
//! The harness speaks RESP itself (a few lines, below), so it needs no Redis client crate and checks
//! the server independently of the client the proxy uses.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a test says when `redis-server` is not installed.
pub const INSTALL_REDIS: &str = "install redis-server (Debian package redis-server); .ci/run does";

/// How long a command of the harness itself may take (PING, FLUSHALL...).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a started server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The `redis-server` binary on `PATH` (or in `/usr/bin`, `/usr/sbin`, where Debian puts it).
pub fn redis_server_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{INSTALL_REDIS}"))
}

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket.
    Unix(PathBuf),
    /// A TCP address on loopback.
    Tcp(SocketAddr),
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::Unix(s) => s.flush(),
            Self::Tcp(s) => s.flush(),
        }
    }
}

impl Endpoint {
    /// The URL a Redis client connects with: `redis://127.0.0.1:PORT/0`, or `redis+unix:///PATH` (the
    /// config's `state.redis.url` takes only the TCP form).
    pub fn url(&self) -> String {
        match self {
            Self::Unix(path) => format!("redis+unix://{}", path.display()),
            Self::Tcp(addr) => format!("redis://{addr}/0"),
        }
    }

    fn connect(&self, timeout: Duration) -> std::io::Result<Conn> {
        let conn = match self {
            Self::Unix(path) => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Conn::Unix(s)
            }
            Self::Tcp(addr) => {
                let s = TcpStream::connect_timeout(addr, timeout)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                s.set_nodelay(true)?;
                Conn::Tcp(s)
            }
        };
        Ok(conn)
    }

    /// Sends one command on a new connection and reads its reply, each read and write within
    /// `timeout`. A reply that does not come in time is an error of kind `WouldBlock` or `TimedOut`.
    pub fn command_within(&self, args: &[&str], timeout: Duration) -> std::io::Result<Resp> {
        let mut conn = self.connect(timeout)?;
        conn.write_all(&encode(args))?;
        conn.flush()?;
        read_reply(&mut BufReader::new(conn))
    }

    /// [`Endpoint::command_within`] with the harness's own timeout.
    pub fn command(&self, args: &[&str]) -> std::io::Result<Resp> {
        self.command_within(args, COMMAND_TIMEOUT)
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nabc` (`None`: the null bulk string)
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...` (`None`: the null array)
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The integer of an integer reply.
    pub fn integer(&self) -> Option<i64> {
        match self {
            Self::Integer(n) => Some(*n),
            _ => None,
        }
    }

    /// The text of a simple or bulk string reply.
    pub fn text(&self) -> Option<String> {
        match self {
            Self::Simple(s) => Some(s.clone()),
            Self::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// A command as a RESP array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn protocol_error(what: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.into())
}

/// Reads one reply.
pub fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Resp> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(protocol_error("a reply line without CRLF"));
    }
    line.truncate(line.len() - 2);
    let (kind, rest) = line
        .split_first()
        .ok_or_else(|| protocol_error("an empty reply line"))?;
    let rest = String::from_utf8_lossy(rest).into_owned();
    let number = || -> std::io::Result<i64> {
        rest.parse()
            .map_err(|_| protocol_error(format!("not a number: {rest}")))
    };
    match kind {
        b'+' => Ok(Resp::Simple(rest)),
        b'-' => Ok(Resp::Error(rest)),
        b':' => Ok(Resp::Integer(number()?)),
        b'$' => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Resp::Bulk(None));
            };
            let mut data = vec![0; len + 2];
            reader.read_exact(&mut data)?;
            data.truncate(len);
            Ok(Resp::Bulk(Some(data)))
        }
        b'*' => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Resp::Array(None));
            };
            let items = (0..len)
                .map(|_| read_reply(reader))
                .collect::<std::io::Result<Vec<_>>>()?;
            Ok(Resp::Array(Some(items)))
        }
        other => Err(protocol_error(format!(
            "unknown reply type {:?}",
            char::from(*other)
        ))),
    }
}

/// The running process, shared with the thread that ends a pause, so that a SIGCONT is never sent to
/// a PID after the process was killed (the PID could belong to another process by then).
#[derive(Default)]
struct Process {
    child: Option<Child>,
}

impl Process {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, name: &str) {
        let Some(pid) = self.pid() else { return };
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "kill -{name} {pid}: {status:?}"
        );
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a stopped process; wait reaps it, so the PID is free only after this.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `redis-server` of this test alone, killed by PID when dropped.
pub struct RedisServer {
    binary: PathBuf,
    dir: tempfile::TempDir,
    endpoint: Endpoint,
    process: Arc<Mutex<Process>>,
    /// Starts so far (the log of start N is `redis-N.log`).
    starts: usize,
}

impl RedisServer {
    /// A server on a Unix socket in a temp folder (`redis.sock`), with no TCP port, no RDB snapshots
    /// and no append-only file.
    pub fn start() -> Self {
        let dir = tempdir();
        let endpoint = Endpoint::Unix(dir.path().join("redis.sock"));
        Self::launch(dir, endpoint)
    }

    /// A server on a free port of 127.0.0.1: for a client that must go over TCP, or through a
    /// [`CutProxy`]. A port taken between choosing it and the server binding it is chosen again.
    pub fn start_tcp() -> Self {
        let mut server = Self {
            binary: redis_server_binary(),
            dir: tempdir(),
            endpoint: Endpoint::Tcp(free_port()),
            process: Arc::default(),
            starts: 0,
        };
        let mut last = String::new();
        for _ in 0..5 {
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
            server.endpoint = Endpoint::Tcp(free_port());
        }
        panic!("redis-server did not start on a free port after 5 tries: {last}");
    }

    fn launch(dir: tempfile::TempDir, endpoint: Endpoint) -> Self {
        let mut server = Self {
            binary: redis_server_binary(),
            dir,
            endpoint,
            process: Arc::default(),
            starts: 0,
        };
        if let Err(e) = server.spawn() {
            panic!("{e}");
        }
        server
    }

    /// Starts the process on `self.endpoint` and waits until it answers PING; on failure returns why,
    /// with the server's log, and leaves nothing running.
    fn spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log = self.dir.path().join(format!("redis-{}.log", self.starts));
        let mut cmd = Command::new(&self.binary);
        match &self.endpoint {
            Endpoint::Unix(path) => {
                cmd.args(["--port", "0", "--unixsocket"])
                    .arg(path)
                    .args(["--unixsocketperm", "700"]);
            }
            Endpoint::Tcp(addr) => {
                cmd.args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"]);
            }
        }
        cmd.args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        lock(&self.process).child = Some(child);

        let end = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Resp::Simple(pong)) = self
                .endpoint
                .command_within(&["PING"], Duration::from_millis(200))
            {
                if pong == "PONG" {
                    return Ok(());
                }
            }
            let exited = {
                let mut process = lock(&self.process);
                match process.child.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => {
                        process.child = None;
                        Some(status.to_string())
                    }
                    _ => None,
                }
            };
            let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(status) = exited {
                return Err(format!(
                    "redis-server on {:?} exited ({status}):\n{}",
                    self.endpoint,
                    log_text()
                ));
            }
            if Instant::now() > end {
                lock(&self.process).kill();
                return Err(format!(
                    "redis-server on {:?} did not answer PING within {START_TIMEOUT:?}:\n{}",
                    self.endpoint,
                    log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Where it listens.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The URL a Redis client connects with (see [`Endpoint::url`]).
    pub fn url(&self) -> String {
        self.endpoint.url()
    }

    /// The TCP address of a server from [`RedisServer::start_tcp`].
    pub fn addr(&self) -> SocketAddr {
        match &self.endpoint {
            Endpoint::Tcp(addr) => *addr,
            Endpoint::Unix(path) => panic!(
                "this server listens on {} only; use RedisServer::start_tcp",
                path.display()
            ),
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.process).pid()
    }

    /// Sends one command and reads its reply (within 5 s).
    pub fn command(&self, args: &[&str]) -> std::io::Result<Resp> {
        self.endpoint.command(args)
    }

    /// [`RedisServer::command`] from async code, off the runtime's threads (so that an in-process
    /// [`CutProxy`] keeps running meanwhile).
    pub async fn command_async(&self, args: &[&str]) -> std::io::Result<Resp> {
        let endpoint = self.endpoint.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            endpoint.command(&args)
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Whether it answers PING (within 1 s).
    pub fn ping(&self) -> bool {
        matches!(
            self.endpoint.command_within(&["PING"], Duration::from_secs(1)),
            Ok(Resp::Simple(ref s)) if s == "PONG"
        )
    }

    /// Keys in database 0.
    pub fn dbsize(&self) -> i64 {
        match self.command(&["DBSIZE"]) {
            Ok(Resp::Integer(n)) => n,
            other => panic!("DBSIZE: {other:?}"),
        }
    }

    /// Empties every database, as an operator's `FLUSHALL` would.
    pub fn flushall(&self) {
        match self.command(&["FLUSHALL"]) {
            Ok(Resp::Simple(ok)) if ok == "OK" => {}
            other => panic!("FLUSHALL: {other:?}"),
        }
    }

    /// Stops the process (SIGSTOP) and lets it go on (SIGCONT) after `duration`, from a thread:
    /// returns at once, so the test acts while every command hangs. Connections stay open and new
    /// ones are still accepted by the kernel; nothing is answered until the pause ends.
    pub fn pause(&self, duration: Duration) {
        lock(&self.process).signal("STOP");
        let process = Arc::clone(&self.process);
        std::thread::spawn(move || {
            std::thread::sleep(duration);
            // Killed meanwhile: no child, no signal.
            lock(&process).signal("CONT");
        });
    }

    /// Kills the process (SIGKILL) and reaps it: every connection drops, new ones are refused.
    pub fn kill(&mut self) {
        lock(&self.process).kill();
    }

    /// Kills the process if it runs and starts a new one on the same socket or port with no data: a
    /// Redis without persistence coming back.
    pub fn restart(&mut self) {
        self.kill();
        if let Endpoint::Unix(path) = &self.endpoint {
            let _ = std::fs::remove_file(path);
        }
        // A killed server's port is free at once (it listened with SO_REUSEADDR); another process may
        // still take it in between, which a few tries ride out.
        let mut last = String::new();
        for _ in 0..20 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not restart: {last}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        lock(&self.process).kill();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("switchyard-redis-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot make a temp folder: {e}"))
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"))
}

/// An in-process TCP proxy on 127.0.0.1 port 0 in front of a Redis. Armed with
/// [`CutProxy::cut_after_next_command`], it forwards the next bytes a client sends (a command), waits
/// for the first bytes of Redis's reply (so the command has run), and then closes that connection on
/// both sides without passing the reply on. Dropping it closes every connection.
pub struct CutProxy {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Starts a proxy to `upstream` (a [`RedisServer::start_tcp`] server's [`RedisServer::addr`]).
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let armed = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (armed, cuts, accepted) = (armed.clone(), cuts.clone(), accepted.clone());
            async move {
                // Aborting the accept task drops the set, which aborts every connection's task.
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    tokio::select! {
                        conn = listener.accept() => {
                            let Ok((client, _)) = conn else { continue };
                            accepted.fetch_add(1, Ordering::SeqCst);
                            connections.spawn(relay(client, upstream, armed.clone(), cuts.clone()));
                        }
                        Some(_) = connections.join_next(), if !connections.is_empty() => {}
                    }
                }
            }
        });
        Self {
            addr,
            armed,
            cuts,
            accepted,
            task,
        }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL a Redis client connects through it with.
    pub fn url(&self) -> String {
        Endpoint::Tcp(self.addr).url()
    }

    /// The endpoint, for the harness's own commands through the proxy.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::Tcp(self.addr)
    }

    /// The next command any client sends runs at Redis, and its connection is then closed before the
    /// reply is passed on. Once only; arm again for another cut.
    pub fn cut_after_next_command(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Whether a cut is armed and has not happened yet.
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::SeqCst)
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies bytes both ways between a client and Redis; see [`CutProxy`] for the cut.
async fn relay(
    mut client: tokio::net::TcpStream,
    upstream: SocketAddr,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
) {
    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut cutting = false;
    let mut from_client = vec![0u8; 16 * 1024];
    let mut from_server = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = client.read(&mut from_client) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                if !cutting && armed.swap(false, Ordering::SeqCst) {
                    cutting = true;
                }
                if server.write_all(&from_client[..n]).await.is_err() {
                    return;
                }
            }
            read = server.read(&mut from_server) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                if cutting {
                    // Redis answered, so the command ran: the client never learns how.
                    cuts.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                if client.write_all(&from_server[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Whether a process with this PID exists (a zombie counts until it is reaped).
fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_server_on_a_unix_socket_answers_stores_and_flushes() {
    let redis = RedisServer::start();
    assert!(redis.ping());
    assert!(redis.url().starts_with("redis+unix:///"), "{}", redis.url());
    assert_eq!(
        redis.command(&["SET", "k", "v"]).unwrap(),
        Resp::Simple("OK".into())
    );
    assert_eq!(
        redis.command(&["GET", "k"]).unwrap(),
        Resp::Bulk(Some(b"v".to_vec()))
    );
    assert_eq!(redis.dbsize(), 1);
    redis.flushall();
    assert_eq!(redis.dbsize(), 0);
    assert_eq!(redis.command(&["GET", "k"]).unwrap(), Resp::Bulk(None));
    // No persistence: a restart (or a failover) loses everything, which the tests rely on.
    let save = redis.command(&["CONFIG", "GET", "save"]).unwrap();
    assert_eq!(
        save,
        Resp::Array(Some(vec![
            Resp::Bulk(Some(b"save".to_vec())),
            Resp::Bulk(Some(Vec::new()))
        ]))
    );
    let aof = redis.command(&["CONFIG", "GET", "appendonly"]).unwrap();
    assert_eq!(
        aof,
        Resp::Array(Some(vec![
            Resp::Bulk(Some(b"appendonly".to_vec())),
            Resp::Bulk(Some(b"no".to_vec()))
        ]))
    );
}

#[test]
fn a_server_on_tcp_listens_on_loopback_and_its_url_says_where() {
    let redis = RedisServer::start_tcp();
    let addr = redis.addr();
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_ne!(addr.port(), 0);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/0", addr.port()));
    assert!(redis.ping());
    let bind = redis.command(&["CONFIG", "GET", "bind"]).unwrap();
    assert_eq!(
        bind.clone(),
        Resp::Array(Some(vec![
            Resp::Bulk(Some(b"bind".to_vec())),
            Resp::Bulk(Some(b"127.0.0.1".to_vec()))
        ])),
        "{bind:?}"
    );
}

#[test]
fn a_paused_server_times_commands_out_and_answers_again_after_the_pause() {
    let redis = RedisServer::start();
    let pause = Duration::from_secs(2);
    redis.pause(pause);
    let started = Instant::now();
    let err = redis
        .endpoint()
        .command_within(&["PING"], Duration::from_millis(100))
        .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err:?}"
    );
    // It timed out while the server was stopped, not because the pause was over.
    assert!(started.elapsed() < pause, "{:?}", started.elapsed());
    // The pause ends by itself, not before its time.
    let end = Instant::now() + Duration::from_secs(20);
    while !redis.ping() {
        assert!(Instant::now() < end, "redis-server did not resume");
    }
    assert!(started.elapsed() >= pause / 2, "{:?}", started.elapsed());
}

#[test]
fn a_killed_server_refuses_and_a_restarted_one_is_empty_on_the_same_endpoint() {
    for mut redis in [RedisServer::start(), RedisServer::start_tcp()] {
        let endpoint = redis.endpoint().clone();
        let first = redis.pid().unwrap();
        redis.command(&["SET", "k", "v"]).unwrap();
        redis.kill();
        assert!(redis.pid().is_none());
        assert!(!process_exists(first));
        assert!(redis.command(&["PING"]).is_err());

        redis.restart();
        assert_eq!(redis.endpoint(), &endpoint);
        assert_ne!(redis.pid(), Some(first));
        assert!(redis.ping());
        assert_eq!(redis.dbsize(), 0, "a restart without persistence forgets");
    }
}

#[test]
fn dropping_the_server_kills_it_even_while_paused() {
    let redis = RedisServer::start();
    let pid = redis.pid().unwrap();
    assert!(process_exists(pid));
    redis.pause(Duration::from_secs(30));
    drop(redis);
    assert!(!process_exists(pid), "redis-server {pid} outlived its test");
}

#[tokio::test]
async fn the_cut_proxy_lets_a_command_run_and_loses_its_reply() {
    let redis = RedisServer::start_tcp();
    let proxy = CutProxy::start(redis.addr()).await;
    let through = proxy.endpoint();
    let via = |args: &'static [&'static str]| {
        let through = through.clone();
        tokio::task::spawn_blocking(move || through.command(args))
    };

    // Unarmed, it passes commands and replies.
    assert_eq!(
        via(&["INCR", "n"]).await.unwrap().unwrap(),
        Resp::Integer(1)
    );
    assert_eq!(proxy.cuts(), 0);

    // Armed: the INCR runs, the client sees its connection closed instead of the reply.
    proxy.cut_after_next_command();
    assert!(proxy.armed());
    let lost = via(&["INCR", "n"]).await.unwrap();
    assert!(lost.is_err(), "the reply came through: {lost:?}");
    assert_eq!(proxy.cuts(), 1);
    assert!(!proxy.armed());
    assert_eq!(
        redis.command_async(&["GET", "n"]).await.unwrap(),
        Resp::Bulk(Some(b"2".to_vec())),
        "the command ran at redis"
    );

    // Once only: the next connection works again.
    assert_eq!(
        via(&["INCR", "n"]).await.unwrap().unwrap(),
        Resp::Integer(3)
    );
    assert_eq!(proxy.cuts(), 1);
    assert_eq!(proxy.accepted(), 3);
}
