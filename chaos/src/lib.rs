//! Chaos for the charging cluster (issue 6): recorded histories, a checker of
//! the DESIGN §3 invariants and per-account linearizability, a
//! transport-free seeded simulator (seed volume), a turmoil full-stack
//! simulator (real node code, real gRPC, real openraft), and a real-process
//! runner. Binary: `chargechaos`.
//!
//! Map:
//! - [`history`]: operations, outcomes (ok / rejected / unknown), final state.
//! - [`checker`]: the checks and the bounded linearizability search.
//! - [`rng`]: the one seeded PRNG every simulator draws from.
//! - [`workload`]: the seeded client workload shared by all layers.
//! - [`fast`]: the transport-free layer (ledger decide/apply, simulated
//!   replicas, leader changes, crashes that lose unflushed tails).
pub mod checker;
#[cfg(test)]
mod checker_tests;
pub mod fast;
pub mod history;
pub mod real;
pub mod rng;
pub mod simlog;
pub mod turmoil_sim;
pub mod wire;
pub mod workload;
