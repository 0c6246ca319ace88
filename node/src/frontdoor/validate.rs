//! Input validation: protobuf requests → ledger requests. Every failure is an
//! `INVALID_ARGUMENT` naming the field; nothing reaches a shard unvalidated.
use crate::error::Error;
use crate::ledger::{
    AccountId, AccountState, BucketId, BucketKind, BucketSpec, Command, Price, RequestId,
    ReservationId, SessionId, Tariff, Units, UsageReport,
};
use charging_proto::v1 as pb;
use tonic::Status;

/// Longest account or session id, in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// Largest money amount in one request (minor units): 10^15.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000_000;
/// Largest unit quantity in one request (bytes, seconds or units): 2^50.
pub const MAX_UNITS: u64 = 1 << 50;
/// Most usage reports (rating groups) in one update or terminate.
pub const MAX_REPORTS: usize = 64;
/// Most buckets in one create-account request.
pub const MAX_BUCKETS: usize = 16;
/// Most prices in one tariff.
pub const MAX_PRICES: usize = 8;

fn bad(field: &str, why: &str) -> Status {
    Status::from(Error::InvalidArgument(format!("{field}: {why}")))
}

pub fn account_id(s: &str) -> Result<AccountId, Status> {
    if s.is_empty() {
        return Err(bad("account_id", "must not be empty"));
    }
    if s.len() > MAX_ID_BYTES {
        return Err(bad("account_id", "longer than 64 bytes"));
    }
    Ok(AccountId(s.to_string()))
}

fn session_id(s: &str) -> Result<SessionId, Status> {
    if s.is_empty() {
        return Err(bad("session_id", "must not be empty"));
    }
    if s.len() > MAX_ID_BYTES {
        return Err(bad("session_id", "longer than 64 bytes"));
    }
    Ok(SessionId(s.to_string()))
}

pub fn request_id(b: &[u8], field: &str) -> Result<RequestId, Status> {
    if b.is_empty() {
        return Err(bad(field, "missing (16-byte UUIDv7 expected)"));
    }
    let arr: [u8; 16] = b
        .try_into()
        .map_err(|_| bad(field, "must be 16 bytes (a UUID)"))?;
    let v = u128::from_be_bytes(arr);
    if v == 0 {
        return Err(bad(field, "must not be the nil UUID"));
    }
    // Version nibble (bits 76..80) 7, variant bits (62..64) 0b10 (RFC 9562):
    // the id's top 48 bits are its unix-ms time, which dedup relies on.
    if (v >> 76) & 0xF != 7 || (v >> 62) & 0b11 != 0b10 {
        return Err(bad(field, "must be a UUIDv7 (version 7, RFC 9562 variant)"));
    }
    Ok(RequestId(v))
}

/// Refuses a request id dated more than `clock_bound_ms` after `now_ms`.
pub fn not_future(
    rid: RequestId,
    now_ms: u64,
    clock_bound_ms: u64,
    field: &str,
) -> Result<(), Status> {
    let at = rid.unix_ms();
    if at > now_ms.saturating_add(clock_bound_ms) {
        return Err(bad(
            field,
            &format!(
                "dated {} ms in the future, more than the clock bound ({clock_bound_ms} ms); \
                 check the client's clock",
                at - now_ms
            ),
        ));
    }
    Ok(())
}

fn amount(v: i64, field: &str) -> Result<i64, Status> {
    if v <= 0 {
        return Err(bad(field, "must be positive"));
    }
    if v > MAX_AMOUNT {
        return Err(bad(field, "too large (max 10^15)"));
    }
    Ok(v)
}

fn units(u: Option<&pb::Units>, field: &str, need_nonzero: bool) -> Result<Units, Status> {
    let u = u.cloned().unwrap_or_default();
    for (v, name) in [
        (u.time_s, "time_s"),
        (u.volume_bytes, "volume_bytes"),
        (u.service_units, "service_units"),
    ] {
        if v > MAX_UNITS {
            return Err(bad(&format!("{field}.{name}"), "too large (max 2^50)"));
        }
    }
    let out = Units {
        time_s: u.time_s,
        volume_bytes: u.volume_bytes,
        service_units: u.service_units,
    };
    if need_nonzero && out == Units::default() {
        return Err(bad(field, "must request at least one unit"));
    }
    Ok(out)
}

fn kind(v: i32, field: &str) -> Result<BucketKind, Status> {
    match pb::BucketKind::try_from(v) {
        Ok(pb::BucketKind::Money) => Ok(BucketKind::Money),
        Ok(pb::BucketKind::Bytes) => Ok(BucketKind::Bytes),
        Ok(pb::BucketKind::Seconds) => Ok(BucketKind::Seconds),
        Ok(pb::BucketKind::Units) => Ok(BucketKind::Units),
        _ => Err(bad(field, "unknown or unspecified bucket kind")),
    }
}

fn bucket_spec(b: &pb::BucketSpec, field: &str) -> Result<BucketSpec, Status> {
    if b.valid_until_ms != 0 && b.valid_until_ms <= b.valid_from_ms {
        return Err(bad(
            &format!("{field}.valid_until_ms"),
            "must be after valid_from_ms",
        ));
    }
    if b.rating_groups.len() > 64 {
        return Err(bad(&format!("{field}.rating_groups"), "more than 64"));
    }
    Ok(BucketSpec {
        kind: kind(b.kind, &format!("{field}.kind"))?,
        amount: amount(b.amount, &format!("{field}.amount"))?,
        valid_from_ms: b.valid_from_ms,
        valid_until_ms: b.valid_until_ms,
        priority: b.priority,
        rating_groups: b.rating_groups.clone(),
    })
}

/// `terminate`: nothing may be requested; `may_be_empty`: no report at all
/// is valid (a terminate, a session opened before any quota is asked for).
fn reports(
    rs: &[pb::UsageReport],
    terminate: bool,
    may_be_empty: bool,
) -> Result<Vec<UsageReport>, Status> {
    if rs.len() > MAX_REPORTS {
        return Err(bad("reports", "more than 64"));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(rs.len());
    for (i, r) in rs.iter().enumerate() {
        if !seen.insert(r.rating_group) {
            return Err(bad(
                &format!("reports[{i}].rating_group"),
                "duplicate rating group",
            ));
        }
        let requested = units(
            r.requested.as_ref(),
            &format!("reports[{i}].requested"),
            false,
        )?;
        if terminate && requested != Units::default() {
            return Err(bad(
                &format!("reports[{i}].requested"),
                "terminate cannot request units",
            ));
        }
        out.push(UsageReport {
            rating_group: r.rating_group,
            used: units(r.used.as_ref(), &format!("reports[{i}].used"), false)?,
            requested,
        });
    }
    if !may_be_empty && out.is_empty() {
        return Err(bad("reports", "must not be empty"));
    }
    Ok(out)
}

/// A valid mutating request: the account, the request id, the command.
pub type Validated = (AccountId, RequestId, Command);

pub fn create_account(
    r: &pb::CreateAccountRequest,
) -> Result<(AccountId, RequestId, Command), Status> {
    let currency = r.currency.trim();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad(
            "currency",
            "must be a 3-letter ISO 4217 code, e.g. EUR",
        ));
    }
    if r.credit_limit < 0 || r.credit_limit > MAX_AMOUNT {
        return Err(bad("credit_limit", "must be between 0 and 10^15"));
    }
    if r.initial_balance < 0 || r.initial_balance > MAX_AMOUNT {
        return Err(bad("initial_balance", "must be between 0 and 10^15"));
    }
    if r.buckets.len() > MAX_BUCKETS {
        return Err(bad("buckets", "more than 16"));
    }
    let buckets = r
        .buckets
        .iter()
        .enumerate()
        .map(|(i, b)| bucket_spec(b, &format!("buckets[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok((
        account_id(&r.account_id)?,
        request_id(&r.request_id, "request_id")?,
        Command::CreateAccount {
            currency: currency.to_string(),
            credit_limit: r.credit_limit,
            initial_balance: r.initial_balance,
            buckets,
        },
    ))
}

pub fn add_bucket(r: &pb::AddBucketRequest) -> Result<(AccountId, RequestId, Command), Status> {
    let b = r.bucket.as_ref().ok_or_else(|| bad("bucket", "missing"))?;
    Ok((
        account_id(&r.account_id)?,
        request_id(&r.request_id, "request_id")?,
        Command::AddBucket {
            bucket: bucket_spec(b, "bucket")?,
        },
    ))
}

pub fn top_up(r: &pb::TopUpRequest) -> Result<(AccountId, RequestId, Command), Status> {
    Ok((
        account_id(&r.account_id)?,
        request_id(&r.request_id, "request_id")?,
        Command::TopUp {
            bucket: BucketId(r.bucket_id),
            amount: amount(r.amount, "amount")?,
        },
    ))
}

pub fn reserve(r: &pb::ReserveRequest) -> Result<(AccountId, RequestId, Command), Status> {
    Ok((
        account_id(&r.account_id)?,
        request_id(&r.request_id, "request_id")?,
        Command::Reserve {
            session: session_id(&r.session_id)?,
            seq: r.seq,
            rating_group: r.rating_group,
            requested: units(r.requested.as_ref(), "requested", true)?,
        },
    ))
}

pub fn update(r: &pb::UpdateRequest) -> Result<(AccountId, RequestId, Command), Status> {
    Ok((
        account_id(&r.account_id)?,
        request_id(&r.request_id, "request_id")?,
        Command::Update {
            session: session_id(&r.session_id)?,
            seq: r.seq,
            reports: reports(&r.reports, false, false)?,
        },
    ))
}

pub fn open_session(r: &pb::OpenSessionRequest) -> Result<(AccountId, RequestId, Command), Status> {
    Ok((
        account_id(&r.account_id)?,
        request_id(&r.request_id, "request_id")?,
        Command::Open {
            session: session_id(&r.session_id)?,
            seq: r.seq,
            reports: reports(&r.reports, false, true)?,
        },
    ))
}

pub fn terminate(r: &pb::TerminateRequest) -> Result<(AccountId, RequestId, Command), Status> {
    Ok((
        account_id(&r.account_id)?,
        request_id(&r.request_id, "request_id")?,
        Command::Terminate {
            session: session_id(&r.session_id)?,
            seq: r.seq,
            reports: reports(&r.reports, true, true)?,
        },
    ))
}

pub fn commit(r: &pb::CommitRequest) -> Result<(AccountId, RequestId, Command), Status> {
    if r.reservation_id == 0 {
        return Err(bad("reservation_id", "missing"));
    }
    Ok((
        account_id(&r.account_id)?,
        request_id(&r.request_id, "request_id")?,
        Command::Commit {
            reservation: ReservationId(r.reservation_id),
            used: units(r.used.as_ref(), "used", false)?,
            is_final: r.r#final,
        },
    ))
}

pub fn release(r: &pb::ReleaseRequest) -> Result<(AccountId, RequestId, Command), Status> {
    if r.reservation_id == 0 {
        return Err(bad("reservation_id", "missing"));
    }
    Ok((
        account_id(&r.account_id)?,
        request_id(&r.request_id, "request_id")?,
        Command::Release {
            reservation: ReservationId(r.reservation_id),
        },
    ))
}

pub fn refund(r: &pb::RefundRequest) -> Result<(AccountId, RequestId, Command), Status> {
    Ok((
        account_id(&r.account_id)?,
        request_id(&r.request_id, "request_id")?,
        Command::Refund {
            original: request_id(&r.original_request_id, "original_request_id")?,
            amount: amount(r.amount, "amount")?,
        },
    ))
}

pub fn debit(r: &pb::DebitRequest) -> Result<(AccountId, RequestId, Command), Status> {
    Ok((
        account_id(&r.account_id)?,
        request_id(&r.request_id, "request_id")?,
        Command::Debit {
            rating_group: r.rating_group,
            units: units(r.units.as_ref(), "units", true)?,
        },
    ))
}

pub fn set_state(
    r: &pb::SetAccountStateRequest,
) -> Result<(AccountId, RequestId, Command), Status> {
    let state = match pb::AccountState::try_from(r.state) {
        Ok(pb::AccountState::Active) => AccountState::Active,
        Ok(pb::AccountState::Suspended) => AccountState::Suspended,
        Ok(pb::AccountState::Closed) => AccountState::Closed,
        _ => return Err(bad("state", "unknown or unspecified account state")),
    };
    Ok((
        account_id(&r.account_id)?,
        request_id(&r.request_id, "request_id")?,
        Command::SetState { state },
    ))
}

pub fn tariff(r: &pb::SetTariffRequest) -> Result<(RequestId, Tariff), Status> {
    let id = request_id(&r.request_id, "request_id")?;
    let t = r.tariff.as_ref().ok_or_else(|| bad("tariff", "missing"))?;
    if t.prices.is_empty() || t.prices.len() > MAX_PRICES {
        return Err(bad("tariff.prices", "need 1 to 8 prices"));
    }
    let mut prices = Vec::with_capacity(t.prices.len());
    for (i, p) in t.prices.iter().enumerate() {
        let unit = kind(p.unit, &format!("tariff.prices[{i}].unit"))?;
        if unit == BucketKind::Money {
            return Err(bad(
                &format!("tariff.prices[{i}].unit"),
                "must be BYTES, SECONDS or UNITS",
            ));
        }
        if prices.iter().any(|q: &Price| q.unit == unit) {
            return Err(bad(&format!("tariff.prices[{i}].unit"), "duplicate unit"));
        }
        if p.increment == 0 || p.increment > MAX_UNITS {
            return Err(bad(
                &format!("tariff.prices[{i}].increment"),
                "must be between 1 and 2^50",
            ));
        }
        if p.nano_per_increment > (1u64 << 62) {
            return Err(bad(
                &format!("tariff.prices[{i}].nano_per_increment"),
                "too large",
            ));
        }
        prices.push(Price {
            unit,
            increment: p.increment,
            nano_per_increment: p.nano_per_increment,
        });
    }
    Ok((
        id,
        Tariff {
            rating_group: t.rating_group,
            version: 0,
            prices,
        },
    ))
}
