//! The checker against hand-made histories: a correct one passes, and each
//! invariant has a history that breaks it and is caught.
use crate::checker::{check, Kind, Report};
use crate::history::*;
use crate::workload::{mb, tariffs, RG};
use charging_node::ledger::*;
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;

/// A single correct server: applies each request at once through the
/// ledger, records invoke/complete, and keeps the account.
struct Ideal {
    h: History,
    acct: Option<Arc<Account>>,
    clock: u64,
    n: u64,
}

impl Ideal {
    fn new() -> Ideal {
        Ideal {
            h: History::new(tariffs(), Limits::default()),
            acct: None,
            clock: 0,
            n: 0,
        }
    }

    fn req(&mut self, cmd: Command) -> Request {
        self.n += 1;
        Request {
            account: AccountId("a".into()),
            request_id: request_id_at(T0 + self.n, self.n),
            cmd,
        }
    }

    /// Runs `req` to completion on the ideal server; returns its op id.
    fn run(&mut self, req: Request) -> usize {
        self.clock += 1;
        let id = self.h.invoke(0, req.clone(), T0 + self.clock, self.clock);
        let out = self.apply(&req);
        self.clock += 1;
        self.h.complete(id, out, self.clock);
        id
    }

    fn apply(&mut self, req: &Request) -> Outcome {
        match decide(
            &mut self.acct,
            &tariffs(),
            &Limits::default(),
            req,
            T0 + self.clock,
        ) {
            Decision::Accept(r) | Decision::Duplicate(r) => Outcome::Ok(crate::history::seen(&r)),
            Decision::Reject(r) => Outcome::Rejected(r),
        }
    }

    fn cmd(&mut self, cmd: Command) -> usize {
        let r = self.req(cmd);
        self.run(r)
    }

    fn create(&mut self, balance: i64) -> usize {
        self.cmd(Command::CreateAccount {
            currency: "EUR".into(),
            credit_limit: 0,
            initial_balance: balance,
            buckets: vec![],
        })
    }

    fn top_up(&mut self, amount: i64) -> usize {
        self.cmd(Command::TopUp {
            bucket: BucketId(0),
            amount,
        })
    }

    fn debit(&mut self, n_mb: u64) -> usize {
        self.cmd(Command::Debit {
            rating_group: RG,
            units: mb(n_mb),
        })
    }

    fn final_state(&self) -> FinalState {
        let mut f = FinalState::default();
        if let Some(a) = &self.acct {
            f.accounts
                .insert(AccountId("a".into()), FinalAccount::Full(a.clone()));
        }
        f
    }

    fn check(&self) -> Report {
        check(&self.h, &self.final_state())
    }
}

fn kinds(r: &Report) -> Vec<Kind> {
    let mut k: Vec<Kind> = r.violations.iter().map(|v| v.kind).collect();
    k.dedup();
    k
}

#[test]
fn a_correct_history_passes() {
    let mut s = Ideal::new();
    s.create(100);
    s.top_up(20);
    s.debit(5);
    let r = s.req(Command::Reserve {
        session: SessionId("x".into()),
        seq: 0,
        rating_group: RG,
        requested: mb(10),
    });
    s.run(r);
    let c = s.cmd(Command::Commit {
        reservation: ReservationId(1),
        used: mb(3),
        is_final: true,
    });
    // A duplicate of the commit answers the same and changes nothing.
    let again = s.h.ops[c].request.clone();
    s.run(again);
    s.debit(1000); // rejected: insufficient balance
    let rep = s.check();
    assert!(rep.ok(), "{:?}", rep.violations);
    assert_eq!((rep.acked, rep.rejected, rep.unknown), (6, 1, 0));
}

#[test]
fn a_lost_acknowledged_op_is_caught() {
    let mut s = Ideal::new();
    s.create(100);
    let before = s.acct.clone();
    s.top_up(20);
    // The cluster "forgot" the top-up it acknowledged.
    s.acct = before;
    let rep = s.check();
    let k = kinds(&rep);
    assert!(k.contains(&Kind::AckLost), "{k:?}");
    assert!(k.contains(&Kind::Conservation), "{k:?}");
    assert!(k.contains(&Kind::NotLinearizable), "{k:?}");
}

#[test]
fn a_duplicate_applied_twice_is_caught() {
    let mut s = Ideal::new();
    s.create(100);
    let t = s.top_up(20);
    // A buggy server applies the retry again: a second id-less top-up.
    let mut dup = s.h.ops[t].request.clone();
    let id = s.h.invoke(0, dup.clone(), T0 + 50, 50);
    dup.request_id = request_id_at(T0 + 99, 99);
    let out = s.apply(&dup);
    s.h.complete(id, out, 51);
    let rep = s.check();
    let k = kinds(&rep);
    assert!(k.contains(&Kind::DuplicateChanged), "{k:?}");
    assert!(k.contains(&Kind::Conservation), "{k:?}");
}

#[test]
fn a_duplicate_decided_again_as_a_rejection_is_caught() {
    let mut s = Ideal::new();
    s.create(10);
    let d = s.debit(8);
    let again = s.h.ops[d].request.clone();
    let id = s.h.invoke(0, again, T0 + 50, 50);
    s.h.complete(id, Outcome::Rejected(Rejection::InsufficientBalance), 51);
    assert!(s.check().has(Kind::DuplicateChanged));
}

#[test]
fn an_overdraft_is_caught() {
    let mut s = Ideal::new();
    s.create(10);
    s.debit(4);
    let mut a = (**s.acct.as_ref().unwrap()).clone();
    // Balance pushed below zero with the flows kept consistent.
    a.buckets[0].balance -= 20;
    a.buckets[0].flows.charges += 20;
    s.acct = Some(Arc::new(a));
    let rep = s.check();
    let k = kinds(&rep);
    assert!(k.contains(&Kind::Overdraft), "{k:?}");
    assert!(k.contains(&Kind::Invariant), "{k:?}");
}

#[test]
fn flows_that_do_not_add_up_are_caught() {
    let mut s = Ideal::new();
    s.create(10);
    let mut a = (**s.acct.as_ref().unwrap()).clone();
    a.buckets[0].flows.credits += 1;
    s.acct = Some(Arc::new(a));
    assert!(s.check().has(Kind::Overdraft));
}

#[test]
fn a_reservation_resolved_twice_is_caught() {
    let mut s = Ideal::new();
    s.create(100);
    let r = s.req(Command::Reserve {
        session: SessionId("x".into()),
        seq: 0,
        rating_group: RG,
        requested: mb(10),
    });
    s.run(r);
    s.cmd(Command::Release {
        reservation: ReservationId(1),
    });
    // A second, different request also acknowledged as resolving it.
    let c = s.req(Command::Commit {
        reservation: ReservationId(1),
        used: mb(2),
        is_final: true,
    });
    let id = s.h.invoke(0, c, T0 + 60, 60);
    s.h.complete(
        id,
        Outcome::Ok(Reply::Committed {
            charged: 2,
            debt: 0,
        }),
        61,
    );
    let rep = s.check();
    assert!(rep.has(Kind::ResolvedTwice), "{:?}", rep.violations);
}

#[test]
fn replica_divergence_is_caught() {
    let mut s = Ideal::new();
    s.create(10);
    let mut f = s.final_state();
    for (node, hash) in [(1, 0xaa), (2, 0xaa), (3, 0xbb)] {
        f.replicas.push(ReplicaDigest {
            node,
            shard: 0,
            applied_index: 7,
            state_hash: hash,
        });
    }
    // A lagging replica at another index may differ.
    f.replicas.push(ReplicaDigest {
        node: 4,
        shard: 0,
        applied_index: 6,
        state_hash: 0xcc,
    });
    let rep = check(&s.h, &f);
    assert_eq!(kinds(&rep), vec![Kind::ReplicaDivergence]);
}

/// create 10; top-up 100 acknowledged; then a debit of 50 answered
/// "insufficient balance". Fine if the two overlapped in time, a stale read if
/// the debit began after the top-up was acknowledged.
fn stale_rejection(debit_invoked_at: u64) -> Report {
    let mut s = Ideal::new();
    s.create(10);
    let debit = s.req(Command::Debit {
        rating_group: RG,
        units: mb(50),
    });
    let t = s.req(Command::TopUp {
        bucket: BucketId(0),
        amount: 100,
    });
    let tid = s.h.invoke(0, t.clone(), T0 + 10, 10);
    let d =
        s.h.invoke(1, debit, T0 + debit_invoked_at, debit_invoked_at);
    s.clock = 11;
    let out = s.apply(&t);
    s.h.complete(tid, out, 12);
    s.h.complete(d, Outcome::Rejected(Rejection::InsufficientBalance), 20);
    s.check()
}

#[test]
fn a_concurrent_rejection_is_linearizable() {
    let rep = stale_rejection(11);
    assert!(rep.ok(), "{:?}", rep.violations);
}

#[test]
fn a_stale_rejection_after_an_ack_is_not_linearizable() {
    let rep = stale_rejection(13);
    assert_eq!(
        kinds(&rep),
        vec![Kind::NotLinearizable],
        "{:?}",
        rep.violations
    );
}

/// An unknown top-up: applied fully or not at all is fine; half is not.
fn unknown_top_up(effect: Option<i64>) -> Report {
    let mut s = Ideal::new();
    s.create(100);
    let t = s.req(Command::TopUp {
        bucket: BucketId(0),
        amount: 40,
    });
    let id = s.h.invoke(0, t.clone(), T0 + 10, 10);
    s.h.complete(id, Outcome::Unknown, 11);
    s.debit(5);
    match effect {
        None => {}
        Some(40) => {
            s.apply(&t);
        }
        Some(x) => {
            let mut a = (**s.acct.as_ref().unwrap()).clone();
            a.buckets[0].balance += x;
            a.buckets[0].flows.credits += x;
            a.version += 1;
            s.acct = Some(Arc::new(a));
        }
    }
    s.check()
}

#[test]
fn an_unknown_op_applied_or_not_is_fine() {
    for e in [None, Some(40)] {
        let rep = unknown_top_up(e);
        assert!(rep.ok(), "{e:?}: {:?}", rep.violations);
    }
}

#[test]
fn an_unknown_op_applied_in_part_is_caught() {
    let rep = unknown_top_up(Some(15));
    assert!(rep.has(Kind::NotLinearizable), "{:?}", rep.violations);
}

#[test]
fn an_unknown_op_applied_twice_is_caught() {
    let rep = unknown_top_up(Some(80));
    let k = kinds(&rep);
    assert!(k.contains(&Kind::Conservation), "{k:?}");
    assert!(k.contains(&Kind::NotLinearizable), "{k:?}");
}

#[test]
fn an_acknowledged_account_that_vanished_is_caught() {
    let mut s = Ideal::new();
    s.create(10);
    s.acct = None;
    let rep = s.check();
    assert!(rep.has(Kind::AckLost), "{:?}", rep.violations);
}
