//! Replays recorded kernel records of real traffic (tests/data/chain.rec.gz,
//! made by bench/record_chain.sh) through the agent's own dispatcher
//! (connection table, stream reassembly, HTTP/1 parser, correlator) up to
//! OTLP protobuf request bodies, as the exporter builds them (not sent), and
//! prints spans/s on one core, allocations per span and peak RSS.
//!
//!     cargo bench -p tracer --bench replay
use std::time::Instant;

use tracer::replay::{records, Replay};

mod common;
use common::{allocated, arg, peak_rss, recording, thread_cpu_ns, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let data = recording();
    let recs: Vec<&[u8]> = records(&data).collect();
    let rounds = arg("rounds", 30) as usize;

    // Warm-up round, then timed rounds (a fresh pipeline each: the same
    // recording replayed into one would reuse its connections).
    let mut sink = |_s: correlate::Span| {};
    let warm = {
        let mut r = Replay::encoding();
        recs.iter().for_each(|b| r.record(b, &mut sink));
        r.finish(&mut sink)
    };
    let (a0, b0) = allocated();
    let start = Instant::now();
    let cpu0 = thread_cpu_ns();
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
    let cpu_secs = (thread_cpu_ns() - cpu0) as f64 / 1e9;
    let (a1, b1) = allocated();
    let (allocs, bytes) = (a1 - a0, b1 - b0);
    println!(
        "recording: {} records, {} messages, {} spans per round ({} bad records)",
        warm.records, warm.messages, warm.spans, warm.bad_records
    );
    println!("rounds: {rounds}, {spans} spans in {secs:.3} s on one core ({cpu_secs:.3} s of CPU)");
    println!("spans/s per core:    {:>12.0}", spans as f64 / secs);
    // What a busy machine (other processes on the core) leaves unchanged.
    println!("spans per CPU second: {:>11.0}", spans as f64 / cpu_secs);
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
    println!(
        "peak RSS of this process (recording included): {}",
        peak_rss()
    );
    println!("target: >= 500000 spans/s per core (goal 1000000), <= 5 allocations per span");
    println!(
        "(each round is a fresh pipeline, as at an agent's start: its per-connection \
         state is allocated, not reused from warm pools)"
    );
}
