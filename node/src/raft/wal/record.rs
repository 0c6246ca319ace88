//! On-disk format. A segment is a sequence of frames:
//!
//! ```text
//! len: u32 LE | crc32(payload): u32 LE | payload (len bytes, a codec-encoded Record)
//! ```
//!
//! A frame with `len == 0` is never written, so a zero-filled tail (what some
//! file systems leave after a crash) reads as torn, not as empty records.
use crate::raft::{ShardId, TypeConfig};
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

pub(super) type Entry = EntryOf<TypeConfig>;
pub(super) type LogId = LogIdOf<TypeConfig>;
pub(super) type Vote = VoteOf<TypeConfig>;

/// Bytes before the payload: length and checksum.
pub(super) const FRAME_HEADER_BYTES: usize = 8;

/// A larger length is corruption, not a record (an append is bounded by
/// openraft's `max_payload_entries`, far below this).
pub(super) const RECORD_BYTES_MAX: usize = 1 << 30;

/// One record of the log, tagged by Raft group. Variant order is the on-disk
/// tag: append new kinds at the end.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Record<'a> {
    /// Entries appended to the group's log (overwrites same indexes).
    Entries {
        group: ShardId,
        entries: Cow<'a, [Entry]>,
    },
    /// Entries after `last` removed (`None`: all of them).
    TruncateAfter {
        group: ShardId,
        last: Option<LogId>,
    },
    /// Entries up to `upto` (inclusive) removed; `upto` is the last purged id.
    Purge {
        group: ShardId,
        upto: LogId,
    },
    Vote {
        group: ShardId,
        vote: Vote,
    },
    Committed {
        group: ShardId,
        committed: Option<LogId>,
    },
    /// Written first in every new segment, one per known group: the group's
    /// whole non-entry state at that point, so older segments can be deleted
    /// without losing a vote, a purge or a truncation.
    Header {
        group: ShardId,
        mark: GroupMark,
    },
}

/// A group's state apart from its entries: what a segment header restores.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct GroupMark {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
    /// Id of the last entry, or `purged` when there is none.
    pub last: Option<LogId>,
}

/// Appends one frame holding `payload` to `out`.
pub(super) fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    debug_assert!(!payload.is_empty() && payload.len() <= RECORD_BYTES_MAX);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What is at an offset of a segment.
pub(super) enum Scan<'a> {
    /// A whole frame with a good checksum; the next one starts at `next`.
    Frame { payload: &'a [u8], next: usize },
    /// Clean end of the segment.
    End,
    /// A short or bad frame: a torn write if it is the unsynced tail.
    Bad(&'static str),
}

/// Reads the frame at `at`.
pub(super) fn scan(buf: &[u8], at: usize) -> Scan<'_> {
    let rest = &buf[at..];
    if rest.is_empty() {
        return Scan::End;
    }
    if rest.len() < FRAME_HEADER_BYTES {
        return Scan::Bad("short frame header");
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len == 0 || len > RECORD_BYTES_MAX {
        return Scan::Bad("bad frame length");
    }
    let Some(payload) = rest.get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len) else {
        return Scan::Bad("short frame payload");
    };
    if crc32fast::hash(payload) != crc {
        return Scan::Bad("checksum mismatch");
    }
    Scan::Frame {
        payload,
        next: at + FRAME_HEADER_BYTES + len,
    }
}
