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

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, Permissions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat2, readlinkat, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{fstat, SFlag};

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

/// Streams both sides of every change to fast-import, from the diff thread
/// when the agent's upper holds anything at the workspace; returns the
/// paths left out.
fn stream_changes(
    layers: &DiffLayers<'_>,
    workspace: PathBuf,
    scratch: &Scratch,
    stream: ChildStdin,
) -> Result<BTreeSet<PathBuf>, DiffError> {
    if !upper_touches(layers.upper, &workspace)? {
        return Export::new(stream, BTreeSet::new()).finish(None, None, &BTreeSet::new());
    }
    let job = Job {
        lower: layers.lower.to_vec(),
        upper: layers.upper.to_path_buf(),
        workspace,
        mounts: scratch.mounts.clone(),
    };
    std::thread::Builder::new()
        .name("tollgate-diff".into())
        .spawn(move || materialize(&job, stream))
        .map_err(io_error("start the diff thread"))?
        .join()
        .unwrap_or(Err(DiffError::Panicked))
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

// ---------------------------------------------------------------------------
// The diff thread: views, candidates, export

/// What the diff thread needs, owned.
struct Job {
    lower: Vec<PathBuf>,
    upper: PathBuf,
    workspace: PathBuf,
    mounts: PathBuf,
}

/// Runs on its own thread: mounts the views in a private mount namespace
/// (unshare applies to the calling thread only), streams the before and
/// after versions of every candidate to fast-import, and returns the paths
/// left out.
fn materialize(job: &Job, stream: ChildStdin) -> Result<BTreeSet<PathBuf>, DiffError> {
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
struct Views {
    before: PathBuf,
    after: PathBuf,
    probe: PathBuf,
}

/// Mounts the views. overlayfs refuses a lower layer that lies inside
/// another one on the same filesystem ("overlapping lowerdir path"), which
/// is the normal case with the default base `/` and layers on the root
/// filesystem; so when any layer shares the base's filesystem, the base goes
/// in through an overlay of its own (base over an empty directory), which
/// shows the same tree from another superblock. An empty directory at the
/// bottom of *before* also satisfies overlayfs' two-lower minimum.
fn mount_views(job: &Job, mounts: &mut Mounts) -> Result<Views, DiffError> {
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

fn shares_filesystem(base: &Path, above: &[PathBuf], upper: &Path) -> Result<bool, DiffError> {
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
struct Mounts {
    targets: Vec<PathBuf>,
}

impl Mounts {
    fn tmpfs(&mut self, target: &Path) -> Result<(), DiffError> {
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
    fn overlay(&mut self, target: &Path, lower: &[&Path], extra: &str) -> Result<(), DiffError> {
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
    fn unmount_all(&mut self) {
        while let Some(target) = self.targets.pop() {
            if let Err(error) = umount2(&target, MntFlags::MNT_DETACH) {
                tracing::warn!(%error, "diff: cannot unmount {}", target.display());
            }
        }
    }
}

/// The workspace as seen in each view (None: not a directory on that side).
struct Sides {
    before: Option<Tree>,
    after: Option<Tree>,
    upper: Option<Tree>,
    probe: Probe,
}

/// Streams the before and after versions of every candidate to
/// fast-import; returns the paths left out.
fn export_changes(
    job: &Job,
    views: &Views,
    stream: ChildStdin,
) -> Result<BTreeSet<PathBuf>, DiffError> {
    let ws = &job.workspace;
    let sides = Sides {
        before: Tree::open(&views.before, "(before the agent)")?.subtree(ws)?,
        after: Tree::open(&views.after, "(after the agent)")?.subtree(ws)?,
        upper: Tree::open(&job.upper, &job.upper.display().to_string())?.subtree(ws)?,
        probe: Probe {
            tree: Tree::open(&views.probe, "(redirect probe)")?,
            workspace: ws.clone(),
        },
    };
    let mut skipped = BTreeSet::new();
    let candidates = candidates(&sides, &mut skipped)?;
    tracing::debug!(count = candidates.len(), "diff: candidate paths");
    Export::new(stream, skipped).finish(sides.before.as_ref(), sides.after.as_ref(), &candidates)
}

/// Finds the candidate paths (relative to the workspace; the empty path is
/// the whole workspace).
fn candidates(
    sides: &Sides,
    skipped: &mut BTreeSet<PathBuf>,
) -> Result<BTreeSet<PathBuf>, DiffError> {
    let root = PathBuf::new();
    let redirected = sides.probe.redirected(&root)?;
    match (&sides.before, &sides.after, &sides.upper) {
        (None, None, _) => {
            tracing::warn!("diff: the workspace is not a directory before or after the agent");
            Ok(BTreeSet::new())
        }
        // The upper holds nothing at the workspace, and nothing above it
        // hides or moves it: untouched.
        (Some(_), Some(_), None) if !redirected => Ok(BTreeSet::new()),
        (Some(before), Some(after), Some(upper)) if !redirected => {
            scan((before, after, upper), &sides.probe, skipped)
        }
        // Created, deleted, replaced or moved as a whole.
        _ => Ok(BTreeSet::from([root])),
    }
}

/// Walks the directories the upper holds that are plain directories on both
/// sides. Anything not explained by "upper over the same path below" is a
/// candidate: the upper's non-directories (files, symlinks, whiteouts),
/// names present on one side only (hidden by an opaque directory, or
/// whited out), and whole directories that are new, replaced or renamed.
fn scan(
    sides: (&Tree, &Tree, &Tree),
    probe: &Probe,
    skipped: &mut BTreeSet<PathBuf>,
) -> Result<BTreeSet<PathBuf>, DiffError> {
    let (before, after, upper) = sides;
    let mut found = BTreeSet::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(dir) = pending.pop() {
        for name in upper.names(&dir)? {
            let Some(path) = keep(dir.join(name), skipped) else {
                continue;
            };
            if upper.kind(&path)? == Some(Kind::Dir)
                && before.kind(&path)? == Some(Kind::Dir)
                && after.kind(&path)? == Some(Kind::Dir)
                && !probe.redirected(&path)?
            {
                pending.push(path);
            } else {
                found.insert(path);
            }
        }
        let (before_names, after_names) = (before.names(&dir)?, after.names(&dir)?);
        for name in before_names.symmetric_difference(&after_names) {
            found.extend(keep(dir.join(name), skipped));
        }
    }
    Ok(found)
}

/// `path` if it belongs in the patch; recorded as skipped if git cannot
/// carry it.
fn keep(path: PathBuf, skipped: &mut BTreeSet<PathBuf>) -> Option<PathBuf> {
    match verdict(&path) {
        Verdict::Keep => Some(path),
        Verdict::Exclude => None,
        Verdict::Skip => {
            skipped.insert(path);
            None
        }
    }
}

/// What to do with a path of the workspace.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// The workspace's own repository: not part of the change set.
    Exclude,
    /// A patch cannot carry it: a component git refuses as a path (a nested
    /// repository would also turn into a gitlink), or a path too long.
    Skip,
}

/// Paths longer than this (relative to the workspace) are skipped: lookups
/// here, and `git apply` wherever the patch goes, take a path that Linux
/// caps at 4096 bytes; this leaves room for the workspace's own path. It
/// also bounds how deep a hostile tree can make the walks go.
const MAX_PATH_BYTES: usize = 3072;

fn verdict(path: &Path) -> Verdict {
    if path.as_os_str() == ".git" {
        Verdict::Exclude
    } else if path.as_os_str().len() > MAX_PATH_BYTES || path.iter().any(names_git_dir) {
        Verdict::Skip
    } else {
        Verdict::Keep
    }
}

/// Whether git refuses `name` as a path component when applying a patch
/// with its protections on (`core.protectNTFS`, on by default everywhere;
/// `core.protectHFS`, macOS's default): `.git` in any case, and what NTFS or
/// HFS+ would take for it: `git~1`, `.git.`, `.git `, `.git::$DATA`, `.git`
/// with invisible code points, and the same after a backslash.
fn names_git_dir(name: &OsStr) -> bool {
    folded(name).split(|&b| b == b'\\').any(|part| {
        let rest = part
            .strip_prefix(b".git")
            .or_else(|| part.strip_prefix(b"git~1"));
        rest.is_some_and(|rest| {
            rest.iter()
                .take_while(|&&b| b != b':')
                .all(|&b| b == b'.' || b == b' ')
        })
    })
}

/// Whether git refuses a symlink named `name`: `.gitmodules`, in any of
/// the spellings NTFS or HFS+ would take for it.
fn names_gitmodules(name: &OsStr) -> bool {
    let folded = folded(name);
    let end = folded
        .iter()
        .rposition(|&b| b != b'.' && b != b' ')
        .map_or(0, |last| last + 1);
    let trimmed = &folded[..end];
    trimmed == b".gitmodules" || trimmed.starts_with(b"gitmod~") || trimmed.starts_with(b"gi7eba~")
}

/// `name` as HFS+ compares it: ASCII case folded, the code points it
/// ignores dropped.
fn folded(name: &OsStr) -> Vec<u8> {
    let bytes = name.as_bytes();
    let visible = match std::str::from_utf8(bytes) {
        Ok(text) => text
            .chars()
            .filter(|&c| !ignored_by_hfs(c))
            .collect::<String>()
            .into_bytes(),
        Err(_) => bytes.to_vec(),
    };
    visible.to_ascii_lowercase()
}

fn ignored_by_hfs(c: char) -> bool {
    matches!(c, '\u{200c}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{206a}'..='\u{206f}' | '\u{feff}')
}

/// The *after* view mounted with `redirect_dir=nofollow`: a lookup through
/// a directory the agent renamed fails with EPERM.
struct Probe {
    tree: Tree,
    workspace: PathBuf,
}

impl Probe {
    /// Whether a lookup of `path` meets a redirect; false when it is not
    /// there as a real directory at all.
    fn redirected(&self, path: &Path) -> Result<bool, DiffError> {
        let full: PathBuf = self
            .workspace
            .components()
            .chain(path.components())
            .collect();
        match self.tree.lookup(&full, OFlag::O_PATH | OFlag::O_NOFOLLOW) {
            Ok(_) | Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => Ok(false),
            Err(Errno::EPERM) => Ok(true),
            Err(errno) => Err(self.tree.error("look up", &full, errno)),
        }
    }
}

/// Where fast-import stores the two sides.
const BEFORE: &str = "refs/tollgate/before";
const AFTER: &str = "refs/tollgate/after";

/// What failed when writing to fast-import fails.
const FEED: &str = "feed git fast-import";

/// Feeds `git fast-import`: one commit per side, each file's content inline
/// in the stream.
struct Export {
    out: BufWriter<ChildStdin>,
    skipped: BTreeSet<PathBuf>,
}

impl Export {
    fn new(stream: ChildStdin, skipped: BTreeSet<PathBuf>) -> Export {
        Export {
            out: BufWriter::with_capacity(1 << 16, stream),
            skipped,
        }
    }

    /// The whole stream: the candidates as they are in `before` and in
    /// `after` (None: the workspace is not there); returns the paths left
    /// out.
    fn finish(
        mut self,
        before: Option<&Tree>,
        after: Option<&Tree>,
        candidates: &BTreeSet<PathBuf>,
    ) -> Result<BTreeSet<PathBuf>, DiffError> {
        self.write(b"feature done\n")?;
        self.commit(BEFORE, before, candidates)?;
        self.commit(AFTER, after, candidates)?;
        self.write(b"done\n")?;
        self.out.flush().map_err(io_error(FEED))?;
        Ok(self.skipped)
    }

    fn commit(
        &mut self,
        name: &str,
        tree: Option<&Tree>,
        candidates: &BTreeSet<PathBuf>,
    ) -> Result<(), DiffError> {
        let header =
            format!("commit {name}\ncommitter tollgate <tollgate@localhost> 0 +0000\ndata 0\n");
        self.write(header.as_bytes())?;
        if let Some(tree) = tree {
            for candidate in candidates {
                self.add(tree, candidate)?;
            }
        }
        self.write(b"\n")
    }

    /// Adds `path` (a directory with everything in it) if it exists in
    /// `tree`.
    fn add(&mut self, tree: &Tree, path: &Path) -> Result<(), DiffError> {
        let mut pending = vec![path.to_path_buf()];
        while let Some(path) = pending.pop() {
            match tree.kind(&path)? {
                None => {}
                Some(Kind::Dir) => {
                    for name in tree.names(&path)? {
                        pending.extend(keep(path.join(name), &mut self.skipped));
                    }
                }
                Some(Kind::File { executable }) => self.add_file(tree, &path, executable)?,
                Some(Kind::Symlink) if path.file_name().is_some_and(names_gitmodules) => {
                    self.skipped.insert(path);
                }
                Some(Kind::Symlink) => self.add_symlink(tree, &path)?,
                Some(Kind::Special) => {
                    self.skipped.insert(path);
                }
            }
        }
        Ok(())
    }

    fn add_file(&mut self, tree: &Tree, path: &Path, executable: bool) -> Result<(), DiffError> {
        let Some((file, size)) = tree.open_file(path)? else {
            self.skipped.insert(path.to_owned());
            return Ok(());
        };
        self.entry(if executable { "100755" } else { "100644" }, path, size)?;
        let copied = io::copy(&mut file.take(size), &mut self.out)
            .map_err(io_error(format!("{FEED} with {}", tree.show(path))))?;
        if copied != size {
            return Err(DiffError::Io {
                what: format!("read {}", tree.show(path)),
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while being read: is the sandbox still running?",
                ),
            });
        }
        self.write(b"\n")
    }

    /// A symlink is its target, as text: git records it so, and it is never
    /// resolved here.
    fn add_symlink(&mut self, tree: &Tree, path: &Path) -> Result<(), DiffError> {
        let target = tree.read_link(path)?;
        let target = target.as_bytes();
        self.entry("120000", path, target.len() as u64)?;
        self.write(target)?;
        self.write(b"\n")
    }

    /// `M <mode> inline <path>` and the header of the data that follows.
    fn entry(&mut self, mode: &str, path: &Path, size: u64) -> Result<(), DiffError> {
        let mut line = format!("M {mode} inline ").into_bytes();
        quote(path.as_os_str().as_bytes(), &mut line);
        line.extend_from_slice(format!("\ndata {size}\n").as_bytes());
        self.write(&line)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), DiffError> {
        self.out.write_all(bytes).map_err(io_error(FEED))
    }
}

/// Appends `bytes` C-quoted, as fast-import reads a path: whatever bytes a
/// name holds (newlines, quotes, invalid UTF-8) arrive unchanged.
fn quote(bytes: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &byte in bytes {
        match byte {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', byte]),
            b' '..=b'~' => out.push(byte),
            _ => out.extend_from_slice(format!("\\{byte:03o}").as_bytes()),
        }
    }
    out.push(b'"');
}

// ---------------------------------------------------------------------------
// Reading untrusted trees

/// What an entry is, from lstat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File {
        executable: bool,
    },
    Symlink,
    /// FIFO, socket, device, whiteout.
    Special,
}

/// A directory tree read through a descriptor of its root: every lookup is
/// an openat2(2) that stays beneath the root, follows no symlink and
/// crosses no mount point, whatever the content does.
struct Tree {
    root: OwnedFd,
    /// For messages: which tree, and where.
    label: String,
}

fn resolve_beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

/// "." for the root itself: openat2 takes no empty path.
fn relative(path: &Path) -> &Path {
    if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    }
}

impl Tree {
    /// `path` is ours (a layer or a mount point), so it may be reached
    /// however the host's filesystem says. `label` names it in messages.
    fn open(path: &Path, label: &str) -> Result<Tree, DiffError> {
        let root = File::open(path).map_err(io_error(format!("open {label}")))?;
        Ok(Tree {
            root: root.into(),
            label: label.to_owned(),
        })
    }

    /// The directory at `path` as a tree of its own; None when nothing is
    /// there or it is not a real directory (e.g. a symlink to one).
    fn subtree(&self, path: &Path) -> Result<Option<Tree>, DiffError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
        match self.lookup(path, flags) {
            Ok(root) => Ok(Some(Tree {
                root,
                label: self.show(path),
            })),
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => Ok(None),
            Err(errno) => Err(self.error("open", path, errno)),
        }
    }

    fn lookup(&self, path: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(resolve_beneath());
        openat2(&self.root, relative(path), how)
    }

    /// lstat: None when nothing is there.
    fn kind(&self, path: &Path) -> Result<Option<Kind>, DiffError> {
        let entry = match self.lookup(path, OFlag::O_PATH | OFlag::O_NOFOLLOW) {
            Ok(entry) => entry,
            Err(Errno::ENOENT) => return Ok(None),
            Err(errno) => return Err(self.error("look up", path, errno)),
        };
        let stat = fstat(&entry).map_err(|errno| self.error("stat", path, errno))?;
        let kind = match SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) {
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFREG => Kind::File {
                executable: stat.st_mode & 0o100 != 0,
            },
            SFlag::S_IFLNK => Kind::Symlink,
            _ => Kind::Special,
        };
        Ok(Some(kind))
    }

    /// The names in directory `path`.
    fn names(&self, path: &Path) -> Result<BTreeSet<OsString>, DiffError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
        let fd = self
            .lookup(path, flags)
            .map_err(|errno| self.error("open directory", path, errno))?;
        let mut dir = Dir::from_fd(fd).map_err(|errno| self.error("read", path, errno))?;
        let mut names = BTreeSet::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|errno| self.error("read", path, errno))?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name != "." && name != ".." {
                names.insert(name.to_owned());
            }
        }
        Ok(names)
    }

    /// Opens a regular file for reading, with its size; None if `path` is
    /// not one (by the time it is opened). O_NONBLOCK: a FIFO swapped in
    /// never blocks.
    fn open_file(&self, path: &Path) -> Result<Option<(File, u64)>, DiffError> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
        let fd = match self.lookup(path, flags) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ELOOP | Errno::ENXIO) => return Ok(None),
            Err(errno) => return Err(self.error("open", path, errno)),
        };
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(io_error(format!("stat {}", self.show(path))))?;
        Ok(meta.is_file().then_some((file, meta.len())))
    }

    fn read_link(&self, path: &Path) -> Result<OsString, DiffError> {
        let entry = self
            .lookup(path, OFlag::O_PATH | OFlag::O_NOFOLLOW)
            .map_err(|errno| self.error("look up", path, errno))?;
        readlinkat(&entry, "").map_err(|errno| self.error("read link", path, errno))
    }

    fn show(&self, path: &Path) -> String {
        if path.as_os_str().is_empty() {
            self.label.clone()
        } else {
            format!("{}/{}", self.label, path.display())
        }
    }

    fn error(&self, action: &str, path: &Path, errno: Errno) -> DiffError {
        DiffError::Io {
            what: format!("{action} {}", self.show(path)),
            source: errno.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// git

/// Where `git` is looked for, in order.
const GIT_DIRS: [&str; 3] = ["/usr/local/bin", "/usr/bin", "/bin"];

/// Every attribute set back to unspecified, should a git read the trees'
/// `.gitattributes` (diff-tree in a bare repository reads none today):
/// `$GIT_DIR/info/attributes` overrides them all.
const NEUTRAL_ATTRIBUTES: &str =
    "* !text !eol !crlf !filter !ident !working-tree-encoding !diff !merge\n";

/// Configuration for every git command: nothing runs, and fast-import
/// writes one pack rather than a file per object.
const GIT_CONFIG: [&str; 5] = [
    "core.hooksPath=/dev/null",
    "core.attributesFile=/dev/null",
    "core.fsmonitor=false",
    "diff.external=",
    "fastimport.unpackLimit=0",
];

/// git, run in the scratch repository with an empty environment.
struct Git {
    program: PathBuf,
}

impl Git {
    fn locate() -> Result<Git, DiffError> {
        GIT_DIRS
            .iter()
            .map(|dir| Path::new(dir).join("git"))
            .find(|path| path.is_file())
            .map(|program| Git { program })
            .ok_or(DiffError::GitNotFound)
    }

    /// A bare repository without templates (no sample hooks), with
    /// neutral attributes.
    fn init(&self, scratch: &Scratch) -> Result<(), DiffError> {
        let mut init = self.command(scratch);
        init.args(["init", "--quiet", "--bare", "--template="]);
        self.run("init", init)?;
        let info = scratch.git_dir.join("info");
        fs::create_dir_all(&info).map_err(io_error(format!("create {}", info.display())))?;
        fs::write(info.join("attributes"), NEUTRAL_ATTRIBUTES)
            .map_err(io_error("write the scratch repository's attributes"))
    }

    /// Starts `git fast-import`, reading its stream from a pipe.
    fn fast_import(&self, scratch: &Scratch) -> Result<Import, DiffError> {
        let log = File::create(&scratch.import_log)
            .map_err(io_error(format!("create {}", scratch.import_log.display())))?;
        let mut command = self.command(scratch);
        command
            .args(["fast-import", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command.spawn().map_err(io_error(format!(
            "run {} fast-import",
            self.program.display()
        )))?;
        Ok(Import {
            child,
            log: scratch.import_log.clone(),
        })
    }

    /// The patch from the before commit to the after commit.
    fn diff(&self, scratch: &Scratch) -> Result<(), DiffError> {
        let out = File::create(&scratch.patch).map_err(io_error("create the patch"))?;
        let mut diff = self.command(scratch);
        diff.args(["diff-tree", "-r", "-p", "--binary", "--full-index"])
            .args([
                "--no-renames",
                "--no-ext-diff",
                "--no-textconv",
                BEFORE,
                AFTER,
            ])
            .stdout(out);
        self.run("diff-tree", diff)
    }

    fn command(&self, scratch: &Scratch) -> Command {
        let mut command = Command::new(&self.program);
        command
            .env_clear()
            .env("PATH", GIT_DIRS.join(":"))
            .env("HOME", &scratch.root)
            .env("LC_ALL", "C")
            .env("GIT_DIR", &scratch.git_dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_ATTR_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .current_dir(&scratch.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for setting in GIT_CONFIG {
            command.args(["-c", setting]);
        }
        command
    }

    fn run(&self, step: &'static str, mut command: Command) -> Result<(), DiffError> {
        let output = command
            .output()
            .map_err(io_error(format!("run {} {step}", self.program.display())))?;
        if output.status.success() {
            return Ok(());
        }
        Err(git_failed(step, output.status, &output.stderr))
    }
}

/// git's error, with the last lines of what it said, on one line.
fn git_failed(step: &'static str, status: ExitStatus, stderr: &[u8]) -> DiffError {
    let stderr = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    DiffError::Git {
        step,
        status,
        stderr: lines[lines.len().saturating_sub(3)..].join(" | "),
    }
}

/// A running `git fast-import`; killed and reaped if dropped unfinished.
struct Import {
    child: Child,
    log: PathBuf,
}

impl Import {
    /// The pipe to write the stream to; closing it ends the stream.
    fn stream(&mut self) -> Result<ChildStdin, DiffError> {
        self.child.stdin.take().ok_or(DiffError::Io {
            what: "open a pipe to git fast-import".into(),
            source: io::ErrorKind::BrokenPipe.into(),
        })
    }

    /// Waits for git to take the stream. The stream's own error wins,
    /// unless it broke because git had failed.
    fn finish(
        mut self,
        streamed: Result<BTreeSet<PathBuf>, DiffError>,
    ) -> Result<BTreeSet<PathBuf>, DiffError> {
        let status = self
            .child
            .wait()
            .map_err(io_error("wait for git fast-import"))?;
        let imported = if status.success() {
            Ok(())
        } else {
            Err(git_failed(
                "fast-import",
                status,
                &fs::read(&self.log).unwrap_or_default(),
            ))
        };
        match (streamed, imported) {
            (Ok(skipped), Ok(())) => Ok(skipped),
            (Err(DiffError::Io { source, .. }), Err(failed))
                if source.kind() == io::ErrorKind::BrokenPipe =>
            {
                Err(failed)
            }
            (Err(error), _) | (Ok(_), Err(error)) => Err(error),
        }
    }
}

impl Drop for Import {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// The summary

/// Counts lines starting with `diff --git ` without holding the patch in
/// memory. No other line of a git patch can start that way: content lines
/// start with ` `, `+` or `-`, and binary hunks use an alphabet without
/// spaces.
fn count_file_headers(patch: &Path) -> Result<usize, DiffError> {
    let file = File::open(patch).map_err(io_error("read the patch back"))?;
    count_headers(BufReader::new(file)).map_err(io_error("read the patch back"))
}

fn count_headers(mut reader: impl BufRead) -> io::Result<usize> {
    const HEADER: &[u8] = b"diff --git ";
    let mut count = 0;
    // Some(n): at the start of a line, with the header's first n bytes seen.
    let mut matched = Some(0);
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(count);
        }
        let mut at = 0;
        while at < chunk.len() {
            if let Some(seen) = matched {
                let want = &HEADER[seen..];
                let have = &chunk[at..chunk.len().min(at + want.len())];
                if want.starts_with(have) {
                    at += have.len();
                    matched = Some(seen + have.len());
                    if seen + have.len() == HEADER.len() {
                        count += 1;
                        matched = None;
                    }
                    continue;
                }
                matched = None;
            }
            match memchr::memchr(b'\n', &chunk[at..]) {
                Some(offset) => {
                    at += offset + 1;
                    matched = Some(0);
                }
                None => at = chunk.len(),
            }
        }
        let used = chunk.len();
        reader.consume(used);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::symlink as ln;

    use nix::sys::stat::Mode;
    use nix::unistd::{geteuid, mkfifo};

    use super::*;

    fn root_or_skip(test: &str) -> bool {
        if geteuid().is_root() {
            return true;
        }
        eprintln!("SKIP: needs root (overlay mounts): {test}");
        false
    }

    /// Runs `f` on a thread with a private mount namespace of its own: the
    /// test's mounts go away with it.
    fn in_private_namespace<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    unshare(CloneFlags::CLONE_NEWNS).unwrap();
                    mount(
                        None::<&str>,
                        "/",
                        None::<&str>,
                        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                        None::<&str>,
                    )
                    .unwrap();
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A directory for one test, removed at the end (after the namespace
    /// thread, so after its mounts, is gone).
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(tag: &str) -> TestDir {
            static SEQUENCE: AtomicUsize = AtomicUsize::new(0);
            let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "tollgate-diff-test-{tag}-{}-{n}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TestDir(path)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Layout {
        /// The layers live inside the base's tree, as they do with the
        /// default base `/` and a state directory on the root filesystem.
        LayersInsideBase,
        /// The base is a filesystem of its own.
        BaseOnItsOwnFilesystem,
    }

    /// Real phases of a run: a base with a workspace `ws`, the setup and
    /// agent phases' upper dirs, made through real overlay mounts.
    struct Lab {
        base: PathBuf,
        setup_upper: PathBuf,
        agent_upper: PathBuf,
        layers: PathBuf,
        mnt: PathBuf,
        /// What the phases stack their layers on: the base, or (layers
        /// inside it) an overlay of it, as overlayfs requires.
        base_layer: PathBuf,
        out: PathBuf,
    }

    impl Lab {
        /// Must run in a private mount namespace.
        fn new(dir: &Path, layout: Layout) -> Lab {
            let layers = dir.join("layers");
            let mnt = dir.join("mnt");
            let base = match layout {
                Layout::LayersInsideBase => dir.to_path_buf(),
                Layout::BaseOnItsOwnFilesystem => dir.join("base"),
            };
            for d in [&layers, &mnt, &base, &dir.join("out")] {
                fs::create_dir_all(d).unwrap();
            }
            for name in ["setup-upper", "setup-work", "agent-upper", "agent-work"] {
                fs::create_dir(layers.join(name)).unwrap();
            }
            mount(
                Some("tmpfs"),
                &mnt,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
            for name in ["empty", "wrapped", "merged", "view"] {
                fs::create_dir(mnt.join(name)).unwrap();
            }
            let base_layer = match layout {
                Layout::BaseOnItsOwnFilesystem => {
                    mount(
                        Some("tmpfs"),
                        &base,
                        Some("tmpfs"),
                        MsFlags::empty(),
                        None::<&str>,
                    )
                    .unwrap();
                    base.clone()
                }
                Layout::LayersInsideBase => mnt.join("wrapped"),
            };
            let lab = Lab {
                base,
                setup_upper: layers.join("setup-upper"),
                agent_upper: layers.join("agent-upper"),
                layers,
                out: dir.join("out").join("diff.patch"),
                base_layer,
                mnt,
            };
            lab.build_base();
            if layout == Layout::LayersInsideBase {
                let options = format!(
                    "lowerdir={}:{}",
                    lab.base.display(),
                    lab.mnt.join("empty").display()
                );
                mount_overlay(&lab.base_layer, &options);
            }
            lab
        }

        fn build_base(&self) {
            let ws = self.base.join("ws");
            write(&ws.join(".git/HEAD"), "ref: refs/heads/main\n");
            write(&ws.join("README.md"), "hello\n");
            write(&ws.join("src/main.c"), "int main() { return 0; }\n");
            write(&ws.join("src/util.c"), "int util;\n");
            write(&ws.join("script.sh"), "#!/bin/sh\necho hi\n");
            write(&ws.join("tool"), "#!/bin/sh\n");
            fs::set_permissions(ws.join("tool"), Permissions::from_mode(0o755)).unwrap();
            fs::write(ws.join("data.bin"), binary(1)).unwrap();
            write(&ws.join("link_me.txt"), "will become a link\n");
            write(&ws.join("to_delete.txt"), "bye\n");
            write(&ws.join("setup_deleted.txt"), "setup removes me\n");
            write(&ws.join("lib/a.txt"), "a\n");
            write(&ws.join("lib/b.txt"), "b\n");
            write(&ws.join("lib/same.txt"), "same\n");
            write(&ws.join("lib/sub/deep.txt"), "deep\n");
            write(&ws.join("setupdir/old.txt"), "old\n");
            write(&ws.join("vendor/lib.c"), "int lib;\n");
            ln("src/main.c", ws.join("rel_link")).unwrap();
        }

        fn lowerdir(&self, above: &[&Path]) -> String {
            above
                .iter()
                .map(|p| p.display().to_string())
                .chain([self.base_layer.display().to_string()])
                .collect::<Vec<_>>()
                .join(":")
        }

        /// One phase: `change` edits the workspace through an overlay of
        /// `above` over the base, writing to `upper`.
        fn phase(&self, above: &[&Path], upper: &Path, extra: &str, change: impl FnOnce(&Path)) {
            let work = upper.with_file_name(
                upper
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .replace("upper", "work"),
            );
            let merged = self.mnt.join("merged");
            let options = format!(
                "lowerdir={},upperdir={},workdir={}{extra}",
                self.lowerdir(above),
                upper.display(),
                work.display()
            );
            mount(
                Some("overlay"),
                &merged,
                Some("overlay"),
                MsFlags::empty(),
                Some(options.as_str()),
            )
            .unwrap();
            change(&merged.join("ws"));
            detach(&merged);
        }

        /// The workspace as the layers `above` over the base show it,
        /// copied (`cp -a`: symlinks stay symlinks) to `dest`.
        fn copy_workspace(&self, above: &[&Path], dest: &Path) {
            let view = self.mnt.join("view");
            let empty = self.mnt.join("empty");
            let lower = format!("{}:{}", self.lowerdir(above), empty.display());
            mount_overlay(&view, &format!("lowerdir={lower}"));
            let status = Command::new("cp")
                .arg("-a")
                .arg(view.join("ws"))
                .arg(dest)
                .status()
                .unwrap();
            assert!(status.success());
            detach(&view);
        }

        fn diff(&self, lower: &[PathBuf]) -> (DiffSummary, String) {
            let layers = DiffLayers {
                lower,
                upper: &self.agent_upper,
            };
            let summary = write_agent_diff(&layers, Path::new("ws"), &self.out).unwrap();
            let patch = fs::read(&self.out).unwrap();
            (summary, String::from_utf8_lossy(&patch).into_owned())
        }

        fn setup_and_base(&self) -> Vec<PathBuf> {
            vec![self.setup_upper.clone(), self.base.clone()]
        }

        /// `git apply` of `patch` onto the post-setup workspace gives the
        /// post-agent workspace (what a patch can carry of it).
        fn assert_patch_replays_agent(&self, above_before: &[&Path], above_after: &[&Path]) {
            let replayed = self.layers.join("replayed");
            let expected = self.layers.join("expected");
            self.copy_workspace(above_before, &replayed);
            self.copy_workspace(above_after, &expected);
            fs::remove_dir_all(replayed.join(".git")).unwrap();
            let output = git_in(&replayed)
                .args(["apply", "--whitespace=nowarn"])
                .arg(&self.out)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "git apply: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert_eq!(tree_contents(&replayed), tree_contents(&expected));
        }
    }

    /// Lazily: another test thread's process may hold a copy of our
    /// descriptors for a moment, between its fork and exec.
    fn detach(target: &Path) {
        umount2(target, MntFlags::MNT_DETACH).unwrap();
    }

    fn mount_overlay(target: &Path, options: &str) {
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::MS_RDONLY,
            Some(options),
        )
        .unwrap();
    }

    fn git_in(dir: &Path) -> Command {
        let mut command = Command::new("git");
        command
            .current_dir(dir)
            .env_clear()
            .env("PATH", GIT_DIRS.join(":"))
            .env("HOME", dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CEILING_DIRECTORIES", dir.parent().unwrap());
        command
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn binary(seed: u8) -> Vec<u8> {
        (0..4000u32)
            .map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 8) as u8)
            .collect()
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, Permissions::from_mode(mode)).unwrap();
    }

    /// Files and symlinks under `root` (not directories, FIFOs or anything
    /// under a `.git`), each with its content or target and exec bit.
    fn tree_contents(root: &Path) -> BTreeMap<PathBuf, String> {
        let mut found = BTreeMap::new();
        let mut pending = vec![PathBuf::new()];
        while let Some(rel) = pending.pop() {
            for entry in fs::read_dir(root.join(&rel)).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name();
                if name.as_bytes().eq_ignore_ascii_case(b".git") {
                    continue;
                }
                let path = rel.join(&name);
                let meta = entry.metadata().unwrap();
                if meta.is_dir() {
                    pending.push(path);
                } else if meta.file_type().is_symlink() {
                    let target = fs::read_link(entry.path()).unwrap();
                    found.insert(path, format!("link -> {}", target.display()));
                } else if meta.is_file() {
                    let exec = meta.permissions().mode() & 0o100 != 0;
                    let content = fs::read(entry.path()).unwrap();
                    found.insert(path, format!("exec={exec} {content:?}"));
                }
            }
        }
        found
    }

    /// The patch cut into its per-file sections, by path (a type change's
    /// two sections together).
    fn sections(patch: &str) -> BTreeMap<String, String> {
        let mut found: BTreeMap<String, String> = BTreeMap::new();
        let mut current = None;
        for line in patch.split_inclusive('\n') {
            if let Some(rest) = line.strip_prefix("diff --git a/") {
                current = Some(rest.split(" b/").next().unwrap().to_owned());
            }
            if let Some(path) = &current {
                found.entry(path.clone()).or_default().push_str(line);
            }
        }
        found
    }

    fn setup_changes(ws: &Path) {
        fs::remove_file(ws.join("setup_deleted.txt")).unwrap();
        fs::remove_dir_all(ws.join("setupdir")).unwrap();
        write(&ws.join("setupdir/new.txt"), "from setup\n");
        write(&ws.join("from_setup.txt"), "setup\n");
        write(&ws.join("README.md"), "hello from setup\n");
        write(&ws.join("setup_only/x.txt"), "x\n");
    }

    fn agent_changes(ws: &Path) {
        write(&ws.join("src/main.c"), "int main() { return 1; }\n");
        write(&ws.join("newdir/deep/new.txt"), "untracked\n");
        fs::remove_file(ws.join("to_delete.txt")).unwrap();
        fs::remove_file(ws.join("from_setup.txt")).unwrap();
        chmod(&ws.join("script.sh"), 0o755);
        chmod(&ws.join("tool"), 0o644);
        fs::remove_file(ws.join("link_me.txt")).unwrap();
        ln("src/main.c", ws.join("link_me.txt")).unwrap();
        fs::write(ws.join("data.bin"), binary(3)).unwrap();
        fs::write(ws.join("new.bin"), binary(5)).unwrap();
        fs::write(ws.join("big.bin"), binary(7).repeat(1000)).unwrap();
        write(&ws.join("empty.txt"), "");
        fs::remove_dir_all(ws.join("lib")).unwrap();
        write(&ws.join("lib/a.txt"), "A changed\n");
        write(&ws.join("lib/same.txt"), "same\n");
        write(&ws.join("lib/c.txt"), "c\n");
        write(&ws.join(".git/HEAD"), "ref: refs/heads/agent\n");
        write(&ws.join(".git/objects/xx"), "object\n");
        mkfifo(&ws.join("pipe"), Mode::from_bits_truncate(0o644)).unwrap();
        ln("/etc/passwd", ws.join("passwd")).unwrap();
        write(&ws.join("setupdir/new.txt"), "from setup, then agent\n");
        write(&ws.join("vendor/.git/HEAD"), "ref: refs/heads/main\n");
        write(&ws.join("vendor/new.c"), "int new;\n");
        fs::remove_file(ws.join("rel_link")).unwrap();
        ln("README.md", ws.join("rel_link")).unwrap();
    }

    fn agent_changes_come_out_as_a_patch_that_replays(layout: Layout) {
        let dir = TestDir::new("replay");
        in_private_namespace(|| {
            let lab = Lab::new(&dir.0, layout);
            let setup = lab.setup_upper.as_path();
            lab.phase(&[], setup, "", setup_changes);
            lab.phase(&[setup], &lab.agent_upper, "", agent_changes);

            let (summary, patch) = lab.diff(&lab.setup_and_base());

            let sections = sections(&patch);
            let paths: Vec<&str> = sections.keys().map(String::as_str).collect();
            assert_eq!(
                paths,
                [
                    "big.bin",
                    "data.bin",
                    "empty.txt",
                    "from_setup.txt",
                    "lib/a.txt",
                    "lib/b.txt",
                    "lib/c.txt",
                    "lib/sub/deep.txt",
                    "link_me.txt",
                    "new.bin",
                    "newdir/deep/new.txt",
                    "passwd",
                    "rel_link",
                    "script.sh",
                    "setupdir/new.txt",
                    "src/main.c",
                    "to_delete.txt",
                    "tool",
                    "vendor/new.c",
                ]
            );
            let has = |path: &str, text: &str| sections[path].contains(text);
            assert!(has("src/main.c", "+int main() { return 1; }"));
            assert!(!has("src/main.c", "new file") && !has("src/main.c", "deleted file"));
            assert!(has("newdir/deep/new.txt", "new file mode 100644"));
            assert!(has("to_delete.txt", "deleted file mode 100644"));
            assert!(has("from_setup.txt", "deleted file mode 100644"));
            assert!(has("script.sh", "old mode 100644\nnew mode 100755"));
            assert!(has("tool", "old mode 100755\nnew mode 100644"));
            assert!(has("link_me.txt", "deleted file mode 100644"));
            assert!(has("link_me.txt", "new file mode 120000"));
            assert!(has("data.bin", "GIT binary patch"));
            assert!(has("new.bin", "new file mode 100644") && has("new.bin", "GIT binary patch"));
            assert!(has("big.bin", "GIT binary patch") && has("empty.txt", "new file mode 100644"));
            assert!(has("lib/b.txt", "deleted file") && has("lib/c.txt", "new file"));
            assert!(has("passwd", "new file mode 120000") && has("passwd", "+/etc/passwd"));
            assert!(has("rel_link", "-src/main.c") && has("rel_link", "+README.md"));
            let passwd = fs::read_to_string("/etc/passwd").unwrap();
            assert!(!patch.contains(passwd.lines().next().unwrap()));
            assert_eq!(summary.files_changed, patch.matches("diff --git ").count());
            assert_eq!(summary.files_changed, 20, "link_me.txt counts twice");
            assert_eq!(summary.bytes, patch.len() as u64);
            assert_eq!(summary.skipped, 2, "the FIFO and vendor/.git");
            assert_eq!(
                fs::metadata(&lab.out).unwrap().permissions().mode() & 0o777,
                0o644
            );
            assert_nothing_left_behind(&lab);

            lab.assert_patch_replays_agent(&[setup], &[&lab.agent_upper, setup]);
        });
    }

    /// No mount of the diff in this namespace or the process's, and no
    /// scratch directory next to the patch.
    fn assert_nothing_left_behind(lab: &Lab) {
        for table in ["/proc/thread-self/mountinfo", "/proc/self/mountinfo"] {
            let mounts = fs::read_to_string(table).unwrap();
            assert!(!mounts.contains(".tollgate-diff-"), "{table}: {mounts}");
        }
        let out_dir = lab.out.parent().unwrap();
        let names: Vec<_> = fs::read_dir(out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["diff.patch"]);
    }

    #[test]
    fn agent_changes_replay_with_layers_inside_the_base_as_with_base_slash() {
        if root_or_skip("agent_changes_replay_with_layers_inside_the_base") {
            agent_changes_come_out_as_a_patch_that_replays(Layout::LayersInsideBase);
        }
    }

    #[test]
    fn agent_changes_replay_with_the_base_on_its_own_filesystem() {
        if root_or_skip("agent_changes_replay_with_the_base_on_its_own_filesystem") {
            agent_changes_come_out_as_a_patch_that_replays(Layout::BaseOnItsOwnFilesystem);
        }
    }

    #[test]
    fn changes_outside_the_workspace_or_undone_inside_it_give_an_empty_patch() {
        if !root_or_skip("changes_outside_the_workspace_or_undone_inside_it_give_an_empty_patch") {
            return;
        }
        let dir = TestDir::new("empty");
        in_private_namespace(|| {
            let lab = Lab::new(&dir.0, Layout::BaseOnItsOwnFilesystem);
            let lower = [lab.base.clone()];
            let (summary, patch) = lab.diff(&lower);
            assert_eq!(
                (summary.files_changed, summary.bytes, patch.as_str()),
                (0, 0, "")
            );

            lab.phase(&[], &lab.agent_upper, "", |ws| {
                write(&ws.with_file_name("elsewhere.txt"), "outside\n");
                write(&ws.join("scratch.txt"), "gone again\n");
                fs::remove_file(ws.join("scratch.txt")).unwrap();
                write(&ws.join("README.md"), "hello\n");
            });
            let (summary, patch) = lab.diff(&lower);
            assert_eq!(
                summary,
                DiffSummary {
                    files_changed: 0,
                    bytes: 0,
                    skipped: 0
                }
            );
            assert_eq!(patch, "");
            assert_nothing_left_behind(&lab);
        });
    }

    #[test]
    fn a_hostile_workspace_cannot_make_git_run_or_convert_anything() {
        if !root_or_skip("a_hostile_workspace_cannot_make_git_run_or_convert_anything") {
            return;
        }
        let dir = TestDir::new("hostile");
        let marker = std::env::temp_dir().join(format!("PWNED-{}", std::process::id()));
        let _ = fs::remove_file(&marker);
        let evil_config = format!(
            "[core]\n\tfsmonitor = touch {m}\n\thooksPath = hooks\n\
             [filter \"evil\"]\n\tclean = touch {m}\n\tsmudge = touch {m}\n\trequired = true\n\
             [diff \"evil\"]\n\ttextconv = touch {m}\n\tcommand = touch {m}\n",
            m = marker.display()
        );
        let hook = format!("#!/bin/sh\ntouch {}\n", marker.display());
        in_private_namespace(|| {
            let lab = Lab::new(&dir.0, Layout::BaseOnItsOwnFilesystem);
            let ws = lab.base.join("ws");
            write(&ws.join(".git/config"), &evil_config);
            write(&ws.join(".git/hooks/pre-commit"), &hook);
            chmod(&ws.join(".git/hooks/pre-commit"), 0o755);
            write(&ws.join("crlf.txt"), "line one\r\n");
            lab.phase(&[], &lab.agent_upper, "", |ws| {
                write(
                    &ws.join(".gitattributes"),
                    "* filter=evil diff=evil text eol=crlf ident working-tree-encoding=UTF-16\n",
                );
                write(&ws.join(".gitignore"), "*\n");
                write(&ws.join(".git/config"), &evil_config);
                write(&ws.join("sub/.git/config"), &evil_config);
                write(&ws.join("sub/.GIT"), "gitdir: ../.git\n");
                write(&ws.join("crlf.txt"), "line one\r\nline two $Id: cafe $\r\n");
                write(&ws.join("ignored.txt"), "still in the patch\n");
                write(&ws.join("GIT~1/config"), &evil_config);
                write(&ws.join(".git. "), "refused on NTFS\n");
                write(&ws.join(".gi\u{200d}t"), "refused on HFS+\n");
                ln("README.md", ws.join(".gitmodules")).unwrap();
            });

            let (summary, patch) = lab.diff(std::slice::from_ref(&lab.base));

            assert!(!marker.exists(), "a command from the workspace ran");
            let sections = sections(&patch);
            let paths: Vec<&str> = sections.keys().map(String::as_str).collect();
            assert_eq!(
                paths,
                [".gitattributes", ".gitignore", "crlf.txt", "ignored.txt"]
            );
            assert!(sections["crlf.txt"].contains("+line two $Id: cafe $\r\n"));
            assert!(sections["crlf.txt"].contains(" line one\r\n"));
            assert_eq!(
                summary.skipped, 6,
                "sub/.git, sub/.GIT and the names git refuses"
            );
            let replayed = lab.layers.join("replayed");
            lab.copy_workspace(&[], &replayed);
            fs::remove_dir_all(replayed.join(".git")).unwrap();
            let apply = git_in(&replayed)
                .arg("apply")
                .arg(&lab.out)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&apply.stderr);
            assert!(apply.status.success(), "git apply: {stderr}");
            assert!(
                !marker.exists(),
                "applying ran a command from the workspace"
            );
        });
    }

    #[test]
    fn a_renamed_directory_is_diffed_through_its_redirect() {
        if !root_or_skip("a_renamed_directory_is_diffed_through_its_redirect") {
            return;
        }
        let dir = TestDir::new("redirect");
        in_private_namespace(|| {
            let lab = Lab::new(&dir.0, Layout::BaseOnItsOwnFilesystem);
            write(&lab.base.join("ws/old/x"), "moved\n");
            write(&lab.base.join("ws/new/x"), "replaced\n");
            lab.phase(&[], &lab.agent_upper, ",redirect_dir=on", |ws| {
                fs::remove_file(ws.join("new/x")).unwrap();
                fs::rename(ws.join("old"), ws.join("new")).unwrap();
            });

            let (_, patch) = lab.diff(std::slice::from_ref(&lab.base));

            let sections = sections(&patch);
            let paths: Vec<&str> = sections.keys().map(String::as_str).collect();
            assert_eq!(paths, ["new/x", "old/x"]);
            assert!(sections["new/x"].contains("-replaced\n+moved\n"));
            assert!(sections["old/x"].contains("deleted file"));
            lab.assert_patch_replays_agent(&[], &[&lab.agent_upper]);
        });
    }

    #[test]
    fn a_workspace_removed_and_recreated_by_the_agent_is_diffed_whole() {
        if !root_or_skip("a_workspace_removed_and_recreated_by_the_agent_is_diffed_whole") {
            return;
        }
        let dir = TestDir::new("recreated");
        in_private_namespace(|| {
            let lab = Lab::new(&dir.0, Layout::LayersInsideBase);
            let setup = lab.setup_upper.as_path();
            lab.phase(&[], setup, "", setup_changes);
            lab.phase(&[setup], &lab.agent_upper, "", |ws| {
                fs::remove_dir_all(ws).unwrap();
                write(&ws.join("README.md"), "hello from setup\n");
                write(&ws.join("only.txt"), "all that is left\n");
                write(&ws.join("we\"ird \\ name\nwith a newline"), "odd\n");
                fs::write(ws.join(OsStr::from_bytes(b"not utf-8 \xff\x01")), "bytes\n").unwrap();
                write(&ws.join(".git/HEAD"), "ref: refs/heads/main\n");
            });

            let (_, patch) = lab.diff(&lab.setup_and_base());

            let sections = sections(&patch);
            assert!(sections["only.txt"].contains("new file"));
            assert!(sections["src/main.c"].contains("deleted file"));
            assert!(!sections.contains_key("README.md"), "unchanged");
            assert!(!sections.keys().any(|p| p.starts_with(".git/")));
            lab.assert_patch_replays_agent(&[setup], &[&lab.agent_upper, setup]);
        });
    }

    #[test]
    fn a_workspace_swapped_for_a_symlink_to_the_host_is_not_followed() {
        if !root_or_skip("a_workspace_swapped_for_a_symlink_to_the_host_is_not_followed") {
            return;
        }
        let dir = TestDir::new("swapped");
        let host = dir.0.join("host");
        write(&host.join("inner/secret.txt"), "host secret\n");
        in_private_namespace(|| {
            let lab = Lab::new(&dir.0, Layout::BaseOnItsOwnFilesystem);
            write(&lab.base.join("ws/inner/file.txt"), "workspace\n");
            lab.phase(&[], &lab.agent_upper, "", |ws| {
                fs::remove_dir_all(ws).unwrap();
                ln(&host, ws).unwrap();
            });
            let layers = DiffLayers {
                lower: std::slice::from_ref(&lab.base),
                upper: &lab.agent_upper,
            };

            write_agent_diff(&layers, Path::new("ws/inner"), &lab.out).unwrap();

            let patch = fs::read_to_string(&lab.out).unwrap();
            assert!(patch.contains("deleted file mode 100644"), "{patch}");
            assert!(!patch.contains("secret"), "{patch}");
        });
    }

    #[test]
    fn paths_overlayfs_cannot_take_are_refused() {
        let lower = [PathBuf::from("/tmp/a:b")];
        let layers = DiffLayers {
            lower: &lower,
            upper: Path::new("/tmp"),
        };
        let error = write_agent_diff(&layers, Path::new("ws"), Path::new("/tmp/x.patch"));
        assert!(matches!(error, Err(DiffError::UnsafePath(p)) if p == Path::new("/tmp/a:b")));
    }

    #[test]
    fn a_workspace_outside_the_root_is_refused() {
        let lower = [PathBuf::from("/")];
        let layers = DiffLayers {
            lower: &lower,
            upper: Path::new("/tmp"),
        };
        for workspace in ["../etc", "workspace/../../etc", "/", ""] {
            let error = write_agent_diff(&layers, Path::new(workspace), Path::new("/tmp/x.patch"));
            assert!(matches!(error, Err(DiffError::Workspace(_))), "{workspace}");
        }
        assert_eq!(
            workspace_path(Path::new("/workspace/repo")).unwrap(),
            Path::new("workspace/repo")
        );
    }

    #[test]
    fn no_lower_layer_is_refused() {
        let layers = DiffLayers {
            lower: &[],
            upper: Path::new("/tmp"),
        };
        let error = write_agent_diff(&layers, Path::new("ws"), Path::new("/tmp/x.patch"));
        assert!(matches!(error, Err(DiffError::NoLowerLayers)));
    }

    #[test]
    fn paths_reach_fast_import_byte_for_byte() {
        let mut quoted = Vec::new();
        quote(b"a\"b\\c\nd \xff\x01~", &mut quoted);
        assert_eq!(quoted, b"\"a\\\"b\\\\c\\012d \\377\\001~\"");
    }

    #[test]
    fn file_headers_are_counted_across_read_boundaries() {
        let patch = b"diff --git a/x b/x\n+diff --git no\n diff --git no\ndiff --git a/y b/y\nliteral 3\ndiff --gi";
        for capacity in 1..patch.len() {
            let reader = BufReader::with_capacity(capacity, &patch[..]);
            assert_eq!(count_headers(reader).unwrap(), 2, "capacity {capacity}");
        }
        assert_eq!(count_headers(&b""[..]).unwrap(), 0);
    }

    #[test]
    fn names_git_refuses_are_left_out_and_others_kept() {
        assert_eq!(verdict(Path::new(".git")), Verdict::Exclude);
        for refused in [
            ".GIT",
            "vendor/.git",
            "vendor/.Git/HEAD",
            "GIT~1",
            "a/.git.",
            ".git . ",
            ".git::$INDEX_ALLOCATION",
            ".g\u{200c}it",
            "x\\.git",
        ] {
            assert_eq!(verdict(Path::new(refused)), Verdict::Skip, "{refused:?}");
        }
        for kept in [
            ".github/workflows",
            "src/.gitignore",
            "git~10",
            ".gitx",
            "git",
            "a.git",
        ] {
            assert_eq!(verdict(Path::new(kept)), Verdict::Keep, "{kept:?}");
        }
        assert_eq!(
            verdict(&Path::new("a/").join("b".repeat(MAX_PATH_BYTES))),
            Verdict::Skip
        );
        for refused in [".gitmodules", ".GitModules. ", "GITMOD~1", "gi7eba~3"] {
            assert!(names_gitmodules(OsStr::new(refused)), "{refused:?}");
        }
        assert!(!names_gitmodules(OsStr::new(".gitmodules.bak")));
    }

    /// A measurement, not a test: `cargo test -p tollgate-sandbox --lib
    /// diff -- --ignored --nocapture`.
    #[test]
    #[ignore = "measurement: run with --ignored --nocapture"]
    fn a_thousand_changed_files_take_this_long() {
        if !root_or_skip("a_thousand_changed_files_take_this_long") {
            return;
        }
        let dir = TestDir::new("measure");
        in_private_namespace(|| {
            let lab = Lab::new(&dir.0, Layout::LayersInsideBase);
            for i in 0..1000 {
                write(
                    &lab.base.join(format!("ws/many/{}/f{i}.txt", i % 20)),
                    "old line\n",
                );
            }
            lab.phase(&[], &lab.agent_upper, "", |ws| {
                for i in 0..1000 {
                    write(&ws.join(format!("many/{}/f{i}.txt", i % 20)), "new line\n");
                }
            });
            let started = std::time::Instant::now();
            let (summary, _) = lab.diff(std::slice::from_ref(&lab.base));
            let elapsed = started.elapsed();
            assert_eq!(summary.files_changed, 1000);
            eprintln!(
                "diff of 1000 changed files: {elapsed:?} ({} bytes)",
                summary.bytes
            );
        });
    }
}
