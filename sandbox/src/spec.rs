//! What a sandbox runs: the caller's [`Spec`], and the [`Handoff`] the host
//! side gives PID 1 (the spec plus what only the host side knows: where its
//! scratch mount point is and where the injected files wait). The handoff
//! travels in a private file, never in the environment or argv, where /proc
//! would show it.

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

/// A file laid over a path inside (resolv.conf, the CA bundle, a script).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFile {
    pub sandbox: PathBuf,
    pub bytes: Vec<u8>,
}

impl NewFile {
    pub fn new(sandbox: impl Into<PathBuf>, bytes: impl Into<Vec<u8>>) -> NewFile {
        NewFile {
            sandbox: sandbox.into(),
            bytes: bytes.into(),
        }
    }
}

/// Everything a caller says about a sandbox. [`Spec::new`] gives the
/// defaults (hostname `tollgate`, working directory `/`, no layers, binds,
/// masks, files, cgroups or variables, a writable layer that vanishes with
/// the sandbox); set the rest with the builder methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Lower layer of the overlay root (read-only).
    pub base: PathBuf,
    /// Read-only layers stacked above the base, topmost first: the writable
    /// layers of earlier phases, cache snapshots.
    pub layers: Vec<PathBuf>,
    /// A host directory for the writable layer (`upper/`, `work/`) when it
    /// must outlive the sandbox, as between the phases of `tollgate run`.
    /// None: the writable layer is a tmpfs that vanishes with the sandbox.
    pub writable: Option<PathBuf>,
    /// `cgroup.procs` files PID 1 joins before it starts anything, so no
    /// process of the sandbox runs outside its limits.
    pub cgroups: Vec<PathBuf>,
    pub binds: Vec<Bind>,
    /// Directories of the base hidden behind an empty read-only tmpfs
    /// (tollgate's own state: the CA key must never be readable inside).
    pub masks: Vec<PathBuf>,
    pub files: Vec<NewFile>,
    pub hostname: String,
    pub workdir: PathBuf,
    /// The command's complete environment.
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
}

impl Spec {
    pub fn new(base: impl Into<PathBuf>, command: Vec<String>) -> Spec {
        Spec {
            base: base.into(),
            layers: Vec::new(),
            writable: None,
            cgroups: Vec::new(),
            binds: Vec::new(),
            masks: Vec::new(),
            files: Vec::new(),
            hostname: "tollgate".into(),
            workdir: PathBuf::from("/"),
            env: Vec::new(),
            command,
        }
    }

    pub fn layers(mut self, layers: Vec<PathBuf>) -> Spec {
        self.layers = layers;
        self
    }

    pub fn writable(mut self, dir: PathBuf) -> Spec {
        self.writable = Some(dir);
        self
    }

    pub fn cgroups(mut self, procs_files: Vec<PathBuf>) -> Spec {
        self.cgroups = procs_files;
        self
    }

    pub fn binds(mut self, binds: Vec<Bind>) -> Spec {
        self.binds = binds;
        self
    }

    pub fn masks(mut self, dirs: Vec<PathBuf>) -> Spec {
        self.masks = dirs;
        self
    }

    pub fn files(mut self, files: Vec<NewFile>) -> Spec {
        self.files = files;
        self
    }

    pub fn workdir(mut self, dir: impl Into<PathBuf>) -> Spec {
        self.workdir = dir.into();
        self
    }

    pub fn env(mut self, env: Vec<(String, String)>) -> Spec {
        self.env = env;
        self
    }
}

/// A file the host side wrote for PID 1 to lay over a path inside, read
/// before the root is switched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct InjectedFile {
    pub sandbox: PathBuf,
    pub host: PathBuf,
}

/// What PID 1 gets from the host side: the spec, with the injected files
/// written out and the scratch mount point made.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Handoff {
    pub base: PathBuf,
    pub layers: Vec<PathBuf>,
    pub writable: Option<PathBuf>,
    /// Private host directory the sandbox mounts its scratch tmpfs on.
    pub scratch: PathBuf,
    pub cgroups: Vec<PathBuf>,
    pub binds: Vec<Bind>,
    pub masks: Vec<PathBuf>,
    pub files: Vec<InjectedFile>,
    pub hostname: String,
    pub workdir: PathBuf,
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
}

impl Handoff {
    pub fn write(&self, path: &Path) -> Result<(), SandboxError> {
        let text = serde_json::to_vec(self).map_err(|e| SandboxError::Spec {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        std::fs::write(path, text).map_err(SandboxError::io(format!("write {}", path.display())))
    }

    pub fn read(path: &Path) -> Result<Handoff, SandboxError> {
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
