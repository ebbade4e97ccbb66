//! The innermost service: sends the buffered request to the route's provider and streams its answer back.
//!
//! Until failover exists, a route sends every request to its first target of the lowest priority.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full};
use prometheus::IntGauge;
use tower::Service;

use super::rescue::X_SWITCHYARD_PROVIDER;
use super::BoxFuture;
use crate::body::ProxyBody;
use crate::config::validate::{path_has_prefix, Provider, Target};
use crate::ctx::{RequestInfo, RouteCtx};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::upstream::headers;

/// Sends requests to providers.
#[derive(Clone)]
pub struct Forward {
    metrics: Metrics,
}

impl Forward {
    /// A forwarder counting in-flight requests in `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

impl Service<Request<Bytes>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        let metrics = self.metrics.clone();
        Box::pin(forward(req, metrics))
    }
}

/// The first target of the lowest priority.
fn primary(targets: &[Target]) -> Option<&Target> {
    let lowest = targets.iter().map(|t| t.priority).min()?;
    targets.iter().find(|t| t.priority == lowest)
}

async fn forward(req: Request<Bytes>, metrics: Metrics) -> Result<Response<ProxyBody>, ProxyError> {
    let ctx =
        req.extensions().get::<RouteCtx>().cloned().ok_or_else(|| {
            ProxyError::Internal("request reached forwarding without a route".into())
        })?;
    let info = req.extensions().get::<Arc<RequestInfo>>().cloned();
    let target = primary(&ctx.route.targets)
        .ok_or_else(|| ProxyError::Internal(format!("route {} has no target", ctx.route.name)))?;
    let upstream = ctx
        .generation
        .upstreams
        .get(&target.provider)
        .ok_or_else(|| ProxyError::Internal(format!("no upstream for {}", target.provider)))?;
    if let Some(info) = &info {
        info.set_provider(Arc::clone(&target.provider));
    }
    let provider = &upstream.config;

    let (parts, body) = req.into_parts();
    let uri = provider_uri(provider, ctx.route.strip_prefix.as_deref(), &parts.uri)?;
    let mut headers = parts.headers;
    headers::for_provider(&mut headers, provider.auth.as_ref().map(|a| &a.header));
    if let Some(auth) = &provider.auth {
        headers.insert(auth.header.clone(), auth.value.header_value().clone());
    }
    let mut out = Request::new(Full::new(body));
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;

    let in_flight = InFlight::start(
        metrics
            .upstream_requests_in_flight
            .with_label_values(&[&*provider.name]),
    );
    let resp = upstream.send(out).await;
    drop(in_flight);
    let (mut parts, body) = resp?.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    if let Ok(name) = HeaderValue::from_str(&provider.name) {
        parts.headers.insert(X_SWITCHYARD_PROVIDER, name);
    }
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(
        parts,
        body.map_err(|e| -> crate::body::BoxError { Box::new(e) })
            .boxed_unsync(),
    ))
}

/// The provider's URI for a shop request: the provider's scheme and authority, its base path, the shop's
/// path without the route's `strip_prefix`, and the shop's query.
fn provider_uri(
    provider: &Provider,
    strip_prefix: Option<&str>,
    shop: &Uri,
) -> Result<Uri, ProxyError> {
    let mut path = shop.path();
    if let Some(prefix) = strip_prefix.map(|p| p.trim_end_matches('/')) {
        if !prefix.is_empty() && path_has_prefix(path, prefix) {
            path = &path[prefix.len()..];
        }
    }
    let slash = if path.starts_with('/') { "" } else { "/" };
    let pq = match shop.query() {
        Some(q) => format!("{}{slash}{path}?{q}", provider.base_path),
        None => format!("{}{slash}{path}", provider.base_path),
    };
    let pq: PathAndQuery = pq.parse().map_err(|_| ProxyError::BadRequest {
        reason: "the request path cannot be forwarded".into(),
    })?;
    Uri::builder()
        .scheme(provider.scheme.clone())
        .authority(provider.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|e| ProxyError::Internal(format!("building the provider URI: {e}")))
}

/// Counts a request as in flight to a provider until dropped, even when the shop goes away first.
struct InFlight(IntGauge);

impl InFlight {
    fn start(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::validate::Tls;
    use std::time::Duration;

    fn provider(url_base: &str) -> Provider {
        Provider {
            name: Arc::from("p"),
            scheme: http::uri::Scheme::HTTPS,
            authority: "api.example:443".parse().unwrap(),
            base_path: url_base.to_owned(),
            auth: None,
            tls: Tls::default(),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(1),
            pool_max_idle: 1,
        }
    }

    #[test]
    fn uri_keeps_path_and_query_and_applies_base_and_strip() {
        let shop: Uri = "/stripe/v1/charges?expand[]=x&limit=3".parse().unwrap();
        let u = provider_uri(&provider(""), Some("/stripe"), &shop).unwrap();
        assert_eq!(
            u.to_string(),
            "https://api.example:443/v1/charges?expand[]=x&limit=3"
        );
        let u = provider_uri(&provider("/base"), None, &shop).unwrap();
        assert_eq!(u.path(), "/base/stripe/v1/charges");
        // A prefix only strips on a segment boundary.
        let shop: Uri = "/stripev1/charges".parse().unwrap();
        let u = provider_uri(&provider(""), Some("/stripe"), &shop).unwrap();
        assert_eq!(u.path(), "/stripev1/charges");
        let shop: Uri = "/stripe".parse().unwrap();
        let u = provider_uri(&provider(""), Some("/stripe/"), &shop).unwrap();
        assert_eq!(u.path(), "/");
    }

    #[test]
    fn primary_is_first_of_lowest_priority() {
        let t = |p: &str, priority| Target {
            provider: Arc::from(p),
            priority,
            weight: 1,
        };
        let targets = [t("backup", 1), t("a", 0), t("b", 0)];
        assert_eq!(&*primary(&targets).unwrap().provider, "a");
    }
}
