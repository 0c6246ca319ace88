//! Server side of the internal Raft transport (the client side is
//! [`super::network`]):
//! - `Call`: decodes one request, hands it to the named shard group, encodes
//!   `Result<Resp, String>` back.
//! - `Append`: one stream per peer node carrying the append sessions of every
//!   group. Each session is fed to its group's `Raft::stream_append`, which
//!   pipelines it; its results go back tagged with the session and seq.
//! - `InstallSnapshot`: reassembles one snapshot's chunks (bounded by
//!   `max_snapshot_bytes`) and installs it.
//!
//! Fault injection: while `isolated` is set, new calls are refused and an open
//! `Append` stream fails on its next frame in either direction.
use super::{NodeId, Raft, ShardId, TypeConfig};
use crate::codec;
use crate::error::Error;
use crate::maps::{DashMap, HashMap};
use charging_proto::internal::{
    raft_internal_server::RaftInternal, AppendFrame, AppendReply, RaftKind, RaftReply, RaftRequest,
    SnapshotChunk,
};
use futures::{Stream, StreamExt};
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use serde::Serialize;
use std::fmt::Display;
use std::io::Cursor;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// The groups this node hosts, by shard.
/// The groups a node hosts: for each shard (and the metadata group) the
/// member id of its replica here and its Raft.
pub type Groups = Arc<DashMap<ShardId, (NodeId, Raft)>>;

/// Requests one session may have queued before its group takes them. The
/// sender keeps at most its window (64) unanswered, so a full queue means a
/// misbehaving sender: its session fails instead of stalling the stream.
const SESSION_QUEUE: usize = 128;

/// Replies queued for one `Append` stream before sessions wait for the
/// sender to read them.
const REPLY_QUEUE: usize = 1024;

/// Longest wait for the next snapshot chunk; the sender paces chunks at far
/// shorter intervals.
const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// When this node last heard from each peer node (any Raft message).
pub type PeerHealth = Arc<DashMap<u64, tokio::time::Instant>>;

pub struct RaftService {
    pub groups: Groups,
    /// Updated by every incoming call and append frame.
    pub heard: PeerHealth,
    pub clock: crate::clock::SharedClock,
    /// Fault-injection seam: while set, every incoming call is refused.
    pub isolated: Arc<AtomicBool>,
    /// Largest snapshot reassembled (`TransportOptions::snapshot_max_bytes`).
    pub max_snapshot_bytes: u64,
    /// Over TLS: every message's claimed sender (`from_node`, and the node
    /// of a vote it carries) must be the node its peer certificate names.
    pub check_peers: bool,
}

fn reply<T: Serialize, E: Display>(r: Result<T, E>) -> Result<Vec<u8>, Status> {
    let r = r.map_err(|e| e.to_string());
    codec::encode(&r).map_err(|e| Status::from(Error::Internal(e.to_string())))
}

fn body<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, Status> {
    codec::decode(b).map_err(|e| Status::from(Error::InvalidArgument(e.to_string())))
}

/// The Raft of `shard`'s replica here, if it is the one addressed: a message
/// for another incarnation (one that left the group, or one not created yet)
/// must not reach this one, or a leader would take this replica's log for
/// the other's (openraft then panics when that log seems to go backwards).
fn group(groups: &Groups, shard: ShardId, to_replica: NodeId) -> Result<Raft, Status> {
    let Some(g) = groups.get(&shard) else {
        return Err(Status::from(Error::NotFound(format!(
            "shard {shard} not hosted here"
        ))));
    };
    let (id, raft) = g.value();
    if to_replica != 0 && to_replica != *id {
        return Err(Status::from(Error::unavailable(format!(
            "shard {shard}: replica {to_replica} is not hosted here (this node hosts {id})"
        ))));
    }
    Ok(raft.clone())
}

fn isolated_status() -> Status {
    Status::from(Error::unavailable(
        "not taking Raft traffic (isolated by fault injection, or stopping)",
    ))
}

/// The sender a peer's certificate names, when peers are checked: `None`
/// when they are not (plaintext), an error when it names no node.
fn certified_sender(check: bool, ext: &tonic::Extensions) -> Result<Option<NodeId>, Status> {
    if !check {
        return Ok(None);
    }
    crate::tls::peer_node(ext).map(Some).ok_or_else(|| {
        Status::from(Error::Unauthenticated(
            "internal: the peer certificate names no node".into(),
        ))
    })
}

/// Refuses a message whose claimed sender is not the certified one.
fn check_sender(certified: Option<NodeId>, claimed: NodeId, what: &str) -> Result<(), Status> {
    match certified {
        Some(c) if c != claimed => Err(Status::from(Error::PermissionDenied(format!(
            "internal: {what} claims node {claimed}, but the peer certificate names node {c}"
        )))),
        _ => Ok(()),
    }
}

/// Refuses a Raft message whose vote (the candidate's, or the leader's)
/// is not a replica of the certified sender: a peer may speak only for its
/// own replicas.
fn check_vote(certified: Option<NodeId>, vote: &VoteOf<TypeConfig>) -> Result<(), Status> {
    check_sender(
        certified,
        super::node_of(vote.leader_id().node_id),
        "its vote",
    )
}

impl RaftService {
    fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::SeqCst)
    }

    fn group(&self, shard: ShardId, to_replica: NodeId) -> Result<Raft, Status> {
        group(&self.groups, shard, to_replica)
    }
}

type Replies = mpsc::Sender<Result<AppendReply, Status>>;

/// Encodes one session result as a reply body.
fn session_reply(
    session: u64,
    seq: u64,
    r: Result<StreamAppendResult<TypeConfig>, String>,
) -> Result<AppendReply, Status> {
    let body = codec::encode(&r).map_err(|e| Status::from(Error::Internal(e.to_string())))?;
    Ok(AppendReply { session, seq, body })
}

/// Reads one `Append` stream's frames and routes them to their sessions,
/// starting a session task on each session's first frame.
async fn demux(
    certified: Option<NodeId>,
    groups: Groups,
    isolated: Arc<AtomicBool>,
    heard: PeerHealth,
    mut inbound: Streaming<AppendFrame>,
    out: Replies,
) {
    let mut sessions: HashMap<u64, mpsc::Sender<AppendEntriesRequest<TypeConfig>>> =
        HashMap::default();
    loop {
        let frame = match inbound.message().await {
            Ok(Some(f)) => {
                // A peer that claims another node's frames loses its stream.
                if let Err(s) = check_sender(certified, f.from_node, "from_node") {
                    let _ = out.send(Err(s)).await;
                    break;
                }
                heard.insert(f.from_node, tokio::time::Instant::now());
                f
            }
            Ok(None) => break,
            Err(s) => {
                tracing::debug!(status = %s, "append stream from peer broke");
                break;
            }
        };
        if isolated.load(Ordering::SeqCst) {
            let _ = out.send(Err(isolated_status())).await;
            break;
        }
        if frame.end {
            // Ends the session's input: its task answers what it has and stops.
            sessions.remove(&frame.session);
            continue;
        }
        let fail = |m: String| session_reply(frame.session, frame.seq, Err(m));
        let req: AppendEntriesRequest<TypeConfig> = match codec::decode(&frame.body) {
            Ok(r) => r,
            Err(e) => {
                sessions.remove(&frame.session);
                let _ = out.send(fail(e.to_string())).await;
                continue;
            }
        };
        if let Err(s) = check_vote(certified, &req.vote) {
            let _ = out.send(Err(s)).await;
            break;
        }
        if let Some(tx) = sessions.get(&frame.session) {
            match tx.try_send(req) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sessions.remove(&frame.session);
                    let m =
                        format!("session queue over {SESSION_QUEUE}: sender ignores its window");
                    let _ = out.send(fail(m)).await;
                }
                // The session ended (an error reply went out): drop the rest.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    sessions.remove(&frame.session);
                }
            }
        } else if frame.seq == 0 {
            let raft = match group(&groups, frame.shard, frame.to_replica) {
                Ok(r) => r,
                Err(s) => {
                    let _ = out.send(fail(s.message().to_string())).await;
                    continue;
                }
            };
            let (tx, rx) = mpsc::channel(SESSION_QUEUE);
            let _ = tx.try_send(req);
            sessions.insert(frame.session, tx);
            // `Raft::stream_append` spawns through openraft's seeded runtime,
            // which needs a seed in scope; derive one from the session.
            let seed = super::group_seed(frame.session, frame.from_node, frame.shard);
            tokio::spawn(super::Runtime::scope(
                seed,
                serve_session(raft, rx, frame.session, out.clone(), isolated.clone()),
            ));
        }
        // else: a frame of a session that already ended; dropped.
    }
}

/// Feeds one session's requests to its group and sends each result back, in
/// order, until the input ends or a result ends the session.
async fn serve_session(
    raft: Raft,
    rx: mpsc::Receiver<AppendEntriesRequest<TypeConfig>>,
    session: u64,
    out: Replies,
    isolated: Arc<AtomicBool>,
) {
    let results = raft.stream_append(ReceiverStream::new(rx));
    let mut results = std::pin::pin!(results);
    let mut seq = 0;
    while let Some(r) = results.next().await {
        if isolated.load(Ordering::SeqCst) {
            let _ = out.send(Err(isolated_status())).await;
            return;
        }
        let last = !matches!(r, Ok(Ok(_)));
        let r = r.map_err(|fatal| fatal.to_string());
        if out.send(session_reply(session, seq, r)).await.is_err() {
            return;
        }
        if last {
            return;
        }
        seq += 1;
    }
}

/// The next snapshot chunk, or `None` at the end of the stream.
async fn next_chunk(
    chunks: &mut Streaming<SnapshotChunk>,
) -> Result<Option<SnapshotChunk>, Status> {
    tokio::time::timeout(SNAPSHOT_CHUNK_TIMEOUT, chunks.message())
        .await
        .map_err(|_| {
            Status::from(Error::DeadlineExceeded(
                "no snapshot chunk within 30s".into(),
            ))
        })?
}

type AppendReplies = Pin<Box<dyn Stream<Item = Result<AppendReply, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftInternal for RaftService {
    async fn call(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        if self.is_isolated() {
            return Err(isolated_status());
        }
        let certified = certified_sender(self.check_peers, request.extensions())?;
        let req = request.into_inner();
        check_sender(certified, req.from_node, "from_node")?;
        self.heard
            .insert(req.from_node, tokio::time::Instant::now());
        let kind = RaftKind::try_from(req.kind).unwrap_or(RaftKind::Unspecified);
        if kind == RaftKind::Clock {
            return Ok(Response::new(RaftReply {
                body: Vec::new(),
                receiver_clock_ms: self.clock.now_ms(),
            }));
        }
        let raft = self.group(req.shard, req.to_replica)?;
        let out = match kind {
            RaftKind::Vote => {
                let v: openraft::raft::VoteRequest<TypeConfig> = body(&req.body)?;
                check_vote(certified, &v.vote)?;
                reply(raft.vote(v).await)?
            }
            RaftKind::PreVote => {
                let v: openraft::raft::VoteRequest<TypeConfig> = body(&req.body)?;
                check_vote(certified, &v.vote)?;
                reply(raft.pre_vote(v).await)?
            }
            RaftKind::Append => {
                let a: AppendEntriesRequest<TypeConfig> = body(&req.body)?;
                check_vote(certified, &a.vote)?;
                reply(raft.append_entries(a).await)?
            }
            RaftKind::TransferLeader => {
                let t: openraft::raft::TransferLeaderRequest<TypeConfig> = body(&req.body)?;
                check_vote(certified, t.from_leader())?;
                reply(raft.handle_transfer_leader(t).await)?
            }
            RaftKind::Clock | RaftKind::Unspecified => {
                return Err(Status::from(Error::InvalidArgument(
                    "kind: unknown raft message kind".into(),
                )))
            }
        };
        Ok(Response::new(RaftReply {
            body: out,
            receiver_clock_ms: self.clock.now_ms(),
        }))
    }

    type AppendStream = AppendReplies;

    async fn append(
        &self,
        request: Request<Streaming<AppendFrame>>,
    ) -> Result<Response<Self::AppendStream>, Status> {
        if self.is_isolated() {
            return Err(isolated_status());
        }
        let certified = certified_sender(self.check_peers, request.extensions())?;
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        tokio::spawn(demux(
            certified,
            self.groups.clone(),
            self.isolated.clone(),
            self.heard.clone(),
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        if self.is_isolated() {
            return Err(isolated_status());
        }
        let certified = certified_sender(self.check_peers, request.extensions())?;
        let mut chunks = request.into_inner();
        let first = next_chunk(&mut chunks)
            .await?
            .ok_or_else(|| Status::from(Error::InvalidArgument("snapshot: no chunk".into())))?;
        check_sender(certified, first.from_node, "from_node")?;
        let total = first.total_bytes;
        if total > self.max_snapshot_bytes {
            return Err(Status::from(Error::Overloaded(format!(
                "snapshot: {total} bytes over the limit of {}",
                self.max_snapshot_bytes
            ))));
        }
        let raft = self.group(first.shard, first.to_replica)?;
        let (vote, meta): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>) = body(&first.header)?;
        check_vote(certified, &vote)?;
        let mut data = Vec::with_capacity(total as usize);
        data.extend_from_slice(&first.data);
        while (data.len() as u64) < total {
            let Some(c) = next_chunk(&mut chunks).await? else {
                break;
            };
            if self.is_isolated() {
                return Err(isolated_status());
            }
            if data.len() as u64 + c.data.len() as u64 > total {
                return Err(Status::from(Error::InvalidArgument(
                    "snapshot: chunks exceed total_bytes".into(),
                )));
            }
            data.extend_from_slice(&c.data);
        }
        if data.len() as u64 != total {
            return Err(Status::from(Error::InvalidArgument(format!(
                "snapshot: stream ended at {} of {total} bytes",
                data.len()
            ))));
        }
        let snap = SnapshotOf::<TypeConfig, Cursor<Vec<u8>>> {
            meta,
            snapshot: Cursor::new(data),
        };
        let out = reply(raft.install_full_snapshot(vote, snap).await)?;
        Ok(Response::new(RaftReply {
            body: out,
            receiver_clock_ms: self.clock.now_ms(),
        }))
    }
}
