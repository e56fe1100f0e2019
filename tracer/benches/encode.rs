//! OTLP encoding alone: the spans of a replay of recorded traffic
//! (tests/data/chain.rec.gz) encoded into `ExportTraceServiceRequest`
//! bodies by the agent's `TraceEncoder`, with resources like the agent's.
//! Prints spans/s on one core, ns and allocations per span, bytes per span.
//!
//! Then, to choose where encoding runs, the pipeline thread's cost per span
//! of the two designs, measured in thread CPU time: encode in place (then
//! free the span), or hand the span over a channel to an export thread
//! that encodes and frees it.
//!
//!     cargo bench -p tracer --bench encode [-- --rounds=N]
use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::HashMap,
    io::Read,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use correlate::{AttrValue, Span};
use tracer::{
    clock::Clock,
    export::{
        encode::{BatchLimits, TraceEncoder},
        resource::Resource,
    },
    replay::{records, Replay},
};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(l) }
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

#[global_allocator]
static GLOBAL: Counting = Counting;

/// CPU time of the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A resource like the agent's for a traced process.
fn resource(pid: u32) -> Arc<Resource> {
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

fn main() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/chain.rec.gz");
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("tests/data/chain.rec.gz"))
        .read_to_end(&mut data)
        .expect("decompressing the recording");
    let mut spans: Vec<Span> = Vec::new();
    let mut replay = Replay::new();
    for r in records(&data) {
        replay.record(r, &mut |s| spans.push(s));
    }
    replay.finish(&mut |s| spans.push(s));
    assert!(!spans.is_empty(), "the recording made no spans");
    let mut resources: HashMap<u32, Arc<Resource>> = HashMap::new();
    let res: Vec<Arc<Resource>> = spans
        .iter()
        .map(|s| {
            resources
                .entry(s.pid.0)
                .or_insert_with(|| resource(s.pid.0))
                .clone()
        })
        .collect();
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.strip_prefix("--rounds=").and_then(|n| n.parse().ok()))
        .unwrap_or(2_000_000 / spans.len() + 1);

    let clock = Clock::new();
    let mut enc = TraceEncoder::new(clock, BatchLimits::default());
    let mut requests = 0u64;
    let mut body_bytes = 0u64;
    let run = |enc: &mut TraceEncoder, requests: &mut u64, body_bytes: &mut u64| {
        for (s, r) in spans.iter().zip(&res) {
            let _ = enc.push(s, r);
            if let Some(req) = enc.take() {
                *requests += 1;
                *body_bytes += req.body.len() as u64;
                enc.recycle(req.body);
            }
        }
    };
    // Warm-up: buffers reach their size.
    run(&mut enc, &mut 0, &mut 0);
    let a0 = ALLOCS.load(Ordering::Relaxed);
    let b0 = BYTES.load(Ordering::Relaxed);
    let start = Instant::now();
    let cpu0 = thread_cpu_ns();
    for _ in 0..rounds {
        run(&mut enc, &mut requests, &mut body_bytes);
    }
    let cpu = thread_cpu_ns() - cpu0;
    let secs = start.elapsed().as_secs_f64();
    let allocs = ALLOCS.load(Ordering::Relaxed) - a0;
    let bytes = BYTES.load(Ordering::Relaxed) - b0;
    let n = (spans.len() * rounds) as f64;
    println!(
        "spans: {} per round from the recording ({} processes), {rounds} rounds",
        spans.len(),
        resources.len()
    );
    println!(
        "encoding: {n:.0} spans in {secs:.3} s wall, {:.3} s CPU of this thread",
        cpu as f64 / 1e9
    );
    println!("spans/s per core:      {:>12.0}", n / (cpu as f64 / 1e9));
    println!("ns per span (CPU):     {:>12.1}", cpu as f64 / n);
    println!(
        "allocations per span:  {:>12.4} ({:.1} bytes)",
        allocs as f64 / n,
        bytes as f64 / n
    );
    println!(
        "bytes per span:        {:>12.1} ({requests} requests of {:.0} KiB on average)",
        body_bytes as f64 / n,
        body_bytes as f64 / requests.max(1) as f64 / 1024.0
    );

    // What gzip (--otlp-compression gzip, done on the export thread) adds.
    let mut bodies = Vec::new();
    for (s, r) in spans.iter().zip(&res).cycle().take(spans.len().max(20_000)) {
        let _ = enc.push(s, r);
    }
    enc.flush();
    while let Some(req) = enc.take() {
        bodies.push(req);
    }
    let (mut plain, mut packed, mut zspans) = (0usize, 0usize, 0u64);
    let cpu0 = thread_cpu_ns();
    for req in &bodies {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut z, &req.body).expect("gzip");
        packed += z.finish().expect("gzip").len();
        plain += req.body.len();
        zspans += req.spans;
    }
    let zcpu = thread_cpu_ns() - cpu0;
    println!(
        "gzip (fast): {:.1} ns per span, {:.0} MB/s, {:.1}x smaller ({zspans} spans)",
        zcpu as f64 / zspans as f64,
        plain as f64 / (zcpu as f64 / 1e9) / 1e6,
        plain as f64 / packed.max(1) as f64
    );

    // Where to encode: the same spans, owned (as the pipeline has them),
    // either encoded and freed on this thread, or sent to another thread
    // that does it.
    let batch: Vec<Span> = (0..rounds.min(20))
        .flat_map(|_| spans.iter().cloned())
        .collect();
    let m = batch.len() as f64;
    let owned = batch.clone();
    let cpu0 = thread_cpu_ns();
    for (i, s) in owned.into_iter().enumerate() {
        let _ = enc.push(&s, &res[i % res.len()]);
        if let Some(req) = enc.take() {
            enc.recycle(req.body);
        }
        drop(s);
    }
    let here = thread_cpu_ns() - cpu0;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Span, Arc<Resource>)>();
    let worker = std::thread::spawn(move || {
        let mut enc = TraceEncoder::new(clock, BatchLimits::default());
        let cpu0 = thread_cpu_ns();
        while let Some((s, r)) = rx.blocking_recv() {
            let _ = enc.push(&s, &r);
            if let Some(req) = enc.take() {
                enc.recycle(req.body);
            }
        }
        thread_cpu_ns() - cpu0
    });
    let cpu0 = thread_cpu_ns();
    for (i, s) in batch.into_iter().enumerate() {
        let _ = tx.send((s, res[i % res.len()].clone()));
    }
    let sender = thread_cpu_ns() - cpu0;
    drop(tx);
    let receiver = worker.join().unwrap_or(0);
    println!("where to encode ({m:.0} owned spans, thread CPU per span):");
    println!(
        "  in place (encode + free):              {:>7.1} ns on the pipeline thread",
        here as f64 / m
    );
    println!(
        "  handed over a channel (send):          {:>7.1} ns on the pipeline thread \
         + {:.1} ns on the export thread (encode + free)",
        sender as f64 / m,
        receiver as f64 / m
    );
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l[6..].trim().to_string())
        })
        .unwrap_or_default();
    println!("peak RSS of this process (recording and span copies included): {hwm}");
    println!("target: > 1000000 spans/s per core, 0-1 allocations per span");
}
