//! Assembles one node: its shard groups (Raft + state machine + shard actor),
//! the expiry sweeper, the internal Raft service and the public front door.
//!
//! Edges are injected (DESIGN §4b): listeners, the peer connector, the clock
//! and the log engine come from the caller, so the same code runs in
//! production, in tests on port 0, and in the simulator.
use crate::clock::SharedClock;
use crate::config::NodeConfig;
use crate::control::admin::AdminService;
use crate::control::meta::{ClusterMap, META_GROUP};
use crate::control::replicas::ReplicaSet;
use crate::frontdoor::{FrontDoor, ShardHandle};
pub use crate::ids::INITIAL_INCARNATION;
use crate::raft::log_store::LogEngine;
use crate::raft::network::{
    Connector, GroupNetworkFactory, Peers, TransportOptions, MAX_INTERNAL_MESSAGE_BYTES,
};
use crate::raft::service::{Groups, RaftService};
use crate::raft::state_machine::ShardStore;
use crate::raft::{raft_config, replica_id, NodeId, Raft, ShardId};
use crate::shard::supervisor::{self, SupMsg, Supervisor, SupervisorArgs};
use crate::shard::sweeper::SweeperArgs;
use crate::shard::Hosted;
use charging_proto::internal::raft_internal_server::RaftInternalServer;
use charging_proto::v1::admin_server::AdminServer;
use charging_proto::v1::charging_server::ChargingServer;
use openraft::BasicNode;
use ractor::{Actor, ActorRef};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The services the public port serves, as reflection lists them.
pub const PUBLIC_SERVICES: &[&str] = &[
    "charging.v1.Charging",
    "charging.v1.Admin",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// What a node's servers accept connections from: a stream of connections.
/// Production and tests pass `TcpListenerStream`s (see [`tcp_incoming`]); the
/// simulator passes its own (DESIGN §4b).
pub trait Incoming:
    futures::Stream<Item = Result<Self::Io, std::io::Error>> + Send + Unpin + 'static
{
    type Io: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static;
}

impl<S, IO> Incoming for S
where
    S: futures::Stream<Item = Result<IO, std::io::Error>> + Send + Unpin + 'static,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
{
    type Io = IO;
}

/// Incoming connections of a bound TCP listener, with `TCP_NODELAY` set on
/// each: tonic's `Server::tcp_nodelay` only applies to listeners it binds
/// itself, and without it a small reply written behind another unacknowledged
/// one waits for the peer's delayed ACK (40 ms on Linux).
pub fn tcp_incoming(
    l: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Send + Unpin + 'static {
    use futures::StreamExt;
    fn nodelay(
        s: std::io::Result<tokio::net::TcpStream>,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let s = s?;
        s.set_nodelay(true)?;
        Ok(s)
    }
    tokio_stream::wrappers::TcpListenerStream::new(l).map(nodelay as fn(_) -> _)
}

/// Injected edges of a node.
pub struct Edges<L: LogEngine, I: Incoming> {
    pub public: I,
    pub internal: I,
    /// The admin listener (the Admin service only, client certificates
    /// required under TLS). With one, the public listener refuses the calls
    /// that change the cluster from anyone but a node.
    pub admin: Option<I>,
    /// The Nchf_ConvergedCharging listener (HTTP/1.1 and h2c), if served.
    pub nchf: Option<tokio::net::TcpListener>,
    pub connector: Box<dyn Connector>,
    pub clock: SharedClock,
    /// Opens the log engine of a replica incarnation `(shard, incarnation)`
    /// (the caller keeps what it returns to survive a restart).
    pub logs: crate::control::replicas::LogFactory<L>,
    /// Replicas to host at start, `(shard, incarnation)`. `None`: every
    /// shard at [`INITIAL_INCARNATION`], or none when joining.
    pub replicas: Option<Vec<(ShardId, u32)>>,
    /// File that keeps the hosted replica list across restarts.
    pub replicas_file: Option<std::path::PathBuf>,
    /// Log engine of the metadata group ([`crate::control::meta::META_GROUP`]).
    pub meta_log: L,
    /// Folder of the shards' snapshot files; `None` keeps snapshots in memory.
    pub snapshot_dir: Option<std::path::PathBuf>,
}

/// A running node. Dropping it does not stop it: call [`NodeHandle::shutdown`].
pub struct NodeHandle {
    pub id: NodeId,
    /// The metadata group's replica on this node.
    pub meta: Raft,
    pub front_door: Arc<FrontDoor>,
    /// The shard replicas this node hosts now (changes under scale-out).
    pub hosted: Hosted,
    /// Where the Nchf producer listens, if it does.
    pub nchf_addr: Option<std::net::SocketAddr>,
    shutdown: Arc<watch::Sender<bool>>,
    tasks: Vec<JoinHandle<()>>,
    /// Parent of the shard actors and the sweeper (see [`supervisor`]).
    supervisor: ActorRef<SupMsg>,
    /// Why the node stopped itself, once it has (see [`NodeHandle::failed`]).
    failure: watch::Receiver<Option<String>>,
    /// Node-wide count of active virtual accounts.
    active_accounts: Arc<AtomicUsize>,
    isolated: Arc<AtomicBool>,
    transport: Arc<Peers>,
    /// The public health service's state (`grpc.health.v1`).
    health: tonic_health::server::HealthReporter,
}

impl NodeHandle {
    /// Health answers `NOT_SERVING` from now on: the node is about to stop
    /// (its storage failed), so load balancers and orchestrators move away.
    pub async fn set_not_serving(&self) {
        self.health
            .set_not_serving::<ChargingServer<crate::frontdoor::ChargingServiceHandle>>()
            .await;
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    }

    /// This node's replica of `shard`. Panics if it hosts none (tests).
    pub fn raft(&self, shard: ShardId) -> Raft {
        self.replica(shard)
            .unwrap_or_else(|| panic!("node {} hosts no replica of shard {shard}", self.id))
            .raft
    }

    /// This node's replica of `shard`, if it hosts one.
    pub fn replica(&self, shard: ShardId) -> Option<ShardHandle> {
        self.hosted.get(&shard).map(|h| h.clone())
    }

    /// Every hosted replica, by shard.
    pub fn shards(&self) -> Vec<ShardHandle> {
        let mut v: Vec<ShardHandle> = self.hosted.iter().map(|h| h.clone()).collect();
        v.sort_by_key(|h| h.shard);
        v
    }

    /// Fault injection: cut (or restore) all of this node's Raft traffic,
    /// both directions. Client traffic still reaches its front door.
    pub fn set_isolated(&self, on: bool) {
        self.isolated.store(on, Ordering::SeqCst);
    }

    /// The client side of this node's internal transport: its counters, and
    /// its options (which may be changed while running).
    pub fn transport(&self) -> &Arc<Peers> {
        &self.transport
    }

    /// Virtual accounts active on this node now (all shards).
    pub fn active_accounts(&self) -> usize {
        self.active_accounts.load(Ordering::Relaxed)
    }

    /// Why this node stopped itself, if it has: a child of its supervisor
    /// failed past its restart budget (or the supervisor itself died). The
    /// node is then already stopping (see [`start`]); the owner should still
    /// call [`NodeHandle::shutdown`] and report the error.
    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// Waits until this node stops itself (see [`NodeHandle::failure`]) and
    /// returns why. Pending for as long as the node runs well.
    pub async fn failed(&self) -> String {
        let mut rx = self.failure.clone();
        // An error: the supervisor's state is gone (it died, or the node
        // was shut down; only the former is ever waited on here).
        let _ = rx.wait_for(|f| f.is_some()).await;
        let why = rx.borrow().clone();
        why.unwrap_or_else(|| SUPERVISOR_GONE.to_string())
    }

    /// Stops the node abruptly, like `kill -9` of a process: listeners and
    /// connections drop at once, Raft groups stop, nothing is flushed.
    pub async fn kill(self) {
        for t in &self.tasks {
            t.abort();
        }
        stop_replicas(&self.hosted, &self.supervisor).await;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.meta.shutdown()).await;
    }

    /// Stops servers, actors and Raft groups; waits for the servers to close.
    pub async fn shutdown(self) {
        // Refuse Raft traffic first (as isolation does): a peer's append
        // reaching a group whose core has stopped makes openraft log an
        // ERROR, and a clean shutdown must log none.
        self.isolated.store(true, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        stop_replicas(&self.hosted, &self.supervisor).await;
        for t in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
    }
}

const SUPERVISOR_GONE: &str = "the node's supervisor stopped";

/// Stops the shard actors on purpose (the supervisor forgets each, never
/// restarts it), then the supervisor, which ends its remaining children with
/// it (the sweeper, and an actor restarted meanwhile), then the Raft groups.
async fn stop_replicas(hosted: &Hosted, supervisor: &ActorRef<SupMsg>) {
    let shards: Vec<ShardHandle> = hosted.iter().map(|h| h.clone()).collect();
    for h in &shards {
        h.actor.stop(None);
    }
    supervisor.stop(None);
    for h in shards {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), h.raft.shutdown()).await;
    }
}

/// Starts a node. With `config.bootstrap`, initializes every shard group with
/// all members as voters (a new cluster; harmless if already initialized).
pub async fn start<L: LogEngine, I: Incoming>(
    config: NodeConfig,
    edges: Edges<L, I>,
) -> anyhow::Result<NodeHandle> {
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    let me = config.node_id;
    // Bearer tokens on the public port (`auth`); off: every call passes.
    // Keys are read before anything starts, so a bad one stops nothing.
    let (verifier, credential) = if config.auth.enabled {
        let v = crate::frontdoor::auth::Verifier::new(&config.auth, edges.clock.clone());
        let c = crate::frontdoor::auth::NodeCredential::new(me, &config.auth, edges.clock.clone());
        (
            Some(Arc::new(v.map_err(|e| anyhow::anyhow!(e))?)),
            Some(Arc::new(c.map_err(|e| anyhow::anyhow!(e))?)),
        )
    } else {
        (None, None)
    };
    let transport: TransportOptions = config.transport.clone();
    let max_snapshot_bytes = transport.snapshot_max_bytes;
    let peers = Peers::new(me, edges.connector, edges.clock.clone(), transport);
    let groups: Groups = Arc::new(crate::maps::DashMap::default());
    let raft_cfg = Arc::new(raft_config("charging", config.snapshot_logs, config.raft).validate()?);
    let isolated = Arc::new(AtomicBool::new(false));
    peers.set_isolation(isolated.clone());
    let hosted: Hosted = Arc::new(crate::maps::DashMap::default());
    let (fatal, failure) = watch::channel(None);
    let fatal_tx = fatal.clone();
    // The clock bound (DESIGN §3), measured against the peers.
    let clock_check = Arc::new(crate::raft::clock_check::ClockCheck::new(
        config.ledger.clock_bound_ms,
    ));
    // A snapshot file that cannot be written (full disk, I/O error) stops
    // the node, as a WAL write error does: its disk fails the rest next.
    let write_error: crate::raft::state_machine::WriteErrorSink = {
        let fatal = fatal.clone();
        Arc::new(move |why: String| {
            tracing::error!(node = me, error = %why, "storage failed");
            fatal.send_if_modified(|f| {
                let first = f.is_none();
                if first {
                    *f = Some(format!("storage failed: {why}"));
                }
                first
            });
        })
    };
    let (supervisor, _) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            node: me,
            hosted: hosted.clone(),
            fatal,
        },
    )
    .await?;
    let replicas = Arc::new(
        ReplicaSet::new(
            config.clone(),
            raft_cfg.clone(),
            peers.clone(),
            groups.clone(),
            hosted.clone(),
            supervisor.clone(),
            edges.clock.clone(),
            edges.logs,
            edges.snapshot_dir.clone(),
            edges.replicas_file,
        )
        .on_write_error(write_error.clone())
        .with_clock_check(clock_check.clone()),
    );
    // A joining node with no replica list is new (or its data was lost): the
    // cluster must confirm it holds nothing before it hosts anything.
    let fresh_joiner = config.join.is_some() && edges.replicas.is_none();
    let initial: Vec<(ShardId, u32)> = match edges.replicas {
        Some(r) => r,
        None if config.join.is_some() => Vec::new(),
        None => (0..config.shards)
            .map(|s| (s, INITIAL_INCARNATION))
            .collect(),
    };
    for (shard, incarnation) in initial {
        replicas.create(shard, incarnation).await?;
    }
    supervisor::start_sweeper(
        &supervisor,
        SweeperArgs {
            hosted: hosted.clone(),
            clock: edges.clock.clone(),
            period: config.sweep_period,
        },
    )
    .await?;

    let public_addrs: BTreeMap<NodeId, String> = config
        .members
        .iter()
        .map(|(id, a)| (*id, a.public.clone()))
        .collect();
    let internal_addrs: BTreeMap<NodeId, String> = config
        .members
        .iter()
        .map(|(id, a)| (*id, a.internal.clone()))
        .collect();
    // The metadata group: the replicated cluster map, on every initial member.
    let meta_store = match &edges.snapshot_dir {
        Some(dir) => ShardStore::open(config.ledger.clone(), dir.join("meta.snap"))?
            .on_write_error(write_error.clone()),
        None => ShardStore::new(config.ledger.clone()),
    };
    let meta_member = replica_id(me, INITIAL_INCARNATION);
    let meta_raft = crate::raft::Runtime::scope(
        crate::raft::group_seed(config.rng_seed, me, META_GROUP),
        Raft::new(
            meta_member,
            raft_cfg.clone(),
            GroupNetworkFactory {
                shard: META_GROUP,
                peers: peers.clone(),
            },
            edges.meta_log,
            meta_store.clone(),
        ),
    )
    .await?;
    if !fresh_joiner {
        groups.insert(META_GROUP, (meta_member, meta_raft.clone()));
    }
    let front_door = FrontDoor::new(
        me,
        config.shards,
        hosted.clone(),
        replicas.clone(),
        public_addrs,
        internal_addrs,
        (meta_raft.clone(), meta_store.clone()),
        config.front_door.clone(),
        edges.clock.clone(),
    );
    let (shutdown, rx) = watch::channel(false);
    let shutdown = Arc::new(shutdown);
    let mut tasks = Vec::new();

    // A child failed past its restart budget (or the supervisor died): the
    // node stops itself through its own stop path, so its shards' other
    // replicas elect leaders, rather than run on as a half-node. The owner
    // learns why from `NodeHandle::failed` (chargerd exits non-zero).
    {
        let (mut failure, mut stop) = (failure.clone(), rx.clone());
        let (shutdown, hosted, supervisor, meta) = (
            shutdown.clone(),
            hosted.clone(),
            supervisor.clone(),
            meta_raft.clone(),
        );
        tasks.push(tokio::spawn(async move {
            tokio::select! {
                _ = failure.wait_for(|f| f.is_some()) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if *stop.borrow() {
                return;
            }
            let why = failure
                .borrow()
                .clone()
                .unwrap_or_else(|| SUPERVISOR_GONE.to_string());
            tracing::error!(node = me, reason = %why, "node stopping: unrecoverable failure");
            let _ = shutdown.send(true);
            stop_replicas(&hosted, &supervisor).await;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), meta.shutdown()).await;
        }));
    }

    tasks.push(tokio::spawn(crate::control::meta::run_writer(
        meta_raft.clone(),
        meta_store.clone(),
        ClusterMap::initial(&config, INITIAL_INCARNATION),
        edges.clock.clone(),
        rx.clone(),
    )));

    if let Some(c) = &credential {
        front_door.set_own_credential(c.clone());
    }
    peers.set_heard(front_door.heard.clone());
    front_door.set_transport(peers.clone());
    // Internal server: Raft traffic of every group.
    let raft_svc = RaftInternalServer::new(RaftService {
        groups: groups.clone(),
        heard: front_door.heard.clone(),
        clock: edges.clock.clone(),
        isolated: isolated.clone(),
        max_snapshot_bytes,
        check_peers: config.tls.is_some(),
    })
    .max_decoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_INTERNAL_MESSAGE_BYTES);
    let mut rx1 = rx.clone();
    // Keepalive: a peer that vanished must not leave its Append stream (and
    // the sessions on it) open here. Limits: `config.internal_listener`.
    let internal = crate::listener::capped(
        edges.internal,
        &config.internal_listener,
        "internal",
        me,
        Default::default(),
    );
    // TLS: mutual on the internal listener, always; on the public one a
    // client certificate is taken as configured (see `crate::tls`).
    let mut internal_server = crate::listener::server(&config.internal_listener);
    if let Some(t) = &config.tls {
        internal_server = internal_server.tls_config(t.internal_server())?;
    }
    tasks.push(tokio::spawn(async move {
        let mut server = internal_server;
        let r = server
            .add_service(raft_svc)
            .serve_with_incoming_shutdown(internal, async move {
                let _ = rx1.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "internal server failed");
        }
    }));

    // Public server: Charging, Admin, health, reflection.
    let (health_reporter, health_svc) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ChargingServer<crate::frontdoor::ChargingServiceHandle>>()
        .await;
    // Reflection in both versions (grpcurl speaks v1; Python's
    // grpcio-reflection and older tools v1alpha), listing only the public
    // services: the Raft transport's descriptors share the file set but
    // are not served on this port.
    let reflection_builder = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(charging_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for name in PUBLIC_SERVICES {
            b = b.with_service_name(*name);
        }
        b
    };
    let reflection = reflection_builder().build_v1()?;
    let reflection_v1alpha = reflection_builder().build_v1alpha()?;
    let max_message = config.front_door.message_bytes_max;
    let charging = ChargingServer::new(crate::frontdoor::ChargingServiceHandle(front_door.clone()))
        .max_decoding_message_size(max_message);
    let admin = AdminServer::new(AdminService(front_door.clone(), config.nodes_max))
        .max_decoding_message_size(max_message);
    let mut rx2 = rx.clone();
    // Limits: `config.public_listener`; malformed input gets the statuses
    // the API promises (see `listener::MalformedLayer`).
    let conns = crate::listener::Connections::default();
    // One budget of request bytes for the node's public and admin calls.
    let budget = crate::listener::RequestBytes::new(config.front_door.request_bytes_inflight_max);
    let public = crate::listener::capped(
        edges.public,
        &config.public_listener,
        "public",
        me,
        conns.clone(),
    );
    let mut public_server = crate::listener::server(&config.public_listener);
    if let Some(t) = &config.tls {
        public_server = public_server.tls_config(t.public_server())?;
    }
    let strip_internal = config.tls.is_some();
    // Cluster changes are an operator's: on the admin listener when there
    // is one. Without one they stay on the public port only for admin-role
    // tokens; a TLS node with neither serves them to nodes only (no caller
    // could prove it is an operator). Plaintext is `insecure = true` or dev.
    let admin_listener = edges.admin.is_some() || (config.tls.is_some() && verifier.is_none());
    let public_server = public_server
        .layer(crate::listener::MalformedLayer {
            conns,
            budget: budget.clone(),
        })
        .layer(crate::frontdoor::auth::AuthLayer(verifier.clone()))
        .layer(crate::tls::PeerPolicy {
            strip_internal,
            changes_from_nodes_only: admin_listener,
        });
    tasks.push(tokio::spawn(async move {
        let mut server = public_server;
        let r = server
            .add_service(health_svc)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(charging)
            .add_service(admin)
            .serve_with_incoming_shutdown(public, async move {
                let _ = rx2.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "public server failed");
        }
    }));

    // The Nchf producer: its own listener, the same front door (and the
    // same token verifier) as gRPC.
    let nchf_addr = match edges.nchf {
        Some(l) => {
            let addr = l.local_addr()?;
            let tls = match &config.tls {
                Some(t) => Some(
                    t.http_server()
                        .map_err(|e| anyhow::anyhow!("nchf tls: {e}"))?,
                ),
                None => None,
            };
            let nchf = crate::nchf::Nchf::new(
                front_door.clone(),
                config.nchf.clone(),
                verifier.clone(),
                addr.to_string(),
                tls.is_some(),
            );
            tasks.push(tokio::spawn(crate::nchf::serve(l, nchf, tls, rx.clone())));
            Some(addr)
        }
        None => None,
    };

    // Admin listener: the Admin service and health only, client
    // certificates required under TLS, tokens as on the public port.
    if let Some(incoming) = edges.admin {
        let conns = crate::listener::Connections::default();
        let incoming = crate::listener::capped(
            incoming,
            &config.public_listener,
            "admin",
            me,
            conns.clone(),
        );
        let mut admin_server = crate::listener::server(&config.public_listener);
        if let Some(t) = &config.tls {
            admin_server = admin_server.tls_config(t.admin_server())?;
        }
        let mut admin_server = admin_server
            .layer(crate::listener::MalformedLayer { conns, budget })
            .layer(crate::frontdoor::auth::AuthLayer(verifier));
        let (_, admin_health) = tonic_health::server::health_reporter();
        let svc = AdminServer::new(AdminService(front_door.clone(), config.nodes_max))
            .max_decoding_message_size(config.front_door.message_bytes_max);
        let mut rx3 = rx.clone();
        tasks.push(tokio::spawn(async move {
            let r = admin_server
                .add_service(admin_health)
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx3.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "admin server failed");
            }
        }));
    }

    if let Some(period) = config.leader_balance_period {
        tasks.push(tokio::spawn(crate::control::balance::run(
            me,
            hosted.clone(),
            meta_store.clone(),
            period,
            clock_check.clone(),
            rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::control::balance::run_clock_probe(
        me,
        peers.clone(),
        config
            .members
            .iter()
            .map(|(id, a)| (*id, a.internal.clone()))
            .collect(),
        hosted.clone(),
        meta_store.clone(),
        clock_check.clone(),
        rx.clone(),
    )));
    let (admitted_tx, admitted) = watch::channel(!fresh_joiner);
    if fresh_joiner {
        // Until admitted, this node answers no metadata-group traffic: if
        // its data was lost, its empty log under an old member id would
        // break the group's leader (openraft forbids a member's log going
        // backwards). Once admitted, the replica list is written, so a
        // restart is no longer "fresh".
        let (mut admitted, groups, meta_raft, replicas) = (
            admitted.clone(),
            groups.clone(),
            meta_raft.clone(),
            replicas.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if admitted.wait_for(|a| *a).await.is_ok() {
                groups.insert(META_GROUP, (meta_member, meta_raft));
                if let Err(e) = replicas.save() {
                    tracing::error!(error = %e, "writing the replica list failed");
                }
            }
        }));
    }
    tasks.push(tokio::spawn(crate::control::replicas::run_manager(
        replicas.clone(),
        meta_store.clone(),
        admitted,
        rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::control::placement::run_reconciler(
        me,
        hosted.clone(),
        meta_store.clone(),
        config.placement.clone(),
        rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::control::placement::run_driver(
        front_door.clone(),
        config.placement.clone(),
        rx.clone(),
    )));
    // A joiner asks to be added; an initial member with a data dir
    // registers its disk id (the same call, forwarded to the metadata
    // leader), and stops if the map knows another one.
    let register = match config.join.clone() {
        Some(join) => Some((join, None)),
        None if config.disk_id != 0 => Some((config.members[&me].public.clone(), Some(fatal_tx))),
        None => None,
    };
    if let Some((via, fatal)) = register {
        // Over the injected connector, like all node-to-node traffic (§4b).
        let channel = peers
            .channel(&via)
            .map_err(|e| anyhow::anyhow!("join address {via}: {e}"))?;
        tasks.push(tokio::spawn(crate::control::placement::join(
            crate::control::placement::Joiner {
                me,
                shards: config.shards,
                addrs: config.members[&me].clone(),
                via,
                channel,
                fresh: fresh_joiner,
                credential,
                disk_id: config.disk_id,
                fatal,
            },
            admitted_tx,
            rx.clone(),
        )));
    }

    if config.bootstrap {
        let members: BTreeMap<NodeId, BasicNode> = config
            .members
            .iter()
            .map(|(id, a)| {
                (
                    replica_id(*id, INITIAL_INCARNATION),
                    BasicNode::new(a.internal.clone()),
                )
            })
            .collect();
        for h in hosted.iter().map(|h| h.clone()).collect::<Vec<_>>() {
            if let Err(e) = h.raft.initialize(members.clone()).await {
                tracing::debug!(shard = h.shard, error = %e, "initialize skipped");
            }
        }
        if let Err(e) = meta_raft.initialize(members.clone()).await {
            tracing::debug!(error = %e, "metadata group: initialize skipped");
        }
    }

    Ok(NodeHandle {
        id: me,
        nchf_addr,
        front_door,
        hosted,
        shutdown,
        tasks,
        supervisor,
        failure,
        active_accounts: replicas.active.clone(),
        isolated,
        transport: peers,
        meta: meta_raft,
        health: health_reporter,
    })
}
