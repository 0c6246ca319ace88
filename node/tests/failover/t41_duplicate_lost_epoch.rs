//! A retry is never acknowledged for an original that was lost with its
//! leader's epoch. Found by the turmoil simulation (seed 3): an isolated
//! leader queued a retry as a duplicate behind its uncommitted original and,
//! when its epoch ended, sent the duplicate its speculative OK although the
//! original never committed.
use super::*;
use charging_client::proto::charging_client::ChargingClient;
use charging_client::proto::{ResultCode, TopUpRequest};

/// One top-up with a fixed request id sent straight to `url`'s node, which
/// must decide it itself (no forwarding), within `timeout`.
async fn top_up_at(
    url: String,
    account: String,
    request_id: Vec<u8>,
    timeout: Duration,
) -> Result<i32, tonic::Status> {
    let ch = tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();
    let mut r = tonic::Request::new(TopUpRequest {
        account_id: account,
        request_id,
        bucket_id: 0,
        amount: 50,
    });
    r.set_timeout(timeout);
    r.metadata_mut().insert(
        charging_client::headers::FORWARDED,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    let call = async { ChargingClient::new(ch).top_up(r).await };
    match tokio::time::timeout(timeout + Duration::from_secs(1), call).await {
        Ok(r) => r.map(|r| r.into_inner().result),
        Err(_) => Err(tonic::Status::deadline_exceeded("client deadline")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_of_an_original_lost_with_the_epoch_is_not_acknowledged() {
    let c = cluster().await;
    let account = "lost-epoch-1".to_string();
    let old = c.deciding_leader(shard(&account)).expect("leader");
    let other = *c.nodes.keys().find(|id| **id != old).expect("3 nodes");
    let cl = client(c.public_url(other)).await;
    let r = settle(|| cl.create_account(account.clone(), "EUR", 0, 0, vec![])).await;
    assert_eq!(r.result, ResultCode::Ok as i32);

    // The leader is cut off: the original cannot commit; its caller gives up.
    c.nodes[&old].set_isolated(true);
    let id = charging_client::new_request_id();
    let rid = id.as_bytes().to_vec();
    let first = top_up_at(
        c.public_url(old),
        account.clone(),
        rid.clone(),
        Duration::from_millis(300),
    )
    .await;
    assert!(first.is_err(), "an isolated leader committed: {first:?}");
    // The retry reaches the same leader and waits behind the original.
    let retry = tokio::spawn(top_up_at(
        c.public_url(old),
        account.clone(),
        rid.clone(),
        Duration::from_secs(20),
    ));

    // The majority elects a new leader; then the old one hears of it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c
        .nodes
        .iter()
        .any(|(id, n)| *id != old && n.replica(shard(&account)).is_some_and(|h| h.is_deciding()))
    {
        assert!(
            Instant::now() < deadline,
            "no new leader on the majority side"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.nodes[&old].set_isolated(false);
    let retry = retry.await.expect("retry task");

    // Acknowledged means applied: read through the cluster.
    let b = settle(|| cl.balance(account.clone())).await;
    let applied = b.buckets.first().map_or(0, |m| m.balance);
    if retry.as_ref().is_ok_and(|r| *r == ResultCode::Ok as i32) {
        assert_eq!(
            applied, 50,
            "the retry was acknowledged OK but the top-up is not in the balance"
        );
    }
    // Retrying the same request id through the cluster applies it exactly once.
    let t = settle(|| cl.top_up_with_id(id, account.clone(), 0, 50)).await;
    assert_eq!(t.result, ResultCode::Ok as i32);
    let b = settle(|| cl.balance(account.clone())).await;
    assert_eq!(b.buckets.first().map_or(0, |m| m.balance), 50);
    c.shutdown().await;
}
