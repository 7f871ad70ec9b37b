//! `tollgate run` as a library: check out a repo on the host, run the setup
//! phase (or, on a cache hit, maintenance), then the agent phase, each a
//! fresh enclave over the same layers with its own policy, and hand back
//! result.json, diff.patch, audit.jsonl and a log per phase.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tollgate_proxy::audit::{AuditLog, AuditTarget};
use tollgate_proxy::metrics::Metrics;
use tollgate_proxy::policy::Policy;
use tollgate_sandbox::cgroup;
use tollgate_sandbox::{Bind, NewFile};

use crate::autosetup::AutoSetup;
use crate::cache::{self, BuildLock, Meta, Snapshot, SnapshotStore};
use crate::checkout::{self, CheckedOut, Revision, Target};
use crate::diff::{self, DiffLayers};
use crate::environment::{Environment, PhasePolicy, Secret, SecretSource};
use crate::error::RunError;
use crate::events::{Event, EventSink};
use crate::layers::{self, RunLayers};
use crate::output;
use crate::phase::{self, Plan, Shared};
use crate::result::{CacheResult, DiffResult, PhaseOutcome, RunResult};
use crate::secrets;
use crate::state::StateDir;
use crate::trust::LoadedCa;

/// Where the setup script is put inside: /tmp is a per-phase tmpfs, so the
/// script is not part of the layer the agent sees.
const SETUP_SCRIPT: &str = "/tmp/tollgate/setup.sh";
/// Every phase starts by reading ~/.bashrc, once (see README, "Environment
/// files"): what setup appends there reaches the agent; `export` does not.
/// (Not BASH_ENV: every bash script would re-read it, and a .bashrc that
/// runs a bash script, such as pyenv's, would recurse without end.)
const READ_BASHRC: &str = "if [ -f ~/.bashrc ]; then . ~/.bashrc; fi";
/// Where maintenance finds the host's mirror of the repo.
const MIRROR_INSIDE: &str = "/run/tollgate/origin.git";

/// One run, as a CLI or a service asks for it.
pub struct RunRequest {
    pub environment: Environment,
    /// A local path or a URL, cloned on the host.
    pub repo: String,
    pub revision: Revision,
    /// New or empty; None: a new directory under ./tollgate-out/.
    pub out: Option<PathBuf>,
    /// The agent's command; empty: the run stops after setup.
    pub agent: Vec<String>,
    /// The CA to intercept with, if any.
    pub trust: Option<LoadedCa>,
    pub state: StateDir,
    /// Cancelling stops the running phase (SIGTERM, SIGKILL 10 s later);
    /// the run then ends as a failed or interrupted one.
    pub cancel: CancellationToken,
    /// Where each phase's proxy counts what it does (`--metrics`).
    pub metrics: Option<Arc<Metrics>>,
}

/// Runs `request` to its end, reporting through `events`. Needs root.
/// Returns the result also written to `result.json` in the output
/// directory; its `exit_code` is the agent's, or the failed setup's.
pub fn run(request: RunRequest, events: EventSink) -> Result<RunResult, RunError> {
    tollgate_sandbox::preflight()?;
    let RunRequest {
        environment,
        repo,
        revision,
        out,
        agent,
        trust,
        state,
        cancel,
        metrics,
    } = request;
    let intercepting = trust.is_some();
    // Both policies load before anything starts.
    let loading = Instant::now();
    let setup_policy = phase_policy(&environment.internet.setup, intercepting)?;
    let agent_policy = phase_policy(&environment.internet.agent, intercepting)?;
    if let Some(metrics) = &metrics {
        metrics.policy_loaded(loading.elapsed());
    }
    let secrets = environment
        .resolve_secrets(|name| std::env::var(name).ok())
        .map_err(|source| RunError::Secret {
            path: environment.path.clone(),
            source,
        })?;
    checkout::validate(&revision)?;
    let source = checkout::normalise_source(&repo)?;
    let name = checkout::repo_name(&source)?;
    let key = cache::key(&environment, &source, &secrets)?;
    let out = output::create_out_dir(out.as_deref(), &environment.name)?;
    let layers = RunLayers::create(&state.runs_dir())?;
    layers.record_out_dir(&out)?;
    let audit = AuditLog::open(AuditTarget::File(out.join("audit.jsonl")))?
        .redacted(secret_redaction(&secrets))
        .observed(decisions_to(events.clone()));
    if let Some(metrics) = &metrics {
        metrics.watch_audit_log(&audit);
    }
    let shared = Shared {
        base: environment.base.clone(),
        masks: hidden_from_phases(&state, trust.as_ref(), &environment),
        workdir: checkout::workspace_in_sandbox(&name),
        trust,
        audit,
        limits: cgroup::Limits {
            memory: environment.limits.memory,
            pids: environment.limits.pids,
        },
        tmpfs_size: Some(
            environment
                .limits
                .tmpfs
                .unwrap_or(tollgate_sandbox::DEFAULT_TMPFS_SIZE),
        ),
        run_id: layers.id().to_owned(),
        out: out.clone(),
        redact: redactions(&secrets),
        events,
        cancel,
        metrics,
    };
    let run = Run {
        workspace: Path::new("workspace").join(&name),
        env: environment.env.clone(),
        environment,
        secrets,
        source,
        name,
        layers,
        shared,
        setup_policy,
        runtime: tokio::runtime::Runtime::new().map_err(RunError::Runtime)?,
    };
    let store = SnapshotStore::new(state.cache_dir());
    let prepared = checkout::mirror(&run.source, &revision, &run.layers.mirror())
        .map_err(RunError::from)
        .and_then(|target| run.prepare(&store, &key, &target));
    let (status, prepared) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            output::discard_out_dir(&out);
            return Err(e);
        }
    };
    run.finish(prepared, status, key, agent_policy, &agent)
}

/// What the phases of one run share, set up before the first.
struct Run {
    environment: Environment,
    secrets: Vec<Secret>,
    source: String,
    name: String,
    workspace: PathBuf,
    layers: RunLayers,
    shared: Shared,
    /// The variables of every phase: the environment file's `env`.
    env: Vec<(String, String)>,
    setup_policy: Arc<Policy>,
    runtime: tokio::runtime::Runtime,
}

/// The first phase's result and what the agent needs.
struct Preparation {
    phase: PhaseOutcome,
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
    fn notice(&self, text: String) {
        (self.shared.events)(Event::Notice(text));
    }

    fn warn(&self, text: String) {
        (self.shared.events)(Event::Warning(text));
    }

    /// Setup, or on a cache hit maintenance; returns the cache status.
    fn prepare(
        &self,
        store: &SnapshotStore,
        key: &str,
        revision: &Target,
    ) -> Result<(&'static str, Preparation), RunError> {
        let env_name = &self.environment.name;
        let ttl = self.environment.cache.ttl;
        if !self.environment.cache.enabled() {
            self.notice("cache: disabled (cache.ttl: 0): running setup".to_owned());
            return Ok(("disabled", self.setup(revision, None)?));
        }
        if let Some(snapshot) = store.lookup(env_name, key, ttl)? {
            self.notice(format!(
                "cache: hit (key {}, made {} ago): resuming it; setup skipped",
                short(key),
                humantime::format_duration(round_secs(snapshot.meta.age()))
            ));
            return Ok(("hit", self.maintenance(revision, snapshot)?));
        }
        let build = store.try_build(env_name, key)?;
        match &build {
            Some(_) => self.notice(format!(
                "cache: miss (key {}): running setup; its result is cached for {}",
                short(key),
                humantime::format_duration(ttl)
            )),
            None => self.notice(format!(
                "cache: miss (key {}), and another run is building this snapshot: this run sets up without caching",
                short(key)
            )),
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
    ) -> Result<Preparation, RunError> {
        let setup_dir = self.layers.prepare("setup")?;
        let upper = self.layers.upper("setup");
        let checked_out = self.check_out(revision, &upper.join(&self.workspace))?;
        let script = self.setup_script(&upper.join(&self.workspace))?;
        let (phase, mut warnings) =
            self.run_script("setup", &script, setup_dir, Vec::new(), Vec::new())?;
        warnings.extend(self.secret_warnings(&upper));
        let workspace = Path::new("/").join(&self.workspace);
        let mount_points = [Path::new(MIRROR_INSIDE), &workspace];
        if let Some((path, what)) = layers::replaced_mount_point(&upper, &mount_points) {
            return Err(RunError::MountPointReplaced { path, what });
        }
        let mut ready = Ready {
            checked_out,
            read_only: vec![upper.clone()],
            _snapshot: None,
        };
        if let (true, Some((store, lock, key))) = (phase.succeeded(), publish) {
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
                    self.notice(format!("cache: published snapshot {}", short(key)));
                    ready.read_only = vec![snapshot.layer.clone()];
                    ready._snapshot = Some(snapshot);
                }
                None => self.notice(
                    "cache: an expired snapshot of this key is still in use: not replaced; this run continues uncached"
                        .to_owned(),
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
    fn maintenance(&self, target: &Target, snapshot: Snapshot) -> Result<Preparation, RunError> {
        let dir = self.layers.prepare("maintenance")?;
        let checked_out = self.checked_out(target);
        self.notice(format!(
            "checking out {}{} in /workspace/{} (maintenance)",
            target.commit,
            branch_suffix(target),
            self.name
        ));
        let script = format!(
            "{}\n{}",
            checkout::update_script(target, Path::new(MIRROR_INSIDE)),
            self.environment.maintenance.clone().unwrap_or_default()
        );
        let binds = vec![Bind {
            host: self.layers.mirror(),
            sandbox: PathBuf::from(MIRROR_INSIDE),
            read_only: true,
            tollgates_own: true,
        }];
        let read_only = vec![snapshot.layer.clone()];
        let (phase, mut warnings) =
            self.run_script("maintenance", &script, dir, read_only, binds)?;
        warnings.extend(self.secret_warnings(&self.layers.upper("maintenance")));
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

    /// The agent (when setup succeeded and there is one), then result.json.
    fn finish(
        self,
        prepared: Preparation,
        status: &'static str,
        key: String,
        agent_policy: Arc<Policy>,
        agent: &[String],
    ) -> Result<RunResult, RunError> {
        let mut warnings = prepared.warnings;
        let first = prepared.phase;
        let mut exit_code = first.exit_code;
        let mut diff_result = None;
        let mut agent_outcome = None;
        if !first.succeeded() {
            self.notice(phase_failure(&first));
            exit_code = if exit_code == 0 { 1 } else { exit_code };
        } else if agent.is_empty() {
            self.notice(format!(
                "no agent command given (after --): the run stops after {}",
                first.name
            ));
        } else {
            let (outcome, diff) = self.agent(agent_policy, agent, prepared.ready.read_only)?;
            exit_code = outcome.exit_code;
            agent_outcome = Some(outcome);
            diff_result = Some(diff);
        }
        let out = &self.shared.out;
        self.shared.audit.sync(Duration::from_secs(5));
        // The audit log was redacted as it was written; the diff is the
        // agent's files, which setup may have left a value in.
        if output::redact_file(&out.join("diff.patch"), &self.shared.redact)? {
            let warning = "diff.patch: contained a secret value, now replaced by ***".to_owned();
            self.warn(warning.clone());
            warnings.push(warning);
        }
        let result = RunResult {
            env: self.environment.name.clone(),
            repo: prepared.ready.checked_out,
            cache: CacheResult { status, key },
            phases: [first].into_iter().chain(agent_outcome).collect(),
            diff: diff_result,
            exit_code,
            warnings,
            out: out.clone(),
        };
        result.write(out)?;
        Ok(result)
    }

    /// Clones the host's mirror at `target` into `dest` (in the setup
    /// layer), with `origin` pointing at the real source.
    fn check_out(&self, target: &Target, dest: &Path) -> Result<CheckedOut, RunError> {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(RunError::io(format!("cannot create {}", parent.display())))?;
        }
        let revision = match &target.branch {
            Some(branch) => Revision::Branch(branch.clone()),
            None => Revision::Commit(target.commit.clone()),
        };
        let mirror = self.layers.mirror();
        checkout::clone_into(&mirror.to_string_lossy(), &revision, dest)?;
        checkout::set_origin(dest, &self.source)?;
        self.notice(format!(
            "checked out {} at {}{} into /workspace/{}",
            self.source,
            target.commit,
            branch_suffix(target),
            self.name
        ));
        Ok(self.checked_out(target))
    }

    fn checked_out(&self, target: &Target) -> CheckedOut {
        CheckedOut {
            source: self.source.clone(),
            name: self.name.clone(),
            commit: target.commit.clone(),
            branch: target.branch.clone(),
        }
    }

    /// The environment's setup script, or the automatic one from lock files.
    fn setup_script(&self, workspace: &Path) -> Result<String, RunError> {
        if let Some(script) = &self.environment.setup {
            return Ok(script.clone());
        }
        let auto = AutoSetup::detect(workspace).map_err(RunError::io(format!(
            "cannot look for lock files in {}",
            workspace.display()
        )))?;
        self.notice(format!("no `setup` in the environment: {}", auto.summary()));
        Ok(auto.script())
    }

    /// Runs `script` with bash -e, env and secrets, and the setup policy.
    fn run_script(
        &self,
        name: &'static str,
        script: &str,
        writable: PathBuf,
        read_only: Vec<PathBuf>,
        binds: Vec<Bind>,
    ) -> Result<(PhaseOutcome, Vec<String>), RunError> {
        let plan = Plan {
            name,
            policy: self.setup_policy.clone(),
            command: vec![
                "bash".into(),
                "-c".into(),
                format!("{READ_BASHRC}; exec bash -e {SETUP_SCRIPT}"),
            ],
            env: with_secrets(&self.env, &self.secrets),
            files: vec![NewFile::new(SETUP_SCRIPT, script)],
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
        policy: Arc<Policy>,
        command: &[String],
        read_only: Vec<PathBuf>,
    ) -> Result<(PhaseOutcome, DiffResult), RunError> {
        let plan = Plan {
            name: "agent",
            policy,
            command: agent_command(command),
            env: self.env.clone(),
            files: Vec::new(),
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

    /// Files setup left with a secret value in them: named, never shown.
    fn secret_warnings(&self, upper: &Path) -> Vec<String> {
        if self.secrets.is_empty() {
            return Vec::new();
        }
        let values: Vec<(String, Vec<u8>)> = self
            .secrets
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
            self.warn(warning.clone());
        }
        warnings
    }
}

fn short(key: &str) -> &str {
    key.get(..12).unwrap_or(key)
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

fn branch_suffix(target: &Target) -> String {
    target
        .branch
        .as_deref()
        .map(|b| format!(" ({b})"))
        .unwrap_or_default()
}

/// A phase's policy: a file, or inline in the environment file (compiled
/// when the environment was read).
fn phase_policy(policy: &PhasePolicy, intercepting: bool) -> Result<Arc<Policy>, RunError> {
    let policy = match policy {
        // A file, never a built-in name: `{file: off}` must not quietly
        // mean the built-in policy when ./off is missing.
        PhasePolicy::File(path) if !path.is_file() => {
            return Err(RunError::PolicyFileMissing(path.clone()))
        }
        PhasePolicy::File(path) => Arc::new(Policy::load(&path.to_string_lossy())?),
        PhasePolicy::Inline(policy) => policy.clone(),
    };
    policy.check_enforceable(intercepting)?;
    Ok(policy)
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

/// What no phase may see: tollgate's state (the CA key, snapshots, the
/// layers of runs), this run's outputs and those of every run in progress
/// (setup's logs and audit records), and every file a secret is read from.
fn hidden_from_phases(
    state: &StateDir,
    trust: Option<&LoadedCa>,
    environment: &Environment,
) -> Vec<PathBuf> {
    let mut hidden = state.private_dirs(trust.map(|ca| ca.dir.as_path()));
    hidden.extend(state.out_dirs_in_progress());
    hidden.extend(
        environment
            .secrets
            .iter()
            .filter_map(|(_, source)| match source {
                SecretSource::File(path) => std::fs::canonicalize(path).ok(),
                SecretSource::Env(_) => None,
            }),
    );
    hidden
}

/// Replaces secret values with `***` in what clients send (the method,
/// host and path of audit records).
fn secret_redaction(secrets: &[Secret]) -> tollgate_proxy::audit::Redact {
    let values: Vec<String> = secrets.iter().map(|s| s.value().to_owned()).collect();
    Arc::new(move |text: &str| {
        if !values.iter().any(|value| text.contains(value.as_str())) {
            return None;
        }
        let mut redactor = secrets::Redactor::new(values.iter().map(|v| v.as_bytes().to_vec()));
        let mut clean = redactor.push(text.as_bytes());
        clean.extend(redactor.finish());
        Some(String::from_utf8_lossy(&clean).into_owned())
    })
}

/// Sends every audit record to `events` as it is written.
fn decisions_to(events: EventSink) -> tollgate_proxy::audit::Observer {
    Arc::new(move |record| events(Event::Decision(Box::new(record.clone()))))
}

fn phase_failure(setup: &PhaseOutcome) -> String {
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
        "{} {why}: the agent did not run; see {} (set -e: the first failing command ends the script)",
        setup.name, setup.log
    )
}
