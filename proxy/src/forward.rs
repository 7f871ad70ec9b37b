//! Plain HTTP forwarding: absolute-form requests (`GET http://host/path`)
//! are checked, decided, cleaned of hop-by-hop headers and sent upstream
//! through the pooled, guarded client.

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::audit::Kind;
use crate::client::{upstream_error, Dialed};
use crate::decision::{Decision, Reason};
use crate::exchange::{Exchange, Metered};
use crate::host::HostPort;
use crate::policy::Target;
use crate::respond::{strip_hop_by_hop, ProxyBody};
use crate::server::Conn;

/// Why a request could not even be decided.
#[derive(Debug)]
pub(crate) enum Malformed {
    Bad(String),
    HostMismatch,
}

pub(crate) async fn forward(conn: &Conn, mut request: Request<Incoming>) -> Response<ProxyBody> {
    let mut exchange = conn.begin(Kind::Http);
    exchange.record().method = Some(request.method().to_string());
    let target = match http_target(&request) {
        Ok(target) => target,
        Err(malformed) => return conn.refuse_malformed(exchange, malformed),
    };
    let generation = conn.generation();
    let path = request.uri().path().to_owned();
    let described = format!("{} http://{target}{path}", request.method());
    describe_target(&mut exchange, &target, &path);

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
        return conn.refuse(exchange, &decision, &described);
    }

    if let Err(detail) = rewrite_for_upstream(&mut request, &target) {
        return conn.refuse_malformed(exchange, Malformed::Bad(detail));
    }
    let request = request.map(|body| Metered::up(body, exchange.counters()));
    match generation.client.request(request).await {
        Ok(response) => relay_response(exchange, response),
        Err(error) => {
            let (reason, address) = match upstream_error(&error) {
                Some(e) => (e.reason(), e.address()),
                None => (Reason::UpstreamFailed, None),
            };
            tracing::info!(id = exchange.id(), "{described}: {error:#}");
            exchange.record().resolved = address;
            conn.refuse(exchange, &Decision::refuse(reason), &described)
        }
    }
}

/// The normalised target of an absolute-form `http://` request, checked
/// against its Host header (invariant 4).
fn http_target(request: &Request<Incoming>) -> Result<HostPort, Malformed> {
    let uri = request.uri();
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return Err(Malformed::Bad(
            "this is a proxy: send absolute-form requests (GET http://host/path)".into(),
        ));
    };
    if *scheme != Scheme::HTTP {
        return Err(Malformed::Bad(format!(
            "only http:// can be forwarded; use CONNECT for {scheme}://"
        )));
    }
    let target =
        HostPort::from_authority(authority, 80).map_err(|e| Malformed::Bad(e.to_string()))?;
    check_host_header(request.headers(), &target, 80)?;
    Ok(target)
}

/// A Host header, when present, must name the same host and port as the
/// target; two Host headers are never acceptable (RFC 9112 §3.2).
pub(crate) fn check_host_header(
    headers: &http::HeaderMap,
    target: &HostPort,
    default_port: u16,
) -> Result<(), Malformed> {
    let mut values = headers.get_all(header::HOST).iter();
    let Some(value) = values.next() else {
        return Ok(());
    };
    if values.next().is_some() {
        return Err(Malformed::Bad("more than one Host header".into()));
    }
    let named = value
        .to_str()
        .ok()
        .and_then(|text| HostPort::parse(text, default_port).ok());
    match named {
        Some(named) if named == *target => Ok(()),
        _ => Err(Malformed::HostMismatch),
    }
}

fn describe_target(exchange: &mut Exchange, target: &HostPort, path: &str) {
    let record = exchange.record();
    record.scheme = Some("http");
    record.host = Some(target.host.to_string());
    record.port = Some(target.port);
    record.path = Some(path.to_owned());
}

/// Origin server view of the request: canonical Host, no hop-by-hop headers,
/// and the normalised authority in the URI so the pool keys on it.
fn rewrite_for_upstream(request: &mut Request<Incoming>, target: &HostPort) -> Result<(), String> {
    strip_hop_by_hop(request.headers_mut());
    let host = if target.port == 80 {
        target.host.to_string()
    } else {
        target.to_string()
    };
    let host_value = HeaderValue::from_str(&host).map_err(|e| e.to_string())?;
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
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn relay_response(mut exchange: Exchange, response: Response<Incoming>) -> Response<ProxyBody> {
    let record = exchange.record();
    record.status = Some(response.status().as_u16());
    record.resolved = response.extensions().get::<Dialed>().map(|d| d.0.ip());
    let (mut parts, body) = response.into_parts();
    // The upstream's HTTP version describes its hop, not ours.
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    let body = Metered::down(body, exchange)
        .map_err(Into::into)
        .boxed_unsync();
    Response::from_parts(parts, body)
}
