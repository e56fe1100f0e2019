//! Recording and replaying the kernel's records: `tracer run --record FILE`
//! writes every ring-buffer record as it was read; [`Replay`] feeds such a
//! file through the agent's own [`Dispatcher`] with no kernel, for
//! benchmarks and tests.
//!
//! File format: a sequence of `[u32 little-endian length][record bytes]`.
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use correlate::{AttrValue, Pid, Span};

use crate::{
    clock::Clock,
    conntrack::ConnLimits,
    dispatch::{Dispatcher, SpanOut, Stages},
    export::{
        encode::{BatchLimits, TraceEncoder},
        resource::{KernelName, Resource},
    },
    http_spans::HttpSpans,
};

/// Appends records to a file.
pub struct Recorder {
    out: BufWriter<File>,
    /// Write errors (the recording is then incomplete).
    pub errors: u64,
}

impl Recorder {
    /// Creates (truncates) the file.
    pub fn create(path: &Path) -> std::io::Result<Recorder> {
        Ok(Recorder {
            out: BufWriter::with_capacity(1 << 20, File::create(path)?),
            errors: 0,
        })
    }

    /// Appends one record.
    pub fn write(&mut self, record: &[u8]) {
        let len = (record.len() as u32).to_le_bytes();
        if self
            .out
            .write_all(&len)
            .and_then(|_| self.out.write_all(record))
            .is_err()
        {
            self.errors += 1;
        }
    }

    /// Flushes to the file.
    pub fn flush(&mut self) {
        if self.out.flush().is_err() {
            self.errors += 1;
        }
    }
}

/// The records of a recording, in order; stops at a truncated tail.
pub fn records(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let rec = rest.get(4..4 + len)?;
        rest = &rest[4 + len..];
        Some(rec)
    })
}

/// What a replay produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Records read.
    pub records: u64,
    /// Records that did not decode.
    pub bad_records: u64,
    /// HTTP messages parsed.
    pub messages: u64,
    /// Spans finished.
    pub spans: u64,
    /// OTLP requests encoded (with [`Replay::encoding`]).
    pub requests: u64,
    /// Their protobuf bytes.
    pub request_bytes: u64,
}

/// A replay's span destination: spans are kept until the caller takes
/// them; processes are described by the name the kernel recorded (a replay
/// never reads this host's /proc: the recorded pids are not its processes).
#[derive(Default)]
struct Collect {
    spans: Vec<Span>,
    resources: foldhash::HashMap<Pid, Arc<Resource>>,
    /// Set: spans are encoded into OTLP requests (as the agent's exporter
    /// does) instead of kept.
    encoder: Option<TraceEncoder>,
    requests: u64,
    request_bytes: u64,
    spans_encoded: u64,
}

impl Collect {
    fn take_requests(&mut self) {
        if let Some(enc) = &mut self.encoder {
            while let Some(r) = enc.take() {
                self.requests += 1;
                self.request_bytes += r.body.len() as u64;
                enc.recycle(r.body);
            }
        }
    }

    /// A replay's process: named for its kernel name, described once.
    fn describe(&mut self, pid: Pid, hint: Option<KernelName<'_>>) -> Arc<Resource> {
        let comm = hint.map(|h| h.name);
        self.resources
            .entry(pid)
            .or_insert_with(|| {
                Arc::new(Resource::new([
                    (
                        "service.name".to_string(),
                        AttrValue::Str(comm.unwrap_or("unknown_service").to_string()),
                    ),
                    ("process.pid".to_string(), AttrValue::Int(i64::from(pid.0))),
                ]))
            })
            .clone()
    }
}

impl SpanOut for Collect {
    fn saw_pid(&mut self, pid: Pid, hint: Option<KernelName<'_>>, _now_ns: u64) {
        self.describe(pid, hint);
    }

    fn exec(&mut self, pid: Pid, _at_ns: u64) {
        self.resources.remove(&pid);
    }

    fn resource_at(&mut self, pid: Pid, _at_ns: u64, _now_ns: u64) -> Arc<Resource> {
        self.describe(pid, None)
    }

    fn span(&mut self, span: &Span, _now_ns: u64) {
        if self.encoder.is_none() {
            self.spans.push(span.clone());
            return;
        }
        let res = self.describe(span.pid, None);
        if let Some(enc) = &mut self.encoder {
            // A span with an all-zero id is never made by the correlator.
            let _ = enc.push(span, &res);
        }
        self.spans_encoded += 1;
        self.take_requests();
    }

    fn tick(&mut self, _now_ns: u64) {}
}

/// The user-space pipeline without a kernel: the agent's own dispatcher fed
/// from a recording, time driven by the records' timestamps.
pub struct Replay {
    dispatcher: Dispatcher<Collect>,
    spans: u64,
    next_sweep: u64,
    next_drain: u64,
}

/// How often (in record time) the replay sweeps, as the agent does.
const SWEEP_NS: u64 = 50_000_000;

/// How often (in record time) the replay ends a drain, as the agent does
/// at its default `--drain-interval-ms`.
const DRAIN_NS: u64 = 10_000_000;

impl Replay {
    /// A fresh pipeline with the default settings and a fixed id seed;
    /// finished spans are handed to the caller.
    pub fn new() -> Replay {
        Replay::with_sink(Collect::default())
    }

    /// The same pipeline ending where the agent's exporter does: spans are
    /// encoded into OTLP `ExportTraceServiceRequest` bodies (not sent), and
    /// not handed to the caller.
    pub fn encoding() -> Replay {
        Replay::with_sink(Collect {
            encoder: Some(TraceEncoder::new(Clock::new(), BatchLimits::default())),
            ..Collect::default()
        })
    }

    fn with_sink(sink: Collect) -> Replay {
        let stages = Stages::new(
            None,
            // Loopback only: the recorded host's other addresses are not
            // known, and this host's must not change the outcome.
            Some(HttpSpans::new(
                correlate::Config::default(),
                1,
                &[Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()],
            )),
            sink,
            None,
            None,
        );
        Replay {
            dispatcher: Dispatcher::new(stages, ConnLimits::default()),
            spans: 0,
            next_sweep: 0,
            next_drain: 0,
        }
    }

    fn take(&mut self, out: &mut impl FnMut(Span)) {
        let sink = &mut self.dispatcher.stages_mut().spans;
        self.spans += sink.spans.len() as u64 + std::mem::take(&mut sink.spans_encoded);
        sink.spans.drain(..).for_each(out);
    }

    /// Feeds one record; finished spans go to `out`.
    pub fn record(&mut self, bytes: &[u8], out: &mut impl FnMut(Span)) {
        let Some(ts) = self.dispatcher.record(bytes) else {
            return;
        };
        let sweep = ts >= self.next_sweep;
        if sweep {
            self.next_sweep = ts + SWEEP_NS;
            self.dispatcher.sweep(ts);
            self.take(out);
        }
        // The agent's work after each drain: closed connections retired,
        // the parsers' requests (silence, skip a body) taken to the
        // streams. There is no kernel to apply the map updates to.
        if sweep || ts >= self.next_drain {
            self.next_drain = ts + DRAIN_NS;
            let _ = self.dispatcher.after_drain(ts);
        }
    }

    /// Ends the replay: flushes every connection and every held span.
    pub fn finish(mut self, out: &mut impl FnMut(Span)) -> ReplayStats {
        self.dispatcher.finish(0);
        self.take(out);
        let sink = &mut self.dispatcher.stages_mut().spans;
        if let Some(enc) = &mut sink.encoder {
            enc.flush();
        }
        sink.take_requests();
        let (requests, request_bytes) = (sink.requests, sink.request_bytes);
        let reader = *self.dispatcher.reader();
        ReplayStats {
            records: reader.records,
            bad_records: reader.bad_records,
            messages: self
                .dispatcher
                .stages()
                .http
                .as_ref()
                .map_or(0, |h| h.counters().messages),
            spans: self.spans,
            requests,
            request_bytes,
        }
    }
}

impl Default for Replay {
    fn default() -> Self {
        Replay::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_files_round_trip_and_stop_at_a_cut_tail() {
        let dir = std::env::temp_dir().join(format!("tracer-rec-{}", std::process::id()));
        let mut r = Recorder::create(&dir).unwrap();
        r.write(b"abc");
        r.write(b"");
        r.write(b"defgh");
        r.flush();
        let mut bytes = std::fs::read(&dir).unwrap();
        let _ = std::fs::remove_file(&dir);
        let got: Vec<&[u8]> = records(&bytes).collect();
        assert_eq!(got, vec![&b"abc"[..], b"", b"defgh"]);
        bytes.truncate(bytes.len() - 2);
        assert_eq!(records(&bytes).count(), 2);
    }
}
