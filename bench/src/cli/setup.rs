//! What a run needs before it starts: the cluster or echo server, the
//! channels, the executor, the preload.
use super::*;

/// Everything a run needs, once.
pub struct Setup {
    pub cfg: Arc<WorkCfg>,
    pub exec: Exec,
    pub admin: Vec<Channel>,
    pub expect: Option<Arc<Expect>>,
    pub base: Arc<HashMap<u64, i64>>,
    pub preload: Option<Preload>,
    pub endpoints: Vec<String>,
}

/// `chargebench preload`: the preload of `setup` alone.
pub async fn preload_only(mut c: Common) -> anyhow::Result<serde_json::Value> {
    c.no_verify = true;
    c.no_settle = true;
    let s = setup(&c).await?;
    let p = s.preload.unwrap_or_default();
    let v = serde_json::json!({
        "accounts": p.accounts,
        "created": p.created,
        "existed": p.existed.len(),
        "failed": p.failed,
        "elapsed_s": p.elapsed.as_secs_f64(),
        "accounts_per_sec": p.per_sec(),
        "preload_mode": format!("{:?}", c.preload_mode).to_lowercase(),
        "prefix": s.cfg.prefix,
    });
    println!("{v}");
    Ok(v)
}

pub async fn setup(c: &Common) -> anyhow::Result<Setup> {
    let endpoints = c.endpoints()?;
    if c.rating_groups.is_empty() {
        bail!("--rating-groups: at least one");
    }
    let token = c.bearer()?;
    let mut channels = Vec::new();
    let mut admin = Vec::new();
    for e in &endpoints {
        admin.extend(connect(e, 1, &token).await?);
    }
    // With leader routing, one group of connections per node of the map.
    let router = match c.route {
        Route::Leader => crate::exec::Router::open(&admin[0], c.allow_remote)
            .await
            .context("reading the shard map")?,
        Route::Any => None,
    };
    let targets: Vec<String> = match &router {
        Some(r) => r.nodes.clone(),
        None => endpoints.clone(),
    };
    for e in &targets {
        channels.extend(connect(e, c.connections(), &token).await?);
    }
    let dims = cluster::tariff_dims(&admin[0])
        .await
        .context("reading tariffs")?;
    for rg in &c.rating_groups {
        if !dims.contains_key(rg) {
            eprintln!("warning: rating group {rg} has no tariff; charges will be rejected");
        }
    }
    let cfg = Arc::new(WorkCfg {
        workload: c.workload,
        prefix: c.prefix(),
        accounts: c.accounts.max(1),
        dist: c.distribution,
        updates: c.updates,
        units: c.units.max(1),
        rating_groups: c.rating_groups.clone(),
        dims,
        retries: c.retries,
        topup_amount: 100,
    });
    let mut preload = None;
    let mut base = HashMap::new();
    if !c.no_preload {
        let p = match c.preload_mode {
            PreloadMode::Bulk => {
                cluster::bulk_preload(
                    &admin,
                    &cfg,
                    c.initial_balance,
                    &c.currency,
                    c.preload_batch.unwrap_or(20_000),
                    c.preload_pipeline,
                )
                .await?
            }
            PreloadMode::Stream => {
                cluster::preload(
                    &admin,
                    &cfg,
                    c.initial_balance,
                    &c.currency,
                    c.preload_batch.unwrap_or(2000),
                    c.preload_pipeline,
                )
                .await?
            }
        };
        println!(
            "preload: {} accounts ({} created, {} existed, {} failed) in {:.2} s: {:.0} accounts/s (prefix {})",
            p.accounts,
            p.created,
            p.existed.len(),
            p.failed,
            p.elapsed.as_secs_f64(),
            p.per_sec(),
            cfg.prefix
        );
        if p.failed > 0 {
            bail!("preload: {} accounts could not be created", p.failed);
        }
        if !p.existed.is_empty() && !c.no_verify {
            base = cluster::read_balances(&admin, &cfg, p.existed.clone()).await?;
        }
        // The nodes snapshot and purge a bulk load once it has been quiet
        // for 2 s: after a large one, wait for that here, so it does not land
        // in the measurement.
        if c.preload_mode == PreloadMode::Bulk && p.created >= 100_000 && !c.no_settle {
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        }
        preload = Some(p);
    } else if !c.no_verify {
        base = cluster::read_balances(&admin, &cfg, (0..cfg.accounts).collect()).await?;
    }
    let expect = (!c.no_verify).then(|| Arc::new(Expect::new(cfg.accounts)));
    let mut exec = make_exec(c, Target::Charging, &channels).await?;
    if let Some(r) = router {
        exec = exec.routed(r.start(admin[0].clone(), c.connections()));
    }
    Ok(Setup {
        cfg,
        exec,
        admin,
        expect,
        base: Arc::new(base),
        preload,
        endpoints,
    })
}

pub(super) fn default_concurrency(c: &Common, width: usize) -> usize {
    match c.transport {
        Transport::Unary => 16,
        Transport::Stream => (c.batch.max(1) * c.pipeline.max(1) * width).min(100_000),
    }
}

/// One load run against `exec`.
pub async fn load(
    exec: Exec,
    cfg: Arc<WorkCfg>,
    expect: Option<Arc<Expect>>,
    opts: &LoadOpts,
    max_ops: Option<u64>,
) -> LoadResult {
    let rec = Arc::new(Recorder::new(max_ops.unwrap_or(0)));
    let engine = Arc::new(Engine::new(exec, cfg, rec, expect));
    run_load(engine, opts).await
}

/// [`load`], measured: with `cpu`, the node processes' CPU time is sampled
/// right before the load starts and right after its last op is counted, so
/// the window is the one ops/s is computed over.
pub async fn load_measured(
    exec: Exec,
    cfg: Arc<WorkCfg>,
    expect: Option<Arc<Expect>>,
    opts: &LoadOpts,
    max_ops: Option<u64>,
    cpu: Option<&NodeCpu>,
) -> Measured {
    let start = cpu.map(NodeCpu::sample);
    let r = load(exec, cfg, expect, opts, max_ops).await;
    let mut m = Measured::from_load(&r);
    if let (Some(cpu), Some(start)) = (cpu, start) {
        m.node_cpu = Some(cpu.finish(start, r.totals.ops));
    }
    m
}

/// The echo baseline: same transport, connections, concurrency, rate, duration.
pub async fn echo_baseline(
    c: &Common,
    cfg: Arc<WorkCfg>,
    opts: &LoadOpts,
    max_ops: Option<u64>,
    width: usize,
) -> anyhow::Result<LoadResult> {
    let server = EchoServer::start(0)?;
    let channels = connect(&server.url(), width, &Default::default()).await?;
    let exec = make_exec(c, Target::Echo, &channels).await?;
    let opts = LoadOpts {
        label: "echo".into(),
        ..opts.clone()
    };
    let r = load(exec, cfg, None, &opts, max_ops).await;
    drop(channels);
    drop(server);
    Ok(r)
}
