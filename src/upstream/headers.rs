//! Header hygiene between the shop and a provider (RFC 9110 §7.6.1).
//!
//! Hop-by-hop headers (those of the connection, and any the `Connection` header names) never cross the
//! proxy in either direction. Headers that describe the shop's network (`Forwarded`, `X-Forwarded-*`,
//! `X-Real-IP`, `Via`) and cookies are not sent to a provider. When the sidecar injects a provider
//! credential, the shop's own credentials are dropped first, so exactly one reaches the provider.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that only describe one connection.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Headers that would tell a provider about the shop's network or session.
fn is_shop_private(name: &str) -> bool {
    matches!(
        name,
        "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "x-real-ip"
            | "via"
            | "cookie"
    )
}

/// Headers the proxy relies on end to end, which a `Connection` header may not name away: the request
/// id (the one id the shop, the audit trail and the provider share) and the body's framing and type.
fn is_end_to_end_for_us(name: &HeaderName) -> bool {
    name == header::CONTENT_TYPE
        || name == header::CONTENT_LENGTH
        || name.as_str() == "x-request-id"
}

/// Removes every header for which `drop` holds, plus those the `Connection` header names. One pass over
/// the names (a `HeaderName` is already lower case); nothing is allocated unless something goes.
fn remove_where(headers: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if drop(name) && !doomed.contains(name) {
            doomed.push(name.clone());
        }
    }
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for named in value.split(',') {
            if let Ok(name) = HeaderName::from_bytes(named.trim().as_bytes()) {
                if !doomed.contains(&name) && !is_end_to_end_for_us(&name) {
                    doomed.push(name);
                }
            }
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_where(headers, |n| is_hop_by_hop(n.as_str()));
}

/// Prepares the shop's headers for a provider: hop-by-hop and shop-private headers removed, `Host`
/// removed (the client sets it from the provider URL), and credentials removed when `replace_auth`
/// names the header the sidecar will set.
pub fn for_provider(headers: &mut HeaderMap, replace_auth: Option<&HeaderName>) {
    // Every shop request has a Host: removed by its constant, the common case allocates nothing.
    headers.remove(header::HOST);
    remove_where(headers, |n| {
        is_hop_by_hop(n.as_str())
            || is_shop_private(n.as_str())
            || replace_auth.is_some_and(|auth| n == header::AUTHORIZATION || n == auth)
    });
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
    fn every_value_goes_and_connection_names_are_read_case_and_space_insensitively() {
        let mut h = map(&[
            ("connection", "Keep-Alive ,X-Hop-One"),
            ("connection", "x-hop-two"),
            ("x-hop-one", "1"),
            ("x-hop-two", "2"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("via", "1.1 lb"),
            ("content-length", "2"),
        ]);
        for_provider(&mut h, None);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-length"]);
    }

    #[test]
    fn connection_cannot_name_away_the_request_id_or_the_body_framing() {
        let mut h = map(&[
            (
                "connection",
                "x-request-id, content-type, content-length, x-hop",
            ),
            ("x-request-id", "req-1"),
            ("content-type", "application/json"),
            ("content-length", "2"),
            ("x-hop", "1"),
        ]);
        for_provider(&mut h, None);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-length", "content-type", "x-request-id"]);
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
