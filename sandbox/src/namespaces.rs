//! The sandbox's namespaces, created from a thread of the host side
//! (unshare applies to the calling thread): the network namespace first,
//! with `lo` up and the proxy's listener bound inside it, then mount, PID,
//! IPC and UTS; PID 1 is spawned from that thread and inherits them all.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::RawFd;
use std::process::Command;
use std::sync::mpsc;

use nix::sched::{unshare, CloneFlags};
use nix::unistd::Pid;

use crate::init::INIT_ARG;
use crate::launch::{Output, SandboxExit};
use crate::SandboxError;

/// iproute2, by absolute path: searching PATH cost a dozen failed execs.
const IP: &str = "/usr/sbin/ip";

/// Runs on its own thread, because namespaces entered with unshare belong
/// to the calling thread: create the network namespace, bring `lo` up and
/// bind the proxy's listener there; then the mount, PID, IPC and UTS
/// namespaces (after `ip` ran, which would otherwise become PID 1); start
/// PID 1, which inherits them all, and stay — its parent-death signal is
/// tied to this thread — until it exits.
pub(crate) fn in_new_namespaces(
    handoff: RawFd,
    listen: SocketAddr,
    output: Output,
    ready: mpsc::Sender<(TcpListener, Pid)>,
) -> Result<SandboxExit, SandboxError> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(|source| SandboxError::Namespace {
        what: "network",
        source,
    })?;
    bring_up_loopback()?;
    let listener = TcpListener::bind(listen).map_err(SandboxError::io(format!(
        "bind the proxy on {listen} inside the sandbox"
    )))?;
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(|source| SandboxError::Namespace {
        what: "mount, PID, IPC and UTS",
        source,
    })?;
    let mut command = Command::new("/proc/self/exe");
    command
        .arg(INIT_ARG)
        .arg(std::process::id().to_string())
        .arg(handoff.to_string());
    output.configure(&mut command)?;
    let mut init = command
        .spawn()
        .map_err(SandboxError::io("start the sandbox"))?;
    let pid = Pid::from_raw(i32::try_from(init.id()).unwrap_or(i32::MAX));
    if ready.send((listener, pid)).is_err() {
        let _ = init.kill();
    }
    let status = init
        .wait()
        .map_err(SandboxError::io("wait for the sandbox"))?;
    Ok(status.code().unwrap_or(137))
}

/// `lo` starts down in a new network namespace. iproute2 does it; the
/// alternative is a raw netlink or ioctl call this crate would need unsafe
/// code for.
fn bring_up_loopback() -> Result<(), SandboxError> {
    let status = Command::new(IP)
        .args(["link", "set", "lo", "up"])
        .status()
        .map_err(|e| SandboxError::Io {
            step: "run `ip link set lo up` in the sandbox's network namespace (is iproute2 installed?)".into(),
            source: e,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(SandboxError::Io {
            step: "`ip link set lo up` in the sandbox's network namespace".into(),
            source: std::io::Error::other(format!("exited with {status}")),
        })
    }
}
