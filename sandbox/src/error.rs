use std::path::PathBuf;

use thiserror::Error;

/// Why a sandbox could not be set up; each says what to do.
#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("this host refuses unprivileged user namespaces ({sysctl}), which tollgate needs when not run as root: run it as root, or allow them with `sysctl -w {fix}`")]
    UserNamespacesRefused { sysctl: String, fix: &'static str },
    #[error("user ids: {0}")]
    Ids(String),
    #[error("{0}")]
    Stdio(String),
    #[error("the sandbox could not be set up: {0}")]
    StageFailed(String),
    #[error("the sandbox could not be set up (its stage exited with {0}; the reason is above)")]
    Stage(i32),
    #[error("this kernel has no overlayfs: load it with `modprobe overlay`")]
    NoOverlay,
    #[error("cannot create {what} namespace: {source} (is this a container without CAP_SYS_ADMIN, or are user/namespace limits set to 0?)")]
    Namespace {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("{step}: {source}")]
    Setup {
        step: String,
        #[source]
        source: nix::Error,
    },
    #[error("{step}: {source}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--base {0}: not a directory")]
    BadBase(PathBuf),
    #[error("path {0} contains a character overlayfs options cannot carry (`,`, `:` or `\\`): use another path")]
    UnsafePath(PathBuf),
    #[error("bind {0}: {1}")]
    BadBind(String, String),
    #[error("the sandbox's spec did not arrive whole: {0}")]
    Spec(String),
    #[error("cannot drop capabilities: {0}")]
    Capabilities(String),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("the sandbox thread {0}")]
    Thread(&'static str),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("{0} is a symlink in the base (or under one): bind or mount somewhere that is not")]
    SymlinkTarget(PathBuf),
}

impl SandboxError {
    /// The sandbox's stage or PID 1 failed to build it (and said why):
    /// `exec` exits 125 then, as `env` and `chroot` report a failure of
    /// their own apart from the command's statuses.
    pub fn is_setup_failure(&self) -> bool {
        matches!(self, SandboxError::StageFailed(_) | SandboxError::Stage(_))
    }

    pub(crate) fn setup(step: impl Into<String>) -> impl FnOnce(nix::Error) -> SandboxError {
        let step = step.into();
        move |source| SandboxError::Setup { step, source }
    }

    pub(crate) fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
        let step = step.into();
        move |source| SandboxError::Io { step, source }
    }
}
