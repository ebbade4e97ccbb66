//! The `local` backend: payment state on this machine's disk, which survives SIGKILL and restarts
//! (`PAYMENT_RULES.md` §3b for one sidecar; a fleet shares the `redis` backend instead).
//!
//! The in-memory stores stay the working set ([`MemoryStore`], [`ObjectPins`], [`DedupeStore`], with
//! their answers and bounds), and every change to them is appended to one journal file in the
//! store's directory, with one `write(2)` before the call answers ([`journal`] has the format):
//!
//! - **A process crash loses nothing.** A change is in the kernel's page cache before the proxy sends
//!   a byte on its strength, and the page cache outlives the process; there is no fsync per payment.
//! - **A machine crash (power, kernel panic) can lose the last second or so** of changes: a
//!   background thread fdatasyncs the journal every second ([`LocalOptions::sync_every`], on by
//!   default; `None` leaves it to the kernel's writeback, some 30 s). Keys of those payments may then
//!   be sent to another provider after the reboot.
//! - **At open** the journal is replayed into fresh stores, skipping what expired (times in the
//!   journal are wall-clock). The store holds an exclusive lock on `dir/LOCK`, so a record found in
//!   flight belonged to a process that is gone: its lease counts as run out, and the shop's retry
//!   resumes at once at the recorded provider. Fencing tokens continue above every token the journal
//!   ever gave (and above the clock's microseconds), so they never repeat after a restart.
//! - **Torn tail, corrupt middle.** A torn last write is cut with a warning; a corrupt frame with
//!   frames after it refuses to start: silently dropping payment state could charge a key twice.
//! - **Compaction** ([`compact`]) rewrites the live state to a new file and renames it over the
//!   journal when the journal is larger than twice its last compacted size plus 8 MiB, in the
//!   background thread, without losing writes made meanwhile.
//!
//! [`MemoryStore`]: crate::idempotency::MemoryStore
//! [`ObjectPins`]: crate::idempotency::ObjectPins
//! [`DedupeStore`]: crate::webhooks::dedupe::DedupeStore

mod compact;
mod journal;
mod stores;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::Duration;

use prometheus::IntCounter;

use crate::idempotency::{Limits, MemoryStore, ObjectPins};
use crate::state::{Clock, SystemClock};
use crate::webhooks::dedupe::DedupeStore;

pub use compact::Compacted;
pub use stores::{LocalEvents, LocalPins, LocalRecords};

use journal::{Change, Journal};
use stores::Wall;

/// The journal's file name in the store's directory.
pub const JOURNAL: &str = "journal";
/// The lock file's name in the store's directory.
pub const LOCK: &str = "LOCK";

/// How the local store runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalOptions {
    /// How often a background thread fdatasyncs the journal, bounding what a machine crash can lose;
    /// `None`: never (the kernel writes back on its own, within some 30 s).
    pub sync_every: Option<Duration>,
    /// Compact when the journal is larger than twice its last compacted size plus this.
    pub compact_slack: u64,
}

impl Default for LocalOptions {
    fn default() -> Self {
        Self {
            sync_every: Some(Duration::from_secs(1)),
            compact_slack: 8 << 20,
        }
    }
}

/// The local store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The directory could not be made.
    #[error("cannot create the local state directory {dir}: {source}; create it writable for this user, or set state.dir to a directory that is")]
    Create {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file in the directory could not be opened for writing.
    #[error("the local state directory {dir} is not writable ({path}: {source}); switchyard does not run without its payment state: make it writable for this user, or set state.dir to a directory that is")]
    NotWritable {
        /// The directory.
        dir: PathBuf,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process holds the store.
    #[error("another switchyard holds the local state in {dir} (locked {dir}/LOCK): two sidecars cannot share a local store; give each its own state.dir, or use `backend: redis` for a fleet")]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// The journal could not be read or rewritten.
    #[error("the local state journal {path} cannot be read or written: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The journal is corrupt before its last frame.
    #[error("the local state journal {path} is corrupt at byte {offset}: {reason}. switchyard refuses to start rather than forget payments it knew. To start with empty state, move it aside (`mv {path} {path}.corrupt`), knowing that keys it held may then be sent to another provider")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Records read back at open, kept until a store of theirs is asked for.
#[derive(Debug, Default)]
struct Restored {
    /// The live frames, by route, pin and webhook, in journal order.
    records: HashMap<String, Vec<Vec<u8>>>,
    pins: Vec<Vec<u8>>,
    events: HashMap<String, Vec<Vec<u8>>>,
}

/// What the local backend holds.
#[derive(Debug)]
struct Shared<C: Clock + Clone> {
    dir: PathBuf,
    journal: Arc<Journal>,
    clock: C,
    /// Every fencing token given from now on is greater.
    tokens_from: u64,
    records: Mutex<HashMap<Arc<str>, Arc<LocalRecords<C>>>>,
    pins: Mutex<Option<Arc<LocalPins<C>>>>,
    events: Mutex<HashMap<Arc<str>, Arc<LocalEvents<C>>>>,
    restored: Mutex<Restored>,
    options: LocalOptions,
}

/// The local backend: opened once per process on a directory it then holds alone.
///
/// Its stores outlive it (they write to the journal for as long as they are held); dropping it
/// stops only the background thread. Nothing is kept for a clean shutdown: every change is in the
/// file when the call that made it answers.
#[derive(Debug)]
pub struct Local<C: Clock + Clone = SystemClock> {
    shared: Arc<Shared<C>>,
    /// Dropped with the store: ends the background thread.
    _stop: mpsc::Sender<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Local {
    /// Opens (or creates) the store in `dir`: replays its journal, and takes `dir/LOCK`.
    pub fn open(dir: &Path, options: LocalOptions) -> Result<Self, LocalError> {
        Self::open_with_clock(dir, options, SystemClock)
    }
}

impl<C: Clock + Clone> Local<C> {
    /// [`Local::open`], reading the time from `clock`.
    pub fn open_with_clock(
        dir: &Path,
        options: LocalOptions,
        clock: C,
    ) -> Result<Self, LocalError> {
        std::fs::create_dir_all(dir).map_err(|source| LocalError::Create {
            dir: dir.to_owned(),
            source,
        })?;
        let not_writable = |path: PathBuf| {
            let dir = dir.to_owned();
            move |source| LocalError::NotWritable { dir, path, source }
        };
        let lock_path = dir.join(LOCK);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(not_writable(lock_path.clone()))?;
        match rustix::fs::flock(
            &lock_file,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        ) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(LocalError::Locked {
                    dir: dir.to_owned(),
                })
            }
            Err(e) => {
                return Err(LocalError::Io {
                    path: lock_path,
                    source: e.into(),
                })
            }
        }
        let path = dir.join(JOURNAL);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| LocalError::Io { path, source }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(not_writable(path.clone()))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(io(&path))?;
        if buf.len() < journal::MAGIC.len() && journal::MAGIC.starts_with(&buf) {
            // New, or its first write torn: start it.
            file.set_len(0).map_err(io(&path))?;
            std::io::Write::write_all(&mut file, journal::MAGIC)
                .map_err(not_writable(path.clone()))?;
            file.sync_all().map_err(io(&path))?;
            // Its name too, or a machine crash could take the new file away with what it holds.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
            buf = journal::MAGIC.to_vec();
        }
        let replay = compact::live(&buf, unix_now_ms(&clock), |_| true).map_err(|c| {
            LocalError::Corrupt {
                path: path.clone(),
                offset: c.offset,
                reason: c.reason,
            }
        })?;
        if replay.scanned.torn > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = replay.scanned.torn,
                "the local state journal ended in a torn write (a crash while writing); it was cut"
            );
            file.set_len(replay.scanned.valid as u64)
                .map_err(io(&path))?;
        }
        let mut restored = Restored::default();
        let mut live_bytes = journal::MAGIC.len() as u64;
        for range in &replay.frames {
            let frame = &buf[range.clone()];
            live_bytes += frame.len() as u64;
            let change = decode_frame(frame);
            match change {
                Some(Change::Record { route, .. }) => restored
                    .records
                    .entry(route.to_owned())
                    .or_default()
                    .push(frame.to_vec()),
                Some(Change::Pin { .. }) => restored.pins.push(frame.to_vec()),
                Some(Change::Event { webhook, .. }) => restored
                    .events
                    .entry(webhook.to_owned())
                    .or_default()
                    .push(frame.to_vec()),
                _ => {}
            }
        }
        let micros = clock
            .wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let tokens_from = replay.high_token.max(micros);
        let len = replay.scanned.valid as u64;
        let journal = Arc::new(Journal::new(path, file, len, live_bytes, lock_file));
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            journal,
            clock,
            tokens_from,
            records: Mutex::default(),
            pins: Mutex::default(),
            events: Mutex::default(),
            restored: Mutex::new(restored),
            options,
        });
        let (stop, stopped) = mpsc::channel();
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("switchyard-state".into())
            .spawn(move || background(weak, stopped))
            .map_err(io(dir))?;
        Ok(Self {
            shared,
            _stop: stop,
        })
    }

    /// The directory it holds.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The idempotency records of route `route`: one store per route, kept across reloads (a
    /// second call re-bounds the first store with `limits` and gives it back). Records read back at
    /// open are put in at the first call.
    pub fn records(
        &self,
        route: &str,
        limits: Limits,
        evictions: IntCounter,
    ) -> Arc<LocalRecords<C>> {
        let s = &self.shared;
        let mut all = lock(&s.records);
        if let Some(existing) = all.get(route) {
            existing.memory().set_limits(limits);
            return Arc::clone(existing);
        }
        let memory = MemoryStore::with_clock(limits, s.clock.clone(), Some(evictions));
        memory.raise_tokens(s.tokens_from);
        let name: Arc<str> = Arc::from(route);
        let store = Arc::new(LocalRecords::new(
            Arc::clone(&name),
            memory,
            Arc::clone(&s.journal),
            s.clock.clone(),
        ));
        let frames = lock(&s.restored).records.remove(route).unwrap_or_default();
        let wall = Wall::of(&s.clock);
        for frame in &frames {
            if let Some(Change::Record {
                digest,
                record: Some(r),
                ..
            }) = decode_frame(frame)
            {
                let _ = store.restore(digest, &r, wall);
            }
        }
        all.insert(name, Arc::clone(&store));
        store
    }

    /// The payment-object pins, keeping pins for `ttl`, at most `max` (one store; a second call
    /// re-bounds it).
    pub fn pins(&self, ttl: Duration, max: usize) -> Arc<LocalPins<C>> {
        let s = &self.shared;
        let mut slot = lock(&s.pins);
        if let Some(existing) = &*slot {
            existing.memory().set_limits(ttl, max);
            return Arc::clone(existing);
        }
        let pins = ObjectPins::with_clock(ttl, max, s.clock.clone());
        let frames = std::mem::take(&mut lock(&s.restored).pins);
        let wall = Wall::of(&s.clock);
        for frame in &frames {
            if let Some(Change::Pin {
                id,
                provider,
                until_ms,
            }) = decode_frame(frame)
            {
                if let Some(until) = wall.instant(until_ms) {
                    pins.restore(id, &Arc::from(provider), until);
                }
            }
        }
        let store = Arc::new(LocalPins::new(
            pins,
            Arc::clone(&s.journal),
            s.clock.clone(),
        ));
        *slot = Some(Arc::clone(&store));
        store
    }

    /// The delivered event ids of webhook `webhook`: one store per webhook, as the in-memory
    /// [`crate::webhooks::Webhooks::store`] keeps them, kept for the process's life.
    pub fn events(&self, webhook: &str) -> Arc<LocalEvents<C>> {
        let s = &self.shared;
        let mut all = lock(&s.events);
        if let Some(existing) = all.get(webhook) {
            return Arc::clone(existing);
        }
        let memory = DedupeStore::with_clock(s.clock.clone());
        let frames = lock(&s.restored).events.remove(webhook).unwrap_or_default();
        let wall = Wall::of(&s.clock);
        for frame in &frames {
            if let Some(Change::Event { id, expires_ms, .. }) = decode_frame(frame) {
                if let Some(expires) = wall.instant(expires_ms) {
                    memory.restore(id, expires);
                }
            }
        }
        let name: Arc<str> = Arc::from(webhook);
        let store = Arc::new(LocalEvents::new(
            Arc::clone(&name),
            memory,
            Arc::clone(&s.journal),
            s.clock.clone(),
        ));
        all.insert(name, Arc::clone(&store));
        store
    }

    /// The journal's size in bytes.
    pub fn journal_len(&self) -> u64 {
        self.shared.journal.writer().len
    }

    /// Compacts the journal now (the background thread does when it has grown; see the module docs).
    pub fn compact(&self) -> Result<Compacted, LocalError> {
        compact::run(&self.shared)
    }
}

/// The change a whole frame (as [`compact::live`] gives it, checked) holds.
fn decode_frame(frame: &[u8]) -> Option<Change<'_>> {
    frame.get(8..).and_then(|p| journal::decode(p).ok())
}

fn unix_now_ms<C: Clock>(clock: &C) -> u64 {
    stores::unix_ms(clock.wall())
}

/// The background thread: fdatasync every `sync_every`, and compaction when the journal has grown.
/// Ends when the [`Local`] is dropped.
fn background<C: Clock + Clone>(shared: Weak<Shared<C>>, stop: mpsc::Receiver<()>) {
    let tick = match shared.upgrade().and_then(|s| s.options.sync_every) {
        Some(every) => every.min(Duration::from_secs(1)),
        None => Duration::from_secs(1),
    };
    loop {
        match stop.recv_timeout(tick) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let Some(s) = shared.upgrade() else { return };
        if s.options.sync_every.is_some() {
            sync(&s.journal);
        }
        let (len, live) = {
            let w = s.journal.writer();
            (w.len, w.live)
        };
        if len
            > live
                .saturating_mul(2)
                .saturating_add(s.options.compact_slack)
        {
            match compact::run(&s) {
                Ok(c) => tracing::info!(
                    before = c.before,
                    after = c.after,
                    "local state journal compacted"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "local state journal compaction failed; it is tried again later")
                }
            }
        }
    }
}

/// fdatasyncs the journal if it was written since the last time.
fn sync(journal: &Journal) {
    let file = {
        let mut w = journal.writer();
        if !w.dirty {
            return;
        }
        w.dirty = false;
        Arc::clone(&w.file)
    };
    if let Err(e) = file.sync_data() {
        tracing::warn!(path = %journal.path().display(), error = %e, "fdatasync of the local state journal failed");
        journal.writer().dirty = true;
    }
}
