//! What the host shows: mounts, processes, cgroups, run directories, files
//! and addresses. Tests use these to see what a sandbox left behind or let
//! through.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::tool;

/// Lines of the host's (this process's) mount table that mention `needle`.
pub fn host_mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Processes (any namespace) whose mount table mentions `needle`: they are
/// inside a mount namespace of a sandbox.
pub fn processes_with_mounts_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(text) = std::fs::read_to_string(entry.path().join("mountinfo")) {
            if text.contains(needle) {
                let cmd = std::fs::read_to_string(entry.path().join("cmdline"))
                    .unwrap_or_default()
                    .replace('\0', " ");
                found.push(format!("pid {name}: {cmd}"));
            }
        }
    }
    found
}

/// pids of processes whose command line contains `token`.
pub fn processes_with(token: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(token) {
            found.push(pid);
        }
    }
    found
}

/// Host processes whose command line matches the regex `pattern` (pgrep -f).
pub fn pgrep(pattern: &str) -> Vec<String> {
    let done = tool(Command::new("pgrep").args(["-a", "-f", pattern]));
    done.stdout.lines().map(str::to_owned).collect()
}

/// Cgroup directories anywhere under /sys/fs/cgroup (eight levels deep)
/// made for the phases of the tollgate process `pid`:
/// `tollgate-<pid>-<run id>-<phase>`.
pub fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("tollgate-{pid}-");
    let mut found = Vec::new();
    let mut pending = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if !kind.is_dir() || kind.is_symlink() {
                continue;
            }
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                found.push(entry.path());
            }
            if depth < 8 {
                pending.push((entry.path(), depth + 1));
            }
        }
    }
    found
}

/// The run directories (`tollgate-run-<pid>-...` in the temp dir) that
/// the sandbox launcher of tollgate process `pid` made on the host.
pub fn run_dirs_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("tollgate-run-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
/// Links to files are read; links to directories are not followed.
pub fn files_containing(dir: &Path, needle: impl AsRef<[u8]>) -> Vec<PathBuf> {
    let needle = needle.as_ref();
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = if path == dir {
            std::fs::metadata(&path)
        } else {
            std::fs::symlink_metadata(&path)
        };
        let Ok(meta) = meta else {
            continue;
        };
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            pending.extend(entries.map(|e| e.unwrap().path()));
        } else if std::fs::metadata(&path).is_ok_and(|target| target.is_file()) {
            // Only regular files hold bytes at rest; opening a FIFO someone
            // left in the temp dir would block this scan for ever.
            if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// The host's addresses other than loopback (and IPv6 link-local), from
/// `ip -br addr`; `family` is `-4` or `-6`.
pub fn host_addresses(family: &str) -> Vec<IpAddr> {
    let out = Command::new("ip")
        .args([family, "-br", "addr"])
        .output()
        .expect("iproute2 must be installed");
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut fields = line.split_whitespace();
        if fields.next() == Some("lo") {
            continue;
        }
        for field in fields.skip(1) {
            let Some(Ok(ip)) = field.split('/').next().map(str::parse::<IpAddr>) else {
                continue;
            };
            let link_local = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
            if !ip.is_loopback() && !link_local {
                found.push(ip);
            }
        }
    }
    found
}

/// Sets `dir`'s modification time two hours back, past the minute a sweep
/// leaves a leftover alone.
pub fn age(dir: &Path) {
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    std::fs::File::open(dir)
        .and_then(|dir| dir.set_modified(two_hours_ago))
        .unwrap_or_else(|e| panic!("cannot age {}: {e}", dir.display()));
}
