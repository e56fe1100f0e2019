//! Property tests: the same messages whatever the split of a stream into
//! chunks and pieces; uncaptured body bytes change only the counts; and
//! arbitrary input never panics.

use std::path::Path;

use proptest::prelude::*;
use protocols::http1::{
    BodyFraming, Http1Config, Http1Connection, Http1Parser, Message, MessageRef, Role,
};
use protocols::stream::{Chunk, MissingKind, Piece};

/// Request and response streams: the golden corpus plus a few more.
fn streams() -> Vec<(Vec<u8>, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut v = Vec::new();
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    cases.sort();
    for c in cases {
        if let (Ok(a), Ok(b)) = (
            std::fs::read(c.join("requests.bin")),
            std::fs::read(c.join("responses.bin")),
        ) {
            v.push((a, b));
        }
    }
    v.push((
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10;ext=1\r\n0123456789abcdef\r\n0\r\nTrailer: t\r\n\r\nHEAD /c HTTP/1.0\r\n\r\n".to_vec(),
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbodyHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nHTTP/1.0 200 OK\r\nContent-Length: 99\r\n\r\n".to_vec(),
    ));
    v
}

#[derive(Debug, Clone, Copy)]
enum Dir {
    Rq,
    Rs,
}

/// Feeds the two streams cut into chunks at `chunk_cuts`, each chunk cut
/// into pieces at `piece_cuts`, with the byte ranges in `missing` replaced
/// by truncated pieces. Requests first, then responses.
fn parse(
    rq: &[u8],
    rs: &[u8],
    chunk_cuts: &[usize],
    piece_cuts: &[usize],
    missing: &[(Dir, usize, usize)],
) -> Vec<Message> {
    let mut conn = Http1Connection::new(Http1Config::default());
    let mut out = Vec::new();
    for (dir, data) in [(Dir::Rq, rq), (Dir::Rs, rs)] {
        let is_missing = |i: usize| {
            missing.iter().any(|(d, s, e)| {
                matches!((d, dir), (Dir::Rq, Dir::Rq) | (Dir::Rs, Dir::Rs)) && (*s..*e).contains(&i)
            })
        };
        let mut cuts: Vec<usize> = chunk_cuts.iter().map(|c| c % (data.len() + 1)).collect();
        cuts.push(0);
        cuts.push(data.len());
        cuts.sort_unstable();
        cuts.dedup();
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            // Piece boundaries: the given cuts, plus every change between
            // captured and missing.
            let mut pc: Vec<usize> = piece_cuts.iter().map(|c| a + c % (b - a + 1)).collect();
            pc.extend((a + 1..b).filter(|i| is_missing(*i) != is_missing(i - 1)));
            pc.push(a);
            pc.push(b);
            pc.sort_unstable();
            pc.dedup();
            let pieces: Vec<Piece<'_>> = pc
                .windows(2)
                .map(|p| {
                    if is_missing(p[0]) {
                        Piece::Missing {
                            len: (p[1] - p[0]) as u32,
                            why: MissingKind::Truncated,
                        }
                    } else {
                        Piece::Data(&data[p[0]..p[1]])
                    }
                })
                .collect();
            let chunk = Chunk {
                seq: 1000u32.wrapping_add(a as u32),
                offset: a as u64,
                len: (b - a) as u32,
                op: None,
                seg_ts_ns: None,
                pieces: &pieces,
            };
            match dir {
                Dir::Rq => conn.feed_requests(&chunk, &mut |m| out.push(m.to_owned())),
                Dir::Rs => conn.feed_responses(&chunk, &mut |m| out.push(m.to_owned())),
            }
        }
    }
    conn.flush(&mut |m| out.push(m.to_owned()));
    out
}

fn zero_missing(mut v: Vec<Message>) -> Vec<Message> {
    for m in &mut v {
        match m {
            Message::Request(r) => r.info.body_missing = 0,
            Message::Response(r) => r.info.body_missing = 0,
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn same_messages_whatever_the_split(
        which in any::<prop::sample::Index>(),
        chunk_cuts in prop::collection::vec(any::<usize>(), 0..30),
        piece_cuts in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let all = streams();
        let (rq, rs) = &all[which.index(all.len())];
        let whole = parse(rq, rs, &[], &[], &[]);
        prop_assert!(!whole.is_empty());
        let split = parse(rq, rs, &chunk_cuts, &piece_cuts, &[]);
        prop_assert_eq!(split, whole);
    }

    #[test]
    fn uncaptured_body_bytes_are_only_counted(
        which in any::<prop::sample::Index>(),
        picks in prop::collection::vec((any::<prop::sample::Index>(), any::<usize>(), any::<usize>()), 1..4),
        chunk_cuts in prop::collection::vec(any::<usize>(), 0..10),
    ) {
        let all = streams();
        let (rq, rs) = &all[which.index(all.len())];
        let whole = parse(rq, rs, &[], &[], &[]);
        // Content-Length bodies of the whole parse, by direction.
        let bodies: Vec<(Dir, usize, usize)> = whole
            .iter()
            .filter(|m| matches!(m.info().framing, BodyFraming::ContentLength(_)) && m.info().end_offset > m.info().offset + u64::from(m.info().head_len))
            .map(|m| {
                let i = m.info();
                let dir = if matches!(m, Message::Request(_)) { Dir::Rq } else { Dir::Rs };
                (dir, (i.offset + u64::from(i.head_len)) as usize, i.end_offset as usize)
            })
            .collect();
        prop_assume!(!bodies.is_empty());
        let missing: Vec<(Dir, usize, usize)> = picks
            .iter()
            .map(|(k, a, b)| {
                let (dir, s, e) = bodies[k.index(bodies.len())];
                let x = s + a % (e - s);
                let y = x + 1 + b % (e - x);
                (dir, x, y)
            })
            .collect();
        let got = parse(rq, rs, &chunk_cuts, &[], &missing);
        let total: u64 = got.iter().map(|m| m.info().body_missing).sum();
        prop_assert!(total > 0);
        prop_assert_eq!(zero_missing(got), zero_missing(whole));
    }
}

/// Tokens that make random input look like HTTP often enough to reach
/// deep states.
const TOKENS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\n",
    b"HEAD /x HTTP/1.0\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\n",
    b"HTTP/1.1 100 Continue\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: x\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: upgrade\r\nUpgrade: websocket\r\n",
    b"\r\n",
    b"\n",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffffff\r\n",
    b"abc",
    b"\x00\xff",
    b"CONNECT a:1 HTTP/1.1\r\n",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_input_never_panics(
        parts in prop::collection::vec((0usize..TOKENS.len() + 2, any::<u16>(), any::<bool>()), 0..60),
        response in any::<bool>(),
        max_head in 0usize..300,
    ) {
        let role = if response { Role::Response } else { Role::Request };
        let cfg = Http1Config { max_head_bytes: max_head, detect_budget: 200, ..Http1Config::default() };
        let mut p = Http1Parser::new(role, cfg);
        let mut last_offset = 0u64;
        let mut check = |m: MessageRef<'_>| {
            let i = m.info;
            assert!(i.end_offset >= i.offset);
            assert!(i.offset >= last_offset);
            last_offset = i.offset;
        };
        for (k, n, hole) in parts {
            if k < TOKENS.len() {
                p.feed_bytes(TOKENS[k], &mut check);
            } else if k == TOKENS.len() {
                let why = if hole { MissingKind::Hole } else { MissingKind::Truncated };
                p.feed_missing(u32::from(n % 3000), why, &mut check);
            } else {
                let junk: Vec<u8> = (0..n % 40).map(|i| (i ^ n) as u8).collect();
                p.feed_bytes(&junk, &mut check);
            }
        }
        p.flush(&mut check);
    }
}
