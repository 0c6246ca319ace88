//! Parsers for the human-friendly arguments of `chargectl` (sizes, usage
//! reports, bucket specs, prices, enum names). Each returns `Err(String)` with a
//! message fit for a command-line error.

use crate::proto::{AccountState, BucketKind, BucketSpec, Price, Units, UsageReport};

/// Parses a byte size: a plain number, or a number with a decimal (`KB`, `MB`,
/// `GB`, `TB`, also `K`/`M`/`G`/`T`) or binary (`KiB`, `MiB`, `GiB`, `TiB`) suffix,
/// case-insensitive; `B` is accepted. Fractions are allowed when the result is a
/// whole number of bytes (`1.5GB`). Underscores are ignored (`10_000`).
///
/// `10MB` = 10 000 000, `1GiB` = 1 073 741 824.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let clean: String = s.trim().chars().filter(|c| *c != '_').collect();
    let split = clean
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(clean.len());
    let (num, suffix) = clean.split_at(split);
    let mult: u128 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        other => return Err(format!("invalid size {s:?}: unknown unit {other:?}")),
    };
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return Err(format!("invalid size {s:?}: no number"));
    }
    if frac.len() > 18 {
        return Err(format!("invalid size {s:?}: too many decimals"));
    }
    let digits = |d: &str| -> Result<u128, String> {
        if d.is_empty() {
            return Ok(0);
        }
        d.parse::<u128>()
            .map_err(|_| format!("invalid size {s:?}: not a number"))
    };
    let scale = 10u128.pow(frac.len() as u32);
    let (int, frac) = (digits(int)?, digits(frac)?);
    let fixed = int
        .checked_mul(scale)
        .and_then(|v| v.checked_add(frac))
        .ok_or_else(|| format!("invalid size {s:?}: too large"))?;
    let total = fixed
        .checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))?;
    if total % scale != 0 {
        return Err(format!("invalid size {s:?}: not a whole number of bytes"));
    }
    u64::try_from(total / scale).map_err(|_| format!("invalid size {s:?}: too large"))
}

/// Parses a plain unsigned count (underscores allowed).
pub fn parse_count(s: &str) -> Result<u64, String> {
    let clean: String = s.trim().chars().filter(|c| *c != '_').collect();
    clean
        .parse::<u64>()
        .map_err(|_| format!("invalid number {s:?}"))
}

/// Parses a signed amount of money in minor units (underscores allowed).
pub fn parse_amount(s: &str) -> Result<i64, String> {
    let clean: String = s.trim().chars().filter(|c| *c != '_').collect();
    clean
        .parse::<i64>()
        .map_err(|_| format!("invalid amount {s:?}"))
}

fn parse_u32(key: &str, s: &str) -> Result<u32, String> {
    s.trim()
        .parse::<u32>()
        .map_err(|_| format!("invalid {key} {s:?}"))
}

/// Splits `k=v,k=v` into pairs.
fn pairs(s: &str) -> Result<Vec<(String, &str)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_ascii_lowercase().replace('_', "-"), v.trim()))
                .ok_or_else(|| format!("expected key=value, got {p:?}"))
        })
        .collect()
}

/// Parses a list of rating groups separated by `+`, `:` or `/` (e.g. `32+33`).
fn parse_rgs(s: &str) -> Result<Vec<u32>, String> {
    s.split(['+', ':', '/'])
        .map(|r| parse_u32("rating group", r))
        .collect()
}

/// Parses a usage report: `rg=32,used-bytes=6MB,req-bytes=10MB,used-seconds=30,
/// req-seconds=60,used-units=1,req-units=1`. `rg` is required; the rest default
/// to 0. Byte values take sizes (see [`parse_size`]). Long forms
/// `rating-group`, `requested-*` and `*-time` for seconds are accepted.
pub fn parse_report(s: &str) -> Result<UsageReport, String> {
    let mut rg = None;
    let mut used = Units::default();
    let mut req = Units::default();
    for (k, v) in pairs(s)? {
        match k.as_str() {
            "rg" | "rating-group" => rg = Some(parse_u32("rating group", v)?),
            "used-bytes" | "used-volume" => used.volume_bytes = parse_size(v)?,
            "used-seconds" | "used-time" => used.time_s = parse_count(v)?,
            "used-units" => used.service_units = parse_count(v)?,
            "req-bytes" | "requested-bytes" | "req-volume" => req.volume_bytes = parse_size(v)?,
            "req-seconds" | "requested-seconds" | "req-time" => req.time_s = parse_count(v)?,
            "req-units" | "requested-units" => req.service_units = parse_count(v)?,
            other => return Err(format!("unknown report key {other:?} in {s:?}")),
        }
    }
    let rating_group = rg.ok_or_else(|| format!("report {s:?} needs rg=N"))?;
    Ok(UsageReport {
        rating_group,
        used: Some(used),
        requested: Some(req),
    })
}

/// Parses a bucket kind name: `money`, `bytes`, `seconds`, `units` (any case,
/// also the proto names like `BUCKET_KIND_BYTES`).
pub fn parse_kind(s: &str) -> Result<BucketKind, String> {
    let n = s.trim().to_ascii_uppercase();
    let n = n.strip_prefix("BUCKET_KIND_").unwrap_or(&n);
    match n {
        "MONEY" => Ok(BucketKind::Money),
        "BYTES" | "VOLUME" => Ok(BucketKind::Bytes),
        "SECONDS" | "TIME" => Ok(BucketKind::Seconds),
        "UNITS" => Ok(BucketKind::Units),
        _ => Err(format!(
            "invalid bucket kind {s:?} (money, bytes, seconds, units)"
        )),
    }
}

/// Parses an account state: `active`, `suspended`, `closed`.
pub fn parse_state(s: &str) -> Result<AccountState, String> {
    let n = s.trim().to_ascii_uppercase();
    let n = n.strip_prefix("ACCOUNT_STATE_").unwrap_or(&n);
    match n {
        "ACTIVE" => Ok(AccountState::Active),
        "SUSPENDED" => Ok(AccountState::Suspended),
        "CLOSED" => Ok(AccountState::Closed),
        _ => Err(format!(
            "invalid account state {s:?} (active, suspended, closed)"
        )),
    }
}

/// Parses an amount for a bucket of the given kind: sizes for bytes, plain
/// integers otherwise.
pub fn parse_bucket_amount(kind: BucketKind, s: &str) -> Result<i64, String> {
    if kind == BucketKind::Bytes {
        let v = parse_size(s)?;
        i64::try_from(v).map_err(|_| format!("amount {s:?} too large"))
    } else {
        parse_amount(s)
    }
}

/// Parses a bucket spec: `kind=bytes,amount=10MB,rg=32,priority=0,from=MS,until=MS`.
/// `kind` and `amount` are required; `rg` may repeat or list several groups
/// (`rg=32+33`); no `rg` = all rating groups.
pub fn parse_bucket(s: &str) -> Result<BucketSpec, String> {
    let kvs = pairs(s)?;
    let kind = kvs
        .iter()
        .find(|(k, _)| k == "kind")
        .map(|(_, v)| parse_kind(v))
        .transpose()?
        .ok_or_else(|| format!("bucket {s:?} needs kind=money|bytes|seconds|units"))?;
    let mut spec = BucketSpec {
        kind: kind as i32,
        ..Default::default()
    };
    let mut amount = None;
    for (k, v) in &kvs {
        match k.as_str() {
            "kind" => {}
            "amount" | "balance" => amount = Some(parse_bucket_amount(kind, v)?),
            "rg" | "rating-group" | "rating-groups" => spec.rating_groups.extend(parse_rgs(v)?),
            "priority" | "prio" => spec.priority = parse_u32("priority", v)?,
            "from" | "valid-from" => spec.valid_from_ms = parse_count(v)?,
            "until" | "valid-until" => spec.valid_until_ms = parse_count(v)?,
            other => return Err(format!("unknown bucket key {other:?} in {s:?}")),
        }
    }
    spec.amount = amount.ok_or_else(|| format!("bucket {s:?} needs amount=N"))?;
    Ok(spec)
}

/// Parses a price: `unit:increment:nano_per_increment`, e.g.
/// `bytes:1MB:1000000000` (1 minor unit per started MB) or `seconds:60:500000000`.
pub fn parse_price(s: &str) -> Result<Price, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [unit, inc, nano] = parts.as_slice() else {
        return Err(format!(
            "invalid price {s:?}: expected unit:increment:nano_per_increment"
        ));
    };
    let unit = parse_kind(unit)?;
    if unit == BucketKind::Money {
        return Err(format!(
            "invalid price {s:?}: unit must be bytes, seconds or units"
        ));
    }
    let increment = if unit == BucketKind::Bytes {
        parse_size(inc)?
    } else {
        parse_count(inc)?
    };
    Ok(Price {
        unit: unit as i32,
        increment,
        nano_per_increment: parse_count(nano)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("6MB").unwrap(), 6_000_000);
        assert_eq!(parse_size("6mb").unwrap(), 6_000_000);
        assert_eq!(parse_size("10M").unwrap(), 10_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("2KiB").unwrap(), 2048);
        assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("0.5KiB").unwrap(), 512);
        assert_eq!(parse_size("10_000").unwrap(), 10_000);
        assert_eq!(parse_size(" 3 kB ").unwrap(), 3_000);
        assert_eq!(parse_size("100B").unwrap(), 100);
        assert_eq!(parse_size("1TB").unwrap(), 1_000_000_000_000);
        assert_eq!(parse_size("18446744073709551615").unwrap(), u64::MAX);
    }

    #[test]
    fn bad_sizes() {
        for s in [
            "",
            "MB",
            "abc",
            "10XB",
            "1.2.3MB",
            "-5",
            "0.3B",
            "20000000TB",
            "1e6",
        ] {
            assert!(parse_size(s).is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn reports() {
        let r = parse_report("rg=32,used-bytes=6MB,req-bytes=10MB,used-seconds=30,req-seconds=60")
            .unwrap();
        assert_eq!(r.rating_group, 32);
        assert_eq!(
            r.used,
            Some(Units {
                time_s: 30,
                volume_bytes: 6_000_000,
                service_units: 0
            })
        );
        assert_eq!(
            r.requested,
            Some(Units {
                time_s: 60,
                volume_bytes: 10_000_000,
                service_units: 0
            })
        );
        let r = parse_report("rg=7, used_units=3").unwrap();
        assert_eq!(r.used.unwrap().service_units, 3);
        assert_eq!(r.requested, Some(Units::default()));
    }

    #[test]
    fn bad_reports() {
        assert!(parse_report("used-bytes=5").is_err(), "rg missing");
        assert!(parse_report("rg=1,foo=2").is_err(), "unknown key");
        assert!(parse_report("rg=1,used-bytes").is_err(), "no value");
        assert!(parse_report("rg=x").is_err());
        assert!(parse_report("rg=1,used-seconds=5MB").is_err());
    }

    #[test]
    fn buckets() {
        let b =
            parse_bucket("kind=bytes,amount=10MB,rg=32,priority=1,until=1700000000000").unwrap();
        assert_eq!(b.kind, BucketKind::Bytes as i32);
        assert_eq!(b.amount, 10_000_000);
        assert_eq!(b.rating_groups, vec![32]);
        assert_eq!(b.priority, 1);
        assert_eq!(b.valid_until_ms, 1_700_000_000_000);
        let b = parse_bucket("amount=500,kind=money,rg=1+2,rg=3").unwrap();
        assert_eq!(b.kind, BucketKind::Money as i32);
        assert_eq!(b.amount, 500);
        assert_eq!(b.rating_groups, vec![1, 2, 3]);
        assert!(parse_bucket("kind=money,amount=5MB").is_err());
        assert!(parse_bucket("amount=5").is_err());
        assert!(parse_bucket("kind=bytes").is_err());
    }

    #[test]
    fn prices_kinds_states() {
        let p = parse_price("bytes:1MB:1000000000").unwrap();
        assert_eq!(p.unit, BucketKind::Bytes as i32);
        assert_eq!(p.increment, 1_000_000);
        assert_eq!(p.nano_per_increment, 1_000_000_000);
        let p = parse_price("seconds:60:500_000_000").unwrap();
        assert_eq!((p.increment, p.nano_per_increment), (60, 500_000_000));
        assert!(parse_price("money:1:1").is_err());
        assert!(parse_price("bytes:1").is_err());
        assert_eq!(parse_kind("UNITS").unwrap(), BucketKind::Units);
        assert_eq!(parse_state("Suspended").unwrap(), AccountState::Suspended);
        assert_eq!(
            parse_state("ACCOUNT_STATE_CLOSED").unwrap(),
            AccountState::Closed
        );
        assert!(parse_state("gone").is_err());
    }
}
