//! Recording and replaying the kernel's records: `tracer run --record FILE`
//! writes every ring-buffer record as it was read; [`Replay`] feeds such a
//! file through the user-space stages (connection table, HTTP/1 parser,
//! correlator) with no kernel, for benchmarks and tests.
//!
//! File format: a sequence of `[u32 little-endian length][record bytes]`.
use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use protocols::stream::Chunk;
use tracer_common::{Dir, Record};

use crate::{
    conntrack::{ConnInfo, ConnLimits, Conns, Sink},
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
}

struct SpanCount {
    http: HttpSpans,
}

impl Sink for SpanCount {
    fn chunk(&mut self, conn: &ConnInfo, dir: Dir, chunk: &Chunk<'_>) {
        self.http.chunk(conn, dir, chunk);
    }

    fn closed(&mut self, conn: &ConnInfo) {
        let now = self.http.now_ns();
        self.http.closed(conn, now);
    }
}

/// The user-space pipeline without a kernel.
pub struct Replay {
    conns: Conns,
    sink: SpanCount,
    stats: ReplayStats,
    next_sweep: u64,
}

/// How often (in record time) the replay sweeps timeouts, as the agent does.
const SWEEP_NS: u64 = 50_000_000;

impl Replay {
    /// A fresh pipeline with the default settings and a fixed id seed.
    pub fn new() -> Replay {
        Replay {
            conns: Conns::new(ConnLimits::default()),
            sink: SpanCount {
                http: HttpSpans::new(correlate::Config::default(), 1),
            },
            stats: ReplayStats::default(),
            next_sweep: 0,
        }
    }

    /// Feeds one record; finished spans go to `out`.
    pub fn record(&mut self, bytes: &[u8], out: &mut impl FnMut(correlate::Span)) {
        self.stats.records += 1;
        let ts = match Record::parse(bytes) {
            Ok(Record::SockOp(op)) => {
                self.conns.on_op(&op, &mut self.sink);
                op.ts_ns
            }
            Ok(Record::Segment(hdr, data)) => {
                self.conns.on_segment(&hdr, data, &mut self.sink);
                hdr.ts_ns
            }
            Ok(Record::ConnState(st)) => {
                self.conns.on_state(&st, &mut self.sink);
                st.ts_ns
            }
            Ok(Record::Sample(hdr, _)) => hdr.ts_ns,
            Ok(Record::SockTotals(t)) => {
                self.conns.on_totals(&t);
                t.ts_ns
            }
            Err(_) => {
                self.stats.bad_records += 1;
                return;
            }
        };
        if ts >= self.next_sweep {
            self.next_sweep = ts + SWEEP_NS;
            self.sweep(ts, out);
        }
    }

    fn sweep(&mut self, now: u64, out: &mut impl FnMut(correlate::Span)) {
        self.conns.sweep(now, &mut self.sink);
        for span in self.sink.http.poll(now) {
            self.stats.spans += 1;
            out(span);
        }
    }

    /// Ends the replay: flushes every connection and every held span.
    pub fn finish(mut self, out: &mut impl FnMut(correlate::Span)) -> ReplayStats {
        self.conns.flush_all(&mut self.sink);
        for span in self.sink.http.flush() {
            self.stats.spans += 1;
            out(span);
        }
        self.stats.messages = self.sink.http.counters().messages;
        self.stats
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
