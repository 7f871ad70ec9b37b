//! Mount helpers every part of the root filesystem uses: targets created
//! without following symlinks, bind mounts of host paths, read-only
//! remounts, and masks that hide directories of the base.

use std::fs;
use std::os::fd::BorrowedFd;
use std::path::{Component, Path, PathBuf};

use nix::libc;
use nix::mount::{mount, MsFlags};

use crate::spec::Bind;
use crate::{sys, SandboxError};

/// The `None` of an absent mount(2) argument, typed.
pub(crate) fn none() -> Option<&'static str> {
    None
}

/// What a mount target should be when it has to be created.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetKind {
    Dir,
    File,
}

/// `path` under `root`, created if missing, without following a symlink
/// anywhere on the way: before the pivot, a symlink in the base that points
/// at `/etc/x` means the host's /etc/x, and a mount or a write through it
/// would land on the host.
pub(crate) fn safe_target(
    root: &Path,
    path: &Path,
    kind: TargetKind,
) -> Result<PathBuf, SandboxError> {
    let relative: Vec<_> = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect();
    let mut current = root.to_path_buf();
    for (i, part) in relative.iter().enumerate() {
        current.push(part);
        let last = i + 1 == relative.len();
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(SandboxError::SymlinkTarget(path.to_owned()))
            }
            Ok(_) => {}
            Err(_) if last && kind == TargetKind::File => fs::write(&current, b"")
                .map_err(SandboxError::io(format!("create {}", path.display())))?,
            Err(_) => fs::create_dir(&current)
                .map_err(SandboxError::io(format!("create {}", path.display())))?,
        }
    }
    Ok(current)
}

/// Host directories bound in, read-only when asked; nosuid and nodev
/// either way.
///
/// A bind the operator asked for is not idmapped: the sandbox reaches what
/// is in it with the rights of its unprivileged host uid, as any local user
/// without groups would (host root's files are nobody's inside). Idmapped,
/// a read-only bind would still give root inside host root's rights over
/// what is not a file: a root-only unix socket (Docker's is host root) can
/// be connected to and a FIFO written, read-only mount or not. What the
/// sandbox writes in a writable bind is owned by its host uid, never by
/// host root. tollgate's own binds (a run's mirror) are idmapped, so that
/// git, which refuses a repository whose owner is not the reader, reads
/// them as root's.
pub fn mount_binds(
    root: &Path,
    binds: &[Bind],
    userns: Option<BorrowedFd<'_>>,
) -> Result<(), SandboxError> {
    for bind in binds {
        let kind = if bind.host.is_dir() {
            TargetKind::Dir
        } else {
            TargetKind::File
        };
        let target = safe_target(root, &bind.sandbox, kind)?;
        let step = format!("bind {} to {}", bind.host.display(), bind.sandbox.display());
        let tree = match userns.filter(|_| bind.tollgates_own) {
            // A file system that cannot be idmapped is bound as it is.
            Some(userns) => sys::idmapped_clone(&bind.host, userns)
                .or_else(|_| sys::clone_tree(&bind.host, true)),
            None => sys::clone_tree(&bind.host, true),
        }
        .map_err(SandboxError::setup(step.clone()))?;
        lock_down(&tree, bind.read_only).map_err(SandboxError::setup(step.clone()))?;
        sys::attach(&tree, &target).map_err(SandboxError::setup(step.clone()))?;
        // Checked when the bind was asked for, and again on what was bound:
        // a path that another user could swap in between (a symlink to
        // /proc) must not bring the host's kernel interfaces in.
        if let Some((point, fstype)) = crate::mountinfo::kernel_interface_within(&target) {
            return Err(SandboxError::BadBind(
                step,
                format!(
                    "{} is the host kernel's {fstype} file system, which no sandbox may see",
                    point.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Makes every mount of a detached tree nosuid and nodev, and read-only
/// when asked: what is mounted below a bound directory (a tmpfs, a home
/// directory of its own) is bound with it, and a flag set on the top only
/// would leave those writable and their device nodes usable.
pub(crate) fn lock_down(tree: &std::os::fd::OwnedFd, read_only: bool) -> nix::Result<()> {
    let mut attr = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    if read_only {
        attr |= libc::MOUNT_ATTR_RDONLY;
    }
    sys::restrict_tree(tree, attr)
}

/// Hides what exists at each of `paths`: a directory under an empty,
/// read-only tmpfs; any other file under an empty, read-only file (`empty`,
/// made by the caller on the scratch tmpfs). What is hidden is gone from
/// view, not merely unreadable: a process with every permission over it
/// still finds nothing there.
pub fn mask(root: &Path, paths: &[PathBuf], empty: &Path) -> Result<(), SandboxError> {
    for path in paths {
        let under_root = root.join(path.strip_prefix("/").unwrap_or(path));
        let Ok(meta) = fs::symlink_metadata(&under_root) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let step = format!("hide {}", path.display());
        if meta.is_dir() {
            let target = safe_target(root, path, TargetKind::Dir)?;
            mount(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=0000,size=4k"),
            )
            .map_err(SandboxError::setup(step))?;
        } else {
            let target = safe_target(root, path, TargetKind::File)?;
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            bind_read_only(empty, &target, flags).map_err(SandboxError::setup(step))?;
        }
    }
    Ok(())
}

/// Where each of `hidden` (real host paths, hidden at their own path in
/// the base) shows up inside: at its own path, and under every bind whose
/// host directory holds it, at the bind's path inside; and a bind of
/// something inside a hidden directory is hidden whole (unless it is one
/// of tollgate's own). A state dir under a bound home directory stays
/// hidden however it is reached.
pub fn hidden_paths(hidden: &[PathBuf], binds: &[Bind]) -> Vec<PathBuf> {
    let mut paths = hidden.to_vec();
    for path in hidden {
        for bind in binds {
            if let Ok(rest) = path.strip_prefix(&bind.host) {
                paths.push(if rest.as_os_str().is_empty() {
                    bind.sandbox.clone()
                } else {
                    bind.sandbox.join(rest)
                });
            } else if bind.host.starts_with(path) && !bind.tollgates_own {
                paths.push(bind.sandbox.clone());
            }
        }
    }
    paths
}

/// Other places under `root` where the mounts of the sandbox show one of
/// `hidden` (real host paths): a second mount of the same file system
/// whose root holds it (the host's own alias mount of a home directory,
/// bound in or carried below a bound directory). Found by device and path
/// within the file system, confirmed by device and inode; as paths inside.
pub fn aliases(root: &Path, hidden: &[PathBuf]) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mounts = crate::mountinfo::mounts();
    let mut found = Vec::new();
    for path in hidden {
        let Ok(meta) = fs::metadata(path) else {
            continue;
        };
        // The host's mount that holds it: the longest mount point above it
        // outside the sandbox's root.
        let Some(holder) = mounts
            .iter()
            .filter(|m| !m.mountpoint.starts_with(root) && path.starts_with(&m.mountpoint))
            .max_by_key(|m| m.mountpoint.as_os_str().len())
        else {
            continue;
        };
        let Ok(below) = path.strip_prefix(&holder.mountpoint) else {
            continue;
        };
        let within = holder.root.join(below);
        for mount in mounts
            .iter()
            .filter(|m| m.device == holder.device && m.mountpoint.starts_with(root))
        {
            let Ok(rest) = within.strip_prefix(&mount.root) else {
                continue;
            };
            let shown = mount.mountpoint.join(rest);
            let same =
                fs::metadata(&shown).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
            if let (true, Ok(inside)) = (same, shown.strip_prefix(root)) {
                found.push(Path::new("/").join(inside));
            }
        }
    }
    found
}

/// Binds `path` onto itself and remounts the bind read-only (and nosuid,
/// nodev, noexec).
pub(crate) fn read_only_bind(path: &Path) -> nix::Result<()> {
    mount(
        Some(path),
        path,
        none(),
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none(),
    )?;
    remount_read_only(
        path,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
}

/// Binds `source` on `target`, read-only with `extra` flags: a device node
/// bound so cannot have its mode, owner or times changed, even by one that
/// owns it, and stays usable (no `nodev` unless asked).
pub(crate) fn bind_read_only(source: &Path, target: &Path, extra: MsFlags) -> nix::Result<()> {
    mount(Some(source), target, none(), MsFlags::MS_BIND, none())?;
    remount_read_only(target, extra)
}

/// Remounts the bind mount at `target` read-only with `extra` flags (see
/// [`remount`]).
pub(crate) fn remount_read_only(target: &Path, extra: MsFlags) -> nix::Result<()> {
    remount(target, MsFlags::MS_RDONLY | extra)
}

/// Remounts the bind mount at `target` with `flags`, keeping the flags it
/// already has: a bind of a mount from a more privileged namespace
/// (rootless) has them locked, and a remount that would drop one is
/// refused.
pub(crate) fn remount(target: &Path, flags: MsFlags) -> nix::Result<()> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let current = statvfs(target)?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags;
    for (has, keep) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if current.contains(has) {
            flags |= keep;
        }
    }
    mount(none(), target, none(), flags, none())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn what_is_hidden_is_hidden_under_every_bind_that_holds_it() {
        let bind = |host: &str, sandbox: &str| Bind {
            host: host.into(),
            sandbox: sandbox.into(),
            read_only: true,
            tollgates_own: false,
        };
        let hidden = [PathBuf::from("/var/lib/tollgate"), PathBuf::from("/srv/ca")];
        let binds = [
            bind("/var", "/hostvar"),
            bind("/var/lib/tollgate/cache", "/c"),
            bind("/srv/ca", "/ca"),
            bind("/srv/cache", "/x"),
            bind("/", "/host"),
            Bind {
                tollgates_own: true,
                ..bind(
                    "/var/lib/tollgate/runs/1/mirror",
                    "/run/tollgate/origin.git",
                )
            },
        ];
        let paths: Vec<String> = hidden_paths(&hidden, &binds)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "/var/lib/tollgate",
                "/srv/ca",
                "/hostvar/lib/tollgate",
                "/c",
                "/host/var/lib/tollgate",
                "/ca",
                "/host/srv/ca",
            ]
        );
    }

    #[test]
    fn targets_are_created_under_the_root_and_never_through_symlinks() {
        let root = std::env::temp_dir().join(format!("tollgate-target-{}", std::process::id()));
        let outside = root.with_extension("outside");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        symlink(&outside, root.join("etc/linked")).unwrap();
        let made = safe_target(&root, Path::new("/../data/x"), TargetKind::File).unwrap();
        assert_eq!(made, root.join("data/x"));
        assert!(made.is_file());
        for path in ["/etc/linked", "/etc/linked/file"] {
            assert!(matches!(
                safe_target(&root, Path::new(path), TargetKind::File),
                Err(SandboxError::SymlinkTarget(_))
            ));
        }
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "wrote through the symlink"
        );
        fs::remove_dir_all(&root).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }
}
