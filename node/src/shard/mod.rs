//! The shard actor: one ractor actor per shard replica on a node. While its
//! replica leads (an *epoch*), it hosts the shard's accounts as virtual actors,
//! decides every mutation, and is the shard's only, fenced, ordered proposer.
//!
//! Per request: `decide` against the account's speculative state (its applied
//! state plus this epoch's in-flight events) → on acceptance an
//! [`AccountEvent`] joins the open batch and the speculative state advances →
//! a `Flush` message (queued behind everything already in the mailbox) sends
//! the batch as one Raft entry with `write().with_leader(epoch)` → when the
//! entry is applied, the callback responder puts `BatchDone` in the mailbox →
//! replies go out per account in decision order.
//!
//! Rejections are reads: they are released only after a read index taken
//! after the decision confirms this leader (one per flush), and after the
//! account's earlier replies. Duplicates wait behind the original.
//!
//! Leaving leadership ends the epoch: everything in flight is answered
//! `Unknown` (retry with the same request id), speculative state is dropped.
pub use crate::config::ShardLimits;
mod handle;
use crate::clock::SharedClock;
use crate::ledger::{
    decide, AccountEvent, AccountId, Applied, Command, Decision, Event, Rejection, Reply, Request,
    Tariff, Tariffs,
};
use crate::maps::HashMap;
use crate::raft::state_machine::ShardStore;
use crate::raft::{Batch, GroupEvent, LeaderId, NodeId, Raft, ShardId, WriteResult};
pub use handle::{Hosted, ShardHandle};
use metrics::{counter, gauge, histogram};
use openraft::async_runtime::WatchReceiver;
use openraft::ReadPolicy;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

mod epoch;
mod sink;
pub mod supervisor;
pub mod sweeper;

use epoch::*;
pub use sink::*;

/// Messages of the shard actor.
pub enum ShardMsg {
    /// From the front door: one request to one account of this shard.
    Request { req: Request, reply: ReplyTx },
    /// From the front door's stream path: a stream batch's requests to this
    /// shard, each with its slot in the batch's sink, handled in order.
    Requests { reqs: Vec<(Request, BatchSlot)> },
    /// From the front door: replace a rating group's tariff.
    SetTariff {
        tariff: Tariff,
        request_id: crate::ledger::RequestId,
        reply: ReplyTx,
    },
    /// From itself: propose the open batch.
    Flush,
    /// From the Raft responder: the entry of batch `seq` was applied (or not).
    BatchDone { seq: u64, result: Box<WriteResult> },
    /// From a read-index task: rejections decided up to `seq` are confirmed (or not).
    ReadDone { seq: u64, ok: bool },
    /// From the metrics watcher: who leads now, as this replica sees it.
    Leadership {
        leader: Option<NodeId>,
        me_id: Option<LeaderId>,
    },
    /// From the epoch starter: read index returned in epoch `leader`.
    EpochReady { leader: LeaderId },
    /// From the front door's bulk load: create every listed account of this
    /// shard that does not exist (one event, one Raft entry); existing ones
    /// are left unchanged and counted. Idempotent by account id.
    BulkCreate {
        accounts: Vec<AccountId>,
        currency: String,
        credit_limit: i64,
        initial_balance: i64,
        reply: ReplyTx,
    },
    /// From the expiry sweeper.
    Expire {
        account: AccountId,
        reservation: crate::ledger::ReservationId,
    },
    /// Test only: the handler panics, as a bug would, so tests can show the
    /// supervisor restarting the actor (see [`supervisor`]).
    #[cfg(any(test, feature = "test-hooks"))]
    Panic,
}

/// Everything a shard actor starts from. Cloned and kept by the supervisor:
/// a restarted actor starts from the same inputs (its replica's Raft handle
/// and applied state), never from the dead actor's speculative state.
#[derive(Clone)]
pub struct ShardArgs {
    pub node: NodeId,
    /// This replica's incarnation: its Raft member id is `replica_id(node, incarnation)`.
    pub incarnation: u32,
    pub shard: ShardId,
    pub raft: Raft,
    pub store: ShardStore,
    pub clock: SharedClock,
    pub limits: ShardLimits,
    /// Node-wide count of active virtual accounts, and its cap.
    pub active_accounts: Arc<AtomicUsize>,
    pub max_active_accounts: usize,
    /// Set while an epoch decides (read by status and tests).
    pub deciding: Arc<std::sync::atomic::AtomicBool>,
    /// The node's clock against its peers': while it is off, this replica
    /// decides nothing (see `raft::clock_check`).
    pub clock_check: Arc<crate::raft::clock_check::ClockCheck>,
}

pub struct ShardActor;

enum WaitState {
    Apply,
    Read { result: Result<Reply, Rejection> },
    Ready(Outcome),
}

struct Waiter {
    tx: Option<Sink>,
    state: WaitState,
    started: Instant,
}

/// A virtual account actor: speculative state and its reply queue.
struct VAccount {
    spec: Option<Arc<crate::ledger::Account>>,
    /// Id of `queue[0]`.
    front_id: u64,
    queue: VecDeque<Waiter>,
    /// An event of this account failed to commit under this leader; it may
    /// still commit under the next. Until the account goes idle (and is
    /// rebuilt from applied state), a duplicate decided on the speculative
    /// state may be of that very event: it is answered unknown, never OK.
    uncertain: bool,
}

struct Inflight {
    /// (account, waiter id) of each event, in batch order; `None` for
    /// shard-level events (tariffs).
    members: Vec<Option<(AccountId, u64)>>,
    tariff_replies: Vec<ReplyTx>,
    proposed: Instant,
}

enum Epoch {
    Follower { leader: Option<NodeId> },
    Starting(LeaderId),
    Leading(LeaderId),
}

pub struct State {
    a: ShardArgs,
    epoch: Epoch,
    accounts: HashMap<AccountId, VAccount>,
    open: Vec<GroupEvent>,
    open_members: Vec<Option<(AccountId, u64)>>,
    open_tariff_replies: Vec<ReplyTx>,
    flush_scheduled: bool,
    batch_seq: u64,
    inflight: BTreeMap<u64, Inflight>,
    read_seq: u64,
    /// Rejections of the open flush wait for read `read_seq + 1`.
    reads_open: Vec<(AccountId, u64)>,
    reads_pending: BTreeMap<u64, Vec<(AccountId, u64)>>,
    last_decided_ms: u64,
    /// Dropped with the state (the actor stopped or failed): ends the tasks
    /// spawned for this actor (leadership watcher, compactor), so a
    /// restarted actor's own tasks never run beside them.
    _alive: tokio::sync::watch::Sender<()>,
    /// Metric labels: shared strings, so labelling a sample copies no bytes.
    node_label: metrics::SharedString,
    shard_label: metrics::SharedString,
}

impl State {
    fn now_ms(&mut self) -> u64 {
        let t = self.a.clock.now_ms().max(self.last_decided_ms);
        self.last_decided_ms = t;
        t
    }

    fn leader_hint(&self) -> Option<NodeId> {
        match &self.epoch {
            Epoch::Follower { leader } => *leader,
            _ => Some(self.a.node),
        }
    }
}

/// However the actor ends (stopped, or failed in a handler and about to be
/// restarted by the supervisor), its virtual accounts go with its state:
/// their waiters' reply sinks are dropped here, which their callers hear as
/// an unknown outcome (retry with the same request id; the ledger dedups).
/// The node-wide active-account count gives their slots back, as
/// deactivation does one by one (otherwise every failure would leak slots
/// until the node refuses new accounts as "too many active"), and the
/// replica no longer reports a deciding epoch.
impl Drop for State {
    fn drop(&mut self) {
        let n = self.accounts.len();
        if n > 0 {
            let left = self
                .a
                .active_accounts
                .fetch_sub(n, Ordering::Relaxed)
                .saturating_sub(n);
            gauge!("charging_active_accounts", "node" => self.node_label.clone()).set(left as f64);
        }
        if self.a.deciding.swap(false, Ordering::AcqRel) {
            gauge!("charging_shard_leading", "node" => self.node_label.clone(), "shard" => self.shard_label.clone()).set(0.0);
        }
    }
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = State;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ShardMsg>,
        a: ShardArgs,
    ) -> Result<State, ActorProcessingErr> {
        let (alive, _) = tokio::sync::watch::channel(());
        spawn_leadership_watcher(
            a.raft.clone(),
            crate::raft::replica_id(a.node, a.incarnation),
            myself.clone(),
            alive.subscribe(),
        );
        spawn_compactor(a.raft.clone(), a.store.clone(), alive.subscribe());
        let node_label = crate::metrics_http::label(a.node);
        let shard_label = crate::metrics_http::label(a.shard);
        Ok(State {
            a,
            epoch: Epoch::Follower { leader: None },
            accounts: HashMap::default(),
            open: Vec::new(),
            open_members: Vec::new(),
            open_tariff_replies: Vec::new(),
            flush_scheduled: false,
            batch_seq: 0,
            inflight: BTreeMap::new(),
            read_seq: 0,
            reads_open: Vec::new(),
            reads_pending: BTreeMap::new(),
            last_decided_ms: 0,
            _alive: alive,
            node_label,
            shard_label,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        st: &mut State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShardMsg::Request { req, reply } => {
                on_request(&myself, st, req, Some(Sink::One(reply)))
            }
            ShardMsg::Requests { reqs } => {
                for (req, slot) in reqs {
                    on_request(&myself, st, req, Some(Sink::Slot(slot)));
                    if st.open.len() >= st.a.limits.max_batch_events {
                        flush(&myself, st, true).await;
                    }
                }
            }
            ShardMsg::Expire {
                account,
                reservation,
            } => {
                if matches!(st.epoch, Epoch::Leading(_)) {
                    let req = Request {
                        account,
                        request_id: crate::ledger::RequestId(0),
                        cmd: Command::Expire { reservation },
                    };
                    on_request(&myself, st, req, None);
                }
            }
            ShardMsg::SetTariff {
                tariff,
                request_id,
                reply,
            } => match st.epoch {
                Epoch::Leading(_) if st.a.clock_check.refusal().is_some() => {
                    let _ = reply.send(clock_refusal(st).expect("off"));
                }
                Epoch::Leading(_) => {
                    st.open.push(Event::SetTariff { tariff, request_id }.into());
                    st.open_members.push(None);
                    st.open_tariff_replies.push(reply);
                    schedule_flush(&myself, st);
                }
                _ => {
                    let _ = reply.send(not_leader(st));
                }
            },
            ShardMsg::BulkCreate {
                accounts,
                currency,
                credit_limit,
                initial_balance,
                reply,
            } => {
                if on_bulk(st, accounts, currency, credit_limit, initial_balance, reply) {
                    // One bulk event per Raft entry: bounds the entry size.
                    flush(&myself, st, true).await;
                }
            }
            #[cfg(any(test, feature = "test-hooks"))]
            ShardMsg::Panic => panic!("test hook: shard {} actor panics", st.a.shard),
            ShardMsg::Flush => flush(&myself, st, false).await,
            ShardMsg::BatchDone { seq, result } => {
                on_batch_done(st, seq, *result);
                // Events held back while the pipeline was full go now.
                if !st.open.is_empty() {
                    schedule_flush(&myself, st);
                }
            }
            ShardMsg::ReadDone { seq, ok } => on_read_done(st, seq, ok),
            ShardMsg::Leadership { leader, me_id } => on_leadership(&myself, st, leader, me_id),
            ShardMsg::EpochReady { leader } => {
                if matches!(&st.epoch, Epoch::Starting(l) if *l == leader) {
                    tracing::debug!(
                        node = st.a.node,
                        shard = st.a.shard,
                        "epoch ready: deciding"
                    );
                    st.epoch = Epoch::Leading(leader);
                    // Decision time never goes below the log's time, even
                    // on a leader whose clock is behind its predecessor's.
                    st.last_decided_ms = st.last_decided_ms.max(st.a.store.view().log_ts_ms);
                    st.a.deciding.store(true, Ordering::Release);
                    gauge!("charging_shard_leading", "node" => st.node_label.clone(), "shard" => st.shard_label.clone()).set(1.0);
                }
            }
        }
        if st.open.len() >= st.a.limits.max_batch_events {
            flush(&myself, st, true).await;
        }
        Ok(())
    }
}

fn not_leader(st: &State) -> Outcome {
    match st.epoch {
        Epoch::Starting(_) => Outcome::Unknown("leader is starting its epoch"),
        _ => Outcome::NotLeader {
            leader: st.leader_hint(),
        },
    }
}

/// Decides a bulk creation: every account that is absent (speculatively, for
/// an active one) will be created by the event; apply counts the rest as
/// existing. Returns true when an event joined the open batch.
fn on_bulk(
    st: &mut State,
    accounts: Vec<AccountId>,
    currency: String,
    credit_limit: i64,
    initial_balance: i64,
    reply: ReplyTx,
) -> bool {
    if !matches!(st.epoch, Epoch::Leading(_)) {
        let _ = reply.send(not_leader(st));
        return false;
    }
    if let Some(o) = clock_refusal(st) {
        let _ = reply.send(o);
        return false;
    }
    if st.inflight.len() >= st.a.limits.max_inflight_batches {
        let _ = reply.send(Outcome::Overloaded("shard has too many batches in flight"));
        return false;
    }
    let now_ms = st.now_ms();
    let limits = st.a.store.read(|s| s.limits.clone());
    let template = match crate::ledger::decide::new_account(
        &currency,
        credit_limit,
        initial_balance,
        &[],
        &limits,
        now_ms,
    ) {
        Ok(a) => Arc::new(a),
        Err(r) => {
            let _ = reply.send(Outcome::Done(Err(r)));
            return false;
        }
    };
    // An active account decides on its speculative state: one that is absent
    // there becomes the created account, as apply will make it.
    for id in &accounts {
        if let Some(v) = st.accounts.get_mut(id) {
            if v.spec.is_none() {
                v.spec = Some(template.clone());
            }
        }
    }
    st.open.push(
        Event::BulkCreate {
            accounts,
            currency,
            credit_limit,
            initial_balance,
        }
        .into(),
    );
    st.open_members.push(None);
    st.open_tariff_replies.push(reply);
    true
}

/// True while the open batch waits for an applied one (see
/// [`ShardLimits::pipelined_batches_max`]).
fn pipeline_full(st: &State) -> bool {
    st.inflight.len() >= st.a.limits.pipelined_batches_max
}

/// Queues a `Flush` behind the messages already in the mailbox, so the
/// requests that arrived meanwhile join the batch. Not while the pipeline is
/// full and no rejection waits: then `BatchDone` schedules it.
fn schedule_flush(myself: &ActorRef<ShardMsg>, st: &mut State) {
    if st.reads_open.is_empty() && pipeline_full(st) {
        return;
    }
    if !st.flush_scheduled {
        st.flush_scheduled = true;
        let _ = myself.cast(ShardMsg::Flush);
    }
}

/// While this node's clock is off from its peers' beyond the bound, a
/// leader decides nothing: decisions carry its clock into the log, where
/// dedup windows are measured (DESIGN §3). The caller retries (UNAVAILABLE)
/// and reaches the next leader once this one has handed over.
fn clock_refusal(st: &State) -> Option<Outcome> {
    st.a.clock_check.refusal().map(|_| {
        counter!("charging_clock_refusals_total", "node" => st.node_label.clone()).increment(1);
        Outcome::Unknown(
            "this node's clock is off from its peers' beyond the clock bound: it decides \
             nothing until it is back within; retry with the same request id",
        )
    })
}

fn on_request(myself: &ActorRef<ShardMsg>, st: &mut State, req: Request, reply: Option<Sink>) {
    if !matches!(st.epoch, Epoch::Leading(_)) {
        if let Some(tx) = reply {
            tx.send(not_leader(st));
        }
        return;
    }
    if let Some(o) = clock_refusal(st) {
        if let Some(tx) = reply {
            tx.send(o);
        }
        return;
    }
    if st.inflight.len() >= st.a.limits.max_inflight_batches {
        if let Some(tx) = reply {
            tx.send(Outcome::Overloaded("shard has too many batches in flight"));
        }
        return;
    }
    let started = Instant::now();
    let now_ms = st.now_ms();
    let activate = !st.accounts.contains_key(&req.account);
    // One short read of the applied state: the account (to activate it),
    // exactly the tariffs the decision may read (they travel in the event),
    // and the limits.
    let (applied, tariffs, limits) = st.a.store.read(|s| {
        let applied = if activate {
            s.account(&req.account).cloned()
        } else {
            None
        };
        let mut tariffs = Tariffs::new();
        for rg in req.cmd.rating_groups() {
            if let Some(t) = s.tariffs.get(&rg) {
                tariffs.insert(rg, t.clone());
            }
        }
        (applied, tariffs, s.limits.clone())
    });
    // Activate the virtual account on first use.
    if activate {
        if st.a.active_accounts.load(Ordering::Relaxed) >= st.a.max_active_accounts {
            if let Some(tx) = reply {
                tx.send(Outcome::Overloaded("too many active accounts on this node"));
            }
            return;
        }
        let n = st.a.active_accounts.fetch_add(1, Ordering::Relaxed) + 1;
        gauge!("charging_active_accounts", "node" => st.node_label.clone()).set(n as f64);
        st.accounts.insert(
            req.account.clone(),
            VAccount {
                spec: applied,
                front_id: 0,
                queue: VecDeque::new(),
                uncertain: false,
            },
        );
    }
    let acct = st.accounts.get_mut(&req.account).expect("activated above");
    if acct.queue.len() >= st.a.limits.max_waiters_per_account {
        if let Some(tx) = reply {
            tx.send(Outcome::Overloaded(
                "too many requests queued on this account",
            ));
        }
        return;
    }
    let expected_version = acct.spec.as_ref().map(|a| a.version).unwrap_or(0);
    let decision = decide(&mut acct.spec, &tariffs, &limits, &req, now_ms);
    histogram!("charging_decision_seconds", "node" => st.node_label.clone())
        .record(started.elapsed().as_secs_f64());
    let waiter_id = acct.front_id + acct.queue.len() as u64;
    let account = req.account.clone();
    let state = match decision {
        Decision::Accept(_) => {
            st.open.push(
                Event::Account(AccountEvent {
                    request: req,
                    expected_version,
                    decided_ms: now_ms,
                    tariffs,
                })
                .into(),
            );
            st.open_members.push(Some((account.clone(), waiter_id)));
            Some(WaitState::Apply)
        }
        // Internal requests (expiry) need no answer for a duplicate or a rejection.
        Decision::Duplicate(_) | Decision::Reject(_) if reply.is_none() => None,
        Decision::Duplicate(_) if acct.uncertain => Some(WaitState::Ready(Outcome::Unknown(
            "an earlier request on this account has an unknown outcome; \
             retry with the same request id",
        ))),
        Decision::Duplicate(r) => Some(WaitState::Ready(Outcome::Done(Ok(r)))),
        Decision::Reject(rej) => {
            st.reads_open.push((account.clone(), waiter_id));
            Some(WaitState::Read { result: Err(rej) })
        }
    };
    if let Some(state) = state {
        if let Some(acct) = st.accounts.get_mut(&account) {
            acct.queue.push_back(Waiter {
                tx: reply,
                state,
                started,
            });
        }
    }
    // Also deactivates an account that was activated for nothing.
    drain(st, &account);
    if !st.open.is_empty() || !st.reads_open.is_empty() {
        schedule_flush(myself, st);
    }
}

/// Sends replies from the front of an account's queue while they are ready;
/// deactivates the account when nothing is left.
fn drain(st: &mut State, account: &AccountId) {
    let Some(acct) = st.accounts.get_mut(account) else {
        return;
    };
    while let Some(front) = acct.queue.front() {
        if !matches!(front.state, WaitState::Ready(_)) {
            break;
        }
        let w = acct.queue.pop_front().expect("front exists");
        acct.front_id += 1;
        if let (Some(tx), WaitState::Ready(outcome)) = (w.tx, w.state) {
            let result = match &outcome {
                Outcome::Done(Ok(_)) => "ok",
                Outcome::Done(Err(_)) => "rejected",
                Outcome::Unknown(_) => "unknown",
                _ => "refused",
            };
            histogram!("charging_shard_latency_seconds", "node" => st.node_label.clone(), "result" => result)
                .record(w.started.elapsed().as_secs_f64());
            tx.send(outcome);
        }
    }
    if acct.queue.is_empty() {
        st.accounts.remove(account);
        let n =
            st.a.active_accounts
                .fetch_sub(1, Ordering::Relaxed)
                .saturating_sub(1);
        gauge!("charging_active_accounts", "node" => st.node_label.clone()).set(n as f64);
    }
}

/// Sets a waiter's outcome. An unknown outcome (its event failed to commit
/// or conflicted on apply) also turns every later answer of the account that
/// was decided on speculative state into "unknown": a duplicate answered with
/// the original's speculative result, or a rejection decided against state
/// that included the failed event. Without this, a retry that arrived while
/// its original was in flight would be acknowledged OK although nothing was
/// applied. (Later accepted events need no help: their expected version no
/// longer matches, so they conflict on apply by themselves.)
fn set_ready(st: &mut State, account: &AccountId, id: u64, outcome: Outcome) {
    if let Some(acct) = st.accounts.get_mut(account) {
        if let Some(idx) = id.checked_sub(acct.front_id) {
            let unknown = matches!(outcome, Outcome::Unknown(_));
            if let Some(w) = acct.queue.get_mut(idx as usize) {
                w.state = WaitState::Ready(outcome);
            }
            if unknown {
                for w in acct.queue.iter_mut().skip(idx as usize + 1) {
                    if matches!(w.state, WaitState::Read { .. } | WaitState::Ready(_)) {
                        w.state = WaitState::Ready(Outcome::Unknown(
                            "an earlier request on this account has an unknown outcome; \
                             retry with the same request id",
                        ));
                    }
                }
            }
        }
    }
}

/// Proposes the open batch (unless the pipeline is full and `force` is not
/// set: a full batch, or a bulk event, which must travel alone) and takes
/// one read index for the rejections decided since the last flush.
async fn flush(myself: &ActorRef<ShardMsg>, st: &mut State, force: bool) {
    st.flush_scheduled = false;
    let Epoch::Leading(leader) = st.epoch.clone_id() else {
        return;
    };
    if !st.open.is_empty() && (force || !pipeline_full(st)) {
        st.batch_seq += 1;
        let seq = st.batch_seq;
        let events = std::mem::take(&mut st.open);
        let n = events.len();
        histogram!("charging_batch_events", "node" => st.node_label.clone()).record(n as f64);
        let log_ts_ms = st.now_ms();
        st.inflight.insert(
            seq,
            Inflight {
                members: std::mem::take(&mut st.open_members),
                tariff_replies: std::mem::take(&mut st.open_tariff_replies),
                proposed: Instant::now(),
            },
        );
        let me = myself.clone();
        let responder = crate::raft::CallbackResponder::new(move |result: WriteResult| {
            let _ = me.cast(ShardMsg::BatchDone {
                seq,
                result: Box::new(result),
            });
        });
        // `write` only enqueues into the Raft core and returns once the core
        // has the message; awaiting it keeps proposals in order without a
        // task per write. `with_leader` fences the entry to this epoch.
        let batch = Batch {
            log_ts_ms,
            events: events.into(),
        };
        let sent =
            st.a.raft
                .write(batch)
                .with_leader(leader)
                .responder(responder)
                .await;
        if let Err(e) = sent {
            tracing::error!(error = %e, "raft core stopped");
        }
    }
    if !st.reads_open.is_empty() {
        st.read_seq += 1;
        let seq = st.read_seq;
        st.reads_pending
            .insert(seq, std::mem::take(&mut st.reads_open));
        let raft = st.a.raft.clone();
        let me = myself.clone();
        // One read index per flush: rejections are sent only once this
        // leader is confirmed after their decision.
        tokio::spawn(async move {
            let ok = matches!(
                tokio::time::timeout(
                    Duration::from_secs(2),
                    raft.ensure_linearizable(ReadPolicy::ReadIndex)
                )
                .await,
                Ok(Ok(_))
            ) && matches!(raft.as_leader(), Ok(l) if l.to_committed_leader_id() == leader);
            let _ = me.cast(ShardMsg::ReadDone { seq, ok });
        });
    }
}

impl Epoch {
    fn clone_id(&self) -> Epoch {
        match self {
            Epoch::Follower { leader } => Epoch::Follower { leader: *leader },
            Epoch::Starting(l) => Epoch::Starting(*l),
            Epoch::Leading(l) => Epoch::Leading(*l),
        }
    }
}

fn on_batch_done(st: &mut State, seq: u64, result: WriteResult) {
    let Some(batch) = st.inflight.remove(&seq) else {
        return;
    };
    histogram!("charging_commit_seconds", "node" => st.node_label.clone())
        .record(batch.proposed.elapsed().as_secs_f64());
    let mut touched: Vec<AccountId> = Vec::with_capacity(batch.members.len());
    match result {
        Ok(resp) => {
            let results = resp.data.0;
            let mut tariff_replies = batch.tariff_replies.into_iter();
            for (i, m) in batch.members.into_iter().enumerate() {
                let applied = results.get(i).cloned().unwrap_or(Applied::Conflict);
                let Some((account, id)) = m else {
                    if let Some(tx) = tariff_replies.next() {
                        let _ = tx.send(match applied {
                            Applied::Ok(r) => Outcome::Done(Ok(r)),
                            Applied::Refused(rej) => Outcome::Done(Err(rej)),
                            Applied::Conflict => Outcome::Unknown("shard event conflicted"),
                        });
                    }
                    continue;
                };
                let outcome = match applied {
                    Applied::Ok(r) => Outcome::Done(Ok(r)),
                    Applied::Conflict | Applied::Refused(_) => {
                        // Our speculative state diverged from the applied one:
                        // drop it, so the next decision starts from applied.
                        counter!("charging_conflicts_total", "node" => st.node_label.clone())
                            .increment(1);
                        if let Some(a) = st.accounts.get_mut(&account) {
                            a.spec = st.a.store.read(|s| s.account(&account).cloned());
                        }
                        Outcome::Unknown("event conflicted on apply; retry")
                    }
                };
                set_ready(st, &account, id, outcome);
                touched.push(account);
            }
        }
        Err(e) => {
            tracing::warn!(shard = st.a.shard, error = %e, "batch not committed under this leader");
            for (account, id) in batch.members.into_iter().flatten() {
                if let Some(a) = st.accounts.get_mut(&account) {
                    a.uncertain = true;
                }
                set_ready(
                    st,
                    &account,
                    id,
                    Outcome::Unknown("leadership changed; retry with the same request id"),
                );
                touched.push(account);
            }
            for tx in batch.tariff_replies {
                let _ = tx.send(Outcome::Unknown("leadership changed"));
            }
        }
    }
    touched.sort();
    touched.dedup();
    for a in touched {
        drain(st, &a);
    }
}

fn on_read_done(st: &mut State, seq: u64, ok: bool) {
    let Some(members) = st.reads_pending.remove(&seq) else {
        return;
    };
    let mut touched = Vec::with_capacity(members.len());
    for (account, id) in members {
        if let Some(acct) = st.accounts.get_mut(&account) {
            if let Some(w) = id
                .checked_sub(acct.front_id)
                .and_then(|i| acct.queue.get_mut(i as usize))
            {
                if let WaitState::Read { result, .. } = &w.state {
                    w.state = WaitState::Ready(if ok {
                        Outcome::Done(result.clone())
                    } else {
                        Outcome::Unknown("leadership not confirmed; retry")
                    });
                }
            }
        }
        touched.push(account);
    }
    touched.sort();
    touched.dedup();
    for a in touched {
        drain(st, &a);
    }
}
