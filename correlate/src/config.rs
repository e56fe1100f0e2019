//! Configuration, drop/decision counters and the id generator seam.

/// Tunables. Every bound here caps memory; whatever is evicted at a bound
/// is counted in [`Counters`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Reorder window (ns): how long a span waits for evidence that may
    /// arrive late: the client span at the other end of a local connection
    /// (rule 3), and, for a client span, server spans on its thread that
    /// started before it (rule 4). Messages are assumed to reach the
    /// correlator within this time of their kernel timestamps; later ones
    /// make roots (counted), never wrong parents. Spans are therefore
    /// emitted about this long after they start, at the earliest.
    pub window_ns: u64,
    /// Floor of the reorder window (ns). The window in use follows the
    /// lateness measured over the last second (twice the largest), between
    /// this and `window_ns`, which it starts at and keeps while traffic is
    /// too sparse for holding to cost; equal to `window_ns`, the window is
    /// fixed. `retention_ns` scales with it.
    pub min_window_ns: u64,
    /// How long (ns) an emitted span's record stays for late children (a
    /// client span is decided within `window_ns` of its start, and it
    /// started before its parent ended). Should be at least twice
    /// `window_ns`.
    pub retention_ns: u64,
    /// How long (ns) the server spans of each thread are remembered for
    /// [`crate::Correlator::server_span_at`] (CPU samples reach the
    /// correlator after unwinding, which can take a while on a cold cache).
    /// Costs a few dozen bytes per server span, not a span record.
    pub sample_window_ns: u64,
    /// How long (ns) after a request was lost on its way in it may still
    /// be in flight: meanwhile forwarding and request ids do not link the
    /// calls of its process (see [`crate::Correlator::inbound_lost`]). A
    /// proxy forwards within milliseconds of reading; a lost request still
    /// unanswered after this could be taken for another's absence.
    pub loss_hold_ns: u64,
    /// Maximum tracked connections; opening one more evicts the oldest
    /// (its outstanding requests end as errors).
    pub max_connections: usize,
    /// Maximum requests awaiting a response on one connection; one more
    /// ends the oldest as an error.
    pub max_outstanding_per_conn: usize,
    /// Maximum spans held (in progress, waiting for a parent, or emitted and
    /// retained). One more first forgets the oldest retained span, else
    /// emits the oldest waiting one at once with what is known.
    pub max_spans: usize,
    /// Bound on the memory of span records (bytes, their texts included):
    /// like `max_spans`, reaching it forgets the oldest retained span, else
    /// settles the oldest waiting one at once.
    pub max_span_bytes: usize,
    /// Maximum threads in the in-progress index.
    pub max_threads: usize,
    /// Maximum server spans remembered per thread (in progress or recently
    /// finished; an event loop at R requests/s needs about
    /// R × (`window_ns` + request duration)). Losing one makes that thread
    /// ambiguous for rule 4 at the instants it covered, rather than risk a
    /// wrong parent.
    pub max_server_spans_per_thread: usize,
    /// Header names (case-insensitive) whose values tie spans of one
    /// request together (rule 5), e.g. `x-request-id`.
    pub request_id_headers: Vec<String>,
    /// Replace every query-string value in `url.query` with `REDACTED`
    /// (keys are kept). Default true.
    pub redact_query: bool,
    /// Accept, for rule 3, a client span whose addresses do not mirror the
    /// server span's but whose sequence number, method and target are the
    /// same (connections through DNAT, e.g. Kubernetes services).
    pub nat_matching: bool,
    /// Longest attribute string kept (bytes, cut on a char boundary).
    pub max_attribute_len: usize,
    /// Requests a process must have answered, each on the thread that read
    /// it, over at least two threads and with no sign of multiplexing,
    /// before rule 4 trusts its threads to serve one request at a time.
    pub pool_min_requests: u32,
    /// How long (ns) what was learnt about an idle process (thread per
    /// request or multiplexing) is remembered.
    pub classify_memory_ns: u64,
}

/// Default [`Config::max_span_bytes`].
pub const DEFAULT_MAX_SPAN_BYTES: usize = 24 << 20;

impl Default for Config {
    fn default() -> Self {
        Config {
            // Records of one request reach the correlator within a few
            // milliseconds of each other (one ring, drained every 10 ms; the
            // stream layer waits at most 200 ms for a missing record, which
            // is rare): 150 ms covers them, and every waiting span costs
            // memory at line rate (150k spans/s here).
            window_ns: 150_000_000,
            // The drain cycle (10 ms) and the merge hold are well inside it.
            min_window_ns: 30_000_000,
            retention_ns: 300_000_000,
            sample_window_ns: 1_000_000_000,
            loss_hold_ns: 1_000_000_000,
            max_connections: 65_536,
            max_outstanding_per_conn: 64,
            max_spans: 65_536,
            max_span_bytes: DEFAULT_MAX_SPAN_BYTES,
            max_threads: 65_536,
            max_server_spans_per_thread: 65_536,
            request_id_headers: vec!["x-request-id".to_string()],
            redact_query: true,
            nat_matching: true,
            max_attribute_len: 1_024,
            pool_min_requests: 8,
            classify_memory_ns: 600_000_000_000,
        }
    }
}

/// What happened, counted. Plain numbers the agent reports as metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages passed in.
    pub messages: u64,
    /// Spans emitted.
    pub spans_emitted: u64,
    /// Messages on a connection never opened (tracked without addresses).
    pub unknown_connection: u64,
    /// Responses with no outstanding request (dropped).
    pub unmatched_response: u64,
    /// Requests ended by the connection closing before their response.
    pub closed_before_response: u64,
    /// Requests ended by [`crate::Correlator::conn_reset`] (stream gaps).
    pub reset_outstanding: u64,
    /// Requests ended because a connection had too many outstanding.
    pub outstanding_overflow: u64,
    /// Connections evicted at `max_connections`.
    pub connection_overflow: u64,
    /// Spans forced out at `max_spans`/`max_span_bytes` before their parent
    /// was settled.
    pub span_overflow: u64,
    /// Retained (already emitted) spans forgotten early at `max_spans` or
    /// `max_span_bytes`.
    pub retained_evicted: u64,
    /// Thread index entries lost at its bounds (the thread then counts as
    /// ambiguous for a while).
    pub thread_index_overflow: u64,
    /// Finished server spans forgotten by the thread index at its bound
    /// before the samples' window ended, though after the instants the
    /// parent rules ask about: a CPU sample coming back that late is not
    /// given their span.
    pub thread_index_trimmed: u64,
    /// Server spans parented by the client span at the other end (rule 3).
    pub mirror_parent: u64,
    /// Of those, matched through address translation.
    pub nat_parent: u64,
    /// Server spans whose wait for a local client span expired (made roots
    /// or header children).
    pub mirror_expired: u64,
    /// Client spans that arrived after their server span had given up.
    pub late_mirror: u64,
    /// Client spans parented by the only server span on their thread, in a
    /// process known to serve one request per thread (rule 4).
    pub thread_parent: u64,
    /// Client spans parented through a shared request id.
    pub request_id_parent: u64,
    /// Client spans parented by the inbound request they forward (same
    /// method, target and body length, the only one in flight).
    pub forwarded_parent: u64,
    /// Client spans parented through a matching propagated trace id among
    /// several server spans on their thread.
    pub thread_context_parent: u64,
    /// Client spans parented by the request a runtime hook said they were
    /// made for (e.g. nginx's upstream hook).
    pub runtime_parent: u64,
    /// Client spans a runtime hook gave a cause (the request on some
    /// connection), linked or not.
    pub runtime_causes: u64,
    /// Of those, causes with no request of their process in flight on that
    /// connection then (its request was not captured).
    pub runtime_no_request: u64,
    /// Of those, causes with several requests in flight on that connection
    /// (HTTP/1 pipelining, HTTP/2 streams): not linked by the hook.
    pub runtime_ambiguous: u64,
    /// Runtime-hook events received (entries, returns, connects).
    pub cause_events: u64,
    /// Runtime-hook extents and opened connections forgotten at their
    /// bounds before any call used them.
    pub causes_forgotten: u64,
    /// Spans parented by a propagated header's span id.
    pub header_parent: u64,
    /// Spans emitted as roots of a new trace.
    pub roots: u64,
    /// Client spans with several candidate parents and no evidence to
    /// choose, or rules pointing at different parents (made roots or
    /// header children instead of guessing).
    pub ambiguous_parent: u64,
    /// Roots that begin a trace where it begins: server spans of requests
    /// from outside the host (or from an unknown peer).
    pub roots_entry: u64,
    /// Roots that are server spans whose local client span never came.
    pub roots_no_client_span: u64,
    /// Roots that are client spans made while their process served no
    /// request (background work, plain clients such as curl).
    pub roots_idle: u64,
    /// Roots that are client spans made while their process served
    /// requests, with no evidence of which one (if any) caused them.
    pub roots_unproven: u64,
    /// Roots that are client spans with several candidate parents or
    /// conflicting evidence.
    pub roots_ambiguous: u64,
    /// Roots whose parent was forgotten, or whose chain was cut, at a bound.
    pub roots_lost: u64,
    /// Rule 4 refused: the process is not (yet) known to serve one request
    /// per thread.
    pub thread_refused_unproven: u64,
    /// Rule 4 refused: the process multiplexes (two requests in progress on
    /// one thread, traffic on a thread while its call is outstanding, calls
    /// outside any request on a serving thread).
    pub thread_refused_multiplexing: u64,
    /// Rule 4 refused: the process hands requests or calls between threads
    /// (read on one, answered on another: worker hand-off, M:N runtimes).
    pub thread_refused_handoff: u64,
    /// A candidate parent refused because the call did not nest in its
    /// time (it outlived the request, or the request was already answered).
    pub not_nested: u64,
    /// Client spans whose request id was shared by several requests in
    /// flight in their process (not linked by it).
    pub request_id_ambiguous: u64,
    /// Client spans repeating several inbound requests in flight (not
    /// linked by forwarding).
    pub forward_ambiguous: u64,
    /// Losses that may have hidden a request read by a process (stream
    /// holes, messages without their call, records the kernel dropped):
    /// uniqueness rules do not apply to its calls while it may be in flight.
    pub inbound_losses: u64,
    /// Received bytes that may hold a request, not read by their process
    /// for a while ([`crate::Correlator::inbound_unread`]): treated as
    /// losses until read, counted apart (a slow reader is not a loss).
    pub unread_holds: u64,
    /// Indexes of requests in flight that forgot live entries at their
    /// bound (uniqueness rules do not apply meanwhile).
    pub index_overflow: u64,
    /// Parent decisions that waited for the inputs from before the call to
    /// be complete (a uniqueness rule had a candidate).
    pub unique_waits: u64,
    /// Uniqueness rules refused: a loss may have hidden another candidate.
    pub unique_refused_loss: u64,
    /// Uniqueness rules refused: the inputs from before the call were not
    /// known complete in time (or the wait outlived the records).
    pub unique_refused_unconfirmed: u64,
    /// Client spans whose rules named different parents (not linked).
    pub evidence_conflict: u64,
    /// Parent decisions that waited for an inbound response to return the
    /// client's request id.
    pub response_id_waits: u64,
    /// Of those, the id did not come back in time (decided without it).
    pub response_id_wait_expired: u64,
    /// Parent decisions settled early (flush, memory bound) while still
    /// waiting for the call's end or a response.
    pub decisions_cut: u64,
    /// Processes found to serve one request per thread (rule 4 applies).
    pub processes_thread_per_request: u64,
    /// Processes found to multiplex or hand off requests (rule 4 never
    /// applies to them).
    pub processes_multiplexing: u64,
    /// What was learnt about processes and threads, forgotten at its bound.
    pub classify_overflow: u64,
    /// Spans whose propagated trace id disagreed with the parent the rules
    /// found; the header won.
    pub context_conflict: u64,
    /// Traces the agent made up that were replaced by the one a process
    /// started and propagated on a call made for the request (a proxy or
    /// an instrumented service at the edge of a mesh).
    pub context_adopted: u64,
    /// Finished spans of a made-up trace held until a call that may
    /// replace the trace was decided.
    pub adoption_holds: u64,
    /// Of those, exported before the decision (flush, memory bound, held
    /// for a retention).
    pub adoption_holds_cut: u64,
    /// Calls that could not hold a made-up trace, or replace it, because
    /// as many traces as span records were waiting already.
    pub adoption_overflow: u64,
    /// Invalid W3C `traceparent` headers ignored.
    pub invalid_traceparent: u64,
    /// Invalid W3C `tracestate` headers dropped.
    pub invalid_tracestate: u64,
    /// Invalid B3 headers ignored.
    pub invalid_b3: u64,
    /// Request-id values beyond the few a request's span keeps.
    pub request_ids_ignored: u64,
    /// Timestamps out of order (a response ending before its request
    /// started, a server reading before the client wrote); clamped or not
    /// linked.
    pub clock_anomaly: u64,
}

impl Counters {
    /// Spans emitted with a parent (a span of ours or a propagated one).
    pub fn linked(&self) -> u64 {
        self.spans_emitted.saturating_sub(self.roots)
    }

    /// The correlation accuracy figure: the share (0..=1) of spans that
    /// got a parent among those that could have one, i.e. leaving out the
    /// roots that begin a trace where it really begins (requests from
    /// outside the host, calls made while nothing was served). `None`
    /// before any such span.
    pub fn linked_share(&self) -> Option<f64> {
        let linkable = self
            .spans_emitted
            .saturating_sub(self.roots_entry + self.roots_idle);
        (linkable > 0).then(|| self.linked() as f64 / linkable as f64)
    }
}

/// Source of fresh ids. The correlator reads no OS randomness: the caller
/// injects this (seeded from the OS in the agent, fixed in tests).
pub trait IdGen {
    /// The next 64 random bits.
    fn next_u64(&mut self) -> u64;
}

/// SplitMix64: a tiny, fast, well-distributed generator. Good enough for
/// trace and span ids (not for secrets).
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }
}

impl IdGen for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl<G: IdGen + ?Sized> IdGen for &mut G {
    fn next_u64(&mut self) -> u64 {
        (**self).next_u64()
    }
}

impl<G: IdGen + ?Sized> IdGen for Box<G> {
    fn next_u64(&mut self) -> u64 {
        (**self).next_u64()
    }
}
