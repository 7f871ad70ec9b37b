use super::table::{CONDITIONAL, FALL_BACK};
use super::*;
use seccompiler::sock_filter;
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
            0x05 => pc += usize::try_from(k).map_err(|e| e.to_string())?,
            0x15 => pc += if a == k { jt } else { jf },
            0x35 => pc += if a >= k { jt } else { jf },
            0x45 => pc += if a & k != 0 { jt } else { jf },
            0x06 => return Ok(k),
            code => return Err(format!("instruction {code:#x}")),
        }
    }
}

fn verdict(nr: i64, arch: u32, args: [u64; 6]) -> Result<u32, Box<dyn std::error::Error>> {
    Ok(run(&command_program()?, u32::try_from(nr)?, arch, args)?)
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

/// The point of the binary search: a program of a few hundred
/// instructions (seccompiler's three linear filters were 1,575), which the
/// kernel checks and JITs at every sandbox's start.
#[test]
fn programs_are_small() -> TestResult {
    let command = command_program()?.len();
    assert!(
        command <= 300,
        "the command's filter has {command} instructions"
    );
    let pid1 = pid1_program()?.len();
    assert!(pid1 <= 120, "PID 1's filter has {pid1} instructions");
    Ok(())
}

/// Every number up to well past the highest call answers as the lists
/// say, whatever its neighbours are.
#[test]
fn every_number_answers_as_listed() -> TestResult {
    let program = command_program()?;
    let conditional: BTreeSet<i64> = CONDITIONAL.iter().map(|&(_, nr)| nr).collect();
    let allowed: BTreeSet<i64> = ALLOWED
        .iter()
        .flat_map(|g| g.iter())
        .map(|&(_, nr)| nr)
        .collect();
    let refused: BTreeSet<i64> = REFUSED
        .iter()
        .chain(REFUSED_ARCH)
        .map(|&(_, nr, _)| nr)
        .collect();
    for nr in 0..2048i64 {
        if conditional.contains(&nr) {
            continue;
        }
        let expected = if allowed.contains(&nr) {
            RET_ALLOW
        } else if refused.contains(&nr) {
            ret_errno(libc::EPERM)
        } else {
            ret_errno(libc::ENOSYS)
        };
        let got = run(&program, u32::try_from(nr)?, NATIVE, [0; 6])?;
        assert_eq!(got, expected, "call number {nr}");
    }
    for nr in [X32_SYSCALL_BIT - 1, u32::MAX] {
        let expected = if nr < X32_SYSCALL_BIT {
            ret_errno(libc::ENOSYS)
        } else {
            ret_errno(libc::EPERM)
        };
        assert_eq!(
            run(&program, nr, NATIVE, [0; 6])?,
            expected,
            "call number {nr:#x}"
        );
    }
    Ok(())
}

/// A tree whose lower halves are too long for a conditional jump's 8-bit
/// offset steps over them with an unconditional jump, and still finds
/// every rule.
#[test]
fn long_trees_jump_over_long_halves() -> TestResult {
    let eperm = Verdict::Errno(1);
    let mut rules = BTreeMap::new();
    for nr in 0..400u32 {
        // Every number its own range, each leaf a few instructions.
        let verdict = if nr % 2 == 0 { Verdict::Allow } else { eperm };
        let test = case(&[(0, Test::Equals(nr)), (1, Test::AnyBit(1))], verdict);
        rules.insert(nr, rule(vec![test], Verdict::Errno(2)));
    }
    let program = compile(Filter {
        arch: NATIVE,
        rules,
        unlisted: Verdict::Errno(3),
        above: (5000, eperm),
    })?;
    assert!(program.len() > 3 * 256, "{} instructions", program.len());
    assert!(program.iter().any(|insn| insn.code == 0x05), "no long jump");
    for nr in 0..400u32 {
        let want = if nr % 2 == 0 { RET_ALLOW } else { ret_errno(1) };
        assert_eq!(
            run(&program, nr, NATIVE, [u64::from(nr), 1, 0, 0, 0, 0])?,
            want,
            "{nr}"
        );
        assert_eq!(
            run(&program, nr, NATIVE, [u64::from(nr), 2, 0, 0, 0, 0])?,
            ret_errno(2),
            "{nr}"
        );
    }
    assert_eq!(run(&program, 400, NATIVE, [0; 6])?, ret_errno(3));
    assert_eq!(run(&program, 5000, NATIVE, [0; 6])?, ret_errno(1));
    assert_eq!(
        run(&program, 7, COMPAT, [7, 1, 0, 0, 0, 0])?,
        RET_KILL_PROCESS
    );
    Ok(())
}

#[test]
fn a_seventh_argument_is_refused() {
    let mut rules = BTreeMap::new();
    rules.insert(
        0,
        rule(
            vec![case(&[(6, Test::Equals(0))], Verdict::Allow)],
            Verdict::Allow,
        ),
    );
    let filter = Filter {
        arch: NATIVE,
        rules,
        unlisted: Verdict::Allow,
        above: (10, Verdict::Allow),
    };
    assert!(matches!(filter.compile(), Err(SeccompError::Argument(6))));
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
    assert_eq!(
        native(libc::SYS_ioctl, [0, u64::from(TIOCSTI), 0, 0, 0, 0])?,
        eperm
    );
    assert_eq!(
        native(
            libc::SYS_ioctl,
            [0, u64::from(TIOCSTI) | 1 << 32, 0, 0, 0, 0]
        )?,
        eperm
    );
    assert_eq!(
        native(libc::SYS_ioctl, [0, u64::from(TIOCLINUX), 0, 0, 0, 0])?,
        eperm
    );
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
            native(libc::SYS_personality, [u64::from(value), 0, 0, 0, 0, 0])?,
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
    let program = pid1_program()?;
    let eperm = ret_errno(libc::EPERM);
    let at = |nr: i64, args: [u64; 6]| run(&program, u32::try_from(nr).unwrap_or(0), NATIVE, args);
    for (name, nr) in [
        ("wait4", libc::SYS_wait4),
        ("kill", libc::SYS_kill),
        ("read", libc::SYS_read),
        ("recvmsg", libc::SYS_recvmsg),
        ("sendmsg", libc::SYS_sendmsg),
        ("exit_group", libc::SYS_exit_group),
    ] {
        assert_eq!(at(nr, [0; 6])?, RET_ALLOW, "{name}");
    }
    assert_eq!(
        at(libc::SYS_ioctl, [0, u64::from(TCGETS), 0, 0, 0, 0])?,
        RET_ALLOW
    );
    assert_eq!(
        at(libc::SYS_ioctl, [0, u64::from(TIOCSTI), 0, 0, 0, 0])?,
        eperm
    );
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
