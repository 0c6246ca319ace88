//! Failover through the real stack: 3 in-process nodes, real gRPC on loopback,
//! real openraft. One binary, one file per scenario.
// Tests and benches run in real time and read the OS clock; the node core
// may not (node/clippy.toml).
#![allow(clippy::disallowed_methods)]
mod t10_kill_leader;
mod t20_deposed_leader;
mod t30_front_door;
mod t40_scale_out;
mod t41_duplicate_lost_epoch;

use charging_client::proto::{Price, Tariff, Units};
use charging_client::{Client, ClientConfig};
use charging_node::cluster::{ClusterOptions, LocalCluster};
use charging_node::frontdoor::shard_of;
use std::future::Future;
use std::time::{Duration, Instant};

pub const RG: u32 = 32;
pub const MB: u64 = 1_000_000;

pub async fn cluster() -> LocalCluster {
    let c = LocalCluster::start(ClusterOptions {
        nodes: 3,
        shards: 4,
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    c.wait_ready(Duration::from_secs(20))
        .await
        .expect("cluster ready");
    c
}

pub async fn client(url: String) -> Client {
    Client::connect_with_config(
        url,
        ClientConfig {
            deadline_ms: 3_000,
            max_retries: 10,
            ..Default::default()
        },
    )
    .await
    .expect("client connects")
}

/// 1 MB on rating group 32 costs 1 minor unit.
pub async fn set_data_tariff(c: &Client) {
    let t = Tariff {
        rating_group: RG,
        version: 0,
        prices: vec![Price {
            unit: 2,
            increment: MB,
            nano_per_increment: 1_000_000_000,
        }],
    };
    settle(|| c.set_tariff(t.clone())).await;
}

pub fn mb(n: u64) -> Units {
    Units {
        volume_bytes: n * MB,
        ..Default::default()
    }
}

/// Retries one call (the closure must reuse its request id) until it gives a
/// definite answer. Bounded: 60 attempts, 30 s.
pub async fn settle<T, E: std::fmt::Debug, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    for _ in 0..60 {
        match f().await {
            Ok(v) => return v,
            Err(e) => last = Some(e),
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("call never settled: {last:?}");
}

/// The shard of an account in a 4-shard cluster.
pub fn shard(account: &str) -> u32 {
    shard_of(account, 4)
}
