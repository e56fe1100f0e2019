//! Programs a process starts: an [`Exec`] record in the lanes' time order,
//! so that user space describes the process again from that point (its
//! records before it are the old program's, those after the new one's).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use core::mem::size_of;
use tracer_common::{frame_len, DropReason, Exec, Tag};

use crate::{global, lane, ENABLED};

const EXEC_FRAME: usize = frame_len(size_of::<Exec>());

/// `sched_process_exec(p, old_pid, bprm)`: runs in the process itself,
/// once the new program is in place (a multi-threaded process has become
/// its one thread by then, with the process's id).
#[btf_tracepoint(function = "sched_process_exec")]
pub fn process_exec(_ctx: BtfTracePointContext) -> i32 {
    if global(&ENABLED) == 0 {
        return 0;
    }
    let Some(held) = lane::reserve_packet::<EXEC_FRAME>(false, DropReason::RingFullExec) else {
        return 0;
    };
    let dst = held.record() as *mut u64;
    let pid = bpf_get_current_pid_tgid() >> 32;
    // SAFETY: the held frame has room for EXEC_FRAME bytes, 8-aligned; the
    // words follow `Exec`'s layout (asserted in tracer_common).
    unsafe {
        dst.write(Tag::Exec as u64 | pid << 32);
        // Taken while the lane is held: the lane stays in time order.
        dst.add(1).write(bpf_ktime_get_ns());
    }
    held.publish(size_of::<Exec>());
    0
}
