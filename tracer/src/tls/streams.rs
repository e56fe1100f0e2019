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
use foldhash::{HashMap, HashMapExt};
use protocols::stream::{Chunk, MissingKind, OpMeta, Piece};
use tracer_common::{Dir, TlsData, TLS_LINKED_OUTSIDE, TLS_SEQ_KNOWN};

use crate::conntrack::ConnInfo;

/// Set on the cookie of a plaintext connection (kernel cookies count up
/// from 1 and never reach it).
pub const TLS_CONN_BIT: u64 = 1 << 63;

/// Plaintext connections tracked at once.
const MAX_CONNS: usize = 65_536;

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
    /// Records with a bad direction byte (dropped).
    pub bad_records: u64,
    /// Calls dropped because the plaintext table was full.
    pub table_full: u64,
    /// Plaintext connections ever opened.
    pub connections: u64,
}

struct Plain {
    info: ConnInfo,
    /// Per direction: stream offset of the next byte.
    offset: [u64; 2],
    /// Per direction: sequence number just past the last call's bytes.
    next_seq: [u32; 2],
}

/// The plaintext connections, by the cookie of their TCP socket.
#[derive(Default)]
pub struct TlsStreams {
    conns: HashMap<u64, Plain>,
    counters: TlsCounters,
}

impl TlsStreams {
    /// No connection yet.
    pub fn new() -> TlsStreams {
        TlsStreams {
            conns: HashMap::new(),
            counters: TlsCounters::default(),
        }
    }

    /// One TLS call's plaintext on the connection `tcp` (the ciphertext's
    /// socket, `None` when not known): `deliver` gets the plaintext
    /// connection, the direction and the chunk. Returns false when the
    /// call's plaintext was dropped (counted).
    pub fn on_data(
        &mut self,
        hdr: &TlsData,
        data: &[u8],
        tcp: Option<&ConnInfo>,
        deliver: &mut impl FnMut(&ConnInfo, Dir, &Chunk<'_>),
    ) -> bool {
        let Some(dir) = Dir::from_u8(hdr.dir) else {
            self.counters.bad_records += 1;
            return false;
        };
        let Some(tcp) = tcp.filter(|_| hdr.cookie != 0) else {
            self.counters.calls_without_conn += 1;
            return false;
        };
        if !self.conns.contains_key(&hdr.cookie) && self.conns.len() >= MAX_CONNS {
            self.counters.table_full += 1;
            return false;
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
        plain.info.comm = hdr.comm;
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
        deliver(&plain.info, dir, &chunk);
        true
    }

    /// The TCP connection `cookie` is gone: its plaintext connection, if it
    /// had one, is closed too.
    pub fn closed(&mut self, cookie: u64) -> Option<ConnInfo> {
        self.conns.remove(&cookie).map(|p| p.info)
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
    use crate::conntrack::Role;
    use tracer_common::{Tag, TLS_CONN_REMEMBERED};

    fn tcp() -> ConnInfo {
        ConnInfo {
            cookie: 42,
            local: "127.0.0.1:50000".parse().ok(),
            remote: "127.0.0.1:443".parse().ok(),
            role: Role::Client,
            pid: 0,
            comm: [0; 16],
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

    fn feed(t: &mut TlsStreams, h: &TlsData, data: &[u8], tcp: Option<&ConnInfo>) -> Vec<Seen> {
        let mut seen = Vec::new();
        t.on_data(h, data, tcp, &mut |c, d, ch| {
            let captured: Vec<u8> = ch
                .pieces
                .iter()
                .flat_map(|p| match p {
                    Piece::Data(b) => b.to_vec(),
                    Piece::Missing { .. } => Vec::new(),
                })
                .collect();
            seen.push((
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
            ));
        });
        seen
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
        let closed = t.closed(42).map(|c| c.cookie);
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
        assert!(feed(&mut t, &h, b"GET ", Some(&tcp())).is_empty());
        assert_eq!(t.counters().calls_without_conn, 2);
        assert_eq!(t.counters().bad_records, 1);
    }
}
