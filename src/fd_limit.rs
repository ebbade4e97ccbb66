//! The open-file limit (RLIMIT_NOFILE) against the connections the config allows.
//!
//! Every connection is a file descriptor, and so is every provider connection, the state store's
//! files and the listeners. A sidecar whose soft limit is below `limits.max_connections` runs out of
//! descriptors before its own limit turns connections away: accept fails, and the admin listener
//! (probes) with it. At start-up the soft limit is raised to the hard limit when it is lower (any
//! process may do that), and a warning names the limit when it is still too low.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Descriptors kept for what is not a shop or webhook connection: listeners, provider pools, the
/// state store, the audit files, admin connections, log output.
pub const HEADROOM: u64 = 256;

/// What to do about the limit, decided from the soft and hard limits (`None`: unlimited) and the
/// descriptors the config needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Raise the soft limit to this first (the hard limit), when it is lower.
    pub raise_to: Option<u64>,
    /// The limit that will hold once raised, when it is below `needed`: warn.
    pub short: Option<u64>,
    /// Descriptors the config needs: `max_connections` plus [`HEADROOM`].
    pub needed: u64,
}

/// Decides, with no I/O, from the current soft and hard limits (`None`: unlimited).
pub fn plan(soft: Option<u64>, hard: Option<u64>, max_connections: usize) -> Plan {
    let needed = (max_connections as u64).saturating_add(HEADROOM);
    let raise_to = match (soft, hard) {
        (Some(s), Some(h)) if s < h => Some(h),
        (Some(_), None) => Some(u64::MAX),
        _ => None,
    };
    let effective = match raise_to {
        Some(u64::MAX) => None,
        Some(h) => Some(h),
        None => soft,
    };
    Plan {
        raise_to,
        short: effective.filter(|&limit| limit < needed),
        needed,
    }
}

/// Raises the soft limit to the hard limit when it is lower, and warns when the limit is below
/// `max_connections` + [`HEADROOM`]. Returns the plan that was followed (for the caller's logs).
pub fn check(max_connections: usize) -> Plan {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let mut decided = plan(current, maximum, max_connections);
    if let Some(to) = decided.raise_to {
        let limit = Rlimit {
            current: (to != u64::MAX).then_some(to),
            maximum,
        };
        match setrlimit(Resource::Nofile, limit) {
            Ok(()) => tracing::info!(
                from = ?current,
                to = ?maximum,
                "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)");
                decided = plan(current, current, max_connections);
            }
        }
    }
    if let Some(limit) = decided.short {
        tracing::warn!(
            limit,
            needed = decided.needed,
            max_connections,
            "the open-file limit (RLIMIT_NOFILE, {limit}) is below limits.max_connections + {HEADROOM}: \
             connections will fail to be accepted before limits.max_connections turns them away; \
             raise it (ulimit -n, LimitNOFILE= in systemd) or lower limits.max_connections"
        );
    }
    decided
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_to_the_hard_limit_and_warns_only_when_still_short() {
        // The usual desktop case: soft 1024, hard 524288: raise, then enough.
        assert_eq!(
            plan(Some(1024), Some(524_288), 4096),
            Plan {
                raise_to: Some(524_288),
                short: None,
                needed: 4096 + HEADROOM
            }
        );
        // A container with 2048 for both: nothing to raise, short.
        assert_eq!(
            plan(Some(2048), Some(2048), 4096),
            Plan {
                raise_to: None,
                short: Some(2048),
                needed: 4096 + HEADROOM
            }
        );
        // Raised, and the hard limit is still short.
        assert_eq!(plan(Some(1024), Some(4000), 4096).short, Some(4000));
        // Exactly enough is enough; one less is not.
        assert_eq!(plan(Some(4352), Some(4352), 4096).short, None);
        assert_eq!(plan(Some(4351), Some(4351), 4096).short, Some(4351));
        // Unlimited.
        assert_eq!(
            plan(None, None, 4096),
            Plan {
                raise_to: None,
                short: None,
                needed: 4096 + HEADROOM
            }
        );
        assert_eq!(plan(Some(1024), None, 4096).raise_to, Some(u64::MAX));
        assert_eq!(plan(Some(1024), None, 4096).short, None);
    }
}
