//! Reads the first bytes a client sends into a CONNECT tunnel and, when they
//! are a TLS handshake, lets rustls parse the ClientHello to find the SNI.
//! The bytes are kept so they can be replayed to the upstream unchanged.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// TLS record content type "handshake" (RFC 8446 §5.1): the first byte of
/// every ClientHello. Anything else is not TLS and is tunnelled as opaque
/// bytes to the host the policy already allowed.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// Upper bound on what we buffer while waiting for a complete ClientHello:
/// a hello with post-quantum key shares is ~2 KiB, a record is at most 16 KiB
/// plus header; 64 KiB leaves room for a hello split over several records.
const MAX_SNIFF_BYTES: usize = 64 * 1024;

/// What the client's first bytes turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Opening {
    /// A TLS ClientHello; the server name it asks for, if any.
    Tls { server_name: Option<String> },
    /// Not TLS at all.
    Opaque,
    /// Looked like TLS, but rustls could not read a ClientHello from it.
    MalformedTls(String),
    /// The client closed or sent nothing in time.
    Silent,
}

impl std::fmt::Display for Opening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Opening::Tls {
                server_name: Some(name),
            } => write!(f, "the client's TLS hello names {name:?}"),
            Opening::Tls { server_name: None } => {
                f.write_str("the client's TLS hello names no host")
            }
            Opening::Opaque => f.write_str("the client sent something that is not TLS"),
            Opening::MalformedTls(why) => write!(f, "the client's TLS hello is malformed: {why}"),
            Opening::Silent => f.write_str("the client sent nothing"),
        }
    }
}

/// Reads until the opening is known; returns it with every byte read.
pub async fn read_opening<R: AsyncRead + Unpin>(
    client: &mut R,
    timeout: Duration,
) -> (Opening, Vec<u8>) {
    let mut seen = Vec::with_capacity(4096);
    let result = tokio::time::timeout(timeout, classify(client, &mut seen)).await;
    (result.unwrap_or(Opening::Silent), seen)
}

async fn classify<R: AsyncRead + Unpin>(client: &mut R, seen: &mut Vec<u8>) -> Opening {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return Opening::Silent,
            Ok(n) => n,
        };
        let fresh = chunk.get(..n).unwrap_or_default();
        seen.extend_from_slice(fresh);
        if seen.first() != Some(&TLS_HANDSHAKE_RECORD) {
            return Opening::Opaque;
        }
        if let Err(e) = feed(&mut acceptor, fresh) {
            return Opening::MalformedTls(e.to_string());
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let server_name = accepted.client_hello().server_name().map(str::to_owned);
                return Opening::Tls { server_name };
            }
            Ok(None) if seen.len() < MAX_SNIFF_BYTES => continue,
            Ok(None) => return Opening::MalformedTls("ClientHello too large".into()),
            Err((e, _alert)) => return Opening::MalformedTls(e.to_string()),
        }
    }
}

fn feed(acceptor: &mut rustls::server::Acceptor, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        if acceptor.read_tls(&mut bytes)? == 0 {
            break;
        }
    }
    Ok(())
}
