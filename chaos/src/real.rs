//! Chaos against real processes (`chargechaos real`): the seeded workload of
//! the simulators runs over real gRPC against a running cluster while a
//! seeded nemesis breaks its nodes the way an operator's bad day does, then
//! everything heals, the replicas converge and the same [`checker`] runs on
//! the acknowledged history and the balances read back.
//!
//! Targets (the cluster is started and stopped by `scripts/chaos.sh`):
//! - `local`: processes of `scripts/cluster.sh` (node i on 127.0.0.i:50051):
//!   `kill -9` then restart, `SIGSTOP` then `SIGCONT`.
//! - `compose`: containers of `scripts/compose.sh` (node i on
//!   127.0.0.1:2505i): `docker kill` then start, `docker pause` then
//!   unpause, `docker network disconnect` then connect (the node is cut off
//!   from every peer and from clients: a partition of one), and partitions
//!   made of host firewall rules (`scripts/compose.sh partition|isolate`,
//!   then `heal`): two nodes cut apart both ways or one way, or a node cut
//!   off from its peers while clients still reach it (an isolated leader).
//!
//! One fault at a time, each healed before the next. Some take the majority
//! away: every node killed at once (`kill -9` / `docker kill`: only what was
//! durable before its acknowledgement may come back), two nodes paused at
//! once, or (compose) two nodes isolated so every node is alone; then the
//! nodes still up keep answering clients with no majority behind them and
//! must acknowledge nothing new.
//! Every wait has a deadline.
use crate::checker::{self, Report};
use crate::history::{
    AccountSummary, FinalAccount, FinalState, History, Outcome, Recorder, ReplicaDigest,
};
use crate::rng::Rng;
use crate::workload::{self, Workload};
use charging_client::proto::admin_client::AdminClient;
use charging_client::proto::charging_client::ChargingClient;
use charging_client::proto::{self as pb};
use charging_node::ledger::{AccountId, Limits, Request};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::transport::{Channel, Endpoint};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `scripts/cluster.sh` processes; the folder holds `nodeN/pid`.
    Local { dir: PathBuf },
    /// `scripts/compose.sh` containers.
    Compose,
}

#[derive(Clone, Debug)]
pub struct RealConfig {
    pub target: Target,
    pub nodes: u64,
    pub seed: u64,
    pub duration: Duration,
    pub clients: u32,
    pub accounts: usize,
    /// Bound on each client's operations (the run also ends at `duration`).
    pub max_ops_per_client: u32,
}

#[derive(Clone, Debug, Default)]
pub struct RealFaults {
    pub kills: u64,
    /// Every node killed at once (no majority left), then all restarted.
    pub kill_alls: u64,
    /// Two nodes paused at once: the third serves with no majority.
    pub majority_pauses: u64,
    /// Two nodes cut off from their peers: every node alone, all serving.
    pub splits: u64,
    pub pauses: u64,
    pub disconnects: u64,
    /// Two nodes cut apart, both ways.
    pub partitions: u64,
    /// Two nodes cut apart one way only.
    pub oneway_partitions: u64,
    /// A node cut off from its peers, clients still reaching it.
    pub isolations: u64,
    /// Fault commands that failed (the run reports them; they are not faults).
    pub command_errors: u64,
    pub log: Vec<String>,
}

impl RealFaults {
    pub fn total(&self) -> u64 {
        self.kills
            + self.kill_alls
            + self.majority_pauses
            + self.splits
            + self.pauses
            + self.disconnects
            + self.partitions
            + self.oneway_partitions
            + self.isolations
    }
}

pub struct RealRun {
    pub report: Report,
    pub faults: RealFaults,
    pub elapsed: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn public_addr(target: &Target, node: u64) -> String {
    match target {
        Target::Local { .. } => format!("127.0.0.{node}:50051"),
        Target::Compose => format!("127.0.0.1:{}", 25050 + node),
    }
}

/// A channel to a node's public `host:port`; over TLS when the environment
/// says so (`CHARGING_CA`, as chargectl reads it: `scripts/cluster.sh`
/// clusters run TLS). The bearer token (`CHARGING_TOKEN`, for a cluster with
/// `[auth]` on) is set on each request: [`crate::wire::authorize`].
fn channel(addr: &str) -> Channel {
    let tls = charging_client::ClientTls::from_env().expect("CHARGING_CA readable");
    let ep = match tls {
        Some(t) => t
            .endpoint(&format!("http://{addr}"))
            .expect("valid address"),
        None => Endpoint::from_shared(format!("http://{addr}")).expect("valid address"),
    };
    ep.connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .connect_lazy()
}

/// Calls one node after another, following leader hints; retries reuse the
/// request (and its id). An attempt that fails leaves the outcome unknown.
struct Caller {
    channels: Vec<(String, Channel)>,
    rng: Rng,
}

impl Caller {
    fn new(target: &Target, nodes: u64, rng: Rng) -> Caller {
        let channels = (1..=nodes)
            .map(|i| {
                let a = public_addr(target, i);
                (a.clone(), channel(&a))
            })
            .collect();
        Caller { channels, rng }
    }

    fn any(&mut self) -> (String, Channel) {
        let i = self.rng.below(self.channels.len() as u64) as usize;
        self.channels[i].clone()
    }

    fn by_addr(&mut self, addr: &str) -> Option<(String, Channel)> {
        self.channels.iter().find(|(a, _)| a == addr).cloned()
    }

    async fn call(&mut self, req: &Request) -> Outcome {
        let (mut addr, mut ch) = self.any();
        for _ in 0..6 {
            match crate::wire::send(ch.clone(), req, Duration::from_millis(2000), true).await {
                Ok(o) => return o,
                Err(status) => {
                    let hint = charging_client::leader_hint(&status).map(|h| {
                        h.trim_start_matches("http://")
                            .trim_start_matches("https://")
                            .to_string()
                    });
                    match hint.filter(|h| *h != addr).and_then(|h| self.by_addr(&h)) {
                        Some((a, c)) => (addr, ch) = (a, c),
                        None => {
                            let pause = self.rng.range(20, 200);
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                            (addr, ch) = self.any();
                        }
                    }
                }
            }
        }
        Outcome::Unknown
    }
}

struct Shared {
    rec: Recorder,
    stop: AtomicBool,
}

async fn run_op(
    shared: &Shared,
    workload: &Mutex<Workload>,
    caller: &mut Caller,
    p: u32,
    req: Request,
) -> Outcome {
    let id = shared.rec.invoke(p, &req, now_ms());
    let out = caller.call(&req).await;
    shared.rec.complete(id, &req, &out, workload);
    out
}

/// Runs one fault command (bounded); false if it failed.
async fn sh(args: &[String]) -> bool {
    let mut c = tokio::process::Command::new(&args[0]);
    c.args(&args[1..])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    matches!(
        tokio::time::timeout(Duration::from_secs(120), c.status()).await,
        Ok(Ok(s)) if s.success()
    )
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// The commands that apply (`on`) or heal one fault of `kind` on `node`
/// (partitions: between `node` and `peer`; `kill-all`: every node), in order.
fn fault_cmds(
    target: &Target,
    kind: &str,
    nodes: u64,
    node: u64,
    peer: u64,
    on: bool,
) -> Vec<Vec<String>> {
    if kind == "pause-two" || kind == "split" {
        // Two nodes at once: the third keeps serving clients with no
        // majority behind it, so it must acknowledge nothing new.
        let one = if kind == "pause-two" {
            "pause"
        } else {
            "isolate"
        };
        let mut cmds = fault_cmds(target, one, nodes, node, peer, on);
        if on || kind == "pause-two" {
            cmds.extend(fault_cmds(target, one, nodes, peer, node, on));
        }
        return cmds;
    }
    if kind == "kill-all" {
        return (1..=nodes)
            .map(|i| {
                let last = i == nodes;
                let i = i.to_string();
                match (target, on) {
                    (Target::Local { .. }, true) => s(&["scripts/cluster.sh", "kill", &i]),
                    // The last one back waits for every shard's leader.
                    (Target::Local { .. }, false) if !last => {
                        s(&["scripts/cluster.sh", "restart", &i, "--no-wait"])
                    }
                    (Target::Local { .. }, false) => s(&["scripts/cluster.sh", "restart", &i]),
                    (Target::Compose, true) => s(&["scripts/compose.sh", "kill", &i]),
                    (Target::Compose, false) => s(&["scripts/compose.sh", "start", &i]),
                }
            })
            .collect();
    }
    let (n, p) = (node.to_string(), peer.to_string());
    let cmd = match target {
        Target::Local { dir } => {
            let pid = dir.join(format!("node{node}")).join("pid");
            let pid = std::fs::read_to_string(pid)
                .unwrap_or_default()
                .trim()
                .to_string();
            match (kind, on) {
                ("kill", true) => s(&["scripts/cluster.sh", "kill", &n]),
                ("kill", false) => s(&["scripts/cluster.sh", "restart", &n]),
                ("pause", true) => s(&["kill", "-STOP", &pid]),
                _ => s(&["kill", "-CONT", &pid]),
            }
        }
        Target::Compose => match (kind, on) {
            ("kill", true) => s(&["scripts/compose.sh", "kill", &n]),
            ("kill", false) => s(&["scripts/compose.sh", "start", &n]),
            ("pause", true) => s(&["scripts/compose.sh", "pause", &n]),
            ("pause", false) => s(&["scripts/compose.sh", "unpause", &n]),
            ("disconnect", true) => s(&["scripts/compose.sh", "disconnect", &n]),
            ("disconnect", false) => s(&["scripts/compose.sh", "connect", &n]),
            ("partition", true) => s(&["scripts/compose.sh", "partition", &n, &p]),
            ("oneway", true) => s(&["scripts/compose.sh", "partition", &n, &p, "--oneway"]),
            ("isolate", true) => s(&["scripts/compose.sh", "isolate", &n]),
            _ => s(&["scripts/compose.sh", "heal"]),
        },
    };
    vec![cmd]
}

async fn nemesis(
    cfg: RealConfig,
    shared: Arc<Shared>,
    mut rng: Rng,
    started: Instant,
) -> RealFaults {
    let mut f = RealFaults::default();
    let kinds: &[&str] = match cfg.target {
        Target::Local { .. } => &["kill", "pause", "pause-two"],
        Target::Compose => &[
            "kill",
            "pause",
            "pause-two",
            "split",
            "disconnect",
            "partition",
            "oneway",
            "isolate",
        ],
    };
    while !shared.stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.range(1500, 4000))).await;
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        // Now and then every node dies at once: no majority is left, so
        // only what was fsynced before its acknowledgement comes back.
        let kind = if rng.chance(12) {
            "kill-all"
        } else {
            *rng.pick(kinds).expect("kinds")
        };
        let node = rng.range(1, cfg.nodes);
        // Another node (partitions only).
        let peer = (node + rng.range(0, cfg.nodes - 2)) % cfg.nodes + 1;
        let what = match kind {
            "partition" => format!("partition n{node} <-> n{peer}"),
            "oneway" => format!("partition n{node} -> n{peer}"),
            "kill-all" => format!("kill every node (n1-n{})", cfg.nodes),
            "pause-two" => format!("pause n{node} and n{peer}"),
            "split" => format!("isolate n{node} and n{peer} (every node alone)"),
            _ => format!("{kind} n{node}"),
        };
        let t = started.elapsed().as_secs_f64();
        let mut applied = 0;
        for c in fault_cmds(&cfg.target, kind, cfg.nodes, node, peer, true) {
            if sh(&c).await {
                applied += 1;
            }
        }
        if applied == 0 {
            f.command_errors += 1;
            f.log.push(format!("{t:.1}s {what}: command failed"));
            continue;
        }
        match kind {
            "kill" => f.kills += 1,
            "kill-all" => f.kill_alls += 1,
            "pause-two" => f.majority_pauses += 1,
            "split" => f.splits += 1,
            "pause" => f.pauses += 1,
            "disconnect" => f.disconnects += 1,
            "partition" => f.partitions += 1,
            "oneway" => f.oneway_partitions += 1,
            _ => f.isolations += 1,
        }
        let hold = rng.range(1000, 3000);
        f.log.push(format!("{t:.1}s {what} for {hold} ms"));
        tokio::time::sleep(Duration::from_millis(hold)).await;
        // Heal, each command retried: a restart must happen or the run is
        // not checked.
        for c in fault_cmds(&cfg.target, kind, cfg.nodes, node, peer, false) {
            let mut healed = false;
            for _ in 0..3 {
                if sh(&c).await {
                    healed = true;
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            if !healed {
                f.command_errors += 1;
                f.log
                    .push(format!("heal of {what} failed: {}", c.join(" ")));
            }
        }
    }
    f
}

/// Waits (bounded) until every shard's replicas report the same applied
/// index on every node, twice in a row.
async fn converge(caller: &Caller, deadline: Duration) -> Result<(), String> {
    let until = Instant::now() + deadline;
    let mut stable = 0;
    let mut last = String::new();
    while Instant::now() < until {
        let mut by_shard: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        let mut all = true;
        for (_, ch) in &caller.channels {
            let mut r = tonic::Request::new(pb::StatusRequest::default());
            r.set_timeout(Duration::from_secs(1));
            crate::wire::authorize(&mut r);
            let mut c = AdminClient::new(ch.clone());
            match tokio::time::timeout(Duration::from_millis(1500), c.status(r)).await {
                Ok(Ok(s)) => {
                    for sh in &s.get_ref().shard_status {
                        by_shard
                            .entry(sh.shard_id)
                            .or_default()
                            .push(sh.applied_index);
                    }
                }
                _ => all = false,
            }
        }
        let equal = by_shard
            .values()
            .all(|v| v.len() >= 3 && v.windows(2).all(|w| w[0] == w[1]));
        last = format!("{by_shard:?}");
        if all && equal && !by_shard.is_empty() {
            stable += 1;
            if stable >= 2 {
                return Ok(());
            }
        } else {
            stable = 0;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "replicas did not converge within {deadline:?}: applied by shard {last}"
    ))
}

/// Every node's digest of each replica it hosts (Admin/Status with
/// `with_state_hash`), for the replica-agreement check. Asked again (bounded)
/// until the replicas of every shard stand at one applied index, so each
/// shard's digests are really compared. A node that does not answer is an
/// error: its replicas would go unchecked.
async fn digests(caller: &Caller) -> Result<Vec<ReplicaDigest>, String> {
    let mut out = Vec::new();
    for _ in 0..10 {
        out.clear();
        for (node, ch) in &caller.channels {
            let mut r = tonic::Request::new(pb::StatusRequest {
                with_state_hash: true,
            });
            r.set_timeout(Duration::from_secs(2));
            crate::wire::authorize(&mut r);
            let mut c = AdminClient::new(ch.clone());
            let s = match tokio::time::timeout(Duration::from_millis(2500), c.status(r)).await {
                Ok(Ok(s)) => s.into_inner(),
                _ => return Err(format!("node {node} gave no state digests")),
            };
            for sh in s.shard_status {
                let Some(state_hash) = sh.state_hash else {
                    return Err(format!(
                        "node {node} sent shard {} without a digest",
                        sh.shard_id
                    ));
                };
                out.push(ReplicaDigest {
                    node: s.node_id,
                    shard: sh.shard_id,
                    applied_index: sh.state_index,
                    state_hash,
                });
            }
        }
        let mut at: BTreeMap<u32, std::collections::BTreeSet<u64>> = BTreeMap::new();
        for d in &out {
            at.entry(d.shard).or_default().insert(d.applied_index);
        }
        if at.values().all(|i| i.len() == 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(out)
}

/// Each account's summary, read through the cluster (linearizable reads).
async fn read_back(
    caller: &mut Caller,
    accounts: &[AccountId],
) -> Result<BTreeMap<AccountId, FinalAccount>, String> {
    let mut out = BTreeMap::new();
    for a in accounts {
        let mut got = None;
        for _ in 0..20 {
            let (_, ch) = caller.any();
            let mut r = tonic::Request::new(pb::BalanceRequest {
                account_id: a.0.clone(),
            });
            r.set_timeout(Duration::from_secs(2));
            crate::wire::authorize(&mut r);
            match ChargingClient::new(ch).balance(r).await {
                Ok(resp) => {
                    let b = resp.into_inner();
                    if b.result == pb::ResultCode::Ok as i32 {
                        let main = b.buckets.iter().find(|x| x.bucket_id == 1);
                        got = Some(Some(AccountSummary {
                            version: b.version,
                            main_balance: main.map_or(0, |m| m.balance),
                            main_reserved: main.map_or(0, |m| m.reserved),
                            debt: b.debt,
                            credit_limit: b.credit_limit,
                            open_reservations: b.open_reservations,
                        }));
                    } else if crate::wire::rejection(b.result)
                        == Some(charging_node::ledger::Rejection::AccountNotFound)
                    {
                        got = Some(None);
                    }
                    if got.is_some() {
                        break;
                    }
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        match got {
            Some(Some(s)) => {
                out.insert(a.clone(), FinalAccount::View(s));
            }
            Some(None) => {}
            None => return Err(format!("balance of {} never read", a.0)),
        }
    }
    Ok(out)
}

pub async fn run(cfg: RealConfig) -> RealRun {
    let started = Instant::now();
    let mut rng = Rng::new(cfg.seed);
    let limits = Limits {
        reservation_validity_ms: 3_600_000,
        ..Limits::default()
    };
    let shared = Arc::new(Shared {
        rec: Recorder::new(History::new(workload::tariffs(), limits)),
        stop: AtomicBool::new(false),
    });
    let prefix = format!("chaos-{}-{}", cfg.seed, now_ms());
    let workload = Arc::new(Mutex::new(Workload::new(
        rng.next_u64(),
        cfg.accounts,
        &prefix,
    )));
    let mut caller = Caller::new(&cfg.target, cfg.nodes, rng.fork());
    let mut errors = Vec::new();
    // Setup on a healthy cluster: the tariff, then the accounts (recorded).
    let rid = crate::history::request_id_at(now_ms(), rng.next_u64()).0;
    let mut tariff_ok = false;
    for _ in 0..50 {
        let (_, ch) = caller.any();
        let mut r = tonic::Request::new(crate::wire::set_tariff_request(rid));
        r.set_timeout(Duration::from_secs(2));
        crate::wire::authorize(&mut r);
        if let Ok(resp) = ChargingClient::new(ch).set_tariff(r).await {
            if resp.get_ref().result == 1 {
                tariff_ok = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !tariff_ok {
        errors.push("tariff never set".to_string());
    }
    let creates = workload.lock().expect("lock").setup(now_ms());
    for req in creates {
        run_op(&shared, &workload, &mut caller, 0, req).await;
    }
    let nem = tokio::spawn(nemesis(cfg.clone(), shared.clone(), rng.fork(), started));
    let until = Instant::now() + cfg.duration;
    let mut tasks = Vec::new();
    for p in 1..=cfg.clients {
        let (shared, workload) = (shared.clone(), workload.clone());
        let mut caller = Caller::new(&cfg.target, cfg.nodes, rng.fork());
        let max = cfg.max_ops_per_client;
        tasks.push(tokio::spawn(async move {
            let mut unknown: Option<Request> = None;
            for _ in 0..max {
                if Instant::now() >= until {
                    break;
                }
                let req = match unknown.take() {
                    Some(r) if caller.rng.chance(70) => r,
                    _ => workload.lock().expect("lock").next(p, now_ms()),
                };
                let out = run_op(&shared, &workload, &mut caller, p, req.clone()).await;
                if !out.is_definite() {
                    unknown = Some(req);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    shared.stop.store(true, Ordering::SeqCst);
    let faults = nem.await.unwrap_or_default();
    if let Err(e) = converge(&caller, Duration::from_secs(60)).await {
        errors.push(e);
    }
    let accounts = workload.lock().expect("lock").accounts.clone();
    let history = shared.rec.snapshot();
    let replicas = digests(&caller).await.unwrap_or_else(|e| {
        errors.push(e);
        Vec::new()
    });
    let fin = match read_back(&mut caller, &accounts).await {
        Ok(a) => FinalState {
            accounts: a,
            replicas,
        },
        Err(e) => {
            errors.push(e);
            FinalState::default()
        }
    };
    let mut report = checker::check(&history, &fin);
    report.add_run_errors(errors);
    RealRun {
        report,
        faults,
        elapsed: started.elapsed(),
    }
}
