//! What a run hands back: the output directory, each phase's output
//! streamed live to the terminal and its log (secret values redacted), and
//! result.json.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tollgate_sandbox::checkout::CheckedOut;
use tollgate_sandbox::secrets::Redactor;

use super::phase::Outcome;

/// The directory given with `--out`, or a new one under ./tollgate-out/.
pub fn create_out_dir(asked: Option<&Path>, env_name: &str) -> Result<PathBuf> {
    let dir = match asked {
        Some(dir) => dir.to_path_buf(),
        None => {
            let stamp: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                .to_string()
                .chars()
                .filter(|c| !matches!(c, '-' | ':'))
                .collect();
            PathBuf::from("tollgate-out").join(format!("{env_name}-{stamp}-{}", std::process::id()))
        }
    };
    let empty = std::fs::read_dir(&dir).map(|mut entries| entries.next().is_none());
    match empty {
        Ok(true) => {}
        Ok(false) => bail!(
            "--out {}: not empty; give a new or empty directory (results are never overwritten)",
            dir.display()
        ),
        Err(_) => std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the output directory {}", dir.display()))?,
    }
    Ok(dir)
}

/// Removes what a run that failed before its first phase wrote to the
/// output directory (the audit log), so the same --out can be used again.
pub fn discard_out_dir(out: &Path) {
    let _ = std::fs::remove_file(out.join("audit.jsonl"));
    let _ = std::fs::remove_dir(out);
}

/// A phase's output on its way from the sandbox's pipe to the terminal and
/// the phase's log: redacted, each line prefixed with the time since the
/// phase started.
pub struct PhaseStream(JoinHandle<Result<()>>);

impl PhaseStream {
    pub fn start(
        pipe: OwnedFd,
        phase: &str,
        log: &Path,
        redact: &[Vec<u8>],
        started: Instant,
    ) -> Result<PhaseStream> {
        let log = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let redactor = Redactor::new(redact.iter().cloned());
        println!("━━━ {phase} ━━━");
        let thread = std::thread::Builder::new()
            .name(format!("tollgate-{phase}-output"))
            .spawn(move || copy_out(File::from(pipe), log, redactor, started))
            .context("cannot start the output thread")?;
        Ok(PhaseStream(thread))
    }

    /// Waits for the end of the output: every writer (every process of the
    /// phase) is gone.
    pub fn finish(self) -> Result<()> {
        self.0
            .join()
            .map_err(|_| anyhow::anyhow!("the output thread panicked"))?
    }
}

fn copy_out(mut pipe: File, mut log: File, mut redactor: Redactor, started: Instant) -> Result<()> {
    let mut lines = LinePrefix {
        started,
        at_line_start: true,
    };
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let n = match pipe.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read the phase's output"),
        };
        emit(&mut log, &lines.apply(&redactor.push(&buffer[..n])))?;
    }
    let mut rest = lines.apply(&redactor.finish());
    if !lines.at_line_start {
        rest.push(b'\n');
    }
    emit(&mut log, &rest)
}

fn emit(log: &mut File, bytes: &[u8]) -> Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    log.write_all(bytes).context("write the phase log")?;
    let mut stdout = std::io::stdout().lock();
    // The terminal going away must not stop the run or lose the log.
    let _ = stdout.write_all(bytes).and_then(|()| stdout.flush());
    Ok(())
}

/// Puts `[  12.3s] ` at the start of every line.
struct LinePrefix {
    started: Instant,
    at_line_start: bool,
}

impl LinePrefix {
    fn apply(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() + 16);
        for &byte in bytes {
            if self.at_line_start {
                let elapsed = self.started.elapsed().as_secs_f64();
                out.extend_from_slice(format!("[{elapsed:7.1}s] ").as_bytes());
            }
            out.push(byte);
            self.at_line_start = byte == b'\n';
        }
        out
    }
}

/// Rewrites `path` with every secret value replaced (for outputs written
/// by others: the audit log, the diff).
pub fn redact_file(path: &Path, redact: &[Vec<u8>]) -> Result<bool> {
    if redact.is_empty() || !path.exists() {
        return Ok(false);
    }
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let mut redactor = Redactor::new(redact.iter().cloned());
    let mut clean = redactor.push(&bytes);
    clean.extend(redactor.finish());
    if clean == bytes {
        return Ok(false);
    }
    std::fs::write(path, clean).with_context(|| format!("write {}", path.display()))?;
    Ok(true)
}

/// result.json (DESIGN.md "Environment files").
#[derive(Debug, Serialize)]
pub struct RunResult {
    pub env: String,
    pub repo: CheckedOut,
    pub cache: CacheResult,
    pub phases: Vec<Outcome>,
    pub diff: Option<DiffResult>,
    pub exit_code: i32,
    pub warnings: Vec<String>,
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
    pub fn write(&self, out: &Path) -> Result<()> {
        let path = out.join("result.json");
        let mut text = serde_json::to_vec_pretty(self).context("serialise result.json")?;
        text.push(b'\n');
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    }
}
