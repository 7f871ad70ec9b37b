//! What a sandbox runs: the caller's [`Spec`], and the [`Handoff`] the host
//! side gives PID 1 (the spec plus where its scratch mount point is).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ids::IdMapping;
use crate::pty::Terminals;
use crate::SandboxError;

/// A host directory made visible inside.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bind {
    pub host: PathBuf,
    pub sandbox: PathBuf,
    pub read_only: bool,
    /// One of tollgate's own binds, of what it made itself (a run's mirror,
    /// in the state dir): idmapped, so that what host root owns is root's
    /// inside, and shown though it lies in a hidden directory. Never for a
    /// bind the operator asks for (see [`crate::mounts::mount_binds`]).
    pub tollgates_own: bool,
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
        // Real paths, so that what is hidden inside a bound directory is
        // found (masks name real paths).
        let host = host
            .canonicalize()
            .map_err(|_| bad("the host path does not exist"))?;
        if let Some((point, fstype)) = crate::mountinfo::kernel_interface_within(&host) {
            return Err(bad(&format!(
                "{} is the host kernel's {fstype} file system, which no sandbox may see: bind a directory that holds none",
                point.display()
            )));
        }
        Ok(Bind {
            host,
            sandbox,
            read_only,
            tollgates_own: false,
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

/// Bytes each of a sandbox's tmpfs mounts holds unless told otherwise:
/// enough for a build's temporary files, small enough that filling them
/// does not fill the host's memory.
pub const DEFAULT_TMPFS_SIZE: u64 = 1 << 30;

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
    /// Paths of the base hidden: a directory behind an empty read-only
    /// tmpfs, a file behind an empty read-only file (tollgate's own state,
    /// a run's outputs, secret files: never visible inside).
    pub masks: Vec<PathBuf>,
    pub files: Vec<NewFile>,
    pub hostname: String,
    pub workdir: PathBuf,
    /// The command's complete environment.
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
    /// Bytes each of the sandbox's tmpfs mounts may hold: /tmp, /dev/shm,
    /// and the writable layer when it is not `writable`. None: half of
    /// RAM each, the kernel's default. [`Spec::new`]: [`DEFAULT_TMPFS_SIZE`].
    pub tmpfs_size: Option<u64>,
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
            tmpfs_size: Some(DEFAULT_TMPFS_SIZE),
        }
    }

    pub fn tmpfs_size(mut self, bytes: Option<u64>) -> Spec {
        self.tmpfs_size = bytes;
        self
    }

    pub fn layers(mut self, layers: Vec<PathBuf>) -> Spec {
        self.layers = layers;
        self
    }

    pub fn writable(mut self, dir: PathBuf) -> Spec {
        self.writable = Some(dir);
        self
    }

    pub fn cgroups(mut self, join_files: Vec<PathBuf>) -> Spec {
        self.cgroups = join_files;
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

/// What the sandbox's stage gets from the host side: the spec and what the
/// host side decided for it. It travels in a sealed memfd that the stage
/// reads through the host side's `/proc/PID/fd`: never in a file, argv or
/// the environment, so no secret in it can be left behind or read by
/// another process than root's (or the same user's, rootless).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Handoff {
    pub spec: Spec,
    /// Private host directory the sandbox mounts its scratch tmpfs on.
    pub scratch: PathBuf,
    /// Where the proxy's listener is bound inside.
    pub listen: SocketAddr,
    pub ids: IdMapping,
    /// A terminal made for the sandbox, when the caller has one.
    pub console: Option<Console>,
}

/// The terminal made for the sandbox (pty.rs): /dev/console inside, the
/// command's controlling terminal, and its standard streams that were the
/// caller's terminal (a redirected one stays what it was).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Console {
    /// Its path in the host's /dev/pts, which PID 1's mount namespace
    /// shows until the pivot.
    pub path: PathBuf,
    pub streams: Terminals,
}

/// The part of a handoff serialised as JSON; file contents follow it raw.
#[derive(Serialize, Deserialize)]
struct Header {
    base: PathBuf,
    layers: Vec<PathBuf>,
    writable: Option<PathBuf>,
    scratch: PathBuf,
    cgroups: Vec<PathBuf>,
    binds: Vec<Bind>,
    masks: Vec<PathBuf>,
    /// Each file's path inside and its length in the bytes that follow.
    files: Vec<(PathBuf, u64)>,
    hostname: String,
    workdir: PathBuf,
    env: Vec<(String, String)>,
    command: Vec<String>,
    tmpfs_size: Option<u64>,
    listen: SocketAddr,
    ids: IdMapping,
    console: Option<Console>,
}

impl Handoff {
    /// `[header length: u64 LE][header JSON][file 0][file 1]...`
    pub fn to_bytes(&self) -> Result<Vec<u8>, SandboxError> {
        let spec = &self.spec;
        let header = Header {
            base: spec.base.clone(),
            layers: spec.layers.clone(),
            writable: spec.writable.clone(),
            scratch: self.scratch.clone(),
            cgroups: spec.cgroups.clone(),
            binds: spec.binds.clone(),
            masks: spec.masks.clone(),
            files: spec
                .files
                .iter()
                .map(|f| (f.sandbox.clone(), f.bytes.len() as u64))
                .collect(),
            hostname: spec.hostname.clone(),
            workdir: spec.workdir.clone(),
            env: spec.env.clone(),
            command: spec.command.clone(),
            tmpfs_size: spec.tmpfs_size,
            listen: self.listen,
            ids: self.ids.clone(),
            console: self.console.clone(),
        };
        let json = serde_json::to_vec(&header).map_err(|e| SandboxError::Spec(e.to_string()))?;
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend(json);
        for file in &spec.files {
            bytes.extend_from_slice(&file.bytes);
        }
        Ok(bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Handoff, SandboxError> {
        let bad = |why: &str| SandboxError::Spec(why.to_owned());
        let (len, rest) = bytes.split_at_checked(8).ok_or_else(|| bad("too short"))?;
        let len = u64::from_le_bytes(len.try_into().map_err(|_| bad("too short"))?);
        let len = usize::try_from(len).map_err(|_| bad("header too long"))?;
        let (json, mut rest) = rest
            .split_at_checked(len)
            .ok_or_else(|| bad("header cut"))?;
        let header: Header = serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
        let mut files = Vec::with_capacity(header.files.len());
        for (sandbox, len) in header.files {
            let len = usize::try_from(len).map_err(|_| bad("file too long"))?;
            let (content, tail) = rest.split_at_checked(len).ok_or_else(|| bad("file cut"))?;
            files.push(NewFile::new(sandbox, content));
            rest = tail;
        }
        Ok(Handoff {
            spec: Spec {
                base: header.base,
                layers: header.layers,
                writable: header.writable,
                cgroups: header.cgroups,
                binds: header.binds,
                masks: header.masks,
                files,
                hostname: header.hostname,
                workdir: header.workdir,
                env: header.env,
                command: header.command,
                tmpfs_size: header.tmpfs_size,
            },
            scratch: header.scratch,
            listen: header.listen,
            ids: header.ids,
            console: header.console,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handoff_round_trips_with_its_files_and_refuses_a_cut_one() {
        let spec = Spec::new("/", vec!["true".into()])
            .files(vec![
                NewFile::new("/etc/a", b"first".to_vec()),
                NewFile::new("/etc/b", vec![0, 255, 10]),
            ])
            .env(vec![("K".into(), "V".into())]);
        let handoff = Handoff {
            spec,
            scratch: PathBuf::from("/run/x"),
            listen: "127.0.0.1:3128".parse().unwrap(),
            ids: IdMapping::for_this_process(),
            console: Some(Console {
                path: PathBuf::from("/dev/pts/3"),
                streams: Terminals {
                    stdin: false,
                    stdout: true,
                    stderr: true,
                },
            }),
        };
        let bytes = handoff.to_bytes().unwrap();
        assert_eq!(Handoff::from_bytes(&bytes).unwrap(), handoff);
        for cut in [0, 7, 8, 20, bytes.len() - 1] {
            assert!(Handoff::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

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
