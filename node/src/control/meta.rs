//! Cluster metadata: the shard map as replicated state (DESIGN §2).
//!
//! A small Raft group, [`META_GROUP`], hosted by the cluster's initial
//! members, holds one [`ClusterMap`]: the nodes and their addresses, and the
//! intended replicas of each shard, with a version that grows by one on
//! every change. Changes are compare-and-set on the version
//! (`GroupEvent::ClusterMap { expected_version, .. }`), so two writers never both
//! win. Each shard group's own membership stays the authority on who
//! replicates it; the map holds the intent, and `Admin/ShardMap` joins it
//! with the leaders each node observes. Scale-out (issue 5) changes the map
//! through the same event.
pub use crate::cluster_map::{ClusterMap, NodeEntry};
use crate::config::NodeConfig;
use crate::raft::state_machine::ShardStore;
use crate::raft::{replica_id, Batch, GroupEvent, NodeId, Raft, ShardId};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;

/// Group id of the metadata Raft group (beside shards `0..shards`).
pub const META_GROUP: ShardId = u32::MAX;

impl ClusterMap {
    /// The first map of a cluster made from `config`: every shard on every
    /// member (RF = members), incarnation `incarnation`.
    pub fn initial(config: &NodeConfig, incarnation: u32) -> ClusterMap {
        let replicas: Vec<NodeId> = config
            .members
            .keys()
            .map(|n| replica_id(*n, incarnation))
            .collect();
        let mut map = ClusterMap {
            version: 1,
            shards: config.shards,
            replication_factor: replicas.len() as u32,
            nodes: config
                .members
                .iter()
                .map(|(id, a)| {
                    (
                        *id,
                        NodeEntry {
                            public: a.public.clone(),
                            internal: a.internal.clone(),
                            draining: false,
                        },
                    )
                })
                .collect(),
            placement: (0..config.shards).map(|s| (s, replicas.clone())).collect(),
            leaders: BTreeMap::new(),
            next_incarnation: incarnation + 1,
            removed: Default::default(),
            disks: Default::default(),
        };
        map.leaders = crate::control::placement::spread_leaders(&map);
        map
    }
}

/// Keeps the map written: whenever this node leads the metadata group and
/// the group holds no map yet, it writes the initial one (compare-and-set on
/// version 0, so concurrent writers cannot both win). Every node runs it, so
/// a bootstrap node that dies before writing does not leave the map empty.
pub async fn run_writer(
    raft: Raft,
    store: ShardStore,
    initial: ClusterMap,
    clock: crate::clock::SharedClock,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if store.view().state.cluster_map.is_none() && raft.as_leader().is_ok() {
            let batch = Batch {
                log_ts_ms: clock.now_ms(),
                events: [GroupEvent::ClusterMap {
                    map: initial.clone(),
                    expected_version: 0,
                }]
                .into(),
            };
            match tokio::time::timeout(Duration::from_secs(5), raft.client_write(batch)).await {
                Ok(Ok(_)) => tracing::info!(version = initial.version, "cluster map written"),
                Ok(Err(e)) => tracing::debug!(error = %e, "cluster map write failed; retrying"),
                Err(_) => tracing::debug!("cluster map write timed out; retrying"),
            }
        }
        if store.view().state.cluster_map.is_some() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Why a map change did not happen.
#[derive(Debug)]
pub enum ChangeError {
    /// This node does not lead the metadata group (the leader, if known).
    NotLeader(Option<u64>),
    /// The change is refused (bad request); the message says why.
    Refused(String),
    /// Not known to be written (timeout, leadership lost): retry.
    Unavailable(String),
}

/// Changes the map on the metadata leader: `f` gets the current map and
/// returns the next one (`Ok(None)`: nothing to change). Written with
/// compare-and-set on the version, retried on a conflict. Returns the version
/// that holds the change.
pub async fn change(
    raft: &Raft,
    store: &ShardStore,
    clock: &crate::clock::SharedClock,
    f: impl Fn(&ClusterMap) -> Result<Option<ClusterMap>, String>,
) -> Result<u64, ChangeError> {
    for _ in 0..5 {
        if let Err(fwd) = raft.as_leader() {
            return Err(ChangeError::NotLeader(
                fwd.leader_id.map(crate::raft::node_of),
            ));
        }
        // Read our own writes: the view must include every committed map.
        let read = tokio::time::timeout(
            Duration::from_secs(2),
            raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex),
        )
        .await;
        if !matches!(read, Ok(Ok(_))) {
            return Err(ChangeError::Unavailable(
                "metadata read index not confirmed".into(),
            ));
        }
        let Some(current) = store.view().state.cluster_map.clone() else {
            return Err(ChangeError::Unavailable("no cluster map yet".into()));
        };
        let Some(next) = f(&current).map_err(ChangeError::Refused)? else {
            return Ok(current.version);
        };
        let batch = Batch {
            log_ts_ms: clock.now_ms(),
            events: [GroupEvent::ClusterMap {
                map: next,
                expected_version: current.version,
            }]
            .into(),
        };
        match tokio::time::timeout(Duration::from_secs(5), raft.client_write(batch)).await {
            Ok(Ok(resp)) => match resp.data.0.first() {
                Some(crate::ledger::Applied::Ok(crate::ledger::Reply::ClusterMapSet {
                    version,
                })) => return Ok(*version),
                _ => continue, // a concurrent change won: decide again
            },
            Ok(Err(e)) => return Err(ChangeError::Unavailable(e.to_string())),
            Err(_) => return Err(ChangeError::Unavailable("metadata write timed out".into())),
        }
    }
    Err(ChangeError::Unavailable("cluster map kept changing".into()))
}
