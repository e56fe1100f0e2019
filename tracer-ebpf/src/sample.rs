//! CPU samples (perf_event on the software cpu-clock of every CPU).
use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_task_btf, bpf_get_smp_processor_id, bpf_get_stack, bpf_probe_read_user,
            bpf_task_pt_regs,
        },
    },
    macros::{map, perf_event},
    maps::Array,
    programs::PerfEventContext,
    EbpfContext,
};
use tracer_common::{
    DropReason, SampleHeader, SampleScratch, Tag, MAX_KSTACK_FRAMES, MAX_STACK_COPY,
    SAMPLE_KERNEL_THREAD, SAMPLE_STACK_SHORT, STACK_COPY_DEFAULT, STACK_COPY_SLACK,
};

use crate::{count_drop, global, AGENT_PID, ENABLED, EVENTS};

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

/// The sample record is built here (stack copy up to 32 KiB) and copied to
/// the ring buffer with its exact length. One entry per possible CPU,
/// indexed by CPU id (set at load): a per-CPU array cannot hold values
/// above 32 KiB. A perf_event program does not nest on its CPU, so the
/// entry is exclusively this run's.
#[map]
static SAMPLE_SCRATCH: Array<SampleScratch> = Array::with_max_entries(1, 0);

#[inline(always)]
fn read_kernel<T: Copy>(base: *const u8, off: u32) -> Result<T, ()> {
    // SAFETY: bpf_probe_read_kernel validates the address.
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T).map_err(|_| ()) }
}

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
    // No wake-up: samples are few, the agent's timer drains them.
    if EVENTS
        .output::<[u8]>(record, BPF_RB_NO_WAKEUP as u64)
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
