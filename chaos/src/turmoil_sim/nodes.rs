//! The simulated nodes: their slots, configs and how each runs.
use super::*;

/// What survives a node's crash: the logs of its replica incarnations, its
/// metadata log, its replica list (a real file), its clock; and where the
/// running incarnation publishes the replicas it hosts.
#[derive(Clone)]
pub(super) struct Slot {
    pub(super) id: u64,
    pub(super) seed: u64,
    pub(super) logs: Arc<Mutex<BTreeMap<(u32, u32), SimLog>>>,
    pub(super) meta: SimLog,
    pub(super) clock: SimClock,
    /// Keeps `replicas` (the hosted replica list) across restarts.
    pub(super) dir: PathBuf,
    pub(super) hosted: Arc<Mutex<Option<Hosted>>>,
    /// Part of the run: an initial member, or a spare once added.
    pub(super) active: Arc<AtomicBool>,
}

impl Slot {
    pub(super) fn new(id: u64, seed: u64, dir: &std::path::Path, active: bool) -> Slot {
        let dir = dir.join(name(id));
        let _ = std::fs::create_dir_all(&dir);
        Slot {
            id,
            seed,
            logs: Arc::default(),
            meta: SimLog::new(seed ^ (id << 32) ^ 0xFFFF, FLUSH_MS),
            clock: SimClock::default(),
            dir,
            hosted: Arc::default(),
            active: Arc::new(AtomicBool::new(active)),
        }
    }

    pub(super) fn log(&self, shard: u32, incarnation: u32) -> SimLog {
        let seed = self.seed ^ (self.id << 32) ^ (u64::from(incarnation) << 16) ^ u64::from(shard);
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((shard, incarnation))
            .or_insert_with(|| SimLog::new(seed, FLUSH_MS))
            .clone()
    }

    /// Every log of this node (each replica incarnation's and the
    /// metadata's) by group (`None`: the metadata group's).
    pub(super) fn logs_by_group(&self) -> Vec<(Option<u32>, SimLog)> {
        let g = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        g.iter()
            .map(|((shard, _), l)| (Some(*shard), l.clone()))
            .chain([(None, self.meta.clone())])
            .collect()
    }

    /// The replicas the running node hosts now (`None`: down or not started).
    pub(super) fn replicas(&self) -> Option<Vec<ShardHandle>> {
        let g = self.hosted.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref().map(|h| {
            let mut v: Vec<ShardHandle> = h.iter().map(|e| e.value().clone()).collect();
            v.sort_by_key(|h| h.shard);
            v
        })
    }

    pub(super) fn replica(&self, shard: u32) -> Option<ShardHandle> {
        let g = self.hosted.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref()
            .and_then(|h| h.get(&shard).map(|e| e.value().clone()))
    }

    pub(super) fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }
}

pub(super) fn name(id: u64) -> String {
    format!("n{id}")
}

pub(super) fn limits() -> Limits {
    Limits {
        // No reservation expires during a run: the history has no sweeper.
        reservation_validity_ms: 3_600_000,
        ..Limits::default()
    }
}

pub(super) fn node_config(id: u64, cfg: &TurmoilConfig, seed: u64) -> NodeConfig {
    let members: BTreeMap<u64, PeerAddrs> = (1..=cfg.nodes)
        .map(|i| {
            (
                i,
                PeerAddrs {
                    public: format!("{}:{PUBLIC_PORT}", name(i)),
                    internal: format!("{}:{INTERNAL_PORT}", name(i)),
                },
            )
        })
        .collect();
    let mut c = if id <= cfg.nodes {
        let mut c = NodeConfig::new(id, members);
        c.bootstrap = id == 1;
        c
    } else {
        // A spare: it joins through node 1 (scale-out under faults).
        let me = PeerAddrs {
            public: format!("{}:{PUBLIC_PORT}", name(id)),
            internal: format!("{}:{INTERNAL_PORT}", name(id)),
        };
        let mut c = NodeConfig::new(id, BTreeMap::from([(id, me)]));
        c.join = Some(format!("{}:{PUBLIC_PORT}", name(1)));
        c
    };
    c.shards = cfg.shards;
    c.ledger = limits();
    c.rng_seed = seed;
    // Snapshots stay in memory and would be lost with a crash; keep runs
    // below the snapshot threshold so a restart replays its log.
    c.snapshot_logs = 1_000_000;
    c
}

pub(super) async fn run_node(cfg: NodeConfig, slot: Slot) -> turmoil::Result {
    let replicas_file = slot.dir.join("replicas");
    let replicas = charging_node::control::replicas::read_persisted(&replicas_file)
        .map_err(|e| format!("replica list: {e}"))?;
    let public = turmoil::net::TcpListener::bind(("0.0.0.0", PUBLIC_PORT)).await?;
    let internal = turmoil::net::TcpListener::bind(("0.0.0.0", INTERNAL_PORT)).await?;
    let edges = Edges {
        public: incoming(public),
        internal: incoming(internal),
        admin: None,
        nchf: None,
        connector: Box::new(SimConnector),
        clock: Arc::new(slot.clock.clone()),
        logs: {
            let slot = slot.clone();
            Arc::new(move |shard, incarnation| slot.log(shard, incarnation))
        },
        replicas,
        replicas_file: Some(replicas_file),
        meta_log: slot.meta.clone(),
        snapshot_dir: None,
    };
    let h = node::start(cfg, edges)
        .await
        .map_err(|e| format!("node start: {e}"))?;
    *slot.hosted.lock().unwrap_or_else(|p| p.into_inner()) = Some(h.hosted.clone());
    // The node runs until the host crashes (its runtime is dropped).
    std::future::pending::<()>().await;
    drop(h);
    Ok(())
}
