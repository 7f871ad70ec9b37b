//! Names, control files and small readers the rest of the module shares.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::*;

pub(super) fn phase_dir_name(name: &str) -> String {
    format!("tollgate-{}-{name}", std::process::id())
}

/// The tollgate pid in a `tollgate-<pid>-<name>` or `tollgate-host-<pid>`
/// directory name.
pub(super) fn owner_pid(dir_name: &str) -> Option<i32> {
    let rest = dir_name.strip_prefix("tollgate-")?;
    let rest = rest.strip_prefix("host-").unwrap_or(rest);
    let digits = rest.split('-').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|pid| *pid > 0)
}

pub(super) fn process_exists(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None) != Err(Errno::ESRCH)
}

/// Whether `path` was made long enough ago to be a leftover: a live
/// tollgate's PID 1 joins its cgroups milliseconds after they are made,
/// and a tollgate in another PID namespace (its pid means nothing in ours,
/// so it looks dead from here) shares the hierarchy with us.
pub(super) fn old_enough_to_be_stale(path: &Path) -> bool {
    fs::metadata(path)
        .and_then(|meta| meta.modified())
        .ok()
        .and_then(|made| made.elapsed().ok())
        .is_some_and(|age| age >= crate::STALE_AFTER)
}

pub(super) fn check_name(name: &str) -> Result<(), CgroupError> {
    let usable = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.bytes().all(usable) {
        return Err(CgroupError::BadName(name.to_owned()));
    }
    Ok(())
}

pub(super) fn make_cgroup_dir(path: &Path) -> Result<(), CgroupError> {
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
pub(super) fn host_has_swap() -> bool {
    fs::read_to_string("/proc/swaps").map_or(true, |swaps| {
        swaps.lines().skip(1).any(|l| !l.trim().is_empty())
    })
}

pub(super) fn read_proc(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Proc {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a cgroup control file in one write(2). Never creates the file:
/// a missing one reads as ENOENT, not as a confusing EPERM from cgroupfs.
pub(super) fn write_file(path: &Path, value: &str) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

/// A file holding one number, as `memory.peak`.
pub(super) fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`key value` lines), as
/// `memory.events`.
pub(super) fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        if name != key {
            return None;
        }
        value.trim().parse().ok()
    })
}

pub(super) fn has_word(text: &str, word: &str) -> bool {
    text.split_whitespace().any(|w| w == word)
}

pub(super) fn is_errno(error: &io::Error, errno: Errno) -> bool {
    error.raw_os_error() == Some(errno as i32)
}

/// Bytes the way an operator wrote them, in the largest binary unit that
/// fits: `8 GiB`, `1.5 GiB`, else exact bytes and an approximation.
pub(super) fn format_bytes(bytes: u64) -> String {
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
