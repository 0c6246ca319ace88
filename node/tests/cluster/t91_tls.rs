//! TLS through the real listeners (every cluster test runs TLS; these check
//! who gets in):
//! - the Raft port refuses a peer without a client certificate, and one
//!   whose certificate comes from another CA;
//! - a peer certificate whose node differs from the claimed sender (the
//!   message's `from_node`, or the node of the vote it carries) is refused,
//!   while the same certificate speaking for its own node is answered;
//! - the public port refuses a client certificate from another CA, and a
//!   client that does not trust the cluster's CA cannot talk to it;
//! - an internal header (a shard restriction) from a client without a node
//!   certificate is ignored, and honoured from a node.
use crate::support::*;
use charging_client::proto::{BucketKind, ResultCode, SetTariffRequest};
use charging_node::raft::TypeConfig;
use charging_node::tls::{CertAuthority, CLUSTER_NAME};
use charging_proto::internal::raft_internal_client::RaftInternalClient;
use charging_proto::internal::{RaftKind, RaftRequest};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// A channel to `addr` over TLS that trusts `trust` (PEM) and presents
/// `identity` (certificate, key) if given.
async fn dial(addr: &str, trust: &str, identity: Option<(String, String)>) -> Option<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(trust))
        .domain_name(CLUSTER_NAME);
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(2))
        .connect()
        .await
        .ok()
}

/// A node certificate for node `id` from `ca`, as (certificate, key).
fn node_identity(ca: &CertAuthority, id: u64) -> (String, String) {
    let n = ca.node_cert(id, &[]).unwrap();
    (n.cert_pem, n.key_pem)
}

/// A PreVote for shard 0 claiming `from_node`, with a vote of member
/// `candidate` at term 0: harmless (a lower term changes nothing) and
/// answered by any replica, so only the sender check can refuse it.
fn pre_vote(from_node: u64, candidate: u64) -> RaftRequest {
    let vote = openraft::impls::Vote::new(0, candidate);
    let req = openraft::raft::VoteRequest::<TypeConfig>::new(vote, None);
    RaftRequest {
        shard: 0,
        kind: RaftKind::PreVote as i32,
        body: charging_node::codec::encode(&req).unwrap(),
        sender_clock_ms: now_ms(),
        from_node,
        to_replica: 0,
    }
}

/// Sends `req` to node 1's Raft port as `identity`; the status code, or
/// `None` for an answer. A refused TLS handshake shows as `UNAVAILABLE`
/// (or no channel at all).
async fn raft_call(
    env: &Env,
    trust: &str,
    identity: Option<(String, String)>,
    req: RaftRequest,
) -> Option<Code> {
    let addr = &env.cluster.addrs[&1].internal;
    let Some(ch) = dial(addr, trust, identity).await else {
        return Some(Code::Unavailable);
    };
    match RaftInternalClient::new(ch).call(req).await {
        Ok(_) => None,
        Err(s) => Some(s.code()),
    }
}

/// A client identity: (certificate, key) PEMs, or none.
type PeerIdentity = Option<(String, String)>;

/// What node 1's Raft port must answer a call: answered, refused at the
/// handshake (any code), or refused with this code.
#[derive(Debug, PartialEq)]
enum Want {
    Answered,
    Refused,
    Code(Code),
}

#[tokio::test]
async fn the_raft_port_admits_only_certified_peers_speaking_for_themselves() {
    let env = start().await;
    let ca = ca();
    let other = CertAuthority::generate("another CA").unwrap();
    let client = ca.client_cert("ops").unwrap();
    let (m2, m3) = (
        charging_node::ids::replica_id(2, 1),
        charging_node::ids::replica_id(3, 1),
    );
    let cases: Vec<(&str, PeerIdentity, RaftRequest, Want)> = vec![
        (
            "node 2 speaking for itself (control)",
            Some(node_identity(&ca, 2)),
            pre_vote(2, m2),
            Want::Answered,
        ),
        (
            "no client certificate",
            None,
            pre_vote(2, m2),
            Want::Refused,
        ),
        (
            "another CA's certificate naming node 2",
            Some(node_identity(&other, 2)),
            pre_vote(2, m2),
            Want::Refused,
        ),
        (
            "node 2's certificate claiming node 3 in from_node",
            Some(node_identity(&ca, 2)),
            pre_vote(3, m3),
            Want::Code(Code::PermissionDenied),
        ),
        (
            "node 2's certificate carrying node 3's vote",
            Some(node_identity(&ca, 2)),
            pre_vote(2, m3),
            Want::Code(Code::PermissionDenied),
        ),
        (
            "a client certificate (names no node)",
            Some((client.cert_pem, client.key_pem)),
            pre_vote(2, m2),
            Want::Code(Code::Unauthenticated),
        ),
    ];
    for (what, identity, req, want) in cases {
        let got = match raft_call(&env, &ca.cert_pem, identity, req).await {
            None => Want::Answered,
            Some(_) if want == Want::Refused => Want::Refused,
            Some(c) => Want::Code(c),
        };
        assert_eq!(got, want, "{what}");
    }

    // The cluster is unharmed.
    let a = "tls-raft-1";
    create(&env.client, a, 100).await;
    assert_money(&balance(&env.client, a).await, 100, 0);
    env.shutdown().await;
}

/// One Balance call on exactly this channel (no routing, no retries).
async fn balance_on(
    ch: Channel,
    account: &str,
) -> Result<charging_client::proto::BalanceResponse, tonic::Status> {
    let req = charging_client::proto::BalanceRequest {
        account_id: account.into(),
    };
    charging_client::proto::charging_client::ChargingClient::new(ch)
        .balance(req)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn the_public_port_checks_certificates_both_ways() {
    let env = start().await;
    let addr = env.cluster.addrs[&1].public.clone();
    let a = "tls-public-1";
    create(&env.client, a, 100).await;

    // A client certificate from the cluster's CA is taken...
    let good = ca().client_cert("ops").unwrap();
    let ch = dial(&addr, &ca().cert_pem, Some((good.cert_pem, good.key_pem)))
        .await
        .expect("a client certificate from the CA is accepted");
    let b = balance_on(ch, a).await.expect("served");
    assert_eq!(b.result, ResultCode::Ok as i32);

    // ...one from another CA is refused at the handshake.
    let other = CertAuthority::generate("another CA").unwrap();
    let bad = other.client_cert("ops").unwrap();
    let refused = match dial(&addr, &ca().cert_pem, Some((bad.cert_pem, bad.key_pem))).await {
        None => true,
        Some(ch) => balance_on(ch, a).await.is_err(),
    };
    assert!(
        refused,
        "a client certificate from another CA must be refused"
    );

    // A client that trusts another CA does not take the node for real.
    let fooled = match dial(&addr, &other.cert_pem, None).await {
        None => false,
        Some(ch) => balance_on(ch, a).await.is_ok(),
    };
    assert!(
        !fooled,
        "the node's certificate must not verify under another CA"
    );

    // Plaintext to a TLS port gets nowhere.
    let plain = charging_client::Client::connect_with_config(
        format!("http://{addr}"),
        charging_client::ClientConfig {
            deadline_ms: 1_000,
            ..Default::default()
        },
    )
    .await;
    if let Ok(c) = plain {
        assert!(c.balance(a).await.is_err(), "plaintext must not be served");
    }
    env.shutdown().await;
}

/// Sets tariff `rg` on node `via` with the shard restriction `only`, over a
/// channel presenting `identity`.
async fn set_tariff_only(
    env: &Env,
    via: u64,
    only: u32,
    rg: u32,
    identity: Option<(String, String)>,
) {
    let addr = &env.cluster.addrs[&via].public;
    let ch = dial(addr, &ca().cert_pem, identity)
        .await
        .expect("connects");
    let mut req = tonic::Request::new(SetTariffRequest {
        request_id: rid_bytes(rid()),
        tariff: Some(tariff(rg, BucketKind::Units, 1, 1)),
    });
    req.metadata_mut().insert(
        charging_proto::headers::ONLY_SHARD,
        only.to_string().parse().unwrap(),
    );
    let r = charging_client::proto::charging_client::ChargingClient::new(ch)
        .set_tariff(req)
        .await
        .expect("set_tariff")
        .into_inner();
    assert_eq!(r.result, ResultCode::Ok as i32, "{r:?}");
}

#[tokio::test]
async fn internal_headers_count_only_from_nodes() {
    let env = start().await;
    // A shard and the node that leads it (the restriction is served
    // locally), and an account on another shard.
    let only = 0;
    let via = env.cluster.deciding_leader(only).expect("a leader");
    let other = account_per_shard("tls-hdr")
        .into_iter()
        .find(|a| shard(a) != only)
        .unwrap();
    create(&env.client, &other, 1_000).await;

    // From a client (no node certificate): the restriction is stripped, so
    // the tariff reaches every shard and the other shard rates with it.
    set_tariff_only(&env, via, only, 555, None).await;
    let r = env.client.debit(&other, 555, events(1)).await.unwrap();
    assert_rc(r.result, ResultCode::Ok, "tariff set on every shard");

    // From a node: honoured, so the other shard has no such tariff.
    set_tariff_only(&env, via, only, 556, Some(node_identity(&ca(), 9))).await;
    let r = env.client.debit(&other, 556, events(1)).await.unwrap();
    assert_ne!(
        r.result,
        ResultCode::Ok as i32,
        "the restriction from a node is honoured: {r:?}"
    );
    env.shutdown().await;
}
