//! The pipeline's last stage in one value: finished span + pid in, to OTLP
//! or to the terminal out, with the resource of the pid attached.
use std::{io::Write, time::Duration};

use correlate::{Pid, Span};

use super::{
    config::{ExportConfig, Protocol},
    console::{ConsoleSink, Format, DEFAULT_QUIET_NS},
    otlp::{ExportCounters, Exporter},
    resource::ResourceCache,
};
use crate::clock::Clock;

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
    ) -> Result<SpanSink<W>, String> {
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
                Output::Otlp(Box::new(
                    Exporter::start(cfg, clock).map_err(|e| e.to_string())?,
                ))
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
    /// `comm` is the kernel's name of the process, used when /proc no
    /// longer has it.
    pub fn saw_pid(&mut self, pid: Pid, comm: Option<&str>, now_ns: u64) {
        self.resources.get_hinted(pid, comm, now_ns);
    }

    /// The resource of a process (read from /proc on first sight).
    pub fn resource(
        &mut self,
        pid: Pid,
        comm: Option<&str>,
        now_ns: u64,
    ) -> std::sync::Arc<super::resource::Resource> {
        self.resources.get_hinted(pid, comm, now_ns)
    }

    /// Takes a finished span; `now_ns` is monotonic now. Never blocks.
    pub fn span(&mut self, span: Span, now_ns: u64) {
        let resource = self.resources.get(span.pid, now_ns);
        match &mut self.out {
            Output::Otlp(e) => e.submit(&span, &resource),
            Output::Console(c) => c.on_span(&span, &resource, now_ns),
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

    /// The OTLP exporter's counters, when spans go to OTLP.
    pub fn export_counters(&self) -> Option<ExportCounters> {
        match &self.out {
            Output::Otlp(e) => Some(e.counters()),
            _ => None,
        }
    }

    /// The counters as one line, for the agent's report.
    pub fn counters(&self) -> String {
        let res = self.resources.counters();
        match &self.out {
            Output::Otlp(e) => format!("export: {}; resources: {res}", e.counters()),
            Output::Console(c) => format!("console: {}; resources: {res}", c.counters()),
            Output::Discard(n) => format!("discarded: spans={n}; resources: {res}"),
        }
    }

    /// Sends or prints what is held (OTLP: within `timeout`) and returns
    /// the final counters line.
    pub fn finish(self, timeout: Duration) -> String {
        let res = self.resources.counters();
        match self.out {
            Output::Otlp(e) => format!("export: {}; resources: {res}", e.shutdown(timeout)),
            Output::Console(mut c) => {
                c.flush_all();
                format!("console: {}; resources: {res}", c.counters())
            }
            Output::Discard(n) => format!("discarded: spans={n}; resources: {res}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::console::tests::span;
    use crate::export::resource::tests::TempDir;

    #[test]
    fn console_by_default() {
        let t = TempDir::new("sink");
        let cache = ResourceCache::new(&t.0, vec![], 16);
        let mut s =
            SpanSink::start(None, Some(Format::Tree), Vec::new(), Clock::new(), cache).unwrap();
        s.saw_pid(Pid(101), None, 0);
        s.span(span(1, 1, None, 0, 2), 0);
        s.tick(DEFAULT_QUIET_NS - 1);
        assert!(
            s.counters().contains("traces_printed=0"),
            "{}",
            s.counters()
        );
        s.tick(DEFAULT_QUIET_NS);
        let line = s.finish(Duration::from_secs(1));
        assert!(
            line.starts_with("console: spans=1 traces_printed=1 "),
            "{line}"
        );
        assert!(line.contains("resources: described=0 unknown=1"), "{line}");
    }
}
