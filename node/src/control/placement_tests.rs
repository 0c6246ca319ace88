//! Unit tests of the placement driver's pure parts.
use super::*;
use crate::control::meta::NodeEntry;

fn map(nodes: u64, shards: u32, rf: u64) -> ClusterMap {
    let mut m = ClusterMap {
        version: 1,
        shards,
        replication_factor: rf as u32,
        next_incarnation: 2,
        ..Default::default()
    };
    for n in 1..=nodes {
        m.nodes.insert(
            n,
            NodeEntry {
                public: format!("p{n}"),
                internal: format!("i{n}"),
                draining: false,
            },
        );
    }
    for s in 0..shards {
        m.placement
            .insert(s, (1..=rf).map(|n| replica_id(n, 1)).collect());
    }
    m.leaders = spread_leaders(&m);
    m
}

fn loads(m: &ClusterMap) -> BTreeMap<u64, usize> {
    let mut l: BTreeMap<u64, usize> = m.nodes.keys().map(|n| (*n, 0)).collect();
    for reps in m.placement.values() {
        for r in reps {
            *l.entry(node_of(*r)).or_default() += 1;
        }
    }
    l
}

/// Runs the planner to a fixed point, every shard settling between rounds.
fn settle(mut m: ClusterMap, k: usize) -> (ClusterMap, usize) {
    let all: BTreeSet<ShardId> = (0..m.shards).collect();
    let mut rounds = 0;
    while let Some((next, _)) = plan(&m, &all, k) {
        // At most k shards change per round, one replica each.
        let changed = (0..m.shards)
            .filter(|s| m.placement[s] != next.placement[s])
            .count();
        assert!(changed <= k, "{changed} shards moved at once, limit {k}");
        for s in 0..m.shards {
            let before: BTreeSet<_> = m.placement[&s].iter().collect();
            let after: BTreeSet<_> = next.placement[&s].iter().collect();
            assert!(
                before.symmetric_difference(&after).count() <= 2,
                "shard {s} moved >1 replica"
            );
            assert!(next.placement[&s].len() >= m.replication_factor as usize);
        }
        m = next;
        rounds += 1;
        assert!(rounds < 200, "planner does not converge");
    }
    (m, rounds)
}

#[test]
fn adding_nodes_balances_replicas_and_leaders_within_one() {
    let mut m = map(3, 16, 3);
    for n in 4..=5 {
        m.nodes.insert(
            n,
            NodeEntry {
                public: format!("p{n}"),
                internal: format!("i{n}"),
                draining: false,
            },
        );
    }
    let (m, _) = settle(m, 4);
    let l = loads(&m);
    let (min, max) = (l.values().min().unwrap(), l.values().max().unwrap());
    assert!(max - min <= 1, "replicas {l:?}");
    let mut leaders: BTreeMap<u64, usize> = BTreeMap::new();
    for (s, n) in &m.leaders {
        assert!(m.nodes_of(*s).contains(n), "leader off its shard");
        *leaders.entry(*n).or_default() += 1;
    }
    let (min, max) = (
        leaders.values().min().unwrap(),
        leaders.values().max().unwrap(),
    );
    assert_eq!(leaders.len(), 5, "{leaders:?}");
    assert!(max - min <= 1, "leaders {leaders:?}");
    // New replicas have fresh incarnations, each used once.
    let mut seen = BTreeSet::new();
    for reps in m.placement.values() {
        for r in reps.iter().filter(|r| crate::raft::incarnation_of(**r) > 1) {
            assert!(
                seen.insert(crate::raft::incarnation_of(*r)),
                "incarnation of {r} reused"
            );
        }
    }
    assert!(
        seen.len() >= 8,
        "replicas moved onto nodes 4 and 5: {seen:?}"
    );
}

#[test]
fn draining_moves_every_replica_off_and_respects_the_limit() {
    let mut m = map(4, 8, 3);
    let (mut m, _) = settle(std::mem::take(&mut m), 2);
    m.nodes.get_mut(&2).unwrap().draining = true;
    let (m, _) = settle(m, 2);
    assert_eq!(loads(&m)[&2], 0);
    assert!(m.leaders.values().all(|n| *n != 2));
    for reps in m.placement.values() {
        assert_eq!(reps.len(), 3);
    }
}

#[test]
fn unsettled_shards_use_up_the_budget() {
    let mut m = map(3, 4, 3);
    m.nodes.insert(
        4,
        NodeEntry {
            public: "p4".into(),
            internal: "i4".into(),
            draining: false,
        },
    );
    // Shards 0 and 1 already moving, limit 2: nothing new starts.
    let settled: BTreeSet<ShardId> = [2, 3].into();
    assert!(plan(&m, &settled, 2).is_none());
    // Limit 3: one more shard moves, a settled one.
    let (next, moves) = plan(&m, &settled, 3).unwrap();
    assert_eq!(moves, 1);
    assert_eq!(next.placement[&0], m.placement[&0]);
    assert_eq!(next.placement[&1], m.placement[&1]);
    assert!(next.placement[&2] != m.placement[&2] || next.placement[&3] != m.placement[&3]);
}

#[test]
fn a_replica_returning_to_a_node_gets_a_new_incarnation() {
    let mut m = map(4, 1, 3);
    m.nodes.get_mut(&1).unwrap().draining = true;
    let (mut m, _) = settle(m, 1);
    assert!(!m.nodes_of(0).contains(&1));
    m.nodes.get_mut(&1).unwrap().draining = false;
    m.nodes.get_mut(&2).unwrap().draining = true;
    let (m, _) = settle(m, 1);
    let back = m.replica_on(0, 1).expect("back on node 1");
    assert_ne!(back, replica_id(1, 1));
}
