//! The HTTP/2 reader against generated connections: requests and responses
//! on interleaved streams, header blocks encoded by a real HPACK encoder
//! (httlib-hpack: indexed entries, Huffman, never-indexed literals) and
//! split over CONTINUATION frames, DATA, trailers; both directions cut into
//! random chunks and fed in a random order, as an agent's polls deliver
//! them.
//!
//! - Captured whole: every request and response is decoded, every field
//!   exactly.
//! - With random losses (holes, truncated packets, the kernel's copy of
//!   only the first bytes of DATA, a join mid-connection): whatever a
//!   message reports is what its stream sent, field by field; what was lost
//!   is reported unknown, never as another stream's value or another
//!   table entry. Every stream carries its own id in an indexed header, so
//!   a table that went out of line shows as another stream's id.
use httlib_hpack::Encoder;
use proptest::prelude::*;
use protocols::hpack::Unknown;
use protocols::http2::{Http2Config, Http2Connection, Http2Message, PREFACE};
use protocols::stream::{Chunk, MissingKind, OpMeta};

mod common;
use common::{frame_aware_pieces, pieces_between};

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// SplitMix64: the whole connection follows from one seed, which proptest
/// picks, shrinks and records.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

type Field = (Vec<u8>, Vec<u8>);
/// A field as decoded: name, value (each unknown or not), why unknown.
type Decoded = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Unknown>);

/// What one stream sent: request fields; response fields, trailers from
/// `trailers_from`.
struct Sent {
    request: Vec<Field>,
    response: Vec<Field>,
    trailers_from: usize,
}

/// A header block (encoded when its turn on the wire comes) or a DATA
/// frame.
enum Unit {
    Block {
        fields: Vec<(Field, u8)>,
        end_stream: bool,
    },
    Data {
        len: usize,
        end_stream: bool,
    },
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Huffman coding of name and value at random, and indexing as asked (or,
/// for some fields, at random).
fn flags(rng: &mut Rng, indexing: Option<u8>) -> u8 {
    let ix = indexing
        .unwrap_or_else(|| [Encoder::WITH_INDEXING, Encoder::NEVER_INDEXED, 0][rng.below(3)]);
    rng.below(4) as u8 | ix | Encoder::BEST_FORMAT
}

fn field(name: &str, value: impl Into<Vec<u8>>) -> Field {
    (name.as_bytes().to_vec(), value.into())
}

/// One direction on the wire: the units of each stream in order, streams
/// interleaved at random (a stream opens only after the ones below it),
/// header blocks encoded in wire order and split over CONTINUATION frames.
fn wire(rng: &mut Rng, streams: &[(u32, Vec<Unit>)], start: &[u8]) -> Vec<u8> {
    let mut out = start.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    frame(&mut out, SETTINGS, 1, 0, &[]);
    let mut enc = Encoder::default();
    let mut next = vec![0usize; streams.len()];
    let mut opened = 0;
    loop {
        let ready: Vec<usize> = (0..streams.len())
            .filter(|&i| next[i] < streams[i].1.len() && (next[i] > 0 || i == opened))
            .collect();
        if ready.is_empty() {
            break;
        }
        let i = ready[rng.below(ready.len())];
        if next[i] == 0 {
            opened += 1;
        }
        let id = streams[i].0;
        match &streams[i].1[next[i]] {
            Unit::Block { fields, end_stream } => {
                let mut block = Vec::new();
                for ((n, v), f) in fields {
                    enc.encode((n.clone(), v.clone(), *f), &mut block).unwrap();
                }
                // Up to two CONTINUATION frames at random cuts.
                let mut cuts = vec![0, block.len()];
                for _ in 0..rng.below(3) {
                    cuts.push(rng.below(block.len() + 1));
                }
                cuts.sort_unstable();
                let parts: Vec<&[u8]> = cuts.windows(2).map(|w| &block[w[0]..w[1]]).collect();
                let es = if *end_stream { END_STREAM } else { 0 };
                for (k, p) in parts.iter().enumerate() {
                    let eh = if k + 1 == parts.len() { END_HEADERS } else { 0 };
                    let (kind, fl) = if k == 0 {
                        (HEADERS, es | eh)
                    } else {
                        (CONTINUATION, eh)
                    };
                    frame(&mut out, kind, fl, id, p);
                }
            }
            Unit::Data { len, end_stream } => {
                let payload: Vec<u8> = (0..*len).map(|_| rng.next() as u8).collect();
                let es = if *end_stream { END_STREAM } else { 0 };
                frame(&mut out, DATA, es, id, &payload);
            }
        }
        next[i] += 1;
    }
    out
}

/// DATA frames of a message body, the last ending the stream when
/// `ends` (no trailers follow).
fn body(rng: &mut Rng, units: &mut Vec<Unit>, frames: usize, ends: bool) {
    for k in 0..frames {
        units.push(Unit::Data {
            len: rng.below(3000),
            end_stream: ends && k + 1 == frames,
        });
    }
}

/// A connection of `n` streams: both directions' bytes and what each
/// stream sent.
fn connection(rng: &mut Rng, n: usize) -> (Vec<u8>, Vec<u8>, Vec<(u32, Sent)>) {
    let mut requests = Vec::new();
    let mut responses = Vec::new();
    let mut sent = Vec::new();
    for s in 0..n {
        let id = 1 + 2 * s as u32;
        let post = rng.one_in(2);
        let mut req = vec![
            field(":method", if post { "POST" } else { "GET" }),
            field(":scheme", "http"),
            field(":path", format!("/svc/m{}?s={id}", rng.below(5))),
            field(":authority", format!("host{}", rng.below(3))),
            field("x-request-id", format!("id-{id}")),
            field("user-agent", "prop/1.0"),
        ];
        if rng.one_in(3) {
            let len = rng.below(200);
            let cookie: Vec<u8> = (0..len).map(|_| b'a' + rng.below(26) as u8).collect();
            req.push(field("cookie", cookie));
        }
        let req_flags: Vec<u8> = req
            .iter()
            .map(|(name, _)| {
                let indexing = match &name[..] {
                    b":path" | b"cookie" => None,
                    _ => Some(Encoder::WITH_INDEXING),
                };
                flags(rng, indexing)
            })
            .collect();
        let req_frames = if post { 1 + rng.below(3) } else { 0 };
        let mut units = vec![Unit::Block {
            fields: req.iter().cloned().zip(req_flags).collect(),
            end_stream: req_frames == 0,
        }];
        body(rng, &mut units, req_frames, true);
        requests.push((id, units));

        let status = ["200", "404", "503"][rng.below(3)];
        let mut resp = vec![
            field(":status", status),
            field(
                "content-type",
                ["text/plain", "application/grpc"][rng.below(2)],
            ),
            field("x-resp", format!("r-{id}")),
        ];
        let trailers = rng.one_in(2);
        let resp_frames = rng.below(3);
        let with_indexing = Some(Encoder::WITH_INDEXING);
        let mut units = vec![Unit::Block {
            fields: resp
                .iter()
                .map(|f| (f.clone(), flags(rng, with_indexing)))
                .collect(),
            end_stream: resp_frames == 0 && !trailers,
        }];
        body(rng, &mut units, resp_frames, !trailers);
        let trailers_from = resp.len();
        if trailers {
            let t = vec![
                field("grpc-status", ["0", "5"][rng.below(2)]),
                field("x-trailer", format!("t-{id}")),
            ];
            units.push(Unit::Block {
                fields: t
                    .iter()
                    .map(|f| (f.clone(), flags(rng, with_indexing)))
                    .collect(),
                end_stream: true,
            });
            resp.extend(t);
        }
        responses.push((id, units));
        sent.push((
            id,
            Sent {
                request: req,
                response: resp,
                trailers_from,
            },
        ));
    }
    let c2s = wire(rng, &requests, PREFACE);
    let s2c = wire(rng, &responses, &[]);
    (c2s, s2c, sent)
}

/// How the capture treats one direction.
#[derive(Debug, Clone, Copy)]
struct Capture {
    /// The kernel's frame walk: DATA past its first 16 bytes not copied.
    frame_walk: bool,
    /// Random ranges lost.
    losses: usize,
    /// Joined mid-connection: the first bytes never seen.
    attach: bool,
}

/// Captured (`true`) and missing ranges of one direction's `data`.
fn pieces(rng: &mut Rng, data: &[u8], c: Capture, client: bool) -> Vec<(usize, usize, bool)> {
    let mut captured = vec![true; data.len()];
    if c.frame_walk {
        for (s, e, cap) in frame_aware_pieces(data, client) {
            captured[s..e].iter_mut().for_each(|b| *b = cap);
        }
    }
    for _ in 0..c.losses {
        let s = rng.below(data.len());
        let e = (s + 1 + rng.below(600)).min(data.len());
        captured[s..e].iter_mut().for_each(|b| *b = false);
    }
    let mut v: Vec<(usize, usize, bool)> = Vec::new();
    for (i, &cap) in captured.iter().enumerate() {
        match v.last_mut() {
            Some((_, e, c)) if *c == cap => *e = i + 1,
            _ => v.push((i, i + 1, cap)),
        }
    }
    v
}

/// One direction being fed.
struct Feed<'a> {
    data: &'a [u8],
    ranges: Vec<(usize, usize, bool)>,
    from: usize,
    at: usize,
    requests: bool,
    why: MissingKind,
}

impl Feed<'_> {
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }

    /// The next chunk of up to `step` bytes.
    fn feed(&mut self, conn: &mut Http2Connection, step: usize, out: &mut Vec<Http2Message>) {
        let end = (self.at + step).min(self.data.len());
        let (at, data) = (self.at, self.data);
        let ps = pieces_between(&self.ranges, data, at, end, self.why);
        let chunk = Chunk {
            seq: 1000u32.wrapping_add(at as u32),
            offset: (at - self.from) as u64,
            len: (end - at) as u32,
            op: Some(OpMeta {
                pid: 7,
                tid: if self.requests { 1 } else { 2 },
                ts_ns: at as u64,
            }),
            seg_ts_ns: None,
            pieces: &ps,
        };
        if self.requests {
            conn.feed_requests(&chunk, &mut |m| out.push(m.to_owned()));
        } else {
            conn.feed_responses(&chunk, &mut |m| out.push(m.to_owned()));
        }
        self.at = end;
    }
}

/// Decodes the connection captured as `c` (each direction), fed in random
/// chunks in a random order.
fn decode(rng: &mut Rng, c2s: &[u8], s2c: &[u8], c: Capture) -> Vec<Http2Message> {
    let mut conn = if c.attach {
        Http2Connection::mid_stream(Http2Config::default())
    } else {
        Http2Connection::new(Http2Config::default())
    };
    let why = [MissingKind::Hole, MissingKind::Truncated][rng.below(2)];
    let mut feeds: Vec<Feed<'_>> = [(c2s, true), (s2c, false)]
        .into_iter()
        .map(|(data, requests)| {
            let from = if c.attach {
                rng.below(data.len() / 2)
            } else {
                0
            };
            Feed {
                data,
                ranges: pieces(rng, data, c, requests),
                from,
                at: from,
                requests,
                why,
            }
        })
        .collect();
    let mut out = Vec::new();
    while !(feeds[0].done() && feeds[1].done()) {
        // Requests ahead of responses more often than not, as on the wire.
        let pick = if feeds[0].done() {
            1
        } else if feeds[1].done() || rng.below(3) > 0 {
            0
        } else {
            1
        };
        let step = 1 + rng.below(3000);
        feeds[pick].feed(&mut conn, step, &mut out);
    }
    conn.flush(&mut |m| out.push(m.to_owned()));
    out
}

/// Whether every field of `got` that is known is the field of `want` at
/// its place.
fn agrees(got: &[Decoded], want: &[Field]) -> bool {
    got.len() <= want.len()
        && got.iter().zip(want).all(|((n, v, _), (wn, wv))| {
            n.as_ref().is_none_or(|n| n == wn) && v.as_ref().is_none_or(|v| v == wv)
        })
}

/// Every field `m` reports is the one its stream sent at that place, in
/// its header fields or its trailers. A block seen without the one before
/// it on its stream (lost, or before the join) may be either: the trailers
/// of a response whose header block was never seen look like a header
/// block without `:status`.
fn check_fields(m: &Http2Message, sent: &[(u32, Sent)]) -> Result<(), TestCaseError> {
    let id = m.info.stream_id;
    let Some((_, s)) = sent.iter().find(|(sid, _)| *sid == id) else {
        return Err(TestCaseError::fail(format!("stream {id} was never opened")));
    };
    let (want, want_from) = if m.request {
        (&s.request, s.request.len())
    } else {
        (&s.response, s.trailers_from)
    };
    let (fields, trailers) = m.fields.split_at(m.trailers_from.min(m.fields.len()));
    let (headers_sent, trailers_sent) = want.split_at(want_from);
    let side = if m.request { "request" } else { "response" };
    prop_assert!(
        agrees(fields, headers_sent) || (trailers.is_empty() && agrees(fields, trailers_sent)),
        "stream {} {} fields {:?}, sent {:?}",
        id,
        side,
        fields,
        want
    );
    prop_assert!(
        agrees(trailers, trailers_sent),
        "stream {} {} trailers {:?}, sent {:?}",
        id,
        side,
        trailers,
        want
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn whole_connections_decode_exactly(seed in any::<u64>(), n in 1usize..24) {
        let mut rng = Rng(seed);
        let (c2s, s2c, sent) = connection(&mut rng, n);
        let whole = Capture { frame_walk: false, losses: 0, attach: false };
        let walk = Capture { frame_walk: true, ..whole };
        for c in [whole, walk] {
            let msgs = decode(&mut rng, &c2s, &s2c, c);
            for (id, s) in &sent {
                for request in [true, false] {
                    let got: Vec<&Http2Message> = msgs
                        .iter()
                        .filter(|m| m.info.stream_id == *id && m.request == request)
                        .collect();
                    prop_assert_eq!(got.len(), 1, "stream {} request={} ({:?})", id, request, c);
                    let want = if request { &s.request } else { &s.response };
                    let fields: Vec<Field> = got[0]
                        .fields
                        .iter()
                        .map(|(n, v, why)| {
                            assert!(why.is_none(), "stream {id}: unknown field {why:?}");
                            (n.clone().unwrap(), v.clone().unwrap())
                        })
                        .collect();
                    prop_assert_eq!(&fields, want, "stream {} ({:?})", id, c);
                    if !request {
                        prop_assert_eq!(got[0].trailers_from, s.trailers_from);
                    }
                }
            }
        }
    }

    #[test]
    fn losses_make_fields_unknown_never_wrong(
        seed in any::<u64>(),
        n in 1usize..24,
        frame_walk in any::<bool>(),
        losses in 0usize..5,
        attach in any::<bool>(),
    ) {
        let mut rng = Rng(seed);
        let (c2s, s2c, sent) = connection(&mut rng, n);
        let c = Capture { frame_walk, losses, attach };
        for m in decode(&mut rng, &c2s, &s2c, c) {
            check_fields(&m, &sent)?;
        }
    }
}

/// The losses above are real ones: over fixed seeds they leave fields
/// unknown, and the table heals (most fields after them are known again).
#[test]
fn losses_are_felt_and_healed() {
    let (mut known, mut unknown, mut messages, mut sent_messages) = (0, 0, 0, 0);
    for seed in 0..200 {
        let mut rng = Rng(seed);
        let (c2s, s2c, sent) = connection(&mut rng, 16);
        let c = Capture {
            frame_walk: true,
            losses: 2,
            attach: false,
        };
        let msgs = decode(&mut rng, &c2s, &s2c, c);
        for m in &msgs {
            check_fields(m, &sent).unwrap();
            for (n, v, _) in &m.fields {
                if n.is_some() && v.is_some() {
                    known += 1;
                } else {
                    unknown += 1;
                }
            }
        }
        messages += msgs.len();
        sent_messages += 2 * sent.len();
    }
    eprintln!("{messages} of {sent_messages} messages; fields: {known} known, {unknown} unknown");
    assert!(unknown > 0);
    assert!(known > 4 * unknown);
    assert!(messages * 10 > sent_messages * 8);
}
