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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            // Records of one request reach the correlator within a few
            // milliseconds of each other (one ring, drained every 10 ms; the
            // stream layer waits at most 200 ms for a missing record, which
            // is rare): 150 ms covers them, and every waiting span costs
            // memory at line rate (150k spans/s here).
            window_ns: 150_000_000,
            retention_ns: 300_000_000,
            sample_window_ns: 1_000_000_000,
            max_connections: 65_536,
            max_outstanding_per_conn: 64,
            max_spans: 65_536,
            max_span_bytes: 24 << 20,
            max_threads: 65_536,
            max_server_spans_per_thread: 65_536,
            request_id_headers: vec!["x-request-id".to_string()],
            redact_query: true,
            nat_matching: true,
            max_attribute_len: 1_024,
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
    /// Server spans parented by the client span at the other end (rule 3).
    pub mirror_parent: u64,
    /// Of those, matched through address translation.
    pub nat_parent: u64,
    /// Server spans whose wait for a local client span expired (made roots
    /// or header children).
    pub mirror_expired: u64,
    /// Client spans that arrived after their server span had given up.
    pub late_mirror: u64,
    /// Client spans parented by the only server span on their thread.
    pub thread_parent: u64,
    /// Client spans parented through a shared request id.
    pub request_id_parent: u64,
    /// Client spans parented through a matching propagated trace id among
    /// several server spans on their thread.
    pub thread_context_parent: u64,
    /// Spans parented by a propagated header's span id.
    pub header_parent: u64,
    /// Spans emitted as roots of a new trace.
    pub roots: u64,
    /// Client spans with several candidate parents and no evidence to
    /// choose (made roots or header children instead of guessing).
    pub ambiguous_parent: u64,
    /// Spans whose propagated trace id disagreed with the parent the rules
    /// found; the header won.
    pub context_conflict: u64,
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
