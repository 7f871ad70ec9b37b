//! `tollgate proxy`: serve until SIGINT/SIGTERM, reload on SIGHUP.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tollgate_proxy::audit::{AuditLog, AuditTarget};
use tollgate_proxy::metrics::Metrics;
use tollgate_proxy::policy::Policy;
use tollgate_proxy::{ListenAddr, Listener, Proxy, ProxyConfig};

use tollgate_run::state::StateDir;
use tollgate_run::trust::load_ca;

use crate::cli::ProxyArgs;

/// The policy `proxy` enforces without `--policy` (DESIGN.md).
const DEFAULT_POLICY: &str = "common-dependencies";

pub fn run(args: ProxyArgs, state: &StateDir) -> Result<ExitCode> {
    let policy_arg = args
        .policy
        .clone()
        .unwrap_or_else(|| DEFAULT_POLICY.to_owned());
    let interception =
        load_ca(args.ca_dir.as_deref(), &args.upstream_ca, state)?.map(|ca| ca.interception);
    let loading = Instant::now();
    let policy = load_enforceable(&policy_arg, interception.is_some())?;
    let loaded = loading.elapsed();
    let audit = args
        .audit_fail
        .apply(AuditLog::open(AuditTarget::parse(&args.audit_log))?);
    let metrics = match &args.metrics {
        Some(addr) => Some(serve_metrics(addr)?),
        None => None,
    };
    if let Some(metrics) = &metrics {
        metrics.watch_audit_log(&audit);
        metrics.policy_loaded(loaded);
    }
    let config = ProxyConfig {
        interception,
        metrics,
        ..config_from(&args)
    };
    raise_open_file_limit();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(serve(args, policy_arg, policy, audit, config))?;
    Ok(ExitCode::SUCCESS)
}

/// Starts serving Prometheus metrics on `addr`, on a thread of its own: a
/// slow scraper never takes a worker of the proxy.
pub fn serve_metrics(addr: &ListenAddr) -> Result<Arc<Metrics>> {
    let metrics = Metrics::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the metrics runtime")?;
    let listener = runtime.block_on(async { Listener::bind(addr) })?;
    tracing::info!("metrics on {}/metrics", listener.describe());
    let serving = metrics.clone();
    std::thread::Builder::new()
        .name("tollgate-metrics".into())
        .spawn(move || runtime.block_on(tollgate_proxy::metrics::serve(listener, serving)))
        .context("cannot start the metrics thread")?;
    Ok(metrics)
}

pub fn load_enforceable(arg: &str, interception: bool) -> Result<Policy> {
    let policy = Policy::load(arg)?;
    policy.check_enforceable(interception)?;
    Ok(policy)
}

/// A tunnel holds six descriptors (two sockets, two splice pipes), so the
/// usual soft limit of 1024 would cap the proxy near 170 tunnels. Raise the
/// soft limit to the hard one, as nginx (worker_rlimit_nofile) and Go's
/// runtime do.
pub fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-file limit from {soft}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}

fn config_from(args: &ProxyArgs) -> ProxyConfig {
    ProxyConfig {
        header_timeout: Duration::from_secs(args.header_timeout),
        tunnel_idle_timeout: Duration::from_secs(args.tunnel_idle_timeout),
        max_connections: usize::try_from(args.max_connections).unwrap_or(usize::MAX),
        max_client_connections: usize::try_from(args.max_client_connections).unwrap_or(usize::MAX),
        ..ProxyConfig::default()
    }
}

async fn serve(
    args: ProxyArgs,
    policy_arg: String,
    policy: Policy,
    audit: AuditLog,
    config: ProxyConfig,
) -> Result<()> {
    let mut listeners = Vec::with_capacity(args.listen.len());
    for addr in &args.listen {
        listeners.push(Listener::bind(addr)?);
    }
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;

    tracing::info!("policy {}: {}", policy.origin(), policy.summary());
    let proxy = Proxy::new(Arc::new(policy), audit, config);
    for listener in listeners {
        tracing::info!("listening on {}", listener.describe());
        tokio::spawn(Arc::clone(&proxy).serve(listener));
    }
    loop {
        tokio::select! {
            _ = hangup.recv() => reload(&proxy, &policy_arg),
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    tracing::info!("shutting down");
    proxy.shutdown().await;
    proxy.audit().sync(Duration::from_secs(5));
    Ok(())
}

/// Invariant 5: a policy that does not load never replaces the running one.
fn reload(proxy: &Proxy, policy_arg: &str) {
    proxy.audit().reopen();
    let loading = Instant::now();
    match load_enforceable(policy_arg, proxy.intercepts()) {
        Ok(policy) => {
            let summary = format!("{}: {}", policy.origin(), policy.summary());
            proxy.replace_policy(policy);
            if let Some(metrics) = proxy.metrics() {
                metrics.policy_loaded(loading.elapsed());
            }
            tracing::info!("reloaded policy {summary}");
        }
        Err(e) => tracing::error!("policy not reloaded, still enforcing the previous one: {e:#}"),
    }
}
