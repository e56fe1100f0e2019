//! CPU samples aggregated per service and per span, drained once per
//! export interval.
//!
//! [`Profiles::add`] takes each unwound sample with the resource of its
//! process and the server span in progress on its thread (rule 6, answered
//! by `Correlator::server_span_at`), if any. Stacks are interned per service:
//! frames once, stacks as lists of frame ids, and the counts keyed by
//! (stack, span). Samples outside any span stay in the service's profile
//! without span labels.
//!
//! [`Profiles::span_finished`] learns a span's name (the `span_name` label)
//! and returns its sampled CPU time for the span's attributes.
//! [`Profiles::take`] drains one [`ServiceProfile`] per service. A span's
//! samples usually arrive before the correlator emits the span (it waits a
//! window for evidence), so at `take` some span-attributed stacks may still
//! lack their span's name: those are carried to the next interval, up to
//! [`AggregateConfig::name_wait_ns`], then exported with `span_id` alone.
//!
//! # Bounds
//! Services, distinct stacks (per service and in all), distinct frames,
//! frames per stack and span records are capped. A sample that would go
//! past a stack or frame cap is counted into its service's `[overflow]`
//! stack (so CPU totals stay right; the span's CPU time too), a stack deeper
//! than [`AggregateConfig::max_depth`] loses frames at its root end (marked
//! `[truncated]`), and a sample of a service beyond
//! [`AggregateConfig::max_services`] is dropped. Each case is counted in
//! [`AggregateCounters`].
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use arrayvec::ArrayVec;
use correlate::{AttrValue, Span, SpanId, SpanKind, TraceId};

use super::{
    types::{Frame, StackSample},
    unsampled::UnsampledSpans,
};
use crate::clock::Clock;
use crate::export::resource::Resource;

/// Default sampling frequency, per CPU.
pub const DEFAULT_FREQUENCY_HZ: u32 = 99;
/// Default interval between two [`Profiles::take`] calls, in ms.
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;

/// Span attribute: the span's own id in hex, set on spans that have
/// samples, which Grafana uses to open the span's profile.
pub const ATTR_PROFILE_ID: &str = correlate::Key::PyroscopeProfileId.as_str();
/// Span attribute: sampled CPU time of the span in nanoseconds (samples ×
/// sampling period).
pub const ATTR_CPU_TIME_NS: &str = correlate::Key::CpuSampledTimeNs.as_str();
/// Span attribute: number of CPU samples taken on the span's thread while
/// it was in progress.
pub const ATTR_CPU_SAMPLES: &str = correlate::Key::CpuSamples.as_str();

/// Function name of the frame that replaces the root end of a stack that
/// could not be unwound to its root, or was cut at the depth limit.
pub const TRUNCATED_FRAME: &str = "[truncated]";
/// Function name of the only frame of a sample whose stack is empty.
pub const UNKNOWN_FRAME: &str = "[unknown]";
/// Function name of the only frame of the stack that takes the samples
/// counted past a table bound.
pub const OVERFLOW_FRAME: &str = "[overflow]";

/// Bounds and timing of the aggregation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregateConfig {
    /// Sampling frequency per CPU (gives the sampling period).
    pub frequency_hz: u32,
    /// Services (distinct `service.name`) with samples in one interval.
    pub max_services: usize,
    /// Distinct (stack, span) counts of one service in one interval.
    pub max_stacks_per_service: usize,
    /// Distinct (stack, span) counts of all services in one interval.
    pub max_stacks: usize,
    /// Distinct frames of all services in one interval.
    pub max_frames: usize,
    /// Frames kept per stack (leaf end kept; deeper stacks are cut).
    pub max_depth: usize,
    /// Span records (sample counts, names) held.
    pub max_spans: usize,
    /// How long a span-attributed stack waits for its span's name before
    /// it is exported without one.
    pub name_wait_ns: u64,
    /// How long a finished span's name is kept for samples arriving late.
    pub finished_retention_ns: u64,
    /// How long a span that has samples but never finishes is kept after
    /// its last sample.
    pub unfinished_ttl_ns: u64,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            frequency_hz: DEFAULT_FREQUENCY_HZ,
            max_services: 1024,
            max_stacks_per_service: 8192,
            max_stacks: 65_536,
            max_frames: 262_144,
            max_depth: 256,
            // Spans with samples, and (apart) the last spans that finished
            // without one, so that their late samples are named: at 56k
            // server spans/s these cover the last ~290 ms (the correlation
            // window, after which spans finish, plus the unwinding worker's
            // delay), far more at ordinary rates. A sample later than that
            // is exported with its span id and no name, counted
            // (`unnamed_span_stacks`).
            max_spans: 16_384,
            name_wait_ns: 30_000_000_000,
            finished_retention_ns: 30_000_000_000,
            unfinished_ttl_ns: 120_000_000_000,
        }
    }
}

impl AggregateConfig {
    /// The sampling period in nanoseconds (1e9 / frequency, at least 1).
    pub fn period_ns(&self) -> u64 {
        1_000_000_000 / u64::from(self.frequency_hz.max(1))
    }
}

/// Profiling flags that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AggregateError {
    /// `--profile-interval-ms` out of range.
    #[error("--profile-interval-ms must be between 1000 and 300000")]
    Interval,
    /// `--profile-max-stacks` out of range.
    #[error("--profile-max-stacks must be between 16 and 1000000")]
    MaxStacks,
    /// The sampling frequency out of range.
    #[error("the sampling frequency must be between 1 and 100000 Hz, not {hz}")]
    Frequency {
        /// The frequency asked for.
        hz: u32,
    },
}

/// Profiling flags of `tracer run` that shape the aggregation.
#[derive(Clone, Debug, clap::Args)]
pub struct AggregateArgs {
    /// Interval between two profile exports (to Pyroscope, to the flame
    /// graph directory), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_INTERVAL_MS)]
    pub profile_interval_ms: u64,

    /// Distinct stacks kept per service and interval; samples beyond are
    /// counted in an `[overflow]` stack.
    #[arg(long, value_name = "N", default_value_t = AggregateConfig::default().max_stacks_per_service)]
    pub profile_max_stacks: usize,
}

impl Default for AggregateArgs {
    fn default() -> Self {
        AggregateArgs {
            profile_interval_ms: DEFAULT_INTERVAL_MS,
            profile_max_stacks: AggregateConfig::default().max_stacks_per_service,
        }
    }
}

impl AggregateArgs {
    /// Validates the flags into a configuration for sampling at
    /// `frequency_hz`, and the export interval in ms.
    pub fn resolve(&self, frequency_hz: u32) -> Result<(AggregateConfig, u64), AggregateError> {
        if !(1_000..=300_000).contains(&self.profile_interval_ms) {
            return Err(AggregateError::Interval);
        }
        if !(16..=1_000_000).contains(&self.profile_max_stacks) {
            return Err(AggregateError::MaxStacks);
        }
        if frequency_hz == 0 || frequency_hz > 100_000 {
            return Err(AggregateError::Frequency { hz: frequency_hz });
        }
        let mut cfg = AggregateConfig {
            frequency_hz,
            max_stacks_per_service: self.profile_max_stacks,
            ..AggregateConfig::default()
        };
        cfg.max_stacks = cfg.max_stacks.max(self.profile_max_stacks);
        // A stack waits for its span's name at least one interval.
        let interval_ns = self.profile_interval_ms * 1_000_000;
        cfg.name_wait_ns = cfg.name_wait_ns.max(2 * interval_ns);
        cfg.finished_retention_ns = cfg.finished_retention_ns.max(2 * interval_ns);
        Ok((cfg, self.profile_interval_ms))
    }
}

/// What a span's samples say about it, returned by
/// [`Profiles::span_finished`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanCpu {
    /// Samples attributed to the span so far.
    pub samples: u64,
    /// Sampled CPU time: samples × period.
    pub cpu_ns: u64,
}

impl SpanCpu {
    /// Whether the span has samples (and so a profile to link to).
    pub fn has_profile(&self) -> bool {
        self.samples > 0
    }

    /// The span attributes to add: the sampled CPU time and sample count
    /// always; [`ATTR_PROFILE_ID`] = the span id in hex when the span has
    /// samples and `profile_link` (profiles go to a backend that Grafana
    /// reads).
    pub fn attributes(
        &self,
        span_id: SpanId,
        profile_link: bool,
    ) -> ArrayVec<(&'static str, AttrValue), 3> {
        let mut out = ArrayVec::new();
        out.push((
            ATTR_CPU_TIME_NS,
            AttrValue::Int(i64::try_from(self.cpu_ns).unwrap_or(i64::MAX)),
        ));
        out.push((
            ATTR_CPU_SAMPLES,
            AttrValue::Int(i64::try_from(self.samples).unwrap_or(i64::MAX)),
        ));
        if profile_link && self.has_profile() {
            out.push((ATTR_PROFILE_ID, AttrValue::Str(span_id.to_string())));
        }
        out
    }
}

/// The span a stack's samples belong to, as exported.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpanLabel {
    /// The span.
    pub span_id: SpanId,
    /// Its trace, once the span finished.
    pub trace_id: Option<TraceId>,
    /// Its name, once the span finished (`None`: it did not finish within
    /// [`AggregateConfig::name_wait_ns`]).
    pub name: Option<Arc<str>>,
}

/// One distinct stack of a [`ServiceProfile`] with its sample count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackCount {
    /// Indexes into [`ServiceProfile::frames`], leaf first.
    pub frames: Vec<u32>,
    /// The span the samples belong to, if any.
    pub span: Option<SpanLabel>,
    /// Samples.
    pub count: u64,
}

/// The samples of one service over one export interval.
#[derive(Clone, Debug)]
pub struct ServiceProfile {
    /// `service.name`.
    pub service: Arc<str>,
    /// The resource of the service's most recent sample.
    pub resource: Arc<Resource>,
    /// Unix time of the earliest sample, ns.
    pub start_unix_ns: u64,
    /// Unix time of the end of the interval, ns (at least `start_unix_ns`).
    pub end_unix_ns: u64,
    /// Sampling frequency per CPU.
    pub frequency_hz: u32,
    /// Sampling period in ns.
    pub period_ns: u64,
    /// Distinct frames, referred to by [`StackCount::frames`].
    pub frames: Vec<Frame>,
    /// Distinct (stack, span) pairs, in no particular order.
    pub stacks: Vec<StackCount>,
}

impl ServiceProfile {
    /// Total samples.
    pub fn samples(&self) -> u64 {
        self.stacks.iter().map(|s| s.count).sum()
    }

    /// The spans with samples in this profile, with their sample counts,
    /// most samples first.
    pub fn spans(&self) -> Vec<(SpanLabel, u64)> {
        let mut by: HashMap<SpanId, (SpanLabel, u64)> = HashMap::new();
        for s in &self.stacks {
            if let Some(l) = &s.span {
                by.entry(l.span_id).or_insert_with(|| (l.clone(), 0)).1 += s.count;
            }
        }
        let mut out: Vec<(SpanLabel, u64)> = by.into_values().collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.span_id.cmp(&b.0.span_id)));
        out
    }
}

/// What the aggregation did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AggregateCounters {
    /// Samples given to [`Profiles::add`].
    pub samples: u64,
    /// Of which attributed to a span.
    pub span_samples: u64,
    /// Samples whose stack was not unwound to its root.
    pub truncated_samples: u64,
    /// Samples whose stack was cut at [`AggregateConfig::max_depth`].
    pub depth_cut: u64,
    /// Samples counted in the `[overflow]` stack because a stack or frame
    /// table was full.
    pub stack_overflow: u64,
    /// Samples dropped because [`AggregateConfig::max_services`] services
    /// already had samples.
    pub dropped_service_limit: u64,
    /// Span-attributed samples not counted for their span's CPU time (the
    /// span table was full of spans in progress).
    pub span_table_full: u64,
    /// Samples of a span that had already finished (not in its CPU time).
    pub late_span_samples: u64,
    /// Finished server spans that had samples.
    pub spans_with_samples: u64,
    /// Span-attributed stacks exported without `span_name` (the span did
    /// not finish in time).
    pub unnamed_span_stacks: u64,
    /// Spans with samples that never finished (forgotten after
    /// [`AggregateConfig::unfinished_ttl_ns`]).
    pub spans_never_finished: u64,
    /// Service profiles returned by [`Profiles::take`].
    pub profiles: u64,
}

impl std::fmt::Display for AggregateCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "samples={} span_samples={} truncated={} depth_cut={} stack_overflow={} \
             dropped_service_limit={} span_table_full={} late_span_samples={} \
             spans_with_samples={} unnamed_span_stacks={} spans_never_finished={} profiles={}",
            self.samples,
            self.span_samples,
            self.truncated_samples,
            self.depth_cut,
            self.stack_overflow,
            self.dropped_service_limit,
            self.span_table_full,
            self.late_span_samples,
            self.spans_with_samples,
            self.unnamed_span_stacks,
            self.spans_never_finished,
            self.profiles,
        )
    }
}

/// Counts of one (stack, span) pair.
#[derive(Clone, Copy, Debug)]
struct Count {
    count: u64,
    first_ns: u64,
}

/// One service's samples in the current interval.
struct ServiceAgg {
    resource: Arc<Resource>,
    frame_ids: HashMap<Frame, u32>,
    frames: Vec<Frame>,
    stack_ids: HashMap<Box<[u32]>, u32>,
    stacks: Vec<Box<[u32]>>,
    counts: HashMap<(u32, Option<SpanId>), Count>,
}

impl ServiceAgg {
    fn new(resource: Arc<Resource>) -> ServiceAgg {
        ServiceAgg {
            resource,
            frame_ids: HashMap::new(),
            frames: Vec::new(),
            stack_ids: HashMap::new(),
            stacks: Vec::new(),
            counts: HashMap::new(),
        }
    }

    /// The id of `frame`, interned if `room` allows a new one.
    fn frame_id(&mut self, frame: &Frame, room: bool) -> Option<u32> {
        if let Some(&id) = self.frame_ids.get(frame) {
            return Some(id);
        }
        if !room {
            return None;
        }
        let id = u32::try_from(self.frames.len()).ok()?;
        self.frames.push(frame.clone());
        self.frame_ids.insert(frame.clone(), id);
        Some(id)
    }

    /// The id of the stack `ids`, interned if `room` allows a new one.
    fn stack_id(&mut self, ids: &[u32], room: bool) -> Option<u32> {
        if let Some(&id) = self.stack_ids.get(ids) {
            return Some(id);
        }
        if !room {
            return None;
        }
        let id = u32::try_from(self.stacks.len()).ok()?;
        self.stacks.push(ids.into());
        self.stack_ids.insert(ids.into(), id);
        Some(id)
    }

    fn add_count(&mut self, stack: u32, span: Option<SpanId>, n: u64, first_ns: u64) {
        let c = self
            .counts
            .entry((stack, span))
            .or_insert(Count { count: 0, first_ns });
        c.count += n;
        c.first_ns = c.first_ns.min(first_ns);
    }
}

/// What is known of a span that has samples or finished recently.
struct SpanRecord {
    samples: u64,
    last_sample_ns: u64,
    /// Name, trace and end, once finished.
    finished: Option<(Arc<str>, TraceId, u64)>,
}

/// The synthetic frames.
struct Synthetic {
    truncated: Frame,
    unknown: Frame,
    overflow: Frame,
}

fn synthetic(name: &str) -> Frame {
    Frame {
        function: Some(Arc::from(name)),
        module: Arc::from(""),
        offset: 0,
        kernel: false,
        line: None,
    }
}

/// Whether a frame is one of the aggregation's own markers
/// (`[truncated]`, `[unknown]`, `[overflow]`) rather than code.
pub fn is_synthetic(frame: &Frame) -> bool {
    frame.module.is_empty() && frame.offset == 0 && !frame.kernel && frame.function.is_some()
}

/// The aggregation; see the module docs.
pub struct Profiles {
    cfg: AggregateConfig,
    clock: Clock,
    services: HashMap<Arc<str>, ServiceAgg>,
    /// Spans with samples (foldhash: the ids are the agent's).
    spans: foldhash::HashMap<SpanId, SpanRecord>,
    /// Finished spans of `spans` in finishing order, for expiry and
    /// eviction.
    finished: VecDeque<(SpanId, u64)>,
    /// Spans that finished with no sample, for samples arriving late.
    unsampled: UnsampledSpans,
    /// Counts and frames held now (all services).
    total_counts: usize,
    total_frames: usize,
    synthetic: Synthetic,
    scratch: Vec<u32>,
    counters: AggregateCounters,
}

impl Profiles {
    /// An empty aggregation; `clock` converts sample times to wall time.
    pub fn new(cfg: AggregateConfig, clock: Clock) -> Profiles {
        Profiles {
            unsampled: UnsampledSpans::new(cfg.max_spans),
            cfg,
            clock,
            services: HashMap::new(),
            spans: foldhash::HashMap::default(),
            finished: VecDeque::new(),
            total_counts: 0,
            total_frames: 0,
            synthetic: Synthetic {
                truncated: synthetic(TRUNCATED_FRAME),
                unknown: synthetic(UNKNOWN_FRAME),
                overflow: synthetic(OVERFLOW_FRAME),
            },
            scratch: Vec::new(),
            counters: AggregateCounters::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &AggregateConfig {
        &self.cfg
    }

    /// The counters now.
    pub fn counters(&self) -> AggregateCounters {
        self.counters
    }

    /// Spans records held (spans with samples, recently finished spans).
    pub fn span_records(&self) -> usize {
        self.spans.len() + self.unsampled.held()
    }

    /// Distinct (stack, span) counts held now, all services.
    pub fn stacks_held(&self) -> usize {
        self.total_counts
    }

    /// Adds one sample of the process described by `resource`; `span` is
    /// the server span in progress on the sample's thread at its time.
    pub fn add(&mut self, sample: &StackSample, resource: Arc<Resource>, span: Option<SpanId>) {
        self.counters.samples += 1;
        if sample.truncated {
            self.counters.truncated_samples += 1;
        }
        let span = span.filter(SpanId::is_valid);
        if let Some(id) = span {
            self.counters.span_samples += 1;
            self.count_span_sample(id, sample.ts_ns);
        }

        let name = resource.service_name();
        if !self.services.contains_key(name) {
            if self.services.len() >= self.cfg.max_services {
                self.counters.dropped_service_limit += 1;
                return;
            }
            self.services
                .insert(Arc::from(name), ServiceAgg::new(resource.clone()));
        }
        let Some(agg) = self.services.get_mut(name) else {
            return;
        };
        if !Arc::ptr_eq(&agg.resource, &resource) {
            agg.resource = resource;
        }

        // The stack, leaf first, as frame ids; None when a table is full.
        let max_depth = self.cfg.max_depth.max(2);
        let cut = sample.frames.len() > max_depth;
        if cut {
            self.counters.depth_cut += 1;
        }
        let keep = if cut {
            max_depth - 1
        } else {
            sample.frames.len()
        };
        let mut ids = std::mem::take(&mut self.scratch);
        ids.clear();
        let mut room = self.total_frames < self.cfg.max_frames;
        let mut ok = true;
        let before = agg.frames.len();
        for frame in &sample.frames[..keep] {
            match agg.frame_id(frame, room) {
                Some(id) => ids.push(id),
                None => {
                    ok = false;
                    break;
                }
            }
            room = self.total_frames + (agg.frames.len() - before) < self.cfg.max_frames;
        }
        if ok {
            let marker = if sample.frames.is_empty() {
                Some(&self.synthetic.unknown)
            } else if cut || sample.truncated {
                Some(&self.synthetic.truncated)
            } else {
                None
            };
            if let Some(m) = marker {
                match agg.frame_id(m, room) {
                    Some(id) => ids.push(id),
                    None => ok = false,
                }
            }
        }
        self.total_frames += agg.frames.len() - before;

        let counts_room = agg.counts.len() < self.cfg.max_stacks_per_service
            && self.total_counts < self.cfg.max_stacks;
        let stack = if ok {
            agg.stack_id(&ids, counts_room)
                .filter(|&s| counts_room || agg.counts.contains_key(&(s, span)))
        } else {
            None
        };
        let before_counts = agg.counts.len();
        match stack {
            Some(s) => agg.add_count(s, span, 1, sample.ts_ns),
            None => {
                // The overflow stack: one frame, no span label, always
                // admitted (one per service).
                self.counters.stack_overflow += 1;
                let before = agg.frames.len();
                if let Some(f) = agg.frame_id(&self.synthetic.overflow, true) {
                    if let Some(s) = agg.stack_id(&[f], true) {
                        agg.add_count(s, None, 1, sample.ts_ns);
                    }
                }
                self.total_frames += agg.frames.len() - before;
            }
        }
        self.total_counts += agg.counts.len() - before_counts;
        self.scratch = ids;
    }

    fn count_span_sample(&mut self, id: SpanId, ts_ns: u64) {
        if let Some(rec) = self.spans.get_mut(&id) {
            if rec.finished.is_some() {
                self.counters.late_span_samples += 1;
            }
            rec.samples += 1;
            rec.last_sample_ns = rec.last_sample_ns.max(ts_ns);
            return;
        }
        if !self.make_room_for_span() {
            self.counters.span_table_full += 1;
            return;
        }
        // The span finished before this sample came back from the worker.
        let finished = self
            .unsampled
            .take(id)
            .map(|s| (Arc::from(s.name), s.trace_id, s.end_ns.max(ts_ns)));
        let end = finished.as_ref().map(|f| f.2);
        self.spans.insert(
            id,
            SpanRecord {
                samples: 1,
                last_sample_ns: ts_ns,
                finished,
            },
        );
        if let Some(end) = end {
            self.counters.late_span_samples += 1;
            self.push_finished(id, end);
        }
    }

    /// Room for one more span record: evicts the oldest finished span if
    /// the table is full. False when every record is a span in progress.
    fn make_room_for_span(&mut self) -> bool {
        while self.spans.len() >= self.cfg.max_spans.max(1) {
            let Some((id, _)) = self.finished.pop_front() else {
                return false;
            };
            if self.spans.get(&id).is_some_and(|r| r.finished.is_some()) {
                self.spans.remove(&id);
            }
        }
        true
    }

    /// A span finished: its name labels its samples, and for server spans
    /// (the only ones samples are attributed to) the sampled CPU time so
    /// far is returned for the span's attributes ([`SpanCpu::attributes`]).
    /// Client spans get `None`.
    pub fn span_finished(&mut self, span: &Span) -> Option<SpanCpu> {
        if span.kind != SpanKind::Server || !span.span_id.is_valid() {
            return None;
        }
        let period = self.cfg.period_ns();
        let Some(rec) = self.spans.get_mut(&span.span_id) else {
            // No sample (nearly every span): kept in the ring for a late one.
            self.unsampled
                .push(span.span_id, span.trace_id, span.end_ns, span.name());
            return Some(SpanCpu {
                samples: 0,
                cpu_ns: 0,
            });
        };
        let samples = rec.samples;
        if rec.finished.is_none() {
            let end = span.end_ns.max(rec.last_sample_ns);
            rec.finished = Some((Arc::from(span.name()), span.trace_id, end));
            self.counters.spans_with_samples += 1;
            self.push_finished(span.span_id, end);
        }
        Some(SpanCpu {
            samples,
            cpu_ns: samples.saturating_mul(period),
        })
    }

    /// Queues a span of `spans` that just finished, for expiry and
    /// eviction; stale queue entries (records removed otherwise) stay
    /// bounded.
    fn push_finished(&mut self, id: SpanId, end_ns: u64) {
        self.finished.push_back((id, end_ns));
        let cap = self.cfg.max_spans.max(1).saturating_mul(2);
        while self.finished.len() > cap {
            if let Some((id, _)) = self.finished.pop_front() {
                if self.spans.get(&id).is_some_and(|r| r.finished.is_some()) {
                    self.spans.remove(&id);
                }
            }
        }
    }

    /// Drains the samples of the interval ending at monotonic time
    /// `now_ns`: one profile per service with samples, sorted by service
    /// name. Span-attributed stacks whose span has not finished yet stay
    /// for the next call (up to [`AggregateConfig::name_wait_ns`]).
    pub fn take(&mut self, now_ns: u64) -> Vec<ServiceProfile> {
        let services = std::mem::take(&mut self.services);
        let mut out = Vec::new();
        for (service, agg) in services {
            let (profile, carried) = self.drain(&service, agg, now_ns);
            if let Some(p) = profile {
                out.push(p);
            }
            if let Some(c) = carried {
                self.services.insert(service, c);
            }
        }
        self.total_counts = self.services.values().map(|a| a.counts.len()).sum();
        self.total_frames = self.services.values().map(|a| a.frames.len()).sum();
        self.expire_spans(now_ns);
        self.counters.profiles += out.len() as u64;
        out.sort_by(|a, b| a.service.cmp(&b.service));
        out
    }

    fn drain(
        &mut self,
        service: &Arc<str>,
        agg: ServiceAgg,
        now_ns: u64,
    ) -> (Option<ServiceProfile>, Option<ServiceAgg>) {
        let mut carried: Option<ServiceAgg> = None;
        // Old frame id -> new frame id in the profile.
        let mut remap: Vec<u32> = vec![u32::MAX; agg.frames.len()];
        let mut frames: Vec<Frame> = Vec::new();
        let mut stacks: Vec<StackCount> = Vec::new();
        let mut first_ns = u64::MAX;
        for ((stack, span), c) in agg.counts {
            let Some(ids) = agg.stacks.get(stack as usize) else {
                continue;
            };
            let label = match span {
                None => None,
                Some(id) => match self.spans.get(&id).and_then(|r| r.finished.as_ref()) {
                    Some((name, trace, _)) => Some(SpanLabel {
                        span_id: id,
                        trace_id: Some(*trace),
                        name: Some(name.clone()),
                    }),
                    None if now_ns.saturating_sub(c.first_ns) < self.cfg.name_wait_ns => {
                        // Wait for the span's name.
                        let next =
                            carried.get_or_insert_with(|| ServiceAgg::new(agg.resource.clone()));
                        let mut new_ids = Vec::with_capacity(ids.len());
                        for &f in ids.iter() {
                            if let Some(frame) = agg.frames.get(f as usize) {
                                if let Some(nf) = next.frame_id(frame, true) {
                                    new_ids.push(nf);
                                }
                            }
                        }
                        if let Some(s) = next.stack_id(&new_ids, true) {
                            next.add_count(s, span, c.count, c.first_ns);
                        }
                        continue;
                    }
                    None => {
                        self.counters.unnamed_span_stacks += 1;
                        Some(SpanLabel {
                            span_id: id,
                            trace_id: None,
                            name: None,
                        })
                    }
                },
            };
            let mut out_ids = Vec::with_capacity(ids.len());
            for &f in ids.iter() {
                let Some(slot) = remap.get_mut(f as usize) else {
                    continue;
                };
                if *slot == u32::MAX {
                    let Some(frame) = agg.frames.get(f as usize) else {
                        continue;
                    };
                    *slot = frames.len() as u32;
                    frames.push(frame.clone());
                }
                out_ids.push(*slot);
            }
            first_ns = first_ns.min(c.first_ns);
            stacks.push(StackCount {
                frames: out_ids,
                span: label,
                count: c.count,
            });
        }
        let profile = (!stacks.is_empty()).then(|| {
            let start = self.clock.unix_ns(first_ns.min(now_ns));
            ServiceProfile {
                service: service.clone(),
                resource: agg.resource.clone(),
                start_unix_ns: start,
                end_unix_ns: self.clock.unix_ns(now_ns).max(start),
                frequency_hz: self.cfg.frequency_hz,
                period_ns: self.cfg.period_ns(),
                frames,
                stacks,
            }
        });
        (profile, carried)
    }

    fn expire_spans(&mut self, now_ns: u64) {
        let retention = self.cfg.finished_retention_ns;
        self.unsampled.expire(now_ns.saturating_sub(retention));
        while let Some(&(id, end)) = self.finished.front() {
            if now_ns.saturating_sub(end) <= retention {
                break;
            }
            self.finished.pop_front();
            if self.spans.get(&id).is_some_and(|r| r.finished.is_some()) {
                self.spans.remove(&id);
            }
        }
        let ttl = self.cfg.unfinished_ttl_ns;
        let before = self.spans.len();
        self.spans
            .retain(|_, r| r.finished.is_some() || now_ns.saturating_sub(r.last_sample_ns) <= ttl);
        self.counters.spans_never_finished += (before - self.spans.len()) as u64;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::export::console::tests::{res, span};

    pub(crate) fn frame(function: &str, module: &str) -> Frame {
        Frame {
            function: Some(Arc::from(function)),
            module: Arc::from(module),
            offset: 0x10,
            kernel: false,
            line: None,
        }
    }

    /// A sample at `ts_ms` whose stack is `names`, leaf first.
    pub(crate) fn sample(ts_ms: u64, names: &[&str]) -> StackSample {
        StackSample {
            pid: 7,
            tid: 7,
            ts_ns: ts_ms * 1_000_000,
            frames: names.iter().map(|n| frame(n, "app")).collect(),
            truncated: false,
        }
    }

    fn names(p: &ServiceProfile, s: &StackCount) -> Vec<String> {
        s.frames
            .iter()
            .map(|&f| {
                p.frames[f as usize]
                    .function
                    .as_deref()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    fn ms(n: u64) -> u64 {
        n * 1_000_000
    }

    #[test]
    fn attributes_samples_to_spans_and_names_them() {
        let mut p = Profiles::new(AggregateConfig::default(), Clock::new());
        let r = Arc::new(res("checkout"));
        let a = span(1, 1, None, 100, 200);
        let b = span(2, 2, None, 150, 400);
        for t in [110, 120, 130] {
            p.add(
                &sample(t, &["hot", "handler", "main"]),
                r.clone(),
                Some(a.span_id),
            );
        }
        p.add(&sample(140, &["idle", "main"]), r.clone(), None);
        p.add(&sample(141, &["idle", "main"]), r.clone(), None);
        p.add(
            &sample(160, &["hot", "handler", "main"]),
            r.clone(),
            Some(b.span_id),
        );

        let cpu = p.span_finished(&a).unwrap();
        let period = p.config().period_ns();
        assert_eq!(period, 10_101_010);
        assert_eq!(
            cpu,
            SpanCpu {
                samples: 3,
                cpu_ns: 3 * period
            }
        );
        let attrs = cpu.attributes(a.span_id, true);
        assert!(attrs.contains(&(ATTR_PROFILE_ID, AttrValue::Str("0101010101010101".into()))));
        assert!(attrs.contains(&(ATTR_CPU_SAMPLES, AttrValue::Int(3))));
        assert!(attrs.contains(&(ATTR_CPU_TIME_NS, AttrValue::Int(3 * period as i64))));
        assert_eq!(
            cpu.attributes(a.span_id, false).len(),
            2,
            "no link without a backend"
        );

        // B has not finished: its stack waits for its name.
        let out = p.take(ms(1000));
        assert_eq!(out.len(), 1);
        let prof = &out[0];
        assert_eq!(&*prof.service, "checkout");
        assert_eq!(prof.samples(), 5);
        assert_eq!(prof.frequency_hz, 99);
        assert!(prof.end_unix_ns > prof.start_unix_ns);
        let mut stacks: Vec<(Vec<String>, Option<String>, u64)> = prof
            .stacks
            .iter()
            .map(|s| {
                (
                    names(prof, s),
                    s.span
                        .as_ref()
                        .map(|l| l.name.as_deref().unwrap().to_string()),
                    s.count,
                )
            })
            .collect();
        stacks.sort();
        assert_eq!(
            stacks,
            [
                (
                    vec!["hot".into(), "handler".into(), "main".into()],
                    Some("GET /s1".into()),
                    3
                ),
                (vec!["idle".into(), "main".into()], None, 2),
            ]
        );
        // Frames deduplicated: hot, handler, main, idle.
        assert_eq!(prof.frames.len(), 4);
        assert_eq!(prof.spans()[0].0.trace_id, Some(a.trace_id));

        let cpu_b = p.span_finished(&b).unwrap();
        assert_eq!(cpu_b.samples, 1);
        let out = p.take(ms(2000));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].samples(), 1);
        let l = out[0].stacks[0].span.clone().unwrap();
        assert_eq!((l.span_id, l.name.as_deref()), (b.span_id, Some("GET /s2")));
        // Nothing left.
        assert!(p.take(ms(3000)).is_empty());
        assert_eq!(p.stacks_held(), 0);
        let c = p.counters();
        assert_eq!((c.samples, c.span_samples, c.spans_with_samples), (6, 4, 2));
        assert_eq!(c.profiles, 2);
    }

    #[test]
    fn spans_that_never_finish() {
        let cfg = AggregateConfig {
            name_wait_ns: ms(5000),
            unfinished_ttl_ns: ms(20_000),
            ..AggregateConfig::default()
        };
        let mut p = Profiles::new(cfg, Clock::new());
        let r = Arc::new(res("svc"));
        let id = SpanId([9; 8]);
        p.add(&sample(100, &["f"]), r.clone(), Some(id));
        assert!(p.take(ms(1000)).is_empty(), "waits for the name");
        let out = p.take(ms(5200));
        assert_eq!(out.len(), 1);
        let l = out[0].stacks[0].span.clone().unwrap();
        assert_eq!((l.span_id, l.name, l.trace_id), (id, None, None));
        assert_eq!(p.counters().unnamed_span_stacks, 1);
        assert_eq!(p.span_records(), 1);
        p.take(ms(30_000));
        assert_eq!(p.span_records(), 0);
        assert_eq!(p.counters().spans_never_finished, 1);
    }

    #[test]
    fn client_spans_and_late_samples() {
        let mut p = Profiles::new(AggregateConfig::default(), Clock::new());
        let r = Arc::new(res("svc"));
        let mut client = span(1, 3, Some(1), 100, 200);
        client.kind = SpanKind::Client;
        assert_eq!(p.span_finished(&client), None);
        // A server span with no samples: zero CPU, no profile link.
        let s = span(1, 4, None, 100, 200);
        let cpu = p.span_finished(&s).unwrap();
        assert_eq!(
            cpu,
            SpanCpu {
                samples: 0,
                cpu_ns: 0
            }
        );
        assert!(!cpu.has_profile());
        assert_eq!(cpu.attributes(s.span_id, true).len(), 2);
        // A sample arriving after the span finished is labelled with its
        // name at once, and counted as late.
        p.add(&sample(150, &["f"]), r.clone(), Some(s.span_id));
        let out = p.take(ms(1000));
        let l = out[0].stacks[0].span.clone().unwrap();
        assert_eq!(l.name.as_deref(), Some("GET /s4"));
        assert_eq!(p.counters().late_span_samples, 1);
        // All-zero span ids are no span.
        p.add(&sample(150, &["f"]), r, Some(SpanId::default()));
        assert!(p.take(ms(2000))[0].stacks[0].span.is_none());
    }

    #[test]
    fn stack_tables_are_bounded() {
        let cfg = AggregateConfig {
            max_stacks_per_service: 4,
            max_services: 2,
            ..AggregateConfig::default()
        };
        let mut p = Profiles::new(cfg, Clock::new());
        let r = Arc::new(res("svc"));
        let fs: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
        for n in &fs {
            p.add(&sample(100, &[n, "main"]), r.clone(), Some(SpanId([1; 8])));
        }
        // Known stacks still count once the table is full.
        p.add(
            &sample(101, &["f0", "main"]),
            r.clone(),
            Some(SpanId([1; 8])),
        );
        assert_eq!(p.counters().stack_overflow, 6);
        assert_eq!(p.stacks_held(), 5, "4 + the overflow stack");
        p.add(&sample(100, &["x"]), Arc::new(res("b")), None);
        p.add(&sample(100, &["x"]), Arc::new(res("c")), None);
        assert_eq!(p.counters().dropped_service_limit, 1);
        // The span's CPU time counts every sample.
        let mut s = span(1, 1, None, 0, 200);
        s.span_id = SpanId([1; 8]);
        assert_eq!(p.span_finished(&s).unwrap().samples, 11);
        let out = p.take(ms(1000));
        assert_eq!(out.len(), 2);
        let svc = out.iter().find(|o| &*o.service == "svc").unwrap();
        assert_eq!(svc.samples(), 11, "totals kept");
        let over = svc
            .stacks
            .iter()
            .find(|st| names(svc, st) == [OVERFLOW_FRAME])
            .unwrap();
        assert_eq!((over.count, over.span.is_none()), (6, true));
        let f0 = svc
            .stacks
            .iter()
            .find(|st| names(svc, st) == ["f0", "main"])
            .unwrap();
        assert_eq!(f0.count, 2);
        // The tables are empty again: new stacks fit.
        p.add(&sample(2000, &["new"]), r, None);
        assert_eq!(p.take(ms(3000))[0].stacks.len(), 1);
    }

    #[test]
    fn frames_are_bounded_and_stacks_cut() {
        let cfg = AggregateConfig {
            max_frames: 3,
            max_depth: 5,
            ..AggregateConfig::default()
        };
        let mut p = Profiles::new(cfg, Clock::new());
        let r = Arc::new(res("svc"));
        p.add(&sample(1, &["a", "b"]), r.clone(), None);
        // A third and fourth frame: past the frame bound.
        p.add(&sample(2, &["c", "d"]), r.clone(), None);
        assert_eq!(p.counters().stack_overflow, 1);
        let out = p.take(ms(100));
        let total: u64 = out[0].stacks.iter().map(|s| s.count).sum();
        assert_eq!(total, 2);

        let mut p = Profiles::new(
            AggregateConfig {
                max_depth: 5,
                ..AggregateConfig::default()
            },
            Clock::new(),
        );
        let deep: Vec<String> = (0..9).map(|i| format!("f{i}")).collect();
        let deep: Vec<&str> = deep.iter().map(String::as_str).collect();
        p.add(&sample(1, &deep), r.clone(), None);
        let mut t = sample(2, &["x", "y"]);
        t.truncated = true;
        p.add(&t, r.clone(), None);
        p.add(&sample(3, &[]), r, None);
        let out = p.take(ms(100));
        let mut got: Vec<Vec<String>> = out[0].stacks.iter().map(|s| names(&out[0], s)).collect();
        got.sort();
        assert_eq!(
            got,
            [
                vec!["[unknown]"],
                vec!["f0", "f1", "f2", "f3", "[truncated]"],
                vec!["x", "y", "[truncated]"],
            ]
        );
        let c = p.counters();
        assert_eq!((c.depth_cut, c.truncated_samples), (1, 1));
        assert_eq!(out[0].frames.iter().filter(|f| is_synthetic(f)).count(), 2);
    }

    #[test]
    fn span_table_is_bounded() {
        let cfg = AggregateConfig {
            max_spans: 2,
            ..AggregateConfig::default()
        };
        let mut p = Profiles::new(cfg, Clock::new());
        let r = Arc::new(res("svc"));
        let (a, b, c) = (
            span(1, 1, None, 0, 10),
            span(1, 2, None, 0, 10),
            span(1, 3, None, 0, 10),
        );
        p.add(&sample(1, &["f"]), r.clone(), Some(a.span_id));
        p.add(&sample(1, &["f"]), r.clone(), Some(b.span_id));
        // Both in progress: no room for c.
        p.add(&sample(2, &["f"]), r.clone(), Some(c.span_id));
        assert_eq!(p.counters().span_table_full, 1);
        assert_eq!(p.span_records(), 2);
        // a finishes: its record is the first to go for a new span.
        assert_eq!(p.span_finished(&a).unwrap().samples, 1);
        p.add(&sample(3, &["f"]), r.clone(), Some(c.span_id));
        assert_eq!(p.span_records(), 2);
        assert_eq!(p.span_finished(&c).unwrap().samples, 1);
        assert_eq!(p.span_finished(&b).unwrap().samples, 1);
        assert!(p.span_records() <= 2);
    }

    #[test]
    fn spans_without_samples_are_held_apart_and_bounded() {
        let cfg = AggregateConfig {
            max_spans: 4,
            name_wait_ns: ms(5000),
            ..AggregateConfig::default()
        };
        let mut p = Profiles::new(cfg, Clock::new());
        let r = Arc::new(res("svc"));
        // One span with a sample in progress, then many that finish with
        // none: those never take its room, and at most max_spans stay.
        let busy = span(1, 200, None, 0, 10);
        p.add(&sample(1, &["f"]), r.clone(), Some(busy.span_id));
        for id in 1..=100u8 {
            assert_eq!(
                p.span_finished(&span(1, id, None, 0, 5)).unwrap().samples,
                0
            );
        }
        assert_eq!(p.span_records(), 1 + 4);
        assert_eq!(p.counters().span_table_full, 0);
        // A late sample of a recent one is named; of an old one, only
        // once the wait is over, without a name.
        p.add(&sample(2, &["f"]), r.clone(), Some(SpanId([100; 8])));
        p.add(&sample(2, &["g"]), r.clone(), Some(SpanId([3; 8])));
        assert_eq!(p.counters().late_span_samples, 1);
        assert_eq!(p.span_finished(&busy).unwrap().samples, 1);
        let labels: Vec<_> = p.take(ms(1000))[0].spans();
        assert_eq!(labels.len(), 2);
        let named = labels
            .iter()
            .find(|(l, _)| l.span_id == SpanId([100; 8]))
            .unwrap();
        assert_eq!(named.0.name.as_deref(), Some("GET /s100"));
        assert_eq!(named.0.trace_id, Some(TraceId([1; 16])));
        let out = p.take(ms(10_000));
        let old = out[0].stacks[0].span.clone().unwrap();
        assert_eq!((old.span_id, old.name), (SpanId([3; 8]), None));
        assert_eq!(p.counters().unnamed_span_stacks, 1);
    }

    #[test]
    fn one_profile_per_service_across_processes() {
        let mut p = Profiles::new(AggregateConfig::default(), Clock::new());
        let r1 = Arc::new(res("svc"));
        let r2 = Arc::new(Resource::new([
            ("service.name".to_string(), AttrValue::Str("svc".into())),
            ("process.pid".to_string(), AttrValue::Int(8)),
        ]));
        p.add(&sample(1, &["f"]), r1, None);
        p.add(&sample(2, &["f"]), r2.clone(), None);
        let out = p.take(ms(10));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].stacks.len(), 1);
        assert_eq!(out[0].stacks[0].count, 2);
        assert!(Arc::ptr_eq(&out[0].resource, &r2), "latest resource");
    }

    #[test]
    fn resolves_flags() {
        let (cfg, interval) = AggregateArgs::default().resolve(99).unwrap();
        assert_eq!((cfg.frequency_hz, interval), (99, 10_000));
        assert!(cfg.name_wait_ns >= 2 * interval * 1_000_000);
        let bad = AggregateArgs {
            profile_interval_ms: 10,
            ..AggregateArgs::default()
        };
        assert!(bad
            .resolve(99)
            .unwrap_err()
            .to_string()
            .contains("--profile-interval-ms"));
        let bad = AggregateArgs {
            profile_max_stacks: 0,
            ..AggregateArgs::default()
        };
        assert!(bad
            .resolve(99)
            .unwrap_err()
            .to_string()
            .contains("--profile-max-stacks"));
        assert_eq!(
            AggregateArgs::default().resolve(0).unwrap_err().to_string(),
            "the sampling frequency must be between 1 and 100000 Hz, not 0"
        );
    }
}
