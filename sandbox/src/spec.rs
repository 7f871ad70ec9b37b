//! What a sandbox runs, handed from the host side to stages 1 and 2 in a
//! private file (never in the environment or argv, where /proc would show it).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::SandboxError;

/// A host directory made visible inside.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bind {
    pub host: PathBuf,
    pub sandbox: PathBuf,
    pub read_only: bool,
}

impl Bind {
    /// Parses `HOST:SANDBOX` (both absolute).
    pub fn parse(text: &str, read_only: bool) -> Result<Bind, SandboxError> {
        let bad = |why: &str| SandboxError::BadBind(text.to_owned(), why.to_owned());
        let (host, sandbox) = text
            .split_once(':')
            .ok_or_else(|| bad("expected HOST:SANDBOX, e.g. /srv/data:/data"))?;
        let (host, sandbox) = (PathBuf::from(host), PathBuf::from(sandbox));
        if !host.is_absolute() || !sandbox.is_absolute() {
            return Err(bad("both paths must be absolute"));
        }
        if sandbox
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(bad("the sandbox path must not contain `..`"));
        }
        if !host.exists() {
            return Err(bad("the host path does not exist"));
        }
        Ok(Bind {
            host,
            sandbox,
            read_only,
        })
    }
}

/// A file the host side wants laid over a path inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFile {
    pub sandbox: PathBuf,
    pub bytes: Vec<u8>,
}

/// A file laid over a path inside (resolv.conf, the CA bundle), read from the
/// host before the root is switched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InjectedFile {
    pub sandbox: PathBuf,
    pub host: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Spec {
    /// Lower layer of the overlay root (read-only).
    pub base: PathBuf,
    /// Read-only layers stacked above the base, topmost first: the writable
    /// layers of earlier phases, cache snapshots.
    #[serde(default)]
    pub layers: Vec<PathBuf>,
    /// A host directory for the writable layer (`upper/`, `work/`) when it
    /// must outlive the sandbox, as between the phases of `tollgate run`.
    /// None: the writable layer is a tmpfs that vanishes with the sandbox.
    #[serde(default)]
    pub writable: Option<PathBuf>,
    /// Private host directory the sandbox mounts its scratch tmpfs on.
    pub scratch: PathBuf,
    /// `cgroup.procs` files PID 1 joins before it starts anything, so no
    /// process of the sandbox runs outside its limits.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
    pub binds: Vec<Bind>,
    /// Directories of the base hidden behind an empty read-only tmpfs
    /// (tollgate's own state: the CA key must never be readable inside).
    pub masks: Vec<PathBuf>,
    pub files: Vec<InjectedFile>,
    pub hostname: String,
    pub workdir: PathBuf,
    /// The command's complete environment.
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
}

impl Spec {
    pub fn write(&self, path: &Path) -> Result<(), SandboxError> {
        let text = serde_json::to_vec(self).map_err(|e| SandboxError::Spec {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        std::fs::write(path, text).map_err(SandboxError::io(format!("write {}", path.display())))
    }

    pub fn read(path: &Path) -> Result<Spec, SandboxError> {
        let text = std::fs::read(path).map_err(|e| SandboxError::Spec {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        serde_json::from_slice(&text).map_err(|e| SandboxError::Spec {
            path: path.to_owned(),
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_parse_and_refuse_bad_forms() {
        let b = Bind::parse("/tmp:/data", true).unwrap();
        assert_eq!(b.sandbox, PathBuf::from("/data"));
        assert!(b.read_only);
        for bad in [
            "/tmp",
            "tmp:/data",
            "/tmp:data",
            "/tmp:/a/../etc",
            "/no/such/dir:/x",
        ] {
            assert!(Bind::parse(bad, false).is_err(), "{bad}");
        }
    }
}
