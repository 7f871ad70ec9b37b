//! TLS: self-signed loopback servers, the CA `tollgate ca init` makes, and
//! client configurations.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;

use super::upstream::{answer, loopback_server};
use super::{tool_ok, Scratch, BIN};

/// A rustls server config with a self-signed certificate for `names`, and
/// the path of that certificate (PEM, in `scratch`) for clients to trust.
pub fn self_signed_server(
    names: &[&str],
    scratch: &Scratch,
) -> (Arc<rustls::ServerConfig>, PathBuf) {
    let key =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let pem = scratch.write("self-signed.pem", &key.cert.pem());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![key.cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
    )
    .unwrap();
    (Arc::new(config), pem)
}

/// A loopback HTTPS server (certificate for `names`, self-signed) that
/// answers like [`Upstream`]; `ca_pem` is the certificate for curl --cacert.
/// Paths under `/public/slow` answer after 300 ms, and the most such
/// requests it had at once is counted.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub most_slow_at_once: Arc<AtomicUsize>,
    pub ca_pem: PathBuf,
    _scratch: Scratch,
    _runtime: tokio::runtime::Runtime,
}

impl TlsUpstream {
    pub fn start(names: &[&str]) -> TlsUpstream {
        let scratch = Scratch::new("tls");
        let (config, ca_pem) = self_signed_server(names, &scratch);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (runtime, listener, addr) = loopback_server();
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let h = hits.clone();
        let most_slow_at_once = Arc::new(AtomicUsize::new(0));
        let slow = (Arc::new(AtomicUsize::new(0)), most_slow_at_once.clone());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, h, s) = (acceptor.clone(), h.clone(), seen.clone());
                let slow = slow.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (h, s) = (h.clone(), s.clone());
                        let (now, most) = slow.clone();
                        async move {
                            if req.uri().path().starts_with("/public/slow") {
                                let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                                most.fetch_max(at_once, Ordering::SeqCst);
                                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                                now.fetch_sub(1, Ordering::SeqCst);
                            }
                            Ok::<_, hyper::Error>(answer(req, &h, &s).await)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsUpstream {
            addr,
            hits,
            most_slow_at_once,
            ca_pem,
            _scratch: scratch,
            _runtime: runtime,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// An HTTPS server that accepts any WebSocket upgrade and echoes raw bytes.
pub struct WebSocketEcho {
    pub port: u16,
    pub ca_pem: PathBuf,
    _scratch: Scratch,
}

impl WebSocketEcho {
    pub fn start(name: &str) -> WebSocketEcho {
        let scratch = Scratch::new("ws");
        let (config, ca_pem) = self_signed_server(&[name], &scratch);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let config = config.clone();
                std::thread::spawn(move || {
                    let Ok(connection) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut tls = rustls::StreamOwned::new(connection, &mut stream);
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match tls.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let _ = tls.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n");
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = tls.read(&mut buf) {
                        if n == 0 || tls.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        WebSocketEcho {
            port,
            ca_pem,
            _scratch: scratch,
        }
    }
}

/// A CA made by `tollgate ca init` in a scratch dir, for `--ca-dir`.
pub struct Ca {
    dir: Scratch,
}

impl Ca {
    pub fn init() -> Ca {
        let dir = Scratch::new("ca");
        tool_ok(
            Command::new(BIN)
                .args(["ca", "init", "--dir"])
                .arg(dir.path("ca")),
        );
        Ca { dir }
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path("ca")
    }

    pub fn cert(&self) -> PathBuf {
        self.dir().join("ca.crt")
    }
}

/// A rustls client configuration (ring, the default protocol versions, no
/// client certificate) that trusts `roots` only.
pub fn client_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Roots holding the one certificate in the PEM file `path`.
pub fn roots_from(path: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read_to_string(path).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).unwrap();
    roots.add(der).unwrap();
    roots
}

/// The first flight of a rustls client: a ClientHello naming `sni` (an IP
/// server name sends none).
pub fn client_hello(sni: Option<&str>) -> Vec<u8> {
    let config = client_config(rustls::RootCertStore::empty());
    let name = match sni {
        Some(name) => rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap(),
        None => {
            rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into())
        }
    };
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello
}

/// A loopback TLS server (self-signed for `names`) that supports only the
/// P-384 key exchange, so a rustls client, which offers an X25519 key share
/// first, is asked to say hello again (HelloRetryRequest). It records the
/// server name of every handshake it completes.
pub struct RetryingTlsServer {
    pub addr: SocketAddr,
    pub completed: Arc<Mutex<Vec<Option<String>>>>,
    pub ca_pem: PathBuf,
    _scratch: Scratch,
    _runtime: tokio::runtime::Runtime,
}

impl RetryingTlsServer {
    pub fn start(names: &[&str]) -> RetryingTlsServer {
        let scratch = Scratch::new("tls-retry");
        let key = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let ca_pem = scratch.write("self-signed.pem", &key.cert.pem());
        let mut provider = rustls::crypto::ring::default_provider();
        provider.kx_groups = vec![rustls::crypto::ring::kx_group::SECP384R1];
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![key.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (runtime, listener, addr) = loopback_server();
        let completed = Arc::new(Mutex::new(Vec::new()));
        let record = completed.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, record) = (acceptor.clone(), record.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let name = tls.get_ref().1.server_name().map(str::to_owned);
                        record.lock().unwrap().push(name);
                    }
                });
            }
        });
        RetryingTlsServer {
            addr,
            completed,
            ca_pem,
            _scratch: scratch,
            _runtime: runtime,
        }
    }

    pub fn completed(&self) -> Vec<Option<String>> {
        self.completed.lock().unwrap().clone()
    }
}

/// A ClientHello naming `sni` whose only key share is P-384: what a client
/// sends after a HelloRetryRequest from [`RetryingTlsServer`].
pub fn retried_client_hello(sni: &str) -> Vec<u8> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![rustls::crypto::ring::kx_group::SECP384R1];
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello
}

/// `hello` (one record holding one ClientHello) with an extension of type
/// `kind` holding `payload` added at the end of its extensions, lengths
/// fixed.
pub fn with_extension(hello: &[u8], kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut at = 5 + 4 + 2 + 32; // record and handshake headers, version, random
    at += 1 + usize::from(hello[at]); // session id
    at += 2 + usize::from(u16::from_be_bytes([hello[at], hello[at + 1]])); // cipher suites
    at += 1 + usize::from(hello[at]); // compression methods
    let mut out = hello.to_vec();
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
    let added = 4 + payload.len();
    let grow = |bytes: &mut [u8], by: usize| {
        let mut value = 0usize;
        for b in bytes.iter() {
            value = value << 8 | usize::from(*b);
        }
        value += by;
        for (i, b) in bytes.iter_mut().rev().enumerate() {
            *b = (value >> (8 * i)) as u8;
        }
    };
    grow(&mut out[3..5], added);
    grow(&mut out[6..9], added);
    grow(&mut out[at..at + 2], added);
    out
}

/// An outer ECHClientHello (draft-ietf-tls-esni-22 §5): type outer, HKDF-
/// SHA256 with AES-128-GCM, config 42, a 32-byte enc and a 16-byte payload.
pub fn ech_outer_extension() -> Vec<u8> {
    let mut ech = vec![0, 0x00, 0x01, 0x00, 0x01, 42, 0, 32];
    ech.extend_from_slice(&[7; 32]);
    ech.extend_from_slice(&[0, 16]);
    ech.extend_from_slice(&[9; 16]);
    ech
}
