//! Bearer tokens and roles (issue 16), through real gRPC on loopback: keys
//! made at test time, a 3-node cluster with `[auth]` on. Every refusal is
//! shown to change nothing by reading back with an admin token.
use crate::support::*;
use base64::Engine;
use charging_client::proto::admin_client::AdminClient;
use charging_client::proto::charging_client::ChargingClient;
use charging_client::proto::{
    op, op_result, AddNodeRequest, BalanceRequest, DropReplicaRequest, Op, OpBatch,
    ShardMapRequest, StatusRequest, TopUpRequest,
};
use charging_client::{BearerToken, Client, ClientConfig};
use charging_node::cluster::ConfigTweak;
use charging_node::config::{AuthConfig, AuthKey};
use charging_node::frontdoor::auth::{NodeCredential, Role, Signer, TokenSpec};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request};

const AUD: &str = "charging-test";
const SCOPE: &str = "nchf-convergedcharging";

struct Keys {
    _dir: tempfile::TempDir,
    signer: Signer,
    other: Signer,
    cfg: AuthConfig,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = charging_node::frontdoor::auth::generate_es256().unwrap();
    let (other_private, _) = charging_node::frontdoor::auth::generate_es256().unwrap();
    let pub_file = dir.path().join("jwt.pub.pem");
    let priv_file = dir.path().join("jwt.pem");
    std::fs::write(&pub_file, public).unwrap();
    std::fs::write(&priv_file, &private).unwrap();
    let cfg = AuthConfig {
        enabled: true,
        keys: vec![AuthKey {
            file: pub_file,
            kid: None,
        }],
        audience: vec![AUD.into()],
        node_key: Some(AuthKey {
            file: priv_file,
            kid: None,
        }),
        ..AuthConfig::default()
    };
    Keys {
        _dir: dir,
        signer: Signer::from_pem(private.as_bytes(), None).unwrap(),
        other: Signer::from_pem(other_private.as_bytes(), None).unwrap(),
        cfg,
    }
}

fn now_s() -> u64 {
    now_ms() / 1000
}

fn spec(scope: String, audience: &str, ttl: Duration) -> TokenSpec {
    TokenSpec {
        subject: "t95".into(),
        audience: vec![audience.into()],
        issuer: None,
        scope,
        ttl,
        kid: None,
    }
}

impl Keys {
    fn token(&self, roles: &[Role]) -> String {
        let s = spec(
            TokenSpec::for_roles(SCOPE, roles),
            AUD,
            Duration::from_secs(600),
        );
        self.signer.sign(&s, now_s()).unwrap()
    }
}

fn with_token<T>(m: T, token: &str) -> Request<T> {
    let mut r = Request::new(m);
    r.set_timeout(Duration::from_secs(10));
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn start_secure(k: &Keys) -> Env {
    let cfg = k.cfg.clone();
    let tweak: ConfigTweak = Arc::new(move |c| c.auth = cfg.clone());
    start_with(Some(tweak)).await
}

async fn channel(env: &Env, node: u64) -> Channel {
    client_tls()
        .endpoint(&env.cluster.public_url(node))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn client_with(env: &Env, node: u64, token: &str) -> Client {
    Client::connect_with_config(
        env.cluster.public_url(node),
        ClientConfig {
            token: Some(BearerToken::new(token).unwrap()),
            ..client_config()
        },
    )
    .await
    .unwrap()
}

async fn main_balance(c: &mut ChargingClient<Channel>, admin: &str, account: &str) -> i64 {
    let b = c
        .balance(with_token(
            BalanceRequest {
                account_id: account.into(),
            },
            admin,
        ))
        .await
        .expect("admin reads the balance")
        .into_inner();
    main_bucket(&b).balance
}

fn top_up(account: &str, amount: i64) -> TopUpRequest {
    TopUpRequest {
        account_id: account.into(),
        request_id: rid_bytes(rid()),
        bucket_id: 0,
        amount,
    }
}

/// A token with `alg: none`: header and claims, no signature.
fn alg_none(claims: serde_json::Value) -> String {
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b.encode(claims.to_string())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_tokens_are_unauthenticated_and_change_nothing() {
    let k = keys();
    let env = start_secure(&k).await;
    let admin = k.token(&[Role::Admin]);
    let admin_client = client_with(&env, 1, &admin).await;
    let account = "auth-bad-1";
    create(&admin_client, account, 1000).await;
    let mut raw = ChargingClient::new(channel(&env, 1).await);

    let billing = TokenSpec::for_roles(SCOPE, &[Role::Billing]);
    let hour = Duration::from_secs(3600);
    let expired = k
        .signer
        .sign(
            &spec(billing.clone(), AUD, Duration::from_secs(60)),
            now_s() - 3600,
        )
        .unwrap();
    let wrong_aud = k
        .signer
        .sign(&spec(billing.clone(), "someone-else", hour), now_s())
        .unwrap();
    // A role, but not the service scope every token must carry.
    let wrong_scope = k
        .signer
        .sign(&spec(Role::Billing.scope(), AUD, hour), now_s())
        .unwrap();
    let other_key = k
        .other
        .sign(&spec(billing.clone(), AUD, hour), now_s())
        .unwrap();
    let none = alg_none(serde_json::json!({
        "sub": "t95", "aud": AUD, "scope": billing, "exp": now_s() + 3600,
    }));
    // A shared secret (HS256) is refused whatever it says.
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "t95", "aud": AUD, "scope": billing, "exp": now_s() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(b"guessable"),
    )
    .unwrap();
    // The good token with its signature's last bytes changed.
    let good = k.token(&[Role::Billing]);
    let tampered = format!("{}AAAA", &good[..good.len() - 4]);

    let cases = [
        ("expired", expired.as_str(), "expired"),
        ("wrong audience", &wrong_aud, "audience"),
        ("wrong scope", &wrong_scope, "scope"),
        ("bad signature (another key)", &other_key, "signature"),
        ("tampered signature", &tampered, "signature"),
        ("alg none", &none, "alg"),
        ("HS256", &hs256, "HS256"),
        ("not a JWT", "hello", "malformed"),
    ];
    for (what, token, says) in cases {
        let err = raw
            .top_up(with_token(top_up(account, 500), token))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
        assert!(
            err.message().contains(says),
            "{what}: message `{}` does not say {says}",
            err.message()
        );
        let challenge = err
            .metadata()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains("invalid_token"),
            "{what}: www-authenticate `{challenge}`"
        );
        assert_eq!(
            main_balance(&mut raw, &admin, account).await,
            1000,
            "{what}"
        );
    }

    // No token at all, and a non-Bearer scheme.
    let mut r = Request::new(top_up(account, 500));
    r.set_timeout(Duration::from_secs(10));
    let err = raw.top_up(r).await.expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("no bearer token"), "{err:?}");
    let mut r = Request::new(top_up(account, 500));
    r.metadata_mut()
        .insert("authorization", "Basic dXNlcjpwdw==".parse().unwrap());
    let err = raw.top_up(r).await.expect_err("basic auth");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // Admin calls are protected too.
    let mut admin_raw = AdminClient::new(channel(&env, 2).await);
    let err = admin_raw
        .status(Request::new(StatusRequest::default()))
        .await
        .expect_err("status without a token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    // Health stays open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&env, 1).await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health needs no token");
    assert_eq!(main_balance(&mut raw, &admin, account).await, 1000);

    // The good one, for contrast: the same call with a billing token works.
    let r = raw
        .top_up(with_token(top_up(account, 500), &good))
        .await
        .expect("billing tops up")
        .into_inner();
    assert_rc(r.result, charging_client::proto::ResultCode::Ok, "top-up");
    assert_eq!(main_balance(&mut raw, &admin, account).await, 1500);
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_role_is_permission_denied_and_changes_nothing() {
    let k = keys();
    let env = start_secure(&k).await;
    let admin = k.token(&[Role::Admin]);
    let charging = k.token(&[Role::Charging]);
    let billing = k.token(&[Role::Billing]);
    let admin_client = client_with(&env, 1, &admin).await;
    let account = "auth-role-1";
    create(&admin_client, account, 1000).await;
    let mut raw = ChargingClient::new(channel(&env, 1).await);
    let mut admin_raw = AdminClient::new(channel(&env, 1).await);

    // A charging token may charge...
    assert_eq!(main_balance(&mut raw, &charging, account).await, 1000);
    // ...but not top up.
    let err = raw
        .top_up(with_token(top_up(account, 500), &charging))
        .await
        .expect_err("charging tops up");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("billing"), "{err:?}");
    assert_eq!(main_balance(&mut raw, &admin, account).await, 1000);
    // A billing token may not charge.
    let err = raw
        .balance(with_token(
            BalanceRequest {
                account_id: account.into(),
            },
            &billing,
        ))
        .await
        .expect_err("billing reads a balance");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Cluster operations: refused, and the cluster is what it was.
    let map_before = admin_raw
        .shard_map(with_token(ShardMapRequest {}, &admin))
        .await
        .unwrap()
        .into_inner();
    let shard = 0;
    let replica = charging_node::raft::replica_id(2, charging_node::node::INITIAL_INCARNATION);
    let err = admin_raw
        .drop_replica(with_token(
            DropReplicaRequest {
                shard_id: shard,
                replica,
            },
            &charging,
        ))
        .await
        .expect_err("charging drops a replica");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = admin_raw
        .add_node(with_token(
            AddNodeRequest {
                node_id: 9,
                public_addr: "127.0.0.1:1".into(),
                internal_addr: "127.0.0.1:2".into(),
                shards: SHARDS,
                fresh: true,
                disk_id: 0,
            },
            &billing,
        ))
        .await
        .expect_err("billing adds a node");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = admin_raw
        .status(with_token(StatusRequest::default(), &charging))
        .await
        .expect_err("charging reads status");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let map_after = admin_raw
        .shard_map(with_token(ShardMapRequest {}, &admin))
        .await
        .unwrap()
        .into_inner();
    // (The map's version may move on its own at start: preferred leaders.)
    let ids = |m: &charging_client::proto::ShardMapResponse| {
        let mut v: Vec<u64> = m.nodes.iter().map(|n| n.node_id).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&map_after), vec![1, 2, 3], "the map's nodes changed");
    assert_eq!(ids(&map_before), ids(&map_after));
    assert!(
        env.cluster.nodes[&2].replica(shard).is_some(),
        "the replica was dropped"
    );
    // ShardMap (routing) is open to any role; a token with no role gets nothing.
    admin_raw
        .shard_map(with_token(ShardMapRequest {}, &charging))
        .await
        .expect("any role reads the shard map");
    let no_role = k
        .signer
        .sign(&spec(SCOPE.into(), AUD, Duration::from_secs(600)), now_s())
        .unwrap();
    let err = admin_raw
        .shard_map(with_token(ShardMapRequest {}, &no_role))
        .await
        .expect_err("no role");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Admin implies every role.
    let r = raw
        .top_up(with_token(top_up(account, 1), &admin))
        .await
        .unwrap()
        .into_inner();
    assert_rc(
        r.result,
        charging_client::proto::ResultCode::Ok,
        "admin top-up",
    );
    assert_eq!(main_balance(&mut raw, &admin, account).await, 1001);

    // The node's own credential (what the placement driver and a joining
    // node send) is an admin token the nodes accept.
    let own = NodeCredential::new(7, &k.cfg, Arc::new(charging_node::clock::SystemClock)).unwrap();
    let mut r = Request::new(StatusRequest::default());
    own.authorize(r.metadata_mut());
    admin_raw.status(r).await.expect("the node's own token");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_items_are_checked_one_by_one() {
    let k = keys();
    let env = start_secure(&k).await;
    let admin = k.token(&[Role::Admin]);
    let charging = k.token(&[Role::Charging]);
    let admin_client = client_with(&env, 1, &admin).await;
    // One account per shard: some of each batch is led here, some forwarded.
    let accounts = account_per_shard("auth-stream");
    for a in &accounts {
        create(&admin_client, a, 1000).await;
    }
    let mut raw = ChargingClient::new(channel(&env, 1).await);
    let mut ops = Vec::new();
    for (i, a) in accounts.iter().enumerate() {
        ops.push(Op {
            correlation_id: 2 * i as u64,
            op: Some(op::Op::Balance(BalanceRequest {
                account_id: a.clone(),
            })),
        });
        ops.push(Op {
            correlation_id: 2 * i as u64 + 1,
            op: Some(op::Op::TopUp(top_up(a, 500))),
        });
    }
    let mut out = raw
        .stream(with_token(
            tokio_stream::iter(vec![OpBatch { ops }]),
            &charging,
        ))
        .await
        .expect("a charging token opens a stream")
        .into_inner();
    let batch = out.message().await.unwrap().expect("one result batch");
    assert_eq!(batch.results.len(), 2 * accounts.len());
    for r in &batch.results {
        match (r.correlation_id % 2, r.result.as_ref()) {
            (0, Some(op_result::Result::Balance(b))) => {
                assert_eq!(main_bucket(b).balance, 1000, "{r:?}")
            }
            (1, Some(op_result::Result::Error(e))) => {
                assert_eq!(e.code, Code::PermissionDenied as i32, "{e:?}")
            }
            _ => panic!("unexpected result {r:?}"),
        }
    }
    for a in &accounts {
        assert_eq!(main_balance(&mut raw, &admin, a).await, 1000, "{a}");
    }
    // Without a token the stream does not open.
    let err = raw
        .stream(Request::new(tokio_stream::iter(Vec::<OpBatch>::new())))
        .await
        .expect_err("stream without a token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_non_owner_forwards_with_the_callers_token() {
    let k = keys();
    let env = start_secure(&k).await;
    let admin = k.token(&[Role::Admin]);
    let billing = k.token(&[Role::Billing]);
    let admin_client = client_with(&env, 1, &admin).await;
    let account = "auth-fwd-1";
    create(&admin_client, account, 1000).await;
    let s = shard(account);
    let mut expected = 1000;
    // Ask a node that does not lead the shard; it forwards one hop to the
    // leader, which verifies the same token again. (Retried only if the
    // leader moved meanwhile, so the hop really happened.)
    let mut forwarded = false;
    for _ in 0..5 {
        let leader = env.cluster.deciding_leader(s).expect("a leader");
        let via = (1..=NODES).find(|n| *n != leader).unwrap();
        let mut raw = ChargingClient::new(channel(&env, via).await);
        let r = raw
            .top_up(with_token(top_up(account, 250), &billing))
            .await
            .expect("forwarded top-up with a billing token")
            .into_inner();
        assert_rc(r.result, charging_client::proto::ResultCode::Ok, "top-up");
        expected += 250;
        // A charging token is refused at the first node already.
        let err = raw
            .top_up(with_token(
                top_up(account, 250),
                &k.token(&[Role::Charging]),
            ))
            .await
            .expect_err("charging token via a non-owner");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        if env.cluster.deciding_leader(s) == Some(leader) {
            forwarded = true;
            break;
        }
    }
    assert!(forwarded, "the leader kept moving");
    let mut raw = ChargingClient::new(channel(&env, 1).await);
    assert_eq!(main_balance(&mut raw, &admin, account).await, expected);
    env.shutdown().await;
}

/// With auth on, the nodes' own calls carry their own admin token: a new
/// node joins (AddNode, forwarded to the metadata leader with that token)
/// and the placement driver (Status and DropReplica on every node) moves
/// replicas onto it. Without the node's token neither would happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_and_gets_replicas_with_auth_on() {
    let k = keys();
    let mut env = start_secure(&k).await;
    env.cluster.add_node(4, 2).await.expect("node 4 starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let in_map = env.cluster.nodes[&1]
            .front_door
            .map()
            .is_some_and(|m| m.nodes.contains_key(&4));
        let hosted = env.cluster.nodes[&4].shards().len();
        if in_map && hosted > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 4: in the map {in_map}, replicas {hosted}, after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.shutdown().await;
}

/// A node whose token keys cannot be read does not start, and says which.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_bad_key_stops_the_start_and_is_named() {
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let not_a_key = dir.path().join("junk.pem");
    std::fs::write(
        &not_a_key,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    for (file, says) in [
        (dir.path().join("missing.pem"), "auth.keys[0]"),
        (not_a_key, "not an EC (P-256) or RSA public key"),
    ] {
        let mut cfg = k.cfg.clone();
        cfg.keys[0].file = file;
        let tweak: ConfigTweak = Arc::new(move |c| c.auth = cfg.clone());
        let r =
            charging_node::cluster::LocalCluster::start(charging_node::cluster::ClusterOptions {
                nodes: 1,
                shards: 1,
                tweak: Some(tweak),
                ..Default::default()
            })
            .await;
        let err = r.err().expect("the node must not start").to_string();
        assert!(err.contains(says), "`{err}` does not say {says}");
    }
}
