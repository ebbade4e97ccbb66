//! What of a journal is live, and compaction: rewriting only that to a new file, renamed over the
//! journal.
//!
//! The live part of a journal is the last frame per thing ([`journal::Key`]), unless that frame is a
//! deletion, has expired (wall clock), or names something the in-memory store no longer holds (it
//! was evicted for room). Compaction runs in the background thread, off the request path: it reads
//! the journal up to its length at the start, writes the live part of that to `journal.compact`,
//! then, under the journal's lock, copies the frames written meanwhile after it, syncs it, and
//! renames it over the journal. The highest fencing token the old journal gave is written first, so
//! that tokens never repeat after a restart even when their records are gone.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::sync::Arc;

use super::journal::{self, Change, Corrupt, Key, Scanned};
use super::{lock, stores, LocalError, Shared};
use crate::state::Clock;

/// The live part of a journal.
#[derive(Debug)]
pub(super) struct Live {
    pub(super) scanned: Scanned,
    /// The byte ranges of the live frames, in journal order.
    pub(super) frames: Vec<Range<usize>>,
    /// The highest fencing token any frame carries (0 if none).
    pub(super) high_token: u64,
}

/// The live frames of the journal `buf` at wall-clock `now_ms`, of what `holds` says is still held.
pub(super) fn live(
    buf: &[u8],
    now_ms: u64,
    holds: impl Fn(&Change<'_>) -> bool,
) -> Result<Live, Corrupt> {
    let mut last: HashMap<Key<'_>, (Range<usize>, Change<'_>)> = HashMap::new();
    let mut high_token = 0;
    let scanned = journal::scan(buf, |range, change| {
        if let Some(t) = change.token() {
            high_token = high_token.max(t);
        }
        last.insert(change.key(), (range, change));
    })?;
    let mut frames: Vec<Range<usize>> = last
        .into_values()
        .filter(|(_, c)| !matches!(c, Change::Tokens { .. }))
        .filter(|(_, c)| c.expires_ms().is_some_and(|e| e > now_ms))
        .filter(|(_, c)| holds(c))
        .map(|(r, _)| r)
        .collect();
    frames.sort_by_key(|r| r.start);
    Ok(Live {
        scanned,
        frames,
        high_token,
    })
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The journal's size before, in bytes.
    pub before: u64,
    /// Its size after.
    pub after: u64,
}

impl<C: Clock + Clone> Shared<C> {
    /// Whether the in-memory store of what `c` names still holds it (or has not been made yet).
    fn holds(&self, c: &Change<'_>) -> bool {
        match c {
            Change::Record { route, digest, .. } => lock(&self.records)
                .get(*route)
                .is_none_or(|s| s.memory().holds(digest)),
            Change::Pin { id, .. } => lock(&self.pins)
                .as_ref()
                .is_none_or(|p| p.memory().holds(id)),
            Change::Event { webhook, id, .. } => lock(&self.events)
                .get(*webhook)
                .is_none_or(|s| s.memory().holds(id)),
            Change::Tokens { .. } => true,
        }
    }
}

/// Compacts the journal of `shared` now.
pub(super) fn run<C: Clock + Clone>(shared: &Shared<C>) -> Result<Compacted, LocalError> {
    let path = shared.journal.path().to_owned();
    let io = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| LocalError::Io { path, source }
    };
    let start = shared.journal.writer().len;
    let mut buf = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(start).read_to_end(&mut buf))
        .map_err(io(&path))?;
    let now_ms = stores::unix_ms(shared.clock.wall());
    let live = live(&buf, now_ms, |c| shared.holds(c)).map_err(|c| LocalError::Corrupt {
        path: path.clone(),
        offset: c.offset,
        reason: c.reason,
    })?;
    let mut out = journal::MAGIC.to_vec();
    let tokens = Change::Tokens {
        high: live.high_token,
    };
    // A token frame is a few bytes: never over the bound.
    let _ = journal::encode(&tokens, &mut out);
    for r in &live.frames {
        out.extend_from_slice(&buf[r.clone()]);
    }
    drop(buf);
    let tmp = shared.dir.join("journal.compact");
    let _ = std::fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(&out).map_err(io(&tmp))?;
    file.sync_data().map_err(io(&tmp))?;
    // Writes wait from here to the rename: the frames written meanwhile are copied after the live
    // part, and the new file takes the old one's place before any other is written.
    let mut w = shared.journal.writer();
    let mut tail = Vec::new();
    let mut old = std::fs::File::open(&path).map_err(io(&path))?;
    old.seek(SeekFrom::Start(start)).map_err(io(&path))?;
    old.take(w.len - start)
        .read_to_end(&mut tail)
        .map_err(io(&path))?;
    file.write_all(&tail).map_err(io(&tmp))?;
    file.sync_data().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    if let Err(e) = std::fs::File::open(&shared.dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %shared.dir.display(), error = %e, "the local state directory could not be synced after compaction");
    }
    let before = w.len;
    let after = (out.len() + tail.len()) as u64;
    w.file = Arc::new(file);
    w.len = after;
    w.live = after;
    w.dirty = false;
    Ok(Compacted { before, after })
}
