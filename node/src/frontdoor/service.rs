//! tonic glue: the `Charging` service, unary calls and the batch stream.
use super::{convert, FrontDoor, Mutation, FORWARDED, ONLY_SHARD};
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

/// From the operation table ([`charging_proto::charging_ops!`]): the
/// stream's arms and the `Charging` methods that only forward (its `serve`
/// column). A `batched` stream op goes to its local shard actor in one
/// message per shard (validated and answered as its unary call is); a
/// `unary` one takes the unary path.
macro_rules! charging_service {
    ($( $(#[doc = $doc:literal])* $op:ident($Req:ident -> $Resp:ident) on $on:tt serve [$($serve:path)?]
        stream [$(batched $B:ident)? $(unary $U:ident)?] client $client:tt decide $decide:tt
        shows $shows:tt; )*) => {
        #[derive(Clone, Copy)]
        enum Kind { $($($B,)?)* }

        /// `None`: not batched (balance, a missing op): the op takes the unary path.
        fn prepare(op: &pb::op::Op) -> Option<Result<(Kind, Req), Status>> {
            use pb::op::Op as O;
            match op {
                $($(O::$B(m) => Some(m.request().map(|req| (Kind::$B, req))),)?)*
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
                $($(Kind::$B => {
                    let op = <pb::$Req as Mutation>::NAME;
                    fd.finish(op, started, outcome, <pb::$Req as Mutation>::response).map(R::$B)
                })?)*
            };
            r.unwrap_or_else(op_error)
        }

        async fn run_op(fd: &FrontDoor, op: pb::Op) -> pb::OpResult {
            use pb::op::Op as O;
            use pb::op_result::Result as R;
            let id = op.correlation_id;
            let result = match op.op {
                None => Err(Status::from(Error::InvalidArgument("op: missing".into()))),
                $($(Some(O::$B(m)) => fd.mutate(m, false).await.map(R::$B),)?)*
                $($(Some(O::$U(m)) => fd.$op(m, false).await.map(R::$U),)?)*
            };
            pb::OpResult {
                correlation_id: id,
                result: Some(result.unwrap_or_else(op_error)),
            }
        }

        /// The `Charging` methods made from the table.
        #[cfg(test)]
        const SERVED: &[(&str, &str)] = &[$($((stringify!($op), stringify!($serve)),)?)*];

        #[tonic::async_trait]
        impl Charging for ChargingService {
            $($(
                async fn $op(&self, r: Request<pb::$Req>) -> Result<Response<pb::$Resp>, Status> {
                    let f = forwarded(&r);
                    $serve(&self.0, r.into_inner(), f).await.map(Response::new)
                }
            )?)*

            async fn set_tariff(
                &self,
                r: Request<pb::SetTariffRequest>,
            ) -> Result<Response<pb::SetTariffResponse>, Status> {
                set_tariff(&self.0, r).await.map(Response::new)
            }

            async fn get_tariffs(
                &self,
                _r: Request<pb::GetTariffsRequest>,
            ) -> Result<Response<pb::GetTariffsResponse>, Status> {
                get_tariffs(&self.0).map(Response::new)
            }

            async fn stream(
                &self,
                r: Request<Streaming<pb::OpBatch>>,
            ) -> Result<Response<ResultStream>, Status> {
                // Checked when the call opened (any role); each operation is
                // checked against its own method's role, and the caller's
                // token goes with what is forwarded (see `auth`).
                let caller = r.extensions().get::<super::auth::Caller>().cloned();
                Ok(Response::new(stream(self.0.clone(), caller, r.into_inner())))
            }
        }
    };
}
charging_proto::charging_ops!(charging_service);

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

/// Sets a tariff: a forwarded call carries the one shard it is for.
async fn set_tariff(
    fd: &FrontDoor,
    r: Request<pb::SetTariffRequest>,
) -> Result<pb::SetTariffResponse, Status> {
    let only = r
        .metadata()
        .get(ONLY_SHARD)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    fd.set_tariff(r.into_inner(), only).await
}

/// Every shard holds the same tariffs; any hosted shard's applied view
/// answers.
fn get_tariffs(fd: &FrontDoor) -> Result<pb::GetTariffsResponse, Status> {
    let _permit = fd.admit()?;
    let Some(tariffs) = fd
        .hosted
        .iter()
        .next()
        .map(|h| h.store.read(|s| s.tariffs.clone()))
    else {
        return Err(Status::from(Error::unavailable(
            "this node hosts no shard yet; ask another node",
        )));
    };
    Ok(pb::GetTariffsResponse {
        tariffs: tariffs.values().map(convert::tariff).collect(),
    })
}

/// Each incoming message is a batch; its operations run concurrently and
/// its results go back as one message. At most `stream_batches_inflight_max`
/// batches of a stream are worked on at once; beyond that the stream is not
/// read (HTTP/2 flow control pushes back). Each batch holds its size of the
/// node's stream byte budget while worked on; a batch over it is answered
/// `RESOURCE_EXHAUSTED` for every operation. A message that does not decode
/// ends the stream with the status any call would get (see
/// `listener::rewrite_decode_failure`).
fn stream(
    fd: Arc<FrontDoor>,
    caller: Option<super::auth::Caller>,
    mut input: Streaming<pb::OpBatch>,
) -> ResultStream {
    let depth = fd.limits.stream_batches_inflight_max;
    let (tx, rx) = mpsc::channel(depth);
    tokio::spawn(super::auth::scoped(caller.clone(), async move {
        let mut running = FuturesUnordered::new();
        // Why the stream ends early, sent after the results of the batches
        // accepted before it (they may have been applied).
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
                            let (ops, denied) = super::auth::screen(caller.as_ref(), batch.ops);
                            running.push(async move {
                                let Some(_held) = held else {
                                    let mut r = refused(ops);
                                    r.results.extend(denied);
                                    return r;
                                };
                                let mut results = run_batch(&fd, ops).await;
                                results.extend(denied);
                                pb::OpResultBatch { results }
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
    }));
    Box::pin(ReceiverStream::new(rx))
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

#[cfg(test)]
mod tests {
    use super::SERVED;

    /// The public services are built with default stubs (a method not
    /// written answers UNIMPLEMENTED), so this is what catches an rpc added
    /// to `charging.proto` without a row that serves it.
    #[test]
    fn every_rpc_of_the_proto_is_served() {
        let proto = include_str!("../../../proto/proto/charging.proto");
        let service = proto
            .split("service Charging {")
            .nth(1)
            .and_then(|s| s.split('}').next())
            .expect("service Charging in charging.proto");
        let mut rpcs: Vec<String> = service
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .map(|l| snake_case(l.split('(').next().unwrap_or_default()))
            .collect();
        // Written by hand in the `Charging` impl.
        let by_hand = ["set_tariff", "get_tariffs", "stream"];
        let mut served: Vec<String> = SERVED
            .iter()
            .map(|(op, _)| op.to_string())
            .chain(by_hand.map(String::from))
            .collect();
        rpcs.sort();
        served.sort();
        assert!(rpcs.len() >= 16, "parsed {rpcs:?}");
        assert_eq!(rpcs, served);
    }

    fn snake_case(camel: &str) -> String {
        let mut out = String::new();
        for (i, c) in camel.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    }
}
