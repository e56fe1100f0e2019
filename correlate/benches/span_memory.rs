//! Peak heap of the correlator against its span-record bound
//! (`max_span_bytes`), measured by a counting allocator on simulated
//! loopback traffic faster than the window lets spans go (the bound is
//! hit; spans are forced out, counted as `span_overflow`). Variants change
//! one thing each, to show where the heap past the bound goes.
//!
//!   cargo bench -p correlate --bench span_memory
#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
};

use common::*;
use correlate::{Config, Correlator};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = LIVE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only
// the sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grew(l.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Relaxed);
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Relaxed);
            grew(new);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// 200k exchanges at 100k a second over 64 loopback connections, both
/// ends seen, with a browser-ish client's headers (`request_id`: with an
/// `x-request-id`).
fn traffic(request_id: bool) -> Vec<Ev> {
    let mut sim = Sim::new(3);
    let mut conns: Vec<Conn> = (0..64)
        .map(|i| sim.connect("127.0.0.1", &format!("127.0.0.1:{}", 2000 + i), Seen::Both))
        .collect();
    let mut headers = vec![
        ("host", "shop.internal:8080"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        ),
        ("accept", "text/html,application/xhtml+xml"),
    ];
    if request_id {
        headers.push(("x-request-id", "9f2c4e1a-77b0-4c2e-9d1e-3b5a0c6f8e21"));
    }
    for i in 0..200_000u64 {
        let t = MS + i * 10 * US;
        let c = &mut conns[(i % 64) as usize];
        let tid = (i % 8) as u32;
        let (client, server) = (at(t, 10, 10 + tid), at(t + US, 20, 20 + tid));
        let path = format!("/catalog/item/{i}?view=full");
        sim.request(c, client, server, &req("GET", &path, &headers));
        let ok = resp(200, &[("content-type", "text/html")]);
        sim.response(
            c,
            at(t + 300 * US, 20, 20 + tid),
            at(t + 301 * US, 10, 10 + tid),
            &ok,
        );
    }
    sim.sorted()
}

fn measure(name: &str, events: &[Ev], cfg: Config) {
    let bound = cfg.max_span_bytes;
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let mut corr = Correlator::with_seed(cfg, 1);
    let (mut emitted, mut counted) = (0, 0);
    // The estimate by structure when its total was largest.
    let mut largest = (0, Vec::new());
    for (n, e) in events.iter().enumerate() {
        e.apply(&mut corr);
        if n % 512 == 0 {
            let spans = corr.poll(e.time());
            emitted += spans.len();
            corr.recycle(spans);
            counted = counted.max(corr.span_bytes());
            let parts = corr.heap_estimate();
            let total: usize = parts.iter().map(|p| p.1).sum();
            if total > largest.0 {
                largest = (total, parts);
            }
        }
    }
    let peak = PEAK.load(Relaxed) - base;
    println!(
        "{name:<44} peak heap {:>5.1} MiB = {:.2}x the bound; most counted {:.1} MiB; {emitted} spans, {} forced out",
        peak as f64 / f64::from(1 << 20),
        peak as f64 / bound as f64,
        counted as f64 / f64::from(1 << 20),
        corr.counters().span_overflow
    );
    drop(corr);
    let parts: Vec<String> = largest
        .1
        .iter()
        .map(|(name, b)| format!("{name} {:.2}", *b as f64 / f64::from(1 << 20)))
        .collect();
    println!(
        "  estimated at its largest {:.1} MiB: {}",
        largest.0 as f64 / f64::from(1 << 20),
        parts.join(", ")
    );
}

fn main() {
    let base = Config {
        max_span_bytes: 8 << 20,
        ..Config::default()
    };
    println!("bound (max_span_bytes) {} MiB", base.max_span_bytes >> 20);
    let with_id = traffic(true);
    measure("default", &with_id, base.clone());
    measure(
        "thread entries kept 0.3 s (the retention), not 1 s",
        &with_id,
        Config {
            sample_window_ns: base.window_ns,
            ..base.clone()
        },
    );
    measure(
        "window fixed at 150 ms",
        &with_id,
        Config {
            min_window_ns: base.window_ns,
            ..base.clone()
        },
    );
    drop(with_id);
    measure("no x-request-id", &traffic(false), base.clone());
}
