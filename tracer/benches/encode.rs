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
use std::{sync::Arc, time::Instant};

use correlate::Span;
use tracer::{
    clock::Clock,
    export::{
        encode::{BatchLimits, TraceEncoder},
        resource::Resource,
    },
};

mod common;
use common::{allocated, arg, peak_rss, spans_with_resources, thread_cpu_ns, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let (spans, res, processes) = spans_with_resources();
    let rounds = arg("rounds", 2_000_000 / spans.len() as u64 + 1) as usize;

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
    let (a0, b0) = allocated();
    let start = Instant::now();
    let cpu0 = thread_cpu_ns();
    for _ in 0..rounds {
        run(&mut enc, &mut requests, &mut body_bytes);
    }
    let cpu = thread_cpu_ns() - cpu0;
    let secs = start.elapsed().as_secs_f64();
    let (a1, b1) = allocated();
    let (allocs, bytes) = (a1 - a0, b1 - b0);
    let n = (spans.len() * rounds) as f64;
    println!(
        "spans: {} per round from the recording ({} processes), {rounds} rounds",
        spans.len(),
        processes
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
    println!(
        "peak RSS of this process (recording and span copies included): {}",
        peak_rss()
    );
    println!("target: > 1000000 spans/s per core, 0-1 allocations per span");
}
