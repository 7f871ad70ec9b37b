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
    let metrics = match &args.metrics {
        Some(addr) => Some(proxy::serve_metrics(addr)?),
        None => None,
    };
    let request = RunRequest {
        environment,
        repo: args.repo,
        revision: revision(args.branch, args.commit),
        out: args.out,
        agent: args.agent,
        trust,
        state: state.clone(),
        cancel: cancel_on_signals()?,
        metrics,
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
        Event::Notice(text) => say!("tollgate: {text}"),
        Event::Warning(text) => say!("tollgate: warning: {text}"),
        Event::PhaseStarted { phase } => println!("━━━ {phase} ━━━"),
        Event::Output { elapsed, line, .. } => {
            let mut stdout = std::io::stdout().lock();
            // The terminal going away must not stop the run.
            let _ = writeln!(
                stdout,
                "[{:7.1}s] {}",
                elapsed.as_secs_f64(),
                visible(&line)
            )
            .and_then(|()| stdout.flush());
        }
        Event::Decision(_) | Event::PhaseEnded(_) => {}
    }
}

fn print_summary(result: &RunResult) {
    for phase in &result.phases {
        say!(
            "tollgate: {}: exit {} in {:.1}s",
            phase.name,
            phase.exit_code,
            phase.duration_ms as f64 / 1000.0
        );
    }
    if let Some(diff) = &result.diff {
        say!("tollgate: diff: {} file(s) changed", diff.files_changed);
    }
    say!("tollgate: outputs in {}", result.out.display());
}

/// A phase's output line as the operator's terminal may show it: what the
/// sandbox prints is untrusted, and a control character in it would be
/// obeyed by the terminal (OSC 52 writes the clipboard, a carriage return
/// or an erase-line overwrites tollgate's own lines, a right-to-left
/// override shows text other than what is there). Every control character
/// but tab, and every bidirectional formatting character, is shown escaped
/// (`\x1b`, `\r`, `\u{9b}`, `\u{202e}`); the log files keep the bytes as
/// they were.
fn visible(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut shown = String::with_capacity(line.len());
    for c in String::from_utf8_lossy(line).chars() {
        match c {
            '\t' => shown.push(c),
            '\r' => shown.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                shown.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() || is_bidi_format(c) => {
                shown.push_str(&c.escape_unicode().to_string());
            }
            c => shown.push(c),
        }
    }
    shown
}

/// Unicode's bidirectional formatting characters (UAX #9: the marks,
/// embeddings, overrides and isolates) and the line and paragraph
/// separators, which move or hide the text around them.
fn is_bidi_format(c: char) -> bool {
    matches!(
        c,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

#[cfg(test)]
mod tests {
    use super::visible;

    #[test]
    fn control_characters_from_a_sandbox_never_reach_the_terminal_raw() {
        assert_eq!(visible(b"plain text\tand a tab\n"), "plain text\tand a tab");
        assert_eq!(
            visible(b"\x1b]52;c;cHduZWQ=\x07\x1b[2K\rtollgate: forged"),
            "\\x1b]52;c;cHduZWQ=\\x07\\x1b[2K\\rtollgate: forged"
        );
        // C1 controls (CSI as U+009B) and DEL too; other UTF-8 passes.
        assert_eq!(visible("\u{9b}31m\u{7f}é✓".as_bytes()), "\\u{9b}31m\\x7fé✓");
        assert_eq!(visible(b"bad \xff byte"), "bad \u{fffd} byte");
        assert_eq!(
            visible("safe\u{202e}txt.exe\u{2066}".as_bytes()),
            "safe\\u{202e}txt.exe\\u{2066}"
        );
    }
}
