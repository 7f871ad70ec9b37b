//! `tollgate exec` end to end, as root: what a command inside the sandbox
//! can and cannot reach (DESIGN.md invariant 6, "Inside a sandbox"), what it
//! leaves behind on the host, and how signals, exit status, stdin and
//! privileges pass through. Canaries on the host's own addresses count every
//! connection, datagram and byte: escape tests assert they saw nothing.
//! Nothing here sends a packet off this machine.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------------------
// Escape attempts: nothing reaches the host's sockets

#[test]
fn escape_direct_connections_never_reach_the_hosts_sockets() {
    require_root!();
    // The harness canary on the host's loopback, plus UDP on the same port.
    let loopback = Canary::start();
    let loopback_udp = NetCanary::start(IpAddr::from([127, 0, 0, 1]), loopback.addr.port())
        .expect("UDP canary on 127.0.0.1");
    let mut targets: Vec<(String, SocketAddr, SocketAddr)> =
        vec![("lo4".into(), loopback.addr, loopback_udp.udp)];
    let mut canaries: Vec<(String, NetCanary)> = Vec::new();
    match NetCanary::start("::1".parse().unwrap(), 0) {
        Some(c) => {
            targets.push(("lo6".into(), c.tcp, c.udp));
            canaries.push(("[::1]".into(), c));
        }
        None => eprintln!("SKIP PART: the host has no ::1; IPv6 loopback escape not tested"),
    }
    let v4 = host_addresses("-4");
    if v4.is_empty() {
        eprintln!(
            "SKIP PART: the host has no non-loopback IPv4 address (`ip -4 -br addr`); \
             escape to it not tested"
        );
    }
    let v6 = host_addresses("-6");
    if v6.is_empty() {
        eprintln!(
            "SKIP PART: the host has no non-loopback, non-link-local IPv6 address \
             (`ip -6 -br addr`); escape to it not tested"
        );
    }
    for (i, ip) in v4.iter().chain(&v6).enumerate() {
        let c = NetCanary::start(*ip, 0)
            .unwrap_or_else(|| panic!("cannot listen on the host's own {ip}"));
        targets.push((format!("host{i}"), c.tcp, c.udp));
        canaries.push((ip.to_string(), c));
    }
    // A unix socket on the host's filesystem (visible in the overlay's lower
    // layer) and an abstract one (scoped by network namespace).
    let unix_path = PathBuf::from(format!("/var/tmp/tollgate-test-{}.sock", unique()));
    let _unix_guard = RemoveOnDrop(unix_path.clone());
    let unix = std::os::unix::net::UnixListener::bind(&unix_path).expect("unix canary");
    let abstract_name = format!("tollgate-test-{}", unique());
    let abstract_listener = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
        std::os::unix::net::UnixListener::bind_addr(&addr).expect("abstract canary")
    };
    let unix_hits = Arc::new(AtomicUsize::new(0));
    for listener in [unix, abstract_listener] {
        let hits = unix_hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stream.is_ok() {
                    hits.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    let mut script = String::new();
    for (label, tcp, udp) in &targets {
        script.push_str(&direct_attempts(label, *tcp, *udp));
    }
    script.push_str(&format!(
        r#"
python3 - '{unix}' '{abstract_name}' <<'PY'
import socket, sys
for label, addr in (('unix-path', sys.argv[1]), ('unix-abstract', '\0' + sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(addr); s.sendall(b'escape'); rc = 0
    except OSError as e:
        rc = e.errno or 1
    print('ATTEMPT %s rc=%d' % (label, rc))
PY
"#,
        unix = unix_path.display()
    ));
    // `unrestricted` opens the proxy to everything but the internal-address
    // guard, so the proxied attempts test the guard, not the allowlist.
    let out = bash(&["--policy", "unrestricted"], &script);
    assert_eq!(out.code, Some(0), "{out:#?}");

    let attempts = out.attempts();
    let expected = targets.len() * 5 + 2;
    assert_eq!(attempts.len(), expected, "every attempt reports: {out:#?}");
    for (name, rc) in &attempts {
        // UDP to the sandbox's own loopback "succeeds" locally: only the
        // canary (below) can say whether it left. Everything else must fail.
        let local_udp = name.contains("udp-lo");
        if !local_udp {
            assert_ne!(*rc, 0, "{name} succeeded from inside the sandbox: {out:#?}");
        }
    }
    for (label, _, _) in &targets {
        let code = out.expect_value(&format!("PROXIED-{label}"));
        assert_eq!(
            code, "403",
            "the proxy must refuse the host's own address ({label}): {out:#?}"
        );
    }
    // Give stray packets a moment to arrive before looking.
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        loopback.untouched(),
        "the host's 127.0.0.1 TCP canary was reached: {} connections, {} bytes",
        loopback.connections.load(Ordering::SeqCst),
        loopback.bytes()
    );
    assert_eq!(
        loopback_udp.seen(),
        (0, 0, 0),
        "127.0.0.1 UDP canary reached"
    );
    for (label, canary) in &canaries {
        assert_eq!(
            canary.seen(),
            (0, 0, 0),
            "canary on the host's {label} reached (connections, datagrams, bytes)"
        );
    }
    assert_eq!(
        unix_hits.load(Ordering::SeqCst),
        0,
        "a host unix socket was reached"
    );
}

/// Shell lines that try every direct way to `addr` (TCP) and `udp` (UDP),
/// each printing `ATTEMPT name rc=N`.
fn direct_attempts(label: &str, tcp: SocketAddr, udp: SocketAddr) -> String {
    let (ip, port, uport) = (tcp.ip(), tcp.port(), udp.port());
    let url = format!("http://{}/escape", authority(tcp));
    let family = if tcp.is_ipv6() { "-6" } else { "-4" };
    format!(
        r#"
curl --noproxy '*' {family} -sS --max-time 2 -o /dev/null {url} 2>/dev/null; echo "ATTEMPT curl-direct-{label} rc=$?"
timeout 3 bash -c 'echo escape > /dev/tcp/{ip}/{port}' 2>/dev/null; echo "ATTEMPT bash-tcp-{label} rc=$?"
timeout 3 bash -c 'echo escape > /dev/udp/{ip}/{uport}' 2>/dev/null; echo "ATTEMPT bash-udp-{label} rc=$?"
python3 - '{ip}' {port} {uport} <<'PY'
import socket, sys
ip, port, uport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ':' in ip else socket.AF_INET
try:
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(2)
    s.connect((ip, port)); s.sendall(b'escape'); rc = 0
except OSError as e:
    rc = e.errno or 1
print('ATTEMPT python-tcp-{label} rc=%d' % rc)
try:
    u = socket.socket(fam, socket.SOCK_DGRAM)
    u.sendto(b'escape', (ip, uport)); rc = 0
except OSError as e:
    rc = e.errno or 1
print('ATTEMPT python-udp-{label} rc=%d' % rc)
PY
code=$(curl -sS --max-time 3 -o /dev/null -w '%{{http_code}}' --noproxy '' -x http://127.0.0.1:3128 {url}); echo "PROXIED-{label} $code"
"#
    )
}

#[test]
fn escape_raw_and_packet_sockets_are_refused() {
    require_root!();
    let out = ok(bash(
        &[],
        r#"python3 - <<'PY'
import socket
for label, args in (
    ('raw-icmp', (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
    ('raw-tcp', (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)),
    ('raw6', (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)),
    ('packet', (socket.AF_PACKET, socket.SOCK_RAW, 0)),
):
    try:
        socket.socket(*args); rc = 0
    except OSError as e:
        rc = e.errno
    print('ATTEMPT %s rc=%d' % (label, rc))
PY"#,
    ));
    let attempts = out.attempts();
    assert_eq!(attempts.len(), 4, "{out:#?}");
    for (name, rc) in attempts {
        // Raw sockets need CAP_NET_RAW (EPERM); packet sockets are a family
        // the seccomp filter does not know (EAFNOSUPPORT, as a kernel
        // without it would say).
        let expected = if name == "packet" { 97 } else { 1 };
        assert_eq!(
            rc, expected,
            "{name}: expected errno {expected}, got errno {rc}: {out:#?}"
        );
    }
}

#[test]
fn escape_dns_lookups_fail_fast() {
    require_root!();
    let out = ok(bash(
        &[],
        r#"
echo "RESOLV $(tr '\n' '|' < /etc/resolv.conf)"
start=$(date +%s%N)
getent hosts example.com; echo "ATTEMPT getent-hosts rc=$?"
getent ahosts tollgate-escape-test.example; echo "ATTEMPT getent-ahosts rc=$?"
python3 -c 'import socket; socket.getaddrinfo("example.org", 80)' 2>/dev/null; echo "ATTEMPT python-getaddrinfo rc=$?"
end=$(date +%s%N)
echo "ELAPSED_MS $(( (end - start) / 1000000 ))"
"#,
    ));
    assert!(
        out.expect_value("RESOLV")
            .starts_with("nameserver 127.0.0.1|"),
        "{out:#?}"
    );
    let attempts = out.attempts();
    assert_eq!(attempts.len(), 3, "{out:#?}");
    for (name, rc) in attempts {
        assert_ne!(rc, 0, "{name} resolved a name inside the sandbox: {out:#?}");
    }
    let ms: u64 = out.expect_value("ELAPSED_MS").parse().unwrap();
    assert!(ms < 2000, "look-ups must fail fast, took {ms} ms: {out:#?}");
}

#[test]
fn escape_no_interfaces_routes_namespaces_or_mounts() {
    require_root!();
    let out = ok(bash(
        &[],
        r#"
echo "LINKS $(ip -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')"
ip link add tgdummy0 type dummy 2>&1; echo "ATTEMPT ip-link-add rc=$?"
ip route add 203.0.113.0/24 dev lo 2>&1; echo "ATTEMPT ip-route-add rc=$?"
ip addr add 198.51.100.7/32 dev lo 2>&1; echo "ATTEMPT ip-addr-add rc=$?"
unshare -n true 2>&1; echo "ATTEMPT unshare-n rc=$?"
unshare -m true 2>&1; echo "ATTEMPT unshare-m rc=$?"
unshare -p -f true 2>&1; echo "ATTEMPT unshare-p rc=$?"
nsenter -t 1 -n true 2>&1; echo "ATTEMPT nsenter-net rc=$?"
nsenter -t 1 -m true 2>&1; echo "ATTEMPT nsenter-mnt rc=$?"
mount -t tmpfs x /mnt 2>&1; echo "ATTEMPT mount-tmpfs rc=$?"
mount -o remount,rw / 2>&1; echo "ATTEMPT remount-root rc=$?"
echo "LINKS_AFTER $(ip -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')"
echo "ROUTES_AFTER $(ip route show table all | grep -c 203.0.113)"
echo "MNT $(grep -c ' /mnt ' /proc/self/mountinfo)"
"#,
    ));
    assert_eq!(out.expect_value("LINKS"), "lo", "{out:#?}");
    let attempts = out.attempts();
    assert_eq!(attempts.len(), 10, "{out:#?}");
    for (name, rc) in &attempts {
        assert_ne!(*rc, 0, "{name} succeeded inside the sandbox: {out:#?}");
    }
    // The netlink ones fail for lack of CAP_NET_ADMIN, not by accident.
    let not_permitted = out
        .stdout
        .lines()
        .filter(|l| l.contains("Operation not permitted"))
        .count();
    assert!(
        not_permitted >= 3,
        "ip link/route/addr must fail with EPERM: {out:#?}"
    );
    assert_eq!(out.expect_value("LINKS_AFTER"), "lo", "{out:#?}");
    assert_eq!(out.expect_value("ROUTES_AFTER"), "0", "{out:#?}");
    assert_eq!(out.expect_value("MNT"), "0", "{out:#?}");
}

#[test]
fn proxy_allows_listed_http_denies_the_rest_and_audits_phase_exec() {
    require_root!();
    let upstream = Upstream::start();
    let port = upstream.port();
    let scratch = Scratch::new("exec-http");
    let policy = scratch.write("policy.yaml", &loopback_policy(&[port], ""));
    let audit = scratch.path("audit.jsonl");
    let out = ok(sh(
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
        ],
        &format!(
            r#"
echo "ALLOWED $(curl -sS --max-time 5 http://allowed.test:{port}/hello)"
curl -sS --max-time 5 -D - -o /dev/null -w 'DENIED_STATUS %{{http_code}}\n' http://other.test:{port}/secret
"#
        ),
    ));
    assert_eq!(
        out.expect_value("ALLOWED"),
        format!("upstream saw GET /hello host=allowed.test:{port}"),
        "{out:#?}"
    );
    assert_eq!(out.expect_value("DENIED_STATUS"), "403", "{out:#?}");
    let headers = out.stdout.to_ascii_lowercase();
    assert!(
        headers.contains("x-tollgate-reason: not-allowlisted"),
        "{out:#?}"
    );
    assert!(headers.contains("x-tollgate-decision: deny"), "{out:#?}");
    assert_eq!(
        upstream.hits(),
        1,
        "only the allowed request reaches upstream"
    );

    assert_one_allowed_one_denied(&read_audit(&audit), "http");
}

#[test]
fn proxy_allows_listed_connect_with_upstream_pem_bound_read_only() {
    require_root!();
    let upstream = TlsUpstream::start(&["allowed.test", "other.test"]);
    let port = upstream.port();
    let scratch = Scratch::new("exec-connect");
    let policy = scratch.write("policy.yaml", &loopback_policy(&[port], ""));
    let audit = scratch.path("audit.jsonl");
    let pem_bind = format!(
        "{}:/etc/tollgate-test/upstream.pem",
        upstream.ca_pem.display()
    );
    let out = ok(sh(
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
            "--ro-bind",
            &pem_bind,
        ],
        &format!(
            r#"
echo "ALLOWED $(curl -sS --max-time 5 --cacert /etc/tollgate-test/upstream.pem https://allowed.test:{port}/tls)"
curl -sS --max-time 5 --cacert /etc/tollgate-test/upstream.pem -D - -o /dev/null -w 'DENIED_STATUS %{{http_code}} %{{http_connect}}\n' https://other.test:{port}/tls
echo overwrite > /etc/tollgate-test/upstream.pem 2>/dev/null; echo "ATTEMPT write-pem rc=$?"
"#
        ),
    ));
    assert_eq!(
        out.expect_value("ALLOWED"),
        format!("upstream saw GET /tls host=allowed.test:{port}"),
        "{out:#?}"
    );
    // curl reports 000 for the request and 403 for the refused CONNECT.
    assert_eq!(out.expect_value("DENIED_STATUS"), "000 403", "{out:#?}");
    let headers = out.stdout.to_ascii_lowercase();
    assert!(
        headers.contains("x-tollgate-reason: not-allowlisted"),
        "{out:#?}"
    );
    let attempts = out.attempts();
    assert_eq!(attempts.len(), 1, "{out:#?}");
    assert_ne!(
        attempts[0].1, 0,
        "the read-only bind was writable: {out:#?}"
    );
    assert_eq!(upstream.hits(), 1);
    let pem = std::fs::read_to_string(&upstream.ca_pem).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");

    assert_one_allowed_one_denied(&read_audit(&audit), "connect");
}

/// The audit log of a run that made one allowed and one refused request:
/// two records of `kind`, both stamped with phase "exec".
fn assert_one_allowed_one_denied(records: &[serde_json::Value], kind: &str) {
    assert_eq!(records.len(), 2, "{records:#?}");
    for r in records {
        assert_eq!(r["phase"], "exec", "{r}");
        assert_eq!(r["kind"], kind, "{r}");
    }
    assert!(
        records
            .iter()
            .any(|r| r["host"] == "allowed.test" && r["decision"] == "allow"),
        "{records:#?}"
    );
    assert!(
        records.iter().any(|r| r["host"] == "other.test"
            && r["decision"] == "deny"
            && r["reason"] == "not-allowlisted"),
        "{records:#?}"
    );
}

// ---------------------------------------------------------------------------
// Filesystem

#[test]
fn fs_writes_and_deletions_on_the_host_root_stay_inside() {
    require_root!();
    let marker = PathBuf::from(format!("/etc/tollgate-test-marker-{}", unique()));
    let _guard = RemoveOnDrop(marker.clone());
    let victim = Path::new("/etc/hostname");
    let before = std::fs::read(victim).ok();
    let victim_line = if before.is_some() {
        "rm /etc/hostname && echo DELETED yes"
    } else {
        eprintln!("SKIP PART: the host has no /etc/hostname; deletion of an existing file is covered by fs_custom_base_is_never_modified");
        "echo DELETED yes"
    };
    let out = ok(sh(
        &[],
        &format!(
            r#"
echo inside > {m} && echo "CREATED $(cat {m})"
{victim_line}
echo "GONE $(test -e /etc/hostname && echo no || echo yes)"
echo appended >> /etc/os-release && echo "APPENDED $(tail -n1 /etc/os-release)"
"#,
            m = marker.display()
        ),
    ));
    assert_eq!(out.expect_value("CREATED"), "inside", "{out:#?}");
    assert_eq!(out.expect_value("DELETED"), "yes", "{out:#?}");
    assert_eq!(out.expect_value("GONE"), "yes", "{out:#?}");
    assert_eq!(out.expect_value("APPENDED"), "appended", "{out:#?}");
    assert!(
        !marker.exists(),
        "{} appeared on the host",
        marker.display()
    );
    assert_eq!(
        std::fs::read(victim).ok(),
        before,
        "/etc/hostname changed on the host"
    );
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    assert!(
        !os_release.ends_with("appended\n"),
        "/etc/os-release changed on the host"
    );
}

/// A base directory of our own: `usr` is bound in read-only from the host
/// (bin, lib, lib64 are links into it, as on merged-/usr systems), and
/// etc/ holds files the test watches.
struct Base {
    dir: Scratch,
}

impl Base {
    fn new(name: &str) -> Base {
        let dir = Scratch::new(name);
        let root = dir.path("root");
        std::fs::create_dir_all(root.join("usr")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        for (link, target) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib")] {
            symlink(target, root.join(link)).unwrap();
        }
        if Path::new("/usr/lib64").exists() {
            symlink("usr/lib64", root.join("lib64")).unwrap();
        } else if Path::new("/lib64").is_dir() {
            eprintln!("note: /lib64 is not under /usr; the custom base may lack a loader");
        }
        Base { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path("root")
    }

    fn opts(&self) -> Vec<String> {
        vec![
            "--base".into(),
            self.root().to_string_lossy().into_owned(),
            "--ro-bind".into(),
            "/usr:/usr".into(),
        ]
    }

    /// Every path under the base with its content (or link target).
    fn snapshot(&self) -> Vec<(String, String)> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
            let mut entries: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(Result::ok)
                .collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let path = e.path();
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.file_type().is_symlink() {
                    out.push((
                        rel,
                        format!("-> {}", std::fs::read_link(&path).unwrap().display()),
                    ));
                } else if meta.is_dir() {
                    out.push((rel, "dir".into()));
                    walk(&path, root, out);
                } else {
                    out.push((rel, std::fs::read_to_string(&path).unwrap_or_default()));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root(), &self.root(), &mut out);
        out
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn fs_custom_base_is_never_modified() {
    require_root!();
    let base = Base::new("base-fs");
    std::fs::write(base.root().join("etc/delete-me"), "original\n").unwrap();
    std::fs::write(base.root().join("etc/change-me"), "original\n").unwrap();
    std::fs::create_dir(base.root().join("data")).unwrap();
    std::fs::write(base.root().join("data/keep"), "original\n").unwrap();
    let before = base.snapshot();
    let out = ok(sh(
        &strs(&base.opts()),
        r#"
rm /etc/delete-me && echo "DELETED $(test -e /etc/delete-me && echo no || echo yes)"
echo changed > /etc/change-me && echo "CHANGED $(cat /etc/change-me)"
echo new > /etc/new-file && mkdir -p /srv/new && echo "CREATED $(cat /etc/new-file)"
rm -r /data && echo "RMDIR yes"
ln -s /etc /etc-link && chmod 600 /etc && echo "META yes"
"#,
    ));
    for key in ["DELETED", "RMDIR", "META"] {
        assert_eq!(out.expect_value(key), "yes", "{key}: {out:#?}");
    }
    assert_eq!(out.expect_value("CHANGED"), "changed");
    assert_eq!(out.expect_value("CREATED"), "new");
    assert_eq!(base.snapshot(), before, "the base changed on the host");
}

#[test]
fn dev_is_minimal_and_host_block_devices_are_invisible() {
    require_root!();
    let out = ok(sh(
        &[],
        r#"
echo "DEV $(ls -A /dev | tr '\n' ' ')"
echo "BLOCK $(find /dev -type b 2>/dev/null | wc -l)"
for d in /dev/sda /dev/vda /dev/nvme0n1 /dev/xvda /dev/loop0 /dev/mem /dev/kmsg /dev/kvm /dev/console; do
  test -e $d && echo "PRESENT $d"
done
echo "NULL $(echo x > /dev/null && echo ok)"
echo "URANDOM $(head -c 8 /dev/urandom | wc -c)"
echo "MKNOD $(mknod /tmp/sda b 8 0 2>/dev/null && echo made || echo refused)"
"#,
    ));
    let allowed: BTreeSet<&str> = [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "fd", "stdin",
        "stdout", "stderr", "console", "core", "mqueue",
    ]
    .into_iter()
    .collect();
    let dev = out.expect_value("DEV");
    let seen: BTreeSet<&str> = dev.split_whitespace().collect();
    let extra: Vec<_> = seen.difference(&allowed).collect();
    assert!(
        extra.is_empty(),
        "unexpected entries in /dev: {extra:?} ({out:#?})"
    );
    for needed in ["null", "zero", "urandom", "random", "tty"] {
        assert!(seen.contains(needed), "/dev/{needed} missing: {out:#?}");
    }
    assert_eq!(out.expect_value("BLOCK"), "0", "{out:#?}");
    assert!(!out.stdout.contains("PRESENT"), "{out:#?}");
    assert_eq!(out.expect_value("NULL"), "ok");
    assert_eq!(out.expect_value("URANDOM"), "8");
    assert_eq!(out.expect_value("MKNOD"), "refused", "{out:#?}");
}

#[test]
fn hostname_is_tollgate_and_changes_stay_inside() {
    require_root!();
    let host_before = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let out = ok(sh(
        &[],
        r#"
echo "NAME $(hostname)"
hostname tollgate-changed-by-test 2>/dev/null; echo "ATTEMPT hostname rc=$?"
echo tollgate-changed-via-proc > /proc/sys/kernel/hostname 2>/dev/null
echo "AFTER $(hostname)"
"#,
    ));
    assert_eq!(out.expect_value("NAME"), "tollgate", "{out:#?}");
    assert_ne!(
        out.attempts()[0].1,
        0,
        "hostname(1) needs CAP_SYS_ADMIN, which the command lacks: {out:#?}"
    );
    // Whatever happened inside (the UTS namespace's own sysctl may be
    // writable), the host's name is untouched.
    let after = out.expect_value("AFTER");
    assert!(
        after == "tollgate" || after == "tollgate-changed-via-proc",
        "{out:#?}"
    );
    let host_after = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(host_after, host_before, "the host's hostname changed");
}

#[test]
fn pid_namespace_shows_only_the_sandbox() {
    require_root!();
    let out = ok(sh(
        &[],
        r#"
echo "SHELL $$"
set -- /proc/[0-9]*; echo "PIDS $*"
echo "INIT_ENVIRON $(cat /proc/1/environ >/dev/null 2>&1 && echo readable || echo denied)"
echo "INIT_ROOT $(ls /proc/1/root/ >/dev/null 2>&1 && echo readable || echo denied)"
kill -0 1 2>/dev/null; echo "ATTEMPT kill-init rc=$?"
"#,
    ));
    let shell: u32 = out.expect_value("SHELL").parse().unwrap();
    assert!(shell <= 3, "the shell's PID should be tiny, got {shell}");
    let pids = out.expect_value("PIDS");
    let pids: Vec<u32> = pids
        .split_whitespace()
        .map(|p| p.trim_start_matches("/proc/").parse().unwrap())
        .collect();
    assert!(pids.contains(&1), "{out:#?}");
    assert!(pids.contains(&shell), "{out:#?}");
    // The glob runs in the shell itself: PID 1 (the sandbox's init) and
    // the shell are all there is.
    assert_eq!(pids, vec![1, shell], "{out:#?}");
    // PID 1 (the sandbox's init, holding the host-side environment) is not
    // dumpable: its environment and root are not readable from inside.
    assert_eq!(out.expect_value("INIT_ENVIRON"), "denied", "{out:#?}");
    assert_eq!(out.expect_value("INIT_ROOT"), "denied", "{out:#?}");
}

#[test]
fn background_processes_die_with_the_command() {
    require_root!();
    let id = unique();
    let (a, b, c) = (
        format!("301.{id}"),
        format!("302.{id}"),
        format!("303.{id}"),
    );
    let out = ok(sh(
        &[],
        &format!(
            r#"
sleep {a} &
echo "BG $(kill -0 $! && echo alive)"
setsid sleep {b} >/dev/null 2>&1 < /dev/null &
nohup sh -c 'trap "" TERM HUP; sleep {c}' >/dev/null 2>&1 &
sleep 0.1
echo "COUNT $(pgrep -c -f '^sleep 30[123]\.{id}$')"
exit 0
"#
        ),
    ));
    assert_eq!(out.expect_value("BG"), "alive", "{out:#?}");
    assert_eq!(out.expect_value("COUNT"), "3", "{out:#?}");
    let pattern = format!(r"^sleep 30[123]\.{id}$");
    let survivors = pgrep(&pattern);
    assert!(
        survivors.is_empty(),
        "background processes outlived the command: {survivors:?}"
    );
}

/// Starts a sandbox whose command writes `ready` into a bound dir and then
/// runs `rest`; returns once it is ready.
fn start_ready(dir: &Scratch, rest: &str) -> Running {
    owned_by_sandbox_root(&dir.0);
    let bind = format!("{}:/out", dir.0.display());
    let script = format!("echo ready > /out/ready\n{rest}");
    let mut running = start_exec(&mut exec_command(
        &["--bind", &bind],
        &["sh", "-c", &script],
    ));
    let ready = dir.path("ready");
    if !eventually(Duration::from_secs(5), || ready.exists()) {
        let _ = running.child().kill();
        panic!(
            "the sandbox did not start: {:#?}",
            running.finish(EXEC_LIMIT)
        );
    }
    running
}

/// The host-side traces of tollgate exec `pid`'s sandbox that must be gone.
fn assert_no_traces(pid: u32, what: &str) {
    let needle = format!("tollgate-run-{pid}-");
    let gone = eventually(Duration::from_secs(3), || {
        processes_with_mounts_mentioning(&needle).is_empty()
    });
    assert!(
        gone,
        "{what}: processes still in the sandbox's mount namespace: {:?}",
        processes_with_mounts_mentioning(&needle)
    );
    let leaked = host_mounts_mentioning("tollgate-run");
    assert!(leaked.is_empty(), "{what}: mounts on the host: {leaked:?}");
}

#[test]
fn nothing_left_behind_after_a_normal_exit() {
    require_root!();
    let dir = Scratch::new("normal-exit");
    let running = start_ready(
        &dir,
        "echo data > /tmp/x; echo upper > /etc/tg-upper; exit 3",
    );
    let pid = running.pid();
    let out = running.finish(EXEC_LIMIT);
    assert_eq!(out.code, Some(3), "{out:#?}");
    assert_no_traces(pid, "after a normal exit");
    assert_eq!(
        run_dirs_of(pid),
        Vec::<PathBuf>::new(),
        "run dir left behind"
    );
}

#[test]
fn nothing_left_behind_after_the_command_is_killed() {
    require_root!();
    let dir = Scratch::new("killed");
    let id = unique();
    let running = start_ready(
        &dir,
        &format!("sleep 304.{id} & echo upper > /etc/tg-upper; kill -9 $$"),
    );
    let pid = running.pid();
    let out = running.finish(EXEC_LIMIT);
    assert_eq!(out.code, Some(137), "SIGKILL is 128 + 9: {out:#?}");
    assert_no_traces(pid, "after kill -9 of the command");
    assert_eq!(
        run_dirs_of(pid),
        Vec::<PathBuf>::new(),
        "run dir left behind"
    );
    assert!(pgrep(&format!(r"^sleep 304\.{id}$")).is_empty());
}

#[test]
fn nothing_of_the_sandbox_survives_sigkill_of_tollgate() {
    require_root!();
    let dir = Scratch::new("sigkill");
    let id = unique();
    let pattern = format!(r"^sleep 305\.{id}$");
    let mut running = start_ready(
        &dir,
        &format!("echo upper > /etc/tg-upper; sleep 305.{id} & setsid sleep 305.{id} & wait"),
    );
    let pid = running.pid();
    let needle = format!("tollgate-run-{pid}-");
    // While it runs: the sandbox's processes exist, its mounts are in its
    // own namespace only.
    assert!(
        eventually(Duration::from_secs(3), || pgrep(&pattern).len() == 2),
        "the sandbox's sleeps did not start: {:?}",
        pgrep(&pattern)
    );
    assert!(
        !processes_with_mounts_mentioning(&needle).is_empty(),
        "cannot see the sandbox's mount namespace from the host"
    );
    assert!(
        host_mounts_mentioning("tollgate-run").is_empty(),
        "the sandbox's mounts leaked into the host's namespace"
    );
    running.signal("KILL");
    let status = running.child().wait().unwrap();
    assert_eq!(status.code(), None, "tollgate was SIGKILLed");
    assert!(
        eventually(Duration::from_secs(3), || pgrep(&pattern).is_empty()),
        "sandbox processes survived SIGKILL of tollgate: {:?}",
        pgrep(&pattern)
    );
    assert_no_traces(pid, "after SIGKILL of tollgate exec");
    // The run dir went as soon as PID 1 had pivoted, so even a SIGKILLed
    // tollgate leaves none.
    assert_eq!(run_dirs_of(pid), Vec::<PathBuf>::new());
}

#[test]
fn bind_is_writable_and_ro_bind_is_read_only() {
    require_root!();
    let rw = Scratch::new("bind-rw");
    owned_by_sandbox_root(&rw.0);
    let ro = Scratch::new("bind-ro");
    ro.write("existing", "host data\n");
    let rw_opt = format!("{}:/work/rw", rw.0.display());
    let ro_opt = format!("{}:/work/ro", ro.0.display());
    let out = ok(sh(
        &["--bind", &rw_opt, "--ro-bind", &ro_opt],
        r#"
echo from-inside > /work/rw/new && echo "RW_WRITE ok"
echo "RO_READ $(cat /work/ro/existing)"
echo x > /work/ro/new 2>/dev/null; echo "ATTEMPT ro-create rc=$?"
echo x >> /work/ro/existing 2>/dev/null; echo "ATTEMPT ro-append rc=$?"
rm /work/ro/existing 2>/dev/null; echo "ATTEMPT ro-delete rc=$?"
mount -o remount,rw /work/ro 2>/dev/null; echo "ATTEMPT ro-remount rc=$?"
umount /work/ro 2>/dev/null; echo "ATTEMPT ro-umount rc=$?"
"#,
    ));
    assert_eq!(out.expect_value("RW_WRITE"), "ok");
    assert_eq!(
        std::fs::read_to_string(rw.path("new")).unwrap(),
        "from-inside\n"
    );
    assert_eq!(out.expect_value("RO_READ"), "host data");
    let attempts = out.attempts();
    assert_eq!(attempts.len(), 5, "{out:#?}");
    for (name, rc) in attempts {
        assert_ne!(rc, 0, "{name} succeeded on a read-only bind: {out:#?}");
    }
    assert!(!ro.path("new").exists());
    assert_eq!(
        std::fs::read_to_string(ro.path("existing")).unwrap(),
        "host data\n"
    );
}

#[test]
fn env_and_workdir_apply_and_the_hosts_environment_stays_out() {
    require_root!();
    let dir = Scratch::new("workdir");
    owned_by_sandbox_root(&dir.0);
    let bind = format!("{}:/project", dir.0.display());
    let mut command = exec_command(
        &[
            "--bind",
            &bind,
            "--workdir",
            "/project",
            "--env",
            "TG_ONE=1",
            "--env",
            "TG_EQ=a=b c",
            "--env",
            "HOME=/project",
        ],
        &[
            "sh",
            "-c",
            r#"echo "PWD $(pwd)"; echo "ONE $TG_ONE"; echo "EQ $TG_EQ"; echo "HOME $HOME"
echo "SECRET ${TG_HOST_SECRET:-absent}"; echo "PROXY $HTTPS_PROXY"; echo "NOPROXY $NO_PROXY"
touch here && echo "TOUCH ok""#,
        ],
    );
    command.env("TG_HOST_SECRET", "s3cr3t-from-host");
    let out = ok(exec(&mut command));
    assert_eq!(out.expect_value("PWD"), "/project", "{out:#?}");
    assert_eq!(out.expect_value("ONE"), "1");
    assert_eq!(out.expect_value("EQ"), "a=b c");
    assert_eq!(
        out.expect_value("HOME"),
        "/project",
        "--env overrides defaults"
    );
    assert_eq!(out.expect_value("SECRET"), "absent", "host env leaked in");
    assert_eq!(out.expect_value("PROXY"), "http://127.0.0.1:3128");
    assert_eq!(out.expect_value("NOPROXY"), "localhost,127.0.0.1,::1");
    assert_eq!(out.expect_value("TOUCH"), "ok");
    assert!(dir.path("here").exists(), "the workdir is the bound dir");
}

#[test]
fn exit_status_passes_through() {
    require_root!();
    for (script, expected) in [
        ("exit 0", 0),
        ("exit 7", 7),
        ("exit 255", 255),
        ("kill -TERM $$; exit 0", 143),
        ("kill -HUP $$; exit 0", 129),
        ("kill -INT $$; exit 0", 130),
        ("kill -USR1 $$; exit 0", 138),
        ("kill -KILL $$", 137),
        ("/bin/kill -SEGV $$; exit 0", 139),
    ] {
        let out = sh(&[], script);
        assert_eq!(out.code, Some(expected), "`{script}`: {out:#?}");
    }
    let out = exec(&mut exec_command(
        &[],
        &["/nonexistent/tollgate-test-command"],
    ));
    assert_ne!(
        out.code,
        Some(0),
        "a command that cannot start must fail: {out:#?}"
    );
    assert!(
        out.stderr.contains("/nonexistent/tollgate-test-command"),
        "the error names the command: {out:#?}"
    );
}

/// README: 125 when the sandbox could not be set up, 127 when the command
/// is not found; the reason is said once, and the command never runs.
#[test]
fn a_sandbox_that_cannot_be_built_exits_125_and_says_why() {
    require_root!();
    let dir = Scratch::new("setup-fails");
    let marker = dir.path("ran");
    let out = sh(
        &[
            "--bind",
            &format!("{}:/etc/hostname/inside", dir.0.display()),
        ],
        &format!("touch {}", marker.display()),
    );
    assert_eq!(out.code, Some(125), "{out:#?}");
    assert!(out.stderr.contains("Not a directory"), "{out:#?}");
    assert!(!marker.exists(), "the command ran: {out:#?}");
    let out = exec(&mut exec_command(&[], &["/nonexistent/tollgate-test"]));
    assert_eq!(out.code, Some(127), "{out:#?}");
}

/// Regression: PID 1 blocks signals for its signalfd; the command must not
/// inherit that mask (a shell's `wait` hung, SIGTERM never arrived).
#[test]
fn command_starts_with_no_blocked_signals() {
    require_root!();
    let out = ok(sh(
        &[],
        r#"echo "BLOCKED $(grep SigBlk /proc/$$/status | cut -f2)"
sleep 0.1 & wait $!; echo "WAITED $?""#,
    ));
    assert_eq!(out.expect_value("BLOCKED"), "0000000000000000", "{out:#?}");
    assert_eq!(out.expect_value("WAITED"), "0", "{out:#?}");
    assert!(out.elapsed < Duration::from_secs(5), "{out:#?}");
}

/// Whether `pid` has a handler for `signal` (number) installed.
fn catches(pid: u32, signal: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

/// The PIDs (host view) of the children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|p| p.trim().parse::<u32>().ok());
        if ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

/// The sandbox's PID 1 (host PID).
fn init_of(tollgate: u32) -> Option<u32> {
    // tollgate exec -> the stage (its one child: a fork of it) -> PID 1 (a
    // fork of the stage).
    let stage = children(tollgate).into_iter().next()?;
    children(stage).into_iter().next()
}

/// Sends `signal` to a running tollgate exec whose command traps it: the
/// trap must run (writing a file in a bound dir) and its exit status come
/// back.
fn signal_reaches_the_command(signal: &str, number: u32) {
    let dir = Scratch::new("signal");
    let running = start_ready(
        &dir,
        &format!(
            r#"trap 'echo got-{signal} > /out/got; exit 42' {signal}
echo trapped > /out/trapped
sleep 5 & wait $!"#
        ),
    );
    assert!(eventually(Duration::from_secs(3), || dir
        .path("trapped")
        .exists()));
    // The trap above ran, so the command is up; the handlers of tollgate
    // and of PID 1 exist by then (signal_right_after_start_is_not_lost
    // covers the moments before).
    assert!(
        eventually(Duration::from_secs(3), || catches(running.pid(), number)),
        "tollgate exec never installed a SIG{signal} handler"
    );
    assert!(
        eventually(Duration::from_secs(3), || init_of(running.pid())
            .is_some_and(|init| catches(init, number))),
        "the sandbox's PID 1 never installed a SIG{signal} handler"
    );
    running.signal(signal);
    let reached = eventually(Duration::from_secs(2), || dir.path("got").exists());
    let out = running.finish(EXEC_LIMIT);
    assert!(
        reached,
        "the command's {signal} trap did not run within 2 s: {out:#?}"
    );
    assert_eq!(out.code, Some(42), "{out:#?}");
    assert_eq!(
        std::fs::read_to_string(dir.path("got")).unwrap(),
        format!("got-{signal}\n")
    );
}

/// PID 1's pid as the host side knows it, also when tollgate runs in a
/// PID namespace of its own whose /proc is still the outer one (`unshare
/// -pf` without `--mount-proc`): a signal for the command must reach it,
/// not whatever process has that number.
#[test]
fn signals_reach_the_command_when_tollgate_has_a_pid_namespace_but_not_its_proc() {
    require_root!();
    let dir = Scratch::new("nested-pid-ns");
    owned_by_sandbox_root(&dir.0);
    let bind = format!("{}:/out", dir.0.display());
    let script =
        "trap 'echo got > /out/got; exit 42' TERM\necho ready > /out/ready\nsleep 5 & wait $!";
    let mut command = Command::new("unshare");
    command
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            BIN,
            "exec",
            "--policy",
            "off",
        ])
        .args(["--bind", &bind, "--", "sh", "-c", script])
        .env("TOLLGATE_STATE_DIR", NO_STATE)
        .env("NO_COLOR", "1");
    let running = start_exec(&mut command);
    assert!(
        eventually(Duration::from_secs(5), || dir.path("ready").exists()),
        "the sandbox did not start"
    );
    let tollgate = children(running.pid())
        .into_iter()
        .next()
        .expect("tollgate, unshare's child");
    assert!(eventually(Duration::from_secs(3), || catches(tollgate, 15)));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(tollgate).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let reached = eventually(Duration::from_secs(3), || dir.path("got").exists());
    let out = running.finish(EXEC_LIMIT);
    assert!(reached, "SIGTERM never reached the command: {out:#?}");
    assert_eq!(out.code, Some(42), "{out:#?}");
}

#[test]
fn sigterm_to_tollgate_reaches_the_command() {
    require_root!();
    signal_reaches_the_command("TERM", 15);
}

#[test]
fn sighup_and_sigint_to_tollgate_reach_the_command_without_a_tty() {
    require_root!();
    signal_reaches_the_command("HUP", 1);
    // stdin is /dev/null here, not a terminal: tollgate passes SIGINT on.
    signal_reaches_the_command("INT", 2);
}

#[test]
fn signal_right_after_start_is_not_lost() {
    require_root!();
    // The command announces itself as its first act; the test sends SIGTERM
    // the moment it sees that. ~10% of tries lose the signal here.
    let dir = Scratch::new("early-signal");
    owned_by_sandbox_root(&dir.0);
    let bind = format!("{}:/out", dir.0.display());
    let mut outcomes = Vec::new();
    for _ in 0..25 {
        let ready = dir.path("ready");
        let _ = std::fs::remove_file(&ready);
        let running = start_exec(&mut exec_command(
            &["--bind", &bind],
            &[
                "sh",
                "-c",
                "trap 'exit 42' TERM; echo > /out/ready; sleep 0.5 & wait",
            ],
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ready.exists() && Instant::now() < deadline {
            std::hint::spin_loop();
        }
        let pid = running.pid();
        running.signal("TERM");
        let out = running.finish(EXEC_LIMIT);
        let left = run_dirs_of(pid);
        for dir in &left {
            let _ = std::fs::remove_dir_all(dir);
        }
        let failed = out.code != Some(42) || !left.is_empty();
        outcomes.push((out.code, left.len()));
        if failed {
            panic!(
                "(exit status, run dirs left) per try; the command's trap exits 42: {outcomes:?}; the last: {out:#?}"
            );
        }
    }
}

#[test]
fn stdin_passes_through() {
    require_root!();
    let mut command = exec_command(&[], &["cat"]);
    let mut running = start_exec_with_stdin(&mut command);
    {
        let mut stdin = running.stdin();
        stdin.write_all(b"hi\nsecond line\n").unwrap();
    }
    let out = ok(running.finish(EXEC_LIMIT));
    assert_eq!(out.stdout, "hi\nsecond line\n");
}

#[test]
fn command_has_no_capabilities_and_no_new_privs() {
    require_root!();
    let out = ok(sh(
        &[],
        r#"grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status | tr -d '\t:' | sed 's/^\(Cap[A-Za-z]*\|NoNewPrivs\)/\1 /'
echo "UID $(id -u)""#,
    ));
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            out.expect_value(set),
            "0000000000000000",
            "{set} must be empty: {out:#?}"
        );
    }
    assert_eq!(out.expect_value("NoNewPrivs"), "1", "{out:#?}");
    assert_eq!(out.expect_value("UID"), "0");
}

#[test]
fn rootless_exec_runs_as_the_user_and_root_inside_is_that_user() {
    require_root!();
    let user = TestUser::ensure();
    let out = user.command(BIN)
        .args(["exec", "--policy", "off", "--"])
        .args(["sh", "-c", "echo \"UID $(id -u)\"; echo \"MAP $(cat /proc/self/uid_map)\"; echo made > /tmp/file && echo \"TMP $(cat /tmp/file)\"; echo x >> /etc/passwd 2>/dev/null; echo \"ATTEMPT passwd rc=$?\"; echo x > /usr/local/rootless 2>/dev/null; echo \"ATTEMPT usr-local rc=$?\"; touch -d 2001-01-01 /dev/null 2>/dev/null; echo \"ATTEMPT dev-null rc=$?\"; echo x > /dev/null && echo \"NULL written\""])
        .env("TOLLGATE_STATE_DIR", NO_STATE)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key}: {stdout}{stderr}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(value("UID"), "0", "{stdout}");
    // Root inside is the user (ids from 1 map to its subordinate range
    // when newuidmap and /etc/subuid give it one).
    assert!(
        value("MAP").starts_with(&format!("0 {} 1", user.uid)),
        "{stdout}"
    );
    assert_eq!(value("TMP"), "made");
    // The host's /dev/null is bound in (no mknod without host root), usable
    // and unchangeable.
    assert_eq!(value("NULL"), "written");
    // What host root owns cannot be changed, not even in the sandbox's
    // own layer: it is nobody's inside.
    for attempt in ["passwd", "usr-local", "dev-null"] {
        assert!(
            stdout.contains(&format!("ATTEMPT {attempt} rc=")),
            "{stdout}"
        );
        assert!(
            !stdout.contains(&format!("ATTEMPT {attempt} rc=0")),
            "{attempt}: {stdout}"
        );
    }
    assert!(!std::path::Path::new("/usr/local/rootless").exists());
}

#[test]
fn host_global_sysctls_are_not_writable_from_inside() {
    require_root!();
    let before = std::fs::read_to_string("/proc/sys/kernel/printk_ratelimit").unwrap();
    // Writes the value already there: if the write is allowed, nothing on
    // the host changes, but the test fails.
    let out = ok(sh(
        &[],
        r#"
v=$(cat /proc/sys/kernel/printk_ratelimit); echo "$v" > /proc/sys/kernel/printk_ratelimit 2>/dev/null; echo "ATTEMPT kernel.printk_ratelimit rc=$?"
v=$(cat /proc/sys/vm/swappiness); echo "$v" > /proc/sys/vm/swappiness 2>/dev/null; echo "ATTEMPT vm.swappiness rc=$?"
v=$(cat /proc/sys/kernel/core_pattern); echo "$v" > /proc/sys/kernel/core_pattern 2>/dev/null; echo "ATTEMPT kernel.core_pattern rc=$?"
"#,
    ));
    let after = std::fs::read_to_string("/proc/sys/kernel/printk_ratelimit").unwrap();
    assert_eq!(before, after);
    for (name, rc) in out.attempts() {
        assert_ne!(
            rc, 0,
            "{name} is writable from inside the sandbox: {out:#?}"
        );
    }
}

#[test]
fn inherited_descriptors_do_not_reach_the_command() {
    require_root!();
    let host_dir = Scratch::new("leaked-fd");
    let script = r#"echo escaped > /proc/self/fd/7/escaped 2>/dev/null; echo "ATTEMPT write-via-fd rc=$?"; echo "FD7 $(test -e /proc/self/fd/7 && echo present || echo absent)""#;
    // The caller (a CI runner, an agent harness) holds fd 7 on a host
    // directory that the sandbox should never see.
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(r#"exec 7<"$0" && exec "$@""#)
        .arg(&host_dir.0)
        .args([BIN, "exec", "--policy", "off", "--", "sh", "-c", script])
        .env("TOLLGATE_STATE_DIR", NO_STATE);
    let out = ok(exec(&mut command));
    assert!(
        !host_dir.path("escaped").exists(),
        "the command wrote {} on the host through an inherited fd",
        host_dir.path("escaped").display()
    );
    assert_eq!(out.expect_value("FD7"), "absent", "{out:#?}");
}

/// Regression: the signalfds of stages 1 and 2 reached the command as fds
/// 3 and 4 (created before the spawn, without SFD_CLOEXEC).
#[test]
fn tollgates_own_descriptors_do_not_leak_into_the_command() {
    require_root!();
    let out = ok(sh(
        &[],
        r#"for fd in /proc/$$/fd/*; do echo "FD ${fd##*/} $(readlink $fd)"; done"#,
    ));
    let leaked: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("signalfd") || l.contains("tollgate-run") || l.contains("socket:"))
        .collect();
    assert!(
        leaked.is_empty(),
        "tollgate's descriptors leaked in: {leaked:?}"
    );
}

#[test]
fn bind_over_a_symlink_in_the_base_never_touches_the_host() {
    require_root!();
    let base = Base::new("base-symlink");
    let host = Scratch::new("symlink-victim");
    let victim = host.write("victim", "precious\n");
    let source = host.write("source", "bound\n");
    // An absolute link in the base (a previous run's snapshot, an image).
    symlink(&victim, base.root().join("etc/linked")).unwrap();
    let mut opts = base.opts();
    opts.extend([
        "--ro-bind".into(),
        format!("{}:/etc/linked", source.display()),
    ]);
    let out = sh(&strs(&opts), "cat /etc/linked; true");
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "a read-only bind truncated a host file through a symlink in the base: {out:#?}"
    );
}

#[test]
fn tollgates_state_dir_and_ca_key_are_hidden_inside() {
    require_root!();
    let state = std::path::PathBuf::from(format!(
        "/var/tmp/tollgate-state-test-{}",
        std::process::id()
    ));
    let _cleanup = RemoveOnDrop(state.clone());
    tool_ok(
        Command::new(BIN)
            .arg("--state-dir")
            .arg(&state)
            .args(["ca", "init"]),
    );
    let key = state.join("certs/ca.key");
    let script = format!(
        "cat {key} && echo LEAKED; ls {dir} && echo LISTED; echo x > {dir}/planted && echo PLANTED; exit 0",
        key = key.display(),
        dir = state.display()
    );
    let out = std::process::Command::new(BIN)
        .arg("--state-dir")
        .arg(&state)
        .args(["exec", "--policy", "off", "--", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for marker in ["LEAKED", "LISTED", "PLANTED", "PRIVATE KEY"] {
        assert!(!stdout.contains(marker), "{marker}: {stdout}");
    }
    assert!(!state.join("planted").exists());
}

#[test]
fn no_user_namespaces_inside_but_processes_and_threads_still_start() {
    require_root!();
    let script = "unshare -U true && echo USERNS; unshare -Un true && echo USERNS_NET; \
        sh -c 'echo CHILD'; \
        python3 -c 'import threading; t = threading.Thread(target=print, args=(\"THREAD\",)); t.start(); t.join()'";
    let out = std::process::Command::new(BIN)
        .args(["exec", "--policy", "off", "--", "sh", "-c", script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("USERNS"),
        "a user namespace was created: {stdout}"
    );
    assert!(stdout.contains("CHILD"), "{stdout}");
    if std::path::Path::new("/usr/bin/python3").exists() {
        assert!(stdout.contains("THREAD"), "threads failed: {stdout}");
    } else {
        eprintln!("SKIP PART: no python3 for the thread check");
    }
}

/// Runs python3 code in the sandbox under `script(1)`, so that stdin is a
/// terminal (the caller's, as it would be interactively); its output.
fn python_in_sandbox_with_a_terminal(code: &str) -> String {
    let command = format!(
        "{BIN} exec --policy off -- python3 -c {}",
        shell_quote(code)
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("script(1) from util-linux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[test]
fn seccomp_refuses_terminal_injection_keyrings_and_vsock() {
    require_root!();
    let code = r##"
import ctypes, errno, fcntl, os, socket, termios
def outcome(f):
    try:
        f()
        return "ALLOWED"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
print("isatty", os.isatty(0))
print("tiocsti", outcome(lambda: fcntl.ioctl(0, termios.TIOCSTI, b"#")))
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.syscall(248, b"user", b"tollgate-test", b"v", 1, ctypes.c_int(-4))
print("add_key", "ALLOWED" if rc >= 0 else errno.errorcode.get(ctypes.get_errno()))
print("vsock", outcome(lambda: socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()))
"##;
    let out = python_in_sandbox_with_a_terminal(code);
    assert!(
        out.contains("isatty True"),
        "no terminal in the test: {out}"
    );
    for check in ["tiocsti", "add_key", "vsock"] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("{check} ")))
            .unwrap_or_else(|| panic!("{check} missing: {out}"));
        assert!(line.contains("EPERM"), "{line}");
    }
}

/// Dangerous system calls, each with arguments that would fail harmlessly if
/// it got through, run inside the sandbox: every one is refused with the
/// filter's errno (seccomp/mod.rs), foreign ABIs are killed, and what a
/// container needs (statx, ptrace, AF_UNIX/INET sockets, netlink route)
/// still works.
#[test]
fn seccomp_refuses_every_dangerous_call_on_the_list() {
    require_root!();
    let script = include_str!("fixtures/seccomp_refusals.py");
    let out = bash(
        &[],
        &format!(
            "setsid -w python3 - <<'PY'\n{script}\nPY\nuseradd --help >/dev/null; echo USERADD $?"
        ),
    );
    let failed: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("FAIL"))
        .collect();
    assert!(
        failed.is_empty(),
        "refusals that did not hold: {failed:#?}\n{out:#?}"
    );
    assert!(out.stdout.contains("0 failure(s)"), "{out:#?}");
    let checks = out.stdout.lines().filter(|l| l.starts_with("PASS")).count();
    assert!(checks >= 100, "only {checks} checks ran: {out:#?}");
    // Refused netlink families answer EAFNOSUPPORT, so shadow-utils (and the
    // package scripts that create users) still run.
    assert!(out.stdout.contains("USERADD 0"), "{out:#?}");
}

/// Rust's runtime ignores SIGPIPE in tollgate itself, and the stage may be
/// a fork of it; the command must not inherit that (an ignored signal stays
/// ignored across exec).
#[test]
fn the_command_does_not_inherit_ignored_sigpipe() {
    require_root!();
    let out = bash(&["--policy", "off"], "grep SigIgn /proc/$$/status");
    assert_eq!(out.code, Some(0), "{out:#?}");
    let mask = out
        .stdout
        .trim()
        .strip_prefix("SigIgn:")
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no SigIgn line: {out:#?}"));
    const SIGPIPE: u32 = 13;
    assert_eq!(mask & 1 << (SIGPIPE - 1), 0, "SIGPIPE ignored: {mask:#x}");
}

/// The stage starts before the policy is read (it makes the network
/// namespace meanwhile): when the policy is bad, it is killed, and its run
/// directory removed.
#[test]
fn a_sandbox_that_never_starts_leaves_no_stage_behind() {
    require_root!();
    let tmp = Scratch::new("never-started");
    let missing = tmp.path("missing.yaml");
    let out = std::process::Command::new(BIN)
        .env("TMPDIR", tmp.path(""))
        .args(["exec", "--policy"])
        .arg(&missing)
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("missing.yaml"), "{stderr}");
    // The stage is a fork of tollgate (same command line) or an exec of it
    // with the control socket's path under TMPDIR: either way its command
    // line names this test's scratch directory, which holds no regex
    // metacharacters.
    let scratch = tmp.path("").display().to_string();
    assert!(pgrep(&scratch).is_empty(), "a stage survived");
    let left: Vec<_> = std::fs::read_dir(tmp.path(""))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}

/// The sandbox is built while the policy loads; its command runs only
/// once the proxy serves. A policy that takes long to load and then does
/// not: the command never ran (it would have left a file in the bound
/// directory).
#[test]
fn the_command_never_runs_when_the_policy_does_not_load() {
    require_root!();
    let dir = Scratch::new("no-go");
    owned_by_sandbox_root(&dir.0);
    // Long enough that loading it takes far longer than building the
    // sandbox (tens of milliseconds): without the go, the command would
    // have run meanwhile. The typo is at its end.
    let mut policy = String::from("version: 1\nmode: limited\nallow:\n");
    for i in 0..40_000 {
        policy.push_str(&format!("  - h{i}.test\n"));
    }
    policy.push_str("alow: [x]\n");
    let bad = dir.write("bad.yaml", &policy);
    let out = std::process::Command::new(BIN)
        .args(["exec", "--policy"])
        .arg(&bad)
        .arg("--bind")
        .arg(format!("{}:/out", dir.0.display()))
        .args(["--", "sh", "-c", "touch /out/ran"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("alow"), "{stderr}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!dir.path("ran").exists(), "the command ran: {stderr}");
}

#[test]
fn run_directories_of_dead_tollgates_are_removed() {
    require_root!();
    // A pid that cannot exist (above the kernel's maximum of 2^22).
    let stale = std::env::temp_dir().join("tollgate-run-999999999-0");
    std::fs::create_dir_all(stale.join("scratch")).unwrap();
    std::fs::write(stale.join("spec.json"), "{}").unwrap();
    let _cleanup = RemoveOnDrop(stale.clone());
    age(&stale);
    // Just made: its owner may live in a PID namespace we cannot see into
    // (where its pid means nothing to us), and it is kept.
    let fresh = std::env::temp_dir().join("tollgate-run-999999998-0");
    std::fs::create_dir_all(&fresh).unwrap();
    let _fresh_cleanup = RemoveOnDrop(fresh.clone());
    let status = std::process::Command::new(BIN)
        .args(["exec", "--policy", "off", "--", "/bin/true"])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!stale.exists(), "stale run directory left in place");
    assert!(
        fresh.exists(),
        "a run directory made a moment ago was removed"
    );
}

/// exec's --metrics (on the host) counts the sandbox's decisions under
/// phase "exec" while the command runs.
#[test]
fn exec_serves_metrics_of_its_proxy_on_the_host() {
    require_root!();
    let scratch = Scratch::new("exec-metrics");
    let socket = scratch.path("metrics.sock");
    let metrics_arg = format!("unix:{}", socket.display());
    let _running = start_exec(&mut exec_command(
        &["--metrics", &metrics_arg],
        &[
            "sh",
            "-c",
            "curl -s -o /dev/null http://blocked.test/; sleep 10",
        ],
    ));
    let series = r#"tollgate_decisions_total{decision="deny",reason="mode-off",phase="exec"} 1"#;
    let seen = poll(Duration::from_secs(10), || {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--unix-socket",
                socket.to_str().unwrap(),
                "http://m/metrics",
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|line| line == series)
            .then_some(())
    });
    assert!(seen.is_some(), "no {series}");
}
