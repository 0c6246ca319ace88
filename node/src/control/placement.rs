//! Scale-out: where shard replicas live, and moving them while traffic flows.
//!
//! Three parts, each reconciling observed state toward intent, so an
//! interrupted step (a leader crash mid-change) is finished, not forgotten:
//!
//! - **The driver** ([`run_driver`]) runs on every node and acts only on the
//!   metadata leader. Each tick it polls every node's `Admin/Status` (the
//!   replicas it hosts, each group's membership as its leader sees it),
//!   writes a new placement when nodes joined, drain or are unbalanced
//!   ([`plan`]: at most `max_moves` shards whose membership differs from the
//!   map at once, one replica per shard per move, a move only on a settled
//!   shard), spreads preferred leaders, keeps every node a member (learner)
//!   of the metadata group, and tells nodes to drop replicas that have left
//!   their group (`Admin/DropReplica`).
//! - **The reconciler** ([`run_reconciler`]) runs on every node for the
//!   shards whose replica there leads: it moves the group's membership to the
//!   map's intent: add the new replica as a learner, wait until it has caught
//!   up, then one joint-consensus change (`change_membership_if`, guarded by
//!   the membership log id it observed) that also removes the old replica. A
//!   leader that is itself leaving hands leadership to a caught-up voter
//!   first. A shard never has fewer than RF voters during a move.
//! - **The replica manager** (`replicas::run_manager`) creates the replicas
//!   the map places on its node.
//!
//! Open reservations are shard state: they move with the shard's log and
//! snapshots, so a reservation opened before a move commits after it.
use crate::cluster_map::ClusterMap;
pub use crate::cluster_map::DriverStatus;
pub use crate::config::PlacementOptions;
use crate::error::Error;
use crate::frontdoor::{FrontDoor, ShardHandle};
use crate::maps::HashMap;
use crate::raft::state_machine::ShardStore;
use crate::raft::{node_of, replica_id, NodeId, ShardId};
use crate::shard::Hosted;
use charging_proto::v1 as pb;
use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, ChangeMembers};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// A follower within this many entries of the leader's log is caught up.
pub const CAUGHT_UP_LAG: u64 = 64;

/// A shard group's membership as its leader reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub leader: u64,
    pub term: u64,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    pub joint: bool,
}

impl Observed {
    /// The group's membership is exactly the map's intent (no move running).
    pub fn settled(&self, intent: &[NodeId]) -> bool {
        !self.joint
            && self.learners.is_empty()
            && self.voters == intent.iter().copied().collect::<BTreeSet<_>>()
    }
}

/// The busiest and the idlest node of a non-empty count (ties: the higher
/// id is busiest, the lower id idlest).
fn extremes(count: &BTreeMap<u64, usize>) -> ((u64, usize), (u64, usize)) {
    let max = count.iter().max_by_key(|(n, c)| (**c, **n));
    let min = count.iter().min_by_key(|(n, c)| (**c, **n));
    match (max, min) {
        (Some((a, b)), Some((c, d))) => ((*a, *b), (*c, *d)),
        _ => ((0, 0), (0, 0)),
    }
}

/// Preferred leaders spread evenly: each shard's leader is one of its
/// intended replicas' nodes (not draining if it can be helped), each node
/// leads within one of the mean of the nodes that can lead. Keeps a shard's
/// current preference where that stays balanced, so leaders move little.
pub fn spread_leaders(map: &ClusterMap) -> BTreeMap<ShardId, u64> {
    let candidates = |s: ShardId| -> Vec<u64> {
        let all = map.nodes_of(s);
        let active: Vec<u64> = all
            .iter()
            .copied()
            .filter(|n| map.nodes.get(n).is_some_and(|e| !e.draining))
            .collect();
        if active.is_empty() {
            all
        } else {
            active
        }
    };
    let eligible: BTreeSet<u64> = (0..map.shards).flat_map(candidates).collect();
    if eligible.is_empty() {
        return BTreeMap::new();
    }
    let cap = (map.shards as usize).div_ceil(eligible.len());
    let mut count: BTreeMap<u64, usize> = eligible.iter().map(|n| (*n, 0)).collect();
    let mut out = BTreeMap::new();
    // Keep current preferences while under the cap.
    for s in 0..map.shards {
        if let Some(cur) = map.leaders.get(&s) {
            if candidates(s).contains(cur) && count[cur] < cap {
                *count.get_mut(cur).expect("eligible") += 1;
                out.insert(s, *cur);
            }
        }
    }
    for s in 0..map.shards {
        if out.contains_key(&s) {
            continue;
        }
        if let Some(n) = candidates(s).into_iter().min_by_key(|n| (count[n], *n)) {
            *count.get_mut(&n).expect("eligible") += 1;
            out.insert(s, n);
        }
    }
    // Even out: move a shard from the busiest node to the idlest that can
    // lead it, while that narrows the spread.
    for _ in 0..map.shards * 2 {
        let ((max_n, max_c), (min_n, min_c)) = extremes(&count);
        if max_c <= min_c + 1 {
            break;
        }
        let Some(s) = out
            .iter()
            .find(|(s, l)| **l == max_n && candidates(**s).contains(&min_n))
            .map(|(s, _)| *s)
        else {
            break;
        };
        out.insert(s, min_n);
        *count.get_mut(&max_n).expect("eligible") -= 1;
        *count.get_mut(&min_n).expect("eligible") += 1;
    }
    out
}

/// The next placement: `Some((map, moves))` when something should change.
/// Only `settled` shards move, one replica each, and at most `max_moves`
/// shards are unsettled at once (those already moving count). Priorities:
/// replicas on draining or departed nodes, shards short of (or over) the
/// replication factor, then balance (the busiest node gives a replica to the
/// idlest until every node is within one of the others).
pub fn plan(
    map: &ClusterMap,
    settled: &BTreeSet<ShardId>,
    max_moves: usize,
) -> Option<(ClusterMap, usize)> {
    let moving = (0..map.shards).filter(|s| !settled.contains(s)).count();
    let mut budget = max_moves.saturating_sub(moving);
    let mut next = map.clone();
    let active: Vec<u64> = map
        .nodes
        .iter()
        .filter(|(_, e)| !e.draining)
        .map(|(n, _)| *n)
        .collect();
    let rf = map.replication_factor.max(1) as usize;
    let mut load: BTreeMap<u64, usize> = active.iter().map(|n| (*n, 0)).collect();
    for reps in map.placement.values() {
        for r in reps {
            if let Some(c) = load.get_mut(&node_of(*r)) {
                *c += 1;
            }
        }
    }
    let mut touched: BTreeSet<ShardId> = BTreeSet::new();
    let mut moves = 0;
    // Least-loaded active node not already holding the shard.
    let pick = |load: &BTreeMap<u64, usize>, reps: &[NodeId]| -> Option<u64> {
        load.iter()
            .filter(|(n, _)| !reps.iter().any(|r| node_of(*r) == **n))
            .min_by_key(|(n, c)| (**c, **n))
            .map(|(n, _)| *n)
    };
    for s in 0..map.shards {
        if budget == 0 {
            break;
        }
        if !settled.contains(&s) {
            continue;
        }
        let reps = next.placement.get(&s).cloned().unwrap_or_default();
        let gone: Vec<NodeId> = reps
            .iter()
            .copied()
            .filter(|r| !load.contains_key(&node_of(*r)))
            .collect();
        let mut new_reps = reps.clone();
        if reps.len() < rf || (!gone.is_empty() && reps.len() <= rf) {
            // Add one replica (replacing a departing one once it is added).
            let Some(n) = pick(&load, &reps) else {
                continue;
            };
            if let Some(g) = gone.first().filter(|_| reps.len() == rf) {
                new_reps.retain(|r| r != g);
            }
            new_reps.push(replica_id(n, next.next_incarnation));
            next.next_incarnation += 1;
            *load.get_mut(&n).expect("active") += 1;
        } else if reps.len() > rf {
            // Drop one: a departing replica first, else the busiest node's.
            let r = gone.first().copied().or_else(|| {
                reps.iter()
                    .copied()
                    .max_by_key(|r| (load.get(&node_of(*r)).copied().unwrap_or(0), node_of(*r)))
            });
            let Some(r) = r else { continue };
            new_reps.retain(|x| *x != r);
            if let Some(c) = load.get_mut(&node_of(r)) {
                *c -= 1;
            }
        } else {
            continue;
        }
        next.placement.insert(s, new_reps);
        touched.insert(s);
        budget -= 1;
        moves += 1;
    }
    // Balance.
    while budget > 0 && load.len() > 1 {
        let ((max_n, max_c), (min_n, min_c)) = extremes(&load);
        if max_c <= min_c + 1 {
            break;
        }
        let candidate = (0..map.shards).find(|s| {
            settled.contains(s)
                && !touched.contains(s)
                && next.placement.get(s).is_some_and(|reps| {
                    reps.iter().any(|r| node_of(*r) == max_n)
                        && !reps.iter().any(|r| node_of(*r) == min_n)
                })
        });
        let Some(s) = candidate else { break };
        let reps = next.placement.get_mut(&s).expect("found");
        reps.retain(|r| node_of(*r) != max_n);
        reps.push(replica_id(min_n, next.next_incarnation));
        next.next_incarnation += 1;
        *load.get_mut(&max_n).expect("active") -= 1;
        *load.get_mut(&min_n).expect("active") += 1;
        touched.insert(s);
        budget -= 1;
        moves += 1;
    }
    next.leaders = spread_leaders(&next);
    (next != *map).then_some((next, moves))
}

/// Observed membership of each shard, from the reports of its leader (the
/// highest term wins if two claim it).
pub fn observe(reports: &[pb::StatusResponse]) -> BTreeMap<ShardId, Observed> {
    let mut out: BTreeMap<ShardId, Observed> = BTreeMap::new();
    for r in reports {
        for st in &r.shard_status {
            if st.leader != r.node_id || st.replica == 0 {
                continue;
            }
            if out.get(&st.shard_id).is_some_and(|o| o.term >= st.term) {
                continue;
            }
            out.insert(
                st.shard_id,
                Observed {
                    leader: st.leader,
                    term: st.term,
                    voters: st.voter_replicas.iter().copied().collect(),
                    learners: st.learner_replicas.iter().copied().collect(),
                    joint: st.joint,
                },
            );
        }
    }
    out
}

/// Replicas reported by some node that have left their group for good:
/// not in the map's intent, and not in the membership of a settled shard.
/// `(node, shard, replica)`.
pub fn garbage(
    map: &ClusterMap,
    reports: &[pb::StatusResponse],
    observed: &BTreeMap<ShardId, Observed>,
) -> Vec<(u64, ShardId, NodeId)> {
    let mut out = Vec::new();
    for r in reports {
        for st in &r.shard_status {
            let intent = map.placement.get(&st.shard_id).cloned().unwrap_or_default();
            if st.replica == 0 || intent.contains(&st.replica) {
                continue;
            }
            let Some(o) = observed.get(&st.shard_id) else {
                continue;
            };
            if o.settled(&intent)
                && !o.voters.contains(&st.replica)
                && !o.learners.contains(&st.replica)
            {
                out.push((r.node_id, st.shard_id, st.replica));
            }
        }
    }
    out
}

type AdminClient = pb::admin_client::AdminClient<tonic::transport::Channel>;

/// Admin clients of the nodes, by public address.
#[derive(Default)]
struct Clients(HashMap<String, AdminClient>);

impl Clients {
    /// Channels come from the node's connector (every call is bounded by
    /// its caller).
    fn get(&mut self, fd: &FrontDoor, addr: &str) -> Option<AdminClient> {
        if let Some(c) = self.0.get(addr) {
            return Some(c.clone());
        }
        let c = AdminClient::new(fd.peer_channel(addr).ok()?);
        if self.0.len() >= 256 {
            self.0.clear();
        }
        self.0.insert(addr.to_string(), c.clone());
        Some(c)
    }
}

/// One driver pass (on the metadata leader). Returns the moves written.
async fn drive_once(fd: &FrontDoor, opts: &PlacementOptions, clients: &mut Clients) -> usize {
    let (meta_raft, meta_store) = &fd.meta;
    if meta_raft.as_leader().is_err() {
        return 0;
    }
    let Some(map) = fd.map() else { return 0 };
    reconcile_meta(meta_raft, &map).await;

    // Observe every node.
    let calls = map.nodes.iter().filter_map(|(id, e)| {
        let c = clients.get(fd, &e.public)?;
        let id = *id;
        Some(async move {
            let mut c = c;
            let mut req = tonic::Request::new(pb::StatusRequest::default());
            req.set_timeout(opts.call_timeout);
            fd.authorize_own(req.metadata_mut());
            match tokio::time::timeout(opts.call_timeout, c.status(req)).await {
                Ok(Ok(r)) => {
                    fd.heard.insert(id, tokio::time::Instant::now());
                    Some(r.into_inner())
                }
                _ => {
                    tracing::debug!(node = id, "placement: status call failed");
                    None
                }
            }
        })
    });
    let reports: Vec<pb::StatusResponse> = futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect();
    let observed = observe(&reports);
    let settled: BTreeSet<ShardId> = (0..map.shards)
        .filter(|s| {
            let intent = map.placement.get(s).cloned().unwrap_or_default();
            observed.get(s).is_some_and(|o| o.settled(&intent))
        })
        .collect();
    let in_progress = map.shards as usize - settled.len();
    metrics::gauge!("charging_placement_moves_in_progress", "node" => crate::metrics_http::label(fd.node))
        .set(in_progress as f64);

    let mut written = 0;
    if let Some((_, moves)) = plan(&map, &settled, opts.max_moves) {
        let r = crate::control::meta::change(meta_raft, meta_store, &fd.clock, |cur| {
            if cur.version != map.version {
                return Ok(None); // changed under us: plan again next tick
            }
            Ok(plan(cur, &settled, opts.max_moves).map(|(m, _)| m))
        })
        .await;
        match r {
            Ok(v) if v > map.version => {
                written = moves;
                metrics::counter!("charging_placement_moves_total", "node" => crate::metrics_http::label(fd.node))
                    .increment(moves as u64);
                tracing::info!(version = v, moves, "placement changed");
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = ?e, "placement change not written"),
        }
    }
    {
        let mut st = fd.placement.lock().unwrap_or_else(|p| p.into_inner());
        st.moves_in_progress = in_progress as u32;
        st.moves_total += written as u64;
    }

    // Garbage-collect replicas that have left their groups.
    for (node, shard, replica) in garbage(&map, &reports, &observed) {
        let Some(e) = map.nodes.get(&node) else {
            continue;
        };
        let Some(mut c) = clients.get(fd, &e.public) else {
            continue;
        };
        let mut req = tonic::Request::new(pb::DropReplicaRequest {
            shard_id: shard,
            replica,
        });
        req.set_timeout(opts.call_timeout * 5);
        fd.authorize_own(req.metadata_mut());
        let dropped = tokio::time::timeout(opts.call_timeout * 5, c.drop_replica(req))
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::from(Error::DeadlineExceeded(
                    "drop replica".into(),
                )))
            });
        match dropped {
            Ok(_) => tracing::info!(
                node,
                shard,
                replica,
                "told to drop a replica that left its group"
            ),
            Err(s) => tracing::debug!(node, shard, error = %s, "drop replica failed"),
        }
    }
    written
}

/// Keeps every node of the map in the metadata group: a learner at least,
/// so it holds the map; voters move off draining nodes; departed nodes leave.
async fn reconcile_meta(raft: &crate::raft::Raft, map: &ClusterMap) {
    let (voters, learners, log_id, joint, matched, last) = {
        let m = raft.metrics();
        let m = m.borrow_watched();
        let mem = m.membership_config.membership();
        (
            mem.voter_ids().collect::<BTreeSet<NodeId>>(),
            mem.learner_ids().collect::<BTreeSet<NodeId>>(),
            *m.membership_config.log_id(),
            mem.get_joint_config().len() > 1,
            matched_of(&m),
            m.last_log_index.unwrap_or(0),
        )
    };
    let member = |n: u64| replica_id(n, crate::ids::INITIAL_INCARNATION);
    for (n, e) in &map.nodes {
        let r = member(*n);
        if !voters.contains(&r) && !learners.contains(&r) {
            let added = tokio::time::timeout(
                Duration::from_secs(5),
                raft.add_learner(r, BasicNode::new(e.internal.clone()), false),
            )
            .await;
            tracing::info!(
                node = n,
                ok = matches!(added, Ok(Ok(_))),
                "metadata learner added"
            );
            return;
        }
    }
    if joint {
        return;
    }
    let keep = |r: &NodeId| map.nodes.get(&node_of(*r)).is_some_and(|e| !e.draining);
    if voters.iter().all(keep) {
        // Departed learners leave.
        let gone: BTreeSet<NodeId> = learners
            .iter()
            .copied()
            .filter(|r| !map.nodes.contains_key(&node_of(*r)))
            .collect();
        if !gone.is_empty() {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                raft.change_membership(ChangeMembers::RemoveNodes(gone), false),
            )
            .await;
        }
        return;
    }
    // Replace voters on draining / departed nodes with caught-up learners.
    let mut want: BTreeSet<NodeId> = voters.iter().copied().filter(keep).collect();
    let goal = voters.len();
    for r in &learners {
        if want.len() >= goal {
            break;
        }
        let caught_up = matched
            .get(r)
            .is_some_and(|i| last.saturating_sub(*i) <= CAUGHT_UP_LAG);
        if keep(r) && caught_up {
            want.insert(*r);
        }
    }
    if want.len() < goal.min(map.nodes.values().filter(|e| !e.draining).count()) || want.is_empty()
    {
        return; // wait for learners to catch up
    }
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        raft.change_membership_if(
            ChangeMembers::ReplaceAllVoters(want.clone()),
            true,
            [openraft::Precondition::LastMembershipLogId {
                last_membership_log_id: log_id,
            }],
        ),
    )
    .await;
    tracing::info!(voters = ?want, ok = matches!(r, Ok(Ok(_))), "metadata voters moved");
}

fn matched_of(m: &openraft::RaftMetrics<crate::raft::TypeConfig>) -> HashMap<NodeId, u64> {
    m.replication
        .as_ref()
        .map(|r| {
            r.iter()
                .map(|(id, l)| (*id, l.as_ref().map(|l| l.index).unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the driver every `opts.period` until `stop` (acts only while this
/// node leads the metadata group).
pub async fn run_driver(
    fd: Arc<FrontDoor>,
    opts: PlacementOptions,
    mut stop: watch::Receiver<bool>,
) {
    let mut clients = Clients::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(opts.period) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        drive_once(&fd, &opts, &mut clients).await;
    }
}

/// One reconciler step for a shard this node's replica leads.
async fn reconcile_shard(h: &ShardHandle, map: &ClusterMap) {
    let Some(intent) = map.placement.get(&h.shard) else {
        return;
    };
    let (leader, voters, learners, log_id, joint, matched, last) = {
        let m = h.raft.metrics();
        let m = m.borrow_watched();
        let mem = m.membership_config.membership();
        (
            m.current_leader,
            mem.voter_ids().collect::<BTreeSet<NodeId>>(),
            mem.learner_ids().collect::<BTreeSet<NodeId>>(),
            *m.membership_config.log_id(),
            mem.get_joint_config().len() > 1,
            matched_of(&m),
            m.last_log_index.unwrap_or(0),
        )
    };
    if leader != Some(h.replica) || !h.is_deciding() {
        return;
    }
    let want: BTreeSet<NodeId> = intent.iter().copied().collect();
    // 1. New replicas join as learners.
    for r in want.difference(&voters).filter(|r| !learners.contains(r)) {
        let Some(e) = map.nodes.get(&node_of(*r)) else {
            continue;
        };
        let added = tokio::time::timeout(
            Duration::from_secs(5),
            h.raft
                .add_learner(*r, BasicNode::new(e.internal.clone()), false),
        )
        .await;
        tracing::info!(
            shard = h.shard,
            replica = r,
            ok = matches!(added, Ok(Ok(_))),
            "learner added"
        );
    }
    let caught_up = |r: &NodeId| {
        *r == h.replica
            || matched
                .get(r)
                .is_some_and(|i| last.saturating_sub(*i) <= CAUGHT_UP_LAG)
    };
    // 2. A leaving leader hands over first.
    if !want.contains(&h.replica) {
        if let Some(to) = voters.iter().find(|r| want.contains(r) && caught_up(r)) {
            let ok = matches!(
                tokio::time::timeout(
                    Duration::from_secs(5),
                    h.raft.trigger().transfer_leader(*to)
                )
                .await,
                Ok(Ok(_))
            );
            tracing::info!(
                shard = h.shard,
                to = node_of(*to),
                ok,
                "leaving leader hands over"
            );
        }
        return;
    }
    // 3. Joint change to the intent, once every new replica has caught up.
    if (voters != want || joint) && want.iter().all(caught_up) {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            h.raft.change_membership_if(
                ChangeMembers::ReplaceAllVoters(want.clone()),
                false,
                [openraft::Precondition::LastMembershipLogId {
                    last_membership_log_id: log_id,
                }],
            ),
        )
        .await;
        tracing::info!(shard = h.shard, voters = ?want, ok = matches!(r, Ok(Ok(_))), "membership changed");
        return;
    }
    // 4. Learners the map no longer wants leave.
    let stray: BTreeSet<NodeId> = learners.difference(&want).copied().collect();
    if voters == want && !joint && !stray.is_empty() {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            h.raft
                .change_membership(ChangeMembers::RemoveNodes(stray), false),
        )
        .await;
    }
}

/// Runs the reconciler for every shard this node leads, every `opts.period`.
pub async fn run_reconciler(
    _me: u64,
    hosted: Hosted,
    meta: ShardStore,
    opts: PlacementOptions,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(opts.period) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Some(map) = meta.view().state.cluster_map.clone() else {
            continue;
        };
        let shards: Vec<ShardHandle> = hosted.iter().map(|h| h.clone()).collect();
        for h in shards {
            reconcile_shard(&h, &map).await;
        }
    }
}

/// A node started with `join`.
pub struct Joiner {
    pub me: u64,
    pub shards: u32,
    pub addrs: crate::config::PeerAddrs,
    /// Public address of any cluster node to join through.
    pub via: String,
    /// A (lazy) channel to `via`, from the node's connector.
    pub channel: tonic::transport::Channel,
    /// Started with no replica list (new, or its data was lost).
    pub fresh: bool,
    /// The node's own admin token (auth on): joining needs admin rights.
    pub credential: Option<std::sync::Arc<crate::frontdoor::auth::NodeCredential>>,
    /// Its data dir's id (0 = none), recorded in the map (see
    /// `ClusterMap::disks`).
    pub disk_id: u64,
    /// An initial member registering its disk id (not joining): a refusal
    /// (the map knows another disk) stops the node through this.
    pub fatal: Option<watch::Sender<Option<String>>>,
}

/// Asks the cluster (through `j.via`) to add this node, retrying with
/// backoff, and sets `admitted` once the metadata leader has written it into
/// the map (the map itself then arrives by metadata replication). A refusal
/// (a removed id, another shard count, a lost data dir) is final: it is
/// logged and the node stays empty.
pub async fn join(j: Joiner, admitted: watch::Sender<bool>, mut stop: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(200);
    loop {
        {
            let r = async {
                let mut req = tonic::Request::new(pb::AddNodeRequest {
                    node_id: j.me,
                    public_addr: j.addrs.public.clone(),
                    internal_addr: j.addrs.internal.clone(),
                    shards: j.shards,
                    fresh: j.fresh,
                    disk_id: j.disk_id,
                });
                req.set_timeout(Duration::from_secs(10));
                if let Some(c) = &j.credential {
                    c.authorize(req.metadata_mut());
                }
                let mut client = AdminClient::new(j.channel.clone());
                let v = tokio::time::timeout(Duration::from_secs(11), client.add_node(req))
                    .await
                    .map_err(|_| anyhow::anyhow!("AddNode: no answer within 11 s"))??
                    .into_inner()
                    .map_version;
                anyhow::Ok(v)
            }
            .await;
            match r {
                Ok(v) => {
                    tracing::info!(node = j.me, map_version = v, "joined the cluster");
                    let _ = admitted.send(true);
                    return;
                }
                Err(e) => {
                    let refused = e.downcast_ref::<tonic::Status>().is_some_and(|s| {
                        matches!(
                            s.code(),
                            tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument
                        )
                    });
                    if refused {
                        tracing::error!(node = j.me, via = j.via, error = %e, "join refused; not retrying");
                        if let Some(f) = &j.fatal {
                            let why = format!("the cluster refused this node: {e}");
                            f.send_if_modified(|s| {
                                let first = s.is_none();
                                if first {
                                    *s = Some(why);
                                }
                                first
                            });
                        }
                        return;
                    }
                    tracing::warn!(node = j.me, via = j.via, error = %e, "join: retrying");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
