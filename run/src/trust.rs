//! The CA a sandbox's proxy intercepts TLS with, and the trust anchors it
//! verifies upstream servers against.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use tollgate_certs::{upstream_roots, Authority, CertError};
use tollgate_proxy::Interception;

use crate::state::StateDir;

/// Hosts whose leaf certificates are kept ready: every host a busy agent
/// session touches, a few MiB at most (a leaf and its config are ~2 KiB).
const LEAF_CACHE_HOSTS: usize = 1024;

#[derive(Debug, Error)]
pub enum TrustError {
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error("cannot set up TLS for upstream servers: {0}")]
    UpstreamTls(#[source] rustls::Error),
}

/// A CA loaded for interception, its certificate for the sandbox's trust
/// bundle, and where it lives (hidden from every sandbox).
pub struct LoadedCa {
    pub interception: Interception,
    pub cert_pem: String,
    pub dir: PathBuf,
}

/// The CA to intercept with: `ca_dir`, else the state dir's if one was
/// created there. `None` when neither exists.
pub fn load_ca(
    ca_dir: Option<&Path>,
    upstream_ca: &[PathBuf],
    state: &StateDir,
) -> Result<Option<LoadedCa>, TrustError> {
    let dir = match ca_dir {
        Some(dir) => dir.to_owned(),
        None if state.ca_dir().join("ca.crt").exists() => state.ca_dir(),
        None => return Ok(None),
    };
    let authority = Authority::load(&dir)?;
    let roots = upstream_roots(upstream_ca)?;
    let mut upstream_tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TrustError::UpstreamTls)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    upstream_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    tracing::info!("TLS interception with the CA in {}", dir.display());
    let cert_pem = authority.cert_pem().to_owned();
    Ok(Some(LoadedCa {
        interception: Interception {
            authority: Arc::new(authority.into_issuer(LEAF_CACHE_HOSTS)),
            upstream_tls: Arc::new(upstream_tls),
        },
        cert_pem,
        dir,
    }))
}
