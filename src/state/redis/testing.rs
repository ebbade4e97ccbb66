//! Test harness: a real `redis-server` of the test's own (a Unix socket in a temp dir, no TCP port,
//! no persistence), stopped by PID when dropped; and an in-process TCP proxy in front of it that
//! counts the commands a client sends and can cut a connection after a command ran, before its
//! reply reaches the client.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `redis-server` on a Unix socket in a temp dir.
pub(crate) struct RedisServer {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// `--maxmemory-policy` to start with.
    policy: String,
}

impl RedisServer {
    /// Starts one with `maxmemory-policy noeviction`.
    pub(crate) fn start() -> Self {
        Self::with_policy("noeviction")
    }

    /// Starts one with `maxmemory-policy policy`.
    pub(crate) fn with_policy(policy: &str) -> Self {
        let mut s = Self {
            dir: tempfile::tempdir().unwrap(),
            child: None,
            policy: policy.to_owned(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(self.socket())
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--maxmemory-policy", &self.policy])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start");
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = StdUnixStream::connect(self.socket()) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Its socket.
    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The URL of its socket.
    pub(crate) fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "kill {sig}");
        }
    }

    /// Stops it (SIGSTOP): it keeps its connections but answers nothing.
    pub(crate) fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused one go on.
    pub(crate) fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills it (SIGKILL) and waits for it; its data is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Starts it again on the same socket, empty.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs one command on a connection of its own (for test set-up and inspection).
    pub(crate) async fn cmd<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> T {
        let client = ::redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        cmd.query_async(&mut conn).await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.resume();
        }
        self.kill();
    }
}

/// A TCP proxy on 127.0.0.1 port 0 in front of a Unix socket.
pub(crate) struct Proxy {
    addr: std::net::SocketAddr,
    commands: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to the Redis at `socket`.
    pub(crate) async fn start(socket: &Path) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let commands = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicBool::new(false));
        let socket = socket.to_path_buf();
        let (c, k) = (Arc::clone(&commands), Arc::clone(&cut));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::UnixStream::connect(&socket).await else {
                    continue;
                };
                tokio::spawn(pump(client, server, Arc::clone(&c), Arc::clone(&k)));
            }
        });
        Self {
            addr,
            commands,
            cut,
            task,
        }
    }

    /// The URL to connect through it.
    pub(crate) fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Commands clients sent through it so far.
    pub(crate) fn commands(&self) -> u64 {
        self.commands.load(Ordering::SeqCst)
    }

    /// The next reply from Redis is not passed on: the proxy closes that connection instead (the
    /// command ran; its client never learns how).
    pub(crate) fn cut_next_reply(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    client: tokio::net::TcpStream,
    server: tokio::net::UnixStream,
    commands: Arc<AtomicU64>,
    cut: Arc<AtomicBool>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(used) = command_len(&pending) {
                commands.fetch_add(1, Ordering::SeqCst);
                pending.drain(..used);
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cut.swap(false, Ordering::SeqCst) {
                return;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Either side ending closes both.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// The length of the first whole RESP command (an array of bulk strings) in `buf`, if it is whole.
fn command_len(buf: &[u8]) -> Option<usize> {
    fn line(buf: &[u8], at: usize) -> Option<(i64, usize)> {
        let end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        let n = std::str::from_utf8(buf.get(at + 1..end)?)
            .ok()?
            .parse()
            .ok()?;
        Some((n, end + 2))
    }
    if buf.first() != Some(&b'*') {
        // An inline command: one line.
        return buf.windows(2).position(|w| w == b"\r\n").map(|p| p + 2);
    }
    let (items, mut at) = line(buf, 0)?;
    for _ in 0..items {
        let (len, next) = line(buf, at)?;
        at = next + usize::try_from(len).ok()? + 2;
        if at > buf.len() {
            return None;
        }
    }
    Some(at)
}

#[test]
fn the_proxy_counts_whole_commands_only() {
    let cmd = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
    assert_eq!(command_len(cmd), Some(cmd.len()));
    assert_eq!(command_len(&cmd[..cmd.len() - 1]), None);
    assert_eq!(command_len(b"PING\r\n"), Some(6));
}
