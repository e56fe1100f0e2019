//! Go's crypto/tls: uprobes at the start of `(*Conn).Write` and
//! `(*Conn).Read` (just past the prologue's stack check, which a call that
//! grows its stack runs twice), and on Read's one call to `runtime.memmove`
//! (the copy of the plaintext to the caller's buffer), else on every RET
//! instruction of Read (no uretprobes on Go code: the return address lives
//! on a goroutine stack the runtime moves; a RET is single-stepped, the
//! call is not).
//!
//! Arguments and results follow Go's amd64 register ABI (Go 1.17+): at the
//! start RAX = `*Conn`, RBX = buffer, RCX = its length; at a RET, RAX = n;
//! at the call to `memmove(to, from, n)`, RAX, RBX, RCX.
//! A Write's record is emitted at its start, with the whole buffer: Go
//! writes all of it or fails the connection for good, and a record emitted
//! at its return could reach the agent after the response it caused (the
//! peer may answer, and the reader return, before the writer runs again).
//! A Read's is emitted at its copy (or return); R14 holds the current goroutine (`g`):
//! the call is keyed by process and goroutine, since a goroutine blocked in
//! Read may resume on another thread.
//!
//! The connection is taken from the `*Conn` itself, not from socket calls on
//! the thread (the Go scheduler parks a reader and its read may run on
//! another thread): `Conn.conn` (checked to be a `*net.TCPConn`) -> netFD ->
//! `Sysfd`, then current task -> files -> fdtable -> file -> socket -> sock,
//! whose cookie the socket programs already generated. The offsets inside
//! the Go binary come from the agent per file (`GO_TLS_FILES`, indexed by the
//! probe's attach cookie), the kernel's from BTF.
//!
//! A Read's socket is found at its end, where it moved data: net/http
//! enters a Read after each request that is aborted with none.
//!
//! Sequence numbers (rule 3): a Write's ciphertext starts at the socket's
//! `write_seq` at entry (Go writes whole records, straight to the socket). A
//! Read whose plaintext buffer (`Conn.input`) is empty at entry decrypts a
//! new record, found at its return in `Conn.rawInput` (see `record_seq`),
//! after any handshake or session ticket the Read handled first; a Read
//! served from `Conn.input` continues the previous one (no sequence number,
//! as OpenSSL's buffered reads).
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_attach_cookie, bpf_get_current_task},
    },
    macros::{map, uprobe},
    maps::{Array, LruHashMap},
    programs::ProbeContext,
};
use tracer_common::{
    gotls::{
        GoCallKey, GoTlsFile, GoWrappers, GO_AT_STACK_CHECK, GO_CALL_AFTER_LOSS, GO_CALL_BYTES,
        GO_CALL_LIVE, GO_CALL_RUNNING, GO_OFF_UNKNOWN, GO_SOCK_BYTES, GO_TLS_CALLS_MAX,
        GO_TLS_FILES_MAX, GO_TLS_SOCKS_MAX,
    },
    recv_data_end, Dir, DropReason, KernelStat, TLS_CONN_REMEMBERED, TLS_READ_LOST, TLS_SEQ_KNOWN,
};

use crate::{add_stat, count_drop, global, AGENT_PID, ENABLED, TLS_SNAP};

// Kernel offsets (from BTF, set by the agent before load).
#[no_mangle]
static OFF_TASK_FILES: u32 = 0;
#[no_mangle]
static OFF_FILES_FDT: u32 = 0;
#[no_mangle]
static OFF_FDT_MAX_FDS: u32 = 0;
#[no_mangle]
static OFF_FDT_FD: u32 = 0;
#[no_mangle]
static OFF_FILE_PRIVATE: u32 = 0;
#[no_mangle]
static OFF_SOCKET_FILE: u32 = 0;
#[no_mangle]
static OFF_SOCKET_SK: u32 = 0;
#[no_mangle]
static OFF_SK_PROTOCOL: u32 = 0;

const IPPROTO_TCP: u16 = 6;

#[map]
static GO_TLS_FILES: Array<GoTlsFile> = Array::with_max_entries(GO_TLS_FILES_MAX, 0);

/// A call between its entry and its return.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoCall {
    buf: u64,
    /// The goroutine's stack top at the entry when `buf` is on its stack
    /// and Read's end is probed at its RETs, else 0: a stack that grows
    /// during the call is copied elsewhere, and the buffer with it (by the
    /// change of the top; see `moved_buf`). At the copy, the plaintext's
    /// own address is known.
    stack_hi: u64,
    start_ns: u64,
    cookie: u64,
    /// A Read's `*Conn`, and the executable's load bias: its socket is
    /// found at its end (net/http enters a Read after every request that
    /// is aborted with no data).
    conn: u64,
    bias: u64,
    seq: u32,
    dir: u8,
    flags: u8,
    /// A Read that decrypts a new record (see [`record_seq`]).
    new_record: u8,
    /// [`GO_CALL_RUNNING`] from the entry to the end, then 0 (see
    /// [`GO_CALL_LIVE`]), or [`GO_CALL_AFTER_LOSS`].
    live: u8,
}

const _: () = assert!(size_of::<GoCall>() == GO_CALL_BYTES);
const _: () = assert!(core::mem::offset_of!(GoCall, live) == GO_CALL_LIVE);

#[map]
static GO_TLS_CALLS: LruHashMap<GoCallKey, GoCall> =
    LruHashMap::with_max_entries(GO_TLS_CALLS_MAX, 0);

/// The socket of a `*tls.Conn`, remembered (see [`socket_of_conn`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoSock {
    /// The data word of `tls.Conn.conn` (the `net.Conn` it wraps).
    data: u64,
    sk: u64,
    cookie: u64,
}

const _: () = assert!(size_of::<GoSock>() == GO_SOCK_BYTES);

/// Keyed by process and `*tls.Conn` (`GoCallKey { pid, g: conn }`).
#[map]
static GO_TLS_SOCKS: LruHashMap<GoCallKey, GoSock> =
    LruHashMap::with_max_entries(GO_TLS_SOCKS_MAX, 0);

#[uprobe]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, Dir::Send);
    0
}

#[uprobe]
pub fn go_tls_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, Dir::Recv);
    0
}

/// At an entry probe on the stack check's `jbe` ([`GO_AT_STACK_CHECK`]):
/// whether the branch is going to `morestack` (CF or ZF set), which
/// restarts the function; the probe fires again then.
#[inline(always)]
pub(crate) fn to_morestack(cookie: u64, flags: u64) -> bool {
    const CF: u64 = 1;
    const ZF: u64 = 1 << 6;
    cookie & GO_AT_STACK_CHECK != 0 && flags & (CF | ZF) != 0
}

#[inline(always)]
fn kread<T: Copy>(addr: u64) -> Option<T> {
    // SAFETY: the helper faults safely on any address.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[inline(always)]
pub(crate) fn uread<T: Copy>(addr: u64) -> Option<T> {
    // SAFETY: the helper faults safely on any address.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// The `struct sock` behind file descriptor `fd` of the current process,
/// when it is a TCP socket.
#[inline(always)]
pub(crate) fn tcp_sock_of_fd(fd: u64) -> Option<u64> {
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = kread(task + u64::from(global(&OFF_TASK_FILES)))?;
    let fdt: u64 = kread(files + u64::from(global(&OFF_FILES_FDT)))?;
    let max: u32 = kread(fdt + u64::from(global(&OFF_FDT_MAX_FDS)))?;
    if fd >= u64::from(max) {
        return None;
    }
    let fds: u64 = kread(fdt + u64::from(global(&OFF_FDT_FD)))?;
    let file: u64 = kread(fds + fd * 8)?;
    if file == 0 {
        return None;
    }
    let sock: u64 = kread(file + u64::from(global(&OFF_FILE_PRIVATE)))?;
    if sock == 0 {
        return None;
    }
    // A socket's file points back at it; any other file's private data
    // does not.
    let back: u64 = kread(sock + u64::from(global(&OFF_SOCKET_FILE)))?;
    if back != file {
        return None;
    }
    let sk: u64 = kread(sock + u64::from(global(&OFF_SOCKET_SK)))?;
    if sk == 0 {
        return None;
    }
    let proto: u16 = kread(sk + u64::from(global(&OFF_SK_PROTOCOL)))?;
    (proto == IPPROTO_TCP).then_some(sk)
}

/// The cookie the socket programs gave socket `sk` (None before they saw
/// it: the cookie is made on first use).
#[inline(always)]
pub(crate) fn cookie_of_sk(sk: u64) -> Option<u64> {
    kread::<u64>(sk + u64::from(global(&crate::OFF_COOKIE))).filter(|&c| c != 0)
}

/// The socket cookie of TCP file descriptor `fd` of the current process.
#[inline(always)]
pub(crate) fn cookie_of_fd(fd: i64) -> Option<u64> {
    if fd < 0 {
        return None;
    }
    cookie_of_sk(tcp_sock_of_fd(fd as u64)?)
}

/// Connection types wrapping one another followed down to a
/// `*net.TCPConn` (traefik's HTTPS connections are four deep, five behind
/// the PROXY protocol).
const WRAPPERS: usize = 8;

/// The offset of the wrapped connection in a wrapper of link-time type
/// `typ`: its entry's, else 0. One entry per type, at the slot its address
/// hashes to: a search over the table at every wrapper level gave the
/// verifier every combination of outcomes (seconds at load).
#[inline(always)]
fn wrapped_field(wrappers: &GoWrappers, typ: u64) -> u64 {
    let i = wrappers.slot(typ);
    if wrappers.types[i] == typ {
        u64::from(wrappers.offsets[i])
    } else {
        0
    }
}

/// The TCP socket behind a Go `net.Conn` interface at `at` (itab word,
/// data word) when it holds a `*net.TCPConn`, through `TCPConn` ->
/// `*netFD` (`tcp_fd`) -> `Sysfd` (`sysfd`). `tcp` is the link-time
/// address of the itab of `*net.TCPConn` as a `net.Conn` and of
/// `*net.TCPConn`'s type descriptor (0: unknown). A proxy's own connection
/// type that wraps the connection (peeked bytes, tracked connections, the
/// PROXY protocol) is followed, whatever interface holds it: through the
/// field `wrappers` names for its type, else through its first field. Only
/// an itab whose concrete type is exactly `*net.TCPConn` is taken as one.
#[inline(always)]
pub(crate) fn tcp_sock_of_conn(
    at: u64,
    tcp: (u64, u64),
    wrappers: &GoWrappers,
    tcp_fd: u32,
    sysfd: u32,
    bias: u64,
) -> Option<u64> {
    let (tcp_itab, tcp_type) = tcp;
    if tcp_itab == 0 {
        return None;
    }
    let (want_itab, want_type) = (tcp_itab.wrapping_add(bias), tcp_type.wrapping_add(bias));
    let mut at = at;
    for _ in 0..WRAPPERS {
        let itab: u64 = uread(at)?;
        let data: u64 = uread(at + 8)?;
        if itab == 0 {
            return None;
        }
        if itab != want_itab {
            let typ: u64 = uread(itab + 8)?;
            if tcp_type == 0 || typ != want_type {
                // A wrapper: the interface value it wraps is where its
                // type's entry says, else its first field.
                at = data + wrapped_field(wrappers, typ.wrapping_sub(bias));
                continue;
            }
        }
        let netfd: u64 = uread(data + u64::from(tcp_fd))?;
        let fd: i64 = uread(netfd + u64::from(sysfd))?;
        return if fd < 0 {
            None
        } else {
            tcp_sock_of_fd(fd as u64)
        };
    }
    None
}

/// The TCP socket under `*tls.Conn` `conn` of process `pid`, and its
/// cookie (0: none yet). Remembered per connection: the walk costs a
/// dozen reads (1.3 us a call here), a hit three. A hit is checked
/// against reuse: the connection's `net.Conn` must be the one the walk
/// went through (the garbage collector may put a new `Conn` at a freed
/// one's address), and the socket must still have the cookie it had (a
/// new socket in a freed one's memory starts without one: `sk_alloc`
/// zeroes it, an accepted socket's copy of its listener resets it) and
/// not be closed: a freed socket whose memory is not yet reused keeps its
/// cookie, and every TCP socket is CLOSE when freed. A server handling one
/// connection at a time gets its new `Conn` and `net.Conn` at the freed
/// ones' addresses, its new socket elsewhere: without that check its calls
/// took the closed socket's cookie.
#[inline(always)]
fn socket_of_conn(pid: u64, conn: u64, f: &GoTlsFile, bias: u64) -> Option<(u64, u64)> {
    const TCP_CLOSE: u8 = 7;
    let at = conn + u64::from(f.conn);
    let data: u64 = uread(at + 8)?;
    let key = GoCallKey { pid, g: conn };
    // SAFETY: a map value, copied at once.
    if let Some(c) = unsafe { GO_TLS_SOCKS.get(&key) }.copied() {
        if c.data == data && cookie_of_sk(c.sk) == Some(c.cookie) {
            if kread::<u8>(c.sk + u64::from(global(&crate::OFF_STATE))) != Some(TCP_CLOSE) {
                return Some((c.sk, c.cookie));
            }
            add_stat(KernelStat::GoTlsSockClosed, 1);
        }
    }
    let sk = tcp_sock_of_conn(
        at,
        (f.tcp_itab, f.tcp_type),
        &f.wrappers,
        f.tcp_fd,
        f.sysfd,
        bias,
    )?;
    let cookie = cookie_of_sk(sk).unwrap_or(0);
    if cookie != 0 {
        let _ = GO_TLS_SOCKS.insert(&key, &GoSock { data, sk, cookie }, 0);
    }
    Some((sk, cookie))
}

/// Bytes between a `bytes.Buffer`/`bytes.Reader`'s position and the end of
/// its slice (the slice at 0: pointer, length, capacity).
#[inline(always)]
fn unread(at: u64, pos_off: u32) -> Option<u64> {
    let len: u64 = uread(at + 8)?;
    let pos: u64 = uread(at + u64::from(pos_off))?;
    Some(len.saturating_sub(pos))
}

#[inline(always)]
fn enter(ctx: &ProbeContext, dir: Dir) {
    if global(&ENABLED) == 0 || global(&TLS_SNAP) == 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == global(&AGENT_PID) {
        return;
    }
    // SAFETY: a uprobe's context is the user registers.
    let (conn, buf, g, ip, flags) = unsafe {
        let r = &*ctx.regs;
        (r.rax, r.rbx, r.r14, r.rip, r.eflags)
    };
    // SAFETY: the helper reads the program's own attach cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.regs as *mut c_void) };
    if to_morestack(cookie, flags) {
        return;
    }
    let slot = cookie as u32;
    let Some(f) = GO_TLS_FILES.get(slot) else {
        return;
    };
    let entry = if dir == Dir::Send {
        f.write_entry
    } else {
        f.read_entry
    };
    // Position-independent executables load at a page-aligned bias.
    let bias = ip.wrapping_sub(entry) & !0xfff;
    let mut call = GoCall {
        buf,
        stack_hi: 0,
        // SAFETY: helper without arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        cookie: 0,
        conn,
        bias,
        seq: 0,
        dir: dir as u8,
        flags: TLS_CONN_REMEMBERED,
        new_record: 0,
        live: GO_CALL_RUNNING,
    };
    if dir == Dir::Recv {
        if f.read_end_at_copy == 0 {
            call.stack_hi = stack_holding(g, buf);
        }
        call.new_record = u8::from(decrypts_new_record(conn, f));
        let key = GoCallKey {
            pid: pid_tgid >> 32,
            g,
        };
        match GO_TLS_CALLS.get_ptr_mut(&key) {
            Some(p) => {
                // SAFETY: a map value only this goroutine writes.
                let after_loss = unsafe { (*p).live } == GO_CALL_AFTER_LOSS;
                // SAFETY: as above.
                unsafe { *p = call };
                if after_loss {
                    read_lost(&call, f, pid_tgid);
                }
            }
            None => {
                let _ = GO_TLS_CALLS.insert(&key, &call, 0);
            }
        }
        return;
    }
    let Some((sk, cookie)) = socket_of_conn(pid_tgid >> 32, conn, f, bias) else {
        count_drop(DropReason::GoTlsNoSocket);
        return;
    };
    call.cookie = cookie;
    if let Some(s) = kread::<u32>(sk + u64::from(global(&crate::OFF_WRITE_SEQ))) {
        (call.seq, call.flags) = (s, TLS_SEQ_KNOWN);
    }
    // The plaintext is all there, and will all be sent (see the top).
    let len = ctx_len(ctx);
    if len > 0 {
        emit(&call, len, call.start_ns, pid_tgid);
    }
}

/// The buffer's length (RCX), as a record's length.
#[inline(always)]
fn ctx_len(ctx: &ProbeContext) -> u32 {
    // SAFETY: a uprobe's context is the user registers.
    let n = unsafe { (*ctx.regs).rcx } as i64;
    if n <= 0 {
        0
    } else if n as u64 > u64::from(u32::MAX) {
        u32::MAX
    } else {
        n as u32
    }
}

/// At a Read's entry: whether it decrypts a new record (its plaintext
/// buffer `Conn.input` is empty).
#[inline(always)]
fn decrypts_new_record(conn: u64, f: &GoTlsFile) -> bool {
    if f.input == GO_OFF_UNKNOWN || f.raw_input == GO_OFF_UNKNOWN {
        return false;
    }
    match unread(conn + u64::from(f.input), f.reader_i) {
        Some(n) => n == 0,
        // Go does not write the zero values of a new `Conn`, so the page
        // of a connection's buffers can be out of memory until its first
        // record.
        None => true,
    }
}

/// Where the record a Read decrypted began, found at the Read's end:
/// `Conn.input` then holds that record's plaintext, decrypted in place in
/// `Conn.rawInput`'s buffer just past the record's header and explicit
/// nonce (0 bytes: TLS 1.3, ChaCha20; 8: TLS 1.2 AES-GCM; 16: AES-CBC),
/// and the buffer's end is where the socket's data read so far ends
/// (`copied_seq`, less a FIN taken with it). The header's length
/// is the ciphertext's, or the plaintext's under CBC (Go writes it there
/// to compute the MAC). Not the record next in the stream at the Read's
/// entry: a Read may first shake hands (a server that never calls
/// `Handshake`) or handle post-handshake messages (TLS 1.3 session
/// tickets). None when no candidate header is an application-data record
/// inside the buffer.
#[inline(always)]
fn record_seq(conn: u64, f: &GoTlsFile, sk: u64) -> Option<u32> {
    const HEADER: u64 = 5;
    const APP_DATA: u8 = 23;
    // The AEAD tag (AES-GCM, ChaCha20-Poly1305).
    const TAG: u64 = 16;
    let [plain, plain_len]: [u64; 2] = uread(conn + u64::from(f.input))?;
    let [raw, raw_len]: [u64; 2] = uread(conn + u64::from(f.raw_input))?;
    let mut at = None;
    for nonce in [0u64, 8, 16] {
        // Only inside the buffer: the page before it may not be readable.
        let start = plain.wrapping_sub(HEADER + nonce);
        if start < raw || start >= raw + raw_len {
            continue;
        }
        let Some(h) = uread::<[u8; 5]>(start) else {
            continue;
        };
        let len = u64::from(u16::from_be_bytes([h[3], h[4]]));
        if h[0] == APP_DATA
            && h[1] == 3
            && (len == plain_len || len >= nonce + plain_len + TAG)
            && start + HEADER + len <= raw + raw_len
        {
            at = Some(start - raw);
            break;
        }
    }
    let copied: u32 = kread(sk + u64::from(global(&crate::OFF_COPIED_SEQ)))?;
    let end = recv_data_end(
        copied,
        kread(sk + u64::from(global(&crate::OFF_RCV_NXT)))?,
        || kread(sk + u64::from(global(&crate::OFF_STATE))).unwrap_or(0),
        || kread(sk + u64::from(global(&crate::OFF_SK_ERR))).unwrap_or(0),
    );
    Some(end.wrapping_sub((raw_len - at?) as u32))
}

#[uprobe]
pub fn go_tls_ret(ctx: ProbeContext) -> u32 {
    // SAFETY: a uprobe's context is the user registers.
    let n = unsafe { (*ctx.regs).rax } as i64;
    leave(&ctx, n, None);
    0
}

/// At Read's call to `runtime.memmove` (`to` = the caller's buffer in RAX,
/// `from` = the record's plaintext in `Conn.input` in RBX, `n` in RCX):
/// the plaintext is copied from where it was decrypted, the length is what
/// Read returns.
#[uprobe]
pub fn go_tls_copy(ctx: ProbeContext) -> u32 {
    // SAFETY: a uprobe's context is the user registers.
    let (from, n) = unsafe {
        let r = &*ctx.regs;
        (r.rbx, r.rcx as i64)
    };
    leave(&ctx, n, Some(from));
    0
}

/// The end of a Read that moved `n` bytes: its record, with the plaintext
/// at `from` when given, else in the call's buffer.
#[inline(always)]
fn leave(ctx: &ProbeContext, n: i64, from: Option<u64>) {
    if global(&ENABLED) == 0 || global(&TLS_SNAP) == 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = pid_tgid >> 32;
    if pid as u32 == global(&AGENT_PID) {
        return;
    }
    // SAFETY: a uprobe's context is the user registers.
    let g = unsafe { (*ctx.regs).r14 };
    let key = GoCallKey { pid, g };
    let Some(p) = GO_TLS_CALLS.get_ptr_mut(&key) else {
        count_drop(DropReason::GoTlsNoEntry);
        if n > 0 {
            let mark = GoCall {
                buf: 0,
                stack_hi: 0,
                start_ns: 0,
                cookie: 0,
                conn: 0,
                bias: 0,
                seq: 0,
                dir: 0,
                flags: 0,
                new_record: 0,
                live: GO_CALL_AFTER_LOSS,
            };
            let _ = GO_TLS_CALLS.insert(&key, &mark, 0);
        }
        return;
    };
    // SAFETY: a map value only this goroutine writes, copied at once.
    let mut call = unsafe { *p };
    if call.live != GO_CALL_RUNNING {
        count_drop(DropReason::GoTlsNoEntry);
        if n > 0 {
            // SAFETY: as above.
            unsafe { (*p).live = GO_CALL_AFTER_LOSS };
        }
        return;
    }
    // SAFETY: as above.
    unsafe { (*p).live = 0 };
    // An error with n > 0 still moved n bytes.
    if n <= 0 {
        return;
    }
    call.buf = match from {
        Some(from) => from,
        None => moved_buf(&call, g),
    };
    // SAFETY: the helper reads the program's own attach cookie.
    let slot = unsafe { bpf_get_attach_cookie(ctx.regs as *mut c_void) } as u32;
    let Some(f) = GO_TLS_FILES.get(slot) else {
        return;
    };
    let Some((sk, cookie)) = socket_of_conn(pid, call.conn, f, call.bias) else {
        count_drop(DropReason::GoTlsNoSocket);
        return;
    };
    call.cookie = cookie;
    if call.new_record != 0 {
        match record_seq(call.conn, f, sk) {
            Some(seq) => (call.seq, call.flags) = (seq, TLS_SEQ_KNOWN),
            None => add_stat(KernelStat::GoTlsRecordNotFound, 1),
        }
    }
    let len = if n as u64 > u64::from(u32::MAX) {
        u32::MAX
    } else {
        n as u32
    };
    // A Read is entered long before its data comes (net/http parks a
    // goroutine in Read on every idle connection): its bytes are known to
    // have arrived only at its end.
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    emit(&call, len, now, pid_tgid);
}

/// At the entry of a goroutine's Read after one whose bytes went unseen
/// (see [`GO_CALL_AFTER_LOSS`]): says so on this Read's connection, at this
/// time, which is before the goroutine could have written a request that
/// waits for what this Read returns (net/http's read loop enters its next
/// Read as soon as it has a response). The next Read of a goroutine is on
/// the same connection in net/http (one read loop per connection); were it
/// not, requests of another connection would end as lost, never pair
/// wrongly.
#[inline(always)]
fn read_lost(call: &GoCall, f: &GoTlsFile, pid_tgid: u64) {
    let Some((_, cookie)) = socket_of_conn(pid_tgid >> 32, call.conn, f, call.bias) else {
        count_drop(DropReason::GoTlsNoSocket);
        return;
    };
    crate::tls::emit(
        pid_tgid,
        Dir::Recv as u8,
        TLS_READ_LOST,
        cookie,
        0,
        0,
        call.start_ns,
        0,
        crate::tls::Src::Kernel(call as *const GoCall as u64, 0),
    );
}

/// The top of goroutine `g`'s stack (`runtime.g` starts with its stack's
/// bounds, lo then hi) when `buf` lies in that stack, else 0.
#[inline(always)]
fn stack_holding(g: u64, buf: u64) -> u64 {
    // Unreadable: an empty stack (a guarded match let LLVM compare the
    // unread words on the failed path, which the verifier refuses).
    let [lo, hi] = uread::<[u64; 2]>(g).unwrap_or([0, 0]);
    if buf >= lo && buf < hi {
        hi
    } else {
        0
    }
}

/// Where a call's buffer on its goroutine's stack is now: the runtime
/// copies a growing stack to a new place and moves every pointer into it
/// by the change of the stack's top, the buffer included.
#[inline(always)]
fn moved_buf(call: &GoCall, g: u64) -> u64 {
    if call.stack_hi == 0 {
        return call.buf;
    }
    match uread::<u64>(g + 8) {
        Some(hi) => call.buf.wrapping_add(hi.wrapping_sub(call.stack_hi)),
        None => call.buf,
    }
}

/// Writes one TLS record: `len` bytes moved by `call`, the first at
/// `start_ns`.
#[inline(always)]
fn emit(call: &GoCall, len: u32, start_ns: u64, pid_tgid: u64) {
    crate::tls::emit(
        pid_tgid,
        call.dir,
        call.flags,
        call.cookie,
        call.seq,
        len,
        start_ns,
        0,
        crate::tls::Src::User(call.buf),
    );
}
