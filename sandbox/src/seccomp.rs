//! A seccomp filter for what capabilities do not cover. Each rule is one
//! Docker's default profile also has:
//! - no new user namespaces: one needs no capability to create, and inside
//!   it a process holds every capability over it — a large piece of kernel
//!   opened to untrusted code. `unshare` and `clone` with CLONE_NEWUSER fail
//!   with EPERM; `clone3`, whose flags sit in a struct seccomp cannot read,
//!   fails with ENOSYS so that libc falls back to `clone`;
//! - no TIOCSTI/TIOCLINUX: the command shares the caller's terminal, and
//!   TIOCSTI pushes characters into its input — the host shell would run
//!   them after the sandbox exits;
//! - no kernel keyring (`add_key`, `keyctl`, `request_key`): the command is
//!   host uid 0, so it would share root's user keyring with the host;
//! - no AF_VSOCK sockets: vsock is not confined by the network namespace,
//!   and on a VM it reaches the hypervisor without the proxy.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::SandboxError;

/// Installs the filter on this process and everything it starts. Needs
/// `no_new_privs` (set by [`crate::capabilities::drop_all`]).
pub fn install_filter() -> Result<(), SandboxError> {
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
    let argument_is = |index: u8, len: SeccompCmpArgLen, value: u64| {
        SeccompCondition::new(index, len, SeccompCmpOp::Eq, value)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(failed)
    };
    // ioctl's request is an unsigned int: compare 32 bits, or a caller
    // setting high bits would slip past a 64-bit comparison.
    let ioctl_request = |request: u64| argument_is(1, SeccompCmpArgLen::Dword, request);
    let mut refused = BTreeMap::new();
    refused.insert(nix::libc::SYS_unshare, with_new_user()?);
    refused.insert(nix::libc::SYS_clone, with_new_user()?);
    refused.insert(
        nix::libc::SYS_ioctl,
        vec![
            ioctl_request(nix::libc::TIOCSTI)?,
            ioctl_request(nix::libc::TIOCLINUX)?,
        ],
    );
    let vsock = u64::try_from(nix::libc::AF_VSOCK).map_err(failed)?;
    refused.insert(
        nix::libc::SYS_socket,
        vec![argument_is(0, SeccompCmpArgLen::Dword, vsock)?],
    );
    for keyring in [
        nix::libc::SYS_add_key,
        nix::libc::SYS_keyctl,
        nix::libc::SYS_request_key,
    ] {
        refused.insert(keyring, Vec::new());
    }
    install(refused, SeccompAction::Errno(errno(nix::libc::EPERM)), arch)?;
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
