//! Every operation of the API, every rejection code reachable through it,
//! input validation, and routing through every node.
use crate::support::*;
use charging_client::proto::{
    AccountState, AddBucketRequest, BalanceRequest, BucketKind, BucketSpec, CreateAccountRequest,
    DebitRequest, RefundRequest, ReserveRequest, ResultCode, SetAccountStateRequest, TopUpRequest,
    Units,
};
use charging_client::{Client, ClientConfig};
use std::time::Duration;

fn money_bucket(amount: i64, priority: u32, rating_groups: Vec<u32>) -> BucketSpec {
    BucketSpec {
        kind: BucketKind::Money as i32,
        amount,
        priority,
        rating_groups,
        ..BucketSpec::default()
    }
}

fn bytes_bucket(amount: i64, rating_groups: Vec<u32>) -> BucketSpec {
    BucketSpec {
        kind: BucketKind::Bytes as i32,
        amount,
        priority: 1,
        rating_groups,
        ..BucketSpec::default()
    }
}

/// Every operation once, with exact amounts, through node 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_round_trip() {
    let env = start().await;
    let c = &env.client;

    // Admin status: node 1's view of the cluster.
    let st = c.status().await.expect("status");
    assert_eq!((st.node_id, st.shards), (1, SHARDS));
    assert_eq!(
        st.nodes.iter().map(|n| n.node_id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(st.shard_status.len(), SHARDS as usize);
    for s in &st.shard_status {
        assert_eq!(s.voters, vec![1, 2, 3], "shard {} voters", s.shard_id);
        assert!(s.term >= 1, "shard {} has a term", s.shard_id);
    }
    // Every shard's leader as node 1 reports it is the node that decides.
    poll(Duration::from_secs(10), "status leaders", || async {
        let st = c.status().await.expect("status");
        let ok = st
            .shard_status
            .iter()
            .all(|s| s.leader != 0 && env.cluster.deciding_leader(s.shard_id) == Some(s.leader));
        ok.then_some(())
    })
    .await;

    // Tariffs: a version per rating group, bumped by each change.
    assert_eq!(
        set_tariff(c, tariff(RG_DATA, BucketKind::Bytes, MB, 20)).await,
        1
    );
    assert_eq!(
        set_tariff(
            c,
            tariff(RG_DATA, BucketKind::Bytes, MB, DATA_PER_MB as u64)
        )
        .await,
        2
    );
    assert_eq!(
        set_tariff(
            c,
            tariff(RG_VOICE, BucketKind::Seconds, 60, VOICE_PER_MIN as u64)
        )
        .await,
        1
    );
    assert_eq!(
        set_tariff(c, tariff(RG_SMS, BucketKind::Units, 1, SMS_PER_UNIT as u64)).await,
        1
    );
    // GetTariffs reads node 1's applied copy of shard 0: it converges.
    let want = {
        let mut d = tariff(RG_DATA, BucketKind::Bytes, MB, DATA_PER_MB as u64);
        d.version = 2;
        let mut v = tariff(RG_VOICE, BucketKind::Seconds, 60, VOICE_PER_MIN as u64);
        v.version = 1;
        let mut s = tariff(RG_SMS, BucketKind::Units, 1, SMS_PER_UNIT as u64);
        s.version = 1;
        vec![v, d, s]
    };
    poll(Duration::from_secs(10), "get_tariffs", || async {
        let got = c.get_tariffs().await.expect("get_tariffs").tariffs;
        (got == want).then_some(())
    })
    .await;

    // CreateAccount with an extra 5 MB data bucket.
    let a = "ops-1";
    let r = c
        .create_account(
            a,
            "EUR",
            1_000,
            0,
            vec![bytes_bucket(5 * MB as i64, vec![RG_DATA])],
        )
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "create");
    assert_eq!(r.version, 1);
    let b = balance(c, a).await;
    assert_eq!(
        (b.currency.as_str(), b.state),
        ("EUR", AccountState::Active as i32)
    );
    assert_eq!(b.version, 1);
    assert_money(&b, 1_000, 0);
    assert_eq!(bucket(&b, 2).kind, BucketKind::Bytes as i32);
    assert_eq!(
        (bucket(&b, 2).balance, bucket(&b, 2).rating_groups.clone()),
        (5_000_000, vec![RG_DATA])
    );

    // AddBucket: 200 of money for SMS only, consumed before the main bucket.
    let r = c
        .add_bucket(a, money_bucket(200, 0, vec![RG_SMS]))
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "add_bucket");
    assert_eq!(r.bucket_id, 3);

    // TopUp: main bucket (id 0 = main) and the data bucket.
    let r = c.top_up(a, 0, 500).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "top_up main");
    assert_eq!(r.balance, 1_500);
    let r = c.top_up(a, 2, MB as i64).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "top_up data bucket");
    assert_eq!(r.balance, 6_000_000);

    // Reserve 8 MB: 6 MB from the data bucket, 2 MB in money (20 held).
    let r = c.reserve(a, "s1", 1, RG_DATA, bytes(8 * MB)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "reserve");
    assert_eq!((r.granted, r.final_units), (Some(bytes(8 * MB)), false));
    assert!(r.expires_at_ms > now_ms(), "expires in the future");
    let res1 = r.reservation_id;
    let b = balance(c, a).await;
    assert_money(&b, 1_500, 20);
    assert_eq!(
        (bucket(&b, 2).balance, bucket(&b, 2).reserved),
        (6_000_000, 6_000_000)
    );
    assert_eq!((b.open_sessions, b.open_reservations), (1, 1));

    // Update: 7 MB used (6 MB from the unit hold, 1 MB rated: 10), 1 MB more.
    let r = c
        .update(a, "s1", 2, vec![report(RG_DATA, bytes(7 * MB), bytes(MB))])
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "update");
    assert_eq!((r.charged, r.debt), (10, 0));
    assert_eq!(r.grants.len(), 1);
    let g = &r.grants[0];
    assert_rc(g.result, ResultCode::Ok, "update grant");
    assert_eq!((g.rating_group, g.reservation_id), (RG_DATA, res1));
    assert_eq!((g.granted, g.final_units), (Some(bytes(MB)), false));
    let b = balance(c, a).await;
    // Cumulative rated 1 MB charged 10; the new grant holds price(2 MB) − 10.
    assert_money(&b, 1_490, 10);
    assert_eq!((bucket(&b, 2).balance, bucket(&b, 2).reserved), (0, 0));

    // Terminate: 0.5 MB more (cumulative rated 1.5 MB = 2 increments: 10 more).
    let r = c
        .terminate(
            a,
            "s1",
            3,
            vec![report(RG_DATA, bytes(500 * KB), Units::default())],
        )
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "terminate");
    assert_eq!((r.charged, r.debt), (10, 0));
    let b = balance(c, a).await;
    assert_money(&b, 1_480, 0);
    assert_eq!((b.open_sessions, b.open_reservations), (0, 0));

    // Reserve + Commit (non-final) + Release on voice.
    let r = c.reserve(a, "s2", 1, RG_VOICE, secs(120)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "reserve voice");
    assert_eq!((r.granted, r.final_units), (Some(secs(120)), false));
    let res2 = r.reservation_id;
    assert_eq!(res2, res1 + 1);
    assert_money(&balance(c, a).await, 1_480, 6);
    let r = c.commit(a, res2, secs(61), false).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "commit");
    assert_eq!((r.charged, r.debt), (6, 0)); // 61 s = 2 started minutes
    assert_money(&balance(c, a).await, 1_474, 0);
    let r = c.release(a, res2).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "release");
    let b = balance(c, a).await;
    assert_money(&b, 1_474, 0);
    assert_eq!(b.open_reservations, 0);

    // Debit 2 SMS = 50, taken from the SMS money bucket first.
    let debit_id = rid();
    let r = c
        .debit_with_id(debit_id, a, RG_SMS, events(2))
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "debit");
    assert_eq!(r.charged, 50);
    let b = balance(c, a).await;
    assert_eq!(bucket(&b, 3).balance, 150);
    assert_money(&b, 1_474, 0);

    // Refund 20 of it (credited to the main bucket).
    let r = c.refund(a, debit_id, 20).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "refund");
    assert_eq!(r.refunded_total, 20);
    assert_money(&balance(c, a).await, 1_494, 0);

    // SetAccountState: a suspended account refuses new quota but accepts
    // the commit of quota granted before (the service was delivered).
    let r = c.reserve(a, "s3", 1, RG_DATA, bytes(MB)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "reserve before suspension");
    let res3 = r.reservation_id;
    let r = c
        .set_account_state(a, AccountState::Suspended)
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "suspend");
    assert_eq!(balance(c, a).await.state, AccountState::Suspended as i32);
    let r = c.reserve(a, "s4", 1, RG_DATA, bytes(MB)).await.unwrap();
    assert_rc(
        r.result,
        ResultCode::AccountNotActive,
        "reserve while suspended",
    );
    let r = c.commit(a, res3, bytes(MB), true).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "commit while suspended");
    assert_eq!((r.charged, r.debt), (10, 0));
    let r = c.set_account_state(a, AccountState::Active).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "activate");
    let r = c.reserve(a, "s4", 1, RG_DATA, bytes(MB)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "reserve after reactivation");

    let b = balance(c, a).await;
    assert_eq!(b.state, AccountState::Active as i32);
    assert_money(&b, 1_484, 10);
    assert_eq!(bucket(&b, 3).balance, 150);
    // s1 is terminated; s2, s3 and s4 stay open (terminate closes a session).
    assert_eq!((b.open_sessions, b.open_reservations), (3, 1));
    // 17 accepted mutations since creation (the rejection bumped nothing).
    assert_eq!(b.version, 17);
    env.shutdown().await;
}

/// Checks that `$call` yields `$code` and leaves `$acct`'s balance view
/// (version included) exactly as it was.
macro_rules! rejected {
    ($c:expr, $acct:expr, $code:expr, $call:expr) => {{
        let before = balance($c, $acct).await;
        let r = $call.await.expect(stringify!($call));
        assert_rc(r.result, $code, stringify!($call));
        let after = balance($c, $acct).await;
        assert_eq!(
            before,
            after,
            "rejected {} changed {}",
            stringify!($call),
            $acct
        );
        r
    }};
}

/// Every rejection reachable through the API; none changes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_code_changes_nothing() {
    let env = start().await;
    let c = &env.client;
    set_standard_tariffs(c).await;
    let a = "rej-a";
    create(c, a, 100).await;

    // ACCOUNT_NOT_FOUND, on a read and on mutations; nothing is created.
    let ghost = "rej-ghost";
    let b = c.balance(ghost).await.unwrap();
    assert_rc(b.result, ResultCode::AccountNotFound, "balance of a ghost");
    let r = c.reserve(ghost, "s", 1, RG_DATA, bytes(MB)).await.unwrap();
    assert_rc(r.result, ResultCode::AccountNotFound, "reserve on a ghost");
    let r = c.top_up(ghost, 0, 10).await.unwrap();
    assert_rc(r.result, ResultCode::AccountNotFound, "top_up on a ghost");
    // Precedence: not found beats request too old.
    let old = request_id_at(now_ms() - 3_600_000);
    let r = c
        .debit_with_id(old, ghost, RG_SMS, events(1))
        .await
        .unwrap();
    assert_rc(
        r.result,
        ResultCode::AccountNotFound,
        "debit on a ghost with an old id",
    );
    let b = c.balance(ghost).await.unwrap();
    assert_rc(b.result, ResultCode::AccountNotFound, "still no ghost");

    // ACCOUNT_NOT_ACTIVE: suspended refuses quota and debits; closed refuses
    // top-ups and new buckets too.
    let sus = "rej-suspended";
    create(c, sus, 100).await;
    let r = c
        .set_account_state(sus, AccountState::Suspended)
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "suspend");
    rejected!(
        c,
        sus,
        ResultCode::AccountNotActive,
        c.reserve(sus, "s", 1, RG_DATA, bytes(MB))
    );
    rejected!(
        c,
        sus,
        ResultCode::AccountNotActive,
        c.debit(sus, RG_SMS, events(1))
    );
    let r = c
        .set_account_state(sus, AccountState::Closed)
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "close");
    rejected!(c, sus, ResultCode::AccountNotActive, c.top_up(sus, 0, 10));
    rejected!(
        c,
        sus,
        ResultCode::AccountNotActive,
        c.add_bucket(sus, money_bucket(10, 0, vec![]))
    );

    // SESSION_NOT_FOUND.
    rejected!(
        c,
        a,
        ResultCode::SessionNotFound,
        c.update(
            a,
            "no-such-session",
            1,
            vec![report(RG_DATA, bytes(1), bytes(1))]
        )
    );
    rejected!(
        c,
        a,
        ResultCode::SessionNotFound,
        c.terminate(a, "no-such-session", 1, vec![])
    );

    // RESERVATION_NOT_FOUND.
    rejected!(
        c,
        a,
        ResultCode::ReservationNotFound,
        c.commit(a, 999, bytes(1), true)
    );
    rejected!(c, a, ResultCode::ReservationNotFound, c.release(a, 999));

    // RESERVATION_ALREADY_RESOLVED.
    let r = c.reserve(a, "s1", 1, RG_DATA, bytes(MB)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "reserve");
    let res = r.reservation_id;
    assert_rc(
        c.release(a, res).await.unwrap().result,
        ResultCode::Ok,
        "release",
    );
    rejected!(
        c,
        a,
        ResultCode::ReservationAlreadyResolved,
        c.release(a, res)
    );
    rejected!(
        c,
        a,
        ResultCode::ReservationAlreadyResolved,
        c.commit(a, res, bytes(1), true)
    );

    // RATING_FAILED: no tariff for the rating group.
    rejected!(
        c,
        a,
        ResultCode::RatingFailed,
        c.reserve(a, "s2", 1, RG_UNPRICED, bytes(MB))
    );
    rejected!(
        c,
        a,
        ResultCode::RatingFailed,
        c.debit(a, RG_UNPRICED, events(1))
    );
    // A tariff for another dimension does not rate this one either.
    rejected!(c, a, ResultCode::RatingFailed, c.debit(a, RG_SMS, secs(1)));

    // INSUFFICIENT_BALANCE: 5 SMS cost 125 > 100; nothing at all left.
    rejected!(
        c,
        a,
        ResultCode::InsufficientBalance,
        c.debit(a, RG_SMS, events(5))
    );
    let poor = "rej-poor";
    create(c, poor, 0).await;
    rejected!(
        c,
        poor,
        ResultCode::InsufficientBalance,
        c.reserve(poor, "s", 1, RG_DATA, bytes(1))
    );

    // REFUND_EXCEEDS_CHARGE: more than charged; an unknown original.
    let debit_id = rid();
    let r = c
        .debit_with_id(debit_id, a, RG_SMS, events(1))
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::Ok, "debit");
    assert_eq!(r.charged, 25);
    rejected!(
        c,
        a,
        ResultCode::RefundExceedsCharge,
        c.refund(a, debit_id, 26)
    );
    rejected!(c, a, ResultCode::RefundExceedsCharge, c.refund(a, rid(), 1));

    // REQUEST_ID_REUSED: same id, other parameters.
    let id = rid();
    let r = c.top_up_with_id(id, a, 0, 10).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "top_up");
    assert_eq!(r.balance, 85);
    rejected!(
        c,
        a,
        ResultCode::RequestIdReused,
        c.top_up_with_id(id, a, 0, 11)
    );
    rejected!(
        c,
        a,
        ResultCode::RequestIdReused,
        c.debit_with_id(id, a, RG_SMS, events(1))
    );

    // REQUEST_TOO_OLD: a UUIDv7 stamped an hour ago (window 10 min).
    let old = request_id_at(now_ms() - 3_600_000);
    rejected!(
        c,
        a,
        ResultCode::RequestTooOld,
        c.top_up_with_id(old, a, 0, 10)
    );
    rejected!(
        c,
        a,
        ResultCode::RequestTooOld,
        c.debit_with_id(old, a, RG_SMS, events(1))
    );
    // A create stamped an hour ago creates nothing.
    let r = c
        .create_account_with_id(old, "rej-late", "EUR", 10, 0, vec![])
        .await
        .unwrap();
    assert_rc(r.result, ResultCode::RequestTooOld, "create with an old id");
    let r = c.balance("rej-late").await.unwrap();
    assert_rc(
        r.result,
        ResultCode::AccountNotFound,
        "rej-late was not created",
    );
    // ... and a session operation older than the session's last one.
    let r = c.reserve(a, "s3", 5, RG_DATA, bytes(MB)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "reserve seq 5");
    rejected!(
        c,
        a,
        ResultCode::RequestTooOld,
        c.update(a, "s3", 4, vec![report(RG_DATA, bytes(1), bytes(1))])
    );

    // ACCOUNT_EXISTS.
    rejected!(
        c,
        a,
        ResultCode::AccountExists,
        c.create_account(a, "EUR", 5, 0, vec![])
    );

    // BUCKET_NOT_FOUND.
    rejected!(c, a, ResultCode::BucketNotFound, c.top_up(a, 42, 10));

    // LIMIT_EXCEEDED: the bucket table is full (64 buckets, main included).
    let full = "rej-full";
    create(c, full, 0).await;
    for i in 0..63 {
        let r = c
            .add_bucket(full, money_bucket(1, i, vec![]))
            .await
            .unwrap();
        assert_rc(r.result, ResultCode::Ok, "add_bucket");
        assert_eq!(r.bucket_id, i + 2);
    }
    rejected!(
        c,
        full,
        ResultCode::LimitExceeded,
        c.add_bucket(full, money_bucket(1, 0, vec![]))
    );
    let b = balance(c, full).await;
    assert_eq!((b.buckets.len(), b.available, b.version), (64, 63, 64));

    // The main account took exactly: debit 25, top-up 10, reserve of seq 5 (10 held).
    let b = balance(c, a).await;
    assert_money(&b, 85, 10);
    env.shutdown().await;
}

/// Malformed input is INVALID_ARGUMENT naming the field, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments_name_the_field() {
    let env = start().await;
    let c = &env.client;
    let mut raw = env.raw();
    let a = "inv-a";
    create(c, a, 100).await;
    let before = balance(c, a).await;
    let long = "x".repeat(65);
    let top_up = |account: &str, request_id: Vec<u8>, amount: i64| TopUpRequest {
        account_id: account.to_string(),
        request_id,
        bucket_id: 0,
        amount,
    };

    assert_invalid(
        raw.top_up(top_up("", rid_bytes(rid()), 10)).await,
        "account_id",
    );
    assert_invalid(
        raw.top_up(top_up(&long, rid_bytes(rid()), 10)).await,
        "account_id",
    );
    assert_invalid(raw.top_up(top_up(a, Vec::new(), 10)).await, "request_id");
    assert_invalid(raw.top_up(top_up(a, vec![1, 2, 3], 10)).await, "request_id");
    assert_invalid(raw.top_up(top_up(a, rid_bytes(rid()), 0)).await, "amount");
    assert_invalid(raw.top_up(top_up(a, rid_bytes(rid()), -5)).await, "amount");
    assert_invalid(
        raw.top_up(top_up(a, rid_bytes(rid()), 1_000_000_000_000_001))
            .await,
        "amount",
    );
    assert_invalid(
        raw.balance(BalanceRequest {
            account_id: String::new(),
        })
        .await,
        "account_id",
    );
    assert_invalid(
        raw.debit(DebitRequest {
            account_id: a.into(),
            request_id: Vec::new(),
            rating_group: RG_SMS,
            units: Some(events(1)),
        })
        .await,
        "request_id",
    );
    assert_invalid(
        raw.refund(RefundRequest {
            account_id: a.into(),
            request_id: rid_bytes(rid()),
            original_request_id: rid_bytes(rid()),
            amount: -1,
        })
        .await,
        "amount",
    );
    assert_invalid(
        raw.refund(RefundRequest {
            account_id: a.into(),
            request_id: rid_bytes(rid()),
            original_request_id: Vec::new(),
            amount: 1,
        })
        .await,
        "original_request_id",
    );
    assert_invalid(
        raw.reserve(ReserveRequest {
            account_id: a.into(),
            request_id: rid_bytes(rid()),
            session_id: "s".into(),
            seq: 1,
            rating_group: RG_DATA,
            requested: Some(Units::default()),
        })
        .await,
        "requested",
    );
    assert_invalid(
        raw.reserve(ReserveRequest {
            account_id: a.into(),
            request_id: rid_bytes(rid()),
            session_id: "s".into(),
            seq: 1,
            rating_group: RG_DATA,
            requested: Some(bytes((1 << 50) + 1)),
        })
        .await,
        "requested.volume_bytes",
    );
    assert_invalid(
        raw.add_bucket(AddBucketRequest {
            account_id: a.into(),
            request_id: rid_bytes(rid()),
            bucket: Some(BucketSpec {
                kind: 99,
                amount: 10,
                ..BucketSpec::default()
            }),
        })
        .await,
        "bucket.kind",
    );
    assert_invalid(
        raw.set_account_state(SetAccountStateRequest {
            account_id: a.into(),
            request_id: rid_bytes(rid()),
            state: 99,
        })
        .await,
        "state",
    );
    let create_req = |account: &str, initial_balance: i64| CreateAccountRequest {
        account_id: account.to_string(),
        request_id: rid_bytes(rid()),
        currency: "EUR".into(),
        credit_limit: 0,
        initial_balance,
        buckets: Vec::new(),
    };
    assert_invalid(
        raw.create_account(create_req("inv-new", 1_000_000_000_000_001))
            .await,
        "initial_balance",
    );
    assert_invalid(
        raw.create_account(create_req("inv-new", -1)).await,
        "initial_balance",
    );
    assert_invalid(raw.create_account(create_req(&long, 1)).await, "account_id");
    assert_invalid(raw.create_account(create_req("", 1)).await, "account_id");

    // Nothing changed, nothing was created.
    assert_eq!(balance(c, a).await, before);
    let r = c.balance("inv-new").await.unwrap();
    assert_rc(
        r.result,
        ResultCode::AccountNotFound,
        "inv-new was not created",
    );
    // The boundary is inclusive: a 64-byte id and 10^15 are accepted.
    let max_id = "y".repeat(64);
    let r = raw
        .create_account(create_req(&max_id, 1_000_000_000_000_000))
        .await
        .expect("64-byte id accepted")
        .into_inner();
    assert_rc(r.result, ResultCode::Ok, "create with a 64-byte id");
    assert_money(&balance(c, &max_id).await, 1_000_000_000_000_000, 0);
    env.shutdown().await;
}

/// Any node serves any account: the front door forwards one hop to the
/// shard's leader (leaders spread so every node leads some shard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_every_shard() {
    let env = start().await;
    env.cluster
        .spread_leaders(Duration::from_secs(10))
        .await
        .expect("leaders");
    set_standard_tariffs(&env.client).await;
    // Clients that always call their own node: the front doors forward.
    let forwarding = |c: Client| {
        c.with_config(ClientConfig {
            direct_to_leader: false,
            ..client_config()
        })
    };
    let clients = [
        forwarding(env.client_on(1).await),
        forwarding(env.client_on(2).await),
        forwarding(env.client_on(3).await),
    ];
    let accounts = account_per_shard("route");
    // Create each account through a different node.
    for (i, a) in accounts.iter().enumerate() {
        create(&clients[i % 3], a, 1_000).await;
    }
    let mut forwarded = 0;
    for (n, c) in clients.iter().enumerate() {
        let node = n as u64 + 1;
        for a in &accounts {
            if env.cluster.deciding_leader(shard(a)) != Some(node) {
                forwarded += 1;
            }
            let session = format!("via-node-{node}");
            let r = c
                .reserve(a, &session, 1, RG_DATA, bytes(2 * MB))
                .await
                .unwrap();
            assert_rc(r.result, ResultCode::Ok, "reserve via any node");
            assert_eq!((r.reservation_id, r.granted), (node, Some(bytes(2 * MB))));
            let r = c
                .commit(a, r.reservation_id, bytes(MB), true)
                .await
                .unwrap();
            assert_rc(r.result, ResultCode::Ok, "commit via any node");
            assert_eq!((r.charged, r.debt), (10, 0));
            let b = balance(c, a).await;
            assert_money(&b, 1_000 - 10 * node as i64, 0);
        }
    }
    // Each shard has one leader, so two of every three calls were forwarded.
    assert!(forwarded >= 2 * SHARDS as usize, "forwarded {forwarded}");
    // Every node reports the same leaders in its status.
    for c in &clients {
        poll(Duration::from_secs(10), "status agrees", || async {
            let st = c.status().await.expect("status");
            st.shard_status
                .iter()
                .all(|s| env.cluster.deciding_leader(s.shard_id) == Some(s.leader))
                .then_some(())
        })
        .await;
    }
    // Status leaves the digest out unless asked; asked, every node's replica
    // of a shard gives one digest once they stand at one applied index.
    let st = clients[0].status().await.expect("status");
    assert!(st.shard_status.iter().all(|s| s.state_hash.is_none()));
    for shard in 0..SHARDS {
        poll(Duration::from_secs(10), "replicas agree", || async {
            let mut seen = Vec::new();
            for c in &clients {
                let st = c.status_digest().await.expect("status");
                let s = st.shard_status.iter().find(|s| s.shard_id == shard)?;
                seen.push((s.state_index, s.state_hash.expect("digest asked for")));
            }
            seen.dedup();
            (seen.len() == 1).then_some(())
        })
        .await;
    }
    env.shutdown().await;
}

/// The smart client: it fetches the shard map, calls each shard's leader
/// directly, and follows leader hints when leadership moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_goes_straight_to_the_leader() {
    let env = start().await;
    env.cluster
        .spread_leaders(Duration::from_secs(10))
        .await
        .expect("leaders");
    let c = env.client_on(1).await;
    // The replicated cluster map is written once the metadata group elects.
    let m = poll(Duration::from_secs(10), "cluster map written", || async {
        let m = c.shard_map().await.expect("shard map");
        (m.version == 1).then_some(m)
    })
    .await;
    assert_eq!(m.shards, SHARDS);
    let st = c.status().await.expect("status");
    assert_eq!(st.map_version, 1);
    assert!(st.meta_leader != 0, "metadata group has a leader");
    for r in &m.routes {
        assert_eq!(
            Some(r.leader),
            env.cluster.deciding_leader(r.shard_id),
            "route of shard {}",
            r.shard_id
        );
        assert_eq!(r.voters, vec![1, 2, 3]);
        assert_eq!(r.intended, vec![1, 2, 3], "placement in the cluster map");
    }
    let expect = |s: u32| {
        env.cluster
            .deciding_leader(s)
            .map(|l| env.cluster.public_url(l))
    };
    let (_, leaders) = c.cached_shard_map();
    for s in 0..SHARDS {
        assert_eq!(leaders[s as usize], expect(s), "cached leader of shard {s}");
    }
    // Move one shard's leadership: the next call on it learns the new leader
    // from the old one's hint and caches it.
    let accounts = account_per_shard("direct");
    for a in &accounts {
        create(&c, a, 100).await;
    }
    let moved = 0u32;
    let old = env.cluster.deciding_leader(moved).expect("leader");
    let new = if old == 3 { 1 } else { old + 1 };
    let raft = env.cluster.nodes[&old].raft(moved);
    let to = charging_node::raft::replica_of(&raft, new).expect("replica");
    raft.trigger().transfer_leader(to).await.expect("transfer");
    poll(Duration::from_secs(10), "new leader decides", || async {
        (env.cluster.deciding_leader(moved) == Some(new)).then_some(())
    })
    .await;
    let b = balance(&c, &accounts[moved as usize]).await;
    assert_money(&b, 100, 0);
    let (_, leaders) = c.cached_shard_map();
    assert_eq!(
        leaders[moved as usize],
        Some(env.cluster.public_url(new)),
        "the hint updated the cached leader"
    );
    env.shutdown().await;
}
