//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/admin/config`, `POST /admin/reload`,
//! `GET /admin/providers` with `POST /admin/providers/{name}/{drain|undrain|reset}`,
//! `GET /admin/operations?state=unknown` with `POST /admin/operations/{id}/retry` (the resolver's
//! work, `crate::resolver`), and the sandbox control API. Never served on the shop listener.
//!
//! Write calls (every `POST`) need `Authorization: Bearer <token>` when `admin.token_env` (or
//! `token_file`) is configured; the token is compared in constant time and read from the config
//! generation in use, so a reload can rotate it.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{full, ProxyBody};
use crate::budget::{read_body, ReadError};
use crate::ctx::Req;
use crate::generation::Current;
use crate::health;
use crate::layers::BoxFuture;
use crate::metrics::Metrics;
use crate::sandbox::{self, Registry};

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// What the last reload did, for `/admin/config`.
#[derive(Debug, Default, Clone)]
pub struct ReloadStatus {
    /// When a reload was last tried.
    pub last_attempt_at: Option<SystemTime>,
    /// Why the last reload failed; `None` when it succeeded.
    pub last_error: Option<String>,
    /// Changes on disk that only a restart applies.
    pub restart_required: Vec<String>,
}

/// Something that reloads the config file and says which generation is in use after.
pub trait Reload: Send + Sync {
    /// Reloads; `Ok(generation)` or the error that kept the old config.
    fn reload(&self) -> BoxFuture<Result<u64, String>>;
}

/// Everything the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// The metric registry.
    pub metrics: Metrics,
    /// The generation in use.
    pub current: Current,
    /// The last reload's outcome.
    pub status: Arc<Mutex<ReloadStatus>>,
    /// True once listeners are up, false again while draining.
    pub ready: Arc<AtomicBool>,
    /// In-process sandbox providers.
    pub sandboxes: Registry,
    /// Reloads the config.
    pub reloader: Arc<dyn Reload>,
    /// The config file.
    pub config_path: PathBuf,
    /// The resolver of unknown outcomes.
    pub resolver: Arc<crate::resolver::Resolver>,
}

impl AdminState {
    /// Answers one admin request.
    pub async fn handle(self, req: Req<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        let Req { http, ctx } = req;
        let (parts, body) = http.into_parts();
        let path = parts.uri.path().to_owned();
        let method = parts.method.clone();
        if method == Method::POST {
            if let Some(denied) = self.check_token(&parts.headers) {
                return Ok(denied);
            }
        }
        let body = match read_body(body, MAX_ADMIN_BODY, None, ctx.listener.as_ref()).await {
            Ok((b, _)) => b,
            Err(ReadError::Timeout { .. }) => {
                let mut r = problem(StatusCode::REQUEST_TIMEOUT, "the body arrived too slowly");
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Ok(r);
            }
            Err(ReadError::Overloaded(_)) => {
                return Ok(problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the proxy is overloaded; retry shortly",
                ))
            }
            Err(_) => {
                return Ok(problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "admin request bodies are at most 64 KiB",
                ))
            }
        };
        let resp = match (&method, path.as_str()) {
            (&Method::GET, "/metrics") => {
                let generation = self.current.load();
                health::publish(
                    &generation.snapshot,
                    &generation.health,
                    &self.metrics,
                    Instant::now(),
                );
                let (records, _) = generation.idempotency.totals();
                self.metrics.idempotency_records.set(records as i64);
                let mut r = Response::new(full(self.metrics.encode()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => {
                if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready (starting or draining)\n",
                    )
                }
            }
            (&Method::GET, "/admin/config") => json(StatusCode::OK, self.config_view()),
            (&Method::GET, "/admin/providers") => json(StatusCode::OK, self.providers_view()),
            (&Method::POST, p) if p.starts_with("/admin/providers/") => self.provider_action(p),
            (&Method::GET, "/admin/operations") => self.operations(parts.uri.query()).await,
            (&Method::POST, p) if p.starts_with("/admin/operations/") => {
                self.retry_operation(p).await
            }
            (&Method::POST, "/admin/reload") => match self.reloader.reload().await {
                Ok(generation) => json(
                    StatusCode::OK,
                    serde_json::json!({ "result": "success", "generation": generation }),
                ),
                Err(error) => json(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    serde_json::json!({ "result": "failure", "error": error,
                        "generation": self.current.load().number }),
                ),
            },
            _ => match sandbox::control_response(&self.sandboxes, &method, &path, &body) {
                Some((status, value)) => json(status, value),
                None => problem(StatusCode::NOT_FOUND, "no such admin endpoint"),
            },
        };
        Ok(resp)
    }

    /// `GET /admin/operations?state=unknown[&route=R][&limit=N]`: the operations whose outcome may
    /// be unknown, due first; each with its route, provider, key digest (never the key), age, the
    /// resolver's tries and next try, and what it waits for when the resolver does not try it.
    async fn operations(&self, query: Option<&str>) -> Response<ProxyBody> {
        let mut state = None;
        let mut route = None;
        let mut limit = 1000usize;
        // Plain names and numbers: nothing here is percent-encoded.
        let pairs = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")));
        for (name, value) in pairs {
            match name {
                "state" => state = Some(value.to_owned()),
                "route" => route = Some(value.to_owned()),
                "limit" => match value.parse::<usize>() {
                    Ok(n) if (1..=10_000).contains(&n) => limit = n,
                    _ => {
                        return problem(
                            StatusCode::BAD_REQUEST,
                            "limit must be a number from 1 to 10000",
                        )
                    }
                },
                other => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        &format!("unknown parameter {other:?}: use state, route and limit"),
                    )
                }
            }
        }
        if state.as_deref().is_some_and(|s| s != "unknown") {
            return problem(
                StatusCode::BAD_REQUEST,
                "state must be unknown (the only state listed)",
            );
        }
        let listed = match self.resolver.list(limit).await {
            Ok(l) => l,
            Err(e) => return problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        };
        let now_ms = crate::idempotency::unix_ms(SystemTime::now());
        let operations: Vec<serde_json::Value> = listed
            .iter()
            .filter(|l| route.as_deref().is_none_or(|r| *l.route == *r))
            .take(limit)
            .map(|l| {
                let kept = l.op.kept.as_deref();
                let secs = |ms: u64| (ms as f64 / 100.0).round() / 10.0;
                serde_json::json!({
                    "id": l.id(),
                    "route": &*l.route,
                    "provider": &*l.op.pinned,
                    "key_digest": hex::encode(l.op.digest),
                    "age_seconds": kept.map(|k| secs(now_ms.saturating_sub(k.since_ms))),
                    "resolver_attempts": kept.map_or(0, |k| k.tries),
                    "next_try_in_seconds": kept
                        .filter(|k| k.next_ms != crate::idempotency::GAVE_UP)
                        .map(|k| secs(k.next_ms.saturating_sub(now_ms))),
                    "resolvable": l.waiting_for.is_none() || l.waiting_for == Some("provider"),
                    "waiting_for": l.waiting_for,
                })
            })
            .collect();
        let total = operations.len();
        json(
            StatusCode::OK,
            serde_json::json!({ "operations": operations, "total": total }),
        )
    }

    /// `POST /admin/operations/{id}/retry`: the operation is sent again now (if its provider takes
    /// it), whatever the resolver's schedule says.
    async fn retry_operation(&self, path: &str) -> Response<ProxyBody> {
        let Some(id) = path
            .strip_prefix("/admin/operations/")
            .and_then(|p| p.strip_suffix("/retry"))
        else {
            return problem(
                StatusCode::NOT_FOUND,
                "use POST /admin/operations/{id}/retry",
            );
        };
        match self.resolver.retry_now(id).await {
            Ok(None) => problem(
                StatusCode::NOT_FOUND,
                "no operation with an unknown outcome has this id",
            ),
            Ok(Some(tried)) => {
                let status = match tried {
                    crate::resolver::Tried::Resolved(_) | crate::resolver::Tried::AlreadyFinal => {
                        StatusCode::OK
                    }
                    crate::resolver::Tried::Busy | crate::resolver::Tried::PastRetention => {
                        StatusCode::CONFLICT
                    }
                    crate::resolver::Tried::Gone => StatusCode::GONE,
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                let provider_status = match tried {
                    crate::resolver::Tried::Resolved(s) => Some(s),
                    _ => None,
                };
                json(
                    status,
                    serde_json::json!({ "id": id, "result": tried.as_str(),
                        "provider_status": provider_status }),
                )
            }
            Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
        }
    }

    fn check_token(&self, headers: &http::HeaderMap) -> Option<Response<ProxyBody>> {
        let generation = self.current.load();
        let token = generation.snapshot.admin.token.as_ref()?;
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer_token(v.as_bytes()));
        if given.is_some_and(|g| token.matches(g)) {
            return None;
        }
        let mut resp = problem(
            StatusCode::UNAUTHORIZED,
            "admin write calls need Authorization: Bearer <token>",
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(resp)
    }

    fn providers_view(&self) -> serde_json::Value {
        let generation = self.current.load();
        let now = Instant::now();
        let providers: serde_json::Map<String, serde_json::Value> = generation
            .health
            .iter()
            .map(|s| (s.name().to_string(), s.view(now)))
            .collect();
        let routes: serde_json::Map<String, serde_json::Value> = generation
            .snapshot
            .routes
            .iter()
            .map(|r| {
                let shares = health::route_shares(r, &generation.health, now);
                let targets: Vec<serde_json::Value> = r
                    .targets
                    .iter()
                    .zip(shares)
                    .map(|(t, share)| {
                        serde_json::json!({
                            "provider": &*t.provider,
                            "priority": t.priority,
                            "weight": t.weight,
                            "share": (share * 1000.0).round() / 1000.0,
                        })
                    })
                    .collect();
                (r.name.to_string(), serde_json::Value::Array(targets))
            })
            .collect();
        serde_json::json!({ "providers": providers, "routes": routes })
    }

    /// `POST /admin/providers/{name}/{drain|undrain|reset}`.
    fn provider_action(&self, path: &str) -> Response<ProxyBody> {
        let rest = path.trim_start_matches("/admin/providers/");
        let Some((name, action)) = rest.split_once('/') else {
            return problem(
                StatusCode::NOT_FOUND,
                "use POST /admin/providers/{name}/drain, /undrain or /reset",
            );
        };
        let generation = self.current.load();
        let Some(state) = generation.health.get(name) else {
            return problem(StatusCode::NOT_FOUND, "no provider of that name");
        };
        let now = Instant::now();
        match action {
            "drain" => state.set_drained(true, now),
            "undrain" => state.set_drained(false, now),
            "reset" => state.reset(now),
            _ => {
                return problem(
                    StatusCode::NOT_FOUND,
                    "unknown action: use drain, undrain or reset",
                )
            }
        }
        json(StatusCode::OK, state.view(now))
    }

    fn config_view(&self) -> serde_json::Value {
        let generation = self.current.load();
        let status = self
            .status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let snap = &generation.snapshot;
        serde_json::json!({
            "path": self.config_path.display().to_string(),
            "generation": generation.number,
            "sha256": generation.sha256,
            "loaded_at": humantime::format_rfc3339_seconds(generation.loaded_at).to_string(),
            "last_reload_attempt_at": status.last_attempt_at
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            "last_reload_error": status.last_error,
            "restart_required": status.restart_required,
            "routes": snap.routes.iter().map(|r| r.name.to_string()).collect::<Vec<_>>(),
            "providers": snap.providers.keys().map(|p| p.to_string()).collect::<Vec<_>>(),
            "webhooks": snap.webhooks.iter().map(|w| serde_json::json!({
                "name": &*w.name,
                "path": w.path,
                "listen": w.listen.map(|l| l.to_string()),
                "forward_to": w.forward_to_shown(),
                "scheme": w.verify.scheme.as_str(),
                "keys": w.verify.keys.len(),
                "forward_authorization": w.forward_authorization,
            })).collect::<Vec<_>>(),
        })
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    let mut r = Response::new(full(value.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn problem(status: StatusCode, detail: &str) -> Response<ProxyBody> {
    let mut r = json(
        status,
        serde_json::json!({ "title": status.canonical_reason(), "status": status.as_u16(), "detail": detail }),
    );
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}
/// The token of an `Authorization: Bearer <token>` value; the scheme is case-insensitive (RFC 9110
/// §11.1), so `bearer` and `BEARER` are read too.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        for value in ["Bearer tok", "bearer tok", "BEARER tok", "Bearer   tok "] {
            assert_eq!(bearer_token(value.as_bytes()), Some(&b"tok"[..]), "{value}");
        }
        for value in ["Basic dG9rOg==", "Bearer", "Bearer ", "Bearertok", "tok"] {
            assert_eq!(bearer_token(value.as_bytes()), None, "{value}");
        }
    }
}
