//! What every connection shares with the proxy (policy generations, the
//! audit log, configuration, the tasks shutdown waits for), and the
//! per-connection context handed to every handler: who the client is, how
//! to begin an audit record, how to refuse.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use http::uri::Scheme;
use http::{Method, Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{AuditLog, Kind, Transport};
use crate::client::{self, OpenUpstreams, UpstreamClient};
use crate::clients::{ClientCounts, ClientSlot};
use crate::config::{Interception, ProxyConfig, UPSTREAMS_PER_CONNECTION};
use crate::decision::{Decision, Reason};
use crate::exchange::Exchange;
use crate::forward::note_what_was_parsed;
use crate::host::HostPort;
use crate::metrics::Metrics;
use crate::policy::{Policy, Target};
use crate::respond::{refusal, ProxyBody, Refused, DECISION_HEADER};
use crate::target::Malformed;
use crate::upstream::{DialTimeouts, UpstreamError};

/// A policy and the upstream clients built for it. Requests load the current
/// generation; a reload swaps it, and connections pooled for the old policy
/// go when its last request does.
pub(crate) struct Generation {
    pub policy: Arc<Policy>,
    http: UpstreamClient,
    https: Option<UpstreamClient>,
    upstream: Arc<OpenUpstreams>,
}

impl Generation {
    fn new(policy: Arc<Policy>, config: &ProxyConfig, upstream: &Arc<OpenUpstreams>) -> Generation {
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

/// The state of one running proxy that its connections share.
pub(crate) struct Shared {
    generation: ArcSwap<Generation>,
    /// Tunnels and relays open now: a new policy re-decides them.
    tunnels: Arc<OpenTunnels>,
    upstream: Arc<OpenUpstreams>,
    /// Connections each client holds, against its cap.
    pub clients: Arc<ClientCounts>,
    pub audit: AuditLog,
    pub config: ProxyConfig,
    pub tasks: TaskTracker,
    /// Stop accepting and finish in-flight requests.
    pub draining: CancellationToken,
    /// Close everything now.
    pub closing: CancellationToken,
}

impl Shared {
    pub fn new(policy: Arc<Policy>, audit: AuditLog, config: ProxyConfig) -> Shared {
        let upstream = Arc::new(OpenUpstreams::new(config.max_connections));
        let generation = Generation::new(policy, &config, &upstream);
        Shared {
            generation: ArcSwap::from_pointee(generation),
            tunnels: Arc::new(OpenTunnels::default()),
            upstream,
            clients: ClientCounts::new(config.max_client_connections),
            audit,
            config,
            tasks: TaskTracker::new(),
            draining: CancellationToken::new(),
            closing: CancellationToken::new(),
        }
    }

    pub fn generation(&self) -> Arc<Generation> {
        self.generation.load_full()
    }

    /// Enforces `policy` from the next request on.
    /// Enforces `policy` from the next request on, and closes every open
    /// tunnel and relay it no longer allows, each with a record.
    pub fn replace_policy(&self, policy: Arc<Policy>) {
        self.generation.store(Arc::new(Generation::new(
            policy.clone(),
            &self.config,
            &self.upstream,
        )));
        self.tunnels
            .redecide(&policy, &self.audit, self.config.phase.as_ref());
    }
}

/// What an open tunnel or relay was allowed as.
struct Opened {
    kind: Kind,
    client: Arc<str>,
    target: HostPort,
    /// For a relay that began as a request (a WebSocket upgrade).
    request: Option<(Method, String)>,
    /// A tunnel the proxy does not read: it cannot be held to rules on
    /// what is inside.
    plain: bool,
    close: CancellationToken,
}

/// The tunnels and relays open now.
#[derive(Default)]
pub(crate) struct OpenTunnels {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Opened>>,
}

impl OpenTunnels {
    fn redecide(&self, policy: &Policy, audit: &AuditLog, phase: Option<&Arc<str>>) {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        for opened in open.values() {
            let target = Target {
                host: &opened.target.host,
                port: opened.target.port,
            };
            let decision = match &opened.request {
                Some((method, path)) => policy.decide_request(target, method, path),
                // Rules on what is inside, for a tunnel opened plain: it
                // cannot be held to them.
                None if opened.plain && policy.tunnel_needs_interception(target) => {
                    Decision::refuse(Reason::NeedsInterception)
                }
                None => policy.decide_tunnel(target),
            };
            if decision.permits() {
                continue;
            }
            opened.close.cancel();
            let mut exchange = Exchange::begin(
                audit,
                opened.client.clone(),
                phase.cloned(),
                policy.digest().clone(),
                opened.kind,
            );
            let record = exchange.record();
            record.method = Some(match &opened.request {
                Some((method, _)) => method.to_string(),
                None => "CONNECT".to_owned(),
            });
            record.host = Some(opened.target.host.to_string());
            record.port = Some(opened.target.port);
            record.path = opened.request.as_ref().map(|(_, path)| path.clone());
            exchange.decide(&decision);
            exchange.ended(Transport::Refused);
            tracing::info!(
                id = exchange.id(),
                "the new policy does not allow {} any more: closed",
                opened.target
            );
        }
    }
}

/// An open tunnel's registration; dropping it deregisters the tunnel.
pub(crate) struct Tracked {
    id: u64,
    tunnels: Arc<OpenTunnels>,
    metrics: Option<Arc<Metrics>>,
    /// Cancelled at shutdown, or when a new policy denies the tunnel.
    pub close: CancellationToken,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.tunnels
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
        if let Some(metrics) = &self.metrics {
            metrics.tunnel_closed();
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(metrics) = &self.shared.config.metrics {
            metrics.connection_closed();
        }
    }
}

/// One client connection: who it is, and the proxy it talks to. Tunnels
/// spawned from it hold it (and its connection-limit permit) until they end.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    pub client: Arc<str>,
    /// Upstream requests this connection may have in flight.
    upstreams: Arc<Semaphore>,
    _permit: OwnedSemaphorePermit,
    _slot: ClientSlot,
}

impl Conn {
    pub fn new(
        shared: Arc<Shared>,
        client: Arc<str>,
        permit: OwnedSemaphorePermit,
        slot: ClientSlot,
    ) -> Conn {
        if let Some(metrics) = &shared.config.metrics {
            metrics.connection_opened();
        }
        Conn {
            shared,
            client,
            upstreams: Arc::new(Semaphore::new(UPSTREAMS_PER_CONNECTION)),
            _permit: permit,
            _slot: slot,
        }
    }

    /// A place for one more upstream request of this connection, waiting
    /// at most `wait` for one of its own to finish; None past that.
    pub async fn upstream_slot(&self, wait: Duration) -> Option<OwnedSemaphorePermit> {
        // Free almost always (an HTTP/1 connection has one request at a
        // time): no timer for that.
        if let Ok(slot) = self.upstreams.clone().try_acquire_owned() {
            return Some(slot);
        }
        let slot = self.upstreams.clone().acquire_owned();
        tokio::time::timeout(wait, slot).await.ok()?.ok()
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.shared.config
    }

    /// Cancelled when the proxy stops accepting and drains.
    pub fn draining(&self) -> &CancellationToken {
        &self.shared.draining
    }

    pub fn begin(&self, kind: Kind) -> Exchange {
        Exchange::begin(
            &self.shared.audit,
            self.client.clone(),
            self.shared.config.phase.clone(),
            self.shared.generation().policy.digest().clone(),
            kind,
        )
        .counted(self.shared.config.metrics.as_ref())
    }

    pub fn generation(&self) -> Arc<Generation> {
        self.shared.generation()
    }

    pub fn interception(&self) -> Option<&Interception> {
        self.shared.config.interception.as_ref()
    }

    pub fn dial_timeouts(&self) -> DialTimeouts {
        self.shared.config.dial
    }

    pub fn response_timeout(&self) -> Duration {
        self.shared.config.response_timeout
    }

    pub fn first_byte_timeout(&self) -> Duration {
        self.shared.config.header_timeout
    }

    pub fn tunnel_idle_timeout(&self) -> Duration {
        self.shared.config.tunnel_idle_timeout
    }

    /// Cancelled when the proxy closes everything.
    pub fn stopping(&self) -> CancellationToken {
        self.shared.closing.clone()
    }

    /// Registers a tunnel to `target` (`plain`: one the proxy does not
    /// read; a relay begun as `request`), so that a new policy re-decides
    /// it; its `close` fires at shutdown too.
    pub fn track(
        &self,
        kind: Kind,
        target: &HostPort,
        request: Option<(Method, String)>,
        plain: bool,
    ) -> Tracked {
        let tunnels = self.shared.tunnels.clone();
        let id = tunnels.next.fetch_add(1, Ordering::Relaxed);
        let close = self.shared.closing.child_token();
        let opened = Opened {
            kind,
            client: self.client.clone(),
            target: target.clone(),
            request,
            plain,
            close: close.clone(),
        };
        tunnels
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, opened);
        let metrics = self.shared.config.metrics.clone();
        if let Some(metrics) = &metrics {
            metrics.tunnel_opened();
        }
        Tracked {
            id,
            tunnels,
            metrics,
            close,
        }
    }

    /// Runs a task that shutdown waits for (tunnels).
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.shared.tasks.spawn(task);
    }

    /// Answers with the refusal for `decision` and records it.
    pub fn refuse(
        &self,
        mut exchange: Exchange,
        decision: &Decision,
        described: &str,
    ) -> Response<ProxyBody> {
        exchange.decide(decision);
        exchange.ended(Transport::Refused);
        let reason = decision.reason().unwrap_or(Reason::BadRequest);
        let response = refusal(
            reason,
            &Refused {
                what: described,
                phase: self.shared.config.phase.as_deref(),
                id: exchange.id(),
            },
        );
        exchange.record().status = Some(response.status().as_u16());
        response
    }

    /// Answers a request the policy let through (allowed, or only
    /// audited) but whose transfer failed as `failed` says: 502 (or the
    /// failure's own status) with that reason. The record keeps the
    /// policy's decision and says what failed in its `outcome`.
    pub fn fail(
        &self,
        mut exchange: Exchange,
        failed: Transport,
        described: &str,
    ) -> Response<ProxyBody> {
        exchange.ended(failed);
        let reason = match failed {
            Transport::ResolveFailed => Reason::ResolveFailed,
            Transport::ClientAborted => Reason::BadRequest,
            _ => Reason::UpstreamFailed,
        };
        let mut response = refusal(
            reason,
            &Refused {
                what: described,
                phase: self.shared.config.phase.as_deref(),
                id: exchange.id(),
            },
        );
        let decision = exchange.record().decision.as_str();
        response
            .headers_mut()
            .insert(DECISION_HEADER, HeaderValue::from_static(decision));
        exchange.record().status = Some(response.status().as_u16());
        response
    }

    /// Answers a dial that failed: refused when the address guard stopped
    /// it (a decision), else a failed transfer.
    pub fn refuse_or_fail(
        &self,
        exchange: Exchange,
        error: &UpstreamError,
        described: &str,
    ) -> Response<ProxyBody> {
        match error.reason() {
            Reason::ResolveFailed => self.fail(exchange, Transport::ResolveFailed, described),
            Reason::UpstreamFailed => self.fail(exchange, Transport::UpstreamFailed, described),
            reason => self.refuse(exchange, &Decision::refuse(reason), described),
        }
    }

    /// hyper answers requests it cannot parse itself (400, or 431 for
    /// oversized headers) without handing them to us: each gets a record
    /// here, inside an intercepted tunnel with the tunnel's host and port.
    pub fn record_unparsed(&self, error: &hyper::Error, kind: Kind, tunnel: Option<&HostPort>) {
        let status = if error.is_parse_too_large() {
            431
        } else if error.is_parse() {
            400
        } else {
            tracing::debug!(client = &*self.client, "connection ended: {error}");
            return;
        };
        let mut exchange = self.begin(kind);
        exchange.decide(&Decision::refuse(Reason::BadRequest));
        exchange.ended(Transport::Refused);
        let record = exchange.record();
        record.status = Some(status);
        if let Some(target) = tunnel {
            record.scheme = Some("https");
            record.host = Some(target.host.to_string());
            record.port = Some(target.port);
        }
        tracing::info!(client = &*self.client, "refused malformed request: {error}");
    }

    /// Whether the audit log cannot be written and fails closed.
    pub fn audit_refuses(&self) -> bool {
        self.shared.audit.refuses_requests()
    }

    /// 503 `audit-unavailable` for a request the log could not record.
    pub fn refuse_unrecordable<B>(&self, kind: Kind, request: &Request<B>) -> Response<ProxyBody> {
        let mut exchange = self.begin(kind);
        exchange.record().method = Some(request.method().to_string());
        note_what_was_parsed(&mut exchange, request, None);
        let described = format!("{} {}", request.method(), request.uri());
        let decision = Decision::refuse(Reason::AuditUnavailable);
        self.refuse(exchange, &decision, &described)
    }

    pub fn refuse_malformed(
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
