//! `tollgate ca init`, and loading the CA for interception.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use tollgate_certs::{create_ca, upstream_roots, Authority};
use tollgate_proxy::Interception;

use crate::cli::CaInitArgs;
use crate::state::StateDir;

/// Hosts whose leaf certificates are kept ready: every host a busy agent
/// session touches, a few MiB at most (a leaf and its config are ~2 KiB).
const LEAF_CACHE_HOSTS: usize = 1024;

pub fn init(args: CaInitArgs, state: &StateDir) -> Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(|| state.ca_dir());
    let files = create_ca(&dir)?;
    println!(
        "created {} and {}",
        files.cert.display(),
        files.key.display()
    );
    println!(
        "clients must trust {} for intercepted HTTPS; see README, \"TLS interception\"",
        files.cert.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A CA loaded for interception, and its certificate for trust bundles.
pub struct LoadedCa {
    pub interception: Interception,
    pub cert_pem: String,
}

/// The CA to intercept with: `--ca-dir`, else the state dir's if one was
/// created there. `None` when neither exists.
pub fn interception(
    ca_dir: Option<&Path>,
    upstream_ca: &[PathBuf],
    state: &StateDir,
) -> Result<Option<LoadedCa>> {
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
    .context("cannot set up TLS for upstream servers")?
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
    }))
}
