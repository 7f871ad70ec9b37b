//! `tollgate run`: maps the command line to a run request, prints the run's
//! events on the terminal, and exits with the agent's status.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGINT, SIGTERM};
use tokio_util::sync::CancellationToken;
use tollgate_run::checkout::Revision;
use tollgate_run::environment::Environment;
use tollgate_run::state::StateDir;
use tollgate_run::trust::load_ca;
use tollgate_run::{Event, RunRequest, RunResult};

use crate::cli::RunArgs;
use crate::cmd::proxy;

/// Exit status when a second SIGINT/SIGTERM ends tollgate at once.
const INTERRUPTED: i32 = 130;

pub fn run(args: RunArgs, state: &StateDir) -> Result<ExitCode> {
    tollgate_sandbox::preflight()?;
    let environment = Environment::load(&args.environment)?;
    let trust = load_ca(args.ca_dir.as_deref(), &args.upstream_ca, state)?;
    proxy::raise_open_file_limit();
    let request = RunRequest {
        environment,
        repo: args.repo,
        revision: revision(args.branch, args.commit),
        out: args.out,
        agent: args.agent,
        trust,
        state: state.clone(),
        cancel: cancel_on_signals()?,
    };
    let result = tollgate_run::run(request, Arc::new(print))?;
    print_summary(&result);
    Ok(ExitCode::from(u8::try_from(result.exit_code).unwrap_or(1)))
}

fn revision(branch: Option<String>, commit: Option<String>) -> Revision {
    match (branch, commit) {
        (Some(branch), _) => Revision::Branch(branch),
        (None, Some(commit)) => Revision::Commit(commit),
        (None, None) => Revision::Default,
    }
}

/// A token cancelled by the first SIGINT or SIGTERM, which stops the
/// running phase; a second one ends tollgate at once.
fn cancel_on_signals() -> Result<CancellationToken> {
    let cancel = CancellationToken::new();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot handle SIGINT and SIGTERM")?;
    let token = cancel.clone();
    std::thread::Builder::new()
        .name("tollgate-signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                if token.is_cancelled() {
                    std::process::exit(INTERRUPTED);
                }
                token.cancel();
            }
        })
        .context("cannot start the signal thread")?;
    Ok(cancel)
}

/// Prints an event: steps and warnings on standard error, each phase's
/// output on standard output under a header, each line after its time.
fn print(event: Event) {
    match event {
        Event::Notice(text) => eprintln!("tollgate: {text}"),
        Event::Warning(text) => eprintln!("tollgate: warning: {text}"),
        Event::PhaseStarted { phase } => println!("━━━ {phase} ━━━"),
        Event::Output {
            elapsed, mut line, ..
        } => {
            if line.last() != Some(&b'\n') {
                line.push(b'\n');
            }
            let mut stdout = std::io::stdout().lock();
            // The terminal going away must not stop the run.
            let _ = write!(stdout, "[{:7.1}s] ", elapsed.as_secs_f64())
                .and_then(|()| stdout.write_all(&line))
                .and_then(|()| stdout.flush());
        }
        Event::Decision(_) | Event::PhaseEnded(_) => {}
    }
}

fn print_summary(result: &RunResult) {
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
    eprintln!("tollgate: outputs in {}", result.out.display());
}
