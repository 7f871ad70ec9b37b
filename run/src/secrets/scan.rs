//! The scan of a layer for secret values, before it is frozen into a
//! snapshot: files named by path and secret *name*, never by value.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memchr::memmem::Finder;
use nix::errno::Errno;
use nix::libc::off_t;
use nix::unistd::{lseek, Whence};

use super::{finder, Redactor, CHUNK};
use crate::tree::{Kind, Tree};

/// An entry of a scanned tree that holds a secret value: in its content, in
/// its name, or as a symlink, in its target.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// Relative to the scanned root. A part of a name that is a secret value
    /// shows as `***`, so the path itself never carries one.
    pub path: PathBuf,
    /// The secret's name, never its value.
    pub secret: String,
}

/// What [`scan_tree`] found. It holds paths and secret names only, so it may
/// be logged or written to a result file.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Sorted by path, then secret name.
    pub findings: Vec<Finding>,
    /// Regular files whose content, and symlinks whose target, was searched.
    pub files_scanned: u64,
    /// Bytes searched; holes of sparse files are not read.
    pub bytes_scanned: u64,
    /// Entries that could not be read (each logged with the reason), with
    /// secret values in their path shown as `***`. While this is not empty
    /// the tree is not proven clean.
    pub skipped: Vec<PathBuf>,
}

/// Files under `root` (a host directory tree that is untrusted content) that
/// contain a secret value: returns (path relative to root, secret NAME) pairs
/// — never the value. The tree is read through [`Tree`]: no symlink is ever
/// followed (a symlink's target text is checked as content too), FIFOs,
/// devices and sockets are never opened (no hang), and an entry swapped for
/// something else while the scan runs is refused, not followed. Regular
/// files are read in bounded chunks with overlap, so a value split across
/// chunk boundaries is found. Unreadable entries do not stop the scan: they
/// are collected as `skipped`. Empty values are ignored.
pub fn scan_tree(root: &Path, secrets: &[(String, Vec<u8>)]) -> ScanReport {
    let mut scan = Scan::new(secrets);
    if scan.needles.is_empty() {
        return ScanReport::default();
    }
    match Tree::open(root, &root.display().to_string()) {
        Ok(tree) => scan.walk(&tree),
        Err(error) => scan.skip(Path::new("."), &error.to_string()),
    }
    scan.finish()
}

/// One scan's state: the values looked for and the report so far.
pub(super) struct Scan<'a> {
    /// (secret name, searcher), for the secrets with a non-empty value.
    needles: Vec<(&'a str, Finder<'static>)>,
    /// Bytes kept from one chunk to the next: one less than the longest value.
    overlap: usize,
    /// Hides values in the names of reported paths.
    names: Redactor,
    /// Read buffer, reused for every file.
    buf: Vec<u8>,
    pub(super) report: ScanReport,
}

/// A directory still to be read: its path in the tree, and the path shown
/// for it (secret values in names as `***`).
struct Pending {
    path: PathBuf,
    shown: PathBuf,
}

impl<'a> Scan<'a> {
    pub(super) fn new(secrets: &'a [(String, Vec<u8>)]) -> Scan<'a> {
        let needles: Vec<_> = secrets
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), finder(value)?)))
            .collect();
        let max_len = needles.iter().map(|(_, f)| f.needle().len()).max();
        Scan {
            overlap: max_len.unwrap_or(0).saturating_sub(1),
            names: Redactor::new(secrets.iter().map(|(_, value)| value.clone())),
            needles,
            buf: Vec::with_capacity(CHUNK + max_len.unwrap_or(0)),
            report: ScanReport::default(),
        }
    }

    /// Depth first, with an explicit stack: a deep tree cannot overflow the
    /// thread's stack.
    fn walk(&mut self, tree: &Tree) {
        let mut stack = vec![Pending {
            path: PathBuf::new(),
            shown: PathBuf::new(),
        }];
        while let Some(dir) = stack.pop() {
            let names = match tree.names(&dir.path) {
                Ok(names) => names,
                Err(error) => {
                    self.skip(&dir.shown, &error.to_string());
                    continue;
                }
            };
            for name in names {
                let entry = Pending {
                    path: dir.path.join(&name),
                    shown: dir.shown.join(self.shown(&name)),
                };
                if self.entry(tree, &name, &entry) {
                    stack.push(entry);
                }
            }
        }
    }

    /// Searches one entry's name and, by its type, its content or target;
    /// true when it is a directory to read.
    fn entry(&mut self, tree: &Tree, name: &OsStr, entry: &Pending) -> bool {
        let mut hits = vec![false; self.needles.len()];
        self.search(name.as_bytes(), &mut hits);
        let read = match tree.kind(&entry.path) {
            Ok(Some(Kind::File { .. })) => self.scan_file(tree, &entry.path, &mut hits),
            Ok(Some(Kind::Symlink)) => self.scan_link(tree, &entry.path, &mut hits),
            Ok(_) => Ok(()),
            Err(error) => Err(error.to_string()),
        };
        self.record(&entry.shown, &hits);
        match read {
            Ok(()) => tree
                .kind(&entry.path)
                .is_ok_and(|kind| kind == Some(Kind::Dir)),
            Err(error) => {
                self.skip(&entry.shown, &error);
                false
            }
        }
    }

    /// A regular file's content, one data segment at a time: holes of a
    /// sparse file (which could make a tiny file claim exabytes) are skipped.
    pub(super) fn scan_file(
        &mut self,
        tree: &Tree,
        path: &Path,
        hits: &mut [bool],
    ) -> Result<(), String> {
        let Some((file, _)) = tree.open_file(path).map_err(|e| e.to_string())? else {
            return Err("no longer a regular file when opened (changed during the scan)".into());
        };
        let mut offset = 0;
        while let Some(start) = seek(&file, offset, Whence::SeekData).map_err(|e| e.to_string())? {
            let end = seek(&file, start, Whence::SeekHole)
                .map_err(|e| e.to_string())?
                .unwrap_or(start);
            if end <= start {
                break;
            }
            self.scan_range(&file, start, end, hits)
                .map_err(|e| e.to_string())?;
            offset = end;
        }
        self.report.files_scanned += 1;
        Ok(())
    }

    /// Reads `start..end` of `file` in chunks of at most [`CHUNK`] bytes,
    /// keeping the last `overlap` bytes of each in front of the next, so a
    /// value that straddles two chunks is seen whole.
    fn scan_range(
        &mut self,
        file: &File,
        start: u64,
        end: u64,
        hits: &mut [bool],
    ) -> io::Result<()> {
        self.buf.clear();
        let mut at = start;
        while at < end {
            let kept = self.buf.len();
            let want = usize::try_from(end - at).map_or(CHUNK, |left| left.min(CHUNK));
            self.buf.resize(kept + want, 0);
            let read = match file.read_at(&mut self.buf[kept..], at) {
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {
                    self.buf.truncate(kept);
                    continue;
                }
                Err(error) => return Err(error),
            };
            self.buf.truncate(kept + read);
            if read == 0 {
                break; // the file shrank since its data segments were looked up
            }
            search_all(&self.needles, &self.buf, hits);
            at += read as u64;
            self.report.bytes_scanned += read as u64;
            let consumed = self.buf.len().saturating_sub(self.overlap);
            self.buf.drain(..consumed);
        }
        Ok(())
    }

    /// A symlink's target is text the tree stores, like a file's content.
    fn scan_link(&mut self, tree: &Tree, path: &Path, hits: &mut [bool]) -> Result<(), String> {
        let target = tree.read_link(path).map_err(|e| e.to_string())?;
        self.search(target.as_bytes(), hits);
        self.report.files_scanned += 1;
        self.report.bytes_scanned += target.len() as u64;
        Ok(())
    }

    fn search(&self, hay: &[u8], hits: &mut [bool]) {
        search_all(&self.needles, hay, hits);
    }

    /// An entry name as it may be shown: any secret value in it as `***`.
    fn shown(&mut self, name: &OsStr) -> PathBuf {
        let mut shown = self.names.push(name.as_bytes());
        shown.extend(self.names.finish());
        PathBuf::from(OsStr::from_bytes(&shown))
    }

    fn record(&mut self, path: &Path, hits: &[bool]) {
        let found = self.needles.iter().zip(hits).filter(|(_, &hit)| hit);
        for ((secret, _), _) in found {
            self.report.findings.push(Finding {
                path: path.to_path_buf(),
                secret: (*secret).to_owned(),
            });
        }
    }

    /// `error` may name the entry's real path, which can hold a value: it
    /// is logged with values redacted, and the report keeps the shown path.
    fn skip(&mut self, path: &Path, error: &str) {
        let mut error = self.names.push(error.as_bytes());
        error.extend(self.names.finish());
        let error = String::from_utf8_lossy(&error);
        tracing::warn!(path = %path.display(), %error, "secret scan: cannot read this entry; skipped");
        self.report.skipped.push(path.to_path_buf());
    }

    fn finish(mut self) -> ScanReport {
        self.report.findings.sort();
        self.report.findings.dedup();
        self.report.skipped.sort();
        self.report.skipped.dedup();
        self.report
    }
}

/// Marks, in `hits`, each needle that occurs in `hay`.
fn search_all(needles: &[(&str, Finder<'static>)], hay: &[u8], hits: &mut [bool]) {
    for ((_, finder), hit) in needles.iter().zip(hits.iter_mut()) {
        if !*hit && finder.find(hay).is_some() {
            *hit = true;
        }
    }
}

/// lseek(2) with `SEEK_DATA` or `SEEK_HOLE`; `None` when there is no data at
/// or after `offset`.
fn seek(file: &File, offset: u64, whence: Whence) -> io::Result<Option<u64>> {
    let offset =
        off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    match lseek(file, offset, whence) {
        Ok(at) => Ok(u64::try_from(at).ok()),
        Err(Errno::ENXIO) => Ok(None),
        Err(error) => Err(error.into()),
    }
}
