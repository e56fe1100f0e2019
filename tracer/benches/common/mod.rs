//! What the benchmarks share: an allocator that counts, the recording of
//! real traffic and the spans a replay of it makes, resources like the
//! agent's, thread CPU time and peak RSS.
// Each benchmark uses a part.
#![allow(dead_code)]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::HashMap,
    io::Read,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use correlate::{AttrValue, Span};
use tracer::{
    export::resource::Resource,
    replay::{records, Replay},
};

/// The system allocator, counting allocations and bytes.
pub struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(n as u64, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

/// (allocations, bytes allocated) so far.
pub fn allocated() -> (u64, u64) {
    (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    )
}

/// tests/data/chain.rec.gz, decompressed.
pub fn recording() -> Vec<u8> {
    // REPLAY_RECORDING=grpc.rec.gz replays the HTTP/2 recording instead.
    let name = std::env::var("REPLAY_RECORDING").unwrap_or_else(|_| "chain.rec.gz".into());
    let path = format!("{}/../tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path).expect("a recording in tests/data"))
        .read_to_end(&mut data)
        .expect("decompressing the recording");
    data
}

/// The spans a replay of the recording makes, each with its process's
/// resource (one per pid, shared); and how many processes.
pub fn spans_with_resources() -> (Vec<Span>, Vec<Arc<Resource>>, usize) {
    let data = recording();
    let mut spans: Vec<Span> = Vec::new();
    let mut replay = Replay::new();
    for r in records(&data) {
        replay.record(r, &mut |s| spans.push(s));
    }
    replay.finish(&mut |s| spans.push(s));
    assert!(!spans.is_empty(), "the recording made no spans");
    let mut resources: HashMap<u32, Arc<Resource>> = HashMap::new();
    let res = spans
        .iter()
        .map(|s| {
            resources
                .entry(s.pid.0)
                .or_insert_with(|| resource(s.pid.0))
                .clone()
        })
        .collect();
    (spans, res, resources.len())
}

/// A resource like the agent's for a traced process.
pub fn resource(pid: u32) -> Arc<Resource> {
    let s = |k: &str, v: &str| (k.to_string(), AttrValue::Str(v.to_string()));
    Arc::new(Resource::new([
        s("host.name", "bench-host-01"),
        s("service.name", &format!("svc-{pid}")),
        ("process.pid".to_string(), AttrValue::Int(i64::from(pid))),
        s("process.executable.name", "python3.11"),
        s(
            "process.executable.path",
            "/usr/lib/python3.11/bin/python3.11",
        ),
        s(
            "process.command_line",
            "python3 tests/py/service.py --port 8080 --name svc",
        ),
        s("telemetry.sdk.name", "tracer"),
        s("telemetry.sdk.language", "rust"),
        s("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
        s("telemetry.distro.name", "tracer"),
    ]))
}

/// `--NAME=N` from the command line, else `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let prefix = format!("--{name}=");
    std::env::args()
        .skip(1)
        .find_map(|a| a.strip_prefix(&prefix).and_then(|n| n.parse().ok()))
        .unwrap_or(default)
}

/// CPU time of the calling thread, ns.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// This process's peak RSS, as /proc says it (e.g. "12800 kB").
pub fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}
