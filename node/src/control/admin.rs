//! The Admin service: cluster status as this node sees it.
use crate::control::meta::{ChangeError, ClusterMap};
use crate::error::Error;
use crate::frontdoor::{FrontDoor, ShardHandle};
use crate::raft::node_of;
use charging_proto::v1 as pb;
use charging_proto::v1::admin_server::Admin;
use openraft::async_runtime::WatchReceiver;
use std::collections::BTreeMap;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The Admin service of a node: its front door, and the most nodes the
/// cluster map may hold (`nodes_max`; `AddNode` refuses past it).
#[derive(Clone)]
pub struct AdminService(pub Arc<FrontDoor>, pub usize);

/// How long the guards of destructive calls wait for each node's status.
const GUARD_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Every node's status (the map's nodes, else the configured ones), this
/// node's included, asked concurrently; a node that does not answer within
/// [`GUARD_CALL_TIMEOUT`] is left out.
async fn all_status(fd: &FrontDoor) -> Vec<pb::StatusResponse> {
    let mut addrs: Vec<String> = match fd.map() {
        Some(m) => m.nodes.values().map(|e| e.public.clone()).collect(),
        None => fd.public_addrs.values().cloned().collect(),
    };
    // This node too, even once the map no longer lists it (removed by
    // force): its replica may still lead its group.
    if let Some(me) = fd.public_addr(fd.node) {
        if !addrs.contains(&me) {
            addrs.push(me);
        }
    }
    let calls = addrs.into_iter().filter_map(|addr| {
        let ch = fd.peer_channel(&addr).ok()?;
        Some(async move {
            let mut c = AdminClient::new(ch);
            let mut req = Request::new(pb::StatusRequest::default());
            req.set_timeout(GUARD_CALL_TIMEOUT);
            match tokio::time::timeout(GUARD_CALL_TIMEOUT, c.status(req)).await {
                Ok(Ok(r)) => Some(r.into_inner()),
                _ => None,
            }
        })
    });
    futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// A shard group's membership as its leader reports it.
struct LeaderView {
    leader: u64,
    term: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    joint: bool,
}

/// Each shard's leader claims (a node reporting itself the leader of its
/// replica) of the highest term reported. Two claims in one term cannot
/// happen; a claim of a lower term is a deposed leader's that has not heard
/// yet, and may never hear: a replica removed from its group while cut off
/// goes on believing it leads the old membership, and its stale view would
/// keep the guard refusing to drop it forever (turmoil seed 2).
fn leader_views(reports: &[pb::StatusResponse]) -> BTreeMap<u32, Vec<LeaderView>> {
    let mut out = all_leader_claims(reports);
    for claims in out.values_mut() {
        let top = claims.iter().map(|v| v.term).max().unwrap_or(0);
        claims.retain(|v| v.term == top);
    }
    out
}

/// Every leader claim reported, per shard.
fn all_leader_claims(reports: &[pb::StatusResponse]) -> BTreeMap<u32, Vec<LeaderView>> {
    let mut out: BTreeMap<u32, Vec<LeaderView>> = BTreeMap::new();
    for r in reports {
        for st in &r.shard_status {
            if st.leader != r.node_id || st.replica == 0 {
                continue;
            }
            out.entry(st.shard_id).or_default().push(LeaderView {
                leader: st.leader,
                term: st.term,
                voters: st.voter_replicas.clone(),
                learners: st.learner_replicas.clone(),
                joint: st.joint,
            });
        }
    }
    out
}

/// Why `replica` of `shard` must not be dropped, if it must not: it is in
/// the group's membership as a leader reports it (voter or learner, either
/// side of a joint change), or a membership change is under way, or no
/// leader answered (the membership cannot be known).
fn drop_refusal(views: Option<&Vec<LeaderView>>, shard: u32, replica: u64) -> Option<Status> {
    let Some(views) = views.filter(|v| !v.is_empty()) else {
        return Some(Status::from(Error::unavailable(format!(
            "no leader of shard {shard} answered; its membership cannot be checked, retry"
        ))));
    };
    for v in views {
        if v.voters.contains(&replica) || v.learners.contains(&replica) {
            return Some(Status::from(Error::FailedPrecondition(format!(
                "replica {replica} is a member of shard {shard}'s group (leader node {}, term {}); \
                 only a replica that has left its group may be dropped",
                v.leader, v.term
            ))));
        }
        if v.joint {
            return Some(Status::from(Error::FailedPrecondition(format!(
                "shard {shard}'s membership is changing (joint configuration); retry once it settles"
            ))));
        }
    }
    None
}

/// Why removing node `id` (with the nodes already removed) would take a
/// majority of some group's voters away, if it would. A shard with no
/// leader answering cannot be checked, and is refused too.
fn majority_refusal(
    shards: u32,
    views: &BTreeMap<u32, Vec<LeaderView>>,
    removed: &std::collections::BTreeSet<u64>,
    id: u64,
) -> Option<String> {
    for shard in 0..shards {
        let Some(vs) = views.get(&shard).filter(|v| !v.is_empty()) else {
            return Some(format!(
                "no leader of shard {shard} answered; cannot check that removing node {id} \
                 leaves its group a majority of voters"
            ));
        };
        for v in vs {
            let gone = |r: &u64| {
                let n = node_of(*r);
                n == id || removed.contains(&n)
            };
            let live = v.voters.iter().filter(|r| !gone(r)).count();
            if live < v.voters.len() / 2 + 1 {
                return Some(format!(
                    "removing node {id} would take away a majority of shard {shard}'s voters \
                     ({live} of {} would be left on nodes still in the cluster)",
                    v.voters.len()
                ));
            }
        }
    }
    None
}

fn reachable(fd: &FrontDoor, id: u64) -> bool {
    // This node, or a peer heard from within the last 3 s (heartbeats go
    // out every 100 ms).
    id == fd.node
        || fd
            .heard
            .get(&id)
            .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(3))
}

/// Every node: from the cluster map (with its placement counts), else from
/// this node's config.
fn nodes(fd: &FrontDoor, map: Option<&ClusterMap>) -> Vec<pb::NodeStatus> {
    let Some(map) = map else {
        return fd
            .public_addrs
            .iter()
            .map(|(id, addr)| pb::NodeStatus {
                node_id: *id,
                public_addr: addr.clone(),
                internal_addr: fd.internal_addrs.get(id).cloned().unwrap_or_default(),
                reachable: reachable(fd, *id),
                ..Default::default()
            })
            .collect();
    };
    map.nodes
        .iter()
        .map(|(id, e)| pb::NodeStatus {
            node_id: *id,
            public_addr: e.public.clone(),
            internal_addr: e.internal.clone(),
            reachable: reachable(fd, *id),
            draining: e.draining,
            replicas: map
                .placement
                .values()
                .filter(|r| r.iter().any(|r| node_of(*r) == *id))
                .count() as u32,
            leaders: map.leaders.values().filter(|n| **n == *id).count() as u32,
            disk_id: map.disks.get(id).copied().unwrap_or(0),
        })
        .collect()
}

/// Membership of a local replica: (leader node, term, voters, learners, joint).
fn membership(h: &ShardHandle) -> (u64, u64, Vec<u64>, Vec<u64>, bool) {
    let m = h.raft.metrics();
    let m = m.borrow_watched();
    let mem = m.membership_config.membership();
    (
        m.current_leader.map(node_of).unwrap_or(0),
        m.current_term,
        mem.voter_ids().collect(),
        mem.learner_ids().collect(),
        mem.get_joint_config().len() > 1,
    )
}

fn not_leader(fd: &FrontDoor, leader: Option<u64>) -> Status {
    Error::Unavailable {
        msg: "not the metadata leader; retry".into(),
        leader: leader.map(|l| (l, fd.public_addr(l))),
    }
    .into()
}

/// Result of a map change attempted here.
enum Changed {
    Done(u64),
    /// Another node leads the metadata group: send the request there.
    Forward(AdminClient),
}

impl AdminService {
    /// Applies a map change on the metadata leader, or names the leader to
    /// forward to (one hop: a forwarded request is never forwarded again).
    async fn change(
        &self,
        forwarded: bool,
        f: impl Fn(&ClusterMap) -> Result<Option<ClusterMap>, String>,
    ) -> Result<Changed, Status> {
        let fd = &self.0;
        let (raft, store) = &fd.meta;
        match crate::control::meta::change(raft, store, &fd.clock, f).await {
            Ok(v) => Ok(Changed::Done(v)),
            Err(ChangeError::Refused(why)) => Err(Status::from(Error::FailedPrecondition(why))),
            Err(ChangeError::Unavailable(why)) => Err(Status::from(Error::unavailable(why))),
            Err(ChangeError::NotLeader(Some(l))) if !forwarded && l != fd.node => {
                let addr = fd.public_addr(l).ok_or_else(|| not_leader(fd, None))?;
                let ch = fd
                    .peer_channel(&addr)
                    .map_err(|e| Status::from(Error::Internal(e.to_string())))?;
                Ok(Changed::Forward(AdminClient::new(ch)))
            }
            Err(ChangeError::NotLeader(l)) => Err(not_leader(fd, l)),
        }
    }
}

/// The request, marked as forwarded.
/// How long a membership change forwarded to the metadata leader may take.
const FORWARD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Bounds a forwarded call (the peer may be gone behind a half-open
/// connection).
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    tokio::time::timeout(FORWARD_DEADLINE, call)
        .await
        .unwrap_or_else(|_| {
            Err(Status::from(Error::unavailable(
                "the metadata leader did not answer in time; retry",
            )))
        })
}

fn marked<M>(m: M) -> Request<M> {
    let mut r = Request::new(m);
    r.set_timeout(FORWARD_DEADLINE);
    r.metadata_mut()
        .insert(crate::frontdoor::FORWARDED, "1".parse().expect("ascii"));
    // The metadata leader checks the caller's token too.
    crate::frontdoor::auth::forward_credentials(r.metadata_mut());
    r
}

/// `ip:port`, `[ipv6]:port` or `hostname:port` (compose and Kubernetes name
/// their nodes).
fn is_host_port(a: &str) -> bool {
    if a.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = a.rsplit_once(':') else {
        return false;
    };
    port.parse::<u16>().is_ok_and(|p| p > 0)
        && !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

fn done(v: u64) -> Result<Response<pb::NodeChangeResponse>, Status> {
    Ok(Response::new(pb::NodeChangeResponse { map_version: v }))
}

type AdminClient = pb::admin_client::AdminClient<tonic::transport::Channel>;

fn node_entry(map: &ClusterMap, id: u64) -> Result<&crate::control::meta::NodeEntry, String> {
    map.nodes
        .get(&id)
        .ok_or_else(|| format!("node {id} is not in the cluster map"))
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn shard_map(
        &self,
        _r: Request<pb::ShardMapRequest>,
    ) -> Result<Response<pb::ShardMapResponse>, Status> {
        let fd = &self.0;
        let map = fd.map();
        let routes = (0..fd.shard_count)
            .map(|shard| {
                let intended_replicas = map
                    .as_ref()
                    .and_then(|m| m.placement.get(&shard).cloned())
                    .unwrap_or_default();
                let intended: Vec<u64> = intended_replicas.iter().map(|r| node_of(*r)).collect();
                let (leader, term, voters, moving) = match fd.local(shard) {
                    Some(h) => {
                        let (leader, term, voters, learners, joint) = membership(&h);
                        let mut v = voters.clone();
                        v.sort_unstable();
                        let mut want = intended_replicas.clone();
                        want.sort_unstable();
                        let moving = joint || !learners.is_empty() || (map.is_some() && v != want);
                        (
                            leader,
                            term,
                            voters.into_iter().map(node_of).collect(),
                            moving,
                        )
                    }
                    // Not hosted here: the last leader seen, else the map's
                    // preferred one (a hint: the client follows redirects).
                    None => (
                        fd.hints
                            .get(&shard)
                            .map(|h| *h)
                            .or_else(|| map.as_ref().and_then(|m| m.leaders.get(&shard).copied()))
                            .unwrap_or(0),
                        0,
                        intended.clone(),
                        false,
                    ),
                };
                pb::ShardRoute {
                    intended,
                    shard_id: shard,
                    leader,
                    leader_addr: fd.public_addr(leader).unwrap_or_default(),
                    term,
                    voters,
                    moving,
                }
            })
            .collect();
        Ok(Response::new(pb::ShardMapResponse {
            version: map.as_ref().map(|m| m.version).unwrap_or(0),
            shards: fd.shard_count,
            routes,
            nodes: nodes(fd, map.as_deref()),
        }))
    }

    async fn status(
        &self,
        r: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let fd = &self.0;
        let with_hash = r.get_ref().with_state_hash;
        // A digest walks every account of every hosted replica: heavy.
        let _permits = if with_hash {
            let (p, h) = fd.admit_heavy("status with state hashes")?;
            (p, Some(h))
        } else {
            (fd.admit()?, None)
        };
        let map = fd.map();
        let mut hosted: Vec<ShardHandle> = fd.hosted.iter().map(|h| h.clone()).collect();
        hosted.sort_by_key(|h| h.shard);
        // One published state per replica: the digest and the index it is at
        // come from the same one.
        let views: Vec<_> = hosted.iter().map(|h| h.store.view()).collect();
        // A digest walks every account of the replica: off the async
        // workers, so the requests they serve do not wait behind it.
        let hashes: Vec<Option<u64>> = if with_hash {
            let views = views.clone();
            tokio::task::spawn_blocking(move || {
                views.iter().map(|v| Some(v.state.state_hash())).collect()
            })
            .await
            .map_err(|e| Status::from(Error::Internal(format!("state digest: {e}"))))?
        } else {
            vec![None; views.len()]
        };
        let mut led_moving = 0;
        let shard_status = hosted
            .iter()
            .zip(views.iter().zip(hashes))
            .map(|(h, (view, state_hash))| {
                let m = h.raft.metrics().borrow_watched().clone();
                let last_log = m.last_log_index.unwrap_or(0);
                let lag = m
                    .replication
                    .as_ref()
                    .map(|r| {
                        r.iter()
                            .map(|(id, matched)| {
                                (
                                    node_of(*id),
                                    last_log.saturating_sub(
                                        matched.as_ref().map(|l| l.index).unwrap_or(0),
                                    ),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let mem = m.membership_config.membership();
                let voter_replicas: Vec<u64> = mem.voter_ids().collect();
                let learner_replicas: Vec<u64> = mem.learner_ids().collect();
                let joint = mem.get_joint_config().len() > 1;
                let intended = map
                    .as_ref()
                    .and_then(|m| m.placement.get(&h.shard).cloned())
                    .unwrap_or_default();
                let leader = m.current_leader.map(node_of).unwrap_or(0);
                if leader == fd.node {
                    let mut v = voter_replicas.clone();
                    v.sort_unstable();
                    let mut want = intended.clone();
                    want.sort_unstable();
                    if joint || !learner_replicas.is_empty() || v != want {
                        led_moving += 1;
                    }
                }
                pb::ShardStatus {
                    shard_id: h.shard,
                    leader,
                    term: m.current_term,
                    applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
                    voters: voter_replicas.iter().map(|r| node_of(*r)).collect(),
                    accounts: view.state.accounts.len() as u64,
                    lag,
                    replica: h.replica,
                    voter_replicas,
                    learner_replicas,
                    joint,
                    intended,
                    state_hash,
                    state_index: view.applied.map(|l| l.index).unwrap_or(0),
                }
            })
            .collect();
        let (raft, _) = &fd.meta;
        let meta_leader = raft
            .metrics()
            .borrow_watched()
            .current_leader
            .map(node_of)
            .unwrap_or(0);
        let driver = fd
            .placement
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok(Response::new(pb::StatusResponse {
            map_version: map.as_ref().map(|m| m.version).unwrap_or(0),
            meta_leader,
            node_id: fd.node,
            shards: fd.shard_count,
            nodes: nodes(fd, map.as_deref()),
            shard_status,
            moves_in_progress: if meta_leader == fd.node {
                driver.moves_in_progress
            } else {
                led_moving
            },
            moves_total: driver.moves_total,
        }))
    }

    async fn add_node(
        &self,
        r: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::NodeChangeResponse>, Status> {
        let forwarded = r.metadata().contains_key(crate::frontdoor::FORWARDED);
        let m = r.into_inner();
        if m.node_id == 0 || m.node_id >= 1 << 31 {
            return Err(Status::from(Error::InvalidArgument(
                "node_id: must be 1..2^31".into(),
            )));
        }
        for (what, a) in [
            ("public_addr", &m.public_addr),
            ("internal_addr", &m.internal_addr),
        ] {
            if !is_host_port(a) {
                return Err(Status::from(Error::InvalidArgument(format!(
                    "{what}: `{a}` is not host:port"
                ))));
            }
        }
        let nodes_max = self.1;
        let changed = self
            .change(forwarded, |map| {
                if map.removed.contains(&m.node_id) {
                    return Err(format!(
                        "node {} was removed; a removed id never rejoins (use a new id)",
                        m.node_id
                    ));
                }
                if m.shards != 0 && m.shards != map.shards {
                    return Err(format!(
                        "node {} is configured with {} shards; the cluster has {}",
                        m.node_id, m.shards, map.shards
                    ));
                }
                let entry = crate::control::meta::NodeEntry {
                    public: m.public_addr.clone(),
                    internal: m.internal_addr.clone(),
                    draining: false,
                };
                let holds = map
                    .placement
                    .values()
                    .filter(|r| r.iter().any(|r| node_of(*r) == m.node_id))
                    .count();
                match map.nodes.get(&m.node_id) {
                    Some(_) if m.fresh => Err(format!(
                        "node {} is already a member (holding {holds} replicas) but started \
                         with an empty data dir: its data was lost, and it must not come back \
                         under its old member ids; remove it (--force) and join under a new id",
                        m.node_id
                    )),
                    Some(e) if e.public == entry.public && e.internal == entry.internal => {
                        match (map.disks.get(&m.node_id), m.disk_id) {
                            (_, 0) => Ok(None),
                            (Some(d), mine) if *d == mine => Ok(None),
                            (Some(d), mine) => Err(format!(
                                "node {} runs on a data dir the cluster does not know (disk id \
                                 {mine:016x}; the map holds {d:016x}): its data was lost or \
                                 swapped, and it must not come back under its old member ids; \
                                 remove it (--force) and join under a new id",
                                m.node_id
                            )),
                            (None, mine) => {
                                let mut next = map.clone();
                                next.disks.insert(m.node_id, mine);
                                Ok(Some(next))
                            }
                        }
                    }
                    Some(_) => Err(format!(
                        "node {} is already in the map with other addresses",
                        m.node_id
                    )),
                    None if map.nodes.len() >= nodes_max => Err(format!(
                        "the cluster map holds {} nodes, the most it may (nodes_max = {nodes_max})",
                        map.nodes.len()
                    )),
                    None => {
                        if let Some((id, _)) = map
                            .nodes
                            .iter()
                            .find(|(_, e)| e.public == entry.public || e.internal == entry.internal)
                        {
                            return Err(format!("node {id} already uses one of these addresses"));
                        }
                        let mut next = map.clone();
                        next.nodes.insert(m.node_id, entry);
                        if m.disk_id != 0 {
                            next.disks.insert(m.node_id, m.disk_id);
                        }
                        Ok(Some(next))
                    }
                }
            })
            .await?;
        match changed {
            Changed::Done(v) => done(v),
            Changed::Forward(mut c) => bounded(c.add_node(marked(m))).await,
        }
    }

    async fn drain_node(
        &self,
        r: Request<pb::NodeRequest>,
    ) -> Result<Response<pb::NodeChangeResponse>, Status> {
        let forwarded = r.metadata().contains_key(crate::frontdoor::FORWARDED);
        let m = r.into_inner();
        let id = m.node_id;
        let changed = self
            .change(forwarded, |map| {
                let e = node_entry(map, id)?;
                if e.draining {
                    return Ok(None);
                }
                let active = map.nodes.values().filter(|e| !e.draining).count();
                if active <= map.replication_factor as usize {
                    return Err(format!(
                        "draining node {id} would leave {} active nodes, fewer than the replication factor {}",
                        active - 1,
                        map.replication_factor
                    ));
                }
                let mut next = map.clone();
                next.nodes.get_mut(&id).expect("checked").draining = true;
                next.leaders = crate::control::placement::spread_leaders(&next);
                Ok(Some(next))
            })
            .await?;
        match changed {
            Changed::Done(v) => done(v),
            Changed::Forward(mut c) => bounded(c.drain_node(marked(m))).await,
        }
    }

    async fn remove_node(
        &self,
        r: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::NodeChangeResponse>, Status> {
        let forwarded = r.metadata().contains_key(crate::frontdoor::FORWARDED);
        let m = r.into_inner();
        let (id, force) = (m.node_id, m.force);
        // A forced removal takes the node's replicas out of the intent
        // while they are still voters: what each group's leader reports
        // decides whether the rest keep a majority.
        let views = if force {
            Some(leader_views(&all_status(&self.0).await))
        } else {
            None
        };
        let changed = self
            .change(forwarded, |map| {
                if map.removed.contains(&id) {
                    return Ok(None);
                }
                node_entry(map, id)?;
                let holds = map
                    .placement
                    .values()
                    .filter(|r| r.iter().any(|r| node_of(*r) == id))
                    .count();
                if holds > 0 && !force {
                    return Err(format!(
                        "node {id} still holds {holds} shard replicas; drain it first (or force)"
                    ));
                }
                if map.nodes.len() <= map.replication_factor as usize {
                    return Err(format!(
                        "removing node {id} would leave fewer nodes than the replication factor {}",
                        map.replication_factor
                    ));
                }
                if let Some(views) = views.as_ref().filter(|_| holds > 0) {
                    if let Some(why) = majority_refusal(map.shards, views, &map.removed, id) {
                        return Err(why);
                    }
                }
                let mut next = map.clone();
                next.nodes.remove(&id);
                next.disks.remove(&id);
                next.removed.insert(id);
                // Forced: its replicas leave the intent; the driver replaces them.
                for reps in next.placement.values_mut() {
                    reps.retain(|r| node_of(*r) != id);
                }
                next.leaders = crate::control::placement::spread_leaders(&next);
                Ok(Some(next))
            })
            .await?;
        match changed {
            Changed::Done(v) => done(v),
            Changed::Forward(mut c) => bounded(c.remove_node(marked(m))).await,
        }
    }

    async fn drop_replica(
        &self,
        r: Request<pb::DropReplicaRequest>,
    ) -> Result<Response<pb::DropReplicaResponse>, Status> {
        let fd = &self.0;
        let m = r.into_inner();
        if fd.local(m.shard_id).is_none_or(|h| h.replica != m.replica) {
            return Ok(Response::new(pb::DropReplicaResponse { dropped: false }));
        }
        if fd.map().is_some_and(|map| {
            map.placement
                .get(&m.shard_id)
                .is_some_and(|r| r.contains(&m.replica))
        }) {
            return Err(Status::from(Error::FailedPrecondition(format!(
                "the cluster map still places replica {} of shard {} here",
                m.replica, m.shard_id
            ))));
        }
        // The map is intent; the group's membership is the authority on who
        // replicates it (ask its leader, not the map).
        let views = leader_views(&all_status(fd).await);
        if let Some(refused) = drop_refusal(views.get(&m.shard_id), m.shard_id, m.replica) {
            return Err(refused);
        }
        let dropped = fd
            .replicas
            .drop_replica(m.shard_id, m.replica)
            .await
            .map_err(|e| Status::from(Error::Internal(e.to_string())))?;
        Ok(Response::new(pb::DropReplicaResponse { dropped }))
    }
}

#[cfg(test)]
mod tests {
    use super::{drop_refusal, is_host_port, leader_views, majority_refusal, LeaderView};
    use charging_proto::v1 as pb;

    /// A stale leader (deposed while cut off, its replica since removed from
    /// the group) does not hold the guard: the highest term's leader decides.
    #[test]
    fn a_deposed_leaders_claim_does_not_block_dropping_its_replica() {
        let (r1, r2, r3, r4) = (
            replica_id(1, 1),
            replica_id(2, 1),
            replica_id(3, 1),
            replica_id(4, 1),
        );
        let report = |node: u64, term: u64, voters: Vec<u64>, replica: u64| pb::StatusResponse {
            node_id: node,
            shard_status: vec![pb::ShardStatus {
                shard_id: 1,
                leader: node,
                term,
                voter_replicas: voters,
                replica,
                ..Default::default()
            }],
            ..Default::default()
        };
        let reports = vec![
            report(2, 2, vec![r1, r2, r3], r2),
            report(4, 6, vec![r1, r3, r4], r4),
        ];
        let views = leader_views(&reports);
        assert_eq!(views[&1].len(), 1);
        assert_eq!(views[&1][0].term, 6);
        assert!(drop_refusal(views.get(&1), 1, r2).is_none());
        assert!(drop_refusal(views.get(&1), 1, r3).is_some());
    }
    use crate::raft::replica_id;
    use std::collections::{BTreeMap, BTreeSet};

    fn view(voters: &[u64], learners: &[u64], joint: bool) -> LeaderView {
        LeaderView {
            leader: 1,
            term: 3,
            voters: voters.iter().map(|n| replica_id(*n, 1)).collect(),
            learners: learners.iter().map(|n| replica_id(*n, 1)).collect(),
            joint,
        }
    }

    #[test]
    fn a_replica_is_dropped_only_once_no_leader_counts_it() {
        let r3 = replica_id(3, 1);
        let code = |v: Option<&Vec<LeaderView>>| drop_refusal(v, 0, r3).map(|s| s.code());
        assert_eq!(code(None), Some(tonic::Code::Unavailable));
        assert_eq!(code(Some(&vec![])), Some(tonic::Code::Unavailable));
        assert_eq!(
            code(Some(&vec![view(&[1, 2, 3], &[], false)])),
            Some(tonic::Code::FailedPrecondition)
        );
        assert_eq!(
            code(Some(&vec![view(&[1, 2, 4], &[3], false)])),
            Some(tonic::Code::FailedPrecondition),
            "a learner is a member"
        );
        assert_eq!(
            code(Some(&vec![view(&[1, 2, 4], &[], true)])),
            Some(tonic::Code::FailedPrecondition),
            "mid-change"
        );
        // Two claims (a deposed leader not yet told): both must agree.
        assert_eq!(
            code(Some(&vec![
                view(&[1, 2, 4], &[], false),
                view(&[1, 2, 3], &[], false)
            ])),
            Some(tonic::Code::FailedPrecondition)
        );
        assert_eq!(code(Some(&vec![view(&[1, 2, 4], &[], false)])), None);
    }

    #[test]
    fn a_forced_removal_keeps_every_group_a_majority() {
        let views: BTreeMap<u32, Vec<LeaderView>> = [
            (0, vec![view(&[1, 2, 3], &[], false)]),
            (1, vec![view(&[2, 3, 4, 5, 6], &[], false)]),
        ]
        .into_iter()
        .collect();
        let none = BTreeSet::new();
        assert!(
            majority_refusal(2, &views, &none, 3).is_none(),
            "2 of 3 left"
        );
        let removed: BTreeSet<u64> = [2].into();
        let why = majority_refusal(2, &views, &removed, 3).expect("1 of 3 left");
        assert!(why.contains("shard 0"), "{why}");
        // Shard 1 keeps 3 of 5 without 2 and 3, loses it without 4 as well.
        let views1: BTreeMap<u32, Vec<LeaderView>> =
            [(0, vec![view(&[2, 3, 4, 5, 6], &[], false)])].into();
        assert!(majority_refusal(1, &views1, &removed, 3).is_none());
        let removed: BTreeSet<u64> = [2, 4].into();
        assert!(majority_refusal(1, &views1, &removed, 3).is_some());
        // A shard no leader reported on cannot be checked: refused.
        assert!(majority_refusal(3, &views, &none, 3).is_some());
    }

    #[test]
    fn node_addresses_may_be_names_or_ips() {
        for ok in [
            "127.0.0.1:50051",
            "[::1]:7000",
            "node4:50051",
            "n1.svc.local:5000",
        ] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in [
            "",
            "node4",
            "node4:",
            ":5000",
            "node4:0",
            "node4:99999",
            "a b:1",
            "x..y:1",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }
}
