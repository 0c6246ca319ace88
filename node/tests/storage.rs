//! Log engines on a real disk: openraft's storage suite (both engines, both
//! fsync policies), restart, torn tails, truncation, purge, segment rotation
//! and deletion, and 16 groups writing at once.
use charging_node::config::FsyncPolicy;
use charging_node::ledger::Event;
use charging_node::ledger::{BucketKind, Limits, Price, RequestId, Tariff};
use charging_node::raft::log_store::{LogEngine, MemLog};
use charging_node::raft::state_machine::ShardStore;
use charging_node::raft::wal::{Wal, WalLog, WalOptions};
use charging_node::raft::{Batch, GroupEvent, TypeConfig};
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{RaftLogReader, StorageError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

/// Bound on every wait for a callback or a task.
const DEADLINE: Duration = Duration::from_secs(20);

fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, 1, index)
}

/// An entry of `events` tariff events (~45 bytes each encoded).
fn entry(term: u64, index: u64, events: usize) -> Entry {
    let events = (0..events)
        .map(|i| Event::SetTariff {
            tariff: Tariff {
                rating_group: i as u32,
                version: index,
                prices: vec![Price {
                    unit: BucketKind::Bytes,
                    increment: 1_000_000,
                    nano_per_increment: 7_000_000_000 + i as u64,
                }],
            },
            request_id: RequestId(((index as u128) << 64) | i as u128),
        })
        .map(GroupEvent::from)
        .collect();
    Entry::new_normal(
        log_id(term, index),
        Batch {
            log_ts_ms: 1_800_000_000_000 + index,
            events,
        },
    )
}

fn entries(term: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    range.map(|i| entry(term, i, 1)).collect()
}

/// Appends and waits for the flush callback.
async fn append(log: &mut WalLog, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx))
        .await
        .expect("append queued");
    tokio::time::timeout(DEADLINE, rx)
        .await
        .expect("append flushed before the deadline")
        .expect("callback called")
        .expect("append durable");
}

async fn all_entries(log: &mut WalLog) -> Vec<Entry> {
    log.try_get_log_entries(..).await.expect("read")
}

fn indexes(es: &[Entry]) -> Vec<u64> {
    es.iter().map(|e| e.index()).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

fn small_segments(bytes: u64) -> WalOptions {
    WalOptions {
        segment_bytes: bytes,
        ..WalOptions::default()
    }
}

// ---- openraft's storage suite -------------------------------------------

struct WalBuilder(FsyncPolicy);

impl StoreBuilder<TypeConfig, WalLog, ShardStore, (Wal, TempDir)> for WalBuilder {
    async fn build(
        &self,
    ) -> Result<((Wal, TempDir), WalLog, ShardStore), StorageError<TypeConfig>> {
        let dir = TempDir::new().expect("temp dir");
        let wal = Wal::open(dir.path(), self.0).expect("open wal");
        let log = wal.log(0);
        assert_eq!(log.engine_name(), "wal");
        Ok(((wal, dir), log, ShardStore::new(Limits::default())))
    }
}

struct MemBuilder;

impl StoreBuilder<TypeConfig, MemLog, ShardStore, ()> for MemBuilder {
    async fn build(&self) -> Result<((), MemLog, ShardStore), StorageError<TypeConfig>> {
        Ok(((), MemLog::new(1), ShardStore::new(Limits::default())))
    }
}

#[tokio::test]
async fn t10_suite_wal_fsync_always() {
    Suite::test_all(WalBuilder(FsyncPolicy::Always))
        .await
        .expect("storage suite");
}

#[tokio::test]
async fn t11_suite_wal_fsync_never() {
    Suite::test_all(WalBuilder(FsyncPolicy::Never))
        .await
        .expect("storage suite");
}

#[tokio::test]
async fn t12_suite_memlog() {
    Suite::test_all(MemBuilder).await.expect("storage suite");
}

// ---- restart and crash ----------------------------------------------------

#[tokio::test]
async fn t20_restart_keeps_everything_acknowledged() {
    let dir = TempDir::new().expect("temp dir");
    let vote = Vote::new_committed(3, 1);
    {
        let wal = Wal::open(dir.path(), FsyncPolicy::Always).expect("open");
        let mut log = wal.log(7);
        append(&mut log, entries(1, 1..=4)).await;
        append(&mut log, entries(2, 5..=10)).await;
        log.save_vote(&vote).await.expect("vote");
        log.save_committed(Some(log_id(2, 8)))
            .await
            .expect("committed");
        log.purge(log_id(1, 3)).await.expect("purge");
        wal.close(); // writes the purge and committed records nobody waited for
        let s = wal.stats();
        assert_eq!(s.records, 5, "{s:?}");
        assert!(s.fsyncs >= 3, "vote and both appends were synced: {s:?}");
        // Closed: writes fail, reads still work.
        assert!(log.save_vote(&vote).await.is_err());
        assert_eq!(all_entries(&mut log).await.len(), 7);
    }
    let wal = Wal::open(dir.path(), FsyncPolicy::Always).expect("reopen");
    assert_eq!(wal.groups(), vec![7]);
    let mut log = wal.log(7);
    let got = all_entries(&mut log).await;
    assert_eq!(indexes(&got), (4..=10).collect::<Vec<_>>());
    assert_eq!(got, [entries(1, 4..=4), entries(2, 5..=10)].concat());
    assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
    assert_eq!(log.read_committed().await.expect("c"), Some(log_id(2, 8)));
    let st = log.get_log_state().await.expect("state");
    assert_eq!(st.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(st.last_log_id, Some(log_id(2, 10)));
    // Still appendable, and an unknown group starts empty.
    append(&mut log, entries(2, 11..=11)).await;
    let mut other = wal.log(8);
    assert!(all_entries(&mut other).await.is_empty());
    assert_eq!(other.read_vote().await.expect("vote"), None);
}

/// Drop without close: the last handle stops the writer after writing what
/// was queued, including records nobody waited for (purge, committed).
#[tokio::test]
async fn t21_drop_flushes_unawaited_records() {
    let dir = TempDir::new().expect("temp dir");
    {
        let wal = Wal::open(dir.path(), FsyncPolicy::Never).expect("open");
        let mut log = wal.log(1);
        append(&mut log, entries(1, 1..=5)).await;
        log.purge(log_id(1, 2)).await.expect("purge");
        log.save_committed(Some(log_id(1, 5))).await.expect("c");
    }
    let wal = Wal::open(dir.path(), FsyncPolicy::Never).expect("reopen");
    let mut log = wal.log(1);
    assert_eq!(indexes(&all_entries(&mut log).await), vec![3, 4, 5]);
    assert_eq!(log.read_committed().await.expect("c"), Some(log_id(1, 5)));
}

/// A crash mid-write leaves part of a record (or garbage) after the last
/// acknowledged one. Reopen cuts it off, keeps every acknowledged record, and
/// the log takes appends again.
#[tokio::test]
async fn t22_torn_tail_is_cut_and_log_stays_appendable() {
    for (name, tail) in [
        ("partial frame", {
            // A frame header announcing 200 bytes, then 10 of them.
            let mut t = 200u32.to_le_bytes().to_vec();
            t.extend_from_slice(&[0xab; 4]);
            t.extend_from_slice(&[7; 10]);
            t
        }),
        ("zeroes", vec![0; 64]),
        ("garbage", (0..=255u8).rev().collect::<Vec<u8>>()),
        ("three bytes", vec![1, 2, 3]),
    ] {
        let dir = TempDir::new().expect("temp dir");
        let vote = Vote::new(2, 1);
        {
            let wal = Wal::open(dir.path(), FsyncPolicy::Always).expect("open");
            let mut log = wal.log(4);
            append(&mut log, entries(1, 1..=6)).await;
            log.save_vote(&vote).await.expect("vote");
            wal.close();
        }
        let seg = segment_files(dir.path()).pop().expect("a segment");
        let good_len = std::fs::metadata(&seg).expect("meta").len();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&seg)
            .expect("open segment")
            .write_all(&tail)
            .expect("write tail");
        {
            let wal = Wal::open(dir.path(), FsyncPolicy::Always).expect(name);
            assert_eq!(
                std::fs::metadata(&seg).expect("meta").len(),
                good_len,
                "{name}"
            );
            let mut log = wal.log(4);
            assert_eq!(
                indexes(&all_entries(&mut log).await),
                (1..=6).collect::<Vec<_>>(),
                "{name}"
            );
            assert_eq!(log.read_vote().await.expect("vote"), Some(vote), "{name}");
            append(&mut log, entries(1, 7..=8)).await;
            wal.close();
        }
        let wal = Wal::open(dir.path(), FsyncPolicy::Always).expect("reopen");
        let mut log = wal.log(4);
        assert_eq!(
            indexes(&all_entries(&mut log).await),
            (1..=8).collect::<Vec<_>>(),
            "{name}"
        );
    }
}

/// A write torn inside the last record: that record (never acknowledged in a
/// real crash) is dropped, everything before it is kept.
#[tokio::test]
async fn t23_record_cut_short_is_dropped() {
    let dir = TempDir::new().expect("temp dir");
    {
        let wal = Wal::open(dir.path(), FsyncPolicy::Always).expect("open");
        let mut log = wal.log(0);
        append(&mut log, entries(1, 1..=3)).await;
        append(&mut log, vec![entry(1, 4, 8)]).await;
        wal.close();
    }
    let seg = segment_files(dir.path()).pop().expect("a segment");
    let len = std::fs::metadata(&seg).expect("meta").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open");
    f.set_len(len - 20).expect("cut");
    drop(f);
    let wal = Wal::open(dir.path(), FsyncPolicy::Always).expect("reopen");
    let mut log = wal.log(0);
    assert_eq!(indexes(&all_entries(&mut log).await), vec![1, 2, 3]);
    append(&mut log, entries(2, 4..=5)).await;
    assert_eq!(
        log.get_log_state().await.expect("state").last_log_id,
        Some(log_id(2, 5))
    );
}

/// Damage before the tail (here: in a segment that is not the last) is not a
/// torn write: open fails and names the file and offset.
#[tokio::test]
async fn t24_corruption_before_the_tail_is_an_error() {
    let dir = TempDir::new().expect("temp dir");
    {
        let wal =
            Wal::open_with(dir.path(), FsyncPolicy::Never, small_segments(1024)).expect("open");
        let mut log = wal.log(0);
        for i in 1..=40 {
            append(&mut log, vec![entry(1, i, 2)]).await;
        }
        assert!(wal.stats().segments >= 3, "{:?}", wal.stats());
        wal.close();
    }
    let first = segment_files(dir.path()).remove(0);
    let mut bytes = std::fs::read(&first).expect("read");
    bytes[100] ^= 0x40;
    std::fs::write(&first, &bytes).expect("write");
    let err = Wal::open(dir.path(), FsyncPolicy::Never).expect_err("corrupt segment");
    let msg = err.to_string();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{msg}");
    assert!(msg.contains(&first.display().to_string()), "{msg}");
    assert!(msg.contains("offset"), "{msg}");
}

/// A flipped byte in the middle of the last segment, with good frames after
/// it, is damage, not a torn tail: open fails and names the file and the
/// offset, and the segment is left as it was (nothing cut). Before, it was
/// cut there, silently dropping the acknowledged entries after it.
#[tokio::test]
async fn t24b_damage_mid_last_segment_is_an_error_not_a_torn_tail() {
    let dir = TempDir::new().expect("temp dir");
    {
        let wal = Wal::open(dir.path(), FsyncPolicy::Always).expect("open");
        let mut log = wal.log(0);
        for i in 1..=20 {
            append(&mut log, vec![entry(1, i, 2)]).await;
        }
        log.save_vote(&Vote::new(3, 1)).await.expect("vote");
        wal.close();
    }
    let last = segment_files(dir.path()).pop().expect("a segment");
    let mut bytes = std::fs::read(&last).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&last, &bytes).expect("write");
    let err = Wal::open(dir.path(), FsyncPolicy::Always).expect_err("damaged segment");
    let msg = err.to_string();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{msg}");
    assert!(msg.contains(&last.display().to_string()), "{msg}");
    assert!(msg.contains("offset") && msg.contains("damage"), "{msg}");
    assert_eq!(std::fs::read(&last).expect("read"), bytes, "nothing cut");
}

/// Each open starts a new segment; the segments earlier opens started and
/// left without entries are deleted, so restarts do not pile up files.
#[tokio::test]
async fn t25_restarts_do_not_pile_up_segments() {
    let dir = TempDir::new().expect("temp dir");
    {
        let wal = Wal::open(dir.path(), FsyncPolicy::Always).expect("open");
        append(&mut wal.log(3), entries(1, 1..=3)).await;
        wal.close();
    }
    for _ in 0..5 {
        let wal = Wal::open(dir.path(), FsyncPolicy::Always).expect("reopen");
        assert_eq!(indexes(&all_entries(&mut wal.log(3)).await), vec![1, 2, 3]);
        assert_eq!(
            wal.stats().segments,
            2,
            "entries' segment and the active one"
        );
        wal.close();
    }
    assert_eq!(segment_files(dir.path()).len(), 2);
}

// ---- truncate, purge, segments ------------------------------------------

#[tokio::test]
async fn t30_truncate_then_append_survives_restart() {
    let dir = TempDir::new().expect("temp dir");
    {
        let wal = Wal::open(dir.path(), FsyncPolicy::Always).expect("open");
        let mut log = wal.log(2);
        append(&mut log, entries(1, 1..=10)).await;
        log.truncate_after(Some(log_id(1, 5)))
            .await
            .expect("truncate");
        assert_eq!(indexes(&all_entries(&mut log).await), vec![1, 2, 3, 4, 5]);
        append(&mut log, entries(2, 6..=8)).await;
        wal.close();
    }
    let wal = Wal::open(dir.path(), FsyncPolicy::Always).expect("reopen");
    let mut log = wal.log(2);
    assert_eq!(
        all_entries(&mut log).await,
        [entries(1, 1..=5), entries(2, 6..=8)].concat()
    );
    // Truncate everything, then start over.
    log.truncate_after(None).await.expect("truncate all");
    assert_eq!(log.get_log_state().await.expect("s").last_log_id, None);
    append(&mut log, entries(3, 1..=2)).await;
    wal.close();
    let wal = Wal::open(dir.path(), FsyncPolicy::Always).expect("reopen");
    let mut log = wal.log(2);
    assert_eq!(all_entries(&mut log).await, entries(3, 1..=2));
}

#[tokio::test]
async fn t31_purge_past_the_last_entry() {
    // What installing a snapshot does: the purged id is beyond the log.
    let dir = TempDir::new().expect("temp dir");
    {
        let wal = Wal::open(dir.path(), FsyncPolicy::Always).expect("open");
        let mut log = wal.log(0);
        append(&mut log, entries(1, 1..=3)).await;
        log.purge(log_id(2, 50)).await.expect("purge");
        let st = log.get_log_state().await.expect("state");
        assert_eq!(st.last_log_id, Some(log_id(2, 50)));
        append(&mut log, entries(2, 51..=52)).await;
        wal.close();
    }
    let wal = Wal::open(dir.path(), FsyncPolicy::Always).expect("reopen");
    let mut log = wal.log(0);
    assert_eq!(all_entries(&mut log).await, entries(2, 51..=52));
    let st = log.get_log_state().await.expect("state");
    assert_eq!(st.last_purged_log_id, Some(log_id(2, 50)));
}

/// Segments rotate at the size limit; a reopen replays across all of them;
/// purging every group's old entries deletes the old segments.
#[tokio::test]
async fn t32_rotation_recovery_and_segment_deletion() {
    let dir = TempDir::new().expect("temp dir");
    let opts = small_segments(4096);
    {
        let wal = Wal::open_with(dir.path(), FsyncPolicy::Always, opts.clone()).expect("open");
        let mut a = wal.log(1);
        let mut b = wal.log(2);
        for i in 1..=100 {
            append(&mut a, vec![entry(1, i, 3)]).await;
            append(&mut b, vec![entry(1, i, 3)]).await;
        }
        let s = wal.stats();
        assert!(s.segments >= 6, "{s:?}");
        assert_eq!(s.segments, segment_files(dir.path()).len());
        wal.close();
    }
    let wal = Wal::open_with(dir.path(), FsyncPolicy::Always, opts.clone()).expect("reopen");
    let before = wal.stats().segments;
    assert_eq!(before, segment_files(dir.path()).len());
    let mut a = wal.log(1);
    let mut b = wal.log(2);
    assert_eq!(all_entries(&mut a).await.len(), 100);
    assert_eq!(
        all_entries(&mut b).await,
        (1..=100).map(|i| entry(1, i, 3)).collect::<Vec<_>>()
    );

    // Group 1 alone purged: group 2 still needs every segment.
    a.purge(log_id(1, 90)).await.expect("purge");
    append(&mut a, vec![entry(1, 101, 3)]).await; // the purge is written
    assert_eq!(wal.stats().segments, before);

    // Both purged: only segments holding entries above 90 remain.
    b.purge(log_id(1, 90)).await.expect("purge");
    append(&mut b, vec![entry(1, 101, 3)]).await;
    let after = wal.stats().segments;
    assert!(after <= 3, "before {before}, after {after}");
    assert_eq!(after, segment_files(dir.path()).len());
    wal.close();

    let wal = Wal::open_with(dir.path(), FsyncPolicy::Always, opts).expect("reopen");
    for g in [1, 2] {
        let mut log = wal.log(g);
        assert_eq!(
            indexes(&all_entries(&mut log).await),
            (91..=101).collect::<Vec<_>>()
        );
        let st = log.get_log_state().await.expect("state");
        assert_eq!(st.last_purged_log_id, Some(log_id(1, 90)));
    }
}

/// Segment headers carry what a deleted segment held: here a truncation
/// and a vote of group 1 live only in segments that get deleted (group 2's
/// entries, purged), while group 1's older entries keep the first segment.
#[tokio::test]
async fn t33_headers_keep_state_of_deleted_segments() {
    let dir = TempDir::new().expect("temp dir");
    let opts = small_segments(2048);
    let vote = Vote::new_committed(2, 1);
    {
        let wal = Wal::open_with(dir.path(), FsyncPolicy::Never, opts.clone()).expect("open");
        let mut a = wal.log(1);
        let mut b = wal.log(2);
        append(&mut a, entries(1, 1..=5)).await;
        for i in 1..=80 {
            append(&mut b, vec![entry(1, i, 3)]).await;
            if i == 30 {
                a.truncate_after(Some(log_id(1, 3)))
                    .await
                    .expect("truncate");
                a.save_vote(&vote).await.expect("vote");
            }
        }
        b.purge(log_id(1, 80)).await.expect("purge");
        append(&mut b, vec![entry(1, 81, 1)]).await;
        let files = segment_files(dir.path());
        assert_eq!(
            files.len(),
            2,
            "first (group 1's entries) and active: {files:?}"
        );
        assert!(files[0].ends_with(format!("{:020}.wal", 1)), "{files:?}");
        wal.close();
    }
    let wal = Wal::open_with(dir.path(), FsyncPolicy::Never, opts).expect("reopen");
    let mut a = wal.log(1);
    assert_eq!(all_entries(&mut a).await, entries(1, 1..=3));
    assert_eq!(a.read_vote().await.expect("vote"), Some(vote));
    let mut b = wal.log(2);
    assert_eq!(indexes(&all_entries(&mut b).await), vec![81]);
    append(&mut a, entries(2, 4..=4)).await;
}

// ---- many groups --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_sixteen_groups_append_concurrently() {
    const GROUPS: u32 = 16;
    const APPENDS: u64 = 100;
    let dir = TempDir::new().expect("temp dir");
    // Several fdatasyncs in flight (the default is one at a time).
    let opts = WalOptions {
        syncs_in_flight_max: 4,
        ..small_segments(64 << 10)
    };
    {
        let wal = Wal::open_with(dir.path(), FsyncPolicy::Always, opts.clone()).expect("open");
        let mut tasks = tokio::task::JoinSet::new();
        for g in 0..GROUPS {
            let mut log = wal.log(g);
            tasks.spawn(async move {
                log.save_vote(&Vote::new(1, g as u64)).await.expect("vote");
                for i in 1..=APPENDS {
                    append(&mut log, vec![entry(1, i, 1 + (g as usize % 4))]).await;
                    if i % 25 == 0 {
                        log.save_committed(Some(log_id(1, i))).await.expect("c");
                    }
                }
                log.purge(log_id(1, 10)).await.expect("purge");
            });
        }
        tokio::time::timeout(DEADLINE, async {
            while let Some(r) = tasks.join_next().await {
                r.expect("task");
            }
        })
        .await
        .expect("tasks done before the deadline");
        wal.close();
        let s = wal.stats();
        // 16 votes + 1600 appends + 64 committed + 16 purges.
        assert_eq!(s.records, 16 + 1600 + 64 + 16, "{s:?}");
        assert!(s.fsyncs <= s.records, "{s:?}");
    }
    let wal = Wal::open_with(dir.path(), FsyncPolicy::Always, opts).expect("reopen");
    assert_eq!(wal.groups(), (0..GROUPS).collect::<Vec<_>>());
    for g in 0..GROUPS {
        let mut log = wal.log(g);
        let want: Vec<Entry> = (11..=APPENDS)
            .map(|i| entry(1, i, 1 + (g as usize % 4)))
            .collect();
        assert_eq!(all_entries(&mut log).await, want, "group {g}");
        assert_eq!(
            log.read_vote().await.expect("v"),
            Some(Vote::new(1, g as u64))
        );
        assert_eq!(
            log.read_committed().await.expect("c"),
            Some(log_id(1, APPENDS))
        );
    }
}

/// Appends that openraft pipelines (it does not wait for one flush before
/// the next append) share fsyncs: far fewer fsyncs than records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t41_pipelined_appends_share_fsyncs() {
    const N: u64 = 2000;
    let dir = TempDir::new().expect("temp dir");
    let wal = Wal::open(dir.path(), FsyncPolicy::Always).expect("open");
    let mut log = wal.log(0);
    let mut flushed = Vec::new();
    for i in 1..=N {
        let (tx, rx) = TypeConfig::oneshot();
        log.append(vec![entry(1, i, 1)], IOFlushed::signal(tx))
            .await
            .expect("append");
        flushed.push(rx);
    }
    for rx in flushed {
        tokio::time::timeout(DEADLINE, rx)
            .await
            .expect("flushed before the deadline")
            .expect("callback")
            .expect("durable");
    }
    let s = wal.stats();
    assert_eq!(s.records, N);
    assert!(s.fsyncs * 4 < N, "group commit: {s:?}");
}

/// Snapshot files carry a magic number, a format version and a checksum: a
/// damaged one is refused on open, naming the file; an older snapshot never
/// replaces a newer one on disk; temp files a crash left are cleared.
#[tokio::test]
async fn t40_snapshot_files_are_checked_and_never_go_backwards() {
    use openraft::storage::RaftStateMachine;
    use openraft::RaftSnapshotBuilder;
    let dir = TempDir::new().expect("temp dir");
    let path = dir.path().join("shard-0-1.snap");
    let mut store = ShardStore::open(Limits::default(), path.clone()).expect("open");
    let built = store
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let data = built.snapshot.into_inner();
    let meta_at = |index| openraft::alias::SnapshotMetaOf::<TypeConfig> {
        last_log_id: Some(log_id(1, index)),
        last_membership: Default::default(),
    };
    store
        .install_snapshot(&meta_at(10), std::io::Cursor::new(data.clone()))
        .await
        .expect("install at 10");
    // An older one installed later (a slow transfer): the file keeps 10.
    store
        .install_snapshot(&meta_at(5), std::io::Cursor::new(data))
        .await
        .expect("install at 5");
    std::fs::write(dir.path().join("shard-0-1.tmp.1.7"), b"left by a crash").expect("temp");
    let reopened = ShardStore::open(Limits::default(), path.clone()).expect("reopen");
    assert_eq!(reopened.applied(), Some(log_id(1, 10)));
    assert!(
        !dir.path().join("shard-0-1.tmp.1.7").exists(),
        "temp files cleared on open"
    );
    drop(reopened);
    // One flipped byte anywhere is found.
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let err = ShardStore::open(Limits::default(), path.clone())
        .err()
        .expect("a damaged snapshot is refused");
    let msg = err.to_string();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{msg}");
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("checksum"),
        "{msg}"
    );
    // Not a snapshot file at all.
    std::fs::write(&path, b"hello").expect("write");
    let err = ShardStore::open(Limits::default(), path.clone())
        .err()
        .expect("not a snapshot");
    assert!(err.to_string().contains("magic"), "{err}");
}

/// The WAL's first I/O error is visible outside its writer: `failure()`
/// names it (chargerd's process then reports NOT_SERVING and exits
/// non-zero), and every later write fails rather than being acknowledged.
/// Here the error is a segment rotation that cannot create its file.
#[tokio::test]
async fn t26_an_io_error_is_visible_and_fails_every_later_write() {
    let dir = TempDir::new().expect("temp dir");
    let wal = Wal::open_with(dir.path(), FsyncPolicy::Always, small_segments(1024)).expect("open");
    assert_eq!(wal.failure(), None);
    // The next segment's name is taken: rotating into it fails (EEXIST).
    let active = segment_files(dir.path()).pop().expect("the active segment");
    let seq: u64 = active
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("a segment number");
    std::fs::write(dir.path().join(format!("{:020}.wal", seq + 1)), b"").expect("squat");
    let mut log = wal.log(0);
    let mut failed_at = None;
    for i in 1..=200 {
        let (tx, rx) = TypeConfig::oneshot();
        if log
            .append(vec![entry(1, i, 2)], IOFlushed::signal(tx))
            .await
            .is_err()
        {
            failed_at = Some(i);
            break;
        }
        let flushed = tokio::time::timeout(DEADLINE, rx).await.expect("answered");
        if !matches!(flushed, Ok(Ok(()))) {
            failed_at = Some(i);
            break;
        }
    }
    let at = failed_at.expect("the rotation failed a write");
    let why = wal.failure().expect("the failure is visible");
    assert!(why.to_lowercase().contains("exist"), "{why}");
    // Every later write fails too: nothing is acknowledged after it.
    let (tx, rx) = TypeConfig::oneshot();
    let later = log
        .append(vec![entry(1, at + 1, 2)], IOFlushed::signal(tx))
        .await;
    assert!(
        later.is_err()
            || !matches!(
                tokio::time::timeout(DEADLINE, rx).await.expect("answered"),
                Ok(Ok(()))
            )
    );
}

/// A snapshot file that cannot be written fails the build and is reported
/// to the store's write-error sink (the node stops through it: see
/// `node::start`); a build that can write reports nothing. Here the write
/// fails because the snapshot folder is gone.
#[tokio::test]
async fn t42_a_snapshot_write_error_is_reported() {
    use openraft::storage::RaftStateMachine;
    use openraft::RaftSnapshotBuilder;
    let dir = TempDir::new().expect("temp dir");
    let snaps = dir.path().join("snapshots");
    std::fs::create_dir_all(&snaps).expect("mkdir");
    let path = snaps.join("shard-0.snap");
    let reported = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = {
        let reported = reported.clone();
        std::sync::Arc::new(move |why: String| reported.lock().unwrap().push(why))
    };
    let mut store = ShardStore::open(Limits::default(), path.clone())
        .expect("open")
        .on_write_error(sink);
    store
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("a build that can write");
    assert!(reported.lock().unwrap().is_empty());
    std::fs::remove_dir_all(&snaps).expect("remove the folder");
    let Err(err) = store.get_snapshot_builder().await.build_snapshot().await else {
        panic!("a build that cannot write fails");
    };
    let reported = reported.lock().unwrap().clone();
    assert_eq!(reported.len(), 1, "{reported:?} ({err})");
    assert!(
        reported[0].contains(&path.display().to_string()),
        "names the file: {}",
        reported[0]
    );
}
