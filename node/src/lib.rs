//! chargerd: one node of the convergent charging cluster.
//!
//! The node is built in floors. A module may use its own floor and the
//! floors below, never one above; `node/tests/layers.rs` checks every file.
//! Bottom up:
//!
//! 1. **Base**: plain data and tools every floor uses. [`ledger`] (pure
//!    account logic, its own crate `node/ledger` with no runtime, network or
//!    clock), [`ids`], [`config`] (every limit of every floor, in one place),
//!    [`cluster_map`] (the replicated map's data), [`error`] (the one error
//!    type and its gRPC status), [`clock`], [`codec`], [`maps`],
//!    [`metrics_http`], [`tls`] (certificates and who a peer is),
//!    [`listener`] (what every gRPC listener shares: HTTP/2 limits,
//!    connection cap, idle timeout, malformed-input statuses).
//! 2. **Data plane**, the request path, itself in three floors:
//!    - [`raft`]: openraft type config, log engines, the state machine, and
//!      the internal transport (one channel per peer for every group);
//!    - [`shard`]: the ractor shard actor hosting accounts as virtual actors
//!      (the shard's only, fenced proposer), its supervisor, the expiry
//!      sweeper;
//!    - [`frontdoor`]: the public gRPC service; validation, admission
//!      control, routing by [`frontdoor::shard_of`], one-hop forwarding,
//!      and who may call what ([`frontdoor::auth`]: bearer tokens, roles).
//!    - [`nchf`]: the Nchf_ConvergedCharging HTTP producer, a sibling of
//!      the gRPC service above the front door (it calls
//!      [`frontdoor::FrontDoor::mutate`] as gRPC does).
//! 3. **Control plane**, [`control`]: the replicated cluster map (`meta`),
//!    the placement driver (`placement`), leader spreading (`balance`), the
//!    replicas a node hosts (`replicas`) and the `Admin` service (`admin`).
//! 4. **Assembly**: [`node`] builds a node from injected edges, [`cluster`]
//!    runs several in one process (`chargerd dev`, tests), [`process`] and
//!    [`config_file`] make one from a config file.
//!
//! Where new code goes: a new charging operation is ledger (its command
//! and decision), proto (its message and its row in the operation table,
//! `charging_proto::charging_ops!`, which makes its front door
//! [`frontdoor::Mutation`], tonic method, stream arm and client calls); a
//! new limit is a field in [`config`]; a new cluster operation is control
//! plane; anything that starts or wires tasks is assembly. A lower floor
//! that needs something from a higher one takes it as an argument or a
//! trait it defines (as [`frontdoor::ReplicaControl`]).
pub mod clock;
pub mod cluster;
pub mod cluster_map;
pub mod codec;
pub mod config;
pub mod config_file;
pub mod control;
pub mod error;
pub mod frontdoor;
pub mod ids;
pub mod listener;
/// The ledger crate (`node/ledger`), under the name the node's modules use.
pub use charging_ledger as ledger;
pub mod maps;
pub mod metrics_http;
pub mod nchf;
pub mod node;
pub mod process;
pub mod raft;
pub mod shard;
pub mod tls;
