//! The state directory (DESIGN.md "Commands"): holds the CA, the cache and
//! the layers of runs in progress.

use std::path::{Path, PathBuf};

/// Where tollgate keeps state; nothing is created until a command needs it.
#[derive(Debug, Clone)]
pub struct StateDir(PathBuf);

impl StateDir {
    /// `--state-dir` / `TOLLGATE_STATE_DIR`, else /var/lib/tollgate as root,
    /// else $XDG_STATE_HOME/tollgate, else ~/.local/state/tollgate.
    pub fn new(explicit: Option<PathBuf>) -> StateDir {
        StateDir(explicit.unwrap_or_else(default_state_dir))
    }

    pub fn root(&self) -> &Path {
        &self.0
    }

    /// The writable layers of runs in progress.
    pub fn runs_dir(&self) -> PathBuf {
        self.0.join("runs")
    }

    /// Cache snapshots.
    pub fn cache_dir(&self) -> PathBuf {
        self.0.join("cache")
    }

    /// The default CA directory.
    pub fn ca_dir(&self) -> PathBuf {
        self.0.join("certs")
    }

    /// Directories no sandbox may see: the state dir itself (the CA key,
    /// snapshots, the layers of runs), the default one when another is in
    /// use (it may hold a CA too), and a CA kept elsewhere, as they are on
    /// the host (symlinks resolved: masks apply to real paths).
    pub fn private_dirs(&self, ca_dir: Option<&Path>) -> Vec<PathBuf> {
        self.private_dirs_with(ca_dir, &default_state_dir())
    }

    fn private_dirs_with(&self, ca_dir: Option<&Path>, default: &Path) -> Vec<PathBuf> {
        let mut dirs = vec![self.root().to_path_buf(), self.ca_dir()];
        dirs.push(default.to_path_buf());
        dirs.extend(ca_dir.map(Path::to_path_buf));
        let mut real: Vec<PathBuf> = dirs
            .into_iter()
            .filter_map(|dir| std::fs::canonicalize(dir).ok())
            .collect();
        real.dedup();
        real
    }
}

impl StateDir {
    /// The output directories of the runs in progress on this host.
    pub fn out_dirs_in_progress(&self) -> Vec<PathBuf> {
        crate::layers::out_dirs_in_progress(&self.runs_dir())
    }

    /// Removes the run directories of tollgate processes that are gone
    /// (killed with SIGKILL); how many.
    pub fn remove_abandoned_runs(&self) -> usize {
        crate::layers::remove_abandoned(&self.runs_dir())
    }
}

fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/tollgate");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/state")))
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("tollgate-{}", nix::unistd::geteuid()))
        });
    base.join("tollgate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_state_dir_is_private_too_when_another_is_used() {
        let default = std::env::temp_dir().join(format!("tollgate-default-{}", std::process::id()));
        let used = default.with_extension("used");
        std::fs::create_dir_all(&default).unwrap();
        std::fs::create_dir_all(&used).unwrap();
        let dirs = StateDir::new(Some(used.clone())).private_dirs_with(None, &default);
        for dir in [&used, &default] {
            assert!(
                dirs.contains(&std::fs::canonicalize(dir).unwrap()),
                "{dirs:?}"
            );
        }
        let missing = default.with_extension("missing");
        let dirs = StateDir::new(Some(used.clone())).private_dirs_with(None, &missing);
        assert_eq!(dirs, [std::fs::canonicalize(&used).unwrap()]);
        std::fs::remove_dir_all(&default).unwrap();
        std::fs::remove_dir_all(&used).unwrap();
    }
}
