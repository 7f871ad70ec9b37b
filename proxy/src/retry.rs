//! A plain tunnel after its first ClientHello passed. TLS 1.3 lets the
//! server answer with a HelloRetryRequest, and the client then sends a
//! second ClientHello in the clear, which may name another host than the
//! first: so until the server's first handshake message is known, we relay
//! the server's bytes ourselves, and after a HelloRetryRequest the client's
//! next ClientHello gets the first one's check (invariant 4). Past that
//! point no ClientHello travels in the clear any more (TLS 1.3 encrypts the
//! rest of the handshake; TLS 1.2 has no retry, and renegotiates inside the
//! encrypted session with the server already chosen), and the tunnel is
//! relayed as opaque bytes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::decision::Reason;
use crate::exchange::Counters;
use crate::hello::{
    client_hello, first_message, is_hello_retry_request, FirstMessage, Hello, Skip, MAX_HELLO_BYTES,
};

/// What we buffer of one side while waiting for its first handshake
/// message (the message and its records' headers).
const MAX_WAIT_BYTES: usize = MAX_HELLO_BYTES + 4 * 1024;

/// Why the tunnel does not go on.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// Refused by the policy: a second ClientHello that fails the check.
    Refused(Reason, String),
    /// A side closed, failed or went quiet for longer than `timeout`.
    Ended(String),
}

/// After the first ClientHello (already forwarded): relays the server's
/// first handshake message to the client and, if it is a
/// HelloRetryRequest, checks the client's next ClientHello with `check`.
/// `pending` holds what the client sent after its first ClientHello and we
/// have already read; it reaches the upstream only once checked. Returns
/// when the rest of the tunnel may be relayed opaquely.
pub async fn watch<C, U>(
    client: &mut C,
    upstream: &mut U,
    mut pending: Vec<u8>,
    check: impl Fn(&Hello) -> Result<(), Reason>,
    counters: &Counters,
    timeout: Duration,
) -> Result<(), Stop>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let retry = server_asks_again(upstream, client, &mut pending, counters, timeout).await?;
    if retry {
        let hello = loop {
            match first_message(&pending, Skip::BeforeRetry) {
                FirstMessage::Whole(message) => break client_hello(&message),
                FirstMessage::Partial if pending.len() < MAX_WAIT_BYTES => {
                    read_more(client, &mut pending, timeout).await?;
                }
                FirstMessage::Partial | FirstMessage::NotHandshake => {
                    break Err("no second ClientHello after the HelloRetryRequest".into());
                }
            }
        };
        let hello = hello.map_err(|why| Stop::Refused(Reason::BadRequest, why))?;
        check(&hello)
            .map_err(|reason| Stop::Refused(reason, format!("the second TLS hello {hello}")))?;
    }
    forward(upstream, &pending, &counters.up).await
}

/// Reads the server's first handshake message, passing every byte on to
/// the client as it comes; whether it is a HelloRetryRequest. What the
/// client sends meanwhile is kept in `pending` (up to a bound; the rest
/// waits in the socket), and its hanging up ends the tunnel.
async fn server_asks_again<U, C>(
    upstream: &mut U,
    client: &mut C,
    pending: &mut Vec<u8>,
    counters: &Counters,
    timeout: Duration,
) -> Result<bool, Stop>
where
    U: AsyncRead + Unpin,
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut seen = Vec::new();
    loop {
        let before = seen.len();
        let listening = pending.len() < MAX_WAIT_BYTES;
        tokio::select! {
            read = read_more(upstream, &mut seen, timeout) => read?,
            read = read_more(client, pending, timeout), if listening => {
                read?;
                continue;
            }
        }
        forward(client, &seen[before..], &counters.down).await?;
        match first_message(&seen, Skip::Nothing) {
            FirstMessage::Whole(message) => return Ok(is_hello_retry_request(&message)),
            FirstMessage::Partial if seen.len() < MAX_WAIT_BYTES => {}
            // Not a handshake the client could answer with a ClientHello
            // in the clear (an alert, or no TLS server): nothing to watch.
            FirstMessage::Partial | FirstMessage::NotHandshake => return Ok(false),
        }
    }
}

async fn read_more<R: AsyncRead + Unpin>(
    from: &mut R,
    into: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), Stop> {
    let mut chunk = vec![0u8; 16 * 1024];
    match tokio::time::timeout(timeout, from.read(&mut chunk)).await {
        Ok(Ok(0)) => Err(Stop::Ended("closed during the TLS handshake".into())),
        Ok(Ok(n)) => {
            into.extend_from_slice(chunk.get(..n).unwrap_or_default());
            Ok(())
        }
        Ok(Err(e)) => Err(Stop::Ended(e.to_string())),
        Err(_) => Err(Stop::Ended(
            "quiet too long during the TLS handshake".into(),
        )),
    }
}

async fn forward<W: AsyncWrite + Unpin>(
    to: &mut W,
    bytes: &[u8],
    counter: &std::sync::atomic::AtomicU64,
) -> Result<(), Stop> {
    if bytes.is_empty() {
        return Ok(());
    }
    to.write_all(bytes)
        .await
        .map_err(|e| Stop::Ended(e.to_string()))?;
    counter.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Ok(())
}
