//! The agent's pipeline, stage by stage:
//!
//! kernel ring buffer -> records -> connection table (byte streams lined up
//! with calls) -> [event printer] -> HTTP/1 parser -> correlator (spans,
//! traces) -> OTLP exporter or terminal; counters reported on exit.
//!
//! One thread: records are decoded and handed on in the order the kernel
//! wrote them, and no stage blocks on another (the OTLP exporter runs on its
//! own thread behind a bounded queue).
use std::{io::Write, time::Duration};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, time::MissedTickBehavior};

use crate::{
    cli::{Output, Print, RunConfig},
    clock::{monotonic_ns, Clock},
    conntrack::{ConnLimits, Conns},
    dispatch::{Dispatcher, ReaderCounters, Stages},
    export::{console::Format, resource::ResourceCache, sink::SpanSink},
    http_spans::HttpSpans,
    kernel::Kernel,
    print::EventPrinter,
    profile::stage::ProfileStage,
    replay::Recorder,
};

/// The live dispatcher: spans to the agent's sink.
type Live = Dispatcher<SpanSink<Box<dyn Write>>>;

fn drain(ring: &mut RingBuf<MapData>, d: &mut Live) {
    while let Some(item) = ring.next() {
        d.record(&item);
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
    let stdout = || -> Box<dyn Write> {
        Box::new(std::io::BufWriter::with_capacity(
            64 << 10,
            std::io::stdout(),
        ))
    };
    let events = (cfg.print == Print::Events)
        .then(|| EventPrinter::new(stdout(), cfg.output, cfg.filter.clone(), clock));
    let format = (cfg.print == Print::Traces).then_some(match cfg.output {
        Output::Text => Format::Tree,
        Output::Json => Format::Json,
    });
    let span_out: Box<dyn Write> = if cfg.print == Print::Traces {
        stdout()
    } else {
        Box::new(std::io::sink())
    };
    let resources = ResourceCache::from_env()
        .map_err(anyhow::Error::msg)?
        .with_service_names(cfg.service_names.clone());
    let spans = rt
        .block_on(async { SpanSink::start(cfg.export.clone(), format, span_out, clock, resources) })
        .map_err(anyhow::Error::msg)
        .context("starting the span export")?;
    let seed = clock.unix_ns(monotonic_ns()) ^ u64::from(std::process::id()).rotate_left(32);
    let recorder = match &cfg.record {
        Some(path) => {
            Some(Recorder::create(path).with_context(|| format!("creating {}", path.display()))?)
        }
        None => None,
    };
    let stages = Stages::new(
        events,
        (!cfg.no_spans).then(|| HttpSpans::new(cfg.correlate.clone(), seed)),
        spans,
        recorder,
        match &cfg.profile {
            Some(p) => {
                Some(ProfileStage::start(p, clock, monotonic_ns()).map_err(anyhow::Error::msg)?)
            }
            None => None,
        },
    );
    let mut dispatcher = Dispatcher::new(stages, ConnLimits::default());

    rt.block_on(event_loop(&cfg, &mut kernel, &mut dispatcher))?;
    dispatcher.finish(monotonic_ns());

    let (mut stages, conns, reader) = dispatcher.into_parts();
    if let Some(events) = &mut stages.events {
        if events.write_errors > 0 {
            tracing::warn!(
                errors = events.write_errors,
                "writing events to stdout failed"
            );
        }
    }
    let mut line = counters_line(&kernel, &conns, &reader, &stages);
    if let Some(p) = stages.profile.take() {
        line.push_str("; ");
        line.push_str(&p.finish(monotonic_ns(), Duration::from_secs(5)));
    }
    let spans = rt.block_on(async { stages.spans.finish(Duration::from_secs(5)) });
    eprintln!("tracer: counters: {line}; {spans}");
    drop(kernel);
    tracing::info!("detached all programs");
    Ok(())
}

async fn event_loop(cfg: &RunConfig, kernel: &mut Kernel, d: &mut Live) -> Result<()> {
    let ring = kernel.take_events()?;
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd lives.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with epoll")?;

    let mut drain_tick = tokio::time::interval(cfg.drain_interval);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut sweep_tick = tokio::time::interval(Duration::from_millis(50));
    sweep_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut addr_tick = tokio::time::interval(Duration::from_secs(10));
    addr_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
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
                drain(guard.get_inner_mut(), d);
                guard.clear_ready();
            }
            _ = drain_tick.tick() => {
                drain(ring.get_mut(), d);
                d.flush_output();
            }
            _ = sweep_tick.tick() => {
                d.sweep(monotonic_ns());
                d.flush_output();
            }
            _ = addr_tick.tick() => d.refresh_local_addrs(),
            _ = stats_tick.tick() => {
                let line = counters_line(kernel, d.conns(), d.reader(), d.stages());
                tracing::info!("counters: {line}; {}", d.stages().spans.counters());
            }
        }
    }
    drain(ring.get_mut(), d);
    Ok(())
}

/// `Name { a: 1, b: 2 }` (a counters struct's Debug form) as `a=1 b=2`.
fn debug_kv(v: &impl std::fmt::Debug) -> String {
    let s = format!("{v:?}");
    let inner = s
        .split_once('{')
        .and_then(|(_, r)| r.rsplit_once('}'))
        .map_or(s.as_str(), |(i, _)| i);
    inner.trim().replace(": ", "=").replace(", ", " ")
}

/// Every counter of every stage on one line: kernel drops, reader, table,
/// streams, HTTP and correlation.
fn counters_line(
    kernel: &Kernel,
    conns: &Conns,
    reader: &ReaderCounters,
    stages: &Stages<SpanSink<Box<dyn Write>>>,
) -> String {
    use std::fmt::Write as _;
    let mut line = String::from("kernel drops:");
    for (reason, n) in kernel.drops() {
        let _ = write!(line, " {}={n}", reason.name());
    }
    let _ = write!(
        line,
        "; reader: {}; connections: live={} {}; streams: {}; http: {}; correlate: {}",
        debug_kv(reader),
        conns.live(),
        debug_kv(conns.counters()),
        debug_kv(&conns.stream_counters()),
        stages
            .http
            .as_ref()
            .map(|h| debug_kv(h.counters()))
            .unwrap_or_else(|| "off".into()),
        stages
            .http
            .as_ref()
            .map(|h| debug_kv(h.correlate_counters()))
            .unwrap_or_else(|| "off".into()),
    );
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_print_as_key_values() {
        let c = ReaderCounters {
            records: 3,
            bad_records: 1,
        };
        assert_eq!(debug_kv(&c), "records=3 bad_records=1");
    }
}
