//! The sandbox's stage: the process the host side starts (a fork of a
//! single-threaded caller, or a fresh exec of this binary: single-threaded
//! either way, which unshare(CLONE_NEWUSER) and fork need;
//! [`crate::stage_process`]). It creates the sandbox's network namespace while the host side
//! still prepares the spec, then receives the spec, binds the proxy's
//! listener inside the network namespace and hands it to the host side,
//! creates the other namespaces, forks PID 1 of the new PID namespace
//! ([`crate::init`]), which talks to the host side on the stage's control
//! connection from then on, and waits for it.
//!
//! - As root, the namespaces belong to the host's user namespace: root's
//!   power over them never reaches the command, which PID 1 starts in a user
//!   namespace of its own (see [`crate::ids`]).
//! - Rootless, a user namespace owned by the caller comes first (the caller
//!   is root in it), and the other namespaces belong to it.

use std::io::Write;
use std::io::{Read, Seek, SeekFrom};

use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::ForkResult;

use crate::control::{Control, Message};
use crate::ids::IdMapping;
use crate::spec::Handoff;
use crate::{capabilities, init, netlink, sys, SandboxError};

/// The hidden subcommand the host side runs for the stage.
pub const STAGE_ARG: &str = "__sandbox";

/// Exit status of the stage when the sandbox could not be set up (as
/// `env`/`chroot` report a failure of their own, distinct from the
/// command's statuses).
pub(crate) const SETUP_FAILED: u8 = 125;

/// Runs the stage when this process was started as it (`<exe> __sandbox
/// CONTROL-SOCKET`): a binary that embeds the sandbox calls this first
/// thing in `main` and exits with the status it returns.
pub fn enter_if_requested() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != STAGE_ARG {
        return None;
    }
    let code = run_at(Path::new(&args.next()?));
    Some(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Runs the stage, connected to the host side's control socket at
/// `control`; its exit status.
pub(crate) fn run_at(control: &Path) -> i32 {
    let control = match Control::connect(control) {
        Ok(control) => control,
        Err(e) => return failed(&e),
    };
    match run(&control) {
        Ok(code) => code,
        Err(e) => {
            let _ = control.send(&Message::Failed(e.to_string()));
            failed(&e)
        }
    }
}

fn failed(error: &SandboxError) -> i32 {
    let _ = writeln!(std::io::stderr(), "tollgate: sandbox: {error}");
    i32::from(SETUP_FAILED)
}

fn run(control: &Control) -> Result<i32, SandboxError> {
    // The stage dies with the host side (and PID 1 with the stage); a
    // terminal's SIGINT and SIGQUIT are for the command, not for us.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(SandboxError::setup("set parent-death signal"))?;
    ignore_terminal_signals()?;
    // The network namespace first: it needs nothing of the spec, and is
    // the dearest step (the kernel sets up a whole network stack).
    let ids = IdMapping::for_this_process();
    let early = enter_user_and_network_namespaces(&ids, control)?;
    netlink::loopback_up().map_err(SandboxError::setup("bring up lo in the sandbox"))?;
    let handoff = receive_handoff(control, early)?;
    if handoff.ids != ids {
        return Err(SandboxError::Ids(
            "the host side and the stage disagree on the sandbox's ids".into(),
        ));
    }
    let listener = TcpListener::bind(handoff.listen).map_err(SandboxError::io(format!(
        "bind the proxy on {} inside the sandbox",
        handoff.listen
    )))?;
    control.send(&Message::Listener(OwnedFd::from(listener)))?;
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
    match sys::fork_single_threaded().map_err(SandboxError::setup("start PID 1"))? {
        // PID 1 talks to the host side itself, on our control connection:
        // it says when it has left the host's filesystem and takes the go
        // (a relay through us would cost a wake-up each way).
        ForkResult::Child => std::process::exit(init::run(handoff, control)),
        ForkResult::Parent { child } => {
            control.send(&Message::Pid1(child.as_raw().unsigned_abs()))?;
            // All that is left to us is waiting, in the sandbox's
            // namespaces: with no privilege.
            capabilities::become_sandbox_root_on_host(&handoff.ids)?;
            let code = wait_for(child)?;
            // PID 1 is gone: the host side may remove the cgroups, while we
            // exit (which unmounts the sandbox's mount namespace, and takes
            // a while). It may be gone itself by now: `exec` ends when PID 1
            // reports, a run waits for us.
            let _ = control.send(&Message::Exited(code.unsigned_abs()));
            Ok(code)
        }
    }
}

/// PID 1's exit status, in the shell's convention.
fn wait_for(child: nix::unistd::Pid) -> Result<i32, SandboxError> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(SandboxError::setup("wait for PID 1")(e)),
        }
    }
}

/// Handlers (that do nothing) rather than the default action, which would
/// end the stage — and with it the whole sandbox — when the caller's
/// terminal sends SIGINT or SIGQUIT to its foreground process group.
/// Handlers, unlike SIG_IGN, do not survive the command's exec.
fn ignore_terminal_signals() -> Result<(), SandboxError> {
    let seen = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGQUIT] {
        signal_hook::flag::register(signal, seen.clone())
            .map_err(SandboxError::io("install signal handlers"))?;
    }
    Ok(())
}

/// The handoff: the one that came while we waited for our id maps, or
/// the next message.
fn receive_handoff(control: &Control, early: Option<OwnedFd>) -> Result<Handoff, SandboxError> {
    let memfd = match early {
        Some(memfd) => memfd,
        None => match control.recv(None)? {
            Some(Message::Handoff(memfd)) => memfd,
            _ => return Err(SandboxError::Spec("the host side sent no spec".into())),
        },
    };
    // The host side wrote it through the same open file: from the start.
    let mut bytes = Vec::new();
    let mut file = std::fs::File::from(memfd);
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(SandboxError::io("read the sandbox's spec"))?;
    Handoff::from_bytes(&bytes)
}

/// As root: a network namespace of the host's user namespace. Rootless: a
/// user namespace whose root is the caller, mapped by the stage itself
/// (the caller's one id) or by the host side's newuidmap/newgidmap (a
/// subordinate range), and a network namespace it owns. Returns the
/// handoff if the host side sent it while we waited for the maps.
fn enter_user_and_network_namespaces(
    ids: &IdMapping,
    control: &Control,
) -> Result<Option<OwnedFd>, SandboxError> {
    let IdMapping::Rootless {
        uid,
        gid,
        subordinate,
    } = ids
    else {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|source| SandboxError::Namespace {
            what: "network",
            source,
        })?;
        return Ok(None);
    };
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNET).map_err(|source| {
        SandboxError::Namespace {
            what: "user and network",
            source,
        }
    })?;
    if subordinate.is_some() {
        control.send(&Message::MapMe(std::process::id()))?;
        let mut handoff = None;
        loop {
            match control.recv(None)? {
                Some(Message::Handoff(memfd)) if handoff.is_none() => handoff = Some(memfd),
                Some(Message::Mapped(true)) => return Ok(handoff),
                _ => {
                    return Err(SandboxError::Ids(
                        "newuidmap/newgidmap failed (see above)".into(),
                    ))
                }
            }
        }
    }
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text)
            .map_err(SandboxError::io(format!("write /proc/self/{file}")))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {uid} 1"))?;
    write("gid_map", format!("0 {gid} 1"))?;
    Ok(None)
}
