//! Network namespace labs, for tests of what the proxy dials and resolves.
//!
//! Nothing here can leave the machine, even with a broken guard: a lab is
//! a network and mount namespace the test creates itself, whose only
//! interface is `lo`. The internal (and one guard-public) addresses the
//! tests name are assigned to that `lo`, and a server listening on ports
//! 80, 443 and 8080 of every address in the lab records each connection,
//! so a dial the guard should have refused is *seen* instead of leaking.
//! The lab's /etc/resolv.conf points at a DNS canary on the lab's
//! 127.0.0.1:53, which records every query and answers from a small zone
//! (NXDOMAIN for anything else); /etc/nsswitch.conf is `hosts: files dns`,
//! so no NSS module or daemon outside the lab can answer. The test process
//! reaches a proxy in the lab through a unix socket, which works across
//! network namespaces.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::raw::c_int;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use super::{DnsCanary, LabProxy, NetServer, Proxy, Scratch, Zone, BIN, KEEPALIVE_PORT, THEN};

// ---------------------------------------------------------------------------
// Entering a network namespace from the test process

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
pub fn die_with_parent(command: &mut Command) -> &mut Command {
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
pub fn in_netns<T: Send + 'static>(pid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
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
// The lab

/// Addresses put on the lab's `lo`, so that a dial to them stays inside the
/// lab and reaches its [`NetServer`]. 192.0.1.10 is an address the guard calls
/// public (nothing special-purpose about 192.0.1.0/24); it exists only on this
/// `lo`. IPv6 addresses get `nodad` so they are usable at once.
pub const LAB_ADDRESSES: &[&str] = &[
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
pub const LAB_PUBLIC: &str = "192.0.1.10";

/// A network and mount namespace with only `lo` (see the module doc), held
/// open by a `sh` that waits on its stdin; its server and DNS canary
/// record everything that reaches them.
pub struct NetLab {
    holder: Child,
    /// The holder exits when this closes (EOF on its stdin), even if the
    /// test process dies without running destructors.
    _holder_stdin: Option<ChildStdin>,
    pid: u32,
    pub server: NetServer,
    pub dns: DnsCanary,
    _scratch: Scratch,
}

impl NetLab {
    /// A new lab whose DNS canary answers `zone` (name -> addresses; A and
    /// AAAA records by family) and NXDOMAIN for every other name. [`THEN`]
    /// in an address list starts the answer for the next query of that name
    /// and type (the last answer repeats), for rebinding tests.
    pub fn new(zone: &[(&str, &[&str])]) -> NetLab {
        NetLab::with_resolv_conf(zone, "")
    }

    /// [`NetLab::new`] with `extra` lines (e.g. `search corp.test`) in the
    /// lab's /etc/resolv.conf.
    pub fn with_resolv_conf(zone: &[(&str, &[&str])], extra: &str) -> NetLab {
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
        let lab = NetLab {
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
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_netns(self.pid, f)
    }

    /// Starts `tollgate proxy` with `policy` inside the lab (network and
    /// mount namespace), listening on a unix socket.
    pub fn proxy(&self, policy: &str) -> LabProxy {
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
        LabProxy::new(proxy, socket, policy_path)
    }

    /// Everything that got out of the proxy: connections that reached the
    /// lab's server and questions that reached its resolver.
    pub fn leaks(&self) -> Vec<String> {
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

impl Drop for NetLab {
    fn drop(&mut self) {
        self.server.stop();
        self.dns.stop();
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Gives a connection the proxy might have opened time to be accepted.
pub fn settle() {
    std::thread::sleep(Duration::from_millis(150));
}
