//! The sandbox's seccomp policy: an allowlist modelled on Docker's default
//! profile (github.com/moby/profiles, `seccomp/default.json` at commit
//! cd3bed80, see NOTES.md for line references) for a container that holds
//! no capability at all.
//!
//! Three filters are stacked. The kernel runs every filter on every system
//! call and keeps the result with the highest precedence (KILL_PROCESS >
//! KILL_THREAD > TRAP > ERRNO > USER_NOTIF > TRACE > LOG > ALLOW); between
//! two results of the same action the most recently installed filter's
//! wins, errno included (`seccomp_run_filters` walks from the newest filter
//! and replaces its result only on a strictly higher precedence).
//!
//! 1. **allowlist** (installed first): allows what is listed here, under the
//!    conditions below, and answers everything else with ENOSYS, as a kernel
//!    that lacks the call would: libc and runtimes fall back (`clone3` ->
//!    `clone`, an unknown new call -> its older form). This filter alone is
//!    the whole policy: the two others never allow anything (ALLOW is the
//!    lowest precedence), they only choose a clearer errno for what it
//!    refuses, or refuse more.
//! 2. **unsupported**: socket families and netlink protocols outside the
//!    allowlist get EAFNOSUPPORT, the answer of a kernel built without them.
//!    Not EPERM: shadow-utils (`useradd`, `groupadd`, `usermod`, `chage`,
//!    `passwd`, `newgrp`) abort with "Cannot open audit interface" unless
//!    `socket(AF_NETLINK, .., NETLINK_AUDIT)` fails with EINVAL,
//!    EPROTONOSUPPORT or EAFNOSUPPORT, and package scripts call them.
//! 3. **refusals** (installed last, so its EPERM wins over the ENOSYS and
//!    EAFNOSUPPORT above): the calls we refuse on purpose, each with its
//!    reason, the dangerous argument values of allowed calls (namespace
//!    flags of `clone`, TIOCSTI/TIOCLINUX, other personalities, AF_VSOCK)
//!    and, on x86_64, x32 system call numbers.
//!
//! PID 1, once it has built the sandbox and before the command starts,
//! installs a filter of its own instead ([`PID1`](table::PID1)): it lives in
//! the host's user namespace, needs a few dozen calls to supervise the
//! command, and is refused (EPERM) every other one; one small filter is
//! also a fraction of the three's cost to install.
//!
//! Every filter starts with seccompiler's architecture check: a call made
//! with another audit architecture (i386 through `int 0x80` on x86_64,
//! AArch32 on aarch64) kills the process.
//!
//! Argument comparisons are 32-bit (`Dword`): the kernel reads `family`,
//! `type`, `protocol` (int), the ioctl request and the personality
//! (unsigned int) and the legacy clone flags (`lower_32_bits`) from the low
//! half of the register, so a 64-bit comparison would let a caller slip past
//! a refusal by setting the high half.

use std::collections::BTreeMap;

use nix::libc;
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

mod table;
#[cfg(test)]
mod tests;

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
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    #[error("the {filter} seccomp filter has {len} instructions, more than the kernel's 4096")]
    TooLong { filter: &'static str, len: usize },
    #[error("the constant {0} cannot be used in a seccomp comparison")]
    Constant(i64),
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

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

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
const NETLINK_ROUTE: u64 = 0;
/// Personalities Docker allows (default.json 478-542): PER_LINUX,
/// UNAME26, PER_LINUX32, UNAME26|PER_LINUX32, and 0xffffffff (query).
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];
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
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;
/// The terminal ioctl isatty(3) makes (asm-generic/ioctls.h), all PID 1
/// may make.
const TCGETS: u64 = 0x5401;

/// x86_64's audit architecture (linux/audit.h: EM_X86_64 | 64BIT | LE).
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// x32 system calls are x86_64 calls with this bit set in the number.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// ---------------------------------------------------------------------------
// Building and installing.
// ---------------------------------------------------------------------------

/// The three programs, in the order they must be installed (the last one's
/// errno wins among refusals).
pub fn programs() -> Result<Vec<(&'static str, BpfProgram)>, SeccompError> {
    let allowlist = compile("allowlist", allowlist_filter()?, Vec::new())?;
    let unsupported = compile("unsupported", unsupported_filter()?, Vec::new())?;
    let refusals = compile("refusals", refusal_filter()?, x32_guard()?)?;
    Ok(vec![allowlist, unsupported, refusals])
}

/// PID 1's own filter (see the module's documentation).
pub fn pid1_program() -> Result<(&'static str, BpfProgram), SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &(_, number) in PID1 {
        rules.insert(number, Vec::new());
    }
    rules.insert(libc::SYS_ioctl, vec![when(1, Op::Eq, TCGETS)?]);
    let eperm = SeccompAction::Errno(errno(libc::EPERM)?);
    let filter = SeccompFilter::new(rules, eperm, SeccompAction::Allow, ARCH)?;
    compile("pid1", filter, Vec::new())
}

/// The filters, compiled once per sandbox (by PID 1, before it forks the
/// command): the command's three, and PID 1's own.
pub struct Filters {
    command: Vec<(&'static str, BpfProgram)>,
    pid1: (&'static str, BpfProgram),
}

impl Filters {
    pub fn compile() -> Result<Filters, SeccompError> {
        Ok(Filters {
            command: programs()?,
            pid1: pid1_program()?,
        })
    }

    /// Installs the command's filters on the calling thread, for
    /// everything it runs from now on. Sets `no_new_privs` (seccompiler
    /// does, before each filter).
    pub fn install(&self) -> Result<(), SeccompError> {
        self.command.iter().try_for_each(apply)
    }

    /// Installs PID 1's filter on the calling thread.
    pub fn install_for_pid1(&self) -> Result<(), SeccompError> {
        apply(&self.pid1)
    }
}

fn apply((filter, program): &(&'static str, BpfProgram)) -> Result<(), SeccompError> {
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install { filter, source })
}

fn allowlist_filter() -> Result<SeccompFilter, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for group in ALLOWED {
        for &(_, number) in group.iter() {
            rules.insert(number, Vec::new());
        }
    }
    // socket: AF_UNIX, AF_INET, AF_INET6 with any type and protocol (type
    // may carry SOCK_CLOEXEC|SOCK_NONBLOCK; raw sockets need CAP_NET_RAW),
    // AF_NETLINK with NETLINK_ROUTE only. Docker allows every family but
    // AF_ALG (38) and AF_VSOCK (40) (default.json 439-477).
    let mut socket = Vec::new();
    for family in FAMILIES {
        let mut conditions = vec![arg(0, Op::Eq, int(family)?)?];
        if family == libc::AF_NETLINK {
            conditions.push(arg(2, Op::Eq, NETLINK_ROUTE)?);
        }
        socket.push(all_of(conditions)?);
    }
    rules.insert(libc::SYS_socket, socket);
    // socketpair: only AF_UNIX implements it (Docker allows any family).
    let unix = int(libc::AF_UNIX)?;
    rules.insert(libc::SYS_socketpair, vec![when(0, Op::Eq, unix)?]);
    let mut personality = Vec::new();
    for value in PERSONALITIES {
        personality.push(when(0, Op::Eq, value)?);
    }
    rules.insert(libc::SYS_personality, personality);
    // clone: none of the namespace flags (arg 0 holds the flags on x86_64
    // and aarch64; s390 differs).
    let mut mask = 0;
    for flag in NAMESPACE_FLAGS {
        mask |= int(flag)?;
    }
    rules.insert(libc::SYS_clone, vec![when(0, Op::MaskedEq(mask), 0)?]);
    // ioctl: any request but TIOCSTI and TIOCLINUX (Docker allows all).
    let not_injection = vec![arg(1, Op::Ne, TIOCSTI)?, arg(1, Op::Ne, TIOCLINUX)?];
    rules.insert(libc::SYS_ioctl, vec![all_of(not_injection)?]);
    let enosys = SeccompAction::Errno(errno(libc::ENOSYS)?);
    Ok(SeccompFilter::new(
        rules,
        enosys,
        SeccompAction::Allow,
        ARCH,
    )?)
}

fn unsupported_filter() -> Result<SeccompFilter, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut other_family = Vec::new();
    for family in FAMILIES {
        other_family.push(arg(0, Op::Ne, int(family)?)?);
    }
    let netlink = int(libc::AF_NETLINK)?;
    let other_netlink = vec![arg(0, Op::Eq, netlink)?, arg(2, Op::Ne, NETLINK_ROUTE)?];
    rules.insert(
        libc::SYS_socket,
        vec![all_of(other_family)?, all_of(other_netlink)?],
    );
    let unix = int(libc::AF_UNIX)?;
    rules.insert(libc::SYS_socketpair, vec![when(0, Op::Ne, unix)?]);
    let eafnosupport = SeccompAction::Errno(errno(libc::EAFNOSUPPORT)?);
    Ok(SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        eafnosupport,
        ARCH,
    )?)
}

fn refusal_filter() -> Result<SeccompFilter, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for &(_, number, _) in REFUSED.iter().chain(REFUSED_ARCH) {
        rules.insert(number, Vec::new());
    }
    // vsock is not confined by the network namespace: on a VM it reaches
    // the hypervisor and its other guests without the proxy.
    rules.insert(libc::SYS_socket, vec![when(0, Op::Eq, int(AF_VSOCK)?)?]);
    let mut clone = Vec::new();
    for flag in NAMESPACE_FLAGS {
        let flag = int(flag)?;
        clone.push(when(0, Op::MaskedEq(flag), flag)?);
    }
    rules.insert(libc::SYS_clone, clone);
    let injection = vec![when(1, Op::Eq, TIOCSTI)?, when(1, Op::Eq, TIOCLINUX)?];
    rules.insert(libc::SYS_ioctl, injection);
    let mut other_personality = Vec::new();
    for value in PERSONALITIES {
        other_personality.push(arg(0, Op::Ne, value)?);
    }
    rules.insert(libc::SYS_personality, vec![all_of(other_personality)?]);
    let eperm = SeccompAction::Errno(errno(libc::EPERM)?);
    Ok(SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        eperm,
        ARCH,
    )?)
}

/// seccompiler cannot compare the call number with anything but equality,
/// so the x32 check is written by hand and put in front of its program.
/// BPF jumps are relative and only forward, so a prefix that jumps to its
/// own end falls into seccompiler's program unchanged:
///
/// ```text
/// 0: A = arch
/// 1: if A != AUDIT_ARCH_X86_64 goto 5   (seccompiler's own check kills it)
/// 2: A = nr
/// 3: if A < X32_SYSCALL_BIT goto 5
/// 4: return ERRNO(EPERM)
/// 5: seccompiler's program (arch check, then the rules)
/// ```
///
/// Without it, x32 numbers would still be refused (ENOSYS: the allowlist
/// compares whole numbers, none of which has the bit), but only by
/// construction.
#[cfg(target_arch = "x86_64")]
fn x32_guard() -> Result<BpfProgram, SeccompError> {
    // linux/bpf_common.h: BPF_LD = 0, BPF_W = 0, BPF_ABS = 0x20, BPF_JMP = 5,
    // BPF_JEQ = 0x10, BPF_JGE = 0x30, BPF_K = 0, BPF_RET = 6.
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_JMP_JGE_K: u16 = 0x35;
    const BPF_RET_K: u16 = 0x06;
    const ARCH_OFFSET: u32 = 4;
    const NR_OFFSET: u32 = 0;
    let refuse = u32::from(SeccompAction::Errno(errno(libc::EPERM)?));
    let insn = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    Ok(vec![
        insn(BPF_LD_W_ABS, ARCH_OFFSET, 0, 0),
        insn(BPF_JMP_JEQ_K, AUDIT_ARCH_X86_64, 0, 3),
        insn(BPF_LD_W_ABS, NR_OFFSET, 0, 0),
        insn(BPF_JMP_JGE_K, X32_SYSCALL_BIT, 0, 1),
        insn(BPF_RET_K, refuse, 0, 0),
    ])
}

#[cfg(not(target_arch = "x86_64"))]
fn x32_guard() -> Result<BpfProgram, SeccompError> {
    Ok(Vec::new())
}

/// The kernel's limit on one program (BPF_MAXINSNS); seccompiler passes
/// the length to the kernel as a u16 without checking.
const MAX_INSTRUCTIONS: usize = 4096;

fn compile(
    name: &'static str,
    filter: SeccompFilter,
    prefix: BpfProgram,
) -> Result<(&'static str, BpfProgram), SeccompError> {
    let mut program = prefix;
    program.extend(BpfProgram::try_from(filter)?);
    if program.len() > MAX_INSTRUCTIONS {
        return Err(SeccompError::TooLong {
            filter: name,
            len: program.len(),
        });
    }
    Ok((name, program))
}

/// A 32-bit comparison of argument `index` (see the module's doc).
fn arg(index: u8, op: Op, value: u64) -> Result<SeccompCondition, SeccompError> {
    let length = SeccompCmpArgLen::Dword;
    Ok(SeccompCondition::new(index, length, op, value)?)
}

/// A rule of one comparison.
fn when(index: u8, op: Op, value: u64) -> Result<SeccompRule, SeccompError> {
    all_of(vec![arg(index, op, value)?])
}

/// A rule that holds when every comparison does.
fn all_of(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    Ok(SeccompRule::new(conditions)?)
}

fn int(value: libc::c_int) -> Result<u64, SeccompError> {
    u64::try_from(value).map_err(|_| SeccompError::Constant(i64::from(value)))
}

fn errno(value: libc::c_int) -> Result<u32, SeccompError> {
    u32::try_from(value).map_err(|_| SeccompError::Constant(i64::from(value)))
}

// ---------------------------------------------------------------------------
// Tests: the programs are run by a small classic-BPF interpreter, stacked
// the way the kernel stacks them, without installing anything.
// ---------------------------------------------------------------------------
