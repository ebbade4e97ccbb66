//! The last epoch of the fleet's Redis this sidecar saw, and the hold after a change.
//!
//! The epoch file (in the state dir) keeps it across restarts, with the end of a hold in progress
//! (wall-clock milliseconds: a restarted process has no other clock to compare with):
//!
//! ```text
//! epoch <32 hex digits>
//! held_until_ms <unix ms>
//! ```
//!
//! A file that cannot be read refuses start-up: running without it would miss a Redis that forgot
//! while this sidecar was down, and deleting it is the operator's informed choice.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::ConnectError;

/// The epoch seen and the hold after a change.
#[derive(Debug)]
pub(super) struct Epoch {
    file: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    seen: Option<String>,
    held_until: Option<Instant>,
}

/// An epoch that changed.
#[derive(Debug)]
pub(super) struct Change {
    /// The epoch seen before.
    pub(super) previous: String,
}

impl Epoch {
    /// The epoch last kept in `file`, if any.
    pub(super) fn load(file: Option<PathBuf>) -> Result<Self, ConnectError> {
        let mut state = State::default();
        if let Some(path) = &file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    state = parse(&text).ok_or_else(|| ConnectError::EpochFile {
                        path: path.clone(),
                        reason: "not an epoch file (delete it only if this Redis never lost data while the sidecar was down)".to_owned(),
                    })?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ConnectError::EpochFile {
                        path: path.clone(),
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(Self {
            file,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in the epoch Redis holds now (`created`: this check set it, there was none). A change
    /// from the one seen before starts a hold of `hold`. The first epoch a sidecar ever sees (no
    /// file) is taken as it is.
    pub(super) fn observe(&self, current: &str, created: bool, hold: Duration) -> Option<Change> {
        let mut state = self.lock();
        let change = match &state.seen {
            Some(seen) if seen != current => Some(Change {
                previous: seen.clone(),
            }),
            _ => None,
        };
        if created && state.seen.is_none() {
            tracing::info!(epoch = %current, "a new Redis for the fleet's payment state");
        }
        if change.is_some() {
            state.held_until = Some(Instant::now() + hold);
        }
        state.seen = Some(current.to_owned());
        change
    }

    /// What is left of the hold, if one runs.
    pub(super) fn held(&self) -> Option<Duration> {
        let state = self.lock();
        let left = state.held_until?.checked_duration_since(Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    /// Writes the epoch and the hold to the file (a new file renamed over the old one).
    pub(super) async fn persist(&self) -> std::io::Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let text = {
            let state = self.lock();
            let Some(seen) = &state.seen else {
                return Ok(());
            };
            let mut text = format!("epoch {seen}\n");
            if let Some(left) = state
                .held_until
                .and_then(|u| u.checked_duration_since(Instant::now()))
            {
                let until = SystemTime::now() + left;
                let ms = until
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0);
                text.push_str(&format!("held_until_ms {ms}\n"));
            }
            text
        };
        if tokio::fs::read_to_string(path).await.ok().as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        let tmp = path.with_extension("tmp");
        tokio::fs::write(&tmp, text.as_bytes()).await?;
        tokio::fs::rename(&tmp, path).await
    }
}

fn parse(text: &str) -> Option<State> {
    let mut state = State::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (name, value) = line.split_once(' ')?;
        match name {
            "epoch" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_hexdigit()) => {
                state.seen = Some(value.to_owned())
            }
            "held_until_ms" => {
                let until = UNIX_EPOCH + Duration::from_millis(value.parse().ok()?);
                if let Ok(left) = until.duration_since(SystemTime::now()) {
                    state.held_until = Some(Instant::now() + left);
                }
            }
            _ => return None,
        }
    }
    state.seen.is_some().then_some(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_epoch_starts_a_hold_and_the_first_one_does_not() {
        let e = Epoch::load(None).unwrap();
        let hold = Duration::from_secs(600);
        assert!(
            e.observe("aa", true, hold).is_none(),
            "the first epoch seen"
        );
        assert!(e.held().is_none());
        assert!(e.observe("aa", false, hold).is_none());
        let change = e.observe("bb", true, hold).unwrap();
        assert_eq!(change.previous, "aa");
        assert!(e.held().unwrap() > Duration::from_secs(590));
    }

    #[tokio::test]
    async fn the_epoch_and_the_hold_survive_a_restart_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("redis.epoch");
        let e = Epoch::load(Some(path.clone())).unwrap();
        e.observe("aa", true, Duration::from_secs(600));
        e.persist().await.unwrap();
        let again = Epoch::load(Some(path.clone())).unwrap();
        assert!(again
            .observe("aa", false, Duration::from_secs(600))
            .is_none());
        assert!(
            again
                .observe("cc", true, Duration::from_secs(600))
                .is_some(),
            "lost while down"
        );
        again.persist().await.unwrap();
        let third = Epoch::load(Some(path.clone())).unwrap();
        let left = third.held().expect("the hold goes on after a restart");
        assert!(
            left > Duration::from_secs(590) && left <= Duration::from_secs(600),
            "{left:?}"
        );
        std::fs::write(&path, "garbage").unwrap();
        assert!(matches!(
            Epoch::load(Some(path)),
            Err(ConnectError::EpochFile { .. })
        ));
    }
}
