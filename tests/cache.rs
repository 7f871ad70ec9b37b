//! Cache snapshots end to end, as root (DESIGN.md "Cache snapshots" and
//! security invariant 8): a run that sets up publishes its setup layer as a
//! snapshot; a later run with the same key resumes it (maintenance instead
//! of setup, the task's revision checked out); any keyed input, the ttl or
//! `tollgate cache reset` makes the next run set up afresh; `cache gc`
//! removes what is expired or not whole; concurrent and killed runs never
//! leave a corrupt snapshot in use, nor anything else behind.
//!
//! Every test has its own git repo and its own `--state-dir`. Setup appends
//! a line to `setup-marker` in the workspace and to `/root/setup-runs`
//! outside it (both land in the setup layer, so a count of 1 in a later
//! phase's view says "setup ran once, for the layer this run sees");
//! maintenance appends to `maint-marker`.

mod common;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use common::*;

/// Upper bound for one `tollgate` command; runs take about a second.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// Upper bound for a helper command on the host (git).
const TOOL_LIMIT: Duration = Duration::from_secs(30);
/// The repo's directory name, so the workspace is /workspace/proj.
const REPO_NAME: &str = "proj";

/// The setup every test uses (with extra lines appended by some).
const SETUP: &str = "\
echo 'setup ran' >> setup-marker
echo run >> /root/setup-runs
mkdir -p deps
echo installed > deps/dep.txt
";

const MAINTENANCE: &str = "echo 'maintenance ran' >> maint-marker\n";

/// The agent: prints what it sees as `name=value` lines.
const REPORT: &str = r#"
fact() { printf '%s=%s\n' "$1" "$2"; }
fact setup-runs "$(cat /root/setup-runs 2>/dev/null | wc -l)"
fact setup-marker "$(cat setup-marker 2>/dev/null | wc -l)"
fact maint-marker "$(cat maint-marker 2>/dev/null | wc -l)"
fact deps "$(cat deps/dep.txt 2>/dev/null)"
fact feature "$(test -f feature.txt && echo yes || echo no)"
fact later "$(test -f later.txt && echo yes || echo no)"
fact head "$(git rev-parse HEAD)"
fact branch "$(git rev-parse --abbrev-ref HEAD)"
fact pwd "$(pwd)"
echo 'the agent was here' > agent-file
"#;

// ---------------------------------------------------------------------------
// Child processes with a time limit

/// What a finished child printed and returned.
#[derive(Debug)]
struct Done {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// A running child, its output drained by threads; killed on drop.
struct Running {
    child: Child,
    what: String,
    started: Instant,
    stdout: mpsc::Receiver<Vec<u8>>,
    stderr: mpsc::Receiver<Vec<u8>>,
    finished: bool,
}

impl Running {
    fn spawn(command: &mut Command) -> Running {
        let what = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::null())
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
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit; kills the child and fails the test after `limit`.
    fn finish(mut self, limit: Duration) -> Done {
        let deadline = self.started + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.finished = true;
                let done = self.collect(None);
                panic!("{} did not finish within {limit:?}: {done:#?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.finished = true;
        let mut done = self.collect(status.code());
        if status.code().is_none() {
            use std::os::unix::process::ExitStatusExt;
            done.stderr
                .push_str(&format!("\n[killed by signal {:?}]", status.signal()));
        }
        done
    }

    /// SIGKILL, then the exit status is collected.
    fn kill(mut self) -> Done {
        self.child.kill().unwrap();
        self.finish(TOOL_LIMIT)
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
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `git -C dir ARGS`, with a fixed identity and no user or system config.
fn git(dir: &Path, args: &[&str]) -> String {
    let mut command = Command::new("git");
    command
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "tollgate test")
        .env("GIT_AUTHOR_EMAIL", "test@tollgate.invalid")
        .env("GIT_COMMITTER_NAME", "tollgate test")
        .env("GIT_COMMITTER_EMAIL", "test@tollgate.invalid")
        .env("GIT_TERMINAL_PROMPT", "0");
    let what = format!("{command:?}");
    let done = Running::spawn(&mut command).finish(TOOL_LIMIT);
    assert_eq!(done.code, Some(0), "{what} failed: {done:#?}");
    done.stdout.trim().to_owned()
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Sleeps until a snapshot made at `created` (seconds since the epoch, as
/// meta.json records it) is at least `ttl` seconds old by tollgate's count.
fn wait_until_older_than(created: u64, ttl: u64) {
    let ok = eventually(Duration::from_secs(ttl + 10), || {
        now_secs() >= created + ttl
    });
    assert!(ok, "the clock did not move past {created} + {ttl}");
}

/// A string no other test of this process uses.
fn unique(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "tollgate-cache-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------------------
// The repository a test runs on

/// A real git repo: main has two commits (the first is `first`), branch
/// `feature` one more with feature.txt; main is checked out.
struct Repo {
    path: PathBuf,
    first: String,
    main: String,
    feature: String,
}

impl Repo {
    fn create(parent: &Path) -> Repo {
        let path = parent.join(REPO_NAME);
        std::fs::create_dir_all(&path).unwrap();
        git(&path, &["init", "-q", "-b", "main"]);
        std::fs::write(path.join("README.md"), "# proj\nv1\n").unwrap();
        git(&path, &["add", "-A"]);
        git(&path, &["commit", "-q", "-m", "first"]);
        let first = git(&path, &["rev-parse", "HEAD"]);
        std::fs::write(path.join("README.md"), "# proj\nv2\n").unwrap();
        git(&path, &["commit", "-q", "-am", "second"]);
        let main = git(&path, &["rev-parse", "HEAD"]);
        git(&path, &["checkout", "-q", "-b", "feature"]);
        std::fs::write(path.join("feature.txt"), "feature work\n").unwrap();
        git(&path, &["add", "feature.txt"]);
        git(&path, &["commit", "-q", "-m", "feature"]);
        let feature = git(&path, &["rev-parse", "HEAD"]);
        git(&path, &["checkout", "-q", "main"]);
        Repo {
            path,
            first,
            main,
            feature,
        }
    }

    /// A new commit on main adding `file`; its sha.
    fn commit_on_main(&mut self, file: &str, text: &str) -> String {
        std::fs::write(self.path.join(file), text).unwrap();
        git(&self.path, &["add", file]);
        git(&self.path, &["commit", "-q", "-m", file]);
        self.main = git(&self.path, &["rev-parse", "HEAD"]);
        self.main.clone()
    }

    /// A branch off main with one more commit adding `file`; main stays
    /// checked out.
    fn branch_with(&self, branch: &str, file: &str) -> String {
        git(&self.path, &["checkout", "-q", "-b", branch, "main"]);
        std::fs::write(self.path.join(file), "on a branch\n").unwrap();
        git(&self.path, &["add", file]);
        git(&self.path, &["commit", "-q", "-m", file]);
        let sha = git(&self.path, &["rev-parse", "HEAD"]);
        git(&self.path, &["checkout", "-q", "main"]);
        sha
    }
}

// ---------------------------------------------------------------------------
// Environment files

/// An environment file with `setup`, `maintenance`, and `extra` YAML lines
/// (no `env:` in them: see [`env_yaml_with_vars`]).
fn env_yaml(name: &str, setup: &str, maintenance: &str, extra: &str) -> String {
    env_yaml_with_vars(name, setup, maintenance, "", extra)
}

/// [`env_yaml`] with more `env` entries (`vars`: YAML lines `NAME: value`).
///
/// Every phase starts by reading ~/.bashrc, and the base is the host's `/`,
/// so HOME=/root would run the host's shell start-up in every phase. That
/// is slow, and can depend on the host's state at the moment the overlay is
/// mounted: pyenv's `rehash` (from `pyenv init`) waits up to 60 s for its
/// lock file, and a lock that a host shell held at that moment stays
/// visible in the sandbox. HOME is the phase's empty /tmp instead.
fn env_yaml_with_vars(
    name: &str,
    setup: &str,
    maintenance: &str,
    vars: &str,
    extra: &str,
) -> String {
    format!(
        "version: 1\nname: {name}\nenv:\n  HOME: /tmp\n{}setup: |\n{}maintenance: |\n{}{extra}",
        block(vars),
        block(setup),
        block(maintenance)
    )
}

/// `text` indented as the body of a YAML block scalar.
fn block(text: &str) -> String {
    text.trim_matches('\n')
        .lines()
        .map(|line| format!("  {line}\n"))
        .collect()
}

fn short(key: &str) -> &str {
    &key[..12]
}

// ---------------------------------------------------------------------------
// One test's world

/// A scratch dir holding the repo, a private state dir, env files and the
/// output dirs of the runs.
struct Lab {
    dir: Scratch,
    repo: Repo,
    state: PathBuf,
    outs: AtomicUsize,
}

/// How to start `tollgate run`: options before `--`, the agent (none: no
/// `--`, the run stops after setup or maintenance), tollgate's variables,
/// the repo (default: the lab's), and a directory to bind the host's `/`
/// on (in a private mount namespace) for a `base:` pointing there.
#[derive(Default)]
struct Opts<'a> {
    args: &'a [&'a str],
    agent: Option<&'a [&'a str]>,
    vars: &'a [(&'a str, &'a str)],
    repo: Option<&'a Path>,
    bind_root_at: Option<&'a Path>,
}

/// The agent that reports what it sees.
const REPORTING: Option<&[&str]> = Some(&["bash", "-c", REPORT]);

impl Lab {
    fn new(name: &str) -> Lab {
        let dir = Scratch::new(&format!("cache-{name}"));
        let repo = Repo::create(&dir.0);
        let state = dir.path("state");
        Lab {
            dir,
            repo,
            state,
            outs: AtomicUsize::new(0),
        }
    }

    /// Writes an environment file; its path.
    fn env(&self, file: &str, text: &str) -> PathBuf {
        self.dir.write(file, text)
    }

    /// The standard environment (SETUP, MAINTENANCE) called `name`.
    fn standard_env(&self, name: &str, extra: &str) -> PathBuf {
        self.env(
            &format!("{name}.yaml"),
            &env_yaml(name, SETUP, MAINTENANCE, extra),
        )
    }

    fn tollgate(&self) -> Command {
        let mut command = Command::new(BIN);
        command
            .env_remove("TOLLGATE_STATE_DIR")
            .env("NO_COLOR", "1")
            .arg("--state-dir")
            .arg(&self.state);
        command
    }

    /// Starts a run; its process and its output directory.
    fn start(&self, env: &Path, opts: &Opts) -> (Running, PathBuf) {
        let out = self.dir.path(&format!(
            "out-{}",
            self.outs.fetch_add(1, Ordering::Relaxed)
        ));
        let repo = opts.repo.unwrap_or(&self.repo.path);
        let mut args: Vec<OsString> = vec![
            "--state-dir".into(),
            self.state.clone().into(),
            "run".into(),
            env.into(),
            "--repo".into(),
            repo.into(),
            "--out".into(),
            out.clone().into(),
        ];
        args.extend(opts.args.iter().map(OsString::from));
        if let Some(agent) = opts.agent {
            args.push("--".into());
            args.extend(agent.iter().map(OsString::from));
        }
        let mut command = match opts.bind_root_at {
            None => Command::new(BIN),
            Some(dir) => {
                std::fs::create_dir_all(dir).unwrap();
                // unshare without --fork execs: the child's pid is tollgate's.
                let mut command = Command::new("unshare");
                command
                    .args(["-m", "--propagation", "private", "--", "sh", "-c"])
                    .arg(r#"mount --bind / "$0" && exec "$@""#)
                    .arg(dir)
                    .arg(BIN);
                command
            }
        };
        command
            .args(&args)
            .env_remove("TOLLGATE_STATE_DIR")
            .env("NO_COLOR", "1");
        for (name, value) in opts.vars {
            command.env(name, value);
        }
        (Running::spawn(&mut command), out)
    }

    /// A run to its end.
    fn run(&self, env: &Path, opts: &Opts) -> RunOut {
        let (running, out) = self.start(env, opts);
        RunOut::finish(running, out)
    }

    /// A run that must exit 0.
    fn run_ok(&self, env: &Path, opts: &Opts) -> RunOut {
        let run = self.run(env, opts);
        assert_eq!(run.done.code, Some(0), "the run failed: {:#?}", run.done);
        run
    }

    /// `tollgate cache ARGS`, which must exit 0; its stdout.
    fn cache(&self, args: &[&OsStr]) -> String {
        let mut command = self.tollgate();
        command.arg("cache").args(args);
        let what = format!("{command:?}");
        let done = Running::spawn(&mut command).finish(RUN_LIMIT);
        assert_eq!(done.code, Some(0), "{what} failed: {done:#?}");
        done.stdout
    }

    fn cache_list(&self) -> String {
        self.cache(&["list".as_ref()])
    }

    fn cache_gc(&self) -> String {
        self.cache(&["gc".as_ref()])
    }

    fn cache_reset(&self, env: &Path) -> String {
        self.cache(&["reset".as_ref(), env.as_os_str()])
    }

    fn cache_dir(&self) -> PathBuf {
        self.state.join("cache")
    }

    fn runs_dir(&self) -> PathBuf {
        self.state.join("runs")
    }

    /// The snapshot directories of `env` (any directory in its cache dir),
    /// sorted.
    fn snapshot_keys(&self, env: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.cache_dir().join(env)) else {
            return Vec::new();
        };
        let mut keys: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        keys.sort();
        keys
    }

    fn snapshot(&self, env: &str, key: &str) -> PathBuf {
        self.cache_dir().join(env).join(key)
    }

    /// A snapshot's meta.json, which must parse.
    fn meta(&self, env: &str, key: &str) -> Value {
        let path = self.snapshot(env, key).join("meta.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}: {text}", path.display()))
    }

    /// A file of a snapshot's layer, as the host sees it.
    fn in_layer(&self, env: &str, key: &str, path: &str) -> PathBuf {
        self.snapshot(env, key).join("layer").join(path)
    }

    /// Entries of the runs dir (run layers still on disk).
    fn run_dirs(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.runs_dir()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// A finished run: its process's output, its output dir and result.json.
struct RunOut {
    done: Done,
    pid: u32,
    out: PathBuf,
    result: Value,
}

impl RunOut {
    fn finish(running: Running, out: PathBuf) -> RunOut {
        let pid = running.pid();
        let done = running.finish(RUN_LIMIT);
        let path = out.join("result.json");
        let result = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("result.json is not JSON: {e}: {text}")),
            Err(e) => panic!("no {}: {e}; the run: {done:#?}", path.display()),
        };
        RunOut {
            done,
            pid,
            out,
            result,
        }
    }

    fn status(&self) -> &str {
        self.result["cache"]["status"]
            .as_str()
            .unwrap_or_else(|| panic!("no cache.status in {:#}", self.result))
    }

    fn key(&self) -> String {
        let key = self.result["cache"]["key"]
            .as_str()
            .unwrap_or_else(|| panic!("no cache.key in {:#}", self.result));
        assert!(
            key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
            "cache.key is not a SHA-256 in hex: {key}"
        );
        key.to_owned()
    }

    /// (name, exit code) of each phase, in order.
    fn phases(&self) -> Vec<(String, i64)> {
        self.result["phases"]
            .as_array()
            .unwrap_or_else(|| panic!("no phases in {:#}", self.result))
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("?").to_owned(),
                    p["exit_code"].as_i64().unwrap_or(-1),
                )
            })
            .collect()
    }

    fn phase_names(&self) -> Vec<String> {
        self.phases().into_iter().map(|(name, _)| name).collect()
    }

    /// Asserts the cache status and that every phase exited 0.
    fn expect(&self, status: &str, phases: &[&str]) -> &Self {
        assert_eq!(
            self.status(),
            status,
            "cache status; stderr:\n{}",
            self.done.stderr
        );
        assert_eq!(
            self.phase_names(),
            phases,
            "phases; stderr:\n{}",
            self.done.stderr
        );
        for (name, code) in self.phases() {
            assert_eq!(code, 0, "phase {name} failed: {}", self.done.stderr);
        }
        self
    }

    /// The `name=value` lines the REPORT agent printed (its raw log).
    fn facts(&self) -> HashMap<String, String> {
        let log = std::fs::read_to_string(self.out.join("agent.log")).unwrap_or_default();
        log.lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn fact(&self, name: &str) -> String {
        self.facts().get(name).cloned().unwrap_or_else(|| {
            panic!(
                "the agent did not report {name}; agent.log:\n{}\nstderr:\n{}",
                std::fs::read_to_string(self.out.join("agent.log")).unwrap_or_default(),
                self.done.stderr
            )
        })
    }

    fn says(&self, text: &str) -> bool {
        self.done.stderr.contains(text)
    }

    fn assert_says(&self, text: &str) {
        assert!(
            self.says(text),
            "stderr should say {text:?}:\n{}",
            self.done.stderr
        );
    }

    fn assert_not_says(&self, text: &str) {
        assert!(
            !self.says(text),
            "stderr should not say {text:?}:\n{}",
            self.done.stderr
        );
    }
}

/// The stderr of a run that built (and published) the snapshot of `key`.
fn assert_built(run: &RunOut, key: &str) {
    run.assert_says(&format!(
        "tollgate: cache: miss (key {}): running setup; its result is cached for",
        short(key)
    ));
    run.assert_says(&format!(
        "tollgate: cache: published snapshot {}",
        short(key)
    ));
}

/// The stderr of a run that held the build lock of `key` but did not
/// publish.
fn assert_built_not_published(run: &RunOut, key: &str) {
    run.assert_says(&format!(
        "tollgate: cache: miss (key {}): running setup; its result is cached for",
        short(key)
    ));
    run.assert_not_says("published snapshot");
}

fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .count()
}

/// pids of processes whose command line contains `token`.
fn processes_with(token: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(token) {
            found.push(pid);
        }
    }
    found
}

/// Lines of our mount table that mention `needle`.
fn mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Cgroup directories anywhere under /sys/fs/cgroup made for the phases of
/// the tollgate process `pid` (`tollgate-<pid>-...`).
fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("tollgate-{pid}-");
    let mut found = Vec::new();
    let mut pending = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if !kind.is_dir() || kind.is_symlink() {
                continue;
            }
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                found.push(entry.path());
            }
            if depth < 8 {
                pending.push((entry.path(), depth + 1));
            }
        }
    }
    found
}

/// The sandbox launcher's private dirs of the tollgate process `pid`.
fn sandbox_run_dirs_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("tollgate-run-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Setup layers of runs in progress that hold `file` in the workspace.
fn setup_layers_holding(lab: &Lab, file: &str) -> Vec<PathBuf> {
    lab.run_dirs()
        .into_iter()
        .map(|id| {
            lab.runs_dir()
                .join(id)
                .join("setup/upper/workspace")
                .join(REPO_NAME)
                .join(file)
        })
        .filter(|path| path.exists())
        .collect()
}

// ---------------------------------------------------------------------------
// Hits, misses and what a resumed run sees

#[test]
fn a_second_run_hits_the_cache_and_runs_maintenance_not_setup() {
    require_root!();
    let lab = Lab::new("hit");
    let env = lab.standard_env("web", "");
    let opts = Opts {
        agent: REPORTING,
        ..Opts::default()
    };

    let first = lab.run_ok(&env, &opts);
    first.expect("miss", &["setup", "agent"]);
    let key = first.key();
    assert_built(&first, &key);
    assert_eq!(first.fact("pwd"), "/workspace/proj");
    assert_eq!(first.fact("setup-runs"), "1");
    assert_eq!(first.fact("setup-marker"), "1");
    assert_eq!(first.fact("maint-marker"), "0", "maintenance ran on a miss");
    assert_eq!(first.fact("deps"), "installed");
    // The snapshot: one directory named by the key, whole.
    assert_eq!(lab.snapshot_keys("web"), vec![key.clone()]);
    let meta = lab.meta("web", &key);
    assert_eq!(meta["key"], key.as_str());
    assert_eq!(meta["env"], "web");
    assert!(lab
        .in_layer("web", &key, "workspace/proj/setup-marker")
        .is_file());
    assert!(lab.in_layer("web", &key, "root/setup-runs").is_file());
    // The agent's writes are its own, never the snapshot's.
    assert!(!lab
        .in_layer("web", &key, "workspace/proj/agent-file")
        .exists());

    let second = lab.run_ok(&env, &opts);
    second.expect("hit", &["maintenance", "agent"]);
    assert_eq!(second.key(), key, "same inputs, same key");
    second.assert_says(&format!("tollgate: cache: hit (key {}, made ", short(&key)));
    second.assert_says("resuming it; setup skipped");
    second.assert_not_says("running setup");
    second.assert_not_says("published snapshot");
    assert_eq!(second.fact("setup-runs"), "1", "setup ran again on a hit");
    assert_eq!(second.fact("setup-marker"), "1");
    assert_eq!(second.fact("maint-marker"), "1", "maintenance did not run");
    assert_eq!(second.fact("deps"), "installed");
    assert_eq!(second.fact("pwd"), "/workspace/proj");
    // Maintenance wrote into its own layer, not into the snapshot.
    assert!(!lab
        .in_layer("web", &key, "workspace/proj/maint-marker")
        .exists());
    assert_eq!(
        lines_in(&lab.in_layer("web", &key, "root/setup-runs")),
        1,
        "the snapshot changed"
    );
    assert_eq!(lab.snapshot_keys("web"), vec![key]);
    assert!(lab.run_dirs().is_empty(), "left: {:?}", lab.run_dirs());
}

#[test]
fn a_hit_checks_out_another_branch() {
    require_root!();
    fn opts<'a>(args: &'a [&'a str]) -> Opts<'a> {
        Opts {
            args,
            agent: REPORTING,
            ..Opts::default()
        }
    }
    let mut lab = Lab::new("branch");
    let env = lab.standard_env("web", "");

    let first = lab.run_ok(&env, &opts(&[]));
    first.expect("miss", &["setup", "agent"]);
    assert_eq!(first.fact("head"), lab.repo.main);
    assert_eq!(first.fact("feature"), "no");
    let key = first.key();

    let feature = lab.run_ok(&env, &opts(&["--branch", "feature"]));
    feature.expect("hit", &["maintenance", "agent"]);
    assert_eq!(feature.key(), key, "the revision is not part of the key");
    assert_eq!(
        feature.fact("feature"),
        "yes",
        "feature.txt not checked out"
    );
    assert_eq!(feature.fact("head"), lab.repo.feature);
    assert_eq!(feature.fact("branch"), "feature");
    assert_eq!(feature.result["repo"]["branch"], "feature");
    assert_eq!(feature.result["repo"]["commit"], lab.repo.feature.as_str());
    // What setup made (untracked) is kept across the checkout.
    assert_eq!(feature.fact("deps"), "installed");
    assert_eq!(feature.fact("setup-marker"), "1");
    assert_eq!(feature.fact("setup-runs"), "1");

    let first_sha = lab.repo.first.clone();
    let commit = lab.run_ok(&env, &opts(&["--commit", &first_sha]));
    commit.expect("hit", &["maintenance", "agent"]);
    assert_eq!(commit.fact("head"), first_sha);
    assert_eq!(commit.fact("feature"), "no");
    assert_eq!(commit.result["repo"]["commit"], first_sha.as_str());
    assert!(
        commit.result["repo"]["branch"].is_null(),
        "a commit is no branch: {:#}",
        commit.result["repo"]
    );
    assert_eq!(commit.fact("deps"), "installed");
    // Each resume starts from the snapshot, not from the last resume.
    assert_eq!(commit.fact("maint-marker"), "1");

    // A commit made on the host after the snapshot reaches a resumed run.
    let later = lab.repo.commit_on_main("later.txt", "later\n");
    let resumed = lab.run_ok(&env, &opts(&[]));
    resumed.expect("hit", &["maintenance", "agent"]);
    assert_eq!(resumed.fact("head"), later);
    assert_eq!(resumed.fact("later"), "yes");
    assert_eq!(resumed.fact("branch"), "main");
    assert_eq!(resumed.result["repo"]["commit"], later.as_str());
    assert_eq!(resumed.fact("deps"), "installed");
}

#[test]
fn each_keyed_input_makes_a_new_key() {
    require_root!();
    let lab = Lab::new("keys");
    let other = Scratch::new("cache-keys-other");
    let other_repo = Repo::create(&other.0);
    let altroot = lab.dir.path("altroot");
    let secrets = "secrets:\n  TOKEN: {from_env: CACHE_TEST_TOKEN}\n";
    let yaml = |setup: &str, maintenance: &str, vars: &str, extra: &str| {
        env_yaml_with_vars(
            "web",
            setup,
            maintenance,
            vars,
            &format!("{secrets}{extra}"),
        )
    };
    let base_env = lab.env("base.yaml", &yaml(SETUP, MAINTENANCE, "", ""));
    let token_one = [("CACHE_TEST_TOKEN", "value-one-9f8e7d")];
    let token_two = [("CACHE_TEST_TOKEN", "value-two-1a2b3c")];
    // No agent: setup or maintenance is all a key needs.
    let plain = Opts {
        vars: &token_one,
        ..Opts::default()
    };

    let baseline = lab.run_ok(&base_env, &plain);
    baseline.expect("miss", &["setup"]);
    let key = baseline.key();
    let again = lab.run_ok(&base_env, &plain);
    again.expect("hit", &["maintenance"]);
    assert_eq!(again.key(), key, "unchanged inputs must give the same key");

    let variants: Vec<(&str, PathBuf, Opts)> = vec![
        (
            "setup",
            lab.env(
                "setup.yaml",
                &yaml(
                    &format!("{SETUP}echo changed >> setup-marker\n"),
                    MAINTENANCE,
                    "",
                    "",
                ),
            ),
            Opts {
                vars: &token_one,
                ..Opts::default()
            },
        ),
        (
            "maintenance",
            lab.env(
                "maintenance.yaml",
                &yaml(SETUP, "echo 'other maintenance' >> maint-marker\n", "", ""),
            ),
            Opts {
                vars: &token_one,
                ..Opts::default()
            },
        ),
        (
            "env",
            lab.env("env.yaml", &yaml(SETUP, MAINTENANCE, "NODE_ENV: test", "")),
            Opts {
                vars: &token_one,
                ..Opts::default()
            },
        ),
        (
            "a secret's value",
            base_env.clone(),
            Opts {
                vars: &token_two,
                ..Opts::default()
            },
        ),
        (
            "the repo",
            base_env.clone(),
            Opts {
                vars: &token_one,
                repo: Some(&other_repo.path),
                ..Opts::default()
            },
        ),
        (
            "base",
            lab.env(
                "based.yaml",
                &yaml(
                    SETUP,
                    MAINTENANCE,
                    "",
                    &format!("base: {}\n", altroot.display()),
                ),
            ),
            Opts {
                vars: &token_one,
                bind_root_at: Some(&altroot),
                ..Opts::default()
            },
        ),
    ];
    let mut keys = vec![("baseline".to_owned(), key.clone())];
    for (what, env, opts) in &variants {
        let run = lab.run(env, opts);
        assert_eq!(
            run.done.code,
            Some(0),
            "run with another {what} failed: {:#?}",
            run.done
        );
        assert_eq!(
            run.status(),
            "miss",
            "changing {what} must make the next run set up afresh: {}",
            run.done.stderr
        );
        assert_eq!(run.phase_names(), ["setup"], "changing {what}");
        let new = run.key();
        assert_built(&run, &new);
        if let Some((earlier, _)) = keys.iter().find(|(_, k)| *k == new) {
            panic!("changing {what} gave the same key as {earlier}: {new}");
        }
        keys.push((what.to_string(), new));
    }
    // The same base again: its key is stable, so the run hits.
    let (_, based_env, based_opts) = &variants[5];
    let based_again = lab.run_ok(based_env, based_opts);
    based_again.expect("hit", &["maintenance"]);
    assert_eq!(based_again.key(), keys[6].1);
    // The baseline's snapshot was not replaced by any of them.
    let last = lab.run_ok(&base_env, &plain);
    last.expect("hit", &["maintenance"]);
    assert_eq!(last.key(), key);
    assert_eq!(lab.snapshot_keys("web").len(), keys.len());

    // Secret values are hashed into the key, never stored.
    for value in ["value-one-9f8e7d", "value-two-1a2b3c"] {
        let leaks = files_containing(&lab.cache_dir(), value.as_bytes());
        assert!(leaks.is_empty(), "secret value stored in {leaks:?}");
    }
}

/// Regular files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                let bytes = std::fs::read(entry.path()).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(entry.path());
                }
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------
// Time to live

#[test]
fn a_snapshot_older_than_its_ttl_is_set_up_afresh() {
    require_root!();
    let lab = Lab::new("ttl");
    let env = lab.standard_env("web", "cache: {ttl: 3s}\n");

    let first = lab.run_ok(&env, &Opts::default());
    first.expect("miss", &["setup"]);
    let key = first.key();
    assert_built(&first, &key);
    let made = lab.meta("web", &key)["created"].as_u64().unwrap();
    assert_eq!(lab.meta("web", &key)["ttl"], 3);

    wait_until_older_than(made, 3);
    let listed = lab.cache_list();
    let row = listed
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("web not listed:\n{listed}"));
    assert!(row.contains(short(&key)), "{listed}");
    assert!(row.contains("expired"), "{listed}");

    // No agent, so the fresh snapshot is seconds old when gc looks at it.
    let second = lab.run_ok(&env, &Opts::default());
    second.expect("miss", &["setup"]);
    assert_eq!(second.key(), key, "age is not a keyed input");
    assert_built(&second, &key);
    second.assert_not_says("cache: hit");
    // The expired snapshot was replaced by a fresh setup, not built upon.
    assert_eq!(lab.snapshot_keys("web"), vec![key.clone()]);
    let remade = lab.meta("web", &key)["created"].as_u64().unwrap();
    assert!(remade >= made + 3, "not remade: {made} then {remade}");
    assert_eq!(
        lines_in(&lab.in_layer("web", &key, "root/setup-runs")),
        1,
        "the fresh layer holds an earlier setup's writes"
    );
    assert_eq!(
        lines_in(&lab.in_layer("web", &key, "workspace/proj/setup-marker")),
        1
    );

    // Nothing is expired any more: the run replaced what was.
    let gc = lab.cache_gc();
    assert!(gc.contains("gc: removed 0 snapshot(s)"), "{gc}");
    assert_eq!(lab.snapshot_keys("web"), vec![key.clone()]);
    let listed = lab.cache_list();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("web ") && l.trim_end().ends_with("ready")),
        "{listed}"
    );
}

#[test]
fn a_zero_ttl_disables_the_cache() {
    require_root!();
    let lab = Lab::new("ttl0");
    let env = lab.standard_env("web", "cache: {ttl: 0}\n");
    let opts = Opts {
        agent: REPORTING,
        ..Opts::default()
    };
    for _ in 0..2 {
        let run = lab.run_ok(&env, &opts);
        run.expect("disabled", &["setup", "agent"]);
        run.key();
        run.assert_says("tollgate: cache: disabled (cache.ttl: 0)");
        run.assert_not_says("published snapshot");
        assert_eq!(run.fact("setup-runs"), "1");
        assert_eq!(run.fact("maint-marker"), "0");
        assert!(
            !lab.cache_dir().join("web").exists(),
            "a snapshot directory was created with ttl 0"
        );
    }
    let listed = lab.cache_list();
    assert!(listed.starts_with("no snapshots"), "{listed}");
}

// ---------------------------------------------------------------------------
// cache reset and gc

#[test]
fn reset_removes_only_that_environment() {
    require_root!();
    let lab = Lab::new("reset");
    // Two environments that differ in their name only.
    let alpha = lab.standard_env("alpha", "");
    let beta = lab.standard_env("beta", "");
    let alpha_key = lab.run_ok(&alpha, &Opts::default()).key();
    let beta_key = lab.run_ok(&beta, &Opts::default()).key();
    assert_eq!(lab.snapshot_keys("alpha"), vec![alpha_key.clone()]);
    assert_eq!(lab.snapshot_keys("beta"), vec![beta_key.clone()]);

    let reset = lab.cache_reset(&alpha);
    assert!(
        reset.contains(&format!("removed alpha/{alpha_key}")),
        "{reset}"
    );
    assert!(
        reset.contains("reset: removed 1 snapshot(s), freed "),
        "{reset}"
    );
    assert!(lab.snapshot_keys("alpha").is_empty());
    assert_eq!(lab.snapshot_keys("beta"), vec![beta_key.clone()]);
    assert!(lab
        .in_layer("beta", &beta_key, "workspace/proj/setup-marker")
        .is_file());
    let listed = lab.cache_list();
    assert!(!listed.lines().any(|l| l.starts_with("alpha ")), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with("beta ")), "{listed}");

    let alpha_again = lab.run_ok(&alpha, &Opts::default());
    alpha_again.expect("miss", &["setup"]);
    assert_built(&alpha_again, &alpha_key);
    lab.run_ok(&beta, &Opts::default())
        .expect("hit", &["maintenance"]);
}

#[test]
fn gc_removes_expired_and_incomplete_snapshots() {
    require_root!();
    let lab = Lab::new("gc");
    let short_lived = lab.standard_env("short", "cache: {ttl: 1s}\n");
    let long_lived = lab.standard_env("long", "cache: {ttl: 1h}\n");
    let short_key = lab.run_ok(&short_lived, &Opts::default()).key();
    let long_key = lab.run_ok(&long_lived, &Opts::default()).key();

    // Not whole: a layer without meta.json; a meta.json that does not parse.
    let no_meta = "0".repeat(64);
    let layer = lab.snapshot("long", &no_meta).join("layer");
    std::fs::create_dir_all(&layer).unwrap();
    std::fs::write(layer.join("half-written"), vec![b'x'; 5000]).unwrap();
    let bad_meta = "f".repeat(64);
    std::fs::create_dir_all(lab.snapshot("long", &bad_meta).join("layer")).unwrap();
    std::fs::write(
        lab.snapshot("long", &bad_meta).join("meta.json"),
        "{\"env\": \"lo",
    )
    .unwrap();

    let made = lab.meta("short", &short_key)["created"].as_u64().unwrap();
    wait_until_older_than(made, 1);
    let listed = lab.cache_list();
    for (env, key, state) in [
        ("short", &short_key, "expired"),
        ("long", &long_key, "ready"),
        ("long", &no_meta, "incomplete"),
        ("long", &bad_meta, "incomplete"),
    ] {
        assert!(
            listed.lines().any(|l| l.starts_with(&format!("{env} "))
                && l.contains(short(key))
                && l.contains(state)),
            "{env}/{key} should be listed as {state}:\n{listed}"
        );
    }

    let gc = lab.cache_gc();
    for removed in [
        format!("removed short/{short_key}"),
        format!("removed long/{no_meta}"),
        format!("removed long/{bad_meta}"),
    ] {
        assert!(
            gc.lines().any(|l| l == removed),
            "{removed:?} not in:\n{gc}"
        );
    }
    assert!(gc.contains("gc: removed 3 snapshot(s), freed "), "{gc}");
    assert!(!gc.contains("freed 0 B"), "{gc}");
    assert!(lab.snapshot_keys("short").is_empty());
    assert_eq!(lab.snapshot_keys("long"), vec![long_key.clone()]);

    // The live one is untouched and still used.
    lab.run_ok(&long_lived, &Opts::default())
        .expect("hit", &["maintenance"]);
    let gc = lab.cache_gc();
    assert!(gc.contains("gc: removed 0 snapshot(s)"), "{gc}");
}

#[test]
fn reset_and_gc_keep_a_snapshot_that_a_run_is_using() {
    require_root!();
    let lab = Lab::new("inuse");
    let env = lab.standard_env("web", "cache: {ttl: 3s}\n");
    let key = lab.run_ok(&env, &Opts::default()).key();
    let made = lab.meta("web", &key)["created"].as_u64().unwrap();

    // A resumed run whose agent reads the snapshot's files after a while.
    let agent: &[&str] = &["bash", "-c", "sleep 8; cat deps/dep.txt /root/setup-runs"];
    let (running, out) = lab.start(
        &env,
        &Opts {
            agent: Some(agent),
            ..Opts::default()
        },
    );
    let agent_started = eventually(Duration::from_secs(60), || {
        lab.run_dirs()
            .iter()
            .any(|id| lab.runs_dir().join(id).join("agent").exists())
    });
    assert!(agent_started, "the agent phase did not start");
    let listed = lab.cache_list();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("web ") && l.trim_end().ends_with("in use")),
        "{listed}"
    );

    let reset = lab.cache_reset(&env);
    assert!(
        reset.contains(&format!("kept web/{key}: a run is using it")),
        "{reset}"
    );
    assert!(reset.contains("reset: removed 0 snapshot(s)"), "{reset}");
    assert_eq!(lab.snapshot_keys("web"), vec![key.clone()]);

    wait_until_older_than(made, 3);
    let gc = lab.cache_gc();
    assert!(
        gc.contains(&format!("kept web/{key}: a run is using it")),
        "{gc}"
    );
    assert!(gc.contains("gc: removed 0 snapshot(s)"), "{gc}");
    assert!(lab
        .in_layer("web", &key, "workspace/proj/deps/dep.txt")
        .is_file());

    // A run now: the snapshot is expired but in use, so it sets up afresh
    // and runs uncached; the snapshot stays as it is.
    let meanwhile = lab.run_ok(
        &env,
        &Opts {
            agent: REPORTING,
            ..Opts::default()
        },
    );
    meanwhile.expect("miss", &["setup", "agent"]);
    assert_built_not_published(&meanwhile, &key);
    meanwhile.assert_says(
        "tollgate: cache: an expired snapshot of this key is still in use: not replaced; this run continues uncached",
    );
    assert_eq!(meanwhile.fact("setup-runs"), "1");
    assert_eq!(meanwhile.fact("deps"), "installed");
    assert_eq!(lab.snapshot_keys("web"), vec![key.clone()]);
    assert_eq!(lab.meta("web", &key)["created"], made);
    assert_eq!(lines_in(&lab.in_layer("web", &key, "root/setup-runs")), 1);

    let run = RunOut::finish(running, out);
    assert_eq!(run.done.code, Some(0), "{:#?}", run.done);
    run.expect("hit", &["maintenance", "agent"]);
    let log = std::fs::read_to_string(run.out.join("agent.log")).unwrap();
    assert!(log.contains("installed"), "the layer went away: {log}");

    // No one uses it now: gc removes the expired snapshot.
    let gc = lab.cache_gc();
    assert!(gc.contains(&format!("removed web/{key}")), "{gc}");
    assert!(gc.contains("gc: removed 1 snapshot(s)"), "{gc}");
    assert!(lab.snapshot_keys("web").is_empty());
}

// ---------------------------------------------------------------------------
// Invariant 8: atomic publication, nothing partial used, concurrent runs

#[test]
fn a_corrupt_or_partial_snapshot_is_never_used() {
    require_root!();
    let lab = Lab::new("corrupt");
    let env = lab.standard_env("web", "");
    let key = lab.run_ok(&env, &Opts::default()).key();
    let meta_path = lab.snapshot("web", &key).join("meta.json");
    let setup_runs = lab.in_layer("web", &key, "root/setup-runs");

    // meta.json cut short.
    let text = std::fs::read_to_string(&meta_path).unwrap();
    std::fs::write(&meta_path, &text[..text.len() / 2]).unwrap();
    let run = lab.run_ok(&env, &Opts::default());
    run.expect("miss", &["setup"]);
    assert_built(&run, &key);
    assert_eq!(lab.meta("web", &key)["key"], key.as_str());
    assert_eq!(lines_in(&setup_runs), 1, "built on the corrupt snapshot");

    // meta.json whole, the layer gone.
    std::fs::remove_dir_all(lab.snapshot("web", &key).join("layer")).unwrap();
    let run = lab.run_ok(&env, &Opts::default());
    run.expect("miss", &["setup"]);
    assert_built(&run, &key);
    assert_eq!(lines_in(&setup_runs), 1);

    // meta.json of another key.
    let mut meta = lab.meta("web", &key);
    meta["key"] = Value::from("1".repeat(64));
    std::fs::write(&meta_path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let run = lab.run_ok(&env, &Opts::default());
    run.expect("miss", &["setup"]);
    assert_built(&run, &key);
    assert_eq!(lab.meta("web", &key)["key"], key.as_str());

    // Whole again: used.
    lab.run_ok(&env, &Opts::default())
        .expect("hit", &["maintenance"]);
    assert_eq!(lab.snapshot_keys("web"), vec![key]);
}

#[test]
fn a_failed_setup_publishes_nothing() {
    require_root!();
    let lab = Lab::new("failed");
    // Setup fails on branch `broken` only: the next run, on main, has the
    // same key.
    lab.repo.branch_with("broken", "BROKEN");
    let setup = format!("{SETUP}if [ -e BROKEN ]; then exit 3; fi\n");
    let env = lab.env("web.yaml", &env_yaml("web", &setup, MAINTENANCE, ""));

    let failed = lab.run(
        &env,
        &Opts {
            args: &["--branch", "broken"],
            agent: REPORTING,
            ..Opts::default()
        },
    );
    assert_ne!(failed.done.code, Some(0), "{:#?}", failed.done);
    assert_eq!(failed.status(), "miss");
    assert_eq!(failed.phases(), [("setup".to_owned(), 3)]);
    let key = failed.key();
    assert_built_not_published(&failed, &key);
    assert!(
        lab.snapshot_keys("web").is_empty(),
        "{:?}",
        lab.snapshot_keys("web")
    );
    assert!(lab.run_dirs().is_empty(), "left: {:?}", lab.run_dirs());

    let next = lab.run_ok(
        &env,
        &Opts {
            agent: REPORTING,
            ..Opts::default()
        },
    );
    next.expect("miss", &["setup", "agent"]);
    assert_eq!(next.key(), key);
    assert_built(&next, &key);
    assert_eq!(next.fact("setup-runs"), "1");
    assert_eq!(lines_in(&lab.in_layer("web", &key, "root/setup-runs")), 1);
}

#[test]
fn two_concurrent_runs_both_succeed_and_one_builds() {
    require_root!();
    let lab = Lab::new("concurrent");
    let env = lab.env(
        "web.yaml",
        &env_yaml("web", &format!("{SETUP}sleep 2\n"), MAINTENANCE, ""),
    );
    let opts = Opts {
        agent: REPORTING,
        ..Opts::default()
    };

    // The second starts while the first is provably in its setup.
    let (first, first_out) = lab.start(&env, &opts);
    let in_setup = eventually(Duration::from_secs(60), || {
        !setup_layers_holding(&lab, "setup-marker").is_empty()
    });
    assert!(in_setup, "the first run's setup did not start");
    let (second, second_out) = lab.start(&env, &opts);
    let second = RunOut::finish(second, second_out);
    let first = RunOut::finish(first, first_out);

    for run in [&first, &second] {
        assert_eq!(run.done.code, Some(0), "{:#?}", run.done);
        run.expect("miss", &["setup", "agent"]);
        assert_eq!(run.fact("setup-runs"), "1");
        assert_eq!(run.fact("deps"), "installed");
    }
    let key = first.key();
    assert_eq!(second.key(), key);
    assert_built(&first, &key);
    second.assert_says(&format!(
        "tollgate: cache: miss (key {}), and another run is building this snapshot: this run sets up without caching",
        short(&key)
    ));
    second.assert_not_says("published snapshot");

    assert_eq!(lab.snapshot_keys("web"), vec![key.clone()]);
    assert_eq!(lab.meta("web", &key)["key"], key.as_str());
    assert_eq!(
        lines_in(&lab.in_layer("web", &key, "root/setup-runs")),
        1,
        "two setups wrote into one snapshot"
    );
    assert!(lab.run_dirs().is_empty(), "left: {:?}", lab.run_dirs());

    let third = lab.run_ok(&env, &opts);
    third.expect("hit", &["maintenance", "agent"]);
    assert_eq!(third.fact("setup-runs"), "1");
    assert_eq!(third.fact("maint-marker"), "1");
}

#[test]
fn two_runs_started_at_once_publish_one_snapshot() {
    require_root!();
    let lab = Lab::new("atonce");
    let env = lab.env(
        "web.yaml",
        &env_yaml("web", &format!("{SETUP}sleep 2\n"), MAINTENANCE, ""),
    );
    let opts = Opts {
        agent: REPORTING,
        ..Opts::default()
    };
    let (a, a_out) = lab.start(&env, &opts);
    let (b, b_out) = lab.start(&env, &opts);
    let runs = [RunOut::finish(a, a_out), RunOut::finish(b, b_out)];

    let key = runs[0].key();
    let mut builders = 0;
    let mut publications = 0;
    for run in &runs {
        assert_eq!(run.done.code, Some(0), "{:#?}", run.done);
        assert_eq!(run.key(), key);
        assert_eq!(run.fact("setup-runs"), "1");
        assert_eq!(run.fact("deps"), "installed");
        let built = run.says("running setup; its result is cached");
        let uncached = run.says("another run is building this snapshot");
        let hit = run.status() == "hit";
        assert_eq!(
            [built, uncached, hit].iter().filter(|b| **b).count(),
            1,
            "a run builds, sets up uncached, or hits: {}",
            run.done.stderr
        );
        if hit {
            run.expect("hit", &["maintenance", "agent"]);
        } else {
            run.expect("miss", &["setup", "agent"]);
        }
        builders += usize::from(built);
        publications += run.done.stderr.matches("published snapshot").count();
    }
    assert_eq!(builders, 1, "exactly one run builds");
    assert_eq!(publications, 1, "exactly one publication");
    assert_eq!(lab.snapshot_keys("web"), vec![key.clone()]);
    assert_eq!(lines_in(&lab.in_layer("web", &key, "root/setup-runs")), 1);
    lab.run_ok(&env, &Opts::default())
        .expect("hit", &["maintenance"]);
}

#[test]
fn a_run_killed_during_setup_leaves_no_usable_snapshot() {
    require_root!();
    let lab = Lab::new("killed");
    // Setup sleeps on branch `slow` only: the revision is not keyed, so
    // the next run (on main) has the same key and a quick setup.
    lab.repo.branch_with("slow", "SLOW");
    let token = unique("sleeper");
    let setup = format!("{SETUP}if [ -e SLOW ]; then exec -a {token} sleep 30; fi\n");
    let env = lab.env(
        "web.yaml",
        &env_yaml("web", &setup, MAINTENANCE, "limits: {pids: 512}\n"),
    );

    let (killed, _) = lab.start(
        &env,
        &Opts {
            args: &["--branch", "slow"],
            agent: REPORTING,
            ..Opts::default()
        },
    );
    let killed_pid = killed.pid();
    let sleeping = eventually(Duration::from_secs(60), || {
        !processes_with(&token).is_empty()
    });
    assert!(sleeping, "the slow setup did not start");
    let own_dirs = |lab: &Lab| -> Vec<String> {
        lab.run_dirs()
            .into_iter()
            .filter(|id| id.starts_with(&format!("{killed_pid}-")))
            .collect()
    };
    assert_eq!(own_dirs(&lab).len(), 1, "runs: {:?}", lab.run_dirs());
    // What the killed run has on the host besides its layers; the checks
    // after the next run are not empty ones.
    let had_cgroups = !cgroups_of(killed_pid).is_empty();
    assert!(!sandbox_run_dirs_of(killed_pid).is_empty());
    let done = killed.kill();
    assert_eq!(done.code, None, "tollgate was not killed: {done:#?}");

    // Its sandbox died with it (parent-death signal).
    let gone = eventually(Duration::from_secs(5), || processes_with(&token).is_empty());
    assert!(
        gone,
        "setup outlived its tollgate: {:?}",
        processes_with(&token)
    );
    // Nothing was published, nothing is listed.
    assert!(
        lab.snapshot_keys("web").is_empty(),
        "{:?}",
        lab.snapshot_keys("web")
    );
    assert_eq!(
        own_dirs(&lab).len(),
        1,
        "a killed run cannot remove its layers"
    );
    let listed = lab.cache_list();
    assert!(listed.starts_with("no snapshots"), "{listed}");

    let next = lab.run_ok(
        &env,
        &Opts {
            agent: REPORTING,
            ..Opts::default()
        },
    );
    next.expect("miss", &["setup", "agent"]);
    let key = next.key();
    // It builds: the killed run's build lock died with it.
    assert_built(&next, &key);
    assert_eq!(next.fact("setup-runs"), "1");
    assert_eq!(next.fact("setup-marker"), "1");
    assert_eq!(next.fact("head"), lab.repo.main);
    assert_eq!(lab.snapshot_keys("web"), vec![key.clone()]);
    assert_eq!(lines_in(&lab.in_layer("web", &key, "root/setup-runs")), 1);

    // What the killed run left is gone after the next one.
    assert!(own_dirs(&lab).is_empty(), "abandoned: {:?}", lab.run_dirs());
    assert!(lab.run_dirs().is_empty(), "left: {:?}", lab.run_dirs());
    if !had_cgroups {
        eprintln!("note: no phase cgroups on this host (limits not enforced): not checked");
    }
    assert_eq!(cgroups_of(killed_pid), Vec::<PathBuf>::new());
    assert_eq!(sandbox_run_dirs_of(killed_pid), Vec::<PathBuf>::new());
    assert_eq!(
        mounts_mentioning(&lab.state.to_string_lossy()),
        Vec::<String>::new()
    );
}

#[test]
fn nothing_is_left_behind() {
    require_root!();
    let lab = Lab::new("leftovers");
    let token = unique("straggler");
    let env = lab.standard_env("web", "limits: {memory: 512M, pids: 512}\n");
    // The agent leaves a process behind and says which cgroups it is in.
    let script = format!("(exec -a {token} sleep 300) & cat /proc/self/cgroup");
    let agent: &[&str] = &["bash", "-c", &script];
    let opts = Opts {
        agent: Some(agent),
        ..Opts::default()
    };
    let state = lab.state.to_string_lossy().into_owned();

    for expected in ["miss", "hit"] {
        let run = lab.run_ok(&env, &opts);
        assert_eq!(run.status(), expected, "{}", run.done.stderr);
        let pid = run.pid;
        // The phase had cgroups of its own (the host enforces limits).
        let log = std::fs::read_to_string(run.out.join("agent.log")).unwrap();
        let own: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("tollgate-{pid}-")))
            .collect();
        let enforced = run.result["warnings"]
            .as_array()
            .is_some_and(|w| w.is_empty());
        if enforced {
            assert!(!own.is_empty(), "the agent was in no phase cgroup:\n{log}");
        }
        assert!(
            lab.run_dirs().is_empty(),
            "{expected}: left {:?}",
            lab.run_dirs()
        );
        assert_eq!(mounts_mentioning(&state), Vec::<String>::new());
        assert_eq!(
            mounts_mentioning(&format!("tollgate-run-{pid}-")),
            Vec::<String>::new()
        );
        assert_eq!(cgroups_of(pid), Vec::<PathBuf>::new(), "{expected}");
        assert_eq!(
            sandbox_run_dirs_of(pid),
            Vec::<PathBuf>::new(),
            "{expected}"
        );
        assert_eq!(processes_with(&token), Vec::<u32>::new(), "{expected}");
    }
    // Publication and removal leave no staging or trash behind.
    assert_eq!(lab.snapshot_keys("web").len(), 1);
    lab.cache_reset(&env);
    let trash: Vec<_> = std::fs::read_dir(lab.cache_dir().join(".trash"))
        .map(|e| e.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(trash.is_empty(), "trash left: {trash:?}");
    assert!(lab.snapshot_keys("web").is_empty());
}
