//! The checker: DESIGN §3 invariants and per-account linearizability over a
//! [`History`] and the [`FinalState`] read back after convergence.
//!
//! Checks, each reported as a [`Violation`] of its [`Kind`]:
//! - `ReplicaDivergence`: replicas of a shard at the same applied index have
//!   different state hashes (invariant 5).
//! - `Invariant`: an account's own structural check (`Account::check`) fails.
//! - `Overdraft`: main bucket `balance - reserved < -credit_limit`, or its
//!   flows do not add up to its balance (invariant 1, recomputed here).
//! - `Conservation`: the final `balance - debt` is not what the history
//!   allows: initial + top-ups + refunds - debit and commit charges, each
//!   distinct request id counted once, unknown ones anywhere between nothing
//!   and all of it. Computed from the history alone, not from the ledger.
//! - `ResolvedTwice`: two different requests both acknowledged resolving the
//!   same reservation (final commit or release) (invariant 2).
//! - `DuplicateChanged`: the same request (same dedup key, same parameters)
//!   acknowledged with different results, or acknowledged and then decided
//!   again as a rejection (invariant 3).
//! - `AckLost`: an acknowledged request is missing from the final state's
//!   dedup table (invariant 4), or an acknowledged account is missing.
//! - `NotLinearizable`: no order of the account's operations consistent with
//!   real time, replayed through the ledger's sequential specification
//!   (`decide`), gives every definite outcome and the final state, with each
//!   unknown operation applied once or not at all. The search is bounded; an
//!   account whose search runs out of budget is counted `inconclusive`, not a
//!   violation.
use crate::history::{
    is_session_op, AccountSummary, FinalAccount, FinalState, History, Op, Outcome,
};
use charging_node::ledger::hash::stable_hash;
use charging_node::ledger::{
    decide, params_hash, rating, Account, AccountId, Command, Decision, Limits, Reply, RequestId,
    Tariffs,
};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ReplicaDivergence,
    Invariant,
    Overdraft,
    Conservation,
    ResolvedTwice,
    DuplicateChanged,
    AckLost,
    NotLinearizable,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub kind: Kind,
    pub account: Option<String>,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.account {
            Some(a) => write!(f, "{:?} [{a}]: {}", self.kind, self.detail),
            None => write!(f, "{:?}: {}", self.kind, self.detail),
        }
    }
}

/// What the checker found and how much it looked at.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    pub accounts: usize,
    pub ops: usize,
    pub acked: usize,
    pub rejected: usize,
    pub unknown: usize,
    /// Accounts whose linearizability search ran out of budget.
    pub inconclusive: usize,
    /// Model steps taken by the linearizability search.
    pub search_steps: u64,
    /// Replica digests compared with another replica's at the same applied
    /// index (invariant 5); 0 means that invariant went unchecked.
    pub replicas_compared: usize,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// A run's own failures (no convergence, a setup that failed...) count
    /// as invariant violations: the run proves nothing.
    pub fn add_run_errors(&mut self, errors: impl IntoIterator<Item = String>) {
        for detail in errors {
            self.violations.push(Violation {
                kind: Kind::Invariant,
                account: None,
                detail,
            });
        }
    }
    pub fn has(&self, kind: Kind) -> bool {
        self.violations.iter().any(|v| v.kind == kind)
    }
}

/// Budget of model steps per account for the linearizability search.
pub const DEFAULT_SEARCH_BUDGET: u64 = 200_000;

pub fn check(h: &History, f: &FinalState) -> Report {
    check_with_budget(h, f, DEFAULT_SEARCH_BUDGET)
}

pub fn check_with_budget(h: &History, f: &FinalState, budget: u64) -> Report {
    let (acked, rejected, unknown) = h.counts();
    let mut r = Report {
        ops: h.ops.len(),
        acked,
        rejected,
        unknown,
        ..Report::default()
    };
    check_replicas(f, &mut r);
    let by_account = h.by_account();
    r.accounts = by_account.len();
    for (id, fa) in &f.accounts {
        check_account_state(id, fa, &mut r);
    }
    for (id, ops) in &by_account {
        let fin = f.accounts.get(id);
        check_conservation(id, ops, fin, &h.tariffs, &mut r);
        check_resolved_once(id, ops, &mut r);
        check_duplicates(id, ops, &mut r);
        check_durable(id, ops, fin, &mut r);
        match linearize(ops, fin, &h.tariffs, &h.limits, budget) {
            Lin::Ok(steps) => r.search_steps += steps,
            Lin::OutOfBudget(steps) => {
                r.search_steps += steps;
                r.inconclusive += 1;
            }
            Lin::No(steps, why) => {
                r.search_steps += steps;
                r.violations.push(Violation {
                    kind: Kind::NotLinearizable,
                    account: Some(id.0.clone()),
                    detail: why,
                });
            }
        }
    }
    r
}

fn violation(r: &mut Report, kind: Kind, account: &AccountId, detail: String) {
    r.violations.push(Violation {
        kind,
        account: Some(account.0.clone()),
        detail,
    });
}

/// Invariant 5: equal applied index, equal state hash.
fn check_replicas(f: &FinalState, r: &mut Report) {
    let mut seen: BTreeMap<(u32, u64), (u64, u64)> = BTreeMap::new();
    for d in &f.replicas {
        match seen.get(&(d.shard, d.applied_index)) {
            None => {
                seen.insert((d.shard, d.applied_index), (d.node, d.state_hash));
            }
            Some((node, hash)) if *hash != d.state_hash => {
                r.replicas_compared += 1;
                r.violations.push(Violation {
                    kind: Kind::ReplicaDivergence,
                    account: None,
                    detail: format!(
                        "shard {} at applied index {}: node {node} hash {hash:#x}, node {} hash {:#x}",
                        d.shard, d.applied_index, d.node, d.state_hash
                    ),
                });
            }
            Some(_) => r.replicas_compared += 1,
        }
    }
}

/// Invariants 1 and 2 on the final state: the node's own check, plus the main
/// bucket's flows and floor recomputed here.
fn check_account_state(id: &AccountId, fa: &FinalAccount, r: &mut Report) {
    let s = fa.summary();
    if i128::from(s.main_balance) - i128::from(s.main_reserved) < -i128::from(s.credit_limit) {
        violation(
            r,
            Kind::Overdraft,
            id,
            format!(
                "main bucket balance {} - reserved {} below -credit_limit {}",
                s.main_balance, s.main_reserved, s.credit_limit
            ),
        );
    }
    if let FinalAccount::Full(a) = fa {
        if let Err(e) = a.check() {
            violation(r, Kind::Invariant, id, e);
        }
        for b in &a.buckets {
            let f = &b.flows;
            let net = i128::from(f.credits) - i128::from(f.charges) + i128::from(f.refunds)
                - i128::from(f.expired)
                + i128::from(f.adjustments);
            if net != i128::from(b.balance) {
                violation(
                    r,
                    Kind::Overdraft,
                    id,
                    format!("bucket {:?}: flows {:?} != balance {}", b.id, f, b.balance),
                );
            }
        }
    }
}

/// Money a command may move on `balance - debt`: `(low, high)` if applied.
/// `None` for commands that move no money.
fn money_range(op: &Op, res: Option<&Reply>, tariffs: &Tariffs) -> Option<(i128, i128)> {
    let price = |rg: u32, used: &charging_node::ledger::Units| -> i128 {
        let p = rating::price_money(tariffs.get(&rg), rating::wide(used));
        i128::try_from(p).unwrap_or(i128::MAX / 4)
    };
    match (&op.request.cmd, res) {
        (
            Command::CreateAccount {
                initial_balance, ..
            },
            _,
        ) => Some((i128::from(*initial_balance), i128::from(*initial_balance))),
        (Command::TopUp { amount, .. }, _) | (Command::Refund { amount, .. }, _) => {
            Some((i128::from(*amount), i128::from(*amount)))
        }
        (Command::Debit { .. }, Some(Reply::Debited { charged }))
        | (Command::Commit { .. }, Some(Reply::Committed { charged, .. })) => {
            Some((-i128::from(*charged), -i128::from(*charged)))
        }
        (
            Command::Debit {
                rating_group,
                units,
            },
            _,
        ) => Some((-price(*rating_group, units), 0)),
        // A commit rates cumulative usage once: the difference it charges is
        // at most the price of the usage it reports. Its rating group is the
        // reservation's, unknown here: bound by the dearest tariff.
        (Command::Commit { used, .. }, _) => {
            let worst = tariffs.keys().map(|rg| price(*rg, used)).max().unwrap_or(0);
            Some((-worst, 0))
        }
        _ => None,
    }
}

/// Conservation from the history alone: `balance - debt` of the final state
/// lies in the range the history allows, each request id counted once.
fn check_conservation(
    id: &AccountId,
    ops: &[&Op],
    fin: Option<&FinalAccount>,
    tariffs: &Tariffs,
    r: &mut Report,
) {
    // Group by dedup key of money-moving, non-session requests.
    let mut by_rid: BTreeMap<RequestId, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        if !is_session_op(&op.request.cmd) {
            by_rid.entry(op.request.request_id).or_default().push(op);
        }
    }
    let (mut lo, mut hi) = (0i128, 0i128);
    let mut any_create = false;
    for group in by_rid.values() {
        let ok = group.iter().find_map(|o| match &o.outcome {
            Outcome::Ok(res) => Some((*o, res)),
            _ => None,
        });
        if let Some((o, res)) = ok {
            if let Some((a, b)) = money_range(o, Some(res), tariffs) {
                any_create |= matches!(o.request.cmd, Command::CreateAccount { .. });
                lo += a;
                hi += b;
            }
        } else if group.iter().any(|o| !o.outcome.is_definite()) {
            if let Some((a, b)) = money_range(group[0], None, tariffs) {
                lo += a.min(0);
                hi += b.max(0);
            }
        }
    }
    let Some(fin) = fin else {
        if any_create {
            violation(
                r,
                Kind::AckLost,
                id,
                "acknowledged account is missing".into(),
            );
        }
        return;
    };
    let s: AccountSummary = fin.summary();
    let net = i128::from(s.main_balance) - i128::from(s.debt);
    // Only exact when no creation is in doubt; an unknown create widens the
    // range by its initial balance like any other credit.
    if net < lo || net > hi {
        violation(
            r,
            Kind::Conservation,
            id,
            format!(
                "balance {} - debt {} = {net}, history allows [{lo}, {hi}]",
                s.main_balance, s.debt
            ),
        );
    }
}

/// Invariant 2: two different requests both acknowledged resolving one reservation.
fn check_resolved_once(id: &AccountId, ops: &[&Op], r: &mut Report) {
    let mut resolved: BTreeMap<u64, RequestId> = BTreeMap::new();
    for op in ops {
        let res = match (&op.request.cmd, &op.outcome) {
            (
                Command::Commit {
                    reservation,
                    is_final: true,
                    ..
                },
                Outcome::Ok(_),
            )
            | (Command::Release { reservation }, Outcome::Ok(_)) => reservation.0,
            _ => continue,
        };
        match resolved.get(&res) {
            Some(rid) if *rid != op.request.request_id => violation(
                r,
                Kind::ResolvedTwice,
                id,
                format!(
                    "reservation {res} resolved by request {:#x} and again by op {} (request {:#x})",
                    rid.0, op.id, op.request.request_id.0
                ),
            ),
            Some(_) => {}
            None => {
                resolved.insert(res, op.request.request_id);
            }
        }
    }
}

/// The dedup key of a request: session ops on (session, seq), others on the id.
fn dedup_key(op: &Op) -> (String, u128) {
    match &op.request.cmd {
        Command::Reserve { session, seq, .. }
        | Command::Update { session, seq, .. }
        | Command::Terminate { session, seq, .. }
        | Command::Open { session, seq, .. } => (session.0.clone(), u128::from(*seq)),
        _ => (String::new(), op.request.request_id.0),
    }
}

/// Invariant 3: the same request answers the same, and is not decided again.
fn check_duplicates(id: &AccountId, ops: &[&Op], r: &mut Report) {
    let mut groups: BTreeMap<((String, u128), u64), Vec<&Op>> = BTreeMap::new();
    for op in ops {
        groups
            .entry((dedup_key(op), params_hash(&op.request.cmd)))
            .or_default()
            .push(op);
    }
    for g in groups.values() {
        let Some(first) = g.iter().find(|o| matches!(o.outcome, Outcome::Ok(_))) else {
            continue;
        };
        let Outcome::Ok(want) = &first.outcome else {
            continue;
        };
        for o in g {
            match &o.outcome {
                Outcome::Ok(got) if got != want => violation(
                    r,
                    Kind::DuplicateChanged,
                    id,
                    format!(
                        "request {:#x}: op {} got {want:?}, its duplicate op {} got {got:?}",
                        o.request.request_id.0, first.id, o.id
                    ),
                ),
                Outcome::Rejected(why) if o.invoke > first.complete => violation(
                    r,
                    Kind::DuplicateChanged,
                    id,
                    format!(
                        "request {:#x}: op {} acknowledged {want:?}, its later duplicate op {} was decided again: {why:?}",
                        o.request.request_id.0, first.id, o.id
                    ),
                ),
                _ => {}
            }
        }
    }
}

/// Invariant 4: every acknowledged non-session request is in the final
/// dedup table, with the acknowledged result.
fn check_durable(id: &AccountId, ops: &[&Op], fin: Option<&FinalAccount>, r: &mut Report) {
    let Some(FinalAccount::Full(a)) = fin else {
        return;
    };
    for op in ops {
        let Outcome::Ok(res) = &op.outcome else {
            continue;
        };
        if is_session_op(&op.request.cmd) || matches!(op.request.cmd, Command::CreateAccount { .. })
        {
            continue;
        }
        match a.ext.dedup.get(&op.request.request_id) {
            None => violation(
                r,
                Kind::AckLost,
                id,
                format!(
                    "op {} (request {:#x}, {:?}) acknowledged {res:?} but is not in the final state",
                    op.id, op.request.request_id.0, op.request.cmd
                ),
            ),
            Some(e) if crate::history::seen(&e.reply) != *res => violation(
                r,
                Kind::AckLost,
                id,
                format!(
                    "op {} acknowledged {res:?}, final state remembers {:?}",
                    op.id, e.reply
                ),
            ),
            Some(_) => {}
        }
    }
}

enum Lin {
    Ok(u64),
    OutOfBudget(u64),
    No(u64, String),
}

struct Search<'a> {
    ops: &'a [&'a Op],
    tariffs: &'a Tariffs,
    limits: &'a Limits,
    want: Option<AccountSummary>,
    seen: HashSet<(Vec<u64>, u64)>,
    steps: u64,
    budget: u64,
    /// The longest prefix of definite ops linearized, for the report.
    best: usize,
    best_fail: String,
}

fn outcome_of(d: &Decision) -> Outcome {
    match d {
        Decision::Accept(reply) | Decision::Duplicate(reply) => {
            Outcome::Ok(crate::history::seen(reply))
        }
        Decision::Reject(r) => Outcome::Rejected(*r),
    }
}

impl Search<'_> {
    fn summary_matches(&self, st: &Option<Arc<Account>>) -> bool {
        match (&self.want, st) {
            (None, None) => true,
            (Some(w), Some(a)) => *w == AccountSummary::of(a),
            _ => false,
        }
    }

    /// Depth-first search for a linearization. `None` = out of budget.
    fn dfs(
        &mut self,
        done: &mut Vec<u64>,
        st: &Option<Arc<Account>>,
        n_def: usize,
    ) -> Option<bool> {
        self.steps += 1;
        if self.steps > self.budget {
            return None;
        }
        // Versions only grow: past the final version there is no way back.
        let version = st.as_ref().map_or(0, |a| a.version);
        if self.want.as_ref().is_some_and(|w| version > w.version) {
            return Some(false);
        }
        let key = (done.clone(), stable_hash(st));
        if !self.seen.insert(key) {
            return Some(false);
        }
        let is_done = |done: &Vec<u64>, i: usize| done[i / 64] >> (i % 64) & 1 == 1;
        // Earliest completion among pending definite ops bounds what may go next.
        let mut min_complete = u64::MAX;
        let mut pending_definite = 0;
        for (i, op) in self.ops.iter().enumerate() {
            if !is_done(done, i) && op.outcome.is_definite() {
                pending_definite += 1;
                min_complete = min_complete.min(op.complete);
            }
        }
        if pending_definite == 0 && self.summary_matches(st) {
            return Some(true);
        }
        let linearized = self.ops.len() - pending_definite;
        if n_def - pending_definite > self.best {
            self.best = n_def - pending_definite;
            let _ = linearized;
        }
        // Definite ops first, then unknown ones.
        for pass in 0..2 {
            for i in 0..self.ops.len() {
                if is_done(done, i) {
                    continue;
                }
                let op = self.ops[i];
                if op.outcome.is_definite() != (pass == 0) || op.invoke > min_complete {
                    continue;
                }
                self.steps += 1;
                if self.steps > self.budget {
                    return None;
                }
                let mut next = st.clone();
                let d = decide(
                    &mut next,
                    self.tariffs,
                    self.limits,
                    &op.request,
                    op.client_ms,
                );
                if op.outcome.is_definite() {
                    let got = outcome_of(&d);
                    if got != op.outcome {
                        if self.best_fail.is_empty() || n_def - pending_definite >= self.best {
                            self.best_fail = format!(
                                "op {} ({:?}) recorded {:?}, model gives {got:?} after {} definite ops",
                                op.id,
                                op.request.cmd,
                                op.outcome,
                                n_def - pending_definite
                            );
                        }
                        continue;
                    }
                } else if !matches!(d, Decision::Accept(_)) {
                    // An unknown op that changes nothing need not be placed.
                    continue;
                }
                done[i / 64] |= 1 << (i % 64);
                let r = self.dfs(done, &next, n_def);
                done[i / 64] &= !(1 << (i % 64));
                match r {
                    Some(true) => return Some(true),
                    None => return None,
                    Some(false) => {}
                }
            }
        }
        if pending_definite == 0 && self.best_fail.is_empty() {
            self.best_fail = format!(
                "every definite op placed, final state {:?} never reached (model: {:?})",
                self.want,
                st.as_deref().map(AccountSummary::of)
            );
        }
        Some(false)
    }
}

fn linearize(
    ops: &[&Op],
    fin: Option<&FinalAccount>,
    tariffs: &Tariffs,
    limits: &Limits,
    budget: u64,
) -> Lin {
    // A request acknowledged on one attempt and unknown on earlier ones was
    // applied once (dedup): one op spanning from the first attempt's
    // invocation to the acknowledgement stands for all of them.
    let mut merged: Vec<Op> = Vec::with_capacity(ops.len());
    for op in ops {
        let same = |o: &&&Op| o.request == op.request;
        match &op.outcome {
            Outcome::Unknown
                if ops
                    .iter()
                    .filter(same)
                    .any(|o| matches!(o.outcome, Outcome::Ok(_)) && o.invoke > op.invoke) =>
            {
                continue;
            }
            Outcome::Ok(_) => {
                let mut m = (*op).clone();
                m.invoke = ops
                    .iter()
                    .filter(same)
                    .filter(|o| !o.outcome.is_definite() && o.invoke < op.invoke)
                    .map(|o| o.invoke)
                    .min()
                    .unwrap_or(op.invoke);
                merged.push(m);
            }
            _ => merged.push((*op).clone()),
        }
    }
    let refs: Vec<&Op> = merged.iter().collect();
    let ops = &refs[..];
    let n_def = ops.iter().filter(|o| o.outcome.is_definite()).count();
    let mut s = Search {
        ops,
        tariffs,
        limits,
        want: fin.map(FinalAccount::summary),
        seen: HashSet::new(),
        steps: 0,
        budget,
        best: 0,
        best_fail: String::new(),
    };
    let mut done = vec![0u64; ops.len().div_ceil(64).max(1)];
    match s.dfs(&mut done, &None, n_def) {
        Some(true) => Lin::Ok(s.steps),
        None => Lin::OutOfBudget(s.steps),
        Some(false) => Lin::No(s.steps, s.best_fail),
    }
}
