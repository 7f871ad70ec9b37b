//! What every connection shares with the proxy (policy generations, the
//! audit log, configuration, the tasks shutdown waits for), and the
//! per-connection context handed to every handler: who the client is, how
//! to begin an audit record, how to refuse.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Scheme;
use http::{Request, Response};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{AuditLog, Kind};
use crate::client::{self, OpenUpstreams, UpstreamClient};
use crate::config::{Interception, ProxyConfig};
use crate::decision::{Decision, Reason};
use crate::exchange::Exchange;
use crate::policy::Policy;
use crate::respond::{refusal, ProxyBody, Refused};
use crate::target::Malformed;
use crate::upstream::DialTimeouts;

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
    upstream: Arc<OpenUpstreams>,
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
            upstream,
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
    pub fn replace_policy(&self, policy: Arc<Policy>) {
        self.generation.store(Arc::new(Generation::new(
            policy,
            &self.config,
            &self.upstream,
        )));
    }
}

/// One client connection: who it is, and the proxy it talks to. Tunnels
/// spawned from it hold it (and its connection-limit permit) until they end.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    pub client: Arc<str>,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    pub fn new(shared: Arc<Shared>, client: Arc<str>, permit: OwnedSemaphorePermit) -> Conn {
        Conn {
            shared,
            client,
            _permit: permit,
        }
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

    /// Whether the audit log cannot be written and fails closed.
    pub fn audit_refuses(&self) -> bool {
        self.shared.audit.refuses_requests()
    }

    /// 503 `audit-unavailable` for a request the log could not record.
    pub fn refuse_unrecordable<B>(&self, kind: Kind, request: &Request<B>) -> Response<ProxyBody> {
        let mut exchange = self.begin(kind);
        exchange.record().method = Some(request.method().to_string());
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
