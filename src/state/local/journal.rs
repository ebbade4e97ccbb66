//! The journal file: its format, appending to it, and reading it back.
//!
//! A journal is an 8-byte magic, then frames: `len: u32 LE`, `crc32: u32 LE` of the payload, and
//! `len` bytes of payload, one change each. A change is the resulting state of one thing (a record
//! put or deleted, a pin, a delivered event id, the fencing-token high-water), so the last frame
//! naming a thing is what it is: replay and compaction keep the last one per thing and drop the rest.
//!
//! **What an open record keeps.** A record in flight or unknown may keep what its resolution needs
//! ([`crate::idempotency::Kept`], as [`Kept::to_bytes`] writes it). It is a trailing optional field
//! of those two states: when kept, the state's fields are followed by one more length-prefixed field;
//! when not, the frame ends where it always did. So a journal written before records kept anything
//! reads as it was (nothing kept), and the format's version stays 1. The other way round does not
//! hold: a build from before cannot read a frame with the field (it refuses to start, with the
//! journal's corruption error), so going back to such a build after an unknown outcome was kept
//! means moving the journal aside.
//!
//! Reading back tells a torn last write (a process or machine crash in the middle of `write(2)`, or a
//! tail of zeros that a file system left after a machine crash) from corruption in the middle: the
//! first is cut with a warning, the second refuses to start, since dropping the frames after it would
//! silently forget payments.
//!
//! [`Kept::to_bytes`]: crate::idempotency::Kept::to_bytes

use std::borrow::Cow;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::state::StateError;

/// What every journal starts with (the last byte is the format's version).
pub(super) const MAGIC: &[u8; 8] = b"SYSTATE1";

/// The largest payload a frame may hold: a stored answer (at most 4 MiB of body) and its record.
pub(super) const MAX_RECORD: usize = 16 << 20;

const HEADER: usize = 8;

const TAG_RECORD: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_PIN: u8 = 3;
const TAG_EVENT: u8 = 4;
const TAG_TOKENS: u8 = 5;

const STATE_IN_FLIGHT: u8 = 0;
const STATE_DONE: u8 = 1;
const STATE_UNKNOWN: u8 = 2;

/// One change, as written and read back. Times are wall-clock milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change<'a> {
    /// Route `route`'s record `digest` is now `record`, or gone (`None`).
    Record {
        route: &'a str,
        digest: [u8; 16],
        record: Option<Record<'a>>,
    },
    /// Object `id` lives at `provider` until `until_ms`.
    Pin {
        id: &'a str,
        provider: &'a str,
        until_ms: u64,
    },
    /// Webhook `webhook` delivered event `id`; remembered until `expires_ms`.
    Event {
        webhook: &'a str,
        id: &'a str,
        expires_ms: u64,
    },
    /// Every fencing token given so far is at most `high`.
    Tokens { high: u64 },
}

/// An idempotency record as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record<'a> {
    pub(super) fingerprint: [u8; 32],
    pub(super) expires_ms: u64,
    /// What it counts against the route's byte bound.
    pub(super) bytes: u32,
    pub(super) state: State<'a>,
}

/// Where a record stands, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum State<'a> {
    InFlight {
        attempt: Option<&'a str>,
        resumed: bool,
        token: u64,
        lease_until_ms: u64,
        /// What the record kept before it was resumed ([`Kept::to_bytes`]).
        ///
        /// [`Kept::to_bytes`]: crate::idempotency::Kept::to_bytes
        kept: Option<Cow<'a, [u8]>>,
    },
    Done {
        status: u16,
        provider: &'a str,
        body_at: u32,
        blob: &'a [u8],
    },
    Unknown {
        pinned: &'a str,
        /// What it keeps for its resolution ([`Kept::to_bytes`]).
        ///
        /// [`Kept::to_bytes`]: crate::idempotency::Kept::to_bytes
        kept: Option<Cow<'a, [u8]>>,
    },
}

/// What a change is about: the last change per key is the live one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Key<'a> {
    Record(&'a str, [u8; 16]),
    Pin(&'a str),
    Event(&'a str, &'a str),
    Tokens,
}

impl<'a> Change<'a> {
    /// What it is about.
    pub(super) fn key(&self) -> Key<'a> {
        match *self {
            Self::Record { route, digest, .. } => Key::Record(route, digest),
            Self::Pin { id, .. } => Key::Pin(id),
            Self::Event { webhook, id, .. } => Key::Event(webhook, id),
            Self::Tokens { .. } => Key::Tokens,
        }
    }

    /// When what it says stops mattering (wall ms); `None` for a deletion (it never lives on) and
    /// `Some(u64::MAX)` for what never expires.
    pub(super) fn expires_ms(&self) -> Option<u64> {
        match self {
            Self::Record { record, .. } => record.as_ref().map(|r| r.expires_ms),
            Self::Pin { until_ms, .. } => Some(*until_ms),
            Self::Event { expires_ms, .. } => Some(*expires_ms),
            Self::Tokens { .. } => Some(u64::MAX),
        }
    }

    /// The fencing token it carries, if any.
    pub(super) fn token(&self) -> Option<u64> {
        match self {
            Self::Record {
                record:
                    Some(Record {
                        state: State::InFlight { token, .. },
                        ..
                    }),
                ..
            } => Some(*token),
            Self::Tokens { high } => Some(*high),
            _ => None,
        }
    }
}

/// Appends `change` to `out` as one frame. Fails when the payload is over [`MAX_RECORD`].
pub(super) fn encode(change: &Change<'_>, out: &mut Vec<u8>) -> Result<(), usize> {
    let start = out.len();
    out.extend_from_slice(&[0; 8]);
    match change {
        Change::Record {
            route,
            digest,
            record: None,
        } => {
            out.push(TAG_DELETE);
            put_str(out, route);
            out.extend_from_slice(digest);
        }
        Change::Record {
            route,
            digest,
            record: Some(r),
        } => {
            out.push(TAG_RECORD);
            put_str(out, route);
            out.extend_from_slice(digest);
            out.extend_from_slice(&r.fingerprint);
            out.extend_from_slice(&r.expires_ms.to_le_bytes());
            out.extend_from_slice(&r.bytes.to_le_bytes());
            match &r.state {
                State::InFlight {
                    attempt,
                    resumed,
                    token,
                    lease_until_ms,
                    kept,
                } => {
                    out.push(STATE_IN_FLIGHT);
                    match attempt {
                        Some(p) => {
                            out.push(1);
                            put_str(out, p);
                        }
                        None => out.push(0),
                    }
                    out.push(u8::from(*resumed));
                    out.extend_from_slice(&token.to_le_bytes());
                    out.extend_from_slice(&lease_until_ms.to_le_bytes());
                    put_kept(out, kept.as_deref());
                }
                State::Done {
                    status,
                    provider,
                    body_at,
                    blob,
                } => {
                    out.push(STATE_DONE);
                    out.extend_from_slice(&status.to_le_bytes());
                    put_str(out, provider);
                    out.extend_from_slice(&body_at.to_le_bytes());
                    put_bytes(out, blob);
                }
                State::Unknown { pinned, kept } => {
                    out.push(STATE_UNKNOWN);
                    put_str(out, pinned);
                    put_kept(out, kept.as_deref());
                }
            }
        }
        Change::Pin {
            id,
            provider,
            until_ms,
        } => {
            out.push(TAG_PIN);
            put_str(out, id);
            put_str(out, provider);
            out.extend_from_slice(&until_ms.to_le_bytes());
        }
        Change::Event {
            webhook,
            id,
            expires_ms,
        } => {
            out.push(TAG_EVENT);
            put_str(out, webhook);
            put_str(out, id);
            out.extend_from_slice(&expires_ms.to_le_bytes());
        }
        Change::Tokens { high } => {
            out.push(TAG_TOKENS);
            out.extend_from_slice(&high.to_le_bytes());
        }
    }
    let len = out.len() - start - 8;
    if len > MAX_RECORD {
        out.truncate(start);
        return Err(len);
    }
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The trailing optional field: written only when something is kept (see the module docs).
fn put_kept(out: &mut Vec<u8>, kept: Option<&[u8]>) {
    if let Some(k) = kept {
        put_bytes(out, k);
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Every field is far below 4 GiB: a frame is at most MAX_RECORD, checked after encoding.
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(b);
}

/// Reads fields off a payload.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.rest.len() < n {
            return Err("a field runs past the end of its frame");
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn str(&mut self) -> Result<&'a str, &'static str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| "a name is not UTF-8")
    }

    /// The trailing optional field: present when bytes are left in the frame.
    fn kept(&mut self) -> Result<Option<Cow<'a, [u8]>>, &'static str> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        Ok(Some(Cow::Borrowed(self.bytes()?)))
    }
}

/// The change a frame's payload holds.
pub(super) fn decode(payload: &[u8]) -> Result<Change<'_>, &'static str> {
    let mut r = Reader { rest: payload };
    let change = match r.u8()? {
        TAG_DELETE => Change::Record {
            route: r.str()?,
            digest: r.array()?,
            record: None,
        },
        TAG_RECORD => {
            let route = r.str()?;
            let digest = r.array()?;
            let fingerprint = r.array()?;
            let expires_ms = r.u64()?;
            let bytes = r.u32()?;
            let state = match r.u8()? {
                STATE_IN_FLIGHT => State::InFlight {
                    attempt: match r.u8()? {
                        0 => None,
                        _ => Some(r.str()?),
                    },
                    resumed: r.u8()? != 0,
                    token: r.u64()?,
                    lease_until_ms: r.u64()?,
                    kept: r.kept()?,
                },
                STATE_DONE => State::Done {
                    status: r.u16()?,
                    provider: r.str()?,
                    body_at: r.u32()?,
                    blob: r.bytes()?,
                },
                STATE_UNKNOWN => State::Unknown {
                    pinned: r.str()?,
                    kept: r.kept()?,
                },
                _ => return Err("unknown record state"),
            };
            Change::Record {
                route,
                digest,
                record: Some(Record {
                    fingerprint,
                    expires_ms,
                    bytes,
                    state,
                }),
            }
        }
        TAG_PIN => Change::Pin {
            id: r.str()?,
            provider: r.str()?,
            until_ms: r.u64()?,
        },
        TAG_EVENT => Change::Event {
            webhook: r.str()?,
            id: r.str()?,
            expires_ms: r.u64()?,
        },
        TAG_TOKENS => Change::Tokens { high: r.u64()? },
        _ => return Err("unknown kind of change"),
    };
    if !r.rest.is_empty() {
        return Err("bytes left over after a change");
    }
    Ok(change)
}

/// Where reading a journal stopped.
#[derive(Debug)]
pub(super) struct Scanned {
    /// The bytes up to the end of the last whole frame.
    pub(super) valid: usize,
    /// How many bytes after it were a torn write (cut).
    pub(super) torn: usize,
}

/// Corruption before the last frame.
#[derive(Debug)]
pub(super) struct Corrupt {
    pub(super) offset: usize,
    pub(super) reason: &'static str,
}

/// Reads the frames of `buf` (a whole journal, magic included), calling `each` with every frame's
/// byte range and change in order.
pub(super) fn scan<'a>(
    buf: &'a [u8],
    mut each: impl FnMut(Range<usize>, Change<'a>),
) -> Result<Scanned, Corrupt> {
    if buf.len() < HEADER || &buf[..HEADER] != MAGIC {
        return Err(Corrupt {
            offset: 0,
            reason: "it does not start as a switchyard state journal (version 1) does",
        });
    }
    let mut at = HEADER;
    while at < buf.len() {
        let rest = &buf[at..];
        let torn = Ok(Scanned {
            valid: at,
            torn: rest.len(),
        });
        if rest.iter().all(|b| *b == 0) {
            // A tail of zeros: space a file system gave a write that never reached the disk.
            return torn;
        }
        if rest.len() < 8 {
            return torn;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len == 0 || len > MAX_RECORD {
            // No frame is written so: the length itself is broken.
            return Err(Corrupt {
                offset: at,
                reason: "a frame's length is impossible",
            });
        }
        let end = 8 + len;
        if end > rest.len() {
            // A write cut short (each change is one write, one frame).
            return torn;
        }
        let payload = &rest[8..end];
        if crc32fast::hash(payload) != crc {
            if end == rest.len() {
                return torn;
            }
            return Err(Corrupt {
                offset: at,
                reason: "a frame's checksum does not match, with frames after it",
            });
        }
        let change = decode(payload).map_err(|reason| Corrupt { offset: at, reason })?;
        each(at..at + end, change);
        at += end;
    }
    Ok(Scanned { valid: at, torn: 0 })
}

/// The journal being written: one file, appended to under one lock.
#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    writer: Mutex<Writer>,
    /// The open `LOCK` file: its flock is held for as long as anything can write.
    _lock: File,
}

/// The writing end.
#[derive(Debug)]
pub(super) struct Writer {
    /// Opened to append.
    pub(super) file: Arc<File>,
    /// Bytes in the file.
    pub(super) len: u64,
    /// The file's size after the last compaction (or at open, its live part): the base of the
    /// compaction threshold.
    pub(super) live: u64,
    /// Written since the last fdatasync.
    pub(super) dirty: bool,
    /// Set when a failed write could not be taken back: every later write fails.
    broken: Option<String>,
    /// The frame being built (kept to spare an allocation per change).
    pub(super) buf: Vec<u8>,
}

impl Journal {
    /// A journal at `path`, open to append (`len` bytes, `live` of them live), held by `lock`.
    pub(super) fn new(path: PathBuf, file: File, len: u64, live: u64, lock: File) -> Self {
        Self {
            path,
            writer: Mutex::new(Writer {
                file: Arc::new(file),
                len,
                live,
                dirty: false,
                broken: None,
                buf: Vec::with_capacity(4096),
            }),
            _lock: lock,
        }
    }

    /// Its path.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The writing end, locked: every change is built and written under it, so the file holds the
    /// changes in the order they were made.
    pub(super) fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `change` (one `write(2)`, no fsync) and returns once the page cache holds it.
    pub(super) fn append(&self, w: &mut Writer, change: &Change<'_>) -> Result<(), StateError> {
        let mut buf = std::mem::take(&mut w.buf);
        buf.clear();
        let r = match encode(change, &mut buf) {
            Ok(()) => self.write(w, &buf),
            Err(len) => Err(StateError::Unreachable(format!(
                "a change of {len} bytes is too large for the local state journal"
            ))),
        };
        if buf.capacity() <= 1 << 20 {
            w.buf = buf;
        }
        r
    }

    fn write(&self, w: &mut Writer, bytes: &[u8]) -> Result<(), StateError> {
        if let Some(why) = &w.broken {
            return Err(StateError::Unreachable(why.clone()));
        }
        match (&*w.file).write_all(bytes) {
            Ok(()) => {
                w.len += bytes.len() as u64;
                w.dirty = true;
                Ok(())
            }
            Err(e) => {
                let why = format!(
                    "the local state journal {} could not be written: {e}",
                    self.path.display()
                );
                // Part of the frame may be in the file: take it back, or later frames would follow
                // a broken one and the next start would refuse the journal.
                if let Err(t) = w.file.set_len(w.len) {
                    tracing::error!(path = %self.path.display(), error = %t, "a failed journal write could not be taken back; the local state refuses writes until restart");
                    w.broken = Some(format!("{why}; and it could not be taken back: {t}"));
                }
                Err(StateError::Unreachable(why))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(changes: &[Change<'_>]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for c in changes {
            encode(c, &mut out).unwrap();
        }
        out
    }

    fn all() -> Vec<Change<'static>> {
        vec![
            Change::Record {
                route: "payments",
                digest: [7; 16],
                record: Some(Record {
                    fingerprint: [1; 32],
                    expires_ms: 1_700_000_000_000,
                    bytes: 300,
                    state: State::InFlight {
                        attempt: Some("primary"),
                        resumed: true,
                        token: 42,
                        lease_until_ms: 1_700_000_030_000,
                        kept: Some(Cow::Borrowed(b"kept before the resume")),
                    },
                }),
            },
            Change::Record {
                route: "payments",
                digest: [8; 16],
                record: Some(Record {
                    fingerprint: [2; 32],
                    expires_ms: 5,
                    bytes: 9,
                    state: State::InFlight {
                        attempt: None,
                        resumed: false,
                        token: 1,
                        lease_until_ms: 0,
                        kept: None,
                    },
                }),
            },
            Change::Record {
                route: "payments",
                digest: [9; 16],
                record: Some(Record {
                    fingerprint: [3; 32],
                    expires_ms: 6,
                    bytes: 10,
                    state: State::Done {
                        status: 201,
                        provider: "backup",
                        body_at: 3,
                        blob: b"a:b\n{}",
                    },
                }),
            },
            Change::Record {
                route: "r",
                digest: [10; 16],
                record: Some(Record {
                    fingerprint: [4; 32],
                    expires_ms: 7,
                    bytes: 11,
                    state: State::Unknown {
                        pinned: "backup",
                        kept: Some(Cow::Borrowed(b"")),
                    },
                }),
            },
            Change::Record {
                route: "r",
                digest: [10; 16],
                record: None,
            },
            Change::Pin {
                id: "pi_12345678",
                provider: "primary",
                until_ms: 99,
            },
            Change::Event {
                webhook: "stripe",
                id: "evt_1",
                expires_ms: 100,
            },
            Change::Tokens { high: u64::MAX - 1 },
        ]
    }

    #[test]
    fn every_change_reads_back_as_written() {
        let written = all();
        let buf = frames(&written);
        let mut read = Vec::new();
        let s = scan(&buf, |_, c| read.push(c)).unwrap();
        assert_eq!(read, written);
        assert_eq!((s.valid, s.torn), (buf.len(), 0));
    }

    /// The payload of a record frame as the format before kept requests wrote it, built by hand.
    fn old_record(state: &[u8]) -> Vec<u8> {
        let mut p = vec![TAG_RECORD];
        p.extend_from_slice(&1u32.to_le_bytes());
        p.push(b'r');
        p.extend_from_slice(&[5; 16]);
        p.extend_from_slice(&[6; 32]);
        p.extend_from_slice(&77u64.to_le_bytes());
        p.extend_from_slice(&200u32.to_le_bytes());
        p.extend_from_slice(state);
        p
    }

    #[test]
    fn frames_written_before_records_kept_requests_read_as_keeping_nothing() {
        let mut unknown = vec![STATE_UNKNOWN];
        unknown.extend_from_slice(&6u32.to_le_bytes());
        unknown.extend_from_slice(b"backup");
        let mut flying = vec![STATE_IN_FLIGHT, 1];
        flying.extend_from_slice(&7u32.to_le_bytes());
        flying.extend_from_slice(b"primary");
        flying.push(1);
        flying.extend_from_slice(&9u64.to_le_bytes());
        flying.extend_from_slice(&10u64.to_le_bytes());
        let expected = [
            State::Unknown {
                pinned: "backup",
                kept: None,
            },
            State::InFlight {
                attempt: Some("primary"),
                resumed: true,
                token: 9,
                lease_until_ms: 10,
                kept: None,
            },
        ];
        for (state, want) in [unknown, flying].iter().zip(expected) {
            let payload = old_record(state);
            let change = decode(&payload).unwrap();
            let Change::Record {
                record: Some(r), ..
            } = &change
            else {
                panic!("{change:?}")
            };
            assert_eq!(r.state, want);
            assert_eq!((r.expires_ms, r.bytes), (77, 200));
            // Nothing kept is written exactly as before.
            let mut again = Vec::new();
            encode(&change, &mut again).unwrap();
            assert_eq!(&again[8..], &payload[..]);
        }
        // A kept field cut short is not taken for a frame without one.
        let mut cut = old_record(&[STATE_UNKNOWN, 1, 0, 0, 0, b'p']);
        cut.extend_from_slice(&100u32.to_le_bytes());
        cut.extend_from_slice(b"short");
        assert!(decode(&cut).is_err());
    }

    #[test]
    fn a_torn_last_frame_is_cut_wherever_it_was_torn() {
        let whole = frames(&all());
        let before_last = frames(&all()[..7]).len();
        for cut in before_last + 1..whole.len() {
            let mut n = 0;
            let s = scan(&whole[..cut], |_, _| n += 1).unwrap();
            assert_eq!(n, 7, "cut at {cut}");
            assert_eq!((s.valid, s.torn), (before_last, cut - before_last));
        }
        // The last frame whole but its bytes wrong (a write that reached the disk in part).
        let mut bad = whole.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert_eq!(scan(&bad, |_, _| {}).unwrap().valid, before_last);
        // A tail of zeros after a machine crash.
        let mut zeros = whole.clone();
        zeros.extend_from_slice(&[0; 4096]);
        let s = scan(&zeros, |_, _| {}).unwrap();
        assert_eq!((s.valid, s.torn), (whole.len(), 4096));
    }

    #[test]
    fn corruption_before_the_last_frame_is_refused() {
        let mut buf = frames(&all());
        let second = frames(&all()[..1]).len();
        buf[second + 12] ^= 0x01;
        let e = scan(&buf, |_, _| {}).unwrap_err();
        assert_eq!(e.offset, second);
        // A length no frame is written with, even in the last frame.
        let mut buf = frames(&all());
        buf[second..second + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(scan(&buf, |_, _| {}).unwrap_err().offset, second);
        let e = scan(b"not a journal at all", |_, _| {}).unwrap_err();
        assert_eq!(e.offset, 0);
    }
}
