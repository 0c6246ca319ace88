//! One node as an OS process (`chargerd start --config node.toml`): its data
//! dir, listeners, durable log engine, metrics endpoint, first-start bootstrap
//! and graceful stop.
use crate::clock::SystemClock;
use crate::config_file::ProcessConfig;
use crate::node::{self, Edges, NodeHandle};
use crate::raft::network::TcpConnector;
use crate::raft::wal::{Wal, WalOptions};
use charging_proto::v1 as pb;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Name of the file that ties a data dir to one node id.
const NODE_ID_FILE: &str = "node_id";
const DISK_ID_FILE: &str = "disk_id";

/// Checks that `dir` belongs to `node_id` (or is new). Returns whether it is new.
fn check_data_dir(dir: &Path, node_id: u64) -> anyhow::Result<bool> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("data_dir {}: {e}", dir.display()))?;
    let marker = dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&marker) {
        Ok(s) => {
            let owner: u64 = s.trim().parse().map_err(|_| {
                anyhow::anyhow!("data_dir: {} is corrupt ({s:?})", marker.display())
            })?;
            anyhow::ensure!(
                owner == node_id,
                "data_dir {} belongs to node {owner}, but node_id is {node_id}",
                dir.display()
            );
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(anyhow::anyhow!("data_dir {}: {e}", marker.display())),
    }
}

/// The data dir's disk id (see `ClusterMap::disks`): read, or made and
/// written durably on its first use. Kept in its own file, written before
/// the node starts, so a crash before the first start completes keeps it.
fn disk_id(dir: &Path) -> anyhow::Result<u64> {
    let path = dir.join(DISK_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => u64::from_str_radix(s.trim(), 16)
            .ok()
            .filter(|d| *d != 0)
            .ok_or_else(|| anyhow::anyhow!("data_dir: {} is corrupt ({s:?})", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A v7 uuid's low 64 bits are random (62 of them).
            let d = (uuid::Uuid::now_v7().as_u128() as u64).max(1);
            let tmp = dir.join(format!("{DISK_ID_FILE}.tmp"));
            std::fs::write(&tmp, format!("{d:016x}\n"))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(d)
        }
        Err(e) => Err(anyhow::anyhow!("data_dir {}: {e}", path.display())),
    }
}

/// What a reachable peer's cluster map records as node `me`'s disk id
/// (checked before the node starts: a node on a data dir the cluster does
/// not know must not run its old replicas, not even to vote). `None`: no
/// peer answered, or none records one.
async fn registered_disk(cfg: &ProcessConfig, peers: &[String]) -> Option<(String, u64)> {
    let me = cfg.node.node_id;
    let credential = if cfg.node.auth.enabled {
        crate::frontdoor::auth::NodeCredential::new(me, &cfg.node.auth, Arc::new(SystemClock)).ok()
    } else {
        None
    };
    for addr in peers {
        let Some(ch) = dial(cfg, addr).await else {
            continue;
        };
        let mut req = tonic::Request::new(pb::StatusRequest::default());
        if let Some(c) = &credential {
            c.authorize(req.metadata_mut());
        }
        let mut admin = pb::admin_client::AdminClient::new(ch);
        if let Ok(s) = admin.status(req).await {
            let d = s
                .into_inner()
                .nodes
                .iter()
                .find(|n| n.node_id == me)
                .map_or(0, |n| n.disk_id);
            if d != 0 {
                return Some((addr.clone(), d));
            }
        }
    }
    None
}

/// A channel to a peer's public address, or `None` within about a second.
async fn dial(cfg: &ProcessConfig, addr: &str) -> Option<tonic::transport::Channel> {
    let scheme = if cfg.node.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut ep = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}")).ok()?;
    if let Some(t) = &cfg.node.tls {
        ep = ep.tls_config(t.client()).ok()?;
    }
    let ep = ep
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(1));
    tokio::time::timeout(Duration::from_secs(1), ep.connect())
        .await
        .ok()?
        .ok()
}

fn write_marker(dir: &Path, node_id: u64) -> anyhow::Result<()> {
    let marker = dir.join(NODE_ID_FILE);
    std::fs::write(&marker, format!("{node_id}\n"))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Whether any reachable peer already hosts initialized shard groups (then
/// this cluster exists and must not be initialized again).
async fn cluster_exists(cfg: &ProcessConfig) -> bool {
    for (id, p) in &cfg.node.members {
        if *id == cfg.node.node_id {
            continue;
        }
        let scheme = if cfg.node.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let Ok(mut ep) =
            tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", p.public))
        else {
            continue;
        };
        if let Some(t) = &cfg.node.tls {
            let Ok(e) = ep.tls_config(t.client()) else {
                continue;
            };
            ep = e;
        }
        let ep = ep
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(1));
        let Ok(Ok(ch)) = tokio::time::timeout(Duration::from_secs(1), ep.connect()).await else {
            continue;
        };
        let mut admin = pb::admin_client::AdminClient::new(ch);
        if let Ok(s) = admin.status(pb::StatusRequest::default()).await {
            if s.into_inner()
                .shard_status
                .iter()
                .any(|s| !s.voters.is_empty())
            {
                return true;
            }
        }
    }
    false
}

/// The WAL group of a replica incarnation: the shard itself for the first
/// incarnation (shards < 4096), then `incarnation << 12 | shard`.
fn wal_group(shard: crate::raft::ShardId, incarnation: u32) -> u32 {
    if incarnation == node::INITIAL_INCARNATION {
        shard
    } else {
        (incarnation << 12) | shard
    }
}

/// A started node process.
pub struct Running {
    pub node: NodeHandle,
    pub wal: Wal,
    stop_metrics: tokio::sync::watch::Sender<bool>,
}

impl Running {
    /// Graceful stop: servers, actors, Raft groups, then the WAL is flushed.
    pub async fn stop(self) {
        let _ = self.stop_metrics.send(true);
        self.node.shutdown().await;
        self.wal.close();
    }
}

/// Starts a node from its config. The first start of the lowest-numbered
/// peer, on a fresh data dir, with no peer reporting an existing cluster,
/// initializes every shard group.
pub async fn start(cfg: ProcessConfig) -> anyhow::Result<Running> {
    let me = cfg.node.node_id;
    let fresh = check_data_dir(&cfg.data_dir, me)?;
    if let Some(why) = below_floor(&cfg.data_dir, cfg.disk_free_min_bytes) {
        anyhow::bail!("{why}; free space there or lower disk_free_min_mb");
    }
    let disk = disk_id(&cfg.data_dir)?;
    let mut asked: Vec<String> = cfg
        .node
        .members
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(_, a)| a.public.clone())
        .collect();
    asked.extend(cfg.node.join.clone());
    if let Some((peer, known)) = registered_disk(&cfg, &asked).await {
        anyhow::ensure!(
            known == disk,
            "node {me}'s data dir {} is not the one the cluster knows (disk id {disk:016x}; \
             {peer} records {known:016x}): its data was lost or swapped. It must not come back \
             under its old member ids (it could help elect a stale leader). Remove it \
             (`chargectl node remove --force {me}` on the admin listener), then start it \
             with a new node_id and `join`",
            cfg.data_dir.display()
        );
    }
    let public = TcpListener::bind(cfg.public_addr)
        .await
        .map_err(|e| anyhow::anyhow!("public_addr {}: {e}", cfg.public_addr))?;
    let internal = TcpListener::bind(cfg.internal_addr)
        .await
        .map_err(|e| anyhow::anyhow!("internal_addr {}: {e}", cfg.internal_addr))?;
    let (stop_metrics, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(m) = cfg.metrics_addr {
        crate::metrics_http::recorder();
        let l = TcpListener::bind(m)
            .await
            .map_err(|e| anyhow::anyhow!("metrics_addr {m}: {e}"))?;
        tokio::spawn(crate::metrics_http::serve(l, stop_rx));
    }
    let wal_dir = cfg.data_dir.join("wal");
    let wal = Wal::open_with(
        &wal_dir,
        cfg.fsync,
        WalOptions {
            node_label: Some(crate::metrics_http::label(me)),
            ..WalOptions::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("opening the log in {}: {e}", wal_dir.display()))?;
    let snapshot_dir = cfg.data_dir.join("snapshots");
    std::fs::create_dir_all(&snapshot_dir)?;

    let lowest = cfg.node.members.keys().next().copied() == Some(me);
    let mut node_cfg = cfg.node.clone();
    node_cfg.disk_id = disk;
    node_cfg.bootstrap = fresh && lowest && node_cfg.join.is_none() && !cluster_exists(&cfg).await;
    let replicas_file = cfg.data_dir.join("replicas");
    // Replicas hosted at the last stop; on a fresh dir, every shard for an
    // initial member and none for a joining node.
    let replicas = crate::control::replicas::read_persisted(&replicas_file)?;
    if node_cfg.bootstrap {
        tracing::info!(
            node = me,
            shards = node_cfg.shards,
            "initializing a new cluster"
        );
    }
    let admin = match cfg.admin_addr {
        Some(a) => Some(node::tcp_incoming(
            TcpListener::bind(a)
                .await
                .map_err(|e| anyhow::anyhow!("admin_addr {a}: {e}"))?,
        )),
        None => None,
    };
    let nchf = match cfg.nchf_addr {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|e| anyhow::anyhow!("nchf_addr {a}: {e}"))?,
        ),
        None => None,
    };
    let edges = Edges {
        public: node::tcp_incoming(public),
        internal: node::tcp_incoming(internal),
        admin,
        nchf,
        connector: Box::new(TcpConnector {
            connect_timeout: node_cfg.connect_timeout,
            tls: node_cfg.tls.as_ref().map(|t| t.client()),
        }),
        clock: Arc::new(SystemClock),
        logs: {
            let wal = wal.clone();
            Arc::new(move |shard, incarnation| wal.log(wal_group(shard, incarnation)))
        },
        replicas,
        replicas_file: Some(replicas_file),
        meta_log: wal.log(crate::control::meta::META_GROUP),
        snapshot_dir: Some(snapshot_dir),
    };
    let node = node::start(node_cfg, edges).await?;
    if fresh {
        write_marker(&cfg.data_dir, me)?;
    }
    Ok(Running {
        node,
        wal,
        stop_metrics,
    })
}

/// Why the file system of `dir` is below the free-space floor, if it is.
/// (A `statvfs` that fails is not a reason: the WAL reports real I/O errors.)
fn below_floor(dir: &Path, floor: u64) -> Option<String> {
    let st = rustix::fs::statvfs(dir).ok()?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    (free < floor).then(|| {
        format!(
            "free space on {} is {} MiB, below the floor disk_free_min_mb = {} MiB",
            dir.display(),
            free >> 20,
            floor >> 20
        )
    })
}

/// Runs a node until `stop` resolves, then stops it gracefully. If the node
/// stops itself first (an unrecoverable failure: see
/// [`NodeHandle::failed`]), finishes stopping it and returns the error, so
/// chargerd exits non-zero and its supervisor (systemd, k8s) sees it.
pub async fn run(cfg: ProcessConfig, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let (dir, floor) = (cfg.data_dir.clone(), cfg.disk_free_min_bytes);
    let r = start(cfg).await?;
    let id = r.node.id;
    // The WAL's first I/O error (a failed write or fsync, a full disk) fails
    // every later write of every group here, and free space below the
    // floor would soon do the same: the node can only stop. It says so in
    // health and the log, and exits non-zero. (A snapshot write error stops
    // the node through `NodeHandle::failed`.)
    let wal = r.wal.clone();
    let storage_failed = async move {
        loop {
            if let Some(e) = wal.failure() {
                break format!("the write-ahead log refuses every write: {e}");
            }
            if let Some(why) = below_floor(&dir, floor) {
                break why;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    };
    let failed = tokio::select! {
        _ = stop => None,
        why = r.node.failed() => {
            r.node.set_not_serving().await;
            Some(why)
        }
        e = storage_failed => {
            r.node.set_not_serving().await;
            metrics::gauge!("charging_storage_failed", "node" => crate::metrics_http::label(id))
                .set(1.0);
            tracing::error!(node = id, error = %e, "storage failed; stopping");
            Some(format!("storage failed: {e}"))
        }
    };
    r.stop().await;
    match failed {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!("node {id} stopped: {why}")),
    }
}
