//! Leader spreading: each shard has a preferred leader node, chosen by the
//! placement driver so leaders spread evenly (the cluster map's `leaders`);
//! without one, the voter at position `shard mod voters` in node order.
//! Every node runs [`run`]: it hands leadership of the shards it leads to
//! their preferred node once that replica is caught up. Only the current
//! leader acts, so nodes never fight; if the preferred node is down, the
//! shard stays where it is.
use crate::raft::clock_check::ClockCheck;
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
///
/// With `clock`: a node whose clock is off (see [`ClockCheck`]) hands every
/// shard it leads to any caught-up voter instead; and no shard is handed to
/// a node whose clock is off from this one's.
pub async fn rebalance_once(
    me: u64,
    shards: &[ShardHandle],
    map: Option<&crate::cluster_map::ClusterMap>,
    clock: Option<&ClockCheck>,
) -> usize {
    let off = clock.is_some_and(|c| c.refusal().is_some());
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
        let caught_up_voter = |want: NodeId| {
            matched
                .iter()
                .any(|(id, idx)| *id == want && last.saturating_sub(*idx) <= MAX_TRANSFER_LAG)
        };
        let want = if off {
            // Any other caught-up voter: this node must not decide.
            voters
                .iter()
                .copied()
                .find(|r| *r != leader && caught_up_voter(*r))
        } else {
            let from_map = map
                .and_then(|m| m.leaders.get(&h.shard))
                .and_then(|n| voters.iter().copied().find(|r| node_of(*r) == *n));
            from_map
                .or_else(|| preferred_leader(h.shard, &voters))
                .filter(|w| clock.is_none_or(|c| c.peer_within(node_of(*w))))
        };
        let Some(want) = want else {
            continue;
        };
        if want == leader {
            continue;
        }
        let caught_up = caught_up_voter(want);
        if caught_up && h.raft.trigger().transfer_leader(want).await.is_ok() {
            if off {
                tracing::warn!(
                    shard = h.shard,
                    to = node_of(want),
                    "leader handed over: this node's clock is off"
                );
            } else {
                tracing::info!(
                    shard = h.shard,
                    to = node_of(want),
                    "leader handed to preferred node"
                );
            }
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
    clock: std::sync::Arc<ClockCheck>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let shards: Vec<ShardHandle> = hosted.iter().map(|h| h.clone()).collect();
        let map = meta.view().state.cluster_map.clone();
        rebalance_once(me, &shards, map.as_deref(), Some(&clock)).await;
    }
}

/// Measures this node's clock against every other node's once a second
/// (see [`ClockCheck`]), exports the offsets, says when the node goes off
/// or back, and while it is off hands away the shards it leads.
pub async fn run_clock_probe(
    me: u64,
    peers: std::sync::Arc<crate::raft::network::Peers>,
    members: std::collections::BTreeMap<u64, String>,
    hosted: crate::shard::Hosted,
    meta: crate::raft::state_machine::ShardStore,
    clock: std::sync::Arc<ClockCheck>,
    mut stop: watch::Receiver<bool>,
) {
    let label = crate::metrics_http::label(me);
    let mut was_off = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // The map's nodes once there is one (scale-out), else the config's.
        let map = meta.view().state.cluster_map.clone();
        let nodes: Vec<(u64, String)> = match map.as_deref() {
            Some(m) => m
                .nodes
                .iter()
                .map(|(id, e)| (*id, e.internal.clone()))
                .collect(),
            None => members.iter().map(|(id, a)| (*id, a.clone())).collect(),
        };
        let probes = nodes.iter().filter(|(id, _)| *id != me).map(|(id, addr)| {
            let peers = peers.clone();
            async move {
                (
                    *id,
                    peers.probe_clock(addr, Duration::from_millis(500)).await,
                )
            }
        });
        for (id, r) in futures::future::join_all(probes).await {
            if let Ok(offset) = r {
                clock.record(id, offset);
                metrics::gauge!("charging_clock_offset_ms", "node" => label.clone(),
                    "peer" => crate::metrics_http::label(id))
                .set(offset as f64);
            }
        }
        let off = clock.evaluate(nodes.len().max(1));
        metrics::gauge!("charging_clock_off", "node" => label.clone()).set(if off {
            1.0
        } else {
            0.0
        });
        if off != was_off {
            if off {
                tracing::error!(
                    node = me,
                    offsets_ms = ?clock.offsets(),
                    bound_ms = clock.bound_ms(),
                    "this node's clock is off from its peers' beyond the clock bound: \
                     its shard leaders stop deciding and hand over"
                );
            } else {
                tracing::info!(node = me, "this node's clock is within the bound again");
            }
            was_off = off;
        }
        if off {
            let shards: Vec<ShardHandle> = hosted.iter().map(|h| h.clone()).collect();
            rebalance_once(me, &shards, map.as_deref(), Some(&clock)).await;
        }
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
