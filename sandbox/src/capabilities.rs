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
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

use crate::ids::IdMapping;
use crate::SandboxError;

/// Sets `no_new_privs` and clears every capability set of this process.
pub fn drop_all() -> Result<(), SandboxError> {
    // The bounding set must go first: dropping from it needs CAP_SETPCAP,
    // which clearing the effective set would remove.
    clear_bounding()?;
    drop_the_rest()
}

/// Empties the bounding set with one call per capability where
/// `caps::clear` makes two: each is dropped, and only where that is refused
/// read to make sure it is not there. A capability this kernel does not
/// know cannot be in the set.
fn clear_bounding() -> Result<(), SandboxError> {
    for cap in caps::all() {
        if caps::drop(None, CapSet::Bounding, cap).is_err()
            && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
        {
            return Err(SandboxError::Capabilities(format!(
                "cannot drop {cap} from the bounding set"
            )));
        }
    }
    Ok(())
}

/// Sets `no_new_privs` and clears every capability set but the bounding
/// one.
fn drop_the_rest() -> Result<(), SandboxError> {
    nix::sys::prctl::set_no_new_privs().map_err(SandboxError::setup("set no_new_privs"))?;
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| SandboxError::Capabilities(format!("{set:?}: {e}")))?;
    }
    Ok(())
}

/// What PID 1 and the stage become once the sandbox is built: as root, the
/// host ids of the sandbox's root, no supplementary group, no capability
/// in any set, the bounding set included; rootless, no capability; either
/// way no_new_privs, not dumpable, and SIGKILL when the parent goes (a uid
/// change clears that setting). Both may still signal (and reap) what runs
/// in the sandbox: its processes have those host ids. Being that uid is
/// also what lets the stage's death reach PID 1: the kernel sends the
/// parent-death signal with the dying parent's credentials.
pub fn become_sandbox_root_on_host(ids: &IdMapping) -> Result<(), SandboxError> {
    let dumpable =
        || nix::sys::prctl::set_dumpable(false).map_err(SandboxError::setup("clear dumpable"));
    dumpable()?;
    // The bounding set while we still hold CAP_SETPCAP.
    clear_bounding()?;
    if let IdMapping::Mapped { .. } = ids {
        let (uid, gid) = (
            Uid::from_raw(ids.host_root_uid()),
            Gid::from_raw(ids.host_root_gid()),
        );
        setgroups(&[]).map_err(SandboxError::setup("drop the host's groups"))?;
        setresgid(gid, gid, gid).map_err(SandboxError::setup("become the sandbox's gid"))?;
        // All uids nonzero: every other capability is gone with them.
        setresuid(uid, uid, uid).map_err(SandboxError::setup("become the sandbox's uid"))?;
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
            .map_err(SandboxError::setup("set parent-death signal"))?;
        dumpable()?;
    }
    drop_the_rest()
}
