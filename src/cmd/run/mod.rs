//! `tollgate run`: check out a repo on the host, run the setup phase, then
//! the agent phase, each a fresh sandbox over the same layers with its own
//! policy, and hand back result.json, diff.patch, audit.jsonl and a log per
//! phase.

mod output;
mod phase;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use tollgate_proxy::audit::{AuditLog, AuditTarget};
use tollgate_proxy::policy::Policy;
use tollgate_sandbox::autosetup::AutoSetup;
use tollgate_sandbox::cache::{self, BuildLock, Meta, Snapshot, SnapshotStore};
use tollgate_sandbox::cgroup;
use tollgate_sandbox::checkout::{self, CheckedOut, Revision, Target};
use tollgate_sandbox::diff::{self, DiffLayers};
use tollgate_sandbox::environment::{Environment, PhasePolicy, Secret};
use tollgate_sandbox::layers::RunLayers;
use tollgate_sandbox::secrets;
use tollgate_sandbox::{Bind, NewFile};

use self::output::{CacheResult, DiffResult, RunResult};
use self::phase::{Outcome, Plan, Shared};
use crate::cli::RunArgs;
use crate::cmd::{ca, exec};
use crate::state::StateDir;

/// Where the setup script is put inside: /tmp is a per-phase tmpfs, so the
/// script is not part of the layer the agent sees.
const SETUP_SCRIPT: &str = "/tmp/tollgate/setup.sh";
/// Every phase starts by reading ~/.bashrc, once (see README, "Environment
/// files"): what setup appends there reaches the agent; `export` does not.
/// (Not BASH_ENV: every bash script would re-read it, and a .bashrc that
/// runs a bash script, such as pyenv's, would recurse without end.)
const READ_BASHRC: &str = "if [ -f ~/.bashrc ]; then . ~/.bashrc; fi";

/// What the phases of one run share, set up before the first.
struct Run {
    environment: Environment,
    secrets: Vec<Secret>,
    source: String,
    name: String,
    workspace: PathBuf,
    layers: RunLayers,
    shared: Shared,
    files: Vec<NewFile>,
    env: Vec<(String, String)>,
    intercepting: bool,
    runtime: tokio::runtime::Runtime,
}

pub fn run(args: RunArgs, state: &StateDir) -> Result<ExitCode> {
    tollgate_sandbox::launch::preflight()?;
    let environment = Environment::load(&args.environment)?;
    let loaded = ca::interception(args.ca_dir.as_deref(), &args.upstream_ca, state)?;
    let intercepting = loaded.is_some();
    // Both policies load before anything starts; setup's is loaded again
    // for whichever phase (setup or maintenance) uses it.
    phase_policy(&environment.internet.setup, intercepting)?;
    let agent_policy = phase_policy(&environment.internet.agent, intercepting)?;
    let secrets = environment
        .resolve_secrets(|name| std::env::var(name).ok())
        .map_err(|e| anyhow::anyhow!("{}: {e}", environment.path.display()))?;
    let revision = revision(&args);
    checkout::validate(&revision)?;
    let source = checkout::normalise_source(&args.repo)?;
    let name = checkout::repo_name(&source)?;
    let key = cache::key(&environment, &source, &secrets)?;
    let out = output::create_out_dir(args.out.as_deref(), &environment.name)?;
    let layers = RunLayers::create(&state.runs_dir())?;
    let shared = Shared {
        base: environment.base.clone(),
        masks: exec::private_dirs(args.ca_dir.as_deref(), state),
        workdir: checkout::workspace_in_sandbox(&name),
        interception: loaded.as_ref().map(|ca| ca.interception.clone()),
        audit: AuditLog::open(AuditTarget::File(out.join("audit.jsonl")))?,
        limits: cgroup::Limits {
            memory: environment.limits.memory,
            pids: environment.limits.pids,
        },
        run_id: layers.id().to_owned(),
        out: out.clone(),
        redact: redactions(&secrets),
    };
    crate::cmd::proxy::raise_open_file_limit();
    let run = Run {
        files: exec::network_files(loaded.as_ref().map(|ca| ca.cert_pem.as_str()))?,
        env: phase_environment(&environment, intercepting),
        workspace: Path::new("workspace").join(&name),
        environment,
        secrets,
        source,
        name,
        layers,
        shared,
        intercepting,
        runtime: tokio::runtime::Runtime::new().context("cannot start the async runtime")?,
    };

    let store = SnapshotStore::new(state.cache_dir());
    let prepared = checkout::mirror(&run.source, &revision, &run.layers.mirror())
        .map_err(anyhow::Error::from)
        .and_then(|target| run.prepare(&store, &key, &target));
    let (status, prepared) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            output::discard_out_dir(&out);
            return Err(e);
        }
    };
    let mut warnings = prepared.warnings;
    let mut phases = vec![prepared.phase];
    let mut diff_result = None;
    let mut exit_code = phases[0].exit_code;
    if !phases[0].succeeded() || phases[0].interrupted {
        eprintln!("{}", phase_failure(&phases[0]));
        exit_code = if exit_code == 0 { 1 } else { exit_code };
    } else if args.agent.is_empty() {
        eprintln!(
            "tollgate: no agent command given (after --): the run stops after {}",
            phases[0].name
        );
    } else {
        let (outcome, diff) = run.agent(agent_policy, &args.agent, prepared.ready.read_only)?;
        exit_code = outcome.exit_code;
        phases.push(outcome);
        diff_result = Some(diff);
    }
    run.shared.audit.sync(std::time::Duration::from_secs(5));
    for file in ["audit.jsonl", "diff.patch"] {
        if output::redact_file(&out.join(file), &run.shared.redact)? {
            let warning = format!("{file}: contained a secret value, now replaced by ***");
            eprintln!("tollgate: warning: {warning}");
            warnings.push(warning);
        }
    }
    let result = RunResult {
        env: run.environment.name.clone(),
        repo: prepared.ready.checked_out,
        cache: CacheResult { status, key },
        phases,
        diff: diff_result,
        exit_code,
        warnings,
    };
    result.write(&out)?;
    print_summary(&result, &out);
    Ok(ExitCode::from(u8::try_from(exit_code).unwrap_or(1)))
}

/// The first phase's result and what the agent needs.
struct Preparation {
    phase: Outcome,
    warnings: Vec<String>,
    ready: Ready,
}

/// The agent's starting point: its read-only layers (topmost first) and
/// the checkout they hold.
struct Ready {
    checked_out: CheckedOut,
    read_only: Vec<PathBuf>,
    /// Held while the agent uses the snapshot: reset and gc leave it alone.
    _snapshot: Option<Snapshot>,
}

impl Run {
    /// Setup, or on a cache hit maintenance; returns the cache status.
    fn prepare(
        &self,
        store: &SnapshotStore,
        key: &str,
        revision: &Target,
    ) -> Result<(&'static str, Preparation)> {
        let env_name = &self.environment.name;
        let ttl = self.environment.cache.ttl;
        if !self.environment.cache.enabled() {
            eprintln!("tollgate: cache: disabled (cache.ttl: 0): running setup");
            return Ok(("disabled", self.setup(revision, None)?));
        }
        if let Some(snapshot) = store.lookup(env_name, key, ttl)? {
            eprintln!(
                "tollgate: cache: hit (key {}, made {} ago): resuming it; setup skipped",
                short(key),
                humantime::format_duration(round_secs(snapshot.meta.age()))
            );
            return Ok(("hit", self.maintenance(revision, snapshot)?));
        }
        let build = store.try_build(env_name, key)?;
        match &build {
            Some(_) => eprintln!(
                "tollgate: cache: miss (key {}): running setup; its result is cached for {}",
                short(key),
                humantime::format_duration(ttl)
            ),
            None => eprintln!(
                "tollgate: cache: miss (key {}), and another run is building this snapshot: this run sets up without caching",
                short(key)
            ),
        }
        let publish = build.map(|lock| (store, lock, key));
        Ok(("miss", self.setup(revision, publish)?))
    }

    /// A fresh setup: check out into the setup layer on the host, run the
    /// script, and publish the layer as the key's snapshot when asked to.
    fn setup(
        &self,
        revision: &Target,
        publish: Option<(&SnapshotStore, BuildLock, &str)>,
    ) -> Result<Preparation> {
        let setup_dir = self.layers.prepare("setup")?;
        let upper = self.layers.upper("setup");
        let checked_out = self.check_out(revision, &upper.join(&self.workspace))?;
        let script = setup_script(&self.environment, &upper.join(&self.workspace))?;
        let (phase, mut warnings) =
            self.run_script("setup", &script, setup_dir, Vec::new(), Vec::new())?;
        warnings.extend(secret_warnings(&upper, &self.secrets));
        let mut ready = Ready {
            checked_out,
            read_only: vec![upper.clone()],
            _snapshot: None,
        };
        if let (true, Some((store, lock, key))) = (phase.succeeded() && !phase.interrupted, publish)
        {
            let meta = Meta {
                env: self.environment.name.clone(),
                key: key.to_owned(),
                created: cache::now(),
                ttl: self.environment.cache.ttl.as_secs(),
                base: self.environment.base.clone(),
                repo: self.source.clone(),
            };
            match store.publish(lock, &upper, &self.layers.staging(), meta)? {
                Some(snapshot) => {
                    eprintln!("tollgate: cache: published snapshot {}", short(key));
                    ready.read_only = vec![snapshot.layer.clone()];
                    ready._snapshot = Some(snapshot);
                }
                None => eprintln!(
                    "tollgate: cache: an expired snapshot of this key is still in use: not replaced; this run continues uncached"
                ),
            }
        }
        Ok(Preparation {
            phase,
            warnings,
            ready,
        })
    }

    /// A resume: the snapshot as the lowest layer of the run; maintenance
    /// first fetches and checks out the task's revision from a host-side
    /// mirror (git runs inside, on the snapshot's untrusted workspace),
    /// then runs the `maintenance` script.
    fn maintenance(&self, target: &Target, snapshot: Snapshot) -> Result<Preparation> {
        let dir = self.layers.prepare("maintenance")?;
        let mirror = self.layers.mirror();
        let checked_out = CheckedOut {
            source: self.source.clone(),
            name: self.name.clone(),
            commit: target.commit.clone(),
            branch: target.branch.clone(),
        };
        eprintln!(
            "tollgate: checking out {}{} in /workspace/{} (maintenance)",
            target.commit,
            target
                .branch
                .as_deref()
                .map(|b| format!(" ({b})"))
                .unwrap_or_default(),
            self.name
        );
        let script = format!(
            "{}\n{}",
            checkout::update_script(target, Path::new(MIRROR_INSIDE)),
            self.environment.maintenance.clone().unwrap_or_default()
        );
        let binds = vec![Bind {
            host: mirror,
            sandbox: PathBuf::from(MIRROR_INSIDE),
            read_only: true,
        }];
        let read_only = vec![snapshot.layer.clone()];
        let (phase, mut warnings) =
            self.run_script("maintenance", &script, dir, read_only, binds)?;
        warnings.extend(secret_warnings(
            &self.layers.upper("maintenance"),
            &self.secrets,
        ));
        Ok(Preparation {
            phase,
            warnings,
            ready: Ready {
                checked_out,
                read_only: vec![self.layers.upper("maintenance"), snapshot.layer.clone()],
                _snapshot: Some(snapshot),
            },
        })
    }

    /// Clones the host's mirror at `target` into `dest` (in the setup
    /// layer), with `origin` pointing at the real source.
    fn check_out(&self, target: &Target, dest: &Path) -> Result<CheckedOut> {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let revision = match &target.branch {
            Some(branch) => Revision::Branch(branch.clone()),
            None => Revision::Commit(target.commit.clone()),
        };
        let mirror = self.layers.mirror();
        checkout::clone_into(&mirror.to_string_lossy(), &revision, dest)?;
        checkout::set_origin(dest, &self.source)?;
        eprintln!(
            "tollgate: checked out {} at {}{} into /workspace/{}",
            self.source,
            target.commit,
            target
                .branch
                .as_deref()
                .map(|b| format!(" ({b})"))
                .unwrap_or_default(),
            self.name
        );
        Ok(CheckedOut {
            source: self.source.clone(),
            name: self.name.clone(),
            commit: target.commit.clone(),
            branch: target.branch.clone(),
        })
    }

    /// Runs `script` with bash -e, env and secrets, and the setup policy.
    fn run_script(
        &self,
        name: &'static str,
        script: &str,
        writable: PathBuf,
        read_only: Vec<PathBuf>,
        binds: Vec<Bind>,
    ) -> Result<(Outcome, Vec<String>)> {
        let mut files = self.files.clone();
        files.push(NewFile {
            sandbox: PathBuf::from(SETUP_SCRIPT),
            bytes: script.as_bytes().to_vec(),
        });
        let plan = Plan {
            name,
            policy: phase_policy(&self.environment.internet.setup, self.intercepting)?,
            command: vec![
                "bash".into(),
                "-c".into(),
                format!("{READ_BASHRC}; exec bash -e {SETUP_SCRIPT}"),
            ],
            env: with_secrets(&self.env, &self.secrets),
            files,
            binds,
            read_only,
            writable,
            timeout: self.environment.limits.setup_timeout,
        };
        self.runtime.block_on(phase::run(plan, &self.shared))
    }

    /// The agent phase on `read_only`, then its diff.
    fn agent(
        &self,
        policy: Policy,
        command: &[String],
        read_only: Vec<PathBuf>,
    ) -> Result<(Outcome, DiffResult)> {
        let plan = Plan {
            name: "agent",
            policy,
            command: agent_command(command),
            env: self.env.clone(),
            files: self.files.clone(),
            binds: Vec::new(),
            read_only: read_only.clone(),
            writable: self.layers.prepare("agent")?,
            timeout: self.environment.limits.agent_timeout,
        };
        let (outcome, _) = self.runtime.block_on(phase::run(plan, &self.shared))?;
        let lower: Vec<PathBuf> = read_only
            .into_iter()
            .chain([self.environment.base.clone()])
            .collect();
        let summary = diff::write_agent_diff(
            &DiffLayers {
                lower: &lower,
                upper: &self.layers.upper("agent"),
            },
            &self.workspace,
            &self.shared.out.join("diff.patch"),
        )?;
        Ok((
            outcome,
            DiffResult {
                path: "diff.patch",
                files_changed: summary.files_changed,
                bytes: summary.bytes,
            },
        ))
    }
}

/// Where maintenance finds the host's mirror of the repo.
const MIRROR_INSIDE: &str = "/run/tollgate/origin.git";

fn short(key: &str) -> &str {
    key.get(..12).unwrap_or(key)
}

fn round_secs(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(d.as_secs())
}

fn revision(args: &RunArgs) -> Revision {
    match (&args.branch, &args.commit) {
        (Some(branch), _) => Revision::Branch(branch.clone()),
        (None, Some(commit)) => Revision::Commit(commit.clone()),
        (None, None) => Revision::Default,
    }
}

/// A phase's policy: a file, or inline in the environment file.
fn phase_policy(policy: &PhasePolicy, intercepting: bool) -> Result<Policy> {
    let policy = match policy {
        // A file, never a built-in name: `{file: off}` must not quietly
        // mean the built-in policy when ./off is missing.
        PhasePolicy::File(path) if !path.is_file() => bail!(
            "policy file {} (from the environment's `internet`): no such file; give an existing path (relative to the environment file)",
            path.display()
        ),
        PhasePolicy::File(path) => Policy::load(&path.to_string_lossy())?,
        PhasePolicy::Inline { origin, yaml } => Policy::from_yaml(origin, yaml)?,
    };
    policy.check_enforceable(intercepting)?;
    Ok(policy)
}

/// The environment's setup script, or the automatic one from lock files.
fn setup_script(environment: &Environment, workspace: &Path) -> Result<String> {
    if let Some(script) = &environment.setup {
        return Ok(script.clone());
    }
    let auto = AutoSetup::detect(workspace)
        .with_context(|| format!("cannot look for lock files in {}", workspace.display()))?;
    eprintln!(
        "tollgate: no `setup` in the environment: {}",
        auto.summary()
    );
    Ok(auto.script())
}

/// Every phase's variables: the sandbox's (proxy, CA), then the
/// environment file's `env`.
fn phase_environment(environment: &Environment, intercepting: bool) -> Vec<(String, String)> {
    let mut env = exec::sandbox_environment(intercepting);
    env.extend(environment.env.iter().cloned());
    env
}

fn with_secrets(env: &[(String, String)], secrets: &[Secret]) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    env.extend(
        secrets
            .iter()
            .map(|s| (s.name.clone(), s.value().to_owned())),
    );
    env
}

/// The agent's command, started after ~/.bashrc was read, as setup was.
fn agent_command(agent: &[String]) -> Vec<String> {
    let mut command = vec![
        "bash".to_owned(),
        "-c".to_owned(),
        format!("{READ_BASHRC}; exec \"$@\""),
        "tollgate-agent".to_owned(),
    ];
    command.extend(agent.iter().cloned());
    command
}

/// Secret values as they may appear in outputs: raw, and escaped as JSON
/// strings are (the audit log).
fn redactions(secrets: &[Secret]) -> Vec<Vec<u8>> {
    let mut values = Vec::new();
    for secret in secrets {
        values.push(secret.value().as_bytes().to_vec());
        if let Ok(json) = serde_json::to_string(secret.value()) {
            let escaped = json.trim_matches('"').as_bytes().to_vec();
            if escaped != secret.value().as_bytes() {
                values.push(escaped);
            }
        }
    }
    values
}

/// Files setup left with a secret value in them: named, never shown.
fn secret_warnings(upper: &Path, secrets: &[Secret]) -> Vec<String> {
    if secrets.is_empty() {
        return Vec::new();
    }
    let values: Vec<(String, Vec<u8>)> = secrets
        .iter()
        .map(|s| (s.name.clone(), s.value().as_bytes().to_vec()))
        .collect();
    let report = secrets::scan_tree(upper, &values);
    let warnings: Vec<String> = report
        .findings
        .iter()
        .map(|f| {
            format!(
                "/{} contains the value of secret {}: the agent can read it (setup wrote it)",
                f.path.display(),
                f.secret
            )
        })
        .collect();
    for warning in &warnings {
        eprintln!("tollgate: warning: {warning}");
    }
    warnings
}

fn phase_failure(setup: &Outcome) -> String {
    let why = if setup.interrupted {
        "was interrupted".to_owned()
    } else if setup.timed_out {
        "ran past limits.setup_timeout".to_owned()
    } else if setup.oom_killed {
        format!(
            "exited with {} after running out of memory (limits.memory)",
            setup.exit_code
        )
    } else {
        format!("exited with {}", setup.exit_code)
    };
    format!(
        "tollgate: {} {why}: the agent did not run; see {} (set -e: the first failing command ends the script)",
        setup.name, setup.log
    )
}

fn print_summary(result: &RunResult, out: &Path) {
    for phase in &result.phases {
        eprintln!(
            "tollgate: {}: exit {} in {:.1}s",
            phase.name,
            phase.exit_code,
            phase.duration_ms as f64 / 1000.0
        );
    }
    if let Some(diff) = &result.diff {
        eprintln!("tollgate: diff: {} file(s) changed", diff.files_changed);
    }
    eprintln!("tollgate: outputs in {}", out.display());
}
