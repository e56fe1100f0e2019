//! Types shared by the profiling stages: a CPU sample after unwinding and
//! symbolization, ready to be attributed to a span and aggregated.
use std::sync::Arc;

/// One frame of a symbolized stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Demangled function name, when it could be resolved.
    pub function: Option<Arc<str>>,
    /// File name of the module (e.g. `libcrypto.so.3`, `python3.11`,
    /// `[kernel]`).
    pub module: Arc<str>,
    /// Offset of the instruction in the module (file offset for user
    /// modules, address for the kernel): what is shown as module+offset
    /// when the function is unknown.
    pub offset: u64,
    /// Kernel frame.
    pub kernel: bool,
    /// Source file and line, when DWARF had them.
    pub line: Option<(Arc<str>, u32)>,
}

/// A CPU sample of one thread, unwound and symbolized.
#[derive(Clone, Debug)]
pub struct StackSample {
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Monotonic kernel time of the sample (same clock as span times).
    pub ts_ns: u64,
    /// Frames, leaf first: kernel frames (if the sample hit the kernel),
    /// then user frames.
    pub frames: Vec<Frame>,
    /// The user stack could not be unwound to its root (copy too short,
    /// missing unwind info, corrupt frame).
    pub truncated: bool,
}
