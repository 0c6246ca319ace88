//! Scale-out with real processes: `chargerd start` with `join`, on real disk.
use crate::support::*;
use charging_client::{is_ok, Client};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Small snapshot threshold: new replicas are caught up by snapshot.
const LIMITS: &str = "snapshot_logs = 20";

/// Status of the metadata leader (it knows the moves in progress).
async fn driver_status(c: &ProcCluster) -> Option<charging_client::proto::StatusResponse> {
    let any = Client::connect_with_config(c.url(1), client_config())
        .await
        .ok()?;
    let s = any.status().await.ok()?;
    let leader = c.procs.get(&s.meta_leader)?;
    Client::connect_with_config(leader.public.clone(), client_config())
        .await
        .ok()?
        .status()
        .await
        .ok()
}

/// Waits until the map places `want(replicas)` on `node` and no move runs.
async fn wait_placed(
    c: &ProcCluster,
    node: u64,
    want: impl Fn(u32) -> bool,
    what: &str,
) -> Duration {
    let t = Instant::now();
    let deadline = t + Duration::from_secs(90);
    loop {
        if let Some(s) = driver_status(c).await {
            let placed = s
                .nodes
                .iter()
                .find(|n| n.node_id == node)
                .map(|n| n.replicas);
            if placed.is_some_and(&want) && s.moves_in_progress == 0 {
                // The node itself hosts exactly that many (dropped ones gone).
                if let Ok(Ok(mine)) = tokio::time::timeout(Duration::from_secs(2), async {
                    Client::connect_with_config(c.url(node), client_config())
                        .await?
                        .status()
                        .await
                })
                .await
                {
                    if mine.shard_status.len() as u32 == placed.unwrap_or(0) {
                        return t.elapsed();
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "{what}: not within 90 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_under_load_survives_kill9_and_drains() {
    let mut c = ProcCluster::start(3, "never", LIMITS);
    for id in 1..=3 {
        c.wait_ready(id, Duration::from_secs(30)).await;
    }
    let cl = connect(&c.url(1)).await;
    // Drain and remove are an operator's, on the admin listener.
    let ops = connect_admin(&c.admin_url(1)).await;
    let accounts = Arc::new(accounts("grow", 2));
    for a in accounts.iter() {
        let r = cl
            .create_account(a, "EUR", 0, 0, Vec::new())
            .await
            .expect("create");
        assert!(is_ok(r.result), "create {a}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(top_up_load(
        vec![
            connect(&c.url(2)).await,
            connect(&c.url(3)).await,
            cl.clone(),
        ],
        accounts.clone(),
        20_000,
        stop.clone(),
        acks.clone(),
    ));
    wait_acks(&acks, 50, Duration::from_secs(30)).await;

    // Join: 12 replicas over 4 nodes = 3 each.
    c.add_joiner(4, 2, "never", LIMITS);
    let took = wait_placed(&c, 4, |r| r == 3, "node 4 takes 3 replicas").await;
    println!(
        "node 4 joined and took its replicas in {:.1} s",
        took.as_secs_f64()
    );
    let n = acks.load(Ordering::Relaxed);
    wait_acks(&acks, n + 50, Duration::from_secs(30)).await;

    // kill -9 and restart: its replicas (new incarnations) come back from disk.
    c.kill9(4);
    c.launch(4);
    let took = wait_placed(&c, 4, |r| r == 3, "node 4 back with its replicas").await;
    println!(
        "node 4 restarted with its replicas in {:.1} s",
        took.as_secs_f64()
    );
    let replicas = std::fs::read_to_string(c.data_dir(4).join("replicas")).expect("replica list");
    assert_eq!(
        replicas.lines().count(),
        3,
        "persisted replica list:\n{replicas}"
    );

    // Drain it under load, then take it out.
    ops.drain_node(4).await.expect("drain");
    let took = wait_placed(&c, 4, |r| r == 0, "node 4 drained").await;
    println!("node 4 drained in {:.1} s", took.as_secs_f64());
    let n = acks.load(Ordering::Relaxed);
    wait_acks(&acks, n + 50, Duration::from_secs(30)).await;
    assert!(c.stop(4), "node 4 stops cleanly");
    ops.remove_node(4, false)
        .await
        .expect("remove the drained node");

    // Node 5 joins, then loses its disk: it must not come back under its
    // old member ids. It finds its disk id unknown to the cluster and exits
    // before running anything; a forced remove re-creates its replicas
    // elsewhere.
    c.add_joiner(5, 1, "never", LIMITS);
    wait_placed(&c, 5, |r| r == 3, "node 5 takes 3 replicas").await;
    c.kill9(5);
    let data = c.data_dir(5);
    std::fs::remove_dir_all(&data).expect("wipe");
    std::fs::create_dir_all(&data).expect("empty data dir");
    c.launch(5);
    let status = c
        .wait_exit(5, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("node 5 kept running on an empty dir:\n{}", c.log(5)));
    assert!(!status.success(), "node 5 exits non-zero");
    assert!(
        c.log(5).contains("is not the one the cluster knows"),
        "node 5 says why:\n{}",
        c.log(5)
    );
    if let Err(e) = ops.remove_node(5, true).await {
        for id in 1..=3 {
            let log = c.log(id);
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("panic") && !l.contains("failed to send RaftMsg"))
                .take(20)
                .collect();
            eprintln!(
                "---- node {id}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        panic!("forced remove: {e}");
    }
    let took = wait_placed(&c, 1, |r| r == 4, "replicas of node 5 re-created on 1-3").await;
    println!(
        "node 5's replicas re-created on nodes 1-3 in {:.1} s",
        took.as_secs_f64()
    );
    let n = acks.load(Ordering::Relaxed);
    wait_acks(&acks, n + 50, Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ledger = load.await.expect("load");
    println!(
        "{} top-ups acknowledged, {} unknown (retried below) across join, kill -9, drain and a lost disk",
        ledger.acked.len(),
        ledger.unknown.len()
    );
    // Unknown outcomes settle exactly once on retry with their request ids.
    for (a, id, amount) in std::mem::take(&mut ledger.unknown) {
        let r = cl.top_up_with_id(id, &a, 1, amount).await.expect("retry");
        assert!(is_ok(r.result));
        ledger.acked.push((a, id, amount));
    }
    let mut want = std::collections::BTreeMap::new();
    for (a, _, amount) in &ledger.acked {
        *want.entry(a.clone()).or_insert(0i64) += amount;
    }
    for a in accounts.iter() {
        let b = cl.balance(a).await.expect("balance");
        assert_eq!(
            main_balance(&b),
            want.get(a).copied().unwrap_or(0),
            "balance of {a}"
        );
    }
}

/// An initial member loses its data dir (kill -9, wiped, restarted): it
/// finds its disk id unknown to the cluster and exits non-zero before it
/// runs anything, so it votes for nobody and hosts nothing; the other two
/// keep serving. After `remove --force`, the machine rejoins under a new
/// id, takes replicas, and every acknowledged top-up is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_initial_member_that_lost_its_disk_is_kept_out_until_it_rejoins() {
    let mut c = ProcCluster::start(3, "never", LIMITS);
    for id in 1..=3 {
        c.wait_ready(id, Duration::from_secs(30)).await;
    }
    let cl = connect(&c.url(1)).await;
    let ops = connect_admin(&c.admin_url(1)).await;
    wait_disks_registered(&cl, 3).await;
    let accounts = Arc::new(accounts("lost", 2));
    for a in accounts.iter() {
        let r = cl.create_account(a, "EUR", 0, 0, Vec::new()).await.unwrap();
        assert!(is_ok(r.result), "create {a}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(top_up_load(
        vec![connect(&c.url(1)).await, connect(&c.url(2)).await],
        accounts.clone(),
        100_000,
        stop.clone(),
        acks.clone(),
    ));
    wait_acks(&acks, 50, Duration::from_secs(30)).await;

    c.kill9(3);
    let data = c.data_dir(3);
    std::fs::remove_dir_all(&data).expect("wipe");
    std::fs::create_dir_all(&data).expect("empty data dir");
    c.launch(3);
    let status = c
        .wait_exit(3, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("node 3 kept running on an empty dir:\n{}", c.log(3)));
    assert!(!status.success(), "exits non-zero");
    let log = c.log(3);
    assert!(
        log.contains("is not the one the cluster knows"),
        "the log says why:\n{log}"
    );
    let n = acks.load(Ordering::Relaxed);
    wait_acks(&acks, n + 50, Duration::from_secs(30)).await;

    // The machine rejoins under a new id (node 4), then the operator takes
    // node 3 out (with 3 nodes and 3 replicas a shard, not before): node
    // 3's replicas are re-created on node 4.
    c.add_joiner(4, 1, "never", LIMITS);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cl
        .status()
        .await
        .is_ok_and(|s| s.nodes.iter().any(|n| n.node_id == 4))
    {
        assert!(Instant::now() < deadline, "node 4 joins:\n{}", c.log(4));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ops.remove_node(3, true).await.expect("forced remove");
    let took = wait_placed(&c, 4, |r| r == SHARDS, "node 4 hosts node 3's replicas").await;
    println!(
        "node 4 (node 3's machine, empty) took every shard's replica in {:.1} s",
        took.as_secs_f64()
    );
    let n = acks.load(Ordering::Relaxed);
    wait_acks(&acks, n + 50, Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ledger = load.await.expect("load");
    settle(&cl, &mut ledger).await;
    assert_exact(&cl, &accounts, &ledger).await;
    println!(
        "{} top-ups acknowledged, balances exact",
        ledger.acked.len()
    );
}
