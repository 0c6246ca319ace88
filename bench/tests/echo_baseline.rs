//! The echo baseline end to end, no cluster needed: start the in-process
//! echo server, run a 1-second closed loop over each transport, and check
//! the numbers make sense.

use charging_bench::echo::EchoServer;
use charging_bench::exec::{connect, Exec, Target};
use charging_bench::report::Measured;
use charging_bench::stats::Recorder;
use charging_bench::workload::{run_load, Engine, LoadOpts, WorkCfg, Workload};
use charging_bench::zipf::Distribution;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

fn cfg(workload: Workload) -> Arc<WorkCfg> {
    Arc::new(WorkCfg {
        workload,
        prefix: "t".into(),
        accounts: 100,
        dist: Distribution::Zipf(0.99),
        updates: 2,
        units: 1_000_000,
        rating_groups: vec![32],
        dims: HashMap::new(),
        retries: 2,
        topup_amount: 100,
    })
}

fn opts(concurrency: usize, rate: Option<f64>) -> LoadOpts {
    LoadOpts {
        concurrency,
        rate,
        max_in_flight: 1000,
        duration: Duration::from_secs(1),
        drain: Duration::from_secs(5),
        progress: false,
        label: "test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_against_the_echo_baseline() {
    let server = EchoServer::start(1).unwrap();
    let channels = connect(&server.url(), 2, &Default::default())
        .await
        .unwrap();

    // Unary, reserve-commit, 1 second, concurrency 4.
    let rec = Arc::new(Recorder::new(0));
    let engine = Arc::new(Engine::new(
        Exec::unary(Target::Echo, &channels),
        cfg(Workload::ReserveCommit),
        rec,
        None,
    ));
    let r = run_load(engine, &opts(4, None)).await;
    let m = Measured::from_load(&r);
    assert!(m.ops > 100, "only {} ops", m.ops);
    assert_eq!(m.error_count(), 0, "{:?}", m.errors);
    assert_eq!(m.ops % 2, 0, "reserve + commit pairs: {}", m.ops);
    assert!((0.9..3.0).contains(&m.duration_s), "{}", m.duration_s);
    assert!(m.lat.p50 > 0 && m.lat.p50 <= m.lat.p99 && m.lat.p99 <= m.lat.max);
    assert!(!r.timeline.is_empty());

    // Stream, mixed workload, batches of up to 8, pipeline 4.
    let exec = Exec::stream(Target::Echo, &channels[..1], 8, 4)
        .await
        .unwrap();
    let rec = Arc::new(Recorder::new(0));
    let engine = Arc::new(Engine::new(exec, cfg(Workload::Mixed), rec, None));
    let r = run_load(engine, &opts(32, None)).await;
    let m = Measured::from_load(&r);
    assert!(m.ops > 100, "only {} ops", m.ops);
    assert_eq!(m.error_count(), 0, "{:?}", m.errors);
    let b = m.avg_batch.unwrap();
    assert!((1.0..=8.0).contains(&b), "avg batch {b}");

    // Open loop at 300 ops/s with max_ops: stops by itself, rate roughly kept.
    let rec = Arc::new(Recorder::new(100));
    let engine = Arc::new(Engine::new(
        Exec::unary(Target::Echo, &channels),
        cfg(Workload::Debit),
        rec,
        None,
    ));
    let r = run_load(engine, &opts(0, Some(300.0))).await;
    let m = Measured::from_load(&r);
    assert!(
        m.ops >= 100 && m.ops < 150,
        "{} ops, {} started, {} s",
        m.ops,
        r.txns_started,
        m.duration_s
    );
    // Due at 0.33 s (a debug build is slow); the 1 s duration must not be what stopped it.
    assert!(
        m.duration_s < 0.95,
        "max_ops should stop it first: {}",
        m.duration_s
    );
}
