//! End-to-end tests of the internal-address guard and of "decide before
//! resolving" (DESIGN.md, invariants 1, 2 and 3), through the real
//! `tollgate proxy` binary.
//!
//! Nothing here can leave the machine, even with a broken guard: every test
//! runs the proxy inside a network and mount namespace it creates itself (a
//! "lab"), whose only interface is `lo`. The internal (and one guard-public)
//! addresses the tests name are assigned to that `lo`, and a server listening
//! on ports 80, 443 and 8080 of every address in the lab records each
//! connection, so a dial the guard should have refused is *seen* instead of
//! leaking. The
//! lab's /etc/resolv.conf points at a DNS canary on the lab's 127.0.0.1:53,
//! which records every query and answers from a small zone (NXDOMAIN for
//! anything else); /etc/nsswitch.conf is `hosts: files dns`, so no NSS module
//! or daemon outside the lab can answer. The test process reaches each proxy
//! through a unix socket, which works across network namespaces.
//!
//! Needs root (namespaces); every test says SKIP loudly when not root.

mod common;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::raw::c_int;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Canary, Proxy, Scratch, Upstream, BIN};
use serde_json::Value;

// ---------------------------------------------------------------------------
// Entering a network namespace from the test process.
// ---------------------------------------------------------------------------

extern "C" {
    /// glibc's setns(2) wrapper (std already links libc; nix's `sched`
    /// feature, which would wrap this, is not enabled in Cargo.toml).
    fn setns(fd: c_int, nstype: c_int) -> c_int;
    fn prctl(option: c_int, ...) -> c_int;
}

/// `CLONE_NEWNET` from <sched.h>.
const CLONE_NEWNET: c_int = 0x4000_0000;
/// `PR_SET_PDEATHSIG` from <sys/prctl.h>.
const PR_SET_PDEATHSIG: c_int = 1;
const SIGKILL: c_int = 9;

/// Makes the child of `command` die with the thread that spawns it, so a
/// test process killed outright (a CI timeout) leaves no proxy or namespace
/// behind; a panicking test cleans up through `Drop` as usual.
fn die_with_parent(command: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe, and the closure touches nothing
    // else between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if prctl(PR_SET_PDEATHSIG, SIGKILL) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        })
    }
}

/// Runs `f` on a fresh thread that has joined the network namespace of
/// process `pid`. Sockets `f` creates live in that namespace for good, and
/// threads it spawns inherit it; the test's other threads are unaffected.
fn in_netns<T: Send + 'static>(pid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = File::open(format!("/proc/{pid}/ns/net")).expect("open the lab's netns");
    std::thread::spawn(move || {
        // SAFETY: setns only reads the descriptor, which `ns` keeps open for
        // the call, and only changes this thread's network namespace.
        let rc = unsafe { setns(ns.as_raw_fd(), CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", io::Error::last_os_error());
        f()
    })
    .join()
    .expect("code run inside the lab namespace panicked")
}

// ---------------------------------------------------------------------------
// The lab: a network + mount namespace with only `lo`.
// ---------------------------------------------------------------------------

/// Addresses put on the lab's `lo`, so that a dial to them stays inside the
/// lab and reaches its [`NetServer`]. 192.0.1.10 is an address the guard calls
/// public (nothing special-purpose about 192.0.1.0/24); it exists only on this
/// `lo`. IPv6 addresses get `nodad` so they are usable at once.
const LAB_ADDRESSES: &[&str] = &[
    "10.0.0.1/32",
    "10.1.2.3/32",
    "172.16.0.1/32",
    "172.31.255.254/32",
    "192.168.0.1/32",
    "169.254.169.254/32",
    "169.254.0.1/32",
    "100.64.0.1/32",
    "100.127.255.254/32",
    "240.0.0.1/32",
    "192.0.1.10/32",
    "fc00::1/128",
    "fd12::1/128",
    "fe80::1/128",
    "::127.0.0.1/128",
    "64:ff9b::a00:1/128",
    "64:ff9b:1::a00:1/128",
    "2002:a00:1::/128",
    "2001::1/128",
];

/// An address the guard treats as public, reachable only inside a lab.
const LAB_PUBLIC: &str = "192.0.1.10";

struct Lab {
    holder: Child,
    /// The holder exits when this closes (EOF on its stdin), even if the
    /// test process dies without running destructors.
    _holder_stdin: Option<ChildStdin>,
    pid: u32,
    server: NetServer,
    dns: DnsCanary,
    _scratch: Scratch,
}

impl Lab {
    /// A new lab whose DNS canary answers `zone` (name -> addresses; A and
    /// AAAA records by family) and NXDOMAIN for every other name. [`THEN`]
    /// in an address list starts the answer for the next query of that name
    /// and type (the last answer repeats), for rebinding tests.
    fn new(zone: &[(&str, &[&str])]) -> Lab {
        Lab::with_resolv_conf(zone, "")
    }

    /// [`Lab::new`] with `extra` lines (e.g. `search corp.test`) in the
    /// lab's /etc/resolv.conf.
    fn with_resolv_conf(zone: &[(&str, &[&str])], extra: &str) -> Lab {
        let scratch = Scratch::new("guard-lab");
        let resolv = scratch.write(
            "resolv.conf",
            &format!("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n{extra}"),
        );
        let nsswitch = scratch.write(
            "nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files dns\n",
        );
        let batch: String = LAB_ADDRESSES
            .iter()
            .map(|a| {
                let nodad = if a.contains(':') { " nodad" } else { "" };
                format!("addr add {a} dev lo{nodad}\n")
            })
            .collect();
        let batch = scratch.write("ip.batch", &batch);
        // Bind mounts are private to the lab's mount namespace. nscd, if the
        // host runs one, is hidden: glibc would ask it (over a unix socket,
        // across namespaces) before reading nsswitch.conf.
        let script = format!(
            "set -e
ip link set lo up
ip -force -batch '{batch}' >/dev/null 2>&1 || true
if [ -e /etc/resolv.conf ]; then mount --bind '{resolv}' /etc/resolv.conf; fi
if [ -e /etc/nsswitch.conf ]; then mount --bind '{nsswitch}' /etc/nsswitch.conf; fi
for d in /run/nscd /var/run/nscd; do if [ -d $d ]; then mount -t tmpfs tmpfs $d; fi; done
echo ready
read -r line || true
",
            batch = batch.display(),
            resolv = resolv.display(),
            nsswitch = nsswitch.display(),
        );
        let mut holder = die_with_parent(&mut Command::new("unshare"))
            .args(["--net", "--mount", "--propagation", "private", "--"])
            .args(["sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run unshare");
        let stdin = holder.stdin.take();
        let mut line = String::new();
        let stdout = holder.stdout.take().expect("holder stdout");
        let _ = BufReader::new(stdout).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = holder.kill();
            let mut stderr = String::new();
            if let Some(mut e) = holder.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            let _ = holder.wait();
            panic!("could not set up the lab namespace: {stderr}");
        }
        let pid = holder.id();
        let zone: Zone = zone
            .iter()
            .map(|(name, ips)| {
                let rounds = ips
                    .split(|ip| *ip == THEN)
                    .map(|round| {
                        round
                            .iter()
                            .map(|ip| ip.parse().expect("zone IP"))
                            .collect()
                    })
                    .collect();
                (name.to_string(), rounds)
            })
            .collect();
        let server = in_netns(pid, || NetServer::start(&[80, 443, KEEPALIVE_PORT]));
        let dns = in_netns(pid, move || DnsCanary::start(zone));
        let lab = Lab {
            holder,
            _holder_stdin: stdin,
            pid,
            server,
            dns,
            _scratch: scratch,
        };
        lab.check_isolated();
        lab
    }

    /// Refuses to run a test in a namespace that could reach anything but
    /// itself: only `lo`, and the test addresses really on it.
    fn check_isolated(&self) {
        let links = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.pid))
            .args(["--", "ip", "-o", "link", "show"])
            .output()
            .expect("run ip link in the lab");
        let links = String::from_utf8_lossy(&links.stdout).into_owned();
        let names: Vec<&str> = links
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(str::trim))
            .collect();
        assert_eq!(names, ["lo"], "the lab must have only lo: {links}");
        let addrs = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.pid))
            .args(["--", "ip", "-o", "addr", "show", "dev", "lo"])
            .output()
            .expect("run ip addr in the lab");
        let addrs = String::from_utf8_lossy(&addrs.stdout).into_owned();
        for needed in [
            "10.0.0.1/32",
            "169.254.169.254/32",
            "fd12::1/128",
            LAB_PUBLIC,
        ] {
            assert!(addrs.contains(needed), "lab lo lacks {needed}: {addrs}");
        }
    }

    /// Runs `f` inside the lab's network namespace (see [`in_netns`]).
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(self.pid, f)
    }

    /// Starts `tollgate proxy` with `policy` inside the lab (network and
    /// mount namespace), listening on a unix socket.
    fn proxy(&self, policy: &str) -> LabProxy {
        let scratch = Scratch::new("guard-proxy");
        let policy_path = scratch.write("policy.yaml", policy);
        let audit_path = scratch.path("audit.jsonl");
        let socket = scratch.path("proxy.sock");
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/proc/{}/ns/net", self.pid))
            .arg(format!("--mount=/proc/{}/ns/mnt", self.pid))
            .arg("--")
            .arg(BIN)
            .arg("proxy")
            .arg("--policy")
            .arg(&policy_path)
            .arg("--audit-log")
            .arg(&audit_path)
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()));
        let proxy = Proxy::spawn(die_with_parent(&mut command), scratch, audit_path);
        LabProxy {
            proxy,
            socket,
            policy_path,
            hangs: Cell::new(0),
        }
    }

    /// Everything that got out of the proxy: connections that reached the
    /// lab's server and questions that reached its resolver.
    fn leaks(&self) -> Vec<String> {
        let mut leaks: Vec<String> = self
            .server
            .seen()
            .into_iter()
            .map(|addr| format!("the proxy dialled {addr}"))
            .collect();
        leaks.extend(
            self.dns
                .queries()
                .into_iter()
                .map(|q| format!("the proxy asked DNS for {q}")),
        );
        leaks
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.server.stop();
        self.dns.stop();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Gives a connection the proxy might have opened time to be accepted.
fn settle() {
    std::thread::sleep(Duration::from_millis(150));
}

// ---------------------------------------------------------------------------
// The lab's servers.
// ---------------------------------------------------------------------------

/// The lab server's port that keeps connections alive; 80 and 443 close
/// after one response.
const KEEPALIVE_PORT: u16 = 8080;

/// TCP on the given ports of every lab address (dual-stack `[::]`). Records
/// the local address of each connection; answers an HTTP request with
/// `netns server at ADDR saw REQUEST-LINE`, so it is both a canary and an
/// upstream.
struct NetServer {
    seen: Arc<Mutex<Vec<SocketAddr>>>,
    stopping: Arc<AtomicBool>,
}

impl NetServer {
    fn start(ports: &[u16]) -> NetServer {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        for &port in ports {
            let listener = TcpListener::bind(("::", port))
                .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
                .expect("bind the lab server");
            listener
                .set_nonblocking(true)
                .expect("nonblocking listener");
            let (seen, stopping) = (seen.clone(), stopping.clone());
            std::thread::spawn(move || {
                while !stopping.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let local = stream
                                .local_addr()
                                .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()));
                            let Ok(local) = local else { continue };
                            seen.lock().unwrap().push(local);
                            std::thread::spawn(move || answer_http(stream, local));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        NetServer { seen, stopping }
    }

    fn seen(&self) -> Vec<SocketAddr> {
        self.seen.lock().unwrap().clone()
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// Answers one request, or on [`KEEPALIVE_PORT`] every request until the
/// peer closes (so the proxy pools the connection).
fn answer_http(mut stream: std::net::TcpStream, local: SocketAddr) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let keepalive = local.port() == KEEPALIVE_PORT;
    while let Ok(head) = read_head(&mut stream) {
        let request_line = head.lines().next().unwrap_or("");
        let body = format!("netns server at {local} saw {request_line}");
        let connection = if keepalive { "keep-alive" } else { "close" };
        let sent = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
            body.len()
        );
        if sent.is_err() || !keepalive {
            return;
        }
    }
}

/// Separates successive DNS answers for one name in [`Lab::new`].
const THEN: &str = "then";

/// name -> the answer to its first query of a type, to its second, ...
type Zone = BTreeMap<String, Vec<Vec<IpAddr>>>;

/// UDP (and TCP, which only counts) on the lab's 127.0.0.1:53. Records every
/// question as `name TYPE`, answers from its zone, NXDOMAIN otherwise.
struct DnsCanary {
    queries: Arc<Mutex<Vec<String>>>,
    stopping: Arc<AtomicBool>,
}

impl DnsCanary {
    fn start(zone: Zone) -> DnsCanary {
        let udp = UdpSocket::bind("127.0.0.1:53").expect("bind the DNS canary (udp)");
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("udp timeout");
        let tcp = TcpListener::bind("127.0.0.1:53").expect("bind the DNS canary (tcp)");
        tcp.set_nonblocking(true).expect("nonblocking tcp");
        let queries = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let (q, stop) = (queries.clone(), stopping.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                    let asked = q.lock().unwrap().clone();
                    match dns_answer(&buf[..n], &zone, &asked) {
                        Some((question, reply)) => {
                            q.lock().unwrap().push(question);
                            let _ = udp.send_to(&reply, peer);
                        }
                        None => q.lock().unwrap().push(format!("<{n} unparsed bytes>")),
                    }
                }
                if let Ok((_, peer)) = tcp.accept() {
                    q.lock()
                        .unwrap()
                        .push(format!("<tcp connection from {peer}>"));
                }
            }
        });
        DnsCanary { queries, stopping }
    }

    fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }

    fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// Parses a one-question DNS query; returns `name TYPE` and the response.
/// `asked` (the questions so far) picks the round of a changing answer.
fn dns_answer(query: &[u8], zone: &Zone, asked: &[String]) -> Option<(String, Vec<u8>)> {
    if query.len() < 12 || query[4..6] != [0, 1] {
        return None;
    }
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = query.get(pos..pos + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*query.get(pos)?, *query.get(pos + 1)?]);
    let question_end = pos + 4;
    if query.len() < question_end {
        return None;
    }
    let name = labels.join(".");
    let type_name = match qtype {
        1 => "A".to_owned(),
        28 => "AAAA".to_owned(),
        other => format!("TYPE{other}"),
    };
    let question = format!("{name} {type_name}");
    let round = asked.iter().filter(|q| **q == question).count();
    let (rcode, answers): (u8, Vec<IpAddr>) = match zone.get(&name) {
        None => (3, Vec::new()),
        Some(rounds) => (
            0,
            rounds[round.min(rounds.len() - 1)]
                .iter()
                .copied()
                .filter(|ip| matches!((qtype, ip), (1, IpAddr::V4(_)) | (28, IpAddr::V6(_))))
                .collect(),
        ),
    };
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[0..2]); // id
    out.push(0x80 | (query[2] & 0x79)); // QR, opcode, RD
    out.push(0x80 | rcode); // RA, rcode
    out.extend_from_slice(&[0, 1]); // one question
    out.extend_from_slice(&u16::try_from(answers.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
    out.extend_from_slice(&query[12..question_end]);
    for ip in answers {
        out.extend_from_slice(&[0xc0, 0x0c]); // the name in the question
        let (rtype, rdata): (u16, Vec<u8>) = match ip {
            IpAddr::V4(v4) => (1, v4.octets().to_vec()),
            IpAddr::V6(v6) => (28, v6.octets().to_vec()),
        };
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&[0, 1]); // class IN
        out.extend_from_slice(&[0, 0, 0, 0]); // TTL 0
        out.extend_from_slice(&u16::try_from(rdata.len()).ok()?.to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    Some((question, out))
}

// ---------------------------------------------------------------------------
// A raw HTTP/1.1 client: the exact request bytes, no URL normalisation (curl
// and the `http` crate would canonicalise `0x7f.1` before the proxy saw it).
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn failed(error: io::Error) -> Reply {
        Reply {
            status: 0,
            head: String::new(),
            body: format!("no reply from the proxy: {error}"),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Reads up to and including the blank line ending a message head.
fn read_head(stream: &mut impl Read) -> io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return Err(io::Error::other("head too long"));
        }
        if stream.read(&mut byte)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("EOF after {:?}", String::from_utf8_lossy(&head)),
            ));
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Reads a response; after a 2xx to CONNECT the stream is the tunnel.
fn read_reply(stream: &mut impl Read, connect: bool) -> io::Result<Reply> {
    let head = read_head(stream)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
    let mut reply = Reply {
        status,
        head,
        body: String::new(),
    };
    if connect && (200..300).contains(&status) {
        return Ok(reply);
    }
    let mut body = Vec::new();
    match reply.header("content-length").map(str::parse::<usize>) {
        Some(Ok(len)) => {
            body.resize(len, 0);
            stream.read_exact(&mut body)?;
        }
        _ => {
            stream.read_to_end(&mut body)?;
        }
    }
    reply.body = String::from_utf8_lossy(&body).into_owned();
    Ok(reply)
}

/// `GET http://{authority}{path}` with a matching Host header.
/// The first flight of a rustls client: a ClientHello naming `sni` (an IP
/// server name sends none).
fn client_hello(sni: Option<&str>) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = match sni {
        Some(name) => rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap(),
        None => {
            rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into())
        }
    };
    let mut connection = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).unwrap();
    hello
}

fn get_request(authority: &str, path: &str) -> String {
    format!(
        "GET http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\n\
         User-Agent: tollgate-guard-test\r\nConnection: close\r\n\r\n"
    )
}

fn connect_request(authority: &str) -> String {
    format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n")
}

/// A request for `path` on an origin server, sent through a tunnel.
/// A proxy running inside a lab, reached over its unix socket.
struct LabProxy {
    proxy: Proxy,
    socket: PathBuf,
    policy_path: PathBuf,
    /// Replies that never came. A proxy whose guard is broken forwards to a
    /// canary that never answers; after two such hangs the remaining
    /// requests wait briefly, so a failing test fails in seconds.
    hangs: Cell<u32>,
}

impl LabProxy {
    fn stream(&self) -> io::Result<UnixStream> {
        let wait = if self.hangs.get() >= 2 {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(8)
        };
        let stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(wait))?;
        stream.set_write_timeout(Some(wait))?;
        Ok(stream)
    }

    fn failed(&self, error: io::Error) -> Reply {
        if matches!(
            error.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            self.hangs.set(self.hangs.get() + 1);
        }
        let mut reply = Reply::failed(error);
        let log = self.proxy.stderr();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        reply
            .body
            .push_str(&format!(" (proxy log, last lines first: {tail:?})"));
        reply
    }

    fn get(&self, authority: &str, path: &str) -> Reply {
        let attempt = || -> io::Result<Reply> {
            let mut stream = self.stream()?;
            stream.write_all(get_request(authority, path).as_bytes())?;
            read_reply(&mut stream, false)
        };
        attempt().unwrap_or_else(|e| self.failed(e))
    }

    /// CONNECT; on success also the tunnel.
    fn connect(&self, authority: &str) -> (Reply, Option<UnixStream>) {
        let attempt = || -> io::Result<(Reply, Option<UnixStream>)> {
            let mut stream = self.stream()?;
            stream.write_all(connect_request(authority).as_bytes())?;
            let reply = read_reply(&mut stream, true)?;
            let tunnel = (reply.status == 200).then_some(stream);
            Ok((reply, tunnel))
        };
        attempt().unwrap_or_else(|e| (self.failed(e), None))
    }

    /// CONNECT, then a TLS ClientHello through the tunnel (tunnels carry
    /// TLS only) with `sni` as its server name, or none; the CONNECT reply.
    /// The lab server speaks HTTP, so it hangs up on the hello: what shows
    /// the tunnel reached it is its record of accepted connections.
    fn tls_through_tunnel(&self, authority: &str, sni: Option<&str>) -> Reply {
        let (reply, tunnel) = self.connect(authority);
        if let Some(mut tunnel) = tunnel {
            let _ = tunnel.write_all(&client_hello(sni));
            let _ = tunnel.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = tunnel.read_to_end(&mut Vec::new());
        }
        reply
    }

    /// The complete audit records so far. The writer may be caught mid-line
    /// (a batch can take more than one write), so an unterminated last line
    /// is left for the next read; `common::read_audit` would panic on it.
    fn audit(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.proxy.audit_path).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line {l}: {e}")))
            .collect()
    }

    /// At least `n` complete audit records, waiting up to 5 s for them.
    fn audit_at_least(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let records = self.audit();
            if records.len() >= n || Instant::now() > deadline {
                return records;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The audit record with this id, waiting up to 5 s for it.
    fn audit_by_id(&self, id: &str) -> Option<Value> {
        self.audit_where(|r| r["id"] == id)
    }

    /// The first audit record matching `pred`, waiting up to 5 s for one.
    fn audit_where(&self, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(found) = self.audit().into_iter().find(&pred) {
                return Some(found);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Checks one refusal end to end: status, `X-Tollgate-*` headers, and
    /// the audit record it names (decision, reason, kind, and `resolved`:
    /// the refused address, or absent when nothing was resolved). Returns
    /// what is wrong, each line naming `what`.
    fn refusal_problems(
        &self,
        what: &str,
        reply: &Reply,
        kind: &str,
        reason: &str,
        resolved: Option<IpAddr>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let status = match reason {
            "resolve-failed" | "upstream-failed" => 502,
            "bad-request" => 400,
            _ => 403,
        };
        if reply.status != status || reply.header("x-tollgate-reason") != Some(reason) {
            problems.push(format!(
                "{what}: want {status} {reason}, got {} {:?}: {}",
                reply.status,
                reply.header("x-tollgate-reason"),
                reply.body.trim()
            ));
            return problems;
        }
        if reply.header("x-tollgate-decision") != Some("deny") {
            problems.push(format!("{what}: no X-Tollgate-Decision: deny"));
        }
        let Some(id) = reply.header("x-tollgate-id") else {
            problems.push(format!("{what}: no X-Tollgate-Id header"));
            return problems;
        };
        let Some(record) = self.audit_by_id(id) else {
            problems.push(format!("{what}: no audit record with id {id}"));
            return problems;
        };
        let got_resolved = record["resolved"]
            .as_str()
            .and_then(|s| s.parse::<IpAddr>().ok());
        if record["decision"] != "deny"
            || record["reason"] != reason
            || record["kind"] != kind
            || record["status"] != status
            || got_resolved != resolved
        {
            problems.push(format!(
                "{what}: want audit decision deny, reason {reason}, kind {kind}, status {status}, \
                 resolved {resolved:?}; got {record}"
            ));
        }
        problems
    }
}

fn assert_no_problems(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP")
}

const UNRESTRICTED: &str = "version: 1\nmode: unrestricted\n";

// ---------------------------------------------------------------------------
// 1. Every internal range, through the proxy (invariant 2).
// ---------------------------------------------------------------------------

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

/// `mode: unrestricted` (only the guard can refuse): a plain HTTP GET to each
/// internal address is refused with internal-address, the audit names the
/// refused address, and nothing is dialled or resolved. Control: with
/// `allow_internal`, the same lab server answers through the proxy.
#[test]
fn guard_refuses_every_internal_range_over_plain_http() {
    require_root!();
    let lab = Lab::new(&[]);
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

/// The same over CONNECT: refused before the tunnel is answered, so no TCP
/// connection is ever opened. Control: allow_internal opens a working tunnel.
#[test]
fn guard_refuses_every_internal_range_over_connect() {
    require_root!();
    let lab = Lab::new(&[]);
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
    let lab = Lab::new(&[]);
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
    let lab = Lab::new(&[]);
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
    let lab = Lab::new(&[]);
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
    let lab = Lab::new(&[]);
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
    let lab = Lab::new(&[
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
    let lab = Lab::new(&[
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
    let lab = Lab::new(&[("lan.test", &["10.0.0.1"])]);
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
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proxy.proxy.stderr().contains("reloaded policy") {
        assert!(
            Instant::now() < deadline,
            "no reload: {}",
            proxy.proxy.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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
    let lab = Lab::new(&[("internal.test", &["10.0.0.1"])]);
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
    let lab = Lab::with_resolv_conf(
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
