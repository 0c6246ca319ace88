//! Server side of the internal Raft transport: decodes a request, hands it to
//! the named shard group, encodes `Result<Resp, String>` back.
use super::{Raft, ShardId, TypeConfig};
use crate::codec;
use charging_proto::internal::{
    raft_internal_server::RaftInternal, RaftKind, RaftReply, RaftRequest,
};
use dashmap::DashMap;
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use serde::Serialize;
use std::fmt::Display;
use std::io::Cursor;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The groups this node hosts, by shard.
pub type Groups = Arc<DashMap<ShardId, Raft>>;

pub struct RaftService {
    pub groups: Groups,
    pub clock: crate::clock::SharedClock,
    /// Fault-injection seam: while set, every incoming call is refused.
    pub isolated: Arc<std::sync::atomic::AtomicBool>,
}

fn reply<T: Serialize, E: Display>(r: Result<T, E>) -> Result<Vec<u8>, Status> {
    let r = r.map_err(|e| e.to_string());
    codec::encode(&r).map_err(|e| Status::internal(e.to_string()))
}

fn body<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, Status> {
    codec::decode(b).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl RaftInternal for RaftService {
    async fn call(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        if self.isolated.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Status::unavailable("isolated (fault injection)"));
        }
        let req = request.into_inner();
        let raft = self
            .groups
            .get(&req.shard)
            .map(|r| r.clone())
            .ok_or_else(|| Status::not_found(format!("shard {} not hosted here", req.shard)))?;
        let out = match RaftKind::try_from(req.kind).unwrap_or(RaftKind::Unspecified) {
            RaftKind::Vote => reply(raft.vote(body(&req.body)?).await)?,
            RaftKind::Append => reply(raft.append_entries(body(&req.body)?).await)?,
            RaftKind::Snapshot => {
                let (vote, meta, data): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>, Vec<u8>) =
                    body(&req.body)?;
                let snap = SnapshotOf::<TypeConfig, Cursor<Vec<u8>>> {
                    meta,
                    snapshot: Cursor::new(data),
                };
                reply(raft.install_full_snapshot(vote, snap).await)?
            }
            RaftKind::TransferLeader => reply(raft.handle_transfer_leader(body(&req.body)?).await)?,
            RaftKind::Unspecified => {
                return Err(Status::invalid_argument("kind: unknown raft message kind"))
            }
        };
        Ok(Response::new(RaftReply {
            body: out,
            receiver_clock_ms: self.clock.now_ms(),
        }))
    }
}
