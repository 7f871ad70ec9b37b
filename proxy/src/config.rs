//! What a proxy is configured with: limits and timeouts, the phase it
//! serves, and TLS interception.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tollgate_certs::CertificateAuthority;

use crate::upstream::DialTimeouts;

/// What interception needs: a CA to present leaves for intercepted hosts,
/// and the trust anchors for verifying upstream servers.
#[derive(Clone)]
pub struct Interception {
    pub authority: Arc<dyn CertificateAuthority>,
    pub upstream_tls: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for Interception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Interception")
    }
}

/// Limits and timeouts; the defaults are what `tollgate proxy` uses.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Time a client has to send a request's headers; also how long an idle
    /// keep-alive connection is kept.
    pub header_timeout: Duration,
    /// Tunnels with no byte either way for this long are closed.
    pub tunnel_idle_timeout: Duration,
    /// Time an upstream has to start its response.
    pub response_timeout: Duration,
    pub dial: DialTimeouts,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Request line plus headers, in bytes.
    pub max_header_bytes: usize,
    /// Phase name stamped on audit records and refusals (set by exec/run).
    pub phase: Option<Arc<str>>,
    /// How long shutdown waits for in-flight requests before closing them.
    pub shutdown_grace: Duration,
    /// TLS interception, when a CA is configured.
    pub interception: Option<Interception>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            // hyper's own default, and what nginx uses (client_header_timeout 60s halved).
            header_timeout: Duration::from_secs(30),
            // squid's read_timeout is 15 min; 5 min keeps long downloads alive.
            tunnel_idle_timeout: Duration::from_secs(300),
            // squid's read_timeout is 15 min; a registry that has not started
            // answering in 2 min is gone, and the client deserves a 502.
            response_timeout: Duration::from_secs(120),
            dial: DialTimeouts {
                resolve: Duration::from_secs(5),
                connect: Duration::from_secs(10),
            },
            // Six descriptors per tunnel (sockets and splice pipes): 2400 fds,
            // within the hard open-file limit of common distributions (4096+).
            max_connections: 400,
            // squid's request_header_max_size default.
            max_header_bytes: 64 * 1024,
            phase: None,
            shutdown_grace: Duration::from_secs(5),
            interception: None,
        }
    }
}
