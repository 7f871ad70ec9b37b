//! Trust anchors: for verifying upstream servers, and for sandboxes; and the
//! PEM reading and writing of certificates that the CA shares with them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::error::{CertError, OneLine};
use crate::files;

/// Roots for verifying upstream servers: the system's, plus every
/// certificate in each `extra` PEM file (`--upstream-ca`, e.g. a corporate CA).
///
/// System certificates that cannot be loaded or parsed are reported with
/// `tracing::warn` and skipped, as browsers do; an `extra` file that cannot
/// be read, holds no certificate, or holds one that is not a usable trust
/// anchor is an error naming the file, since the operator asked for it.
pub fn upstream_roots(extra: &[PathBuf]) -> Result<RootCertStore, CertError> {
    let mut store = RootCertStore::empty();
    let system = system_roots();
    let (added, ignored) = store.add_parsable_certificates(system);
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "skipped system CA certificates that are not valid trust anchors"
        );
    }
    if added == 0 && extra.is_empty() {
        tracing::warn!("no system CA certificates and no --upstream-ca: every HTTPS upstream will fail verification; install the ca-certificates package or pass --upstream-ca");
    }
    for path in extra {
        add_upstream_file(&mut store, path)?;
    }
    Ok(store)
}

fn add_upstream_file(store: &mut RootCertStore, path: &Path) -> Result<(), CertError> {
    let refuse = |reason: String| CertError::UpstreamCa {
        path: path.to_path_buf(),
        reason: OneLine::new(reason),
    };
    let text = files::read_pem_file(path)?;
    let certs = pem_certificates(&text).map_err(refuse)?;
    for (index, cert) in certs.into_iter().enumerate() {
        store.add(cert).map_err(|e| {
            refuse(format!(
                "certificate #{} is not a usable CA: {e}",
                index + 1
            ))
        })?;
    }
    Ok(())
}

/// PEM text for sandboxes: the system roots, then our CA, so that tools inside
/// trust both public sites (reached through the proxy without interception)
/// and intercepted ones.
///
/// Duplicates are dropped. An empty or unreadable system store is reported
/// with `tracing::warn`, and the bundle then holds only our CA.
pub fn trust_bundle(authority_pem: &str) -> Result<String, CertError> {
    let ours =
        pem_certificates(authority_pem.as_bytes()).map_err(|reason| CertError::BundleCa {
            reason: OneLine::new(reason),
        })?;
    let system = system_roots();
    if system.is_empty() {
        tracing::warn!("no system CA certificates found: the sandbox trust bundle holds only tollgate's CA, so only intercepted HTTPS will verify inside");
    }
    // Ours go last, once, even if the system store already holds a copy.
    let mut seen: HashSet<&[u8]> = ours.iter().map(|c| c.as_ref()).collect();
    let mut bundle = String::new();
    for cert in &system {
        if seen.insert(cert.as_ref()) {
            bundle.push_str(&certificate_pem(cert));
        }
    }
    let mut written = HashSet::new();
    for cert in &ours {
        if written.insert(cert.as_ref()) {
            bundle.push_str(&certificate_pem(cert));
        }
    }
    Ok(bundle)
}

/// The system's CA certificates, with load problems logged.
fn system_roots() -> Vec<CertificateDer<'static>> {
    let result = rustls_native_certs::load_native_certs();
    for error in &result.errors {
        tracing::warn!(%error, "could not load some system CA certificates");
    }
    result.certs
}

/// All certificates in PEM text, or the reason there are none usable.
pub(crate) fn pem_certificates(text: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("malformed PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no -----BEGIN CERTIFICATE----- block".to_string());
    }
    Ok(certs)
}

/// A DER certificate as one PEM block ending in a newline, written the way
/// rcgen writes `ca.crt` (64-character lines, LF).
pub(crate) fn certificate_pem(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), config)
}
