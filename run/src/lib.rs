//! tollgate's run workflow as a library, for the CLI and a service: read an
//! environment file, check out a repo on the host, run setup (or resume a
//! cached snapshot and run maintenance) and then the agent, each phase an
//! enclave — a sandbox and its own proxy with the phase's policy — over the
//! same layers; hand back the agent's diff, the audit log, a log per phase
//! and result.json.
//!
//! One entry point, [`run`]: a [`RunRequest`] in, [`Event`]s out while it
//! runs (phase started, output line, decision, phase ended), a
//! [`RunResult`] back. [`enclave::Enclave`] is the sandbox-with-its-proxy
//! that `tollgate exec` uses too.

pub mod autosetup;
pub mod cache;
pub mod checkout;
pub mod diff;
pub mod enclave;
pub mod environment;
mod error;
pub mod events;
mod layers;
mod output;
mod phase;
pub mod result;
pub mod secrets;
pub mod state;
mod tree;
pub mod trust;
mod workflow;

pub use error::RunError;
pub use events::{Event, EventSink};
pub use result::{PhaseOutcome, RunResult};
pub use workflow::{run, RunRequest};
