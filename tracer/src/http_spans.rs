//! Byte streams -> HTTP/1 messages -> spans: the glue between the connection
//! table, the HTTP/1 parser (protocols) and the correlator (correlate).
//!
//! Which direction of a connection carries requests follows from which end
//! opened it (the client writes requests); for connections opened before the
//! agent started it is read off the first bytes.
use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt};

use arrayvec::ArrayVec;
use correlate::{
    ConnId, Correlator, Header, HttpVersion, Message as CMessage, MessageKind, Pid, Request,
    Response, Scheme, Side, Span, SplitMix64, Tid,
};
use protocols::{
    http1::{self, Http1Config, Http1Connection, Http1Counters, MessageRef, StartLine},
    stream::{Chunk, MissingKind, Piece},
};
use tracer_common::Dir;

use crate::conntrack::{ConnInfo, CtlRequest, Role};

/// Counters of this stage (the parser and correlator keep their own).
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpCounters {
    /// Connections whose bytes were looked at.
    pub connections: u64,
    /// Connections found not to carry HTTP/1 (other protocols, TLS).
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
}

/// Bound on connections parsed at once (the connection table has its own).
const MAX_CONNS: usize = 65_536;

/// Parsers kept for reuse (most connections are short).
const PARSER_POOL: usize = 1024;

struct HttpConn {
    /// Boxed: moves cheaply, and goes back to the pool when the connection
    /// ends.
    parser: Box<Http1Connection>,
    /// The direction requests travel in, once known.
    requests: Option<Dir>,
    opened: bool,
    not_http: bool,
    /// Per direction: stream offset up to which a body skip was requested.
    skip_asked: [u64; 2],
}

/// Parses HTTP/1 on every connection and turns messages into spans.
pub struct HttpSpans {
    conns: HashMap<u64, HttpConn>,
    out: ToSpans,
    config: Http1Config,
    // The boxes themselves move between the pool and connections.
    #[allow(clippy::vec_box)]
    pool: Vec<Box<Http1Connection>>,
    /// Parser counters of connections already closed.
    retired: Http1Counters,
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

fn opposite(d: Dir) -> Dir {
    match d {
        Dir::Send => Dir::Recv,
        Dir::Recv => Dir::Send,
    }
}

fn first_data<'a>(chunk: &Chunk<'a>) -> Option<&'a [u8]> {
    match chunk.pieces.first() {
        Some(Piece::Data(d)) => Some(d),
        _ => None,
    }
}

fn version(minor: u8) -> HttpVersion {
    if minor == 0 {
        HttpVersion::Http10
    } else {
        HttpVersion::Http11
    }
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
            config: Http1Config::default(),
            pool: Vec::new(),
            retired: Http1Counters::default(),
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
            self.conns.insert(
                conn.cookie,
                HttpConn {
                    parser: self
                        .pool
                        .pop()
                        .unwrap_or_else(|| Box::new(Http1Connection::new(self.config))),
                    requests: None,
                    opened: false,
                    not_http: false,
                    skip_asked: [0; 2],
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
        let requests = match c.requests {
            Some(d) => d,
            None => {
                let decided = match conn.role {
                    Role::Client => Some(Dir::Send),
                    Role::Server => Some(Dir::Recv),
                    Role::Unknown => first_data(chunk).and_then(|d| {
                        if http1::looks_like_http1_request(d) {
                            Some(dir)
                        } else if http1::looks_like_http1_response(d) {
                            Some(opposite(dir))
                        } else {
                            None
                        }
                    }),
                };
                match decided {
                    Some(d) => {
                        c.requests = Some(d);
                        d
                    }
                    None => {
                        out.counters.undecided_chunks += 1;
                        return;
                    }
                }
            }
        };
        // A connection seen from its start whose first bytes cannot start
        // an HTTP/1 message is not HTTP/1 (Redis, TLS, iperf3...): no need
        // to wait for the parser's detection budget.
        if chunk.offset == 0 && conn.role != Role::Unknown {
            let likely = first_data(chunk).map(|d| {
                if dir == requests {
                    http1::classify_request(d)
                } else {
                    http1::classify_response(d)
                }
            });
            if likely == Some(http1::Likely::No) {
                c.not_http = true;
                out.counters.not_http += 1;
                self.ctl.push(CtlRequest::Silence {
                    cookie: conn.cookie,
                    reason: silence_reason(chunk),
                });
                return;
            }
        }
        if chunk.missing(MissingKind::Hole) > 0 {
            // Requests in flight may have been lost in the hole: do not let
            // later responses pair with the wrong one.
            out.correlator.conn_reset(ConnId(conn.cookie), out.now_ns);
        }
        if dir == requests {
            c.parser
                .feed_requests(chunk, &mut |m| out.message(conn, dir, &m));
        } else {
            c.parser
                .feed_responses(chunk, &mut |m| out.message(conn, dir, &m));
        }
        if c.parser.requests().is_not_http() || c.parser.responses().is_not_http() {
            c.not_http = true;
            out.counters.not_http += 1;
            self.ctl.push(CtlRequest::Silence {
                cookie: conn.cookie,
                reason: silence_reason(chunk),
            });
        } else {
            let parser = if dir == requests {
                c.parser.requests()
            } else {
                c.parser.responses()
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
    }

    /// The connection is gone: flush its parser and tell the correlator.
    pub fn closed(&mut self, conn: &ConnInfo, now_ns: u64) {
        let Some(mut c) = self.conns.remove(&conn.cookie) else {
            return;
        };
        let out = &mut self.out;
        if !c.not_http {
            let req = c.requests.unwrap_or(Dir::Recv);
            c.parser.flush(&mut |m| {
                let dir = match m.line() {
                    StartLine::Request { .. } => req,
                    StartLine::Response { .. } => opposite(req),
                };
                out.message(conn, dir, &m);
            });
        }
        out.correlator
            .conn_close(ConnId(conn.cookie), now_ns.max(out.now_ns));
        self.retired += c.parser.requests().counters();
        self.retired += c.parser.responses().counters();
        if self.pool.len() < PARSER_POOL {
            c.parser.reset();
            self.pool.push(c.parser);
        }
    }

    /// Spans finished by `now_ns`.
    pub fn poll(&mut self, now_ns: u64) -> Vec<Span> {
        self.out.now_ns = self.out.now_ns.max(now_ns);
        self.out.correlator.poll(now_ns)
    }

    /// Every span still held (agent exit).
    pub fn flush(&mut self) -> Vec<Span> {
        self.out.correlator.flush()
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
        let mut sum = self.retired;
        for c in self.conns.values() {
            sum += c.parser.requests().counters();
            sum += c.parser.responses().counters();
        }
        sum
    }

    /// Span records held by the correlator and their memory (bytes).
    pub fn held_spans(&self) -> (usize, usize) {
        let c = &self.out.correlator;
        (c.live_spans(), c.span_bytes())
    }
}

impl ToSpans {
    fn message(&mut self, conn: &ConnInfo, dir: Dir, m: &MessageRef<'_>) {
        let info = m.info;
        if info.end == http1::MessageEnd::HeadTruncated {
            self.counters.heads_cut += 1;
        }
        let Some(first) = info.first_op.or(info.last_op) else {
            self.counters.messages_without_call += 1;
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
        let fields = m.headers();
        let mut inline: ArrayVec<Header<'_>, INLINE_HEADERS> = ArrayVec::new();
        let spilled: Vec<Header<'_>>;
        let headers: &[Header<'_>] = if fields.len() <= INLINE_HEADERS {
            inline.extend(fields.raw().map(|(n, v)| Header::new(n, v)));
            &inline
        } else {
            spilled = fields.raw().map(|(n, v)| Header::new(n, v)).collect();
            &spilled
        };
        let kind = match m.line() {
            StartLine::Request { method, target } => MessageKind::Request(Request {
                method: method.into(),
                target: target.into(),
                version: version(m.version()),
                scheme: if conn.tls {
                    Scheme::Https
                } else {
                    Scheme::Http
                },
                headers: headers.into(),
            }),
            StartLine::Response { status, .. } => MessageKind::Response(Response {
                status,
                version: version(m.version()),
                headers: headers.into(),
            }),
        };
        self.counters.messages += 1;
        self.correlator.message(CMessage {
            conn: ConnId(conn.cookie),
            side: if dir == Dir::Recv {
                Side::Inbound
            } else {
                Side::Outbound
            },
            pid: Pid(first.pid),
            tid: Tid(first.tid),
            seq: info.seq,
            start_ns,
            end_ns: last.ts_ns.max(start_ns),
            stream_id: None,
            kind,
        });
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
