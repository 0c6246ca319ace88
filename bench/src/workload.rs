//! Workloads (reserve-commit, session, debit, mixed), the expected-balance
//! ledger the correctness check compares against, and the closed / open loops.

use crate::exec::{result_code, Exec, OpKind, OpOut};
use crate::stats::{Point, Recorder, Schedule, EARLY_WAKE};
use crate::zipf::{Distribution, Sampler};
use charging_client::proto as pb;
use charging_client::{new_request_id, request_id_bytes};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Code;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Reserve, then commit final.
    ReserveCommit,
    /// Reserve per rating group, k updates, terminate.
    Session,
    /// One-shot debits.
    Debit,
    /// Reserve-commit, session and debit, with top-ups and refunds.
    Mixed,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::ReserveCommit => "reserve-commit",
            Workload::Session => "session",
            Workload::Debit => "debit",
            Workload::Mixed => "mixed",
        }
    }
}

/// The unit dimension a rating group is priced in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Bytes,
    Seconds,
    Units,
}

pub fn units(dim: Dim, n: u64) -> pb::Units {
    let mut u = pb::Units::default();
    match dim {
        Dim::Bytes => u.volume_bytes = n,
        Dim::Seconds => u.time_s = n,
        Dim::Units => u.service_units = n,
    }
    u
}

/// `u` scaled by `f` in every dimension (at least 1 where it was non-zero).
pub fn scale(u: &pb::Units, f: f64) -> pb::Units {
    let s = |x: u64| {
        if x == 0 {
            0
        } else {
            ((x as f64 * f) as u64).max(1)
        }
    };
    pb::Units {
        time_s: s(u.time_s),
        volume_bytes: s(u.volume_bytes),
        service_units: s(u.service_units),
    }
}

/// Workload settings.
#[derive(Debug, Clone)]
pub struct WorkCfg {
    pub workload: Workload,
    pub prefix: String,
    pub accounts: u64,
    pub dist: Distribution,
    /// Updates per session (session workload).
    pub updates: u32,
    /// Units requested per reserve / update, and per debit.
    pub units: u64,
    pub rating_groups: Vec<u32>,
    pub dims: HashMap<u32, Dim>,
    /// Retries of an op on UNAVAILABLE, with the same request id.
    pub retries: u32,
    pub topup_amount: i64,
}

impl WorkCfg {
    fn dim(&self, rg: u32) -> Dim {
        self.dims.get(&rg).copied().unwrap_or(Dim::Bytes)
    }

    /// Expected API calls per transaction (to turn an op rate into a
    /// transaction rate).
    pub fn ops_per_txn(&self) -> f64 {
        let session = (self.rating_groups.len() as f64) + self.updates as f64 + 1.0;
        match self.workload {
            Workload::ReserveCommit => 2.0,
            Workload::Session => session,
            Workload::Debit => 1.0,
            Workload::Mixed => 0.35 * 2.0 + 0.15 * session + 0.40 + 0.05 + 0.05,
        }
    }

    pub fn account_id(&self, i: u64) -> String {
        format!("{}-{i}", self.prefix)
    }
}

const TOUCHED: u8 = 1;
const UNCERTAIN: u8 = 2;

/// What the bench knows was done to each account: the expected change of its
/// main money bucket, from acknowledged results only.
pub struct Expect {
    delta: Vec<AtomicI64>,
    flags: Vec<AtomicU8>,
    /// Mutating ops sent and not yet answered (an aborted one stays counted,
    /// so its account is not compared: it may or may not have applied).
    inflight: Vec<AtomicU16>,
}

impl Expect {
    pub fn new(n: u64) -> Expect {
        Expect {
            delta: (0..n).map(|_| AtomicI64::new(0)).collect(),
            flags: (0..n).map(|_| AtomicU8::new(0)).collect(),
            inflight: (0..n).map(|_| AtomicU16::new(0)).collect(),
        }
    }
    pub fn begin(&self, i: u64) {
        self.touch(i);
        self.inflight[i as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn end(&self, i: u64) {
        self.inflight[i as usize].fetch_sub(1, Ordering::Relaxed);
    }
    pub fn touch(&self, i: u64) {
        self.flags[i as usize].fetch_or(TOUCHED, Ordering::Relaxed);
    }
    /// Money moved: negative for a charge, positive for a top-up or refund.
    pub fn add(&self, i: u64, amount: i64) {
        self.touch(i);
        self.delta[i as usize].fetch_add(amount, Ordering::Relaxed);
    }
    /// An op whose outcome stayed unknown: this account cannot be checked.
    pub fn uncertain(&self, i: u64) {
        self.flags[i as usize].fetch_or(TOUCHED | UNCERTAIN, Ordering::Relaxed);
    }
    pub fn delta(&self, i: u64) -> i64 {
        self.delta[i as usize].load(Ordering::Relaxed)
    }
    /// (touched and checkable, touched but uncertain)
    pub fn touched(&self) -> (Vec<u64>, u64) {
        let mut ok = Vec::new();
        let mut unsure = 0;
        for (i, f) in self.flags.iter().enumerate() {
            let f = f.load(Ordering::Relaxed);
            if f & UNCERTAIN != 0 || self.inflight[i].load(Ordering::Relaxed) != 0 {
                unsure += 1;
            } else if f & TOUCHED != 0 {
                ok.push(i as u64);
            }
        }
        (ok, unsure)
    }
}

/// One virtual user: its own session id, connection, RNG and last charge.
pub struct Slot {
    pub id: usize,
    rng: SmallRng,
    last_charge: Option<(Vec<u8>, u64)>,
    txns: u64,
}

impl Slot {
    pub fn new(id: usize) -> Slot {
        Slot {
            id,
            rng: SmallRng::seed_from_u64(rand::random::<u64>() ^ id as u64),
            last_charge: None,
            txns: 0,
        }
    }
}

enum Outcome {
    Ok(OpOut),
    Rejected,
    /// A gRPC failure: the outcome is unknown unless the code says the
    /// request was refused before any decision.
    Failed(Code),
}

/// Runs transactions against one transport and records them.
pub struct Engine {
    pub exec: Exec,
    pub cfg: Arc<WorkCfg>,
    pub rec: Arc<Recorder>,
    pub expect: Option<Arc<Expect>>,
    sampler: Sampler,
    seq: AtomicU64,
}

fn rid() -> Vec<u8> {
    request_id_bytes(new_request_id())
}

impl Engine {
    pub fn new(
        exec: Exec,
        cfg: Arc<WorkCfg>,
        rec: Arc<Recorder>,
        expect: Option<Arc<Expect>>,
    ) -> Engine {
        let sampler = Sampler::new(cfg.dist, cfg.accounts);
        // Session seqs only need to grow: start above any earlier run's.
        let seq0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Engine {
            exec,
            cfg,
            rec,
            expect,
            sampler,
            seq: AtomicU64::new(seq0),
        }
    }

    /// One API call with bounded retries on UNAVAILABLE (same op, so the same
    /// request id). Latency runs from `start` (the intended send time in open
    /// loop) to the final answer, retries included.
    async fn op(&self, slot: &Slot, acct: u64, start: Instant, op: OpKind) -> Outcome {
        if let Some(e) = &self.expect {
            e.begin(acct);
        }
        let out = self.op_inner(slot, start, op).await;
        if let Some(e) = &self.expect {
            e.end(acct);
        }
        out
    }

    async fn op_inner(&self, slot: &Slot, start: Instant, op: OpKind) -> Outcome {
        let sent = Instant::now();
        let mut attempt = 0u32;
        let res = loop {
            let r = self.exec.call(slot.id, op.clone()).await;
            let code = match &r {
                Ok(out) => result_code(out).err(),
                Err(c) => Some(*c),
            };
            if code == Some(Code::Unavailable) && attempt < self.cfg.retries {
                let pause = Duration::from_millis((1u64 << attempt.min(7)).min(100));
                tokio::time::sleep(pause).await;
                attempt += 1;
                continue;
            }
            break r;
        };
        let now = Instant::now();
        let (outcome, err): (Outcome, Option<String>) = match res {
            Ok(out) => match result_code(&out) {
                Ok(c) if charging_client::is_ok(c) => (Outcome::Ok(out), None),
                Ok(c) => (
                    Outcome::Rejected,
                    Some(charging_client::result_name(c).to_string()),
                ),
                Err(code) => (Outcome::Failed(code), Some(format!("grpc:{code:?}"))),
            },
            Err(code) => (Outcome::Failed(code), Some(format!("grpc:{code:?}"))),
        };
        self.rec
            .record(slot.id, now - start, now - sent, err.as_deref());
        outcome
    }

    fn failed_mutation(&self, acct: u64, code: Code) {
        // RESOURCE_EXHAUSTED and INVALID_ARGUMENT are refused before any
        // decision; anything else may or may not have been applied.
        if matches!(code, Code::ResourceExhausted | Code::InvalidArgument) {
            return;
        }
        if let Some(e) = &self.expect {
            e.uncertain(acct);
        }
    }

    fn charged(&self, acct: u64, amount: i64) {
        if let Some(e) = &self.expect {
            e.add(acct, amount);
        }
    }

    fn touch(&self, acct: u64) {
        if let Some(e) = &self.expect {
            e.touch(acct);
        }
    }

    /// One transaction of the workload. `intended`: its due time in open loop.
    pub async fn txn(&self, slot: &mut Slot, intended: Option<Instant>) {
        let acct = self.sampler.sample(&mut slot.rng);
        // The first op's latency runs from the due time when it is late
        // (coordinated omission), from now when the generator woke early.
        let now = Instant::now();
        let start = intended.map_or(now, |due| due.min(now));
        slot.txns += 1;
        match self.cfg.workload {
            Workload::ReserveCommit => self.reserve_commit(slot, acct, start).await,
            Workload::Session => self.session(slot, acct, start).await,
            Workload::Debit => self.debit(slot, acct, start).await,
            Workload::Mixed => {
                let x: f64 = slot.rng.random();
                if x < 0.35 {
                    self.reserve_commit(slot, acct, start).await
                } else if x < 0.50 {
                    self.session(slot, acct, start).await
                } else if x < 0.90 {
                    self.debit(slot, acct, start).await
                } else if x < 0.95 {
                    self.top_up(slot, acct, start).await
                } else {
                    self.refund(slot, acct, start).await
                }
            }
        }
    }

    fn used(&self, slot: &mut Slot, granted: &pb::Units) -> pb::Units {
        let f = slot.rng.random_range(0.5..=1.0);
        scale(granted, f)
    }

    async fn reserve_commit(&self, slot: &mut Slot, acct: u64, start: Instant) {
        let rg = self.cfg.rating_groups[0];
        let account_id = self.cfg.account_id(acct);
        self.touch(acct);
        let reserve = OpKind::Reserve(pb::ReserveRequest {
            account_id: account_id.clone(),
            request_id: rid(),
            // One session per virtual user and account, reused: seqs grow.
            session_id: format!("{}-u{}", self.cfg.prefix, slot.id),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            rating_group: rg,
            requested: Some(units(self.cfg.dim(rg), self.cfg.units)),
        });
        let Outcome::Ok(OpOut::Reserve(r)) = self.op(slot, acct, start, reserve).await else {
            return;
        };
        let used = self.used(slot, &r.granted.unwrap_or_default());
        let commit_id = rid();
        let commit = OpKind::Commit(pb::CommitRequest {
            account_id,
            request_id: commit_id.clone(),
            reservation_id: r.reservation_id,
            used: Some(used),
            r#final: true,
        });
        match self.op(slot, acct, Instant::now(), commit).await {
            Outcome::Ok(OpOut::Commit(c)) => {
                self.charged(acct, -c.charged);
                if c.charged > 0 {
                    slot.last_charge = Some((commit_id, acct));
                }
            }
            Outcome::Failed(c) => self.failed_mutation(acct, c),
            _ => {}
        }
    }

    async fn session(&self, slot: &mut Slot, acct: u64, start: Instant) {
        let account_id = self.cfg.account_id(acct);
        let session_id = format!("{}-s{}-{}", self.cfg.prefix, slot.id, slot.txns);
        self.touch(acct);
        let mut seq = 0u64;
        let mut open: Vec<(u32, pb::Units)> = Vec::new();
        let mut first = Some(start);
        for &rg in &self.cfg.rating_groups {
            seq += 1;
            let reserve = OpKind::Reserve(pb::ReserveRequest {
                account_id: account_id.clone(),
                request_id: rid(),
                session_id: session_id.clone(),
                seq,
                rating_group: rg,
                requested: Some(units(self.cfg.dim(rg), self.cfg.units)),
            });
            let t = first.take().unwrap_or_else(Instant::now);
            if let Outcome::Ok(OpOut::Reserve(r)) = self.op(slot, acct, t, reserve).await {
                open.push((rg, r.granted.unwrap_or_default()));
            }
        }
        if open.is_empty() {
            return;
        }
        for _ in 0..self.cfg.updates {
            seq += 1;
            let reports = open
                .iter()
                .map(|(rg, g)| pb::UsageReport {
                    rating_group: *rg,
                    used: Some(self.used(slot, g)),
                    requested: Some(units(self.cfg.dim(*rg), self.cfg.units)),
                })
                .collect();
            let update = OpKind::Update(pb::UpdateRequest {
                account_id: account_id.clone(),
                request_id: rid(),
                session_id: session_id.clone(),
                seq,
                reports,
            });
            match self.op(slot, acct, Instant::now(), update).await {
                Outcome::Ok(OpOut::Update(u)) => {
                    self.charged(acct, -u.charged);
                    for (rg, g) in open.iter_mut() {
                        let grant = u.grants.iter().find(|x| x.rating_group == *rg);
                        *g = match grant {
                            Some(x) if charging_client::is_ok(x.result) => {
                                x.granted.unwrap_or_default()
                            }
                            _ => pb::Units::default(),
                        };
                    }
                }
                Outcome::Failed(c) => {
                    self.failed_mutation(acct, c);
                    return;
                }
                _ => break,
            }
        }
        seq += 1;
        let reports = open
            .iter()
            .map(|(rg, g)| pb::UsageReport {
                rating_group: *rg,
                used: Some(self.used(slot, g)),
                requested: None,
            })
            .collect();
        let terminate = OpKind::Terminate(pb::TerminateRequest {
            account_id,
            request_id: rid(),
            session_id,
            seq,
            reports,
        });
        match self.op(slot, acct, Instant::now(), terminate).await {
            Outcome::Ok(OpOut::Terminate(t)) => self.charged(acct, -t.charged),
            Outcome::Failed(c) => self.failed_mutation(acct, c),
            _ => {}
        }
    }

    async fn debit(&self, slot: &mut Slot, acct: u64, start: Instant) {
        let rg = self.cfg.rating_groups[0];
        self.touch(acct);
        let id = rid();
        let debit = OpKind::Debit(pb::DebitRequest {
            account_id: self.cfg.account_id(acct),
            request_id: id.clone(),
            rating_group: rg,
            units: Some(units(self.cfg.dim(rg), self.cfg.units)),
        });
        match self.op(slot, acct, start, debit).await {
            Outcome::Ok(OpOut::Debit(d)) => {
                self.charged(acct, -d.charged);
                if d.charged > 0 {
                    slot.last_charge = Some((id, acct));
                }
            }
            Outcome::Failed(c) => self.failed_mutation(acct, c),
            _ => {}
        }
    }

    async fn top_up(&self, slot: &mut Slot, acct: u64, start: Instant) {
        self.touch(acct);
        let amount = self.cfg.topup_amount;
        let op = OpKind::TopUp(pb::TopUpRequest {
            account_id: self.cfg.account_id(acct),
            request_id: rid(),
            bucket_id: 0,
            amount,
        });
        match self.op(slot, acct, start, op).await {
            Outcome::Ok(_) => self.charged(acct, amount),
            Outcome::Failed(c) => self.failed_mutation(acct, c),
            _ => {}
        }
    }

    /// Refunds 1 minor unit of this user's last charge (each charge once);
    /// a debit when there is none.
    async fn refund(&self, slot: &mut Slot, acct: u64, start: Instant) {
        let Some((original, acct)) = slot.last_charge.take() else {
            return self.debit(slot, acct, start).await;
        };
        let op = OpKind::Refund(pb::RefundRequest {
            account_id: self.cfg.account_id(acct),
            request_id: rid(),
            original_request_id: original,
            amount: 1,
        });
        match self.op(slot, acct, start, op).await {
            Outcome::Ok(_) => self.charged(acct, 1),
            Outcome::Failed(c) => self.failed_mutation(acct, c),
            _ => {}
        }
    }
}

/// How to drive the load.
#[derive(Debug, Clone)]
pub struct LoadOpts {
    /// Closed loop: virtual users, each one transaction at a time.
    pub concurrency: usize,
    /// Open loop: target ops per second (transactions start at
    /// rate / ops-per-transaction); latency measured from the due time.
    pub rate: Option<f64>,
    /// Open loop: at most this many transactions in flight.
    pub max_in_flight: usize,
    pub duration: Duration,
    /// Drain time for in-flight transactions after the stop.
    pub drain: Duration,
    pub progress: bool,
    pub label: String,
}

/// Raw results of one load run.
pub struct LoadResult {
    pub totals: crate::stats::Totals,
    pub elapsed: Duration,
    pub timeline: Vec<Point>,
    pub avg_batch: Option<f64>,
    pub txns_started: u64,
}

/// Runs the load until the duration passes or the recorder's max ops is
/// reached (or Ctrl-C), then lets in-flight transactions finish (bounded).
pub async fn run_load(engine: Arc<Engine>, opts: &LoadOpts) -> LoadResult {
    let rec = engine.rec.clone();
    let started = Arc::new(AtomicU64::new(0));
    let bar = progress_bar(opts);
    rec.start_now();
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    match opts.rate {
        None => {
            for w in 0..opts.concurrency.max(1) {
                let (engine, started) = (engine.clone(), started.clone());
                tasks.spawn(async move {
                    let mut slot = Slot::new(w);
                    while !engine.rec.stopped() {
                        started.fetch_add(1, Ordering::Relaxed);
                        engine.txn(&mut slot, None).await;
                    }
                });
            }
        }
        Some(rate) => {
            let txn_rate = rate / engine.cfg.ops_per_txn();
            let sched = Schedule::new(t0, txn_rate);
            let (engine, started) = (engine.clone(), started.clone());
            let max_in_flight = opts.max_in_flight.max(1);
            tasks.spawn(async move {
                let (free_tx, mut free_rx) = tokio::sync::mpsc::channel(max_in_flight);
                for i in 0..max_in_flight {
                    let _ = free_tx.try_send(Slot::new(i));
                }
                let mut inner = tokio::task::JoinSet::new();
                let mut i = 0u64;
                while !engine.rec.stopped() {
                    let due = sched.due(i);
                    let wake = due.checked_sub(EARLY_WAKE).unwrap_or(due);
                    tokio::time::sleep_until(wake.into()).await;
                    // A busy generator delays the send, never the due time.
                    let Some(mut slot) = free_rx.recv().await else {
                        break;
                    };
                    let (engine, free_tx) = (engine.clone(), free_tx.clone());
                    started.fetch_add(1, Ordering::Relaxed);
                    inner.spawn(async move {
                        engine.txn(&mut slot, Some(due)).await;
                        let _ = free_tx.send(slot).await;
                    });
                    while inner.try_join_next().is_some() {}
                    i += 1;
                }
                while inner.join_next().await.is_some() {}
            });
        }
    }
    // Timer, ticker and Ctrl-C.
    let deadline = t0 + opts.duration;
    let mut tick =
        tokio::time::interval_at((t0 + Duration::from_secs(1)).into(), Duration::from_secs(1));
    // A late tick must not be followed by catch-up ticks in a burst: those
    // would make timeline intervals of a few milliseconds.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let p = rec.flush();
                if let Some(b) = &bar {
                    b.set_position(Instant::now().duration_since(t0).as_millis() as u64);
                    b.set_message(format!(
                        "{:>9.0} ops/s  p50 {:>7} µs  p99 {:>7} µs  errors {}",
                        p.ops_per_sec, p.p50_us, p.p99_us, p.errors
                    ));
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => break,
            _ = &mut ctrl_c => break,
            _ = wait_stop(&rec) => break,
        }
    }
    rec.stop.store(true, Ordering::Relaxed);
    let drain = tokio::time::timeout(opts.drain, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drain.is_err() {
        tasks.abort_all();
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let (totals, elapsed) = rec.finish();
    LoadResult {
        timeline: totals.timeline.clone(),
        totals,
        elapsed,
        avg_batch: engine.exec.avg_batch(),
        txns_started: started.load(Ordering::Relaxed),
    }
}

async fn wait_stop(rec: &Recorder) {
    while !rec.stopped() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn progress_bar(opts: &LoadOpts) -> Option<ProgressBar> {
    if !opts.progress {
        return None;
    }
    let b = ProgressBar::new(opts.duration.as_millis() as u64);
    b.set_style(
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.set_prefix(opts.label.clone());
    Some(b)
}
