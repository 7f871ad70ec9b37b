//! The host side of a sandbox: preflight checks, a private run directory,
//! the network namespace with the proxy's listener in it, and stage 1.

use std::fs::DirBuilder;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::init::INIT_ARG;
use crate::spec::{InjectedFile, NewFile, Spec};
use crate::SandboxError;

/// iproute2, by absolute path: searching PATH cost a dozen failed execs.
const IP: &str = "/usr/sbin/ip";

/// How the sandboxed command ended, in the shell's convention.
pub type SandboxExit = i32;

/// A running sandbox. Dropping it removes its run directory.
pub struct Sandbox {
    init: Pid,
    waiter: Option<JoinHandle<Result<SandboxExit, SandboxError>>>,
    run_dir: PathBuf,
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
    fn configure(self, command: &mut Command) -> Result<(), SandboxError> {
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
    /// Starts `spec` (its `scratch` is filled in here) with `files` laid over
    /// their paths inside. Returns the sandbox and the proxy's listener,
    /// bound to `listen` inside the sandbox's network namespace.
    pub fn start(
        spec: Spec,
        files: Vec<NewFile>,
        listen: SocketAddr,
    ) -> Result<(Sandbox, TcpListener), SandboxError> {
        Sandbox::start_with(spec, files, listen, Output::Inherit)
    }

    /// [`Sandbox::start`] with the standard streams sent to `output`.
    pub fn start_with(
        mut spec: Spec,
        files: Vec<NewFile>,
        listen: SocketAddr,
        output: Output,
    ) -> Result<(Sandbox, TcpListener), SandboxError> {
        preflight()?;
        if !spec.base.is_dir() {
            return Err(SandboxError::BadBase(spec.base.clone()));
        }
        let run_dir = private_run_dir()?;
        let guard = RunDir(run_dir.clone());
        spec.scratch = run_dir.join("scratch");
        std::fs::create_dir(&spec.scratch)
            .map_err(SandboxError::io("create the scratch mount point"))?;
        for (i, NewFile { sandbox, bytes }) in files.into_iter().enumerate() {
            let host = run_dir.join(format!("file-{i}"));
            std::fs::write(&host, bytes)
                .map_err(SandboxError::io(format!("write {}", host.display())))?;
            spec.files.push(InjectedFile { sandbox, host });
        }
        let spec_path = run_dir.join("spec.json");
        spec.write(&spec_path)?;

        let (ready_tx, ready_rx) = mpsc::channel();
        let waiter = std::thread::Builder::new()
            .name("tollgate-sandbox".into())
            .spawn(move || in_new_namespaces(&spec_path, listen, output, ready_tx))
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

/// Runs on its own thread, because namespaces entered with unshare belong
/// to the calling thread: create the network namespace, bring `lo` up and
/// bind the proxy's listener there; then the mount, PID, IPC and UTS
/// namespaces (after `ip` ran, which would otherwise become PID 1); start
/// PID 1, which inherits them all, and stay — its parent-death signal is
/// tied to this thread — until it exits.
fn in_new_namespaces(
    spec_path: &Path,
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
    command.arg(INIT_ARG).arg(spec_path);
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
