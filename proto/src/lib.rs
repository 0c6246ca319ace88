//! Generated protobuf and tonic code.
//!
//! - [`v1`]: the public `charging.v1` API (Charging service, Admin service).
//! - [`internal`]: node-to-node Raft transport (`charging.internal.v1`).
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("charging.v1");
}

pub mod internal {
    tonic::include_proto!("charging.internal.v1");
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
