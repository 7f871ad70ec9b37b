//! Prometheus metrics (`--metrics`): what the proxy decided and why, the
//! bytes that moved, what is open, how long intercepted handshakes and
//! exchanges take, whether the audit log fails, and which policy is in
//! force. One [`Metrics`] may serve several proxies (a run's phases, told
//! apart by the `phase` label); prometheus-client keeps and encodes them.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::audit::{AuditLog, Record, WriteErrors};
use crate::listen::Listener;

/// The labels of a decision: the record's `decision`, `reason` (empty
/// when allowed) and `phase` (empty for `tollgate proxy`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: &'static str,
    reason: &'static str,
    phase: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    direction: &'static str,
    phase: String,
}

/// The proxy's metrics, and the registry that encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: Family<DecisionLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    connections: Gauge,
    tunnels: Gauge,
    handshakes: Histogram,
    exchanges: Histogram,
    audit_write_errors: Counter,
    policy_generation: Gauge,
    policy_load_seconds: Gauge<f64, AtomicU64>,
    /// The audit log whose write errors `audit_write_errors` follows.
    audit: Mutex<Option<WriteErrors>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("tollgate");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Exchanges recorded, by decision, reason and phase",
            decisions.clone(),
        );
        let bytes = Family::<BytesLabels, Counter>::default();
        registry.register(
            "bytes",
            "Bytes relayed, by direction (up: client to upstream) and phase",
            bytes.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open",
            connections.clone(),
        );
        let tunnels = Gauge::default();
        registry.register(
            "open_tunnels",
            "CONNECT tunnels and WebSocket relays open",
            tunnels.clone(),
        );
        // 1 ms to about 8 s: a loopback handshake to a slow upstream.
        let handshakes = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "intercepted_handshake_seconds",
            "TLS handshakes with intercepted clients",
            handshakes.clone(),
        );
        // 1 ms to about 2 min, the response timeout.
        let exchanges = Histogram::new(exponential_buckets(0.001, 2.0, 18));
        registry.register(
            "exchange_seconds",
            "Exchanges from request to the end of the response or tunnel",
            exchanges.clone(),
        );
        let audit_write_errors = Counter::default();
        registry.register(
            "audit_write_errors",
            "Times the audit log could not be written",
            audit_write_errors.clone(),
        );
        let policy_generation = Gauge::default();
        registry.register(
            "policy_generation",
            "Policies loaded since start (1 before the first reload)",
            policy_generation.clone(),
        );
        let policy_load_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "policy_load_seconds",
            "Time the policy in force took to read and compile",
            policy_load_seconds.clone(),
        );
        Arc::new(Metrics {
            registry,
            decisions,
            bytes,
            connections,
            tunnels,
            handshakes,
            exchanges,
            audit_write_errors,
            policy_generation,
            policy_load_seconds,
            audit: Mutex::new(None),
        })
    }

    /// Counts one written record: its decision, its bytes, its duration.
    pub(crate) fn record(&self, record: &Record) {
        let phase = record.phase.as_deref().unwrap_or("").to_owned();
        self.decisions
            .get_or_create(&DecisionLabels {
                decision: record.decision.as_str(),
                reason: record.reason.map_or("", |reason| reason.code()),
                phase: phase.clone(),
            })
            .inc();
        for (direction, count) in [("up", record.bytes_up), ("down", record.bytes_down)] {
            if count > 0 {
                self.bytes
                    .get_or_create(&BytesLabels {
                        direction,
                        phase: phase.clone(),
                    })
                    .inc_by(count);
            }
        }
        self.exchanges
            .observe(Duration::from_millis(record.duration_ms).as_secs_f64());
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.inc();
    }

    pub(crate) fn connection_closed(&self) {
        self.connections.dec();
    }

    pub(crate) fn tunnel_opened(&self) {
        self.tunnels.inc();
    }

    pub(crate) fn tunnel_closed(&self) {
        self.tunnels.dec();
    }

    pub(crate) fn handshake(&self, took: Duration) {
        self.handshakes.observe(took.as_secs_f64());
    }

    /// A policy was loaded (at start or on reload) in `took`.
    pub fn policy_loaded(&self, took: Duration) {
        self.policy_generation.inc();
        self.policy_load_seconds.set(took.as_secs_f64());
    }

    /// Counts the write errors of `log` as `audit_write_errors`.
    pub fn watch_audit_log(&self, log: &AuditLog) {
        *self.audit.lock().unwrap_or_else(PoisonError::into_inner) = Some(log.write_errors());
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let errors = self
            .audit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(errors) = errors {
            let (now, counted) = (errors.count(), self.audit_write_errors.get());
            if now > counted {
                self.audit_write_errors.inc_by(now - counted);
            }
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until the
/// task is dropped; every other path is 404.
pub async fn serve(listener: Listener, metrics: Arc<Metrics>) {
    match listener {
        Listener::Tcp(l) => {
            accept_loop(|| async { l.accept().await.map(|(s, _)| s) }, metrics).await
        }
        Listener::Unix(l, _path) => {
            accept_loop(|| async { l.accept().await.map(|(s, _)| s) }, metrics).await
        }
    }
}

async fn accept_loop<S, F, Fut>(mut accept: F, metrics: Arc<Metrics>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<S>>,
{
    let scrapers = Arc::new(Semaphore::new(MAX_SCRAPERS));
    loop {
        let stream = match accept().await {
            Ok(stream) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Past the few scrapers it serves at once, a connection is closed
        // as accepted: held, they would take the proxy's descriptors.
        let Ok(scraper) = scrapers.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _scraper = scraper;
            let service = service_fn(move |request: Request<Incoming>| {
                let answer = scrape(&request, &metrics);
                async move { Ok::<_, Infallible>(answer) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(SCRAPE_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = served.await {
                tracing::debug!("metrics: connection ended: {e}");
            }
        });
    }
}

/// Scraper connections served at once (Prometheus makes one per target;
/// a few more for people with curl). They come out of the descriptors
/// the proxy keeps for itself, not out of its connections'.
pub const MAX_SCRAPERS: usize = 8;

/// How long a scraper has to send its request.
const SCRAPE_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to one request of the metrics endpoint.
fn scrape(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /metrics\n".to_owned(),
        )
    } else if request.method() != Method::GET && request.method() != Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "GET /metrics\n".to_owned(),
        )
    } else {
        (
            StatusCode::OK,
            // The Prometheus text exposition format.
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
