//! Concurrent requests on one account never overdraw it, and grant exactly
//! what the balance allows.
use crate::support::*;
use charging_client::proto::ResultCode;
use std::collections::BTreeSet;

const TASKS: u64 = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reserves_never_overdraw() {
    let env = start().await;
    let c = &env.client;
    set_standard_tariffs(c).await;
    let a = "conc-1";
    // 1_030 buys 20 grants of 5 MB (50 each) and one partial grant of 3 MB.
    create(c, a, 1_030).await;

    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let c = env.client.clone();
            tokio::spawn(async move {
                c.reserve(a, format!("s{i}"), 1, RG_DATA, bytes(5 * MB))
                    .await
                    .expect("reserve")
            })
        })
        .collect();
    let mut granted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let r = t.await.expect("task");
        if r.result == ResultCode::Ok as i32 {
            granted.push(r);
        } else {
            assert_rc(r.result, ResultCode::InsufficientBalance, "refused reserve");
            refused += 1;
        }
    }
    let mut money = 0;
    let mut full = 0;
    let mut partial = Vec::new();
    for g in &granted {
        let vol = g.granted.expect("granted units").volume_bytes;
        money += DATA_PER_MB * vol.div_ceil(MB) as i64;
        if vol == 5 * MB {
            assert!(!g.final_units, "a full grant is not final: {g:?}");
            full += 1;
        } else {
            assert!(g.final_units, "a partial grant is final: {g:?}");
            partial.push(vol);
        }
    }
    assert_eq!((full, partial, refused), (20, vec![3 * MB], 43));
    assert_eq!(money, 1_030, "granted money value == balance, never more");
    let ids: BTreeSet<u64> = granted.iter().map(|g| g.reservation_id).collect();
    assert_eq!(
        ids,
        (1..=21).collect::<BTreeSet<u64>>(),
        "distinct reservation ids"
    );
    let b = balance(c, a).await;
    assert_money(&b, 1_030, 1_030);
    assert_eq!(
        (b.available, b.open_reservations, b.open_sessions),
        (0, 21, 21)
    );

    // Every grant used in full, committed concurrently: all money charged once.
    let tasks: Vec<_> = granted
        .iter()
        .map(|g| {
            let c = env.client.clone();
            let (id, units) = (g.reservation_id, g.granted.expect("units"));
            tokio::spawn(async move { c.commit(a, id, units, true).await.expect("commit") })
        })
        .collect();
    let mut charged = 0;
    for t in tasks {
        let r = t.await.expect("task");
        assert_rc(r.result, ResultCode::Ok, "commit");
        assert_eq!(r.debt, 0);
        charged += r.charged;
    }
    assert_eq!(charged, 1_030);
    let b = balance(c, a).await;
    assert_money(&b, 0, 0);
    assert_eq!((b.debt, b.open_reservations), (0, 0));
    env.shutdown().await;
}

/// 64 concurrent debits through all three nodes: exactly as many succeed as
/// the balance pays for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_debits_through_every_node() {
    let env = start().await;
    set_standard_tariffs(&env.client).await;
    let clients = [
        env.client_on(1).await,
        env.client_on(2).await,
        env.client_on(3).await,
    ];
    let a = "conc-2";
    create(&env.client, a, 1_010).await;

    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let c = clients[i as usize % 3].clone();
            tokio::spawn(async move { c.debit(a, RG_SMS, events(2)).await.expect("debit") })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let r = t.await.expect("task");
        if r.result == ResultCode::Ok as i32 {
            assert_eq!(r.charged, 50);
            ok += 1;
        } else {
            assert_rc(r.result, ResultCode::InsufficientBalance, "refused debit");
            refused += 1;
        }
    }
    assert_eq!((ok, refused), (20, 44));
    let b = balance(&env.client, a).await;
    assert_money(&b, 10, 0);
    assert_eq!((b.debt, b.version), (0, 21));
    env.shutdown().await;
}

/// The same request sent 16 times at once (as retrying clients do): one
/// charge, and every copy answers the original result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_apply_once() {
    let env = start().await;
    set_standard_tariffs(&env.client).await;
    let clients = [
        env.client_on(1).await,
        env.client_on(2).await,
        env.client_on(3).await,
    ];
    let a = "conc-dup";
    create(&env.client, a, 1_000).await;

    let debit = rid();
    let top_up = rid();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let c = clients[i % 3].clone();
            tokio::spawn(async move {
                let d = c
                    .debit_with_id(debit, a, RG_SMS, events(3))
                    .await
                    .expect("debit");
                let t = c.top_up_with_id(top_up, a, 0, 40).await.expect("top_up");
                let r = c
                    .reserve(a, "s", 1, RG_DATA, bytes(2 * MB))
                    .await
                    .expect("reserve");
                (d, t, r)
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    let (d, t, r) = answers[0];
    assert_rc(d.result, ResultCode::Ok, "debit");
    assert_eq!(d.charged, 75);
    assert_rc(t.result, ResultCode::Ok, "top_up");
    assert_rc(r.result, ResultCode::Ok, "reserve");
    assert_eq!((r.reservation_id, r.granted), (1, Some(bytes(2 * MB))));
    for x in &answers {
        assert_eq!(x, &answers[0], "every copy answers the original");
    }
    let b = balance(&env.client, a).await;
    assert_money(&b, 1_000 - 75 + 40, 20);
    assert_eq!((b.version, b.open_reservations), (4, 1));
    env.shutdown().await;
}
