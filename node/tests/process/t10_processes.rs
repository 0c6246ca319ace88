use crate::support::*;
use charging_client::{is_ok, Client, ClientConfig};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Small snapshot threshold: restarts exercise snapshot files + WAL replay.
const LIMITS: &str = "snapshot_logs = 20";

async fn create_all(c: &Client, accounts: &[String]) {
    for a in accounts {
        let r = c
            .create_account(a, "EUR", 0, 0, Vec::new())
            .await
            .expect("create");
        assert!(is_ok(r.result), "create {a}");
    }
}

/// Waits until node `id` has applied, on every shard, what the leaders have.
async fn wait_caught_up(c: &ProcCluster, id: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let me = connect(&c.url(id)).await;
    loop {
        let mine = me.status().await.map(|s| s.shard_status);
        let mut ok = mine.is_ok();
        if let Ok(mine) = &mine {
            for s in mine {
                if s.leader == 0 || s.leader == id {
                    continue;
                }
                let l = connect(&c.url(s.leader)).await;
                let theirs = l.status().await.expect("leader status");
                let t = &theirs.shard_status[s.shard_id as usize];
                if s.applied_index < t.applied_index {
                    ok = false;
                }
            }
        }
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "node {id} did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_a_leading_node_mid_load_then_restart_catches_up() {
    let mut c = ProcCluster::start(3, "always", LIMITS);
    for id in 1..=3 {
        c.wait_ready(id, Duration::from_secs(30)).await;
    }
    let accounts = Arc::new(accounts("k9", 2));
    let c1 = connect(&c.url(1)).await;
    create_all(&c1, &accounts).await;

    // Every node serves every shard (forwarding clients, one per node).
    for id in 1..=3 {
        let fwd = Client::connect_with_config(
            c.url(id),
            ClientConfig {
                direct_to_leader: false,
                ..client_config()
            },
        )
        .await
        .unwrap();
        for a in accounts.iter() {
            let r = fwd.top_up(a, 1, 10).await.expect("top-up via any node");
            assert!(is_ok(r.result));
            fwd.balance(a).await.expect("balance via any node");
        }
    }
    let mut pre = Ledger::default();
    for a in accounts.iter() {
        for _ in 1..=3 {
            pre.acked
                .push((a.clone(), charging_client::new_request_id(), 10));
        }
    }

    // Load from clients on every node, then kill -9 the node leading the
    // most shards.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for id in [1, 2, 3, 1, 2, 3] {
        clients.push(connect(&c.url(id)).await);
    }
    let acks = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(top_up_load(
        clients,
        accounts.clone(),
        50_000,
        stop.clone(),
        acks.clone(),
    ));
    wait_acks(&acks, 100, Duration::from_secs(30)).await;
    let leaders = c.leaders(1).await;
    let mut per_node = [0; 4];
    for l in &leaders {
        per_node[*l as usize] += 1;
    }
    let victim = (1..=3u64).max_by_key(|n| per_node[*n as usize]).unwrap();
    let killed_at = Instant::now();
    c.kill9(victim);
    let at_kill = acks.load(Ordering::Relaxed);
    // Service resumes: 100 more acknowledgements after the kill.
    wait_acks(&acks, at_kill + 100, Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ledger = load.await.unwrap();
    let gap = longest_gap(&ledger.ack_times);
    println!(
        "kill -9 of node {victim} (led {} of {SHARDS} shards): {} ops acknowledged, {} unknown, \
         longest gap between acknowledgements {:?}",
        per_node[victim as usize],
        ledger.acked.len(),
        ledger.unknown.len(),
        gap
    );
    assert!(
        gap < Duration::from_secs(8),
        "service resumed (gap {gap:?})"
    );
    let survivor = if victim == 1 { 2 } else { 1 };
    c.wait_ready(survivor, Duration::from_secs(10)).await;
    // Status tells the dead node apart.
    let cs = connect(&c.url(survivor)).await;
    let reachable = |st: &charging_client::proto::StatusResponse, id: u64| {
        st.nodes.iter().any(|n| n.node_id == id && n.reachable)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while reachable(&cs.status().await.expect("status"), victim) {
        assert!(
            Instant::now() < deadline,
            "killed node still shown reachable"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "the survivors served 100 more operations {:?} after the kill",
        killed_at.elapsed()
    );

    // Restart: the node catches up with the leaders.
    c.launch(victim);
    c.wait_ready(victim, Duration::from_secs(30)).await;
    wait_caught_up(&c, victim, Duration::from_secs(30)).await;
    let st = cs.status().await.expect("status");
    assert!(
        (1..=3).all(|id| reachable(&st, id)),
        "every node reachable again: {:?}",
        st.nodes
    );

    settle(&cs, &mut ledger).await;
    ledger.acked.extend(pre.acked);
    assert_exact(&cs, &accounts, &ledger).await;
    // The restarted node serves too (reads through its own front door).
    let cv = connect(&c.url(victim)).await;
    assert_exact(&cv, &accounts, &ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_of_every_node_loses_no_acknowledged_operation() {
    let mut c = ProcCluster::start(3, "always", LIMITS);
    for id in 1..=3 {
        c.wait_ready(id, Duration::from_secs(30)).await;
    }
    let accounts = Arc::new(accounts("crash", 2));
    let c1 = connect(&c.url(1)).await;
    create_all(&c1, &accounts).await;
    let map_version = wait_disks_registered(&c1, 3).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for id in [1, 2, 3, 1] {
        clients.push(
            Client::connect_with_config(
                c.url(id),
                ClientConfig {
                    deadline_ms: 2_000,
                    ..client_config()
                },
            )
            .await
            .unwrap(),
        );
    }
    let acks = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(top_up_load(
        clients,
        accounts.clone(),
        50_000,
        stop.clone(),
        acks.clone(),
    ));
    // Enough acknowledged work to pass the snapshot threshold.
    wait_acks(&acks, 400, Duration::from_secs(60)).await;
    // Power cut, as far as the processes can tell: all three at once, mid-load.
    for id in 1..=3 {
        c.kill9(id);
    }
    stop.store(true, Ordering::Relaxed);
    let mut ledger = load.await.unwrap();
    println!(
        "crash of all nodes mid-load: {} acknowledged, {} unknown",
        ledger.acked.len(),
        ledger.unknown.len()
    );
    for id in 1..=3 {
        let snaps = std::fs::read_dir(c.data_dir(id).join("snapshots"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert!(snaps > 0, "node {id} keeps snapshots on disk");
    }

    for id in 1..=3 {
        c.launch(id);
    }
    for id in 1..=3 {
        c.wait_ready(id, Duration::from_secs(30)).await;
    }
    let c2 = connect(&c.url(2)).await;
    // Every acknowledged top-up survived; an unknown one may have or not.
    let mut acked: BTreeMap<&str, i64> = BTreeMap::new();
    let mut unknown: BTreeMap<&str, i64> = BTreeMap::new();
    for (a, _, n) in &ledger.acked {
        *acked.entry(a).or_default() += n;
    }
    for (a, _, n) in &ledger.unknown {
        *unknown.entry(a).or_default() += n;
    }
    for a in accounts.iter() {
        let b = main_balance(&c2.balance(a).await.expect("balance"));
        let lo = acked.get(a.as_str()).copied().unwrap_or(0);
        let hi = lo + unknown.get(a.as_str()).copied().unwrap_or(0);
        assert!(
            (lo..=hi).contains(&b),
            "{a}: balance {b} outside [acknowledged {lo}, acknowledged + unknown {hi}]"
        );
    }
    // Retrying the unknown ones with their ids applies each exactly once.
    settle(&c2, &mut ledger).await;
    assert_exact(&c2, &accounts, &ledger).await;

    // A graceful stop and start of all three keeps everything too.
    for id in 1..=3 {
        assert!(c.stop(id), "node {id} stops cleanly on SIGTERM");
    }
    for id in 1..=3 {
        c.launch(id);
    }
    for id in 1..=3 {
        c.wait_ready(id, Duration::from_secs(30)).await;
    }
    let c3 = connect(&c.url(3)).await;
    assert_exact(&c3, &accounts, &ledger).await;
    // The replicated cluster map survived both restarts, unchanged.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = c3.status().await.expect("status");
        if st.map_version == map_version {
            break;
        }
        assert!(
            st.map_version == 0 && Instant::now() < deadline,
            "cluster map version after restarts: {}",
            st.map_version
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
