//! Unit tests of the ledger: every command, every rejection reason, and the
//! properties DESIGN §3 asks for. Every accepted decision is also applied to a
//! replica `ShardState` through an event, which must reproduce it exactly.
use super::account::MAIN_BUCKET;
use super::*;
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;
const RG_DATA: RatingGroup = 1;
const RG_VOICE: RatingGroup = 2;
const RG_FREE_UNPRICED: RatingGroup = 9;

fn rid(n: u64, ms: u64) -> RequestId {
    RequestId((u128::from(ms) << 80) | u128::from(n))
}

fn kb(n: u64) -> Units {
    Units {
        volume_bytes: n * 1000,
        ..Units::default()
    }
}

fn bytes(n: u64) -> Units {
    Units {
        volume_bytes: n,
        ..Units::default()
    }
}

fn secs(n: u64) -> Units {
    Units {
        time_s: n,
        ..Units::default()
    }
}

fn sid(s: &str) -> SessionId {
    SessionId(s.into())
}

fn tariffs() -> Tariffs {
    let mut t = Tariffs::new();
    // 0.3 minor units per started kB.
    t.insert(
        RG_DATA,
        Tariff {
            rating_group: RG_DATA,
            version: 1,
            prices: vec![Price {
                unit: BucketKind::Bytes,
                increment: 1000,
                nano_per_increment: 300_000_000,
            }],
        },
    );
    // 2 per started minute and 1 per started MB.
    t.insert(
        RG_VOICE,
        Tariff {
            rating_group: RG_VOICE,
            version: 1,
            prices: vec![
                Price {
                    unit: BucketKind::Seconds,
                    increment: 60,
                    nano_per_increment: 2_000_000_000,
                },
                Price {
                    unit: BucketKind::Bytes,
                    increment: 1_000_000,
                    nano_per_increment: 1_000_000_000,
                },
            ],
        },
    );
    t
}

struct H {
    acct: Option<Arc<Account>>,
    tariffs: Tariffs,
    limits: Limits,
    now: u64,
    n: u64,
    replica: ShardState,
}

impl H {
    fn empty() -> H {
        let limits = Limits::default();
        let mut replica = ShardState::new(limits.clone());
        for t in tariffs().values() {
            replica.apply(
                &Event::SetTariff {
                    tariff: t.clone(),
                    request_id: RequestId(((T0 as u128) << 80) | 7),
                },
                T0,
            );
        }
        H {
            acct: None,
            tariffs: tariffs(),
            limits,
            now: T0,
            n: 0,
            replica,
        }
    }

    fn with(balance: i64, credit_limit: i64) -> H {
        let mut h = H::empty();
        h.ok(Command::CreateAccount {
            currency: "EUR".into(),
            credit_limit,
            initial_balance: balance,
            buckets: vec![],
        });
        h
    }

    fn req(&mut self, cmd: Command) -> Request {
        self.n += 1;
        let request_id = if matches!(cmd, Command::Expire { .. }) {
            RequestId(0)
        } else {
            rid(self.n, self.now)
        };
        Request {
            account: AccountId("acct-1".into()),
            request_id,
            cmd,
        }
    }

    fn run(&mut self, cmd: Command) -> Decision {
        let r = self.req(cmd);
        self.exec(&r)
    }

    /// decide() with exactly the tariffs an event would carry, then the same
    /// event applied on the replica; checks invariants 1-3 and 5 every time.
    fn exec(&mut self, r: &Request) -> Decision {
        let tariffs: Tariffs = r
            .cmd
            .rating_groups()
            .into_iter()
            .filter_map(|g| self.tariffs.get(&g).map(|t| (g, t.clone())))
            .collect();
        let before = self.acct.clone();
        let v = before.as_ref().map_or(0, |a| a.version);
        let d = decide(&mut self.acct, &tariffs, &self.limits, r, self.now);
        match &d {
            Decision::Accept(reply) => {
                assert_eq!(self.acct.as_ref().unwrap().version, v + 1);
                self.acct.as_ref().unwrap().check().unwrap();
                let ev = Event::Account(AccountEvent {
                    request: r.clone(),
                    expected_version: v,
                    decided_ms: self.now,
                    tariffs,
                });
                assert_eq!(
                    self.replica.apply(&ev, self.now),
                    Applied::Ok(reply.clone())
                );
                assert_eq!(self.replica.account(&r.account), self.acct.as_ref());
                self.replica.check_invariants().unwrap();
            }
            _ => assert_eq!(self.acct, before, "a non-acceptance changed the account"),
        }
        d
    }

    fn ok(&mut self, cmd: Command) -> Reply {
        match self.run(cmd.clone()) {
            Decision::Accept(r) => r,
            d => panic!("{cmd:?} => {d:?}"),
        }
    }

    fn rej(&mut self, cmd: Command) -> Rejection {
        match self.run(cmd.clone()) {
            Decision::Reject(r) => r,
            d => panic!("{cmd:?} => {d:?}"),
        }
    }

    fn a(&self) -> &Account {
        self.acct.as_ref().unwrap()
    }

    /// (balance, reserved) of the main bucket.
    fn main(&self) -> (i64, i64) {
        let b = self.a().bucket(MAIN_BUCKET).unwrap();
        (b.balance, b.reserved)
    }

    fn reserve(&mut self, s: &str, seq: u64, rg: RatingGroup, requested: Units) -> Decision {
        self.run(Command::Reserve {
            session: sid(s),
            seq,
            rating_group: rg,
            requested,
        })
    }

    fn grant(&mut self, s: &str, seq: u64, rg: RatingGroup, requested: Units) -> Grant {
        match self.reserve(s, seq, rg, requested) {
            Decision::Accept(Reply::Reserved(g)) => g,
            d => panic!("reserve => {d:?}"),
        }
    }

    fn commit(&mut self, r: ReservationId, used: Units, is_final: bool) -> (i64, i64) {
        match self.ok(Command::Commit {
            reservation: r,
            used,
            is_final,
        }) {
            Reply::Committed { charged, debt } => (charged, debt),
            r => panic!("{r:?}"),
        }
    }
}

// ---- create, top-up, buckets, state -----------------------------------------

#[test]
fn create_account_and_its_rejections() {
    let mut h = H::empty();
    let cmd = Command::CreateAccount {
        currency: "EUR".into(),
        credit_limit: 0,
        initial_balance: 500,
        buckets: vec![],
    };
    let r = h.req(cmd.clone());
    assert_eq!(h.exec(&r), Decision::Accept(Reply::Created { version: 1 }));
    assert_eq!(h.a().version, 1);
    assert_eq!(h.main(), (500, 0));
    // Same request again: the original reply.
    assert_eq!(
        h.exec(&r),
        Decision::Duplicate(Reply::Created { version: 1 })
    );
    // Same id, other parameters.
    let mut other = r.clone();
    other.cmd = Command::CreateAccount {
        currency: "EUR".into(),
        credit_limit: 0,
        initial_balance: 501,
        buckets: vec![],
    };
    assert_eq!(h.exec(&other), Decision::Reject(Rejection::RequestIdReused));
    // Another request.
    assert_eq!(h.rej(cmd), Rejection::AccountExists);
    // Out of range input.
    let mut h2 = H::empty();
    let bad = Command::CreateAccount {
        currency: "EUR".into(),
        credit_limit: -1,
        initial_balance: 0,
        buckets: vec![],
    };
    assert_eq!(h2.rej(bad), Rejection::LimitExceeded);
}

#[test]
fn account_not_found_for_every_other_command() {
    let mut h = H::empty();
    let cmds = vec![
        Command::TopUp {
            bucket: BucketId(0),
            amount: 1,
        },
        Command::Reserve {
            session: sid("s"),
            seq: 1,
            rating_group: RG_DATA,
            requested: kb(1),
        },
        Command::Commit {
            reservation: ReservationId(1),
            used: kb(1),
            is_final: true,
        },
        Command::Release {
            reservation: ReservationId(1),
        },
        Command::Refund {
            original: rid(1, T0),
            amount: 1,
        },
        Command::Debit {
            rating_group: RG_DATA,
            units: kb(1),
        },
        Command::SetState {
            state: AccountState::Suspended,
        },
        Command::Expire {
            reservation: ReservationId(1),
        },
    ];
    for c in cmds {
        assert_eq!(h.rej(c), Rejection::AccountNotFound);
    }
}

#[test]
fn top_up_settles_debt_and_checks_bucket_amount_and_state() {
    let mut h = H::with(100, 0);
    assert_eq!(
        h.ok(Command::TopUp {
            bucket: BucketId(0),
            amount: 50
        }),
        Reply::ToppedUp { balance: 150 }
    );
    assert_eq!(
        h.ok(Command::TopUp {
            bucket: MAIN_BUCKET,
            amount: 1
        }),
        Reply::ToppedUp { balance: 151 }
    );
    assert_eq!(
        h.rej(Command::TopUp {
            bucket: BucketId(7),
            amount: 1
        }),
        Rejection::BucketNotFound
    );
    assert_eq!(
        h.rej(Command::TopUp {
            bucket: MAIN_BUCKET,
            amount: 0
        }),
        Rejection::LimitExceeded
    );
    assert_eq!(
        h.rej(Command::TopUp {
            bucket: MAIN_BUCKET,
            amount: -5
        }),
        Rejection::LimitExceeded
    );
    assert_eq!(
        h.rej(Command::TopUp {
            bucket: MAIN_BUCKET,
            amount: i64::MAX
        }),
        Rejection::LimitExceeded
    );
    // Debt is settled first.
    let g = h.grant("s", 1, RG_DATA, kb(10));
    let (charged, debt) = h.commit(g.reservation, kb(1000), true);
    assert_eq!((charged, debt), (300, 149));
    assert_eq!(h.main(), (0, 0));
    assert_eq!(h.a().debt, 149);
    assert_eq!(
        h.ok(Command::TopUp {
            bucket: MAIN_BUCKET,
            amount: 200
        }),
        Reply::ToppedUp { balance: 51 }
    );
    assert_eq!(h.a().debt, 0);
    h.ok(Command::SetState {
        state: AccountState::Suspended,
    });
    h.ok(Command::TopUp {
        bucket: MAIN_BUCKET,
        amount: 1,
    });
    h.ok(Command::SetState {
        state: AccountState::Closed,
    });
    assert_eq!(
        h.rej(Command::TopUp {
            bucket: MAIN_BUCKET,
            amount: 1
        }),
        Rejection::AccountNotActive
    );
}

#[test]
fn add_bucket_and_bucket_limit() {
    let mut h = H::with(0, 0);
    h.limits.max_buckets_per_account = 3;
    h.replica.limits.max_buckets_per_account = 3;
    let spec = BucketSpec {
        kind: BucketKind::Bytes,
        amount: 5000,
        valid_from_ms: 0,
        valid_until_ms: 0,
        priority: 1,
        rating_groups: vec![RG_DATA],
    };
    assert_eq!(
        h.ok(Command::AddBucket {
            bucket: spec.clone()
        }),
        Reply::BucketAdded {
            bucket: BucketId(2)
        }
    );
    assert_eq!(
        h.ok(Command::AddBucket {
            bucket: spec.clone()
        }),
        Reply::BucketAdded {
            bucket: BucketId(3)
        }
    );
    assert_eq!(
        h.rej(Command::AddBucket {
            bucket: spec.clone()
        }),
        Rejection::LimitExceeded
    );
    let v = h.a().view(h.now);
    assert_eq!(v.buckets.len(), 3);
    assert_eq!(v.buckets[1].balance, 5000);
    h.ok(Command::SetState {
        state: AccountState::Closed,
    });
    assert_eq!(
        h.rej(Command::AddBucket { bucket: spec }),
        Rejection::AccountNotActive
    );
}

#[test]
fn set_state_gates_new_reserves_and_debits_but_not_commits() {
    let mut h = H::with(1000, 0);
    let g = h.grant("s", 1, RG_DATA, kb(10));
    assert_eq!(
        h.ok(Command::SetState {
            state: AccountState::Suspended
        }),
        Reply::StateSet
    );
    assert_eq!(h.a().state, AccountState::Suspended);
    assert!(matches!(
        h.reserve("t", 1, RG_DATA, kb(1)),
        Decision::Reject(Rejection::AccountNotActive)
    ));
    assert_eq!(
        h.rej(Command::Debit {
            rating_group: RG_DATA,
            units: kb(1)
        }),
        Rejection::AccountNotActive
    );
    // The service was delivered: commits and terminates are accepted.
    assert_eq!(h.commit(g.reservation, kb(5), false), (2, 0));
    assert_eq!(
        h.ok(Command::Terminate {
            session: sid("s"),
            seq: 2,
            reports: vec![UsageReport {
                rating_group: RG_DATA,
                used: kb(5),
                requested: Units::default()
            }],
        }),
        Reply::Terminated {
            charged: 1,
            debt: 0
        }
    );
    assert_eq!(h.main(), (997, 0));
    h.ok(Command::SetState {
        state: AccountState::Active,
    });
    h.grant("t", 1, RG_DATA, kb(1));
}

// ---- reserve ----------------------------------------------------------------

#[test]
fn reserve_holds_price_rounded_up_and_expires_later() {
    let mut h = H::with(1000, 0);
    let g = h.grant("s", 1, RG_DATA, bytes(10_001)); // 11 kB started: 3.3 -> 4
    assert_eq!(g.reservation, ReservationId(1));
    assert_eq!(g.granted, bytes(10_001));
    assert!(!g.final_units);
    assert_eq!(g.expires_at_ms, T0 + h.limits.reservation_validity_ms);
    assert_eq!(h.main(), (1000, 4));
    let v = h.a().view(h.now);
    assert_eq!(
        (v.available, v.open_sessions, v.open_reservations),
        (996, 1, 1)
    );
    // Multi-dimension grant.
    let g = h.grant(
        "s",
        2,
        RG_VOICE,
        Units {
            time_s: 61,
            volume_bytes: 1,
            service_units: 0,
        },
    );
    assert_eq!(g.reservation, ReservationId(2));
    assert_eq!(h.main(), (1000, 4 + 4 + 1));
}

#[test]
fn partial_grant_sets_final_units_and_zero_is_insufficient() {
    let mut h = H::with(10, 0);
    // 100 kB would cost 30; 33 kB cost ceil(9.9) = 10.
    let g = h.grant("s", 1, RG_DATA, kb(100));
    assert_eq!(g.granted, kb(33));
    assert!(g.final_units);
    assert_eq!(h.main(), (10, 10));
    assert!(matches!(
        h.reserve("t", 1, RG_DATA, kb(1)),
        Decision::Reject(Rejection::InsufficientBalance)
    ));
    // Several dimensions are scaled down together, in whole increments.
    let mut h = H::with(5, 0);
    let g = h.grant(
        "s",
        1,
        RG_VOICE,
        Units {
            time_s: 600,
            volume_bytes: 10_000_000,
            service_units: 0,
        },
    );
    // 10 minutes (20) + 10 MB (10) = 30; affordable p/10 with 3p <= 5 -> p = 1.
    assert_eq!(
        g.granted,
        Units {
            time_s: 60,
            volume_bytes: 1_000_000,
            service_units: 0
        }
    );
    assert!(g.final_units);
    assert_eq!(h.main(), (5, 3));
}

#[test]
fn credit_limit_lets_available_go_negative() {
    let mut h = H::with(0, 30);
    let g = h.grant("s", 1, RG_DATA, kb(200)); // 60 > 30: partial
    assert_eq!(g.granted, kb(100));
    assert!(g.final_units);
    assert_eq!(h.main(), (0, 30));
    assert_eq!(h.a().view(h.now).available, 0);
    h.commit(g.reservation, kb(100), true);
    assert_eq!(h.main(), (-30, 0));
}

#[test]
fn rating_failed_without_a_price_unless_unit_buckets_cover() {
    let mut h = H::with(1000, 0);
    assert!(matches!(
        h.reserve("s", 1, RG_FREE_UNPRICED, kb(1)),
        Decision::Reject(Rejection::RatingFailed)
    ));
    // A voice tariff has no service-unit price.
    assert!(matches!(
        h.reserve(
            "s",
            1,
            RG_VOICE,
            Units {
                service_units: 1,
                ..Units::default()
            }
        ),
        Decision::Reject(Rejection::RatingFailed)
    ));
    h.ok(Command::AddBucket {
        bucket: BucketSpec {
            kind: BucketKind::Bytes,
            amount: 5000,
            valid_from_ms: 0,
            valid_until_ms: 0,
            priority: 0,
            rating_groups: vec![],
        },
    });
    let g = h.grant("s", 1, RG_FREE_UNPRICED, kb(5));
    assert_eq!(g.granted, kb(5));
    assert!(matches!(
        h.reserve("s", 2, RG_FREE_UNPRICED, kb(6)),
        Decision::Reject(Rejection::RatingFailed)
    ));
}

#[test]
fn unit_buckets_by_priority_validity_and_rating_group_then_money() {
    let mut h = H::with(1000, 0);
    let spec = |amount, prio, from, until, rgs: Vec<RatingGroup>| Command::AddBucket {
        bucket: BucketSpec {
            kind: BucketKind::Bytes,
            amount,
            valid_from_ms: from,
            valid_until_ms: until,
            priority: prio,
            rating_groups: rgs,
        },
    };
    h.ok(spec(3000, 5, 0, 0, vec![])); // 2
    h.ok(spec(2000, 1, 0, 0, vec![RG_DATA])); // 3: first
    h.ok(spec(9000, 0, 0, 0, vec![RG_VOICE])); // 4: other rating group
    h.ok(spec(9000, 0, T0 + 1, 0, vec![])); // 5: not yet valid
    h.ok(spec(9000, 0, 0, T0, vec![])); // 6: ended
    let g = h.grant("s", 1, RG_DATA, kb(10));
    assert_eq!(g.granted, kb(10));
    let a = h.a();
    let reserved: Vec<i64> = a.buckets.iter().map(|b| b.reserved).collect();
    assert_eq!(reserved, vec![2, 3000, 2000, 0, 0, 0]); // 5 kB priced: 1.5 -> 2
                                                        // Usage consumes the unit holds first, then money, rounded on the cumulative rated part.
    assert_eq!(h.commit(g.reservation, kb(6), false), (1, 0));
    assert_eq!(h.a().bucket(BucketId(3)).unwrap().balance, 0);
    assert_eq!(h.a().bucket(BucketId(2)).unwrap().balance, 0);
    assert_eq!(h.main(), (999, 1));
    assert_eq!(h.commit(g.reservation, kb(4), true), (1, 0));
    assert_eq!(h.main(), (998, 0));
}

#[test]
fn reserve_again_on_the_same_rating_group_replaces_the_quota() {
    let mut h = H::with(1000, 0);
    let g1 = h.grant("s", 1, RG_DATA, kb(10));
    assert_eq!(h.main(), (1000, 3));
    let g2 = h.grant("s", 2, RG_DATA, kb(20));
    assert_eq!(g2.reservation, g1.reservation);
    assert_eq!(h.main(), (1000, 6));
    assert_eq!(h.a().ext.reservations.len(), 1);
}

#[test]
fn zero_request_opens_an_empty_reservation() {
    let mut h = H::with(0, 0);
    let g = h.grant("s", 1, RG_DATA, Units::default());
    assert_eq!(g.granted, Units::default());
    assert!(!g.final_units);
}

// ---- commit, release, cumulative rounding, debt ------------------------------

#[test]
fn cumulative_rounding_many_small_commits_equal_one_big() {
    let mut small = H::with(1000, 0);
    let mut big = H::with(1000, 0);
    let gs = small.grant("s", 1, RG_DATA, kb(100));
    let gb = big.grant("s", 1, RG_DATA, kb(100));
    let mut total = 0;
    for _ in 0..100 {
        total += small.commit(gs.reservation, bytes(500), false).0;
    }
    total += small.commit(gs.reservation, Units::default(), true).0;
    let (one, _) = big.commit(gb.reservation, bytes(50_000), true);
    // 50 kB: 15 minor units. Rounding each 500 B commit would charge 100.
    assert_eq!(one, 15);
    assert_eq!(total, one);
    assert_eq!(small.main(), big.main());
    assert_eq!(small.main(), (985, 0));
}

#[test]
fn commit_over_grant_is_charged_then_recorded_as_debt() {
    let mut h = H::with(10, 5);
    let g = h.grant("s", 1, RG_DATA, kb(10)); // holds 3
                                              // 100 kB = 30: 3 from the hold, 7 + 5 (credit limit) available, 15 debt.
    assert_eq!(h.commit(g.reservation, kb(100), false), (30, 15));
    assert_eq!(h.main(), (-5, 0));
    assert_eq!(h.a().debt, 15);
    assert_eq!(h.a().ext.reservations[&g.reservation].charged, 30);
    h.ok(Command::Release {
        reservation: g.reservation,
    });
    assert_eq!(h.a().debt, 15);
}

#[test]
fn final_commit_releases_and_resolves() {
    let mut h = H::with(1000, 0);
    let g = h.grant("s", 1, RG_DATA, kb(100)); // 30 held
    assert_eq!(h.commit(g.reservation, kb(10), true), (3, 0));
    assert_eq!(h.main(), (997, 0));
    assert!(h.a().ext.sessions[&sid("s")].open.is_empty());
    let again = Command::Commit {
        reservation: g.reservation,
        used: kb(1),
        is_final: true,
    };
    assert_eq!(h.rej(again), Rejection::ReservationResolved);
    assert_eq!(
        h.rej(Command::Release {
            reservation: g.reservation
        }),
        Rejection::ReservationResolved
    );
    assert_eq!(
        h.rej(Command::Commit {
            reservation: ReservationId(99),
            used: kb(1),
            is_final: true
        }),
        Rejection::ReservationNotFound
    );
    assert_eq!(
        h.rej(Command::Release {
            reservation: ReservationId(0)
        }),
        Rejection::ReservationNotFound
    );
}

#[test]
fn release_resolves_without_charging() {
    let mut h = H::with(1000, 0);
    let g = h.grant("s", 1, RG_DATA, kb(100));
    h.commit(g.reservation, kb(10), false);
    assert_eq!(
        h.ok(Command::Release {
            reservation: g.reservation
        }),
        Reply::Released
    );
    assert_eq!(h.main(), (997, 0));
    assert!(h.a().ext.reservations.is_empty());
}

#[test]
fn huge_usage_is_refused_not_a_panic() {
    let mut h = H::with(1000, 0);
    let premium: RatingGroup = 3;
    h.tariffs.insert(
        premium,
        Tariff {
            rating_group: premium,
            version: 1,
            prices: vec![Price {
                unit: BucketKind::Seconds,
                increment: 1,
                nano_per_increment: 1_000_000_000_000,
            }],
        },
    );
    let g = h.grant("s", 1, premium, secs(1));
    let huge = Units {
        time_s: u64::MAX,
        volume_bytes: 0,
        service_units: 0,
    };
    assert_eq!(
        h.rej(Command::Commit {
            reservation: g.reservation,
            used: huge,
            is_final: false
        }),
        Rejection::LimitExceeded
    );
    let over = Command::Commit {
        reservation: g.reservation,
        used: secs(4_000_000_000_000_000),
        is_final: false,
    };
    assert_eq!(
        h.rej(Command::Debit {
            rating_group: premium,
            units: huge
        }),
        Rejection::InsufficientBalance
    );
    // Usage beyond any grant, repeated until the debt would overflow.
    let mut refused = false;
    for _ in 0..10 {
        match h.run(over.clone()) {
            Decision::Accept(_) => {}
            Decision::Reject(Rejection::LimitExceeded) => {
                refused = true;
                break;
            }
            d => panic!("{d:?}"),
        }
    }
    assert!(refused);
    let mut h = H::with(1000, 0);
    let g = h.grant(
        "t",
        1,
        RG_DATA,
        Units {
            volume_bytes: u64::MAX,
            ..Units::default()
        },
    );
    assert!(g.final_units);
    assert_eq!(h.main(), (1000, 1000));
}

// ---- expiry and tombstones ----------------------------------------------------

#[test]
fn expiry_then_late_commit_on_the_tombstone() {
    let mut h = H::with(1000, 0);
    let g = h.grant("s", 1, RG_DATA, kb(100));
    let sweep_at = g.expires_at_ms + h.limits.expiry_grace_ms;
    h.now = sweep_at - 1;
    assert!(h.a().due_expiries(h.now).next().is_none());
    assert!(h.replica.due_expiries(h.now, 10).is_empty());
    assert_eq!(
        h.rej(Command::Expire {
            reservation: g.reservation
        }),
        Rejection::RequestTooOld
    );
    h.now = sweep_at;
    assert_eq!(
        h.a().due_expiries(h.now).collect::<Vec<_>>(),
        vec![g.reservation]
    );
    assert_eq!(
        h.replica.due_expiries(h.now, 10),
        vec![(AccountId("acct-1".into()), g.reservation)]
    );
    assert_eq!(
        h.ok(Command::Expire {
            reservation: g.reservation
        }),
        Reply::Expired
    );
    assert_eq!(h.main(), (1000, 0));
    assert!(h.a().ext.tombstones.contains_key(&g.reservation));
    assert!(h.replica.due_expiries(h.now, 10).is_empty());
    assert_eq!(
        h.rej(Command::Expire {
            reservation: g.reservation
        }),
        Rejection::ReservationResolved
    );
    assert_eq!(
        h.rej(Command::Release {
            reservation: g.reservation
        }),
        Rejection::ReservationResolved
    );
    // The service was delivered: the late commit still charges.
    assert_eq!(h.commit(g.reservation, kb(10), false), (3, 0));
    assert_eq!(h.commit(g.reservation, kb(10), true), (3, 0));
    assert_eq!(h.main(), (994, 0));
    assert!(h.a().ext.tombstones.is_empty());
    assert_eq!(
        h.rej(Command::Commit {
            reservation: g.reservation,
            used: kb(1),
            is_final: true
        }),
        Rejection::ReservationResolved
    );
}

#[test]
fn late_usage_in_an_update_goes_to_the_tombstone() {
    let mut h = H::with(1000, 0);
    let g = h.grant("s", 1, RG_DATA, kb(10));
    h.commit(g.reservation, bytes(1), false); // charged 1 for the first kB
    h.now = g.expires_at_ms + h.limits.expiry_grace_ms;
    h.ok(Command::Expire {
        reservation: g.reservation,
    });
    let r = h.ok(Command::Update {
        session: sid("s"),
        seq: 2,
        reports: vec![UsageReport {
            rating_group: RG_DATA,
            used: bytes(999),
            requested: kb(1),
        }],
    });
    let Reply::Updated {
        grants,
        charged,
        debt,
    } = r
    else {
        panic!()
    };
    assert_eq!((charged, debt), (0, 0)); // same first kB: cumulative rounding continued
    assert_eq!(
        grants[0].result.as_ref().unwrap().reservation,
        ReservationId(2)
    );
}

#[test]
fn apply_refuses_expire_before_its_log_time() {
    let mut h = H::with(1000, 0);
    let g = h.grant("s", 1, RG_DATA, kb(10));
    let sweep_at = g.expires_at_ms + h.limits.expiry_grace_ms;
    let req = Request {
        account: AccountId("acct-1".into()),
        request_id: RequestId(0),
        cmd: Command::Expire {
            reservation: g.reservation,
        },
    };
    let ev = Event::Account(AccountEvent {
        request: req,
        expected_version: h.a().version,
        decided_ms: sweep_at,
        tariffs: Tariffs::new(),
    });
    let hash = h.replica.state_hash();
    let alarms = h.replica.alarms;
    assert_eq!(
        h.replica.apply(&ev, sweep_at - 1),
        Applied::Refused(Rejection::RequestTooOld)
    );
    assert_eq!(h.replica.alarms, alarms + 1);
    assert_ne!(h.replica.state_hash(), hash); // only the alarm counter moved
    assert_eq!(
        h.replica.account(&AccountId("acct-1".into())),
        h.acct.as_ref()
    );
    assert_eq!(h.replica.apply(&ev, sweep_at), Applied::Ok(Reply::Expired));
}

// ---- update and terminate -------------------------------------------------------

#[test]
fn update_commits_and_replaces_quota_per_rating_group() {
    let mut h = H::with(1000, 0);
    let g = h.grant("s", 1, RG_DATA, kb(10));
    let r = h.ok(Command::Update {
        session: sid("s"),
        seq: 2,
        reports: vec![
            UsageReport {
                rating_group: RG_DATA,
                used: kb(4),
                requested: kb(20),
            },
            UsageReport {
                rating_group: RG_VOICE,
                used: Units::default(),
                requested: secs(120),
            },
            UsageReport {
                rating_group: RG_FREE_UNPRICED,
                used: Units::default(),
                requested: kb(1),
            },
        ],
    });
    let Reply::Updated {
        grants,
        charged,
        debt,
    } = r
    else {
        panic!()
    };
    assert_eq!((charged, debt), (2, 0)); // 4 kB = 1.2 -> 2
    assert_eq!(grants.len(), 3);
    let d = grants[0].result.as_ref().unwrap();
    assert_eq!((d.reservation, d.granted), (g.reservation, kb(20)));
    let v = grants[1].result.as_ref().unwrap();
    assert_eq!((v.reservation, v.granted), (ReservationId(2), secs(120)));
    assert_eq!(grants[2].result, Err(Rejection::RatingFailed));
    // Data: price(24 kB)=8 minus charged 2 = 6; voice 4.
    assert_eq!(h.main(), (998, 10));
    // Nothing requested on a rating group resolves it.
    h.ok(Command::Update {
        session: sid("s"),
        seq: 3,
        reports: vec![UsageReport {
            rating_group: RG_VOICE,
            used: secs(30),
            requested: Units::default(),
        }],
    });
    assert_eq!(h.main(), (996, 6));
    assert_eq!(
        h.a().ext.sessions[&sid("s")].open,
        vec![(RG_DATA, g.reservation)]
    );
}

#[test]
fn update_that_can_do_nothing_is_rejected_whole() {
    let mut h = H::with(0, 0);
    h.grant("s", 1, RG_VOICE, Units::default());
    let upd = |seq, used| Command::Update {
        session: sid("s"),
        seq,
        reports: vec![UsageReport {
            rating_group: RG_VOICE,
            used,
            requested: secs(60),
        }],
    };
    assert_eq!(
        h.rej(upd(2, Units::default())),
        Rejection::InsufficientBalance
    );
    // With usage to charge it is accepted, the grant failure is per rating group.
    let Reply::Updated {
        grants,
        charged,
        debt,
    } = h.ok(upd(2, secs(60)))
    else {
        panic!()
    };
    assert_eq!((charged, debt), (2, 2));
    assert_eq!(grants[0].result, Err(Rejection::InsufficientBalance));
    assert_eq!(
        h.rej(Command::Update {
            session: sid("nope"),
            seq: 1,
            reports: vec![]
        }),
        Rejection::SessionNotFound
    );
    h.ok(Command::SetState {
        state: AccountState::Suspended,
    });
    h.ok(Command::TopUp {
        bucket: MAIN_BUCKET,
        amount: 100,
    });
    assert_eq!(h.rej(upd(3, Units::default())), Rejection::AccountNotActive);
}

fn open(s: &str, seq: u64, reports: Vec<UsageReport>) -> Command {
    Command::Open {
        session: sid(s),
        seq,
        reports,
    }
}

fn want(rg: RatingGroup, used: Units, requested: Units) -> UsageReport {
    UsageReport {
        rating_group: rg,
        used,
        requested,
    }
}

#[test]
fn open_makes_a_session_with_no_rating_group_then_update_adds_them() {
    let mut h = H::with(1000, 0);
    // Update before Open: no such session.
    assert_eq!(
        h.rej(Command::Update {
            session: sid("s"),
            seq: 1,
            reports: vec![]
        }),
        Rejection::SessionNotFound
    );
    let r = h.ok(open("s", 0, vec![]));
    assert_eq!(
        r,
        Reply::Updated {
            grants: vec![],
            charged: 0,
            debt: 0
        }
    );
    let s = &h.a().ext.sessions[&sid("s")];
    assert!(s.open.is_empty() && !s.closed);
    assert_eq!(h.main(), (1000, 0));
    // The retransmitted Open is a duplicate (same seq, same params).
    let again = h.req(open("s", 0, vec![]));
    assert_eq!(h.exec(&again), Decision::Duplicate(r));
    // An Update adds a rating group the session did not have.
    let Reply::Updated { grants, .. } = h.ok(Command::Update {
        session: sid("s"),
        seq: 1,
        reports: vec![want(RG_DATA, Units::default(), kb(10))],
    }) else {
        panic!()
    };
    assert_eq!(grants[0].result.as_ref().unwrap().granted, kb(10));
    assert_eq!(h.main(), (1000, 3));
    h.ok(Command::Terminate {
        session: sid("s"),
        seq: 2,
        reports: vec![want(RG_DATA, kb(10), Units::default())],
    });
    assert_eq!(h.main(), (997, 0));
    // A closed session is not opened again.
    assert_eq!(h.rej(open("s", 3, vec![])), Rejection::SessionNotFound);
}

#[test]
fn open_with_several_rating_groups_reports_each_and_never_fails_for_one() {
    let mut h = H::with(5, 0);
    let Reply::Updated {
        grants,
        charged,
        debt,
    } = h.ok(open(
        "s",
        1,
        vec![
            want(RG_DATA, Units::default(), kb(10)),
            want(RG_FREE_UNPRICED, Units::default(), kb(1)),
            want(RG_VOICE, Units::default(), secs(600)),
        ],
    ))
    else {
        panic!()
    };
    assert_eq!((charged, debt), (0, 0));
    assert_eq!(grants[0].result.as_ref().unwrap().granted, kb(10)); // 3
    assert_eq!(grants[1].result, Err(Rejection::RatingFailed));
    // 2 left: one minute of the ten asked for.
    let v = grants[2].result.as_ref().unwrap();
    assert_eq!((v.granted, v.final_units), (secs(60), true));
    // Every grant failing still opens the session.
    let mut h = H::with(0, 0);
    let Reply::Updated { grants, .. } =
        h.ok(open("t", 1, vec![want(RG_DATA, Units::default(), kb(10))]))
    else {
        panic!()
    };
    assert_eq!(grants[0].result, Err(Rejection::InsufficientBalance));
    assert!(h.a().ext.sessions.contains_key(&sid("t")));
    // Open on an open session acts as an Update (usage charged, as debt here).
    let Reply::Updated { charged, debt, .. } =
        h.ok(open("t", 2, vec![want(RG_DATA, kb(4), Units::default())]))
    else {
        panic!()
    };
    assert_eq!((charged, debt), (2, 2));
    // Same seq, other params: reused; lower seq: too old.
    assert_eq!(h.rej(open("t", 2, vec![])), Rejection::RequestIdReused);
    assert_eq!(h.rej(open("t", 1, vec![])), Rejection::RequestTooOld);
    // Suspended: refused whole, nothing made.
    h.ok(Command::SetState {
        state: AccountState::Suspended,
    });
    assert_eq!(h.rej(open("u", 1, vec![])), Rejection::AccountNotActive);
    assert!(!h.a().ext.sessions.contains_key(&sid("u")));
}

#[test]
fn usage_on_a_new_rating_group_is_charged_on_the_reservation_its_grant_opens() {
    let mut h = H::with(1000, 0);
    h.ok(open("s", 0, vec![]));
    let Reply::Updated {
        grants, charged, ..
    } = h.ok(Command::Update {
        session: sid("s"),
        seq: 1,
        reports: vec![want(RG_DATA, bytes(100), kb(10))],
    })
    else {
        panic!()
    };
    assert_eq!(charged, 1);
    assert_eq!(grants[0].result.as_ref().unwrap().granted, kb(10));
    h.ok(Command::Terminate {
        session: sid("s"),
        seq: 2,
        reports: vec![want(RG_DATA, bytes(900), Units::default())],
    });
    // 1,000 bytes in all: one started kB (0.3, so 1), charged once; rated
    // apart, 100 and 900 bytes would have cost 1 each.
    assert_eq!(h.main(), (999, 0));
}

#[test]
fn open_counts_against_the_session_limit() {
    let mut h = H::with(1000, 0);
    h.limits.max_sessions_per_account = 2;
    h.replica.limits = h.limits.clone();
    h.ok(open("a", 0, vec![]));
    h.ok(open("b", 0, vec![]));
    assert_eq!(h.rej(open("c", 0, vec![])), Rejection::LimitExceeded);
    // An open one is still served.
    h.ok(open("a", 1, vec![want(RG_DATA, Units::default(), kb(1))]));
}

#[test]
fn terminate_charges_releases_and_closes() {
    let mut h = H::with(1000, 0);
    h.grant("s", 1, RG_DATA, kb(100));
    h.grant("s", 2, RG_VOICE, secs(600));
    assert_eq!(h.main(), (1000, 50));
    let term = Command::Terminate {
        session: sid("s"),
        seq: 3,
        reports: vec![UsageReport {
            rating_group: RG_DATA,
            used: kb(7),
            requested: Units::default(),
        }],
    };
    let r = h.req(term.clone());
    assert_eq!(
        h.exec(&r),
        Decision::Accept(Reply::Terminated {
            charged: 3,
            debt: 0
        })
    );
    assert_eq!(h.main(), (997, 0));
    assert!(h.a().ext.reservations.is_empty());
    assert!(h.a().ext.sessions[&sid("s")].closed);
    assert_eq!(h.a().view(h.now).open_sessions, 0);
    // Retry: the original reply.
    assert_eq!(
        h.exec(&r),
        Decision::Duplicate(Reply::Terminated {
            charged: 3,
            debt: 0
        })
    );
    assert_eq!(
        h.rej(Command::Update {
            session: sid("s"),
            seq: 4,
            reports: vec![]
        }),
        Rejection::SessionNotFound
    );
    assert!(matches!(
        h.reserve("s", 5, RG_DATA, kb(1)),
        Decision::Reject(Rejection::SessionNotFound)
    ));
    // Once forgotten, the id may start a new session.
    h.now += h.limits.dedup_window_ms + 1;
    h.grant("s", 1, RG_DATA, kb(1));
}

// ---- refund and debit --------------------------------------------------------------

#[test]
fn refund_never_exceeds_charge_and_respects_the_horizon() {
    let mut h = H::with(100, 0);
    let debit = h.req(Command::Debit {
        rating_group: RG_DATA,
        units: kb(100),
    });
    assert_eq!(
        h.exec(&debit),
        Decision::Accept(Reply::Debited { charged: 30 })
    );
    assert_eq!(h.main(), (70, 0));
    let refund = |amount| Command::Refund {
        original: debit.request_id,
        amount,
    };
    assert_eq!(h.rej(refund(31)), Rejection::RefundExceedsCharge);
    assert_eq!(h.rej(refund(0)), Rejection::LimitExceeded);
    assert_eq!(h.ok(refund(10)), Reply::Refunded { refunded_total: 10 });
    assert_eq!(h.rej(refund(21)), Rejection::RefundExceedsCharge);
    assert_eq!(h.ok(refund(20)), Reply::Refunded { refunded_total: 30 });
    assert_eq!(h.rej(refund(1)), Rejection::RefundExceedsCharge);
    assert_eq!(h.main(), (100, 0));
    assert_eq!(
        h.rej(Command::Refund {
            original: rid(424242, T0),
            amount: 1
        }),
        Rejection::RefundExceedsCharge
    );
    // Commits are refundable too; past the horizon they are not.
    let g = h.grant("s", 1, RG_DATA, kb(10));
    let commit = h.req(Command::Commit {
        reservation: g.reservation,
        used: kb(10),
        is_final: true,
    });
    assert_eq!(
        h.exec(&commit),
        Decision::Accept(Reply::Committed {
            charged: 3,
            debt: 0
        })
    );
    h.now += h.limits.refund_horizon_ms + 1;
    assert_eq!(
        h.rej(Command::Refund {
            original: commit.request_id,
            amount: 1
        }),
        Rejection::RefundExceedsCharge
    );
}

#[test]
fn refund_index_keeps_the_newest_charges() {
    let mut h = H::with(1000, 0);
    h.limits.max_charges_per_account = 2;
    h.replica.limits = h.limits.clone();
    let debits: Vec<Request> = (0..3)
        .map(|_| {
            let d = h.req(Command::Debit {
                rating_group: RG_DATA,
                units: kb(10),
            });
            assert!(matches!(h.exec(&d), Decision::Accept(_)));
            d
        })
        .collect();
    assert_eq!(h.a().ext.charges.len(), 2);
    let refund = |d: &Request| Command::Refund {
        original: d.request_id,
        amount: 1,
    };
    // The oldest charge left the index; the two newest are refundable.
    assert_eq!(h.rej(refund(&debits[0])), Rejection::RefundExceedsCharge);
    assert_eq!(
        h.ok(refund(&debits[1])),
        Reply::Refunded { refunded_total: 1 }
    );
    assert_eq!(
        h.ok(refund(&debits[2])),
        Reply::Refunded { refunded_total: 1 }
    );
}

/// A hot account: far more dedup entries than the small form holds, spread
/// over more than one window. Every retry inside the window is a duplicate,
/// the table is evicted oldest first as time passes (so it holds one
/// window's worth), and a copy of the account shares the table instead of
/// copying it.
#[test]
fn a_hot_account_keeps_one_window_of_dedup_entries() {
    let mut h = H::with(1_000_000, 0);
    let step = h.limits.dedup_window_ms / 500;
    let mut sent = Vec::new();
    for i in 0..1500u64 {
        h.now += step;
        let top = h.req(Command::TopUp {
            bucket: MAIN_BUCKET,
            amount: 1,
        });
        assert!(matches!(h.exec(&top), Decision::Accept(_)));
        sent.push(top);
        if i % 97 == 0 {
            // A retry of one inside the window answers as the original did.
            let back = &sent[sent.len().saturating_sub(400)];
            assert!(matches!(h.exec(back), Decision::Duplicate(_)));
        }
    }
    let held = h.a().ext.dedup.len();
    assert!((500..=502).contains(&held), "held {held}");
    let oldest = h.a().ext.dedup.first().unwrap().1.ts_ms;
    assert!(oldest + h.limits.dedup_window_ms >= h.now);
    // Past the window a retry is too old, never applied again.
    assert_eq!(h.exec(&sent[0]), Decision::Reject(Rejection::RequestTooOld));
    let mut copy = h.acct.clone().unwrap();
    let deep = Account::clone(&copy);
    assert!(deep.ext.dedup.shares_tree_with(&copy.ext.dedup));
    let top = h.req(Command::TopUp {
        bucket: MAIN_BUCKET,
        amount: 1,
    });
    let mut slot = Some(copy.clone());
    assert!(matches!(
        decide(&mut slot, &h.tariffs, &h.limits, &top, h.now),
        Decision::Accept(_)
    ));
    // The decision copied the shared account; the original is unchanged.
    assert_eq!(Arc::make_mut(&mut copy).ext.dedup.len(), held);
    assert_eq!(slot.unwrap().ext.dedup.len(), held + 1);
}

#[test]
fn refund_settles_debt_first() {
    let mut h = H::with(0, 0);
    let g = h.grant("s", 1, RG_DATA, Units::default());
    let c = h.req(Command::Commit {
        reservation: g.reservation,
        used: kb(10),
        is_final: true,
    });
    assert_eq!(
        h.exec(&c),
        Decision::Accept(Reply::Committed {
            charged: 3,
            debt: 3
        })
    );
    h.ok(Command::Refund {
        original: c.request_id,
        amount: 2,
    });
    assert_eq!((h.main(), h.a().debt), ((0, 0), 1));
}

#[test]
fn debit_is_all_or_nothing() {
    let mut h = H::with(10, 0);
    assert_eq!(
        h.rej(Command::Debit {
            rating_group: RG_DATA,
            units: kb(34)
        }),
        Rejection::InsufficientBalance
    );
    assert_eq!(
        h.rej(Command::Debit {
            rating_group: RG_FREE_UNPRICED,
            units: kb(1)
        }),
        Rejection::RatingFailed
    );
    assert_eq!(
        h.ok(Command::Debit {
            rating_group: RG_DATA,
            units: kb(33)
        }),
        Reply::Debited { charged: 10 }
    );
    assert_eq!(h.main(), (0, 0));
    // Service units from a units bucket first.
    h.ok(Command::AddBucket {
        bucket: BucketSpec {
            kind: BucketKind::Units,
            amount: 2,
            valid_from_ms: 0,
            valid_until_ms: 0,
            priority: 0,
            rating_groups: vec![],
        },
    });
    let sms = Units {
        service_units: 2,
        ..Units::default()
    };
    assert_eq!(
        h.ok(Command::Debit {
            rating_group: RG_FREE_UNPRICED,
            units: sms
        }),
        Reply::Debited { charged: 0 }
    );
    assert_eq!(
        h.rej(Command::Debit {
            rating_group: RG_FREE_UNPRICED,
            units: sms
        }),
        Rejection::RatingFailed
    );
}

// ---- idempotency -----------------------------------------------------------------------

#[test]
fn session_dedup_on_sequence_numbers() {
    let mut h = H::with(1000, 0);
    let r1 = h.req(Command::Reserve {
        session: sid("s"),
        seq: 1,
        rating_group: RG_DATA,
        requested: kb(10),
    });
    let Decision::Accept(reply) = h.exec(&r1) else {
        panic!()
    };
    // Same seq, same params (even under another request id): the original reply.
    let mut again = r1.clone();
    again.request_id = rid(777, h.now);
    assert_eq!(h.exec(&again), Decision::Duplicate(reply.clone()));
    // Same seq, other params.
    let mut other = r1.clone();
    other.cmd = Command::Reserve {
        session: sid("s"),
        seq: 1,
        rating_group: RG_DATA,
        requested: kb(11),
    };
    assert_eq!(h.exec(&other), Decision::Reject(Rejection::RequestIdReused));
    h.grant("s", 2, RG_VOICE, secs(60));
    // An older seq.
    assert_eq!(h.exec(&r1), Decision::Reject(Rejection::RequestTooOld));
}

#[test]
fn request_id_dedup_for_other_operations() {
    let mut h = H::with(1000, 0);
    let top = h.req(Command::TopUp {
        bucket: MAIN_BUCKET,
        amount: 5,
    });
    assert_eq!(
        h.exec(&top),
        Decision::Accept(Reply::ToppedUp { balance: 1005 })
    );
    assert_eq!(
        h.exec(&top),
        Decision::Duplicate(Reply::ToppedUp { balance: 1005 })
    );
    let mut other = top.clone();
    other.cmd = Command::TopUp {
        bucket: MAIN_BUCKET,
        amount: 6,
    };
    assert_eq!(h.exec(&other), Decision::Reject(Rejection::RequestIdReused));
    // A higher-precedence reason wins over the reused id.
    other.cmd = Command::Commit {
        reservation: ReservationId(5),
        used: kb(1),
        is_final: true,
    };
    assert_eq!(
        h.exec(&other),
        Decision::Reject(Rejection::ReservationNotFound)
    );
    // ... but the reused id wins over lower-precedence reasons.
    other.cmd = Command::TopUp {
        bucket: BucketId(9),
        amount: 6,
    };
    assert_eq!(h.exec(&other), Decision::Reject(Rejection::RequestIdReused));
    other.cmd = Command::Debit {
        rating_group: RG_DATA,
        units: kb(100_000),
    };
    assert_eq!(
        h.exec(&other),
        Decision::Reject(Rejection::InsufficientBalance)
    );
    // Too old by client time.
    let old = Request {
        account: AccountId("acct-1".into()),
        request_id: rid(
            1,
            h.now - h.limits.dedup_window_ms + h.limits.clock_bound_ms - 1,
        ),
        cmd: Command::TopUp {
            bucket: MAIN_BUCKET,
            amount: 1,
        },
    };
    assert_eq!(h.exec(&old), Decision::Reject(Rejection::RequestTooOld));
    // A retry within the window still finds the original, later it is too old.
    h.now += h.limits.dedup_window_ms - h.limits.clock_bound_ms;
    assert_eq!(
        h.exec(&top),
        Decision::Duplicate(Reply::ToppedUp { balance: 1005 })
    );
    h.now += h.limits.clock_bound_ms + 1;
    assert_eq!(h.exec(&top), Decision::Reject(Rejection::RequestTooOld));
    // An accepted decision evicts the old entries.
    assert!(h.a().ext.dedup.contains_key(&top.request_id));
    h.ok(Command::TopUp {
        bucket: MAIN_BUCKET,
        amount: 1,
    });
    assert!(!h.a().ext.dedup.contains_key(&top.request_id));
}

#[test]
fn dedup_table_full_is_limit_exceeded() {
    let mut h = H::with(1000, 0);
    h.limits.max_dedup_per_account = 3;
    h.replica.limits.max_dedup_per_account = 3;
    // The create's entry plus two more.
    h.ok(Command::TopUp {
        bucket: MAIN_BUCKET,
        amount: 1,
    });
    h.ok(Command::TopUp {
        bucket: MAIN_BUCKET,
        amount: 1,
    });
    assert_eq!(
        h.rej(Command::TopUp {
            bucket: MAIN_BUCKET,
            amount: 1
        }),
        Rejection::LimitExceeded
    );
    // Session operations do not use the table.
    h.grant("s", 1, RG_DATA, kb(1));
    h.now += h.limits.dedup_window_ms + 1;
    h.ok(Command::TopUp {
        bucket: MAIN_BUCKET,
        amount: 1,
    });
    assert_eq!(h.a().ext.dedup.len(), 1);
}

#[test]
fn session_and_reservation_limits() {
    let mut h = H::with(1000, 0);
    h.limits.max_sessions_per_account = 2;
    h.limits.max_reservations_per_account = 3;
    h.replica.limits = h.limits.clone();
    h.grant("a", 1, RG_DATA, kb(1));
    h.grant("b", 1, RG_DATA, kb(1));
    assert!(matches!(
        h.reserve("c", 1, RG_DATA, kb(1)),
        Decision::Reject(Rejection::LimitExceeded)
    ));
    h.grant("a", 2, RG_VOICE, secs(1));
    assert!(matches!(
        h.reserve("b", 2, RG_VOICE, secs(1)),
        Decision::Reject(Rejection::LimitExceeded)
    ));
    let Reply::Updated { grants, .. } = h.ok(Command::Update {
        session: sid("b"),
        seq: 2,
        reports: vec![
            UsageReport {
                rating_group: RG_DATA,
                used: kb(1),
                requested: kb(1),
            },
            UsageReport {
                rating_group: RG_VOICE,
                used: Units::default(),
                requested: secs(1),
            },
        ],
    }) else {
        panic!()
    };
    assert!(grants[0].result.is_ok());
    assert_eq!(grants[1].result, Err(Rejection::LimitExceeded));
}

// ---- eviction of windows ---------------------------------------------------------------

#[test]
fn ended_buckets_are_forfeited_then_removed_and_tombstones_evicted() {
    let mut h = H::with(1000, 0);
    h.ok(Command::AddBucket {
        bucket: BucketSpec {
            kind: BucketKind::Money,
            amount: 50,
            valid_from_ms: 0,
            valid_until_ms: T0 + 1000,
            priority: 0,
            rating_groups: vec![],
        },
    });
    let g = h.grant("s", 1, RG_DATA, kb(10));
    assert_eq!(h.a().bucket(BucketId(2)).unwrap().reserved, 3); // promo money first
    h.now = g.expires_at_ms + h.limits.expiry_grace_ms;
    h.ok(Command::Expire {
        reservation: g.reservation,
    });
    let b = h.a().bucket(BucketId(2)).unwrap();
    assert_eq!((b.balance, b.reserved, b.flows.expired), (0, 0, 50));
    assert_eq!(h.a().view(h.now).available, 1000);
    assert_eq!(
        h.rej(Command::TopUp {
            bucket: BucketId(2),
            amount: 5
        }),
        Rejection::BucketNotFound
    );
    h.now += h.limits.tombstone_ttl_ms + 1;
    h.ok(Command::TopUp {
        bucket: MAIN_BUCKET,
        amount: 1,
    });
    assert!(h.a().bucket(BucketId(2)).is_none());
    assert!(h.a().ext.tombstones.is_empty());
    assert!(h.a().ext.sessions.is_empty());
}

// ---- replicas and the shard state ------------------------------------------------------

#[test]
fn replicas_applying_the_same_events_have_the_same_hash() {
    let mut h = H::with(1000, 0);
    let g = h.grant("s", 1, RG_DATA, kb(10));
    h.commit(g.reservation, kb(3), false);
    h.ok(Command::Debit {
        rating_group: RG_VOICE,
        units: secs(61),
    });
    // Build a second replica from scratch with the same events.
    let mut a = ShardState::new(Limits::default());
    let mut b = ShardState::new(Limits::default());
    let mut leader: Option<Arc<Account>> = None;
    let tar = tariffs();
    let mut version = 0;
    let cmds = vec![
        Command::CreateAccount {
            currency: "EUR".into(),
            credit_limit: 0,
            initial_balance: 100,
            buckets: vec![],
        },
        Command::Reserve {
            session: sid("s"),
            seq: 1,
            rating_group: RG_DATA,
            requested: kb(10),
        },
        Command::Commit {
            reservation: ReservationId(1),
            used: kb(50),
            is_final: true,
        },
        Command::TopUp {
            bucket: MAIN_BUCKET,
            amount: 20,
        },
    ];
    for t in tar.values() {
        a.apply(
            &Event::SetTariff {
                tariff: t.clone(),
                request_id: RequestId(((T0 as u128) << 80) | 7),
            },
            T0,
        );
        b.apply(
            &Event::SetTariff {
                tariff: t.clone(),
                request_id: RequestId(((T0 as u128) << 80) | 7),
            },
            T0,
        );
    }
    for (i, cmd) in cmds.into_iter().enumerate() {
        let request = Request {
            account: AccountId("x".into()),
            request_id: rid(i as u64 + 1, T0),
            cmd,
        };
        assert!(matches!(
            decide(&mut leader, &tar, &Limits::default(), &request, T0),
            Decision::Accept(_)
        ));
        let ev = Event::Account(AccountEvent {
            request,
            expected_version: version,
            decided_ms: T0,
            tariffs: tar.clone(),
        });
        version += 1;
        let ra = a.apply(&ev, T0);
        let rb = b.apply(&ev, T0);
        assert_eq!(ra, rb);
        assert!(matches!(ra, Applied::Ok(_)));
        // A stale event is a conflict and changes nothing.
        let before = a.state_hash();
        assert_eq!(a.apply(&ev, T0), Applied::Conflict);
        assert_eq!(a.state_hash(), before);
    }
    assert_eq!(a.state_hash(), b.state_hash());
    assert_eq!(a, b);
    assert_eq!(a.account(&AccountId("x".into())), leader.as_ref());
    a.check_invariants().unwrap();
    // Determinism of the digest itself: a clone hashes the same; a change differs.
    let c = a.clone();
    assert_eq!(c.state_hash(), a.state_hash());
    b.apply(
        &Event::SetTariff {
            tariff: tar[&RG_DATA].clone(),
            request_id: RequestId(((T0 as u128) << 80) | 8),
        },
        T0,
    );
    assert_ne!(a.state_hash(), b.state_hash());
    assert_eq!(b.tariffs[&RG_DATA].version, 2);
}

#[test]
fn apply_refuses_a_decision_that_does_not_reproduce() {
    let mut s = ShardState::new(Limits::default());
    let ev = Event::Account(AccountEvent {
        request: Request {
            account: AccountId("x".into()),
            request_id: rid(1, T0),
            cmd: Command::TopUp {
                bucket: MAIN_BUCKET,
                amount: 5,
            },
        },
        expected_version: 0,
        decided_ms: T0,
        tariffs: Tariffs::new(),
    });
    assert_eq!(
        s.apply(&ev, T0),
        Applied::Refused(Rejection::AccountNotFound)
    );
    assert_eq!(s.alarms, 1);
    assert!(s.accounts.is_empty());
}

#[test]
fn shard_due_expiries_are_ordered_and_bounded() {
    let limits = Limits::default();
    let mut s = ShardState::new(limits.clone());
    let tar = tariffs();
    for t in tar.values() {
        s.apply(
            &Event::SetTariff {
                tariff: t.clone(),
                request_id: RequestId(((T0 as u128) << 80) | 7),
            },
            T0,
        );
    }
    let mut n = 0;
    let mut send = |s: &mut ShardState, acct: &str, cmd: Command, now: u64| {
        n += 1;
        let id = AccountId(acct.into());
        let v = s.account(&id).map_or(0, |a| a.version);
        let ev = Event::Account(AccountEvent {
            request: Request {
                account: id,
                request_id: rid(n, now),
                cmd,
            },
            expected_version: v,
            decided_ms: now,
            tariffs: tar.clone(),
        });
        let out = s.apply(&ev, now);
        assert!(matches!(out, Applied::Ok(_)), "{out:?}");
    };
    for (i, acct) in ["c", "a", "b"].iter().enumerate() {
        send(
            &mut s,
            acct,
            Command::CreateAccount {
                currency: "EUR".into(),
                credit_limit: 0,
                initial_balance: 100,
                buckets: vec![],
            },
            T0,
        );
        send(
            &mut s,
            acct,
            Command::Reserve {
                session: sid("s"),
                seq: 1,
                rating_group: RG_DATA,
                requested: kb(1),
            },
            T0 + i as u64,
        );
    }
    let due_at = T0 + limits.reservation_validity_ms + limits.expiry_grace_ms;
    assert!(s.due_expiries(due_at - 1, 10).is_empty());
    let all = s.due_expiries(due_at + 10, 10);
    let names: Vec<&str> = all.iter().map(|(a, _)| a.0.as_str()).collect();
    assert_eq!(names, vec!["c", "a", "b"]);
    assert_eq!(s.due_expiries(due_at + 10, 2).len(), 2);
    s.check_invariants().unwrap();
}

#[test]
fn tariff_changes_deduplicate_on_request_id() {
    let mut s = ShardState::new(Limits::default());
    let t = tariffs()[&RG_DATA].clone();
    let id = rid(100, T0);
    let ev = Event::SetTariff {
        tariff: t.clone(),
        request_id: id,
    };
    assert_eq!(
        s.apply(&ev, T0),
        Applied::Ok(Reply::TariffSet { version: 1 })
    );
    let before = s.state_hash();
    // A retry returns the original version and changes nothing.
    assert_eq!(
        s.apply(&ev, T0 + 10),
        Applied::Ok(Reply::TariffSet { version: 1 })
    );
    assert_eq!(s.state_hash(), before);
    // The same id with another tariff is refused.
    let mut other = t.clone();
    other.prices[0].nano_per_increment += 1;
    let reused = Event::SetTariff {
        tariff: other.clone(),
        request_id: id,
    };
    assert_eq!(
        s.apply(&reused, T0 + 20),
        Applied::Refused(Rejection::RequestIdReused)
    );
    // A new id bumps the version; an id older than the window is too old.
    let next = Event::SetTariff {
        tariff: other.clone(),
        request_id: rid(101, T0),
    };
    assert_eq!(
        s.apply(&next, T0 + 30),
        Applied::Ok(Reply::TariffSet { version: 2 })
    );
    let late = T0 + Limits::default().dedup_window_ms + 1;
    let old = Event::SetTariff {
        tariff: other,
        request_id: rid(102, T0),
    };
    assert_eq!(
        s.apply(&old, late),
        Applied::Refused(Rejection::RequestTooOld)
    );
    assert_eq!(s.tariffs[&RG_DATA].version, 2);
}

fn bulk(ids: &[&str], balance: i64) -> Event {
    Event::BulkCreate {
        accounts: ids.iter().map(|s| AccountId(s.to_string())).collect(),
        currency: "EUR".into(),
        credit_limit: 0,
        initial_balance: balance,
    }
}

/// Bulk creation creates absent accounts only: a repeat (a retry) creates
/// nothing twice, and an account that exists keeps its state.
#[test]
fn bulk_create_is_idempotent_by_account_id() {
    let mut s = ShardState::new(Limits::default());
    let created = |c, e, m| {
        Applied::Ok(Reply::BulkCreated {
            created: c,
            existing: e,
            mismatched: m,
        })
    };
    assert_eq!(s.apply(&bulk(&["a", "b", "a"], 100), T0), created(2, 1, 0));
    let a = s.account(&AccountId("a".into())).unwrap().clone();
    assert_eq!(a.version, 1);
    assert_eq!(a.main_bucket().unwrap().balance, 100);
    assert!(
        !a.ext.is_allocated(),
        "an idle account allocates no extension"
    );
    // Identical accounts of one event share one copy.
    assert!(Arc::ptr_eq(&a, s.account(&AccountId("b".into())).unwrap()));
    // A top-up of one copies it; the other is unchanged.
    let up = Event::Account(AccountEvent {
        request: Request {
            account: AccountId("a".into()),
            request_id: rid(1, T0),
            cmd: Command::TopUp {
                bucket: BucketId(0),
                amount: 5,
            },
        },
        expected_version: 1,
        decided_ms: T0,
        tariffs: Tariffs::new(),
    });
    assert!(matches!(s.apply(&up, T0), Applied::Ok(_)));
    let b = s.account(&AccountId("b".into())).unwrap();
    assert_eq!(b.main_bucket().unwrap().balance, 100);
    assert_eq!(
        s.account(&AccountId("a".into()))
            .unwrap()
            .main_bucket()
            .unwrap()
            .balance,
        105
    );
    // The retry: nothing created, the topped-up account is left alone.
    let mut other = bulk(&["a", "b", "c"], 100);
    if let Event::BulkCreate { currency, .. } = &mut other {
        *currency = "USD".into();
    }
    assert_eq!(s.apply(&other, T0), created(1, 2, 2));
    assert_eq!(
        s.account(&AccountId("a".into()))
            .unwrap()
            .main_bucket()
            .unwrap()
            .balance,
        105
    );
    s.check_invariants().unwrap();
    // Invalid parameters: all or nothing.
    let mut bad = bulk(&["d"], -1);
    assert_eq!(
        s.apply(&bad, T0),
        Applied::Refused(Rejection::LimitExceeded)
    );
    if let Event::BulkCreate {
        initial_balance,
        currency,
        ..
    } = &mut bad
    {
        *initial_balance = 1;
        *currency = "EURO".into();
    }
    assert_eq!(
        s.apply(&bad, T0),
        Applied::Refused(Rejection::LimitExceeded)
    );
    assert!(s.account(&AccountId("d".into())).is_none());
}

/// A snapshot round trip keeps the state and its hash, and shares identical
/// consecutive accounts again.
#[test]
fn snapshot_of_bulk_accounts_round_trips_and_reshares() {
    let mut s = ShardState::new(Limits::default());
    s.apply(&bulk(&["a1", "a2", "a3"], 7), T0);
    let bytes = crate::tests_codec::encode(&s);
    let back: ShardState = crate::tests_codec::decode(&bytes);
    assert_eq!(back, s);
    assert_eq!(back.state_hash(), s.state_hash());
    let a1 = back.account(&AccountId("a1".into())).unwrap();
    assert!(Arc::ptr_eq(
        a1,
        back.account(&AccountId("a3".into())).unwrap()
    ));
}

/// The extension's form (absent or allocated and empty) never shows in
/// equality, hash or encoding.
#[test]
fn empty_extension_is_invisible() {
    let mut s = ShardState::new(Limits::default());
    s.apply(&bulk(&["x"], 1), T0);
    let a = s.account(&AccountId("x".into())).unwrap();
    let mut b = (**a).clone();
    let _ = b.ext.sessions.len(); // read: no allocation
    assert!(!b.ext.is_allocated());
    b.ext.dedup.retain(|_, _| true); // mutable access allocates
    assert!(b.ext.is_allocated());
    assert_eq!(&b, &**a);
    assert_eq!(hash::stable_hash(&b), hash::stable_hash(&**a));
    assert_eq!(
        crate::tests_codec::encode(&b),
        crate::tests_codec::encode(&**a)
    );
    b.ext.shrink();
    assert!(!b.ext.is_allocated());
}

/// Sizes an idle account pays (see `Account`): guards the layout.
#[test]
fn idle_account_layout_stays_compact() {
    assert!(std::mem::size_of::<Account>() <= 72);
    assert!(std::mem::size_of::<account::Bucket>() <= 104);
    assert!(std::mem::size_of::<state::AccountKey>() <= 16);
}
