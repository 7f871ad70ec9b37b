//! /proc for the sandbox's PID namespace: it shows only the sandbox's
//! processes, and nothing in it can change the host.

use std::path::Path;

use nix::mount::{mount, MsFlags};

use crate::mounts::{bind_read_only, none, read_only_bind, safe_target, TargetKind};
use crate::SandboxError;

/// Parts of /proc that act on the whole host, not the sandbox's namespaces:
/// made read-only (the list Docker and runc use). The sandbox's root has no
/// capabilities but still owns them, and kernel.core_pattern or
/// sysrq-trigger written from inside would act on the host.
const PROC_READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];
/// Files of /proc that leak host memory or keys: hidden behind a read-only
/// bind of /dev/null.
const PROC_HIDDEN: [&str; 5] = [
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
];

/// A proc file system of this PID namespace at `target`: nosuid, nodev,
/// noexec.
pub fn mount_proc_at(target: &Path) -> nix::Result<()> {
    mount(
        Some("proc"),
        target,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none(),
    )
}

/// A fresh /proc for the sandbox's PID namespace: it shows only the
/// sandbox's processes, and nothing in it can change the host.
pub fn mount_proc(root: &Path) -> Result<(), SandboxError> {
    let target = safe_target(root, Path::new("/proc"), TargetKind::Dir)?;
    mount_proc_at(&target).map_err(SandboxError::setup("mount /proc"))?;
    for name in PROC_READ_ONLY {
        let path = target.join(name);
        if path.exists() {
            read_only_bind(&path)
                .map_err(SandboxError::setup(format!("make /proc/{name} read-only")))?;
        }
    }
    for name in PROC_HIDDEN {
        let path = target.join(name);
        if path.is_file() {
            bind_read_only(
                Path::new("/dev/null"),
                &path,
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            )
            .map_err(SandboxError::setup(format!("hide /proc/{name}")))?;
        }
    }
    Ok(())
}
