//! TLS interception: terminate the client's TLS inside a CONNECT tunnel with
//! a certificate from our CA, then decide every request read inside on
//! method, host, port and path and forward the allowed ones upstream over
//! TLS verified against the system roots and `--upstream-ca`.
//!
//! The tunnel is decided on its host and port first (connect.rs); only
//! tunnels whose decision depends on what is inside get here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Scheme;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio_rustls::LazyConfigAcceptor;
use tollgate_certs::{CertificateAuthority, LeafName};

use crate::audit::{Kind, Transport};
use crate::context::Conn;
use crate::decision::Reason;
use crate::exchange::{Direction, Exchange};
use crate::forward::{deliver, note_what_was_parsed};
use crate::host::{Host, HostPort};
use crate::respond::{discard_body, ProxyBody};
use crate::target::{check_authority, Malformed};
use crate::tunnel::{ActivityClock, Watched};

/// Concurrent HTTP/2 streams per intercepted connection.
const MAX_STREAMS: u32 = 32;

/// Serves an intercepted tunnel until the client closes it. `exchange` is
/// the CONNECT's record; each request inside gets a `mitm` record.
pub(crate) async fn serve(
    conn: Arc<Conn>,
    mut exchange: Exchange,
    upgraded: Upgraded,
    target: HostPort,
    authority: Arc<dyn CertificateAuthority>,
) {
    let clock = Arc::new(ActivityClock::new());
    let client = Watched::new(
        TokioIo::new(upgraded),
        exchange.counters(),
        Direction::Up,
        Some(Direction::Down),
        clock.clone(),
    );
    let accept = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client);
    let hello = match tokio::time::timeout(conn.first_byte_timeout(), accept).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(e)) => {
            tracing::info!(
                id = exchange.id(),
                "CONNECT {target}: not a TLS ClientHello: {e}"
            );
            exchange.refuse_inside(Reason::BadRequest);
            return;
        }
        Err(_) => return,
    };
    if !sni_names_target(hello.client_hello().server_name(), &target) {
        exchange.refuse_inside(Reason::SniMismatch);
        return;
    }
    let config = match authority.server_config(&leaf_name(&target.host)) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(
                id = exchange.id(),
                "cannot mint a certificate for {target}: {e}"
            );
            return;
        }
    };
    let started = std::time::Instant::now();
    let handshake = tokio::time::timeout(conn.first_byte_timeout(), hello.into_stream(config));
    // Closed at shutdown, or when a reloaded policy no longer allows it.
    let tracked = conn.track(Kind::Connect, &target, None, false);
    let stopping = tracked.close.clone();
    let tls = tokio::select! {
        finished = handshake => match finished {
            Ok(Ok(tls)) => {
                if let Some(metrics) = &conn.config().metrics {
                    metrics.handshake(started.elapsed());
                }
                tls
            }
            Ok(Err(e)) => {
                tracing::info!(id = exchange.id(), "TLS with the client for {target} failed: {e}");
                return;
            }
            Err(_) => return,
        },
        () = stopping.cancelled() => return,
    };
    exchange.record().scheme = Some("https");
    let idle = conn.tunnel_idle_timeout();
    tokio::select! {
        served = serve_requests(conn, TokioIo::new(tls), target) => exchange.ended(served),
        () = clock.idle_for(idle) => {
            exchange.ended(Transport::Timeout);
            tracing::debug!(id = exchange.id(), "intercepted tunnel idle");
        }
        () = stopping.cancelled() => {}
    }
}

/// HTTP/1.1 or HTTP/2 (by ALPN) over the client's TLS; how the tunnel
/// ended.
async fn serve_requests<I>(conn: Arc<Conn>, io: I, target: HostPort) -> Transport
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let stop = conn.stopping();
    let header_timeout = conn.first_byte_timeout();
    let header_bytes = conn.config().max_header_bytes;
    let (recorder, tunnel) = (conn.clone(), target.clone());
    let asked = Arc::new(AtomicBool::new(false));
    let first = asked.clone();
    let service = service_fn(move |request| {
        first.store(true, Ordering::Relaxed);
        let (conn, target) = (conn.clone(), target.clone());
        async move { Ok::<_, std::convert::Infallible>(handle(&conn, request, target).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The plain listener's header bound: hyper answers 431 past it.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(header_bytes.max(MIN_HYPER_BUFFER));
    // hyper's default of 200 streams would let one client connection open
    // 200 upstream connections; 32 is plenty for a package manager.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(u32::try_from(header_bytes).unwrap_or(u32::MAX));
    let serving = builder.serve_connection_with_upgrades(io, service);
    tokio::select! {
        // A client that finished the handshake owes its first request
        // within the header timeout, as on the plain listener (hyper
        // starts that clock only once it knows the protocol).
        () = no_request_within(header_timeout, &asked) => {
            tracing::debug!("intercepted tunnel sent no request in time");
            Transport::Timeout
        }
        result = serving => match result {
            Ok(()) => Transport::Ok,
            Err(e) => {
                match e.downcast_ref::<hyper::Error>() {
                    Some(error) => recorder.record_unparsed(error, Kind::Mitm, Some(&tunnel)),
                    None => tracing::debug!("intercepted connection ended: {e}"),
                }
                Transport::Ok
            }
        },
        () = stop.cancelled() => Transport::Ok,
    }
}

/// hyper's smallest HTTP/1 read buffer.
const MIN_HYPER_BUFFER: usize = 8192;

/// Ends after `wait` unless a request has come by then; else never.
async fn no_request_within(wait: Duration, asked: &AtomicBool) {
    tokio::time::sleep(wait).await;
    if asked.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
}

/// One request inside the tunnel: its authority must be the CONNECT host
/// (invariant 4), then it is decided and delivered like any other.
async fn handle(conn: &Conn, request: Request<Incoming>, target: HostPort) -> Response<ProxyBody> {
    if conn.audit_refuses() {
        return conn.refuse_unrecordable(Kind::Mitm, &request);
    }
    let mut exchange = conn.begin(Kind::Mitm);
    exchange.record().method = Some(request.method().to_string());
    note_what_was_parsed(&mut exchange, &request, Some(&target));
    if request.method() == Method::CONNECT {
        let refused = Malformed::Bad("CONNECT inside an intercepted tunnel".into());
        return conn.refuse_malformed(exchange, refused);
    }
    if let Err(malformed) = check_authority(&request, &target) {
        discard_body(request.into_body()).await;
        return conn.refuse_malformed(exchange, malformed);
    }
    deliver(conn, exchange, request, target, Scheme::HTTPS).await
}

/// An SNI, when the client sends one, must name the CONNECT host.
fn sni_names_target(server_name: Option<&str>, target: &HostPort) -> bool {
    server_name.is_none_or(|name| Host::parse(name).is_ok_and(|host| host == target.host))
}

fn leaf_name(host: &Host) -> LeafName {
    match host {
        Host::Name(name) => LeafName::Dns(name.as_str().to_owned()),
        Host::Ip(ip) => LeafName::Ip(*ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_must_be_absent_or_the_connect_host() {
        let target = HostPort::parse("api.example.com:443", 443).unwrap();
        assert!(sni_names_target(None, &target));
        assert!(sni_names_target(Some("api.example.com"), &target));
        assert!(sni_names_target(Some("API.example.com."), &target));
        assert!(!sni_names_target(Some("evil.example"), &target));
        assert!(!sni_names_target(Some(""), &target));
    }
}
