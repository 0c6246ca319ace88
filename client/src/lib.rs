//! Client library for the charging cluster's `charging.v1` gRPC API.
//!
//! [`Client`] wraps the generated tonic clients with what every caller needs:
//!
//! - **Request ids.** Each mutating call gets a fresh UUIDv7 request id, generated
//!   once per call and reused on every retry, so a retry can never apply twice.
//!   The `*_with_id` variants take an explicit id (for exact duplicates, or for a
//!   manual retry of a call whose outcome is unknown).
//! - **Retries.** Only on `UNAVAILABLE` (routing / unknown outcome; the server
//!   promises the same request id is safe to resend), with exponential backoff,
//!   bounded by [`ClientConfig::max_retries`] and an overall deadline
//!   ([`ClientConfig::deadline_ms`]). Every attempt carries the remaining time as
//!   its gRPC timeout. Other codes are returned at once.
//! - **Leader hints.** An `UNAVAILABLE` status may carry the metadata entry
//!   [`headers::LEADER_ADDR`] (`x-leader-addr`), the public address of the shard
//!   leader. The retry then goes straight there, over a channel from a small
//!   bounded cache ([`CHANNEL_CACHE_CAPACITY`] entries). An `UNAVAILABLE` without a
//!   hint sends the next attempt back to the configured endpoint.
//! - **Shard map.** With [`ClientConfig::direct_to_leader`] (the default), the
//!   client fetches the cluster's shard map once ([`Client::shard_map`]), maps
//!   each account to its shard with [`charging_proto::shard_of`], and sends the
//!   call straight to that shard's leader: no forwarding hop. Leader hints keep
//!   the cached map current; a leader the client cannot reach falls back to the
//!   configured endpoint, which forwards. Node addresses in the map must be
//!   reachable from the client (not so from outside a container network: set
//!   `direct_to_leader: false` there, or just let the fallback happen).
//!
//! Responses are the prost types as-is; their `result` field is a
//! [`proto::ResultCode`] as `i32`, which [`result_name`] turns into e.g. `"OK"`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use charging_proto::v1 as proto;
use proto::admin_client::AdminClient;
use proto::charging_client::ChargingClient;
use proto::{
    AccountState, BucketKind, BucketSpec, ResultCode, StatusRequest, StatusResponse, Tariff, Units,
    UsageReport,
};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
pub use uuid::Uuid;

mod error;
pub mod json;
pub mod parse;

pub use error::Error;

/// The API's metadata keys (leader hints, the forwarded mark), shared with
/// the nodes.
pub use charging_proto::headers;
/// The endpoint `chargectl` uses when none is given.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50051";
/// How many leader channels (by address) the client keeps open.
pub const CHANNEL_CACHE_CAPACITY: usize = 16;

/// Retry and deadline settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Overall deadline of one call, retries included, in ms. Each attempt's gRPC
    /// timeout is the time left of it.
    pub deadline_ms: u64,
    /// Retries after the first attempt (so at most `max_retries + 1` attempts).
    /// The default has no count: a call retries until its deadline, which
    /// is what outlasts a leader failover.
    pub max_retries: u32,
    /// First backoff between retries, in ms; it doubles on each retry (each
    /// pause is drawn between half of that and all of it, so clients that
    /// failed together do not retry together).
    pub retry_backoff_ms: u64,
    /// Cap of the backoff, in ms.
    pub max_retry_backoff_ms: u64,
    /// Timeout of establishing a connection, in ms.
    pub connect_timeout_ms: u64,
    /// Send each call straight to its shard's leader using the cached shard map.
    pub direct_to_leader: bool,
    /// TLS: every endpoint (the configured one, leader hints, the shard
    /// map's addresses) is dialled over TLS with this. `None`: plaintext.
    pub tls: Option<ClientTls>,
    /// Bearer token sent on every call (`authorization: Bearer <JWT>`), for
    /// nodes with `[auth]` enabled.
    pub token: Option<BearerToken>,
}

/// TLS settings of a client: the cluster's CA, a client certificate when the
/// cluster asks for one (mutual TLS), and the name to check on the node
/// certificates.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM of the CA that issued the nodes' certificates.
    pub ca_pem: String,
    /// PEM of this client's certificate and key, for mutual TLS.
    pub identity: Option<(String, String)>,
    /// The name checked on a node's certificate. `None`: the endpoint's
    /// host (node certificates made by `chargerd certs` carry their hosts,
    /// `localhost`, 127.0.0.1 and `chargerd`).
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientTls")
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the CA and, when both are given, a client certificate and key.
    pub fn from_files(
        ca: &std::path::Path,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<ClientTls, Error> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", p.display())))
        };
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => {
                return Err(Error::InvalidArgument(
                    "a client certificate needs both its certificate and its key".into(),
                ))
            }
        };
        Ok(ClientTls {
            ca_pem: read(ca)?,
            identity,
            domain: None,
        })
    }

    /// From the environment, as `chargectl` reads it: `CHARGING_CA`, and
    /// `CHARGING_CERT` with `CHARGING_KEY` for mutual TLS. `None` when
    /// `CHARGING_CA` is unset (plaintext).
    pub fn from_env() -> Result<Option<ClientTls>, Error> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(std::path::PathBuf::from)
        };
        let Some(ca) = var("CHARGING_CA") else {
            return Ok(None);
        };
        let (cert, key) = (var("CHARGING_CERT"), var("CHARGING_KEY"));
        ClientTls::from_files(&ca, cert.as_deref(), key.as_deref()).map(Some)
    }

    /// `url` as this dials it: `http://` becomes `https://`.
    pub fn url(&self, url: &str) -> String {
        match url.strip_prefix("http://") {
            Some(rest) => format!("https://{rest}"),
            None => url.to_string(),
        }
    }

    /// An endpoint for `url` over TLS with these settings.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, tonic::transport::Error> {
        Endpoint::from_shared(self.url(url))?.tls_config(self.config())
    }

    fn config(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        c
    }
}

/// The environment variable `chargectl` and `chargebench` read a bearer
/// token from when `--token` is not given.
pub const TOKEN_ENV: &str = "CHARGING_TOKEN";

/// A bearer token (JWT), ready to send. Its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(tonic::metadata::AsciiMetadataValue);

impl BearerToken {
    /// From a JWT (with or without a leading `Bearer `).
    pub fn new(jwt: &str) -> Result<BearerToken, Error> {
        let jwt = jwt.trim();
        let jwt = jwt.strip_prefix("Bearer ").unwrap_or(jwt).trim();
        if jwt.is_empty() {
            return Err(Error::InvalidArgument("token: empty".into()));
        }
        tonic::metadata::AsciiMetadataValue::try_from(format!("Bearer {jwt}"))
            .map(BearerToken)
            .map_err(|_| Error::InvalidArgument("token: not printable ASCII".into()))
    }

    /// Sets `authorization` on `md`.
    pub fn apply(&self, md: &mut tonic::metadata::MetadataMap) {
        md.insert("authorization", self.0.clone());
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            deadline_ms: 2000,
            max_retries: u32::MAX,
            retry_backoff_ms: 5,
            max_retry_backoff_ms: 50,
            connect_timeout_ms: 1000,
            direct_to_leader: true,
            tls: None,
            token: None,
        }
    }
}

impl ClientConfig {
    /// The backoff before retry number `retry` (0-based): `retry_backoff_ms * 2^retry`,
    /// capped at `max_retry_backoff_ms`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let base = self.retry_backoff_ms.max(1);
        let ms = base
            .checked_shl(retry.min(63))
            .filter(|v| v >> retry.min(63) == base)
            .unwrap_or(u64::MAX)
            .min(self.max_retry_backoff_ms.max(base));
        Duration::from_millis(ms)
    }
}

/// A fresh request id: a UUIDv7 (time-ordered; the server uses its time to
/// reject requests older than its dedup window).
pub fn new_request_id() -> Uuid {
    Uuid::now_v7()
}

/// The wire form of a request id: the UUID's 16 bytes.
pub fn request_id_bytes(id: Uuid) -> Vec<u8> {
    id.as_bytes().to_vec()
}

/// The short name of a `ResultCode` value, e.g. `"OK"`, `"INSUFFICIENT_BALANCE"`;
/// `"UNKNOWN"` for a value this client does not know.
pub fn result_name(code: i32) -> &'static str {
    ResultCode::try_from(code)
        .map(|c| strip(c.as_str_name(), "RESULT_CODE_"))
        .unwrap_or("UNKNOWN")
}

/// Whether a `ResultCode` value is `RESULT_CODE_OK`.
pub fn is_ok(code: i32) -> bool {
    code == ResultCode::Ok as i32
}

/// The short name of a `BucketKind` value, e.g. `"BYTES"`.
pub fn bucket_kind_name(kind: i32) -> &'static str {
    BucketKind::try_from(kind)
        .map(|c| strip(c.as_str_name(), "BUCKET_KIND_"))
        .unwrap_or("UNKNOWN")
}

/// The short name of an `AccountState` value, e.g. `"ACTIVE"`.
pub fn account_state_name(state: i32) -> &'static str {
    AccountState::try_from(state)
        .map(|c| strip(c.as_str_name(), "ACCOUNT_STATE_"))
        .unwrap_or("UNKNOWN")
}

fn strip(name: &'static str, prefix: &str) -> &'static str {
    name.strip_prefix(prefix).unwrap_or(name)
}

/// The leader hint carried by a status, if any, as an endpoint URL (the
/// header holds `host:port`, as `ShardMap.leader_addr` does).
pub fn leader_hint(status: &Status) -> Option<String> {
    let v = status
        .metadata()
        .get(headers::LEADER_ADDR)?
        .to_str()
        .ok()?
        .trim();
    if v.is_empty() {
        None
    } else if v.contains("://") {
        Some(v.to_string())
    } else {
        Some(format!("http://{v}"))
    }
}

/// A bounded cache of channels to leader addresses, evicting the oldest entry.
struct ChannelCache {
    map: HashMap<String, Channel>,
    order: VecDeque<String>,
}

struct Shared {
    channel: Channel,
    endpoint: Option<String>,
    cache: Mutex<ChannelCache>,
    routes: Mutex<Routes>,
}

/// The cached shard map: each shard's leader address (`http://host:port`).
#[derive(Default)]
struct Routes {
    /// When the map was last asked for (`None` = never): asked once, then
    /// kept current by leader hints.
    fetched: Option<Instant>,
    version: u64,
    leaders: Vec<Option<String>>,
    /// Shards in `leaders` whose leader is unknown.
    unknown: usize,
}

impl Routes {
    fn set(&mut self, shard: usize, leader: Option<String>) {
        if let Some(slot) = self.leaders.get_mut(shard) {
            self.unknown = self.unknown + leader.is_none() as usize - slot.is_none() as usize;
            *slot = leader;
        }
    }
}

/// The account a request is on (`None`: not an account operation), so
/// [`Client::call`] can send it straight to that account's shard leader.
trait OnAccount {
    fn account(&self) -> Option<&str>;
}

macro_rules! on_account {
    ($($t:ty),* ; $($none:ty),*) => {
        $(impl OnAccount for $t {
            fn account(&self) -> Option<&str> {
                Some(&self.account_id)
            }
        })*
        $(impl OnAccount for $none {
            fn account(&self) -> Option<&str> {
                None
            }
        })*
    };
}

on_account!(
    ;
    StatusRequest, proto::ShardMapRequest, proto::AddNodeRequest, proto::NodeRequest,
    proto::RemoveNodeRequest, tonic_health::pb::HealthCheckRequest
);

/// How long after a shard-map fetch the client asks again, if the map is
/// missing or some shard's leader is unknown.
const SHARD_MAP_RETRY: Duration = Duration::from_secs(5);

// The calls, one per operation (they implement `OnAccount` for the
// `Charging` requests, from the operation table).
mod ops;

/// A client of the charging cluster. Cheap to clone; clones share channels.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    config: ClientConfig,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.shared.endpoint)
            .field("config", &self.config)
            .finish()
    }
}

fn endpoint(addr: &str, config: &ClientConfig) -> Result<Endpoint, Error> {
    let invalid = |source| Error::InvalidEndpoint {
        endpoint: addr.to_string(),
        source,
    };
    let ep = match &config.tls {
        // Leader hints and the shard map give `host:port`, made `http://`
        // above: over TLS every address is dialled as `https://`.
        Some(tls) => tls.endpoint(addr).map_err(invalid)?,
        None if addr.starts_with("https://") => {
            return Err(Error::InvalidArgument(format!(
            "{addr}: an https endpoint needs the cluster's CA (ClientConfig::tls, chargectl --ca)"
        )))
        }
        None => Endpoint::from_shared(addr.to_string()).map_err(invalid)?,
    };
    Ok(ep
        .connect_timeout(Duration::from_millis(config.connect_timeout_ms.max(1)))
        .tcp_nodelay(true))
}

impl Client {
    /// Connects to a node's public endpoint, e.g. `"http://127.0.0.1:50051"`, with
    /// the default [`ClientConfig`]. Fails if the connection cannot be made.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Client, Error> {
        Self::connect_with_config(endpoint, ClientConfig::default()).await
    }

    /// Connects with the given config.
    pub async fn connect_with_config(
        endpoint: impl Into<String>,
        config: ClientConfig,
    ) -> Result<Client, Error> {
        let addr = endpoint.into();
        let channel = self::endpoint(&addr, &config)?.connect().await?;
        Ok(Self::build(channel, Some(addr), config))
    }

    /// Like [`Client::connect_with_config`], but connects on first use. Must be
    /// called inside a tokio runtime.
    pub fn connect_lazy(
        endpoint: impl Into<String>,
        config: ClientConfig,
    ) -> Result<Client, Error> {
        let addr = endpoint.into();
        let channel = self::endpoint(&addr, &config)?.connect_lazy();
        Ok(Self::build(channel, Some(addr), config))
    }

    /// Wraps an existing channel, with the default config.
    pub fn from_channel(channel: Channel) -> Client {
        Self::build(channel, None, ClientConfig::default())
    }

    fn build(channel: Channel, endpoint: Option<String>, config: ClientConfig) -> Client {
        Client {
            shared: Arc::new(Shared {
                channel,
                endpoint,
                cache: Mutex::new(ChannelCache {
                    map: HashMap::new(),
                    order: VecDeque::new(),
                }),
                routes: Mutex::new(Routes::default()),
            }),
            config,
        }
    }

    /// The same client (sharing channels) with another config.
    pub fn with_config(mut self, config: ClientConfig) -> Client {
        self.config = config;
        self
    }

    /// The current config.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The endpoint this client was connected to, if it was given as an address.
    pub fn endpoint(&self) -> Option<&str> {
        self.shared.endpoint.as_deref()
    }

    /// The underlying channel to the configured endpoint, e.g. for the streaming call.
    pub fn channel(&self) -> Channel {
        self.shared.channel.clone()
    }

    /// Puts this client's bearer token (if any) on a request made by hand,
    /// e.g. the streaming call on [`Client::channel`].
    pub fn authorize<T>(&self, req: &mut tonic::Request<T>) {
        if let Some(t) = &self.config.token {
            t.apply(req.metadata_mut());
        }
    }

    /// A raw generated Charging client on the configured endpoint (no retries).
    pub fn charging(&self) -> ChargingClient<Channel> {
        ChargingClient::new(self.channel())
    }

    /// The channel for an attempt: the configured endpoint, or a cached channel to
    /// a hinted leader.
    fn channel_for(&self, target: Option<&str>) -> Channel {
        let Some(addr) = target else {
            return self.channel();
        };
        if self.shared.endpoint.as_deref() == Some(addr) {
            return self.channel();
        }
        let mut cache = self.shared.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ch) = cache.map.get(addr) {
            return ch.clone();
        }
        let Ok(ep) = endpoint(addr, &self.config) else {
            return self.channel();
        };
        let ch = ep.connect_lazy();
        while cache.map.len() >= CHANNEL_CACHE_CAPACITY {
            match cache.order.pop_front() {
                Some(old) => {
                    cache.map.remove(&old);
                }
                None => break,
            }
        }
        cache.map.insert(addr.to_string(), ch.clone());
        cache.order.push_back(addr.to_string());
        ch
    }

    /// Number of cached leader channels (for tests and diagnostics).
    pub fn cached_channels(&self) -> usize {
        self.shared
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.shared.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shard of `account` and its cached leader address, fetching the
    /// shard map first when it was never fetched, or when some leader is
    /// unknown and the last fetch is old (bounded by `deadline`). One fetch
    /// at a time: the check and the mark happen under one lock.
    async fn route(&self, account: &str, deadline: Instant) -> (Option<u32>, Option<String>) {
        if !self.config.direct_to_leader {
            return (None, None);
        }
        let due = {
            let mut r = self.routes();
            let due = match r.fetched {
                None => true,
                Some(t) => (r.leaders.is_empty() || r.unknown > 0) && t.elapsed() > SHARD_MAP_RETRY,
            };
            if due {
                r.fetched = Some(Instant::now());
            }
            due
        };
        if due {
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500));
            let mut req = tonic::Request::new(proto::ShardMapRequest {});
            req.set_timeout(wait);
            self.authorize(&mut req);
            if let Ok(Ok(m)) =
                tokio::time::timeout(wait, AdminClient::new(self.channel()).shard_map(req)).await
            {
                self.install_map(&m.into_inner());
            }
        }
        let r = self.routes();
        if r.leaders.is_empty() {
            return (None, None);
        }
        let shard = charging_proto::shard_of(account, r.leaders.len() as u32);
        (Some(shard), r.leaders[shard as usize].clone())
    }

    /// `url` with the scheme this client dials: `https://` under TLS.
    fn scheme_for(&self, url: String) -> String {
        match (&self.config.tls, url.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => url,
        }
    }

    fn install_map(&self, m: &proto::ShardMapResponse) {
        let mut leaders = vec![None; m.shards as usize];
        for route in &m.routes {
            if let Some(slot) = leaders.get_mut(route.shard_id as usize) {
                if !route.leader_addr.is_empty() {
                    *slot = Some(self.scheme_for(format!("http://{}", route.leader_addr)));
                }
            }
        }
        let mut r = self.routes();
        r.version = m.version;
        r.unknown = leaders.iter().filter(|l| l.is_none()).count();
        r.leaders = leaders;
    }

    /// Records what a call learnt about `shard`'s leader.
    fn learn(&self, shard: Option<u32>, leader: Option<&str>) {
        let Some(shard) = shard else { return };
        self.routes()
            .set(shard as usize, leader.map(str::to_string));
    }

    /// The shard map as cached by this client: its version and each shard's
    /// leader address (`None` = unknown; calls go to the configured endpoint).
    pub fn cached_shard_map(&self) -> (u64, Vec<Option<String>>) {
        let r = self.routes();
        (r.version, r.leaders.clone())
    }

    /// Fetches the shard map from the configured endpoint and caches it.
    pub async fn shard_map(&self) -> Result<proto::ShardMapResponse, Error> {
        let m = self
            .call("shard_map", proto::ShardMapRequest {}, |ch, r| async move {
                AdminClient::new(ch).shard_map(r).await
            })
            .await?;
        self.routes().fetched = Some(Instant::now());
        self.install_map(&m);
        Ok(m)
    }

    /// Runs one unary call with the retry policy. `msg` is cloned for each attempt,
    /// so its request id is the same on every attempt. Calls on an account
    /// go to its shard's leader when the shard map knows it.
    async fn call<Req, Resp, F, Fut>(&self, op: &'static str, msg: Req, f: F) -> Result<Resp, Error>
    where
        Req: Clone + OnAccount,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let deadline = Instant::now() + Duration::from_millis(self.config.deadline_ms);
        let (shard, mut target) = match msg.account() {
            Some(a) => self.route(a, deadline).await,
            None => (None, None),
        };
        let mut retries = 0u32;
        let mut backoffs = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(deadline_exceeded(op, self.config.deadline_ms).into());
            }
            let mut req = tonic::Request::new(msg.clone());
            req.set_timeout(remaining);
            self.authorize(&mut req);
            if target.is_some() {
                // Aimed at a leader: a node that no longer leads answers
                // UNAVAILABLE with a hint (which updates the cached map)
                // instead of forwarding on our behalf.
                req.metadata_mut().insert(
                    headers::FORWARDED,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
            }
            let attempt = f(self.channel_for(target.as_deref()), req);
            let status = match tokio::time::timeout(remaining, attempt).await {
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                Ok(Err(status)) => status,
                Err(_) => deadline_exceeded(op, self.config.deadline_ms),
            };
            let retryable = status.code() == Code::Unavailable || broke_off(&status);
            if !retryable || retries >= self.config.max_retries {
                return Err(status.into());
            }
            retries += 1;
            match leader_hint(&status).map(|h| self.scheme_for(h)) {
                // A new leader: go there at once.
                Some(hint) if target.as_deref() != Some(hint.as_str()) => {
                    self.learn(shard, Some(&hint));
                    target = Some(hint);
                    continue;
                }
                // Same leader again: back off, then retry it.
                Some(_) => {}
                // No hint (the leader is unknown or unreachable): back to the
                // configured endpoint, which forwards.
                None => {
                    if target.is_some() {
                        self.learn(shard, None);
                        target = None;
                        continue;
                    }
                }
            }
            let pause = jittered(self.config.backoff(backoffs));
            backoffs += 1;
            if pause >= deadline.saturating_duration_since(Instant::now()) {
                return Err(status.into());
            }
            tokio::time::sleep(pause).await;
        }
    }

    // ---- Charging service -------------------------------------------------------
}

/// A call that broke off with its connection (the server closed it as idle,
/// or a node went away): tonic reports `UNKNOWN`, or `CANCELLED` when the
/// connection closed as the call was sent, with the transport error as its
/// source. Retried as `UNAVAILABLE` is: the same request id makes a retry
/// safe whether or not the server saw the call.
fn broke_off(s: &Status) -> bool {
    matches!(s.code(), Code::Unknown | Code::Cancelled)
        && std::error::Error::source(s).is_some_and(|e| e.is::<tonic::transport::Error>())
}

/// A pause drawn uniformly from `[cap / 2, cap]` ("equal jitter").
fn jittered(cap: Duration) -> Duration {
    let half = cap / 2;
    let spread = (cap - half).as_micros() as u64;
    half + Duration::from_micros(rand::random_range(0..=spread))
}

fn deadline_exceeded(op: &str, deadline_ms: u64) -> Status {
    Status::deadline_exceeded(format!(
        "{op}: client deadline of {deadline_ms} ms exceeded"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_between_half_and_the_whole() {
        let cap = Duration::from_millis(80);
        let draws: Vec<Duration> = (0..200).map(|_| jittered(cap)).collect();
        assert!(draws.iter().all(|d| *d >= cap / 2 && *d <= cap));
        assert!(draws.iter().any(|d| *d != draws[0]), "not jittered");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let c = ClientConfig::default();
        let ms: Vec<u128> = (0..8).map(|i| c.backoff(i).as_millis()).collect();
        assert_eq!(ms, vec![5, 10, 20, 40, 50, 50, 50, 50]);
        assert_eq!(c.backoff(200).as_millis(), 50);
    }

    #[test]
    fn names() {
        assert_eq!(result_name(ResultCode::Ok as i32), "OK");
        assert_eq!(result_name(8), "INSUFFICIENT_BALANCE");
        assert_eq!(result_name(0), "UNSPECIFIED");
        assert_eq!(result_name(999), "UNKNOWN");
        assert_eq!(bucket_kind_name(BucketKind::Bytes as i32), "BYTES");
        assert_eq!(
            account_state_name(AccountState::Suspended as i32),
            "SUSPENDED"
        );
        assert!(is_ok(1) && !is_ok(8));
    }

    #[test]
    fn request_ids_are_v7_and_16_bytes() {
        let id = new_request_id();
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(request_id_bytes(id).len(), 16);
        assert_ne!(id, new_request_id());
    }

    #[test]
    fn hint_is_read_from_metadata() {
        let mut md = tonic::metadata::MetadataMap::new();
        md.insert(headers::LEADER_ADDR, "127.0.0.1:50052".parse().unwrap());
        let s = Status::with_metadata(Code::Unavailable, "not leader", md);
        assert_eq!(leader_hint(&s).as_deref(), Some("http://127.0.0.1:50052"));
        assert_eq!(leader_hint(&Status::unavailable("x")), None);
    }
}
