//! An enclave: a sandbox and the proxy that is its only way out, started,
//! supervised and stopped as one. `tollgate exec` and every phase of a run
//! use it.
//!
//! The proxy runs in this process on the caller's tokio runtime and serves
//! a listener bound inside the sandbox's network namespace, so the sandbox
//! needs no veth, no NAT and no helper; when the enclave ends, the proxy is
//! shut down and every connection the sandbox opened through it is closed.

pub mod inside;

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tollgate_certs::CertError;
use tollgate_proxy::audit::AuditLog;
use tollgate_proxy::metrics::Metrics;
use tollgate_proxy::policy::Policy;
use tollgate_proxy::{Interception, ListenError, Listener, Proxy, ProxyConfig};
use tollgate_sandbox::cgroup::{self, CgroupError, PhaseCgroup};
use tollgate_sandbox::{
    interrupts_come_from_a_terminal, HandedOver, Init, Sandbox, SandboxError, Spec, Starting,
    Teardown,
};

use crate::trust::LoadedCa;

#[derive(Debug, Error)]
pub enum EnclaveError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot build the sandbox's CA bundle: {0}")]
    Bundle(#[from] CertError),
    #[error("cannot handle {0}: {1}")]
    Signals(&'static str, #[source] std::io::Error),
    #[error("the sandbox's waiting thread panicked: a bug in tollgate")]
    Waiter,
    #[error("cannot set up the sandbox's cgroups: {0}")]
    Cgroup(#[from] CgroupError),
}

/// The proxy side of an enclave.
pub struct Network<'a> {
    pub policy: Arc<Policy>,
    pub audit: AuditLog,
    /// Stamped on audit records and refusals: `exec`, `setup`, `agent`.
    pub phase: &'a str,
    /// How long in-flight requests may finish when the enclave ends.
    pub shutdown_grace: Duration,
    /// Where the proxy counts what it does (`--metrics`).
    pub metrics: Option<Arc<Metrics>>,
}

/// How the host side watches the sandbox until its command exits.
pub enum Supervision {
    /// `exec`: SIGTERM and SIGHUP to tollgate are passed on to the command;
    /// so are SIGINT and SIGQUIT unless a terminal delivers them to it
    /// itself. The command decides when to stop.
    ForwardSignals(HostSignals),
    /// A run phase: past `timeout`, or once `cancel` fires, the command
    /// gets SIGTERM, and the whole sandbox SIGKILL `grace` later.
    Stop {
        timeout: Option<Duration>,
        cancel: CancellationToken,
        grace: Duration,
    },
}

/// What [`Enclave::supervise`] waits for once the sandbox's processes
/// are gone and its cgroups removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Afterwards {
    /// Until the kernel has unmounted the sandbox's mount namespace: the
    /// next phase of a run mounts the same directories again.
    Unmounted,
    /// Nothing: the caller exits now (`exec`); the kernel finishes
    /// unmounting, as bubblewrap's callers leave it to.
    Exit,
}

/// Why a supervised sandbox was stopped before its command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    Timeout,
    Cancelled,
}

/// How an enclave ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The command's status in the shell's convention (128+N for signal N).
    pub code: i32,
    pub stopped: Option<Stopped>,
    /// The kernel's OOM killer killed a process of the sandbox (it hit
    /// its memory limit).
    pub oom_killed: bool,
}

/// The cgroups an enclave's processes are born in.
pub struct Limits<'a> {
    /// Names the cgroup directories (`tollgate-<pid>-<name>`): unique per
    /// enclave of this process.
    pub name: &'a str,
    pub limits: cgroup::Limits,
}

/// A running sandbox, its proxy and its cgroups.
pub struct Enclave {
    sandbox: Sandbox,
    proxy: Arc<Proxy>,
    cgroup: PhaseCgroup,
    warnings: Vec<String>,
}

/// An enclave whose sandbox is being built (its command waits); the
/// caller loads the policy and starts the proxy's runtime meanwhile.
/// Dropping it kills the sandbox.
pub struct Building {
    sandbox: HandedOver,
    interception: Option<Interception>,
    cgroup: PhaseCgroup,
    warnings: Vec<String>,
}

impl Enclave {
    /// Starts the sandbox of `spec` — its environment and files laid over
    /// the inside contract's, with `trust`'s CA when the proxy intercepts
    /// — on `stage` (started early with [`Sandbox::prepare`], so that it
    /// makes the network namespace while the caller works). The command
    /// runs only once [`Building::serve`] has its proxy serving.
    pub fn build(
        stage: Starting,
        spec: Spec,
        trust: Option<&LoadedCa>,
        limits: Limits<'_>,
    ) -> Result<Building, EnclaveError> {
        let (cgroup, report) = PhaseCgroup::create(limits.name, &limits.limits)?;
        let mut files = inside::files(trust.map(|ca| ca.cert_pem.as_str()))?;
        files.extend(spec.files.iter().cloned());
        let env = inside::merge(inside::environment(trust.is_some()), spec.env.clone());
        let spec = spec.files(files).env(env).cgroups(cgroup.join_files());
        let sandbox = stage.hand_over(spec, inside::PROXY_ADDR)?;
        Ok(Building {
            sandbox,
            interception: trust.map(|ca| ca.interception.clone()),
            cgroup,
            warnings: report.warnings(),
        })
    }

    /// [`Enclave::build`], then [`Building::serve`].
    pub fn start(
        stage: Starting,
        spec: Spec,
        trust: Option<&LoadedCa>,
        network: Network<'_>,
        limits: Limits<'_>,
    ) -> Result<Enclave, EnclaveError> {
        Enclave::build(stage, spec, trust, limits)?.serve(network)
    }
}

impl Building {
    /// Waits for the sandbox to be built, serves its proxy under `network`
    /// and lets the command run. Must be called on a tokio runtime, which
    /// serves the proxy.
    pub fn serve(self, network: Network<'_>) -> Result<Enclave, EnclaveError> {
        let (sandbox, listener) = self.sandbox.built()?;
        let defaults = ProxyConfig::default();
        let config = ProxyConfig {
            phase: Some(Arc::from(network.phase)),
            interception: self.interception,
            shutdown_grace: network.shutdown_grace,
            // The sandbox is the proxy's one client.
            max_client_connections: defaults.max_connections,
            metrics: network.metrics,
            ..defaults
        };
        let proxy = Proxy::new(network.policy, network.audit, config);
        let listener = Listener::from_std(listener)?;
        // The policy is in force: the command may run. (Its connections
        // wait in the listener's backlog until the proxy accepts them.)
        sandbox.go()?;
        tokio::spawn(Arc::clone(&proxy).serve(listener));
        Ok(Enclave {
            sandbox,
            proxy,
            cgroup: self.cgroup,
            warnings: self.warnings,
        })
    }
}

impl Enclave {
    /// One line per limit the host cannot enforce.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Waits for the command's end as `how` says, then shuts the proxy
    /// down (closing every connection of the sandbox), flushes the audit
    /// log and removes the cgroups; what it waits for after that is
    /// `afterwards`'s to say.
    pub async fn supervise(
        self,
        how: Supervision,
        afterwards: Afterwards,
    ) -> Result<Ended, EnclaveError> {
        let Enclave {
            sandbox,
            proxy,
            cgroup,
            ..
        } = self;
        let init = sandbox.init();
        let waiting = tokio::task::spawn_blocking(move || sandbox.wait());
        let ended = match how {
            Supervision::ForwardSignals(signals) => forward_signals(init, waiting, signals).await,
            Supervision::Stop {
                timeout,
                cancel,
                grace,
            } => stop_when_asked(init, waiting, timeout, cancel, grace).await,
        };
        // Every process of the sandbox but PID 1 is gone; PID 1 and the
        // stage are exiting (`teardown`). The cgroups can go once PID 1 has
        // left them: on another thread, while the proxy shuts down.
        let (ended, teardown) = match ended {
            Ok((ended, teardown)) => (Ok(ended), Some(teardown)),
            Err(e) => (Err(e), None),
        };
        let oom_killed = cgroup.oom_killed();
        let removed = tokio::task::spawn_blocking(move || {
            let mut teardown = teardown;
            if let Some(teardown) = &mut teardown {
                teardown.wait_for_pid1();
            }
            drop(cgroup);
            teardown
        });
        proxy.shutdown().await;
        proxy.audit().sync(Duration::from_secs(5));
        let teardown = removed.await.map_err(|_| EnclaveError::Waiter)?;
        match (teardown, afterwards) {
            (Some(teardown), Afterwards::Exit) => teardown.leave(),
            (teardown, _) => tokio::task::spawn_blocking(move || drop(teardown))
                .await
                .map_err(|_| EnclaveError::Waiter)?,
        }
        ended.map(|ended| Ended {
            oom_killed,
            ..ended
        })
    }
}

type Waiting = tokio::task::JoinHandle<Result<(i32, Teardown), SandboxError>>;

async fn finished(waiting: &mut Waiting) -> Result<(i32, Teardown), EnclaveError> {
    Ok(waiting.await.map_err(|_| EnclaveError::Waiter)??)
}

fn ended((code, teardown): (i32, Teardown), stopped: Option<Stopped>) -> (Ended, Teardown) {
    let ended = Ended {
        code,
        stopped,
        oom_killed: false,
    };
    (ended, teardown)
}

/// The signals `exec` passes on to the sandbox, installed before it
/// starts: a signal that arrives while it starts is held for it instead of
/// killing tollgate and the sandbox with it.
pub struct HostSignals {
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl HostSignals {
    /// Must be called on a tokio runtime.
    pub fn install() -> Result<HostSignals, EnclaveError> {
        let handle = |name, kind| signal(kind).map_err(|e| EnclaveError::Signals(name, e));
        Ok(HostSignals {
            terminate: handle("SIGTERM", SignalKind::terminate())?,
            hangup: handle("SIGHUP", SignalKind::hangup())?,
            interrupt: handle("SIGINT", SignalKind::interrupt())?,
            quit: handle("SIGQUIT", SignalKind::quit())?,
        })
    }
}

async fn forward_signals(
    init: Init,
    mut waiting: Waiting,
    mut signals: HostSignals,
) -> Result<(Ended, Teardown), EnclaveError> {
    loop {
        tokio::select! {
            result = finished(&mut waiting) => return Ok(ended(result?, None)),
            _ = signals.terminate.recv() => pass_on(init, Signal::SIGTERM),
            _ = signals.hangup.recv() => pass_on(init, Signal::SIGHUP),
            _ = signals.interrupt.recv() => pass_on_unless_terminal(init, Signal::SIGINT),
            _ = signals.quit.recv() => pass_on_unless_terminal(init, Signal::SIGQUIT),
        }
    }
}

/// Sends `signal` to the sandbox's init off the async workers: delivery may
/// wait (briefly) for init to install its handlers.
fn pass_on(init: Init, signal: Signal) {
    tokio::task::spawn_blocking(move || init.signal(signal));
}

fn pass_on_unless_terminal(init: Init, signal: Signal) {
    if !interrupts_come_from_a_terminal() {
        pass_on(init, signal);
    }
}

/// Waits for the command; past the timeout, or when cancelled, asks it to
/// stop and then kills it.
async fn stop_when_asked(
    init: Init,
    mut waiting: Waiting,
    timeout: Option<Duration>,
    cancel: CancellationToken,
    grace: Duration,
) -> Result<(Ended, Teardown), EnclaveError> {
    let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::MAX));
    tokio::pin!(deadline);
    let stopped = tokio::select! {
        result = finished(&mut waiting) => return Ok(ended(result?, None)),
        () = &mut deadline, if timeout.is_some() => Stopped::Timeout,
        () = cancel.cancelled() => Stopped::Cancelled,
    };
    // SIGTERM to the command (through init); SIGKILL to the whole sandbox
    // if it is still there after the grace period.
    tokio::task::spawn_blocking(move || init.signal(Signal::SIGTERM));
    let result = match tokio::time::timeout(grace, finished(&mut waiting)).await {
        Ok(result) => result?,
        Err(_) => {
            init.kill();
            finished(&mut waiting).await?
        }
    };
    Ok(ended(result, Some(stopped)))
}
