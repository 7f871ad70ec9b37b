//! Where tollgate's own cgroups are, read from /proc/self/mountinfo and
//! /proc/self/cgroup.

use std::path::{Component, Path, PathBuf};

use super::files::*;
use super::*;
pub(super) use crate::mountinfo::{parse_mountinfo, Mount};

/// Where tollgate's own cgroups are: the directory of our cgroup in the v2
/// hierarchy and in the v1 memory and pids hierarchies, when mounted and
/// our cgroup is visible in the mount.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Hierarchies {
    /// On v2 this is the cgroup we *started* in: if we already moved into
    /// our host leaf, its parent.
    pub(super) v2: Option<PathBuf>,
    pub(super) v1_memory: Option<PathBuf>,
    pub(super) v1_pids: Option<PathBuf>,
}

impl Hierarchies {
    pub(super) fn detect() -> Result<Self, CgroupError> {
        let mountinfo = read_proc(Path::new("/proc/self/mountinfo"))?;
        let membership = read_proc(Path::new("/proc/self/cgroup"))?;
        let mut host = Self::from_proc(&mountinfo, &membership);
        host.v2 = host.v2.map(without_host_leaf);
        Ok(host)
    }

    /// Joins `/proc/self/cgroup` (which cgroup, as a path from each
    /// hierarchy's root) with `/proc/self/mountinfo` (where each hierarchy,
    /// or a subtree of it, is mounted).
    pub(super) fn from_proc(mountinfo: &str, membership: &str) -> Self {
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

    pub(super) fn v1(&self, controller: Controller) -> Option<&PathBuf> {
        match controller {
            Controller::Memory => self.v1_memory.as_ref(),
            Controller::Pids => self.v1_pids.as_ref(),
        }
    }
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controllers:path`; the
/// v2 line is `0::path`.
#[derive(Debug)]
pub(super) struct Membership<'a> {
    pub(super) hierarchy: &'a str,
    pub(super) controllers: Vec<&'a str>,
    pub(super) path: &'a str,
}

pub(super) fn parse_membership(text: &str) -> Vec<Membership<'_>> {
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
pub(super) fn own_dir(
    mounts: &[Mount],
    path: &str,
    hierarchy: impl Fn(&Mount) -> bool,
) -> Option<PathBuf> {
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
pub(super) fn without_host_leaf(own: PathBuf) -> PathBuf {
    match (own.file_name(), own.parent()) {
        (Some(leaf), Some(parent)) if leaf.to_str() == Some(host_leaf_name().as_str()) => {
            parent.to_path_buf()
        }
        _ => own,
    }
}

pub(super) fn host_leaf_name() -> String {
    format!("tollgate-host-{}", std::process::id())
}
