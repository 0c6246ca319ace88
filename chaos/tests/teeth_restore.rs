//! The checker has teeth for replicas and durability too: with the node
//! built with the replica-divergence bug put back (a restarted leader resumes
//! its old term and appends a second entry under a log id its followers
//! already hold; fixed by "Raft: a restarted leader comes back a follower"),
//! the full-stack simulation catches it on the seeds pinned for it.
//!
//! Its own invocation, so the bug never reaches the normal suite:
//!
//! ```text
//! RUSTFLAGS="--cfg tokio_unstable" CARGO_TARGET_DIR=target/sim \
//!   cargo test -p charging-chaos --features bug-leader-restore --test teeth_restore
//! ```
#![cfg(all(tokio_unstable, feature = "bug-leader-restore"))]
use charging_chaos::checker::Kind;
use charging_chaos::turmoil_sim;

#[test]
fn the_simulation_catches_a_leader_that_resumes_its_term() {
    // The seeds `turmoil_seeds.rs` pins for this bug: each passes on the
    // fixed node, so what fails here is the bug.
    for seed in [8, 14] {
        let run = turmoil_sim::run(seed, 0, true);
        let r = &run.report;
        println!(
            "seed {seed}: {} violation(s), {}",
            r.violations.len(),
            run.summary()
        );
        for v in &r.violations {
            println!("  {v}");
        }
        assert!(
            run.faults.tail_crashes > 0,
            "seed {seed}: no leader crashed on the tail trap: {}",
            run.summary()
        );
        assert!(
            r.has(Kind::ReplicaDivergence),
            "the injected bug went unnoticed on seed {seed}: {}",
            run.summary()
        );
    }
}
