//! tollgate's sandbox: run one command in new mount, PID, network, IPC and
//! UTS namespaces, on an overlay of a base directory, with no capabilities,
//! and with the proxy's listening socket as the only thing reachable on the
//! network.
//!
//! Three processes, so that nothing here needs `unsafe` or a fork of the
//! multi-threaded proxy:
//! - the host side ([`launch`]) creates the network namespace in a thread of
//!   its own, binds the proxy's listener inside it, and spawns stage 1 from
//!   that thread so it inherits the namespace;
//! - stage 1 ([`stage1`]) unshares the other namespaces and spawns stage 2;
//! - stage 2 ([`stage2`]) is PID 1 of the sandbox: it builds the root
//!   filesystem, drops every privilege, runs the command, reaps orphans and
//!   forwards signals.
#![forbid(unsafe_code)]

pub mod capabilities;
mod error;
pub mod launch;
pub mod reaper;
pub mod rootfs;
pub mod spec;
pub mod stage1;
pub mod stage2;

pub use error::SandboxError;
pub use launch::{Sandbox, SandboxExit};
pub use spec::{Bind, InjectedFile, NewFile, Spec};
