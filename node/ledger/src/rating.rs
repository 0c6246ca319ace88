//! Rating: units to money under a tariff. Integers only.
//!
//! `money(units) = ceil( Σ_dim ceil(units_dim / increment) × nano_per_increment / 1e9 )`
//! minor units: each dimension rounds up to whole increments, the sum rounds
//! up once to a whole minor unit. Computed in `u128` with saturation, so a
//! huge quantity is "unaffordable" rather than an overflow; callers convert to
//! `i64` with a check.
use super::types::{BucketKind, Price, Tariff, Units};

/// Nano-units (1e-9 minor units) per minor unit.
pub const NANO_PER_MINOR: u128 = 1_000_000_000;

/// The three unit dimensions of [`Units`], in a fixed order.
pub const DIMS: [BucketKind; 3] = [BucketKind::Seconds, BucketKind::Bytes, BucketKind::Units];

/// Units as an array indexed like [`DIMS`].
pub fn to_dims(u: &Units) -> [u64; 3] {
    [u.time_s, u.volume_bytes, u.service_units]
}

pub fn from_dims(d: [u64; 3]) -> Units {
    Units {
        time_s: d[0],
        volume_bytes: d[1],
        service_units: d[2],
    }
}

pub fn is_zero(u: &Units) -> bool {
    to_dims(u) == [0, 0, 0]
}

/// Index into [`DIMS`] of a unit bucket kind; `None` for money.
pub fn dim_of(kind: BucketKind) -> Option<usize> {
    DIMS.iter().position(|k| *k == kind)
}

/// The first price of `tariff` for the given unit dimension.
pub fn price_of(tariff: &Tariff, dim: usize) -> Option<&Price> {
    tariff.prices.iter().find(|p| p.unit == DIMS[dim])
}

/// Whether every non-zero dimension of `units` has a price.
pub fn can_rate(tariff: Option<&Tariff>, units: [u128; 3]) -> bool {
    (0..3).all(|d| units[d] == 0 || tariff.is_some_and(|t| price_of(t, d).is_some()))
}

/// Price in nano-units (saturating). Dimensions without a price count as free:
/// callers check [`can_rate`] first.
pub fn price_nano(tariff: Option<&Tariff>, units: [u128; 3]) -> u128 {
    let Some(t) = tariff else { return 0 };
    let mut nano: u128 = 0;
    for (d, u) in units.iter().enumerate() {
        if *u == 0 {
            continue;
        }
        if let Some(p) = price_of(t, d) {
            let inc = u128::from(p.increment.max(1));
            let n = u.div_ceil(inc);
            nano = nano.saturating_add(n.saturating_mul(u128::from(p.nano_per_increment)));
        }
    }
    nano
}

/// Price in minor units, rounded up once (saturating).
pub fn price_money(tariff: Option<&Tariff>, units: [u128; 3]) -> u128 {
    price_nano(tariff, units).div_ceil(NANO_PER_MINOR)
}

/// Widen units for pricing.
pub fn wide(u: &Units) -> [u128; 3] {
    to_dims(u).map(u128::from)
}

/// Increment of a dimension under a tariff (1 if unpriced).
pub fn increment(tariff: Option<&Tariff>, dim: usize) -> u128 {
    tariff
        .and_then(|t| price_of(t, dim))
        .map_or(1, |p| u128::from(p.increment.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(inc: u64, nano: u64) -> Tariff {
        Tariff {
            rating_group: 1,
            version: 1,
            prices: vec![Price {
                unit: BucketKind::Bytes,
                increment: inc,
                nano_per_increment: nano,
            }],
        }
    }

    #[test]
    fn rounds_increments_then_money() {
        let t = t(1000, 300_000_000); // 0.3 minor unit per started KB
        assert_eq!(price_money(Some(&t), [0, 0, 0]), 0);
        assert_eq!(price_money(Some(&t), [0, 1, 0]), 1);
        assert_eq!(price_money(Some(&t), [0, 1000, 0]), 1);
        assert_eq!(price_money(Some(&t), [0, 3000, 0]), 1);
        assert_eq!(price_money(Some(&t), [0, 3001, 0]), 2);
        assert_eq!(price_money(Some(&t), [0, 10_000, 0]), 3);
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let t = t(1, u64::MAX);
        let p = price_money(Some(&t), [0, u128::MAX, 0]);
        assert_eq!(p, u128::MAX.div_ceil(NANO_PER_MINOR));
    }
}
