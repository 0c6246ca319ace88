//! The `--baseline echo` server: a bare tonic service with the same messages
//! as the charging API, answering every op with a canned OK at once. It runs
//! on its own tokio runtime in its own thread, like a separate server would.

use crate::echo_pb::echo_server::{Echo, EchoServer as EchoSvc};
use charging_client::proto as pb;
use pb::op::Op as K;
use pb::op_result::Result as R;
use std::net::SocketAddr;
use std::pin::Pin;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

const OK: i32 = pb::ResultCode::Ok as i32;

/// The canned answer to one op.
pub fn answer(op: Option<K>) -> R {
    match op {
        Some(K::Reserve(r)) => R::Reserve(pb::ReserveResponse {
            result: OK,
            reservation_id: r.seq.max(1),
            granted: r.requested,
            final_units: false,
            expires_at_ms: 0,
        }),
        Some(K::Update(u)) => R::Update(pb::UpdateResponse {
            result: OK,
            grants: u
                .reports
                .iter()
                .map(|r| pb::Grant {
                    rating_group: r.rating_group,
                    result: OK,
                    reservation_id: 1,
                    granted: r.requested,
                    ..Default::default()
                })
                .collect(),
            charged: 0,
            debt: 0,
        }),
        Some(K::Terminate(_)) => R::Terminate(pb::TerminateResponse {
            result: OK,
            ..Default::default()
        }),
        Some(K::Commit(_)) => R::Commit(pb::CommitResponse {
            result: OK,
            ..Default::default()
        }),
        Some(K::Release(_)) => R::Release(pb::ReleaseResponse { result: OK }),
        Some(K::Refund(r)) => R::Refund(pb::RefundResponse {
            result: OK,
            refunded_total: r.amount,
        }),
        Some(K::Debit(_)) => R::Debit(pb::DebitResponse {
            result: OK,
            charged: 0,
        }),
        Some(K::TopUp(t)) => R::TopUp(pb::TopUpResponse {
            result: OK,
            balance: t.amount,
        }),
        Some(K::Balance(_)) => R::Balance(pb::BalanceResponse {
            result: OK,
            ..Default::default()
        }),
        Some(K::CreateAccount(_)) => R::CreateAccount(pb::CreateAccountResponse {
            result: OK,
            version: 1,
        }),
        None => R::Error(pb::OpError {
            code: tonic::Code::InvalidArgument as i32,
            message: "op: missing".into(),
            leader_hint: 0,
        }),
    }
}

struct Svc;

type ResultStream = Pin<Box<dyn Stream<Item = Result<pb::OpResultBatch, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Svc {
    async fn unary(&self, r: Request<pb::Op>) -> Result<Response<pb::OpResult>, Status> {
        let op = r.into_inner();
        Ok(Response::new(pb::OpResult {
            correlation_id: op.correlation_id,
            result: Some(answer(op.op)),
        }))
    }

    type StreamStream = ResultStream;

    async fn stream(
        &self,
        r: Request<Streaming<pb::OpBatch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut input = r.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(Ok(batch)) = input.next().await {
                let results = batch
                    .ops
                    .into_iter()
                    .map(|op| pb::OpResult {
                        correlation_id: op.correlation_id,
                        result: Some(answer(op.op)),
                    })
                    .collect();
                if tx.send(Ok(pb::OpResultBatch { results })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A running echo server; stops when dropped.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    /// Starts on 127.0.0.1:0 with `threads` runtime workers (0 = one per core).
    pub fn start(threads: usize) -> anyhow::Result<EchoServer> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if threads > 0 {
            b.worker_threads(threads);
        }
        let rt = b.enable_all().thread_name("echo").build()?;
        let thread = std::thread::Builder::new()
            .name("echo-server".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                        return;
                    };
                    // tonic's tcp_nodelay covers only listeners it binds:
                    // set it per connection, as the nodes do.
                    let incoming = futures::StreamExt::map(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        |s| s.and_then(|s| s.set_nodelay(true).map(|_| s)),
                    );
                    let _ = tonic::transport::Server::builder()
                        .initial_connection_window_size(Some(8 << 20))
                        .initial_stream_window_size(Some(4 << 20))
                        .add_service(EchoSvc::new(Svc).max_decoding_message_size(256 << 20))
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stop_rx.await;
                        })
                        .await;
                });
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
            })?;
        Ok(EchoServer {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // Not joined: a graceful shutdown waits for clients to hang up, and
        // the thread ends by itself once they have.
        drop(self.thread.take());
    }
}
