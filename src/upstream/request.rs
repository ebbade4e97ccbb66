//! The request one attempt sends to a provider: the shop's request re-addressed to the provider's
//! scheme, authority and base path, with the shop's credentials swapped for the provider's and the
//! operation's idempotency key in the provider's own header (derived when longer than it accepts).

use std::borrow::Cow;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Request, Uri, Version};

use super::headers;
use crate::config::Provider;
use crate::error::ProxyError;
use crate::idempotency;
use crate::routing::path_has_prefix;

/// The operation's idempotency key, as the provider request needs it.
#[derive(Debug, Clone, Copy)]
pub struct ProviderKey<'a> {
    /// The shop's key (or the one the proxy made).
    pub key: &'a str,
    /// The client scope the key belongs to (`idempotency::scope`; empty for a single client).
    pub scope: &'a str,
    /// The key as a header value, shared rather than copied when the provider takes it as is.
    pub value: &'a HeaderValue,
    /// The shop's header, removed before the provider's is set.
    pub shop_header: &'a HeaderName,
}

/// The request for one attempt at `provider`.
pub fn provider_request(
    provider: &Provider,
    strip_prefix: Option<&str>,
    shop: &http::request::Parts,
    body: &Bytes,
    key: Option<ProviderKey<'_>>,
) -> Result<Request<Bytes>, ProxyError> {
    let uri = provider_uri(provider, strip_prefix, &shop.uri)?;
    // Room for the credential and the key: the map is not grown after the copy.
    // The shop's key header is left out when the key is set below (in the provider's header).
    let mut h = headers::copy_for_provider(
        &shop.headers,
        provider.auth.as_ref().map(|a| &a.header),
        key.as_ref().map(|k| k.shop_header),
        2,
    );
    if let Some(auth) = &provider.auth {
        h.insert(auth.header.clone(), auth.value.header_value().clone());
    }
    if let Some(k) = key {
        // One provider account for every client (the credential is the sidecar's): the key is
        // derived from the client's scope too, so tenants never share a payment at the provider.
        let derived = match &provider.auth {
            Some(_) => idempotency::scoped_key_for_provider(
                k.scope,
                k.key,
                provider.idempotency_key_max_len,
            ),
            None => idempotency::key_for_provider(k.key, provider.idempotency_key_max_len),
        };
        let value = match derived {
            Cow::Borrowed(_) => k.value.clone(),
            Cow::Owned(derived) => HeaderValue::from_str(&derived)
                .map_err(|_| ProxyError::Internal("idempotency key not a header value".into()))?,
        };
        h.insert(provider.idempotency_header.clone(), value);
    }
    let mut out = Request::new(body.clone());
    *out.method_mut() = shop.method.clone();
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = h;
    Ok(out)
}

/// The provider's URI for a shop request: the provider's scheme and authority, its base path, the shop's
/// path without the route's `strip_prefix`, and the shop's query.
pub fn provider_uri(
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
    let unchanged =
        provider.base_path.is_empty() && slash.is_empty() && path.len() == shop.path().len();
    let pq = match shop.path_and_query() {
        // The common case forwards the shop's own path and query: shared, not copied or parsed again.
        Some(pq) if unchanged => pq.clone(),
        _ => provider_path(provider, slash, path, shop.query())?,
    };
    Uri::builder()
        .scheme(provider.scheme.clone())
        .authority(provider.authority.clone())
        .path_and_query(pq)
        .build()
        .map_err(|e| ProxyError::Internal(format!("building the provider URI: {e}")))
}

/// The provider's path and query: its base path, the shop's path (after the prefix) and query.
fn provider_path(
    provider: &Provider,
    slash: &str,
    path: &str,
    query: Option<&str>,
) -> Result<PathAndQuery, ProxyError> {
    let pq = match query {
        Some(q) => format!("{}{slash}{path}?{q}", provider.base_path),
        None => format!("{}{slash}{path}", provider.base_path),
    };
    pq.parse().map_err(|_| ProxyError::BadRequest {
        reason: "the request path cannot be forwarded".into(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::Tls;

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
            idempotency_header: http::HeaderName::from_static("idempotency-key"),
            idempotency_key_max_len: 255,
            idempotency_retention: Duration::from_secs(86_400),
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
        assert_eq!(u.query(), Some("expand[]=x&limit=3"));
        // Neither base path nor prefix: the shop's path and query as they came.
        let u = provider_uri(&provider(""), None, &shop).unwrap();
        assert_eq!(
            u.to_string(),
            "https://api.example:443/stripe/v1/charges?expand[]=x&limit=3"
        );
        let u = provider_uri(&provider(""), Some("/other"), &shop).unwrap();
        assert_eq!(u.path(), "/stripe/v1/charges");
        // A prefix only strips on a segment boundary.
        let shop: Uri = "/stripev1/charges".parse().unwrap();
        let u = provider_uri(&provider(""), Some("/stripe"), &shop).unwrap();
        assert_eq!(u.path(), "/stripev1/charges");
        let shop: Uri = "/stripe".parse().unwrap();
        let u = provider_uri(&provider(""), Some("/stripe/"), &shop).unwrap();
        assert_eq!(u.path(), "/");
    }
}
