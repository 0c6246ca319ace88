//! The seeded client workload shared by every layer: a few accounts, each
//! client picks an account and an operation; retries reuse request ids.
//!
//! Operations: top-up, debit (one-shot charge), reserve (one session per
//! reservation), final commit or release of a reservation the client saw
//! granted, refund of a debit it saw charged, and exact re-sends of an earlier
//! request (a duplicate must change nothing and answer the same).
use crate::history::{request_id_at, Outcome};
use crate::rng::Rng;
use charging_node::ledger::{
    AccountId, BucketId, Command, Price, RatingGroup, Reply, Request, RequestId, ReservationId,
    SessionId, Tariff, Tariffs, Units,
};
use std::collections::BTreeMap;

pub const RG: RatingGroup = 32;
pub const MB: u64 = 1_000_000;

/// The tariff the workload runs under: 1 minor unit per started MB on RG 32.
pub fn tariff() -> Tariff {
    Tariff {
        rating_group: RG,
        version: 1,
        prices: vec![Price {
            unit: charging_node::ledger::BucketKind::Bytes,
            increment: MB,
            nano_per_increment: 1_000_000_000,
        }],
    }
}

pub fn tariffs() -> Tariffs {
    let t = tariff();
    let mut m = Tariffs::new();
    m.insert(t.rating_group, t);
    m
}

pub fn mb(n: u64) -> Units {
    Units {
        volume_bytes: n * MB,
        ..Units::default()
    }
}

/// What the workload knows of one account from acknowledged results.
#[derive(Clone, Debug, Default)]
struct Known {
    /// Reservations granted and not yet resolved by this workload: (id, granted MB).
    open: Vec<(u64, u64)>,
    /// Debits acknowledged: (request id, charged).
    debits: Vec<(RequestId, i64)>,
}

#[derive(Clone, Debug)]
pub struct Workload {
    rng: Rng,
    pub accounts: Vec<AccountId>,
    known: BTreeMap<AccountId, Known>,
    sessions: u64,
    /// Completed requests a client may re-send as duplicates.
    sent: Vec<Request>,
    /// Percent of operations that are exact re-sends of an earlier request.
    pub duplicate_pct: u64,
}

impl Workload {
    pub fn new(seed: u64, accounts: usize, prefix: &str) -> Workload {
        Workload {
            rng: Rng::new(seed),
            accounts: (0..accounts)
                .map(|i| AccountId(format!("{prefix}-{i}")))
                .collect(),
            known: BTreeMap::new(),
            sessions: 0,
            sent: Vec::new(),
            duplicate_pct: 5,
        }
    }

    fn rid(&mut self, now_ms: u64) -> RequestId {
        request_id_at(now_ms, self.rng.next_u64())
    }

    /// The account creations, one per account: prepaid, 50..=200 in money.
    pub fn setup(&mut self, now_ms: u64) -> Vec<Request> {
        let accounts = self.accounts.clone();
        accounts
            .into_iter()
            .map(|a| Request {
                account: a,
                request_id: self.rid(now_ms),
                cmd: Command::CreateAccount {
                    currency: "EUR".into(),
                    credit_limit: 0,
                    initial_balance: self.rng.range(50, 200) as i64,
                    buckets: Vec::new(),
                },
            })
            .collect()
    }

    /// The next request of client `process` at its clock `now_ms`.
    pub fn next(&mut self, process: u32, now_ms: u64) -> Request {
        if self.rng.chance(self.duplicate_pct) && !self.sent.is_empty() {
            let i = self.rng.below(self.sent.len() as u64) as usize;
            return self.sent[i].clone();
        }
        let account = self.rng.pick(&self.accounts).cloned().expect("accounts");
        let k = self.known.entry(account.clone()).or_default().clone();
        let roll = self.rng.below(100);
        let cmd = if roll < 15 {
            Command::TopUp {
                bucket: BucketId(0),
                amount: self.rng.range(1, 50) as i64,
            }
        } else if roll < 35 {
            Command::Debit {
                rating_group: RG,
                units: mb(self.rng.range(1, 20)),
            }
        } else if roll < 60 || k.open.is_empty() && roll < 85 {
            self.sessions += 1;
            Command::Reserve {
                session: SessionId(format!("s{process}-{}", self.sessions)),
                seq: 0,
                rating_group: RG,
                requested: mb(self.rng.range(1, 30)),
            }
        } else if roll < 85 {
            let (res, granted) = k.open[self.rng.below(k.open.len() as u64) as usize];
            if self.rng.chance(60) {
                Command::Commit {
                    reservation: ReservationId(res),
                    used: mb(self.rng.range(0, granted)),
                    is_final: true,
                }
            } else {
                Command::Release {
                    reservation: ReservationId(res),
                }
            }
        } else if let Some((orig, charged)) = self.rng.pick(&k.debits).copied() {
            Command::Refund {
                original: orig,
                amount: self.rng.range(1, charged.max(1) as u64) as i64,
            }
        } else {
            Command::TopUp {
                bucket: BucketId(0),
                amount: self.rng.range(1, 50) as i64,
            }
        };
        Request {
            account,
            request_id: self.rid(now_ms),
            cmd,
        }
    }

    /// Learns from a completed request (what later requests may refer to).
    pub fn observe(&mut self, req: &Request, outcome: &Outcome) {
        if outcome.is_definite() && self.sent.len() < 256 {
            self.sent.push(req.clone());
        }
        let k = self.known.entry(req.account.clone()).or_default();
        match (&req.cmd, outcome) {
            (Command::Reserve { .. }, Outcome::Ok(Reply::Reserved(g)))
                if !k.open.iter().any(|(r, _)| *r == g.reservation.0) =>
            {
                k.open.push((g.reservation.0, g.granted.volume_bytes / MB));
            }
            (Command::Commit { reservation, .. }, Outcome::Ok(_))
            | (Command::Release { reservation }, Outcome::Ok(_)) => {
                k.open.retain(|(r, _)| *r != reservation.0);
            }
            (Command::Debit { .. }, Outcome::Ok(Reply::Debited { charged }))
                if *charged > 0 && !k.debits.iter().any(|(r, _)| *r == req.request_id) =>
            {
                k.debits.push((req.request_id, *charged));
            }
            _ => {}
        }
    }
}
