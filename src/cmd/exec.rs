//! `tollgate exec`: one command in a sandbox whose only route out is the
//! proxy, which runs in this process and listens inside the sandbox.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tollgate_proxy::audit::{AuditLog, AuditTarget};
use tollgate_proxy::{Listener, Proxy, ProxyConfig};
use tollgate_sandbox::init::INIT_ARG;
use tollgate_sandbox::launch::Init;
use tollgate_sandbox::reaper::interrupts_come_from_a_terminal;
use tollgate_sandbox::{Bind, NewFile, Sandbox, Spec};

use crate::cli::ExecArgs;
use crate::cmd::{ca, proxy};
use crate::state::StateDir;

/// Where the proxy listens inside every sandbox (DESIGN.md).
pub(crate) const SANDBOX_PROXY: &str = "127.0.0.1:3128";
/// The system CA file of Debian-family bases, replaced by our bundle.
const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Where the bundle also lives under its own name.
const BUNDLE_FILE: &str = "/etc/tollgate/ca-bundle.pem";
/// A resolver that answers at once: nothing listens on port 53 of the
/// sandbox's loopback, so look-ups fail fast instead of timing out, and
/// names are only ever resolved by the proxy, after the policy allowed them.
const RESOLV_CONF: &str = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs the sandbox's PID 1 when this process was started as it.
pub fn run_init_if_asked() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != INIT_ARG {
        return None;
    }
    let spec = PathBuf::from(args.next()?);
    Some(match tollgate_sandbox::init::run(&spec) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("tollgate: sandbox: {e}");
            ExitCode::from(125)
        }
    })
}

pub fn run(args: ExecArgs, state: &StateDir) -> Result<ExitCode> {
    tollgate_sandbox::launch::preflight()?;
    let loaded = ca::interception(args.ca_dir.as_deref(), &args.upstream_ca, state)?;
    let policy = proxy::load_enforceable(&args.policy, loaded.is_some())?;
    let audit = AuditLog::open(match &args.audit_log {
        Some(path) => AuditTarget::parse(path),
        None => AuditTarget::Discard,
    })?;
    let (mut spec, files) = sandbox_spec(&args, loaded.as_ref().map(|ca| ca.cert_pem.as_str()))?;
    spec.masks = private_dirs(args.ca_dir.as_deref(), state);
    let listen = SANDBOX_PROXY.parse().context("proxy address")?;
    proxy::raise_open_file_limit();
    let config = ProxyConfig {
        phase: Some(Arc::from("exec")),
        interception: loaded.map(|ca| ca.interception),
        ..ProxyConfig::default()
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let code = runtime.block_on(async {
        // Handlers first: a signal that arrives while the sandbox starts is
        // held for it, instead of killing tollgate and the sandbox with it.
        let signals = HostSignals::install()?;
        let (sandbox, listener) = Sandbox::start(spec, files, listen)?;
        serve_until_exit(sandbox, listener, signals, policy, audit, config).await
    })?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// The signals `exec` passes on to the sandbox.
struct HostSignals {
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl HostSignals {
    fn install() -> Result<HostSignals> {
        Ok(HostSignals {
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
            interrupt: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }
}

/// Serves the sandbox's proxy until the command exits. SIGTERM and SIGHUP
/// are passed on to the command; so are SIGINT and SIGQUIT unless a terminal
/// delivers them to the command itself (then here they mean "keep waiting").
async fn serve_until_exit(
    sandbox: Sandbox,
    listener: std::net::TcpListener,
    mut signals: HostSignals,
    policy: tollgate_proxy::policy::Policy,
    audit: AuditLog,
    config: ProxyConfig,
) -> Result<i32> {
    let proxy = Proxy::new(policy, audit, config);
    tokio::spawn(Arc::clone(&proxy).serve(Listener::from_std(listener)?));
    let init = sandbox.init();
    let mut waiting = tokio::task::spawn_blocking(move || sandbox.wait());
    let code = loop {
        tokio::select! {
            result = &mut waiting => break result.context("sandbox waiter")??,
            _ = signals.terminate.recv() => pass_on(init, Signal::SIGTERM),
            _ = signals.hangup.recv() => pass_on(init, Signal::SIGHUP),
            _ = signals.interrupt.recv() => pass_on_unless_terminal(init, Signal::SIGINT),
            _ = signals.quit.recv() => pass_on_unless_terminal(init, Signal::SIGQUIT),
        }
    };
    proxy.shutdown().await;
    proxy.audit().sync(Duration::from_secs(5));
    Ok(code)
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

/// tollgate's own state (the CA key above all, and the layers of runs) is
/// never visible inside.
pub(crate) fn private_dirs(ca_dir: Option<&std::path::Path>, state: &StateDir) -> Vec<PathBuf> {
    let mut dirs = vec![state.root().to_path_buf(), state.ca_dir()];
    dirs.extend(ca_dir.map(std::path::Path::to_path_buf));
    dirs.into_iter()
        .filter_map(|dir| std::fs::canonicalize(dir).ok())
        .collect()
}

/// The sandbox's spec and the files laid over paths inside it.
fn sandbox_spec(args: &ExecArgs, ca_pem: Option<&str>) -> Result<(Spec, Vec<NewFile>)> {
    let mut binds = Vec::new();
    for text in &args.bind {
        binds.push(Bind::parse(text, false)?);
    }
    for text in &args.ro_bind {
        binds.push(Bind::parse(text, true)?);
    }
    let mut env = sandbox_environment(ca_pem.is_some());
    let files = network_files(ca_pem)?;
    for pair in &args.env {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--env {pair}: expected K=V");
        };
        env.retain(|(k, _)| k != key);
        env.push((key.to_owned(), value.to_owned()));
    }
    let spec = Spec {
        base: args.base.clone(),
        layers: Vec::new(),
        writable: None,
        scratch: PathBuf::new(),
        cgroups: Vec::new(),
        binds,
        masks: Vec::new(),
        files: Vec::new(),
        hostname: "tollgate".into(),
        workdir: args.workdir.clone(),
        env,
        command: args.command.clone(),
    };
    Ok((spec, files))
}

/// The files every sandbox gets: a resolver that fails fast, and with
/// interception, the CA bundle over the system's and under its own name.
pub(crate) fn network_files(ca_pem: Option<&str>) -> Result<Vec<NewFile>> {
    let file = |path: &str, bytes: Vec<u8>| NewFile {
        sandbox: PathBuf::from(path),
        bytes,
    };
    let mut files = vec![file("/etc/resolv.conf", RESOLV_CONF.as_bytes().to_vec())];
    if let Some(pem) = ca_pem {
        let bundle = tollgate_certs::trust_bundle(pem)?.into_bytes();
        files.push(file(SYSTEM_CA_FILE, bundle.clone()));
        files.push(file(BUNDLE_FILE, bundle));
    }
    Ok(files)
}

/// The environment every sandboxed command starts from: the proxy
/// variables, and the CA bundle variables when intercepting.
pub(crate) fn sandbox_environment(intercepting: bool) -> Vec<(String, String)> {
    let mut env = proxy_environment();
    if intercepting {
        env.extend(ca_environment());
    }
    env
}

/// A minimal environment (the host's may hold credentials) pointing every
/// common client at the proxy.
fn proxy_environment() -> Vec<(String, String)> {
    let proxy = format!("http://{SANDBOX_PROXY}");
    let mut env: Vec<(String, String)> = [
        ("PATH", PATH),
        ("HOME", "/root"),
        ("NO_PROXY", "localhost,127.0.0.1,::1"),
        ("no_proxy", "localhost,127.0.0.1,::1"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for key in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
    ] {
        env.push((key.to_owned(), proxy.clone()));
    }
    for key in ["TERM", "LANG"] {
        if let Ok(value) = std::env::var(key) {
            env.push((key.to_owned(), value));
        }
    }
    env
}

/// Every variable common clients read for a CA bundle (DESIGN.md).
fn ca_environment() -> Vec<(String, String)> {
    [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
        "PIP_CERT",
        "CARGO_HTTP_CAINFO",
        "npm_config_cafile",
    ]
    .iter()
    .map(|k| ((*k).to_owned(), BUNDLE_FILE.to_owned()))
    .collect()
}
