//! Child processes with a time limit, host tools, git, polling, unique
//! names and directories removed on drop.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Upper bound for a helper command on the host (git, pgrep, sha256sum).
pub const TOOL_LIMIT: Duration = Duration::from_secs(30);
/// How often every wait in the harness looks again.
pub const POLL: Duration = Duration::from_millis(10);

// ---------------------------------------------------------------------------
// Child processes

/// What a finished child printed and returned.
#[derive(Debug)]
pub struct Done {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Done {
    /// The value after `KEY ` on the first stdout line starting so.
    pub fn value(&self, key: &str) -> Option<String> {
        let prefix = format!("{key} ");
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_owned()))
    }

    pub fn expect_value(&self, key: &str) -> String {
        self.value(key)
            .unwrap_or_else(|| panic!("no `{key}` line in the output: {self:#?}"))
    }
}

/// A running child, its output drained by threads; killed on drop.
pub struct Running {
    child: Child,
    what: String,
    started: Instant,
    stdout: mpsc::Receiver<Vec<u8>>,
    stderr: mpsc::Receiver<Vec<u8>>,
    /// Reaped by [`Running::finish`]: nothing to kill on drop.
    finished: bool,
    /// Ended with an exit status of its own (not by a signal).
    exited: bool,
    /// Run with the pid on drop unless the child exited by itself.
    cleanup: Option<Box<dyn FnOnce(u32)>>,
}

impl Running {
    /// Starts `command` with stdin from /dev/null.
    pub fn spawn(command: &mut Command) -> Running {
        Running::start(command, Stdio::null())
    }

    /// Starts `command` with a pipe for stdin: see [`Running::child`].
    pub fn spawn_with_stdin(command: &mut Command) -> Running {
        Running::start(command, Stdio::piped())
    }

    /// Starts `command` with `stdin` as its standard input.
    pub fn spawn_with(command: &mut Command, stdin: Stdio) -> Running {
        Running::start(command, stdin)
    }

    fn start(command: &mut Command, stdin: Stdio) -> Running {
        let what = format!("{command:?}");
        let mut child = command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
            let (tx, rx) = mpsc::channel();
            if let Some(mut pipe) = pipe {
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let _ = pipe.read_to_end(&mut buf);
                    let _ = tx.send(buf);
                });
            }
            rx
        }
        let stdout = drain(child.stdout.take());
        let stderr = drain(child.stderr.take());
        Running {
            child,
            what,
            started: Instant::now(),
            stdout,
            stderr,
            finished: false,
            exited: false,
            cleanup: None,
        }
    }

    /// Runs `cleanup(pid)` on drop unless the child exited by itself (then
    /// it cleaned up after itself, and its pid may belong to another
    /// process by now), so that a failing test leaves nothing behind.
    pub fn on_drop_unless_exited(mut self, cleanup: impl FnOnce(u32) + 'static) -> Running {
        self.cleanup = Some(Box::new(cleanup));
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child itself (its stdin after [`Running::spawn_with_stdin`], or
    /// to wait for it after a signal).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The child's stdin (after [`Running::spawn_with_stdin`]).
    pub fn stdin(&mut self) -> ChildStdin {
        self.child.stdin.take().expect("spawned with a stdin pipe")
    }

    /// Sends `signal` ("TERM", "KILL", ...) to the child.
    pub fn signal(&self, signal: &str) {
        let signal: nix::sys::signal::Signal = format!("SIG{signal}").parse().unwrap();
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.pid()).unwrap());
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// SIGKILL, then the exit status is collected.
    pub fn kill(mut self) -> Done {
        let _ = self.child.kill();
        self.finish(TOOL_LIMIT)
    }

    /// Waits for the exit; kills the child and fails the test when it has
    /// not exited `limit` after it started.
    pub fn finish(mut self, limit: Duration) -> Done {
        let left = limit.saturating_sub(self.started.elapsed());
        let Some(status) = poll(left, || self.child.try_wait().unwrap()) else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.finished = true;
            let done = self.collect(None);
            panic!("{} did not finish within {limit:?}: {done:#?}", self.what);
        };
        let elapsed = self.started.elapsed();
        self.finished = true;
        self.exited = status.code().is_some();
        let mut done = self.collect(status.code());
        done.elapsed = elapsed;
        if status.code().is_none() {
            done.stderr
                .push_str(&format!("\n[killed by signal {:?}]", signal_of(status)));
        }
        done
    }

    /// The output; a pipe still held open by a leftover process is given
    /// up on after a few seconds instead of hanging the test.
    fn collect(&self, code: Option<i32>) -> Done {
        let text = |rx: &mpsc::Receiver<Vec<u8>>| {
            rx.recv_timeout(Duration::from_secs(5))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|_| "[output pipe still open]".into())
        };
        Done {
            code,
            stdout: text(&self.stdout),
            stderr: text(&self.stderr),
            elapsed: self.started.elapsed(),
        }
    }
}

fn signal_of(status: ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if !self.exited {
            if let Some(cleanup) = self.cleanup.take() {
                cleanup(self.child.id());
            }
        }
    }
}

/// Runs a host tool to its end (at most [`TOOL_LIMIT`]).
pub fn tool(command: &mut Command) -> Done {
    Running::spawn(command).finish(TOOL_LIMIT)
}

/// Runs a host tool that must succeed; its stdout.
pub fn tool_ok(command: &mut Command) -> String {
    let what = format!("{command:?}");
    let done = tool(command);
    assert_eq!(done.code, Some(0), "{what} failed: {done:#?}");
    done.stdout
}

/// `git -C dir ARGS`, with a fixed identity and no user or system config;
/// its stdout, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    tool_ok(
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "tollgate test")
            .env("GIT_AUTHOR_EMAIL", "test@tollgate.invalid")
            .env("GIT_COMMITTER_NAME", "tollgate test")
            .env("GIT_COMMITTER_EMAIL", "test@tollgate.invalid")
            .env("GIT_TERMINAL_PROMPT", "0"),
    )
    .trim()
    .to_owned()
}

// ---------------------------------------------------------------------------
// Waiting

/// Polls `find` every [`POLL`] until it finds something or `limit` passes.
pub fn poll<T>(limit: Duration, mut find: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = find() {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `check` every [`POLL`] until it holds or `limit` passes; whether
/// it held.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    poll(limit, || check().then_some(())).is_some()
}

// ---------------------------------------------------------------------------
// Names and directories

/// Digits no other test of this run uses (for `sleep 30x.<unique>`).
pub fn unique() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}{:03}{:09}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// `tollgate-test-WHAT-<unique>`: a token to find a process by.
pub fn unique_token(what: &str) -> String {
    format!("tollgate-test-{what}-{}", unique())
}

/// A private scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tollgate-test-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes a host file or directory tree outside the scratch tree when the
/// test ends, passing or failing.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.0.is_dir() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Runs `future` to its end on a runtime of its own (one thread).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("start a tokio runtime")
        .block_on(future)
}
