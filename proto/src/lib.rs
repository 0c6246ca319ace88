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

/// Encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("charging_descriptor");
