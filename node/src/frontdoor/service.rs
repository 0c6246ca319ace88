//! tonic glue: the `Charging` service, unary calls and the batch stream.
use super::{convert, validate, FrontDoor, FORWARDED, ONLY_SHARD};
use crate::error::Error;
use crate::ledger::Request as Req;
use crate::raft::ShardId;
use crate::shard::Outcome;
use charging_proto::v1 as pb;
use charging_proto::v1::charging_server::Charging;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

#[path = "bulk.rs"]
mod bulk;

/// Most operations in one stream message.
pub const MAX_OPS_PER_BATCH: usize = 4096;

#[derive(Clone)]
pub struct ChargingService(pub Arc<FrontDoor>);

fn forwarded<T>(r: &Request<T>) -> bool {
    r.metadata().contains_key(FORWARDED)
}

fn op_error(s: Status) -> pb::op_result::Result {
    pb::op_result::Result::Error(pb::OpError {
        code: s.code() as i32,
        message: s.message().to_string(),
        leader_hint: s
            .metadata()
            .get(super::LEADER_NODE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}

async fn run_op(fd: &FrontDoor, op: pb::Op) -> pb::OpResult {
    use pb::op::Op as O;
    use pb::op_result::Result as R;
    let id = op.correlation_id;
    let result = match op.op {
        None => Err(Status::from(Error::InvalidArgument("op: missing".into()))),
        Some(O::Reserve(m)) => fd.reserve(m, false).await.map(R::Reserve),
        Some(O::Update(m)) => fd.update(m, false).await.map(R::Update),
        Some(O::Terminate(m)) => fd.terminate(m, false).await.map(R::Terminate),
        Some(O::Commit(m)) => fd.commit(m, false).await.map(R::Commit),
        Some(O::Release(m)) => fd.release(m, false).await.map(R::Release),
        Some(O::Refund(m)) => fd.refund(m, false).await.map(R::Refund),
        Some(O::Debit(m)) => fd.debit(m, false).await.map(R::Debit),
        Some(O::TopUp(m)) => fd.top_up(m, false).await.map(R::TopUp),
        Some(O::Balance(m)) => fd.balance(m, false).await.map(R::Balance),
        Some(O::CreateAccount(m)) => fd.create_account(m, false).await.map(R::CreateAccount),
    };
    pb::OpResult {
        correlation_id: id,
        result: Some(result.unwrap_or_else(op_error)),
    }
}

/// The mutating operations a stream batch sends to local shard actors in
/// one message per shard: how each is validated and answered (the same
/// functions as its unary call).
macro_rules! batched_ops {
    ($( $variant:ident => $op:literal, $validate:path, $convert:path; )*) => {
        #[derive(Clone, Copy)]
        enum Kind { $($variant,)* }

        /// `None`: not batched (balance, a missing op): the op takes the unary path.
        fn prepare(op: &pb::op::Op) -> Option<Result<(Kind, Req), Status>> {
            use pb::op::Op as O;
            match op {
                $(O::$variant(m) => Some($validate(m).map(|(account, request_id, cmd)| {
                    (Kind::$variant, Req { account, request_id, cmd })
                })),)*
                _ => None,
            }
        }

        fn respond(
            fd: &FrontDoor,
            kind: Kind,
            started: tokio::time::Instant,
            outcome: Outcome,
        ) -> pb::op_result::Result {
            use pb::op_result::Result as R;
            let r = match kind {
                $(Kind::$variant => fd.finish($op, started, outcome, $convert).map(R::$variant),)*
            };
            r.unwrap_or_else(op_error)
        }
    };
}

batched_ops! {
    Reserve => "reserve", validate::reserve, convert::reserve;
    Update => "update", validate::update, convert::update;
    Terminate => "terminate", validate::terminate, convert::terminate;
    Commit => "commit", validate::commit, convert::commit;
    Release => "release", validate::release, convert::release;
    Refund => "refund", validate::refund, convert::refund;
    Debit => "debit", validate::debit, convert::debit;
    TopUp => "top_up", validate::top_up, convert::top_up;
    CreateAccount => "create_account", validate::create_account, convert::create_account;
}

/// One stream message: its mutating operations on shards this node leads
/// go to each shard's actor in one message (one sink, one deadline, one
/// admission check per shard); the rest (balances, shards led elsewhere,
/// which forward) run one by one as unary calls do. Results carry their
/// correlation ids: the batched ones first, in batch order, then the rest.
async fn run_batch(fd: &FrontDoor, ops: Vec<pb::Op>) -> Vec<pb::OpResult> {
    let started = tokio::time::Instant::now();
    let mut results: Vec<Option<pb::op_result::Result>> = (0..ops.len()).map(|_| None).collect();
    let mut by_shard: BTreeMap<ShardId, Vec<(usize, Kind, Req)>> = BTreeMap::new();
    let mut unary: Vec<usize> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op.op.as_ref().and_then(prepare) {
            Some(Ok((kind, req))) => {
                if let Err(e) = fd.check_request_time(req.request_id) {
                    results[i] = Some(op_error(e));
                    continue;
                }
                let shard = fd.shard_id(&req.account);
                if fd.hosted.contains_key(&shard) {
                    by_shard.entry(shard).or_default().push((i, kind, req));
                } else {
                    unary.push(i);
                }
            }
            Some(Err(status)) => results[i] = Some(op_error(status)),
            None => unary.push(i),
        }
    }
    let batches = by_shard.into_iter().map(|(shard, items)| async move {
        let (meta, reqs): (Vec<(usize, Kind)>, Vec<Req>) =
            items.into_iter().map(|(i, k, r)| ((i, k), r)).unzip();
        let outcomes = fd.submit_batch(shard, reqs).await;
        (meta, outcomes)
    });
    for (meta, outcomes) in futures::future::join_all(batches).await {
        let Some(outcomes) = outcomes else {
            // The replica went away meanwhile: these take the unary path.
            unary.extend(meta.iter().map(|(i, _)| *i));
            continue;
        };
        for ((i, kind), outcome) in meta.into_iter().zip(outcomes) {
            match outcome {
                // Led elsewhere now: the unary path forwards it (the same
                // request id, so a retry is safe).
                Outcome::NotLeader { leader } if leader != Some(fd.node) => unary.push(i),
                Outcome::NotLeader { .. } => {
                    results[i] = Some(respond(
                        fd,
                        kind,
                        started,
                        Outcome::Unknown("leader is changing"),
                    ))
                }
                o => results[i] = Some(respond(fd, kind, started, o)),
            }
        }
    }
    let mut ops: Vec<Option<pb::Op>> = ops.into_iter().map(Some).collect();
    let rest: Vec<(usize, pb::OpResult)> = unary
        .into_iter()
        .filter_map(|i| ops[i].take().map(|op| (i, op)))
        .map(|(i, op)| async move { (i, run_op(fd, op).await) })
        .collect::<FuturesUnordered<_>>()
        .collect()
        .await;
    let mut out: Vec<pb::OpResult> = ops
        .iter()
        .zip(results)
        .filter_map(|(op, r)| Some((op.as_ref()?.correlation_id, r?)))
        .map(|(correlation_id, r)| pb::OpResult {
            correlation_id,
            result: Some(r),
        })
        .collect();
    out.extend(rest.into_iter().map(|(_, r)| r));
    out
}

type ResultStream = Pin<Box<dyn futures::Stream<Item = Result<pb::OpResultBatch, Status>> + Send>>;

#[tonic::async_trait]
impl Charging for ChargingService {
    async fn create_account(
        &self,
        r: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::CreateAccountResponse>, Status> {
        let f = forwarded(&r);
        self.0
            .create_account(r.into_inner(), f)
            .await
            .map(Response::new)
    }

    async fn add_bucket(
        &self,
        r: Request<pb::AddBucketRequest>,
    ) -> Result<Response<pb::AddBucketResponse>, Status> {
        let f = forwarded(&r);
        self.0
            .add_bucket(r.into_inner(), f)
            .await
            .map(Response::new)
    }

    async fn top_up(
        &self,
        r: Request<pb::TopUpRequest>,
    ) -> Result<Response<pb::TopUpResponse>, Status> {
        let f = forwarded(&r);
        self.0.top_up(r.into_inner(), f).await.map(Response::new)
    }

    async fn reserve(
        &self,
        r: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let f = forwarded(&r);
        self.0.reserve(r.into_inner(), f).await.map(Response::new)
    }

    async fn update(
        &self,
        r: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        let f = forwarded(&r);
        self.0.update(r.into_inner(), f).await.map(Response::new)
    }

    async fn terminate(
        &self,
        r: Request<pb::TerminateRequest>,
    ) -> Result<Response<pb::TerminateResponse>, Status> {
        let f = forwarded(&r);
        self.0.terminate(r.into_inner(), f).await.map(Response::new)
    }

    async fn commit(
        &self,
        r: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let f = forwarded(&r);
        self.0.commit(r.into_inner(), f).await.map(Response::new)
    }

    async fn release(
        &self,
        r: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let f = forwarded(&r);
        self.0.release(r.into_inner(), f).await.map(Response::new)
    }

    async fn refund(
        &self,
        r: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
        let f = forwarded(&r);
        self.0.refund(r.into_inner(), f).await.map(Response::new)
    }

    async fn debit(
        &self,
        r: Request<pb::DebitRequest>,
    ) -> Result<Response<pb::DebitResponse>, Status> {
        let f = forwarded(&r);
        self.0.debit(r.into_inner(), f).await.map(Response::new)
    }

    async fn balance(
        &self,
        r: Request<pb::BalanceRequest>,
    ) -> Result<Response<pb::BalanceResponse>, Status> {
        let f = forwarded(&r);
        self.0.balance(r.into_inner(), f).await.map(Response::new)
    }

    async fn set_account_state(
        &self,
        r: Request<pb::SetAccountStateRequest>,
    ) -> Result<Response<pb::SetAccountStateResponse>, Status> {
        let f = forwarded(&r);
        self.0
            .set_account_state(r.into_inner(), f)
            .await
            .map(Response::new)
    }

    async fn set_tariff(
        &self,
        r: Request<pb::SetTariffRequest>,
    ) -> Result<Response<pb::SetTariffResponse>, Status> {
        let only = r
            .metadata()
            .get(ONLY_SHARD)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        self.0
            .set_tariff(r.into_inner(), only)
            .await
            .map(Response::new)
    }

    async fn get_tariffs(
        &self,
        _r: Request<pb::GetTariffsRequest>,
    ) -> Result<Response<pb::GetTariffsResponse>, Status> {
        let _permit = self.0.admit()?;
        // Every shard holds the same tariffs; any hosted shard's applied
        // view answers.
        let Some(tariffs) = self
            .0
            .hosted
            .iter()
            .next()
            .map(|h| h.store.read(|s| s.tariffs.clone()))
        else {
            return Err(Status::from(Error::unavailable(
                "this node hosts no shard yet; ask another node",
            )));
        };
        Ok(Response::new(pb::GetTariffsResponse {
            tariffs: tariffs.values().map(convert::tariff).collect(),
        }))
    }

    async fn bulk_create_accounts(
        &self,
        r: Request<pb::BulkCreateAccountsRequest>,
    ) -> Result<Response<pb::BulkCreateAccountsResponse>, Status> {
        let f = forwarded(&r);
        let _permits = self.0.admit_heavy("bulk_create_accounts")?;
        bulk::bulk_create(&self.0, r.into_inner(), f)
            .await
            .map(Response::new)
    }

    type StreamStream = ResultStream;

    /// Each incoming message is a batch; its operations run concurrently and
    /// its results go back as one message. At most
    /// `stream_batches_inflight_max` batches of a stream are worked on at
    /// once; beyond that the stream is not read (HTTP/2 flow control pushes
    /// back). Each batch holds its size of the node's stream byte budget
    /// while worked on; a batch over it is answered `RESOURCE_EXHAUSTED` for
    /// every operation. A message that does not decode ends the stream with
    /// the status any call would get (see `listener::rewrite_decode_failure`).
    async fn stream(
        &self,
        r: Request<Streaming<pb::OpBatch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut input = r.into_inner();
        let fd = self.0.clone();
        let depth = fd.limits.stream_batches_inflight_max;
        let (tx, rx) = mpsc::channel(depth);
        tokio::spawn(async move {
            let mut running = FuturesUnordered::new();
            // Why the stream ends early, sent after the results of the
            // batches accepted before it (they may have been applied).
            let mut end: Option<Status> = None;
            loop {
                tokio::select! {
                    msg = input.next(), if running.len() < depth => {
                        match msg {
                            Some(Ok(batch)) => {
                                if batch.ops.len() > MAX_OPS_PER_BATCH {
                                    end = Some(Error::invalid(
                                        "ops",
                                        format!("more than {MAX_OPS_PER_BATCH} in one batch"),
                                    )
                                    .into());
                                    break;
                                }
                                let fd = fd.clone();
                                let held = fd.admit_stream_bytes(prost::Message::encoded_len(&batch));
                                running.push(async move {
                                    let Some(_held) = held else {
                                        return refused(batch.ops);
                                    };
                                    pb::OpResultBatch { results: run_batch(&fd, batch.ops).await }
                                });
                            }
                            Some(Err(s)) => {
                                end = Some(crate::listener::rewrite_decode_failure(s));
                                break;
                            }
                            None => break,
                        }
                    }
                    Some(done) = running.next(), if !running.is_empty() => {
                        if tx.send(Ok(done)).await.is_err() { return; }
                    }
                }
            }
            while let Some(done) = running.next().await {
                if tx.send(Ok(done)).await.is_err() {
                    return;
                }
            }
            if let Some(s) = end {
                let _ = tx.send(Err(s)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Every operation of a batch refused: the node's stream byte budget is
/// spent. Nothing was applied; back off and retry.
fn refused(ops: Vec<pb::Op>) -> pb::OpResultBatch {
    let s: Status = Error::Overloaded(
        "node at its in-flight stream bytes limit (stream_bytes_inflight_max); back off and retry"
            .into(),
    )
    .into();
    pb::OpResultBatch {
        results: ops
            .into_iter()
            .map(|op| pb::OpResult {
                correlation_id: op.correlation_id,
                result: Some(op_error(s.clone())),
            })
            .collect(),
    }
}
