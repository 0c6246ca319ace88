//! What every gRPC listener of a node shares: its HTTP/2 settings, a cap on
//! open connections, an idle timeout, and the rewriting of tonic's decode
//! failures into the statuses the API promises.
//!
//! [`server`] builds a `tonic` server from a [`ListenerLimits`]; [`capped`]
//! wraps a listener's connection stream; [`MalformedLayer`] goes on the
//! public server so that a message that does not decode is
//! `INVALID_ARGUMENT` naming the field, and one over the size limit is
//! `RESOURCE_EXHAUSTED` (tonic says `INTERNAL` and `OUT_OF_RANGE`).
use crate::config::ListenerLimits;
use crate::maps::DashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::{Code, Status};

/// A `tonic` server with a listener's HTTP/2 limits.
pub fn server(l: &ListenerLimits) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(l.streams_per_connection_max)
        .http2_max_pending_accept_reset_streams(Some(l.resets_pending_max))
        .http2_max_local_error_reset_streams(Some(l.local_resets_max))
        .http2_keepalive_interval(l.keepalive_interval)
        .http2_keepalive_timeout(Some(l.keepalive_timeout))
}

// ---- connection cap and idle timeout ---------------------------------------

/// Per-connection activity, shared by the connection's I/O (which closes it
/// when idle) and [`MalformedLayer`]'s service (which sees its requests).
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// When the last request started or ended, in ms since `epoch`.
    last_ms: AtomicU64,
    epoch: Instant,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// The open connections of one listener, by peer address (the key the
/// request path can see: tonic puts the connection's info in each
/// request's extensions).
#[derive(Clone, Default)]
pub struct Connections(Arc<DashMap<SocketAddr, Arc<Activity>>>);

impl Connections {
    /// Counts a request on its connection until the guard drops.
    fn begin(&self, ext: &http::Extensions) -> Option<RequestGuard> {
        if self.0.is_empty() {
            return None;
        }
        // tonic's own lookup: the TCP info, also under TLS (when enabled).
        let mut probe = http::Request::new(());
        *probe.extensions_mut() = ext.clone();
        let addr = tonic::Request::from_http(probe).remote_addr()?;
        let a = self.0.get(&addr)?.clone();
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        a.touch();
        Some(RequestGuard(a))
    }
}

struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A listener's connection stream, capped at `limits.connections_max` open
/// connections: one accepted past the cap is closed at once (metrics
/// `charging_connections_refused_total`, `charging_connections_open`). Connections idle for
/// `limits.idle_timeout` are closed (when the peer address is known, as for
/// TCP; see [`Connections`]).
pub fn capped<I, IO>(
    incoming: I,
    limits: &ListenerLimits,
    listener: &'static str,
    node: u64,
    conns: Connections,
) -> impl futures::Stream<Item = std::io::Result<Conn<IO>>> + Send + Unpin + 'static
where
    I: futures::Stream<Item = std::io::Result<IO>> + Send + Unpin + 'static,
    IO: tonic::transport::server::Connected + Send + 'static,
{
    use futures::StreamExt;
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let idle = limits.idle_timeout;
    let label = crate::metrics_http::label(node);
    let open = metrics::gauge!("charging_connections_open", "node" => label.clone(), "listener" => listener);
    Box::pin(incoming.filter_map(move |io| {
        let r = match io {
            // Out of file descriptors and the like: tonic retries at once,
            // so pause here rather than spin.
            Err(e) => {
                tracing::warn!(listener, error = %e, "accepting a connection failed");
                return futures::future::Either::Left(async move {
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    Some(Err(e))
                });
            }
            Ok(io) => match slots.clone().try_acquire_owned() {
                Err(_) => {
                    metrics::counter!("charging_connections_refused_total", "node" => label.clone(), "listener" => listener)
                        .increment(1);
                    drop(io);
                    None
                }
                Ok(permit) => {
                    let info = io.connect_info();
                    let addr = (&info as &dyn std::any::Any)
                        .downcast_ref::<tonic::transport::server::TcpConnectInfo>()
                        .and_then(|i| i.remote_addr());
                    let activity = match (idle, addr) {
                        (Some(_), Some(addr)) => {
                            let a = Arc::new(Activity {
                                in_flight: AtomicUsize::new(0),
                                last_ms: AtomicU64::new(0),
                                epoch: Instant::now(),
                            });
                            conns.0.insert(addr, a.clone());
                            Some((addr, a))
                        }
                        _ => None,
                    };
                    let timer = match (idle, &activity) {
                        (Some(d), Some(_)) => Some(Box::pin(tokio::time::sleep(d))),
                        _ => None,
                    };
                    open.increment(1.0);
                    Some(Ok(Conn {
                        io,
                        _permit: permit,
                        open: open.clone(),
                        idle: activity.map(|(addr, a)| IdleState {
                            addr,
                            activity: a,
                            timeout: idle.unwrap_or_default(),
                            timer: timer.expect("set with activity"),
                            conns: conns.clone(),
                        }),
                    }))
                }
            },
        };
        futures::future::Either::Right(futures::future::ready(r))
    }))
}

/// How long a listener pauses after a failed accept (EMFILE and the like).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

struct IdleState {
    addr: SocketAddr,
    activity: Arc<Activity>,
    timeout: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    conns: Connections,
}

impl IdleState {
    /// `true`: idle past the timeout (close). Otherwise the timer is re-armed
    /// for the earliest moment the connection could become idle.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.timer.as_mut().poll(cx).is_ready() {
            let a = &self.activity;
            let now = a.epoch.elapsed();
            if a.in_flight.load(Ordering::Relaxed) > 0 {
                self.timer.as_mut().reset(Instant::now() + self.timeout);
                continue;
            }
            let last = Duration::from_millis(a.last_ms.load(Ordering::Relaxed));
            let idle_for = now.saturating_sub(last);
            if idle_for >= self.timeout {
                return true;
            }
            self.timer
                .as_mut()
                .reset(Instant::now() + (self.timeout - idle_for));
        }
        false
    }
}

impl Drop for IdleState {
    fn drop(&mut self) {
        let a = &self.activity;
        self.conns.0.remove_if(&self.addr, |_, v| Arc::ptr_eq(v, a));
    }
}

/// One accepted connection: holds its slot under the cap until it closes.
pub struct Conn<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
    /// `charging_connections_open` of the listener.
    open: metrics::Gauge,
    idle: Option<IdleState>,
}

impl<IO> Drop for Conn<IO> {
    fn drop(&mut self) {
        self.open.decrement(1.0);
    }
}

use std::future::Future;

impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(idle) = self.idle.as_mut() {
            if idle.expired(cx) {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection idle past the listener's idle timeout",
                )));
            }
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The connection's own info, unchanged (TLS and `remote_addr` read it).
impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Conn<IO> {
    type ConnectInfo = IO::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

// ---- malformed input --------------------------------------------------------

/// The status a caller should see for one tonic produced while decoding a
/// request: a protobuf decode failure (tonic: `INTERNAL`) is
/// `INVALID_ARGUMENT` naming the field path (`ops.create_account.account_id:
/// invalid string value: data is not UTF-8 encoded`), a message over the size
/// limit (tonic: `OUT_OF_RANGE`) is `RESOURCE_EXHAUSTED`. Any other status is
/// returned as it is.
pub fn rewrite_decode_failure(s: Status) -> Status {
    const DECODE: &str = "failed to decode Protobuf message: ";
    match s.code() {
        Code::Internal if s.message().starts_with(DECODE) => {
            let mut rest = &s.message()[DECODE.len()..];
            // prost lists (message, field) innermost first: `Msg.field: `.
            let mut fields: Vec<&str> = Vec::new();
            while let Some((seg, tail)) = rest.split_once(": ") {
                let Some((msg, field)) = seg.split_once('.') else {
                    break;
                };
                let ident = |x: &str| {
                    !x.is_empty() && x.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                };
                if !ident(msg) || !ident(field) {
                    break;
                }
                fields.push(field);
                rest = tail;
            }
            fields.reverse();
            let path = if fields.is_empty() {
                "message".to_string()
            } else {
                fields.join(".")
            };
            Status::invalid_argument(format!("{path}: {rest}"))
        }
        Code::OutOfRange if s.message().contains("message length too large") => {
            Status::resource_exhausted(format!("message: {}", s.message()))
        }
        _ => s,
    }
}

/// Tower layer of the node's gRPC servers: rewrites decode failures (see
/// [`rewrite_decode_failure`]) in trailers-only responses (how tonic
/// answers a unary request it could not decode), counts each request on
/// its connection for the idle timeout, and holds each request body's bytes
/// against the node's [`RequestBytes`] budget until its response ends.
#[derive(Clone, Default)]
pub struct MalformedLayer {
    pub conns: Connections,
    pub budget: RequestBytes,
}

impl<S> tower::Layer<S> for MalformedLayer {
    type Service = Malformed<S>;
    fn layer(&self, inner: S) -> Malformed<S> {
        Malformed {
            inner,
            conns: self.conns.clone(),
            budget: self.budget.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Malformed<S> {
    inner: S,
    conns: Connections,
    budget: RequestBytes,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The bytes of request bodies the node holds, over every connection and
/// stream (`request_bytes_inflight_max`). `Stream` calls are not counted
/// here: each of their messages is held against the stream budget instead
/// (`FrontDoor::admit_stream_bytes`), since a stream's bytes add up for as
/// long as it is open. `None` (the default): unbounded.
#[derive(Clone, Default)]
pub struct RequestBytes(Option<Arc<Semaphore>>);

/// The one method whose body is a stream of messages (see [`RequestBytes`]).
const STREAM_PATH: &str = "/charging.v1.Charging/Stream";

impl RequestBytes {
    pub fn new(max: usize) -> RequestBytes {
        RequestBytes(Some(Arc::new(Semaphore::new(max))))
    }
}

/// What one request holds of the budget, shared by its body (which adds to
/// it frame by frame) and its response (which keeps it until it ends: the
/// decoded message lives that long).
type Held = Arc<std::sync::Mutex<Option<OwnedSemaphorePermit>>>;

impl<S, B, RB> tower::Service<http::Request<B>> for Malformed<S>
where
    S: tower::Service<http::Request<Budgeted<B>>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: http_body::Body + Send + Unpin + 'static,
{
    type Response = http::Response<Guarded<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = self.conns.begin(req.extensions());
        // Only a budgeted call pays for the shared hold (an allocation).
        let budget = match &self.budget.0 {
            Some(sem) if req.uri().path() != STREAM_PATH => Some((sem.clone(), Held::default())),
            _ => None,
        };
        let held = budget.as_ref().map(|(_, h)| h.clone());
        let req = req.map(|body| Budgeted { body, budget });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            let h = resp.headers_mut();
            if let Some(s) = Status::from_header_map(h) {
                let code = s.code();
                let s = rewrite_decode_failure(s);
                if s.code() != code {
                    h.remove(Status::GRPC_MESSAGE);
                    let _ = s.add_header(h);
                }
            }
            Ok(resp.map(|body| Guarded {
                body,
                _guard: guard,
                _held: held,
            }))
        })
    }
}

/// A request body whose data frames are taken from the node's
/// [`RequestBytes`] budget as they arrive. Past the budget it fails with
/// `RESOURCE_EXHAUSTED`, which tonic answers the call with (it looks for a
/// `Status` in a body error), and the rest of the body is never read.
pub struct Budgeted<B> {
    body: B,
    /// The budget, and what this request holds of it.
    budget: Option<(Arc<Semaphore>, Held)>,
}

impl<B> http_body::Body for Budgeted<B>
where
    B: http_body::Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => f,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let (Some((sem, held)), Some(data)) = (&self.budget, frame.data_ref()) {
            let n = u32::try_from(bytes::Buf::remaining(data)).unwrap_or(u32::MAX);
            match sem.clone().try_acquire_many_owned(n) {
                Ok(p) => {
                    let mut held = held.lock().unwrap_or_else(|e| e.into_inner());
                    match held.as_mut() {
                        Some(h) => h.merge(p),
                        None => *held = Some(p),
                    }
                }
                Err(_) => {
                    return Poll::Ready(Some(Err(Box::new(Status::resource_exhausted(
                        "node at its limit of request bytes in flight \
                         (request_bytes_inflight_max); back off and retry",
                    )))))
                }
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A response body that keeps its request counted on the connection, and
/// its request bytes held, until it ends (a `Stream` call is in flight as
/// long as its responses flow).
pub struct Guarded<B> {
    body: B,
    _guard: Option<RequestGuard>,
    _held: Option<Held>,
}

impl<B: http_body::Body + Unpin> http_body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_failures_name_the_field_path() {
        let s = rewrite_decode_failure(Status::internal(
            "failed to decode Protobuf message: CreateAccountRequest.account_id: \
             Op.create_account: OpBatch.ops: invalid string value: data is not UTF-8 encoded",
        ));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "ops.create_account.account_id: invalid string value: data is not UTF-8 encoded"
        );
        let s = rewrite_decode_failure(Status::internal(
            "failed to decode Protobuf message: invalid varint",
        ));
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "message: invalid varint")
        );
        let s = rewrite_decode_failure(Status::out_of_range(
            "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes",
        ));
        assert_eq!(s.code(), Code::ResourceExhausted);
        // Anything else passes through.
        let s = rewrite_decode_failure(Status::internal("a fault"));
        assert_eq!((s.code(), s.message()), (Code::Internal, "a fault"));
    }
}
