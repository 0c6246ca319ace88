//! Charging usage and granting quota on a reservation (see the module
//! doc of `decide` for the order money is taken in).
use super::*;

impl Tx<'_> {
    /// Charge `delta` more usage on `r` (see module doc). Returns (money value
    /// charged by this call, part of it that became debt).
    pub(super) fn charge_usage(&mut self, r: &mut Reservation, delta: &Units) -> R<(i64, i64)> {
        let used = add_units(&r.used, delta)?;
        let mut rest = rating::to_dims(delta);
        let mut holds = std::mem::take(&mut r.holds);
        for h in holds.iter_mut() {
            let kind = match self.bidx(h.bucket) {
                Some(i) => self.d.buckets[i].kind,
                None => return Err(OVERFLOW),
            };
            if let Some(d) = rating::dim_of(kind) {
                let want = rest[d].min(i64::MAX as u64) as i64;
                let x = self.consume_hold(h, want)?;
                rest[d] -= x as u64;
            }
        }
        let tariff = r.tariff.as_ref();
        let mut priced = [0u64; 3];
        let mut unrated = [0u64; 3];
        for d in 0..DIMS.len() {
            if tariff.is_some_and(|t| rating::price_of(t, d).is_some()) {
                priced[d] = rest[d];
            } else {
                unrated[d] = rest[d];
            }
        }
        let rated = add_units(&r.rated, &rating::from_dims(priced))?;
        self.d.unrated = add_units(&self.d.unrated, &rating::from_dims(unrated))?;
        let new_charged = i64::try_from(rating::price_money(tariff, rating::wide(&rated)))
            .map_err(|_| OVERFLOW)?;
        let due = sub(new_charged, r.charged)?.max(0);
        let mut left = due;
        for h in holds.iter_mut() {
            if left == 0 {
                break;
            }
            let is_money = self
                .bidx(h.bucket)
                .is_some_and(|i| self.d.buckets[i].kind == BucketKind::Money);
            if is_money {
                left -= self.consume_hold(h, left)?;
            }
        }
        left -= self.take_money(r.rating_group, left)?;
        self.d.debt = add(self.d.debt, left)?;
        holds.retain(|h| h.amount > 0);
        r.holds = holds;
        r.rated = rated;
        r.used = used;
        r.charged = new_charged;
        Ok((due, left))
    }

    /// Grant `requested` on `r` (which holds nothing): unit buckets first, the
    /// rest priced with `r`'s tariff and held in money; partial (whole
    /// increments, all dimensions scaled together) when money is short.
    /// `RatingFailed` and `InsufficientBalance` are returned before anything is
    /// staged; any other error is an overflow.
    pub(super) fn grant(&mut self, r: &mut Reservation, requested: &Units) -> R<(Units, bool)> {
        let rg = r.rating_group;
        let req = rating::to_dims(requested);
        let mut rem = req;
        let mut granted = [0u64; 3];
        let mut unit_takes: Vec<(usize, i64)> = Vec::new();
        for d in 0..DIMS.len() {
            if rem[d] == 0 {
                continue;
            }
            for i in self.unit_order(DIMS[d], rg) {
                let free = self.free(i).min(i128::from(i64::MAX)) as u64;
                let x = free.min(rem[d]);
                if x > 0 {
                    unit_takes.push((i, x as i64));
                    rem[d] -= x;
                    granted[d] += x;
                }
                if rem[d] == 0 {
                    break;
                }
            }
        }
        let tariff = r.tariff.as_ref();
        let rem_w = rem.map(u128::from);
        if !rating::can_rate(tariff, rem_w) {
            return Err(Rejection::RatingFailed);
        }
        let avail = self.available_money(rg).max(0) as u128;
        let base_rated = rating::wide(&r.rated);
        let charged = r.charged.max(0) as u128;
        let cost = |u: [u128; 3]| -> u128 {
            let tot = [0, 1, 2].map(|d| base_rated[d].saturating_add(u[d]));
            rating::price_money(tariff, tot).saturating_sub(charged)
        };
        let money_units: [u128; 3] = if rem_w == [0; 3] || cost(rem_w) <= avail {
            rem_w
        } else {
            let inc = [0, 1, 2].map(|d| rating::increment(tariff, d));
            let n = [0, 1, 2].map(|d| rem_w[d].div_ceil(inc[d]));
            let q = n.iter().copied().max().unwrap_or(0);
            let at = |p: u128| -> [u128; 3] {
                [0, 1, 2].map(|d| rem_w[d].min(n[d] * p / q.max(1) * inc[d]))
            };
            let (mut lo, mut hi) = (0u128, q);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if cost(at(mid)) <= avail {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            at(lo)
        };
        for d in 0..DIMS.len() {
            granted[d] += money_units[d] as u64;
        }
        if req != [0; 3] && granted == [0; 3] {
            return Err(Rejection::InsufficientBalance);
        }
        let money = i64::try_from(cost(money_units)).map_err(|_| OVERFLOW)?;
        for (i, x) in unit_takes {
            let b = &mut self.d.buckets[i];
            b.reserved = add(b.reserved, x)?;
            r.holds.push(Hold {
                bucket: b.id,
                amount: x,
            });
        }
        if money > 0 {
            let hs = self.hold_money(rg, money)?;
            r.holds.extend(hs);
        }
        let granted = rating::from_dims(granted);
        r.granted = add_units(&r.granted, &granted)?;
        r.expires_at_ms = self.now.saturating_add(self.limits.reservation_validity_ms);
        r.sweep_at_ms = r.expires_at_ms.saturating_add(self.limits.expiry_grace_ms);
        Ok((granted, granted != *requested))
    }

    pub(super) fn new_reservation(&self, sid: &SessionId, rg: RatingGroup) -> Reservation {
        Reservation {
            session: sid.clone(),
            rating_group: rg,
            granted: Units::default(),
            used: Units::default(),
            rated: Units::default(),
            tariff: self.tariffs.get(&rg).cloned(),
            holds: Vec::new(),
            charged: 0,
            expires_at_ms: self.now,
            sweep_at_ms: self.now,
        }
    }

    /// Charge a session report's usage: on the rating group's open reservation,
    /// else on its latest tombstone (late usage), else on a one-off record
    /// under the current tariff.
    pub(super) fn charge_report(
        &mut self,
        sid: &SessionId,
        open: Option<ReservationId>,
        rg: RatingGroup,
        used: &Units,
    ) -> R<(i64, i64)> {
        if let Some(id) = open {
            let mut r = self.open_res(id).cloned().ok_or(OVERFLOW)?;
            let out = self.charge_usage(&mut r, used)?;
            self.d.reservations.insert(id, r);
            Ok(out)
        } else if let Some(id) = self.find_tombstone(sid, rg) {
            let mut r = self.live_tombstone(id).cloned().ok_or(OVERFLOW)?;
            let out = self.charge_usage(&mut r, used)?;
            self.d.tombstones.insert(id, r);
            Ok(out)
        } else {
            let mut r = self.new_reservation(sid, rg);
            self.charge_usage(&mut r, used)
        }
    }
}
