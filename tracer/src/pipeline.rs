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
use protocols::stream::Chunk;
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, time::MissedTickBehavior};
use tracer_common::{Dir, Record};

use crate::{
    cli::{Output, Print, RunConfig},
    clock::{monotonic_ns, Clock},
    conntrack::{ConnInfo, ConnLimits, Conns, Sink},
    export::{console::Format, resource::ResourceCache, sink::SpanSink},
    http_spans::HttpSpans,
    kernel::{Kernel, SockCtlMap},
    lanes::Events,
    print::EventPrinter,
    profile::stage::ProfileStage,
    replay::Recorder,
};

/// Counters of the reading stage.
#[derive(Default, Debug)]
pub struct ReaderCounters {
    /// Records read.
    pub records: u64,
    /// Records that could not be decoded.
    pub bad_records: u64,
    /// Records that reached the stages after younger ones (see
    /// [`crate::lanes::LaneCounters`]).
    pub records_late: u64,
    /// Lane frames that made no sense (the rest of that lane was skipped).
    pub frames_corrupt: u64,
    /// Call records passed over while the agent was behind.
    pub shed_op: u64,
    /// Packet records passed over while the agent was behind.
    pub shed_segment: u64,
    /// Per-socket requests the kernel refused.
    pub ctl_errors: u64,
}

/// Everything after the connection table: event printing (optional),
/// HTTP parsing and correlation, and where finished spans go.
struct Stages {
    events: Option<EventPrinter<Box<dyn Write>>>,
    /// None with `--no-spans`.
    http: Option<HttpSpans>,
    spans: SpanSink<Box<dyn Write>>,
    /// The last pid described, to skip the resource lookup on runs of
    /// records of one process.
    last_pid: u32,
    /// `--record`: raw records to a file.
    recorder: Option<Recorder>,
    /// CPU profiles, when profiling is on.
    profile: Option<ProfileStage>,
}

impl Sink for Stages {
    fn chunk(&mut self, conn: &ConnInfo, dir: Dir, chunk: &Chunk<'_>) {
        if let Some(events) = &mut self.events {
            events.chunk(conn, dir, chunk);
        }
        if let Some(http) = &mut self.http {
            http.chunk(conn, dir, chunk);
        }
    }

    fn closed(&mut self, conn: &ConnInfo) {
        if let Some(http) = &mut self.http {
            http.closed(conn, monotonic_ns());
        }
    }

    fn flush(&mut self) {
        if let Some(events) = &mut self.events {
            events.flush();
        }
        if let Some(r) = &mut self.recorder {
            r.flush();
        }
    }
}

impl Stages {
    /// Describes a process at its first record, while it is alive: short
    /// processes (curl) are gone by the time their spans finish; the
    /// kernel's `comm` stands in when /proc no longer has them.
    fn saw_pid(&mut self, pid: u32, comm: &[u8; 16], now: u64) {
        if pid != self.last_pid {
            self.last_pid = pid;
            let end = comm.iter().position(|&c| c == 0).unwrap_or(comm.len());
            let name = String::from_utf8_lossy(&comm[..end]);
            self.spans.saw_pid(correlate::Pid(pid), Some(&name), now);
        }
    }

    /// A CPU sample, to the profiling worker; its process is described
    /// now, while it is alive (the kernel's name stands in when it is not).
    fn sample(&mut self, hdr: &tracer_common::SampleHeader, stack: &[u8]) {
        let Some(profile) = &mut self.profile else {
            return;
        };
        profile.sample(hdr, stack);
        if hdr.pid != self.last_pid {
            self.last_pid = hdr.pid;
            let end = hdr
                .comm
                .iter()
                .position(|&c| c == 0)
                .unwrap_or(hdr.comm.len());
            let comm = String::from_utf8_lossy(&hdr.comm[..end]);
            self.spans
                .resource(correlate::Pid(hdr.pid), Some(&comm), hdr.ts_ns);
        }
    }

    /// Stacks the profiling worker finished: attributed to the server span
    /// in progress on their thread at their time (rule 6), described by
    /// their process's resource.
    fn collect_samples(&mut self) {
        let Some(profile) = &mut self.profile else {
            return;
        };
        let http = &self.http;
        let spans = &mut self.spans;
        profile.collect(
            |pid, tid, t| http.as_ref().and_then(|h| h.server_span_at(pid, tid, t)),
            |pid| spans.resource(pid, None, monotonic_ns()),
        );
    }

    /// Moves finished spans on and prints traces that went quiet.
    fn settle(&mut self, now: u64) {
        self.collect_samples();
        let spans = self.http.as_mut().map(|h| h.poll(now)).unwrap_or_default();
        for mut span in spans {
            if let Some(p) = &mut self.profile {
                p.span_finished(&mut span);
            }
            self.spans.span(span, now);
        }
        self.spans.tick(now);
    }
}

/// Hands the kernel's records, in time order, to the stages; `all` at exit
/// (otherwise the youngest stay for the next drain, see [`Events`]).
fn drain(
    events: &mut Events,
    conns: &mut Conns,
    stages: &mut Stages,
    c: &mut ReaderCounters,
    all: bool,
) {
    let mut one = |item: &[u8]| {
        c.records += 1;
        if let Some(r) = &mut stages.recorder {
            r.write(item);
        }
        match Record::parse(item) {
            Ok(Record::SockOp(op)) => {
                stages.saw_pid(op.pid, &op.comm, op.ts_ns);
                conns.on_op(&op, stages)
            }
            Ok(Record::Segment(hdr, data)) => conns.on_segment(&hdr, data, stages),
            Ok(Record::ConnState(st)) => conns.on_state(&st, stages),
            // CPU samples go to profile::Profiler once profiling is wired.
            Ok(Record::Sample(hdr, stack)) => stages.sample(&hdr, stack),
            Ok(Record::SockTotals(t)) => conns.on_totals(&t),
            Err(_) => c.bad_records += 1,
        }
    };
    if all {
        events.drain_all(&mut one);
    } else {
        events.drain(monotonic_ns(), &mut one);
    }
    c.records_late = events.counters().records_late;
    c.frames_corrupt = events.counters().frames_corrupt;
    c.shed_op = events.counters().shed_op;
    c.shed_segment = events.counters().shed_segment;
}

/// Closed connections retired after each drain at most: a storm of short
/// connections is retired in steps between reads of the kernel's records.
const REAP_PER_DRAIN: usize = 256;

/// After a drain: retires closed connections (a bounded number), then
/// passes the parsers' requests on (see [`apply_ctl`]).
fn after_drain(
    conns: &mut Conns,
    stages: &mut Stages,
    ctl: &mut SockCtlMap,
    c: &mut ReaderCounters,
) {
    conns.reap(monotonic_ns(), REAP_PER_DRAIN, stages);
    apply_ctl(conns, stages, ctl, c);
}

/// Passes the parsers' requests (silence a connection, skip a body) to the
/// connection table and on to the kernel. Not while events are printed:
/// whoever asked to see every call sees them all.
fn apply_ctl(conns: &mut Conns, stages: &mut Stages, ctl: &mut SockCtlMap, c: &mut ReaderCounters) {
    if let Some(http) = &mut stages.http {
        let requests = http.take_ctl_requests();
        if stages.events.is_none() {
            for r in requests {
                conns.request(r);
            }
        }
    }
    let (updates, entries) = conns.take_ctl_updates();
    ctl.apply(&updates, entries);
    c.ctl_errors = ctl.errors;
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
    let resources = ResourceCache::from_env().map_err(anyhow::Error::msg)?;
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
    let mut stages = Stages {
        events,
        http: (!cfg.no_spans).then(|| HttpSpans::new(cfg.correlate.clone(), seed)),
        spans,
        last_pid: 0,
        recorder,
        profile: match &cfg.profile {
            Some(p) => {
                Some(ProfileStage::start(p, clock, monotonic_ns()).map_err(anyhow::Error::msg)?)
            }
            None => None,
        },
    };

    let (conns, reader) = rt.block_on(event_loop(&cfg, &mut kernel, &mut stages))?;

    if let Some(p) = &mut stages.profile {
        p.close();
    }
    stages.collect_samples();
    let spans = stages.http.as_mut().map(|h| h.flush()).unwrap_or_default();
    for mut span in spans {
        if let Some(p) = &mut stages.profile {
            p.span_finished(&mut span);
        }
        stages.spans.span(span, monotonic_ns());
    }
    if let Some(events) = &mut stages.events {
        events.flush();
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

async fn event_loop(
    cfg: &RunConfig,
    kernel: &mut Kernel,
    stages: &mut Stages,
) -> Result<(Conns, ReaderCounters)> {
    let ring = kernel.take_events()?;
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd lives.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("registering the ring buffer with epoll")?;
    let mut ctl = kernel.take_ctl()?;
    let mut conns = Conns::new(ConnLimits::default());
    let mut counters = ReaderCounters::default();

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
                drain(guard.get_inner_mut(), &mut conns, stages, &mut counters, false);
                guard.clear_ready();
                after_drain(&mut conns, stages, &mut ctl, &mut counters);
            }
            _ = drain_tick.tick() => {
                drain(ring.get_mut(), &mut conns, stages, &mut counters, false);
                after_drain(&mut conns, stages, &mut ctl, &mut counters);
                stages.flush();
            }
            _ = sweep_tick.tick() => {
                let now = monotonic_ns();
                conns.sweep(now, stages);
                // Both steps can be long under overload: the lanes are read
                // in between.
                drain(ring.get_mut(), &mut conns, stages, &mut counters, false);
                stages.settle(now);
                if let Some(p) = &mut stages.profile {
                    p.tick(now);
                }
                stages.flush();
            }
            _ = addr_tick.tick() => {
                if let Some(http) = &mut stages.http {
                    http.refresh_local_addrs();
                }
            }
            _ = stats_tick.tick() => {
                let line = counters_line(kernel, &conns, &counters, stages);
                tracing::info!("counters: {line}; {}", stages.spans.counters());
            }
        }
    }
    drain(ring.get_mut(), &mut conns, stages, &mut counters, true);
    conns.flush_all(stages);
    stages.settle(monotonic_ns());
    stages.flush();
    Ok((conns, counters))
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
    stages: &Stages,
) -> String {
    use std::fmt::Write as _;
    let mut line = String::from("kernel drops:");
    for (reason, n) in kernel.drops() {
        let _ = write!(line, " {}={n}", reason.name());
    }
    line.push_str("; kernel:");
    for (stat, n) in kernel.stats() {
        let _ = write!(line, " {}={n}", stat.name());
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
            records_late: 0,
            frames_corrupt: 0,
            shed_op: 0,
            shed_segment: 0,
            ctl_errors: 0,
        };
        assert_eq!(
            debug_kv(&c),
            "records=3 bad_records=1 records_late=0 frames_corrupt=0 shed_op=0 shed_segment=0 \
             ctl_errors=0"
        );
    }
}
