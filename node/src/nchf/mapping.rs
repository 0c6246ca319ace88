//! Nchf messages to front-door operations and back: the ChargingDataRef,
//! the sequence number, deterministic request ids, usage and quota, result
//! codes and ProblemDetails. Pure: no I/O, no clock (times are arguments).
use super::model::*;
use crate::config::{NchfOptions, NchfSequence};
use crate::frontdoor::validate::{MAX_ID_BYTES, MAX_REPORTS, MAX_UNITS};
use crate::ledger::Rejection;
use base64::Engine;
use charging_proto::v1 as pb;
use charging_proto::{fnv1a64, v1::ResultCode as RC};
use http::StatusCode;

/// A failure as the consumer sees it: status and ProblemDetails.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// Boxed: a `Problem` is the error of most of this module's results.
    pub body: Box<ProblemDetails>,
    /// `Retry-After` seconds (503).
    pub retry_after: Option<u32>,
    /// `WWW-Authenticate` (401, 403 from the token check).
    pub www_authenticate: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, cause: &str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            body: Box::new(ProblemDetails {
                title: status.canonical_reason().unwrap_or("error").to_string(),
                status: status.as_u16(),
                detail: detail.into(),
                cause: cause.to_string(),
                invalid_params: Vec::new(),
            }),
            retry_after: None,
            www_authenticate: None,
        }
    }

    /// 400 naming the JSON pointer of the offending IE.
    pub fn invalid(cause: &str, pointer: &str, reason: impl Into<String>) -> Problem {
        let reason = reason.into();
        let mut p = Problem::new(
            StatusCode::BAD_REQUEST,
            cause,
            format!("{pointer}: {reason}"),
        );
        p.body.invalid_params.push(InvalidParam {
            param: pointer.to_string(),
            reason,
        });
        p
    }

    pub fn unavailable(detail: impl Into<String>) -> Problem {
        let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "SYSTEM_FAILURE", detail);
        p.retry_after = Some(1);
        p
    }

    pub fn overloaded(detail: impl Into<String>) -> Problem {
        let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "NF_CONGESTION", detail);
        p.retry_after = Some(1);
        p
    }
}

// ---- the reference ----------------------------------------------------------

/// A ChargingDataRef: the account (base64url of the SUPI, so any node can
/// route it to the account's shard) and the ledger session id, joined by
/// `.`; URL-safe.
pub fn encode_ref(account: &str, session: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{}.{session}", b64.encode(account.as_bytes()))
}

/// (account, session) of a ChargingDataRef, or `None` when it is not one
/// of ours (an unknown reference: 404).
pub fn decode_ref(r: &str) -> Option<(String, String)> {
    let (a, s) = r.rsplit_once('.')?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let account = String::from_utf8(b64.decode(a).ok()?).ok()?;
    let ok = !account.is_empty()
        && account.len() <= MAX_ID_BYTES
        && s.len() == SESSION_LEN
        && s.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then(|| (account, s.to_string()))
}

const SESSION_LEN: usize = 32;

/// The ledger session of a Create: a hash of (consumer, charging id or PDU
/// session id, invocationTimeStamp), so a retransmitted Create lands on the
/// same session. 128 bits as 32 hex digits.
pub fn session_of(req: &ChargingDataRequest, ts_ms: u64) -> String {
    let nf = &req.nf_consumer_identification;
    let consumer = nf
        .nf_name
        .clone()
        .unwrap_or_else(|| nf.node_functionality.as_str().to_string());
    let pdu = req.pdu_session_charging_information.as_ref();
    let charging_id = req.charging_id.or(pdu.and_then(|p| p.charging_id));
    let pdu_session = pdu
        .and_then(|p| p.pdu_session_information.as_ref())
        .and_then(|i| i.pdu_session_id);
    let key = format!(
        "{consumer}\u{0}{charging_id:?}\u{0}{pdu_session:?}\u{0}{ts_ms}\u{0}{}",
        req.subscriber_identifier.as_deref().unwrap_or("")
    );
    format!(
        "{:016x}{:016x}",
        fnv1a64(key.as_bytes()),
        fnv1a64(format!("nchf\u{0}{key}").as_bytes())
    )
}

/// RFC 3339 `DateTime` to unix ms (0 before 1970).
pub fn parse_time(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    Some(u64::try_from(ms.max(0)).unwrap_or(u64::MAX))
}

/// The ledger `seq` of a message.
pub fn seq_of(mode: NchfSequence, req: &ChargingDataRequest, ts_ms: u64) -> u64 {
    match mode {
        NchfSequence::Isn => u64::from(req.invocation_sequence_number),
        NchfSequence::Timestamp => ts_ms,
    }
}

/// A UUIDv7 request id, the same for a retransmission: its time is the
/// message's invocationTimeStamp (not later than `now_ms`: a consumer whose
/// clock runs ahead would otherwise be refused as future-dated), its random
/// bits a hash of (reference, seq, operation, rating group).
pub fn request_id(
    reference: &str,
    seq: u64,
    op: &str,
    rg: u32,
    ts_ms: u64,
    now_ms: u64,
) -> Vec<u8> {
    let ms = u128::from(ts_ms.min(now_ms) & 0xFFFF_FFFF_FFFF);
    let key = format!("{reference}\u{0}{seq}\u{0}{op}\u{0}{rg}");
    let a = u128::from(fnv1a64(key.as_bytes()) & 0xFFF);
    let b = u128::from(fnv1a64(format!("rid\u{0}{key}").as_bytes()) & ((1u64 << 62) - 1));
    let v = (ms << 80) | (7u128 << 76) | (a << 64) | (0b10u128 << 62) | b;
    v.to_be_bytes().to_vec()
}

// ---- usage and quota --------------------------------------------------------

/// One rating group's report, as the ledger takes it, and what the
/// response needs to echo.
#[derive(Debug, Clone, Default)]
pub struct RgReport {
    pub rating_group: u32,
    pub used: pb::Units,
    pub requested: pb::Units,
    /// The requested dimensions, for the shape of `grantedUnit`.
    pub shape: Option<RequestedUnit>,
    pub upf_id: Option<String>,
}

fn add(a: u64, b: Option<u64>, ptr: &str) -> Result<u64, Problem> {
    match a.checked_add(b.unwrap_or(0)) {
        Some(v) if v <= MAX_UNITS => Ok(v),
        _ => Err(Problem::invalid(
            "MANDATORY_IE_INCORRECT",
            ptr,
            "usage too large (at most 2^50 per dimension and request)",
        )),
    }
}

/// The reports of a message, one per rating group (usage of repeated
/// rating groups summed, the last request kept). `release`: nothing is
/// requested. A FINAL trigger, or a quotaManagementIndicator OFFLINE /
/// QUOTA_MANAGEMENT_SUSPENDED, means nothing is requested on that group;
/// its usage is still charged.
pub fn reports(
    req: &ChargingDataRequest,
    release: bool,
    opts: &NchfOptions,
) -> Result<Vec<RgReport>, Problem> {
    let mut out: Vec<RgReport> = Vec::new();
    let muus = req.multiple_unit_usage.as_deref().unwrap_or(&[]);
    let final_all = req
        .triggers
        .iter()
        .flatten()
        .any(|t| t.trigger_type == Some(TriggerType::Final));
    for (i, m) in muus.iter().enumerate() {
        let pos = match out.iter().position(|r| r.rating_group == m.rating_group) {
            Some(p) => p,
            None => {
                if out.len() == MAX_REPORTS {
                    return Err(Problem::invalid(
                        "MANDATORY_IE_INCORRECT",
                        "/multipleUnitUsage",
                        format!("more than {MAX_REPORTS} rating groups"),
                    ));
                }
                out.push(RgReport {
                    rating_group: m.rating_group,
                    ..RgReport::default()
                });
                out.len() - 1
            }
        };
        let r = &mut out[pos];
        let mut no_quota = release || final_all;
        for (j, c) in m.used_unit_container.iter().flatten().enumerate() {
            let ptr = format!("/multipleUnitUsage/{i}/usedUnitContainer/{j}");
            let volume = match c.total_volume {
                Some(v) => Some(v),
                None if c.uplink_volume.is_some() || c.downlink_volume.is_some() => Some(
                    c.uplink_volume
                        .unwrap_or(0)
                        .saturating_add(c.downlink_volume.unwrap_or(0)),
                ),
                None => None,
            };
            r.used.time_s = add(r.used.time_s, c.time.map(u64::from), &ptr)?;
            r.used.volume_bytes = add(r.used.volume_bytes, volume, &ptr)?;
            r.used.service_units = add(r.used.service_units, c.service_specific_units, &ptr)?;
            if matches!(
                c.quota_management_indicator,
                Some(QuotaManagementIndicator::OfflineCharging)
                    | Some(QuotaManagementIndicator::QuotaManagementSuspended)
            ) || c
                .triggers
                .iter()
                .flatten()
                .any(|t| t.trigger_type == Some(TriggerType::Final))
            {
                no_quota = true;
            }
        }
        r.upf_id = m.upf_id.clone().or(r.upf_id.take());
        r.requested = pb::Units::default();
        r.shape = None;
        if let (Some(u), false) = (&m.requested_unit, no_quota) {
            r.requested = requested(u, opts);
            r.shape = Some(u.clone());
        }
    }
    Ok(out)
}

/// The units a requestedUnit asks for (at most 2^50 each: more is granted
/// partially anyway); one with no value gets the configured default volume.
fn requested(u: &RequestedUnit, opts: &NchfOptions) -> pb::Units {
    let volume = u.total_volume.or_else(|| {
        (u.uplink_volume.is_some() || u.downlink_volume.is_some()).then(|| {
            u.uplink_volume
                .unwrap_or(0)
                .saturating_add(u.downlink_volume.unwrap_or(0))
        })
    });
    let mut out = pb::Units {
        time_s: u64::from(u.time.unwrap_or(0)).min(MAX_UNITS),
        volume_bytes: volume.unwrap_or(0).min(MAX_UNITS),
        service_units: u.service_specific_units.unwrap_or(0).min(MAX_UNITS),
    };
    if u.time.is_none() && volume.is_none() && u.service_specific_units.is_none() {
        out.volume_bytes = opts.default_volume_bytes.min(MAX_UNITS);
    }
    out
}

pub fn to_pb(rs: &[RgReport]) -> Vec<pb::UsageReport> {
    rs.iter()
        .map(|r| pb::UsageReport {
            rating_group: r.rating_group,
            used: Some(r.used),
            requested: Some(r.requested),
        })
        .collect()
}

// ---- answers ----------------------------------------------------------------

/// The per-rating-group result code of a ledger result code.
pub fn rg_result(code: i32) -> ResultCode {
    match RC::try_from(code) {
        Ok(RC::Ok) => ResultCode::Success,
        Ok(RC::InsufficientBalance) => ResultCode::QuotaLimitReached,
        Ok(RC::RatingFailed) => ResultCode::RatingFailed,
        Ok(RC::AccountNotFound) => ResultCode::UserUnknown,
        Ok(RC::AccountNotActive) => ResultCode::EndUserServiceDenied,
        _ => ResultCode::EndUserServiceRejected,
    }
}

/// What the response's rating groups need besides the ledger's grants.
pub struct Shaping<'a> {
    pub reports: &'a [RgReport],
    pub threshold_percent: u8,
    /// validityTime, seconds (the ledger's reservation validity).
    pub validity_s: u64,
}

/// One MultipleUnitInformation per grant the ledger answered.
pub fn units_info(grants: &[pb::Grant], s: &Shaping<'_>) -> Vec<MultipleUnitInformation> {
    grants
        .iter()
        .map(|g| {
            let rep = s.reports.iter().find(|r| r.rating_group == g.rating_group);
            let mut mui = MultipleUnitInformation {
                result_code: rg_result(g.result),
                rating_group: g.rating_group,
                granted_unit: None,
                triggers: Vec::new(),
                validity_time: None,
                final_unit_indication: None,
                time_quota_threshold: None,
                volume_quota_threshold: None,
                unit_quota_threshold: None,
                upf_id: rep.and_then(|r| r.upf_id.clone()),
            };
            if g.result != RC::Ok as i32 {
                return mui;
            }
            let u = g.granted.unwrap_or_default();
            let shape = rep.and_then(|r| r.shape.clone()).unwrap_or_default();
            let pct = u64::from(s.threshold_percent);
            let threshold = |v: u64| (pct > 0 && v > 0).then(|| v * pct / 100);
            let mut gu = GrantedUnit::default();
            if u.time_s > 0 || shape.time.is_some() {
                gu.time = Some(u.time_s);
                mui.time_quota_threshold = threshold(u.time_s);
            }
            let volume_asked = shape.total_volume.is_some()
                || shape.uplink_volume.is_some()
                || shape.downlink_volume.is_some();
            if u.volume_bytes > 0 || volume_asked {
                gu.total_volume = Some(u.volume_bytes);
                // Uplink / downlink asked for: each may use the whole grant
                // (the ledger holds one volume).
                if shape.uplink_volume.is_some() {
                    gu.uplink_volume = Some(u.volume_bytes);
                }
                if shape.downlink_volume.is_some() {
                    gu.downlink_volume = Some(u.volume_bytes);
                }
                mui.volume_quota_threshold = threshold(u.volume_bytes);
            }
            if u.service_units > 0 || shape.service_specific_units.is_some() {
                gu.service_specific_units = Some(u.service_units);
                mui.unit_quota_threshold = threshold(u.service_units);
            }
            mui.granted_unit = Some(gu);
            mui.validity_time = Some(s.validity_s);
            let immediate = |t: TriggerType| Trigger {
                trigger_type: Some(t),
                trigger_category: TriggerCategory::ImmediateReport,
            };
            mui.triggers.push(immediate(TriggerType::QuotaExhausted));
            mui.triggers.push(immediate(TriggerType::ValidityTime));
            if mui.time_quota_threshold.is_some()
                || mui.volume_quota_threshold.is_some()
                || mui.unit_quota_threshold.is_some()
            {
                mui.triggers.push(immediate(TriggerType::QuotaThreshold));
            }
            if g.final_units {
                mui.final_unit_indication = Some(FinalUnitIndication {
                    final_unit_action: FinalUnitAction::Terminate,
                });
            }
            mui
        })
        .collect()
}

/// A whole-request rejection (the result code of an OK-status answer).
/// `None`: not a rejection of the whole request.
pub fn rejection_problem(code: i32, what: &str) -> Option<Problem> {
    let rej = crate::frontdoor::rejection_of(code)?;
    let (status, cause, detail) = match rej {
        Rejection::AccountNotFound => (
            StatusCode::NOT_FOUND,
            "USER_UNKNOWN",
            "no account for this subscriberIdentifier".to_string(),
        ),
        Rejection::SessionNotFound => (
            StatusCode::NOT_FOUND,
            "CONTEXT_NOT_FOUND",
            format!("no open charging session for this {what}"),
        ),
        Rejection::AccountNotActive => (
            StatusCode::FORBIDDEN,
            "END_USER_REQUEST_DENIED",
            "the subscriber's account is suspended or closed".to_string(),
        ),
        Rejection::RequestIdReused => (
            StatusCode::CONFLICT,
            "INVOCATION_SEQUENCE_NUMBER_REUSED",
            "this invocationSequenceNumber was used with another request in this session \
             (a consumer whose sequence number never moves needs the node's \
             `sequence = \"timestamp\"`)"
                .to_string(),
        ),
        Rejection::RequestTooOld => (
            StatusCode::CONFLICT,
            "INVOCATION_OUT_OF_ORDER",
            "older than the session's last request (or than the deduplication window)".to_string(),
        ),
        Rejection::LimitExceeded => (
            StatusCode::FORBIDDEN,
            "CHARGING_NOT_APPLICABLE",
            "a per-subscriber limit was reached (sessions, reservations or totals)".to_string(),
        ),
        Rejection::RatingFailed | Rejection::InsufficientBalance => return None,
        other => (
            StatusCode::FORBIDDEN,
            "CHARGING_FAILED",
            format!("{other:?}"),
        ),
    };
    Some(Problem::new(status, cause, detail))
}

/// A front-door status as a Problem (the call did not reach a decision).
pub fn status_problem(s: &tonic::Status) -> Problem {
    use tonic::Code;
    match s.code() {
        Code::InvalidArgument => Problem::new(
            StatusCode::BAD_REQUEST,
            "MANDATORY_IE_INCORRECT",
            s.message().to_string(),
        ),
        Code::ResourceExhausted => Problem::overloaded(s.message().to_string()),
        // Whether it was applied is unknown (a leader change, a forward
        // whose connection broke: INTERNAL "h2 protocol error"):
        // retransmitting is safe.
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Internal
        | Code::Unknown => Problem::unavailable(format!(
            "outcome unknown ({}); retransmit the same request",
            s.message()
        )),
        Code::Unauthenticated => {
            let mut p = Problem::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", s.message());
            p.www_authenticate = header(s, "www-authenticate");
            p
        }
        Code::PermissionDenied => {
            let mut p = Problem::new(StatusCode::FORBIDDEN, "FORBIDDEN", s.message());
            p.www_authenticate = header(s, "www-authenticate");
            p
        }
        _ => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SYSTEM_FAILURE",
            s.message().to_string(),
        ),
    }
}

fn header(s: &tonic::Status, name: &str) -> Option<String> {
    s.metadata()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A body that did not deserialize: the JSON pointer of the IE and why.
pub fn parse_problem(e: &serde_path_to_error::Error<serde_json::Error>) -> Problem {
    let mut pointer = String::new();
    for seg in e.path().iter() {
        use serde_path_to_error::Segment as S;
        match seg {
            S::Seq { index } => pointer.push_str(&format!("/{index}")),
            S::Map { key } | S::Enum { variant: key } => {
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            S::Unknown => {}
        }
    }
    let inner = e.inner();
    let msg = inner.to_string();
    let missing = msg.starts_with("missing field");
    if missing {
        // The path names the object; add the field.
        if let Some(f) = msg.split('`').nth(1) {
            pointer.push('/');
            pointer.push_str(f);
        }
    }
    if pointer.is_empty() {
        pointer.push('/');
    }
    let cause = if missing {
        "MANDATORY_IE_MISSING"
    } else {
        "MANDATORY_IE_INCORRECT"
    };
    // serde_json's message ends with " at line L column C": keep it short.
    let reason = msg.split(" at line ").next().unwrap_or(&msg).to_string();
    Problem::invalid(cause, &pointer, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_round_trip_and_foreign_ones_are_refused() {
        let r = encode_ref("imsi-208930000000003", "0123456789abcdef0123456789abcdef");
        assert!(r
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        assert_eq!(
            decode_ref(&r),
            Some((
                "imsi-208930000000003".into(),
                "0123456789abcdef0123456789abcdef".into()
            ))
        );
        assert_eq!(decode_ref("nope"), None);
        assert_eq!(decode_ref("aW1zaQ.zz"), None);
        assert_eq!(decode_ref(".0123456789abcdef0123456789abcdef"), None);
    }

    #[test]
    fn request_ids_are_uuidv7_and_stable() {
        let a = request_id("r", 3, "update", 0, 1_700_000_000_000, 1_800_000_000_000);
        let b = request_id("r", 3, "update", 0, 1_700_000_000_000, 1_900_000_000_000);
        assert_eq!(a, b);
        let v = u128::from_be_bytes(a.clone().try_into().unwrap());
        assert_eq!((v >> 76) & 0xF, 7);
        assert_eq!((v >> 62) & 0b11, 0b10);
        assert_eq!((v >> 80) as u64, 1_700_000_000_000);
        assert_ne!(a, request_id("r", 4, "update", 0, 1_700_000_000_000, 0));
        // Dated in the future: clamped to now.
        let f = request_id("r", 3, "update", 0, 2_000_000_000_000, 1_800_000_000_000);
        let v = u128::from_be_bytes(f.try_into().unwrap());
        assert_eq!((v >> 80) as u64, 1_800_000_000_000);
    }

    #[test]
    fn times_parse_as_rfc3339() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(
            parse_time("2024-01-01T12:00:00.5+01:00"),
            Some(1_704_106_800_500)
        );
        assert_eq!(parse_time("1960-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("yesterday"), None);
    }
}
