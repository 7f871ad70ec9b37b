//! `/proc/self/mountinfo`, read: which file systems are mounted where.

#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;

/// One line of `/proc/self/mountinfo`, the fields we use.
#[derive(Debug)]
pub(crate) struct Mount {
    /// The file system's device, `major:minor`.
    pub(crate) device: String,
    /// The directory of the filesystem mounted here (for cgroupfs: the
    /// cgroup the mount shows as its root).
    pub(crate) root: PathBuf,
    pub(crate) mountpoint: PathBuf,
    pub(crate) fstype: String,
    pub(crate) super_options: String,
}

impl Mount {
    pub(crate) fn has_option(&self, option: &str) -> bool {
        self.super_options.split(',').any(|o| o == option)
    }
}

/// Fields: id, parent, major:minor, root, mount point, options, optional
/// fields ended by "-", then type, source, super options. Lines that do
/// not parse are skipped.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let head: Vec<&str> = head.split(' ').collect();
            let mut tail = tail.split(' ');
            Some(Mount {
                device: (*head.get(2)?).to_owned(),
                root: PathBuf::from(unescape_mountinfo(head.get(3)?)),
                mountpoint: PathBuf::from(unescape_mountinfo(head.get(4)?)),
                fstype: tail.next()?.to_owned(),
                super_options: tail.nth(1)?.to_owned(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
pub(crate) fn unescape_mountinfo(field: &str) -> String {
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

/// The mounts of this process's mount namespace.
pub(crate) fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|text| parse_mountinfo(&text))
        .unwrap_or_default()
}

/// The mount points of this process's mount namespace.
pub(crate) fn mount_points() -> Vec<PathBuf> {
    mounts().into_iter().map(|m| m.mountpoint).collect()
}

/// File systems that are the host kernel's interfaces rather than files:
/// seen through a bind, they show the host's processes, devices, cgroups
/// or namespaces past every mask of the sandbox's own /proc and /dev.
const KERNEL_FILESYSTEMS: [&str; 18] = [
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "debugfs",
    "tracefs",
    "securityfs",
    "bpf",
    "configfs",
    "efivarfs",
    "pstore",
    "binfmt_misc",
    "mqueue",
    "fusectl",
    "nsfs",
    "selinuxfs",
];

/// The first mount at or below `dir` (a real path) of one of the host
/// kernel's interfaces: its mount point and file system type.
pub(crate) fn kernel_interface_within(dir: &std::path::Path) -> Option<(PathBuf, String)> {
    kernel_interface_among(mounts(), dir)
}

fn kernel_interface_among(mounts: Vec<Mount>, dir: &std::path::Path) -> Option<(PathBuf, String)> {
    mounts
        .into_iter()
        .find(|m| m.mountpoint.starts_with(dir) && KERNEL_FILESYSTEMS.contains(&m.fstype.as_str()))
        .map(|m| (m.mountpoint, m.fstype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_interfaces_at_or_below_a_directory_are_found() {
        let mountinfo = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid - proc proc rw
24 22 0:5 / /dev rw,nosuid - devtmpfs udev rw
25 22 0:30 / /srv/data rw - tmpfs tmpfs rw
26 22 0:4 net:[4026532] /run/netns/x rw - nsfs nsfs rw
27 22 0:31 / /srv/my\\040proc rw - proc proc rw
";
        let at = |dir: &str| kernel_interface_among(parse_mountinfo(mountinfo), Path::new(dir));
        assert_eq!(at("/"), Some((PathBuf::from("/proc"), "proc".to_owned())));
        assert_eq!(
            at("/dev"),
            Some((PathBuf::from("/dev"), "devtmpfs".to_owned()))
        );
        assert_eq!(
            at("/run"),
            Some((PathBuf::from("/run/netns/x"), "nsfs".to_owned()))
        );
        assert_eq!(
            at("/srv"),
            Some((PathBuf::from("/srv/my proc"), "proc".to_owned()))
        );
        assert_eq!(at("/srv/data"), None);
        assert_eq!(at("/usr"), None);
        // A path component, not a string prefix: /proc2 holds no /proc.
        assert_eq!(at("/pro"), None);
    }
}
