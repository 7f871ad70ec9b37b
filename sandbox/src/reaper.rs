//! PID 1's supervision of the command: wait for it while reaping every
//! orphan re-parented to PID 1, forward signals, and when the command
//! exits, take every other process down with it.
//!
//! Signals are caught with handlers (signal-hook), not blocked: a blocked
//! mask would be inherited by the command (std's `Command` keeps it), and
//! PID 1 discards a signal it has no handler for, so handlers must exist
//! before the command does. Handlers, unlike a mask, are reset by exec.
//!
//! SIGTERM, SIGHUP, SIGUSR1 and SIGUSR2 are forwarded to the command. SIGINT
//! and SIGQUIT are forwarded only when standard input is not a terminal: a
//! terminal already delivers them to the whole foreground process group,
//! the command included, and forwarding would deliver them twice.

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
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

/// Signals PID 1 handles, registered before the command is spawned.
pub struct Signals(signal_hook::iterator::Signals);

impl Signals {
    pub fn catch() -> Result<Signals, SandboxError> {
        let mut wanted = vec![Signal::SIGCHLD as i32];
        wanted.extend(FORWARDED.iter().chain(&FROM_TERMINAL).map(|s| *s as i32));
        signal_hook::iterator::Signals::new(wanted)
            .map(Signals)
            .map_err(SandboxError::io("install signal handlers"))
    }
}

/// Waits for `child`, forwarding signals; returns its exit code in the
/// shell's convention (128 + signal number when killed). Background jobs
/// die with the command.
pub fn supervise(signals: &mut Signals, child: Pid) -> Result<i32, SandboxError> {
    loop {
        if let Some(code) = reap(child)? {
            kill_everyone_else();
            return Ok(code);
        }
        for number in signals.0.wait() {
            let Ok(signal) = Signal::try_from(number) else {
                continue;
            };
            if FORWARDED.contains(&signal)
                || (FROM_TERMINAL.contains(&signal) && !interrupts_come_from_a_terminal())
            {
                let _ = kill(child, signal);
            }
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
