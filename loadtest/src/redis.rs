//! The Redis a run with `--state redis` starts, and what it tells about the sidecars' use of it.
//!
//! The tool speaks the few lines of RESP it needs itself (PING, INFO), so that it checks the server
//! independently of the client the proxy uses and needs no Redis client crate. What a payment costs
//! in Redis is read from the server's own counters, before and after the measured time, over one
//! connection kept open between the two readings:
//!
//! - **round trips**: `total_reads_processed` of `INFO stats`, the read events the server handled;
//!   on a connection that stays open, one per request the client sent, however many commands it
//!   pipelined in it. The second reading's own `INFO` is taken off.
//! - **commands**: the `calls` of `INFO commandstats`, by command; commands a script ran
//!   (`redis.call`) are counted there too, so a script of three calls is one round trip and four
//!   commands (`evalsha` plus its three). The tool's own `INFO` calls are left out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{err, Result};

/// How long one command of the tool may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One connection to a Redis server.
pub struct Connection {
    stream: BufReader<TcpStream>,
}

impl Connection {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> Result<Self> {
        let stream = tokio::time::timeout(COMMAND_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| err!("redis {addr}: no connection within {COMMAND_TIMEOUT:?}"))?
            .map_err(|e| err!("redis {addr}: {e}"))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(stream),
        })
    }

    /// Sends `args` and returns the reply's text: a simple string, or a bulk string. An error reply
    /// or any other kind of reply is an error.
    pub async fn text(&mut self, args: &[&str]) -> Result<String> {
        let what = args.join(" ");
        tokio::time::timeout(COMMAND_TIMEOUT, self.exchange(args))
            .await
            .map_err(|_| err!("redis {what}: no answer within {COMMAND_TIMEOUT:?}"))?
            .map_err(|e| err!("redis {what}: {e}"))
    }

    async fn exchange(&mut self, args: &[&str]) -> Result<String> {
        self.stream.get_mut().write_all(&encode(args)).await?;
        let mut line = Vec::new();
        self.stream.read_until(b'\n', &mut line).await?;
        let line = line
            .strip_suffix(b"\r\n")
            .ok_or("the connection closed, or a reply line without CRLF")?;
        let (kind, rest) = line.split_first().ok_or("an empty reply line")?;
        let rest = String::from_utf8_lossy(rest).into_owned();
        match kind {
            b'+' => Ok(rest),
            b'-' => Err(err!("error reply: {rest}")),
            b'$' => {
                let len: usize = rest
                    .parse()
                    .map_err(|_| err!("not a bulk length: {rest}"))?;
                let mut body = vec![0; len + 2];
                self.stream.read_exact(&mut body).await?;
                body.truncate(len);
                Ok(String::from_utf8_lossy(&body).into_owned())
            }
            other => Err(err!("unexpected reply type {:?}", *other as char)),
        }
    }

    /// The server's counters now.
    pub async fn counters(&mut self) -> Result<Counters> {
        let stats = self.text(&["INFO", "stats"]).await?;
        let commands = self.text(&["INFO", "commandstats"]).await?;
        Ok(Counters {
            reads: info_field(&stats, "total_reads_processed").unwrap_or(0),
            commands: command_calls(&commands),
        })
    }
}

/// A reading of the server's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// `total_reads_processed`.
    pub reads: u64,
    /// Calls by command (`evalsha`, `get`...), without `info`.
    pub commands: BTreeMap<String, u64>,
}

impl Counters {
    /// What the sidecars used between `self` and `later`, read on one connection: the round trips
    /// (without the later reading's two `INFO` requests) and the commands by name.
    pub fn used_until(&self, later: &Counters) -> (u64, BTreeMap<String, u64>) {
        let reads = later.reads.saturating_sub(self.reads).saturating_sub(2);
        let commands = later
            .commands
            .iter()
            .filter_map(|(name, n)| {
                let d = n.saturating_sub(self.commands.get(name).copied().unwrap_or(0));
                (d > 0).then(|| (name.clone(), d))
            })
            .collect();
        (reads, commands)
    }
}

/// A number field `name:value` of an `INFO` answer.
pub fn info_field(info: &str, name: &str) -> Option<u64> {
    info.lines().find_map(|l| {
        l.trim()
            .strip_prefix(name)?
            .strip_prefix(':')?
            .trim()
            .parse()
            .ok()
    })
}

/// The `calls` of each command in an `INFO commandstats` answer
/// (`cmdstat_get:calls=3,usec=...`), without `info` (the tool's own readings).
pub fn command_calls(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let (name, fields) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| name != "info")
        .collect()
}

/// Waits until the server at `addr` answers PING, or `timeout` passes.
pub async fn wait_ready(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match Connection::open(addr).await {
            Ok(mut c) => match c.text(&["PING"]).await {
                Ok(pong) if pong == "PONG" => return Ok(()),
                Ok(other) => last = other,
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(err!(
        "redis-server on {addr} did not answer PING within {timeout:?} ({last})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counters() {
        let stats = "# Stats\r\ntotal_connections_received:3\r\ntotal_reads_processed:41\r\n";
        assert_eq!(info_field(stats, "total_reads_processed"), Some(41));
        assert_eq!(info_field(stats, "total_writes_processed"), None);
        let cmd = "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=50,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=4,usec=1\r\ncmdstat_get:calls=2,usec=3\r\n";
        let calls = command_calls(cmd);
        assert_eq!(calls.get("evalsha"), Some(&10));
        assert_eq!(calls.get("get"), Some(&2));
        assert_eq!(calls.get("info"), None);
        let before = Counters {
            reads: 10,
            commands: [("get".to_owned(), 2)].into_iter().collect(),
        };
        let after = Counters {
            reads: 32,
            commands: [("get".to_owned(), 2), ("evalsha".to_owned(), 20)]
                .into_iter()
                .collect(),
        };
        let (reads, commands) = before.used_until(&after);
        assert_eq!(reads, 20);
        assert_eq!(commands.len(), 1);
        assert_eq!(commands["evalsha"], 20);
        assert_eq!(
            encode(&["INFO", "stats"]),
            b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n"
        );
    }
}
