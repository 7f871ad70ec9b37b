//! `tollgate run`: one test's world (a repo, a private state dir, the
//! environment files and the output dirs of its runs), how a run is
//! started and what a finished run handed back. Environment files are
//! written with the helpers at the end.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::{
    eventually, host_mounts_mentioning, processes_with_mounts_mentioning, read_audit, Done, Repo,
    Running, Scratch, BIN,
};

/// Upper bound for one `tollgate` command; runs normally take about a
/// second.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// One test's world: a scratch dir with the repo, a private state dir, the
/// env files and the output dirs of its runs.
pub struct RunWorld {
    pub dir: Scratch,
    pub repo: Repo,
    pub state: PathBuf,
    runs: AtomicUsize,
    envs: AtomicUsize,
}

/// How to run, besides the environment file: options before `--`, the
/// agent command (none: no `--`, the run stops after setup or
/// maintenance), variables for tollgate's own environment, `--out`
/// (default: a new directory in the world's scratch dir), the repo
/// (default: the world's), and a directory to bind the host's `/` on (in a
/// private mount namespace) for a `base:` pointing there.
#[derive(Clone, Copy, Default)]
pub struct Spec<'a> {
    pub args: &'a [&'a str],
    pub agent: &'a [&'a str],
    pub vars: &'a [(&'a str, &'a str)],
    pub out: Option<&'a Path>,
    pub repo: Option<&'a Path>,
    pub bind_root_at: Option<&'a Path>,
}

/// A `tollgate run` on its way, with the output dir it was given (which
/// does not exist at first) and its environment file.
pub struct Started {
    pub running: Running,
    pub out: PathBuf,
    pub env_path: PathBuf,
}

impl Started {
    pub fn pid(&self) -> u32 {
        self.running.pid()
    }
}

impl RunWorld {
    pub fn new(name: &str) -> RunWorld {
        let dir = Scratch::new(&format!("run-{name}"));
        let repo = Repo::create(&dir.0);
        let state = dir.path("state");
        RunWorld {
            dir,
            repo,
            state,
            runs: AtomicUsize::new(0),
            envs: AtomicUsize::new(0),
        }
    }

    /// Writes an environment file under a new name; its path.
    pub fn env(&self, text: &str) -> PathBuf {
        let n = self.envs.fetch_add(1, Ordering::Relaxed);
        self.dir.write(&format!("env-{n}.yaml"), text)
    }

    /// Writes the environment file `file`; its path.
    pub fn env_named(&self, file: &str, text: &str) -> PathBuf {
        self.dir.write(file, text)
    }

    /// `tollgate --state-dir STATE`, with no colours.
    pub fn tollgate(&self) -> Command {
        let mut command = Command::new(BIN);
        command
            .env_remove("TOLLGATE_STATE_DIR")
            .env("NO_COLOR", "1")
            .arg("--state-dir")
            .arg(&self.state);
        command
    }

    /// Starts `tollgate run` with the environment file `env`.
    pub fn start(&self, env: &Path, spec: &Spec) -> Started {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let out = spec
            .out
            .map_or_else(|| self.dir.path(&format!("out-{n}")), Path::to_path_buf);
        let repo = spec.repo.unwrap_or(&self.repo.path);
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
        args.extend(spec.args.iter().map(OsString::from));
        if !spec.agent.is_empty() {
            args.push("--".into());
            args.extend(spec.agent.iter().map(OsString::from));
        }
        let mut command = match spec.bind_root_at {
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
        for (name, value) in spec.vars {
            command.env(name, value);
        }
        Started {
            running: Running::spawn(&mut command),
            out,
            env_path: env.to_path_buf(),
        }
    }

    /// [`RunWorld::run`] with `sh -c script` as the agent.
    pub fn run_sh(&self, env: &Path, script: &str) -> RunOut {
        self.run(
            env,
            &Spec {
                agent: &["sh", "-c", script],
                ..Spec::default()
            },
        )
    }

    /// Runs `tollgate run` to its end and checks that it left nothing
    /// behind (so no other run of this world may be going on).
    pub fn run(&self, env: &Path, spec: &Spec) -> RunOut {
        self.finish(self.start(env, spec))
    }

    /// Waits for a started run and checks that it left nothing behind.
    pub fn finish(&self, started: Started) -> RunOut {
        let run = RunOut::finish(started);
        self.assert_nothing_left(&run);
        run
    }

    /// Runs `tollgate run` to its end, which must have written a
    /// result.json; what it left is not checked (another run of this world
    /// may still be going on).
    pub fn run_with_result(&self, env: &Path, spec: &Spec) -> RunOut {
        RunOut::finish_with_result(self.start(env, spec))
    }

    /// [`RunWorld::run_with_result`] that must exit 0.
    pub fn run_ok_with_result(&self, env: &Path, spec: &Spec) -> RunOut {
        let run = self.run_with_result(env, spec);
        assert_eq!(run.done.code, Some(0), "the run failed: {:#?}", run.done);
        run
    }

    /// No run directory, no mount and no process in a mount namespace of
    /// this world's runs remains.
    fn assert_nothing_left(&self, run: &RunOut) {
        let runs_dir = self.runs_dir();
        let left: Vec<String> = std::fs::read_dir(&runs_dir)
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().path().display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "run directories left in {}: {left:?}\n{run:#?}",
            runs_dir.display()
        );
        let needle = self.state.to_string_lossy().into_owned();
        let gone = eventually(Duration::from_secs(3), || {
            host_mounts_mentioning(&needle).is_empty()
                && processes_with_mounts_mentioning(&needle).is_empty()
        });
        assert!(
            gone,
            "after the run: host mounts {:?}, processes in its mount namespaces {:?}\n{run:#?}",
            host_mounts_mentioning(&needle),
            processes_with_mounts_mentioning(&needle)
        );
    }

    // -----------------------------------------------------------------------
    // The state dir: cache snapshots and run layers

    /// `tollgate cache ARGS`, which must exit 0; its stdout.
    pub fn cache(&self, args: &[&std::ffi::OsStr]) -> String {
        let mut command = self.tollgate();
        command.arg("cache").args(args);
        let what = format!("{command:?}");
        let done = Running::spawn(&mut command).finish(RUN_LIMIT);
        assert_eq!(done.code, Some(0), "{what} failed: {done:#?}");
        done.stdout
    }

    pub fn cache_list(&self) -> String {
        self.cache(&["list".as_ref()])
    }

    pub fn cache_gc(&self) -> String {
        self.cache(&["gc".as_ref()])
    }

    pub fn cache_reset(&self, env: &Path) -> String {
        self.cache(&["reset".as_ref(), env.as_os_str()])
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.state.join("cache")
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.state.join("runs")
    }

    /// The snapshot directories of `env` (any directory in its cache dir),
    /// sorted.
    pub fn snapshot_keys(&self, env: &str) -> Vec<String> {
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

    pub fn snapshot(&self, env: &str, key: &str) -> PathBuf {
        self.cache_dir().join(env).join(key)
    }

    /// A snapshot's meta.json, which must parse.
    pub fn meta(&self, env: &str, key: &str) -> Value {
        let path = self.snapshot(env, key).join("meta.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}: {text}", path.display()))
    }

    /// A file of a snapshot's layer, as the host sees it.
    pub fn in_layer(&self, env: &str, key: &str, path: &str) -> PathBuf {
        self.snapshot(env, key).join("layer").join(path)
    }

    /// Entries of the runs dir (run layers still on disk), sorted.
    pub fn run_dirs(&self) -> Vec<String> {
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

/// A finished `tollgate run`.
#[derive(Debug)]
pub struct RunOut {
    pub done: Done,
    pub out: PathBuf,
    pub env_path: PathBuf,
    pub pid: u32,
}

impl RunOut {
    /// Waits for a started run (at most [`RUN_LIMIT`]).
    pub fn finish(started: Started) -> RunOut {
        let pid = started.running.pid();
        RunOut {
            done: started.running.finish(RUN_LIMIT),
            out: started.out,
            env_path: started.env_path,
            pid,
        }
    }

    /// [`RunOut::finish`]; the run must have written a result.json.
    pub fn finish_with_result(started: Started) -> RunOut {
        let run = RunOut::finish(started);
        run.result();
        run
    }

    pub fn code(&self) -> Option<i32> {
        self.done.code
    }

    pub fn stdout(&self) -> &str {
        &self.done.stdout
    }

    pub fn stderr(&self) -> &str {
        &self.done.stderr
    }

    /// Asserts exit status `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code(), Some(code), "exit status: {self:#?}");
        self
    }

    pub fn file(&self, name: &str) -> Option<String> {
        std::fs::read(self.out.join(name))
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    pub fn expect_file(&self, name: &str) -> String {
        self.file(name)
            .unwrap_or_else(|| panic!("no {name} in the output dir: {self:#?}"))
    }

    /// result.json, which must be there and parse.
    pub fn result(&self) -> Value {
        let text = self.expect_file("result.json");
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("result.json is not JSON ({e}): {text}\n{self:#?}"))
    }

    pub fn audit(&self) -> Vec<Value> {
        read_audit(&self.out.join("audit.jsonl"))
    }

    /// (name, exit code) of each phase in result.json, in order.
    pub fn phases(&self) -> Vec<(String, i64)> {
        let result = self.result();
        result["phases"]
            .as_array()
            .unwrap_or_else(|| panic!("no phases in {result:#}"))
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("?").to_owned(),
                    p["exit_code"].as_i64().unwrap_or(-1),
                )
            })
            .collect()
    }

    /// The names of the phases in result.json.
    pub fn phase_names(&self) -> Vec<String> {
        self.phases().into_iter().map(|(name, _)| name).collect()
    }

    // -----------------------------------------------------------------------
    // The terminal

    /// The raw lines stdout shows under `━━━ phase ━━━`.
    pub fn section(&self, phase: &str) -> Vec<String> {
        let header = format!("━━━ {phase} ━━━");
        let mut current = None;
        let mut lines = Vec::new();
        for line in self.stdout().lines() {
            if line.starts_with("━━━ ") {
                current = Some(line == header);
            } else if current == Some(true) {
                lines.push(line.to_owned());
            }
        }
        lines
    }

    /// The text of a phase's output on the terminal, time stamps removed.
    pub fn phase_text(&self, phase: &str) -> Vec<String> {
        self.section(phase)
            .iter()
            .map(|l| {
                strip_stamp(l)
                    .unwrap_or_else(|| panic!("line without a time stamp: {l:?}\n{self:#?}"))
                    .to_owned()
            })
            .collect()
    }

    /// The value after `KEY ` on the first line of `phase`'s output
    /// starting so.
    pub fn value(&self, phase: &str, key: &str) -> Option<String> {
        let prefix = format!("{key} ");
        self.phase_text(phase)
            .iter()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_owned()))
    }

    pub fn expect_value(&self, phase: &str, key: &str) -> String {
        self.value(phase, key)
            .unwrap_or_else(|| panic!("no `{key}` line in the {phase} output: {self:#?}"))
    }

    // -----------------------------------------------------------------------
    // The cache

    pub fn status(&self) -> String {
        let result = self.result();
        result["cache"]["status"]
            .as_str()
            .unwrap_or_else(|| panic!("no cache.status in {result:#}"))
            .to_owned()
    }

    pub fn key(&self) -> String {
        let result = self.result();
        let key = result["cache"]["key"]
            .as_str()
            .unwrap_or_else(|| panic!("no cache.key in {result:#}"));
        assert!(
            key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()),
            "cache.key is not a SHA-256 in hex: {key}"
        );
        key.to_owned()
    }

    /// Asserts the cache status and that every phase exited 0.
    pub fn expect(&self, status: &str, phases: &[&str]) -> &Self {
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

    /// The `name=value` lines the agent printed (its raw log).
    pub fn facts(&self) -> HashMap<String, String> {
        let log = std::fs::read_to_string(self.out.join("agent.log")).unwrap_or_default();
        log.lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    pub fn fact(&self, name: &str) -> String {
        self.facts().get(name).cloned().unwrap_or_else(|| {
            panic!(
                "the agent did not report {name}; agent.log:\n{}\nstderr:\n{}",
                std::fs::read_to_string(self.out.join("agent.log")).unwrap_or_default(),
                self.done.stderr
            )
        })
    }

    pub fn says(&self, text: &str) -> bool {
        self.done.stderr.contains(text)
    }

    pub fn assert_says(&self, text: &str) {
        assert!(
            self.says(text),
            "stderr should say {text:?}:\n{}",
            self.done.stderr
        );
    }

    pub fn assert_not_says(&self, text: &str) {
        assert!(
            !self.says(text),
            "stderr should not say {text:?}:\n{}",
            self.done.stderr
        );
    }
}

/// The text after a `[  12.3s] ` stamp.
pub fn strip_stamp(line: &str) -> Option<&str> {
    let rest = line.strip_prefix('[')?;
    let (stamp, text) = rest.split_once("] ")?;
    let seconds = stamp.trim_start().strip_suffix('s')?;
    let ok = seconds.contains('.') && seconds.parse::<f64>().is_ok();
    ok.then_some(text)
}

// ---------------------------------------------------------------------------
// Environment files

/// An environment file: `version`, `name`, then `body` (YAML lines).
pub fn env_file(body: &str) -> String {
    format!("version: 1\nname: test-env\n{body}")
}

/// `setup: |` with `script` as its block.
pub fn setup_key(script: &str) -> String {
    format!("setup: |\n{}", block(script))
}

/// `text` indented as the body of a YAML block scalar.
pub fn block(text: &str) -> String {
    text.trim_matches('\n')
        .lines()
        .map(|line| format!("  {line}\n"))
        .collect()
}

/// An environment file with `setup`, `maintenance`, and `extra` YAML lines
/// (no `env:` in them: see [`env_yaml_with_vars`]).
pub fn env_yaml(name: &str, setup: &str, maintenance: &str, extra: &str) -> String {
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
pub fn env_yaml_with_vars(
    name: &str,
    setup: &str,
    maintenance: &str,
    vars: &str,
    extra: &str,
) -> String {
    format!(
        "version: 1\nname: {name}\nenv:\n  HOME: /tmp\n{}{}maintenance: |\n{}{extra}",
        block(vars),
        setup_key(setup),
        block(maintenance)
    )
}

/// The `internet` mapping: setup may reach `internet.test` (127.0.0.1,
/// exempt from the internal-address guard); the agent gets the default.
pub const INTERNET: &str = "internet:\n  setup: {mode: unrestricted, allow_internal: [\"127.0.0.1/32\"], hosts: {internet.test: 127.0.0.1}}\n";

/// `text` as printf(1) octal escapes, so that a script can produce a value
/// without the value appearing in the script, its argv or the env file.
pub fn printf_octal(text: &str) -> String {
    text.bytes().map(|b| format!("\\{b:03o}")).collect()
}

/// The first 12 characters of a cache key, as tollgate prints it.
pub fn short(key: &str) -> &str {
    &key[..12]
}
