//! One phase of a run: an enclave (a fresh sandbox over the run's layers and
//! its own proxy with the phase's policy) in its own cgroup, with a
//! timeout, its output streamed to the phase's log and the run's events.
//!
//! Everything a phase started ends with it: PID 1's exit takes the PID
//! namespace (every process) with it, the cgroup is emptied and removed,
//! and the phase's proxy is shut down with no grace period, which closes
//! every connection and tunnel the phase opened.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tollgate_proxy::audit::AuditLog;
use tollgate_proxy::metrics::Metrics;
use tollgate_proxy::policy::Policy;
use tollgate_sandbox::cgroup;
use tollgate_sandbox::{Bind, NewFile, Output, Sandbox, Spec};

use crate::enclave::{Afterwards, Enclave, Limits, Network, Stopped, Supervision};
use crate::error::RunError;
use crate::events::{Event, EventSink};
use crate::output::PhaseStream;
use crate::result::PhaseOutcome;
use crate::trust::LoadedCa;

/// Exit status of a phase stopped by its timeout (as timeout(1) reports).
const TIMED_OUT: i32 = 124;
/// Time a timed-out or interrupted phase has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What differs between phases.
pub struct Plan {
    pub name: &'static str,
    pub policy: Arc<Policy>,
    pub command: Vec<String>,
    /// The phase's own variables (the environment's, and secrets), over
    /// the inside contract's.
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
    pub trust: Option<LoadedCa>,
    pub audit: AuditLog,
    pub limits: cgroup::Limits,
    /// Bytes each tmpfs of a phase (/tmp, /dev/shm) may hold.
    pub tmpfs_size: Option<u64>,
    pub run_id: String,
    pub out: PathBuf,
    /// Byte strings no output may show (secret values).
    pub redact: Vec<Vec<u8>>,
    pub events: EventSink,
    pub cancel: CancellationToken,
    /// Where each phase's proxy counts what it does (`--metrics`).
    pub metrics: Option<Arc<Metrics>>,
}

/// Runs one phase to its end. Also returns a warning for each limit the
/// host cannot enforce (reported as the phase starts).
pub async fn run(plan: Plan, shared: &Shared) -> Result<(PhaseOutcome, Vec<String>), RunError> {
    let spec = Spec::new(shared.base.clone(), plan.command)
        .layers(plan.read_only)
        .writable(plan.writable)
        .binds(plan.binds)
        .masks(shared.masks.clone())
        .files(plan.files)
        .workdir(shared.workdir.clone())
        .env(plan.env)
        .tmpfs_size(shared.tmpfs_size);
    let log_name = format!("{}.log", plan.name);
    let (read, write) = nix::unistd::pipe().map_err(|e| {
        RunError::io("cannot create the phase's output pipe")(std::io::Error::from(e))
    })?;
    // The stage makes the network namespace while we prepare the rest.
    let stage = Sandbox::prepare(Output::Pipe(write))?;
    (shared.events)(Event::PhaseStarted { phase: plan.name });
    let started = Instant::now();
    let stream = PhaseStream::start(
        read,
        plan.name,
        &shared.out.join(&log_name),
        &shared.redact,
        shared.events.clone(),
    )?;
    let network = Network {
        policy: plan.policy,
        audit: shared.audit.clone(),
        phase: plan.name,
        shutdown_grace: Duration::ZERO,
        metrics: shared.metrics.clone(),
    };
    let limits = Limits {
        name: &format!("{}-{}", shared.run_id, plan.name),
        limits: shared.limits,
    };
    let enclave = Enclave::start(stage, spec, shared.trust.as_ref(), network, limits)?;
    let warnings = enclave.warnings().to_vec();
    for warning in &warnings {
        (shared.events)(Event::Warning(warning.clone()));
    }
    let ended = enclave
        .supervise(
            Supervision::Stop {
                timeout: plan.timeout,
                cancel: shared.cancel.clone(),
                grace: STOP_GRACE,
            },
            Afterwards::Unmounted,
        )
        .await?;
    let duration = started.elapsed();
    tokio::task::spawn_blocking(move || stream.finish())
        .await
        .map_err(|_| RunError::Panicked("output"))??;
    let timed_out = ended.stopped == Some(Stopped::Timeout);
    let outcome = PhaseOutcome {
        name: plan.name,
        exit_code: if timed_out { TIMED_OUT } else { ended.code },
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        timed_out,
        oom_killed: ended.oom_killed,
        interrupted: ended.stopped == Some(Stopped::Cancelled),
        log: log_name,
    };
    (shared.events)(Event::PhaseEnded(outcome.clone()));
    Ok((outcome, warnings))
}
