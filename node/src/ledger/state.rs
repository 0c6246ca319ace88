//! `ShardState`: the replicated state of one shard and `apply()` of events.
use super::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A conditional fact about one account, decided by the shard leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountEvent {
    pub request: Request,
    /// Account version the decision was made against; 0 = account must not exist.
    pub expected_version: u64,
    /// Decision time (unix ms), taken from the leader clock, <= the entry's log_ts.
    pub decided_ms: u64,
    /// Exactly the tariffs `decide` may read (see `Command::rating_groups`).
    pub tariffs: Tariffs,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Account(AccountEvent),
    /// Replace (or add) the tariff of a rating group; version = previous + 1.
    SetTariff { tariff: Tariff },
}

/// Result of applying one event on a replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Ok(Reply),
    /// expected_version did not match: nothing changed; caller retries.
    Conflict,
    /// The decision did not reproduce as an acceptance (or Expire before its
    /// time): nothing changed, an alarm is raised. Never a panic.
    Refused(Rejection),
}

/// Cloning is O(1) (persistent map of shared accounts): a clone is a frozen
/// copy-on-write view used for snapshots and for published balance reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    pub limits: Limits,
    pub accounts: imbl::OrdMap<AccountId, Arc<Account>>,
    pub tariffs: Tariffs,
    /// Count of refused events (alarms).
    pub alarms: u64,
}
