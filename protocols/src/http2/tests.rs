//! Cases the recorded corpus (tests/http2_golden.rs) does not hold: a
//! resync inside one chunk (whether a header block is tentative is the
//! reader's state when the block ends, not when its chunk began), stream
//! eviction, a request fed after its response.

use super::*;
use crate::stream::{MissingKind, Piece};

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HEADERS with END_STREAM and END_HEADERS.
fn headers(stream: u32, block: &[u8]) -> Vec<u8> {
    frame(frames::HEADERS, 0x5, stream, block)
}

/// Enough chained PINGs for a resync, then `rest`.
fn resync_then(rest: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for _ in 0..Http2Config::default().resync_frames {
        b.extend(frame(frames::PING, 0, 0, &[7; 8]));
    }
    b.extend_from_slice(rest);
    b
}

/// GET http://a/ (static entries and a literal: decodes without a table).
const GET: &[u8] = &[0x82, 0x86, 0x84, 0x01, 0x01, b'a'];
/// An index of 0: never valid.
const CORRUPT: &[u8] = &[0x80];

fn chunk<'a>(offset: u64, pieces: &'a [Piece<'a>]) -> Chunk<'a> {
    Chunk::untimed(offset as u32, offset, pieces)
}

fn requests(c: &mut Http2Connection, chunks: &[Chunk<'_>]) -> Vec<Http2Message> {
    let mut got = Vec::new();
    for ch in chunks {
        c.feed_requests(ch, &mut |m| got.push(m.to_owned()));
    }
    got
}

#[test]
fn hole_then_false_resync_in_one_chunk_is_undone() {
    let mut c = Http2Connection::new(Http2Config::default());
    let mut first = PREFACE.to_vec();
    first.extend(frame(frames::SETTINGS, 0, 0, &[]));
    first.extend(headers(1, GET));
    let first_pieces = [Piece::Data(&first)];
    // In sync when the chunk starts; the hole covers a frame head.
    let rest = resync_then(&headers(3, CORRUPT));
    let second_pieces = [
        Piece::Missing {
            len: 20,
            why: MissingKind::Hole,
        },
        Piece::Data(&rest),
    ];
    let got = requests(
        &mut c,
        &[
            chunk(0, &first_pieces),
            chunk(first.len() as u64, &second_pieces),
        ],
    );
    let ids: Vec<u32> = got.iter().map(|m| m.info.stream_id).collect();
    assert_eq!(ids, [1]);
    assert_eq!(c.counters().blocks_discarded, 1);
    let f = c.frame_counters(false);
    assert_eq!((f.sync_lost, f.resyncs, f.resyncs_failed), (2, 1, 1));
}

#[test]
fn block_after_a_clean_one_in_the_resync_chunk_is_kept() {
    let mut c = Http2Connection::mid_stream(Http2Config::default());
    // Out of sync when the chunk starts; the first block decodes, so the
    // resync is no longer tentative when the second (corrupt) one ends.
    let mut blocks = headers(1, GET);
    blocks.extend(headers(3, CORRUPT));
    let data = resync_then(&blocks);
    let pieces = [Piece::Data(&data)];
    let got = requests(&mut c, &[chunk(0, &pieces)]);
    let ids: Vec<u32> = got.iter().map(|m| m.info.stream_id).collect();
    assert_eq!(ids, [1, 3]);
    assert_eq!(got[0].info.headers_cut, None);
    assert_eq!(got[1].info.headers_cut, Some(Unknown::Corrupt));
    assert_eq!(c.counters().blocks_discarded, 0);
    assert_eq!(c.frame_counters(false).resyncs_failed, 0);
}

/// HEADERS with END_HEADERS only: the stream stays open.
fn open_headers(stream: u32, block: &[u8]) -> Vec<u8> {
    frame(frames::HEADERS, 0x4, stream, block)
}

/// `:status: 200`.
const OK: &[u8] = &[0x88];

#[test]
fn oldest_stream_evicted_past_the_bound_then_its_frames_are_unknown() {
    let mut c = Http2Connection::new(Http2Config {
        max_streams: 2,
        ..Http2Config::default()
    });
    let mut req = PREFACE.to_vec();
    for id in [1, 3, 5] {
        req.extend(open_headers(id, GET));
    }
    let pieces = [Piece::Data(&req)];
    let got = requests(&mut c, &[chunk(0, &pieces)]);
    let seen: Vec<(bool, u32, StreamEnd)> = got
        .iter()
        .map(|m| (m.request, m.info.stream_id, m.info.end))
        .collect();
    assert_eq!(
        seen,
        [
            (true, 1, StreamEnd::Open),
            (true, 3, StreamEnd::Open),
            (false, 1, StreamEnd::Evicted),
            (true, 5, StreamEnd::Open),
        ]
    );
    assert_eq!(c.counters().streams_evicted, 1);
    assert_eq!(c.open_streams(), 2);
    let resp = headers(1, OK);
    let pieces = [Piece::Data(&resp)];
    c.feed_responses(&chunk(0, &pieces), &mut |_| panic!("nothing to emit"));
    assert_eq!(c.counters().frames_unknown_stream, 1);
}

#[test]
fn request_fed_after_its_answered_response_is_still_reported() {
    let mut c = Http2Connection::new(Http2Config::default());
    let resp = headers(1, OK);
    let pieces = [Piece::Data(&resp)];
    let mut got = Vec::new();
    c.feed_responses(&chunk(0, &pieces), &mut |m| got.push(m.to_owned()));
    let mut req = PREFACE.to_vec();
    req.extend(headers(1, GET));
    let pieces = [Piece::Data(&req)];
    got.extend(requests(&mut c, &[chunk(0, &pieces)]));
    assert_eq!(got.len(), 2);
    assert!(!got[0].request);
    let r = &got[1];
    assert!(r.request);
    let at = PREFACE.len() as u64;
    assert_eq!(
        (
            r.info.stream_id,
            r.info.offset,
            r.info.end_offset,
            r.info.end
        ),
        (1, at, at + 9 + GET.len() as u64, StreamEnd::EndStream)
    );
    assert_eq!(r.fields[0].1.as_deref(), Some(&b"GET"[..]));
    let n = c.counters();
    assert_eq!((n.requests, n.late_requests, n.responses), (1, 1, 1));
    assert_eq!(n.responses_without_request, 1);
}

/// A grpc-go request on a channel opened before the agent: `:path` a
/// literal indexed on its first use, `content-type` an index into the table
/// built before the attach. Then the same call again, `:path` by index.
#[test]
fn grpc_go_request_after_attach_has_its_path_and_an_unknown_content_type() {
    let mut c = Http2Connection::mid_stream(Http2Config::default());
    let path = b"/calls.Calls/Late0";
    // :method POST, :scheme http, :path literal with incremental indexing
    // (name: static 4), which makes it entry 62, then content-type by index
    // 63 (the newest entry from before the attach).
    let mut first = vec![0x83, 0x86, 0x44, path.len() as u8];
    first.extend_from_slice(path);
    first.push(0x80 | 63);
    // The same call, :path by index.
    let second = [0x83, 0x86, 0x80 | 62, 0x80 | 63];
    let mut blocks = headers(1, &first);
    blocks.extend(headers(3, &second));
    let data = resync_then(&blocks);
    let pieces = [Piece::Data(&data)];
    let got = requests(&mut c, &[chunk(0, &pieces)]);
    assert_eq!(got.len(), 2);
    for m in &got {
        let known: Vec<(&[u8], &[u8])> = m
            .fields
            .iter()
            .filter_map(|(n, v, _)| Some((n.as_deref()?, v.as_deref()?)))
            .collect();
        assert_eq!(
            known,
            [
                (&b":method"[..], &b"POST"[..]),
                (b":scheme", b"http"),
                (b":path", path)
            ]
        );
        // The lost entry is a field left unknown, with why: never another
        // entry's value.
        let unknown: Vec<_> = m.fields.iter().filter_map(|f| f.2).collect();
        assert_eq!(unknown, [Unknown::Attach], "{m:?}");
    }
}
