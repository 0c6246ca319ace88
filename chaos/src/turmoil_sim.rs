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
use crate::checker::{self, Report};
use crate::history::{FinalAccount, FinalState, History, Outcome, Recorder, ReplicaDigest};
use crate::rng::Rng;
use crate::simlog::SimLog;
use crate::workload::{self, Workload};
use charging_node::clock::Clock;
use charging_node::config::{NodeConfig, PeerAddrs};
use charging_node::frontdoor::ShardHandle;
use charging_node::ledger::{Limits, Request};
use charging_node::node::{self, Edges};
use charging_node::raft::network::Connector;
use charging_node::replicas::Hosted;
use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::path::PathBuf;
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
/// Largest delay between a log write and its flush (simulated ms): a crash
/// loses what is not flushed yet.
const FLUSH_MS: u64 = 10;
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
    /// Scale-out among the faults: a spare node joins, one member drains.
    pub scale: bool,
}

impl TurmoilConfig {
    /// 3 or 5 nodes and 2..=4 shards, by seed (unless `nodes` is given).
    pub fn for_seed(seed: u64, nodes: u64) -> TurmoilConfig {
        let mut r = Rng::new(seed ^ 0xC0FFEE);
        // Giving `nodes` changes the draws that follow: a reproduction
        // passes `nodes` exactly as the failing run was given it.
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
            scale: true,
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
    /// Nodes added (the spare joins) and drains asked, under faults.
    pub adds: u64,
    pub drains: u64,
    /// Drains the cluster accepted.
    pub drains_accepted: u64,
    pub repairs: u64,
    pub lost_tail_entries: u64,
    /// Traps set on a leader: crash it the moment another replica holds an
    /// entry its own log has not flushed, and restart it at once.
    pub tail_traps: u64,
    /// Traps that went off (the rest expired unsprung).
    pub tail_crashes: u64,
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
            + self.tail_crashes
            + self.adds
            + self.drains
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

    /// What the run did, as one number: every op's request, outcome and
    /// place in the history, the faults, and the simulated time. Equal for
    /// two runs of one seed (`DefaultHasher::new` has fixed keys), in one
    /// process or two: `chargechaos sim --verbose` prints it.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut h = DefaultHasher::new();
        for op in &self.history.ops {
            format!("{:?}", op.request).hash(&mut h);
            format!("{:?}", op.outcome).hash(&mut h);
            (op.process, op.invoke, op.complete, op.client_ms).hash(&mut h);
        }
        format!("{:?}", self.faults).hash(&mut h);
        self.sim_ms.hash(&mut h);
        h.finish()
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

/// What survives a node's crash: the logs of its replica incarnations, its
/// metadata log, its replica list (a real file), its clock; and where the
/// running incarnation publishes the replicas it hosts.
#[derive(Clone)]
struct Slot {
    id: u64,
    seed: u64,
    logs: Arc<Mutex<BTreeMap<(u32, u32), SimLog>>>,
    meta: SimLog,
    clock: SimClock,
    /// Keeps `replicas` (the hosted replica list) across restarts.
    dir: PathBuf,
    hosted: Arc<Mutex<Option<Hosted>>>,
    /// Part of the run: an initial member, or a spare once added.
    active: Arc<AtomicBool>,
}

impl Slot {
    fn new(id: u64, seed: u64, dir: &std::path::Path, active: bool) -> Slot {
        let dir = dir.join(name(id));
        let _ = std::fs::create_dir_all(&dir);
        Slot {
            id,
            seed,
            logs: Arc::default(),
            meta: SimLog::new(seed ^ (id << 32) ^ 0xFFFF, FLUSH_MS),
            clock: SimClock::default(),
            dir,
            hosted: Arc::default(),
            active: Arc::new(AtomicBool::new(active)),
        }
    }

    fn log(&self, shard: u32, incarnation: u32) -> SimLog {
        let seed = self.seed ^ (self.id << 32) ^ (u64::from(incarnation) << 16) ^ u64::from(shard);
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((shard, incarnation))
            .or_insert_with(|| SimLog::new(seed, FLUSH_MS))
            .clone()
    }

    /// Every log of this node (each replica incarnation's and the
    /// metadata's) by group (`None`: the metadata group's).
    fn logs_by_group(&self) -> Vec<(Option<u32>, SimLog)> {
        let g = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        g.iter()
            .map(|((shard, _), l)| (Some(*shard), l.clone()))
            .chain([(None, self.meta.clone())])
            .collect()
    }

    /// The replicas the running node hosts now (`None`: down or not started).
    fn replicas(&self) -> Option<Vec<ShardHandle>> {
        let g = self.hosted.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().map(|h| {
            let mut v: Vec<ShardHandle> = h.iter().map(|e| e.value().clone()).collect();
            v.sort_by_key(|h| h.shard);
            v
        })
    }

    fn replica(&self, shard: u32) -> Option<ShardHandle> {
        let g = self.hosted.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref()
            .and_then(|h| h.get(&shard).map(|e| e.value().clone()))
    }

    fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }
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
    let mut c = if id <= cfg.nodes {
        let mut c = NodeConfig::new(id, members);
        c.bootstrap = id == 1;
        c
    } else {
        // A spare: it joins through node 1 (scale-out under faults).
        let me = PeerAddrs {
            public: format!("{}:{PUBLIC_PORT}", name(id)),
            internal: format!("{}:{INTERNAL_PORT}", name(id)),
        };
        let mut c = NodeConfig::new(id, BTreeMap::from([(id, me)]));
        c.join = Some(format!("{}:{PUBLIC_PORT}", name(1)));
        c
    };
    c.shards = cfg.shards;
    c.ledger = limits();
    c.rng_seed = seed;
    // Snapshots stay in memory and would be lost with a crash; keep runs
    // below the snapshot threshold so a restart replays its log.
    c.snapshot_logs = 1_000_000;
    c
}

async fn run_node(cfg: NodeConfig, slot: Slot) -> turmoil::Result {
    let replicas_file = slot.dir.join("replicas");
    let replicas = charging_node::replicas::read_persisted(&replicas_file)
        .map_err(|e| format!("replica list: {e}"))?;
    let public = turmoil::net::TcpListener::bind(("0.0.0.0", PUBLIC_PORT)).await?;
    let internal = turmoil::net::TcpListener::bind(("0.0.0.0", INTERNAL_PORT)).await?;
    let edges = Edges {
        public: incoming(public),
        internal: incoming(internal),
        connector: Box::new(SimConnector),
        clock: Arc::new(slot.clock.clone()),
        logs: {
            let slot = slot.clone();
            Arc::new(move |shard, incarnation| slot.log(shard, incarnation))
        },
        replicas,
        replicas_file: Some(replicas_file),
        meta_log: slot.meta.clone(),
        snapshot_dir: None,
    };
    let h = node::start(cfg, edges)
        .await
        .map_err(|e| format!("node start: {e}"))?;
    *slot.hosted.lock().unwrap_or_else(|p| p.into_inner()) = Some(h.hosted.clone());
    // The node runs until the host crashes (its runtime is dropped).
    std::future::pending::<()>().await;
    drop(h);
    Ok(())
}

// ---- clients ------------------------------------------------------------------

/// State shared by the client host and the driver (one thread: turmoil).
#[derive(Default)]
struct Shared {
    rec: Recorder,
    /// The workload is over: the driver heals everything.
    done: AtomicBool,
    /// The driver healed: the client waits for convergence.
    healed: AtomicBool,
    converged: AtomicBool,
    /// Setup done: the nemesis may start.
    started: AtomicBool,
    setup_failed: Mutex<Option<String>>,
    /// Nodes clients may call (grows when the spare is added).
    nodes: Arc<AtomicU64>,
    /// Admin operations the nemesis asks the client host to make.
    admin: Mutex<std::collections::VecDeque<AdminOp>>,
    drains_accepted: AtomicU64,
    /// For diagnosis: the sim time and nodes each op's attempts went to.
    via: Mutex<BTreeMap<usize, Vec<(u64, String)>>>,
}

/// An admin call the nemesis wants made (from the client host: the driver
/// cannot make gRPC calls).
#[derive(Debug, Clone, Copy)]
enum AdminOp {
    Drain(u64),
}

struct Caller {
    nodes: Arc<AtomicU64>,
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
        let n = self.nodes.load(Ordering::SeqCst);
        format!("{}:{PUBLIC_PORT}", name(self.rng.range(1, n)))
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
async fn admin_loop(shared: Arc<Shared>, slots: Vec<Slot>, mut caller: Caller) {
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

async fn run_op(
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
fn replica_report(slots: &[Slot], shards: u32) -> String {
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
fn converged(slots: &[Slot], shards: u32, rf: usize) -> bool {
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

// ---- the nemesis --------------------------------------------------------------

struct Nemesis {
    rng: Rng,
    /// Nodes in the run (the spare counts once added).
    nodes: u64,
    /// Initial members (the spare is `initial + 1`).
    initial: u64,
    crashed: Vec<u64>,
    faults: TurmoilFaults,
    /// Simulated ms of the current step (for traces).
    now: u64,
    spare_added: bool,
    drain_asked: bool,
    /// Faults drawn so far; the spare is added at fault `add_at` and a
    /// member drained at fault `drain_at` (drawn from the seed).
    acts: u64,
    add_at: u64,
    drain_at: u64,
    cfg: TurmoilConfig,
    seed: u64,
    shared: Arc<Shared>,
    /// A tail trap: (leader, last step it may go off at).
    trap: Option<(u64, u64)>,
}

impl Nemesis {
    /// With `CHAOS_DUMP` set, prints each fault with its simulated time.
    fn trace(&self, what: String) {
        if std::env::var_os("CHAOS_DUMP").is_some() {
            eprintln!("nemesis t={} {what}", self.now);
        }
    }

    fn leader_of_some_shard(&mut self, slots: &[Slot]) -> Option<u64> {
        let mut leaders = Vec::new();
        for slot in slots.iter().filter(|s| s.is_active()) {
            if let Some(h) = slot.replicas() {
                if h.iter().any(|s| s.is_deciding()) && !self.crashed.contains(&slot.id) {
                    leaders.push(slot.id);
                }
            }
        }
        self.rng.pick(&leaders).copied()
    }

    /// Scale-out under faults: first the spare joins (through node 1, and
    /// replicas move onto it), later one initial member is drained (asked of
    /// the cluster by the client host, once the spare holds replicas).
    fn scale(&mut self, sim: &mut turmoil::Sim<'_>, slots: &[Slot]) {
        if !self.spare_added {
            let id = self.initial + 1;
            let slot = slots[id as usize - 1].clone();
            slot.active.store(true, Ordering::SeqCst);
            let ncfg = node_config(id, &self.cfg, self.seed);
            sim.host(name(id), move || run_node(ncfg.clone(), slot.clone()));
            self.spare_added = true;
            self.nodes += 1;
            self.shared.nodes.store(self.nodes, Ordering::SeqCst);
            self.faults.adds += 1;
            self.trace(format!("add n{id}"));
        } else if !self.drain_asked {
            let victim = self.rng.range(1, self.initial);
            self.shared
                .admin
                .lock()
                .expect("lock")
                .push_back(AdminOp::Drain(victim));
            self.drain_asked = true;
            self.faults.drains += 1;
            self.trace(format!("drain n{victim} (asked)"));
        }
    }

    fn act(&mut self, sim: &mut turmoil::Sim<'_>, slots: &[Slot]) {
        self.acts += 1;
        if self.cfg.scale && (self.acts == self.add_at || self.acts == self.drain_at) {
            self.scale(sim, slots);
            return;
        }
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
            56..=61 => {
                if (self.crashed.len() as u64) < (n - 1) / 2 && !self.crashed.contains(&a) {
                    let lost = self.crash(sim, slots, a);
                    self.crashed.push(a);
                    self.trace(format!("crash n{a} (lost {lost} entries)"));
                }
            }
            62..=67 => {
                if self.trap.is_none() {
                    if let Some(l) = self.leader_of_some_shard(slots) {
                        self.trap = Some((l, self.now + 2_000));
                        self.faults.tail_traps += 1;
                        self.trace(format!("tail trap on leader n{l}"));
                    }
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

    /// Crashes `id`: its runtime is gone and every log loses its unflushed
    /// tail. Returns the entries lost.
    fn crash(&mut self, sim: &mut turmoil::Sim<'_>, slots: &[Slot], id: u64) -> u64 {
        sim.crash(name(id));
        let s = &slots[id as usize - 1];
        let logs: Vec<SimLog> = s.logs_by_group().into_iter().map(|(_, l)| l).collect();
        let before: u64 = logs.iter().map(SimLog::lost).sum();
        for l in &logs {
            l.crash();
        }
        let after: u64 = logs.iter().map(SimLog::lost).sum();
        self.faults.lost_tail_entries += after - before;
        *s.hosted.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.faults.crashes += 1;
        after - before
    }

    /// Springs the tail trap, if set: once the trapped leader's log has an
    /// unflushed entry that another replica of the group already holds (a
    /// leader replicates before its own write is durable), the leader
    /// crashes, loses that entry, and restarts at once, before its followers
    /// time out. The window is a few simulated ms wide, too narrow for
    /// crashes drawn at random to hit often: a restarted leader that took
    /// its old term back wrote another entry under that log id (seed 1037).
    fn spring(&mut self, sim: &mut turmoil::Sim<'_>, slots: &[Slot]) {
        let Some((id, until)) = self.trap else { return };
        if self.now > until || self.crashed.contains(&id) {
            self.trap = None;
            return;
        }
        let others: Vec<(Option<u32>, SimLog)> = slots
            .iter()
            .filter(|s| s.id != id && s.is_active() && !self.crashed.contains(&s.id))
            .flat_map(|s| s.logs_by_group())
            .collect();
        let held = slots[id as usize - 1]
            .logs_by_group()
            .into_iter()
            .any(|(group, log)| {
                log.unflushed().iter().any(|lid| {
                    others
                        .iter()
                        .any(|(g, other)| *g == group && other.holds(lid))
                })
            });
        if held {
            self.trap = None;
            let lost = self.crash(sim, slots, id);
            sim.bounce(name(id));
            self.faults.restarts += 1;
            self.faults.tail_crashes += 1;
            self.trace(format!(
                "tail trap: crash n{id} (lost {lost} entries), restart"
            ));
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

pub fn run(seed: u64, nodes: u64, scale: bool) -> TurmoilRun {
    let mut cfg = TurmoilConfig::for_seed(seed, nodes);
    cfg.scale = scale;
    run_with(seed, cfg)
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
    // The nodes' replica lists are real files (as in production), in a
    // folder of this run's own.
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "chargechaos-{}-{seed}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::SeqCst)
    ));
    // The initial members, then the spare (inactive until added).
    let slots: Vec<Slot> = (1..=cfg.nodes + 1)
        .map(|id| Slot::new(id, seed, &dir, id <= cfg.nodes))
        .collect();
    for id in 1..=cfg.nodes {
        let slot = slots[id as usize - 1].clone();
        let ncfg = node_config(id, &cfg, seed);
        sim.host(name(id), move || run_node(ncfg.clone(), slot.clone()));
    }
    let shared = Arc::new(Shared {
        rec: Recorder::new(History::new(workload::tariffs(), limits())),
        nodes: Arc::new(AtomicU64::new(cfg.nodes)),
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
        initial: cfg.nodes,
        crashed: Vec::new(),
        faults: TurmoilFaults::default(),
        now: 0,
        spare_added: false,
        drain_asked: false,
        acts: 0,
        add_at: 0,
        drain_at: 0,
        cfg: cfg.clone(),
        seed,
        shared: shared.clone(),
        trap: None,
    };
    nemesis.add_at = nemesis.rng.range(1, 6);
    nemesis.drain_at = nemesis.add_at + nemesis.rng.range(2, 8);
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
        if progress && steps.is_multiple_of(5_000) {
            eprintln!(
                "[sim] {steps} ms, ops {}, faults {}, done {}, healed {healed}",
                shared.rec.history.lock().expect("lock").ops.len(),
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
            next_fault = steps + rng.range(50, 600);
        }
        if !healed {
            nemesis.spring(&mut sim, &slots);
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
    let history = shared.rec.snapshot();
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
    nemesis.faults.drains_accepted = shared.drains_accepted.load(Ordering::SeqCst);
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);
    if alarms > 0 {
        errors.push(format!(
            "{alarms} events refused in apply (decision did not reproduce)"
        ));
    }
    let mut report = checker::check(&history, &f);
    report.add_run_errors(errors);
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
    for s in 0..shards {
        let mut best: Option<(u64, charging_node::ledger::ShardState)> = None;
        for slot in slots {
            let Some(h) = slot.replica(s) else { continue };
            let view = h.store.view();
            let idx = view.applied.map(|l| l.index).unwrap_or(0);
            f.replicas.push(ReplicaDigest {
                node: slot.id,
                shard: s,
                applied_index: idx,
                state_hash: view.state.state_hash(),
            });
            if best.as_ref().is_none_or(|(b, _)| idx > *b) {
                best = Some((idx, view.state.ledger.clone()));
            }
        }
        if std::env::var_os("CHAOS_DUMP").is_some() {
            dump_differences(slots, s);
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

/// For diagnosis: the accounts on which replicas of `shard` at the same
/// applied index differ, and each replica's log position.
fn dump_differences(slots: &[Slot], shard: u32) {
    let views: Vec<(u64, _)> = slots
        .iter()
        .filter_map(|slot| slot.replica(shard).map(|h| (slot.id, h.store.view())))
        .collect();
    for (id, v) in &views {
        eprintln!(
            "shard {shard} node {id}: applied {:?} hash {:#x} alarms {}",
            v.applied,
            v.state.state_hash(),
            v.state.alarms
        );
    }
    if let Ok(acct) = std::env::var("CHAOS_DUMP") {
        for slot in slots {
            let logs: Vec<((u32, u32), SimLog)> = slot
                .logs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|((s, _), _)| *s == shard)
                .map(|(k, l)| (*k, l.clone()))
                .collect();
            for ((_, inc), l) in logs {
                for (i, term, e) in l.dump() {
                    if let openraft::EntryPayload::Normal(b) = &e.payload {
                        for ev in b.events.iter() {
                            if let charging_node::raft::GroupEvent::Ledger(
                                charging_node::ledger::Event::Account(a),
                            ) = ev
                            {
                                if a.request.account.0 == acct {
                                    eprintln!(
                                        "log n{} inc {inc} #{i} t{term}: v{} at {} {:?}",
                                        slot.id, a.expected_version, a.decided_ms, a.request.cmd
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let Some((first, base)) = views.first() else {
        return;
    };
    for (id, v) in views.iter().skip(1) {
        if v.applied != base.applied {
            continue;
        }
        for (k, a) in v.state.accounts.iter() {
            let b = base.state.accounts.get(k);
            if b.map(|b| b.as_ref()) != Some(a.as_ref()) {
                eprintln!(
                    "  account {} differs: node {first} {b:?}\n    node {id} {a:?}",
                    k.0
                );
            }
        }
    }
}
