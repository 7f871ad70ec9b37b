//! Relaying bytes both ways through a tunnel until both sides are done, one
//! side fails, the tunnel has been idle too long, or the proxy stops.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::exchange::{Counters, Direction};

/// Copy buffer per direction: large enough that a bulk transfer on loopback
/// is not limited by syscalls, small enough for 10k tunnels (1.25 GiB at 64 KiB
/// would be too much; 32 KiB x 2 x 10k = 640 MiB worst case, only while busy).
const RELAY_BUFFER: usize = 32 * 1024;

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    Closed,
    Failed(String),
    Idle,
    Stopped,
}

/// Relays until the tunnel ends; bytes are counted into `counters`.
pub async fn relay<C, U>(
    client: C,
    upstream: U,
    counters: Arc<Counters>,
    idle_timeout: Duration,
    stop: CancellationToken,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let clock = Arc::new(ActivityClock::new());
    let mut client = Watched::new(client, counters.clone(), Direction::Up, clock.clone());
    let mut upstream = Watched::new(upstream, counters, Direction::Down, clock.clone());
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut upstream,
        RELAY_BUFFER,
        RELAY_BUFFER,
    );
    tokio::select! {
        result = copy => match result {
            Ok(_) => RelayEnd::Closed,
            Err(e) => RelayEnd::Failed(e.to_string()),
        },
        () = clock.idle_for(idle_timeout) => RelayEnd::Idle,
        () = stop.cancelled() => RelayEnd::Stopped,
    }
}

/// The time of the last byte in either direction.
struct ActivityClock {
    start: Instant,
    last_ms: AtomicU64,
}

impl ActivityClock {
    fn new() -> ActivityClock {
        ActivityClock {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A stream whose reads are counted and mark activity.
struct Watched<S> {
    inner: S,
    counters: Arc<Counters>,
    direction: Direction,
    clock: Arc<ActivityClock>,
}

impl<S> Watched<S> {
    fn new(
        inner: S,
        counters: Arc<Counters>,
        direction: Direction,
        clock: Arc<ActivityClock>,
    ) -> Self {
        Watched {
            inner,
            counters,
            direction,
            clock,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            let counter = match self.direction {
                Direction::Up => &self.counters.up,
                Direction::Down => &self.counters.down,
            };
            counter.fetch_add(read as u64, Ordering::Relaxed);
            self.clock.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
