//! The sandbox's root filesystem: an overlay of the base on a scratch tmpfs
//! that lives only in the sandbox's mount namespace, then /proc, a minimal
//! /dev, /tmp and bind mounts, then pivot_root into it.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::spec::{Bind, InjectedFile};
use crate::SandboxError;

/// Device nodes bound in from the host: what programs expect to open.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Where the layers live inside the scratch tmpfs.
pub struct Layers {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub root: PathBuf,
}

fn none() -> Option<&'static str> {
    None
}

/// Stops mounts made here from propagating to the host (and back).
pub fn make_mounts_private() -> Result<(), SandboxError> {
    mount(
        none(),
        "/",
        none(),
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        none(),
    )
    .map_err(SandboxError::setup("make mount propagation private"))
}

/// A tmpfs on `scratch` holding the overlay's mount point and, unless the
/// writable layer lives in `writable` on the host, its upper and work
/// directories: the tmpfs exists only in this mount namespace, so nothing
/// on it outlives the sandbox, however the sandbox ends.
pub fn mount_scratch(scratch: &Path, writable: Option<&Path>) -> Result<Layers, SandboxError> {
    mount(
        Some("tmpfs"),
        scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0700"),
    )
    .map_err(SandboxError::setup(format!(
        "mount scratch tmpfs on {}",
        scratch.display()
    )))?;
    let layer_dir = writable.unwrap_or(scratch);
    let layers = Layers {
        upper: layer_dir.join("upper"),
        work: layer_dir.join("work"),
        root: scratch.join("root"),
    };
    for dir in [&layers.upper, &layers.work, &layers.root] {
        if !dir.is_dir() {
            fs::create_dir(dir).map_err(SandboxError::io(format!("create {}", dir.display())))?;
        }
    }
    Ok(layers)
}

/// The base as a layer other layers can sit on. overlayfs refuses a lower
/// layer that lies inside another lower layer (ELOOP, "overlapping lowerdir
/// path"), and every layer under tollgate's state dir lies inside a base of
/// `/`. A read-only overlay of the base (with an empty second layer on the
/// scratch tmpfs: an overlay needs two lower layers when it has no upper)
/// is a filesystem of its own, so the layers are no longer inside it.
pub fn stackable_base(base: &Path, scratch: &Path) -> Result<PathBuf, SandboxError> {
    let empty = scratch.join("empty");
    let view = scratch.join("base");
    for dir in [&empty, &view] {
        fs::create_dir(dir).map_err(SandboxError::io(format!("create {}", dir.display())))?;
    }
    overlay_safe(base)?;
    let options = format!("lowerdir={}:{}", base.display(), empty.display());
    mount(
        Some("overlay"),
        &view,
        Some("overlay"),
        MsFlags::MS_RDONLY,
        Some(options.as_str()),
    )
    .map_err(SandboxError::setup(format!(
        "mount a read-only view of {}",
        base.display()
    )))?;
    Ok(view)
}

/// The overlay root: `read_only` (topmost first) over `base`, all read-only
/// below; writes land in the upper layer.
pub fn mount_overlay(
    base: &Path,
    read_only: &[PathBuf],
    layers: &Layers,
) -> Result<(), SandboxError> {
    let lower: Vec<&Path> = read_only
        .iter()
        .map(PathBuf::as_path)
        .chain([base])
        .collect();
    for path in lower.iter().copied().chain([&*layers.upper, &*layers.work]) {
        overlay_safe(path)?;
    }
    let lower: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        layers.upper.display(),
        layers.work.display()
    );
    mount(
        Some("overlay"),
        &layers.root,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(SandboxError::setup(format!(
        "mount overlay of {}",
        base.display()
    )))
}

/// overlayfs splits its options on `,` and `:` and unescapes `\`.
fn overlay_safe(path: &Path) -> Result<(), SandboxError> {
    let text = path.to_string_lossy();
    if text.contains([',', ':', '\\']) {
        return Err(SandboxError::UnsafePath(path.to_owned()));
    }
    Ok(())
}

/// What a mount target should be when it has to be created.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Dir,
    File,
}

/// `path` under `root`, created if missing, without following a symlink
/// anywhere on the way: before the pivot, a symlink in the base that points
/// at `/etc/x` means the host's /etc/x, and a mount or a write through it
/// would land on the host.
pub fn safe_target(root: &Path, path: &Path, kind: TargetKind) -> Result<PathBuf, SandboxError> {
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

/// Host directories bound in, read-only when asked.
pub fn mount_binds(root: &Path, binds: &[Bind]) -> Result<(), SandboxError> {
    for bind in binds {
        let kind = if bind.host.is_dir() {
            TargetKind::Dir
        } else {
            TargetKind::File
        };
        let target = safe_target(root, &bind.sandbox, kind)?;
        let step = format!("bind {} to {}", bind.host.display(), bind.sandbox.display());
        mount(
            Some(&bind.host),
            &target,
            none(),
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none(),
        )
        .map_err(SandboxError::setup(step.clone()))?;
        if bind.read_only {
            let flags = MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV;
            mount(none(), &target, none(), flags, none())
                .map_err(SandboxError::setup(format!("{step} read-only")))?;
        }
    }
    Ok(())
}

/// Hides each existing directory of `paths` under an empty, read-only tmpfs.
pub fn mask(root: &Path, paths: &[PathBuf]) -> Result<(), SandboxError> {
    for path in paths {
        let under_root = root.join(path.strip_prefix("/").unwrap_or(path));
        if !fs::symlink_metadata(&under_root).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let target = safe_target(root, path, TargetKind::Dir)?;
        mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0000,size=4k"),
        )
        .map_err(SandboxError::setup(format!("hide {}", path.display())))?;
    }
    Ok(())
}

/// Parts of /proc that act on the whole host, not the sandbox's namespaces:
/// made read-only (the list Docker and runc use). The sandbox's root has no
/// capabilities but still owns them, and kernel.core_pattern or
/// sysrq-trigger written from inside would act on the host.
const PROC_READ_ONLY: [&str; 5] = ["sys", "sysrq-trigger", "irq", "bus", "fs"];
/// Files of /proc that leak host memory or keys: hidden behind /dev/null.
const PROC_HIDDEN: [&str; 5] = [
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
];

/// A fresh /proc for the sandbox's PID namespace: it shows only the
/// sandbox's processes, and nothing in it can change the host.
pub fn mount_proc(root: &Path) -> Result<(), SandboxError> {
    let target = safe_target(root, Path::new("/proc"), TargetKind::Dir)?;
    mount(
        Some("proc"),
        &target,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none(),
    )
    .map_err(SandboxError::setup("mount /proc"))?;
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
            mount(Some("/dev/null"), &path, none(), MsFlags::MS_BIND, none())
                .map_err(SandboxError::setup(format!("hide /proc/{name}")))?;
        }
    }
    Ok(())
}

/// Binds `path` onto itself and remounts the bind read-only.
fn read_only_bind(path: &Path) -> nix::Result<()> {
    mount(
        Some(path),
        path,
        none(),
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none(),
    )?;
    let flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    mount(none(), path, none(), flags, none())
}

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

/// Makes `root` the root directory and detaches the old one, so no path
/// leads back to the host's filesystem (the pivot_root(".", ".") idiom of
/// runc and youki).
pub fn pivot_into(root: &Path) -> Result<(), SandboxError> {
    nix::unistd::chdir(root).map_err(SandboxError::setup("chdir to the new root"))?;
    nix::unistd::pivot_root(".", ".").map_err(SandboxError::setup("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(SandboxError::setup("detach the old root"))?;
    nix::unistd::chdir("/").map_err(SandboxError::setup("chdir to /"))
}

/// Contents of the files to inject, read while the host is still visible.
pub fn read_injected(files: &[InjectedFile]) -> Result<Vec<(PathBuf, Vec<u8>)>, SandboxError> {
    files
        .iter()
        .map(|f| {
            fs::read(&f.host)
                .map(|bytes| (f.sandbox.clone(), bytes))
                .map_err(SandboxError::io(format!("read {}", f.host.display())))
        })
        .collect()
}

/// Lays files over paths inside (after the pivot, so a symlink at the path
/// is replaced rather than followed to wherever it points).
pub fn write_injected(files: &[(PathBuf, Vec<u8>)]) -> Result<(), SandboxError> {
    for (path, bytes) in files {
        if fs::symlink_metadata(path).is_ok() {
            fs::remove_file(path)
                .map_err(SandboxError::io(format!("replace {}", path.display())))?;
        }
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(SandboxError::io(format!("create {}", parent.display())))?;
        }
        fs::write(path, bytes).map_err(SandboxError::io(format!("write {}", path.display())))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o644))
            .map_err(SandboxError::io(format!("chmod {}", path.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn overlay_options_cannot_be_smuggled_in_paths() {
        assert!(overlay_safe(Path::new("/srv/base")).is_ok());
        for bad in ["/a,upperdir=/x", "/a:b", "/a\\b"] {
            assert!(overlay_safe(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
