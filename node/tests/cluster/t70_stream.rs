//! The batch stream (`Charging/Stream`): a stream message's operations on
//! shards the node leads go to each shard actor in one message; the rest
//! (balances, shards led elsewhere) take the unary path, which forwards.
use crate::support::*;
use charging_client::proto::{
    op, op_result, BalanceRequest, DebitRequest, Op, OpBatch, ResultCode, TopUpRequest,
};
use std::collections::BTreeMap;

fn debit(correlation_id: u64, account: &str, request_id: &[u8]) -> Op {
    Op {
        correlation_id,
        op: Some(op::Op::Debit(DebitRequest {
            account_id: account.to_string(),
            request_id: request_id.to_vec(),
            rating_group: RG_SMS,
            units: Some(events(1)),
        })),
    }
}

/// One message mixing every path: debits on every shard, a duplicate in the
/// same message, a top-up, a balance and malformed ops, sent once through
/// each node (so some debits are decided where the stream is and others are
/// forwarded, whichever node leads what). Every op is answered exactly once
/// under its correlation id, the duplicate with the original's result, and
/// the balances show each charge once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_message_mixes_every_path() {
    let env = start().await;
    let c = &env.client;
    set_standard_tariffs(c).await;
    let accounts = account_per_shard("stream");
    for a in &accounts {
        create(c, a, 1_000).await;
    }
    for node in 1..=NODES {
        one_message(&env.client_on(node).await, &accounts).await;
    }
    // Each charge once per message (the duplicates changed nothing), the
    // top-up once per message.
    let n = NODES as i64;
    for (i, a) in accounts.iter().enumerate() {
        let want = 1_000 - n * SMS_PER_UNIT + if i == 1 { n * 500 } else { 0 };
        assert_eq!(main_bucket(&balance(c, a).await).balance, want, "{a}");
    }
    env.shutdown().await;
}

async fn one_message(c: &charging_client::Client, accounts: &[String]) {
    let mut ops = Vec::new();
    let first = rid_bytes(rid());
    ops.push(debit(1, &accounts[0], &first));
    for (i, a) in accounts.iter().enumerate().skip(1) {
        ops.push(debit(1 + i as u64, a, &rid_bytes(rid())));
    }
    // The same request again, in the same message: its original's answer.
    ops.push(debit(100, &accounts[0], &first));
    ops.push(Op {
        correlation_id: 101,
        op: Some(op::Op::TopUp(TopUpRequest {
            account_id: accounts[1].clone(),
            request_id: rid_bytes(rid()),
            bucket_id: 0,
            amount: 500,
        })),
    });
    ops.push(Op {
        correlation_id: 102,
        op: Some(op::Op::Balance(BalanceRequest {
            account_id: accounts[2].clone(),
        })),
    });
    ops.push(debit(103, "", &rid_bytes(rid())));
    ops.push(Op {
        correlation_id: 104,
        op: None,
    });
    let sent: Vec<u64> = ops.iter().map(|o| o.correlation_id).collect();

    let mut raw = c.charging();
    let mut replies = raw
        .stream(tokio_stream::iter(vec![OpBatch { ops }]))
        .await
        .expect("stream opens")
        .into_inner();
    let batch = replies
        .message()
        .await
        .expect("stream answers")
        .expect("one result batch");
    let mut by_id: BTreeMap<u64, op_result::Result> = BTreeMap::new();
    for r in batch.results {
        let prev = by_id.insert(r.correlation_id, r.result.expect("a result"));
        assert!(prev.is_none(), "op {} answered twice", r.correlation_id);
    }
    assert_eq!(
        by_id.keys().copied().collect::<Vec<_>>(),
        {
            let mut s = sent.clone();
            s.sort();
            s
        },
        "every op answered once"
    );

    let debited = |id: u64| match &by_id[&id] {
        op_result::Result::Debit(d) => {
            assert_rc(d.result, ResultCode::Ok, &format!("debit {id}"));
            d.charged
        }
        other => panic!("op {id}: not a debit result: {other:?}"),
    };
    for id in 1..=accounts.len() as u64 {
        assert_eq!(debited(id), SMS_PER_UNIT, "op {id} charged one SMS");
    }
    assert_eq!(
        debited(100),
        SMS_PER_UNIT,
        "the duplicate answers as its original"
    );
    match &by_id[&101] {
        op_result::Result::TopUp(t) => assert_rc(t.result, ResultCode::Ok, "top_up"),
        other => panic!("top-up: {other:?}"),
    }
    match &by_id[&102] {
        op_result::Result::Balance(b) => assert_rc(b.result, ResultCode::Ok, "balance"),
        other => panic!("balance: {other:?}"),
    }
    for (id, field) in [(103, "account_id"), (104, "op")] {
        match &by_id[&id] {
            op_result::Result::Error(e) => {
                assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "op {id}");
                assert!(
                    e.message.contains(field),
                    "op {id} names {field}: {}",
                    e.message
                );
            }
            other => panic!("op {id}: not an error: {other:?}"),
        }
    }
}

/// Admission on the stream path is per operation, as on the unary path: a
/// message with more operations for one shard than the node's whole
/// in-flight limit gets the first ones through and refuses the rest with
/// RESOURCE_EXHAUSTED (nothing applied), instead of refusing it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_admission_limit_is_partly_admitted() {
    const LIMIT: usize = 4;
    let env = start_with(Some(std::sync::Arc::new(
        |cfg: &mut charging_node::config::NodeConfig| cfg.front_door.max_inflight_requests = LIMIT,
    )))
    .await;
    set_standard_tariffs(&env.client).await;
    let account = "stream-admission";
    create(&env.client, account, 1_000).await;
    let leader = env
        .cluster
        .deciding_leader(shard(account))
        .expect("the shard has a deciding leader");
    let c = env.client_on(leader).await;
    let ops: Vec<Op> = (0..10)
        .map(|i| debit(i, account, &rid_bytes(rid())))
        .collect();
    let mut replies = c
        .charging()
        .stream(tokio_stream::iter(vec![OpBatch { ops }]))
        .await
        .expect("stream opens")
        .into_inner();
    let batch = replies.message().await.expect("answers").expect("a batch");
    let (mut ok, mut refused) = (0, 0);
    for r in batch.results {
        match r.result.expect("a result") {
            op_result::Result::Debit(d) => {
                assert_rc(d.result, ResultCode::Ok, "debit");
                ok += 1;
            }
            op_result::Result::Error(e) => {
                assert_eq!(e.code, tonic::Code::ResourceExhausted as i32, "{e:?}");
                refused += 1;
            }
            other => panic!("unexpected result {other:?}"),
        }
    }
    assert_eq!((ok, refused), (LIMIT, 10 - LIMIT));
    assert_eq!(
        main_bucket(&balance(&env.client, account).await).balance,
        1_000 - LIMIT as i64 * SMS_PER_UNIT
    );
    env.shutdown().await;
}

/// A valid message followed at once by an invalid one (more operations than
/// a message may carry): the stream ends with INVALID_ARGUMENT, but only
/// after the valid message's results, whose operations were applied. Before,
/// the error closed the stream at once and the applied debits' results could
/// be lost (issue 17: 1 run in 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_message_never_swallows_the_results_before_it() {
    let env = start().await;
    set_standard_tariffs(&env.client).await;
    let accounts = account_per_shard("stream-then-bad");
    for a in &accounts {
        create(&env.client, a, 1_000).await;
    }
    for round in 0..5u64 {
        let good: Vec<Op> = accounts
            .iter()
            .enumerate()
            .map(|(i, a)| debit(round * 1_000 + i as u64, a, &rid_bytes(rid())))
            .collect();
        let n = good.len();
        let bad: Vec<Op> = (0..4_097)
            .map(|i| debit(i, &accounts[0], &rid_bytes(rid())))
            .collect();
        let mut replies = env
            .client
            .charging()
            .stream(tokio_stream::iter(vec![
                OpBatch { ops: good },
                OpBatch { ops: bad },
            ]))
            .await
            .expect("stream opens")
            .into_inner();
        let first = replies
            .message()
            .await
            .expect("the valid message's results come before the error")
            .expect("a batch");
        assert_eq!(first.results.len(), n, "round {round}");
        for r in &first.results {
            match r.result.as_ref().expect("a result") {
                op_result::Result::Debit(d) => assert_rc(d.result, ResultCode::Ok, "debit"),
                other => panic!("round {round}: {other:?}"),
            }
        }
        let end = replies.message().await.expect_err("then the error");
        assert_eq!(end.code(), tonic::Code::InvalidArgument);
        assert!(end.message().starts_with("ops:"), "{}", end.message());
    }
    // Five debits on each account, none of the invalid message's.
    for a in &accounts {
        assert_eq!(
            main_bucket(&balance(&env.client, a).await).balance,
            1_000 - 5 * SMS_PER_UNIT,
            "{a}"
        );
    }
    env.shutdown().await;
}
