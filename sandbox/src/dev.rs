//! A minimal /dev and a private /tmp.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use nix::mount::{mount, MsFlags};

use crate::mounts::{none, safe_target, TargetKind};
use crate::SandboxError;

/// Device nodes bound in from the host: what programs expect to open.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// A minimal /dev: a few character devices, a private devpts, /dev/shm.
/// Host disks and everything else in the host's /dev stay invisible.
pub fn mount_dev(root: &Path) -> Result<(), SandboxError> {
    let dev = safe_target(root, Path::new("/dev"), TargetKind::Dir)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    )
    .map_err(SandboxError::setup("mount /dev tmpfs"))?;
    for name in DEVICES {
        let target = dev.join(name);
        fs::write(&target, b"").map_err(SandboxError::io(format!("create /dev/{name}")))?;
        mount(
            Some(&Path::new("/dev").join(name)),
            &target,
            none(),
            MsFlags::MS_BIND,
            none(),
        )
        .map_err(SandboxError::setup(format!("bind /dev/{name}")))?;
    }
    let pts = dev.join("pts");
    fs::create_dir(&pts).map_err(SandboxError::io("create /dev/pts"))?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(SandboxError::setup("mount /dev/pts"))?;
    let shm = dev.join("shm");
    fs::create_dir(&shm).map_err(SandboxError::io("create /dev/shm"))?;
    mount(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(SandboxError::setup("mount /dev/shm"))?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(link)).map_err(SandboxError::io(format!("link /dev/{link}")))?;
    }
    Ok(())
}

/// A private /tmp.
pub fn mount_tmp(root: &Path) -> Result<(), SandboxError> {
    let tmp = safe_target(root, Path::new("/tmp"), TargetKind::Dir)?;
    mount(
        Some("tmpfs"),
        &tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
    .map_err(SandboxError::setup("mount /tmp"))
}
