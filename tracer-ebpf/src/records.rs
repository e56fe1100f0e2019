//! Records written straight into lane memory, eight bytes at a time.
//!
//! Building the `repr(C)` records of `tracer_common` on the stack and
//! copying them costs: LLVM's BPF backend handles their byte arrays (comm,
//! addresses, padding) one byte at a time and zeroes them with a call to a
//! byte-by-byte memset. These writers store the same layouts as aligned
//! 64-bit words; the asserts below pin the layouts they assume.
use core::mem::offset_of;

use tracer_common::{ConnState, SegmentHeader, SockOp, SockTotals, Tag};

const _: () = {
    assert!(offset_of!(SockOp, dir) == 1);
    assert!(offset_of!(SockOp, len) == 4);
    assert!(offset_of!(SockOp, ts_ns) == 8);
    assert!(offset_of!(SockOp, cookie) == 16);
    assert!(offset_of!(SockOp, pid) == 24);
    assert!(offset_of!(SockOp, tid) == 28);
    assert!(offset_of!(SockOp, seq_end) == 32);
    assert!(offset_of!(SockOp, comm) == 40);
    assert!(core::mem::size_of::<SockOp>() == 56);
    assert!(offset_of!(SegmentHeader, dir) == 1);
    assert!(offset_of!(SegmentHeader, family) == 2);
    assert!(offset_of!(SegmentHeader, tcp_flags) == 3);
    assert!(offset_of!(SegmentHeader, seq) == 4);
    assert!(offset_of!(SegmentHeader, payload_len) == 8);
    assert!(offset_of!(SegmentHeader, captured_len) == 12);
    assert!(offset_of!(SegmentHeader, ts_ns) == 16);
    assert!(offset_of!(SegmentHeader, cookie) == 24);
    assert!(offset_of!(SegmentHeader, local_port) == 32);
    assert!(offset_of!(SegmentHeader, remote_port) == 34);
    assert!(offset_of!(SegmentHeader, seg_flags) == 36);
    assert!(offset_of!(SegmentHeader, local_addr) == 40);
    assert!(offset_of!(SegmentHeader, remote_addr) == 56);
    assert!(core::mem::size_of::<SegmentHeader>() == 72);
    assert!(offset_of!(ConnState, family) == 1);
    assert!(offset_of!(ConnState, old_state) == 2);
    assert!(offset_of!(ConnState, new_state) == 3);
    assert!(offset_of!(ConnState, local_port) == 4);
    assert!(offset_of!(ConnState, remote_port) == 6);
    assert!(offset_of!(ConnState, ts_ns) == 8);
    assert!(offset_of!(ConnState, cookie) == 16);
    assert!(offset_of!(ConnState, pid) == 24);
    assert!(offset_of!(ConnState, tid) == 28);
    assert!(offset_of!(ConnState, local_addr) == 32);
    assert!(offset_of!(ConnState, remote_addr) == 48);
    assert!(core::mem::size_of::<ConnState>() == 64);
    assert!(offset_of!(SockTotals, silence) == 1);
    assert!(offset_of!(SockTotals, ts_ns) == 8);
    assert!(offset_of!(SockTotals, cookie) == 16);
    assert!(offset_of!(SockTotals, silenced_calls) == 24);
    assert!(offset_of!(SockTotals, silenced_bytes) == 40);
    assert!(offset_of!(SockTotals, uncopied_bytes) == 56);
    assert!(core::mem::size_of::<SockTotals>() == 72);
};

/// A [`SockOp`].
pub struct Op {
    pub dir: u8,
    pub len: u32,
    pub ts_ns: u64,
    pub cookie: u64,
    pub pid_tgid: u64,
    pub seq_end: u32,
    /// `comm` as two little-endian words.
    pub comm: [u64; 2],
}

impl Op {
    /// Writes the record at `dst` (8-aligned, 56 bytes of room).
    ///
    /// # Safety
    /// `dst` must point to 56 writable, 8-aligned bytes.
    #[inline(always)]
    pub unsafe fn write(&self, dst: *mut u64) {
        let pid = self.pid_tgid >> 32;
        let tid = self.pid_tgid & 0xffff_ffff;
        unsafe {
            dst.write(Tag::SockOp as u64 | u64::from(self.dir) << 8 | u64::from(self.len) << 32);
            dst.add(1).write(self.ts_ns);
            dst.add(2).write(self.cookie);
            dst.add(3).write(pid | tid << 32);
            dst.add(4).write(u64::from(self.seq_end));
            dst.add(5).write(self.comm[0]);
            dst.add(6).write(self.comm[1]);
        }
    }
}

/// A [`SegmentHeader`] (the payload follows it).
pub struct Seg {
    pub dir: u8,
    pub family: u8,
    pub tcp_flags: u8,
    pub seq: u32,
    pub payload_len: u32,
    pub captured_len: u32,
    pub ts_ns: u64,
    pub cookie: u64,
    pub local_port: u16,
    pub remote_port: u16,
    pub seg_flags: u8,
    /// Local address as two little-endian words (IPv4 in the low four
    /// bytes of the first).
    pub local: [u64; 2],
    /// Remote address, likewise.
    pub remote: [u64; 2],
}

impl Seg {
    /// Writes the header at `dst`.
    ///
    /// # Safety
    /// `dst` must point to 72 writable, 8-aligned bytes.
    #[inline(always)]
    pub unsafe fn write(&self, dst: *mut u64) {
        unsafe {
            dst.write(
                Tag::Segment as u64
                    | u64::from(self.dir) << 8
                    | u64::from(self.family) << 16
                    | u64::from(self.tcp_flags) << 24
                    | u64::from(self.seq) << 32,
            );
            dst.add(1)
                .write(u64::from(self.payload_len) | u64::from(self.captured_len) << 32);
            dst.add(2).write(self.ts_ns);
            dst.add(3).write(self.cookie);
            dst.add(4).write(
                u64::from(self.local_port)
                    | u64::from(self.remote_port) << 16
                    | u64::from(self.seg_flags) << 32,
            );
            dst.add(5).write(self.local[0]);
            dst.add(6).write(self.local[1]);
            dst.add(7).write(self.remote[0]);
            dst.add(8).write(self.remote[1]);
        }
    }
}

/// A [`ConnState`].
pub struct State {
    pub family: u8,
    pub old_state: u8,
    pub new_state: u8,
    pub local_port: u16,
    pub remote_port: u16,
    pub ts_ns: u64,
    pub cookie: u64,
    pub pid_tgid: u64,
    /// Local address as two little-endian words (IPv4 in the low four
    /// bytes of the first).
    pub local: [u64; 2],
    /// Remote address, likewise.
    pub remote: [u64; 2],
}

impl State {
    /// Writes the record at `dst`.
    ///
    /// # Safety
    /// `dst` must point to 64 writable, 8-aligned bytes.
    #[inline(always)]
    pub unsafe fn write(&self, dst: *mut u64) {
        let pid = self.pid_tgid >> 32;
        let tid = self.pid_tgid & 0xffff_ffff;
        unsafe {
            dst.write(
                Tag::ConnState as u64
                    | u64::from(self.family) << 8
                    | u64::from(self.old_state) << 16
                    | u64::from(self.new_state) << 24
                    | u64::from(self.local_port) << 32
                    | u64::from(self.remote_port) << 48,
            );
            dst.add(1).write(self.ts_ns);
            dst.add(2).write(self.cookie);
            dst.add(3).write(pid | tid << 32);
            dst.add(4).write(self.local[0]);
            dst.add(5).write(self.local[1]);
            dst.add(6).write(self.remote[0]);
            dst.add(7).write(self.remote[1]);
        }
    }
}

/// A [`SockTotals`].
pub struct Totals {
    pub silence: u8,
    pub ts_ns: u64,
    pub cookie: u64,
    pub silenced_calls: [u64; 2],
    pub silenced_bytes: [u64; 2],
    pub uncopied: [u64; 2],
}

impl Totals {
    /// Writes the record at `dst`.
    ///
    /// # Safety
    /// `dst` must point to 72 writable, 8-aligned bytes.
    #[inline(always)]
    pub unsafe fn write(&self, dst: *mut u64) {
        unsafe {
            dst.write(Tag::SockTotals as u64 | u64::from(self.silence) << 8);
            dst.add(1).write(self.ts_ns);
            dst.add(2).write(self.cookie);
            dst.add(3).write(self.silenced_calls[0]);
            dst.add(4).write(self.silenced_calls[1]);
            dst.add(5).write(self.silenced_bytes[0]);
            dst.add(6).write(self.silenced_bytes[1]);
            dst.add(7).write(self.uncopied[0]);
            dst.add(8).write(self.uncopied[1]);
        }
    }
}
