//! Real processes: three `chargerd start` processes on loopback, each with
//! its own config file and data dir (the shared WAL and snapshot files on
//! real disk), killed with SIGKILL and restarted. The client library drives
//! them over gRPC. These tests check what operators rely on:
//! - every operation works from any node (`t10`);
//! - after `kill -9` of a node leading shards mid-load, service resumes
//!   (the gap is measured and printed) and the node catches up on restart;
//! - after a crash of all three, every acknowledged operation is present,
//!   and retrying the unknown ones with their request ids settles them
//!   exactly once;
//! - a fourth node joins under load, takes replicas (caught up by snapshot
//!   over the WAL's per-incarnation groups), survives kill -9 with its
//!   replicas, then drains to nothing; every acknowledged top-up is there
//!   (`t20`);
//! - storms of large calls are refused `RESOURCE_EXHAUSTED` while the
//!   node's resident memory stays bounded (`t30`);
//! - a node whose disk fills up stops at its free-space floor, exits
//!   non-zero and says why, while the others keep every acknowledged
//!   operation (`t35`, needs root for its tmpfs).
// Tests and benches run in real time and read the OS clock; the node core
// may not (node/clippy.toml).
#![allow(clippy::disallowed_methods)]
mod support;
mod t10_processes;
mod t20_scale_out;
mod t30_limits;
mod t35_full_disk;
