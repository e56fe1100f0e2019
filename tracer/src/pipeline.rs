//! The agent's pipeline, stage by stage:
//!
//! kernel ring buffer -> records -> connection table (byte streams lined up
//! with calls) -> sink (event printer) ; counters reported on exit.
//!
//! One thread: records are decoded and handed on in the order the kernel
//! wrote them, and no stage blocks on another.
use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, time::MissedTickBehavior};
use tracer_common::Record;

use crate::{
    cli::{Print, RunConfig},
    clock::{monotonic_ns, Clock},
    conntrack::{ConnLimits, Conns, Sink},
    kernel::Kernel,
    print::EventPrinter,
};

/// Counters of the reading stage.
#[derive(Default, Debug)]
pub struct ReaderCounters {
    /// Records read.
    pub records: u64,
    /// Records that could not be decoded.
    pub bad_records: u64,
}

/// A sink that only counts (`--print none`).
struct Discard;
impl Sink for Discard {
    fn chunk(
        &mut self,
        _: &crate::conntrack::ConnInfo,
        _: tracer_common::Dir,
        _: &protocols::stream::Chunk<'_>,
    ) {
    }
}

fn drain(
    ring: &mut RingBuf<MapData>,
    conns: &mut Conns,
    sink: &mut impl Sink,
    c: &mut ReaderCounters,
) {
    while let Some(item) = ring.next() {
        c.records += 1;
        match Record::parse(&item) {
            Ok(Record::SockOp(op)) => conns.on_op(&op, sink),
            Ok(Record::Segment(hdr, data)) => conns.on_segment(&hdr, data, sink),
            Ok(Record::ConnState(st)) => conns.on_state(&st, sink),
            Err(_) => c.bad_records += 1,
        }
    }
}

/// Runs until SIGINT/SIGTERM or the configured duration, then detaches and
/// reports the counters on stderr.
pub fn run(cfg: RunConfig, mut kernel: Kernel) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let clock = Clock::new();
    let stdout = std::io::BufWriter::with_capacity(64 << 10, std::io::stdout().lock());
    match cfg.print {
        Print::Events => {
            let mut sink = EventPrinter::new(stdout, cfg.output, cfg.filter.clone(), clock);
            rt.block_on(event_loop(&cfg, &mut kernel, &mut sink))?;
            sink.flush();
            if sink.write_errors > 0 {
                tracing::warn!(
                    errors = sink.write_errors,
                    "writing events to stdout failed"
                );
            }
        }
        Print::None => rt.block_on(event_loop(&cfg, &mut kernel, &mut Discard))?,
    }
    drop(kernel);
    tracing::info!("detached all programs");
    Ok(())
}

async fn event_loop<S: Sink>(cfg: &RunConfig, kernel: &mut Kernel, sink: &mut S) -> Result<()> {
    let ring = kernel.take_events()?;
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd lives.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with epoll")?;
    let mut conns = Conns::new(ConnLimits::default());
    let mut counters = ReaderCounters::default();

    let mut drain_tick = tokio::time::interval(cfg.drain_interval);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut sweep_tick = tokio::time::interval(Duration::from_millis(50));
    sweep_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let stats_period = cfg
        .stats_interval
        .unwrap_or(Duration::from_secs(3600 * 24 * 365));
    let mut stats_tick = tokio::time::interval(stats_period);
    stats_tick.tick().await;
    let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt())?;
    let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate())?;
    let deadline = async {
        match cfg.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);

    tracing::info!(
        programs = ?kernel.program_ids(),
        snap_len = cfg.kernel.snap_len,
        capture = cfg.kernel.enabled,
        "attached: capturing TCP traffic on this host"
    );
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = &mut deadline => break,
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting on the ring buffer")?;
                drain(guard.get_inner_mut(), &mut conns, sink, &mut counters);
                guard.clear_ready();
            }
            _ = drain_tick.tick() => {
                drain(ring.get_mut(), &mut conns, sink, &mut counters);
                sink.flush();
            }
            _ = sweep_tick.tick() => conns.sweep(monotonic_ns(), sink),
            _ = stats_tick.tick() => report(kernel, &conns, &counters, false),
        }
    }
    drain(ring.get_mut(), &mut conns, sink, &mut counters);
    conns.flush_all(sink);
    sink.flush();
    report(kernel, &conns, &counters, true);
    Ok(())
}

/// Logs every counter: kernel drops, reader, table and stream counters.
fn report(kernel: &Kernel, conns: &Conns, reader: &ReaderCounters, last: bool) {
    let mut line = String::new();
    use std::fmt::Write as _;
    let _ = write!(line, "kernel drops:");
    for (reason, n) in kernel.drops() {
        let _ = write!(line, " {}={n}", reason.name());
    }
    let t = conns.counters();
    let s = conns.stream_counters();
    let _ = write!(
        line,
        "; reader: records={} bad_records={}; connections: live={} opened={} closed={} evicted_idle={} evicted_full={} \
         loopback_mirrored={} loopback_parked={} loopback_parked_dropped={}; \
         streams: segments={} ops={} bytes_captured={} bytes_truncated={} bytes_hole={} bytes_unattributed={} \
         bytes_duplicate={} segments_dropped_limit={} ops_dropped_limit={} ops_stale={} ops_without_bytes={}",
        reader.records,
        reader.bad_records,
        conns.len(),
        t.opened,
        t.closed,
        t.evicted_idle,
        t.evicted_full,
        t.loopback_mirrored,
        t.loopback_parked,
        t.loopback_parked_dropped,
        s.segments,
        s.ops,
        s.bytes_captured,
        s.bytes_truncated,
        s.bytes_hole,
        s.bytes_unattributed,
        s.bytes_duplicate,
        s.segments_dropped_limit,
        s.ops_dropped_limit,
        s.ops_stale,
        s.ops_without_bytes,
    );
    if last {
        eprintln!("tracer: counters: {line}");
    } else {
        tracing::info!("counters: {line}");
    }
}
