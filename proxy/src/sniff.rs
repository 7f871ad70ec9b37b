//! Reads the first bytes a client sends into a CONNECT tunnel and, when they
//! are a TLS handshake, reads the ClientHello ([`crate::hello`]). The bytes
//! are kept so they can be replayed to the upstream unchanged.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::hello::{client_hello, first_message, FirstMessage, Hello, Skip, MAX_HELLO_BYTES};

/// TLS record content type "handshake" (RFC 8446 §5.1): the first byte of
/// every ClientHello. Anything else is not TLS.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// Upper bound on what we buffer while waiting for a complete ClientHello
/// (its records' headers on top of [`MAX_HELLO_BYTES`]).
const MAX_SNIFF_BYTES: usize = MAX_HELLO_BYTES + 4 * 1024;

/// What the client's first bytes turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Opening {
    /// A TLS ClientHello, carried by the first `len` bytes read.
    Tls { hello: Hello, len: usize },
    /// Not TLS at all.
    Opaque,
    /// Looked like TLS, but is not a ClientHello we could read.
    MalformedTls(String),
    /// The client closed or sent nothing in time.
    Silent,
}

impl std::fmt::Display for Opening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Opening::Tls { hello, .. } => write!(f, "the client's TLS hello {hello}"),
            Opening::Opaque => f.write_str("the client sent something that is not TLS"),
            Opening::MalformedTls(why) => write!(f, "the client's TLS hello is malformed: {why}"),
            Opening::Silent => f.write_str("the client sent nothing"),
        }
    }
}

/// Reads until the opening is known; returns it with every byte read (a
/// ClientHello's records may be followed by more).
pub async fn read_opening<R: AsyncRead + Unpin>(
    client: &mut R,
    timeout: Duration,
) -> (Opening, Vec<u8>) {
    let mut seen = Vec::with_capacity(4096);
    let result = tokio::time::timeout(timeout, classify(client, &mut seen)).await;
    (result.unwrap_or(Opening::Silent), seen)
}

async fn classify<R: AsyncRead + Unpin>(client: &mut R, seen: &mut Vec<u8>) -> Opening {
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return Opening::Silent,
            Ok(n) => n,
        };
        seen.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if seen.first() != Some(&TLS_HANDSHAKE_RECORD) {
            return Opening::Opaque;
        }
        match first_message(seen, Skip::Nothing) {
            FirstMessage::Whole(message) => {
                return match client_hello(&message) {
                    Ok(hello) => Opening::Tls {
                        hello,
                        len: message.consumed,
                    },
                    Err(why) => Opening::MalformedTls(why),
                }
            }
            FirstMessage::Partial if seen.len() < MAX_SNIFF_BYTES => continue,
            FirstMessage::Partial => return Opening::MalformedTls("ClientHello too large".into()),
            FirstMessage::NotHandshake => {
                return Opening::MalformedTls("not a TLS handshake".into())
            }
        }
    }
}
