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
//! - `profile_cpu` (perf_event, software cpu-clock on every CPU, attached
//!   only when profiling is on): one sample record per tick of a non-idle
//!   CPU with the kernel stack, the thread's user registers and a copy of
//!   the top of its user stack, which user space unwinds with .eh_frame.
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
        generated::{
            bpf_get_current_task_btf, bpf_get_smp_processor_id, bpf_get_stack, bpf_probe_read_user,
            bpf_skb_load_bytes, bpf_skc_to_tcp_sock, bpf_task_pt_regs,
        },
    },
    macros::{btf_tracepoint, cgroup_skb, map, perf_event},
    maps::{Array, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, PerfEventContext, SkBuffContext},
    EbpfContext,
};
use tracer_common::{
    ConnState, Dir, DropReason, SampleHeader, SampleScratch, SegmentHeader, SegmentScratch, SockOp,
    Tag, AF_INET, AF_INET6, DROP_REASONS, LOOPBACK_IFINDEX, MAX_KSTACK_FRAMES, MAX_SNAP_LEN,
    MAX_STACK_COPY, SAMPLE_KERNEL_THREAD, SAMPLE_STACK_SHORT, SEG_LOOPBACK, SNAP_LEN_DEFAULT,
    STACK_COPY_DEFAULT, STACK_COPY_SLACK,
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
#[no_mangle]
static STACK_COPY: u32 = STACK_COPY_DEFAULT;
#[no_mangle]
static OFF_REGS_IP: u32 = 0;
#[no_mangle]
static OFF_REGS_SP: u32 = 0;
#[no_mangle]
static OFF_REGS_BP: u32 = 0;
#[no_mangle]
static OFF_TASK_MM: u32 = 0;

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

/// The sample record is built here (stack copy up to 32 KiB) and copied to
/// the ring buffer with its exact length. One entry per possible CPU,
/// indexed by CPU id (set at load): a per-CPU array cannot hold values
/// above 32 KiB. A perf_event program does not nest on its CPU, so the
/// entry is exclusively this run's.
#[map]
static SAMPLE_SCRATCH: Array<SampleScratch> = Array::with_max_entries(1, 0);

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
    // The agent's own traffic (OTLP and profile exports): egress runs in the
    // sending task here, and with loopback ingress skipped above, a local
    // collector never sees those bytes parsed into spans of its own, which
    // would be exported in turn, forever.
    if dir == Dir::Send && (bpf_get_current_pid_tgid() >> 32) as u32 == global(&AGENT_PID) {
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

// ---------------------------------------------------------------------------
// CPU samples.

const PAGE: u64 = 4096;
/// Pages a stack copy can touch: a partial first page plus full ones.
const STACK_COPY_STEPS: u32 = (MAX_STACK_COPY as u32) / (PAGE as u32) + 1;
/// Highest canonical user-space address on x86-64 (exclusive).
const USER_ADDR_END: u64 = 0x0000_8000_0000_0000;

#[perf_event]
pub fn profile_cpu(ctx: PerfEventContext) -> u32 {
    let _ = sample(&ctx);
    0
}

#[inline(always)]
fn sample(ctx: &PerfEventContext) -> Result<(), ()> {
    if global(&ENABLED) == 0 {
        return Ok(());
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = (pid_tgid >> 32) as u32;
    // pid 0: the idle task; the agent does not profile itself.
    if pid == 0 || pid == global(&AGENT_PID) {
        return Ok(());
    }
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let scratch = SAMPLE_SCRATCH.get_ptr_mut(cpu).ok_or(())?;
    // SAFETY: this CPU's entry; the program does not nest on a CPU.
    let scratch = unsafe { &mut *scratch };
    let hdr = &mut scratch.hdr;
    hdr.tag = Tag::Sample as u8;
    hdr.flags = 0;
    hdr._pad = 0;
    // SAFETY: helper without arguments.
    hdr.ts_ns = unsafe { bpf_ktime_get_ns() };
    hdr.cpu = cpu;
    hdr.pid = pid;
    hdr.tid = pid_tgid as u32;
    hdr.comm = bpf_get_current_comm().unwrap_or([0; 16]);

    // Kernel stack of the interrupted context: empty when it was user code.
    // SAFETY: kstack is MAX_KSTACK_FRAMES u64s of map memory.
    let n = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            hdr.kstack.as_mut_ptr() as *mut c_void,
            (MAX_KSTACK_FRAMES * 8) as u32,
            0,
        )
    };
    hdr.kstack_len = if n < 0 {
        count_drop(DropReason::KernelStackFailed);
        0
    } else {
        (n as u64 / 8) as u16
    };

    hdr.ip = 0;
    hdr.sp = 0;
    hdr.bp = 0;
    hdr.stack_len = 0;
    let mut copied: u64 = 0;
    // SAFETY: the helper returns the current task, valid for this program.
    let task = unsafe { bpf_get_current_task_btf() };
    let mm: u64 = read_kernel(task as *const u8, global(&OFF_TASK_MM)).unwrap_or(0);
    if mm == 0 {
        hdr.flags = SAMPLE_KERNEL_THREAD;
    } else {
        // The user registers saved at kernel entry (the perf context's own
        // registers are kernel ones when the tick interrupted the kernel).
        // SAFETY: task is a valid task pointer.
        let regs = unsafe { bpf_task_pt_regs(task) } as *const u8;
        let ip: u64 = read_kernel(regs, global(&OFF_REGS_IP)).unwrap_or(0);
        let sp: u64 = read_kernel(regs, global(&OFF_REGS_SP)).unwrap_or(0);
        let bp: u64 = read_kernel(regs, global(&OFF_REGS_BP)).unwrap_or(0);
        hdr.ip = ip;
        hdr.sp = sp;
        hdr.bp = bp;
        if ip != 0 && sp != 0 && sp < USER_ADDR_END {
            copied = copy_user_stack(scratch, sp);
        }
    }

    // Bounded here, on the value used, for the verifier.
    if copied > MAX_STACK_COPY as u64 {
        copied = MAX_STACK_COPY as u64;
    }
    let size = size_of::<SampleHeader>() + copied as usize;
    // SAFETY: size <= size_of::<SampleScratch>(), all of it map memory.
    let record = unsafe { core::slice::from_raw_parts(scratch as *const _ as *const u8, size) };
    if EVENTS
        .output::<[u8]>(record, wakeup_flag(size as u64))
        .is_err()
    {
        count_drop(DropReason::RingFullSample);
    }
    Ok(())
}

/// Copies up to `STACK_COPY` bytes of user stack from `sp` into the
/// scratch buffer, page by page: a page that faults (the top of the stack,
/// or a page swapped out) ends the copy and keeps what came before it.
/// Returns the bytes copied.
#[inline(always)]
fn copy_user_stack(scratch: &mut SampleScratch, sp: u64) -> u64 {
    let mut want = global(&STACK_COPY) as u64;
    if want > MAX_STACK_COPY as u64 {
        want = MAX_STACK_COPY as u64;
    }
    let mut off: u64 = 0;
    let mut step = 0;
    while step < STACK_COPY_STEPS {
        step += 1;
        if off >= want || off > MAX_STACK_COPY as u64 {
            break;
        }
        let addr = sp + off;
        let mut len = PAGE - (addr & (PAGE - 1));
        if len > want - off {
            len = want - off;
        }
        if len == 0 || len > STACK_COPY_SLACK as u64 {
            break;
        }
        // SAFETY: off <= MAX_STACK_COPY and len <= STACK_COPY_SLACK, so the
        // destination stays inside scratch.data; the helper checks `addr`.
        let r = unsafe {
            bpf_probe_read_user(
                scratch.data.as_mut_ptr().add(off as usize) as *mut c_void,
                len as u32,
                addr as *const c_void,
            )
        };
        if r < 0 {
            break;
        }
        off += len;
    }
    if off == 0 && want > 0 {
        count_drop(DropReason::UserStackFailed);
    }
    if off < want {
        scratch.hdr.flags |= SAMPLE_STACK_SHORT;
    }
    scratch.hdr.stack_len = off as u32;
    off
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
