//! Automatic setup, for an environment with no `setup` key: which package
//! managers to run, found from the lock files at the root of the workspace.
//!
//! Only lock files count, never a bare `package.json`, `Pipfile` or
//! `pyproject.toml`: each command installs what its lock file pins and fails
//! rather than resolve new versions (`npm ci`, `--frozen-lockfile`,
//! `--deploy`), so a setup, and the snapshot cached from it, holds what the
//! repository asked for.
//!
//! Limits:
//! - Only the workspace root is looked at: lock files in subdirectories
//!   (monorepo packages, a `frontend/`) are not found.
//! - The tools must already be in the base; none is installed here.
//! - `requirements.txt` pins only what it says: pip installs it as written.
//! - Yarn 2 and later take `--frozen-lockfile` as a deprecated alias of
//!   `--immutable`.
//! - Only regular files count (lstat): a symlink or a directory with a lock
//!   file's name is reported as ignored, since what a symlink resolves to is
//!   not part of the clone.

use std::fs;
use std::io;
use std::path::Path;

/// A package manager to run, because its lock file is in the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    pub tool: &'static str,
    pub lockfile: &'static str,
    /// Run in the workspace root, the setup phase's working directory.
    pub command: &'static str,
}

/// What automatic setup will run, and the lock files it found and will not
/// use, each with the reason, so that the user is not left guessing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoSetup {
    /// In the order they run: the JavaScript tool first, then Python's.
    pub detected: Vec<Detected>,
    /// (lock file, why it is not used).
    pub ignored: Vec<(&'static str /*lockfile*/, &'static str /*why*/)>,
}

const PNPM: Detected = Detected {
    tool: "pnpm",
    lockfile: "pnpm-lock.yaml",
    command: "pnpm install --frozen-lockfile",
};
const YARN: Detected = Detected {
    tool: "yarn",
    lockfile: "yarn.lock",
    command: "yarn install --frozen-lockfile",
};
const NPM_SHRINKWRAP: Detected = Detected {
    tool: "npm",
    lockfile: "npm-shrinkwrap.json",
    command: "npm ci",
};
const NPM: Detected = Detected {
    tool: "npm",
    lockfile: "package-lock.json",
    command: "npm ci",
};
const PIP: Detected = Detected {
    tool: "pip",
    lockfile: "requirements.txt",
    command: "pip install -r requirements.txt",
};
const PIPENV: Detected = Detected {
    tool: "pipenv",
    lockfile: "Pipfile.lock",
    command: "pipenv install --deploy",
};
const POETRY: Detected = Detected {
    tool: "poetry",
    lockfile: "poetry.lock",
    command: "poetry install --no-interaction",
};

/// JavaScript lock files, preferred first. One package manager owns
/// `node_modules`, so only the first one found is used. npm itself prefers
/// `npm-shrinkwrap.json` to `package-lock.json` when both are there.
const JAVASCRIPT: [Detected; 4] = [PNPM, YARN, NPM_SHRINKWRAP, NPM];

/// Python tools do not share one install tree the way JavaScript's do: each
/// runs when its lock file is there.
const PYTHON: [Detected; 3] = [PIP, PIPENV, POETRY];

const NOT_REGULAR: &str = "not a regular file; symlinks are not followed";

const NOTHING: &str =
    "no lock file of npm, yarn, pnpm, pip, pipenv or poetry found: nothing to set up";

/// Why a JavaScript lock file is not used when `used`'s is (`used` comes
/// before it in [`JAVASCRIPT`]).
fn outranked_by(used: &Detected) -> &'static str {
    match used.tool {
        "pnpm" => "pnpm-lock.yaml is also present, and pnpm is preferred over yarn and npm",
        "yarn" => "yarn.lock is also present, and yarn is preferred over npm",
        _ => "npm-shrinkwrap.json is also present, and npm ci uses it instead",
    }
}

impl AutoSetup {
    /// Looks at `workspace` (a fresh clone on the host) for lock files.
    /// Fails if `workspace` is not a directory, or a lock file's name cannot
    /// be examined (rather than silently set up less than the repository
    /// needs).
    pub fn detect(workspace: &Path) -> io::Result<AutoSetup> {
        if !fs::metadata(workspace)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("workspace {} is not a directory", workspace.display()),
            ));
        }
        let mut setup = AutoSetup::default();
        let mut javascript = Vec::new();
        for candidate in JAVASCRIPT {
            if setup.present(workspace, candidate.lockfile)? {
                javascript.push(candidate);
            }
        }
        if let Some((used, others)) = javascript.split_first() {
            setup.detected.push(*used);
            let why = outranked_by(used);
            setup
                .ignored
                .extend(others.iter().map(|other| (other.lockfile, why)));
        }
        for candidate in PYTHON {
            if setup.present(workspace, candidate.lockfile)? {
                setup.detected.push(candidate);
            }
        }
        Ok(setup)
    }

    /// Whether `lockfile` is a regular file in `workspace`; anything else by
    /// that name is noted as ignored.
    fn present(&mut self, workspace: &Path, lockfile: &'static str) -> io::Result<bool> {
        let path = workspace.join(lockfile);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(true),
            Ok(_) => {
                self.ignored.push((lockfile, NOT_REGULAR));
                Ok(false)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(io::Error::new(
                error.kind(),
                format!("cannot examine {}: {error}", path.display()),
            )),
        }
    }

    /// The bash script: one line per detected command, each preceded by an
    /// `echo "tollgate: auto-setup: <tool> (<lockfile>): <command>"` line; ""
    /// when nothing was detected.
    ///
    /// It starts with `set -e`: a failed install must fail the setup, not be
    /// hidden by the exit status of the next one. Every piece is a constant
    /// of this module, so nothing needs quoting.
    pub fn script(&self) -> String {
        if self.detected.is_empty() {
            return String::new();
        }
        let steps: String = self.detected.iter().map(step).collect();
        format!("set -e\n{steps}")
    }

    /// One human line saying what was detected (or "no lock file of npm,
    /// yarn, pnpm, pip, pipenv or poetry found: nothing to set up"), and
    /// what was ignored and why.
    pub fn summary(&self) -> String {
        let mut line = if self.detected.is_empty() {
            NOTHING.to_owned()
        } else {
            let tools: Vec<String> = self
                .detected
                .iter()
                .map(|d| format!("{} ({})", d.tool, d.lockfile))
                .collect();
            format!("automatic setup from lock files: {}", tools.join(", "))
        };
        for (lockfile, why) in &self.ignored {
            line.push_str(&format!("; ignored {lockfile} ({why})"));
        }
        line
    }
}

fn step(detected: &Detected) -> String {
    let Detected {
        tool,
        lockfile,
        command,
    } = detected;
    format!("echo \"tollgate: auto-setup: {tool} ({lockfile}): {command}\"\n{command}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A scratch workspace, removed when dropped.
    struct Workspace(PathBuf);

    impl Workspace {
        fn with(lockfiles: &[&str]) -> Workspace {
            static COUNT: AtomicUsize = AtomicUsize::new(0);
            let n = COUNT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "tollgate-autosetup-test-{}-{n}",
                std::process::id()
            ));
            fs::create_dir_all(&path).unwrap();
            for lockfile in lockfiles {
                fs::write(path.join(lockfile), "{}\n").unwrap();
            }
            Workspace(path)
        }

        fn detect(&self) -> AutoSetup {
            AutoSetup::detect(&self.0).unwrap()
        }
    }

    impl Drop for Workspace {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn tools(setup: &AutoSetup) -> Vec<(&str, &str)> {
        setup
            .detected
            .iter()
            .map(|d| (d.tool, d.lockfile))
            .collect()
    }

    #[test]
    fn each_lock_file_alone() {
        let cases = [
            ("package-lock.json", "npm", "npm ci"),
            ("npm-shrinkwrap.json", "npm", "npm ci"),
            ("yarn.lock", "yarn", "yarn install --frozen-lockfile"),
            ("pnpm-lock.yaml", "pnpm", "pnpm install --frozen-lockfile"),
            ("requirements.txt", "pip", "pip install -r requirements.txt"),
            ("Pipfile.lock", "pipenv", "pipenv install --deploy"),
            ("poetry.lock", "poetry", "poetry install --no-interaction"),
        ];
        for (lockfile, tool, command) in cases {
            let setup = Workspace::with(&[lockfile]).detect();
            let expected = Detected {
                tool,
                lockfile,
                command,
            };
            assert_eq!(setup.detected, [expected], "{lockfile}");
            assert!(setup.ignored.is_empty(), "{lockfile}");
        }
    }

    #[test]
    fn pnpm_is_preferred_over_yarn_and_npm() {
        let setup = Workspace::with(&["package-lock.json", "yarn.lock", "pnpm-lock.yaml"]).detect();
        assert_eq!(tools(&setup), [("pnpm", "pnpm-lock.yaml")]);
        let why = "pnpm-lock.yaml is also present, and pnpm is preferred over yarn and npm";
        assert_eq!(
            setup.ignored,
            [("yarn.lock", why), ("package-lock.json", why)]
        );
    }

    #[test]
    fn yarn_is_preferred_over_npm() {
        let setup = Workspace::with(&["package-lock.json", "yarn.lock"]).detect();
        assert_eq!(tools(&setup), [("yarn", "yarn.lock")]);
        let why = "yarn.lock is also present, and yarn is preferred over npm";
        assert_eq!(setup.ignored, [("package-lock.json", why)]);
    }

    #[test]
    fn npm_uses_its_shrinkwrap_over_its_package_lock() {
        let setup = Workspace::with(&["package-lock.json", "npm-shrinkwrap.json"]).detect();
        assert_eq!(tools(&setup), [("npm", "npm-shrinkwrap.json")]);
        let why = "npm-shrinkwrap.json is also present, and npm ci uses it instead";
        assert_eq!(setup.ignored, [("package-lock.json", why)]);
    }

    #[test]
    fn python_tools_coexist_with_each_other_and_javascript() {
        let all = [
            "poetry.lock",
            "Pipfile.lock",
            "requirements.txt",
            "package-lock.json",
        ];
        let setup = Workspace::with(&all).detect();
        assert_eq!(
            tools(&setup),
            [
                ("npm", "package-lock.json"),
                ("pip", "requirements.txt"),
                ("pipenv", "Pipfile.lock"),
                ("poetry", "poetry.lock"),
            ]
        );
        assert!(setup.ignored.is_empty());
    }

    #[test]
    fn a_symlinked_lock_file_is_ignored() {
        let workspace = Workspace::with(&["real.json", "yarn.lock"]);
        symlink("real.json", workspace.0.join("package-lock.json")).unwrap();
        symlink("yarn.lock", workspace.0.join("pnpm-lock.yaml")).unwrap();
        let setup = workspace.detect();
        assert_eq!(tools(&setup), [("yarn", "yarn.lock")]);
        assert_eq!(
            setup.ignored,
            [
                ("pnpm-lock.yaml", NOT_REGULAR),
                ("package-lock.json", NOT_REGULAR)
            ]
        );
    }

    #[test]
    fn a_directory_named_like_a_lock_file_is_ignored() {
        let workspace = Workspace::with(&[]);
        fs::create_dir(workspace.0.join("poetry.lock")).unwrap();
        let setup = workspace.detect();
        assert!(setup.detected.is_empty());
        assert_eq!(setup.ignored, [("poetry.lock", NOT_REGULAR)]);
        assert_eq!(setup.script(), "");
        assert_eq!(
            setup.summary(),
            "no lock file of npm, yarn, pnpm, pip, pipenv or poetry found: nothing to set up; \
             ignored poetry.lock (not a regular file; symlinks are not followed)"
        );
    }

    #[test]
    fn an_empty_workspace_sets_up_nothing() {
        let setup = Workspace::with(&[]).detect();
        assert_eq!(setup, AutoSetup::default());
        assert_eq!(setup.script(), "");
        assert_eq!(
            setup.summary(),
            "no lock file of npm, yarn, pnpm, pip, pipenv or poetry found: nothing to set up"
        );
    }

    #[test]
    fn a_workspace_that_is_not_a_directory_is_an_error() {
        let workspace = Workspace::with(&["file"]);
        let error = AutoSetup::detect(&workspace.0.join("file")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotADirectory);
        let error = AutoSetup::detect(&workspace.0.join("missing")).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn script_text() {
        let setup = Workspace::with(&["requirements.txt", "package-lock.json"]).detect();
        assert_eq!(
            setup.script(),
            "set -e\n\
             echo \"tollgate: auto-setup: npm (package-lock.json): npm ci\"\n\
             npm ci\n\
             echo \"tollgate: auto-setup: pip (requirements.txt): pip install -r requirements.txt\"\n\
             pip install -r requirements.txt\n"
        );
    }

    #[test]
    fn summary_text() {
        let setup = Workspace::with(&["yarn.lock", "pnpm-lock.yaml", "poetry.lock"]).detect();
        assert_eq!(
            setup.summary(),
            "automatic setup from lock files: pnpm (pnpm-lock.yaml), poetry (poetry.lock); \
             ignored yarn.lock (pnpm-lock.yaml is also present, and pnpm is preferred over yarn and npm)"
        );
    }

    /// The script puts these inside double quotes and on command lines
    /// unquoted: they must stay free of anything the shell interprets.
    #[test]
    fn every_piece_of_the_script_is_shell_inert() {
        let inert = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b" .-_".contains(&b))
        };
        for d in JAVASCRIPT.iter().chain(&PYTHON) {
            assert!(
                inert(d.tool) && inert(d.lockfile) && inert(d.command),
                "{d:?}"
            );
        }
    }
}
