//! CONNECT tunnels: decide on the CONNECT authority; hand tunnels whose
//! decision depends on what is inside to interception; for the rest, dial the
//! upstream before answering (so failures get a real status), check the
//! client's first bytes — a TLS ClientHello's SNI must name the CONNECT host
//! (invariant 4) — and relay.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use std::sync::atomic::Ordering;

use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::audit::Kind;
use crate::context::Conn;
use crate::decision::{Decision, Reason};
use crate::exchange::Exchange;
use crate::host::{Host, HostPort};
use crate::intercept;
use crate::policy::Target;
use crate::respond::{empty, ProxyBody};
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
        conn.spawn(async move {
            match hyper::upgrade::on(request).await {
                Ok(upgraded) => {
                    intercept::serve(tunnel, exchange, upgraded, target, authority).await
                }
                Err(e) => tracing::debug!("CONNECT upgrade failed: {e}"),
            }
        });
        return Response::new(empty());
    }

    let upstream = match upstream::dial(&generation.policy, &target, conn.dial_timeouts()).await {
        Ok((stream, dialed)) => {
            exchange.record().resolved = Some(dialed.ip());
            stream
        }
        Err(e) => {
            tracing::info!(id = exchange.id(), "{described}: {e}");
            exchange.record().resolved = e.address();
            return conn.refuse(exchange, &Decision::refuse(e.reason()), &described);
        }
    };
    exchange.record().status = Some(StatusCode::OK.as_u16());
    let tunnel = conn.clone();
    conn.spawn(async move {
        match hyper::upgrade::on(request).await {
            Ok(upgraded) => run_tunnel(&tunnel, exchange, upgraded, target, upstream).await,
            Err(e) => tracing::debug!("CONNECT upgrade failed: {e}"),
        }
    });
    Response::new(empty())
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
    let (idle, stop) = (conn.tunnel_idle_timeout(), conn.stopping());
    let end = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let mut client = parts.io.into_inner();
            let mut opening = std::io::Cursor::new(parts.read_buf).chain(&mut client);
            if !open_tunnel(conn, &mut exchange, &mut opening, &target, &mut upstream).await {
                return;
            }
            relay_tcp(client, upstream, counters, idle, stop).await
        }
        Err(upgraded) => {
            let mut client = TokioIo::new(upgraded);
            if !open_tunnel(conn, &mut exchange, &mut client, &target, &mut upstream).await {
                return;
            }
            relay(client, upstream, counters, idle, stop).await
        }
    };
    if end != RelayEnd::Closed {
        tracing::debug!(id = exchange.id(), "tunnel to {target} ended: {end}");
    }
}

/// Reads the client's first bytes, applies the SNI check, and forwards them;
/// `false` when the tunnel must not go on.
async fn open_tunnel<R: AsyncRead + Unpin>(
    conn: &Conn,
    exchange: &mut Exchange,
    client: &mut R,
    target: &HostPort,
    upstream: &mut TcpStream,
) -> bool {
    let (opening, first_bytes) = read_opening(client, conn.first_byte_timeout()).await;
    match check_opening(&opening, target) {
        Ok(Some(scheme)) => exchange.record().scheme = Some(scheme),
        Ok(None) => {
            tracing::debug!(id = exchange.id(), "CONNECT {target}: client sent nothing");
            return false;
        }
        Err(reason) => {
            tracing::info!(id = exchange.id(), "CONNECT {target}: refused: {opening}");
            exchange.decide(&Decision::refuse(reason));
            return false;
        }
    }
    exchange
        .counters()
        .up
        .fetch_add(first_bytes.len() as u64, Ordering::Relaxed);
    if let Err(e) = upstream.write_all(&first_bytes).await {
        tracing::debug!(
            id = exchange.id(),
            "upstream closed before the first bytes: {e}"
        );
        return false;
    }
    true
}

/// Invariant 4: a TLS ClientHello's SNI must name the CONNECT host. Returns
/// the scheme the tunnel carries for the audit record, or `None` when the
/// client sent nothing: that tunnel is closed, never relayed unchecked.
fn check_opening(opening: &Opening, target: &HostPort) -> Result<Option<&'static str>, Reason> {
    match opening {
        Opening::Tls { server_name: None } => Ok(Some("https")),
        Opening::Tls {
            server_name: Some(name),
        } => match Host::parse(name) {
            Ok(host) if host == target.host => Ok(Some("https")),
            _ => Err(Reason::SniMismatch),
        },
        // Plain HTTP in a tunnel would carry any Host header past the check
        // that absolute-form requests get (domain fronting on port 80), and
        // every request after the first unseen: tunnels carry TLS only.
        Opening::Opaque => Err(Reason::BadRequest),
        Opening::Silent => Ok(None),
        Opening::MalformedTls(_) => Err(Reason::BadRequest),
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
            server_name: Some(name.into()),
        }
    }

    #[test]
    fn sni_must_name_the_connect_host_after_normalisation() {
        let t = target("api.example.com:443");
        assert_eq!(
            check_opening(&tls("api.example.com"), &t),
            Ok(Some("https"))
        );
        assert_eq!(
            check_opening(&tls("API.Example.com."), &t),
            Ok(Some("https"))
        );
        assert_eq!(
            check_opening(&tls("evil.example"), &t),
            Err(Reason::SniMismatch)
        );
        assert_eq!(
            check_opening(&tls("example.com"), &t),
            Err(Reason::SniMismatch)
        );
        assert_eq!(
            check_opening(&tls("not a name"), &t),
            Err(Reason::SniMismatch)
        );
    }

    #[test]
    fn no_sni_and_non_tls_pass_malformed_tls_and_silence_do_not() {
        let t = target("a.example:443");
        assert_eq!(
            check_opening(&Opening::Tls { server_name: None }, &t),
            Ok(Some("https"))
        );
        assert_eq!(check_opening(&Opening::Opaque, &t), Err(Reason::BadRequest));
        assert_eq!(check_opening(&Opening::Silent, &t), Ok(None));
        assert_eq!(
            check_opening(&Opening::MalformedTls("x".into()), &t),
            Err(Reason::BadRequest)
        );
    }
}
