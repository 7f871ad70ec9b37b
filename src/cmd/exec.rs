//! `tollgate exec`: one command in an enclave — a sandbox whose only route
//! out is the proxy, which runs in this process and listens inside it.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tollgate_proxy::audit::{AuditLog, AuditTarget};
use tollgate_run::enclave::{Afterwards, Enclave, HostSignals, Limits, Network, Supervision};
use tollgate_run::state::StateDir;
use tollgate_run::trust::load_ca;
use tollgate_sandbox::cgroup;
use tollgate_sandbox::ids::IdMapping;
use tollgate_sandbox::{Bind, Output, Sandbox, Spec};

use crate::cli::ExecArgs;
use crate::cmd::proxy;

/// How long in-flight requests may finish once the command has exited.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub fn run(args: ExecArgs, state: &StateDir) -> Result<ExitCode> {
    // The sandbox's stage starts first: it makes the network namespace
    // while we read the CA; then the sandbox builds while we load the
    // policy and start the proxy's runtime. Its command runs only once the
    // proxy serves.
    let stage = Sandbox::prepare(Output::Inherit)?;
    let trust = load_ca(args.ca_dir.as_deref(), &args.upstream_ca, state)?;
    let spec = sandbox_spec(&args)?.masks(state.private_dirs(args.ca_dir.as_deref()));
    warn_about_unwritable_binds(&spec.binds);
    let limits = Limits {
        name: &format!("exec-{}", std::process::id()),
        limits: cgroup::Limits {
            memory: args.memory,
            pids: args.pids,
        },
    };
    let building = Enclave::build(stage, spec, trust.as_ref(), limits)?;
    let loading = Instant::now();
    let policy = proxy::load_enforceable(&args.policy, trust.is_some())?;
    let loaded = loading.elapsed();
    let audit = args.audit_fail.apply(AuditLog::open(match &args.audit_log {
        Some(path) => AuditTarget::parse(path),
        None => AuditTarget::Discard,
    })?);
    let metrics = match &args.metrics {
        Some(addr) => Some(proxy::serve_metrics(addr)?),
        None => None,
    };
    if let Some(metrics) = &metrics {
        metrics.watch_audit_log(&audit);
        metrics.policy_loaded(loaded);
    }
    proxy::raise_open_file_limit();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let ended = runtime.block_on(async {
        // Handlers before the command runs: a signal that arrives from now
        // on is held for it, instead of killing tollgate and the sandbox.
        let signals = HostSignals::install()?;
        let network = Network {
            policy: Arc::new(policy),
            audit,
            phase: "exec",
            shutdown_grace: SHUTDOWN_GRACE,
            metrics,
        };
        let enclave = building.serve(network)?;
        for warning in enclave.warnings() {
            say!("tollgate: warning: {warning}");
        }
        enclave
            .supervise(Supervision::ForwardSignals(signals), Afterwards::Exit)
            .await
            .map_err(anyhow::Error::from)
    })?;
    // The proxy is shut down and the audit log synced: nothing on the
    // runtime is worth even dropping (0.2 ms of every exec); its threads
    // end with the process, which ends now.
    std::mem::forget(runtime);
    Ok(ExitCode::from(u8::try_from(ended.code).unwrap_or(1)))
}

/// The sandbox's spec from the command line.
fn sandbox_spec(args: &ExecArgs) -> Result<Spec> {
    let mut binds = Vec::new();
    for text in &args.bind {
        binds.push(Bind::parse(text, false)?);
    }
    for text in &args.ro_bind {
        binds.push(Bind::parse(text, true)?);
    }
    let mut env = Vec::new();
    for pair in &args.env {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--env {pair}: expected K=V");
        };
        env.push((key.to_owned(), value.to_owned()));
    }
    Ok(Spec::new(args.base.clone(), args.command.clone())
        .binds(binds)
        .env(env)
        .workdir(args.workdir.clone())
        .tmpfs_size(Some(args.tmpfs_size)))
}

/// A writable bind the sandbox's root (an unprivileged host uid) cannot
/// write to is almost certainly a mistake: say so before it fails inside.
fn warn_about_unwritable_binds(binds: &[Bind]) {
    use std::os::unix::fs::MetadataExt;
    let root = IdMapping::for_this_process().host_root_uid();
    for bind in binds.iter().filter(|b| !b.read_only) {
        let Ok(meta) = std::fs::metadata(&bind.host) else {
            continue;
        };
        if meta.uid() != root && meta.mode() & 0o002 == 0 {
            say!(
                "tollgate: warning: --bind {}: the sandbox's root (host uid {root}) cannot write there; \
                 chown it to {root} or make it world-writable if the command should",
                bind.host.display()
            );
        }
    }
}
