//! The sandbox's seccomp policy: an allowlist modelled on Docker's default
//! profile (github.com/moby/profiles, `seccomp/default.json` at commit
//! cd3bed80, see NOTES.md for line references) for a container that holds
//! no capability at all.
//!
//! One filter answers every call ([`bpf`] compiles it into a binary search
//! over ranges of call numbers):
//!
//! - **allowed** (the lists in [`table`]): ALLOW, some only for certain
//!   argument values (below).
//! - **refused on purpose** (`REFUSED`, each with its reason): EPERM.
//! - **anything else**, `clone3` included: ENOSYS, as a kernel that lacks
//!   the call would answer, so libc and runtimes fall back (`clone3` ->
//!   `clone`, an unknown new call -> its older form).
//! - socket families and netlink protocols outside the allowlist:
//!   EAFNOSUPPORT, the answer of a kernel built without them. Not EPERM:
//!   shadow-utils (`useradd`, `groupadd`, `usermod`, `chage`, `passwd`,
//!   `newgrp`) abort with "Cannot open audit interface" unless
//!   `socket(AF_NETLINK, .., NETLINK_AUDIT)` fails with EINVAL,
//!   EPROTONOSUPPORT or EAFNOSUPPORT, and package scripts call them.
//! - the dangerous argument values of allowed calls (namespace flags of
//!   `clone`, TIOCSTI/TIOCLINUX, other personalities, AF_VSOCK): EPERM.
//! - on x86_64, x32 system call numbers: EPERM.
//! - a call made with another audit architecture (i386 through `int 0x80`
//!   on x86_64, AArch32 on aarch64) kills the process.
//!
//! PID 1, once it has built the sandbox and before the command starts,
//! installs a filter of its own instead ([`PID1`](table::PID1)): it lives in
//! the host's user namespace, needs a few dozen calls to supervise the
//! command, and is refused (EPERM) every other one.
//!
//! Argument comparisons are 32-bit: the kernel reads `family`, `type`,
//! `protocol` (int), the ioctl request and the personality (unsigned int)
//! and the legacy clone flags (`lower_32_bits`) from the low half of the
//! register, so a 64-bit comparison would let a caller slip past a refusal
//! by setting the high half.

use std::collections::BTreeMap;

use nix::libc;
use seccompiler::BpfProgram;

mod bpf;
mod table;
#[cfg(test)]
mod tests;

use self::bpf::{Case, Filter, Rule, Test, Verdict};
use self::table::{ALLOWED, PID1, REFUSED, REFUSED_ARCH};

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the sandbox's seccomp table covers x86_64 and aarch64 only");

/// A system call: its name (for documentation, tests and messages) and its
/// number on the target architecture.
pub type Syscall = (&'static str, i64);

/// A system call refused with EPERM, and why.
pub type Refusal = (&'static str, i64, &'static str);

/// Why the filters could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("a seccomp filter (or a jump in it) is {len} instructions long, more than fits")]
    TooLong { len: usize },
    #[error("the constant {0} cannot be used in a seccomp comparison")]
    Constant(i64),
    #[error("system calls have six arguments; a seccomp rule tests argument {0}")]
    Argument(u8),
    #[error("cannot install the {filter} seccomp filter: {source}")]
    Install {
        filter: &'static str,
        #[source]
        source: seccompiler::Error,
    },
}

/// Numbers libc 0.2.191 does not name (for this architecture). Calls added
/// since Linux 5.1 (numbers 424 and up) have the same number on every
/// architecture but alpha; sources: arch/x86/entry/syscalls/syscall_64.tbl
/// and include/uapi/asm-generic/unistd.h.
mod nr {
    pub const CACHESTAT: i64 = 451;
    pub const FCHMODAT2: i64 = 452; // libc has it for x86_64, not aarch64
    pub const MAP_SHADOW_STACK: i64 = 453;
    pub const FUTEX_WAKE: i64 = 454;
    pub const FUTEX_WAIT: i64 = 455;
    pub const FUTEX_REQUEUE: i64 = 456;
    pub const STATMOUNT: i64 = 457;
    pub const LISTMOUNT: i64 = 458;
    pub const LSM_GET_SELF_ATTR: i64 = 459;
    pub const LSM_SET_SELF_ATTR: i64 = 460;
    pub const LSM_LIST_MODULES: i64 = 461;
    pub const SETXATTRAT: i64 = 463;
    pub const GETXATTRAT: i64 = 464;
    pub const LISTXATTRAT: i64 = 465;
    pub const REMOVEXATTRAT: i64 = 466;
    pub const OPEN_TREE_ATTR: i64 = 467;

    #[cfg(target_arch = "x86_64")]
    pub const IO_PGETEVENTS: i64 = 333;
    #[cfg(target_arch = "aarch64")]
    pub const IO_PGETEVENTS: i64 = 292;
    #[cfg(target_arch = "x86_64")]
    pub const SYNC_FILE_RANGE: i64 = super::libc::SYS_sync_file_range;
    #[cfg(target_arch = "aarch64")]
    pub const SYNC_FILE_RANGE: i64 = 84;
    #[cfg(target_arch = "x86_64")]
    pub const URETPROBE: i64 = 335;
    // libc names it for aarch64 glibc but not aarch64 musl.
    #[cfg(target_arch = "x86_64")]
    pub const KEXEC_FILE_LOAD: i64 = 320;
    #[cfg(target_arch = "aarch64")]
    pub const KEXEC_FILE_LOAD: i64 = 294;
    // Removed in Linux 2.6; the numbers stay reserved on x86_64.
    #[cfg(target_arch = "x86_64")]
    pub const CREATE_MODULE: i64 = 174;
    #[cfg(target_arch = "x86_64")]
    pub const GET_KERNEL_SYMS: i64 = 177;
    #[cfg(target_arch = "x86_64")]
    pub const QUERY_MODULE: i64 = 178;
}

/// The native audit architecture (linux/audit.h: EM_X86_64 or
/// EM_AARCH64, | 64BIT | LE).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

// ---------------------------------------------------------------------------
// Argument values.
// ---------------------------------------------------------------------------

/// Socket families the command may create (socket(2) arg 0).
const FAMILIES: [libc::c_int; 4] = [
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];
/// The only netlink protocol allowed (socket(2) arg 2 with AF_NETLINK):
/// routes, links and addresses, which glibc's getaddrinfo(AI_ADDRCONFIG)
/// and getifaddrs use. (linux/netlink.h)
const NETLINK_ROUTE: u32 = 0;
/// Personalities Docker allows (default.json 478-542): PER_LINUX,
/// UNAME26, PER_LINUX32, UNAME26|PER_LINUX32, and 0xffffffff (query).
const PERSONALITIES: [u32; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];
/// Namespace flags of clone(2), refused as Docker does with its mask
/// 0x7E020000 (default.json 670-690). CLONE_NEWTIME (0x80) sits in the
/// exit-signal byte of clone(2) and is taken only by clone3/unshare; it is
/// listed for completeness (it refuses only exit signals >= 128, which no
/// program uses).
const NAMESPACE_FLAGS: [libc::c_int; 8] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWTIME,
];
/// AF_VSOCK (linux/socket.h); libc 0.2.191 names it for glibc targets only.
const AF_VSOCK: libc::c_int = 40;
/// Terminal ioctls refused (asm-generic and x86 share these numbers):
/// TIOCSTI pushes input into the terminal the caller shares (the host shell
/// would run it after the sandbox exits); TIOCLINUX's selection commands
/// do the same on a virtual console.
const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541C;
/// The terminal ioctl isatty(3) makes (asm-generic/ioctls.h), all PID 1
/// may make.
const TCGETS: u32 = 0x5401;

/// x32 system calls are x86_64 calls with this bit set in the number;
/// no architecture has a call numbered this high.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// ---------------------------------------------------------------------------
// Building and installing.
// ---------------------------------------------------------------------------

/// The command's filter.
pub fn command_program() -> Result<BpfProgram, SeccompError> {
    let allow = Rule::always(Verdict::Allow);
    let eperm = Verdict::Errno(errno(libc::EPERM)?);
    let eafnosupport = Verdict::Errno(errno(libc::EAFNOSUPPORT)?);
    let mut rules = BTreeMap::new();
    for &(_, number) in ALLOWED.iter().flat_map(|group| group.iter()) {
        rules.insert(number_of(number)?, allow.clone());
    }
    for &(_, number, _) in REFUSED.iter().chain(REFUSED_ARCH) {
        rules.insert(number_of(number)?, Rule::always(eperm));
    }
    // socket: AF_UNIX, AF_INET, AF_INET6 with any type and protocol (type
    // may carry SOCK_CLOEXEC|SOCK_NONBLOCK; raw sockets need CAP_NET_RAW),
    // AF_NETLINK with NETLINK_ROUTE only. Docker allows every family but
    // AF_ALG (38) and AF_VSOCK (40) (default.json 439-477). vsock is
    // refused outright: it is not confined by the network namespace, and
    // on a VM it reaches the hypervisor and its other guests without the
    // proxy.
    let mut socket = vec![case(&[(0, Test::Equals(int(AF_VSOCK)?))], eperm)];
    for family in FAMILIES {
        let mut tests = vec![(0, Test::Equals(int(family)?))];
        if family == libc::AF_NETLINK {
            tests.push((2, Test::Equals(NETLINK_ROUTE)));
        }
        socket.push(case(&tests, Verdict::Allow));
    }
    rules.insert(number_of(libc::SYS_socket)?, rule(socket, eafnosupport));
    // socketpair: only AF_UNIX implements it (Docker allows any family).
    let unix = case(&[(0, Test::Equals(int(libc::AF_UNIX)?))], Verdict::Allow);
    rules.insert(
        number_of(libc::SYS_socketpair)?,
        rule(vec![unix], eafnosupport),
    );
    let personality = PERSONALITIES
        .iter()
        .map(|&value| case(&[(0, Test::Equals(value))], Verdict::Allow))
        .collect();
    rules.insert(number_of(libc::SYS_personality)?, rule(personality, eperm));
    // clone: none of the namespace flags (arg 0 holds the flags on x86_64
    // and aarch64; s390 differs).
    let mut namespaces = 0;
    for flag in NAMESPACE_FLAGS {
        namespaces |= int(flag)?;
    }
    let new_namespace = case(&[(0, Test::AnyBit(namespaces))], eperm);
    rules.insert(
        number_of(libc::SYS_clone)?,
        rule(vec![new_namespace], Verdict::Allow),
    );
    // ioctl: any request but TIOCSTI and TIOCLINUX (Docker allows all).
    let injection = [TIOCSTI, TIOCLINUX]
        .iter()
        .map(|&request| case(&[(1, Test::Equals(request))], eperm))
        .collect();
    rules.insert(number_of(libc::SYS_ioctl)?, rule(injection, Verdict::Allow));
    compile(Filter {
        arch: AUDIT_ARCH,
        rules,
        unlisted: Verdict::Errno(errno(libc::ENOSYS)?),
        above: (X32_SYSCALL_BIT, eperm),
    })
}

/// PID 1's own filter (see the module's documentation).
pub fn pid1_program() -> Result<BpfProgram, SeccompError> {
    let eperm = Verdict::Errno(errno(libc::EPERM)?);
    let mut rules = BTreeMap::new();
    for &(_, number) in PID1 {
        rules.insert(number_of(number)?, Rule::always(Verdict::Allow));
    }
    let isatty = case(&[(1, Test::Equals(TCGETS))], Verdict::Allow);
    rules.insert(number_of(libc::SYS_ioctl)?, rule(vec![isatty], eperm));
    compile(Filter {
        arch: AUDIT_ARCH,
        rules,
        unlisted: eperm,
        above: (X32_SYSCALL_BIT, eperm),
    })
}

/// The filters, compiled once per sandbox (by PID 1, before it forks the
/// command): the command's, and PID 1's own.
pub struct Filters {
    command: BpfProgram,
    pid1: BpfProgram,
}

impl Filters {
    pub fn compile() -> Result<Filters, SeccompError> {
        Ok(Filters {
            command: command_program()?,
            pid1: pid1_program()?,
        })
    }

    /// Installs the command's filter on the calling thread, for
    /// everything it runs from now on. Sets `no_new_privs` (seccompiler
    /// does, before the filter).
    pub fn install(&self) -> Result<(), SeccompError> {
        apply("command", &self.command)
    }

    /// Installs PID 1's filter on the calling thread.
    pub fn install_for_pid1(&self) -> Result<(), SeccompError> {
        apply("PID 1", &self.pid1)
    }
}

fn apply(filter: &'static str, program: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install { filter, source })
}

/// The kernel's limit on one program (BPF_MAXINSNS); seccompiler passes
/// the length to the kernel as a u16 without checking.
const MAX_INSTRUCTIONS: usize = 4096;

fn compile(filter: Filter) -> Result<BpfProgram, SeccompError> {
    let program = filter.compile()?;
    if program.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLong { len: program.len() });
    }
    Ok(program)
}

fn case(tests: &[(u8, Test)], verdict: Verdict) -> Case {
    Case {
        tests: tests.to_vec(),
        verdict,
    }
}

fn rule(cases: Vec<Case>, otherwise: Verdict) -> Rule {
    Rule { cases, otherwise }
}

fn number_of(call: i64) -> Result<u32, SeccompError> {
    u32::try_from(call).map_err(|_| SeccompError::Constant(call))
}

fn int(value: libc::c_int) -> Result<u32, SeccompError> {
    u32::try_from(value).map_err(|_| SeccompError::Constant(i64::from(value)))
}

fn errno(value: libc::c_int) -> Result<u16, SeccompError> {
    u16::try_from(value).map_err(|_| SeccompError::Constant(i64::from(value)))
}

// ---------------------------------------------------------------------------
// Tests: the programs are run by a small classic-BPF interpreter, stacked
// the way the kernel stacks them, without installing anything.
// ---------------------------------------------------------------------------
