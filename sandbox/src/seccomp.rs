//! A seccomp filter with one job: no new user namespaces inside.
//!
//! A user namespace needs no capability to create, and inside one a process
//! holds every capability over it — not a way out of the sandbox (its
//! network namespace would be empty), but a large piece of kernel opened to
//! untrusted code. As Docker's default profile does, `unshare` and `clone`
//! with CLONE_NEWUSER fail with EPERM, and `clone3`, whose flags sit in a
//! struct seccomp cannot read, fails with ENOSYS so that libc falls back to
//! `clone`, where the flag is visible.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::SandboxError;

/// Installs the filter on this process and everything it starts. Needs
/// `no_new_privs` (set by [`crate::capabilities::drop_all`]).
pub fn deny_user_namespaces() -> Result<(), SandboxError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(failed)?;
    let new_user = u64::try_from(nix::libc::CLONE_NEWUSER).map_err(failed)?;
    let with_new_user = || -> Result<Vec<SeccompRule>, SandboxError> {
        let flag = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(new_user),
            new_user,
        )
        .map_err(failed)?;
        Ok(vec![SeccompRule::new(vec![flag]).map_err(failed)?])
    };
    let mut flagged = BTreeMap::new();
    flagged.insert(nix::libc::SYS_unshare, with_new_user()?);
    flagged.insert(nix::libc::SYS_clone, with_new_user()?);
    install(flagged, SeccompAction::Errno(errno(nix::libc::EPERM)), arch)?;
    let mut clone3 = BTreeMap::new();
    clone3.insert(nix::libc::SYS_clone3, Vec::new());
    install(clone3, SeccompAction::Errno(errno(nix::libc::ENOSYS)), arch)
}

fn install(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    on_match: SeccompAction,
    arch: TargetArch,
) -> Result<(), SandboxError> {
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, on_match, arch).map_err(failed)?;
    let program = BpfProgram::try_from(filter).map_err(failed)?;
    seccompiler::apply_filter(&program).map_err(failed)
}

fn errno(code: i32) -> u32 {
    u32::try_from(code).unwrap_or(1)
}

fn failed(error: impl std::fmt::Display) -> SandboxError {
    SandboxError::Seccomp(error.to_string())
}
