//! The command's process. PID 1 forks it before it builds the root
//! filesystem, because as root the command's user namespace is the one the
//! layers are idmapped with: the child makes it (unshare must be called by
//! a process of one thread, in the namespace it leaves), PID 1 writes its
//! id maps from outside and mounts the layers with it. The child then
//! waits until PID 1 says "go", becomes root of that namespace (or stays
//! the caller, rootless), takes its terminal, gives up every privilege,
//! installs the seccomp filter and execs the command.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::fcntl::{open, OFlag};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;
use nix::unistd::{
    dup2_stderr, dup2_stdin, dup2_stdout, pipe2, setresgid, setresuid, setsid, ForkResult, Gid,
    Pid, Uid,
};

use crate::ids::IdMapping;
use crate::pty::Terminals;
use crate::seccomp::Filters;
use crate::spec::Spec;
use crate::{capabilities, sys, SandboxError};

/// Exit status when the command cannot be run, as shells say it: 127 for
/// one not found, 126 for one that is there but cannot be executed.
const NOT_FOUND: i32 = 127;
const CANNOT_EXECUTE: i32 = 126;

/// PID 1's handle on the command's process while the sandbox is built.
pub(crate) struct Pending {
    pub pid: Pid,
    go: OwnedFd,
    failure: OwnedFd,
}

/// Forks the command's process; as root it has made its user namespace
/// when this returns.
pub(crate) fn fork(
    spec: &Spec,
    ids: &IdMapping,
    console: Option<Terminals>,
    filters: &Filters,
) -> Result<Pending, SandboxError> {
    let pipe = || pipe2(OFlag::O_CLOEXEC).map_err(SandboxError::setup("create a pipe"));
    let (go_read, go_write) = pipe()?;
    let (ready_read, ready_write) = pipe()?;
    let (failure_read, failure_write) = pipe()?;
    match sys::fork_single_threaded().map_err(SandboxError::setup("start the command's process"))? {
        ForkResult::Child => {
            drop((go_write, ready_read, failure_read));
            let code = child(
                (spec, ids, console, filters),
                go_read,
                ready_write,
                &failure_write,
            );
            std::process::exit(code)
        }
        ForkResult::Parent { child } => {
            drop((go_read, ready_write, failure_write));
            let mut ready = [0u8; 1];
            let made = std::fs::File::from(ready_read).read(&mut ready);
            if !matches!(made, Ok(1)) {
                return Err(SandboxError::Ids(
                    "the command's process could not make its user namespace".into(),
                ));
            }
            Ok(Pending {
                pid: child,
                go: go_write,
                failure: failure_read,
            })
        }
    }
}

impl Pending {
    /// Lets the command run; returns once it has been exec'd, or with
    /// why it could not be (and the status the sandbox then exits with).
    pub fn go(self) -> Result<Pid, (i32, String)> {
        let Pending { pid, go, failure } = self;
        let _ = std::fs::File::from(go).write_all(b"g");
        let mut why = String::new();
        let _ = std::fs::File::from(failure).read_to_string(&mut why);
        match why.split_once(' ') {
            Some((code, message)) => Err((code.parse().unwrap_or(NOT_FOUND), message.to_owned())),
            None => Ok(pid),
        }
    }
}

/// The child: never returns but through exec, or with an exit status.
fn child(
    (spec, ids, console, filters): (&Spec, &IdMapping, Option<Terminals>, &Filters),
    go: OwnedFd,
    ready: OwnedFd,
    failure: &OwnedFd,
) -> i32 {
    if matches!(ids, IdMapping::Mapped { .. }) && unshare(CloneFlags::CLONE_NEWUSER).is_err() {
        return 1;
    }
    if std::fs::File::from(ready).write_all(b"r").is_err() {
        return 1;
    }
    // PID 1 closes `go` without writing when it gives up.
    let mut word = [0u8; 1];
    if !matches!(std::fs::File::from(go).read(&mut word), Ok(1)) {
        return 1;
    }
    let error = match become_the_command(spec, ids, console, filters) {
        Ok(never) => match never {},
        Err(error) => error,
    };
    let (code, message) = match &error {
        Failure::Exec(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (NOT_FOUND, format!("cannot run {}: {e}", program(spec)))
        }
        Failure::Exec(e) => (CANNOT_EXECUTE, format!("cannot run {}: {e}", program(spec))),
        Failure::Setup(e) => (1, e.to_string()),
    };
    let _ = std::fs::File::from(
        failure
            .try_clone()
            .unwrap_or_else(|_| std::process::exit(code)),
    )
    .write_all(format!("{code} {message}").as_bytes());
    code
}

enum Failure {
    Setup(SandboxError),
    Exec(std::io::Error),
}

impl From<SandboxError> for Failure {
    fn from(error: SandboxError) -> Failure {
        Failure::Setup(error)
    }
}

enum Never {}

/// The last steps of the checklist, in the command's own process.
fn become_the_command(
    spec: &Spec,
    ids: &IdMapping,
    console: Option<Terminals>,
    filters: &Filters,
) -> Result<Never, Failure> {
    // a. Root of its user namespace (as root), with no supplementary group
    //    of the host's.
    if matches!(ids, IdMapping::Mapped { .. }) {
        nix::unistd::setgroups(&[]).map_err(SandboxError::setup("drop supplementary groups"))?;
        setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
            .map_err(SandboxError::setup("become root inside (gid)"))?;
        setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
            .map_err(SandboxError::setup("become root inside (uid)"))?;
    }
    // b. A session of its own; with a terminal made for it, that terminal
    //    as its controlling one (opened by a session leader without one),
    //    on every standard stream that was the caller's terminal.
    setsid().map_err(SandboxError::setup("start a session"))?;
    if let Some(streams) = console {
        take_console(streams)?;
    }
    // c. no_new_privs and no capability in any set; then the seccomp
    //    allowlist. Both are inherited by everything the command starts.
    capabilities::drop_all()?;
    filters.install().map_err(SandboxError::from)?;
    // d. exec.
    let (program, args) = spec
        .command
        .split_first()
        .map_or(("/bin/true", &[][..]), |(p, a)| (p.as_str(), a));
    let error = Command::new(program)
        .args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.workdir)
        .exec();
    Err(Failure::Exec(error))
}

fn take_console(streams: Terminals) -> Result<(), SandboxError> {
    let console = open(
        "/dev/console",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(SandboxError::setup("open /dev/console"))?;
    let use_it = || SandboxError::setup("use the terminal");
    if streams.stdin {
        dup2_stdin(&console).map_err(use_it())?;
    }
    if streams.stdout {
        dup2_stdout(&console).map_err(use_it())?;
    }
    if streams.stderr {
        dup2_stderr(&console).map_err(use_it())?;
    }
    Ok(())
}

fn program(spec: &Spec) -> &str {
    spec.command.first().map_or("/bin/true", String::as_str)
}
