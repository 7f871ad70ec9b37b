//! cgroup v2's rules: which controllers our cgroup can hand to a phase,
//! and the no-internal-process rule met by moving into a leaf.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use tracing::info;

use super::files::*;
use super::hierarchy::*;
use super::*;

/// Why cgroup v2 does not take a controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum V2Refusal {
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
    pub(super) fn without_v1(&self, controller: Controller) -> String {
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
pub(super) fn v2_readiness(
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
pub(super) fn enable_controllers(base: &Path, names: &[&str]) -> Result<(), String> {
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
pub(super) fn move_into_leaf(base: &Path) -> Result<(), String> {
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
