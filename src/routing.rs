//! Request-time route matching: whether a request's method, path, host and headers fit a route's
//! [`Match`]. Config only describes the matcher; this is the one place that applies it.

use http::Method;

use crate::config::model::Match;

pub mod path;

impl Match {
    /// Whether a request with these parts matches.
    pub fn matches(
        &self,
        method: &Method,
        path: &str,
        host: Option<&str>,
        headers: &http::HeaderMap,
    ) -> bool {
        path_has_prefix(path, &self.path_prefix)
            && self.methods.as_ref().is_none_or(|ms| ms.contains(method))
            && self
                .host
                .as_ref()
                .is_none_or(|h| host.is_some_and(|got| got.eq_ignore_ascii_case(h)))
            && self
                .headers
                .iter()
                .all(|(n, v)| headers.get_all(n).iter().any(|got| got == v))
    }
}

/// Whether `path` starts with `prefix` on a segment boundary: `/v1` matches `/v1` and `/v1/x`, not `/v10`.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Whether a request is one the proxy forwards at all, checked before any route matches it:
/// - a standard method (RFC 9110 §9; methods are case-sensitive, so `post` is not `POST`): a provider
///   answers others with 501, which must not count against it, and TRACE would echo the injected
///   credential back;
/// - no transfer coding but `chunked` (RFC 9112 §6.1): hyper removes the framing, so a `gzip` coding
///   would reach the provider as bytes it was never told are compressed;
/// - exactly one `Host` on HTTP/1.1 (RFC 9112 §3.2), at most one on other versions.
pub fn admissible(
    method: &Method,
    version: http::Version,
    headers: &http::HeaderMap,
) -> Result<(), crate::error::ProxyError> {
    use crate::error::ProxyError;
    const STANDARD: [Method; 7] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ];
    if !STANDARD.contains(method) {
        return Err(ProxyError::NotImplemented {
            reason: format!("the method {method} is not forwarded"),
        });
    }
    for value in headers.get_all(http::header::TRANSFER_ENCODING) {
        let text = value.to_str().unwrap_or("?");
        let only_chunked = text
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .all(|c| c.eq_ignore_ascii_case("chunked"));
        if !only_chunked {
            return Err(ProxyError::NotImplemented {
                reason: "transfer codings other than chunked are not forwarded".to_owned(),
            });
        }
    }
    let hosts = headers.get_all(http::header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && version == http::Version::HTTP_11) {
        return Err(ProxyError::BadRequest {
            reason: "an HTTP/1.1 request needs exactly one Host header".to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderName, HeaderValue, Method};

    use super::*;

    fn header_map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn matcher(prefix: &str) -> Match {
        Match {
            path_prefix: prefix.to_owned(),
            methods: None,
            host: None,
            headers: Vec::new(),
        }
    }

    #[test]
    fn path_prefixes_match_on_segment_boundaries() {
        let cases = [
            ("/v1", "/v1", true),
            ("/v1", "/v1/", true),
            ("/v1", "/v1/charges", true),
            ("/v1", "/v10", false),
            ("/v1", "/v1charges", false),
            ("/v1", "/v", false),
            ("/v1", "/V1", false),
            ("/v1/", "/v1/charges", true),
            ("/v1/", "/v1/", true),
            ("/v1/", "/v1", false),
            ("/v1/", "/v10/x", false),
            ("/", "/", true),
            ("/", "/anything/at/all", true),
        ];
        for (prefix, path, expected) in cases {
            assert_eq!(
                path_has_prefix(path, prefix),
                expected,
                "path {path:?} with prefix {prefix:?}"
            );
            let none = HeaderMap::new();
            assert_eq!(
                matcher(prefix).matches(&Method::GET, path, None, &none),
                expected,
                "matcher: path {path:?} with prefix {prefix:?}"
            );
        }
    }

    #[test]
    fn a_matcher_checks_methods_host_and_headers() {
        let none = HeaderMap::new();

        let m = Match {
            methods: Some(vec![Method::GET, Method::POST]),
            ..matcher("/")
        };
        assert!(m.matches(&Method::GET, "/x", None, &none));
        assert!(m.matches(&Method::POST, "/x", None, &none));
        assert!(!m.matches(&Method::DELETE, "/x", None, &none));

        let m = Match {
            host: Some("shop.example".to_owned()),
            ..matcher("/")
        };
        assert!(m.matches(&Method::GET, "/", Some("shop.example"), &none));
        assert!(m.matches(&Method::GET, "/", Some("Shop.EXAMPLE"), &none));
        assert!(!m.matches(&Method::GET, "/", Some("other.example"), &none));
        assert!(!m.matches(&Method::GET, "/", Some("shop.example.evil"), &none));
        assert!(!m.matches(&Method::GET, "/", None, &none));

        let m = Match {
            headers: vec![(
                HeaderName::from_static("x-tenant"),
                HeaderValue::from_static("eu"),
            )],
            ..matcher("/")
        };
        assert!(m.matches(&Method::GET, "/", None, &header_map(&[("x-tenant", "eu")])));
        assert!(m.matches(
            &Method::GET,
            "/",
            None,
            &header_map(&[("x-tenant", "us"), ("x-tenant", "eu")])
        ));
        assert!(!m.matches(&Method::GET, "/", None, &header_map(&[("x-tenant", "EU")])));
        assert!(!m.matches(&Method::GET, "/", None, &header_map(&[("x-tenant", "eu2")])));
        assert!(!m.matches(&Method::GET, "/", None, &header_map(&[("x-other", "eu")])));
        assert!(!m.matches(&Method::GET, "/", None, &none));

        // All conditions must hold at once.
        let m = Match {
            path_prefix: "/v1".to_owned(),
            methods: Some(vec![Method::POST]),
            host: Some("shop.example".to_owned()),
            headers: vec![(
                HeaderName::from_static("x-tenant"),
                HeaderValue::from_static("eu"),
            )],
        };
        let eu = header_map(&[("x-tenant", "eu")]);
        assert!(m.matches(&Method::POST, "/v1/charges", Some("shop.example"), &eu));
        assert!(!m.matches(&Method::POST, "/v2/charges", Some("shop.example"), &eu));
        assert!(!m.matches(&Method::GET, "/v1/charges", Some("shop.example"), &eu));
        assert!(!m.matches(&Method::POST, "/v1/charges", Some("x.example"), &eu));
        assert!(!m.matches(&Method::POST, "/v1/charges", Some("shop.example"), &none));
    }

    #[test]
    fn only_standard_methods_chunked_framing_and_one_host_are_forwarded() {
        use crate::error::ErrorKind;
        use http::Version;
        let host = header_map(&[("host", "shop.local")]);
        let kind = |m: &str, v: Version, h: &HeaderMap| {
            admissible(&Method::from_bytes(m.as_bytes()).unwrap(), v, h).map_err(|e| e.kind())
        };
        for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
            assert_eq!(kind(m, Version::HTTP_11, &host), Ok(()), "{m}");
        }
        for m in ["TRACE", "CONNECT", "FOO", "post"] {
            assert_eq!(
                kind(m, Version::HTTP_11, &host),
                Err(ErrorKind::NotImplemented),
                "{m}"
            );
        }
        let chunked = header_map(&[("host", "s"), ("transfer-encoding", "chunked")]);
        assert_eq!(kind("POST", Version::HTTP_11, &chunked), Ok(()));
        for te in ["gzip, chunked", "gzip", "chunked, identity"] {
            let h = header_map(&[("host", "s"), ("transfer-encoding", te)]);
            assert_eq!(
                kind("POST", Version::HTTP_11, &h),
                Err(ErrorKind::NotImplemented),
                "{te}"
            );
        }
        let none = HeaderMap::new();
        assert_eq!(
            kind("GET", Version::HTTP_11, &none),
            Err(ErrorKind::BadRequest)
        );
        assert_eq!(
            kind("GET", Version::HTTP_2, &none),
            Ok(()),
            "h2 has :authority"
        );
        let two = header_map(&[("host", "a"), ("host", "b")]);
        assert_eq!(
            kind("GET", Version::HTTP_11, &two),
            Err(ErrorKind::BadRequest)
        );
        assert_eq!(
            kind("GET", Version::HTTP_2, &two),
            Err(ErrorKind::BadRequest)
        );
    }
}
