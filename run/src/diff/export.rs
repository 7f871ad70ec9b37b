//! The stream `git fast-import` reads: one commit per side.

use std::collections::BTreeSet;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::candidates::*;
use super::*;
use crate::tree::{Kind, Tree};

/// Where fast-import stores the two sides.
pub(super) const BEFORE: &str = "refs/tollgate/before";
pub(super) const AFTER: &str = "refs/tollgate/after";

/// What failed when writing to fast-import fails.
pub(super) const FEED: &str = "feed git fast-import";

/// Feeds `git fast-import`: one commit per side, each file's content inline
/// in the stream.
pub(super) struct Export {
    pub(super) out: BufWriter<Stream>,
    pub(super) skipped: BTreeSet<PathBuf>,
}

impl Export {
    pub(super) fn new(stream: Stream, skipped: BTreeSet<PathBuf>) -> Export {
        Export {
            out: BufWriter::with_capacity(1 << 16, stream),
            skipped,
        }
    }

    /// The whole stream: the candidates as they are in `before` and in
    /// `after` (None: the workspace is not there); returns the paths left
    /// out.
    pub(super) fn finish(
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

    pub(super) fn commit(
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
    pub(super) fn add(&mut self, tree: &Tree, path: &Path) -> Result<(), DiffError> {
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

    pub(super) fn add_file(
        &mut self,
        tree: &Tree,
        path: &Path,
        executable: bool,
    ) -> Result<(), DiffError> {
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
    pub(super) fn add_symlink(&mut self, tree: &Tree, path: &Path) -> Result<(), DiffError> {
        let target = tree.read_link(path)?;
        let target = target.as_bytes();
        self.entry("120000", path, target.len() as u64)?;
        self.write(target)?;
        self.write(b"\n")
    }

    /// `M <mode> inline <path>` and the header of the data that follows.
    pub(super) fn entry(&mut self, mode: &str, path: &Path, size: u64) -> Result<(), DiffError> {
        let mut line = format!("M {mode} inline ").into_bytes();
        quote(path.as_os_str().as_bytes(), &mut line);
        line.extend_from_slice(format!("\ndata {size}\n").as_bytes());
        self.write(&line)
    }

    pub(super) fn write(&mut self, bytes: &[u8]) -> Result<(), DiffError> {
        self.out.write_all(bytes).map_err(io_error(FEED))
    }
}

/// Appends `bytes` C-quoted, as fast-import reads a path: whatever bytes a
/// name holds (newlines, quotes, invalid UTF-8) arrive unchanged.
pub(super) fn quote(bytes: &[u8], out: &mut Vec<u8>) {
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
