//! Ledger replies and rejections → protobuf responses.
use crate::ledger::{
    account::BalanceView, AccountState, BucketKind, Grant, Rejection, Reply, Units,
};
use charging_proto::v1 as pb;
use pb::ResultCode as RC;

/// Each rejection's result code, both ways, from one list.
macro_rules! rejection_codes {
    ($($rejection:ident => $code:ident,)*) => {
        pub fn result_code(r: Rejection) -> RC {
            match r {
                $(Rejection::$rejection => RC::$code,)*
            }
        }

        /// The rejection a result code stands for (`None`: OK, or a code
        /// that is no rejection): what a client of the API reads back.
        pub fn rejection_of(code: i32) -> Option<Rejection> {
            match RC::try_from(code).ok()? {
                $(RC::$code => Some(Rejection::$rejection),)*
                _ => None,
            }
        }
    };
}
rejection_codes! {
    AccountNotFound => AccountNotFound,
    AccountNotActive => AccountNotActive,
    SessionNotFound => SessionNotFound,
    ReservationNotFound => ReservationNotFound,
    ReservationResolved => ReservationAlreadyResolved,
    RatingFailed => RatingFailed,
    InsufficientBalance => InsufficientBalance,
    RefundExceedsCharge => RefundExceedsCharge,
    RequestIdReused => RequestIdReused,
    RequestTooOld => RequestTooOld,
    AccountExists => AccountExists,
    BucketNotFound => BucketNotFound,
    LimitExceeded => LimitExceeded,
}

pub fn rejection_label(r: Option<&Rejection>) -> &'static str {
    match r {
        None => "ok",
        Some(r) => result_code(*r).as_str_name(),
    }
}

/// The result code of a decision, as a response carries it.
pub fn code(r: &Result<Reply, Rejection>) -> i32 {
    match r {
        Ok(_) => RC::Ok as i32,
        Err(rej) => result_code(*rej) as i32,
    }
}

fn units(u: Units) -> Option<pb::Units> {
    Some(pb::Units {
        time_s: u.time_s,
        volume_bytes: u.volume_bytes,
        service_units: u.service_units,
    })
}

fn kind(k: BucketKind) -> i32 {
    (match k {
        BucketKind::Money => pb::BucketKind::Money,
        BucketKind::Bytes => pb::BucketKind::Bytes,
        BucketKind::Seconds => pb::BucketKind::Seconds,
        BucketKind::Units => pb::BucketKind::Units,
    }) as i32
}

/// A reply of an unexpected shape for the operation is a bug; it is reported
/// as a rejection-free default with result UNSPECIFIED rather than a panic.
macro_rules! resp {
    ($name:ident, $t:ty, |$r:ident, $c:ident| $body:expr) => {
        pub fn $name(r: Result<Reply, Rejection>) -> $t {
            let $c = code(&r);
            let $r = r.ok();
            $body
        }
    };
}

resp!(create_account, pb::CreateAccountResponse, |r, c| match r {
    Some(Reply::Created { version }) => pb::CreateAccountResponse { result: c, version },
    _ => pb::CreateAccountResponse {
        result: c,
        ..Default::default()
    },
});
resp!(add_bucket, pb::AddBucketResponse, |r, c| match r {
    Some(Reply::BucketAdded { bucket }) => pb::AddBucketResponse {
        result: c,
        bucket_id: bucket.0
    },
    _ => pb::AddBucketResponse {
        result: c,
        ..Default::default()
    },
});
resp!(top_up, pb::TopUpResponse, |r, c| match r {
    Some(Reply::ToppedUp { balance }) => pb::TopUpResponse { result: c, balance },
    _ => pb::TopUpResponse {
        result: c,
        ..Default::default()
    },
});

fn grant_fields(g: &Grant) -> (u64, Option<pb::Units>, bool, u64) {
    (
        g.reservation.0,
        units(g.granted),
        g.final_units,
        g.expires_at_ms,
    )
}

resp!(reserve, pb::ReserveResponse, |r, c| match r {
    Some(Reply::Reserved(g)) => {
        let (reservation_id, granted, final_units, expires_at_ms) = grant_fields(&g);
        pb::ReserveResponse {
            result: c,
            reservation_id,
            granted,
            final_units,
            expires_at_ms,
        }
    }
    _ => pb::ReserveResponse {
        result: c,
        ..Default::default()
    },
});
resp!(update, pb::UpdateResponse, |r, c| match r {
    Some(Reply::Updated {
        grants,
        charged,
        debt,
    }) => pb::UpdateResponse {
        result: c,
        charged,
        debt,
        grants: grants
            .iter()
            .map(|gr| match &gr.result {
                Ok(g) => {
                    let (reservation_id, granted, final_units, expires_at_ms) = grant_fields(g);
                    pb::Grant {
                        rating_group: gr.rating_group,
                        result: RC::Ok as i32,
                        reservation_id,
                        granted,
                        final_units,
                        expires_at_ms,
                    }
                }
                Err(rej) => pb::Grant {
                    rating_group: gr.rating_group,
                    result: result_code(*rej) as i32,
                    ..Default::default()
                },
            })
            .collect(),
    },
    _ => pb::UpdateResponse {
        result: c,
        ..Default::default()
    },
});
/// `OpenSession` replies as `Update` does.
pub fn open_session(r: Result<Reply, Rejection>) -> pb::OpenSessionResponse {
    let u = update(r);
    pb::OpenSessionResponse {
        result: u.result,
        grants: u.grants,
        charged: u.charged,
        debt: u.debt,
    }
}
resp!(terminate, pb::TerminateResponse, |r, c| match r {
    Some(Reply::Terminated { charged, debt }) => pb::TerminateResponse {
        result: c,
        charged,
        debt
    },
    _ => pb::TerminateResponse {
        result: c,
        ..Default::default()
    },
});
resp!(commit, pb::CommitResponse, |r, c| match r {
    Some(Reply::Committed { charged, debt }) => pb::CommitResponse {
        result: c,
        charged,
        debt
    },
    _ => pb::CommitResponse {
        result: c,
        ..Default::default()
    },
});
resp!(release, pb::ReleaseResponse, |_r, c| pb::ReleaseResponse {
    result: c
});
resp!(refund, pb::RefundResponse, |r, c| match r {
    Some(Reply::Refunded { refunded_total }) => pb::RefundResponse {
        result: c,
        refunded_total
    },
    _ => pb::RefundResponse {
        result: c,
        ..Default::default()
    },
});
resp!(debit, pb::DebitResponse, |r, c| match r {
    Some(Reply::Debited { charged }) => pb::DebitResponse { result: c, charged },
    _ => pb::DebitResponse {
        result: c,
        ..Default::default()
    },
});
resp!(set_state, pb::SetAccountStateResponse, |_r, c| {
    pb::SetAccountStateResponse { result: c }
});

pub fn balance(v: Option<BalanceView>) -> pb::BalanceResponse {
    let Some(v) = v else {
        return pb::BalanceResponse {
            result: RC::AccountNotFound as i32,
            ..Default::default()
        };
    };
    pb::BalanceResponse {
        result: RC::Ok as i32,
        currency: v.currency.clone(),
        state: (match v.state {
            AccountState::Active => pb::AccountState::Active,
            AccountState::Suspended => pb::AccountState::Suspended,
            AccountState::Closed => pb::AccountState::Closed,
        }) as i32,
        version: v.version,
        credit_limit: v.credit_limit,
        debt: v.debt,
        available: v.available,
        buckets: v
            .buckets
            .iter()
            .map(|b| pb::Bucket {
                bucket_id: b.id.0,
                kind: kind(b.kind),
                balance: b.balance,
                reserved: b.reserved,
                valid_from_ms: b.valid_from_ms,
                valid_until_ms: b.valid_until_ms,
                priority: b.priority,
                rating_groups: b.rating_groups.clone(),
            })
            .collect(),
        open_sessions: v.open_sessions,
        open_reservations: v.open_reservations,
    }
}

pub fn tariff(t: &crate::ledger::Tariff) -> pb::Tariff {
    pb::Tariff {
        rating_group: t.rating_group,
        version: t.version,
        prices: t
            .prices
            .iter()
            .map(|p| pb::Price {
                unit: kind(p.unit),
                increment: p.increment,
                nano_per_increment: p.nano_per_increment,
            })
            .collect(),
    }
}
