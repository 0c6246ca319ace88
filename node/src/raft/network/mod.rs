//! Client side of the internal Raft transport.
//!
//! Every group of this node reaches a peer node through one [`PeerLink`]
//! (keyed by the peer's internal address, so every replica on that node shares
//! it). A link has two HTTP/2 connections:
//! - **main**: unary calls (vote, pre-vote, transfer-leader, one-off append)
//!   and one long-lived bidirectional `Append` stream ([`AppendMux`]) that
//!   carries the append sessions of every group. A session is one openraft
//!   `stream_append` call: its requests go out as they arrive, up to
//!   [`TransportOptions::append_window`] unanswered, and its replies come back
//!   in request order. openraft's default `stream_append` waits a round trip
//!   per request; this one does not.
//! - **snapshots**: `InstallSnapshot` client streams of
//!   [`TransportOptions::snapshot_chunk_bytes`] chunks, paced by one token
//!   bucket per node, so a large snapshot never queues in front of another
//!   group's heartbeat.
//!
//! Every wait has a deadline: unary calls and each append reply use openraft's
//! `RPCOption::hard_ttl` (a session fails when it has requests out and nothing
//! came back for that long); snapshots use the larger of it and
//! [`TransportOptions::snapshot_progress_timeout`] per chunk and for the reply.
//! When the `Append` stream breaks, every open session fails (openraft backs
//! off and retries) and the next session opens a new stream.
//!
//! Fault injection ([`Peers::set_isolation`]): while set, new calls fail as
//! unreachable and an open stream is torn down on its next frame either way.
use super::{NodeId, ShardId, TypeConfig};
pub use crate::config::TransportOptions;

mod group;
mod pacing;
mod session;

use crate::clock::SharedClock;
use crate::codec;
use crate::maps::{DashMap, HashMap};
use charging_proto::internal::{
    raft_internal_client::RaftInternalClient, AppendFrame, AppendReply, RaftKind, RaftRequest,
    SnapshotChunk,
};
use futures::{Stream, StreamExt};
pub use group::{GroupNetwork, GroupNetworkFactory};
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use pacing::TokenBucket;
use serde::{de::DeserializeOwned, Serialize};
use session::*;
use std::collections::VecDeque;
use std::future::Future;
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::transport::{Channel, Endpoint};

/// Largest internal gRPC message. Snapshots travel in chunks, so this bounds
/// one AppendEntries request (at most `max_payload_entries` batches).
pub const MAX_INTERNAL_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The shortest wait for the `Append` stream to open: it is shared by every
/// group, so opening it is worth more than one heartbeat interval.
const STREAM_OPEN_TIMEOUT_MIN: Duration = Duration::from_secs(1);

/// Makes channels to peers. Injected so tests and the simulator can supply
/// their own transport (DESIGN §4b). Each call must return a channel on its
/// own connection: a peer gets one for Raft messages and one for snapshots.
pub trait Connector: Send + Sync + 'static {
    fn channel(&self, addr: &str) -> Result<Channel, String>;
}

/// TCP connector: lazily connected HTTP/2 channels with a connect timeout;
/// over TLS with this node's certificate when `tls` is set (see
/// [`crate::tls`]).
#[derive(Debug, Clone)]
pub struct TcpConnector {
    pub connect_timeout: Duration,
    pub tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Connector for TcpConnector {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep =
            Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| e.to_string())?;
        if let Some(tls) = &self.tls {
            ep = ep.tls_config(tls.clone()).map_err(|e| e.to_string())?;
        }
        let ep = ep
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        Ok(ep.connect_lazy())
    }
}

/// Counters of this node's outgoing transport, for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// `Append` streams opened (one per peer, plus one per reconnect).
    pub streams_opened: u64,
    /// `Append` streams open now.
    pub streams_open: u64,
    /// Append sessions started (one per openraft `stream_append` call that
    /// sent something).
    pub append_sessions: u64,
    /// AppendEntries requests sent on `Append` streams.
    pub append_frames: u64,
    /// The most unanswered requests any one session has had at once.
    pub append_max_in_flight: u64,
    /// Snapshots fully sent and answered with success.
    pub snapshots_sent: u64,
    /// Snapshot chunks handed to the snapshot connection.
    pub snapshot_chunks: u64,
    /// Snapshot data bytes handed to the snapshot connection.
    pub snapshot_bytes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    streams_opened: AtomicU64,
    streams_open: AtomicU64,
    append_sessions: AtomicU64,
    append_frames: AtomicU64,
    append_max_in_flight: AtomicU64,
    snapshots_sent: AtomicU64,
    snapshot_chunks: AtomicU64,
    snapshot_bytes: AtomicU64,
}

/// One peer node: its two connections and its shared `Append` stream.
struct PeerLink {
    main: RaftInternalClient<Channel>,
    snapshots: RaftInternalClient<Channel>,
    /// The open `Append` stream; the lock serialises opening it.
    stream: tokio::sync::Mutex<StreamSlot>,
}

/// The `Append` stream of one peer link, and the pacing of reopening it.
#[derive(Default)]
struct StreamSlot {
    mux: Option<Arc<AppendMux>>,
    /// Opens that failed in a row (reset by a successful open).
    failures: u32,
    /// After a failed open, the next attempt waits until then: a peer that is
    /// down refuses at once, and without a pause every group's replication
    /// would retry in a hot loop.
    retry_at: Option<Instant>,
}

/// The pause after the first failed open of an `Append` stream; it doubles
/// with each further failure up to [`STREAM_REOPEN_MAX`].
const STREAM_REOPEN_MIN: Duration = Duration::from_millis(10);
const STREAM_REOPEN_MAX: Duration = Duration::from_millis(200);

impl Drop for PeerLink {
    fn drop(&mut self) {
        if let Some(m) = self.stream.get_mut().mux.as_ref() {
            m.close("peer link dropped");
        }
    }
}

/// Reply of one session, or why its stream failed.
type SessionEvent = Result<AppendReply, String>;

/// One `Append` stream to a peer, shared by the sessions of every group.
struct AppendMux {
    /// Frames to send; `None` once closed (dropping it ends the request side).
    tx: Mutex<Option<mpsc::UnboundedSender<AppendFrame>>>,
    /// Open sessions by id; `None` once closed, so none registers late.
    sessions: Mutex<Option<HashMap<u64, mpsc::UnboundedSender<SessionEvent>>>>,
    next_session: AtomicU64,
    /// Wakes the reply reader to stop.
    stop: Notify,
    counters: Arc<Counters>,
    /// When the stream opened, and the last reply since then (ms after it):
    /// a stream that answers nothing at all is dead, whatever TCP says.
    opened: Instant,
    last_reply_ms: AtomicU64,
}

/// A session that gets no reply in time closes its stream as well when the
/// whole stream (every group's sessions, heartbeats included) has been silent
/// this long: a peer that crashed behind a partition leaves a half-open
/// connection that would otherwise swallow every later session until the
/// HTTP/2 keepalive notices, seconds later.
const STREAM_SILENCE_MAX: Duration = Duration::from_secs(1);

impl AppendMux {
    fn is_closed(&self) -> bool {
        lock(&self.sessions).is_none()
    }

    /// Registers a new session; `None` if the stream is already closed.
    fn register(&self) -> Option<(u64, mpsc::UnboundedReceiver<SessionEvent>)> {
        let mut g = lock(&self.sessions);
        let map = g.as_mut()?;
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        map.insert(id, tx);
        Some((id, rx))
    }

    fn unregister(&self, id: u64) {
        if let Some(map) = lock(&self.sessions).as_mut() {
            map.remove(&id);
        }
    }

    fn send(&self, frame: AppendFrame) -> Result<(), ()> {
        match lock(&self.tx).as_ref() {
            Some(tx) => tx.send(frame).map_err(|_| ()),
            None => Err(()),
        }
    }

    fn route(&self, reply: AppendReply) {
        self.last_reply_ms
            .store(self.opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        if let Some(tx) = lock(&self.sessions)
            .as_ref()
            .and_then(|m| m.get(&reply.session))
        {
            // A session that went away meanwhile no longer wants it.
            let _ = tx.send(Ok(reply));
        }
    }

    /// How long the stream has gone without any reply.
    fn silent_for(&self) -> Duration {
        self.opened.elapsed().saturating_sub(Duration::from_millis(
            self.last_reply_ms.load(Ordering::Relaxed),
        ))
    }

    /// Fails every open session with `reason` and ends the stream. Idempotent.
    fn close(&self, reason: &str) {
        let sessions = lock(&self.sessions).take();
        let Some(sessions) = sessions else { return };
        lock(&self.tx).take();
        for tx in sessions.into_values() {
            let _ = tx.send(Err(reason.to_string()));
        }
        self.counters.streams_open.fetch_sub(1, Ordering::Relaxed);
        self.stop.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads one `Append` stream's replies and routes them to their sessions
/// until the stream ends, breaks, is closed locally, or isolation cuts it.
async fn read_replies(
    mux: Arc<AppendMux>,
    mut inbound: tonic::Streaming<AppendReply>,
    isolated: Option<Arc<AtomicBool>>,
) {
    let reason = loop {
        tokio::select! {
            _ = mux.stop.notified() => break "append stream closed locally".to_string(),
            m = inbound.message() => match m {
                Ok(Some(reply)) => {
                    if isolated.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)) {
                        break "isolated (fault injection)".to_string();
                    }
                    mux.route(reply);
                }
                Ok(None) => break "append stream ended by the peer".to_string(),
                Err(s) => break format!("append stream broke: {s}"),
            },
        }
    };
    tracing::debug!(%reason, "append stream closed");
    mux.close(&reason);
}

/// The client side of the transport of one node: one [`PeerLink`] per peer,
/// shared by all groups of this node.
pub struct Peers {
    me: NodeId,
    connector: Box<dyn Connector>,
    links: DashMap<String, Arc<PeerLink>>,
    clock: SharedClock,
    isolated: std::sync::OnceLock<Arc<AtomicBool>>,
    /// When each peer node last answered (status: reachable), shared with
    /// the server side, which records the peers' requests.
    heard: std::sync::OnceLock<super::service::PeerHealth>,
    options: RwLock<TransportOptions>,
    bucket: TokenBucket,
    counters: Arc<Counters>,
}

impl Peers {
    pub fn new(
        me: NodeId,
        connector: Box<dyn Connector>,
        clock: SharedClock,
        options: TransportOptions,
    ) -> Arc<Self> {
        let bucket = TokenBucket::new(
            options.snapshot_rate_bytes_per_s,
            options.snapshot_chunk_bytes as u64,
            Instant::now(),
        );
        Arc::new(Peers {
            me,
            connector,
            links: DashMap::default(),
            clock,
            isolated: Default::default(),
            heard: Default::default(),
            options: RwLock::new(options),
            bucket,
            counters: Arc::default(),
        })
    }

    /// Fault-injection seam: while the flag is set, every call fails as unreachable.
    pub fn set_isolation(&self, flag: Arc<AtomicBool>) {
        let _ = self.isolated.set(flag);
    }

    /// A new channel to `addr` from the injected connector (the front door
    /// forwards over these).
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        self.connector.channel(addr)
    }

    /// Where to record that a peer answered.
    pub fn set_heard(&self, heard: super::service::PeerHealth) {
        let _ = self.heard.set(heard);
    }

    fn note_heard(&self, node: u64) {
        if let Some(h) = self.heard.get() {
            h.insert(node, Instant::now());
        }
    }

    /// Replaces the options; applies to sessions and snapshots started later.
    pub fn set_options(&self, options: TransportOptions) {
        self.bucket.set(
            options.snapshot_rate_bytes_per_s,
            options.snapshot_chunk_bytes as u64,
        );
        *self.options.write().unwrap_or_else(|p| p.into_inner()) = options;
    }

    pub fn options(&self) -> TransportOptions {
        self.options
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn stats(&self) -> TransportStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TransportStats {
            streams_opened: get(&c.streams_opened),
            streams_open: get(&c.streams_open),
            append_sessions: get(&c.append_sessions),
            append_frames: get(&c.append_frames),
            append_max_in_flight: get(&c.append_max_in_flight),
            snapshots_sent: get(&c.snapshots_sent),
            snapshot_chunks: get(&c.snapshot_chunks),
            snapshot_bytes: get(&c.snapshot_bytes),
        }
    }

    fn is_isolated(&self) -> bool {
        self.isolated
            .get()
            .is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Fault injection: closes every open `Append` stream (an idle session
    /// would otherwise keep its stream open while isolated).
    fn cut_streams(&self) {
        for link in self.links.iter() {
            if let Ok(slot) = link.stream.try_lock() {
                if let Some(m) = slot.mux.as_ref() {
                    m.close("isolated (fault injection)");
                }
            }
        }
    }

    fn link(&self, addr: &str) -> Result<Arc<PeerLink>, CallError> {
        if let Some(l) = self.links.get(addr) {
            return Ok(l.clone());
        }
        let client = |ch: Channel| {
            RaftInternalClient::new(ch)
                .max_decoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
        };
        let main = client(
            self.connector
                .channel(addr)
                .map_err(CallError::Unreachable)?,
        );
        let snapshots = client(
            self.connector
                .channel(addr)
                .map_err(CallError::Unreachable)?,
        );
        let link = self
            .links
            .entry(addr.to_string())
            .or_insert_with(|| {
                Arc::new(PeerLink {
                    main,
                    snapshots,
                    stream: tokio::sync::Mutex::new(StreamSlot::default()),
                })
            })
            .clone();
        Ok(link)
    }

    /// The offset of `addr`'s clock from ours in ms (its clock minus the
    /// midpoint of the round trip), by one probe on the Raft port.
    pub async fn probe_clock(&self, addr: &str, timeout: Duration) -> Result<i64, String> {
        if self.is_isolated() {
            return Err("isolated (fault injection)".into());
        }
        let mut client = self.link(addr).map_err(|e| format!("{e:?}"))?.main.clone();
        let t0 = self.clock.now_ms();
        let mut request = tonic::Request::new(RaftRequest {
            shard: 0,
            kind: RaftKind::Clock as i32,
            body: Vec::new(),
            sender_clock_ms: t0,
            from_node: self.me,
            to_replica: 0,
        });
        request.set_timeout(timeout);
        let reply = match tokio::time::timeout(timeout, client.call(request)).await {
            Err(_) => return Err(format!("deadline {timeout:?} exceeded")),
            Ok(Err(status)) => return Err(status.message().to_string()),
            Ok(Ok(r)) => r.into_inner(),
        };
        let t1 = self.clock.now_ms();
        let mid = (t0 / 2 + t1 / 2) as i64;
        Ok(reply.receiver_clock_ms as i64 - mid)
    }

    /// Sends one encoded request; decodes `Result<Resp, String>` from the peer.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        shard: ShardId,
        to_replica: NodeId,
        kind: RaftKind,
        req: &Req,
        timeout: Duration,
    ) -> Result<Result<Resp, String>, CallError> {
        if self.is_isolated() {
            return Err(CallError::Unreachable("isolated (fault injection)".into()));
        }
        let mut client = self.link(addr)?.main.clone();
        let body = codec::encode(req).map_err(|e| CallError::Network(e.to_string()))?;
        let mut request = tonic::Request::new(RaftRequest {
            shard,
            kind: kind as i32,
            body,
            sender_clock_ms: self.clock.now_ms(),
            from_node: self.me,
            to_replica,
        });
        request.set_timeout(timeout);
        let reply = match tokio::time::timeout(timeout, client.call(request)).await {
            Err(_) => return Err(CallError::Network(format!("deadline {timeout:?} exceeded"))),
            Ok(Err(status)) => return Err(CallError::from_status(status)),
            Ok(Ok(r)) => r.into_inner(),
        };
        codec::decode(&reply.body).map_err(|e| CallError::Network(e.to_string()))
    }

    /// The open `Append` stream to `addr`, opening one if there is none.
    async fn mux(&self, addr: &str, ttl: Duration) -> Result<Arc<AppendMux>, CallError> {
        let link = self.link(addr)?;
        let retry_at = {
            let slot = link.stream.lock().await;
            if let Some(m) = slot.mux.as_ref().filter(|m| !m.is_closed()) {
                return Ok(m.clone());
            }
            slot.retry_at
        };
        if let Some(at) = retry_at {
            // Bounded (at most STREAM_REOPEN_MAX), and not under the lock:
            // every group waiting on this peer waits the same pause at once,
            // not one after another.
            tokio::time::sleep_until(at).await;
        }
        let mut slot = link.stream.lock().await;
        if let Some(m) = slot.mux.as_ref().filter(|m| !m.is_closed()) {
            return Ok(m.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let mut client = link.main.clone();
        let open = ttl.max(STREAM_OPEN_TIMEOUT_MIN);
        let opened =
            match tokio::time::timeout(open, client.append(UnboundedReceiverStream::new(rx))).await
            {
                Err(_) => Err(CallError::Network(format!(
                    "append stream not open within {open:?}"
                ))),
                Ok(Err(status)) => Err(CallError::from_status(status)),
                Ok(Ok(r)) => Ok(r.into_inner()),
            };
        let inbound = match opened {
            Ok(i) => {
                slot.failures = 0;
                slot.retry_at = None;
                i
            }
            Err(e) => {
                let pause = STREAM_REOPEN_MIN
                    .saturating_mul(1 << slot.failures.min(16))
                    .min(STREAM_REOPEN_MAX);
                slot.failures = slot.failures.saturating_add(1);
                slot.retry_at = Some(Instant::now() + pause);
                return Err(e);
            }
        };
        let mux = Arc::new(AppendMux {
            tx: Mutex::new(Some(tx)),
            sessions: Mutex::new(Some(HashMap::default())),
            next_session: AtomicU64::new(0),
            stop: Notify::new(),
            counters: self.counters.clone(),
            opened: Instant::now(),
            last_reply_ms: AtomicU64::new(0),
        });
        self.counters.streams_opened.fetch_add(1, Ordering::Relaxed);
        self.counters.streams_open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(read_replies(
            mux.clone(),
            inbound,
            self.isolated.get().cloned(),
        ));
        slot.mux = Some(mux.clone());
        Ok(mux)
    }

    /// Sends one snapshot in paced chunks on the snapshot connection and
    /// waits for the install reply.
    async fn send_snapshot(
        &self,
        addr: &str,
        shard: ShardId,
        to_replica: NodeId,
        header: (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>),
        data: Vec<u8>,
        ttl: Duration,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        if self.is_isolated() {
            return Err(CallError::Unreachable("isolated (fault injection)".into()).into());
        }
        let mut client = self.link(addr)?.snapshots.clone();
        let opts = self.options();
        let chunk_bytes = opts.snapshot_chunk_bytes.max(1);
        let progress = opts.snapshot_progress_timeout.max(ttl);
        let mut header = codec::encode(&header).map_err(|e| CallError::Network(e.to_string()))?;
        let total = data.len();
        let (tx, rx) = mpsc::channel::<SnapshotChunk>(1);
        let call = client.install_snapshot(ReceiverStream::new(rx));
        let send = async {
            let tx = tx;
            let mut off = 0;
            loop {
                let end = (off + chunk_bytes).min(total);
                let wait = self.bucket.reserve((end - off) as u64, Instant::now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                if self.is_isolated() {
                    return Err(CallError::Unreachable("isolated (fault injection)".into()));
                }
                let chunk = SnapshotChunk {
                    shard,
                    to_replica,
                    from_node: self.me,
                    header: std::mem::take(&mut header),
                    total_bytes: total as u64,
                    data: data[off..end].to_vec(),
                };
                match tokio::time::timeout(progress, tx.send(chunk)).await {
                    Err(_) => {
                        return Err(CallError::Network(format!(
                            "snapshot chunk not accepted within {progress:?}"
                        )))
                    }
                    // The call ended early; its result says why.
                    Ok(Err(_)) => return Ok(()),
                    Ok(Ok(())) => {}
                }
                self.counters
                    .snapshot_chunks
                    .fetch_add(1, Ordering::Relaxed);
                self.counters
                    .snapshot_bytes
                    .fetch_add((end - off) as u64, Ordering::Relaxed);
                off = end;
                if off >= total {
                    return Ok(());
                }
            }
        };
        tokio::pin!(call, send);
        let mut sent = false;
        let mut reply_by = Instant::now() + progress;
        let reply = loop {
            tokio::select! {
                r = &mut call => break r,
                r = &mut send, if !sent => {
                    r?;
                    sent = true;
                    reply_by = Instant::now() + progress;
                }
                _ = tokio::time::sleep_until(reply_by), if sent => {
                    return Err(CallError::Network(format!(
                        "no snapshot install reply within {progress:?}"
                    ))
                    .into());
                }
            }
        };
        let reply = reply.map_err(CallError::from_status)?.into_inner();
        let res: Result<SnapshotResponse<TypeConfig>, String> =
            codec::decode(&reply.body).map_err(|e| CallError::Network(e.to_string()))?;
        let resp = res.map_err(|m| CallError::Network(format!("remote: {m}")))?;
        self.counters.snapshots_sent.fetch_add(1, Ordering::Relaxed);
        Ok(resp)
    }
}

#[derive(Debug)]
enum CallError {
    Unreachable(String),
    Network(String),
}

impl CallError {
    fn from_status(status: tonic::Status) -> Self {
        if status.code() == tonic::Code::Unavailable {
            CallError::Unreachable(status.message().to_string())
        } else {
            CallError::Network(status.to_string())
        }
    }

    fn into_rpc(self) -> RPCError<TypeConfig> {
        match self {
            CallError::Unreachable(m) => {
                RPCError::Unreachable(Unreachable::new(&AnyError::error(m)))
            }
            CallError::Network(m) => RPCError::Network(NetworkError::new(&AnyError::error(m))),
        }
    }
}

impl From<CallError> for StreamingError<TypeConfig> {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unreachable(m) => {
                StreamingError::Unreachable(Unreachable::new(&AnyError::error(m)))
            }
            CallError::Network(m) => {
                StreamingError::Network(NetworkError::new(&AnyError::error(m)))
            }
        }
    }
}

fn remote_err(m: String) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&AnyError::error(format!("remote: {m}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn bucket_allows_a_burst_then_paces_at_the_rate() {
        let t0 = Instant::now();
        let b = TokenBucket::new(64 * MIB, MIB, t0);
        assert_eq!(b.reserve(MIB, t0), Duration::ZERO, "one chunk of burst");
        // The next chunk at once must wait 1/64 s.
        let w = b.reserve(MIB, t0);
        assert!(
            (w.as_secs_f64() - 1.0 / 64.0).abs() < 1e-6,
            "second chunk waits 1/64 s: {w:?}"
        );
        // A third reserved at the same instant queues behind the second.
        let w = b.reserve(MIB, t0);
        assert!((w.as_secs_f64() - 2.0 / 64.0).abs() < 1e-6, "{w:?}");
        // 64 MiB sent back to back take about a second.
        let t1 = t0 + Duration::from_secs(10);
        let b = TokenBucket::new(64 * MIB, MIB, t1);
        let last = (0..64).map(|_| b.reserve(MIB, t1)).last();
        let last = last.expect("64 reservations");
        assert!((last.as_secs_f64() - 63.0 / 64.0).abs() < 1e-6, "{last:?}");
    }

    #[test]
    fn bucket_refills_over_time_up_to_the_burst_only() {
        let t0 = Instant::now();
        let b = TokenBucket::new(MIB, MIB, t0);
        assert_eq!(b.reserve(MIB, t0), Duration::ZERO);
        // Idle for 10 s: only one burst accrues, not ten.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.reserve(MIB, t1), Duration::ZERO);
        assert!(b.reserve(MIB, t1) > Duration::from_millis(900));
    }

    #[test]
    fn bucket_rate_zero_is_unlimited() {
        let t0 = Instant::now();
        let b = TokenBucket::new(0, MIB, t0);
        for _ in 0..100 {
            assert_eq!(b.reserve(100 * MIB, t0), Duration::ZERO);
        }
        b.set(MIB, MIB);
        assert_eq!(b.reserve(MIB, t0), Duration::ZERO);
        assert!(b.reserve(MIB, t0) > Duration::ZERO, "limited after set");
    }
}
