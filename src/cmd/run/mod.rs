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
use tollgate_sandbox::cache;
use tollgate_sandbox::cgroup;
use tollgate_sandbox::checkout::{self, CheckedOut, Revision};
use tollgate_sandbox::diff::{self, DiffLayers};
use tollgate_sandbox::environment::{Environment, PhasePolicy, Secret};
use tollgate_sandbox::layers::RunLayers;
use tollgate_sandbox::secrets;
use tollgate_sandbox::NewFile;

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

pub fn run(args: RunArgs, state: &StateDir) -> Result<ExitCode> {
    tollgate_sandbox::launch::preflight()?;
    let environment = Environment::load(&args.environment)?;
    let loaded = ca::interception(args.ca_dir.as_deref(), &args.upstream_ca, state)?;
    let intercepting = loaded.is_some();
    let setup_policy = phase_policy(&environment.internet.setup, intercepting)?;
    let agent_policy = phase_policy(&environment.internet.agent, intercepting)?;
    let secrets = environment.resolve_secrets(|name| std::env::var(name).ok())?;
    let revision = revision(&args);
    checkout::validate(&revision)?;
    let source = checkout::normalise_source(&args.repo)?;
    let name = checkout::repo_name(&source)?;
    let key = cache::key(&environment, &source, &secrets)?;
    let out = output::create_out_dir(args.out.as_deref(), &environment.name)?;

    let layers = RunLayers::create(&state.runs_dir())?;
    let setup_dir = layers.prepare("setup")?;
    let workspace = Path::new("workspace").join(&name);
    let checked_out = check_out(&source, &revision, &layers.upper("setup").join(&workspace))?;
    let script = setup_script(&environment, &layers.upper("setup").join(&workspace))?;

    let limits = cgroup::Limits {
        memory: environment.limits.memory,
        pids: environment.limits.pids,
    };
    let redact = redactions(&secrets);
    let shared = Shared {
        base: environment.base.clone(),
        masks: exec::private_dirs(args.ca_dir.as_deref(), state),
        workdir: checkout::workspace_in_sandbox(&name),
        interception: loaded.as_ref().map(|ca| ca.interception.clone()),
        audit: AuditLog::open(AuditTarget::File(out.join("audit.jsonl")))?,
        limits,
        run_id: layers.id().to_owned(),
        out: out.clone(),
        redact,
    };
    let files = exec::network_files(loaded.as_ref().map(|ca| ca.cert_pem.as_str()))?;
    let env = phase_environment(&environment, intercepting);
    crate::cmd::proxy::raise_open_file_limit();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;

    let mut setup_files = files.clone();
    setup_files.push(NewFile {
        sandbox: PathBuf::from(SETUP_SCRIPT),
        bytes: script.into_bytes(),
    });
    let setup = Plan {
        name: "setup",
        policy: setup_policy,
        command: vec![
            "bash".into(),
            "-c".into(),
            format!("{READ_BASHRC}; exec bash -e {SETUP_SCRIPT}"),
        ],
        env: with_secrets(&env, &secrets),
        files: setup_files,
        read_only: Vec::new(),
        writable: setup_dir,
        timeout: environment.limits.setup_timeout,
    };
    let (setup, mut warnings) = runtime.block_on(phase::run(setup, &shared))?;
    let mut phases = vec![setup];
    warnings.extend(secret_warnings(&layers.upper("setup"), &secrets));

    let mut diff_result = None;
    let mut exit_code = phases[0].exit_code;
    if !phases[0].succeeded() || phases[0].interrupted {
        eprintln!("{}", setup_failure(&phases[0]));
        exit_code = if exit_code == 0 { 1 } else { exit_code };
    } else if args.agent.is_empty() {
        eprintln!("tollgate: no agent command given (after --): the run stops after setup");
    } else {
        let agent_dir = layers.prepare("agent")?;
        let read_only = vec![layers.upper("setup")];
        let agent = Plan {
            name: "agent",
            policy: agent_policy,
            command: agent_command(&args.agent),
            env: env.clone(),
            files,
            read_only: read_only.clone(),
            writable: agent_dir,
            timeout: environment.limits.agent_timeout,
        };
        let (outcome, _) = runtime.block_on(phase::run(agent, &shared))?;
        exit_code = outcome.exit_code;
        phases.push(outcome);
        let lower: Vec<PathBuf> = read_only
            .into_iter()
            .chain([environment.base.clone()])
            .collect();
        let summary = diff::write_agent_diff(
            &DiffLayers {
                lower: &lower,
                upper: &layers.upper("agent"),
            },
            &workspace,
            &out.join("diff.patch"),
        )?;
        diff_result = Some(DiffResult {
            path: "diff.patch",
            files_changed: summary.files_changed,
            bytes: summary.bytes,
        });
    }
    shared.audit.sync(std::time::Duration::from_secs(5));
    for file in ["audit.jsonl", "diff.patch"] {
        if output::redact_file(&out.join(file), &shared.redact)? {
            let warning = format!("{file}: contained a secret value, now replaced by ***");
            eprintln!("tollgate: warning: {warning}");
            warnings.push(warning);
        }
    }
    let result = RunResult {
        env: environment.name.clone(),
        repo: checked_out,
        cache: CacheResult {
            status: "disabled",
            key,
        },
        phases,
        diff: diff_result,
        exit_code,
        warnings,
    };
    result.write(&out)?;
    print_summary(&result, &out);
    Ok(ExitCode::from(u8::try_from(exit_code).unwrap_or(1)))
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

fn check_out(source: &str, revision: &Revision, dest: &Path) -> Result<CheckedOut> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let checked_out = checkout::clone_into(source, revision, dest)?;
    eprintln!(
        "tollgate: checked out {} at {}{} into /workspace/{}",
        checked_out.source,
        checked_out.commit,
        checked_out
            .branch
            .as_deref()
            .map(|b| format!(" ({b})"))
            .unwrap_or_default(),
        checked_out.name
    );
    Ok(checked_out)
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

fn setup_failure(setup: &Outcome) -> String {
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
        "tollgate: setup {why}: the agent did not run; see {} (set -e: the first failing command ends the script)",
        setup.log
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
