//! The end-to-end test harness: the real `tollgate` binary as a child with
//! a time limit, real git repos, real curl, loopback upstreams and canaries
//! that count what reaches them, and network namespace labs. Nothing here
//! sends a packet off this machine.
//!
//! One module per kind of fixture; a test crate takes them all with
//! `use common::*;`.
//!
//! - [`process`]: child processes with a time limit, host tools, git,
//!   polling, unique names, scratch dirs.
//! - [`host`]: what the host shows: mounts, processes, cgroups, run
//!   directories, files, addresses.
//! - [`repo`]: the git repo a `tollgate run` works on.
//! - [`run`]: `tollgate run` and its environment files.
//! - [`exec`]: `tollgate exec`.
//! - [`proxy`]: `tollgate proxy` as a process, and curl through it.
//! - [`upstream`], [`canary`], [`tls`]: loopback servers.
//! - [`lab`], [`lab_servers`], [`lab_proxy`]: network namespace labs.
//! - [`user`]: an unprivileged user, for rootless runs.
// Each test crate (tests/*.rs) uses a part of the harness; the rest is
// dead code to it.
#![allow(dead_code)]

pub mod canary;
pub mod exec;
pub mod host;
pub mod lab;
pub mod lab_proxy;
pub mod lab_servers;
pub mod process;
pub mod proxy;
pub mod repo;
pub mod run;
pub mod tls;
pub mod upstream;
pub mod user;

// Unused re-exports are as expected as dead code here.
#[allow(unused_imports)]
pub use {
    canary::*, exec::*, host::*, lab::*, lab_proxy::*, lab_servers::*, process::*, proxy::*,
    repo::*, run::*, tls::*, upstream::*, user::*,
};

/// The `tollgate` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Skips (loudly) a test that needs root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::common::is_root() {
            eprintln!("SKIP: this test needs root (namespaces); run the suite as root");
            return;
        }
    };
}
