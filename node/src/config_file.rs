//! `chargerd start --config node.toml`: the node's configuration file.
//!
//! Every key is optional except the node id, its addresses, the data dir and
//! the peers. Unknown keys are refused (a typo must not silently fall back to
//! a default), and every value is checked once: an error names the key.
//!
//! ```toml
//! node_id = 1
//! public_addr = "127.0.0.1:50051"     # Charging + Admin gRPC
//! internal_addr = "127.0.0.1:51051"   # node-to-node Raft
//! metrics_addr = "127.0.0.1:9101"     # Prometheus /metrics (optional)
//! data_dir = "/var/lib/chargerd"
//! shards = 16
//! replication_factor = 3
//! fsync = "always"                    # always | never
//!
//! # join = "127.0.0.1:50051"          # a node added to a running cluster:
//! #                                   # any member's public address; then
//! #                                   # peers lists only this node (or nothing)
//!
//! [[peers]]                           # every initial member, this node included
//! id = 1
//! public = "127.0.0.1:50051"
//! internal = "127.0.0.1:51051"
//!
//! [limits]                            # all optional; defaults shown by `chargerd config-example`
//! max_inflight_requests = 10000
//! ```
use crate::config::{FsyncPolicy, NodeConfig, PeerAddrs};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: u64,
    public_addr: String,
    internal_addr: String,
    #[serde(default)]
    metrics_addr: Option<String>,
    /// The admin listener (Admin service only, client certificates required
    /// under TLS); with it, the public listener refuses cluster changes
    /// from anyone but a node.
    #[serde(default)]
    admin_addr: Option<String>,
    /// The Nchf_ConvergedCharging producer (HTTP/1.1 + h2c); omit: not served.
    #[serde(default)]
    nchf_addr: Option<String>,
    #[serde(default)]
    nchf: Option<FileNchf>,
    data_dir: PathBuf,
    #[serde(default)]
    shards: Option<u32>,
    #[serde(default)]
    replication_factor: Option<usize>,
    #[serde(default)]
    fsync: Option<FsyncPolicy>,
    /// Free space (MiB) below which the node stops rather than fill its
    /// disk (see [`ProcessConfig::disk_free_min_bytes`]).
    #[serde(default)]
    disk_free_min_mb: Option<u64>,
    /// Seed of the election-timeout rng (mixed with node and shard ids).
    #[serde(default)]
    rng_seed: Option<u64>,
    /// Public address of a running cluster's node to join through.
    #[serde(default)]
    join: Option<String>,
    #[serde(default)]
    peers: Vec<FilePeer>,
    #[serde(default)]
    limits: FileLimits,
    /// Plaintext listeners and peer links, no TLS: refused unless set.
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    tls: Option<FileTls>,
    #[serde(default)]
    auth: Option<FileAuth>,
}

/// `[tls]`: the node's certificate and key, the cluster's CA.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// Whether public clients must present a certificate from the CA.
    #[serde(default)]
    client_certs: crate::tls::ClientCerts,
}

/// `[nchf]`: the Nchf producer's settings (see `crate::config::NchfOptions`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNchf {
    sequence: Option<crate::config::NchfSequence>,
    threshold_percent: Option<u8>,
    body_bytes_max: Option<usize>,
    request_deadline_ms: Option<u64>,
    connections_max: Option<usize>,
    streams_max: Option<u32>,
    default_volume_bytes: Option<u64>,
}

/// `[auth]`: bearer tokens on the public API (see `frontdoor::auth`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    #[serde(default)]
    enabled: bool,
    /// Public keys: `"file.pem"` or `{ file = "file.pem", kid = "k1" }`.
    #[serde(default)]
    keys: Vec<FileKey>,
    /// One audience, or a list.
    #[serde(default)]
    audience: Option<OneOrMany>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    leeway_s: Option<u64>,
    #[serde(default)]
    node_key: Option<FileKey>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileKey {
    Path(PathBuf),
    Table {
        file: PathBuf,
        #[serde(default)]
        kid: Option<String>,
    },
}

impl From<FileKey> for crate::config::AuthKey {
    fn from(k: FileKey) -> Self {
        match k {
            FileKey::Path(file) => crate::config::AuthKey { file, kid: None },
            FileKey::Table { file, kid } => crate::config::AuthKey { file, kid },
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePeer {
    id: u64,
    public: String,
    internal: String,
}

/// Every limit, all optional. Durations are in milliseconds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    // front door
    max_inflight_requests: Option<usize>,
    request_deadline_ms: Option<u64>,
    max_forward_peers: Option<usize>,
    // shard actors
    max_batch_events: Option<usize>,
    max_waiters_per_account: Option<usize>,
    max_inflight_batches: Option<usize>,
    pipelined_batches_max: Option<usize>,
    max_active_accounts: Option<usize>,
    sweep_period_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    snapshot_logs: Option<u64>,
    raft_heartbeat_ms: Option<u64>,
    election_timeout_min_ms: Option<u64>,
    election_timeout_max_ms: Option<u64>,
    // internal transport
    append_window: Option<usize>,
    snapshot_chunk_bytes: Option<usize>,
    snapshot_rate_bytes_per_s: Option<u64>,
    snapshot_max_bytes: Option<u64>,
    // ledger
    dedup_window_ms: Option<u64>,
    clock_bound_ms: Option<u64>,
    reservation_validity_ms: Option<u64>,
    expiry_grace_ms: Option<u64>,
    refund_horizon_ms: Option<u64>,
    tombstone_ttl_ms: Option<u64>,
    max_dedup_per_account: Option<u32>,
    max_charges_per_account: Option<u32>,
    max_sessions_per_account: Option<u32>,
    max_reservations_per_account: Option<u32>,
    max_buckets_per_account: Option<u32>,
    /// Placement driver: shards moving at once.
    max_moves: Option<usize>,
    // listeners (node/src/listener.rs) and admission
    public_connections_max: Option<usize>,
    public_streams_per_connection_max: Option<u32>,
    /// 0 = never.
    public_idle_timeout_ms: Option<u64>,
    /// Public listener's HTTP/2 PING interval and answer timeout.
    keepalive_interval_ms: Option<u64>,
    keepalive_timeout_ms: Option<u64>,
    internal_connections_max: Option<usize>,
    internal_streams_per_connection_max: Option<u32>,
    /// Both listeners.
    resets_pending_max: Option<usize>,
    heavy_requests_inflight_max: Option<usize>,
    stream_batches_inflight_max: Option<usize>,
    stream_bytes_inflight_max: Option<usize>,
    request_bytes_inflight_max: Option<usize>,
    message_bytes_max: Option<usize>,
    nodes_max: Option<usize>,
}

/// A node's configuration as read from its file: the [`NodeConfig`] plus
/// what only a process needs (listen addresses, data dir, fsync policy).
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    pub node: NodeConfig,
    pub public_addr: SocketAddr,
    pub internal_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub nchf_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub replication_factor: usize,
    /// Free space on the data dir's file system below which the node stops
    /// (health `NOT_SERVING`, exit non-zero) before the disk is full: a full
    /// disk would stop every group's writes mid-way, while a stop at the
    /// floor leaves room to restart and catch up once space is freed.
    pub disk_free_min_bytes: u64,
}

/// Default of `disk_free_min_mb`.
pub const DISK_FREE_MIN_MB: u64 = 256;

fn addr(key: &str, v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|e| format!("{key}: `{v}` is not a socket address (host:port): {e}"))
}

impl ProcessConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("config {}: {e}", path.display()))?;
        // Relative certificate paths are relative to the config file.
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse_in(&text, base).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Parses and validates config text; the error names the offending key.
    /// Relative certificate paths are relative to the working directory.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_in(text, Path::new("."))
    }

    fn parse_in(text: &str, base: &Path) -> Result<Self, String> {
        let f: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let public_addr = addr("public_addr", &f.public_addr)?;
        let internal_addr = addr("internal_addr", &f.internal_addr)?;
        let admin_addr = f
            .admin_addr
            .as_deref()
            .map(|m| addr("admin_addr", m))
            .transpose()?;
        let nchf_addr = f
            .nchf_addr
            .as_deref()
            .map(|m| addr("nchf_addr", m))
            .transpose()?;
        let metrics_addr = f
            .metrics_addr
            .as_deref()
            .map(|m| addr("metrics_addr", m))
            .transpose()?;
        if f.data_dir.as_os_str().is_empty() {
            return Err("data_dir: must not be empty".into());
        }
        if let Some(j) = &f.join {
            addr("join", j)?;
        }
        let mut members = BTreeMap::new();
        if f.join.is_some() && f.peers.is_empty() {
            members.insert(
                f.node_id,
                PeerAddrs {
                    public: f.public_addr.clone(),
                    internal: f.internal_addr.clone(),
                },
            );
        }
        for (i, p) in f.peers.iter().enumerate() {
            addr(&format!("peers[{i}].public"), &p.public)?;
            addr(&format!("peers[{i}].internal"), &p.internal)?;
            if p.id == 0 || p.id >= 1 << 31 {
                return Err(format!("peers[{i}].id: must be 1..2^31"));
            }
            let dup = members.insert(
                p.id,
                PeerAddrs {
                    public: p.public.clone(),
                    internal: p.internal.clone(),
                },
            );
            if dup.is_some() {
                return Err(format!("peers[{i}].id: {} listed twice", p.id));
            }
        }
        let me = members.get(&f.node_id).ok_or_else(|| {
            format!(
                "peers: must list this node (node_id = {}) with its addresses",
                f.node_id
            )
        })?;
        if me.public != f.public_addr || me.internal != f.internal_addr {
            return Err(format!(
                "peers: the entry of node {} must carry public_addr and internal_addr",
                f.node_id
            ));
        }
        let rf = f.replication_factor.unwrap_or(3);
        if rf == 0 || rf.is_multiple_of(2) {
            return Err(format!(
                "replication_factor: {rf} must be odd and >= 1 (a majority must survive a loss)"
            ));
        }
        if f.join.is_some() && members.len() != 1 {
            return Err(
                "join: a joining node lists only itself in peers (it learns the rest from the cluster)"
                    .into(),
            );
        }
        if f.join.is_none() && rf != members.len() {
            return Err(format!(
                "replication_factor: {rf} must equal the number of peers ({}); \
                 placement over more nodes comes with scale-out (`chargectl node add`)",
                members.len()
            ));
        }
        let mut node = NodeConfig::new(f.node_id, members);
        node.join = f.join.clone();
        if let Some(s) = f.shards {
            node.shards = s;
        }
        if let Some(s) = f.rng_seed {
            node.rng_seed = s;
        }
        let l = f.limits;
        let ms = Duration::from_millis;
        macro_rules! set {
            ($($src:ident => $dst:expr),* $(,)?) => {
                $(if let Some(v) = l.$src { $dst = v; })*
            };
        }
        set! {
            max_inflight_requests => node.front_door.max_inflight_requests,
            max_forward_peers => node.front_door.max_forward_peers,
            max_batch_events => node.shard.max_batch_events,
            max_waiters_per_account => node.shard.max_waiters_per_account,
            max_inflight_batches => node.shard.max_inflight_batches,
            pipelined_batches_max => node.shard.pipelined_batches_max,
            max_active_accounts => node.max_active_accounts,
            snapshot_logs => node.snapshot_logs,
            append_window => node.transport.append_window,
            snapshot_chunk_bytes => node.transport.snapshot_chunk_bytes,
            snapshot_rate_bytes_per_s => node.transport.snapshot_rate_bytes_per_s,
            snapshot_max_bytes => node.transport.snapshot_max_bytes,
            dedup_window_ms => node.ledger.dedup_window_ms,
            clock_bound_ms => node.ledger.clock_bound_ms,
            reservation_validity_ms => node.ledger.reservation_validity_ms,
            expiry_grace_ms => node.ledger.expiry_grace_ms,
            refund_horizon_ms => node.ledger.refund_horizon_ms,
            tombstone_ttl_ms => node.ledger.tombstone_ttl_ms,
            max_dedup_per_account => node.ledger.max_dedup_per_account,
            max_charges_per_account => node.ledger.max_charges_per_account,
            max_sessions_per_account => node.ledger.max_sessions_per_account,
            max_reservations_per_account => node.ledger.max_reservations_per_account,
            max_buckets_per_account => node.ledger.max_buckets_per_account,
            max_moves => node.placement.max_moves,
            public_connections_max => node.public_listener.connections_max,
            public_streams_per_connection_max => node.public_listener.streams_per_connection_max,
            internal_connections_max => node.internal_listener.connections_max,
            internal_streams_per_connection_max => node.internal_listener.streams_per_connection_max,
            heavy_requests_inflight_max => node.front_door.heavy_requests_inflight_max,
            stream_batches_inflight_max => node.front_door.stream_batches_inflight_max,
            stream_bytes_inflight_max => node.front_door.stream_bytes_inflight_max,
            request_bytes_inflight_max => node.front_door.request_bytes_inflight_max,
            message_bytes_max => node.front_door.message_bytes_max,
            nodes_max => node.nodes_max,
        }
        if let Some(v) = l.resets_pending_max {
            node.public_listener.resets_pending_max = v;
            node.internal_listener.resets_pending_max = v;
        }
        if let Some(v) = l.public_idle_timeout_ms {
            node.public_listener.idle_timeout = (v > 0).then(|| ms(v));
        }
        if let Some(v) = l.keepalive_interval_ms {
            node.public_listener.keepalive_interval = Some(ms(v));
        }
        if let Some(v) = l.keepalive_timeout_ms {
            node.public_listener.keepalive_timeout = ms(v);
        }
        if let Some(v) = l.request_deadline_ms {
            node.front_door.request_deadline = ms(v);
        }
        if let Some(v) = l.raft_heartbeat_ms {
            node.raft.heartbeat = ms(v);
        }
        if let Some(v) = l.election_timeout_min_ms {
            node.raft.election_min = ms(v);
        }
        if let Some(v) = l.election_timeout_max_ms {
            node.raft.election_max = ms(v);
        }
        if let Some(v) = l.sweep_period_ms {
            node.sweep_period = ms(v);
        }
        if let Some(v) = l.connect_timeout_ms {
            node.connect_timeout = ms(v);
        }
        if let Some(n) = &f.nchf {
            let o = &mut node.nchf;
            if let Some(v) = n.sequence {
                o.sequence = v;
            }
            if let Some(v) = n.threshold_percent {
                o.threshold_percent = v;
            }
            if let Some(v) = n.body_bytes_max {
                o.body_bytes_max = v;
            }
            if let Some(v) = n.request_deadline_ms {
                o.request_deadline = ms(v);
            }
            if let Some(v) = n.connections_max {
                o.connections_max = v;
            }
            if let Some(v) = n.streams_max {
                o.streams_max = v;
            }
            if let Some(v) = n.default_volume_bytes {
                o.default_volume_bytes = v;
            }
        }
        if let Some(a) = f.auth {
            let c = &mut node.auth;
            c.enabled = a.enabled;
            c.keys = a.keys.into_iter().map(Into::into).collect();
            c.audience = match a.audience {
                None => Vec::new(),
                Some(OneOrMany::One(s)) => vec![s],
                Some(OneOrMany::Many(v)) => v,
            };
            c.issuer = a.issuer;
            if let Some(s) = a.scope {
                c.scope = s;
            }
            if let Some(l) = a.leeway_s {
                c.leeway = Duration::from_secs(l);
            }
            c.node_key = a.node_key.map(Into::into);
            c.validate()?;
        }
        node.validate().map_err(|e| format!("limits.{e}"))?;
        node.tls = match (&f.tls, f.insecure) {
            (Some(t), false) => Some(
                crate::tls::Tls::load(
                    &base.join(&t.ca),
                    &base.join(&t.cert),
                    &base.join(&t.key),
                    f.node_id,
                    t.client_certs,
                )
                .map_err(|e| format!("tls: {e}"))?,
            ),
            (None, true) => None,
            (Some(_), true) => {
                return Err("insecure: set together with [tls]; choose one".into());
            }
            (None, false) => {
                return Err(
                    "tls: missing. A node serves TLS (a [tls] section with ca, cert \
                     and key; `chargerd certs` makes them) unless its config says \
                     `insecure = true`"
                        .into(),
                );
            }
        };
        Ok(ProcessConfig {
            node,
            public_addr,
            internal_addr,
            metrics_addr,
            admin_addr,
            nchf_addr,
            data_dir: f.data_dir,
            fsync: f.fsync.unwrap_or_default(),
            replication_factor: rf,
            disk_free_min_bytes: f.disk_free_min_mb.unwrap_or(DISK_FREE_MIN_MB) << 20,
        })
    }
}

/// A commented example config for node `id` of a local 3-node cluster.
pub fn example(id: u64) -> String {
    let d = NodeConfig::new(1, BTreeMap::new());
    let mut peers = String::new();
    for p in 1..=3 {
        peers.push_str(&format!(
            "[[peers]]\nid = {p}\npublic = \"127.0.0.{p}:50051\"\ninternal = \"127.0.0.{p}:51051\"\n\n"
        ));
    }
    format!(
        r#"# chargerd node configuration (chargerd start --config FILE)
node_id = {id}
public_addr = "127.0.0.{id}:50051"    # Charging + Admin gRPC, health, reflection
internal_addr = "127.0.0.{id}:51051"  # node-to-node Raft traffic
metrics_addr = "127.0.0.{id}:9100"    # Prometheus /metrics (omit to disable)
# admin_addr = "127.0.0.{id}:52051"   # Admin calls that change the cluster, client
#                                     # certificates required; then refused on public_addr
# nchf_addr = "127.0.0.{id}:8081"     # Nchf_ConvergedCharging (HTTP/1.1 + h2c, TS 32.291)
data_dir = "data/node{id}"            # Raft log (WAL) and snapshots
shards = {shards}                        # fixed when the cluster is created
replication_factor = 3
fsync = "always"                      # always: ack after fdatasync | never: ack after write(2)
disk_free_min_mb = {dfm}                # less free space on data_dir: the node stops (exit 1)
rng_seed = {seed}

# Every member of the cluster, this node included. On first start the lowest
# id initializes the shard groups (once: it checks the peers first).
{peers}# TLS, required unless the file says `insecure = true` (plaintext, for a
# closed test network only). `chargerd certs --dir certs --nodes 1,2,3` makes
# a local CA and node certificates; paths are relative to this file.
[tls]
ca = "certs/ca.pem"
cert = "certs/node{id}.pem"
key = "certs/node{id}.key"
client_certs = "optional"             # optional | required (clients present one from the CA)

# Every limit is optional; these are the defaults. Durations in ms.
[limits]
max_inflight_requests = {mir}
request_deadline_ms = {rd}
max_forward_peers = {mfp}
max_batch_events = {mbe}
max_waiters_per_account = {mwa}
max_inflight_batches = {mib}
pipelined_batches_max = {pbm}          # proposed at once; later events wait for one to apply
max_active_accounts = {maa}
sweep_period_ms = {sp}
connect_timeout_ms = {ct}
snapshot_logs = {sl}
raft_heartbeat_ms = {rhb}                # leader heartbeats
election_timeout_min_ms = {etn}          # a follower that hears no leader for a random
election_timeout_max_ms = {etx}          # time in [min, max) campaigns: failover takes about max
append_window = {aw}
snapshot_chunk_bytes = {scb}
snapshot_rate_bytes_per_s = {srb}   # 0 = unpaced
snapshot_max_bytes = {smb}
dedup_window_ms = {dw}
clock_bound_ms = {cb}
reservation_validity_ms = {rv}
expiry_grace_ms = {eg}
refund_horizon_ms = {rh}
tombstone_ttl_ms = {tt}
max_dedup_per_account = {mdd}
max_charges_per_account = {mca}        # refund index; the oldest charges drop out first
max_sessions_per_account = {msa}
max_reservations_per_account = {mra}
max_buckets_per_account = {mba}
max_moves = {mm}                      # shards the placement driver moves at once
nodes_max = {nm}                      # AddNode refuses past this many nodes in the map
# Listeners and admission (node/src/listener.rs)
public_connections_max = {pcm}        # one more is closed at once
public_streams_per_connection_max = {psm}  # HTTP/2 max concurrent streams
public_idle_timeout_ms = {pit}       # no request for this long: closed (0 = never)
keepalive_interval_ms = {kai}        # public listener's HTTP/2 PINGs
keepalive_timeout_ms = {kat}
internal_connections_max = {icm}
internal_streams_per_connection_max = {ism}
resets_pending_max = {rpm}              # HTTP/2 reset-flood limit (both listeners)
heavy_requests_inflight_max = {hri}      # BulkCreate, SetTariff, Status with digests
stream_batches_inflight_max = {sbi}     # per Stream call
stream_bytes_inflight_max = {sby}  # all Stream calls of the node
request_bytes_inflight_max = {rby} # request bodies of all other calls
message_bytes_max = {mbm}          # larger: RESOURCE_EXHAUSTED

# The Nchf producer (served when nchf_addr is set); these are the defaults.
# [nchf]
# sequence = "isn"                    # isn: invocationSequenceNumber is the session's
#                                     # seq | timestamp: invocationTimeStamp (ms) is
#                                     # (for SMFs that always send 0, as free5GC's)
# threshold_percent = 20              # QUOTA_THRESHOLD when this % of a grant is left (0: none)
# body_bytes_max = 262144             # larger: 413
# request_deadline_ms = 5000          # internal retries included; then 503 + Retry-After
# connections_max = 1024
# streams_max = 256                   # HTTP/2 streams per connection
# default_volume_bytes = 1000000      # granted for a requestedUnit with no value

# Bearer tokens (JWT) on the public API; off unless enabled. Calls to
# charging.v1.Charging and .Admin then need `authorization: Bearer <JWT>`
# signed by one of `keys` (ES256 / RS256 / RS512), with `aud` one of
# `audience`, `scope` holding `scope` and a role (charging:charging,
# charging:billing, charging:admin). Keys: `chargerd keygen`; tokens:
# `chargerd token`. Paths are relative to the working directory.
# [auth]
# enabled = true
# keys = ["jwt-public.pem"]           # or [{{ file = "jwt-public.pem", kid = "k1" }}]
# audience = "charging"               # or a list
# issuer = "my-nrf"                   # optional: required iss
# scope = "nchf-convergedcharging"    # the service scope every token carries
# leeway_s = 30                       # slack on exp / nbf
# node_key = "jwt-private.pem"        # signs this node's own calls (placement, join)
"#,
        shards = d.shards,
        seed = d.rng_seed,
        dfm = DISK_FREE_MIN_MB,
        mir = d.front_door.max_inflight_requests,
        rd = d.front_door.request_deadline.as_millis(),
        mfp = d.front_door.max_forward_peers,
        mbe = d.shard.max_batch_events,
        mwa = d.shard.max_waiters_per_account,
        mib = d.shard.max_inflight_batches,
        pbm = d.shard.pipelined_batches_max,
        maa = d.max_active_accounts,
        sp = d.sweep_period.as_millis(),
        ct = d.connect_timeout.as_millis(),
        sl = d.snapshot_logs,
        rhb = d.raft.heartbeat.as_millis(),
        etn = d.raft.election_min.as_millis(),
        etx = d.raft.election_max.as_millis(),
        aw = d.transport.append_window,
        scb = d.transport.snapshot_chunk_bytes,
        srb = d.transport.snapshot_rate_bytes_per_s,
        smb = d.transport.snapshot_max_bytes,
        dw = d.ledger.dedup_window_ms,
        cb = d.ledger.clock_bound_ms,
        rv = d.ledger.reservation_validity_ms,
        eg = d.ledger.expiry_grace_ms,
        rh = d.ledger.refund_horizon_ms,
        tt = d.ledger.tombstone_ttl_ms,
        mdd = d.ledger.max_dedup_per_account,
        mca = d.ledger.max_charges_per_account,
        msa = d.ledger.max_sessions_per_account,
        mra = d.ledger.max_reservations_per_account,
        mba = d.ledger.max_buckets_per_account,
        mm = d.placement.max_moves,
        nm = d.nodes_max,
        pcm = d.public_listener.connections_max,
        psm = d.public_listener.streams_per_connection_max,
        pit = d.public_listener.idle_timeout.map_or(0, |t| t.as_millis()),
        kai = d
            .public_listener
            .keepalive_interval
            .map_or(0, |t| t.as_millis()),
        kat = d.public_listener.keepalive_timeout.as_millis(),
        icm = d.internal_listener.connections_max,
        ism = d.internal_listener.streams_per_connection_max,
        rpm = d.public_listener.resets_pending_max,
        hri = d.front_door.heavy_requests_inflight_max,
        sbi = d.front_door.stream_batches_inflight_max,
        sby = d.front_door.stream_bytes_inflight_max,
        rby = d.front_door.request_bytes_inflight_max,
        mbm = d.front_door.message_bytes_max,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_matches_defaults() {
        // With the certificates `chargerd certs` makes beside it.
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).unwrap();
        let ca = crate::tls::CertAuthority::generate("test CA").unwrap();
        std::fs::write(certs.join("ca.pem"), &ca.cert_pem).unwrap();
        let n = ca.node_cert(2, &[]).unwrap();
        std::fs::write(certs.join("node2.pem"), n.cert_pem).unwrap();
        std::fs::write(certs.join("node2.key"), n.key_pem).unwrap();
        let file = dir.path().join("node2.toml");
        std::fs::write(&file, example(2)).unwrap();
        let c = ProcessConfig::load(&file).unwrap();
        assert_eq!(c.node.tls.as_ref().map(|t| t.node), Some(2));
        // The same file on node 3: the certificate names another node.
        std::fs::write(&file, example(2).replace("node_id = 2", "node_id = 3")).unwrap();
        assert!(ProcessConfig::load(&file).is_err());
        // No [tls] and no `insecure`: refused, saying how.
        let plain = insecure_example(2).replace("insecure = true\n", "");
        let e = ProcessConfig::parse(&plain).unwrap_err();
        assert!(e.contains("insecure = true"), "{e}");
        let c = ProcessConfig::parse(&insecure_example(2)).unwrap();
        assert!(c.node.tls.is_none());
        assert_eq!(c.node.node_id, 2);
        assert_eq!(c.node.shards, 16);
        assert_eq!(c.fsync, FsyncPolicy::Always);
        assert_eq!(c.public_addr.to_string(), "127.0.0.2:50051");
        assert_eq!(c.node.members.len(), 3);
        let d = NodeConfig::new(2, c.node.members.clone());
        assert_eq!(c.node.ledger, d.ledger);
        assert_eq!(
            c.node.front_door.request_deadline,
            d.front_door.request_deadline
        );
        assert_eq!(c.node.public_listener, d.public_listener);
        assert_eq!(c.node.internal_listener, d.internal_listener);
        assert_eq!(c.node.nodes_max, d.nodes_max);
        assert_eq!(
            c.node.front_door.stream_bytes_inflight_max,
            d.front_door.stream_bytes_inflight_max
        );
        assert_eq!(
            c.node.front_door.request_bytes_inflight_max,
            d.front_door.request_bytes_inflight_max
        );
    }

    /// The example with plaintext instead of its `[tls]` section.
    fn insecure_example(id: u64) -> String {
        let e = example(id);
        let start = e.find("[tls]").unwrap();
        let end = e.find("# Every limit").unwrap();
        let top = e.find("[[peers]]").unwrap();
        format!(
            "insecure = true\n{}{}{}",
            &e[..top],
            &e[top..start],
            &e[end..]
        )
    }

    #[test]
    fn auth_section_is_read() {
        let text = insecure_example(1).replace(
            "# [auth]\n# enabled = true\n# keys = [\"jwt-public.pem\"]           # or [{ file = \"jwt-public.pem\", kid = \"k1\" }]\n# audience = \"charging\"               # or a list\n# issuer = \"my-nrf\"",
            "[auth]\nenabled = true\nkeys = [\"a.pem\", { file = \"b.pem\", kid = \"k2\" }]\naudience = [\"charging\", \"chf\"]\nissuer = \"my-nrf\"\nnode_key = \"n.pem\"",
        );
        let a = ProcessConfig::parse(&text).unwrap().node.auth;
        assert!(a.enabled);
        assert_eq!(a.keys.len(), 2);
        assert_eq!(a.keys[1].kid.as_deref(), Some("k2"));
        assert_eq!(a.audience, vec!["charging".to_string(), "chf".into()]);
        assert_eq!(a.issuer.as_deref(), Some("my-nrf"));
        assert_eq!(a.scope, "nchf-convergedcharging");
        assert_eq!(a.node_key.unwrap().file, PathBuf::from("n.pem"));
        // Off by default.
        assert!(
            !ProcessConfig::parse(&insecure_example(1))
                .unwrap()
                .node
                .auth
                .enabled
        );
    }

    fn err_of(edit: impl Fn(String) -> String) -> String {
        ProcessConfig::parse(&edit(insecure_example(1))).unwrap_err()
    }

    #[test]
    fn bad_values_are_named() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "fsync = \"always\"",
                "fsync = \"sometimes\"",
                "expected `always` or `never`",
            ),
            ("shards = 16", "shards = 0", "shards"),
            (
                "replication_factor = 3",
                "replication_factor = 2",
                "replication_factor",
            ),
            (
                "public_addr = \"127.0.0.1:50051\"",
                "public_addr = \"nowhere\"",
                "public_addr",
            ),
            (
                "max_batch_events = 512",
                "max_batch_events = 0",
                "max_batch_events",
            ),
            (
                "clock_bound_ms = 250",
                "clock_bound_ms = 600000",
                "dedup_window_ms",
            ),
            ("node_id = 1", "node_id = 9", "peers"),
            (
                "max_buckets_per_account",
                "max_bucketz_per_account",
                "max_bucketz_per_account",
            ),
            (
                "# [auth]\n# enabled = true",
                "[auth]\nenabled = true",
                "auth.keys",
            ),
            (
                "# [auth]\n# enabled = true\n# keys = [\"jwt-public.pem\"]",
                "[auth]\nenabled = true\nkeys = [\"jwt-public.pem\"]",
                "auth.audience",
            ),
            (
                "public_connections_max = 4096",
                "public_connections_max = 0",
                "public_connections_max",
            ),
            (
                "message_bytes_max = 4194304",
                "message_bytes_max = 10",
                "message_bytes_max",
            ),
            ("nodes_max = 64", "nodes_max = 1", "nodes_max"),
        ];
        for (from, to, want) in cases {
            let e = err_of(|s| {
                assert!(s.contains(from), "example lacks {from}");
                s.replacen(from, to, 1)
            });
            assert!(e.contains(want), "{to}: error `{e}` does not name {want}");
        }
    }
}
