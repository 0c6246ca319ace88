//! Cluster integration tests (DESIGN §7.3): 3 in-process nodes and 4 shards
//! in one process, real openraft and real gRPC on loopback, driven through
//! `charging_client` (or the raw generated client for malformed input).
//! Each test starts its own cluster and uses its own account ids.
// Tests and benches run in real time and read the OS clock; the node core
// may not (node/clippy.toml).
#![allow(clippy::disallowed_methods)]
mod support;
mod t10_operations;
mod t20_sessions;
mod t30_idempotency;
mod t40_expiry;
mod t50_money;
mod t60_concurrency;
mod t70_stream;
mod t80_supervision;
mod t85_clocks;
mod t90_reflection;
mod t91_tls;
mod t92_admin_listener;
mod t95_auth;
mod t95_hardening;
