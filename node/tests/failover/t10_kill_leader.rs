//! Kill a shard's leader mid-load: a new leader serves, every unknown outcome
//! settles on retry with the same request id, and balances reconcile exactly
//! with the acknowledged history (no loss, no double apply).
use super::*;
use charging_client::{new_request_id, proto::ResultCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const WORKERS: usize = 8;
const PAIRS_PER_WORKER: usize = 40;
const INITIAL: i64 = 1_000_000;

struct Acked {
    account: String,
    commit_id: charging_client::Uuid,
    reservation: u64,
    charged: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_leader_mid_load_loses_nothing_and_applies_nothing_twice() {
    let mut c = cluster().await;
    // The victim leads the shard of worker 0's account.
    let accounts: Vec<String> = (0..WORKERS).map(|w| format!("kill-{w}")).collect();
    let victim = c
        .deciding_leader(shard(&accounts[0]))
        .expect("shard has a leader");
    let survivor = *c.nodes.keys().find(|id| **id != victim).expect("3 nodes");
    let cl = client(c.public_url(survivor)).await;
    set_data_tariff(&cl).await;
    for a in &accounts {
        let r = settle(|| cl.create_account(a.clone(), "EUR", INITIAL, 0, vec![])).await;
        assert_eq!(r.result, ResultCode::Ok as i32);
    }

    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for a in accounts.clone() {
        let cl = cl.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..PAIRS_PER_WORKER {
                let session = format!("{a}-s{i}");
                let rid = new_request_id();
                let r =
                    settle(|| cl.reserve_with_id(rid, a.clone(), session.clone(), 0, RG, mb(1)))
                        .await;
                assert_eq!(r.result, ResultCode::Ok as i32, "reserve {a} {i}");
                let cid = new_request_id();
                let m = settle(|| cl.commit_with_id(cid, a.clone(), r.reservation_id, mb(1), true))
                    .await;
                assert_eq!(m.result, ResultCode::Ok as i32, "commit {a} {i}");
                acked.push(Acked {
                    account: a.clone(),
                    commit_id: cid,
                    reservation: r.reservation_id,
                    charged: m.charged,
                });
                done.fetch_add(1, Ordering::Relaxed);
            }
            acked
        }));
    }

    // Kill the victim once load is flowing.
    let wait_until = Instant::now() + Duration::from_secs(30);
    while done.load(Ordering::Relaxed) < WORKERS * PAIRS_PER_WORKER / 4 {
        assert!(Instant::now() < wait_until, "load did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = done.load(Ordering::Relaxed);
    let killed_at = Instant::now();
    c.kill(victim).await;
    // A new leader serves: progress resumes.
    while done.load(Ordering::Relaxed) <= before + WORKERS {
        assert!(
            killed_at.elapsed() < Duration::from_secs(20),
            "no progress after the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "service resumed {:?} after killing node {victim}",
        killed_at.elapsed()
    );
    c.wait_ready(Duration::from_secs(20))
        .await
        .expect("every shard has a leader again");

    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("worker"));
    }
    assert_eq!(acked.len(), WORKERS * PAIRS_PER_WORKER);

    // Balances reconcile exactly with the acknowledged history.
    for a in &accounts {
        let charged: i64 = acked
            .iter()
            .filter(|x| &x.account == a)
            .map(|x| x.charged)
            .sum();
        assert_eq!(
            charged, PAIRS_PER_WORKER as i64,
            "every pair charges 1 unit"
        );
        let b = settle(|| cl.balance(a.clone())).await;
        assert_eq!(b.available, INITIAL - charged, "balance of {a}");
        assert_eq!(b.open_reservations, 0, "reservations of {a}");
    }
    // A retried commit returns its original result and changes nothing.
    for x in acked.iter().step_by(7) {
        let again = settle(|| {
            cl.commit_with_id(x.commit_id, x.account.clone(), x.reservation, mb(1), true)
        })
        .await;
        assert_eq!(again.result, ResultCode::Ok as i32);
        assert_eq!(again.charged, x.charged);
    }
    for a in &accounts {
        let b = settle(|| cl.balance(a.clone())).await;
        assert_eq!(
            b.available,
            INITIAL - PAIRS_PER_WORKER as i64,
            "duplicates changed {a}"
        );
    }
    c.shutdown().await;
}
