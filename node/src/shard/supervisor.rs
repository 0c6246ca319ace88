//! The node's supervisor (issue 15): one ractor actor per node, the parent of
//! every shard actor and of the expiry sweeper on it.
//!
//! - A child that *fails* (a panic, or an error returned by a handler) is
//!   restarted from the same inputs: a shard actor from its replica's Raft
//!   handle and applied state (never from the dead actor's speculative
//!   state), and the shard's [`ShardHandle`] in the hosted map is pointed at
//!   the new actor, so routing reaches it. The new actor starts as a follower
//!   and decides nothing until its epoch's read index is confirmed, like any
//!   new leader. The dead actor's waiters lost their reply sinks with its
//!   state, which callers hear as an unknown outcome: they retry with the same
//!   request id and the ledger dedups, so nothing acknowledged is lost or
//!   applied twice.
//! - A child *stopped* on purpose (replica dropped, node shutdown) is
//!   forgotten, never restarted: ractor reports it as `ActorTerminated`, a
//!   failure as `ActorFailed`. A dropped replica is forgotten before its actor
//!   is stopped, and a failure of a shard no longer hosted is not restarted.
//! - Restarts are bounded ([`MAX_RESTARTS`] per [`RESTART_WINDOW`]): past
//!   that the failure is not one a restart cures, and the node stops with an
//!   error (see [`crate::node::NodeHandle::failed`]) rather than run on as a
//!   half-node that silently serves some shards and not others.
//!
//! The supervisor's own handlers do nothing that can fail: if it died, ractor
//! would stop its children with it (the node then reports that too).
use super::sweeper::{SweepMsg, Sweeper, SweeperArgs};
use super::{ShardActor, ShardArgs, ShardMsg};
use crate::raft::{replica_id, NodeId, ShardId};
use crate::shard::Hosted;
use crate::shard::ShardHandle;
use metrics::counter;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Failures of one child tolerated within [`RESTART_WINDOW`]; one more stops
/// the node. A shard actor's state is rebuilt from applied state, so a
/// one-off failure (a bug on a rare path) is cured by a restart; one that
/// recurs this often within a minute is deterministic (e.g. every decision on
/// some account panics), and restarting on would only turn every request to
/// that shard into an unknown outcome. Stopping the node moves the shard's
/// leadership to another replica, and makes the fault loud.
pub const MAX_RESTARTS: usize = 5;
/// The window over which [`MAX_RESTARTS`] is counted: long enough to catch a
/// crash loop (each restart costs a read index, milliseconds), short enough
/// that rare failures spread over a node's life never add up to a stop.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// A supervised child: what it is restarted from.
enum Spec {
    Shard(Box<ShardArgs>),
    Sweeper(SweeperArgs),
}

enum ChildRef {
    Shard(ActorRef<ShardMsg>),
    Sweeper(ActorRef<SweepMsg>),
}

impl ChildRef {
    fn id(&self) -> ractor::ActorId {
        match self {
            ChildRef::Shard(a) => a.get_id(),
            ChildRef::Sweeper(a) => a.get_id(),
        }
    }
}

struct Child {
    spec: Spec,
    actor: ChildRef,
    /// When it failed, within the last [`RESTART_WINDOW`].
    failures: VecDeque<Instant>,
}

/// Which child: a shard's actor (at most one replica per shard on a node),
/// or the sweeper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Shard(ShardId),
    Sweeper,
}

pub enum SupMsg {
    /// Spawns replica `replica`'s shard actor linked to the supervisor, and
    /// inserts its handle in the hosted map (here, so that a failure is
    /// never seen before the handle it must update exists).
    StartShard {
        args: Box<ShardArgs>,
        replica: NodeId,
        reply: RpcReplyPort<Result<ShardHandle, String>>,
    },
    /// Stops a shard's actor on purpose (its replica is dropped; the caller
    /// removed it from the hosted map first): forgotten, never restarted.
    RetireShard {
        shard: ShardId,
        reply: RpcReplyPort<()>,
    },
    /// Spawns the expiry sweeper linked to the supervisor.
    StartSweeper {
        args: SweeperArgs,
        reply: RpcReplyPort<Result<(), String>>,
    },
}

pub struct SupervisorArgs {
    pub node: NodeId,
    pub hosted: Hosted,
    /// Set once, when a child failed past its restart budget: why the node
    /// must stop. The node watches it (see `crate::node`).
    pub fatal: watch::Sender<Option<String>>,
}

pub struct SupState {
    a: SupervisorArgs,
    children: BTreeMap<Key, Child>,
    node_label: metrics::SharedString,
}

pub struct Supervisor;

impl Actor for Supervisor {
    type Msg = SupMsg;
    type State = SupState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SupMsg>,
        a: SupervisorArgs,
    ) -> Result<SupState, ActorProcessingErr> {
        let node_label = crate::metrics_http::label(a.node);
        Ok(SupState {
            a,
            children: BTreeMap::new(),
            node_label,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SupMsg>,
        msg: SupMsg,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupMsg::StartShard {
                args,
                replica,
                reply,
            } => {
                let shard = args.shard;
                let r =
                    match Actor::spawn_linked(None, ShardActor, (*args).clone(), myself.get_cell())
                        .await
                    {
                        Ok((actor, _)) => {
                            let h = ShardHandle {
                                shard,
                                replica,
                                raft: args.raft.clone(),
                                store: args.store.clone(),
                                actor: actor.clone(),
                                deciding: args.deciding.clone(),
                            };
                            st.a.hosted.insert(shard, h.clone());
                            st.children.insert(
                                Key::Shard(shard),
                                Child {
                                    spec: Spec::Shard(args),
                                    actor: ChildRef::Shard(actor),
                                    failures: VecDeque::new(),
                                },
                            );
                            Ok(h)
                        }
                        Err(e) => Err(e.to_string()),
                    };
                let _ = reply.send(r);
            }
            SupMsg::RetireShard { shard, reply } => {
                if let Some(c) = st.children.remove(&Key::Shard(shard)) {
                    if let ChildRef::Shard(a) = c.actor {
                        a.stop(Some("replica dropped".into()));
                    }
                }
                let _ = reply.send(());
            }
            SupMsg::StartSweeper { args, reply } => {
                let r = match Actor::spawn_linked(None, Sweeper, args.clone(), myself.get_cell())
                    .await
                {
                    Ok((actor, _)) => {
                        st.children.insert(
                            Key::Sweeper,
                            Child {
                                spec: Spec::Sweeper(args),
                                actor: ChildRef::Sweeper(actor),
                                failures: VecDeque::new(),
                            },
                        );
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = reply.send(r);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupMsg>,
        evt: SupervisionEvent,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                // A child restarted or retired since is not this one.
                let Some(key) = st.key_of(cell.get_id()) else {
                    return Ok(());
                };
                on_failed(&myself, st, key, err.to_string()).await;
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                // Stopped on purpose (node shutdown stops shard actors
                // directly): forget it, never restart it.
                if let Some(key) = st.key_of(cell.get_id()) {
                    tracing::debug!(node = st.a.node, child = ?key, ?reason, "child stopped");
                    st.children.remove(&key);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl SupState {
    fn key_of(&self, id: ractor::ActorId) -> Option<Key> {
        self.children
            .iter()
            .find(|(_, c)| c.actor.id() == id)
            .map(|(k, _)| *k)
    }

    /// Gives up: the node must stop (the node's watcher of `fatal` does it).
    fn give_up(&mut self, why: String) {
        tracing::error!(node = self.a.node, "{why}; stopping the node");
        self.a.fatal.send_if_modified(|f| {
            if f.is_none() {
                *f = Some(why);
                true
            } else {
                false
            }
        });
    }
}

async fn on_failed(myself: &ActorRef<SupMsg>, st: &mut SupState, key: Key, err: String) {
    // Out of the map while it is restarted; back in only if it was.
    let Some(mut child) = st.children.remove(&key) else {
        return;
    };
    if st.a.fatal.borrow().is_some() {
        // The node is stopping already.
        return;
    }
    let now = Instant::now();
    child.failures.push_back(now);
    while child
        .failures
        .front()
        .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
    {
        child.failures.pop_front();
    }
    let failures = child.failures.len();
    let what = match key {
        Key::Shard(s) => format!("shard {s} actor"),
        Key::Sweeper => "expiry sweeper".to_string(),
    };
    if failures > MAX_RESTARTS {
        st.give_up(format!(
            "{what} failed {failures} times within {RESTART_WINDOW:?} (last: {err}): \
             not recoverable by restarting"
        ));
        return;
    }
    let restarted = match &mut child.spec {
        Spec::Shard(args) => {
            let shard = args.shard;
            let replica = replica_id(args.node, args.incarnation);
            // Only a replica still hosted comes back: one being dropped was
            // removed from the hosted map before its actor is retired.
            if st.a.hosted.get(&shard).is_none_or(|h| h.replica != replica) {
                return;
            }
            // A fresh deciding flag: the dead actor's state clears the old
            // one when it is dropped, which may be after the new actor began
            // deciding.
            args.deciding = Arc::new(AtomicBool::new(false));
            match Actor::spawn_linked(None, ShardActor, (**args).clone(), myself.get_cell()).await {
                Ok((actor, _)) => {
                    if let Some(mut h) = st.a.hosted.get_mut(&shard) {
                        h.actor = actor.clone();
                        h.deciding = args.deciding.clone();
                    }
                    child.actor = ChildRef::Shard(actor);
                    counter!("charging_shard_actor_restarts_total",
                        "node" => st.node_label.clone(),
                        "shard" => crate::metrics_http::label(shard))
                    .increment(1);
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        Spec::Sweeper(args) => {
            match Actor::spawn_linked(None, Sweeper, args.clone(), myself.get_cell()).await {
                Ok((actor, _)) => {
                    child.actor = ChildRef::Sweeper(actor);
                    counter!("charging_sweeper_restarts_total", "node" => st.node_label.clone())
                        .increment(1);
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        }
    };
    match restarted {
        Ok(()) => {
            tracing::error!(node = st.a.node, failures, error = %err, "{what} failed; restarted");
            st.children.insert(key, child);
        }
        Err(e) => st.give_up(format!(
            "{what} failed ({err}) and could not be restarted: {e}"
        )),
    }
}

/// Starts replica `replica`'s shard actor under `sup` and returns its handle
/// (already in the hosted map).
pub async fn start_shard(
    sup: &ActorRef<SupMsg>,
    args: ShardArgs,
    replica: NodeId,
) -> anyhow::Result<ShardHandle> {
    let r = sup
        .call(
            |reply| SupMsg::StartShard {
                args: Box::new(args),
                replica,
                reply,
            },
            None,
        )
        .await;
    match r {
        Ok(ractor::rpc::CallResult::Success(Ok(h))) => Ok(h),
        Ok(ractor::rpc::CallResult::Success(Err(e))) => {
            anyhow::bail!("starting the shard actor: {e}")
        }
        Ok(_) => anyhow::bail!("starting the shard actor: the supervisor did not answer"),
        Err(e) => anyhow::bail!("starting the shard actor: supervisor: {e}"),
    }
}

/// Stops shard `shard`'s actor on purpose, and forgets it (see
/// [`SupMsg::RetireShard`]). Falls back to stopping `actor` if the
/// supervisor is gone (the node is stopping).
pub async fn retire_shard(sup: &ActorRef<SupMsg>, shard: ShardId, actor: &ActorRef<ShardMsg>) {
    let r = sup
        .call(|reply| SupMsg::RetireShard { shard, reply }, None)
        .await;
    if !matches!(r, Ok(ractor::rpc::CallResult::Success(()))) {
        actor.stop(None);
    }
}

/// Starts the expiry sweeper under `sup`.
pub async fn start_sweeper(sup: &ActorRef<SupMsg>, args: SweeperArgs) -> anyhow::Result<()> {
    match sup
        .call(|reply| SupMsg::StartSweeper { args, reply }, None)
        .await
    {
        Ok(ractor::rpc::CallResult::Success(Ok(()))) => Ok(()),
        Ok(ractor::rpc::CallResult::Success(Err(e))) => {
            anyhow::bail!("starting the sweeper: {e}")
        }
        _ => anyhow::bail!("starting the sweeper: the supervisor did not answer"),
    }
}
