//! The writer: one thread that takes records off the queue, redacts them, and appends them to the file
//! of their UTC day (`audit-YYYY-MM-DD.jsonl`), deleting files older than the retention.
//!
//! It runs on a thread of its own so that disk latency never reaches a request; the queue between the
//! request path and this thread is bounded, and a full queue drops (and counts) rather than waits.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;

use super::clock::{day_name, day_number, parse_day, Clock};
use super::record::{Record, Redaction};

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
    pub(crate) redaction: Redaction,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) written: IntCounter,
    pub(crate) dropped: IntCounter,
    pub(crate) rx: Receiver<Msg>,
    file: Option<(i64, BufWriter<File>)>,
}

impl Writer {
    pub(crate) fn new(
        dir: PathBuf,
        retention: Duration,
        redaction: Redaction,
        clock: Arc<dyn Clock>,
        written: IntCounter,
        dropped: IntCounter,
        rx: Receiver<Msg>,
    ) -> Self {
        Self {
            dir,
            retention,
            redaction,
            clock,
            written,
            dropped,
            rx,
            file: None,
        }
    }

    /// Runs until closed, or until every sender is gone.
    pub(crate) fn run(mut self) {
        self.sweep();
        loop {
            let msg = match self.rx.recv_timeout(SWEEP_EVERY) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => {
                    self.sweep();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
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
            self.flush();
        }
    }

    /// Handles one message; true when the writer must stop.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Record(record) => self.write(&record),
            Msg::Flush(ack) => {
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
                self.finish();
                let _ = ack.send(());
                return true;
            }
        }
        false
    }

    fn write(&mut self, record: &Record) {
        let day = day_number(Redaction::timestamp(record));
        let mut line = self.redaction.line(record);
        line.push('\n');
        let result = self
            .file_for(day)
            .and_then(|f| f.write_all(line.as_bytes()));
        match result {
            Ok(()) => self.written.inc(),
            Err(e) => {
                self.dropped.inc();
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

    /// Deletes the files whose whole day is older than the retention, by the clock.
    fn sweep(&mut self) {
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
