//! The gRPC front door: validates, routes each request to its shard, and
//! answers after the shard actor does.
//!
//! Routing: `shard = fnv1a64(account_id bytes) mod shards` ([`shard_of`]). When
//! this node's replica leads the shard, the request goes to the local shard
//! actor; otherwise it is forwarded one hop to the leader's front door (marked
//! with `x-charging-forwarded` so it never hops twice). When no leader is
//! known, or a forwarded request lands on a non-leader, the caller gets
//! `UNAVAILABLE` with the leader hint in metadata (`x-leader-node`,
//! `x-leader-addr`) and retries with the same request id.
//!
//! Admission: at most `max_inflight_requests` requests are in the node at
//! once, on every path (unary, stream operations, bulk creation, tariffs,
//! status); beyond that, `RESOURCE_EXHAUSTED` at once rather than a queue.
//! Calls whose cost grows with their size (BulkCreate, SetTariff, Status
//! with digests) also take one of `heavy_requests_inflight_max` permits, and
//! stream messages being worked on hold `stream_bytes_inflight_max` bytes.
use crate::cluster_map::ClusterMap;
pub use crate::config::FrontDoorLimits;
use crate::error::Error;
use crate::ledger::{AccountId, Rejection, Reply, Request};
use crate::maps::DashMap;
use crate::raft::state_machine::ShardStore;
use crate::raft::{NodeId, Raft, ShardId};
pub use crate::shard::{Hosted, ShardHandle};
use crate::shard::{Outcome, ShardMsg};
use charging_proto::v1 as pb;
use charging_proto::v1::charging_client::ChargingClient;
use metrics::{counter, histogram};
use openraft::ReadPolicy;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Request as TReq, Status};

pub mod auth;
mod convert;
mod service;
pub mod validate;

pub use convert::{rejection_of, result_code};
pub use service::ChargingService as ChargingServiceHandle;

/// Metadata keys, defined once with the API (see [`charging_proto::headers`]).
pub use charging_proto::headers::{FORWARDED, LEADER_NODE, ONLY_SHARD};

/// What the front door needs of the replica set (object-safe), implemented
/// by the control plane's `ReplicaSet`.
pub trait ReplicaControl: Send + Sync {
    /// Drops this node's replica `replica` of `shard`, if hosted.
    fn drop_replica(
        &self,
        shard: ShardId,
        replica: NodeId,
    ) -> futures::future::BoxFuture<'_, Result<bool, String>>;
}

/// The fixed, documented account → shard hash: FNV-1a 64 over the id bytes.
pub use charging_proto::{fnv1a64, shard_of};

pub struct FrontDoor {
    pub node: NodeId,
    /// Logical shards of the cluster (fixed at creation).
    pub shard_count: u32,
    /// The shard replicas this node hosts now.
    pub hosted: Hosted,
    pub replicas: Arc<dyn ReplicaControl>,
    /// Addresses from this node's config; the cluster map's win (see
    /// [`FrontDoor::public_addr`]).
    pub public_addrs: BTreeMap<NodeId, String>,
    pub internal_addrs: BTreeMap<NodeId, String>,
    /// This node's replica of the metadata group (the replicated shard map).
    pub meta: (Raft, ShardStore),
    /// Last leader seen for shards this node does not host.
    pub hints: DashMap<ShardId, NodeId>,
    /// When a Raft message last came from each peer (status: reachable).
    pub heard: crate::raft::service::PeerHealth,
    /// What the placement driver last saw (meaningful on the metadata leader).
    pub placement: std::sync::Mutex<crate::cluster_map::DriverStatus>,
    pub limits: FrontDoorLimits,
    pub clock: crate::clock::SharedClock,
    /// The ledger's clock bound (`clock_bound_ms`): how far in the future a
    /// request id may be dated.
    clock_bound_ms: u64,
    admission: Semaphore,
    /// Heavy calls in the node (see [`FrontDoor::admit_heavy`]).
    heavy: Semaphore,
    /// Bytes of stream messages being worked on (in KiB, rounded up).
    stream_kib: Arc<Semaphore>,
    /// The node's injected connector (DESIGN §4b): forwarding channels are
    /// made by it, like Raft channels, so the simulator's network carries them.
    transport: std::sync::OnceLock<Arc<crate::raft::network::Peers>>,
    forward: DashMap<NodeId, ChargingClient<Channel>>,
    /// Shared string: labelling a request's metrics copies no bytes.
    node_label: metrics::SharedString,
    /// The token of this node's own calls to other nodes (auth on).
    own_credential: std::sync::OnceLock<Arc<auth::NodeCredential>>,
}

/// Where a request went.
enum Routed {
    Local(Outcome),
    Remote(Option<NodeId>),
}

/// The leader hint (`x-leader-node`) a status carries, if any.
fn hint_of(s: &Status) -> Option<NodeId> {
    s.metadata().get(LEADER_NODE)?.to_str().ok()?.parse().ok()
}

impl FrontDoor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: NodeId,
        shard_count: u32,
        hosted: Hosted,
        replicas: Arc<dyn ReplicaControl>,
        public_addrs: BTreeMap<NodeId, String>,
        internal_addrs: BTreeMap<NodeId, String>,
        meta: (Raft, ShardStore),
        limits: FrontDoorLimits,
        clock: crate::clock::SharedClock,
    ) -> Arc<Self> {
        let clock_bound_ms = meta.1.read(|s| s.limits.clock_bound_ms);
        Arc::new(FrontDoor {
            clock_bound_ms,
            node,
            shard_count,
            hosted,
            replicas,
            public_addrs,
            internal_addrs,
            meta,
            hints: DashMap::default(),
            heard: Default::default(),
            placement: Default::default(),
            admission: Semaphore::new(limits.max_inflight_requests),
            heavy: Semaphore::new(limits.heavy_requests_inflight_max),
            stream_kib: Arc::new(Semaphore::new(
                limits.stream_bytes_inflight_max.div_ceil(1024),
            )),
            transport: std::sync::OnceLock::new(),
            limits,
            clock,
            forward: DashMap::default(),
            node_label: crate::metrics_http::label(node),
            own_credential: std::sync::OnceLock::new(),
        })
    }

    /// Sets the transport whose connector makes forwarding channels.
    pub fn set_transport(&self, peers: Arc<crate::raft::network::Peers>) {
        let _ = self.transport.set(peers);
    }

    /// Sets the credential of this node's own calls (auth on).
    pub fn set_own_credential(&self, c: Arc<auth::NodeCredential>) {
        let _ = self.own_credential.set(c);
    }

    /// Marks a call this node makes on its own behalf (not a caller's):
    /// its own admin token when auth is on.
    pub fn authorize_own(&self, md: &mut tonic::metadata::MetadataMap) {
        if let Some(c) = self.own_credential.get() {
            c.authorize(md);
        }
    }

    /// The current cluster map, if one was written.
    pub fn map(&self) -> Option<Arc<ClusterMap>> {
        self.meta.1.view().state.cluster_map.clone()
    }

    /// Public address of a node: from the cluster map, else from the config.
    pub fn public_addr(&self, node: NodeId) -> Option<String> {
        if let Some(e) = self.map().and_then(|m| m.nodes.get(&node).cloned()) {
            return Some(e.public);
        }
        self.public_addrs.get(&node).cloned()
    }

    pub fn shard_id(&self, account: &AccountId) -> ShardId {
        shard_of(&account.0, self.shard_count)
    }

    /// This node's replica of `shard`, if it hosts one.
    pub fn local(&self, shard: ShardId) -> Option<ShardHandle> {
        self.hosted.get(&shard).map(|h| h.clone())
    }

    /// Whether `node` was heard from lately (Raft traffic, answers).
    fn reachable(&self, node: NodeId) -> bool {
        self.heard
            .get(&node)
            .is_some_and(|t| t.elapsed() < Duration::from_secs(3))
    }

    /// Where to send a request for `shard` that this node cannot serve, best
    /// first: the leader a local replica names, the last leader seen, the
    /// map's preferred leader, then every node the map places the shard on;
    /// nodes heard from lately before the others (a dead node's connection
    /// would eat the caller's deadline).
    fn candidates(&self, shard: ShardId, leader: Option<NodeId>) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = Vec::with_capacity(6);
        v.extend(leader);
        v.extend(self.hints.get(&shard).map(|h| *h));
        if let Some(map) = self.map() {
            v.extend(map.leaders.get(&shard).copied());
            v.extend(map.nodes_of(shard));
        }
        let mut out: Vec<NodeId> = Vec::with_capacity(v.len());
        for n in v {
            if n != self.node && !out.contains(&n) {
                out.push(n);
            }
        }
        out.sort_by_key(|n| !self.reachable(*n)); // stable: order kept within each group
        out
    }

    fn overloaded() -> Status {
        Status::from(Error::Overloaded(
            "node at its in-flight request limit; back off and retry".into(),
        ))
    }

    /// One admission permit (`max_inflight_requests`), or `RESOURCE_EXHAUSTED`.
    pub fn admit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, Status> {
        self.admission.try_acquire().map_err(|_| Self::overloaded())
    }

    /// Admission of a heavy call: an ordinary permit and one of
    /// `heavy_requests_inflight_max`, or `RESOURCE_EXHAUSTED`.
    pub fn admit_heavy(
        &self,
        what: &str,
    ) -> Result<
        (
            tokio::sync::SemaphorePermit<'_>,
            tokio::sync::SemaphorePermit<'_>,
        ),
        Status,
    > {
        let p = self.admit()?;
        let h = self.heavy.try_acquire().map_err(|_| {
            Status::from(Error::Overloaded(format!(
                "{what}: node at its limit of heavy calls in flight; back off and retry"
            )))
        })?;
        Ok((p, h))
    }

    /// Holds `bytes` of the node's stream budget (`stream_bytes_inflight_max`)
    /// while a stream message is worked on; `None`: over budget.
    pub fn admit_stream_bytes(&self, bytes: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).ok()?;
        self.stream_kib.clone().try_acquire_many_owned(kib).ok()
    }

    /// Refuses a request id dated further in the future than the clock bound
    /// (DESIGN §3): dedup entries live by log time, so a future-dated id
    /// retried after the dedup window would be applied twice.
    pub fn check_request_time(&self, rid: crate::ledger::RequestId) -> Result<(), Status> {
        validate::not_future(rid, self.clock.now_ms(), self.clock_bound_ms, "request_id")
    }

    /// Sends one request to its local shard actor and waits (bounded) for
    /// the outcome. The caller holds an admission permit.
    async fn submit(&self, shard: ShardId, req: Request) -> Result<Routed, Status> {
        let Some(handle) = self.hosted.get(&shard).map(|h| h.actor.clone()) else {
            return Ok(Routed::Remote(None));
        };
        let (tx, rx) = oneshot::channel();
        handle
            .cast(ShardMsg::Request { req, reply: tx })
            .map_err(|_| Status::from(Error::unavailable("shard actor stopped")))?;
        let outcome = match tokio::time::timeout(self.limits.request_deadline, rx).await {
            Err(_) => Outcome::Unknown("deadline exceeded waiting for the shard"),
            Ok(Err(_)) => Outcome::Unknown("shard actor dropped the request"),
            Ok(Ok(o)) => o,
        };
        Ok(match outcome {
            Outcome::NotLeader { leader } if leader != Some(self.node) => Routed::Remote(leader),
            Outcome::NotLeader { .. } => Routed::Local(Outcome::Unknown("leader is changing")),
            o => Routed::Local(o),
        })
    }

    /// The stream path's [`FrontDoor::submit`]: a batch's requests for one
    /// local shard go to its actor as one message and share one sink, one
    /// admission check and one deadline. `None`: no local replica (forward).
    async fn submit_batch(&self, shard: ShardId, reqs: Vec<Request>) -> Option<Vec<Outcome>> {
        let actor = self.hosted.get(&shard).map(|h| h.actor.clone())?;
        let n = reqs.len();
        // As on the unary path, each request takes a permit or is refused:
        // the first `admitted` go in, the rest hear "overloaded" (all or
        // nothing would refuse forever a batch larger than the whole limit).
        let mut admitted = n.min(self.admission.available_permits());
        let _permits = match self.admission.try_acquire_many(admitted as u32) {
            Ok(p) => Some(p),
            Err(_) => {
                admitted = 0;
                None
            }
        };
        let (sink, done) = crate::shard::BatchSink::new(admitted);
        let reqs = reqs
            .into_iter()
            .take(admitted)
            .enumerate()
            .map(|(i, r)| (r, sink.slot(i)))
            .collect();
        if admitted > 0 {
            // A refused cast drops the message, and each dropped slot
            // answers itself `Unknown`.
            let _ = actor.cast(ShardMsg::Requests { reqs });
            let _ = tokio::time::timeout(self.limits.request_deadline, done).await;
        }
        let mut out: Vec<Outcome> = sink
            .take()
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Unknown("deadline exceeded waiting for the shard")))
            .collect();
        out.resize(
            n,
            Outcome::Overloaded("node at its in-flight request limit; back off and retry"),
        );
        Some(out)
    }

    fn unavailable(&self, leader: Option<NodeId>, msg: &str) -> Status {
        Error::Unavailable {
            msg: format!("{msg}; retry with the same request id"),
            leader: leader.map(|l| (l, self.public_addr(l))),
        }
        .into()
    }

    /// The caller's view of a failed forward. A forward that timed out or
    /// broke off has an unknown outcome (the leader may have applied it):
    /// that is `UNAVAILABLE`, retryable with the same request id, never the
    /// hop's own `CANCELLED` / `DEADLINE_EXCEEDED`. Other statuses (invalid
    /// argument, overload, the leader's own `UNAVAILABLE`) pass through.
    fn forward_failed(&self, leader: NodeId, s: Status) -> Status {
        match s.code() {
            Code::Cancelled | Code::DeadlineExceeded | Code::Unknown => self.unavailable(
                Some(leader),
                &format!("forward to node {leader} failed ({})", s.message()),
            ),
            _ if broke_off(&s) => self.unavailable(
                Some(leader),
                &format!("forward to node {leader} failed ({})", s.message()),
            ),
            _ => s,
        }
    }

    /// A lazy channel to another node's public address: over the injected
    /// connector once the transport is set (DESIGN §4b: the simulator's
    /// network carries every node-to-node call), else plain TCP. Callers
    /// bound each call with their own deadline.
    pub fn peer_channel(&self, addr: &str) -> Result<Channel, String> {
        match self.transport.get() {
            Some(t) => t.channel(addr),
            None => Ok(
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| e.to_string())?
                    .connect_timeout(Duration::from_millis(500))
                    .tcp_nodelay(true)
                    .connect_lazy(),
            ),
        }
    }

    fn forward_client(&self, leader: NodeId) -> Result<ChargingClient<Channel>, Status> {
        if let Some(c) = self.forward.get(&leader) {
            return Ok(c.clone());
        }
        let addr = self
            .public_addr(leader)
            .ok_or_else(|| self.unavailable(None, "leader address unknown"))?;
        if self.forward.len() >= self.limits.max_forward_peers {
            self.forward.clear();
        }
        let ch = self
            .peer_channel(&addr)
            .map_err(|e| Status::from(Error::Internal(e.to_string())))?;
        let c = ChargingClient::new(ch);
        self.forward.insert(leader, c.clone());
        Ok(c)
    }

    fn record(&self, op: &'static str, result: &'static str, started: Instant) {
        counter!("charging_requests_total", "node" => self.node_label.clone(), "op" => op, "result" => result)
            .increment(1);
        histogram!("charging_request_seconds", "node" => self.node_label.clone(), "op" => op)
            .record(started.elapsed().as_secs_f64());
    }

    /// Maps an outcome to the response (business results) or a status.
    fn finish<T>(
        &self,
        op: &'static str,
        started: Instant,
        outcome: Outcome,
        to_resp: impl FnOnce(Result<Reply, Rejection>) -> T,
    ) -> Result<T, Status> {
        match outcome {
            Outcome::Done(r) => {
                self.record(
                    op,
                    if r.is_ok() {
                        "ok"
                    } else {
                        convert::rejection_label(r.as_ref().err())
                    },
                    started,
                );
                Ok(to_resp(r))
            }
            Outcome::Unknown(why) => {
                self.record(op, "unknown", started);
                Err(self.unavailable(None, why))
            }
            Outcome::Overloaded(why) => {
                self.record(op, "overloaded", started);
                Err(Status::from(Error::Overloaded(why.into())))
            }
            Outcome::NotLeader { leader } => {
                self.record(op, "not_leader", started);
                Err(self.unavailable(leader, "not the shard leader"))
            }
        }
    }

    /// Forwards `msg` for `shard` to the best of `candidates` (marked, so
    /// it never hops on). Tries at most three: when a target answers
    /// `UNAVAILABLE` naming another leader, that one next; when it cannot be
    /// reached, the next candidate. The request id makes every retry safe.
    async fn forward_to<M, R, F, Fut>(
        &self,
        shard: ShardId,
        candidates: Vec<NodeId>,
        msg: M,
        only_shard: bool,
        timeout: Duration,
        call: F,
    ) -> Result<R, Status>
    where
        M: Clone,
        F: Fn(ChargingClient<Channel>, TReq<M>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let mut queue: std::collections::VecDeque<NodeId> = candidates.into();
        let mut tried: Vec<NodeId> = Vec::with_capacity(3);
        let mut last = None;
        while let Some(target) = queue.pop_front() {
            if tried.len() == 3 {
                break;
            }
            if tried.contains(&target) {
                continue;
            }
            tried.push(target);
            let c = self.forward_client(target)?;
            let mut req = TReq::new(msg.clone());
            req.metadata_mut()
                .insert(FORWARDED, "1".parse().expect("ascii"));
            // The owner checks the caller's token too (see `auth`).
            auth::forward_credentials(req.metadata_mut());
            if only_shard {
                req.metadata_mut()
                    .insert(ONLY_SHARD, shard.to_string().parse().expect("ascii"));
            }
            req.set_timeout(timeout);
            match call(c, req).await {
                Ok(r) => {
                    if !self.hosted.contains_key(&shard) {
                        self.hints.insert(shard, target);
                    }
                    return Ok(r.into_inner());
                }
                Err(s) => {
                    let unreachable = matches!(
                        s.code(),
                        Code::Cancelled | Code::DeadlineExceeded | Code::Unknown
                    ) || broke_off(&s)
                        || (s.code() == Code::Unavailable && hint_of(&s).is_none());
                    if let Some(h) = hint_of(&s).filter(|h| *h != target && *h != self.node) {
                        self.hints.insert(shard, h);
                        if s.code() == Code::Unavailable {
                            queue.push_front(h);
                        }
                    } else if unreachable {
                        self.hints.remove_if(&shard, |_, h| *h == target);
                        self.forward.remove(&target);
                    } else {
                        return Err(self.forward_failed(target, s));
                    }
                    last = Some((target, s));
                }
            }
        }
        Err(match last {
            Some((target, s)) => self.forward_failed(target, s),
            None => self.unavailable(None, "no node known to serve this shard"),
        })
    }

    /// Balance: a linearizable read of the applied state (read index first),
    /// in place under the state machine's lock (at most one entry's apply is
    /// waited for), never of speculative state.
    pub async fn balance(
        &self,
        msg: pb::BalanceRequest,
        forwarded: bool,
    ) -> Result<pb::BalanceResponse, Status> {
        let started = Instant::now();
        let account = validate::account_id(&msg.account_id)?;
        let _permit = self.admit()?;
        let shard = self.shard_id(&account);
        let mut leader = None;
        if let Some(h) = self.local(shard) {
            match h.raft.as_leader() {
                Ok(_) => {
                    let read = tokio::time::timeout(
                        self.limits.request_deadline,
                        h.raft.ensure_linearizable(ReadPolicy::ReadIndex),
                    )
                    .await;
                    if !matches!(read, Ok(Ok(_))) {
                        self.record("balance", "unknown", started);
                        return Err(self.unavailable(None, "read index not confirmed"));
                    }
                    let balance = h
                        .store
                        .read_at(|s, ts| s.account(&account).map(|a| a.view(ts)));
                    self.record("balance", "ok", started);
                    return Ok(convert::balance(balance));
                }
                Err(fwd) => leader = fwd.leader_id.map(crate::raft::node_of),
            }
        }
        let candidates = self.candidates(shard, leader);
        if forwarded || candidates.is_empty() {
            return Err(self.unavailable(candidates.first().copied(), "not the shard leader"));
        }
        self.forward_to(
            shard,
            candidates,
            msg,
            false,
            self.limits.request_deadline,
            |mut c, req| async move { c.balance(req).await },
        )
        .await
    }

    /// Sets a tariff on every shard (or only `only` when forwarded for one shard).
    pub async fn set_tariff(
        &self,
        msg: pb::SetTariffRequest,
        only: Option<ShardId>,
    ) -> Result<pb::SetTariffResponse, Status> {
        let (request_id, tariff) = validate::tariff(&msg)?;
        self.check_request_time(request_id)?;
        let _permits = self.admit_heavy("set_tariff")?;
        let mut version = 0;
        for shard in 0..self.shard_count {
            if only.is_some_and(|s| s != shard) {
                continue;
            }
            let outcome = match self.local(shard) {
                Some(h) => {
                    let (tx, rx) = oneshot::channel();
                    h.actor
                        .cast(ShardMsg::SetTariff {
                            tariff: tariff.clone(),
                            request_id,
                            reply: tx,
                        })
                        .map_err(|_| Status::from(Error::unavailable("shard actor stopped")))?;
                    tokio::time::timeout(self.limits.request_deadline, rx)
                        .await
                        .map_err(|_| self.unavailable(None, "deadline exceeded setting tariff"))?
                        .map_err(|_| self.unavailable(None, "shard actor dropped the request"))?
                }
                None => Outcome::NotLeader { leader: None },
            };
            match outcome {
                Outcome::Done(Ok(reply)) => {
                    if let crate::ledger::Reply::TariffSet { version: v } = reply {
                        version = version.max(v);
                    }
                }
                Outcome::NotLeader { leader } if only.is_none() => {
                    let candidates = self.candidates(shard, leader);
                    let r = self
                        .forward_to(
                            shard,
                            candidates,
                            msg.clone(),
                            true,
                            self.limits.request_deadline,
                            |mut c, req| async move { c.set_tariff(req).await },
                        )
                        .await?;
                    if r.result != pb::ResultCode::Ok as i32 {
                        return Ok(r);
                    }
                    version = version.max(r.version);
                }
                Outcome::NotLeader { leader } => {
                    return Err(self.unavailable(leader, "not the shard leader"))
                }
                Outcome::Unknown(w) => return Err(self.unavailable(None, w)),
                Outcome::Overloaded(w) => return Err(Status::from(Error::Overloaded(w.into()))),
                // A business rejection (request id reused with another
                // tariff, request too old) is a result code, as elsewhere.
                Outcome::Done(Err(r)) => {
                    return Ok(pb::SetTariffResponse {
                        result: result_code(r) as i32,
                        version: 0,
                    })
                }
            }
        }
        Ok(pb::SetTariffResponse {
            result: pb::ResultCode::Ok as i32,
            version,
        })
    }
}

/// A mutating account operation as the front door sees it: how its
/// message becomes a ledger request, how the ledger's answer becomes its
/// response, and how it is forwarded. One impl per `decide` row of the
/// operation table ([`charging_proto::charging_ops!`]).
pub trait Mutation: Clone + Send + Sync + 'static {
    type Response;
    /// The operation's name, as metrics label it.
    const NAME: &'static str;
    /// Validates the message (`INVALID_ARGUMENT` naming the field).
    fn request(&self) -> Result<Request, Status>;
    /// The response to a decision: its result code and payload.
    fn response(r: Result<Reply, Rejection>) -> Self::Response;
    /// The same call on another node's front door (forwarding).
    fn call(
        c: ChargingClient<Channel>,
        req: TReq<Self>,
    ) -> futures::future::BoxFuture<'static, Result<tonic::Response<Self::Response>, Status>>;
}

impl FrontDoor {
    /// One mutating operation: validate → submit to the shard → map the
    /// outcome, or forward one hop.
    pub async fn mutate<M: Mutation>(
        &self,
        msg: M,
        forwarded: bool,
    ) -> Result<M::Response, Status> {
        let started = Instant::now();
        let req = msg.request()?;
        self.check_request_time(req.request_id)?;
        // Held until the answer, a forward included: a request waiting on
        // another node still counts here.
        let _permit = self.admit()?;
        let shard = self.shard_id(&req.account);
        match self.submit(shard, req).await? {
            Routed::Local(outcome) => self.finish(M::NAME, started, outcome, M::response),
            Routed::Remote(leader) => {
                let candidates = self.candidates(shard, leader);
                if forwarded || candidates.is_empty() {
                    self.record(M::NAME, "not_leader", started);
                    return Err(
                        self.unavailable(candidates.first().copied(), "not the shard leader")
                    );
                }
                let deadline = self.limits.request_deadline;
                let r = self
                    .forward_to(shard, candidates, msg, false, deadline, M::call)
                    .await;
                let result = if r.is_ok() {
                    "forwarded"
                } else {
                    "forward_failed"
                };
                self.record(M::NAME, result, started);
                r
            }
        }
    }
}

/// `impl Mutation` for each row of the operation table with a `decide` column.
macro_rules! mutations {
    ($( $(#[doc = $doc:literal])* $op:ident($Req:ident -> $Resp:ident) on $on:tt serve $serve:tt
        stream $stream:tt client $client:tt decide [$($validate:expr => $convert:expr)?] shows $shows:tt; )*) => {
        $($(
            impl Mutation for pb::$Req {
                type Response = pb::$Resp;
                const NAME: &'static str = stringify!($op);
                fn request(&self) -> Result<Request, Status> {
                    // A closure in the row takes its types from these.
                    let validate: fn(&Self) -> Result<validate::Validated, Status> = $validate;
                    let (account, request_id, cmd) = validate(self)?;
                    Ok(Request { account, request_id, cmd })
                }
                fn response(r: Result<Reply, Rejection>) -> pb::$Resp {
                    let convert: fn(Result<Reply, Rejection>) -> pb::$Resp = $convert;
                    convert(r)
                }
                fn call(
                    mut c: ChargingClient<Channel>,
                    req: TReq<Self>,
                ) -> futures::future::BoxFuture<'static, Result<tonic::Response<pb::$Resp>, Status>> {
                    Box::pin(async move { c.$op(req).await })
                }
            }
        )?)*
    };
}
charging_proto::charging_ops!(mutations);

/// A forward whose connection broke under it (the target died mid-call):
/// tonic reports a local transport or HTTP/2 error, e.g. `INTERNAL` "h2
/// protocol error", with the error as its source. A status the target
/// itself sent has no source. Unknown outcome: UNAVAILABLE, retried under
/// the same request id, never `INTERNAL` to the caller.
fn broke_off(s: &Status) -> bool {
    s.code() == Code::Internal && std::error::Error::source(s).is_some()
}
