//! TLS plaintext: uprobes on the entry of `SSL_write`, `SSL_read` and their
//! `_ex` forms (and of GnuTLS's `gnutls_record_send2`/`gnutls_record_recv`,
//! which take and return the same), one uretprobe on their return.
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
//!
//! Memory BIOs (Node's `TLSWrap`: files user space attached with the
//! [`TLS_COOKIE_MEMBIO`] cookie; any TLS object given a read BIO that is
//! not a socket, see [`ssl_set_bio`]): the socket I/O happens outside the
//! TLS call, on the same thread. A read takes the thread's last receive if
//! no read claimed it yet and that receive is exactly its record; the reads
//! of a receive that holds several records go to user space with it, which
//! proves them together (`TLS_RECV_CANDIDATE`). A write waits in the
//! thread's slot for the thread's next send, which emits it when that send
//! is exactly its one record (see
//! docs/design/010-tls-plaintext.md for why this never stamps a wrong
//! sequence number that could pair).
use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{
            bpf_get_attach_cookie, bpf_probe_read_kernel as probe_read_kernel_raw,
            bpf_probe_read_user as probe_read_user_raw,
        },
    },
    macros::{map, uprobe, uretprobe},
    maps::{Array, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use tracer_common::{
    frame_len, Dir, DropReason, KernelStat, Tag, TlsData, MAX_HEAD, TLS_BIO_METHOD_AT_OSSL3,
    TLS_CALL_SLOTS, TLS_CONNS_MAX, TLS_CONN_REMEMBERED, TLS_COOKIE_MEMBIO, TLS_LINKED_OUTSIDE,
    TLS_RECV_CANDIDATE, TLS_RECV_END, TLS_SEQ_KNOWN, TLS_SNAP_MAX,
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
    assert!(offset_of!(TlsData, recv_len) == 64);
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
    /// The last receive a thread of this slot made outside a TLS call
    /// (`recv_tid`: that thread, 0: none): its socket and first sequence
    /// number, and whether a memory-BIO read already took it (0), none did
    /// ([`RECV_FRESH`]) or reads share it ([`RECV_SHARED`]).
    recv_tid: u64,
    recv_cookie: u64,
    recv_seq: u32,
    recv_len: u32,
    recv_fresh: u32,
    /// Bytes of the call's first send or receive (with `cookie`): a read's
    /// receive may hold records that later reads take from the library's
    /// buffer, which user space proves from it.
    first_len: u32,
    /// A memory-BIO write of thread `pend_tid` (0: none) waiting for the
    /// thread's next send: its TLS object, entry time and length (its
    /// plaintext waits in `TLS_PENDING`).
    pend_tid: u64,
    pend_ssl: u64,
    pend_start_ns: u64,
    pend_len: u32,
}

/// The plaintext of a waiting memory-BIO write, copied at the write's
/// return (the caller may reuse its buffer before the send: Node does for
/// a write queued during the handshake).
#[repr(C)]
pub struct PendingWrite {
    /// The thread (`bpf_get_current_pid_tgid`); 0: free.
    owner: u64,
    captured: u32,
    _pad: u32,
    data: [u8; MAX_HEAD],
}

/// Waiting writes by thread id (`tid % PENDING_SLOTS`): memory-BIO
/// processes are event loops with a thread or a few.
#[map]
static TLS_PENDING: Array<PendingWrite> = Array::with_max_entries(PENDING_SLOTS, 0);

const PENDING_SLOTS: u32 = 256;

#[map]
static TLS_CALLS: Array<TlsCall> = Array::with_max_entries(TLS_CALL_SLOTS, 0);

/// `(pid << 32 ^ SSL *)`-ish key: the process and its TLS object.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SslKey {
    pid: u64,
    ssl: u64,
}

/// Socket cookie by TLS object; [`MEMBIO`] set when it was learned from a
/// send or receive outside the TLS calls.
#[map]
static TLS_CONNS: LruHashMap<SslKey, u64> = LruHashMap::with_max_entries(TLS_CONNS_MAX, 0);

/// Set in a `TLS_CONNS` value learned outside the TLS calls (kernel
/// cookies count up from 1 and never reach it).
const MEMBIO: u64 = 1 << 63;

/// `TlsCall::recv_fresh`: no memory-BIO read took the receive yet.
const RECV_FRESH: u32 = 1;
/// `TlsCall::recv_fresh`: the receive holds several records; the reads
/// that take them go to user space as candidates.
const RECV_SHARED: u32 = 2;

/// Largest plaintext of one TLS record.
const MAX_RECORD: u32 = 16384;

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
    // / (gnutls_session_t s, void *buf, size_t num, ...)
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
/// sequence number `seq_end` on socket `cookie`, by thread `pid_tgid` (a
/// receive's data end: a FIN it took is not counted, see
/// [`tracer_common::recv_data_end`]).
/// - Inside a TLS call of the same direction that has not moved ciphertext
///   yet: the call is on this socket and its ciphertext starts here.
/// - A send inside a read on that read's socket: the read starts again.
/// - A receive outside a TLS call: remembered as the thread's last one, for
///   a memory-BIO read that follows.
/// - A send outside a TLS call by a thread with a memory-BIO write waiting:
///   that write goes out now, stamped by this send if it is its record.
#[inline(always)]
pub fn note_sock_op(pid_tgid: u64, cookie: u64, seq_end: u32, len: u32, dir: Dir) {
    if global(&TLS_SNAP) == 0 {
        return;
    }
    let Some(slot) = TLS_CALLS.get_ptr_mut(slot_of(pid_tgid)) else {
        return;
    };
    // SAFETY: a map value (see `enter`).
    let s = unsafe { &mut *slot };
    let seq = seq_end.wrapping_sub(len);
    if s.pid_tgid == pid_tgid {
        if s.cookie == 0 && s.dir == dir as u32 {
            s.cookie = cookie;
            s.seq = seq;
            s.first_len = len;
        } else if s.cookie == cookie && dir == Dir::Send && s.dir == Dir::Recv as u32 {
            // A read that sends on its socket shakes hands (a server that
            // lets its first read do it), answers a key update or sends
            // session tickets: what it received so far was not the
            // record it returns, which comes after (and so does its
            // start).
            s.cookie = 0;
            // SAFETY: helper without arguments.
            s.start_ns = unsafe { bpf_ktime_get_ns() };
        }
        return;
    }
    match dir {
        Dir::Recv => {
            s.recv_tid = pid_tgid;
            s.recv_cookie = cookie;
            s.recv_seq = seq;
            s.recv_len = len;
            s.recv_fresh = RECV_FRESH;
        }
        Dir::Send => {
            if s.pend_tid == pid_tgid {
                flush_pending(s, Some((cookie, seq, len)));
            }
        }
    }
}

/// The waiting memory-BIO write of the slot goes out: stamped by `send`
/// (its thread's next send: cookie, first sequence number, length) when
/// that send is exactly the write's one record on the socket its TLS
/// object uses; else with the remembered socket and no sequence number.
#[inline(always)]
fn flush_pending(s: &mut TlsCall, send: Option<(u64, u32, u32)>) {
    let pid_tgid = s.pend_tid;
    s.pend_tid = 0;
    let key = SslKey {
        pid: pid_tgid >> 32,
        ssl: s.pend_ssl,
    };
    // 0: not known (cookies count up from 1). A plain number, not an
    // Option: the BPF backend left an Option's payload unset on the path
    // the verifier then followed.
    let known = match TLS_CONNS.get_ptr(&key) {
        // SAFETY: a map value pointer, read at once.
        Some(c) => (unsafe { *c }) & !MEMBIO,
        None => 0,
    };
    let plen = s.pend_len;
    let (cookie, seq, flags) = match send {
        Some((cookie, seq, len)) => {
            // Where the write's record starts in the send, when the send is
            // - exactly that record (see `one_record`);
            // - a TLS 1.3 client's last handshake flight, then that record:
            //   a client's first write leaves with it. The flight is the
            //   Finished record (5 + 4 + 32 or 48 + 1 + 16: SHA-256 or
            //   SHA-384 suites), after a 6-byte ChangeCipherSpec in
            //   middlebox-compatibility mode (OpenSSL's default); the
            //   record's overhead is then 22. 80 (SHA-256 without the
            //   ChangeCipherSpec) is left out: a TLS 1.2 resumption's
            //   client flight (6 + 45) and an AES-GCM record (+ 29) make
            //   80 too, with the record 7 bytes further.
            // Older ciphertext in front of it (a write that waited), a
            // second record or a short send fail this.
            let extra = len.wrapping_sub(plen);
            let at = if one_record(len, plen) {
                Some(0)
            } else {
                match extra {
                    86 | 96 | 102 => Some(extra - 22),
                    _ => None,
                }
            };
            if let (Some(at), true) = (at, plen <= MAX_RECORD && (known == 0 || known == cookie)) {
                if known == 0 {
                    let _ = TLS_CONNS.insert(&key, &(cookie | MEMBIO), 0);
                }
                add_stat(KernelStat::TlsLinkedOutside, 1);
                (
                    cookie,
                    seq.wrapping_add(at),
                    TLS_SEQ_KNOWN | TLS_LINKED_OUTSIDE,
                )
            } else {
                add_stat(KernelStat::TlsLinkRefused, 1);
                remembered(known)
            }
        }
        None => remembered(known),
    };
    let Some(p) = TLS_PENDING.get_ptr_mut((pid_tgid as u32) & (PENDING_SLOTS - 1)) else {
        return;
    };
    // SAFETY: a map value; its owner is checked before use.
    let p = unsafe { &mut *p };
    if p.owner != pid_tgid {
        count_drop(DropReason::TlsSlotBusy);
        return;
    }
    p.owner = 0;
    emit(
        pid_tgid,
        Dir::Send as u8,
        flags,
        cookie,
        seq,
        plen,
        s.pend_start_ns,
        0,
        Src::Kernel(p.data.as_ptr() as u64, p.captured),
    );
}

/// How many plaintext bytes a record copies of `n`: at most TLS_SNAP_MAX,
/// bounded by a mask computed after `black_box`, so that the bound is in the
/// register the helper takes (or in its full-width spill). A clamp with a
/// comparison let the compiler spill `n` before the comparison and reload
/// it after, and 6.1's verifier does not carry the comparison to the
/// reloaded value ("R2 unbounded memory access").
#[inline(always)]
fn copy_len(n: u32) -> u32 {
    const MASK: u64 = TLS_SNAP_MAX as u64;
    const _: () =
        assert!((TLS_SNAP_MAX + 1).is_power_of_two() && TLS_SNAP_MAX as usize == MAX_HEAD - 1);
    let n = u64::from(n).min(MASK);
    (core::hint::black_box(n) & MASK) as u32
}

/// Where a record's plaintext is copied from.
pub(crate) enum Src {
    /// The caller's buffer (at the call's return).
    User(u64),
    /// A waiting write's copy, of that many bytes.
    Kernel(u64, u32),
}

/// Whether `cipher` bytes of ciphertext are exactly one record carrying
/// `plain` bytes of plaintext: the plaintext plus an AEAD record's overhead
/// (TLS 1.3: 5 + 1 + 16; TLS 1.2 AES-GCM: 5 + 8 + 16; ChaCha20-Poly1305:
/// 5 + 16). Any other record in the same bytes (a handshake message, a
/// second record, part of one) adds at least 6 bytes, more than the gap
/// between these overheads allows... except a part of 1, 7 or 8 bytes,
/// see docs/design/010-tls-plaintext.md.
#[inline(always)]
fn one_record(cipher: u32, plain: u32) -> bool {
    let extra = cipher.wrapping_sub(plain);
    plain <= MAX_RECORD && (extra == 21 || extra == 22 || extra == 29)
}

/// Whether the probe's file does its TLS over memory BIOs (its attach
/// cookie). Read at the return, only for a call that moved no ciphertext
/// itself: at every entry it cost 25 ns.
#[inline(always)]
fn membio_file(ctx: &RetProbeContext) -> bool {
    // SAFETY: the program's context.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) == TLS_COOKIE_MEMBIO }
}

/// The socket a TLS object used last, without a sequence number (0: none).
#[inline(always)]
fn remembered(cookie: u64) -> (u64, u32, u8) {
    if cookie == 0 {
        (0, 0, 0)
    } else {
        (cookie, 0, TLS_CONN_REMEMBERED)
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
            end_shared(s, pid_tgid);
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
            end_shared(s, pid_tgid);
            return;
        }
        ret as u64
    };
    if moved == 0 {
        end_shared(s, pid_tgid);
        return;
    }
    let len = if moved > u64::from(u32::MAX) {
        u32::MAX
    } else {
        moved as u32
    };
    let pid = pid_tgid >> 32;
    let key = SslKey { pid, ssl: s.ssl };
    let mut recv_len = 0;
    // 0: none (see `flush_pending`).
    let known = match TLS_CONNS.get_ptr(&key) {
        // SAFETY: a map value pointer, read at once.
        Some(c) => unsafe { *c },
        None => 0,
    };
    let (cookie, seq, flags) = if s.cookie != 0 {
        // Remembered for reads served from the library's buffer; written
        // only when it changed.
        if known != s.cookie {
            let _ = TLS_CONNS.insert(&key, &s.cookie, 0);
        }
        if s.dir == Dir::Recv as u32 {
            recv_len = s.first_len;
        }
        (s.cookie, s.seq, TLS_SEQ_KNOWN)
    } else if known != 0 && known & MEMBIO == 0 {
        // A socket BIO: a read served from the library's buffer.
        (known, 0, TLS_CONN_REMEMBERED)
    } else if known != 0 || membio_file(ctx) {
        // (`known` here is a memory-BIO link or mark: see `ssl_set_bio`.)
        if s.dir == Dir::Send as u32 {
            if s.pend_tid == pid_tgid {
                flush_pending(s, None);
            } else if s.pend_tid != 0 {
                count_drop(DropReason::TlsSlotBusy);
            }
            let Some(p) = TLS_PENDING.get_ptr_mut((pid_tgid as u32) & (PENDING_SLOTS - 1)) else {
                return;
            };
            // SAFETY: a map value, owned by this thread from here (another
            // thread's waiting write in it is lost, counted).
            let p = unsafe { &mut *p };
            if p.owner != 0 && p.owner != pid_tgid {
                count_drop(DropReason::TlsSlotBusy);
            }
            let snap = global(&TLS_SNAP);
            let n = copy_len(if len > snap { snap } else { len });
            // SAFETY: n < MAX_HEAD, the room of `data`; the helper faults
            // safely on a bad user address.
            let r = unsafe {
                probe_read_user_raw(
                    p.data.as_mut_ptr() as *mut c_void,
                    n,
                    s.buf as *const c_void,
                )
            };
            if r < 0 {
                p.owner = 0;
                count_drop(DropReason::TlsReadFailed);
                return;
            }
            p.owner = pid_tgid;
            p.captured = n;
            s.pend_tid = pid_tgid;
            s.pend_ssl = s.ssl;
            s.pend_len = len;
            s.pend_start_ns = s.start_ns;
            return;
        }
        let known = known & !MEMBIO;
        let mine = s.recv_tid == pid_tgid && s.recv_fresh != 0;
        let same_socket = len <= MAX_RECORD && (known == 0 || known == s.recv_cookie);
        // The receive is exactly the record this read decrypted: not the
        // end of an earlier record, nor a handshake message or a session
        // ticket in front of it.
        let at = if mine && s.recv_fresh == RECV_FRESH {
            let extra = s.recv_len.wrapping_sub(len);
            if one_record(s.recv_len, len) {
                Some(0)
            } else {
                match extra {
                    86 | 96 | 102 => Some(extra - 22),
                    _ => None,
                }
            }
        } else {
            None
        };
        if let (Some(at), true) = (at, same_socket) {
            s.recv_fresh = 0;
            if known == 0 {
                let _ = TLS_CONNS.insert(&key, &(s.recv_cookie | MEMBIO), 0);
            }
            add_stat(KernelStat::TlsLinkedOutside, 1);
            (
                s.recv_cookie,
                s.recv_seq.wrapping_add(at),
                TLS_SEQ_KNOWN | TLS_LINKED_OUTSIDE,
            )
        } else if mine && same_socket {
            // Several records in the receive: this read and the next ones
            // of the thread go to user space with the receive, which proves
            // them together once they add up to it (see `TLS_RECV_CANDIDATE`).
            s.recv_fresh = RECV_SHARED;
            recv_len = s.recv_len;
            let remembered = if known != 0 { TLS_CONN_REMEMBERED } else { 0 };
            (s.recv_cookie, s.recv_seq, TLS_RECV_CANDIDATE | remembered)
        } else {
            if mine {
                s.recv_fresh = 0;
                add_stat(KernelStat::TlsLinkRefused, 1);
            }
            remembered(known)
        }
    } else {
        remembered(known & !MEMBIO)
    };
    emit(
        pid_tgid,
        s.dir as u8,
        flags,
        cookie,
        seq,
        len,
        s.start_ns,
        recv_len,
        Src::User(s.buf),
    );
}

/// A memory-BIO read that moved nothing (the library used up what it was
/// given: `WANT_READ`) ends the receive its thread's reads were sharing:
/// an empty candidate with [`TLS_RECV_END`] tells user space to prove them
/// now rather than after a wait.
#[inline(always)]
fn end_shared(s: &mut TlsCall, pid_tgid: u64) {
    if s.dir == Dir::Recv as u32 && s.recv_tid == pid_tgid && s.recv_fresh == RECV_SHARED {
        s.recv_fresh = 0;
        emit(
            pid_tgid,
            Dir::Recv as u8,
            TLS_RECV_CANDIDATE | TLS_RECV_END,
            s.recv_cookie,
            s.recv_seq,
            0,
            s.start_ns,
            s.recv_len,
            // Nothing to copy, from an address the helper accepts (it
            // refuses a null one even for no bytes).
            Src::Kernel(s as *const TlsCall as u64, 0),
        );
    }
}

/// Writes one call's plaintext record: `len` bytes moved at `buf`, of which
/// a prefix is copied.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit(
    pid_tgid: u64,
    dir: u8,
    flags: u8,
    cookie: u64,
    seq: u32,
    len: u32,
    start_ns: u64,
    recv_len: u32,
    src: Src,
) {
    let pid = pid_tgid >> 32;
    let snap = global(&TLS_SNAP);
    let (n, from) = match src {
        Src::User(buf) => (if len > snap { snap } else { len }, buf),
        Src::Kernel(data, captured) => (captured, data),
    };
    let Some(held) = lane::reserve_packet::<TLS_FRAME>(true, DropReason::RingFullTls) else {
        return;
    };
    let rec = held.record();
    // SAFETY: the payload room of the held frame (MAX_HEAD bytes after the
    // header); copy_len bounds n below MAX_HEAD; the helpers fault safely.
    let to = unsafe { rec.add(size_of::<TlsData>()) } as *mut c_void;
    let n = copy_len(n);
    // SAFETY: as above.
    let r = unsafe {
        match src {
            Src::User(_) => probe_read_user_raw(to, n, from as *const c_void),
            Src::Kernel(..) => probe_read_kernel_raw(to, n, from as *const c_void),
        }
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
    // SAFETY: the frame has room for the 72-byte header, 8-aligned; the
    // layout is pinned in tracer_common.
    unsafe {
        dst.write(
            Tag::TlsData as u64
                | u64::from(dir) << 8
                | u64::from(flags) << 16
                | u64::from(len) << 32,
        );
        dst.add(1).write(ts_ns);
        dst.add(2).write(start_ns);
        dst.add(3).write(cookie);
        dst.add(4).write(pid | (pid_tgid & 0xffff_ffff) << 32);
        dst.add(5).write(u64::from(seq) | u64::from(n) << 32);
        dst.add(6).write(u64::from_le_bytes(comm_word(&comm, 0)));
        dst.add(7).write(u64::from_le_bytes(comm_word(&comm, 8)));
        dst.add(8).write(u64::from(recv_len));
    }
    held.publish(size_of::<TlsData>() + n as usize);
}

/// `SSL_set_bio(ssl, rbio, wbio)` and `SSL_set0_rbio(ssl, rbio)`: a TLS
/// object whose read BIO is not one of the library's own socket or fd
/// BIOs (Python's `MemoryBIO` under asyncio, a BIO pair, an application's
/// own BIO, even one declared as an fd BIO as h2o's is) does its socket
/// I/O outside the TLS calls, as Node's does. It is marked in `TLS_CONNS`
/// ([`MEMBIO`] without a socket) so that its calls get the memory-BIO rules
/// whatever file they are in; a call that then moves ciphertext itself
/// replaces the mark with its socket (a custom BIO that does its I/O
/// inside, as curl's does). The attach cookie is where `struct bio_st`
/// keeps its method pointer; a method starts with its `int type`.
#[uprobe]
pub fn ssl_set_bio(ctx: ProbeContext) -> u32 {
    if global(&ENABLED) == 0 || global(&TLS_SNAP) == 0 {
        return 0;
    }
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let rbio: u64 = ctx.arg(1).unwrap_or(0);
    if ssl == 0 || rbio == 0 {
        return 0;
    }
    // SAFETY: the program's context.
    let at = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } & TLS_BIO_METHOD_AT_OSSL3;
    // SAFETY: user addresses; the helper faults safely.
    let Ok(method) = (unsafe { bpf_probe_read_user((rbio + at) as *const u64) }) else {
        return 0;
    };
    // SAFETY: as above.
    let Ok(ty) = (unsafe { bpf_probe_read_user(method as *const i32) }) else {
        return 0;
    };
    if ty & BIO_TYPE_DESCRIPTOR != 0 && library_bio(method) {
        return 0;
    }
    let key = SslKey {
        pid: bpf_get_current_pid_tgid() >> 32,
        ssl,
    };
    // A link already learnt stays (no-exist: the mark never replaces it).
    if TLS_CONNS.insert(&key, &MEMBIO, BPF_NOEXIST).is_ok() {
        add_stat(KernelStat::TlsMembioObjects, 1);
    }
    0
}

/// `BIO_TYPE_DESCRIPTOR`: the BIO does I/O on a file descriptor (socket,
/// fd, connect, accept, datagram BIOs).
const BIO_TYPE_DESCRIPTOR: i32 = 0x0100;

/// Whether a descriptor BIO's method is the library's own, by its name
/// (the `char *` after the method's type): "socket", "socket connect",
/// "socket accept", "file descriptor", "datagram ..." in OpenSSL and
/// BoringSSL. An application's method (`BIO_meth_new`) has its own name.
/// Unreadable: taken as the library's (no mark).
#[inline(always)]
fn library_bio(method: u64) -> bool {
    // SAFETY: user addresses; the helper faults safely.
    let Ok(name) = (unsafe { bpf_probe_read_user((method + 8) as *const u64) }) else {
        return true;
    };
    // SAFETY: as above.
    let Ok(head) = (unsafe { bpf_probe_read_user(name as *const [u8; 8]) }) else {
        return true;
    };
    head.starts_with(b"socket") || head == *b"file des" || head == *b"datagram"
}

/// `BPF_NOEXIST`.
const BPF_NOEXIST: u64 = 1;

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
