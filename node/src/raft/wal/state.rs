//! The state the log rebuilds: each group's log in memory ([`GroupState`]),
//! and which segments still hold entries someone needs ([`Tracker`]).
use super::record::{Entry, GroupMark, LogId, Vote};
use crate::raft::ShardId;
use openraft::entry::RaftEntry;
use std::collections::BTreeMap;

/// One write as the writer thread and the replay see it.
#[derive(Debug, Clone, Copy)]
pub(super) enum Op {
    /// No record: completes once everything queued before it is written.
    Barrier,
    Entries {
        first: u64,
        last: LogId,
    },
    TruncateAfter(Option<LogId>),
    Purge(LogId),
    Vote(Vote),
    Committed(Option<LogId>),
}

/// One group's log, all in memory: reads never touch the disk.
#[derive(Debug, Default)]
pub(super) struct GroupState {
    pub log: BTreeMap<u64, Entry>,
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub purged: Option<LogId>,
}

impl GroupState {
    /// Id of the last entry, or the last purged id when there is none.
    pub fn last(&self) -> Option<LogId> {
        self.log
            .values()
            .next_back()
            .map(|e| e.log_id())
            .or(self.purged)
    }

    pub fn append(&mut self, entries: impl IntoIterator<Item = Entry>) {
        for e in entries {
            self.log.insert(e.index(), e);
        }
    }

    pub fn truncate_after(&mut self, last: Option<LogId>) {
        match last {
            Some(l) => drop(self.log.split_off(&(l.index() + 1))),
            None => self.log.clear(),
        }
    }

    pub fn purge(&mut self, upto: LogId) {
        self.log = self.log.split_off(&(upto.index() + 1));
        if self.purged < Some(upto) {
            self.purged = Some(upto);
        }
    }

    /// Applies a segment header: the group's state when that segment began.
    /// Entries a deleted segment had truncated or purged go here.
    pub fn restore(&mut self, mark: &GroupMark) {
        self.vote = mark.vote;
        self.committed = mark.committed;
        if let Some(p) = mark.purged {
            self.purge(p);
        }
        self.truncate_after(mark.last);
    }

    pub fn mark(&self) -> GroupMark {
        GroupMark {
            vote: self.vote,
            committed: self.committed,
            purged: self.purged,
            last: self.last(),
        }
    }

    /// After replay: entries are contiguous and start right after the purged id.
    pub fn check(&self) -> Result<(), String> {
        let mut expect = self.purged.map(|p| p.index() + 1);
        for (&i, e) in &self.log {
            if e.index() != i {
                return Err(format!("entry {} stored at index {i}", e.log_id()));
            }
            if let Some(x) = expect {
                if i != x {
                    return Err(format!("hole: expected index {x}, found {i}"));
                }
            }
            expect = Some(i + 1);
        }
        Ok(())
    }
}

/// Per segment, per group, the index range of entries the segment holds that
/// may still be needed: not purged and not truncated away. A segment with no
/// range left (and not the active one) can be deleted.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    /// Each known group's non-entry state as written so far: the headers of
    /// the next segment.
    pub groups: BTreeMap<ShardId, GroupMark>,
    segments: BTreeMap<u64, BTreeMap<ShardId, (u64, u64)>>,
}

impl Tracker {
    pub fn add_segment(&mut self, seq: u64) {
        self.segments.entry(seq).or_default();
    }

    pub fn remove_segment(&mut self, seq: u64) {
        self.segments.remove(&seq);
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Accounts for `op` of `group`, written to segment `seq`.
    pub fn apply(&mut self, seq: u64, group: ShardId, op: &Op) {
        let mark = self.groups.entry(group).or_default();
        match *op {
            Op::Barrier => {}
            Op::Entries { first, last } => {
                mark.last = Some(last);
                let r = self
                    .segments
                    .entry(seq)
                    .or_default()
                    .entry(group)
                    .or_insert((first, last.index()));
                r.0 = r.0.min(first);
                r.1 = r.1.max(last.index());
            }
            Op::TruncateAfter(t) => {
                mark.last = t.max(mark.purged);
                self.cap_after(group, t.map(|l| l.index()));
            }
            Op::Purge(p) => {
                mark.purged = mark.purged.max(Some(p));
                mark.last = mark.last.max(Some(p));
                self.cap_upto(group, p.index());
            }
            Op::Vote(v) => mark.vote = Some(v),
            Op::Committed(c) => mark.committed = c,
        }
    }

    /// Accounts for a segment header read back during replay.
    pub fn apply_header(&mut self, group: ShardId, mark: &GroupMark) {
        self.groups.insert(group, *mark);
        if let Some(p) = mark.purged {
            self.cap_upto(group, p.index());
        }
        self.cap_after(group, mark.last.map(|l| l.index()));
    }

    /// Entries after `index` are gone (`None`: all).
    fn cap_after(&mut self, group: ShardId, index: Option<u64>) {
        for live in self.segments.values_mut() {
            let Some(r) = live.get_mut(&group) else {
                continue;
            };
            match index {
                Some(t) if r.0 <= t => r.1 = r.1.min(t),
                _ => {
                    live.remove(&group);
                }
            }
        }
    }

    /// Entries up to `index` (inclusive) are gone.
    fn cap_upto(&mut self, group: ShardId, index: u64) {
        for live in self.segments.values_mut() {
            let Some(r) = live.get_mut(&group) else {
                continue;
            };
            if r.1 <= index {
                live.remove(&group);
            } else {
                r.0 = r.0.max(index + 1);
            }
        }
    }

    /// Segments other than `active` that hold no needed entry.
    pub fn dead_segments(&self, active: u64) -> Vec<u64> {
        self.segments
            .iter()
            .filter(|(&seq, live)| seq != active && live.is_empty())
            .map(|(&seq, _)| seq)
            .collect()
    }
}
