//! The shard replicas a node hosts, created and dropped while it runs
//! (scale-out, issue 5).
//!
//! - [`Hosted`]: the live set, read on every request by the front door, the
//!   sweeper, the leader balancer and the placement reconciler.
//! - [`ReplicaSet`]: creates a replica (log engine, state machine, Raft,
//!   shard actor) and drops one (stops it, purges its log, deletes its
//!   snapshot). With a `persist` file, the set survives a restart: the file
//!   lists `shard incarnation` lines and is replaced atomically on change.
//! - [`run_manager`]: creates the replicas the cluster map places on this
//!   node. Dropping happens only on the placement driver's word
//!   (`Admin/DropReplica`), once the shard's membership no longer holds the
//!   replica: a replica must never vanish while it still counts for a quorum.
use crate::clock::SharedClock;
use crate::config::NodeConfig;
use crate::frontdoor::ReplicaControl;
use crate::raft::log_store::LogEngine;
use crate::raft::network::{GroupNetworkFactory, Peers};
use crate::raft::service::Groups;
use crate::raft::state_machine::{ShardStore, SnapshotGate, WriteErrorSink};
use crate::raft::{incarnation_of, replica_id, NodeId, Raft, ShardId};
use crate::shard::supervisor::{self, SupMsg};
use crate::shard::ShardArgs;
use crate::shard::{Hosted, ShardHandle};
use futures::future::BoxFuture;
use ractor::ActorRef;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Opens the log engine of replica incarnation `(shard, incarnation)`.
pub type LogFactory<L> = Arc<dyn Fn(ShardId, u32) -> L + Send + Sync>;

pub struct ReplicaSet<L: LogEngine> {
    pub me: u64,
    pub config: NodeConfig,
    pub raft_cfg: Arc<openraft::Config>,
    pub peers: Arc<Peers>,
    pub groups: Groups,
    pub hosted: Hosted,
    pub clock: SharedClock,
    pub active: Arc<AtomicUsize>,
    pub logs: LogFactory<L>,
    pub snapshot_dir: Option<PathBuf>,
    /// File listing the hosted replicas (`None`: not kept across restarts).
    pub persist: Option<PathBuf>,
    /// The node's supervisor: shard actors are its children (restarted on
    /// failure, never after a drop).
    supervisor: ActorRef<SupMsg>,
    /// Serializes create / drop (and the persist file).
    lock: tokio::sync::Mutex<()>,
    /// One policy snapshot built at a time on this node (see [`SnapshotGate`]).
    snapshot_gate: SnapshotGate,
    /// Told when a replica's snapshot file cannot be written.
    write_error: Option<WriteErrorSink>,
    /// The node's clock against its peers' (shard leaders consult it).
    clock_check: Arc<crate::raft::clock_check::ClockCheck>,
}

/// Snapshot file of a replica incarnation (incarnation 1 keeps the old name).
fn snapshot_file(dir: &std::path::Path, shard: ShardId, incarnation: u32) -> PathBuf {
    if incarnation == crate::ids::INITIAL_INCARNATION {
        dir.join(format!("shard-{shard}.snap"))
    } else {
        dir.join(format!("shard-{shard}.{incarnation}.snap"))
    }
}

/// Reads a persisted replica list: `shard incarnation` per line.
pub fn read_persisted(path: &std::path::Path) -> anyhow::Result<Option<Vec<(ShardId, u32)>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("{}: {e}", path.display()),
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut it = line.split_whitespace();
        let parsed = (|| Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?)))();
        match parsed {
            Some(p) => out.push(p),
            None => anyhow::bail!("{} line {}: corrupt ({line:?})", path.display(), i + 1),
        }
    }
    Ok(Some(out))
}

impl<L: LogEngine> ReplicaSet<L> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: NodeConfig,
        raft_cfg: Arc<openraft::Config>,
        peers: Arc<Peers>,
        groups: Groups,
        hosted: Hosted,
        supervisor: ActorRef<SupMsg>,
        clock: SharedClock,
        logs: LogFactory<L>,
        snapshot_dir: Option<PathBuf>,
        persist: Option<PathBuf>,
    ) -> Self {
        ReplicaSet {
            me: config.node_id,
            config,
            raft_cfg,
            peers,
            groups,
            hosted,
            clock,
            active: Arc::new(AtomicUsize::new(0)),
            logs,
            snapshot_dir,
            persist,
            supervisor,
            lock: tokio::sync::Mutex::new(()),
            snapshot_gate: SnapshotGate::default(),
            write_error: None,
            clock_check: Arc::new(crate::raft::clock_check::ClockCheck::new(u64::MAX)),
        }
    }

    /// Shard leaders refuse to decide while `c` says this node is off.
    pub fn with_clock_check(mut self, c: Arc<crate::raft::clock_check::ClockCheck>) -> Self {
        self.clock_check = c;
        self
    }

    /// Every replica's store reports a snapshot it cannot write to `sink`.
    pub fn on_write_error(mut self, sink: WriteErrorSink) -> Self {
        self.write_error = Some(sink);
        self
    }

    /// Writes the hosted replica list (if this set persists one).
    pub fn save(&self) -> anyhow::Result<()> {
        let Some(path) = &self.persist else {
            return Ok(());
        };
        let mut lines: Vec<(ShardId, u32)> = self
            .hosted
            .iter()
            .map(|e| (*e.key(), incarnation_of(e.value().replica)))
            .collect();
        lines.sort_unstable();
        let text: String = lines.iter().map(|(s, i)| format!("{s} {i}\n")).collect();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Creates (or restores from its log and snapshot) replica incarnation
    /// `incarnation` of `shard`. No-op if it is already hosted.
    pub async fn create(&self, shard: ShardId, incarnation: u32) -> anyhow::Result<ShardHandle> {
        let _g = self.lock.lock().await;
        if let Some(h) = self.hosted.get(&shard) {
            anyhow::ensure!(
                incarnation_of(h.replica) == incarnation,
                "shard {shard}: incarnation {} is hosted, not {incarnation}",
                incarnation_of(h.replica)
            );
            return Ok(h.clone());
        }
        let cfg = &self.config;
        let store = match &self.snapshot_dir {
            Some(dir) => {
                ShardStore::open(cfg.ledger.clone(), snapshot_file(dir, shard, incarnation))?
            }
            None => ShardStore::new(cfg.ledger.clone()),
        }
        .with_gate(self.snapshot_gate.clone());
        let store = match &self.write_error {
            Some(sink) => store.on_write_error(sink.clone()),
            None => store,
        };
        let replica = replica_id(self.me, incarnation);
        let seed = crate::raft::group_seed(cfg.rng_seed, self.me, shard);
        let raft = crate::raft::Runtime::scope(
            seed,
            Raft::new(
                replica,
                self.raft_cfg.clone(),
                GroupNetworkFactory {
                    shard,
                    peers: self.peers.clone(),
                },
                (self.logs)(shard, incarnation),
                store.clone(),
            ),
        )
        .await?;
        let deciding = Arc::new(AtomicBool::new(false));
        // The supervisor puts the handle in `hosted`.
        let h = supervisor::start_shard(
            &self.supervisor,
            ShardArgs {
                node: self.me,
                incarnation,
                shard,
                raft: raft.clone(),
                store,
                clock: self.clock.clone(),
                limits: cfg.shard.clone(),
                active_accounts: self.active.clone(),
                max_active_accounts: cfg.max_active_accounts,
                deciding,
                clock_check: self.clock_check.clone(),
            },
            replica,
        )
        .await?;
        self.groups.insert(shard, (replica, raft));
        self.save()?;
        if incarnation != crate::ids::INITIAL_INCARNATION {
            tracing::info!(node = self.me, shard, incarnation, "replica created");
        }
        Ok(h)
    }

    /// Stops and deletes the hosted replica `replica` of `shard`. Returns
    /// false if that replica is not hosted here.
    pub async fn drop_replica(&self, shard: ShardId, replica: NodeId) -> anyhow::Result<bool> {
        let _g = self.lock.lock().await;
        let Some(h) = self.hosted.get(&shard).map(|h| h.clone()) else {
            return Ok(false);
        };
        if h.replica != replica {
            return Ok(false);
        }
        self.hosted.remove(&shard);
        self.groups.remove(&shard);
        // Forget it first: a crash from here on never brings it back.
        self.save()?;
        // Out of `hosted` already: the supervisor forgets it and never
        // restarts it, even if it failed meanwhile.
        supervisor::retire_shard(&self.supervisor, shard, &h.actor).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), h.raft.shutdown()).await;
        // Purge the whole log so the disk engine can delete its segments.
        let mut log = (self.logs)(shard, incarnation_of(replica));
        if let Ok(state) = log.get_log_state().await {
            if let Some(last) = state.last_log_id {
                let _ = log.purge(last).await;
            }
        }
        if let Some(dir) = &self.snapshot_dir {
            let _ = std::fs::remove_file(snapshot_file(dir, shard, incarnation_of(replica)));
        }
        metrics::counter!("charging_replicas_dropped_total", "node" => crate::metrics_http::label(self.me))
            .increment(1);
        tracing::info!(node = self.me, shard, replica, "replica dropped");
        Ok(true)
    }
}

impl<L: LogEngine> ReplicaControl for ReplicaSet<L> {
    fn drop_replica(&self, shard: ShardId, replica: NodeId) -> BoxFuture<'_, Result<bool, String>> {
        Box::pin(async move {
            ReplicaSet::drop_replica(self, shard, replica)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Creates the replicas the cluster map places on this node (and replaces an
/// older incarnation the map has moved on from). Runs until `stop`.
pub async fn run_manager<L: LogEngine>(
    set: Arc<ReplicaSet<L>>,
    meta: ShardStore,
    mut admitted: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    // A new joiner hosts nothing until the cluster has admitted it (a node
    // whose data was lost must not re-create replicas under their old ids:
    // openraft forbids a member coming back with an empty log).
    tokio::select! {
        r = admitted.wait_for(|a| *a) => if r.is_err() { return },
        _ = stop.wait_for(|s| *s) => return,
    }
    let mut maps = meta.subscribe();
    loop {
        let map = maps.borrow_and_update().state.cluster_map.clone();
        if let Some(map) = map {
            let mut want: BTreeMap<ShardId, NodeId> = BTreeMap::new();
            for s in 0..map.shards {
                if let Some(r) = map.replica_on(s, set.me) {
                    want.insert(s, r);
                }
            }
            for (shard, r) in want {
                let have = set.hosted.get(&shard).map(|h| h.replica);
                if have.is_some_and(|h| incarnation_of(h) < incarnation_of(r)) {
                    // The map moved this node's replica away and back: the
                    // old incarnation is out of the group (the driver places
                    // a new one only on a settled shard).
                    if let Err(e) = set.drop_replica(shard, have.unwrap_or_default()).await {
                        tracing::warn!(shard, error = %e, "dropping an old incarnation failed");
                        continue;
                    }
                } else if have.is_some() {
                    continue;
                }
                if let Err(e) = set.create(shard, incarnation_of(r)).await {
                    tracing::warn!(shard, error = %e, "creating a replica failed");
                }
            }
        }
        tokio::select! {
            r = maps.changed() => if r.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
