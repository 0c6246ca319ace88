//! Supervision (issue 15): a shard actor that panics is restarted by its
//! node's supervisor from applied state, and serves again; what it had in
//! flight is answered unknown and settled by a retry under the same request
//! id (nothing lost, nothing applied twice). An actor that keeps failing
//! stops its node instead (the shard's other replicas take over).
//!
//! The panics come from the test-only `ShardMsg::Panic` (feature
//! `test-hooks`, on for this crate's tests).
use crate::support::*;
use charging_client::proto::ResultCode;
use charging_node::ledger::{AccountId, BucketId, Command, Request, RequestId};
use charging_node::shard::supervisor::MAX_RESTARTS;
use charging_node::shard::ShardMsg;
use std::time::Duration;

/// `charging_shard_actor_restarts_total` of (node, shard); 0 if absent. The
/// recorder is process-wide and every test cluster has nodes 1-3: the tests
/// here use distinct shards.
fn restarts(node: u64, shard: u32) -> u64 {
    let text = charging_node::metrics_http::recorder().render();
    let (n, s) = (format!("node=\"{node}\""), format!("shard=\"{shard}\""));
    text.lines()
        .filter(|l| l.starts_with("charging_shard_actor_restarts_total{"))
        .filter(|l| l.contains(&n) && l.contains(&s))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_shard_actor_is_restarted_from_applied_state() {
    charging_node::metrics_http::recorder();
    let env = start().await;
    let c = &env.client;
    set_standard_tariffs(c).await;
    let a = &account_per_shard("sup")[0];
    let s = shard(a);
    create(c, a, 1_000).await;
    let up = c.top_up(a, 0, 500).await.unwrap();
    assert_rc(up.result, ResultCode::Ok, "top_up");
    let r = c.reserve(a, "s1", 1, RG_DATA, bytes(5 * MB)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "reserve");
    let commit_id = rid();
    let commit = c
        .commit_with_id(commit_id, a, r.reservation_id, bytes(1_500 * KB), false)
        .await
        .unwrap();
    assert_rc(commit.result, ResultCode::Ok, "commit");
    assert_eq!(commit.charged, 20);
    assert_money(&balance(c, a).await, 1_480, 30);

    let leader = env.cluster.deciding_leader(s).expect("a deciding leader");
    let node = &env.cluster.nodes[&leader];
    let old = node.replica(s).expect("hosted").actor;
    let before = restarts(leader, s);

    // A request put in the actor's mailbox ahead of the panic: it is decided
    // and waits in the open batch (the flush it schedules is queued behind
    // the panic), so the dead actor holds an active account and a waiter.
    // Connected before the mailbox is touched: no await may come between
    // the request and the panic, or the request's entry could commit and
    // be answered first.
    let rc = env.client_on(leader).await;
    let lost = rid();
    let (tx, lost_rx) = tokio::sync::oneshot::channel();
    old.cast(ShardMsg::Request {
        req: Request {
            account: AccountId(a.clone()),
            request_id: RequestId(lost.as_u128()),
            cmd: Command::TopUp {
                bucket: BucketId(0),
                amount: 1,
            },
        },
        reply: tx,
    })
    .expect("actor alive");
    // A client request racing the panic, through the leader's front door:
    // applied before it, or answered unknown / refused and retried by the
    // client under the same request id.
    let across = rid();
    let racing = {
        let a = a.clone();
        tokio::spawn(async move { rc.top_up_with_id(across, a, 0, 100).await })
    };
    old.cast(ShardMsg::Panic).expect("actor alive");
    // Usually the dead actor still held the request (its flush queued
    // behind the panic): the waiter hears its reply sink dropped, an
    // unknown outcome. If this thread was descheduled between the two
    // casts, the actor may have run its flush first and the batch been
    // answered: also correct. Either way the retry below must apply it
    // exactly once (seen flaking under a loaded 2-core CI).
    let lost_outcome = lost_rx.await;
    eprintln!(
        "the dropped request's waiter: {}",
        if lost_outcome.is_err() {
            "reply sink dropped (unknown outcome)"
        } else {
            "answered before the panic"
        }
    );

    // The supervisor puts a new actor in the hosted map, and counts it.
    poll(Duration::from_secs(10), "shard actor restarted", || async {
        node.replica(s)
            .filter(|h| h.actor.get_id() != old.get_id())
            .map(|_| ())
    })
    .await;
    assert_eq!(restarts(leader, s), before + 1, "the restart is counted");

    // The shard serves again: a new request succeeds (retried under one id).
    let fresh = rid();
    let served = poll(
        Duration::from_secs(20),
        "the shard serves again",
        || async {
            c.top_up_with_id(fresh, a, 0, 7)
                .await
                .ok()
                .filter(|r| r.result == ResultCode::Ok as i32)
        },
    )
    .await;
    assert_rc(served.result, ResultCode::Ok, "top_up after the restart");

    // Across the panic: answered once, a retry gets the original's answer.
    let first = racing
        .await
        .unwrap()
        .expect("the racing top-up is answered");
    assert_rc(first.result, ResultCode::Ok, "racing top_up");
    let again = c.top_up_with_id(across, a, 0, 100).await.unwrap();
    assert_eq!(
        again, first,
        "a retry across the panic answers the original"
    );
    // The request the dead actor dropped (or answered just before the
    // panic): its retry applies it, or answers the original, once.
    let retried = c.top_up_with_id(lost, a, 0, 1).await.unwrap();
    assert_rc(
        retried.result,
        ResultCode::Ok,
        "retry of the dropped request",
    );
    let again = c.top_up_with_id(lost, a, 0, 1).await.unwrap();
    assert_eq!(again, retried, "and once only");
    // Acknowledged before the panic: still there, not applied twice.
    let again = c
        .commit_with_id(commit_id, a, r.reservation_id, bytes(1_500 * KB), false)
        .await
        .unwrap();
    assert_eq!(again, commit, "a commit from before the panic dedups");
    assert_money(&balance(c, a).await, 1_480 + 100 + 7 + 1, 30);

    // The dead actor's active account was given back: with nothing in
    // flight, no node counts one.
    poll(
        Duration::from_secs(5),
        "no active accounts left",
        || async {
            env.cluster
                .nodes
                .values()
                .all(|n| n.active_accounts() == 0)
                .then_some(())
        },
    )
    .await;
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_shard_actor_stops_its_node() {
    let env = start().await;
    let a = &account_per_shard("loop")[1];
    let s = shard(a);
    let victim = env.cluster.deciding_leader(s).expect("a deciding leader");
    let other = (1..=NODES).find(|n| *n != victim).expect("another node");
    let c = env.client_on(other).await;
    create(&c, a, 1_000).await;

    let node = &env.cluster.nodes[&victim];
    for i in 0..=MAX_RESTARTS {
        let actor = node.replica(s).expect("hosted").actor;
        actor.cast(ShardMsg::Panic).expect("actor alive");
        if i < MAX_RESTARTS {
            poll(Duration::from_secs(10), "shard actor restarted", || async {
                node.replica(s)
                    .filter(|h| h.actor.get_id() != actor.get_id())
                    .map(|_| ())
            })
            .await;
            assert!(node.failure().is_none(), "restart {i} stops nothing");
        }
    }
    // One failure past the budget: the node stops itself, and says why.
    let why = tokio::time::timeout(Duration::from_secs(10), node.failed())
        .await
        .expect("the node stops itself");
    assert!(
        why.contains(&format!("shard {s} actor")),
        "names the shard: {why}"
    );
    assert_eq!(node.failure().as_deref(), Some(why.as_str()));

    // The other replicas take the shard over: it serves, exactly once.
    let id = rid();
    let r = poll(
        Duration::from_secs(30),
        "the shard serves elsewhere",
        || async {
            c.top_up_with_id(id, a, 0, 5)
                .await
                .ok()
                .filter(|r| r.result == ResultCode::Ok as i32)
        },
    )
    .await;
    assert_ne!(env.cluster.deciding_leader(s), Some(victim));
    assert_eq!(r.balance, 1_005);
    assert_money(&balance(&c, a).await, 1_005, 0);
    env.shutdown().await;
}
