//! The transport-free layer: seed volume (thousands of seeds a minute).
//!
//! One shard, replicated on `replicas` simulated replicas, wired directly:
//! no gRPC, no Raft network. What runs is the node's own ledger: the leader
//! decides with `ledger::decide` against its speculative state (its applied
//! state plus its in-flight events), emits the same conditional
//! `Event::Account` the shard actor emits, and every replica applies the
//! committed log with `ShardState::apply`, as the Raft state machine does.
//!
//! A seeded scheduler interleaves, one step at a time:
//! - clients invoking operations of the seeded [`Workload`], re-sending
//!   earlier requests exactly (duplicates) and retrying unknown ones with
//!   the same request id;
//! - the network delivering client messages late and out of order (a late
//!   original may arrive after its retry);
//! - the leader committing a prefix of its in-flight events (replies are
//!   sent after apply, rejections and duplicates after everything decided
//!   before them is committed);
//! - followers applying, and their state hashes compared at each index;
//! - faults: leader crash (its in-flight tail partly committed, partly lost,
//!   every waiting client left unknown), deposed leader, follower crash,
//!   restarts that replay only a durable prefix of the log, client timeouts,
//!   and bounded clock jumps of the leader (log time stays monotonic).
//!
//! Then it heals, every replica catches up, and the [`checker`] runs.
use crate::checker::{self, Report};
use crate::history::{FinalAccount, FinalState, History, Outcome, ReplicaDigest};
use crate::rng::Rng;
use crate::workload::{self, Workload};
use charging_node::ledger::{
    decide, Account, AccountEvent, AccountId, Applied, Decision, Event, Limits, Request,
    ShardState, Tariffs,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Knobs of one fast run.
#[derive(Clone, Debug)]
pub struct FastConfig {
    pub replicas: usize,
    pub clients: u32,
    pub accounts: usize,
    /// Scheduler steps (bounded).
    pub steps: u32,
    /// Largest clock jump of the leader, either way (DESIGN: the clock bound).
    pub max_clock_jump_ms: u64,
}

impl Default for FastConfig {
    fn default() -> Self {
        FastConfig {
            replicas: 3,
            clients: 4,
            accounts: 6,
            steps: 600,
            max_clock_jump_ms: 200,
        }
    }
}

/// Counts of what a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    pub leader_crashes: u32,
    pub depositions: u32,
    pub follower_crashes: u32,
    pub restarts: u32,
    pub lost_tail_entries: u32,
    pub timeouts: u32,
    pub clock_jumps: u32,
    pub late_deliveries: u32,
    pub duplicates_sent: u32,
    pub retries: u32,
    pub conflicts: u32,
}

impl Faults {
    pub fn total(&self) -> u32 {
        self.leader_crashes
            + self.depositions
            + self.follower_crashes
            + self.restarts
            + self.timeouts
            + self.clock_jumps
            + self.late_deliveries
    }
}

pub struct FastRun {
    pub seed: u64,
    pub history: History,
    pub report: Report,
    pub faults: Faults,
    pub committed: usize,
}

struct Replica {
    state: ShardState,
    applied: usize,
    up: bool,
}

enum Inflight {
    /// An event proposed by the leader; its reply goes to `op` once applied.
    Event {
        event: Event,
        client: u32,
        op: usize,
    },
    /// A reply that waits for everything decided before it (rejections, and
    /// duplicates of events still in flight).
    Read {
        client: u32,
        op: usize,
        outcome: Outcome,
    },
}

struct Client {
    /// The op it waits for, if any.
    waiting: Option<usize>,
    /// Its last unknown request, to retry with the same id.
    unknown: Option<Request>,
    skew_ms: i64,
}

struct Sim {
    rng: Rng,
    cfg: FastConfig,
    limits: Limits,
    tariffs: Tariffs,
    replicas: Vec<Replica>,
    /// The committed log (durable on a quorum): events and their log times.
    log: Vec<(Event, u64)>,
    leader: Option<usize>,
    /// Leader's speculative accounts: applied state + in-flight events.
    spec: BTreeMap<AccountId, Option<Arc<Account>>>,
    inflight: VecDeque<Inflight>,
    /// Client messages on the wire: (client, op, request).
    wire: Vec<(u32, usize, Request)>,
    clients: Vec<Client>,
    /// Wall time (ms) and the leader's clock offset from it.
    now_ms: u64,
    leader_offset_ms: i64,
    last_log_ts: u64,
    /// State hash first seen at each applied index.
    hashes: BTreeMap<usize, u64>,
    divergence: Vec<String>,
    h: History,
    tick: u64,
    workload: Workload,
    faults: Faults,
}

const T0: u64 = 1_750_000_000_000;

impl Sim {
    fn new(seed: u64, cfg: FastConfig) -> Sim {
        let mut rng = Rng::new(seed);
        let limits = Limits::default();
        let tariffs = workload::tariffs();
        let mut st = ShardState::new(limits.clone());
        st.tariffs = tariffs.clone().into();
        let replicas = (0..cfg.replicas)
            .map(|_| Replica {
                state: st.clone(),
                applied: 0,
                up: true,
            })
            .collect();
        let clients = (0..cfg.clients)
            .map(|_| Client {
                waiting: None,
                unknown: None,
                skew_ms: rng.range(0, 2 * cfg.max_clock_jump_ms) as i64
                    - cfg.max_clock_jump_ms as i64,
            })
            .collect();
        let workload = Workload::new(rng.next_u64(), cfg.accounts, "acct");
        Sim {
            rng,
            h: History::new(tariffs.clone(), limits.clone()),
            limits,
            tariffs,
            replicas,
            log: Vec::new(),
            leader: Some(0),
            spec: BTreeMap::new(),
            inflight: VecDeque::new(),
            wire: Vec::new(),
            clients,
            now_ms: T0,
            leader_offset_ms: 0,
            last_log_ts: 0,
            hashes: BTreeMap::new(),
            divergence: Vec::new(),
            tick: 0,
            workload,
            cfg,
            faults: Faults::default(),
        }
    }

    fn clock(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn leader_clock(&self) -> u64 {
        (self.now_ms as i64 + self.leader_offset_ms) as u64
    }

    fn quorum_up(&self) -> bool {
        self.replicas.iter().filter(|r| r.up).count() * 2 > self.replicas.len()
    }

    /// Replica `i` applies the committed log up to `to`.
    fn apply_to(&mut self, i: usize, to: usize) {
        while self.replicas[i].applied < to {
            self.apply_one(i);
        }
    }

    /// Replica `i` applies its next committed entry; returns what apply said.
    fn apply_one(&mut self, i: usize) -> Applied {
        let idx = self.replicas[i].applied;
        let (ev, ts) = &self.log[idx];
        let r = &mut self.replicas[i];
        let out = r.state.apply(ev, *ts);
        r.applied += 1;
        let hash = r.state.state_hash();
        match self.hashes.get(&r.applied) {
            None => {
                self.hashes.insert(r.applied, hash);
            }
            Some(h) if *h != hash => self.divergence.push(format!(
                "replica {i} at applied index {}: hash {hash:#x}, first seen {h:#x}",
                r.applied
            )),
            Some(_) => {}
        }
        out
    }

    fn complete(&mut self, client: u32, op: usize, outcome: Outcome) {
        let c = &mut self.clients[client as usize];
        if c.waiting != Some(op) {
            return; // it gave up already: the reply is dropped
        }
        c.waiting = None;
        c.unknown = match &outcome {
            Outcome::Unknown => Some(self.h.ops[op].request.clone()),
            _ => None,
        };
        let at = self.clock();
        self.workload.observe(&self.h.ops[op].request, &outcome);
        self.h.complete(op, outcome, at);
    }

    /// A client starts an operation and puts it on the wire.
    fn invoke(&mut self, client: u32) {
        let client_ms = (self.now_ms as i64 + self.clients[client as usize].skew_ms) as u64;
        let req = match self.clients[client as usize].unknown.take() {
            Some(r) if self.rng.chance(70) => {
                self.faults.retries += 1;
                r
            }
            _ => {
                let r = self.workload.next(client, client_ms);
                if self.h.ops.iter().any(|o| o.request == r) {
                    self.faults.duplicates_sent += 1;
                }
                r
            }
        };
        let at = self.clock();
        let op = self.h.invoke(client, req.clone(), client_ms, at);
        self.clients[client as usize].waiting = Some(op);
        self.wire.push((client, op, req));
    }

    /// The leader receives a client message.
    fn deliver(&mut self, k: usize) {
        let (client, op, req) = self.wire.swap_remove(k);
        if self.clients[client as usize].waiting != Some(op) {
            self.faults.late_deliveries += 1;
        }
        let Some(l) = self.leader else {
            // No leader: UNAVAILABLE before anything was proposed.
            self.complete(client, op, Outcome::Unknown);
            return;
        };
        let base = self.replicas[l].state.account(&req.account).cloned();
        let decided_ms = self.leader_clock().max(self.last_log_ts);
        let slot = self.spec.entry(req.account.clone()).or_insert(base);
        let expected_version = slot.as_ref().map_or(0, |a| a.version);
        let mut tariffs = Tariffs::new();
        for rg in req.cmd.rating_groups() {
            if let Some(t) = self.tariffs.get(&rg) {
                tariffs.insert(rg, t.clone());
            }
        }
        match decide(slot, &tariffs, &self.limits, &req, decided_ms) {
            Decision::Accept(_) => self.inflight.push_back(Inflight::Event {
                event: Event::Account(AccountEvent {
                    request: req,
                    expected_version,
                    decided_ms,
                    tariffs,
                }),
                client,
                op,
            }),
            Decision::Duplicate(r) => self.inflight.push_back(Inflight::Read {
                client,
                op,
                outcome: Outcome::Ok(crate::history::seen(&r)),
            }),
            Decision::Reject(r) => self.inflight.push_back(Inflight::Read {
                client,
                op,
                outcome: Outcome::Rejected(r),
            }),
        }
    }

    /// The leader commits up to `n` in-flight items (a quorum has them).
    fn commit(&mut self, n: usize, reply: bool) {
        let Some(l) = self.leader else { return };
        for _ in 0..n {
            let Some(item) = self.inflight.pop_front() else {
                return;
            };
            match item {
                Inflight::Event { event, client, op } => {
                    let decided = match &event {
                        Event::Account(a) => a.decided_ms,
                        _ => 0,
                    };
                    let ts = self.leader_clock().max(self.last_log_ts).max(decided);
                    self.last_log_ts = ts;
                    self.log.push((event, ts));
                    debug_assert_eq!(self.replicas[l].applied + 1, self.log.len());
                    let applied = self.apply_one(l);
                    if !reply {
                        continue;
                    }
                    match applied {
                        Applied::Ok(r) => {
                            self.complete(client, op, Outcome::Ok(crate::history::seen(&r)))
                        }
                        // A conflict changed nothing: the node answers
                        // UNAVAILABLE and the client does not know.
                        _ => {
                            self.faults.conflicts += 1;
                            self.spec.clear();
                            self.complete(client, op, Outcome::Unknown)
                        }
                    }
                }
                Inflight::Read {
                    client,
                    op,
                    outcome,
                } => {
                    if reply {
                        self.complete(client, op, outcome);
                    }
                }
            }
        }
    }

    /// The leader loses its role: `crash` takes its replica down too.
    /// A random prefix of its in-flight events made it to a quorum and
    /// commits (with no reply); the rest is lost. Every waiting client is
    /// left not knowing.
    fn depose(&mut self, crash: bool) {
        let Some(l) = self.leader.take() else { return };
        let reached = self.rng.below(self.inflight.len() as u64 + 1) as usize;
        self.leader = Some(l);
        self.commit(reached, false);
        self.leader = None;
        self.inflight.clear();
        self.spec.clear();
        for c in 0..self.clients.len() {
            if let Some(op) = self.clients[c].waiting {
                if !self.wire.iter().any(|(_, o, _)| *o == op) {
                    self.complete(c as u32, op, Outcome::Unknown);
                }
            }
        }
        if crash {
            self.crash(l);
            self.faults.leader_crashes += 1;
        } else {
            self.faults.depositions += 1;
        }
    }

    fn crash(&mut self, i: usize) {
        self.replicas[i].up = false;
    }

    /// A replica comes back: its memory is gone, and so is the unflushed tail
    /// of its log; it replays a durable prefix and catches up later.
    fn restart(&mut self, i: usize) {
        let durable = self.rng.range(0, self.replicas[i].applied as u64) as usize;
        self.faults.lost_tail_entries += (self.replicas[i].applied - durable) as u32;
        let mut st = ShardState::new(self.limits.clone());
        st.tariffs = self.tariffs.clone().into();
        self.replicas[i] = Replica {
            state: st,
            applied: 0,
            up: true,
        };
        self.apply_to(i, durable);
        self.faults.restarts += 1;
    }

    /// A new leader among the up replicas: it applies the whole committed log
    /// before deciding (its epoch begins after a read index).
    fn elect(&mut self) {
        if self.leader.is_some() || !self.quorum_up() {
            return;
        }
        let up: Vec<usize> = (0..self.replicas.len())
            .filter(|i| self.replicas[*i].up)
            .collect();
        let l = *self.rng.pick(&up).expect("a quorum is up");
        let len = self.log.len();
        self.apply_to(l, len);
        self.leader = Some(l);
        self.leader_offset_ms = 0;
    }

    fn step(&mut self) {
        self.now_ms += self.rng.range(0, 5);
        let roll = self.rng.below(1000);
        match roll {
            0..=299 => {
                let idle: Vec<u32> = (0..self.cfg.clients)
                    .filter(|c| self.clients[*c as usize].waiting.is_none())
                    .collect();
                if let Some(c) = self.rng.pick(&idle).copied() {
                    self.invoke(c);
                }
            }
            300..=549 => {
                if !self.wire.is_empty() {
                    // Mostly in order, sometimes any message (reordering).
                    let k = if self.rng.chance(70) {
                        0
                    } else {
                        self.rng.below(self.wire.len() as u64) as usize
                    };
                    self.deliver(k);
                }
            }
            550..=799 => {
                if self.quorum_up() {
                    let n = self.rng.range(1, 3) as usize;
                    self.commit(n, true);
                }
            }
            800..=899 => {
                let i = self.rng.below(self.replicas.len() as u64) as usize;
                if self.replicas[i].up {
                    let to = self
                        .rng
                        .range(self.replicas[i].applied as u64, self.log.len() as u64);
                    self.apply_to(i, to as usize);
                }
            }
            900..=904 => self.depose(true),
            905..=909 => self.depose(false),
            910..=924 => {
                let i = self.rng.below(self.replicas.len() as u64) as usize;
                if Some(i) != self.leader && self.replicas[i].up {
                    self.crash(i);
                    self.faults.follower_crashes += 1;
                }
            }
            925..=964 => {
                let down: Vec<usize> = (0..self.replicas.len())
                    .filter(|i| !self.replicas[*i].up)
                    .collect();
                if let Some(i) = self.rng.pick(&down).copied() {
                    self.restart(i);
                }
            }
            965..=984 => {
                let b = self.cfg.max_clock_jump_ms as i64;
                self.leader_offset_ms = self.rng.range(0, 2 * b as u64) as i64 - b;
                self.faults.clock_jumps += 1;
            }
            _ => {
                // A client gives up on its call: outcome unknown; its message
                // may still be delivered, late.
                let waiting: Vec<u32> = (0..self.cfg.clients)
                    .filter(|c| self.clients[*c as usize].waiting.is_some())
                    .collect();
                if let Some(c) = self.rng.pick(&waiting).copied() {
                    let op = self.clients[c as usize].waiting.expect("waiting");
                    self.complete(c, op, Outcome::Unknown);
                    self.faults.timeouts += 1;
                }
            }
        }
        self.elect();
    }

    /// Setup: the accounts are created before the faults begin.
    fn setup(&mut self) {
        for (i, req) in self.workload.setup(T0).into_iter().enumerate() {
            let client = (i as u32) % self.cfg.clients;
            let at = self.clock();
            let op = self.h.invoke(client, req.clone(), T0, at);
            self.clients[client as usize].waiting = Some(op);
            self.wire.push((client, op, req));
            let k = self.wire.len() - 1;
            self.deliver(k);
            self.commit(usize::MAX, true);
        }
    }

    /// Heal: everyone up, deliver or drop what is on the wire, commit what is
    /// in flight, every replica catches up.
    fn heal(&mut self) {
        for i in 0..self.replicas.len() {
            if !self.replicas[i].up {
                self.restart(i);
            }
        }
        self.elect();
        while !self.wire.is_empty() {
            self.deliver(0);
        }
        self.commit(usize::MAX, true);
        for c in 0..self.clients.len() {
            if let Some(op) = self.clients[c].waiting {
                self.complete(c as u32, op, Outcome::Unknown);
            }
        }
        let len = self.log.len();
        for i in 0..self.replicas.len() {
            self.apply_to(i, len);
        }
    }

    fn final_state(&self) -> FinalState {
        let mut f = FinalState::default();
        let st = &self.replicas[0].state;
        for (id, a) in st.accounts.iter() {
            f.accounts
                .insert(AccountId(id.0.to_string()), FinalAccount::Full(a.clone()));
        }
        for (i, r) in self.replicas.iter().enumerate() {
            f.replicas.push(ReplicaDigest {
                node: i as u64 + 1,
                shard: 0,
                applied_index: r.applied as u64,
                state_hash: r.state.state_hash(),
            });
        }
        f
    }
}

/// Runs one seed of the fast layer and checks it.
pub fn run(seed: u64, cfg: &FastConfig) -> FastRun {
    let mut sim = Sim::new(seed, cfg.clone());
    sim.setup();
    for _ in 0..cfg.steps {
        sim.step();
    }
    sim.heal();
    let f = sim.final_state();
    let mut report = checker::check(&sim.h, &f);
    for d in &sim.divergence {
        report.violations.push(checker::Violation {
            kind: checker::Kind::ReplicaDivergence,
            account: None,
            detail: d.clone(),
        });
    }
    let alarms = sim.replicas[0].state.alarms;
    if alarms > 0 {
        report.violations.push(checker::Violation {
            kind: checker::Kind::Invariant,
            account: None,
            detail: format!("{alarms} events refused in apply (decision did not reproduce)"),
        });
    }
    FastRun {
        seed,
        committed: sim.log.len(),
        history: sim.h,
        report,
        faults: sim.faults,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_reproduces_exactly() {
        let a = run(42, &FastConfig::default());
        let b = run(42, &FastConfig::default());
        assert_eq!(a.history.ops.len(), b.history.ops.len());
        assert_eq!(a.faults, b.faults);
        assert_eq!(a.committed, b.committed);
        assert!(a.history.ops.len() > 50, "ops {}", a.history.ops.len());
    }
}
