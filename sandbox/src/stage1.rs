//! Stage 1: in the sandbox's network namespace already, unshare the mount,
//! PID, IPC and UTS namespaces and start stage 2, the sandbox's PID 1.

use std::path::Path;
use std::process::Command;

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::reaper::{supervise, Orphans, Signals};
use crate::SandboxError;

/// The hidden subcommand the host side runs for stage 2.
pub const STAGE2_ARG: &str = "__sandbox-stage2";

pub fn run(spec_path: &Path) -> Result<i32, SandboxError> {
    die_with_parent()?;
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
    Signals::clear_mask()?;
    let stage2 = Command::new("/proc/self/exe")
        .arg(STAGE2_ARG)
        .arg(spec_path)
        .spawn()
        .map_err(SandboxError::io("start the sandbox's init"))?;
    let pid = Pid::from_raw(i32::try_from(stage2.id()).unwrap_or(i32::MAX));
    let signals = Signals::block()?;
    supervise(&signals, pid, Orphans::None)
}

/// SIGKILL when the host side goes, and the PID namespace with it.
pub(crate) fn die_with_parent() -> Result<(), SandboxError> {
    let parent = nix::unistd::getppid();
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(SandboxError::setup("set parent-death signal"))?;
    // The parent may have died before the line above: then we are orphaned.
    if nix::unistd::getppid() != parent {
        std::process::exit(137);
    }
    Ok(())
}
