//! Connection table: kernel records in, per-connection byte streams out.
//!
//! Every record is keyed by socket cookie (socket addresses are reused; the
//! pid seen by cgroup_skb is usually the sender or ksoftirqd). Each
//! connection keeps one [`StreamReassembler`] per direction, which lines the
//! send/receive calls up with the captured packets by TCP sequence number and
//! hands ready chunks to a [`Sink`]. Connections opened before the agent
//! started are created on their first record; their 4-tuple comes from the
//! first packet or state change.
use std::{collections::VecDeque, net::SocketAddr};

use foldhash::{HashMap, HashMapExt};

use crate::comm::Comm;

use protocols::stream::{
    poll_pair, Chunk, OpMeta, StreamCounters, StreamLimits, StreamReassembler,
};
use tracer_common::{
    ConnState, Dir, SegmentHeader, Silence, SockCtl, SockOp, SockTotals, AF_INET, AF_INET6,
    SEG_LOOPBACK, SOCK_CTL_MAX, STATE_AGENT_SOCKET, TCP_FIN,
};

/// (local, remote) of a socket.
type TupleKey = (SocketAddr, SocketAddr);

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
    pub comm: Comm,
    /// The plaintext of a TLS connection (see `tls::streams`), not the
    /// bytes on the wire.
    pub tls: bool,
}

/// What a later stage (a parser) asks of the capture for one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtlRequest {
    /// The connection carries nothing the agent parses: the kernel stops
    /// reporting its calls and copying its packets (it still reports its
    /// state changes, and counts the calls and bytes).
    Silence {
        /// Socket cookie.
        cookie: u64,
        /// Why.
        reason: Silence,
    },
    /// The connection speaks HTTP/2: the kernel walks its frames and copies
    /// every frame head and header block.
    Http2 {
        /// Socket cookie.
        cookie: u64,
    },
    /// Report the connection again (its bytes in between are lost to the
    /// parsers: its streams start afresh).
    Lift {
        /// Socket cookie.
        cookie: u64,
    },
    /// The `len` bytes from stream offset `offset` of direction `dir` are
    /// a body the parser counts without looking at: they need not be
    /// copied.
    Skip {
        /// Socket cookie.
        cookie: u64,
        /// Direction of the bytes.
        dir: Dir,
        /// Offset in the stream (as in `Chunk::offset`).
        offset: u64,
        /// Bytes.
        len: u64,
    },
}

/// Receives what the connection table produces.
pub trait Sink {
    /// A ready range of one direction of a connection.
    fn chunk(&mut self, conn: &ConnInfo, dir: Dir, chunk: &Chunk<'_>);
    /// The connection was closed; its entry lingers for late records.
    fn closing(&mut self, _conn: &ConnInfo) {}
    /// The connection is gone (closed or evicted); nothing more will come.
    fn closed(&mut self, _conn: &ConnInfo) {}
    /// End of a batch of records: push out buffered output.
    fn flush(&mut self) {}
    /// Received bytes from `at_ns` on were dropped before any connection
    /// got them (parked loopback packets): they may have held a request.
    fn lost(&mut self, _at_ns: u64) {}
    /// Bytes `conn` received at `at_ns` have not been read for the hole
    /// timeout: they wait on for their read, but a read the capture missed
    /// would look the same.
    fn unread(&mut self, _conn: &ConnInfo, _at_ns: u64) {}
}

/// Bounds and timeouts of the table.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Connections tracked at once; beyond, the least recently seen are
    /// flushed and forgotten (counted).
    pub max_conns: usize,
    /// A connection with no record for this long is flushed and forgotten.
    pub idle_timeout_ns: u64,
    /// After the close, how long to wait for the last records. Records
    /// reach the table in kernel-time order (see `lanes`), so the close
    /// comes after every record of the connection but late ones (held up
    /// past the reader's 2 ms hold, counted as `reader.records_late`).
    /// Every layer's state of a closed connection (streams, parsers, the
    /// correlator's entry) lives as long as it lingers.
    pub close_linger_ns: u64,
    /// Closed connections allowed to linger the full `close_linger_ns`;
    /// beyond, the oldest go once they lingered `crowded_linger_ns`. A
    /// storm of short connections (34k a second on loopback kept ~7,000
    /// closed, ~8 KiB each) stays bounded; fewer closes wait the full time.
    pub max_lingering: usize,
    /// The shortest linger, when more than `max_lingering` are closed.
    pub crowded_linger_ns: u64,
    /// Per-direction stream bounds.
    pub stream: StreamLimits,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_conns: 65_536,
            idle_timeout_ns: 300 * 1_000_000_000,
            close_linger_ns: 100 * 1_000_000,
            max_lingering: 2_048,
            crowded_linger_ns: 20 * 1_000_000,
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
    /// Closed connections removed before their full linger, because more
    /// than the bound were lingering.
    pub reaped_crowded: u64,
    /// Connections removed for being idle.
    pub evicted_idle: u64,
    /// Connections removed because the table was full.
    pub evicted_full: u64,
    /// Records with an unknown direction byte.
    pub bad_records: u64,
    /// Loopback packets handed to the receiving socket's stream.
    pub loopback_mirrored: u64,
    /// Loopback packets parked until the receiving socket's 4-tuple is known.
    pub loopback_parked: u64,
    /// Parked loopback packets dropped: no receiving socket showed up in
    /// time, or the parking space was full.
    pub loopback_parked_dropped: u64,
    /// Send/receive calls the kernel did not report (silenced sockets),
    /// from the sockets' totals at close.
    pub silenced_calls: u64,
    /// Bytes those calls moved.
    pub silenced_bytes: u64,
    /// Payload bytes the kernel did not copy (silenced sockets, skipped
    /// bodies), from the sockets' totals at close.
    pub uncopied_bytes: u64,
    /// Sockets silenced because they carry nothing the agent parses.
    pub silenced_not_parsed: u64,
    /// Sockets silenced because they carry TLS ciphertext.
    pub silenced_tls: u64,
    /// Sockets silenced as the local receiving end of the agent's own
    /// connection (its exports to a collector on this host).
    pub silenced_agent_peer: u64,
    /// Records of those sockets dropped before the kernel's silence landed:
    /// the agent's own output read back, neither parsed nor a loss.
    pub agent_peer_records: u64,
    /// Verdicts lifted.
    pub silence_lifted: u64,
    /// Bodies the kernel was told to skip.
    pub skips: u64,
    /// Sockets the kernel was told speak HTTP/2 (it walks their frames).
    pub h2_marked: u64,
    /// Requests the kernel's control map had no room for (it holds
    /// `SOCK_CTL_MAX` sockets): that socket stays fully reported.
    pub ctl_full: u64,
}

/// A loopback packet waiting for its receiving socket to be known.
struct Parked {
    seq: u32,
    payload_len: u32,
    tcp_flags: u8,
    data: Vec<u8>,
    ts_ns: u64,
}

/// Hands one packet to a stream: its payload, and its FIN when it has one.
fn feed(
    stream: &mut StreamReassembler,
    seq: u32,
    payload_len: u32,
    tcp_flags: u8,
    data: &[u8],
    ts_ns: u64,
) {
    if tcp_flags & TCP_FIN != 0 {
        stream.push_fin(seq.wrapping_add(payload_len));
    }
    if payload_len > 0 {
        stream.push_segment(seq, payload_len, data, ts_ns);
    }
}

/// Hands what both directions have ready at `now` to `sink`, in the order
/// the calls happened.
fn deliver(streams: &mut Streams, info: &ConnInfo, now: u64, sink: &mut impl Sink) {
    poll_pair(streams, now, &mut |i, c| sink.chunk(info, DIRS[i], &c));
}

/// Directions by stream index.
const DIRS: [Dir; 2] = [Dir::Send, Dir::Recv];

/// Bound on parked loopback packets (all connections together).
const MAX_PARKED: usize = 4096;
/// How long a parked loopback packet waits.
const PARKED_TTL_NS: u64 = 1_000_000_000;

/// Both directions' reassemblers, boxed so they move cheaply and can be
/// reused: most connections are short, and their buffers would otherwise
/// be allocated and freed for every one.
type Streams = Box<[StreamReassembler; 2]>;

/// Closed connections a sweep removes at most (the agent also reaps after
/// every drain).
const SWEEP_REAP_MAX: usize = 4096;

/// Reassembler pairs kept for reuse.
const STREAM_POOL: usize = 1024;

struct Conn {
    info: ConnInfo,
    streams: Streams,
    closed_at: Option<u64>,
    last_seen: u64,
    /// What the kernel was told about this socket (default: nothing).
    ctl: SockCtl,
    /// Per direction: stream offset where the skipped body ends.
    skip_end: [Option<u64>; 2],
    /// The agent opened it (its exports).
    own: bool,
}

/// TCP states (include/net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;
const TCP_SYN_RECV: u8 = 3;
const TCP_CLOSE: u8 = 7;

/// The connection table.
pub struct Conns {
    conns: HashMap<u64, Conn>,
    /// Socket by 4-tuple, to find the receiving end of loopback packets.
    by_tuple: HashMap<TupleKey, u64>,
    /// Loopback packets whose receiving socket is not known yet, by that
    /// socket's (local, remote).
    parked: HashMap<TupleKey, Vec<Parked>>,
    parked_count: usize,
    pool: Vec<Streams>,
    limits: ConnLimits,
    counters: ConnCounters,
    /// Stream counters of connections already removed.
    retired: StreamCounters,
    /// Changes to the kernel's control map, in order (`None`: delete).
    ctl_updates: Vec<(u64, Option<SockCtl>)>,
    /// Sockets with a kernel control entry.
    ctl_entries: usize,
    /// Sockets gone from the table whose control entry stays until their
    /// close is seen (silenced sockets evicted while idle).
    ctl_orphans: HashMap<u64, ()>,
    /// Closed connections in the order of their close: (close time, cookie).
    closing: VecDeque<(u64, u64)>,
    /// Kernel time of the oldest record held undelivered at the last
    /// sweep (received bytes or calls, parked loopback packets).
    pending_since: Option<u64>,
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
            by_tuple: HashMap::new(),
            parked: HashMap::new(),
            parked_count: 0,
            pool: Vec::new(),
            limits,
            counters: ConnCounters::default(),
            retired: StreamCounters::default(),
            ctl_updates: Vec::new(),
            ctl_entries: 0,
            ctl_orphans: HashMap::new(),
            closing: VecDeque::new(),
            pending_since: None,
        }
    }

    /// Kernel time of the oldest received record still held undelivered at
    /// the last [`sweep`](Self::sweep) (`None`: nothing was): every request
    /// read before it has reached the parsers, or its loss was reported.
    pub fn pending_since(&self) -> Option<u64> {
        self.pending_since
    }

    /// A later stage's request about one connection; the kernel learns of
    /// it through [`take_ctl_updates`](Self::take_ctl_updates).
    pub fn request(&mut self, r: CtlRequest) {
        let cookie = match r {
            CtlRequest::Silence { cookie, .. }
            | CtlRequest::Lift { cookie }
            | CtlRequest::Http2 { cookie }
            | CtlRequest::Skip { cookie, .. } => cookie,
        };
        let Some(conn) = self.conns.get_mut(&cookie) else {
            return;
        };
        let before = conn.ctl;
        match r {
            CtlRequest::Silence { reason, .. } => {
                if before.silence == reason as u8 {
                    return;
                }
                conn.ctl.silence = reason as u8;
                for s in conn.streams.iter_mut() {
                    s.stop_copying();
                }
                match reason {
                    Silence::NotParsed => self.counters.silenced_not_parsed += 1,
                    Silence::Tls => self.counters.silenced_tls += 1,
                    Silence::AgentPeer => self.counters.silenced_agent_peer += 1,
                    Silence::None => {}
                }
            }
            CtlRequest::Lift { .. } => {
                if before.silence == 0 {
                    return;
                }
                conn.ctl.silence = 0;
                self.counters.silence_lifted += 1;
                // What the kernel did not report meanwhile is gone: the
                // streams start again at the next record.
                for s in conn.streams.iter_mut() {
                    self.retired += s.counters();
                    s.reset();
                }
                conn.skip_end = [None, None];
                conn.ctl.skip_dirs = 0;
            }
            CtlRequest::Http2 { .. } => {
                if before.h2 != 0 {
                    return;
                }
                conn.ctl.h2 = 1;
                self.counters.h2_marked += 1;
            }
            CtlRequest::Skip {
                dir, offset, len, ..
            } => {
                let d = dir as usize;
                let Some((from, to)) = conn.streams[d].skip(offset, len) else {
                    return;
                };
                conn.ctl.skip_dirs |= 1 << d;
                conn.ctl.skip_from[d] = from;
                conn.ctl.skip_to[d] = to;
                conn.skip_end[d] = Some(offset + len);
                self.counters.skips += 1;
            }
        }
        let after = conn.ctl;
        let had = before != SockCtl::default();
        let has = after != SockCtl::default();
        if !had && has && self.ctl_entries >= SOCK_CTL_MAX as usize {
            conn.ctl = before;
            self.counters.ctl_full += 1;
            return;
        }
        self.ctl_entries = self.ctl_entries + usize::from(has) - usize::from(had);
        self.ctl_updates.push((cookie, has.then_some(after)));
    }

    /// The changes to the kernel's control map since the last call, in
    /// order (`None`: delete the entry), and the number of entries after
    /// them.
    pub fn take_ctl_updates(&mut self) -> (Vec<(u64, Option<SockCtl>)>, usize) {
        (std::mem::take(&mut self.ctl_updates), self.ctl_entries)
    }

    /// After a direction delivered: a skip it passed is over, and its
    /// control entry goes when nothing else is in it.
    fn skip_passed(&mut self, cookie: u64, dir: Dir) {
        let Some(conn) = self.conns.get_mut(&cookie) else {
            return;
        };
        let d = dir as usize;
        match conn.skip_end[d] {
            Some(end) if conn.streams[d].next_offset() >= end => {}
            _ => return,
        }
        conn.skip_end[d] = None;
        conn.ctl.skip_dirs &= !(1 << d);
        if conn.ctl.silence == 0 && conn.ctl.skip_dirs == 0 && conn.ctl.h2 == 0 {
            conn.ctl = SockCtl::default();
            self.ctl_entries -= 1;
            self.ctl_updates.push((cookie, None));
        } else {
            self.ctl_updates.push((cookie, Some(conn.ctl)));
        }
    }

    /// Records a socket's 4-tuple, learnt from a record of `now`, and hands
    /// it the loopback packets that were waiting for it.
    fn set_tuple(
        &mut self,
        cookie: u64,
        (local, remote): (SocketAddr, SocketAddr),
        now: u64,
        sink: &mut impl Sink,
    ) {
        let Some(conn) = self.conns.get_mut(&cookie) else {
            return;
        };
        if conn.info.local == Some(local) && conn.info.remote == Some(remote) {
            return;
        }
        conn.info.local = Some(local);
        conn.info.remote = Some(remote);
        self.by_tuple.insert((local, remote), cookie);
        if let Some(parked) = self.parked.remove(&(local, remote)) {
            self.parked_count -= parked.len();
            let stream = &mut conn.streams[Dir::Recv as usize];
            stream.set_sent_order(true);
            // The receiving call may come long after the packet: a packet
            // sent before the server accepted (its accept queue full) is
            // read after the retransmission the accept waited for, 200 ms
            // on, past the hole timeout.
            stream.noticed_from(now);
            for p in parked {
                feed(stream, p.seq, p.payload_len, p.tcp_flags, &p.data, p.ts_ns);
                self.counters.loopback_mirrored += 1;
            }
            deliver(&mut conn.streams, &conn.info, conn.last_seen, sink);
        }
    }

    /// An egress loopback packet is also the receiving socket's ingress
    /// packet (which the kernel does not copy twice).
    fn mirror_loopback(
        &mut self,
        hdr: &SegmentHeader,
        local: SocketAddr,
        remote: SocketAddr,
        data: &[u8],
        sink: &mut impl Sink,
    ) {
        let key = (remote, local);
        if let Some(peer) = self.by_tuple.get(&key).and_then(|c| self.conns.get_mut(c)) {
            peer.last_seen = hdr.ts_ns;
            let stream = &mut peer.streams[Dir::Recv as usize];
            stream.set_sent_order(true);
            feed(
                stream,
                hdr.seq,
                hdr.payload_len,
                hdr.tcp_flags,
                data,
                hdr.ts_ns,
            );
            self.counters.loopback_mirrored += 1;
            deliver(&mut peer.streams, &peer.info, hdr.ts_ns, sink);
            return;
        }
        if self.parked_count >= MAX_PARKED {
            self.counters.loopback_parked_dropped += 1;
            sink.lost(hdr.ts_ns);
            return;
        }
        self.parked_count += 1;
        self.counters.loopback_parked += 1;
        self.parked.entry(key).or_default().push(Parked {
            seq: hdr.seq,
            payload_len: hdr.payload_len,
            tcp_flags: hdr.tcp_flags,
            data: data.to_vec(),
            ts_ns: hdr.ts_ns,
        });
    }

    fn entry(&mut self, cookie: u64, now: u64) -> &mut Conn {
        let limits = self.limits.stream;
        let counters = &mut self.counters;
        let pool = &mut self.pool;
        let conn = self.conns.entry(cookie).or_insert_with(|| {
            counters.opened += 1;
            let mut streams = pool.pop().unwrap_or_else(|| {
                Box::new([
                    StreamReassembler::new(limits),
                    StreamReassembler::new(limits),
                ])
            });
            // A socket's sends are captured as it sends them; its receives
            // are too when fed from a loopback peer's sends (see
            // `mirror_loopback`), else they come from the network.
            streams[Dir::Send as usize].set_sent_order(true);
            streams[Dir::Recv as usize].set_receive(true);
            Conn {
                info: ConnInfo {
                    cookie,
                    local: None,
                    remote: None,
                    role: Role::Unknown,
                    pid: 0,
                    comm: Comm::default(),
                    tls: false,
                },
                streams,
                closed_at: None,
                last_seen: now,
                ctl: SockCtl::default(),
                skip_end: [None, None],
                own: false,
            }
        });
        conn.last_seen = now;
        conn
    }

    /// The connection of socket `cookie` (created when new), seen at `now`:
    /// TLS plaintext of that socket keeps it alive and takes its addresses.
    pub fn touch(&mut self, cookie: u64, now: u64) -> &ConnInfo {
        &self.entry(cookie, now).info
    }

    /// The process of the last call on socket `cookie` (None: not known).
    pub fn pid_of(&self, cookie: u64) -> Option<u32> {
        self.conns
            .get(&cookie)
            .map(|c| c.info.pid)
            .filter(|&p| p != 0)
    }

    /// A send/receive call.
    pub fn on_op(&mut self, op: &SockOp, sink: &mut impl Sink) {
        let Some(dir) = Dir::from_u8(op.dir) else {
            self.counters.bad_records += 1;
            return;
        };
        let conn = self.entry(op.cookie, op.ts_ns);
        if conn.ctl.silence == Silence::AgentPeer as u8 {
            self.counters.agent_peer_records += 1;
            return;
        }
        conn.info.pid = op.pid;
        conn.info.comm = Comm::new(op.comm);
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
        deliver(&mut conn.streams, &conn.info, op.ts_ns, sink);
        if conn.skip_end[dir as usize].is_some() {
            self.skip_passed(op.cookie, dir);
        }
    }

    /// A captured packet payload.
    pub fn on_segment(&mut self, hdr: &SegmentHeader, data: &[u8], sink: &mut impl Sink) {
        let Some(dir) = Dir::from_u8(hdr.dir) else {
            self.counters.bad_records += 1;
            return;
        };
        let local = addr(hdr.family, &hdr.local_addr, hdr.local_port);
        let remote = addr(hdr.family, &hdr.remote_addr, hdr.remote_port);
        let known = self.entry(hdr.cookie, hdr.ts_ns).info.local.is_some();
        if let (false, Some(l), Some(r)) = (known, local, remote) {
            self.set_tuple(hdr.cookie, (l, r), hdr.ts_ns, sink);
        }
        let conn = self.entry(hdr.cookie, hdr.ts_ns);
        if conn.ctl.silence == Silence::AgentPeer as u8 {
            self.counters.agent_peer_records += 1;
            return;
        }
        let stream = &mut conn.streams[dir as usize];
        feed(
            stream,
            hdr.seq,
            hdr.payload_len,
            hdr.tcp_flags,
            data,
            hdr.ts_ns,
        );
        deliver(&mut conn.streams, &conn.info, hdr.ts_ns, sink);
        if conn.skip_end[dir as usize].is_some() {
            self.skip_passed(hdr.cookie, dir);
        }
        if dir == Dir::Send && hdr.seg_flags & SEG_LOOPBACK != 0 {
            if let (Some(l), Some(r)) = (local, remote) {
                self.mirror_loopback(hdr, l, r, data, sink);
            }
        }
    }

    /// What the kernel counted for a socket instead of reporting it in
    /// detail (at the socket's close).
    pub fn on_totals(&mut self, t: &SockTotals) {
        let c = &mut self.counters;
        c.silenced_calls += t.silenced_calls.iter().sum::<u64>();
        c.silenced_bytes += t.silenced_bytes.iter().sum::<u64>();
        c.uncopied_bytes += t.uncopied_bytes.iter().sum::<u64>();
    }

    /// A TCP state change.
    pub fn on_state(&mut self, st: &ConnState, sink: &mut impl Sink) {
        if st.new_state == TCP_CLOSE && self.ctl_orphans.remove(&st.cookie).is_some() {
            self.ctl_entries -= 1;
            self.ctl_updates.push((st.cookie, None));
        }
        let mut newly_closed = false;
        let old_state = st.old_state & !STATE_AGENT_SOCKET;
        let conn = self.entry(st.cookie, st.ts_ns);
        conn.own |= st.old_state & STATE_AGENT_SOCKET != 0;
        match st.new_state {
            // The kernel reports ESTABLISHED: from SYN_SENT this end
            // connected, from SYN_RECV it was accepted. (Recordings of
            // older agents also carry SYN_SENT and SYN_RECV.)
            TCP_ESTABLISHED if old_state == TCP_SYN_SENT => conn.info.role = Role::Client,
            TCP_ESTABLISHED if old_state == TCP_SYN_RECV => conn.info.role = Role::Server,
            TCP_SYN_SENT => {
                conn.info.role = Role::Client;
                if conn.info.pid == 0 {
                    conn.info.pid = st.pid; // connect() runs in the caller
                }
            }
            TCP_SYN_RECV => conn.info.role = Role::Server,
            TCP_CLOSE => {
                if conn.closed_at.is_none() {
                    newly_closed = true;
                    // What lingers for late records need not keep buffers.
                    conn.streams.iter_mut().for_each(StreamReassembler::trim);
                    sink.closing(&conn.info);
                }
                conn.closed_at = Some(st.ts_ns);
            }
            _ => {}
        }
        if newly_closed {
            self.closing.push_back((st.ts_ns, st.cookie));
        }
        // The local port is 0 until connect() binds one; later changes carry it.
        if st.local_port != 0 && st.remote_port != 0 {
            if let (Some(l), Some(r)) = (
                addr(st.family, &st.local_addr, st.local_port),
                addr(st.family, &st.remote_addr, st.remote_port),
            ) {
                self.set_tuple(st.cookie, (l, r), st.ts_ns, sink);
                if st.new_state == TCP_ESTABLISHED {
                    self.silence_agent_peer(st.cookie);
                }
            }
        }
    }

    /// Silences the local end of the agent's own connection (a collector
    /// on this host reading the agent's exports) once both ends are known,
    /// whichever was reported first. The kernel never copies the agent's
    /// packets, so that end's reads would only make holes.
    fn silence_agent_peer(&mut self, cookie: u64) {
        let Some(conn) = self.conns.get(&cookie) else {
            return;
        };
        let (Some(l), Some(r)) = (conn.info.local, conn.info.remote) else {
            return;
        };
        let own = conn.own;
        let Some(&peer) = self.by_tuple.get(&(r, l)) else {
            return;
        };
        let target = match (own, self.conns.get(&peer).map(|p| p.own)) {
            (true, Some(false)) => peer,
            (false, Some(true)) => cookie,
            _ => return,
        };
        self.request(CtlRequest::Silence {
            cookie: target,
            reason: Silence::AgentPeer,
        });
        // What it read so far is the agent's output too: dropped unparsed.
        if let Some(c) = self.conns.get_mut(&target) {
            for s in c.streams.iter_mut() {
                s.reset();
            }
        }
    }

    /// Removes up to `max` connections whose close lingered long enough,
    /// oldest first; returns how many. Cheap to call often: the agent calls
    /// it after every drain, so that a storm of short connections is
    /// retired in small steps between reads of the kernel's records rather
    /// than all at once.
    pub fn reap(&mut self, now: u64, max: usize, sink: &mut impl Sink) -> usize {
        let mut n = 0;
        while n < max {
            let Some(&(t, cookie)) = self.closing.front() else {
                break;
            };
            let age = now.saturating_sub(t);
            // The queue's length stands for the lingering count: an entry
            // whose connection was evicted meanwhile only leaves it early.
            let crowded = self.closing.len() > self.limits.max_lingering
                && age >= self.limits.crowded_linger_ns;
            if age < self.limits.close_linger_ns && !crowded {
                break;
            }
            self.closing.pop_front();
            // Still the connection that closed then (not evicted already).
            if self
                .conns
                .get(&cookie)
                .is_some_and(|c| c.closed_at == Some(t))
            {
                self.counters.closed += 1;
                if age < self.limits.close_linger_ns {
                    self.counters.reaped_crowded += 1;
                }
                self.remove(cookie, sink);
                n += 1;
            }
        }
        n
    }

    /// Delivers what timed out, removes idle and excess connections (and
    /// closed ones, see [`reap`](Self::reap)).
    pub fn sweep(&mut self, now: u64, sink: &mut impl Sink) {
        let limits = self.limits;
        let mut gone: Vec<u64> = Vec::new();
        let mut pending: Option<u64> = None;
        for (cookie, conn) in self.conns.iter_mut() {
            deliver(&mut conn.streams, &conn.info, now, sink);
            let recv = &mut conn.streams[Dir::Recv as usize];
            if let Some(at) = recv.take_unread(now) {
                sink.unread(&conn.info, at);
            }
            if let Some(t) = recv.pending_since(now) {
                pending = Some(pending.map_or(t, |p| p.min(t)));
            }
            if conn.closed_at.is_none()
                && now.saturating_sub(conn.last_seen) >= limits.idle_timeout_ns
            {
                gone.push(*cookie);
            }
        }
        for cookie in gone {
            self.counters.evicted_idle += 1;
            self.remove(cookie, sink);
        }
        self.reap(now, SWEEP_REAP_MAX, sink);
        if self.parked_count > 0 {
            let before = self.parked_count;
            let mut lost: Option<u64> = None;
            self.parked.retain(|_, v| {
                v.retain(|p| {
                    let keep = now.saturating_sub(p.ts_ns) < PARKED_TTL_NS;
                    let earliest = if keep { &mut pending } else { &mut lost };
                    *earliest = Some(earliest.map_or(p.ts_ns, |t| t.min(p.ts_ns)));
                    keep
                });
                !v.is_empty()
            });
            if let Some(at) = lost {
                sink.lost(at);
            }
            self.parked_count = self.parked.values().map(Vec::len).sum();
            self.counters.loopback_parked_dropped += (before - self.parked_count) as u64;
        }
        self.pending_since = pending;
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
            if let (Some(l), Some(r)) = (conn.info.local, conn.info.remote) {
                if self.by_tuple.get(&(l, r)) == Some(&cookie) {
                    self.by_tuple.remove(&(l, r));
                }
            }
            // Everything left, in call order, missing bytes as holes.
            deliver(&mut conn.streams, &conn.info, u64::MAX, sink);
            let info = &conn.info;
            for (stream, dir) in conn.streams.iter_mut().zip(DIRS) {
                stream.flush(&mut |c| sink.chunk(info, dir, &c));
                self.retired += stream.counters();
                stream.reset();
            }
            sink.closed(&conn.info);
            if conn.ctl != SockCtl::default() {
                if conn.closed_at.is_none() && conn.ctl.silence != 0 {
                    // Evicted while open: the kernel keeps it silenced until
                    // its close shows up.
                    self.ctl_orphans.insert(cookie, ());
                } else {
                    self.ctl_entries -= 1;
                    self.ctl_updates.push((cookie, None));
                }
            }
            if self.pool.len() < STREAM_POOL {
                self.pool.push(conn.streams);
            }
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
    pub fn live(&self) -> usize {
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
            for s in conn.streams.iter() {
                total += s.counters();
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::stream::Piece;
    use tracer_common::Tag;

    #[derive(Default)]
    struct Collect {
        got: Vec<(u64, Dir, Option<u32>, Vec<u8>)>,
        closed: Vec<u64>,
        lost: Vec<u64>,
    }

    impl Sink for Collect {
        fn chunk(&mut self, conn: &ConnInfo, dir: Dir, chunk: &Chunk<'_>) {
            let mut data = Vec::new();
            for p in chunk.pieces {
                if let Piece::Data(d) = p {
                    data.extend_from_slice(d);
                }
            }
            self.got
                .push((conn.cookie, dir, chunk.op.map(|o| o.tid), data));
        }
        fn closed(&mut self, conn: &ConnInfo) {
            self.closed.push(conn.cookie);
        }
        fn lost(&mut self, at_ns: u64) {
            self.lost.push(at_ns);
        }
    }

    const A: u64 = 100; // client socket 127.0.0.1:5000 -> :80
    const B: u64 = 200; // server socket 127.0.0.1:80 -> :5000

    fn v4(port: u16) -> ([u8; 16], u16) {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[127, 0, 0, 1]);
        (a, port)
    }

    fn seg(
        cookie: u64,
        dir: Dir,
        local: u16,
        remote: u16,
        seq: u32,
        data: &[u8],
        ts: u64,
    ) -> SegmentHeader {
        SegmentHeader {
            tag: Tag::Segment as u8,
            dir: dir as u8,
            family: AF_INET,
            tcp_flags: 0x18,
            seq,
            payload_len: data.len() as u32,
            captured_len: data.len() as u32,
            ts_ns: ts,
            cookie,
            local_port: local,
            remote_port: remote,
            seg_flags: SEG_LOOPBACK,
            _pad: [0; 3],
            local_addr: v4(local).0,
            remote_addr: v4(remote).0,
        }
    }

    fn op(cookie: u64, dir: Dir, seq_end: u32, len: u32, tid: u32, ts: u64) -> SockOp {
        SockOp {
            tag: Tag::SockOp as u8,
            dir: dir as u8,
            _pad: [0; 2],
            len,
            ts_ns: ts,
            cookie,
            pid: tid,
            tid,
            seq_end,
            _pad2: 0,
            comm: [0; 16],
        }
    }

    fn state(cookie: u64, new_state: u8, local: u16, remote: u16, ts: u64) -> ConnState {
        ConnState {
            tag: Tag::ConnState as u8,
            family: AF_INET,
            old_state: 0,
            new_state,
            local_port: local,
            remote_port: remote,
            ts_ns: ts,
            cookie,
            pid: 1,
            tid: 1,
            local_addr: v4(local).0,
            remote_addr: v4(remote).0,
        }
    }

    #[test]
    fn loopback_packet_feeds_both_ends() {
        let mut t = Conns::new(ConnLimits::default());
        let mut sink = Collect::default();
        t.on_state(&state(A, TCP_SYN_SENT, 5000, 80, 1), &mut sink);
        t.on_state(&state(B, TCP_SYN_RECV, 80, 5000, 2), &mut sink);
        let req = b"GET / HTTP/1.1\r\n\r\n";
        t.on_segment(&seg(A, Dir::Send, 5000, 80, 1000, req, 3), req, &mut sink);
        t.on_op(
            &op(
                A,
                Dir::Send,
                1000 + req.len() as u32,
                req.len() as u32,
                7,
                4,
            ),
            &mut sink,
        );
        t.on_op(
            &op(
                B,
                Dir::Recv,
                1000 + req.len() as u32,
                req.len() as u32,
                9,
                5,
            ),
            &mut sink,
        );
        assert_eq!(
            sink.got,
            vec![
                (A, Dir::Send, Some(7), req.to_vec()),
                (B, Dir::Recv, Some(9), req.to_vec())
            ]
        );
        assert_eq!(t.counters().loopback_mirrored, 1);
        let b = &t.conns[&B].info;
        assert_eq!(b.role, Role::Server);
        assert_eq!(b.remote.unwrap().port(), 5000);
    }

    /// A lost packet record on loopback: both ends' streams were captured
    /// as sent (the client's sends, the server's receives fed from them),
    /// so the request after the gap goes out once the short wait has
    /// passed, not the hole timeout.
    #[test]
    fn a_lost_loopback_packet_holds_its_connection_only_briefly() {
        const MS: u64 = 1_000_000;
        let mut t = Conns::new(ConnLimits::default());
        let mut sink = Collect::default();
        t.on_state(&state(A, TCP_SYN_SENT, 5000, 80, 1), &mut sink);
        t.on_state(&state(B, TCP_SYN_RECV, 80, 5000, 2), &mut sink);
        let (r1, r2) = (b"GET /1 HTTP/1.1\r\n\r\n", b"GET /2 HTTP/1.1\r\n\r\n");
        let (n1, n2) = (r1.len() as u32, r2.len() as u32);
        // r1's packet record is lost; r2's arrives.
        t.on_op(&op(A, Dir::Send, 1000 + n1, n1, 7, 3 * MS), &mut sink);
        t.on_op(&op(B, Dir::Recv, 1000 + n1, n1, 9, 3 * MS), &mut sink);
        t.on_segment(
            &seg(A, Dir::Send, 5000, 80, 1000 + n1, r2, 4 * MS),
            r2,
            &mut sink,
        );
        t.on_op(&op(A, Dir::Send, 1000 + n1 + n2, n2, 7, 4 * MS), &mut sink);
        t.on_op(&op(B, Dir::Recv, 1000 + n1 + n2, n2, 9, 4 * MS), &mut sink);
        t.sweep(20 * MS, &mut sink);
        assert!(
            sink.got.iter().all(|g| g.3 != r2.to_vec()),
            "{:?}",
            sink.got
        );
        t.sweep(25 * MS, &mut sink);
        for end in [(A, Dir::Send, Some(7)), (B, Dir::Recv, Some(9))] {
            assert!(
                sink.got.contains(&(end.0, end.1, end.2, r2.to_vec())),
                "{:?}",
                sink.got
            );
        }
    }

    /// A request sent while the server's accept queue was full: its first
    /// copy is parked (the server socket does not exist yet), the server
    /// accepts on the retransmission 200 ms later and reads it then. The
    /// wait for the read starts at the hand-over, not at the old packet.
    #[test]
    fn parked_packets_wait_for_their_read_from_the_hand_over() {
        const MS: u64 = 1_000_000;
        let mut t = Conns::new(ConnLimits::default());
        let mut sink = Collect::default();
        let req = b"GET /x HTTP/1.1\r\n\r\n";
        let n = req.len() as u32;
        t.on_state(&state(A, TCP_SYN_SENT, 5000, 80, MS), &mut sink);
        t.on_segment(
            &seg(A, Dir::Send, 5000, 80, 10, req, 2 * MS),
            req,
            &mut sink,
        );
        t.on_op(&op(A, Dir::Send, 10 + n, n, 7, 2 * MS), &mut sink);
        assert_eq!(t.counters().loopback_parked, 1);
        t.on_state(&state(B, TCP_SYN_RECV, 80, 5000, 215 * MS), &mut sink);
        t.on_op(&op(B, Dir::Recv, 10 + n, n, 9, 216 * MS), &mut sink);
        t.sweep(217 * MS, &mut sink);
        assert!(
            sink.got.contains(&(B, Dir::Recv, Some(9), req.to_vec())),
            "{:?}",
            sink.got
        );
        assert_eq!(t.stream_counters().ops_stale, 0);
    }

    #[test]
    fn receiver_learned_later_gets_the_parked_packets() {
        // A connection open before the agent: no state records.
        let mut t = Conns::new(ConnLimits::default());
        let mut sink = Collect::default();
        let req = b"GET /x HTTP/1.1\r\n\r\n";
        t.on_segment(&seg(A, Dir::Send, 5000, 80, 10, req, 1), req, &mut sink);
        t.on_op(
            &op(B, Dir::Recv, 10 + req.len() as u32, req.len() as u32, 9, 2),
            &mut sink,
        );
        assert_eq!(t.counters().loopback_parked, 1);
        assert!(
            sink.got.iter().all(|g| g.0 != B),
            "B's bytes wait for its tuple"
        );
        // B answers: its own egress packet tells its 4-tuple.
        let resp = b"HTTP/1.1 200 OK\r\n\r\n";
        t.on_segment(&seg(B, Dir::Send, 80, 5000, 77, resp, 3), resp, &mut sink);
        assert!(
            sink.got.contains(&(B, Dir::Recv, Some(9), req.to_vec())),
            "{:?}",
            sink.got
        );
        // B's answer goes to A's receive side, whose tuple is known.
        assert_eq!(t.counters().loopback_mirrored, 2);
    }

    #[test]
    fn roles_come_from_the_state_established_was_reached_from() {
        let mut t = Conns::new(ConnLimits::default());
        let mut sink = Collect::default();
        let mut a = state(A, TCP_ESTABLISHED, 5000, 80, 1);
        a.old_state = TCP_SYN_SENT;
        let mut b = state(B, TCP_ESTABLISHED, 80, 5000, 2);
        b.old_state = TCP_SYN_RECV;
        t.on_state(&a, &mut sink);
        t.on_state(&b, &mut sink);
        assert_eq!(t.conns[&A].info.role, Role::Client);
        assert_eq!(t.conns[&B].info.role, Role::Server);
        assert_eq!(t.conns[&B].info.remote.unwrap().port(), 5000);
    }

    #[test]
    fn the_local_reader_of_the_agents_exports_is_silenced_in_either_order() {
        for agent_first in [true, false] {
            let mut t = Conns::new(ConnLimits::default());
            let mut sink = Collect::default();
            // A: the agent's export connection; B: the collector's end.
            let mut a = state(A, TCP_ESTABLISHED, 5000, 4317, 1);
            a.old_state = TCP_SYN_SENT | STATE_AGENT_SOCKET;
            let mut b = state(B, TCP_ESTABLISHED, 4317, 5000, 2);
            b.old_state = TCP_SYN_RECV;
            // A receive call of B before the verdict: dropped with it.
            t.on_op(&op(B, Dir::Recv, 100, 100, 9, 2), &mut sink);
            if agent_first {
                t.on_state(&a, &mut sink);
                t.on_state(&b, &mut sink);
            } else {
                t.on_state(&b, &mut sink);
                t.on_state(&a, &mut sink);
            }
            assert_eq!(t.conns[&A].info.role, Role::Client);
            let (updates, _) = t.take_ctl_updates();
            assert_eq!(
                updates,
                vec![(
                    B,
                    Some(SockCtl {
                        silence: Silence::AgentPeer as u8,
                        ..SockCtl::default()
                    })
                )]
            );
            // Calls that slip by before the kernel applies it are dropped,
            // not holes.
            t.on_op(&op(B, Dir::Recv, 300, 200, 9, 3), &mut sink);
            t.sweep(u64::MAX / 2, &mut sink);
            assert_eq!(t.counters().silenced_agent_peer, 1);
            assert_eq!(t.counters().agent_peer_records, 1);
            assert!(sink.got.iter().all(|g| g.0 != B), "{:?}", sink.got);
            assert_eq!(t.stream_counters().bytes_hole, 0);
        }
        // Two ordinary local ends are left alone.
        let mut t = Conns::new(ConnLimits::default());
        let mut sink = Collect::default();
        t.on_state(&state(A, TCP_ESTABLISHED, 5000, 80, 1), &mut sink);
        t.on_state(&state(B, TCP_ESTABLISHED, 80, 5000, 2), &mut sink);
        assert!(t.take_ctl_updates().0.is_empty());
    }

    #[test]
    fn receive_of_data_and_fin_together_lines_up() {
        let mut t = Conns::new(ConnLimits::default());
        let mut sink = Collect::default();
        t.on_state(&state(A, TCP_SYN_SENT, 5000, 80, 1), &mut sink);
        t.on_state(&state(B, TCP_SYN_RECV, 80, 5000, 2), &mut sink);
        t.on_segment(
            &seg(B, Dir::Send, 80, 5000, 1000, b"hello", 3),
            b"hello",
            &mut sink,
        );
        let mut fin = seg(B, Dir::Send, 80, 5000, 1005, b"", 4);
        fin.tcp_flags = TCP_FIN | 0x10;
        t.on_segment(&fin, b"", &mut sink);
        // copied_seq counts the FIN: 1006.
        t.on_op(&op(A, Dir::Recv, 1006, 5, 7, 5), &mut sink);
        assert!(
            sink.got
                .contains(&(A, Dir::Recv, Some(7), b"hello".to_vec())),
            "{:?}",
            sink.got
        );
        assert_eq!(t.stream_counters().bytes_hole, 0);
    }

    #[test]
    fn parked_packets_expire_and_are_counted() {
        let mut t = Conns::new(ConnLimits::default());
        let mut sink = Collect::default();
        t.on_segment(
            &seg(A, Dir::Send, 5000, 80, 10, b"abc", 1),
            b"abc",
            &mut sink,
        );
        t.sweep(2, &mut sink);
        assert_eq!(t.pending_since(), Some(1), "a parked packet is pending");
        assert!(sink.lost.is_empty());
        t.sweep(1 + PARKED_TTL_NS, &mut sink);
        assert_eq!(t.counters().loopback_parked_dropped, 1);
        assert_eq!(t.parked_count, 0);
        assert_eq!(t.pending_since(), None);
        assert_eq!(sink.lost, vec![1], "its loss is reported, once");
    }

    #[test]
    fn silence_lift_and_skip_become_kernel_updates_in_order() {
        let mut t = Conns::new(ConnLimits::default());
        let mut sink = Collect::default();
        t.on_state(&state(A, TCP_SYN_SENT, 5000, 80, 1), &mut sink);
        // Unknown connections are not asked about.
        t.request(CtlRequest::Silence {
            cookie: 999,
            reason: Silence::NotParsed,
        });
        t.request(CtlRequest::Silence {
            cookie: A,
            reason: Silence::Tls,
        });
        // The same verdict twice is one update.
        t.request(CtlRequest::Silence {
            cookie: A,
            reason: Silence::Tls,
        });
        let (updates, entries) = t.take_ctl_updates();
        assert_eq!(entries, 1);
        assert_eq!(updates.len(), 1);
        assert_eq!(updates[0].0, A);
        assert_eq!(updates[0].1.map(|c| c.silence), Some(Silence::Tls as u8));
        t.request(CtlRequest::Lift { cookie: A });
        assert_eq!(t.take_ctl_updates(), (vec![(A, None)], 0));
        assert_eq!(
            (t.counters().silenced_tls, t.counters().silence_lifted),
            (1, 1)
        );
    }

    #[test]
    fn a_skip_is_registered_in_the_stream_and_dropped_once_passed() {
        let mut t = Conns::new(ConnLimits::default());
        let mut sink = Collect::default();
        t.on_state(&state(A, TCP_SYN_SENT, 5000, 80, 1), &mut sink);
        let head = b"HTTP/1.1 200 OK\r\n\r\n";
        let n = head.len() as u32;
        let mut hdr = seg(A, Dir::Recv, 5000, 80, 100, head, 2);
        hdr.seg_flags = 0;
        t.on_segment(&hdr, head, &mut sink);
        t.on_op(&op(A, Dir::Recv, 100 + n, n, 7, 3), &mut sink);
        // A body of 1,000 bytes follows the head.
        t.request(CtlRequest::Skip {
            cookie: A,
            dir: Dir::Recv,
            offset: u64::from(n),
            len: 1000,
        });
        let (updates, entries) = t.take_ctl_updates();
        assert_eq!(entries, 1);
        let ctl = updates[0].1.unwrap();
        assert_eq!(ctl.skip_dirs, 1 << Dir::Recv as u8);
        assert_eq!(
            (ctl.skip_from[1], ctl.skip_to[1]),
            (100 + n, 100 + n + 1000)
        );
        // The kernel reports no packet of the body; the receive calls come.
        t.on_op(&op(A, Dir::Recv, 100 + n + 1000, 1000, 7, 4), &mut sink);
        assert_eq!(t.take_ctl_updates(), (vec![(A, None)], 0), "skip over");
        let k = t.stream_counters();
        assert_eq!((k.bytes_skipped, k.bytes_hole), (1000, 0));
    }

    #[test]
    fn a_silenced_connection_evicted_while_open_keeps_its_entry_until_its_close() {
        let limits = ConnLimits {
            idle_timeout_ns: 1_000,
            ..ConnLimits::default()
        };
        let mut t = Conns::new(limits);
        let mut sink = Collect::default();
        t.on_state(&state(A, TCP_SYN_SENT, 5000, 80, 1), &mut sink);
        t.request(CtlRequest::Silence {
            cookie: A,
            reason: Silence::NotParsed,
        });
        t.take_ctl_updates();
        t.sweep(10_000, &mut sink);
        assert_eq!(t.live(), 0);
        assert_eq!(t.take_ctl_updates(), (vec![], 1), "kept in the kernel");
        t.on_state(&state(A, TCP_CLOSE, 5000, 80, 20_000), &mut sink);
        assert_eq!(t.take_ctl_updates(), (vec![(A, None)], 0));
    }

    /// More closed connections than the bound: the oldest beyond it go
    /// once they lingered the crowded time, the rest wait the full linger.
    #[test]
    fn a_crowd_of_closed_connections_lingers_less() {
        let limits = ConnLimits {
            close_linger_ns: 100,
            max_lingering: 2,
            crowded_linger_ns: 20,
            ..ConnLimits::default()
        };
        let mut t = Conns::new(limits);
        let mut sink = Collect::default();
        for c in 1..=4u64 {
            let port = 6000 + c as u16;
            t.on_state(&state(c, TCP_SYN_SENT, port, 80, c), &mut sink);
            t.on_state(&state(c, TCP_CLOSE, port, 80, 10 + c), &mut sink);
        }
        t.reap(25, usize::MAX, &mut sink);
        assert!(sink.closed.is_empty(), "none lingered the crowded time");
        t.reap(33, usize::MAX, &mut sink);
        assert_eq!(sink.closed, vec![1, 2], "down to the bound, oldest first");
        assert_eq!(t.counters().reaped_crowded, 2);
        t.reap(112, usize::MAX, &mut sink);
        assert_eq!(sink.closed, vec![1, 2], "the bound waits the full linger");
        t.reap(114, usize::MAX, &mut sink);
        assert_eq!(sink.closed, vec![1, 2, 3, 4]);
        assert_eq!((t.counters().closed, t.counters().reaped_crowded), (4, 2));
    }

    #[test]
    fn closed_idle_and_excess_connections_are_removed() {
        let limits = ConnLimits {
            max_conns: 2,
            idle_timeout_ns: 1_000,
            close_linger_ns: 10,
            ..ConnLimits::default()
        };
        let mut t = Conns::new(limits);
        let mut sink = Collect::default();
        t.on_state(&state(A, TCP_SYN_SENT, 5000, 80, 1), &mut sink);
        t.on_state(&state(A, TCP_CLOSE, 5000, 80, 2), &mut sink);
        t.sweep(20, &mut sink);
        assert_eq!(sink.closed, vec![A]);
        assert_eq!(t.counters().closed, 1);
        for c in 1..=4 {
            t.on_state(
                &state(c, TCP_SYN_SENT, 6000 + c as u16, 80, 100 + c),
                &mut sink,
            );
        }
        t.sweep(110, &mut sink);
        assert_eq!(t.live(), 2);
        assert_eq!(t.counters().evicted_full, 2);
        t.sweep(5_000, &mut sink);
        assert_eq!(t.live(), 0);
        assert_eq!(t.counters().evicted_idle, 2);
    }
}
