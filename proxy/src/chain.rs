//! The audit log's hash chain: every line carries `seq` (its place in the
//! file, from 0) and `prev` (SHA-256 of the line before it, as written; 64
//! zeros for the first), so a line edited, removed, inserted or moved, or
//! a file cut short mid-line, shows — [`verify`] finds the first such line.
//! The chain is per file: a rotated log's new file starts again at 0.

use std::io::{self, BufRead};

use sha2::{Digest, Sha256};

/// `prev` of the first line of a chain.
pub const START: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where a chain stands: the next line's `seq` and `prev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    seq: u64,
    prev: String,
}

impl Default for Chain {
    fn default() -> Chain {
        Chain {
            seq: 0,
            prev: START.to_owned(),
        }
    }
}

impl Chain {
    /// The chain after `line` (a whole line of a file, without its newline),
    /// if it is a chained record; `None` if it is not (a new chain starts).
    pub fn after(line: &[u8]) -> Option<Chain> {
        let (seq, _) = links(line)?;
        Some(Chain {
            seq: seq.checked_add(1)?,
            prev: hash(line),
        })
    }

    /// `record` (one serialised JSON object, no newline) with `seq` and
    /// `prev` added, and the chain after it.
    pub fn link(&self, record: &[u8]) -> (Vec<u8>, Chain) {
        let body = record.strip_suffix(b"}").unwrap_or(record);
        let mut line = body.to_vec();
        if body.len() > 1 {
            line.push(b',');
        }
        line.extend_from_slice(
            format!("\"seq\":{},\"prev\":\"{}\"}}", self.seq, self.prev).as_bytes(),
        );
        let next = Chain {
            seq: self.seq + 1,
            prev: hash(&line),
        };
        (line, next)
    }
}

fn hash(line: &[u8]) -> String {
    Sha256::digest(line)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A line's `seq` and `prev`, if it is a JSON object that has both.
fn links(line: &[u8]) -> Option<(u64, String)> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    let seq = value.get("seq")?.as_u64()?;
    let prev = value.get("prev")?.as_str()?.to_owned();
    Some((seq, prev))
}

/// What [`verify`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verified {
    /// Every line is linked to the one before it.
    Whole { records: u64 },
    /// The first line that is not, and why.
    Broken { line: u64, why: String },
}

/// Checks a log's chain from its first line.
pub fn verify<R: BufRead>(mut reader: R) -> io::Result<Verified> {
    let mut expected = Chain::default();
    let mut number = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(Verified::Whole { records: number });
        }
        number += 1;
        let broken = |why: String| Ok(Verified::Broken { line: number, why });
        let Some(text) = line.strip_suffix(b"\n") else {
            return broken(
                "the last line is cut short (no newline): the file was truncated".into(),
            );
        };
        let Some((seq, prev)) = links(text) else {
            return broken("not a chained record (no JSON object with seq and prev)".into());
        };
        if seq != expected.seq {
            return broken(match seq.cmp(&expected.seq) {
                std::cmp::Ordering::Greater => format!(
                    "seq {seq} where {} was due: records {}..{} are missing",
                    expected.seq,
                    expected.seq,
                    seq - 1
                ),
                _ => format!(
                    "seq {seq} where {} was due: a record was repeated or moved",
                    expected.seq
                ),
            });
        }
        if prev != expected.prev {
            return broken(if number == 1 {
                "the first record does not start a chain: records before it are missing".into()
            } else {
                format!(
                    "prev does not match line {}: a record was edited, removed or inserted",
                    number - 1
                )
            });
        }
        expected = Chain {
            seq: seq + 1,
            prev: hash(text),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(records: usize) -> Vec<Vec<u8>> {
        let mut chain = Chain::default();
        (0..records)
            .map(|i| {
                let (line, next) = chain.link(format!("{{\"id\":\"r{i}\"}}").as_bytes());
                chain = next;
                line
            })
            .collect()
    }

    fn file(lines: &[Vec<u8>]) -> Vec<u8> {
        lines
            .iter()
            .flat_map(|l| l.iter().copied().chain([b'\n']))
            .collect()
    }

    fn verdict(bytes: &[u8]) -> Verified {
        verify(bytes).unwrap()
    }

    #[test]
    fn a_whole_log_verifies_and_links_read_back() {
        let lines = log(5);
        assert_eq!(verdict(&file(&lines)), Verified::Whole { records: 5 });
        assert_eq!(verdict(b""), Verified::Whole { records: 0 });
        let after = Chain::after(&lines[4]).unwrap();
        let (sixth, _) = after.link(b"{\"id\":\"r5\"}");
        let mut more = lines.clone();
        more.push(sixth);
        assert_eq!(verdict(&file(&more)), Verified::Whole { records: 6 });
        assert_eq!(Chain::after(b"{\"id\":\"old\"}"), None);
    }

    #[test]
    fn every_kind_of_tampering_is_found_at_its_line() {
        let lines = log(5);
        let broken_at = |bytes: Vec<u8>| match verdict(&bytes) {
            Verified::Broken { line, why } => (line, why),
            whole => panic!("not found: {whole:?}"),
        };
        let mut edited = lines.clone();
        edited[2] = String::from_utf8(edited[2].clone())
            .unwrap()
            .replace("r2", "rX")
            .into_bytes();
        assert_eq!(broken_at(file(&edited)).0, 4);
        let mut removed = lines.clone();
        removed.remove(2);
        let (line, why) = broken_at(file(&removed));
        assert_eq!(line, 3);
        assert!(why.contains("missing"), "{why}");
        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        assert_eq!(broken_at(file(&swapped)).0, 2);
        let mut cut = file(&lines);
        cut.truncate(cut.len() - 10);
        let (line, why) = broken_at(cut);
        assert_eq!(line, 5);
        assert!(why.contains("truncated"), "{why}");
        let (line, why) = broken_at(file(&lines[2..]));
        assert_eq!(line, 1);
        assert!(why.contains("missing"), "{why}");
        let mut restarted = lines.clone();
        restarted.extend(log(2));
        assert_eq!(broken_at(file(&restarted)).0, 6);
    }
}
