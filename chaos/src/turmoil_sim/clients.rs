//! The simulated clients: charging callers, the admin loop, and the
//! convergence checks.
use super::*;

/// State shared by the client host and the driver (one thread: turmoil).
#[derive(Default)]
pub(super) struct Shared {
    pub(super) rec: Recorder,
    /// The workload is over: the driver heals everything.
    pub(super) done: AtomicBool,
    /// The driver healed: the client waits for convergence.
    pub(super) healed: AtomicBool,
    pub(super) converged: AtomicBool,
    /// Setup done: the nemesis may start.
    pub(super) started: AtomicBool,
    pub(super) setup_failed: Mutex<Option<String>>,
    /// Nodes clients may call (grows when the spare is added).
    pub(super) nodes: Arc<AtomicU64>,
    /// Admin operations the nemesis asks the client host to make.
    pub(super) admin: Mutex<std::collections::VecDeque<AdminOp>>,
    pub(super) drains_accepted: AtomicU64,
    /// For diagnosis: the sim time and nodes each op's attempts went to.
    pub(super) via: Mutex<BTreeMap<usize, Vec<(u64, String)>>>,
}

/// An admin call the nemesis wants made (from the client host: the driver
/// cannot make gRPC calls).
#[derive(Debug, Clone, Copy)]
pub(super) enum AdminOp {
    Drain(u64),
}

pub(super) struct Caller {
    pub(super) nodes: Arc<AtomicU64>,
    pub(super) channels: BTreeMap<String, Channel>,
    pub(super) rng: Rng,
    /// Attempts of the current call: (sim ms, node).
    pub(super) tried: Vec<(u64, String)>,
}

impl Caller {
    pub(super) fn channel(&mut self, addr: &str) -> Channel {
        if let Some(c) = self.channels.get(addr) {
            return c.clone();
        }
        let c = sim_channel(addr, Duration::from_millis(300)).expect("valid address");
        self.channels.insert(addr.to_string(), c.clone());
        c
    }

    pub(super) fn any_node(&mut self) -> String {
        let n = self.nodes.load(Ordering::SeqCst);
        format!("{}:{PUBLIC_PORT}", name(self.rng.range(1, n)))
    }

    /// One operation: up to 6 attempts, following leader hints; an
    /// attempt's failure leaves the outcome unknown.
    pub(super) async fn call(&mut self, req: &Request) -> Outcome {
        let mut target = self.any_node();
        for _ in 0..6 {
            let ch = self.channel(&target);
            let ms = turmoil::sim_elapsed().unwrap_or_default().as_millis() as u64;
            self.tried.push((ms, target.clone()));
            match crate::wire::send(ch, req, Duration::from_millis(1500), true).await {
                Ok(o) => return o,
                Err(status) => {
                    let hint = charging_client::leader_hint(&status)
                        .map(|h| h.trim_start_matches("http://").to_string());
                    target = match hint {
                        Some(h) if h != target => h,
                        _ => {
                            tokio::time::sleep(Duration::from_millis(self.rng.range(20, 200)))
                                .await;
                            self.any_node()
                        }
                    };
                }
            }
        }
        Outcome::Unknown
    }
}

pub(super) async fn setup_tariff(caller: &mut Caller, rng: &mut Rng) -> Result<(), String> {
    let rid = crate::history::request_id_at(T0_MS, rng.next_u64()).0;
    let mut last = String::new();
    for _ in 0..100 {
        let target = caller.any_node();
        let ch = caller.channel(&target);
        let mut c = charging_client::proto::charging_client::ChargingClient::new(ch);
        let mut r = tonic::Request::new(crate::wire::set_tariff_request(rid));
        r.set_timeout(Duration::from_millis(1000));
        match c.set_tariff(r).await {
            Ok(resp) if resp.get_ref().result == 1 => return Ok(()),
            Ok(resp) => last = format!("result {}", resp.get_ref().result),
            Err(s) => last = s.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("tariff never set: {last}"))
}

pub(super) async fn client_main(
    seed: u64,
    cfg: TurmoilConfig,
    shared: Arc<Shared>,
    slots: Vec<Slot>,
) -> turmoil::Result {
    let rf = cfg.nodes as usize;
    let clock = SimClock::default();
    let mut rng = Rng::new(seed ^ 0xC11E);
    let workload = Arc::new(Mutex::new(Workload::new(
        rng.next_u64(),
        cfg.accounts,
        "acct",
    )));
    let mut caller = Caller {
        nodes: shared.nodes.clone(),
        channels: BTreeMap::new(),
        rng: rng.fork(),
        tried: Vec::new(),
    };
    // Setup before the faults matter: tariff, then the accounts (recorded).
    if let Err(e) = setup_tariff(&mut caller, &mut rng).await {
        *shared.setup_failed.lock().expect("lock") = Some(e);
        shared.done.store(true, Ordering::SeqCst);
        return Ok(());
    }
    let creates = workload.lock().expect("lock").setup(clock.now_ms());
    for req in creates {
        run_op(&shared, &workload, &mut caller, &clock, 0, req).await;
    }
    shared.started.store(true, Ordering::SeqCst);
    let admin = tokio::spawn(admin_loop(
        shared.clone(),
        slots.clone(),
        Caller {
            nodes: shared.nodes.clone(),
            channels: BTreeMap::new(),
            rng: rng.fork(),
            tried: Vec::new(),
        },
    ));
    let mut tasks = Vec::new();
    for p in 0..cfg.clients {
        let shared = shared.clone();
        let workload = workload.clone();
        let clock = clock.clone();
        let mut caller = Caller {
            nodes: shared.nodes.clone(),
            channels: BTreeMap::new(),
            rng: rng.fork(),
            tried: Vec::new(),
        };
        let n = cfg.ops_per_client;
        tasks.push(tokio::spawn(async move {
            let mut unknown: Option<Request> = None;
            for _ in 0..n {
                let req = match unknown.take() {
                    Some(r) if caller.rng.chance(70) => r,
                    _ => workload.lock().expect("lock").next(p + 1, clock.now_ms()),
                };
                let out = run_op(&shared, &workload, &mut caller, &clock, p + 1, req.clone()).await;
                if !out.is_definite() {
                    unknown = Some(req);
                }
                tokio::time::sleep(Duration::from_millis(caller.rng.range(0, 60))).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    shared.done.store(true, Ordering::SeqCst);
    // Wait for the heal (bounded), then for every replica to converge.
    for _ in 0..600 {
        if shared.healed.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = admin.await;
    let mut stable = 0;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if converged(&slots, cfg.shards, rf) {
            stable += 1;
            if stable >= 5 {
                shared.converged.store(true, Ordering::SeqCst);
                break;
            }
        } else {
            stable = 0;
        }
    }
    Ok(())
}

/// Makes the admin calls the nemesis asks for, until the workload is over
/// and none is left. Every wait is bounded.
pub(super) async fn admin_loop(shared: Arc<Shared>, slots: Vec<Slot>, mut caller: Caller) {
    loop {
        let op = shared.admin.lock().expect("lock").pop_front();
        let Some(op) = op else {
            if shared.done.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match op {
            AdminOp::Drain(victim) => {
                // Only once the spare holds replicas: draining before would
                // leave fewer nodes than the replication factor.
                let spare = slots.iter().find(|s| s.id > slots.len() as u64 - 1);
                for _ in 0..400 {
                    if spare.is_some_and(|s| s.replicas().is_some_and(|r| !r.is_empty())) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                for _ in 0..20 {
                    let target = caller.any_node();
                    let ch = caller.channel(&target);
                    let mut r = tonic::Request::new(charging_client::proto::NodeRequest {
                        node_id: victim,
                    });
                    r.set_timeout(Duration::from_millis(1000));
                    let mut admin = charging_client::proto::admin_client::AdminClient::new(ch);
                    let res =
                        tokio::time::timeout(Duration::from_millis(1100), admin.drain_node(r))
                            .await;
                    if std::env::var_os("CHAOS_DUMP").is_some() {
                        let ms = turmoil::sim_elapsed().unwrap_or_default().as_millis();
                        eprintln!("admin t={ms} drain n{victim} via {target}: {res:?}");
                    }
                    match res {
                        Ok(Ok(_)) => {
                            shared.drains_accepted.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Ok(Err(st)) if st.code() == tonic::Code::FailedPrecondition => break,
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
        }
    }
}

pub(super) async fn run_op(
    shared: &Shared,
    workload: &Mutex<Workload>,
    caller: &mut Caller,
    clock: &SimClock,
    process: u32,
    req: Request,
) -> Outcome {
    let id = shared.rec.invoke(process, &req, clock.now_ms());
    let out = caller.call(&req).await;
    shared
        .via
        .lock()
        .expect("lock")
        .insert(id, std::mem::take(&mut caller.tried));
    shared.rec.complete(id, &req, &out, workload);
    out
}

/// Each replica's Raft view, one line each: for a run that did not converge.
pub(super) fn replica_report(slots: &[Slot], shards: u32) -> String {
    let mut out = String::new();
    for s in 0..shards {
        for slot in slots.iter().filter(|s| s.is_active()) {
            let line = match (slot.replicas(), slot.replica(s)) {
                (None, _) => "down".to_string(),
                (Some(_), None) => "no replica".to_string(),
                (Some(_), Some(h)) => {
                    let m = h.raft.metrics().borrow_watched().clone();
                    format!(
                        "{:?} term {} leader {:?} last_log {:?} committed {:?} applied {:?} voters {:?}",
                        m.state,
                        m.current_term,
                        m.current_leader,
                        m.last_log_index,
                        m.local_committed.map(|l| l.index),
                        m.last_applied.map(|l| l.index),
                        m.membership_config.membership().voter_ids().collect::<Vec<_>>()
                    )
                }
            };
            out.push_str(&format!("\n    shard {s} node {}: {line}", slot.id));
        }
    }
    out
}

/// Every active node runs; every shard has exactly `rf` replicas (moves and
/// their garbage collection finished), all at the same applied index.
pub(super) fn converged(slots: &[Slot], shards: u32, rf: usize) -> bool {
    let active: Vec<&Slot> = slots.iter().filter(|s| s.is_active()).collect();
    if active.iter().any(|s| s.replicas().is_none()) {
        return false;
    }
    (0..shards).all(|s| {
        let applied: Vec<Option<u64>> = active
            .iter()
            .filter_map(|slot| slot.replica(s))
            .map(|h| h.store.view().applied.map(|l| l.index))
            .collect();
        applied.len() == rf && applied.windows(2).all(|w| w[0] == w[1])
    })
}
