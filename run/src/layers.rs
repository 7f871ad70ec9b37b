//! A run's writable layers on disk: one directory per phase under
//! `<state>/runs/<id>/`, each holding an overlay `upper/` and `work/`.
//!
//! Phases of one run see the same files because each phase's upper becomes
//! a read-only layer of the next: setup writes `setup/upper`, the agent runs
//! on `agent/upper` over it. The layers live under the state dir, which is
//! hidden inside every sandbox, and on the same filesystem as the cache, so
//! publishing a layer as a snapshot is a rename.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;

/// A run directory that could not be made.
#[derive(Debug, Error)]
#[error("{what}: {source}")]
pub struct LayerError {
    what: String,
    source: std::io::Error,
}

fn layer_error(what: String) -> impl FnOnce(std::io::Error) -> LayerError {
    move |source| LayerError { what, source }
}

/// The directories of one run; removed (with whatever is left in them)
/// when dropped.
#[derive(Debug)]
pub struct RunLayers {
    dir: PathBuf,
    id: String,
}

impl RunLayers {
    /// A fresh, private (0700) run directory under `runs`, after removing
    /// those of runs whose tollgate process is gone.
    pub fn create(runs: &Path) -> Result<RunLayers, LayerError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(runs)
            .map_err(layer_error(format!("create {}", runs.display())))?;
        remove_abandoned(runs);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id = format!("{}-{nanos:x}", std::process::id());
        let dir = runs.join(&id);
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(layer_error(format!("create {}", dir.display())))?;
        Ok(RunLayers { dir, id })
    }

    /// Unique among runs on this host: names cgroups and logs.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Creates `<phase>/upper` and `<phase>/work`; returns `<phase>`, the
    /// directory a sandbox's writable layer lives in.
    pub fn prepare(&self, phase: &str) -> Result<PathBuf, LayerError> {
        let dir = self.dir.join(phase);
        for sub in ["upper", "work"] {
            let path = dir.join(sub);
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(layer_error(format!("create {}", path.display())))?;
        }
        Ok(dir)
    }

    /// Records where this run writes its outputs, so that the phases of
    /// every run in progress hide them (see [`out_dirs_in_progress`]).
    pub fn record_out_dir(&self, out: &Path) -> Result<(), LayerError> {
        let out =
            std::fs::canonicalize(out).map_err(layer_error(format!("find {}", out.display())))?;
        std::os::unix::fs::symlink(&out, self.dir.join(OUT_LINK)).map_err(layer_error(format!(
            "record the output directory in {}",
            self.dir.display()
        )))
    }

    /// Where a snapshot is assembled before its rename into the cache.
    pub fn staging(&self) -> PathBuf {
        self.dir.join("snapshot")
    }

    /// Where the host keeps its mirror of the repo for a resume.
    pub fn mirror(&self) -> PathBuf {
        self.dir.join("origin.git")
    }

    /// The phase's upper directory: its writes, as files on the host.
    pub fn upper(&self, phase: &str) -> PathBuf {
        self.dir.join(phase).join("upper")
    }
}

impl Drop for RunLayers {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The name, in a run's directory, of the link to its output directory.
const OUT_LINK: &str = "out";

/// The output directories of the runs in progress under `runs`.
pub fn out_dirs_in_progress(runs: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path().join(OUT_LINK)).ok())
        .collect()
}

/// Run directories named for a process that no longer exists: what a
/// tollgate killed with SIGKILL left behind.
fn remove_abandoned(runs: &Path) {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_get_upper_and_work_and_the_run_is_removed_on_drop() {
        let runs = std::env::temp_dir().join(format!("tollgate-layers-{}", std::process::id()));
        let layers = RunLayers::create(&runs).unwrap();
        let setup = layers.prepare("setup").unwrap();
        assert!(setup.join("upper").is_dir() && setup.join("work").is_dir());
        assert_eq!(layers.upper("setup"), setup.join("upper"));
        let dir = layers.dir.clone();
        drop(layers);
        assert!(!dir.exists());
        std::fs::remove_dir_all(&runs).unwrap();
    }

    #[test]
    fn directories_of_dead_runs_are_removed_and_live_ones_kept() {
        let runs = std::env::temp_dir().join(format!("tollgate-stale-{}", std::process::id()));
        let dead = runs.join(format!("{}-1", u32::MAX - 1));
        let live = runs.join(format!("{}-1", std::process::id()));
        std::fs::create_dir_all(dead.join("setup/upper")).unwrap();
        std::fs::create_dir_all(&live).unwrap();
        let layers = RunLayers::create(&runs).unwrap();
        assert!(!dead.exists());
        assert!(live.exists());
        drop(layers);
        std::fs::remove_dir_all(&runs).unwrap();
    }
}
