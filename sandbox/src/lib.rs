//! tollgate's sandbox runtime: one command in new user, mount, PID,
//! network, IPC, UTS and cgroup namespaces, on an overlay of a base
//! directory, with no capability, a seccomp allowlist, and the proxy's
//! listening socket as the only thing reachable on the network.
//!
//! Three processes build it, each doing what only it can:
//! - the host side ([`Sandbox::prepare`], launch.rs) starts the stage,
//!   hands it the spec in a sealed memfd once it is ready, and serves the
//!   control socket;
//! - the stage (stage.rs), a fork of a single-threaded caller or a fresh
//!   exec of this binary (stage_process.rs), creates the
//!   network namespace (meanwhile: binding the proxy's listener in it and
//!   handing it back once the spec came), the mount, PID, IPC, UTS and
//!   cgroup namespaces — after a user namespace of its own when rootless —
//!   and forks PID 1;
//! - PID 1 (init.rs) builds the root filesystem, starts the command in a
//!   user namespace mapped to an unprivileged host range (command.rs),
//!   drops every privilege of its own and supervises.
//!
//! Kernel concepts are modules: ids (user namespaces), rootfs and mounts
//! (overlay, idmapped layers, binds, masks), proc, dev, cgroup,
//! capabilities, seccomp, netlink (lo), pty (the sandbox's terminal).
// The few system calls without a safe wrapper are in sys.rs, audited.
#![deny(unsafe_code)]

mod capabilities;
pub mod cgroup;
mod command;
mod control;
mod dev;
mod error;
pub mod ids;
mod init;
mod launch;
mod mountinfo;
mod mounts;
mod netlink;
mod proc;
mod pty;
mod reaper;
mod rootfs;
mod seccomp;
mod spec;
mod split_root;
mod stage;
mod stage_process;
mod stdio;
mod sys;

pub use error::SandboxError;
pub use launch::{
    preflight, remove_stale_run_dirs, HandedOver, Init, Output, Sandbox, SandboxExit, Starting,
    Teardown,
};
pub use reaper::interrupts_come_from_a_terminal;
pub use spec::{Bind, NewFile, Spec, DEFAULT_TMPFS_SIZE};
pub use stage::enter_if_requested;

/// How old a run directory or cgroup of a tollgate that looks gone must be
/// before a sweep removes it. Start-up makes and uses both within
/// milliseconds; a tollgate in another PID namespace looks gone from ours
/// while it starts, and a minute leaves it ample time.
pub(crate) const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
