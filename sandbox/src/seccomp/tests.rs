use super::table::{CONDITIONAL, FALL_BACK};
use super::*;
use std::collections::BTreeSet;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
#[cfg(target_arch = "x86_64")]
const NATIVE: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const NATIVE: u32 = 0xC000_00B7;
#[cfg(target_arch = "x86_64")]
const COMPAT: u32 = 0x4000_0003; // AUDIT_ARCH_I386
#[cfg(target_arch = "aarch64")]
const COMPAT: u32 = 0x4000_0028; // AUDIT_ARCH_ARM

fn ret_errno(code: libc::c_int) -> u32 {
    0x0005_0000 | u32::try_from(code).unwrap_or(0xffff)
}

/// Runs one program on a `struct seccomp_data`.
fn run(program: &[sock_filter], nr: u32, arch: u32, args: [u64; 6]) -> Result<u32, String> {
    let word = |offset: u32| -> Result<u32, String> {
        match offset {
            0 => Ok(nr),
            4 => Ok(arch),
            16..=63 => {
                let index = usize::try_from((offset - 16) / 8).map_err(|e| e.to_string())?;
                let value = args[index];
                Ok(if offset & 4 == 0 {
                    value as u32
                } else {
                    (value >> 32) as u32
                })
            }
            _ => Err(format!("load from offset {offset}")),
        }
    };
    let (mut pc, mut a) = (0usize, 0u32);
    loop {
        let insn = program.get(pc).ok_or("ran off the end")?;
        let (jt, jf) = (usize::from(insn.jt), usize::from(insn.jf));
        let k = insn.k;
        pc += 1;
        match insn.code {
            0x20 => a = word(k)?,
            0x54 => a &= k,
            0x05 => pc += usize::try_from(k).map_err(|e| e.to_string())?,
            0x15 => pc += if a == k { jt } else { jf },
            0x25 => pc += if a > k { jt } else { jf },
            0x35 => pc += if a >= k { jt } else { jf },
            0x06 => return Ok(k),
            code => return Err(format!("instruction {code:#x}")),
        }
    }
}

/// The kernel's combination: newest filter first, strictly higher
/// precedence (lower signed action) replaces.
fn verdict(nr: i64, arch: u32, args: [u64; 6]) -> Result<u32, Box<dyn std::error::Error>> {
    let nr = u32::try_from(nr)?;
    let mut result = RET_ALLOW;
    for (_, program) in programs()?.iter().rev() {
        let current = run(program, nr, arch, args)?;
        let action = |r: u32| (r & 0xffff_0000) as i32;
        if action(current) < action(result) {
            result = current;
        }
    }
    Ok(result)
}

fn native(nr: i64, args: [u64; 6]) -> Result<u32, Box<dyn std::error::Error>> {
    verdict(nr, NATIVE, args)
}

#[test]
fn lists_are_disjoint_and_without_duplicates() -> TestResult {
    let mut seen = BTreeSet::new();
    let allowed = ALLOWED
        .iter()
        .flat_map(|g| g.iter())
        .chain(CONDITIONAL)
        .chain(FALL_BACK);
    for &(name, number) in allowed {
        assert!(seen.insert(number), "{name} ({number}) listed twice");
    }
    for &(name, number, reason) in REFUSED.iter().chain(REFUSED_ARCH) {
        assert!(!reason.is_empty(), "{name} has no reason");
        assert!(
            seen.insert(number),
            "{name} ({number}) both allowed and refused"
        );
    }
    Ok(())
}

#[test]
fn programs_fit() -> TestResult {
    for (name, program) in programs()? {
        assert!(
            program.len() <= MAX_INSTRUCTIONS,
            "{name}: {}",
            program.len()
        );
    }
    Ok(())
}

#[test]
fn verdicts() -> TestResult {
    let none = [0; 6];
    let eperm = ret_errno(libc::EPERM);
    let enosys = ret_errno(libc::ENOSYS);
    let eafnosupport = ret_errno(libc::EAFNOSUPPORT);
    let family = |f: libc::c_int| u64::try_from(f).unwrap_or(u64::MAX);
    let stream = 1 | 0o2_000_000 | 0o4_000; // SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK
    assert_eq!(native(libc::SYS_read, none)?, RET_ALLOW);
    assert_eq!(native(libc::SYS_mount, none)?, eperm);
    assert_eq!(native(libc::SYS_io_uring_setup, none)?, eperm);
    assert_eq!(native(libc::SYS_clone3, none)?, enosys);
    assert_eq!(native(1000, none)?, enosys);
    for ok in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6] {
        assert_eq!(
            native(libc::SYS_socket, [family(ok), stream, 0, 0, 0, 0])?,
            RET_ALLOW
        );
    }
    let netlink = family(libc::AF_NETLINK);
    assert_eq!(
        native(libc::SYS_socket, [netlink, 3, 0, 0, 0, 0])?,
        RET_ALLOW
    );
    assert_eq!(
        native(libc::SYS_socket, [netlink, 3, 9, 0, 0, 0])?,
        eafnosupport
    );
    assert_eq!(
        native(libc::SYS_socket, [netlink, 3, 15, 0, 0, 0])?,
        eafnosupport
    );
    assert_eq!(
        native(libc::SYS_socket, [family(libc::AF_PACKET), 3, 0, 0, 0, 0])?,
        eafnosupport
    );
    assert_eq!(
        native(libc::SYS_socket, [family(libc::AF_ALG), 5, 0, 0, 0, 0])?,
        eafnosupport
    );
    let vsock = family(AF_VSOCK);
    assert_eq!(native(libc::SYS_socket, [vsock, 1, 0, 0, 0, 0])?, eperm);
    assert_eq!(
        native(libc::SYS_socket, [vsock | 1 << 32, 1, 0, 0, 0, 0])?,
        eperm
    );
    assert_eq!(
        native(libc::SYS_socketpair, [family(libc::AF_UNIX), 1, 0, 0, 0, 0])?,
        RET_ALLOW
    );
    assert_eq!(
        native(libc::SYS_socketpair, [family(libc::AF_INET), 1, 0, 0, 0, 0])?,
        eafnosupport
    );
    assert_eq!(native(libc::SYS_ioctl, [0, TIOCSTI, 0, 0, 0, 0])?, eperm);
    assert_eq!(
        native(libc::SYS_ioctl, [0, TIOCSTI | 1 << 32, 0, 0, 0, 0])?,
        eperm
    );
    assert_eq!(native(libc::SYS_ioctl, [0, TIOCLINUX, 0, 0, 0, 0])?, eperm);
    assert_eq!(native(libc::SYS_ioctl, [0, 0x5401, 0, 0, 0, 0])?, RET_ALLOW); // TCGETS
    let thread = 0x003d_0f00; // glibc's pthread_create flags
    assert_eq!(native(libc::SYS_clone, [thread, 0, 0, 0, 0, 0])?, RET_ALLOW);
    assert_eq!(native(libc::SYS_clone, [17, 0, 0, 0, 0, 0])?, RET_ALLOW); // fork: SIGCHLD
    for flag in NAMESPACE_FLAGS {
        let flags = family(flag) | 17;
        assert_eq!(
            native(libc::SYS_clone, [flags, 0, 0, 0, 0, 0])?,
            eperm,
            "{flag:#x}"
        );
    }
    for value in PERSONALITIES {
        assert_eq!(
            native(libc::SYS_personality, [value, 0, 0, 0, 0, 0])?,
            RET_ALLOW
        );
    }
    assert_eq!(
        native(libc::SYS_personality, [0x0040_0000, 0, 0, 0, 0, 0])?,
        eperm
    );
    assert_eq!(verdict(libc::SYS_read, COMPAT, none)?, RET_KILL_PROCESS);
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x32_numbers_are_refused() -> TestResult {
    let none = [0; 6];
    let x32 = i64::from(X32_SYSCALL_BIT);
    assert_eq!(
        native(x32 | libc::SYS_getpid, none)?,
        ret_errno(libc::EPERM)
    );
    assert_eq!(native(x32 + 512, none)?, ret_errno(libc::EPERM)); // x32 rt_sigaction
    Ok(())
}

#[test]
fn pid_1_may_supervise_and_nothing_more() -> TestResult {
    let (_, program) = pid1_program()?;
    let eperm = ret_errno(libc::EPERM);
    let at = |nr: i64, args: [u64; 6]| run(&program, u32::try_from(nr).unwrap_or(0), NATIVE, args);
    for (name, nr) in [
        ("wait4", libc::SYS_wait4),
        ("kill", libc::SYS_kill),
        ("read", libc::SYS_read),
        ("exit_group", libc::SYS_exit_group),
    ] {
        assert_eq!(at(nr, [0; 6])?, RET_ALLOW, "{name}");
    }
    assert_eq!(at(libc::SYS_ioctl, [0, TCGETS, 0, 0, 0, 0])?, RET_ALLOW);
    assert_eq!(at(libc::SYS_ioctl, [0, TIOCSTI, 0, 0, 0, 0])?, eperm);
    for (name, nr) in [
        ("unshare", libc::SYS_unshare),
        ("setns", libc::SYS_setns),
        ("clone", libc::SYS_clone),
        ("execve", libc::SYS_execve),
        ("openat", libc::SYS_openat),
        ("socket", libc::SYS_socket),
        ("ptrace", libc::SYS_ptrace),
        ("mount", libc::SYS_mount),
    ] {
        assert_eq!(at(nr, [0; 6])?, eperm, "{name}");
    }
    assert_eq!(
        run(&program, u32::try_from(libc::SYS_wait4)?, COMPAT, [0; 6])?,
        RET_KILL_PROCESS
    );
    Ok(())
}
