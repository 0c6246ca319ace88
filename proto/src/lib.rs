//! Generated protobuf and tonic code.
//!
//! - [`v1`]: the public `charging.v1` API (Charging service, Admin service).
//! - [`internal`]: node-to-node Raft transport (`charging.internal.v1`).
//! - [`charging_ops!`]: the operation table, one row per `charging.v1`
//!   call, from which the node and the client make what each call needs.
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("charging.v1");
}

pub mod internal {
    tonic::include_proto!("charging.internal.v1");
}

mod ops;

/// gRPC metadata keys the API uses, defined once for nodes and clients.
pub mod headers {
    /// On an `UNAVAILABLE` status: the node id of the shard's leader, if known.
    pub const LEADER_NODE: &str = "x-leader-node";
    /// On an `UNAVAILABLE` status: the leader's public address, `host:port`
    /// (the same form as `ShardMap.leader_addr`); a client adds its scheme.
    pub const LEADER_ADDR: &str = "x-leader-addr";
    /// Marks a call forwarded by a node's front door: the receiver answers
    /// it itself, never forwarding again. A client sets it to ask a node not
    /// to forward (the answer is then `UNAVAILABLE` with a leader hint).
    pub const FORWARDED: &str = "x-charging-forwarded";
    /// Restricts a forwarded SetTariff to one shard (internal).
    pub const ONLY_SHARD: &str = "x-charging-shard";
    /// Headers only a node may send: on a TLS listener they are removed from
    /// the calls of anyone without a node certificate. (`FORWARDED` is not
    /// among them: it only narrows what the receiver does.)
    pub const INTERNAL: &[&str] = &[ONLY_SHARD];
}

/// 64-bit FNV-1a: the stable hash that maps accounts to shards.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard of an account: `fnv1a64(account) mod shards`. Nodes and the
/// client library share this one definition.
pub fn shard_of(account: &str, shards: u32) -> u32 {
    (fnv1a64(account.as_bytes()) % shards.max(1) as u64) as u32
}

/// Encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("charging_descriptor");
