//! The node's Raft log under load: 16 groups, each appending small entries
//! (~200 B, a batch of a few events) from its own task and waiting for the
//! flush, as a leader waits for its own log before it can commit.
//!
//! Rows:
//! - the shared WAL (one file, one writer thread, group commit), fsync always,
//!   with one fdatasync in flight at a time, then with up to 4;
//! - the design's rejected alternative: a file per group, each fdatasync'ed by
//!   its own thread per append (raft-log style), fsync always;
//! - the shared WAL with fsync never, for reference.
//!
//! `cargo bench -p charging-node --bench wal` (`WAL_BENCH_SECS` sets the run
//! time per row, default 3).
// Tests and benches run in real time and read the OS clock; the node core
// may not (node/clippy.toml).
#![allow(clippy::disallowed_methods)]
use charging_node::codec;
use charging_node::config::FsyncPolicy;
use charging_node::ledger::{BucketKind, Event, Price, RequestId, Tariff};
use charging_node::raft::wal::{Wal, WalLog, WalOptions};
use charging_node::raft::{Batch, GroupEvent, TypeConfig};
use hdrhistogram::Histogram;
use openraft::alias::EntryOf;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const GROUPS: u32 = 16;
/// Events per entry: 4 tariff events encode to about 200 bytes.
const EVENTS: usize = 4;

type Entry = EntryOf<TypeConfig>;

fn entry(group: u32, index: u64) -> Entry {
    let events = (0..EVENTS)
        .map(|i| Event::SetTariff {
            tariff: Tariff {
                rating_group: group * 100 + i as u32,
                version: index,
                prices: vec![Price {
                    unit: BucketKind::Bytes,
                    increment: 1_000_000,
                    nano_per_increment: 7_000_000_000 + index,
                }],
            },
            request_id: RequestId(((index as u128) << 64) | i as u128),
        })
        .map(GroupEvent::from)
        .collect();
    Entry::new_normal(
        openraft::testing::log_id::<TypeConfig>(1, 1, index),
        Batch {
            log_ts_ms: 1_800_000_000_000 + index,
            events,
        },
    )
}

struct Row {
    name: &'static str,
    appends: u64,
    fsyncs: u64,
    secs: f64,
    /// Append-to-flush latency, µs.
    hist: Histogram<u64>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")
}

/// Runs `GROUPS` tasks, each calling `append(group, index)` in a loop for
/// `run`; returns appends, latency histogram and elapsed seconds.
async fn drive<F, Fut>(run: Duration, append: F) -> (u64, Histogram<u64>, f64)
where
    F: Fn(u32, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let stop = start + run;
    let mut tasks = tokio::task::JoinSet::new();
    for g in 0..GROUPS {
        let append = append.clone();
        tasks.spawn(async move {
            let mut hist = new_hist();
            let mut i = 1;
            while Instant::now() < stop {
                let t = Instant::now();
                append(g, i).await;
                hist.record(t.elapsed().as_micros().max(1) as u64)
                    .expect("record");
                i += 1;
            }
            (i - 1, hist)
        });
    }
    let mut hist = new_hist();
    let mut n = 0;
    while let Some(r) = tasks.join_next().await {
        let (k, h) = r.expect("task");
        n += k;
        hist.add(h).expect("merge");
    }
    (n, hist, start.elapsed().as_secs_f64())
}

async fn shared_wal(name: &'static str, policy: FsyncPolicy, syncs: usize, run: Duration) -> Row {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = WalOptions {
        syncs_in_flight_max: syncs,
        ..WalOptions::default()
    };
    let wal = Wal::open_with(dir.path(), policy, opts).expect("open wal");
    let logs: Arc<Vec<WalLog>> = Arc::new((0..GROUPS).map(|g| wal.log(g)).collect());
    let (appends, hist, secs) = drive(run, move |g, i| {
        let mut log = logs[g as usize].clone();
        async move {
            let (tx, rx) = TypeConfig::oneshot();
            log.append([entry(g, i)], IOFlushed::signal(tx))
                .await
                .expect("append");
            rx.await.expect("callback").expect("durable");
        }
    })
    .await;
    let fsyncs = wal.stats().fsyncs;
    wal.close();
    Row {
        name,
        appends,
        fsyncs,
        secs,
        hist,
    }
}

type Job = (Vec<u8>, oneshot::Sender<()>);

/// A file per group, each written and fdatasync'ed by its own thread.
async fn file_per_group(run: Duration) -> Row {
    let dir = tempfile::tempdir().expect("temp dir");
    let fsyncs = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    for g in 0..GROUPS {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let path = dir.path().join(format!("group-{g}.log"));
        let fsyncs = fsyncs.clone();
        threads.push(std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open");
            while let Ok((frame, done)) = rx.recv() {
                f.write_all(&frame).expect("write");
                f.sync_data().expect("fdatasync");
                fsyncs.fetch_add(1, Ordering::Relaxed);
                let _ = done.send(());
            }
        }));
        senders.push(tx);
    }
    let senders = Arc::new(std::sync::Mutex::new(senders));
    let (appends, hist, secs) = drive(run, {
        let senders = senders.clone();
        move |g, i| {
            // Same work per append as the WAL: encode, frame with length and crc.
            let payload = codec::encode(&[entry(g, i)]).expect("encode");
            let mut frame = Vec::with_capacity(payload.len() + 8);
            frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            frame.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            frame.extend_from_slice(&payload);
            let (tx, rx) = oneshot::channel();
            senders.lock().expect("senders")[g as usize]
                .send((frame, tx))
                .expect("send");
            async move { rx.await.expect("flushed") }
        }
    })
    .await;
    senders.lock().expect("senders").clear();
    for t in threads {
        t.join().expect("thread");
    }
    Row {
        name: "file per group, fsync always",
        appends,
        fsyncs: fsyncs.load(Ordering::Relaxed),
        secs,
        hist,
    }
}

fn main() {
    let secs: u64 = std::env::var("WAL_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let run = Duration::from_secs(secs);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let size = codec::encode(&[entry(0, 1)]).expect("encode").len();
    println!(
        "wal bench: {GROUPS} groups, one task each, append + wait for flush, {secs} s per row, \
         entry ~{size} B encoded"
    );
    let rows = [
        rt.block_on(shared_wal(
            "shared wal, 1 fsync at a time",
            FsyncPolicy::Always,
            1,
            run,
        )),
        rt.block_on(shared_wal(
            "shared wal, <=4 fsyncs at once",
            FsyncPolicy::Always,
            4,
            run,
        )),
        rt.block_on(file_per_group(run)),
        rt.block_on(shared_wal(
            "shared wal, fsync never",
            FsyncPolicy::Never,
            1,
            run,
        )),
    ];
    println!(
        "{:<32} {:>10} {:>10} {:>12} {:>9} {:>9} {:>9}",
        "engine", "appends/s", "fsyncs/s", "appends/sync", "p50_us", "p99_us", "max_us"
    );
    for r in &rows {
        println!(
            "{:<32} {:>10.0} {:>10.0} {:>12.1} {:>9} {:>9} {:>9}",
            r.name,
            r.appends as f64 / r.secs,
            r.fsyncs as f64 / r.secs,
            if r.fsyncs == 0 {
                f64::NAN
            } else {
                r.appends as f64 / r.fsyncs as f64
            },
            r.hist.value_at_quantile(0.50),
            r.hist.value_at_quantile(0.99),
            r.hist.max(),
        );
    }
}
