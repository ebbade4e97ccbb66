//! The innermost service: sends the buffered request to the route's provider and streams its answer back.
//!
//! The target comes from the route's plan (`health::plan`): health-weighted, spilling to the backup
//! priority as the primary gets sick, probes first when a breaker waits for one. A target whose breaker
//! refuses the attempt, or whose account quota has no slot within `max_wait`, is passed over without
//! sending anything, and the next one in the plan is tried. Once a request is sent, its answer (or
//! failure) is the answer: re-sending a payment elsewhere is only safe with the rules of the retry layer.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::PathAndQuery;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use prometheus::IntGauge;
use tower::Service;

use super::rescue::X_SWITCHYARD_PROVIDER;
use super::BoxFuture;
use crate::body::ProxyBody;
use crate::config::validate::{path_has_prefix, Provider};
use crate::ctx::{RequestInfo, RouteCtx};
use crate::error::ProxyError;
use crate::health::breaker::Admission;
use crate::health::{self, Outcome, ProviderState};
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

/// Why a target was passed over without sending anything.
enum Skipped {
    Breaker(Duration),
    Quota { provider: Arc<str>, wait: Duration },
}

async fn forward(req: Request<Bytes>, metrics: Metrics) -> Result<Response<ProxyBody>, ProxyError> {
    let ctx =
        req.extensions().get::<RouteCtx>().cloned().ok_or_else(|| {
            ProxyError::Internal("request reached forwarding without a route".into())
        })?;
    let info = req.extensions().get::<Arc<RequestInfo>>().cloned();
    let generation = &ctx.generation;
    let route = &ctx.route;
    let order = health::plan(route, &generation.health, Instant::now(), rand::random())
        .map_err(|retry_after| ProxyError::NoHealthyProvider { retry_after })?;

    let (parts, body) = req.into_parts();
    let mut skipped = None;
    for index in order {
        let target = &route.targets[index];
        let (Some(upstream), Some(state)) = (
            generation.upstreams.get(&target.provider),
            generation.health.get(&target.provider),
        ) else {
            return Err(ProxyError::Internal(format!(
                "no upstream for {}",
                target.provider
            )));
        };
        let probe = match state.admit(Instant::now()) {
            Admission::Allowed => false,
            Admission::Probe => true,
            Admission::Rejected { retry_in } => {
                skipped = Some(Skipped::Breaker(retry_in));
                continue;
            }
        };
        let attempt = Attempt::new(state, probe);
        if let Some(gate) = state.quota() {
            if let Err(wait) = gate.acquire().await {
                metrics
                    .rate_limited_total
                    .with_label_values(&[&*route.name, "provider"])
                    .inc();
                drop(attempt);
                skipped = Some(Skipped::Quota {
                    provider: Arc::clone(&target.provider),
                    wait,
                });
                continue;
            }
        }
        if let Some(info) = &info {
            info.set_provider(Arc::clone(&target.provider));
        }
        let out = provider_request(
            &upstream.config,
            route.strip_prefix.as_deref(),
            &parts,
            &body,
        )?;
        let in_flight = InFlight::start(
            metrics
                .upstream_requests_in_flight
                .with_label_values(&[&*target.provider]),
        );
        let started = Instant::now();
        let result = upstream.send(out).await;
        drop(in_flight);
        attempt.finish(outcome(&result), started.elapsed());
        return respond(result?, &target.provider);
    }
    Err(match skipped {
        Some(Skipped::Quota { provider, wait }) => ProxyError::ProviderQuotaExhausted {
            provider: provider.to_string(),
            retry_after: wait,
        },
        Some(Skipped::Breaker(wait)) => ProxyError::NoHealthyProvider {
            retry_after: wait.max(Duration::from_millis(100)),
        },
        None => ProxyError::NoHealthyProvider {
            retry_after: Duration::from_secs(1),
        },
    })
}

/// What an attempt's result tells the provider's health.
fn outcome(result: &Result<Response<Incoming>, ProxyError>) -> Outcome {
    match result {
        Err(_) => Outcome::Failed,
        Ok(resp) if resp.status() == StatusCode::TOO_MANY_REQUESTS => {
            Outcome::Throttled(retry_after(resp.headers()))
        }
        Ok(resp) if resp.status().is_server_error() => Outcome::Failed,
        Ok(_) => Outcome::Answered,
    }
}

/// A `Retry-After` in seconds or as an HTTP date.
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate_parse(value)?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn httpdate_parse(value: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(value).ok().or_else(|| {
        // IMF-fixdate, e.g. "Wed, 21 Oct 2015 07:28:00 GMT".
        let rest = value.split_once(", ")?.1.strip_suffix(" GMT")?;
        let mut it = rest.split(' ');
        let (day, month, year, time) = (it.next()?, it.next()?, it.next()?, it.next()?);
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let m = months.iter().position(|&x| x == month)? + 1;
        humantime::parse_rfc3339_weak(&format!("{year}-{m:02}-{day:0>2} {time}")).ok()
    })
}

/// The provider's answer, as the shop gets it.
fn respond(resp: Response<Incoming>, provider: &str) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = resp.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers);
    if let Ok(name) = HeaderValue::from_str(provider) {
        parts.headers.insert(X_SWITCHYARD_PROVIDER, name);
    }
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(
        parts,
        body.map_err(|e| -> crate::body::BoxError { Box::new(e) })
            .boxed_unsync(),
    ))
}

/// The request for one attempt at `provider`, built from the shop's buffered request.
fn provider_request(
    provider: &Provider,
    strip_prefix: Option<&str>,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Result<Request<Full<Bytes>>, ProxyError> {
    let uri = provider_uri(provider, strip_prefix, &parts.uri)?;
    let mut headers = parts.headers.clone();
    headers::for_provider(&mut headers, provider.auth.as_ref().map(|a| &a.header));
    if let Some(auth) = &provider.auth {
        headers.insert(auth.header.clone(), auth.value.header_value().clone());
    }
    let mut out = Request::new(Full::new(body.clone()));
    *out.method_mut() = parts.method.clone();
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;
    Ok(out)
}

/// An admitted attempt: reports its outcome to the provider's health, or gives back its probe slot if
/// it ends without one (the request was cancelled, or its quota slot never came).
struct Attempt<'a> {
    state: &'a ProviderState,
    probe: bool,
    done: bool,
}

impl<'a> Attempt<'a> {
    fn new(state: &'a ProviderState, probe: bool) -> Self {
        Self {
            state,
            probe,
            done: false,
        }
    }

    fn finish(mut self, outcome: Outcome, elapsed: Duration) {
        self.done = true;
        self.state
            .record(Instant::now(), self.probe, outcome, elapsed);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done && self.probe {
            self.state.release_probe();
        }
    }
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
            breaker: Default::default(),
            health_check: None,
            quota: None,
            slow_start: Duration::ZERO,
            max_throttle: Duration::from_secs(60),
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
    fn retry_after_in_seconds_or_as_a_date() {
        let mut h = http::HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date in the past");
        let future = humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + Duration::from_secs(120),
        )
        .to_string();
        let (date, time) = future.trim_end_matches('Z').split_once('T').unwrap();
        let (y, rest) = date.split_once('-').unwrap();
        let (m, d) = rest.split_once('-').unwrap();
        let month = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ][m.parse::<usize>().unwrap() - 1];
        let imf = format!("Mon, {d} {month} {y} {time} GMT");
        h.insert(header::RETRY_AFTER, HeaderValue::from_str(&imf).unwrap());
        let got = retry_after(&h).unwrap();
        assert!(
            got > Duration::from_secs(100) && got <= Duration::from_secs(120),
            "{got:?}"
        );
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
