//! CPU sampling for real: loads the programs with profiling on, samples a
//! process for ~2 s, unwinds and symbolizes its stacks, and checks the call
//! chain by name:
//! - a C program built with frame pointers and one without (the latter can
//!   only be unwound with .eh_frame),
//! - python3 hashing with PBKDF2, which runs in libcrypto (Debian builds it
//!   without frame pointers) under python3's own frames.
//!
//! Needs root; skips only when not root and not in CI (`CI=true`).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use tracer::{
    btf::Btf,
    kernel::{Kernel, KernelConfig, KernelLayout},
    preflight::cgroup2_root,
    profile::{types::StackSample, Profiler, ProfilerConfig},
    sources::{Offers, Tracefs},
};
use tracer_common::{Record, PROFILE_HZ_DEFAULT, STACK_COPY_DEFAULT};

/// One test at a time: both burn a CPU and load the programs.
static SERIAL: Mutex<()> = Mutex::new(());

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// False (after a SKIP line) when the test cannot run here.
fn can_run(name: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{name}: must run as root in CI");
    }
    eprintln!("SKIP {name}: needs root (and not in CI)");
    false
}

/// Kills the child when the test ends, passing or not.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch directory, removed when the test ends, passing or not.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tracer-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load() -> Kernel {
    load_with(Some(PROFILE_HZ_DEFAULT))
}

fn load_with(profile_hz: Option<u32>) -> Kernel {
    load_cfg(profile_hz, STACK_COPY_DEFAULT)
}

fn load_cfg(profile_hz: Option<u32>, stack_copy: u32) -> Kernel {
    let btf = Btf::from_sys()
        .expect("reading /sys/kernel/btf/vmlinux")
        .expect("parsing BTF");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let cgroup = cgroup2_root(&mounts).expect("a cgroup v2 mount");
    let cfg = KernelConfig {
        snap_len: 0,
        enabled: true,
        ring_bytes: 1 << 20,
        wakeup_bytes: 1 << 20,
        profile_hz,
        stack_copy,
        head_max: tracer_common::HEAD_MAX_DEFAULT,
        capture_source: None,
        tls_snap: 0,
        runtime_hooks: false,
        go_ancestry: false,
    };
    let layout = KernelLayout::from_btf(&btf).expect("kernel layout");
    let calls = Offers::detect(&btf, &Tracefs::read())
        .candidates(None)
        .expect("a source of calls");
    let kernel = Kernel::load(&cfg, &layout, &calls, &cgroup).expect("loading the programs");
    assert_eq!(profile_hz.is_some(), !kernel.profiling_cpus().is_empty());
    kernel
}

/// Samples `pid` for `secs`, unwinding and symbolizing while it runs (as
/// the agent does: /proc/PID/maps must still be there).
fn profile(kernel: &mut Kernel, pid: u32, secs: f64) -> Profiled {
    let mut ring = kernel.take_events().unwrap();
    let mut profiler = Profiler::new(ProfilerConfig::default());
    let mut stacks = Vec::new();
    let mut costs_ns = Vec::new();
    let mut raw = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        ring.drain_all(&mut |item: &[u8]| {
            if let Ok(Record::Sample(hdr, stack)) = Record::parse(item) {
                if hdr.pid == pid {
                    let t0 = Instant::now();
                    let s = profiler.on_sample(&hdr, stack);
                    costs_ns.push(t0.elapsed().as_nanos() as u64);
                    stacks.extend(s);
                    raw.push(item.to_vec());
                }
            }
        });
        std::thread::sleep(Duration::from_millis(10));
    }
    // The same records again, with every cache warm: the steady-state cost.
    let t0 = Instant::now();
    let mut frames = 0;
    for item in &raw {
        if let Ok(Record::Sample(hdr, stack)) = Record::parse(item) {
            frames += profiler
                .on_sample(&hdr, stack)
                .map_or(0, |s| s.frames.len());
        }
    }
    let warm = t0.elapsed();
    Profiled {
        stacks,
        profiler,
        costs_ns,
        warm_replay: (raw.len(), frames, warm),
    }
}

struct Profiled {
    stacks: Vec<StackSample>,
    profiler: Profiler,
    /// Time of each `on_sample` call.
    costs_ns: Vec<u64>,
    /// Samples, frames and time of a second pass over the same records.
    warm_replay: (usize, usize, Duration),
}

fn names(s: &StackSample) -> Vec<&str> {
    s.frames
        .iter()
        .filter(|f| !f.kernel)
        .map(|f| f.function.as_deref().unwrap_or("?"))
        .collect()
}

fn report(what: &str, r: &Profiled, matched: usize) {
    let (stacks, p) = (&r.stacks, &r.profiler);
    let root = stacks.iter().filter(|s| !s.truncated).count();
    let n = stacks.len().max(1);
    let c = p.counters();
    // Warm: after the first 20 samples (binaries read, symbols cached).
    let mut warm: Vec<u64> = r.costs_ns.iter().skip(20).copied().collect();
    warm.sort_unstable();
    let pct = |q: f64| {
        warm.get(((warm.len() as f64 * q) as usize).min(warm.len().saturating_sub(1)))
            .map_or(0.0, |&ns| ns as f64 / 1000.0)
    };
    let (ws, wf, wt) = r.warm_replay;
    eprintln!(
        "{what}: {} samples, chain found in {matched} ({:.0}%), unwound to root {root} ({:.0}%); \
         live cost: total {:.1} ms, after 20 samples median {:.1} us, p99 {:.1} us; \
         warm replay: {:.1} us/sample, {:.0} frames/s; caches {:?}\n  \
         {c:?}\n  {:?}\n  {:?}",
        stacks.len(),
        100.0 * matched as f64 / n as f64,
        100.0 * root as f64 / n as f64,
        c.total_ns as f64 / 1e6,
        pct(0.5),
        pct(0.99),
        wt.as_secs_f64() * 1e6 / ws.max(1) as f64,
        wf as f64 / wt.as_secs_f64().max(1e-9),
        p.cache_sizes(),
        p.unwind_counters(),
        p.symbol_counters(),
    );
    for s in stacks.iter().rev().take(2) {
        let frames: Vec<String> = s
            .frames
            .iter()
            .map(|f| match &f.function {
                Some(n) => format!("{n} ({})", f.module),
                None => format!("{}+{:#x}", f.module, f.offset),
            })
            .collect();
        eprintln!("  e.g. truncated={} {frames:?}", s.truncated);
    }
}

/// Samples expected at least in 2 s of a CPU-bound process (~200 at
/// 99 Hz when it has a CPU to itself).
const MIN_SAMPLES: usize = 50;

/// Debian's interpreter (no frame pointers, no debug info), not a pyenv
/// shim that may come first on PATH.
fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

const SPIN_C: &str = r#"
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
volatile uint64_t sink;
__attribute__((noinline)) void spin(void) {
    uint64_t x = sink;
    for (long i = 0; i < 2000000; i++) x = x * 6364136223846793005ULL + (uint64_t)i;
    sink = x;
}
/* The statements after each call keep gcc from turning it into a jump. */
__attribute__((noinline)) void level2(void) { spin(); sink++; }
__attribute__((noinline)) void level1(void) { level2(); sink++; }
int main(int argc, char **argv) {
    time_t end = time(NULL) + (argc > 1 ? atoi(argv[1]) : 5);
    while (time(NULL) < end) { level1(); sink++; }
    return 0;
}
"#;

fn compile(dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let src = dir.join("spin.c");
    std::fs::write(&src, SPIN_C).unwrap();
    let out = dir.join(name);
    let status = Command::new("gcc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("running gcc");
    assert!(status.success(), "gcc {flags:?} failed");
    out
}

fn c_chain(name: &str, flags: &[&str]) {
    if !can_run(name) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new(name);
    let bin = compile(&dir.0, name, flags);
    let mut kernel = load();
    let child = Reap(
        Command::new(&bin)
            .arg("6")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let r = profile(&mut kernel, pid, 2.0);
    drop(child);
    let stacks = &r.stacks;
    let want = ["spin", "level2", "level1", "main"];
    let matched = stacks
        .iter()
        .filter(|s| names(s).windows(4).any(|w| w == want))
        .count();
    report(name, &r, matched);
    // 2 s at 99 Hz of a CPU-bound process: ~200 samples (fewer when other
    // tests compete for the CPUs).
    assert!(stacks.len() >= MIN_SAMPLES, "only {} samples", stacks.len());
    assert!(
        matched * 10 >= stacks.len() * 8,
        "chain spin <- level2 <- level1 <- main in {matched} of {} samples",
        stacks.len()
    );
}

#[test]
fn c_program_with_frame_pointers_shows_its_chain() {
    c_chain("spin_fp", &["-O2", "-fno-omit-frame-pointer"]);
}

#[test]
fn c_program_without_frame_pointers_unwinds_with_eh_frame() {
    c_chain("spin_nofp", &["-O2", "-fomit-frame-pointer"]);
}

#[test]
fn python_pbkdf2_unwinds_through_libcrypto_into_python() {
    let name = "python_pbkdf2";
    if !can_run(name) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut kernel = load();
    let child = Reap(
        Command::new(python3())
            .args([
                "-c",
                "import hashlib\nwhile True: hashlib.pbkdf2_hmac('sha256', b'x', b'y', 3000000)",
            ])
            .spawn()
            .expect("python3"),
    );
    let pid = child.0.id();
    // Let the interpreter start and load libcrypto.
    std::thread::sleep(Duration::from_millis(300));
    let r = profile(&mut kernel, pid, 2.0);
    drop(child);
    let stacks = &r.stacks;
    let in_python = |f: &&str| {
        f.starts_with("_PyEval_EvalFrameDefault")
            || f.starts_with("PyEval")
            || *f == "main"
            || *f == "Py_RunMain"
    };
    let matched = stacks
        .iter()
        .filter(|s| {
            let n = names(s);
            let pbkdf2 = n.iter().position(|f| *f == "PKCS5_PBKDF2_HMAC");
            pbkdf2.is_some_and(|i| i > 0 && n[i..].iter().any(in_python))
        })
        .count();
    report(name, &r, matched);
    assert!(stacks.len() >= MIN_SAMPLES, "only {} samples", stacks.len());
    assert!(
        matched * 10 >= stacks.len() * 7,
        "PKCS5_PBKDF2_HMAC above the leaf and python frames in {matched} of {} samples",
        stacks.len()
    );
}

#[test]
fn syscall_heavy_process_has_kernel_frames_over_its_user_stack() {
    let name = "dd_kernel_and_user";
    if !can_run(name) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut kernel = load();
    // Nearly all of dd's time is in read(2) of /dev/urandom: the ticks
    // interrupt the kernel, and the user stack must still come from the
    // registers saved at syscall entry.
    let child = Reap(
        Command::new("dd")
            .args(["if=/dev/urandom", "of=/dev/null", "bs=64k", "count=1000000"])
            .stderr(Stdio::null())
            .spawn()
            .expect("dd"),
    );
    let pid = child.0.id();
    let r = profile(&mut kernel, pid, 2.0);
    drop(child);
    let stacks = &r.stacks;
    let matched = stacks
        .iter()
        .filter(|s| {
            // dd is stripped: its own frames are module+offset; libc's
            // read wrapper and start-up code have names.
            let k = s.frames.iter().take_while(|f| f.kernel).count();
            let user = names(s);
            k > 0
                && s.frames[..k].iter().all(|f| f.function.is_some())
                && user.first().is_some_and(|f| f.contains("read"))
                && user.iter().any(|f| f.contains("libc_start_main"))
                && !s.truncated
        })
        .count();
    report(name, &r, matched);
    assert!(stacks.len() >= MIN_SAMPLES, "only {} samples", stacks.len());
    assert!(
        matched * 10 >= stacks.len() * 7,
        "named kernel frames over a complete user stack from read() in {matched} of {} samples",
        stacks.len()
    );
}

#[test]
fn node_jit_frames_resolve_from_its_perf_map() {
    let name = "node_perf_map";
    if !can_run(name) {
        return;
    }
    if Command::new("node").arg("--version").output().is_err() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name}: node is missing");
        }
        eprintln!("SKIP {name}: no node");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut kernel = load();
    // --perf-basic-prof also makes V8 write isolate-*-v8.log files into
    // the working directory.
    let dir = TempDir::new(name);
    let child = Reap(
        Command::new("node")
            .current_dir(&dir.0)
            .args([
                "--perf-basic-prof",
                "-e",
                "function hotLoop(n){let x=0;for(let i=0;i<n;i++){x=(x*31+i)|0;}return x;}\n\
                 let s=0;const end=Date.now()+6000;while(Date.now()<end){s+=hotLoop(1e6);}",
            ])
            .spawn()
            .expect("node"),
    );
    let pid = child.0.id();
    // Let V8 optimize the loop (and write the map).
    std::thread::sleep(Duration::from_millis(500));
    let r = profile(&mut kernel, pid, 2.0);
    drop(child);
    let _ = std::fs::remove_file(format!("/tmp/perf-{pid}.map"));
    let stacks = &r.stacks;
    let matched = stacks
        .iter()
        .filter(|s| {
            s.frames.iter().any(|f| {
                &*f.module == "[jit]"
                    && f.function.as_deref().is_some_and(|n| n.contains("hotLoop"))
            })
        })
        .count();
    report(name, &r, matched);
    assert!(stacks.len() >= MIN_SAMPLES, "only {} samples", stacks.len());
    assert!(
        matched * 10 >= stacks.len() * 7,
        "hotLoop from the perf map in {matched} of {} samples",
        stacks.len()
    );
}

#[test]
fn profiling_off_attaches_nothing_and_samples_nothing() {
    let name = "profiling_off";
    if !can_run(name) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut off = load_with(None);
    assert!(off.profiling_cpus().is_empty());
    let on = load_with(Some(PROFILE_HZ_DEFAULT));
    // The sampling program is not even loaded into the kernel when off.
    assert_eq!(off.program_ids().len() + 1, on.program_ids().len());
    drop(on);
    let child = Reap(
        Command::new(python3())
            .args(["-c", "while True: pass"])
            .spawn()
            .expect("python3"),
    );
    let mut ring = off.take_events().unwrap();
    let end = Instant::now() + Duration::from_millis(700);
    let mut samples = 0;
    while Instant::now() < end {
        ring.drain_all(&mut |item: &[u8]| {
            if matches!(Record::parse(item), Ok(Record::Sample(..))) {
                samples += 1;
            }
        });
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(child);
    assert_eq!(samples, 0);
}

#[test]
fn every_stack_copy_size_passes_the_verifier_and_is_honoured() {
    let name = "stack_copy_sizes";
    if !can_run(name) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The size is a constant to the verifier (read-only global), so each
    // value is its own verification.
    let child = Reap(
        Command::new(python3())
            .args(["-c", "while True: pass"])
            .spawn()
            .expect("python3"),
    );
    let pid = child.0.id();
    // Let the interpreter start before the first round.
    std::thread::sleep(Duration::from_millis(300));
    for size in [0u32, 100, 4096, 5000, 32768, 1 << 20] {
        let mut kernel = load_cfg(Some(999), size);
        let mut ring = kernel.take_events().unwrap();
        let start = Instant::now();
        let (mut n, mut max) = (0, 0);
        // 400 ms of samples; on a loaded machine, up to 5 s for the first.
        while start.elapsed() < Duration::from_millis(400)
            || (n == 0 && start.elapsed() < Duration::from_secs(5))
        {
            ring.drain_all(&mut |item: &[u8]| {
                if let Ok(Record::Sample(hdr, _)) = Record::parse(item) {
                    if hdr.pid == pid {
                        n += 1;
                        max = max.max(hdr.stack_len);
                    }
                }
            });
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("stack_copy {size}: {n} samples, largest copy {max} bytes");
        assert!(n > 0, "no samples with stack_copy {size}");
        assert!(max <= size.min(tracer_common::MAX_STACK_COPY as u32));
        if size > 0 {
            assert!(max > 0, "nothing copied with stack_copy {size}");
        }
    }
}
