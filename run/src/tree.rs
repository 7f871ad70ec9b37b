//! Reading trees whose content is untrusted (what a sandbox wrote): every
//! lookup is an `openat2(2)` that stays beneath the tree's root, follows no
//! symlink and crosses no mount point, whatever the content does; a
//! symlink's target is read as text, never resolved; only regular files are
//! opened, with `O_NOFOLLOW | O_NONBLOCK` and their type checked on the
//! descriptor, so a FIFO or device swapped in never blocks or acts. The
//! diff and the secret scan read layers through it.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat2, readlinkat, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, SFlag};
use thiserror::Error;

/// A lookup or read in a tree that failed.
#[derive(Debug, Error)]
#[error("{what}: {source}")]
pub struct TreeError {
    pub what: String,
    pub source: io::Error,
}

/// What an entry is, from lstat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
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
pub struct Tree {
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
    pub fn open(path: &Path, label: &str) -> Result<Tree, TreeError> {
        let root = File::open(path).map_err(|source| TreeError {
            what: format!("open {label}"),
            source,
        })?;
        Ok(Tree {
            root: root.into(),
            label: label.to_owned(),
        })
    }

    /// The directory at `path` as a tree of its own; None when nothing is
    /// there or it is not a real directory (e.g. a symlink to one).
    pub fn subtree(&self, path: &Path) -> Result<Option<Tree>, TreeError> {
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

    pub fn lookup(&self, path: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(resolve_beneath());
        openat2(&self.root, relative(path), how)
    }

    /// lstat: None when nothing is there.
    pub fn kind(&self, path: &Path) -> Result<Option<Kind>, TreeError> {
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
    pub fn names(&self, path: &Path) -> Result<BTreeSet<OsString>, TreeError> {
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
    pub fn open_file(&self, path: &Path) -> Result<Option<(File, u64)>, TreeError> {
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
        let fd = match self.lookup(path, flags) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ELOOP | Errno::ENXIO) => return Ok(None),
            Err(errno) => return Err(self.error("open", path, errno)),
        };
        let file = File::from(fd);
        let meta = file.metadata().map_err(|source| TreeError {
            what: format!("stat {}", self.show(path)),
            source,
        })?;
        Ok(meta.is_file().then_some((file, meta.len())))
    }

    pub fn read_link(&self, path: &Path) -> Result<OsString, TreeError> {
        let entry = self
            .lookup(path, OFlag::O_PATH | OFlag::O_NOFOLLOW)
            .map_err(|errno| self.error("look up", path, errno))?;
        readlinkat(&entry, "").map_err(|errno| self.error("read link", path, errno))
    }

    pub fn show(&self, path: &Path) -> String {
        if path.as_os_str().is_empty() {
            self.label.clone()
        } else {
            format!("{}/{}", self.label, path.display())
        }
    }

    pub fn error(&self, action: &str, path: &Path, errno: Errno) -> TreeError {
        TreeError {
            what: format!("{action} {}", self.show(path)),
            source: errno.into(),
        }
    }
}
