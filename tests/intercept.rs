//! TLS interception end to end: the real binary with a CA made by
//! `tollgate ca init`, real curl (HTTP/1.1 and HTTP/2) and a Rust client,
//! and HTTPS upstreams on 127.0.0.1 whose certificates come from a test CA
//! given to the proxy with --upstream-ca. Nothing leaves 127.0.0.1.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;

#[test]
fn get_is_allowed_and_other_methods_refused_over_http1_and_http2() {
    let ca = Ca::init();
    let upstream = TlsUpstream::start(&["allowed.test"]);
    let proxy = intercepting_proxy(&ca, &upstream);
    let url = format!("https://allowed.test:{}/public/pkg", upstream.port());
    for version in ["--http1.1", "--http2"] {
        let r = https(&ca, &proxy, version, &[], &url);
        assert_eq!(r.status, 200, "{version}: {r:?}");
        assert!(
            r.body.starts_with("upstream saw GET /public/pkg"),
            "{}",
            r.body
        );
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let r = https(
                &ca,
                &proxy,
                version,
                &["-X", method, "-d", "secret=1"],
                &url,
            );
            assert_eq!(r.status, 403, "{version} {method}: {r:?}");
            assert_eq!(
                r.header("x-tollgate-reason").as_deref(),
                Some("method-not-allowed")
            );
            assert!(
                r.body
                    .starts_with(&format!("tollgate: blocked {method} https://allowed.test:")),
                "{}",
                r.body
            );
        }
    }
    assert_eq!(
        upstream.hits(),
        2,
        "refused requests must not reach upstream"
    );
    // Ten curl runs: ten CONNECT records and ten intercepted requests.
    let records = proxy.audit(20);
    let mitm: Vec<_> = records.iter().filter(|r| r["kind"] == "mitm").collect();
    assert_eq!(mitm.len(), 10, "{records:#?}");
    assert!(mitm
        .iter()
        .all(|r| r["path"] == "/public/pkg" && r["scheme"] == "https"));
    let text = std::fs::read_to_string(&proxy.audit_path).unwrap();
    assert!(!text.contains("secret"), "a body reached the audit log");
}

#[test]
fn path_rules_apply_inside_https() {
    let ca = Ca::init();
    let upstream = TlsUpstream::start(&["allowed.test"]);
    let proxy = intercepting_proxy(&ca, &upstream);
    let base = format!("https://allowed.test:{}", upstream.port());
    let r = https(&ca, &proxy, "--http1.1", &[], &format!("{base}/public/a/b"));
    assert_eq!(r.status, 200);
    for path in ["/private", "/public/../private", "/publicity"] {
        let r = https(
            &ca,
            &proxy,
            "--http2",
            &["--path-as-is"],
            &format!("{base}{path}"),
        );
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(
            r.header("x-tollgate-reason").as_deref(),
            Some("path-not-allowed")
        );
    }
    assert_eq!(upstream.hits(), 1);
}

#[test]
fn host_header_and_authority_must_name_the_connect_host() {
    let ca = Ca::init();
    let upstream = TlsUpstream::start(&["allowed.test", "other.test"]);
    let proxy = intercepting_proxy(&ca, &upstream);
    let url = format!("https://allowed.test:{}/public/x", upstream.port());
    let host = format!("Host: other.test:{}", upstream.port());
    // curl sends the Host header as :authority over HTTP/2.
    for version in ["--http1.1", "--http2"] {
        let r = https(&ca, &proxy, version, &["-H", &host], &url);
        assert_eq!(r.status, 403, "{version}: {r:?}");
        assert_eq!(
            r.header("x-tollgate-reason").as_deref(),
            Some("host-mismatch")
        );
    }
    assert_eq!(upstream.hits(), 0);
}

#[test]
fn the_leaf_names_the_host_and_chains_to_our_ca() {
    let ca = Ca::init();
    let upstream = TlsUpstream::start(&["allowed.test"]);
    let proxy = intercepting_proxy(&ca, &upstream);
    // A client that trusts only our CA completes the handshake for the
    // CONNECT host, and refuses it for any other name.
    let ok = handshake_via(
        &proxy,
        "allowed.test",
        upstream.port(),
        "allowed.test",
        &ca.cert(),
    );
    assert!(ok.is_ok(), "{ok:?}");
    // The upstream's own certificate is not what the client saw.
    let r = curl_via(
        &proxy,
        &[
            "--cacert",
            upstream.ca_pem.to_str().unwrap(),
            &format!("https://allowed.test:{}/public/", upstream.port()),
        ],
    );
    assert_ne!(
        r.status, 200,
        "client saw the upstream certificate: not intercepted"
    );
}

#[test]
fn an_upstream_with_an_untrusted_certificate_is_refused() {
    let ca = Ca::init();
    let upstream = TlsUpstream::start(&["allowed.test"]);
    // No --upstream-ca: the upstream's self-signed certificate is untrusted.
    let proxy = Proxy::start(
        &policy_for(upstream.port()),
        &["--ca-dir", ca.dir().to_str().unwrap()],
    );
    let url = format!("https://allowed.test:{}/public/x", upstream.port());
    let r = https(&ca, &proxy, "--http1.1", &[], &url);
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        r.header("x-tollgate-reason").as_deref(),
        Some("upstream-failed")
    );
    assert_eq!(upstream.hits(), 0);
    let mitm = proxy
        .audit(2)
        .into_iter()
        .find(|r| r["kind"] == "mitm")
        .expect("a mitm record");
    assert_eq!(mitm["decision"], "allow", "{mitm}");
    assert_eq!(mitm["outcome"], "upstream-failed", "{mitm}");
}

/// hyper answers a request it cannot parse inside an intercepted tunnel by
/// itself; the proxy still records it, with the tunnel's host and port.
#[test]
fn a_malformed_request_inside_an_intercepted_tunnel_is_recorded() {
    let ca = Ca::init();
    let upstream = TlsUpstream::start(&["allowed.test"]);
    let proxy = intercepting_proxy(&ca, &upstream);
    let port = upstream.port();
    let reply = raw_request_in_tunnel(
        &proxy,
        &ca,
        port,
        b"GET /public/ HTTP/1.1\r\nBad Header\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let record = proxy
        .audit_where(|r| r["kind"] == "mitm")
        .expect("a record of the malformed request");
    assert_eq!(record["decision"], "deny", "{record}");
    assert_eq!(record["reason"], "bad-request", "{record}");
    assert_eq!(record["status"], 400, "{record}");
    assert_eq!(record["host"], "allowed.test", "{record}");
    assert_eq!(record["port"], port, "{record}");
    assert_eq!(upstream.hits(), 0);
}

#[test]
fn ip_literal_hosts_are_intercepted_with_an_ip_certificate() {
    let ca = Ca::init();
    let upstream = TlsUpstream::start(&["127.0.0.1"]);
    let proxy = intercepting_proxy(&ca, &upstream);
    let url = format!("https://127.0.0.1:{}/x", upstream.port());
    let r = https(&ca, &proxy, "--http1.1", &[], &url);
    assert_eq!(r.status, 200, "{r:?}");
    let r = https(&ca, &proxy, "--http1.1", &["-X", "DELETE"], &url);
    assert_eq!(
        r.header("x-tollgate-reason").as_deref(),
        Some("method-not-allowed")
    );
}

#[test]
fn hosts_without_method_or_path_rules_stay_plain_tunnels() {
    let ca = Ca::init();
    let upstream = TlsUpstream::start(&["plain.test"]);
    let proxy = intercepting_proxy(&ca, &upstream);
    // The client trusts only the upstream's certificate: it works, so the
    // proxy did not terminate TLS.
    let url = format!("https://plain.test:{}/anything", upstream.port());
    let r = curl_via(
        &proxy,
        &[
            "-X",
            "POST",
            "--cacert",
            upstream.ca_pem.to_str().unwrap(),
            &url,
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let record = proxy.audit_nth(1);
    assert_eq!(record["kind"], "connect");
    assert_eq!(record["decision"], "allow");
}

#[test]
fn websocket_upgrades_work_through_an_intercepted_tunnel() {
    let ca = Ca::init();
    let upstream = WebSocketEcho::start("allowed.test");
    let proxy = Proxy::start(
        &policy_for(upstream.port),
        &[
            "--ca-dir",
            ca.dir().to_str().unwrap(),
            "--upstream-ca",
            upstream.ca_pem.to_str().unwrap(),
        ],
    );
    let echoed = websocket_echo_via(
        &proxy,
        upstream.port,
        &ca.cert(),
        b"hello through the tunnel",
    );
    assert_eq!(echoed.as_deref(), Ok(&b"hello through the tunnel"[..]));
    let mitm = proxy
        .audit(2)
        .into_iter()
        .find(|r| r["kind"] == "mitm")
        .expect("a mitm record");
    assert_eq!(mitm["status"], 101);
    assert!(mitm["bytes_up"].as_u64().unwrap() >= 24, "{mitm}");
}

#[test]
fn ca_init_writes_private_files_and_refuses_to_overwrite() {
    let ca = Ca::init();
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&ca.dir().join("ca.key")), 0o600);
    let before = std::fs::read(ca.dir().join("ca.key")).unwrap();
    let out = Command::new(BIN)
        .args(["ca", "init", "--dir"])
        .arg(ca.dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert_eq!(std::fs::read(ca.dir().join("ca.key")).unwrap(), before);
}

#[test]
fn bad_ca_files_are_refused_with_one_clear_line() {
    let policy = policy_for(443);
    type Spoil = fn(&Path);
    let cases: [(&str, Spoil); 4] = [
        ("chmod 600", |dir| {
            std::fs::set_permissions(
                dir.join("ca.key"),
                std::os::unix::fs::PermissionsExt::from_mode(0o644),
            )
            .unwrap()
        }),
        ("ca.crt", |dir| {
            std::fs::write(dir.join("ca.crt"), "garbage").unwrap()
        }),
        ("ca.key", |dir| {
            std::fs::write(
                dir.join("ca.key"),
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            )
            .unwrap()
        }),
        ("tollgate ca init", |dir| {
            std::fs::remove_file(dir.join("ca.crt")).unwrap()
        }),
    ];
    for (expected, spoil) in cases {
        let ca = Ca::init();
        spoil(&ca.dir());
        let scratch = Scratch::new("badca");
        let policy_path = scratch.write("p.yaml", &policy);
        let out = Command::new(BIN)
            .args(["proxy", "--listen", "127.0.0.1:0", "--policy"])
            .arg(&policy_path)
            .arg("--ca-dir")
            .arg(ca.dir())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{expected}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

/// TLS handshake through a CONNECT with a client trusting only `root`.
fn handshake_via(
    proxy: &Proxy,
    host: &str,
    port: u16,
    sni: &str,
    root: &Path,
) -> Result<(), String> {
    block_on(async {
        let stream = connect_tunnel(proxy, host, port).await;
        let connector = tls_connector(root);
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        connector
            .connect(name, stream)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

/// A TLS client trusting only `root`, offering HTTP/1.1.
fn tls_connector(root: &Path) -> tokio_rustls::TlsConnector {
    let mut config = client_config(roots_from(root));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Opens a WebSocket through the proxy (CONNECT, TLS to our CA, Upgrade),
/// sends `message` as raw bytes after the 101 and returns what came back.
fn websocket_echo_via(
    proxy: &Proxy,
    port: u16,
    root: &Path,
    message: &[u8],
) -> Result<Vec<u8>, String> {
    block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let stream = connect_tunnel(proxy, "allowed.test", port).await;
        let name = rustls::pki_types::ServerName::try_from("allowed.test".to_owned()).unwrap();
        let mut tls = tls_connector(root)
            .connect(name, stream)
            .await
            .map_err(|e| e.to_string())?;
        let upgrade = format!(
            "GET /public/ws HTTP/1.1\r\nHost: allowed.test:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        tls.write_all(upgrade.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tls.read(&mut byte).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!("closed after {}", String::from_utf8_lossy(&head)));
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(head);
        }
        tls.write_all(message).await.map_err(|e| e.to_string())?;
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut echoed))
            .await
            .map_err(|_| "no echo".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(echoed)
    })
}

#[test]
fn a_raw_client_cannot_skip_tls_inside_an_intercepted_tunnel() {
    let ca = Ca::init();
    let upstream = TlsUpstream::start(&["allowed.test"]);
    let proxy = intercepting_proxy(&ca, &upstream);
    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    write!(
        stream,
        "CONNECT allowed.test:{} HTTP/1.1\r\n\r\n",
        upstream.port()
    )
    .unwrap();
    let mut head = [0u8; 256];
    let n = stream.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    // Plain HTTP inside a tunnel that must be intercepted: no TLS, no service.
    write!(
        stream,
        "POST /private HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    assert_eq!(upstream.hits(), 0);
    let record = proxy.audit_nth(1);
    assert_eq!(record["kind"], "connect");
    assert_eq!(record["reason"], "bad-request");
}

#[test]
fn idle_intercepted_connections_are_closed() {
    let ca = Ca::init();
    let upstream = TlsUpstream::start(&["allowed.test"]);
    let proxy = intercepting_proxy_with(&ca, &upstream, &["--tunnel-idle-timeout", "1"]);
    let closed_after = closed_after_handshake(&proxy, &ca, upstream.port());
    assert!(
        closed_after >= Duration::from_millis(900),
        "closed too early: {closed_after:?}"
    );
}

// ---------------------------------------------------------------------------
/// Frameworks upper-case methods and some servers route paths in any
/// case: `delete` and `/Admin` must not pass rules on `DELETE` and `/admin`,
/// over HTTP/1.1 or HTTP/2.
#[test]
fn method_and_path_spellings_do_not_dodge_deny_rules() {
    let ca = Ca::init();
    let upstream = TlsUpstream::start(&["allowed.test"]);
    let policy = format!(
        "version: 1\nmode: limited\nallow:\n  - host: allowed.test\n    ports: [{port}]\n\
         deny:\n  - host: allowed.test\n    methods: [DELETE]\n  - host: allowed.test\n    paths: [\"/admin/**\"]\n\
         hosts: {{allowed.test: 127.0.0.1}}\nallow_internal: [127.0.0.1/32]\n",
        port = upstream.port()
    );
    let proxy = Proxy::start(
        &policy,
        &[
            "--ca-dir",
            ca.dir().to_str().unwrap(),
            "--upstream-ca",
            upstream.ca_pem.to_str().unwrap(),
        ],
    );
    let url = |path: &str| format!("https://allowed.test:{}{path}", upstream.port());
    for version in ["--http1.1", "--http2"] {
        for (method, path, status, reason) in [
            ("delete", "/x", 400, "bad-request"),
            ("GET", "/Admin/users", 403, "denylisted"),
            ("GET", "/admin./users", 403, "denylisted"),
            ("GET", "/admin%20/users", 403, "denylisted"),
        ] {
            let r = https(&ca, &proxy, version, &["-X", method], &url(path));
            assert_eq!(r.status, status, "{version} {method} {path}: {r:?}");
            assert_eq!(
                r.header("x-tollgate-reason").as_deref(),
                Some(reason),
                "{version} {method} {path}"
            );
        }
    }
    assert_eq!(upstream.hits(), 0, "a refused request reached the upstream");
    let r = https(&ca, &proxy, "--http1.1", &[], &url("/administrator"));
    assert_eq!(r.status, 200, "{r:?}");
}

/// A reload that puts rules on what is inside a host's tunnels closes the
/// plain tunnels to it that are open: the proxy cannot read them (new ones
/// are intercepted).
#[test]
fn a_reload_closes_plain_tunnels_the_new_policy_would_inspect() {
    let ca = Ca::init();
    let upstream = TlsUpstream::start(&["plain.test"]);
    let port = upstream.port();
    let scratch = Scratch::new("reload-inspect");
    let open_policy = format!(
        "version: 1\nmode: limited\nallow:\n  - host: plain.test\n    ports: [{port}]\nhosts: {{plain.test: 127.0.0.1}}\nallow_internal: [127.0.0.1/32]\n"
    );
    let policy_path = scratch.write("policy.yaml", &open_policy);
    let proxy = Proxy::start_with_policy_file(
        &policy_path,
        &[
            "--ca-dir",
            ca.dir().to_str().unwrap(),
            "--upstream-ca",
            upstream.ca_pem.to_str().unwrap(),
        ],
    );
    block_on(async {
        use tokio::io::AsyncReadExt;
        let stream = connect_tunnel(&proxy, "plain.test", port).await;
        let config = Arc::new(client_config(roots_from(&upstream.ca_pem)));
        let name = rustls::pki_types::ServerName::try_from("plain.test").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .expect("a plain tunnel to the upstream itself");
        let inspecting = open_policy.replace(
            &format!("    ports: [{port}]\n"),
            &format!("    ports: [{port}]\n    paths: [\"/public/**\"]\n"),
        );
        std::fs::write(&policy_path, inspecting).unwrap();
        proxy.signal("HUP");
        assert!(
            eventually(Duration::from_secs(5), || proxy
                .stderr()
                .contains("reloaded policy")),
            "{}",
            proxy.stderr()
        );
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the plain tunnel stayed open: {read:?}"
        );
    });
    let closed = proxy
        .audit(2)
        .into_iter()
        .find(|r| r["reason"] == "needs-interception")
        .unwrap_or_else(|| panic!("no record of the closed tunnel: {:#?}", proxy.audit(2)));
    assert_eq!(closed["host"], "plain.test", "{closed}");
}

// Helpers of this file

/// A policy with method and path rules for allowed.test and 127.0.0.1,
/// and none for plain.test (a tunnel).
fn policy_for(port: u16) -> String {
    format!(
        r#"version: 1
mode: limited
allow:
  - host: allowed.test
    methods: [GET, HEAD]
    paths: ["/public/**"]
    ports: [{port}]
  - host: 127.0.0.1
    methods: [GET]
    ports: [{port}]
  - host: plain.test
    ports: [{port}]
hosts: {{allowed.test: 127.0.0.1, plain.test: 127.0.0.1, other.test: 127.0.0.1}}
allow_internal: [127.0.0.1/32]
"#
    )
}

/// A proxy that intercepts with `ca` and trusts `upstream`'s certificate.
fn intercepting_proxy(ca: &Ca, upstream: &TlsUpstream) -> Proxy {
    intercepting_proxy_with(ca, upstream, &[])
}

/// [`intercepting_proxy`] with `extra` flags.
fn intercepting_proxy_with(ca: &Ca, upstream: &TlsUpstream, extra: &[&str]) -> Proxy {
    let ca_dir = ca.dir();
    let mut args = vec![
        "--ca-dir",
        ca_dir.to_str().unwrap(),
        "--upstream-ca",
        upstream.ca_pem.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Proxy::start(&policy_for(upstream.port()), &args)
}

/// Opens an intercepted tunnel to allowed.test:`port`, completes the TLS
/// handshake as a client trusting `ca`, and returns the stream.
async fn intercepted_tls(
    proxy: &Proxy,
    ca: &Ca,
    port: u16,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let stream = connect_tunnel(proxy, "allowed.test", port).await;
    let name = rustls::pki_types::ServerName::try_from("allowed.test".to_owned()).unwrap();
    tls_connector(&ca.cert())
        .connect(name, stream)
        .await
        .unwrap()
}

/// Sends `request` as raw bytes inside an intercepted tunnel to
/// allowed.test:`port`; what came back within 5 s.
fn raw_request_in_tunnel(proxy: &Proxy, ca: &Ca, port: u16, request: &[u8]) -> String {
    block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = intercepted_tls(proxy, ca, port).await;
        let _ = tls.write_all(request).await;
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut reply)).await;
        String::from_utf8_lossy(&reply).into_owned()
    })
}

/// Opens an intercepted tunnel to allowed.test:`port`, completes the TLS
/// handshake and sends nothing: how long until the proxy closes it
/// (failing if it is still open after 5 s).
fn closed_after_handshake(proxy: &Proxy, ca: &Ca, port: u16) -> Duration {
    block_on(async {
        use tokio::io::AsyncReadExt;
        let mut tls = intercepted_tls(proxy, ca, port).await;
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await;
        assert!(read.is_ok(), "the tunnel was still open after 5 s");
        started.elapsed()
    })
}

/// curl over HTTPS through `proxy` (`version`: `--http1.1` or `--http2`),
/// trusting `ca`.
fn https(ca: &Ca, proxy: &Proxy, version: &str, extra: &[&str], url: &str) -> CurlResult {
    let mut args = vec![
        version,
        "--cacert",
        ca.cert().to_str().unwrap().to_owned().leak(),
    ];
    args.extend_from_slice(extra);
    args.push(url);
    curl_via(proxy, &args)
}

/// An intercepted HTTP/2 connection may send 32 requests at once; it gets
/// 8 upstream connections for them, and the rest wait their turn (so one
/// client connection cannot hold 32 descriptors upstream).
#[test]
fn an_http2_client_connection_holds_a_bounded_number_of_upstream_connections() {
    let ca = Ca::init();
    let upstream = TlsUpstream::start(&["allowed.test"]);
    let proxy = intercepting_proxy(&ca, &upstream);
    let port = upstream.port();
    let statuses = block_on(async {
        let stream = connect_tunnel(&proxy, "allowed.test", port).await;
        let mut config = client_config(roots_from(&ca.cert()));
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("allowed.test".to_owned()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .unwrap();
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(connection);
        let requests = (0..32).map(|i| {
            let mut sender = sender.clone();
            async move {
                let request =
                    http::Request::get(format!("https://allowed.test:{port}/public/slow/{i}"))
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .unwrap();
                sender
                    .send_request(request)
                    .await
                    .map(|r| r.status().as_u16())
            }
        });
        let mut statuses = Vec::new();
        for handle in requests.map(tokio::spawn).collect::<Vec<_>>() {
            statuses.push(handle.await.unwrap());
        }
        statuses
    });
    assert!(
        statuses.iter().all(|s| matches!(s, Ok(200))),
        "{statuses:?}"
    );
    let most = upstream
        .most_slow_at_once
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=8).contains(&most), "{most} upstream requests at once");
}

/// A client that completes the intercepted handshake owes its first
/// request within the header timeout, as on the plain listener; the
/// tunnel's record says it timed out.
#[test]
fn an_intercepted_tunnel_without_a_request_is_closed_at_the_header_timeout() {
    let ca = Ca::init();
    let upstream = TlsUpstream::start(&["allowed.test"]);
    let proxy = intercepting_proxy_with(&ca, &upstream, &["--header-timeout", "1"]);
    let closed_after = closed_after_handshake(&proxy, &ca, upstream.port());
    assert!(closed_after < Duration::from_secs(3), "{closed_after:?}");
    let record = proxy
        .audit_where(|r| r["kind"] == "connect")
        .expect("the tunnel's record");
    assert_eq!(record["outcome"], "timeout", "{record}");
}

/// The plain listener's 64 KiB header bound holds inside an intercepted
/// tunnel too.
#[test]
fn oversized_headers_inside_an_intercepted_tunnel_are_refused() {
    let ca = Ca::init();
    let upstream = TlsUpstream::start(&["allowed.test"]);
    let proxy = intercepting_proxy(&ca, &upstream);
    let port = upstream.port();
    let big = "a".repeat(100 * 1024);
    let request =
        format!("GET /public/ HTTP/1.1\r\nHost: allowed.test:{port}\r\nX-Big: {big}\r\n\r\n");
    let reply = raw_request_in_tunnel(&proxy, &ca, port, request.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    assert_eq!(upstream.hits(), 0);
}
