//! How the front door and the control plane hold a local shard replica.
use super::ShardMsg;
use crate::maps::DashMap;
use crate::raft::state_machine::ShardStore;
use crate::raft::{NodeId, Raft, ShardId};
use ractor::ActorRef;
use std::sync::Arc;

/// One local shard replica as the front door sees it.
#[derive(Clone)]
pub struct ShardHandle {
    pub shard: ShardId,
    /// Its Raft member id (node << 32 | incarnation).
    pub replica: NodeId,
    pub raft: Raft,
    pub store: ShardStore,
    pub actor: ActorRef<ShardMsg>,
    /// True while this replica's shard actor is in a deciding epoch.
    pub deciding: Arc<std::sync::atomic::AtomicBool>,
}

impl ShardHandle {
    pub fn is_deciding(&self) -> bool {
        self.deciding.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The replicas this node hosts, by shard (at most one per shard).
pub type Hosted = Arc<DashMap<ShardId, ShardHandle>>;
