//! `ShardState`: the replicated state of one shard and `apply()` of events.
use super::hash::{stable_hash, StableHasher};
use super::*;
use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};
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
    /// Deduplicated on `request_id` (per shard) for the dedup window.
    SetTariff {
        tariff: Tariff,
        request_id: RequestId,
    },
    /// Bulk load: create every listed account that does not exist, as
    /// `CreateAccount` would (version 1, main bucket with `initial_balance`),
    /// but with no dedup entry: the call is idempotent by account id. An
    /// account that exists is left unchanged and counted as existing, so a
    /// retried or repeated bulk never creates an account twice. All or
    /// nothing on invalid parameters (`Refused`).
    BulkCreate {
        accounts: Vec<AccountId>,
        currency: String,
        credit_limit: i64,
        initial_balance: i64,
    },
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

/// The key of the account table: the account id as a shared str. Cloning
/// one is a reference count, not an allocation: every apply after a
/// published view copies the tree path it writes (copy on write), and with
/// owned strings that copy allocated every key of the path. Orders, hashes
/// and serializes exactly as the `AccountId` it came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountKey(pub Arc<str>);

impl Serialize for AccountKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AccountKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(AccountKey(String::deserialize(d)?.into()))
    }
}

impl From<&AccountId> for AccountKey {
    fn from(id: &AccountId) -> Self {
        AccountKey(id.0.as_str().into())
    }
}

impl std::borrow::Borrow<str> for AccountKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Cloning is O(1) (persistent map of shared accounts): a clone is a frozen
/// copy-on-write view used for snapshots and for published balance reads.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardState {
    pub limits: Limits,
    #[serde(deserialize_with = "deserialize_shared")]
    pub accounts: imbl::OrdMap<AccountKey, Arc<Account>>,
    /// Shared: a published view (one per applied entry) copies a pointer,
    /// not the tariffs.
    pub tariffs: Arc<Tariffs>,
    /// Count of refused events (alarms).
    pub alarms: u64,
    /// Open reservations by `(sweep_at_ms, account, reservation)`: derived from
    /// `accounts`, kept so the expiry sweeper finds due reservations without
    /// scanning every account.
    #[serde(default)]
    pub expiry_index: imbl::OrdSet<(u64, AccountId, ReservationId)>,
    /// Tariff changes by request id: (params hash, version granted), kept
    /// for the dedup window of log time so a retried SetTariff changes nothing.
    #[serde(default)]
    pub tariff_requests: imbl::OrdMap<RequestId, (u64, u64)>,
}

/// Most tariff changes remembered per shard within the dedup window.
pub const MAX_TARIFF_REQUESTS: usize = 4096;

impl ShardState {
    pub fn new(limits: Limits) -> Self {
        ShardState {
            limits,
            ..ShardState::default()
        }
    }

    /// Total and deterministic: never panics.
    ///
    /// - `SetTariff`: stores the tariff with `version = previous + 1` (1 for a
    ///   new rating group), whatever version the event carried; replies
    ///   `Applied::Ok(Reply::StateSet)`.
    /// - `Account`: if the account's version is not `expected_version` (0 =
    ///   absent), `Conflict` and nothing changes. An `Expire` whose reservation
    ///   is open but not due at `log_ts_ms` is `Refused(RequestTooOld)`.
    ///   Otherwise `decide` runs again with the event's tariffs and decision
    ///   time: an acceptance is stored (`Ok(reply)`); a duplicate
    ///   (`Refused(RequestIdReused)`) or a rejection (`Refused(reason)`) changes
    ///   nothing but `alarms`, because the leader emits events only for
    ///   acceptances and a mismatch means the replicas diverged.
    pub fn apply(&mut self, ev: &Event, log_ts_ms: u64) -> Applied {
        match ev {
            Event::SetTariff { tariff, request_id } => {
                self.apply_tariff(tariff, *request_id, log_ts_ms)
            }
            Event::Account(ev) => self.apply_account(ev, log_ts_ms),
            Event::BulkCreate {
                accounts,
                currency,
                credit_limit,
                initial_balance,
            } => self.apply_bulk(
                accounts,
                currency,
                *credit_limit,
                *initial_balance,
                log_ts_ms,
            ),
        }
    }

    /// Tariff changes: deduplicated on the request id, like account requests.
    /// A duplicate returns the version it was granted and changes nothing.
    fn apply_tariff(&mut self, tariff: &Tariff, request_id: RequestId, log_ts_ms: u64) -> Applied {
        let window = self.limits.dedup_window_ms;
        // Evict by log time, so every replica evicts the same entries.
        let expired: Vec<RequestId> = self
            .tariff_requests
            .keys()
            .filter(|id| id.unix_ms().saturating_add(window) < log_ts_ms)
            .copied()
            .collect();
        for id in expired {
            self.tariff_requests.remove(&id);
        }
        let hash = stable_hash(tariff);
        if let Some((h, version)) = self.tariff_requests.get(&request_id) {
            return if *h == hash {
                Applied::Ok(Reply::TariffSet { version: *version })
            } else {
                Applied::Refused(Rejection::RequestIdReused)
            };
        }
        if request_id
            .unix_ms()
            .saturating_add(window)
            .saturating_sub(self.limits.clock_bound_ms)
            < log_ts_ms
        {
            return Applied::Refused(Rejection::RequestTooOld);
        }
        if self.tariff_requests.len() >= MAX_TARIFF_REQUESTS {
            return Applied::Refused(Rejection::LimitExceeded);
        }
        let version = self
            .tariffs
            .get(&tariff.rating_group)
            .map_or(1, |t| t.version.saturating_add(1));
        let mut t = tariff.clone();
        t.version = version;
        Arc::make_mut(&mut self.tariffs).insert(t.rating_group, t);
        self.tariff_requests.insert(request_id, (hash, version));
        Applied::Ok(Reply::TariffSet { version })
    }

    fn apply_bulk(
        &mut self,
        accounts: &[AccountId],
        currency: &str,
        credit_limit: i64,
        initial_balance: i64,
        log_ts_ms: u64,
    ) -> Applied {
        let template = match super::decide::new_account(
            currency,
            credit_limit,
            initial_balance,
            &[],
            &self.limits,
            log_ts_ms,
        ) {
            // One shared copy for every account this event creates: they are
            // identical, and the first write to one copies it (Arc::make_mut
            // in decide), so an idle bulk account costs its key and its slot.
            Ok(a) => Arc::new(a),
            Err(r) => {
                self.alarms = self.alarms.saturating_add(1);
                return Applied::Refused(r);
            }
        };
        let (mut created, mut existing, mut mismatched) = (0u64, 0u64, 0u64);
        for id in accounts {
            match self.accounts.get(id.0.as_str()) {
                Some(a) => {
                    existing += 1;
                    if a.currency != template.currency || a.credit_limit != credit_limit {
                        mismatched += 1;
                    }
                }
                None => {
                    created += 1;
                    self.accounts.insert(AccountKey::from(id), template.clone());
                }
            }
        }
        Applied::Ok(Reply::BulkCreated {
            created,
            existing,
            mismatched,
        })
    }

    fn apply_account(&mut self, ev: &AccountEvent, log_ts_ms: u64) -> Applied {
        let id = &ev.request.account;
        let current = self.accounts.get(id.0.as_str()).map_or(0, |a| a.version);
        if current != ev.expected_version {
            return Applied::Conflict;
        }
        if let Command::Expire { reservation } = &ev.request.cmd {
            let due = self
                .accounts
                .get(id.0.as_str())
                .and_then(|a| a.ext.reservations.get(reservation))
                .map(|r| r.sweep_at_ms);
            if due.is_some_and(|at| log_ts_ms < at) {
                self.alarms = self.alarms.saturating_add(1);
                return Applied::Refused(Rejection::RequestTooOld);
            }
        }
        // Take the account out so `decide` can mutate it in place when no
        // snapshot shares it.
        let mut slot = self.accounts.remove(id.0.as_str());
        let old_due = due_list(slot.as_deref());
        let out = match decide(
            &mut slot,
            &ev.tariffs,
            &self.limits,
            &ev.request,
            ev.decided_ms,
        ) {
            Decision::Accept(reply) => {
                let new_due = due_list(slot.as_deref());
                for x in &old_due {
                    if !new_due.contains(x) {
                        self.expiry_index.remove(&(x.0, id.clone(), x.1));
                    }
                }
                for x in &new_due {
                    if !old_due.contains(x) {
                        self.expiry_index.insert((x.0, id.clone(), x.1));
                    }
                }
                Applied::Ok(reply)
            }
            Decision::Duplicate(_) => {
                self.alarm(ev, "a duplicate");
                Applied::Refused(Rejection::RequestIdReused)
            }
            Decision::Reject(r) => {
                self.alarm(ev, &format!("{r:?}"));
                Applied::Refused(r)
            }
        };
        if let Some(a) = slot {
            self.accounts.insert(AccountKey::from(id), a);
        }
        out
    }

    /// Counts and logs an accepted event whose decision did not reproduce
    /// on apply: the replicas' states diverged somewhere.
    fn alarm(&mut self, ev: &AccountEvent, now: &str) {
        self.alarms = self.alarms.saturating_add(1);
        tracing::error!(
            account = %ev.request.account.0,
            request = ?ev.request.cmd,
            expected_version = ev.expected_version,
            decided_ms = ev.decided_ms,
            on_apply = now,
            "an accepted event did not reproduce on apply (alarm)"
        );
    }

    pub fn account(&self, id: &AccountId) -> Option<&Arc<Account>> {
        self.accounts.get(id.0.as_str())
    }

    /// Fixed-hash digest of the whole state (deterministic iteration), for
    /// replica comparison. The expiry index is derived data and not hashed
    /// (`check_invariants` checks it).
    pub fn state_hash(&self) -> u64 {
        let mut h = StableHasher::default();
        let l = &self.limits;
        (
            l.dedup_window_ms,
            l.clock_bound_ms,
            l.reservation_validity_ms,
            l.expiry_grace_ms,
            l.refund_horizon_ms,
            l.tombstone_ttl_ms,
        )
            .hash(&mut h);
        (
            l.max_dedup_per_account,
            l.max_charges_per_account,
            l.max_sessions_per_account,
            l.max_reservations_per_account,
            l.max_buckets_per_account,
        )
            .hash(&mut h);
        self.tariffs.hash(&mut h);
        for (id, v) in self.tariff_requests.iter() {
            (id, v).hash(&mut h);
        }
        self.alarms.hash(&mut h);
        self.accounts.len().hash(&mut h);
        for (k, a) in self.accounts.iter() {
            k.hash(&mut h);
            a.hash(&mut h);
        }
        h.finish()
    }

    /// Open reservations due for expiry at `now_ms` (`expires_at + grace <=
    /// now_ms`), at most `max`, earliest first (then by account, reservation).
    pub fn due_expiries(&self, now_ms: u64, max: usize) -> Vec<(AccountId, ReservationId)> {
        self.expiry_index
            .iter()
            .take_while(|(at, _, _)| *at <= now_ms)
            .take(max)
            .map(|(_, a, r)| (a.clone(), *r))
            .collect()
    }

    /// Checks DESIGN §3 invariants 1 and 2 over every account (see
    /// `Account::check`), and that the expiry index matches the accounts.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut expected = 0usize;
        for (key, a) in self.accounts.iter() {
            let id = AccountId(key.0.to_string());
            a.check().map_err(|e| format!("account {}: {e}", id.0))?;
            for (rid, r) in &a.ext.reservations {
                expected += 1;
                if !self
                    .expiry_index
                    .contains(&(r.sweep_at_ms, id.clone(), *rid))
                {
                    return Err(format!(
                        "account {}: {rid:?} missing from expiry index",
                        id.0
                    ));
                }
            }
        }
        if expected != self.expiry_index.len() {
            return Err(format!(
                "expiry index has {} entries, accounts {expected}",
                self.expiry_index.len()
            ));
        }
        Ok(())
    }
}

fn due_list(a: Option<&Account>) -> Vec<(u64, ReservationId)> {
    a.map(|a| {
        a.ext
            .reservations
            .iter()
            .map(|(id, r)| (r.sweep_at_ms, *id))
            .collect()
    })
    .unwrap_or_default()
}

/// Deserializes the account table sharing one `Arc` among consecutive
/// identical accounts (as bulk creation left them), so a restored or
/// installed snapshot costs what the state it came from did. Sharing is
/// invisible: accounts are immutable behind their `Arc` and copied on write.
fn deserialize_shared<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<imbl::OrdMap<AccountKey, Arc<Account>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = imbl::OrdMap<AccountKey, Arc<Account>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of accounts")
        }
        fn visit_map<M: serde::de::MapAccess<'de>>(
            self,
            mut m: M,
        ) -> Result<Self::Value, M::Error> {
            let mut out = imbl::OrdMap::new();
            let mut last: Option<Arc<Account>> = None;
            while let Some((k, a)) = m.next_entry::<AccountKey, Account>()? {
                let a = match last {
                    Some(ref l) if **l == a => l.clone(),
                    _ => Arc::new(a),
                };
                last = Some(a.clone());
                out.insert(k, a);
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}
