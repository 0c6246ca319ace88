//! Full-stack simulation seeds (issue 6): 3 and 5 real nodes (node code,
//! gRPC, openraft) on turmoil's network under the seeded nemesis:
//! partitions (asymmetric ones too), isolated leaders, delay and loss,
//! crashes that lose the unflushed log tail and restarts, clock jumps, and a
//! spare node joining and a member draining among them. Everything heals,
//! the checker runs on the history and on every replica's state.
//!
//! Only compiled with `RUSTFLAGS="--cfg tokio_unstable"` (then turmoil seeds
//! every host's runtime): `.ci/run` runs it as its own step, in its own
//! target dir. A seed replays its run exactly (the node's maps use a fixed
//! hasher and its monotonic time is tokio's, which turmoil simulates):
//! [`a_seed_replays_its_run_exactly`] holds it to that.
//!
//! ```text
//! RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR=target/sim \
//!     cargo test -p charging-chaos --test turmoil_seeds
//! ```
#![cfg(tokio_unstable)]

use charging_chaos::turmoil_sim::{self, TurmoilRun};
use std::sync::RwLock;

/// A seed replays exactly when it is the only simulation in its process (as
/// with `chargechaos sim --seed`), but not always while another one runs on
/// another thread of the same process: seed 12 then ended 1 simulated ms
/// apart in about 1 run of 3 (at 6243879 too). The two runs took the same
/// events in the same order, then from one entry on every clock read was
/// 1 ms later; sequential runs on fresh threads and runs under CPU load from
/// other processes stayed identical, so it is state shared across the
/// process (not yet found), not the node reading real time. The replay
/// check therefore runs alone (write lock); the other seeds run side by side
/// (read locks).
static ALONE: RwLock<()> = RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    ALONE.read().unwrap_or_else(|p| p.into_inner())
}

/// Seeds that once failed, with their node count and whether scale-out ran;
/// each failure was fixed (see the commit named with it).
const PINNED: &[(u64, u64, bool)] = &[
    // An isolated leader acknowledged, on retry, two top-ups the new leader
    // never had: the shard actor answered a queued duplicate with its
    // speculative result when the epoch ended ("Shard actor: never
    // acknowledge a duplicate whose original was lost with the epoch").
    (3, 3, false),
    // The same run also never converged: a leader kept sending on an Append
    // stream to a peer that had crashed behind a partition (half-open) ("a
    // session that times out closes its Append stream when the whole stream
    // has been silent").
    //
    // Failed with the same two signatures before those fixes, in a build
    // without `tokio_unstable` (so not replayable then).
    (7, 3, false),
    // A leader panicked ("follower log reversion"): a shard moved back onto
    // a node that still hosted the incarnation that had left, so the new
    // incarnation's learner messages reached the old replica and its log was
    // taken for the newcomer's ("Raft messages name the replica they are
    // for").
    (11, 3, true),
    // Replicas diverged: a leader crashed with an entry its followers held
    // but its own log had not made durable, restarted as leader of the same
    // term and appended another entry under that log id ("Raft: a restarted
    // leader comes back a follower"). Seed 1037 with 3 nodes took that path
    // 1 run in 7 while the node's hashers were random. With the tail trap
    // (the nemesis crashes a leader the moment a follower holds an entry it
    // has not flushed) and leader restore switched back on, seeds 1-20 fail
    // 7 times; these two are the shortest of them (both 5 nodes). Since the
    // Raft timings became 50 / 150-300 ms (and nodes probe each other's
    // clocks), seeds 8, 13 and 14 of 1-18 catch it; 8 replaced 12.
    (8, 0, true),
    (14, 0, true),
    // (Seed 1 with 3 nodes, in `three_node_seeds_hold_every_invariant`, once
    // raised an apply alarm: see "after a batch fails to commit, a duplicate
    // on that account is answered unknown".)
];

fn run(seed: u64, nodes: u64, scale: bool) -> TurmoilRun {
    let run = {
        let _side_by_side = shared();
        turmoil_sim::run(seed, nodes, scale)
    };
    let r = &run.report;
    assert!(
        r.ok(),
        "seed {seed} ({}): {} violation(s):\n{}\nreproduce: RUSTFLAGS=\"--cfg tokio_unstable\" \
         CARGO_TARGET_DIR=target/sim cargo run -p charging-chaos --bin chargechaos -- sim \
         --seed {seed} --iterations 1 --nodes {nodes}{} --verbose",
        run.summary(),
        r.violations.len(),
        r.violations
            .iter()
            .take(10)
            .map(|v| format!("  {v}"))
            .collect::<Vec<_>>()
            .join("\n"),
        if scale { "" } else { " --no-scale" }
    );
    // A run that acknowledged nothing checked nothing.
    assert!(r.acked > 0, "seed {seed}: no operation acknowledged");
    assert!(
        r.replicas_compared > 0,
        "seed {seed}: no two replicas compared"
    );
    println!(
        "seed {seed}: ops {} (acked {}, unknown {}), {}",
        r.ops,
        r.acked,
        r.unknown,
        run.summary()
    );
    run
}

fn seeds(nodes: u64, seeds: impl Iterator<Item = u64>) {
    let (mut faults, mut adds, mut drains) = (0, 0, 0);
    for seed in seeds {
        let run = run(seed, nodes, true);
        faults += run.faults.total();
        adds += run.faults.adds;
        drains += run.faults.drains_accepted;
    }
    // The nemesis really ran, scale-out included.
    assert!(
        faults > 0 && adds > 0 && drains > 0,
        "faults {faults}, adds {adds}, drains {drains}"
    );
}

#[test]
fn three_node_seeds_hold_every_invariant() {
    seeds(3, 1..=6);
}

#[test]
fn five_node_seeds_hold_every_invariant() {
    seeds(5, 101..=104);
}

#[test]
fn pinned_seeds_hold_every_invariant() {
    for &(seed, nodes, scale) in PINNED {
        run(seed, nodes, scale);
    }
}

#[test]
fn a_seed_replays_its_run_exactly() {
    // Seed 12 crashes a leader on a tail trap: the run most sensitive to
    // where, to the step, a message is when a node dies.
    let _alone = ALONE.write().unwrap_or_else(|p| p.into_inner());
    let a = turmoil_sim::run(12, 0, true);
    let b = turmoil_sim::run(12, 0, true);
    assert!(a.history.ops.len() > 100 && a.faults.total() > 0);
    assert!(
        a.faults.tail_crashes > 0 && a.faults.lost_tail_entries > 0,
        "seed 12 lost no tail entry: {}",
        a.summary()
    );
    assert_eq!(
        a.fingerprint(),
        b.fingerprint(),
        "seed 12 ran differently twice: {} vs {}",
        a.summary(),
        b.summary()
    );
}

/// The pinned seeds above prove the fix only if the suite runs the fixed
/// node: the bug behind seeds 8 and 14 exists as a test-only feature
/// (`teeth_restore.rs`), which must not be compiled in here.
#[test]
fn a_restarted_leader_comes_back_a_follower() {
    let c = charging_node::raft::raft_config("guard", 1000, Default::default());
    assert_eq!(c.enable_leader_restore, Some(false));
}
