//! The sandbox control API, served on the sidecar's admin listener (and by `switchyard sandbox
//! --control`): `GET /admin/sandbox` lists them, `GET /admin/sandbox/{name}` returns the mode and
//! counters, `POST /admin/sandbox/{name}` with `{"mode": "ok|down|error503|error500|slow|throttle|flaky|reset|in_progress",
//! ...}` switches the mode, `POST /admin/sandbox/{name}/reset` clears the counters.

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde::Serialize;

use super::{ModeSpec, Sandbox, Stats};

/// The sandboxes of a process, by name.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    by_name: BTreeMap<String, Sandbox>,
}

impl Registry {
    /// Adds a sandbox.
    pub fn insert(&mut self, sandbox: Sandbox) {
        self.by_name.insert(sandbox.name().to_owned(), sandbox);
    }

    /// The sandbox named `name`.
    pub fn get(&self, name: &str) -> Option<&Sandbox> {
        self.by_name.get(name)
    }

    /// All of them.
    pub fn iter(&self) -> impl Iterator<Item = &Sandbox> {
        self.by_name.values()
    }
}

#[derive(Serialize)]
struct View {
    listen: String,
    #[serde(rename = "mode_spec")]
    spec: ModeSpec,
    #[serde(flatten)]
    stats: Stats,
}

fn view(s: &Sandbox) -> View {
    View {
        listen: s.addr().to_string(),
        spec: s.mode(),
        stats: s.stats(),
    }
}

/// An answer of the control API: status and JSON body.
pub type ControlAnswer = (StatusCode, serde_json::Value);

fn problem(status: StatusCode, detail: impl Into<String>) -> ControlAnswer {
    (
        status,
        serde_json::json!({ "title": status.canonical_reason(), "status": status.as_u16(), "detail": detail.into() }),
    )
}

/// Answers a control request, or `None` when `path` is not under `/admin/sandbox`.
pub fn control_response(
    registry: &Registry,
    method: &Method,
    path: &str,
    body: &Bytes,
) -> Option<ControlAnswer> {
    let rest = path.strip_prefix("/admin/sandbox")?;
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        if method != Method::GET {
            return Some(problem(StatusCode::METHOD_NOT_ALLOWED, "use GET"));
        }
        let all: Vec<View> = registry.iter().map(view).collect();
        return Some((StatusCode::OK, serde_json::json!({ "sandboxes": all })));
    }
    let (name, action) = match rest.split_once('/') {
        Some((n, a)) => (n, Some(a)),
        None => (rest, None),
    };
    let Some(sandbox) = registry.get(name) else {
        return Some(problem(
            StatusCode::NOT_FOUND,
            format!("no sandbox named \"{name}\""),
        ));
    };
    let answer = match (method.clone(), action) {
        (Method::GET, None) => (StatusCode::OK, to_json(&view(sandbox))),
        (Method::POST, None) => match serde_json::from_slice::<ModeSpec>(body) {
            Err(e) => problem(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"mode\": \"ok|down|error503|error500|slow|throttle|flaky|reset|in_progress\", \"delay_ms\", \"ratio\", \"retry_after_s\", \"process_ms\"}}: {e}"),
            ),
            Ok(spec) => match spec.validate() {
                Err(e) => problem(StatusCode::BAD_REQUEST, e),
                Ok(()) => {
                    sandbox.set_mode(spec);
                    tracing::info!(sandbox = name, mode = ?spec.mode, "sandbox mode set");
                    (StatusCode::OK, to_json(&view(sandbox)))
                }
            },
        },
        (Method::POST, Some("reset")) => {
            sandbox.reset();
            (StatusCode::OK, to_json(&view(sandbox)))
        }
        (_, Some(other)) if other != "reset" => {
            problem(StatusCode::NOT_FOUND, format!("unknown action \"{other}\""))
        }
        _ => problem(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST"),
    };
    Some(answer)
}

fn to_json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Serves the control API alone on `listener` (for `switchyard sandbox --control`).
pub async fn serve_control(listener: tokio::net::TcpListener, registry: Registry) {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let registry = std::sync::Arc::new(registry);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = std::sync::Arc::clone(&registry);
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let registry = std::sync::Arc::clone(&registry);
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let (status, value) =
                            control_response(&registry, &parts.method, parts.uri.path(), &body)
                                .unwrap_or_else(|| {
                                    problem(StatusCode::NOT_FOUND, "no such endpoint")
                                });
                        let mut resp = http::Response::new(crate::body::full(value.to_string()));
                        *resp.status_mut() = status;
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
