//! The control plane: what the cluster is and where its shards live.
//!
//! - [`meta`]: the replicated cluster map (the metadata Raft group).
//! - [`placement`]: the placement driver (scale-out moves, membership
//!   reconciliation, joining).
//! - [`balance`]: leader spreading (hands each shard's leadership to its
//!   preferred node).
//! - [`replicas`]: the shard replicas this node hosts, created and dropped
//!   at run time.
//! - [`admin`]: the `Admin` gRPC service (status, map, node operations).
//!
//! A floor above the data plane: it may use `frontdoor`, `shard` and `raft`,
//! never the other way round (`node/tests/layers.rs`).
pub mod admin;
pub mod balance;
pub mod meta;
pub mod placement;
pub mod replicas;
