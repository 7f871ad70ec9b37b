//! result.json (DESIGN.md "Environment files"): what a run hands back.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkout::CheckedOut;
use crate::error::RunError;

/// How a phase ended.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseOutcome {
    pub name: &'static str,
    pub exit_code: i32,
    pub duration_ms: u64,
    pub timed_out: bool,
    pub oom_killed: bool,
    /// Stopped because the run was cancelled (SIGINT/SIGTERM to tollgate).
    pub interrupted: bool,
    /// The phase's log in the output directory.
    pub log: String,
}

impl PhaseOutcome {
    pub fn succeeded(&self) -> bool {
        self.exit_code == 0 && !self.interrupted
    }
}

#[derive(Debug, Serialize)]
pub struct RunResult {
    pub env: String,
    pub repo: CheckedOut,
    pub cache: CacheResult,
    pub phases: Vec<PhaseOutcome>,
    pub diff: Option<DiffResult>,
    pub exit_code: i32,
    pub warnings: Vec<String>,
    /// The output directory this result was written to.
    #[serde(skip)]
    pub out: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct CacheResult {
    pub status: &'static str,
    pub key: String,
}

#[derive(Debug, Serialize)]
pub struct DiffResult {
    pub path: &'static str,
    pub files_changed: usize,
    pub bytes: u64,
}

impl RunResult {
    pub fn write(&self, out: &Path) -> Result<(), RunError> {
        let path = out.join("result.json");
        let mut text =
            serde_json::to_vec_pretty(self).map_err(RunError::io_other("serialise result.json"))?;
        text.push(b'\n');
        std::fs::write(&path, text).map_err(RunError::io(format!("write {}", path.display())))
    }
}
