//! `diff.patch`: every change the agent phase made inside the workspace, as
//! a patch `git apply` takes (git's `--binary` format, paths relative to the
//! workspace).
//!
//! The agent phase leaves plain directories on the host: read-only lower
//! layers (topmost first: earlier phases' upper dirs, with their whiteouts
//! and opaque dirs, then the base) and the agent phase's own upper dir. How
//! those layers combine is overlayfs' business, so this module lets the
//! kernel answer instead of re-implementing overlay semantics:
//!
//! 1. In a thread of its own with a private mount namespace, it mounts two
//!    read-only overlays: *before* = the lower stack, *after* = the agent's
//!    upper stacked on it as one more lower layer (exactly how container
//!    image layers stack). A third, *probe*, is *after* with
//!    `redirect_dir=nofollow`: a lookup through a directory the agent
//!    renamed (overlayfs records that as a redirect) fails there with EPERM,
//!    which finds renames without reading xattrs. The thread's namespace,
//!    and with it every mount, is gone when the thread ends; the mounts are
//!    still unmounted explicitly.
//! 2. Candidates come from the agent's upper: every non-directory entry
//!    (file, symlink, whiteout), every name present on one side only of a
//!    directory the upper holds (what an opaque directory hides), and, whole,
//!    every directory that is new, replaced or renamed. Unchanged data is
//!    never read; files the agent merely copied up are read and produce no
//!    hunk.
//! 3. The before and after versions of the candidates are streamed from the
//!    two views into `git fast-import` in a fresh bare repository, as one
//!    commit each (content, exec bit, symlinks as links), and `git diff-tree
//!    --binary` of the two commits is the patch. Git gets paths, binary
//!    files, modes, deletions and new files right; nothing of the content is
//!    ever written out as a file, and git never walks a work tree.
//!
//! Trust boundary: everything inside the layers was written by the agent,
//! which may be hostile. So
//! - the trees are read through file descriptors: each lookup is an
//!   `openat2(2)` that stays beneath the tree's root, follows no symlink and
//!   crosses no mount; a symlink's target is read as text, never resolved;
//!   only regular files are opened (`O_NOFOLLOW | O_NONBLOCK`, type checked
//!   on the descriptor), so a FIFO or device never blocks or acts; the views
//!   are mounted `nodev,nosuid,noexec` as well;
//! - walks use explicit stacks and paths are capped, so a hostile depth
//!   cannot overflow ours;
//! - git runs with an empty environment and no system or global config, in
//!   a repository this module created, and only as fast-import and
//!   diff-tree: the content's `.git` directories (left out, at any depth),
//!   `.gitattributes` and `.gitignore` are data, never configuration; its
//!   `info/attributes` also neutralises every attribute, should a later git
//!   read the trees' own;
//! - names git would refuse when applying the patch (`.git` in any case or
//!   NTFS/HFS+ spelling) are left out, so one hostile name cannot make the
//!   whole patch unappliable.
//!
//! What a patch cannot carry is left out and counted as skipped: FIFOs,
//! sockets and devices, nested `.git` directories (an embedded repository),
//! names git refuses, and paths too long. Empty directories, ownership and
//! permission bits other than the owner's execute bit are not in git
//! patches either.
//!
//! Needs root, overlayfs, Linux 5.6 or later (openat2) and `git` (any
//! version of the last years: only plumbing is used).
//! Precondition: the agent phase has ended (no process of the sandbox left),
//! so the layers do not change while they are read.

mod candidates;
mod export;
mod git;
mod helper;
#[cfg(test)]
mod tests;
mod views;

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{ChildStdin, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::errno::Errno;

use self::export::Export;
use self::git::{count_file_headers, Git, GIT_DIRS};
use self::views::{materialize, Job};

pub use self::helper::enter_if_requested;

/// Where fast-import's stream is written: its stdin (a thread of ours), or
/// the helper process's stdout.
pub(crate) type Stream = Box<dyn std::io::Write + Send>;
use crate::tree::{Tree, TreeError};

/// The layers of a finished run, as plain host directories.
pub struct DiffLayers<'a> {
    /// Read-only layers, topmost first, base last (e.g. the setup phase's
    /// upper, then `/`).
    pub lower: &'a [PathBuf],
    /// The agent phase's upper dir: what the agent wrote.
    pub upper: &'a Path,
}

/// What went into the patch, for the run's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffSummary {
    /// Files in the patch (its `diff --git` headers; a file that changed
    /// type, e.g. became a symlink, counts twice, as git writes it).
    pub files_changed: usize,
    /// Size of the patch file.
    pub bytes: u64,
    /// Paths a patch cannot carry, left out (FIFOs, sockets, devices,
    /// nested `.git`, names git refuses, over-long paths).
    pub skipped: usize,
}

/// Why no patch was written; each message says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("workspace {0:?}: give a path relative to the sandbox root without `..`, e.g. \"workspace/repo\"")]
    Workspace(PathBuf),
    #[error("no lower layers given: pass at least the base directory")]
    NoLowerLayers,
    #[error("layer {path}: {source}; pass the run's layers as host directories")]
    Layer {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{0}: overlayfs options cannot carry a path containing `,`, `:` or `\\`; use another path"
    )]
    UnsafePath(PathBuf),
    #[error("{what}: {source}; the diff needs root and overlayfs (dmesg says why a mount failed)")]
    Mount {
        what: String,
        #[source]
        source: Errno,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("git not found in {}: install git to get diff.patch", GIT_DIRS.join(", "))]
    GitNotFound,
    #[error("git {step} failed ({status}): {stderr}")]
    Git {
        step: &'static str,
        status: ExitStatus,
        stderr: String,
    },
    #[error("the diff thread panicked: a bug in tollgate, please report it")]
    Panicked,
}

/// Writes the patch of every change under `workspace` (relative to the
/// root, e.g. "workspace/repo") to `out` (created or replaced, mode 0644);
/// an empty file when nothing changed. The workspace's own `.git` is left
/// out; files its `.gitignore` names are not (every change is in, and the
/// agent writes `.gitignore` too). `out` is replaced atomically: it never
/// holds half a patch.
///
/// Needs root (mounts) and `git`. Scratch space (a mount point, a git
/// repository holding both versions of the changed files, compressed) is a
/// hidden directory next to `out` (`.tollgate-diff-*`), removed before
/// returning.
pub fn write_agent_diff(
    layers: &DiffLayers<'_>,
    workspace: &Path,
    out: &Path,
) -> Result<DiffSummary, DiffError> {
    let workspace = workspace_path(workspace)?;
    check_layers(layers)?;
    let git = Git::locate()?;
    let scratch = Scratch::create(out)?;
    git.init(&scratch)?;
    let mut import = git.fast_import(&scratch)?;
    let streamed = stream_changes(layers, workspace, &scratch, import.stream()?);
    let skipped = import.finish(streamed)?;
    for path in &skipped {
        tracing::debug!(path = %path.display(), "left out of diff.patch");
    }
    git.diff(&scratch)?;
    let summary = DiffSummary {
        files_changed: count_file_headers(&scratch.patch)?,
        bytes: fs::metadata(&scratch.patch)
            .map_err(io_error("measure the patch"))?
            .len(),
        skipped: skipped.len(),
    };
    publish(&scratch.patch, out)?;
    tracing::debug!(
        files = summary.files_changed,
        bytes = summary.bytes,
        skipped = summary.skipped,
        "wrote {}",
        out.display()
    );
    Ok(summary)
}

/// Streams both sides of every change to fast-import when the agent's
/// upper holds anything at the workspace; returns the paths left out. As
/// root the views are mounted by a thread of ours; rootless by a helper
/// process (a fresh exec of this binary), since a process of several
/// threads cannot enter a user namespace of its own.
fn stream_changes(
    layers: &DiffLayers<'_>,
    workspace: PathBuf,
    scratch: &Scratch,
    stream: ChildStdin,
) -> Result<BTreeSet<PathBuf>, DiffError> {
    if !upper_touches(layers.upper, &workspace)? {
        return Export::new(Box::new(stream), BTreeSet::new()).finish(None, None, &BTreeSet::new());
    }
    let rootless = !nix::unistd::geteuid().is_root();
    let top: PathBuf = workspace.components().take(1).collect();
    // Looked at with lstat: a top directory the agent (or setup) swapped
    // for a symlink is not one, and never followed to where it points.
    let real_dir = |path: &Path| fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir());
    let upper = layers.upper.join(&top);
    let upper = real_dir(&upper).then_some(upper);
    // An opaque top directory (removed and made again) hides every layer
    // below it after the agent; overlayfs ignores that mark on a layer's
    // root, so the view after the agent leaves them out instead.
    let opaque = upper.as_deref().is_some_and(|dir| is_opaque(dir, rootless));
    let lower = layers
        .lower
        .iter()
        .map(|layer| layer.join(&top))
        .filter(|dir| real_dir(dir))
        .collect();
    let job = Job {
        lower,
        upper,
        opaque,
        workspace: workspace.components().skip(1).collect(),
        mounts: scratch.mounts.clone(),
        rootless,
    };
    if job.rootless {
        return helper::run(&job, scratch, stream);
    }
    std::thread::Builder::new()
        .name("tollgate-diff".into())
        .spawn(move || materialize(&job, Box::new(stream)))
        .map_err(io_error("start the diff thread"))?
        .join()
        .unwrap_or(Err(DiffError::Panicked))
}

/// Whether overlayfs marked `dir` opaque: `trusted.overlay.opaque`, or
/// `user.overlay.opaque` for layers written rootless.
fn is_opaque(dir: &Path, rootless: bool) -> bool {
    let name = if rootless {
        "user.overlay.opaque"
    } else {
        "trusted.overlay.opaque"
    };
    matches!(xattr::get(dir, name), Ok(Some(value)) if value == b"y")
}

/// Moves the finished patch to `out`, readable by all: a rename, so `out`
/// is never half written.
fn publish(patch: &Path, out: &Path) -> Result<(), DiffError> {
    fs::set_permissions(patch, Permissions::from_mode(0o644))
        .map_err(io_error("make the patch readable"))?;
    fs::rename(patch, out).map_err(io_error(format!("write {}", out.display())))
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> DiffError {
    let what = what.into();
    move |source| DiffError::Io { what, source }
}

fn mount_error(what: impl Into<String>) -> impl FnOnce(Errno) -> DiffError {
    let what = what.into();
    move |source| DiffError::Mount { what, source }
}

// ---------------------------------------------------------------------------
// Inputs

/// The workspace as plain relative components: `/workspace/repo` and
/// `workspace/repo` both mean the same directory of the sandbox's root.
fn workspace_path(workspace: &Path) -> Result<PathBuf, DiffError> {
    let mut relative = PathBuf::new();
    for part in workspace.components() {
        match part {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => relative.push(name),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(DiffError::Workspace(workspace.to_owned()))
            }
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(DiffError::Workspace(workspace.to_owned()));
    }
    Ok(relative)
}

fn check_layers(layers: &DiffLayers<'_>) -> Result<(), DiffError> {
    if layers.lower.is_empty() {
        return Err(DiffError::NoLowerLayers);
    }
    for path in layers
        .lower
        .iter()
        .map(PathBuf::as_path)
        .chain([layers.upper])
    {
        overlay_safe(path)?;
        let meta = fs::metadata(path).map_err(|source| DiffError::Layer {
            path: path.to_owned(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(DiffError::Layer {
                path: path.to_owned(),
                source: io::Error::from(io::ErrorKind::NotADirectory),
            });
        }
    }
    Ok(())
}

/// overlayfs splits its options on `,` and `:` and unescapes `\`.
fn overlay_safe(path: &Path) -> Result<(), DiffError> {
    if path
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|b| b",:\\".contains(b))
    {
        return Err(DiffError::UnsafePath(path.to_owned()));
    }
    Ok(())
}

/// Whether the agent's upper holds anything at or above the workspace: if
/// its first component is not there, nothing under it changed and no mount
/// is needed. (Deeper, an opaque directory can hide the workspace without
/// the upper naming it, so from there on the views decide.)
fn upper_touches(upper: &Path, workspace: &Path) -> Result<bool, DiffError> {
    let tree = Tree::open(upper, &upper.display().to_string())?;
    let first: PathBuf = workspace.components().take(1).collect();
    Ok(tree.kind(&first)?.is_some())
}

// ---------------------------------------------------------------------------
// Scratch space

/// A private directory next to `out`, removed when dropped (after the diff
/// thread, and so its mount namespace, is gone: on the host, its mount
/// point is an empty directory). Next to `out` so that the patch moves into
/// place atomically.
struct Scratch {
    root: PathBuf,
    /// Mounted (in the diff thread's namespace only) with a tmpfs holding
    /// the views' mount points and an empty directory to stack under them.
    mounts: PathBuf,
    git_dir: PathBuf,
    /// fast-import's messages, a file rather than a pipe so that nothing
    /// can block while the thread feeds it.
    import_log: PathBuf,
    patch: PathBuf,
}

impl Scratch {
    fn create(out: &Path) -> Result<Scratch, DiffError> {
        static SEQUENCE: AtomicUsize = AtomicUsize::new(0);
        let parent = match out.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let parent = fs::canonicalize(parent)
            .map_err(io_error(format!("find the directory of {}", out.display())))?;
        let name = format!(
            ".tollgate-diff-{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let root = parent.join(name);
        overlay_safe(&root)?;
        DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .map_err(io_error(format!("create {}", root.display())))?;
        let scratch = Scratch {
            mounts: root.join("mnt"),
            git_dir: root.join("git"),
            import_log: root.join("fast-import.log"),
            patch: root.join("patch"),
            root,
        };
        fs::create_dir(&scratch.mounts)
            .map_err(io_error(format!("create {}", scratch.mounts.display())))?;
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.root) {
            tracing::warn!(%error, "cannot remove {}", self.root.display());
        }
    }
}
