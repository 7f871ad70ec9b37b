//! The repository a run works on, checked out on the host side (trusted,
//! outside the sandbox) by the host's `git`, straight into the first phase's
//! writable layer, where the sandbox sees it as `/workspace/<name>`.
//!
//! The clone never shares a file with the source: `git clone` of a local
//! path hard-links objects by default, and a hard-linked object written from
//! inside the sandbox (root, the file's owner, may chmod it) would change
//! the host's repository. `--no-hardlinks` copies them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use thiserror::Error;

/// What to check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revision {
    /// The source's default branch (its HEAD).
    Default,
    Branch(String),
    /// A commit id (hex, abbreviated or full).
    Commit(String),
}

/// The result of a checkout, for result.json and the terminal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckedOut {
    /// The source as given (a path made absolute, or a URL).
    pub source: String,
    /// The workspace directory's name, `/workspace/<name>`.
    pub name: String,
    /// The full commit id checked out.
    pub commit: String,
    /// The branch, when one was asked for or is the default.
    pub branch: Option<String>,
}

#[derive(Debug, Error)]
pub enum CheckoutError {
    #[error("--repo {0}: {1}")]
    BadSource(String, &'static str),
    #[error("--branch {0:?}: not a usable branch name (it must not start with `-` or contain spaces or control characters)")]
    BadBranch(String),
    #[error("--commit {0:?}: expected a commit id of 4 to 64 hex digits")]
    BadCommit(String),
    #[error("{what}: not in {repo}: check the name (git ls-remote {repo} lists branches)", what = describe(revision))]
    NoSuchRevision { revision: Revision, repo: String },
    #[error("cannot run git (is it installed and on PATH?): {0}")]
    NoGit(#[source] std::io::Error),
    #[error("git {step} failed: {detail}")]
    Git { step: &'static str, detail: String },
}

fn describe(revision: &Revision) -> String {
    match revision {
        Revision::Default => "the default branch".to_owned(),
        Revision::Branch(b) => format!("--branch {b}"),
        Revision::Commit(c) => format!("--commit {c}"),
    }
}

/// Where a repository's source is: a local directory or a URL git accepts.
pub fn normalise_source(source: &str) -> Result<String, CheckoutError> {
    if source.is_empty() || source.starts_with('-') {
        return Err(CheckoutError::BadSource(
            source.to_owned(),
            "expected a repository path or URL",
        ));
    }
    let path = Path::new(source);
    if path.exists() {
        return std::fs::canonicalize(path)
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(|_| CheckoutError::BadSource(source.to_owned(), "cannot resolve the path"));
    }
    if source.contains("://") || looks_like_scp_url(source) {
        return Ok(source.to_owned());
    }
    Err(CheckoutError::BadSource(
        source.to_owned(),
        "no such directory, and not a URL",
    ))
}

/// `user@host:path`, git's scp-like syntax.
fn looks_like_scp_url(source: &str) -> bool {
    source
        .split_once(':')
        .is_some_and(|(host, _)| !host.is_empty() && !host.contains('/'))
}

/// The workspace name for a source: its last path component without
/// `.git`, e.g. `git@host:team/web-app.git` → `web-app`.
pub fn repo_name(source: &str) -> Result<String, CheckoutError> {
    let last = source
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or_default();
    let name = last.strip_suffix(".git").unwrap_or(last);
    let usable = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if usable {
        Ok(name.to_owned())
    } else {
        Err(CheckoutError::BadSource(
            source.to_owned(),
            "cannot name a workspace after it: its last component must be letters, digits, `.`, `_` or `-`",
        ))
    }
}

/// Checks the revision asked for before anything is cloned.
pub fn validate(revision: &Revision) -> Result<(), CheckoutError> {
    match revision {
        Revision::Default => Ok(()),
        Revision::Branch(b) => {
            let bad = b.is_empty()
                || b.starts_with('-')
                || b.chars().any(|c| c.is_whitespace() || c.is_control());
            if bad {
                Err(CheckoutError::BadBranch(b.clone()))
            } else {
                Ok(())
            }
        }
        Revision::Commit(c) => {
            if (4..=64).contains(&c.len()) && c.chars().all(|ch| ch.is_ascii_hexdigit()) {
                Ok(())
            } else {
                Err(CheckoutError::BadCommit(c.clone()))
            }
        }
    }
}

/// Clones `source` into `dest` (which must not exist) at `revision`.
pub fn clone_into(
    source: &str,
    revision: &Revision,
    dest: &Path,
) -> Result<CheckedOut, CheckoutError> {
    validate(revision)?;
    let name = repo_name(source)?;
    let mut clone = git(None);
    clone.args(["clone", "--quiet", "--no-hardlinks"]);
    match revision {
        Revision::Default => {}
        Revision::Branch(branch) => {
            clone.arg(format!("--branch={branch}"));
        }
        Revision::Commit(_) => {
            clone.arg("--no-checkout");
        }
    }
    clone.arg("--").arg(source).arg(dest);
    run(&mut clone, "clone")?;
    if let Revision::Commit(commit) = revision {
        let mut checkout = git(Some(dest));
        checkout.args(["checkout", "--quiet", "--detach", commit.as_str(), "--"]);
        run(&mut checkout, "checkout")?;
    }
    let commit = stdout_line(git(Some(dest)).args(["rev-parse", "HEAD"]), "rev-parse")?;
    let branch = match revision {
        Revision::Commit(_) => None,
        _ => Some(stdout_line(
            git(Some(dest)).args(["rev-parse", "--abbrev-ref", "HEAD"]),
            "rev-parse",
        )?),
    };
    Ok(CheckedOut {
        source: source.to_owned(),
        name,
        commit,
        branch,
    })
}

/// A revision resolved on the host: what a resume checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub commit: String,
    pub branch: Option<String>,
}

/// A bare mirror of `source` in `dest`, for a resumed run to fetch from,
/// and `revision` resolved in it. The resumed workspace came from a
/// snapshot that setup's code could write, so the host's git never runs in
/// it: the sandbox fetches from this mirror (see [`update_script`]).
pub fn mirror(source: &str, revision: &Revision, dest: &Path) -> Result<Target, CheckoutError> {
    validate(revision)?;
    let mut clone = git(None);
    clone
        .args(["clone", "--quiet", "--bare", "--no-hardlinks", "--"])
        .arg(source)
        .arg(dest);
    run(&mut clone, "clone")?;
    let (spec, branch) = match revision {
        Revision::Default => {
            let head = stdout_line(
                git(Some(dest)).args(["symbolic-ref", "--short", "HEAD"]),
                "symbolic-ref",
            )?;
            (head.clone(), Some(head))
        }
        Revision::Branch(b) => (format!("refs/heads/{b}"), Some(b.clone())),
        Revision::Commit(c) => (c.clone(), None),
    };
    let commit = stdout_line(
        git(Some(dest)).args([
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{spec}^{{commit}}"),
        ]),
        "rev-parse",
    )
    .map_err(|_| CheckoutError::NoSuchRevision {
        revision: revision.clone(),
        repo: source.to_owned(),
    })?;
    Ok(Target { commit, branch })
}

/// The commands maintenance runs first (inside the sandbox, in the
/// workspace): fetch from the mirror and check out the target, keeping
/// untracked and ignored files (installed dependencies) as they are.
pub fn update_script(target: &Target, mirror: &Path) -> String {
    let checkout = match &target.branch {
        Some(branch) => format!(
            "git checkout --quiet --force -B {} {}",
            shell_quote(branch),
            target.commit
        ),
        None => format!("git checkout --quiet --force --detach {}", target.commit),
    };
    format!(
        "git fetch --quiet --no-tags {} '+refs/heads/*:refs/remotes/origin/*'\n{checkout}\n",
        shell_quote(&mirror.to_string_lossy())
    )
}

/// `text` as one bash word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Points the workspace's `origin` at the real source (it was cloned from
/// the host's mirror).
pub fn set_origin(workspace: &Path, source: &str) -> Result<(), CheckoutError> {
    run(
        git(Some(workspace)).args(["remote", "set-url", "origin", "--", source]),
        "remote set-url",
    )
    .map(drop)
}

/// `git`, never prompting (a run has no one to answer), in `dir` if given.
fn git(dir: Option<&Path>) -> Command {
    let mut command = Command::new("git");
    command
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ADVICE", "0")
        .stdin(std::process::Stdio::null());
    if let Some(dir) = dir {
        command.arg("-C").arg(dir);
    }
    command
}

fn run(command: &mut Command, step: &'static str) -> Result<Output, CheckoutError> {
    let output = command.output().map_err(CheckoutError::NoGit)?;
    if output.status.success() {
        return Ok(output);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let detail = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Err(CheckoutError::Git {
        step,
        detail: if detail.is_empty() {
            output.status.to_string()
        } else {
            detail
        },
    })
}

fn stdout_line(command: &mut Command, step: &'static str) -> Result<String, CheckoutError> {
    let output = run(command, step)?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// `/workspace/<name>`, the working directory of every phase.
pub fn workspace_in_sandbox(name: &str) -> PathBuf {
    Path::new("/workspace").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_names_come_from_the_last_component() {
        for (source, name) in [
            ("/srv/repos/web-app", "web-app"),
            ("/srv/repos/web-app/", "web-app"),
            ("/srv/repos/web-app.git", "web-app"),
            ("https://git.example/team/api.git", "api"),
            ("git@git.example:team/tool_1.git", "tool_1"),
            ("git@git.example:solo", "solo"),
        ] {
            assert_eq!(repo_name(source).unwrap(), name, "{source}");
        }
        for bad in ["/", "/srv/..", "https://x/a%20b", "/srv/.git"] {
            assert!(repo_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn revisions_that_git_would_read_as_options_are_refused() {
        for bad in [
            Revision::Branch("--upload-pack=touch /tmp/x".into()),
            Revision::Branch(String::new()),
            Revision::Branch("a b".into()),
            Revision::Commit("--help".into()),
            Revision::Commit("abc".into()),
            Revision::Commit("zzzzzzz".into()),
        ] {
            assert!(validate(&bad).is_err(), "{bad:?}");
        }
        for good in [
            Revision::Default,
            Revision::Branch("feature/x-1".into()),
            Revision::Commit("0123abcd".into()),
        ] {
            assert!(validate(&good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn the_update_script_quotes_what_it_is_given() {
        let target = Target {
            commit: "0123abcd".into(),
            branch: Some("it's".into()),
        };
        let script = update_script(&target, Path::new("/run/x"));
        assert!(script.contains(r"-B 'it'\''s' 0123abcd"), "{script}");
        assert!(
            script.contains("git fetch --quiet --no-tags '/run/x'"),
            "{script}"
        );
    }

    #[test]
    fn sources_must_be_a_directory_or_a_url() {
        assert!(normalise_source("-oops").is_err());
        assert!(normalise_source("").is_err());
        assert!(normalise_source("/no/such/repo").is_err());
        assert_eq!(
            normalise_source("https://git.example/a.git").unwrap(),
            "https://git.example/a.git"
        );
        assert_eq!(
            normalise_source("git@git.example:a.git").unwrap(),
            "git@git.example:a.git"
        );
        assert!(normalise_source("/tmp").unwrap().starts_with('/'));
    }
}
