//! The simulator's log engine: entries are written to a volatile tail and
//! flushed (made durable, then acknowledged to openraft) after a short,
//! seeded delay of simulated time. A simulated crash ([`SimLog::crash`])
//! drops the unflushed tail, so a node that acknowledged before its flush
//! would be caught. Storage is shared by clones and survives a restart.
use charging_node::raft::log_store::LogEngine;
use charging_node::raft::TypeConfig;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Default)]
struct Inner {
    last_purged: Option<LogIdOf<TypeConfig>>,
    /// Flushed entries: survive a crash.
    durable: BTreeMap<u64, EntryOf<TypeConfig>>,
    /// Written, not yet flushed: lost on a crash.
    volatile: BTreeMap<u64, EntryOf<TypeConfig>>,
    committed: Option<LogIdOf<TypeConfig>>,
    vote: Option<VoteOf<TypeConfig>>,
    /// Bumped by each crash: a flush scheduled before it does nothing.
    epoch: u64,
    rng: u64,
    /// Entries lost to crashes, for the run's figures.
    lost: u64,
}

#[derive(Debug, Clone, Default)]
pub struct SimLog {
    inner: Arc<Mutex<Inner>>,
    /// Largest flush delay, in simulated ms (0 = flush at once).
    max_flush_ms: u64,
}

impl SimLog {
    pub fn new(seed: u64, max_flush_ms: u64) -> SimLog {
        SimLog {
            inner: Arc::new(Mutex::new(Inner {
                rng: seed | 1,
                ..Inner::default()
            })),
            max_flush_ms,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A crash: the unflushed tail is gone.
    pub fn crash(&self) {
        let mut g = self.lock();
        g.lost += g.volatile.len() as u64;
        g.volatile.clear();
        g.epoch += 1;
    }

    /// Entries lost to crashes so far.
    pub fn lost(&self) -> u64 {
        self.lock().lost
    }

    /// For diagnosis: every entry (durable, then the unflushed tail shadowing
    /// it), as (index, term, the entry).
    pub fn dump(&self) -> Vec<(u64, u64, EntryOf<TypeConfig>)> {
        let g = self.lock();
        Self::entries(&g)
            .map(|(i, e)| (*i, e.log_id().leader_id.term, e.clone()))
            .collect()
    }

    fn entries(g: &Inner) -> impl Iterator<Item = (&u64, &EntryOf<TypeConfig>)> {
        // The volatile tail shadows durable entries at the same index.
        g.durable
            .iter()
            .filter(|(i, _)| !g.volatile.contains_key(i))
            .chain(g.volatile.iter())
    }
}

impl LogEngine for SimLog {
    fn engine_name(&self) -> &'static str {
        "sim"
    }
}

impl RaftLogReader<TypeConfig> for SimLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let g = self.lock();
        let mut out: BTreeMap<u64, EntryOf<TypeConfig>> = BTreeMap::new();
        for (i, e) in Self::entries(&g) {
            if range.contains(i) {
                out.insert(*i, e.clone());
            }
        }
        Ok(out.into_values().collect())
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        Ok(self.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for SimLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let g = self.lock();
        let last = Self::entries(&g)
            .map(|(_, e)| e.log_id())
            .max_by_key(|l| l.index())
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
        let (upto, epoch, delay) = {
            let mut g = self.lock();
            let mut upto = 0;
            for e in entries {
                upto = e.index();
                g.volatile.insert(e.index(), e);
            }
            g.rng ^= g.rng << 13;
            g.rng ^= g.rng >> 7;
            g.rng ^= g.rng << 17;
            let delay = if self.max_flush_ms == 0 {
                0
            } else {
                g.rng % (self.max_flush_ms + 1)
            };
            (upto, g.epoch, delay)
        };
        let inner = self.inner.clone();
        let flush = move || {
            let mut g = inner.lock().unwrap_or_else(|p| p.into_inner());
            if g.epoch != epoch {
                return; // crashed before the flush: never acknowledged
            }
            let keep = g.volatile.split_off(&(upto + 1));
            let flushed = std::mem::replace(&mut g.volatile, keep);
            g.durable.extend(flushed);
            drop(g);
            callback.io_completed(Ok(()));
        };
        if delay == 0 {
            flush();
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                flush();
            });
        }
        Ok(())
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let start = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        let mut g = self.lock();
        if std::env::var_os("CHAOS_DUMP").is_some() {
            let cut: Vec<(u64, u64)> = Self::entries(&g)
                .filter(|(i, _)| **i >= start)
                .map(|(i, e)| (*i, e.log_id().leader_id.term))
                .collect();
            if !cut.is_empty() {
                eprintln!(
                    "simlog truncate_after {last_log_id:?}: cuts {cut:?} (vote {:?})",
                    g.vote
                );
            }
        }
        let _ = g.durable.split_off(&start);
        let _ = g.volatile.split_off(&start);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let mut g = self.lock();
        let from = log_id.index() + 1;
        g.durable = g.durable.split_off(&from);
        g.volatile = g.volatile.split_off(&from);
        if g.last_purged.as_ref() < Some(&log_id) {
            g.last_purged = Some(log_id);
        }
        Ok(())
    }
}
