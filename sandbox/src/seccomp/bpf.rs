//! A seccomp filter as one classic-BPF program that finds a call's rule by
//! binary search over ranges of call numbers.
//!
//! seccompiler (and libseccomp without its tree option) emit one
//! comparison per listed call, so a program of a few hundred calls is a
//! few thousand instructions: the kernel checks, converts and JITs every
//! one when the filter is installed (about a millisecond per sandbox
//! here), and a call listed last walks all of them. Here adjacent numbers
//! with the same rule form one range — the allowlist is a few dozen
//! ranges — and the program compares the number with the ranges' bounds
//! in a balanced tree: about log2(ranges) comparisons to reach any rule,
//! and a program a fraction of the size.
//!
//! Layout:
//!
//! ```text
//! A = arch; if A != the native audit arch: return KILL_PROCESS
//! A = nr
//! tree:   if A >= (first number of the upper half) goto upper half
//!         lower half ...
//!         upper half ...
//! leaf:   [A = argument word; if A != k goto next case; ...] return verdict
//!         ...
//!         return otherwise
//! ```
//!
//! Jumps in classic BPF only go forward, and a conditional jump's offsets
//! are 8-bit: a lower half longer than 255 instructions is stepped over by
//! an unconditional jump (32-bit offset) instead.

use std::collections::BTreeMap;

use seccompiler::{sock_filter, BpfProgram};

use super::SeccompError;

// linux/bpf_common.h and linux/filter.h.
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

// struct seccomp_data (linux/seccomp.h): nr, arch, instruction_pointer,
// args[6]; the low word of an argument is at its own offset on the
// little-endian architectures we build for.
const NR_OFFSET: u32 = 0;
const ARCH_OFFSET: u32 = 4;
const ARGS_OFFSET: u32 = 16;
const ARGS: u8 = 6;

// linux/seccomp.h return values.
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

/// What a filter answers a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Fails the call with this errno.
    Errno(u16),
    /// Kills the whole process (a call from another architecture).
    KillProcess,
}

impl Verdict {
    fn ret(self) -> u32 {
        match self {
            Verdict::Allow => RET_ALLOW,
            Verdict::Errno(errno) => RET_ERRNO | u32::from(errno),
            Verdict::KillProcess => RET_KILL_PROCESS,
        }
    }
}

/// A test of an argument's low 32 bits (the kernel reads every argument
/// the filters test as an int or unsigned int, so the high half is the
/// caller's to set and must not matter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    Equals(u32),
    /// Any of these bits set.
    AnyBit(u32),
}

/// A verdict for the calls whose arguments pass every test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// (argument index, test)
    pub tests: Vec<(u8, Test)>,
    pub verdict: Verdict,
}

/// How one call is answered: the first case that holds, else `otherwise`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub cases: Vec<Case>,
    pub otherwise: Verdict,
}

impl Rule {
    /// The same answer whatever the arguments.
    pub fn always(verdict: Verdict) -> Rule {
        Rule {
            cases: Vec::new(),
            otherwise: verdict,
        }
    }
}

/// A filter: a rule per listed call number, `unlisted` for every other
/// number below `above.0`, and `above.1` for every number from `above.0`
/// up; calls of another architecture than `arch` kill the process.
pub struct Filter {
    pub arch: u32,
    pub rules: BTreeMap<u32, Rule>,
    pub unlisted: Verdict,
    pub above: (u32, Verdict),
}

impl Filter {
    pub fn compile(&self) -> Result<BpfProgram, SeccompError> {
        let ranges = self.ranges();
        let mut program = vec![
            insn(LD_W_ABS, ARCH_OFFSET, 0, 0),
            insn(JEQ_K, self.arch, 1, 0),
            insn(RET_K, Verdict::KillProcess.ret(), 0, 0),
            insn(LD_W_ABS, NR_OFFSET, 0, 0),
        ];
        program.extend(tree(&ranges)?);
        Ok(program)
    }

    /// Every call number, as ranges `(first number, rule)` in order, each
    /// up to the next one's first number; neighbours never share a rule.
    fn ranges(&self) -> Vec<(u32, Rule)> {
        let mut ranges: Vec<(u32, Rule)> = Vec::new();
        let mut push = |first: u32, rule: Rule| {
            if ranges.last().map(|(_, last)| last) != Some(&rule) {
                ranges.push((first, rule));
            }
        };
        let mut next = 0u32;
        for (&nr, rule) in self.rules.range(..self.above.0) {
            if nr > next {
                push(next, Rule::always(self.unlisted));
            }
            push(nr, rule.clone());
            next = nr.saturating_add(1);
        }
        if next < self.above.0 {
            push(next, Rule::always(self.unlisted));
        }
        push(self.above.0, Rule::always(self.above.1));
        ranges
    }
}

/// The binary search over `ranges` (never empty), with the call number in A.
fn tree(ranges: &[(u32, Rule)]) -> Result<BpfProgram, SeccompError> {
    let [(_, rule)] = ranges else {
        let (lower, upper) = ranges.split_at(ranges.len() / 2);
        let (first_upper, _) = upper[0];
        let (lower, upper) = (tree(lower)?, tree(upper)?);
        let mut program = Vec::with_capacity(lower.len() + upper.len() + 2);
        match u8::try_from(lower.len()) {
            Ok(skip) => program.push(insn(JGE_K, first_upper, skip, 0)),
            Err(_) => {
                let skip = u32::try_from(lower.len())
                    .map_err(|_| SeccompError::TooLong { len: lower.len() })?;
                program.push(insn(JGE_K, first_upper, 0, 1));
                program.push(insn(JA, skip, 0, 0));
            }
        }
        program.extend(lower);
        program.extend(upper);
        return Ok(program);
    };
    leaf(rule)
}

/// A rule's cases in order, each a run of tests that jumps to the next
/// case at the first that fails, then its verdict; then `otherwise`.
fn leaf(rule: &Rule) -> Result<BpfProgram, SeccompError> {
    let mut program = Vec::new();
    for case in &rule.cases {
        let tests = case.tests.len();
        for (i, &(arg, test)) in case.tests.iter().enumerate() {
            if arg >= ARGS {
                return Err(SeccompError::Argument(arg));
            }
            // The rest of this case after the jump: two instructions per
            // test left, then its return.
            let rest = 2 * (tests - 1 - i) + 1;
            let rest = u8::try_from(rest).map_err(|_| SeccompError::TooLong { len: rest })?;
            program.push(insn(LD_W_ABS, ARGS_OFFSET + 8 * u32::from(arg), 0, 0));
            program.push(match test {
                Test::Equals(k) => insn(JEQ_K, k, 0, rest),
                Test::AnyBit(bits) => insn(JSET_K, bits, 0, rest),
            });
        }
        program.push(insn(RET_K, case.verdict.ret(), 0, 0));
    }
    program.push(insn(RET_K, rule.otherwise.ret(), 0, 0));
    Ok(program)
}

fn insn(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}
