//! Decision time of one reserve, as the shard actor pays it: the account is
//! shared with the published applied state (so `decide` copies on write),
//! tariffs are looked up, the decision is made and an event is built.
//!
//! `cargo bench -p charging-node --bench decide`
// Tests and benches run in real time and read the OS clock; the node core
// may not (node/clippy.toml).
#![allow(clippy::disallowed_methods)]
use charging_node::ledger::*;
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::Instant;

const WARMUP: u64 = 20_000;
const SAMPLES: u64 = 200_000;

fn main() {
    let limits = Limits::default();
    let mut tariffs = Tariffs::new();
    tariffs.insert(
        32,
        Tariff {
            rating_group: 32,
            version: 1,
            prices: vec![Price {
                unit: BucketKind::Bytes,
                increment: 1_000_000,
                nano_per_increment: 1_000_000_000,
            }],
        },
    );
    let now = 1_800_000_000_000u64;
    let account = AccountId("imsi-001010000000001".into());
    let mut acct: Option<Arc<Account>> = None;
    let create = Request {
        account: account.clone(),
        request_id: RequestId(((now as u128) << 80) | 1),
        cmd: Command::CreateAccount {
            currency: "EUR".into(),
            credit_limit: 0,
            initial_balance: i64::MAX / 4,
            buckets: vec![],
        },
    };
    assert!(matches!(
        decide(&mut acct, &tariffs, &limits, &create, now),
        Decision::Accept(_)
    ));
    let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).expect("histogram");
    for i in 0..(WARMUP + SAMPLES) {
        // A published copy shares the account, as in the node.
        let published = acct.clone();
        let req = Request {
            account: account.clone(),
            request_id: RequestId(((now as u128) << 80) | (i as u128 + 2)),
            cmd: Command::Reserve {
                session: SessionId(format!("s{}", i % 64)),
                seq: i / 64,
                rating_group: 32,
                requested: Units {
                    volume_bytes: 10_000_000,
                    ..Default::default()
                },
            },
        };
        let t = Instant::now();
        let mut used = Tariffs::new();
        if let Some(tf) = tariffs.get(&32) {
            used.insert(32, tf.clone());
        }
        let d = decide(&mut acct, &used, &limits, &req, now + i / 1000);
        let ev = AccountEvent {
            request: req,
            expected_version: 0,
            decided_ms: now,
            tariffs: used,
        };
        let ns = t.elapsed().as_nanos() as u64;
        std::hint::black_box((&d, &ev));
        drop(published);
        if i >= WARMUP {
            hist.record(ns.max(1)).expect("record");
        }
        // Keep the account small: terminate sessions now and then.
        if i % 64 == 63 {
            for s in 0..64 {
                let t = Request {
                    account: account.clone(),
                    request_id: RequestId(
                        ((now as u128) << 80) | (1u128 << 40) | (i as u128 * 64 + s),
                    ),
                    cmd: Command::Terminate {
                        session: SessionId(format!("s{s}")),
                        seq: i / 64 + 1,
                        reports: vec![],
                    },
                };
                let _ = decide(&mut acct, &tariffs, &limits, &t, now + i / 1000);
            }
        }
    }
    println!(
        "decide(reserve) over {SAMPLES} samples: p50 {:.2} us  p99 {:.2} us  p99.9 {:.2} us  max {:.2} us",
        hist.value_at_quantile(0.50) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.value_at_quantile(0.999) as f64 / 1000.0,
        hist.max() as f64 / 1000.0
    );
}
