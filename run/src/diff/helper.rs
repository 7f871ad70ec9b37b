//! The rootless diff's helper process. A process of several threads (the
//! run's) cannot enter a user namespace of its own, which a user needs to
//! mount the views; a fresh exec of this binary can. It gets the job as
//! JSON on its standard input, enters a user namespace (the caller is root
//! in it) and a mount namespace, mounts the views, writes fast-import's
//! stream on its standard output and the paths it left out, as JSON, to a
//! file of the scratch directory.

use std::collections::BTreeSet;
use std::io::Read;
use std::io::Write;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, ExitCode, Stdio};

use nix::sched::{unshare, CloneFlags};

use super::views::{materialize, Job};
use super::{io_error, DiffError, Scratch};

/// The hidden subcommand of the helper.
const HELPER_ARG: &str = "__diff";
/// The file the helper writes the paths it left out to.
const SKIPPED: &str = "skipped.json";

/// Runs the helper to its end: `stream` is fast-import's input.
pub(super) fn run(
    job: &Job,
    scratch: &Scratch,
    stream: ChildStdin,
) -> Result<BTreeSet<PathBuf>, DiffError> {
    let report = scratch.root.join(SKIPPED);
    let mut child = Command::new("/proc/self/exe")
        .arg(HELPER_ARG)
        .arg(&report)
        .stdin(Stdio::piped())
        .stdout(Stdio::from(stream))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_error("start the diff's helper"))?;
    let job = serde_json::to_vec(job).map_err(|e| DiffError::Io {
        what: "describe the diff's job".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        std::io::Write::write_all(&mut stdin, &job).map_err(io_error("hand the diff its job"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(io_error("wait for the diff's helper"))?;
    if !output.status.success() {
        return Err(DiffError::Io {
            what: "the diff's helper".into(),
            source: std::io::Error::other(
                String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            ),
        });
    }
    let skipped = std::fs::read(&report).map_err(io_error("read the diff helper's report"))?;
    serde_json::from_slice(&skipped).map_err(|e| DiffError::Io {
        what: "read the diff helper's report".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Runs the helper when this process was started as it: a binary that
/// embeds the run workflow calls this first thing in `main`.
pub fn enter_if_requested() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != HELPER_ARG {
        return None;
    }
    let report = PathBuf::from(args.next()?);
    Some(match helper(&report) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            ExitCode::FAILURE
        }
    })
}

fn helper(report: &std::path::Path) -> Result<(), DiffError> {
    let mut text = Vec::new();
    std::io::stdin()
        .read_to_end(&mut text)
        .map_err(io_error("read the diff's job"))?;
    let job: Job = serde_json::from_slice(&text).map_err(|e| DiffError::Io {
        what: "read the diff's job".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    enter_own_user_namespace()?;
    let skipped = materialize(&job, Box::new(std::io::stdout()))?;
    let json = serde_json::to_vec(&skipped).map_err(|e| DiffError::Io {
        what: "report the paths left out".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    std::fs::write(report, json).map_err(io_error("report the paths left out"))
}

/// A user namespace whose root is the caller, and nothing else mapped.
fn enter_own_user_namespace() -> Result<(), DiffError> {
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    unshare(CloneFlags::CLONE_NEWUSER)
        .map_err(super::mount_error("enter a user namespace for the diff"))?;
    for (file, text) in [
        ("setgroups", "deny".to_owned()),
        ("uid_map", format!("0 {uid} 1")),
        ("gid_map", format!("0 {gid} 1")),
    ] {
        std::fs::write(format!("/proc/self/{file}"), text)
            .map_err(io_error(format!("write /proc/self/{file}")))?;
    }
    Ok(())
}
