//! End-to-end tests of the internal-address guard and of "decide before
//! resolving" (DESIGN.md, invariants 1, 2 and 3), through the real
//! `tollgate proxy` binary.
//!
//! Nothing here can leave the machine, even with a broken guard: every test
//! runs the proxy inside a lab ([`common::NetLab`]), a network and mount
//! namespace the test creates itself whose only interface is `lo`. A server
//! on every address the tests name records each connection, so a dial the
//! guard should have refused is *seen* instead of leaking, and a DNS canary
//! records every query. The test process reaches each proxy through a unix
//! socket, which works across network namespaces.
//!
//! Needs root (namespaces); every test says SKIP loudly when not root.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

// ---------------------------------------------------------------------------
// 1. Every internal range, through the proxy (invariant 2).
// ---------------------------------------------------------------------------

/// `mode: unrestricted` (only the guard can refuse): a plain HTTP GET to each
/// internal address is refused with internal-address, the audit names the
/// refused address, and nothing is dialled or resolved. Control: with
/// `allow_internal`, the same lab server answers through the proxy.
#[test]
fn guard_refuses_every_internal_range_over_plain_http() {
    require_root!();
    let lab = NetLab::new(&[]);
    let proxy = lab.proxy(UNRESTRICTED);
    let mut problems = Vec::new();
    for &(host, addr) in INTERNAL_HOSTS.iter().chain(ENCODED_METADATA) {
        let reply = proxy.get(host, "/latest/meta-data/");
        problems.extend(proxy.refusal_problems(
            &format!("GET http://{host}/"),
            &reply,
            "http",
            "internal-address",
            Some(ip(addr)),
        ));
    }
    settle();
    problems.extend(lab.leaks());
    problems.extend(literal_host_problems(&proxy));
    assert_no_problems(&problems);

    // Control: the lab server is reachable through the proxy once
    // allow_internal covers it, so the silence above was the guard's doing.
    // allow_internal matches literally: 10.0.0.0/8 does not exempt the
    // IPv4-mapped form of 10.0.0.1.
    let allowing =
        lab.proxy("version: 1\nmode: unrestricted\nallow_internal: [10.0.0.0/8, \"fd12::/16\"]\n");
    let reply = allowing.get("10.0.0.1", "/control");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        "netns server at 10.0.0.1:80 saw GET /control HTTP/1.1"
    );
    let reply = allowing.get("[fd12::1]", "/control6");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        "netns server at [fd12::1]:80 saw GET /control6 HTTP/1.1"
    );
    let mut problems = Vec::new();
    for host in ["[::ffff:10.0.0.1]", "172.16.0.1", "[fc00::1]"] {
        let reply = allowing.get(host, "/");
        let addr = ip(host.trim_start_matches('[').trim_end_matches(']'));
        problems.extend(allowing.refusal_problems(
            &format!("GET http://{host}/ with allow_internal 10/8"),
            &reply,
            "http",
            "internal-address",
            Some(addr),
        ));
    }
    assert_no_problems(&problems);
    let record = allowing
        .audit_where(|r| r["host"] == "10.0.0.1" && r["decision"] == "allow")
        .expect("audit record of the allowed request");
    assert_eq!(record["resolved"], "10.0.0.1", "{record}");
    assert_eq!(record["status"], 200, "{record}");
    settle();
    assert_eq!(
        lab.server.seen(),
        [
            "10.0.0.1:80".parse().unwrap(),
            "[fd12::1]:80".parse().unwrap()
        ],
        "only the two allowed requests may reach the lab server"
    );
    assert_eq!(lab.dns.queries(), Vec::<String>::new());
}

/// (host as written in the request, the address it is): one address from
/// each range DESIGN.md's invariant 2 names.
const INTERNAL_HOSTS: &[(&str, &str)] = &[
    ("127.0.0.1", "127.0.0.1"),
    ("127.255.255.254", "127.255.255.254"),
    ("10.0.0.1", "10.0.0.1"),
    ("172.16.0.1", "172.16.0.1"),
    ("172.31.255.254", "172.31.255.254"),
    ("192.168.0.1", "192.168.0.1"),
    ("169.254.169.254", "169.254.169.254"),
    ("169.254.0.1", "169.254.0.1"),
    ("100.64.0.1", "100.64.0.1"),
    ("100.127.255.254", "100.127.255.254"),
    ("0.0.0.0", "0.0.0.0"),
    ("0.1.2.3", "0.1.2.3"),
    ("224.0.0.1", "224.0.0.1"),
    ("255.255.255.255", "255.255.255.255"),
    ("240.0.0.1", "240.0.0.1"),
    ("[::1]", "::1"),
    ("[::]", "::"),
    ("[fc00::1]", "fc00::1"),
    ("[fd12::1]", "fd12::1"),
    ("[fe80::1]", "fe80::1"),
    ("[ff02::1]", "ff02::1"),
    ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
    ("[::ffff:10.0.0.1]", "::ffff:10.0.0.1"),
    ("[::ffff:169.254.169.254]", "::ffff:169.254.169.254"),
    ("[::127.0.0.1]", "::127.0.0.1"),
    ("[64:ff9b::a00:1]", "64:ff9b::a00:1"),
    ("[64:ff9b:1::a00:1]", "64:ff9b:1::a00:1"),
    ("[2002:a00:1::]", "2002:a00:1::"),
    ("[2001::1]", "2001::1"),
];

/// The cloud metadata address spelled the ways SSRF payloads spell it.
const ENCODED_METADATA: &[(&str, &str)] = &[
    ("2852039166", "169.254.169.254"),
    ("0xA9FEA9FE", "169.254.169.254"),
    ("0251.0376.0251.0376", "169.254.169.254"),
    ("169.254.43518", "169.254.169.254"),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("169.254.169.254.", "169.254.169.254"),
    ("[::ffff:a9fe:a9fe]", "::ffff:169.254.169.254"),
    ("[0:0:0:0:0:ffff:7f00:1]", "::ffff:127.0.0.1"),
    ("0xa.0.0.1", "10.0.0.1"),
];

/// Every audit record of `proxy` names an IP literal as its host in
/// canonical form (`10.0.0.1`, `[fd12::1]`), the address it resolved to:
/// `0xA9FEA9FE` is an IP, not a name.
fn literal_host_problems(proxy: &LabProxy) -> Vec<String> {
    proxy
        .audit()
        .into_iter()
        .filter_map(|record| {
            let resolved = record["resolved"].as_str()?.parse::<IpAddr>().ok()?;
            let canonical = match resolved {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            (record["host"] != canonical.as_str())
                .then(|| format!("audit host is not the canonical IP {canonical}: {record}"))
        })
        .collect()
}

/// The same over CONNECT: refused before the tunnel is answered, so no TCP
/// connection is ever opened. Control: allow_internal opens a working tunnel.
#[test]
fn guard_refuses_every_internal_range_over_connect() {
    require_root!();
    let lab = NetLab::new(&[]);
    let proxy = lab.proxy(UNRESTRICTED);
    let mut problems = Vec::new();
    for &(host, addr) in INTERNAL_HOSTS.iter().chain(ENCODED_METADATA) {
        let (reply, tunnel) = proxy.connect(&format!("{host}:443"));
        drop(tunnel);
        problems.extend(proxy.refusal_problems(
            &format!("CONNECT {host}:443"),
            &reply,
            "connect",
            "internal-address",
            Some(ip(addr)),
        ));
    }
    settle();
    problems.extend(lab.leaks());
    problems.extend(literal_host_problems(&proxy));
    assert_no_problems(&problems);

    let allowing =
        lab.proxy("version: 1\nmode: unrestricted\nallow_internal: [10.0.0.0/8, \"fd12::/16\"]\n");
    let reply = allowing.tls_through_tunnel("[fd12::1]:443", None);
    assert_eq!(reply.status, 200, "{reply:?}");
    settle();
    let reached: SocketAddr = "[fd12::1]:443".parse().unwrap();
    assert!(
        lab.server.seen().contains(&reached),
        "{:?}",
        lab.server.seen()
    );
    let (reply, _) = allowing.connect("[::ffff:10.0.0.1]:443");
    assert_no_problems(&allowing.refusal_problems(
        "CONNECT [::ffff:10.0.0.1]:443 with allow_internal 10/8",
        &reply,
        "connect",
        "internal-address",
        Some(ip("::ffff:10.0.0.1")),
    ));
    let record = allowing
        .audit_where(|r| r["kind"] == "connect" && r["decision"] == "allow")
        .expect("audit record of the allowed tunnel");
    assert_eq!(record["resolved"], "fd12::1", "{record}");
    settle();
    assert_eq!(lab.server.seen(), ["[fd12::1]:443".parse().unwrap()]);
    assert_eq!(lab.dns.queries(), Vec::<String>::new());
}

/// An `allow_internal` entry for an IPv6 form that embeds IPv4 addresses
/// (a NAT64 prefix, 6to4) exempts that IPv6 range, not the IPv4 address
/// behind it: with only the IPv6 ranges exempt, the lab's 64:ff9b::a00:1 and
/// 2002:a00:1:: (both embedding 10.0.0.1) are refused and never dialled, over
/// HTTP and CONNECT. Control: exempting 10.0.0.0/8 as well lets both through
/// to the lab server.
#[test]
fn ipv6_exemption_does_not_exempt_the_embedded_ipv4_address() {
    require_root!();
    let lab = NetLab::new(&[]);
    const EMBEDDING_10_0_0_1: [(&str, &str); 2] = [
        ("[64:ff9b::a00:1]", "64:ff9b::a00:1"),
        ("[2002:a00:1::]", "2002:a00:1::"),
    ];
    let ipv6_only = lab.proxy(
        "version: 1\nmode: unrestricted\nallow_internal: [\"64:ff9b::/96\", \"2002::/16\"]\n",
    );
    let mut problems = Vec::new();
    for (host, addr) in EMBEDDING_10_0_0_1 {
        let reply = ipv6_only.get(host, "/");
        problems.extend(ipv6_only.refusal_problems(
            &format!("GET http://{host}/ with only the IPv6 range exempt"),
            &reply,
            "http",
            "internal-address",
            Some(ip(addr)),
        ));
        let (reply, tunnel) = ipv6_only.connect(&format!("{host}:443"));
        drop(tunnel);
        problems.extend(ipv6_only.refusal_problems(
            &format!("CONNECT {host}:443 with only the IPv6 range exempt"),
            &reply,
            "connect",
            "internal-address",
            Some(ip(addr)),
        ));
    }
    settle();
    problems.extend(lab.leaks());
    assert_no_problems(&problems);

    let both = lab.proxy(
        "version: 1\nmode: unrestricted\nallow_internal: [\"64:ff9b::/96\", \"2002::/16\", 10.0.0.0/8]\n",
    );
    for (host, _) in EMBEDDING_10_0_0_1 {
        let reply = both.get(host, "/control");
        assert_eq!(reply.status, 200, "{host}: {reply:?}");
        assert_eq!(
            reply.body,
            format!("netns server at {host}:80 saw GET /control HTTP/1.1")
        );
    }
    settle();
    assert_eq!(
        lab.server.seen(),
        [
            "[64:ff9b::a00:1]:80".parse().unwrap(),
            "[2002:a00:1::]:80".parse().unwrap()
        ],
        "only the requests with both ranges exempt may reach the lab server"
    );
}

// ---------------------------------------------------------------------------
// 2. IP literals in every inet_aton form (invariant 3).
// ---------------------------------------------------------------------------

/// 127.0.0.1 as inet_aton(3) reads it.
const LOOPBACK_FORMS: &[&str] = &[
    "2130706433",
    "0x7f.1",
    "0x7F000001",
    "0X7f.0.0.1",
    "0177.0.0.1",
    "127.1",
    "127.0.1",
    "017700000001",
    "127.0.0.1.",
    "0x7f.0x0.0x0.0x1",
];

/// Every inet_aton spelling of 127.0.0.1 is an IP literal: refused as
/// internal-address (audit host and resolved 127.0.0.1), never looked up in
/// DNS, and a loopback Canary sees nothing. Control: with
/// `allow_internal: [127.0.0.0/8]` every form reaches a loopback Upstream.
///
/// The proxy runs in a lab rather than the host namespace, with the Canary and
/// Upstream on the lab's loopback: if a form were misparsed (say `0177.0.0.1`
/// as 177.0.0.1) or sent to DNS, a host-namespace proxy would send that packet
/// off the machine.
#[test]
fn inet_aton_forms_are_ips_and_guarded() {
    require_root!();
    let lab = NetLab::new(&[]);
    let canary = lab.enter(Canary::start);
    let port = canary.addr.port();
    let proxy = lab.proxy(UNRESTRICTED);
    let loopback = Some(ip("127.0.0.1"));
    let mut problems = Vec::new();
    for form in LOOPBACK_FORMS {
        let authority = format!("{form}:{port}");
        let reply = proxy.get(&authority, "/");
        let what = format!("GET http://{authority}/");
        problems.extend(proxy.refusal_problems(
            &what,
            &reply,
            "http",
            "internal-address",
            loopback,
        ));
        let (reply, _) = proxy.connect(&authority);
        let what = format!("CONNECT {authority}");
        problems.extend(proxy.refusal_problems(
            &what,
            &reply,
            "connect",
            "internal-address",
            loopback,
        ));
    }
    settle();
    if !canary.untouched() {
        problems.push(format!(
            "the loopback canary got {} connection(s), {} byte(s)",
            canary.connections.load(Ordering::SeqCst),
            canary.bytes()
        ));
    }
    problems.extend(lab.leaks());
    for record in proxy.audit() {
        if record["host"] != "127.0.0.1" {
            problems.push(format!("audit host not normalised to 127.0.0.1: {record}"));
        }
    }
    assert_no_problems(&problems);

    // Control: the same forms, allowed, reach a loopback upstream.
    let upstream = lab.enter(Upstream::start);
    let port = upstream.port();
    let allowing = lab.proxy("version: 1\nmode: unrestricted\nallow_internal: [127.0.0.0/8]\n");
    let mut problems = Vec::new();
    for form in LOOPBACK_FORMS {
        let authority = format!("{form}:{port}");
        let reply = allowing.get(&authority, "/aton");
        let want = format!("upstream saw GET /aton host=127.0.0.1:{port}");
        if reply.status != 200 || reply.body != want {
            problems.push(format!("GET http://{authority}/aton: {reply:?}"));
        }
        let reply = allowing.tls_through_tunnel(&authority, None);
        if reply.status != 200 {
            problems.push(format!("CONNECT {authority}: {reply:?}"));
        }
    }
    assert_no_problems(&problems);
    // The GETs reached the upstream; the tunnels' arrival at 127.0.0.1 is in
    // the audit records below (`resolved`).
    assert_eq!(upstream.hits(), LOOPBACK_FORMS.len());
    let want_records = 2 * LOOPBACK_FORMS.len();
    let records = allowing.audit_at_least(want_records);
    assert_eq!(records.len(), want_records, "{records:#?}");
    for record in &records {
        assert!(
            record["decision"] == "allow"
                && record["host"] == "127.0.0.1"
                && record["resolved"] == "127.0.0.1",
            "{record}"
        );
    }
    assert!(canary.untouched());

    // 127.0.0.0/8 does not exempt the unspecified address, which Linux
    // connects to the local host.
    let mut problems = Vec::new();
    for form in ["0.0.0.0", "0", "0x0", "0.0"] {
        let authority = format!("{form}:{port}");
        let reply = allowing.get(&authority, "/");
        let what = format!("GET http://{authority}/ (allow_internal: [127.0.0.0/8])");
        problems.extend(allowing.refusal_problems(
            &what,
            &reply,
            "http",
            "internal-address",
            Some(ip("0.0.0.0")),
        ));
    }
    assert_no_problems(&problems);
    assert_eq!(upstream.hits(), LOOPBACK_FORMS.len());

    // A deny rule naming 127.0.0.1 catches every spelling of it, even where
    // allow_internal would let the address through.
    let denying = lab.proxy(
        "version: 1\nmode: unrestricted\ndeny: [127.0.0.1]\nallow_internal: [127.0.0.0/8]\n",
    );
    let hits_before = upstream.hits();
    let mut problems = Vec::new();
    for form in LOOPBACK_FORMS {
        let authority = format!("{form}:{port}");
        let reply = denying.get(&authority, "/");
        let what = format!("GET http://{authority}/ (deny: [127.0.0.1])");
        problems.extend(denying.refusal_problems(&what, &reply, "http", "denylisted", None));
        let (reply, _) = denying.connect(&authority);
        let what = format!("CONNECT {authority} (deny: [127.0.0.1])");
        problems.extend(denying.refusal_problems(&what, &reply, "connect", "denylisted", None));
    }
    settle();
    if upstream.hits() != hits_before {
        problems.push(format!(
            "{} request(s) reached the upstream past the deny rule",
            upstream.hits() - hits_before
        ));
    }
    problems.extend(lab.leaks());
    assert_no_problems(&problems);
}

// ---------------------------------------------------------------------------
// 3. Static `hosts:` entries go through the guard too (invariant 2).
// ---------------------------------------------------------------------------

const HOSTS_POLICY: &str = "version: 1
mode: limited
allow: [metadata.test, lan.test, loop.test, 10.1.2.3]
hosts:
  metadata.test: 169.254.169.254
  lan.test: 10.1.2.3
  loop.test: 127.0.0.7
";

/// Names the policy allows but `hosts:` maps to internal addresses are
/// refused with internal-address, naming the mapped address. With
/// `allow_internal` covering exactly loop.test's address, only loop.test
/// gets through, and the connection arrives at exactly that address (the
/// proxy dials what it checked, it does not look the name up again).
#[test]
fn hosts_entries_are_guarded_and_dialled_as_checked() {
    require_root!();
    let lab = NetLab::new(&[]);
    let mapped = [
        ("metadata.test", "169.254.169.254"),
        ("lan.test", "10.1.2.3"),
        ("loop.test", "127.0.0.7"),
    ];
    let proxy = lab.proxy(HOSTS_POLICY);
    let mut problems = Vec::new();
    for (name, addr) in mapped {
        let reply = proxy.get(name, "/latest/meta-data/");
        let what = format!("GET http://{name}/");
        problems.extend(proxy.refusal_problems(
            &what,
            &reply,
            "http",
            "internal-address",
            Some(ip(addr)),
        ));
        let (reply, _) = proxy.connect(&format!("{name}:443"));
        let what = format!("CONNECT {name}:443");
        problems.extend(proxy.refusal_problems(
            &what,
            &reply,
            "connect",
            "internal-address",
            Some(ip(addr)),
        ));
    }
    // An allow rule naming an internal IP is not an allow_internal.
    let reply = proxy.get("10.1.2.3", "/");
    problems.extend(proxy.refusal_problems(
        "GET http://10.1.2.3/ (allow: [10.1.2.3])",
        &reply,
        "http",
        "internal-address",
        Some(ip("10.1.2.3")),
    ));
    // The policy still decides first: a name it does not allow is refused
    // for that, with nothing resolved.
    let reply = proxy.get("other.test", "/");
    problems.extend(proxy.refusal_problems(
        "GET http://other.test/",
        &reply,
        "http",
        "not-allowlisted",
        None,
    ));
    settle();
    problems.extend(lab.leaks());
    assert_no_problems(&problems);

    let allowing = lab.proxy(&format!("{HOSTS_POLICY}allow_internal: [127.0.0.7/32]\n"));
    let mut problems = Vec::new();
    for (name, addr) in &mapped[..2] {
        let reply = allowing.get(name, "/");
        let what = format!("GET http://{name}/ (allow_internal 127.0.0.7/32)");
        problems.extend(allowing.refusal_problems(
            &what,
            &reply,
            "http",
            "internal-address",
            Some(ip(addr)),
        ));
        let (reply, _) = allowing.connect(&format!("{name}:443"));
        let what = format!("CONNECT {name}:443 (allow_internal 127.0.0.7/32)");
        problems.extend(allowing.refusal_problems(
            &what,
            &reply,
            "connect",
            "internal-address",
            Some(ip(addr)),
        ));
    }
    assert_no_problems(&problems);
    let reply = allowing.get("loop.test", "/mapped");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        "netns server at 127.0.0.7:80 saw GET /mapped HTTP/1.1"
    );
    let reply = allowing.tls_through_tunnel("loop.test:443", Some("loop.test"));
    assert_eq!(reply.status, 200, "{reply:?}");
    settle();
    let reached: SocketAddr = "127.0.0.7:443".parse().unwrap();
    assert!(
        lab.server.seen().contains(&reached),
        "{:?}",
        lab.server.seen()
    );
    for kind in ["http", "connect"] {
        let record = allowing
            .audit_where(|r| r["kind"] == kind && r["decision"] == "allow")
            .unwrap_or_else(|| panic!("no allowed {kind} audit record"));
        assert_eq!(record["host"], "loop.test", "{record}");
        assert_eq!(record["resolved"], "127.0.0.7", "{record}");
    }
    settle();
    assert_eq!(
        lab.server.seen(),
        [
            "127.0.0.7:80".parse().unwrap(),
            "127.0.0.7:443".parse().unwrap()
        ]
    );
    assert_eq!(lab.dns.queries(), Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// 4. A denied name is never resolved (invariant 1).
// ---------------------------------------------------------------------------

/// Every way a limited policy refuses a name (not allowlisted, deny list,
/// wrong port) happens before DNS: the lab's resolver hears nothing. Control:
/// an allowed name is looked up (the canary answers NXDOMAIN, so the proxy
/// says resolve-failed), which shows the canary would have heard.
#[test]
fn denied_names_are_never_resolved() {
    require_root!();
    let lab = NetLab::new(&[]);
    let proxy = lab.proxy(
        "version: 1
mode: limited
allow: [\"**.allowed.example\"]
deny: [secret.allowed.example]
",
    );
    let mut problems = Vec::new();
    let refused_gets = [
        ("denied.example", "not-allowlisted"),
        ("DENIED.Example.", "not-allowlisted"),
        ("sub.denied.example", "not-allowlisted"),
        ("allowed.example.denied.example", "not-allowlisted"),
        ("secret.allowed.example", "denylisted"),
        ("allowed.example:8080", "port-not-allowed"),
    ];
    for (authority, reason) in refused_gets {
        let reply = proxy.get(authority, "/");
        let what = format!("GET http://{authority}/");
        problems.extend(proxy.refusal_problems(&what, &reply, "http", reason, None));
    }
    let refused_connects = [
        ("denied.example:443", "not-allowlisted"),
        ("secret.allowed.example:443", "denylisted"),
        ("allowed.example:22", "port-not-allowed"),
    ];
    for (authority, reason) in refused_connects {
        let (reply, _) = proxy.connect(authority);
        let what = format!("CONNECT {authority}");
        problems.extend(proxy.refusal_problems(&what, &reply, "connect", reason, None));
    }
    settle();
    problems.extend(lab.leaks());
    assert_no_problems(&problems);

    // Control: allowed names are resolved, through the lab's resolver.
    let reply = proxy.get("allowed.example", "/");
    let mut problems = proxy.refusal_problems(
        "GET http://allowed.example/",
        &reply,
        "http",
        "resolve-failed",
        None,
    );
    let (reply, _) = proxy.connect("www.allowed.example:443");
    problems.extend(proxy.refusal_problems(
        "CONNECT www.allowed.example:443",
        &reply,
        "connect",
        "resolve-failed",
        None,
    ));
    assert_no_problems(&problems);
    let queries = lab.dns.queries();
    for name in ["allowed.example ", "www.allowed.example "] {
        assert!(
            queries.iter().any(|q| q.starts_with(name)),
            "no DNS query for {name}: {queries:?}"
        );
    }
    assert!(
        queries
            .iter()
            .all(|q| q.starts_with("allowed.example ") || q.starts_with("www.allowed.example ")),
        "unexpected DNS queries: {queries:?}"
    );
    assert_eq!(lab.server.seen(), Vec::<SocketAddr>::new());
}

/// `mode: off` refuses everything without a single DNS query, even names its
/// allow list names. Control: an unrestricted proxy in the same lab does ask.
#[test]
fn mode_off_resolves_nothing() {
    require_root!();
    let lab = NetLab::new(&[]);
    let proxy = lab.proxy("version: 1\nmode: off\nallow: [allowed.example]\n");
    let mut problems = Vec::new();
    for authority in ["allowed.example", "denied.example", "allowed.example:8080"] {
        let reply = proxy.get(authority, "/");
        let what = format!("GET http://{authority}/");
        problems.extend(proxy.refusal_problems(&what, &reply, "http", "mode-off", None));
    }
    for authority in ["allowed.example:443", "denied.example:443"] {
        let (reply, _) = proxy.connect(authority);
        let what = format!("CONNECT {authority}");
        problems.extend(proxy.refusal_problems(&what, &reply, "connect", "mode-off", None));
    }
    settle();
    problems.extend(lab.leaks());
    assert_no_problems(&problems);

    let open = lab.proxy(UNRESTRICTED);
    let reply = open.get("allowed.example", "/");
    assert_no_problems(&open.refusal_problems(
        "GET http://allowed.example/ (unrestricted)",
        &reply,
        "http",
        "resolve-failed",
        None,
    ));
    let queries = lab.dns.queries();
    assert!(
        !queries.is_empty() && queries.iter().all(|q| q.starts_with("allowed.example ")),
        "{queries:?}"
    );
}

// ---------------------------------------------------------------------------
// 5. DNS answers mixing public and internal addresses (invariant 2).
// ---------------------------------------------------------------------------

/// A name whose DNS answer includes any internal address is refused even when
/// another address in the answer is public (the DNS rebinding set-up), over
/// both A and AAAA, and no address of it is dialled. Control: a name that
/// resolves only to the (guard-)public lab address is dialled at exactly that
/// address.
#[test]
fn dns_answer_with_any_internal_address_is_refused() {
    require_root!();
    let lab = NetLab::new(&[
        ("rebind.test", &[LAB_PUBLIC, "10.0.0.1"]),
        ("rebind-first.test", &["169.254.169.254", LAB_PUBLIC]),
        ("rebind6.test", &[LAB_PUBLIC, "fd12::1"]),
        ("mapped6.test", &[LAB_PUBLIC, "::ffff:127.0.0.1"]),
        ("internal.test", &["10.0.0.1"]),
        ("public.test", &[LAB_PUBLIC]),
    ]);
    let proxy = lab.proxy(UNRESTRICTED);
    let cases = [
        ("rebind.test", "10.0.0.1"),
        ("rebind-first.test", "169.254.169.254"),
        ("rebind6.test", "fd12::1"),
        ("mapped6.test", "::ffff:127.0.0.1"),
        ("internal.test", "10.0.0.1"),
    ];
    let mut problems = Vec::new();
    for (name, internal) in cases {
        let reply = proxy.get(name, "/");
        let what = format!("GET http://{name}/");
        problems.extend(proxy.refusal_problems(
            &what,
            &reply,
            "http",
            "internal-address",
            Some(ip(internal)),
        ));
        let (reply, _) = proxy.connect(&format!("{name}:443"));
        let what = format!("CONNECT {name}:443");
        problems.extend(proxy.refusal_problems(
            &what,
            &reply,
            "connect",
            "internal-address",
            Some(ip(internal)),
        ));
    }
    // Names are resolved fully qualified, so /etc/hosts (whose glibc backend
    // does not match a trailing dot) does not answer for `localhost`: it is
    // refused before anything is dialled, as resolve-failed.
    for host in ["localhost", "LocalHost."] {
        let reply = proxy.get(host, "/");
        if reply.header("x-tollgate-reason") != Some("resolve-failed") {
            problems.push(format!("GET http://{host}/: {reply:?}"));
        }
    }
    settle();
    for addr in lab.server.seen() {
        problems.push(format!("the proxy dialled {addr}"));
    }
    let queries = lab.dns.queries();
    for (name, _) in cases {
        if !queries.iter().any(|q| q == &format!("{name} A")) {
            problems.push(format!("no A query for {name}: {queries:?}"));
        }
    }
    assert_no_problems(&problems);

    // Control: an all-public answer is dialled, at the address checked.
    let reply = proxy.get("public.test", "/public");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        format!("netns server at {LAB_PUBLIC}:80 saw GET /public HTTP/1.1")
    );
    let record = proxy
        .audit_where(|r| r["host"] == "public.test" && r["decision"] == "allow")
        .expect("audit record for public.test");
    assert_eq!(record["resolved"], LAB_PUBLIC, "{record}");
    settle();
    assert_eq!(
        lab.server.seen(),
        [SocketAddr::new(ip(LAB_PUBLIC), 80)],
        "only public.test may reach the lab server"
    );
}

/// Rebinding over time: the first answer for a name is public, every later
/// one internal. The proxy dials the address it checked (the public one),
/// never a fresh look-up of the name, and refuses the name once its answer
/// turns internal.
#[test]
fn rebinding_after_the_check_is_not_followed() {
    require_root!();
    let lab = NetLab::new(&[
        ("flip.test", &[LAB_PUBLIC, THEN, "10.0.0.1"]),
        ("flip-tunnel.test", &[LAB_PUBLIC, THEN, "169.254.169.254"]),
    ]);
    let proxy = lab.proxy(UNRESTRICTED);

    let reply = proxy.get("flip.test", "/first");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body,
        format!("netns server at {LAB_PUBLIC}:80 saw GET /first HTTP/1.1")
    );
    let reply = proxy.tls_through_tunnel("flip-tunnel.test:443", Some("flip-tunnel.test"));
    assert_eq!(reply.status, 200, "{reply:?}");
    settle();
    let reached: SocketAddr = format!("{LAB_PUBLIC}:443").parse().unwrap();
    assert!(
        lab.server.seen().contains(&reached),
        "{:?}",
        lab.server.seen()
    );
    for host in ["flip.test", "flip-tunnel.test"] {
        let record = proxy
            .audit_where(|r| r["host"] == host && r["decision"] == "allow")
            .unwrap_or_else(|| panic!("no allow record for {host}"));
        assert_eq!(record["resolved"], LAB_PUBLIC, "{record}");
    }

    // The names now resolve to internal addresses: refused.
    let reply = proxy.get("flip.test", "/second");
    let mut problems = proxy.refusal_problems(
        "second GET http://flip.test/",
        &reply,
        "http",
        "internal-address",
        Some(ip("10.0.0.1")),
    );
    let (reply, _) = proxy.connect("flip-tunnel.test:443");
    problems.extend(proxy.refusal_problems(
        "second CONNECT flip-tunnel.test:443",
        &reply,
        "connect",
        "internal-address",
        Some(ip("169.254.169.254")),
    ));
    settle();
    let public = ip(LAB_PUBLIC);
    for addr in lab.server.seen() {
        if addr.ip() != public {
            problems.push(format!("the proxy dialled {addr}"));
        }
    }
    assert_no_problems(&problems);
    assert_eq!(
        lab.server.seen(),
        [SocketAddr::new(public, 80), SocketAddr::new(public, 443)]
    );
}

// ---------------------------------------------------------------------------
// 6. The guard outlives policy changes and audit mode.
// ---------------------------------------------------------------------------

/// A reload (SIGHUP) that takes an address out of `allow_internal` takes
/// effect for the next request: a kept-alive upstream connection to that
/// address, opened under the old policy, is not reused.
#[test]
fn reload_removing_allow_internal_drops_pooled_connections() {
    require_root!();
    let lab = NetLab::new(&[("lan.test", &["10.0.0.1"])]);
    let allowing = "version: 1\nmode: unrestricted\nallow_internal: [10.0.0.0/8]\n";
    let proxy = lab.proxy(allowing);
    for (host, path) in [("10.0.0.1:8080", "/one"), ("lan.test:8080", "/one")] {
        let reply = proxy.get(host, path);
        assert_eq!(reply.status, 200, "GET http://{host}{path}: {reply:?}");
    }
    // Both connections are pooled: asking again opens no new one.
    for host in ["10.0.0.1:8080", "lan.test:8080"] {
        let reply = proxy.get(host, "/again");
        assert_eq!(reply.status, 200, "GET http://{host}/again: {reply:?}");
    }
    let before = lab.server.seen();
    assert_eq!(before.len(), 2, "the proxy did not pool: {before:?}");

    std::fs::write(&proxy.policy_path, UNRESTRICTED).expect("rewrite the policy");
    proxy.proxy.signal("HUP");
    let reloaded = eventually(Duration::from_secs(5), || {
        proxy.proxy.stderr().contains("reloaded policy")
    });
    assert!(reloaded, "no reload: {}", proxy.proxy.stderr());
    // The proxy logs "reloaded policy" just before it swaps the policy in
    // (src/cmd/proxy.rs, reload), so give the swap a moment.
    std::thread::sleep(Duration::from_millis(200));

    let mut problems = Vec::new();
    for host in ["10.0.0.1:8080", "lan.test:8080"] {
        let reply = proxy.get(host, "/two");
        problems.extend(proxy.refusal_problems(
            &format!("GET http://{host}/two after the reload"),
            &reply,
            "http",
            "internal-address",
            Some(ip("10.0.0.1")),
        ));
    }
    settle();
    let after = lab.server.seen();
    if after != before {
        problems.push(format!("new connections after the reload: {after:?}"));
    }
    assert_no_problems(&problems);
}

/// `enforce: false` (audit mode) lets would-be denials through, but not past
/// the guard: internal addresses are still refused, by literal, by DNS
/// answer, and by `hosts:` entry.
#[test]
fn audit_mode_still_guards() {
    require_root!();
    let lab = NetLab::new(&[("internal.test", &["10.0.0.1"])]);
    let mut problems = Vec::new();
    for mode in ["off", "limited"] {
        let proxy = lab.proxy(&format!(
            "version: 1\nmode: {mode}\nenforce: false\nhosts:\n  metadata.test: 169.254.169.254\n"
        ));
        for (host, addr) in [
            ("10.0.0.1", "10.0.0.1"),
            ("internal.test", "10.0.0.1"),
            ("metadata.test", "169.254.169.254"),
        ] {
            let reply = proxy.get(host, "/");
            problems.extend(proxy.refusal_problems(
                &format!("GET http://{host}/ (mode {mode}, enforce: false)"),
                &reply,
                "http",
                "internal-address",
                Some(ip(addr)),
            ));
            let (reply, _) = proxy.connect(&format!("{host}:443"));
            problems.extend(proxy.refusal_problems(
                &format!("CONNECT {host}:443 (mode {mode}, enforce: false)"),
                &reply,
                "connect",
                "internal-address",
                Some(ip(addr)),
            ));
        }
    }
    settle();
    for addr in lab.server.seen() {
        problems.push(format!("the proxy dialled {addr}"));
    }
    assert_no_problems(&problems);
}

// ---------------------------------------------------------------------------
// 7. The name decided is the name resolved (invariants 1 and 3).
// ---------------------------------------------------------------------------

/// With a `search` domain in resolv.conf, the system resolver tries
/// `NAME.corp.test` for a name with fewer dots than `ndots` (before `NAME`
/// itself) or that does not exist. The proxy must resolve exactly the name
/// the policy decided on, as an absolute name, or a deny rule is bypassed,
/// names the policy never saw are looked up and dialled, and an allowed
/// name reaches a different host. (`ndots:5` is what Kubernetes pods get.)
#[test]
fn search_domains_do_not_change_the_name_decided() {
    require_root!();
    let lab = NetLab::with_resolv_conf(
        &[
            ("intranet.corp.test", &[LAB_PUBLIC]),
            ("allowed.example.corp.test", &[LAB_PUBLIC]),
            ("real.example", &[LAB_PUBLIC]),
            ("real.example.corp.test", &["10.0.0.1"]),
        ],
        "search corp.test\noptions ndots:5\n",
    );
    let unrestricted = lab.proxy("version: 1\nmode: unrestricted\ndeny: [intranet.corp.test]\n");
    let limited = lab.proxy("version: 1\nmode: limited\nallow: [allowed.example]\n");
    let mut problems = Vec::new();
    let reply = unrestricted.get("intranet", "/");
    problems.extend(unrestricted.refusal_problems(
        "GET http://intranet/ (deny: [intranet.corp.test])",
        &reply,
        "http",
        "resolve-failed",
        None,
    ));
    let (reply, _) = unrestricted.connect("intranet:443");
    problems.extend(unrestricted.refusal_problems(
        "CONNECT intranet:443 (deny: [intranet.corp.test])",
        &reply,
        "connect",
        "resolve-failed",
        None,
    ));
    let reply = limited.get("allowed.example", "/");
    problems.extend(limited.refusal_problems(
        "GET http://allowed.example/ (allow: [allowed.example])",
        &reply,
        "http",
        "resolve-failed",
        None,
    ));
    let reply = unrestricted.get("real.example", "/");
    let want = format!("netns server at {LAB_PUBLIC}:80 saw GET / HTTP/1.1");
    let reached_real = reply.status == 200 && reply.body == want;
    if !reached_real {
        problems.push(format!(
            "GET http://real.example/ did not reach real.example ({LAB_PUBLIC}): {} {:?} {}",
            reply.status,
            reply.header("x-tollgate-reason"),
            reply.body.trim()
        ));
    }
    settle();
    let public = SocketAddr::new(ip(LAB_PUBLIC), 80);
    let mut seen = lab.server.seen();
    if let Some(at) = seen.iter().position(|a| *a == public && reached_real) {
        seen.remove(at); // real.example, rightly
    }
    for addr in seen {
        problems.push(format!("the proxy dialled {addr}"));
    }
    for query in lab.dns.queries() {
        if query.contains("corp.test") {
            problems.push(format!("the proxy asked DNS for {query}"));
        }
    }
    assert_no_problems(&problems);
}

// ---------------------------------------------------------------------------
// Helpers of this file
// ---------------------------------------------------------------------------

/// Fails the test with every problem found, one a line.
fn assert_no_problems(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// An address in a test table.
fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

/// A policy under which only the guard can refuse.
const UNRESTRICTED: &str = "version: 1\nmode: unrestricted\n";
