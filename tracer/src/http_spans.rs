//! Byte streams -> protocol messages -> spans: the glue between the
//! connection table, the per-connection protocol parser (protocols'
//! [`ConnParser`]: HTTP/1, HTTP/2 with gRPC, or opaque) and the correlator
//! (correlate).
//!
//! Which direction of a connection carries requests follows from which end
//! opened it (the client writes requests); for connections opened before the
//! agent started the parser reads it off the first bytes (an HTTP/1 line,
//! the HTTP/2 preface or SETTINGS, or the first HTTP/2 header block whose
//! `:method` or `:status` decodes).
use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt};

use arrayvec::ArrayVec;
use correlate::{
    ConnId, Correlator, GrpcMessages, Header, HttpVersion, Message as CMessage, MessageKind, Pid,
    Request, Response, Scheme, Side, Span, SplitMix64, Tid,
};
use protocols::{
    conn::{self, ConnConfig, ConnCounters, ConnParser, MessageView, Protocol, Version},
    hpack::{self, HpackCounters, Unknown},
    http1::Http1Counters,
    http2::{FrameCounters, Http2Counters, StreamEnd},
    stream::{Chunk, MissingKind, Piece},
};
use tracer_common::Dir;

use crate::conntrack::{ConnInfo, CtlRequest, Role};

/// Counters of this stage (the parser and correlator keep their own).
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpCounters {
    /// Connections whose bytes were looked at.
    pub connections: u64,
    /// Connections found not to carry HTTP (other protocols, TLS).
    pub not_http: u64,
    /// Requests and responses handed to the correlator.
    pub messages: u64,
    /// Messages without any call record (no thread/time): dropped.
    pub messages_without_call: u64,
    /// Connections whose request direction could not be told: their
    /// bytes were skipped.
    pub undecided_chunks: u64,
    /// Connections evicted from this stage's table (bound reached).
    pub evicted: u64,
    /// Messages whose head was cut (by the capture's head window or a
    /// missing range): made into spans from the lines before the cut.
    pub heads_cut: u64,
    /// HTTP/2 requests whose method or path could not be decoded (HPACK
    /// table entries lost): spans without them, saying why.
    pub h2_requests_undecoded: u64,
    /// HTTP/2 responses whose `:status` could not be decoded.
    pub h2_status_unknown: u64,
    /// HTTP/2 header fields not handed over because their name or value
    /// was unknown.
    pub h2_fields_unknown: u64,
}

/// The HTTP/2 side of the parsers' counters, every connection's summed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Http2Totals {
    /// Streams and messages.
    pub streams: Http2Counters,
    /// Frame layer, both directions.
    pub frames: FrameCounters,
    /// HPACK decoders, both directions.
    pub hpack: HpackCounters,
    /// Protocol detection.
    pub detect: ConnCounters,
}

/// Bound on connections parsed at once (the connection table has its own).
const MAX_CONNS: usize = 65_536;

/// Parsers kept for reuse (most connections are short).
const PARSER_POOL: usize = 1024;

struct HttpConn {
    /// Boxed: moves cheaply, and goes back to the pool when the connection
    /// ends.
    parser: Box<ConnParser>,
    opened: bool,
    not_http: bool,
    /// Per direction: stream offset up to which a body skip was requested.
    skip_asked: [u64; 2],
    /// The kernel was told this connection speaks HTTP/2.
    h2_asked: bool,
}

/// A pid the capture knows (0: not known).
fn known(pid: u32) -> Option<Pid> {
    (pid != 0).then_some(Pid(pid))
}

/// Whether requests arrive on `conn`'s received bytes: it is a socket the
/// process accepted, or its parser (`c`, if it has seen bytes) saw them
/// arrive there.
fn serves(conn: &ConnInfo, c: Option<&HttpConn>) -> bool {
    conn.role == Role::Server || c.is_some_and(|c| c.parser.client() == Some(conn::Dir::B))
}

/// Parses every connection and turns messages into spans.
pub struct HttpSpans {
    conns: HashMap<u64, HttpConn>,
    out: ToSpans,
    config: ConnConfig,
    // The boxes themselves move between the pool and connections.
    #[allow(clippy::vec_box)]
    pool: Vec<Box<ConnParser>>,
    /// HTTP/1 parser counters of connections already closed.
    retired: Http1Counters,
    /// HTTP/2 and detection counters of connections already closed.
    retired_h2: Http2Totals,
    /// Requests to the capture (silence a connection, skip a body).
    ctl: Vec<CtlRequest>,
}

/// Bodies with less than this left are copied anyway: a request to skip
/// reaches the kernel a few milliseconds later, by when a shorter body has
/// usually gone by (loopback moves 1 MiB in well under a millisecond), and
/// while requests are pending every socket's packets and calls pay for a
/// lookup.
const SKIP_MIN: u64 = 1 << 20;

/// Headers a message lends the correlator without a heap allocation (a
/// message with more is rare and uses one).
const INLINE_HEADERS: usize = 48;

/// Messages -> the correlator: the part of the stage the parsers' callbacks
/// reach (the parsers themselves are borrowed from `conns` meanwhile).
struct ToSpans {
    correlator: Correlator<SplitMix64>,
    counters: HttpCounters,
    now_ns: u64,
}

/// The parser's name for a direction: `A` is what the local process sent.
fn cdir(d: Dir) -> conn::Dir {
    match d {
        Dir::Send => conn::Dir::A,
        Dir::Recv => conn::Dir::B,
    }
}

fn tdir(d: conn::Dir) -> Dir {
    match d {
        conn::Dir::A => Dir::Send,
        conn::Dir::B => Dir::Recv,
    }
}

/// The direction requests travel in, as the connection's opening tells.
fn client_dir(role: Role) -> Option<conn::Dir> {
    match role {
        Role::Client => Some(conn::Dir::A),
        Role::Server => Some(conn::Dir::B),
        Role::Unknown => None,
    }
}

fn first_data<'a>(chunk: &Chunk<'a>) -> Option<&'a [u8]> {
    match chunk.pieces.first() {
        Some(Piece::Data(d)) => Some(d),
        _ => None,
    }
}

fn version(v: Version) -> HttpVersion {
    match v {
        Version::Http10 => HttpVersion::Http10,
        Version::Http11 => HttpVersion::Http11,
        Version::Http2 => HttpVersion::Http2,
    }
}

fn add_parser(h1: &mut Http1Counters, h2: &mut Http2Totals, p: &ConnParser) {
    if let Some(c) = p.http1() {
        *h1 += c.requests().counters();
        *h1 += c.responses().counters();
    }
    if let Some(c) = p.http2() {
        h2.streams += c.counters();
        for responses in [false, true] {
            h2.frames += c.frame_counters(responses);
            h2.hpack += c.hpack_counters(responses);
        }
    }
    h2.detect += p.counters();
}

impl HttpSpans {
    /// A fresh stage; `seed` seeds span and trace ids; `local` are this
    /// host's addresses (a server span whose peer is one of them waits for
    /// that peer's client span).
    pub fn new(correlator: correlate::Config, seed: u64, local: &[IpAddr]) -> HttpSpans {
        let mut correlator = Correlator::with_seed(correlator, seed);
        correlator.set_local_addrs(local.iter().copied());
        HttpSpans {
            conns: HashMap::new(),
            out: ToSpans {
                correlator,
                counters: HttpCounters::default(),
                now_ns: 0,
            },
            config: ConnConfig::default(),
            pool: Vec::new(),
            retired: Http1Counters::default(),
            retired_h2: Http2Totals::default(),
            ctl: Vec::new(),
        }
    }

    /// What this stage asks of the capture since the last call.
    pub fn take_ctl_requests(&mut self) -> Vec<CtlRequest> {
        std::mem::take(&mut self.ctl)
    }

    /// The host's addresses changed (interfaces come and go).
    pub fn set_local_addrs(&mut self, local: &[IpAddr]) {
        self.out.correlator.set_local_addrs(local.iter().copied());
    }

    /// A ready range of one direction of a connection.
    pub fn chunk(&mut self, conn: &ConnInfo, dir: Dir, chunk: &Chunk<'_>) {
        let out = &mut self.out;
        if let Some(op) = chunk.op {
            out.now_ns = out.now_ns.max(op.ts_ns);
        }
        if !self.conns.contains_key(&conn.cookie) {
            if self.conns.len() >= MAX_CONNS {
                out.counters.evicted += 1;
                return;
            }
            out.counters.connections += 1;
            let client = client_dir(conn.role);
            let mut parser = match self.pool.pop() {
                Some(mut p) => {
                    p.reset(client);
                    p
                }
                None => Box::new(ConnParser::new(self.config, client)),
            };
            if conn.tls {
                // Its plaintext begins where the probes began.
                parser.joined_at_call();
            }
            self.conns.insert(
                conn.cookie,
                HttpConn {
                    parser,
                    opened: false,
                    not_http: false,
                    skip_asked: [0; 2],
                    h2_asked: false,
                },
            );
        }
        let Some(c) = self.conns.get_mut(&conn.cookie) else {
            return;
        };
        if c.not_http {
            return;
        }
        if !c.opened {
            if let (Some(local), Some(remote)) = (conn.local, conn.remote) {
                out.correlator.conn_open(correlate::ConnInfo {
                    conn: ConnId(conn.cookie),
                    local,
                    remote,
                });
                c.opened = true;
            }
        }
        let before = c.parser.protocol();
        if chunk.missing(MissingKind::Hole) > 0 {
            if before == Protocol::Http1
                || (before == Protocol::Undecided && conn.role != Role::Unknown)
            {
                // Requests in flight may have been lost in the hole: do not
                // let later responses pair with the wrong one. (HTTP/2 pairs
                // by stream id: a hole cannot mispair it.)
                out.correlator.conn_reset(ConnId(conn.cookie), out.now_ns);
            }
            // A request read in a hole is lost: no rule may take another
            // request in flight for the only one. Requests arrive on what
            // this socket accepted, or where its parser saw them arrive. (A
            // connection opened before the agent whose bytes were never seen
            // tells neither: a blind spot, see design 005.)
            if dir == Dir::Recv && serves(conn, Some(c)) {
                let at = chunk
                    .seg_ts_ns
                    .or(chunk.op.map(|o| o.ts_ns))
                    .unwrap_or(out.now_ns);
                out.lost(conn.pid, at);
            }
        }
        c.parser
            .feed(cdir(dir), chunk, &mut |m| out.message(conn, &m));
        let not_http = match c.parser.protocol() {
            Protocol::Undecided => {
                out.counters.undecided_chunks += 1;
                return;
            }
            Protocol::Opaque => true,
            Protocol::Http2 => {
                if !c.h2_asked {
                    c.h2_asked = true;
                    self.ctl.push(CtlRequest::Http2 {
                        cookie: conn.cookie,
                    });
                }
                false
            }
            Protocol::Http1 => c
                .parser
                .http1()
                .is_some_and(|h| h.requests().is_not_http() || h.responses().is_not_http()),
        };
        if not_http {
            c.not_http = true;
            out.counters.not_http += 1;
            self.ctl.push(CtlRequest::Silence {
                cookie: conn.cookie,
                reason: silence_reason(chunk),
            });
            return;
        }
        let (Protocol::Http1, Some(h1), Some(client)) =
            (c.parser.protocol(), c.parser.http1(), c.parser.client())
        else {
            return;
        };
        let parser = if cdir(dir) == client {
            h1.requests()
        } else {
            h1.responses()
        };
        let asked = &mut c.skip_asked[dir as usize];
        if let Some((offset, len)) = parser.body_ahead() {
            if len >= SKIP_MIN && offset + len > *asked {
                *asked = offset + len;
                self.ctl.push(CtlRequest::Skip {
                    cookie: conn.cookie,
                    dir,
                    offset,
                    len,
                });
            }
        }
    }

    /// What a runtime hook saw (see [`correlate::CauseEvent`]).
    pub fn cause(&mut self, c: &tracer_common::Cause) {
        let ev = match c.kind {
            tracer_common::CAUSE_ENTER => correlate::CauseEvent::Enter {
                conn: ConnId(c.cookie),
            },
            tracer_common::CAUSE_LEAVE | tracer_common::CAUSE_TASK_LEAVE => {
                correlate::CauseEvent::Leave
            }
            tracer_common::CAUSE_TASK_ENTER => correlate::CauseEvent::TaskEnter { task: c.cookie },
            tracer_common::CAUSE_TASK_CREATE => correlate::CauseEvent::TaskCreate {
                task: c.cookie,
                parent: c.cause,
            },
            tracer_common::CAUSE_CONNECT => correlate::CauseEvent::Connect {
                conn: ConnId(c.cookie),
                cause: ConnId(c.cause),
                since: (c.since_ns != 0).then_some(c.since_ns),
            },
            _ => return,
        };
        self.out
            .correlator
            .cause(correlate::Pid(c.pid), correlate::Tid(c.tid), c.ts_ns, ev);
    }

    /// A read on `conn` moved plaintext unseen before `at_ns` (a Go Read
    /// entered before the probes): the requests it waited to answer end
    /// (a later response must not pair with them), and a request read
    /// there is lost.
    pub fn read_lost(&mut self, conn: &ConnInfo, at_ns: u64) {
        if serves(conn, self.conns.get(&conn.cookie)) {
            self.out.lost(conn.pid, at_ns);
        }
        let now = at_ns.max(self.out.now_ns);
        self.out
            .correlator
            .responses_lost(ConnId(conn.cookie), Side::Inbound, at_ns, now);
    }

    /// The connection is gone: flush its parser and tell the correlator.
    pub fn closed(&mut self, conn: &ConnInfo, now_ns: u64) {
        let Some(mut c) = self.conns.remove(&conn.cookie) else {
            return;
        };
        let out = &mut self.out;
        if !c.not_http {
            c.parser.flush(&mut |m| out.message(conn, &m));
        }
        out.correlator
            .conn_close(ConnId(conn.cookie), now_ns.max(out.now_ns));
        add_parser(&mut self.retired, &mut self.retired_h2, &c.parser);
        if self.pool.len() < PARSER_POOL {
            self.pool.push(c.parser);
        }
    }

    /// Spans finished by `now_ns`.
    pub fn poll(&mut self, now_ns: u64) -> Vec<Span> {
        self.poll_at_most(now_ns, usize::MAX)
    }

    /// Spans finished by `now_ns`, at most about `max` (call again until
    /// fewer come).
    pub fn poll_at_most(&mut self, now_ns: u64, max: usize) -> Vec<Span> {
        self.out.now_ns = self.out.now_ns.max(now_ns);
        self.out.correlator.poll_at_most(now_ns, max)
    }

    /// The connection was closed (its table entry lingers for late
    /// records): its parser's idle buffers are freed.
    pub fn closing(&mut self, cookie: u64) {
        if let Some(c) = self.conns.get_mut(&cookie) {
            c.parser.trim();
        }
    }

    /// Spans finished while messages were fed, not yet polled.
    pub fn ready_len(&self) -> usize {
        self.out.correlator.ready_len()
    }

    /// Those spans, taken without advancing time.
    pub fn take_ready(&mut self) -> Vec<Span> {
        self.out.correlator.take_ready()
    }

    /// Every span still held (agent exit).
    pub fn flush(&mut self) -> Vec<Span> {
        self.out.correlator.flush()
    }

    /// Every record stamped before `t_ns` has reached this stage, or its
    /// loss was reported (see [`correlate::Correlator::complete_until`]).
    pub fn complete_until(&mut self, t_ns: u64) {
        self.out.correlator.complete_until(t_ns);
    }

    /// Records that may have held a request read by `pid` (0: not known)
    /// from `at_ns` on were lost before this stage.
    pub fn inbound_lost(&mut self, pid: u32, at_ns: u64) {
        self.out.lost(pid, at_ns);
    }

    /// Bytes `conn` received at `at_ns` wait for a read (see
    /// `conntrack::Sink::unread`). Where they may be a request, a read the
    /// capture missed would leave one in flight unseen: its process is
    /// treated as after a loss (rules that need every request in flight
    /// known hold off), as when such bytes were given up.
    pub fn unread(&mut self, conn: &ConnInfo, at_ns: u64) {
        let c = self.conns.get(&conn.cookie);
        if !c.is_some_and(|c| c.not_http) && serves(conn, c) {
            self.out.correlator.inbound_unread(known(conn.pid), at_ns);
        }
    }

    /// Spans from [`poll`](Self::poll) handed on: their buffers are reused.
    pub fn recycle(&mut self, spans: Vec<Span>) {
        self.out.correlator.recycle(spans);
    }

    /// The server span in progress on `pid`/`tid` at `t` (rule 6), if
    /// exactly one is known to be.
    pub fn server_span_at(
        &self,
        pid: correlate::Pid,
        tid: correlate::Tid,
        t: u64,
    ) -> Option<correlate::SpanId> {
        self.out.correlator.server_span_at(pid, tid, t)
    }

    /// This stage's counters.
    pub fn counters(&self) -> &HttpCounters {
        &self.out.counters
    }

    /// The correlator's counters.
    pub fn correlate_counters(&self) -> &correlate::Counters {
        self.out.correlator.counters()
    }

    /// The HTTP/1 parsers' counters, every connection's summed.
    pub fn parser_counters(&self) -> Http1Counters {
        self.parser_totals().0
    }

    /// The HTTP/2 parsers' and protocol detection's counters, every
    /// connection's summed.
    pub fn http2_counters(&self) -> Http2Totals {
        self.parser_totals().1
    }

    fn parser_totals(&self) -> (Http1Counters, Http2Totals) {
        let (mut h1, mut h2) = (self.retired, self.retired_h2);
        for c in self.conns.values() {
            add_parser(&mut h1, &mut h2, &c.parser);
        }
        (h1, h2)
    }

    /// Span records held by the correlator and their memory (bytes).
    pub fn held_spans(&self) -> (usize, usize) {
        let c = &self.out.correlator;
        (c.live_spans(), c.span_bytes())
    }

    /// The correlator's heap bytes by structure (see
    /// `Correlator::heap_estimate`; walks its tables).
    pub fn correlator_heap(&self) -> Vec<(&'static str, usize)> {
        self.out.correlator.heap_estimate()
    }

    /// The correlator's reorder window now (ns).
    pub fn window_ns(&self) -> u64 {
        self.out.correlator.window_ns()
    }
}

impl ToSpans {
    /// What `pid` (0: not known) read from `at` on may have held a
    /// request that never becomes a message.
    fn lost(&mut self, pid: u32, at: u64) {
        self.correlator.inbound_lost(known(pid), at);
    }

    fn message<'m>(&mut self, conn: &ConnInfo, m: &MessageView<'m>) {
        let info = m.info();
        let dir = tdir(m.dir());
        if info.headers_cut.is_some() {
            self.counters.heads_cut += 1;
        }
        let Some(first) = info.first_op.or(info.last_op) else {
            self.counters.messages_without_call += 1;
            if dir == Dir::Recv && m.is_request() {
                self.lost(conn.pid, info.first_seg_ts_ns.unwrap_or(self.now_ns));
            }
            return;
        };
        let last = info.last_op.unwrap_or(first);
        // A call record is stamped when the call returns. A request the
        // process wrote started no later than its first packet left (stamped
        // inside the send call): on loopback the peer can read the request
        // before the writer's send returns, and a client must not start
        // after the server that read its request.
        let start_ns = match (dir, info.first_seg_ts_ns) {
            (Dir::Send, Some(seg)) => first.ts_ns.min(seg),
            _ => first.ts_ns,
        };
        let mut inline: ArrayVec<Header<'_>, INLINE_HEADERS> = ArrayVec::new();
        let mut spilled: Vec<Header<'_>> = Vec::new();
        // Why the first HTTP/2 field left out was unknown.
        let mut field_unknown: Option<Unknown> = None;
        let headers: &[Header<'_>] = match (m.http1(), m.http2()) {
            (Some(h1), _) => {
                let fields = h1.headers();
                if fields.len() <= INLINE_HEADERS {
                    inline.extend(fields.raw().map(|(n, v)| Header::new(n, v)));
                    &inline
                } else {
                    spilled = fields.raw().map(|(n, v)| Header::new(n, v)).collect();
                    &spilled
                }
            }
            (None, h2) => {
                // A field whose name or value is unknown (HTTP/2) is left
                // out, never passed on half known.
                let mut keep = |f: hpack::Field<'m>| {
                    let (Some(n), Some(v)) = (f.name, f.value) else {
                        self.counters.h2_fields_unknown += 1;
                        field_unknown = field_unknown.or(f.why);
                        return;
                    };
                    let h = Header::new(n, v);
                    if !spilled.is_empty() {
                        spilled.push(h);
                    } else if let Err(e) = inline.try_push(h) {
                        spilled.extend(inline.drain(..));
                        spilled.push(e.element());
                    }
                };
                match h2 {
                    // Pseudo-headers included: the correlator reads
                    // `:authority` (`MessageView::headers` leaves them out).
                    Some(h2) => h2.fields().iter().for_each(&mut keep),
                    // A held HTTP/1 request.
                    None => m.headers().iter().for_each(&mut keep),
                }
                if spilled.is_empty() {
                    &inline
                } else {
                    &spilled
                }
            }
        };
        let kind = if m.is_request() {
            let mut unknown = None;
            let method = known_text(m.method(), &mut unknown);
            let target = known_text(m.target(), &mut unknown);
            if unknown.is_some() {
                self.counters.h2_requests_undecoded += 1;
            }
            // Method and path known but another field not: the span still
            // says a header is missing. A gRPC call whose `content-type`
            // was lost (grpc-go and grpc-js index it on a channel's first
            // call) is otherwise a plain HTTP span that looks whole.
            let unknown = unknown.or(field_unknown.map(|w| w.as_str()));
            MessageKind::Request(Request {
                method: method.into(),
                target: target.into(),
                version: version(m.version()),
                scheme: if conn.tls {
                    Scheme::Https
                } else {
                    Scheme::Http
                },
                headers: headers.into(),
                unknown,
            })
        } else {
            let reset = matches!(m.stream_end(), Some(StreamEnd::Reset(_)));
            let mut status_unknown = None;
            let status = match m.status() {
                Some(Ok(s)) => s,
                why => {
                    self.counters.h2_status_unknown += 1;
                    status_unknown = match why {
                        Some(Err(w)) => Some(w.as_str()),
                        // No response header block was seen: lost, unless
                        // the stream was reset before one.
                        _ if !reset => Some("headers_not_seen"),
                        _ => None,
                    };
                    0
                }
            };
            MessageKind::Response(Response {
                status,
                version: version(m.version()),
                headers: headers.into(),
                reset,
                grpc_messages: m.grpc().map(|g| GrpcMessages {
                    by_client: g.sent_by_client,
                    by_server: g.sent_by_server,
                    exact: g.client_exact && g.server_exact,
                }),
                unknown: status_unknown
                    .or(field_unknown.or(info.headers_cut).map(|w| w.as_str()))
                    .or(match m.stream_end() {
                        Some(StreamEnd::SyncLost) => Some("sync_lost"),
                        Some(StreamEnd::Evicted) => Some("evicted"),
                        _ => None,
                    }),
            })
        };
        self.counters.messages += 1;
        let side = if dir == Dir::Recv {
            Side::Inbound
        } else {
            Side::Outbound
        };
        let skipped = info.skipped_before;
        if skipped.bytes > 0 && !m.is_request() {
            let since = skipped.since_ns.unwrap_or(start_ns).min(start_ns);
            self.correlator
                .responses_lost(ConnId(conn.cookie), side, since, start_ns);
        }
        self.correlator.message(CMessage {
            conn: ConnId(conn.cookie),
            side,
            pid: Pid(first.pid),
            tid: Tid(first.tid),
            seq: info.seq,
            start_ns,
            end_ns: last.ts_ns.max(start_ns),
            stream_id: m.stream_id(),
            kind,
        });
    }
}

/// A request's method or target, or "" with the first reason it is not
/// known kept in `unknown`.
fn known_text<'a>(
    v: Option<Result<&'a str, Unknown>>,
    unknown: &mut Option<&'static str>,
) -> &'a str {
    match v {
        Some(Ok(s)) => s,
        Some(Err(why)) => {
            unknown.get_or_insert(why.as_str());
            ""
        }
        None => {
            unknown.get_or_insert("absent");
            ""
        }
    }
}

/// Why a connection found not to be HTTP/1 is silenced: TLS records start
/// with a handshake (22) or application data (23) byte and version 3.x.
fn silence_reason(chunk: &Chunk<'_>) -> tracer_common::Silence {
    match first_data(chunk) {
        Some([22 | 23, 3, ..]) => tracer_common::Silence::Tls,
        _ => tracer_common::Silence::NotParsed,
    }
}
