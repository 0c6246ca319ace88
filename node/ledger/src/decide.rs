//! `decide()`: evaluate one request against one account.
//!
//! Pure and total: the same inputs give the same decision and the same next
//! state on every replica, and no input makes it panic (overflow and
//! out-of-range values become `LimitExceeded`).
//!
//! How a decision runs: idempotency first (a duplicate returns the original
//! reply at once), then the command is evaluated into a [`Tx`] that stages
//! every change (scalars and buckets copied, map entries through copy-on-write
//! overlays) while reading the untouched account. A rejection drops the `Tx`,
//! so the account is left exactly as it was. Only an acceptance writes the
//! `Tx` back, through `Arc::make_mut`, and bumps the version.
//!
//! Semantic choices (DESIGN §3 leaves them open; see also `ledger/mod.rs`):
//! - Rejection precedence is the declaration order of [`Rejection`]: if the
//!   command itself would be rejected, the highest-precedence reason among it
//!   and the idempotency checks (`RequestIdReused`, `RequestTooOld`) wins;
//!   `LimitExceeded` (tables full, overflow, out-of-range input) comes last.
//! - Usage in `Commit`/`Update`/`Terminate` is the usage since the previous
//!   report (3GPP usedUnitContainer). The reservation accumulates it and
//!   charges `price(cumulative rated usage) - charged so far`.
//! - Usage is taken first from the reservation's unit-bucket holds; the rest is
//!   rated in money with the reservation's pinned tariff, taken from its money
//!   holds, then from what the account can pay (credit limit included), and the
//!   remainder becomes debt. Usage of a dimension the pinned tariff cannot rate
//!   is added to `Account::unrated`.
//! - `Update` and a `Reserve` on a rating group that already has an open
//!   reservation in the session *replace* the quota (Gy/Nchf semantics): the
//!   unused holds are released and the new request is granted on the same
//!   reservation (same id, same pinned tariff, cumulative rounding continues).
//!   An `Update` report with nothing requested resolves that rating group's
//!   reservation.
//! - An `Update` fails as a whole only if it reports no usage and every grant
//!   it asks for fails (nothing at all could be done); otherwise each rating
//!   group's failure is reported in its `GrantResult` and a failed regrant
//!   leaves that reservation open with no holds.
//! - Money is held and taken from money buckets other than the main one first
//!   (by priority, then id; never below zero), then from the main bucket (down
//!   to `-credit_limit`).
//! - Debt is settled first by top-ups and refunds of the main bucket.
//! - Only `Debit` and `Commit` charges are indexed for refunds (session
//!   operations are not, so memory does not grow with session traffic).
//!   `Reply::{Committed,Updated,Terminated}::charged` is the money value of the
//!   usage charged by the call, of which `debt` could not be paid.
//! - `final_units` is set when less than requested was granted.
//! - `Expire` of an open reservation that is not yet due is rejected with
//!   `RequestTooOld` (the sweeper's view was stale).
//! - A terminated session cannot be reopened until it is forgotten
//!   (`dedup_window_ms` after its last operation); a session with no open
//!   reservation is forgotten the same way.
use super::account::*;
use super::hash::stable_hash;
use super::overlay::Overlay;
use super::rating::{self, DIMS};
use super::types::*;
use std::sync::Arc;

/// Outcome of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// New state staged into the account; reply to send once applied.
    Accept(Reply),
    /// Same request seen before: its original reply; nothing changed.
    Duplicate(Reply),
    /// Business rejection; nothing changed and nothing is remembered.
    Reject(Rejection),
}

/// Params hash of a command, as stored in dedup entries and sessions.
pub fn params_hash(cmd: &Command) -> u64 {
    stable_hash(cmd)
}

/// Pure. On Accept, `acct` is mutated to the next state and its version bumped by 1
/// (CreateAccount turns None into Some with version 1). On Duplicate or Reject,
/// `acct` is left exactly unchanged.
pub fn decide(
    acct: &mut Option<Arc<Account>>,
    tariffs: &Tariffs,
    limits: &Limits,
    req: &Request,
    now_ms: u64,
) -> Decision {
    let params = params_hash(&req.cmd);
    if let Command::CreateAccount { .. } = &req.cmd {
        return create(acct, limits, req, params, now_ms);
    }
    let Some(base) = acct.as_deref() else {
        return Decision::Reject(Rejection::AccountNotFound);
    };

    // Idempotency. A duplicate answers at once; other findings are pending
    // rejections that only win over lower-precedence reasons.
    let mut pending = None;
    match session_key(&req.cmd) {
        Some((sid, seq)) => {
            if let Some(s) = base
                .ext
                .sessions
                .get(sid)
                .filter(|s| s.is_live(now_ms, limits))
            {
                if seq == s.last_seq {
                    if s.params_hash == params {
                        return Decision::Duplicate(s.last_reply.clone());
                    }
                    pending = Some(Rejection::RequestIdReused);
                } else if seq < s.last_seq {
                    pending = Some(Rejection::RequestTooOld);
                }
            }
        }
        None if matches!(req.cmd, Command::Expire { .. }) => {}
        None => {
            if let Some(e) = base
                .ext
                .dedup
                .get(&req.request_id)
                .filter(|e| e.is_live(now_ms, limits))
            {
                // Test-only injected bug (issue 6, the checker's teeth): a
                // duplicate top-up is decided and applied again. Never built
                // outside `cargo test -p charging-chaos --features bug-dup-applies-twice`.
                let injected_bug = cfg!(feature = "chaos-bug-dup-applies-twice")
                    && matches!(req.cmd, Command::TopUp { .. });
                if e.params_hash == params && !injected_bug {
                    return Decision::Duplicate(e.reply.clone());
                }
                if !injected_bug {
                    pending = Some(Rejection::RequestIdReused);
                }
            } else if too_old(req.request_id, limits, now_ms) {
                pending = Some(Rejection::RequestTooOld);
            }
        }
    }

    let mut tx = Tx::new(base, tariffs, limits, now_ms);
    let reply = match (tx.run(req), pending) {
        (Err(r), p) => return Decision::Reject(first(p, r)),
        (Ok(_), Some(p)) => return Decision::Reject(p),
        (Ok(reply), None) => reply,
    };
    match session_key(&req.cmd) {
        Some((sid, seq)) => {
            if tx.record_session(sid, seq, params, &reply).is_err() {
                return Decision::Reject(Rejection::LimitExceeded);
            }
        }
        None if matches!(req.cmd, Command::Expire { .. }) => {}
        None => {
            if dedup_full(base, limits, now_ms) {
                return Decision::Reject(Rejection::LimitExceeded);
            }
            tx.record_dedup(req.request_id, params, reply.clone());
        }
    }
    if base.version == u64::MAX {
        return Decision::Reject(Rejection::LimitExceeded);
    }
    let delta = tx.d;
    if let Some(arc) = acct.as_mut() {
        let a = Arc::make_mut(arc);
        delta.apply_to(a, now_ms, limits);
        debug_assert!(
            a.check().is_ok(),
            "invariant broken by {req:?}: {:?}",
            a.check()
        );
    }
    Decision::Accept(reply)
}

/// The higher-precedence of two rejections (declaration order of `Rejection`).
fn first(a: Option<Rejection>, b: Rejection) -> Rejection {
    match a {
        Some(a) if (a as u8) < (b as u8) => a,
        _ => b,
    }
}

fn session_key(cmd: &Command) -> Option<(&SessionId, u64)> {
    match cmd {
        Command::Reserve { session, seq, .. }
        | Command::Update { session, seq, .. }
        | Command::Terminate { session, seq, .. } => Some((session, *seq)),
        _ => None,
    }
}

/// Client time + window − clock bound already passed: a retry of it could
/// outlive its dedup entry, so it is refused.
fn too_old(rid: RequestId, limits: &Limits, now_ms: u64) -> bool {
    rid.unix_ms()
        .saturating_add(limits.dedup_window_ms)
        .saturating_sub(limits.clock_bound_ms)
        < now_ms
}

/// Full: `max_dedup_per_account` entries held, not counting the expired ones
/// that eviction would take first (from the least request id up to the
/// first live entry; see `Account::evict`). Cost: those expired entries, not
/// the table's size, so a full table refuses cheaply.
fn dedup_full(base: &Account, limits: &Limits, now_ms: u64) -> bool {
    let max = limits.max_dedup_per_account as usize;
    let held = base.ext.dedup.len();
    held >= max
        && held
            - base
                .ext
                .dedup
                .values()
                .take_while(|e| !e.is_live(now_ms, limits))
                .count()
            >= max
}

/// A new account at version 1 (the state `CreateAccount` and bulk creation
/// produce): the main money bucket with `initial_balance`, then `buckets`
/// as ids 2, 3, ... Nothing else: no dedup entry (the caller adds its own).
pub fn new_account(
    currency: &str,
    credit_limit: i64,
    initial_balance: i64,
    buckets: &[BucketSpec],
    limits: &Limits,
    now_ms: u64,
) -> Result<Account, Rejection> {
    let _ = now_ms;
    let Some(currency) = super::account::Currency::new(currency) else {
        return Err(Rejection::LimitExceeded);
    };
    if credit_limit < 0
        || initial_balance < 0
        || buckets.iter().any(|b| b.amount < 0)
        || buckets.len() >= limits.max_buckets_per_account as usize
    {
        return Err(Rejection::LimitExceeded);
    }
    let main = Bucket {
        id: MAIN_BUCKET,
        kind: BucketKind::Money,
        balance: initial_balance,
        reserved: 0,
        valid_from_ms: 0,
        valid_until_ms: 0,
        priority: u32::MAX,
        rating_groups: Box::default(),
        flows: Flows {
            credits: initial_balance,
            ..Flows::default()
        },
    };
    let mut all = Vec::with_capacity(1 + buckets.len());
    all.push(main);
    let mut next_evict_ms = u64::MAX;
    for (i, spec) in buckets.iter().enumerate() {
        all.push(bucket_from_spec(BucketId(i as u32 + 2), spec));
        if spec.valid_until_ms != 0 {
            next_evict_ms = next_evict_ms.min(spec.valid_until_ms);
        }
    }
    Ok(Account {
        version: 1,
        currency,
        state: AccountState::Active,
        credit_limit,
        debt: 0,
        next_bucket_id: all.len() as u32 + 1,
        next_reservation_id: 1,
        next_evict_ms,
        buckets: all.into_boxed_slice(),
        ext: Default::default(),
    })
}

fn create(
    acct: &mut Option<Arc<Account>>,
    limits: &Limits,
    req: &Request,
    params: u64,
    now_ms: u64,
) -> Decision {
    let Command::CreateAccount {
        currency,
        credit_limit,
        initial_balance,
        buckets,
    } = &req.cmd
    else {
        return Decision::Reject(Rejection::LimitExceeded);
    };
    let mut pending = None;
    if let Some(a) = acct.as_deref() {
        if let Some(e) = a
            .ext
            .dedup
            .get(&req.request_id)
            .filter(|e| e.is_live(now_ms, limits))
        {
            if e.params_hash == params {
                return Decision::Duplicate(e.reply.clone());
            }
            pending = Some(Rejection::RequestIdReused);
        }
    }
    if pending.is_none() && too_old(req.request_id, limits, now_ms) {
        pending = Some(Rejection::RequestTooOld);
    }
    if acct.is_some() {
        return Decision::Reject(first(pending, Rejection::AccountExists));
    }
    if let Some(p) = pending {
        return Decision::Reject(p);
    }
    if limits.max_dedup_per_account == 0 {
        return Decision::Reject(Rejection::LimitExceeded);
    }
    let mut a = match new_account(
        currency,
        *credit_limit,
        *initial_balance,
        buckets,
        limits,
        now_ms,
    ) {
        Ok(a) => a,
        Err(r) => return Decision::Reject(r),
    };
    // The dedup entry of the create is due for eviction after the window.
    a.next_evict_ms = a.next_evict_ms.min(
        now_ms
            .saturating_add(limits.dedup_window_ms)
            .saturating_add(1),
    );
    let reply = Reply::Created { version: 1 };
    a.ext.dedup.insert(
        req.request_id,
        DedupEntry {
            params_hash: params,
            reply: reply.clone(),
            ts_ms: now_ms,
        },
    );
    debug_assert!(
        a.check().is_ok(),
        "invariant broken by {req:?}: {:?}",
        a.check()
    );
    *acct = Some(Arc::new(a));
    Decision::Accept(reply)
}

fn bucket_from_spec(id: BucketId, spec: &BucketSpec) -> Bucket {
    Bucket {
        id,
        kind: spec.kind,
        balance: spec.amount,
        reserved: 0,
        valid_from_ms: spec.valid_from_ms,
        valid_until_ms: spec.valid_until_ms,
        priority: spec.priority,
        rating_groups: spec.rating_groups.as_slice().into(),
        flows: Flows {
            credits: spec.amount,
            ..Flows::default()
        },
    }
}

type R<T> = Result<T, Rejection>;
const OVERFLOW: Rejection = Rejection::LimitExceeded;

fn add(a: i64, b: i64) -> R<i64> {
    a.checked_add(b).ok_or(OVERFLOW)
}
fn sub(a: i64, b: i64) -> R<i64> {
    a.checked_sub(b).ok_or(OVERFLOW)
}
fn add_units(a: &Units, b: &Units) -> R<Units> {
    let (a, b) = (rating::to_dims(a), rating::to_dims(b));
    let mut out = [0u64; 3];
    for d in 0..3 {
        out[d] = a[d].checked_add(b[d]).ok_or(OVERFLOW)?;
    }
    Ok(rating::from_dims(out))
}

/// Everything an accepted decision writes back into the account.
struct Delta {
    state: AccountState,
    debt: i64,
    unrated: Units,
    next_bucket_id: u32,
    next_reservation_id: u64,
    next_evict_ms: u64,
    buckets: Vec<Bucket>,
    sessions: Overlay<SessionId, Session>,
    reservations: Overlay<ReservationId, Reservation>,
    tombstones: Overlay<ReservationId, Reservation>,
    charges: Overlay<RequestId, ChargeEntry>,
    dedup: Option<(RequestId, DedupEntry)>,
}

impl Delta {
    fn apply_to(self, a: &mut Account, now_ms: u64, limits: &Limits) {
        a.state = self.state;
        a.debt = self.debt;
        a.ext.unrated = self.unrated;
        a.next_bucket_id = self.next_bucket_id;
        a.next_reservation_id = self.next_reservation_id;
        a.next_evict_ms = self.next_evict_ms;
        a.buckets = self.buckets.into_boxed_slice();
        self.sessions.apply_to(&mut a.ext.sessions);
        self.reservations.apply_to(&mut a.ext.reservations);
        self.tombstones.apply_to(&mut a.ext.tombstones);
        self.charges.apply_to(&mut a.ext.charges);
        // The refund index keeps the newest charges (by request id) only.
        if a.ext.charges.len() > limits.max_charges_per_account as usize {
            a.ext
                .charges
                .truncate_first(limits.max_charges_per_account as usize);
        }
        if let Some((k, v)) = self.dedup {
            a.ext.dedup.insert(k, v);
        }
        a.version = a.version.saturating_add(1);
        if now_ms >= a.next_evict_ms {
            a.evict(now_ms, limits);
        }
        a.ext.shrink();
    }
}

/// A decision in progress: reads `base`, stages writes in `d`.
struct Tx<'a> {
    base: &'a Account,
    tariffs: &'a Tariffs,
    limits: &'a Limits,
    now: u64,
    d: Delta,
}

impl<'a> Tx<'a> {
    fn new(base: &'a Account, tariffs: &'a Tariffs, limits: &'a Limits, now: u64) -> Self {
        Tx {
            base,
            tariffs,
            limits,
            now,
            d: Delta {
                state: base.state,
                debt: base.debt,
                unrated: base.ext.unrated,
                next_bucket_id: base.next_bucket_id,
                next_reservation_id: base.next_reservation_id,
                next_evict_ms: base.next_evict_ms,
                buckets: base.buckets.to_vec(),
                sessions: Overlay::default(),
                reservations: Overlay::default(),
                tombstones: Overlay::default(),
                charges: Overlay::default(),
                dedup: None,
            },
        }
    }

    fn run(&mut self, req: &Request) -> R<Reply> {
        match &req.cmd {
            Command::CreateAccount { .. } => Err(Rejection::AccountExists),
            Command::AddBucket { bucket } => self.add_bucket(bucket),
            Command::TopUp { bucket, amount } => self.top_up(*bucket, *amount),
            Command::Reserve {
                session,
                rating_group,
                requested,
                ..
            } => self.reserve(session, *rating_group, requested),
            Command::Update {
                session, reports, ..
            } => self.update(session, reports),
            Command::Terminate {
                session, reports, ..
            } => self.terminate(session, reports),
            Command::Commit {
                reservation,
                used,
                is_final,
            } => self.commit(req.request_id, *reservation, used, *is_final),
            Command::Release { reservation } => self.release_cmd(*reservation),
            Command::Refund { original, amount } => self.refund(*original, *amount),
            Command::Debit {
                rating_group,
                units,
            } => self.debit(req.request_id, *rating_group, units),
            Command::SetState { state } => {
                self.d.state = *state;
                Ok(Reply::StateSet)
            }
            Command::Expire { reservation } => self.expire(*reservation),
        }
    }

    // ---- bookkeeping ----------------------------------------------------

    fn note_deadline(&mut self, at_ms: u64) {
        self.d.next_evict_ms = self.d.next_evict_ms.min(at_ms);
    }

    fn record_session(&mut self, sid: &SessionId, seq: u64, params: u64, reply: &Reply) -> R<()> {
        let mut s = self
            .d
            .sessions
            .get(&self.base.ext.sessions, sid)
            .cloned()
            .ok_or(OVERFLOW)?;
        s.last_seq = seq;
        s.params_hash = params;
        s.last_reply = reply.clone();
        s.last_ms = self.now;
        if s.open.is_empty() {
            self.note_deadline(self.now.saturating_add(self.limits.dedup_window_ms) + 1);
        }
        self.d.sessions.insert(sid.clone(), s);
        Ok(())
    }

    fn record_dedup(&mut self, rid: RequestId, params: u64, reply: Reply) {
        self.d.dedup = Some((
            rid,
            DedupEntry {
                params_hash: params,
                reply,
                ts_ms: self.now,
            },
        ));
        self.note_deadline(
            self.now
                .saturating_add(self.limits.dedup_window_ms)
                .saturating_add(1),
        );
    }

    fn record_charge(&mut self, rid: RequestId, charged: i64) {
        if charged > 0 {
            let e = ChargeEntry {
                charged,
                refunded: 0,
                ts_ms: self.now,
            };
            self.d.charges.insert(rid, e);
            self.note_deadline(
                self.now
                    .saturating_add(self.limits.refund_horizon_ms)
                    .saturating_add(1),
            );
        }
    }

    fn live_session(&self, sid: &SessionId) -> Option<&Session> {
        self.d
            .sessions
            .get(&self.base.ext.sessions, sid)
            .filter(|s| s.is_live(self.now, self.limits))
    }

    fn open_res(&self, id: ReservationId) -> Option<&Reservation> {
        self.d.reservations.get(&self.base.ext.reservations, &id)
    }

    fn live_tombstone(&self, id: ReservationId) -> Option<&Reservation> {
        self.d
            .tombstones
            .get(&self.base.ext.tombstones, &id)
            .filter(|r| tombstone_is_live(r, self.now, self.limits))
    }

    /// Latest live tombstone of a session's rating group (for late usage).
    fn find_tombstone(&self, sid: &SessionId, rg: RatingGroup) -> Option<ReservationId> {
        self.d
            .tombstones
            .iter(&self.base.ext.tombstones)
            .filter(|(_, r)| {
                r.session == *sid
                    && r.rating_group == rg
                    && tombstone_is_live(r, self.now, self.limits)
            })
            .map(|(id, _)| *id)
            .max()
    }

    /// Rejection for an id that is neither open nor a live tombstone.
    fn missing(&self, id: ReservationId) -> Rejection {
        if id.0 >= 1 && id.0 < self.d.next_reservation_id {
            Rejection::ReservationResolved
        } else {
            Rejection::ReservationNotFound
        }
    }

    fn live_sessions(&self) -> usize {
        let max = self.limits.max_sessions_per_account as usize;
        if self.d.sessions.len(&self.base.ext.sessions) < max {
            return self.d.sessions.len(&self.base.ext.sessions);
        }
        let (now, limits) = (self.now, self.limits);
        self.d
            .sessions
            .iter(&self.base.ext.sessions)
            .filter(|(_, s)| s.is_live(now, limits))
            .count()
    }

    fn alloc_reservation(&mut self) -> R<ReservationId> {
        let id = ReservationId(self.d.next_reservation_id);
        self.d.next_reservation_id = id.0.checked_add(1).ok_or(OVERFLOW)?;
        Ok(id)
    }

    /// Take an open reservation out of a session (after it was resolved).
    fn unlink(&mut self, sid: &SessionId, id: ReservationId) {
        if let Some(s) = self.d.sessions.get(&self.base.ext.sessions, sid) {
            let mut s = s.clone();
            s.open.retain(|(_, r)| *r != id);
            if s.open.is_empty() {
                self.note_deadline(
                    s.last_ms
                        .saturating_add(self.limits.dedup_window_ms)
                        .saturating_add(1),
                );
            }
            self.d.sessions.insert(sid.clone(), s);
        }
    }

    // ---- buckets --------------------------------------------------------

    fn bidx(&self, id: BucketId) -> Option<usize> {
        self.d.buckets.binary_search_by_key(&id, |b| b.id).ok()
    }

    fn usable(&self, b: &Bucket) -> bool {
        b.is_valid_at(self.now) && !b.is_removable(self.now, self.limits)
    }

    /// Money buckets usable for `rg`, in the order money is taken: others by
    /// (priority, id), the main bucket last.
    fn money_order(&self, rg: RatingGroup) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.d.buckets.len())
            .filter(|&i| {
                let b = &self.d.buckets[i];
                b.kind == BucketKind::Money
                    && b.id != MAIN_BUCKET
                    && b.applies_to(rg)
                    && self.usable(b)
            })
            .collect();
        v.sort_by_key(|&i| (self.d.buckets[i].priority, self.d.buckets[i].id));
        if let Some(m) = self.bidx(MAIN_BUCKET) {
            if self.d.buckets[m].kind == BucketKind::Money {
                v.push(m);
            }
        }
        v
    }

    /// Unit buckets of `kind` usable for `rg`, by (priority, id).
    fn unit_order(&self, kind: BucketKind, rg: RatingGroup) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.d.buckets.len())
            .filter(|&i| {
                let b = &self.d.buckets[i];
                b.kind == kind && b.applies_to(rg) && self.usable(b)
            })
            .collect();
        v.sort_by_key(|&i| (self.d.buckets[i].priority, self.d.buckets[i].id));
        v
    }

    /// What bucket `i` can still give: `balance - reserved - floor`, >= 0.
    fn free(&self, i: usize) -> i128 {
        let b = &self.d.buckets[i];
        let f = i128::from(b.balance)
            - i128::from(b.reserved)
            - i128::from(b.floor(self.base.credit_limit));
        f.max(0)
    }

    fn available_money(&self, rg: RatingGroup) -> i128 {
        self.money_order(rg).into_iter().map(|i| self.free(i)).sum()
    }

    /// Charge up to `amount` from what the account can pay; returns the part taken.
    fn take_money(&mut self, rg: RatingGroup, amount: i64) -> R<i64> {
        let mut left = amount;
        for i in self.money_order(rg) {
            if left <= 0 {
                break;
            }
            let x = i128::from(left).min(self.free(i)) as i64;
            if x > 0 {
                let b = &mut self.d.buckets[i];
                b.balance = sub(b.balance, x)?;
                b.flows.charges = add(b.flows.charges, x)?;
                left -= x;
            }
        }
        Ok(amount - left)
    }

    /// Hold exactly `amount` of money; the caller checked it is available.
    fn hold_money(&mut self, rg: RatingGroup, amount: i64) -> R<Vec<Hold>> {
        let mut left = amount;
        let mut holds = Vec::new();
        for i in self.money_order(rg) {
            if left <= 0 {
                break;
            }
            let x = i128::from(left).min(self.free(i)) as i64;
            if x > 0 {
                let b = &mut self.d.buckets[i];
                b.reserved = add(b.reserved, x)?;
                holds.push(Hold {
                    bucket: b.id,
                    amount: x,
                });
                left -= x;
            }
        }
        if left > 0 {
            return Err(OVERFLOW);
        }
        Ok(holds)
    }

    fn release(&mut self, holds: &[Hold]) -> R<()> {
        for h in holds {
            let i = self.bidx(h.bucket).ok_or(OVERFLOW)?;
            let b = &mut self.d.buckets[i];
            b.reserved = sub(b.reserved, h.amount)?;
        }
        Ok(())
    }

    /// Charge up to `want` from a hold; returns the part taken.
    fn consume_hold(&mut self, h: &mut Hold, want: i64) -> R<i64> {
        let x = want.min(h.amount);
        if x <= 0 {
            return Ok(0);
        }
        let i = self.bidx(h.bucket).ok_or(OVERFLOW)?;
        let b = &mut self.d.buckets[i];
        b.balance = sub(b.balance, x)?;
        b.reserved = sub(b.reserved, x)?;
        b.flows.charges = add(b.flows.charges, x)?;
        h.amount -= x;
        Ok(x)
    }

    /// Credit `amount` to bucket `i`; on the main bucket, settle debt first.
    fn credit(&mut self, i: usize, amount: i64, refund: bool) -> R<()> {
        let settle = if self.d.buckets[i].id == MAIN_BUCKET {
            self.d.debt.min(amount)
        } else {
            0
        };
        let debt = sub(self.d.debt, settle)?;
        let b = &mut self.d.buckets[i];
        b.balance = add(b.balance, sub(amount, settle)?)?;
        if refund {
            b.flows.refunds = add(b.flows.refunds, amount)?;
        } else {
            b.flows.credits = add(b.flows.credits, amount)?;
        }
        b.flows.adjustments = sub(b.flows.adjustments, settle)?;
        self.d.debt = debt;
        Ok(())
    }

    // ---- charging and granting -----------------------------------------

    /// Charge `delta` more usage on `r` (see module doc). Returns (money value
    /// charged by this call, part of it that became debt).
    fn charge_usage(&mut self, r: &mut Reservation, delta: &Units) -> R<(i64, i64)> {
        let used = add_units(&r.used, delta)?;
        let mut rest = rating::to_dims(delta);
        let mut holds = std::mem::take(&mut r.holds);
        for h in holds.iter_mut() {
            let kind = match self.bidx(h.bucket) {
                Some(i) => self.d.buckets[i].kind,
                None => return Err(OVERFLOW),
            };
            if let Some(d) = rating::dim_of(kind) {
                let want = rest[d].min(i64::MAX as u64) as i64;
                let x = self.consume_hold(h, want)?;
                rest[d] -= x as u64;
            }
        }
        let tariff = r.tariff.as_ref();
        let mut priced = [0u64; 3];
        let mut unrated = [0u64; 3];
        for d in 0..DIMS.len() {
            if tariff.is_some_and(|t| rating::price_of(t, d).is_some()) {
                priced[d] = rest[d];
            } else {
                unrated[d] = rest[d];
            }
        }
        let rated = add_units(&r.rated, &rating::from_dims(priced))?;
        self.d.unrated = add_units(&self.d.unrated, &rating::from_dims(unrated))?;
        let new_charged = i64::try_from(rating::price_money(tariff, rating::wide(&rated)))
            .map_err(|_| OVERFLOW)?;
        let due = sub(new_charged, r.charged)?.max(0);
        let mut left = due;
        for h in holds.iter_mut() {
            if left == 0 {
                break;
            }
            let is_money = self
                .bidx(h.bucket)
                .is_some_and(|i| self.d.buckets[i].kind == BucketKind::Money);
            if is_money {
                left -= self.consume_hold(h, left)?;
            }
        }
        left -= self.take_money(r.rating_group, left)?;
        self.d.debt = add(self.d.debt, left)?;
        holds.retain(|h| h.amount > 0);
        r.holds = holds;
        r.rated = rated;
        r.used = used;
        r.charged = new_charged;
        Ok((due, left))
    }

    /// Grant `requested` on `r` (which holds nothing): unit buckets first, the
    /// rest priced with `r`'s tariff and held in money; partial (whole
    /// increments, all dimensions scaled together) when money is short.
    /// `RatingFailed` and `InsufficientBalance` are returned before anything is
    /// staged; any other error is an overflow.
    fn grant(&mut self, r: &mut Reservation, requested: &Units) -> R<(Units, bool)> {
        let rg = r.rating_group;
        let req = rating::to_dims(requested);
        let mut rem = req;
        let mut granted = [0u64; 3];
        let mut unit_takes: Vec<(usize, i64)> = Vec::new();
        for d in 0..DIMS.len() {
            if rem[d] == 0 {
                continue;
            }
            for i in self.unit_order(DIMS[d], rg) {
                let free = self.free(i).min(i128::from(i64::MAX)) as u64;
                let x = free.min(rem[d]);
                if x > 0 {
                    unit_takes.push((i, x as i64));
                    rem[d] -= x;
                    granted[d] += x;
                }
                if rem[d] == 0 {
                    break;
                }
            }
        }
        let tariff = r.tariff.as_ref();
        let rem_w = rem.map(u128::from);
        if !rating::can_rate(tariff, rem_w) {
            return Err(Rejection::RatingFailed);
        }
        let avail = self.available_money(rg).max(0) as u128;
        let base_rated = rating::wide(&r.rated);
        let charged = r.charged.max(0) as u128;
        let cost = |u: [u128; 3]| -> u128 {
            let tot = [0, 1, 2].map(|d| base_rated[d].saturating_add(u[d]));
            rating::price_money(tariff, tot).saturating_sub(charged)
        };
        let money_units: [u128; 3] = if rem_w == [0; 3] || cost(rem_w) <= avail {
            rem_w
        } else {
            let inc = [0, 1, 2].map(|d| rating::increment(tariff, d));
            let n = [0, 1, 2].map(|d| rem_w[d].div_ceil(inc[d]));
            let q = n.iter().copied().max().unwrap_or(0);
            let at = |p: u128| -> [u128; 3] {
                [0, 1, 2].map(|d| rem_w[d].min(n[d] * p / q.max(1) * inc[d]))
            };
            let (mut lo, mut hi) = (0u128, q);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if cost(at(mid)) <= avail {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            at(lo)
        };
        for d in 0..DIMS.len() {
            granted[d] += money_units[d] as u64;
        }
        if req != [0; 3] && granted == [0; 3] {
            return Err(Rejection::InsufficientBalance);
        }
        let money = i64::try_from(cost(money_units)).map_err(|_| OVERFLOW)?;
        for (i, x) in unit_takes {
            let b = &mut self.d.buckets[i];
            b.reserved = add(b.reserved, x)?;
            r.holds.push(Hold {
                bucket: b.id,
                amount: x,
            });
        }
        if money > 0 {
            let hs = self.hold_money(rg, money)?;
            r.holds.extend(hs);
        }
        let granted = rating::from_dims(granted);
        r.granted = add_units(&r.granted, &granted)?;
        r.expires_at_ms = self.now.saturating_add(self.limits.reservation_validity_ms);
        r.sweep_at_ms = r.expires_at_ms.saturating_add(self.limits.expiry_grace_ms);
        Ok((granted, granted != *requested))
    }

    fn new_reservation(&self, sid: &SessionId, rg: RatingGroup) -> Reservation {
        Reservation {
            session: sid.clone(),
            rating_group: rg,
            granted: Units::default(),
            used: Units::default(),
            rated: Units::default(),
            tariff: self.tariffs.get(&rg).cloned(),
            holds: Vec::new(),
            charged: 0,
            expires_at_ms: self.now,
            sweep_at_ms: self.now,
        }
    }

    /// Charge a session report's usage: on the rating group's open reservation,
    /// else on its latest tombstone (late usage), else on a one-off record
    /// under the current tariff.
    fn charge_report(
        &mut self,
        sid: &SessionId,
        open: Option<ReservationId>,
        rg: RatingGroup,
        used: &Units,
    ) -> R<(i64, i64)> {
        if let Some(id) = open {
            let mut r = self.open_res(id).cloned().ok_or(OVERFLOW)?;
            let out = self.charge_usage(&mut r, used)?;
            self.d.reservations.insert(id, r);
            Ok(out)
        } else if let Some(id) = self.find_tombstone(sid, rg) {
            let mut r = self.live_tombstone(id).cloned().ok_or(OVERFLOW)?;
            let out = self.charge_usage(&mut r, used)?;
            self.d.tombstones.insert(id, r);
            Ok(out)
        } else {
            let mut r = self.new_reservation(sid, rg);
            self.charge_usage(&mut r, used)
        }
    }

    // ---- commands -------------------------------------------------------

    fn add_bucket(&mut self, spec: &BucketSpec) -> R<Reply> {
        if self.d.state == AccountState::Closed {
            return Err(Rejection::AccountNotActive);
        }
        let live = self
            .d
            .buckets
            .iter()
            .filter(|b| !b.is_removable(self.now, self.limits))
            .count();
        if spec.amount < 0 || live >= self.limits.max_buckets_per_account as usize {
            return Err(OVERFLOW);
        }
        let id = BucketId(self.d.next_bucket_id);
        self.d.next_bucket_id = id.0.checked_add(1).ok_or(OVERFLOW)?;
        self.d.buckets.push(bucket_from_spec(id, spec));
        if spec.valid_until_ms != 0 {
            self.note_deadline(spec.valid_until_ms);
        }
        Ok(Reply::BucketAdded { bucket: id })
    }

    fn top_up(&mut self, bucket: BucketId, amount: i64) -> R<Reply> {
        if self.d.state == AccountState::Closed {
            return Err(Rejection::AccountNotActive);
        }
        let id = if bucket.0 == 0 { MAIN_BUCKET } else { bucket };
        let i = self
            .bidx(id)
            .filter(|&i| {
                let b = &self.d.buckets[i];
                !b.has_ended(self.now) && !b.is_removable(self.now, self.limits)
            })
            .ok_or(Rejection::BucketNotFound)?;
        if amount <= 0 {
            return Err(OVERFLOW);
        }
        self.credit(i, amount, false)?;
        Ok(Reply::ToppedUp {
            balance: self.d.buckets[i].balance,
        })
    }

    fn reserve(&mut self, sid: &SessionId, rg: RatingGroup, requested: &Units) -> R<Reply> {
        if self.d.state != AccountState::Active {
            return Err(Rejection::AccountNotActive);
        }
        let existing = self.live_session(sid).cloned();
        if existing.as_ref().is_some_and(|s| s.closed) {
            return Err(Rejection::SessionNotFound);
        }
        if let Some(id) = existing.as_ref().and_then(|s| s.reservation_for(rg)) {
            // Replace the quota of the open reservation (see module doc).
            let mut r = self.open_res(id).cloned().ok_or(OVERFLOW)?;
            self.release(&r.holds)?;
            r.holds.clear();
            let (granted, final_units) = self.grant(&mut r, requested)?;
            let grant = Grant {
                reservation: id,
                granted,
                final_units,
                expires_at_ms: r.expires_at_ms,
            };
            self.d.reservations.insert(id, r);
            return Ok(Reply::Reserved(grant));
        }
        let mut r = self.new_reservation(sid, rg);
        let (granted, final_units) = self.grant(&mut r, requested)?;
        let mut s = match existing {
            Some(s) => s,
            None => {
                if self.live_sessions() >= self.limits.max_sessions_per_account as usize {
                    return Err(OVERFLOW);
                }
                Session {
                    last_seq: 0,
                    params_hash: 0,
                    last_reply: Reply::StateSet,
                    last_ms: self.now,
                    closed: false,
                    open: Vec::new(),
                }
            }
        };
        if self.d.reservations.len(&self.base.ext.reservations)
            >= self.limits.max_reservations_per_account as usize
        {
            return Err(OVERFLOW);
        }
        let id = self.alloc_reservation()?;
        let grant = Grant {
            reservation: id,
            granted,
            final_units,
            expires_at_ms: r.expires_at_ms,
        };
        self.d.reservations.insert(id, r);
        insert_open(&mut s, rg, id);
        self.d.sessions.insert(sid.clone(), s);
        Ok(Reply::Reserved(grant))
    }

    fn update(&mut self, sid: &SessionId, reports: &[UsageReport]) -> R<Reply> {
        let mut s = self
            .live_session(sid)
            .filter(|s| !s.closed)
            .cloned()
            .ok_or(Rejection::SessionNotFound)?;
        let (mut charged, mut debt) = (0i64, 0i64);
        let mut grants = Vec::new();
        let mut did_something = reports.is_empty();
        let mut worst: Option<Rejection> = None;
        for rep in reports {
            let rg = rep.rating_group;
            let open = s.reservation_for(rg);
            if !rating::is_zero(&rep.used) {
                let (c, dbt) = self.charge_report(sid, open, rg, &rep.used)?;
                charged = add(charged, c)?;
                debt = add(debt, dbt)?;
                did_something = true;
            }
            if rating::is_zero(&rep.requested) {
                // Nothing more wanted on this rating group: resolve it.
                if let Some(id) = open {
                    let r = self.open_res(id).cloned().ok_or(OVERFLOW)?;
                    self.release(&r.holds)?;
                    self.d.reservations.remove(&id);
                    s.open.retain(|(_, x)| *x != id);
                    did_something = true;
                }
                continue;
            }
            let result = self.regrant(sid, &mut s, open, rg, &rep.requested)?;
            match &result {
                Ok(_) => did_something = true,
                Err(e) => worst = Some(first(worst, *e)),
            }
            grants.push(GrantResult {
                rating_group: rg,
                result,
            });
        }
        if !did_something {
            if let Some(w) = worst {
                return Err(w);
            }
        }
        self.d.sessions.insert(sid.clone(), s);
        Ok(Reply::Updated {
            grants,
            charged,
            debt,
        })
    }

    /// One rating group's new quota in an `Update`. The outer error is fatal
    /// (overflow); the inner one is this rating group's rejection.
    fn regrant(
        &mut self,
        sid: &SessionId,
        s: &mut Session,
        open: Option<ReservationId>,
        rg: RatingGroup,
        requested: &Units,
    ) -> R<Result<Grant, Rejection>> {
        let per_rg = |e: Rejection| -> R<Result<Grant, Rejection>> {
            match e {
                Rejection::RatingFailed | Rejection::InsufficientBalance => Ok(Err(e)),
                other => Err(other),
            }
        };
        if let Some(id) = open {
            let mut r = self.open_res(id).cloned().ok_or(OVERFLOW)?;
            self.release(&r.holds)?;
            r.holds.clear();
            let out = if self.d.state != AccountState::Active {
                Ok(Err(Rejection::AccountNotActive))
            } else {
                match self.grant(&mut r, requested) {
                    Ok((granted, final_units)) => Ok(Ok(Grant {
                        reservation: id,
                        granted,
                        final_units,
                        expires_at_ms: r.expires_at_ms,
                    })),
                    Err(e) => per_rg(e),
                }
            };
            self.d.reservations.insert(id, r);
            return out;
        }
        if self.d.state != AccountState::Active {
            return Ok(Err(Rejection::AccountNotActive));
        }
        let mut r = self.new_reservation(sid, rg);
        let (granted, final_units) = match self.grant(&mut r, requested) {
            Ok(g) => g,
            Err(e) => return per_rg(e),
        };
        if self.d.reservations.len(&self.base.ext.reservations)
            >= self.limits.max_reservations_per_account as usize
        {
            self.release(&r.holds)?;
            return Ok(Err(Rejection::LimitExceeded));
        }
        let id = self.alloc_reservation()?;
        let grant = Grant {
            reservation: id,
            granted,
            final_units,
            expires_at_ms: r.expires_at_ms,
        };
        self.d.reservations.insert(id, r);
        insert_open(s, rg, id);
        Ok(Ok(grant))
    }

    fn terminate(&mut self, sid: &SessionId, reports: &[UsageReport]) -> R<Reply> {
        let mut s = self
            .live_session(sid)
            .filter(|s| !s.closed)
            .cloned()
            .ok_or(Rejection::SessionNotFound)?;
        let (mut charged, mut debt) = (0i64, 0i64);
        for rep in reports {
            if !rating::is_zero(&rep.used) {
                let open = s.reservation_for(rep.rating_group);
                let (c, dbt) = self.charge_report(sid, open, rep.rating_group, &rep.used)?;
                charged = add(charged, c)?;
                debt = add(debt, dbt)?;
            }
        }
        for (_, id) in std::mem::take(&mut s.open) {
            let r = self.open_res(id).cloned().ok_or(OVERFLOW)?;
            self.release(&r.holds)?;
            self.d.reservations.remove(&id);
        }
        s.closed = true;
        self.d.sessions.insert(sid.clone(), s);
        Ok(Reply::Terminated { charged, debt })
    }

    fn commit(&mut self, rid: RequestId, id: ReservationId, used: &Units, fin: bool) -> R<Reply> {
        let (charged, debt) = if let Some(r) = self.open_res(id) {
            let mut r = r.clone();
            let out = self.charge_usage(&mut r, used)?;
            if fin {
                self.release(&r.holds)?;
                self.d.reservations.remove(&id);
                self.unlink(&r.session, id);
            } else {
                self.d.reservations.insert(id, r);
            }
            out
        } else if let Some(r) = self.live_tombstone(id) {
            // Late commit after expiry: the service was delivered, charge it.
            let mut r = r.clone();
            let out = self.charge_usage(&mut r, used)?;
            if fin {
                self.d.tombstones.remove(&id);
            } else {
                self.d.tombstones.insert(id, r);
            }
            out
        } else {
            return Err(self.missing(id));
        };
        self.record_charge(rid, charged);
        Ok(Reply::Committed { charged, debt })
    }

    fn release_cmd(&mut self, id: ReservationId) -> R<Reply> {
        let Some(r) = self.open_res(id).cloned() else {
            return Err(if self.live_tombstone(id).is_some() {
                Rejection::ReservationResolved
            } else {
                self.missing(id)
            });
        };
        self.release(&r.holds)?;
        self.d.reservations.remove(&id);
        self.unlink(&r.session, id);
        Ok(Reply::Released)
    }

    fn expire(&mut self, id: ReservationId) -> R<Reply> {
        let Some(r) = self.open_res(id).cloned() else {
            return Err(if self.live_tombstone(id).is_some() {
                Rejection::ReservationResolved
            } else {
                self.missing(id)
            });
        };
        if r.sweep_at_ms > self.now {
            return Err(Rejection::RequestTooOld);
        }
        let mut r = r;
        self.release(&r.holds)?;
        r.holds.clear();
        self.d.reservations.remove(&id);
        self.unlink(&r.session, id);
        self.note_deadline(
            r.sweep_at_ms
                .saturating_add(self.limits.tombstone_ttl_ms)
                .saturating_add(1),
        );
        self.d.tombstones.insert(id, r);
        Ok(Reply::Expired)
    }

    fn refund(&mut self, original: RequestId, amount: i64) -> R<Reply> {
        let mut e = self
            .d
            .charges
            .get(&self.base.ext.charges, &original)
            .filter(|e| e.is_live(self.now, self.limits))
            .copied()
            .ok_or(Rejection::RefundExceedsCharge)?;
        if amount > sub(e.charged, e.refunded)? {
            return Err(Rejection::RefundExceedsCharge);
        }
        if amount <= 0 {
            return Err(OVERFLOW);
        }
        let main = self.bidx(MAIN_BUCKET).ok_or(OVERFLOW)?;
        self.credit(main, amount, true)?;
        e.refunded = add(e.refunded, amount)?;
        self.d.charges.insert(original, e);
        Ok(Reply::Refunded {
            refunded_total: e.refunded,
        })
    }

    fn debit(&mut self, rid: RequestId, rg: RatingGroup, units: &Units) -> R<Reply> {
        if self.d.state != AccountState::Active {
            return Err(Rejection::AccountNotActive);
        }
        let mut rem = rating::to_dims(units);
        let mut unit_takes: Vec<(usize, i64)> = Vec::new();
        for d in 0..DIMS.len() {
            for i in self.unit_order(DIMS[d], rg) {
                if rem[d] == 0 {
                    break;
                }
                let x = (self.free(i).min(i128::from(i64::MAX)) as u64).min(rem[d]);
                if x > 0 {
                    unit_takes.push((i, x as i64));
                    rem[d] -= x;
                }
            }
        }
        let tariff = self.tariffs.get(&rg);
        let rem_w = rem.map(u128::from);
        if !rating::can_rate(tariff, rem_w) {
            return Err(Rejection::RatingFailed);
        }
        let cost = rating::price_money(tariff, rem_w);
        if cost > self.available_money(rg).max(0) as u128 {
            return Err(Rejection::InsufficientBalance);
        }
        let cost = i64::try_from(cost).map_err(|_| OVERFLOW)?;
        for (i, x) in unit_takes {
            let b = &mut self.d.buckets[i];
            b.balance = sub(b.balance, x)?;
            b.flows.charges = add(b.flows.charges, x)?;
        }
        if self.take_money(rg, cost)? != cost {
            return Err(OVERFLOW);
        }
        self.record_charge(rid, cost);
        Ok(Reply::Debited { charged: cost })
    }
}

fn insert_open(s: &mut Session, rg: RatingGroup, id: ReservationId) {
    let pos = s.open.partition_point(|(g, _)| *g < rg);
    s.open.insert(pos, (rg, id));
}
