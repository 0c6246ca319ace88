//! Epochs: leadership changes as the shard actor sees them, and the tasks
//! that watch Raft for it (leadership, log compaction) while the actor lives.
use super::*;

pub(super) fn on_leadership(
    myself: &ActorRef<ShardMsg>,
    st: &mut State,
    leader: Option<NodeId>,
    me_id: Option<LeaderId>,
) {
    let same = match (&st.epoch, &me_id) {
        (Epoch::Starting(l) | Epoch::Leading(l), Some(m)) => l == m,
        (Epoch::Follower { leader: old }, None) => *old == leader,
        _ => false,
    };
    if same {
        return;
    }
    // Any change ends the current epoch.
    end_epoch(st);
    match me_id {
        Some(id) => {
            tracing::debug!(
                node = st.a.node,
                shard = st.a.shard,
                "became leader: starting epoch"
            );
            st.epoch = Epoch::Starting(id);
            let raft = st.a.raft.clone();
            let me = myself.clone();
            tokio::spawn(async move {
                // Retry the read index until it returns in this term or the
                // term ends (then a Leadership message supersedes us).
                for _ in 0..50 {
                    let r = tokio::time::timeout(
                        Duration::from_secs(2),
                        raft.ensure_linearizable(ReadPolicy::ReadIndex),
                    )
                    .await;
                    match (r, raft.as_leader()) {
                        (Ok(Ok(_)), Ok(l)) if l.to_committed_leader_id() == id => {
                            let _ = me.cast(ShardMsg::EpochReady { leader: id });
                            return;
                        }
                        (_, Ok(l)) if l.to_committed_leader_id() == id => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        _ => return,
                    }
                }
            });
        }
        None => {
            st.epoch = Epoch::Follower { leader };
        }
    }
}

/// Ends the epoch: every waiter hears `Unknown` (its entry may still commit
/// under the next leader; a retry with the same request id settles it).
pub(super) fn end_epoch(st: &mut State) {
    if matches!(st.epoch, Epoch::Follower { .. }) && st.accounts.is_empty() {
        return;
    }
    st.a.deciding.store(false, Ordering::Release);
    gauge!("charging_shard_leading", "node" => st.node_label.clone(), "shard" => st.shard_label.clone()).set(0.0);
    for (_, acct) in st.accounts.drain() {
        // `drain` answers ready waiters from the front, so the front of every
        // queue here waits for a commit that will not come under this epoch,
        // and every answer behind it was decided on speculative state that
        // includes it: a duplicate's "ready" result may be the very event that
        // is now lost. All of them are unknown; only refusals (which change
        // nothing) are passed on as they are.
        for w in acct.queue {
            if let Some(tx) = w.tx {
                tx.send(match w.state {
                    WaitState::Ready(o @ (Outcome::Overloaded(_) | Outcome::Unknown(_))) => o,
                    _ => Outcome::Unknown("leadership changed; retry with the same request id"),
                });
            }
        }
        st.a.active_accounts.fetch_sub(1, Ordering::Relaxed);
    }
    for (_, b) in std::mem::take(&mut st.inflight) {
        for tx in b.tariff_replies {
            let _ = tx.send(Outcome::Unknown("leadership changed"));
        }
    }
    for tx in st.open_tariff_replies.drain(..) {
        let _ = tx.send(Outcome::Unknown("leadership changed"));
    }
    st.open.clear();
    st.open_members.clear();
    st.reads_open.clear();
    st.reads_pending.clear();
}

/// Watches this replica's Raft server metrics (vote, state, leader: they
/// change on elections only, unlike the full metrics, which change with
/// every entry and would wake this task per entry) and tells the actor which
/// node leads (`me` is this replica's member id; the actor hears node ids).
/// This replica leads under the committed vote naming it, as in
/// `Raft::as_leader`, read from the same snapshot of the metrics.
/// Ends with the actor's state (`alive`), not only with a failed send: a
/// dead actor's watcher would otherwise live on until the next election.
pub(super) fn spawn_leadership_watcher(
    raft: Raft,
    me: NodeId,
    actor: ActorRef<ShardMsg>,
    alive: tokio::sync::watch::Receiver<()>,
) {
    use openraft::vote::RaftLeaderId;
    spawn_while_alive(alive, async move {
        let mut rx = raft.server_metrics();
        drop(raft);
        let mut last: Option<(Option<NodeId>, Option<LeaderId>)> = None;
        loop {
            let (leader, me_id) = {
                let m = rx.borrow_watched();
                let vote_leader = m.vote.leader_id();
                let me_id = (m.vote.is_committed()
                    && *vote_leader.node_id() == me
                    && m.current_leader == Some(me))
                .then(|| vote_leader.to_committed());
                (m.current_leader, me_id)
            };
            let leader = leader.map(crate::raft::node_of);
            if last != Some((leader, me_id)) {
                last = Some((leader, me_id));
                if actor.cast(ShardMsg::Leadership { leader, me_id }).is_err() {
                    return;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Accounts bulk-created since the last snapshot past which a replica
/// snapshots and purges its log at once (or half its accounts, if more:
/// snapshots of a growing shard then cost O(accounts) in all).
pub const BULK_COMPACT_ACCOUNTS: u64 = 50_000;
/// A smaller bulk residue is compacted once no bulk event came for this long.
const BULK_COMPACT_QUIET: Duration = Duration::from_secs(2);

/// On every replica (leader or follower): once bulk loads have added enough
/// accounts since the last snapshot (see [`BULK_COMPACT_ACCOUNTS`]), or any
/// and then none for [`BULK_COMPACT_QUIET`], builds a snapshot and purges
/// the log it covers. Bulk entries are few and large, so the entry-count
/// snapshot policy would keep them in the in-memory log (tens of bytes per
/// account) long after the load. Ends with the Raft instance, or with its
/// actor (`alive`): a restarted actor starts its own, and two compactors on
/// one replica would snapshot twice.
pub(super) fn spawn_compactor(
    raft: Raft,
    store: ShardStore,
    alive: tokio::sync::watch::Receiver<()>,
) {
    spawn_while_alive(alive, async move {
        let mut rx = raft.metrics();
        // Server metrics change on elections only: waiting on them with a
        // timeout is a 1 s tick that also ends with the Raft instance (the
        // full metrics would wake this task on every entry).
        let mut ends = raft.server_metrics();
        let mut seen = 0u64;
        let mut changed_at = Instant::now();
        loop {
            if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), ends.changed()).await {
                return;
            }
            let bulk = store.bulk_since_snapshot();
            if bulk != seen {
                seen = bulk;
                changed_at = Instant::now();
            }
            if bulk == 0 {
                continue;
            }
            let accounts = store.read(|s| s.accounts.len() as u64);
            let big = bulk >= BULK_COMPACT_ACCOUNTS.max(accounts / 2);
            if !big && changed_at.elapsed() < BULK_COMPACT_QUIET {
                continue;
            }
            let Some(target) = store.applied() else {
                continue;
            };
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            // Wait (bounded) for a snapshot that covers `target`, then purge.
            for _ in 0..600 {
                let snap = rx.borrow_watched().snapshot;
                if snap.is_some_and(|s| s.index() >= target.index()) {
                    let _ = raft.trigger().purge_log(target.index()).await;
                    break;
                }
                if let Ok(Err(_)) =
                    tokio::time::timeout(Duration::from_millis(100), rx.changed()).await
                {
                    return;
                }
            }
            seen = store.bulk_since_snapshot();
            changed_at = Instant::now();
        }
    });
}

/// Runs `task` until it ends or the actor state owning `alive`'s sender is
/// dropped (nothing is ever sent on it: `changed` returns only then).
pub(super) fn spawn_while_alive(
    mut alive: tokio::sync::watch::Receiver<()>,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = task => {}
            _ = alive.changed() => {}
        }
    });
}
