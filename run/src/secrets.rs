//! Keeping secret values out of logs, the terminal and cache snapshots.
//!
//! Secrets reach the setup and maintenance phases only (DESIGN.md,
//! invariant 7). A script may still print one, or write it to a file, by
//! mistake. Two guards stop such a value from going further:
//!
//! - [`Redactor`] sits on a phase's merged stdout+stderr stream, before it
//!   reaches the terminal and the phase log, and replaces every occurrence of
//!   a value with `***` (GitHub Actions' convention), also when an occurrence
//!   is split across reads of the pipe.
//! - [`scan_tree`] searches the phase's writable overlay layer before it is
//!   frozen into a snapshot, and reports the files that hold a value by path
//!   and secret *name*, never by value.
//!
//! Limits, stated plainly:
//! - Only the raw bytes of a value are matched. A value written in another
//!   form — base64, URL- or percent-encoded, hex, JSON- or shell-escaped
//!   (`set -x` quoting), compressed (a `.tar.gz`, a `.pyc`), or only in part —
//!   is not detected, in the stream or in the tree.
//! - Every process of a phase writes to the same pipe, so two writers can
//!   interleave inside a value; such an occurrence is not contiguous in the
//!   stream and is not found.
//! - A very short value matches unrelated text, which is then hidden too:
//!   that is the price of never showing it.
//! - The scan reads entry names, regular-file contents and symlink targets.
//!   It does not read extended attributes, and it skips the holes of sparse
//!   files (they read as zeros, so only a value ending in NUL bytes could run
//!   into one).
//!
//! Both are a safety net for mistakes, not a barrier against a setup script
//! that means to leak a secret: that script holds the value and may use the
//! setup phase's network policy.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memchr::memmem::Finder;
use nix::errno::Errno;
use nix::libc::off_t;
use nix::unistd::{lseek, Whence};

use crate::tree::{Kind, Tree};

/// What a secret value is replaced with (GitHub Actions' convention).
const MASK: &[u8] = b"***";

/// How much of a file is read at a time: memory stays bounded whatever the
/// file's size.
const CHUNK: usize = 64 * 1024;

/// A searcher for one value; `None` for an empty value, which would match
/// everywhere.
fn finder(value: &[u8]) -> Option<Finder<'static>> {
    (!value.is_empty()).then(|| Finder::new(value).into_owned())
}

/// Replaces every occurrence of any secret value in a byte stream with `***`
/// (GitHub Actions' convention), even when an occurrence is split across
/// writes.
///
/// Every byte that belongs to an occurrence of some value is hidden, and each
/// run of hidden bytes becomes one `***`. So of two nested values the longest
/// wins (with `tok` and `token`, `token` becomes `***`, not `***en`), two
/// occurrences that overlap are hidden together (no byte of either shows),
/// and a value repeated back to back shows as one `***`. The output does not
/// depend on how the stream is cut into chunks.
///
/// Its `Debug` shows how many values it holds: nothing of them, nor of the
/// bytes it holds back.
pub struct Redactor {
    finders: Vec<Finder<'static>>,
    /// The longest value's length: at most `max_len - 1` bytes are held back.
    max_len: usize,
    /// Bytes received and not yet emitted.
    pending: Vec<u8>,
    /// How many leading bytes of `pending` are already known to be hidden:
    /// an occurrence that started in bytes emitted earlier reaches into them.
    carry: usize,
    /// Whether the last byte emitted was hidden, so that a hidden byte next
    /// continues the same `***`.
    in_run: bool,
}

impl Redactor {
    /// Empty values are ignored: they would match everywhere.
    pub fn new(values: impl IntoIterator<Item = Vec<u8>>) -> Redactor {
        let mut values: Vec<Vec<u8>> = values.into_iter().collect();
        values.sort_unstable();
        values.dedup();
        Redactor {
            max_len: values.iter().map(Vec::len).max().unwrap_or(0),
            finders: values.iter().filter_map(|v| finder(v)).collect(),
            pending: Vec::new(),
            carry: 0,
            in_run: false,
        }
    }

    /// Feeds a chunk; returns the bytes that are safe to emit now (holds back
    /// at most max_len-1 bytes that could start a secret).
    ///
    /// Only a tail of the input that is the beginning of some value is held
    /// back, so text with no such tail comes out at once, whole.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        self.emit(self.hold_from())
    }

    /// End of stream: the rest, redacted. A held-back tail that never became
    /// a value is emitted as it is. The redactor is then ready for a new
    /// stream.
    pub fn finish(&mut self) -> Vec<u8> {
        let out = self.emit(self.pending.len());
        self.in_run = false;
        out
    }

    /// Where the held-back tail starts: the first position from which the
    /// rest of `pending` is a proper prefix of some value (so the next chunk
    /// could complete it), or the end when there is none.
    fn hold_from(&self) -> usize {
        let len = self.pending.len();
        let first = len.saturating_sub(self.max_len.saturating_sub(1));
        (first..len)
            .find(|&at| self.could_start(&self.pending[at..]))
            .unwrap_or(len)
    }

    fn could_start(&self, tail: &[u8]) -> bool {
        self.finders
            .iter()
            .map(Finder::needle)
            .any(|value| value.len() > tail.len() && value.starts_with(tail))
    }

    /// For each byte of `pending`: does it belong to an occurrence of a value?
    /// Overlapping occurrences count, so no byte of any of them shows.
    fn hidden(&self) -> Vec<bool> {
        let mut hidden = vec![false; self.pending.len()];
        hidden.iter_mut().take(self.carry).for_each(|h| *h = true);
        for finder in &self.finders {
            let len = finder.needle().len();
            let mut marked_to = 0;
            let mut from = 0;
            while let Some(found) = self.pending.get(from..).and_then(|hay| finder.find(hay)) {
                let start = from + found;
                let end = start + len;
                if let Some(bytes) = hidden.get_mut(start.max(marked_to)..end) {
                    bytes.fill(true);
                }
                marked_to = end;
                from = start + 1;
            }
        }
        hidden
    }

    /// Emits `pending[..cut]` with each run of hidden bytes replaced by
    /// `***`, and keeps the rest. Every occurrence that starts before `cut`
    /// is complete (see [`Self::hold_from`]), so what is emitted is final.
    fn emit(&mut self, cut: usize) -> Vec<u8> {
        let hidden = self.hidden();
        let mut out = Vec::with_capacity(cut);
        for (&byte, &is_hidden) in self.pending.iter().zip(&hidden).take(cut) {
            if !is_hidden {
                out.push(byte);
            } else if !self.in_run {
                out.extend_from_slice(MASK);
            }
            self.in_run = is_hidden;
        }
        self.carry = hidden.iter().skip(cut).take_while(|&&h| h).count();
        self.pending.drain(..cut);
        out
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("values", &self.finders.len())
            .finish_non_exhaustive()
    }
}

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
struct Scan<'a> {
    /// (secret name, searcher), for the secrets with a non-empty value.
    needles: Vec<(&'a str, Finder<'static>)>,
    /// Bytes kept from one chunk to the next: one less than the longest value.
    overlap: usize,
    /// Hides values in the names of reported paths.
    names: Redactor,
    /// Read buffer, reused for every file.
    buf: Vec<u8>,
    report: ScanReport,
}

/// A directory still to be read: its path in the tree, and the path shown
/// for it (secret values in names as `***`).
struct Pending {
    path: PathBuf,
    shown: PathBuf,
}

impl<'a> Scan<'a> {
    fn new(secrets: &'a [(String, Vec<u8>)]) -> Scan<'a> {
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
    fn scan_file(&mut self, tree: &Tree, path: &Path, hits: &mut [bool]) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::Duration;

    use nix::sys::stat::Mode;

    const VALUE: &[u8] = b"s3cr3t-VALUE-9f8e7d";

    fn redactor(values: &[&[u8]]) -> Redactor {
        Redactor::new(values.iter().map(|v| v.to_vec()))
    }

    /// Feeds `chunks` in order, then finishes.
    fn stream<'c>(r: &mut Redactor, chunks: impl IntoIterator<Item = &'c [u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(r.push(chunk));
        }
        out.extend(r.finish());
        out
    }

    fn once(values: &[&[u8]], text: &[u8]) -> Vec<u8> {
        stream(&mut redactor(values), [text])
    }

    /// The specification, naively: hide every byte of every occurrence of
    /// every value, one `***` per run of hidden bytes.
    fn reference(values: &[&[u8]], text: &[u8]) -> Vec<u8> {
        let mut hidden = vec![false; text.len()];
        for value in values.iter().filter(|v| !v.is_empty()) {
            for at in 0..text.len() {
                if text[at..].starts_with(value) {
                    hidden[at..at + value.len()].fill(true);
                }
            }
        }
        let mut out = Vec::new();
        for (at, (&byte, &h)) in text.iter().zip(&hidden).enumerate() {
            if !h {
                out.push(byte);
            } else if at == 0 || !hidden[at - 1] {
                out.extend_from_slice(b"***");
            }
        }
        out
    }

    #[test]
    fn redacts_a_value() {
        assert_eq!(
            once(&[VALUE], b"token=s3cr3t-VALUE-9f8e7d\n"),
            b"token=***\n"
        );
    }

    #[test]
    fn a_value_split_at_every_position_with_every_chunk_size() {
        let text = [b"<".as_slice(), VALUE, b">"].concat();
        for lead in 0..VALUE.len() {
            // `lead` bytes before the text move the value across chunk edges.
            let input = [vec![b'.'; lead], text.clone()].concat();
            let expected = [vec![b'.'; lead], b"<***>".to_vec()].concat();
            for size in 1..=VALUE.len() {
                let out = stream(&mut redactor(&[VALUE]), input.chunks(size));
                assert_eq!(out, expected, "lead {lead}, chunks of {size}");
            }
        }
    }

    #[test]
    fn every_two_and_three_way_split_gives_the_one_shot_output() {
        let values: [&[u8]; 3] = [b"abcab", b"cabx", b"bb"];
        let text = b"xabcabxabcabcabbbcaby";
        let expected = reference(&values, text);
        assert_eq!(once(&values, text), expected);
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let parts = [&text[..i], &text[i..j], &text[j..]];
                assert_eq!(
                    stream(&mut redactor(&values), parts),
                    expected,
                    "cut at {i} and {j}"
                );
            }
        }
    }

    /// A deterministic xorshift generator: failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, bound: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % bound as u64) as usize
        }

        fn word(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| b"ab\n"[self.below(3)]).collect()
        }
    }

    #[test]
    fn matches_the_naive_reference_on_random_streams() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5000 {
            let owned: Vec<Vec<u8>> = (0..3)
                .map(|_| {
                    let len = rng.below(6);
                    rng.word(len)
                })
                .collect();
            let values: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
            let len = rng.below(40);
            let text = rng.word(len);
            let mut chunks = Vec::new();
            let mut rest = text.as_slice();
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(1 + rng.below(rest.len()));
                chunks.push(chunk);
                rest = tail;
            }
            let out = stream(&mut redactor(&values), chunks.iter().copied());
            assert_eq!(
                out,
                reference(&values, &text),
                "values {owned:?}, text {text:?}"
            );
        }
    }

    #[test]
    fn several_values() {
        let out = once(&[b"alpha-1", b"beta-22"], b"a=alpha-1 b=beta-22 c=alpha-1");
        assert_eq!(out, b"a=*** b=*** c=***");
    }

    #[test]
    fn of_nested_values_the_longest_wins() {
        assert_eq!(once(&[b"tok", b"token"], b"[token]"), b"[***]");
        assert_eq!(once(&[b"token", b"tok"], b"[token] [tok]"), b"[***] [***]");
        assert_eq!(once(&[b"ken", b"token"], b"[token]"), b"[***]");
    }

    #[test]
    fn overlapping_occurrences_are_hidden_together() {
        // Leftmost-first matching would leave "def" (part of "bcdef") visible.
        assert_eq!(once(&[b"abc", b"bcdef"], b"[abcdef]"), b"[***]");
        // So would non-overlapping search of one value.
        assert_eq!(once(&[b"aXa"], b"[aXaXa]"), b"[***]");
        assert_eq!(once(&[VALUE], &[VALUE, VALUE].concat()), b"***");
    }

    #[test]
    fn value_at_start_at_end_and_alone() {
        assert_eq!(once(&[VALUE], &[VALUE, b" tail"].concat()), b"*** tail");
        assert_eq!(once(&[VALUE], &[b"head ", VALUE].concat()), b"head ***");
        assert_eq!(once(&[VALUE], VALUE), b"***");
        let mut r = redactor(&[VALUE]);
        assert_eq!(r.push(VALUE), b"***", "a complete value is emitted at once");
    }

    #[test]
    fn text_with_no_secret_prefix_comes_out_at_once() {
        let mut r = redactor(&[VALUE]);
        assert_eq!(r.push(b"hello world\n"), b"hello world\n");
        assert_eq!(r.push(b"x"), b"x");
        assert_eq!(r.push(b"s"), b"", "`s` could start the value");
        assert_eq!(r.push(b"x"), b"sx", "`sx` cannot");
        assert_eq!(r.finish(), b"");
    }

    #[test]
    fn holds_back_at_most_max_len_minus_one_bytes() {
        let mut r = redactor(&[b"ab", VALUE]);
        let almost = &VALUE[..VALUE.len() - 1];
        assert_eq!(r.push(&[b"x=", almost].concat()), b"x=");
        assert_eq!(r.push(b"?"), [almost, b"?"].concat());
        // Whatever the input, no more than max_len-1 bytes are held back.
        let text = [
            b"s3s3cr".as_slice(),
            almost,
            b"s",
            almost,
            VALUE,
            b"ab",
            almost,
        ]
        .concat();
        for byte in text.chunks(1).chain(text.chunks(7)) {
            r.push(byte);
            assert!(r.pending.len() < VALUE.len(), "{} held", r.pending.len());
        }
    }

    #[test]
    fn an_unfinished_prefix_is_released_as_is_at_the_end() {
        let mut r = redactor(&[VALUE]);
        assert_eq!(r.push(b"s3cr3t"), b"");
        assert_eq!(r.finish(), b"s3cr3t");
        // And the redactor is ready for a new stream.
        assert_eq!(stream(&mut r, [&VALUE[..3], &VALUE[3..]]), b"***");
    }

    #[test]
    fn empty_values_are_ignored() {
        assert_eq!(once(&[b""], b"plain text"), b"plain text");
        assert_eq!(once(&[b"", b"x"], b"axb"), b"a***b");
        assert_eq!(once(&[], b"plain text"), b"plain text");
    }

    #[test]
    fn debug_shows_nothing_of_values_or_held_bytes() {
        let mut r = redactor(&[VALUE]);
        r.push(&VALUE[..8]);
        let debug = format!("{r:?}");
        assert_eq!(debug, "Redactor { values: 1, .. }");
    }

    // ---- scan_tree ----

    /// A scratch directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static COUNT: AtomicUsize = AtomicUsize::new(0);
            let n = COUNT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("tollgate-secrets-test-{}-{n}", std::process::id()));
            fs::create_dir_all(&path).unwrap();
            Scratch(path)
        }

        fn write(&self, rel: &str, content: &[u8]) -> PathBuf {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, content).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn secrets() -> Vec<(String, Vec<u8>)> {
        vec![
            ("NPM_TOKEN".to_owned(), VALUE.to_vec()),
            ("OTHER".to_owned(), b"other-value-123".to_vec()),
        ]
    }

    fn finding(path: &str, secret: &str) -> Finding {
        Finding {
            path: PathBuf::from(path),
            secret: secret.to_owned(),
        }
    }

    #[test]
    fn finds_a_value_in_a_nested_file() {
        let tree = Scratch::new();
        tree.write(
            "a/b/c/.npmrc",
            &[b"//registry/:_authToken=", VALUE, b"\n"].concat(),
        );
        tree.write("a/clean.txt", b"nothing here");
        tree.write("top.txt", b"x other-value-123 y");
        let report = scan_tree(&tree.0, &secrets());
        assert_eq!(
            report.findings,
            [
                finding("a/b/c/.npmrc", "NPM_TOKEN"),
                finding("top.txt", "OTHER")
            ]
        );
        assert_eq!(report.files_scanned, 3);
        assert!(report.skipped.is_empty());
    }

    #[test]
    fn finds_a_value_straddling_a_chunk_boundary() {
        let tree = Scratch::new();
        for before_edge in 1..VALUE.len() {
            let content = [
                vec![b'x'; CHUNK - before_edge],
                VALUE.to_vec(),
                vec![b'y'; 10],
            ]
            .concat();
            tree.write(&format!("big-{before_edge:02}"), &content);
        }
        let second = [vec![b'x'; 2 * CHUNK - 5], VALUE.to_vec()].concat();
        tree.write("second-edge", &second);
        tree.write(
            "near-miss",
            &[vec![b'x'; CHUNK - 3], VALUE[1..].to_vec()].concat(),
        );
        let report = scan_tree(&tree.0, &secrets());
        let mut expected: Vec<_> = (1..VALUE.len())
            .map(|n| finding(&format!("big-{n:02}"), "NPM_TOKEN"))
            .collect();
        expected.push(finding("second-edge", "NPM_TOKEN"));
        assert_eq!(report.findings, expected);
        assert!(report.bytes_scanned > (VALUE.len() * CHUNK) as u64);
    }

    #[test]
    fn finds_a_value_in_a_symlink_target() {
        let tree = Scratch::new();
        let target = format!("/nonexistent/{}", std::str::from_utf8(VALUE).unwrap());
        symlink(target, tree.0.join("link")).unwrap();
        let report = scan_tree(&tree.0, &secrets());
        assert_eq!(report.findings, [finding("link", "NPM_TOKEN")]);
        assert_eq!(report.files_scanned, 1);
    }

    #[test]
    fn does_not_follow_symlinks_out_of_the_tree() {
        let outside = Scratch::new();
        let leaked = outside.write("dir/leaked.txt", VALUE);
        let tree = Scratch::new();
        tree.write("ok.txt", b"fine");
        symlink(&leaked, tree.0.join("to-file")).unwrap();
        symlink(outside.0.join("dir"), tree.0.join("to-dir")).unwrap();
        let report = scan_tree(&tree.0, &secrets());
        assert!(report.findings.is_empty(), "{report:?}");
        assert!(report.skipped.is_empty(), "{report:?}");
        assert_eq!(report.files_scanned, 3, "ok.txt and the two links' targets");
    }

    #[test]
    fn does_not_hang_on_a_fifo() {
        let tree = Scratch::new();
        nix::unistd::mkfifo(&tree.0.join("pipe"), Mode::from_bits_truncate(0o600)).unwrap();
        tree.write("after.txt", VALUE);
        let (done, wait) = mpsc::channel();
        let root = tree.0.clone();
        std::thread::spawn(move || done.send(scan_tree(&root, &secrets())).unwrap());
        let report = wait
            .recv_timeout(Duration::from_secs(30))
            .expect("scan_tree hung on a FIFO");
        assert_eq!(report.findings, [finding("after.txt", "NPM_TOKEN")]);
        assert!(report.skipped.is_empty());
    }

    /// The race the tree's opens guard against: an entry examined as a
    /// file or a directory is swapped for a symlink or a FIFO before it is
    /// opened.
    #[test]
    fn opens_refuse_what_an_entry_became_after_it_was_examined() {
        let outside = Scratch::new();
        let leaked = outside.write("dir/leaked.txt", VALUE);
        let tree = Scratch::new();
        symlink(&leaked, tree.0.join("file")).unwrap();
        symlink(outside.0.join("dir"), tree.0.join("dir")).unwrap();
        nix::unistd::mkfifo(&tree.0.join("pipe"), Mode::from_bits_truncate(0o600)).unwrap();
        let root = Tree::open(&tree.0, "test").unwrap();
        assert!(root.subtree(Path::new("dir")).unwrap().is_none());
        let (done, wait) = mpsc::channel();
        std::thread::spawn(move || {
            let secrets = secrets();
            let mut scan = Scan::new(&secrets);
            let mut hits = vec![false; secrets.len()];
            let file = scan.scan_file(&root, Path::new("file"), &mut hits).is_err();
            let pipe = scan.scan_file(&root, Path::new("pipe"), &mut hits).is_err();
            done.send((file, pipe, hits, scan.report.bytes_scanned))
                .unwrap();
        });
        let outcome = wait
            .recv_timeout(Duration::from_secs(30))
            .expect("opening a FIFO blocked");
        assert_eq!(outcome, (true, true, vec![false, false], 0));
    }

    #[test]
    fn reports_names_never_values() {
        let tree = Scratch::new();
        tree.write("env.sh", &[b"export T=", VALUE].concat());
        let report = scan_tree(&tree.0, &secrets());
        assert_eq!(report.findings, [finding("env.sh", "NPM_TOKEN")]);
        let debug = format!("{report:?}");
        assert!(debug.contains("NPM_TOKEN"));
        assert!(
            !debug.contains(std::str::from_utf8(VALUE).unwrap()),
            "{debug}"
        );
    }

    #[test]
    fn a_value_in_a_name_is_found_and_hidden_in_the_paths_shown() {
        let tree = Scratch::new();
        let value = std::str::from_utf8(VALUE).unwrap();
        tree.write(&format!("cache-{value}/data.txt"), b"x other-value-123");
        let report = scan_tree(&tree.0, &secrets());
        assert_eq!(
            report.findings,
            [
                finding("cache-***", "NPM_TOKEN"),
                finding("cache-***/data.txt", "OTHER")
            ]
        );
        assert!(!format!("{report:?}").contains(value));
    }

    #[test]
    fn skips_holes_of_sparse_files() {
        let tree = Scratch::new();
        let file = File::create(tree.0.join("sparse")).unwrap();
        let size = 1u64 << 40; // 1 TiB apparent, a few KiB stored
        file.write_all_at(VALUE, size - VALUE.len() as u64).unwrap();
        let report = scan_tree(&tree.0, &secrets());
        assert_eq!(report.findings, [finding("sparse", "NPM_TOKEN")]);
        assert!(
            report.bytes_scanned < 1 << 20,
            "read {} bytes",
            report.bytes_scanned
        );
    }

    #[test]
    fn unreadable_entries_are_skipped_and_the_scan_goes_on() {
        let report = scan_tree(Path::new("/nonexistent/tollgate"), &secrets());
        assert_eq!(report.skipped, [PathBuf::from(".")]);

        let tree = Scratch::new();
        let locked = tree.write("locked", VALUE);
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
        tree.write("z.txt", VALUE);
        let report = scan_tree(&tree.0, &secrets());
        if nix::unistd::geteuid().is_root() {
            // root reads it regardless of its mode
            assert_eq!(report.findings.len(), 2);
        } else {
            assert_eq!(report.skipped, [PathBuf::from("locked")]);
            assert_eq!(report.findings, [finding("z.txt", "NPM_TOKEN")]);
        }
    }

    #[test]
    fn empty_values_and_duplicate_values() {
        let tree = Scratch::new();
        tree.write("f", VALUE);
        let secrets = [
            ("EMPTY".to_owned(), Vec::new()),
            ("A".to_owned(), VALUE.to_vec()),
            ("B".to_owned(), VALUE.to_vec()),
        ];
        let report = scan_tree(&tree.0, &secrets);
        assert_eq!(report.findings, [finding("f", "A"), finding("f", "B")]);
        assert_eq!(scan_tree(&tree.0, &secrets[..1]).files_scanned, 0);
    }
}
