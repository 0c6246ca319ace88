//! Transports: unary calls, or the bidirectional `Stream` RPC multiplexed by
//! correlation id (ops per message ≤ `batch`, messages in flight ≤ `pipeline`),
//! against the charging cluster or the echo baseline.

use crate::echo_pb::echo_client::EchoClient;
use charging_client::proto as pb;
use charging_client::proto::admin_client::AdminClient;
use charging_client::proto::charging_client::ChargingClient;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;

/// A connection: a tonic channel that puts the bearer token (if any) on
/// every call, for nodes with `[auth]` on.
pub type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

/// `authorization: Bearer <JWT>` on every request (nothing without a token).
#[derive(Clone, Default)]
pub struct Bearer(pub Option<AsciiMetadataValue>);

impl Bearer {
    /// From a JWT (`--token`, else `CHARGING_TOKEN`); `None`: no token.
    pub fn new(jwt: Option<&str>) -> anyhow::Result<Bearer> {
        let Some(jwt) = jwt.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(Bearer(None));
        };
        let v = AsciiMetadataValue::try_from(format!("Bearer {jwt}"))
            .map_err(|_| anyhow::anyhow!("--token: not printable ASCII"))?;
        Ok(Bearer(Some(v)))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            r.metadata_mut().insert("authorization", v.clone());
        }
        Ok(r)
    }
}
use tonic::Code;

pub type OpKind = pb::op::Op;
pub type OpOut = pb::op_result::Result;

/// Which server the bench talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Charging,
    Echo,
}

/// Opens `n` HTTP/2 connections to `addr`.
pub async fn connect(addr: &str, n: usize, token: &Bearer) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        // TLS from the environment (CHARGING_CA, as chargectl reads it).
        let ep = match charging_client::ClientTls::from_env()? {
            Some(tls) => tls.endpoint(addr)?,
            None => Endpoint::from_shared(addr.to_string())?,
        };
        let ch = ep
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .initial_connection_window_size(Some(8 << 20))
            .initial_stream_window_size(Some(4 << 20))
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("connect {addr}: {e}"))?;
        out.push(InterceptedService::new(ch, token.clone()));
    }
    Ok(out)
}

/// Result code of an op result (`Err` for a per-op gRPC error in a stream).
pub fn result_code(out: &OpOut) -> Result<i32, Code> {
    use pb::op_result::Result::*;
    Ok(match out {
        Reserve(r) => r.result,
        Update(r) => r.result,
        Terminate(r) => r.result,
        Commit(r) => r.result,
        Release(r) => r.result,
        Refund(r) => r.result,
        Debit(r) => r.result,
        TopUp(r) => r.result,
        Balance(r) => r.result,
        CreateAccount(r) => r.result,
        Error(e) => return Err(Code::from_i32(e.code)),
    })
}

/// Whether an op changes state (and so may be retried only with its request id).
pub fn is_mutating(op: &OpKind) -> bool {
    !matches!(op, OpKind::Balance(_))
}

/// Routes ops to their shard's leader: the shard map as read from a node,
/// refreshed in the background.
pub struct Router {
    /// Public endpoints (`http://...`) of the map's nodes, in map order.
    pub nodes: Vec<String>,
    shards: u32,
    /// Index into `nodes` of each shard's leader (`usize::MAX` = unknown).
    leaders: Arc<Vec<std::sync::atomic::AtomicUsize>>,
    node_ids: Vec<u64>,
    /// Connections per node (set by [`Router::start`]).
    per_node: usize,
}

impl Router {
    /// Reads the shard map; `None` if the node has no map (an echo server, an old node).
    pub async fn open(admin: &Channel, allow_remote: bool) -> anyhow::Result<Option<Router>> {
        let m = match AdminClient::new(admin.clone())
            .shard_map(pb::ShardMapRequest {})
            .await
        {
            Ok(m) => m.into_inner(),
            Err(s) if s.code() == Code::Unimplemented => return Ok(None),
            Err(s) => anyhow::bail!("shard map: {s}"),
        };
        let mut nodes = Vec::new();
        let mut node_ids = Vec::new();
        for n in &m.nodes {
            let url = format!("http://{}", n.public_addr);
            if !allow_remote && !crate::cli::is_loopback(&url) {
                anyhow::bail!(
                    "node {} at {url} is not on loopback; pass --allow-remote",
                    n.node_id
                );
            }
            nodes.push(url);
            node_ids.push(n.node_id);
        }
        let r = Router {
            nodes,
            shards: m.shards,
            leaders: Arc::new(
                (0..m.shards)
                    .map(|_| std::sync::atomic::AtomicUsize::new(usize::MAX))
                    .collect(),
            ),
            node_ids,
            per_node: 1,
        };
        r.install(&m);
        Ok(Some(r))
    }

    fn install(&self, m: &pb::ShardMapResponse) {
        for route in &m.routes {
            let idx = self
                .node_ids
                .iter()
                .position(|n| *n == route.leader)
                .unwrap_or(usize::MAX);
            if let Some(slot) = self.leaders.get(route.shard_id as usize) {
                slot.store(idx, Ordering::Relaxed);
            }
        }
    }

    /// Starts refreshing the map every second (until the process ends; the
    /// task holds only the leader table).
    pub fn start(mut self, admin: Channel, per_node: usize) -> Arc<Router> {
        self.per_node = per_node.max(1);
        let me = Arc::new(self);
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(r) = weak.upgrade() else { return };
                let mut req = tonic::Request::new(pb::ShardMapRequest {});
                req.set_timeout(Duration::from_millis(500));
                if let Ok(m) = AdminClient::new(admin.clone()).shard_map(req).await {
                    r.install(&m.into_inner());
                }
            }
        });
        me
    }

    /// The connection for an op on `account`, given the caller's index.
    fn conn(&self, account: &str, idx: usize, width: usize) -> usize {
        let shard = charging_proto::shard_of(account, self.shards);
        match self.leaders[shard as usize].load(Ordering::Relaxed) {
            usize::MAX => idx % width,
            node => (node * self.per_node + idx % self.per_node) % width,
        }
    }
}

/// The account an op is on.
fn account_of(op: &OpKind) -> &str {
    use OpKind as K;
    match op {
        K::Reserve(m) => &m.account_id,
        K::Update(m) => &m.account_id,
        K::Terminate(m) => &m.account_id,
        K::Commit(m) => &m.account_id,
        K::Release(m) => &m.account_id,
        K::Refund(m) => &m.account_id,
        K::Debit(m) => &m.account_id,
        K::TopUp(m) => &m.account_id,
        K::Balance(m) => &m.account_id,
        K::CreateAccount(m) => &m.account_id,
    }
}

/// A transport: cheap to clone.
#[derive(Clone)]
pub struct Exec {
    kind: ExecKind,
    router: Option<Arc<Router>>,
}

#[derive(Clone)]
enum ExecKind {
    Charging(Arc<Vec<ChargingClient<Channel>>>),
    Echo(Arc<Vec<EchoClient<Channel>>>),
    Stream(Arc<Vec<StreamConn>>),
}

impl Exec {
    /// Unary calls over these channels.
    pub fn unary(target: Target, channels: &[Channel]) -> Exec {
        let kind = match target {
            Target::Charging => ExecKind::Charging(Arc::new(
                channels
                    .iter()
                    .map(|c| ChargingClient::new(c.clone()).max_decoding_message_size(64 << 20))
                    .collect(),
            )),
            Target::Echo => ExecKind::Echo(Arc::new(
                channels
                    .iter()
                    .map(|c| EchoClient::new(c.clone()))
                    .collect(),
            )),
        };
        Exec { kind, router: None }
    }

    /// The same transport, sending each op to its shard leader's connections.
    pub fn routed(mut self, router: Arc<Router>) -> Exec {
        self.router = Some(router);
        self
    }

    /// One multiplexed stream per channel.
    pub async fn stream(
        target: Target,
        channels: &[Channel],
        batch: usize,
        pipeline: usize,
    ) -> anyhow::Result<Exec> {
        let mut conns = Vec::new();
        for ch in channels {
            conns.push(StreamConn::open(target, ch.clone(), batch, pipeline).await?);
        }
        Ok(Exec {
            kind: ExecKind::Stream(Arc::new(conns)),
            router: None,
        })
    }

    /// Number of connections / streams.
    pub fn width(&self) -> usize {
        match &self.kind {
            ExecKind::Charging(v) => v.len(),
            ExecKind::Echo(v) => v.len(),
            ExecKind::Stream(v) => v.len(),
        }
    }

    /// Average ops per stream message so far (streams only).
    pub fn avg_batch(&self) -> Option<f64> {
        let ExecKind::Stream(v) = &self.kind else {
            return None;
        };
        let (ops, msgs) = v.iter().fold((0, 0), |(o, m), c| {
            (
                o + c.sent_ops.load(Ordering::Relaxed),
                m + c.sent_msgs.load(Ordering::Relaxed),
            )
        });
        (msgs > 0).then(|| ops as f64 / msgs as f64)
    }

    /// One attempt of one op, over connection `idx % width`.
    pub async fn call(&self, idx: usize, op: OpKind) -> Result<OpOut, Code> {
        let idx = match &self.router {
            Some(r) => r.conn(account_of(&op), idx, self.width()),
            None => idx,
        };
        match &self.kind {
            ExecKind::Charging(v) => {
                let mut c = v[idx % v.len()].clone();
                unary_charging(&mut c, op).await
            }
            ExecKind::Echo(v) => {
                let mut c = v[idx % v.len()].clone();
                let r = c
                    .unary(pb::Op {
                        correlation_id: 0,
                        op: Some(op),
                    })
                    .await
                    .map_err(|s| s.code())?;
                r.into_inner().result.ok_or(Code::Internal)
            }
            ExecKind::Stream(v) => v[idx % v.len()].call(op).await,
        }
    }
}

async fn unary_charging(c: &mut ChargingClient<Channel>, op: OpKind) -> Result<OpOut, Code> {
    use OpKind as K;
    let r = match op {
        K::Reserve(m) => c.reserve(m).await.map(|r| OpOut::Reserve(r.into_inner())),
        K::Update(m) => c.update(m).await.map(|r| OpOut::Update(r.into_inner())),
        K::Terminate(m) => c
            .terminate(m)
            .await
            .map(|r| OpOut::Terminate(r.into_inner())),
        K::Commit(m) => c.commit(m).await.map(|r| OpOut::Commit(r.into_inner())),
        K::Release(m) => c.release(m).await.map(|r| OpOut::Release(r.into_inner())),
        K::Refund(m) => c.refund(m).await.map(|r| OpOut::Refund(r.into_inner())),
        K::Debit(m) => c.debit(m).await.map(|r| OpOut::Debit(r.into_inner())),
        K::TopUp(m) => c.top_up(m).await.map(|r| OpOut::TopUp(r.into_inner())),
        K::Balance(m) => c.balance(m).await.map(|r| OpOut::Balance(r.into_inner())),
        K::CreateAccount(m) => c
            .create_account(m)
            .await
            .map(|r| OpOut::CreateAccount(r.into_inner())),
    };
    r.map_err(|s| s.code())
}

type Opened = BoxFuture<'static, Result<tonic::Streaming<pb::OpResultBatch>, tonic::Status>>;

/// Opens the bidirectional stream of `target` on `ch`, fed by `rx`.
pub fn open_stream(target: Target, ch: Channel, rx: mpsc::Receiver<pb::OpBatch>) -> Opened {
    let input = ReceiverStream::new(rx);
    match target {
        Target::Charging => Box::pin(async move {
            let mut c = ChargingClient::new(ch).max_decoding_message_size(256 << 20);
            Ok(c.stream(input).await?.into_inner())
        }),
        Target::Echo => Box::pin(async move {
            let mut c = EchoClient::new(ch).max_decoding_message_size(256 << 20);
            Ok(c.stream(input).await?.into_inner())
        }),
    }
}

type Reply = oneshot::Sender<Result<OpOut, Code>>;

struct Pending {
    op: OpKind,
    reply: Reply,
}

type Waiters = Arc<Mutex<HashMap<u64, Reply>>>;

/// One bidirectional stream shared by many callers. A sender task gathers
/// waiting ops into messages of at most `batch` ops and keeps at most
/// `pipeline` messages unanswered; a receiver task hands each result to its
/// caller by correlation id. A broken stream fails its in-flight ops with
/// UNAVAILABLE (callers retry with the same request id) and is reopened.
pub struct StreamConn {
    tx: mpsc::Sender<Pending>,
    sent_ops: Arc<AtomicU64>,
    sent_msgs: Arc<AtomicU64>,
}

impl StreamConn {
    pub async fn open(
        target: Target,
        ch: Channel,
        batch: usize,
        pipeline: usize,
    ) -> anyhow::Result<StreamConn> {
        let batch = batch.clamp(1, 4096);
        let pipeline = pipeline.max(1);
        let (tx, mut rx) = mpsc::channel::<Pending>(batch * pipeline.min(1024) + 1024);
        let sent_ops = Arc::new(AtomicU64::new(0));
        let sent_msgs = Arc::new(AtomicU64::new(0));
        let (so, sm) = (sent_ops.clone(), sent_msgs.clone());
        // Fail fast if the server is not there.
        let (mut out_tx, mut results) = Self::start(target, ch.clone(), pipeline).await?;
        tokio::spawn(async move {
            let mut next_cid: u64 = 1;
            let mut carry: Option<Pending> = None;
            'outer: loop {
                let sem = Arc::new(Semaphore::new(pipeline));
                let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
                let recv = tokio::spawn(Self::receive(results, waiters.clone(), sem.clone()));
                loop {
                    let first = match carry.take() {
                        Some(p) => p,
                        None => match rx.recv().await {
                            Some(p) => p,
                            None => break 'outer,
                        },
                    };
                    let mut ops = Vec::with_capacity(batch);
                    let mut replies = Vec::with_capacity(batch);
                    fn push(ops: &mut Vec<pb::Op>, replies: &mut Vec<Reply>, p: Pending) {
                        ops.push(pb::Op {
                            correlation_id: 0,
                            op: Some(p.op),
                        });
                        replies.push(p.reply);
                    }
                    push(&mut ops, &mut replies, first);
                    let mut yields = 0;
                    while ops.len() < batch {
                        match rx.try_recv() {
                            Ok(p) => push(&mut ops, &mut replies, p),
                            Err(mpsc::error::TryRecvError::Empty) if yields < 2 => {
                                // Let callers woken by the last results add theirs.
                                yields += 1;
                                tokio::task::yield_now().await;
                            }
                            Err(_) => break,
                        }
                    }
                    let Ok(permit) = sem.acquire().await else {
                        break;
                    };
                    permit.forget();
                    {
                        let mut w = waiters.lock().unwrap_or_else(|e| e.into_inner());
                        for (op, reply) in ops.iter_mut().zip(replies) {
                            op.correlation_id = next_cid;
                            w.insert(next_cid, reply);
                            next_cid += 1;
                        }
                    }
                    so.fetch_add(ops.len() as u64, Ordering::Relaxed);
                    sm.fetch_add(1, Ordering::Relaxed);
                    if out_tx.send(pb::OpBatch { ops }).await.is_err() {
                        break;
                    }
                }
                // The stream broke: fail what is in flight, then reopen.
                recv.abort();
                fail_all(&waiters);
                let mut tries = 0;
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    match Self::start(target, ch.clone(), pipeline).await {
                        Ok((t, r)) => {
                            (out_tx, results) = (t, r);
                            break;
                        }
                        Err(_) if tries < 50 => tries += 1,
                        Err(_) => {
                            // Give up: answer everyone UNAVAILABLE from now on.
                            while let Some(p) = rx.recv().await {
                                let _ = p.reply.send(Err(Code::Unavailable));
                            }
                            break 'outer;
                        }
                    }
                }
            }
        });
        Ok(StreamConn {
            tx,
            sent_ops,
            sent_msgs,
        })
    }

    async fn start(
        target: Target,
        ch: Channel,
        pipeline: usize,
    ) -> anyhow::Result<(
        mpsc::Sender<pb::OpBatch>,
        tonic::Streaming<pb::OpResultBatch>,
    )> {
        let (out_tx, out_rx) = mpsc::channel(pipeline.min(4096));
        let results = tokio::time::timeout(Duration::from_secs(5), open_stream(target, ch, out_rx))
            .await
            .map_err(|_| anyhow::anyhow!("opening the stream timed out"))??;
        Ok((out_tx, results))
    }

    async fn receive(
        mut results: tonic::Streaming<pb::OpResultBatch>,
        waiters: Waiters,
        sem: Arc<Semaphore>,
    ) {
        while let Some(Ok(batch)) = results.next().await {
            {
                let mut w = waiters.lock().unwrap_or_else(|e| e.into_inner());
                for r in batch.results {
                    if let Some(tx) = w.remove(&r.correlation_id) {
                        let _ = tx.send(r.result.ok_or(Code::Internal));
                    }
                }
            }
            sem.add_permits(1);
        }
        // Stream ended or failed: nobody in flight will get an answer.
        sem.close();
        fail_all(&waiters);
    }

    /// One op; resolves when its result arrives.
    pub async fn call(&self, op: OpKind) -> Result<OpOut, Code> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { op, reply })
            .await
            .map_err(|_| Code::Unavailable)?;
        rx.await.unwrap_or(Err(Code::Unavailable))
    }
}

fn fail_all(waiters: &Waiters) {
    let drained: Vec<_> = waiters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .collect();
    for (_, tx) in drained {
        let _ = tx.send(Err(Code::Unavailable));
    }
}

/// The shape of a bulk run: ops per message, messages in flight per stream,
/// and rounds of retries.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    pub batch: usize,
    pub pipeline: usize,
    pub passes: u32,
}

/// Runs `ids` as explicit batches over one stream per channel (the bulk path
/// for preload and read-back): `make(id)` builds op `id` (the same op on every
/// retry, so its request id is stable), `on_result` sees each answer and says
/// whether to retry it. Ops that failed or were lost are retried, up to
/// `passes` rounds in all. Returns the ids still unresolved.
pub async fn batched<F, G>(
    target: Target,
    channels: &[Channel],
    ids: Vec<u64>,
    shape: Bulk,
    make: F,
    on_result: G,
) -> anyhow::Result<Vec<u64>>
where
    F: Fn(u64) -> OpKind + Send + Sync + 'static,
    G: Fn(u64, Result<OpOut, Code>) -> bool + Send + Sync + 'static,
{
    let Bulk {
        batch,
        pipeline,
        passes,
    } = shape;
    let make = Arc::new(make);
    let on_result = Arc::new(on_result);
    let batch = batch.clamp(1, 4096);
    let mut todo = ids;
    for pass in 0..passes.max(1) {
        if todo.is_empty() {
            break;
        }
        if pass > 0 {
            tokio::time::sleep(Duration::from_millis(100 << pass.min(4))).await;
        }
        let chunks: Vec<Vec<u64>> = todo.chunks(batch).map(|c| c.to_vec()).collect();
        let queue = Arc::new(Mutex::new(chunks));
        let retry = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for ch in channels {
            let (queue, retry, make, on_result) = (
                queue.clone(),
                retry.clone(),
                make.clone(),
                on_result.clone(),
            );
            let ch = ch.clone();
            tasks.push(tokio::spawn(async move {
                batched_one(target, ch, pipeline, queue, retry, make, on_result).await
            }));
        }
        for t in tasks {
            t.await??;
        }
        let left: Vec<u64> = queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .flatten()
            .collect();
        todo = std::mem::take(&mut *retry.lock().unwrap_or_else(|e| e.into_inner()));
        todo.extend(left);
        todo.sort_unstable();
    }
    Ok(todo)
}

async fn batched_one<F, G>(
    target: Target,
    ch: Channel,
    pipeline: usize,
    queue: Arc<Mutex<Vec<Vec<u64>>>>,
    retry: Arc<Mutex<Vec<u64>>>,
    make: Arc<F>,
    on_result: Arc<G>,
) -> anyhow::Result<()>
where
    F: Fn(u64) -> OpKind + Send + Sync + 'static,
    G: Fn(u64, Result<OpOut, Code>) -> bool + Send + Sync + 'static,
{
    let pipeline = pipeline.clamp(1, 64);
    let (tx, rx) = mpsc::channel(pipeline);
    let mut results = match open_stream(target, ch, rx).await {
        Ok(r) => r,
        Err(_) => {
            // This connection is down: put its share back for the next pass.
            let mut q = queue.lock().unwrap_or_else(|e| e.into_inner());
            let mut r = retry.lock().unwrap_or_else(|e| e.into_inner());
            r.extend(q.drain(..).flatten());
            return Ok(());
        }
    };
    // Chunks in flight, by their first id (results carry ids, in any order).
    let inflight: Arc<Mutex<HashMap<u64, Vec<u64>>>> = Arc::new(Mutex::new(HashMap::new()));
    let sem = Arc::new(Semaphore::new(pipeline));
    let sender = {
        let (queue, inflight, sem) = (queue.clone(), inflight.clone(), sem.clone());
        tokio::spawn(async move {
            loop {
                let Ok(p) = sem.acquire().await else { return };
                p.forget();
                let Some(chunk) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                    return;
                };
                let ops = chunk
                    .iter()
                    .map(|&id| pb::Op {
                        correlation_id: id,
                        op: Some(make(id)),
                    })
                    .collect();
                let key = chunk.iter().copied().min().unwrap_or(0);
                inflight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, chunk);
                if tx.send(pb::OpBatch { ops }).await.is_err() {
                    return;
                }
            }
        })
    };
    loop {
        let done = sender.is_finished()
            && inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty();
        if done {
            break;
        }
        let next = tokio::time::timeout(Duration::from_millis(50), results.next()).await;
        let batch = match next {
            Err(_) => continue,
            Ok(Some(Ok(b))) => b,
            Ok(_) => break,
        };
        let key = batch
            .results
            .iter()
            .map(|r| r.correlation_id)
            .min()
            .unwrap_or(0);
        inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        let mut again = Vec::new();
        for r in batch.results {
            let id = r.correlation_id;
            if on_result(id, r.result.ok_or(Code::Internal)) {
                again.push(id);
            }
        }
        if !again.is_empty() {
            retry
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(again);
        }
        sem.add_permits(1);
    }
    sender.abort();
    sem.close();
    // Whatever is still in flight or queued gets another pass.
    let mut r = retry.lock().unwrap_or_else(|e| e.into_inner());
    r.extend(
        inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .flat_map(|(_, v)| v),
    );
    Ok(())
}
