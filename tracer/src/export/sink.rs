//! The pipeline's last stage in one value: finished span + pid in, to OTLP
//! or to the terminal out, with the resource of the pid attached.
use std::{io::Write, time::Duration};

use correlate::{Pid, Span};

use super::{
    config::{ExportConfig, Protocol},
    console::{ConsoleCounters, ConsoleSink, Format, DEFAULT_QUIET_NS},
    otlp::{ExportError, Exporter},
    resource::{KernelName, ResourceCache},
};
use crate::{
    clock::Clock,
    metrics::{self, Metric, Report, Show, Stage},
};

enum Output<W: Write> {
    Otlp(Box<Exporter>),
    Console(ConsoleSink<W>),
    /// Nowhere to go (no endpoint, nothing printed): counted only.
    Discard(u64),
}

/// Where finished spans go: the OTLP [`Exporter`] when an endpoint is
/// configured, else a [`ConsoleSink`] on `out`.
pub struct SpanSink<W: Write> {
    resources: ResourceCache,
    out: Output<W>,
}

impl<W: Write> SpanSink<W> {
    /// Starts the exporter for `export`, or prints `format` to `out` when
    /// it is `None` (and only counts spans when `format` is `None` too). `resources` is usually [`ResourceCache::from_env`].
    pub fn start(
        export: Option<ExportConfig>,
        format: Option<Format>,
        out: W,
        clock: Clock,
        resources: ResourceCache,
    ) -> Result<SpanSink<W>, ExportError> {
        let out = match export {
            Some(cfg) => {
                tracing::info!(
                    endpoint = cfg.endpoint,
                    protocol = match cfg.protocol {
                        Protocol::Grpc => "grpc",
                        Protocol::HttpProtobuf => "http/protobuf",
                    },
                    "exporting spans over OTLP"
                );
                Output::Otlp(Box::new(Exporter::start(cfg, clock)?))
            }
            None => match format {
                Some(format) => {
                    Output::Console(ConsoleSink::new(out, format, clock, DEFAULT_QUIET_NS))
                }
                None => Output::Discard(0),
            },
        };
        Ok(SpanSink { resources, out })
    }

    /// Describes a process now, while it is alive (call on the first event
    /// of a new pid: short-lived processes are gone when their spans end).
    /// `hint` is the kernel's name of the thread that made the record,
    /// used when /proc no longer has the process.
    pub fn saw_pid(&mut self, pid: Pid, hint: Option<KernelName<'_>>, now_ns: u64) {
        self.resources.get_hinted(pid, hint, now_ns);
    }

    /// A process started another program at `at_ns` (see
    /// [`ResourceCache::exec`]).
    pub fn exec(&mut self, pid: Pid, at_ns: u64) {
        self.resources.exec(pid, at_ns);
    }

    /// The resource of a process for what it did at `at_ns` (read from
    /// /proc on first sight; see [`ResourceCache::get_at`]).
    pub fn resource_at(
        &mut self,
        pid: Pid,
        at_ns: u64,
        now_ns: u64,
    ) -> std::sync::Arc<super::resource::Resource> {
        self.resources.get_at(pid, at_ns, now_ns)
    }

    /// Takes a finished span; `now_ns` is monotonic now. Never blocks.
    pub fn span(&mut self, span: &Span, now_ns: u64) {
        let resource = self.resources.get_at(span.pid, span.start_ns, now_ns);
        match &mut self.out {
            Output::Otlp(e) => e.submit(span, &resource),
            Output::Console(c) => c.on_span(span, &resource, now_ns),
            Output::Discard(n) => *n += 1,
        }
    }

    /// Periodic work (e.g. every 50-100 ms): prints the traces that are
    /// quiet, or sends the spans that waited the export interval.
    pub fn tick(&mut self, now_ns: u64) {
        match &mut self.out {
            Output::Console(c) => c.poll(now_ns),
            Output::Otlp(e) => e.tick(),
            Output::Discard(_) => {}
        }
    }

    /// Every counter of this stage, as metrics.
    pub fn report(&self, out: &mut Vec<Metric>) {
        self.resources.counters().report(out);
        match &self.out {
            Output::Otlp(e) => {
                let c = e.counters();
                out.push(Metric::counter(
                    Stage::Export,
                    "spans_submitted",
                    "Spans handed to the OTLP exporter.",
                    Show::Headline,
                    c.spans_submitted,
                ));
                out.push(Metric::gauge(
                    Stage::Export,
                    "spans_pending",
                    "Spans encoded into a request not closed yet.",
                    Show::Detail,
                    c.spans_pending as f64,
                ));
                metrics::report_worker(&c.worker, Stage::Export, "otlp", out);
            }
            Output::Console(c) => {
                let ConsoleCounters {
                    spans,
                    traces_printed,
                    traces_printed_early,
                    write_errors,
                } = c.counters();
                let m = [
                    ("printed_spans", "Spans printed.", Show::Headline, spans),
                    (
                        "printed_traces",
                        "Traces printed.",
                        Show::Detail,
                        traces_printed,
                    ),
                    (
                        "printed_traces_early",
                        "Traces printed before they were quiet (bounds).",
                        Show::Detail,
                        traces_printed_early,
                    ),
                    (
                        "print_errors",
                        "Failed writes to the terminal.",
                        Show::Anomaly,
                        write_errors,
                    ),
                ];
                for (name, help, show, v) in m {
                    out.push(Metric::counter(Stage::Export, name, help, show, v));
                }
            }
            Output::Discard(n) => out.push(Metric::counter(
                Stage::Export,
                "discarded_spans",
                "Spans made with nowhere to go (no endpoint, nothing printed).",
                Show::Headline,
                *n,
            )),
        }
    }

    /// Sends or prints what is held (OTLP: within `timeout`); the final
    /// counters are then in [`report`](Self::report)'s.
    pub fn finish(&mut self, timeout: Duration) {
        match &mut self.out {
            Output::Otlp(e) => {
                e.shutdown(timeout);
            }
            Output::Console(c) => c.flush_all(),
            Output::Discard(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::console::tests::span;
    use crate::export::resource::tests::TempDir;

    fn value(s: &SpanSink<Vec<u8>>, name: &str) -> f64 {
        let mut m = Vec::new();
        s.report(&mut m);
        m.iter().filter(|x| x.name == name).map(|x| x.value).sum()
    }

    #[test]
    fn console_by_default() {
        let t = TempDir::new("sink");
        let cache = ResourceCache::new(&t.0, vec![], 16);
        let mut s =
            SpanSink::start(None, Some(Format::Tree), Vec::new(), Clock::new(), cache).unwrap();
        s.saw_pid(Pid(101), None, 0);
        s.span(&span(1, 1, None, 0, 2), 0);
        s.tick(DEFAULT_QUIET_NS - 1);
        assert_eq!(value(&s, "printed_traces"), 0.0);
        s.tick(DEFAULT_QUIET_NS);
        s.finish(Duration::from_secs(1));
        assert_eq!(value(&s, "printed_spans"), 1.0);
        assert_eq!(value(&s, "printed_traces"), 1.0);
        assert_eq!(value(&s, "described"), 0.0);
        assert_eq!(value(&s, "unknown"), 1.0);
    }
}
