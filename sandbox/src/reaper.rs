//! PID 1's supervision of the command, with signals arriving on a signalfd:
//! wait for the command while reaping every orphan re-parented to PID 1,
//! and when the command exits, take every other process down with it.
//!
//! SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 are forwarded to the child. SIGINT
//! and SIGQUIT are forwarded only when standard input is not a terminal: a
//! terminal already delivers them to the whole foreground process group,
//! the command included, and forwarding would deliver them twice.

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::SandboxError;

const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];
const FROM_TERMINAL: [Signal; 2] = [Signal::SIGINT, Signal::SIGQUIT];

/// Signals routed to a signalfd, which needs them blocked.
///
/// A child inherits its parent's signal mask (std's `Command` does not clear
/// it), and a command started with SIGCHLD blocked never sees its own
/// children exit: a shell's `wait` hangs. So a stage clears its mask first
/// ([`Signals::clear_mask`]), spawns its child, and only then blocks —
/// reaping once right away so an exit in between is not missed.
pub struct Signals(SignalFd);

impl Signals {
    /// Starts from no blocked signals, whatever the parent left.
    pub fn clear_mask() -> Result<(), SandboxError> {
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
            .map_err(SandboxError::setup("clear the signal mask"))
    }

    pub fn block() -> Result<Signals, SandboxError> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        for signal in FORWARDED.iter().chain(&FROM_TERMINAL) {
            mask.add(*signal);
        }
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
            .map_err(SandboxError::setup("block signals"))?;
        SignalFd::new(&mask)
            .map(Signals)
            .map_err(SandboxError::setup("create signalfd"))
    }
}

/// Waits for `child`, forwarding signals; returns its exit code in the
/// shell's convention (128 + signal number when killed). Background jobs
/// die with the command.
pub fn supervise(signals: &Signals, child: Pid) -> Result<i32, SandboxError> {
    let finish = |code: i32| {
        kill_everyone_else();
        code
    };
    // The child may have exited before its SIGCHLD could reach the signalfd.
    if let Some(code) = reap(child)? {
        return Ok(finish(code));
    }
    loop {
        let info = match signals.0.read_signal() {
            Ok(Some(info)) => info,
            Ok(None) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(SandboxError::setup("read signalfd")(e)),
        };
        let Ok(signal) = Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0)) else {
            continue;
        };
        if signal == Signal::SIGCHLD {
            if let Some(code) = reap(child)? {
                return Ok(finish(code));
            }
        } else if FORWARDED.contains(&signal) || !interrupts_come_from_a_terminal() {
            let _ = kill(child, signal);
        }
    }
}

/// Whether SIGINT/SIGQUIT reach the command from the terminal by themselves.
pub fn interrupts_come_from_a_terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}

/// Reaps every exited child; `Some(code)` once `child` is among them.
fn reap(child: Pid) -> Result<Option<i32>, SandboxError> {
    let mut result = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return Ok(result),
            Ok(WaitStatus::Exited(pid, code)) if pid == child => result = Some(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == child => {
                result = Some(128 + signal as i32)
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(e) => return Err(SandboxError::setup("waitpid")(e)),
        }
    }
}

/// PID 1's last act: SIGKILL to every other process of its namespace (kill
/// with pid -1 spares the caller), then reap them all.
fn kill_everyone_else() {
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    while !matches!(waitpid(None, None), Err(Errno::ECHILD)) {}
}
