//! Connection table: kernel records in, per-connection byte streams out.
//!
//! Every record is keyed by socket cookie (socket addresses are reused; the
//! pid seen by cgroup_skb is usually the sender or ksoftirqd). Each
//! connection keeps one [`StreamReassembler`] per direction, which lines the
//! send/receive calls up with the captured packets by TCP sequence number and
//! hands ready chunks to a [`Sink`]. Connections opened before the agent
//! started are created on their first record; their 4-tuple comes from the
//! first packet or state change.
use std::{collections::HashMap, net::SocketAddr};

use protocols::stream::{Chunk, OpMeta, StreamCounters, StreamLimits, StreamReassembler};
use tracer_common::{ConnState, Dir, SegmentHeader, SockOp, AF_INET, AF_INET6};

/// Which end of the connection this socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not seen connecting or being accepted (opened before the agent).
    Unknown,
    /// This socket connected (`SYN_SENT`).
    Client,
    /// This socket was accepted (`SYN_RECV`).
    Server,
}

impl Role {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// What is known about one socket.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Socket cookie.
    pub cookie: u64,
    /// Local address, once seen.
    pub local: Option<SocketAddr>,
    /// Remote address, once seen.
    pub remote: Option<SocketAddr>,
    /// Which end opened the connection.
    pub role: Role,
    /// Process of the last send/receive call (0 until one is seen).
    pub pid: u32,
    /// Its `comm`.
    pub comm: [u8; 16],
}

impl ConnInfo {
    /// `comm` as text.
    pub fn comm_str(&self) -> &str {
        let end = self
            .comm
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(self.comm.len());
        std::str::from_utf8(&self.comm[..end]).unwrap_or("?")
    }
}

/// Receives what the connection table produces.
pub trait Sink {
    /// A ready range of one direction of a connection.
    fn chunk(&mut self, conn: &ConnInfo, dir: Dir, chunk: &Chunk<'_>);
    /// The connection is gone (closed or evicted); nothing more will come.
    fn closed(&mut self, _conn: &ConnInfo) {}
    /// End of a batch of records: push out buffered output.
    fn flush(&mut self) {}
}

/// Bounds and timeouts of the table.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Connections tracked at once; beyond, the least recently seen are
    /// flushed and forgotten (counted).
    pub max_conns: usize,
    /// A connection with no record for this long is flushed and forgotten.
    pub idle_timeout_ns: u64,
    /// After the close, how long to wait for the last records.
    pub close_linger_ns: u64,
    /// Per-direction stream bounds.
    pub stream: StreamLimits,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_conns: 65_536,
            idle_timeout_ns: 300 * 1_000_000_000,
            close_linger_ns: 500 * 1_000_000,
            stream: StreamLimits::default(),
        }
    }
}

/// Counters of the table itself (the streams keep their own).
#[derive(Clone, Debug, Default)]
pub struct ConnCounters {
    /// Connections ever created.
    pub opened: u64,
    /// Connections removed after their close.
    pub closed: u64,
    /// Connections removed for being idle.
    pub evicted_idle: u64,
    /// Connections removed because the table was full.
    pub evicted_full: u64,
    /// Records with an unknown direction byte.
    pub bad_records: u64,
}

struct Conn {
    info: ConnInfo,
    streams: [StreamReassembler; 2],
    closed_at: Option<u64>,
    last_seen: u64,
}

/// TCP states (include/net/tcp_states.h).
const TCP_SYN_SENT: u8 = 2;
const TCP_SYN_RECV: u8 = 3;
const TCP_CLOSE: u8 = 7;

/// The connection table.
pub struct Conns {
    conns: HashMap<u64, Conn>,
    limits: ConnLimits,
    counters: ConnCounters,
    /// Stream counters of connections already removed.
    retired: StreamCounters,
}

fn addr(family: u8, bytes: &[u8; 16], port: u16) -> Option<SocketAddr> {
    let ip: std::net::IpAddr = match family {
        AF_INET => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into(),
        // v4-mapped v6 sockets carry IPv4 traffic: show them as IPv4 so both
        // ends of a connection compare equal.
        AF_INET6 => std::net::Ipv6Addr::from(*bytes).to_canonical(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

impl Conns {
    /// An empty table.
    pub fn new(limits: ConnLimits) -> Conns {
        Conns {
            conns: HashMap::new(),
            limits,
            counters: ConnCounters::default(),
            retired: StreamCounters::default(),
        }
    }

    fn entry(&mut self, cookie: u64, now: u64) -> &mut Conn {
        let limits = self.limits.stream;
        let counters = &mut self.counters;
        let conn = self.conns.entry(cookie).or_insert_with(|| {
            counters.opened += 1;
            Conn {
                info: ConnInfo {
                    cookie,
                    local: None,
                    remote: None,
                    role: Role::Unknown,
                    pid: 0,
                    comm: [0; 16],
                },
                streams: [
                    StreamReassembler::new(limits),
                    StreamReassembler::new(limits),
                ],
                closed_at: None,
                last_seen: now,
            }
        });
        conn.last_seen = now;
        conn
    }

    /// A send/receive call.
    pub fn on_op(&mut self, op: &SockOp, sink: &mut impl Sink) {
        let Some(dir) = Dir::from_u8(op.dir) else {
            self.counters.bad_records += 1;
            return;
        };
        let conn = self.entry(op.cookie, op.ts_ns);
        conn.info.pid = op.pid;
        conn.info.comm = op.comm;
        let stream = &mut conn.streams[dir as usize];
        stream.push_op(
            op.seq_end,
            op.len,
            OpMeta {
                pid: op.pid,
                tid: op.tid,
                ts_ns: op.ts_ns,
            },
        );
        let info = &conn.info;
        stream.poll(op.ts_ns, &mut |c| sink.chunk(info, dir, &c));
    }

    /// A captured packet payload.
    pub fn on_segment(&mut self, hdr: &SegmentHeader, data: &[u8], sink: &mut impl Sink) {
        let Some(dir) = Dir::from_u8(hdr.dir) else {
            self.counters.bad_records += 1;
            return;
        };
        let conn = self.entry(hdr.cookie, hdr.ts_ns);
        if conn.info.local.is_none() {
            conn.info.local = addr(hdr.family, &hdr.local_addr, hdr.local_port);
            conn.info.remote = addr(hdr.family, &hdr.remote_addr, hdr.remote_port);
        }
        let stream = &mut conn.streams[dir as usize];
        stream.push_segment(hdr.seq, hdr.payload_len, data, hdr.ts_ns);
        let info = &conn.info;
        stream.poll(hdr.ts_ns, &mut |c| sink.chunk(info, dir, &c));
    }

    /// A TCP state change.
    pub fn on_state(&mut self, st: &ConnState) {
        let conn = self.entry(st.cookie, st.ts_ns);
        // The local port is 0 until connect() binds one; later changes carry it.
        if st.local_port != 0 && st.remote_port != 0 {
            conn.info.local = addr(st.family, &st.local_addr, st.local_port);
            conn.info.remote = addr(st.family, &st.remote_addr, st.remote_port);
        }
        match st.new_state {
            TCP_SYN_SENT => {
                conn.info.role = Role::Client;
                if conn.info.pid == 0 {
                    conn.info.pid = st.pid; // connect() runs in the caller
                }
            }
            TCP_SYN_RECV => conn.info.role = Role::Server,
            TCP_CLOSE => conn.closed_at = Some(st.ts_ns),
            _ => {}
        }
    }

    /// Delivers what timed out, removes closed, idle and excess connections.
    pub fn sweep(&mut self, now: u64, sink: &mut impl Sink) {
        let limits = self.limits;
        let mut gone: Vec<(u64, bool)> = Vec::new();
        for (cookie, conn) in self.conns.iter_mut() {
            let info = &conn.info;
            for (i, stream) in conn.streams.iter_mut().enumerate() {
                let dir = if i == 0 { Dir::Send } else { Dir::Recv };
                stream.poll(now, &mut |c| sink.chunk(info, dir, &c));
            }
            match conn.closed_at {
                Some(t) if now.saturating_sub(t) >= limits.close_linger_ns => {
                    gone.push((*cookie, true))
                }
                _ if now.saturating_sub(conn.last_seen) >= limits.idle_timeout_ns => {
                    gone.push((*cookie, false))
                }
                _ => {}
            }
        }
        for (cookie, closed) in gone {
            if closed {
                self.counters.closed += 1;
            } else {
                self.counters.evicted_idle += 1;
            }
            self.remove(cookie, sink);
        }
        if self.conns.len() > limits.max_conns {
            let mut by_age: Vec<(u64, u64)> =
                self.conns.iter().map(|(c, k)| (k.last_seen, *c)).collect();
            by_age.sort_unstable();
            let excess = self.conns.len() - limits.max_conns;
            for &(_, cookie) in &by_age[..excess] {
                self.counters.evicted_full += 1;
                self.remove(cookie, sink);
            }
        }
    }

    fn remove(&mut self, cookie: u64, sink: &mut impl Sink) {
        if let Some(mut conn) = self.conns.remove(&cookie) {
            let info = &conn.info;
            for (i, stream) in conn.streams.iter_mut().enumerate() {
                let dir = if i == 0 { Dir::Send } else { Dir::Recv };
                stream.flush(&mut |c| sink.chunk(info, dir, &c));
                add_counters(&mut self.retired, stream.counters());
            }
            sink.closed(&conn.info);
        }
    }

    /// Flushes every connection (agent exit).
    pub fn flush_all(&mut self, sink: &mut impl Sink) {
        let cookies: Vec<u64> = self.conns.keys().copied().collect();
        for cookie in cookies {
            self.remove(cookie, sink);
        }
    }

    /// Connections tracked now.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Table counters.
    pub fn counters(&self) -> &ConnCounters {
        &self.counters
    }

    /// Stream counters summed over live and removed connections.
    pub fn stream_counters(&self) -> StreamCounters {
        let mut total = self.retired;
        for conn in self.conns.values() {
            for s in &conn.streams {
                add_counters(&mut total, s.counters());
            }
        }
        total
    }
}

fn add_counters(total: &mut StreamCounters, c: &StreamCounters) {
    total.segments += c.segments;
    total.ops += c.ops;
    total.chunks += c.chunks;
    total.bytes_captured += c.bytes_captured;
    total.bytes_truncated += c.bytes_truncated;
    total.bytes_hole += c.bytes_hole;
    total.bytes_unattributed += c.bytes_unattributed;
    total.bytes_duplicate += c.bytes_duplicate;
    total.segments_dropped_limit += c.segments_dropped_limit;
    total.ops_dropped_limit += c.ops_dropped_limit;
    total.ops_stale += c.ops_stale;
    total.ops_overlapping += c.ops_overlapping;
    total.ops_without_bytes += c.ops_without_bytes;
    total.chunks_with_holes += c.chunks_with_holes;
    total.chunks_forced += c.chunks_forced;
    total.records_unplaceable += c.records_unplaceable;
}
