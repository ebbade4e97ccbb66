//! `providers.NAME.quota:` — the provider account's own rate limit.

use std::time::Duration;

use super::Validator;
use crate::config::model::Quota;
use crate::config::schema;

impl Validator<'_> {
    pub(super) fn quota(&mut self, path: &str, q: schema::RawQuota) -> Quota {
        let rps = self.count(format!("{path}.rps"), Some(q.rps), 1, 1);
        Quota {
            rps,
            burst: self.count(format!("{path}.burst"), q.burst, rps, 1),
            max_wait: self.duration_or_zero(
                &format!("{path}.max_wait"),
                q.max_wait.as_deref(),
                Duration::from_millis(50),
            ),
        }
    }
}
