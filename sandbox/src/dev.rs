//! A minimal /dev and a private /tmp.
//!
//! /dev is a tmpfs of its own, read-only once made: what is done with its
//! devices inside (reading, writing) is what they are for, but no node can
//! be added, removed, or have its mode, owner or times changed from inside,
//! even by a process that owned it. Its nodes are made there (as root),
//! else (rootless: no CAP_MKNOD; a device cgroup that refuses one) the
//! host's are bound in read-only.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{self, Mode, SFlag};

use crate::mounts::{bind_read_only, remount_read_only, safe_target, TargetKind};
use crate::rootfs::size_option;
use crate::SandboxError;

/// The character devices programs expect to open, with their major and
/// minor numbers (the kernel's Documentation/admin-guide/devices.txt).
const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];
/// Pseudo-terminals one sandbox may open. Every devpts instance but the
/// host's draws on one pool, `kernel.pty.max` minus `kernel.pty.reserve`
/// (4096 - 1024 by default): unbounded, one sandbox could take them all
/// from every other sandbox and container. A shell with a few dozen panes
/// is far below this.
const PTYS: u32 = 128;
/// /dev holds directories, links and mount points: a little is plenty.
const DEV_SIZE: u64 = 64 * 1024;

/// How the sandbox's own tmpfs mounts are made.
#[derive(Debug, Clone, Copy)]
pub struct Tmpfs {
    /// Bytes each may hold; None: the kernel's default, half of RAM.
    pub size: Option<u64>,
    /// The host uid and gid of the sandbox's root, as root (so that /tmp is
    /// root's inside); None rootless (the mounter is root inside already).
    pub owner: Option<(u32, u32)>,
}

impl Tmpfs {
    fn options(&self, mode: &str) -> String {
        let mut options = size_option(&format!("mode={mode}"), self.size);
        if let Some((uid, gid)) = self.owner {
            options.push_str(&format!(",uid={uid},gid={gid}"));
        }
        options
    }
}

/// A minimal /dev: a few character devices, a private devpts, /dev/shm,
/// and when the command has a terminal of its own, /dev/console (where
/// `tty` and ttyname(3) find it; `console` is its path in the host's
/// /dev/pts, as this mount namespace's copy shows it). Host disks and
/// everything else in the host's /dev stay invisible.
pub fn mount_dev(root: &Path, tmpfs: Tmpfs, console: Option<&Path>) -> Result<(), SandboxError> {
    let dev = safe_target(root, Path::new("/dev"), TargetKind::Dir)?;
    let options = Tmpfs {
        size: Some(DEV_SIZE),
        ..tmpfs
    }
    .options("0755");
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
    .map_err(SandboxError::setup("mount /dev tmpfs"))?;
    // mknod's mode is cut by the umask: none while the nodes are made.
    let umask = stat::umask(Mode::empty());
    let made = DEVICES
        .iter()
        .try_for_each(|&(name, major, minor)| make_device(&dev, name, major, minor));
    stat::umask(umask);
    made?;
    if let Some(console) = console {
        bind_node(console, &dev.join("console"), "console")?;
    }
    let pts = dev.join("pts");
    fs::create_dir(&pts).map_err(SandboxError::io("create /dev/pts"))?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(format!("newinstance,ptmxmode=0666,mode=0620,max={PTYS}").as_str()),
    )
    .map_err(SandboxError::setup("mount /dev/pts"))?;
    let shm = dev.join("shm");
    fs::create_dir(&shm).map_err(SandboxError::io("create /dev/shm"))?;
    let options = tmpfs.options("1777");
    mount(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
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
    remount_read_only(&dev, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC)
        .map_err(SandboxError::setup("remount /dev read-only"))
}

/// /dev/`name` in `dev`: a node of its own (mode 0666, as on the host),
/// or where none may be made, the host's bound in read-only.
fn make_device(dev: &Path, name: &str, major: u64, minor: u64) -> Result<(), SandboxError> {
    let target = dev.join(name);
    let everyone = Mode::from_bits_truncate(0o666);
    match stat::mknod(
        &target,
        SFlag::S_IFCHR,
        everyone,
        stat::makedev(major, minor),
    ) {
        Ok(()) => Ok(()),
        Err(Errno::EPERM) => bind_node(&Path::new("/dev").join(name), &target, name),
        Err(e) => Err(SandboxError::setup(format!("make /dev/{name}"))(e)),
    }
}

/// Binds the host's node `source` read-only at `target`, a file made for
/// it.
fn bind_node(source: &Path, target: &Path, name: &str) -> Result<(), SandboxError> {
    fs::write(target, b"").map_err(SandboxError::io(format!("create /dev/{name}")))?;
    bind_read_only(source, target, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC)
        .map_err(SandboxError::setup(format!("bind /dev/{name} read-only")))
}

/// A private /tmp.
pub fn mount_tmp(root: &Path, tmpfs: Tmpfs) -> Result<(), SandboxError> {
    let tmp = safe_target(root, Path::new("/tmp"), TargetKind::Dir)?;
    let options = tmpfs.options("1777");
    mount(
        Some("tmpfs"),
        &tmp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(SandboxError::setup("mount /tmp"))
}
