//! Why a run could not be carried out; every message says what to do.
//! (A phase that fails is not an error: it is in the result.)

use std::io;
use std::path::PathBuf;

use thiserror::Error;
use tollgate_proxy::audit::AuditError;
use tollgate_proxy::policy::PolicyError;
use tollgate_sandbox::SandboxError;

use crate::cache::{CacheError, StoreError};
use crate::checkout::CheckoutError;
use crate::diff::DiffError;
use crate::enclave::EnclaveError;
use crate::environment::EnvironmentError;
use crate::layers::LayerError;

#[derive(Debug, Error)]
pub enum RunError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Enclave(#[from] EnclaveError),
    #[error("{}: {source}", .path.display())]
    Secret {
        path: PathBuf,
        source: EnvironmentError,
    },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("policy file {} (from the environment's `internet`): no such file; give an existing path (relative to the environment file)", .0.display())]
    PolicyFileMissing(PathBuf),
    #[error(transparent)]
    Checkout(#[from] CheckoutError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Diff(#[from] DiffError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("--out {}: not empty; give a new or empty directory (results are never overwritten)", .0.display())]
    OutNotEmpty(PathBuf),
    #[error("setup replaced {} with {what}, where later phases mount: leave it a directory (nothing was cached)", .path.display())]
    MountPointReplaced { path: PathBuf, what: &'static str },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("cannot start the async runtime: {0}")]
    Runtime(io::Error),
    #[error("the {0} thread panicked: a bug in tollgate, please report it")]
    Panicked(&'static str),
}

impl RunError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> RunError {
        let what = what.into();
        move |source| RunError::Io { what, source }
    }

    pub(crate) fn io_other<E: std::fmt::Display>(
        what: impl Into<String>,
    ) -> impl FnOnce(E) -> RunError {
        let what = what.into();
        move |error| RunError::Io {
            what,
            source: io::Error::other(error.to_string()),
        }
    }
}
