//! The agent's pipeline, stage by stage:
//!
//! kernel ring buffer -> records -> connection table (byte streams lined up
//! with calls) -> [event printer] -> HTTP/1 parser -> correlator (spans,
//! traces) -> OTLP exporter or terminal; counters reported on exit.
//!
//! One thread: records are decoded and handed on in the order the kernel
//! wrote them, and no stage blocks on another (the OTLP exporter runs on its
//! own thread behind a bounded queue).
use std::{
    io::{self, Write},
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, time::MissedTickBehavior};

use crate::{
    cli::{Output, Print, RunConfig, Summary},
    clock::{monotonic_ns, Clock},
    conntrack::ConnLimits,
    dispatch::{Dispatcher, Stages},
    export::{
        console::Format,
        otlp::ExportError,
        resource::{ResourceCache, ResourceError},
        sink::SpanSink,
    },
    host,
    http_spans::HttpSpans,
    kernel::{Kernel, KernelError, SockCtlMap},
    lanes::{Events, LaneCounters},
    metrics::{self, Metric, Report, Show, Snapshot, Stage},
    metrics_http::{self, MetricsError},
    print::EventPrinter,
    profile::stage::{ProfileStage, StageError},
    replay::Recorder,
    tls::attach::TlsAttach,
};

/// Why the agent could not start its pipeline or keep it running.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("starting the async runtime")]
    Runtime(#[source] io::Error),
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error("starting the span export")]
    Export(#[source] ExportError),
    #[error("creating {}", .path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Profile(#[from] StageError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("registering the kernel's records with epoll")]
    Register(#[source] io::Error),
    #[error("waiting on the kernel's records")]
    Wait(#[source] io::Error),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("installing the SIGINT and SIGTERM handlers")]
    Signals(#[source] io::Error),
}

/// The live dispatcher: spans to the agent's sink.
type Live = Dispatcher<SpanSink<Box<dyn Write>>>;

/// Hands the kernel's records, in time order, to the dispatcher; `all` at
/// exit (otherwise the youngest stay for the next drain, see [`Events`]).
fn drain(events: &mut Events, d: &mut Live, all: bool) {
    let mut one = |item: &[u8]| {
        d.record(item);
    };
    if all {
        events.drain_all(&mut one);
    } else {
        events.drain(monotonic_ns(), &mut one);
    }
}

/// After a drain: closed connections retired (a bounded number), then the
/// parsers' requests (silence a connection, skip a body) passed on to the
/// kernel.
fn after_drain(
    d: &mut Live,
    ctl: &mut SockCtlMap,
    tls: &mut Option<TlsAttach>,
    kernel: &mut Kernel,
) {
    let (updates, entries) = d.after_drain(monotonic_ns());
    ctl.apply(&updates, entries);
    let seen = d.take_tls_seen();
    let unseen = d.take_tls_without_plaintext();
    if let Some(tls) = tls {
        for pid in seen {
            tls.tls_seen(pid, kernel);
        }
        for (pid, seen_ns) in unseen {
            tls.no_plaintext(pid, seen_ns, kernel);
        }
    }
}

/// Runs until SIGINT/SIGTERM or the configured duration, then detaches and
/// reports the counters on stderr.
pub fn run(cfg: RunConfig, mut kernel: Kernel) -> Result<(), PipelineError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(PipelineError::Runtime)?;
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
    let resources = ResourceCache::from_env()?.with_service_names(cfg.service_names.clone());
    let spans = rt
        .block_on(async { SpanSink::start(cfg.export.clone(), format, span_out, clock, resources) })
        .map_err(PipelineError::Export)?;
    let seed = clock.unix_ns(monotonic_ns()) ^ u64::from(std::process::id()).rotate_left(32);
    let recorder = match &cfg.record {
        Some(path) => Some(
            Recorder::create(path).map_err(|source| PipelineError::Record {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let stages = Stages::new(
        events,
        (!cfg.no_spans).then(|| HttpSpans::new(cfg.correlate.clone(), seed, &host::local_addrs())),
        spans,
        recorder,
        match &cfg.profile {
            Some(p) => Some(ProfileStage::start(p, clock, monotonic_ns())?),
            None => None,
        },
    );
    let mut dispatcher = Dispatcher::new(stages, ConnLimits::default());
    let started = Instant::now();

    let mut ctl = kernel.take_ctl()?;
    let mut lanes = LaneCounters::default();
    // TLS probes and runtime hooks: every process running now is looked
    // at before the loop.
    let tls_on = cfg.kernel.tls_snap > 0;
    let hooks_on = kernel.runtime_hooks();
    let mut tls = ((tls_on || hooks_on) && cfg.kernel.enabled).then(|| {
        let mut t = TlsAttach::new("/proc", tls_on, hooks_on);
        t.follow_goroutines(cfg.kernel.go_ancestry);
        let begun = Instant::now();
        t.tick(&mut kernel);
        let host = t.pin_host_libraries(&mut kernel);
        tracing::info!(
            files = t.attached_files(),
            processes = t.counters().processes_scanned,
            host_libraries = ?host,
            ms = begun.elapsed().as_millis() as u64,
            "TLS libraries and runtime hooks looked up in running processes and the host's \
             library directories (those stay probed for programs started later)"
        );
        // From here on the event loop runs: files found later are read
        // on a thread of their own.
        t.read_in_background();
        // Programs started later are read as they start (the kernel's
        // exec events), not only at the next scan.
        match t.watch_execs() {
            Ok(()) => tracing::info!(
                "programs started from now on are read for TLS libraries and runtime hooks \
                 as they start (the kernel's exec events, process connector)"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "the kernel's exec events cannot be read (process connector): programs \
                 started from now on are found by a /proc scan every 500 ms, and one that \
                 lives less may go untraced"
            ),
        }
        t
    });
    rt.block_on(event_loop(
        &cfg,
        &mut kernel,
        &mut dispatcher,
        &mut ctl,
        &mut lanes,
        &mut tls,
    ))?;
    dispatcher.finish(monotonic_ns());
    let stages = dispatcher.stages_mut();
    if let Some(p) = &mut stages.profile {
        p.finish(monotonic_ns(), Duration::from_secs(5));
    }
    let spans = &mut stages.spans;
    rt.block_on(async { spans.finish(Duration::from_secs(5)) });
    if let Some(events) = &stages.events {
        if events.write_errors > 0 {
            tracing::warn!(
                errors = events.write_errors,
                "writing events to stdout failed"
            );
        }
    }
    // Spans/s at exit: the average over the run.
    let mut since_start = Rate {
        last: Some((started, 0)),
    };
    let snap = snapshot(
        &kernel,
        &dispatcher,
        &lanes,
        &ctl,
        tls.as_ref(),
        &mut since_start,
    );
    let summary = match cfg.summary {
        Summary::Brief => snap.table(),
        Summary::Full => snap.full_table(),
    };
    eprintln!("tracer: counters at exit\n{summary}");
    drop(tls);
    drop(kernel);
    tracing::info!("detached all programs");
    Ok(())
}

async fn event_loop(
    cfg: &RunConfig,
    kernel: &mut Kernel,
    d: &mut Live,
    ctl: &mut SockCtlMap,
    lanes: &mut LaneCounters,
    tls: &mut Option<TlsAttach>,
) -> Result<(), PipelineError> {
    let ring = kernel.take_events()?;
    // SAFETY: the reader owns its fds for as long as the AsyncFd lives.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| PipelineError::Register(e.into_parts().1))?;

    let mut drain_tick = tokio::time::interval(cfg.drain_interval);
    drain_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut sweep_tick = tokio::time::interval(Duration::from_millis(50));
    sweep_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // New processes and processes gone, for the TLS probes: a /proc scan
    // that reads only the mappings of processes not seen before.
    let mut tls_tick = tokio::time::interval(Duration::from_millis(500));
    tls_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut addr_tick = tokio::time::interval(Duration::from_secs(10));
    addr_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let stats_period = cfg
        .stats_interval
        .unwrap_or(Duration::from_secs(3600 * 24 * 365));
    let mut stats_tick = tokio::time::interval(stats_period);
    stats_tick.tick().await;
    let mut scrapes = match cfg.metrics_addr {
        Some(addr) => Some(metrics_http::start(addr).await?),
        None => None,
    };
    // Kernel drops that may have lost a request, at the last sweep, and
    // when that sweep was.
    let mut request_drops = kernel.request_drops();
    let mut last_sweep = monotonic_ns();
    let mut stats_rate = Rate { last: None };
    let mut scrape_rate = Rate { last: None };
    let mut sigint =
        tokio::signal::unix::signal(SignalKind::interrupt()).map_err(PipelineError::Signals)?;
    let mut sigterm =
        tokio::signal::unix::signal(SignalKind::terminate()).map_err(PipelineError::Signals)?;
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
                let mut guard = guard.map_err(PipelineError::Wait)?;
                drain(guard.get_inner_mut(), d, false);
                guard.clear_ready();
                after_drain(d, ctl, tls, kernel);
            }
            _ = drain_tick.tick() => {
                drain(ring.get_mut(), d, false);
                after_drain(d, ctl, tls, kernel);
                // Exec events once a drain period, not at every drain (a
                // busy ring drains far more often).
                if let Some(t) = tls {
                    t.follow_execs(kernel);
                    d.describe_started(t.started());
                    t.attach_wanted_hooks(kernel);
                }
                d.flush_output();
            }
            _ = sweep_tick.tick() => {
                // Timeouts are judged against the clock: first take in what
                // the kernel wrote until now, or a loaded machine's backlog
                // would make the streams and the correlator give up on
                // records that are merely still in the lanes.
                let now = monotonic_ns();
                drain(ring.get_mut(), d, false);
                report_losses(ring.get_mut(), kernel, d, &mut request_drops, last_sweep);
                last_sweep = now;
                d.sweep(now);
                after_drain(d, ctl, tls, kernel);
                d.flush_output();
            }
            _ = addr_tick.tick() => d.set_local_addrs(&host::local_addrs()),
            _ = tls_tick.tick(), if tls.is_some() => {
                if let Some(t) = tls {
                    t.tick(kernel);
                }
            }
            _ = stats_tick.tick() => {
                *lanes = *ring.get_ref().counters();
                let table = snapshot(kernel, d, lanes, ctl, tls.as_ref(), &mut stats_rate).table();
                tracing::info!("counters\n{table}");
            }
            Some(scrape) = async {
                match &mut scrapes {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                *lanes = *ring.get_ref().counters();
                let _ = scrape.send(snapshot(kernel, d, lanes, ctl, tls.as_ref(), &mut scrape_rate).prometheus());
            }
        }
    }
    drain(ring.get_mut(), d, true);
    report_losses(ring.get_mut(), kernel, d, &mut request_drops, last_sweep);
    *lanes = *ring.get_ref().counters();
    Ok(())
}

/// Records lost since the last sweep (at `last_sweep`) that may have
/// carried a request: the kernel's drops (`drops`: their count then) and
/// the records the reader shed. Told to the stages before they are told
/// their inputs are complete.
fn report_losses(
    events: &mut Events,
    kernel: &Kernel,
    d: &mut Live,
    drops: &mut u64,
    last_sweep: u64,
) {
    let now = kernel.request_drops();
    if now > *drops {
        // Dropped since about the last sweep (its records were still in
        // the lanes for up to their hold).
        d.records_lost(last_sweep.saturating_sub(crate::lanes::HOLD_NS));
        *drops = now;
    }
    if let Some(t) = events.take_shed_since() {
        d.records_lost(t);
    }
}

/// Every counter of every stage, now. `rate` turns the span count into
/// spans/s since the previous snapshot.
fn snapshot(
    kernel: &Kernel,
    d: &Live,
    lanes: &LaneCounters,
    ctl: &SockCtlMap,
    tls: Option<&TlsAttach>,
    rate: &mut Rate,
) -> Snapshot {
    let mut m = Vec::new();
    for (reason, n) in kernel.drops() {
        m.push(
            Metric::counter(
                Stage::Kernel,
                "drops",
                "Records the kernel side could not deliver, by reason.",
                Show::Anomaly,
                n,
            )
            .with_label("reason", reason.name()),
        );
    }
    for (stat, n) in kernel.stats() {
        m.push(Metric::counter(
            Stage::Kernel,
            stat.name(),
            stat.help(),
            Show::Detail,
            n,
        ));
    }
    lanes.report(&mut m);
    m.push(Metric::counter(
        Stage::Kernel,
        "ctl_errors",
        "Per-socket requests (silence, skip) the kernel refused.",
        Show::Anomaly,
        ctl.errors,
    ));
    d.reader().report(&mut m);
    let conns = d.conns();
    m.push(Metric::gauge(
        Stage::Connections,
        "live",
        "Connections tracked now.",
        Show::Headline,
        conns.live() as f64,
    ));
    conns.counters().report(&mut m);
    conns.stream_counters().report(&mut m);
    if let Some(http) = &d.stages().http {
        http.counters().report(&mut m);
        http.parser_counters().report(&mut m);
        http.http2_counters().report(&mut m);
        let c = http.correlate_counters();
        c.report(&mut m);
        let (held, bytes) = http.held_spans();
        m.push(Metric::gauge(
            Stage::Correlation,
            "held_spans",
            "Span records held (waiting for evidence, or kept for late children).",
            Show::Detail,
            held as f64,
        ));
        m.push(Metric::gauge(
            Stage::Correlation,
            "held_span_bytes",
            "Memory of the span records held, texts included.",
            Show::Detail,
            bytes as f64,
        ));
        for (part, bytes) in http.correlator_heap() {
            m.push(
                Metric::gauge(
                    Stage::Correlation,
                    "heap_bytes",
                    "The correlator's heap by structure, estimated from capacities (which never shrink: the peak).",
                    Show::Detail,
                    bytes as f64,
                )
                .with_label("part", part),
            );
        }
        m.push(Metric::gauge(
            Stage::Correlation,
            "window_ms",
            "Reorder window in use: how long spans wait for late evidence (follows measured lateness).",
            Show::Detail,
            http.window_ns() as f64 / 1e6,
        ));
        m.push(Metric::gauge(
            Stage::Correlation,
            "spans_per_second",
            "Spans made per second since the previous snapshot.",
            Show::Headline,
            rate.per_second(c.spans_emitted),
        ));
    }
    let s = d.stages();
    s.tls.counters().report(&mut m);
    m.push(Metric::gauge(
        Stage::Tls,
        "plaintext_connections",
        "TLS connections whose plaintext is parsed now.",
        Show::Detail,
        s.tls.live() as f64,
    ));
    if let Some(t) = tls {
        t.counters().report(&mut m);
        m.push(Metric::gauge(
            Stage::Tls,
            "files_probed",
            "Files (TLS libraries, executables) with the TLS probes attached now.",
            Show::Headline,
            t.attached_files() as f64,
        ));
    }
    s.spans.report(&mut m);
    if let Some(p) = &s.profile {
        p.report(&mut m);
    }
    metrics::process(&mut m);
    Snapshot { metrics: m }
}

/// A counter's rate between two snapshots.
struct Rate {
    last: Option<(Instant, u64)>,
}

impl Rate {
    fn per_second(&mut self, total: u64) -> f64 {
        let now = Instant::now();
        let r = match self.last {
            Some((t, n)) if now > t => total.saturating_sub(n) as f64 / (now - t).as_secs_f64(),
            _ => 0.0,
        };
        self.last = Some((now, total));
        r
    }
}
