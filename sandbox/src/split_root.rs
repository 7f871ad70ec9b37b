//! A root assembled directory by directory, for rootless sandboxes whose
//! base has other file systems mounted inside it (the host's `/`).
//!
//! overlayfs clones each lower layer's mount, and in a user namespace the
//! kernel refuses to clone a mount that has mounts below it which the
//! namespace may not unmount (they would be revealed): an overlay of `/`
//! cannot be made rootless. Each top-level directory of the base can: the
//! root is a small tmpfs, and each directory on the base's file system is
//! an overlay of its own (the layers' same directory over the base's), its
//! writes in the writable layer's same directory — the layout one overlay
//! of the whole base would have written. What is mounted at a top-level
//! directory (another file system: /proc, /sys, a separate /home) is left
//! out, as one overlay of the base would leave it out; a directory with
//! file systems mounted further below is bound read-only as it is.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::mounts::{bind_read_only, lock_down};
use crate::rootfs::{size_option, Layers, Mounter};
use crate::{mountinfo, sys, SandboxError};

/// Whether the base has other file systems mounted below it, which a
/// rootless overlay of it cannot carry.
pub fn has_mounts_below(base: &Path) -> bool {
    mountinfo::mount_points()
        .iter()
        .any(|point| point != base && point.starts_with(base))
}

/// Mounts the root of `base` with `read_only` layers (topmost first) and
/// the writable `layers` at `layers.root`, one overlay per top-level
/// directory.
pub fn mount_root(
    mounter: &Mounter,
    base: &Path,
    read_only: &[PathBuf],
    layers: &Layers,
) -> Result<(), SandboxError> {
    let options = size_option("mode=0755", mounter.tmpfs_size);
    mount(
        Some("tmpfs"),
        &layers.root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(SandboxError::setup("mount the root's tmpfs"))?;
    let points = mountinfo::mount_points();
    for name in top_level_names(base, read_only, &layers.upper) {
        let source = base.join(&name);
        let target = layers.root.join(&name);
        let step = || format!("put {} in the sandbox's root", source.display());
        let Some((found, meta)) = topmost(base, read_only, layers, &name) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let link = fs::read_link(&found).map_err(SandboxError::io(step()))?;
            symlink(link, &target).map_err(SandboxError::io(step()))?;
        } else if meta.is_file() {
            fs::write(&target, b"").map_err(SandboxError::io(step()))?;
            bind_read_only(&found, &target, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)
                .map_err(SandboxError::setup(step()))?;
        } else if !meta.is_dir() {
            // A whiteout, or a node no root needs at its top level.
        } else if points.contains(&source) {
            // Another file system mounted here: not part of the base.
            fs::create_dir(&target).map_err(SandboxError::io(step()))?;
        } else if points.iter().any(|p| p.starts_with(&source)) {
            // Bound as it is, read-only, nosuid and nodev down to the last
            // mount below it (a home directory mounted on its own must not
            // be the host's, writable).
            fs::create_dir(&target).map_err(SandboxError::io(step()))?;
            let tree = sys::clone_tree(&source, true).map_err(SandboxError::setup(step()))?;
            lock_down(&tree, true).map_err(SandboxError::setup(step()))?;
            sys::attach(&tree, &target).map_err(SandboxError::setup(step()))?;
        } else {
            // On the base's file system (or only in the layers): an overlay.
            directory_overlay(mounter, base, read_only, layers, &name)?;
        }
    }
    Ok(())
}

/// The entry `name` of the topmost layer that has one (the writable
/// layer's, then the read-only layers', then the base's): what one overlay
/// of the whole base would show there. A top-level file a layer replaced
/// a directory with is that file, and it is read-only.
fn topmost(
    base: &Path,
    read_only: &[PathBuf],
    layers: &Layers,
    name: &OsString,
) -> Option<(PathBuf, fs::Metadata)> {
    [&layers.upper]
        .into_iter()
        .chain(read_only.iter())
        .map(|layer| layer.join(name))
        .chain([base.join(name)])
        .find_map(|path| {
            let meta = fs::symlink_metadata(&path).ok()?;
            Some((path, meta))
        })
}

/// Every top-level name of the base and of the layers.
fn top_level_names(base: &Path, read_only: &[PathBuf], upper: &Path) -> BTreeSet<OsString> {
    let mut names = BTreeSet::new();
    for dir in [base, upper]
        .into_iter()
        .chain(read_only.iter().map(PathBuf::as_path))
    {
        if let Ok(entries) = fs::read_dir(dir) {
            names.extend(entries.flatten().map(|entry| entry.file_name()));
        }
    }
    names
}

/// The overlay of one top-level directory `name`.
fn directory_overlay(
    mounter: &Mounter,
    base: &Path,
    read_only: &[PathBuf],
    layers: &Layers,
    name: &OsString,
) -> Result<(), SandboxError> {
    let upper = layers.upper.join(name);
    let work = layers.work.join(name);
    let target = layers.root.join(name);
    for dir in [&upper, &work, &target] {
        if !dir.is_dir() {
            fs::create_dir_all(dir)
                .map_err(SandboxError::io(format!("create {}", dir.display())))?;
        }
    }
    let mut lower: Vec<PathBuf> = read_only
        .iter()
        .map(|layer| layer.join(name))
        .filter(|dir| dir.is_dir())
        .collect();
    let below = base.join(name);
    if below.is_dir() {
        // The writable layer (a run's, under the state dir) may lie in
        // this very directory: overlayfs refuses that, a view of it is a
        // file system apart.
        let inside = [&upper]
            .into_iter()
            .chain(read_only.iter())
            .any(|layer| layer.starts_with(&below));
        lower.push(if inside {
            mounter.stackable_named(&below, &format!("view-{}", name.to_string_lossy()))?
        } else {
            below
        });
    }
    if lower.is_empty() {
        // Made by a writable layer alone: an overlay needs a lower layer.
        lower.push(mounter.empty_dir()?);
    }
    mounter.overlay_at(&target, &lower, &upper, &work)
}
