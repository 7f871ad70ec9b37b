//! Starting the stage ([`crate::stage`]) and keeping hold of it.
//!
//! When the caller has one thread (`tollgate exec`, before its runtime
//! starts) the stage is a fork of it that goes on into the stage's code:
//! no exec, no dynamic loading, no second start of the runtime — about two
//! milliseconds of every sandbox's start. A caller with threads (a run,
//! whose phases start on the proxy's runtime) cannot fork safely (locks
//! other threads hold stay locked in the child) and execs a fresh copy of
//! this binary instead, as `<exe> __sandbox CONTROL-SOCKET`.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::stage::STAGE_ARG;
use crate::{sys, SandboxError};

/// One of the stage's standard streams.
#[derive(Debug)]
pub(crate) enum Stream {
    /// The caller's own.
    Inherit,
    Null,
    Fd(OwnedFd),
}

impl From<Stream> for Stdio {
    fn from(stream: Stream) -> Stdio {
        match stream {
            Stream::Inherit => Stdio::inherit(),
            Stream::Null => Stdio::null(),
            Stream::Fd(fd) => Stdio::from(fd),
        }
    }
}

/// The stage: its pid, and its exit status once reaped (so that a pid the
/// kernel may have given to another process is never signalled).
#[derive(Debug)]
pub(crate) struct StageProcess {
    pid: Pid,
    status: Option<i32>,
}

impl StageProcess {
    /// Starts the stage, connected to the control socket at `control`,
    /// with `streams` as its standard input, output and error.
    pub fn start(control: &Path, streams: [Stream; 3]) -> Result<StageProcess, SandboxError> {
        match sys::fork_single_threaded() {
            Ok(ForkResult::Child) => std::process::exit(become_stage(control, streams)),
            Ok(ForkResult::Parent { child }) => Ok(StageProcess {
                pid: child,
                status: None,
            }),
            // Threads: a fresh exec.
            Err(nix::errno::Errno::EDEADLK) => {
                let [stdin, stdout, stderr] = streams;
                let child = Command::new("/proc/self/exe")
                    .arg(STAGE_ARG)
                    .arg(control)
                    .stdin(stdin)
                    .stdout(stdout)
                    .stderr(stderr)
                    .spawn()
                    .map_err(SandboxError::io("start the sandbox"))?;
                Ok(StageProcess {
                    pid: sys::pid(child.id()),
                    status: None,
                })
            }
            Err(e) => Err(SandboxError::setup("start the sandbox")(e)),
        }
    }

    /// The exit status (the shell's convention), if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<i32>, SandboxError> {
        self.reap(Some(WaitPidFlag::WNOHANG))
    }

    /// Waits for it to exit; its status in the shell's convention.
    pub fn wait(&mut self) -> Result<i32, SandboxError> {
        loop {
            if let Some(status) = self.reap(None)? {
                return Ok(status);
            }
        }
    }

    /// SIGKILL, unless it has been reaped.
    pub fn kill(&self) {
        if self.status.is_none() {
            let _ = kill(self.pid, Signal::SIGKILL);
        }
    }

    fn reap(&mut self, flags: Option<WaitPidFlag>) -> Result<Option<i32>, SandboxError> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        self.status = match waitpid(self.pid, flags) {
            Ok(WaitStatus::Exited(_, code)) => Some(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => Some(128 + signal as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => None,
            Err(e) => return Err(SandboxError::setup("wait for the sandbox")(e)),
        };
        Ok(self.status)
    }
}

/// The forked child: takes its streams, drops every other descriptor of
/// the caller's, and runs the stage. (The SIGPIPE disposition Rust's
/// runtime set is reset where the command is exec'd, by std's Command.)
fn become_stage(control: &Path, streams: [Stream; 3]) -> i32 {
    match take_streams(streams).and_then(|()| sys::close_above_stderr()) {
        Ok(()) => crate::stage::run_at(control),
        Err(_) => i32::from(crate::stage::SETUP_FAILED),
    }
}

/// Makes `streams` this process's descriptors 0, 1 and 2.
fn take_streams(streams: [Stream; 3]) -> Result<(), nix::errno::Errno> {
    let [stdin, stdout, stderr] = streams.map(|stream| match stream {
        Stream::Inherit => Ok(None),
        Stream::Null => std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map(|file| Some(OwnedFd::from(file)))
            .map_err(|_| nix::errno::Errno::ENOENT),
        // A copy above 2 (try_clone duplicates to 3 or more), so that no
        // dup2 below overwrites a source a later one reads, even when the
        // caller had closed its own standard streams.
        Stream::Fd(fd) => fd
            .try_clone()
            .map(Some)
            .map_err(|_| nix::errno::Errno::EMFILE),
    });
    if let Some(fd) = stdin? {
        nix::unistd::dup2_stdin(fd)?;
    }
    if let Some(fd) = stdout? {
        nix::unistd::dup2_stdout(fd)?;
    }
    if let Some(fd) = stderr? {
        nix::unistd::dup2_stderr(fd)?;
    }
    Ok(())
}
