//! What a proxy is configured with: limits and timeouts, the phase it
//! serves, and TLS interception.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tollgate_certs::CertificateAuthority;

use crate::metrics::Metrics;
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
    /// Connections one client (an IP address) may hold at once; one more
    /// is closed as soon as it is accepted (`too-many-connections`).
    pub max_client_connections: usize,
    /// Request line plus headers, in bytes.
    pub max_header_bytes: usize,
    /// Phase name stamped on audit records and refusals (set by exec/run).
    pub phase: Option<Arc<str>>,
    /// How long shutdown waits for in-flight requests before closing them.
    pub shutdown_grace: Duration,
    /// TLS interception, when a CA is configured.
    pub interception: Option<Interception>,
    /// Where the proxy counts what it does (`--metrics`).
    pub metrics: Option<Arc<Metrics>>,
}

/// Upstream requests one client connection may have in flight at once
/// (each holds an upstream connection): intercepted HTTP/2 lets a client
/// send many requests on one connection, 32 streams here; past this many,
/// its requests wait for one of its own to finish. Browsers open six
/// connections per host; eight leaves package managers their parallelism.
pub const UPSTREAMS_PER_CONNECTION: usize = 8;

/// Descriptors one client connection may hold at most: its socket, its
/// upstream requests in flight, and its share of the pool's idle upstream
/// connections (the pool keeps at most `max_connections`). A plain tunnel
/// takes six (two sockets, two splice pipes), fewer than this.
const FDS_PER_CONNECTION: u64 = 1 + UPSTREAMS_PER_CONNECTION as u64 + 1;

/// Descriptors kept for the rest of the process: standard streams,
/// listeners, the audit log, the runtime's epoll and wakers, resolver
/// sockets, the CA files, a sandbox's control sockets.
const RESERVED_FDS: u64 = 64;

impl ProxyConfig {
    /// This configuration within an open-file limit of `open_files`:
    /// `max_connections` (and the per-client cap) lowered so that every
    /// connection at its worst fits, and the process limit is never what
    /// fails first. Returns a warning when it had to lower them.
    pub fn within_open_files(mut self, open_files: u64) -> (ProxyConfig, Option<String>) {
        let fits = usize::try_from(open_files.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION)
            .unwrap_or(usize::MAX)
            .max(1);
        let mut warning = None;
        if self.max_connections > fits {
            warning = Some(format!(
                "the open-file limit ({open_files}) fits {fits} connections at {FDS_PER_CONNECTION} descriptors each, not {}; serving {fits} (raise the limit, e.g. `ulimit -n`, for more)",
                self.max_connections
            ));
            // One client keeps the share of the connections it had.
            let share = self.max_client_connections.saturating_mul(fits) / self.max_connections;
            self.max_client_connections = share.max(1);
            self.max_connections = fits;
        }
        self.max_client_connections = self.max_client_connections.min(self.max_connections);
        (self, warning)
    }
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
            // A quarter: four abusive clients, not one, to take them all.
            max_client_connections: 100,
            // squid's request_header_max_size default.
            max_header_bytes: 64 * 1024,
            phase: None,
            shutdown_grace: Duration::from_secs(5),
            interception: None,
            metrics: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_lowered_to_what_the_open_file_limit_fits() {
        // 1,024 descriptors, 64 kept back, 10 a connection: 96.
        let (config, warning) = ProxyConfig::default().within_open_files(1024);
        assert_eq!(config.max_connections, 96);
        // A client keeps its quarter.
        assert_eq!(config.max_client_connections, 24);
        assert!(warning.unwrap().contains("fits 96 connections"));
        // Worst case, every connection's descriptors and the reserve fit.
        let worst = config.max_connections as u64 * FDS_PER_CONNECTION + RESERVED_FDS;
        assert!(worst <= 1024, "{worst}");
    }

    #[test]
    fn a_limit_with_room_changes_nothing() {
        let (config, warning) = ProxyConfig::default().within_open_files(20_000);
        assert_eq!(config.max_connections, 400);
        assert_eq!(config.max_client_connections, 100);
        assert!(warning.is_none());
        let (config, _) = ProxyConfig::default().within_open_files(0);
        assert_eq!(config.max_connections, 1);
    }
}
