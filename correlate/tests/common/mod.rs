//! Recorded-style event sequences for the correlator: a tiny simulator of
//! processes talking over TCP connections, producing the `ConnInfo` /
//! `Message` / close events the agent would, with matching sequence
//! numbers at both ends.
#![allow(dead_code)]

use std::net::SocketAddr;

use correlate::*;

/// Default reorder window.
pub const W: u64 = 150_000_000;
/// One microsecond in ns.
pub const US: u64 = 1_000;
/// One millisecond in ns.
pub const MS: u64 = 1_000_000;

/// The warm-up of a pool before a test's own requests: as many requests as
/// prove a pool by default ([`Config::pool_min_requests`]), each answered
/// on the thread that read it, alternating two threads; then the
/// correlator knows the process serves one request per thread (rule 4
/// applies to it). Yields `(k, thread)`, `thread` 0 or 1.
pub fn warm_up() -> impl Iterator<Item = (u64, u32)> {
    (0..u64::from(Config::default().pool_min_requests)).map(|k| (k, (k % 2) as u32))
}

/// One thing the agent reports.
#[derive(Clone, Debug)]
pub enum Ev {
    /// A connection seen.
    Open(ConnInfo),
    /// A message.
    Msg(Message<'static>),
    /// A connection closed at this time.
    Close(ConnId, u64),
    /// What a runtime hook saw a thread do, at a time.
    Cause(Pid, Tid, u64, CauseEvent),
    /// A request read by the process (`None`: unknown) from this time on
    /// may have been lost.
    Lost(Option<Pid>, u64),
    /// Every input before this time has been given.
    Complete(u64),
}

impl Ev {
    /// When it happened.
    pub fn time(&self) -> u64 {
        match self {
            Ev::Open(_) => 0,
            Ev::Msg(m) => m.end_ns,
            Ev::Close(_, t) => *t,
            Ev::Cause(_, _, t, _) => *t,
            Ev::Lost(_, t) | Ev::Complete(t) => *t,
        }
    }
}

impl Ev {
    /// Hands it to the correlator.
    pub fn apply<G: IdGen>(&self, c: &mut Correlator<G>) {
        match self {
            Ev::Open(i) => c.conn_open(*i),
            Ev::Msg(m) => c.message(m.clone()),
            Ev::Close(id, t) => c.conn_close(*id, *t),
            Ev::Cause(pid, tid, t, ev) => c.cause(*pid, *tid, *t, *ev),
            Ev::Lost(pid, t) => c.inbound_lost(*pid, *t),
            Ev::Complete(t) => c.complete_until(*t),
        }
    }
}

/// A request head.
pub fn req(method: &str, target: &str, headers: &[(&str, &str)]) -> Request<'static> {
    Request {
        method: method.to_string().into(),
        target: target.to_string().into(),
        version: HttpVersion::Http11,
        scheme: Scheme::Http,
        headers: headers
            .iter()
            .map(|(n, v)| Header::owned(n, v))
            .collect::<Vec<_>>()
            .into(),
        unknown: None,
    }
}

/// A response head.
pub fn resp(status: u16, headers: &[(&str, &str)]) -> Response<'static> {
    Response {
        status,
        version: HttpVersion::Http11,
        headers: headers
            .iter()
            .map(|(n, v)| Header::owned(n, v))
            .collect::<Vec<_>>()
            .into(),
        reset: false,
        grpc_messages: None,
        unknown: None,
    }
}

/// Which ends of a connection the agent sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Both processes are on this host.
    Both,
    /// Only the client (the server is elsewhere).
    ClientOnly,
    /// Only the server (the client is elsewhere).
    ServerOnly,
}

/// A TCP connection between two processes.
#[derive(Clone, Debug)]
pub struct Conn {
    /// The client's socket.
    pub client: ConnId,
    /// The server's socket.
    pub server: ConnId,
    /// Client address.
    pub caddr: SocketAddr,
    /// Server address.
    pub saddr: SocketAddr,
    /// Next sequence number client → server.
    pub c2s: u32,
    /// Next sequence number server → client.
    pub s2c: u32,
    /// Which ends are reported.
    pub seen: Seen,
}

/// A process and thread doing a socket call at a time.
#[derive(Clone, Copy, Debug)]
pub struct At {
    /// Time (ns).
    pub t: u64,
    /// Process.
    pub pid: u32,
    /// Thread.
    pub tid: u32,
}

/// `At` shorthand.
pub fn at(t: u64, pid: u32, tid: u32) -> At {
    At { t, pid, tid }
}

/// The simulator.
pub struct Sim {
    /// Events in the order they happened.
    pub events: Vec<Ev>,
    next_cookie: u64,
    next_port: u16,
    rng: u64,
}

impl Default for Sim {
    fn default() -> Self {
        Sim::new(1)
    }
}

impl Sim {
    /// A simulator; `seed` picks initial sequence numbers.
    pub fn new(seed: u64) -> Sim {
        Sim {
            events: Vec::new(),
            next_cookie: 1,
            next_port: 40_000,
            rng: seed,
        }
    }

    fn isn(&mut self) -> u32 {
        // xorshift64*
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }

    /// Connect from `client_ip` (ephemeral port) to `server` (`ip:port`).
    pub fn connect(&mut self, client_ip: &str, server: &str, seen: Seen) -> Conn {
        let caddr: SocketAddr = format!("{client_ip}:{}", self.next_port).parse().unwrap();
        self.next_port = self.next_port.wrapping_add(1).max(1024);
        let saddr: SocketAddr = server.parse().unwrap();
        let c = Conn {
            client: ConnId(self.next_cookie),
            server: ConnId(self.next_cookie + 1),
            caddr,
            saddr,
            c2s: self.isn(),
            s2c: self.isn(),
            seen,
        };
        self.next_cookie += 2;
        if seen != Seen::ServerOnly {
            self.events.push(Ev::Open(ConnInfo {
                conn: c.client,
                local: caddr,
                remote: saddr,
            }));
        }
        if seen != Seen::ClientOnly {
            self.events.push(Ev::Open(ConnInfo {
                conn: c.server,
                local: saddr,
                remote: caddr,
            }));
        }
        c
    }

    fn msg(conn: ConnId, side: Side, a: At, seq: u32, kind: MessageKind<'static>) -> Ev {
        Ev::Msg(Message {
            conn,
            side,
            pid: Pid(a.pid),
            tid: Tid(a.tid),
            seq,
            start_ns: a.t,
            end_ns: a.t + 100,
            stream_id: None,
            kind,
        })
    }

    /// The client writes `r` (at `w`) and the server reads it (at `rd`).
    pub fn request(&mut self, c: &mut Conn, w: At, rd: At, r: &Request<'static>) {
        let seq = c.c2s;
        c.c2s = c.c2s.wrapping_add(100 + r.target.len() as u32);
        if c.seen != Seen::ServerOnly {
            let e = Self::msg(
                c.client,
                Side::Outbound,
                w,
                seq,
                MessageKind::Request(r.clone()),
            );
            self.events.push(e);
        }
        if c.seen != Seen::ClientOnly {
            let e = Self::msg(
                c.server,
                Side::Inbound,
                rd,
                seq,
                MessageKind::Request(r.clone()),
            );
            self.events.push(e);
        }
    }

    /// The server writes `r` (at `w`) and the client reads it (at `rd`).
    pub fn response(&mut self, c: &mut Conn, w: At, rd: At, r: &Response<'static>) {
        let seq = c.s2c;
        c.s2c = c.s2c.wrapping_add(200);
        if c.seen != Seen::ClientOnly {
            let e = Self::msg(
                c.server,
                Side::Outbound,
                w,
                seq,
                MessageKind::Response(r.clone()),
            );
            self.events.push(e);
        }
        if c.seen != Seen::ServerOnly {
            let e = Self::msg(
                c.client,
                Side::Inbound,
                rd,
                seq,
                MessageKind::Response(r.clone()),
            );
            self.events.push(e);
        }
    }

    /// Both ends close at `t`.
    pub fn close(&mut self, c: &Conn, t: u64) {
        if c.seen != Seen::ServerOnly {
            self.events.push(Ev::Close(c.client, t));
        }
        if c.seen != Seen::ClientOnly {
            self.events.push(Ev::Close(c.server, t));
        }
    }

    /// Events sorted by the time they happened (opens first, stable).
    pub fn sorted(&self) -> Vec<Ev> {
        let mut v = self.events.clone();
        v.sort_by_key(Ev::time);
        v
    }
}

/// What came out.
pub struct Out {
    /// Emitted spans.
    pub spans: Vec<Span>,
    /// Counters at the end.
    pub counters: Counters,
}

fn feed(c: &mut Correlator, e: &Ev, out: &mut Vec<Span>, now: u64) {
    out.extend(c.poll(now));
    e.apply(c);
    out.extend(c.poll(now));
}

/// Feed events in the given order, polling at each event's time, then a
/// long time later.
pub fn run(events: &[Ev], cfg: Config) -> Out {
    let mut c = Correlator::with_seed(cfg, 42);
    let mut spans = Vec::new();
    let mut last = 0;
    for e in events {
        last = last.max(e.time());
        feed(&mut c, e, &mut spans, last);
    }
    spans.extend(c.poll(last + 100 * W));
    Out {
        spans,
        counters: c.counters().clone(),
    }
}

/// Deliver event `i` at `time + delays[i]` (opens and closes undelayed),
/// in delivery order, polling at each delivery time. Messages of one
/// connection keep their order (the stream layer delivers each
/// connection's messages in order): one is delivered no earlier than the
/// message before it on its connection.
pub fn run_delayed(events: &[Ev], cfg: Config, delays: &[u64]) -> Out {
    let mut last_on_conn: std::collections::HashMap<ConnId, u64> = Default::default();
    let mut order: Vec<(u64, usize)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let at = match e {
                Ev::Msg(m) => {
                    let at = e.time() + delays.get(i).copied().unwrap_or(0);
                    let last = last_on_conn.entry(m.conn).or_insert(0);
                    *last = (*last).max(at);
                    *last
                }
                _ => e.time(),
            };
            (at, i)
        })
        .collect();
    order.sort();
    let mut c = Correlator::with_seed(cfg, 42);
    let mut spans = Vec::new();
    let mut last = 0;
    for (t, i) in order {
        last = last.max(t);
        feed(&mut c, &events[i], &mut spans, last);
    }
    spans.extend(c.poll(last + 100 * W));
    Out {
        spans,
        counters: c.counters().clone(),
    }
}

/// A span's identity in a scenario: process, kind and raw path.
pub type Label = (u32, SpanKind, String);

/// Label shorthand.
pub fn lbl(pid: u32, kind: SpanKind, path: &str) -> Label {
    (pid, kind, path.to_string())
}

impl Out {
    /// The span with this label (exactly one must exist).
    pub fn get(&self, l: &Label) -> &Span {
        let found: Vec<&Span> = self
            .spans
            .iter()
            .filter(|s| s.pid.0 == l.0 && s.kind == l.1 && s.attr_str("url.path") == Some(&l.2))
            .collect();
        assert_eq!(found.len(), 1, "spans labelled {l:?}: {found:#?}");
        found[0]
    }

    /// Whether a span with this label exists.
    pub fn has(&self, l: &Label) -> bool {
        self.spans
            .iter()
            .any(|s| s.pid.0 == l.0 && s.kind == l.1 && s.attr_str("url.path") == Some(&l.2))
    }

    /// The label of the emitted span with this id, if it is ours.
    pub fn label_of(&self, id: SpanId) -> Option<Label> {
        self.spans.iter().find(|s| s.span_id == id).map(|s| {
            (
                s.pid.0,
                s.kind,
                s.attr_str("url.path").unwrap_or("").to_string(),
            )
        })
    }

    /// Assert `child`'s parent is `parent` (same trace).
    pub fn assert_parent(&self, child: &Label, parent: &Label) {
        let c = self.get(child);
        let p = self.get(parent);
        assert_eq!(
            c.parent_span_id,
            Some(p.span_id),
            "parent of {child:?} should be {parent:?}, is {:?} ({:?})",
            c.parent_span_id.and_then(|id| self.label_of(id)),
            c.parent_source
        );
        assert_eq!(c.trace_id, p.trace_id, "trace of {child:?}");
    }

    /// Assert `l` has no parent span of ours (a root, or a header child).
    pub fn assert_no_local_parent(&self, l: &Label) {
        let s = self.get(l);
        if let Some(p) = s.parent_span_id {
            assert!(
                self.label_of(p).is_none(),
                "{l:?} should have no parent of ours, has {:?}",
                self.label_of(p)
            );
        }
    }

    /// All span ids unique, all emitted once.
    pub fn assert_unique_ids(&self) {
        let mut ids: Vec<SpanId> = self.spans.iter().map(|s| s.span_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), self.spans.len(), "duplicate span ids");
    }
}

pub mod chain;

/// A message built by hand (for HTTP/2 streams and odd cases).
#[allow(clippy::too_many_arguments)]
pub fn m(
    conn: u64,
    side: Side,
    pid: u32,
    tid: u32,
    seq: u32,
    t: u64,
    stream_id: Option<u32>,
    kind: MessageKind<'static>,
) -> Ev {
    Ev::Msg(Message {
        conn: ConnId(conn),
        side,
        pid: Pid(pid),
        tid: Tid(tid),
        seq,
        start_ns: t,
        end_ns: t + 100,
        stream_id,
        kind,
    })
}

/// A connection-open event.
pub fn open(conn: u64, local: &str, remote: &str) -> Ev {
    Ev::Open(ConnInfo {
        conn: ConnId(conn),
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
    })
}

/// Request message kind.
pub fn rq(method: &str, target: &str, headers: &[(&str, &str)]) -> MessageKind<'static> {
    MessageKind::Request(req(method, target, headers))
}

/// Response message kind.
pub fn rs(status: u16, headers: &[(&str, &str)]) -> MessageKind<'static> {
    MessageKind::Response(resp(status, headers))
}
