//! Several nodes in one process over real gRPC on loopback: the `dev`
//! cluster and the integration tests. Each node has its own listeners, its
//! own shard groups and actors; they talk to each other only through gRPC.
use crate::clock::{SharedClock, SystemClock};
use crate::config::{NodeConfig, PeerAddrs, RaftTimings};
use crate::node::{self, Edges, NodeHandle};
use crate::raft::log_store::MemLog;
use crate::raft::network::TcpConnector;
use crate::raft::{NodeId, ShardId};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Adjusts a node's config before it starts.
pub type ConfigTweak = Arc<dyn Fn(&mut NodeConfig) + Send + Sync>;

pub struct ClusterOptions {
    pub nodes: u64,
    pub shards: u32,
    /// Fixed public ports (node i gets `public_ports[i-1]`); `None` = port 0.
    pub public_ports: Option<Vec<u16>>,
    pub clock: SharedClock,
    /// Clocks of particular nodes (the others get `clock`): skewed clocks.
    pub clocks: BTreeMap<NodeId, SharedClock>,
    /// Adjusts each node's config before start.
    pub tweak: Option<ConfigTweak>,
    /// TLS: every node gets a certificate from this CA (see [`crate::tls`]).
    pub tls: Option<Arc<crate::tls::CertAuthority>>,
    /// Each node gets an admin listener too (see [`LocalCluster::admin_url`]).
    pub admin_listeners: bool,
    /// Each node serves Nchf (see [`LocalCluster::nchf_url`]): node i on
    /// `nchf_ports[i-1]`, or any free port when the list is shorter.
    pub nchf_ports: Option<Vec<u16>>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            shards: 4,
            public_ports: None,
            clock: Arc::new(SystemClock),
            clocks: BTreeMap::new(),
            tweak: None,
            tls: None,
            admin_listeners: false,
            nchf_ports: None,
        }
    }
}

pub struct LocalCluster {
    pub addrs: BTreeMap<NodeId, PeerAddrs>,
    pub nodes: BTreeMap<NodeId, NodeHandle>,
    pub shards: u32,
    clock: SharedClock,
    tweak: Option<ConfigTweak>,
    tls: Option<Arc<crate::tls::CertAuthority>>,
    /// Admin listener addresses, when the nodes have them.
    pub admin_addrs: BTreeMap<NodeId, String>,
    admin_listeners: bool,
}

async fn bind(port: u16) -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind(("127.0.0.1", port)).await?)
}

/// Edges of an in-process node: TCP on loopback, memory logs, no snapshot files.
fn memory_edges(
    id: NodeId,
    public: TcpListener,
    internal: TcpListener,
    admin: Option<TcpListener>,
    nchf: Option<TcpListener>,
    clock: SharedClock,
    tls: Option<&crate::tls::Tls>,
) -> Edges<MemLog, impl node::Incoming> {
    Edges {
        public: node::tcp_incoming(public),
        internal: node::tcp_incoming(internal),
        admin: admin.map(node::tcp_incoming),
        nchf,
        connector: Box::new(TcpConnector {
            connect_timeout: Duration::from_millis(500),
            tls: tls.map(|t| t.client()),
        }),
        clock,
        logs: Arc::new(move |_, _| MemLog::new(id)),
        replicas: None,
        replicas_file: None,
        meta_log: MemLog::new(id),
        snapshot_dir: None,
    }
}

/// Node `id`'s TLS material: a fresh certificate from `ca`.
fn node_tls(
    ca: Option<&crate::tls::CertAuthority>,
    id: NodeId,
) -> anyhow::Result<Option<crate::tls::Tls>> {
    Ok(match ca {
        Some(ca) => Some(ca.node_tls(id, crate::tls::ClientCerts::Optional)?),
        None => None,
    })
}

impl LocalCluster {
    /// Binds every listener first (so all addresses are known), then starts
    /// the nodes; node 1 bootstraps the shard groups.
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<Self> {
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        let mut admin_addrs = BTreeMap::new();
        for id in 1..=opts.nodes {
            let port = opts
                .public_ports
                .as_ref()
                .and_then(|p| p.get(id as usize - 1).copied())
                .unwrap_or(0);
            let public = bind(port)
                .await
                .map_err(|e| anyhow::anyhow!("bind public port {port}: {e}"))?;
            let internal = bind(0).await?;
            let admin = if opts.admin_listeners {
                let a = bind(0).await?;
                admin_addrs.insert(id, a.local_addr()?.to_string());
                Some(a)
            } else {
                None
            };
            addrs.insert(
                id,
                PeerAddrs {
                    public: public.local_addr()?.to_string(),
                    internal: internal.local_addr()?.to_string(),
                },
            );
            let nchf = match &opts.nchf_ports {
                Some(ports) => {
                    let port = ports.get(id as usize - 1).copied().unwrap_or(0);
                    Some(
                        bind(port)
                            .await
                            .map_err(|e| anyhow::anyhow!("bind nchf port {port}: {e}"))?,
                    )
                }
                None => None,
            };
            listeners.insert(id, (public, internal, admin, nchf));
        }
        let mut nodes = BTreeMap::new();
        for (id, (public, internal, admin, nchf)) in listeners {
            let mut cfg = NodeConfig::new(id, addrs.clone());
            cfg.shards = opts.shards;
            cfg.bootstrap = id == 1;
            cfg.tls = node_tls(opts.tls.as_deref(), id)?;
            cfg.raft = RaftTimings::one_process();
            if let Some(t) = &opts.tweak {
                t(&mut cfg);
            }
            let edges = memory_edges(
                id,
                public,
                internal,
                admin,
                nchf,
                opts.clocks.get(&id).cloned().unwrap_or(opts.clock.clone()),
                cfg.tls.as_ref(),
            );
            nodes.insert(id, node::start(cfg, edges).await?);
        }
        Ok(LocalCluster {
            addrs,
            nodes,
            shards: opts.shards,
            clock: opts.clock,
            tweak: opts.tweak,
            tls: opts.tls,
            admin_addrs,
            admin_listeners: opts.admin_listeners,
        })
    }

    /// Starts node `id` as a new member joining through node `via`'s public
    /// address (scale-out): it hosts nothing until the placement driver
    /// moves replicas onto it.
    pub async fn add_node(&mut self, id: NodeId, via: NodeId) -> anyhow::Result<()> {
        anyhow::ensure!(!self.addrs.contains_key(&id), "node {id} exists");
        let public = bind(0).await?;
        let internal = bind(0).await?;
        let admin = if self.admin_listeners {
            let a = bind(0).await?;
            self.admin_addrs.insert(id, a.local_addr()?.to_string());
            Some(a)
        } else {
            None
        };
        let me = PeerAddrs {
            public: public.local_addr()?.to_string(),
            internal: internal.local_addr()?.to_string(),
        };
        let mut cfg = NodeConfig::new(id, BTreeMap::from([(id, me.clone())]));
        cfg.shards = self.shards;
        cfg.join = Some(self.addrs[&via].public.clone());
        cfg.tls = node_tls(self.tls.as_deref(), id)?;
        cfg.raft = RaftTimings::one_process();
        if let Some(t) = &self.tweak {
            t(&mut cfg);
        }
        let edges = memory_edges(
            id,
            public,
            internal,
            admin,
            None,
            self.clock.clone(),
            cfg.tls.as_ref(),
        );
        self.nodes.insert(id, node::start(cfg, edges).await?);
        self.addrs.insert(id, me);
        Ok(())
    }

    /// Node `id`'s public endpoint (`https://` when the cluster runs TLS).
    pub fn public_url(&self, id: NodeId) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addrs[&id].public)
    }

    /// Node `id`'s admin listener endpoint, when the nodes have one.
    pub fn admin_url(&self, id: NodeId) -> Option<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.admin_addrs.get(&id).map(|a| format!("{scheme}://{a}"))
    }

    /// Node `id`'s Nchf API root (`http://addr`, `https://` under TLS),
    /// when the nodes serve Nchf.
    pub fn nchf_url(&self, id: NodeId) -> Option<String> {
        let a = self.nodes.get(&id)?.nchf_addr?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Some(format!("{scheme}://{a}"))
    }

    /// The cluster's CA, when it runs TLS.
    pub fn ca(&self) -> Option<&crate::tls::CertAuthority> {
        self.tls.as_deref()
    }

    /// The node whose shard actor currently decides for `shard`, if any.
    pub fn deciding_leader(&self, shard: ShardId) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, n)| n.replica(shard).is_some_and(|h| h.is_deciding()))
            .map(|(id, _)| *id)
    }

    /// Waits until every shard has a leader that decides (its epoch began).
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if (0..self.shards).all(|s| self.deciding_leader(s).is_some()) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "cluster not ready within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Moves shard `s`'s leadership to node `(s mod n) + 1`, so leaders are
    /// spread evenly, and waits for the new epochs.
    pub async fn spread_leaders(&self, timeout: Duration) -> anyhow::Result<()> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for s in 0..self.shards {
            let want = ids[s as usize % ids.len()];
            if let Some(cur) = self.deciding_leader(s) {
                if cur != want {
                    let raft = self.nodes[&cur].raft(s);
                    if let Some(r) = crate::raft::replica_of(&raft, want) {
                        let _ = raft.trigger().transfer_leader(r).await;
                    }
                }
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let ok = (0..self.shards)
                .all(|s| self.deciding_leader(s) == Some(ids[s as usize % ids.len()]));
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                // Spreading is best effort; any leader serves.
                return self.wait_ready(timeout).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops node `id` abruptly (its listeners close, peers see it gone).
    pub async fn kill(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.remove(&id) {
            n.kill().await;
        }
    }

    pub async fn shutdown(self) {
        for (_, n) in self.nodes {
            n.shutdown().await;
        }
    }
}
