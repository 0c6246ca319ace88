//! The clock bound (DESIGN §3, `clock_bound_ms`), enforced: a node measures
//! its clock against each peer's (a probe on the Raft port every second,
//! offset = the peer's clock minus the midpoint of the round trip), and a
//! node whose clock is off by more than the bound from the peers it can
//! measure, with none agreeing, is *off*: its shard leaders stop deciding
//! (they answer `UNAVAILABLE` and hand leadership to a peer), because
//! decisions carry its clock into the log. Dedup windows are measured in log
//! time: a slow leader would let a retry outlive its dedup entry and apply
//! twice; a fast one would refuse everything as too old and push log time
//! forward for good.
//!
//! Positive evidence only: with no fresh measurement (start, a partition),
//! the node is not off.
use crate::maps::DashMap;
use crate::raft::NodeId;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use tokio::time::{Duration, Instant};

/// A measurement older than this is not counted.
const FRESH: Duration = Duration::from_secs(5);

/// Offsets of this node's clock against its peers'.
#[derive(Debug)]
pub struct ClockCheck {
    bound_ms: u64,
    /// Peer node -> (peer clock - ours in ms, when measured).
    offsets: DashMap<NodeId, (i64, Instant)>,
    /// Members of the cluster, this node included (for the majority).
    members: AtomicUsize,
    off: AtomicBool,
    /// Median offset of the last evaluation (for the refusal message).
    median_ms: AtomicI64,
}

impl ClockCheck {
    pub fn new(bound_ms: u64) -> Self {
        ClockCheck {
            bound_ms,
            offsets: DashMap::default(),
            members: AtomicUsize::new(1),
            off: AtomicBool::new(false),
            median_ms: AtomicI64::new(0),
        }
    }

    pub fn bound_ms(&self) -> u64 {
        self.bound_ms
    }

    /// Records one probe of `peer`.
    pub fn record(&self, peer: NodeId, offset_ms: i64) {
        self.offsets.insert(peer, (offset_ms, Instant::now()));
    }

    /// Re-evaluates with `members` nodes in the cluster (this one counted);
    /// returns whether this node is off now.
    pub fn evaluate(&self, members: usize) -> bool {
        self.members.store(members.max(1), Ordering::Relaxed);
        let now = Instant::now();
        let mut fresh: Vec<i64> = self
            .offsets
            .iter()
            .filter(|e| now.duration_since(e.value().1) < FRESH)
            .map(|e| e.value().0)
            .collect();
        fresh.sort_unstable();
        let within = |o: &i64| o.unsigned_abs() <= self.bound_ms;
        let agree = fresh.iter().filter(|o| within(o)).count();
        let disagree = fresh.len() - agree;
        // Off: someone measured says so, and this node plus those that agree
        // with it are no majority of the cluster.
        let off = disagree > 0 && (1 + agree) * 2 <= members.max(1);
        let median = fresh.get(fresh.len() / 2).copied().unwrap_or(0);
        self.median_ms.store(median, Ordering::Relaxed);
        self.off.store(off, Ordering::Relaxed);
        off
    }

    /// Why this node must not decide now, if it must not.
    pub fn refusal(&self) -> Option<String> {
        self.off.load(Ordering::Relaxed).then(|| {
            format!(
                "this node's clock is off by about {} ms from its peers' (bound {} ms): \
                 it does not decide; retry with the same request id",
                -self.median_ms.load(Ordering::Relaxed),
                self.bound_ms
            )
        })
    }

    /// Whether `peer`'s clock is, as last measured, within the bound of
    /// ours (unknown: yes). The leader balancer hands no leadership to a
    /// peer that is not.
    pub fn peer_within(&self, peer: NodeId) -> bool {
        self.offsets
            .get(&peer)
            .is_none_or(|e| e.value().0.unsigned_abs() <= self.bound_ms)
    }

    /// Last measured offset of each peer (peer clock - ours, ms).
    pub fn offsets(&self) -> Vec<(NodeId, i64)> {
        self.offsets
            .iter()
            .map(|e| (*e.key(), e.value().0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_only_with_evidence_and_no_majority() {
        let c = ClockCheck::new(1_000);
        assert!(!c.evaluate(3), "nothing measured: not off");
        c.record(2, 900_000);
        assert!(c.evaluate(3), "the one peer measured disagrees");
        c.record(3, 40);
        assert!(!c.evaluate(3), "one peer agrees: with it a majority of 3");
        c.record(3, -900_000);
        assert!(c.evaluate(3), "both peers disagree");
        assert!(c.refusal().unwrap().contains("off by about"));
        // Five nodes: one agreeing peer is not enough.
        let c = ClockCheck::new(1_000);
        for (p, o) in [(2, 5), (3, 900_000), (4, 900_000), (5, 900_000)] {
            c.record(p, o);
        }
        assert!(c.evaluate(5));
        c.record(3, 10);
        assert!(!c.evaluate(5), "two agreeing peers and this node: 3 of 5");
        assert!(c.peer_within(3) && !c.peer_within(4) && c.peer_within(9));
    }
}
