//! The audit trail: one JSON line per shop request, per provider attempt and per webhook, in one file per
//! UTC day, with card data and secrets removed (`PAYMENT_RULES.md` §6). It is what a shop shows when a
//! dispute comes: what was sent to and answered by which provider, when, and why that provider.
//!
//! Guarantees:
//! - **Never blocks a payment.** [`Audit::record`] puts the record on a bounded queue and returns; a
//!   writer thread redacts and writes. When the queue is full the record is dropped and counted in
//!   `switchyard_audit_dropped_total{reason}` (so is a record the disk refused), never silently lost.
//! - **Never fills the disk.** The files the writer owns stay under `max_bytes`: past it, records are
//!   dropped and counted (`reason="disk_budget"`) until retention frees room. Refused webhooks, which
//!   anyone can send at line rate, are recorded without their body (SHA-256 and size only) and at most
//!   [`limit::REFUSED_PER_SECOND`] per webhook and second; the rest become one counted summary record
//!   per second ([`limit`]).
//! - **No secrets in files.** Records have no header fields at all; paths, keys and ids lose card
//!   numbers; bodies are kept only with `bodies: redacted`, cut to `max_body`, with sensitive fields
//!   masked ([`crate::redact::redact_body`]).
//! - **Rotation and retention** follow the record timestamps and an injectable [`Clock`]: a record goes
//!   to the file of its UTC day; files whose day ended longer than `retention` ago are deleted (at start,
//!   at each new day, and hourly).
//! - **Flushed on shutdown**: [`Audit::close`] writes everything queued and syncs the file.
//!
//! # For layers that write records
//! The [`Audit`] handle is in every shop request's context ([`crate::ctx::RequestCtx`]; a disabled
//! one when `audit:` is not configured), put there by the audit layer, which also writes the
//! [`ShopRequestRecord`]s:
//!
//! ```ignore
//! let audit = req.ctx.audit.clone().unwrap_or_default(); // req: crate::ctx::Req<B>
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
pub mod limit;
mod record;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http_body_util::BodyExt;
use prometheus::IntCounterVec;

pub use capture::{Capture, CaptureSlot, Captured};
pub use clock::{Clock, ManualClock, SystemClock};
pub use record::{
    content_type, provider_request_id, AttemptEnd, AttemptOutcome, AttemptReason, AttemptRecord,
    AttemptStart, BodyDigest, Record, RecordedBody, ShopRequestRecord, SuppressedRecord,
    WebhookRecord,
};
pub use writer::file_name;

use crate::body::ProxyBody;
use crate::config::{AuditBodies, AuditConfig};
use crate::metrics::Metrics;
use limit::{RefusedLimit, REFUSED_PER_SECOND};
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
    dropped: IntCounterVec,
    refused: Arc<Mutex<RefusedLimit>>,
    closed: AtomicBool,
}

/// Why a record was not written: the `reason` label of `switchyard_audit_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The writer's queue was full.
    QueueFull,
    /// The trail was closed (shutdown) or its writer stopped.
    Closed,
    /// The file could not be written.
    WriteFailed,
    /// The files reached `audit.max_bytes`.
    DiskBudget,
    /// A refused webhook over its per-second record limit (counted in a summary record instead).
    RefusedWebhookLimit,
}

impl DropReason {
    /// Every reason, for zeroed series.
    pub const ALL: [DropReason; 5] = [
        Self::QueueFull,
        Self::Closed,
        Self::WriteFailed,
        Self::DiskBudget,
        Self::RefusedWebhookLimit,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::Closed => "closed",
            Self::WriteFailed => "write_failed",
            Self::DiskBudget => "disk_budget",
            Self::RefusedWebhookLimit => "refused_webhook_limit",
        }
    }

    pub(crate) fn count(self, dropped: &IntCounterVec) {
        dropped.with_label_values(&[self.as_str()]).inc();
    }
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
        let refused = Arc::new(Mutex::new(RefusedLimit::new(REFUSED_PER_SECOND)));
        let writer = Writer::new(
            config.dir.clone(),
            config.retention,
            config.max_bytes,
            redaction,
            Arc::clone(&clock),
            metrics.audit_records_total.clone(),
            metrics.audit_dropped_total.clone(),
            Arc::clone(&refused),
            rx,
        );
        let shared = Shared {
            tx,
            bodies: config.bodies,
            max_body: config.max_body,
            clock,
            dropped: metrics.audit_dropped_total.clone(),
            refused,
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
    /// record is dropped and counted in `switchyard_audit_dropped_total`. A refused webhook (one whose
    /// signature did not verify) over its webhook's per-second limit is counted for a summary record
    /// instead ([`limit`]).
    pub fn record(&self, record: impl Into<Record>) {
        let Some(shared) = &self.inner else { return };
        if shared.closed.load(Ordering::Acquire) {
            DropReason::Closed.count(&shared.dropped);
            return;
        }
        let record = record.into();
        if let Record::Webhook(w) = &record {
            if !w.verified {
                let mut refused = shared.refused.lock().unwrap_or_else(|p| p.into_inner());
                if !refused.admit(&w.webhook, w.timestamp) {
                    DropReason::RefusedWebhookLimit.count(&shared.dropped);
                    return;
                }
            }
        }
        match shared.tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                DropReason::QueueFull.count(&shared.dropped);
                tracing::warn!("audit queue full: a record was dropped");
            }
            Err(TrySendError::Disconnected(_)) => {
                DropReason::Closed.count(&shared.dropped);
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
            max_bytes: 10 << 30,
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
            body_digest: None,
        }
    }

    fn dropped(metrics: &Metrics, reason: DropReason) -> u64 {
        metrics
            .audit_dropped_total
            .with_label_values(&[reason.as_str()])
            .get()
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
        for reason in DropReason::ALL {
            assert_eq!(dropped(&metrics, reason), 0);
        }
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
        assert_eq!(dropped(&metrics, DropReason::QueueFull), 3);
        writer.start().unwrap();
        audit.close().await;
        assert_eq!(metrics.audit_records_total.get(), 2);
        // After close, records are dropped and counted too.
        audit.record(webhook(SystemTime::now(), "late"));
        assert_eq!(dropped(&metrics, DropReason::Closed), 1);
    }

    #[test]
    fn the_drop_reasons_are_the_metrics_zeroed_series() {
        let reasons: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(reasons, crate::metrics::AUDIT_DROP_REASONS);
    }

    #[tokio::test]
    async fn the_files_never_grow_past_max_bytes_and_what_is_over_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        // A file of an earlier day already holds 600 bytes of the 2000-byte budget.
        std::fs::write(dir.path().join("audit-2023-12-31.jsonl"), vec![b'x'; 600]).unwrap();
        let clock = Arc::new(ManualClock::at_unix(1_704_067_200));
        let mut c = config(dir.path(), AuditBodies::None, 1000);
        c.max_bytes = 2000;
        let audit = Audit::start(&c, &metrics, clock as Arc<dyn Clock>).unwrap();
        for i in 0..40 {
            audit.record(webhook(audit.now(), &format!("r{i}")));
        }
        audit.close().await;
        let total: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert!(total <= 2000, "{total} bytes on disk");
        let written = metrics.audit_records_total.get();
        assert!(written > 0 && written < 40, "{written}");
        assert_eq!(dropped(&metrics, DropReason::DiskBudget), 40 - written);
    }

    #[tokio::test]
    async fn refused_webhooks_are_limited_per_second_and_the_rest_summarised() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let clock = Arc::new(ManualClock::at_unix(1_704_067_200));
        let audit = Audit::start(
            &config(dir.path(), AuditBodies::Redacted, 1000),
            &metrics,
            Arc::clone(&clock) as Arc<dyn Clock>,
        )
        .unwrap();
        for i in 0..20 {
            let mut r = webhook(audit.now(), &format!("bad{i}"));
            r.verified = false;
            r.result = "bad_signature";
            audit.record(r);
        }
        // Verified webhooks are never limited.
        for i in 0..10 {
            audit.record(webhook(audit.now(), &format!("good{i}")));
        }
        audit.flush().await;
        let all = lines(dir.path(), "2024-01-01");
        let refused = all
            .iter()
            .filter(|v| v["result"] == "bad_signature")
            .count();
        assert_eq!(refused, limit::REFUSED_PER_SECOND as usize);
        assert_eq!(
            all.iter().filter(|v| v["result"] == "forwarded").count(),
            10
        );
        let summary: Vec<_> = all
            .iter()
            .filter(|v| v["type"] == "webhook_refused_suppressed")
            .collect();
        assert_eq!(summary.len(), 1, "{all:?}");
        assert_eq!(summary[0]["webhook"], "hook");
        assert_eq!(summary[0]["suppressed"], 15);
        assert_eq!(summary[0]["message"], "15 refused webhooks suppressed");
        assert_eq!(dropped(&metrics, DropReason::RefusedWebhookLimit), 15);
        // The next second admits again.
        clock.advance(Duration::from_secs(1));
        let mut r = webhook(audit.now(), "later");
        r.verified = false;
        audit.record(r);
        audit.close().await;
        let all = lines(dir.path(), "2024-01-01");
        assert!(all.iter().any(|v| v["request_id"] == "later"));
    }
}
