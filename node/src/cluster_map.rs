//! The cluster map's data: what the metadata group replicates (nodes, the
//! intended replicas of each shard, preferred leaders), and the placement
//! driver's last view. Plain data at the bottom floor, so the data plane
//! (the state machine that applies map changes, the front door that routes
//! by it) reads it without reaching up into the control plane that
//! decides it (`control::meta`, `control::placement`).
use crate::ids::{NodeId, ShardId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A node as recorded in the map.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeEntry {
    pub public: String,
    pub internal: String,
    /// Set by `drain`: the placement driver moves every replica off it.
    pub draining: bool,
}

/// The replicated shard map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterMap {
    /// 1 for the first map, +1 on every change.
    pub version: u64,
    pub shards: u32,
    /// Replicas each shard should have.
    pub replication_factor: u32,
    pub nodes: BTreeMap<u64, NodeEntry>,
    /// Intended replicas (member ids: node << 32 | incarnation) of each shard.
    pub placement: BTreeMap<ShardId, Vec<NodeId>>,
    /// Preferred leader (node id) of each shard, spread evenly by the
    /// placement driver; leaders hand over to it (raft::balance).
    pub leaders: BTreeMap<ShardId, u64>,
    /// Incarnation the next new replica gets (unique over the cluster's life,
    /// so a replica returning to a node it left never reuses a member id).
    pub next_incarnation: u32,
    /// Node ids taken out with `remove`: never accepted again (their replica
    /// ids may still sit in old logs).
    pub removed: std::collections::BTreeSet<u64>,
    /// Each node's disk id: a random id its data dir got when it was first
    /// used, registered by the node once it runs. A node whose data dir has
    /// another id (or none: an empty dir) lost or swapped its data, and must
    /// not take part under its old member ids (see `process::start`).
    pub disks: BTreeMap<u64, u64>,
}

impl ClusterMap {
    /// Node ids the map places `shard` on.
    pub fn nodes_of(&self, shard: ShardId) -> Vec<u64> {
        self.placement
            .get(&shard)
            .map(|r| r.iter().map(|r| crate::ids::node_of(*r)).collect())
            .unwrap_or_default()
    }

    /// This node's intended replica of `shard`, if any.
    pub fn replica_on(&self, shard: ShardId, node: u64) -> Option<NodeId> {
        self.placement
            .get(&shard)?
            .iter()
            .copied()
            .find(|r| crate::ids::node_of(*r) == node)
    }
}

/// What the driver last saw (shown by `Admin/Status` on the metadata leader).
#[derive(Debug, Clone, Default)]
pub struct DriverStatus {
    pub moves_in_progress: u32,
    pub moves_total: u64,
}
