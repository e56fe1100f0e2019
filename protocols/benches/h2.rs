//! Parses the recorded HTTP/2 and gRPC corpus (tests/data/h2) in a loop
//! through `Http2Connection` and prints messages per second on one core
//! and heap allocations per message (steady state: parsers reused with
//! `reset`). `cargo bench -p protocols --bench h2`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use protocols::http2::{Http2Config, Http2Connection};
use protocols::stream::{Chunk, OpMeta, Piece};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/h2");
    let mut conns = Vec::new();
    for case in [
        "grpcio_50_concurrent",
        "grpcio_calls",
        "nghttp_50_streams",
        "nghttp_get",
    ] {
        let c2s = std::fs::read(dir.join(case).join("0.c2s.bin")).expect("corpus");
        let s2c = std::fs::read(dir.join(case).join("0.s2c.bin")).expect("corpus");
        conns.push((case, c2s, s2c));
    }
    let op = Some(OpMeta {
        pid: 1,
        tid: 1,
        ts_ns: 1,
    });
    for (case, c2s, s2c) in &conns {
        let mut conn = Http2Connection::new(Http2Config::default());
        let run = |conn: &mut Http2Connection| -> u64 {
            conn.reset();
            let mut n = 0u64;
            for (data, req) in [(c2s, true), (s2c, false)] {
                for (k, c) in data.chunks(16 * 1024).enumerate() {
                    let pieces = [Piece::Data(c)];
                    let chunk = Chunk {
                        seq: (k * 16 * 1024) as u32,
                        offset: (k * 16 * 1024) as u64,
                        len: c.len() as u32,
                        op,
                        seg_ts_ns: None,
                        pieces: &pieces,
                    };
                    if req {
                        conn.feed_requests(&chunk, &mut |m| n += u64::from(m.method().is_some()));
                    } else {
                        conn.feed_responses(&chunk, &mut |m| n += u64::from(m.status().is_some()));
                    }
                }
            }
            conn.flush(&mut |_| n += 1);
            n
        };
        for _ in 0..20 {
            run(&mut conn);
        }
        let a0 = ALLOCS.load(Ordering::Relaxed);
        let t0 = Instant::now();
        let mut msgs = 0u64;
        let mut iters = 0u64;
        while t0.elapsed().as_secs_f64() < 2.0 {
            msgs += run(&mut conn);
            iters += 1;
        }
        let secs = t0.elapsed().as_secs_f64();
        let allocs = ALLOCS.load(Ordering::Relaxed) - a0;
        let bytes = (c2s.len() + s2c.len()) as f64 * iters as f64;
        println!(
            "{case:<22} {:>10.0} messages/s  {:>7.1} MB/s  {:.3} allocations/message  ({msgs} messages, {iters} connections)",
            msgs as f64 / secs,
            bytes / secs / 1e6,
            allocs as f64 / msgs.max(1) as f64,
        );
    }
}
