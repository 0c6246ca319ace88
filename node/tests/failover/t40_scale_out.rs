//! Scale-out under load (issue 5): nodes join and drain while reserve/commit
//! pairs flow. Replicas and leaders end balanced, removed replicas are
//! dropped, reservations opened before a move commit after it, and the
//! balances equal exactly what was acknowledged (nothing lost, nothing twice).
use super::*;
use charging_client::{new_request_id, proto::ResultCode, Client, ClientConfig};
use charging_node::cluster::ConfigTweak;
use charging_node::raft::node_of;
use openraft::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const SHARDS: u32 = 8;
const INITIAL: i64 = 10_000_000;
const WORKERS: usize = 6;

fn tweak() -> ConfigTweak {
    Arc::new(|cfg| {
        cfg.placement.period = Duration::from_millis(200);
        cfg.placement.max_moves = 2;
        cfg.leader_balance_period = Some(Duration::from_millis(300));
    })
}

async fn start() -> LocalCluster {
    let c = LocalCluster::start(ClusterOptions {
        nodes: 3,
        shards: SHARDS,
        tweak: Some(tweak()),
        ..Default::default()
    })
    .await
    .expect("cluster starts");
    c.wait_ready(Duration::from_secs(30)).await.expect("ready");
    c
}

/// One account per shard.
fn accounts(prefix: &str) -> Vec<String> {
    (0..SHARDS)
        .map(|s| {
            (0..10_000)
                .map(|n| format!("{prefix}-{n}"))
                .find(|id| shard_of(id, SHARDS) == s)
                .expect("an id per shard")
        })
        .collect()
}

/// Continuous reserve → commit pairs on every account until stopped; each
/// call retried with its request id until it settles. Returns the charges
/// acknowledged per account.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<BTreeMap<String, i64>>>,
}

impl Load {
    fn start(cl: &Client, accounts: &[String]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let (cl, stop, done) = (cl.clone(), stop.clone(), done.clone());
            let accounts = accounts.to_vec();
            tasks.push(tokio::spawn(async move {
                let mut charged: BTreeMap<String, i64> = BTreeMap::new();
                let mut i = 0usize;
                // Bounded: at most 2,000 pairs per worker.
                while !stop.load(Ordering::Relaxed) && i < 2_000 {
                    let a = accounts[(w + i * WORKERS) % accounts.len()].clone();
                    let session = format!("{a}-w{w}-{i}");
                    let rid = new_request_id();
                    let r = settle(|| {
                        cl.reserve_with_id(rid, a.clone(), session.clone(), 0, RG, mb(2))
                    })
                    .await;
                    assert_eq!(r.result, ResultCode::Ok as i32, "reserve {a}");
                    let cid = new_request_id();
                    let m =
                        settle(|| cl.commit_with_id(cid, a.clone(), r.reservation_id, mb(1), true))
                            .await;
                    assert_eq!(m.result, ResultCode::Ok as i32, "commit {a}");
                    *charged.entry(a).or_default() += m.charged;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                charged
            }));
        }
        Load { stop, done, tasks }
    }

    /// Waits until `n` more pairs are acknowledged (progress continues).
    async fn progress(&self, n: usize, what: &str) {
        let start = self.done.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.done.load(Ordering::Relaxed) < start + n {
            assert!(Instant::now() < deadline, "no progress {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> (usize, BTreeMap<String, i64>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total: BTreeMap<String, i64> = BTreeMap::new();
        for t in self.tasks {
            for (a, c) in t.await.expect("worker") {
                *total.entry(a).or_default() += c;
            }
        }
        (self.done.load(Ordering::Relaxed), total)
    }
}

/// Replicas each node hosts (actually running), and shards each leads.
fn hosted(c: &LocalCluster) -> (BTreeMap<u64, usize>, BTreeMap<u64, usize>) {
    let mut replicas = BTreeMap::new();
    let mut leaders = BTreeMap::new();
    for (id, n) in &c.nodes {
        replicas.insert(*id, n.hosted.len());
        leaders.insert(*id, 0);
    }
    for s in 0..SHARDS {
        if let Some(l) = c.deciding_leader(s) {
            *leaders.get_mut(&l).expect("node") += 1;
        }
    }
    (replicas, leaders)
}

fn within_one(counts: &BTreeMap<u64, usize>, total: usize) -> bool {
    let n = counts.len();
    let (lo, hi) = (total / n, total.div_ceil(n));
    counts.values().all(|c| *c >= lo && *c <= hi)
}

/// Every shard's group membership equals the map's intent, and every node
/// hosts exactly the replicas the map places on it (removed ones dropped).
fn converged(c: &LocalCluster) -> bool {
    let Some(map) = c.nodes.values().next().and_then(|n| n.front_door.map()) else {
        return false;
    };
    for s in 0..SHARDS {
        let want: BTreeSet<u64> = map.placement[&s].iter().copied().collect();
        let Some(l) = c.deciding_leader(s) else {
            return false;
        };
        let raft = c.nodes[&l].raft(s);
        let m = raft.metrics().borrow_watched().clone();
        let mem = m.membership_config.membership();
        let voters: BTreeSet<u64> = mem.voter_ids().collect();
        if voters != want || mem.learner_ids().count() > 0 || mem.get_joint_config().len() > 1 {
            return false;
        }
    }
    for (id, n) in &c.nodes {
        let want: BTreeSet<(u32, u64)> = (0..SHARDS)
            .filter_map(|s| map.replica_on(s, *id).map(|r| (s, r)))
            .collect();
        let have: BTreeSet<(u32, u64)> = n.hosted.iter().map(|h| (h.shard, h.replica)).collect();
        if want != have {
            return false;
        }
    }
    true
}

async fn wait_converged(c: &LocalCluster, what: &str) -> Duration {
    let t = Instant::now();
    let deadline = t + Duration::from_secs(90);
    loop {
        let (replicas, leaders) = hosted(c);
        if converged(c)
            && within_one(&replicas, SHARDS as usize * 3)
            && within_one(&leaders, SHARDS as usize)
        {
            return t.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not converged in 90 s: replicas {replicas:?} leaders {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens one reservation per account (to be committed after the moves).
async fn open_reservations(cl: &Client, accounts: &[String]) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for a in accounts {
        let rid = new_request_id();
        let r =
            settle(|| cl.reserve_with_id(rid, a.clone(), format!("{a}-pre"), 0, RG, mb(5))).await;
        assert_eq!(r.result, ResultCode::Ok as i32);
        out.push((a.clone(), r.reservation_id));
    }
    out
}

/// Commits the reservations opened before the moves: each must still be
/// there and charge. Returns the charges.
async fn commit_reservations(cl: &Client, open: &[(String, u64)]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for (a, r) in open {
        let cid = new_request_id();
        let m = settle(|| cl.commit_with_id(cid, a.clone(), *r, mb(3), true)).await;
        assert_eq!(
            m.result,
            ResultCode::Ok as i32,
            "reservation {r} of {a} after the move"
        );
        assert_eq!(m.charged, 3, "3 MB at 1 cent per MB");
        out.insert(a.clone(), m.charged);
    }
    out
}

async fn check_balances(cl: &Client, accounts: &[String], charged: &[&BTreeMap<String, i64>]) {
    for a in accounts {
        let want = INITIAL
            - charged
                .iter()
                .map(|m| m.get(a).copied().unwrap_or(0))
                .sum::<i64>();
        let b = settle(|| cl.balance(a.clone())).await;
        let main = b
            .buckets
            .iter()
            .find(|b| b.bucket_id == 1)
            .expect("main bucket");
        assert_eq!(main.balance, want, "{a}: balance vs acknowledged charges");
        assert_eq!(main.reserved, 0, "{a}: nothing left reserved");
    }
}

async fn setup(c: &LocalCluster, prefix: &str) -> (Client, Vec<String>) {
    let cl = client(c.public_url(1)).await;
    set_data_tariff(&cl).await;
    let accounts = accounts(prefix);
    for a in &accounts {
        let r = settle(|| cl.create_account(a.clone(), "EUR", INITIAL, 0, vec![])).await;
        assert_eq!(r.result, ResultCode::Ok as i32);
    }
    (cl, accounts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_two_nodes_under_load_rebalances_and_loses_nothing() {
    let mut c = start().await;
    let (cl, accounts) = setup(&c, "grow").await;
    let open = open_reservations(&cl, &accounts).await;
    let load = Load::start(&cl, &accounts);
    load.progress(20, "before the join").await;

    let t = Instant::now();
    c.add_node(4, 1).await.expect("node 4 starts");
    c.add_node(5, 2).await.expect("node 5 starts");
    load.progress(10, "while moving").await;
    let took = wait_converged(&c, "after adding nodes 4 and 5").await;
    let (replicas, leaders) = hosted(&c);
    println!(
        "rebalanced onto 5 nodes in {:.1} s (converged {:.1} s after the check began): replicas {replicas:?} leaders {leaders:?}",
        t.elapsed().as_secs_f64(),
        took.as_secs_f64()
    );
    assert!(
        replicas[&4] > 0 && replicas[&5] > 0,
        "new nodes hold replicas"
    );
    load.progress(20, "after the move").await;
    let (pairs, charged) = load.finish().await;
    println!("{pairs} reserve/commit pairs acknowledged across the move");

    // The client knows the new layout: ask a new node directly.
    let cl5 = client(c.public_url(5)).await;
    let after = commit_reservations(&cl5, &open).await;
    check_balances(&cl5, &accounts, &[&charged, &after]).await;
    let map = c.nodes[&1].front_door.map().expect("map");
    assert!(map.version > 2, "the map changed: version {}", map.version);
    assert!(
        map.next_incarnation > 2,
        "new replicas got fresh incarnations"
    );

    // A node that does not host a shard forwards to the leader it last saw.
    // When that leader dies, it must find the new one (not keep the dead
    // hint): kill the leader of account 0's shard, charge through an
    // outsider.
    let a = &accounts[0];
    let s = shard_of(a, SHARDS);
    let leader = c.deciding_leader(s).expect("leader");
    let outsider = *c
        .nodes
        .iter()
        .find(|(id, n)| **id != leader && n.replica(s).is_none())
        .expect("a node without the shard")
        .0;
    // Through the outsider's front door only (no direct-to-leader calls).
    let via = Client::connect_with_config(
        c.public_url(outsider),
        ClientConfig {
            deadline_ms: 3_000,
            max_retries: 10,
            direct_to_leader: false,
            ..Default::default()
        },
    )
    .await
    .expect("client");
    let before = settle(|| via.balance(a.clone())).await;
    assert!(
        c.nodes[&outsider].front_door.hints.get(&s).is_some(),
        "hint learned"
    );
    c.kill(leader).await;
    let rid = new_request_id();
    let t = Instant::now();
    let r = settle(|| via.top_up_with_id(rid, a.clone(), 1, 5)).await;
    assert_eq!(r.result, ResultCode::Ok as i32);
    println!(
        "charged through node {outsider} {:.1} s after its hinted leader {leader} died",
        t.elapsed().as_secs_f64()
    );
    let after = settle(|| via.balance(a.clone())).await;
    assert_eq!(after.available, before.available + 5);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_node_empties_it_and_loses_nothing() {
    let mut c = start().await;
    let (cl, accounts) = setup(&c, "drain").await;
    c.add_node(4, 1).await.expect("node 4 starts");
    wait_converged(&c, "after adding node 4").await;

    let open = open_reservations(&cl, &accounts).await;
    let load = Load::start(&cl, &accounts);
    load.progress(20, "before the drain").await;
    // Node 1: an initial member, a metadata voter, the client's entry point.
    let admin = client(c.public_url(2)).await;
    let r = admin.remove_node(3, false).await;
    assert!(
        matches!(&r, Err(e) if format!("{e:?}").contains("drain it first")),
        "removing a node that holds replicas is refused: {r:?}"
    );
    let t = Instant::now();
    admin.drain_node(1).await.expect("drain");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let map = c.nodes[&2].front_door.map().expect("map");
        let placed = (0..SHARDS)
            .filter(|s| map.replica_on(*s, 1).is_some())
            .count();
        let meta_voter = c.nodes[&2]
            .meta
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .any(|r| node_of(r) == 1);
        if placed == 0 && c.nodes[&1].hosted.is_empty() && !meta_voter {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "drain: node 1 still places {placed} / hosts {} replicas, metadata voter {meta_voter}",
            c.nodes[&1].hosted.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("node 1 drained in {:.1} s", t.elapsed().as_secs_f64());
    load.progress(20, "after the drain").await;
    let (pairs, charged) = load.finish().await;
    println!("{pairs} reserve/commit pairs acknowledged across the drain");
    let after = commit_reservations(&admin, &open).await;
    check_balances(&admin, &accounts, &[&charged, &after]).await;

    // Now it can go; its id never comes back.
    let v = admin
        .remove_node(1, false)
        .await
        .expect("remove a drained node");
    assert!(v.map_version > 0);
    let again = admin.add_node(1, "127.0.0.1:1", "127.0.0.1:2").await;
    assert!(again.is_err(), "a removed id is refused");
    c.shutdown().await;
}

/// A membership change cut short leaves a joint configuration behind (as a
/// leader crash between the joint and the uniform entry does). The shard's
/// leader finishes it back to the map's intent, and the stray member leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joint_configuration_left_behind_is_finished() {
    let c = start().await;
    let (cl, accounts) = setup(&c, "joint").await;
    let s = shard_of(&accounts[0], SHARDS);
    let leader = c.deciding_leader(s).expect("leader");
    let raft = c.nodes[&leader].raft(s);
    let (intent, mut nodes) = {
        let m = raft.metrics().borrow_watched().clone();
        let mem = m.membership_config.membership().clone();
        let voters: BTreeSet<u64> = mem.voter_ids().collect();
        let nodes: BTreeMap<u64, openraft::BasicNode> =
            mem.nodes().map(|(id, n)| (*id, n.clone())).collect();
        (voters, nodes)
    };
    // A member nobody hosts, then a joint config that swaps it in.
    let stray = charging_node::raft::replica_id(99, 77);
    raft.add_learner(stray, openraft::BasicNode::new("127.0.0.1:1"), false)
        .await
        .expect("learner");
    nodes.insert(stray, openraft::BasicNode::new("127.0.0.1:1"));
    let mut other = intent.clone();
    let dropped = *intent
        .iter()
        .find(|r| node_of(**r) != leader)
        .expect("a follower");
    other.remove(&dropped);
    other.insert(stray);
    let joint = openraft::Membership::new(vec![intent.clone(), other], nodes).expect("membership");
    // No precondition: the reconciler may remove the stray learner at any
    // moment, and this entry must go in regardless (it re-adds it).
    tokio::time::timeout(
        Duration::from_secs(10),
        raft.append_membership(joint, openraft::EntryPayload::Blank, []),
    )
    .await
    .expect("append in time")
    .expect("joint membership appended");
    let joint_now = raft
        .metrics()
        .borrow_watched()
        .membership_config
        .membership()
        .get_joint_config()
        .len();
    assert_eq!(joint_now, 2, "the group is in a joint configuration");
    let t = Instant::now();
    let deadline = t + Duration::from_secs(30);
    loop {
        let done = c.deciding_leader(s).is_some_and(|l| {
            let m = c.nodes[&l].raft(s).metrics().borrow_watched().clone();
            let mem = m.membership_config.membership();
            mem.get_joint_config().len() == 1
                && mem.voter_ids().collect::<BTreeSet<_>>() == intent
                && mem.learner_ids().count() == 0
        });
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "joint configuration not finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "joint configuration finished back to the intent in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // The shard still serves.
    let rid = new_request_id();
    let r = settle(|| cl.top_up_with_id(rid, accounts[0].clone(), 1, 1)).await;
    assert_eq!(r.result, ResultCode::Ok as i32);
    c.shutdown().await;
}
