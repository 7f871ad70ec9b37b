//! git, run in a scratch repository with an empty environment and no
//! configuration but ours, and the summary of the patch it writes.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};

use super::export::*;
use super::*;

/// Where `git` is looked for, in order.
pub(super) const GIT_DIRS: [&str; 3] = ["/usr/local/bin", "/usr/bin", "/bin"];

/// Every attribute set back to unspecified, should a git read the trees'
/// `.gitattributes` (diff-tree in a bare repository reads none today):
/// `$GIT_DIR/info/attributes` overrides them all.
pub(super) const NEUTRAL_ATTRIBUTES: &str =
    "* !text !eol !crlf !filter !ident !working-tree-encoding !diff !merge\n";

/// Configuration for every git command: nothing runs, and fast-import
/// writes one pack rather than a file per object.
pub(super) const GIT_CONFIG: [&str; 5] = [
    "core.hooksPath=/dev/null",
    "core.attributesFile=/dev/null",
    "core.fsmonitor=false",
    "diff.external=",
    "fastimport.unpackLimit=0",
];

/// git, run in the scratch repository with an empty environment.
pub(super) struct Git {
    pub(super) program: PathBuf,
}

impl Git {
    pub(super) fn locate() -> Result<Git, DiffError> {
        GIT_DIRS
            .iter()
            .map(|dir| Path::new(dir).join("git"))
            .find(|path| path.is_file())
            .map(|program| Git { program })
            .ok_or(DiffError::GitNotFound)
    }

    /// A bare repository without templates (no sample hooks), with
    /// neutral attributes.
    pub(super) fn init(&self, scratch: &Scratch) -> Result<(), DiffError> {
        let mut init = self.command(scratch);
        init.args(["init", "--quiet", "--bare", "--template="]);
        self.run("init", init)?;
        let info = scratch.git_dir.join("info");
        fs::create_dir_all(&info).map_err(io_error(format!("create {}", info.display())))?;
        fs::write(info.join("attributes"), NEUTRAL_ATTRIBUTES)
            .map_err(io_error("write the scratch repository's attributes"))
    }

    /// Starts `git fast-import`, reading its stream from a pipe.
    pub(super) fn fast_import(&self, scratch: &Scratch) -> Result<Import, DiffError> {
        let log = File::create(&scratch.import_log)
            .map_err(io_error(format!("create {}", scratch.import_log.display())))?;
        let mut command = self.command(scratch);
        command
            .args(["fast-import", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command.spawn().map_err(io_error(format!(
            "run {} fast-import",
            self.program.display()
        )))?;
        Ok(Import {
            child,
            log: scratch.import_log.clone(),
        })
    }

    /// The patch from the before commit to the after commit.
    pub(super) fn diff(&self, scratch: &Scratch) -> Result<(), DiffError> {
        let out = File::create(&scratch.patch).map_err(io_error("create the patch"))?;
        let mut diff = self.command(scratch);
        diff.args(["diff-tree", "-r", "-p", "--binary", "--full-index"])
            .args([
                "--no-renames",
                "--no-ext-diff",
                "--no-textconv",
                BEFORE,
                AFTER,
            ])
            .stdout(out);
        self.run("diff-tree", diff)
    }

    pub(super) fn command(&self, scratch: &Scratch) -> Command {
        let mut command = Command::new(&self.program);
        command
            .env_clear()
            .env("PATH", GIT_DIRS.join(":"))
            .env("HOME", &scratch.root)
            .env("LC_ALL", "C")
            .env("GIT_DIR", &scratch.git_dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_ATTR_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0")
            .current_dir(&scratch.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for setting in GIT_CONFIG {
            command.args(["-c", setting]);
        }
        command
    }

    pub(super) fn run(&self, step: &'static str, mut command: Command) -> Result<(), DiffError> {
        let output = command
            .output()
            .map_err(io_error(format!("run {} {step}", self.program.display())))?;
        if output.status.success() {
            return Ok(());
        }
        Err(git_failed(step, output.status, &output.stderr))
    }
}

/// git's error, with the last lines of what it said, on one line.
pub(super) fn git_failed(step: &'static str, status: ExitStatus, stderr: &[u8]) -> DiffError {
    let stderr = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    DiffError::Git {
        step,
        status,
        stderr: lines[lines.len().saturating_sub(3)..].join(" | "),
    }
}

/// A running `git fast-import`; killed and reaped if dropped unfinished.
pub(super) struct Import {
    pub(super) child: Child,
    pub(super) log: PathBuf,
}

impl Import {
    /// The pipe to write the stream to; closing it ends the stream.
    pub(super) fn stream(&mut self) -> Result<ChildStdin, DiffError> {
        self.child.stdin.take().ok_or(DiffError::Io {
            what: "open a pipe to git fast-import".into(),
            source: io::ErrorKind::BrokenPipe.into(),
        })
    }

    /// Waits for git to take the stream. The stream's own error wins,
    /// unless it broke because git had failed.
    pub(super) fn finish(
        mut self,
        streamed: Result<BTreeSet<PathBuf>, DiffError>,
    ) -> Result<BTreeSet<PathBuf>, DiffError> {
        let status = self
            .child
            .wait()
            .map_err(io_error("wait for git fast-import"))?;
        let imported = if status.success() {
            Ok(())
        } else {
            Err(git_failed(
                "fast-import",
                status,
                &fs::read(&self.log).unwrap_or_default(),
            ))
        };
        match (streamed, imported) {
            (Ok(skipped), Ok(())) => Ok(skipped),
            (Err(DiffError::Io { source, .. }), Err(failed))
                if source.kind() == io::ErrorKind::BrokenPipe =>
            {
                Err(failed)
            }
            (Err(error), _) | (Ok(_), Err(error)) => Err(error),
        }
    }
}

impl Drop for Import {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Counts lines starting with `diff --git ` without holding the patch in
/// memory. No other line of a git patch can start that way: content lines
/// start with ` `, `+` or `-`, and binary hunks use an alphabet without
/// spaces.
pub(super) fn count_file_headers(patch: &Path) -> Result<usize, DiffError> {
    let file = File::open(patch).map_err(io_error("read the patch back"))?;
    count_headers(BufReader::new(file)).map_err(io_error("read the patch back"))
}

pub(super) fn count_headers(mut reader: impl BufRead) -> io::Result<usize> {
    const HEADER: &[u8] = b"diff --git ";
    let mut count = 0;
    // Some(n): at the start of a line, with the header's first n bytes seen.
    let mut matched = Some(0);
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(count);
        }
        let mut at = 0;
        while at < chunk.len() {
            if let Some(seen) = matched {
                let want = &HEADER[seen..];
                let have = &chunk[at..chunk.len().min(at + want.len())];
                if want.starts_with(have) {
                    at += have.len();
                    matched = Some(seen + have.len());
                    if seen + have.len() == HEADER.len() {
                        count += 1;
                        matched = None;
                    }
                    continue;
                }
                matched = None;
            }
            match memchr::memchr(b'\n', &chunk[at..]) {
                Some(offset) => {
                    at += offset + 1;
                    matched = Some(0);
                }
                None => at = chunk.len(),
            }
        }
        let used = chunk.len();
        reader.consume(used);
    }
}
