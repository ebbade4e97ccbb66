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

/// The headers the `Connection` header names (and the proxy does not rely on end to end): they are
/// hop-by-hop too. Nothing is allocated when there are none, as in most requests.
fn named_by_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for name in value.split(',') {
            if let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) {
                if !named.contains(&name) && !is_end_to_end_for_us(&name) {
                    named.push(name);
                }
            }
        }
    }
    named
}

/// Removes every header for which `drop` holds, plus those the `Connection` header names. One pass over
/// the names (a `HeaderName` is already lower case); nothing is allocated unless something goes.
fn remove_where(headers: &mut HeaderMap, drop: impl Fn(&HeaderName) -> bool) {
    let mut doomed = named_by_connection(headers);
    for name in headers.keys() {
        if drop(name) && !doomed.contains(name) {
            doomed.push(name.clone());
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

/// Whether a header of the shop's stays off a provider request: hop-by-hop, shop-private, `Host`
/// (the client sets it from the provider URL), and credentials when `replace_auth` names the header the
/// sidecar will set.
fn not_for_provider(name: &HeaderName, replace_auth: Option<&HeaderName>) -> bool {
    name == header::HOST
        || is_hop_by_hop(name.as_str())
        || is_shop_private(name.as_str())
        || replace_auth.is_some_and(|auth| name == header::AUTHORIZATION || name == auth)
}

/// Prepares the shop's headers for a provider, in place: see [`copy_for_provider`].
pub fn for_provider(headers: &mut HeaderMap, replace_auth: Option<&HeaderName>) {
    remove_where(headers, |n| not_for_provider(n, replace_auth));
}

/// The shop's headers as a provider gets them, in a new map with room for `room` more (the
/// credential, the idempotency key) that will not grow: the same headers [`for_provider`] keeps, in
/// their order, copied one by one (names and values share their bytes with the shop's) rather than
/// cloned whole and then removed from. `replaced` (the shop's idempotency key header, which the
/// caller sets anew) is left out too: a header name hyper parsed is copied into a block of its own on
/// its first clone.
pub fn copy_for_provider(
    shop: &HeaderMap,
    replace_auth: Option<&HeaderName>,
    replaced: Option<&HeaderName>,
    room: usize,
) -> HeaderMap {
    let named = named_by_connection(shop);
    let mut out = HeaderMap::with_capacity(shop.len() + room);
    for (name, value) in shop {
        if !not_for_provider(name, replace_auth) && !named.contains(name) && replaced != Some(name)
        {
            out.append(name.clone(), value.clone());
        }
    }
    out
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

    #[test]
    fn the_copy_for_a_provider_keeps_what_the_in_place_cleaning_keeps() {
        let shop = map(&[
            ("host", "sidecar"),
            ("connection", "keep-alive, x-secret-hop, x-request-id"),
            ("x-secret-hop", "1"),
            ("authorization", "Bearer shop"),
            ("x-api-key", "shop"),
            ("cookie", "s=1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("content-type", "application/json"),
            ("accept", "a"),
            ("accept", "b"),
            ("x-request-id", "r-1"),
            ("idempotency-key", "k-1"),
        ]);
        let auth = HeaderName::from_static("x-api-key");
        for replace in [None, Some(&auth)] {
            let mut in_place = shop.clone();
            for_provider(&mut in_place, replace);
            let copy = copy_for_provider(&shop, replace, None, 2);
            assert_eq!(copy, in_place, "replace_auth {replace:?}");
            let values: Vec<_> = copy.get_all("accept").iter().collect();
            assert_eq!(values, ["a", "b"], "multi-valued headers keep their order");
            assert!(
                copy.capacity() >= copy.len() + 2,
                "room for the credential and the key"
            );
        }
        let copy = copy_for_provider(&shop, Some(&auth), None, 0);
        assert!(!copy.contains_key("authorization") && !copy.contains_key("x-api-key"));
        let key = HeaderName::from_static("idempotency-key");
        let without_key = copy_for_provider(&shop, Some(&auth), Some(&key), 0);
        assert!(!without_key.contains_key("idempotency-key"));
        assert_eq!(without_key.len(), copy.len() - 1);
        assert!(
            copy.contains_key("x-request-id"),
            "Connection may not name it away"
        );
        assert!(!copy.contains_key("x-secret-hop") && !copy.contains_key("host"));
    }
}
