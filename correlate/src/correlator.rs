//! The correlator: public API, connection tracking and request/response
//! pairing. Parent decisions and emission live in `resolve.rs`.

use std::collections::VecDeque;

// foldhash: several times faster than SipHash on these small keys, and
// randomly seeded, so request-id keys from the network cannot be aimed.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use smallvec::SmallVec;
use std::net::{IpAddr, SocketAddr};

use crate::adopt::Adoptions;
use crate::attr_key::Key;
use crate::attributes::{request_facts, response_status};
use crate::causes::{task_key, Cause, CauseEvent, Causes};
use crate::classify::Classifier;
use crate::config::{Config, Counters, IdGen, SplitMix64};
use crate::index::{table_bytes, MultiIndex, SpanKey, ThreadEntry, ThreadIndex, ThreadInsert};
use crate::loss::LossMarks;
use crate::model::{
    ConnId, ConnInfo, Message, MessageKind, ParentSource, Pid, Request, Response, Side, Span,
    SpanId, SpanKind, Status, Texts, Tid, TraceId,
};
use crate::prefetch;
use crate::propagation::{extract, request_ids, HeaderContext, RequestIds};
use crate::span_table::{self, SpanTable};
use crate::window::ReorderWindow;

/// What runtime hooks said a client call was made for.
pub(crate) enum CallCause {
    /// The request in flight on a connection then.
    Conn(Cause),
    /// A request whose response one of these tasks wrote (the call's task
    /// and its ancestors, as `task_servers` keys).
    Tasks(Vec<u64>),
}

/// Trace-level context a span inherits from its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TraceCtx {
    pub trace_id: TraceId,
    pub flags: u8,
    pub state: Option<String>,
    /// The span that made the trace up (a root of ours); `None` for a
    /// propagated trace.
    pub made_by: Option<SpanKey>,
}

impl TraceCtx {
    /// The trace a request's header propagated.
    pub fn propagated(h: &HeaderContext) -> Self {
        TraceCtx {
            trace_id: h.trace_id,
            flags: h.flags,
            state: h.trace_state.clone(),
            made_by: None,
        }
    }
}

/// A span's parent, once decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Parent {
    /// Not decided yet (waiting for evidence).
    Undecided,
    /// A new trace.
    Root,
    /// The propagated header's span.
    Remote,
    /// A span of ours.
    Span(SpanKey, SpanId),
}

/// Why a span is a root (counted when it is emitted as one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum RootReason {
    /// Its parent was forgotten or its chain cut at a bound.
    #[default]
    Lost,
    /// A server span of a request from outside the host: a trace begins.
    Entry,
    /// A server span whose local client span never came.
    NoClientSpan,
    /// A client span made while its process served nothing.
    Idle,
    /// A client span made while its process served, no evidence of which.
    Unproven,
    /// A client span with several candidates or conflicting evidence.
    Ambiguous,
}

/// Everything known about one request's span until it is emitted (and a
/// little of it for `retention_ns` after).
pub(crate) struct SpanRec {
    pub span_id: SpanId,
    pub kind: SpanKind,
    pub pid: Pid,
    pub tid: Tid,
    pub seq: u32,
    pub start: u64,
    pub end: Option<u64>,
    /// (local, remote), canonical addresses.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    pub fingerprint: u64,
    /// Declared body length (`attributes::declared_body`).
    pub body: u64,
    pub header: Option<HeaderContext>,
    /// Request-id keys: of the request, and for a server span also those
    /// its response returned.
    pub request_ids: RequestIds,
    pub parent: Parent,
    pub source: ParentSource,
    pub root_reason: RootReason,
    /// Client span whose decision waits for its response (nesting, or an
    /// id an inbound response may return, cannot be judged before).
    pub await_end: bool,
    /// Client span whose decision already waited a window for an inbound
    /// response's request id.
    pub waited: bool,
    /// Client span whose decision waited for complete inputs.
    pub awaited_complete: bool,
    /// Client span written while its process had server requests in flight.
    pub busy: bool,
    /// Its end is when the capture lost the connection's data, not when
    /// the response came.
    pub end_lost: bool,
    /// Deadline of the pending parent decision, if one is scheduled.
    pub decide_at: Option<u64>,
    /// Server span waiting for the client span of its request (rule 3).
    pub waiting_mirror: bool,
    /// Client span already taken as parent by a server span.
    pub matched: bool,
    pub ctx: Option<TraceCtx>,
    /// Children waiting for this span's trace context: nearly always none
    /// or one (a client span whose server span waits for its trace), kept
    /// inline (no allocation per such pair).
    pub waiting_children: SmallVec<[SpanKey; 1]>,
    pub emitted: bool,
    /// A span of the trace this span made up was exported (it can no
    /// longer be replaced, see `adopt`).
    pub trace_exported: bool,
    pub grpc: bool,
    /// Name and attributes.
    pub texts: Texts,
    pub status: Status,
}

/// What a timer does when due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Settle a span's parent.
    Decide(SpanKey),
    /// Finish closing a connection (generation-checked).
    Close(ConnId, u64),
}

pub(crate) struct ConnState {
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    pub generation: u64,
    pub closing: Option<u64>,
    /// Outstanding HTTP/1 requests by the side they were moved on
    /// (index: 0 inbound, 1 outbound).
    pub fifo: [VecDeque<SpanKey>; 2],
    /// Outstanding HTTP/2 requests by (request side, stream id).
    pub streams: HashMap<(Side, u32), SpanKey>,
}

impl ConnState {
    fn outstanding(&self) -> usize {
        self.fifo[0].len() + self.fifo[1].len() + self.streams.len()
    }

    fn all_outstanding(&self) -> Vec<SpanKey> {
        let mut v: Vec<SpanKey> = self.fifo[0]
            .iter()
            .chain(self.fifo[1].iter())
            .chain(self.streams.values())
            .copied()
            .collect();
        v.sort_unstable();
        v
    }
}

pub(crate) fn side_ix(s: Side) -> usize {
    match s {
        Side::Inbound => 0,
        Side::Outbound => 1,
    }
}

/// Memory of one span record besides its texts: the record, its key and
/// its free-list entry in the slab.
pub(crate) const RECORD_BYTES: usize = std::mem::size_of::<SpanRec>() + 16;

/// Key of a server span in a per-process index (forwarded requests by
/// fingerprint, request ids by their hash): the process mixed into `h`.
pub(crate) fn forward_key(pid: Pid, h: u64) -> u64 {
    h ^ u64::from(pid.0).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Heap bytes of the texts of the records held: with the records
/// themselves, what [`Config::max_span_bytes`] bounds.
#[derive(Default)]
pub(crate) struct TextBytes(usize);

impl TextBytes {
    pub fn get(&self) -> usize {
        self.0
    }

    /// `t` is held now.
    pub fn add(&mut self, t: &Texts) {
        self.0 += t.heap_bytes();
    }

    /// `t` is not held any more (or is about to be taken).
    pub fn remove(&mut self, t: &Texts) {
        self.0 = self.0.saturating_sub(t.heap_bytes());
    }

    /// Changes held texts `t` with `f`, accounting for their growth.
    pub fn update<R>(&mut self, t: &mut Texts, f: impl FnOnce(&mut Texts) -> R) -> R {
        self.remove(t);
        let r = f(t);
        self.add(t);
        r
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Turns protocol messages into spans and traces. See the crate docs.
///
/// Feed it [`conn_open`](Self::conn_open) before a connection's messages,
/// every [`message`](Self::message), [`conn_close`](Self::conn_close), and
/// call [`poll`](Self::poll) regularly with the monotonic time the pipeline
/// has caught up to; `poll` returns the spans that are finished.
pub struct Correlator<G: IdGen = SplitMix64> {
    pub(crate) cfg: Config,
    pub(crate) ids: G,
    pub(crate) local: HashSet<IpAddr>,
    /// Latest time seen (message timestamps, `poll`, `conn_close`).
    pub(crate) clock: u64,
    pub(crate) last_prune: u64,
    pub(crate) window: ReorderWindow,
    pub(crate) conns: HashMap<ConnId, ConnState>,
    pub(crate) conn_order: VecDeque<(ConnId, u64)>,
    pub(crate) conn_generation: u64,
    pub(crate) spans: SpanTable<SpanRec>,
    /// Spans not emitted yet, oldest first; removed lazily (an entry whose
    /// record is gone or emitted is skipped), so it may hold stale keys.
    pub(crate) unemitted: VecDeque<SpanKey>,
    pub(crate) retained: VecDeque<(u64, SpanKey)>,
    /// Deadlines, in the order set: every timer is set one window after the
    /// correlator's clock, which never goes back. The window may shrink, so
    /// a deadline can wait behind a later one: it is then decided later,
    /// with more evidence, never earlier. Cancelled timers stay and are
    /// skipped when due.
    pub(crate) timers: VecDeque<(u64, Timer)>,
    /// Reused work list of `resolve`.
    pub(crate) work: Vec<SpanKey>,
    /// Reused list of the spans `resolve` finished.
    pub(crate) finished: Vec<SpanKey>,
    /// Client spans emitted since the last poll, whose records go then.
    pub(crate) done_clients: Vec<SpanKey>,
    /// Heap bytes of the texts of the records held.
    pub(crate) text_bytes: TextBytes,
    pub(crate) threads: ThreadIndex,
    /// Client spans by sequence number (rule 3 lookups by servers).
    pub(crate) seq_clients: MultiIndex<u32>,
    /// Server spans by sequence number (rule 3 lookups by clients).
    pub(crate) seq_servers: MultiIndex<u32>,
    /// Server spans by process and request-id key (rule 5), of their
    /// requests and responses: an id that travels through several local
    /// hops is under one key per process.
    pub(crate) rid_servers: MultiIndex<u64>,
    /// Server spans by process and fingerprint (forwarded requests).
    pub(crate) fwd_servers: MultiIndex<u64>,
    /// Server spans by the socket they came on (runtime-hook causes name a
    /// socket; a TLS request came on the plaintext layer over it).
    pub(crate) conn_servers: MultiIndex<u64>,
    /// What runtime hooks said, and the causes they gave client spans not
    /// decided yet.
    pub(crate) causes: Causes,
    pub(crate) call_causes: HashMap<SpanKey, CallCause>,
    /// Server spans by process and the asyncio task that wrote their
    /// response.
    pub(crate) task_servers: MultiIndex<u64>,
    /// How each process serves requests (rule 4).
    pub(crate) classify: Classifier,
    /// Where requests may have been lost (uniqueness rules do not apply).
    pub(crate) losses: LossMarks,
    /// How far the driver has delivered its inputs (see
    /// [`Correlator::complete_until`]); `None` until it says.
    pub(crate) complete: Option<u64>,
    /// Client spans whose parent waits for the inputs from before their
    /// start to be complete: (start, key).
    pub(crate) await_complete: Vec<(u64, SpanKey)>,
    /// Hashes request-id values (seeded: values come from the network).
    pub(crate) rid_hasher: foldhash::fast::RandomState,
    pub(crate) ready: Vec<Span>,
    /// Texts of spans given back ([`Correlator::recycle`]), reused by the
    /// next requests: in steady state a span's texts allocate nothing.
    pub(crate) spare_texts: Vec<Texts>,
    /// Their heap bytes (part of [`Correlator::span_bytes`]).
    pub(crate) spare_bytes: usize,
    pub(crate) counters: Counters,
    /// Made-up traces that a propagated one may replace.
    pub(crate) adoptions: Adoptions,
}

/// Texts kept for reuse at most, and the largest kept. They count with the
/// records under [`Config::max_span_bytes`] (kept only within it, shed one
/// by one when a record needs the room). Spans finish in batches of
/// thousands between two drains (up to 16k at 100k requests/s); with room
/// for 2048, most of each batch went back to malloc and the next requests
/// allocated anew: a keep-alive replay made 2.0 allocations per span (1.3
/// with 16384), and malloc and free took 12-13 % of the agent's samples at
/// full load (under 1 % with 16384).
const SPARE_TEXTS: usize = 16384;
const SPARE_TEXT_BYTES: usize = 2048;
/// Capacity of a handed-back span list kept for the next one.
const READY_KEPT: usize = 1024;

/// What a message says about its own arrival, without its body.
pub(crate) struct Head {
    pub conn: ConnId,
    pub side: Side,
    pub pid: Pid,
    pub tid: Tid,
    pub seq: u32,
    pub start: u64,
    pub end: u64,
    pub stream_id: Option<u32>,
}

impl Correlator<SplitMix64> {
    /// A correlator whose ids come from a [`SplitMix64`] seeded with `seed`.
    pub fn with_seed(config: Config, seed: u64) -> Self {
        Correlator::new(config, SplitMix64::new(seed))
    }
}

impl<G: IdGen> Correlator<G> {
    /// A correlator with the given configuration and id source.
    pub fn new(mut config: Config, ids: G) -> Self {
        // A key names its record's slot in a fixed number of bits.
        config.max_spans = config.max_spans.min(span_table::MAX_SLOTS);
        let index_cap = config.max_spans.saturating_mul(2).max(16);
        let window = ReorderWindow::new(config.min_window_ns, config.window_ns);
        Correlator {
            threads: ThreadIndex::new(config.max_threads, config.max_server_spans_per_thread),
            seq_clients: MultiIndex::new(index_cap),
            seq_servers: MultiIndex::new(index_cap),
            rid_servers: MultiIndex::new(index_cap),
            fwd_servers: MultiIndex::new(index_cap),
            conn_servers: MultiIndex::new(index_cap),
            causes: Causes::new(config.max_threads, config.max_spans.max(1024)),
            call_causes: HashMap::new(),
            task_servers: MultiIndex::new(index_cap),
            classify: Classifier::new(&config),
            losses: LossMarks::default(),
            complete: None,
            await_complete: Vec::new(),
            rid_hasher: foldhash::fast::RandomState::default(),
            cfg: config,
            ids,
            local: HashSet::new(),
            clock: 0,
            last_prune: 0,
            window,
            conns: HashMap::new(),
            conn_order: VecDeque::new(),
            conn_generation: 0,
            spans: SpanTable::new(),
            unemitted: VecDeque::new(),
            retained: VecDeque::new(),
            timers: VecDeque::new(),
            work: Vec::new(),
            finished: Vec::new(),
            done_clients: Vec::new(),
            text_bytes: TextBytes::default(),
            ready: Vec::new(),
            spare_texts: Vec::new(),
            spare_bytes: 0,
            counters: Counters::default(),
            adoptions: Adoptions::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// What happened so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Replace the set of this host's addresses (loopback is always local).
    /// A server span whose peer is local waits for the peer's client span.
    pub fn set_local_addrs<I: IntoIterator<Item = IpAddr>>(&mut self, addrs: I) {
        self.local = addrs.into_iter().map(|a| a.to_canonical()).collect();
    }

    /// Whether `ip` is an address of this host.
    pub fn is_local(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_loopback() || self.local.contains(&ip)
    }

    /// Heap bytes by structure, estimated from capacities (texts as
    /// counted for the bound): what [`Config::max_span_bytes`] bounds
    /// (`records`, `texts`, `spare_texts`) and what it does not. Walks every
    /// thread and connection: for benches and diagnostics, not per event.
    pub fn heap_estimate(&self) -> Vec<(&'static str, usize)> {
        let conns: usize = self
            .conns
            .values()
            .map(|c| {
                (c.fifo[0].capacity() + c.fifo[1].capacity()) * std::mem::size_of::<SpanKey>()
                    + table_bytes::<((Side, u32), SpanKey)>(c.streams.capacity())
            })
            .sum();
        vec![
            ("records", self.spans.heap_bytes()),
            ("texts", self.text_bytes.get()),
            ("spare_texts", self.spare_bytes),
            ("thread_index", self.threads.heap_bytes()),
            (
                "losses",
                self.losses.heap_bytes()
                    + self.await_complete.capacity() * std::mem::size_of::<(u64, SpanKey)>(),
            ),
            (
                "request_indexes",
                self.seq_clients.heap_bytes()
                    + self.seq_servers.heap_bytes()
                    + self.rid_servers.heap_bytes()
                    + self.fwd_servers.heap_bytes()
                    + self.conn_servers.heap_bytes()
                    + self.task_servers.heap_bytes(),
            ),
            (
                "timers_and_queues",
                self.timers.capacity() * std::mem::size_of::<(u64, Timer)>()
                    + self.unemitted.capacity() * std::mem::size_of::<SpanKey>()
                    + self.retained.capacity() * std::mem::size_of::<(u64, SpanKey)>()
                    + self.conn_order.capacity() * std::mem::size_of::<(ConnId, u64)>(),
            ),
            (
                "connections",
                table_bytes::<(ConnId, ConnState)>(self.conns.capacity()) + conns,
            ),
            (
                "output",
                self.ready.capacity() * std::mem::size_of::<Span>(),
            ),
            ("adoptions", self.adoptions.heap_bytes()),
        ]
    }

    /// Span records held (in progress, waiting or retained).
    pub fn live_spans(&self) -> usize {
        self.spans.len()
    }

    /// Memory held by span records (bytes, their texts included), the
    /// quantity [`Config::max_span_bytes`] bounds.
    pub fn span_bytes(&self) -> usize {
        self.spans.len() * RECORD_BYTES + self.text_bytes.get() + self.spare_bytes
    }

    /// Gives back spans that [`poll`](Self::poll) or [`flush`](Self::flush)
    /// returned, once the caller is done with them: their buffers are
    /// reused for the next spans (a bounded number is kept).
    pub fn recycle(&mut self, mut spans: Vec<Span>) {
        for span in spans.drain(..) {
            let mut t = span.texts;
            let bytes = t.heap_bytes();
            if self.spare_texts.len() < SPARE_TEXTS
                && bytes <= SPARE_TEXT_BYTES
                && self.span_bytes() + bytes <= self.cfg.max_span_bytes
            {
                t.clear();
                self.spare_bytes += bytes;
                self.spare_texts.push(t);
            }
        }
        // The list itself becomes the next one handed out (unless a burst
        // made it large).
        if self.ready.capacity() == 0 && spans.capacity() <= READY_KEPT {
            self.ready = spans;
        }
    }

    /// A recycled text, taken out of the spares (and their bytes).
    pub(crate) fn pop_spare_text(&mut self) -> Option<Texts> {
        let t = self.spare_texts.pop()?;
        self.spare_bytes -= t.heap_bytes();
        // The spares were last used one or more polls ago: the next one's
        // buffers (its own fields asked for at the pop before) and the one
        // after's fields are fetched while this request is rendered.
        let mut ahead = self.spare_texts.iter().rev();
        if let Some(next) = ahead.next() {
            next.prefetch_buffers();
        }
        if let Some(after) = ahead.next() {
            prefetch::lines(after);
        }
        Some(t)
    }

    /// The reorder window in use (ns; see [`Config::min_window_ns`]).
    pub fn window_ns(&self) -> u64 {
        self.window.get()
    }

    /// Connections tracked.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The server span in progress on `pid`/`tid` at monotonic time `t_ns`
    /// when exactly one is known to be (rule 6: where a CPU sample taken
    /// then belongs). Answers for spans that ended up to
    /// `sample_window_ns` ago.
    pub fn server_span_at(&self, pid: Pid, tid: Tid, t_ns: u64) -> Option<SpanId> {
        self.threads.at(pid, tid, t_ns)
    }

    /// A connection was opened or first seen. Call before its messages;
    /// messages of an unknown connection are tracked without addresses.
    pub fn conn_open(&mut self, info: ConnInfo) {
        let addrs = Some((canonical(info.local), canonical(info.remote)));
        match self.conns.get_mut(&info.conn) {
            Some(c) => c.addrs = addrs,
            None => self.insert_conn(info.conn, addrs),
        }
    }

    /// A connection closed at `now_ns`. Its requests still waiting for a
    /// response end at `now_ns` with an error, after `window_ns` of grace
    /// for late messages.
    pub fn conn_close(&mut self, conn: ConnId, now_ns: u64) {
        self.advance(now_ns);
        let deadline = self.clock.saturating_add(self.window.get());
        if let Some(c) = self.conns.get_mut(&conn) {
            if c.closing.is_none() {
                c.closing = Some(now_ns);
                self.timers
                    .push_back((deadline, Timer::Close(conn, c.generation)));
            }
        }
    }

    /// The connection's byte stream lost data the stream layer could not
    /// recover (at `now_ns`): its requests still waiting for a response end
    /// now as errors, so that responses after the gap cannot pair with the
    /// wrong request. The connection stays tracked.
    pub fn conn_reset(&mut self, conn: ConnId, now_ns: u64) {
        self.advance(now_ns);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let keys = c.all_outstanding();
        c.fifo.iter_mut().for_each(VecDeque::clear);
        c.streams.clear();
        self.end_data_lost(keys, now_ns);
    }

    /// Requests whose responses were lost with stream data end at `at`.
    fn end_data_lost(&mut self, keys: impl IntoIterator<Item = SpanKey>, at: u64) {
        for key in keys {
            if let Some(r) = self.spans.get_mut(&key).filter(|r| r.end.is_none()) {
                // When the call really ended is lost with the data.
                r.end_lost = true;
                self.counters.reset_outstanding += 1;
                self.fail(key, at, "stream data lost", "stream_data_lost");
            }
        }
    }

    /// A response moved on `conn` by `side` (HTTP/1) after bytes its
    /// direction could not read as messages, the first at `since_ns`: the
    /// responses of requests written before then may have been in them, so
    /// those requests end now, as [`conn_reset`](Self::conn_reset) ends
    /// them, before the response pairs with the oldest one left. (A Go
    /// client's Read parked before the agent started returns a response's
    /// plaintext unseen, then its body is seen alone.)
    pub fn responses_lost(&mut self, conn: ConnId, side: Side, since_ns: u64, now_ns: u64) {
        self.advance(now_ns);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let fifo = &mut c.fifo[side_ix(side.opposite())];
        let mut lost: SmallVec<[SpanKey; 4]> = SmallVec::new();
        while let Some(&k) = fifo.front() {
            if self.spans.get(&k).is_some_and(|r| r.start >= since_ns) {
                break;
            }
            fifo.pop_front();
            lost.push(k);
        }
        // Their responses, if any, were among those bytes.
        self.end_data_lost(lost, since_ns);
    }

    /// What a runtime hook saw thread `tid` of `pid` do at `t_ns` (see
    /// [`CauseEvent`]): calls it makes inside the work it started for a
    /// request are that request's children, when exactly one request is in
    /// flight on that connection.
    pub fn cause(&mut self, pid: Pid, tid: Tid, t_ns: u64, ev: CauseEvent) {
        self.advance(t_ns);
        self.counters.cause_events += 1;
        self.counters.causes_forgotten += self.causes.event(pid, tid, t_ns, ev);
    }

    /// Inputs that may have held a request read by `pid` (`None`: the
    /// process is not known) from `at_ns` on were lost: a hole in a stream,
    /// a message without its call, records the kernel could not deliver.
    /// Until that request could no longer be in flight, no process-wide
    /// uniqueness (a forwarded request, a request id) links a call of that
    /// process: the lost request might have been the one.
    pub fn inbound_lost(&mut self, pid: Option<Pid>, at_ns: u64) {
        self.counters.inbound_losses += 1;
        self.hold_for_loss(pid, at_ns);
    }

    fn hold_for_loss(&mut self, pid: Option<Pid>, at_ns: u64) {
        let until = at_ns.saturating_add(self.cfg.loss_hold_ns);
        self.losses.mark(pid, at_ns, until);
    }

    /// Bytes that may hold a request for `pid` arrived at `at_ns` and it
    /// has not read them yet. They wait for the read, but a read the
    /// capture missed would look the same: the process is treated as after
    /// [`inbound_lost`](Self::inbound_lost), counted apart.
    pub fn inbound_unread(&mut self, pid: Option<Pid>, at_ns: u64) {
        self.counters.unread_holds += 1;
        self.hold_for_loss(pid, at_ns);
    }

    /// Every input stamped before `t_ns` has been given (or reported lost
    /// with [`inbound_lost`](Self::inbound_lost)). A driver that calls this
    /// makes the uniqueness rules wait for it: a call is linked by them
    /// only once every request that could be its parent is known. A driver
    /// that never calls it is taken to give every input in time order.
    pub fn complete_until(&mut self, t_ns: u64) {
        let t = self.complete.map_or(t_ns, |c| c.max(t_ns));
        self.complete = Some(t);
        self.decide_completed();
    }

    /// One request or response.
    pub fn message(&mut self, msg: Message<'_>) {
        self.counters.messages += 1;
        self.advance(msg.end_ns.max(msg.start_ns));
        if !self.conns.contains_key(&msg.conn) {
            self.counters.unknown_connection += 1;
            self.insert_conn(msg.conn, None);
        }
        self.classify
            .message(msg.pid, msg.tid, msg.conn, msg.start_ns, &mut self.counters);
        let head = Head {
            conn: msg.conn,
            side: msg.side,
            pid: msg.pid,
            tid: msg.tid,
            seq: msg.seq,
            start: msg.start_ns,
            end: msg.end_ns,
            stream_id: msg.stream_id,
        };
        match msg.kind {
            MessageKind::Request(req) => self.on_request(head, &req),
            MessageKind::Response(resp) => self.on_response(head, &resp),
        }
    }

    /// Advance time to `now_ns`, settle what is due, and return the spans
    /// finished since the last call.
    pub fn poll(&mut self, now_ns: u64) -> Vec<Span> {
        self.poll_at_most(now_ns, usize::MAX)
    }

    /// [`poll`](Self::poll), but settling stops once `max` spans are ready;
    /// the rest stay due for the next call. A caller that polls late (a
    /// backlog, a busy host) calls again until fewer than `max` come, and
    /// moves each part on before the next, rather than holding every span
    /// that became due at once. The spans are the same either way.
    pub fn poll_at_most(&mut self, now_ns: u64, max: usize) -> Vec<Span> {
        // The time, not an input: counted as one, a caller's polls made
        // sparse traffic look busy to the reorder window.
        self.clock = self.clock.max(now_ns);
        self.window.tick(self.clock);
        while let Some(&(at, timer)) = self.timers.front() {
            if at > self.clock || self.ready.len() >= max {
                break;
            }
            self.timers.pop_front();
            match timer {
                Timer::Decide(key) => {
                    let due = self
                        .spans
                        .get(&key)
                        .is_some_and(|r| r.parent == Parent::Undecided && r.decide_at == Some(at));
                    if due {
                        self.decide(key, false);
                    }
                }
                Timer::Close(conn, generation) => self.finish_close(conn, generation),
            }
        }
        self.decide_completed();
        self.expire_retained();
        if self.clock.saturating_sub(self.last_prune) >= self.cfg.window_ns.max(1) {
            self.last_prune = self.clock;
            self.prune_indexes();
        }
        std::mem::take(&mut self.ready)
    }

    /// Spans emitted since the last [`poll`](Self::poll) (or
    /// [`take_ready`](Self::take_ready)) and not yet handed out.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// The spans emitted so far, without advancing time: a caller that
    /// feeds a long backlog between polls takes them as they come, so they
    /// are not all held at once.
    pub fn take_ready(&mut self) -> Vec<Span> {
        std::mem::take(&mut self.ready)
    }

    /// Settle every finished span now, whatever evidence is still missing
    /// (shutdown), and return all spans ready. Spans still waiting for a
    /// response stay.
    pub fn flush(&mut self) -> Vec<Span> {
        let keys: Vec<SpanKey> = self.unemitted.iter().copied().collect();
        for key in keys {
            if self.spans.get(&key).is_some_and(|r| r.end.is_some()) {
                self.settle_now(key);
            }
        }
        std::mem::take(&mut self.ready)
    }

    fn push_unemitted(&mut self, key: SpanKey) {
        // The unemitted are a part of the records: past this, most entries
        // are stale.
        if self.unemitted.len() > 2 * self.spans.len() + 1024 {
            let spans = &self.spans;
            self.unemitted
                .retain(|k| spans.get(k).is_some_and(|r| !r.emitted));
        }
        self.unemitted.push_back(key);
    }

    /// Every timestamped input passes here: how far behind the clock it
    /// arrives is what the reorder window measures.
    pub(crate) fn advance(&mut self, t: u64) {
        self.window.observe(self.clock, t);
        self.clock = self.clock.max(t);
    }

    fn insert_conn(&mut self, conn: ConnId, addrs: Option<(SocketAddr, SocketAddr)>) {
        while self.conns.len() >= self.cfg.max_connections.max(1) {
            let Some((old, generation)) = self.conn_order.pop_front() else {
                break;
            };
            if self
                .conns
                .get(&old)
                .is_some_and(|c| c.generation == generation)
            {
                self.counters.connection_overflow += 1;
                self.drop_conn(old, self.clock, "connection evicted", "connection_evicted");
            }
        }
        self.conn_generation += 1;
        let generation = self.conn_generation;
        self.conns.insert(
            conn,
            ConnState {
                addrs,
                generation,
                closing: None,
                fifo: [VecDeque::new(), VecDeque::new()],
                streams: HashMap::new(),
            },
        );
        self.conn_order.push_back((conn, generation));
        if self.conn_order.len() > self.cfg.max_connections.saturating_mul(2).max(16) {
            let conns = &self.conns;
            self.conn_order
                .retain(|(c, g)| conns.get(c).is_some_and(|s| s.generation == *g));
        }
    }

    fn finish_close(&mut self, conn: ConnId, generation: u64) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.generation != generation {
            return;
        }
        let at = c.closing.unwrap_or(self.clock);
        let n = self.drop_conn(
            conn,
            at,
            "connection closed before response",
            "connection_closed",
        );
        self.counters.closed_before_response += n;
    }

    /// Forget a connection, ending its outstanding requests as errors at
    /// `at`. Returns how many were ended.
    fn drop_conn(&mut self, conn: ConnId, at: u64, msg: &str, error_type: &str) -> u64 {
        let Some(c) = self.conns.remove(&conn) else {
            return 0;
        };
        let mut n = 0;
        for key in c.all_outstanding() {
            if self.spans.get(&key).is_some_and(|r| r.end.is_none()) {
                self.fail(key, at, msg, error_type);
                n += 1;
            }
        }
        n
    }

    /// End a span without a response.
    pub(crate) fn fail(&mut self, key: SpanKey, at: u64, msg: &str, error_type: &str) {
        if let Some(r) = self.spans.get_mut(&key) {
            if r.kind == SpanKind::Client && r.end.is_none() {
                self.classify.call_failed(r.pid, r.tid, key, at);
            }
            r.status = Status::Error(msg.to_string());
            self.text_bytes
                .update(&mut r.texts, |t| t.push_str(Key::ErrorType, error_type));
        }
        self.complete(key, at);
    }

    /// The span's last byte moved at `end`: emit it if its trace is known.
    pub(crate) fn complete(&mut self, key: SpanKey, end: u64) {
        let Some(r) = self.spans.get_mut(&key) else {
            return;
        };
        if r.end.is_some() {
            return;
        }
        let end = if end < r.start {
            self.counters.clock_anomaly += 1;
            r.start
        } else {
            end
        };
        r.end = Some(end);
        let (kind, pid, tid, start, ready) = (r.kind, r.pid, r.tid, r.start, r.ctx.is_some());
        let await_end = std::mem::take(&mut r.await_end);
        if kind == SpanKind::Server {
            if self.threads.set_end(pid, tid, key, start, end) {
                self.classify.overlap(pid, self.clock, &mut self.counters);
            }
            self.classify.server_ended(pid);
        }
        if await_end {
            // Its parent decision waited for this end; it emits the span.
            self.decide(key, false);
        } else if ready {
            self.emit(key);
        }
    }

    fn on_request(&mut self, h: Head, req: &Request<'_>) {
        let kind = match h.side {
            Side::Inbound => SpanKind::Server,
            Side::Outbound => SpanKind::Client,
        };
        let addrs = self.conns.get(&h.conn).and_then(|c| c.addrs);
        let spare = self.pop_spare_text().unwrap_or_default();
        let (texts, facts) = request_facts(kind, req, addrs, &self.cfg, &self.rid_hasher, spare);
        let header = extract(&req.headers, &mut self.counters);
        let rids = request_ids(
            &req.headers,
            &self.cfg.request_id_headers,
            &self.rid_hasher,
            &mut self.counters,
        );
        self.make_room(RECORD_BYTES + texts.heap_bytes());
        let key = self.spans.new_key();
        let span_id = self.fresh_span_id();
        let rec = SpanRec {
            span_id,
            kind,
            pid: h.pid,
            tid: h.tid,
            seq: h.seq,
            start: h.start,
            end: None,
            addrs,
            fingerprint: facts.fingerprint,
            body: facts.body,
            header,
            request_ids: rids,
            parent: Parent::Undecided,
            source: ParentSource::Root,
            root_reason: RootReason::Lost,
            await_end: false,
            waited: false,
            awaited_complete: false,
            busy: kind == SpanKind::Client && self.classify.serving(h.pid),
            end_lost: false,
            decide_at: None,
            waiting_mirror: false,
            matched: false,
            ctx: None,
            waiting_children: SmallVec::new(),
            emitted: false,
            trace_exported: false,
            grpc: facts.grpc,
            texts,
            status: Status::Unset,
        };
        if kind == SpanKind::Server {
            let entry = ThreadEntry {
                key,
                span_id,
                start: h.start,
                end: None,
            };
            let hold = self.cfg.retention_ns;
            let overlap = self.threads.overlaps_ended(h.pid, h.tid, h.start);
            self.classify
                .server_read(h.pid, overlap, self.clock, &mut self.counters);
            let recent = self.clock.saturating_sub(self.rules_horizon_ns());
            match self
                .threads
                .insert(h.pid, h.tid, entry, self.clock, hold, recent)
            {
                ThreadInsert::Clean => {}
                ThreadInsert::Trimmed => self.counters.thread_index_trimmed += 1,
                ThreadInsert::Lost => self.counters.thread_index_overflow += 1,
            }
            let spans = &self.spans;
            let mut clean = true;
            for &rid in rec.request_ids.as_slice() {
                clean &= self
                    .rid_servers
                    .insert(forward_key(h.pid, rid), key, |k| spans.contains_key(&k));
            }
            clean &= self
                .fwd_servers
                .insert(forward_key(h.pid, rec.fingerprint), key, |k| {
                    spans.contains_key(&k)
                });
            // By socket: runtime hooks name the socket a request came on.
            self.conn_servers
                .insert(h.conn.socket().0, key, |k| spans.contains_key(&k));
            if !clean {
                self.index_forgotten();
            }
        } else {
            self.classify
                .call_written(h.pid, h.tid, h.conn, key, h.start, &mut self.counters);
            if !self.causes.is_empty() {
                let cause = match self.causes.of_call(h.pid, h.tid, h.conn, h.start) {
                    Some(c) => Some(CallCause::Conn(c)),
                    None => self.causes.task_at(h.pid, h.tid, h.start).map(|task| {
                        let line = self.causes.lineage(h.pid, task).into_iter();
                        CallCause::Tasks(line.map(|t| forward_key(h.pid, task_key(t))).collect())
                    }),
                };
                if let Some(c) = cause {
                    self.counters.runtime_causes += 1;
                    self.call_causes.insert(key, c);
                }
            }
        }
        self.text_bytes.add(&rec.texts);
        self.spans.insert(key, rec);
        self.push_unemitted(key);
        self.push_outstanding(&h, key);
        match kind {
            SpanKind::Server => self.server_arrived(key),
            SpanKind::Client => self.client_arrived(key),
        }
    }

    /// Queue a request on its connection, ending the oldest one when the
    /// connection has too many.
    fn push_outstanding(&mut self, h: &Head, key: SpanKey) {
        let max = self.cfg.max_outstanding_per_conn.max(1);
        let Some(c) = self.conns.get_mut(&h.conn) else {
            return;
        };
        let mut victim = None;
        if c.outstanding() >= max {
            let oldest = c.all_outstanding().first().copied();
            if let Some(old) = oldest {
                for f in c.fifo.iter_mut() {
                    f.retain(|k| *k != old);
                }
                c.streams.retain(|_, k| *k != old);
                victim = Some(old);
            }
        }
        match h.stream_id {
            Some(id) => {
                if let Some(prev) = c.streams.insert((h.side, id), key) {
                    // A stream id reused while outstanding: the old request
                    // will never see its response.
                    victim = victim.or(Some(prev));
                }
            }
            None => c.fifo[side_ix(h.side)].push_back(key),
        }
        if let Some(old) = victim {
            self.counters.outstanding_overflow += 1;
            self.fail(
                old,
                self.clock,
                "response not observed",
                "response_not_observed",
            );
        }
    }

    fn on_response(&mut self, h: Head, resp: &Response<'_>) {
        let req_side = h.side.opposite();
        let Some(c) = self.conns.get_mut(&h.conn) else {
            self.counters.unmatched_response += 1;
            return;
        };
        let key = match h.stream_id {
            Some(id) => c.streams.remove(&(req_side, id)),
            None => c.fifo[side_ix(req_side)].pop_front(),
        };
        let rec = key.and_then(|k| self.spans.get_mut(&k).map(|r| (k, r)));
        let Some((key, rec)) = rec.filter(|(_, r)| r.end.is_none()) else {
            self.counters.unmatched_response += 1;
            return;
        };
        let (kind, grpc) = (rec.kind, rec.grpc);
        rec.status = self
            .text_bytes
            .update(&mut rec.texts, |t| response_status(kind, grpc, resp, t));
        let (kind, pid, tid) = (rec.kind, rec.pid, rec.tid);
        match kind {
            SpanKind::Server => {
                self.classify
                    .server_answered(pid, tid, h.tid, h.end, &mut self.counters);
                self.response_ids(key, resp);
                if !self.causes.is_empty() {
                    // The asyncio task whose step wrote the response.
                    if let Some(task) = self.causes.task_at(h.pid, h.tid, h.start) {
                        let spans = &self.spans;
                        let k = forward_key(pid, task_key(task));
                        self.task_servers.insert(k, key, |k| spans.contains_key(&k));
                    }
                }
            }
            SpanKind::Client => {
                self.classify.call_answered(
                    pid,
                    tid,
                    key,
                    (h.start, h.end),
                    h.tid,
                    &mut self.counters,
                );
            }
        }
        self.complete(key, h.end);
    }

    /// Request ids a server span's response returns are ids of that request
    /// too (a proxy that generates one sends it upstream and echoes it
    /// downstream): rule 5 finds the request by them.
    fn response_ids(&mut self, key: SpanKey, resp: &Response<'_>) {
        if resp.headers.is_empty() || self.cfg.request_id_headers.is_empty() {
            return;
        }
        let ids = request_ids(
            &resp.headers,
            &self.cfg.request_id_headers,
            &self.rid_hasher,
            &mut self.counters,
        );
        if ids.as_slice().is_empty() {
            return;
        }
        let Some(rec) = self.spans.get_mut(&key) else {
            return;
        };
        let pid = rec.pid;
        let mut kept = RequestIds::default();
        for &rid in ids.as_slice() {
            if rec.request_ids.push(rid) {
                kept.push(rid);
            } else {
                self.counters.request_ids_ignored += 1;
            }
        }
        let spans = &self.spans;
        let mut clean = true;
        for &rid in kept.as_slice() {
            clean &= self
                .rid_servers
                .insert(forward_key(pid, rid), key, |k| spans.contains_key(&k));
        }
        if !clean {
            self.index_forgotten();
        }
    }

    /// An index of requests in flight forgot live entries at its bound:
    /// any request from before may be missing from it.
    fn index_forgotten(&mut self) {
        self.counters.index_overflow += 1;
        let until = self.clock.saturating_add(self.cfg.loss_hold_ns);
        self.losses.mark(None, 0, until);
    }

    pub(crate) fn fresh_span_id(&mut self) -> SpanId {
        let mut id = SpanId(self.ids.next_u64().to_be_bytes());
        if !id.is_valid() {
            id = SpanId(self.ids.next_u64().to_be_bytes());
        }
        if !id.is_valid() {
            id.0[7] = 1;
        }
        id
    }

    pub(crate) fn fresh_trace_id(&mut self) -> TraceId {
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&self.ids.next_u64().to_be_bytes());
        t[8..].copy_from_slice(&self.ids.next_u64().to_be_bytes());
        let mut id = TraceId(t);
        if !id.is_valid() {
            id.0[15] = 1;
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Header, HttpVersion, Scheme};

    fn headers(ids: &[&str]) -> Vec<Header<'static>> {
        ids.iter()
            .map(|v| Header::owned("x-request-id", v))
            .collect()
    }

    fn message(pid: u32, side: Side, t: u64, kind: MessageKind<'static>) -> Message<'static> {
        Message {
            conn: ConnId(u64::from(pid)),
            side,
            pid: Pid(pid),
            tid: Tid(pid),
            seq: 1,
            start_ns: t,
            end_ns: t,
            stream_id: None,
            kind,
        }
    }

    fn get(target: &str) -> Request<'static> {
        Request {
            method: "GET".into(),
            target: target.to_owned().into(),
            version: HttpVersion::Http11,
            scheme: Scheme::Http,
            headers: Vec::new().into(),
            unknown: None,
        }
    }

    fn ok() -> Response<'static> {
        Response {
            status: 200,
            version: HttpVersion::Http11,
            headers: Vec::new().into(),
            reset: false,
            grpc_messages: None,
            unknown: None,
        }
    }

    #[test]
    fn spare_texts_stay_within_the_bound_and_are_shed_one_by_one() {
        let cfg = Config {
            max_span_bytes: 44 * RECORD_BYTES,
            ..Config::default()
        };
        let mut c = Correlator::with_seed(cfg, 1);
        let mut t = 10;
        let mut serve = |c: &mut Correlator<_>, pid: u32| {
            t += 10;
            c.message(message(
                pid,
                Side::Inbound,
                t,
                MessageKind::Request(get("/a")),
            ));
            c.message(message(
                pid,
                Side::Outbound,
                t + 1,
                MessageKind::Response(ok()),
            ));
        };
        for pid in 1..=50 {
            serve(&mut c, pid);
        }
        let spans = c.flush();
        assert_eq!(spans.len(), 50);
        // Their records forgotten (past the retention), their texts spare.
        assert!(c.poll(10 * c.cfg.retention_ns).is_empty());
        c.recycle(spans);
        let kept = c.spare_texts.len();
        assert!(
            kept > 20 && c.span_bytes() <= c.cfg.max_span_bytes,
            "{kept}"
        );
        // Requests until the bound is reached: each sheds what it needs of
        // the spares (it takes one and sheds at most one or two), never all
        // of them at once, and the bound holds.
        let mut reached = false;
        for pid in 51..=80 {
            let before = c.spare_texts.len();
            serve(&mut c, pid);
            let after = c.spare_texts.len();
            assert!(c.span_bytes() <= c.cfg.max_span_bytes);
            assert!(after + 3 >= before, "{before} spares -> {after}");
            reached |= after + 1 < before;
        }
        assert!(reached, "the bound was never reached");
        // Handed back at the bound: kept only within it.
        let spans = c.flush();
        assert!(spans.len() >= 30);
        c.recycle(spans);
        assert!(c.span_bytes() <= c.cfg.max_span_bytes);
    }

    #[test]
    fn request_ids_are_indexed_per_process_and_only_when_kept() {
        let mut c = Correlator::with_seed(Config::default(), 1);
        // Two ids through two local processes: a key for each.
        for pid in [1, 2] {
            let req = Request {
                method: "GET".into(),
                target: "/".into(),
                version: HttpVersion::Http11,
                scheme: Scheme::Http,
                headers: headers(&["a", "x"]).into(),
                unknown: None,
            };
            c.message(message(pid, Side::Inbound, 10, MessageKind::Request(req)));
        }
        assert_eq!((c.rid_servers.keys(), c.rid_servers.len()), (4, 4));
        // A response returns four ids: one known, two more fit, one not.
        let resp = Response {
            status: 200,
            version: HttpVersion::Http11,
            headers: headers(&["a", "b", "c", "d"]).into(),
            reset: false,
            grpc_messages: None,
            unknown: None,
        };
        let before = c.counters().request_ids_ignored;
        c.message(message(1, Side::Outbound, 20, MessageKind::Response(resp)));
        assert_eq!(c.counters().request_ids_ignored - before, 1);
        assert_eq!((c.rid_servers.keys(), c.rid_servers.len()), (6, 6));
    }
}
