//! Where a request is going: the request target of an absolute-form HTTP
//! request, of a CONNECT, or of a request inside an intercepted tunnel,
//! normalised, and checked against the Host header and `:authority` the
//! request also carries (invariant 4). hyper parses the request;
//! `http::uri::Authority` and [`HostPort`] read hosts and ports.

use http::header::{self, HeaderMap};
use http::uri::Scheme;
use http::Request;

use crate::host::HostPort;

/// Why a request could not even be decided.
#[derive(Debug)]
pub(crate) enum Malformed {
    Bad(String),
    HostMismatch,
}

/// The normalised target of an absolute-form `http://` request, checked
/// against its Host header.
pub(crate) fn http_target<B>(request: &Request<B>) -> Result<HostPort, Malformed> {
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

/// The CONNECT authority (host and an explicit port, RFC 9110 §9.3.6),
/// checked against a Host header if the client sent one.
pub(crate) fn connect_target<B>(request: &Request<B>) -> Result<HostPort, Malformed> {
    let Some(authority) = request.uri().authority() else {
        return Err(Malformed::Bad("CONNECT needs a host:port target".into()));
    };
    if authority.port().is_none() {
        return Err(Malformed::Bad("CONNECT target needs a port".into()));
    }
    let target =
        HostPort::from_authority(authority, 443).map_err(|e| Malformed::Bad(e.to_string()))?;
    check_host_header(request.headers(), &target, 443)?;
    Ok(target)
}

/// Inside an intercepted tunnel, the request's own authority — the URI's
/// (HTTP/2 `:authority`, or an absolute-form target) and the Host header —
/// must name the CONNECT host.
pub(crate) fn check_authority<B>(request: &Request<B>, target: &HostPort) -> Result<(), Malformed> {
    if let Some(authority) = request.uri().authority() {
        match HostPort::from_authority(authority, 443) {
            Ok(named) if named == *target => {}
            _ => return Err(Malformed::HostMismatch),
        }
    }
    check_host_header(request.headers(), target, 443)
}

/// A Host header, when present, must name the same host and port as the
/// target; two Host headers are never acceptable (RFC 9112 §3.2).
fn check_host_header(
    headers: &HeaderMap,
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

/// `host[:port]`, the port only when it is not the scheme's default: the
/// Host header we send, and the authority of URLs in refusals.
pub(crate) fn authority_text(scheme: &Scheme, target: &HostPort) -> String {
    let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    if target.port == default_port {
        target.host.to_string()
    } else {
        target.to_string()
    }
}
