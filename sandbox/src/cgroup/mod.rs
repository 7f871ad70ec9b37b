//! Resource limits for one sandbox phase: a ceiling on memory and on the
//! number of processes, enforced by the kernel's cgroups.
//!
//! ## cgroup v2 first, v1 per controller
//!
//! On cgroup v2 (the unified hierarchy: `/sys/fs/cgroup` on current
//! distributions, `/sys/fs/cgroup/unified` on hybrid ones) a phase gets one
//! directory next to tollgate's own cgroup, holding `memory.max`,
//! `memory.swap.max` and `pids.max`. A controller can only be used there if
//! it is listed in our cgroup's `cgroup.controllers`, i.e. the host is not
//! still binding it to a v1 hierarchy and whoever started us delegated it.
//!
//! Every controller v2 cannot take falls back, on its own, to its cgroup v1
//! hierarchy (`/sys/fs/cgroup/memory`, `/sys/fs/cgroup/pids`), where the
//! phase gets one directory per hierarchy. Either way the phase's cgroups
//! are created *below tollgate's own cgroup* of that hierarchy (read from
//! `/proc/self/cgroup`, located through `/proc/self/mountinfo`), so every
//! limit already placed on tollgate keeps applying to the phase.
//!
//! A limit neither can enforce is not skipped in silence: [`Report`] says
//! which one and why, and [`Report::warnings`] words it for the operator.
//!
//! ## The no-internal-process rule
//!
//! cgroup v2 lets a non-root cgroup hand controllers to its children
//! (`cgroup.subtree_control`) only while it holds no process itself;
//! otherwise the write fails with `EBUSY`. tollgate usually lives in such a
//! cgroup (a login session, a service, a container). Like crun, we then move
//! this whole process into a leaf, `<own>/tollgate-host-<pid>`, enable the
//! controllers in `<own>` and create the phase's cgroup as a sibling of that
//! leaf. If other processes share `<own>` with us the write still fails:
//! moving processes we do not own is not ours to do, so the limit is
//! reported as not enforced, with the fix (start tollgate in a cgroup of its
//! own).
//!
//! ## Names and leftovers
//!
//! A phase's directory is `tollgate-<pid>-<name>`, `<pid>` being the
//! tollgate process that made it. A tollgate killed before it could clean up
//! leaves that directory behind; [`cleanup_stale`] (which every sandbox
//! calls while its command runs) removes such directories once their owner
//! is gone and they are empty, so concurrent runs never lose a cgroup they
//! are about to use.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use tracing::{debug, info, warn};

use self::dir::CgroupDir;
use self::files::*;
use self::hierarchy::Hierarchies;
use self::v2::{v2_readiness, V2Refusal};

mod dir;
mod files;
mod hierarchy;
#[cfg(test)]
mod tests;
mod v2;

/// Longest phase name accepted: keeps `tollgate-<pid>-<name>` far below
/// the 255 bytes a directory name may have.
const MAX_NAME_LEN: usize = 200;
/// How often, and how far apart, [`PhaseCgroup::kill_all`] looks for
/// survivors, and `Drop` retries `rmdir` while dying tasks keep a cgroup
/// busy: at most two seconds each.
const SETTLE_ROUNDS: u32 = 200;
const SETTLE_PAUSE: Duration = Duration::from_millis(10);

/// The limits asked for one phase; `None` means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory (RAM, and swap is held to nothing beyond it).
    pub memory: Option<u64>,
    /// Processes and threads alive at once.
    pub pids: Option<u64>,
}

/// How one limit is enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// By the phase's cgroup in the unified (v2) hierarchy.
    CgroupV2,
    /// By the phase's cgroup in the controller's own v1 hierarchy.
    CgroupV1,
    /// The limit is not enforced; the text says why, in a way an operator
    /// can act on.
    NotEnforced(String),
}

/// What [`PhaseCgroup::create`] could enforce, limit by limit: `None` where
/// no limit was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub memory: Option<Enforcement>,
    pub pids: Option<Enforcement>,
    asked: Limits,
    /// Set when the memory limit binds RAM only: the kernel does not
    /// account swap per cgroup and the host has swap to escape into.
    swap_escape: Option<PathBuf>,
}

/// The cgroup directories of one phase. Dropping it kills whatever still
/// runs in them and removes them.
#[derive(Debug)]
pub struct PhaseCgroup {
    dirs: Vec<CgroupDir>,
}

/// Why a phase's cgroups could not be set up or joined; each message says
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("phase name {0:?} cannot name a cgroup: use 1 to 200 of A-Z a-z 0-9 . _ -")]
    BadName(String),
    #[error("cannot read {path}: {source}; tollgate needs /proc mounted to find its cgroups")]
    Proc {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {0} already exists: a phase of that name still runs or left processes behind; kill them and rmdir it")]
    Exists(PathBuf),
    #[error("cannot create cgroup {path}: {source}; enforcing limits needs root, or on cgroup v2 a cgroup delegated to tollgate (e.g. `systemd-run --user --scope -p Delegate=yes tollgate ...`)")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value} to {path}: {source}; check that limit in the environment file")]
    SetLimit {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot join cgroup {path}: {source}; it must exist and be writable until the phase has started")]
    Join {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl CgroupError {
    /// Whether the kernel refused us cgroups here (no root, no delegation,
    /// read-only cgroupfs): limits are then reported as not enforced rather
    /// than failing the run.
    fn is_denied(&self) -> bool {
        let Self::Create { source, .. } = self else {
            return false;
        };
        [Errno::EACCES, Errno::EPERM, Errno::EROFS]
            .iter()
            .any(|errno| source.raw_os_error() == Some(*errno as i32))
    }
}

impl Limits {
    fn controllers(&self) -> Vec<Controller> {
        let mut wanted = Vec::new();
        if self.memory.is_some() {
            wanted.push(Controller::Memory);
        }
        if self.pids.is_some() {
            wanted.push(Controller::Pids);
        }
        wanted
    }
}

impl Report {
    fn asked(limits: Limits) -> Self {
        Report {
            memory: None,
            pids: None,
            asked: limits,
            swap_escape: None,
        }
    }

    fn set(&mut self, controller: Controller, enforcement: Enforcement) {
        match controller {
            Controller::Memory => self.memory = Some(enforcement),
            Controller::Pids => self.pids = Some(enforcement),
        }
    }

    /// One line per limit that is not (fully) enforced, for the terminal
    /// and the run's log; empty when every limit asked for holds.
    pub fn warnings(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(bytes) = self.asked.memory {
            let asked = format_bytes(bytes);
            if let Some(Enforcement::NotEnforced(why)) = &self.memory {
                lines.push(format!("the memory limit ({asked}) is not enforced: {why}"));
            } else if let Some(missing) = &self.swap_escape {
                lines.push(format!(
                    "the memory limit ({asked}) holds for RAM only: this kernel does not account swap per cgroup ({} is missing), so the phase can use swap beyond it",
                    missing.display()
                ));
            }
        }
        if let (Some(count), Some(Enforcement::NotEnforced(why))) = (self.asked.pids, &self.pids) {
            lines.push(format!("the pids limit ({count}) is not enforced: {why}"));
        }
        lines
    }
}

impl PhaseCgroup {
    /// Creates the phase's cgroup(s) with the limits written, below
    /// tollgate's own cgroups. `name` is unique per phase run, made of
    /// `[A-Za-z0-9._-]`. No limits asked → no directories, empty procs list.
    ///
    /// A limit the host cannot enforce is not an error: the [`Report`] says
    /// so. Errors are for what should have worked and did not.
    ///
    /// On cgroup v2 this may move the whole tollgate process into
    /// `<own cgroup>/tollgate-host-<pid>` (see the module documentation);
    /// processes tollgate starts afterwards are born there.
    pub fn create(name: &str, limits: &Limits) -> Result<(PhaseCgroup, Report), CgroupError> {
        check_name(name)?;
        let mut cgroup = PhaseCgroup { dirs: Vec::new() };
        let mut report = Report::asked(*limits);
        let wanted = limits.controllers();
        if wanted.is_empty() {
            return Ok((cgroup, report));
        }
        let host = Hierarchies::detect()?;
        let dir_name = phase_dir_name(name);

        let mut on_v2 = Vec::new();
        let mut refused = Vec::new();
        for (controller, readiness) in v2_readiness(host.v2.as_deref(), &wanted) {
            match readiness {
                Ok(()) => on_v2.push(controller),
                Err(refusal) => refused.push((controller, refusal)),
            }
        }
        if let Some(base) = host.v2.as_deref().filter(|_| !on_v2.is_empty()) {
            let path = base.join(&dir_name);
            cgroup.place(path, Version::V2, &on_v2, limits, &mut report)?;
        }
        for (controller, refusal) in refused {
            let Some(parent) = host.v1(controller) else {
                let why = refusal.without_v1(controller);
                report.set(controller, Enforcement::NotEnforced(why));
                continue;
            };
            if let V2Refusal::Unusable(why) = &refusal {
                info!("cgroup v2 cannot take the {controller} controller ({why}); using cgroup v1");
            }
            let path = parent.join(&dir_name);
            cgroup.place(path, Version::V1, &[controller], limits, &mut report)?;
        }
        Ok((cgroup, report))
    }

    /// The files the sandbox's PID 1 writes "0" into to join (one per
    /// hierarchy; see [`CgroupDir::join_file`]). PID 1 does that itself,
    /// before it starts anything, so no process of the phase ever runs
    /// outside.
    pub fn join_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(CgroupDir::join_file).collect()
    }

    /// Kills every process still in the phase's cgroups and waits (at most
    /// two seconds) until they are gone: `cgroup.kill` on v2 (Linux 5.14+),
    /// else SIGKILL to each pid in `cgroup.procs` until it reads empty.
    /// What survives is logged; `Drop` then leaves that directory behind.
    pub fn kill_all(&self) {
        for dir in &self.dirs {
            dir.kill_all();
        }
    }

    /// Whether the memory limit was hit and the kernel's OOM killer killed
    /// a process of the phase (v2 `memory.events`, v1 `memory.oom_control`,
    /// both `oom_kill`): tells "ran out of memory" apart from "crashed".
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = self.memory_dir() else {
            return false;
        };
        let file = match dir.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        read_keyed(&dir.path.join(file), "oom_kill").is_some_and(|kills| kills > 0)
    }

    /// Peak memory use of the phase when the kernel reports it (v2
    /// `memory.peak`, Linux 5.19+; v1 `memory.max_usage_in_bytes`), for
    /// sizing the limit.
    pub fn memory_peak(&self) -> Option<u64> {
        let dir = self.memory_dir()?;
        let file = match dir.version {
            Version::V2 => "memory.peak",
            Version::V1 => "memory.max_usage_in_bytes",
        };
        read_number(&dir.path.join(file))
    }

    fn memory_dir(&self) -> Option<&CgroupDir> {
        self.dirs.iter().find(|dir| dir.has(Controller::Memory))
    }

    /// Creates one directory for `controllers` and writes their limits;
    /// records in `report` how they are enforced.
    fn place(
        &mut self,
        path: PathBuf,
        version: Version,
        controllers: &[Controller],
        limits: &Limits,
        report: &mut Report,
    ) -> Result<(), CgroupError> {
        let enforcement = match make_cgroup_dir(&path) {
            Ok(()) => {
                let dir = CgroupDir {
                    path,
                    version,
                    controllers: controllers.to_vec(),
                };
                let written = dir.write_limits(limits, report);
                // Kept even if a write failed: dropping `self` removes it.
                self.dirs.push(dir);
                written?;
                version.enforcement()
            }
            Err(denied) if denied.is_denied() => Enforcement::NotEnforced(denied.to_string()),
            Err(error) => return Err(error),
        };
        for controller in controllers {
            report.set(*controller, enforcement.clone());
        }
        Ok(())
    }
}

impl Drop for PhaseCgroup {
    /// Kills what is left, then removes each directory, retrying briefly:
    /// a task that has been killed keeps its cgroup busy until it is gone.
    fn drop(&mut self) {
        self.kill_all();
        for dir in &self.dirs {
            dir.remove();
        }
    }
}

/// Joins the cgroups: writes "0" to each of [`PhaseCgroup::join_files`]
/// (the kernel reads 0 as "the writer"). Called by the sandbox's PID 1, a
/// single-threaded process, before it starts anything, while the host's
/// cgroup filesystem is still mounted in its view, so every process of the
/// phase is born inside (the stage, which only waits, stays out).
pub fn join(files: &[PathBuf]) -> Result<(), CgroupError> {
    for path in files {
        write_file(path, "0").map_err(|source| CgroupError::Join {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Removes the empty phase cgroups (and v2 host leaves) that a tollgate
/// killed before it could clean up left below our own cgroups. Only
/// directories whose owning tollgate process is gone, made at least
/// [`crate::STALE_AFTER`] ago, are touched, and
/// `rmdir` only ever removes an empty cgroup, so this is safe next to
/// concurrent runs. Ones that still hold processes are logged, not killed:
/// an owner pid from another PID namespace may merely look dead.
pub fn cleanup_stale() {
    match Hierarchies::detect() {
        Ok(host) => cleanup_stale_in(&host),
        Err(error) => debug!("no stale cgroups looked for: {error}"),
    }
}

fn cleanup_stale_in(host: &Hierarchies) {
    let mut parents: Vec<&PathBuf> = Vec::new();
    for parent in [&host.v2, &host.v1_memory, &host.v1_pids]
        .into_iter()
        .flatten()
    {
        if !parents.contains(&parent) {
            parents.push(parent);
        }
    }
    for parent in parents {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(owner) = name.to_str().and_then(owner_pid) else {
                continue;
            };
            if !process_exists(owner) && old_enough_to_be_stale(&entry.path()) {
                remove_stale(&entry.path(), owner);
            }
        }
    }
}

fn remove_stale(path: &Path, owner: i32) {
    match fs::remove_dir(path) {
        Ok(()) => info!("removed stale cgroup {} of tollgate pid {owner}", path.display()),
        Err(error) if is_errno(&error, Errno::EBUSY) => warn!(
            "stale cgroup {} (its tollgate, pid {owner}, is gone) still holds processes: kill those in its cgroup.procs, then rmdir it",
            path.display()
        ),
        Err(error) => debug!("cannot remove stale cgroup {}: {error}", path.display()),
    }
}

/// The two controllers tollgate sets limits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    Memory,
    Pids,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

impl Version {
    fn enforcement(self) -> Enforcement {
        match self {
            Version::V1 => Enforcement::CgroupV1,
            Version::V2 => Enforcement::CgroupV2,
        }
    }
}
