//! Byte streams -> HTTP/1 messages -> spans: the glue between the connection
//! table, the HTTP/1 parser (protocols) and the correlator (correlate).
//!
//! Which direction of a connection carries requests follows from which end
//! opened it (the client writes requests); for connections opened before the
//! agent started it is read off the first bytes.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use foldhash::{HashMap, HashMapExt};

use correlate::{
    ConnId, Correlator, Header, HttpVersion, Message as CMessage, MessageKind, Pid, Request,
    Response, Scheme, Side, Span, SplitMix64, Tid,
};
use protocols::{
    http1::{self, Http1Config, Http1Connection, Message},
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
    correlator: Correlator<SplitMix64>,
    config: Http1Config,
    counters: HttpCounters,
    now_ns: u64,
    messages: Vec<Message>,
    // The boxes themselves move between the pool and connections.
    #[allow(clippy::vec_box)]
    pool: Vec<Box<Http1Connection>>,
    /// Requests to the capture (silence a connection, skip a body).
    ctl: Vec<CtlRequest>,
}

/// Bodies with less than this left are copied anyway: a request to skip
/// reaches the kernel a few milliseconds later, by when a shorter body has
/// usually gone by (loopback moves 1 MiB in well under a millisecond), and
/// while requests are pending every socket's packets and calls pay for a
/// lookup.
const SKIP_MIN: u64 = 1 << 20;

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

fn headers(h: Vec<http1::Header>) -> Vec<Header> {
    h.into_iter()
        .map(|h| Header {
            name: h.name,
            value: h.value,
        })
        .collect()
}

impl HttpSpans {
    /// A fresh stage; `seed` seeds span and trace ids.
    pub fn new(correlator: correlate::Config, seed: u64) -> HttpSpans {
        // Copy only the headers spans use (most of every message is not);
        // request-id headers are the x- ones; another name keeps them all.
        let keep_header = correlator
            .request_id_headers
            .iter()
            .all(|h| h.starts_with("x-"))
            .then_some(spans_read as fn(&str) -> bool);
        let mut correlator = Correlator::with_seed(correlator, seed);
        correlator.set_local_addrs(local_addrs());
        HttpSpans {
            conns: HashMap::new(),
            correlator,
            config: Http1Config {
                keep_header,
                ..Http1Config::default()
            },
            counters: HttpCounters::default(),
            now_ns: 0,
            messages: Vec::new(),
            pool: Vec::new(),
            ctl: Vec::new(),
        }
    }

    /// What this stage asks of the capture since the last call.
    pub fn take_ctl_requests(&mut self) -> Vec<CtlRequest> {
        std::mem::take(&mut self.ctl)
    }

    /// Re-reads the host's addresses (interfaces come and go).
    pub fn refresh_local_addrs(&mut self) {
        self.correlator.set_local_addrs(local_addrs());
    }

    /// A ready range of one direction of a connection.
    pub fn chunk(&mut self, conn: &ConnInfo, dir: Dir, chunk: &Chunk<'_>) {
        if let Some(op) = chunk.op {
            self.now_ns = self.now_ns.max(op.ts_ns);
        }
        if !self.conns.contains_key(&conn.cookie) {
            if self.conns.len() >= MAX_CONNS {
                self.counters.evicted += 1;
                return;
            }
            self.counters.connections += 1;
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
                self.correlator.conn_open(correlate::ConnInfo {
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
                        self.counters.undecided_chunks += 1;
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
                self.counters.not_http += 1;
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
            self.correlator.conn_reset(ConnId(conn.cookie), self.now_ns);
        }
        let mut out = std::mem::take(&mut self.messages);
        if dir == requests {
            c.parser.feed_requests(chunk, &mut |m| out.push(m));
        } else {
            c.parser.feed_responses(chunk, &mut |m| out.push(m));
        }
        if c.parser.requests().is_not_http() || c.parser.responses().is_not_http() {
            c.not_http = true;
            self.counters.not_http += 1;
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
        for m in out.drain(..) {
            self.message(conn, dir, m);
        }
        self.messages = out;
    }

    fn message(&mut self, conn: &ConnInfo, dir: Dir, m: Message) {
        let info = *m.info();
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
        let kind = match m {
            Message::Request(r) => MessageKind::Request(Request {
                method: r.method.as_str().to_owned(),
                target: r.target,
                version: version(r.version),
                scheme: Scheme::Http,
                headers: headers(r.headers),
            }),
            Message::Response(r) => MessageKind::Response(Response {
                status: r.status,
                version: version(r.version),
                headers: headers(r.headers),
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

    /// The connection is gone: flush its parser and tell the correlator.
    pub fn closed(&mut self, conn: &ConnInfo, now_ns: u64) {
        let Some(mut c) = self.conns.remove(&conn.cookie) else {
            return;
        };
        if !c.not_http {
            let mut out = Vec::new();
            c.parser.flush(&mut |m| out.push(m));
            let req = c.requests.unwrap_or(Dir::Recv);
            for m in out {
                let dir = match m {
                    Message::Request(_) => req,
                    Message::Response(_) => opposite(req),
                };
                self.message(conn, dir, m);
            }
        }
        self.correlator
            .conn_close(ConnId(conn.cookie), now_ns.max(self.now_ns));
        if self.pool.len() < PARSER_POOL {
            c.parser.reset();
            self.pool.push(c.parser);
        }
    }

    /// Spans finished by `now_ns`.
    pub fn poll(&mut self, now_ns: u64) -> Vec<Span> {
        self.now_ns = self.now_ns.max(now_ns);
        self.correlator.poll(now_ns)
    }

    /// Every span still held (agent exit).
    pub fn flush(&mut self) -> Vec<Span> {
        self.correlator.flush()
    }

    /// The latest kernel time seen in the records.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// The server span in progress on `pid`/`tid` at `t` (rule 6), if
    /// exactly one is known to be.
    pub fn server_span_at(
        &self,
        pid: correlate::Pid,
        tid: correlate::Tid,
        t: u64,
    ) -> Option<correlate::SpanId> {
        self.correlator.server_span_at(pid, tid, t)
    }

    /// This stage's counters.
    pub fn counters(&self) -> &HttpCounters {
        &self.counters
    }

    /// The correlator's counters.
    pub fn correlate_counters(&self) -> &correlate::Counters {
        self.correlator.counters()
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

/// The headers the correlator reads, and request ids (`x-` headers).
fn spans_read(name: &str) -> bool {
    correlate::reads_header(name) || name.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("x-"))
}

/// Addresses of this host's interfaces (getifaddrs), loopback included.
pub fn local_addrs() -> Vec<IpAddr> {
    let mut out = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut p = ifap;
    while !p.is_null() {
        // SAFETY: p walks the list getifaddrs returned.
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: sa_family tells which sockaddr type ifa_addr points to.
            unsafe {
                match (*ifa.ifa_addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addrs_include_loopback() {
        let a = local_addrs();
        assert!(a.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)));
    }
}
