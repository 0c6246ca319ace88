//! Ledger requests over the real gRPC API, and responses back to
//! [`Outcome`]s: shared by the turmoil simulator and the real-process runner.
use crate::history::Outcome;
use charging_client::proto::charging_client::ChargingClient;
use charging_client::proto::{self as pb};
use charging_node::ledger::{Command, Grant, Reply, Request, ReservationId, Units};
use tonic::transport::Channel;

fn units(u: &Units) -> Option<pb::Units> {
    Some(pb::Units {
        time_s: u.time_s,
        volume_bytes: u.volume_bytes,
        service_units: u.service_units,
    })
}

fn ledger_units(u: Option<pb::Units>) -> Units {
    let u = u.unwrap_or_default();
    Units {
        time_s: u.time_s,
        volume_bytes: u.volume_bytes,
        service_units: u.service_units,
    }
}

/// The ledger rejection of a result code (`None` = OK or unknown code):
/// the node's own mapping.
pub use charging_node::frontdoor::rejection_of as rejection;

fn outcome(code: i32, ok: impl FnOnce() -> Reply) -> Result<Outcome, tonic::Status> {
    if code == pb::ResultCode::Ok as i32 {
        return Ok(Outcome::Ok(ok()));
    }
    match rejection(code) {
        Some(r) => Ok(Outcome::Rejected(r)),
        None => Err(tonic::Status::internal(format!(
            "unknown result code {code}"
        ))),
    }
}

fn rid(r: &Request) -> Vec<u8> {
    r.request_id.0.to_be_bytes().to_vec()
}

/// The bearer token every request carries, if [`token_from_env`] found one.
static TOKEN: std::sync::OnceLock<Option<charging_client::BearerToken>> =
    std::sync::OnceLock::new();

/// Reads the bearer token from `CHARGING_TOKEN` (as chargectl does) once,
/// for every later request: `chargechaos real` against a cluster with
/// `[auth]` on. Unset or empty: no token. Not called: no token (the
/// in-process simulations run without auth).
pub fn token_from_env() -> Result<bool, String> {
    let token = match std::env::var(charging_client::TOKEN_ENV) {
        Ok(v) if !v.trim().is_empty() => Some(
            charging_client::BearerToken::new(&v)
                .map_err(|e| format!("{}: {e}", charging_client::TOKEN_ENV))?,
        ),
        Ok(_) | Err(std::env::VarError::NotPresent) => None,
        Err(e) => return Err(format!("{}: {e}", charging_client::TOKEN_ENV)),
    };
    let on = token.is_some();
    TOKEN
        .set(token)
        .map_err(|_| "the bearer token was already read".to_string())?;
    Ok(on)
}

/// Sets `authorization: Bearer ...` on `r` when a token was read.
pub fn authorize<T>(r: &mut tonic::Request<T>) {
    if let Some(t) = TOKEN.get().and_then(Option::as_ref) {
        t.apply(r.metadata_mut());
    }
}

/// Wraps a message with a per-attempt timeout, the bearer token (if any)
/// and, when aimed at a known leader, the no-forward marker (the node
/// answers with a hint instead).
fn msg<T>(m: T, timeout: std::time::Duration, no_forward: bool) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.set_timeout(timeout);
    authorize(&mut r);
    if no_forward {
        r.metadata_mut().insert(
            charging_client::headers::FORWARDED,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    r
}

/// Sends one attempt of `req`. `Ok` is a definite outcome; `Err` is a gRPC
/// status (UNAVAILABLE, deadline...): the outcome of this attempt is unknown.
pub async fn send(
    ch: Channel,
    req: &Request,
    timeout: std::time::Duration,
    no_forward: bool,
) -> Result<Outcome, tonic::Status> {
    let mut c = ChargingClient::new(ch);
    let account_id = req.account.0.clone();
    let request_id = rid(req);
    match &req.cmd {
        Command::CreateAccount {
            currency,
            credit_limit,
            initial_balance,
            ..
        } => {
            let r = c
                .create_account(msg(
                    pb::CreateAccountRequest {
                        account_id,
                        request_id,
                        currency: currency.clone(),
                        credit_limit: *credit_limit,
                        initial_balance: *initial_balance,
                        buckets: vec![],
                    },
                    timeout,
                    no_forward,
                ))
                .await?
                .into_inner();
            outcome(r.result, || Reply::Created { version: r.version })
        }
        Command::TopUp { bucket, amount } => {
            let r = c
                .top_up(msg(
                    pb::TopUpRequest {
                        account_id,
                        request_id,
                        bucket_id: bucket.0,
                        amount: *amount,
                    },
                    timeout,
                    no_forward,
                ))
                .await?
                .into_inner();
            outcome(r.result, || Reply::ToppedUp { balance: r.balance })
        }
        Command::Debit {
            rating_group,
            units: u,
        } => {
            let r = c
                .debit(msg(
                    pb::DebitRequest {
                        account_id,
                        request_id,
                        rating_group: *rating_group,
                        units: units(u),
                    },
                    timeout,
                    no_forward,
                ))
                .await?
                .into_inner();
            outcome(r.result, || Reply::Debited { charged: r.charged })
        }
        Command::Reserve {
            session,
            seq,
            rating_group,
            requested,
        } => {
            let r = c
                .reserve(msg(
                    pb::ReserveRequest {
                        account_id,
                        request_id,
                        session_id: session.0.clone(),
                        seq: *seq,
                        rating_group: *rating_group,
                        requested: units(requested),
                    },
                    timeout,
                    no_forward,
                ))
                .await?
                .into_inner();
            outcome(r.result, || {
                crate::history::seen(&Reply::Reserved(Grant {
                    reservation: ReservationId(r.reservation_id),
                    granted: ledger_units(r.granted),
                    final_units: r.final_units,
                    expires_at_ms: r.expires_at_ms,
                }))
            })
        }
        Command::Commit {
            reservation,
            used,
            is_final,
        } => {
            let r = c
                .commit(msg(
                    pb::CommitRequest {
                        account_id,
                        request_id,
                        reservation_id: reservation.0,
                        used: units(used),
                        r#final: *is_final,
                    },
                    timeout,
                    no_forward,
                ))
                .await?
                .into_inner();
            outcome(r.result, || Reply::Committed {
                charged: r.charged,
                debt: r.debt,
            })
        }
        Command::Release { reservation } => {
            let r = c
                .release(msg(
                    pb::ReleaseRequest {
                        account_id,
                        request_id,
                        reservation_id: reservation.0,
                    },
                    timeout,
                    no_forward,
                ))
                .await?
                .into_inner();
            outcome(r.result, || Reply::Released)
        }
        Command::Refund { original, amount } => {
            let r = c
                .refund(msg(
                    pb::RefundRequest {
                        account_id,
                        request_id,
                        original_request_id: original.0.to_be_bytes().to_vec(),
                        amount: *amount,
                    },
                    timeout,
                    no_forward,
                ))
                .await?
                .into_inner();
            outcome(r.result, || Reply::Refunded {
                refunded_total: r.refunded_total,
            })
        }
        other => Err(tonic::Status::unimplemented(format!(
            "chaos workload does not send {other:?}"
        ))),
    }
}

/// The workload's tariff as a SetTariff message.
pub fn set_tariff_request(request_id: u128) -> pb::SetTariffRequest {
    let t = crate::workload::tariff();
    pb::SetTariffRequest {
        request_id: request_id.to_be_bytes().to_vec(),
        tariff: Some(pb::Tariff {
            rating_group: t.rating_group,
            version: 0,
            prices: t
                .prices
                .iter()
                .map(|p| pb::Price {
                    unit: pb::BucketKind::Bytes as i32,
                    increment: p.increment,
                    nano_per_increment: p.nano_per_increment,
                })
                .collect(),
        }),
    }
}
