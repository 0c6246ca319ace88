//! Leader spreading: each shard has a preferred leader node, chosen by the
//! placement driver so leaders spread evenly (the cluster map's `leaders`);
//! without one, the voter at position `shard mod voters` in node order.
//! Every node runs [`run`]: it hands leadership of the shards it leads to
//! their preferred node once that replica is caught up. Only the current
//! leader acts, so nodes never fight; if the preferred node is down, the
//! shard stays where it is.
use crate::raft::{node_of, NodeId, ShardId};
use crate::shard::ShardHandle;
use openraft::async_runtime::WatchReceiver;
use std::time::Duration;
use tokio::sync::watch;

/// A follower within this many entries of the leader may take over.
const MAX_TRANSFER_LAG: u64 = 64;

/// The node that should lead `shard` given its voters (replica ids).
pub fn preferred_leader(shard: ShardId, voters: &[NodeId]) -> Option<NodeId> {
    let mut v: Vec<NodeId> = voters.to_vec();
    v.sort_by_key(|r| node_of(*r));
    v.get(shard as usize % v.len().max(1)).copied()
}

/// One pass: transfers leadership of each shard this node leads to its
/// preferred replica, if that one is caught up. Returns the transfers made.
pub async fn rebalance_once(
    me: u64,
    shards: &[ShardHandle],
    map: Option<&crate::cluster_map::ClusterMap>,
) -> usize {
    let mut moved = 0;
    for h in shards {
        // Copy what we need and drop the borrow before calling into Raft.
        let (leader, voters, last, matched) = {
            let m = h.raft.metrics();
            let m = m.borrow_watched();
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            let matched: Vec<(NodeId, u64)> = m
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .map(|(id, l)| (*id, l.as_ref().map(|l| l.index).unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default();
            (
                m.current_leader,
                voters,
                m.last_log_index.unwrap_or(0),
                matched,
            )
        };
        let Some(leader) = leader else { continue };
        if node_of(leader) != me || !h.is_deciding() {
            continue;
        }
        let from_map = map
            .and_then(|m| m.leaders.get(&h.shard))
            .and_then(|n| voters.iter().copied().find(|r| node_of(*r) == *n));
        let Some(want) = from_map.or_else(|| preferred_leader(h.shard, &voters)) else {
            continue;
        };
        if want == leader {
            continue;
        }
        let caught_up = matched
            .iter()
            .any(|(id, idx)| *id == want && last.saturating_sub(*idx) <= MAX_TRANSFER_LAG);
        if caught_up && h.raft.trigger().transfer_leader(want).await.is_ok() {
            tracing::info!(
                shard = h.shard,
                to = node_of(want),
                "leader handed to preferred node"
            );
            moved += 1;
        }
    }
    moved
}

/// Runs [`rebalance_once`] every `period` until `stop` is set.
pub async fn run(
    me: u64,
    hosted: crate::shard::Hosted,
    meta: crate::raft::state_machine::ShardStore,
    period: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let shards: Vec<ShardHandle> = hosted.iter().map(|h| h.clone()).collect();
        let map = meta.view().state.cluster_map.clone();
        rebalance_once(me, &shards, map.as_deref()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::replica_id;

    #[test]
    fn preferred_leaders_spread_evenly() {
        let voters = [replica_id(3, 1), replica_id(1, 1), replica_id(2, 2)];
        let mut per_node = [0; 4];
        for s in 0..16 {
            per_node[node_of(preferred_leader(s, &voters).unwrap()) as usize] += 1;
        }
        assert_eq!(per_node, [0, 6, 5, 5]);
        assert_eq!(preferred_leader(0, &[]), None);
    }
}
