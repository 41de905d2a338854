//! Classic BPF, as libpcap compiles a tcpdump expression: one interpreter for the XDP
//! program (a capture's filter, run before a frame is copied) and user space (the workers'
//! frames, and the tests that hold it to libpcap's own `bpf_filter`).
//!
//! The semantics are libpcap's (`bpf_filter.c`): loads beyond the frame, a division by zero
//! and anything unknown reject the frame; jumps only go forward, so a program of
//! [`MAX_INSNS`] instructions ends within as many steps.

/// Longest program the XDP program runs (longer filters are applied in user space only).
pub const MAX_INSNS: u32 = 256;
/// Longest program libpcap makes (`BPF_MAXINSNS`).
pub const MAX_PCAP_INSNS: u32 = 4096;

/// One instruction (`struct bpf_insn` of `<pcap/bpf.h>`, `struct sock_filter` of Linux).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CbpfInsn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}
const _: () = assert!(core::mem::size_of::<CbpfInsn>() == 8);

/// The bytes the program reads.
pub trait Frame {
    /// `N` bytes at `offset`, or `None` beyond the frame.
    fn load<const N: usize>(&self, offset: u32) -> Option<[u8; N]>;
}

/// Where the instructions are.
pub trait Insns {
    /// Instruction `pc`, or `None` past the end.
    fn get(&self, pc: u32) -> Option<CbpfInsn>;
}

impl Frame for [u8] {
    fn load<const N: usize>(&self, offset: u32) -> Option<[u8; N]> {
        let start = offset as usize;
        self.get(start..start.checked_add(N)?)?.try_into().ok()
    }
}

impl Insns for [CbpfInsn] {
    fn get(&self, pc: u32) -> Option<CbpfInsn> {
        <[CbpfInsn]>::get(self, pc as usize).copied()
    }
}

// Instruction classes, sizes, modes, operations and sources (`<pcap/bpf.h>`).
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const ST: u16 = 0x02;
const STX: u16 = 0x03;
const ALU: u16 = 0x04;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const IMM: u16 = 0x00;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MEM: u16 = 0x60;
const LEN: u16 = 0x80;
const MSH: u16 = 0xa0;
const SRC_X: u16 = 0x08;

/// Runs `prog` over a frame of `len` bytes: whether it accepts it (returns non-zero) within
/// `STEPS` instructions (a program's length is enough: jumps only go forward).
#[inline(always)]
pub fn accepts<const STEPS: u32, F: Frame + ?Sized, P: Insns + ?Sized>(
    prog: &P,
    frame: &F,
    len: u32,
) -> bool {
    let mut m = Machine::default();
    for _ in 0..STEPS {
        if let Some(verdict) = m.step(prog, frame, len) {
            return verdict;
        }
    }
    false
}

/// The machine's registers, its scratch memory and where it is in the program.
#[derive(Clone, Copy, Debug, Default)]
pub struct Machine {
    a: u32,
    x: u32,
    mem: [u32; 16],
    pc: u32,
}

enum Step {
    Next,
    /// Jump forward this many instructions.
    Skip(u32),
    Return(u32),
}

impl Machine {
    /// Runs one instruction: `Some(accepted)` once the program has returned (or failed).
    #[inline(always)]
    pub fn step<F: Frame + ?Sized, P: Insns + ?Sized>(
        &mut self,
        prog: &P,
        frame: &F,
        len: u32,
    ) -> Option<bool> {
        let Some(insn) = prog.get(self.pc) else { return Some(false) };
        self.pc = self.pc.wrapping_add(1);
        match self.exec(insn, frame, len) {
            Step::Next => None,
            Step::Skip(n) => {
                self.pc = self.pc.wrapping_add(n);
                None
            }
            Step::Return(v) => Some(v != 0),
        }
    }

    #[inline(always)]
    fn exec<F: Frame + ?Sized>(&mut self, insn: CbpfInsn, frame: &F, len: u32) -> Step {
        let (code, k) = (insn.code, insn.k);
        let src = if code & SRC_X != 0 { self.x } else { k };
        match code & 0x07 {
            LD | LDX => match self.load(code, k, frame, len) {
                Some(v) if code & 0x07 == LD => self.a = v,
                Some(v) => self.x = v,
                None => return Step::Return(0),
            },
            // libpcap's programs index the 16 scratch words with k < 16 (it validates them);
            // the mask, not a compare, bounds the index for the verifier.
            ST | STX => {
                self.mem[(k & 15) as usize] = if code & 0x07 == ST { self.a } else { self.x };
            }
            ALU => match alu(code & 0xf0, self.a, src) {
                Some(v) => self.a = v,
                None => return Step::Return(0),
            },
            JMP => return jump(code & 0xf0, self.a, src, insn),
            RET => return Step::Return(if code & 0x18 == 0x10 { self.a } else { k }),
            // MISC: TAX / TXA.
            0x07 if code & 0xf8 == 0x80 => self.a = self.x,
            0x07 if code & 0xf8 == 0x00 => self.x = self.a,
            _ => return Step::Return(0),
        }
        Step::Next
    }

    /// The value an `LD` / `LDX` loads, `None` to reject the frame.
    #[inline(always)]
    fn load<F: Frame + ?Sized>(&self, code: u16, k: u32, frame: &F, len: u32) -> Option<u32> {
        let mode = code & 0xe0;
        let size = code & 0x18;
        match mode {
            IMM => Some(k),
            LEN => Some(len),
            MEM => Some(self.mem[(k & 15) as usize]),
            MSH if size == B => Some(4 * u32::from(frame.load::<1>(k)?[0] & 0xf)),
            ABS | IND => {
                let at = if mode == IND { self.x.checked_add(k)? } else { k };
                match size {
                    W => Some(u32::from_be_bytes(frame.load::<4>(at)?)),
                    H => Some(u32::from(u16::from_be_bytes(frame.load::<2>(at)?))),
                    B => Some(u32::from(frame.load::<1>(at)?[0])),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// An ALU operation on `a` (`None`: division by zero or unknown).
#[inline(always)]
fn alu(op: u16, a: u32, src: u32) -> Option<u32> {
    Some(match op {
        0x00 => a.wrapping_add(src),
        0x10 => a.wrapping_sub(src),
        0x20 => a.wrapping_mul(src),
        0x30 => a.checked_div(src)?,
        0x40 => a | src,
        0x50 => a & src,
        0x60 => a.checked_shl(src).unwrap_or(0),
        0x70 => a.checked_shr(src).unwrap_or(0),
        0x80 => a.wrapping_neg(),
        0x90 => a.checked_rem(src)?,
        0xa0 => a ^ src,
        _ => return None,
    })
}

#[inline(always)]
fn jump(op: u16, a: u32, src: u32, insn: CbpfInsn) -> Step {
    let taken = match op {
        0x00 => return Step::Skip(insn.k),
        0x10 => a == src,
        0x20 => a > src,
        0x30 => a >= src,
        0x40 => a & src != 0,
        _ => return Step::Return(0),
    };
    Step::Skip(u32::from(if taken { insn.jt } else { insn.jf }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u16, jt: u8, jf: u8, k: u32) -> CbpfInsn {
        CbpfInsn { code, jt, jf, k }
    }

    #[test]
    fn ipv4_udp_to_port_7000_as_libpcap_compiles_it() {
        // `tcpdump -d ip and udp dst port 7000`, without the fragment test.
        let prog = [
            insn(0x28, 0, 0, 12),      // ldh [12]
            insn(0x15, 0, 6, 0x0800),  // jeq #0x800
            insn(0x30, 0, 0, 23),      // ldb [23]
            insn(0x15, 0, 4, 17),      // jeq #17
            insn(0xb1, 0, 0, 14),      // ldxb 4*([14]&0xf)
            insn(0x48, 0, 0, 16),      // ldh [x + 16]
            insn(0x15, 0, 1, 7000),    // jeq #7000
            insn(0x06, 0, 0, 262_144), // ret #262144
            insn(0x06, 0, 0, 0),       // ret #0
        ];
        let mut frame = [0u8; 42];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        frame[23] = 17;
        frame[36..38].copy_from_slice(&7000u16.to_be_bytes());
        assert!(accepts::<MAX_INSNS, _, _>(&prog[..], &frame[..], 42));
        frame[37] ^= 1;
        assert!(!accepts::<MAX_INSNS, _, _>(&prog[..], &frame[..], 42));
        // Cut before the port: the load fails, the frame is refused.
        assert!(!accepts::<MAX_INSNS, _, _>(&prog[..], &frame[..36], 36));
        // Running off the end refuses too.
        assert!(!accepts::<MAX_INSNS, _, _>(&prog[..2], &frame[..], 42));
    }

    #[test]
    fn arithmetic_memory_and_division_by_zero() {
        let prog = [
            insn(0x00, 0, 0, 6),  // ld #6
            insn(0x02, 0, 0, 3),  // st M[3]
            insn(0x01, 0, 0, 7),  // ldx #7
            insn(0x2c, 0, 0, 0),  // mul x
            insn(0x61, 0, 0, 3),  // ldx M[3]
            insn(0x1c, 0, 0, 0),  // sub x
            insn(0x15, 1, 0, 36), // jeq #36
            insn(0x06, 0, 0, 0),  // ret #0
            insn(0x16, 0, 0, 0),  // ret a
        ];
        assert!(accepts::<MAX_INSNS, _, _>(&prog[..], &[][..], 0));
        let div0 = [insn(0x00, 0, 0, 1), insn(0x34, 0, 0, 0), insn(0x06, 0, 0, 1)];
        assert!(!accepts::<MAX_INSNS, _, _>(&div0[..], &[][..], 0), "a / 0 refuses");
        let len = [insn(0x80, 0, 0, 0), insn(0x16, 0, 0, 0)];
        assert!(
            accepts::<MAX_INSNS, _, _>(&len[..], &[][..], 5)
                && !accepts::<MAX_INSNS, _, _>(&len[..], &[][..], 0)
        );
    }
}
