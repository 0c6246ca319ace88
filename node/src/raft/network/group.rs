//! The openraft network of one shard group: a view on the node's peer links.
use super::*;

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
            replica: target,
            target: crate::raft::node_of(target),
            addr: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// A connection of one group to one peer replica (a view on the peer link).
pub struct GroupNetwork {
    shard: ShardId,
    /// The peer replica's member id (node << 32 | incarnation).
    replica: NodeId,
    /// The peer's node id.
    target: u64,
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
        let r = self
            .peers
            .call(
                &self.addr,
                self.shard,
                self.replica,
                kind,
                req,
                option.hard_ttl(),
            )
            .await
            .map_err(CallError::into_rpc)?;
        self.peers.note_heard(self.target);
        r.map_err(remote_err)
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

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, SessionItem>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let peers = self.peers.clone();
        let addr = self.addr.clone();
        let shard = self.shard;
        let target = self.target;
        let to_replica = self.replica;
        Box::pin(async move {
            if peers.is_isolated() {
                peers.cut_streams();
                let e = CallError::Unreachable("isolated (fault injection)".into());
                return Err(e.into_rpc());
            }
            let ttl = option.hard_ttl();
            let mux = peers.mux(&addr, ttl).await.map_err(CallError::into_rpc)?;
            let (id, rx) = mux
                .register()
                .ok_or_else(|| CallError::Unreachable("append stream closed".into()).into_rpc())?;
            let window = peers.options().append_window.max(1);
            let session = Session {
                input: Some(input),
                mux,
                peers,
                id,
                shard,
                to_replica,
                rx,
                pending: VecDeque::with_capacity(window),
                next_seq: 0,
                next_reply_seq: 0,
                last_reply: Instant::now(),
                window,
                ttl,
                end_sent: false,
                done: false,
            };
            let out = futures::stream::unfold(session, move |mut s| async move {
                let item = s.next_item().await?;
                if item.is_ok() {
                    s.peers.note_heard(target);
                }
                Some((item, s))
            });
            Ok(out.boxed())
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(RaftKind::Vote, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(RaftKind::PreVote, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Self::SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let send = self.peers.send_snapshot(
            &self.addr,
            self.shard,
            self.replica,
            (vote, snapshot.meta),
            snapshot.snapshot.into_inner(),
            option.hard_ttl(),
        );
        tokio::select! {
            r = send => r,
            closed = cancel => Err(StreamingError::Closed(closed)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.rpc(RaftKind::TransferLeader, &req, &option).await
    }
}
