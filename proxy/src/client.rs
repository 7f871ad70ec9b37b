//! The pooled HTTP/1.1 clients for forwarded requests, plain and TLS. Their
//! connector is the only way they reach the network: resolve, guard, dial
//! the checked address ([`crate::upstream::dial`]), for TLS verify the
//! server's certificate for the host, and tag the connection with the
//! address so every response can say which IP served it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::exchange::Metered;
use crate::host::{Host, HostPort};
use crate::policy::Policy;
use crate::upstream::{self, DialTimeouts, UpstreamError};

/// How long an idle upstream connection is kept; below the 60 s keep-alive
/// timeout of common servers (nginx: 75 s) so we close first.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

pub type UpstreamClient = Client<GuardedConnector, Metered<hyper::body::Incoming>>;

/// The address an upstream connection was dialled to, found in the
/// extensions of every response that came over it.
#[derive(Debug, Clone, Copy)]
pub struct Dialed(pub SocketAddr);

/// `max_idle_per_host` should be the client connection limit: a host cannot
/// have more requests in flight than that, and a smaller cap closes and
/// re-dials upstream connections under load (measured: a cap of 32 with 64
/// busy clients spent ~10% of the proxy's CPU in connect and close).
///
/// With `tls`, every connection is TLS verified against that configuration's
/// roots for the request's host (used for intercepted HTTPS).
pub fn build(
    policy: Arc<Policy>,
    timeouts: DialTimeouts,
    max_idle_per_host: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
    open: Arc<OpenUpstreams>,
) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .set_host(false)
        .build(GuardedConnector {
            policy,
            timeouts,
            tls: tls.map(TlsConnector::from),
            open,
        })
}

/// Counts upstream connections open for forwarded requests. The pool keeps
/// one idle connection per host for its idle timeout, so an agent touching
/// thousands of hosts under a wildcard rule would hold thousands of
/// descriptors (measured: 10,000 hosts, 7,600 fds, 260 MiB). Past the budget,
/// connections are closed after their request instead of pooled.
#[derive(Debug)]
pub struct OpenUpstreams {
    open: AtomicUsize,
    budget: usize,
}

impl OpenUpstreams {
    pub fn new(budget: usize) -> OpenUpstreams {
        OpenUpstreams {
            open: AtomicUsize::new(0),
            budget,
        }
    }

    pub fn spent(&self) -> bool {
        self.open.load(Ordering::Relaxed) >= self.budget
    }
}

/// One open upstream connection, counted until it closes.
struct OpenSlot(Arc<OpenUpstreams>);

impl OpenSlot {
    fn take(open: &Arc<OpenUpstreams>) -> OpenSlot {
        open.open.fetch_add(1, Ordering::Relaxed);
        OpenSlot(open.clone())
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An error and its causes on one line: hyper-util's own message
/// ("client error (Connect)") says nothing about what went wrong.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Finds our dial error behind the client's error, if that is what failed.
pub fn upstream_error<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e UpstreamError> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<UpstreamError>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

#[derive(Clone)]
pub struct GuardedConnector {
    policy: Arc<Policy>,
    timeouts: DialTimeouts,
    tls: Option<TlsConnector>,
    open: Arc<OpenUpstreams>,
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = UpstreamIo;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let policy = self.policy.clone();
        let timeouts = self.timeouts;
        let tls = self.tls.clone();
        let open = self.open.clone();
        Box::pin(async move {
            let default_port = if tls.is_some() { 443 } else { 80 };
            let target = uri
                .authority()
                .ok_or_else(|| "no authority".to_owned())
                .and_then(|a| HostPort::from_authority(a, default_port).map_err(|e| e.to_string()))
                .map_err(|detail| UpstreamError::Resolve {
                    host: uri.to_string(),
                    detail,
                })?;
            let (stream, dialed) = upstream::dial(&policy, &target, timeouts).await?;
            let io = match tls {
                None => Stream::Plain(TokioIo::new(stream)),
                Some(tls) => Stream::Tls(Box::new(TokioIo::new(
                    handshake(&tls, &target, stream, dialed, timeouts.connect).await?,
                ))),
            };
            Ok(UpstreamIo {
                io,
                dialed,
                _slot: OpenSlot::take(&open),
            })
        })
    }
}

/// Verifies the upstream's certificate for the target host: an upstream
/// with a certificate we cannot verify is refused, never trusted.
async fn handshake(
    tls: &TlsConnector,
    target: &HostPort,
    stream: TcpStream,
    dialed: SocketAddr,
    timeout: std::time::Duration,
) -> Result<TlsStream<TcpStream>, UpstreamError> {
    let failed = |detail: String| UpstreamError::Tls {
        host: target.host.to_string(),
        addr: dialed,
        detail,
    };
    let name = match &target.host {
        Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        Host::Name(name) => {
            ServerName::try_from(name.as_str().to_owned()).map_err(|e| failed(e.to_string()))?
        }
    };
    match tokio::time::timeout(timeout, tls.connect(name, stream)).await {
        Ok(result) => result.map_err(|e| failed(e.to_string())),
        Err(_) => Err(failed(format!("no TLS handshake within {timeout:?}"))),
    }
}

/// A dialled upstream connection that remembers its address.
pub struct UpstreamIo {
    io: Stream,
    dialed: SocketAddr,
    _slot: OpenSlot,
}

enum Stream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

/// Delegates a hyper I/O call to whichever stream this is.
macro_rules! on_stream {
    ($self:ident, $io:ident => $call:expr) => {
        match &mut $self.io {
            Stream::Plain($io) => $call,
            Stream::Tls(tls) => {
                let $io = tls.as_mut();
                $call
            }
        }
    };
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        Connected::new().extra(Dialed(self.dialed))
    }
}

impl Read for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        on_stream!(self, io => Pin::new(io).poll_read(cx, buf))
    }
}

impl Write for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self, io => Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, io => Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_stream!(self, io => Pin::new(io).poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Stream::Plain(io) => io.is_write_vectored(),
            Stream::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        on_stream!(self, io => Pin::new(io).poll_write_vectored(cx, bufs))
    }
}
