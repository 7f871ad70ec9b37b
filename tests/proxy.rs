//! End-to-end tests of `tollgate proxy`: the real binary, real curl and a
//! Rust client, real loopback upstreams. Nothing leaves 127.0.0.1.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn allowed_http_request_reaches_upstream_and_is_audited() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&loopback_policy(&[upstream.port()], ""), &[]);
    let r = curl_via(
        &proxy,
        &[&allowed_url(&upstream, "/hello?token=SECRET_QUERY")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body
            .starts_with("upstream saw GET /hello?token=SECRET_QUERY"),
        "{}",
        r.body
    );
    assert!(r
        .body
        .contains(&format!("host=allowed.test:{}", upstream.port())));
    let record = proxy.audit_nth(1);
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["rule"], "allow[1]:allowed.test");
    assert_eq!(record["kind"], "http");
    assert_eq!(record["method"], "GET");
    assert_eq!(record["scheme"], "http");
    assert_eq!(record["host"], "allowed.test");
    assert_eq!(record["port"], upstream.port());
    assert_eq!(record["path"], "/hello");
    assert_eq!(record["resolved"], "127.0.0.1");
    assert_eq!(record["status"], 200);
    assert_eq!(record["bytes_down"], r.body.len());
    for field in ["ts", "id", "client", "duration_ms", "bytes_up"] {
        assert!(record.get(field).is_some(), "missing {field}: {record}");
    }
    assert!(record["ts"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn denied_request_gets_403_with_reason_and_never_reaches_upstream() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&loopback_policy(&[upstream.port()], ""), &[]);
    let url = format!("http://other.test:{}/x", upstream.port());
    let r = curl_via(&proxy, &[&url]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-tollgate-decision").as_deref(), Some("deny"));
    assert_eq!(
        r.header("x-tollgate-reason").as_deref(),
        Some("not-allowlisted")
    );
    assert_eq!(
        r.body.trim_end(),
        format!("tollgate: blocked GET {url}: host not in allowlist")
    );
    let record = proxy.audit_nth(1);
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["reason"], "not-allowlisted");
    assert_eq!(record["status"], 403);
    assert_eq!(record["id"].as_str(), r.header("x-tollgate-id").as_deref());
    assert!(
        record.get("resolved").is_none(),
        "a denied name is not resolved"
    );
    assert_eq!(upstream.hits(), 0);
}

#[test]
fn allowed_connect_tunnel_carries_tls_end_to_end() {
    let upstream = TlsUpstream::start(&["allowed.test"]);
    let proxy = Proxy::start(&loopback_policy(&[upstream.port()], ""), &[]);
    let url = format!("https://allowed.test:{}/secure", upstream.port());
    let r = curl_via(
        &proxy,
        &["--cacert", upstream.ca_pem.to_str().unwrap(), &url],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.connect_status, 200);
    assert!(r.body.starts_with("upstream saw GET /secure"), "{}", r.body);
    let record = proxy.audit_nth(1);
    assert_eq!(record["kind"], "connect");
    assert_eq!(record["method"], "CONNECT");
    assert_eq!(record["decision"], "allow");
    assert_eq!(record["resolved"], "127.0.0.1");
    assert!(
        record["bytes_up"].as_u64().unwrap() > 200,
        "ClientHello counted: {record}"
    );
    assert!(record["bytes_down"].as_u64().unwrap() > r.body.len() as u64);
}

#[test]
fn denied_connect_gets_403_and_no_upstream_connection() {
    let canary = Canary::start();
    let proxy = Proxy::start(&loopback_policy(&[1], ""), &[]);
    let url = format!("https://allowed.test:{}/", canary.addr.port());
    let r = curl_via(&proxy, &[&url]);
    assert_eq!(r.connect_status, 403, "{r:?}");
    let record = proxy.audit_nth(1);
    assert_eq!(record["kind"], "connect");
    assert_eq!(record["reason"], "port-not-allowed");
    assert!(canary.untouched());
}

#[test]
fn connect_needs_an_explicit_port() {
    let proxy = Proxy::start(&loopback_policy(&[443], ""), &[]);
    let reply = raw_exchange(
        &proxy,
        b"CONNECT allowed.test HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(proxy.audit_nth(1)["reason"], "bad-request");
}

#[test]
fn mode_off_denies_everything() {
    let upstream = Upstream::start();
    let policy = "version: 1\nmode: off\nallow: [allowed.test]\nhosts: {allowed.test: 127.0.0.1}\nallow_internal: [127.0.0.1/32]\n";
    let proxy = Proxy::start(policy, &[]);
    let r = curl_via(&proxy, &[&allowed_url(&upstream, "/")]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-tollgate-reason").as_deref(), Some("mode-off"));
    let r = curl_via(
        &proxy,
        &[&format!("https://allowed.test:{}/", upstream.port())],
    );
    assert_eq!(r.connect_status, 403);
    assert_eq!(proxy.audit_nth(2)["reason"], "mode-off");
    assert_eq!(upstream.hits(), 0);
}

#[test]
fn unrestricted_allows_any_host_and_port_but_not_the_deny_list() {
    let upstream = Upstream::start();
    let policy = "version: 1\nmode: unrestricted\ndeny: [other.test]\nhosts: {allowed.test: 127.0.0.1, other.test: 127.0.0.1}\nallow_internal: [127.0.0.1/32]\n";
    let proxy = Proxy::start(policy, &[]);
    let r = curl_via(&proxy, &[&allowed_url(&upstream, "/")]);
    assert_eq!(r.status, 200);
    assert_eq!(proxy.audit_nth(1)["rule"], "mode:unrestricted");
    let r = curl_via(
        &proxy,
        &[&format!("http://other.test:{}/", upstream.port())],
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-tollgate-reason").as_deref(), Some("denylisted"));
    assert_eq!(upstream.hits(), 1);
}

#[test]
fn deny_wins_over_an_allow_that_matches() {
    let upstream = Upstream::start();
    let policy = loopback_policy(&[upstream.port()], "deny: [\"**.test\"]\n");
    let proxy = Proxy::start(&policy, &[]);
    let r = curl_via(&proxy, &[&allowed_url(&upstream, "/")]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-tollgate-reason").as_deref(), Some("denylisted"));
    assert_eq!(upstream.hits(), 0);
}

#[test]
fn audit_mode_lets_traffic_through_and_logs_would_deny() {
    let upstream = Upstream::start();
    let policy = "version: 1\nmode: limited\nenforce: false\nallow: [nothing.test]\nhosts: {allowed.test: 127.0.0.1}\nallow_internal: [127.0.0.1/32]\n";
    let proxy = Proxy::start(policy, &[]);
    let r = curl_via(&proxy, &[&allowed_url(&upstream, "/")]);
    assert_eq!(r.status, 200, "{r:?}");
    let record = proxy.audit_nth(1);
    assert_eq!(record["decision"], "would_deny");
    assert_eq!(record["reason"], "not-allowlisted");
    assert_eq!(upstream.hits(), 1);
}

#[test]
fn audit_mode_still_enforces_the_internal_address_guard() {
    let canary = Canary::start();
    let policy = "version: 1\nmode: limited\nenforce: false\nhosts: {loop.test: 127.0.0.1}\n";
    let proxy = Proxy::start(policy, &[]);
    let r = curl_via(
        &proxy,
        &[&format!("http://loop.test:{}/", canary.addr.port())],
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("x-tollgate-reason").as_deref(),
        Some("internal-address")
    );
    assert!(canary.untouched());
}

#[test]
fn ports_outside_the_rule_are_refused() {
    let upstream = Upstream::start();
    let policy = "version: 1\nmode: limited\nallow: [allowed.test]\nhosts: {allowed.test: 127.0.0.1}\nallow_internal: [127.0.0.1/32]\n";
    let proxy = Proxy::start(policy, &[]);
    let r = curl_via(&proxy, &[&allowed_url(&upstream, "/")]);
    assert_eq!(r.status, 403);
    assert_eq!(
        r.header("x-tollgate-reason").as_deref(),
        Some("port-not-allowed")
    );
    assert_eq!(upstream.hits(), 0);
}

#[test]
fn host_header_that_disagrees_with_the_target_is_refused() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&loopback_policy(&[upstream.port()], ""), &[]);
    for host in [
        "other.test",
        &format!("other.test:{}", upstream.port()),
        "allowed.test:1",
    ] {
        let r = curl_via(
            &proxy,
            &["-H", &format!("Host: {host}"), &allowed_url(&upstream, "/")],
        );
        assert_eq!(r.status, 403, "Host: {host}");
        assert_eq!(
            r.header("x-tollgate-reason").as_deref(),
            Some("host-mismatch")
        );
    }
    // Case and a trailing dot are the same host.
    let same = format!("ALLOWED.test.:{}", upstream.port());
    let r = curl_via(
        &proxy,
        &["-H", &format!("Host: {same}"), &allowed_url(&upstream, "/")],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(upstream.hits(), 1);
    assert_eq!(proxy.audit_nth(4)["reason"].as_str(), None);
}

#[test]
fn two_host_headers_are_refused() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&loopback_policy(&[upstream.port()], ""), &[]);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: allowed.test:{p}\r\nHost: other.test:{p}\r\n\r\n",
        allowed_url(&upstream, "/"),
        p = upstream.port()
    );
    let reply = raw_exchange(&proxy, request.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(upstream.hits(), 0);
}

#[test]
fn hop_by_hop_and_proxy_credentials_are_not_forwarded() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&loopback_policy(&[upstream.port()], ""), &[]);
    let r = curl_via(
        &proxy,
        &[
            "-H",
            "Proxy-Authorization: Basic c2VjcmV0",
            "-H",
            "Connection: x-hop",
            "-H",
            "X-Hop: 1",
            "-H",
            "X-End-To-End: 1",
            &allowed_url(&upstream, "/"),
        ],
    );
    assert_eq!(r.status, 200);
    let seen = upstream.seen.lock().unwrap().join("\n");
    assert!(seen.contains("x-end-to-end"), "{seen}");
    for gone in ["proxy-authorization", "x-hop,", "connection"] {
        assert!(!seen.contains(gone), "{gone} forwarded: {seen}");
    }
}

#[test]
fn secrets_in_headers_and_queries_never_reach_the_audit_log() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&loopback_policy(&[upstream.port()], ""), &[]);
    let r = curl_via(
        &proxy,
        &[
            "-H",
            "Authorization: Bearer SECRET_HEADER_VALUE",
            "-H",
            "Cookie: session=SECRET_COOKIE",
            &allowed_url(&upstream, "/p?key=SECRET_QUERY"),
            &format!("http://other.test:{}/q?key=SECRET_DENIED", upstream.port()),
        ],
    );
    assert_eq!(r.status, 403);
    let records = proxy.audit(2);
    assert_eq!(records.len(), 2);
    let text = std::fs::read_to_string(&proxy.audit_path).unwrap();
    assert!(!text.contains("SECRET"), "{text}");
}

#[test]
fn keep_alive_reuses_one_client_connection_for_several_requests() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&loopback_policy(&[upstream.port()], ""), &[]);
    let r = curl_via(
        &proxy,
        &[
            &allowed_url(&upstream, "/1"),
            &allowed_url(&upstream, "/2"),
            &allowed_url(&upstream, "/3"),
        ],
    );
    assert_eq!(r.status, 200);
    let records = proxy.audit(3);
    assert_eq!(records.len(), 3);
    assert!(
        records.iter().all(|r| r["client"] == records[0]["client"]),
        "{records:#?}"
    );
    assert_eq!(upstream.hits(), 3);
}

#[test]
fn request_bodies_are_forwarded_and_counted() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&loopback_policy(&[upstream.port()], ""), &[]);
    let body = "x".repeat(100_000);
    let r = curl_via(
        &proxy,
        &["--data-binary", &body, &allowed_url(&upstream, "/upload")],
    );
    assert_eq!(r.status, 200);
    assert!(r.body.contains("body=100000"), "{}", r.body);
    assert_eq!(proxy.audit_nth(1)["bytes_up"], 100_000);
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    closed.local_addr().unwrap().port()
}

#[test]
fn unreachable_upstream_is_502_upstream_failed() {
    let port = closed_port();
    let proxy = Proxy::start(&loopback_policy(&[port], ""), &[]);
    let r = curl_via(&proxy, &[&format!("http://allowed.test:{port}/")]);
    assert_eq!(r.status, 502);
    assert_eq!(
        r.header("x-tollgate-reason").as_deref(),
        Some("upstream-failed")
    );
    assert!(
        r.body.starts_with("tollgate: could not deliver GET"),
        "{}",
        r.body
    );
    // The policy allowed it; the transfer failed: the record says both.
    assert_eq!(r.header("x-tollgate-decision").as_deref(), Some("allow"));
    let record = proxy.audit_nth(1);
    assert_eq!(record["decision"], "allow", "{record}");
    assert!(record["rule"].is_string(), "{record}");
    assert!(record.get("reason").is_none(), "{record}");
    assert_eq!(record["outcome"], "upstream-failed", "{record}");
    assert_eq!(record["status"], 502);
    assert_eq!(record["resolved"], "127.0.0.1");
}

/// A transport failure does not turn an audit-mode would_deny into a deny.
#[test]
fn audit_mode_keeps_would_deny_when_the_upstream_fails() {
    let port = closed_port();
    let policy = "version: 1\nmode: limited\nenforce: false\nallow: [nothing.test]\nhosts: {allowed.test: 127.0.0.1}\nallow_internal: [127.0.0.1/32]\n";
    let proxy = Proxy::start(policy, &[]);
    let r = curl_via(&proxy, &[&format!("http://allowed.test:{port}/")]);
    assert_eq!(r.status, 502);
    let record = proxy.audit_nth(1);
    assert_eq!(record["decision"], "would_deny", "{record}");
    assert_eq!(record["reason"], "not-allowlisted", "{record}");
    assert_eq!(record["outcome"], "upstream-failed", "{record}");
}

/// An upload the client abandons halfway is the client's doing, not a
/// failed upstream, and the record says what reached the upstream.
#[test]
fn an_upload_the_client_aborts_is_recorded_as_allowed_and_client_aborted() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&loopback_policy(&[upstream.port()], ""), &[]);
    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: allowed.test:{}\r\nContent-Length: 100000\r\n\r\n",
        allowed_url(&upstream, "/upload"),
        upstream.port()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&[b'x'; 40_000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(stream);
    let record = proxy.audit_nth(1);
    assert_eq!(record["decision"], "allow", "{record}");
    assert_eq!(record["outcome"], "client-aborted", "{record}");
    assert!(record.get("reason").is_none(), "{record}");
    let up = record["bytes_up"].as_u64().unwrap();
    assert!(up > 0 && up <= 40_000, "{record}");
}

/// Completed exchanges and refusals say so.
#[test]
fn delivered_and_refused_exchanges_have_their_outcome() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&loopback_policy(&[upstream.port()], ""), &[]);
    assert_eq!(
        curl_via(&proxy, &[&allowed_url(&upstream, "/")]).status,
        200
    );
    assert_eq!(
        curl_via(&proxy, &["-I", &allowed_url(&upstream, "/")]).status,
        200
    );
    let denied = format!("http://other.test:{}/", upstream.port());
    assert_eq!(curl_via(&proxy, &[&denied]).status, 403);
    let records = proxy.audit(3);
    assert_eq!(records[0]["outcome"], "ok", "{records:#?}");
    assert_eq!(records[1]["outcome"], "ok", "HEAD: {records:#?}");
    assert_eq!(records[2]["outcome"], "refused", "{records:#?}");
}

/// A request refused as malformed still records what it said.
#[test]
fn a_host_mismatch_record_has_the_host_port_and_path_it_parsed() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&loopback_policy(&[upstream.port()], ""), &[]);
    let request = format!(
        "GET http://allowed.test:{}/secret/path HTTP/1.1\r\nHost: other.test\r\n\r\n",
        upstream.port()
    );
    let reply = raw_exchange(&proxy, request.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
    let record = proxy.audit_nth(1);
    assert_eq!(record["reason"], "host-mismatch", "{record}");
    assert_eq!(record["host"], "allowed.test", "{record}");
    assert_eq!(record["port"], upstream.port(), "{record}");
    assert_eq!(record["path"], "/secret/path", "{record}");
    assert_eq!(record["outcome"], "refused", "{record}");
    assert_eq!(upstream.hits(), 0);
}

#[test]
fn origin_form_and_https_absolute_form_are_bad_requests() {
    let proxy = Proxy::start(&loopback_policy(&[80], ""), &[]);
    let reply = raw_exchange(&proxy, b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("x-tollgate-reason: bad-request"), "{reply}");
    assert!(reply.contains("absolute-form"), "{reply}");
    let reply = raw_exchange(
        &proxy,
        b"GET https://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert_eq!(proxy.audit_nth(2)["reason"], "bad-request");
}

#[test]
fn malformed_requests_get_400_and_an_audit_record() {
    let proxy = Proxy::start(&loopback_policy(&[80], ""), &[]);
    let garbage: [&[u8]; 4] = [
        b"GARBAGE\r\n\r\n",
        b"GET http://allowed.test/ HTTP/9.9\r\n\r\n",
        b"GET http://allowed.test/ HTTP/1.1\r\nBad Header\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ];
    for (i, bytes) in garbage.iter().enumerate() {
        let reply = raw_exchange(&proxy, bytes);
        assert!(reply.starts_with("HTTP/1.1 400"), "{i}: {reply:?}");
        let record = proxy.audit_nth(i + 1);
        assert_eq!(record["reason"], "bad-request", "{record}");
        assert_eq!(record["status"], 400);
    }
    // Still serving after all that.
    let reply = raw_exchange(&proxy, b"GET http://nope.test/ HTTP/1.1\r\n\r\n");
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
}

#[test]
fn oversized_headers_are_refused_with_431() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&loopback_policy(&[upstream.port()], ""), &[]);
    let request = format!(
        "GET {} HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        allowed_url(&upstream, "/"),
        "a".repeat(70 * 1024)
    );
    let reply = raw_exchange(&proxy, request.as_bytes());
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    let record = proxy.audit_nth(1);
    assert_eq!(record["reason"], "bad-request");
    assert_eq!(record["status"], 431);
    assert_eq!(upstream.hits(), 0);
}

#[test]
fn slow_clients_are_cut_off_after_the_header_timeout() {
    let proxy = Proxy::start(&loopback_policy(&[80], ""), &["--header-timeout", "1"]);
    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    stream
        .write_all(b"GET http://allowed.test/ HTTP/1.1\r\nX-Slow: ")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "connection held for {waited:?}"
    );
    assert!(
        waited >= Duration::from_millis(900),
        "closed too early: {waited:?}"
    );
}

#[test]
fn a_tls_client_hello_for_another_host_inside_an_allowed_connect_is_refused() {
    let canary = Canary::start();
    let policy = loopback_policy(&[canary.addr.port()], "");
    let proxy = Proxy::start(&policy, &[]);
    let handshake = tls_through_connect(&proxy, "allowed.test", canary.addr.port(), "other.test");
    assert!(handshake.is_err(), "foreign SNI got through");
    let record = proxy.audit_nth(1);
    assert_eq!(record["kind"], "connect");
    assert_eq!(record["decision"], "deny");
    assert_eq!(record["reason"], "sni-mismatch");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        canary.bytes(),
        0,
        "bytes of the foreign ClientHello reached upstream"
    );

    // Control: the matching SNI is relayed (the canary speaks no TLS, so the
    // handshake itself fails, but the ClientHello arrives).
    let _ = tls_through_connect(&proxy, "allowed.test", canary.addr.port(), "allowed.test");
    eventually(Duration::from_secs(5), || canary.bytes() > 0);
    assert!(canary.bytes() > 0, "matching SNI was not relayed");
}

/// Every response the proxy writes or relays names its audit record: a
/// relayed one and the 200 that opens a tunnel, as refusals already did.
#[test]
fn every_response_names_its_audit_record() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&loopback_policy(&[upstream.port()], ""), &[]);
    let r = curl_via(&proxy, &[&allowed_url(&upstream, "/")]);
    assert_eq!(r.status, 200, "{r:?}");
    let record = proxy.audit_nth(1);
    assert_eq!(
        r.header("x-tollgate-id").as_deref(),
        record["id"].as_str(),
        "{r:?}"
    );

    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    let authority = format!("allowed.test:{}", upstream.port());
    write!(
        stream,
        "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
    )
    .unwrap();
    let mut head = [0u8; 1024];
    let n = stream.read(&mut head).unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_lowercase();
    drop(stream);
    let record = proxy.audit_nth(2);
    let id = record["id"].as_str().unwrap_or_default();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("x-tollgate-id: {id}")),
        "{head} / {record}"
    );
}

/// Every record names the policy in force (its SHA-256) and is chained to
/// the one before it; `tollgate audit verify` finds an edited record, and a
/// proxy restarted on the same file continues the chain.
#[test]
fn audit_records_are_chained_and_verify_finds_an_edit() {
    let upstream = Upstream::start();
    let scratch = Scratch::new("audit-chain");
    let policy = scratch.write("policy.yaml", &loopback_policy(&[upstream.port()], ""));
    let audit = scratch.path("audit.jsonl");
    let start = || {
        let mut command = std::process::Command::new(BIN);
        command
            .args(["proxy", "--policy"])
            .arg(&policy)
            .arg("--audit-log")
            .arg(&audit)
            .args(["--listen", "127.0.0.1:0"]);
        Proxy::spawn(&mut command, Scratch::new("proxy"), audit.clone())
    };
    let proxy = start();
    for path in ["/a", "/b", "/c"] {
        assert_eq!(
            curl_via(&proxy, &[&allowed_url(&upstream, path)]).status,
            200
        );
    }
    let records = proxy.audit(3);
    drop(proxy);
    let digest = tool_ok(std::process::Command::new("sha256sum").arg(&policy));
    let digest = digest.split_whitespace().next().unwrap().to_owned();
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record["seq"], i, "{record}");
        assert_eq!(record["policy"], digest.as_str(), "{record}");
    }
    assert_eq!(record_prev(&records[0]), "0".repeat(64));
    let verify = |file: &std::path::Path| {
        let out = std::process::Command::new(BIN)
            .args(["audit", "verify"])
            .arg(file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, said) = verify(&audit);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("3 records"), "{said}");

    // A restarted proxy continues the chain in the same file.
    let proxy = start();
    assert_eq!(
        curl_via(&proxy, &[&allowed_url(&upstream, "/d")]).status,
        200
    );
    let records = proxy.audit(4);
    drop(proxy);
    assert_eq!(records[3]["seq"], 3, "{}", records[3]);
    assert_eq!(verify(&audit).0, Some(0));

    // One path changed by a byte: caught at the next line.
    let text = std::fs::read_to_string(&audit).unwrap();
    let edited = scratch.write(
        "edited.jsonl",
        &text.replacen("\"path\":\"/b\"", "\"path\":\"/x\"", 1),
    );
    let (code, said) = verify(&edited);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("edited.jsonl:3:"), "{said}");
}

fn record_prev(record: &serde_json::Value) -> String {
    record["prev"].as_str().unwrap_or_default().to_owned()
}

/// A small tmpfs mounted for a test, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: std::path::PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tollgate-test",
            ])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs on {}", dir.display());
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// When the audit log cannot be written (a full disk), the proxy refuses
/// new requests (503 audit-unavailable) instead of serving them unrecorded,
/// says so on stderr, and serves again once there is room; every request it
/// did let through is in the log then.
#[test]
fn a_full_disk_under_the_audit_log_fails_closed_until_there_is_room() {
    require_root!();
    let upstream = Upstream::start();
    let scratch = Scratch::new("audit-full");
    let disk = SmallDisk::mount(scratch.path("disk"), "64k");
    let policy = scratch.write("policy.yaml", &loopback_policy(&[upstream.port()], ""));
    let audit = disk.0.join("audit.jsonl");
    let mut command = std::process::Command::new(BIN);
    command
        .args(["proxy", "--policy"])
        .arg(&policy)
        .arg("--audit-log")
        .arg(&audit)
        .args(["--listen", "127.0.0.1:0"]);
    let proxy = Proxy::spawn(&mut command, Scratch::new("proxy"), audit.clone());
    let url = allowed_url(&upstream, "/x");
    assert_eq!(curl_via(&proxy, &[&url]).status, 200);

    let filler = disk.0.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=4k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let refused = eventually(Duration::from_secs(10), || {
        curl_via(&proxy, &[&url]).status == 503
    });
    assert!(refused, "never refused; stderr: {}", proxy.stderr());
    let r = curl_via(&proxy, &[&url]);
    assert_eq!(r.status, 503, "{r:?}");
    assert!(r.body.contains("audit"), "{r:?}");
    assert!(
        proxy.stderr().contains("audit log write failed"),
        "{}",
        proxy.stderr()
    );
    let served = upstream.hits();
    for _ in 0..5 {
        assert_eq!(curl_via(&proxy, &[&url]).status, 503);
    }
    assert_eq!(upstream.hits(), served, "served while it could not record");

    std::fs::remove_file(&filler).unwrap();
    let back = eventually(Duration::from_secs(10), || {
        curl_via(&proxy, &[&url]).status == 200
    });
    assert!(back, "never served again; stderr: {}", proxy.stderr());
    assert!(
        eventually(Duration::from_secs(3), || proxy
            .stderr()
            .contains("writable again")),
        "{}",
        proxy.stderr()
    );
    let hits = upstream.hits();
    let recorded = |records: &[serde_json::Value]| {
        records
            .iter()
            .filter(|r| r["kind"] == "http" && r["decision"] == "allow")
            .count()
    };
    assert!(
        eventually(Duration::from_secs(5), || recorded(&read_audit(&audit))
            == hits),
        "{hits} requests reached the upstream, {} allow records",
        recorded(&read_audit(&audit))
    );
    let refusals = read_audit(&audit)
        .iter()
        .filter(|r| r["reason"] == "audit-unavailable")
        .count();
    assert!(refusals >= 6, "{refusals} refusals recorded");
}

/// TLS 1.3 lets the server ask for a second ClientHello (HelloRetryRequest).
/// A client that names the same host in it gets through, as it should.
#[test]
fn a_hello_retry_request_round_with_the_same_name_completes() {
    let server = RetryingTlsServer::start(&["allowed.test"]);
    let proxy = Proxy::start(&loopback_policy(&[server.addr.port()], ""), &[]);
    let done = block_on(async {
        let stream = connect_tunnel(&proxy, "allowed.test", server.addr.port()).await;
        let config = client_config(roots_from(&server.ca_pem));
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from("allowed.test").unwrap();
        tokio::time::timeout(Duration::from_secs(5), connector.connect(name, stream)).await
    });
    assert!(matches!(done, Ok(Ok(_))), "handshake failed: {done:?}");
    assert!(
        eventually(Duration::from_secs(3), || server.completed()
            == vec![Some("allowed.test".to_owned())]),
        "{:?}",
        server.completed()
    );
}

/// Invariant 4 past the first hello: after a HelloRetryRequest, a second
/// ClientHello naming another host is refused and never reaches the server.
#[test]
fn a_second_client_hello_for_another_host_after_a_retry_is_refused() {
    let server = RetryingTlsServer::start(&["allowed.test", "other.test"]);
    let proxy = Proxy::start(&loopback_policy(&[server.addr.port()], ""), &[]);
    let after_retry = block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = connect_tunnel(&proxy, "allowed.test", server.addr.port()).await;
        stream
            .write_all(&client_hello(Some("allowed.test")))
            .await
            .unwrap();
        let mut retry = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut retry))
            .await
            .expect("no HelloRetryRequest")
            .unwrap();
        assert!(
            n > 0 && retry[0] == 0x16,
            "not a handshake: {:?}",
            &retry[..n]
        );
        stream
            .write_all(&retried_client_hello("other.test"))
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        rest
    });
    assert!(
        after_retry.is_empty(),
        "the server answered the foreign hello: {} bytes",
        after_retry.len()
    );
    let record = proxy.audit_nth(1);
    assert_eq!(record["kind"], "connect");
    assert_eq!(record["decision"], "deny", "{record}");
    assert_eq!(record["reason"], "sni-mismatch", "{record}");
    // Refused inside the tunnel: no HTTP answer, so no status (the
    // CONNECT's 200 is not the refusal's).
    assert!(record.get("status").is_none(), "{record}");
    assert_eq!(record["outcome"], "refused", "{record}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(server.completed(), Vec::<Option<String>>::new());
}

/// An IP address in the SNI extension is a name like any other: it must be
/// the CONNECT host (rustls reads it as "no name", which passed before).
#[test]
fn an_ip_address_in_the_sni_is_refused_in_a_tunnel_to_a_name() {
    let canary = Canary::start();
    let proxy = Proxy::start(&loopback_policy(&[canary.addr.port()], ""), &[]);
    let named = client_hello(Some("aaaaa.xyz"));
    let at = named
        .windows(9)
        .position(|w| w == b"aaaaa.xyz")
        .expect("the name is in the hello");
    let mut hello = named.clone();
    hello[at..at + 9].copy_from_slice(b"127.0.0.1");
    let reply = raw_tunnel(&proxy, "allowed.test", canary.addr.port(), &hello);
    assert!(reply.is_empty(), "{reply:?}");
    let record = proxy.audit_nth(1);
    assert_eq!(record["decision"], "deny", "{record}");
    assert_eq!(record["reason"], "sni-mismatch", "{record}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(canary.bytes(), 0, "the hello reached the upstream");
}

/// An Encrypted Client Hello's outer name is not the one the server acts
/// on: refused in a tunnel the proxy does not intercept.
#[test]
fn an_encrypted_client_hello_is_refused_in_a_plain_tunnel() {
    let canary = Canary::start();
    let proxy = Proxy::start(&loopback_policy(&[canary.addr.port()], ""), &[]);
    let plain = client_hello(Some("allowed.test"));
    let hello = with_extension(&plain, 0xfe0d, &ech_outer_extension());
    let reply = raw_tunnel(&proxy, "allowed.test", canary.addr.port(), &hello);
    assert!(reply.is_empty(), "{reply:?}");
    let record = proxy.audit_nth(1);
    assert_eq!(record["decision"], "deny", "{record}");
    assert_eq!(record["reason"], "encrypted-client-hello", "{record}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(canary.bytes(), 0, "the hello reached the upstream");
    // Control: the same hello with the same bytes in an extension of no
    // meaning (so the crafting is sound) is relayed.
    let unknown = with_extension(&plain, 0x7a7a, &ech_outer_extension());
    let _ = raw_tunnel(&proxy, "allowed.test", canary.addr.port(), &unknown);
    assert!(eventually(Duration::from_secs(5), || canary.bytes() > 0));
}

/// Sends `bytes` into a CONNECT tunnel and returns what comes back until
/// the tunnel closes (or two seconds pass).
fn raw_tunnel(proxy: &Proxy, host: &str, port: u16, bytes: &[u8]) -> Vec<u8> {
    block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = connect_tunnel(proxy, host, port).await;
        stream.write_all(bytes).await.unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut reply)).await;
        reply
    })
}

#[test]
fn a_client_that_waits_out_the_sniff_timeout_cannot_skip_the_sni_check() {
    let canary = Canary::start();
    let proxy = Proxy::start(
        &loopback_policy(&[canary.addr.port()], ""),
        &["--header-timeout", "1"],
    );
    let handshake = block_on(async {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let port = canary.addr.port();
        let connect = format!("CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut stream, connect.as_bytes())
            .await
            .unwrap();
        let mut head = [0u8; 256];
        let n = tokio::io::AsyncReadExt::read(&mut stream, &mut head)
            .await
            .unwrap();
        assert!(head[..n].starts_with(b"HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tls_handshake(stream, "other.test").await
    });
    assert!(handshake.is_err());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        canary.bytes(),
        0,
        "a late foreign ClientHello reached upstream"
    );
}

#[test]
fn plain_http_inside_a_tunnel_is_refused_so_host_cannot_be_fronted() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(&loopback_policy(&[upstream.port()], ""), &[]);
    // curl --proxytunnel sends plain HTTP inside a CONNECT tunnel; with a
    // foreign Host it would reach another virtual host of the same address.
    let r = curl_via(
        &proxy,
        &[
            "--proxytunnel",
            "-H",
            "Host: evil.test",
            &allowed_url(&upstream, "/fronted"),
        ],
    );
    assert_eq!(r.connect_status, 200);
    assert_ne!(r.status, 200, "{r:?}");
    assert_eq!(upstream.hits(), 0, "plain HTTP went through a tunnel");
    let record = proxy.audit_nth(1);
    assert_eq!(record["kind"], "connect");
    assert_eq!(record["reason"], "bad-request");
}

#[test]
fn tunnels_carry_large_transfers_intact_both_ways() {
    let scratch = Scratch::new("tls-echo");
    let (config, ca_pem) = self_signed_server(&["allowed.test"], &scratch);
    let echo = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut stream, _) = echo.accept().unwrap();
        let connection = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, &mut stream);
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = tls.read(&mut buf) {
            if n == 0 || tls.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let proxy = Proxy::start(&loopback_policy(&[port], ""), &[]);
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i % 251) as u8 + 1)
        .collect();

    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    write!(stream, "CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n").unwrap();
    let mut head = [0u8; 128];
    let n = stream.read(&mut head).unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    let client_config = client_config(roots_from(&ca_pem));
    let name = rustls::pki_types::ServerName::try_from("allowed.test").unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let mut echoed = vec![0u8; payload.len()];
    // Write and read in chunks so neither side's buffers fill up.
    let mut read = 0;
    for chunk in payload.chunks(256 * 1024) {
        tls.write_all(chunk).unwrap();
        let goal = read + chunk.len();
        while read < goal {
            let n = tls.read(&mut echoed[read..goal]).unwrap();
            assert!(n > 0, "tunnel closed after {read} bytes");
            read += n;
        }
    }
    assert!(echoed == payload, "tunnel corrupted the stream");
    drop(tls);
    let record = proxy.audit_nth(1);
    assert_eq!(record["scheme"], "https");
    assert!(record["bytes_up"].as_u64().unwrap() >= payload.len() as u64);
    assert!(record["bytes_down"].as_u64().unwrap() >= payload.len() as u64);
}

#[test]
fn unix_socket_listener_serves_next_to_tcp() {
    let upstream = Upstream::start();
    let scratch = Scratch::new("unix");
    let socket = scratch.path("proxy.sock");
    let listen = format!("unix:{}", socket.display());
    let proxy = Proxy::start(
        &loopback_policy(&[upstream.port()], ""),
        &["--listen", "127.0.0.1:0", "--listen", &listen],
    );
    let (status, body) = get_over_unix_socket(&socket, &allowed_url(&upstream, "/via-unix"));
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("upstream saw GET /via-unix"), "{body}");
    assert_eq!(proxy.audit_nth(1)["client"], "unix");
    let r = curl_via(&proxy, &[&allowed_url(&upstream, "/via-tcp")]);
    assert_eq!(r.status, 200);
}

/// A reload re-decides open tunnels: one the new policy denies is closed
/// (with a record saying why), one it still allows carries on.
#[test]
fn a_reload_closes_the_open_tunnels_the_new_policy_denies() {
    let upstream = TlsUpstream::start(&["allowed.test", "other.test"]);
    let port = upstream.port();
    let scratch = Scratch::new("reload-tunnels");
    let both = format!(
        "version: 1\nmode: limited\nallow:\n  - host: allowed.test\n    ports: [{port}]\n  - host: other.test\n    ports: [{port}]\nhosts: {{allowed.test: 127.0.0.1, other.test: 127.0.0.1}}\nallow_internal: [127.0.0.1/32]\n"
    );
    let policy_path = scratch.write("policy.yaml", &both);
    let proxy = Proxy::start_with_policy_file(&policy_path, &[]);
    block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let config = Arc::new(client_config(roots_from(&upstream.ca_pem)));
        let open = |host: &'static str| {
            let config = config.clone();
            let proxy = &proxy;
            async move {
                let stream = connect_tunnel(proxy, host, port).await;
                let name = rustls::pki_types::ServerName::try_from(host).unwrap();
                tokio_rustls::TlsConnector::from(config)
                    .connect(name, stream)
                    .await
                    .unwrap()
            }
        };
        let mut denied = open("allowed.test").await;
        let mut kept = open("other.test").await;

        std::fs::write(
            &policy_path,
            both.replace(
                "  - host: allowed.test\n    ports: [",
                "  - host: gone.test\n    ports: [",
            ),
        )
        .unwrap();
        proxy.signal("HUP");
        wait_for(|| proxy.stderr().contains("reloaded policy"));

        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(3), denied.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the denied tunnel stayed open: {read:?}"
        );
        kept.write_all(b"GET /still HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), kept.read_to_end(&mut reply)).await;
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    });
    let closed = proxy
        .audit(3)
        .into_iter()
        .find(|r| r["kind"] == "connect" && r["decision"] == "deny")
        .expect("a record of the closed tunnel");
    assert_eq!(closed["host"], "allowed.test", "{closed}");
    assert_eq!(closed["reason"], "not-allowlisted", "{closed}");
    assert_eq!(closed["outcome"], "refused", "{closed}");
}

#[test]
fn sighup_reloads_a_good_policy_and_keeps_the_old_one_when_the_new_one_is_broken() {
    let upstream = Upstream::start();
    let scratch = Scratch::new("reload");
    let policy_path = scratch.write("policy.yaml", &loopback_policy(&[upstream.port()], ""));
    let proxy = Proxy::start_with_policy_file(&policy_path, &[]);
    let url = allowed_url(&upstream, "/");
    assert_eq!(curl_via(&proxy, &[&url]).status, 200);

    std::fs::write(&policy_path, "version: 1\nmode: off\n").unwrap();
    proxy.signal("HUP");
    wait_for(|| proxy.stderr().contains("reloaded policy"));
    let r = curl_via(&proxy, &[&url]);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("x-tollgate-reason").as_deref(), Some("mode-off"));

    std::fs::write(&policy_path, "version: 1\nmode: unrestricted\nalow: typo\n").unwrap();
    proxy.signal("HUP");
    wait_for(|| proxy.stderr().contains("policy not reloaded"));
    assert!(
        proxy.stderr().contains("unknown field `alow`"),
        "{}",
        proxy.stderr()
    );
    let r = curl_via(&proxy, &[&url]);
    assert_eq!(
        r.status, 403,
        "a broken policy must not replace the running one"
    );
    assert_eq!(r.header("x-tollgate-reason").as_deref(), Some("mode-off"));
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut proxy = Proxy::start(&loopback_policy(&[80], ""), &[]);
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn connection_limit_holds_further_clients_until_a_slot_frees() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(
        &loopback_policy(&[upstream.port()], ""),
        &["--max-connections", "1"],
    );
    let idle = TcpStream::connect(proxy.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let r = curl_via(&proxy, &["--max-time", "1", &allowed_url(&upstream, "/")]);
    assert_eq!(r.status, 0, "served beyond the limit: {r:?}");
    drop(idle);
    let r = curl_via(&proxy, &[&allowed_url(&upstream, "/")]);
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn pooled_upstream_connections_stay_within_the_budget() {
    let upstream = Upstream::start();
    let hosts: Vec<String> = (1..=6).map(|i| format!("h{i}.test")).collect();
    let policy = format!(
        "version: 1\nmode: limited\nallow:\n  - host: \"*.test\"\n    ports: [{p}]\nhosts: {{{}}}\nallow_internal: [127.0.0.1/32]\n",
        hosts.iter().map(|h| format!("{h}: 127.0.0.1")).collect::<Vec<_>>().join(", "),
        p = upstream.port()
    );
    let proxy = Proxy::start(&policy, &["--max-connections", "2"]);
    for host in &hosts {
        let r = curl_via(&proxy, &[&format!("http://{host}:{}/", upstream.port())]);
        assert_eq!(r.status, 200, "{r:?}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let open = upstream.open.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        open <= 2,
        "{open} idle upstream connections kept for 6 hosts with a budget of 2"
    );
}

#[test]
fn a_policy_that_needs_interception_does_not_start_without_a_ca() {
    let scratch = Scratch::new("nointercept");
    let policy = scratch.write("p.yaml", "version: 1\nmode: unrestricted\nmethods: [GET]\n");
    let out = std::process::Command::new(BIN)
        .args([
            "proxy",
            "--policy",
            policy.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TLS interception"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// Sends raw bytes to the proxy and returns everything it answers before
/// closing (or 3 s).
fn raw_exchange(proxy: &Proxy, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy.addr).unwrap();
    stream.write_all(bytes).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.windows(4).any(|w| w == b"\r\n\r\n") && !reply.starts_with(b"HTTP/1.1 2") {
            std::thread::sleep(Duration::from_millis(50));
            if let Ok(n) = stream.read(&mut buf) {
                reply.extend_from_slice(&buf[..n]);
            }
            break;
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}

/// A Rust TLS client that CONNECTs to `host:port` and then offers `sni`.
fn tls_through_connect(proxy: &Proxy, host: &str, port: u16, sni: &str) -> Result<(), String> {
    block_on(async {
        let stream = connect_tunnel(proxy, host, port).await;
        tls_handshake(stream, sni).await
    })
}

/// A TLS handshake offering `sni` over an open tunnel.
async fn tls_handshake(stream: tokio::net::TcpStream, sni: &str) -> Result<(), String> {
    let config = client_config(rustls::RootCertStore::empty());
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let handshake = connector.connect(name, stream);
    match tokio::time::timeout(Duration::from_secs(3), handshake).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// A Rust client (hyper) sending one absolute-form GET over a unix socket.
fn get_over_unix_socket(socket: &std::path::Path, url: &str) -> (u16, String) {
    use http_body_util::{BodyExt, Empty};
    block_on(async {
        let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::get(url)
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
}

/// Waits up to 5 s for `condition`; fails the test if it never holds.
fn wait_for(condition: impl Fn() -> bool) {
    assert!(
        eventually(Duration::from_secs(5), condition),
        "timed out waiting"
    );
}

/// A URL on `upstream` by the name the loopback policy allows.
fn allowed_url(upstream: &Upstream, path: &str) -> String {
    format!("http://allowed.test:{}{path}", upstream.port())
}

/// One client cannot hold every connection: past its cap, its next
/// connection is closed (and recorded) at once, and another client is
/// still served.
#[test]
fn a_client_past_its_connection_cap_is_closed_and_others_are_served() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(
        &loopback_policy(&[upstream.port()], ""),
        &["--max-client-connections", "3"],
    );
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(proxy.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(proxy.addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let closed = matches!(extra.read(&mut buf), Ok(0) | Err(_));
    assert!(
        closed && started.elapsed() < Duration::from_secs(2),
        "the fourth connection was kept open"
    );
    let record = proxy
        .audit_where(|r| r["reason"] == "too-many-connections")
        .expect("a too-many-connections record");
    assert_eq!(record["decision"], "deny", "{record}");
    assert!(record["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    // Another client (127.0.0.2 is loopback too) is served meanwhile.
    let other = curl_via(
        &proxy,
        &["--interface", "127.0.0.2", &allowed_url(&upstream, "/")],
    );
    assert_eq!(other.status, 200, "{other:?}");
    // And the first gets its place back when one of its connections goes.
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        curl_via(&proxy, &[&allowed_url(&upstream, "/")]).status,
        200
    );
}

/// Started with fewer descriptors than its connections need, the proxy
/// serves fewer connections and says so, instead of running out.
#[test]
fn a_low_open_file_limit_lowers_the_connections_served() {
    let scratch = Scratch::new("nofile");
    let policy = scratch.write("policy.yaml", "version: 1\nmode: off\n");
    let audit = scratch.path("audit.jsonl");
    let mut command = std::process::Command::new("prlimit");
    command
        .args(["--nofile=256:256", BIN, "proxy", "--policy"])
        .arg(&policy)
        .arg("--audit-log")
        .arg(&audit)
        .args(["--listen", "127.0.0.1:0"]);
    let proxy = Proxy::spawn(&mut command, scratch, audit);
    // (256 - 64) / 10 descriptors a connection.
    let warned = poll(Duration::from_secs(5), || {
        proxy.stderr().contains("fits 19 connections").then_some(())
    });
    assert!(warned.is_some(), "{}", proxy.stderr());
}

/// `curl --unix-socket` GET of `path` on the metrics socket: status, body.
fn scrape(socket: &std::path::Path, path: &str) -> CurlResult {
    curl(&[
        "--unix-socket",
        socket.to_str().unwrap(),
        &format!("http://metrics{path}"),
    ])
}

/// The value of the sample whose line starts with `series` (name and
/// labels as written), or None.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// --metrics serves Prometheus text: decisions by decision and reason,
/// bytes, open connections, audit write errors, and the policy generation,
/// which a reload moves on.
#[test]
fn metrics_count_decisions_bytes_and_reloads() {
    let upstream = Upstream::start();
    let scratch = Scratch::new("metrics");
    let socket = scratch.path("metrics.sock");
    let policy_path = scratch.write("policy.yaml", &loopback_policy(&[upstream.port()], ""));
    let metrics_arg = format!("unix:{}", socket.display());
    let proxy = Proxy::start_with_policy_file(&policy_path, &["--metrics", &metrics_arg]);
    assert_eq!(
        curl_via(&proxy, &[&allowed_url(&upstream, "/")]).status,
        200
    );
    let denied = format!("http://other.test:{}/", upstream.port());
    assert_eq!(curl_via(&proxy, &[&denied]).status, 403);
    proxy.audit(2);
    let scraped = scrape(&socket, "/metrics");
    assert_eq!(scraped.status, 200, "{scraped:?}");
    assert!(
        scraped
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{scraped:?}"
    );
    let text = &scraped.body;
    let value =
        |series: &str| sample(text, series).unwrap_or_else(|| panic!("no {series}:\n{text}"));
    assert_eq!(
        value(r#"tollgate_decisions_total{decision="allow",reason="",phase=""}"#),
        1.0
    );
    assert_eq!(
        value(r#"tollgate_decisions_total{decision="deny",reason="not-allowlisted",phase=""}"#),
        1.0
    );
    assert!(value(r#"tollgate_bytes_total{direction="down",phase=""}"#) > 0.0);
    assert_eq!(value("tollgate_audit_write_errors_total"), 0.0);
    assert_eq!(value("tollgate_policy_generation"), 1.0);
    // Both curls have gone: their connections are closed again.
    let closed = poll(Duration::from_secs(5), || {
        let text = scrape(&socket, "/metrics").body;
        (sample(&text, "tollgate_open_connections") == Some(0.0)).then_some(())
    });
    assert!(closed.is_some(), "{}", scrape(&socket, "/metrics").body);
    assert!(value("tollgate_exchange_seconds_count") >= 2.0);
    proxy.signal("HUP");
    let reloaded = poll(Duration::from_secs(5), || {
        let text = scrape(&socket, "/metrics").body;
        (sample(&text, "tollgate_policy_generation") == Some(2.0)).then_some(())
    });
    assert!(reloaded.is_some(), "{}", proxy.stderr());
    assert_eq!(scrape(&socket, "/other").status, 404);
}

/// An IPv4 client of a dual-stack listener is the same client as on an
/// IPv4 listener: it is named 127.0.0.1 (not ::ffff:127.0.0.1) and held to
/// one cap.
#[test]
fn a_dual_stack_listener_names_ipv4_clients_as_ipv4() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(
        &loopback_policy(&[upstream.port()], ""),
        &["--listen", "[::]:0", "--max-client-connections", "2"],
    );
    let port = proxy.addr.port();
    let v4 = format!("127.0.0.1:{port}");
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&v4).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(&v4).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(third.read(&mut buf), Ok(0) | Err(_)));
    let record = proxy
        .audit_where(|r| r["reason"] == "too-many-connections")
        .expect("a too-many-connections record");
    let client = record["client"].as_str().unwrap();
    assert!(client.starts_with("127.0.0.1:"), "{client}");
    drop(held);
}

/// Connections to the metrics endpoint cannot take the descriptors the
/// proxy's connections need: past a few, they are closed as accepted.
#[test]
fn a_flood_of_metrics_connections_does_not_stop_the_proxy() {
    let upstream = Upstream::start();
    let scratch = Scratch::new("metrics-flood");
    let policy = scratch.write("policy.yaml", &loopback_policy(&[upstream.port()], ""));
    let socket = scratch.path("metrics.sock");
    let audit = scratch.path("audit.jsonl");
    let mut command = std::process::Command::new("prlimit");
    command
        .args(["--nofile=200:200", BIN, "proxy", "--policy"])
        .arg(&policy)
        .arg("--audit-log")
        .arg(&audit)
        .args(["--listen", "127.0.0.1:0", "--metrics"])
        .arg(format!("unix:{}", socket.display()));
    let proxy = Proxy::spawn(&mut command, scratch, audit);
    poll(Duration::from_secs(5), || socket.exists().then_some(())).expect("a metrics socket");
    let flood: Vec<_> = (0..300)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&socket).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let r = curl_via(&proxy, &["-m", "5", &allowed_url(&upstream, "/")]);
    assert_eq!(r.status, 200, "{r:?} {}", proxy.stderr());
    assert!(
        !proxy.stderr().contains("Too many open files"),
        "{}",
        proxy.stderr()
    );
    drop(flood);
}

/// A request whose client gave up while it waited for a connection slot
/// was never answered: client-aborted, not ok.
#[test]
fn a_request_abandoned_in_the_backlog_is_recorded_client_aborted() {
    let upstream = Upstream::start();
    let proxy = Proxy::start(
        &loopback_policy(&[upstream.port()], ""),
        &["--max-connections", "1"],
    );
    let holder = TcpStream::connect(proxy.addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let r = curl_via(&proxy, &["-m", "1", &allowed_url(&upstream, "/abandoned")]);
    assert_ne!(r.status, 200);
    drop(holder);
    let record = proxy
        .audit_where(|r| r["path"] == "/abandoned")
        .expect("a record of the abandoned request");
    assert_eq!(record["outcome"], "client-aborted", "{record}");
}
