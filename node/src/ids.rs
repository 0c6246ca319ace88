//! Ids of shards, nodes and replicas: plain numbers every floor uses.

/// Shard (Raft group) number, `0..shards`.
pub type ShardId = u32;

/// A Raft member id: a replica incarnation (DESIGN §2), `node << 32 |
/// incarnation`. openraft forbids reusing a member id that comes back with an
/// empty log, so a replica that returns to a node it once left gets a new
/// incarnation. Node ids themselves are plain `u64`s below 2^32.
pub type NodeId = u64;

/// The member id of `node`'s replica incarnation `incarnation` (>= 1).
pub const fn replica_id(node: u64, incarnation: u32) -> NodeId {
    (node << 32) | incarnation as u64
}

/// The node hosting a replica.
pub const fn node_of(replica: NodeId) -> u64 {
    replica >> 32
}

/// The incarnation of a replica.
pub const fn incarnation_of(replica: NodeId) -> u32 {
    replica as u32
}

/// Incarnation of the replicas a cluster is created with. Scale-out (issue 5)
/// gives a replica that returns to a node a higher one.
pub const INITIAL_INCARNATION: u32 = 1;
