//! Ids, quantities, commands, replies and rejections of the ledger.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Opaque account id (SUPI, MSISDN...), 1..=64 bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccountId(pub String);

/// Client-generated UUIDv7 as u128. Its top 48 bits are the client's unix ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u128);

impl RequestId {
    /// Client time embedded in a UUIDv7 (top 48 bits), in unix ms.
    pub fn unix_ms(self) -> u64 {
        (self.0 >> 80) as u64
    }
}

/// Charging session id (3GPP ChargingDataRef).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub String);

/// Reservation id, unique within its account (allocated from the account).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReservationId(pub u64);

/// Bucket id within an account; bucket 1 is the main money bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BucketId(pub u32);

pub type RatingGroup = u32;

/// Several unit dimensions at once (3GPP requestedUnit / usedUnitContainer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Units {
    pub time_s: u64,
    pub volume_bytes: u64,
    pub service_units: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum BucketKind {
    Money,
    Bytes,
    Seconds,
    Units,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccountState {
    Active,
    Suspended,
    Closed,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BucketSpec {
    pub kind: BucketKind,
    pub amount: i64,
    /// Unix ms; 0 = unbounded.
    pub valid_from_ms: u64,
    /// Unix ms; 0 = unbounded.
    pub valid_until_ms: u64,
    /// Lower is consumed first.
    pub priority: u32,
    /// Empty = all rating groups.
    pub rating_groups: Vec<RatingGroup>,
}

/// Price of one unit dimension: `nano_per_increment` (1e-9 minor units) per
/// started `increment` of `unit` (Bytes, Seconds or Units).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Price {
    pub unit: BucketKind,
    pub increment: u64,
    pub nano_per_increment: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tariff {
    pub rating_group: RatingGroup,
    pub version: u64,
    pub prices: Vec<Price>,
}

/// Tariffs by rating group. BTreeMap: deterministic iteration.
pub type Tariffs = BTreeMap<RatingGroup, Tariff>;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UsageReport {
    pub rating_group: RatingGroup,
    pub used: Units,
    /// All zero = ask for no more quota on this rating group.
    pub requested: Units,
}

/// What a request asks of one account.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Command {
    CreateAccount {
        currency: String,
        credit_limit: i64,
        initial_balance: i64,
        buckets: Vec<BucketSpec>,
    },
    AddBucket {
        bucket: BucketSpec,
    },
    /// bucket 0 = the main money bucket (1).
    TopUp {
        bucket: BucketId,
        amount: i64,
    },
    Reserve {
        session: SessionId,
        seq: u64,
        rating_group: RatingGroup,
        requested: Units,
    },
    Update {
        session: SessionId,
        seq: u64,
        reports: Vec<UsageReport>,
    },
    Terminate {
        session: SessionId,
        seq: u64,
        reports: Vec<UsageReport>,
    },
    Commit {
        reservation: ReservationId,
        used: Units,
        is_final: bool,
    },
    Release {
        reservation: ReservationId,
    },
    Refund {
        original: RequestId,
        amount: i64,
    },
    Debit {
        rating_group: RatingGroup,
        units: Units,
    },
    SetState {
        state: AccountState,
    },
    /// Internal: sent by the expiry sweeper through the account's actor.
    Expire {
        reservation: ReservationId,
    },
    /// Opens a session (Nchf Create) with 0..n rating groups, or, when it is
    /// open already, acts as an `Update` on it. Unlike `Update` it never
    /// fails for a rating group's sake: a group that gets nothing is
    /// reported in its `GrantResult` and the session stays open. Replies
    /// `Reply::Updated`. (Last variant: the log's encoding of the others
    /// is unchanged.)
    Open {
        session: SessionId,
        seq: u64,
        reports: Vec<UsageReport>,
    },
}

impl Command {
    /// Rating groups whose tariff a decision on this command may read.
    /// The shard actor copies exactly these tariffs into the event.
    pub fn rating_groups(&self) -> Vec<RatingGroup> {
        match self {
            Command::Reserve { rating_group, .. } | Command::Debit { rating_group, .. } => {
                vec![*rating_group]
            }
            Command::Update { reports, .. }
            | Command::Terminate { reports, .. }
            | Command::Open { reports, .. } => reports.iter().map(|r| r.rating_group).collect(),
            _ => Vec::new(),
        }
    }
}

/// One request to one account.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Request {
    pub account: AccountId,
    pub request_id: RequestId,
    pub cmd: Command,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grant {
    pub reservation: ReservationId,
    pub granted: Units,
    pub final_units: bool,
    pub expires_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GrantResult {
    pub rating_group: RatingGroup,
    pub result: Result<Grant, Rejection>,
}

/// Success payload of each command.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reply {
    Created {
        version: u64,
    },
    BucketAdded {
        bucket: BucketId,
    },
    ToppedUp {
        balance: i64,
    },
    Reserved(Grant),
    Updated {
        grants: Vec<GrantResult>,
        charged: i64,
        debt: i64,
    },
    Terminated {
        charged: i64,
        debt: i64,
    },
    Committed {
        charged: i64,
        debt: i64,
    },
    Released,
    Refunded {
        refunded_total: i64,
    },
    Debited {
        charged: i64,
    },
    StateSet,
    /// A tariff change was applied (or was already, for a duplicate).
    TariffSet {
        version: u64,
    },
    /// Not the ledger's: the metadata group's cluster map was replaced (the
    /// node applies that event; it shares this result type). Its new version.
    ClusterMapSet {
        version: u64,
    },
    Expired,
    /// A bulk creation: accounts created, and accounts that existed already
    /// (left unchanged; `mismatched` of them with another currency or
    /// credit limit than asked).
    BulkCreated {
        created: u64,
        existing: u64,
        mismatched: u64,
    },
}

/// Business rejections, declared in precedence order (first applicable wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Rejection {
    AccountNotFound,
    AccountNotActive,
    SessionNotFound,
    ReservationNotFound,
    ReservationResolved,
    RatingFailed,
    InsufficientBalance,
    RefundExceedsCharge,
    RequestIdReused,
    RequestTooOld,
    AccountExists,
    BucketNotFound,
    /// A per-account table (dedup, sessions, reservations) is full.
    LimitExceeded,
}

/// Ledger limits. Replicated config: every replica must use the same values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// How long (request id) dedup entries live, by log time. Default 10 min.
    pub dedup_window_ms: u64,
    /// Max clock offset between nodes / clients. Default 250 ms.
    pub clock_bound_ms: u64,
    /// Validity of a granted reservation. Default 60 s.
    pub reservation_validity_ms: u64,
    /// Extra time after validity before expiry may run (a few clock bounds). Default 1 s.
    pub expiry_grace_ms: u64,
    /// How long the charge index keeps charges refundable. Default 30 days.
    pub refund_horizon_ms: u64,
    /// How long tombstones of expired reservations are kept. Default 1 day.
    pub tombstone_ttl_ms: u64,
    /// Max live request-id dedup entries per account; full => LimitExceeded.
    pub max_dedup_per_account: u32,
    /// Max charges in an account's refund index; beyond it the oldest (by
    /// request id) are no longer refundable.
    pub max_charges_per_account: u32,
    pub max_sessions_per_account: u32,
    pub max_reservations_per_account: u32,
    pub max_buckets_per_account: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            dedup_window_ms: 10 * 60 * 1000,
            clock_bound_ms: 250,
            reservation_validity_ms: 60_000,
            expiry_grace_ms: 1_000,
            refund_horizon_ms: 30 * 24 * 3600 * 1000,
            tombstone_ttl_ms: 24 * 3600 * 1000,
            // 2^20: 1,747 non-session operations/s on one account,
            // sustained over a 10-minute window (at most ~130 MB, and only
            // for an account that busy).
            max_dedup_per_account: 1 << 20,
            // The refund index outlives the dedup window (30 days), so it is
            // bounded by count: an account's newest 4,096 charges.
            max_charges_per_account: 4096,
            max_sessions_per_account: 1024,
            max_reservations_per_account: 4096,
            max_buckets_per_account: 64,
        }
    }
}
