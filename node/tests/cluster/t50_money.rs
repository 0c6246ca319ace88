//! Money: partial grants, usage over the grant (debt), refund limits, and
//! rounding once per reservation on cumulative usage.
use crate::support::*;
use charging_client::proto::ResultCode;

/// The balance covers only part of the request: whole increments are
/// granted and flagged final units; with nothing left, a reserve is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_grant_is_final_units() {
    let env = start().await;
    let c = &env.client;
    set_standard_tariffs(c).await;
    let a = "money-partial";
    create(c, a, 35).await;

    // 5 MB would cost 50; 35 buys 3 whole MB (30).
    let r = c.reserve(a, "s1", 1, RG_DATA, bytes(5 * MB)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "partial reserve");
    assert_eq!((r.granted, r.final_units), (Some(bytes(3 * MB)), true));
    assert_money(&balance(c, a).await, 35, 30);

    // Half a MB is one started MB: 10 > the 5 left.
    let r = c
        .reserve(a, "s2", 1, RG_DATA, bytes(500 * KB))
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::InsufficientBalance, "nothing left");
    // Voice: 5 left buys one minute (3) of the two asked.
    let r = c.reserve(a, "s3", 1, RG_VOICE, secs(120)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "partial voice");
    assert_eq!((r.granted, r.final_units), (Some(secs(60)), true));
    // 2 left: not even one started minute (3).
    let r = c.reserve(a, "s4", 1, RG_VOICE, secs(30)).await.unwrap();
    assert_rc(r.result, ResultCode::InsufficientBalance, "2 left < 3");
    let b = balance(c, a).await;
    assert_money(&b, 35, 33);
    assert_eq!(b.open_reservations, 2);

    // Update on the data session, asking 5 MB again after using 3 MB:
    // charged 30 from the hold, 5 left buys nothing more on data.
    let r = c
        .update(
            a,
            "s1",
            2,
            vec![report(RG_DATA, bytes(3 * MB), bytes(5 * MB))],
        )
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "update");
    assert_eq!((r.charged, r.debt), (30, 0));
    assert_eq!(r.grants.len(), 1);
    assert_rc(
        r.grants[0].result,
        ResultCode::InsufficientBalance,
        "data regrant",
    );
    assert_money(&balance(c, a).await, 5, 3);

    // A top-up makes a full grant possible again.
    let r = c.top_up(a, 0, 100).await.unwrap();
    assert_eq!(r.balance, 105);
    let r = c.reserve(a, "s5", 1, RG_DATA, bytes(5 * MB)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "full reserve");
    assert_eq!((r.granted, r.final_units), (Some(bytes(5 * MB)), false));
    assert_money(&balance(c, a).await, 105, 53);
    env.shutdown().await;
}

/// Usage above the grant is charged up to what the account can pay; the
/// rest is debt, settled first by the next top-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_over_grant_records_debt() {
    let env = start().await;
    let c = &env.client;
    set_standard_tariffs(c).await;

    // Prepaid: 100, 5 MB granted (50 held), 12 MB used (120): 100 paid, 20 debt.
    let a = "money-debt";
    create(c, a, 100).await;
    let r = c.reserve(a, "s1", 1, RG_DATA, bytes(5 * MB)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "reserve");
    assert_eq!(r.granted, Some(bytes(5 * MB)));
    let r = c
        .commit(a, r.reservation_id, bytes(12 * MB), true)
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "commit over grant");
    assert_eq!((r.charged, r.debt), (120, 20));
    let b = balance(c, a).await;
    assert_money(&b, 0, 0);
    assert_eq!((b.debt, b.open_reservations), (20, 0));
    // Nothing left to reserve against.
    let r = c.reserve(a, "s2", 1, RG_DATA, bytes(MB)).await.unwrap();
    assert_rc(r.result, ResultCode::InsufficientBalance, "reserve in debt");
    // A top-up of 30 settles the 20 of debt first.
    let r = c.top_up(a, 0, 30).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "top_up");
    assert_eq!(r.balance, 10);
    let b = balance(c, a).await;
    assert_money(&b, 10, 0);
    assert_eq!(b.debt, 0);

    // Postpaid (credit limit 50): the same usage goes down to -20, no debt.
    let p = "money-postpaid";
    create_with(c, p, 100, 50).await;
    let r = c.reserve(p, "s1", 1, RG_DATA, bytes(5 * MB)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "reserve postpaid");
    let r = c
        .commit(p, r.reservation_id, bytes(12 * MB), true)
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "commit postpaid");
    assert_eq!((r.charged, r.debt), (120, 0));
    let b = balance(c, p).await;
    assert_money(&b, -20, 0);
    assert_eq!((b.debt, b.available), (0, 30));
    // Over the credit limit: 80 more used, 30 payable, 50 debt.
    let r = c.reserve(p, "s2", 1, RG_DATA, bytes(MB)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "reserve on credit");
    let r = c
        .commit(p, r.reservation_id, bytes(8 * MB), true)
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "commit past the credit limit");
    assert_eq!((r.charged, r.debt), (80, 50));
    let b = balance(c, p).await;
    assert_money(&b, -50, 0);
    assert_eq!((b.debt, b.available), (50, 0));
    env.shutdown().await;
}

/// A refund never exceeds what the original request charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_limits() {
    let env = start().await;
    let c = &env.client;
    set_standard_tariffs(c).await;
    let a = "money-refund";
    create(c, a, 1_000).await;

    // A debit of 4 SMS: 100.
    let debit = rid();
    let r = c.debit_with_id(debit, a, RG_SMS, events(4)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "debit");
    assert_eq!(r.charged, 100);
    assert_money(&balance(c, a).await, 900, 0);

    let r = c.refund(a, debit, 30).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "refund 30");
    assert_eq!(r.refunded_total, 30);
    assert_money(&balance(c, a).await, 930, 0);
    let before = balance(c, a).await;
    let r = c.refund(a, debit, 71).await.unwrap();
    assert_rc(
        r.result,
        ResultCode::RefundExceedsCharge,
        "refund 71 of the 70 left",
    );
    assert_eq!(balance(c, a).await, before);
    let r = c.refund(a, debit, 70).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "refund the exact remainder");
    assert_eq!(r.refunded_total, 100);
    assert_money(&balance(c, a).await, 1_000, 0);
    let before = balance(c, a).await;
    let r = c.refund(a, debit, 1).await.unwrap();
    assert_rc(
        r.result,
        ResultCode::RefundExceedsCharge,
        "refund of a fully refunded charge",
    );
    assert_eq!(balance(c, a).await, before);

    // A commit's charge is refundable the same way: 2.5 MB charged 30.
    let r = c.reserve(a, "s1", 1, RG_DATA, bytes(5 * MB)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "reserve");
    let commit = rid();
    let r = c
        .commit_with_id(commit, a, r.reservation_id, bytes(2_500 * KB), true)
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "commit");
    assert_eq!(r.charged, 30);
    assert_money(&balance(c, a).await, 970, 0);
    let r = c.refund(a, commit, 31).await.unwrap();
    assert_rc(r.result, ResultCode::RefundExceedsCharge, "refund 31 of 30");
    let refund = rid();
    let r = c.refund_with_id(refund, a, commit, 30).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "refund 30 of 30");
    assert_eq!(r.refunded_total, 30);
    // Neither a refund nor an unknown request is a charge.
    let r = c.refund(a, refund, 1).await.unwrap();
    assert_rc(
        r.result,
        ResultCode::RefundExceedsCharge,
        "refund of a refund",
    );
    let r = c.refund(a, rid(), 1).await.unwrap();
    assert_rc(
        r.result,
        ResultCode::RefundExceedsCharge,
        "unknown original",
    );
    assert_money(&balance(c, a).await, 1_000, 0);
    env.shutdown().await;
}

/// Ten commits of 150 KB on one reservation charge exactly what one commit
/// of 1.5 MB charges on another: 2 started MB (rounding each commit would
/// charge 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cumulative_rounding_once_per_reservation() {
    let env = start().await;
    let c = &env.client;
    set_standard_tariffs(c).await;
    let a = "money-rounding";
    create(c, a, 1_000).await;

    let small = c
        .reserve(a, "small", 1, RG_DATA, bytes(2 * MB))
        .await
        .unwrap();
    assert_rc(small.result, ResultCode::Ok, "reserve small");
    let big = c
        .reserve(a, "big", 1, RG_DATA, bytes(2 * MB))
        .await
        .unwrap();
    assert_rc(big.result, ResultCode::Ok, "reserve big");
    assert_money(&balance(c, a).await, 1_000, 40);

    let mut charges = Vec::new();
    for i in 0..10 {
        let r = c
            .commit(a, small.reservation_id, bytes(150 * KB), i == 9)
            .await
            .unwrap();
        assert_rc(r.result, ResultCode::Ok, "small commit");
        assert_eq!(r.debt, 0);
        charges.push(r.charged);
    }
    // Each commit charges the difference of the cumulative price.
    assert_eq!(charges, vec![10, 0, 0, 0, 0, 0, 10, 0, 0, 0]);
    let r = c
        .commit(a, big.reservation_id, bytes(1_500 * KB), true)
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "big commit");
    assert_eq!((r.charged, r.debt), (20, 0));
    assert_eq!(charges.iter().sum::<i64>(), r.charged);

    let b = balance(c, a).await;
    assert_money(&b, 960, 0);
    assert_eq!(b.open_reservations, 0);
    env.shutdown().await;
}
