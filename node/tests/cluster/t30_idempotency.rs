//! Idempotency: a duplicate returns the original result and changes
//! nothing; the same id with other parameters is REQUEST_ID_REUSED; session
//! operations dedup on (session, seq); rejections are not remembered.
use crate::support::*;
use charging_client::proto::{AccountState, BucketKind, BucketSpec, ResultCode, Units};

/// Runs `$call` again and checks it returns exactly `$orig` and that
/// `$acct`'s balance view (version included) did not move.
macro_rules! duplicate {
    ($c:expr, $acct:expr, $orig:expr, $call:expr) => {{
        let before = balance($c, $acct).await;
        let again = $call.await.expect(stringify!($call));
        assert_eq!(
            again,
            $orig,
            "duplicate {} answers the original",
            stringify!($call)
        );
        assert_eq!(
            balance($c, $acct).await,
            before,
            "duplicate {} changed state",
            stringify!($call)
        );
    }};
}

macro_rules! reused {
    ($c:expr, $acct:expr, $call:expr) => {{
        let before = balance($c, $acct).await;
        let r = $call.await.expect(stringify!($call));
        assert_rc(r.result, ResultCode::RequestIdReused, stringify!($call));
        assert_eq!(
            balance($c, $acct).await,
            before,
            "{} changed state",
            stringify!($call)
        );
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_request_ids() {
    let env = start().await;
    let c = &env.client;
    set_standard_tariffs(c).await;

    // CreateAccount: a duplicate is OK (not ACCOUNT_EXISTS).
    let a = "idem-1";
    let id = rid();
    let orig = c
        .create_account_with_id(id, a, "EUR", 1_000, 0, vec![])
        .await
        .unwrap();
    assert_rc(orig.result, ResultCode::Ok, "create");
    duplicate!(
        c,
        a,
        orig,
        c.create_account_with_id(id, a, "EUR", 1_000, 0, vec![])
    );
    reused!(
        c,
        a,
        c.create_account_with_id(id, a, "EUR", 1_001, 0, vec![])
    );
    let r = c.create_account(a, "EUR", 1_000, 0, vec![]).await.unwrap();
    assert_rc(r.result, ResultCode::AccountExists, "create with a new id");

    // TopUp.
    let id = rid();
    let orig = c.top_up_with_id(id, a, 0, 100).await.unwrap();
    assert_rc(orig.result, ResultCode::Ok, "top_up");
    assert_eq!(orig.balance, 1_100);
    duplicate!(c, a, orig, c.top_up_with_id(id, a, 0, 100));
    reused!(c, a, c.top_up_with_id(id, a, 0, 101));

    // AddBucket.
    let id = rid();
    let spec = BucketSpec {
        kind: BucketKind::Bytes as i32,
        amount: 1_000,
        rating_groups: vec![RG_UNPRICED],
        ..BucketSpec::default()
    };
    let orig = c.add_bucket_with_id(id, a, spec.clone()).await.unwrap();
    assert_rc(orig.result, ResultCode::Ok, "add_bucket");
    assert_eq!(orig.bucket_id, 2);
    duplicate!(c, a, orig, c.add_bucket_with_id(id, a, spec.clone()));
    reused!(
        c,
        a,
        c.add_bucket_with_id(
            id,
            a,
            BucketSpec {
                amount: 999,
                ..spec.clone()
            }
        )
    );
    assert_eq!(balance(c, a).await.buckets.len(), 2);

    // Debit: charged once.
    let debit_id = rid();
    let orig = c
        .debit_with_id(debit_id, a, RG_SMS, events(2))
        .await
        .unwrap();
    assert_rc(orig.result, ResultCode::Ok, "debit");
    assert_eq!(orig.charged, 50);
    duplicate!(c, a, orig, c.debit_with_id(debit_id, a, RG_SMS, events(2)));
    reused!(c, a, c.debit_with_id(debit_id, a, RG_SMS, events(3)));
    assert_money(&balance(c, a).await, 1_050, 0);

    // Commit: charged once.
    let r = c.reserve(a, "s1", 1, RG_DATA, bytes(5 * MB)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "reserve");
    let res = r.reservation_id;
    let id = rid();
    let orig = c
        .commit_with_id(id, a, res, bytes(1_500 * KB), false)
        .await
        .unwrap();
    assert_rc(orig.result, ResultCode::Ok, "commit");
    assert_eq!((orig.charged, orig.debt), (20, 0));
    duplicate!(
        c,
        a,
        orig,
        c.commit_with_id(id, a, res, bytes(1_500 * KB), false)
    );
    reused!(c, a, c.commit_with_id(id, a, res, bytes(1_600 * KB), false));
    reused!(c, a, c.commit_with_id(id, a, res, bytes(1_500 * KB), true));
    assert_money(&balance(c, a).await, 1_030, 30);

    // Release: the duplicate is OK, a new id finds it resolved.
    let id = rid();
    let orig = c.release_with_id(id, a, res).await.unwrap();
    assert_rc(orig.result, ResultCode::Ok, "release");
    duplicate!(c, a, orig, c.release_with_id(id, a, res));
    let r = c.release(a, res).await.unwrap();
    assert_rc(
        r.result,
        ResultCode::ReservationAlreadyResolved,
        "release with a new id",
    );
    assert_money(&balance(c, a).await, 1_030, 0);

    // Refund: credited once.
    let id = rid();
    let orig = c.refund_with_id(id, a, debit_id, 10).await.unwrap();
    assert_rc(orig.result, ResultCode::Ok, "refund");
    assert_eq!(orig.refunded_total, 10);
    duplicate!(c, a, orig, c.refund_with_id(id, a, debit_id, 10));
    reused!(c, a, c.refund_with_id(id, a, debit_id, 11));
    assert_money(&balance(c, a).await, 1_040, 0);

    // SetAccountState.
    let id = rid();
    let orig = c
        .set_account_state_with_id(id, a, AccountState::Suspended)
        .await
        .unwrap();
    assert_rc(orig.result, ResultCode::Ok, "suspend");
    duplicate!(
        c,
        a,
        orig,
        c.set_account_state_with_id(id, a, AccountState::Suspended)
    );
    reused!(
        c,
        a,
        c.set_account_state_with_id(id, a, AccountState::Closed)
    );
    assert_eq!(balance(c, a).await.state, AccountState::Suspended as i32);

    // create, top-up, add-bucket, debit, reserve, commit, release, refund, suspend.
    assert_eq!(balance(c, a).await.version, 9);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_dedup_by_session_and_seq() {
    let env = start().await;
    let c = &env.client;
    set_standard_tariffs(c).await;
    let a = "idem-sess";
    let s = "chf-idem";
    create(c, a, 1_000).await;

    // Reserve seq 1; a retry (even with a fresh request id) is the same call.
    let orig = c.reserve(a, s, 1, RG_DATA, bytes(5 * MB)).await.unwrap();
    assert_rc(orig.result, ResultCode::Ok, "reserve");
    duplicate!(c, a, orig, c.reserve(a, s, 1, RG_DATA, bytes(5 * MB)));
    reused!(c, a, c.reserve(a, s, 1, RG_DATA, bytes(6 * MB)));
    reused!(c, a, c.reserve(a, s, 1, RG_VOICE, secs(60)));
    assert_money(&balance(c, a).await, 1_000, 50);

    // Update seq 2: charged once.
    let reports = vec![report(RG_DATA, bytes(1_500 * KB), bytes(5 * MB))];
    let orig = c.update(a, s, 2, reports.clone()).await.unwrap();
    assert_rc(orig.result, ResultCode::Ok, "update");
    assert_eq!((orig.charged, orig.debt), (20, 0));
    duplicate!(c, a, orig, c.update(a, s, 2, reports.clone()));
    reused!(
        c,
        a,
        c.update(a, s, 2, vec![report(RG_DATA, bytes(MB), bytes(5 * MB))])
    );
    // An older seq than the session's last: too old, even the original reserve.
    let before = balance(c, a).await;
    let r = c.reserve(a, s, 1, RG_DATA, bytes(5 * MB)).await.unwrap();
    assert_rc(r.result, ResultCode::RequestTooOld, "seq 1 after seq 2");
    assert_eq!(balance(c, a).await, before);
    assert_money(&before, 980, 50);

    // Terminate seq 3: charged once, still answered after the session closed.
    let reports = vec![report(RG_DATA, bytes(MB), Units::default())];
    let orig = c.terminate(a, s, 3, reports.clone()).await.unwrap();
    assert_rc(orig.result, ResultCode::Ok, "terminate");
    assert_eq!((orig.charged, orig.debt), (10, 0)); // 2.5 MB cumulative: 30
    duplicate!(c, a, orig, c.terminate(a, s, 3, reports.clone()));
    // Other parameters at seq 3: the session is closed, and SESSION_NOT_FOUND
    // precedes REQUEST_ID_REUSED.
    let before = balance(c, a).await;
    let r = c.terminate(a, s, 3, vec![]).await.unwrap();
    assert_rc(
        r.result,
        ResultCode::SessionNotFound,
        "terminate seq 3 again, other reports",
    );
    assert_eq!(balance(c, a).await, before);
    let b = balance(c, a).await;
    assert_money(&b, 970, 0);
    assert_eq!((b.open_sessions, b.open_reservations, b.version), (0, 0, 4));
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_not_remembered() {
    let env = start().await;
    let c = &env.client;
    set_standard_tariffs(c).await;
    let a = "idem-poor";
    create(c, a, 0).await;

    // Rejected for lack of money; the same id succeeds once money arrived.
    let id = rid();
    let r = c.debit_with_id(id, a, RG_SMS, events(1)).await.unwrap();
    assert_rc(
        r.result,
        ResultCode::InsufficientBalance,
        "debit while poor",
    );
    let r = c.top_up(a, 0, 100).await.unwrap();
    assert_eq!(r.balance, 100);
    let orig = c.debit_with_id(id, a, RG_SMS, events(1)).await.unwrap();
    assert_rc(orig.result, ResultCode::Ok, "debit retried after top-up");
    assert_eq!(orig.charged, 25);
    duplicate!(c, a, orig, c.debit_with_id(id, a, RG_SMS, events(1)));

    // A rejected session call does not claim its seq.
    let r = c.reserve(a, "s", 1, RG_UNPRICED, bytes(MB)).await.unwrap();
    assert_rc(r.result, ResultCode::RatingFailed, "reserve unpriced");
    let r = c.reserve(a, "s", 1, RG_DATA, bytes(MB)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "same seq, priced");
    assert_eq!(r.granted, Some(bytes(MB)));
    assert_money(&balance(c, a).await, 75, 10);
    env.shutdown().await;
}

/// SetTariff carries a request id like every mutation: a retry with the same
/// id (what the client does after UNAVAILABLE) must not apply it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_tariff_retry_is_idempotent() {
    let env = start().await;
    let c = &env.client;
    let t = tariff(RG_DATA, BucketKind::Bytes, MB, DATA_PER_MB as u64);
    let id = rid();
    let first = c
        .set_tariff_with_id(id, t.clone())
        .await
        .expect("set_tariff");
    assert_rc(first.result, ResultCode::Ok, "set_tariff");
    assert_eq!(first.version, 1);
    let again = c
        .set_tariff_with_id(id, t.clone())
        .await
        .expect("set_tariff again");
    assert_eq!(again, first, "a retry answers the original");
    let mut want = t;
    want.version = 1;
    poll(
        std::time::Duration::from_secs(10),
        "tariff version 1",
        || async {
            let got = c.get_tariffs().await.expect("get_tariffs").tariffs;
            (got == vec![want.clone()]).then_some(())
        },
    )
    .await;
    env.shutdown().await;
}
