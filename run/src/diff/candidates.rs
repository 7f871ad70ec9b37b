//! Which paths of the workspace changed, found from the agent's upper and
//! the views; which of them a patch can carry.

use std::collections::BTreeSet;
use std::ffi::OsStr;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;

use super::export::*;
use super::views::*;
use super::*;
use crate::tree::{Kind, Tree};

/// The workspace as seen in each view (None: not a directory on that side).
pub(super) struct Sides {
    pub(super) before: Option<Tree>,
    pub(super) after: Option<Tree>,
    pub(super) upper: Option<Tree>,
    pub(super) probe: Probe,
}

/// Streams the before and after versions of every candidate to
/// fast-import; returns the paths left out.
pub(super) fn export_changes(
    job: &Job,
    views: &Views,
    stream: Stream,
) -> Result<BTreeSet<PathBuf>, DiffError> {
    let ws = &job.workspace;
    let after = match &views.after {
        Some(after) => Tree::open(after, "(after the agent)")?.subtree(ws)?,
        None => None,
    };
    let upper = match &job.upper {
        Some(upper) => Tree::open(upper, &upper.display().to_string())?.subtree(ws)?,
        None => None,
    };
    let sides = Sides {
        before: Tree::open(&views.before, "(before the agent)")?.subtree(ws)?,
        after,
        upper,
        probe: Probe {
            tree: match &views.probe {
                Some(probe) => Some(Tree::open(probe, "(redirect probe)")?),
                None => None,
            },
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
pub(super) fn candidates(
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
pub(super) fn scan(
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
pub(super) fn keep(path: PathBuf, skipped: &mut BTreeSet<PathBuf>) -> Option<PathBuf> {
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
pub(super) enum Verdict {
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
pub(super) const MAX_PATH_BYTES: usize = 3072;

pub(super) fn verdict(path: &Path) -> Verdict {
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
pub(super) fn names_git_dir(name: &OsStr) -> bool {
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
pub(super) fn names_gitmodules(name: &OsStr) -> bool {
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
pub(super) fn folded(name: &OsStr) -> Vec<u8> {
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

pub(super) fn ignored_by_hfs(c: char) -> bool {
    matches!(c, '\u{200c}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{206a}'..='\u{206f}' | '\u{feff}')
}

/// The *after* view mounted with `redirect_dir=nofollow`: a lookup through
/// a directory the agent renamed fails with EPERM.
pub(super) struct Probe {
    /// None when nothing is there after the agent.
    pub(super) tree: Option<Tree>,
    pub(super) workspace: PathBuf,
}

impl Probe {
    /// Whether a lookup of `path` meets a redirect; false when it is not
    /// there as a real directory at all.
    pub(super) fn redirected(&self, path: &Path) -> Result<bool, DiffError> {
        let full: PathBuf = self
            .workspace
            .components()
            .chain(path.components())
            .collect();
        let Some(tree) = &self.tree else {
            return Ok(false);
        };
        match tree.lookup(&full, OFlag::O_PATH | OFlag::O_NOFOLLOW) {
            Ok(_) | Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => Ok(false),
            Err(Errno::EPERM) => Ok(true),
            Err(errno) => Err(tree.error("look up", &full, errno).into()),
        }
    }
}
