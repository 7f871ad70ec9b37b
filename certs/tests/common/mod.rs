//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "tollgate-certs-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A directory holding a freshly created CA.
pub fn new_ca(label: &str) -> (TempDir, PathBuf) {
    let tmp = TempDir::new(label);
    let dir = tmp.join("ca");
    tollgate_certs::create_ca(&dir).unwrap();
    (tmp, dir)
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config trusting only `ca`.
pub fn client_trusting(ca: CertificateDer<'static>, alpn: &[&[u8]]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// Runs a TLS handshake in memory and exchanges one message each way.
/// Returns the client connection (for its peer certificates and ALPN).
pub fn handshake(
    client_config: ClientConfig,
    server_config: Arc<ServerConfig>,
    server_name: &str,
) -> Result<ClientConnection, rustls::Error> {
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let mut client = ClientConnection::new(Arc::new(client_config), name)?;
    let mut server = ServerConnection::new(server_config)?;
    for _ in 0..20 {
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
        pump(&mut client, &mut server)?;
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());

    client.writer().write_all(b"ping").unwrap();
    pump(&mut client, &mut server)?;
    let mut got = [0u8; 4];
    server.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    server.writer().write_all(b"pong").unwrap();
    pump(&mut client, &mut server)?;
    client.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    Ok(client)
}

/// Moves all pending TLS records client -> server and server -> client.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), rustls::Error> {
    let mut buf = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut buf).unwrap();
    }
    let mut slice = &buf[..];
    while !slice.is_empty() {
        server.read_tls(&mut slice).unwrap();
        server.process_new_packets()?;
    }
    buf.clear();
    while server.wants_write() {
        server.write_tls(&mut buf).unwrap();
    }
    let mut slice = &buf[..];
    while !slice.is_empty() {
        client.read_tls(&mut slice).unwrap();
        client.process_new_packets()?;
    }
    Ok(())
}

/// The single certificate in a PEM file.
pub fn cert_from_pem_file(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

/// Asserts an error message is one line and contains every fragment.
pub fn assert_message(err: &tollgate_certs::CertError, fragments: &[&str]) {
    let text = err.to_string();
    assert!(!text.contains('\n'), "message spans lines: {text}");
    for fragment in fragments {
        assert!(text.contains(fragment), "{text:?} lacks {fragment:?}");
    }
}
