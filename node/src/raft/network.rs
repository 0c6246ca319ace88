//! Client side of the internal Raft transport.
//!
//! One lazily connected tonic channel per peer node ([`Peers`]), shared by
//! every shard group; each RPC names its shard. Bodies are openraft messages
//! encoded by [`crate::codec`]. Every call carries the deadline openraft gives
//! (`RPCOption::hard_ttl`), since a lost RPC must never wait forever.
use super::{NodeId, ShardId, TypeConfig};
use crate::clock::SharedClock;
use crate::codec;
use charging_proto::internal::{raft_internal_client::RaftInternalClient, RaftKind, RaftRequest};
use dashmap::DashMap;
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Largest internal message (a whole snapshot travels in one today).
pub const MAX_INTERNAL_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Makes channels to peers. Injected so tests and the simulator can supply
/// their own transport (DESIGN §4b).
pub trait Connector: Send + Sync + 'static {
    fn channel(&self, addr: &str) -> Result<Channel, String>;
}

/// TCP connector: lazily connected HTTP/2 channels with a connect timeout.
#[derive(Debug, Clone, Copy)]
pub struct TcpConnector {
    pub connect_timeout: Duration,
}

impl Connector for TcpConnector {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        Ok(ep.connect_lazy())
    }
}

/// One channel per peer, shared by all groups of this node.
pub struct Peers {
    me: NodeId,
    connector: Box<dyn Connector>,
    clients: DashMap<NodeId, RaftInternalClient<Channel>>,
    clock: SharedClock,
    isolated: std::sync::OnceLock<Arc<std::sync::atomic::AtomicBool>>,
}

impl Peers {
    pub fn new(me: NodeId, connector: Box<dyn Connector>, clock: SharedClock) -> Arc<Self> {
        Arc::new(Peers {
            me,
            connector,
            clients: DashMap::new(),
            clock,
            isolated: Default::default(),
        })
    }

    /// Fault-injection seam: while the flag is set, every call fails as unreachable.
    pub fn set_isolation(&self, flag: Arc<std::sync::atomic::AtomicBool>) {
        let _ = self.isolated.set(flag);
    }

    fn client(&self, target: NodeId, addr: &str) -> Result<RaftInternalClient<Channel>, String> {
        if let Some(c) = self.clients.get(&target) {
            return Ok(c.clone());
        }
        let ch = self.connector.channel(addr)?;
        let c = RaftInternalClient::new(ch)
            .max_decoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_INTERNAL_MESSAGE_BYTES);
        self.clients.insert(target, c.clone());
        Ok(c)
    }

    /// Sends one encoded request; decodes `Result<Resp, String>` from the peer.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        target: NodeId,
        addr: &str,
        shard: ShardId,
        kind: RaftKind,
        req: &Req,
        timeout: Duration,
    ) -> Result<Result<Resp, String>, CallError> {
        if self
            .isolated
            .get()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst))
        {
            return Err(CallError::Unreachable("isolated (fault injection)".into()));
        }
        let mut client = self.client(target, addr).map_err(CallError::Unreachable)?;
        let body = codec::encode(req).map_err(|e| CallError::Network(e.to_string()))?;
        let mut request = tonic::Request::new(RaftRequest {
            shard,
            kind: kind as i32,
            body,
            sender_clock_ms: self.clock.now_ms(),
            from_node: self.me,
        });
        request.set_timeout(timeout);
        let reply = match tokio::time::timeout(timeout, client.call(request)).await {
            Err(_) => return Err(CallError::Network(format!("deadline {timeout:?} exceeded"))),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(CallError::Unreachable(status.message().to_string()))
            }
            Ok(Err(status)) => return Err(CallError::Network(status.to_string())),
            Ok(Ok(r)) => r.into_inner(),
        };
        codec::decode(&reply.body).map_err(|e| CallError::Network(e.to_string()))
    }
}

#[derive(Debug)]
enum CallError {
    Unreachable(String),
    Network(String),
}

impl CallError {
    fn into_rpc(self) -> RPCError<TypeConfig> {
        match self {
            CallError::Unreachable(m) => {
                RPCError::Unreachable(Unreachable::new(&AnyError::error(m)))
            }
            CallError::Network(m) => RPCError::Network(NetworkError::new(&AnyError::error(m))),
        }
    }
}

fn remote_err(m: String) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&AnyError::error(format!("remote: {m}"))))
}

/// Network factory of one shard group.
#[derive(Clone)]
pub struct GroupNetworkFactory {
    pub shard: ShardId,
    pub peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        GroupNetwork {
            shard: self.shard,
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// A connection of one group to one peer (a view on the shared channel).
pub struct GroupNetwork {
    shard: ShardId,
    target: NodeId,
    addr: String,
    peers: Arc<Peers>,
}

impl GroupNetwork {
    async fn rpc<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        kind: RaftKind,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        self.peers
            .call(
                self.target,
                &self.addr,
                self.shard,
                kind,
                req,
                option.hard_ttl(),
            )
            .await
            .map_err(CallError::into_rpc)?
            .map_err(remote_err)
    }
}

impl RaftNetworkV2<TypeConfig> for GroupNetwork {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(RaftKind::Append, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(RaftKind::Vote, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Self::SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let req = (vote, snapshot.meta, snapshot.snapshot.into_inner());
        // Snapshots may be large: allow them more time than an append.
        let timeout = option.hard_ttl().max(Duration::from_secs(30));
        let res: Result<SnapshotResponse<TypeConfig>, String> = self
            .peers
            .call(
                self.target,
                &self.addr,
                self.shard,
                RaftKind::Snapshot,
                &req,
                timeout,
            )
            .await
            .map_err(|e| match e {
                CallError::Unreachable(m) => {
                    StreamingError::Unreachable(Unreachable::new(&AnyError::error(m)))
                }
                CallError::Network(m) => {
                    StreamingError::Network(NetworkError::new(&AnyError::error(m)))
                }
            })?;
        res.map_err(|m| StreamingError::Network(NetworkError::new(&AnyError::error(m))))
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(RaftKind::TransferLeader, &req, &option).await
    }
}
