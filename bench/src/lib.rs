//! `chargebench`: the load generator of the charging cluster (issue 4).
//!
//! - [`workload`]: reserve-commit, session, debit and mixed transactions, the
//!   closed loop (`--concurrency`) and the open loop (`--rate`, latency from
//!   the due time, corrected for coordinated omission).
//! - [`exec`]: unary calls or the `Stream` RPC (batch, pipeline), against the
//!   cluster or the [`echo`] baseline.
//! - [`cluster`]: bulk preload, tariffs, balance read-back (drift).
//! - [`stats`], [`report`], [`html`]: histograms, table, JSON, HTML.
//! - [`nodecpu`]: CPU µs per operation of the node processes (`--node-pids`).
//! - [`nchf`]: `chargebench nchf`, the Nchf create/update/release flow over
//!   h2c against the same flow over gRPC unary.
//! - [`cli`]: the command line and the `run` / `sweep` commands.

pub mod cli;
pub mod cluster;
pub mod echo;
pub mod exec;
pub mod html;
pub mod nchf;
pub mod nodecpu;
pub mod report;
pub mod stats;
pub mod workload;
pub mod zipf;

/// Generated code of `bench/proto/echo.proto` (the echo baseline service).
#[allow(clippy::all, missing_docs)]
pub mod echo_pb {
    tonic::include_proto!("charging.bench.v1");
}
