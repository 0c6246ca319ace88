//! Model test of the ledger (DESIGN §7.1): random sequences of requests run
//! against `decide()` and against a naive reference model written
//! independently (money only, one main bucket, one unit dimension). After
//! every step: the decisions must be equal, the ledger's balances, holds,
//! debt and reservations must match the model's, DESIGN §3 invariants must
//! hold, and a replica applying the accepted events must hold the same
//! account. At the end two replicas must have the same state hash.
use charging_node::ledger::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;
const NANO: u128 = 1_000_000_000;
/// Short validity so that random time steps expire reservations; the total
/// time of a case (< 100 × 5 s) stays inside the dedup window (10 min).
const VALIDITY_MS: u64 = 5_000;
const GRACE_MS: u64 = 500;

fn limits() -> Limits {
    Limits {
        reservation_validity_ms: VALIDITY_MS,
        expiry_grace_ms: GRACE_MS,
        ..Limits::default()
    }
}

/// (increment bytes, nano per increment) by rating group; RG 3 has no tariff.
fn tariff_spec(rg: u32) -> Option<(u64, u64)> {
    match rg {
        1 => Some((100, 150_000_000)),
        2 => Some((10, 700_000_000)),
        _ => None,
    }
}

fn tariffs() -> Tariffs {
    let mut t = Tariffs::new();
    for rg in [1, 2] {
        let (increment, nano_per_increment) = tariff_spec(rg).unwrap();
        t.insert(
            rg,
            Tariff {
                rating_group: rg,
                version: 1,
                prices: vec![Price {
                    unit: BucketKind::Bytes,
                    increment,
                    nano_per_increment,
                }],
            },
        );
    }
    t
}

fn price(rg: u32, bytes: u64) -> i64 {
    let (inc, nano) = tariff_spec(rg).unwrap();
    let n = u128::from(bytes.div_ceil(inc));
    (n * u128::from(nano)).div_ceil(NANO) as i64
}

fn b(n: u64) -> Units {
    Units {
        volume_bytes: n,
        ..Units::default()
    }
}

// ---- the reference model ---------------------------------------------------------------

#[derive(Clone, Debug)]
struct MRes {
    session: String,
    rg: u32,
    priced: bool,
    granted: u64,
    used: u64,
    rated: u64,
    charged: i64,
    hold: i64,
    expires_at: u64,
}

#[derive(Clone, Debug)]
struct MSess {
    last_seq: u64,
    last_cmd: Command,
    last_reply: Reply,
    closed: bool,
    open: BTreeMap<u32, u64>,
}

#[derive(Clone, Debug)]
struct Model {
    exists: bool,
    active: bool,
    credit_limit: i64,
    balance: i64,
    reserved: i64,
    debt: i64,
    unrated: u64,
    next_res: u64,
    open: BTreeMap<u64, MRes>,
    tombs: BTreeMap<u64, MRes>,
    sessions: BTreeMap<String, MSess>,
    charges: BTreeMap<RequestId, (i64, i64)>,
    dedup: BTreeMap<RequestId, (Command, Reply)>,
    now: u64,
}

type MR<T> = Result<T, Rejection>;

fn rank(r: Rejection) -> u8 {
    r as u8
}

impl Model {
    fn new() -> Model {
        Model {
            exists: false,
            active: true,
            credit_limit: 0,
            balance: 0,
            reserved: 0,
            debt: 0,
            unrated: 0,
            next_res: 1,
            open: BTreeMap::new(),
            tombs: BTreeMap::new(),
            sessions: BTreeMap::new(),
            charges: BTreeMap::new(),
            dedup: BTreeMap::new(),
            now: T0,
        }
    }

    fn avail(&self) -> i64 {
        self.balance - self.reserved + self.credit_limit
    }

    fn new_res(&self, session: &str, rg: u32) -> MRes {
        MRes {
            session: session.into(),
            rg,
            priced: tariff_spec(rg).is_some(),
            granted: 0,
            used: 0,
            rated: 0,
            charged: 0,
            hold: 0,
            expires_at: self.now,
        }
    }

    fn charge(&mut self, r: &mut MRes, used: u64) -> (i64, i64) {
        r.used += used;
        if !r.priced {
            self.unrated += used;
            return (0, 0);
        }
        r.rated += used;
        let new = price(r.rg, r.rated);
        let due = new - r.charged;
        let from_hold = due.min(r.hold);
        r.hold -= from_hold;
        self.reserved -= from_hold;
        self.balance -= from_hold;
        let rest = due - from_hold;
        let take = rest.min(self.avail().max(0));
        self.balance -= take;
        self.debt += rest - take;
        r.charged = new;
        (due, rest - take)
    }

    fn release(&mut self, r: &mut MRes) {
        self.reserved -= r.hold;
        r.hold = 0;
    }

    /// Grant on a reservation that holds nothing.
    fn grant(&mut self, r: &mut MRes, want: u64) -> MR<(u64, bool)> {
        if want == 0 {
            r.expires_at = self.now + VALIDITY_MS;
            return Ok((0, false));
        }
        let Some((inc, _)) = tariff_spec(r.rg) else {
            return Err(Rejection::RatingFailed);
        };
        let cost = |u: u64| price(r.rg, r.rated + u) - r.charged;
        let avail = self.avail();
        let granted = if cost(want) <= avail {
            want
        } else {
            let mut k = want.div_ceil(inc) - 1;
            while k > 0 && cost(k * inc) > avail {
                k -= 1;
            }
            k * inc
        };
        if granted == 0 {
            return Err(Rejection::InsufficientBalance);
        }
        let hold = cost(granted);
        r.hold = hold;
        self.reserved += hold;
        r.granted += granted;
        r.expires_at = self.now + VALIDITY_MS;
        Ok((granted, granted < want))
    }

    fn missing(&self, id: u64) -> Rejection {
        if id >= 1 && id < self.next_res {
            Rejection::ReservationResolved
        } else {
            Rejection::ReservationNotFound
        }
    }

    fn charge_report(&mut self, s: &str, open: Option<u64>, rg: u32, used: u64) -> (i64, i64) {
        if let Some(id) = open {
            let mut r = self.open.remove(&id).unwrap();
            let out = self.charge(&mut r, used);
            self.open.insert(id, r);
            out
        } else if let Some(id) = self
            .tombs
            .iter()
            .filter(|(_, r)| r.session == s && r.rg == rg)
            .map(|(i, _)| *i)
            .max()
        {
            let mut r = self.tombs.remove(&id).unwrap();
            let out = self.charge(&mut r, used);
            self.tombs.insert(id, r);
            out
        } else {
            let mut r = self.new_res(s, rg);
            self.charge(&mut r, used)
        }
    }

    fn unlink(&mut self, s: &str, id: u64) {
        if let Some(sess) = self.sessions.get_mut(s) {
            sess.open.retain(|_, v| *v != id);
        }
    }

    /// The model's decision; on acceptance `self` becomes the next state.
    fn decide(&mut self, req: &Request) -> Decision {
        if let Command::CreateAccount {
            credit_limit,
            initial_balance,
            ..
        } = &req.cmd
        {
            if self.exists {
                return match self.dedup.get(&req.request_id) {
                    Some((c, r)) if *c == req.cmd => Decision::Duplicate(r.clone()),
                    Some(_) => Decision::Reject(Rejection::RequestIdReused),
                    None => Decision::Reject(Rejection::AccountExists),
                };
            }
            self.exists = true;
            self.credit_limit = *credit_limit;
            self.balance = *initial_balance;
            let reply = Reply::Created { version: 1 };
            self.dedup
                .insert(req.request_id, (req.cmd.clone(), reply.clone()));
            return Decision::Accept(reply);
        }
        if !self.exists {
            return Decision::Reject(Rejection::AccountNotFound);
        }
        let session_key = match &req.cmd {
            Command::Reserve { session, seq, .. }
            | Command::Update { session, seq, .. }
            | Command::Terminate { session, seq, .. }
            | Command::Open { session, seq, .. } => Some((session.0.clone(), *seq)),
            _ => None,
        };
        let is_expire = matches!(req.cmd, Command::Expire { .. });
        let mut pending = None;
        match &session_key {
            Some((s, seq)) => {
                if let Some(sess) = self.sessions.get(s) {
                    if *seq == sess.last_seq {
                        if sess.last_cmd == req.cmd {
                            return Decision::Duplicate(sess.last_reply.clone());
                        }
                        pending = Some(Rejection::RequestIdReused);
                    } else if *seq < sess.last_seq {
                        pending = Some(Rejection::RequestTooOld);
                    }
                }
            }
            None if is_expire => {}
            None => {
                if let Some((c, r)) = self.dedup.get(&req.request_id) {
                    if *c == req.cmd {
                        return Decision::Duplicate(r.clone());
                    }
                    pending = Some(Rejection::RequestIdReused);
                }
            }
        }
        let mut next = self.clone();
        let out = next.eval(req);
        let reply = match (out, pending) {
            (Err(r), Some(p)) if rank(p) < rank(r) => return Decision::Reject(p),
            (Err(r), _) => return Decision::Reject(r),
            (Ok(_), Some(p)) => return Decision::Reject(p),
            (Ok(reply), None) => reply,
        };
        match session_key {
            Some((s, seq)) => {
                let sess = next.sessions.get_mut(&s).unwrap();
                sess.last_seq = seq;
                sess.last_cmd = req.cmd.clone();
                sess.last_reply = reply.clone();
            }
            None if is_expire => {}
            None => {
                next.dedup
                    .insert(req.request_id, (req.cmd.clone(), reply.clone()));
            }
        }
        *self = next;
        Decision::Accept(reply)
    }

    fn eval(&mut self, req: &Request) -> MR<Reply> {
        match &req.cmd {
            Command::TopUp { amount, .. } => {
                let settle = self.debt.min(*amount);
                self.debt -= settle;
                self.balance += amount - settle;
                Ok(Reply::ToppedUp {
                    balance: self.balance,
                })
            }
            Command::SetState { state } => {
                self.active = *state == AccountState::Active;
                Ok(Reply::StateSet)
            }
            Command::Debit {
                rating_group,
                units,
            } => {
                if !self.active {
                    return Err(Rejection::AccountNotActive);
                }
                let bytes = units.volume_bytes;
                let cost = match tariff_spec(*rating_group) {
                    None if bytes > 0 => return Err(Rejection::RatingFailed),
                    None => 0,
                    Some(_) => price(*rating_group, bytes),
                };
                if cost > self.avail() {
                    return Err(Rejection::InsufficientBalance);
                }
                self.balance -= cost;
                if cost > 0 {
                    self.charges.insert(req.request_id, (cost, 0));
                }
                Ok(Reply::Debited { charged: cost })
            }
            Command::Refund { original, amount } => {
                let Some((charged, refunded)) = self.charges.get(original).copied() else {
                    return Err(Rejection::RefundExceedsCharge);
                };
                if *amount > charged - refunded {
                    return Err(Rejection::RefundExceedsCharge);
                }
                let settle = self.debt.min(*amount);
                self.debt -= settle;
                self.balance += amount - settle;
                self.charges.insert(*original, (charged, refunded + amount));
                Ok(Reply::Refunded {
                    refunded_total: refunded + amount,
                })
            }
            Command::Commit {
                reservation,
                used,
                is_final,
            } => {
                let id = reservation.0;
                let (charged, debt) = if let Some(mut r) = self.open.remove(&id) {
                    let out = self.charge(&mut r, used.volume_bytes);
                    if *is_final {
                        self.release(&mut r);
                        self.unlink(&r.session.clone(), id);
                    } else {
                        self.open.insert(id, r);
                    }
                    out
                } else if let Some(mut r) = self.tombs.remove(&id) {
                    let out = self.charge(&mut r, used.volume_bytes);
                    if !*is_final {
                        self.tombs.insert(id, r);
                    }
                    out
                } else {
                    return Err(self.missing(id));
                };
                if charged > 0 {
                    self.charges.insert(req.request_id, (charged, 0));
                }
                Ok(Reply::Committed { charged, debt })
            }
            Command::Release { reservation } => {
                let id = reservation.0;
                let Some(mut r) = self.open.remove(&id) else {
                    return Err(if self.tombs.contains_key(&id) {
                        Rejection::ReservationResolved
                    } else {
                        self.missing(id)
                    });
                };
                self.release(&mut r);
                self.unlink(&r.session.clone(), id);
                Ok(Reply::Released)
            }
            Command::Expire { reservation } => {
                let id = reservation.0;
                let Some(mut r) = self.open.remove(&id) else {
                    return Err(if self.tombs.contains_key(&id) {
                        Rejection::ReservationResolved
                    } else {
                        self.missing(id)
                    });
                };
                if r.expires_at + GRACE_MS > self.now {
                    return Err(Rejection::RequestTooOld);
                }
                self.release(&mut r);
                self.unlink(&r.session.clone(), id);
                self.tombs.insert(id, r);
                Ok(Reply::Expired)
            }
            Command::Reserve {
                session,
                rating_group,
                requested,
                ..
            } => {
                if !self.active {
                    return Err(Rejection::AccountNotActive);
                }
                let s = session.0.clone();
                let rg = *rating_group;
                if self.sessions.get(&s).is_some_and(|x| x.closed) {
                    return Err(Rejection::SessionNotFound);
                }
                let want = requested.volume_bytes;
                let existing = self.sessions.get(&s).and_then(|x| x.open.get(&rg).copied());
                if let Some(id) = existing {
                    let mut r = self.open.remove(&id).unwrap();
                    self.release(&mut r);
                    let (g, f) = self.grant(&mut r, want)?;
                    let grant = Grant {
                        reservation: ReservationId(id),
                        granted: b(g),
                        final_units: f,
                        expires_at_ms: r.expires_at,
                    };
                    self.open.insert(id, r);
                    return Ok(Reply::Reserved(grant));
                }
                let mut r = self.new_res(&s, rg);
                let (g, f) = self.grant(&mut r, want)?;
                let id = self.next_res;
                self.next_res += 1;
                let grant = Grant {
                    reservation: ReservationId(id),
                    granted: b(g),
                    final_units: f,
                    expires_at_ms: r.expires_at,
                };
                self.open.insert(id, r);
                let sess = self.sessions.entry(s).or_insert_with(|| MSess {
                    last_seq: 0,
                    last_cmd: Command::SetState {
                        state: AccountState::Active,
                    },
                    last_reply: Reply::StateSet,
                    closed: false,
                    open: BTreeMap::new(),
                });
                sess.open.insert(rg, id);
                Ok(Reply::Reserved(grant))
            }
            Command::Update {
                session, reports, ..
            }
            | Command::Open {
                session, reports, ..
            } => {
                let s = session.0.clone();
                let opening = matches!(req.cmd, Command::Open { .. });
                if opening && !self.active {
                    return Err(Rejection::AccountNotActive);
                }
                match self.sessions.get(&s) {
                    Some(x) if !x.closed => {}
                    None if opening => {
                        self.sessions.insert(
                            s.clone(),
                            MSess {
                                last_seq: 0,
                                last_cmd: Command::SetState {
                                    state: AccountState::Active,
                                },
                                last_reply: Reply::StateSet,
                                closed: false,
                                open: BTreeMap::new(),
                            },
                        );
                    }
                    _ => return Err(Rejection::SessionNotFound),
                }
                let (mut charged, mut debt) = (0, 0);
                let mut grants = Vec::new();
                // Open never fails for a rating group's sake.
                let mut did = reports.is_empty() || opening;
                let mut worst: Option<Rejection> = None;
                for rep in reports {
                    let rg = rep.rating_group;
                    let open = self.sessions[&s].open.get(&rg).copied();
                    let tomb = self.tombs.values().any(|r| r.session == s && r.rg == rg);
                    if open.is_none()
                        && rep.used.volume_bytes > 0
                        && rep.requested.volume_bytes > 0
                        && !tomb
                    {
                        // A new group's usage goes on the reservation its
                        // grant opens.
                        let mut r = self.new_res(&s, rg);
                        let (c, d) = self.charge(&mut r, rep.used.volume_bytes);
                        charged += c;
                        debt += d;
                        did = true;
                        let result = if !self.active {
                            Err(Rejection::AccountNotActive)
                        } else {
                            self.grant(&mut r, rep.requested.volume_bytes)
                                .map(|(g, f)| {
                                    let id = self.next_res;
                                    self.next_res += 1;
                                    let grant = Grant {
                                        reservation: ReservationId(id),
                                        granted: b(g),
                                        final_units: f,
                                        expires_at_ms: r.expires_at,
                                    };
                                    self.open.insert(id, r);
                                    self.sessions.get_mut(&s).unwrap().open.insert(rg, id);
                                    grant
                                })
                        };
                        grants.push(GrantResult {
                            rating_group: rg,
                            result,
                        });
                        continue;
                    }
                    if rep.used.volume_bytes > 0 {
                        let (c, d) = self.charge_report(&s, open, rg, rep.used.volume_bytes);
                        charged += c;
                        debt += d;
                        did = true;
                    }
                    let want = rep.requested.volume_bytes;
                    if want == 0 {
                        if let Some(id) = open {
                            let mut r = self.open.remove(&id).unwrap();
                            self.release(&mut r);
                            self.unlink(&s, id);
                            did = true;
                        }
                        continue;
                    }
                    let result = if let Some(id) = open {
                        let mut r = self.open.remove(&id).unwrap();
                        self.release(&mut r);
                        let res = if !self.active {
                            Err(Rejection::AccountNotActive)
                        } else {
                            self.grant(&mut r, want).map(|(g, f)| Grant {
                                reservation: ReservationId(id),
                                granted: b(g),
                                final_units: f,
                                expires_at_ms: r.expires_at,
                            })
                        };
                        self.open.insert(id, r);
                        res
                    } else if !self.active {
                        Err(Rejection::AccountNotActive)
                    } else {
                        let mut r = self.new_res(&s, rg);
                        match self.grant(&mut r, want) {
                            Ok((g, f)) => {
                                let id = self.next_res;
                                self.next_res += 1;
                                let grant = Grant {
                                    reservation: ReservationId(id),
                                    granted: b(g),
                                    final_units: f,
                                    expires_at_ms: r.expires_at,
                                };
                                self.open.insert(id, r);
                                self.sessions.get_mut(&s).unwrap().open.insert(rg, id);
                                Ok(grant)
                            }
                            Err(e) => Err(e),
                        }
                    };
                    match &result {
                        Ok(_) => did = true,
                        Err(e) => {
                            worst = Some(match worst {
                                Some(w) if rank(w) < rank(*e) => w,
                                _ => *e,
                            })
                        }
                    }
                    grants.push(GrantResult {
                        rating_group: rg,
                        result,
                    });
                }
                if !did {
                    if let Some(w) = worst {
                        return Err(w);
                    }
                }
                Ok(Reply::Updated {
                    grants,
                    charged,
                    debt,
                })
            }
            Command::Terminate {
                session, reports, ..
            } => {
                let s = session.0.clone();
                match self.sessions.get(&s) {
                    Some(x) if !x.closed => {}
                    _ => return Err(Rejection::SessionNotFound),
                }
                let (mut charged, mut debt) = (0, 0);
                for rep in reports {
                    if rep.used.volume_bytes > 0 {
                        let open = self.sessions[&s].open.get(&rep.rating_group).copied();
                        let (c, d) =
                            self.charge_report(&s, open, rep.rating_group, rep.used.volume_bytes);
                        charged += c;
                        debt += d;
                    }
                }
                let ids: Vec<u64> = self.sessions[&s].open.values().copied().collect();
                for id in ids {
                    let mut r = self.open.remove(&id).unwrap();
                    self.release(&mut r);
                }
                let sess = self.sessions.get_mut(&s).unwrap();
                sess.open.clear();
                sess.closed = true;
                Ok(Reply::Terminated { charged, debt })
            }
            Command::CreateAccount { .. } | Command::AddBucket { .. } => {
                unreachable!("not generated")
            }
        }
    }
}

// ---- the harness ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Reserve { s: u8, rg: u8, bytes: u64 },
    Update { s: u8, reports: Vec<(u8, u64, u64)> },
    Open { s: u8, reports: Vec<(u8, u64, u64)> },
    Terminate { s: u8, reports: Vec<(u8, u64)> },
    Commit { pick: u8, used: u64, fin: bool },
    Release { pick: u8 },
    Debit { rg: u8, bytes: u64 },
    TopUp { amount: i64 },
    Refund { pick: u8, amount: i64 },
    SetState { active: bool },
    Advance { ms: u64 },
    Retry { pick: u8 },
    Reuse { pick: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    let rg = 1u8..=3;
    prop_oneof![
        6 => (0u8..6, rg.clone(), 0u64..6000).prop_map(|(s, rg, bytes)| Op::Reserve { s, rg, bytes }),
        6 => (0u8..6, prop::collection::vec((1u8..=3, 0u64..4000, 0u64..6000), 0..3))
            .prop_map(|(s, reports)| Op::Update { s, reports }),
        3 => (0u8..6, prop::collection::vec((1u8..=3, 0u64..4000, 0u64..6000), 0..3))
            .prop_map(|(s, reports)| Op::Open { s, reports }),
        1 => (0u8..6, prop::collection::vec((1u8..=3, 0u64..4000), 0..3))
            .prop_map(|(s, reports)| Op::Terminate { s, reports }),
        5 => (any::<u8>(), 0u64..8000, any::<bool>())
            .prop_map(|(pick, used, fin)| Op::Commit { pick, used, fin }),
        2 => any::<u8>().prop_map(|pick| Op::Release { pick }),
        3 => (rg, 0u64..3000).prop_map(|(rg, bytes)| Op::Debit { rg, bytes }),
        2 => (1i64..400).prop_map(|amount| Op::TopUp { amount }),
        2 => (any::<u8>(), 1i64..40).prop_map(|(pick, amount)| Op::Refund { pick, amount }),
        1 => (0u8..4).prop_map(|x| Op::SetState { active: x != 0 }),
        4 => (0u64..5000).prop_map(|ms| Op::Advance { ms }),
        2 => any::<u8>().prop_map(|pick| Op::Retry { pick }),
        1 => any::<u8>().prop_map(|pick| Op::Reuse { pick }),
    ]
}

struct Run {
    model: Model,
    leader: Option<Arc<Account>>,
    replica: ShardState,
    events: Vec<(Event, u64)>,
    accepted: Vec<Request>,
    tariffs: Tariffs,
    limits: Limits,
    n: u64,
    account: AccountId,
}

impl Run {
    fn new() -> Run {
        let limits = limits();
        let mut replica = ShardState::new(limits.clone());
        let mut events = Vec::new();
        for (i, t) in tariffs().values().enumerate() {
            let ev = Event::SetTariff {
                tariff: t.clone(),
                request_id: RequestId(((T0 as u128) << 80) | (i as u128 + 1)),
            };
            replica.apply(&ev, T0);
            events.push((ev, T0));
        }
        Run {
            model: Model::new(),
            leader: None,
            replica,
            events,
            accepted: Vec::new(),
            tariffs: tariffs(),
            limits,
            n: 0,
            account: AccountId("imsi-001010000000001".into()),
        }
    }

    fn request(&mut self, cmd: Command) -> Request {
        self.n += 1;
        let request_id = if matches!(cmd, Command::Expire { .. }) {
            RequestId(0)
        } else {
            RequestId((u128::from(self.model.now) << 80) | u128::from(self.n))
        };
        Request {
            account: self.account.clone(),
            request_id,
            cmd,
        }
    }

    fn send(&mut self, req: &Request) -> Result<(), TestCaseError> {
        let now = self.model.now;
        let tariffs: Tariffs = req
            .cmd
            .rating_groups()
            .into_iter()
            .filter_map(|g| self.tariffs.get(&g).map(|t| (g, t.clone())))
            .collect();
        let before = self.leader.clone();
        let version = before.as_ref().map_or(0, |a| a.version);
        let got = decide(&mut self.leader, &tariffs, &self.limits, req, now);
        let want = self.model.decide(req);
        prop_assert_eq!(&got, &want, "request {:?}", req);
        if let Decision::Accept(reply) = &got {
            let ev = Event::Account(AccountEvent {
                request: req.clone(),
                expected_version: version,
                decided_ms: now,
                tariffs,
            });
            prop_assert_eq!(self.replica.apply(&ev, now), Applied::Ok(reply.clone()));
            self.events.push((ev, now));
            self.accepted.push(req.clone());
        } else {
            prop_assert_eq!(
                &self.leader,
                &before,
                "a non-acceptance changed the account"
            );
        }
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        self.replica
            .check_invariants()
            .map_err(TestCaseError::fail)?;
        prop_assert_eq!(self.replica.account(&self.account), self.leader.as_ref());
        let Some(a) = self.leader.as_deref() else {
            return Ok(());
        };
        let m = &self.model;
        let main = a.bucket(BucketId(1)).unwrap();
        prop_assert_eq!(
            (
                main.balance,
                main.reserved,
                a.debt,
                a.ext.unrated.volume_bytes
            ),
            (m.balance, m.reserved, m.debt, m.unrated)
        );
        prop_assert_eq!(a.state == AccountState::Active, m.active);
        prop_assert_eq!(a.view(m.now).available, m.avail());
        prop_assert_eq!(a.ext.reservations.len(), m.open.len());
        for (id, r) in &m.open {
            let l = &a.ext.reservations[&ReservationId(*id)];
            let hold: i64 = l.holds.iter().map(|h| h.amount).sum();
            prop_assert_eq!(
                (l.charged, l.rated.volume_bytes, hold),
                (r.charged, if r.priced { r.rated } else { 0 }, r.hold)
            );
            prop_assert_eq!(
                (l.used.volume_bytes, l.granted.volume_bytes),
                (r.used, r.granted)
            );
            prop_assert_eq!(l.expires_at_ms, r.expires_at);
        }
        let tombs: Vec<u64> = a.ext.tombstones.keys().map(|k| k.0).collect();
        let mtombs: Vec<u64> = m.tombs.keys().copied().collect();
        prop_assert_eq!(tombs, mtombs);
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let sname = |s: u8| SessionId(format!("sess-{s}"));
        let next_seq = |m: &Model, s: u8| {
            m.sessions
                .get(&format!("sess-{s}"))
                .map_or(1, |x| x.last_seq + 1)
        };
        let pick_res = |m: &Model, pick: u8| ReservationId(u64::from(pick) % (m.next_res + 1));
        let cmd = match op {
            Op::Reserve { s, rg, bytes } => Command::Reserve {
                session: sname(*s),
                seq: next_seq(&self.model, *s),
                rating_group: u32::from(*rg),
                requested: b(*bytes),
            },
            Op::Update { s, reports } => Command::Update {
                session: sname(*s),
                seq: next_seq(&self.model, *s),
                reports: reports
                    .iter()
                    .map(|(rg, used, req)| UsageReport {
                        rating_group: u32::from(*rg),
                        used: b(*used),
                        requested: b(*req),
                    })
                    .collect(),
            },
            Op::Open { s, reports } => Command::Open {
                session: sname(*s),
                seq: next_seq(&self.model, *s),
                reports: reports
                    .iter()
                    .map(|(rg, used, req)| UsageReport {
                        rating_group: u32::from(*rg),
                        used: b(*used),
                        requested: b(*req),
                    })
                    .collect(),
            },
            Op::Terminate { s, reports } => Command::Terminate {
                session: sname(*s),
                seq: next_seq(&self.model, *s),
                reports: reports
                    .iter()
                    .map(|(rg, used)| UsageReport {
                        rating_group: u32::from(*rg),
                        used: b(*used),
                        requested: Units::default(),
                    })
                    .collect(),
            },
            Op::Commit { pick, used, fin } => Command::Commit {
                reservation: pick_res(&self.model, *pick),
                used: b(*used),
                is_final: *fin,
            },
            Op::Release { pick } => Command::Release {
                reservation: pick_res(&self.model, *pick),
            },
            Op::Debit { rg, bytes } => Command::Debit {
                rating_group: u32::from(*rg),
                units: b(*bytes),
            },
            Op::TopUp { amount } => Command::TopUp {
                bucket: BucketId(0),
                amount: *amount,
            },
            Op::Refund { pick, amount } => {
                let keys: Vec<RequestId> = self.model.charges.keys().copied().collect();
                let i = usize::from(*pick) % (keys.len() + 1);
                let original = keys.get(i).copied().unwrap_or(RequestId(u128::from(*pick)));
                Command::Refund {
                    original,
                    amount: *amount,
                }
            }
            Op::SetState { active } => Command::SetState {
                state: if *active {
                    AccountState::Active
                } else {
                    AccountState::Suspended
                },
            },
            Op::Advance { ms } => {
                self.model.now += ms;
                return self.sweep();
            }
            Op::Retry { pick } => {
                if self.accepted.is_empty() {
                    return Ok(());
                }
                let req = self.accepted[usize::from(*pick) % self.accepted.len()].clone();
                return self.send(&req);
            }
            Op::Reuse { pick } => {
                if self.accepted.is_empty() {
                    return Ok(());
                }
                let mut req = self.accepted[usize::from(*pick) % self.accepted.len()].clone();
                if matches!(req.cmd, Command::Expire { .. }) {
                    return Ok(());
                }
                req.cmd = match req.cmd {
                    Command::Reserve {
                        session,
                        seq,
                        rating_group,
                        requested,
                    } => Command::Reserve {
                        session,
                        seq,
                        rating_group,
                        requested: b(requested.volume_bytes + 1),
                    },
                    _ => Command::TopUp {
                        bucket: BucketId(0),
                        amount: 7,
                    },
                };
                return self.send(&req);
            }
        };
        let req = self.request(cmd);
        self.send(&req)
    }

    /// The expiry sweeper: the replica's due list must be the model's.
    fn sweep(&mut self) -> Result<(), TestCaseError> {
        let now = self.model.now;
        let due = self.replica.due_expiries(now, 1000);
        let mut want: Vec<(u64, u64)> = self
            .model
            .open
            .iter()
            .filter(|(_, r)| r.expires_at + GRACE_MS <= now)
            .map(|(id, r)| (r.expires_at, *id))
            .collect();
        want.sort();
        let want: Vec<(AccountId, ReservationId)> = want
            .into_iter()
            .map(|(_, id)| (self.account.clone(), ReservationId(id)))
            .collect();
        prop_assert_eq!(&due, &want);
        for (_, id) in due {
            let req = self.request(Command::Expire { reservation: id });
            self.send(&req)?;
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn ledger_agrees_with_the_model(
        balance in 0i64..3000,
        credit_limit in prop_oneof![Just(0i64), 0i64..300],
        ops in prop::collection::vec(op(), 100),
    ) {
        let mut run = Run::new();
        let create = run.request(Command::CreateAccount {
            currency: "EUR".into(),
            credit_limit,
            initial_balance: balance,
            buckets: vec![],
        });
        run.send(&create)?;
        for op in &ops {
            run.step(op)?;
        }
        // A fresh replica replaying the log reaches the same state.
        let mut other = ShardState::new(run.limits.clone());
        for (ev, ts) in &run.events {
            prop_assert!(matches!(other.apply(ev, *ts), Applied::Ok(_)));
        }
        prop_assert_eq!(other.state_hash(), run.replica.state_hash());
        prop_assert_eq!(&other, &run.replica);
    }
}
