//! Whose ids the sandbox's processes have on the host. Root inside a
//! sandbox is never host root:
//!
//! - run as root, tollgate maps the sandbox's ids 0..COUNT to an
//!   unprivileged host range: the `/etc/subuid` and `/etc/subgid` entries of
//!   a user named `tollgate` when there are some, else [`DEFAULT_HOST_START`].
//!   The base and every layer are mounted idmapped with the same mapping,
//!   so their files keep the owners they have on disk, seen from inside;
//! - run as another user (rootless), the sandbox's root is that user; with
//!   `newuidmap`/`newgidmap` (package `uidmap`) and an `/etc/subuid` range of
//!   the user's, ids 1..COUNT map to that range, else only root exists.

use std::path::Path;

use nix::unistd::{Gid, Uid, User};
use serde::{Deserialize, Serialize};

/// The host id the sandbox's root maps to by default: 0x7000_0000, above
/// the range systemd hands to containers (0x80000-0x6FFFFFFF) and below
/// 2^31 (tools that keep uids in signed ints still see them positive).
pub const DEFAULT_HOST_START: u32 = 0x7000_0000;
/// Ids a sandbox has by default: 0..65535, as in a container image
/// (nobody is 65534).
pub const DEFAULT_COUNT: u32 = 65_536;
/// The user whose subordinate ids tollgate uses when run as root.
pub const RANGE_OWNER: &str = "tollgate";

/// A contiguous range of host ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub start: u32,
    pub count: u32,
}

/// How the sandbox's ids map to the host's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdMapping {
    /// tollgate runs as root: the command's user namespace maps inside ids
    /// 0.. to these host ranges, and the layers are idmapped alike.
    Mapped { uids: Range, gids: Range },
    /// tollgate runs as `uid`/`gid`: they are root inside. With subordinate
    /// ranges (written by newuidmap/newgidmap), ids from 1 map to them.
    Rootless {
        uid: u32,
        gid: u32,
        subordinate: Option<(Range, Range)>,
    },
}

impl IdMapping {
    /// The mapping for this process: root's range, or the caller's own.
    pub fn for_this_process() -> IdMapping {
        let (uid, gid) = (Uid::effective(), Gid::effective());
        if uid.is_root() {
            return IdMapping::Mapped {
                uids: subordinate(Path::new("/etc/subuid"), RANGE_OWNER, None).unwrap_or(DEFAULT),
                gids: subordinate(Path::new("/etc/subgid"), RANGE_OWNER, None).unwrap_or(DEFAULT),
            };
        }
        let name = User::from_uid(uid).ok().flatten().map(|user| user.name);
        let ranges = name.as_deref().and_then(|name| {
            let uids = subordinate(Path::new("/etc/subuid"), name, Some(uid.as_raw()))?;
            let gids = subordinate(Path::new("/etc/subgid"), name, Some(uid.as_raw()))?;
            Some((uids, gids))
        });
        IdMapping::Rootless {
            uid: uid.as_raw(),
            gid: gid.as_raw(),
            subordinate: ranges.filter(|_| newidmap_installed()),
        }
    }

    /// The host uid of the sandbox's root.
    pub fn host_root_uid(&self) -> u32 {
        match self {
            IdMapping::Mapped { uids, .. } => uids.start,
            IdMapping::Rootless { uid, .. } => *uid,
        }
    }

    /// The host gid of the sandbox's root.
    pub fn host_root_gid(&self) -> u32 {
        match self {
            IdMapping::Mapped { gids, .. } => gids.start,
            IdMapping::Rootless { gid, .. } => *gid,
        }
    }

    /// `/proc/PID/uid_map` and `gid_map` lines for a mapped sandbox.
    pub(crate) fn map_lines(&self) -> Option<(String, String)> {
        match self {
            IdMapping::Mapped { uids, gids } => Some((
                format!("0 {} {}\n", uids.start, uids.count),
                format!("0 {} {}\n", gids.start, gids.count),
            )),
            IdMapping::Rootless { .. } => None,
        }
    }

    /// One line for `--help` and messages: who the sandbox's root is.
    pub fn describe(&self) -> String {
        match self {
            IdMapping::Mapped { uids, gids } => format!(
                "root inside is host uid {} (ids 0-{} map to host uids {}-{} and gids {}-{})",
                uids.start,
                uids.count.saturating_sub(1),
                uids.start,
                uids.start.saturating_add(uids.count.saturating_sub(1)),
                gids.start,
                gids.start.saturating_add(gids.count.saturating_sub(1)),
            ),
            IdMapping::Rootless {
                uid,
                subordinate: None,
                ..
            } => format!("root inside is your uid {uid}; no other id exists inside"),
            IdMapping::Rootless {
                uid,
                subordinate: Some((uids, _)),
                ..
            } => format!(
                "root inside is your uid {uid}; ids 1-{} map to your subordinate uids {}-{}",
                uids.count,
                uids.start,
                uids.start.saturating_add(uids.count.saturating_sub(1)),
            ),
        }
    }
}

const DEFAULT: Range = Range {
    start: DEFAULT_HOST_START,
    count: DEFAULT_COUNT,
};

/// The first range of `owner` (by name, or by uid when given) in a
/// subordinate-id file (`name:start:count` lines, subuid(5)).
fn subordinate(file: &Path, owner: &str, owner_uid: Option<u32>) -> Option<Range> {
    let text = std::fs::read_to_string(file).ok()?;
    parse_subordinate(&text, owner, owner_uid)
}

fn parse_subordinate(text: &str, owner: &str, owner_uid: Option<u32>) -> Option<Range> {
    text.lines().find_map(|line| {
        let mut fields = line.trim().split(':');
        let (name, start, count) = (fields.next()?, fields.next()?, fields.next()?);
        let mine = name == owner || owner_uid.is_some_and(|uid| name == uid.to_string());
        let range = Range {
            start: start.parse().ok()?,
            count: count.parse().ok()?,
        };
        (mine && range.count > 0 && range.start > 0).then_some(range)
    })
}

/// newuidmap and newgidmap (package uidmap), which write a rootless
/// sandbox's subordinate ranges.
pub(crate) const NEWUIDMAP: &str = "/usr/bin/newuidmap";
pub(crate) const NEWGIDMAP: &str = "/usr/bin/newgidmap";

fn newidmap_installed() -> bool {
    Path::new(NEWUIDMAP).exists() && Path::new(NEWGIDMAP).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_are_found_by_name_or_uid() {
        let text =
            "alice:100000:65536\n# comment\ntollgate:200000:65536\n1001:300000:1000\nbad line\n";
        assert_eq!(
            parse_subordinate(text, "tollgate", None),
            Some(Range {
                start: 200_000,
                count: 65_536
            })
        );
        assert_eq!(
            parse_subordinate(text, "bob", Some(1001)),
            Some(Range {
                start: 300_000,
                count: 1000
            })
        );
        assert_eq!(parse_subordinate(text, "carol", Some(1002)), None);
        assert_eq!(parse_subordinate("tollgate:0:10\n", "tollgate", None), None);
    }

    #[test]
    fn mapped_sandboxes_write_one_line_per_map() {
        let mapping = IdMapping::Mapped {
            uids: DEFAULT,
            gids: Range {
                start: 5,
                count: 10,
            },
        };
        assert_eq!(
            mapping.map_lines(),
            Some(("0 1879048192 65536\n".into(), "0 5 10\n".into()))
        );
        assert!(mapping.describe().contains("host uid 1879048192"));
    }
}
