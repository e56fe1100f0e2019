//! Resync within one chunk: whether a header block is tentative is the
//! reader's state when the block ends, not when its chunk began.

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
    Chunk {
        seq: offset as u32,
        offset,
        len: pieces.iter().map(Piece::len).sum(),
        op: None,
        seg_ts_ns: None,
        pieces,
    }
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
