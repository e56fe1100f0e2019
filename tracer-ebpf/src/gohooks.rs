//! Go's net/http runtime hooks: which request a goroutine works for, and
//! which request a client call on a kept-alive connection is made for.
//!
//! - `serverHandler.ServeHTTP` (entry): on an HTTP/1 connection the
//!   handler runs on the goroutine that read the request; that goroutine
//!   (R14, the register ABI's `g`) works for the request of its connection
//!   from now until a RET of the function.
//! - `runtime.newproc1` (entry, every RET): a goroutine created by one that
//!   works for a request works for it too, with the time that work began
//!   (a goroutine that outlives its request is then refused by the
//!   correlator: a call must nest in its parent's time). Run on the system
//!   stack: entry and RETs pair by thread. A goroutine created by any other
//!   forgets what its `g` (reused by the runtime) worked for.
//! - `(*persistConn).roundTrip` (entry): the caller's goroutine is about to
//!   send one request on that connection (one at a time on an HTTP/1
//!   connection, written by the connection's writer goroutine): when the
//!   caller works for a request, a [`CAUSE_CONNECT`] says so.
//!
//! Arguments by Go's amd64 register ABI (RAX, RBX, RCX, ...); no uretprobes
//! on Go code (goroutine stacks move): RET instructions are probed. Struct
//! offsets come from the agent per file (`GO_HOOK_FILES`, indexed by the
//! probe's attach cookie).
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_get_attach_cookie},
    macros::{map, uprobe},
    maps::{Array, LruHashMap},
    programs::ProbeContext,
};
use tracer_common::{
    gotls::GoCallKey, DropReason, GoHookFile, CAUSE_CONNECT, CAUSE_THREADS_MAX, GO_HOOK_FILES_MAX,
    GO_SERVING_MAX,
};

use crate::{count_drop, gotls::uread};

#[map]
static GO_HOOK_FILES: Array<GoHookFile> = Array::with_max_entries(GO_HOOK_FILES_MAX, 0);

/// What a goroutine works for: the cookie of its request's connection and
/// when that work began.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Serving {
    cookie: u64,
    since: u64,
}

/// Per file slot: 1 once a net/http client call of a program of that file
/// went over a TCP connection the hooks can name. ServeHTTP's (and
/// goroutine creation's) probes serve only such calls, so the agent attaches
/// them when this says so: a Go program that never calls out never pays
/// their traps.
#[map]
static GO_HOOK_WANTED: Array<u32> = Array::with_max_entries(GO_HOOK_FILES_MAX, 0);

#[map]
static GO_SERVING: LruHashMap<GoCallKey, Serving> = LruHashMap::with_max_entries(GO_SERVING_MAX, 0);

/// Thread -> the creating goroutine, between newproc1's entry and return.
#[map]
static GO_SPAWNING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(CAUSE_THREADS_MAX, 0);

/// The probe's file, and the registers it reads.
struct At {
    pid_tgid: u64,
    /// The file's slot in `GO_HOOK_FILES`.
    slot: u32,
    /// In the map, not copied: the wrapper table would crowd the stack.
    file: &'static GoHookFile,
    ip: u64,
    rax: u64,
    rbx: u64,
    rcx: u64,
    g: u64,
}

#[inline(always)]
fn at(ctx: &ProbeContext) -> Option<At> {
    let pid_tgid = crate::hooks::traced_thread()?;
    // SAFETY: the helper reads the program's own attach cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.regs as *mut c_void) };
    // SAFETY: a uprobe's context is the user registers.
    let r = unsafe { &*ctx.regs };
    if crate::gotls::to_morestack(cookie, r.eflags) {
        return None;
    }
    let slot = cookie as u32;
    let file = GO_HOOK_FILES.get(slot)?;
    Some(At {
        pid_tgid,
        slot,
        file,
        ip: r.rip,
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        g: r.r14,
    })
}

/// The cookie of the TCP socket behind a `net.Conn` interface at `at`.
#[inline(always)]
fn tcp_cookie(at: u64, f: &GoHookFile, bias: u64) -> Option<u64> {
    let sk = crate::gotls::tcp_sock_of_conn(
        at,
        (f.tcp_itab, f.tcp_type),
        &f.wrappers,
        f.tcp_fd,
        f.sysfd,
        bias,
    )?;
    crate::gotls::cookie_of_sk(sk)
}

#[uprobe]
pub fn go_serve(ctx: ProbeContext) -> u32 {
    let Some(a) = at(&ctx) else {
        return 0;
    };
    let f = &a.file;
    // Position-independent executables load at a page-aligned bias.
    let bias = a.ip.wrapping_sub(f.serve_entry) & !0xfff;
    // ServeHTTP(sh, rw ResponseWriter, req): rw's itab in RBX, data in RCX.
    // Only an HTTP/1 connection's *response says which connection.
    if a.rbx != f.response_itab.wrapping_add(bias) {
        return 0;
    }
    let Some(conn) = uread::<u64>(a.rcx + u64::from(f.response_conn)) else {
        count_drop(DropReason::CauseUnreadable);
        return 0;
    };
    let Some(cookie) = tcp_cookie(conn + u64::from(f.conn_rwc), f, bias) else {
        // No TCP socket under it (a *tls.Conn is followed through its
        // first field, the connection it wraps), or a read failed.
        return 0;
    };
    let key = GoCallKey {
        pid: a.pid_tgid >> 32,
        g: a.g,
    };
    let serving = Serving {
        cookie,
        // SAFETY: helper without arguments.
        since: unsafe { bpf_ktime_get_ns() },
    };
    let _ = GO_SERVING.insert(&key, &serving, 0);
    0
}

#[uprobe]
pub fn go_serve_ret(ctx: ProbeContext) -> u32 {
    let Some(a) = at(&ctx) else {
        return 0;
    };
    let key = GoCallKey {
        pid: a.pid_tgid >> 32,
        g: a.g,
    };
    let _ = GO_SERVING.remove(&key);
    0
}

#[uprobe]
pub fn go_spawn(ctx: ProbeContext) -> u32 {
    let Some(a) = at(&ctx) else {
        return 0;
    };
    // newproc1(fn, callergp, callerpc, ...): the creator in RBX.
    let _ = GO_SPAWNING.insert(&a.pid_tgid, &a.rbx, 0);
    0
}

#[uprobe]
pub fn go_spawn_ret(ctx: ProbeContext) -> u32 {
    let Some(a) = at(&ctx) else {
        return 0;
    };
    // SAFETY: a map value, copied at once.
    let Some(parent) = (unsafe { GO_SPAWNING.get(&a.pid_tgid) }).copied() else {
        return 0;
    };
    let _ = GO_SPAWNING.remove(&a.pid_tgid);
    let pid = a.pid_tgid >> 32;
    // The new goroutine's g in RAX.
    let child = GoCallKey { pid, g: a.rax };
    // SAFETY: a map value, copied at once.
    match (unsafe { GO_SERVING.get(&GoCallKey { pid, g: parent }) }).copied() {
        Some(s) => {
            let _ = GO_SERVING.insert(&child, &s, 0);
        }
        None => {
            let _ = GO_SERVING.remove(&child);
        }
    }
    0
}

#[uprobe]
pub fn go_round_trip(ctx: ProbeContext) -> u32 {
    let Some(a) = at(&ctx) else {
        return 0;
    };
    let key = GoCallKey {
        pid: a.pid_tgid >> 32,
        g: a.g,
    };
    // SAFETY: a map value, copied at once.
    let serving = (unsafe { GO_SERVING.get(&key) }).copied();
    let wanted = GO_HOOK_WANTED.get_ptr_mut(a.slot);
    // SAFETY: a map value of this program's own map.
    if serving.is_none() && wanted.is_none_or(|w| unsafe { *w } != 0) {
        return 0;
    }
    let f = &a.file;
    let bias = a.ip.wrapping_sub(f.round_trip_entry) & !0xfff;
    // (*persistConn).roundTrip(pc, req): pc in RAX.
    let Some(cookie) = tcp_cookie(a.rax + u64::from(f.pconn_conn), f, bias) else {
        // No TCP socket under it (HTTPS: through the *tls.Conn's first
        // field), or a read failed.
        return 0;
    };
    let Some(s) = serving else {
        if let Some(w) = wanted {
            // SAFETY: as above; a racing writer writes the same value.
            unsafe { *w = 1 };
        }
        return 0;
    };
    crate::hooks::emit(CAUSE_CONNECT, a.pid_tgid, cookie, s.cookie, s.since);
    0
}
