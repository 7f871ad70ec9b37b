//! The diff thread's views of the layers: *before*, *after* and the
//! redirect *probe*, read-only overlays in a private mount namespace.

use std::collections::BTreeSet;
use std::fs::{self};

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use super::candidates::*;
use super::*;

/// What the diff needs, owned: the layers' directories of the
/// workspace's top-level directory (views of whole layers would need the
/// base's `/` as an overlay layer, which a rootless diff cannot mount), and
/// the rest of the workspace's path below them.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Job {
    /// Read-only layers' top directories that exist, topmost first.
    pub(super) lower: Vec<PathBuf>,
    /// The agent's upper's top directory; None when the agent removed or
    /// replaced it (nothing of the workspace is there after).
    pub(super) upper: Option<PathBuf>,
    /// The agent removed the top directory and made it again: after it,
    /// nothing of the layers below shows.
    pub(super) opaque: bool,
    /// The workspace below the top directory (empty: the top itself).
    pub(super) workspace: PathBuf,
    pub(super) mounts: PathBuf,
    /// Mount the views in a user namespace of our own (rootless), where
    /// overlayfs keeps its metadata in `user.*` attributes.
    pub(super) rootless: bool,
}

/// Moves the calling thread into a mount namespace of its own whose mounts
/// never propagate to the host's (nor the host's to it).
pub(super) fn enter_private_mount_namespace() -> Result<(), DiffError> {
    unshare(CloneFlags::CLONE_NEWNS)
        .map_err(mount_error("create a private mount namespace for the diff"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(mount_error("make mount propagation private"))
}

/// Mounts the views in a private mount namespace (unshare applies to the
/// calling thread only: the diff thread's, or the helper process's),
/// streams the before and after versions of every candidate to
/// fast-import, and returns the paths left out.
pub(super) fn materialize(job: &Job, stream: Stream) -> Result<BTreeSet<PathBuf>, DiffError> {
    enter_private_mount_namespace()?;
    let mut mounts = Mounts {
        targets: Vec::new(),
        userxattr: job.rootless,
    };
    let result =
        mount_views(job, &mut mounts).and_then(|views| export_changes(job, &views, stream));
    mounts.unmount_all();
    result
}

/// Mount points of the three views, in the diff's namespace; none after
/// the agent when it removed the workspace's top directory.
pub(super) struct Views {
    pub(super) before: PathBuf,
    pub(super) after: Option<PathBuf>,
    pub(super) probe: Option<PathBuf>,
}

/// Mounts the views. overlayfs refuses a lower layer that lies inside
/// another one on the same filesystem ("overlapping lowerdir path"); so
/// when a layer shares the bottom layer's filesystem, the bottom layer goes
/// in through an overlay of its own (over an empty directory), which shows
/// the same tree from another superblock. Empty directories at the bottom
/// also satisfy overlayfs' two-lower minimum.
pub(super) fn mount_views(job: &Job, mounts: &mut Mounts) -> Result<Views, DiffError> {
    let root = &job.mounts;
    mounts.tmpfs(root)?;
    let empty = root.join("empty");
    let empty2 = root.join("empty2");
    let views = Views {
        before: root.join("before"),
        after: job.upper.as_ref().map(|_| root.join("after")),
        probe: job.upper.as_ref().map(|_| root.join("probe")),
    };
    let wrapped_base = root.join("base");
    for dir in [&empty, &empty2, &views.before, &wrapped_base]
        .into_iter()
        .chain(views.after.iter())
        .chain(views.probe.iter())
    {
        fs::create_dir(dir).map_err(io_error(format!("create {}", dir.display())))?;
    }
    let mut stack: Vec<&Path> = job.lower.iter().map(PathBuf::as_path).collect();
    if let Some((base, above)) = job.lower.split_last() {
        if shares_filesystem(base, above, job.upper.as_deref())? {
            mounts.overlay(&wrapped_base, &[base, &empty], "")?;
            stack.pop();
            stack.push(&wrapped_base);
        }
    }
    let bottom: &[&Path] = if stack.is_empty() {
        &[&empty, &empty2]
    } else {
        &[&empty]
    };
    let before: Vec<&Path> = stack
        .iter()
        .copied()
        .chain(bottom.iter().copied())
        .collect();
    mounts.overlay(&views.before, &before, "")?;
    if let (Some(upper), Some(after), Some(probe)) = (&job.upper, &views.after, &views.probe) {
        let below = if job.opaque { Vec::new() } else { stack };
        let mut layers: Vec<&Path> = [upper.as_path()].into_iter().chain(below).collect();
        if layers.len() < 2 {
            layers.push(&empty);
        }
        mounts.overlay(after, &layers, "")?;
        mounts.overlay(probe, &layers, ",redirect_dir=nofollow")?;
    }
    Ok(views)
}

pub(super) fn shares_filesystem(
    base: &Path,
    above: &[PathBuf],
    upper: Option<&Path>,
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
    for layer in above.iter().map(PathBuf::as_path).chain(upper) {
        if device(layer)? == base_device {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Mounts made by the diff, unmounted in reverse order.
pub(super) struct Mounts {
    pub(super) targets: Vec<PathBuf>,
    /// overlayfs metadata in `user.*` attributes (rootless).
    pub(super) userxattr: bool,
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
        let userxattr = if self.userxattr { ",userxattr" } else { "" };
        let options = format!("lowerdir={}{extra}{userxattr}", lower.join(":"));
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
