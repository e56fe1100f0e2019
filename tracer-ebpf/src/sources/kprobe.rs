//! kprobes and kretprobes on the TCP send/receive functions, for kernels
//! where fexit cannot attach. A kprobe sees the arguments, a kretprobe only
//! the return value: the entry keeps the socket (and the receive's flags)
//! per thread until the return. Arguments here are plain addresses, not
//! typed pointers: socket fields are read with `bpf_probe_read_kernel`,
//! the cookie from the socket (the packet and state programs assign it
//! before a connection carries data), and per-socket storage is out of
//! reach: silenced calls are counted per cookie in a map of their own,
//! which the close of the socket adds to its totals (see sock.rs).
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{kprobe, kretprobe, map},
    maps::{HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{recv_data_end, Dir, DropReason, KernelStat};

use crate::{
    add_stat, count_drop, global, sock::emit_op, state, AGENT_PID, ENABLED, OFF_CLOCK, OFF_COOKIE,
    OFF_COPIED_SEQ, OFF_RCV_NXT, OFF_SK_ERR, OFF_STATE, OFF_WRITE_SEQ, TLS_SNAP,
};

const MSG_PEEK: u64 = 2;

/// Calls in progress: thread -> (socket, flags) from the entry.
#[map]
static IN_CALL: HashMap<u64, [u64; 2]> = HashMap::with_max_entries(16384, 0);

/// Calls silenced per socket cookie: silence, then per direction the
/// calls and the bytes (`[silence, calls send, calls recv, bytes send,
/// bytes recv]`). Least recently used sockets make room (their counts are
/// then missing from their totals; the kernel's `silenced_calls` stat has
/// them all).
#[map]
static SILENCED: LruHashMap<u64, [u64; 5]> = LruHashMap::with_max_entries(16384, 0);

/// Takes what kprobes silenced on the socket `cookie` (at its close).
#[inline(always)]
pub fn take_silenced(cookie: u64) -> Option<[u64; 5]> {
    // SAFETY: a copy is taken before the entry is removed.
    let v = unsafe { SILENCED.get(&cookie) }.copied()?;
    let _ = SILENCED.remove(&cookie);
    Some(v)
}

#[inline(always)]
fn count_silenced(cookie: u64, silence: u8, dir: Dir, bytes: u64) {
    let d = dir as usize & 1;
    match SILENCED.get_ptr_mut(&cookie) {
        // SAFETY: the map value; two CPUs adding at once may lose one
        // (counters, as in count_drop).
        Some(v) => unsafe {
            (*v)[1 + d] += 1;
            (*v)[3 + d] += bytes;
        },
        None => {
            let mut v = [u64::from(silence), 0, 0, 0, 0];
            v[1 + d] = 1;
            v[3 + d] = bytes;
            let _ = SILENCED.insert(&cookie, &v, 0);
        }
    }
}

#[inline(always)]
fn enter(sk: Option<u64>, flags: u64) {
    if global(&ENABLED) == 0 {
        return;
    }
    let Some(sk) = sk else { return };
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == global(&AGENT_PID) {
        return;
    }
    if IN_CALL.insert(&pid_tgid, &[sk, flags], 0).is_err() {
        count_drop(DropReason::ReadFailed);
    }
}

#[inline(always)]
fn read<T: Copy>(sk: u64, off: u32) -> Option<T> {
    // SAFETY: a probed read of kernel memory; a bad address fails cleanly.
    unsafe { bpf_probe_read_kernel((sk + u64::from(off)) as *const T) }.ok()
}

#[inline(always)]
fn leave(ret: i64, dir: Dir) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a copy is taken before the entry is removed.
    let Some(&[sk, flags]) = (unsafe { IN_CALL.get(&pid_tgid) }) else {
        return;
    };
    let _ = IN_CALL.remove(&pid_tgid);
    if ret <= 0 || (dir == Dir::Recv && flags & MSG_PEEK != 0) {
        return;
    }
    let seq_off = match dir {
        Dir::Send => global(&OFF_WRITE_SEQ),
        Dir::Recv => global(&OFF_COPIED_SEQ),
    };
    let (Some(seq_end), Some(clock), Some(cookie)) = (
        read::<u32>(sk, seq_off),
        read::<u64>(sk, global(&OFF_CLOCK)),
        read::<u64>(sk, global(&OFF_COOKIE)),
    ) else {
        count_drop(DropReason::ReadFailed);
        return;
    };
    // No cookie yet: no packet of this socket was seen since the agent
    // started, so none of its bytes could be lined up with this call.
    if cookie == 0 {
        count_drop(DropReason::ReadFailed);
        return;
    }
    let data_end = match dir {
        Dir::Recv if global(&TLS_SNAP) != 0 => recv_data_end(
            seq_end,
            read::<u32>(sk, global(&OFF_RCV_NXT)).unwrap_or(0),
            || read::<u8>(sk, global(&OFF_STATE)).unwrap_or(0),
            || read::<i32>(sk, global(&OFF_SK_ERR)).unwrap_or(0),
        ),
        _ => seq_end,
    };
    crate::tls::note_sock_op(pid_tgid, cookie, data_end, ret as u32, dir);
    if state::ctl_generation().is_some() {
        let silence = state::silence_of(cookie);
        if silence != 0 {
            count_silenced(cookie, silence, dir, ret as u64);
            add_stat(KernelStat::SilencedCalls, 1);
            return;
        }
    }
    let comm = match bpf_get_current_comm() {
        Ok(c) => [
            u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
            u64::from_le_bytes([c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15]]),
        ],
        Err(_) => [0, 0],
    };
    emit_op(dir, ret as u32, clock, cookie, pid_tgid, seq_end, comm);
}

/// `tcp_sendmsg(sk, msg, size)`
#[kprobe]
pub fn kprobe_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    enter(ctx.arg::<*const c_void>(0).map(|p| p as u64), 0);
    0
}

#[kretprobe]
pub fn kretprobe_tcp_sendmsg(ctx: RetProbeContext) -> u32 {
    leave(ctx.ret::<i32>() as i64, Dir::Send);
    0
}

/// `tcp_recvmsg(sk, msg, len, flags, addr_len)`
#[kprobe]
pub fn kprobe_tcp_recvmsg(ctx: ProbeContext) -> u32 {
    let flags = ctx.arg::<u64>(3).unwrap_or(0);
    enter(ctx.arg::<*const c_void>(0).map(|p| p as u64), flags);
    0
}

#[kretprobe]
pub fn kretprobe_tcp_recvmsg(ctx: RetProbeContext) -> u32 {
    leave(ctx.ret::<i32>() as i64, Dir::Recv);
    0
}

/// `tcp_sendpage(sk, page, offset, size, flags)` (before 6.5)
#[kprobe]
pub fn kprobe_tcp_sendpage(ctx: ProbeContext) -> u32 {
    enter(ctx.arg::<*const c_void>(0).map(|p| p as u64), 0);
    0
}

#[kretprobe]
pub fn kretprobe_tcp_sendpage(ctx: RetProbeContext) -> u32 {
    leave(ctx.ret::<i32>() as i64, Dir::Send);
    0
}
