//! TLS plaintext records -> per-connection plaintext streams, handed to the
//! same parsers as cleartext.
//!
//! Each TCP connection whose TLS library calls were seen gets a second,
//! plaintext connection next to its ciphertext one: same addresses, same
//! role, its own id ([`TLS_CONN_BIT`] set on the cookie) so that the
//! ciphertext's verdict (silenced as TLS) and the plaintext's parser never
//! meet. A call's bytes are one chunk at the stream's next offset; its
//! sequence number is that of the first ciphertext byte the call moved
//! (both ends see the same TLS record start), so rule 3 pairs the client
//! and server spans exactly as on cleartext.
//!
//! Reads that shared one receive of several records (memory-BIO reads
//! after it, [`TLS_RECV_CANDIDATE`]; reads the library served from its
//! buffer after the read that made it) are held, with the connection's
//! records behind them, until the receive is used up; then [`prove`]
//! decides where each started, or none is stamped.
use foldhash::{HashMap, HashMapExt};
use protocols::stream::{Chunk, MissingKind, OpMeta, Piece};
use tracer_common::{
    Dir, TlsData, TLS_CONN_REMEMBERED, TLS_LINKED_OUTSIDE, TLS_READ_LOST, TLS_RECV_CANDIDATE,
    TLS_RECV_END, TLS_SEQ_KNOWN,
};

use crate::{
    comm::Comm,
    conntrack::{ConnInfo, Role},
};

/// Set on the cookie of a plaintext connection: the correlator's layer bit
/// (runtime hooks name the socket; the correlator finds its layer).
pub const TLS_CONN_BIT: u64 = correlate::ConnId::LAYER_BIT;

/// Plaintext connections tracked at once.
const MAX_CONNS: usize = 65_536;

/// Receives whose reads are held at once.
const MAX_SHARED: usize = 4_096;
/// Records held behind one receive at most (reads and what follows them
/// on the connection).
const MAX_HELD_RECORDS: usize = 64;
/// Plaintext bytes held in all at most.
const MAX_HELD_BYTES: usize = 4 << 20;
/// A receive whose reads did not end (`TLS_RECV_END`) this long after the
/// first is proven from the reads that came: an event loop reads a
/// receive's records at once, in microseconds.
pub const SHARED_WAIT_NS: u64 = 20_000_000;

/// Largest plaintext of one TLS record.
const MAX_RECORD: u32 = 16_384;

/// Counters of the plaintext streams.
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsCounters {
    /// TLS calls whose plaintext reached the parsers.
    pub calls: u64,
    /// Plaintext bytes those calls moved.
    pub bytes: u64,
    /// Plaintext bytes beyond the copied prefix (length known, content not).
    pub bytes_truncated: u64,
    /// Calls whose socket was not known (no socket call inside the call, and
    /// none remembered for its TLS object): dropped.
    pub calls_without_conn: u64,
    /// Calls served from the library's buffer, attributed to the socket
    /// their TLS object used last.
    pub calls_remembered: u64,
    /// Memory-BIO calls (Node) whose socket and sequence number came from
    /// the thread's receive before the read or send after the write.
    pub calls_linked_outside: u64,
    /// Reads that shared a receive (memory BIOs; reads served from the
    /// library's buffer) and were proven together: their sequence numbers
    /// follow from the receive's length.
    pub calls_proven_together: u64,
    /// Reads that shared a receive whose length their records did not add
    /// up to: no sequence number (and no socket, when their TLS object had
    /// none yet).
    pub calls_unproven: u64,
    /// Reads that shared a receive, not held for proof: the hold was full.
    pub shared_hold_full: u64,
    /// Records with a bad direction byte (dropped).
    pub bad_records: u64,
    /// Calls dropped because the plaintext table was full.
    pub table_full: u64,
    /// Plaintext connections ever opened.
    pub connections: u64,
    /// Reads whose plaintext went unseen, said by the same goroutine's next
    /// Read (Go Reads entered before the probes were attached): their
    /// connection's waiting requests end as lost.
    pub reads_lost: u64,
}

/// What the plaintext streams hand on.
pub enum Out<'a> {
    /// A call's plaintext, a chunk of its plaintext connection.
    Chunk(&'a ConnInfo, Dir, &'a Chunk<'a>),
    /// A read's plaintext dropped (its socket not known): it may have been
    /// a request that `pid` started reading at `start_ns`.
    LostRead { pid: u32, start_ns: u64 },
    /// Plaintext read on this connection before `at_ns` went unseen
    /// ([`TLS_READ_LOST`]): a response there may have been lost, or a
    /// request.
    ReadLost(&'a ConnInfo, u64),
}

struct Plain {
    info: ConnInfo,
    /// Per direction: stream offset of the next byte.
    offset: [u64; 2],
    /// Per direction: sequence number just past the last call's bytes.
    next_seq: [u32; 2],
}

/// A record held behind a shared receive.
struct Held {
    hdr: TlsData,
    data: Vec<u8>,
}

/// Whose reads share a receive.
#[derive(Clone, Copy)]
enum Sharing {
    /// Memory-BIO reads of thread `tid` that came after the receive
    /// ([`TLS_RECV_CANDIDATE`]).
    MemoryBio { tid: u32 },
    /// A read that made the receive itself (its sequence number known,
    /// `first` bytes of plaintext, handed on at once) and the reads the
    /// library then served from its buffer ([`TLS_CONN_REMEMBERED`]).
    Buffered { first: u32 },
}

/// The reads of one receive that held several records, and the records
/// of their connection that came after them.
struct Shared {
    sharing: Sharing,
    /// The receive: first sequence number, length.
    seq: u32,
    recv_len: u32,
    /// The TCP connection.
    tcp: ConnInfo,
    /// Kernel time the receive's first read returned.
    opened_ns: u64,
    held: Vec<Held>,
    bytes: usize,
}

impl Shared {
    /// A receive `hdr` read from (or made), holding nothing yet.
    fn new(sharing: Sharing, hdr: &TlsData, tcp: &ConnInfo) -> Shared {
        Shared {
            sharing,
            seq: hdr.seq,
            recv_len: hdr.recv_len,
            tcp: tcp.clone(),
            opened_ns: hdr.ts_ns,
            held: Vec::new(),
            bytes: 0,
        }
    }

    /// Holds `hdr` and its plaintext when there is room (counted in
    /// `held_bytes`, the hold's total); false when there is none.
    fn hold(&mut self, held_bytes: &mut usize, hdr: &TlsData, data: &[u8]) -> bool {
        if self.held.len() >= MAX_HELD_RECORDS || *held_bytes + data.len() > MAX_HELD_BYTES {
            return false;
        }
        self.bytes += data.len();
        *held_bytes += data.len();
        self.held.push(Held {
            hdr: *hdr,
            data: data.to_vec(),
        });
        true
    }

    /// Whether `hdr` is one of this receive's reads.
    fn takes(&self, hdr: &TlsData) -> bool {
        let candidate = hdr.flags & TLS_RECV_CANDIDATE != 0;
        match self.sharing {
            Sharing::MemoryBio { tid } => {
                candidate && (tid, self.seq, self.recv_len) == (hdr.tid, hdr.seq, hdr.recv_len)
            }
            Sharing::Buffered { .. } => {
                !candidate
                    && hdr.dir == Dir::Recv as u8
                    && hdr.flags & (TLS_CONN_REMEMBERED | TLS_SEQ_KNOWN) == TLS_CONN_REMEMBERED
            }
        }
    }

    /// When the oldest record held started (None: none held).
    fn since_ns(&self) -> Option<u64> {
        self.held.first().map(|h| h.hdr.start_ns)
    }
}

/// Smallest overhead of a record (TLS 1.2 ChaCha20-Poly1305).
const MIN_OVERHEAD: u32 = 21;

/// The ways a receive of several records is laid out: the end of a TLS 1.3
/// handshake in front (the client's Finished record, SHA-256 or SHA-384,
/// after a 6-byte ChangeCipherSpec or not; 58 is left out as in the
/// kernel's one-record proof) or nothing, then one record per read with
/// the cipher's overhead (TLS 1.2 ChaCha20-Poly1305 21, TLS 1.3 22, TLS 1.2
/// AES-GCM 29): `(prefix, overhead)`.
const LAYOUTS: [(u32, u32); 6] = [(0, 21), (0, 22), (0, 29), (64, 22), (74, 22), (80, 22)];

/// Where the first of the reads of `plain` bytes each started in a
/// receive of `recv_len` bytes, and each record's overhead, when exactly
/// one layout adds up to the receive; `after_handshake`: reads of the
/// connection came before, so no handshake can be in front.
pub fn prove(
    recv_len: u32,
    plain: impl Iterator<Item = u32>,
    after_handshake: bool,
) -> Option<(u32, u32)> {
    let (mut reads, mut total) = (0u64, 0u64);
    for p in plain {
        if p == 0 || p > MAX_RECORD {
            return None;
        }
        reads += 1;
        total += u64::from(p);
    }
    if reads == 0 {
        return None;
    }
    let mut found = None;
    for (prefix, overhead) in LAYOUTS {
        if prefix != 0 && after_handshake {
            continue;
        }
        if u64::from(prefix) + total + reads * u64::from(overhead) == u64::from(recv_len) {
            if found.is_some() {
                return None;
            }
            found = Some((prefix, overhead));
        }
    }
    found
}

/// The plaintext connections, by the cookie of their TCP socket.
#[derive(Default)]
pub struct TlsStreams {
    conns: HashMap<u64, Plain>,
    shared: HashMap<u64, Shared>,
    held_bytes: usize,
    counters: TlsCounters,
}

impl TlsStreams {
    /// No connection yet.
    pub fn new() -> TlsStreams {
        TlsStreams {
            conns: HashMap::new(),
            shared: HashMap::new(),
            held_bytes: 0,
            counters: TlsCounters::default(),
        }
    }

    /// One TLS call's plaintext on the connection `tcp` (the ciphertext's
    /// socket, `None` when not known): `out` gets the plaintext
    /// connection's chunks, now or when a shared receive is proven, and the
    /// reads dropped (counted).
    pub fn on_data(
        &mut self,
        hdr: &TlsData,
        data: &[u8],
        tcp: Option<&ConnInfo>,
        out: &mut impl FnMut(Out<'_>),
    ) {
        if hdr.flags & TLS_READ_LOST != 0 {
            self.read_lost(hdr, tcp, out);
            return;
        }
        let candidate = hdr.flags & TLS_RECV_CANDIDATE != 0;
        let end = hdr.flags & TLS_RECV_END != 0;
        if let Some(sh) = self.shared.get_mut(&hdr.cookie) {
            let read = sh.takes(hdr);
            let send = !candidate && hdr.dir == Dir::Send as u8;
            if send && sh.held.is_empty() {
                // Nothing held to keep it behind; a send ends no receive.
                self.deliver(hdr, data, tcp, out);
                return;
            }
            // A send waits behind held reads: the parsers see the
            // connection in the order it happened.
            if (read || send) && !end && sh.hold(&mut self.held_bytes, hdr, data) {
                return;
            }
            self.release(hdr.cookie, out);
            if read && !end {
                self.counters.shared_hold_full += 1;
            }
            if read && candidate {
                if !end {
                    self.unproven(hdr, data, tcp, out);
                }
                return;
            }
        }
        if !candidate {
            self.deliver(hdr, data, tcp, out);
            // A read whose receive holds more than its record: the next
            // reads may be served from the library's buffer.
            let buffered = hdr.dir == Dir::Recv as u8
                && hdr.flags & (TLS_SEQ_KNOWN | TLS_LINKED_OUTSIDE) == TLS_SEQ_KNOWN
                && u64::from(hdr.recv_len) > u64::from(hdr.len) + u64::from(2 * MIN_OVERHEAD);
            if let Some(tcp) = tcp.filter(|_| buffered && self.shared.len() < MAX_SHARED) {
                let sh = Shared::new(Sharing::Buffered { first: hdr.len }, hdr, tcp);
                self.shared.insert(hdr.cookie, sh);
            }
            return;
        }
        if end {
            // Its reads were released already.
            return;
        }
        let Some(conn) = tcp else {
            self.unproven(hdr, data, tcp, out);
            return;
        };
        let mut sh = Shared::new(Sharing::MemoryBio { tid: hdr.tid }, hdr, conn);
        if self.shared.len() < MAX_SHARED && sh.hold(&mut self.held_bytes, hdr, data) {
            self.shared.insert(hdr.cookie, sh);
        } else {
            self.counters.shared_hold_full += 1;
            self.unproven(hdr, data, tcp, out);
        }
    }

    /// The shared receive of connection `cookie` is used up (or will get
    /// no more reads): its reads are proven together or go unstamped, and
    /// everything held behind them follows in order.
    fn release(&mut self, cookie: u64, out: &mut impl FnMut(Out<'_>)) {
        let Some(mut sh) = self.shared.remove(&cookie) else {
            return;
        };
        self.held_bytes -= sh.bytes;
        let first = match sh.sharing {
            Sharing::Buffered { first } => Some(first),
            Sharing::MemoryBio { .. } => None,
        };
        let mut reads = sh
            .held
            .iter()
            .filter(|h| sh.takes(&h.hdr))
            .map(|h| h.hdr.len)
            .peekable();
        let proof = if reads.peek().is_some() {
            let after_handshake = first.is_some()
                || self
                    .conns
                    .get(&cookie)
                    .is_some_and(|p| p.offset[Dir::Recv as usize] > 0);
            prove(sh.recv_len, first.into_iter().chain(reads), after_handshake)
        } else {
            None
        };
        let mut at = match (proof, first) {
            (Some((prefix, overhead)), Some(first)) => prefix + first + overhead,
            (Some((prefix, _)), None) => prefix,
            (None, _) => 0,
        };
        for mut h in std::mem::take(&mut sh.held) {
            if !sh.takes(&h.hdr) {
                self.deliver(&h.hdr, &h.data, Some(&sh.tcp), out);
                continue;
            }
            match proof {
                Some((_, overhead)) => {
                    h.hdr.seq = sh.seq.wrapping_add(at);
                    h.hdr.flags = TLS_SEQ_KNOWN
                        | if first.is_none() {
                            TLS_LINKED_OUTSIDE
                        } else {
                            0
                        };
                    at = at.wrapping_add(h.hdr.len + overhead);
                    self.counters.calls_proven_together += 1;
                    self.deliver(&h.hdr, &h.data, Some(&sh.tcp), out);
                }
                None if first.is_some() => {
                    // As before: a continuation of the connection's reads.
                    self.counters.calls_unproven += 1;
                    self.deliver(&h.hdr, &h.data, Some(&sh.tcp), out);
                }
                None => self.unproven(&h.hdr, &h.data, Some(&sh.tcp), out),
            }
        }
    }

    /// A shared receive's read that could not be proven: on the socket its
    /// TLS object used before, without a sequence number, or dropped when
    /// it had none.
    fn unproven(
        &mut self,
        hdr: &TlsData,
        data: &[u8],
        tcp: Option<&ConnInfo>,
        out: &mut impl FnMut(Out<'_>),
    ) {
        self.counters.calls_unproven += 1;
        let hdr = TlsData {
            flags: hdr.flags & TLS_CONN_REMEMBERED,
            cookie: if hdr.flags & TLS_CONN_REMEMBERED != 0 {
                hdr.cookie
            } else {
                0
            },
            ..*hdr
        };
        self.deliver(&hdr, data, tcp, out);
    }

    /// Hands one call's plaintext on as a chunk of its plaintext
    /// connection (or counts it dropped).
    fn deliver(
        &mut self,
        hdr: &TlsData,
        data: &[u8],
        tcp: Option<&ConnInfo>,
        out: &mut impl FnMut(Out<'_>),
    ) {
        let Some(dir) = Dir::from_u8(hdr.dir) else {
            self.counters.bad_records += 1;
            return;
        };
        let lost = |out: &mut dyn FnMut(Out<'_>)| {
            if dir == Dir::Recv {
                out(Out::LostRead {
                    pid: hdr.pid,
                    start_ns: hdr.start_ns,
                });
            }
        };
        let Some(tcp) = tcp.filter(|_| hdr.cookie != 0) else {
            self.counters.calls_without_conn += 1;
            lost(out);
            return;
        };
        if !self.conns.contains_key(&hdr.cookie) && self.conns.len() >= MAX_CONNS {
            self.counters.table_full += 1;
            lost(out);
            return;
        }
        let counters = &mut self.counters;
        let plain = self.conns.entry(hdr.cookie).or_insert_with(|| {
            counters.connections += 1;
            let mut info = tcp.clone();
            info.cookie = tcp.cookie | TLS_CONN_BIT;
            info.tls = true;
            Plain {
                info,
                offset: [0; 2],
                next_seq: [0; 2],
            }
        });
        // Addresses and role may have been learned since.
        plain.info.local = tcp.local;
        plain.info.remote = tcp.remote;
        plain.info.role = tcp.role;
        plain.info.pid = hdr.pid;
        plain.info.comm = Comm::new(hdr.comm);
        let d = dir as usize;
        if hdr.flags & TLS_LINKED_OUTSIDE != 0 {
            counters.calls_linked_outside += 1;
        }
        let seq = if hdr.flags & TLS_SEQ_KNOWN != 0 {
            hdr.seq
        } else {
            counters.calls_remembered += 1;
            plain.next_seq[d]
        };
        let captured = data.len().min(hdr.len as usize);
        let data = &data[..captured];
        let rest = hdr.len - captured as u32;
        let pieces_buf;
        let pieces: &[Piece<'_>] = if rest > 0 {
            pieces_buf = [
                Piece::Data(data),
                Piece::Missing {
                    len: rest,
                    why: MissingKind::Truncated,
                },
            ];
            if data.is_empty() {
                &pieces_buf[1..]
            } else {
                &pieces_buf
            }
        } else {
            pieces_buf = [Piece::Data(data), Piece::Data(&[])];
            &pieces_buf[..1]
        };
        let chunk = Chunk {
            seq,
            offset: plain.offset[d],
            len: hdr.len,
            op: Some(OpMeta {
                pid: hdr.pid,
                tid: hdr.tid,
                ts_ns: hdr.ts_ns,
            }),
            // The call was entered before its first byte left: a request
            // written starts there.
            seg_ts_ns: Some(hdr.start_ns),
            pieces,
        };
        plain.offset[d] += u64::from(hdr.len);
        plain.next_seq[d] = seq.wrapping_add(hdr.len);
        counters.calls += 1;
        counters.bytes += u64::from(hdr.len);
        counters.bytes_truncated += u64::from(rest);
        out(Out::Chunk(&plain.info, dir, &chunk));
    }

    /// Plaintext read on `tcp` before `hdr`'s time went unseen
    /// ([`TLS_READ_LOST`]). Not a hole in the plaintext stream: the read
    /// that said so may come after another goroutine's read of the next
    /// message's first bytes (net/http's server reads a byte in the
    /// background while a handler runs), which a hole would cut. A
    /// connection with no plaintext yet has no request waiting; a read on
    /// it that was not a client's may have been a request.
    fn read_lost(&mut self, hdr: &TlsData, tcp: Option<&ConnInfo>, out: &mut impl FnMut(Out<'_>)) {
        let Some(tcp) = tcp.filter(|_| hdr.cookie != 0) else {
            self.counters.calls_without_conn += 1;
            return;
        };
        self.counters.reads_lost += 1;
        match self.conns.get(&hdr.cookie) {
            Some(plain) => out(Out::ReadLost(&plain.info, hdr.ts_ns)),
            None if tcp.role != Role::Client => out(Out::LostRead {
                pid: hdr.pid,
                start_ns: hdr.start_ns,
            }),
            None => {}
        }
    }

    /// The TCP connection `cookie` is gone: reads held for its shared
    /// receive are released, and its plaintext connection, if it had one,
    /// is closed too.
    pub fn closed(&mut self, cookie: u64, out: &mut impl FnMut(Out<'_>)) -> Option<ConnInfo> {
        self.release(cookie, out);
        self.conns.remove(&cookie).map(|p| p.info)
    }

    /// Shared receives held since `SHARED_WAIT_NS` before `now_ns` are
    /// proven from the reads that came.
    pub fn expire_shared(&mut self, now_ns: u64, out: &mut impl FnMut(Out<'_>)) {
        if self.shared.is_empty() {
            return;
        }
        let due: Vec<u64> = self
            .shared
            .iter()
            .filter(|(_, sh)| now_ns.saturating_sub(sh.opened_ns) >= SHARED_WAIT_NS)
            .map(|(&c, _)| c)
            .collect();
        for cookie in due {
            self.release(cookie, out);
        }
    }

    /// When the oldest read still held started: nothing of those
    /// connections after it is complete yet.
    pub fn held_since(&self) -> Option<u64> {
        self.shared.values().filter_map(Shared::since_ns).min()
    }

    /// Whether plaintext of TCP connection `cookie` was seen.
    pub fn has_plaintext(&self, cookie: u64) -> bool {
        self.conns.contains_key(&cookie)
    }

    /// Plaintext connections open now.
    pub fn live(&self) -> usize {
        self.conns.len()
    }

    /// The counters.
    pub fn counters(&self) -> &TlsCounters {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{Tag, TLS_CONN_REMEMBERED};

    fn tcp() -> ConnInfo {
        ConnInfo {
            cookie: 42,
            local: "127.0.0.1:50000".parse().ok(),
            remote: "127.0.0.1:443".parse().ok(),
            role: Role::Client,
            pid: 0,
            comm: Comm::default(),
            tls: false,
        }
    }

    fn hdr(dir: Dir, len: u32, captured: u32, seq: Option<u32>) -> TlsData {
        TlsData {
            tag: Tag::TlsData as u8,
            dir: dir as u8,
            flags: if seq.is_some() {
                TLS_SEQ_KNOWN
            } else {
                TLS_CONN_REMEMBERED
            },
            _pad: 0,
            len,
            ts_ns: 2_000,
            start_ns: 1_000,
            cookie: 42,
            pid: 7,
            tid: 8,
            seq: seq.unwrap_or(0),
            captured_len: captured,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            recv_len: 0,
            _pad2: 0,
        }
    }

    /// (conn cookie, tls, dir, seq, offset, len, captured, truncated, op ts, seg ts)
    type Seen = (
        u64,
        bool,
        Dir,
        u32,
        u64,
        u32,
        Vec<u8>,
        u64,
        u64,
        Option<u64>,
    );

    fn seen(c: &ConnInfo, d: Dir, ch: &Chunk<'_>) -> Seen {
        let captured: Vec<u8> = ch
            .pieces
            .iter()
            .flat_map(|p| match p {
                Piece::Data(b) => b.to_vec(),
                Piece::Missing { .. } => Vec::new(),
            })
            .collect();
        (
            c.cookie,
            c.tls,
            d,
            ch.seq,
            ch.offset,
            ch.len,
            captured,
            ch.missing(MissingKind::Truncated),
            ch.op.map(|o| o.ts_ns).unwrap_or(0),
            ch.seg_ts_ns,
        )
    }

    /// Chunks handed on, and reads lost as (pid, start).
    #[derive(Default)]
    struct Outs {
        chunks: Vec<Seen>,
        lost: Vec<(u32, u64)>,
        /// (plaintext connection, time) of reads that went unseen.
        read_lost: Vec<(u64, u64)>,
    }

    impl Outs {
        fn push(&mut self, o: Out<'_>) {
            match o {
                Out::Chunk(c, d, ch) => self.chunks.push(seen(c, d, ch)),
                Out::LostRead { pid, start_ns } => self.lost.push((pid, start_ns)),
                Out::ReadLost(c, at) => self.read_lost.push((c.cookie, at)),
            }
        }
    }

    fn feed_all(t: &mut TlsStreams, h: &TlsData, data: &[u8], tcp: Option<&ConnInfo>) -> Outs {
        let mut outs = Outs::default();
        t.on_data(h, data, tcp, &mut |o| outs.push(o));
        outs
    }

    fn feed(t: &mut TlsStreams, h: &TlsData, data: &[u8], tcp: Option<&ConnInfo>) -> Vec<Seen> {
        feed_all(t, h, data, tcp).chunks
    }

    #[test]
    fn calls_become_chunks_of_a_plaintext_connection() {
        let mut t = TlsStreams::new();
        let conn = tcp();
        let req = b"GET / HTTP/1.1\r\n\r\n";
        let seen = feed(&mut t, &hdr(Dir::Send, 18, 18, Some(100)), req, Some(&conn));
        assert_eq!(
            seen,
            vec![(
                42 | TLS_CONN_BIT,
                true,
                Dir::Send,
                100,
                0,
                18,
                req.to_vec(),
                0,
                2_000,
                Some(1_000)
            )]
        );
        // A cut copy: the rest is truncated, not lost; offsets go on.
        let seen = feed(
            &mut t,
            &hdr(Dir::Send, 10, 4, Some(500)),
            b"GET ",
            Some(&conn),
        );
        assert_eq!((seen[0].3, seen[0].4, seen[0].7), (500, 18, 6));
        // A read served from the library's buffer continues the sequence
        // after the previous read.
        feed(&mut t, &hdr(Dir::Recv, 30, 0, Some(900)), b"", Some(&conn));
        let seen = feed(&mut t, &hdr(Dir::Recv, 5, 5, None), b"HTTP/", Some(&conn));
        assert_eq!((seen[0].3, seen[0].4), (930, 30));
        assert_eq!(t.counters().calls_remembered, 1);
        assert_eq!(t.counters().calls, 4);
        assert!(t.has_plaintext(42));
        let closed = t.closed(42, &mut |_| {}).map(|c| c.cookie);
        assert_eq!(closed, Some(42 | TLS_CONN_BIT));
        assert_eq!(t.live(), 0);
    }

    #[test]
    fn memory_bio_calls_keep_the_neighbouring_calls_sequence_number() {
        let mut t = TlsStreams::new();
        let mut h = hdr(Dir::Recv, 18, 18, Some(7_000));
        h.flags |= TLS_LINKED_OUTSIDE;
        let seen = feed(&mut t, &h, b"GET / HTTP/1.1\r\n\r\n", Some(&tcp()));
        assert_eq!((seen[0].3, seen[0].4), (7_000, 0));
        assert_eq!(t.counters().calls_linked_outside, 1);
        assert_eq!(t.counters().calls_remembered, 0);
    }

    #[test]
    fn calls_without_a_socket_are_counted_not_parsed() {
        let mut t = TlsStreams::new();
        let mut h = hdr(Dir::Send, 4, 4, Some(1));
        assert!(feed(&mut t, &h, b"GET ", None).is_empty());
        h.cookie = 0;
        assert!(feed(&mut t, &h, b"GET ", Some(&tcp())).is_empty());
        h.dir = 9;
        let outs = feed_all(&mut t, &h, b"GET ", Some(&tcp()));
        assert!(outs.chunks.is_empty() && outs.lost.is_empty());
        h.dir = Dir::Recv as u8;
        let outs = feed_all(&mut t, &h, b"GET ", None);
        assert_eq!(
            outs.lost,
            vec![(7, 1_000)],
            "a read dropped may be a request"
        );
        assert_eq!(t.counters().calls_without_conn, 3);
        assert_eq!(t.counters().bad_records, 1);
    }

    /// A memory-BIO read that shared receive `seq`/`recv_len` of thread 8.
    fn candidate(len: u32, seq: u32, recv_len: u32, remembered: bool) -> TlsData {
        let mut h = hdr(Dir::Recv, len, len, Some(seq));
        h.flags = TLS_RECV_CANDIDATE | if remembered { TLS_CONN_REMEMBERED } else { 0 };
        h.recv_len = recv_len;
        h
    }

    fn end_of(h: &TlsData) -> TlsData {
        TlsData {
            flags: TLS_RECV_CANDIDATE | TLS_RECV_END,
            len: 0,
            captured_len: 0,
            ..*h
        }
    }

    #[test]
    fn layouts_prove_one_way_or_none() {
        // Two TLS 1.3 records (h2o reading curl's preface and HEADERS).
        assert_eq!(prove(152, [64, 44].into_iter(), false), Some((0, 22)));
        // The end of the handshake in front (ChangeCipherSpec + Finished).
        assert_eq!(prove(80 + 152, [64, 44].into_iter(), false), Some((80, 22)));
        // ... but not once the connection's reads have begun.
        assert_eq!(prove(80 + 152, [64, 44].into_iter(), true), None);
        // TLS 1.2 AES-GCM and ChaCha20-Poly1305.
        assert_eq!(
            prove(3 * 29 + 300, [100; 3].into_iter(), true),
            Some((0, 29))
        );
        assert_eq!(
            prove(2 * 21 + 200, [100; 2].into_iter(), true),
            Some((0, 21))
        );
        // A receive that ends inside a record, a read missing, an empty or
        // an oversized read, no read: nothing.
        assert_eq!(prove(152 + 30, [64, 44].into_iter(), true), None);
        assert_eq!(prove(152, [64].into_iter(), true), None);
        assert_eq!(prove(22, [0].into_iter(), true), None);
        assert_eq!(prove(16_385 + 22, [16_385].into_iter(), true), None);
        assert_eq!(prove(0, std::iter::empty(), true), None);
        // Each layout is found from its own receive, unless another adds
        // up to it too: then none is.
        for (prefix, overhead) in LAYOUTS {
            let recv = prefix + 3 * (50 + overhead);
            let other = LAYOUTS
                .iter()
                .filter(|(p, o)| p + 3 * (50 + o) == recv)
                .count();
            let want = (other == 1).then_some((prefix, overhead));
            assert_eq!(prove(recv, [50; 3].into_iter(), false), want);
        }
    }

    #[test]
    fn reads_sharing_a_receive_are_stamped_once_they_add_up_to_it() {
        let mut t = TlsStreams::new();
        let conn = tcp();
        // curl's preface (64 bytes of plaintext) and HEADERS (44) in one
        // receive of 152 bytes at sequence number 5,000; the server's
        // SETTINGS written between the two reads waits behind them.
        let first = candidate(64, 5_000, 152, false);
        assert!(feed(&mut t, &first, &[b'P'; 64], Some(&conn)).is_empty());
        assert_eq!(t.held_since(), Some(1_000));
        let mut settings = hdr(Dir::Send, 30, 30, Some(9_000));
        settings.ts_ns = 2_500;
        assert!(feed(&mut t, &settings, &[0; 30], Some(&conn)).is_empty());
        let second = candidate(44, 5_000, 152, false);
        assert!(feed(&mut t, &second, &[b'H'; 44], Some(&conn)).is_empty());
        let seen = feed(&mut t, &end_of(&second), b"", Some(&conn));
        let order: Vec<_> = seen.iter().map(|s| (s.2, s.3, s.4, s.5)).collect();
        assert_eq!(
            order,
            vec![
                (Dir::Recv, 5_000, 0, 64),
                (Dir::Send, 9_000, 0, 30),
                (Dir::Recv, 5_000 + 86, 64, 44),
            ]
        );
        assert_eq!(t.counters().calls_proven_together, 2);
        assert_eq!(t.counters().calls_linked_outside, 2);
        assert_eq!(t.held_since(), None);
        // The connection's reads have begun: a later shared receive is
        // never read as having the handshake's end in front.
        let third = candidate(10, 7_000, 80 + 2 * 32, false);
        feed(&mut t, &third, &[0; 10], Some(&conn));
        feed(
            &mut t,
            &candidate(10, 7_000, 80 + 2 * 32, false),
            &[0; 10],
            Some(&conn),
        );
        let outs = feed_all(&mut t, &end_of(&third), b"", Some(&conn));
        assert!(outs.chunks.is_empty());
        assert_eq!(outs.lost.len(), 2);
        assert_eq!(t.counters().calls_unproven, 2);
    }

    #[test]
    fn unproven_reads_keep_the_socket_only_when_their_tls_object_had_it() {
        let mut t = TlsStreams::new();
        let conn = tcp();
        // Known socket: the reads go on it without a sequence number when
        // another receive of the thread ends theirs.
        feed(
            &mut t,
            &candidate(64, 5_000, 200, true),
            &[0; 64],
            Some(&conn),
        );
        feed(
            &mut t,
            &candidate(44, 5_000, 200, true),
            &[0; 44],
            Some(&conn),
        );
        let next = hdr(Dir::Recv, 10, 10, Some(5_200));
        let seen = feed(&mut t, &next, &[0; 10], Some(&conn));
        let got: Vec<_> = seen.iter().map(|s| (s.3, s.4)).collect();
        // Unstamped reads continue after the last sequence number known
        // (none yet: 0), then the stamped one.
        assert_eq!(got, vec![(0, 0), (64, 64), (5_200, 108)]);
        assert_eq!(t.counters().calls_remembered, 2);
        assert_eq!(t.counters().calls_unproven, 2);
        // Unknown socket, and a close before the reads end: dropped,
        // counted, reported as reads that may have been requests.
        let mut other = candidate(50, 1, 150, false);
        other.cookie = 43;
        let mut c43 = tcp();
        c43.cookie = 43;
        feed(&mut t, &other, &[0; 50], Some(&c43));
        let mut outs = Outs::default();
        assert!(t.closed(43, &mut |o| outs.push(o)).is_none());
        assert!(outs.chunks.is_empty());
        assert_eq!(outs.lost, vec![(7, 1_000)]);
        assert_eq!(t.counters().calls_without_conn, 1);
    }

    #[test]
    fn held_reads_are_proven_after_the_wait_without_an_end() {
        let mut t = TlsStreams::new();
        let conn = tcp();
        let mut a = candidate(64, 5_000, 152, false);
        a.ts_ns = 10_000;
        let mut b = candidate(44, 5_000, 152, false);
        b.ts_ns = 11_000;
        feed(&mut t, &a, &[0; 64], Some(&conn));
        feed(&mut t, &b, &[0; 44], Some(&conn));
        let mut outs = Outs::default();
        t.expire_shared(10_000 + SHARED_WAIT_NS - 1, &mut |o| outs.push(o));
        assert!(outs.chunks.is_empty(), "not due yet");
        t.expire_shared(10_000 + SHARED_WAIT_NS, &mut |o| outs.push(o));
        let got: Vec<_> = outs.chunks.iter().map(|s| s.3).collect();
        assert_eq!(got, vec![5_000, 5_086]);
        // A lone end (its reads released already) hands nothing on.
        assert!(feed_all(&mut t, &end_of(&b), b"", Some(&conn))
            .chunks
            .is_empty());
    }

    #[test]
    fn a_full_hold_proves_nothing_and_loses_nothing_uncounted() {
        let mut t = TlsStreams::new();
        let conn = tcp();
        let mut delivered = 0;
        let mut lost = 0;
        let n = MAX_HELD_RECORDS + 3;
        for _ in 0..n {
            let outs = feed_all(
                &mut t,
                &candidate(100, 1, 1_000_000, true),
                &[0; 100],
                Some(&conn),
            );
            delivered += outs.chunks.len();
            lost += outs.lost.len();
        }
        let mut outs = Outs::default();
        t.closed(42, &mut |o| outs.push(o));
        delivered += outs.chunks.len();
        lost += outs.lost.len();
        assert_eq!((delivered, lost), (n, 0));
        assert_eq!(t.counters().shared_hold_full, 1);
        assert_eq!(t.counters().calls_unproven, n as u64);
    }

    #[test]
    fn reads_served_from_the_librarys_buffer_are_stamped_from_the_first_reads_receive() {
        let mut t = TlsStreams::new();
        let conn = tcp();
        // nginx (read-ahead) reads curl's preface record and its HEADERS
        // record with one receive of 152 bytes inside the first SSL_read;
        // the second read is served from OpenSSL's buffer.
        let mut first = hdr(Dir::Recv, 64, 64, Some(5_000));
        first.recv_len = 152;
        let seen = feed(&mut t, &first, &[b'P'; 64], Some(&conn));
        assert_eq!(seen.len(), 1, "the first read's number is known: at once");
        // A send with nothing held goes on at once.
        let settings = hdr(Dir::Send, 30, 30, Some(9_000));
        assert_eq!(feed(&mut t, &settings, &[0; 30], Some(&conn)).len(), 1);
        let buffered = hdr(Dir::Recv, 44, 44, None);
        assert!(feed(&mut t, &buffered, &[b'H'; 44], Some(&conn)).is_empty());
        assert_eq!(t.held_since(), Some(1_000));
        // The next read that makes a receive ends the first one.
        let next = hdr(Dir::Recv, 9, 9, Some(5_152));
        let seen = feed(&mut t, &next, &[0; 9], Some(&conn));
        let got: Vec<_> = seen.iter().map(|s| (s.3, s.5)).collect();
        assert_eq!(got, vec![(5_086, 44), (5_152, 9)]);
        assert_eq!(t.counters().calls_proven_together, 1);
        assert_eq!(t.counters().calls_linked_outside, 0);
        // A receive that ends inside a record proves nothing: the buffered
        // read goes on as a continuation, as before.
        let mut first = hdr(Dir::Recv, 100, 100, Some(6_000));
        first.recv_len = 100 + 22 + 50 + 22 + 10;
        feed(&mut t, &first, &[0; 100], Some(&conn));
        feed(&mut t, &hdr(Dir::Recv, 50, 50, None), &[0; 50], Some(&conn));
        let mut outs = Outs::default();
        t.expire_shared(2_000 + SHARED_WAIT_NS, &mut |o| outs.push(o));
        let got: Vec<_> = outs.chunks.iter().map(|s| s.3).collect();
        assert_eq!(got, vec![6_100]);
        assert_eq!(t.counters().calls_unproven, 1);
        assert_eq!(t.held_since(), None);
    }

    /// A Go Read after one whose plaintext went unseen says so on its
    /// connection: the plaintext connection is told (its waiting requests
    /// end), nothing is fed to its parsers, and it is counted. Before the
    /// connection had plaintext, a client's read is no request: nothing.
    #[test]
    fn a_read_lost_is_told_to_its_plaintext_connection() {
        let mut t = TlsStreams::new();
        let mut lost = hdr(Dir::Recv, 0, 0, None);
        lost.flags = TLS_READ_LOST;
        let before = feed_all(&mut t, &lost, &[], Some(&tcp()));
        assert!(before.chunks.is_empty() && before.lost.is_empty() && before.read_lost.is_empty());
        let req = b"GET / HTTP/1.1\r\n\r\n";
        let h = hdr(Dir::Send, req.len() as u32, req.len() as u32, Some(100));
        feed_all(&mut t, &h, req, Some(&tcp()));
        let after = feed_all(&mut t, &lost, &[], Some(&tcp()));
        assert!(after.chunks.is_empty(), "no hole in the plaintext");
        assert_eq!(after.read_lost, vec![(42 | TLS_CONN_BIT, 2_000)]);
        assert_eq!(t.counters().reads_lost, 2);
    }
}
