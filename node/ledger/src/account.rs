//! `Account` and what it holds: buckets, sessions, reservations, tombstones of
//! expired reservations, request-id dedup entries and the charge index.
//!
//! Kept compact on purpose (millions of accounts live in memory): a `Vec` of
//! buckets, and per-account maps that are [`SmallMap`](super::smallmap)s:
//! empty and allocation-free while an account is idle, a sorted `Vec` while
//! small. A one-entry `BTreeMap` allocates a whole 11-slot leaf: for the
//! session, the reservation and the charge a reserve-commit leaves on a
//! fresh account that was about 4 KB per replica (sessions 104 B a slot,
//! reservations 192 B). No `HashMap`: iteration order must be deterministic.
use super::rating::{self, DIMS};
use super::types::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The main money bucket, created by `CreateAccount`. The only bucket that may
/// go below zero (down to `-credit_limit`); money is taken from it last.
pub const MAIN_BUCKET: BucketId = BucketId(1);

/// Money (or unit) flows into and out of one bucket since it was created.
/// Invariant 1: `credits - charges + refunds - expired + adjustments == balance`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Flows {
    /// Initial amount, top-ups.
    pub credits: i64,
    /// Usage charged from the bucket (from holds, or from what was available).
    pub charges: i64,
    /// Refunds credited back (main bucket only).
    pub refunds: i64,
    /// Forfeited when the bucket's validity ended.
    pub expired: i64,
    /// Other movements: negative when a credit went to settle debt.
    pub adjustments: i64,
}

impl Flows {
    /// `credits - charges + refunds - expired + adjustments`, exact.
    pub fn net(&self) -> i128 {
        i128::from(self.credits) - i128::from(self.charges) + i128::from(self.refunds)
            - i128::from(self.expired)
            + i128::from(self.adjustments)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bucket {
    pub id: BucketId,
    pub kind: BucketKind,
    /// Minor units for money; bytes, seconds or units otherwise.
    pub balance: i64,
    /// Sum of the holds of open reservations on this bucket.
    pub reserved: i64,
    /// Unix ms; 0 = unbounded.
    pub valid_from_ms: u64,
    /// Unix ms, exclusive; 0 = unbounded.
    pub valid_until_ms: u64,
    /// Lower is consumed first.
    pub priority: u32,
    /// Empty = all rating groups (boxed slice: 16 bytes, no heap when empty).
    pub rating_groups: Box<[RatingGroup]>,
    pub flows: Flows,
}

impl Bucket {
    pub fn is_valid_at(&self, now_ms: u64) -> bool {
        (self.valid_from_ms == 0 || self.valid_from_ms <= now_ms)
            && (self.valid_until_ms == 0 || now_ms < self.valid_until_ms)
    }
    /// Validity has ended (not merely not started).
    pub fn has_ended(&self, now_ms: u64) -> bool {
        self.valid_until_ms != 0 && now_ms >= self.valid_until_ms
    }
    pub fn applies_to(&self, rg: RatingGroup) -> bool {
        self.rating_groups.is_empty() || self.rating_groups.contains(&rg)
    }
    /// Lowest allowed `balance - reserved`.
    pub fn floor(&self, credit_limit: i64) -> i64 {
        if self.id == MAIN_BUCKET {
            -credit_limit
        } else {
            0
        }
    }
    /// An ended bucket that nothing holds, kept `tombstone_ttl_ms` for display,
    /// is removed by eviction; until then lookups treat it as gone.
    pub fn is_removable(&self, now_ms: u64, limits: &Limits) -> bool {
        self.id != MAIN_BUCKET
            && self.valid_until_ms != 0
            && self.valid_until_ms.saturating_add(limits.tombstone_ttl_ms) < now_ms
            && self.reserved == 0
    }
}

/// Part of a reservation held on one bucket (money or units of its kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hold {
    pub bucket: BucketId,
    pub amount: i64,
}

/// A reservation (open) or, in `Account::tombstones`, an expired one that a
/// late commit may still charge.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reservation {
    pub session: SessionId,
    pub rating_group: RatingGroup,
    /// Total granted over the reservation's life (every grant added).
    pub granted: Units,
    /// Cumulative usage reported.
    pub used: Units,
    /// Cumulative usage rated in money (usage beyond the unit holds).
    pub rated: Units,
    /// The tariff pinned when the reservation was opened (`None`: no tariff then).
    pub tariff: Option<Tariff>,
    /// Outstanding holds (empty on tombstones).
    pub holds: Vec<Hold>,
    /// Money charged so far; always `price(tariff, rated)`: rounded once, on
    /// the cumulative usage.
    pub charged: i64,
    /// Validity of the current grant, as told to the client.
    pub expires_at_ms: u64,
    /// `expires_at_ms + expiry_grace_ms`: when the sweeper may expire it.
    pub sweep_at_ms: u64,
}

/// A charging session (ChargingDataRef) with its last answer for dedup.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Session {
    pub last_seq: u64,
    pub params_hash: u64,
    pub last_reply: Reply,
    /// Log time of the last session operation.
    pub last_ms: u64,
    /// Terminated; kept (for dedup of the terminate) until it is evicted.
    pub closed: bool,
    /// Open reservations, one per rating group, sorted by rating group.
    pub open: Vec<(RatingGroup, ReservationId)>,
}

impl Session {
    /// A session with no open reservation is forgotten `dedup_window_ms` after
    /// its last operation (closed or idle). Lookups treat it as absent then.
    pub fn is_live(&self, now_ms: u64, limits: &Limits) -> bool {
        !self.open.is_empty() || self.last_ms.saturating_add(limits.dedup_window_ms) >= now_ms
    }
    pub fn reservation_for(&self, rg: RatingGroup) -> Option<ReservationId> {
        self.open.iter().find(|(g, _)| *g == rg).map(|(_, id)| *id)
    }
}

/// Result of a non-session request, kept for `dedup_window_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DedupEntry {
    pub params_hash: u64,
    pub reply: Reply,
    pub ts_ms: u64,
}

impl DedupEntry {
    pub fn is_live(&self, now_ms: u64, limits: &Limits) -> bool {
        self.ts_ms.saturating_add(limits.dedup_window_ms) >= now_ms
    }
}

/// A refundable charge (Debit or Commit), kept for `refund_horizon_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChargeEntry {
    pub charged: i64,
    pub refunded: i64,
    pub ts_ms: u64,
}

impl ChargeEntry {
    pub fn is_live(&self, now_ms: u64, limits: &Limits) -> bool {
        self.ts_ms.saturating_add(limits.refund_horizon_ms) >= now_ms
    }
}

pub fn tombstone_is_live(r: &Reservation, now_ms: u64, limits: &Limits) -> bool {
    r.sweep_at_ms.saturating_add(limits.tombstone_ttl_ms) >= now_ms
}

/// An ISO 4217 code, kept inline in 3 bytes (no heap allocation per
/// account). Hashes, compares and serializes as the str.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    /// `None` unless exactly 3 bytes of ASCII (ISO 4217 codes are).
    pub fn new(s: &str) -> Option<Currency> {
        let b: [u8; 3] = s.as_bytes().try_into().ok()?;
        b.is_ascii().then_some(Currency(b))
    }

    pub fn as_str(&self) -> &str {
        // Built only from ASCII, so always valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl std::fmt::Debug for Currency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl std::hash::Hash for Currency {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Currency::new(&s).ok_or_else(|| serde::de::Error::custom("currency: not 3 ASCII bytes"))
    }
}

/// What only a busy account has: sessions, reservations, tombstones, dedup
/// entries, the charge index and unrated usage. Behind [`Ext`], so an idle
/// account pays 8 bytes for all of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AccountExt {
    /// Usage that no price could rate (beyond unit holds, no tariff for the
    /// dimension): recorded, never silently dropped.
    pub unrated: Units,
    pub sessions: super::smallmap::SmallMap<SessionId, Session>,
    /// Open reservations.
    pub reservations: super::smallmap::SmallMap<ReservationId, Reservation>,
    /// Expired reservations, kept `tombstone_ttl_ms` for late commits.
    pub tombstones: super::smallmap::SmallMap<ReservationId, Reservation>,
    /// Request-id dedup of non-session operations.
    pub dedup: super::smallmap::SmallMap<RequestId, DedupEntry>,
    /// Refundable charges by the request id that charged them.
    pub charges: super::smallmap::SmallMap<RequestId, ChargeEntry>,
}

static EMPTY_EXT: AccountExt = AccountExt {
    unrated: Units {
        time_s: 0,
        volume_bytes: 0,
        service_units: 0,
    },
    sessions: super::smallmap::SmallMap::new(),
    reservations: super::smallmap::SmallMap::new(),
    tombstones: super::smallmap::SmallMap::new(),
    dedup: super::smallmap::SmallMap::new(),
    charges: super::smallmap::SmallMap::new(),
};

impl AccountExt {
    pub fn is_empty(&self) -> bool {
        self.unrated == Units::default()
            && self.sessions.is_empty()
            && self.reservations.is_empty()
            && self.tombstones.is_empty()
            && self.dedup.is_empty()
            && self.charges.is_empty()
    }
}

/// An [`AccountExt`] allocated only while it holds something. Reads of an
/// absent one see an empty `AccountExt`; a mutable access allocates it, and
/// [`Ext::shrink`] frees it again once empty. Equality, hashing and
/// serialization see only the contents (absent = empty), so the form never
/// shows in a state hash or a snapshot.
#[derive(Clone, Debug, Default)]
pub struct Ext(Option<Box<AccountExt>>);

impl Ext {
    /// Frees the extension when it holds nothing.
    pub fn shrink(&mut self) {
        if self.0.as_ref().is_some_and(|x| x.is_empty()) {
            self.0 = None;
        }
    }
    /// Mutable access without allocating an absent extension.
    pub fn get_mut(&mut self) -> Option<&mut AccountExt> {
        self.0.as_deref_mut()
    }
    pub fn is_allocated(&self) -> bool {
        self.0.is_some()
    }
}

impl std::ops::Deref for Ext {
    type Target = AccountExt;
    fn deref(&self) -> &AccountExt {
        self.0.as_deref().unwrap_or(&EMPTY_EXT)
    }
}

impl std::ops::DerefMut for Ext {
    fn deref_mut(&mut self) -> &mut AccountExt {
        self.0.get_or_insert_with(Default::default)
    }
}

impl PartialEq for Ext {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}
impl Eq for Ext {}

impl std::hash::Hash for Ext {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (**self).hash(h)
    }
}

impl Serialize for Ext {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let x: &AccountExt = self;
        (!x.is_empty()).then_some(x).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Ext {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut e = Ext(Option::<Box<AccountExt>>::deserialize(d)?);
        e.shrink();
        Ok(e)
    }
}

/// One account, laid out for millions of idle ones: fixed fields inline
/// (currency too), the buckets, and everything a busy account adds behind
/// one pointer ([`Ext`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Account {
    /// Bumped by every applied event; 1 after creation.
    pub version: u64,
    /// Postpaid: the main bucket may go down to `-credit_limit`.
    pub credit_limit: i64,
    /// Usage that could not be paid, owed; settled first by top-ups and
    /// refunds of the main bucket.
    pub debt: i64,
    pub next_reservation_id: u64,
    /// Earliest log time at which eviction has something to do.
    pub next_evict_ms: u64,
    pub next_bucket_id: u32,
    /// ISO 4217 code.
    pub currency: Currency,
    pub state: AccountState,
    /// Sorted by id (boxed slice: 16 bytes inline, exact heap size).
    pub buckets: Box<[Bucket]>,
    /// Sessions, reservations, tombstones, dedup, charges, unrated usage.
    pub ext: Ext,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BucketView {
    pub id: BucketId,
    pub kind: BucketKind,
    pub balance: i64,
    pub reserved: i64,
    pub valid_from_ms: u64,
    pub valid_until_ms: u64,
    pub priority: u32,
    pub rating_groups: Vec<RatingGroup>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BalanceView {
    pub currency: String,
    pub state: AccountState,
    pub version: u64,
    pub credit_limit: i64,
    pub debt: i64,
    /// Money balance − money reserved over valid money buckets, + credit limit.
    pub available: i64,
    pub buckets: Vec<BucketView>,
    pub open_sessions: u32,
    pub open_reservations: u32,
}

impl Account {
    pub fn bucket(&self, id: BucketId) -> Option<&Bucket> {
        self.buckets
            .binary_search_by_key(&id, |b| b.id)
            .ok()
            .map(|i| &self.buckets[i])
    }

    pub fn main_bucket(&self) -> Option<&Bucket> {
        self.bucket(MAIN_BUCKET)
    }

    pub fn view(&self, now_ms: u64) -> BalanceView {
        let mut available: i128 = i128::from(self.credit_limit);
        for b in &self.buckets {
            if b.kind == BucketKind::Money && b.is_valid_at(now_ms) {
                available += i128::from(b.balance) - i128::from(b.reserved);
            }
        }
        let clamp = |v: i128| v.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        BalanceView {
            currency: self.currency.as_str().to_string(),
            state: self.state,
            version: self.version,
            credit_limit: self.credit_limit,
            debt: self.debt,
            available: clamp(available),
            buckets: self
                .buckets
                .iter()
                .map(|b| BucketView {
                    id: b.id,
                    kind: b.kind,
                    balance: b.balance,
                    reserved: b.reserved,
                    valid_from_ms: b.valid_from_ms,
                    valid_until_ms: b.valid_until_ms,
                    priority: b.priority,
                    rating_groups: b.rating_groups.to_vec(),
                })
                .collect(),
            open_sessions: self.ext.sessions.values().filter(|s| !s.closed).count() as u32,
            open_reservations: self.ext.reservations.len() as u32,
        }
    }

    /// Open reservations the sweeper may expire at `now_ms`: those whose
    /// `expires_at_ms + expiry_grace_ms` (stored as `sweep_at_ms`) is `<= now_ms`.
    pub fn due_expiries(&self, now_ms: u64) -> impl Iterator<Item = ReservationId> + '_ {
        self.ext
            .reservations
            .iter()
            .filter(move |(_, r)| r.sweep_at_ms <= now_ms)
            .map(|(id, _)| *id)
    }

    /// Invariants 1 and 2 of DESIGN §3, plus the structural ones they rest on.
    pub fn check(&self) -> Result<(), String> {
        if self.credit_limit < 0 || self.debt < 0 {
            return Err(format!(
                "negative credit limit {} or debt {}",
                self.credit_limit, self.debt
            ));
        }
        match self.main_bucket() {
            Some(b) if b.kind == BucketKind::Money => {}
            _ => return Err("main money bucket missing".into()),
        }
        let mut held: BTreeMap<BucketId, i128> = BTreeMap::new();
        for (id, r) in &self.ext.reservations {
            for h in &r.holds {
                if h.amount <= 0 {
                    return Err(format!("reservation {id:?}: non-positive hold {h:?}"));
                }
                *held.entry(h.bucket).or_default() += i128::from(h.amount);
            }
        }
        let mut prev = 0u32;
        for b in &self.buckets {
            if b.id.0 <= prev || b.id.0 >= self.next_bucket_id {
                return Err(format!("bucket ids out of order at {:?}", b.id));
            }
            prev = b.id.0;
            if b.flows.net() != i128::from(b.balance) {
                return Err(format!(
                    "bucket {:?}: flows {:?} != balance {}",
                    b.id, b.flows, b.balance
                ));
            }
            if b.reserved < 0 {
                return Err(format!("bucket {:?}: reserved {} < 0", b.id, b.reserved));
            }
            if i128::from(b.reserved) != held.remove(&b.id).unwrap_or(0) {
                return Err(format!(
                    "bucket {:?}: reserved {} != sum of holds",
                    b.id, b.reserved
                ));
            }
            let free = i128::from(b.balance) - i128::from(b.reserved);
            if free < i128::from(b.floor(self.credit_limit)) {
                return Err(format!(
                    "bucket {:?}: balance {} - reserved {} below floor",
                    b.id, b.balance, b.reserved
                ));
            }
        }
        if let Some((bid, _)) = held.into_iter().next() {
            return Err(format!("hold on missing bucket {bid:?}"));
        }
        for (id, r) in self
            .ext
            .reservations
            .iter()
            .chain(self.ext.tombstones.iter())
        {
            if id.0 == 0 || id.0 >= self.next_reservation_id {
                return Err(format!("reservation id {id:?} out of range"));
            }
            let rated = rating::wide(&r.rated);
            let used = rating::wide(&r.used);
            if (0..DIMS.len()).any(|d| rated[d] > used[d]) {
                return Err(format!(
                    "reservation {id:?}: rated {:?} > used {:?}",
                    r.rated, r.used
                ));
            }
            if !rating::can_rate(r.tariff.as_ref(), rated) {
                return Err(format!("reservation {id:?}: rated usage without a price"));
            }
            let price = rating::price_money(r.tariff.as_ref(), rated);
            if i128::try_from(price).ok() != Some(i128::from(r.charged)) {
                return Err(format!(
                    "reservation {id:?}: charged {} != price of cumulative usage {price}",
                    r.charged
                ));
            }
        }
        for (id, r) in &self.ext.tombstones {
            if !r.holds.is_empty() {
                return Err(format!("tombstone {id:?} still holds"));
            }
            if self.ext.reservations.contains_key(id) {
                return Err(format!("reservation {id:?} both open and expired"));
            }
        }
        let mut in_sessions = 0usize;
        for (sid, s) in &self.ext.sessions {
            if s.closed && !s.open.is_empty() {
                return Err(format!("closed session {sid:?} holds reservations"));
            }
            for w in s.open.windows(2) {
                if w[0].0 >= w[1].0 {
                    return Err(format!("session {sid:?}: rating groups not sorted/unique"));
                }
            }
            for (rg, rid) in &s.open {
                match self.ext.reservations.get(rid) {
                    Some(r) if r.session == *sid && r.rating_group == *rg => in_sessions += 1,
                    _ => return Err(format!("session {sid:?}: dangling reservation {rid:?}")),
                }
            }
        }
        if in_sessions != self.ext.reservations.len() {
            return Err("an open reservation belongs to no session".into());
        }
        for (rid, c) in &self.ext.charges {
            if c.refunded < 0 || c.refunded > c.charged {
                return Err(format!(
                    "charge {rid:?}: refunded {} of {}",
                    c.refunded, c.charged
                ));
            }
        }
        Ok(())
    }

    /// Drop what has outlived its window at `now_ms` and forfeit ended buckets.
    /// Lookups already treat all of it as gone, so eviction never changes a
    /// decision; it runs only inside an accepted decision, so replicas agree.
    pub(crate) fn evict(&mut self, now_ms: u64, limits: &Limits) {
        let mut next = u64::MAX;
        let mut note = |d: u64| next = next.min(d);
        if let Some(x) = self.ext.get_mut() {
            // The dedup table and the charge index are keyed by UUIDv7
            // request ids, which sort by their client's clock: oldest first,
            // as far as clocks agree. They are evicted from the least id up,
            // stopping at the first live entry, so a busy account pays for
            // what it evicts and not for what it holds. An expired entry
            // behind a live one (a client clock behind the others) stays
            // until the live one expires: never longer than one window.
            x.dedup.pop_first_while(|e| !e.is_live(now_ms, limits));
            if let Some((_, e)) = x.dedup.first() {
                note(
                    e.ts_ms
                        .saturating_add(limits.dedup_window_ms)
                        .saturating_add(1),
                );
            }
            x.charges.pop_first_while(|e| !e.is_live(now_ms, limits));
            if let Some((_, e)) = x.charges.first() {
                note(
                    e.ts_ms
                        .saturating_add(limits.refund_horizon_ms)
                        .saturating_add(1),
                );
            }
            x.tombstones
                .retain(|_, r| tombstone_is_live(r, now_ms, limits));
            for r in x.tombstones.values() {
                note(
                    r.sweep_at_ms
                        .saturating_add(limits.tombstone_ttl_ms)
                        .saturating_add(1),
                );
            }
            x.sessions.retain(|_, s| s.is_live(now_ms, limits));
            for s in x.sessions.values() {
                if s.open.is_empty() {
                    note(
                        s.last_ms
                            .saturating_add(limits.dedup_window_ms)
                            .saturating_add(1),
                    );
                }
            }
        }
        if self.buckets.iter().any(|b| b.is_removable(now_ms, limits)) {
            let mut v = std::mem::take(&mut self.buckets).into_vec();
            v.retain(|b| !b.is_removable(now_ms, limits));
            self.buckets = v.into_boxed_slice();
        }
        for b in self.buckets.iter_mut() {
            if b.valid_until_ms == 0 || b.id == MAIN_BUCKET {
                continue;
            }
            if b.has_ended(now_ms) {
                if b.reserved == 0 {
                    // Forfeit what is left; invariant 1 keeps counting it.
                    b.flows.expired = b.flows.expired.saturating_add(b.balance);
                    b.balance = 0;
                } else {
                    // Still held by a reservation: look again next time.
                    note(now_ms.saturating_add(1));
                }
                note(
                    b.valid_until_ms
                        .saturating_add(limits.tombstone_ttl_ms)
                        .saturating_add(1),
                );
            } else {
                note(b.valid_until_ms);
            }
        }
        self.next_evict_ms = next;
        self.ext.shrink();
    }
}
