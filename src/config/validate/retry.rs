//! `routes[].retry:` — attempts, backoff, retry budget and the provider hint caps.

use super::Validator;
use crate::config::model::Retry;
use crate::config::schema;

impl Validator<'_> {
    pub(super) fn retry(&mut self, path: &str, raw: Option<schema::RawRetry>) -> Retry {
        let d = Retry::default();
        let Some(r) = raw else { return d };
        let attempts = self.count(format!("{path}.attempts"), r.attempts, d.attempts, 1);
        if attempts > 10 {
            self.problem(format!("{path}.attempts"), "must be at most 10");
        }
        let backoff = self.duration(&format!("{path}.backoff"), r.backoff.as_deref(), d.backoff);
        let max_backoff = self.duration(
            &format!("{path}.max_backoff"),
            r.max_backoff.as_deref(),
            d.max_backoff.max(backoff),
        );
        if max_backoff < backoff {
            self.problem(format!("{path}.max_backoff"), "must be at least backoff");
        }
        Retry {
            attempts: attempts.min(10),
            backoff,
            max_backoff,
            budget: self.ratio(format!("{path}.budget"), r.budget, d.budget, 10.0),
            min_retries_per_second: r.min_retries_per_second.unwrap_or(d.min_retries_per_second),
            retry_after_cap: self.duration_or_zero(
                &format!("{path}.retry_after_cap"),
                r.retry_after_cap.as_deref(),
                d.retry_after_cap,
            ),
            pinned_wait: self.duration_or_zero(
                &format!("{path}.pinned_wait"),
                r.pinned_wait.as_deref(),
                d.pinned_wait,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::*;

    #[test]
    fn pinned_wait_defaults_to_5s_and_0s_turns_it_off() {
        assert_eq!(
            valid(&config("", "", "")).routes[0].retry.pinned_wait,
            Duration::from_secs(5)
        );
        let s = valid(&config("", "    retry: { pinned_wait: 0s }\n", ""));
        assert_eq!(s.routes[0].retry.pinned_wait, Duration::ZERO);
        let text = config("", "    retry:\n      pinned_wait: soon\n", "");
        assert_problem(
            &only_problem(&text),
            "routes[0].retry.pinned_wait",
            &text,
            "pinned_wait",
            "duration",
        );
    }
}
