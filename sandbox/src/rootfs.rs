//! The sandbox's root filesystem: an overlay of the base (and any layers
//! above it) under a writable layer, built on a scratch tmpfs that lives
//! only in the sandbox's mount namespace; the files laid over it;
//! pivot_root into it.
//!
//! As root, the base, every layer and the writable layer go in as idmapped
//! mounts: their files keep the owners they have on disk as the sandbox's
//! user namespace sees them (root's files are root's inside, though root
//! inside is an unprivileged host uid), and what the sandbox writes is
//! stored with those inside owners, so a snapshot made by one run serves
//! the next. overlayfs does its copy-ups and whiteouts with the mounter's
//! credentials, so each overlay is mounted with the file-system ids of the
//! sandbox's root (see [`Mounter::overlay`]). Rootless, the layers are
//! mounted as they are, and overlayfs keeps its metadata in `user.*`
//! extended attributes, the only ones a user namespace may write.

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use caps::CapSet;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{setfsgid, setfsuid, Gid, Uid};

use crate::mounts::none;
use crate::spec::NewFile;
use crate::{sys, SandboxError};

/// Every overlay is nodev and nosuid. The base is idmapped as root: a
/// root-only device node anywhere in it (a chroot's /dev, a container's
/// rootfs, a disk node someone made by hand) would be the sandbox root's
/// own, and a write to a block device is a write to the host's disk. The
/// devices the sandbox may use are the read-only binds in its /dev.
/// (setuid means nothing under no_new_privs; nosuid says so twice.)
const NO_DEVICES_OR_SETUID: MsFlags = MsFlags::MS_NODEV.union(MsFlags::MS_NOSUID);

/// Where the layers live inside the scratch tmpfs.
pub struct Layers {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub root: PathBuf,
    /// An empty file no one may read, bound over masked files.
    pub empty_file: PathBuf,
}

/// How this sandbox mounts layers and overlays.
pub struct Mounter {
    pub scratch: PathBuf,
    /// As root: the sandbox's user namespace, and the host ids its root
    /// has. Rootless: none.
    pub idmap: Option<Idmap>,
    /// Bytes the writable layer's tmpfs may hold.
    pub tmpfs_size: Option<u64>,
}

pub struct Idmap {
    pub userns: OwnedFd,
    pub root_uid: u32,
    pub root_gid: u32,
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

impl Mounter {
    /// A tmpfs on the scratch directory, holding the layers' mount points,
    /// the overlay's mount point and the empty file masks use: it exists
    /// only in this mount namespace, so nothing on it outlives the sandbox,
    /// however the sandbox ends.
    pub fn mount_scratch(&self) -> Result<(), SandboxError> {
        mount(
            Some("tmpfs"),
            &self.scratch,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0700"),
        )
        .map_err(SandboxError::setup(format!(
            "mount scratch tmpfs on {}",
            self.scratch.display()
        )))?;
        let empty = self.scratch.join("empty-file");
        fs::write(&empty, b"")
            .and_then(|()| fs::set_permissions(&empty, fs::Permissions::from_mode(0o000)))
            .map_err(SandboxError::io("create the empty file for masks"))
    }

    /// A /proc of this PID namespace on the scratch tmpfs, for PID 1's own
    /// use before the sandbox's /proc exists.
    pub fn own_proc(&self) -> Result<PathBuf, SandboxError> {
        let target = self.scratch.join("proc");
        fs::create_dir(&target).map_err(SandboxError::io("create a mount point for /proc"))?;
        crate::proc::mount_proc_at(&target).map_err(SandboxError::setup("mount PID 1's /proc"))?;
        Ok(target)
    }

    /// `path` as a layer of this sandbox: idmapped as root, as it is
    /// rootless. `name` names its mount point on the scratch tmpfs.
    pub fn layer(&self, path: &Path, name: &str) -> Result<PathBuf, SandboxError> {
        overlay_safe(path)?;
        let Some(idmap) = &self.idmap else {
            return Ok(path.to_path_buf());
        };
        let target = self.scratch.join(name);
        fs::create_dir(&target)
            .map_err(SandboxError::io(format!("create {}", target.display())))?;
        let step = || format!("mount {} idmapped", path.display());
        let tree = sys::idmapped_clone(path, idmap.userns.as_fd()).map_err(|e| {
            SandboxError::setup(format!(
                "{} (needs Linux 5.19 and a file system that supports idmapped mounts)",
                step()
            ))(e)
        })?;
        sys::attach(&tree, &target).map_err(SandboxError::setup(step()))?;
        Ok(target)
    }

    /// The directory holding the writable layer's `upper/` and `work/`:
    /// `writable` on the host when the layer must outlive the sandbox, else
    /// a tmpfs of this mount namespace.
    pub fn writable(&self, writable: Option<&Path>) -> Result<Layers, SandboxError> {
        let dir = match writable {
            Some(dir) => self.layer(dir, "rw")?,
            None => {
                let tmpfs = self.scratch.join("rw-tmpfs");
                fs::create_dir(&tmpfs).map_err(SandboxError::io("create the writable layer"))?;
                let options = size_option("mode=0755", self.tmpfs_size);
                mount(
                    Some("tmpfs"),
                    &tmpfs,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(options.as_str()),
                )
                .map_err(SandboxError::setup("mount the writable layer's tmpfs"))?;
                for sub in ["upper", "work"] {
                    fs::create_dir(tmpfs.join(sub)).map_err(SandboxError::io(format!(
                        "create the writable layer's {sub}"
                    )))?;
                }
                self.layer(&tmpfs, "rw")?
            }
        };
        let layers = Layers {
            upper: dir.join("upper"),
            work: dir.join("work"),
            root: self.scratch.join("root"),
            empty_file: self.scratch.join("empty-file"),
        };
        for dir in [&layers.upper, &layers.work, &layers.root] {
            if !dir.is_dir() {
                fs::create_dir(dir)
                    .map_err(SandboxError::io(format!("create {}", dir.display())))?;
            }
        }
        Ok(layers)
    }

    /// The base as a layer other layers can sit on. overlayfs refuses a
    /// lower layer that lies inside another lower layer (ELOOP,
    /// "overlapping lowerdir path"), and every layer under tollgate's state
    /// dir lies inside a base of `/`. A read-only overlay of the base (with
    /// an empty second layer on the scratch tmpfs: an overlay needs two
    /// lower layers when it has no upper) is a filesystem of its own, so
    /// the layers are no longer inside it.
    pub fn stackable(&self, base: &Path) -> Result<PathBuf, SandboxError> {
        self.stackable_named(base, "base")
    }

    /// [`Mounter::stackable`], its view mounted at `name` on the scratch
    /// tmpfs.
    pub fn stackable_named(&self, base: &Path, name: &str) -> Result<PathBuf, SandboxError> {
        let empty = self.empty_dir()?;
        let view = self.scratch.join(name);
        fs::create_dir(&view).map_err(SandboxError::io(format!("create {}", view.display())))?;
        overlay_safe(base)?;
        let options = format!("lowerdir={}:{}", base.display(), empty.display());
        self.overlay(&view, &options, MsFlags::MS_RDONLY | NO_DEVICES_OR_SETUID)
            .map_err(SandboxError::setup(format!(
                "mount a read-only view of {}",
                base.display()
            )))?;
        Ok(view)
    }

    /// An empty directory on the scratch tmpfs, for a lower layer that has
    /// nothing in it.
    pub fn empty_dir(&self) -> Result<PathBuf, SandboxError> {
        let empty = self.scratch.join("empty");
        if !empty.is_dir() {
            fs::create_dir(&empty).map_err(SandboxError::io("create an empty layer"))?;
        }
        Ok(empty)
    }

    /// The overlay root: `read_only` (topmost first) over `base`, all
    /// read-only below; writes land in the upper layer.
    pub fn root(
        &self,
        base: &Path,
        read_only: &[PathBuf],
        layers: &Layers,
    ) -> Result<(), SandboxError> {
        let lower: Vec<PathBuf> = read_only
            .iter()
            .cloned()
            .chain([base.to_path_buf()])
            .collect();
        self.overlay_at(&layers.root, &lower, &layers.upper, &layers.work)
    }

    /// An overlay of `lower` (topmost first) under `upper` at `target`.
    pub fn overlay_at(
        &self,
        target: &Path,
        lower: &[PathBuf],
        upper: &Path,
        work: &Path,
    ) -> Result<(), SandboxError> {
        for path in lower.iter().map(PathBuf::as_path).chain([upper, work]) {
            overlay_safe(path)?;
        }
        let lower: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            upper.display(),
            work.display()
        );
        self.overlay(target, &options, NO_DEVICES_OR_SETUID)
            .map_err(SandboxError::setup(format!(
                "mount overlay of {}",
                lower.last().map_or("", String::as_str)
            )))
    }

    /// Mounts an overlay with `options`. overlayfs records the mounter's
    /// credentials and does every copy-up and whiteout with them: as root,
    /// with the file-system ids of the sandbox's root (which the idmapped
    /// upper layer stores as 0) and every capability kept effective (a
    /// file-system id other than 0 clears them from the effective set; they
    /// stay permitted), so what overlayfs writes is owned as the sandbox's
    /// writes are. Rootless, with `userxattr`.
    fn overlay(&self, target: &Path, options: &str, flags: MsFlags) -> nix::Result<()> {
        if self.idmap.is_none() {
            let options = format!("{options},userxattr");
            return mount(
                Some("overlay"),
                target,
                Some("overlay"),
                flags,
                Some(options.as_str()),
            );
        }
        self.as_sandbox_root(|| {
            mount(
                Some("overlay"),
                target,
                Some("overlay"),
                flags,
                Some(options),
            )
        })
        .unwrap_or(Err(nix::errno::Errno::EPERM))
    }

    /// Runs `f` with the file-system ids of the sandbox's root (as root;
    /// as it is rootless), every permitted capability effective: what it
    /// creates in the sandbox's layers is owned by root inside.
    pub fn as_sandbox_root<T>(&self, f: impl FnOnce() -> T) -> Result<T, SandboxError> {
        let Some(idmap) = &self.idmap else {
            return Ok(f());
        };
        let old_uid = setfsuid(Uid::from_raw(idmap.root_uid));
        let old_gid = setfsgid(Gid::from_raw(idmap.root_gid));
        let raised = caps::read(None, CapSet::Permitted)
            .and_then(|permitted| caps::set(None, CapSet::Effective, &permitted));
        let result = raised.map(|()| f());
        setfsuid(old_uid);
        setfsgid(old_gid);
        result.map_err(|e| SandboxError::Capabilities(e.to_string()))
    }
}

/// tmpfs options with a size, when one is given.
pub fn size_option(options: &str, size: Option<u64>) -> String {
    match size {
        Some(bytes) => format!("{options},size={bytes}"),
        None => options.to_owned(),
    }
}

/// overlayfs splits its options on `,` and `:` and unescapes `\`.
fn overlay_safe(path: &Path) -> Result<(), SandboxError> {
    let text = path.to_string_lossy();
    if text.contains([',', ':', '\\']) {
        return Err(SandboxError::UnsafePath(path.to_owned()));
    }
    Ok(())
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

/// Lays files over paths inside (after the pivot, so a symlink at the path
/// is replaced rather than followed to wherever it points). A file that
/// cannot be replaced (rootless, one in a directory of host root's, which
/// is nobody's inside) is covered by a bind of its `staged` copy, when
/// there is one.
pub fn write_files(files: &[NewFile], staged: &[OwnedFd]) -> Result<(), SandboxError> {
    for (i, file) in files.iter().enumerate() {
        match replace_file(file) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && i < staged.len() => {
                sys::attach(&staged[i], &file.sandbox).map_err(SandboxError::setup(format!(
                    "lay {} over the base's",
                    file.sandbox.display()
                )))?
            }
            done => done.map_err(SandboxError::io(format!(
                "replace {}",
                file.sandbox.display()
            )))?,
        }
    }
    Ok(())
}

fn replace_file(file: &NewFile) -> std::io::Result<()> {
    let path = &file.sandbox;
    if fs::symlink_metadata(path).is_ok() {
        fs::remove_file(path)?;
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(path, &file.bytes)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
}

impl Mounter {
    /// Rootless: each of `files` written to the scratch tmpfs and taken as
    /// a detached mount, to be bound over a file of the base that
    /// [`write_files`] cannot replace. (As root the sandbox's root may
    /// replace any file of the base: nothing to stage.)
    pub fn stage_files(&self, files: &[NewFile]) -> Result<Vec<OwnedFd>, SandboxError> {
        if self.idmap.is_some() {
            return Ok(Vec::new());
        }
        let mut staged = Vec::with_capacity(files.len());
        for (i, file) in files.iter().enumerate() {
            let copy = self.scratch.join(format!("file-{i}"));
            fs::write(&copy, &file.bytes)
                .and_then(|()| fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)))
                .map_err(SandboxError::io(format!(
                    "stage {}",
                    file.sandbox.display()
                )))?;
            staged.push(
                sys::clone_tree(&copy, false).map_err(SandboxError::setup(format!(
                    "stage {}",
                    file.sandbox.display()
                )))?,
            );
        }
        Ok(staged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_cannot_be_smuggled_in_paths() {
        assert!(overlay_safe(Path::new("/srv/base")).is_ok());
        for bad in ["/a,upperdir=/x", "/a:b", "/a\\b"] {
            assert!(overlay_safe(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
