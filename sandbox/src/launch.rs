//! The host side of a sandbox: preflight checks, a private run directory
//! holding the handoff for PID 1, the thread that creates the namespaces
//! ([`crate::namespaces`]), and handles to wait for and signal PID 1.

use std::fs::DirBuilder;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::namespaces::in_new_namespaces;
use crate::spec::{Handoff, Spec};
use crate::SandboxError;

/// How the sandboxed command ended, in the shell's convention.
pub type SandboxExit = i32;

/// A running sandbox. Dropping it removes its run directory.
pub struct Sandbox {
    init: Pid,
    waiter: Option<JoinHandle<Result<SandboxExit, SandboxError>>>,
    run_dir: PathBuf,
    /// Kept open until the sandbox ends: PID 1 reads it through
    /// `/proc/<our pid>/fd/<fd>` when it starts.
    _handoff: OwnedFd,
}

/// Refuses early, with one line, what would fail halfway.
pub fn preflight() -> Result<(), SandboxError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(SandboxError::NotRoot);
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems")
        .map_err(SandboxError::io("read /proc/filesystems"))?;
    if !filesystems
        .lines()
        .any(|l| l.trim_end().ends_with("\toverlay"))
    {
        return Err(SandboxError::NoOverlay);
    }
    Ok(())
}

/// Where the sandbox's standard streams go.
#[derive(Debug)]
pub enum Output {
    /// The caller's own stdin, stdout and stderr (and terminal).
    Inherit,
    /// stdout and stderr to this descriptor (a pipe the host reads), stdin
    /// from /dev/null: for phases whose output the host logs.
    Pipe(OwnedFd),
}

impl Output {
    pub(crate) fn configure(self, command: &mut Command) -> Result<(), SandboxError> {
        if let Output::Pipe(fd) = self {
            let second = fd
                .try_clone()
                .map_err(SandboxError::io("duplicate the output pipe"))?;
            command
                .stdin(Stdio::null())
                .stdout(Stdio::from(fd))
                .stderr(Stdio::from(second));
        }
        Ok(())
    }
}

impl Sandbox {
    /// Starts `spec` with its standard streams sent to `output`. Returns the
    /// sandbox and the proxy's listener, bound to `listen` inside the
    /// sandbox's network namespace.
    pub fn start(
        spec: Spec,
        listen: SocketAddr,
        output: Output,
    ) -> Result<(Sandbox, TcpListener), SandboxError> {
        preflight()?;
        if !spec.base.is_dir() {
            return Err(SandboxError::BadBase(spec.base.clone()));
        }
        let run_dir = private_run_dir()?;
        let guard = RunDir(run_dir.clone());
        let scratch = run_dir.join("scratch");
        std::fs::create_dir(&scratch)
            .map_err(SandboxError::io("create the scratch mount point"))?;
        let handoff = sealed_memfd(&Handoff { spec, scratch }.to_bytes()?)?;
        let handoff_fd = handoff.as_raw_fd();

        let (ready_tx, ready_rx) = mpsc::channel();
        let waiter = std::thread::Builder::new()
            .name("tollgate-sandbox".into())
            .spawn(move || in_new_namespaces(handoff_fd, listen, output, ready_tx))
            .map_err(SandboxError::io("start the sandbox thread"))?;
        let (listener, init) = match ready_rx.recv() {
            Ok(ready) => ready,
            Err(_) => {
                return Err(match waiter.join() {
                    Ok(Err(e)) => e,
                    Ok(Ok(_)) => SandboxError::Thread("ended before the sandbox started"),
                    Err(_) => SandboxError::Thread("panicked"),
                })
            }
        };
        std::mem::forget(guard);
        Ok((
            Sandbox {
                init,
                waiter: Some(waiter),
                run_dir,
                _handoff: handoff,
            },
            listener,
        ))
    }

    /// A handle for signalling the sandbox while another thread waits.
    pub fn init(&self) -> Init {
        Init(self.init)
    }

    /// Waits for the command's exit code.
    pub fn wait(mut self) -> Result<SandboxExit, SandboxError> {
        match self.waiter.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            _ => Err(SandboxError::Thread("panicked")),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
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

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run directories of tollgate processes that no longer exist: a host side
/// killed with SIGKILL cannot remove its own (the sandbox's writes were on
/// its namespace's tmpfs and are gone; this is the empty scaffolding).
fn remove_stale_run_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(RUN_DIR_PREFIX)) else {
            continue;
        };
        let owner = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

const RUN_DIR_PREFIX: &str = "tollgate-run-";

/// A fresh 0700 directory for the spec, injected files and the scratch
/// mount point.
fn private_run_dir() -> Result<PathBuf, SandboxError> {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    remove_stale_run_dirs();
    let dir = std::env::temp_dir().join(format!(
        "{RUN_DIR_PREFIX}{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(SandboxError::io(format!("create {}", dir.display())))?;
    Ok(dir)
}

/// `bytes` in a memfd sealed against any change: a file that lives only in
/// memory, closed on exec, so nothing but PID 1 (through /proc) reads it.
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
