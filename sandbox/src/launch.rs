//! The host side of a sandbox: preflight checks, a private run directory
//! (the scratch mount point and the control socket), the handoff memfd, the
//! stage process ([`crate::stage`]) that creates the sandbox, its terminal,
//! and handles to wait for and signal PID 1.

use std::fs::DirBuilder;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::control::{Control, ControlListener, Message};
use crate::ids::{self, IdMapping};
use crate::pty::{self, Relay, Terminals};
use crate::spec::{Console, Handoff, Spec};
use crate::stage_process::{StageProcess, Stream};
use crate::{cgroup, stdio, sys, SandboxError};

/// How the sandboxed command ended, in the shell's convention.
pub type SandboxExit = i32;

/// A running sandbox. Dropping it kills the sandbox if it still runs, and
/// removes its run directory.
pub struct Sandbox {
    stage: Stage,
    control: Control,
    init: Pid,
    terminal: Option<Relay>,
}

/// Refuses early, with one line, what would fail halfway: no overlayfs, or
/// (not root) a host that refuses unprivileged user namespaces.
pub fn preflight() -> Result<(), SandboxError> {
    let filesystems = std::fs::read_to_string("/proc/filesystems")
        .map_err(SandboxError::io("read /proc/filesystems"))?;
    if !filesystems
        .lines()
        .any(|l| l.trim_end().ends_with("\toverlay"))
    {
        return Err(SandboxError::NoOverlay);
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    match user_namespaces_refused(|path| std::fs::read_to_string(path).ok()) {
        Some(refused) => Err(refused),
        None => Ok(()),
    }
}

/// The setting, if any, by which this host refuses unprivileged user
/// namespaces (`read` reads a /proc/sys file).
fn user_namespaces_refused(read: impl Fn(&str) -> Option<String>) -> Option<SandboxError> {
    const REFUSALS: [(&str, &str, &str); 3] = [
        // Debian's own switch.
        (
            "/proc/sys/kernel/unprivileged_userns_clone",
            "0",
            "kernel.unprivileged_userns_clone=1",
        ),
        (
            "/proc/sys/user/max_user_namespaces",
            "0",
            "user.max_user_namespaces=15000",
        ),
        // Ubuntu 24.04 and later: AppArmor confines them.
        (
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "1",
            "kernel.apparmor_restrict_unprivileged_userns=0",
        ),
    ];
    REFUSALS.iter().find_map(|(path, refused, fix)| {
        (read(path).as_deref().map(str::trim) == Some(*refused)).then(|| {
            SandboxError::UserNamespacesRefused {
                sysctl: path.trim_start_matches("/proc/sys/").replace('/', "."),
                fix,
            }
        })
    })
}

/// Where the sandbox's standard streams go.
#[derive(Debug)]
pub enum Output {
    /// The caller's own standard streams; when any of them is a terminal,
    /// the sandbox gets a terminal of its own in its place, relayed to the
    /// caller's (pty.rs).
    Inherit,
    /// stdout and stderr to this descriptor (a pipe the host reads), stdin
    /// from /dev/null: for phases whose output the host logs.
    Pipe(OwnedFd),
}

/// The standard streams the stage gets, and the relay of a terminal made
/// for the sandbox.
struct Streams {
    stdin: Stream,
    stdout: Stream,
    stderr: Stream,
    master: Option<(OwnedFd, Terminals)>,
    console: Option<Console>,
}

impl Output {
    fn streams(self, ids: &IdMapping) -> Result<Streams, SandboxError> {
        let clone = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(SandboxError::io("duplicate a descriptor"))
        };
        match self {
            Output::Pipe(fd) => Ok(Streams {
                stdin: Stream::Null,
                stdout: Stream::Fd(clone(&fd)?),
                stderr: Stream::Fd(fd),
                master: None,
                console: None,
            }),
            Output::Inherit => {
                stdio::check_inherited()?;
                let terminals = Terminals::of_caller();
                if !terminals.any() {
                    return Ok(Streams {
                        stdin: Stream::Inherit,
                        stdout: Stream::Inherit,
                        stderr: Stream::Inherit,
                        master: None,
                        console: None,
                    });
                }
                let owner = (ids.host_root_uid(), ids.host_root_gid());
                let (master, slave, path) = pty::open(terminals, owner)?;
                let pick = |tty: bool| -> Result<Stream, SandboxError> {
                    Ok(if tty {
                        Stream::Fd(clone(&slave)?)
                    } else {
                        Stream::Inherit
                    })
                };
                Ok(Streams {
                    stdin: pick(terminals.stdin)?,
                    stdout: pick(terminals.stdout)?,
                    stderr: pick(terminals.stderr)?,
                    master: Some((master, terminals)),
                    console: Some(Console {
                        path,
                        streams: terminals,
                    }),
                })
            }
        }
    }
}

/// A sandbox's stage, started before its spec is ready: while the caller
/// prepares the rest (policy, proxy, cgroups), the stage execs and makes
/// the network namespace on the other CPU. [`Starting::hand_over`] hands
/// it the spec; dropping it instead kills the stage.
pub struct Starting {
    stage: Stage,
    ids: IdMapping,
    control: ControlListener,
    master: Option<(OwnedFd, Terminals)>,
    console: Option<Console>,
}

/// The stage process and the run directory it uses. Dropping it kills the
/// stage if it still runs — PID 1 and the whole sandbox go with it
/// (parent-death signals) — reaps it, and removes the directory if it is
/// still there.
struct Stage {
    process: StageProcess,
    run_dir: RunDir,
}

impl Drop for Stage {
    fn drop(&mut self) {
        // Once reaped, kill() sends nothing.
        self.process.kill();
        let _ = self.process.wait();
    }
}

impl Sandbox {
    /// Starts a sandbox's stage with its standard streams sent to
    /// `output`.
    pub fn prepare(output: Output) -> Result<Starting, SandboxError> {
        preflight()?;
        let ids = IdMapping::for_this_process();
        let streams = output.streams(&ids)?;
        let run_dir = RunDir(private_run_dir()?);
        let control_path = run_dir.0.join("control");
        let control = ControlListener::bind(&control_path)?;
        let process = StageProcess::start(
            &control_path,
            [streams.stdin, streams.stdout, streams.stderr],
        )?;
        Ok(Starting {
            stage: Stage { process, run_dir },
            ids,
            control,
            master: streams.master,
            console: streams.console,
        })
    }

    /// Lets the command run: once its proxy serves (and its policy is
    /// loaded), never before.
    pub fn go(&self) -> Result<(), SandboxError> {
        self.control.send(&Message::Go)
    }

    /// A handle for signalling the sandbox while another thread waits.
    pub fn init(&self) -> Init {
        Init(self.init)
    }

    /// Waits for the command's exit code: as soon as PID 1 reports it
    /// (every other process of the sandbox is gone by then), while PID 1
    /// and the stage exit. The [`Teardown`] waits for the rest.
    pub fn wait(mut self) -> Result<(SandboxExit, Teardown), SandboxError> {
        // While the command runs, off the start's path: what runs killed
        // with SIGKILL left behind.
        remove_stale_run_dirs();
        cgroup::cleanup_stale();
        let (code, pid1_gone) = match self.control.recv(None) {
            Ok(Some(Message::Ended(code))) => (code, false),
            // PID 1 died before it could say (the stage reports it).
            Ok(Some(Message::Exited(code))) => (code, true),
            // It failed (it said why on standard error) or was killed.
            _ => (self.stage.process.wait()?.unsigned_abs(), true),
        };
        if let Some(terminal) = self.terminal.take() {
            terminal.finish();
        }
        let teardown = Teardown {
            stage: self.stage,
            control: self.control,
            pid1_gone,
        };
        Ok((i32::try_from(code).unwrap_or(1), teardown))
    }
}

/// A sandbox whose command has ended: PID 1 and the stage are exiting
/// (the kernel unmounts the sandbox's mount namespace as the stage exits).
/// Dropping it waits for both; [`Teardown::leave`] waits for neither.
pub struct Teardown {
    stage: Stage,
    control: Control,
    pid1_gone: bool,
}

impl Teardown {
    /// Waits until PID 1 has exited (the stage says so, or is gone): from
    /// then on no process of the sandbox is left in its cgroups.
    pub fn wait_for_pid1(&mut self) {
        while !self.pid1_gone {
            self.pid1_gone = !matches!(self.control.recv(None), Ok(Some(Message::Ended(_))));
        }
    }

    /// For a caller that exits now: the stage finishes on its own (its
    /// parent-death signal ends it at the latest), and the kernel goes on
    /// unmounting the sandbox's mount namespace after we are gone.
    pub fn leave(self) {
        std::mem::forget(self.stage);
    }
}

impl Starting {
    /// Hands the stage `spec` (in a sealed memfd, over the control socket):
    /// the sandbox builds up to its command while the caller goes on.
    /// `listen` is where the proxy's listener is bound inside.
    pub fn hand_over(mut self, spec: Spec, listen: SocketAddr) -> Result<HandedOver, SandboxError> {
        if !spec.base.is_dir() {
            return Err(SandboxError::BadBase(spec.base.clone()));
        }
        let scratch = self.stage.run_dir.0.join("scratch");
        std::fs::create_dir(&scratch)
            .map_err(SandboxError::io("create the scratch mount point"))?;
        let handoff = Handoff {
            spec,
            scratch,
            listen,
            ids: self.ids.clone(),
            console: self.console.take(),
        };
        let handoff = sealed_memfd(&handoff.to_bytes()?)?;
        let control = self.control.accept(&mut self.stage.process)?;
        control.send(&Message::Handoff(handoff))?;
        Ok(HandedOver {
            stage: self.stage,
            control,
            ids: self.ids,
            master: self.master,
        })
    }
}

/// A sandbox being built. Dropping it kills it.
pub struct HandedOver {
    stage: Stage,
    control: Control,
    ids: IdMapping,
    master: Option<(OwnedFd, Terminals)>,
}

impl HandedOver {
    /// Waits until PID 1 has built the sandbox. Returns it — its command
    /// waits for [`Sandbox::go`] — and the proxy's listener.
    pub fn built(mut self) -> Result<(Sandbox, TcpListener), SandboxError> {
        let (listener, init) = follow_start(&self.control, &mut self.stage.process, &self.ids)?;
        // PID 1 has left the host's filesystem: its scratch mount point and
        // the control socket's path are no longer needed. Removed now, not
        // at the end, where it would wait for the kernel to tear the
        // sandbox's mount namespace down (0.7 ms of every sandbox's end).
        self.stage.run_dir.remove();
        let terminal = match self.master.take() {
            Some((master, terminals)) => Some(Relay::start(master, terminals)?),
            None => None,
        };
        Ok((
            Sandbox {
                stage: self.stage,
                control: self.control,
                init,
                terminal,
            },
            listener,
        ))
    }
}

/// The stage's reports until PID 1 runs: the listener, id maps to write
/// (rootless with a subordinate range), PID 1's pid, or why it failed.
fn follow_start(
    control: &Control,
    stage: &mut StageProcess,
    ids: &IdMapping,
) -> Result<(TcpListener, Pid), SandboxError> {
    let mut listener = None;
    let (mut pid1, mut started) = (None, false);
    loop {
        if let (Some(pid), true) = (pid1, started) {
            let listener = listener.ok_or(SandboxError::Thread("sent no listener"))?;
            return Ok((listener, sys::pid(pid)));
        }
        match control.recv(Some(stage))? {
            Some(Message::Listener(fd)) => listener = Some(TcpListener::from(fd)),
            Some(Message::MapMe(pid)) => {
                let mapped = write_subordinate_maps(pid, ids);
                control.send(&Message::Mapped(mapped.is_ok()))?;
                mapped?;
            }
            // From the stage and from PID 1: either may come first.
            Some(Message::Pid1(pid)) => pid1 = Some(pid),
            Some(Message::Started) => started = true,
            Some(Message::Failed(why)) => return Err(SandboxError::StageFailed(why)),
            Some(
                Message::Mapped(_)
                | Message::Handoff(_)
                | Message::Ended(_)
                | Message::Exited(_)
                | Message::Go,
            )
            | None => {
                return Err(SandboxError::Stage(stage.wait()?));
            }
        }
    }
}

/// Rootless with subordinate ids: newuidmap and newgidmap (setuid root,
/// checking /etc/subuid and /etc/subgid) map root inside to the caller and
/// ids 1.. to the caller's range.
fn write_subordinate_maps(pid: u32, ids: &IdMapping) -> Result<(), SandboxError> {
    let IdMapping::Rootless {
        uid,
        gid,
        subordinate: Some((uids, gids)),
    } = ids
    else {
        return Err(SandboxError::Ids("no subordinate ids to map".into()));
    };
    for (tool, own, range) in [(ids::NEWUIDMAP, uid, uids), (ids::NEWGIDMAP, gid, gids)] {
        let output = Command::new(tool)
            .args([pid.to_string(), "0".into(), own.to_string(), "1".into()])
            .args(["1".into(), range.start.to_string(), range.count.to_string()])
            .stdin(Stdio::null())
            .output()
            .map_err(SandboxError::io(format!("run {tool}")))?;
        if !output.status.success() {
            return Err(SandboxError::Ids(format!(
                "{tool} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// Sends signals to the sandbox's PID 1, which passes them on to the command.
#[derive(Debug, Clone, Copy)]
pub struct Init(Pid);

impl Init {
    /// Sends `signal`, once init can receive it: PID 1 of a namespace only
    /// gets signals it has a handler for, even from outside, and installs
    /// its handlers first thing — so this waits (at most a second) for that.
    pub fn signal(self, signal: Signal) {
        for _ in 0..1000 {
            if self.catches(signal) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = kill(self.0, signal);
    }

    /// SIGKILL to PID 1, which takes the whole PID namespace with it: the
    /// end of a phase that overran its timeout.
    pub fn kill(self) {
        let _ = kill(self.0, Signal::SIGKILL);
    }

    /// Whether init has a handler for `signal` (the SigCgt mask in
    /// /proc/PID/status).
    fn catches(self, signal: Signal) -> bool {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0)).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & (1 << (signal as u32 - 1)) != 0)
    }
}

/// Removes a run directory if start-up fails half way.
struct RunDir(PathBuf);

impl RunDir {
    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes the run directories of tollgate processes that no longer exist
/// (a host side killed with SIGKILL cannot remove its own; the sandbox's
/// writes were on its namespace's tmpfs and are gone, this is the empty
/// scaffolding), made at least [`crate::STALE_AFTER`] ago: a tollgate in
/// another PID namespace looks dead from here while it starts; how many.
pub fn remove_stale_run_dirs() -> usize {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(RUN_DIR_PREFIX)) else {
            continue;
        };
        let owner = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok());
        let made_long_ago = entry
            .metadata()
            .and_then(|meta| meta.modified())
            .ok()
            .and_then(|made| made.elapsed().ok())
            .is_some_and(|age| age >= crate::STALE_AFTER);
        if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            && made_long_ago
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

const RUN_DIR_PREFIX: &str = "tollgate-run-";

/// A fresh 0700 directory for the scratch mount point and the control
/// socket, named for our pid (so that a later tollgate can tell it is
/// stale) and 64 random bits: in a temp dir every user may write, a name
/// another user can guess is one they can take first, and every sandbox
/// would fail to start. mkdir never follows or reuses what is there.
fn private_run_dir() -> Result<PathBuf, SandboxError> {
    let mut random = [0u8; 8];
    getrandom::getrandom(&mut random)
        .map_err(|e| SandboxError::io("pick a run directory name")(e.into()))?;
    let dir = std::env::temp_dir().join(format!(
        "{RUN_DIR_PREFIX}{}-{:016x}",
        std::process::id(),
        u64::from_le_bytes(random)
    ));
    DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(SandboxError::io(format!("create {}", dir.display())))?;
    Ok(dir)
}

/// `bytes` in a memfd sealed against any change: a file that lives only in
/// memory, closed on exec, that only the stage receives (over the control
/// socket).
fn sealed_memfd(bytes: &[u8]) -> Result<OwnedFd, SandboxError> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let memfd = memfd_create(
        c"tollgate-handoff",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(SandboxError::setup("create the handoff memfd"))?;
    let mut file = std::fs::File::from(memfd);
    std::io::Write::write_all(&mut file, bytes).map_err(SandboxError::io("write the handoff"))?;
    let memfd = OwnedFd::from(file);
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(&memfd, FcntlArg::F_ADD_SEALS(seals)).map_err(SandboxError::setup("seal the handoff"))?;
    Ok(memfd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_refusing_user_namespaces_is_told_which_sysctl_to_change() {
        let settings = |path: &str| match path {
            "/proc/sys/kernel/unprivileged_userns_clone" => Some("0\n".to_owned()),
            _ => Some("1\n".to_owned()),
        };
        let refused = user_namespaces_refused(settings).map(|e| e.to_string());
        let message = refused.unwrap_or_default();
        assert!(
            message.contains("kernel.unprivileged_userns_clone"),
            "{message}"
        );
        assert!(
            message.contains("sysctl -w kernel.unprivileged_userns_clone=1"),
            "{message}"
        );
        let allowed = |path: &str| match path {
            "/proc/sys/kernel/apparmor_restrict_unprivileged_userns" => Some("0".to_owned()),
            "/proc/sys/user/max_user_namespaces" => Some("63000".to_owned()),
            _ => None,
        };
        assert!(user_namespaces_refused(allowed).is_none());
    }
}
