//! Socket-layer tracepoints: send/receive calls and TCP state changes.
use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_ktime_get_ns,
        generated::{bpf_get_current_task_btf, bpf_skc_to_tcp_sock},
    },
    macros::{btf_tracepoint, map},
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};
use tracer_common::{
    frame_len, recv_data_end, ConnState, Dir, DropReason, KernelStat, SockOp, SockTotals, AF_INET,
    AF_INET6, STATE_AGENT_SOCKET,
};

use crate::{
    records::{Op, State, Totals},
    state,
};

use crate::{
    add_stat, field, global, lane, AGENT_PID, ENABLED, KPROBE_CALLS, OFF_CLOCK, OFF_COOKIE,
    OFF_COPIED_SEQ, OFF_DADDR, OFF_DPORT, OFF_FAMILY, OFF_NUM, OFF_RCV_NXT, OFF_RCV_SADDR,
    OFF_SK_ERR, OFF_STATE, OFF_TASK_COMM, OFF_TASK_PID, OFF_TASK_TGID, OFF_V6_DADDR,
    OFF_V6_RCV_SADDR, OFF_WRITE_SEQ, TLS_SNAP,
};

const MSG_PEEK: i32 = 2;

/// The socket's cookie: read from the socket when it has one, else made
/// by the helper (which assigns it on first use).
#[inline(always)]
pub fn cookie_of(sk: *mut c_void) -> u64 {
    // SAFETY: sk is the tracepoint's typed socket pointer.
    let c: u64 = unsafe { field(sk as *const u8, global(&OFF_COOKIE)) };
    if c != 0 {
        return c;
    }
    // SAFETY: as above.
    unsafe { bpf_get_socket_cookie(sk) }
}

// (struct sock *sk, int ret, int flags)
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    on_sock_op(ctx.arg(0), ctx.arg(1), ctx.arg(2), Dir::Send);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    on_sock_op(ctx.arg(0), ctx.arg(1), ctx.arg(2), Dir::Recv);
    0
}

pub(crate) const OP_FRAME: usize = frame_len(size_of::<SockOp>());

/// One send or receive call that returned `ret` on socket `sk` (a typed
/// BTF pointer: a tracepoint's or a traced function's argument), with the
/// receive's `flags`. Every source of calls ends here, so the records are
/// the same whatever the source.
#[inline(always)]
pub fn on_sock_op(sk: *mut c_void, ret: i32, flags: i32, dir: Dir) {
    if global(&ENABLED) == 0 {
        return;
    }
    if ret <= 0 || (dir == Dir::Recv && flags & MSG_PEEK != 0) {
        return;
    }
    // NULL unless a full TCP socket: UDP, Unix and the rest leave here.
    // SAFETY: sk is the tracepoint's typed socket pointer.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) } as *const u8;
    if tp.is_null() {
        return;
    }
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    // SAFETY: the current task, a typed pointer.
    let (tgid, tid): (u32, u32) = unsafe {
        (
            field(task, global(&OFF_TASK_TGID)),
            field(task, global(&OFF_TASK_PID)),
        )
    };
    let pid_tgid = u64::from(tgid) << 32 | u64::from(tid);
    let pid = tgid;
    if pid == global(&AGENT_PID) {
        return;
    }
    let off = match dir {
        Dir::Send => global(&OFF_WRITE_SEQ),
        Dir::Recv => global(&OFF_COPIED_SEQ),
    };
    // SAFETY: tp is the helper's typed tcp_sock pointer.
    let (seq_end, clock): (u32, u64) = unsafe { (field(tp, off), field(tp, global(&OFF_CLOCK))) };
    let cookie = cookie_of(sk);
    let data_end = match dir {
        Dir::Recv if global(&TLS_SNAP) != 0 => {
            // SAFETY: tp is the helper's typed tcp_sock pointer.
            recv_data_end(
                seq_end,
                unsafe { field(tp, global(&OFF_RCV_NXT)) },
                || unsafe { field(tp, global(&OFF_STATE)) },
                || unsafe { field(tp, global(&OFF_SK_ERR)) },
            )
        }
        _ => seq_end,
    };
    crate::tls::note_sock_op(pid_tgid, cookie, data_end, ret as u32, dir);
    // A socket user space silenced: counted, not reported.
    if let Some(gen) = state::ctl_generation() {
        let st = state::get(sk, true);
        if !st.is_null() {
            state::refresh(st, cookie, gen);
            // SAFETY: this socket's storage.
            let s = unsafe { &mut *st };
            if s.ctl.silence != 0 {
                let d = dir as usize & 1;
                s.silenced_calls[d] += 1;
                s.silenced_bytes[d] += ret as u64;
                add_stat(KernelStat::SilencedCalls, 1);
                return;
            }
        }
    }
    let comm_off = global(&OFF_TASK_COMM);
    // SAFETY: the current task, a typed pointer; comm is 16 bytes.
    let comm: [u64; 2] = unsafe { [field(task, comm_off), field(task, comm_off + 8)] };
    emit_op(dir, ret as u32, clock, cookie, pid_tgid, seq_end, comm);
}

/// Writes the record of one call, whatever its source.
#[inline(always)]
pub fn emit_op(
    dir: Dir,
    len: u32,
    clock: u64,
    cookie: u64,
    pid_tgid: u64,
    seq_end: u32,
    comm: [u64; 2],
) {
    let Some(held) = lane::reserve_op::<OP_FRAME>(DropReason::RingFullOp) else {
        return;
    };
    // The time the call returned. TCP refreshes the socket's clock
    // (`tcp_clock_cache`, CLOCK_MONOTONIC ns, what bpf_ktime_get_ns reads,
    // at a fraction of its cost) as a receive finishes, so a receive reads
    // it (measured here: 99.8 % within 1 us of the helper's time, the rest
    // within 1 ms); a send refreshes it when it transmits, which may be long
    // before it returns (a send that only queued), so a send reads the
    // socket's clock only when this CPU just transmitted for this socket.
    let ts_ns = match dir {
        Dir::Recv if clock != 0 => clock,
        Dir::Send if clock != 0 && just_transmitted(cookie, clock) => clock,
        // SAFETY: helper without arguments.
        _ => unsafe { bpf_ktime_get_ns() },
    };
    let op = Op {
        dir: dir as u8,
        len,
        ts_ns,
        cookie,
        pid_tgid,
        seq_end,
        comm,
    };
    // SAFETY: the held frame has room for OP_FRAME bytes, 8-aligned.
    unsafe { op.write(held.record() as *mut u64) };
    held.publish(size_of::<SockOp>());
}

/// The socket and TCP clock of the last packet this CPU sent, so that the
/// send call that sent it can take the packet's time as its own.
#[map]
static LAST_TX: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// A packet of socket `cookie` left this CPU at TCP clock `clock`.
#[inline(always)]
pub fn note_transmit(cookie: u64, clock: u64) {
    if let Some(slot) = LAST_TX.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; an interrupting program that overwrites
        // it only makes the check below fail.
        unsafe { *slot = [cookie, clock] };
    }
}

#[inline(always)]
pub(crate) fn just_transmitted(cookie: u64, clock: u64) -> bool {
    match LAST_TX.get_ptr(0) {
        // SAFETY: this CPU's slot.
        Some(slot) => unsafe { *slot == [cookie, clock] },
        None => false,
    }
}

/// TCP states (include/net/tcp_states.h).
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    on_state(&ctx);
    0
}

const STATE_FRAME: usize = frame_len(size_of::<ConnState>());
const TOTALS_FRAME: usize = frame_len(size_of::<SockTotals>());

#[inline(always)]
fn on_state(ctx: &BtfTracePointContext) {
    if global(&ENABLED) == 0 {
        return;
    }
    // (const struct sock *sk, const int oldstate, const int newstate)
    let sk: *mut c_void = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    // The agent uses two changes: ESTABLISHED, which says which end
    // connected (from SYN_SENT) or was accepted (from SYN_RECV) and carries
    // the 4-tuple, and CLOSE. The others (the handshakes) are most of a
    // short connection's changes and carry nothing it uses.
    // A connect() by the agent (its exports) enters SYN_SENT in the
    // agent's own task, before any of its packets: the packet programs
    // know the socket as the agent's from then on, whatever task they
    // interrupt (see packet.rs).
    if new == TCP_SYN_SENT {
        if (bpf_get_current_pid_tgid() >> 32) as u32 == global(&AGENT_PID) {
            state::mark_agent(sk);
        } else if let Some(cause) = crate::hooks::serving() {
            crate::hooks::connecting(cookie_of(sk), cause);
        }
        return;
    }
    if new != TCP_ESTABLISHED && new != TCP_CLOSE {
        return;
    }
    // SAFETY: typed socket pointer from the tracepoint.
    if unsafe { bpf_skc_to_tcp_sock(sk) }.is_null() {
        return;
    }
    let base = sk as *const u8;
    // SAFETY: sk is typed; the offsets come from this kernel's BTF.
    let (family, local_port, dport) = unsafe {
        (
            field::<u16>(base, global(&OFF_FAMILY)),
            field::<u16>(base, global(&OFF_NUM)),
            field::<u16>(base, global(&OFF_DPORT)),
        )
    };
    let fam = family as u8;
    let (local, remote) = if fam == AF_INET {
        // SAFETY: as above.
        unsafe {
            (
                [u64::from(field::<u32>(base, global(&OFF_RCV_SADDR))), 0],
                [u64::from(field::<u32>(base, global(&OFF_DADDR))), 0],
            )
        }
    } else if fam == AF_INET6 {
        let (l, r) = (global(&OFF_V6_RCV_SADDR), global(&OFF_V6_DADDR));
        // SAFETY: as above; the addresses are 16 bytes.
        unsafe {
            (
                [field::<u64>(base, l), field::<u64>(base, l + 8)],
                [field::<u64>(base, r), field::<u64>(base, r + 8)],
            )
        }
    } else {
        return;
    };
    let cookie = cookie_of(sk);
    let Some(held) = lane::reserve_packet::<STATE_FRAME>(false, DropReason::RingFullConn) else {
        return;
    };
    // User space silences the local end that reads the agent's exports.
    let own = if state::is_agent(sk) {
        STATE_AGENT_SOCKET
    } else {
        0
    };
    let rec = State {
        family: fam,
        old_state: old as u8 | own,
        new_state: new as u8,
        local_port,
        remote_port: u16::from_be(dport),
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cookie,
        pid_tgid: bpf_get_current_pid_tgid(),
        local,
        remote,
    };
    // SAFETY: the held frame has room for STATE_FRAME bytes, 8-aligned.
    unsafe { rec.write(held.record() as *mut u64) };
    held.publish(size_of::<ConnState>());
    if new == TCP_CLOSE {
        if global(&KPROBE_CALLS) != 0 {
            fold_kprobe_silenced(sk, cookie);
        }
        totals(sk, cookie);
    }
}

/// Adds the calls the kprobe source silenced on this socket (counted by
/// cookie: kprobes cannot reach socket storage) to its storage, so that
/// its totals carry them as they carry those of the other sources.
#[inline(always)]
fn fold_kprobe_silenced(sk: *mut c_void, cookie: u64) {
    let Some(k) = crate::sources::kprobe::take_silenced(cookie) else {
        return;
    };
    let st = state::get(sk, true);
    if st.is_null() {
        return;
    }
    // SAFETY: this socket's storage.
    let s = unsafe { &mut *st };
    if s.ctl.silence == 0 {
        s.ctl.silence = k[0] as u8;
    }
    s.silenced_calls[0] += k[1];
    s.silenced_calls[1] += k[2];
    s.silenced_bytes[0] += k[3];
    s.silenced_bytes[1] += k[4];
}

/// At the close of a socket the programs reported in summary only, what
/// they counted instead.
#[inline(always)]
fn totals(sk: *mut c_void, cookie: u64) {
    let st = state::get(sk, false);
    if st.is_null() {
        return;
    }
    // SAFETY: this socket's storage.
    let s = unsafe { &*st };
    if s.silenced_calls == [0, 0] && s.uncopied == [0, 0] {
        return;
    }
    let Some(held) = lane::reserve_packet::<TOTALS_FRAME>(false, DropReason::RingFullTotals) else {
        return;
    };
    let rec = Totals {
        silence: s.ctl.silence,
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cookie,
        silenced_calls: s.silenced_calls,
        silenced_bytes: s.silenced_bytes,
        uncopied: s.uncopied,
    };
    // SAFETY: the held frame has room for TOTALS_FRAME bytes, 8-aligned.
    unsafe { rec.write(held.record() as *mut u64) };
    held.publish(size_of::<SockTotals>());
}
