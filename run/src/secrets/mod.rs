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

mod scan;

use std::fmt;

use memchr::memmem::Finder;

pub use self::scan::{scan_tree, Finding, ScanReport};

/// What a secret value is replaced with (GitHub Actions' convention).
const MASK: &[u8] = b"***";

/// How much of a file is read at a time: memory stays bounded whatever the
/// file's size.
pub(crate) const CHUNK: usize = 64 * 1024;

/// A searcher for one value; `None` for an empty value, which would match
/// everywhere.
pub(crate) fn finder(value: &[u8]) -> Option<Finder<'static>> {
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

#[cfg(test)]
mod tests;
