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
//! of the whole base would have written. What is mounted at a directory
//! (another file system: /proc, /sys, a separate /home) is left out, as one
//! overlay of the base would leave it out: an empty directory. A directory
//! with file systems mounted further below is split the same way, entry by
//! entry (it lies on the root's tmpfs, where writes to it stay): binding it
//! as it is would show what is mounted below, and the real unix sockets in
//! it, which no overlay passes on (a user's docker socket is host root).
//! Sockets, FIFOs and device nodes at a split level are left out.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::mounts::bind_read_only;
use crate::rootfs::{size_option, Layers, Mounter};
use crate::{mountinfo, SandboxError};

/// Whether the base has other file systems mounted below it, which a
/// rootless overlay of it cannot carry.
pub fn has_mounts_below(base: &Path) -> bool {
    mountinfo::mount_points()
        .iter()
        .any(|point| point != base && point.starts_with(base))
}

/// How deep directories with mounts below are split before what is below
/// is left out (an empty directory): deeper than any host's layout.
const MAX_SPLIT_DEPTH: usize = 16;

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
    let split = Split {
        mounter,
        base,
        read_only,
        layers,
        points: mountinfo::mount_points(),
    };
    split.place_entries_of(Path::new(""), 0)
}

/// What splitting the root needs at every level.
struct Split<'a> {
    mounter: &'a Mounter,
    base: &'a Path,
    read_only: &'a [PathBuf],
    layers: &'a Layers,
    points: Vec<PathBuf>,
}

impl Split<'_> {
    /// Places every entry of the directory `dir` (relative to the root).
    fn place_entries_of(&self, dir: &Path, depth: usize) -> Result<(), SandboxError> {
        for name in names_in(self.base, self.read_only, &self.layers.upper, dir) {
            self.place(&dir.join(name), depth)?;
        }
        Ok(())
    }

    fn place(&self, entry: &Path, depth: usize) -> Result<(), SandboxError> {
        let source = self.base.join(entry);
        let target = self.layers.root.join(entry);
        let step = || format!("put {} in the sandbox's root", source.display());
        let Some((found, meta)) = topmost(self.base, self.read_only, self.layers, entry) else {
            return Ok(());
        };
        if self.points.contains(&source) {
            // Another file system mounted here (a directory, or a file such
            // as a namespace handle bound over one): not part of the base.
            if meta.is_dir() {
                fs::create_dir(&target).map_err(SandboxError::io(step()))?;
            } else if meta.is_file() {
                fs::write(&target, b"").map_err(SandboxError::io(step()))?;
            }
        } else if meta.file_type().is_symlink() {
            let link = fs::read_link(&found).map_err(SandboxError::io(step()))?;
            symlink(link, &target).map_err(SandboxError::io(step()))?;
        } else if meta.is_file() {
            fs::write(&target, b"").map_err(SandboxError::io(step()))?;
            bind_read_only(&found, &target, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)
                .map_err(SandboxError::setup(step()))?;
        } else if !meta.is_dir() {
            // A whiteout, a socket, a FIFO or a device node: left out.
        } else if self.points.iter().any(|p| p.starts_with(&source)) {
            // File systems mounted further below: split this one too.
            fs::create_dir(&target).map_err(SandboxError::io(step()))?;
            if depth < MAX_SPLIT_DEPTH {
                self.place_entries_of(entry, depth + 1)?;
            }
        } else {
            // On the base's file system (or only in the layers): an overlay.
            directory_overlay(self.mounter, self.base, self.read_only, self.layers, entry)?;
        }
        Ok(())
    }
}

/// The entry `name` (a path relative to the root) of the topmost layer
/// that has one (the writable layer's, then the read-only layers', then the
/// base's): what one overlay of the whole base would show there. A file a
/// layer replaced a directory with is that file, and it is read-only.
fn topmost(
    base: &Path,
    read_only: &[PathBuf],
    layers: &Layers,
    name: &Path,
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

/// Every name in the directory `dir` (relative to the root) of the base
/// and of the layers.
fn names_in(base: &Path, read_only: &[PathBuf], upper: &Path, dir: &Path) -> BTreeSet<OsString> {
    let mut names = BTreeSet::new();
    for layer in [base, upper]
        .into_iter()
        .chain(read_only.iter().map(PathBuf::as_path))
    {
        if let Ok(entries) = fs::read_dir(layer.join(dir)) {
            names.extend(entries.flatten().map(|entry| entry.file_name()));
        }
    }
    names
}

/// The overlay of one directory `name` (a path relative to the root).
fn directory_overlay(
    mounter: &Mounter,
    base: &Path,
    read_only: &[PathBuf],
    layers: &Layers,
    name: &Path,
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
            let view = name.to_string_lossy().replace('/', "-");
            mounter.stackable_named(&below, &format!("view-{view}"))?
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
