//! Replays recorded kernel records of real traffic (tests/data/chain.rec.gz,
//! made by bench/record_chain.sh) through the agent's own dispatcher
//! (connection table, stream reassembly, HTTP/1 parser, correlator) up to
//! OTLP protobuf request bodies, as the exporter builds them (not sent), and
//! prints spans/s on one core, allocations per span and peak RSS.
//!
//!     cargo bench -p tracer --bench replay
use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::Read,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use tracer::replay::{records, Replay};

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

fn main() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/chain.rec.gz");
    let mut data = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("tests/data/chain.rec.gz"))
        .read_to_end(&mut data)
        .expect("decompressing the recording");
    let recs: Vec<&[u8]> = records(&data).collect();
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.strip_prefix("--rounds=").and_then(|n| n.parse().ok()))
        .unwrap_or(30);

    // Warm-up round, then timed rounds (a fresh pipeline each: the same
    // recording replayed into one would reuse its connections).
    let mut sink = |_s: correlate::Span| {};
    let warm = {
        let mut r = Replay::encoding();
        recs.iter().for_each(|b| r.record(b, &mut sink));
        r.finish(&mut sink)
    };
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let start = Instant::now();
    let mut spans = 0;
    let mut messages = 0;
    let mut requests = 0;
    let mut request_bytes = 0;
    for _ in 0..rounds {
        let mut r = Replay::encoding();
        recs.iter().for_each(|b| r.record(b, &mut sink));
        let stats = r.finish(&mut sink);
        spans += stats.spans;
        messages += stats.messages;
        requests += stats.requests;
        request_bytes += stats.request_bytes;
    }
    let secs = start.elapsed().as_secs_f64();
    let allocs = ALLOCS.load(Ordering::Relaxed) - a0;
    let bytes = BYTES.load(Ordering::Relaxed) - b0;
    println!(
        "recording: {} records, {} messages, {} spans per round ({} bad records)",
        warm.records, warm.messages, warm.spans, warm.bad_records
    );
    println!("rounds: {rounds}, {spans} spans in {secs:.3} s on one core");
    println!("spans/s per core:    {:>12.0}", spans as f64 / secs);
    println!(
        "records/s per core:  {:>12.0}",
        (recs.len() * rounds) as f64 / secs
    );
    println!("messages/s per core: {:>12.0}", messages as f64 / secs);
    println!(
        "OTLP requests: {requests} ({:.0} protobuf bytes per span)",
        request_bytes as f64 / spans.max(1) as f64
    );
    println!(
        "allocations per span: {:.1} ({:.0} bytes)",
        allocs as f64 / spans as f64,
        bytes as f64 / spans as f64
    );
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l[6..].trim().to_string())
        })
        .unwrap_or_default();
    println!("peak RSS of this process (recording included): {hwm}");
    println!("target: >= 500000 spans/s per core (goal 1000000), <= 5 allocations per span");
    println!(
        "(each round is a fresh pipeline, as at an agent's start: its per-connection \
         state is allocated, not reused from warm pools)"
    );
}
