//! tonic glue: the `Charging` service, unary calls and the batch stream.
use super::{convert, FrontDoor, FORWARDED, ONLY_SHARD};
use charging_proto::v1 as pb;
use charging_proto::v1::charging_server::Charging;
use futures::stream::{FuturesUnordered, StreamExt};
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

#[path = "bulk.rs"]
mod bulk;

/// Most operations in one stream message.
pub const MAX_OPS_PER_BATCH: usize = 4096;
/// Stream messages of one stream being worked on at once (pipeline depth).
pub const MAX_BATCHES_IN_FLIGHT_PER_STREAM: usize = 64;

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
        None => Err(Status::invalid_argument("op: missing")),
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
        // Every shard holds the same tariffs; any hosted shard's applied
        // view answers.
        let Some(tariffs) = self
            .0
            .hosted
            .iter()
            .next()
            .map(|h| h.store.read(|s| s.tariffs.clone()))
        else {
            return Err(Status::unavailable(
                "this node hosts no shard yet; ask another node",
            ));
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
        bulk::bulk_create(&self.0, r.into_inner(), f)
            .await
            .map(Response::new)
    }

    type StreamStream = ResultStream;

    /// Each incoming message is a batch; its operations run concurrently and
    /// its results go back as one message. At most
    /// `MAX_BATCHES_IN_FLIGHT_PER_STREAM` batches of a stream are worked on at
    /// once; beyond that the stream is not read (HTTP/2 flow control pushes back).
    async fn stream(
        &self,
        r: Request<Streaming<pb::OpBatch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut input = r.into_inner();
        let fd = self.0.clone();
        let (tx, rx) = mpsc::channel(MAX_BATCHES_IN_FLIGHT_PER_STREAM);
        tokio::spawn(async move {
            let mut running = FuturesUnordered::new();
            loop {
                tokio::select! {
                    msg = input.next(), if running.len() < MAX_BATCHES_IN_FLIGHT_PER_STREAM => {
                        match msg {
                            Some(Ok(batch)) => {
                                if batch.ops.len() > MAX_OPS_PER_BATCH {
                                    let _ = tx.send(Err(Status::invalid_argument("ops: more than 4096 in one batch"))).await;
                                    return;
                                }
                                let fd = fd.clone();
                                running.push(async move {
                                    let results = batch.ops.into_iter().map(|op| run_op(&fd, op)).collect::<FuturesUnordered<_>>().collect::<Vec<_>>().await;
                                    pb::OpResultBatch { results }
                                });
                            }
                            Some(Err(_)) | None => break,
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
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
