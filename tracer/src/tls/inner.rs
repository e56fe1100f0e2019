//! One trap per OpenSSL call instead of two, where the code allows it.
//!
//! A uprobe traps at its breakpoint; unless the kernel can emulate the
//! instruction it replaced (`push` of a register, `nop`, a relative `call`
//! or `jmp`), it then runs that instruction out of line and traps again
//! after the single step. On a VM whose hypervisor intercepts the single
//! step that second trap is most of the cost: on this project's VM a probe
//! on `sub rsp` costs ~13 µs per call, one on `push` ~0.9 µs (README, "TLS
//! probes on emulated instructions").
//!
//! OpenSSL's wrappers (`SSL_read` and `SSL_read_ex`, `SSL_write` and
//! `SSL_write_ex`) start with `sub rsp` and call one inner function per
//! direction (`ssl_read_internal(s, buf, num, &n)`, 1 on success: the `_ex`
//! signature), which saves registers first, with `push`. Where both
//! wrappers of a direction call the same function and that function starts
//! with an emulated instruction, its one probe (the `_ex` programs) takes
//! the wrappers' place. The function is found from the code (the libraries
//! carry no symbol for it): the first direct call of each wrapper, the
//! same in both, before their first return.
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// Bytes of a wrapper decoded, and at most how many instructions: the
/// wrappers call in at once (a length check first in `SSL_read`).
const SCAN_BYTES: u64 = 128;
const SCAN_INSNS: usize = 32;

/// Code addressed by file offset: the file's bytes and the file range of
/// the executable section that holds the wrappers (a call's target is
/// computed from file offsets, which equal addresses up to one constant
/// within a section).
pub(super) struct Code<'a> {
    pub file: &'a [u8],
    pub text: std::ops::Range<u64>,
}

impl Code<'_> {
    /// The instructions from file offset `off`, to the section's end or
    /// `len` bytes.
    fn decode(&self, off: u64, len: u64) -> impl Iterator<Item = Instruction> + '_ {
        let end = off.saturating_add(len).min(self.text.end);
        let code = if self.text.contains(&off) {
            self.file.get(off as usize..end as usize).unwrap_or(&[])
        } else {
            &[]
        };
        Decoder::with_ip(64, code, off, DecoderOptions::NONE)
            .into_iter()
            .take_while(|i| !i.is_invalid())
    }

    /// The targets of the direct calls made from `off` on, in order, up to
    /// the first return or unconditional jump.
    fn calls(&self, off: u64) -> Vec<u64> {
        self.decode(off, SCAN_BYTES)
            .take(SCAN_INSNS)
            .take_while(|i| !matches!(i.mnemonic(), Mnemonic::Ret | Mnemonic::Jmp))
            .filter(|i| i.mnemonic() == Mnemonic::Call && i.op0_kind() == OpKind::NearBranch64)
            .map(|i| i.near_branch_target())
            .filter(|t| self.text.contains(t))
            .collect()
    }

    /// Whether the instruction at `off` is one the kernel's x86 uprobes
    /// emulate (no single step): `push` of a 64-bit register, or a `nop`.
    fn emulated(&self, off: u64) -> bool {
        self.decode(off, 16)
            .next()
            .is_some_and(|i| match i.mnemonic() {
                Mnemonic::Push => {
                    i.op0_kind() == OpKind::Register
                        && (Register::RAX as u32..=Register::R15 as u32)
                            .contains(&(i.op0_register() as u32))
                }
                Mnemonic::Nop => true,
                _ => false,
            })
    }

    /// The function both wrappers call (file offsets `plain` and `ex`,
    /// the `_ex` one first), when it starts with an emulated instruction.
    pub(super) fn shared_inner(&self, plain: u64, ex: u64) -> Option<u64> {
        let inner = *self.calls(ex).first()?;
        // The first call of both: a shared error path (`ERR_new`) called
        // first in both is no inner function; a library whose wrappers
        // differ is left on them.
        (inner != plain
            && inner != ex
            && self.calls(plain).first() == Some(&inner)
            && self.emulated(inner))
        .then_some(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `int3` with code placed at offsets.
    fn file(parts: &[(usize, &[u8])]) -> Vec<u8> {
        let mut f = vec![0xcc; 0x400];
        for (at, bytes) in parts {
            f[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        f
    }

    /// `call` from `at` to `to` (5 bytes).
    fn call(at: usize, to: usize) -> [u8; 5] {
        let rel = (to as i64 - (at as i64 + 5)) as i32;
        let r = rel.to_le_bytes();
        [0xe8, r[0], r[1], r[2], r[3]]
    }

    // Shaped as Debian 12's libssl 3.0: SSL_read checks its length (a `js`
    // to an error path), then calls; SSL_read_ex calls at once.
    const PLAIN: usize = 0x100;
    const EX: usize = 0x200;
    const INNER: usize = 0x300;

    fn wrappers(inner_entry: &[u8]) -> Vec<u8> {
        let plain_call = call(PLAIN + 13, INNER);
        let ex_call = call(EX + 4, INNER);
        file(&[
            // sub $0x18,%rsp; xor %eax,%eax; test %edx,%edx; js +0x2f;
            // mov %rsp,%rcx; movslq %edx,%rdx; call INNER; add; ret
            (
                PLAIN,
                &[
                    0x48, 0x83, 0xec, 0x18, 0x31, 0xc0, 0x85, 0xd2, 0x78, 0x2f, 0x48, 0x89, 0xe1,
                ],
            ),
            (PLAIN + 13, &plain_call),
            (PLAIN + 18, &[0x48, 0x63, 0xd2, 0xc3]),
            // sub $0x8,%rsp; call INNER; add $0x8,%rsp; ret
            (EX, &[0x48, 0x83, 0xec, 0x08]),
            (EX + 4, &ex_call),
            (EX + 9, &[0x48, 0x83, 0xc4, 0x08, 0xc3]),
            (INNER, inner_entry),
        ])
    }

    fn code(f: &[u8]) -> Code<'_> {
        Code {
            file: f,
            text: 0..f.len() as u64,
        }
    }

    #[test]
    fn inner_function_starting_with_push_is_found() {
        // push %r13; push %r12
        let f = wrappers(&[0x41, 0x55, 0x41, 0x54, 0xc3]);
        assert_eq!(
            code(&f).shared_inner(PLAIN as u64, EX as u64),
            Some(INNER as u64)
        );
    }

    #[test]
    fn inner_function_needing_a_single_step_is_left() {
        // sub $0x38,%rsp: the wrappers' probes cost the same.
        let f = wrappers(&[0x48, 0x83, 0xec, 0x38, 0xc3]);
        assert_eq!(code(&f).shared_inner(PLAIN as u64, EX as u64), None);
    }

    #[test]
    fn wrappers_calling_different_functions_are_left() {
        let mut f = wrappers(&[0x41, 0x55, 0xc3]);
        // SSL_read now calls elsewhere (e.g. an inlined inner function).
        f[PLAIN + 13..PLAIN + 18].copy_from_slice(&call(PLAIN + 13, INNER + 0x40));
        f[INNER + 0x40] = 0x55;
        assert_eq!(code(&f).shared_inner(PLAIN as u64, EX as u64), None);
    }

    #[test]
    fn a_wrapper_calling_something_else_first_is_left() {
        let mut f = wrappers(&[0x41, 0x55, 0xc3]);
        // SSL_read calls an error function before the inner one.
        f[PLAIN + 4..PLAIN + 9].copy_from_slice(&call(PLAIN + 4, INNER + 0x40));
        f[INNER + 0x40] = 0x55;
        assert_eq!(code(&f).shared_inner(PLAIN as u64, EX as u64), None);
    }

    #[test]
    fn calls_after_a_return_or_outside_the_section_do_not_count() {
        let mut f = wrappers(&[0x41, 0x55, 0xc3]);
        // SSL_read_ex returns before its call.
        f[EX] = 0xc3;
        assert_eq!(code(&f).shared_inner(PLAIN as u64, EX as u64), None);
        let f = wrappers(&[0x41, 0x55, 0xc3]);
        let c = Code {
            file: &f,
            text: 0..INNER as u64,
        };
        assert_eq!(c.shared_inner(PLAIN as u64, EX as u64), None);
    }
}
