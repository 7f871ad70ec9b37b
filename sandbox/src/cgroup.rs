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
//! leaves that directory behind; [`cleanup_stale`] removes such directories
//! once their owner is gone and they are empty, so concurrent runs never
//! lose a cgroup they are about to use.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, info, warn};

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
                lines.push(format!("limits.memory ({asked}) is not enforced: {why}"));
            } else if let Some(missing) = &self.swap_escape {
                lines.push(format!(
                    "limits.memory ({asked}) holds for RAM only: this kernel does not account swap per cgroup ({} is missing), so the phase can use swap beyond it",
                    missing.display()
                ));
            }
        }
        if let (Some(count), Some(Enforcement::NotEnforced(why))) = (self.asked.pids, &self.pids) {
            lines.push(format!("limits.pids ({count}) is not enforced: {why}"));
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
        cleanup_stale_in(&host);
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

    /// The `cgroup.procs` files the sandbox's init writes "0" into to join
    /// (one per hierarchy). init does that itself, before it starts
    /// anything, so no process of the phase ever runs outside.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(CgroupDir::procs_file).collect()
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

/// Joins the cgroups: writes "0" to each procs file (the kernel reads 0 as
/// "the writing process"). Called by the sandbox's init before it starts
/// anything, while the host's cgroup filesystem is still mounted in its
/// view, so every process of the phase is born inside.
pub fn join(procs_files: &[PathBuf]) -> Result<(), CgroupError> {
    for path in procs_files {
        write_file(path, "0").map_err(|source| CgroupError::Join {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Removes the empty phase cgroups (and v2 host leaves) that a tollgate
/// killed before it could clean up left below our own cgroups. Only
/// directories whose owning tollgate process is gone are touched, and
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
            if !process_exists(owner) {
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

/// One directory of a phase: one per v1 hierarchy, or the single v2 one.
#[derive(Debug)]
struct CgroupDir {
    path: PathBuf,
    version: Version,
    controllers: Vec<Controller>,
}

impl CgroupDir {
    fn has(&self, controller: Controller) -> bool {
        self.controllers.contains(&controller)
    }

    fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Writes the limits of this directory's controllers. A memory limit
    /// that swap can bypass is not one: swap is capped too (v2
    /// `memory.swap.max` = 0, v1 `memory.memsw.limit_in_bytes` = the
    /// limit) where the kernel accounts it, and the report says so where
    /// it does not and the host has swap.
    fn write_limits(&self, limits: &Limits, report: &mut Report) -> Result<(), CgroupError> {
        if let (true, Some(bytes)) = (self.has(Controller::Memory), limits.memory) {
            let bytes = bytes.to_string();
            let (limit, swap, swap_value) = match self.version {
                Version::V2 => ("memory.max", "memory.swap.max", "0"),
                Version::V1 => (
                    "memory.limit_in_bytes",
                    "memory.memsw.limit_in_bytes",
                    bytes.as_str(),
                ),
            };
            // v1: memory+swap may never be below memory alone, so memory first.
            self.set(limit, &bytes)?;
            if !self.set_if_present(swap, swap_value)? && host_has_swap() {
                report.swap_escape = Some(self.path.join(swap));
            }
        }
        if let (true, Some(count)) = (self.has(Controller::Pids), limits.pids) {
            self.set("pids.max", &count.to_string())?;
        }
        Ok(())
    }

    fn set(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.path.join(file);
        write_file(&path, value).map_err(|source| CgroupError::SetLimit {
            path,
            value: value.to_owned(),
            source,
        })
    }

    /// Like `set`, for a file the kernel may lack; `Ok(false)` if it does.
    fn set_if_present(&self, file: &str, value: &str) -> Result<bool, CgroupError> {
        match self.set(file, value) {
            Ok(()) => Ok(true),
            Err(CgroupError::SetLimit { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// The processes in this cgroup, as pids of our PID namespace (those
    /// outside it read as 0 and are left out).
    fn pids(&self) -> io::Result<Vec<Pid>> {
        let procs = fs::read_to_string(self.procs_file())?;
        Ok(procs
            .lines()
            .filter_map(|line| line.trim().parse::<i32>().ok())
            .filter(|pid| *pid > 0)
            .map(Pid::from_raw)
            .collect())
    }

    fn kill_all(&self) {
        if self.version == Version::V2 {
            self.write_cgroup_kill();
        }
        for _ in 0..SETTLE_ROUNDS {
            let pids = match self.pids() {
                Ok(pids) => pids,
                Err(error) if error.kind() == io::ErrorKind::NotFound => return,
                Err(error) => {
                    warn!(
                        "cannot list the processes of cgroup {}: {error}",
                        self.path.display()
                    );
                    return;
                }
            };
            if pids.is_empty() {
                return;
            }
            // Also the fallback for kernels without cgroup.kill. A pid read
            // here may exit and be reused before the signal lands; the
            // phase's PID namespace (init killed, all killed) is the main
            // line of defence, this sweep the backstop.
            for pid in pids {
                let _ = kill(pid, Signal::SIGKILL);
            }
            thread::sleep(SETTLE_PAUSE);
        }
        warn!(
            "processes survive SIGKILL in cgroup {} (stuck in the kernel?); it is left behind",
            self.path.display()
        );
    }

    /// Asks the kernel to SIGKILL everything in the cgroup, including what
    /// is forked meanwhile (cgroup v2, Linux 5.14+). `false` if it cannot.
    fn write_cgroup_kill(&self) -> bool {
        let path = self.path.join("cgroup.kill");
        match write_file(&path, "1") {
            Ok(()) => true,
            Err(error) => {
                if error.kind() != io::ErrorKind::NotFound {
                    debug!("cannot write {}: {error}", path.display());
                }
                false
            }
        }
    }

    fn remove(&self) {
        let mut last_error = None;
        for _ in 0..SETTLE_ROUNDS {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(error) if error.kind() == io::ErrorKind::NotFound => return,
                Err(error) if is_errno(&error, Errno::EBUSY) => last_error = Some(error),
                Err(error) => {
                    last_error = Some(error);
                    break;
                }
            }
            thread::sleep(SETTLE_PAUSE);
        }
        if let Some(error) = last_error {
            warn!(
                "cannot remove cgroup {}: {error}; a later tollgate run removes it once it is empty",
                self.path.display()
            );
        }
    }
}

/// Why cgroup v2 does not take a controller.
#[derive(Debug, Clone, PartialEq, Eq)]
enum V2Refusal {
    /// No v2 hierarchy is mounted (or our cgroup is not visible in it).
    NoHierarchy,
    /// Our v2 cgroup (this directory) is not offered the controller: the
    /// host binds it to v1, or it was not delegated to us.
    NotOffered(PathBuf),
    /// It offers it, but we cannot enable it for our children; says why.
    Unusable(String),
}

impl V2Refusal {
    /// The reason for a limit enforced nowhere, v1 having no hierarchy for
    /// the controller either.
    fn without_v1(&self, controller: Controller) -> String {
        match self {
            V2Refusal::NoHierarchy => {
                format!("this host has no cgroup {controller} controller (cgroup v2 or v1)")
            }
            V2Refusal::NotOffered(base) => format!(
                "tollgate's cgroup {} is not offered the {controller} controller (not in its cgroup.controllers: delegate it, e.g. systemd's Delegate=yes), and there is no cgroup v1 {controller} hierarchy",
                base.display()
            ),
            V2Refusal::Unusable(why) => {
                format!("{why}; and there is no cgroup v1 {controller} hierarchy to fall back to")
            }
        }
    }
}

/// For each wanted controller, whether our v2 cgroup `base` can pass it
/// to a phase cgroup, enabling it in `base/cgroup.subtree_control` if
/// needed.
fn v2_readiness(
    base: Option<&Path>,
    wanted: &[Controller],
) -> Vec<(Controller, Result<(), V2Refusal>)> {
    let Some(base) = base else {
        return wanted
            .iter()
            .map(|c| (*c, Err(V2Refusal::NoHierarchy)))
            .collect();
    };
    let listed_path = base.join("cgroup.controllers");
    let listed = match fs::read_to_string(&listed_path) {
        Ok(listed) => listed,
        Err(error) => {
            let why = format!("cannot read {}: {error}", listed_path.display());
            let refusal = V2Refusal::Unusable(why);
            return wanted.iter().map(|c| (*c, Err(refusal.clone()))).collect();
        }
    };
    let (offered, absent): (Vec<Controller>, Vec<Controller>) =
        wanted.iter().partition(|c| has_word(&listed, c.name()));
    let enabled = if offered.is_empty() {
        Ok(())
    } else {
        let names: Vec<&str> = offered.iter().map(|c| c.name()).collect();
        enable_controllers(base, &names).map_err(V2Refusal::Unusable)
    };
    offered
        .into_iter()
        .map(|c| (c, enabled.clone()))
        .chain(
            absent
                .into_iter()
                .map(|c| (c, Err(V2Refusal::NotOffered(base.to_owned())))),
        )
        .collect()
}

/// Enables the controllers `names` in `base/cgroup.subtree_control`. On
/// `EBUSY` (the no-internal-process rule) it moves this process into a leaf
/// of `base` and tries once more. `Err` says why v2 cannot be used.
fn enable_controllers(base: &Path, names: &[&str]) -> Result<(), String> {
    let control = base.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&control)
        .map_err(|error| format!("cannot read {}: {error}", control.display()))?;
    let request: Vec<String> = names
        .iter()
        .filter(|name| !has_word(&enabled, name))
        .map(|name| format!("+{name}"))
        .collect();
    if request.is_empty() {
        return Ok(());
    }
    let request = request.join(" ");
    let cannot = |error: io::Error| {
        format!(
            "cannot write \"{request}\" to {}: {error}",
            control.display()
        )
    };
    match write_file(&control, &request) {
        Err(error) if is_errno(&error, Errno::EBUSY) => {}
        written => return written.map_err(cannot),
    }
    move_into_leaf(base)?;
    write_file(&control, &request).map_err(|error| {
        if is_errno(&error, Errno::EBUSY) {
            format!(
                "cgroup {} holds processes other than tollgate, and cgroup v2 lets a cgroup with processes of its own pass no controllers to its children: start tollgate in a cgroup of its own (e.g. `systemd-run --scope -p Delegate=yes tollgate ...`)",
                base.display()
            )
        } else {
            cannot(error)
        }
    })
}

/// Moves this whole process (all its threads) into `base/tollgate-host-<pid>`.
fn move_into_leaf(base: &Path) -> Result<(), String> {
    let leaf = base.join(host_leaf_name());
    match fs::create_dir(&leaf) {
        Err(error) if error.kind() != io::ErrorKind::AlreadyExists => {
            return Err(format!("cannot create cgroup {}: {error}", leaf.display()));
        }
        _ => {}
    }
    let procs = leaf.join("cgroup.procs");
    write_file(&procs, "0")
        .map_err(|error| format!("cannot move tollgate into {}: {error}", leaf.display()))?;
    info!(
        "moved tollgate into cgroup {} so that {} can pass controllers to phase cgroups (cgroup v2 allows no processes in a cgroup that does)",
        leaf.display(),
        base.display()
    );
    Ok(())
}

/// Where tollgate's own cgroups are: the directory of our cgroup in the v2
/// hierarchy and in the v1 memory and pids hierarchies, when mounted and
/// our cgroup is visible in the mount.
#[derive(Debug, Default, PartialEq, Eq)]
struct Hierarchies {
    /// On v2 this is the cgroup we *started* in: if we already moved into
    /// our host leaf, its parent.
    v2: Option<PathBuf>,
    v1_memory: Option<PathBuf>,
    v1_pids: Option<PathBuf>,
}

impl Hierarchies {
    fn detect() -> Result<Self, CgroupError> {
        let mountinfo = read_proc(Path::new("/proc/self/mountinfo"))?;
        let membership = read_proc(Path::new("/proc/self/cgroup"))?;
        let mut host = Self::from_proc(&mountinfo, &membership);
        host.v2 = host.v2.map(without_host_leaf);
        Ok(host)
    }

    /// Joins `/proc/self/cgroup` (which cgroup, as a path from each
    /// hierarchy's root) with `/proc/self/mountinfo` (where each hierarchy,
    /// or a subtree of it, is mounted).
    fn from_proc(mountinfo: &str, membership: &str) -> Self {
        let mounts = parse_mountinfo(mountinfo);
        let memberships = parse_membership(membership);
        let v2 = memberships
            .iter()
            .find(|m| m.hierarchy == "0")
            .and_then(|m| own_dir(&mounts, m.path, |mount| mount.fstype == "cgroup2"));
        let v1 = |controller: Controller| {
            memberships
                .iter()
                .find(|m| m.hierarchy != "0" && m.controllers.contains(&controller.name()))
                .and_then(|m| {
                    own_dir(&mounts, m.path, |mount| {
                        mount.fstype == "cgroup" && mount.has_option(controller.name())
                    })
                })
        };
        Hierarchies {
            v2,
            v1_memory: v1(Controller::Memory),
            v1_pids: v1(Controller::Pids),
        }
    }

    fn v1(&self, controller: Controller) -> Option<&PathBuf> {
        match controller {
            Controller::Memory => self.v1_memory.as_ref(),
            Controller::Pids => self.v1_pids.as_ref(),
        }
    }
}

/// One line of `/proc/self/mountinfo`, the fields we use.
#[derive(Debug)]
struct Mount {
    /// The directory of the filesystem mounted here (for cgroupfs: the
    /// cgroup the mount shows as its root).
    root: PathBuf,
    mountpoint: PathBuf,
    fstype: String,
    super_options: String,
}

impl Mount {
    fn has_option(&self, option: &str) -> bool {
        self.super_options.split(',').any(|o| o == option)
    }
}

/// Fields: id, parent, major:minor, root, mount point, options, optional
/// fields ended by "-", then type, source, super options. Lines that do
/// not parse are skipped.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let head: Vec<&str> = head.split(' ').collect();
            let mut tail = tail.split(' ');
            Some(Mount {
                root: PathBuf::from(unescape_mountinfo(head.get(3)?)),
                mountpoint: PathBuf::from(unescape_mountinfo(head.get(4)?)),
                fstype: tail.next()?.to_owned(),
                super_options: tail.nth(1)?.to_owned(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        let escaped = tail
            .get(..3)
            .filter(|digits| first == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .map(|digits| digits.iter().fold(0u32, |n, d| n * 8 + u32::from(d - b'0')))
            .and_then(|value| u8::try_from(value).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                rest = tail.get(3..).unwrap_or_default();
            }
            None => {
                out.push(first);
                rest = tail;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controllers:path`; the
/// v2 line is `0::path`.
#[derive(Debug)]
struct Membership<'a> {
    hierarchy: &'a str,
    controllers: Vec<&'a str>,
    path: &'a str,
}

fn parse_membership(text: &str) -> Vec<Membership<'_>> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let hierarchy = fields.next()?;
            let controllers = fields.next()?;
            let path = fields.next()?;
            Some(Membership {
                hierarchy,
                controllers: controllers.split(',').filter(|c| !c.is_empty()).collect(),
                path,
            })
        })
        .collect()
}

/// The directory of cgroup `path` under the first mount of its hierarchy
/// that shows it: the mount point plus `path` relative to the mount's root.
/// `None` if no such mount shows it (a container seeing only a subtree).
fn own_dir(mounts: &[Mount], path: &str, hierarchy: impl Fn(&Mount) -> bool) -> Option<PathBuf> {
    mounts.iter().filter(|m| hierarchy(m)).find_map(|mount| {
        let relative = Path::new(path).strip_prefix(&mount.root).ok()?;
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return None;
        }
        if relative.as_os_str().is_empty() {
            Some(mount.mountpoint.clone())
        } else {
            Some(mount.mountpoint.join(relative))
        }
    })
}

/// Our v2 cgroup as it was before we moved into our host leaf.
fn without_host_leaf(own: PathBuf) -> PathBuf {
    match (own.file_name(), own.parent()) {
        (Some(leaf), Some(parent)) if leaf.to_str() == Some(host_leaf_name().as_str()) => {
            parent.to_path_buf()
        }
        _ => own,
    }
}

fn host_leaf_name() -> String {
    format!("tollgate-host-{}", std::process::id())
}

fn phase_dir_name(name: &str) -> String {
    format!("tollgate-{}-{name}", std::process::id())
}

/// The tollgate pid in a `tollgate-<pid>-<name>` or `tollgate-host-<pid>`
/// directory name.
fn owner_pid(dir_name: &str) -> Option<i32> {
    let rest = dir_name.strip_prefix("tollgate-")?;
    let rest = rest.strip_prefix("host-").unwrap_or(rest);
    let digits = rest.split('-').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|pid| *pid > 0)
}

fn process_exists(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None) != Err(Errno::ESRCH)
}

fn check_name(name: &str) -> Result<(), CgroupError> {
    let usable = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(usable) {
        return Err(CgroupError::BadName(name.to_owned()));
    }
    Ok(())
}

fn make_cgroup_dir(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir(path).map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => CgroupError::Exists(path.to_path_buf()),
        _ => CgroupError::Create {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Whether swap is active: without it, uncapped swap is no way around a
/// memory limit. Unreadable `/proc/swaps` counts as "maybe".
fn host_has_swap() -> bool {
    fs::read_to_string("/proc/swaps").map_or(true, |swaps| {
        swaps.lines().skip(1).any(|l| !l.trim().is_empty())
    })
}

fn read_proc(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Proc {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a cgroup control file in one write(2). Never creates the file:
/// a missing one reads as ENOENT, not as a confusing EPERM from cgroupfs.
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// A file holding one number, as `memory.peak`.
fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`key value` lines), as
/// `memory.events`.
fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        if name != key {
            return None;
        }
        value.trim().parse().ok()
    })
}

fn has_word(text: &str, word: &str) -> bool {
    text.split_whitespace().any(|w| w == word)
}

fn is_errno(error: &io::Error, errno: Errno) -> bool {
    error.raw_os_error() == Some(errno as i32)
}

/// Bytes the way an operator wrote them, in the largest binary unit that
/// fits: `8 GiB`, `1.5 GiB`, else exact bytes and an approximation.
fn format_bytes(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    let Some((size, unit)) = UNITS.iter().find(|(size, _)| bytes >= *size) else {
        return format!("{bytes} bytes");
    };
    let in_unit = bytes as f64 / *size as f64;
    if bytes % size == 0 {
        format!("{} {unit}", bytes / size)
    } else if (u128::from(bytes) * 10) % u128::from(*size) == 0 {
        format!("{in_unit:.1} {unit}")
    } else {
        format!("{bytes} bytes (~{in_unit:.1} {unit})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::time::Instant;

    const CHILD_PROCS: &str = "TOLLGATE_CGROUP_TEST_PROCS";
    const CHILD_SCRIPT: &str = "TOLLGATE_CGROUP_TEST_SCRIPT";
    const CHILD_BASE: &str = "TOLLGATE_CGROUP_TEST_BASE";
    const CHILD_CONTROLLER: &str = "TOLLGATE_CGROUP_TEST_CONTROLLER";

    fn is_root(test: &str) -> bool {
        let root = nix::unistd::geteuid().is_root();
        if !root {
            eprintln!("SKIP: needs root: {test} creates real cgroups");
        }
        root
    }

    /// Not a test: the child that `spawn_in` starts, a fresh process of
    /// this test binary that joins the cgroups with [`join`], exactly as
    /// the sandbox's init does, then becomes `sh -c SCRIPT`.
    #[test]
    #[ignore = "helper: runs only as the child process of other tests"]
    fn joined_child() {
        let (Some(procs), Ok(script)) =
            (std::env::var_os(CHILD_PROCS), std::env::var(CHILD_SCRIPT))
        else {
            return;
        };
        let procs: Vec<PathBuf> = std::env::split_paths(&procs).collect();
        join(&procs).expect("join the phase's cgroups");
        let error = Command::new("/bin/sh").arg("-c").arg(script).exec();
        panic!("exec /bin/sh: {error}");
    }

    /// This test binary, to run only `helper` (an ignored test) in a child.
    fn helper_command(helper: &str) -> Command {
        let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
        let helper = format!("{module}::{helper}");
        let mut command = Command::new(std::env::current_exe().unwrap());
        command.args([
            "--exact",
            &helper,
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ]);
        command
    }

    fn spawn_in(cgroup: &PhaseCgroup, script: &str) -> Child {
        helper_command("joined_child")
            .env(
                CHILD_PROCS,
                std::env::join_paths(cgroup.procs_files()).unwrap(),
            )
            .env(CHILD_SCRIPT, script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Not a test: a child that joins the v2 cgroup `CHILD_BASE`, as a
    /// tollgate started there would be, enables `CHILD_CONTROLLER` there
    /// for children, and prints the outcome.
    #[test]
    #[ignore = "helper: runs only as the child process of other tests"]
    fn v2_enabling_child() {
        let (Some(base), Ok(controller)) = (
            std::env::var_os(CHILD_BASE),
            std::env::var(CHILD_CONTROLLER),
        ) else {
            return;
        };
        let base = PathBuf::from(base);
        join(&[base.join("cgroup.procs")]).expect("join the base cgroup");
        match enable_controllers(&base, &[controller.as_str()]) {
            Ok(()) => println!("RESULT ok"),
            Err(why) => println!("RESULT {why}"),
        }
    }

    /// Runs `v2_enabling_child` in `base`: its RESULT, if it printed one.
    fn enable_from_child(base: &Path, controller: &str) -> Option<String> {
        let output = helper_command("v2_enabling_child")
            .env(CHILD_BASE, base)
            .env(CHILD_CONTROLLER, controller)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        // libtest may print the test's name on the same line first.
        let result = stdout.lines().find_map(|l| l.split_once("RESULT "));
        result.map(|(_, result)| result.to_owned())
    }

    fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < timeout, "timed out waiting until {what}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                panic!("child still running after {timeout:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn process_count(cgroup: &PhaseCgroup) -> usize {
        cgroup
            .dirs
            .iter()
            .map(|dir| dir.pids().unwrap().len())
            .max()
            .unwrap_or(0)
    }

    fn enforced(enforcement: &Option<Enforcement>) -> bool {
        matches!(
            enforcement,
            Some(Enforcement::CgroupV1 | Enforcement::CgroupV2)
        )
    }

    /// Removes a directory made by hand in a test, even if it fails.
    struct DirGuard(PathBuf);

    impl Drop for DirGuard {
        fn drop(&mut self) {
            let _ = fs::remove_dir(&self.0);
        }
    }

    #[test]
    fn no_limits_create_nothing() {
        let (cgroup, report) = PhaseCgroup::create("t-none", &Limits::default()).unwrap();
        assert!(cgroup.procs_files().is_empty());
        assert_eq!((report.memory.clone(), report.pids.clone()), (None, None));
        assert!(report.warnings().is_empty());
        let host = Hierarchies::detect().unwrap();
        for parent in [host.v2, host.v1_memory, host.v1_pids]
            .into_iter()
            .flatten()
        {
            assert!(!parent.join(phase_dir_name("t-none")).exists());
        }
    }

    #[test]
    fn pids_limit_refuses_forks_beyond_it() {
        if !is_root("pids_limit_refuses_forks_beyond_it") {
            return;
        }
        let limits = Limits {
            memory: None,
            pids: Some(5),
        };
        let (cgroup, report) = PhaseCgroup::create("t-pids", &limits).unwrap();
        assert!(enforced(&report.pids), "{report:?}");
        assert!(report.warnings().is_empty(), "{:?}", report.warnings());
        // sh itself is one of the 5: at most 4 of the 8 sleeps can start.
        // (dash gives up on a failed fork; bash retries for a while.)
        let script = "for i in 1 2 3 4 5 6 7 8; do sleep 30 & done; wait";
        let mut child = spawn_in(&cgroup, script);
        let dir = cgroup
            .dirs
            .iter()
            .find(|d| d.has(Controller::Pids))
            .unwrap();
        let refused = || read_keyed(&dir.path.join("pids.events"), "max").unwrap();
        wait_until("the kernel refuses a fork", Duration::from_secs(20), || {
            refused() >= 1
        });
        let running = dir.pids().unwrap().len();
        assert!(
            (1..=5).contains(&running),
            "{running} processes under pids.max 5"
        );
        drop(cgroup);
        assert!(!wait_exit(&mut child, Duration::from_secs(5)).success());
    }

    #[test]
    fn memory_limit_oom_kills_and_is_reported() {
        if !is_root("memory_limit_oom_kills_and_is_reported") {
            return;
        }
        let limit = 32 << 20;
        let limits = Limits {
            memory: Some(limit),
            pids: None,
        };
        let (cgroup, report) = PhaseCgroup::create("t-mem", &limits).unwrap();
        assert!(enforced(&report.memory), "{report:?}");
        assert!(!cgroup.oom_killed());
        // tail keeps the last 10 lines; /dev/zero has none, so it keeps all.
        let mut child = spawn_in(&cgroup, "head -c 200M /dev/zero | tail >/dev/null");
        let status = wait_exit(&mut child, Duration::from_secs(60));
        assert_eq!(status.code(), Some(128 + 9), "tail should die of SIGKILL");
        assert!(cgroup.oom_killed());
        let peak = cgroup.memory_peak().expect("kernel reports peak memory");
        assert!(
            peak > limit / 2 && peak <= limit,
            "peak {peak} vs limit {limit}"
        );
    }

    #[test]
    fn within_the_memory_limit_nothing_is_oom_killed() {
        if !is_root("within_the_memory_limit_nothing_is_oom_killed") {
            return;
        }
        let limits = Limits {
            memory: Some(64 << 20),
            pids: None,
        };
        let (cgroup, _) = PhaseCgroup::create("t-memok", &limits).unwrap();
        let mut child = spawn_in(&cgroup, "head -c 8M /dev/zero | tail >/dev/null");
        assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
        assert!(!cgroup.oom_killed());
        assert!(cgroup.memory_peak().is_some_and(|peak| peak >= 8 << 20));
    }

    #[test]
    fn kill_all_empties_the_cgroups() {
        if !is_root("kill_all_empties_the_cgroups") {
            return;
        }
        let limits = Limits {
            memory: Some(256 << 20),
            pids: Some(64),
        };
        let (cgroup, _) = PhaseCgroup::create("t-kill", &limits).unwrap();
        let mut child = spawn_in(&cgroup, "sleep 60 & sleep 60 & wait");
        wait_until("sh and 2 sleeps run", Duration::from_secs(10), || {
            process_count(&cgroup) == 3
        });
        cgroup.kill_all();
        // Not yet reaped: a zombie must not count as a member.
        for dir in &cgroup.dirs {
            assert_eq!(dir.pids().unwrap(), vec![], "{}", dir.path.display());
        }
        assert_eq!(
            wait_exit(&mut child, Duration::from_secs(5)).signal(),
            Some(9)
        );
    }

    #[test]
    fn drop_kills_and_removes_the_directories() {
        if !is_root("drop_kills_and_removes_the_directories") {
            return;
        }
        let limits = Limits {
            memory: Some(256 << 20),
            pids: Some(64),
        };
        let (cgroup, _) = PhaseCgroup::create("t-drop", &limits).unwrap();
        let dirs: Vec<PathBuf> = cgroup.dirs.iter().map(|d| d.path.clone()).collect();
        assert!(dirs.iter().all(|d| d.is_dir()));
        let mut child = spawn_in(&cgroup, "exec sleep 60");
        wait_until("sleep runs", Duration::from_secs(10), || {
            process_count(&cgroup) == 1
        });
        drop(cgroup);
        for dir in &dirs {
            assert!(!dir.exists(), "{} left behind", dir.display());
        }
        assert_eq!(
            wait_exit(&mut child, Duration::from_secs(5)).signal(),
            Some(9)
        );
    }

    #[test]
    fn one_procs_file_per_hierarchy() {
        if !is_root("one_procs_file_per_hierarchy") {
            return;
        }
        let limits = Limits {
            memory: Some(1 << 30),
            pids: Some(100),
        };
        let (cgroup, report) = PhaseCgroup::create("t-files", &limits).unwrap();
        let all = [&report.memory, &report.pids];
        let v2 = all.iter().any(|e| **e == Some(Enforcement::CgroupV2));
        let v1 = all
            .iter()
            .filter(|e| ***e == Some(Enforcement::CgroupV1))
            .count();
        let files = cgroup.procs_files();
        assert_eq!(files.len(), usize::from(v2) + v1, "{report:?}");
        assert!(files
            .iter()
            .all(|f| f.is_file() && f.ends_with("cgroup.procs")));
        let dir_name = phase_dir_name("t-files");
        assert!(files
            .iter()
            .all(|f| f.parent().is_some_and(|d| d.ends_with(&dir_name))));
        eprintln!(
            "this host: memory {:?}, pids {:?}, {files:?}",
            report.memory, report.pids
        );
    }

    #[test]
    fn limits_are_written() {
        if !is_root("limits_are_written") {
            return;
        }
        let limits = Limits {
            memory: Some(48 << 20),
            pids: Some(7),
        };
        let (cgroup, _) = PhaseCgroup::create("t-write", &limits).unwrap();
        for dir in &cgroup.dirs {
            let read = |file: &str| read_number(&dir.path.join(file));
            if dir.has(Controller::Pids) {
                assert_eq!(read("pids.max"), Some(7));
            }
            match (dir.has(Controller::Memory), dir.version) {
                (false, _) => {}
                (true, Version::V2) => {
                    assert_eq!(read("memory.max"), Some(48 << 20));
                    let swap = dir.path.join("memory.swap.max");
                    assert!(!swap.exists() || read("memory.swap.max") == Some(0));
                }
                (true, Version::V1) => {
                    assert_eq!(read("memory.limit_in_bytes"), Some(48 << 20));
                    let memsw = dir.path.join("memory.memsw.limit_in_bytes");
                    assert!(
                        !memsw.exists() || read("memory.memsw.limit_in_bytes") == Some(48 << 20)
                    );
                }
            }
        }
    }

    #[test]
    fn phase_cgroups_nest_under_our_own() {
        if !is_root("phase_cgroups_nest_under_our_own") {
            return;
        }
        let host = Hierarchies::detect().unwrap();
        let limits = Limits {
            memory: Some(1 << 30),
            pids: Some(100),
        };
        let (cgroup, _) = PhaseCgroup::create("t-nest", &limits).unwrap();
        for dir in &cgroup.dirs {
            let parent = dir.path.parent().unwrap();
            let own = match (dir.version, dir.controllers.as_slice()) {
                (Version::V2, _) => host.v2.as_deref(),
                (Version::V1, [Controller::Memory]) => host.v1_memory.as_deref(),
                (Version::V1, _) => host.v1_pids.as_deref(),
            };
            assert_eq!(Some(parent), own, "{}", dir.path.display());
        }
    }

    #[test]
    fn cgroup_kill_empties_a_v2_cgroup() {
        if !is_root("cgroup_kill_empties_a_v2_cgroup") {
            return;
        }
        let Some(base) = Hierarchies::detect().unwrap().v2 else {
            eprintln!("SKIP: no cgroup v2 hierarchy mounted");
            return;
        };
        let path = base.join(phase_dir_name("t-v2kill"));
        fs::create_dir(&path).unwrap();
        let cgroup = bare_v2(path.clone());
        let mut child = spawn_in(&cgroup, "sleep 60 & sleep 60 & wait");
        wait_until("sh and 2 sleeps run", Duration::from_secs(10), || {
            process_count(&cgroup) == 3
        });
        // cgroup.kill alone, no signal from us: Linux 5.14+.
        assert!(
            cgroup.dirs[0].write_cgroup_kill(),
            "no cgroup.kill in {}",
            path.display()
        );
        wait_until("cgroup.kill empties it", Duration::from_secs(5), || {
            process_count(&cgroup) == 0
        });
        assert_eq!(
            wait_exit(&mut child, Duration::from_secs(5)).signal(),
            Some(9)
        );
        drop(cgroup);
        assert!(!path.exists());
    }

    /// A bare v2 cgroup made for a test; dropping it kills what runs in
    /// it and in its children, and removes them all.
    struct V2Tree(PhaseCgroup);

    impl V2Tree {
        fn new(path: PathBuf) -> Self {
            fs::create_dir(&path).unwrap();
            V2Tree(bare_v2(path))
        }

        fn path(&self) -> &Path {
            &self.0.dirs[0].path
        }
    }

    impl Drop for V2Tree {
        fn drop(&mut self) {
            for entry in fs::read_dir(self.path()).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    drop(bare_v2(entry.path()));
                }
            }
        }
    }

    fn bare_v2(path: PathBuf) -> PhaseCgroup {
        let dir = CgroupDir {
            path,
            version: Version::V2,
            controllers: vec![],
        };
        PhaseCgroup { dirs: vec![dir] }
    }

    /// Takes back a controller the test enabled in a subtree_control.
    struct Disable(PathBuf, String);

    impl Drop for Disable {
        fn drop(&mut self) {
            let _ = write_file(&self.0, &format!("-{}", self.1));
        }
    }

    #[test]
    fn v2_no_internal_process_rule_is_met_by_moving_into_a_leaf() {
        if !is_root("v2_no_internal_process_rule_is_met_by_moving_into_a_leaf") {
            return;
        }
        let Some(own) = Hierarchies::detect().unwrap().v2 else {
            eprintln!("SKIP: no cgroup v2 hierarchy mounted");
            return;
        };
        // A controller tollgate does not use, so other tests are not disturbed.
        let offered = fs::read_to_string(own.join("cgroup.controllers")).unwrap();
        let spare = ["hugetlb", "misc", "rdma", "io", "cpu"];
        let Some(controller) = spare.into_iter().find(|c| has_word(&offered, c)) else {
            eprintln!("SKIP: cgroup v2 offers no controller but memory and pids here");
            return;
        };
        let own_control = own.join("cgroup.subtree_control");
        let was_enabled = has_word(&fs::read_to_string(&own_control).unwrap(), controller);
        enable_controllers(&own, &[controller]).unwrap();
        // Declared first, dropped last: once the cgroups below are gone.
        let _disable = (!was_enabled).then(|| Disable(own_control, controller.to_owned()));

        // Alone in its cgroup, tollgate moves into a leaf and succeeds.
        let alone = V2Tree::new(own.join(phase_dir_name("t-rule-alone")));
        let result = enable_from_child(alone.path(), controller);
        assert_eq!(result.as_deref(), Some("ok"));
        let control = fs::read_to_string(alone.path().join("cgroup.subtree_control")).unwrap();
        assert!(has_word(&control, controller), "{control:?}");
        let procs = fs::read_to_string(alone.path().join("cgroup.procs")).unwrap();
        assert_eq!(procs, "", "the child left its starting cgroup for a leaf");
        let leaves: Vec<PathBuf> = fs::read_dir(alone.path())
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.is_dir())
            .collect();
        assert_eq!(leaves.len(), 1, "{leaves:?}");
        let leaf_name = leaves[0].file_name().unwrap().to_str().unwrap();
        assert!(leaf_name.starts_with("tollgate-host-"), "{leaf_name}");
        // Its tollgate is gone: the empty leaf is stale.
        let tree = Hierarchies {
            v2: Some(alone.path().to_owned()),
            ..Hierarchies::default()
        };
        cleanup_stale_in(&tree);
        assert!(
            !leaves[0].exists(),
            "stale leaf {} kept",
            leaves[0].display()
        );

        // Sharing it with another process, tollgate is told why not.
        let shared = V2Tree::new(own.join(phase_dir_name("t-rule-shared")));
        let mut other = Command::new("sleep").arg("30").spawn().unwrap();
        let procs = shared.path().join("cgroup.procs");
        let moved = write_file(&procs, &other.id().to_string());
        let result = enable_from_child(shared.path(), controller);
        drop(shared);
        let _ = other.kill();
        let _ = other.wait();
        moved.unwrap();
        let result = result.unwrap_or_default();
        assert!(
            result.contains("holds processes other than tollgate"),
            "{result}"
        );
    }

    #[test]
    fn v2_controllers_not_offered_are_told_apart() {
        if !is_root("v2_controllers_not_offered_are_told_apart") {
            return;
        }
        let wanted = [Controller::Memory, Controller::Pids];
        let Some(own) = Hierarchies::detect().unwrap().v2 else {
            let all = v2_readiness(None, &wanted);
            assert!(all.iter().all(|(_, r)| *r == Err(V2Refusal::NoHierarchy)));
            return;
        };
        let offered = fs::read_to_string(own.join("cgroup.controllers")).unwrap();
        for (controller, readiness) in v2_readiness(Some(&own), &wanted) {
            let not_offered = readiness == Err(V2Refusal::NotOffered(own.clone()));
            assert_eq!(
                not_offered,
                !has_word(&offered, controller.name()),
                "{controller}"
            );
        }
    }

    #[test]
    fn cleanup_stale_removes_only_dead_owners_dirs() {
        if !is_root("cleanup_stale_removes_only_dead_owners_dirs") {
            return;
        }
        let host = Hierarchies::detect().unwrap();
        let Some(parent) = host
            .v1_pids
            .clone()
            .or(host.v2.clone())
            .or(host.v1_memory.clone())
        else {
            eprintln!("SKIP: no cgroup hierarchy mounted");
            return;
        };
        let mut gone = Command::new("true").spawn().unwrap();
        let dead = gone.id();
        gone.wait().unwrap();
        let stale = DirGuard(parent.join(format!("tollgate-{dead}-t-stale")));
        let stale_leaf = DirGuard(parent.join(format!("tollgate-host-{dead}")));
        let ours = DirGuard(parent.join(phase_dir_name("t-live")));
        for dir in [&stale, &stale_leaf, &ours] {
            fs::create_dir(&dir.0).unwrap();
        }
        cleanup_stale();
        assert!(!stale.0.exists() && !stale_leaf.0.exists());
        assert!(ours.0.is_dir(), "the cgroup of a live tollgate was removed");
    }

    #[test]
    fn join_names_the_file_it_cannot_write() {
        let missing = PathBuf::from("/nonexistent/tollgate-test/cgroup.procs");
        let error = join(&[missing]).unwrap_err();
        assert!(matches!(error, CgroupError::Join { .. }));
        let message = error.to_string();
        assert!(
            message.contains("/nonexistent/tollgate-test/cgroup.procs"),
            "{message}"
        );
        assert!(!message.contains('\n'));
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["", "a/b", "a:b", "x y", &"n".repeat(201)] {
            let error = PhaseCgroup::create(name, &Limits::default()).unwrap_err();
            assert!(matches!(error, CgroupError::BadName(_)), "{name:?}");
        }
        assert!(check_name("setup-1a2b.C_d").is_ok());
    }

    #[test]
    fn warnings_name_each_limit_not_enforced() {
        let mut report = Report::asked(Limits {
            memory: Some(8 << 30),
            pids: Some(4096),
        });
        let absent = V2Refusal::NoHierarchy.without_v1(Controller::Memory);
        report.set(Controller::Memory, Enforcement::NotEnforced(absent));
        report.set(Controller::Pids, Enforcement::CgroupV2);
        assert_eq!(
            report.warnings(),
            ["limits.memory (8 GiB) is not enforced: this host has no cgroup memory controller (cgroup v2 or v1)"]
        );
        report.set(Controller::Pids, Enforcement::NotEnforced("why".into()));
        assert_eq!(
            report.warnings()[1],
            "limits.pids (4096) is not enforced: why"
        );

        let not_offered = V2Refusal::NotOffered("/sys/fs/cgroup/a.scope".into());
        let why = not_offered.without_v1(Controller::Memory);
        assert!(why.contains("/sys/fs/cgroup/a.scope") && why.contains("Delegate=yes"));

        let unusable = V2Refusal::Unusable("cgroup /x holds processes".into());
        assert_eq!(
            unusable.without_v1(Controller::Pids),
            "cgroup /x holds processes; and there is no cgroup v1 pids hierarchy to fall back to"
        );
    }

    #[test]
    fn uncapped_swap_is_a_warning() {
        let mut report = Report::asked(Limits {
            memory: Some(32 << 20),
            pids: None,
        });
        report.set(Controller::Memory, Enforcement::CgroupV2);
        assert!(report.warnings().is_empty());
        report.swap_escape = Some(PathBuf::from("/sys/fs/cgroup/x/memory.swap.max"));
        let warnings = report.warnings();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("limits.memory (32 MiB) holds for RAM only"),
            "{warnings:?}"
        );
    }

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(format_bytes(8 << 30), "8 GiB");
        assert_eq!(format_bytes(512 << 20), "512 MiB");
        assert_eq!(format_bytes(1536 << 20), "1.5 GiB");
        assert_eq!(format_bytes(8_000_000_000), "8000000000 bytes (~7.5 GiB)");
        assert_eq!(format_bytes(1000), "1000 bytes");
    }

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/1a9c
1:cpu,cpuacct:/
0::/
";

    #[test]
    fn hybrid_host_is_read_per_hierarchy() {
        let host = Hierarchies::from_proc(HYBRID_MOUNTINFO, HYBRID_CGROUP);
        assert_eq!(
            host,
            Hierarchies {
                v2: Some("/sys/fs/cgroup/unified".into()),
                v1_memory: Some("/sys/fs/cgroup/memory/process_api/1a9c".into()),
                v1_pids: Some("/sys/fs/cgroup/pids".into()),
            }
        );
    }

    #[test]
    fn pure_v2_host_has_no_v1() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        let host = Hierarchies::from_proc(
            mountinfo,
            "0::/user.slice/user-1000.slice/session-2.scope\n",
        );
        assert_eq!(
            host,
            Hierarchies {
                v2: Some("/sys/fs/cgroup/user.slice/user-1000.slice/session-2.scope".into()),
                v1_memory: None,
                v1_pids: None,
            }
        );
    }

    #[test]
    fn container_mounts_map_from_their_root() {
        // A container without a cgroup namespace: the mount shows only its
        // own subtree; a cgroup outside that subtree cannot be reached.
        let mountinfo = "\
700 650 0:26 /docker/abc /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw
701 650 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let host = Hierarchies::from_proc(mountinfo, "4:memory:/docker/abc/sub\n0::/elsewhere\n");
        assert_eq!(host.v1_memory, Some("/sys/fs/cgroup/memory/sub".into()));
        assert_eq!(host.v2, None);
        let outside = Hierarchies::from_proc(mountinfo, "0::/docker/abc/../x\n");
        assert_eq!(outside.v2, None);
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        let line = "41 31 0:38 / /mnt/cgroup\\040two\\134x rw - cgroup2 cgroup2 rw\n";
        let mounts = parse_mountinfo(line);
        assert_eq!(mounts[0].mountpoint, PathBuf::from("/mnt/cgroup two\\x"));
        assert_eq!(unescape_mountinfo("a\\04"), "a\\04");
        assert_eq!(unescape_mountinfo("\\777"), "\\777");
    }

    #[test]
    fn our_host_leaf_is_not_our_cgroup() {
        let base = PathBuf::from("/sys/fs/cgroup/a.scope");
        assert_eq!(without_host_leaf(base.join(host_leaf_name())), base);
        assert_eq!(
            without_host_leaf(base.join("tollgate-host-1")),
            base.join("tollgate-host-1")
        );
    }

    #[test]
    fn owners_are_read_from_directory_names() {
        assert_eq!(owner_pid("tollgate-123-setup.x"), Some(123));
        assert_eq!(owner_pid("tollgate-host-77"), Some(77));
        assert_eq!(owner_pid("tollgate-123-host"), Some(123));
        for other in [
            "tollgate-",
            "tollgate-x-1",
            "tollgate-+1-a",
            "tollgate-0-a",
            "user.slice",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }
}
