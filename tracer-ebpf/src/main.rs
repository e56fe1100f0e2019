//! Kernel side of the tracer: captures, filters and copies; never parses
//! protocols.
//!
//! - `sock_send_length` / `sock_recv_length` (tp_btf): one [`SockOp`] per
//!   send/receive call on a TCP socket, on the calling thread, with the TCP
//!   sequence number just past the bytes it moved (so user space can line
//!   calls up with packets by sequence number).
//! - `inet_sock_set_state` (tp_btf): one [`ConnState`] per TCP state change
//!   the agent uses (ESTABLISHED, CLOSE), with the 4-tuple; at a close, a
//!   [`SockTotals`] for a socket reported in summary only.
//! - `capture_egress` / `capture_ingress` (cgroup_skb on the root cgroup v2):
//!   one segment record per TCP packet carrying payload, with the first
//!   `SNAP_LEN` bytes of it; loopback packets are copied once, on egress.
//! - `profile_cpu` (perf_event, software cpu-clock on every CPU, attached
//!   only when profiling is on): one sample record per tick of a non-idle
//!   CPU with the kernel stack, the thread's user registers and a copy of
//!   the top of its user stack, which user space unwinds with .eh_frame.
//!
//! Everything is keyed by socket cookie. No syscall tracepoint is used, so
//! file and pipe I/O pay nothing. Calls, packets and connection records go
//! to per-CPU lanes ([`lane`]; the last quarter of each kept for connection
//! records), CPU samples to a ring buffer; the agent drains on a timer and
//! is woken when a lane's producer crosses a multiple of `1 << WAKE_SHIFT`
//! (from `--wakeup-bytes`).
//!
//! - `ssl_*` (uprobes and a uretprobe on TLS libraries, attached per file
//!   by the agent): one TLS record per call that moved plaintext, with the
//!   socket cookie and ciphertext sequence number learned from the socket
//!   calls made inside it ([`tls`]).
//!
//! - `ngx_upstream_init*` (a uprobe and a uretprobe on nginx, attached per
//!   file like the TLS probes): runtime hooks that say which request a
//!   thread's upstream work is for ([`hooks`]); Go net/http's
//!   ([`gohooks`]) and CPython asyncio's ([`pyhooks`]) likewise.
//!
//! Kernel structs are read directly through the typed (BTF) pointers the
//! tracepoints hand over, at offsets the agent reads from the running
//! kernel's BTF and sets before load (read-only globals, which the verifier
//! treats as constants): no `bpf_probe_read_kernel` call per field.
#![no_std]
#![no_main]
// Atomic add and exchange on map memory (the BPF target's core::sync::atomic
// has no read-modify-write operations); the agent builds this crate with
// Debian's rustc and RUSTC_BOOTSTRAP.
#![allow(internal_features)]
#![feature(core_intrinsics, adt_const_params)]

mod gohooks;
mod gotls;
mod h2walk;
mod hooks;
mod lane;
mod packet;
mod procs;
mod pyhooks;
mod records;
mod sample;
mod sock;
mod sources;
mod state;
mod tls;

use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use tracer_common::{DropReason, DROP_REASONS, KERNEL_STATS, SNAP_LEN_DEFAULT};

// Tunables, set by the agent before load (see tracer_common::globals).
#[no_mangle]
static SNAP_LEN: u32 = SNAP_LEN_DEFAULT;
#[no_mangle]
static HEAD_MAX: u32 = tracer_common::HEAD_MAX_DEFAULT;
#[no_mangle]
static ENABLED: u32 = 1;
#[no_mangle]
static AGENT_PID: u32 = 0;
#[no_mangle]
static KPROBE_CALLS: u32 = 0;
#[no_mangle]
static LANE_MASK: u32 = 0;
#[no_mangle]
static OP_LANE_MASK: u32 = 0;
#[no_mangle]
static WAKE_SHIFT: u32 = 18;
#[no_mangle]
static OP_WAKE_SHIFT: u32 = 16;
#[no_mangle]
static STRICT_PUBLISH: u32 = 1;
#[no_mangle]
static NR_CPUS: u32 = 1;
#[no_mangle]
static TLS_SNAP: u32 = 0;
// Field offsets read from the running kernel's BTF by the agent: aya-ebpf
// has no CO-RE relocations, and these layouts differ between kernels.
#[no_mangle]
static OFF_WRITE_SEQ: u32 = 0;
#[no_mangle]
static OFF_COPIED_SEQ: u32 = 0;
#[no_mangle]
static OFF_RCV_NXT: u32 = 0;
#[no_mangle]
static OFF_STATE: u32 = 0;
#[no_mangle]
static OFF_SK_ERR: u32 = 0;
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
static OFF_COOKIE: u32 = 0;
#[no_mangle]
static OFF_TASK_COMM: u32 = 0;
#[no_mangle]
static OFF_CLOCK: u32 = 0;
#[no_mangle]
static OFF_TASK_PID: u32 = 0;
#[no_mangle]
static OFF_TASK_TGID: u32 = 0;

/// CPU samples and the reader's wake-ups (size set at load).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DROP_REASONS, 0);

#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(KERNEL_STATS, 0);

#[inline(always)]
fn global<T: Copy>(v: &T) -> T {
    // SAFETY: reading our own static; volatile so the compiler does not fold
    // the default value the loader overrides.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn count_drop(reason: DropReason) {
    if let Some(c) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot. A program interrupting this one on the CPU
        // may lose an increment: counters, not accounting.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn add_stat(stat: tracer_common::KernelStat, n: u64) {
    if let Some(c) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot (as in count_drop).
        unsafe { *c += n };
    }
}

/// Wakes the agent (an empty record on the ring it sleeps on).
#[inline(always)]
fn wake_reader() {
    // One little-endian word (the tag is its first byte), not a byte
    // array: LLVM zeroes an array's tail with a call to memset, a stack
    // frame of its own in the verifier's count of a call chain's stack
    // (512 bytes in all).
    let wake = tracer_common::Tag::Wakeup as u64;
    let _ = EVENTS.output::<u64>(&wake, BPF_RB_FORCE_WAKEUP as u64);
}

/// A field of a kernel struct behind a BTF pointer, at an offset from BTF.
///
/// # Safety
/// `base` must be a typed pointer the verifier knows (a tracepoint's
/// argument, a helper's BTF result) and `off` a read-only global, so that
/// the verifier checks the access against the type.
#[inline(always)]
unsafe fn field<T: Copy>(base: *const u8, off: u32) -> T {
    unsafe { core::ptr::read_volatile(base.add(off as usize) as *const T) }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
