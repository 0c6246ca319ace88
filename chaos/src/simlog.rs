//! The simulator's log engine: entries are written to a volatile tail and
//! flushed (made durable, then acknowledged to openraft) after a short,
//! seeded delay of simulated time. A simulated crash ([`SimLog::crash`])
//! drops the unflushed tail, so a node that acknowledged before its flush
//! would be caught. Storage is shared by clones and survives a restart.
//!
//! Like the node's WAL, it is one ordered stream: the vote is durable when
//! `save_vote` returns, and a saved `committed` is durable only once every
//! entry written before it is (the WAL writes it as a record after them), so
//! a crash never leaves `committed` ahead of the surviving log.
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
    /// The latest `committed` saved (what a running node reads back).
    committed: Option<LogIdOf<TypeConfig>>,
    /// The `committed` a crash keeps: saved when nothing was unflushed, or
    /// made durable by the flush of everything written before it.
    durable_committed: Option<LogIdOf<TypeConfig>>,
    /// A saved `committed` waiting for the entries before it: (value, the
    /// highest unflushed index when it was saved).
    pending_committed: Option<(Option<LogIdOf<TypeConfig>>, u64)>,
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
        g.committed = g.durable_committed;
        g.pending_committed = None;
        g.epoch += 1;
    }

    /// Log ids of the unflushed tail (what a crash now would lose).
    pub fn unflushed(&self) -> Vec<LogIdOf<TypeConfig>> {
        self.lock().volatile.values().map(|e| e.log_id()).collect()
    }

    /// Whether this log holds `id`, flushed or not.
    pub fn holds(&self, id: &LogIdOf<TypeConfig>) -> bool {
        let g = self.lock();
        let e = g.volatile.get(&id.index()).or(g.durable.get(&id.index()));
        e.is_some_and(|e| e.log_id() == *id)
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
        let mut g = self.lock();
        g.committed = committed;
        match g.volatile.keys().next_back().copied() {
            None => {
                g.durable_committed = committed;
                g.pending_committed = None;
            }
            Some(last) => g.pending_committed = Some((committed, last)),
        }
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
            if let Some((c, last)) = g.pending_committed {
                if last <= upto || g.volatile.is_empty() {
                    g.durable_committed = c;
                    g.pending_committed = None;
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use charging_node::raft::Batch;

    fn log_id(term: u64, index: u64) -> LogIdOf<TypeConfig> {
        openraft::testing::log_id::<TypeConfig>(term, 1, index)
    }

    fn entry(index: u64) -> EntryOf<TypeConfig> {
        EntryOf::<TypeConfig>::new_normal(
            log_id(1, index),
            Batch {
                log_ts_ms: index,
                events: Default::default(),
            },
        )
    }

    async fn append(log: &mut SimLog, range: std::ops::RangeInclusive<u64>) {
        log.append(range.map(entry), IOFlushed::noop())
            .await
            .expect("append");
    }

    /// A `committed` saved after entries that were never flushed does not
    /// survive a crash: the WAL writes it after them, so it cannot outlive
    /// them. Left ahead of the surviving log, it made a restarted node fail
    /// to start ("Failed to get log entries"), a failure the real WAL
    /// cannot have.
    #[tokio::test]
    async fn committed_is_no_more_durable_than_the_entries_before_it() {
        // Flushes at once: entries 1..=3 and committed 3 are durable.
        let mut log = SimLog::new(7, 0);
        append(&mut log, 1..=3).await;
        log.save_committed(Some(log_id(1, 3))).await.expect("save");
        // From now on, flushes are 1000 s away: entries 4..=5 stay volatile.
        log.max_flush_ms = 1_000_000;
        append(&mut log, 4..=5).await;
        assert_eq!(log.unflushed().len(), 2);
        log.save_committed(Some(log_id(1, 5))).await.expect("save");
        assert_eq!(
            log.read_committed().await.expect("read"),
            Some(log_id(1, 5))
        );
        log.crash();
        assert_eq!(
            log.read_committed().await.expect("read"),
            Some(log_id(1, 3))
        );
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(1, 3)));
        assert!(log.holds(&log_id(1, 3)) && !log.holds(&log_id(1, 4)));
        assert_eq!(log.lost(), 2);
    }

    #[tokio::test]
    async fn a_vote_and_a_committed_with_nothing_unflushed_survive_a_crash() {
        let mut log = SimLog::new(7, 0);
        append(&mut log, 1..=2).await;
        let vote = VoteOf::<TypeConfig>::new(2, 1);
        log.save_vote(&vote).await.expect("vote");
        log.save_committed(Some(log_id(1, 2))).await.expect("save");
        log.crash();
        assert_eq!(log.read_vote().await.expect("read"), Some(vote));
        assert_eq!(
            log.read_committed().await.expect("read"),
            Some(log_id(1, 2))
        );
        assert_eq!(log.lost(), 0);
    }
}
