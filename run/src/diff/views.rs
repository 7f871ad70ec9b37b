//! The diff thread's views of the layers: *before*, *after* and the
//! redirect *probe*, read-only overlays in a private mount namespace.

use std::collections::BTreeSet;
use std::fs::{self};

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ChildStdin;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::candidates::*;
use super::*;

/// What the diff thread needs, owned.
pub(super) struct Job {
    pub(super) lower: Vec<PathBuf>,
    pub(super) upper: PathBuf,
    pub(super) workspace: PathBuf,
    pub(super) mounts: PathBuf,
}

/// Runs on its own thread: mounts the views in a private mount namespace
/// (unshare applies to the calling thread only), streams the before and
/// after versions of every candidate to fast-import, and returns the paths
/// left out.
pub(super) fn materialize(job: &Job, stream: ChildStdin) -> Result<BTreeSet<PathBuf>, DiffError> {
    unshare(CloneFlags::CLONE_NEWNS)
        .map_err(mount_error("create a private mount namespace for the diff"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(mount_error("make mount propagation private"))?;
    let mut mounts = Mounts::default();
    let result =
        mount_views(job, &mut mounts).and_then(|views| export_changes(job, &views, stream));
    mounts.unmount_all();
    result
}

/// Mount points of the three views, in the thread's namespace.
pub(super) struct Views {
    pub(super) before: PathBuf,
    pub(super) after: PathBuf,
    pub(super) probe: PathBuf,
}

/// Mounts the views. overlayfs refuses a lower layer that lies inside
/// another one on the same filesystem ("overlapping lowerdir path"), which
/// is the normal case with the default base `/` and layers on the root
/// filesystem; so when any layer shares the base's filesystem, the base goes
/// in through an overlay of its own (base over an empty directory), which
/// shows the same tree from another superblock. An empty directory at the
/// bottom of *before* also satisfies overlayfs' two-lower minimum.
pub(super) fn mount_views(job: &Job, mounts: &mut Mounts) -> Result<Views, DiffError> {
    let root = &job.mounts;
    mounts.tmpfs(root)?;
    let empty = root.join("empty");
    let views = Views {
        before: root.join("before"),
        after: root.join("after"),
        probe: root.join("probe"),
    };
    let wrapped_base = root.join("base");
    for dir in [
        &empty,
        &views.before,
        &views.after,
        &views.probe,
        &wrapped_base,
    ] {
        fs::create_dir(dir).map_err(io_error(format!("create {}", dir.display())))?;
    }
    let (base, above) = match job.lower.split_last() {
        Some((base, above)) => (base.as_path(), above),
        None => return Err(DiffError::NoLowerLayers),
    };
    let base = if shares_filesystem(base, above, &job.upper)? {
        mounts.overlay(&wrapped_base, &[base, &empty], "")?;
        wrapped_base.as_path()
    } else {
        base
    };
    let stack: Vec<&Path> = above.iter().map(PathBuf::as_path).chain([base]).collect();
    let before: Vec<&Path> = stack.iter().copied().chain([empty.as_path()]).collect();
    let after: Vec<&Path> = [job.upper.as_path()].into_iter().chain(stack).collect();
    mounts.overlay(&views.before, &before, "")?;
    mounts.overlay(&views.after, &after, "")?;
    mounts.overlay(&views.probe, &after, ",redirect_dir=nofollow")?;
    Ok(views)
}

pub(super) fn shares_filesystem(
    base: &Path,
    above: &[PathBuf],
    upper: &Path,
) -> Result<bool, DiffError> {
    let device = |path: &Path| {
        fs::metadata(path)
            .map(|meta| meta.dev())
            .map_err(|source| DiffError::Layer {
                path: path.to_owned(),
                source,
            })
    };
    let base_device = device(base)?;
    for layer in above.iter().map(PathBuf::as_path).chain([upper]) {
        if device(layer)? == base_device {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Mounts made by the diff thread, unmounted in reverse order.
#[derive(Default)]
pub(super) struct Mounts {
    pub(super) targets: Vec<PathBuf>,
}

impl Mounts {
    pub(super) fn tmpfs(&mut self, target: &Path) -> Result<(), DiffError> {
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0700,size=1m"),
        )
        .map_err(mount_error(format!(
            "mount a tmpfs on {}",
            target.display()
        )))?;
        self.targets.push(target.to_owned());
        Ok(())
    }

    /// A read-only overlay of `lower` (topmost first) on `target`.
    pub(super) fn overlay(
        &mut self,
        target: &Path,
        lower: &[&Path],
        extra: &str,
    ) -> Result<(), DiffError> {
        for path in lower {
            overlay_safe(path)?;
        }
        let lower: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
        let options = format!("lowerdir={}{extra}", lower.join(":"));
        tracing::debug!(target = %target.display(), %options, "diff: mount overlay");
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(options.as_str()),
        )
        .map_err(mount_error(format!("mount overlay {options}")))?;
        self.targets.push(target.to_owned());
        Ok(())
    }

    /// The namespace dies with the thread anyway; unmounting explicitly
    /// keeps that from being the only guarantee. Detached rather than
    /// unmounted: a process that another thread of tollgate is spawning at
    /// that moment briefly holds copies of every descriptor (until its
    /// exec closes them), which would make a plain unmount fail with EBUSY.
    pub(super) fn unmount_all(&mut self) {
        while let Some(target) = self.targets.pop() {
            if let Err(error) = umount2(&target, MntFlags::MNT_DETACH) {
                tracing::warn!(%error, "diff: cannot unmount {}", target.display());
            }
        }
    }
}
