//! The log-engine interface and its memory engine.
//!
//! A log engine is whatever implements openraft's `RaftLogStorage` for our
//! [`TypeConfig`]. The [`LogEngine`] trait adds what the node needs on top
//! (a name for status and metrics). The memory engine keeps entries and the
//! vote in memory; a clone shares the same log, so a test can "restart" a
//! node with its storage kept. A disk engine (issue 3) slots in beside it.
use super::{NodeId, TypeConfig};
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

/// What the node requires of a Raft log engine.
pub trait LogEngine: RaftLogStorage<TypeConfig> + Clone {
    fn engine_name(&self) -> &'static str;
}

#[derive(Debug, Default)]
struct Inner {
    last_purged: Option<LogIdOf<TypeConfig>>,
    log: BTreeMap<u64, EntryOf<TypeConfig>>,
    committed: Option<LogIdOf<TypeConfig>>,
    vote: Option<VoteOf<TypeConfig>>,
}

/// In-memory log engine (tests, the dev cluster, the simulator).
#[derive(Debug, Default, Clone)]
pub struct MemLog {
    inner: Arc<Mutex<Inner>>,
    _node: NodeId,
}

impl MemLog {
    pub fn new(node: NodeId) -> Self {
        MemLog {
            inner: Arc::default(),
            _node: node,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock means a panic mid-update elsewhere; the data is still
        // a consistent BTreeMap, so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogEngine for MemLog {
    fn engine_name(&self) -> &'static str {
        "memory"
    }
}

impl RaftLogReader<TypeConfig> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        Ok(self
            .lock()
            .log
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        Ok(self.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for MemLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let g = self.lock();
        let last = g
            .log
            .values()
            .next_back()
            .map(|e| e.log_id())
            .or(g.last_purged);
        Ok(LogState {
            last_purged_log_id: g.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        {
            let mut g = self.lock();
            for e in entries {
                g.log.insert(e.index(), e);
            }
        }
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let start = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        let mut g = self.lock();
        let _ = g.log.split_off(&start);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let mut g = self.lock();
        let keep = g.log.split_off(&(log_id.index() + 1));
        g.log = keep;
        if g.last_purged.as_ref() < Some(&log_id) {
            g.last_purged = Some(log_id);
        }
        Ok(())
    }
}
