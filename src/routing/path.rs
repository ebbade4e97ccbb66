//! The shop's request path, normalised before any route matches it.
//!
//! A route's `path_prefix` is a promise about which provider endpoints the shop may reach with the
//! credential the route injects. `/v1/refunds/../payouts` has the prefix `/v1/refunds` as text, but a
//! provider (or the proxy in front of it) resolves it to `/v1/payouts`. So the path is resolved first
//! (RFC 3986 §5.2.4 `remove_dot_segments`), matched and forwarded in that form only, and the encoded
//! forms that different servers decode differently — a dot segment written `%2e`, a slash written
//! `%2f`, a backslash `%5c` — are refused rather than guessed at.

use std::borrow::Cow;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A segment that percent-decodes to `.` or `..`.
    #[error("the path has an encoded dot segment (%2e)")]
    EncodedDotSegment,
    /// `%2f` or `%5c` in the path: a separator the provider may decode.
    #[error("the path has an encoded slash or backslash (%2f, %5c)")]
    EncodedSeparator,
}

/// The path with its dot segments removed, or why it is refused. A path with nothing to resolve is
/// returned as it is, borrowed.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path.contains('%') {
        check_encoded(path)?;
    }
    if !has_dot_segment(path) {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(remove_dot_segments(path)))
}

fn check_encoded(path: &str) -> Result<(), PathError> {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err(PathError::EncodedSeparator);
    }
    for segment in lower.split('/') {
        if segment.contains("%2e") {
            let decoded = segment.replace("%2e", ".");
            if decoded == "." || decoded == ".." {
                return Err(PathError::EncodedDotSegment);
            }
        }
    }
    Ok(())
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

/// RFC 3986 §5.2.4, by segments: `.` is dropped, `..` drops the segment before it (never above the
/// root), and a path ending in a dot segment keeps its trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let absolute = path.starts_with('/');
    let body = if absolute { &path[1..] } else { path };
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    let segments: Vec<&str> = body.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(path.len());
    if absolute {
        result.push('/');
    }
    result.push_str(&out.join("/"));
    if trailing_slash && !result.ends_with('/') {
        result.push('/');
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_resolved_as_rfc_3986_says() {
        for (input, want) in [
            ("/v1/refunds", "/v1/refunds"),
            ("/v1/refunds/../payouts", "/v1/payouts"),
            ("/v1/refunds/./re_1", "/v1/refunds/re_1"),
            ("/v1/refunds/re_1/..", "/v1/refunds/"),
            ("/v1/refunds/.", "/v1/refunds/"),
            ("/../../etc", "/etc"),
            ("/..", "/"),
            ("/a/b/c/./../../g", "/a/g"),
            ("/v1//x/../y", "/v1//y"),
            ("/v1/..foo/.bar", "/v1/..foo/.bar"),
            ("/", "/"),
        ] {
            assert_eq!(normalize(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn a_path_with_nothing_to_resolve_is_borrowed() {
        assert!(matches!(
            normalize("/v1/payment_intents/pi_1/capture"),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(normalize("/v1/a%20b"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn encoded_dots_and_separators_are_refused() {
        for (input, want) in [
            ("/v1/refunds/%2e%2e/payouts", PathError::EncodedDotSegment),
            ("/v1/refunds/%2E%2e/payouts", PathError::EncodedDotSegment),
            ("/v1/refunds/.%2e/payouts", PathError::EncodedDotSegment),
            ("/v1/refunds/%2e/payouts", PathError::EncodedDotSegment),
            ("/v1/refunds%2f..%2fpayouts", PathError::EncodedSeparator),
            ("/v1/refunds/..%2Fpayouts", PathError::EncodedSeparator),
            ("/v1/refunds/..%5cpayouts", PathError::EncodedSeparator),
        ] {
            assert_eq!(normalize(input), Err(want), "{input}");
        }
        // An encoded dot inside a name is just a name.
        assert_eq!(
            normalize("/v1/files/a%2ejson").unwrap(),
            "/v1/files/a%2ejson"
        );
    }
}
