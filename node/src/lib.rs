//! chargerd: one node of the convergent charging cluster.
//!
//! Map (request path top to bottom):
//! - [`frontdoor`]: gRPC services; validation ([`frontdoor::validate`]),
//!   admission control, routing by [`frontdoor::shard_of`], one-hop forwarding.
//! - [`shard`]: the ractor shard actor hosting accounts as virtual actors; the
//!   shard's only, fenced proposer; and the expiry sweeper.
//! - [`raft`]: openraft type config, log engines, the state machine, and the
//!   internal transport (one channel per peer for every group).
//! - [`ledger`]: pure, deterministic account logic (decide / apply): its own
//!   crate, `node/ledger`, with no runtime, network or clock.
//! - [`node`]: assembles a node from injected edges; [`cluster`]: several
//!   nodes in one process (the `dev` cluster and tests).
//! - [`meta`]: the replicated cluster map; [`placement`]: scale-out (the
//!   placement driver, membership reconciler, join); [`replicas`]: the shard
//!   replicas a node hosts, created and dropped at run time.
//! - [`config`], [`clock`], [`codec`], [`maps`], [`metrics_http`]: limits, time,
//!   bytes, fixed-hasher maps, metrics.
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod config_file;
pub mod error;
pub mod frontdoor;
/// The ledger crate (`node/ledger`), under the name the node's modules use.
pub use charging_ledger as ledger;
pub mod maps;
pub mod meta;
pub mod metrics_http;
pub mod node;
pub mod placement;
pub mod process;
pub mod raft;
pub mod replicas;
pub mod shard;
