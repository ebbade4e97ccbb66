//! A small simulated payment provider, for trying switchyard offline, for the tests and for the
//! loadtest.
//!
//! The engine here is the same for every provider API: run-time modes ([`Mode`]), idempotency keys (a
//! repeated `Idempotency-Key` replays the first answer with `Idempotent-Replayed: true`; the same key
//! while the first is still processing gets Stripe's 409 `idempotency_key_in_use`; the same key with
//! another body gets 400 — as Stripe does), and counters of requests, charges and refunds per key, so a
//! test can prove that nothing was charged twice. What a call does is a [`model::Model`]'s business:
//! [`stripe`] (PaymentIntents, Refunds, Customers under `/v1/`) and [`adyen`] (`/payments`,
//! `/payments/{id}/captures`), chosen by path. A charge is counted only for what takes money.
//!
//! A call is made in a task of its own: once a request is accepted it is done even if the caller
//! hangs up, exactly like a real provider, so a proxy that gives up on a slow answer cannot hide a
//! charge from the counters.

pub mod adyen;
mod control;
pub mod model;
pub mod stripe;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use control::{control_response, serve_control, ControlAnswer, Registry};
use model::{Failure, Model};

use crate::body::{full, ProxyBody};

/// How the sandbox behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Charges and answers 200.
    #[default]
    Ok,
    /// Listener closed: connections are refused; open connections are closed.
    Down,
    /// Answers 503 without charging.
    Error503,
    /// Charges, then answers 500 (the answer is lost; a replay of the key gives the real one).
    Error500,
    /// Charges at once, answers after `delay_ms`.
    Slow,
    /// Answers 429 with `Retry-After: retry_after_s`, without charging.
    Throttle,
    /// Answers 503 without charging for a share `ratio` of requests; else as `Ok`.
    Flaky,
    /// Does the call (charges), then drops the connection without an answer.
    Reset,
    /// Answers every POST with Stripe's 409 `idempotency_key_in_use` (the key is still being
    /// processed), without doing anything.
    #[serde(rename = "in_progress")]
    InProgress,
}

/// A mode and its parameters, as set through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModeSpec {
    /// The mode.
    pub mode: Mode,
    /// `slow`: delay before the answer, in milliseconds.
    pub delay_ms: u64,
    /// `flaky`: share of requests that fail, 0.0–1.0.
    pub ratio: f64,
    /// `throttle`: the `Retry-After` value, in seconds.
    pub retry_after_s: u64,
    /// Every mode that charges: time spent processing (key in flight) before the charge, in ms.
    pub process_ms: u64,
}

impl Default for ModeSpec {
    fn default() -> Self {
        Self {
            mode: Mode::Ok,
            delay_ms: 2_000,
            ratio: 0.5,
            retry_after_s: 1,
            process_ms: 0,
        }
    }
}

impl ModeSpec {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.ratio) {
            return Err("ratio must be between 0.0 and 1.0".into());
        }
        if self.delay_ms > 600_000 || self.process_ms > 600_000 {
            return Err("delay_ms and process_ms are at most 600000".into());
        }
        Ok(())
    }
}

/// What the sandbox has seen.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Its name.
    pub name: String,
    /// Its current mode.
    pub mode: Mode,
    /// Every request received (health checks excluded).
    pub requests: u64,
    /// Calls that took money (a confirm that captures, a capture).
    pub charges: u64,
    /// Calls that took money with an idempotency key, per key.
    pub charges_by_key: BTreeMap<String, u64>,
    /// Calls that took money without a key.
    pub unkeyed_charges: u64,
    /// Refunds made.
    pub refunds: u64,
    /// Answers replayed for a repeated key.
    pub replays: u64,
    /// Requests refused because their key was still in flight.
    pub conflicts: u64,
}

#[derive(Debug, Clone)]
enum Record {
    InFlight,
    Done {
        fingerprint: [u8; 32],
        status: StatusCode,
        body: Bytes,
    },
}

#[derive(Debug, Default)]
struct State {
    spec: ModeSpec,
    stats: Stats,
    records: HashMap<String, Record>,
    book: model::Book,
}

/// A running sandbox provider. Cheap to clone; all clones control the same provider.
#[derive(Clone)]
pub struct Sandbox {
    name: Arc<str>,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    mode_tx: Arc<watch::Sender<Mode>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Sandbox {
    /// Binds `addr` (port 0 picks a free port) and starts serving.
    pub async fn start(name: &str, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (mode_tx, mode_rx) = watch::channel(Mode::Ok);
        let sandbox = Self {
            name: Arc::from(name),
            addr,
            state: Arc::new(Mutex::new(State {
                stats: Stats {
                    name: name.to_owned(),
                    ..Stats::default()
                },
                ..State::default()
            })),
            mode_tx: Arc::new(mode_tx),
        };
        tokio::spawn(sandbox.clone().serve(listener, mode_rx));
        Ok(sandbox)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on (also while down: it comes back on the same one).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Switches its behaviour.
    pub fn set_mode(&self, spec: ModeSpec) {
        {
            let mut st = self.lock();
            st.spec = spec;
            st.stats.mode = spec.mode;
        }
        self.mode_tx.send_replace(spec.mode);
    }

    /// The current mode and parameters.
    pub fn mode(&self) -> ModeSpec {
        self.lock().spec
    }

    /// What it has seen so far.
    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Forgets all payments, keys and counters (the mode stays).
    pub fn reset(&self) {
        let mut st = self.lock();
        let mode = st.stats.mode;
        st.stats = Stats {
            name: self.name.to_string(),
            mode,
            ..Stats::default()
        };
        st.records.clear();
        st.book.clear();
    }

    async fn serve(self, first: TcpListener, mut mode_rx: watch::Receiver<Mode>) {
        let mut listener = Some(first);
        loop {
            let Some(l) = listener.take() else {
                // Down: wait for another mode, then listen on the same address again.
                if mode_rx.changed().await.is_err() {
                    return;
                }
                if *mode_rx.borrow() == Mode::Down {
                    continue;
                }
                match bind_again(self.addr).await {
                    Some(l) => listener = Some(l),
                    None => {
                        tracing::error!(sandbox = %self.name, addr = %self.addr, "cannot listen again");
                        return;
                    }
                }
                continue;
            };
            if *mode_rx.borrow_and_update() == Mode::Down {
                continue; // drops the listener
            }
            tokio::select! {
                changed = mode_rx.changed() => {
                    if changed.is_err() { return; }
                    if *mode_rx.borrow() != Mode::Down { listener = Some(l); }
                }
                accepted = l.accept() => {
                    if let Ok((stream, _)) = accepted {
                        let _ = stream.set_nodelay(true);
                        let this = self.clone();
                        let mut down = mode_rx.clone();
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                let this = this.clone();
                                async move { this.handle(req).await }
                            });
                            let builder = auto::Builder::new(TokioExecutor::new());
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = down.wait_for(|m| *m == Mode::Down) => {} // drop: close the connection
                            }
                        });
                    }
                    listener = Some(l);
                }
            }
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Result<Response<ProxyBody>, Dropped> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let model: &'static dyn Model = if adyen::Adyen.serves(&path) {
            &adyen::Adyen
        } else {
            &stripe::Stripe
        };
        let failure = |f: Failure, message: &str| {
            let (status, body) = model.failure(f, message);
            json(status, Bytes::from(body.to_string()))
        };
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Ok(failure(Failure::BadRequest, "body not read")),
        };
        if path == "/healthz" {
            return Ok(self.health());
        }
        let spec = {
            let mut st = self.lock();
            st.stats.requests += 1;
            st.spec
        };
        let call = decode(&parts.method, &path, parts.uri.query(), &body);
        match parts.method {
            Method::POST => {}
            Method::GET => {
                let answer = model.call(&mut self.lock().book, &self.name, &call);
                return Ok(json(answer.status, answer.body));
            }
            _ => {
                return Ok(failure(
                    Failure::BadRequest,
                    "the sandbox answers GET and POST",
                ))
            }
        }
        match spec.mode {
            Mode::Throttle => {
                let mut resp = failure(Failure::RateLimited, "too many requests");
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(spec.retry_after_s));
                return Ok(resp);
            }
            Mode::Error503 => {
                return Ok(failure(
                    Failure::Unavailable,
                    "the service is temporarily unavailable",
                ))
            }
            Mode::Flaky if rand::random::<f64>() < spec.ratio => {
                return Ok(failure(
                    Failure::Unavailable,
                    "the service is temporarily unavailable",
                ))
            }
            Mode::InProgress => {
                self.lock().stats.conflicts += 1;
                return Ok(failure(Failure::KeyInUse, KEY_IN_USE));
            }
            _ => {}
        }
        let key = parts
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let fingerprint: [u8; 32] = Sha256::new()
            .chain_update(parts.method.as_str())
            .chain_update([0])
            .chain_update(&path)
            .chain_update([0])
            .chain_update(&body)
            .finalize()
            .into();
        if let Some(key) = &key {
            let mut st = self.lock();
            match st.records.get(key).cloned() {
                Some(Record::InFlight) => {
                    st.stats.conflicts += 1;
                    return Ok(failure(Failure::KeyInUse, KEY_IN_USE));
                }
                Some(Record::Done { fingerprint: f, .. }) if f != fingerprint => {
                    return Ok(failure(
                        Failure::KeyReused,
                        "keys for idempotent requests can only be used with the same parameters",
                    ));
                }
                Some(Record::Done { status, body, .. }) => {
                    st.stats.replays += 1;
                    let mut resp = json(status, body);
                    resp.headers_mut()
                        .insert("idempotent-replayed", HeaderValue::from_static("true"));
                    return Ok(resp);
                }
                None => {
                    st.records.insert(key.clone(), Record::InFlight);
                }
            }
        }
        // Do the call in a task of its own: it completes even if the caller goes away.
        let this = self.clone();
        let params = call.params;
        let json_body = call.json;
        let method = parts.method.clone();
        let done = tokio::spawn(async move {
            let call = model::Call {
                method: &method,
                path: &path,
                params,
                json: json_body,
            };
            this.execute(model, key, fingerprint, &call, spec).await
        });
        let (status, body) = match done.await {
            Ok(answer) => answer,
            Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, Bytes::from_static(b"{}")),
        };
        match spec.mode {
            Mode::Error500 => Ok(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                "an error occurred while processing the request",
            )),
            Mode::Slow => {
                tokio::time::sleep(Duration::from_millis(spec.delay_ms)).await;
                Ok(json(status, body))
            }
            Mode::Reset => Err(Dropped),
            _ => Ok(json(status, body)),
        }
    }

    async fn execute(
        &self,
        model: &dyn Model,
        key: Option<String>,
        fingerprint: [u8; 32],
        call: &model::Call<'_>,
        spec: ModeSpec,
    ) -> (StatusCode, Bytes) {
        if spec.process_ms > 0 {
            tokio::time::sleep(Duration::from_millis(spec.process_ms)).await;
        }
        let mut guard = self.lock();
        let st = &mut *guard;
        let answer = model.call(&mut st.book, &self.name, call);
        if answer.charged {
            st.stats.charges += 1;
            match &key {
                Some(k) => *st.stats.charges_by_key.entry(k.clone()).or_default() += 1,
                None => st.stats.unkeyed_charges += 1,
            }
        }
        if answer.refunded {
            st.stats.refunds += 1;
        }
        if let Some(k) = &key {
            st.records.insert(
                k.clone(),
                Record::Done {
                    fingerprint,
                    status: answer.status,
                    body: answer.body.clone(),
                },
            );
        }
        (answer.status, answer.body)
    }

    fn health(&self) -> Response<ProxyBody> {
        match self.lock().spec.mode {
            Mode::Error503 | Mode::Error500 => unavailable(),
            _ => json(StatusCode::OK, Bytes::from_static(b"{\"status\":\"ok\"}")),
        }
    }
}

/// The message of Stripe's 409 for a key still being processed.
const KEY_IN_USE: &str = "There is currently another in-progress request using this Idempotent Key (that probably means you submitted twice, and the other request is still going through): please try again later.";

/// The `reset` mode's "answer": hyper closes the connection without a response.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by the sandbox's reset mode")
    }
}

impl std::error::Error for Dropped {}

/// The call's parameters: the query, and the body as a form or as JSON.
fn decode<'a>(
    method: &'a Method,
    path: &'a str,
    query: Option<&str>,
    body: &[u8],
) -> model::Call<'a> {
    let mut params = BTreeMap::new();
    if let Some(q) = query {
        model::form(q, &mut params);
    }
    let json = serde_json::from_slice::<serde_json::Value>(body).ok();
    match &json {
        Some(v @ serde_json::Value::Object(_)) => model::flatten("", v, &mut params),
        _ => model::form(&String::from_utf8_lossy(body), &mut params),
    }
    model::Call {
        method,
        path,
        params,
        json,
    }
}

async fn bind_again(addr: SocketAddr) -> Option<TcpListener> {
    for _ in 0..50 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return Some(l);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn json(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": { "type": kind, "message": message } });
    json(status, Bytes::from(body.to_string()))
}

fn unavailable() -> Response<ProxyBody> {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "api_error",
        "the service is temporarily unavailable",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_decode_form_json_and_query() {
        let m = Method::POST;
        let c = decode(&m, "/v1/x", Some("limit=3"), b"amount=1000&currency=USD");
        assert_eq!(c.param("amount"), Some("1000"));
        assert_eq!(c.param("currency"), Some("USD"));
        assert_eq!(c.param("limit"), Some("3"));
        let c = decode(&m, "/v1/x", None, br#"{"amount": 250, "currency": "jpy"}"#);
        assert_eq!(c.param("amount"), Some("250"));
        assert!(c.json.is_some());
    }

    #[test]
    fn mode_spec_parses_and_checks() {
        let s: ModeSpec = serde_json::from_str(r#"{"mode":"flaky","ratio":0.25}"#).unwrap();
        assert_eq!(s.mode, Mode::Flaky);
        assert_eq!(s.ratio, 0.25);
        assert!(s.validate().is_ok());
        let bad = ModeSpec { ratio: 2.0, ..s };
        assert!(bad.validate().is_err());
        assert!(serde_json::from_str::<ModeSpec>(r#"{"mode":"melt"}"#).is_err());
        assert!(serde_json::from_str::<ModeSpec>(r#"{"bogus":1}"#).is_err());
    }
}
