//! A cluster of `chargerd` processes for tests: configs, start, kill -9,
//! restart, readiness, and a load of top-ups whose outcomes are all recorded.
#![allow(dead_code)]

use charging_client::{is_ok, Client, ClientConfig, Uuid};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const SHARDS: u32 = 4;

/// The CA of every test cluster in this binary: processes run TLS (mutual
/// between nodes), as `chargerd start` does by default.
pub fn ca() -> &'static charging_node::tls::CertAuthority {
    static CA: std::sync::OnceLock<charging_node::tls::CertAuthority> = std::sync::OnceLock::new();
    CA.get_or_init(|| charging_node::tls::CertAuthority::generate("process tests CA").unwrap())
}

/// Writes node `id`'s certificate and key (and the CA) into `dir`, and
/// returns the config's `[tls]` section.
fn tls_section(dir: &Path, id: u64) -> String {
    let ca_path = dir.join("ca.pem");
    if !ca_path.exists() {
        std::fs::write(&ca_path, &ca().cert_pem).unwrap();
    }
    let n = ca().node_cert(id, &[]).unwrap();
    std::fs::write(dir.join(format!("node{id}.pem")), n.cert_pem).unwrap();
    std::fs::write(dir.join(format!("node{id}.key")), n.key_pem).unwrap();
    format!("\n[tls]\nca = \"ca.pem\"\ncert = \"node{id}.pem\"\nkey = \"node{id}.key\"\n")
}

/// Picks a free loopback port (bind port 0, read it, release it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct Proc {
    pub id: u64,
    pub config: PathBuf,
    pub public: String,
    /// The admin listener: cluster changes, with a client certificate.
    pub admin: String,
    child: Option<Child>,
}

pub struct ProcCluster {
    pub dir: tempfile::TempDir,
    pub procs: BTreeMap<u64, Proc>,
}

impl ProcCluster {
    /// Writes configs for `n` nodes and starts them.
    pub fn start(n: u64, fsync: &str, extra: &str) -> ProcCluster {
        let mut c = Self::configure(n, fsync, extra);
        for id in 1..=n {
            c.launch(id);
        }
        c
    }

    /// Writes configs and data dirs for `n` nodes; starts none.
    pub fn configure(n: u64, fsync: &str, extra: &str) -> ProcCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let admin_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut peers = String::new();
        for (i, (p, r)) in ports.iter().enumerate() {
            peers.push_str(&format!(
                "\n[[peers]]\nid = {}\npublic = \"127.0.0.1:{p}\"\ninternal = \"127.0.0.1:{r}\"\n",
                i + 1
            ));
        }
        let mut procs = BTreeMap::new();
        for (i, (p, r)) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let a = admin_ports[i];
            let data = dir.path().join(format!("node{id}"));
            std::fs::create_dir_all(&data).unwrap();
            let config = dir.path().join(format!("node{id}.toml"));
            std::fs::write(
                &config,
                format!(
                    "node_id = {id}\npublic_addr = \"127.0.0.1:{p}\"\ninternal_addr = \"127.0.0.1:{r}\"\n\
                     admin_addr = \"127.0.0.1:{a}\"\n\
                     data_dir = \"{}\"\nshards = {SHARDS}\nreplication_factor = {n}\nfsync = \"{fsync}\"\n\
                     {peers}{}\n[limits]\n{extra}\n",
                    data.display(),
                    tls_section(dir.path(), id),
                ),
            )
            .unwrap();
            procs.insert(
                id,
                Proc {
                    id,
                    config,
                    public: format!("https://127.0.0.1:{p}"),
                    admin: format!("https://127.0.0.1:{a}"),
                    child: None,
                },
            );
        }
        ProcCluster { dir, procs }
    }

    /// Adds top-level `lines` to node `id`'s config (before its sections).
    pub fn add_config(&self, id: u64, lines: &str) {
        let path = &self.procs[&id].config;
        let text = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, format!("{lines}\n{text}")).unwrap();
    }

    /// Node `id`'s exit status once it has exited by itself, waiting at
    /// most `timeout`; `None` if it is still running then.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let p = self.procs.get_mut(&id).expect("node");
        let c = p.child.as_mut()?;
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                p.child = None;
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes the config of a new node `id` that joins through node `via`
    /// (lists only itself), and starts it.
    pub fn add_joiner(&mut self, id: u64, via: u64, fsync: &str, extra: &str) {
        let (p, r, a) = (free_port(), free_port(), free_port());
        let data = self.dir.path().join(format!("node{id}"));
        std::fs::create_dir_all(&data).unwrap();
        let config = self.dir.path().join(format!("node{id}.toml"));
        let join = self.url(via).trim_start_matches("https://").to_string();
        std::fs::write(
            &config,
            format!(
                "node_id = {id}\npublic_addr = \"127.0.0.1:{p}\"\ninternal_addr = \"127.0.0.1:{r}\"\n\
                 admin_addr = \"127.0.0.1:{a}\"\n\
                 data_dir = \"{}\"\nshards = {SHARDS}\nfsync = \"{fsync}\"\njoin = \"{join}\"\n\
                 {}\n[limits]\n{extra}\n",
                data.display(),
                tls_section(self.dir.path(), id),
            ),
        )
        .unwrap();
        self.procs.insert(
            id,
            Proc {
                id,
                config,
                public: format!("https://127.0.0.1:{p}"),
                admin: format!("https://127.0.0.1:{a}"),
                child: None,
            },
        );
        self.launch(id);
    }

    pub fn launch(&mut self, id: u64) {
        let p = self.procs.get_mut(&id).expect("node");
        assert!(p.child.is_none(), "node {id} already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node{id}.log")))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_chargerd"))
            .arg("start")
            .arg("--config")
            .arg(&p.config)
            .env("RUST_LOG", "warn,charging_node=info,openraft=error")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn chargerd");
        p.child = Some(child);
    }

    /// SIGKILL: no graceful anything.
    pub fn kill9(&mut self, id: u64) {
        let p = self.procs.get_mut(&id).expect("node");
        if let Some(mut c) = p.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn stop(&mut self, id: u64) -> bool {
        let p = self.procs.get_mut(&id).expect("node");
        let Some(mut c) = p.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id of node `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.procs[&id].child.as_ref().map(|c| c.id())
    }

    /// Resident memory of node `id`'s process, in KiB.
    pub fn rss_kib(&self, id: u64) -> u64 {
        let pid = self.pid(id).expect("node running");
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    pub fn admin_url(&self, id: u64) -> String {
        self.procs[&id].admin.clone()
    }

    pub fn url(&self, id: u64) -> String {
        self.procs[&id].public.clone()
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{id}.log"))).unwrap_or_default()
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    /// Waits until node `id` answers status with a leader for every shard.
    pub async fn wait_ready(&self, id: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(c) = Client::connect_with_config(self.url(id), client_config()).await {
                if let Ok(s) = c.status().await {
                    if s.shard_status.len() == SHARDS as usize
                        && s.shard_status.iter().all(|s| s.leader != 0)
                    {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {id} not ready within {timeout:?}; log:\n{}",
                self.log(id)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The node leading each shard, as node `id` sees it.
    pub async fn leaders(&self, id: u64) -> Vec<u64> {
        let c = connect(&self.url(id)).await;
        let s = c.status().await.expect("status");
        s.shard_status.iter().map(|s| s.leader).collect()
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for p in self.procs.values_mut() {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

pub fn client_config() -> ClientConfig {
    ClientConfig {
        deadline_ms: 10_000,
        max_retries: 100,
        tls: Some(charging_client::ClientTls {
            ca_pem: ca().cert_pem.clone(),
            identity: None,
            domain: None,
        }),
        ..ClientConfig::default()
    }
}

/// An operator's client on a node's admin listener (a client certificate
/// from the cluster's CA): drain and remove go there.
pub async fn connect_admin(url: &str) -> Client {
    let cert = ca().client_cert("operator").unwrap();
    let mut config = client_config();
    if let Some(t) = config.tls.as_mut() {
        t.identity = Some((cert.cert_pem, cert.key_pem));
    }
    Client::connect_with_config(url, config)
        .await
        .expect("admin client connects")
}

/// Waits (bounded) until the map records a disk id for each of `nodes`
/// nodes (every node registers its data dir once it runs), and returns the
/// map's version then.
pub async fn wait_disks_registered(c: &Client, nodes: usize) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.status().await.expect("status");
        if s.nodes.len() == nodes && s.nodes.iter().all(|n| n.disk_id != 0) {
            return s.map_version;
        }
        assert!(
            Instant::now() < deadline,
            "disk ids registered: {:?}",
            s.nodes
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn connect(url: &str) -> Client {
    Client::connect_with_config(url, client_config())
        .await
        .expect("client connects")
}

/// Accounts, one or more per shard.
pub fn accounts(prefix: &str, per_shard: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut counts = vec![0usize; SHARDS as usize];
    let mut i = 0;
    while counts.iter().any(|c| *c < per_shard) {
        let a = format!("{prefix}-{i}");
        let s = charging_proto::shard_of(&a, SHARDS) as usize;
        if counts[s] < per_shard {
            counts[s] += 1;
            out.push(a);
        }
        i += 1;
    }
    out
}

/// What became of each top-up of a load run.
#[derive(Default)]
pub struct Ledger {
    /// (account, request id, amount): acknowledged OK.
    pub acked: Vec<(String, Uuid, i64)>,
    /// Outcome unknown (the client gave up): may or may not be applied.
    pub unknown: Vec<(String, Uuid, i64)>,
    /// Time of every acknowledgement since the start of the run.
    pub ack_times: Vec<Duration>,
}

/// Runs `workers` loops of top-ups (amount 1, each with a fresh request id)
/// over `accounts` until `stop` is set or `max_ops` per worker are done.
pub async fn top_up_load(
    clients: Vec<Client>,
    accounts: Arc<Vec<String>>,
    max_ops: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acks: Arc<std::sync::atomic::AtomicUsize>,
) -> Ledger {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (w, c) in clients.into_iter().enumerate() {
        let accounts = accounts.clone();
        let ledger = ledger.clone();
        let stop = stop.clone();
        let acks = acks.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..max_ops {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let a = accounts[(w * 7919 + i) % accounts.len()].clone();
                let id = Uuid::now_v7();
                let r = c.top_up_with_id(id, &a, 1, 1).await;
                let mut l = ledger.lock().unwrap();
                match r {
                    Ok(r) if r.result == 0 || charging_client::is_ok(r.result) => {
                        l.acked.push((a, id, 1));
                        acks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        l.ack_times.push(started.elapsed());
                    }
                    Ok(r) => panic!("top-up refused: {}", charging_client::result_name(r.result)),
                    Err(e) if e.code() == Some(tonic::Code::InvalidArgument) => {
                        panic!("top-up invalid: {e}")
                    }
                    Err(_) => l.unknown.push((a, id, 1)),
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    Arc::try_unwrap(ledger)
        .ok()
        .expect("workers done")
        .into_inner()
        .unwrap()
}

/// Waits until `acks` reaches `n` (bounded by `timeout`).
pub async fn wait_acks(acks: &std::sync::atomic::AtomicUsize, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while acks.load(std::sync::atomic::Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} acknowledgements within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The longest pause between two consecutive acknowledgements.
pub fn longest_gap(times: &[Duration]) -> Duration {
    let mut t = times.to_vec();
    t.sort();
    t.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

pub fn main_balance(b: &charging_client::proto::BalanceResponse) -> i64 {
    b.buckets
        .iter()
        .find(|x| x.bucket_id == 1)
        .map(|x| x.balance)
        .expect("main bucket")
}

pub fn file_exists(p: &Path) -> bool {
    p.exists()
}

/// Retries every unknown top-up with its own request id until each has an
/// answer: applied exactly once, whether it had been or not.
pub async fn settle(c: &Client, ledger: &mut Ledger) {
    for (a, id, amount) in std::mem::take(&mut ledger.unknown) {
        let r = c
            .top_up_with_id(id, &a, 1, amount)
            .await
            .expect("retry of an unknown top-up");
        assert!(is_ok(r.result), "retry of {id} on {a}");
        ledger.acked.push((a, id, amount));
    }
}

/// Every account's balance equals the sum of its acknowledged top-ups.
pub async fn assert_exact(c: &Client, accounts: &[String], ledger: &Ledger) {
    let mut want: BTreeMap<&str, i64> = accounts.iter().map(|a| (a.as_str(), 0)).collect();
    for (a, _, amount) in &ledger.acked {
        *want.get_mut(a.as_str()).expect("known account") += amount;
    }
    for (a, w) in want {
        let b = c.balance(a).await.expect("balance");
        assert_eq!(main_balance(&b), w, "balance of {a}");
    }
}
