//! The writer: one thread that takes records off the queue, redacts them, and appends them to the file
//! of their UTC day (`audit-YYYY-MM-DD.jsonl`), deleting files older than the retention.
//!
//! It runs on a thread of its own so that disk latency never reaches a request; the queue between the
//! request path and this thread is bounded, and a full queue drops (and counts) rather than waits.
//!
//! The files it owns (the `audit-YYYY-MM-DD.jsonl` files of its folder, counted at start and after each
//! retention sweep) never grow past `max_bytes` together: a record that would cross it is dropped and
//! counted (`reason="disk_budget"`), until retention deletes old files. Every second it also writes the
//! summaries of refused webhooks that were over their record limit ([`super::limit`]).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec};

use super::clock::{day_name, day_number, parse_day, Clock};
use super::limit::RefusedLimit;
use super::record::{Record, Redaction};
use super::DropReason;

/// Messages to the writer.
pub(crate) enum Msg {
    Record(Box<Record>),
    /// Write out everything queued before this, then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
    /// Write out everything queued, sync the file, answer, and stop.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// How often retention runs besides at start and at each new day.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// How often the writer wakes up when idle, to write due summaries of suppressed records.
const TICK: Duration = Duration::from_secs(1);

/// The file name of a day.
pub fn file_name(day: i64) -> String {
    format!("audit-{}.jsonl", day_name(day))
}

/// The day of a file name written by [`file_name`].
fn file_day(name: &str) -> Option<i64> {
    parse_day(name.strip_prefix("audit-")?.strip_suffix(".jsonl")?)
}

pub(crate) struct Writer {
    pub(crate) dir: PathBuf,
    pub(crate) retention: Duration,
    pub(crate) max_bytes: u64,
    pub(crate) redaction: Redaction,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) written: IntCounter,
    pub(crate) dropped: IntCounterVec,
    refused: Arc<Mutex<RefusedLimit>>,
    pub(crate) rx: Receiver<Msg>,
    file: Option<(i64, BufWriter<File>)>,
    /// Bytes in the files this writer owns (as of the last sweep, plus what was written since).
    used: u64,
    /// Whether the last record was dropped for the budget (logged once per episode).
    over_budget: bool,
    last_sweep: Instant,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        dir: PathBuf,
        retention: Duration,
        max_bytes: u64,
        redaction: Redaction,
        clock: Arc<dyn Clock>,
        written: IntCounter,
        dropped: IntCounterVec,
        refused: Arc<Mutex<RefusedLimit>>,
        rx: Receiver<Msg>,
    ) -> Self {
        Self {
            dir,
            retention,
            max_bytes,
            redaction,
            clock,
            written,
            dropped,
            refused,
            rx,
            file: None,
            used: 0,
            over_budget: false,
            last_sweep: Instant::now(),
        }
    }

    /// Runs until closed, or until every sender is gone.
    pub(crate) fn run(mut self) {
        self.sweep();
        loop {
            if self.last_sweep.elapsed() >= SWEEP_EVERY {
                self.sweep();
            }
            let msg = match self.rx.recv_timeout(TICK) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => {
                    if self.write_summaries(false) {
                        self.flush();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.write_summaries(true);
                    self.finish();
                    return;
                }
            };
            if self.handle(msg) {
                return;
            }
            // Write whatever else is queued before flushing once.
            while let Ok(msg) = self.rx.try_recv() {
                if self.handle(msg) {
                    return;
                }
            }
            self.write_summaries(false);
            self.flush();
        }
    }

    /// Handles one message; true when the writer must stop.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Record(record) => self.write(&record),
            Msg::Flush(ack) => {
                self.write_summaries(true);
                self.flush();
                let _ = ack.send(());
            }
            Msg::Close(ack) => {
                // Stop taking records (senders now see a closed queue), then write what is queued.
                let (_, closed) = std::sync::mpsc::sync_channel(0);
                let rx = std::mem::replace(&mut self.rx, closed);
                while let Ok(msg) = rx.try_recv() {
                    match msg {
                        Msg::Record(record) => self.write(&record),
                        Msg::Flush(a) | Msg::Close(a) => {
                            let _ = a.send(());
                        }
                    }
                }
                drop(rx);
                self.write_summaries(true);
                self.finish();
                let _ = ack.send(());
                return true;
            }
        }
        false
    }

    /// Writes the due summaries of suppressed refused webhooks (all of them when `all`); true when
    /// there was one.
    fn write_summaries(&mut self, all: bool) -> bool {
        let now = self.clock.now();
        let due = self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .summaries(now, all);
        let any = !due.is_empty();
        for summary in due {
            self.write(&summary.into());
        }
        any
    }

    fn write(&mut self, record: &Record) {
        let day = day_number(Redaction::timestamp(record));
        let mut line = self.redaction.line(record);
        line.push('\n');
        let len = line.len() as u64;
        // Open (or move to) the day's file first: a new day runs retention, which may free room.
        let opened = self.file_for(day).map(|_| ());
        if opened.is_ok() && self.used.saturating_add(len) > self.max_bytes {
            DropReason::DiskBudget.count(&self.dropped);
            if !self.over_budget {
                self.over_budget = true;
                tracing::error!(dir = %self.dir.display(), max_bytes = self.max_bytes, "audit files reached audit.max_bytes: records are dropped until retention frees room");
            }
            return;
        }
        self.over_budget = false;
        let result = opened
            .and_then(|()| self.file_for(day))
            .and_then(|f| f.write_all(line.as_bytes()));
        match result {
            Ok(()) => {
                self.used += len;
                self.written.inc();
            }
            Err(e) => {
                DropReason::WriteFailed.count(&self.dropped);
                tracing::error!(dir = %self.dir.display(), error = %e, "audit record could not be written");
                // Reopen on the next record.
                self.file = None;
            }
        }
    }

    fn file_for(&mut self, day: i64) -> std::io::Result<&mut BufWriter<File>> {
        if self.file.as_ref().is_none_or(|(d, _)| *d != day) {
            if let Some((_, mut old)) = self.file.take() {
                let _ = old.flush();
                let _ = old.get_ref().sync_all();
            }
            let path = self.dir.join(file_name(day));
            let file = open_append(&path)?;
            self.file = Some((day, BufWriter::new(file)));
            self.sweep();
        }
        match &mut self.file {
            Some((_, f)) => Ok(f),
            None => Err(std::io::Error::other("no audit file open")),
        }
    }

    fn flush(&mut self) {
        if let Some((_, f)) = &mut self.file {
            if let Err(e) = f.flush() {
                tracing::error!(error = %e, "audit file could not be flushed");
            }
        }
    }

    fn finish(&mut self) {
        if let Some((_, mut f)) = self.file.take() {
            let _ = f.flush();
            let _ = f.get_ref().sync_all();
        }
    }

    /// Deletes the files whose whole day is older than the retention, by the clock, and counts the
    /// bytes of the files that are left.
    fn sweep(&mut self) {
        self.last_sweep = Instant::now();
        self.delete_expired();
        // What is still buffered is not on disk yet: flush it so the count is exact.
        self.flush();
        self.used = self.owned_bytes();
    }

    /// The size of the files this writer owns.
    fn owned_bytes(&self) -> u64 {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_str().and_then(file_day).is_some())
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    }

    fn delete_expired(&mut self) {
        let now_secs = self
            .clock
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let keep_secs = i64::try_from(self.retention.as_secs()).unwrap_or(i64::MAX);
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(day) = name.to_str().and_then(file_day) else {
                continue;
            };
            let day_end = (day + 1) * 86_400;
            if now_secs.saturating_sub(day_end) > keep_secs
                && self.file.as_ref().is_none_or(|(d, _)| *d != day)
            {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => {
                        tracing::info!(file = %entry.path().display(), "audit file past retention deleted")
                    }
                    Err(e) => {
                        tracing::warn!(file = %entry.path().display(), error = %e, "audit file past retention could not be deleted")
                    }
                }
            }
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_carry_the_utc_day() {
        assert_eq!(file_name(19_723), "audit-2024-01-01.jsonl");
        assert_eq!(file_day("audit-2024-01-01.jsonl"), Some(19_723));
        assert_eq!(file_day("audit-2024-01-01.jsonl.bak"), None);
        assert_eq!(file_day("other.jsonl"), None);
    }
}
