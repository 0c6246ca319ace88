//! The clock bound, enforced (DESIGN §3): a node whose clock is 15 minutes
//! off from its two peers' stops leading (it decides nothing and hands its
//! shards over), and the cluster goes on serving through every node's
//! front door. Without the bound, the fast node's decisions would push the
//! log's time 15 minutes ahead, and every request id dated now would be
//! refused `REQUEST_TOO_OLD` (past the 10-minute dedup window) on its
//! shards for good; a slow one would let a retry outlive its dedup entry.
use crate::support::*;
use charging_node::clock::{Clock, SystemClock};
use charging_node::cluster::ClusterOptions;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The real clock shifted by `.0` ms.
struct Skewed(i64);
impl Clock for Skewed {
    fn now_ms(&self) -> u64 {
        (SystemClock.now_ms() as i64 + self.0) as u64
    }
}

async fn skewed_node_leads_nothing_and_the_cluster_serves(skew_ms: i64) {
    let cluster = start_cluster(ClusterOptions {
        tls: Some(ca()),
        clocks: BTreeMap::from([(3, Arc::new(Skewed(skew_ms)) as _)]),
        ..ClusterOptions::default()
    })
    .await;
    let env = Env {
        client: connect(cluster.public_url(1)).await,
        cluster,
    };
    // Node 3 finds its clock off and hands away what it leads; the others
    // hand it nothing (leader spreading would give it a third).
    let leaders_on_3 = |env: &Env| {
        env.cluster.nodes[&3]
            .shards()
            .iter()
            .filter(|h| h.is_deciding())
            .count()
    };
    poll(Duration::from_secs(30), "node 3 leads no shard", || {
        let n = leaders_on_3(&env);
        async move { (n == 0).then_some(()) }
    })
    .await;
    set_standard_tariffs(&env.client).await;
    let c3 = env.client_on(3).await;
    let accounts = account_per_shard(&format!("clock{skew_ms}"));
    for acct in &accounts {
        create(&env.client, acct, 1_000).await;
    }
    // Rounds over 6 s: past two leader-spreading periods (2 s), which would
    // hand node 3 a third of the shards, and several clock probes (1 s).
    let started = std::time::Instant::now();
    let mut rounds = 0i64;
    while started.elapsed() < Duration::from_secs(6) {
        rounds += 1;
        for acct in &accounts {
            // Through node 3's front door and node 1's: served, never too old.
            for c in [&c3, &env.client] {
                let r = c.top_up(acct, 1, 10).await.expect("top-up");
                assert_rc(r.result, charging_client::proto::ResultCode::Ok, "top-up");
            }
        }
        assert_eq!(leaders_on_3(&env), 0, "round {rounds}: node 3 took a lead");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for acct in &accounts {
        assert_money(&balance(&env.client, acct).await, 1_000 + 20 * rounds, 0);
    }
    env.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_15_minutes_fast_leads_nothing() {
    skewed_node_leads_nothing_and_the_cluster_serves(15 * 60_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_15_minutes_slow_leads_nothing() {
    skewed_node_leads_nothing_and_the_cluster_serves(-15 * 60_000).await;
}
