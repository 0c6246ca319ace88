//! The transport-free layer over a fixed, bounded set of seeds (a few
//! seconds), plus every seed that once failed, pinned.
use charging_chaos::fast::{run, FastConfig};

/// Seeds that once found a violation (or a checker false alarm). Each stays
/// here forever as a regression test.
const PINNED: &[u64] = &[];

fn check(seeds: impl Iterator<Item = u64>, cfg: &FastConfig) -> (usize, u32) {
    let (mut ops, mut faults) = (0, 0);
    for s in seeds {
        let r = run(s, cfg);
        assert!(
            r.report.ok(),
            "seed {s}: {:#?}\nreproduce: chargechaos sim --layer fast --seed {s} --iterations 1 --steps {} --verbose",
            r.report.violations,
            cfg.steps
        );
        ops += r.report.ops;
        faults += r.faults.total();
    }
    (ops, faults)
}

#[test]
fn fixed_seeds_hold_every_invariant() {
    let (ops, faults) = check(1..=150, &FastConfig::default());
    assert!(ops > 10_000 && faults > 3_000, "ops {ops}, faults {faults}");
}

#[test]
fn long_seeds_hold_every_invariant() {
    let cfg = FastConfig {
        steps: 3_000,
        accounts: 16,
        clients: 8,
        ..FastConfig::default()
    };
    check(1_000_001..=1_000_004, &cfg);
}

#[test]
fn pinned_seeds_hold_every_invariant() {
    check(PINNED.iter().copied(), &FastConfig::default());
}

/// The normal suite must never be built with the injected bug (cargo
/// feature unification would do that if a dev-dependency enabled it).
#[test]
#[cfg(not(feature = "bug-dup-applies-twice"))]
fn the_injected_bug_is_not_compiled_in() {
    use charging_node::ledger::*;
    let req = |cmd| Request {
        account: AccountId("a".into()),
        request_id: charging_chaos::history::request_id_at(1_750_000_000_000, 7),
        cmd,
    };
    let mut a = None;
    let now = 1_750_000_000_000;
    let create = Command::CreateAccount {
        currency: "EUR".into(),
        credit_limit: 0,
        initial_balance: 10,
        buckets: vec![],
    };
    let mut r = req(create);
    r.request_id = charging_chaos::history::request_id_at(now, 1);
    assert!(matches!(
        decide(&mut a, &Tariffs::new(), &Limits::default(), &r, now),
        Decision::Accept(_)
    ));
    let t = req(Command::TopUp {
        bucket: BucketId(0),
        amount: 5,
    });
    assert!(matches!(
        decide(&mut a, &Tariffs::new(), &Limits::default(), &t, now),
        Decision::Accept(_)
    ));
    assert!(matches!(
        decide(&mut a, &Tariffs::new(), &Limits::default(), &t, now),
        Decision::Duplicate(_)
    ));
}
