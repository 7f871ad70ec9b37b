//! tollgate's sandbox: run one command in new mount, PID, network, IPC and
//! UTS namespaces, on an overlay of a base directory, with no capabilities,
//! and with the proxy's listening socket as the only thing reachable on the
//! network.
//!
//! Nothing here needs `unsafe` or a fork of the multi-threaded proxy:
//! - the host side ([`launch`]) creates the namespaces in a thread of its
//!   own (unshare applies to the calling thread): the network namespace
//!   first, where it brings up `lo` and binds the proxy's listener, then
//!   mount, PID, IPC and UTS; it spawns [`init`] from that thread, which
//!   inherits them all;
//! - [`init`] is PID 1 of the sandbox: it builds the root filesystem, drops
//!   every privilege, runs the command, reaps orphans and forwards signals.
// One audited exception, close_range(2) in fds.rs; everything else is safe.
#![deny(unsafe_code)]

mod capabilities;
pub mod cgroup;
mod dev;
mod error;
mod fds;
pub mod init;
mod launch;
mod mounts;
mod namespaces;
mod proc;
mod reaper;
mod rootfs;
mod seccomp;
mod spec;

pub use error::SandboxError;
pub use launch::{preflight, Init, Output, Sandbox, SandboxExit};
pub use reaper::interrupts_come_from_a_terminal;
pub use spec::{Bind, NewFile, Spec};
