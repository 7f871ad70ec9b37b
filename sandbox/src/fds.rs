//! Descriptors the command must not inherit.
//!
//! Whatever `tollgate exec` was started with (a shell's `exec 7<dir`, a
//! launcher's stray pipes) would otherwise reach the command, and a
//! descriptor of a host directory leads out of the overlay. std's `Command`
//! passes on every descriptor not marked close-on-exec.
#![allow(unsafe_code)]

use crate::SandboxError;

/// Marks every descriptor above stderr close-on-exec.
pub fn close_on_exec_above_stderr() -> Result<(), SandboxError> {
    // SAFETY: close_range(2) takes plain integers and touches no memory of
    // ours; CLOSE_RANGE_CLOEXEC only sets a flag, so no descriptor this
    // process still uses is closed. Needs Linux 5.11 (2021).
    let result = unsafe {
        nix::libc::close_range(
            3,
            nix::libc::c_uint::MAX,
            nix::libc::CLOSE_RANGE_CLOEXEC as i32,
        )
    };
    nix::errno::Errno::result(result)
        .map(drop)
        .map_err(SandboxError::setup(
            "mark inherited descriptors close-on-exec",
        ))
}
