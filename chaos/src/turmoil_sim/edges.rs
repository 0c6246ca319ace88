//! The node's injected edges over turmoil: its network and its clock.
use super::*;

/// A turmoil TCP stream as a server connection.
pub struct SimIo(turmoil::net::TcpStream);

impl AsyncRead for SimIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for SimIo {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

pub(super) type SimIncoming = Pin<Box<dyn futures::Stream<Item = std::io::Result<SimIo>> + Send>>;

pub(super) fn incoming(l: turmoil::net::TcpListener) -> SimIncoming {
    Box::pin(futures::stream::unfold(l, |l| async move {
        let r = l.accept().await.map(|(s, _)| SimIo(s));
        Some((r, l))
    }))
}

/// A lazily connected channel over turmoil TCP to `addr` (`host:port`).
pub fn sim_channel(addr: &str, connect_timeout: Duration) -> Result<Channel, String> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(connect_timeout)
        // As the real connector (raft::network::TcpConnector): a dead peer's
        // half-open connection is noticed.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(ep.connect_with_connector_lazy(tower::service_fn(
        |uri: tonic::codegen::http::Uri| async move {
            let authority = uri.authority().map(|a| a.to_string()).unwrap_or_default();
            let s = turmoil::net::TcpStream::connect(authority).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
        },
    )))
}

pub(super) struct SimConnector;

impl Connector for SimConnector {
    fn channel(&self, addr: &str) -> Result<Channel, String> {
        sim_channel(addr, Duration::from_millis(500))
    }
}

/// Simulated wall clock of one node: simulated time plus its offset (the
/// nemesis jumps it within the clock bound).
#[derive(Clone, Default)]
pub struct SimClock {
    pub(super) offset_ms: Arc<AtomicI64>,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        let e = turmoil::sim_elapsed().unwrap_or_default().as_millis() as i64;
        (T0_MS as i64 + e + self.offset_ms.load(Ordering::SeqCst)) as u64
    }
}
