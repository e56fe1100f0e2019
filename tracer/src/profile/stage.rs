//! The profiling stage of the pipeline: raw samples -> unwound, symbolized
//! stacks -> attributed to the server span in progress on the sampled
//! thread (rule 6 of DESIGN.md) -> aggregated per service and span ->
//! Pyroscope and/or flame graphs; and, for every finished server span, its
//! sampled CPU time and profile link as span attributes.
use std::{sync::Arc, time::Duration};

use correlate::{Pid, Span, SpanId};
use tracer_common::SampleHeader;

use super::{
    aggregate::{AggregateConfig, Profiles},
    flame::{FlameConfig, FlameGraphs},
    pyroscope::{PyroscopeConfig, PyroscopeExporter},
    Profiler, ProfilerConfig,
};
use crate::{clock::Clock, export::resource::Resource};

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
}

/// Samples in, profiles and span attributes out.
pub struct ProfileStage {
    profiler: Profiler,
    profiles: Profiles,
    flame: Option<FlameGraphs>,
    pyroscope: Option<PyroscopeExporter>,
    interval_ns: u64,
    next_take: u64,
    /// Samples whose stack could not be decoded.
    pub bad_samples: u64,
}

impl ProfileStage {
    /// Starts the exporters; `now_ns` is monotonic now.
    pub fn start(s: &ProfileSettings, clock: Clock, now_ns: u64) -> Result<ProfileStage, String> {
        let flame = match &s.flame {
            Some(cfg) => Some(
                FlameGraphs::new(cfg.clone()).map_err(|e| format!("flame graph directory: {e}"))?,
            ),
            None => None,
        };
        let pyroscope = match &s.pyroscope {
            Some(cfg) => Some(PyroscopeExporter::start(cfg.clone()).map_err(|e| e.to_string())?),
            None => None,
        };
        let mut profiler = Profiler::new(ProfilerConfig::default());
        // Reads the kernel's symbols now rather than on the first sample,
        // inside the event loop.
        profiler.warm_up();
        let interval_ns = s.interval.as_nanos() as u64;
        Ok(ProfileStage {
            profiler,
            profiles: Profiles::new(s.aggregate.clone(), clock),
            flame,
            pyroscope,
            interval_ns,
            next_take: now_ns + interval_ns,
            bad_samples: 0,
        })
    }

    /// One CPU sample: unwound, symbolized, attributed to `span` (the
    /// server span in progress on the sampled thread, if any), aggregated
    /// under the process's resource.
    pub fn sample(
        &mut self,
        hdr: &SampleHeader,
        stack: &[u8],
        span: impl FnOnce(Pid, correlate::Tid, u64) -> Option<SpanId>,
        resource: impl FnOnce(Pid) -> Arc<Resource>,
    ) {
        let Some(s) = self.profiler.on_sample(hdr, stack) else {
            self.bad_samples += 1;
            return;
        };
        let span = span(Pid(s.pid), correlate::Tid(s.tid), s.ts_ns);
        self.profiles.add(&s, resource(Pid(s.pid)), span);
    }

    /// A span is about to be exported: adds its sampled CPU time and, when
    /// profiles go to Pyroscope and it has samples, the profile link.
    pub fn span_finished(&mut self, span: &mut Span) {
        if let Some(cpu) = self.profiles.span_finished(span) {
            let attrs = cpu.attributes(span.span_id, self.pyroscope.is_some());
            span.attributes.extend(attrs);
        }
    }

    /// Pushes the profiles of the interval that ended, when one did.
    pub fn tick(&mut self, now_ns: u64) {
        if now_ns < self.next_take {
            return;
        }
        self.next_take = now_ns + self.interval_ns;
        self.flush(now_ns);
        self.profiler.sweep();
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

    /// The counters, on one line.
    pub fn counters(&self) -> String {
        let mut line = format!(
            "profile: bad_samples={} {:?} {:?} {:?}; aggregate: {}",
            self.bad_samples,
            self.profiler.counters(),
            self.profiler.unwind_counters(),
            self.profiler.symbol_counters(),
            self.profiles.counters()
        );
        if let Some(f) = &self.flame {
            line.push_str(&format!("; flame: {}", f.counters()));
        }
        if let Some(e) = &self.pyroscope {
            line.push_str(&format!("; pyroscope: {}", e.counters()));
        }
        line
    }

    /// Agent exit: the last profiles out, within `timeout`.
    pub fn finish(mut self, now_ns: u64, timeout: Duration) -> String {
        self.flush(now_ns);
        let mut line = self.counters();
        if let Some(e) = self.pyroscope.take() {
            line.push_str(&format!("; pyroscope final: {}", e.shutdown(timeout)));
        }
        line
    }
}
