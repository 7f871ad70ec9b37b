//! One cgroup directory of a phase: its limits, its processes, its removal.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::thread;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};

use super::files::*;
use super::*;

/// One directory of a phase: one per v1 hierarchy, or the single v2 one.
#[derive(Debug)]
pub(super) struct CgroupDir {
    pub(super) path: PathBuf,
    pub(super) version: Version,
    pub(super) controllers: Vec<Controller>,
}

impl CgroupDir {
    pub(super) fn has(&self, controller: Controller) -> bool {
        self.controllers.contains(&controller)
    }

    pub(super) fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Where a single-threaded process joins by writing "0" (itself). On
    /// v1, `tasks`: moving one thread skips the global threadgroup lock
    /// that a write to `cgroup.procs` takes, whose RCU grace period cost
    /// 15 ms per sandbox here (strace of `tollgate exec -- /bin/true`); the
    /// stage has one thread (stage_process.rs), so the thread is the process.
    pub(super) fn join_file(&self) -> PathBuf {
        match self.version {
            Version::V1 => self.path.join("tasks"),
            Version::V2 => self.procs_file(),
        }
    }

    /// Writes the limits of this directory's controllers. A memory limit
    /// that swap can bypass is not one: swap is capped too (v2
    /// `memory.swap.max` = 0, v1 `memory.memsw.limit_in_bytes` = the
    /// limit) where the kernel accounts it, and the report says so where
    /// it does not and the host has swap. Nor is one that socket buffers
    /// bypass: cgroup v2 charges them to `memory.max`, v1 only once
    /// `memory.kmem.tcp.limit_in_bytes` is set (without it, loopback
    /// connections inside fill the host-wide TCP memory, `tcp_mem`, that
    /// every socket on the host shares).
    pub(super) fn write_limits(
        &self,
        limits: &Limits,
        report: &mut Report,
    ) -> Result<(), CgroupError> {
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
            if self.version == Version::V1 {
                self.set_if_present("memory.kmem.tcp.limit_in_bytes", &bytes)?;
            }
        }
        if let (true, Some(count)) = (self.has(Controller::Pids), limits.pids) {
            self.set("pids.max", &count.to_string())?;
        }
        Ok(())
    }

    pub(super) fn set(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.path.join(file);
        write_file(&path, value).map_err(|source| CgroupError::SetLimit {
            path,
            value: value.to_owned(),
            source,
        })
    }

    /// Like `set`, for a file the kernel may lack; `Ok(false)` if it does.
    pub(super) fn set_if_present(&self, file: &str, value: &str) -> Result<bool, CgroupError> {
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
    pub(super) fn pids(&self) -> io::Result<Vec<Pid>> {
        let procs = fs::read_to_string(self.procs_file())?;
        Ok(procs
            .lines()
            .filter_map(|line| line.trim().parse::<i32>().ok())
            .filter(|pid| *pid > 0)
            .map(Pid::from_raw)
            .collect())
    }

    pub(super) fn kill_all(&self) {
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
    pub(super) fn write_cgroup_kill(&self) -> bool {
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

    pub(super) fn remove(&self) {
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
