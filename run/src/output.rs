//! The output directory of a run, and each phase's output on its way from
//! the sandbox to the phase's log (raw, secret values redacted) and to the
//! run's events (line by line, with the time since the phase started).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::error::RunError;
use crate::events::{Event, EventSink};
use crate::secrets::Redactor;

/// The directory given, which must be new or empty, or a new one under
/// ./tollgate-out/ named for the environment, the time and this process.
pub fn create_out_dir(asked: Option<&Path>, env_name: &str) -> Result<PathBuf, RunError> {
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
        Ok(false) => return Err(RunError::OutNotEmpty(dir)),
        // Private: it holds every phase's log and audit records.
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(RunError::io(format!(
                "cannot create the output directory {}",
                dir.display()
            )))?,
    }
    Ok(dir)
}

/// Removes what a run that failed before its first phase wrote to the
/// output directory (the audit log), so the same --out can be used again.
pub fn discard_out_dir(out: &Path) {
    let _ = std::fs::remove_file(out.join("audit.jsonl"));
    let _ = std::fs::remove_dir(out);
}

/// A phase's output being copied by a thread of its own.
pub struct PhaseStream(JoinHandle<Result<(), RunError>>);

impl PhaseStream {
    pub fn start(
        pipe: OwnedFd,
        phase: &'static str,
        log: &Path,
        redact: &[Vec<u8>],
        events: EventSink,
    ) -> Result<PhaseStream, RunError> {
        let log =
            File::create(log).map_err(RunError::io(format!("cannot create {}", log.display())))?;
        let copy = Copy {
            log,
            redactor: Redactor::new(redact.iter().cloned()),
            lines: Lines {
                phase,
                started: Instant::now(),
                partial: Vec::new(),
                events,
            },
        };
        let thread = std::thread::Builder::new()
            .name(format!("tollgate-{phase}-output"))
            .spawn(move || copy.run(File::from(pipe)))
            .map_err(RunError::io("cannot start the output thread"))?;
        Ok(PhaseStream(thread))
    }

    /// Waits for the end of the output: every writer (every process of the
    /// phase) is gone.
    pub fn finish(self) -> Result<(), RunError> {
        self.0.join().map_err(|_| RunError::Panicked("output"))?
    }
}

struct Copy {
    log: File,
    redactor: Redactor,
    lines: Lines,
}

impl Copy {
    fn run(mut self, mut pipe: File) -> Result<(), RunError> {
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let n = match pipe.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(RunError::io("read the phase's output")(e)),
            };
            let clean = self.redactor.push(&buffer[..n]);
            self.emit(&clean)?;
        }
        let rest = self.redactor.finish();
        self.emit(&rest)?;
        self.lines.flush();
        Ok(())
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), RunError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.log
            .write_all(bytes)
            .map_err(RunError::io("write the phase log"))?;
        self.lines.push(bytes);
        Ok(())
    }
}

/// The longest piece of a line tollgate holds: a phase that prints a line
/// without end must not make the host side hold it all (it is outside the
/// sandbox's memory limit). A longer line arrives in pieces of this size.
const MAX_LINE: usize = 64 * 1024;

/// Cuts a phase's output into lines for the events.
struct Lines {
    phase: &'static str,
    started: Instant,
    partial: Vec<u8>,
    events: EventSink,
}

impl Lines {
    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = &bytes[..bytes.len().min(MAX_LINE - self.partial.len())];
            let take = memchr::memchr(b'\n', room).map_or(room.len(), |end| end + 1);
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.ends_with(b"\n") || self.partial.len() == MAX_LINE {
                self.send();
            }
        }
    }

    /// The last line, when the output did not end with a newline.
    fn flush(&mut self) {
        if !self.partial.is_empty() {
            self.send();
        }
    }

    fn send(&mut self) {
        (self.events)(Event::Output {
            phase: self.phase,
            elapsed: self.started.elapsed(),
            line: std::mem::take(&mut self.partial),
        });
    }
}

/// Rewrites `path` with every secret value replaced (for outputs written
/// by others: the audit log, the diff).
pub fn redact_file(path: &Path, redact: &[Vec<u8>]) -> Result<bool, RunError> {
    if redact.is_empty() || !path.exists() {
        return Ok(false);
    }
    let bytes = std::fs::read(path).map_err(RunError::io(format!("read {}", path.display())))?;
    let mut redactor = Redactor::new(redact.iter().cloned());
    let mut clean = redactor.push(&bytes);
    clean.extend(redactor.finish());
    if clean == bytes {
        return Ok(false);
    }
    std::fs::write(path, clean).map_err(RunError::io(format!("write {}", path.display())))?;
    Ok(true)
}
