//! The checker has teeth: with the node built with a deliberately injected
//! bug (a duplicate top-up is applied again), the simulators find it.
//!
//! Runs only as its own invocation, so the bug never reaches the normal
//! suite: `cargo test -p charging-chaos --features bug-dup-applies-twice --test teeth`.
#![cfg(feature = "bug-dup-applies-twice")]
use charging_chaos::checker::Kind;
use charging_chaos::fast::{run, FastConfig};

#[test]
fn the_fast_layer_catches_a_duplicate_applied_twice() {
    let mut caught = Vec::new();
    for s in 1..=50u64 {
        let r = run(s, &FastConfig::default());
        if r.report.has(Kind::DuplicateChanged) {
            caught.push(s);
        }
    }
    assert!(
        caught.len() >= 10,
        "the injected bug went unnoticed: caught in seeds {caught:?}"
    );
    println!(
        "injected bug caught in {} of 50 seeds: {caught:?}",
        caught.len()
    );
}
