//! Forwarding HTTP requests: plain absolute-form requests (`GET
//! http://host/path`) and requests read inside an intercepted tunnel share
//! one path — decide on method, host, port and path; clean hop-by-hop
//! headers; send through the pooled, guarded client; relay the response,
//! or, for an allowed WebSocket upgrade, the upgraded streams.

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::audit::{Kind, Transport};
use crate::client::{error_chain, upstream_error, Dialed};
use crate::context::Conn;
use crate::exchange::{Exchange, Metered};
use crate::host::HostPort;
use crate::policy::Target;
use crate::respond::{discard_body, empty, strip_hop_by_hop, ProxyBody, ID_HEADER};
use crate::target::{authority_text, http_target, Malformed};
use crate::tunnel::relay;

/// A plain-HTTP proxy request.
pub(crate) async fn forward(conn: &Conn, request: Request<Incoming>) -> Response<ProxyBody> {
    let mut exchange = conn.begin(Kind::Http);
    exchange.record().method = Some(request.method().to_string());
    match http_target(&request) {
        Ok(target) => deliver(conn, exchange, request, target, Scheme::HTTP).await,
        Err(malformed) => {
            note_what_was_parsed(&mut exchange, &request, None);
            conn.refuse_malformed(exchange, malformed)
        }
    }
}

/// What a request refused as malformed still said, for its record: the
/// path, and the host and port of its URI (or, inside an intercepted
/// tunnel, of the tunnel).
pub(crate) fn note_what_was_parsed<B>(
    exchange: &mut Exchange,
    request: &Request<B>,
    tunnel: Option<&HostPort>,
) {
    let uri = request.uri();
    let record = exchange.record();
    if !uri.path().is_empty() && uri.path_and_query().is_some() {
        record.path = Some(uri.path().to_owned());
    }
    let (scheme, target) = match tunnel {
        Some(tunnel) => (Some("https"), Some(tunnel.clone())),
        None => {
            let (scheme, default_port) = match uri.scheme_str() {
                Some("https") => (Some("https"), 443),
                Some("http") => (Some("http"), 80),
                _ => (None, 80),
            };
            let target = uri
                .authority()
                .and_then(|authority| HostPort::parse(authority.as_str(), default_port).ok());
            (scheme, target)
        }
    };
    record.scheme = scheme;
    if let Some(target) = target {
        record.host = Some(target.host.to_string());
        record.port = Some(target.port);
    }
}

/// Decides and, if allowed, forwards `request` to `target` over `scheme`.
pub(crate) async fn deliver(
    conn: &Conn,
    mut exchange: Exchange,
    mut request: Request<Incoming>,
    target: HostPort,
    scheme: Scheme,
) -> Response<ProxyBody> {
    let path = request.uri().path().to_owned();
    let described = format!(
        "{} {scheme}://{}{path}",
        request.method(),
        authority_text(&scheme, &target)
    );
    describe_target(&mut exchange, &target, &scheme, &path);
    let generation = conn.generation();
    let decision = generation.policy.decide_request(
        Target {
            host: &target.host,
            port: target.port,
        },
        request.method(),
        &path,
    );
    exchange.decide(&decision);
    if !decision.permits() {
        discard_body(request.into_body()).await;
        return conn.refuse(exchange, &decision, &described);
    }
    let Some(client) = generation.client_for(&scheme) else {
        return conn.fail(exchange, Transport::UpstreamFailed, &described);
    };

    let client_upgrade = wants_websocket(&request).then(|| hyper::upgrade::on(&mut request));
    if let Err(detail) = rewrite_for_upstream(&mut request, &target, &scheme) {
        return conn.refuse_malformed(exchange, Malformed::Bad(detail));
    }
    if client_upgrade.is_none() && generation.upstream_budget_spent() {
        // Not pooled: hyper does not keep a connection whose request said
        // `close` (poisoning it after the response would be too late: a
        // small response returns it to the pool before we see it).
        let close = HeaderValue::from_static("close");
        request.headers_mut().insert(header::CONNECTION, close);
    }
    // Each request in flight holds an upstream connection: a client
    // connection gets a few at once (HTTP/2 would have 32), however many
    // requests it sends.
    let Some(slot) = conn.upstream_slot(conn.response_timeout()).await else {
        return conn.fail(exchange, Transport::Timeout, &described);
    };
    exchange.hold(slot);
    let counters = exchange.counters();
    let request = request.map(|body| Metered::up(body, counters.clone()));
    let Ok(result) = tokio::time::timeout(conn.response_timeout(), client.request(request)).await
    else {
        tracing::info!(id = exchange.id(), "{described}: no response in time");
        return conn.fail(exchange, Transport::Timeout, &described);
    };
    match result {
        Ok(response) => match client_upgrade {
            Some(upgrade) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                relay_upgrade(conn, exchange, upgrade, response, &target)
            }
            _ => relay_response(exchange, response),
        },
        Err(error) => {
            tracing::info!(id = exchange.id(), "{described}: {}", error_chain(&error));
            if counters.client_failed() {
                // The request body broke off on the client's side: what
                // reached the upstream is in bytes_up.
                return conn.fail(exchange, Transport::ClientAborted, &described);
            }
            match upstream_error(&error) {
                Some(e) => {
                    exchange.record().resolved = e.address();
                    conn.refuse_or_fail(exchange, e, &described)
                }
                None => conn.fail(exchange, Transport::UpstreamFailed, &described),
            }
        }
    }
}

fn describe_target(exchange: &mut Exchange, target: &HostPort, scheme: &Scheme, path: &str) {
    let record = exchange.record();
    record.scheme = Some(if *scheme == Scheme::HTTPS {
        "https"
    } else {
        "http"
    });
    record.host = Some(target.host.to_string());
    record.port = Some(target.port);
    record.path = Some(path.to_owned());
}

/// A WebSocket opening handshake (RFC 6455 §4.1): GET with
/// `Upgrade: websocket`. Other upgrades are not relayed.
fn wants_websocket(request: &Request<Incoming>) -> bool {
    request.method() == Method::GET
        && request
            .headers()
            .get_all(header::UPGRADE)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// Origin server view of the request: canonical Host, no hop-by-hop headers
/// (but the WebSocket upgrade, if that is what was asked), HTTP/1.1, and the
/// normalised authority in the URI so the pool keys on it.
fn rewrite_for_upstream(
    request: &mut Request<Incoming>,
    target: &HostPort,
    scheme: &Scheme,
) -> Result<(), String> {
    let websocket = wants_websocket(request);
    strip_hop_by_hop(request.headers_mut());
    if websocket {
        let headers = request.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let host_value =
        HeaderValue::from_str(&authority_text(scheme, target)).map_err(|e| e.to_string())?;
    request.headers_mut().insert(header::HOST, host_value);
    let authority: Authority = target
        .to_string()
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::builder()
        .scheme(scheme.clone())
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| e.to_string())?;
    // An HTTP/2 request from an intercepted client goes upstream as HTTP/1.1.
    *request.version_mut() = Version::HTTP_11;
    Ok(())
}

fn relay_response(mut exchange: Exchange, response: Response<Incoming>) -> Response<ProxyBody> {
    let (parts, body) = note_response(&mut exchange, response);
    let body = Metered::down(body, exchange)
        .map_err(Into::into)
        .boxed_unsync();
    Response::from_parts(parts, body)
}

/// Answers the client's upgrade with the upstream's 101 and relays the two
/// upgraded streams; the exchange is recorded when they close.
fn relay_upgrade(
    conn: &Conn,
    mut exchange: Exchange,
    client_upgrade: OnUpgrade,
    mut response: Response<Incoming>,
    target: &HostPort,
) -> Response<ProxyBody> {
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let (mut parts, _) = note_response(&mut exchange, response);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // Re-decided as the request it began as when the policy is reloaded.
    let request = exchange.record().method.clone().and_then(|method| {
        let method = Method::from_bytes(method.as_bytes()).ok()?;
        Some((method, exchange.record().path.clone().unwrap_or_default()))
    });
    let tracked = conn.track(exchange.record().kind, target, request, false);
    let (idle, stop) = (conn.tunnel_idle_timeout(), tracked.close.clone());
    conn.spawn(async move {
        let _tracked = tracked;
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((client, upstream)) => {
                let counters = exchange.counters();
                relay(
                    TokioIo::new(client),
                    TokioIo::new(upstream),
                    counters,
                    idle,
                    stop,
                )
                .await;
            }
            Err(e) => tracing::debug!(id = exchange.id(), "WebSocket upgrade failed: {e}"),
        }
    });
    Response::from_parts(parts, empty())
}

/// Records status and dialled address; returns the response cleaned of
/// hop-by-hop headers and restated as our hop's HTTP/1.1.
fn note_response(
    exchange: &mut Exchange,
    response: Response<Incoming>,
) -> (http::response::Parts, Incoming) {
    let record = exchange.record();
    record.status = Some(response.status().as_u16());
    record.resolved = response.extensions().get::<Dialed>().map(|d| d.0.ip());
    let (mut parts, body) = response.into_parts();
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    // The record's id, in place of any the upstream sent.
    if let Ok(id) = HeaderValue::from_str(exchange.id()) {
        parts.headers.insert(ID_HEADER, id);
    }
    (parts, body)
}
