//! One phase of a run: a fresh sandbox over the run's layers, its own proxy
//! with the phase's policy, its own cgroup, a timeout, and its output
//! streamed to the terminal and the phase's log.
//!
//! Everything a phase started ends with it: PID 1's exit takes the PID
//! namespace (every process) with it, the cgroup is emptied and removed,
//! and the phase's proxy is shut down with no grace period, which closes
//! every connection and tunnel the phase opened.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use tollgate_proxy::audit::AuditLog;
use tollgate_proxy::policy::Policy;
use tollgate_proxy::{Interception, Listener, Proxy, ProxyConfig};
use tollgate_sandbox::cgroup::{self, PhaseCgroup};
use tollgate_sandbox::{Bind, NewFile, Output, Sandbox, Spec};

use super::output::PhaseStream;
use crate::cmd::exec::SANDBOX_PROXY;

/// Exit status of a phase stopped by its timeout (as timeout(1) reports).
const TIMED_OUT: i32 = 124;
/// Time a timed-out or interrupted phase has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What differs between phases.
pub struct Plan {
    pub name: &'static str,
    pub policy: Policy,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub files: Vec<NewFile>,
    pub binds: Vec<Bind>,
    /// Read-only layers above the base, topmost first.
    pub read_only: Vec<PathBuf>,
    /// Directory of this phase's writable layer.
    pub writable: PathBuf,
    pub timeout: Option<Duration>,
}

/// What every phase of a run shares.
pub struct Shared {
    pub base: PathBuf,
    pub masks: Vec<PathBuf>,
    pub workdir: PathBuf,
    pub interception: Option<Interception>,
    pub audit: AuditLog,
    pub limits: cgroup::Limits,
    pub run_id: String,
    pub out: PathBuf,
    /// Byte strings no output may show (secret values).
    pub redact: Vec<Vec<u8>>,
}

/// How a phase ended, as result.json reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub name: &'static str,
    pub exit_code: i32,
    pub duration_ms: u64,
    pub timed_out: bool,
    pub oom_killed: bool,
    /// Stopped because tollgate was asked to stop (SIGINT/SIGTERM).
    pub interrupted: bool,
    pub log: String,
}

impl Outcome {
    pub fn succeeded(&self) -> bool {
        self.exit_code == 0
    }
}

/// Why the wait for a phase ended early.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    Timeout,
    Interrupt,
}

/// Runs one phase to its end. Also returns a warning for each limit the
/// host cannot enforce (printed here, as the phase starts).
pub async fn run(plan: Plan, shared: &Shared) -> Result<(Outcome, Vec<String>)> {
    let (cgroup, report) =
        PhaseCgroup::create(&format!("{}-{}", shared.run_id, plan.name), &shared.limits)
            .with_context(|| format!("{} phase: cannot set up its cgroup", plan.name))?;
    let warnings = report.warnings();
    for warning in &warnings {
        eprintln!("tollgate: warning: {warning}");
    }
    let spec = Spec {
        base: shared.base.clone(),
        layers: plan.read_only.clone(),
        writable: Some(plan.writable.clone()),
        scratch: PathBuf::new(),
        cgroups: cgroup.procs_files(),
        binds: plan.binds.clone(),
        masks: shared.masks.clone(),
        files: Vec::new(),
        hostname: "tollgate".into(),
        workdir: shared.workdir.clone(),
        env: plan.env.clone(),
        command: plan.command.clone(),
    };
    let log_name = format!("{}.log", plan.name);
    let (read, write) = nix::unistd::pipe().context("cannot create the phase's output pipe")?;
    let started = Instant::now();
    let stream = PhaseStream::start(
        read,
        plan.name,
        &shared.out.join(&log_name),
        &shared.redact,
        started,
    )?;
    let listen = SANDBOX_PROXY.parse().context("proxy address")?;
    let (sandbox, listener) = Sandbox::start_with(spec, plan.files, listen, Output::Pipe(write))?;
    let config = ProxyConfig {
        phase: Some(Arc::from(plan.name)),
        interception: shared.interception.clone(),
        shutdown_grace: Duration::ZERO,
        ..ProxyConfig::default()
    };
    let proxy = Proxy::new(plan.policy, shared.audit.clone(), config);
    tokio::spawn(Arc::clone(&proxy).serve(Listener::from_std(listener)?));
    let (exit_code, stop) = wait(sandbox, plan.timeout).await?;
    proxy.shutdown().await;
    let oom_killed = cgroup.oom_killed();
    // Emptying and removing the cgroup may take a moment of retries.
    tokio::task::spawn_blocking(move || drop(cgroup))
        .await
        .context("cgroup cleanup")?;
    let duration = started.elapsed();
    tokio::task::spawn_blocking(move || stream.finish())
        .await
        .context("phase output")??;
    let outcome = Outcome {
        name: plan.name,
        exit_code: if stop == Some(Stop::Timeout) {
            TIMED_OUT
        } else {
            exit_code
        },
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        timed_out: stop == Some(Stop::Timeout),
        oom_killed,
        interrupted: stop == Some(Stop::Interrupt),
        log: log_name,
    };
    Ok((outcome, warnings))
}

/// Waits for the sandbox's command; past the timeout, or when tollgate
/// gets SIGINT/SIGTERM, asks it to stop and then kills it.
async fn wait(sandbox: Sandbox, timeout: Option<Duration>) -> Result<(i32, Option<Stop>)> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let init = sandbox.init();
    let mut waiting = tokio::task::spawn_blocking(move || sandbox.wait());
    let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::MAX));
    tokio::pin!(deadline);
    let stop = tokio::select! {
        result = &mut waiting => return Ok((result.context("sandbox waiter")??, None)),
        () = &mut deadline, if timeout.is_some() => Stop::Timeout,
        _ = interrupt.recv() => Stop::Interrupt,
        _ = terminate.recv() => Stop::Interrupt,
    };
    // SIGTERM to the command (through init); SIGKILL to the whole phase if
    // it is still there after the grace period. Init stays our unreaped
    // child until `waiting` ends, so its PID cannot be reused meanwhile.
    tokio::task::spawn_blocking(move || init.signal(Signal::SIGTERM));
    let code = match tokio::time::timeout(STOP_GRACE, &mut waiting).await {
        Ok(result) => result.context("sandbox waiter")??,
        Err(_) => {
            init.kill();
            waiting.await.context("sandbox waiter")??
        }
    };
    Ok((code, Some(stop)))
}
