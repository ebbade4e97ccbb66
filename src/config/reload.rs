//! Hot reload: watches the config file, and swaps in a new generation when it changed and loads.
//!
//! A reload parses and validates on a blocking thread, then builds the next [`Generation`] from the
//! running one (state that must survive a reload is carried over by name) and swaps it in whole. A file
//! that does not load never replaces a good one. Listeners are never rebound: a change that needs a
//! restart is reported, not applied.
//!
//! The folder is watched rather than the file, because editors and config-management tools replace a
//! file by renaming a new one over it, which ends a watch on the old inode. Events are coalesced: a
//! burst of writes yields one signal, and the consumer reloads once.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{ConfigError, SecretSource, Snapshot};
use crate::admin::{Reload, ReloadStatus};
use crate::generation::{Current, Generation};
use crate::layers::BoxFuture;
use crate::metrics::Metrics;

/// Keeps the watch alive; dropping it stops the watch.
pub struct FileWatch {
    _watcher: RecommendedWatcher,
}

/// How long to wait for a burst of file events to settle before reloading.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Starts watching `file`. Each change (write, create, rename onto it) sends `()` on the returned channel.
pub fn watch(file: &Path) -> notify::Result<(FileWatch, mpsc::Receiver<()>)> {
    let (tx, rx) = mpsc::channel(1);
    let file: PathBuf = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = file.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if event.kind.is_access() {
            return;
        }
        let ours = event
            .paths
            .iter()
            .any(|p| p.file_name().map(|n| n.to_os_string()) == name);
        if ours {
            // A full channel already holds a pending signal: this change is covered by it.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok((FileWatch { _watcher: watcher }, rx))
}

/// Reads, parses and validates `path` on a blocking thread, so that a large or slow file never stalls
/// the threads serving requests. Returns the snapshot and the file's text (for the digest).
pub async fn load_file_off_thread(
    path: &Path,
    secrets: Arc<dyn SecretSource>,
) -> Result<(Snapshot, String), ConfigError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || super::load_file(&path, &*secrets))
        .await
        .map_err(|e| ConfigError::Aborted(e.to_string()))?
}

/// Reloads the file: parse and validate (on a blocking thread), build the next generation, swap.
/// Reloads run one at a time; a file that does not load leaves the running generation serving.
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    secrets: Arc<dyn SecretSource>,
    current: Current,
    metrics: Metrics,
    status: Arc<Mutex<ReloadStatus>>,
    lock: tokio::sync::Mutex<()>,
    checks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Reloader {
    /// A reloader of `path` into `current`; `status` is what the admin API shows of the last reload.
    pub fn new(
        path: PathBuf,
        secrets: Arc<dyn SecretSource>,
        current: Current,
        metrics: Metrics,
        status: Arc<Mutex<ReloadStatus>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                path,
                secrets,
                current,
                metrics,
                status,
                lock: tokio::sync::Mutex::new(()),
                checks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Runs active health checks for the providers of `generation` that some route uses and that
    /// have checks configured; stops every check of the previous generation.
    pub fn restart_checks(&self, generation: &Generation) {
        self.inner.restart_checks(generation);
    }

    /// Stops every active health check (on shutdown).
    pub fn stop_checks(&self) {
        self.inner.stop_checks();
    }
}

impl Reload for Reloader {
    fn reload(&self) -> BoxFuture<Result<u64, String>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { inner.reload().await })
    }
}

impl Inner {
    async fn reload(&self) -> Result<u64, String> {
        let _guard = self.lock.lock().await;
        let old = self.current.load_full();
        let attempt = match load_file_off_thread(&self.path, Arc::clone(&self.secrets)).await {
            Ok((mut snapshot, text)) => {
                let state_note = keep_state(&old.snapshot, &mut snapshot);
                Generation::build(
                    snapshot,
                    &text,
                    Some(&old),
                    &old.state,
                    &self.metrics,
                    Instant::now(),
                )
                .map(|next| (next, state_note))
                .map_err(|problems| ConfigError::Invalid(problems).to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        status.last_attempt_at = Some(SystemTime::now());
        match attempt {
            Err(error) => {
                self.metrics
                    .config_reloads_total
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(path = %self.path.display(), %error, "config reload rejected; the previous config keeps serving");
                status.last_error = Some(error.clone());
                self.metrics.config_last_reload_successful.set(0);
                Err(error)
            }
            Ok((next, state_note)) => {
                let number = next.number;
                status.restart_required = restart_required(&old.snapshot, &next.snapshot);
                status.restart_required.extend(state_note);
                for change in &status.restart_required {
                    tracing::warn!(change = %change, "config change needs a restart to apply");
                }
                status.last_error = None;
                let next = Arc::new(next);
                self.current.store(Arc::clone(&next));
                self.metrics
                    .forget_names_not_in(&config_names(&next.snapshot));
                self.restart_checks(&next);
                self.metrics
                    .config_reloads_total
                    .with_label_values(&["success"])
                    .inc();
                self.metrics.config_generation.set(number as i64);
                self.metrics.config_last_reload_successful.set(1);
                self.metrics
                    .config_restart_required
                    .set(i64::from(!status.restart_required.is_empty()));
                self.metrics
                    .config_last_reload_success_timestamp_seconds
                    .set(unix_now());
                tracing::info!(generation = number, "config reloaded");
                Ok(number)
            }
        }
    }

    fn restart_checks(&self, generation: &Generation) {
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        for task in checks.drain(..) {
            task.abort();
        }
        let used: std::collections::HashSet<&str> = generation
            .snapshot
            .routes
            .iter()
            .flat_map(|r| r.targets.iter().map(|t| &*t.provider))
            .collect();
        for (name, provider) in &generation.snapshot.providers {
            let Some(cfg) = provider.health_check.clone() else {
                continue;
            };
            if !used.contains(&**name) {
                continue;
            }
            let (Some(upstream), Some(state)) =
                (generation.upstreams.get(name), generation.health.get(name))
            else {
                continue;
            };
            checks.push(tokio::spawn(crate::health::checks::run(
                Arc::clone(upstream),
                Arc::clone(state),
                cfg,
            )));
        }
    }

    fn stop_checks(&self) {
        let mut checks = self.checks.lock().unwrap_or_else(|p| p.into_inner());
        for task in checks.drain(..) {
            task.abort();
        }
    }
}

/// Seconds since the Unix epoch, for the reload timestamp metric.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What changed between `old` and `new` that a reload cannot apply: listeners are never rebound.
fn restart_required(old: &Snapshot, new: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    if old.listen != new.listen {
        out.push(format!(
            "listen changed from {} to {}; still listening on {}",
            old.listen, new.listen, old.listen
        ));
    }
    if old.admin.listen != new.admin.listen {
        out.push(format!(
            "admin.listen changed from {} to {}; still listening on {}",
            old.admin.listen, new.admin.listen, old.admin.listen
        ));
    }
    if old.max_header_bytes != new.max_header_bytes {
        out.push("max_header_bytes changed".to_owned());
    }
    if old.limits != new.limits {
        out.push("the limits section changed".to_owned());
    }
    if old.audit != new.audit {
        out.push("the audit section changed".to_owned());
    }
    if old.webhook_listeners() != new.webhook_listeners() {
        out.push("the webhook listen addresses changed".to_owned());
    }
    if old.sandbox != new.sandbox {
        out.push("the sandbox section changed".to_owned());
    }
    out
}

/// The payment-state store is opened once, at start-up: a reload keeps the running `state` section in
/// `new` (so nothing that reads the snapshot acts on settings the store was not opened with) and says
/// so when the file asks for another one, on every reload until a restart. Never the URL in the note:
/// it may hold a password.
fn keep_state(old: &Snapshot, new: &mut Snapshot) -> Option<String> {
    if old.state == new.state {
        return None;
    }
    new.state = old.state.clone();
    Some(format!(
        "the state section changed; still using the {} store it started with",
        old.state.backend.as_str()
    ))
}

/// The route, provider and webhook names `snapshot` defines: the metric series of any other go.
fn config_names(snapshot: &Snapshot) -> crate::metrics::ConfigNames<'_> {
    crate::metrics::ConfigNames {
        routes: snapshot.routes.iter().map(|r| &*r.name).collect(),
        providers: snapshot.providers.keys().map(|p| &**p).collect(),
        webhooks: snapshot.webhooks.iter().map(|w| &*w.name).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MapSecrets, StateBackend};

    fn snapshot(top: &str) -> Snapshot {
        let text = format!(
            "providers:\n  psp: {{ url: https://api.psp.example }}\nroutes:\n  - name: pay\n    targets: [{{ provider: psp }}]\n{top}"
        );
        let secrets = MapSecrets::new().with("REDIS_URL", "redis://:hunter2@10.0.0.5:6379/0");
        match crate::config::load(&text, Path::new("/etc/switchyard"), &secrets) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_changed_state_section_is_kept_as_it_was_and_reported_on_every_reload() {
        let running = snapshot("");
        let mut next = snapshot("state:\n  backend: redis\n  redis: { url_env: REDIS_URL }\n");
        let note = keep_state(&running, &mut next);
        let note = note.unwrap_or_default();
        assert!(note.contains("state section changed"), "{note}");
        assert!(note.contains("local"), "{note}");
        assert!(
            !note.contains("hunter2") && !note.contains("10.0.0.5"),
            "{note}"
        );
        assert_eq!(next.state, running.state);
        assert_eq!(next.state.backend, StateBackend::Local);

        // The next reload of the same file compares with what runs, so it is reported again.
        let mut again = snapshot("state:\n  backend: redis\n  redis: { url_env: REDIS_URL }\n");
        assert!(keep_state(&next, &mut again).is_some());

        // A folder change counts; an unchanged section is no note, and a reload back to it none either.
        let mut moved = snapshot("state: { dir: /var/lib/switchyard }\n");
        assert!(keep_state(&running, &mut moved).is_some());
        let mut same = snapshot("state: { backend: local, dir: state }\n");
        assert_eq!(keep_state(&running, &mut same), None);
    }
}
