//! CPython asyncio runtime hooks: which task a thread is stepping, and
//! which task created which (uprobes on the `_asyncio` extension, found by
//! its symbols; read-only).
//!
//! - `enter_task(loop, task)` (3.12+: `state, loop, task`): the thread
//!   starts stepping `task`; a [`CAUSE_TASK_ENTER`] says so and the task is
//!   remembered as the thread's current one.
//! - the return of `task_step` and of `TaskStepMethWrapper_call` (the two
//!   places a task is stepped from; `leave_task` is inlined in them): a
//!   [`CAUSE_TASK_LEAVE`].
//! - `Task.__init__(self, ...)`: a [`CAUSE_TASK_CREATE`] with the thread's
//!   current task as its creator (0 when created outside any task, e.g. in
//!   a protocol callback).
//!
//! User space links a call written inside a task's step to the one request
//! in flight whose response that task, or one of its ancestors, wrote.
use aya_ebpf::{
    helpers::generated::bpf_get_attach_cookie,
    macros::{map, uprobe, uretprobe},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use core::ffi::c_void;
use tracer_common::{
    CAUSE_TASK_CREATE, CAUSE_TASK_ENTER, CAUSE_TASK_LEAVE, CAUSE_THREADS_MAX, PY_TASK_ARG3,
};

/// Thread -> the task it is stepping.
#[map]
static PY_CURRENT: LruHashMap<u64, u64> = LruHashMap::with_max_entries(CAUSE_THREADS_MAX, 0);

#[uprobe]
pub fn py_task_enter(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = crate::hooks::traced_thread() else {
        return 0;
    };
    // Both registers read at fixed offsets (the verifier refuses a context
    // access at a computed one), then one chosen.
    // SAFETY: a uprobe's context is the user registers.
    let (rsi, rdx) = unsafe {
        (
            core::ptr::read_volatile(&(*ctx.regs).rsi),
            core::ptr::read_volatile(&(*ctx.regs).rdx),
        )
    };
    // SAFETY: the helper reads the program's own attach cookie.
    let arg3 = unsafe { bpf_get_attach_cookie(ctx.regs as *mut c_void) } == PY_TASK_ARG3;
    let task = if arg3 { rdx } else { rsi };
    let _ = PY_CURRENT.insert(&pid_tgid, &task, 0);
    crate::hooks::emit(CAUSE_TASK_ENTER, pid_tgid, task, 0, 0);
    0
}

#[uretprobe]
pub fn py_task_leave(_ctx: RetProbeContext) -> u32 {
    let Some(pid_tgid) = crate::hooks::traced_thread() else {
        return 0;
    };
    // SAFETY: a map value, copied at once.
    if unsafe { PY_CURRENT.get(&pid_tgid) }.is_none() {
        return 0;
    }
    let _ = PY_CURRENT.remove(&pid_tgid);
    crate::hooks::emit(CAUSE_TASK_LEAVE, pid_tgid, 0, 0, 0);
    0
}

#[uprobe]
pub fn py_task_create(ctx: ProbeContext) -> u32 {
    let Some(pid_tgid) = crate::hooks::traced_thread() else {
        return 0;
    };
    // SAFETY: a uprobe's context is the user registers.
    let task = unsafe { (*ctx.regs).rdi };
    // SAFETY: a map value, copied at once.
    let parent = unsafe { PY_CURRENT.get(&pid_tgid) }.copied().unwrap_or(0);
    crate::hooks::emit(CAUSE_TASK_CREATE, pid_tgid, task, parent, 0);
    0
}
