//! Talking to the cluster outside the measured load: tariffs, the bulk
//! preload of accounts, and the balance read-back that checks for drift.

use crate::exec::Channel;
use crate::exec::{batched, Bulk, OpKind, OpOut, Target};
use crate::workload::{Dim, Expect, WorkCfg};
use charging_client::proto as pb;
use charging_client::proto::charging_client::ChargingClient;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

/// The unit dimension of each rating group's first price.
pub async fn tariff_dims(ch: &Channel) -> anyhow::Result<HashMap<u32, Dim>> {
    let r = ChargingClient::new(ch.clone())
        .get_tariffs(pb::GetTariffsRequest {})
        .await?
        .into_inner();
    let mut out = HashMap::new();
    for t in r.tariffs {
        let dim = match t.prices.first().map(|p| p.unit) {
            Some(u) if u == pb::BucketKind::Seconds as i32 => Dim::Seconds,
            Some(u) if u == pb::BucketKind::Units as i32 => Dim::Units,
            _ => Dim::Bytes,
        };
        out.insert(t.rating_group, dim);
    }
    Ok(out)
}

/// A UUIDv7 fixed by (`t_ms`, `salt`, `id`): the preload can resend the very
/// same create after a lost answer without keeping 10 million ids around.
pub fn stable_v7(t_ms: u64, salt: u16, id: u64) -> Vec<u8> {
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&t_ms.to_be_bytes()[2..]);
    b[6] = 0x70 | ((salt >> 8) as u8 & 0x0f);
    b[7] = salt as u8;
    b[8..].copy_from_slice(&id.to_be_bytes());
    b[8] = 0x80 | (b[8] & 0x3f);
    b.to_vec()
}

#[derive(Debug, Clone, Default)]
pub struct Preload {
    pub accounts: u64,
    pub created: u64,
    /// Accounts that were there already; their balances are read as the base.
    pub existed: Vec<u64>,
    pub failed: u64,
    pub elapsed: Duration,
}

impl Preload {
    pub fn per_sec(&self) -> f64 {
        self.accounts as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Creates accounts `0..n` of `cfg` through `BulkCreateAccounts`: `chunk`
/// ids per call, `inflight` calls at once, spread over `channels` (the node
/// splits each call by shard and forwards each part to its leader). The call
/// is idempotent by account id, so a failed call is simply sent again (at
/// most 12 times, with backoff). A call that reports existing accounts (a
/// rerun with the same prefix, or a retry of a call that did apply) puts
/// all its ids in `existed`: their balances are read back as the base, and
/// an account this run created reads as `initial_balance`.
pub async fn bulk_preload(
    channels: &[Channel],
    cfg: &WorkCfg,
    initial_balance: i64,
    currency: &str,
    chunk: usize,
    inflight: usize,
) -> anyhow::Result<Preload> {
    use futures::stream::StreamExt;
    let t = Instant::now();
    let chunk = chunk.clamp(1, 100_000) as u64;
    let n = cfg.accounts;
    let ranges: Vec<(u64, u64)> = (0..n.div_ceil(chunk))
        .map(|i| (i * chunk, ((i + 1) * chunk).min(n)))
        .collect();
    let calls = ranges.into_iter().enumerate().map(|(i, (lo, hi))| {
        let ch = channels[i % channels.len()].clone();
        let req = pb::BulkCreateAccountsRequest {
            account_ids: (lo..hi).map(|id| cfg.account_id(id)).collect(),
            currency: currency.to_string(),
            credit_limit: 0,
            initial_balance,
        };
        async move {
            let mut client = ChargingClient::new(ch)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20);
            let mut last = String::new();
            for attempt in 0..12u32 {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
                }
                let mut r = tonic::Request::new(req.clone());
                r.set_timeout(Duration::from_secs(60));
                match client.bulk_create_accounts(r).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        if charging_client::is_ok(r.result) {
                            return (lo, hi, Ok(r));
                        }
                        last = charging_client::result_name(r.result).to_string();
                        break;
                    }
                    Err(s) => {
                        last = format!("grpc:{:?} {}", s.code(), s.message());
                        eprintln!("preload: ids {lo}..{hi}: {last}; retrying (same ids)");
                    }
                }
            }
            (lo, hi, Err(last))
        }
    });
    let mut results = futures::stream::iter(calls).buffer_unordered(inflight.max(1));
    let (mut created, mut failed) = (0u64, 0u64);
    let mut existed = Vec::new();
    let mut errors: HashMap<String, u64> = HashMap::new();
    while let Some((lo, hi, r)) = results.next().await {
        match r {
            Ok(r) => {
                created += r.created;
                if r.mismatched > 0 {
                    *errors
                        .entry("existing with other currency or credit limit".into())
                        .or_default() += r.mismatched;
                }
                if r.existing > 0 {
                    existed.extend(lo..hi);
                }
            }
            Err(e) => {
                failed += hi - lo;
                *errors.entry(e).or_default() += hi - lo;
            }
        }
    }
    if !errors.is_empty() {
        eprintln!("preload: problems (accounts): {errors:?}");
    }
    existed.sort_unstable();
    Ok(Preload {
        accounts: n,
        created,
        existed,
        failed,
        elapsed: t.elapsed(),
    })
}

/// Creates accounts `0..n` of `cfg` through the Stream RPC, `batch`
/// create_account ops per message, `pipeline` messages in flight per stream.
/// ACCOUNT_EXISTS counts as done.
pub async fn preload(
    channels: &[Channel],
    cfg: &WorkCfg,
    initial_balance: i64,
    currency: &str,
    batch: usize,
    pipeline: usize,
) -> anyhow::Result<Preload> {
    let t = Instant::now();
    let t_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let salt: u16 = rand::random();
    let prefix = cfg.prefix.clone();
    let currency = currency.to_string();
    let created = Arc::new(AtomicU64::new(0));
    let existed = Arc::new(Mutex::new(Vec::new()));
    let other = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let (c2, e2, o2) = (created.clone(), existed.clone(), other.clone());
    let left = batched(
        Target::Charging,
        channels,
        (0..cfg.accounts).collect(),
        Bulk {
            batch,
            pipeline,
            passes: 12,
        },
        move |id| {
            OpKind::CreateAccount(pb::CreateAccountRequest {
                account_id: format!("{prefix}-{id}"),
                request_id: stable_v7(t_ms, salt, id),
                currency: currency.clone(),
                credit_limit: 0,
                initial_balance,
                buckets: vec![],
            })
        },
        move |id, r| match r {
            Ok(OpOut::CreateAccount(c)) if charging_client::is_ok(c.result) => {
                c2.fetch_add(1, Ordering::Relaxed);
                false
            }
            Ok(OpOut::CreateAccount(c)) if c.result == pb::ResultCode::AccountExists as i32 => {
                e2.lock().unwrap_or_else(|e| e.into_inner()).push(id);
                false
            }
            Ok(OpOut::Error(e)) if e.code == Code::Unavailable as i32 => true,
            Err(Code::Unavailable) => true,
            r => {
                let retry = name_is_retryable(other_code(&r));
                let name = match &r {
                    Ok(OpOut::CreateAccount(c)) => {
                        charging_client::result_name(c.result).to_string()
                    }
                    Ok(OpOut::Error(e)) => format!("grpc:{:?}", Code::from_i32(e.code)),
                    Err(c) => format!("grpc:{c:?}"),
                    Ok(_) => "unexpected result".into(),
                };
                *o2.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(name)
                    .or_default() += 1;
                retry
            }
        },
    )
    .await?;
    let other = other.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if !left.is_empty() {
        eprintln!(
            "preload: {} accounts not created (answers seen: {other:?})",
            left.len()
        );
    }
    let mut existed = std::mem::take(&mut *existed.lock().unwrap_or_else(|e| e.into_inner()));
    existed.sort_unstable();
    Ok(Preload {
        accounts: cfg.accounts,
        created: created.load(Ordering::Relaxed),
        existed,
        failed: left.len() as u64,
        elapsed: t.elapsed(),
    })
}

fn other_code(r: &Result<OpOut, Code>) -> Option<Code> {
    match r {
        Ok(OpOut::Error(e)) => Some(Code::from_i32(e.code)),
        Err(c) => Some(*c),
        _ => None,
    }
}

fn name_is_retryable(c: Option<Code>) -> bool {
    matches!(
        c,
        Some(Code::ResourceExhausted | Code::DeadlineExceeded | Code::Unavailable)
    )
}

fn main_balance(b: &pb::BalanceResponse) -> Option<i64> {
    b.buckets
        .iter()
        .find(|x| x.bucket_id == 1)
        .map(|x| x.balance)
}

/// Main money bucket balances of `ids` (for accounts that existed before).
pub async fn read_balances(
    channels: &[Channel],
    cfg: &WorkCfg,
    ids: Vec<u64>,
) -> anyhow::Result<HashMap<u64, i64>> {
    let out = Arc::new(Mutex::new(HashMap::new()));
    let o2 = out.clone();
    let prefix = cfg.prefix.clone();
    batched(
        Target::Charging,
        channels,
        ids,
        Bulk {
            batch: 1000,
            pipeline: 16,
            passes: 12,
        },
        move |id| {
            OpKind::Balance(pb::BalanceRequest {
                account_id: format!("{prefix}-{id}"),
            })
        },
        move |id, r| match r {
            Ok(OpOut::Balance(b)) if charging_client::is_ok(b.result) => {
                if let Some(v) = main_balance(&b) {
                    o2.lock().unwrap_or_else(|e| e.into_inner()).insert(id, v);
                }
                false
            }
            r => name_is_retryable(other_code(&r)),
        },
    )
    .await?;
    let m = std::mem::take(&mut *out.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(m)
}

/// The correctness check's findings.
#[derive(Debug, Clone, Default)]
pub struct Verify {
    /// Accounts read back and compared.
    pub checked: u64,
    /// Sum over them of |actual − expected| main money balance.
    pub drift: i64,
    pub mismatched: u64,
    /// Touched accounts with an op of unknown outcome: not compared.
    pub unverified: u64,
    /// Accounts that could not be read.
    pub unread: u64,
    pub open_reservations: u64,
    pub examples: Vec<String>,
    pub elapsed: Duration,
}

/// Reads back every touched account and compares its main money bucket with
/// base + the acknowledged charges, top-ups and refunds.
pub async fn verify(
    channels: &[Channel],
    cfg: &WorkCfg,
    expect: Arc<Expect>,
    initial_balance: i64,
    base: Arc<HashMap<u64, i64>>,
) -> anyhow::Result<Verify> {
    let t = Instant::now();
    let (ids, unverified) = expect.touched();
    let checked = Arc::new(AtomicU64::new(0));
    let drift = Arc::new(AtomicI64::new(0));
    let mismatched = Arc::new(AtomicU64::new(0));
    let open = Arc::new(AtomicU64::new(0));
    let examples = Arc::new(Mutex::new(Vec::new()));
    let prefix = cfg.prefix.clone();
    let (c2, d2, m2, o2, x2, p2) = (
        checked.clone(),
        drift.clone(),
        mismatched.clone(),
        open.clone(),
        examples.clone(),
        prefix.clone(),
    );
    let left = batched(
        Target::Charging,
        channels,
        ids,
        Bulk {
            batch: 1000,
            pipeline: 16,
            passes: 12,
        },
        move |id| {
            OpKind::Balance(pb::BalanceRequest {
                account_id: format!("{prefix}-{id}"),
            })
        },
        move |id, r| match r {
            Ok(OpOut::Balance(b)) if charging_client::is_ok(b.result) => {
                let start = base.get(&id).copied().unwrap_or(initial_balance);
                let want = start + expect.delta(id);
                let got = main_balance(&b).unwrap_or(0);
                c2.fetch_add(1, Ordering::Relaxed);
                o2.fetch_add(b.open_reservations as u64, Ordering::Relaxed);
                if got != want {
                    d2.fetch_add((got - want).abs(), Ordering::Relaxed);
                    m2.fetch_add(1, Ordering::Relaxed);
                    let mut x = x2.lock().unwrap_or_else(|e| e.into_inner());
                    if x.len() < 5 {
                        x.push(format!("{p2}-{id}: balance {got}, expected {want}"));
                    }
                }
                false
            }
            r => name_is_retryable(other_code(&r)),
        },
    )
    .await?;
    let examples = std::mem::take(&mut *examples.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Verify {
        checked: checked.load(Ordering::Relaxed),
        drift: drift.load(Ordering::Relaxed),
        mismatched: mismatched.load(Ordering::Relaxed),
        unverified,
        unread: left.len() as u64,
        open_reservations: open.load(Ordering::Relaxed),
        examples,
        elapsed: t.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_v7_is_a_v7_uuid_and_stable() {
        let a = stable_v7(1_700_000_000_000, 0xabc, 42);
        let u = uuid::Uuid::from_slice(&a).unwrap();
        assert_eq!(u.get_version_num(), 7);
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
        let (secs, _) = u.get_timestamp().unwrap().to_unix();
        assert_eq!(secs, 1_700_000_000);
        assert_eq!(a, stable_v7(1_700_000_000_000, 0xabc, 42));
        assert_ne!(a, stable_v7(1_700_000_000_000, 0xabc, 43));
    }
}
