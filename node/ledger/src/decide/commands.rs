//! One method per command: what each does to the staged account.
use super::*;

impl Tx<'_> {
    pub(super) fn add_bucket(&mut self, spec: &BucketSpec) -> R<Reply> {
        if self.d.state == AccountState::Closed {
            return Err(Rejection::AccountNotActive);
        }
        let live = self
            .d
            .buckets
            .iter()
            .filter(|b| !b.is_removable(self.now, self.limits))
            .count();
        if spec.amount < 0 || live >= self.limits.max_buckets_per_account as usize {
            return Err(OVERFLOW);
        }
        let id = BucketId(self.d.next_bucket_id);
        self.d.next_bucket_id = id.0.checked_add(1).ok_or(OVERFLOW)?;
        self.d.buckets.push(bucket_from_spec(id, spec));
        if spec.valid_until_ms != 0 {
            self.note_deadline(spec.valid_until_ms);
        }
        Ok(Reply::BucketAdded { bucket: id })
    }

    pub(super) fn top_up(&mut self, bucket: BucketId, amount: i64) -> R<Reply> {
        if self.d.state == AccountState::Closed {
            return Err(Rejection::AccountNotActive);
        }
        let id = if bucket.0 == 0 { MAIN_BUCKET } else { bucket };
        let i = self
            .bidx(id)
            .filter(|&i| {
                let b = &self.d.buckets[i];
                !b.has_ended(self.now) && !b.is_removable(self.now, self.limits)
            })
            .ok_or(Rejection::BucketNotFound)?;
        if amount <= 0 {
            return Err(OVERFLOW);
        }
        self.credit(i, amount, false)?;
        Ok(Reply::ToppedUp {
            balance: self.d.buckets[i].balance,
        })
    }

    pub(super) fn reserve(
        &mut self,
        sid: &SessionId,
        rg: RatingGroup,
        requested: &Units,
    ) -> R<Reply> {
        if self.d.state != AccountState::Active {
            return Err(Rejection::AccountNotActive);
        }
        let existing = self.live_session(sid).cloned();
        if existing.as_ref().is_some_and(|s| s.closed) {
            return Err(Rejection::SessionNotFound);
        }
        if let Some(id) = existing.as_ref().and_then(|s| s.reservation_for(rg)) {
            // Replace the quota of the open reservation (see module doc).
            let mut r = self.open_res(id).cloned().ok_or(OVERFLOW)?;
            self.release(&r.holds)?;
            r.holds.clear();
            let (granted, final_units) = self.grant(&mut r, requested)?;
            let grant = Grant {
                reservation: id,
                granted,
                final_units,
                expires_at_ms: r.expires_at_ms,
            };
            self.d.reservations.insert(id, r);
            return Ok(Reply::Reserved(grant));
        }
        let mut r = self.new_reservation(sid, rg);
        let (granted, final_units) = self.grant(&mut r, requested)?;
        let mut s = match existing {
            Some(s) => s,
            None => {
                if self.live_sessions() >= self.limits.max_sessions_per_account as usize {
                    return Err(OVERFLOW);
                }
                Session {
                    last_seq: 0,
                    params_hash: 0,
                    last_reply: Reply::StateSet,
                    last_ms: self.now,
                    closed: false,
                    open: Vec::new(),
                }
            }
        };
        if self.d.reservations.len(&self.base.ext.reservations)
            >= self.limits.max_reservations_per_account as usize
        {
            return Err(OVERFLOW);
        }
        let id = self.alloc_reservation()?;
        let grant = Grant {
            reservation: id,
            granted,
            final_units,
            expires_at_ms: r.expires_at_ms,
        };
        self.d.reservations.insert(id, r);
        insert_open(&mut s, rg, id);
        self.d.sessions.insert(sid.clone(), s);
        Ok(Reply::Reserved(grant))
    }

    pub(super) fn update(&mut self, sid: &SessionId, reports: &[UsageReport]) -> R<Reply> {
        let s = self
            .live_session(sid)
            .filter(|s| !s.closed)
            .cloned()
            .ok_or(Rejection::SessionNotFound)?;
        let always = reports.is_empty();
        self.update_on(sid, s, reports, always)
    }

    /// `Open`: the session, made if absent, then its reports as `Update`
    /// does them, accepted whatever each rating group's outcome.
    pub(super) fn open(&mut self, sid: &SessionId, reports: &[UsageReport]) -> R<Reply> {
        if self.d.state != AccountState::Active {
            return Err(Rejection::AccountNotActive);
        }
        let s = match self.live_session(sid).cloned() {
            Some(s) if s.closed => return Err(Rejection::SessionNotFound),
            Some(s) => s,
            None => {
                if self.live_sessions() >= self.limits.max_sessions_per_account as usize {
                    return Err(OVERFLOW);
                }
                Session {
                    last_seq: 0,
                    params_hash: 0,
                    last_reply: Reply::StateSet,
                    last_ms: self.now,
                    closed: false,
                    open: Vec::new(),
                }
            }
        };
        self.update_on(sid, s, reports, true)
    }

    /// The reports of an `Update` (or `Open`) on session `s`. Unless
    /// `accepted`, it fails as a whole when nothing at all could be done.
    fn update_on(
        &mut self,
        sid: &SessionId,
        mut s: Session,
        reports: &[UsageReport],
        accepted: bool,
    ) -> R<Reply> {
        let (mut charged, mut debt) = (0i64, 0i64);
        let mut grants = Vec::new();
        let mut did_something = accepted;
        let mut worst: Option<Rejection> = None;
        for rep in reports {
            let rg = rep.rating_group;
            let open = s.reservation_for(rg);
            if open.is_none()
                && !rating::is_zero(&rep.used)
                && !rating::is_zero(&rep.requested)
                && self.find_tombstone(sid, rg).is_none()
            {
                // Usage on a group with no grant yet, and a grant asked
                // for: charged on the reservation that grant opens, so
                // its rounding is cumulative with what follows.
                let (c, dbt, result) = self.open_with_usage(sid, &mut s, rg, rep)?;
                charged = add(charged, c)?;
                debt = add(debt, dbt)?;
                did_something = true;
                grants.push(GrantResult {
                    rating_group: rg,
                    result,
                });
                continue;
            }
            if !rating::is_zero(&rep.used) {
                let (c, dbt) = self.charge_report(sid, open, rg, &rep.used)?;
                charged = add(charged, c)?;
                debt = add(debt, dbt)?;
                did_something = true;
            }
            if rating::is_zero(&rep.requested) {
                // Nothing more wanted on this rating group: resolve it.
                if let Some(id) = open {
                    let r = self.open_res(id).cloned().ok_or(OVERFLOW)?;
                    self.release(&r.holds)?;
                    self.d.reservations.remove(&id);
                    s.open.retain(|(_, x)| *x != id);
                    did_something = true;
                }
                continue;
            }
            let result = self.regrant(sid, &mut s, open, rg, &rep.requested)?;
            match &result {
                Ok(_) => did_something = true,
                Err(e) => worst = Some(first(worst, *e)),
            }
            grants.push(GrantResult {
                rating_group: rg,
                result,
            });
        }
        if !did_something {
            if let Some(w) = worst {
                return Err(w);
            }
        }
        self.d.sessions.insert(sid.clone(), s);
        Ok(Reply::Updated {
            grants,
            charged,
            debt,
        })
    }

    /// A rating group the session holds nothing on, reporting usage and
    /// asking for quota: a new reservation is charged the usage, then
    /// granted on (per-group failures as in `regrant`; the usage stays
    /// charged). Returns (charged, debt, the group's result).
    fn open_with_usage(
        &mut self,
        sid: &SessionId,
        s: &mut Session,
        rg: RatingGroup,
        rep: &UsageReport,
    ) -> R<(i64, i64, Result<Grant, Rejection>)> {
        let mut r = self.new_reservation(sid, rg);
        let (c, dbt) = self.charge_usage(&mut r, &rep.used)?;
        if self.d.state != AccountState::Active {
            return Ok((c, dbt, Err(Rejection::AccountNotActive)));
        }
        let (granted, final_units) = match self.grant(&mut r, &rep.requested) {
            Ok(g) => g,
            Err(e @ (Rejection::RatingFailed | Rejection::InsufficientBalance)) => {
                return Ok((c, dbt, Err(e)))
            }
            Err(e) => return Err(e),
        };
        if self.d.reservations.len(&self.base.ext.reservations)
            >= self.limits.max_reservations_per_account as usize
        {
            self.release(&r.holds)?;
            return Ok((c, dbt, Err(Rejection::LimitExceeded)));
        }
        let id = self.alloc_reservation()?;
        let grant = Grant {
            reservation: id,
            granted,
            final_units,
            expires_at_ms: r.expires_at_ms,
        };
        self.d.reservations.insert(id, r);
        insert_open(s, rg, id);
        Ok((c, dbt, Ok(grant)))
    }

    /// One rating group's new quota in an `Update`. The outer error is fatal
    /// (overflow); the inner one is this rating group's rejection.
    pub(super) fn regrant(
        &mut self,
        sid: &SessionId,
        s: &mut Session,
        open: Option<ReservationId>,
        rg: RatingGroup,
        requested: &Units,
    ) -> R<Result<Grant, Rejection>> {
        let per_rg = |e: Rejection| -> R<Result<Grant, Rejection>> {
            match e {
                Rejection::RatingFailed | Rejection::InsufficientBalance => Ok(Err(e)),
                other => Err(other),
            }
        };
        if let Some(id) = open {
            let mut r = self.open_res(id).cloned().ok_or(OVERFLOW)?;
            self.release(&r.holds)?;
            r.holds.clear();
            let out = if self.d.state != AccountState::Active {
                Ok(Err(Rejection::AccountNotActive))
            } else {
                match self.grant(&mut r, requested) {
                    Ok((granted, final_units)) => Ok(Ok(Grant {
                        reservation: id,
                        granted,
                        final_units,
                        expires_at_ms: r.expires_at_ms,
                    })),
                    Err(e) => per_rg(e),
                }
            };
            self.d.reservations.insert(id, r);
            return out;
        }
        if self.d.state != AccountState::Active {
            return Ok(Err(Rejection::AccountNotActive));
        }
        let mut r = self.new_reservation(sid, rg);
        let (granted, final_units) = match self.grant(&mut r, requested) {
            Ok(g) => g,
            Err(e) => return per_rg(e),
        };
        if self.d.reservations.len(&self.base.ext.reservations)
            >= self.limits.max_reservations_per_account as usize
        {
            self.release(&r.holds)?;
            return Ok(Err(Rejection::LimitExceeded));
        }
        let id = self.alloc_reservation()?;
        let grant = Grant {
            reservation: id,
            granted,
            final_units,
            expires_at_ms: r.expires_at_ms,
        };
        self.d.reservations.insert(id, r);
        insert_open(s, rg, id);
        Ok(Ok(grant))
    }

    pub(super) fn terminate(&mut self, sid: &SessionId, reports: &[UsageReport]) -> R<Reply> {
        let mut s = self
            .live_session(sid)
            .filter(|s| !s.closed)
            .cloned()
            .ok_or(Rejection::SessionNotFound)?;
        let (mut charged, mut debt) = (0i64, 0i64);
        for rep in reports {
            if !rating::is_zero(&rep.used) {
                let open = s.reservation_for(rep.rating_group);
                let (c, dbt) = self.charge_report(sid, open, rep.rating_group, &rep.used)?;
                charged = add(charged, c)?;
                debt = add(debt, dbt)?;
            }
        }
        for (_, id) in std::mem::take(&mut s.open) {
            let r = self.open_res(id).cloned().ok_or(OVERFLOW)?;
            self.release(&r.holds)?;
            self.d.reservations.remove(&id);
        }
        s.closed = true;
        self.d.sessions.insert(sid.clone(), s);
        Ok(Reply::Terminated { charged, debt })
    }

    pub(super) fn commit(
        &mut self,
        rid: RequestId,
        id: ReservationId,
        used: &Units,
        fin: bool,
    ) -> R<Reply> {
        let (charged, debt) = if let Some(r) = self.open_res(id) {
            let mut r = r.clone();
            let out = self.charge_usage(&mut r, used)?;
            if fin {
                self.release(&r.holds)?;
                self.d.reservations.remove(&id);
                self.unlink(&r.session, id);
            } else {
                self.d.reservations.insert(id, r);
            }
            out
        } else if let Some(r) = self.live_tombstone(id) {
            // Late commit after expiry: the service was delivered, charge it.
            let mut r = r.clone();
            let out = self.charge_usage(&mut r, used)?;
            if fin {
                self.d.tombstones.remove(&id);
            } else {
                self.d.tombstones.insert(id, r);
            }
            out
        } else {
            return Err(self.missing(id));
        };
        self.record_charge(rid, charged);
        Ok(Reply::Committed { charged, debt })
    }

    pub(super) fn release_cmd(&mut self, id: ReservationId) -> R<Reply> {
        let Some(r) = self.open_res(id).cloned() else {
            return Err(if self.live_tombstone(id).is_some() {
                Rejection::ReservationResolved
            } else {
                self.missing(id)
            });
        };
        self.release(&r.holds)?;
        self.d.reservations.remove(&id);
        self.unlink(&r.session, id);
        Ok(Reply::Released)
    }

    pub(super) fn expire(&mut self, id: ReservationId) -> R<Reply> {
        let Some(r) = self.open_res(id).cloned() else {
            return Err(if self.live_tombstone(id).is_some() {
                Rejection::ReservationResolved
            } else {
                self.missing(id)
            });
        };
        if r.sweep_at_ms > self.now {
            return Err(Rejection::RequestTooOld);
        }
        let mut r = r;
        self.release(&r.holds)?;
        r.holds.clear();
        self.d.reservations.remove(&id);
        self.unlink(&r.session, id);
        self.note_deadline(
            r.sweep_at_ms
                .saturating_add(self.limits.tombstone_ttl_ms)
                .saturating_add(1),
        );
        self.d.tombstones.insert(id, r);
        Ok(Reply::Expired)
    }

    pub(super) fn refund(&mut self, original: RequestId, amount: i64) -> R<Reply> {
        let mut e = self
            .d
            .charges
            .get(&self.base.ext.charges, &original)
            .filter(|e| e.is_live(self.now, self.limits))
            .copied()
            .ok_or(Rejection::RefundExceedsCharge)?;
        if amount > sub(e.charged, e.refunded)? {
            return Err(Rejection::RefundExceedsCharge);
        }
        if amount <= 0 {
            return Err(OVERFLOW);
        }
        let main = self.bidx(MAIN_BUCKET).ok_or(OVERFLOW)?;
        self.credit(main, amount, true)?;
        e.refunded = add(e.refunded, amount)?;
        self.d.charges.insert(original, e);
        Ok(Reply::Refunded {
            refunded_total: e.refunded,
        })
    }

    pub(super) fn debit(&mut self, rid: RequestId, rg: RatingGroup, units: &Units) -> R<Reply> {
        if self.d.state != AccountState::Active {
            return Err(Rejection::AccountNotActive);
        }
        let mut rem = rating::to_dims(units);
        let mut unit_takes: Vec<(usize, i64)> = Vec::new();
        for d in 0..DIMS.len() {
            for i in self.unit_order(DIMS[d], rg) {
                if rem[d] == 0 {
                    break;
                }
                let x = (self.free(i).min(i128::from(i64::MAX)) as u64).min(rem[d]);
                if x > 0 {
                    unit_takes.push((i, x as i64));
                    rem[d] -= x;
                }
            }
        }
        let tariff = self.tariffs.get(&rg);
        let rem_w = rem.map(u128::from);
        if !rating::can_rate(tariff, rem_w) {
            return Err(Rejection::RatingFailed);
        }
        let cost = rating::price_money(tariff, rem_w);
        if cost > self.available_money(rg).max(0) as u128 {
            return Err(Rejection::InsufficientBalance);
        }
        let cost = i64::try_from(cost).map_err(|_| OVERFLOW)?;
        for (i, x) in unit_takes {
            let b = &mut self.d.buckets[i];
            b.balance = sub(b.balance, x)?;
            b.flows.charges = add(b.flows.charges, x)?;
        }
        if self.take_money(rg, cost)? != cost {
            return Err(OVERFLOW);
        }
        self.record_charge(rid, cost);
        Ok(Reply::Debited { charged: cost })
    }
}

fn insert_open(s: &mut Session, rg: RatingGroup, id: ReservationId) {
    let pos = s.open.partition_point(|(g, _)| *g < rg);
    s.open.insert(pos, (rg, id));
}
