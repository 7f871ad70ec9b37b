//! The `tollgate` command line: parses arguments, wires the libraries
//! together, and turns every failure into one line and an exit status.

mod cli;
mod cmd;
mod state;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{CaCommand, CacheCommand, Cli, Command, PolicyCommand};

/// Exit status for a usage or configuration error (DESIGN.md, `policy eval`).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    if let Some(code) = cmd::exec::run_init_if_asked() {
        return code;
    }
    let cli = Cli::parse();
    init_logging();
    let state = state::StateDir::new(cli.state_dir);
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
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("tollgate: {error:#}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// Diagnostics go to standard error; `TOLLGATE_LOG` sets the filter
/// (e.g. `debug`, `tollgate_proxy=trace`). The audit log is separate.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
