//! Table tests for the reassembler.

use super::*;

const MS: u64 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum P {
    D(Vec<u8>),
    T(u32),
    H(u32),
    S(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct C {
    seq: u32,
    offset: u64,
    len: u32,
    tid: Option<u32>,
    pieces: Vec<P>,
}

fn own(c: &Chunk<'_>) -> C {
    let pieces: Vec<P> = c
        .pieces
        .iter()
        .map(|p| match p {
            Piece::Data(d) => P::D(d.to_vec()),
            Piece::Missing {
                len,
                why: MissingKind::Truncated,
            } => P::T(*len),
            Piece::Missing {
                len,
                why: MissingKind::Hole,
            } => P::H(*len),
            Piece::Missing {
                len,
                why: MissingKind::Skipped,
            } => P::S(*len),
        })
        .collect();
    assert_eq!(
        pieces
            .iter()
            .map(|p| match p {
                P::D(d) => d.len() as u32,
                P::T(l) | P::H(l) | P::S(l) => *l,
            })
            .sum::<u32>(),
        c.len,
        "pieces add up to len"
    );
    C {
        seq: c.seq,
        offset: c.offset,
        len: c.len,
        tid: c.op.map(|o| o.tid),
        pieces,
    }
}

fn meta(tid: u32, ts: u64) -> OpMeta {
    OpMeta {
        pid: 1,
        tid,
        ts_ns: ts,
    }
}

fn poll(r: &mut StreamReassembler, now: u64) -> Vec<C> {
    let mut v = Vec::new();
    r.poll(now, &mut |c| v.push(own(&c)));
    v
}

fn flush(r: &mut StreamReassembler) -> Vec<C> {
    let mut v = Vec::new();
    r.flush(&mut |c| v.push(own(&c)));
    v
}

fn d(s: &[u8]) -> P {
    P::D(s.to_vec())
}

fn c(seq: u32, offset: u64, tid: Option<u32>, pieces: Vec<P>) -> C {
    let len = pieces
        .iter()
        .map(|p| match p {
            P::D(d) => d.len() as u32,
            P::T(l) | P::H(l) | P::S(l) => *l,
        })
        .sum();
    C {
        seq,
        offset,
        len,
        tid,
        pieces,
    }
}

fn new() -> StreamReassembler {
    StreamReassembler::new(StreamLimits::default())
}

#[test]
fn in_order_segment_then_op() {
    let mut r = new();
    r.push_segment(1000, 5, b"hello", MS);
    assert!(poll(&mut r, MS).is_empty(), "waits for the op");
    r.push_op(1005, 5, meta(7, MS));
    r.push_segment(1005, 6, b" world", 2 * MS);
    r.push_op(1011, 6, meta(8, 2 * MS));
    assert_eq!(
        poll(&mut r, 2 * MS),
        vec![
            c(1000, 0, Some(7), vec![d(b"hello")]),
            c(1005, 5, Some(8), vec![d(b" world")])
        ]
    );
    assert_eq!(r.counters().bytes_captured, 11);
    assert_eq!(r.counters().chunks, 2);
    assert_eq!(r.next_seq(), Some(1011));
}

/// Heap bytes a trimmed, idle reassembler keeps at most: a few spare
/// buffers, room for a few operations, spans and pieces.
fn trim_keeps_at_most() -> usize {
    spans::KEEP_BUFS * spans::KEEP_BUF_BYTES
        + crate::TRIM_KEEP_ENTRIES
            * (std::mem::size_of::<PendingOp>()
                + std::mem::size_of::<spans::Span>()
                + std::mem::size_of::<Piece<'_>>())
}

#[test]
fn trim_frees_what_a_small_connection_does_not_use() {
    let mut r = new();
    for i in 0..8u32 {
        let at = 1000 + 3000 * i;
        r.push_segment(at, 3000, &[b'x'; 3000], MS);
        r.push_op(at + 3000, 3000, meta(7, MS));
    }
    assert_eq!(poll(&mut r, MS).len(), 8);
    assert!(r.heap_bytes() > 4 * 3000, "{}", r.heap_bytes());
    r.trim();
    assert!(r.heap_bytes() <= trim_keeps_at_most(), "{}", r.heap_bytes());
}

#[test]
fn trim_frees_spare_buffers_and_keeps_what_is_buffered() {
    let mut r = new();
    r.push_segment(1000, 5, b"hello", MS);
    r.push_op(1005, 5, meta(7, MS));
    assert_eq!(poll(&mut r, MS).len(), 1);
    assert!(
        r.heap_bytes() > 0,
        "the delivered segment's buffer is kept for reuse"
    );
    r.trim();
    // What one small connection used stays for the next (pooled) one.
    let small = r.heap_bytes();
    assert!(small > 0 && small <= trim_keeps_at_most(), "{small}");
    // Bytes still waiting for their call stay through a trim.
    r.push_segment(1005, 6, b" world", 2 * MS);
    r.trim();
    assert_eq!(r.buffered(), (1, 6, 0));
    r.push_op(1011, 6, meta(8, 2 * MS));
    assert_eq!(
        poll(&mut r, 2 * MS),
        vec![c(1005, 5, Some(8), vec![d(b" world")])]
    );
}

#[test]
fn op_before_segment() {
    let mut r = new();
    r.push_op(110, 10, meta(1, MS));
    assert!(poll(&mut r, MS).is_empty());
    r.push_segment(100, 4, b"abcd", MS);
    assert!(poll(&mut r, MS).is_empty(), "incomplete");
    r.push_segment(104, 6, b"efghij", MS);
    assert_eq!(
        poll(&mut r, MS),
        vec![c(100, 0, Some(1), vec![d(b"abcd"), d(b"efghij")])]
    );
}

#[test]
fn one_segment_many_ops() {
    let mut r = new();
    r.push_segment(0, 10, b"0123456789", MS);
    r.push_op(3, 3, meta(1, MS));
    r.push_op(10, 7, meta(2, MS));
    assert_eq!(
        poll(&mut r, MS),
        vec![
            c(0, 0, Some(1), vec![d(b"012")]),
            c(3, 3, Some(2), vec![d(b"3456789")])
        ]
    );
}

#[test]
fn out_of_order_segments() {
    let mut r = new();
    r.push_segment(105, 5, b"fghij", MS);
    r.push_segment(100, 5, b"abcde", MS);
    r.push_op(110, 10, meta(1, MS));
    assert_eq!(
        poll(&mut r, MS),
        vec![c(100, 0, Some(1), vec![d(b"abcde"), d(b"fghij")])]
    );
}

#[test]
fn out_of_order_ops() {
    let mut r = new();
    r.push_segment(0, 6, b"abcdef", MS);
    r.push_op(6, 3, meta(2, MS));
    r.push_op(3, 3, meta(1, MS));
    assert_eq!(
        poll(&mut r, MS),
        vec![
            c(0, 0, Some(1), vec![d(b"abc")]),
            c(3, 3, Some(2), vec![d(b"def")])
        ]
    );
}

#[test]
fn duplicated_segments() {
    let mut r = new();
    r.push_segment(0, 4, b"abcd", MS);
    r.push_segment(0, 4, b"XXXX", MS);
    r.push_op(4, 4, meta(1, MS));
    assert_eq!(poll(&mut r, MS), vec![c(0, 0, Some(1), vec![d(b"abcd")])]);
    r.push_segment(0, 4, b"abcd", 2 * MS); // retransmit after delivery
    assert!(poll(&mut r, 2 * MS).is_empty());
    assert_eq!(r.counters().bytes_duplicate, 8);
}

#[test]
fn overlapping_segments_keep_first_copy() {
    let mut r = new();
    r.push_segment(0, 6, b"abcdef", MS);
    r.push_segment(4, 6, b"XXghij", MS);
    r.push_op(10, 10, meta(1, MS));
    assert_eq!(
        poll(&mut r, MS),
        vec![c(0, 0, Some(1), vec![d(b"abcdef"), d(b"ghij")])]
    );
    assert_eq!(r.counters().bytes_duplicate, 2);
    // A retransmit straddling the delivered position only adds its new part.
    r.push_segment(8, 4, b"ijkl", MS);
    r.push_op(12, 2, meta(2, MS));
    assert_eq!(poll(&mut r, MS), vec![c(10, 10, Some(2), vec![d(b"kl")])]);
    assert_eq!(r.counters().bytes_duplicate, 4);
}

#[test]
fn truncated_payload() {
    let mut r = new();
    r.push_segment(0, 100, b"GET / HTTP/1.1", MS);
    r.push_op(100, 100, meta(1, MS));
    assert_eq!(
        poll(&mut r, MS),
        vec![c(0, 0, Some(1), vec![d(b"GET / HTTP/1.1"), P::T(86)])]
    );
    assert_eq!(r.counters().bytes_truncated, 86);
}

#[test]
fn later_segment_fills_truncated_range() {
    let mut r = new();
    r.push_segment(0, 10, b"ab", MS); // big packet, 2 bytes captured
    r.push_segment(4, 3, b"efg", MS); // retransmit of a part, captured
    r.push_segment(0, 10, b"abcdefghij", MS); // full copy fills the rest
    r.push_op(10, 10, meta(1, MS));
    assert_eq!(
        poll(&mut r, MS),
        vec![c(
            0,
            0,
            Some(1),
            vec![d(b"ab"), d(b"cd"), d(b"efg"), d(b"hij")]
        )]
    );
    // Filling a truncated range is not a duplicate; re-sending bytes is.
    assert_eq!(r.counters().bytes_duplicate, 2 + 3);
}

#[test]
fn truncated_ranges_merge() {
    let mut r = new();
    r.push_segment(0, 10, b"a", MS);
    r.push_segment(10, 10, b"", MS);
    r.push_op(20, 20, meta(1, MS));
    assert_eq!(
        poll(&mut r, MS),
        vec![c(0, 0, Some(1), vec![d(b"a"), P::T(19)])]
    );
}

#[test]
fn hole_times_out() {
    let mut r = new();
    r.push_segment(0, 3, b"abc", MS);
    // segment [3, 6) never arrives
    r.push_segment(6, 3, b"ghi", MS);
    r.push_op(9, 9, meta(1, 2 * MS));
    assert!(poll(&mut r, 100 * MS).is_empty());
    let out = poll(&mut r, 202 * MS);
    assert_eq!(
        out,
        vec![c(0, 0, Some(1), vec![d(b"abc"), P::H(3), d(b"ghi")])]
    );
    assert_eq!(r.counters().bytes_hole, 3);
    assert_eq!(r.counters().chunks_with_holes, 1);
    // The lost segment arriving later is a duplicate.
    r.push_segment(3, 3, b"def", 203 * MS);
    assert!(poll(&mut r, 203 * MS).is_empty());
    assert_eq!(r.counters().bytes_duplicate, 3);
}

#[test]
fn pending_since_is_the_oldest_record_held() {
    let mut r = new();
    assert_eq!(r.pending_since(3 * MS), None);
    r.push_segment(1000, 5, b"hello", 3 * MS);
    assert_eq!(
        r.pending_since(3 * MS),
        Some(3 * MS),
        "bytes waiting for a call"
    );
    // (A call is given by where it ends and its length.)
    r.push_op(1005, 5, meta(7, 2 * MS));
    assert_eq!(r.pending_since(3 * MS), Some(2 * MS), "the oldest of both");
    r.push_op(1010, 5, meta(7, 4 * MS));
    assert_eq!(poll(&mut r, 4 * MS).len(), 1);
    // What is left: a call whose bytes did not come (yet).
    assert_eq!(r.pending_since(4 * MS), Some(4 * MS));
    let _ = poll(&mut r, 500 * MS);
    assert_eq!(r.pending_since(500 * MS), None, "delivered as a hole");
}

/// A server that gets to a request 300 ms after it arrived (busy, or a
/// backlog of connections): its receive stream waits for the read, so
/// the request keeps its call; the bytes stop holding others back after
/// the hole timeout, when they are reported once as unread.
#[test]
fn received_bytes_wait_for_a_late_read() {
    let mut r = new();
    r.set_receive(true);
    r.push_segment(0, 5, b"GET /", MS);
    assert!(poll(&mut r, 250 * MS).is_empty(), "waits for the read");
    assert_eq!(r.take_unread(100 * MS), None, "not yet");
    assert_eq!(r.pending_since(100 * MS), Some(MS));
    assert_eq!(r.take_unread(250 * MS), Some(MS));
    assert_eq!(r.take_unread(260 * MS), None, "reported once");
    assert_eq!(r.pending_since(260 * MS), None);
    r.push_op(5, 5, meta(7, 301 * MS));
    assert_eq!(
        poll(&mut r, 301 * MS),
        vec![c(0, 0, Some(7), vec![d(b"GET /")])]
    );
    // The next request is read at once; a third is never read.
    r.push_segment(5, 3, b"GET", 400 * MS);
    r.push_op(8, 3, meta(7, 400 * MS));
    assert_eq!(
        poll(&mut r, 400 * MS),
        vec![c(5, 5, Some(7), vec![d(b"GET")])]
    );
    r.push_segment(8, 2, b"HI", 500 * MS);
    assert_eq!(r.take_unread(700 * MS), Some(500 * MS), "a new range");
    assert!(poll(&mut r, 5_499 * MS).is_empty());
    assert_eq!(
        poll(&mut r, 5_500 * MS),
        vec![c(8, 8, None, vec![d(b"HI")])],
        "unread for the unread timeout"
    );
    // A send stream does not wait for calls that long.
    let mut s = new();
    s.push_segment(0, 2, b"OK", MS);
    assert_eq!(s.take_unread(500 * MS), None);
    assert_eq!(poll(&mut s, 201 * MS).len(), 1);
}

#[test]
fn hole_between_unclaimed_segments() {
    let mut r = new();
    r.push_segment(0, 3, b"abc", MS);
    r.push_segment(6, 3, b"ghi", 5 * MS);
    assert!(poll(&mut r, 200 * MS).is_empty());
    // "abc" is old enough; then the gap waits from when "ghi" was noticed.
    assert_eq!(poll(&mut r, 201 * MS), vec![c(0, 0, None, vec![d(b"abc")])]);
    assert!(poll(&mut r, 204 * MS).is_empty());
    assert_eq!(
        poll(&mut r, 205 * MS),
        vec![c(3, 3, None, vec![P::H(3)]), c(6, 6, None, vec![d(b"ghi")])]
    );
    assert_eq!(r.counters().bytes_unattributed, 9);
}

#[test]
fn op_without_any_segment() {
    let mut r = new();
    r.push_op(50, 50, meta(1, MS));
    assert!(poll(&mut r, 100 * MS).is_empty());
    assert_eq!(
        poll(&mut r, 201 * MS),
        vec![c(0, 0, Some(1), vec![P::H(50)])]
    );
    assert_eq!(r.counters().ops_without_bytes, 1);
}

#[test]
fn lost_op_later_op_releases_bytes() {
    let mut r = new();
    r.push_segment(0, 3, b"abc", MS);
    r.push_segment(3, 3, b"def", MS);
    r.push_op(6, 3, meta(2, MS)); // the op for [0, 3) was lost
    assert_eq!(
        poll(&mut r, MS),
        vec![
            c(0, 0, None, vec![d(b"abc")]),
            c(3, 3, Some(2), vec![d(b"def")])
        ]
    );
    assert_eq!(r.counters().bytes_unattributed, 3);
}

#[test]
fn unclaimed_bytes_time_out() {
    let mut r = new();
    r.push_segment(0, 3, b"abc", MS);
    assert!(poll(&mut r, 200 * MS).is_empty());
    assert_eq!(poll(&mut r, 201 * MS), vec![c(0, 0, None, vec![d(b"abc")])]);
    // The op arriving afterwards is stale.
    r.push_op(3, 3, meta(1, 202 * MS));
    assert!(poll(&mut r, 202 * MS).is_empty());
    assert_eq!(r.counters().ops_stale, 1);
}

#[test]
fn op_partly_delivered_keeps_rest() {
    let mut r = new();
    r.push_segment(0, 6, b"abcdef", MS);
    assert_eq!(poll(&mut r, 300 * MS).len(), 1);
    r.push_segment(6, 3, b"ghi", 301 * MS);
    r.push_op(9, 9, meta(1, 301 * MS)); // covers delivered bytes too
    assert_eq!(
        poll(&mut r, 301 * MS),
        vec![c(6, 6, Some(1), vec![d(b"ghi")])]
    );
}

#[test]
fn preexisting_connection_arbitrary_seq() {
    let mut r = new();
    let s = 0x9e37_79b9u32;
    r.push_segment(s, 4, b"tail", MS); // the end of a request we missed
    r.push_op(s.wrapping_add(4), 10, meta(1, MS)); // op started before us
    r.push_segment(s.wrapping_add(4), 4, b"next", MS);
    r.push_op(s.wrapping_add(8), 4, meta(2, MS));
    assert!(poll(&mut r, MS).is_empty(), "waits for the first 6 bytes");
    assert_eq!(
        poll(&mut r, 201 * MS),
        vec![
            c(s.wrapping_sub(6), 0, Some(1), vec![P::H(6), d(b"tail")]),
            c(s.wrapping_add(4), 10, Some(2), vec![d(b"next")])
        ]
    );
}

#[test]
fn earlier_record_moves_start_before_delivery() {
    let mut r = new();
    r.push_segment(200, 2, b"cd", MS);
    r.push_segment(198, 2, b"ab", MS);
    r.push_op(202, 4, meta(1, MS));
    assert_eq!(
        poll(&mut r, MS),
        vec![c(198, 0, Some(1), vec![d(b"ab"), d(b"cd")])]
    );
}

#[test]
fn wrap_around() {
    let mut r = new();
    let s = u32::MAX - 2;
    r.push_segment(s, 3, b"abc", MS);
    r.push_segment(0, 3, b"def", MS);
    r.push_op(2, 5, meta(1, MS)); // [MAX-2, 2) wrapping
    r.push_op(3, 1, meta(2, MS));
    assert_eq!(
        poll(&mut r, MS),
        vec![
            c(s, 0, Some(1), vec![d(b"abc"), d(b"de")]),
            c(2, 5, Some(2), vec![d(b"f")])
        ]
    );
    // Segment straddling the wrap.
    let mut r = new();
    r.push_segment(u32::MAX - 1, 4, b"wxyz", MS);
    r.push_op(2, 4, meta(1, MS));
    assert_eq!(
        poll(&mut r, MS),
        vec![c(u32::MAX - 1, 0, Some(1), vec![d(b"wxyz")])]
    );
}

#[test]
fn long_stream_wraps_many_times() {
    let mut r = new();
    let mut seq = u32::MAX - 1000;
    let seg = 60_000u32;
    let mut total = 0u64;
    for i in 0..200_000u64 {
        r.push_segment(seq, seg, &[b'x'; 8], i);
        seq = seq.wrapping_add(seg);
        r.push_op(seq, seg, meta(1, i));
        if i.is_multiple_of(64) {
            r.poll(i, &mut |c| total += u64::from(c.len));
        }
    }
    r.flush(&mut |c| total += u64::from(c.len));
    assert_eq!(total, 200_000 * u64::from(seg));
    assert_eq!(r.counters().bytes_hole, 0);
    assert_eq!(r.counters().bytes_unattributed, 0);
}

#[test]
fn stale_op_ignored() {
    let mut r = new();
    r.push_segment(0, 4, b"abcd", MS);
    r.push_op(4, 4, meta(1, MS));
    assert_eq!(poll(&mut r, MS).len(), 1);
    r.push_op(4, 4, meta(1, MS));
    r.push_op(2, 2, meta(1, MS));
    assert!(poll(&mut r, 999 * MS).is_empty());
    assert_eq!(r.counters().ops_stale, 2);
}

#[test]
fn overlapping_ops_keep_first() {
    let mut r = new();
    r.push_segment(0, 6, b"abcdef", MS);
    r.push_op(4, 4, meta(1, MS)); // e.g. MSG_PEEK
    r.push_op(6, 6, meta(2, MS));
    assert_eq!(
        poll(&mut r, MS),
        vec![
            c(0, 0, Some(1), vec![d(b"abcd")]),
            c(4, 4, Some(2), vec![d(b"ef")])
        ]
    );
    assert_eq!(r.counters().ops_overlapping, 1);
}

#[test]
fn flush_delivers_everything() {
    let mut r = new();
    r.push_segment(0, 3, b"abc", MS);
    r.push_op(3, 3, meta(1, MS));
    r.push_segment(10, 2, b"kl", MS);
    r.push_op(20, 5, meta(2, MS));
    let out = flush(&mut r);
    assert_eq!(
        out,
        vec![
            c(0, 0, Some(1), vec![d(b"abc")]),
            c(3, 3, None, vec![P::H(7)]),
            c(10, 10, None, vec![d(b"kl")]),
            c(12, 12, None, vec![P::H(3)]),
            c(15, 15, Some(2), vec![P::H(5)]),
        ]
    );
    assert_eq!(r.buffered(), (0, 0, 0));
    assert!(flush(&mut r).is_empty());
}

#[test]
fn limits_evict_furthest_and_force_delivery() {
    let limits = StreamLimits {
        max_segments: 16,
        max_bytes: 1 << 20,
        max_ops: 16,
        hole_timeout_ns: 200 * MS,
        lost_gap_timeout_ns: 20 * MS,
        unread_timeout_ns: 200 * MS,
    };
    let mut r = StreamReassembler::new(limits);
    // One huge op; its segments arrive but the op is never complete in time.
    r.push_op(1_000_000, 1_000_000, meta(1, MS));
    for i in 0..100u32 {
        r.push_segment(i * 10, 10, b"0123456789", MS);
        assert!(r.buffered().0 <= 16);
    }
    assert!(r.counters().segments_dropped_limit > 0);
    assert!(r.wants_poll());
    let out = poll(&mut r, MS);
    assert!(!out.is_empty());
    assert!(out.iter().all(|c| c.tid == Some(1)));
    assert!(r.counters().chunks_forced > 0);
    assert!(!r.wants_poll());
    let delivered: u32 = out.iter().map(|c| c.len).sum();
    assert_eq!(r.next_offset(), u64::from(delivered));
}

#[test]
fn limits_bytes() {
    let limits = StreamLimits {
        max_segments: 1000,
        max_bytes: 100,
        max_ops: 16,
        hole_timeout_ns: 200 * MS,
        lost_gap_timeout_ns: 20 * MS,
        unread_timeout_ns: 200 * MS,
    };
    let mut r = StreamReassembler::new(limits);
    for i in 0..50u32 {
        r.push_segment(i * 10, 10, b"0123456789", MS);
        assert!(r.buffered().1 <= 100);
    }
    // Never more than the limit; polling drains.
    let out = poll(&mut r, MS);
    assert!(!out.is_empty());
    let out = flush(&mut r);
    let last = out.last().map(|c| c.offset + u64::from(c.len));
    assert!(last.unwrap_or(0) <= 500);
}

#[test]
fn limits_ops() {
    let limits = StreamLimits {
        max_segments: 16,
        max_bytes: 1 << 20,
        max_ops: 8,
        hole_timeout_ns: 200 * MS,
        lost_gap_timeout_ns: 20 * MS,
        unread_timeout_ns: 200 * MS,
    };
    let mut r = StreamReassembler::new(limits);
    for i in 1..100u32 {
        r.push_op(i * 10, 10, meta(i, MS));
        assert!(r.buffered().2 <= 8);
    }
    assert!(r.counters().ops_dropped_limit > 0);
    let out = poll(&mut r, MS);
    assert!(!out.is_empty());
    // An earlier op evicts the furthest one.
    let mut r = StreamReassembler::new(limits);
    for i in 2..10u32 {
        r.push_op(i * 10, 10, meta(i, MS));
    }
    r.push_op(10, 10, meta(1, MS));
    assert_eq!(r.buffered().2, 8);
    assert_eq!(poll(&mut r, MS).first().and_then(|c| c.tid), Some(1));
}

#[test]
fn huge_captured_and_empty_inputs() {
    let mut r = new();
    r.push_segment(0, 0, b"ignored", MS);
    r.push_op(0, 0, meta(1, MS));
    assert!(flush(&mut r).is_empty());
    // captured longer than payload_len is cut.
    r.push_segment(5, 2, b"abcdef", MS);
    r.push_op(7, 2, meta(1, MS));
    assert_eq!(poll(&mut r, MS), vec![c(5, 0, Some(1), vec![d(b"ab")])]);
}

#[test]
fn max_len_op_and_far_records() {
    let mut r = new();
    r.push_op(0, u32::MAX, meta(1, MS));
    r.push_segment(0x8000_0000, 10, b"x", MS);
    r.push_segment(0x7fff_ffff, 10, b"y", MS);
    let out = flush(&mut r);
    let total: u64 = out.iter().map(|c| u64::from(c.len)).sum();
    assert!(total >= u64::from(u32::MAX));
}

#[test]
fn piece_buffer_is_reused() {
    let mut r = new();
    r.push_segment(0, 3, b"abc", MS);
    r.push_op(3, 3, meta(1, MS));
    poll(&mut r, MS);
    let cap = r.piece_buf.capacity();
    assert!(cap > 0);
    r.push_segment(3, 3, b"def", MS);
    r.push_op(6, 3, meta(1, MS));
    poll(&mut r, MS);
    assert_eq!(r.piece_buf.capacity(), cap);
}

#[test]
fn slow_send_keeps_waiting_while_segments_progress() {
    let mut r = new();
    // send() returned at once; the kernel transmits 100 bytes every 150 ms.
    r.push_op(1000, 1000, meta(1, 0));
    for i in 0..10u32 {
        let t = u64::from(i) * 150 * MS;
        r.push_segment(i * 100, 100, b"x", t);
        let out = poll(&mut r, t);
        if i < 9 {
            assert!(out.is_empty(), "step {i}: {out:?}");
        } else {
            assert_eq!(
                out,
                vec![c(
                    0,
                    0,
                    Some(1),
                    vec![
                        d(b"x"),
                        P::T(99),
                        d(b"x"),
                        P::T(99),
                        d(b"x"),
                        P::T(99),
                        d(b"x"),
                        P::T(99),
                        d(b"x"),
                        P::T(99),
                        d(b"x"),
                        P::T(99),
                        d(b"x"),
                        P::T(99),
                        d(b"x"),
                        P::T(99),
                        d(b"x"),
                        P::T(99),
                        d(b"x"),
                        P::T(99)
                    ]
                )]
            );
        }
    }
    assert_eq!(r.counters().bytes_hole, 0);
}

#[test]
fn gap_inside_op_times_out_from_when_it_was_seen() {
    let mut r = new();
    r.push_op(300, 300, meta(1, 0));
    r.push_segment(0, 100, b"a", 0);
    r.push_segment(200, 100, b"c", 50 * MS); // reveals the gap [100, 200)
    assert!(poll(&mut r, 249 * MS).is_empty());
    assert_eq!(
        poll(&mut r, 250 * MS),
        vec![c(
            0,
            0,
            Some(1),
            vec![d(b"a"), P::T(99), P::H(100), d(b"c"), P::T(99)]
        )]
    );
}

#[test]
fn receive_that_consumed_the_fin_is_not_shifted() {
    let mut r = StreamReassembler::new(StreamLimits::default());
    r.push_segment(1000, 5, b"hello", 1);
    r.push_fin(1005);
    // copied_seq after reading "hello" and the FIN is 1006.
    r.push_op(
        1006,
        5,
        OpMeta {
            pid: 1,
            tid: 2,
            ts_ns: 2,
        },
    );
    let mut got = Vec::new();
    r.poll(3, &mut |c| {
        got.push((c.seq, c.len, c.captured(), c.op.map(|o| o.tid)))
    });
    assert_eq!(got, vec![(1000, 5, 5, Some(2))]);
    assert_eq!(r.counters().bytes_hole, 0);
}

#[test]
fn reset_gives_a_fresh_stream() {
    let mut r = StreamReassembler::new(StreamLimits::default());
    r.push_segment(1000, 5, b"hello", 1);
    r.push_op(
        1005,
        5,
        OpMeta {
            pid: 1,
            tid: 2,
            ts_ns: 2,
        },
    );
    r.poll(3, &mut |_| {});
    r.reset();
    assert_eq!(r.counters(), &StreamCounters::default());
    r.push_segment(7, 3, b"abc", 10);
    r.push_op(
        10,
        3,
        OpMeta {
            pid: 1,
            tid: 2,
            ts_ns: 11,
        },
    );
    let mut got = Vec::new();
    r.poll(12, &mut |c| got.push((c.seq, c.offset, c.captured())));
    assert_eq!(got, vec![(7, 0, 3)]);
}

#[test]
fn skipped_body_is_counted_as_skipped_not_as_a_hole() {
    let mut r = new();
    // A head, then a body of 10,000 bytes the consumer will not look at:
    // its source stops reporting it; the receive calls still come.
    r.push_segment(1000, 4, b"head", MS);
    r.push_op(1004, 4, meta(1, MS));
    assert_eq!(
        poll(&mut r, MS),
        vec![c(1000, 0, Some(1), vec![d(b"head")])]
    );
    assert_eq!(r.skip(4, 10_000), Some((1004, 11_004)));
    r.push_op(6004, 5000, meta(1, 2 * MS));
    r.push_op(11_004, 5000, meta(1, 3 * MS));
    // The next message starts where the body ends and is reported again.
    r.push_segment(11_004, 4, b"next", 3 * MS);
    r.push_op(11_008, 4, meta(2, 3 * MS));
    assert_eq!(
        poll(&mut r, 3 * MS),
        vec![
            c(1004, 4, Some(1), vec![P::S(5000)]),
            c(6004, 5004, Some(1), vec![P::S(5000)]),
            c(11_004, 10_004, Some(2), vec![d(b"next")]),
        ]
    );
    let k = r.counters();
    assert_eq!((k.bytes_skipped, k.bytes_hole, k.skips), (10_000, 0, 1));
}

#[test]
fn segments_reported_before_the_skip_landed_win_over_it() {
    let mut r = new();
    r.push_segment(0, 2, b"hd", MS);
    r.push_op(2, 2, meta(1, MS));
    poll(&mut r, MS);
    // The skip covers 2..102; a segment of 2..52 (10 bytes captured) had
    // already been sent before its source learned of it.
    assert_eq!(r.skip(2, 100), Some((2, 102)));
    r.push_segment(2, 50, b"0123456789", MS);
    r.push_op(102, 100, meta(1, 2 * MS));
    assert_eq!(
        poll(&mut r, 2 * MS),
        vec![c(2, 2, Some(1), vec![d(b"0123456789"), P::T(40), P::S(50)])]
    );
    let k = r.counters();
    assert_eq!(
        (k.bytes_captured, k.bytes_truncated, k.bytes_skipped),
        (12, 40, 50)
    );
}

#[test]
fn skip_of_bytes_already_delivered_or_before_the_stream_is_refused() {
    let mut r = new();
    assert_eq!(r.skip(0, 10), None, "nothing delivered yet");
    r.push_segment(u32::MAX - 1, 4, b"abcd", MS);
    r.push_op(2, 4, meta(1, MS));
    poll(&mut r, MS);
    assert_eq!(r.skip(0, 4), None, "all delivered");
    // Across the wrap of sequence numbers, from the next byte on.
    assert_eq!(r.skip(2, 10), Some((2, 10)));
}

#[test]
fn both_directions_released_together_come_out_in_call_order() {
    // A server's connection joined mid-request: the first request
    // (direction 1) and its response (direction 0) are holes, and both
    // directions wait on them; once the wait is over, the requests must not
    // all come out after the responses that answer them.
    let mut pair = [new(), new()];
    let (req, resp) = (1, 0);
    pair[req].push_op(10, 10, meta(1, MS));
    pair[resp].push_op(20, 20, meta(1, 2 * MS));
    for (i, t) in [(1u32, 10 * MS), (2, 20 * MS)] {
        let (q, r) = (10 * i, 20 * i);
        pair[req].push_segment(q, 10, &[b'q'; 10], t);
        pair[req].push_op(q + 10, 10, meta(1, t));
        pair[resp].push_segment(r, 20, &[b'r'; 20], t + MS);
        pair[resp].push_op(r + 20, 20, meta(1, t + MS));
    }
    let mut order = Vec::new();
    poll_pair(&mut pair, 100 * MS, &mut |i, c| order.push((i, c.offset)));
    assert!(order.is_empty(), "still waiting on the missing bytes");
    poll_pair(&mut pair, 300 * MS, &mut |i, c| order.push((i, c.offset)));
    assert_eq!(
        order,
        vec![
            (req, 0),
            (resp, 0),
            (req, 10),
            (resp, 20),
            (req, 20),
            (resp, 40)
        ]
    );
}

#[test]
fn a_direction_waiting_on_an_earlier_call_holds_the_other_back() {
    // A server's connection: the request (direction 1) was written at 1 ms
    // but its packet is missing; its response (direction 0, 2 ms) is
    // whole. The response must not come out before the request's wait
    // ends, else it would be paired with a request after it.
    let mut pair = [new(), new()];
    let (req, resp) = (1, 0);
    pair[req].push_segment(0, 10, &[b'q'; 10], MS);
    pair[req].push_op(10, 10, meta(1, MS));
    pair[req].push_op(20, 10, meta(1, 5 * MS));
    pair[resp].push_segment(0, 20, &[b'r'; 20], 2 * MS);
    pair[resp].push_op(20, 20, meta(1, 2 * MS));
    pair[resp].push_segment(20, 20, &[b'r'; 20], 6 * MS);
    pair[resp].push_op(40, 20, meta(1, 6 * MS));
    let mut order = Vec::new();
    poll_pair(&mut pair, 10 * MS, &mut |i, c| order.push((i, c.offset)));
    // The first request and its response; the second response waits.
    assert_eq!(order, vec![(req, 0), (resp, 0)]);
    poll_pair(&mut pair, 300 * MS, &mut |i, c| order.push((i, c.offset)));
    assert_eq!(order, vec![(req, 0), (resp, 0), (req, 10), (resp, 20)]);
}

/// Bytes lost before bytes already captured: a stream captured in the order
/// it was sent stops waiting for them after the short wait, one from the
/// network waits the hole timeout (a retransmission may still fill it).
/// Bytes an op waits for with nothing captured after them wait the hole
/// timeout either way.
#[test]
fn gaps_before_captured_bytes_wait_less_in_sent_order() {
    let late = c(3, 3, Some(2), vec![P::H(3), d(b"ghi")]);
    for sent_order in [false, true] {
        let mut r = new();
        r.set_sent_order(sent_order);
        r.push_segment(0, 3, b"abc", MS);
        r.push_op(3, 3, meta(1, MS));
        r.push_op(9, 6, meta(2, 2 * MS));
        r.push_segment(6, 3, b"ghi", 2 * MS);
        assert_eq!(
            poll(&mut r, 2 * MS),
            vec![c(0, 0, Some(1), vec![d(b"abc")])]
        );
        if sent_order {
            assert!(poll(&mut r, 21 * MS).is_empty());
            assert_eq!(poll(&mut r, 22 * MS), vec![late.clone()]);
        } else {
            assert!(poll(&mut r, 201 * MS).is_empty());
            assert_eq!(poll(&mut r, 202 * MS), vec![late.clone()]);
        }
    }
    let mut r = new();
    r.set_sent_order(true);
    r.push_op(5, 5, meta(1, MS));
    r.push_segment(0, 2, b"ab", MS);
    assert!(poll(&mut r, 200 * MS).is_empty());
    assert_eq!(
        poll(&mut r, 201 * MS),
        vec![c(0, 0, Some(1), vec![d(b"ab"), P::H(3)])]
    );
}

#[test]
fn bytes_uncopied_after_the_source_stopped_copying_are_skipped_not_holes() {
    let mut r = new();
    r.push_segment(0, 3, b"abc", MS);
    r.push_op(3, 3, meta(1, MS));
    assert_eq!(poll(&mut r, MS), vec![c(0, 0, Some(1), vec![d(b"abc")])]);
    // The verdict: a call reported before it landed, its packet after
    // (not copied); a packet copied before it, its call after (not
    // reported).
    r.stop_copying();
    r.push_op(8, 5, meta(1, 2 * MS));
    r.push_segment(8, 2, b"ij", 3 * MS);
    assert_eq!(
        poll(&mut r, 500 * MS),
        vec![
            c(3, 3, Some(1), vec![P::S(5)]),
            c(8, 8, None, vec![d(b"ij")])
        ]
    );
    let k = r.counters();
    assert_eq!((k.bytes_hole, k.chunks_with_holes), (0, 0));
    assert_eq!((k.bytes_skipped, k.bytes_unattributed), (5, 0));
}

#[test]
fn a_gap_from_before_the_source_stopped_copying_stays_a_hole() {
    let mut r = new();
    r.push_segment(0, 3, b"abc", MS);
    r.push_op(3, 3, meta(1, MS));
    assert_eq!(poll(&mut r, MS).len(), 1);
    r.push_op(8, 5, meta(1, 2 * MS));
    // Bytes 3..8 were due and lost before the verdict came.
    assert_eq!(
        poll(&mut r, 500 * MS),
        vec![c(3, 3, Some(1), vec![P::H(5)])]
    );
    r.stop_copying();
    r.push_op(10, 2, meta(1, 600 * MS));
    assert_eq!(
        poll(&mut r, 900 * MS),
        vec![c(8, 8, Some(1), vec![P::S(2)])]
    );
    let k = r.counters();
    assert_eq!((k.bytes_hole, k.bytes_skipped), (5, 2));
}
