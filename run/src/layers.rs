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

/// The first of `points` (directories inside, where later phases mount)
/// that a phase's layer `upper` holds as something other than a directory,
/// and what it holds there. Setup code could otherwise publish a snapshot
/// with a symlink where the mirror is mounted, and every run resuming it
/// would fail for the snapshot's whole lifetime. A whiteout (the phase
/// deleted the directory) is fine: later phases make it again.
pub(crate) fn replaced_mount_point(
    upper: &Path,
    points: &[&Path],
) -> Option<(PathBuf, &'static str)> {
    use std::os::unix::fs::FileTypeExt;
    for point in points {
        let mut inside = PathBuf::from("/");
        for part in point.components().skip(1) {
            inside.push(part);
            let Ok(meta) = std::fs::symlink_metadata(upper.join(inside.strip_prefix("/").ok()?))
            else {
                break;
            };
            let kind = meta.file_type();
            let what = if kind.is_dir() {
                continue;
            } else if kind.is_char_device() && std::os::unix::fs::MetadataExt::rdev(&meta) == 0 {
                break;
            } else if kind.is_symlink() {
                "a symbolic link"
            } else if kind.is_file() {
                "a file"
            } else {
                "a special file"
            };
            return Some((inside, what));
        }
    }
    None
}

/// Removes run directories named for a process that no longer exists
/// (what a tollgate killed with SIGKILL left behind); how many.
pub(crate) fn remove_abandoned(runs: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(runs) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_point_replaced_in_a_layer_is_found_a_deleted_one_is_not() {
        let upper = std::env::temp_dir().join(format!("tollgate-points-{}", std::process::id()));
        let points = [
            Path::new("/run/tollgate/origin.git"),
            Path::new("/workspace/proj"),
        ];
        std::fs::create_dir_all(upper.join("run")).unwrap();
        std::fs::create_dir_all(upper.join("workspace/proj")).unwrap();
        assert_eq!(replaced_mount_point(&upper, &points), None);
        std::os::unix::fs::symlink("/tmp", upper.join("run/tollgate")).unwrap();
        assert_eq!(
            replaced_mount_point(&upper, &points),
            Some((PathBuf::from("/run/tollgate"), "a symbolic link"))
        );
        std::fs::remove_file(upper.join("run/tollgate")).unwrap();
        std::fs::remove_dir(upper.join("workspace/proj")).unwrap();
        std::fs::write(upper.join("workspace/proj"), "").unwrap();
        assert_eq!(
            replaced_mount_point(&upper, &points),
            Some((PathBuf::from("/workspace/proj"), "a file"))
        );
        std::fs::remove_dir_all(&upper).unwrap();
    }

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
