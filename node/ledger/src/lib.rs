//! The ledger: pure, deterministic account logic. No async, no I/O, no clock
//! reads, no randomness, no hash-order output. Time arrives inside requests.
//!
//! Its own crate so that purity is a build fact, not a convention: it
//! depends on no async runtime, network, Raft or clock (`.ci/run` checks
//! `cargo tree`). The node re-exports it as `charging_node::ledger`.
//!
//! Map:
//! - [`types`]: ids, quantities, commands, replies, rejections, limits.
//! - [`account`]: `Account` and what it holds (buckets, sessions, reservations,
//!   dedup entries, charge index, tombstones).
//! - [`decide`]: `decide()`, the one function that evaluates a request against an
//!   account. The leader runs it speculatively; every replica runs it again in
//!   apply with the same inputs, so both reach the same state.
//! - [`state`]: `ShardState`, the replicated state machine of one shard, and
//!   `apply()` of conditional events.
//!
//! Determinism contract: `decide(acct, tariffs, limits, req, now_ms)` is a pure
//! function of its arguments. An event carries the request, the account version
//! it was decided against, the decision time and the tariffs used, so apply
//! reproduces the leader's decision exactly or refuses the event.

pub mod account;
pub mod decide;
pub mod hash;
mod overlay;
pub mod rating;
pub mod smallmap;
pub mod state;
pub mod types;

pub use account::{Account, BalanceView, BucketView};
pub use decide::{decide, params_hash, Decision};
pub use state::{AccountEvent, Applied, Event, ShardState};
pub use types::*;

#[cfg(test)]
mod tests;

/// The node's codec (bincode 2, standard config), for round-trip tests.
#[cfg(test)]
mod tests_codec {
    pub fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(v, bincode::config::standard()).unwrap()
    }
    pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> T {
        bincode::serde::decode_from_slice(b, bincode::config::standard())
            .unwrap()
            .0
    }
}
