use super::scan::Scan;
use super::*;
use crate::tree::Tree;
use std::fs;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
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
        let path =
            std::env::temp_dir().join(format!("tollgate-secrets-test-{}-{n}", std::process::id()));
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
