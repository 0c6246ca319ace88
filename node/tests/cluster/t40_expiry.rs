//! Reservation expiry by the sweeper, and late usage after expiry: still
//! charged, from the reservation's tombstone.
use crate::support::*;
use charging_client::proto::{BucketKind, ResultCode, Units};
use charging_node::config::NodeConfig;
use std::sync::Arc;
use std::time::Duration;

const VALIDITY_MS: u64 = 1_000;
const GRACE_MS: u64 = 200;

async fn start_short_validity() -> Env {
    start_with(Some(Arc::new(|cfg: &mut NodeConfig| {
        cfg.ledger.reservation_validity_ms = VALIDITY_MS;
        cfg.ledger.expiry_grace_ms = GRACE_MS;
        cfg.sweep_period = Duration::from_millis(100);
    })))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_expire_and_late_usage_is_still_charged() {
    let env = start_short_validity().await;
    let c = &env.client;
    set_tariff(
        c,
        tariff(RG_DATA, BucketKind::Bytes, MB, DATA_PER_MB as u64),
    )
    .await;
    let a = "exp-1";
    create(c, a, 1_000).await;

    let t0 = now_ms();
    let r1 = c.reserve(a, "s1", 1, RG_DATA, bytes(5 * MB)).await.unwrap();
    assert_rc(r1.result, ResultCode::Ok, "reserve s1");
    let r2 = c.reserve(a, "s2", 1, RG_DATA, bytes(2 * MB)).await.unwrap();
    assert_rc(r2.result, ResultCode::Ok, "reserve s2");
    let t1 = now_ms();
    for r in [&r1, &r2] {
        assert!(
            (t0 + VALIDITY_MS..=t1 + VALIDITY_MS).contains(&r.expires_at_ms),
            "expires_at_ms {} = decision time + validity, decided in [{t0}, {t1}]",
            r.expires_at_ms
        );
    }
    let sweep_at = r1.expires_at_ms.max(r2.expires_at_ms) + GRACE_MS;
    let b = balance(c, a).await;
    if now_ms() < r1.expires_at_ms.min(r2.expires_at_ms) + GRACE_MS {
        // Read before either could expire: both holds are there.
        assert_money(&b, 1_000, 70);
        assert_eq!(b.open_reservations, 2);
    }

    // The sweeper releases both holds once validity + grace has passed.
    let b = poll(
        Duration::from_secs(10),
        "holds released by expiry",
        || async {
            let b = balance(c, a).await;
            (b.open_reservations == 0 && main_bucket(&b).reserved == 0).then_some(b)
        },
    )
    .await;
    assert!(
        now_ms() >= sweep_at,
        "expired no earlier than validity + grace ({} < {sweep_at})",
        now_ms()
    );
    assert_money(&b, 1_000, 0);
    // create, 2 reserves, 2 expiries; the sessions stay open.
    assert_eq!((b.version, b.open_sessions), (5, 2));

    // An expired reservation is resolved: it cannot be released...
    let r = c.release(a, r1.reservation_id).await.unwrap();
    assert_rc(
        r.result,
        ResultCode::ReservationAlreadyResolved,
        "release after expiry",
    );
    // ...but usage reported late is charged in full: 1 MB (10), then 1.5 MB
    // more, final (cumulative 2.5 MB = 30: 20 more).
    let r = c
        .commit(a, r1.reservation_id, bytes(MB), false)
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "late commit");
    assert_eq!((r.charged, r.debt), (10, 0));
    assert_money(&balance(c, a).await, 990, 0);
    let r = c
        .commit(a, r1.reservation_id, bytes(1_500 * KB), true)
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "late final commit");
    assert_eq!((r.charged, r.debt), (20, 0));
    assert_money(&balance(c, a).await, 970, 0);
    let r = c
        .commit(a, r1.reservation_id, bytes(MB), true)
        .await
        .unwrap();
    assert_rc(
        r.result,
        ResultCode::ReservationAlreadyResolved,
        "commit after the final one",
    );

    // A session's late usage on an expired rating group is charged too.
    let r = c
        .terminate(
            a,
            "s2",
            2,
            vec![report(RG_DATA, bytes(MB), Units::default())],
        )
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "terminate after expiry");
    assert_eq!((r.charged, r.debt), (10, 0));
    let b = balance(c, a).await;
    assert_money(&b, 960, 0);
    assert_eq!((b.open_sessions, b.open_reservations, b.debt), (1, 0, 0));
    env.shutdown().await;
}
