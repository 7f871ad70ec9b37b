//! The lists: what the allowlist allows, and what is refused with EPERM and
//! why. Everything allowed is in Docker's unconditional allow list
//! (default.json lines 63-424) unless its comment says otherwise.

use nix::libc;

use super::{nr, Refusal, Syscall};

// aarch64 has only the *at and p* forms; the older forms x86_64 also has
// are in `X86_64_LEGACY`.

/// Reading and writing descriptors, pipes, zero-copy transfers.
#[rustfmt::skip]
pub const FILE_IO: &[Syscall] = &[
    ("read", libc::SYS_read), ("write", libc::SYS_write), ("readv", libc::SYS_readv),
    ("writev", libc::SYS_writev), ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64), ("preadv", libc::SYS_preadv),
    ("pwritev", libc::SYS_pwritev), ("preadv2", libc::SYS_preadv2),
    ("pwritev2", libc::SYS_pwritev2), ("lseek", libc::SYS_lseek), ("close", libc::SYS_close),
    ("close_range", libc::SYS_close_range), ("dup", libc::SYS_dup), ("dup3", libc::SYS_dup3),
    ("fcntl", libc::SYS_fcntl), ("flock", libc::SYS_flock), ("fsync", libc::SYS_fsync),
    ("fdatasync", libc::SYS_fdatasync), ("sync", libc::SYS_sync), ("syncfs", libc::SYS_syncfs),
    ("sync_file_range", nr::SYNC_FILE_RANGE), ("fallocate", libc::SYS_fallocate),
    ("ftruncate", libc::SYS_ftruncate), ("truncate", libc::SYS_truncate),
    ("fadvise64", libc::SYS_fadvise64), ("readahead", libc::SYS_readahead),
    ("sendfile", libc::SYS_sendfile), ("splice", libc::SYS_splice), ("tee", libc::SYS_tee),
    ("copy_file_range", libc::SYS_copy_file_range), ("pipe2", libc::SYS_pipe2),
];

/// All PID 1 still calls once the sandbox is built, read from strace of
/// PID 1 over normal exits, exits by signal, commands not found, forwarded
/// SIGTERM and SIGINT, background processes and a terminal: report why the
/// command did not start, take the host side's go and report the command's
/// status (`recvmsg`, `sendmsg`, on the control connection), reap, forward
/// signals (signal-hook's self-pipe), kill what is left, exit; and what Rust's runtime and allocator call on
/// the way. (`ioctl` is allowed for TCGETS only: isatty.)
#[rustfmt::skip]
pub const PID1: &[Syscall] = &[
    ("read", libc::SYS_read), ("write", libc::SYS_write), ("close", libc::SYS_close),
    ("lseek", libc::SYS_lseek), ("fstat", libc::SYS_fstat),
    ("newfstatat", libc::SYS_newfstatat), ("statx", libc::SYS_statx),
    ("fcntl", libc::SYS_fcntl), ("ppoll", libc::SYS_ppoll),
    ("recvfrom", libc::SYS_recvfrom), ("recvmsg", libc::SYS_recvmsg),
    ("sendto", libc::SYS_sendto), ("sendmsg", libc::SYS_sendmsg), ("wait4", libc::SYS_wait4), ("waitid", libc::SYS_waitid),
    ("kill", libc::SYS_kill),
    ("rt_sigreturn", libc::SYS_rt_sigreturn), ("rt_sigaction", libc::SYS_rt_sigaction),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask), ("sigaltstack", libc::SYS_sigaltstack),
    ("restart_syscall", libc::SYS_restart_syscall),
    ("mmap", libc::SYS_mmap), ("munmap", libc::SYS_munmap), ("mremap", libc::SYS_mremap),
    ("madvise", libc::SYS_madvise), ("brk", libc::SYS_brk), ("futex", libc::SYS_futex),
    ("getpid", libc::SYS_getpid), ("gettid", libc::SYS_gettid),
    ("clock_gettime", libc::SYS_clock_gettime), ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("sched_yield", libc::SYS_sched_yield), ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
    #[cfg(target_arch = "x86_64")]
    ("poll", libc::SYS_poll),
];

/// Opening, inspecting and changing paths (the kernel's permission checks
/// apply: without CAP_CHOWN/CAP_FOWNER/CAP_MKNOD these stay within what a
/// file's owner may do).
#[rustfmt::skip]
pub const PATHS: &[Syscall] = &[
    ("openat", libc::SYS_openat), ("openat2", libc::SYS_openat2), ("fstat", libc::SYS_fstat),
    ("newfstatat", libc::SYS_newfstatat), ("statx", libc::SYS_statx),
    ("statfs", libc::SYS_statfs), ("fstatfs", libc::SYS_fstatfs),
    ("faccessat", libc::SYS_faccessat), ("faccessat2", libc::SYS_faccessat2),
    ("readlinkat", libc::SYS_readlinkat), ("getdents64", libc::SYS_getdents64),
    ("getcwd", libc::SYS_getcwd), ("chdir", libc::SYS_chdir), ("fchdir", libc::SYS_fchdir),
    ("umask", libc::SYS_umask), ("mkdirat", libc::SYS_mkdirat), ("mknodat", libc::SYS_mknodat),
    ("unlinkat", libc::SYS_unlinkat), ("renameat2", libc::SYS_renameat2),
    ("linkat", libc::SYS_linkat), ("symlinkat", libc::SYS_symlinkat),
    ("fchmod", libc::SYS_fchmod), ("fchmodat", libc::SYS_fchmodat),
    ("fchmodat2", nr::FCHMODAT2), ("fchown", libc::SYS_fchown),
    ("fchownat", libc::SYS_fchownat), ("utimensat", libc::SYS_utimensat),
];

/// Extended attributes.
#[rustfmt::skip]
pub const XATTR: &[Syscall] = &[
    ("getxattr", libc::SYS_getxattr), ("lgetxattr", libc::SYS_lgetxattr),
    ("fgetxattr", libc::SYS_fgetxattr), ("setxattr", libc::SYS_setxattr),
    ("lsetxattr", libc::SYS_lsetxattr), ("fsetxattr", libc::SYS_fsetxattr),
    ("listxattr", libc::SYS_listxattr), ("llistxattr", libc::SYS_llistxattr),
    ("flistxattr", libc::SYS_flistxattr), ("removexattr", libc::SYS_removexattr),
    ("lremovexattr", libc::SYS_lremovexattr), ("fremovexattr", libc::SYS_fremovexattr),
    ("getxattrat", nr::GETXATTRAT), ("setxattrat", nr::SETXATTRAT),
    ("listxattrat", nr::LISTXATTRAT), ("removexattrat", nr::REMOVEXATTRAT),
];

/// Address space. (`memfd_secret`, which Docker allows, is refused below.)
#[rustfmt::skip]
pub const MEMORY: &[Syscall] = &[
    ("brk", libc::SYS_brk), ("mmap", libc::SYS_mmap), ("munmap", libc::SYS_munmap),
    ("mremap", libc::SYS_mremap), ("mprotect", libc::SYS_mprotect),
    ("madvise", libc::SYS_madvise), ("mincore", libc::SYS_mincore), ("msync", libc::SYS_msync),
    ("mlock", libc::SYS_mlock), ("mlock2", libc::SYS_mlock2), ("munlock", libc::SYS_munlock),
    ("mlockall", libc::SYS_mlockall), ("munlockall", libc::SYS_munlockall),
    ("remap_file_pages", libc::SYS_remap_file_pages), ("membarrier", libc::SYS_membarrier),
    ("memfd_create", libc::SYS_memfd_create), ("pkey_alloc", libc::SYS_pkey_alloc),
    ("pkey_free", libc::SYS_pkey_free), ("pkey_mprotect", libc::SYS_pkey_mprotect),
    ("mseal", libc::SYS_mseal), ("map_shadow_stack", nr::MAP_SHADOW_STACK),
    ("cachestat", nr::CACHESTAT),
];

/// Processes, threads, limits, identity of the system, self-sandboxing.
/// `clone` is conditional (below); `clone3` is left out on purpose (ENOSYS).
/// `kill` and friends reach only this PID namespace.
#[rustfmt::skip]
pub const PROCESS: &[Syscall] = &[
    ("execve", libc::SYS_execve), ("execveat", libc::SYS_execveat), ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group), ("wait4", libc::SYS_wait4),
    ("waitid", libc::SYS_waitid), ("getpid", libc::SYS_getpid), ("getppid", libc::SYS_getppid),
    ("gettid", libc::SYS_gettid), ("getpgid", libc::SYS_getpgid), ("setpgid", libc::SYS_setpgid),
    ("getsid", libc::SYS_getsid), ("setsid", libc::SYS_setsid),
    ("set_tid_address", libc::SYS_set_tid_address),
    ("set_robust_list", libc::SYS_set_robust_list),
    ("get_robust_list", libc::SYS_get_robust_list), ("rseq", libc::SYS_rseq),
    ("prctl", libc::SYS_prctl), ("futex", libc::SYS_futex), ("futex_waitv", libc::SYS_futex_waitv),
    ("futex_wake", nr::FUTEX_WAKE), ("futex_wait", nr::FUTEX_WAIT),
    ("futex_requeue", nr::FUTEX_REQUEUE), ("restart_syscall", libc::SYS_restart_syscall),
    ("prlimit64", libc::SYS_prlimit64), ("getrusage", libc::SYS_getrusage),
    ("times", libc::SYS_times), ("sysinfo", libc::SYS_sysinfo), ("uname", libc::SYS_uname),
    ("getcpu", libc::SYS_getcpu), ("getrandom", libc::SYS_getrandom),
    ("capget", libc::SYS_capget), ("capset", libc::SYS_capset),
    ("pidfd_open", libc::SYS_pidfd_open), ("pidfd_send_signal", libc::SYS_pidfd_send_signal),
    ("process_mrelease", libc::SYS_process_mrelease), ("kill", libc::SYS_kill),
    ("tkill", libc::SYS_tkill), ("tgkill", libc::SYS_tgkill), ("seccomp", libc::SYS_seccomp),
    ("landlock_create_ruleset", libc::SYS_landlock_create_ruleset),
    ("landlock_add_rule", libc::SYS_landlock_add_rule),
    ("landlock_restrict_self", libc::SYS_landlock_restrict_self),
];

/// User and group ids (changing to another id needs CAP_SETUID/CAP_SETGID,
/// which the command does not have).
#[rustfmt::skip]
pub const IDS: &[Syscall] = &[
    ("getuid", libc::SYS_getuid), ("geteuid", libc::SYS_geteuid), ("getgid", libc::SYS_getgid),
    ("getegid", libc::SYS_getegid), ("getgroups", libc::SYS_getgroups),
    ("setgroups", libc::SYS_setgroups), ("getresuid", libc::SYS_getresuid),
    ("getresgid", libc::SYS_getresgid), ("setuid", libc::SYS_setuid),
    ("setgid", libc::SYS_setgid), ("setreuid", libc::SYS_setreuid),
    ("setregid", libc::SYS_setregid), ("setresuid", libc::SYS_setresuid),
    ("setresgid", libc::SYS_setresgid), ("setfsuid", libc::SYS_setfsuid),
    ("setfsgid", libc::SYS_setfsgid),
];

/// Signals.
#[rustfmt::skip]
pub const SIGNALS: &[Syscall] = &[
    ("rt_sigaction", libc::SYS_rt_sigaction), ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("rt_sigreturn", libc::SYS_rt_sigreturn), ("rt_sigpending", libc::SYS_rt_sigpending),
    ("rt_sigsuspend", libc::SYS_rt_sigsuspend),
    ("rt_sigtimedwait", libc::SYS_rt_sigtimedwait),
    ("rt_sigqueueinfo", libc::SYS_rt_sigqueueinfo),
    ("rt_tgsigqueueinfo", libc::SYS_rt_tgsigqueueinfo),
    ("sigaltstack", libc::SYS_sigaltstack), ("signalfd4", libc::SYS_signalfd4),
];

/// Clocks and timers. `adjtimex`/`clock_adjtime` stay (as in Docker): with
/// `modes != 0` the kernel requires CAP_SYS_TIME in the initial user
/// namespace; read-only use is `ntp_gettime(3)`.
#[rustfmt::skip]
pub const TIME: &[Syscall] = &[
    ("clock_gettime", libc::SYS_clock_gettime), ("clock_getres", libc::SYS_clock_getres),
    ("clock_nanosleep", libc::SYS_clock_nanosleep), ("nanosleep", libc::SYS_nanosleep),
    ("gettimeofday", libc::SYS_gettimeofday), ("adjtimex", libc::SYS_adjtimex),
    ("clock_adjtime", libc::SYS_clock_adjtime), ("getitimer", libc::SYS_getitimer),
    ("setitimer", libc::SYS_setitimer), ("timer_create", libc::SYS_timer_create),
    ("timer_settime", libc::SYS_timer_settime), ("timer_gettime", libc::SYS_timer_gettime),
    ("timer_getoverrun", libc::SYS_timer_getoverrun), ("timer_delete", libc::SYS_timer_delete),
    ("timerfd_create", libc::SYS_timerfd_create), ("timerfd_settime", libc::SYS_timerfd_settime),
    ("timerfd_gettime", libc::SYS_timerfd_gettime),
];

/// Scheduling and I/O priority (raising either needs CAP_SYS_NICE).
#[rustfmt::skip]
pub const SCHEDULING: &[Syscall] = &[
    ("sched_yield", libc::SYS_sched_yield), ("sched_getaffinity", libc::SYS_sched_getaffinity),
    ("sched_setaffinity", libc::SYS_sched_setaffinity),
    ("sched_getparam", libc::SYS_sched_getparam), ("sched_setparam", libc::SYS_sched_setparam),
    ("sched_getscheduler", libc::SYS_sched_getscheduler),
    ("sched_setscheduler", libc::SYS_sched_setscheduler),
    ("sched_getattr", libc::SYS_sched_getattr), ("sched_setattr", libc::SYS_sched_setattr),
    ("sched_get_priority_max", libc::SYS_sched_get_priority_max),
    ("sched_get_priority_min", libc::SYS_sched_get_priority_min),
    ("sched_rr_get_interval", libc::SYS_sched_rr_get_interval),
    ("getpriority", libc::SYS_getpriority), ("setpriority", libc::SYS_setpriority),
    ("ioprio_get", libc::SYS_ioprio_get), ("ioprio_set", libc::SYS_ioprio_set),
];

/// Waiting for descriptors, event and notification descriptors, POSIX AIO.
/// (io_uring is refused below.)
#[rustfmt::skip]
pub const EVENTS: &[Syscall] = &[
    ("ppoll", libc::SYS_ppoll), ("pselect6", libc::SYS_pselect6),
    ("epoll_create1", libc::SYS_epoll_create1), ("epoll_ctl", libc::SYS_epoll_ctl),
    ("epoll_pwait", libc::SYS_epoll_pwait), ("epoll_pwait2", libc::SYS_epoll_pwait2),
    ("eventfd2", libc::SYS_eventfd2), ("inotify_init1", libc::SYS_inotify_init1),
    ("inotify_add_watch", libc::SYS_inotify_add_watch),
    ("inotify_rm_watch", libc::SYS_inotify_rm_watch),
    ("fanotify_mark", libc::SYS_fanotify_mark), ("io_setup", libc::SYS_io_setup),
    ("io_destroy", libc::SYS_io_destroy), ("io_submit", libc::SYS_io_submit),
    ("io_cancel", libc::SYS_io_cancel), ("io_getevents", libc::SYS_io_getevents),
    ("io_pgetevents", nr::IO_PGETEVENTS),
];

/// System V and POSIX IPC (namespaced: the sandbox has its own IPC namespace).
#[rustfmt::skip]
pub const IPC: &[Syscall] = &[
    ("msgget", libc::SYS_msgget), ("msgsnd", libc::SYS_msgsnd), ("msgrcv", libc::SYS_msgrcv),
    ("msgctl", libc::SYS_msgctl), ("semget", libc::SYS_semget), ("semop", libc::SYS_semop),
    ("semtimedop", libc::SYS_semtimedop), ("semctl", libc::SYS_semctl),
    ("shmget", libc::SYS_shmget), ("shmat", libc::SYS_shmat), ("shmdt", libc::SYS_shmdt),
    ("shmctl", libc::SYS_shmctl), ("mq_open", libc::SYS_mq_open),
    ("mq_unlink", libc::SYS_mq_unlink), ("mq_timedsend", libc::SYS_mq_timedsend),
    ("mq_timedreceive", libc::SYS_mq_timedreceive), ("mq_notify", libc::SYS_mq_notify),
    ("mq_getsetattr", libc::SYS_mq_getsetattr),
];

/// Sockets once created (`socket`/`socketpair` are conditional, below).
#[rustfmt::skip]
pub const NETWORK: &[Syscall] = &[
    ("bind", libc::SYS_bind), ("connect", libc::SYS_connect), ("listen", libc::SYS_listen),
    ("accept", libc::SYS_accept), ("accept4", libc::SYS_accept4),
    ("getsockname", libc::SYS_getsockname), ("getpeername", libc::SYS_getpeername),
    ("getsockopt", libc::SYS_getsockopt), ("setsockopt", libc::SYS_setsockopt),
    ("sendto", libc::SYS_sendto), ("recvfrom", libc::SYS_recvfrom),
    ("sendmsg", libc::SYS_sendmsg), ("recvmsg", libc::SYS_recvmsg),
    ("sendmmsg", libc::SYS_sendmmsg), ("recvmmsg", libc::SYS_recvmmsg),
    ("shutdown", libc::SYS_shutdown),
];

/// Reading the mount table of the sandbox's own mount namespace (Docker
/// allows both; changing mounts is refused below).
pub const MOUNT_INFO: &[Syscall] = &[("statmount", nr::STATMOUNT), ("listmount", nr::LISTMOUNT)];

/// Debuggers (strace, gdb) and crash reporters. Docker allows these three
/// without CAP_SYS_PTRACE on kernels >= 4.8 (default.json 428-438), where
/// seccomp runs again after a tracer changes a call. Only processes of the
/// sandbox's PID namespace are visible, all under these same filters, and
/// the sandbox's PID 1 is not dumpable. Move this group to `REFUSED` if
/// debuggers are not wanted.
#[rustfmt::skip]
pub const PTRACE: &[Syscall] = &[
    ("ptrace", libc::SYS_ptrace), ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
];

/// The pre-*at forms only x86_64 has (all in Docker's list).
#[rustfmt::skip]
#[cfg(target_arch = "x86_64")]
pub const X86_64_LEGACY: &[Syscall] = &[
    ("open", libc::SYS_open), ("creat", libc::SYS_creat), ("stat", libc::SYS_stat),
    ("lstat", libc::SYS_lstat), ("access", libc::SYS_access), ("readlink", libc::SYS_readlink),
    ("getdents", libc::SYS_getdents), ("mkdir", libc::SYS_mkdir), ("mknod", libc::SYS_mknod),
    ("rmdir", libc::SYS_rmdir), ("unlink", libc::SYS_unlink), ("rename", libc::SYS_rename),
    ("renameat", libc::SYS_renameat), ("link", libc::SYS_link), ("symlink", libc::SYS_symlink),
    ("chmod", libc::SYS_chmod), ("chown", libc::SYS_chown), ("lchown", libc::SYS_lchown),
    ("utime", libc::SYS_utime), ("utimes", libc::SYS_utimes), ("futimesat", libc::SYS_futimesat),
    ("dup2", libc::SYS_dup2), ("pipe", libc::SYS_pipe), ("poll", libc::SYS_poll),
    ("select", libc::SYS_select), ("epoll_create", libc::SYS_epoll_create),
    ("epoll_wait", libc::SYS_epoll_wait), ("epoll_ctl_old", libc::SYS_epoll_ctl_old),
    ("epoll_wait_old", libc::SYS_epoll_wait_old), ("eventfd", libc::SYS_eventfd),
    ("inotify_init", libc::SYS_inotify_init), ("signalfd", libc::SYS_signalfd),
    ("pause", libc::SYS_pause), ("alarm", libc::SYS_alarm), ("time", libc::SYS_time),
    ("fork", libc::SYS_fork), ("vfork", libc::SYS_vfork), ("getpgrp", libc::SYS_getpgrp),
    ("getrlimit", libc::SYS_getrlimit), ("setrlimit", libc::SYS_setrlimit),
];
#[cfg(target_arch = "aarch64")]
#[rustfmt::skip]
pub const X86_64_LEGACY: &[Syscall] = &[];

/// Calls only one architecture has. x86_64: thread-local storage
/// (`arch_prctl`, default.json 573-583; `get/set_thread_area`) and the
/// return trampoline of uprobes. (`modify_ldt`, which Docker allows on
/// x86, is refused below.) aarch64: Docker's arm entries (556-571) are all
/// 32-bit ARM calls; arm64 has none of them.
#[rustfmt::skip]
#[cfg(target_arch = "x86_64")]
pub const ARCH_SPECIFIC: &[Syscall] = &[
    ("arch_prctl", libc::SYS_arch_prctl), ("get_thread_area", libc::SYS_get_thread_area),
    ("set_thread_area", libc::SYS_set_thread_area), ("uretprobe", nr::URETPROBE),
];
#[cfg(target_arch = "aarch64")]
#[rustfmt::skip]
pub const ARCH_SPECIFIC: &[Syscall] = &[];

/// Every unconditionally allowed call, by group.
#[rustfmt::skip]
pub const ALLOWED: &[&[Syscall]] = &[
    FILE_IO, PATHS, XATTR, MEMORY, PROCESS, IDS, SIGNALS, TIME, SCHEDULING, EVENTS, IPC,
    NETWORK, MOUNT_INFO, PTRACE, X86_64_LEGACY, ARCH_SPECIFIC,
];

/// Allowed only with some argument values; see `command_program`.
#[rustfmt::skip]
#[cfg_attr(not(test), allow(dead_code))] // documentation; checked by the tests
pub const CONDITIONAL: &[Syscall] = &[
    ("socket", libc::SYS_socket), ("socketpair", libc::SYS_socketpair),
    ("personality", libc::SYS_personality), ("clone", libc::SYS_clone),
    ("ioctl", libc::SYS_ioctl),
];

/// Refused with ENOSYS by leaving them out, so that callers fall back.
#[cfg_attr(not(test), allow(dead_code))] // documentation; checked by the tests
pub const FALL_BACK: &[Syscall] = &[
    // Its flags are in a struct seccomp cannot read, so CLONE_NEWUSER could
    // not be refused; glibc (pthread_create, posix_spawn), Go and Rust fall
    // back to clone(2) on ENOSYS. Docker answers ENOSYS too (716-727).
    ("clone3", libc::SYS_clone3),
];

// ---------------------------------------------------------------------------
// Refused with EPERM. Docker refuses all of these to a container without
// capabilities (by not listing them, or listing them only for a
// capability) unless the reason says "Docker allows".
// ---------------------------------------------------------------------------

#[rustfmt::skip]
pub const REFUSED: &[Refusal] = &[
    // Namespaces and mounts (Docker: CAP_SYS_ADMIN only, 633-668).
    ("unshare", libc::SYS_unshare, "new namespaces; a user namespace needs no capability and gives all of them back inside it"),
    ("setns", libc::SYS_setns, "joins another process's namespaces"),
    ("mount", libc::SYS_mount, "changes the mount tree"),
    ("umount2", libc::SYS_umount2, "uncovers what the sandbox's mounts hide"),
    ("pivot_root", libc::SYS_pivot_root, "changes the root of the mount namespace (Docker: not listed)"),
    ("chroot", libc::SYS_chroot, "a step of classic jail escapes (Docker: CAP_SYS_CHROOT, 739-749)"),
    ("fsopen", libc::SYS_fsopen, "new mount API"),
    ("fsconfig", libc::SYS_fsconfig, "new mount API"),
    ("fsmount", libc::SYS_fsmount, "new mount API"),
    ("fspick", libc::SYS_fspick, "new mount API"),
    ("open_tree", libc::SYS_open_tree, "new mount API: clones mount trees"),
    ("open_tree_attr", nr::OPEN_TREE_ATTR, "new mount API (Linux 6.15; not yet in Docker's list)"),
    ("move_mount", libc::SYS_move_mount, "new mount API"),
    ("mount_setattr", libc::SYS_mount_setattr, "changes mount flags (e.g. read-only off)"),
    ("quotactl", libc::SYS_quotactl, "filesystem quotas are host-wide"),
    ("quotactl_fd", libc::SYS_quotactl_fd, "filesystem quotas are host-wide"),
    ("name_to_handle_at", libc::SYS_name_to_handle_at, "file handles, only of use with open_by_handle_at (Docker allows it)"),
    ("open_by_handle_at", libc::SYS_open_by_handle_at, "opens any inode of a filesystem by handle, bypassing the mount tree ('shocker'; Docker: CAP_DAC_READ_SEARCH, 623-632)"),
    // The host kernel and machine.
    ("reboot", libc::SYS_reboot, "host-wide (Docker: CAP_SYS_BOOT, 728-738)"),
    ("kexec_load", libc::SYS_kexec_load, "replaces the running kernel (Docker: not listed)"),
    ("kexec_file_load", nr::KEXEC_FILE_LOAD, "replaces the running kernel (Docker: not listed)"),
    ("init_module", libc::SYS_init_module, "loads kernel code (Docker: CAP_SYS_MODULE, 750-762)"),
    ("finit_module", libc::SYS_finit_module, "loads kernel code (Docker: CAP_SYS_MODULE)"),
    ("delete_module", libc::SYS_delete_module, "unloads kernel code (Docker: CAP_SYS_MODULE)"),
    ("swapon", libc::SYS_swapon, "host-wide swap (Docker: not listed)"),
    ("swapoff", libc::SYS_swapoff, "host-wide swap (Docker: not listed)"),
    ("acct", libc::SYS_acct, "host-wide process accounting (Docker: CAP_SYS_PACCT, 763-773)"),
    ("sethostname", libc::SYS_sethostname, "the sandbox's hostname is set before the command starts (Docker: CAP_SYS_ADMIN)"),
    ("setdomainname", libc::SYS_setdomainname, "as sethostname"),
    ("syslog", libc::SYS_syslog, "reads and clears the host kernel log (Docker: CAP_SYSLOG / CAP_SYS_ADMIN)"),
    ("vhangup", libc::SYS_vhangup, "hangs up the terminal shared with the caller (Docker: CAP_SYS_TTY_CONFIG, 816-826)"),
    ("settimeofday", libc::SYS_settimeofday, "the clock is host-wide (Docker: CAP_SYS_TIME, 802-815)"),
    ("clock_settime", libc::SYS_clock_settime, "the clock is host-wide (Docker: CAP_SYS_TIME)"),
    ("nfsservctl", libc::SYS_nfsservctl, "removed in Linux 3.1 (Docker: not listed)"),
    ("lookup_dcookie", libc::SYS_lookup_dcookie, "profiling interface, removed in 6.8 (Docker: CAP_SYS_ADMIN)"),
    // Kernel attack surface with no use for the command.
    ("bpf", libc::SYS_bpf, "eBPF programs and maps: large kernel attack surface (Docker: CAP_SYS_ADMIN / CAP_BPF)"),
    ("perf_event_open", libc::SYS_perf_event_open, "performance counters: attack surface and side channels (Docker: CAP_SYS_ADMIN / CAP_PERFMON)"),
    ("userfaultfd", libc::SYS_userfaultfd, "lets an exploit stall the kernel inside a copy from user memory (Docker: not listed)"),
    ("io_uring_setup", libc::SYS_io_uring_setup, "io_uring runs operations no seccomp filter sees (Docker: not listed since 2023)"),
    ("io_uring_enter", libc::SYS_io_uring_enter, "io_uring"),
    ("io_uring_register", libc::SYS_io_uring_register, "io_uring"),
    ("fanotify_init", libc::SYS_fanotify_init, "watches whole filesystems (Docker: CAP_SYS_ADMIN)"),
    ("memfd_secret", libc::SYS_memfd_secret, "memory hidden from the kernel's own mappings, unswappable (Docker allows it)"),
    ("vmsplice", libc::SYS_vmsplice, "page-reference tricks of several kernel exploits; nothing common needs it (Docker allows it)"),
    ("lsm_get_self_attr", nr::LSM_GET_SELF_ATTR, "LSM interface (Docker: CAP_SYS_ADMIN)"),
    ("lsm_set_self_attr", nr::LSM_SET_SELF_ATTR, "changes the caller's LSM label (Docker: CAP_SYS_ADMIN)"),
    ("lsm_list_modules", nr::LSM_LIST_MODULES, "LSM interface (Docker: CAP_SYS_ADMIN)"),
    // Keyrings are not namespaced: the command is host uid 0.
    ("add_key", libc::SYS_add_key, "root's kernel keyring is shared with the host (Docker: not listed)"),
    ("keyctl", libc::SYS_keyctl, "root's kernel keyring is shared with the host"),
    ("request_key", libc::SYS_request_key, "root's kernel keyring is shared with the host"),
    // Other processes' resources (Docker: CAP_SYS_PTRACE, 774-789).
    ("kcmp", libc::SYS_kcmp, "compares other processes' kernel objects"),
    ("pidfd_getfd", libc::SYS_pidfd_getfd, "takes a descriptor out of another process"),
    ("process_madvise", libc::SYS_process_madvise, "advises on another process's memory"),
    // NUMA placement (Docker: CAP_SYS_NICE, 827-840; migrate/move_pages not listed).
    ("get_mempolicy", libc::SYS_get_mempolicy, "NUMA policy"),
    ("set_mempolicy", libc::SYS_set_mempolicy, "NUMA policy"),
    ("mbind", libc::SYS_mbind, "NUMA policy"),
    ("set_mempolicy_home_node", libc::SYS_set_mempolicy_home_node, "NUMA policy"),
    ("migrate_pages", libc::SYS_migrate_pages, "moves a process's pages between NUMA nodes"),
    ("move_pages", libc::SYS_move_pages, "moves a process's pages between NUMA nodes"),
];

/// Refused with EPERM on x86_64 only.
#[rustfmt::skip]
#[cfg(target_arch = "x86_64")]
pub const REFUSED_ARCH: &[Refusal] = &[
    ("modify_ldt", libc::SYS_modify_ldt, "16-bit segments: history of kernel bugs, needed only by Wine/DOSEMU (Docker allows it on x86, 584-596)"),
    ("iopl", libc::SYS_iopl, "I/O port access (Docker: CAP_SYS_RAWIO, 790-801)"),
    ("ioperm", libc::SYS_ioperm, "I/O port access (Docker: CAP_SYS_RAWIO)"),
    ("uselib", libc::SYS_uselib, "a.out library loader, obsolete (Docker: not listed)"),
    ("ustat", libc::SYS_ustat, "obsolete (Docker: not listed)"),
    ("sysfs", libc::SYS_sysfs, "obsolete (Docker: not listed)"),
    ("_sysctl", libc::SYS__sysctl, "removed in Linux 5.5 (Docker: not listed)"),
    ("create_module", nr::CREATE_MODULE, "removed in Linux 2.6"),
    ("get_kernel_syms", nr::GET_KERNEL_SYMS, "removed in Linux 2.6"),
    ("query_module", nr::QUERY_MODULE, "removed in Linux 2.6"),
];
#[cfg(target_arch = "aarch64")]
#[rustfmt::skip]
pub const REFUSED_ARCH: &[Refusal] = &[];
