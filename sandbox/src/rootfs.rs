//! The sandbox's root filesystem: an overlay of the base (and any layers
//! above it) on a scratch tmpfs that lives only in the sandbox's mount
//! namespace; the files laid over it; pivot_root into it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::mounts::none;
use crate::spec::NewFile;
use crate::SandboxError;

/// Where the layers live inside the scratch tmpfs.
pub struct Layers {
    pub upper: PathBuf,
    pub work: PathBuf,
    pub root: PathBuf,
    /// An empty file no one may read, bound over masked files.
    pub empty_file: PathBuf,
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
        empty_file: scratch.join("empty-file"),
    };
    for dir in [&layers.upper, &layers.work, &layers.root] {
        if !dir.is_dir() {
            fs::create_dir(dir).map_err(SandboxError::io(format!("create {}", dir.display())))?;
        }
    }
    fs::write(&layers.empty_file, b"")
        .and_then(|()| fs::set_permissions(&layers.empty_file, fs::Permissions::from_mode(0o000)))
        .map_err(SandboxError::io("create the empty file for masks"))?;
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
/// is replaced rather than followed to wherever it points).
pub fn write_files(files: &[NewFile]) -> Result<(), SandboxError> {
    for NewFile {
        sandbox: path,
        bytes,
    } in files
    {
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
    fn overlay_options_cannot_be_smuggled_in_paths() {
        assert!(overlay_safe(Path::new("/srv/base")).is_ok());
        for bad in ["/a,upperdir=/x", "/a:b", "/a\\b"] {
            assert!(overlay_safe(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
