//! Integration tests: the real proxy in-process, mock providers on 127.0.0.1 port 0.

mod redis_support;
mod support;

mod audit;
mod dashboards;
mod dialect;
mod forwarding;
mod health;
mod hostile;
mod outcomes;
mod payments;
mod prometheus_e2e;
mod reload;
mod resolver;
mod sandbox;
mod shutdown;
mod sidecars;
mod tls;
mod webhooks;
