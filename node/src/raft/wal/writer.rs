//! The writer thread: the only code that writes segment files.
//!
//! It takes every request queued (group commit), writes them to the active
//! segment in one `write_all`, fdatasyncs once when the policy says so, then
//! completes every request. After an I/O error it fails every later request:
//! the file position is unknown, and a record written after a hole could be
//! acknowledged and then dropped as a torn tail on recovery.
use super::record::{frame, Record, FRAME_HEADER_BYTES};
use super::state::{Op, Tracker};
use super::{segment_path, sync_dir, Counters, WalOptions};
use crate::codec;
use crate::config::FsyncPolicy;
use crate::raft::{ShardId, TypeConfig};
use metrics::{Counter, Histogram};
use openraft::storage::IOFlushed;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
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

pub(super) struct Writer {
    pub dir: PathBuf,
    pub policy: FsyncPolicy,
    pub opts: WalOptions,
    pub file: File,
    pub active_seq: u64,
    pub active_bytes: u64,
    pub tracker: Tracker,
    pub counters: Arc<Counters>,
    /// Set by the first I/O error; every later request fails with it.
    pub failed: Option<String>,
    pub fsyncs_total: Counter,
    pub fsync_seconds: Histogram,
    pub batch_records: Histogram,
}

impl Writer {
    /// Serves requests until every sender is gone, then syncs and returns.
    pub fn run(mut self, mut rx: mpsc::Receiver<Req>) {
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
            let result = self.write_batch(&batch, &mut buf);
            // A rotation, purge or truncation may leave a segment unneeded.
            let collect = matches!(result, Ok(true))
                || result.is_ok()
                    && batch
                        .iter()
                        .any(|r| matches!(r.op, Op::Purge(_) | Op::TruncateAfter(_)));
            for r in batch.drain(..) {
                let res = match &result {
                    Ok(_) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                };
                r.done.complete(res);
            }
            if collect {
                self.collect_segments();
            }
            if buf.capacity() > 4 * self.opts.batch_bytes_max {
                buf = Vec::new();
            }
        }
        if self.failed.is_none() {
            if let Err(e) = self.file.sync_data() {
                tracing::error!(error = %e, "wal: final sync failed");
            }
        }
    }

    /// Writes (and per the policy syncs) the records of `batch`; true if it
    /// started a new segment.
    fn write_batch(&mut self, batch: &[Req], buf: &mut Vec<u8>) -> io::Result<bool> {
        if let Some(msg) = &self.failed {
            return Err(io::Error::other(format!("wal failed earlier: {msg}")));
        }
        let records = batch.iter().filter(|r| !r.payload.is_empty()).count();
        if records == 0 {
            // Only barriers: everything before them was written by earlier batches.
            return Ok(false);
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
            self.rotate(buf).map_err(|e| self.fail(e))?;
        }
        for r in batch.iter().filter(|r| !r.payload.is_empty()) {
            frame(buf, &r.payload);
        }
        self.file.write_all(buf).map_err(|e| self.fail(e))?;
        self.active_bytes += buf.len() as u64;
        if self.policy == FsyncPolicy::Always {
            self.sync()?;
        }
        for r in batch {
            self.tracker.apply(self.active_seq, r.group, &r.op);
        }
        let c = &self.counters;
        c.records.fetch_add(records as u64, Ordering::Relaxed);
        c.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        self.batch_records.record(records as f64);
        Ok(rotated)
    }

    fn sync(&mut self) -> io::Result<()> {
        let t = Instant::now();
        self.file.sync_data().map_err(|e| self.fail(e))?;
        self.fsync_seconds.record(t.elapsed().as_secs_f64());
        self.fsyncs_total.increment(1);
        self.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Starts segment `active + 1` with one header per known group (written
    /// into `buf`, ahead of the batch).
    fn rotate(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        let seq = self.active_seq + 1;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(segment_path(&self.dir, seq))?;
        if self.policy == FsyncPolicy::Always {
            sync_dir(&self.dir)?;
        }
        for (&group, &mark) in &self.tracker.groups {
            let payload = codec::encode(&Record::Header { group, mark }).map_err(codec::to_io)?;
            frame(buf, &payload);
        }
        self.file = file;
        self.active_seq = seq;
        self.active_bytes = 0;
        self.tracker.add_segment(seq);
        self.counters
            .segments
            .store(self.tracker.segment_count(), Ordering::Relaxed);
        Ok(())
    }

    /// Deletes the segments whose entries are all purged or truncated away.
    /// The records that made them so must be durable first (they are, after
    /// a batch, with `always`; with `never` this syncs once).
    pub(super) fn collect_segments(&mut self) {
        let dead = self.tracker.dead_segments(self.active_seq);
        if dead.is_empty() {
            return;
        }
        if self.policy == FsyncPolicy::Never && self.sync().is_err() {
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
        self.counters
            .segments
            .store(self.tracker.segment_count(), Ordering::Relaxed);
    }

    fn fail(&mut self, e: io::Error) -> io::Error {
        tracing::error!(error = %e, dir = %self.dir.display(), "wal: write failed, failing every later write");
        self.failed = Some(e.to_string());
        e
    }
}
