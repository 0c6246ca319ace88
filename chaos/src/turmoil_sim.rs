//! Full-stack simulation on turmoil: 3 or 5 real nodes (`node::start`, real
//! shard actors, real openraft groups, real gRPC over turmoil's simulated
//! TCP), a seeded workload of clients whose retries reuse request ids, and a
//! seeded nemesis. Then everything heals, the replicas converge, and the
//! [`checker`] runs on the history and every replica's state.
//!
//! Determinism: turmoil runs every host on one thread in simulated time;
//! built with `RUSTFLAGS="--cfg tokio_unstable"` it also seeds each host's
//! tokio runtime, and openraft's rng is seeded from the node config
//! (`rng_seed`). One seed reproduces one run.
//!
//! Nemesis faults: symmetric partitions (minority / majority), one-way
//! partitions, an isolated leader, message delay (held links) and loss
//! (random link breaks), crashes (the sim log loses its unflushed tail) and
//! restarts with storage kept, bounded clock jumps. See [`nemesis_add_drain`]
//! for the add/drain hook of issue 5.
use crate::checker::{self, Kind, Report, Violation};
use crate::history::{FinalAccount, FinalState, History, Outcome, ReplicaDigest};
use crate::rng::Rng;
use crate::simlog::SimLog;
use crate::workload::{self, Workload};
use charging_node::clock::Clock;
use charging_node::config::{NodeConfig, PeerAddrs};
use charging_node::frontdoor::ShardHandle;
use charging_node::ledger::{Limits, Request};
use charging_node::node::{self, Edges};
use charging_node::raft::network::Connector;
use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::{Channel, Endpoint};

const PUBLIC_PORT: u16 = 5000;
const INTERNAL_PORT: u16 = 7000;
/// Simulated wall clock at the start (unix ms).
const T0_MS: u64 = 1_750_000_000_000;
/// Largest clock jump of a node, either way (the cluster's clock bound is 250 ms).
const MAX_CLOCK_JUMP_MS: u64 = 200;
/// Bound of one run, in simulated steps of 1 ms.
const MAX_STEPS: u64 = 400_000;

#[derive(Clone, Debug)]
pub struct TurmoilConfig {
    pub nodes: u64,
    pub shards: u32,
    pub clients: u32,
    pub ops_per_client: u32,
    pub accounts: usize,
    /// Faults on or off (off: the same run on a healthy network).
    pub faults: bool,
}

impl TurmoilConfig {
    /// 3 or 5 nodes and 2..=4 shards, by seed (unless `nodes` is given).
    pub fn for_seed(seed: u64, nodes: u64) -> TurmoilConfig {
        let mut r = Rng::new(seed ^ 0xC0FFEE);
        let nodes = if nodes == 0 {
            if r.chance(50) {
                3
            } else {
                5
            }
        } else {
            nodes
        };
        TurmoilConfig {
            nodes,
            shards: r.range(2, 4) as u32,
            clients: 4,
            ops_per_client: 50,
            accounts: 6,
            faults: true,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct TurmoilFaults {
    pub partitions: u64,
    pub oneway_partitions: u64,
    pub isolated_leaders: u64,
    pub delays: u64,
    pub losses: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub clock_jumps: u64,
    pub repairs: u64,
    pub lost_tail_entries: u64,
}

impl TurmoilFaults {
    pub fn total(&self) -> u64 {
        self.partitions
            + self.oneway_partitions
            + self.isolated_leaders
            + self.delays
            + self.losses
            + self.crashes
            + self.restarts
            + self.clock_jumps
    }
}

pub struct TurmoilRun {
    pub seed: u64,
    pub nodes: u64,
    pub shards: u32,
    pub report: Report,
    pub faults: TurmoilFaults,
    pub sim_ms: u64,
    pub history: History,
}

impl TurmoilRun {
    pub fn summary(&self) -> String {
        format!(
            "{} nodes, {} shards, {} ms simulated, faults {:?}",
            self.nodes, self.shards, self.sim_ms, self.faults
        )
    }
}

// ---- edges over turmoil -------------------------------------------------------

/// A turmoil TCP stream as a server connection.
pub struct SimIo(turmoil::net::TcpStream);

impl AsyncRead for SimIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for SimIo {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

type SimIncoming = Pin<Box<dyn futures::Stream<Item = std::io::Result<SimIo>> + Send>>;

fn incoming(l: turmoil::net::TcpListener) -> SimIncoming {
    Box::pin(futures::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| SimIo(s));
        Some((r, l))
    }))
}

/// A lazily connected channel over turmoil TCP to `addr` (`host:port`).
pub fn sim_channel(addr: &str, connect_timeout: Duration) -> Result<Channel, String> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(connect_timeout)
        // As the real connector (raft::network::TcpConnector): a dead peer's
        // half-open connection is noticed.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(ep.connect_with_connector_lazy(tower::service_fn(
        |uri: tonic::codegen::http::Uri| async move {
            let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            let s = turmoil::net::TcpStream::connect(authority).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
        },
    )))
}

struct SimConnector;

impl Connector for SimConnector {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        sim_channel(addr, Duration::from_millis(500))
    }
}

/// Simulated wall clock of one node: simulated time plus its offset (the
/// nemesis jumps it within the clock bound).
#[derive(Clone, Default)]
pub struct SimClock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let e = turmoil::sim_elapsed().unwrap_or_default().as_millis() as i64;
        (T0_MS as i64 + e + self.offset_ms.load(Ordering::SeqCst)) as u64
    }
}

// ---- nodes ----------------------------------------------------------------------

/// What survives a node's crash: its logs, its clock; and where the running
/// incarnation publishes its shard handles.
#[derive(Clone)]
struct Slot {
    logs: Vec<SimLog>,
    meta: SimLog,
    clock: SimClock,
    handles: Arc<Mutex<Option<Vec<ShardHandle>>>>,
}

fn name(id: u64) -> String {
    format!("n{id}")
}

fn limits() -> Limits {
    Limits {
        // No reservation expires during a run: the history has no sweeper.
        reservation_validity_ms: 3_600_000,
        ..Limits::default()
    }
}

fn node_config(id: u64, cfg: &TurmoilConfig, seed: u64) -> NodeConfig {
    let members: BTreeMap<u64, PeerAddrs> = (1..=cfg.nodes)
        .map(|i| {
            (
                i,
                PeerAddrs {
                    public: format!("{}:{PUBLIC_PORT}", name(i)),
                    internal: format!("{}:{INTERNAL_PORT}", name(i)),
                },
            )
        })
        .collect();
    let mut c = NodeConfig::new(id, members);
    c.shards = cfg.shards;
    c.bootstrap = id == 1;
    c.ledger = limits();
    c.rng_seed = seed;
    // Snapshots stay in memory and would be lost with a crash; keep runs
    // below the snapshot threshold so a restart replays its log.
    c.snapshot_logs = 1_000_000;
    c
}

async fn run_node(id: u64, cfg: NodeConfig, slot: Slot) -> turmoil::Result {
    let _ = id;
    let public = turmoil::net::TcpListener::bind(("0.0.0.0", PUBLIC_PORT)).await?;
    let internal = turmoil::net::TcpListener::bind(("0.0.0.0", INTERNAL_PORT)).await?;
    let edges = Edges {
        public: incoming(public),
        internal: incoming(internal),
        connector: Box::new(SimConnector),
        clock: Arc::new(slot.clock.clone()),
        logs: {
            let logs = slot.logs.clone();
            Arc::new(move |shard, _incarnation| logs[shard as usize].clone())
        },
        replicas: None,
        replicas_file: None,
        meta_log: slot.meta.clone(),
        snapshot_dir: None,
    };
    let h = node::start(cfg, edges)
        .await
        .map_err(|e| format!("node start: {e}"))?;
    *slot.handles.lock().unwrap_or_else(|p| p.into_inner()) = Some(h.shards());
    // The node runs until the host crashes (its runtime is dropped).
    std::future::pending::<()>().await;
    drop(h);
    Ok(())
}

// ---- clients ------------------------------------------------------------------

/// State shared by the client host and the driver (one thread: turmoil).
#[derive(Default)]
struct Shared {
    history: Mutex<History>,
    tick: AtomicU64,
    /// The workload is over: the driver heals everything.
    done: AtomicBool,
    /// The driver healed: the client waits for convergence.
    healed: AtomicBool,
    converged: AtomicBool,
    /// Setup done: the nemesis may start.
    started: AtomicBool,
    setup_failed: Mutex<Option<String>>,
    /// For diagnosis: the sim time and nodes each op's attempts went to.
    via: Mutex<BTreeMap<usize, Vec<(u64, String)>>>,
}

impl Shared {
    fn now(&self) -> u64 {
        self.tick.fetch_add(1, Ordering::SeqCst)
    }
}

struct Caller {
    nodes: u64,
    channels: BTreeMap<String, Channel>,
    rng: Rng,
    /// Attempts of the current call: (sim ms, node).
    tried: Vec<(u64, String)>,
}

impl Caller {
    fn channel(&mut self, addr: &str) -> Channel {
        if let Some(c) = self.channels.get(addr) {
            return c.clone();
        }
        let c = sim_channel(addr, Duration::from_millis(300)).expect("valid address");
        self.channels.insert(addr.to_string(), c.clone());
        c
    }

    fn any_node(&mut self) -> String {
        format!("{}:{PUBLIC_PORT}", name(self.rng.range(1, self.nodes)))
    }

    /// One operation: up to 6 attempts, following leader hints; an
    /// attempt's failure leaves the outcome unknown.
    async fn call(&mut self, req: &Request) -> Outcome {
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

async fn setup_tariff(caller: &mut Caller, rng: &mut Rng) -> Result<(), String> {
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

async fn client_main(
    seed: u64,
    cfg: TurmoilConfig,
    shared: Arc<Shared>,
    slots: Vec<Slot>,
) -> turmoil::Result {
    let clock = SimClock::default();
    let mut rng = Rng::new(seed ^ 0xC11E);
    let workload = Arc::new(Mutex::new(Workload::new(
        rng.next_u64(),
        cfg.accounts,
        "acct",
    )));
    let mut caller = Caller {
        nodes: cfg.nodes,
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
    let mut tasks = Vec::new();
    for p in 0..cfg.clients {
        let shared = shared.clone();
        let workload = workload.clone();
        let clock = clock.clone();
        let mut caller = Caller {
            nodes: cfg.nodes,
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
    let mut stable = 0;
    for _ in 0..300 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if converged(&slots, cfg.shards) {
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

async fn run_op(
    shared: &Shared,
    workload: &Mutex<Workload>,
    caller: &mut Caller,
    clock: &SimClock,
    process: u32,
    req: Request,
) -> Outcome {
    let client_ms = clock.now_ms();
    let id = {
        let at = shared.now();
        shared
            .history
            .lock()
            .expect("lock")
            .invoke(process, req.clone(), client_ms, at)
    };
    let out = caller.call(&req).await;
    shared
        .via
        .lock()
        .expect("lock")
        .insert(id, std::mem::take(&mut caller.tried));
    let at = shared.now();
    shared
        .history
        .lock()
        .expect("lock")
        .complete(id, out.clone(), at);
    workload.lock().expect("lock").observe(&req, &out);
    out
}

/// Each replica's Raft view, one line each: for a run that did not converge.
fn replica_report(slots: &[Slot], shards: u32) -> String {
    let mut out = String::new();
    for s in 0..shards as usize {
        for (i, slot) in slots.iter().enumerate() {
            let g = slot.handles.lock().unwrap_or_else(|p| p.into_inner());
            let line = match g.as_ref() {
                None => "down".to_string(),
                Some(h) => {
                    let m = h[s].raft.metrics().borrow_watched().clone();
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
            out.push_str(&format!("\n    shard {s} node {}: {line}", i + 1));
        }
    }
    out
}

/// Every node runs, and all replicas of each shard applied the same index.
fn converged(slots: &[Slot], shards: u32) -> bool {
    (0..shards as usize).all(|s| {
        let mut idx = None;
        slots.iter().all(|slot| {
            let g = slot.handles.lock().unwrap_or_else(|p| p.into_inner());
            let Some(h) = g.as_ref() else { return false };
            let applied = h[s].store.view().applied.map(|l| l.index);
            let first = *idx.get_or_insert(applied);
            first == applied
        })
    })
}

// ---- the nemesis --------------------------------------------------------------

struct Nemesis {
    rng: Rng,
    nodes: u64,
    crashed: Vec<u64>,
    faults: TurmoilFaults,
    /// Simulated ms of the current step (for traces).
    now: u64,
}

/// HOOK (issue 5): add a node to the cluster or drain one while faults run.
/// Scale-out lands on main separately; wire it here: start a new host with
/// `run_node` and fresh `SimLog`s, then ask the admin API to add it (or to
/// drain an existing node), and count it in `TurmoilFaults`. Until then this
/// does nothing and is never drawn.
fn nemesis_add_drain(_sim: &mut turmoil::Sim<'_>, _n: &mut Nemesis) {}

impl Nemesis {
    /// With `CHAOS_DUMP` set, prints each fault with its simulated time.
    fn trace(&self, what: String) {
        if std::env::var_os("CHAOS_DUMP").is_some() {
            eprintln!("nemesis t={} {what}", self.now);
        }
    }

    fn leader_of_some_shard(&mut self, slots: &[Slot]) -> Option<u64> {
        let mut leaders = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            let g = slot.handles.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(h) = g.as_ref() {
                if h.iter().any(|s| s.is_deciding()) && !self.crashed.contains(&(i as u64 + 1)) {
                    leaders.push(i as u64 + 1);
                }
            }
        }
        self.rng.pick(&leaders).copied()
    }

    fn act(&mut self, sim: &mut turmoil::Sim<'_>, slots: &[Slot]) {
        let n = self.nodes;
        let a = self.rng.range(1, n);
        let mut b = self.rng.range(1, n - 1);
        if b >= a {
            b += 1;
        }
        match self.rng.below(100) {
            0..=14 => {
                // Symmetric: a minority cut off from the majority.
                let k = self.rng.range(1, (n - 1) / 2);
                let mut ids: Vec<u64> = (1..=n).collect();
                let mut minority = Vec::new();
                for _ in 0..k {
                    let i = self.rng.below(ids.len() as u64) as usize;
                    minority.push(ids.swap_remove(i));
                }
                for x in &minority {
                    for y in &ids {
                        sim.partition(name(*x), name(*y));
                    }
                }
                self.faults.partitions += 1;
                self.trace(format!("partition {minority:?} | {ids:?}"));
            }
            15..=27 => {
                sim.partition_oneway(name(a), name(b));
                self.faults.oneway_partitions += 1;
                self.trace(format!("one-way partition n{a} -> n{b}"));
            }
            28..=39 => {
                if let Some(l) = self.leader_of_some_shard(slots) {
                    for y in (1..=n).filter(|y| *y != l) {
                        sim.partition(name(l), name(y));
                    }
                    self.faults.isolated_leaders += 1;
                    self.trace(format!("isolate leader n{l}"));
                }
            }
            40..=49 => {
                sim.set_link_max_message_latency(
                    name(a),
                    name(b),
                    Duration::from_millis(self.rng.range(10, 300)),
                );
                self.faults.delays += 1;
                self.trace(format!("delay n{a} <-> n{b}"));
            }
            50..=55 => {
                sim.set_link_fail_rate(name(a), name(b), 0.02);
                self.faults.losses += 1;
                self.trace(format!("loss n{a} <-> n{b}"));
            }
            56..=67 => {
                if (self.crashed.len() as u64) < (n - 1) / 2 && !self.crashed.contains(&a) {
                    sim.crash(name(a));
                    let s = &slots[a as usize - 1];
                    let before: u64 = s.logs.iter().chain([&s.meta]).map(SimLog::lost).sum();
                    for l in s.logs.iter().chain([&s.meta]) {
                        l.crash();
                    }
                    let after: u64 = s.logs.iter().chain([&s.meta]).map(SimLog::lost).sum();
                    self.faults.lost_tail_entries += after - before;
                    *s.handles.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    self.crashed.push(a);
                    self.faults.crashes += 1;
                    self.trace(format!("crash n{a} (lost {} entries)", after - before));
                }
            }
            68..=79 => {
                if let Some(i) = self.rng.pick(&self.crashed).copied() {
                    self.crashed.retain(|x| *x != i);
                    sim.bounce(name(i));
                    self.faults.restarts += 1;
                    self.trace(format!("restart n{i}"));
                }
            }
            80..=89 => {
                let j = self.rng.range(0, 2 * MAX_CLOCK_JUMP_MS) as i64 - MAX_CLOCK_JUMP_MS as i64;
                slots[a as usize - 1]
                    .clock
                    .offset_ms
                    .store(j, Ordering::SeqCst);
                self.faults.clock_jumps += 1;
                self.trace(format!("clock n{a} {j:+} ms"));
            }
            _ => self.repair(sim),
        }
    }

    fn repair(&mut self, sim: &mut turmoil::Sim<'_>) {
        for x in 1..=self.nodes {
            for y in (x + 1)..=self.nodes {
                sim.repair(name(x), name(y));
                sim.set_link_fail_rate(name(x), name(y), 0.0);
                sim.set_link_max_message_latency(name(x), name(y), Duration::from_millis(2));
            }
        }
        self.faults.repairs += 1;
        self.trace("repair all links".into());
    }

    fn heal(&mut self, sim: &mut turmoil::Sim<'_>, slots: &[Slot]) {
        self.repair(sim);
        for i in std::mem::take(&mut self.crashed) {
            sim.bounce(name(i));
            self.faults.restarts += 1;
            self.trace(format!("heal: restart n{i}"));
        }
        for s in slots {
            s.clock.offset_ms.store(0, Ordering::SeqCst);
        }
    }
}

// ---- a run ----------------------------------------------------------------------

pub fn run(seed: u64, nodes: u64) -> TurmoilRun {
    run_with(seed, TurmoilConfig::for_seed(seed, nodes))
}

pub fn run_with(seed: u64, cfg: TurmoilConfig) -> TurmoilRun {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_millis(MAX_STEPS + 1000))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(2))
        .repair_rate(0.01)
        .tcp_capacity(4096)
        .ephemeral_ports(1025..=65535)
        .build();
    let mut rng = Rng::new(seed);
    let slots: Vec<Slot> = (1..=cfg.nodes)
        .map(|id| Slot {
            logs: (0..cfg.shards)
                .map(|s| SimLog::new(seed ^ (id << 32) ^ u64::from(s), 3))
                .collect(),
            meta: SimLog::new(seed ^ (id << 32) ^ 0xFFFF, 3),
            clock: SimClock::default(),
            handles: Arc::default(),
        })
        .collect();
    for id in 1..=cfg.nodes {
        let slot = slots[id as usize - 1].clone();
        let ncfg = node_config(id, &cfg, seed);
        sim.host(name(id), move || run_node(id, ncfg.clone(), slot.clone()));
    }
    let shared = Arc::new(Shared {
        history: Mutex::new(History::new(workload::tariffs(), limits())),
        ..Shared::default()
    });
    {
        let shared = shared.clone();
        let slots = slots.clone();
        let cfg = cfg.clone();
        sim.client("client", client_main(seed, cfg, shared, slots));
    }
    let mut nemesis = Nemesis {
        rng: rng.fork(),
        nodes: cfg.nodes,
        crashed: Vec::new(),
        faults: TurmoilFaults::default(),
        now: 0,
    };
    let mut errors = Vec::new();
    let mut healed = false;
    // Faults begin once the setup has had time to run.
    let mut next_fault = u64::MAX;
    let mut steps = 0u64;
    let progress = std::env::var_os("CHAOS_PROGRESS").is_some();
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                errors.push(format!("simulation error: {e}"));
                break;
            }
        }
        steps += 1;
        nemesis.now = steps;
        if progress && steps % 5_000 == 0 {
            eprintln!(
                "[sim] {steps} ms, ops {}, faults {}, done {}, healed {healed}",
                shared.history.lock().expect("lock").ops.len(),
                nemesis.faults.total(),
                shared.done.load(Ordering::SeqCst)
            );
        }
        if steps > MAX_STEPS {
            errors.push(format!(
                "run did not finish within {MAX_STEPS} simulated ms"
            ));
            break;
        }
        if !healed && shared.done.load(Ordering::SeqCst) {
            nemesis.heal(&mut sim, &slots);
            shared.healed.store(true, Ordering::SeqCst);
            healed = true;
        } else if next_fault == u64::MAX && shared.started.load(Ordering::SeqCst) {
            next_fault = steps + rng.range(0, 300);
        } else if !healed && cfg.faults && steps >= next_fault {
            nemesis.act(&mut sim, &slots);
            if false {
                nemesis_add_drain(&mut sim, &mut nemesis);
            }
            next_fault = steps + rng.range(100, 1000);
        }
    }
    if let Some(e) = shared.setup_failed.lock().expect("lock").take() {
        errors.push(e);
    }
    if errors.is_empty() && !shared.converged.load(Ordering::SeqCst) {
        errors.push(format!(
            "replicas did not converge after the heal:{}",
            replica_report(&slots, cfg.shards)
        ));
    }
    let history = shared.history.lock().expect("lock").clone();
    if let Some(acct) = std::env::var_os("CHAOS_DUMP") {
        let acct = acct.to_string_lossy().to_string();
        for op in history.ops.iter().filter(|o| o.request.account.0 == acct) {
            eprintln!(
                "op {} p{} t{}..{} {:?} -> {:?} via {:?}",
                op.id,
                op.process,
                op.invoke,
                op.complete,
                op.request.cmd,
                op.outcome,
                shared.via.lock().expect("lock").get(&op.id)
            );
        }
    }
    let (f, alarms) = final_state(&slots, cfg.shards);
    let mut report = checker::check(&history, &f);
    if alarms > 0 {
        report.violations.push(Violation {
            kind: Kind::Invariant,
            account: None,
            detail: format!("{alarms} events refused in apply (decision did not reproduce)"),
        });
    }
    for e in errors {
        report.violations.push(Violation {
            kind: Kind::Invariant,
            account: None,
            detail: e,
        });
    }
    TurmoilRun {
        seed,
        nodes: cfg.nodes,
        shards: cfg.shards,
        report,
        faults: nemesis.faults,
        sim_ms: steps,
        history,
    }
}

/// Every replica's digest, and each account from the most advanced replica
/// of its shard. Also the refused-event alarms of those replicas.
fn final_state(slots: &[Slot], shards: u32) -> (FinalState, u64) {
    let mut f = FinalState::default();
    let mut alarms = 0;
    for s in 0..shards as usize {
        let mut best: Option<(u64, charging_node::ledger::ShardState)> = None;
        for (i, slot) in slots.iter().enumerate() {
            let g = slot.handles.lock().unwrap_or_else(|p| p.into_inner());
            let Some(h) = g.as_ref() else { continue };
            let view = h[s].store.view();
            let idx = view.applied.map(|l| l.index).unwrap_or(0);
            f.replicas.push(ReplicaDigest {
                node: i as u64 + 1,
                shard: s as u32,
                applied_index: idx,
                state_hash: view.state.state_hash(),
            });
            if best.as_ref().is_none_or(|(b, _)| idx > *b) {
                best = Some((idx, view.state.clone()));
            }
        }
        if let Some((_, st)) = best {
            alarms += st.alarms;
            for (id, a) in st.accounts.iter() {
                f.accounts.insert(
                    charging_node::ledger::AccountId(id.0.to_string()),
                    FinalAccount::Full(a.clone()),
                );
            }
        }
    }
    (f, alarms)
}
