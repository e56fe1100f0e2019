//! Property tests: random segmentations of a known byte stream, pushed in
//! random order with duplicates, deliver exactly the original bytes, in
//! order, each once.

use proptest::prelude::*;
use protocols::stream::{Chunk, MissingKind, OpMeta, Piece, StreamLimits, StreamReassembler};

#[derive(Debug, Clone)]
enum Rec {
    /// start offset, payload length, captured length
    Seg(usize, usize, usize),
    /// start offset, length, op id
    Op(usize, usize, u32),
}

#[derive(Debug, Clone)]
struct Case {
    data: Vec<u8>,
    isn: u32,
    recs: Vec<Rec>,
    poll_every: usize,
}

/// Cut points of `[0, n)` into ranges.
fn ranges(n: usize, cuts: &[usize]) -> Vec<(usize, usize)> {
    let mut c: Vec<usize> = cuts
        .iter()
        .map(|c| c % n.max(1))
        .filter(|c| *c > 0)
        .collect();
    c.push(0);
    c.push(n);
    c.sort_unstable();
    c.dedup();
    c.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
}

fn isn_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        (0u32..5000).prop_map(|d| u32::MAX - d),
        Just(0u32)
    ]
}

fn case_strategy(shuffle_ops: bool, lose_ops: bool) -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(any::<u8>(), 1..3000),
        isn_strategy(),
        prop::collection::vec(any::<usize>(), 0..40),
        prop::collection::vec(any::<usize>(), 0..30),
        prop::collection::vec((any::<usize>(), 1usize..400, any::<usize>()), 0..15),
        prop::collection::vec(any::<u8>(), 40),
        any::<u64>(),
        1usize..20,
    )
        .prop_map(
            move |(data, isn, seg_cuts, op_cuts, dups, caps, order_seed, poll_every)| {
                let n = data.len();
                let mut recs = Vec::new();
                for (i, (s, l)) in ranges(n, &seg_cuts).into_iter().enumerate() {
                    let cap = usize::from(caps[i % caps.len()]).min(l + 1) % (l + 1);
                    let cap = if i % 3 == 0 { l } else { cap };
                    recs.push(Rec::Seg(s, l, cap));
                }
                for (s, l, cap) in dups {
                    let s = s % n;
                    let l = l.min(n - s);
                    recs.push(Rec::Seg(s, l, cap % (l + 1)));
                }
                let mut ops = Vec::new();
                for (i, (s, l)) in ranges(n, &op_cuts).into_iter().enumerate() {
                    let lost = lose_ops && (order_seed >> (i % 64)) & 1 == 1 && i % 2 == 1;
                    if !lost {
                        ops.push(Rec::Op(s, l, i as u32));
                    }
                }
                // Deterministic shuffle from the seed; the first segment stays
                // first so that the start of the stream is known.
                let first = recs.remove(0);
                let mut rest: Vec<Rec> = recs;
                if shuffle_ops {
                    rest.extend(ops.clone());
                }
                let mut x = order_seed | 1;
                for i in (1..rest.len()).rev() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    rest.swap(i, (x % (i as u64 + 1)) as usize);
                }
                let mut all = Vec::new();
                if !shuffle_ops {
                    all.extend(ops);
                }
                all.push(first);
                all.extend(rest);
                Case {
                    data,
                    isn,
                    recs: all,
                    poll_every,
                }
            },
        )
}

#[derive(Debug, Default)]
struct Seen {
    next_offset: u64,
    bytes: Vec<Option<u8>>,
    chunks: Vec<(u64, u32, Option<u32>)>,
    holes: u64,
}

impl Seen {
    fn take(&mut self, c: &Chunk<'_>, isn: u32) {
        assert_eq!(c.offset, self.next_offset, "contiguous, in order");
        assert_eq!(
            c.seq,
            isn.wrapping_add(c.offset as u32),
            "seq matches offset"
        );
        let mut sum = 0u64;
        for p in c.pieces {
            assert!(!p.is_empty());
            sum += u64::from(p.len());
            match p {
                Piece::Data(d) => self.bytes.extend(d.iter().map(|b| Some(*b))),
                Piece::Missing { len, why } => {
                    if *why == MissingKind::Hole {
                        self.holes += u64::from(*len);
                    }
                    self.bytes.extend(std::iter::repeat_n(None, *len as usize));
                }
            }
        }
        assert_eq!(sum, u64::from(c.len));
        self.next_offset += u64::from(c.len);
        self.chunks.push((c.offset, c.len, c.op.map(|o| o.tid)));
    }
}

fn run(case: &Case, limits: StreamLimits) -> (Seen, StreamReassembler) {
    let mut r = StreamReassembler::new(limits);
    let mut seen = Seen::default();
    let isn = case.isn;
    for (t, rec) in case.recs.iter().enumerate() {
        let t = t as u64;
        match *rec {
            Rec::Seg(s, l, cap) => r.push_segment(
                isn.wrapping_add(s as u32),
                l as u32,
                &case.data[s..s + cap],
                t,
            ),
            Rec::Op(s, l, id) => r.push_op(
                isn.wrapping_add((s + l) as u32),
                l as u32,
                OpMeta {
                    pid: 1,
                    tid: id,
                    ts_ns: t,
                },
            ),
        }
        if (t as usize).is_multiple_of(case.poll_every) {
            r.poll(t, &mut |c| seen.take(&c, isn));
        }
    }
    r.flush(&mut |c| seen.take(&c, isn));
    (seen, r)
}

fn op_range(case: &Case, id: u32) -> Option<(u64, u64)> {
    case.recs.iter().find_map(|r| match *r {
        Rec::Op(s, l, i) if i == id => Some((s as u64, (s + l) as u64)),
        _ => None,
    })
}

fn slow_limits() -> StreamLimits {
    StreamLimits {
        hole_timeout_ns: 1_000_000_000,
        ..StreamLimits::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every byte delivered once, in order, captured bytes equal to the
    /// original, nothing declared a hole, each chunk inside its op.
    #[test]
    fn delivers_the_original_stream(case in case_strategy(true, true)) {
        let (seen, r) = run(&case, slow_limits());
        prop_assert_eq!(seen.bytes.len(), case.data.len());
        prop_assert_eq!(seen.holes, 0);
        for (i, b) in seen.bytes.iter().enumerate() {
            if let Some(b) = b {
                prop_assert_eq!(*b, case.data[i], "byte {}", i);
            }
        }
        for &(off, len, op) in &seen.chunks {
            if let Some(id) = op {
                let (s, e) = op_range(&case, id).expect("known op");
                prop_assert!(s <= off && off + u64::from(len) <= e, "chunk {off}+{len} in op {s}..{e}");
            }
        }
        let c = r.counters();
        prop_assert_eq!(c.bytes_captured + c.bytes_truncated, case.data.len() as u64);
    }

    /// With every op known before the segments, each chunk is exactly one op.
    #[test]
    fn ops_first_one_chunk_per_op(case in case_strategy(false, false)) {
        let (seen, r) = run(&case, slow_limits());
        prop_assert_eq!(seen.bytes.len(), case.data.len());
        let n_ops = case.recs.iter().filter(|r| matches!(r, Rec::Op(..))).count();
        prop_assert_eq!(seen.chunks.len(), n_ops);
        for &(off, len, op) in &seen.chunks {
            let id = op.expect("attributed");
            prop_assert_eq!(op_range(&case, id), Some((off, off + u64::from(len))));
        }
        prop_assert_eq!(r.counters().bytes_unattributed, 0);
    }

    /// Small limits and short timeouts: still in order, each byte once,
    /// bounded, captured bytes correct.
    #[test]
    fn bounded_under_pressure(case in case_strategy(true, true), max_segments in 4usize..20, max_bytes in 1usize..300, max_ops in 1usize..10, timeout in 0u64..10, sent_order in any::<bool>()) {
        let limits = StreamLimits { max_segments, max_bytes, max_ops, hole_timeout_ns: timeout, lost_gap_timeout_ns: timeout / 2, unread_timeout_ns: timeout * 3 };
        let mut r = StreamReassembler::new(limits);
        r.set_sent_order(sent_order);
        r.set_receive(!sent_order);
        let mut seen = Seen::default();
        let isn = case.isn;
        for (t, rec) in case.recs.iter().enumerate() {
            let t = t as u64;
            match *rec {
                Rec::Seg(s, l, cap) => r.push_segment(isn.wrapping_add(s as u32), l as u32, &case.data[s..s + cap], t),
                Rec::Op(s, l, id) => r.push_op(isn.wrapping_add((s + l) as u32), l as u32, OpMeta { pid: 1, tid: id, ts_ns: t }),
            }
            let (spans, bytes, ops) = r.buffered();
            prop_assert!(spans <= 2 * max_segments.max(4) + 2);
            prop_assert!(bytes <= max_bytes);
            prop_assert!(ops <= max_ops);
            if (t as usize).is_multiple_of(case.poll_every) {
                r.poll(t, &mut |c| seen.take(&c, isn));
            }
        }
        r.flush(&mut |c| seen.take(&c, isn));
        // Delivery may have started after offset 0 of the data only if
        // the first record was not the first pushed; it always is here.
        prop_assert!(seen.bytes.len() <= case.data.len());
        for (i, b) in seen.bytes.iter().enumerate() {
            if let Some(b) = b {
                prop_assert_eq!(*b, case.data[i], "byte {}", i);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary records (garbage sequence numbers, lengths, times): never
    /// panics, delivers in order, stays bounded.
    #[test]
    fn arbitrary_records(recs in prop::collection::vec((any::<bool>(), any::<u32>(), any::<u32>(), 0usize..64, any::<u16>()), 0..200), near in any::<bool>(), sent_order in any::<bool>()) {
        let limits = StreamLimits { max_segments: 32, max_bytes: 512, max_ops: 16, hole_timeout_ns: 100, lost_gap_timeout_ns: 30, unread_timeout_ns: 250 };
        let mut r = StreamReassembler::new(limits);
        r.set_sent_order(sent_order);
        r.set_receive(!sent_order);
        let mut next = 0u64;
        let buf = [7u8; 64];
        for (i, (is_seg, seq, len, cap, dt)) in recs.into_iter().enumerate() {
            let (seq, len) = if near { (seq % 5000, len % 3000) } else { (seq, len) };
            let t = i as u64 * 10 + u64::from(dt % 50);
            if is_seg {
                r.push_segment(seq, len, &buf[..cap], t);
            } else {
                r.push_op(seq, len, OpMeta { pid: 1, tid: 2, ts_ns: t });
            }
            let (spans, bytes, ops) = r.buffered();
            prop_assert!(spans <= 66 && bytes <= 512 && ops <= 16);
            if i.is_multiple_of(7) {
                r.poll(t, &mut |c| {
                    assert_eq!(c.offset, next);
                    assert_eq!(c.pieces.iter().map(|p| u64::from(p.len())).sum::<u64>(), u64::from(c.len));
                    next += u64::from(c.len);
                });
            }
        }
        r.flush(&mut |c| {
            assert_eq!(c.offset, next);
            next += u64::from(c.len);
        });
        prop_assert_eq!(r.buffered(), (0, 0, 0));
        let c = r.counters();
        prop_assert_eq!(c.bytes_captured + c.bytes_truncated + c.bytes_hole, next);
    }
}
