//! Every limit of a node, in one struct, validated once at start-up.
use crate::ids::NodeId;
use crate::ledger::Limits;
use std::collections::BTreeMap;
use std::time::Duration;

/// When the Raft log is made durable before an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// Acknowledged after fdatasync: survives power loss.
    #[default]
    Always,
    /// Acknowledged after write(2) to the OS: survives a process crash
    /// (kill -9), not a power loss.
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => Err(format!("fsync: `{other}` is not one of always, never")),
        }
    }
}

/// Addresses of one cluster member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddrs {
    /// Client-facing gRPC (Charging, Admin).
    pub public: String,
    /// Node-to-node Raft traffic.
    pub internal: String,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// Logical shards of the cluster, fixed at creation (default 16).
    pub shards: u32,
    /// Every member, this node included (RF = number of members today).
    pub members: BTreeMap<NodeId, PeerAddrs>,
    /// This node initializes the shard groups (only one node of a new cluster).
    pub bootstrap: bool,
    pub ledger: Limits,
    pub shard: ShardLimits,
    pub front_door: FrontDoorLimits,
    /// Virtual accounts active at once on this node, over all its shards.
    pub max_active_accounts: usize,
    /// How often the expiry sweeper looks for due reservations.
    pub sweep_period: Duration,
    /// Connect timeout of internal channels.
    pub connect_timeout: Duration,
    /// Seed of openraft's rng (election timeouts); mixed with node and shard ids.
    pub rng_seed: u64,
    /// Raft log entries since the last snapshot that trigger a new one (and
    /// past which a lagging follower is caught up by snapshot).
    pub snapshot_logs: u64,
    /// Raft heartbeat interval and election timeout range of every group:
    /// they decide how soon a dead leader is replaced (see [`RaftTimings`]).
    pub raft: RaftTimings,
    /// How often a node hands the leadership of shards it leads to their
    /// preferred node (leaders spread evenly); `None` = never.
    pub leader_balance_period: Option<Duration>,
    /// Internal transport: append pipeline window, snapshot chunking and pacing.
    pub transport: TransportOptions,
    /// Public address of a cluster node to join through (a node added to a
    /// running cluster); `None` for the initial members.
    pub join: Option<String>,
    /// The id of this node's data dir, registered in the cluster map once
    /// the node runs (see `ClusterMap::disks`); 0 = none (memory-only
    /// nodes, tests).
    pub disk_id: u64,
    /// Placement driver: concurrent moves, period, call deadlines.
    pub placement: PlacementOptions,
    /// TLS on both listeners and to peers; `None` = plaintext (only where
    /// the config says `insecure`, or `chargerd dev` on loopback).
    pub tls: Option<crate::tls::Tls>,
    /// Bearer tokens on the public API (off by default; see
    /// `crate::frontdoor::auth`).
    pub auth: AuthConfig,
    /// The public listener (Charging, Admin, health, reflection).
    pub public_listener: ListenerLimits,
    /// The internal listener (Raft traffic between nodes).
    pub internal_listener: ListenerLimits,
    /// Most nodes the cluster map may hold (`Admin/AddNode` refuses past it).
    pub nodes_max: usize,
    /// The Nchf_ConvergedCharging producer (served when the node is given
    /// an Nchf listener: `nchf_addr`).
    pub nchf: NchfOptions,
}

impl NodeConfig {
    pub fn new(node_id: NodeId, members: BTreeMap<NodeId, PeerAddrs>) -> Self {
        NodeConfig {
            node_id,
            shards: 16,
            members,
            bootstrap: false,
            ledger: Limits::default(),
            shard: ShardLimits::default(),
            front_door: FrontDoorLimits::default(),
            max_active_accounts: 1_000_000,
            sweep_period: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            rng_seed: 0x5eed,
            snapshot_logs: 20_000,
            raft: RaftTimings::default(),
            leader_balance_period: Some(Duration::from_secs(2)),
            transport: Default::default(),
            join: None,
            disk_id: 0,
            placement: Default::default(),
            tls: None,
            auth: AuthConfig::default(),
            public_listener: ListenerLimits::public(),
            internal_listener: ListenerLimits::internal(),
            nodes_max: 64,
            nchf: NchfOptions::default(),
        }
    }

    /// Checks every value once; the error names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        let check = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
        check(self.node_id != 0, "node_id: must be > 0")?;
        check(
            self.tls.as_ref().is_none_or(|t| t.node == self.node_id),
            "tls.cert: must name this node",
        )?;
        check(
            self.members.contains_key(&self.node_id),
            "members: must include this node",
        )?;
        check(
            (1..=4096).contains(&self.shards),
            "shards: must be 1..=4096",
        )?;
        check(
            self.shard.max_batch_events >= 1,
            "shard.max_batch_events: must be >= 1",
        )?;
        check(
            self.shard.max_inflight_batches >= 1,
            "shard.max_inflight_batches: must be >= 1",
        )?;
        check(
            (1..=self.shard.max_inflight_batches).contains(&self.shard.pipelined_batches_max),
            "shard.pipelined_batches_max: must be 1..=max_inflight_batches",
        )?;
        check(
            self.shard.max_waiters_per_account >= 1,
            "shard.max_waiters_per_account: must be >= 1",
        )?;
        check(
            self.front_door.max_inflight_requests >= 1,
            "front_door.max_inflight_requests: must be >= 1",
        )?;
        check(
            self.front_door.heavy_requests_inflight_max >= 1,
            "heavy_requests_inflight_max: must be >= 1",
        )?;
        check(
            (1..=4096).contains(&self.front_door.stream_batches_inflight_max),
            "stream_batches_inflight_max: must be 1..=4096",
        )?;
        check(
            (1024..=1 << 30).contains(&self.front_door.message_bytes_max),
            "message_bytes_max: must be 1 KiB..=1 GiB",
        )?;
        check(
            self.front_door.stream_bytes_inflight_max >= self.front_door.message_bytes_max,
            "stream_bytes_inflight_max: must be >= message_bytes_max",
        )?;
        check(
            self.front_door.request_bytes_inflight_max >= self.front_door.message_bytes_max,
            "request_bytes_inflight_max: must be >= message_bytes_max",
        )?;
        for (l, name) in [
            (&self.public_listener, "public"),
            (&self.internal_listener, "internal"),
        ] {
            check(
                l.connections_max >= 1,
                &format!("{name}_connections_max: must be >= 1"),
            )?;
            check(
                l.streams_per_connection_max >= 1,
                &format!("{name}_streams_per_connection_max: must be >= 1"),
            )?;
            check(
                l.resets_pending_max >= 1,
                "resets_pending_max: must be >= 1",
            )?;
            check(
                l.keepalive_interval.is_none_or(|d| !d.is_zero()),
                "keepalive_interval_ms: must be > 0",
            )?;
            check(
                l.idle_timeout.is_none_or(|d| !d.is_zero()),
                &format!("{name}_idle_timeout_ms: must be > 0 (or absent)"),
            )?;
        }
        check(
            self.nodes_max >= self.members.len().max(1),
            "nodes_max: must be >= the number of initial members",
        )?;
        check(
            self.nchf.threshold_percent < 100,
            "nchf.threshold_percent: must be 0..=99",
        )?;
        check(
            self.nchf.body_bytes_max >= 1024,
            "nchf.body_bytes_max: must be >= 1024",
        )?;
        check(
            !self.nchf.request_deadline.is_zero(),
            "nchf.request_deadline_ms: must be > 0",
        )?;
        check(
            self.nchf.connections_max >= 1 && self.nchf.streams_max >= 1,
            "nchf.connections_max, nchf.streams_max: must be >= 1",
        )?;
        check(
            !self.front_door.request_deadline.is_zero(),
            "front_door.request_deadline: must be > 0",
        )?;
        check(
            self.max_active_accounts >= 1,
            "max_active_accounts: must be >= 1",
        )?;
        check(
            self.ledger.dedup_window_ms > 2 * self.ledger.clock_bound_ms,
            "ledger.dedup_window_ms: must exceed twice the clock bound",
        )?;
        check(
            self.ledger.reservation_validity_ms >= 1000,
            "ledger.reservation_validity_ms: must be >= 1000",
        )?;
        check(!self.sweep_period.is_zero(), "sweep_period: must be > 0")?;
        check(self.snapshot_logs >= 10, "snapshot_logs: must be >= 10")?;
        let r = &self.raft;
        check(
            !r.heartbeat.is_zero()
                && r.heartbeat * 2 <= r.election_min
                && r.election_min < r.election_max,
            "raft timings: need 2 x raft_heartbeat_ms <= election_timeout_min_ms < election_timeout_max_ms",
        )?;
        check(
            (1..=64).contains(&self.placement.max_moves),
            "max_moves: must be 1..=64",
        )?;
        check(
            (1..=4096).contains(&self.transport.append_window),
            "append_window: must be 1..=4096",
        )?;
        check(
            (4096..=64 << 20).contains(&self.transport.snapshot_chunk_bytes),
            "snapshot_chunk_bytes: must be 4 KiB..=64 MiB",
        )?;
        check(
            self.transport.snapshot_max_bytes >= self.transport.snapshot_chunk_bytes as u64,
            "snapshot_max_bytes: must be >= snapshot_chunk_bytes",
        )?;
        self.auth.validate()?;
        Ok(())
    }
}

/// A public key (PEM file) that signs bearer tokens, or the node's own
/// private signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthKey {
    pub file: std::path::PathBuf,
    /// The JWT header `kid` this key answers to (`None`: any token).
    pub kid: Option<String>,
}

/// Bearer tokens (JWT) on the public API: who may call what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Off by default (`chargerd dev`, the in-process test cluster).
    pub enabled: bool,
    /// Public keys (ES256 P-256, or RSA for RS256 / RS512), PEM files.
    pub keys: Vec<AuthKey>,
    /// Accepted `aud` values; a token must name one of them.
    pub audience: Vec<String>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Scope value every token must carry (TS 29.510: the service name);
    /// empty = none required beyond the role scopes.
    pub scope: String,
    /// Slack on `exp` and `nbf` for clock skew.
    pub leeway: Duration,
    /// The node's own private key (PEM; its public key must be in `keys`):
    /// it signs the short-lived admin tokens of the node's own calls to
    /// other nodes (placement driver, join). Required when enabled.
    pub node_key: Option<AuthKey>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: false,
            keys: Vec::new(),
            audience: Vec::new(),
            issuer: None,
            scope: "nchf-convergedcharging".into(),
            leeway: Duration::from_secs(30),
            node_key: None,
        }
    }
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.keys.is_empty() {
            return Err("auth.keys: at least one public key is needed when auth is enabled".into());
        }
        if self.audience.iter().all(|a| a.is_empty()) {
            return Err("auth.audience: needed when auth is enabled".into());
        }
        if self.node_key.is_none() {
            return Err(
                "auth.node_key: needed when auth is enabled (it signs the node's \
                 own calls to other nodes: placement, join)"
                    .into(),
            );
        }
        if self.leeway > Duration::from_secs(300) {
            return Err("auth.leeway_s: must be <= 300".into());
        }
        if self.scope.contains(' ') {
            return Err("auth.scope: one scope value, without spaces".into());
        }
        Ok(())
    }
}

// ---- the limits of each floor, kept here so that config sits below them all

/// Front-door limits (from the node config).
#[derive(Debug, Clone)]
pub struct FrontDoorLimits {
    /// Requests in the node at once, every path (unary, stream operations,
    /// bulk, tariffs, status); past it `RESOURCE_EXHAUSTED` at once.
    pub max_inflight_requests: usize,
    /// Longest a request waits for its shard (also capped by the caller's deadline).
    pub request_deadline: Duration,
    /// Forwarding channels kept open (one per peer node).
    pub max_forward_peers: usize,
    /// Calls whose cost grows with their size or the cluster's (BulkCreate,
    /// SetTariff, Status with digests) in the node at once; each also takes
    /// an ordinary admission permit.
    pub heavy_requests_inflight_max: usize,
    /// Messages of one `Stream` call being worked on at once; past it the
    /// stream is not read (HTTP/2 flow control pushes back).
    pub stream_batches_inflight_max: usize,
    /// Bytes of stream messages being worked on at once, over all streams
    /// of the node; a message past it is refused (every operation
    /// `RESOURCE_EXHAUSTED`). One stream holds at most
    /// `stream_batches_inflight_max` x `message_bytes_max`.
    pub stream_bytes_inflight_max: usize,
    /// Largest request message on the public listener; larger is
    /// `RESOURCE_EXHAUSTED`.
    pub message_bytes_max: usize,
    /// Bytes of request bodies held by the node's calls other than `Stream`
    /// (which has `stream_bytes_inflight_max`), from their first byte until
    /// their response ends; a call whose body would go past it is refused
    /// `RESOURCE_EXHAUSTED`. This bounds what unary calls hold over every
    /// connection and stream together.
    pub request_bytes_inflight_max: usize,
}

impl Default for FrontDoorLimits {
    fn default() -> Self {
        FrontDoorLimits {
            max_inflight_requests: 10_000,
            request_deadline: Duration::from_secs(2),
            max_forward_peers: 64,
            heavy_requests_inflight_max: 8,
            stream_batches_inflight_max: 64,
            stream_bytes_inflight_max: 256 << 20,
            message_bytes_max: 4 << 20,
            request_bytes_inflight_max: 64 << 20,
        }
    }
}

/// What stands for the ledger's session `seq` in an Nchf message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NchfSequence {
    /// `invocationSequenceNumber` (TS 32.290: +1 per request of a session).
    #[default]
    Isn,
    /// `invocationTimeStamp` in unix ms: for consumers whose sequence number
    /// never moves (the free5GC SMF always sends 0).
    Timestamp,
}

/// The Nchf_ConvergedCharging producer's settings and limits.
#[derive(Debug, Clone)]
pub struct NchfOptions {
    pub sequence: NchfSequence,
    /// `QUOTA_THRESHOLD`: the consumer reports when this percentage of a
    /// grant is left (`volumeQuotaThreshold` etc.); 0 = no threshold.
    pub threshold_percent: u8,
    /// Largest request body; larger is 413.
    pub body_bytes_max: usize,
    /// Longest one Nchf request is worked on, internal retries (leader
    /// changes) included; past it 503 with `Retry-After`.
    pub request_deadline: Duration,
    /// Connections at once on the Nchf listener; more wait to be accepted.
    pub connections_max: usize,
    /// HTTP/2 streams per connection.
    pub streams_max: u32,
    /// Quota granted for a `requestedUnit` with no value in it (the CHF
    /// chooses): this many bytes.
    pub default_volume_bytes: u64,
}

impl Default for NchfOptions {
    fn default() -> Self {
        NchfOptions {
            sequence: NchfSequence::Isn,
            threshold_percent: 20,
            body_bytes_max: 256 << 10,
            request_deadline: Duration::from_secs(5),
            connections_max: 1024,
            streams_max: 256,
            default_volume_bytes: 1_000_000,
        }
    }
}

/// Limits of one gRPC listener (applied by [`crate::listener`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Connections open at once; one past it is closed at once
    /// (metric `charging_connections_refused_total`).
    pub connections_max: usize,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: a stream opened past it is
    /// refused (`REFUSED_STREAM`).
    pub streams_per_connection_max: u32,
    /// Streams a client may open and reset before the server accepts them
    /// (hyper's reset-flood limit, CVE-2023-44487); past it, GOAWAY.
    pub resets_pending_max: usize,
    /// Streams the server may reset for a client's protocol errors before
    /// GOAWAY (hyper's `max_local_error_reset_streams`, RUSTSEC-2024-0003).
    pub local_resets_max: usize,
    /// HTTP/2 PING interval; a peer that does not answer within
    /// `keepalive_timeout` is disconnected. `None`: no pings.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    /// A connection with no request in flight and none started for this
    /// long is closed. `None`: never.
    pub idle_timeout: Option<Duration>,
}

impl ListenerLimits {
    /// Clients: many connections, each with a bounded number of streams.
    pub fn public() -> Self {
        ListenerLimits {
            connections_max: 4096,
            streams_per_connection_max: 256,
            resets_pending_max: 20,
            local_resets_max: 1024,
            keepalive_interval: Some(Duration::from_secs(20)),
            keepalive_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(600)),
        }
    }

    /// Peers: one connection per peer for appends and votes of every group,
    /// another for snapshots; long-lived, so no idle timeout (keepalive
    /// finds a peer that vanished: its Append stream must not stay open).
    pub fn internal() -> Self {
        ListenerLimits {
            connections_max: 1024,
            streams_per_connection_max: 1024,
            resets_pending_max: 20,
            local_resets_max: 1024,
            keepalive_interval: Some(Duration::from_secs(5)),
            keepalive_timeout: Duration::from_secs(5),
            idle_timeout: None,
        }
    }
}

/// Limits of one shard actor (all from the node config).
#[derive(Debug, Clone)]
pub struct ShardLimits {
    /// Events per Raft entry.
    pub max_batch_events: usize,
    /// Replies waiting per account (bounds one hot account's queue).
    pub max_waiters_per_account: usize,
    /// Batches proposed but not yet applied.
    pub max_inflight_batches: usize,
    /// Batches proposed at once while others are in flight. Past this,
    /// decided events wait in the open batch until one is applied (or the
    /// batch is full), so a busy shard sends few, large entries: about half
    /// of a node's CPU per operation is paid per Raft entry (WAL record,
    /// append per follower, apply wakeups), not per event. An idle shard
    /// still proposes a lone event at once.
    pub pipelined_batches_max: usize,
}

impl Default for ShardLimits {
    fn default() -> Self {
        ShardLimits {
            max_batch_events: 512,
            max_waiters_per_account: 1024,
            max_inflight_batches: 64,
            pipelined_batches_max: 1,
        }
    }
}

/// Limits and pacing of the transport. Defaults suit a LAN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportOptions {
    /// Unanswered appends one group may have in flight to one peer. Bounds
    /// the memory a session holds on both sides; 64 matches openraft's own
    /// receive-side pipeline buffer.
    pub append_window: usize,
    /// Bytes of snapshot data per chunk message.
    pub snapshot_chunk_bytes: usize,
    /// Snapshot bytes per second this node sends, over all peers and groups;
    /// 0 = unlimited. Keeps snapshots from starving appends of bandwidth.
    pub snapshot_rate_bytes_per_s: u64,
    /// Largest snapshot the receiving side reassembles in memory.
    pub snapshot_max_bytes: u64,
    /// How long a snapshot transfer may go without progress (a chunk
    /// accepted, or the install reply once every chunk is sent).
    pub snapshot_progress_timeout: Duration,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            append_window: 64,
            snapshot_chunk_bytes: 1024 * 1024,
            snapshot_rate_bytes_per_s: 64 * 1024 * 1024,
            snapshot_max_bytes: 1024 * 1024 * 1024,
            snapshot_progress_timeout: Duration::from_secs(10),
        }
    }
}

/// Limits of the placement driver (from the node config).
#[derive(Debug, Clone)]
pub struct PlacementOptions {
    /// Shards whose membership may differ from the map at once (K).
    pub max_moves: usize,
    /// How often the driver and the reconciler look.
    pub period: Duration,
    /// Deadline of each call the driver makes to a node.
    pub call_timeout: Duration,
}

impl Default for PlacementOptions {
    fn default() -> Self {
        PlacementOptions {
            max_moves: 4,
            period: Duration::from_millis(500),
            call_timeout: Duration::from_secs(1),
        }
    }
}

/// Raft timing of every group on a node. A follower that hears nothing
/// from its leader for a random time in `[election_min, election_max)`
/// campaigns (after a pre-vote); the leader sends a heartbeat every
/// `heartbeat`. The defaults are for a LAN or one host: a killed leader is
/// replaced within about `election_max` plus one round trip. Raise them on
/// slow or lossy links, or when nodes may stall for longer (a stalled
/// leader is deposed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftTimings {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
}

impl RaftTimings {
    /// For several nodes in one process (`chargerd dev`, the in-process
    /// test clusters): they share its threads, so one busy node delays the
    /// others' heartbeats; twice the default, so that a busy moment is not
    /// taken for a dead leader.
    pub fn one_process() -> Self {
        RaftTimings {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(400),
            election_max: Duration::from_millis(800),
        }
    }
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            heartbeat: Duration::from_millis(50),
            election_min: Duration::from_millis(150),
            election_max: Duration::from_millis(300),
        }
    }
}
