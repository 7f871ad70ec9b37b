//! The few system calls the sandbox needs that have no safe wrapper in nix:
//! the mount API's `open_tree`, `mount_setattr` and `move_mount` (idmapped
//! mounts), `close_range`, and `fork` of a single-threaded process. This is
//! the crate's only unsafe code; each block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::libc;
use nix::unistd::{ForkResult, Pid};

/// A detached copy of the mount at `path` (open_tree with
/// OPEN_TREE_CLONE), with the mounts below it when `recursive`, to be
/// attached elsewhere with [`attach`], even after a pivot has made `path`
/// unreachable.
pub fn clone_tree(path: &Path, recursive: bool) -> Result<OwnedFd, Errno> {
    let path = c_path(path)?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree(2) reads the NUL-terminated path, which outlives
    // the call; it returns a new descriptor we take ownership of.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    let fd = Errno::result(fd)?;
    // SAFETY: a descriptor open_tree just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).map_err(|_| Errno::EBADF)?) })
}

/// Sets `attr` (MOUNT_ATTR_* flags) on every mount of a detached tree
/// (mount_setattr with AT_RECURSIVE): a flag set so holds on the mounts
/// below the tree's top, which a remount of the top would not touch.
pub fn restrict_tree(tree: &OwnedFd, attr: u64) -> Result<(), Errno> {
    set_attr(
        tree,
        libc::mount_attr {
            attr_set: attr,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        },
        libc::AT_RECURSIVE,
    )
}

/// A detached copy of the mount at `path` (not its submounts) whose files
/// appear with their owners mapped through the user namespace `userns`:
/// the kernel's idmapped mounts (Linux 5.12+, overlayfs over them 5.19+).
/// Attach it with [`attach`].
pub fn idmapped_clone(path: &Path, userns: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let tree = clone_tree(path, false)?;
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: u64::try_from(userns.as_raw_fd()).map_err(|_| Errno::EBADF)?,
    };
    set_attr(&tree, attr, 0)?;
    Ok(tree)
}

fn set_attr(tree: &OwnedFd, attr: libc::mount_attr, flags: libc::c_int) -> Result<(), Errno> {
    // SAFETY: mount_setattr(2) reads `attr`, which lives on our stack for
    // the call, of the size we pass; the empty path with AT_EMPTY_PATH
    // means the tree's descriptor itself.
    let done = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    Errno::result(done).map(drop)
}

/// Attaches a detached mount (from [`idmapped_clone`]) at `target`.
pub fn attach(tree: &OwnedFd, target: &Path) -> Result<(), Errno> {
    let target = c_path(target)?;
    // SAFETY: move_mount(2) reads the two NUL-terminated paths, which
    // outlive the call; `tree` is a descriptor we own.
    let done = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    Errno::result(done).map(drop)
}

/// Marks every descriptor above stderr close-on-exec (Linux 5.11+).
pub fn close_on_exec_above_stderr() -> Result<(), Errno> {
    // SAFETY: close_range(2) takes plain integers and touches no memory of
    // ours; CLOSE_RANGE_CLOEXEC only sets a flag, so no descriptor this
    // process still uses is closed.
    let result =
        unsafe { libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) };
    Errno::result(result).map(drop)
}

/// Closes every descriptor above stderr: a forked stage keeps nothing of
/// its caller's but its standard streams.
pub fn close_above_stderr() -> Result<(), Errno> {
    // SAFETY: close_range(2) takes plain integers; the caller owns nothing
    // above stderr it still uses (it is the freshly forked stage, which
    // opens its own descriptors only after this).
    let result = unsafe { libc::close_range(3, libc::c_uint::MAX, 0) };
    Errno::result(result).map(drop)
}

/// fork(2), refused (EDEADLK) unless this process has one thread: the
/// caller of a sandbox before it starts any (`tollgate exec`), the stage
/// and PID 1, which never start one. (Forking a multi-threaded process leaves locks other
/// threads held locked forever in the child.)
pub fn fork_single_threaded() -> Result<ForkResult, Errno> {
    if !single_threaded() {
        return Err(Errno::EDEADLK);
    }
    // SAFETY: with one thread, the child gets a consistent copy of every
    // lock and allocator state: it may run any code, as after fork in a
    // single-threaded program.
    unsafe { nix::unistd::fork() }
}

/// The calling process's thread count is 1 (from /proc/self/status).
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .any(|line| line.split_whitespace().eq(["Threads:", "1"]))
    })
}

/// Takes ownership of a descriptor the kernel just installed in this
/// process's table for us: one accept(2) returned, or one that arrived in
/// an SCM_RIGHTS message.
pub fn adopt(raw: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `raw` is open (the call that produced it succeeded) and no
    // other owner exists: the kernel created it for this caller only.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// The window size of the terminal `fd` (TIOCGWINSZ).
pub fn window_size(fd: BorrowedFd<'_>) -> Result<libc::winsize, Errno> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one struct winsize, which `size` is.
    let done = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    Errno::result(done).map(|_| size)
}

/// Sets the window size of the terminal `fd` (TIOCSWINSZ), which sends
/// SIGWINCH to its foreground process group.
pub fn set_window_size(fd: BorrowedFd<'_>, size: &libc::winsize) -> Result<(), Errno> {
    // SAFETY: TIOCSWINSZ reads one struct winsize, which `size` is.
    let done = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, size) };
    Errno::result(done).map(drop)
}

/// A process id as nix wants it.
pub fn pid(raw: u32) -> Pid {
    Pid::from_raw(i32::try_from(raw).unwrap_or(i32::MAX))
}

fn c_path(path: &Path) -> Result<CString, Errno> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_process_has_threads_and_fork_is_refused() {
        // The test harness runs tests on threads of their own.
        let spawned = std::thread::spawn(|| {
            assert!(matches!(fork_single_threaded(), Err(Errno::EDEADLK)));
        });
        spawned.join().unwrap();
    }
}
