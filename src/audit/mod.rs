//! The audit trail: one JSON line per shop request, per provider attempt and per webhook, in one file per
//! UTC day, with card data and secrets removed (`PAYMENT_RULES.md` §6). It is what a shop shows when a
//! dispute comes: what was sent to and answered by which provider, when, and why that provider.
//!
//! Guarantees:
//! - **Never blocks a payment.** [`Audit::record`] puts the record on a bounded queue and returns; a
//!   writer thread redacts and writes. When the queue is full the record is dropped and counted in
//!   `switchyard_audit_dropped_total` (so is a record the disk refused), never silently lost.
//! - **No secrets in files.** Records have no header fields at all; paths, keys and ids lose card
//!   numbers; bodies are kept only with `bodies: redacted`, cut to `max_body`, with sensitive fields
//!   masked ([`crate::redact::redact_body`]).
//! - **Rotation and retention** follow the record timestamps and an injectable [`Clock`]: a record goes
//!   to the file of its UTC day; files whose day ended longer than `retention` ago are deleted (at start,
//!   at each new day, and hourly).
//! - **Flushed on shutdown**: [`Audit::close`] writes everything queued and syncs the file.
//!
//! # For layers that write records
//! The [`Audit`] handle is in every shop request's extensions (a disabled one when `audit:` is not
//! configured), put there by the audit layer, which also writes the [`ShopRequestRecord`]s:
//!
//! ```ignore
//! let audit = req.extensions().get::<Audit>().cloned().unwrap_or_default();
//! let started = audit.now();
//! // ... send the attempt ...
//! audit.record(AttemptRecord {
//!     timestamp: started,
//!     request_id, route, provider, attempt: 1, reason: AttemptReason::Primary,
//!     method, path, status: Some(200), outcome: AttemptOutcome::Processed, latency,
//!     idempotency_key, provider_request_id: audit::provider_request_id(resp.headers()),
//!     replayed: false,
//!     request_body: audit.keeps_bodies().then(|| RecordedBody::new(&headers, body.clone())),
//!     response_body: None, // or see `Audit::record_when_body_ends`
//! });
//! ```

mod capture;
pub mod clock;
mod record;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::SystemTime;

use http_body_util::BodyExt;
use prometheus::IntCounter;

pub use capture::{Capture, CaptureSlot, Captured};
pub use clock::{Clock, ManualClock, SystemClock};
pub use record::{
    content_type, provider_request_id, AttemptEnd, AttemptOutcome, AttemptReason, AttemptRecord,
    AttemptStart, Record, RecordedBody, ShopRequestRecord, WebhookRecord,
};
pub use writer::file_name;

use crate::body::ProxyBody;
use crate::config::validate::{AuditBodies, AuditConfig};
use crate::metrics::Metrics;
use record::Redaction;
use writer::{Msg, Writer};

/// A cheap-to-clone handle on the audit trail. Recording never blocks; a disabled handle (no `audit:`
/// section) records nothing.
#[derive(Clone, Default)]
pub struct Audit {
    inner: Option<Arc<Shared>>,
}

struct Shared {
    tx: SyncSender<Msg>,
    bodies: AuditBodies,
    max_body: usize,
    clock: Arc<dyn Clock>,
    dropped: IntCounter,
    closed: AtomicBool,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

/// A writer that is built but not running yet; see [`Audit::paused`].
pub struct PausedWriter(Writer);

impl PausedWriter {
    /// Starts writing on a thread of its own.
    pub fn start(self) -> std::io::Result<()> {
        let writer = self.0;
        std::thread::Builder::new()
            .name("switchyard-audit".into())
            .spawn(move || writer.run())
            .map(|_| ())
    }
}

impl Audit {
    /// A handle that records nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Creates `config.dir` if needed and starts the writer thread.
    pub fn start(
        config: &AuditConfig,
        metrics: &Metrics,
        clock: Arc<dyn Clock>,
    ) -> std::io::Result<Self> {
        let (audit, writer) = Self::paused(config, metrics, clock)?;
        writer.start()?;
        Ok(audit)
    }

    /// Like [`Audit::start`], but the writer runs only once [`PausedWriter::start`] is called: records
    /// queue up (and past `config.queue`, are dropped). For tests of the queue.
    pub fn paused(
        config: &AuditConfig,
        metrics: &Metrics,
        clock: Arc<dyn Clock>,
    ) -> std::io::Result<(Self, PausedWriter)> {
        create_dir(&config.dir)?;
        let (tx, rx) = sync_channel(config.queue);
        let redaction = Redaction {
            bodies: config.bodies,
            max_body: config.max_body,
        };
        let writer = Writer::new(
            config.dir.clone(),
            config.retention,
            redaction,
            Arc::clone(&clock),
            metrics.audit_records_total.clone(),
            metrics.audit_dropped_total.clone(),
            rx,
        );
        let shared = Shared {
            tx,
            bodies: config.bodies,
            max_body: config.max_body,
            clock,
            dropped: metrics.audit_dropped_total.clone(),
            closed: AtomicBool::new(false),
        };
        Ok((
            Self {
                inner: Some(Arc::new(shared)),
            },
            PausedWriter(writer),
        ))
    }

    /// Whether records are written at all.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Whether records keep bodies (`bodies: redacted`): callers attach bodies only then.
    pub fn keeps_bodies(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|s| s.bodies == AuditBodies::Redacted)
    }

    /// Most bytes of one body that are kept (more are cut by the writer).
    pub fn max_body(&self) -> usize {
        self.inner.as_ref().map_or(0, |s| s.max_body)
    }

    /// The audit clock's time: use it for record timestamps.
    pub fn now(&self) -> SystemTime {
        self.inner
            .as_ref()
            .map_or_else(SystemTime::now, |s| s.clock.now())
    }

    /// Queues `record` for writing. Never blocks: when the queue is full (or the trail is closed) the
    /// record is dropped and counted in `switchyard_audit_dropped_total`.
    pub fn record(&self, record: impl Into<Record>) {
        let Some(shared) = &self.inner else { return };
        if shared.closed.load(Ordering::Acquire) {
            shared.dropped.inc();
            return;
        }
        match shared.tx.try_send(Msg::Record(Box::new(record.into()))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                shared.dropped.inc();
                tracing::warn!("audit queue full: a record was dropped");
            }
            Err(TrySendError::Disconnected(_)) => {
                shared.dropped.inc();
                tracing::error!("audit writer stopped: a record was dropped");
            }
        }
    }

    /// Wraps a response `body` so that, once it has ended (or was dropped), `finish` gets what passed
    /// through (at most [`Audit::max_body`] bytes, with the content type `content_type`) and returns the
    /// record to write. Without `bodies: redacted`, `finish` gets `None` right away and the body is
    /// returned untouched.
    pub fn record_when_body_ends(
        &self,
        body: ProxyBody,
        content_type: Option<String>,
        finish: impl FnOnce(Option<RecordedBody>) -> Record + Send + 'static,
    ) -> ProxyBody {
        if !self.keeps_bodies() {
            if self.is_enabled() {
                self.record(finish(None));
            }
            return body;
        }
        let slot = Captured::slot(content_type, self.max_body());
        let audit = self.clone();
        let seen = Arc::clone(&slot);
        let on_end = Box::new(move || audit.record(finish(Some(Captured::take(&seen)))));
        Capture::new(body, Some(slot), Some(on_end)).boxed_unsync()
    }

    /// Waits until every record queued before this call is written and the file flushed.
    pub async fn flush(&self) {
        self.control(Msg::Flush).await;
    }

    /// Writes everything queued, syncs the file and stops the writer. Records after this are dropped
    /// (and counted).
    pub async fn close(&self) {
        if let Some(shared) = &self.inner {
            shared.closed.store(true, Ordering::Release);
        }
        self.control(Msg::Close).await;
    }

    async fn control(&self, msg: fn(tokio::sync::oneshot::Sender<()>) -> Msg) {
        let Some(shared) = &self.inner else { return };
        let (ack, done) = tokio::sync::oneshot::channel();
        let tx = shared.tx.clone();
        // A control message waits for room in a full queue instead of being dropped; that wait must not
        // hold a runtime thread.
        let sent = tokio::task::spawn_blocking(move || tx.send(msg(ack)).is_ok()).await;
        if matches!(sent, Ok(true)) {
            let _ = done.await;
        }
    }
}

fn create_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn config(dir: &Path, bodies: AuditBodies, queue: usize) -> AuditConfig {
        AuditConfig {
            dir: dir.to_path_buf(),
            retention: Duration::from_secs(2 * 86_400),
            bodies,
            max_body: 1024,
            queue,
        }
    }

    fn webhook(ts: SystemTime, id: &str) -> WebhookRecord {
        WebhookRecord {
            timestamp: ts,
            request_id: id.into(),
            webhook: Arc::from("hook"),
            scheme: "stripe",
            result: "forwarded",
            verified: true,
            event_id: Some("evt_1".into()),
            dedupe: Some("new"),
            shop_status: Some(200),
            latency: Duration::from_millis(3),
            body: None,
        }
    }

    fn lines(dir: &Path, day: &str) -> Vec<serde_json::Value> {
        let text =
            std::fs::read_to_string(dir.join(format!("audit-{day}.jsonl"))).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_disabled_handle_records_nothing() {
        let a = Audit::disabled();
        assert!(!a.is_enabled());
        assert!(!a.keeps_bodies());
        a.record(webhook(SystemTime::now(), "x"));
        a.flush().await;
        a.close().await;
    }

    #[tokio::test]
    async fn records_go_to_the_file_of_their_utc_day_and_old_files_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        // 2024-01-01 23:59:59 UTC.
        let clock = Arc::new(ManualClock::at_unix(1_704_153_599));
        let audit = Audit::start(
            &config(dir.path(), AuditBodies::None, 100),
            &metrics,
            Arc::clone(&clock) as Arc<dyn Clock>,
        )
        .unwrap();
        audit.record(webhook(audit.now(), "before-midnight"));
        clock.advance(Duration::from_secs(2));
        audit.record(webhook(audit.now(), "after-midnight"));
        audit.flush().await;
        let ids = |day| -> Vec<String> {
            lines(dir.path(), day)
                .iter()
                .map(|v| v["request_id"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(ids("2024-01-01"), ["before-midnight"]);
        assert_eq!(ids("2024-01-02"), ["after-midnight"]);
        assert_eq!(
            lines(dir.path(), "2024-01-02")[0]["ts"],
            "2024-01-02T00:00:01.000Z"
        );

        // A file that is not ours is never touched.
        std::fs::write(dir.path().join("notes.txt"), "keep").unwrap();
        // At 2024-01-04 12:00 with a retention of two days: 2024-01-01 (ended 2.5 days ago) goes,
        // 2024-01-02 (ended 1.5 days ago) stays.
        clock.set(UNIX_EPOCH + Duration::from_secs(1_704_153_600 + 2 * 86_400 + 43_200));
        audit.record(webhook(audit.now(), "later"));
        audit.flush().await;
        assert!(!dir.path().join("audit-2024-01-01.jsonl").exists());
        assert!(dir.path().join("audit-2024-01-02.jsonl").exists());
        assert!(dir.path().join("audit-2024-01-04.jsonl").exists());
        assert!(dir.path().join("notes.txt").exists());
        audit.close().await;
        assert_eq!(metrics.audit_records_total.get(), 3);
        assert_eq!(metrics.audit_dropped_total.get(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let (audit, writer) = Audit::paused(
            &config(dir.path(), AuditBodies::None, 2),
            &metrics,
            Arc::new(SystemClock),
        )
        .unwrap();
        let started = std::time::Instant::now();
        for i in 0..5 {
            audit.record(webhook(SystemTime::now(), &format!("r{i}")));
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "record never waits"
        );
        assert_eq!(metrics.audit_dropped_total.get(), 3);
        writer.start().unwrap();
        audit.close().await;
        assert_eq!(metrics.audit_records_total.get(), 2);
        // After close, records are dropped and counted too.
        audit.record(webhook(SystemTime::now(), "late"));
        assert_eq!(metrics.audit_dropped_total.get(), 4);
    }
}
