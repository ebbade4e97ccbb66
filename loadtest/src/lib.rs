//! The switchyard load and fault-injection tool.
//!
//! It answers three questions a payment engineer asks of a sidecar, with one command and on the
//! user's own machine: what does it cost per request, what happens to the shop's payments when a
//! provider breaks, and how does it compare with a direct connection, with a bare hyper proxy (the
//! floor of the stack switchyard is built on: [`bare_proxy`]) and with Envoy, HAProxy and nginx
//! configured for the same job.
//!
//! A run starts simulated providers (`switchyard sandbox`) and the proxy under test as separate
//! processes, drives open-model load at a fixed rate (latency counted from each request's intended
//! send time, so a stall cannot hide: no coordinated omission) or closed-loop load (`--max`), injects
//! the scenario's fault through the sandboxes' control API, and reads the providers' own counters to
//! tell what was charged where. Every child process is killed and reaped when its run ends, also on
//! an error or a panic.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod abuse;
pub mod analysis;
pub mod attribution;
pub mod bare_proxy;
pub mod chart;
pub mod configs;
pub mod control;
pub mod fleet;
pub mod load;
pub mod options;
pub mod plan;
pub mod procfs;
pub mod profile;
pub mod redis;
pub mod report;
pub mod resolution;
pub mod runner;
pub mod scenario;

pub use options::Options;
pub use report::Report;
pub use runner::run;

/// An error that ends a run: what went wrong, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<String> for Error {
    fn from(e: String) -> Self {
        Self(e)
    }
}

impl From<&str> for Error {
    fn from(e: &str) -> Self {
        Self(e.to_owned())
    }
}

/// The result of the tool's operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Builds an [`Error`] from a format string.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => { $crate::Error(format!($($arg)*)) };
}
