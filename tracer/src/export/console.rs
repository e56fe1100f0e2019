//! What a newcomer sees when no OTLP endpoint is configured: finished traces
//! in the terminal.
//!
//! [`Format::Tree`] groups spans by trace and prints each trace as an
//! indented tree once it has been quiet for a while (spans of one trace are
//! finished at different times, in different processes):
//!
//! ```text
//! trace 0af7651916cd43dd8448eb211c80319c (3 spans, 12.345 ms) at 10:01:02.123456 UTC
//!   frontend  GET /api/users/{id}  server  200  12.345 ms
//!   ├─ frontend  GET /users/{id}  client  200  10.100 ms
//!   │  └─ users  GET /users/{id}  server  200  9.800 ms
//!   └─ frontend  POST /audit  client  503 ERROR  1.000 ms
//! ```
//!
//! Children sit under their parents, ordered by start time; a span whose
//! parent the agent did not see (another host, an instrumented caller) is a
//! root marked `(parent <id> not seen)`. Memory is bounded: at a bound the
//! trace that has been quiet longest is printed early (counted).
//!
//! [`Format::Json`] prints one JSON object per span per line as spans finish.
use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    io::Write,
};

use correlate::{AttrRef, AttrValue, ParentSource, Span, SpanId, SpanKind, Status, TraceId};
use serde_json::{json, Map, Value};

use super::resource::Resource;
use crate::clock::Clock;

/// Default quiet delay before a trace is printed.
pub const DEFAULT_QUIET_NS: u64 = 1_000_000_000;
/// Default bound on traces held.
pub const DEFAULT_MAX_TRACES: usize = 1024;
/// Default bound on spans held (all traces).
pub const DEFAULT_MAX_SPANS: usize = 16_384;
/// Default bound on spans held for one trace.
pub const DEFAULT_MAX_SPANS_PER_TRACE: usize = 2048;
/// Tree prefixes stop growing past this depth.
const MAX_INDENT_DEPTH: usize = 32;

/// How spans are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Traces as indented trees, printed when quiet.
    Tree,
    /// One JSON object per span per line, printed as spans finish.
    Json,
}

/// Counters of the console sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleCounters {
    /// Spans received.
    pub spans: u64,
    /// Traces printed (tree format).
    pub traces_printed: u64,
    /// Of those, printed before they were quiet because a bound was reached
    /// (later spans of such a trace are printed as another tree).
    pub traces_printed_early: u64,
    /// Writes that failed (e.g. a closed pipe); output is lost, not fatal.
    pub write_errors: u64,
}

impl std::fmt::Display for ConsoleCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "spans={} traces_printed={} traces_printed_early={} write_errors={}",
            self.spans, self.traces_printed, self.traces_printed_early, self.write_errors
        )
    }
}

struct Held {
    span: Span,
    service: String,
}

struct Pending {
    spans: Vec<Held>,
    /// Arrival time of the latest span.
    last_ns: u64,
    /// Arrival order of the trace (ties in printing order).
    seq: u64,
}

/// Prints finished spans to a writer (normally stdout).
pub struct ConsoleSink<W: Write> {
    out: W,
    format: Format,
    clock: Clock,
    quiet_ns: u64,
    max_traces: usize,
    max_spans: usize,
    max_spans_per_trace: usize,
    traces: HashMap<TraceId, Pending>,
    held: usize,
    seq: u64,
    counters: ConsoleCounters,
    buf: String,
}

impl<W: Write> ConsoleSink<W> {
    /// A sink writing `format` to `out`; a trace is printed once no span of
    /// it arrived for `quiet_delay_ns`.
    pub fn new(out: W, format: Format, clock: Clock, quiet_delay_ns: u64) -> Self {
        ConsoleSink {
            out,
            format,
            clock,
            quiet_ns: quiet_delay_ns,
            max_traces: DEFAULT_MAX_TRACES,
            max_spans: DEFAULT_MAX_SPANS,
            max_spans_per_trace: DEFAULT_MAX_SPANS_PER_TRACE,
            traces: HashMap::new(),
            held: 0,
            seq: 0,
            counters: ConsoleCounters::default(),
            buf: String::with_capacity(4096),
        }
    }

    /// Sets the memory bounds (each at least 1).
    #[cfg(test)]
    pub(crate) fn with_limits(
        mut self,
        max_traces: usize,
        max_spans: usize,
        per_trace: usize,
    ) -> Self {
        self.max_traces = max_traces.max(1);
        self.max_spans = max_spans.max(1);
        self.max_spans_per_trace = per_trace.max(1);
        self
    }

    /// The counters.
    pub fn counters(&self) -> ConsoleCounters {
        self.counters
    }

    /// Spans held, waiting for their trace to be quiet.
    #[cfg(test)]
    pub(crate) fn held_spans(&self) -> usize {
        self.held
    }

    /// Takes a finished span of the process described by `resource`;
    /// `now_ns` is the monotonic time of arrival.
    pub fn on_span(&mut self, span: &Span, resource: &Resource, now_ns: u64) {
        self.counters.spans += 1;
        if self.format == Format::Json {
            let line = json_line(span, resource, self.clock);
            self.write_out(&line);
            return;
        }
        while self.held >= self.max_spans && !self.traces.is_empty() {
            self.print_stalest();
        }
        if !self.traces.contains_key(&span.trace_id) {
            while self.traces.len() >= self.max_traces {
                self.print_stalest();
            }
        }
        let seq = &mut self.seq;
        let p = self.traces.entry(span.trace_id).or_insert_with(|| {
            *seq += 1;
            Pending {
                spans: Vec::new(),
                last_ns: now_ns,
                seq: *seq,
            }
        });
        p.spans.push(Held {
            span: span.clone(),
            service: resource.service_name().to_string(),
        });
        p.last_ns = p.last_ns.max(now_ns);
        let full = p.spans.len() >= self.max_spans_per_trace;
        self.held += 1;
        if full {
            self.print_trace(span.trace_id, true);
        }
    }

    /// Prints every trace quiet since `now_ns - quiet delay`, oldest first,
    /// and flushes the writer.
    pub fn poll(&mut self, now_ns: u64) {
        let mut due: Vec<(u64, TraceId)> = self
            .traces
            .iter()
            .filter(|(_, p)| p.last_ns.saturating_add(self.quiet_ns) <= now_ns)
            .map(|(id, p)| (p.seq, *id))
            .collect();
        due.sort_unstable();
        for (_, id) in due {
            self.print_trace(id, false);
        }
        self.flush();
    }

    /// Prints everything held (at exit) and flushes the writer.
    pub fn flush_all(&mut self) {
        let mut all: Vec<(u64, TraceId)> = self.traces.iter().map(|(id, p)| (p.seq, *id)).collect();
        all.sort_unstable();
        for (_, id) in all {
            self.print_trace(id, false);
        }
        self.flush();
    }

    /// Flushes the writer.
    pub fn flush(&mut self) {
        if self.out.flush().is_err() {
            self.counters.write_errors += 1;
        }
    }

    /// The writer (tests).
    #[cfg(test)]
    pub(crate) fn get_ref(&self) -> &W {
        &self.out
    }

    fn write_out(&mut self, s: &str) {
        if self.out.write_all(s.as_bytes()).is_err() {
            self.counters.write_errors += 1;
        }
    }

    fn print_stalest(&mut self) {
        let stalest = self
            .traces
            .iter()
            .min_by_key(|(_, p)| (p.last_ns, p.seq))
            .map(|(id, _)| *id);
        if let Some(id) = stalest {
            self.print_trace(id, true);
        }
    }

    fn print_trace(&mut self, id: TraceId, early: bool) {
        let Some(p) = self.traces.remove(&id) else {
            return;
        };
        self.held -= p.spans.len();
        self.counters.traces_printed += 1;
        if early {
            self.counters.traces_printed_early += 1;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        render_tree(&mut buf, id, &p.spans, self.clock);
        self.write_out(&buf);
        self.buf = buf;
    }
}

fn kind_str(k: SpanKind) -> &'static str {
    match k {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
    }
}

fn ms(ns: u64) -> String {
    format!("{}.{:03} ms", ns / 1_000_000, ns % 1_000_000 / 1000)
}

/// The status code shown on a span line: HTTP status, else `grpc=N`.
fn code(span: &Span) -> Option<String> {
    if let Some(c) = span
        .attr("http.response.status_code")
        .and_then(AttrRef::as_int)
    {
        return Some(c.to_string());
    }
    span.attr("rpc.grpc.status_code")
        .and_then(AttrRef::as_int)
        .map(|c| format!("grpc={c}"))
}

fn span_line(out: &mut String, prefix: &str, h: &Held, note: &str) {
    let s = &h.span;
    let _ = write!(
        out,
        "{prefix}{}  {}  {}",
        h.service,
        s.name(),
        kind_str(s.kind)
    );
    match (code(s), &s.status) {
        (Some(c), Status::Unset) => {
            let _ = write!(out, "  {c}");
        }
        (Some(c), Status::Error(_)) => {
            let _ = write!(out, "  {c} ERROR");
        }
        (None, Status::Error(_)) => out.push_str("  ERROR"),
        (None, Status::Unset) => {}
    }
    if let Status::Error(msg) = &s.status {
        if !msg.is_empty() {
            let _ = write!(out, " {msg:?}");
        }
    }
    let _ = write!(out, "  {}", ms(s.end_ns.saturating_sub(s.start_ns)));
    out.push_str(note);
    out.push('\n');
}

/// Renders one trace: a header line, then each root's tree, then a blank
/// line. Never panics, whatever the parent links (duplicates, cycles).
fn render_tree(out: &mut String, id: TraceId, spans: &[Held], clock: Clock) {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| (spans[i].span.start_ns, spans[i].span.span_id));
    let mut by_id: HashMap<SpanId, usize> = HashMap::with_capacity(spans.len());
    for &i in &order {
        by_id.entry(spans[i].span.span_id).or_insert(i);
    }
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots: Vec<(usize, String)> = Vec::new();
    for &i in &order {
        let s = &spans[i].span;
        match s.parent_span_id {
            None => roots.push((i, String::new())),
            Some(p) => match by_id.get(&p) {
                Some(&pi) if pi != i => children.entry(pi).or_default().push(i),
                Some(_) => roots.push((i, "  (its own parent)".into())),
                None => roots.push((i, format!("  (parent {p} not seen)"))),
            },
        }
    }
    let start = spans.iter().map(|h| h.span.start_ns).min().unwrap_or(0);
    let end = spans.iter().map(|h| h.span.end_ns).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "trace {id} ({} span{}, {}) at {} UTC",
        spans.len(),
        if spans.len() == 1 { "" } else { "s" },
        ms(end.saturating_sub(start)),
        clock.format_wall(start)
    );
    let mut seen: HashSet<usize> = HashSet::with_capacity(spans.len());
    let emit_root = |out: &mut String, root: usize, note: &str, seen: &mut HashSet<usize>| {
        // Iterative depth-first walk: (span, line prefix, child prefix, depth).
        let mut stack: Vec<(usize, String, String, usize)> =
            vec![(root, "  ".into(), "  ".into(), 0)];
        let mut first = true;
        while let Some((i, line_prefix, child_prefix, depth)) = stack.pop() {
            if !seen.insert(i) {
                continue;
            }
            span_line(out, &line_prefix, &spans[i], if first { note } else { "" });
            first = false;
            let kids: Vec<usize> = children
                .get(&i)
                .map(|k| k.iter().copied().filter(|k| !seen.contains(k)).collect())
                .unwrap_or_default();
            let n = kids.len();
            // Pushed in reverse so the earliest child is printed first.
            for (j, &k) in kids.iter().enumerate().rev() {
                let last = j + 1 == n;
                let (branch, cont) = if depth >= MAX_INDENT_DEPTH {
                    ("· ", "")
                } else if last {
                    ("└─ ", "   ")
                } else {
                    ("├─ ", "│  ")
                };
                stack.push((
                    k,
                    format!("{child_prefix}{branch}"),
                    format!("{child_prefix}{cont}"),
                    depth + 1,
                ));
            }
        }
    };
    for (root, note) in &roots {
        emit_root(out, *root, note, &mut seen);
    }
    // Spans in a parent cycle were reached from no root.
    for &i in &order {
        if !seen.contains(&i) {
            emit_root(out, i, "  (parent link cycle)", &mut seen);
        }
    }
    out.push('\n');
}

fn attr_ref_json(v: AttrRef<'_>) -> Value {
    match v {
        AttrRef::Str(s) => Value::from(s),
        AttrRef::Int(i) => Value::from(i),
    }
}

fn attr_json(v: &AttrValue) -> Value {
    match v {
        AttrValue::Str(s) => Value::String(s.clone()),
        AttrValue::Int(i) => Value::from(*i),
    }
}

fn parent_source_str(p: ParentSource) -> &'static str {
    match p {
        ParentSource::Root => "root",
        ParentSource::Mirror => "mirror",
        ParentSource::Nat => "nat",
        ParentSource::Thread => "thread",
        ParentSource::RequestId => "request_id",
        ParentSource::Forwarded => "forwarded",
        ParentSource::ThreadContext => "thread_context",
        ParentSource::Runtime => "runtime",
        ParentSource::Header => "header",
    }
}

/// One span as a JSON line (with its newline).
fn json_line(span: &Span, resource: &Resource, clock: Clock) -> String {
    let attributes: Map<String, Value> = span
        .attributes()
        .map(|(k, v)| (k.to_string(), attr_ref_json(v)))
        .collect();
    let res: Map<String, Value> = resource
        .attrs()
        .iter()
        .map(|(k, v)| (k.clone(), attr_json(v)))
        .collect();
    let (status, message) = match &span.status {
        Status::Unset => ("UNSET", ""),
        Status::Error(m) => ("ERROR", m.as_str()),
    };
    let v = json!({
        "trace_id": span.trace_id.to_string(),
        "span_id": span.span_id.to_string(),
        "parent_span_id": span.parent_span_id.map(|p| p.to_string()),
        "parent_source": parent_source_str(span.parent_source),
        "kind": match span.kind { SpanKind::Server => "SERVER", SpanKind::Client => "CLIENT" },
        "name": span.name(),
        "start_unix_nano": clock.unix_ns(span.start_ns),
        "end_unix_nano": clock.unix_ns(span.end_ns.max(span.start_ns)),
        "duration_ns": span.end_ns.saturating_sub(span.start_ns),
        "status": status,
        "status_message": message,
        "pid": span.pid.0,
        "tid": span.tid.0,
        "attributes": attributes,
        "resource": res,
    });
    let mut line = v.to_string();
    line.push('\n');
    line
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use correlate::{Pid, Tid};

    pub(crate) fn span(trace: u8, id: u8, parent: Option<u8>, start_ms: u64, end_ms: u64) -> Span {
        let mut s = Span::new(
            TraceId([trace; 16]),
            SpanId([id; 8]),
            SpanKind::Server,
            &format!("GET /s{id}"),
        );
        s.parent_span_id = parent.map(|p| SpanId([p; 8]));
        s.parent_source = if parent.is_some() {
            ParentSource::Mirror
        } else {
            ParentSource::Root
        };
        s.start_ns = start_ms * 1_000_000;
        s.end_ns = end_ms * 1_000_000;
        s.pid = Pid(100 + id as u32);
        s.tid = Tid(100 + id as u32);
        s.push_int("http.response.status_code", 200);
        s
    }

    pub(crate) fn res(name: &str) -> Resource {
        Resource::new([
            ("service.name".to_string(), AttrValue::Str(name.into())),
            ("process.pid".to_string(), AttrValue::Int(7)),
        ])
    }

    fn text(sink: &ConsoleSink<Vec<u8>>) -> String {
        String::from_utf8(sink.get_ref().clone()).unwrap()
    }

    #[test]
    fn prints_a_tree_when_quiet() {
        let clock = Clock::new();
        let mut c = ConsoleSink::new(Vec::new(), Format::Tree, clock, 1000);
        let (fe, users) = (res("frontend"), res("users"));
        let mut root = span(1, 1, None, 100, 112);
        root.set_name("GET /api/users/{id}");
        let mut c1 = span(1, 2, Some(1), 101, 111);
        c1.kind = SpanKind::Client;
        let s1 = span(1, 3, Some(2), 102, 110);
        let mut c2 = span(1, 4, Some(1), 111, 112);
        c2.kind = SpanKind::Client;
        c2.set_name("POST /audit");
        c2.clear_attributes();
        c2.push_int("http.response.status_code", 503);
        c2.status = Status::Error(String::new());
        let mut orphan = span(1, 5, Some(9), 105, 106);
        orphan.clear_attributes();
        orphan.status = Status::Error("connection reset".into());
        // Arrive out of order, at different times.
        c.on_span(&s1, &users, 10);
        c.on_span(&c2, &fe, 20);
        c.on_span(&orphan, &users, 25);
        c.on_span(&root, &fe, 30);
        c.on_span(&c1, &fe, 40);
        c.poll(1039);
        assert_eq!(text(&c), "", "not quiet yet");
        c.poll(1040);
        let want = format!(
            "trace 01010101010101010101010101010101 (5 spans, 12.000 ms) at {} UTC\n\
             \x20 frontend  GET /api/users/{{id}}  server  200  12.000 ms\n\
             \x20 ├─ frontend  GET /s2  client  200  10.000 ms\n\
             \x20 │  └─ users  GET /s3  server  200  8.000 ms\n\
             \x20 └─ frontend  POST /audit  client  503 ERROR  1.000 ms\n\
             \x20 users  GET /s5  server  ERROR \"connection reset\"  1.000 ms  (parent 0909090909090909 not seen)\n\
             \n",
            clock.format_wall(100_000_000)
        );
        assert_eq!(text(&c), want);
        assert_eq!(c.held_spans(), 0);
        assert_eq!(c.counters().traces_printed, 1);
    }

    #[test]
    fn bounds_print_early_and_odd_links_do_not_panic() {
        let clock = Clock::new();
        let mut c = ConsoleSink::new(Vec::new(), Format::Tree, clock, 1000).with_limits(2, 3, 100);
        let r = res("a");
        c.on_span(&span(1, 1, None, 0, 1), &r, 0);
        c.on_span(&span(2, 1, None, 0, 1), &r, 1);
        c.on_span(&span(3, 1, None, 0, 1), &r, 2); // third trace: trace 1 goes
        assert_eq!(c.counters().traces_printed_early, 1);
        assert!(text(&c).starts_with("trace 0101"));
        c.on_span(&span(3, 2, Some(1), 0, 1), &r, 3); // 3 spans held
        c.on_span(&span(3, 3, Some(3), 0, 1), &r, 4); // self-parent; span bound: trace 2 goes
        assert_eq!(c.counters().traces_printed_early, 2);
        // A cycle: 4 -> 5 -> 4.
        c.on_span(&span(4, 4, Some(5), 0, 1), &r, 5);
        c.on_span(&span(4, 5, Some(4), 0, 1), &r, 6);
        c.flush_all();
        let t = text(&c);
        assert!(t.contains("(parent link cycle)"), "{t}");
        assert!(t.contains("(its own parent)"), "{t}");
        assert_eq!(c.held_spans(), 0);
        assert_eq!(c.counters().spans, 7);
    }

    #[test]
    fn deep_chains_are_cheap() {
        let mut c = ConsoleSink::new(Vec::new(), Format::Tree, Clock::new(), 0);
        let r = res("a");
        for i in 0..200u32 {
            let mut s = span(1, 0, None, i as u64, 1000);
            s.span_id = SpanId((i as u64 + 1).to_be_bytes());
            s.parent_span_id = (i > 0).then(|| SpanId((i as u64).to_be_bytes()));
            c.on_span(&s, &r, 0);
        }
        c.poll(1);
        let t = text(&c);
        assert_eq!(t.lines().count(), 202);
        assert!(t.lines().all(|l| l.len() < 400));
    }

    #[test]
    fn json_lines() {
        let clock = Clock::new();
        let mut c = ConsoleSink::new(Vec::new(), Format::Json, clock, 1000);
        let mut s = span(0xab, 2, Some(1), 5, 7);
        s.status = Status::Error("bad".into());
        s.push_str("url.path", "/x");
        c.on_span(&s, &res("svc"), 0);
        c.on_span(&span(0xab, 1, None, 4, 8), &res("svc"), 0);
        let t = text(&c);
        let lines: Vec<Value> = t
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        let v = &lines[0];
        assert_eq!(v["trace_id"], "ab".repeat(16));
        assert_eq!(v["span_id"], "0202020202020202");
        assert_eq!(v["parent_span_id"], "0101010101010101");
        assert_eq!(v["kind"], "SERVER");
        assert_eq!(v["name"], "GET /s2");
        assert_eq!(v["start_unix_nano"], clock.unix_ns(5_000_000));
        assert_eq!(v["end_unix_nano"], clock.unix_ns(7_000_000));
        assert_eq!(v["duration_ns"], 2_000_000);
        assert_eq!(v["status"], "ERROR");
        assert_eq!(v["status_message"], "bad");
        assert_eq!(v["attributes"]["http.response.status_code"], 200);
        assert_eq!(v["attributes"]["url.path"], "/x");
        assert_eq!(v["resource"]["service.name"], "svc");
        assert_eq!(v["resource"]["process.pid"], 7);
        assert_eq!(lines[1]["parent_span_id"], Value::Null);
    }
}
