//! A recorded history of client operations and the final state read back
//! from the replicas: the input of the [`crate::checker`].
//!
//! An operation is one client call as the application saw it: invoked at
//! `invoke`, completed at `complete` with an [`Outcome`]. A call whose
//! outcome the client never learnt (timeout, lost leader, crash) is
//! [`Outcome::Unknown`] and stays open to the end of time: its effect may
//! land at any point after `invoke`, or never. A retry of a call with the
//! same request id is a separate operation with the same [`Request`].
//!
//! Requests and results are the ledger's own types (`charging_node::ledger`),
//! with replies normalized by [`seen`]: without times that depend on
//! the decision clock.
use charging_node::ledger::{
    Account, AccountId, Command, Limits, Rejection, Reply, Request, RequestId, Tariffs,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A reply as a client sees it and the checker compares it: without the
/// fields that depend on the decision clock (a grant's expiry is zeroed),
/// which the model, deciding at the client's time, cannot know.
pub fn seen(r: &Reply) -> Reply {
    let mut r = r.clone();
    match &mut r {
        Reply::Reserved(g) => g.expires_at_ms = 0,
        Reply::Updated { grants, .. } => {
            for g in grants.iter_mut().filter_map(|g| g.result.as_mut().ok()) {
                g.expires_at_ms = 0;
            }
        }
        _ => {}
    }
    r
}

/// What the client learnt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged success, as [`seen`] by the client.
    Ok(Reply),
    /// A definite business rejection (nothing changed).
    Rejected(Rejection),
    /// Timeout, lost leader, crash: applied fully or not at all.
    Unknown,
}

impl Outcome {
    pub fn is_definite(&self) -> bool {
        !matches!(self, Outcome::Unknown)
    }
}

/// One client operation.
#[derive(Clone, Debug)]
pub struct Op {
    /// Index in [`History::ops`].
    pub id: usize,
    /// The client (process) that ran it; a client runs one op at a time.
    pub process: u32,
    pub request: Request,
    /// The client's wall clock at invocation, unix ms: the model decides at
    /// this time (request ids carry it too).
    pub client_ms: u64,
    /// Invocation and completion on the history's own monotonic clock
    /// (any unit; only the order matters). `complete` is `u64::MAX` for
    /// unknown outcomes.
    pub invoke: u64,
    pub complete: u64,
    pub outcome: Outcome,
}

impl Op {
    pub fn account(&self) -> &AccountId {
        &self.request.account
    }
}

/// A history under construction or complete.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub ops: Vec<Op>,
    /// Tariffs in force during the run (the model rates with them).
    pub tariffs: Tariffs,
    pub limits: Limits,
}

impl History {
    pub fn new(tariffs: Tariffs, limits: Limits) -> History {
        History {
            ops: Vec::new(),
            tariffs,
            limits,
        }
    }

    /// Records an invocation; returns the op id to complete later.
    pub fn invoke(&mut self, process: u32, request: Request, client_ms: u64, at: u64) -> usize {
        let id = self.ops.len();
        self.ops.push(Op {
            id,
            process,
            request,
            client_ms,
            invoke: at,
            complete: u64::MAX,
            outcome: Outcome::Unknown,
        });
        id
    }

    /// Records the completion of op `id` (an `Unknown` outcome keeps it open).
    pub fn complete(&mut self, id: usize, outcome: Outcome, at: u64) {
        let op = &mut self.ops[id];
        op.complete = if outcome.is_definite() { at } else { u64::MAX };
        op.outcome = outcome;
    }

    /// Ops by account, in invocation order.
    pub fn by_account(&self) -> BTreeMap<AccountId, Vec<&Op>> {
        let mut m: BTreeMap<AccountId, Vec<&Op>> = BTreeMap::new();
        for op in &self.ops {
            m.entry(op.account().clone()).or_default().push(op);
        }
        for v in m.values_mut() {
            v.sort_by_key(|o| (o.invoke, o.id));
        }
        m
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for o in &self.ops {
            match o.outcome {
                Outcome::Ok(_) => c.0 += 1,
                Outcome::Rejected(_) => c.1 += 1,
                Outcome::Unknown => c.2 += 1,
            }
        }
        c
    }
}

/// What can be read of an account after the run. Full state comes from a
/// replica in the simulators; a real cluster only shows a balance view.
#[derive(Clone, Debug)]
pub enum FinalAccount {
    Full(Arc<Account>),
    View(AccountSummary),
}

/// The observable summary the model is compared against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountSummary {
    pub version: u64,
    pub main_balance: i64,
    pub main_reserved: i64,
    pub debt: i64,
    pub credit_limit: i64,
    pub open_reservations: u32,
}

impl AccountSummary {
    pub fn of(a: &Account) -> AccountSummary {
        let main = a.main_bucket();
        AccountSummary {
            version: a.version,
            main_balance: main.map_or(0, |b| b.balance),
            main_reserved: main.map_or(0, |b| b.reserved),
            debt: a.debt,
            credit_limit: a.credit_limit,
            open_reservations: a.ext.reservations.len() as u32,
        }
    }
}

impl FinalAccount {
    pub fn summary(&self) -> AccountSummary {
        match self {
            FinalAccount::Full(a) => AccountSummary::of(a),
            FinalAccount::View(s) => s.clone(),
        }
    }
}

/// One replica's applied state of one shard, for the replica-agreement check.
#[derive(Clone, Debug)]
pub struct ReplicaDigest {
    pub node: u64,
    pub shard: u32,
    pub applied_index: u64,
    pub state_hash: u64,
}

/// Everything read back after the run.
#[derive(Clone, Debug, Default)]
pub struct FinalState {
    /// Accounts as read from an up-to-date replica (or the leader); an
    /// account missing here does not exist.
    pub accounts: BTreeMap<AccountId, FinalAccount>,
    pub replicas: Vec<ReplicaDigest>,
}

/// Whether a command is a session operation (deduplicated on session + seq).
pub fn is_session_op(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Reserve { .. }
            | Command::Update { .. }
            | Command::Terminate { .. }
            | Command::Open { .. }
    )
}

/// A UUIDv7-shaped request id at `unix_ms` with `low` as its random bits.
pub fn request_id_at(unix_ms: u64, low: u64) -> RequestId {
    // Version 7 and variant bits as a real UUIDv7 has them.
    let v = (u128::from(unix_ms & 0xFFFF_FFFF_FFFF) << 80)
        | (0x7u128 << 76)
        | (u128::from(low >> 52 & 0xFFF) << 64)
        | (0b10u128 << 62)
        | u128::from(low & 0x3FFF_FFFF_FFFF_FFFF);
    RequestId(v)
}

/// A history recorded by concurrent clients, ordered by its own logical
/// clock: each operation is invoked, awaited, then completed (and the
/// workload told its outcome). Shared by the turmoil and real runners.
#[derive(Default)]
pub struct Recorder {
    pub history: std::sync::Mutex<History>,
    tick: std::sync::atomic::AtomicU64,
}

impl Recorder {
    pub fn new(history: History) -> Recorder {
        Recorder {
            history: std::sync::Mutex::new(history),
            tick: Default::default(),
        }
    }

    fn now(&self) -> u64 {
        self.tick.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the invocation; returns the op's id.
    pub fn invoke(&self, process: u32, req: &Request, client_ms: u64) -> usize {
        let at = self.now();
        self.lock().invoke(process, req.clone(), client_ms, at)
    }

    /// Records the outcome and tells the workload.
    pub fn complete(
        &self,
        id: usize,
        req: &Request,
        out: &Outcome,
        workload: &std::sync::Mutex<crate::workload::Workload>,
    ) {
        let at = self.now();
        self.lock().complete(id, out.clone(), at);
        workload
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(req, out);
    }

    /// A copy of the history so far.
    pub fn snapshot(&self) -> History {
        self.lock().clone()
    }
}
