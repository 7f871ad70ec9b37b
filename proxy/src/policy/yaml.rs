//! Reading a policy's YAML strictly, before serde_yaml builds the policy from
//! it. serde_yaml (libyaml underneath) lets through what a policy must not
//! hold, so the text is checked in two passes:
//!
//! 1. [`scan`], a pass over the text that only follows nesting, quoting and
//!    comments, refuses nesting deeper than [`MAX_DEPTH`] before libyaml sees
//!    it (libyaml's scanner is quadratic in flow nesting: 100,000 levels took
//!    29 s of CPU on the reload path) and refuses every tag, `!x` and `!!x`
//!    alike (serde_yaml reads `mode: !unrestricted` as the enum variant, and
//!    resolves `!!str` and friends silently).
//! 2. [`walk`] visits every node through serde_yaml itself, so with libyaml's
//!    own reading of the document: a key given twice in one mapping is
//!    refused at the second one (serde_yaml keeps the last one in a map), and
//!    a local tag is refused again, should the scan have misread the text.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use thiserror::Error;

/// The deepest nesting of collections a policy document may have. A policy
/// needs 4 (the document, `allow`, a rule, its `paths`); 64 leaves room for
/// any layout a person writes and keeps libyaml's quadratic cost negligible.
pub const MAX_DEPTH: usize = 64;

/// The longest tag quoted back in an error: enough to recognise it, and a
/// line stays one line.
const TAG_SHOWN: usize = 40;

/// What the scan refuses, at a 1-based line and column (in characters, as
/// libyaml counts them).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TextError {
    #[error(
        "nested more than {MAX_DEPTH} levels deep (a policy needs 4): \
         flatten the document"
    )]
    TooDeep { line: usize, column: usize },
    #[error("YAML tag `{tag}`: a policy takes plain values, remove the tag")]
    Tag {
        line: usize,
        column: usize,
        tag: String,
    },
}

impl TextError {
    pub fn position(&self) -> (usize, usize) {
        match self {
            TextError::TooDeep { line, column } | TextError::Tag { line, column, .. } => {
                (*line, *column)
            }
        }
    }
}

/// A policy file's text without its UTF-8 byte-order mark, if it has one:
/// some Windows editors write one, and libyaml would read it as part of the
/// first key.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Refuses, in one linear pass, nesting deeper than [`MAX_DEPTH`] and tags.
///
/// Nesting is counted the way libyaml's scanner counts it: block collections
/// by their indentation stack (a `- `, `? ` or `key: ` further right than the
/// enclosing collection opens one; a line further left closes them), flow
/// collections by their brackets. Quoted scalars, comments and block
/// scalars (`|`, `>`) are skipped, so brackets and `!` in them do not count.
pub fn scan(text: &str) -> Result<(), TextError> {
    Scanner {
        text: text.as_bytes(),
        at: 0,
        line: 1,
        column: 1,
        flow: 0,
        indents: Vec::new(),
        node_start: true,
    }
    .run()
}

struct Scanner<'t> {
    text: &'t [u8],
    at: usize,
    line: usize,
    column: usize,
    /// Open flow collections (`[`, `{`).
    flow: usize,
    /// Columns (0-based) of the open block collections, innermost last.
    indents: Vec<usize>,
    /// A node may begin here, so `[`, `{`, quotes, `!`, `&`, `*`, `|` and
    /// `>` are indicators; inside a plain scalar they are text.
    node_start: bool,
}

impl Scanner<'_> {
    fn run(mut self) -> Result<(), TextError> {
        // Set while skipping a block scalar's content: the indentation of its
        // collection (None: top level), which content lines are deeper than.
        let mut block_scalar: Option<Option<usize>> = None;
        loop {
            // At the start of a line.
            let indent = self.skip_blanks();
            let Some(first) = self.peek(0) else {
                return Ok(());
            };
            if let Some(parent) = block_scalar {
                if self.at_break() || parent.is_none_or(|p| indent > p) {
                    self.skip_line();
                    continue;
                }
                block_scalar = None;
            }
            if self.at_break() || first == b'#' {
                self.skip_line();
                continue;
            }
            if self.flow == 0 {
                // A block line; inside a flow collection, lines do not matter.
                self.node_start = true;
                if self.column == 1 && first == b'%' {
                    // A directive (`%YAML 1.2`); a `%TAG` only matters to tags.
                    self.skip_line();
                    continue;
                }
                if self.column == 1 && self.document_marker() {
                    self.indents.clear();
                    self.bump_n(3);
                } else {
                    while self.indents.last().is_some_and(|&top| top > indent) {
                        self.indents.pop();
                    }
                }
            }
            if let Some(parent) = self.line()? {
                block_scalar = Some(parent);
            }
        }
    }

    /// Scans the rest of a line, up to and including its break (and the
    /// breaks inside a quoted scalar that starts on it). Returns
    /// `Some(indentation)` when a block scalar starts on it.
    fn line(&mut self) -> Result<Option<Option<usize>>, TextError> {
        // Column where this line's key began, in block context.
        let mut key: Option<usize> = None;
        // Just after a quoted scalar or a flow collection, where `:` needs no
        // blank after it in flow context (a JSON-like key).
        let mut json_like = false;
        let mut after_blank = true;
        while let Some(c) = self.peek(0) {
            if self.at_break() {
                self.bump();
                return Ok(None);
            }
            if c == b'#' && after_blank {
                self.skip_line();
                return Ok(None);
            }
            after_blank = self.at_blank();
            if after_blank {
                self.bump();
                continue;
            }
            let column = self.column - 1;
            let block = self.flow == 0;
            let was_json_like = std::mem::take(&mut json_like);
            let node_start = self.node_start;
            if node_start && block && key.is_none() && !self.is_indicator(c) {
                key = Some(column);
            }
            match c {
                b'[' | b'{' if node_start || !block => {
                    self.flow += 1;
                    self.check_depth(column)?;
                    self.bump();
                    self.node_start = true;
                }
                b']' | b'}' if !block => {
                    self.flow -= 1;
                    self.bump();
                    self.node_start = false;
                    json_like = true;
                }
                b',' if !block => {
                    self.bump();
                    self.node_start = true;
                }
                b'-' | b'?' if self.is_indicator(c) => {
                    if block {
                        self.open_block(column)?;
                    }
                    self.bump();
                    self.node_start = true;
                    key = None;
                }
                b':' if self.blank_after()
                    || (!block && (was_json_like || self.flow_indicator_after())) =>
                {
                    if block {
                        self.open_block(key.unwrap_or(column))?;
                    }
                    self.bump();
                    self.node_start = true;
                    key = None;
                }
                b'|' | b'>' if node_start && block => {
                    let parent = self.indents.last().copied();
                    self.skip_line();
                    return Ok(Some(parent));
                }
                b'!' if node_start => return Err(self.tag()),
                b'&' if node_start => self.skip_token(),
                b'*' if node_start => {
                    self.skip_token();
                    self.node_start = false;
                }
                b'\'' | b'"' if node_start => {
                    self.skip_quoted(c);
                    self.node_start = false;
                    json_like = true;
                }
                _ => {
                    self.bump();
                    self.node_start = false;
                }
            }
        }
        Ok(None)
    }

    /// Whether `c`, here, is a block entry (`- `) or explicit key (`? `)
    /// indicator rather than the start of a key.
    fn is_indicator(&self, c: u8) -> bool {
        self.node_start && self.blank_after() && (c == b'?' || (c == b'-' && self.flow == 0))
    }

    /// A block collection opens at `column` if that is right of the
    /// innermost open one (libyaml's `roll_indent`).
    fn open_block(&mut self, column: usize) -> Result<(), TextError> {
        if self.indents.last().is_none_or(|&top| column > top) {
            self.indents.push(column);
            self.check_depth(column)?;
        }
        Ok(())
    }

    /// `column` (0-based, on the current line) is where the collection that
    /// was just opened starts.
    fn check_depth(&self, column: usize) -> Result<(), TextError> {
        if self.indents.len() + self.flow > MAX_DEPTH {
            return Err(TextError::TooDeep {
                line: self.line,
                column: column + 1,
            });
        }
        Ok(())
    }

    /// The tag starting here, as written (`!x`, `!!str`, `!<tag:...>`).
    fn tag(&mut self) -> TextError {
        let (line, column) = (self.line, self.column);
        let start = self.at;
        let verbatim = self.peek(1) == Some(b'<');
        while let Some(c) = self.peek(0) {
            if self.at_break() || c == b' ' || c == b'\t' {
                break;
            }
            if !verbatim && self.flow > 0 && b",[]{}".contains(&c) {
                break;
            }
            self.bump();
            if verbatim && c == b'>' {
                break;
            }
        }
        let written = self.text.get(start..self.at).unwrap_or_default();
        let written = String::from_utf8_lossy(written);
        let mut tag: String = written.chars().take(TAG_SHOWN).collect();
        if written.chars().nth(TAG_SHOWN).is_some() {
            tag.push('…');
        }
        TextError::Tag { line, column, tag }
    }

    /// Skips an anchor or alias name.
    fn skip_token(&mut self) {
        while let Some(c) = self.peek(0) {
            if self.at_break() || c == b' ' || c == b'\t' {
                return;
            }
            if self.flow > 0 && b",[]{}".contains(&c) {
                return;
            }
            self.bump();
        }
    }

    /// Skips a quoted scalar, line breaks included, up to its closing quote
    /// (`\"` escapes a double quote, `''` is a single one).
    fn skip_quoted(&mut self, quote: u8) {
        self.bump();
        while let Some(c) = self.peek(0) {
            let escape = match quote {
                b'"' => c == b'\\',
                _ => c == b'\'' && self.peek(1) == Some(b'\''),
            };
            if escape {
                self.bump_n(2);
            } else if c == quote {
                self.bump();
                return;
            } else {
                self.bump();
            }
        }
    }

    fn document_marker(&self) -> bool {
        let marker = self.text.get(self.at..self.at + 3);
        (marker == Some(b"---") || marker == Some(b"...")) && self.blank_at(3)
    }

    /// Skips the blanks that start a line; returns its indentation.
    fn skip_blanks(&mut self) -> usize {
        let mut spaces = 0;
        while self.at_blank() {
            // Only spaces indent (YAML 1.2 §6.1); a tab ends the indentation.
            if self.peek(0) == Some(b' ') && spaces == self.column - 1 {
                spaces += 1;
            }
            self.bump();
        }
        spaces
    }

    /// A space, a tab, or the `\r` of a `\r\n` break.
    fn at_blank(&self) -> bool {
        match self.peek(0) {
            Some(b' ' | b'\t') => true,
            Some(b'\r') => !self.at_break(),
            _ => false,
        }
    }

    /// Skips to the next line.
    fn skip_line(&mut self) {
        while self.peek(0).is_some() {
            let brk = self.at_break();
            self.bump();
            if brk {
                return;
            }
        }
    }

    fn peek(&self, ahead: usize) -> Option<u8> {
        self.text.get(self.at + ahead).copied()
    }

    /// Whether the next character ends a line: `\n`, or `\r` not followed
    /// by `\n` (so `\r\n` is one break, seen at its `\n`).
    fn at_break(&self) -> bool {
        match self.peek(0) {
            Some(b'\n') => true,
            Some(b'\r') => self.peek(1) != Some(b'\n'),
            _ => false,
        }
    }

    fn blank_at(&self, ahead: usize) -> bool {
        matches!(self.peek(ahead), None | Some(b' ' | b'\t' | b'\r' | b'\n'))
    }

    fn blank_after(&self) -> bool {
        self.blank_at(1)
    }

    fn flow_indicator_after(&self) -> bool {
        matches!(self.peek(1), Some(b',' | b'[' | b']' | b'{' | b'}'))
    }

    fn bump(&mut self) {
        let Some(c) = self.peek(0) else {
            return;
        };
        if self.at_break() {
            self.line += 1;
            self.column = 1;
        } else if c & 0xc0 != 0x80 && c != b'\r' {
            // A character's first byte (UTF-8 continuation bytes are
            // 0b10xxxxxx): columns count characters.
            self.column += 1;
        }
        self.at += 1;
    }

    fn bump_n(&mut self, n: usize) {
        for _ in 0..n {
            self.bump();
        }
    }
}

/// Visits every node of the document through serde_yaml, refusing a key
/// given twice in a mapping and a local tag, each at its own line and column
/// (serde_yaml places an error raised while reading a node at that node).
pub fn walk(text: &str) -> Result<(), serde_yaml::Error> {
    serde_yaml::from_str::<Node>(text).map(|_| ())
}

/// Any node, visited and dropped.
struct Node;

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor { keys: None })?;
        Ok(Node)
    }
}

/// A mapping's key: a node that must not equal an earlier key of its
/// mapping.
struct Key<'k> {
    keys: &'k mut BTreeSet<String>,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(NodeVisitor {
            keys: Some(self.keys),
        })
    }
}

/// Visits one node; `keys` is set when the node is a key, to the keys seen
/// so far in its mapping.
struct NodeVisitor<'k> {
    keys: Option<&'k mut BTreeSet<String>>,
}

impl NodeVisitor<'_> {
    /// A scalar, written as serde reads it (a key `1` and a key `"1"` are the
    /// same string to a policy's maps, so they are the same key here).
    fn scalar<E: de::Error>(self, text: String) -> Result<(), E> {
        match self.keys {
            Some(keys) if keys.contains(&text) => Err(E::custom(format!(
                "duplicate key `{text}`: YAML would keep only the last one, remove one"
            ))),
            Some(keys) => {
                keys.insert(text);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl<'de> Visitor<'de> for NodeVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(v.to_string())
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<(), E> {
        self.scalar(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(v.to_string())
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<(), E> {
        self.scalar(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.scalar(v.to_string())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.scalar(v.to_owned())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar("null".to_owned())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.scalar("null".to_owned())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<Node>()?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = BTreeSet::new();
        while map.next_key_seed(Key { keys: &mut keys })?.is_some() {
            map.next_value::<Node>()?;
        }
        Ok(())
    }

    /// serde_yaml presents a node with a local tag (`!x`) as an enum whose
    /// variant is the tag.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        let (tag, _) = data.variant::<String>()?;
        let tag = if tag == "!" { tag } else { format!("!{tag}") };
        Err(de::Error::custom(format!(
            "YAML tag `{tag}`: a policy takes plain values, remove the tag"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanned(text: &str) -> Option<(usize, usize, String)> {
        scan(text).err().map(|e| {
            let (line, column) = e.position();
            (line, column, e.to_string())
        })
    }

    #[test]
    fn depth_counts_block_and_flow_collections_as_libyaml_does() {
        let at_limit = |inner: &str| {
            // 63 flow levels inside the document's mapping: 64 in all.
            format!("a: {}{inner}{}\n", "[".repeat(63), "]".repeat(63))
        };
        assert_eq!(scanned(&at_limit("x")), None);
        assert_eq!(scanned(&at_limit("[x]")).map(|f| (f.0, f.1)), Some((1, 67)));
        // Indentation: each key further right opens a mapping; going back
        // left closes them, so siblings do not add up.
        let mut nested = String::new();
        for level in 0..64 {
            nested.push_str(&format!("{}k:\n", " ".repeat(level)));
        }
        let siblings = nested.repeat(3);
        assert_eq!(scanned(&siblings), None);
        nested.push_str(&format!("{}k: v\n", " ".repeat(64)));
        assert_eq!(scanned(&nested).map(|f| (f.0, f.1)), Some((65, 65)));
        // Blank CRLF lines in between close nothing.
        let spaced = nested.replace('\n', "\r\n\r\n");
        assert_eq!(scanned(&spaced).map(|f| (f.0, f.1)), Some((129, 65)));
        // A sequence at its mapping's indentation opens nothing new (as in
        // libyaml); compact `- - ` opens one per dash.
        assert_eq!(scanned("a:\n- b\n- c\n"), None);
        let dashes = format!("{}x\n", "- ".repeat(MAX_DEPTH + 1));
        assert_eq!(
            scanned(&dashes).map(|f| (f.0, f.1)),
            Some((1, 2 * MAX_DEPTH + 1))
        );
    }

    #[test]
    fn quotes_comments_and_block_scalars_hide_indicators() {
        let deep = "[".repeat(MAX_DEPTH + 1);
        for text in [
            format!("a: \"{deep} \\\" {deep}\"\n"),
            format!("a: '{deep} '' {deep}'\n"),
            format!("a: \"multi\n  line {deep}\"\n"),
            format!("a: b # {deep} !tag\n"),
            format!("# {deep}\na: b\n"),
            format!("a: |\n  {deep}\n\n  !tag {deep}\nb: c\n"),
            format!("- >-\n    {deep}\n- c\n"),
            format!("a: it's {deep} !x\n"),
            format!("a: b#{deep}\n"),
            "a: [b!c, d#e]\n".to_owned(),
            "a: \"x\"\r\nb: 'y'\r\n".to_owned(),
            format!("a: [\r\n  \"x # {deep}\",\r\n  'y'\r\n]\r\n"),
        ] {
            assert_eq!(scanned(&text), None, "{text:?}");
        }
        // The block scalar ends at the first line not deeper than its key.
        assert_eq!(
            scanned("a: |\n  x\nb: !t c\n").map(|f| (f.0, f.1)),
            Some((3, 4))
        );
    }

    #[test]
    fn every_tag_is_found_where_it_starts() {
        let cases = [
            ("a: !x b\n", (1, 4, "`!x`")),
            ("a: !!str b\n", (1, 4, "`!!str`")),
            ("a: [b, !!int 1]\n", (1, 8, "`!!int`")),
            ("a: {b: !c d}\n", (1, 8, "`!c`")),
            ("a: &anchor !x b\n", (1, 12, "`!x`")),
            (
                "a: !<tag:yaml.org,2002:str> b\n",
                (1, 4, "`!<tag:yaml.org,2002:str>`"),
            ),
            ("- !x\n  a: b\n", (1, 3, "`!x`")),
            ("!x a: b\n", (1, 1, "`!x`")),
            ("--- !x\na: b\n", (1, 5, "`!x`")),
            ("a:\n  ? !k b\n  : c\n", (2, 5, "`!k`")),
            ("{\"a\":!x b}\n", (1, 6, "`!x`")),
            ("a: ! b\n", (1, 4, "`!`")),
        ];
        for (text, (line, column, tag)) in cases {
            let found = scanned(text);
            let Some((l, c, message)) = found else {
                panic!("{text:?}: no tag found");
            };
            assert_eq!((l, c), (line, column), "{text:?}: {message}");
            assert!(message.contains(tag), "{text:?}: {message}");
        }
        let long = format!("a: !{} b\n", "x".repeat(1000));
        let message = scanned(&long).map(|f| f.2).unwrap_or_default();
        assert!(message.len() < 120, "{message}");
    }

    #[test]
    fn walk_refuses_duplicate_keys_and_local_tags_at_their_node() {
        let error = |text: &str| {
            let e = walk(text).expect_err(text);
            let location = e.location().map(|l| (l.line(), l.column()));
            (location, e.to_string())
        };
        let (at, message) = error("a: 1\nb:\n  c: 2\n  \"c\": 3\n");
        assert_eq!(at, Some((4, 3)));
        assert!(message.contains("duplicate key `c`"), "{message}");
        let (at, message) = error("a: [1, {x: 1, y: 2, x: 3}]\n");
        assert_eq!(at, Some((1, 21)));
        assert!(message.contains("duplicate key `x`"), "{message}");
        // The scan finds tags first; the walk finds those libyaml reads as
        // local tags on its own.
        let (at, message) = error("a: b\nc: !x d\n");
        assert_eq!(at, Some((2, 4)));
        assert!(message.contains("YAML tag `!x`"), "{message}");
        assert!(walk("a: 1\nb: {a: 1}\nc: [a, a]\n").is_ok());
        assert!(walk("").is_ok());
    }

    #[test]
    fn byte_order_mark_is_stripped_once() {
        assert_eq!(strip_bom("\u{feff}a: b"), "a: b");
        assert_eq!(strip_bom("a: b"), "a: b");
        assert_eq!(strip_bom("\u{feff}\u{feff}a"), "\u{feff}a");
    }
}
