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
//! once; beyond that, `RESOURCE_EXHAUSTED` at once rather than a queue.
use crate::ledger::{AccountId, Rejection, Reply, Request};
use crate::raft::state_machine::ShardStore;
use crate::raft::{NodeId, Raft, ShardId};
use crate::shard::{Outcome, ShardMsg};
use charging_proto::v1 as pb;
use charging_proto::v1::charging_client::ChargingClient;
use dashmap::DashMap;
use metrics::{counter, histogram};
use openraft::ReadPolicy;
use ractor::ActorRef;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Semaphore};
use tonic::transport::Channel;
use tonic::{Code, Request as TReq, Status};

pub mod admin;
mod convert;
mod service;
pub mod validate;

pub use convert::result_code;
pub use service::ChargingService as ChargingServiceHandle;

/// Metadata key marking a request forwarded by another front door.
pub const FORWARDED: &str = "x-charging-forwarded";
/// Metadata key restricting a SetTariff to one shard (used by forwarding).
pub const ONLY_SHARD: &str = "x-charging-shard";
pub const LEADER_NODE: &str = "x-leader-node";
pub const LEADER_ADDR: &str = "x-leader-addr";

/// The fixed, documented account → shard hash: FNV-1a 64 over the id bytes.
pub use charging_proto::{fnv1a64, shard_of};

/// One local shard replica as the front door sees it.
#[derive(Clone)]
pub struct ShardHandle {
    pub shard: ShardId,
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

/// Front-door limits (from the node config).
#[derive(Debug, Clone)]
pub struct FrontDoorLimits {
    pub max_inflight_requests: usize,
    /// Longest a request waits for its shard (also capped by the caller's deadline).
    pub request_deadline: Duration,
    /// Forwarding channels kept open (one per peer node).
    pub max_forward_peers: usize,
}

impl Default for FrontDoorLimits {
    fn default() -> Self {
        FrontDoorLimits {
            max_inflight_requests: 10_000,
            request_deadline: Duration::from_secs(2),
            max_forward_peers: 64,
        }
    }
}

pub struct FrontDoor {
    pub node: NodeId,
    pub shards: Vec<ShardHandle>,
    /// Public (client-facing) address of every node, by id.
    pub public_addrs: BTreeMap<NodeId, String>,
    /// Internal (Raft) address of every node, for status.
    pub internal_addrs: BTreeMap<NodeId, String>,
    /// This node's replica of the metadata group (the replicated shard map).
    pub meta: Option<(Raft, crate::raft::state_machine::ShardStore)>,
    /// When a Raft message last came from each peer (status: reachable).
    pub heard: crate::raft::service::PeerHealth,
    pub limits: FrontDoorLimits,
    admission: Semaphore,
    forward: DashMap<NodeId, ChargingClient<Channel>>,
    /// Shared string: labelling a request's metrics copies no bytes.
    node_label: metrics::SharedString,
}

/// Where a request went.
enum Routed {
    Local(Outcome),
    Remote(Option<NodeId>),
}

impl FrontDoor {
    pub fn new(
        node: NodeId,
        shards: Vec<ShardHandle>,
        public_addrs: BTreeMap<NodeId, String>,
        internal_addrs: BTreeMap<NodeId, String>,
        meta: Option<(Raft, crate::raft::state_machine::ShardStore)>,
        limits: FrontDoorLimits,
    ) -> Arc<Self> {
        Arc::new(FrontDoor {
            node,
            shards,
            public_addrs,
            internal_addrs,
            meta,
            heard: Default::default(),
            admission: Semaphore::new(limits.max_inflight_requests),
            limits,
            forward: DashMap::new(),
            node_label: crate::metrics_http::label(node),
        })
    }

    fn shard(&self, account: &AccountId) -> &ShardHandle {
        &self.shards[shard_of(&account.0, self.shards.len() as u32) as usize]
    }

    fn overloaded() -> Status {
        Status::resource_exhausted("node at its in-flight request limit; back off and retry")
    }

    /// Sends one request to its local shard actor and waits (bounded) for the outcome.
    async fn submit(&self, req: Request) -> Result<Routed, Status> {
        let _permit = self
            .admission
            .try_acquire()
            .map_err(|_| Self::overloaded())?;
        let handle = self.shard(&req.account);
        let (tx, rx) = oneshot::channel();
        handle
            .actor
            .cast(ShardMsg::Request { req, reply: tx })
            .map_err(|_| Status::unavailable("shard actor stopped"))?;
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

    fn unavailable(&self, leader: Option<NodeId>, msg: &str) -> Status {
        let mut s = Status::unavailable(format!("{msg}; retry with the same request id"));
        if let Some(l) = leader {
            if let Ok(v) = l.to_string().parse() {
                s.metadata_mut().insert(LEADER_NODE, v);
            }
            if let Some(addr) = self.public_addrs.get(&l) {
                if let Ok(v) = format!("http://{addr}").parse() {
                    s.metadata_mut().insert(LEADER_ADDR, v);
                }
            }
        }
        s
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
            _ => s,
        }
    }

    fn forward_client(&self, leader: NodeId) -> Result<ChargingClient<Channel>, Status> {
        if let Some(c) = self.forward.get(&leader) {
            return Ok(c.clone());
        }
        let addr = self
            .public_addrs
            .get(&leader)
            .ok_or_else(|| self.unavailable(None, "leader address unknown"))?;
        if self.forward.len() >= self.limits.max_forward_peers {
            self.forward.clear();
        }
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Status::internal(e.to_string()))?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .connect_lazy();
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
                Err(Status::resource_exhausted(why))
            }
            Outcome::NotLeader { leader } => {
                self.record(op, "not_leader", started);
                Err(self.unavailable(leader, "not the shard leader"))
            }
        }
    }

    /// Balance: a linearizable read of published applied state (read index
    /// first), never of speculative state, never behind apply.
    pub async fn balance(
        &self,
        msg: pb::BalanceRequest,
        forwarded: bool,
    ) -> Result<pb::BalanceResponse, Status> {
        let started = Instant::now();
        let account = validate::account_id(&msg.account_id)?;
        let _permit = self
            .admission
            .try_acquire()
            .map_err(|_| Self::overloaded())?;
        let h = self.shard(&account);
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
                let view = h.store.view();
                self.record("balance", "ok", started);
                Ok(convert::balance(
                    view.state.account(&account).map(|a| a.view(view.log_ts_ms)),
                ))
            }
            Err(fwd) => {
                let leader = fwd.leader_id.map(crate::raft::node_of);
                match leader {
                    Some(l) if !forwarded && l != self.node => {
                        let mut c = self.forward_client(l)?;
                        let mut req = TReq::new(msg);
                        req.metadata_mut()
                            .insert(FORWARDED, "1".parse().expect("ascii"));
                        req.set_timeout(self.limits.request_deadline);
                        let r = c.balance(req).await;
                        Ok(r.map_err(|s| self.forward_failed(l, s))?.into_inner())
                    }
                    _ => Err(self.unavailable(leader, "not the shard leader")),
                }
            }
        }
    }

    /// Sets a tariff on every shard (or only `only` when forwarded for one shard).
    pub async fn set_tariff(
        &self,
        msg: pb::SetTariffRequest,
        only: Option<ShardId>,
    ) -> Result<pb::SetTariffResponse, Status> {
        let (request_id, tariff) = validate::tariff(&msg)?;
        let mut version = 0;
        for h in &self.shards {
            if only.is_some_and(|s| s != h.shard) {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            h.actor
                .cast(ShardMsg::SetTariff {
                    tariff: tariff.clone(),
                    request_id,
                    reply: tx,
                })
                .map_err(|_| Status::unavailable("shard actor stopped"))?;
            let outcome = tokio::time::timeout(self.limits.request_deadline, rx)
                .await
                .map_err(|_| self.unavailable(None, "deadline exceeded setting tariff"))?
                .map_err(|_| self.unavailable(None, "shard actor dropped the request"))?;
            match outcome {
                Outcome::Done(Ok(reply)) => {
                    if let crate::ledger::Reply::TariffSet { version: v } = reply {
                        version = version.max(v);
                    }
                }
                Outcome::NotLeader { leader: Some(l) } if only.is_none() && l != self.node => {
                    let mut c = self.forward_client(l)?;
                    let mut req = TReq::new(msg.clone());
                    req.metadata_mut()
                        .insert(ONLY_SHARD, h.shard.to_string().parse().expect("ascii"));
                    req.set_timeout(self.limits.request_deadline);
                    let r = c
                        .set_tariff(req)
                        .await
                        .map_err(|s| self.forward_failed(l, s))?
                        .into_inner();
                    version = version.max(r.version);
                }
                Outcome::NotLeader { leader } => {
                    return Err(self.unavailable(leader, "not the shard leader"))
                }
                Outcome::Unknown(w) => return Err(self.unavailable(None, w)),
                Outcome::Overloaded(w) => return Err(Status::resource_exhausted(w)),
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

/// Generates, per mutating operation, `FrontDoor::<op>(msg, forwarded)`:
/// validate → submit to the shard → map the outcome, or forward one hop.
macro_rules! mutating_ops {
    ($( $op:ident : $req:ty => $resp:ty, $validate:path, $to_resp:path; )*) => {
        impl FrontDoor {
            $(
            pub async fn $op(&self, msg: $req, forwarded: bool) -> Result<$resp, Status> {
                let started = Instant::now();
                let (account, request_id, cmd) = $validate(&msg)?;
                match self.submit(Request { account, request_id, cmd }).await? {
                    Routed::Local(outcome) => self.finish(stringify!($op), started, outcome, $to_resp),
                    Routed::Remote(Some(leader)) if !forwarded => {
                        let mut c = self.forward_client(leader)?;
                        let mut req = TReq::new(msg);
                        req.metadata_mut().insert(FORWARDED, "1".parse().expect("ascii"));
                        req.set_timeout(self.limits.request_deadline);
                        let r = c.$op(req).await;
                        self.record(stringify!($op), if r.is_ok() { "forwarded" } else { "forward_failed" }, started);
                        Ok(r.map_err(|s| self.forward_failed(leader, s))?.into_inner())
                    }
                    Routed::Remote(leader) => {
                        self.record(stringify!($op), "not_leader", started);
                        Err(self.unavailable(leader, "not the shard leader"))
                    }
                }
            }
            )*
        }
    };
}

mutating_ops! {
    create_account: pb::CreateAccountRequest => pb::CreateAccountResponse, validate::create_account, convert::create_account;
    add_bucket: pb::AddBucketRequest => pb::AddBucketResponse, validate::add_bucket, convert::add_bucket;
    top_up: pb::TopUpRequest => pb::TopUpResponse, validate::top_up, convert::top_up;
    reserve: pb::ReserveRequest => pb::ReserveResponse, validate::reserve, convert::reserve;
    update: pb::UpdateRequest => pb::UpdateResponse, validate::update, convert::update;
    terminate: pb::TerminateRequest => pb::TerminateResponse, validate::terminate, convert::terminate;
    commit: pb::CommitRequest => pb::CommitResponse, validate::commit, convert::commit;
    release: pb::ReleaseRequest => pb::ReleaseResponse, validate::release, convert::release;
    refund: pb::RefundRequest => pb::RefundResponse, validate::refund, convert::refund;
    debit: pb::DebitRequest => pb::DebitResponse, validate::debit, convert::debit;
    set_account_state: pb::SetAccountStateRequest => pb::SetAccountStateResponse, validate::set_state, convert::set_state;
}
