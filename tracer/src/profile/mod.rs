//! CPU profiles: sample records from the kernel -> unwound user stacks ->
//! symbolized [`types::StackSample`]s -> aggregation and export.
//!
//! - [`sample`] checks and decodes the kernel's sample record.
//! - [`unwind`] unwinds the copied user stack with `framehop` from each
//!   module's .eh_frame/.debug_frame (frame pointers where there is none),
//!   with per-binary data read once per file and per-process module lists.
//! - [`symbols`] resolves frames with blazesym (ELF symbols, DWARF,
//!   demangling), kallsyms for the kernel and perf maps for JIT code.
//! - [`Profiler`] ties them together: one record in, one stack out.
//! - [`aggregate`], [`pprof`], [`flame`], [`pyroscope`]: what happens to
//!   the stacks afterwards.
//!
//! Work per sample is bounded: frame limits, capped caches (binaries,
//! processes, resolved addresses, perf-map entries) and maps re-read at
//! most once per process per `min_refresh`; the time spent is counted.
pub mod aggregate;
pub mod flame;
mod kallsyms;
pub mod pprof;
pub mod pyroscope;
pub mod sample;
pub mod stage;
pub mod symbols;
pub mod types;
mod unsampled;
pub mod unwind;

use std::time::Instant;

use tracer_common::SampleHeader;

use self::{
    sample::{Sample, SampleError},
    symbols::{SymbolConfig, SymbolCounters, Symbols},
    types::StackSample,
    unwind::{UnwindConfig, UnwindCounters, Unwinder, UserFrame},
};

/// Settings of the profiler.
#[derive(Clone, Debug, Default)]
pub struct ProfilerConfig {
    /// Unwinding limits.
    pub unwind: UnwindConfig,
    /// Symbolization limits.
    pub symbols: SymbolConfig,
}

/// Counters of the whole profiling stage.
#[derive(Clone, Debug, Default)]
pub struct ProfileCounters {
    /// Sample records received.
    pub samples: u64,
    /// Records that were malformed (counted, not used).
    pub bad_samples: u64,
    /// Samples of kernel threads (kernel stack only).
    pub kernel_threads: u64,
    /// Samples of user threads whose registers were unusable (no user
    /// frames; kernel frames kept).
    pub no_user_regs: u64,
    /// Samples whose user stack copy was empty (the stack pointer was not
    /// readable): unwound from the registers alone.
    pub no_user_stack: u64,
    /// Samples whose stack copy stopped early at a fault.
    pub stack_short: u64,
    /// User stacks unwound to their root.
    pub unwound_to_root: u64,
    /// User stacks not unwound to their root (marked truncated).
    pub truncated: u64,
    /// Stacks produced.
    pub stacks: u64,
    /// Frames produced (kernel and user, inlined functions included).
    pub frames: u64,
    /// Wall time in [`Profiler::on_sample`], ns.
    pub total_ns: u64,
}

/// One record in, one symbolized stack out.
///
/// Not `Send` (blazesym's symbolizer uses `Rc` inside): create it on the
/// thread that feeds it, e.g. inside a `std::thread::spawn` closure fed
/// raw records through a bounded channel, or on the pipeline's thread.
pub struct Profiler {
    unwinder: Unwinder,
    symbols: Symbols,
    counters: ProfileCounters,
    user_frames: Vec<UserFrame>,
}

impl Profiler {
    /// A profiler with empty caches.
    pub fn new(cfg: ProfilerConfig) -> Profiler {
        Profiler {
            unwinder: Unwinder::new(cfg.unwind),
            symbols: Symbols::new(cfg.symbols),
            counters: ProfileCounters::default(),
            user_frames: Vec::new(),
        }
    }

    /// Unwinds and symbolizes one `Record::Sample(hdr, stack)`. None only
    /// for malformed records (counted in `bad_samples`); every other
    /// sample gives a stack, truncated or not, with unresolved frames as
    /// module+offset.
    pub fn on_sample(&mut self, hdr: &SampleHeader, stack: &[u8]) -> Option<StackSample> {
        let t0 = Instant::now();
        self.counters.samples += 1;
        let s = match Sample::decode(hdr, stack) {
            Ok(s) => s,
            Err(SampleError::BadLength | SampleError::Idle) => {
                self.counters.bad_samples += 1;
                return None;
            }
        };
        let mut frames = Vec::with_capacity(s.kernel_ips.len() + 32);
        self.symbols.kernel_frames(&s.kernel_ips, &mut frames);
        let mut truncated = false;
        if s.kernel_thread {
            self.counters.kernel_threads += 1;
        } else if s.user.is_none() {
            self.counters.no_user_regs += 1;
            truncated = true;
        } else {
            if s.stack.is_empty() {
                self.counters.no_user_stack += 1;
            }
            if s.stack_short {
                self.counters.stack_short += 1;
            }
            let mut user = std::mem::take(&mut self.user_frames);
            user.clear();
            let complete = self.unwinder.unwind(&s, &mut user);
            for f in &user {
                self.symbols.user_frames(s.pid, f, &mut frames);
            }
            self.user_frames = user;
            if complete {
                self.counters.unwound_to_root += 1;
            } else {
                self.counters.truncated += 1;
                truncated = true;
            }
        }
        for b in self.unwinder.take_evicted() {
            self.symbols.forget_binary(&b);
        }
        self.counters.stacks += 1;
        self.counters.frames += frames.len() as u64;
        self.counters.total_ns += t0.elapsed().as_nanos() as u64;
        Some(StackSample {
            pid: s.pid,
            tid: s.tid,
            ts_ns: s.ts_ns,
            frames,
            truncated,
        })
    }

    /// Loads what the first samples would otherwise wait for (the kernel
    /// symbol table): call before the event loop starts.
    pub fn warm_up(&mut self) {
        self.symbols.warm_up();
    }

    /// A process exited or started another program: drop its module list
    /// and perf map (resolved frames stay cached by binary).
    pub fn forget_process(&mut self, pid: u32) {
        self.unwinder.forget(pid);
        self.symbols.forget_process(pid);
    }

    /// Forgets processes that exited (not sampled since the previous
    /// sweep and gone from /proc): call every few seconds. Returns their
    /// pids.
    pub fn sweep(&mut self) -> Vec<u32> {
        let gone = self.unwinder.sweep();
        for &pid in &gone {
            self.symbols.forget_process(pid);
        }
        gone
    }

    /// Counters of the stage.
    pub fn counters(&self) -> &ProfileCounters {
        &self.counters
    }

    /// Counters of the unwinder.
    pub fn unwind_counters(&self) -> &UnwindCounters {
        self.unwinder.counters()
    }

    /// Counters of the symbolizer.
    pub fn symbol_counters(&self) -> &SymbolCounters {
        self.symbols.counters()
    }

    /// Sizes of the caches: (processes, binaries, user symbols).
    pub fn cache_sizes(&self) -> (usize, usize, usize) {
        (
            self.unwinder.processes(),
            self.unwinder.binaries(),
            self.symbols.cached(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use tracer_common::{Tag, MAX_KSTACK_FRAMES, STACK_COPY_DEFAULT};

    use super::*;

    fn header(pid: u32, ip: u64, sp: u64, bp: u64, stack_len: u32) -> SampleHeader {
        SampleHeader {
            tag: Tag::Sample as u8,
            flags: 0,
            kstack_len: 0,
            cpu: 0,
            pid,
            tid: pid,
            ts_ns: 1,
            ip,
            sp,
            bp,
            stack_len,
            _pad: 0,
            comm: [0; 16],
            kstack: [0; MAX_KSTACK_FRAMES],
        }
    }

    /// This thread's registers and the top of its stack, as the kernel
    /// would capture them, taken inside the innermost of three calls.
    #[inline(never)]
    fn capture() -> (SampleHeader, Vec<u8>) {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads three registers, touches no memory.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
            );
        }
        // What is above sp (the callers' frames) stays as it is while this
        // function runs; /proc/self/mem returns what is mapped.
        let mut stack = vec![0u8; STACK_COPY_DEFAULT as usize];
        let mem = std::fs::File::open("/proc/self/mem").unwrap();
        let mut n = 0;
        while n < stack.len() {
            match mem.read_at(&mut stack[n..], sp + n as u64) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        stack.truncate(n);
        (header(std::process::id(), ip, sp, bp, n as u32), stack)
    }

    #[inline(never)]
    fn profiled_inner() -> (SampleHeader, Vec<u8>) {
        let r = capture();
        std::hint::black_box(r)
    }

    #[inline(never)]
    fn profiled_outer() -> (SampleHeader, Vec<u8>) {
        let r = profiled_inner();
        std::hint::black_box(r)
    }

    /// Without a bound on DWARF (this test binary carries tens of MiB).
    fn with_all_dwarf() -> ProfilerConfig {
        let mut cfg = ProfilerConfig::default();
        cfg.symbols.max_dwarf_bytes = u64::MAX;
        cfg
    }

    #[test]
    fn unwinds_and_symbolizes_this_thread() {
        let (hdr, stack) = profiled_outer();
        let mut p = Profiler::new(with_all_dwarf());
        let s = p.on_sample(&hdr, &stack).unwrap();
        let names: Vec<&str> = s
            .frames
            .iter()
            .map(|f| f.function.as_deref().unwrap_or("?"))
            .collect();
        let pos = |n: &str| names.iter().position(|f| f.ends_with(n));
        let (c, i, o) = (
            pos("tests::capture"),
            pos("tests::profiled_inner"),
            pos("tests::profiled_outer"),
        );
        assert!(
            c.is_some() && c < i && i < o,
            "capture <- profiled_inner <- profiled_outer in {names:?}"
        );
        assert!(s.frames.iter().all(|f| !f.kernel));
        assert!(s.frames.iter().any(|f| f.line.is_some()), "DWARF lines");
        // The second time comes from the caches.
        let hits = p.symbol_counters().cache_hits;
        let again = p.on_sample(&hdr, &stack).unwrap();
        assert_eq!(again.frames, s.frames);
        assert!(p.symbol_counters().cache_hits > hits);
    }

    #[test]
    fn a_binary_whose_dwarf_is_over_the_bound_is_named_from_its_symbol_table() {
        let (hdr, stack) = profiled_outer();
        let mut cfg = ProfilerConfig::default();
        cfg.symbols.max_dwarf_bytes = 0;
        let mut p = Profiler::new(cfg);
        let s = p.on_sample(&hdr, &stack).unwrap();
        let names: Vec<&str> = s
            .frames
            .iter()
            .filter_map(|f| f.function.as_deref())
            .collect();
        assert!(
            names.iter().any(|f| f.ends_with("tests::profiled_outer")),
            "function names from .symtab in {names:?}"
        );
        let exe = std::env::current_exe().unwrap();
        let exe = exe.file_name().unwrap().to_str().unwrap();
        let own: Vec<_> = s.frames.iter().filter(|f| &*f.module == exe).collect();
        assert!(!own.is_empty(), "frames of {exe}");
        assert!(own.iter().all(|f| f.line.is_none()), "no DWARF read");
        assert!(p.symbol_counters().dwarf_skipped >= 1);
    }

    #[test]
    fn garbage_samples_never_panic() {
        // Real binaries (this process's maps) with random registers and
        // stacks, some words pointing into real code.
        let (hdr, real) = profiled_outer();
        let pid = hdr.pid;
        let mut p = Profiler::new(ProfilerConfig::default());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let text = [hdr.ip, hdr.ip + 0x1000, hdr.ip - 0x1000];
        for i in 0..5000 {
            let mut stack: Vec<u8> = real.clone();
            for _ in 0..(rnd() % 64) {
                let at = (rnd() as usize % stack.len().max(8)) & !7;
                let v = match rnd() % 4 {
                    0 => text[(rnd() % 3) as usize].wrapping_add(rnd() % 64),
                    1 => hdr.sp.wrapping_add(rnd() % 0x4000),
                    2 => 0,
                    _ => rnd(),
                };
                if at + 8 <= stack.len() {
                    stack[at..at + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
            stack.truncate(rnd() as usize % (stack.len() + 1));
            let ip = match i % 3 {
                0 => text[(rnd() % 3) as usize],
                1 => rnd() & 0x7fff_ffff_ffff,
                _ => rnd(),
            };
            let mut h = header(pid, ip, hdr.sp, rnd(), stack.len() as u32);
            h.kstack_len = (rnd() % 70) as u16;
            for k in h.kstack.iter_mut() {
                *k = rnd() | 0xffff_8000_0000_0000;
            }
            h.flags = (rnd() % 4) as u8;
            if let Some(s) = p.on_sample(&h, &stack) {
                assert!(s.frames.len() <= 64 + 256 * 8);
                assert!(s.frames.iter().all(|f| !f.module.is_empty()));
            }
        }
        let c = p.counters();
        assert_eq!(c.samples, 5000);
        assert_eq!(c.samples, c.stacks + c.bad_samples);
    }

    #[test]
    fn exited_processes_are_swept_and_their_frames_stay_resolvable() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        // A sample of the child with an ip in its first executable
        // mapping and no stack.
        let mut found = None;
        for _ in 0..200 {
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            found = unwind::parse_maps(&maps)
                .into_iter()
                .find(|m| m.exec && m.path.ends_with("/sleep"));
            if found.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let m = found.expect("sleep's executable mapping");
        let hdr = header(pid, m.start + 0x10, 0x7ff0_0000_0000, 0, 0);
        let mut p = Profiler::new(ProfilerConfig::default());
        let before = p.on_sample(&hdr, &[]).unwrap();
        assert!(before.truncated);
        assert!(before.frames[0]
            .module
            .starts_with(m.path.rsplit('/').next().unwrap()));
        child.kill().unwrap();
        child.wait().unwrap();
        // Not swept while sampled since the previous sweep; samples after
        // the exit still resolve.
        assert!(p.sweep().is_empty());
        let after = p.on_sample(&hdr, &[]).unwrap();
        assert_eq!(after.frames, before.frames);
        assert!(p.sweep().is_empty());
        assert_eq!(p.cache_sizes().0, 1);
        assert_eq!(p.sweep(), vec![pid]);
        assert_eq!(p.cache_sizes().0, 0);
    }
}
