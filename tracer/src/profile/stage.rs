//! The profiling stage of the pipeline: raw samples -> unwound, symbolized
//! stacks -> attributed to the server span in progress on the sampled
//! thread (rule 6 of DESIGN.md) -> aggregated per service and span ->
//! Pyroscope and/or flame graphs; and, for every finished server span, its
//! sampled CPU time and profile link as span attributes.
//!
//! Unwinding and symbolization run on their own thread: the first lookup in
//! a large binary takes tens to hundreds of milliseconds, which the event
//! loop reading the ring buffer cannot afford. Samples go there through a
//! queue bounded in samples and in bytes (each carries a copy of the top
//! of a user stack, up to 32 KiB; overflow counted) and come back as
//! stacks.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::Duration,
};

use correlate::{Pid, Span, SpanId};
use tracer_common::SampleHeader;

use super::{
    aggregate::{AggregateConfig, Profiles},
    flame::{FlameConfig, FlameGraphs},
    pyroscope::{PyroscopeConfig, PyroscopeError, PyroscopeExporter},
    symbols::SymbolCounters,
    unwind::UnwindCounters,
    ProfileCounters, Profiler, ProfilerConfig, StackSample,
};
use crate::{
    clock::Clock,
    export::{resource::Resource, worker::QueueBound},
    metrics::{self, Metric, Report, Show, Stage},
};

/// Resolved profiling settings.
#[derive(Clone, Debug)]
pub struct ProfileSettings {
    /// Aggregation bounds and the sampling frequency.
    pub aggregate: AggregateConfig,
    /// How often profiles are pushed / flame graphs written.
    pub interval: Duration,
    /// Pyroscope endpoint, when configured.
    pub pyroscope: Option<PyroscopeConfig>,
    /// Flame graph directory, when configured.
    pub flame: Option<FlameConfig>,
    /// Bound on the DWARF held for source lines and inlined functions
    /// (`SymbolConfig::max_dwarf_bytes`).
    pub max_dwarf_bytes: u64,
}

/// Raw samples queued for the worker at most...
const QUEUE: u64 = 1024;
/// ...and their bytes (stack copies).
const QUEUE_BYTES: u64 = 8 << 20;

/// What the unwinding thread is sent, in the order of the kernel's
/// records.
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every job is a sample: boxing its header would add an allocation to each"
)]
enum Job {
    /// A sample and its copy of the top of the user stack.
    Sample(SampleHeader, Vec<u8>),
    /// The process started another program: samples after this one are
    /// unwound against its new mappings (the old ones may cover the same
    /// addresses: two non-PIE executables both load at 0x400000).
    Exec(u32),
}

/// What a queued sample holds.
fn sample_bytes(stack: &[u8]) -> u64 {
    (std::mem::size_of::<SampleHeader>() + stack.len()) as u64
}

/// What the unwinding thread counted, as of its last refresh (every 256
/// samples).
#[derive(Clone, Debug, Default)]
pub struct UnwinderCounters {
    /// Samples turned into stacks.
    pub profile: ProfileCounters,
    /// Unwinding.
    pub unwind: UnwindCounters,
    /// Symbolization.
    pub symbols: SymbolCounters,
}

/// The unwinding/symbolization thread.
struct Worker {
    tx: Option<mpsc::Sender<Job>>,
    /// What is queued for the thread (or being unwound).
    bound: Arc<QueueBound>,
    rx: mpsc::Receiver<StackSample>,
    thread: Option<thread::JoinHandle<()>>,
    /// The profiler's counters, refreshed by the worker.
    counters: Arc<Mutex<UnwinderCounters>>,
    /// Samples not queued because the worker was behind.
    dropped: Arc<AtomicU64>,
}

impl Worker {
    fn start(cfg: ProfilerConfig) -> Worker {
        let (tx, in_rx) = mpsc::channel::<Job>();
        let bound = Arc::new(QueueBound::new(QUEUE, QUEUE_BYTES));
        let held = bound.clone();
        let (out_tx, rx) = mpsc::channel::<StackSample>();
        let counters = Arc::new(Mutex::new(UnwinderCounters::default()));
        let shown = counters.clone();
        let thread = thread::Builder::new()
            .name("profile".into())
            .spawn(move || {
                // Unwinding and symbolizing can wait (the queue is bounded
                // and counted); the capture reader cannot.
                crate::sched::step_back(crate::sched::PROFILE_NICE_STEP);
                // Not Send (blazesym): built on this thread.
                let mut profiler = Profiler::new(cfg);
                profiler.warm_up();
                let mut n = 0u64;
                let show = |p: &Profiler| {
                    if let Ok(mut c) = shown.lock() {
                        *c = UnwinderCounters {
                            profile: p.counters().clone(),
                            unwind: p.unwind_counters().clone(),
                            symbols: p.symbol_counters().clone(),
                        };
                    }
                };
                while let Ok(job) = in_rx.recv() {
                    let (hdr, stack) = match job {
                        Job::Sample(hdr, stack) => (hdr, stack),
                        Job::Exec(pid) => {
                            profiler.forget_process(pid);
                            continue;
                        }
                    };
                    let sample = profiler.on_sample(&hdr, &stack);
                    held.release(1, sample_bytes(&stack));
                    drop(stack);
                    if let Some(s) = sample {
                        if out_tx.send(s).is_err() {
                            break;
                        }
                    }
                    n += 1;
                    if n.is_multiple_of(256) {
                        profiler.sweep();
                        show(&profiler);
                    }
                }
                show(&profiler);
            })
            .ok();
        Worker {
            tx: Some(tx),
            bound,
            rx,
            thread,
            counters,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// Why the profile stage could not start.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The flame graph directory could not be created.
    #[error("flame graph directory {}", dir.display())]
    FlameDir {
        /// `--flamegraph-dir`.
        dir: std::path::PathBuf,
        /// The file system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The Pyroscope exporter could not start.
    #[error(transparent)]
    Pyroscope(#[from] PyroscopeError),
}

/// Samples in, profiles and span attributes out.
pub struct ProfileStage {
    worker: Worker,
    profiles: Profiles,
    flame: Option<FlameGraphs>,
    pyroscope: Option<PyroscopeExporter>,
    interval_ns: u64,
    next_take: u64,
}

impl ProfileStage {
    /// Starts the exporters; `now_ns` is monotonic now.
    pub fn start(
        s: &ProfileSettings,
        clock: Clock,
        now_ns: u64,
    ) -> Result<ProfileStage, StageError> {
        let flame = match &s.flame {
            Some(cfg) => {
                Some(
                    FlameGraphs::new(cfg.clone()).map_err(|source| StageError::FlameDir {
                        dir: cfg.dir.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let pyroscope = match &s.pyroscope {
            Some(cfg) => Some(PyroscopeExporter::start(cfg.clone())?),
            None => None,
        };
        let interval_ns = s.interval.as_nanos() as u64;
        Ok(ProfileStage {
            worker: Worker::start({
                let mut cfg = ProfilerConfig::default();
                cfg.symbols.max_dwarf_bytes = s.max_dwarf_bytes;
                cfg
            }),
            profiles: Profiles::new(s.aggregate.clone(), clock),
            flame,
            pyroscope,
            interval_ns,
            next_take: now_ns + interval_ns,
        })
    }

    /// One CPU sample, queued for unwinding (never blocks: when the worker
    /// is behind, the sample is dropped and counted).
    pub fn sample(&mut self, hdr: &SampleHeader, stack: &[u8]) {
        let Some(tx) = &self.worker.tx else { return };
        let w = &self.worker;
        let bytes = sample_bytes(stack);
        if !w.bound.admit(1, bytes) {
            w.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if tx.send(Job::Sample(*hdr, stack.to_vec())).is_err() {
            // The thread is gone (it failed to start or stopped).
            w.bound.release(1, bytes);
            w.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Process `pid` started another program: its earlier samples keep the
    /// old program's mappings, the later ones are unwound against the new.
    pub fn exec(&mut self, pid: u32) {
        if let Some(tx) = &self.worker.tx {
            // Nothing to forget when the thread is gone.
            let _ = tx.send(Job::Exec(pid));
        }
    }

    /// Takes the stacks the worker finished: each is attributed to `span`
    /// (the server span in progress on the sampled thread at the sample's
    /// time, if any) and aggregated under `resource`, its process's at the
    /// sample's time. Call it before finished spans are handed on, so they
    /// see their samples.
    pub fn collect(
        &mut self,
        mut span: impl FnMut(Pid, correlate::Tid, u64) -> Option<SpanId>,
        mut resource: impl FnMut(Pid, u64) -> Arc<Resource>,
    ) {
        while let Ok(s) = self.worker.rx.try_recv() {
            let sp = span(Pid(s.pid), correlate::Tid(s.tid), s.ts_ns);
            self.profiles.add(&s, resource(Pid(s.pid), s.ts_ns), sp);
        }
    }

    /// A span is about to be exported: adds its sampled CPU time and, when
    /// profiles go to Pyroscope and it has samples, the profile link.
    pub fn span_finished(&mut self, span: &mut Span) {
        if let Some(cpu) = self.profiles.span_finished(span) {
            for (k, v) in cpu.attributes(span.span_id, self.pyroscope.is_some()) {
                match v {
                    correlate::AttrValue::Str(s) => span.push_str(k, &s),
                    correlate::AttrValue::Int(i) => span.push_int(k, i),
                }
            }
        }
    }

    /// Pushes the profiles of the interval that ended, when one did.
    pub fn tick(&mut self, now_ns: u64) {
        if now_ns < self.next_take {
            return;
        }
        self.next_take = now_ns + self.interval_ns;
        self.flush(now_ns);
    }

    fn flush(&mut self, now_ns: u64) {
        for p in self.profiles.take(now_ns) {
            if let Some(f) = &mut self.flame {
                f.add(&p);
            }
            if let Some(e) = &self.pyroscope {
                e.submit(p);
            }
        }
        if let Some(f) = &mut self.flame {
            if let Err(e) = f.write() {
                tracing::warn!("writing flame graphs to {}: {e}", f.dir().display());
            }
        }
    }

    /// Every counter of the profiling stage, as metrics.
    pub fn report(&self, out: &mut Vec<Metric>) {
        let w = self
            .worker
            .counters
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        w.profile.report(out);
        w.unwind.report(out);
        w.symbols.report(out);
        self.profiles.counters().report(out);
        if let Some(f) = &self.flame {
            f.counters().report(out);
        }
        out.push(Metric::counter(
            Stage::Profiles,
            "queue_full",
            "Samples not unwound because the unwinding thread was behind.",
            Show::Anomaly,
            self.worker.dropped.load(Ordering::Relaxed),
        ));
        if let Some(e) = &self.pyroscope {
            metrics::report_worker(&e.counters(), Stage::Profiles, "pyroscope", out);
        }
    }

    /// Agent exit, before the last spans are settled: lets the worker finish
    /// the samples it has (then [`collect`](Self::collect) takes them).
    pub fn close(&mut self) {
        self.worker.tx = None;
        if let Some(t) = self.worker.thread.take() {
            let _ = t.join();
        }
    }

    /// Agent exit: the last profiles out, within `timeout`; the last
    /// pushes' counters are then in [`report`](Self::report)'s.
    pub fn finish(&mut self, now_ns: u64, timeout: Duration) {
        self.flush(now_ns);
        if let Some(e) = &mut self.pyroscope {
            e.shutdown(timeout);
        }
    }
}
