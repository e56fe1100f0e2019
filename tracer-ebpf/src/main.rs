//! Kernel side of the tracer: captures, filters and copies; never parses
//! protocols.
//!
//! - `sock_send_length` / `sock_recv_length` (tp_btf): one [`SockOp`] per
//!   send/receive call on a TCP socket, on the calling thread, with the TCP
//!   sequence number just past the bytes it moved (so user space can line
//!   calls up with packets by sequence number).
//! - `inet_sock_set_state` (tp_btf): one [`ConnState`] per TCP state change
//!   with the 4-tuple.
//! - `capture_egress` / `capture_ingress` (cgroup_skb on the root cgroup v2):
//!   one segment record per TCP packet carrying payload, with the first
//!   `SNAP_LEN` bytes of it; loopback packets are copied once, on egress.
//!
//! Everything is keyed by socket cookie. No syscall tracepoint is used, so
//! file and pipe I/O pay nothing. Records are written without waking the
//! reader until a CPU has written `WAKEUP_BYTES`; the agent also drains on a
//! timer.
#![no_std]
#![no_main]

use core::ffi::c_void;
use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_probe_read_kernel,
        generated::{bpf_skb_load_bytes, bpf_skc_to_tcp_sock},
    },
    macros::{btf_tracepoint, cgroup_skb, map},
    maps::{PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, SkBuffContext},
    EbpfContext,
};
use tracer_common::{
    ConnState, Dir, DropReason, SegmentHeader, SegmentScratch, SockOp, Tag, AF_INET, AF_INET6,
    DROP_REASONS, LOOPBACK_IFINDEX, MAX_SNAP_LEN, SEG_LOOPBACK, SNAP_LEN_DEFAULT,
};

// Tunables, set by the agent before load (see tracer_common::globals).
#[no_mangle]
static SNAP_LEN: u32 = SNAP_LEN_DEFAULT;
#[no_mangle]
static ENABLED: u32 = 1;
#[no_mangle]
static AGENT_PID: u32 = 0;
#[no_mangle]
static WAKEUP_BYTES: u64 = 256 * 1024;
// Field offsets read from the running kernel's BTF by the agent: aya-ebpf
// has no CO-RE relocations, and these layouts differ between kernels.
#[no_mangle]
static OFF_WRITE_SEQ: u32 = 0;
#[no_mangle]
static OFF_COPIED_SEQ: u32 = 0;
#[no_mangle]
static OFF_DADDR: u32 = 0;
#[no_mangle]
static OFF_RCV_SADDR: u32 = 0;
#[no_mangle]
static OFF_DPORT: u32 = 0;
#[no_mangle]
static OFF_NUM: u32 = 0;
#[no_mangle]
static OFF_FAMILY: u32 = 0;
#[no_mangle]
static OFF_V6_DADDR: u32 = 0;
#[no_mangle]
static OFF_V6_RCV_SADDR: u32 = 0;

/// Size is set by the agent at load time (`--ring-buffer-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// Bytes this CPU wrote since it last woke the reader.
#[map]
static PENDING: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS, 0);

/// The segment record is built here (too big for the 512-byte stack) and
/// copied to the ring buffer with its exact length.
#[map]
static SEG_SCRATCH: PerCpuArray<SegmentScratch> = PerCpuArray::with_max_entries(1, 0);

const MSG_PEEK: i32 = 2;
const IPPROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

#[inline(always)]
fn global<T: Copy>(v: &T) -> T {
    // SAFETY: reading our own static; volatile so the compiler does not fold
    // the default value the loader overrides.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn count_drop(reason: DropReason) {
    if let Some(c) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

/// Wake the reader only once this CPU has written `WAKEUP_BYTES` since its
/// last wake-up: a wake-up per record costs more than the copy, and asking
/// the ring how full it is (`bpf_ringbuf_query`) costs ~100 ns of cache-line
/// traffic per record here, while a per-CPU counter costs next to nothing.
/// The agent also drains on a timer, so a quiet CPU's records are not stuck.
#[inline(always)]
fn wakeup_flag(size: u64) -> u64 {
    let Some(pending) = PENDING.get_ptr_mut(0) else {
        return BPF_RB_NO_WAKEUP as u64;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    unsafe {
        *pending += size;
        if *pending >= global(&WAKEUP_BYTES) {
            *pending = 0;
            return BPF_RB_FORCE_WAKEUP as u64;
        }
    }
    BPF_RB_NO_WAKEUP as u64
}

#[inline(always)]
fn read_kernel<T: Copy>(base: *const u8, off: u32) -> Result<T, ()> {
    // SAFETY: bpf_probe_read_kernel validates the address.
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T).map_err(|_| ()) }
}

// ---------------------------------------------------------------------------
// Send/receive calls.

#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    on_sock_op(&ctx, Dir::Send);
    0
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    on_sock_op(&ctx, Dir::Recv);
    0
}

#[inline(always)]
fn on_sock_op(ctx: &BtfTracePointContext, dir: Dir) {
    if global(&ENABLED) == 0 {
        return;
    }
    // (struct sock *sk, int ret, int flags)
    let sk: *mut c_void = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if ret <= 0 || (dir == Dir::Recv && flags & MSG_PEEK != 0) {
        return;
    }
    // NULL unless a full TCP socket: UDP, Unix and the rest leave here.
    // SAFETY: sk is the tracepoint's typed socket pointer.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) } as *const u8;
    if tp.is_null() {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    if pid == global(&AGENT_PID) {
        return;
    }
    let off = match dir {
        Dir::Send => global(&OFF_WRITE_SEQ),
        Dir::Recv => global(&OFF_COPIED_SEQ),
    };
    let Ok(seq_end) = read_kernel::<u32>(tp, off) else {
        count_drop(DropReason::ReadFailed);
        return;
    };
    // SAFETY: sk is a valid socket pointer for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(sk) };
    let flags = wakeup_flag(size_of::<SockOp>() as u64);
    let Some(mut entry) = EVENTS.reserve::<SockOp>(0) else {
        count_drop(DropReason::RingFullOp);
        return;
    };
    let rec = SockOp {
        tag: Tag::SockOp as u8,
        dir: dir as u8,
        _pad: [0; 2],
        len: ret as u32,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cookie,
        pid,
        tid: pid_tgid as u32,
        seq_end,
        _pad2: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    entry.write(rec);
    entry.submit(flags);
}

// ---------------------------------------------------------------------------
// Connection state changes.

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    let _ = on_state(&ctx);
    0
}

#[inline(always)]
fn on_state(ctx: &BtfTracePointContext) -> Result<(), ()> {
    if global(&ENABLED) == 0 {
        return Ok(());
    }
    // (const struct sock *sk, const int oldstate, const int newstate)
    let sk: *mut c_void = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    // SAFETY: typed socket pointer from the tracepoint.
    if unsafe { bpf_skc_to_tcp_sock(sk) }.is_null() {
        return Ok(());
    }
    let base = sk as *const u8;
    let read = |off: u32| -> Result<u16, ()> {
        read_kernel::<u16>(base, off).inspect_err(|_| count_drop(DropReason::ReadFailed))
    };
    let family = read(global(&OFF_FAMILY))?;
    let local_port = read(global(&OFF_NUM))?;
    let remote_port = u16::from_be(read(global(&OFF_DPORT))?);
    let mut local_addr = [0u8; 16];
    let mut remote_addr = [0u8; 16];
    let fam = family as u8;
    if fam == AF_INET {
        let l: [u8; 4] = read_kernel(base, global(&OFF_RCV_SADDR))?;
        let r: [u8; 4] = read_kernel(base, global(&OFF_DADDR))?;
        local_addr[..4].copy_from_slice(&l);
        remote_addr[..4].copy_from_slice(&r);
    } else if fam == AF_INET6 {
        local_addr = read_kernel(base, global(&OFF_V6_RCV_SADDR))?;
        remote_addr = read_kernel(base, global(&OFF_V6_DADDR))?;
    } else {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let flags = wakeup_flag(size_of::<ConnState>() as u64);
    let Some(mut entry) = EVENTS.reserve::<ConnState>(0) else {
        count_drop(DropReason::RingFullConn);
        return Ok(());
    };
    entry.write(ConnState {
        tag: Tag::ConnState as u8,
        family: fam,
        old_state: old as u8,
        new_state: new as u8,
        local_port,
        remote_port,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: valid socket pointer.
        cookie: unsafe { bpf_get_socket_cookie(sk) },
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        local_addr,
        remote_addr,
    });
    entry.submit(flags);
    Ok(())
}

// ---------------------------------------------------------------------------
// Packet payloads.

#[cgroup_skb]
pub fn capture_egress(ctx: SkBuffContext) -> i32 {
    let _ = capture(&ctx, Dir::Send);
    1 // always let the packet through
}

#[cgroup_skb]
pub fn capture_ingress(ctx: SkBuffContext) -> i32 {
    let _ = capture(&ctx, Dir::Recv);
    1
}

#[inline(always)]
fn load<const N: usize>(ctx: &SkBuffContext, off: u32) -> Result<[u8; N], ()> {
    let mut buf = [0u8; N];
    // SAFETY: buf is N bytes of stack.
    let r =
        unsafe { bpf_skb_load_bytes(ctx.as_ptr(), off, buf.as_mut_ptr() as *mut c_void, N as u32) };
    if r < 0 {
        count_drop(DropReason::BadPacket);
        return Err(());
    }
    Ok(buf)
}

#[inline(always)]
fn capture(ctx: &SkBuffContext, dir: Dir) -> Result<(), ()> {
    if global(&ENABLED) == 0 {
        return Ok(());
    }
    // SAFETY: the context's __sk_buff, readable in cgroup_skb programs.
    let (ifindex, ingress_ifindex) =
        unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).ingress_ifindex) };
    // Loopback payloads were already copied on egress (see SEG_LOOPBACK).
    if dir == Dir::Recv && ingress_ifindex == LOOPBACK_IFINDEX {
        return Ok(());
    }
    let seg_flags = if dir == Dir::Send && ifindex == LOOPBACK_IFINDEX {
        SEG_LOOPBACK
    } else {
        0
    };
    // __sk_buff->protocol is the big-endian ethertype.
    let proto = u16::from_be(ctx.skb.protocol() as u16);
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let (family, ip_len) = if proto == ETH_P_IP {
        let ip: [u8; 20] = load(ctx, 0)?;
        if ip[9] != IPPROTO_TCP {
            return Ok(());
        }
        src[..4].copy_from_slice(&ip[12..16]);
        dst[..4].copy_from_slice(&ip[16..20]);
        (AF_INET, ((ip[0] & 0x0f) as u32) * 4)
    } else if proto == ETH_P_IPV6 {
        let ip: [u8; 40] = load(ctx, 0)?;
        match ip[6] {
            IPPROTO_TCP => {}
            // hop-by-hop, routing, fragment, destination options
            0 | 43 | 44 | 60 => {
                count_drop(DropReason::Ipv6ExtHeader);
                return Ok(());
            }
            _ => return Ok(()),
        }
        src.copy_from_slice(&ip[8..24]);
        dst.copy_from_slice(&ip[24..40]);
        (AF_INET6, 40)
    } else {
        return Ok(());
    };
    let tcp: [u8; 20] = load(ctx, ip_len)?;
    let doff = ((tcp[12] >> 4) as u32) * 4;
    let payload_off = ip_len + doff;
    let skb_len = ctx.len();
    // No payload: ACKs and SYNs leave here. A FIN is kept (once per
    // direction): it takes a sequence number, which user space needs to
    // line up a receive call that read the last bytes and the FIN together.
    let payload_len = if payload_off >= skb_len {
        if tcp[13] & TCP_FIN == 0 {
            return Ok(());
        }
        0
    } else {
        skb_len - payload_off
    };
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let (local_port, remote_port, local_addr, remote_addr) = match dir {
        Dir::Send => (sport, dport, src, dst),
        Dir::Recv => (dport, sport, dst, src),
    };

    let scratch = SEG_SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: per-CPU map value, exclusively ours while this program runs.
    let scratch = unsafe { &mut *scratch };
    let mut n = payload_len;
    let snap = global(&SNAP_LEN);
    if n > snap {
        n = snap;
    }
    if n > MAX_SNAP_LEN as u32 {
        n = MAX_SNAP_LEN as u32;
    }
    if n > 0 {
        // SAFETY: n is within 1..=MAX_SNAP_LEN, the size of scratch.data.
        let r = unsafe {
            bpf_skb_load_bytes(
                ctx.as_ptr(),
                payload_off,
                scratch.data.as_mut_ptr() as *mut c_void,
                n,
            )
        };
        if r < 0 {
            count_drop(DropReason::BadPacket);
            return Err(());
        }
    }
    scratch.hdr = SegmentHeader {
        tag: Tag::Segment as u8,
        dir: dir as u8,
        family,
        tcp_flags: tcp[13],
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        payload_len,
        captured_len: n,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: the skb context is what the helper expects here.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        local_port,
        remote_port,
        seg_flags,
        _pad: [0; 3],
        local_addr,
        remote_addr,
    };
    let size = size_of::<SegmentHeader>() + n as usize;
    // SAFETY: size <= size_of::<SegmentScratch>(), all of it initialised
    // memory of the map value.
    let record = unsafe { core::slice::from_raw_parts(scratch as *const _ as *const u8, size) };
    let r = EVENTS.output::<[u8]>(record, wakeup_flag(size as u64));
    if r.is_err() {
        count_drop(DropReason::RingFullSegment);
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
