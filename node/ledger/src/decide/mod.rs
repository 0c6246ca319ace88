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
//! - `Open` (Nchf Create) makes a session with 0..n rating groups, or acts
//!   on the open one as an `Update` does; it is refused only as a whole
//!   (account not active, session closed, tables full), never for one rating
//!   group's sake. A session opened with no rating group holds nothing and is
//!   forgotten `dedup_window_ms` after its last operation, as any idle one.
//!   An `Update` adding a rating group the session did not have opens a
//!   reservation for it; usage it reports for that group in the same
//!   request is charged on that reservation (one cumulative rounding), not
//!   on a one-off record, unless the group has a live tombstone (late usage).
//! - A terminated session cannot be reopened until it is forgotten
//!   (`dedup_window_ms` after its last operation); a session with no open
//!   reservation is forgotten the same way.
use super::account::*;
use super::hash::stable_hash;
use super::overlay::Overlay;
use super::rating::{self, DIMS};
use super::types::*;
use std::sync::Arc;

mod buckets;
mod charging;
mod commands;

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
        | Command::Terminate { session, seq, .. }
        | Command::Open { session, seq, .. } => Some((session, *seq)),
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
            Command::Open {
                session, reports, ..
            } => self.open(session, reports),
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
}
