//! Runtime hooks: uprobes inside server programs at the point where the
//! program itself says which request the work it does next is for. Read
//! only: nothing is written into any process.
//!
//! nginx: `ngx_http_upstream_init(r)` is where a request (`r`, arriving on
//! the client connection `r->connection`) starts its way upstream; its
//! upstream connection is opened (`connect()`) or taken from the keepalive
//! cache and, when ready, written to before the function returns, all on
//! the calling thread. The entry probe emits a [`CAUSE_ENTER`] with the
//! client connection's socket cookie and remembers it for the thread; a
//! `connect()` by that thread before the return probe emits a
//! [`CAUSE_CONNECT`] (from the state tracepoint, see `sock.rs`); the return
//! emits a [`CAUSE_LEAVE`]. User space ties the calls of that thread inside
//! the extent, and the first call on a connection opened inside it, to the
//! request.
//!
//! `ngx_http_request_t` starts with its signature and the connection
//! pointer, and `ngx_connection_t` with `data`, `read`, `write`, `fd`: an
//! nginx layout unchanged since its first releases; the signature is
//! checked before anything else is read.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use core::mem::size_of;
use tracer_common::{
    frame_len, Cause, DropReason, Tag, CAUSE_CONNECT, CAUSE_ENTER, CAUSE_LEAVE, CAUSE_THREADS_MAX,
    NGX_HTTP_SIGNATURE,
};

use crate::{count_drop, global, gotls::uread, lane, AGENT_PID, ENABLED};

/// Thread (pid_tgid) -> cookie of the connection of the request it works
/// for, between a hooked function's entry and return.
#[map]
static SERVING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(CAUSE_THREADS_MAX, 0);

const CAUSE_FRAME: usize = frame_len(size_of::<Cause>());

/// `ngx_http_request_t.connection`.
const NGX_REQUEST_CONNECTION: u64 = 8;
/// `ngx_connection_t.fd`.
const NGX_CONNECTION_FD: u64 = 24;

/// The socket cookie of the client connection of nginx request `r`.
#[inline(always)]
fn ngx_client_cookie(r: u64) -> Option<u64> {
    if uread::<u32>(r)? != NGX_HTTP_SIGNATURE {
        return None;
    }
    let c: u64 = uread(r + NGX_REQUEST_CONNECTION)?;
    let fd: i32 = uread(c + NGX_CONNECTION_FD)?;
    crate::gotls::cookie_of_fd(i64::from(fd))
}

/// The current thread (pid_tgid), when capture is on and it is not the
/// agent's: what every runtime hook checks first.
#[inline(always)]
pub fn traced_thread() -> Option<u64> {
    if global(&ENABLED) == 0 {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32 != global(&AGENT_PID)).then_some(pid_tgid)
}

#[uprobe]
pub fn ngx_upstream_init(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = traced_thread() else {
        return 0;
    };
    // SAFETY: a uprobe's context is the user registers.
    let r = unsafe { (*ctx.regs).rdi };
    let Some(cookie) = ngx_client_cookie(r) else {
        count_drop(DropReason::CauseUnreadable);
        return 0;
    };
    let _ = SERVING.insert(&pid_tgid, &cookie, 0);
    emit(CAUSE_ENTER, pid_tgid, cookie, 0, 0);
    0
}

#[uretprobe]
pub fn ngx_upstream_init_ret(_ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a map value, copied at once.
    if unsafe { SERVING.get(&pid_tgid) }.is_none() {
        return 0;
    }
    let _ = SERVING.remove(&pid_tgid);
    emit(CAUSE_LEAVE, pid_tgid, 0, 0, 0);
    0
}

/// The cookie of the connection of the request the current thread works
/// for, when it is inside a hooked function.
#[inline(always)]
pub fn serving() -> Option<u64> {
    // SAFETY: a map value, copied at once.
    unsafe { SERVING.get(&bpf_get_current_pid_tgid()) }.copied()
}

/// The current thread, working for the request on connection `cause`,
/// entered `SYN_SENT` on the socket whose cookie is `cookie`.
#[inline(always)]
pub fn connecting(cookie: u64, cause: u64) {
    emit(CAUSE_CONNECT, bpf_get_current_pid_tgid(), cookie, cause, 0);
}

#[inline(always)]
pub(crate) fn emit(kind: u8, pid_tgid: u64, cookie: u64, cause: u64, since: u64) {
    let Some(held) = lane::reserve_packet::<CAUSE_FRAME>(false, DropReason::RingFullCause) else {
        return;
    };
    let dst = held.record() as *mut u64;
    let pid = pid_tgid >> 32;
    let tid = pid_tgid & 0xffff_ffff;
    // SAFETY: the held frame has room for CAUSE_FRAME bytes, 8-aligned;
    // the words follow `Cause`'s layout (asserted in tracer_common).
    unsafe {
        dst.write(Tag::Cause as u64 | u64::from(kind) << 8 | pid << 32);
        // Taken while the lane is held: the lane stays in time order.
        dst.add(1).write(bpf_ktime_get_ns());
        dst.add(2).write(tid);
        dst.add(3).write(cookie);
        dst.add(4).write(cause);
        dst.add(5).write(since);
    }
    held.publish(size_of::<Cause>());
}
