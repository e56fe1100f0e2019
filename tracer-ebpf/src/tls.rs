//! TLS plaintext: uprobes on the entry of `SSL_write`, `SSL_read` and their
//! `_ex` forms, one uretprobe on their return.
//!
//! The entry remembers the call in the thread's slot (`TLS_CALLS`, an array
//! indexed by thread id: one load where a hash map would hash and compare,
//! because the socket programs look the slot up on every send and receive).
//! While the call runs, the first send or receive it makes on a TCP socket
//! stamps the slot with the socket's cookie and the sequence number where its
//! ciphertext starts (see [`note_sock_op`]). The return copies a prefix of
//! the plaintext the call really moved into the lane, with that cookie and
//! sequence number; a read served from the library's buffer (no socket
//! call) takes the socket the TLS object used last (`TLS_CONNS`).
use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::bpf_probe_read_user as probe_read_user_raw,
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{
    frame_len, Dir, DropReason, KernelStat, Tag, TlsData, MAX_HEAD, TLS_CALL_SLOTS, TLS_CONNS_MAX,
    TLS_CONN_REMEMBERED, TLS_SEQ_KNOWN,
};

use crate::{add_stat, count_drop, global, lane, AGENT_PID, ENABLED, TLS_SNAP};

const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(TlsData, dir) == 1);
    assert!(offset_of!(TlsData, flags) == 2);
    assert!(offset_of!(TlsData, len) == 4);
    assert!(offset_of!(TlsData, start_ns) == 16);
    assert!(offset_of!(TlsData, cookie) == 24);
    assert!(offset_of!(TlsData, pid) == 32);
    assert!(offset_of!(TlsData, tid) == 36);
    assert!(offset_of!(TlsData, captured_len) == 44);
    assert!(offset_of!(TlsData, comm) == 48);
};

/// A TLS call in progress on one thread.
#[repr(C)]
pub struct TlsCall {
    /// The thread (`bpf_get_current_pid_tgid`); 0: the slot is free.
    pid_tgid: u64,
    /// The TLS object (`SSL *`).
    ssl: u64,
    /// The caller's plaintext buffer.
    buf: u64,
    /// `_ex` forms: where the library writes the byte count; 0 otherwise.
    len_ptr: u64,
    start_ns: u64,
    /// Cookie of the socket of the call's first send or receive (0: none
    /// yet).
    cookie: u64,
    /// Sequence number of that call's first byte.
    seq: u32,
    dir: u32,
}

#[map]
static TLS_CALLS: Array<TlsCall> = Array::with_max_entries(TLS_CALL_SLOTS, 0);

/// `(pid << 32 ^ SSL *)`-ish key: the process and its TLS object.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslKey {
    pid: u64,
    ssl: u64,
}

#[map]
static TLS_CONNS: LruHashMap<SslKey, u64> = LruHashMap::with_max_entries(TLS_CONNS_MAX, 0);

#[inline(always)]
fn slot_of(pid_tgid: u64) -> u32 {
    (pid_tgid as u32) & (TLS_CALL_SLOTS - 1)
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, Dir::Send, false);
    0
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, Dir::Send, true);
    0
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, Dir::Recv, false);
    0
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    enter(&ctx, Dir::Recv, true);
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, dir: Dir, ex: bool) {
    if global(&ENABLED) == 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == global(&AGENT_PID) {
        return;
    }
    // (SSL *s, void *buf, int num) / (SSL *s, void *buf, size_t num, size_t *n)
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    let len_ptr: u64 = if ex { ctx.arg(3).unwrap_or(0) } else { 0 };
    let Some(slot) = TLS_CALLS.get_ptr_mut(slot_of(pid_tgid)) else {
        return;
    };
    // SAFETY: a map value; only this thread uses a slot holding its id, and
    // a slot held by another thread is only overwritten after counting.
    let s = unsafe { &mut *slot };
    if s.pid_tgid != 0 && s.pid_tgid != pid_tgid {
        // Another thread with the same slot is inside a call (or died in
        // one): its plaintext is lost, counted at its return or here.
        count_drop(DropReason::TlsSlotBusy);
    }
    s.pid_tgid = pid_tgid;
    s.ssl = ssl;
    s.buf = buf;
    s.len_ptr = len_ptr;
    // SAFETY: helper without arguments.
    s.start_ns = unsafe { bpf_ktime_get_ns() };
    s.cookie = 0;
    s.seq = 0;
    s.dir = dir as u32;
}

/// From the socket programs: a send or receive of `len` bytes ending at
/// sequence number `seq_end` on socket `cookie`, by thread `pid_tgid`. When
/// that thread is inside a TLS call that has not moved ciphertext yet, the
/// call is on this socket and its ciphertext starts here.
#[inline(always)]
pub fn note_sock_op(pid_tgid: u64, cookie: u64, seq_end: u32, len: u32) {
    if global(&TLS_SNAP) == 0 {
        return;
    }
    let Some(slot) = TLS_CALLS.get_ptr_mut(slot_of(pid_tgid)) else {
        return;
    };
    // SAFETY: a map value (see `enter`).
    let s = unsafe { &mut *slot };
    if s.pid_tgid == pid_tgid && s.cookie == 0 {
        s.cookie = cookie;
        s.seq = seq_end.wrapping_sub(len);
    }
}

const TLS_FRAME: usize = frame_len(size_of::<TlsData>() + MAX_HEAD);

#[uretprobe]
pub fn ssl_ret(ctx: RetProbeContext) -> u32 {
    leave(&ctx);
    0
}

#[inline(always)]
fn leave(ctx: &RetProbeContext) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(slot) = TLS_CALLS.get_ptr_mut(slot_of(pid_tgid)) else {
        return;
    };
    // SAFETY: a map value (see `enter`).
    let s = unsafe { &mut *slot };
    if s.pid_tgid != pid_tgid {
        if global(&ENABLED) != 0 && (pid_tgid >> 32) as u32 != global(&AGENT_PID) {
            count_drop(DropReason::TlsSlotBusy);
        }
        return;
    }
    s.pid_tgid = 0;
    // The functions return an int: the upper half of the register is not
    // part of it (-1 comes back as 0x0000_0000_ffff_ffff).
    let ret = ctx.ret::<u64>() as u32 as i32;
    let moved: u64 = if s.len_ptr != 0 {
        if ret != 1 {
            return;
        }
        // SAFETY: a user address the library wrote the count to; the helper
        // faults safely.
        match unsafe { bpf_probe_read_user(s.len_ptr as *const u64) } {
            Ok(n) => n,
            Err(_) => {
                count_drop(DropReason::TlsReadFailed);
                return;
            }
        }
    } else {
        if ret <= 0 {
            return;
        }
        ret as u64
    };
    if moved == 0 {
        return;
    }
    let len = if moved > u64::from(u32::MAX) {
        u32::MAX
    } else {
        moved as u32
    };
    let pid = pid_tgid >> 32;
    let key = SslKey { pid, ssl: s.ssl };
    let (cookie, seq, flags) = if s.cookie != 0 {
        // Remembered for reads served from the library's buffer; written
        // only when it changed.
        // SAFETY: a map value pointer, read at once.
        let known = TLS_CONNS.get_ptr(&key).map(|c| unsafe { *c });
        if known != Some(s.cookie) {
            let _ = TLS_CONNS.insert(&key, &s.cookie, 0);
        }
        (s.cookie, s.seq, TLS_SEQ_KNOWN)
    } else {
        match TLS_CONNS.get_ptr(&key) {
            // SAFETY: as above.
            Some(c) => (unsafe { *c }, 0, TLS_CONN_REMEMBERED),
            None => (0, 0, 0),
        }
    };
    let snap = global(&TLS_SNAP);
    let mut n = if len > snap { snap } else { len };
    if n > MAX_HEAD as u32 {
        n = MAX_HEAD as u32;
    }
    let Some(held) = lane::reserve_packet::<TLS_FRAME>(true, DropReason::RingFullTls) else {
        return;
    };
    let rec = held.record();
    // SAFETY: the payload room of the held frame (MAX_HEAD bytes after the
    // header); n is bounded by MAX_HEAD above.
    let r = unsafe {
        probe_read_user_raw(
            rec.add(size_of::<TlsData>()) as *mut c_void,
            n,
            s.buf as *const c_void,
        )
    };
    if r < 0 {
        count_drop(DropReason::TlsReadFailed);
        return;
    }
    add_stat(KernelStat::TlsCalls, 1);
    if len > n {
        add_stat(KernelStat::TlsBytesCut, u64::from(len - n));
    }
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    // SAFETY: helper without arguments (the time is taken while the lane is
    // held: a lane's records stay in time order).
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let dst = rec as *mut u64;
    // SAFETY: the frame has room for the 64-byte header, 8-aligned; the
    // layout is pinned in tracer_common.
    unsafe {
        dst.write(
            Tag::TlsData as u64
                | u64::from(s.dir as u8) << 8
                | u64::from(flags) << 16
                | u64::from(len) << 32,
        );
        dst.add(1).write(ts_ns);
        dst.add(2).write(s.start_ns);
        dst.add(3).write(cookie);
        dst.add(4).write(pid | (pid_tgid & 0xffff_ffff) << 32);
        dst.add(5).write(u64::from(seq) | u64::from(n) << 32);
        dst.add(6).write(u64::from_le_bytes(comm_word(&comm, 0)));
        dst.add(7).write(u64::from_le_bytes(comm_word(&comm, 8)));
    }
    held.publish(size_of::<TlsData>() + n as usize);
}

/// The TLS object is freed: the socket remembered for it goes.
#[uprobe]
pub fn ssl_free(ctx: ProbeContext) -> u32 {
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let key = SslKey {
        pid: bpf_get_current_pid_tgid() >> 32,
        ssl,
    };
    let _ = TLS_CONNS.remove(&key);
    0
}

#[inline(always)]
fn comm_word(comm: &[u8; 16], at: usize) -> [u8; 8] {
    let mut w = [0u8; 8];
    w.copy_from_slice(&comm[at..at + 8]);
    w
}
