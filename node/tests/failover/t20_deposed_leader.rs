//! A deposed leader never sends a stale rejection: isolate a shard's leader,
//! top the account up through the new leader, then ask the old leader for a
//! reserve that its stale state would reject.
use super::*;
use charging_client::proto::ResultCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_does_not_reject_from_stale_state() {
    let c = cluster().await;
    let account = "deposed-1".to_string();
    let old = c.deciding_leader(shard(&account)).expect("leader");
    let other = *c.nodes.keys().find(|id| **id != old).expect("3 nodes");
    let cl = client(c.public_url(other)).await;
    set_data_tariff(&cl).await;
    let r = settle(|| cl.create_account(account.clone(), "EUR", 0, 0, vec![])).await;
    assert_eq!(r.result, ResultCode::Ok as i32);
    // Zero balance: a reserve is rejected (confirmed by a read index).
    let r = settle(|| cl.reserve(account.clone(), "s0", 0, RG, mb(1))).await;
    assert_eq!(r.result, ResultCode::InsufficientBalance as i32);

    c.nodes[&old].set_isolated(true);
    // Wait for a new leader on the majority side.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leaders: Vec<_> = c
            .nodes
            .iter()
            .filter(|(id, n)| {
                **id != old && n.replica(shard(&account)).is_some_and(|h| h.is_deciding())
            })
            .collect();
        if !leaders.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader on the majority side"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = settle(|| cl.top_up(account.clone(), 0, 100)).await;
    assert_eq!(t.result, ResultCode::Ok as i32);

    // The old leader, asked directly and never retried, must not answer
    // INSUFFICIENT_BALANCE from its stale state.
    let direct = Client::connect_with_config(
        c.public_url(old),
        ClientConfig {
            deadline_ms: 4_000,
            max_retries: 0,
            ..Default::default()
        },
    )
    .await
    .expect("connect");
    match direct.reserve(account.clone(), "s1", 0, RG, mb(1)).await {
        Ok(r) => assert_eq!(
            r.result,
            ResultCode::Ok as i32,
            "stale rejection from a deposed leader"
        ),
        Err(e) => assert_eq!(
            e.code(),
            Some(tonic::Code::Unavailable),
            "unexpected error {e:?}"
        ),
    }

    c.nodes[&old].set_isolated(false);
    // After healing, the account is consistent: 100 topped up, at most one 1-unit hold.
    let b = settle(|| cl.balance(account.clone())).await;
    let money = &b.buckets[0];
    assert_eq!(money.balance, 100);
    assert!(
        money.reserved == 0 || money.reserved == 1,
        "reserved {}",
        money.reserved
    );
    c.shutdown().await;
}
