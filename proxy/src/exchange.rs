//! One exchange through the proxy, from decision to audit record: counts the
//! bytes each way and writes the record exactly once, when the exchange ends
//! (the response body finished or was abandoned, or the tunnel closed).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use crate::audit::{AuditLog, Kind, Record, Transport};
use crate::decision::{Decision, Outcome, Reason};
use crate::metrics::Metrics;

/// Byte counters shared between the two directions of an exchange, and
/// what the bodies saw of its end.
#[derive(Debug, Default)]
pub struct Counters {
    pub up: AtomicU64,
    pub down: AtomicU64,
    /// The client's request body broke off.
    client_failed: AtomicBool,
    /// The upstream's response body broke off.
    upstream_failed: AtomicBool,
    /// A response body is being relayed ...
    relaying: AtomicBool,
    /// ... and reached its end.
    delivered: AtomicBool,
}

impl Counters {
    /// Whether the client's request body broke off (a failed upstream
    /// request is then the client's doing).
    pub fn client_failed(&self) -> bool {
        self.client_failed.load(Ordering::Relaxed)
    }

    /// The outcome the bodies saw: a relayed response that did not reach
    /// its end was abandoned by the client, and so was an exchange that
    /// ended before anything `answered` it (a client that gave up while
    /// its request waited).
    fn transport(&self, answered: bool) -> Transport {
        let seen = |flag: &AtomicBool| flag.load(Ordering::Relaxed);
        if seen(&self.upstream_failed) {
            Transport::UpstreamFailed
        } else if seen(&self.client_failed)
            || (seen(&self.relaying) && !seen(&self.delivered))
            || !answered
        {
            Transport::ClientAborted
        } else {
            Transport::Ok
        }
    }
}

/// An audit record in progress. Dropping it writes it.
pub struct Exchange {
    log: AuditLog,
    record: Record,
    started: Instant,
    counters: Arc<Counters>,
    /// How the transfer ended, when the proxy knows it for itself (else
    /// what the bodies saw).
    transport: Option<Transport>,
    /// What the exchange holds until it ends (its client connection's
    /// upstream slot).
    held: Option<OwnedSemaphorePermit>,
    /// Where its record is counted, besides the log.
    metrics: Option<Arc<Metrics>>,
}

impl Exchange {
    /// An exchange under the policy whose digest is `policy`.
    pub fn begin(
        log: &AuditLog,
        client: Arc<str>,
        phase: Option<Arc<str>>,
        policy: Arc<str>,
        kind: Kind,
    ) -> Exchange {
        let record = Record {
            ts: SystemTime::now(),
            id: log.next_id(),
            phase,
            policy: Some(policy),
            client,
            kind,
            method: None,
            scheme: None,
            host: None,
            port: None,
            path: None,
            decision: Outcome::Deny,
            rule: None,
            reason: None,
            resolved: None,
            status: None,
            outcome: Transport::Ok,
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
        };
        Exchange {
            log: log.clone(),
            record,
            started: Instant::now(),
            counters: Arc::new(Counters::default()),
            transport: None,
            held: None,
            metrics: None,
        }
    }

    /// This exchange, its record also counted in `metrics`.
    pub fn counted(mut self, metrics: Option<&Arc<Metrics>>) -> Exchange {
        self.metrics = metrics.cloned();
        self
    }

    /// Keeps `permit` until the exchange ends.
    pub fn hold(&mut self, permit: OwnedSemaphorePermit) {
        self.held = Some(permit);
    }

    /// Records a refusal inside an established tunnel (a ClientHello or a
    /// request the proxy would not pass): the client saw the CONNECT's 200
    /// and then the connection close, no HTTP answer, so no status.
    pub fn refuse_inside(&mut self, reason: Reason) {
        self.decide(&Decision::refuse(reason));
        self.ended(Transport::Refused);
        self.record.status = None;
    }

    /// Records how the transfer ended, whatever the bodies saw.
    pub fn ended(&mut self, transport: Transport) {
        self.transport = Some(transport);
    }

    /// The record being filled in.
    pub fn record(&mut self) -> &mut Record {
        &mut self.record
    }

    pub fn id(&self) -> &str {
        &self.record.id
    }

    pub fn decide(&mut self, decision: &Decision) {
        self.record().set_decision(decision);
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let record = &mut self.record;
        record.bytes_up = self.counters.up.load(Ordering::Relaxed);
        record.bytes_down = self.counters.down.load(Ordering::Relaxed);
        record.duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let answered = record.status.is_some();
        record.outcome = self
            .transport
            .unwrap_or_else(|| self.counters.transport(answered));
        if let Some(metrics) = &self.metrics {
            metrics.record(record);
        }
        self.log.write(record);
    }
}

/// A body that counts its data bytes into one direction of an exchange and,
/// optionally, owns the exchange so the record is written when it ends.
pub struct Metered<B> {
    inner: B,
    counters: Arc<Counters>,
    direction: Direction,
    exchange: Option<Exchange>,
}

#[derive(Debug, Clone, Copy)]
pub enum Direction {
    Up,
    Down,
}

impl<B> Metered<B> {
    pub fn up(inner: B, counters: Arc<Counters>) -> Metered<B> {
        Metered {
            inner,
            counters,
            direction: Direction::Up,
            exchange: None,
        }
    }

    /// The response body: counts bytes down and closes the exchange.
    pub fn down(inner: B, exchange: Exchange) -> Metered<B>
    where
        B: Body,
    {
        let counters = exchange.counters();
        counters.relaying.store(true, Ordering::Relaxed);
        // A body with nothing to relay (HEAD, 204, 304) may never be
        // polled: it is delivered as it is.
        if inner.is_end_stream() {
            counters.delivered.store(true, Ordering::Relaxed);
        }
        Metered {
            inner,
            counters,
            direction: Direction::Down,
            exchange: Some(exchange),
        }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let counter = match self.direction {
                    Direction::Up => &self.counters.up,
                    Direction::Down => &self.counters.down,
                };
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            // A body of known length may be dropped once its last byte is
            // out, never polled to its end.
            if matches!(self.direction, Direction::Down) && self.inner.is_end_stream() {
                self.counters.delivered.store(true, Ordering::Relaxed);
            }
        }
        match &polled {
            Poll::Ready(None) => {
                self.counters.delivered.store(true, Ordering::Relaxed);
                drop(self.exchange.take());
            }
            Poll::Ready(Some(Err(_))) => {
                let broke = match self.direction {
                    Direction::Up => &self.counters.client_failed,
                    Direction::Down => &self.counters.upstream_failed,
                };
                broke.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
