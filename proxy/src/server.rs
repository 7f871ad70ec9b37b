//! The proxy server: listeners, the accept loop with its connection limit,
//! per-connection context, policy generations (swapped on reload), and
//! shutdown that drains connections and then closes every one.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Scheme;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{AuditLog, Kind};
use crate::client::{self, OpenUpstreams, UpstreamClient};
use crate::decision::{Decision, Reason};
use crate::exchange::Exchange;
use crate::forward::{forward, Malformed};
use crate::intercept::Interception;
use crate::policy::Policy;
use crate::respond::{refusal, ProxyBody, Refused};
use crate::upstream::DialTimeouts;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("`{0}` is not a listen address: use IP:PORT (e.g. 127.0.0.1:3128) or unix:PATH")]
    BadListenAddr(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on unix:{0}: a file that is not a socket is in the way; remove it or pick another path")]
    NotASocket(PathBuf),
    #[error("cannot listen on unix:{0}: another process is serving it")]
    SocketInUse(PathBuf),
}

/// Limits and timeouts; the defaults are what `tollgate proxy` uses.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Time a client has to send a request's headers; also how long an idle
    /// keep-alive connection is kept.
    pub header_timeout: Duration,
    /// Tunnels with no byte either way for this long are closed.
    pub tunnel_idle_timeout: Duration,
    /// Time an upstream has to start its response.
    pub response_timeout: Duration,
    pub dial: DialTimeouts,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Request line plus headers, in bytes.
    pub max_header_bytes: usize,
    /// Phase name stamped on audit records and refusals (set by exec/run).
    pub phase: Option<Arc<str>>,
    /// How long shutdown waits for in-flight requests before closing them.
    pub shutdown_grace: Duration,
    /// TLS interception, when a CA is configured.
    pub interception: Option<Interception>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            // hyper's own default, and what nginx uses (client_header_timeout 60s halved).
            header_timeout: Duration::from_secs(30),
            // squid's read_timeout is 15 min; 5 min keeps long downloads alive.
            tunnel_idle_timeout: Duration::from_secs(300),
            // squid's read_timeout is 15 min; a registry that has not started
            // answering in 2 min is gone, and the client deserves a 502.
            response_timeout: Duration::from_secs(120),
            dial: DialTimeouts {
                resolve: Duration::from_secs(5),
                connect: Duration::from_secs(10),
            },
            // Six descriptors per tunnel (sockets and splice pipes): 2400 fds,
            // within the hard open-file limit of common distributions (4096+).
            max_connections: 400,
            // squid's request_header_max_size default.
            max_header_bytes: 64 * 1024,
            phase: None,
            shutdown_grace: Duration::from_secs(5),
            interception: None,
        }
    }
}

/// Where to listen: `IP:PORT` or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = ServerError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ServerError::BadListenAddr(text.to_owned()));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        text.parse()
            .map(ListenAddr::Tcp)
            .map_err(|_| ServerError::BadListenAddr(text.to_owned()))
    }
}

/// A bound listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, UnixPath),
}

/// A socket path we created, removed when the listener goes.
pub struct UnixPath(PathBuf);

impl Drop for UnixPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Listener {
    /// Binds; must run inside a tokio runtime.
    pub fn bind(addr: &ListenAddr) -> Result<Listener, ServerError> {
        match addr {
            ListenAddr::Tcp(socket) => {
                let std =
                    std::net::TcpListener::bind(socket).map_err(|source| ServerError::Bind {
                        addr: socket.to_string(),
                        source,
                    })?;
                Listener::from_std(std)
            }
            ListenAddr::Unix(path) => bind_unix(path),
        }
    }

    /// Adopts a TCP listener bound elsewhere (e.g. inside a sandbox's
    /// network namespace).
    pub fn from_std(listener: std::net::TcpListener) -> Result<Listener, ServerError> {
        let addr = listener
            .local_addr()
            .map_or_else(|_| "tcp".to_owned(), |a| a.to_string());
        let bind_error = |source| ServerError::Bind {
            addr: addr.clone(),
            source,
        };
        listener.set_nonblocking(true).map_err(bind_error)?;
        TcpListener::from_std(listener)
            .map(Listener::Tcp)
            .map_err(bind_error)
    }

    /// What to tell a person: `127.0.0.1:3128` or `unix:/path`.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string()),
            Listener::Unix(_, path) => format!("unix:{}", path.0.display()),
        }
    }
}

fn bind_unix(path: &Path) -> Result<Listener, ServerError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(ServerError::NotASocket(path.to_owned()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::SocketInUse(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
        addr: format!("unix:{}", path.display()),
        source,
    })?;
    Ok(Listener::Unix(listener, UnixPath(path.to_owned())))
}

/// A policy and the upstream clients built for it. Requests load the current
/// generation; a reload swaps it, and connections pooled for the old policy
/// go when its last request does.
pub(crate) struct Generation {
    pub policy: Arc<Policy>,
    http: UpstreamClient,
    https: Option<UpstreamClient>,
    upstream: Arc<OpenUpstreams>,
}

/// The running proxy, shared by every connection.
pub struct Proxy {
    generation: ArcSwap<Generation>,
    upstream: Arc<OpenUpstreams>,
    audit: AuditLog,
    config: ProxyConfig,
    permits: Arc<Semaphore>,
    tasks: TaskTracker,
    /// Stop accepting and finish in-flight requests.
    draining: CancellationToken,
    /// Close everything now.
    closing: CancellationToken,
}

impl Proxy {
    pub fn new(policy: Policy, audit: AuditLog, config: ProxyConfig) -> Arc<Proxy> {
        let upstream = Arc::new(OpenUpstreams::new(config.max_connections));
        let generation = Generation::new(policy, &config, &upstream);
        Arc::new(Proxy {
            generation: ArcSwap::from_pointee(generation),
            upstream,
            audit,
            permits: Arc::new(Semaphore::new(config.max_connections)),
            config,
            tasks: TaskTracker::new(),
            draining: CancellationToken::new(),
            closing: CancellationToken::new(),
        })
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.generation.load().policy.clone()
    }

    /// Enforces `policy` from the next request on.
    pub fn replace_policy(&self, policy: Policy) {
        self.generation.store(Arc::new(Generation::new(
            policy,
            &self.config,
            &self.upstream,
        )));
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Whether TLS interception is available (a CA is configured).
    pub fn intercepts(&self) -> bool {
        self.config.interception.is_some()
    }

    /// Accepts and serves connections until [`Proxy::shutdown`].
    pub async fn serve(self: Arc<Self>, listener: Listener) {
        match listener {
            Listener::Tcp(l) => {
                self.accept_loop(|| async {
                    let (stream, peer) = l.accept().await?;
                    // Without it, a TLS flight written in several pieces (rustls
                    // writes ServerHello and the encrypted handshake apart) waits
                    // for the client's delayed ACK: 40 ms per intercepted handshake.
                    stream.set_nodelay(true)?;
                    Ok((stream, Arc::<str>::from(peer.to_string())))
                })
                .await
            }
            Listener::Unix(l, _path) => {
                self.accept_loop(|| async {
                    l.accept().await.map(|(s, _)| (s, Arc::<str>::from("unix")))
                })
                .await
            }
        }
    }

    /// Stops accepting, gives in-flight exchanges the grace period, then
    /// closes every connection and tunnel and waits for them to go.
    pub async fn shutdown(&self) {
        self.draining.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(self.config.shutdown_grace, self.tasks.wait()).await;
        self.closing.cancel();
        self.tasks.wait().await;
    }

    async fn accept_loop<S, F, Fut>(self: Arc<Self>, mut accept: F)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = io::Result<(S, Arc<str>)>>,
    {
        loop {
            let permit = tokio::select! {
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                () = self.draining.cancelled() => return,
            };
            let accepted = tokio::select! {
                accepted = accept() => accepted,
                () = self.draining.cancelled() => return,
            };
            match accepted {
                Ok((stream, client)) => {
                    let conn = Arc::new(Conn {
                        proxy: self.clone(),
                        client,
                        _permit: permit,
                    });
                    self.tasks.spawn(conn.serve(stream));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

impl Generation {
    fn new(policy: Policy, config: &ProxyConfig, upstream: &Arc<OpenUpstreams>) -> Generation {
        let policy = Arc::new(policy);
        let build = |tls| {
            client::build(
                policy.clone(),
                config.dial,
                config.max_connections,
                tls,
                upstream.clone(),
            )
        };
        Generation {
            http: build(None),
            https: config
                .interception
                .as_ref()
                .map(|i| build(Some(i.upstream_tls.clone()))),
            upstream: upstream.clone(),
            policy,
        }
    }

    /// Whether upstream connections should be closed after use instead of
    /// pooled, because as many are open as the budget allows.
    pub fn upstream_budget_spent(&self) -> bool {
        self.upstream.spent()
    }

    /// The client for forwarding requests of `scheme` (HTTPS only with
    /// interception).
    pub fn client_for(&self, scheme: &Scheme) -> Option<&UpstreamClient> {
        if *scheme == Scheme::HTTPS {
            self.https.as_ref()
        } else {
            Some(&self.http)
        }
    }
}

/// One client connection: who it is, and the proxy it talks to. Tunnels
/// spawned from it hold it (and its connection-limit permit) until they end.
pub(crate) struct Conn {
    proxy: Arc<Proxy>,
    client: Arc<str>,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    async fn serve<S>(self: Arc<Self>, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = &self.proxy.config;
        let conn = self.clone();
        let service = service_fn(move |request| {
            let conn = conn.clone();
            async move { Ok::<_, Infallible>(conn.handle(request).await) }
        });
        let serving = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout)
            .max_header_size(config.max_header_bytes)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(serving);
        let result = tokio::select! {
            result = serving.as_mut() => result,
            () = self.proxy.draining.cancelled() => {
                serving.as_mut().graceful_shutdown();
                tokio::select! {
                    result = serving.as_mut() => result,
                    () = self.proxy.closing.cancelled() => Ok(()),
                }
            }
        };
        if let Err(error) = result {
            self.record_connection_error(&error);
        }
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<ProxyBody> {
        if request.method() == Method::CONNECT {
            crate::connect::connect(&self, request).await
        } else {
            forward(&self, request).await
        }
    }

    /// hyper answers requests it cannot parse itself (400, or 431 for
    /// oversized headers); record them, since they never reach `handle`.
    fn record_connection_error(&self, error: &hyper::Error) {
        let status = if error.is_parse_too_large() {
            431
        } else if error.is_parse() {
            400
        } else {
            tracing::debug!(client = &*self.client, "connection ended: {error}");
            return;
        };
        let mut exchange = self.begin(Kind::Http);
        exchange.decide(&Decision::refuse(Reason::BadRequest));
        exchange.record().status = Some(status);
        tracing::info!(client = &*self.client, "refused malformed request: {error}");
    }

    pub(crate) fn begin(&self, kind: Kind) -> Exchange {
        Exchange::begin(
            &self.proxy.audit,
            self.client.clone(),
            self.proxy.config.phase.clone(),
            kind,
        )
    }

    pub(crate) fn generation(&self) -> Arc<Generation> {
        self.proxy.generation.load_full()
    }

    pub(crate) fn interception(&self) -> Option<&Interception> {
        self.proxy.config.interception.as_ref()
    }

    pub(crate) fn dial_timeouts(&self) -> DialTimeouts {
        self.proxy.config.dial
    }

    pub(crate) fn response_timeout(&self) -> Duration {
        self.proxy.config.response_timeout
    }

    pub(crate) fn first_byte_timeout(&self) -> Duration {
        self.proxy.config.header_timeout
    }

    pub(crate) fn tunnel_idle_timeout(&self) -> Duration {
        self.proxy.config.tunnel_idle_timeout
    }

    /// Cancelled when the proxy closes everything.
    pub(crate) fn stopping(&self) -> CancellationToken {
        self.proxy.closing.clone()
    }

    /// Runs a task that shutdown waits for (tunnels).
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.proxy.tasks.spawn(task);
    }

    /// Answers with the refusal for `decision` and records it.
    pub(crate) fn refuse(
        &self,
        mut exchange: Exchange,
        decision: &Decision,
        described: &str,
    ) -> Response<ProxyBody> {
        exchange.decide(decision);
        let reason = decision.reason().unwrap_or(Reason::BadRequest);
        let response = refusal(
            reason,
            &Refused {
                what: described,
                phase: self.proxy.config.phase.as_deref(),
                id: exchange.id(),
            },
        );
        exchange.record().status = Some(response.status().as_u16());
        response
    }

    pub(crate) fn refuse_malformed(
        &self,
        exchange: Exchange,
        malformed: Malformed,
    ) -> Response<ProxyBody> {
        let (reason, described) = match malformed {
            Malformed::Bad(detail) => (Reason::BadRequest, format!("request ({detail})")),
            Malformed::HostMismatch => (Reason::HostMismatch, "request".to_owned()),
        };
        tracing::info!(
            client = &*self.client,
            id = exchange.id(),
            "{described}: {}",
            reason.explain()
        );
        self.refuse(exchange, &Decision::refuse(reason), &described)
    }
}
