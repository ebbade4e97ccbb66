//! Header hygiene between the shop and a provider (RFC 9110 §7.6.1).
//!
//! Hop-by-hop headers (those of the connection, and any the `Connection` header names) never cross the
//! proxy in either direction. Headers that describe the shop's network (`Forwarded`, `X-Forwarded-*`,
//! `X-Real-IP`, `Via`) and cookies are not sent to a provider. When the sidecar injects a provider
//! credential, the shop's own credentials are dropped first, so exactly one reaches the provider.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that only describe one connection.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers that would tell a provider about the shop's network or session.
const SHOP_PRIVATE: [&str; 6] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "via",
];

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Prepares the shop's headers for a provider: hop-by-hop and shop-private headers removed, `Host`
/// removed (the client sets it from the provider URL), and credentials removed when `replace_auth`
/// names the header the sidecar will set.
pub fn for_provider(headers: &mut HeaderMap, replace_auth: Option<&HeaderName>) {
    remove_hop_by_hop(headers);
    for name in SHOP_PRIVATE {
        headers.remove(name);
    }
    headers.remove(header::HOST);
    headers.remove(header::COOKIE);
    if let Some(auth) = replace_auth {
        headers.remove(header::AUTHORIZATION);
        headers.remove(auth);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn provider_headers_drop_shop_network_and_credentials_when_replaced() {
        let auth = HeaderName::from_static("x-api-key");
        let mut h = map(&[
            ("host", "shop.local"),
            ("x-forwarded-for", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
            ("cookie", "session=1"),
            ("authorization", "Bearer shop-key"),
            ("x-api-key", "shop-key"),
            ("idempotency-key", "order-1"),
        ]);
        for_provider(&mut h, Some(&auth));
        assert_eq!(h.len(), 1);
        assert_eq!(h["idempotency-key"], "order-1");

        let mut h = map(&[("authorization", "Bearer shop-key")]);
        for_provider(&mut h, None);
        assert_eq!(
            h["authorization"], "Bearer shop-key",
            "kept when the sidecar injects none"
        );
    }
}
