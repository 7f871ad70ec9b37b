//! The git repository a `tollgate run` works on.

use std::path::{Path, PathBuf};

use super::git;

/// The repo's directory name, so the workspace is [`WORKSPACE`].
pub const REPO_NAME: &str = "proj";
/// The repo inside every phase.
pub const WORKSPACE: &str = "/workspace/proj";

/// Bytes that git must treat as binary (NUL bytes, invalid UTF-8).
pub const BINARY: &[u8] = &[
    0, 1, 2, 3, 0xff, 0xfe, 0, b'b', b'i', b'n', 0x80, 0x81, 0, 10,
];

/// A real git repo: main has two commits (the first is `first`), branch
/// `feature` one more with feature.txt; main is checked out. The first
/// commit has README.md, old.txt, data.bin ([`BINARY`]) and src/lib.txt;
/// the second changes src/lib.txt.
pub struct Repo {
    pub path: PathBuf,
    pub first: String,
    pub main: String,
    pub feature: String,
}

impl Repo {
    pub fn create(parent: &Path) -> Repo {
        let path = parent.join(REPO_NAME);
        std::fs::create_dir_all(path.join("src")).unwrap();
        git(&path, &["init", "-q", "-b", "main"]);
        std::fs::write(path.join("README.md"), "# proj\n\nA test repository.\n").unwrap();
        std::fs::write(path.join("old.txt"), "this file gets deleted\n").unwrap();
        std::fs::write(path.join("data.bin"), BINARY).unwrap();
        std::fs::write(path.join("src/lib.txt"), "lib v1\n").unwrap();
        git(&path, &["add", "-A"]);
        git(&path, &["commit", "-q", "-m", "first"]);
        let first = git(&path, &["rev-parse", "HEAD"]);
        std::fs::write(path.join("src/lib.txt"), "lib v2\n").unwrap();
        git(&path, &["commit", "-q", "-am", "second"]);
        let main = git(&path, &["rev-parse", "HEAD"]);
        git(&path, &["checkout", "-q", "-b", "feature"]);
        std::fs::write(path.join("feature.txt"), "feature work\n").unwrap();
        git(&path, &["add", "feature.txt"]);
        git(&path, &["commit", "-q", "-m", "feature"]);
        let feature = git(&path, &["rev-parse", "HEAD"]);
        git(&path, &["checkout", "-q", "main"]);
        Repo {
            path,
            first,
            main,
            feature,
        }
    }

    /// Adds (or changes) files in a new commit on main; its sha.
    pub fn commit(&mut self, files: &[(&str, &str)]) -> String {
        for (name, text) in files {
            let path = self.path.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        git(&self.path, &["add", "-A"]);
        git(&self.path, &["commit", "-q", "-m", "more"]);
        self.main = git(&self.path, &["rev-parse", "HEAD"]);
        self.main.clone()
    }

    /// A branch off main with one more commit adding `file`; its sha. Main
    /// stays checked out.
    pub fn branch_with(&self, branch: &str, file: &str) -> String {
        git(&self.path, &["checkout", "-q", "-b", branch, "main"]);
        std::fs::write(self.path.join(file), "on a branch\n").unwrap();
        git(&self.path, &["add", file]);
        git(&self.path, &["commit", "-q", "-m", file]);
        let sha = git(&self.path, &["rev-parse", "HEAD"]);
        git(&self.path, &["checkout", "-q", "main"]);
        sha
    }

    /// Everything about the host repo a run must not change: HEAD, refs,
    /// status, and the bytes of every object and ref file.
    pub fn fingerprint(&self) -> Vec<String> {
        let mut lines = vec![
            format!("HEAD {}", git(&self.path, &["symbolic-ref", "HEAD"])),
            format!("head {}", git(&self.path, &["rev-parse", "HEAD"])),
            format!("refs {}", git(&self.path, &["for-each-ref"])),
            format!(
                "status {:?}",
                git(
                    &self.path,
                    &["status", "--porcelain", "--untracked-files=all"]
                )
            ),
        ];
        let git_dir = self.path.join(".git");
        for sub in ["objects", "refs", "HEAD", "config"] {
            files_of(&git_dir.join(sub), &git_dir, &mut lines);
        }
        lines
    }
}

/// `relative-path bytes-as-debug` for every file under `path`, sorted.
fn files_of(path: &Path, root: &Path, out: &mut Vec<String>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for entry in entries {
            files_of(&entry, root, out);
        }
    } else if let Ok(bytes) = std::fs::read(path) {
        let name = path.strip_prefix(root).unwrap().display().to_string();
        out.push(format!("{name} {bytes:?}"));
    }
}
