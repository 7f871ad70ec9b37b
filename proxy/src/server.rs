//! The proxy server: the accept loop with its connection limit, one HTTP/1.1
//! connection per client dispatched to CONNECT or forwarding, policy
//! reloads, and shutdown that drains connections and then closes every one.
//!
//! Requests flow top down: server → connect (tunnels) → intercept →
//! forward (one delivery path for plain and intercepted HTTP) → client and
//! upstream (resolve, guard, dial). `context` is what they share; `target`
//! parses request targets and checks Host headers.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use crate::audit::{AuditLog, Kind};
use crate::config::ProxyConfig;
use crate::connect::connect;
use crate::context::{Conn, Shared};
use crate::decision::Reason;
use crate::exchange::Exchange;
use crate::forward::forward;
use crate::listen::Listener;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::respond::ProxyBody;

/// The running proxy, shared by every connection.
pub struct Proxy {
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
}

impl Proxy {
    /// A proxy enforcing `policy`, which may be shared (the phases of a run
    /// that use the same policy share one compiled copy).
    pub fn new(policy: Arc<Policy>, audit: AuditLog, config: ProxyConfig) -> Arc<Proxy> {
        let config = within_this_process_open_files(config);
        let permits = Arc::new(Semaphore::new(config.max_connections));
        Arc::new(Proxy {
            shared: Arc::new(Shared::new(policy, audit, config)),
            permits,
        })
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.shared.generation().policy.clone()
    }

    /// Enforces `policy` from the next request on.
    pub fn replace_policy(&self, policy: Policy) {
        self.shared.replace_policy(Arc::new(policy));
    }

    pub fn audit(&self) -> &AuditLog {
        &self.shared.audit
    }

    /// Where this proxy counts what it does, if anywhere (`--metrics`).
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.shared.config.metrics.as_ref()
    }

    /// Whether TLS interception is available (a CA is configured).
    pub fn intercepts(&self) -> bool {
        self.shared.config.interception.is_some()
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
                    // One client, one name: an IPv4 client of a dual-stack
                    // listener comes as ::ffff:a.b.c.d.
                    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
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
        let shared = &self.shared;
        shared.draining.cancel();
        shared.tasks.close();
        let _ = tokio::time::timeout(shared.config.shutdown_grace, shared.tasks.wait()).await;
        shared.closing.cancel();
        shared.tasks.wait().await;
    }

    /// Records a connection closed because its client holds its cap.
    fn refuse_connection(&self, client: Arc<str>) {
        let shared = &self.shared;
        let mut exchange = Exchange::begin(
            &shared.audit,
            client,
            shared.config.phase.clone(),
            shared.generation().policy.digest().clone(),
            Kind::Http,
        )
        .counted(shared.config.metrics.as_ref());
        exchange.refuse_inside(Reason::TooManyConnections);
        tracing::debug!("closed a connection past its client's cap");
    }

    async fn accept_loop<S, F, Fut>(self: Arc<Self>, mut accept: F)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = io::Result<(S, Arc<str>)>>,
    {
        let draining = &self.shared.draining;
        loop {
            let permit = tokio::select! {
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                () = draining.cancelled() => return,
            };
            let accepted = tokio::select! {
                accepted = accept() => accepted,
                () = draining.cancelled() => return,
            };
            match accepted {
                Ok((stream, client)) => match self.shared.clients.try_take(&client) {
                    Some(slot) => {
                        let conn = Arc::new(Conn::new(self.shared.clone(), client, permit, slot));
                        self.shared.tasks.spawn(serve_connection(conn, stream));
                    }
                    // Closed at once: held, even unread, it would cost the
                    // descriptor the cap is there to save.
                    None => self.refuse_connection(client),
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// `config` within this process's open-file limit (its soft limit, which
/// tollgate raises to the hard one first), saying so when it lowers it.
fn within_this_process_open_files(config: ProxyConfig) -> ProxyConfig {
    use nix::sys::resource::{getrlimit, Resource};
    let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return config;
    };
    let (config, warning) = config.within_open_files(soft);
    if let Some(warning) = warning {
        tracing::warn!("{warning}");
    }
    config
}

/// Serves one client connection's requests until it closes, the proxy
/// drains it, or the proxy closes everything.
async fn serve_connection<S>(conn: Arc<Conn>, stream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = conn.config();
    let handler = conn.clone();
    let service = service_fn(move |request| {
        let conn = handler.clone();
        async move { Ok::<_, Infallible>(handle(&conn, request).await) }
    });
    let serving = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_header_size(config.max_header_bytes)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(serving);
    let closing = conn.stopping();
    let result = tokio::select! {
        result = serving.as_mut() => result,
        () = conn.draining().cancelled() => {
            serving.as_mut().graceful_shutdown();
            tokio::select! {
                result = serving.as_mut() => result,
                () = closing.cancelled() => Ok(()),
            }
        }
    };
    if let Err(error) = result {
        conn.record_unparsed(&error, Kind::Http, None);
    }
}

async fn handle(conn: &Arc<Conn>, request: Request<Incoming>) -> Response<ProxyBody> {
    if conn.audit_refuses() {
        let kind = if request.method() == Method::CONNECT {
            Kind::Connect
        } else {
            Kind::Http
        };
        return conn.refuse_unrecordable(kind, &request);
    }
    if request.method() == Method::CONNECT {
        connect(conn, request).await
    } else {
        forward(conn, request).await
    }
}
