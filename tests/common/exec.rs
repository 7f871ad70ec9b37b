//! `tollgate exec`: a command line, a run with a time limit that leaves
//! nothing behind on the host even when the test fails, and what probe
//! scripts print.

use std::process::Command;
use std::time::Duration;

use super::{run_dirs_of, Done, Running, BIN};

/// A state dir that does not exist: no CA is picked up from the host's
/// /var/lib/tollgate, and nothing is created.
pub const NO_STATE: &str = "/nonexistent/tollgate-sandbox-test-state";
/// Upper bound for one sandboxed run; they normally take milliseconds.
pub const EXEC_LIMIT: Duration = Duration::from_secs(15);

/// A `tollgate exec` command line: `opts` go before `--` (a `--policy` in
/// them replaces the default `off`), `command` after it.
pub fn exec_command(opts: &[&str], command: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("exec");
    if !opts.contains(&"--policy") {
        c.args(["--policy", "off"]);
    }
    c.args(opts)
        .arg("--")
        .args(command)
        .env("TOLLGATE_STATE_DIR", NO_STATE)
        .env("NO_COLOR", "1");
    c
}

/// Starts a `tollgate exec` command line: killed (SIGKILL) on drop, and its
/// run directories removed unless it exited by itself.
pub fn start_exec(command: &mut Command) -> Running {
    Running::spawn(command).on_drop_unless_exited(remove_run_dirs)
}

/// [`start_exec`] with a pipe for the command's stdin.
pub fn start_exec_with_stdin(command: &mut Command) -> Running {
    Running::spawn_with_stdin(command).on_drop_unless_exited(remove_run_dirs)
}

/// [`start_exec`] with `stdin` as the command line's standard input.
pub fn start_exec_with(command: &mut Command, stdin: std::process::Stdio) -> Running {
    Running::spawn_with(command, stdin).on_drop_unless_exited(remove_run_dirs)
}

fn remove_run_dirs(pid: u32) {
    for dir in run_dirs_of(pid) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Runs a `tollgate exec` command line to its end (at most [`EXEC_LIMIT`]).
pub fn exec(command: &mut Command) -> Done {
    start_exec(command).finish(EXEC_LIMIT)
}

/// Runs `sh -c script` in a sandbox with `opts`.
pub fn sh(opts: &[&str], script: &str) -> Done {
    exec(&mut exec_command(opts, &["sh", "-c", script]))
}

/// Runs `bash -c script` in a sandbox with `opts`.
pub fn bash(opts: &[&str], script: &str) -> Done {
    exec(&mut exec_command(opts, &["bash", "-c", script]))
}

/// The host uid and gid of root inside a sandbox (ids.rs), as one reports
/// it: the second field of its `uid_map` and `gid_map`.
pub fn sandbox_root() -> (u32, u32) {
    static ROOT: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        let out = ok(sh(&[], "cat /proc/self/uid_map /proc/self/gid_map"));
        let host: Vec<u32> = out
            .stdout
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1)?.parse().ok())
            .collect();
        match host[..] {
            [uid, gid] => (uid, gid),
            _ => panic!("no id maps in {out:#?}"),
        }
    })
}

/// Makes `dir` the sandbox's root's on the host, as a writable `--bind`
/// must be (host root's files are not root's inside).
pub fn owned_by_sandbox_root(dir: &std::path::Path) {
    let (uid, gid) = sandbox_root();
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
}

/// Asserts a clean exit 0.
pub fn ok(done: Done) -> Done {
    assert_eq!(done.code, Some(0), "sandboxed command failed: {done:#?}");
    done
}

impl Done {
    /// `ATTEMPT name rc=N` lines printed by probe scripts.
    pub fn attempts(&self) -> Vec<(String, i32)> {
        self.stdout
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("ATTEMPT ")?;
                let (name, rc) = rest.rsplit_once(" rc=")?;
                Some((name.to_owned(), rc.trim().parse().ok()?))
            })
            .collect()
    }
}
