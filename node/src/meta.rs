//! Cluster metadata: the shard map as replicated state (DESIGN §2).
//!
//! A small Raft group, [`META_GROUP`], hosted by the cluster's initial
//! members, holds one [`ClusterMap`]: the nodes and their addresses, and the
//! intended replicas of each shard, with a version that grows by one on
//! every change. Changes are compare-and-set on the version
//! (`Event::ClusterMap { expected_version, .. }`), so two writers never both
//! win. Each shard group's own membership stays the authority on who
//! replicates it; the map holds the intent, and `Admin/ShardMap` joins it
//! with the leaders each node observes. Scale-out (issue 5) changes the map
//! through the same event.
use crate::config::NodeConfig;
use crate::ledger::{Event, ShardState};
use crate::raft::state_machine::ShardStore;
use crate::raft::{replica_id, Batch, NodeId, Raft, ShardId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;

/// Group id of the metadata Raft group (beside shards `0..shards`).
pub const META_GROUP: ShardId = u32::MAX;

/// Addresses of a node, as recorded in the map.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeEntry {
    pub public: String,
    pub internal: String,
}

/// The replicated shard map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterMap {
    /// 1 for the first map, +1 on every change.
    pub version: u64,
    pub shards: u32,
    pub nodes: BTreeMap<u64, NodeEntry>,
    /// Intended replicas (member ids: node << 32 | incarnation) of each shard.
    pub placement: BTreeMap<ShardId, Vec<NodeId>>,
}

impl ClusterMap {
    /// The first map of a cluster made from `config`: every shard on every
    /// member (RF = members), incarnation `incarnation`.
    pub fn initial(config: &NodeConfig, incarnation: u32) -> ClusterMap {
        let replicas: Vec<NodeId> = config
            .members
            .keys()
            .map(|n| replica_id(*n, incarnation))
            .collect();
        ClusterMap {
            version: 1,
            shards: config.shards,
            nodes: config
                .members
                .iter()
                .map(|(id, a)| {
                    (
                        *id,
                        NodeEntry {
                            public: a.public.clone(),
                            internal: a.internal.clone(),
                        },
                    )
                })
                .collect(),
            placement: (0..config.shards).map(|s| (s, replicas.clone())).collect(),
        }
    }
}

/// The current map in a metadata state, if one was written.
pub fn map_of(state: &ShardState) -> Option<&ClusterMap> {
    state.cluster_map.as_deref()
}

/// Keeps the map written: whenever this node leads the metadata group and
/// the group holds no map yet, it writes the initial one (compare-and-set on
/// version 0, so concurrent writers cannot both win). Every node runs it, so
/// a bootstrap node that dies before writing does not leave the map empty.
pub async fn run_writer(
    raft: Raft,
    store: ShardStore,
    initial: ClusterMap,
    clock: crate::clock::SharedClock,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if store.view().state.cluster_map.is_none() && raft.as_leader().is_ok() {
            let batch = Batch {
                log_ts_ms: clock.now_ms(),
                events: vec![Event::ClusterMap {
                    map: initial.clone(),
                    expected_version: 0,
                }],
            };
            match tokio::time::timeout(Duration::from_secs(5), raft.client_write(batch)).await {
                Ok(Ok(_)) => tracing::info!(version = initial.version, "cluster map written"),
                Ok(Err(e)) => tracing::debug!(error = %e, "cluster map write failed; retrying"),
                Err(_) => tracing::debug!("cluster map write timed out; retrying"),
            }
        }
        if store.view().state.cluster_map.is_some() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
