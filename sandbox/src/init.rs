//! PID 1 of the sandbox. Builds the root filesystem, gives up every
//! privilege, runs the command and supervises it.
//!
//! The order is the one careful runtimes use (nsjail's containProc, youki's
//! init): every step that needs privilege happens before the step that drops
//! it, and nothing reaches the command before the last one.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use nix::unistd::Pid;

use crate::capabilities;
use crate::cgroup;
use crate::fds;
use crate::reaper::{supervise, Signals};
use crate::rootfs;
use crate::seccomp;
use crate::spec::{Handoff, Spec};
use crate::SandboxError;
use crate::{dev, mounts, proc};

/// The hidden subcommand the host side runs for PID 1.
pub const INIT_ARG: &str = "__sandbox-init";

/// Exit status of PID 1 when the sandbox could not be set up (as
/// `env`/`chroot` report a failure of their own, distinct from the
/// command's statuses).
const SETUP_FAILED: u8 = 125;

/// Runs PID 1 when this process was started as it (`<exe> __sandbox-init
/// HOST-PID FD`, FD being the handoff memfd of the host side HOST-PID): a
/// binary that embeds the sandbox calls this first thing in `main` and
/// exits with the status it returns.
pub fn enter_if_requested() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != INIT_ARG {
        return None;
    }
    let handoff = PathBuf::from("/proc")
        .join(args.next()?)
        .join("fd")
        .join(args.next()?);
    Some(match run(&handoff) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("tollgate: sandbox: {e}");
            ExitCode::from(SETUP_FAILED)
        }
    })
}

fn run(handoff: &Path) -> Result<i32, SandboxError> {
    // 0. Handlers for every signal PID 1 must not miss, before anything can
    //    send one; no descriptor of whoever started us reaches the command.
    let mut signals = Signals::catch()?;
    fds::close_on_exec_above_stderr()?;
    //    The spec, from the host side's sealed memfd (host /proc is still
    //    in view).
    let bytes = std::fs::read(handoff).map_err(SandboxError::io("read the sandbox's spec"))?;
    let Handoff { spec, scratch } = Handoff::from_bytes(&bytes)?;
    //    Resource limits: join the phase's cgroups while the host's
    //    /sys/fs/cgroup is still in view; every process started from here
    //    on is born inside them.
    cgroup::join(&spec.cgroups)?;
    // 1. Namespaces: the host side created network, mount, PID, IPC and UTS
    //    namespaces for us; we are PID 1 of the new PID namespace. If the
    //    host side dies, so do we, and with PID 1 the whole namespace.
    die_with_parent()?;
    // 2. Mount propagation private, so no mount below leaks to the host.
    rootfs::make_mounts_private()?;
    // 3. Overlay root: the base and any earlier layers read-only; writes go
    //    to an upper layer on a tmpfs that exists only in this mount
    //    namespace, or, for the phases of a run, to the run's own directory.
    let layers = rootfs::mount_scratch(&scratch, spec.writable.as_deref())?;
    let base = if spec.layers.is_empty() {
        spec.base.clone()
    } else {
        rootfs::stackable_base(&spec.base, &scratch)?
    };
    rootfs::mount_overlay(&base, &spec.layers, &layers)?;
    mounts::mount_binds(&layers.root, &spec.binds)?;
    mounts::mask(&layers.root, &spec.masks, &layers.empty_file)?;
    // 4. /proc for this PID namespace, with the host-global knobs read-only
    //    or hidden (a root without capabilities still owns /proc/sys), a
    //    minimal /dev, a private /tmp.
    proc::mount_proc(&layers.root)?;
    dev::mount_dev(&layers.root)?;
    dev::mount_tmp(&layers.root)?;
    // 5. pivot_root: the host's filesystem is no longer reachable.
    rootfs::pivot_into(&layers.root)?;
    rootfs::write_files(&spec.files)?;
    // 6. Own hostname (UTS namespace).
    nix::unistd::sethostname(&spec.hostname).map_err(SandboxError::setup("set hostname"))?;
    // 7. no_new_privs and no capabilities, in every set and the bounding set;
    //    then the seccomp allowlist: only the system calls a container
    //    without capabilities needs, io_uring and namespaces refused, no
    //    foreign or x32 ABI (seccomp/mod.rs says why, call by call).
    capabilities::drop_all()?;
    seccomp::install()?;
    // 8. Nothing in the sandbox may read PID 1's memory or environment.
    nix::sys::prctl::set_dumpable(false).map_err(SandboxError::setup("clear dumpable"))?;
    // 9. Exec the command and stay as its reaper.
    let child = command(&spec).spawn().map_err(|e| SandboxError::Io {
        step: format!("run {}", spec.command.first().map_or("", String::as_str)),
        source: e,
    })?;
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    supervise(&mut signals, pid)
}

/// SIGKILL when the host side goes, and the PID namespace with us.
///
/// (getppid() is 0 for PID 1 of a new namespace, so a host side that died
/// before this call cannot be detected here; it took the proxy's listener
/// with it, so such a sandbox has no network at all: it fails closed.)
fn die_with_parent() -> Result<(), SandboxError> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(SandboxError::setup("set parent-death signal"))
}

fn command(spec: &Spec) -> Command {
    let (program, args) = spec
        .command
        .split_first()
        .map_or(("/bin/true", &[][..]), |(p, a)| (p.as_str(), a));
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.workdir);
    command
}
