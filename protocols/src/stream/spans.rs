//! Buffered coverage of one direction's byte stream: sorted, non-overlapping
//! spans of positions, each captured bytes, a truncated range (covered by a
//! segment, bytes not captured) or a skipped range (the consumer said it
//! will not look at these bytes; no segment covered them).

use std::collections::VecDeque;

use super::{MissingKind, Piece};

/// Buffers kept for reuse; more than this are freed.
const POOL_MAX: usize = 64;
/// Buffers larger than this are not kept for reuse.
const POOL_BUF_MAX: usize = 4096;
/// Spare buffers a trimmed store keeps, and their largest size.
pub(super) const KEEP_BUFS: usize = 2;
pub(super) const KEEP_BUF_BYTES: usize = 512;

/// One buffered range `[start, end)` of stream positions.
#[derive(Debug)]
pub(super) struct Span {
    pub(super) start: u64,
    pub(super) end: u64,
    /// Timestamp of the segment this range came from.
    pub(super) ts: u64,
    /// When the reassembler first knew about this range (clock high-water
    /// mark at insertion); timeouts are measured from here.
    pub(super) noticed: u64,
    /// Captured bytes: `data[off..]` holds exactly `end - start` bytes.
    /// `None`: the range is covered but was not captured (see `skipped`).
    data: Option<Vec<u8>>,
    off: usize,
    /// Without data: skipped at the consumer's request (else truncated).
    skipped: bool,
}

impl Span {
    fn bytes(&self) -> Option<&[u8]> {
        self.data.as_deref().and_then(|d| d.get(self.off..))
    }

    fn captured_len(&self) -> usize {
        if self.data.is_some() {
            (self.end - self.start) as usize
        } else {
            0
        }
    }
}

/// What `build_pieces` found in a range.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PieceStats {
    pub(super) captured: u64,
    pub(super) truncated: u64,
    pub(super) skipped: u64,
    pub(super) hole: u64,
    pub(super) first_ts: Option<u64>,
}

/// Sorted, non-overlapping buffered spans plus a pool of byte buffers.
#[derive(Debug, Default)]
pub(super) struct SpanStore {
    spans: VecDeque<Span>,
    /// Captured bytes currently buffered.
    bytes: usize,
    pool: Vec<Vec<u8>>,
}

impl SpanStore {
    pub(super) fn len(&self) -> usize {
        self.spans.len()
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn front(&self) -> Option<&Span> {
        self.spans.front()
    }

    pub(super) fn back(&self) -> Option<&Span> {
        self.spans.back()
    }

    /// The first span starting after `pos`.
    pub(super) fn first_after(&self, pos: u64) -> Option<&Span> {
        self.spans
            .get(self.spans.partition_point(|sp| sp.start <= pos))
    }

    fn alloc(&mut self, d: &[u8]) -> Vec<u8> {
        let mut v = self.pool.pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(d);
        v
    }

    fn free(&mut self, v: Option<Vec<u8>>) {
        if let Some(v) = v {
            if self.pool.len() < POOL_MAX && v.capacity() <= POOL_BUF_MAX {
                self.pool.push(v);
            }
        }
    }

    fn new_span(
        &mut self,
        start: u64,
        end: u64,
        data: Option<&[u8]>,
        ts: u64,
        noticed: u64,
    ) -> Span {
        let data = data.map(|d| {
            self.bytes += d.len();
            self.alloc(d)
        });
        Span {
            start,
            end,
            ts,
            noticed,
            data,
            off: 0,
            skipped: false,
        }
    }

    /// Marks `[s, e)` as skipped wherever nothing covers it yet.
    pub(super) fn insert_skipped(&mut self, s: u64, e: u64, noticed: u64) {
        let mut idx = self.spans.partition_point(|sp| sp.end <= s);
        let mut cur = s;
        while cur < e {
            let next = self.spans.get(idx).map(|sp| (sp.start, sp.end));
            match next {
                Some((sp_start, sp_end)) if sp_start <= cur => {
                    cur = sp_end;
                    idx += 1;
                }
                other => {
                    let gap_end = other.map_or(e, |(sp_start, _)| sp_start.min(e));
                    let mut sp = self.new_span(cur, gap_end, None, noticed, noticed);
                    sp.skipped = true;
                    self.spans.insert(idx, sp);
                    idx += 1;
                    cur = gap_end;
                }
            }
        }
    }

    /// Inserts coverage of `[s, e)`; `data`, when given, holds exactly
    /// `e - s` bytes. Existing captured bytes win over new ones; new
    /// captured bytes replace existing truncated or skipped ranges, new
    /// truncated ones replace skipped ones. Returns the number of positions
    /// that were already covered (duplicates).
    pub(super) fn insert(
        &mut self,
        s: u64,
        e: u64,
        data: Option<&[u8]>,
        ts: u64,
        noticed: u64,
    ) -> u64 {
        if s >= e {
            return 0;
        }
        if data.is_some_and(|d| d.len() as u64 != e - s) {
            return 0;
        }
        // Fast path: in-order append.
        if self.spans.back().is_none_or(|b| b.end <= s) {
            let sp = self.new_span(s, e, data, ts, noticed);
            self.spans.push_back(sp);
            return 0;
        }
        let slice =
            |from: u64, to: u64| data.and_then(|d| d.get((from - s) as usize..(to - s) as usize));
        let mut idx = self.spans.partition_point(|sp| sp.end <= s);
        let mut cur = s;
        let mut dup = 0u64;
        while cur < e {
            let existing = self.spans.get(idx).map(|sp| {
                (
                    sp.start,
                    sp.end,
                    sp.data.is_some(),
                    sp.ts,
                    sp.noticed,
                    sp.skipped,
                )
            });
            match existing {
                Some((sp_start, sp_end, sp_captured, sp_ts, sp_noticed, sp_skipped))
                    if sp_start <= cur =>
                {
                    let ov_end = sp_end.min(e);
                    // Bytes fill a range without them; a segment (truncated
                    // or not) replaces a skipped range: it was there after
                    // all, the bytes beyond its capture are truncated.
                    if !sp_captured && (data.is_some() || sp_skipped) {
                        let filled = self.new_span(
                            cur,
                            ov_end,
                            slice(cur, ov_end),
                            sp_ts.min(ts),
                            sp_noticed,
                        );
                        if sp_start < cur {
                            if let Some(sp) = self.spans.get_mut(idx) {
                                sp.end = cur;
                            }
                            idx += 1;
                            self.spans.insert(idx, filled);
                        } else if let Some(sp) = self.spans.get_mut(idx) {
                            *sp = filled;
                        }
                        if ov_end < sp_end {
                            let mut rest = self.new_span(ov_end, sp_end, None, sp_ts, sp_noticed);
                            rest.skipped = sp_skipped;
                            self.spans.insert(idx + 1, rest);
                        }
                    } else {
                        dup += ov_end - cur;
                    }
                    idx += 1;
                    cur = ov_end;
                }
                other => {
                    let gap_end = other.map_or(e, |(sp_start, ..)| sp_start.min(e));
                    let sp = self.new_span(cur, gap_end, slice(cur, gap_end), ts, noticed);
                    self.spans.insert(idx, sp);
                    idx += 1;
                    cur = gap_end;
                }
            }
        }
        dup
    }

    /// End of the contiguous coverage that contains or starts at `from`
    /// (returns `from` when `from` is not covered).
    pub(super) fn contiguous_end(&self, from: u64) -> u64 {
        let mut idx = self.spans.partition_point(|sp| sp.end <= from);
        let mut end = from;
        while let Some(sp) = self.spans.get(idx) {
            if sp.start > end {
                break;
            }
            end = sp.end;
            idx += 1;
        }
        end
    }

    /// Removes every span (or part of one) before `pos`; returns the number
    /// of captured bytes released.
    pub(super) fn consume_to(&mut self, pos: u64) {
        while let Some(front) = self.spans.front_mut() {
            if front.end <= pos {
                self.bytes -= front.captured_len();
                if let Some(sp) = self.spans.pop_front() {
                    self.free(sp.data);
                }
            } else {
                if front.start < pos {
                    let n = pos - front.start;
                    if front.data.is_some() {
                        front.off += n as usize;
                        self.bytes -= n as usize;
                    }
                    front.start = pos;
                }
                break;
            }
        }
    }

    /// Evicts the last span; returns its `(start, end)`.
    pub(super) fn pop_back(&mut self) -> Option<(u64, u64)> {
        let sp = self.spans.pop_back()?;
        self.bytes -= sp.captured_len();
        let r = (sp.start, sp.end);
        self.free(sp.data);
        Some(r)
    }

    /// Frees the spare buffers and the list's unused capacity beyond what
    /// a small connection uses (see [`StreamReassembler::trim`]).
    ///
    /// [`StreamReassembler::trim`]: super::StreamReassembler::trim
    pub(super) fn trim(&mut self) {
        self.pool.retain(|b| b.capacity() <= KEEP_BUF_BYTES);
        self.pool.truncate(KEEP_BUFS);
        self.pool.shrink_to(KEEP_BUFS);
        self.spans.shrink_to(crate::TRIM_KEEP_ENTRIES);
    }

    /// Heap bytes allocated: the list and the buffers, spare or in use.
    #[cfg(test)]
    pub(super) fn heap_bytes(&self) -> usize {
        let data: usize = self
            .spans
            .iter()
            .filter_map(|s| s.data.as_ref())
            .map(Vec::capacity)
            .sum();
        let pool: usize = self.pool.iter().map(Vec::capacity).sum();
        data + pool + self.spans.capacity() * std::mem::size_of::<Span>()
    }

    /// Drops everything.
    pub(super) fn clear(&mut self) {
        while self.pop_back().is_some() {}
    }

    /// Describes `[a, b)` as pieces (merging adjacent missing pieces of the
    /// same kind) into `out`; from `uncopied_from` on, bytes no span covers
    /// were not copied by request: skipped, not a hole.
    pub(super) fn build_pieces<'a>(
        &'a self,
        a: u64,
        b: u64,
        uncopied_from: u64,
        out: &mut Vec<Piece<'a>>,
    ) -> PieceStats {
        let mut st = PieceStats::default();
        let push_missing = |out: &mut Vec<Piece<'a>>, len: u64, why: MissingKind| {
            // Chunks never exceed u32::MAX bytes, so neither does a piece.
            let len = len.min(u64::from(u32::MAX)) as u32;
            if let Some(Piece::Missing { len: l, why: w }) = out.last_mut() {
                if *w == why {
                    *l = l.saturating_add(len);
                    return;
                }
            }
            out.push(Piece::Missing { len, why });
        };
        let gap = |out: &mut Vec<Piece<'a>>, st: &mut PieceStats, from: u64, to: u64| {
            let split = uncopied_from.clamp(from, to);
            if split > from {
                st.hole += split - from;
                push_missing(out, split - from, MissingKind::Hole);
            }
            if to > split {
                st.skipped += to - split;
                push_missing(out, to - split, MissingKind::Skipped);
            }
        };
        let mut cur = a;
        let mut idx = self.spans.partition_point(|sp| sp.end <= a);
        while cur < b {
            let Some(sp) = self.spans.get(idx).filter(|sp| sp.start < b) else {
                gap(out, &mut st, cur, b);
                break;
            };
            if sp.start > cur {
                gap(out, &mut st, cur, sp.start);
                cur = sp.start;
            }
            st.first_ts.get_or_insert(sp.ts);
            let to = sp.end.min(b);
            match sp.bytes() {
                Some(bytes) => {
                    let from = (cur - sp.start) as usize;
                    let until = (to - sp.start) as usize;
                    if let Some(d) = bytes.get(from..until) {
                        if !d.is_empty() {
                            out.push(Piece::Data(d));
                        }
                    }
                    st.captured += to - cur;
                }
                None if sp.skipped => {
                    st.skipped += to - cur;
                    push_missing(out, to - cur, MissingKind::Skipped);
                }
                None => {
                    st.truncated += to - cur;
                    push_missing(out, to - cur, MissingKind::Truncated);
                }
            }
            cur = to;
            idx += 1;
        }
        st
    }
}
