//! CONNECT tunnels: decide on the CONNECT authority; hand tunnels whose
//! decision depends on what is inside to interception; for the rest, dial the
//! upstream before answering (so failures get a real status), check the
//! client's first bytes — a TLS ClientHello's SNI must name the CONNECT host
//! (invariant 4), and so must a second one after a HelloRetryRequest
//! ([`crate::retry`]) — and relay.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use std::sync::atomic::Ordering;

use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::audit::Kind;
use crate::context::Conn;
use crate::decision::Reason;
use crate::exchange::Exchange;
use crate::hello::Hello;
use crate::host::{Host, HostPort};
use crate::intercept;
use crate::policy::Target;
use crate::respond::{empty, ProxyBody, ID_HEADER};
use crate::retry::{self, Stop};
use crate::sniff::{read_opening, Opening};
use crate::target::connect_target;
use crate::tunnel::{relay, relay_tcp, RelayEnd};
use crate::upstream;

pub(crate) async fn connect(conn: &Arc<Conn>, request: Request<Incoming>) -> Response<ProxyBody> {
    let mut exchange = conn.begin(Kind::Connect);
    exchange.record().method = Some("CONNECT".into());
    let target = match connect_target(&request) {
        Ok(target) => target,
        Err(malformed) => return conn.refuse_malformed(exchange, malformed),
    };
    let described = format!("CONNECT {target}");
    let record = exchange.record();
    record.host = Some(target.host.to_string());
    record.port = Some(target.port);

    let generation = conn.generation();
    let decision = generation.policy.decide_tunnel(Target {
        host: &target.host,
        port: target.port,
    });
    exchange.decide(&decision);
    if !decision.permits() {
        return conn.refuse(exchange, &decision, &described);
    }
    let intercepting = conn.interception().filter(|_| {
        generation.policy.tunnel_needs_interception(Target {
            host: &target.host,
            port: target.port,
        })
    });
    if let Some(interception) = intercepting {
        let authority = interception.authority.clone();
        exchange.record().status = Some(StatusCode::OK.as_u16());
        let conn = conn.clone();
        let tunnel = conn.clone();
        let established = established(&exchange);
        conn.spawn(async move {
            match hyper::upgrade::on(request).await {
                Ok(upgraded) => {
                    intercept::serve(tunnel, exchange, upgraded, target, authority).await
                }
                Err(e) => tracing::debug!("CONNECT upgrade failed: {e}"),
            }
        });
        return established;
    }

    let upstream = match upstream::dial(&generation.policy, &target, conn.dial_timeouts()).await {
        Ok((stream, dialed)) => {
            exchange.record().resolved = Some(dialed.ip());
            stream
        }
        Err(e) => {
            tracing::info!(id = exchange.id(), "{described}: {e}");
            exchange.record().resolved = e.address();
            return conn.refuse_or_fail(exchange, &e, &described);
        }
    };
    exchange.record().status = Some(StatusCode::OK.as_u16());
    let established = established(&exchange);
    let tunnel = conn.clone();
    conn.spawn(async move {
        match hyper::upgrade::on(request).await {
            Ok(upgraded) => run_tunnel(&tunnel, exchange, upgraded, target, upstream).await,
            Err(e) => tracing::debug!("CONNECT upgrade failed: {e}"),
        }
    });
    established
}

/// The 200 that opens a tunnel, naming its record.
fn established(exchange: &Exchange) -> Response<ProxyBody> {
    let mut response = Response::new(empty());
    if let Ok(id) = http::HeaderValue::from_str(exchange.id()) {
        response.headers_mut().insert(ID_HEADER, id);
    }
    response
}

/// Checks the opening, then relays: with splice when the client is a TCP
/// socket (hyper hands back the socket and any bytes it had already read),
/// through buffers otherwise.
async fn run_tunnel(
    conn: &Conn,
    mut exchange: Exchange,
    upgraded: Upgraded,
    target: HostPort,
    mut upstream: TcpStream,
) {
    let counters = exchange.counters();
    // Closed at shutdown, or when a reloaded policy no longer allows it.
    let tracked = conn.track(Kind::Connect, &target, None, true);
    let (idle, stop) = (conn.tunnel_idle_timeout(), tracked.close.clone());
    let end = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let mut client = parts.io.into_inner();
            let checked = check_handshake(
                conn,
                &mut exchange,
                parts.read_buf,
                &mut client,
                &target,
                &mut upstream,
            );
            if !checked.await {
                return;
            }
            relay_tcp(client, upstream, counters, idle, stop).await
        }
        Err(upgraded) => {
            let mut client = TokioIo::new(upgraded);
            let checked = check_handshake(
                conn,
                &mut exchange,
                Bytes::new(),
                &mut client,
                &target,
                &mut upstream,
            );
            if !checked.await {
                return;
            }
            relay(client, upstream, counters, idle, stop).await
        }
    };
    exchange.ended(end.transport());
    if end != RelayEnd::Closed {
        tracing::debug!(id = exchange.id(), "tunnel to {target} ended: {end}");
    }
}

/// The opening (after `read`, what hyper had already read of the client)
/// and, if the server asks for one, the retried ClientHello: `false` when
/// the tunnel must not go on.
async fn check_handshake<C: AsyncRead + AsyncWrite + Unpin>(
    conn: &Conn,
    exchange: &mut Exchange,
    read: Bytes,
    client: &mut C,
    target: &HostPort,
    upstream: &mut TcpStream,
) -> bool {
    let mut opening = std::io::Cursor::new(read).chain(&mut *client);
    let Some(mut pending) = open_tunnel(conn, exchange, &mut opening, target, upstream).await
    else {
        return false;
    };
    // What hyper had read that the opening did not need follows it.
    let (unread, _) = opening.into_inner();
    let at = usize::try_from(unread.position()).unwrap_or(usize::MAX);
    pending.extend_from_slice(unread.get_ref().get(at..).unwrap_or_default());
    watch_retry(conn, exchange, client, upstream, target, pending).await
}

/// Reads the client's first bytes, applies the SNI check, and forwards the
/// ClientHello; `None` when the tunnel must not go on, else what the client
/// sent after it (not yet forwarded).
async fn open_tunnel<R: AsyncRead + Unpin>(
    conn: &Conn,
    exchange: &mut Exchange,
    client: &mut R,
    target: &HostPort,
    upstream: &mut TcpStream,
) -> Option<Vec<u8>> {
    let (opening, mut read) = read_opening(client, conn.first_byte_timeout()).await;
    let len = match check_opening(&opening, target) {
        Ok(Some(len)) => len,
        Ok(None) => {
            tracing::debug!(id = exchange.id(), "CONNECT {target}: client sent nothing");
            return None;
        }
        Err(reason) => {
            tracing::info!(id = exchange.id(), "CONNECT {target}: refused: {opening}");
            exchange.refuse_inside(reason);
            return None;
        }
    };
    exchange.record().scheme = Some("https");
    let after = read.split_off(len.min(read.len()));
    exchange
        .counters()
        .up
        .fetch_add(read.len() as u64, Ordering::Relaxed);
    if let Err(e) = upstream.write_all(&read).await {
        tracing::debug!(
            id = exchange.id(),
            "upstream closed before the first bytes: {e}"
        );
        return None;
    }
    Some(after)
}

/// The HelloRetryRequest round, if the server asks for one; `false` when
/// the tunnel must not go on.
async fn watch_retry<C: AsyncRead + AsyncWrite + Unpin>(
    conn: &Conn,
    exchange: &mut Exchange,
    client: &mut C,
    upstream: &mut TcpStream,
    target: &HostPort,
    pending: Vec<u8>,
) -> bool {
    let counters = exchange.counters();
    let check = |hello: &Hello| check_hello(hello, target);
    let timeout = conn.tunnel_idle_timeout();
    match retry::watch(client, upstream, pending, check, &counters, timeout).await {
        Ok(()) => true,
        Err(Stop::Refused(reason, why)) => {
            tracing::info!(id = exchange.id(), "CONNECT {target}: refused: {why}");
            exchange.refuse_inside(reason);
            false
        }
        Err(Stop::Ended(why)) => {
            tracing::debug!(id = exchange.id(), "CONNECT {target}: {why}");
            false
        }
    }
}

/// Invariant 4 on the opening: returns how many bytes the ClientHello
/// took, or `None` when the client sent nothing: that tunnel is closed,
/// never relayed unchecked.
pub(crate) fn check_opening(opening: &Opening, target: &HostPort) -> Result<Option<usize>, Reason> {
    match opening {
        Opening::Tls { hello, len } => check_hello(hello, target).map(|()| Some(*len)),
        // Plain HTTP in a tunnel would carry any Host header past the check
        // that absolute-form requests get (domain fronting on port 80), and
        // every request after the first unseen: tunnels carry TLS only.
        Opening::Opaque => Err(Reason::BadRequest),
        Opening::Silent => Ok(None),
        Opening::MalformedTls(_) => Err(Reason::BadRequest),
    }
}

/// Invariant 4: a ClientHello's server name, when it sends one, is the
/// CONNECT host — an IP address in it only when the CONNECT target is that
/// address. An Encrypted Client Hello is refused: its outer name is not
/// necessarily the one the server acts on.
fn check_hello(hello: &Hello, target: &HostPort) -> Result<(), Reason> {
    if hello.encrypted {
        return Err(Reason::EncryptedClientHello);
    }
    match &hello.server_name {
        None => Ok(()),
        Some(name) => match Host::parse(name) {
            Ok(host) if host == target.host => Ok(()),
            _ => Err(Reason::SniMismatch),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(host: &str) -> HostPort {
        HostPort::parse(host, 443).unwrap()
    }

    fn tls(name: &str) -> Opening {
        Opening::Tls {
            hello: Hello {
                server_name: Some(name.into()),
                encrypted: false,
            },
            len: 100,
        }
    }

    #[test]
    fn sni_must_name_the_connect_host_after_normalisation() {
        let t = target("api.example.com:443");
        assert_eq!(check_opening(&tls("api.example.com"), &t), Ok(Some(100)));
        assert_eq!(check_opening(&tls("API.Example.com."), &t), Ok(Some(100)));
        for other in ["evil.example", "example.com", "not a name", "", "127.0.0.1"] {
            assert_eq!(
                check_opening(&tls(other), &t),
                Err(Reason::SniMismatch),
                "{other:?}"
            );
        }
    }

    #[test]
    fn an_ip_address_in_the_sni_passes_only_for_a_tunnel_to_that_address() {
        let ip = target("127.0.0.1:443");
        assert_eq!(check_opening(&tls("127.0.0.1"), &ip), Ok(Some(100)));
        assert_eq!(
            check_opening(&tls("127.0.0.2"), &ip),
            Err(Reason::SniMismatch)
        );
        assert_eq!(
            check_opening(&tls("localhost"), &ip),
            Err(Reason::SniMismatch)
        );
        let v6 = target("[::1]:443");
        assert_eq!(check_opening(&tls("::1"), &v6), Ok(Some(100)));
    }

    #[test]
    fn an_encrypted_client_hello_is_refused_whatever_its_outer_name() {
        let hello = Hello {
            server_name: Some("api.example.com".into()),
            encrypted: true,
        };
        assert_eq!(
            check_hello(&hello, &target("api.example.com:443")),
            Err(Reason::EncryptedClientHello)
        );
    }

    #[test]
    fn no_sni_passes_non_tls_malformed_tls_and_silence_do_not() {
        let t = target("a.example:443");
        let anonymous = Opening::Tls {
            hello: Hello {
                server_name: None,
                encrypted: false,
            },
            len: 7,
        };
        assert_eq!(check_opening(&anonymous, &t), Ok(Some(7)));
        assert_eq!(check_opening(&Opening::Opaque, &t), Err(Reason::BadRequest));
        assert_eq!(check_opening(&Opening::Silent, &t), Ok(None));
        assert_eq!(
            check_opening(&Opening::MalformedTls("x".into()), &t),
            Err(Reason::BadRequest)
        );
    }
}
