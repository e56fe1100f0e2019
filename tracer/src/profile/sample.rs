//! A CPU sample record as the kernel wrote it, checked and decoded: who
//! was running, the kernel return addresses, and the user registers plus
//! stack bytes the unwinder starts from.
use crate::comm::Comm;
use tracer_common::{
    SampleHeader, MAX_KSTACK_FRAMES, MAX_STACK_COPY, SAMPLE_KERNEL_THREAD, SAMPLE_STACK_SHORT,
};

/// Lowest kernel address on x86-64: kernel stack entries below it are not
/// kernel code.
const KERNEL_ADDR_START: u64 = 0xffff_8000_0000_0000;
/// End of the canonical user half on x86-64.
const USER_ADDR_END: u64 = 0x0000_8000_0000_0000;

/// The user registers an unwind starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserRegs {
    /// Instruction pointer.
    pub ip: u64,
    /// Stack pointer.
    pub sp: u64,
    /// Frame pointer (`rbp`).
    pub bp: u64,
}

/// A decoded sample; borrows the record's stack bytes.
#[derive(Clone, Debug)]
pub struct Sample<'a> {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU.
    pub cpu: u32,
    /// `bpf_ktime_get_ns` of the sample.
    pub ts_ns: u64,
    /// Thread name (`comm`).
    pub comm: Comm,
    /// Kernel return addresses, leaf first (empty when the tick hit user
    /// code).
    pub kernel_ips: Vec<u64>,
    /// None for kernel threads and for user registers that are not user
    /// addresses.
    pub user: Option<UserRegs>,
    /// The top of the user stack from `user.sp` up.
    pub stack: &'a [u8],
    /// The stack copy is shorter than configured because the read faulted.
    pub stack_short: bool,
    /// A kernel thread.
    pub kernel_thread: bool,
}

/// Why a sample record is unusable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleError {
    /// Lengths beyond what the program writes, or stack bytes missing.
    BadLength,
    /// pid 0 (the idle task, which the program skips).
    Idle,
}

impl<'a> Sample<'a> {
    /// Checks and decodes a record; `stack` is what followed the header
    /// (`Record::Sample` already cut it to `stack_len`).
    pub fn decode(hdr: &SampleHeader, stack: &'a [u8]) -> Result<Sample<'a>, SampleError> {
        let klen = hdr.kstack_len as usize;
        let slen = hdr.stack_len as usize;
        if klen > MAX_KSTACK_FRAMES || slen > MAX_STACK_COPY || stack.len() < slen {
            return Err(SampleError::BadLength);
        }
        if hdr.pid == 0 {
            return Err(SampleError::Idle);
        }
        let kernel_ips = hdr
            .kstack
            .iter()
            .take(klen)
            .copied()
            .filter(|&a| a >= KERNEL_ADDR_START)
            .collect();
        let kernel_thread = hdr.flags & SAMPLE_KERNEL_THREAD != 0;
        let user = (!kernel_thread
            && hdr.ip != 0
            && hdr.ip < USER_ADDR_END
            && hdr.sp != 0
            && hdr.sp < USER_ADDR_END)
            .then_some(UserRegs {
                ip: hdr.ip,
                sp: hdr.sp,
                bp: hdr.bp,
            });
        Ok(Sample {
            pid: hdr.pid,
            tid: hdr.tid,
            cpu: hdr.cpu,
            ts_ns: hdr.ts_ns,
            comm: Comm::new(hdr.comm),
            kernel_ips,
            user,
            stack: &stack[..slen],
            stack_short: hdr.flags & SAMPLE_STACK_SHORT != 0,
            kernel_thread,
        })
    }

    /// Reads the 8-byte word at user address `addr` from the stack copy;
    /// None outside it.
    pub fn read_stack(&self, addr: u64) -> Option<u64> {
        read_word(self.user.map_or(0, |r| r.sp), self.stack, addr)
    }
}

/// The word at `addr` of a stack copy that starts at `sp`.
pub fn read_word(sp: u64, stack: &[u8], addr: u64) -> Option<u64> {
    let off = usize::try_from(addr.checked_sub(sp)?).ok()?;
    let b = stack.get(off..off.checked_add(8)?)?;
    let mut w = [0u8; 8];
    w.copy_from_slice(b);
    Some(u64::from_le_bytes(w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::Tag;

    fn hdr() -> SampleHeader {
        let mut kstack = [0u64; MAX_KSTACK_FRAMES];
        kstack[0] = 0xffff_ffff_8100_0010;
        kstack[1] = 0x10; // not a kernel address: dropped
        kstack[2] = 0xffff_ffff_8100_0020;
        SampleHeader {
            tag: Tag::Sample as u8,
            flags: 0,
            kstack_len: 3,
            cpu: 1,
            pid: 7,
            tid: 8,
            ts_ns: 99,
            ip: 0x40_1000,
            sp: 0x7ffe_0000_0000,
            bp: 0,
            stack_len: 16,
            _pad: 0,
            comm: *b"spin\0\0\0\0\0\0\0\0\0\0\0\0",
            kstack,
        }
    }

    #[test]
    fn decodes_registers_kernel_stack_and_stack_words() {
        let mut stack = 0x1122_3344_5566_7788u64.to_le_bytes().to_vec();
        stack.extend_from_slice(&42u64.to_le_bytes());
        let h = hdr();
        let s = Sample::decode(&h, &stack).unwrap();
        assert_eq!(
            s.kernel_ips,
            vec![0xffff_ffff_8100_0010, 0xffff_ffff_8100_0020]
        );
        assert_eq!(
            s.user,
            Some(UserRegs {
                ip: 0x40_1000,
                sp: 0x7ffe_0000_0000,
                bp: 0
            })
        );
        assert_eq!(s.comm.text(), "spin");
        assert_eq!(s.read_stack(0x7ffe_0000_0000), Some(0x1122_3344_5566_7788));
        assert_eq!(s.read_stack(0x7ffe_0000_0008), Some(42));
        assert_eq!(s.read_stack(0x7ffe_0000_0009), None);
        assert_eq!(s.read_stack(0x7ffd_ffff_fff8), None);
        assert_eq!(s.read_stack(u64::MAX), None);
    }

    #[test]
    fn kernel_threads_and_bad_records() {
        let mut h = hdr();
        h.flags = SAMPLE_KERNEL_THREAD;
        let s = Sample::decode(&h, &[0; 16]).unwrap();
        assert!(s.kernel_thread && s.user.is_none());
        let mut h = hdr();
        h.ip = 0xffff_ffff_8100_0000; // kernel ip in user regs: not used
        assert!(Sample::decode(&h, &[0; 16]).unwrap().user.is_none());
        let h = hdr();
        assert_eq!(
            Sample::decode(&h, &[0; 8]).unwrap_err(),
            SampleError::BadLength
        );
        let mut h = hdr();
        h.kstack_len = 65;
        assert_eq!(
            Sample::decode(&h, &[0; 16]).unwrap_err(),
            SampleError::BadLength
        );
        let mut h = hdr();
        h.pid = 0;
        assert_eq!(Sample::decode(&h, &[0; 16]).unwrap_err(), SampleError::Idle);
    }
}
