//! Test harness: the real `tollgate` binary, real loopback upstreams that
//! count what reaches them, and real curl. Nothing here leaves 127.0.0.1.
#![allow(dead_code)] // each test crate uses a different part of the harness

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// A private scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tollgate-test-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `tollgate proxy`, killed on drop.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub audit_path: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
    _scratch: Scratch,
}

impl Proxy {
    /// Starts the proxy with `policy` (YAML text) and extra arguments,
    /// listening on an ephemeral loopback port.
    pub fn start(policy: &str, extra: &[&str]) -> Proxy {
        let scratch = Scratch::new("proxy");
        let policy_path = scratch.write("policy.yaml", policy);
        let audit_path = scratch.path("audit.jsonl");
        let mut args: Vec<String> = vec![
            "proxy".into(),
            "--policy".into(),
            policy_path.to_string_lossy().into_owned(),
            "--audit-log".into(),
            audit_path.to_string_lossy().into_owned(),
        ];
        if !extra.contains(&"--listen") {
            args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Proxy::spawn(Command::new(BIN).args(&args), scratch, audit_path)
    }

    /// Starts the proxy on a policy file the test controls (to edit and reload).
    pub fn start_with_policy_file(policy_path: &Path, extra: &[&str]) -> Proxy {
        let scratch = Scratch::new("proxy");
        let audit_path = scratch.path("audit.jsonl");
        let mut command = Command::new(BIN);
        command
            .arg("proxy")
            .arg("--policy")
            .arg(policy_path)
            .arg("--audit-log")
            .arg(&audit_path)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra);
        Proxy::spawn(&mut command, scratch, audit_path)
    }

    /// Spawns a prepared command whose stderr announces "listening on ADDR".
    pub fn spawn(command: &mut Command, scratch: Scratch, audit_path: PathBuf) -> Proxy {
        let mut child = command
            .env("TOLLGATE_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tollgate");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let announced = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("proxy did not start: {:?}", log.lock().unwrap())
            });
        let addr = announced.parse().unwrap_or_else(|_| {
            // A unix listener: tests that use one connect by path.
            "0.0.0.0:0".parse().unwrap()
        });
        Proxy {
            child,
            addr,
            audit_path,
            log,
            _scratch: scratch,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Audit records, waiting up to 5 s for at least `n` of them.
    pub fn audit(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let records = read_audit(&self.audit_path);
            if records.len() >= n || Instant::now() > deadline {
                return records;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last audit record, once there are `n`.
    pub fn audit_nth(&self, n: usize) -> Value {
        let records = self.audit(n);
        assert!(
            records.len() >= n,
            "expected {n} audit records, got {records:#?}"
        );
        records[n - 1].clone()
    }

    pub fn stderr(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; its status code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Complete audit lines; a last line still being written is left for later.
pub fn read_audit(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l}: {e}")))
        .collect()
}

/// A one-thread runtime and a listener on an ephemeral loopback port.
fn loopback_server() -> (tokio::runtime::Runtime, tokio::net::TcpListener, SocketAddr) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    (runtime, listener, addr)
}

/// A loopback HTTP server that answers every request with
/// `upstream saw METHOD PATH host=HOST` and counts what reached it.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// Connections open right now.
    pub open: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<String>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Upstream {
    pub fn start() -> Upstream {
        let (runtime, listener, addr) = loopback_server();
        let hits = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (h, s, o) = (hits.clone(), seen.clone(), open.clone());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (h, s, o) = (h.clone(), s.clone(), o.clone());
                o.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (h, s) = (h.clone(), s.clone());
                        async move { Ok::<_, hyper::Error>(answer(req, &h, &s).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            hits,
            open,
            seen,
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

async fn answer(
    req: Request<Incoming>,
    hits: &AtomicUsize,
    seen: &Mutex<Vec<String>>,
) -> Response<Full<Bytes>> {
    hits.fetch_add(1, Ordering::SeqCst);
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut headers: Vec<String> = req
        .headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .collect();
    headers.sort();
    seen.lock().unwrap().push(format!(
        "{} {} host={host} headers={}",
        req.method(),
        req.uri(),
        headers.join(",")
    ));
    let line = format!("upstream saw {} {} host={host}", req.method(), req.uri());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut text = line;
    if !body.is_empty() {
        text.push_str(&format!(" body={}", body.len()));
    }
    Response::new(Full::new(Bytes::from(text)))
}

/// A TCP listener that records every connection and byte that reaches it:
/// escape tests assert it saw nothing.
pub struct Canary {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub bytes: Arc<AtomicUsize>,
}

impl Canary {
    pub fn start() -> Canary {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let (c, b) = (connections.clone(), bytes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                c.fetch_add(1, Ordering::SeqCst);
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = std::io::Read::read(&mut stream, &mut buf) {
                        if n == 0 {
                            break;
                        }
                        b.fetch_add(n, Ordering::SeqCst);
                    }
                });
            }
        });
        Canary {
            addr,
            connections,
            bytes,
        }
    }

    pub fn untouched(&self) -> bool {
        self.connections.load(Ordering::SeqCst) == 0 && self.bytes.load(Ordering::SeqCst) == 0
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }
}

/// What curl got back.
#[derive(Debug)]
pub struct CurlResult {
    pub status: u16,
    /// The proxy's answer to curl's CONNECT (0 when there was none).
    pub connect_status: u16,
    pub headers: String,
    pub body: String,
    pub exit: i32,
    pub stderr: String,
}

impl CurlResult {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// Runs real curl with a 10 s limit; `-D` captures the last response's headers.
pub fn curl(args: &[&str]) -> CurlResult {
    let scratch = Scratch::new("curl");
    let headers = scratch.path("headers");
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{http_connect}",
        ])
        .arg("-D")
        .arg(&headers)
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("NO_PROXY")
        .output()
        .expect("curl must be installed");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, codes) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let (code, connect) = codes.split_once(' ').unwrap_or((codes, "0"));
    CurlResult {
        status: code.trim().parse().unwrap_or(0),
        connect_status: connect.trim().parse().unwrap_or(0),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: body.to_owned(),
        exit: output.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// curl through `proxy`.
pub fn curl_via(proxy: &Proxy, args: &[&str]) -> CurlResult {
    let mut all = vec!["--proxy", proxy.url().leak() as &str];
    all.extend_from_slice(args);
    curl(&all)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips (loudly) a test that needs root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::common::is_root() {
            eprintln!("SKIP: this test needs root (namespaces); run the suite as root");
            return;
        }
    };
}

/// A policy allowing the given loopback ports on 127.0.0.1 and on the
/// names in `hosts` (which map to 127.0.0.1).
pub fn loopback_policy(ports: &[u16], extra: &str) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "version: 1\nmode: limited\nallow:\n  - host: 127.0.0.1\n    ports: [{p}]\n  - host: allowed.test\n    ports: [{p}]\nhosts:\n  allowed.test: 127.0.0.1\n  other.test: 127.0.0.1\nallow_internal: [127.0.0.1/32]\n{extra}",
        p = ports.join(", ")
    )
}

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
pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
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
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, h, s) = (acceptor.clone(), h.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (h, s) = (h.clone(), s.clone());
                        async move { Ok::<_, hyper::Error>(answer(req, &h, &s).await) }
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
