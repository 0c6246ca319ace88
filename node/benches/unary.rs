//! End-to-end unary reserve latency on an in-process 3-node cluster (the same
//! shape as `chargerd dev`: real gRPC on loopback, real openraft, RF 3), at 1
//! and 64 concurrent callers. Client and servers share this process and the
//! machine's cores, so these are upper bounds of server latency.
//!
//! `cargo bench -p charging-node --bench unary`
// Tests and benches run in real time and read the OS clock; the node core
// may not (node/clippy.toml).
#![allow(clippy::disallowed_methods)]
use charging_client::proto::{Price, Tariff, Units};
use charging_client::{Client, ClientConfig};
use charging_node::cluster::{ClusterOptions, LocalCluster};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

const ACCOUNTS: usize = 256;
const RUN: Duration = Duration::from_secs(5);
const MAX_OPS: u64 = 2_000_000;

async fn run(client: &Client, concurrency: usize) -> (Histogram<u64>, f64) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut i = 0u64;
            while started.elapsed() < RUN && i < MAX_OPS / concurrency as u64 {
                // One session per caller; each reserve (next seq) replaces the
                // session's quota on RG 32, so accounts stay small as in a
                // real CHF session.
                let account = format!("bench-{}", w % ACCOUNTS);
                let t = Instant::now();
                let r = c
                    .reserve(
                        account,
                        format!("c{concurrency}"),
                        i,
                        32,
                        Units {
                            volume_bytes: 1_000,
                            ..Default::default()
                        },
                    )
                    .await
                    .expect("reserve");
                h.record(t.elapsed().as_micros().max(1) as u64)
                    .expect("record");
                assert_eq!(r.result, 1, "reserve result");
                i += 1;
            }
            h
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for t in tasks {
        all.add(t.await.expect("task")).expect("add");
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = all.len() as f64 / secs;
    (all, rate)
}

#[tokio::main]
async fn main() {
    let cluster = LocalCluster::start(ClusterOptions {
        nodes: 3,
        shards: 16,
        ..Default::default()
    })
    .await
    .expect("cluster");
    cluster
        .wait_ready(Duration::from_secs(20))
        .await
        .expect("ready");
    cluster
        .spread_leaders(Duration::from_secs(10))
        .await
        .expect("spread");
    let client = Client::connect_with_config(
        cluster.public_url(1),
        ClientConfig {
            deadline_ms: 5_000,
            ..Default::default()
        },
    )
    .await
    .expect("client");
    client
        .set_tariff(Tariff {
            rating_group: 32,
            version: 0,
            prices: vec![Price {
                unit: 2,
                increment: 1_000_000,
                nano_per_increment: 1_000_000_000,
            }],
        })
        .await
        .expect("tariff");
    for a in 0..ACCOUNTS {
        client
            .create_account(format!("bench-{a}"), "EUR", 1_000_000_000, 0, vec![])
            .await
            .expect("create");
    }
    for concurrency in [1usize, 64] {
        let (h, rate) = run(&client, concurrency).await;
        println!(
            "unary reserve, 3 nodes RF3, concurrency {concurrency:>3}: {rate:>8.0} ops/s  p50 {} us  p99 {} us  p99.9 {} us  max {} us  ({} ops; entry point node 1, ~2/3 forwarded one hop)",
            h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.value_at_quantile(0.999), h.max(), h.len()
        );
    }
    cluster.shutdown().await;
}
