//! Integration tests: the real proxy in-process, mock providers on 127.0.0.1 port 0.

mod support;

mod forwarding;
mod health;
mod reload;
mod sandbox;
mod shutdown;
mod tls;
