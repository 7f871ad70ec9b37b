//! `tollgate proxy` as a process: started on a policy, listening on an
//! ephemeral loopback port (or a unix socket), its audit log and stderr
//! kept; real curl through it; and a raw CONNECT for Rust TLS clients.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::{poll, Scratch, BIN};

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
        poll(Duration::from_secs(5), || {
            let records = read_audit(&self.audit_path);
            (records.len() >= n).then_some(records)
        })
        .unwrap_or_else(|| read_audit(&self.audit_path))
    }

    /// The first audit record matching `pred`, waiting up to 5 s for one.
    pub fn audit_where(&self, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        poll(Duration::from_secs(5), || {
            read_audit(&self.audit_path).into_iter().find(&pred)
        })
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
        poll(timeout, || self.child.try_wait().unwrap()).and_then(|status| status.code())
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

/// A policy allowing the given loopback ports on 127.0.0.1 and on the
/// names in `hosts` (which map to 127.0.0.1).
pub fn loopback_policy(ports: &[u16], extra: &str) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "version: 1\nmode: limited\nallow:\n  - host: 127.0.0.1\n    ports: [{p}]\n  - host: allowed.test\n    ports: [{p}]\nhosts:\n  allowed.test: 127.0.0.1\n  other.test: 127.0.0.1\nallow_internal: [127.0.0.1/32]\n{extra}",
        p = ports.join(", ")
    )
}

/// Opens a CONNECT tunnel to `host:port` through `proxy`, which must
/// answer 200; the stream is the tunnel.
pub async fn connect_tunnel(proxy: &Proxy, host: &str, port: u16) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let connect = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
    stream.write_all(connect.as_bytes()).await.unwrap();
    let mut head = [0u8; 1024];
    let n = stream.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    stream
}
