//! The `tollgate` command line: parses arguments, wires the libraries
//! together, and turns every failure into one line and an exit status.

/// `eprintln!` that never panics: a standard error that cannot be written
/// (a closed pipe, a device) loses the message, not the exit status.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod cli;
mod cmd;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tollgate_run::state::StateDir;

use crate::cli::{AuditCommand, CaCommand, CacheCommand, Cli, Command, PolicyCommand};

/// Exit status for a usage or configuration error (DESIGN.md, `policy eval`).
const EXIT_CONFIG: u8 = 2;

/// Exit status when the sandbox could not be built (README, `exec`).
const EXIT_SANDBOX_SETUP: u8 = 125;

fn main() -> ExitCode {
    // Hidden entry points: the sandbox's stage, the rootless diff's helper.
    if let Some(code) = tollgate_sandbox::enter_if_requested() {
        return code;
    }
    if let Some(code) = tollgate_run::diff::enter_if_requested() {
        return code;
    }
    let cli = Cli::parse();
    init_logging();
    let state = StateDir::new(cli.state_dir);
    let outcome = match cli.command {
        Command::Proxy(args) => cmd::proxy::run(args, &state),
        Command::Ca(CaCommand::Init(args)) => cmd::ca::init(args, &state),
        Command::Exec(args) => cmd::exec::run(args, &state),
        Command::Run(args) => cmd::run::run(args, &state),
        Command::Cache(CacheCommand::List) => cmd::cache::list(&state),
        Command::Cache(CacheCommand::Reset { environment }) => {
            cmd::cache::reset(&environment, &state)
        }
        Command::Cache(CacheCommand::Gc) => cmd::cache::gc(&state),
        Command::Policy(PolicyCommand::Check(args)) => cmd::policy::check(args),
        Command::Policy(PolicyCommand::Eval(args)) => cmd::policy::eval(args),
        Command::Audit(AuditCommand::Verify { files }) => cmd::audit::verify(&files),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            say!("tollgate: {}", one_line(&error));
            ExitCode::from(exit_status_of(&error))
        }
    }
}

fn exit_status_of(error: &anyhow::Error) -> u8 {
    use tollgate_run::enclave::EnclaveError;
    use tollgate_sandbox::SandboxError;
    let sandbox_failed = error.chain().any(|cause| {
        let sandbox = match cause.downcast_ref::<EnclaveError>() {
            Some(EnclaveError::Sandbox(inner)) => Some(inner),
            _ => cause.downcast_ref::<SandboxError>(),
        };
        sandbox.is_some_and(SandboxError::is_setup_failure)
    });
    if sandbox_failed {
        EXIT_SANDBOX_SETUP
    } else {
        EXIT_CONFIG
    }
}

/// The error and its causes on one line, leaving out a cause whose text
/// the message before it already holds (most of ours say their cause).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// Diagnostics go to standard error; `TOLLGATE_LOG` sets the filter
/// (e.g. `debug`, `tollgate_proxy=trace`). The audit log is separate.
/// Colour only on a terminal, and never with `NO_COLOR` set
/// (https://no-color.org).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false)
        .init();
}
