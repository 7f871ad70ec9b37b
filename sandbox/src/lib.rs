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

pub mod autosetup;
pub mod cache;
pub mod capabilities;
pub mod cgroup;
pub mod checkout;
pub mod diff;
pub mod environment;
mod error;
mod fds;
pub mod init;
pub mod launch;
pub mod layers;
pub mod reaper;
pub mod rootfs;
pub mod seccomp;
pub mod secrets;
pub mod spec;

pub use error::SandboxError;
pub use launch::{Output, Sandbox, SandboxExit};
pub use spec::{Bind, InjectedFile, NewFile, Spec};
