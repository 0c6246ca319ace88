//! Buckets of a decision: which buckets pay, in what order, and moving
//! money between balances, holds and flows.
use super::*;

impl Tx<'_> {
    pub(super) fn bidx(&self, id: BucketId) -> Option<usize> {
        self.d.buckets.binary_search_by_key(&id, |b| b.id).ok()
    }

    pub(super) fn usable(&self, b: &Bucket) -> bool {
        b.is_valid_at(self.now) && !b.is_removable(self.now, self.limits)
    }

    /// Money buckets usable for `rg`, in the order money is taken: others by
    /// (priority, id), the main bucket last.
    pub(super) fn money_order(&self, rg: RatingGroup) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.d.buckets.len())
            .filter(|&i| {
                let b = &self.d.buckets[i];
                b.kind == BucketKind::Money
                    && b.id != MAIN_BUCKET
                    && b.applies_to(rg)
                    && self.usable(b)
            })
            .collect();
        v.sort_by_key(|&i| (self.d.buckets[i].priority, self.d.buckets[i].id));
        if let Some(m) = self.bidx(MAIN_BUCKET) {
            if self.d.buckets[m].kind == BucketKind::Money {
                v.push(m);
            }
        }
        v
    }

    /// Unit buckets of `kind` usable for `rg`, by (priority, id).
    pub(super) fn unit_order(&self, kind: BucketKind, rg: RatingGroup) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.d.buckets.len())
            .filter(|&i| {
                let b = &self.d.buckets[i];
                b.kind == kind && b.applies_to(rg) && self.usable(b)
            })
            .collect();
        v.sort_by_key(|&i| (self.d.buckets[i].priority, self.d.buckets[i].id));
        v
    }

    /// What bucket `i` can still give: `balance - reserved - floor`, >= 0.
    pub(super) fn free(&self, i: usize) -> i128 {
        let b = &self.d.buckets[i];
        let f = i128::from(b.balance)
            - i128::from(b.reserved)
            - i128::from(b.floor(self.base.credit_limit));
        f.max(0)
    }

    pub(super) fn available_money(&self, rg: RatingGroup) -> i128 {
        self.money_order(rg).into_iter().map(|i| self.free(i)).sum()
    }

    /// Charge up to `amount` from what the account can pay; returns the part taken.
    pub(super) fn take_money(&mut self, rg: RatingGroup, amount: i64) -> R<i64> {
        let mut left = amount;
        for i in self.money_order(rg) {
            if left <= 0 {
                break;
            }
            let x = i128::from(left).min(self.free(i)) as i64;
            if x > 0 {
                let b = &mut self.d.buckets[i];
                b.balance = sub(b.balance, x)?;
                b.flows.charges = add(b.flows.charges, x)?;
                left -= x;
            }
        }
        Ok(amount - left)
    }

    /// Hold exactly `amount` of money; the caller checked it is available.
    pub(super) fn hold_money(&mut self, rg: RatingGroup, amount: i64) -> R<Vec<Hold>> {
        let mut left = amount;
        let mut holds = Vec::new();
        for i in self.money_order(rg) {
            if left <= 0 {
                break;
            }
            let x = i128::from(left).min(self.free(i)) as i64;
            if x > 0 {
                let b = &mut self.d.buckets[i];
                b.reserved = add(b.reserved, x)?;
                holds.push(Hold {
                    bucket: b.id,
                    amount: x,
                });
                left -= x;
            }
        }
        if left > 0 {
            return Err(OVERFLOW);
        }
        Ok(holds)
    }

    pub(super) fn release(&mut self, holds: &[Hold]) -> R<()> {
        for h in holds {
            let i = self.bidx(h.bucket).ok_or(OVERFLOW)?;
            let b = &mut self.d.buckets[i];
            b.reserved = sub(b.reserved, h.amount)?;
        }
        Ok(())
    }

    /// Charge up to `want` from a hold; returns the part taken.
    pub(super) fn consume_hold(&mut self, h: &mut Hold, want: i64) -> R<i64> {
        let x = want.min(h.amount);
        if x <= 0 {
            return Ok(0);
        }
        let i = self.bidx(h.bucket).ok_or(OVERFLOW)?;
        let b = &mut self.d.buckets[i];
        b.balance = sub(b.balance, x)?;
        b.reserved = sub(b.reserved, x)?;
        b.flows.charges = add(b.flows.charges, x)?;
        h.amount -= x;
        Ok(x)
    }

    /// Credit `amount` to bucket `i`; on the main bucket, settle debt first.
    pub(super) fn credit(&mut self, i: usize, amount: i64, refund: bool) -> R<()> {
        let settle = if self.d.buckets[i].id == MAIN_BUCKET {
            self.d.debt.min(amount)
        } else {
            0
        };
        let debt = sub(self.d.debt, settle)?;
        let b = &mut self.d.buckets[i];
        b.balance = add(b.balance, sub(amount, settle)?)?;
        if refund {
            b.flows.refunds = add(b.flows.refunds, amount)?;
        } else {
            b.flows.credits = add(b.flows.credits, amount)?;
        }
        b.flows.adjustments = sub(b.flows.adjustments, settle)?;
        self.d.debt = debt;
        Ok(())
    }
}
