//! `limits:` — the typed bounds on connections, buffered bytes and slow clients, process-wide and per
//! listener. `validate::limits` checks them; `server` and `budget` apply them.

use std::time::Duration;

/// Default most open connections on the shop and webhook listeners together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default most request body bytes buffered at once, every listener together.
pub const DEFAULT_MAX_BUFFERED_BYTES: u64 = 256 << 20;
/// Default most header fields in one request head (hyper's own bound before it was configurable).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default time to send a request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time for a new connection's first bytes (the HTTP/2 preface in full).
pub const DEFAULT_PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time an HTTP/2 connection may stay without a request.
pub const DEFAULT_H2_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default time between HTTP/2 keep-alive pings.
pub const DEFAULT_H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default wait for a ping's answer.
pub const DEFAULT_H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time for a shop request body to arrive in full.
pub const DEFAULT_SHOP_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time for a webhook body: providers send small events at once, so a slow one is hostile.
pub const DEFAULT_WEBHOOK_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default most connections on one webhook listener.
pub const DEFAULT_WEBHOOK_MAX_CONNECTIONS: usize = 512;
/// Default most connections on the admin listener (probes, scrapes, operators).
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// Default time for an admin request body.
pub const DEFAULT_ADMIN_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The typed `limits:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most open connections on the shop and webhook listeners together.
    pub max_connections: usize,
    /// Most request body bytes buffered at once, every listener together.
    pub max_buffered_bytes: usize,
    /// Most header fields in one request head (HTTP/1.1; 431 past it).
    pub max_headers: usize,
    /// Time to send a request head; on HTTP/1.1 also the longest wait for the next request.
    pub header_read_timeout: Duration,
    /// Time for a new connection's first bytes (the whole preface for HTTP/2).
    pub preface_timeout: Duration,
    /// Time an HTTP/2 connection may stay without a request before it is closed (GOAWAY).
    pub h2_idle_timeout: Duration,
    /// Time between HTTP/2 keep-alive pings.
    pub h2_keep_alive_interval: Duration,
    /// Wait for a ping's answer before the connection is closed.
    pub h2_keep_alive_timeout: Duration,
    /// The shop listener.
    pub shop: ListenerLimits,
    /// Each webhook listener.
    pub webhooks: ListenerLimits,
    /// The admin listener.
    pub admin: ListenerLimits,
}

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Most open connections on it.
    pub max_connections: usize,
    /// Time for a request body to arrive in full, from the end of its head.
    pub body_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES as usize,
            max_headers: DEFAULT_MAX_HEADERS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            preface_timeout: DEFAULT_PREFACE_TIMEOUT,
            h2_idle_timeout: DEFAULT_H2_IDLE_TIMEOUT,
            h2_keep_alive_interval: DEFAULT_H2_KEEP_ALIVE_INTERVAL,
            h2_keep_alive_timeout: DEFAULT_H2_KEEP_ALIVE_TIMEOUT,
            shop: ListenerLimits {
                max_connections: DEFAULT_MAX_CONNECTIONS,
                body_read_timeout: DEFAULT_SHOP_BODY_READ_TIMEOUT,
            },
            webhooks: ListenerLimits {
                max_connections: DEFAULT_WEBHOOK_MAX_CONNECTIONS,
                body_read_timeout: DEFAULT_WEBHOOK_BODY_READ_TIMEOUT,
            },
            admin: ListenerLimits {
                max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
                body_read_timeout: DEFAULT_ADMIN_BODY_READ_TIMEOUT,
            },
        }
    }
}
