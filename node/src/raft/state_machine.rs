//! The shard state machine: decodes nothing itself (entries arrive typed),
//! applies each [`Batch`] to the group's [`GroupState`] (a shard's ledger
//! [`ShardState`], or the metadata group's cluster map) with log time, and
//! makes frozen copy-on-write views of it on demand.
//!
//! A view is made when someone asks ([`ShardStore::view`]) and kept until
//! the next apply: not after every entry. Holding a view shares the state's
//! tree nodes, so the next write to each account copies its path and the
//! account itself; publishing per entry made every replica pay that on every
//! operation. The shard actor reads single accounts and tariffs under the
//! lock instead ([`ShardStore::read`]), always current: apply updates the
//! state before an entry's responder fires. Balance reads do the same
//! ([`ShardStore::read_at`]): they wait at most for the entry being applied.
//!
//! With a snapshot file (a node with a data dir), every snapshot built or
//! installed is written to it (temp file, fsync, rename) before openraft
//! hears of it, so openraft only purges log entries a durable snapshot covers;
//! [`ShardStore::open`] restores the state from it and openraft re-applies
//! the committed log after it. Encoding and writing run on a blocking thread
//! from a frozen copy-on-write view: requests never wait for a snapshot.
use super::{Batch, BatchResult, GroupEvent, TypeConfig};
use crate::cluster_map::ClusterMap;
use crate::codec;
use crate::ledger::{Applied, Limits, Reply, ShardState};
use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Lets one policy snapshot be built at a time on a node. All replicas of a
/// shard reach the snapshot policy's entry count at about the same time, and
/// with evenly spread load so do a node's shards: each build encodes its
/// whole shard on a blocking thread, so without the gate a node's builds
/// compete for the cores at once. Measured (1M accounts, `snapshot_logs =
/// 2000`, 3,000 ops/s open loop), the worst 1-s p99 went from 40.5 to
/// 37.0 ms with it, within run-to-run noise: most of the stall had gone with
/// views on demand (175.7 ms before). A build refused here is deferred by
/// openraft and asked again on a later entry; a forced one (a follower
/// needs it) is never refused.
#[derive(Clone, Default)]
pub struct SnapshotGate(Arc<std::sync::atomic::AtomicBool>);

impl SnapshotGate {
    fn try_take(&self) -> Option<GatePass> {
        self.0
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| GatePass(self.0.clone()))
    }
}

/// Held by a policy snapshot's builder until it is done (or dropped).
struct GatePass(Arc<std::sync::atomic::AtomicBool>);

impl Drop for GatePass {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The replicated state of one Raft group: a shard's ledger, and in the
/// metadata group the cluster map too. The ledger (its own crate) knows
/// nothing of the map; the map is the control plane's, applied here. Derefs
/// to the ledger, which is what shard groups read.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct GroupState {
    pub ledger: ShardState,
    /// The cluster map (metadata group only; `None` in shard groups).
    pub cluster_map: Option<Arc<ClusterMap>>,
}

impl std::ops::Deref for GroupState {
    type Target = ShardState;
    fn deref(&self) -> &ShardState {
        &self.ledger
    }
}

impl GroupState {
    fn new(limits: Limits) -> Self {
        GroupState {
            ledger: ShardState::new(limits),
            cluster_map: None,
        }
    }

    /// Total and deterministic, as [`ShardState::apply`]. A map change is
    /// compare-and-set on the version: `Conflict` if another won.
    pub fn apply(&mut self, ev: &GroupEvent, log_ts_ms: u64) -> Applied {
        match ev {
            GroupEvent::Ledger(e) => self.ledger.apply(e, log_ts_ms),
            GroupEvent::ClusterMap {
                map,
                expected_version,
            } => {
                let current = self.cluster_map.as_ref().map_or(0, |m| m.version);
                if current != *expected_version {
                    return Applied::Conflict;
                }
                let mut map = map.clone();
                map.version = current + 1;
                let version = map.version;
                self.cluster_map = Some(Arc::new(map));
                Applied::Ok(Reply::ClusterMapSet { version })
            }
        }
    }
}

/// A frozen view of a shard's applied state.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub state: GroupState,
    pub applied: Option<LogIdOf<TypeConfig>>,
    pub log_ts_ms: u64,
}

/// The latest snapshot's meta, and its bytes when kept in memory.
type CurrentSnapshot = (SnapshotMetaOf<TypeConfig>, Option<Arc<Vec<u8>>>);

#[derive(Debug)]
struct Inner {
    state: GroupState,
    applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    /// `max` of every applied batch's log_ts: log time never goes backwards.
    log_ts_ms: u64,
    /// The latest snapshot: its meta, and its bytes only for a memory-only
    /// store. With a snapshot file the bytes live in the file alone (read
    /// back when openraft asks): keeping them would cost every replica the
    /// serialized size of its whole state in RAM.
    current: Option<CurrentSnapshot>,
    /// The view handed out since the last apply, if any (dropped by apply,
    /// so an unread state shares nothing and is written in place).
    view: Option<Arc<Published>>,
}

/// Shard state machine handle (cheap to clone).
#[derive(Clone)]
pub struct ShardStore {
    inner: Arc<Mutex<Inner>>,
    published: Arc<watch::Sender<Arc<Published>>>,
    /// Where snapshots are kept; `None` = memory only.
    snapshot_file: Option<Arc<PathBuf>>,
    /// Accounts bulk-created since the last snapshot was built (see
    /// [`ShardStore::bulk_since_snapshot`]).
    bulk_since_snapshot: Arc<AtomicU64>,
    /// Shared by the node's shard stores; `None`: never deferred.
    gate: Option<SnapshotGate>,
    /// Serializes the newer-than check and rename of the snapshot file.
    persist_lock: Arc<Mutex<()>>,
    /// Told of a snapshot file that could not be written (see
    /// [`ShardStore::on_write_error`]).
    write_error: Option<WriteErrorSink>,
}

/// Where a store reports a failed snapshot write: the node stops (a disk
/// that fails a snapshot fails the WAL next; see `node::start`).
pub type WriteErrorSink = Arc<dyn Fn(String) + Send + Sync>;

/// A snapshot as stored in its file.
type StoredSnapshot = (SnapshotMetaOf<TypeConfig>, Vec<u8>);

/// A snapshot file: `MAGIC | version u32 | crc32 u32 | meta length u32 |
/// meta | data`, little endian; the checksum covers everything after it.
/// The meta comes first and on its own, so the newer-than check before a
/// rename reads a few bytes, not the whole state.
const SNAPSHOT_MAGIC: &[u8; 8] = b"CHGSNAP\0";
const SNAPSHOT_VERSION: u32 = 1;
const SNAPSHOT_HEAD_BYTES: usize = 8 + 4 + 4 + 4;

fn encode_snapshot_file(meta: &SnapshotMetaOf<TypeConfig>, data: &[u8]) -> io::Result<Vec<u8>> {
    let meta = codec::encode(meta).map_err(codec::to_io)?;
    let mut body = Vec::with_capacity(4 + meta.len() + data.len());
    body.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    body.extend_from_slice(&meta);
    body.extend_from_slice(data);
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The meta of a snapshot file's head, checking magic and version only (for
/// the newer-than check; a full read checks the checksum too).
fn snapshot_file_meta(path: &Path, bytes: &[u8]) -> io::Result<SnapshotMetaOf<TypeConfig>> {
    let bad = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot {}: {why}", path.display()),
        )
    };
    if bytes.len() < SNAPSHOT_HEAD_BYTES || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(bad("not a snapshot file (bad magic)".into()));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != SNAPSHOT_VERSION {
        return Err(bad(format!(
            "format version {version}, this build reads {SNAPSHOT_VERSION}"
        )));
    }
    let meta_len = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")) as usize;
    let meta = bytes
        .get(SNAPSHOT_HEAD_BYTES..SNAPSHOT_HEAD_BYTES + meta_len)
        .ok_or_else(|| bad("cut short".into()))?;
    codec::decode(meta).map_err(|e| bad(format!("meta: {e}")))
}

/// A whole snapshot file, checksum included: damage is an error naming the
/// file, never a state silently restored from bad bytes.
fn decode_snapshot_file(path: &Path, bytes: &[u8]) -> io::Result<StoredSnapshot> {
    let meta = snapshot_file_meta(path, bytes)?;
    let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    if crc32fast::hash(&bytes[16..]) != crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot {}: checksum mismatch (damaged)", path.display()),
        ));
    }
    let meta_len = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")) as usize;
    Ok((meta, bytes[SNAPSHOT_HEAD_BYTES + meta_len..].to_vec()))
}

/// Temp files get unique names: a build and an install of the same shard
/// may write at once.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically and durably: a uniquely named temp
/// file, fsync, rename, fsync of the directory. Under `lock`, and only if
/// the file there is not newer (`last_log_id`) than `meta`: a slower write of
/// an older snapshot never replaces a newer one.
fn write_durably(
    path: &Path,
    meta: &SnapshotMetaOf<TypeConfig>,
    bytes: &[u8],
    lock: &Mutex<()>,
) -> io::Result<()> {
    let tmp = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    let _g = lock.lock().unwrap_or_else(|e| e.into_inner());
    let newer_there = match std::fs::File::open(path) {
        Ok(f) => {
            use std::io::Read;
            let mut head = Vec::new();
            f.take(64 * 1024).read_to_end(&mut head)?;
            snapshot_file_meta(path, &head).is_ok_and(|m| m.last_log_id > meta.last_log_id)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    if newer_there {
        let _ = std::fs::remove_file(&tmp);
        return Ok(());
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Deletes temp files a crash left beside `path` (`<name>.tmp.<pid>.<n>`).
fn remove_temp_files(path: &Path) {
    let (Some(dir), Some(stem)) = (path.parent(), path.file_stem().and_then(|s| s.to_str())) else {
        return;
    };
    let prefix = format!("{stem}.tmp.");
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Saves a snapshot to its file off the async threads.
async fn persist(
    path: Option<Arc<PathBuf>>,
    lock: Arc<Mutex<()>>,
    meta: SnapshotMetaOf<TypeConfig>,
    data: Arc<Vec<u8>>,
) -> io::Result<()> {
    let Some(path) = path else { return Ok(()) };
    tokio::task::spawn_blocking(move || {
        let bytes = encode_snapshot_file(&meta, &data)?;
        write_durably(&path, &meta, &bytes, &lock)
    })
    .await
    .map_err(io::Error::other)?
}

impl ShardStore {
    /// A memory-only state machine.
    pub fn new(limits: Limits) -> Self {
        Self::empty(limits, None)
    }

    /// A state machine that keeps its snapshots in `snapshot_file`, restored
    /// from it if it exists (a restart).
    pub fn open(limits: Limits, snapshot_file: PathBuf) -> io::Result<Self> {
        let store = Self::empty(limits, Some(Arc::new(snapshot_file.clone())));
        remove_temp_files(&snapshot_file);
        match std::fs::read(&snapshot_file) {
            Ok(bytes) => {
                let (meta, data) = decode_snapshot_file(&snapshot_file, &bytes)?;
                let body: SnapshotBody = codec::decode(&data).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("snapshot {}: {e}", snapshot_file.display()),
                    )
                })?;
                store.restore(&meta, body, Arc::new(data));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(store)
    }

    /// Replaces the state with a snapshot's.
    fn restore(&self, meta: &SnapshotMetaOf<TypeConfig>, body: SnapshotBody, data: Arc<Vec<u8>>) {
        let mut g = self.lock();
        g.state = body.state;
        g.log_ts_ms = body.log_ts_ms;
        g.applied = meta.last_log_id;
        g.membership = meta.last_membership.clone();
        g.current = Some((meta.clone(), self.keep_bytes(data)));
        g.view = None;
        self.notify(&mut g);
    }

    fn empty(limits: Limits, snapshot_file: Option<Arc<PathBuf>>) -> Self {
        let state = GroupState::new(limits);
        let (tx, _) = watch::channel(Arc::new(Published {
            state: state.clone(),
            applied: None,
            log_ts_ms: 0,
        }));
        ShardStore {
            inner: Arc::new(Mutex::new(Inner {
                state,
                applied: None,
                membership: Default::default(),
                log_ts_ms: 0,
                current: None,
                view: None,
            })),
            published: Arc::new(tx),
            snapshot_file,
            bulk_since_snapshot: Arc::default(),
            gate: None,
            persist_lock: Arc::default(),
            write_error: None,
        }
    }

    /// Reports a snapshot file that could not be written (full disk, I/O
    /// error) to `sink`, besides failing the build or install.
    pub fn on_write_error(mut self, sink: WriteErrorSink) -> Self {
        self.write_error = Some(sink);
        self
    }

    /// `persist`, reporting a failure to the write-error sink.
    async fn persist_reported(
        &self,
        meta: &SnapshotMetaOf<TypeConfig>,
        data: Arc<Vec<u8>>,
    ) -> io::Result<()> {
        let r = persist(
            self.snapshot_file.clone(),
            self.persist_lock.clone(),
            meta.clone(),
            data,
        )
        .await;
        if let (Err(e), Some(sink)) = (&r, &self.write_error) {
            let file = self
                .snapshot_file
                .as_deref()
                .map(|p| p.display().to_string());
            sink(format!(
                "snapshot {} could not be written: {e}",
                file.unwrap_or_default()
            ));
        }
        r
    }

    /// Builds policy snapshots only while `gate` is free (see [`SnapshotGate`]).
    pub fn with_gate(mut self, gate: SnapshotGate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Snapshot bytes are kept in memory only when there is no file.
    fn keep_bytes(&self, data: Arc<Vec<u8>>) -> Option<Arc<Vec<u8>>> {
        self.snapshot_file.is_none().then_some(data)
    }

    /// Accounts created by bulk events since the last snapshot was built.
    /// Bulk entries are few but large, so the entry-count snapshot policy
    /// would leave them in the in-memory log for a long time; the shard's
    /// compactor snapshots and purges once this grows large.
    pub fn bulk_since_snapshot(&self) -> u64 {
        self.bulk_since_snapshot.load(Ordering::Relaxed)
    }

    /// A frozen view of the applied state, current as of this call.
    pub fn view(&self) -> Arc<Published> {
        let mut g = self.lock();
        Self::view_of(&mut g)
    }

    /// Reads the applied state in place, under the state machine's lock (so
    /// at most one entry's apply is waited for): for small reads on the hot
    /// path, which must not make a view (see the module doc).
    pub fn read<R>(&self, f: impl FnOnce(&ShardState) -> R) -> R {
        f(&self.lock().state.ledger)
    }

    /// [`ShardStore::read`], with the log time of the state read.
    pub fn read_at<R>(&self, f: impl FnOnce(&ShardState, u64) -> R) -> R {
        let g = self.lock();
        f(&g.state.ledger, g.log_ts_ms)
    }

    /// The last applied log id.
    pub fn applied(&self) -> Option<LogIdOf<TypeConfig>> {
        self.lock().applied
    }

    /// Views of the applied state as it changes (the metadata group's map
    /// watchers). A subscribed store makes a view after every apply.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        let mut g = self.lock();
        let rx = self.published.subscribe();
        // The channel holds whatever was last sent: bring it up to date.
        self.published.send_replace(Self::view_of(&mut g));
        rx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn view_of(g: &mut Inner) -> Arc<Published> {
        if let Some(v) = &g.view {
            return v.clone();
        }
        let v = Arc::new(Published {
            state: g.state.clone(),
            applied: g.applied,
            log_ts_ms: g.log_ts_ms,
        });
        g.view = Some(v.clone());
        v
    }

    /// Publishes a new view to subscribers, if there are any.
    fn notify(&self, g: &mut Inner) {
        if self.published.receiver_count() > 0 {
            self.published.send_replace(Self::view_of(g));
        }
    }
}

/// Snapshot body: the shard state plus its log time.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotBody {
    state: GroupState,
    log_ts_ms: u64,
}

/// Builds a snapshot from a frozen view taken when the builder was made, so
/// serialization runs without holding the state machine.
pub struct Builder {
    /// The node's snapshot gate, for a policy snapshot (released on drop).
    _pass: Option<GatePass>,
    store: ShardStore,
    meta: SnapshotMetaOf<TypeConfig>,
    body: SnapshotBody,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(
        &mut self,
    ) -> Result<SnapshotOf<TypeConfig, Self::SnapshotData>, io::Error> {
        let body = std::mem::replace(
            &mut self.body,
            SnapshotBody {
                state: GroupState::new(Limits::default()),
                log_ts_ms: 0,
            },
        );
        self.store.bulk_since_snapshot.store(0, Ordering::Relaxed);
        let data = tokio::task::spawn_blocking(move || codec::encode(&body))
            .await
            .map_err(io::Error::other)?
            .map_err(codec::to_io)?;
        let data = Arc::new(data);
        self.store
            .persist_reported(&self.meta, data.clone())
            .await?;
        {
            let mut g = self.store.lock();
            let newer = match &g.current {
                Some((m, _)) => m.last_log_id < self.meta.last_log_id,
                None => true,
            };
            if newer {
                g.current = Some((self.meta.clone(), self.store.keep_bytes(data.clone())));
            }
        }
        let data = Arc::try_unwrap(data).unwrap_or_else(|d| (*d).clone());
        Ok(SnapshotOf::<TypeConfig, _> {
            meta: self.meta.clone(),
            snapshot: Cursor::new(data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for ShardStore {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let g = self.lock();
        Ok((g.applied, g.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let result = {
                let mut g = self.lock();
                g.view = None;
                g.applied = Some(entry.log_id);
                let result = match &entry.payload {
                    EntryPayload::Blank => BatchResult::default(),
                    EntryPayload::Normal(Batch { log_ts_ms, events }) => {
                        g.log_ts_ms = g.log_ts_ms.max(*log_ts_ms);
                        let ts = g.log_ts_ms;
                        let mut out = Vec::with_capacity(events.len());
                        for ev in events.iter() {
                            if let GroupEvent::Ledger(crate::ledger::Event::BulkCreate {
                                accounts,
                                ..
                            }) = ev
                            {
                                self.bulk_since_snapshot
                                    .fetch_add(accounts.len() as u64, Ordering::Relaxed);
                            }
                            out.push(g.state.apply(ev, ts));
                        }
                        BatchResult(out)
                    }
                    EntryPayload::Membership(m) => {
                        g.membership =
                            StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), m.clone());
                        BatchResult::default()
                    }
                };
                self.notify(&mut g);
                result
            };
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, force: bool) -> Option<Self::SnapshotBuilder> {
        let pass = match &self.gate {
            Some(gate) if !force => Some(gate.try_take()?),
            _ => None,
        };
        let mut b = self.get_snapshot_builder().await;
        b._pass = pass;
        Some(b)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let g = self.lock();
        Builder {
            _pass: None,
            store: self.clone(),
            meta: SnapshotMetaOf::<TypeConfig> {
                last_log_id: g.applied,
                last_membership: g.membership.clone(),
            },
            body: SnapshotBody {
                state: g.state.clone(),
                log_ts_ms: g.log_ts_ms,
            },
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        // Decode before making it durable: a bad snapshot changes nothing.
        let body: SnapshotBody = codec::decode(&data).map_err(codec::to_io)?;
        let data = Arc::new(data);
        self.persist_reported(meta, data.clone()).await?;
        self.restore(meta, body, data);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Self::SnapshotData>>, io::Error> {
        let current = self.lock().current.clone();
        match current {
            None => Ok(None),
            Some((meta, Some(data))) => Ok(Some(SnapshotOf::<TypeConfig, _> {
                meta,
                snapshot: Cursor::new((*data).clone()),
            })),
            Some((_, None)) => {
                // File-backed: the file holds the latest durable snapshot.
                let Some(path) = self.snapshot_file.clone() else {
                    return Ok(None);
                };
                let (meta, data): StoredSnapshot = tokio::task::spawn_blocking(move || {
                    let bytes = std::fs::read(&*path)?;
                    decode_snapshot_file(&path, &bytes)
                })
                .await
                .map_err(io::Error::other)??;
                Ok(Some(SnapshotOf::<TypeConfig, _> {
                    meta,
                    snapshot: Cursor::new(data),
                }))
            }
        }
    }
}
