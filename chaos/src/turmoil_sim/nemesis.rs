//! The nemesis: the faults a seed injects.
use super::*;

pub(super) struct Nemesis {
    pub(super) rng: Rng,
    /// Nodes in the run (the spare counts once added).
    pub(super) nodes: u64,
    /// Initial members (the spare is `initial + 1`).
    pub(super) initial: u64,
    pub(super) crashed: Vec<u64>,
    pub(super) faults: TurmoilFaults,
    /// Simulated ms of the current step (for traces).
    pub(super) now: u64,
    pub(super) spare_added: bool,
    pub(super) drain_asked: bool,
    /// Faults drawn so far; the spare is added at fault `add_at` and a
    /// member drained at fault `drain_at` (drawn from the seed).
    pub(super) acts: u64,
    pub(super) add_at: u64,
    pub(super) drain_at: u64,
    pub(super) cfg: TurmoilConfig,
    pub(super) seed: u64,
    pub(super) shared: Arc<Shared>,
    /// A tail trap: (leader, last step it may go off at).
    pub(super) trap: Option<(u64, u64)>,
}

impl Nemesis {
    /// With `CHAOS_DUMP` set, prints each fault with its simulated time.
    pub(super) fn trace(&self, what: String) {
        if std::env::var_os("CHAOS_DUMP").is_some() {
            eprintln!("nemesis t={} {what}", self.now);
        }
    }

    pub(super) fn leader_of_some_shard(&mut self, slots: &[Slot]) -> Option<u64> {
        let mut leaders = Vec::new();
        for slot in slots.iter().filter(|s| s.is_active()) {
            if let Some(h) = slot.replicas() {
                if h.iter().any(|s| s.is_deciding()) && !self.crashed.contains(&slot.id) {
                    leaders.push(slot.id);
                }
            }
        }
        self.rng.pick(&leaders).copied()
    }

    /// Scale-out under faults: first the spare joins (through node 1, and
    /// replicas move onto it), later one initial member is drained (asked of
    /// the cluster by the client host, once the spare holds replicas).
    pub(super) fn scale(&mut self, sim: &mut turmoil::Sim<'_>, slots: &[Slot]) {
        if !self.spare_added {
            let id = self.initial + 1;
            let slot = slots[id as usize - 1].clone();
            slot.active.store(true, Ordering::SeqCst);
            let ncfg = node_config(id, &self.cfg, self.seed);
            sim.host(name(id), move || run_node(ncfg.clone(), slot.clone()));
            self.spare_added = true;
            self.nodes += 1;
            self.shared.nodes.store(self.nodes, Ordering::SeqCst);
            self.faults.adds += 1;
            self.trace(format!("add n{id}"));
        } else if !self.drain_asked {
            let victim = self.rng.range(1, self.initial);
            self.shared
                .admin
                .lock()
                .expect("lock")
                .push_back(AdminOp::Drain(victim));
            self.drain_asked = true;
            self.faults.drains += 1;
            self.trace(format!("drain n{victim} (asked)"));
        }
    }

    pub(super) fn act(&mut self, sim: &mut turmoil::Sim<'_>, slots: &[Slot]) {
        self.acts += 1;
        if self.cfg.scale && (self.acts == self.add_at || self.acts == self.drain_at) {
            self.scale(sim, slots);
            return;
        }
        let n = self.nodes;
        let a = self.rng.range(1, n);
        let mut b = self.rng.range(1, n - 1);
        if b >= a {
            b += 1;
        }
        match self.rng.below(100) {
            0..=14 => {
                // Symmetric: a minority cut off from the majority.
                let k = self.rng.range(1, (n - 1) / 2);
                let mut ids: Vec<u64> = (1..=n).collect();
                let mut minority = Vec::new();
                for _ in 0..k {
                    let i = self.rng.below(ids.len() as u64) as usize;
                    minority.push(ids.swap_remove(i));
                }
                for x in &minority {
                    for y in &ids {
                        sim.partition(name(*x), name(*y));
                    }
                }
                self.faults.partitions += 1;
                self.trace(format!("partition {minority:?} | {ids:?}"));
            }
            15..=27 => {
                sim.partition_oneway(name(a), name(b));
                self.faults.oneway_partitions += 1;
                self.trace(format!("one-way partition n{a} -> n{b}"));
            }
            28..=39 => {
                if let Some(l) = self.leader_of_some_shard(slots) {
                    for y in (1..=n).filter(|y| *y != l) {
                        sim.partition(name(l), name(y));
                    }
                    self.faults.isolated_leaders += 1;
                    self.trace(format!("isolate leader n{l}"));
                }
            }
            40..=49 => {
                sim.set_link_max_message_latency(
                    name(a),
                    name(b),
                    Duration::from_millis(self.rng.range(10, 300)),
                );
                self.faults.delays += 1;
                self.trace(format!("delay n{a} <-> n{b}"));
            }
            50..=55 => {
                sim.set_link_fail_rate(name(a), name(b), 0.02);
                self.faults.losses += 1;
                self.trace(format!("loss n{a} <-> n{b}"));
            }
            56..=61 => {
                if (self.crashed.len() as u64) < (n - 1) / 2 && !self.crashed.contains(&a) {
                    let lost = self.crash(sim, slots, a);
                    self.crashed.push(a);
                    self.trace(format!("crash n{a} (lost {lost} entries)"));
                }
            }
            62..=67 => {
                if self.trap.is_none() {
                    if let Some(l) = self.leader_of_some_shard(slots) {
                        self.trap = Some((l, self.now + 2_000));
                        self.faults.tail_traps += 1;
                        self.trace(format!("tail trap on leader n{l}"));
                    }
                }
            }
            68..=79 => {
                if let Some(i) = self.rng.pick(&self.crashed).copied() {
                    self.crashed.retain(|x| *x != i);
                    sim.bounce(name(i));
                    self.faults.restarts += 1;
                    self.trace(format!("restart n{i}"));
                }
            }
            80..=89 => {
                let j = self.rng.range(0, 2 * MAX_CLOCK_JUMP_MS) as i64 - MAX_CLOCK_JUMP_MS as i64;
                slots[a as usize - 1]
                    .clock
                    .offset_ms
                    .store(j, Ordering::SeqCst);
                self.faults.clock_jumps += 1;
                self.trace(format!("clock n{a} {j:+} ms"));
            }
            _ => self.repair(sim),
        }
    }

    /// Crashes `id`: its runtime is gone and every log loses its unflushed
    /// tail. Returns the entries lost.
    pub(super) fn crash(&mut self, sim: &mut turmoil::Sim<'_>, slots: &[Slot], id: u64) -> u64 {
        sim.crash(name(id));
        let s = &slots[id as usize - 1];
        let logs: Vec<SimLog> = s.logs_by_group().into_iter().map(|(_, l)| l).collect();
        let before: u64 = logs.iter().map(SimLog::lost).sum();
        for l in &logs {
            l.crash();
        }
        let after: u64 = logs.iter().map(SimLog::lost).sum();
        self.faults.lost_tail_entries += after - before;
        *s.hosted.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.faults.crashes += 1;
        after - before
    }

    /// Springs the tail trap, if set: once the trapped leader's log has an
    /// unflushed entry that another replica of the group already holds (a
    /// leader replicates before its own write is durable), the leader
    /// crashes, loses that entry, and restarts at once, before its followers
    /// time out. The window is a few simulated ms wide, too narrow for
    /// crashes drawn at random to hit often: a restarted leader that took
    /// its old term back wrote another entry under that log id (seed 1037).
    pub(super) fn spring(&mut self, sim: &mut turmoil::Sim<'_>, slots: &[Slot]) {
        let Some((id, until)) = self.trap else { return };
        if self.now > until || self.crashed.contains(&id) {
            self.trap = None;
            return;
        }
        let others: Vec<(Option<u32>, SimLog)> = slots
            .iter()
            .filter(|s| s.id != id && s.is_active() && !self.crashed.contains(&s.id))
            .flat_map(|s| s.logs_by_group())
            .collect();
        let held = slots[id as usize - 1]
            .logs_by_group()
            .into_iter()
            .any(|(group, log)| {
                log.unflushed().iter().any(|lid| {
                    others
                        .iter()
                        .any(|(g, other)| *g == group && other.holds(lid))
                })
            });
        if held {
            self.trap = None;
            let lost = self.crash(sim, slots, id);
            sim.bounce(name(id));
            self.faults.restarts += 1;
            self.faults.tail_crashes += 1;
            self.trace(format!(
                "tail trap: crash n{id} (lost {lost} entries), restart"
            ));
        }
    }

    pub(super) fn repair(&mut self, sim: &mut turmoil::Sim<'_>) {
        for x in 1..=self.nodes {
            for y in (x + 1)..=self.nodes {
                sim.repair(name(x), name(y));
                sim.set_link_fail_rate(name(x), name(y), 0.0);
                sim.set_link_max_message_latency(name(x), name(y), Duration::from_millis(2));
            }
        }
        self.faults.repairs += 1;
        self.trace("repair all links".into());
    }

    pub(super) fn heal(&mut self, sim: &mut turmoil::Sim<'_>, slots: &[Slot]) {
        self.repair(sim);
        for i in std::mem::take(&mut self.crashed) {
            sim.bounce(name(i));
            self.faults.restarts += 1;
            self.trace(format!("heal: restart n{i}"));
        }
        for s in slots {
            s.clock.offset_ms.store(0, Ordering::SeqCst);
        }
    }
}
