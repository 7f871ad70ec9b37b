//! Reaching an upstream server the policy has allowed: resolve the name
//! (static `hosts:` first, then the system resolver, bounded by a timeout),
//! pass every address through the internal-address guard, then dial one of the
//! addresses that were checked — never the name again (invariant 2).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpStream;

use crate::decision::Reason;
use crate::guard::Refusal;
use crate::host::{Host, HostPort};
use crate::policy::Policy;

/// Time limits for reaching an upstream.
#[derive(Debug, Clone, Copy)]
pub struct DialTimeouts {
    pub resolve: Duration,
    pub connect: Duration,
}

#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("cannot resolve {host}: {detail}")]
    Resolve { host: String, detail: String },
    #[error("{host} resolves to {ip}, which is {refusal}")]
    Internal {
        host: String,
        ip: IpAddr,
        refusal: Refusal,
    },
    #[error("cannot connect to {host} ({addr}): {source}")]
    Connect {
        host: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("TLS with {host} ({addr}) failed: {detail}")]
    Tls {
        host: String,
        addr: SocketAddr,
        detail: String,
    },
}

impl UpstreamError {
    pub fn reason(&self) -> Reason {
        match self {
            UpstreamError::Resolve { .. } => Reason::ResolveFailed,
            UpstreamError::Internal { .. } => Reason::InternalAddress,
            UpstreamError::Connect { .. } | UpstreamError::Tls { .. } => Reason::UpstreamFailed,
        }
    }

    /// The address the error concerns, for the audit log's `resolved`.
    pub fn address(&self) -> Option<IpAddr> {
        match self {
            UpstreamError::Resolve { .. } => None,
            UpstreamError::Internal { ip, .. } => Some(*ip),
            UpstreamError::Connect { addr, .. } | UpstreamError::Tls { addr, .. } => {
                Some(addr.ip())
            }
        }
    }
}

/// Resolves, guards and dials `target`; returns the stream and the address
/// actually dialled.
pub async fn dial(
    policy: &Policy,
    target: &HostPort,
    timeouts: DialTimeouts,
) -> Result<(TcpStream, SocketAddr), UpstreamError> {
    let addresses = resolve(policy, target, timeouts.resolve).await?;
    check_all(policy, target, &addresses)?;
    connect_first(target, &addresses, timeouts.connect).await
}

/// Every address of the target, in resolver order, without duplicates.
async fn resolve(
    policy: &Policy,
    target: &HostPort,
    timeout: Duration,
) -> Result<Vec<IpAddr>, UpstreamError> {
    let name = match &target.host {
        Host::Ip(ip) => return Ok(vec![*ip]),
        Host::Name(name) => name,
    };
    if let Some(ip) = policy.static_address(name) {
        return Ok(vec![ip]);
    }
    let failed = |detail: String| UpstreamError::Resolve {
        host: name.as_str().to_owned(),
        detail,
    };
    // Fully qualified (trailing dot), so resolv.conf `search` domains cannot
    // turn the name the policy decided on into another one (`intranet` into
    // `intranet.corp.example`).
    let fqdn = format!("{}.", name.as_str());
    let lookup = tokio::net::lookup_host((fqdn.as_str(), target.port));
    let found = tokio::time::timeout(timeout, lookup)
        .await
        .map_err(|_| failed(format!("no answer within {timeout:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    let mut addresses: Vec<IpAddr> = Vec::new();
    for addr in found {
        if !addresses.contains(&addr.ip()) {
            addresses.push(addr.ip());
        }
    }
    if addresses.is_empty() {
        return Err(failed("no addresses".into()));
    }
    Ok(addresses)
}

/// A name with even one internal address is refused: a resolver that mixes
/// public and internal answers is how DNS rebinding gets in.
fn check_all(
    policy: &Policy,
    target: &HostPort,
    addresses: &[IpAddr],
) -> Result<(), UpstreamError> {
    for ip in addresses {
        policy
            .guard()
            .check(*ip)
            .map_err(|refusal| UpstreamError::Internal {
                host: target.host.to_string(),
                ip: *ip,
                refusal,
            })?;
    }
    Ok(())
}

async fn connect_first(
    target: &HostPort,
    addresses: &[IpAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), UpstreamError> {
    let mut last = None;
    for ip in addresses {
        let addr = SocketAddr::new(*ip, target.port);
        let attempt = tokio::time::timeout(timeout, TcpStream::connect(addr)).await;
        let error = match attempt {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr));
            }
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ),
        };
        last = Some(UpstreamError::Connect {
            host: target.host.to_string(),
            addr,
            source: error,
        });
    }
    Err(last.unwrap_or_else(|| UpstreamError::Resolve {
        host: target.host.to_string(),
        detail: "no addresses".into(),
    }))
}
