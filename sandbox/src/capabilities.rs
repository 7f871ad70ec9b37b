//! Privileges the sandboxed command (and PID 1, once the sandbox is built)
//! never gets back.
//!
//! The command runs as root of its own user namespace (an unprivileged
//! host uid, ids.rs) with every capability gone even there: not in the
//! effective, permitted, inheritable or ambient sets, and not in the
//! bounding set, so no exec — of a setuid binary or anything else — can
//! regain one. `no_new_privs` closes the setuid path independently. Without
//! CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_NET_RAW there is no mount,
//! unshare/setns, interface, route or raw socket.

use caps::CapSet;

use crate::SandboxError;

/// Sets `no_new_privs` and clears every capability set of this process.
pub fn drop_all() -> Result<(), SandboxError> {
    nix::sys::prctl::set_no_new_privs().map_err(SandboxError::setup("set no_new_privs"))?;
    // The bounding set must go first: dropping from it needs CAP_SETPCAP,
    // which clearing the effective set would remove.
    for set in [
        CapSet::Bounding,
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| SandboxError::Capabilities(format!("{set:?}: {e}")))?;
    }
    Ok(())
}
