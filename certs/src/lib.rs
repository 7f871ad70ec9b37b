//! tollgate's certificate authority.
//!
//! TLS interception needs a CA that sandboxes trust and a certificate per
//! intercepted host. This crate
//!
//! - creates a CA (`tollgate ca init`): [`create_ca`] writes `ca.crt` (0644)
//!   and `ca.key` (0600) and never overwrites them;
//! - loads one ([`Authority::load`]), refusing files that are missing,
//!   readable by others, malformed, not a CA, or a key that does not match;
//! - mints leaf certificates per host behind a bounded cache
//!   ([`LeafIssuer`]), once per host however many connections ask at once;
//! - builds trust anchors: [`upstream_roots`] for verifying upstream servers
//!   and [`trust_bundle`] (system roots + our CA) for tools inside sandboxes.
//!
//! The proxy sees only [`CertificateAuthority`], so it does not know how
//! certificates are made.

#![forbid(unsafe_code)]

mod authority;
mod error;
mod files;
mod issuer;
mod roots;
#[cfg(test)]
mod test_support;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

pub use authority::{create_ca, Authority};
pub use error::{CertError, OneLine};
pub use files::{CaFiles, CA_CERT_FILE, CA_KEY_FILE};
pub use issuer::{LeafIssuer, LEAF_RENEW_MARGIN, LEAF_VALIDITY};
pub use roots::{trust_bundle, upstream_roots};

/// What a leaf certificate is for. The proxy converts its normalised host into this.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeafName {
    /// A DNS name, e.g. `api.example.com` (lowercase, no trailing dot, punycode).
    Dns(String),
    /// An IP address, for clients that connect to one directly.
    Ip(IpAddr),
}

impl fmt::Display for LeafName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeafName::Dns(name) => f.write_str(name),
            LeafName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Which application protocols an intercepting server config offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Alpn {
    /// `h2` then `http/1.1`: what browsers and most clients expect.
    #[default]
    H2AndHttp1,
    /// `http/1.1` only, for when the proxy cannot speak HTTP/2 to the client.
    Http1Only,
}

/// The one thing the proxy needs from a CA: a ready server config per host.
pub trait CertificateAuthority: Send + Sync {
    /// A rustls ServerConfig presenting a certificate for `name` that chains to the CA,
    /// with ALPN ["h2", "http/1.1"]. Cached: the first call for a name mints, later and
    /// concurrent calls for the same name get the same Arc without minting again.
    fn server_config(&self, name: &LeafName) -> Result<Arc<rustls::ServerConfig>, CertError>;

    /// Like [`server_config`](Self::server_config), offering the protocols in `alpn`.
    ///
    /// [`LeafIssuer`] caches both variants from one minted certificate. The
    /// default, for other implementations, copies the config on every call.
    fn server_config_for(
        &self,
        name: &LeafName,
        alpn: Alpn,
    ) -> Result<Arc<rustls::ServerConfig>, CertError> {
        let config = self.server_config(name)?;
        match alpn {
            Alpn::H2AndHttp1 => Ok(config),
            Alpn::Http1Only => {
                let mut http1 = (*config).clone();
                http1.alpn_protocols = vec![b"http/1.1".to_vec()];
                Ok(Arc::new(http1))
            }
        }
    }
}
