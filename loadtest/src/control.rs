//! Small HTTP calls off the load path: the sandboxes' control API, the proxy's admin API, readiness.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::Value;

use crate::{err, Result};

/// The HTTP/1.1 client type used for load and control calls.
pub type Client = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// A client keeping up to `max_idle` idle connections per host.
pub fn client(max_idle: usize) -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// How long a control call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `method url` with an optional JSON body; returns the status and the body as text.
pub async fn call(
    client: &Client,
    method: Method,
    url: &str,
    body: Option<&Value>,
) -> Result<(u16, String)> {
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method.clone())
        .uri(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| err!("{method} {url}: {e}"))?;
    let answer = tokio::time::timeout(CALL_TIMEOUT, async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| err!("{method} {url}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| err!("{method} {url}: reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, crate::Error>((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
    .map_err(|_| err!("{method} {url}: no answer within {CALL_TIMEOUT:?}"))??;
    Ok(answer)
}

/// `GET url` answering 200 with JSON.
pub async fn get_json(client: &Client, url: &str) -> Result<Value> {
    let (status, body) = call(client, Method::GET, url, None).await?;
    if status != 200 {
        return Err(err!("GET {url}: status {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| err!("GET {url}: not JSON: {e}"))
}

/// What a sandbox has seen (`GET /admin/sandbox/NAME`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SandboxStats {
    /// Where it listens.
    #[serde(default)]
    pub listen: String,
    /// Requests received (health checks excluded).
    #[serde(default)]
    pub requests: u64,
    /// Payments created.
    #[serde(default)]
    pub charges: u64,
    /// Payments per idempotency key.
    #[serde(default)]
    pub charges_by_key: BTreeMap<String, u64>,
    /// Answers replayed for a repeated key.
    #[serde(default)]
    pub replays: u64,
    /// Requests refused because their key was in flight.
    #[serde(default)]
    pub conflicts: u64,
}

/// The control API of one sandbox provider.
#[derive(Debug, Clone)]
pub struct SandboxControl {
    /// `http://host:port` of the control API.
    pub base: String,
    /// The sandbox's name.
    pub name: String,
}

impl SandboxControl {
    fn url(&self, suffix: &str) -> String {
        format!(
            "{}/admin/sandbox/{}{suffix}",
            self.base.trim_end_matches('/'),
            self.name
        )
    }

    /// Switches its mode (`{"mode": ..., ...}`).
    pub async fn set_mode(&self, client: &Client, spec: &Value) -> Result<()> {
        let url = self.url("");
        let (status, body) = call(client, Method::POST, &url, Some(spec)).await?;
        if status != 200 {
            return Err(err!(
                "setting {} to {spec}: status {status}: {body}",
                self.name
            ));
        }
        Ok(())
    }

    /// Clears its payments and counters.
    pub async fn reset(&self, client: &Client) -> Result<()> {
        let url = self.url("/reset");
        let (status, body) = call(client, Method::POST, &url, None).await?;
        if status != 200 {
            return Err(err!("resetting {}: status {status}: {body}", self.name));
        }
        Ok(())
    }

    /// Its counters.
    pub async fn stats(&self, client: &Client) -> Result<SandboxStats> {
        let value = get_json(client, &self.url("")).await?;
        serde_json::from_value(value).map_err(|e| err!("sandbox {} counters: {e}", self.name))
    }
}

/// Reads one sample of a Prometheus text exposition: `name{labels}` exactly as written.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let rest = rest.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The samples of `switchyard_state_operations_total` summed by backend and result
/// (`"redis ok"`, `"local error"`…), from a Prometheus text exposition.
pub fn state_operations(exposition: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("switchyard_state_operations_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == name).then(|| v.trim().trim_matches('"').to_owned())
            })
        };
        let (Some(backend), Some(result)) = (label("backend"), label("result")) else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        *out.entry(format!("{backend} {result}")).or_default() += v as u64;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_state_operations() {
        let text = "# TYPE switchyard_state_operations_total counter\nswitchyard_state_operations_total{backend=\"redis\",op=\"claim\",result=\"ok\"} 7\nswitchyard_state_operations_total{backend=\"redis\",op=\"attempt\",result=\"ok\"} 5\nswitchyard_state_operations_total{backend=\"redis\",op=\"claim\",result=\"timeout\"} 1\nswitchyard_state_duration_seconds_count{backend=\"redis\",op=\"claim\"} 8\n";
        let ops = state_operations(text);
        assert_eq!(ops.get("redis ok"), Some(&12));
        assert_eq!(ops.get("redis timeout"), Some(&1));
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn reads_metrics() {
        let text = "# HELP x\nswitchyard_config_reloads_total{result=\"failure\"} 3\nswitchyard_config_reloads_total{result=\"success\"} 41\n";
        assert_eq!(
            metric_value(text, "switchyard_config_reloads_total{result=\"success\"}"),
            Some(41.0)
        );
        assert_eq!(metric_value(text, "nope"), None);
    }

    #[test]
    fn reads_sandbox_view() {
        let v = serde_json::json!({"listen": "127.0.0.1:1", "name": "p", "mode": "ok",
            "requests": 3, "charges": 2, "charges_by_key": {"k": 2}, "unkeyed_charges": 0,
            "replays": 1, "conflicts": 0, "mode_spec": {"mode": "ok"}});
        let s: SandboxStats = serde_json::from_value(v).unwrap();
        assert_eq!(s.charges_by_key["k"], 2);
    }
}
