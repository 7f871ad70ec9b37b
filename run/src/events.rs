//! What a run reports while it runs: for a terminal (the CLI prints them)
//! or a service (which streams them). Events are sent from the run's own
//! threads; a sink must not block for long.

use std::sync::Arc;
use std::time::Duration;

use tollgate_proxy::audit::Record;

use crate::result::PhaseOutcome;

#[derive(Debug, Clone)]
pub enum Event {
    /// A step of the run, for a person: `cache: hit (key …)`.
    Notice(String),
    /// Something the operator should act on; also in result.json.
    Warning(String),
    PhaseStarted {
        phase: &'static str,
    },
    /// One line of a phase's output (secret values redacted), with its
    /// newline unless the output ended without one.
    Output {
        phase: &'static str,
        /// Since the phase started.
        elapsed: Duration,
        line: Vec<u8>,
    },
    /// A decision of the phase's proxy, as the audit log records it.
    Decision(Box<Record>),
    PhaseEnded(PhaseOutcome),
}

/// Where events go.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;
