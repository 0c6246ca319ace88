//! The writer thread, the only code that writes segment files, and its sync
//! threads.
//!
//! The writer takes every request queued (group commit) and writes them to
//! the active segment in one `write_all`. With [`FsyncPolicy::Never`] it then
//! completes them. With [`FsyncPolicy::Always`] it hands them to the sync
//! threads and goes on writing: a sync thread that finds bytes written past
//! what is being synced fdatasyncs the file once for all of them, then
//! completes every request written before that sync began, in order. With
//! `syncs_in_flight_max = 1` this is one fsync at a time overlapping the
//! next write; more lets fdatasyncs overlap, which many disks serve faster
//! than one after another (see benches/wal.rs).
//!
//! After an I/O error every later request fails: the file position is
//! unknown, and a record written after a hole could be acknowledged and then
//! dropped as a torn tail on recovery.
use super::record::{frame, Record, FRAME_HEADER_BYTES};
use super::state::{Op, Tracker};
use super::{segment_path, sync_dir, Counters, WalOptions};
use crate::codec;
use crate::config::FsyncPolicy;
use crate::raft::{ShardId, TypeConfig};
use metrics::{Counter, Histogram};
use openraft::storage::IOFlushed;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Requests drained into one write at most (the rest waits for the next).
const BATCH_REQUESTS_MAX: usize = 4096;

/// One write request from a group.
pub(super) struct Req {
    pub group: ShardId,
    pub op: Op,
    /// The encoded record; empty for [`Op::Barrier`].
    pub payload: Vec<u8>,
    pub done: Done,
}

/// Who learns that a request is durable (per the policy).
pub(super) enum Done {
    Nothing,
    /// openraft's append callback.
    Flushed(IOFlushed<TypeConfig>),
    /// A caller blocked until its record is durable (vote, truncate).
    Wait(oneshot::Sender<io::Result<()>>),
}

impl Done {
    pub fn complete(self, result: io::Result<()>) {
        match self {
            Done::Nothing => {}
            Done::Flushed(cb) => cb.io_completed(result),
            Done::Wait(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

fn failed_error(msg: &str) -> io::Error {
    io::Error::other(format!("wal failed earlier: {msg}"))
}

fn complete_all(dones: impl IntoIterator<Item = Done>, failed: Option<&str>) {
    for d in dones {
        d.complete(failed.map_or(Ok(()), |m| Err(failed_error(m))));
    }
}

/// Metric handles and totals, shared by the writer and the sync threads.
#[derive(Clone)]
pub(super) struct Meters {
    pub counters: Arc<Counters>,
    pub fsyncs_total: Counter,
    pub fsync_seconds: Histogram,
    pub batch_records: Histogram,
    pub failed_gauge: metrics::Gauge,
}

impl Meters {
    /// Makes the first I/O error visible outside the writer: to
    /// [`super::Wal::failure`] (the process stops on it) and as the gauge
    /// `charging_wal_failed`.
    fn failed(&self, e: &io::Error) {
        if self.counters.failed.set(e.to_string()).is_ok() {
            self.failed_gauge.set(1.0);
        }
    }

    // The WAL's own OS thread, which the simulator never runs (it uses the
    // sim log): real time is what the fsync histogram measures.
    #[allow(clippy::disallowed_methods)]
    fn sync(&self, file: &File) -> io::Result<()> {
        let t = Instant::now();
        file.sync_data()?;
        self.fsync_seconds.record(t.elapsed().as_secs_f64());
        self.fsyncs_total.increment(1);
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// What the writer and the sync threads share. Offsets count bytes written
/// since open, over all segments.
struct SyncState {
    /// The active segment.
    file: Arc<File>,
    written: u64,
    /// Highest offset a started sync covers.
    requested: u64,
    /// Every byte below this is on disk.
    durable: u64,
    /// Completions waiting for `durable` to reach their offset, in order.
    pending: VecDeque<(u64, Vec<Done>)>,
    /// The first I/O error.
    failed: Option<String>,
    stop: bool,
}

struct Syncer {
    state: Mutex<SyncState>,
    work: Condvar,
}

impl Syncer {
    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes up to `upto` are durable: takes the completions now due.
    fn durable_to(g: &mut SyncState, upto: u64) -> Vec<Done> {
        g.durable = g.durable.max(upto);
        let mut due = Vec::new();
        while g.pending.front().is_some_and(|(end, _)| *end <= g.durable) {
            if let Some((_, dones)) = g.pending.pop_front() {
                due.extend(dones);
            }
        }
        due
    }

    /// Records the first error; takes every pending completion.
    fn fail(g: &mut SyncState, e: &io::Error) -> Vec<Done> {
        if g.failed.is_none() {
            tracing::error!(error = %e, "wal: I/O failed, failing every later write");
            g.failed = Some(e.to_string());
        }
        g.pending.drain(..).flat_map(|(_, d)| d).collect()
    }

    /// A sync thread: syncs whenever bytes were written past the last
    /// requested sync; leaves once stopped and nothing is left to sync.
    fn run(&self, meters: &Meters) {
        let mut g = self.lock();
        loop {
            if g.failed.is_none() && g.written > g.requested {
                let target = g.written;
                let file = g.file.clone();
                g.requested = target;
                drop(g);
                let result = meters.sync(&file);
                g = self.lock();
                let (due, failed) = match result {
                    Ok(()) => (Self::durable_to(&mut g, target), g.failed.clone()),
                    Err(e) => {
                        meters.failed(&e);
                        (Self::fail(&mut g, &e), g.failed.clone())
                    }
                };
                drop(g);
                complete_all(due, failed.as_deref());
                g = self.lock();
                continue;
            }
            if g.stop {
                return;
            }
            g = self.work.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Appends a header frame per known group to `buf`.
pub(super) fn header_frames(tracker: &Tracker, buf: &mut Vec<u8>) -> io::Result<()> {
    for (&group, &mark) in &tracker.groups {
        let payload = codec::encode(&Record::Header { group, mark }).map_err(codec::to_io)?;
        frame(buf, &payload);
    }
    Ok(())
}

pub(super) struct Writer {
    dir: PathBuf,
    policy: FsyncPolicy,
    opts: WalOptions,
    file: Arc<File>,
    active_seq: u64,
    active_bytes: u64,
    tracker: Tracker,
    meters: Meters,
    syncer: Arc<Syncer>,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dir: PathBuf,
        policy: FsyncPolicy,
        opts: WalOptions,
        file: File,
        active_seq: u64,
        active_bytes: u64,
        tracker: Tracker,
        meters: Meters,
    ) -> Writer {
        let file = Arc::new(file);
        let syncer = Arc::new(Syncer {
            state: Mutex::new(SyncState {
                file: file.clone(),
                written: 0,
                requested: 0,
                durable: 0,
                pending: VecDeque::new(),
                failed: None,
                stop: false,
            }),
            work: Condvar::new(),
        });
        Writer {
            dir,
            policy,
            opts,
            file,
            active_seq,
            active_bytes,
            tracker,
            meters,
            syncer,
        }
    }

    /// Serves requests until every sender is gone, then syncs and returns.
    pub fn run(mut self, mut rx: mpsc::Receiver<Req>) {
        let syncers: Vec<JoinHandle<()>> = match self.policy {
            FsyncPolicy::Never => Vec::new(),
            FsyncPolicy::Always => (0..self.opts.syncs_in_flight_max)
                .filter_map(|i| {
                    let syncer = self.syncer.clone();
                    let meters = self.meters.clone();
                    std::thread::Builder::new()
                        .name(format!("wal-sync-{i}"))
                        .spawn(move || syncer.run(&meters))
                        .map_err(|e| tracing::error!(error = %e, "wal: cannot start a sync thread"))
                        .ok()
                })
                .collect(),
        };
        if self.policy == FsyncPolicy::Always && syncers.is_empty() {
            self.syncer.lock().failed = Some("no sync thread".into());
        }
        let mut batch: Vec<Req> = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = first.payload.len();
            batch.push(first);
            while batch.len() < BATCH_REQUESTS_MAX && bytes < self.opts.batch_bytes_max {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.payload.len();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.serve(&mut batch, &mut buf);
            if buf.capacity() > 4 * self.opts.batch_bytes_max {
                buf = Vec::new();
            }
        }
        {
            let mut g = self.syncer.lock();
            g.stop = true;
            self.syncer.work.notify_all();
        }
        for t in syncers {
            if t.join().is_err() {
                tracing::error!("wal: sync thread panicked");
            }
        }
        // Completes anything the sync threads left (none, unless they died).
        let _ = self.sync_now();
    }

    /// Writes one batch and completes it (policy never) or hands it to the
    /// sync threads (always).
    fn serve(&mut self, batch: &mut Vec<Req>, buf: &mut Vec<u8>) {
        let failed = self.syncer.lock().failed.clone();
        if let Some(msg) = failed {
            complete_all(batch.drain(..).map(|r| r.done), Some(&msg));
            return;
        }
        let (rotated, written) = match self.write(batch, buf) {
            Ok(r) => r,
            Err(e) => {
                self.meters.failed(&e);
                let due = Self::fail_all(&self.syncer, &e);
                let msg = self.syncer.lock().failed.clone();
                complete_all(
                    due.into_iter().chain(batch.drain(..).map(|r| r.done)),
                    msg.as_deref(),
                );
                return;
            }
        };
        self.syncer.lock().written += written;
        // A rotation, purge or truncation may leave a segment unneeded. The
        // deletion happens before the batch completes, so a caller that saw
        // its purge durable sees the segments gone too.
        if rotated
            || batch
                .iter()
                .any(|r| matches!(r.op, Op::Purge(_) | Op::TruncateAfter(_)))
        {
            self.collect_segments();
        }
        let dones = batch.drain(..).map(|r| r.done);
        match self.policy {
            // Written to the OS: done, per the policy.
            FsyncPolicy::Never => complete_all(dones, None),
            FsyncPolicy::Always => {
                let mut g = self.syncer.lock();
                let end = g.written;
                if let Some(msg) = g.failed.clone() {
                    // A sync failed while this batch was being written.
                    drop(g);
                    complete_all(dones, Some(&msg));
                    return;
                }
                g.pending.push_back((end, dones.collect()));
                // Already durable: only barriers, or a sync just ran here.
                let due = if end <= g.durable {
                    Syncer::durable_to(&mut g, end)
                } else {
                    self.syncer.work.notify_one();
                    Vec::new()
                };
                drop(g);
                complete_all(due, None);
            }
        }
    }

    fn fail_all(syncer: &Syncer, e: &io::Error) -> Vec<Done> {
        Syncer::fail(&mut syncer.lock(), e)
    }

    /// Writes the records of `batch`; returns whether it started a new
    /// segment, and the bytes written.
    fn write(&mut self, batch: &[Req], buf: &mut Vec<u8>) -> io::Result<(bool, u64)> {
        let records = batch.iter().filter(|r| !r.payload.is_empty()).count();
        if records == 0 {
            return Ok((false, 0));
        }
        buf.clear();
        let body: usize = batch
            .iter()
            .filter(|r| !r.payload.is_empty())
            .map(|r| FRAME_HEADER_BYTES + r.payload.len())
            .sum();
        let rotated =
            self.active_bytes > 0 && self.active_bytes + body as u64 > self.opts.segment_bytes;
        if rotated {
            self.rotate(buf)?;
        }
        for r in batch.iter().filter(|r| !r.payload.is_empty()) {
            frame(buf, &r.payload);
        }
        (&*self.file).write_all(buf)?;
        self.active_bytes += buf.len() as u64;
        for r in batch {
            self.tracker.apply(self.active_seq, r.group, &r.op);
        }
        let c = &self.meters.counters;
        c.records.fetch_add(records as u64, Ordering::Relaxed);
        c.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.meters.batch_records.record(records as f64);
        Ok((rotated, buf.len() as u64))
    }

    /// Syncs the active segment here and now; completes what that makes
    /// durable.
    fn sync_now(&mut self) -> io::Result<()> {
        let upto = self.syncer.lock().written;
        let result = self.meters.sync(&self.file);
        let mut g = self.syncer.lock();
        let due = match &result {
            Ok(()) => Syncer::durable_to(&mut g, upto),
            Err(e) => Syncer::fail(&mut g, e),
        };
        let failed = g.failed.clone();
        drop(g);
        complete_all(due, failed.as_deref());
        result
    }

    /// Starts segment `active + 1` with one header per known group (written
    /// into `buf`, ahead of the batch). The old segment is synced first, so
    /// a sync of the new file covers every byte written before it.
    fn rotate(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        if self.policy == FsyncPolicy::Always {
            self.sync_now()?;
        }
        let seq = self.active_seq + 1;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(&self.dir, seq))?;
        if self.policy == FsyncPolicy::Always {
            sync_dir(&self.dir)?;
        }
        header_frames(&self.tracker, buf)?;
        self.file = Arc::new(file);
        self.syncer.lock().file = self.file.clone();
        self.active_seq = seq;
        self.active_bytes = 0;
        self.tracker.add_segment(seq);
        self.meters
            .counters
            .segments
            .store(self.tracker.segment_count(), Ordering::Relaxed);
        Ok(())
    }

    /// Deletes the segments whose entries are all purged or truncated away.
    /// The records that made them so are synced first.
    pub(super) fn collect_segments(&mut self) {
        let dead = self.tracker.dead_segments(self.active_seq);
        if dead.is_empty() || self.sync_now().is_err() {
            return;
        }
        for seq in dead {
            let path = segment_path(&self.dir, seq);
            match std::fs::remove_file(&path) {
                Ok(()) => self.tracker.remove_segment(seq),
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.tracker.remove_segment(seq),
                // Kept, harmless: replay reads it and later records win.
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "wal: cannot delete segment")
                }
            }
        }
        self.meters
            .counters
            .segments
            .store(self.tracker.segment_count(), Ordering::Relaxed);
    }
}
