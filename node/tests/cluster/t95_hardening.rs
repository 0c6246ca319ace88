//! Issue 16, through real listeners: HTTP/2 stream limit, admission of heavy
//! calls, malformed input, and the guards of destructive admin calls.
use crate::support::*;
use charging_client::proto::{
    op, op_result, AddNodeRequest, DropReplicaRequest, Op, OpBatch, RemoveNodeRequest,
    StatusRequest, TopUpRequest,
};
use charging_client::Uuid;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

// ---- 1,000 streams on one connection ---------------------------------------

/// One HTTP/2 frame: 9-byte header, then the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK header block of literal fields (no indexing, no Huffman).
fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in headers {
        assert!(k.len() < 127 && v.len() < 127);
        b.push(0x00);
        b.push(k.len() as u8);
        b.extend_from_slice(k.as_bytes());
        b.push(v.len() as u8);
        b.extend_from_slice(v.as_bytes());
    }
    b
}

#[derive(Default, Debug)]
struct Seen {
    /// Streams the server answered with response headers (accepted).
    accepted: std::collections::BTreeSet<u32>,
    /// Streams reset with REFUSED_STREAM.
    refused: std::collections::BTreeSet<u32>,
    goaway: bool,
}

/// A raw HTTP/2 client (it ignores the server's stream limit, as an
/// attacker would) opens 1,000 `Stream` calls on one connection and keeps
/// them open. The server accepts at most its limit (256) and refuses the
/// rest with `REFUSED_STREAM`, while a client on another connection is
/// served within its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_are_refused_while_others_are_served() {
    let env = start_plaintext_with(None).await;
    let c = &env.client;
    create(c, "h2-flood", 1_000).await;
    let addr = env.cluster.addrs[&1].public.clone();
    let limit = 256;

    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(4, 0, 0, &[])); // SETTINGS
    wr.write_all(&hello).await.unwrap();

    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let (settings_tx, settings_rx) = tokio::sync::oneshot::channel::<()>();
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut settings_tx = Some(settings_tx);
            let mut head = [0u8; 9];
            loop {
                if rd.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
                let (kind, flags) = (head[3], head[4]);
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                let mut payload = vec![0u8; len];
                if rd.read_exact(&mut payload).await.is_err() {
                    return;
                }
                let mut s = seen.lock().unwrap();
                match kind {
                    4 if flags & 1 == 0 => {
                        if let Some(tx) = settings_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    1 => {
                        s.accepted.insert(stream);
                    }
                    3 if payload == 7u32.to_be_bytes() => {
                        s.refused.insert(stream);
                    }
                    7 => s.goaway = true,
                    _ => {}
                }
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(5), settings_rx)
        .await
        .expect("server SETTINGS within 5 s")
        .unwrap();
    let mut out = frame(4, 1, 0, &[]); // SETTINGS ACK
    let block = hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/charging.v1.Charging/Stream"),
        (":authority", &addr),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]);
    for i in 0..1000u32 {
        // END_HEADERS, not END_STREAM: each call stays open.
        out.extend(frame(1, 0x4, 2 * i + 1, &block));
    }
    wr.write_all(&out).await.unwrap();

    // Meanwhile another connection is served.
    for _ in 0..10 {
        let b = tokio::time::timeout(Duration::from_secs(2), c.balance("h2-flood"))
            .await
            .expect("another client is answered within 2 s")
            .expect("balance");
        assert_eq!(main_bucket(&b).balance, 1_000);
    }

    let seen = poll(Duration::from_secs(20), "every stream answered", || {
        let seen = seen.clone();
        async move {
            let s = seen.lock().unwrap();
            (s.accepted.len() + s.refused.len() >= 1000).then(|| {
                (
                    s.accepted.len(),
                    s.refused.len(),
                    s.goaway,
                    s.accepted.intersection(&s.refused).count(),
                )
            })
        }
    })
    .await;
    let (accepted, refused, goaway, both) = seen;
    assert!(!goaway, "stream refusals are per stream, no GOAWAY");
    assert_eq!(both, 0, "no stream both accepted and refused");
    assert_eq!(accepted, limit, "the server accepts exactly its limit");
    assert_eq!(refused, 1000 - limit, "and refuses every stream past it");
    // Still served after the flood, too.
    assert_eq!(main_bucket(&balance(c, "h2-flood").await).balance, 1_000);
    reader.abort();
    drop(wr);
    env.shutdown().await;
}

// ---- heavy-call storms -----------------------------------------------------

fn vm_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// A storm of BulkCreate calls, each a ~290 KB message, and one of SetTariff
/// calls: past `heavy_requests_inflight_max` (1 here) they are refused
/// `RESOURCE_EXHAUSTED` at once; nothing else fails (UNAVAILABLE while a
/// leader moves is a retry). The process's resident memory is printed, not
/// asserted: three nodes and the clients share this process, the test
/// nodes' Raft logs are in memory (every accepted bulk entry stays until a
/// snapshot), and glibc keeps freed memory, so RSS here measures the
/// allocator's high-water mark, not what the refused calls retain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_and_tariff_storms_are_refused_with_bounded_memory() {
    let env = start_with(Some(Arc::new(|c| {
        c.front_door.heavy_requests_inflight_max = 1;
    })))
    .await;
    let ids: Vec<String> = (0..5_000).map(|i| format!("storm-{i:0>50}")).collect();
    let req = charging_client::proto::BulkCreateAccountsRequest {
        account_ids: ids,
        currency: "EUR".into(),
        credit_limit: 0,
        initial_balance: 100,
    };
    let bytes = prost::Message::encoded_len(&req);
    assert!(bytes > 250_000, "{bytes}");
    // Created once before measuring: the storm then creates nothing new.
    // (Retried while leaders move: a bulk call creates only absent ids.)
    let raw = env.raw();
    poll(Duration::from_secs(30), "the accounts are created", || {
        let (mut raw, req) = (raw.clone(), req.clone());
        async move {
            let r = raw.bulk_create_accounts(req).await.ok()?.into_inner();
            (r.existing == 5_000).then_some(())
        }
    })
    .await;

    let before = vm_rss_kib();
    let calls = 48usize;
    let channels: Vec<_> = (0..4).map(|_| env.raw()).collect();
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = Vec::new();
    for i in 0..calls {
        let mut c = channels[i % channels.len()].clone();
        let req = req.clone();
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            c.bulk_create_accounts(req).await.map(|r| r.into_inner())
        }));
    }
    // Leaders may move meanwhile (UNAVAILABLE, retryable); nothing else.
    let (mut ok, mut exhausted, mut moved) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                assert_eq!((r.created, r.existing), (0, 5_000));
                ok += 1;
            }
            Err(s) if s.code() == Code::ResourceExhausted => exhausted += 1,
            Err(s) if s.code() == Code::Unavailable => moved += 1,
            Err(s) => panic!("bulk storm: unexpected {s:?}"),
        }
    }
    let after = vm_rss_kib();
    let offered_mib = (calls * bytes) >> 20;
    eprintln!(
        "bulk storm: {ok} ok, {exhausted} refused, {moved} unavailable; {offered_mib} MiB offered, RSS {} -> {} MiB",
        before >> 10,
        after >> 10
    );
    assert!(exhausted > 0, "a storm past the limit is refused");
    assert_eq!(ok + exhausted + moved, calls);

    // SetTariff: each call goes to every shard's leader in turn.
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let mut c = channels[i as usize % channels.len()].clone();
        tasks.push(tokio::spawn(async move {
            c.set_tariff(charging_client::proto::SetTariffRequest {
                request_id: rid_bytes(rid()),
                tariff: Some(tariff(
                    RG_DATA,
                    charging_client::proto::BucketKind::Bytes,
                    MB,
                    1 + i,
                )),
            })
            .await
        }));
    }
    let (mut ok, mut exhausted) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Err(s) if s.code() == Code::Unavailable => {}
            Ok(r) => {
                assert_rc(
                    r.get_ref().result,
                    charging_client::proto::ResultCode::Ok,
                    "set_tariff",
                );
                ok += 1;
            }
            Err(s) if s.code() == Code::ResourceExhausted => exhausted += 1,
            Err(s) => panic!("tariff storm: unexpected {s:?}"),
        }
    }
    eprintln!("tariff storm: {ok} ok, {exhausted} refused");
    assert!(exhausted > 0, "{ok} ok, {exhausted} refused");
    // Once the storm is over the permits are back: a call is served.
    set_tariff(
        &env.client,
        tariff(RG_DATA, charging_client::proto::BucketKind::Bytes, MB, 5),
    )
    .await;
    poll(
        Duration::from_secs(30),
        "a bulk call after the storm",
        || {
            let (mut raw, req) = (raw.clone(), req.clone());
            async move {
                let r = raw.bulk_create_accounts(req).await.ok()?.into_inner();
                (r.existing == 5_000).then_some(())
            }
        },
    )
    .await;
    env.shutdown().await;
}

// ---- malformed input --------------------------------------------------------

/// `TopUpRequest` on the wire, with the account id as raw bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawTopUp {
    #[prost(bytes = "vec", tag = "1")]
    account_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    request_id: Vec<u8>,
    #[prost(uint32, tag = "3")]
    bucket_id: u32,
    #[prost(int64, tag = "4")]
    amount: i64,
}

/// `Op` / `OpBatch` on the wire, carrying a [`RawTopUp`].
#[derive(Clone, PartialEq, prost::Message)]
struct RawOp {
    #[prost(uint64, tag = "1")]
    correlation_id: u64,
    #[prost(message, optional, tag = "9")]
    top_up: Option<RawTopUp>,
}
#[derive(Clone, PartialEq, prost::Message)]
struct RawOpBatch {
    #[prost(message, repeated, tag = "1")]
    ops: Vec<RawOp>,
}

fn raw_grpc(env: &Env) -> tonic::client::Grpc<tonic::transport::Channel> {
    tonic::client::Grpc::new(env.client.channel())
}

fn top_up(account: &str, request_id: Vec<u8>) -> TopUpRequest {
    TopUpRequest {
        account_id: account.into(),
        request_id,
        bucket_id: 0,
        amount: 7,
    }
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, what: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got OK {v:?}"),
        Err(s) => assert_eq!(s.code(), code, "{what}: {s:?}"),
    }
}

/// The first (error) status a stream ends with, and the results before it.
async fn stream_end(
    env: &Env,
    batch_bytes: Option<RawOpBatch>,
    batch: Option<OpBatch>,
) -> (Vec<charging_client::proto::OpResult>, Option<tonic::Status>) {
    let mut results = Vec::new();
    let resp = match (batch_bytes, batch) {
        (Some(raw), _) => {
            let mut g = raw_grpc(env);
            g.ready().await.unwrap();
            let codec = tonic_prost::ProstCodec::<RawOpBatch, charging_client::proto::OpResultBatch>::default();
            g.streaming(
                tonic::Request::new(futures::stream::iter(vec![raw])),
                "/charging.v1.Charging/Stream".parse().unwrap(),
                codec,
            )
            .await
        }
        (None, Some(b)) => {
            env.raw()
                .max_encoding_message_size(usize::MAX)
                .stream(futures::stream::iter(vec![b]))
                .await
        }
        _ => unreachable!(),
    };
    let mut s = match resp {
        Ok(r) => r.into_inner(),
        Err(e) => return (results, Some(e)),
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("the stream answers within 10 s")
        {
            Ok(Some(b)) => results.extend(b.results),
            Ok(None) => return (results, None),
            Err(e) => return (results, Some(e)),
        }
    }
}

/// A 5 MB message is `RESOURCE_EXHAUSTED`; a non-UTF-8 account id is
/// `INVALID_ARGUMENT` naming the field, unary and in a stream; a request id
/// that is not a UUIDv7, or a v7 dated past the clock bound, is
/// `INVALID_ARGUMENT` naming `request_id`. The account is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_the_right_status_and_changes_nothing() {
    let env = start().await;
    let c = &env.client;
    let acct = "malformed-1";
    create(c, acct, 1_000).await;

    // 5 MB: unary and stream.
    let huge = "x".repeat(5_000_000);
    let r = env
        .raw()
        .max_encoding_message_size(usize::MAX)
        .top_up(top_up(&huge, rid_bytes(rid())))
        .await;
    match r {
        Err(s) => {
            assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
            assert!(s.message().starts_with("message:"), "{s:?}");
        }
        Ok(v) => panic!("5 MB top-up: {v:?}"),
    }
    let (_, end) = stream_end(
        &env,
        None,
        Some(OpBatch {
            ops: vec![Op {
                correlation_id: 1,
                op: Some(op::Op::TopUp(top_up(&huge, rid_bytes(rid())))),
            }],
        }),
    )
    .await;
    assert_eq!(
        end.as_ref().map(|s| s.code()),
        Some(Code::ResourceExhausted),
        "5 MB stream message: {end:?}"
    );

    // Non-UTF-8 account id: unary and stream.
    let bad = RawTopUp {
        account_id: vec![b'm', 0xff, 0xfe, b'1'],
        request_id: rid_bytes(rid()),
        bucket_id: 0,
        amount: 7,
    };
    let mut g = raw_grpc(&env);
    g.ready().await.unwrap();
    let codec =
        tonic_prost::ProstCodec::<RawTopUp, charging_client::proto::TopUpResponse>::default();
    let r = g
        .unary(
            tonic::Request::new(bad.clone()),
            "/charging.v1.Charging/TopUp".parse().unwrap(),
            codec,
        )
        .await;
    assert_invalid(r, "account_id");
    let (results, end) = stream_end(
        &env,
        Some(RawOpBatch {
            ops: vec![RawOp {
                correlation_id: 1,
                top_up: Some(bad),
            }],
        }),
        None,
    )
    .await;
    assert!(results.is_empty(), "{results:?}");
    let end = end.expect("the stream ends with an error");
    assert_eq!(end.code(), Code::InvalidArgument, "{end:?}");
    assert!(
        // prost names the oneof (`op`), not its variant.
        end.message().starts_with("ops.op.account_id:"),
        "{end:?}"
    );

    // Request ids: a v4, a v7 with the wrong variant, a v7 from the future.
    // A version-4 shape (random bits, version nibble 4, RFC variant).
    let v4 = Uuid::from_u128((rid().as_u128() & !(0xF << 76)) | (0x4 << 76));
    assert_eq!(v4.get_version_num(), 4);
    assert_invalid(
        env.raw().top_up(top_up(acct, rid_bytes(v4))).await,
        "request_id",
    );
    let mut wrong_variant = *rid().as_bytes();
    wrong_variant[8] &= 0x3f; // variant 0b00
    assert_invalid(
        env.raw().top_up(top_up(acct, wrong_variant.to_vec())).await,
        "request_id",
    );
    let future = request_id_at(now_ms() + 60_000);
    assert_invalid(
        env.raw().top_up(top_up(acct, rid_bytes(future))).await,
        "request_id",
    );
    // The same in a stream: that operation answers INVALID_ARGUMENT.
    let (results, end) = stream_end(
        &env,
        None,
        Some(OpBatch {
            ops: vec![
                Op {
                    correlation_id: 1,
                    op: Some(op::Op::TopUp(top_up(acct, rid_bytes(future)))),
                },
                Op {
                    correlation_id: 2,
                    op: Some(op::Op::TopUp(top_up(acct, rid_bytes(v4)))),
                },
            ],
        }),
    )
    .await;
    assert!(end.is_none(), "{end:?}");
    assert_eq!(results.len(), 2, "{results:?}");
    for r in &results {
        match &r.result {
            Some(op_result::Result::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32, "{e:?}");
                assert!(e.message.starts_with("request_id:"), "{e:?}");
            }
            other => panic!("{}: {other:?}", r.correlation_id),
        }
    }
    // Within the clock bound is accepted (clients' clocks differ a little).
    let near = request_id_at(now_ms() + 100);
    let ok = env
        .raw()
        .top_up(top_up(acct, rid_bytes(near)))
        .await
        .expect("a v7 within the clock bound");
    assert_rc(
        ok.get_ref().result,
        charging_client::proto::ResultCode::Ok,
        "top_up",
    );

    // Nothing else changed the account: only the last top-up of 7.
    let b = balance(c, acct).await;
    assert_money(&b, 1_007, 0);
    env.shutdown().await;
}

// ---- admin guards -----------------------------------------------------------

/// The three-call takeover of issue 16, step by step: fake nodes can still
/// be added (credentials are another part of the issue) but only up to
/// `nodes_max`; a forced removal that leaves every group a majority of
/// voters is allowed, then `DropReplica` of that node's replica, which the
/// map no longer places but its group still counts as a voter, is
/// `FAILED_PRECONDITION` and the replica keeps serving; a second forced
/// removal that would take a majority away is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destructive_admin_calls_are_guarded_by_the_groups_membership() {
    let env = start_with_admin(Some(Arc::new(|c| c.nodes_max = 5))).await;
    let mut admin = operator_admin(&env.cluster, 1).await;
    poll(
        Duration::from_secs(20),
        "the cluster map is written",
        || {
            let mut admin = admin.clone();
            async move {
                let st = admin.status(StatusRequest::default()).await.ok()?;
                (st.get_ref().map_version > 0).then_some(())
            }
        },
    )
    .await;
    for (id, p) in [(4u64, 1u16), (5, 3)] {
        admin
            .add_node(AddNodeRequest {
                node_id: id,
                public_addr: format!("127.0.0.1:{p}"),
                internal_addr: format!("127.0.0.1:{}", p + 1),
                shards: 0,
                fresh: false,
                disk_id: 0,
            })
            .await
            .expect("a node within nodes_max is added");
    }
    assert_code(
        admin
            .add_node(AddNodeRequest {
                node_id: 6,
                public_addr: "127.0.0.1:5".into(),
                internal_addr: "127.0.0.1:6".into(),
                shards: 0,
                fresh: false,
                disk_id: 0,
            })
            .await,
        Code::FailedPrecondition,
        "a node past nodes_max",
    );

    // Node 3 leaves the map by force: each group keeps 2 of its 3 voters.
    admin
        .remove_node(RemoveNodeRequest {
            node_id: 3,
            force: true,
        })
        .await
        .expect("removing one of three voters leaves a majority");

    // Its replicas: out of the map, still voters of their groups (whether
    // node 3 leads the group or follows) until the group's leader moves
    // them out. Dropping one is refused while its leader counts it; a drop
    // that goes through must be of a replica the leader no longer counts
    // (the control plane may already have reconfigured that group).
    let mut admin3 = operator_admin(&env.cluster, 3).await;
    let mut refused = Vec::new();
    for shard in 0..SHARDS {
        let r = env.cluster.nodes[&3]
            .replica(shard)
            .expect("node 3 hosts it");
        let res = admin3
            .drop_replica(DropReplicaRequest {
                shard_id: shard,
                replica: r.replica,
            })
            .await;
        match res {
            Err(s) if s.code() == Code::FailedPrecondition => refused.push((shard, r)),
            Ok(d) if d.get_ref().dropped => {
                let mut leaders = Vec::new();
                for n in 1..=3u64 {
                    let mut a = operator_admin(&env.cluster, n).await;
                    let st = a
                        .status(StatusRequest::default())
                        .await
                        .unwrap()
                        .into_inner();
                    leaders.extend(
                        st.shard_status
                            .into_iter()
                            .filter(|s| s.shard_id == shard && s.leader == st.node_id),
                    );
                }
                assert!(!leaders.is_empty(), "shard {shard}: no leader reports");
                assert!(
                    leaders
                        .iter()
                        .all(|l| !l.voter_replicas.contains(&r.replica)
                            && !l.learner_replicas.contains(&r.replica)),
                    "shard {shard}: replica {} dropped while its leader counts it: {leaders:?}",
                    r.replica
                );
                println!("shard {shard}: node 3's replica had already left its group; dropped");
            }
            other => panic!("dropping node 3's replica of shard {shard}: {other:?}"),
        }
    }
    let (victim_shard, victim) = refused
        .first()
        .cloned()
        .expect("some group still counts node 3's replica right after the removal");
    // The refusal changed nothing: the replica is still hosted. (Whether it
    // goes on applying depends on when the control plane moves it out of
    // its group, which the force removal set going.)
    let still = env.cluster.nodes[&3]
        .replica(victim_shard)
        .expect("still hosted");
    assert_eq!(still.replica, victim.replica);

    // Node 2 by force as well: only node 1 would be left of {1, 2, 3}.
    assert_code(
        admin
            .remove_node(RemoveNodeRequest {
                node_id: 2,
                force: true,
            })
            .await,
        Code::FailedPrecondition,
        "removing a second voter of three",
    );
    let st = admin
        .status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        st.nodes.iter().any(|n| n.node_id == 2),
        "node 2 stays in the map"
    );
    env.shutdown().await;
}

// ---- connection cap and idle timeout ----------------------------------------

/// Opens a raw HTTP/2 connection (preface and SETTINGS sent) and returns
/// whether the server answered with its SETTINGS (`true`) or closed it
/// (`false`), within 5 s.
async fn raw_h2_connect(addr: &str) -> (bool, tokio::net::TcpStream) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(4, 0, 0, &[]));
    let _ = tcp.write_all(&hello).await;
    let mut head = [0u8; 9];
    let answered = tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut head))
        .await
        .expect("the server answers or closes within 5 s")
        .is_ok_and(|_| head[3] == 4);
    (answered, tcp)
}

/// Past `public_connections_max` a new connection is closed at once; the
/// connections already open (the client's) keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_at_once() {
    let env =
        start_plaintext_with(Some(Arc::new(|c| c.public_listener.connections_max = 16))).await;
    let c = &env.client;
    create(c, "conn-cap", 10).await;
    let addr = env.cluster.addrs[&1].public.clone();
    let mut held = Vec::new();
    let (mut open, mut closed) = (0, 0);
    for _ in 0..24 {
        let (answered, tcp) = raw_h2_connect(&addr).await;
        if answered {
            open += 1;
            held.push(tcp);
        } else {
            closed += 1;
        }
    }
    // The cluster's own connections to node 1 (client, peers' forwards and
    // placement calls) hold some of the 16.
    assert!((1..=16).contains(&open), "{open} open");
    assert!(closed >= 8, "{closed} closed of 24");
    assert_eq!(main_bucket(&balance(c, "conn-cap").await).balance, 10);
    // A slot comes back when a connection closes.
    drop(held);
    poll(
        Duration::from_secs(5),
        "a connection is accepted again",
        || {
            let addr = addr.clone();
            async move { raw_h2_connect(&addr).await.0.then_some(()) }
        },
    )
    .await;
    env.shutdown().await;
}

/// A connection with no request for `public_idle_timeout_ms` is closed; one
/// with a `Stream` call open is not, however long the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_busy_ones_are_not() {
    let env = start_plaintext_with(Some(Arc::new(|c| {
        c.public_listener.idle_timeout = Some(Duration::from_millis(300))
    })))
    .await;
    let addr = env.cluster.addrs[&1].public.clone();
    let (answered, mut tcp) = raw_h2_connect(&addr).await;
    assert!(answered);
    // Read until the server closes (it sends its SETTINGS ACK, maybe a
    // GOAWAY, then EOF), bounded.
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("an idle connection is closed within 5 s")
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );

    // A stream open across several idle timeouts keeps its connection.
    let c = &env.client;
    set_standard_tariffs(c).await;
    create(c, "idle-busy", 1_000).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<OpBatch>(4);
    let mut replies = env
        .raw()
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream opens")
        .into_inner();
    for i in 0..3u64 {
        // Waiting is the point: longer than the idle timeout between messages.
        tokio::time::sleep(Duration::from_millis(500)).await;
        tx.send(OpBatch {
            ops: vec![Op {
                correlation_id: i,
                op: Some(op::Op::TopUp(top_up("idle-busy", rid_bytes(rid())))),
            }],
        })
        .await
        .unwrap();
        let b = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("answered within 5 s")
            .expect("the stream is still open")
            .expect("a batch");
        assert!(
            matches!(b.results[0].result, Some(op_result::Result::TopUp(_))),
            "{b:?}"
        );
    }
    drop(tx);
    assert_money(&balance(c, "idle-busy").await, 1_021, 0);
    env.shutdown().await;
}
