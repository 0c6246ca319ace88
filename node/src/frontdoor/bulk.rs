//! `BulkCreateAccounts`: the bulk-load path (load testers preload millions of
//! accounts with it). The ids of one call are split by shard; each shard's
//! part goes to its shard actor as one `ShardMsg::BulkCreate` (one event, one
//! Raft entry), or one hop to the shard's leader when it is remote. Every
//! account mutation still goes through its shard actor (DESIGN §2).
//!
//! Exactly once without a request id: apply creates only absent accounts and
//! counts the others as existing, so a retried call creates nothing twice.
use super::super::{validate, FrontDoor};
use crate::error::Error;
use crate::ledger::{AccountId, Reply};
use crate::shard::{Outcome, ShardMsg};
use charging_proto::v1 as pb;
use futures::future::join_all;
use std::time::Duration;
use tokio::sync::oneshot;
use tonic::Status;

/// Most accounts in one call.
pub const MAX_BULK_ACCOUNTS: usize = 100_000;
/// Largest balance or credit limit (as for CreateAccount).
const MAX_AMOUNT: i64 = 1_000_000_000_000_000;
/// A bulk call may take longer than one request: it waits for its entries.
const MIN_BULK_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Counts {
    created: u64,
    existing: u64,
    mismatched: u64,
    rejected: Option<i32>,
}

pub async fn bulk_create(
    fd: &FrontDoor,
    msg: pb::BulkCreateAccountsRequest,
    forwarded: bool,
) -> Result<pb::BulkCreateAccountsResponse, Status> {
    // Its cost grows with its size: a heavy call (see `admit_heavy`).
    let _permits = fd.admit_heavy("bulk_create_accounts")?;
    if msg.account_ids.len() > MAX_BULK_ACCOUNTS {
        return Err(Status::from(Error::InvalidArgument(
            "account_ids: more than 100000 in one call".into(),
        )));
    }
    let currency = msg.currency.trim().to_string();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Status::from(Error::InvalidArgument(
            "currency: must be a 3-letter ISO 4217 code, e.g. EUR".into(),
        )));
    }
    if !(0..=MAX_AMOUNT).contains(&msg.credit_limit) {
        return Err(Status::from(Error::InvalidArgument(
            "credit_limit: must be between 0 and 10^15".into(),
        )));
    }
    if !(0..=MAX_AMOUNT).contains(&msg.initial_balance) {
        return Err(Status::from(Error::InvalidArgument(
            "initial_balance: must be between 0 and 10^15".into(),
        )));
    }
    let n = fd.shard_count;
    let mut by_shard: Vec<Vec<AccountId>> = vec![Vec::new(); n as usize];
    for id in &msg.account_ids {
        let id = validate::account_id(id)?;
        by_shard[charging_proto::shard_of(&id.0, n) as usize].push(id);
    }
    let deadline = fd.limits.request_deadline.max(MIN_BULK_DEADLINE);
    let parts = by_shard
        .into_iter()
        .enumerate()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(s, ids)| shard_part(fd, s, ids, &msg, forwarded, deadline));
    let mut total = Counts::default();
    for part in join_all(parts).await {
        let c = part?;
        total.created += c.created;
        total.existing += c.existing;
        total.mismatched += c.mismatched;
        total.rejected = total.rejected.or(c.rejected);
    }
    Ok(pb::BulkCreateAccountsResponse {
        result: total.rejected.unwrap_or(pb::ResultCode::Ok as i32),
        created: total.created,
        existing: total.existing,
        mismatched: total.mismatched,
    })
}

async fn shard_part(
    fd: &FrontDoor,
    shard: usize,
    ids: Vec<AccountId>,
    msg: &pb::BulkCreateAccountsRequest,
    forwarded: bool,
    deadline: Duration,
) -> Result<Counts, Status> {
    let shard_id = shard as crate::raft::ShardId;
    let ids_for_forward: Vec<String> = if forwarded {
        Vec::new()
    } else {
        ids.iter().map(|a| a.0.clone()).collect()
    };
    let outcome = match fd.local(shard_id) {
        // Not hosted here (scale-out): the shard's leader elsewhere decides.
        None => Outcome::NotLeader { leader: None },
        Some(h) => {
            let (tx, rx) = oneshot::channel();
            h.actor
                .cast(ShardMsg::BulkCreate {
                    accounts: ids,
                    currency: msg.currency.trim().to_string(),
                    credit_limit: msg.credit_limit,
                    initial_balance: msg.initial_balance,
                    reply: tx,
                })
                .map_err(|_| Status::from(Error::unavailable("shard actor stopped")))?;
            match tokio::time::timeout(deadline, rx).await {
                Err(_) => Outcome::Unknown("deadline exceeded waiting for the shard"),
                Ok(Err(_)) => Outcome::Unknown("shard actor dropped the request"),
                Ok(Ok(o)) => o,
            }
        }
    };
    match outcome {
        Outcome::Done(Ok(Reply::BulkCreated {
            created,
            existing,
            mismatched,
        })) => Ok(Counts {
            created,
            existing,
            mismatched,
            rejected: None,
        }),
        Outcome::Done(Ok(_)) => Err(Status::from(Error::Internal(
            "unexpected reply to a bulk creation".into(),
        ))),
        Outcome::Done(Err(r)) => Ok(Counts {
            rejected: Some(super::super::result_code(r) as i32),
            ..Counts::default()
        }),
        Outcome::NotLeader { leader } if !forwarded && leader != Some(fd.node) => {
            let candidates = fd.candidates(shard_id, leader);
            let req = pb::BulkCreateAccountsRequest {
                account_ids: ids_for_forward,
                currency: msg.currency.clone(),
                credit_limit: msg.credit_limit,
                initial_balance: msg.initial_balance,
            };
            let r = fd
                .forward_to(
                    shard_id,
                    candidates,
                    req,
                    false,
                    deadline,
                    |mut c, req| async move { c.bulk_create_accounts(req).await },
                )
                .await?;
            Ok(Counts {
                created: r.created,
                existing: r.existing,
                mismatched: r.mismatched,
                rejected: (r.result != pb::ResultCode::Ok as i32).then_some(r.result),
            })
        }
        Outcome::NotLeader { leader } => Err(fd.unavailable(leader, "not the shard leader")),
        Outcome::Unknown(why) => Err(fd.unavailable(None, why)),
        Outcome::Overloaded(why) => Err(Status::from(Error::Overloaded(why.into()))),
    }
}
