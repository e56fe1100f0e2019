//! The agent's own metrics: every counter of every stage, read as typed
//! values by one reporter, and shown three ways: a Prometheus text
//! endpoint (`--metrics-addr`), the `--stats-interval` log lines and the
//! exit summary (a short table grouped by stage, with the non-zero
//! anomalies called out).
//!
//! Each stage's counters struct is listed here once, field by field, with
//! a help text and whether it is a headline (shown in the table), an
//! anomaly (shown only when non-zero, as something lost or wrong) or
//! detail (endpoint only). The lists destructure their struct
//! exhaustively: a new counter that is not listed does not compile.
use std::fmt::Write as _;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

/// Which stage a metric belongs to (its name prefix and table row).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// The eBPF programs and the ring buffer.
    Kernel,
    /// Records read from the ring buffer.
    Reader,
    /// The connection table.
    Connections,
    /// Byte streams rebuilt from packets and calls.
    Streams,
    /// TLS plaintext (uprobes on TLS libraries).
    Tls,
    /// HTTP parsing.
    Http,
    /// Spans and parents.
    Correlation,
    /// Spans and profiles leaving the agent.
    Export,
    /// CPU profiles.
    Profiles,
    /// The agent process itself.
    Agent,
}

impl Stage {
    /// Lower-case name (metric prefix).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Kernel => "kernel",
            Stage::Reader => "reader",
            Stage::Connections => "connections",
            Stage::Streams => "streams",
            Stage::Tls => "tls",
            Stage::Http => "http",
            Stage::Correlation => "correlation",
            Stage::Export => "export",
            Stage::Profiles => "profiles",
            Stage::Agent => "agent",
        }
    }
}

/// How a metric is shown in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    /// Always, in its stage's row.
    Headline,
    /// Only when non-zero, in the anomalies: something lost or wrong.
    Anomaly,
    /// Only on the endpoint.
    Detail,
}

/// Counter (only goes up) or gauge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A running total.
    Counter,
    /// A value now.
    Gauge,
}

/// One value.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    /// Its stage.
    pub stage: Stage,
    /// Name within the stage (`tracer_{stage}_{name}` on the endpoint).
    pub name: &'static str,
    /// One line for the endpoint's HELP.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// How the table shows it.
    pub show: Show,
    /// One label, for families such as drops by reason.
    pub label: Option<(&'static str, &'static str)>,
    /// The value.
    pub value: f64,
}

impl Metric {
    /// A counter.
    pub fn counter(
        stage: Stage,
        name: &'static str,
        help: &'static str,
        show: Show,
        value: u64,
    ) -> Metric {
        Metric {
            stage,
            name,
            help,
            kind: Kind::Counter,
            show,
            label: None,
            value: value as f64,
        }
    }

    /// A gauge.
    pub fn gauge(
        stage: Stage,
        name: &'static str,
        help: &'static str,
        show: Show,
        value: f64,
    ) -> Metric {
        Metric {
            stage,
            name,
            help,
            kind: Kind::Gauge,
            show,
            label: None,
            value,
        }
    }

    /// The same metric with a label.
    pub fn with_label(mut self, key: &'static str, value: &'static str) -> Metric {
        self.label = Some((key, value));
        self
    }
}

/// A stage's counters, as metrics.
pub trait Report {
    /// Appends every value to `out`.
    fn report(&self, out: &mut Vec<Metric>);
}

/// Lists a counters struct's fields (exhaustively) as counters of `$stage`,
/// then what `$derived` adds (values computed from them). A field reported
/// under another name says `field as "name"` (names are unique per stage).
macro_rules! report_counters {
    (@name $field:ident) => { stringify!($field) };
    (@name $field:ident $name:literal) => { $name };
    ($ty:ty, $stage:expr, { $($field:ident $(as $name:literal)?: $show:ident, $help:literal;)* }) => {
        report_counters!($ty, $stage, { $($field $(as $name)?: $show, $help;)* }, |_c, _out| {});
    };
    ($ty:ty, $stage:expr, { $($field:ident $(as $name:literal)?: $show:ident, $help:literal;)* }, $derived:expr) => {
        impl Report for $ty {
            fn report(&self, out: &mut Vec<Metric>) {
                let Self { $($field),* } = self;
                $(
                    out.push(Metric::counter(
                        $stage,
                        report_counters!(@name $field $($name)?),
                        $help,
                        Show::$show,
                        *$field,
                    ));
                )*
                let derived: fn(&$ty, &mut Vec<Metric>) = $derived;
                derived(self, out);
            }
        }
    };
}

report_counters!(crate::dispatch::ReaderCounters, Stage::Reader, {
    records: Headline, "Records read from the ring buffer.";
    bad_records: Anomaly, "Records that did not decode (dropped).";
});

report_counters!(crate::conntrack::ConnCounters, Stage::Connections, {
    opened: Headline, "Connections tracked.";
    closed: Detail, "Connections removed after their close.";
    reaped_crowded: Detail, "Closed connections removed before their full linger: more than the bound were lingering (a storm of short connections).";
    evicted_idle: Detail, "Connections removed after being idle.";
    evicted_full: Anomaly, "Connections removed because the table was full.";
    bad_records: Anomaly, "Records with an unknown direction (dropped).";
    loopback_mirrored: Detail, "Loopback packets handed to the receiving socket.";
    loopback_parked: Detail, "Loopback packets held until the receiving socket was known.";
    loopback_parked_dropped: Anomaly, "Held loopback packets dropped (no receiver in time, or no room).";
    silenced_calls: Detail, "Send/receive calls of silenced sockets, not reported one by one (from the sockets' totals at close).";
    silenced_bytes: Detail, "Bytes those calls moved.";
    uncopied_bytes: Headline, "Payload bytes the kernel did not copy (silenced sockets, skipped bodies).";
    silenced_not_parsed: Headline, "Sockets silenced because they carry nothing the agent parses.";
    silenced_tls: Detail, "Sockets silenced because they carry TLS ciphertext.";
    silenced_agent_peer: Detail, "Sockets silenced as the local receiving end of the agent's own exports.";
    agent_peer_records: Detail, "Records of those sockets dropped before the kernel's silence landed (the agent's output read back, not a loss).";
    silence_lifted: Detail, "Silence verdicts lifted.";
    skips: Detail, "Bodies the kernel was told to skip.";
    h2_marked: Detail, "Sockets the kernel was told speak HTTP/2 (it walks their frames and copies every header block).";
    ctl_full: Anomaly, "Per-socket requests not made: the kernel's control map was full (the socket stays fully reported).";
});

report_counters!(crate::lanes::LaneCounters, Stage::Reader, {
    shed_op: Anomaly, "Call records passed over unread because the agent was behind.";
    shed_segment: Anomaly, "Packet records passed over unread because the agent was behind.";
    records_late: Detail, "Records handed out after younger records of another lane.";
    frames_corrupt: Anomaly, "Lane frames that made no sense (the rest of that lane was skipped).";
    peak_fill_percent: Detail, "The most any lane had waiting, in percent of its size.";
    longest_gap_ms: Detail, "The longest time between two drains (ms).";
    samples_unordered: Anomaly, "CPU samples handed out ahead of their time (too many waited).";
});

report_counters!(protocols::stream::StreamCounters, Stage::Streams, {
    segments: Detail, "Packet payload records.";
    ops: Detail, "Send/receive call records.";
    chunks: Detail, "Ranges delivered to the parsers.";
    bytes_captured: Headline, "Payload bytes copied and delivered.";
    bytes_truncated: Headline, "Payload bytes beyond the copy (length known, content not).";
    bytes_hole: Anomaly, "Payload bytes lost (gaps in the captured stream).";
    bytes_skipped: Headline, "Body bytes not copied because the parser knew their length.";
    bytes_unattributed: Anomaly, "Bytes delivered without the call that moved them.";
    bytes_duplicate: Detail, "Bytes seen twice (retransmits, overlaps).";
    segments_dropped_limit: Anomaly, "Packet ranges dropped at a stream's bound.";
    ops_dropped_limit: Anomaly, "Call records dropped at a stream's bound.";
    ops_stale: Detail, "Call records before the delivered position.";
    ops_overlapping: Detail, "Call records overlapping another.";
    ops_without_bytes: Detail, "Calls delivered without any packet coverage.";
    chunks_with_holes: Anomaly, "Delivered ranges with a gap.";
    chunks_forced: Detail, "Ranges delivered early because a bound was near.";
    records_unplaceable: Anomaly, "Records whose sequence number could not be placed.";
    skips: Detail, "Ranges the parsers asked to skip.";
    skips_refused: Detail, "Skips refused at a stream's bound (the bytes were delivered as usual).";
});

report_counters!(crate::tls::streams::TlsCounters, Stage::Tls, {
    calls: Headline, "TLS library calls whose plaintext reached the parsers.";
    bytes: Detail, "Plaintext bytes those calls moved.";
    bytes_truncated: Detail, "Plaintext bytes beyond the copied prefix (length known, content not).";
    calls_without_conn: Anomaly, "TLS calls whose TCP socket was not known (dropped).";
    calls_remembered: Detail, "TLS reads served from the library's buffer, given the socket their TLS object used last.";
    calls_linked_outside: Detail, "Memory-BIO TLS calls stamped by the thread's receive before or send after them.";
    calls_proven_together: Detail, "TLS reads that shared a receive (memory BIOs; reads served from the library's buffer), stamped once their records added up to it.";
    calls_unproven: Detail, "TLS reads that shared a receive their records did not add up to (no sequence number; dropped when their socket was not known yet).";
    shared_hold_full: Anomaly, "TLS reads that shared a receive, not held for proof: the hold was full.";
    bad_records: Anomaly, "TLS records with a bad direction (dropped).";
    table_full: Anomaly, "TLS calls dropped: the plaintext connection table was full.";
    connections: Detail, "TLS connections whose plaintext was parsed.";
    reads_lost: Detail, "Go TLS Reads entered before the probes were attached whose plaintext went unseen (their connection's waiting requests end as lost).";
});

report_counters!(crate::tls::attach::AttachCounters, Stage::Tls, {
    processes_scanned: Detail, "Processes whose mappings were read for TLS libraries and runtime hooks.";
    files_attached: Detail, "Files the TLS probes or runtime hooks were attached to.";
    files_detached: Detail, "Files the probes were detached from (no process maps them).";
    detached_inline: Detail, "Files whose probes were closed on the event loop, stalling it: the detaching thread's queue was full.";
    analysed_inline: Detail, "Files found after start read on the event loop, stalling it: the reading thread's queue was full.";
    attach_errors: Anomaly, "TLS probes or runtime hooks the kernel refused.";
    unreadable_files: Detail, "Mapped executable files that could not be read as ELF.";
    not_covered: Headline, "Executables speaking TLS through a library the agent cannot probe.";
    go_calls_forgotten: Detail, "Go TLS reads in progress forgotten because their process exited.";
    membio_files: Detail, "Files attached whose TLS runs over memory BIOs (Node).";
    hook_files: Headline, "Files given runtime hooks (nginx, Go net/http executables: calls link to the request they serve).";
    hooks_attached_late: Detail, "Go net/http executables whose ServeHTTP hooks were attached at a program's first outbound net/http call (held back until then: they serve only such calls).";
    hooks_not_covered: Detail, "Go net/http executables the runtime hooks cannot read (Go older than 1.17, a function table or type descriptors not found).";
    exec_looks: Detail, "Reads of programs just started (the kernel's exec events), 20 and 150 ms after the exec, for TLS libraries and runtime hooks.";
    exec_looks_shed: Anomaly, "Later looks at programs just started not scheduled (too many pending; the periodic scan finds them).";
    exec_described: Detail, "Programs just started described (service name, resource) at their first look, while they run: a client done within the ring's drain period is gone by its first record.";
    exec_described_shed: Detail, "Programs just started not described then: over the budget of 200 a second (described at their first record instead).";
    exec_events_lost: Anomaly, "Exec events the kernel could not deliver to the agent (the periodic scan finds those programs).";
});

report_counters!(crate::http_spans::HttpCounters, Stage::Http, {
    connections: Detail, "Connections whose bytes were looked at.";
    not_http: Headline, "Connections found not to carry HTTP.";
    messages: Headline, "Requests and responses handed to the correlator.";
    messages_without_call: Anomaly, "Messages without any call record (dropped).";
    undecided_chunks: Detail, "Ranges of connections whose request direction was not known yet (skipped).";
    evicted: Anomaly, "Connections not parsed because the parser table was full.";
    heads_cut: Anomaly, "Messages whose head was cut (capture window or missing bytes): spans made from the lines before the cut.";
    h2_requests_undecoded: Anomaly, "HTTP/2 requests whose method or path could not be decoded (spans say why, never guess).";
    h2_status_unknown: Anomaly, "HTTP/2 responses whose :status could not be decoded or never came.";
    h2_fields_unknown: Detail, "HTTP/2 header fields left out because their name or value was unknown.";
});

impl Report for crate::http_spans::Http2Totals {
    fn report(&self, out: &mut Vec<Metric>) {
        self.streams.report(out);
        self.frames.report(out);
        self.hpack.report(out);
        self.detect.report(out);
    }
}

report_counters!(protocols::http2::Http2Counters, Stage::Http, {
    requests as "h2_requests": Detail, "HTTP/2 requests emitted.";
    responses as "h2_responses": Detail, "HTTP/2 responses emitted (at the end of their stream).";
    responses_without_request as "h2_responses_without_request": Detail, "HTTP/2 responses to requests never seen (connections joined mid-way).";
    responses_headerless as "h2_responses_headerless": Detail, "HTTP/2 streams that ended without response headers.";
    informational as "h2_informational": Detail, "HTTP/2 informational (1xx) header blocks.";
    trailers as "h2_trailers": Detail, "HTTP/2 trailer blocks.";
    pushes as "h2_pushes": Detail, "HTTP/2 PUSH_PROMISE blocks (decoded for the table).";
    streams_evicted as "h2_streams_evicted": Anomaly, "HTTP/2 streams dropped at the per-connection bound.";
    blocks_unclassified as "h2_blocks_unclassified": Anomaly, "HTTP/2 header blocks whose side could not be told (not emitted).";
    blocks_discarded as "h2_blocks_discarded": Detail, "HTTP/2 header blocks dropped after a false resync.";
    frames_unknown_stream as "h2_frames_unknown_stream": Detail, "HTTP/2 frames for streams not tracked.";
    late_requests as "h2_late_requests": Detail, "HTTP/2 requests fed after their response.";
});

report_counters!(protocols::http2::FrameCounters, Stage::Http, {
    frames as "h2_frames": Detail, "HTTP/2 frames read in sync.";
    data_bytes_missing as "h2_data_bytes_missing": Detail, "HTTP/2 DATA bytes not captured (skipped by count, sync kept).";
    blocks_cut as "h2_blocks_cut": Anomaly, "HTTP/2 header blocks cut by missing bytes (their direction's HPACK table then partly unknown).";
    blocks_too_large as "h2_blocks_too_large": Anomaly, "HTTP/2 header blocks over the parser's bound.";
    sync_lost as "h2_sync_lost": Anomaly, "Times HTTP/2 frame sync was lost (a frame head not captured).";
    resyncs as "h2_resyncs": Detail, "Times HTTP/2 frame sync was found again.";
    resyncs_failed as "h2_resyncs_failed": Detail, "HTTP/2 resyncs undone (what followed did not decode).";
    bytes_out_of_sync as "h2_bytes_out_of_sync": Anomaly, "HTTP/2 bytes skipped while out of frame sync.";
    protocol_errors as "h2_protocol_errors": Anomaly, "HTTP/2 frames that broke the protocol's rules.";
    bad_preface as "h2_bad_preface": Anomaly, "HTTP/2 client prefaces that were wrong.";
});

report_counters!(protocols::hpack::HpackCounters, Stage::Http, {
    blocks as "hpack_blocks": Detail, "HPACK header blocks decoded.";
    fields_known as "hpack_fields_known": Detail, "HPACK fields decoded with name and value known.";
    fields_unknown as "hpack_fields_unknown": Anomaly, "HPACK fields whose name or value was unknown (table entries lost): reported as unknown, never guessed.";
    fields_invalid as "hpack_fields_invalid": Anomaly, "HPACK pseudo-header values rejected by validation.";
    fields_dropped as "hpack_fields_dropped": Anomaly, "HPACK fields dropped at the output bound.";
    inserts as "hpack_inserts": Detail, "HPACK dynamic table insertions.";
    size_updates as "hpack_size_updates": Detail, "HPACK dynamic table size updates.";
    lost_attach as "hpack_lost_attach": Detail, "HPACK tables unknown because the connection predates the agent.";
    lost_hole as "hpack_lost_hole": Anomaly, "HPACK table losses: bytes never arrived.";
    lost_truncated as "hpack_lost_truncated": Anomaly, "HPACK table losses: header bytes beyond the capture.";
    lost_sync as "hpack_lost_sync": Anomaly, "HPACK table losses: frame sync lost.";
    lost_too_large as "hpack_lost_too_large": Anomaly, "HPACK table losses: blocks over the bound.";
    lost_corrupt as "hpack_lost_corrupt": Anomaly, "HPACK table losses: blocks that did not decode.";
    evicted_uncertain as "hpack_evicted_uncertain": Detail, "HPACK entries dropped at the memory bound while possibly in use.";
    resyncs as "hpack_resyncs": Detail, "Times an HPACK table became exact again after a loss.";
});

report_counters!(protocols::conn::ConnCounters, Stage::Http, {
    chunks_undecided as "detect_chunks_undecided": Detail, "Ranges seen before a connection's protocol was known.";
    h2c_upgrades: Detail, "Connections upgraded to HTTP/2 (h2c).";
    h2_mid_stream: Detail, "HTTP/2 connections joined mid-way (found by frame heads).";
    probes_failed as "h2_probes_failed": Detail, "Binary connections scanned for HTTP/2 in vain (then opaque).";
});

report_counters!(protocols::http1::Http1Counters, Stage::Http, {
    messages as "http1_messages": Detail, "Messages the HTTP/1 parsers emitted.";
    interim_responses: Detail, "Interim (1xx) responses.";
    bytes_skipped: Detail, "Bytes skipped looking for a message start.";
    resyncs: Detail, "Times a parser lost a message boundary and scanned.";
    parse_errors: Anomaly, "Heads that did not parse.";
    heads_too_large: Anomaly, "Heads larger than the parser's bound.";
    heads_truncated: Anomaly, "Heads cut by missing bytes.";
    framing_lost: Anomaly, "Chunked bodies whose framing was lost.";
    upgrades: Detail, "Connections upgraded or tunnelled.";
    not_http as "http1_not_http_directions": Detail, "Directions declared not HTTP/1.";
    body_bytes_missing: Detail, "Body bytes skipped by count.";
    head_guesses: Detail, "Responses found to answer a HEAD request.";
    closed_incomplete: Detail, "Messages cut by the connection's end.";
    expectations_dropped: Anomaly, "Request kinds dropped (too many pending).";
    responses_unpaired: Detail, "Responses with no request kind known.";
});

report_counters!(correlate::Counters, Stage::Correlation, {
    messages: Detail, "Messages correlated.";
    spans_emitted: Headline, "Spans made.";
    unknown_connection: Detail, "Messages on a connection never opened.";
    unmatched_response: Anomaly, "Responses with no outstanding request (dropped).";
    closed_before_response: Detail, "Requests ended by their connection's close.";
    reset_outstanding: Anomaly, "Requests ended by lost stream data.";
    outstanding_overflow: Anomaly, "Requests ended because a connection had too many.";
    connection_overflow: Anomaly, "Connections evicted at the bound.";
    span_overflow: Anomaly, "Spans settled early at the memory bound.";
    retained_evicted: Detail, "Finished spans forgotten early at the bound.";
    thread_index_overflow: Anomaly, "Thread index entries lost at its bound.";
    thread_index_trimmed: Detail, "Finished server spans the thread index forgot at its bound, older than what the parent rules ask about (a CPU sample that late is not given its span).";
    mirror_parent: Headline, "Server spans parented by the client span at the other end.";
    nat_parent: Detail, "Of those, through address translation.";
    mirror_expired: Detail, "Server spans whose wait for a local client span expired.";
    late_mirror: Anomaly, "Client spans that arrived after their server span gave up.";
    thread_parent: Headline, "Client spans parented by the request in progress on their thread, in a process known to serve one request per thread.";
    request_id_parent: Headline, "Client spans parented through a request id (carried by the inbound request, or returned in its response).";
    forwarded_parent: Headline, "Client spans parented by the one inbound request in flight they repeat (same method, target and body length: proxies).";
    thread_context_parent: Detail, "Client spans parented through a propagated trace id.";
    runtime_parent: Headline, "Client spans parented by the request a runtime hook (nginx upstream) said they were made for.";
    runtime_causes: Detail, "Client spans a runtime hook gave a cause (the request on a connection), linked or not.";
    runtime_no_request: Detail, "Of those, no request of the process was in flight on that connection (not captured).";
    runtime_ambiguous: Detail, "Of those, several requests were in flight on that connection (pipelining, HTTP/2): not linked by the hook.";
    cause_events: Detail, "Runtime-hook events received (entries, returns, connects).";
    causes_forgotten: Anomaly, "Runtime-hook extents or opened connections forgotten at their bounds before a call used them.";
    header_parent: Headline, "Spans parented by a propagated header's span.";
    roots: Headline, "Spans made roots of a new trace.";
    ambiguous_parent: Headline, "Client spans left without a parent: several candidates, or rules naming different parents.";
    roots_entry: Headline, "Roots where a trace begins: server spans of requests from outside the host.";
    roots_no_client_span: Headline, "Roots that are server spans whose local client span never came.";
    roots_idle: Headline, "Roots that are client spans made while their process served nothing (background work, plain clients).";
    roots_unproven: Headline, "Roots that are client spans made while their process served requests, with no evidence of which one caused them.";
    roots_ambiguous: Headline, "Roots that are client spans with several candidate parents or conflicting evidence.";
    roots_lost: Headline, "Roots whose parent was forgotten or whose chain was cut at a bound.";
    thread_refused_unproven: Detail, "Rule 4 refused: the process is not (yet) known to serve one request per thread.";
    thread_refused_multiplexing: Detail, "Rule 4 refused: the process multiplexes (two requests on a thread, traffic during a call, calls outside requests on a serving thread).";
    thread_refused_handoff: Detail, "Rule 4 refused: the process moves requests or calls between threads (worker hand-off, M:N runtimes).";
    not_nested: Detail, "Candidate parents refused because the call outlived the request.";
    request_id_ambiguous: Detail, "Client spans whose request id was shared by several requests in flight in their process.";
    forward_ambiguous: Detail, "Client spans repeating several inbound requests in flight (not linked by forwarding).";
    inbound_losses: Anomaly, "Losses that may have hidden a request read by a process (stream holes, messages without their call, kernel drops): forwarding and request ids do not link its calls meanwhile.";
    unread_holds: Detail, "Received bytes that may hold a request and that their process did not read for a while (a busy server): forwarding and request ids do not link its calls meanwhile, as after a loss.";
    index_overflow: Anomaly, "Indexes of requests in flight that forgot live entries at their bound.";
    unique_waits: Detail, "Parent decisions that waited for every input from before the call (forwarding or a request id had a candidate).";
    unique_refused_loss: Detail, "Forwarding or request-id links refused: a loss may have hidden another candidate.";
    unique_refused_unconfirmed: Anomaly, "Forwarding or request-id links refused: the inputs from before the call were not complete in time.";
    evidence_conflict: Detail, "Client spans whose rules named different parents (not linked).";
    response_id_waits: Detail, "Parent decisions that waited for an inbound response to return the call's request id.";
    response_id_wait_expired: Detail, "Of those, the id did not come back in time.";
    decisions_cut: Anomaly, "Parent decisions settled early (flush, memory bound) while waiting for evidence.";
    processes_thread_per_request: Detail, "Processes found to serve one request per thread (rule 4 applies).";
    processes_multiplexing: Detail, "Processes found to multiplex or hand off requests (rule 4 never applies).";
    classify_overflow: Anomaly, "What was learnt about processes and threads, forgotten at its bound.";
    context_conflict: Detail, "Spans whose propagated trace disagreed with the rules (the header won).";
    context_adopted: Detail, "Traces the agent made up that were replaced by the trace a process started and propagated on a call made for the request (mesh edge proxies, instrumented services).";
    adoption_holds: Detail, "Finished spans held until a call that may replace their made-up trace was decided.";
    adoption_holds_cut: Anomaly, "Of those, exported before the decision (flush, memory bound, held too long).";
    adoption_overflow: Anomaly, "Calls that could not hold or replace a made-up trace: as many traces as span records were waiting.";
    invalid_traceparent: Detail, "Invalid traceparent headers ignored.";
    invalid_tracestate: Detail, "Invalid tracestate headers dropped.";
    invalid_b3: Detail, "Invalid B3 headers ignored.";
    request_ids_ignored: Detail, "Request-id values beyond the few a span keeps.";
    clock_anomaly: Anomaly, "Timestamps out of order (clamped or not linked).";
}, |c, out| {
    if let Some(share) = c.linked_share() {
        out.push(Metric::gauge(
            Stage::Correlation,
            "linked_percent",
            "Correlation accuracy: spans that got a parent, in percent of those that could have one (trace entry points and calls made while nothing was served left out).",
            Show::Headline,
            (share * 1000.0).round() / 10.0,
        ));
    }
});

report_counters!(crate::profile::ProfileCounters, Stage::Profiles, {
    samples: Headline, "CPU sample records received.";
    bad_samples: Anomaly, "Sample records that were malformed.";
    kernel_threads: Detail, "Samples of kernel threads.";
    no_user_regs: Detail, "Samples whose user registers were unusable.";
    no_user_stack: Detail, "Samples whose user stack could not be copied.";
    stack_short: Detail, "Samples whose stack copy stopped early at a fault.";
    unwound_to_root: Detail, "User stacks unwound to their root.";
    truncated: Detail, "User stacks not unwound to their root.";
    stacks: Detail, "Stacks produced.";
    frames: Detail, "Frames produced.";
    total_ns: Detail, "Time spent turning samples into stacks (ns).";
});

report_counters!(crate::profile::unwind::UnwindCounters, Stage::Profiles, {
    stacks as "unwound_stacks": Detail, "Stacks unwound.";
    complete as "unwound_complete": Detail, "Stacks unwound to their root.";
    truncated as "unwound_truncated": Detail, "Stacks cut short.";
    frames as "unwound_frames": Detail, "User frames unwound.";
    maps_reads: Detail, "Reads of /proc/PID/maps.";
    maps_failed: Detail, "Reads of /proc/PID/maps that failed (process gone).";
    binaries_loaded: Detail, "Binaries read for unwind data.";
    binaries_without_unwind_info: Detail, "Binaries without unwind sections.";
    binaries_failed: Anomaly, "Binaries that could not be opened or parsed.";
    binaries_evicted: Detail, "Binaries dropped from the cache.";
    processes_evicted: Detail, "Processes dropped from the table to make room.";
    processes_exited: Detail, "Processes forgotten after they exited.";
    section_bytes: Detail, "Bytes of unwind sections loaded.";
    unwind_ns: Detail, "Time spent unwinding (ns).";
});

report_counters!(crate::profile::symbols::SymbolCounters, Stage::Profiles, {
    user_lookups: Detail, "User addresses looked up.";
    kernel_lookups: Detail, "Kernel addresses looked up.";
    cache_hits: Detail, "Lookups answered by the caches.";
    cache_resets: Detail, "Times a symbol cache was full and started over.";
    unresolved: Detail, "Frames without a function name.";
    jit_resolved: Detail, "JIT frames resolved from a perf map.";
    perf_map_reads: Detail, "Perf-map reads.";
    perf_map_skipped: Detail, "Perf-map lines that could not be used.";
    symbolize_ns: Detail, "Time spent symbolizing (ns).";
    dwarf_skipped: Detail, "Binaries symbolized without their DWARF (over the bound on DWARF held).";
});

report_counters!(crate::profile::aggregate::AggregateCounters, Stage::Profiles, {
    samples as "aggregated_samples": Detail, "Samples aggregated.";
    span_samples: Headline, "Samples attributed to a span.";
    truncated_samples: Detail, "Samples whose stack was not unwound to its root.";
    depth_cut: Detail, "Samples whose stack was cut at the depth bound.";
    stack_overflow: Anomaly, "Samples counted in [overflow]: a stack or frame table was full.";
    dropped_service_limit: Anomaly, "Samples dropped: too many services had samples.";
    span_table_full: Anomaly, "Span samples not counted for their span (span table full).";
    late_span_samples: Detail, "Samples of a span that had already finished.";
    spans_with_samples: Detail, "Finished server spans with samples.";
    unnamed_span_stacks: Detail, "Span stacks exported without the span's name.";
    spans_never_finished: Detail, "Spans with samples that never finished.";
    profiles: Headline, "Service profiles produced.";
});

report_counters!(crate::profile::flame::FlameCounters, Stage::Profiles, {
    svgs_written: Detail, "Flame graphs written.";
    write_errors: Anomaly, "Flame graph writes that failed.";
    overflow_samples: Detail, "Samples drawn as [overflow].";
    spans_not_kept: Detail, "Span graphs not kept.";
    spans_evicted: Detail, "Span graphs replaced by one with more samples.";
    services_not_kept: Detail, "Samples of services beyond the graph bound.";
});

report_counters!(crate::export::resource::ResourceCounters, Stage::Export, {
    described: Detail, "Processes described from /proc.";
    unknown: Detail, "Processes gone before they could be described (named from the kernel).";
    pid_reused: Detail, "Processes described again (exec or pid reuse).";
    described_mid_exec: Detail, "Live processes read with an executable but no command line yet (inside exec), read again.";
    execs: Detail, "Described processes that started another program (the kernel's exec events): described again.";
    evicted: Detail, "Process descriptions dropped at the bound.";
});

/// An export worker's counters (spans to OTLP, profiles to Pyroscope),
/// labelled with their destination.
pub fn report_worker(
    c: &crate::export::worker::WorkerCounters,
    stage: Stage,
    destination: &'static str,
    out: &mut Vec<Metric>,
) {
    let crate::export::worker::WorkerCounters {
        submitted,
        exported,
        rejected,
        dropped_queue_full,
        dropped_failed,
        dropped_shutdown,
        dropped_invalid,
        requests,
        bytes,
        errors,
        retries,
        queued,
        queued_bytes,
        peak_queued_bytes,
    } = *c;
    let counters: [(&'static str, &'static str, Show, u64); 11] = [
        (
            "submitted",
            "Items handed to the export worker.",
            Show::Detail,
            submitted,
        ),
        (
            "exported",
            "Items the backend accepted.",
            Show::Headline,
            exported,
        ),
        (
            "rejected",
            "Items the backend refused (partial success).",
            Show::Anomaly,
            rejected,
        ),
        (
            "dropped_queue_full",
            "Items dropped: the queue was full.",
            Show::Anomaly,
            dropped_queue_full,
        ),
        (
            "dropped_failed",
            "Items dropped with a request that failed for good.",
            Show::Anomaly,
            dropped_failed,
        ),
        (
            "dropped_shutdown",
            "Items still queued when the agent stopped.",
            Show::Anomaly,
            dropped_shutdown,
        ),
        (
            "dropped_invalid",
            "Items that could not be encoded.",
            Show::Anomaly,
            dropped_invalid,
        ),
        (
            "requests",
            "Requests the backend accepted.",
            Show::Detail,
            requests,
        ),
        (
            "bytes",
            "Bytes sent in accepted requests.",
            Show::Detail,
            bytes,
        ),
        (
            "errors",
            "Failed attempts (each retry counts).",
            Show::Anomaly,
            errors,
        ),
        (
            "retries",
            "Attempts after the first (the backend was failing).",
            Show::Anomaly,
            retries,
        ),
    ];
    for (name, help, show, v) in counters {
        out.push(
            Metric::counter(stage, name, help, show, v).with_label("destination", destination),
        );
    }
    let gauges: [(&'static str, &'static str, u64); 3] = [
        ("queued", "Items in the export queue now.", queued),
        (
            "queued_bytes",
            "Bytes in the export queue now.",
            queued_bytes,
        ),
        (
            "peak_queued_bytes",
            "Most bytes ever in the export queue.",
            peak_queued_bytes,
        ),
    ];
    for (name, help, v) in gauges {
        out.push(
            Metric::gauge(stage, name, help, Show::Detail, v as f64)
                .with_label("destination", destination),
        );
    }
}

/// The agent process: CPU seconds and memory, from /proc/self.
pub fn process(out: &mut Vec<Metric>) {
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let fields: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
            Some(ticks as f64 / hz.max(1) as f64)
        })
        .unwrap_or(0.0);
    out.push(Metric {
        kind: Kind::Counter,
        ..Metric::gauge(
            Stage::Agent,
            "cpu_seconds",
            "CPU time the agent used (user and system).",
            Show::Headline,
            cpu,
        )
    });
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    out.push(Metric::gauge(
        Stage::Agent,
        "resident_bytes",
        "Resident memory now (the ring buffer's touched pages included).",
        Show::Headline,
        kib("VmRSS:") * 1024.0,
    ));
    out.push(Metric::gauge(
        Stage::Agent,
        "resident_peak_bytes",
        "Peak resident memory.",
        Show::Headline,
        kib("VmHWM:") * 1024.0,
    ));
}

/// A snapshot of every metric.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The values, in stage order.
    pub metrics: Vec<Metric>,
}

impl Snapshot {
    /// The Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        let mut registry = Registry::with_prefix("tracer");
        registry.register_collector(Box::new(Families(self.metrics.clone())));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// The stages reported, in order, each with its metrics.
    fn stages(&self) -> impl Iterator<Item = (Stage, impl Iterator<Item = &Metric>)> {
        let mut stages: Vec<Stage> = self.metrics.iter().map(|m| m.stage).collect();
        stages.sort();
        stages.dedup();
        stages
            .into_iter()
            .map(move |stage| (stage, self.metrics.iter().filter(move |m| m.stage == stage)))
    }

    /// The last line of both tables: every non-zero anomaly, or "none".
    fn anomalies_line(&self) -> String {
        let anomalies: Vec<String> = self
            .metrics
            .iter()
            .filter(|m| m.show == Show::Anomaly && m.value != 0.0)
            .map(|m| match m.label {
                Some((_, v)) => format!("{}.{}{{{v}}}={}", m.stage.name(), m.name, m.value),
                None => format!("{}.{}={}", m.stage.name(), m.name, m.value),
            })
            .collect();
        if anomalies.is_empty() {
            "  anomalies: none\n".to_string()
        } else {
            format!("  anomalies: {}\n", anomalies.join(" "))
        }
    }

    /// A short table: one row per stage with its headline values, then
    /// every non-zero anomaly.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for (stage, metrics) in self.stages() {
            let mut row = String::new();
            for m in metrics.filter(|m| m.show == Show::Headline) {
                let _ = write!(row, "  {}={}", m.name, human(m.value, m.name));
            }
            if !row.is_empty() {
                let _ = writeln!(out, "  {:<12}{row}", stage.name());
            }
        }
        out.push_str(&self.anomalies_line());
        out
    }

    /// Every metric, by stage, as exact numbers: `name=value`, and
    /// `name{label}=value` for labelled ones; then the anomalies line.
    pub fn full_table(&self) -> String {
        let mut out = String::new();
        for (stage, metrics) in self.stages() {
            let mut row = String::new();
            for m in metrics {
                match m.label {
                    Some((_, v)) => {
                        let _ = write!(row, "  {}{{{v}}}={}", m.name, m.value);
                    }
                    None => {
                        let _ = write!(row, "  {}={}", m.name, m.value);
                    }
                }
            }
            let _ = writeln!(out, "  {:<12}{row}", stage.name());
        }
        out.push_str(&self.anomalies_line());
        out
    }
}

/// A value for the table: bytes and seconds in units, counts as they are.
fn human(v: f64, name: &str) -> String {
    if name.ends_with("bytes") {
        format!("{:.1}MiB", v / (1024.0 * 1024.0))
    } else if name.ends_with("seconds") {
        format!("{v:.2}s")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The snapshot as Prometheus metric families (one descriptor per name,
/// one sample per label value).
#[derive(Debug)]
struct Families(Vec<Metric>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut done: Vec<(Stage, &str)> = Vec::new();
        for m in &self.0 {
            if done.contains(&(m.stage, m.name)) {
                continue;
            }
            done.push((m.stage, m.name));
            let name = format!("{}_{}", m.stage.name(), m.name);
            let metric_type = match m.kind {
                Kind::Counter => ConstCounter::new(0u64).metric_type(),
                Kind::Gauge => ConstGauge::new(0i64).metric_type(),
            };
            let mut e = encoder.encode_descriptor(&name, m.help, None, metric_type)?;
            if m.label.is_none() {
                encode_value(m.kind, m.value, e)?;
                continue;
            }
            for x in self
                .0
                .iter()
                .filter(|x| x.stage == m.stage && x.name == m.name)
            {
                let label = [x.label.unwrap_or(("", ""))];
                encode_value(x.kind, x.value, e.encode_family(&label)?)?;
            }
        }
        Ok(())
    }
}

/// Counts as integers, the rest (CPU seconds) as floats.
fn encode_value(
    kind: Kind,
    v: f64,
    e: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    let whole = v.fract() == 0.0;
    match (kind, whole) {
        (Kind::Counter, true) => ConstCounter::new(v as u64).encode(e),
        (Kind::Counter, false) => ConstCounter::new(v).encode(e),
        (Kind::Gauge, true) => ConstGauge::new(v as i64).encode(e),
        (Kind::Gauge, false) => ConstGauge::new(v).encode(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        let mut v = Vec::new();
        crate::dispatch::ReaderCounters {
            records: 10,
            bad_records: 2,
        }
        .report(&mut v);
        v.push(
            Metric::counter(Stage::Kernel, "drops", "Lost.", Show::Anomaly, 3)
                .with_label("reason", "ring_full_op"),
        );
        v.push(
            Metric::counter(Stage::Kernel, "drops", "Lost.", Show::Anomaly, 0)
                .with_label("reason", "bad_packet"),
        );
        v.push(Metric::gauge(
            Stage::Agent,
            "resident_bytes",
            "RSS.",
            Show::Headline,
            2.0 * 1024.0 * 1024.0,
        ));
        Snapshot { metrics: v }
    }

    #[test]
    fn prometheus_text_has_one_family_per_name_and_labels() {
        let text = snap().prometheus();
        assert!(
            text.contains("# TYPE tracer_reader_records counter"),
            "{text}"
        );
        assert!(text.contains("tracer_reader_records_total 10"), "{text}");
        assert!(text.contains("tracer_reader_bad_records_total 2"), "{text}");
        assert_eq!(
            text.matches("# TYPE tracer_kernel_drops counter").count(),
            1
        );
        assert!(
            text.contains("tracer_kernel_drops_total{reason=\"ring_full_op\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("tracer_agent_resident_bytes 2097152"),
            "{text}"
        );
    }

    #[test]
    fn table_shows_headlines_and_only_nonzero_anomalies() {
        let t = snap().table();
        assert!(t.contains("reader        records=10"), "{t}");
        assert!(t.contains("agent         resident_bytes=2.0MiB"), "{t}");
        assert!(
            t.contains("anomalies: reader.bad_records=2 kernel.drops{ring_full_op}=3"),
            "{t}"
        );
        assert!(!t.contains("bad_packet"), "{t}");
    }

    #[test]
    fn full_table_shows_every_metric_exactly() {
        let t = snap().full_table();
        assert!(t.contains("reader        records=10  bad_records=2"), "{t}");
        assert!(t.contains("drops{bad_packet}=0"), "{t}");
        assert!(t.contains("resident_bytes=2097152"), "{t}");
        assert!(
            t.ends_with("anomalies: reader.bad_records=2 kernel.drops{ring_full_op}=3\n"),
            "{t}"
        );
    }

    #[test]
    fn every_counter_has_a_name_of_its_own_in_its_stage() {
        let mut v = Vec::new();
        crate::dispatch::ReaderCounters::default().report(&mut v);
        crate::lanes::LaneCounters::default().report(&mut v);
        crate::conntrack::ConnCounters::default().report(&mut v);
        protocols::stream::StreamCounters::default().report(&mut v);
        crate::http_spans::HttpCounters::default().report(&mut v);
        crate::http_spans::Http2Totals::default().report(&mut v);
        protocols::http1::Http1Counters::default().report(&mut v);
        correlate::Counters::default().report(&mut v);
        crate::profile::ProfileCounters::default().report(&mut v);
        crate::profile::unwind::UnwindCounters::default().report(&mut v);
        crate::profile::symbols::SymbolCounters::default().report(&mut v);
        crate::profile::aggregate::AggregateCounters::default().report(&mut v);
        crate::profile::flame::FlameCounters::default().report(&mut v);
        crate::export::resource::ResourceCounters::default().report(&mut v);
        let mut seen = std::collections::HashSet::new();
        for m in &v {
            assert!(
                seen.insert((m.stage.name(), m.name, m.label)),
                "{}.{} is reported twice",
                m.stage.name(),
                m.name
            );
        }
    }
}
