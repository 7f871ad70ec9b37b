//! One exchange through the proxy, from decision to audit record: counts the
//! bytes each way and writes the record exactly once, when the exchange ends
//! (the response body finished or was abandoned, or the tunnel closed).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::audit::{AuditLog, Kind, Record};
use crate::decision::{Decision, Outcome};

/// Byte counters shared between the two directions of an exchange.
#[derive(Debug, Default)]
pub struct Counters {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

/// An audit record in progress. Dropping it writes it.
pub struct Exchange {
    log: AuditLog,
    record: Record,
    started: Instant,
    counters: Arc<Counters>,
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
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
        };
        Exchange {
            log: log.clone(),
            record,
            started: Instant::now(),
            counters: Arc::new(Counters::default()),
        }
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
    pub fn down(inner: B, exchange: Exchange) -> Metered<B> {
        Metered {
            inner,
            counters: exchange.counters(),
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
        }
        if let Poll::Ready(None) = &polled {
            drop(self.exchange.take());
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
