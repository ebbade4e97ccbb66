//! `routes[N].errors`: the dialect of the answers the proxy makes itself on a route, so that a shop's
//! official provider SDK reads them as its own typed errors (Stripe's `{"error": {...}}`, Adyen's
//! `{status, errorCode, message, errorType}`) instead of an unreadable body.

use super::Validator;
use crate::config::model::ErrorDialect;

impl Validator<'_> {
    /// Reads `errors` at `path`; absent is `problem`.
    pub(super) fn error_dialect(&mut self, path: &str, raw: Option<&str>) -> ErrorDialect {
        match raw {
            None | Some("problem") => ErrorDialect::Problem,
            Some("stripe") => ErrorDialect::Stripe,
            Some("adyen") => ErrorDialect::Adyen,
            Some(other) => {
                self.problem(
                    path,
                    format!("\"{other}\" is not an error dialect: use problem, stripe or adyen"),
                );
                ErrorDialect::Problem
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::model::ErrorDialect;
    use crate::config::{load, ConfigError, PlaceholderSecrets};

    fn route_with(errors: &str) -> String {
        format!(
            "providers:\n  psp: {{ url: http://127.0.0.1:9101 }}\nroutes:\n  - name: payments\n    match: {{ path_prefix: /v1/ }}\n    targets: [{{ provider: psp }}]\n{errors}"
        )
    }

    #[test]
    fn errors_defaults_to_problem_and_takes_stripe_or_adyen() {
        let dialect = |extra: &str| {
            load(&route_with(extra), Path::new("/"), &PlaceholderSecrets)
                .map(|s| s.routes[0].errors)
        };
        assert_eq!(dialect("").ok(), Some(ErrorDialect::Problem));
        assert_eq!(
            dialect("    errors: stripe\n").ok(),
            Some(ErrorDialect::Stripe)
        );
        assert_eq!(
            dialect("    errors: adyen\n").ok(),
            Some(ErrorDialect::Adyen)
        );
        assert_eq!(
            dialect("    errors: problem\n").ok(),
            Some(ErrorDialect::Problem)
        );
        match dialect("    errors: paypal\n") {
            Err(ConfigError::Invalid(problems)) => {
                assert_eq!(problems.len(), 1, "{problems:?}");
                assert_eq!(problems[0].path, "routes[0].errors");
                assert!(problems[0].message.contains("paypal"), "{problems:?}");
            }
            other => panic!("expected a problem, got {other:?}"),
        }
    }
}
