//! Shared setup of the cluster tests: a 3-node, 4-shard [`LocalCluster`] on
//! loopback, a [`Client`] on node 1, and small helpers (accounts, tariffs,
//! units, result-code assertions, bounded polling, crafted request ids).
#![allow(dead_code)]

use charging_client::proto::charging_client::ChargingClient;
use charging_client::proto::{
    BalanceResponse, Bucket, BucketKind, Price, ResultCode, Tariff, Units, UsageReport,
};
use charging_client::{result_name, Client, ClientConfig, Uuid};
use charging_node::cluster::{ClusterOptions, ConfigTweak, LocalCluster};
use charging_node::frontdoor::shard_of;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;

pub const NODES: u64 = 3;
pub const SHARDS: u32 = 4;
pub const KB: u64 = 1_000;
pub const MB: u64 = 1_000_000;
/// Nano minor units per minor unit.
pub const NANO: u64 = 1_000_000_000;

/// Data: 10 minor units per started MB.
pub const RG_DATA: u32 = 32;
pub const DATA_PER_MB: i64 = 10;
/// Voice: 3 minor units per started minute.
pub const RG_VOICE: u32 = 10;
pub const VOICE_PER_MIN: i64 = 3;
/// Events (SMS): 25 minor units per unit.
pub const RG_SMS: u32 = 99;
pub const SMS_PER_UNIT: i64 = 25;
/// A rating group that never gets a tariff.
pub const RG_UNPRICED: u32 = 77;

/// A running cluster and a client on node 1's public endpoint.
pub struct Env {
    pub cluster: LocalCluster,
    pub client: Client,
}

impl Env {
    /// The raw generated client on node 1 (no retries, exact messages).
    pub fn raw(&self) -> ChargingClient<Channel> {
        self.client.charging()
    }

    /// A client on node `id`'s public endpoint.
    pub async fn client_on(&self, id: u64) -> Client {
        let config = ClientConfig {
            tls: self.cluster.ca().is_some().then(client_tls),
            ..client_config()
        };
        Client::connect_with_config(self.cluster.public_url(id), config)
            .await
            .expect("client connects")
    }

    pub async fn shutdown(self) {
        self.cluster.shutdown().await;
    }
}

/// The CA of every test cluster in this binary: the clusters run TLS
/// (mutual between nodes), as a production cluster does.
pub fn ca() -> std::sync::Arc<charging_node::tls::CertAuthority> {
    static CA: std::sync::OnceLock<std::sync::Arc<charging_node::tls::CertAuthority>> =
        std::sync::OnceLock::new();
    CA.get_or_init(|| {
        std::sync::Arc::new(
            charging_node::tls::CertAuthority::generate("cluster tests CA").unwrap(),
        )
    })
    .clone()
}

/// TLS settings of a client of the test clusters (the CA, no certificate).
pub fn client_tls() -> charging_client::ClientTls {
    charging_client::ClientTls {
        ca_pem: ca().cert_pem.clone(),
        identity: None,
        domain: None,
    }
}

pub fn client_config() -> ClientConfig {
    ClientConfig {
        deadline_ms: 15_000,
        max_retries: 60,
        tls: Some(client_tls()),
        ..ClientConfig::default()
    }
}

pub async fn connect(url: String) -> Client {
    Client::connect_with_config(url, client_config())
        .await
        .expect("client connects")
}

/// Starts the default test cluster (3 nodes, 4 shards), waits until every
/// shard has a deciding leader, and connects a client to node 1.
pub async fn start() -> Env {
    start_with(None).await
}

/// Like [`start`], with a config tweak applied to every node.
pub async fn start_with(tweak: Option<ConfigTweak>) -> Env {
    start_opts(tweak, true, false).await
}

/// As [`start_with`], the nodes with admin listeners too (see
/// [`operator_admin`]): a TLS cluster without tokens serves cluster changes
/// only there.
pub async fn start_with_admin(tweak: Option<ConfigTweak>) -> Env {
    start_opts(tweak, true, true).await
}

/// An operator's Admin client on node `id`'s admin listener, with a client
/// certificate from the cluster's CA.
pub async fn operator_admin(
    cluster: &LocalCluster,
    id: u64,
) -> charging_client::proto::admin_client::AdminClient<Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let cert = ca().client_cert("operator").unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca().cert_pem))
        .domain_name(charging_node::tls::CLUSTER_NAME)
        .identity(Identity::from_pem(cert.cert_pem, cert.key_pem));
    let url = cluster
        .admin_url(id)
        .expect("the nodes have admin listeners");
    let ch = Endpoint::from_shared(url)
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("admin listener connects");
    charging_client::proto::admin_client::AdminClient::new(ch)
}

/// Like [`start_with`], but plaintext: for tests that speak raw HTTP/2 on
/// the socket (the listener limits they check are below TLS).
pub async fn start_plaintext_with(tweak: Option<ConfigTweak>) -> Env {
    start_opts(tweak, false, false).await
}

/// Starts a cluster of the test shape (3 nodes, 4 shards) with `opts`
/// otherwise, and waits until every shard has a deciding leader.
pub async fn start_cluster(opts: ClusterOptions) -> LocalCluster {
    let cluster = LocalCluster::start(ClusterOptions {
        nodes: NODES,
        shards: SHARDS,
        ..opts
    })
    .await
    .expect("cluster starts");
    cluster
        .wait_ready(Duration::from_secs(20))
        .await
        .expect("cluster ready");
    cluster
}

async fn start_opts(tweak: Option<ConfigTweak>, tls: bool, admin_listeners: bool) -> Env {
    let cluster = start_cluster(ClusterOptions {
        tweak,
        tls: tls.then(ca),
        admin_listeners,
        ..ClusterOptions::default()
    })
    .await;
    let config = ClientConfig {
        tls: tls.then(client_tls),
        ..client_config()
    };
    let client = Client::connect_with_config(cluster.public_url(1), config)
        .await
        .expect("client connects");
    Env { cluster, client }
}

/// The shard of an account in the test cluster.
pub fn shard(account: &str) -> u32 {
    shard_of(account, SHARDS)
}

/// One account id per shard, `"{prefix}-{n}"` with the smallest `n` landing
/// on each shard, in shard order.
pub fn account_per_shard(prefix: &str) -> Vec<String> {
    (0..SHARDS)
        .map(|s| {
            (0..10_000)
                .map(|n| format!("{prefix}-{n}"))
                .find(|id| shard(id) == s)
                .expect("some id lands on every shard")
        })
        .collect()
}

// ---- units and tariffs ------------------------------------------------------

pub fn bytes(n: u64) -> Units {
    Units {
        volume_bytes: n,
        ..Units::default()
    }
}

pub fn secs(n: u64) -> Units {
    Units {
        time_s: n,
        ..Units::default()
    }
}

pub fn events(n: u64) -> Units {
    Units {
        service_units: n,
        ..Units::default()
    }
}

pub fn report(rating_group: u32, used: Units, requested: Units) -> UsageReport {
    UsageReport {
        rating_group,
        used: Some(used),
        requested: Some(requested),
    }
}

pub fn tariff(
    rating_group: u32,
    unit: BucketKind,
    increment: u64,
    minor_per_increment: u64,
) -> Tariff {
    Tariff {
        rating_group,
        version: 0,
        prices: vec![Price {
            unit: unit as i32,
            increment,
            nano_per_increment: minor_per_increment * NANO,
        }],
    }
}

/// Sets a tariff cluster-wide and returns its version.
pub async fn set_tariff(c: &Client, t: Tariff) -> u64 {
    let r = c.set_tariff(t).await.expect("set_tariff");
    assert_rc(r.result, ResultCode::Ok, "set_tariff");
    assert!(r.version >= 1, "tariff version assigned: {r:?}");
    r.version
}

/// The standard tariffs: data (RG 32), voice (RG 10), SMS (RG 99).
pub async fn set_standard_tariffs(c: &Client) {
    set_tariff(
        c,
        tariff(RG_DATA, BucketKind::Bytes, MB, DATA_PER_MB as u64),
    )
    .await;
    set_tariff(
        c,
        tariff(RG_VOICE, BucketKind::Seconds, 60, VOICE_PER_MIN as u64),
    )
    .await;
    set_tariff(c, tariff(RG_SMS, BucketKind::Units, 1, SMS_PER_UNIT as u64)).await;
}

// ---- accounts ---------------------------------------------------------------

/// Creates a prepaid EUR account with `balance` in its main bucket.
pub async fn create(c: &Client, account: &str, balance: i64) {
    create_with(c, account, balance, 0).await;
}

pub async fn create_with(c: &Client, account: &str, balance: i64, credit_limit: i64) {
    let r = c
        .create_account(account, "EUR", balance, credit_limit, Vec::new())
        .await
        .expect("create_account");
    assert_rc(r.result, ResultCode::Ok, "create_account");
    assert_eq!(r.version, 1, "a new account is at version 1");
}

/// The balance of an existing account (asserts OK).
pub async fn balance(c: &Client, account: &str) -> BalanceResponse {
    let b = c.balance(account).await.expect("balance");
    assert_rc(b.result, ResultCode::Ok, "balance");
    b
}

pub fn main_bucket(b: &BalanceResponse) -> &Bucket {
    bucket(b, 1)
}

pub fn bucket(b: &BalanceResponse, id: u32) -> &Bucket {
    b.buckets
        .iter()
        .find(|x| x.bucket_id == id)
        .unwrap_or_else(|| panic!("bucket {id} in {b:?}"))
}

/// Asserts the main bucket's balance and reserved amount, and `available`:
/// those two, the credit limit and any other money bucket's free money.
#[track_caller]
pub fn assert_money(b: &BalanceResponse, balance: i64, reserved: i64) {
    let m = main_bucket(b);
    let others: i64 = b
        .buckets
        .iter()
        .filter(|x| x.bucket_id != 1 && x.kind == BucketKind::Money as i32)
        .map(|x| x.balance - x.reserved)
        .sum();
    assert_eq!(
        (m.balance, m.reserved, b.available),
        (
            balance,
            reserved,
            balance - reserved + b.credit_limit + others
        ),
        "(balance, reserved, available) of {b:?}"
    );
}

// ---- results ----------------------------------------------------------------

#[track_caller]
pub fn assert_rc(got: i32, want: ResultCode, what: &str) {
    assert_eq!(
        result_name(got),
        result_name(want as i32),
        "{what}: result code {got}"
    );
}

/// Asserts a gRPC status of INVALID_ARGUMENT whose message names `field`.
#[track_caller]
pub fn assert_invalid<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    field: &str,
) {
    match r {
        Ok(resp) => panic!("expected INVALID_ARGUMENT naming {field}, got OK {resp:?}"),
        Err(s) => {
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{field}: {s:?}");
            assert!(
                s.message().starts_with(&format!("{field}:")),
                "message names the field {field:?}: {:?}",
                s.message()
            );
        }
    }
}

// ---- request ids and time ---------------------------------------------------

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A UUIDv7-shaped request id whose top 48 bits are `unix_ms`.
pub fn request_id_at(unix_ms: u64) -> Uuid {
    let fresh = Uuid::now_v7().as_u128();
    let low = fresh & ((1u128 << 80) - 1); // version, random, variant bits
    Uuid::from_u128((u128::from(unix_ms) << 80) | low)
}

pub fn rid() -> Uuid {
    Uuid::now_v7()
}

pub fn rid_bytes(id: Uuid) -> Vec<u8> {
    id.as_bytes().to_vec()
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `timeout`.
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
