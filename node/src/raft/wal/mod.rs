//! The disk log engine: one write-ahead log per node, shared by every shard
//! group (DESIGN §4).
//!
//! - [`Wal`] owns a directory of segment files and one writer OS thread.
//!   Groups send it write requests on a bounded channel; the thread writes
//!   everything queued in one `write_all` and, with [`FsyncPolicy::Always`],
//!   one fdatasync for all of them (group commit), then completes them.
//! - [`WalLog`] is one group's engine (openraft's `RaftLogStorage`). Its
//!   entries are also kept in memory, so reads never touch the disk.
//! - `record`: the frame and record format; `state`: the per-group state that
//!   replay rebuilds and the segment bookkeeping; `writer`: the thread.
//!
//! Segments are `<seq>.wal`, rotated at [`WalOptions::segment_bytes`]. A new
//! segment starts with a header per group (vote, committed, purged, last log
//! id), so an old segment is needed only for its entries, and is deleted once
//! all of them are purged or truncated away.
//!
//! Recovery replays the segments in order. A short or corrupt frame at the
//! end of the last segment, with nothing but garbage after it, is the
//! unsynced tail of a crash: the file is cut there. Anywhere else, or with a
//! good frame after it, it is damage: an error naming the file and offset. Each open
//! then writes to a new segment (headers first), never after a cut tail.
mod record;
mod state;
mod writer;

use crate::codec;
use crate::config::FsyncPolicy;
use crate::maps::HashMap;
use crate::raft::log_store::LogEngine;
use crate::raft::{ShardId, TypeConfig};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogReader};
use record::{Entry, LogId, Record, Scan, Vote};
use state::{GroupState, Op, Tracker};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot};
use writer::{Done, Meters, Req, Writer};

/// Tuning of a [`Wal`]; the defaults suit a node.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// A segment is closed and a new one started past this size. Bounds the
    /// disk a purged log still holds and the work of a replay.
    pub segment_bytes: u64,
    /// Write requests queued for the writer before callers wait.
    pub queue_depth: usize,
    /// Bytes of records the writer takes into one write at most.
    pub batch_bytes_max: usize,
    /// With fsync `always`: fdatasyncs of the log in flight at once, each
    /// covering everything written before it began. 1 is strictly one at a
    /// time (still overlapping the next write), the default: 4 did not beat
    /// it on the dev VM (benches/wal.rs); more may help on disks that serve
    /// overlapping flushes faster.
    pub syncs_in_flight_max: usize,
    /// `node` label of the metrics, if any.
    pub node_label: Option<metrics::SharedString>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            queue_depth: 1024,
            batch_bytes_max: 4 << 20,
            syncs_in_flight_max: 1,
            node_label: None,
        }
    }
}

/// Totals since [`Wal::open`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    pub fsyncs: u64,
    /// Records written (not counting replayed ones).
    pub records: u64,
    /// Bytes written, frames included.
    pub bytes: u64,
    /// Segment files on disk now.
    pub segments: usize,
}

#[derive(Debug, Default)]
struct Counters {
    fsyncs: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    segments: AtomicUsize,
    /// The writer's first I/O error (a write, an fsync, a full disk).
    failed: std::sync::OnceLock<String>,
}

/// A node's write-ahead log. Cheap to clone; the writer thread stops on
/// [`Wal::close`] or when the last clone (and every [`WalLog`]) is dropped.
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    policy: FsyncPolicy,
    /// `None` once closed.
    tx: Mutex<Option<mpsc::Sender<Req>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    groups: Mutex<HashMap<ShardId, Arc<Group>>>,
    counters: Arc<Counters>,
}

struct Group {
    state: Mutex<GroupState>,
    /// Held from the memory update until the request is queued, so a
    /// group's records reach the file in the order its state changed.
    order: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere mid-update leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "wal: closed")
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Wal {
    /// Opens (or creates) the log in `dir` with default options.
    pub fn open(dir: &Path, policy: FsyncPolicy) -> io::Result<Wal> {
        Wal::open_with(dir, policy, WalOptions::default())
    }

    /// Replays every segment of `dir` (created if missing), cuts a torn tail
    /// off the last one and starts the writer thread.
    pub fn open_with(dir: &Path, policy: FsyncPolicy, opts: WalOptions) -> io::Result<Wal> {
        assert!(opts.segment_bytes > 0 && opts.queue_depth > 0 && opts.batch_bytes_max > 0);
        assert!(opts.syncs_in_flight_max > 0);
        std::fs::create_dir_all(dir)?;
        let Recovered {
            groups,
            mut tracker,
            last,
        } = replay(dir)?;
        // Writes go to a new segment that starts with every group's header:
        // the last one may end in a cut torn write, or even in half-written
        // headers, and older segments may only be deleted while a later
        // segment holds a whole set of headers.
        let active_seq = last.map_or(1, |(seq, _)| seq + 1);
        let mut headers = Vec::new();
        writer::header_frames(&tracker, &mut headers)?;
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(dir, active_seq))?;
        file.write_all(&headers)?;
        file.sync_data()?;
        sync_dir(dir)?;
        tracker.add_segment(active_seq);
        let active_bytes = headers.len() as u64;
        let counters = Arc::new(Counters::default());
        counters
            .segments
            .store(tracker.segment_count(), Ordering::Relaxed);
        let labels: Vec<metrics::Label> = opts
            .node_label
            .iter()
            .map(|n| metrics::Label::new("node", n.clone()))
            .collect();
        let (tx, rx) = mpsc::channel(opts.queue_depth);
        let meters = Meters {
            counters: counters.clone(),
            fsyncs_total: metrics::counter!("charging_wal_fsyncs_total", labels.clone()),
            fsync_seconds: metrics::histogram!("charging_wal_fsync_seconds", labels.clone()),
            batch_records: metrics::histogram!("charging_wal_batch_records", labels.clone()),
            failed_gauge: metrics::gauge!("charging_wal_failed", labels),
        };
        let mut writer = Writer::new(
            dir.to_path_buf(),
            policy,
            opts,
            file,
            active_seq,
            active_bytes,
            tracker,
            meters,
        );
        // Segments left over by a crash between a purge and their deletion.
        writer.collect_segments();
        let thread = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run(rx))?;
        let groups = groups
            .into_iter()
            .map(|(shard, state)| {
                let g = Group {
                    state: Mutex::new(state),
                    order: tokio::sync::Mutex::new(()),
                };
                (shard, Arc::new(g))
            })
            .collect();
        Ok(Wal {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                policy,
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
                groups: Mutex::new(groups),
                counters,
            }),
        })
    }

    /// The engine of group `shard`: its recovered state, or an empty log.
    /// Every call for the same shard shares one state.
    pub fn log(&self, shard: ShardId) -> WalLog {
        let group = lock(&self.shared.groups)
            .entry(shard)
            .or_insert_with(|| {
                Arc::new(Group {
                    state: Mutex::new(GroupState::default()),
                    order: tokio::sync::Mutex::new(()),
                })
            })
            .clone();
        WalLog {
            wal: self.clone(),
            shard,
            group,
        }
    }

    /// Groups recovered from disk or opened with [`Wal::log`], ascending.
    pub fn groups(&self) -> Vec<ShardId> {
        let mut v: Vec<ShardId> = lock(&self.shared.groups).keys().copied().collect();
        v.sort_unstable();
        v
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn policy(&self) -> FsyncPolicy {
        self.shared.policy
    }

    pub fn stats(&self) -> WalStats {
        let c = &self.shared.counters;
        WalStats {
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            segments: c.segments.load(Ordering::Relaxed),
        }
    }

    /// The first I/O error the writer met, if any. From then on every write
    /// fails (nothing is acknowledged falsely), so every group on the node
    /// has stopped: the process must stop too, and let an orchestrator see.
    pub fn failure(&self) -> Option<String> {
        self.shared.counters.failed.get().cloned()
    }

    /// Writes what is queued, syncs, and stops the writer thread; later
    /// writes fail. Blocks until the thread is done, so call it once the
    /// groups have stopped writing.
    pub fn close(&self) {
        self.shared.stop();
    }

    fn sender(&self) -> io::Result<mpsc::Sender<Req>> {
        lock(&self.shared.tx).clone().ok_or_else(closed)
    }
}

impl Shared {
    fn stop(&self) {
        drop(lock(&self.tx).take());
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!(dir = %self.dir.display(), "wal: writer thread panicked");
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared.dir)
            .field("policy", &self.shared.policy)
            .finish()
    }
}

/// Queues `req`; if the writer is gone, fails its completion too.
async fn send(tx: &mpsc::Sender<Req>, req: Req) -> io::Result<()> {
    match tx.send(req).await {
        Ok(()) => Ok(()),
        Err(mpsc::error::SendError(req)) => {
            req.done.complete(Err(closed()));
            Err(closed())
        }
    }
}

/// One shard group's log engine. Clones share the group's state.
#[derive(Clone)]
pub struct WalLog {
    wal: Wal,
    shard: ShardId,
    group: Arc<Group>,
}

impl Debug for WalLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalLog")
            .field("shard", &self.shard)
            .field("dir", &self.wal.shared.dir)
            .finish()
    }
}

impl WalLog {
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    fn state(&self) -> MutexGuard<'_, GroupState> {
        lock(&self.group.state)
    }

    fn encode(&self, record: &Record<'_>) -> io::Result<Vec<u8>> {
        codec::encode(record).map_err(codec::to_io)
    }

    /// Queues a record and waits until it is durable (per the policy).
    async fn write_durable(
        &self,
        op: Op,
        payload: Vec<u8>,
        update: impl FnOnce(&mut GroupState),
    ) -> io::Result<()> {
        let (done, rx) = oneshot::channel();
        {
            let _order = self.group.order.lock().await;
            let tx = self.wal.sender()?;
            update(&mut self.state());
            let req = Req {
                group: self.shard,
                op,
                payload,
                done: Done::Wait(done),
            };
            send(&tx, req).await?;
        }
        rx.await.map_err(|_| closed())?
    }

    /// Queues a record; durability is not awaited.
    async fn write_later(
        &self,
        op: Op,
        payload: Vec<u8>,
        update: impl FnOnce(&mut GroupState),
    ) -> io::Result<()> {
        let _order = self.group.order.lock().await;
        let tx = self.wal.sender()?;
        update(&mut self.state());
        let req = Req {
            group: self.shard,
            op,
            payload,
            done: Done::Nothing,
        };
        send(&tx, req).await
    }
}

impl LogEngine for WalLog {
    fn engine_name(&self) -> &'static str {
        "wal"
    }
}

impl RaftLogReader<TypeConfig> for WalLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self
            .state()
            .log
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.state().vote)
    }
}

impl RaftLogStorage<TypeConfig> for WalLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let g = self.state();
        Ok(LogState {
            last_purged_log_id: g.purged,
            last_log_id: g.last(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Returns once the vote is durable (per the policy); only then do reads
    /// see it.
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let vote = *vote;
        let payload = self.encode(&Record::Vote {
            group: self.shard,
            vote,
        })?;
        self.write_durable(Op::Vote(vote), payload, |_| {}).await?;
        self.state().vote = Some(vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let payload = self.encode(&Record::Committed {
            group: self.shard,
            committed,
        })?;
        self.write_later(Op::Committed(committed), payload, |g| {
            g.committed = committed
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.state().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let (op, payload) = match (entries.first(), entries.last()) {
            (Some(first), Some(last)) => {
                let op = Op::Entries {
                    first: first.index(),
                    last: last.log_id(),
                };
                let payload = self.encode(&Record::Entries {
                    group: self.shard,
                    entries: Cow::Borrowed(&entries),
                })?;
                (op, payload)
            }
            // Nothing to write, but the callback still waits for what is queued.
            _ => (Op::Barrier, Vec::new()),
        };
        let _order = self.group.order.lock().await;
        let tx = self.wal.sender()?;
        self.state().append(entries);
        let req = Req {
            group: self.shard,
            op,
            payload,
            done: Done::Flushed(callback),
        };
        send(&tx, req).await
    }

    /// Returns once the truncation is durable (per the policy).
    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        let payload = self.encode(&Record::TruncateAfter {
            group: self.shard,
            last,
        })?;
        self.write_durable(Op::TruncateAfter(last), payload, |g| g.truncate_after(last))
            .await
    }

    async fn purge(&mut self, upto: LogId) -> Result<(), io::Error> {
        let payload = self.encode(&Record::Purge {
            group: self.shard,
            upto,
        })?;
        self.write_later(Op::Purge(upto), payload, |g| g.purge(upto))
            .await
    }
}

/// What replay rebuilt.
struct Recovered {
    groups: BTreeMap<ShardId, GroupState>,
    tracker: Tracker,
    /// The last segment and the length of its good prefix.
    last: Option<(u64, u64)>,
}

/// Sequence numbers of the segment files of `dir`, ascending.
fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name
            .strip_suffix(".wal")
            .and_then(|s| s.parse::<u64>().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// The offset of the first frame at or after `from` that has a good
/// checksum and decodes as a record, if any. Cheap on garbage: almost every
/// offset fails on its length before any checksum is computed.
fn next_good_frame(buf: &[u8], from: usize) -> Option<usize> {
    (from..buf.len()).find(|&o| match record::scan(buf, o) {
        Scan::Frame { payload, .. } => codec::decode::<Record<'static>>(payload).is_ok(),
        _ => false,
    })
}

fn replay(dir: &Path) -> io::Result<Recovered> {
    let seqs = list_segments(dir)?;
    let mut groups: BTreeMap<ShardId, GroupState> = BTreeMap::new();
    let mut tracker = Tracker::default();
    let mut last = None;
    for (i, &seq) in seqs.iter().enumerate() {
        let path = segment_path(dir, seq);
        let buf = std::fs::read(&path)?;
        tracker.add_segment(seq);
        let mut at = 0;
        loop {
            match record::scan(&buf, at) {
                Scan::Frame { payload, next } => {
                    let rec: Record<'static> = codec::decode(payload).map_err(|e| {
                        invalid(format!("wal: {} offset {at}: {e}", path.display()))
                    })?;
                    replay_record(&mut groups, &mut tracker, seq, rec);
                    at = next;
                }
                Scan::End => break,
                Scan::Bad(why) if i + 1 == seqs.len() => {
                    // A torn write leaves only garbage after the last good
                    // frame. A good frame after the bad one means the bad
                    // bytes are damage in the middle of what was written:
                    // cutting there would drop acknowledged entries and votes.
                    if let Some(good) = next_good_frame(&buf, at + 1) {
                        return Err(invalid(format!(
                            "wal: {} offset {at}: {why}, and a good frame follows at offset \
                             {good}: damage, not a torn write; the node will not start on it",
                            path.display()
                        )));
                    }
                    tracing::warn!(
                        path = %path.display(), offset = at, why,
                        dropped_bytes = buf.len() - at,
                        "wal: cutting the torn tail of the last segment"
                    );
                    let f = OpenOptions::new().write(true).open(&path)?;
                    f.set_len(at as u64)?;
                    f.sync_all()?;
                    break;
                }
                Scan::Bad(why) => {
                    return Err(invalid(format!(
                        "wal: {} offset {at}: {why}",
                        path.display()
                    )))
                }
            }
        }
        if i + 1 == seqs.len() {
            last = Some((seq, at as u64));
        }
    }
    for (g, st) in &groups {
        st.check()
            .map_err(|e| invalid(format!("wal: {}: group {g}: {e}", dir.display())))?;
        tracker.groups.insert(*g, st.mark());
    }
    Ok(Recovered {
        groups,
        tracker,
        last,
    })
}

fn replay_record(
    groups: &mut BTreeMap<ShardId, GroupState>,
    tracker: &mut Tracker,
    seq: u64,
    rec: Record<'static>,
) {
    match rec {
        Record::Entries { group, entries } => {
            let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
                return;
            };
            let op = Op::Entries {
                first: first.index(),
                last: last.log_id(),
            };
            tracker.apply(seq, group, &op);
            groups
                .entry(group)
                .or_default()
                .append(entries.into_owned());
        }
        Record::TruncateAfter { group, last } => {
            tracker.apply(seq, group, &Op::TruncateAfter(last));
            groups.entry(group).or_default().truncate_after(last);
        }
        Record::Purge { group, upto } => {
            tracker.apply(seq, group, &Op::Purge(upto));
            groups.entry(group).or_default().purge(upto);
        }
        Record::Vote { group, vote } => {
            tracker.apply(seq, group, &Op::Vote(vote));
            groups.entry(group).or_default().vote = Some(vote);
        }
        Record::Committed { group, committed } => {
            tracker.apply(seq, group, &Op::Committed(committed));
            groups.entry(group).or_default().committed = committed;
        }
        Record::Header { group, mark } => {
            tracker.apply_header(group, &mark);
            groups.entry(group).or_default().restore(&mark);
        }
    }
}
