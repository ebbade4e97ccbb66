//! switchyard: a payment-safe sidecar proxy between a shop and its payment providers.
//!
//! The shop sends its provider API calls to the sidecar on loopback; the sidecar routes each call to a
//! provider named in `routes.yaml`. The crate is laid out as the architecture reads: `config` (parse,
//! validate, reload), `upstream` (the pooled rustls client), `layers` (one tower layer per policy, stacked
//! in one place), `admin` and `server` (listeners), `app` (wiring). `error` and `metrics` depend on
//! nothing else in the crate.
#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod body;
pub mod budget;
pub mod config;
pub mod ctx;
pub mod error;
pub mod fd_limit;
pub mod generation;
pub mod health;
pub mod idempotency;
pub mod layers;
pub mod limits;
pub mod meters;
pub mod metrics;
pub mod outcome;
pub mod redact;
pub mod resolver;
pub mod retry;
pub mod routing;
pub mod sandbox;
pub mod server;
pub mod side_runtime;
pub mod state;
pub mod upstream;
pub mod webhooks;
