//! Per-direction TCP byte-stream reassembly with call attribution.
//!
//! A [`StreamReassembler`] takes the two kinds of kernel records of one
//! direction of one connection, in roughly (not exactly) time order:
//!
//! - segments ([`StreamReassembler::push_segment`]): the sequence number of
//!   a packet's first payload byte, its payload length and a captured
//!   prefix of the payload;
//! - operations ([`StreamReassembler::push_op`]): one `send()`/`recv()` call
//!   that moved the bytes `[seq_end - len, seq_end)`, with its thread and
//!   return time.
//!
//! [`StreamReassembler::poll`] delivers [`Chunk`]s strictly in stream order,
//! each byte once: normally one chunk per call, made of captured bytes and
//! of missing ranges whose length is known ([`MissingKind::Truncated`]:
//! beyond the captured prefix of a packet; [`MissingKind::Hole`]: no segment
//! arrived in time).
//!
//! # Positions
//! Sequence numbers are unwrapped into `u64` positions: each record is
//! placed at the interpretation nearest to the next byte to deliver, so
//! wrap-around at 2^32 is invisible past this module. Until the first byte
//! is delivered, a record earlier than everything seen moves the start of
//! the stream back (records arrive out of order); after that, anything
//! before the delivered position is a duplicate or a stale operation.
//!
//! # When a range is delivered
//! - Covered by an operation: once segments cover the whole range (a
//!   segment covers its whole payload, captured or not), or once the
//!   missing bytes have been missing for `hole_timeout_ns`: measured from
//!   the first segment seen beyond them (the gap is then known), or, when
//!   nothing lies beyond, from the later of the operation and the last
//!   segment (a large send whose segments still trickle out keeps
//!   waiting). Missing ranges are then holes.
//! - Covered by segments but by no operation: once a later operation shows
//!   that the bytes were skipped, or once they are older than
//!   `hole_timeout_ns` (`unread_timeout_ns` in a receive stream, see
//!   [`StreamReassembler::set_receive`]); delivered with `op: None`.
//! - Covered by nothing, with something known beyond: a hole, once
//!   `hole_timeout_ns` has passed since the first record beyond it.
//! - Under memory pressure (past three quarters of a [`StreamLimits`]
//!   bound) the oldest ranges are delivered at once, partial operations and
//!   holes included, without waiting.
//!
//! Everything is bounded by [`StreamLimits`]; when a bound is reached the
//! records furthest in the stream are dropped first (counted), so delivery
//! can go on from the front.

mod spans;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use spans::SpanStore;

/// The thread and return time of one `send()`/`recv()` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct OpMeta {
    /// Process id (thread group id).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// When the call returned (monotonic nanoseconds, the clock of `now_ns`).
    pub ts_ns: u64,
}

/// Why a range of bytes has no captured data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MissingKind {
    /// Covered by a segment, beyond its captured prefix: length known,
    /// bytes not captured.
    Truncated,
    /// No segment covering these bytes arrived (lost record, dropped by a
    /// limit, or before capture started).
    Hole,
    /// The consumer said these bytes need not be copied (a message body of
    /// known length, see [`StreamReassembler::skip`]), and no segment
    /// covering them arrived: length known, bytes not captured, and not a
    /// loss.
    Skipped,
}

/// One piece of a [`Chunk`], in stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Captured bytes.
    Data(&'a [u8]),
    /// Bytes that are part of the stream but were not captured.
    Missing {
        /// Number of bytes.
        len: u32,
        /// Why they are missing.
        why: MissingKind,
    },
}

impl Piece<'_> {
    /// Number of stream bytes this piece stands for.
    pub fn len(&self) -> u32 {
        match self {
            Piece::Data(d) => d.len().min(u32::MAX as usize) as u32,
            Piece::Missing { len, .. } => *len,
        }
    }

    /// True when the piece stands for no byte (never produced by the
    /// reassembler).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A delivered range of the stream.
#[derive(Debug, Clone, Copy)]
pub struct Chunk<'a> {
    /// TCP sequence number of the first byte.
    pub seq: u32,
    /// Offset of the first byte from the first byte this reassembler ever
    /// delivered (monotonic, never wraps).
    pub offset: u64,
    /// Number of stream bytes (sum of the pieces' lengths).
    pub len: u32,
    /// The call that moved these bytes; `None` when no operation record
    /// covers them (lost, or not seen in time).
    pub op: Option<OpMeta>,
    /// Timestamp of the segment holding the first covered byte, if any.
    pub seg_ts_ns: Option<u64>,
    /// The bytes, in order.
    pub pieces: &'a [Piece<'a>],
}

/// Where a byte of the stream lies, as a consumer of chunks sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pos {
    /// Stream offset (as in [`Chunk::offset`]).
    pub offset: u64,
    /// TCP sequence number.
    pub seq: u32,
    /// The call that moved the byte, when known.
    pub op: Option<OpMeta>,
    /// Timestamp of the segment of the chunk's first covered byte.
    pub seg_ts: Option<u64>,
}

impl Pos {
    /// The position `n` bytes later, in the same call.
    pub fn advance(self, n: u64) -> Pos {
        Pos {
            offset: self.offset + n,
            seq: self.seq.wrapping_add(n as u32),
            ..self
        }
    }

    /// The position `n` bytes earlier, in the same call.
    pub fn back(self, n: u64) -> Pos {
        Pos {
            offset: self.offset.saturating_sub(n),
            seq: self.seq.wrapping_sub(n as u32),
            ..self
        }
    }
}

/// A part of a chunk handed to a consumer by [`Chunk::walk`].
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    /// Captured bytes.
    Data(&'a [u8]),
    /// Bytes of the stream not captured, and why (a gap before the chunk
    /// is a [`MissingKind::Hole`]).
    Missing(u64, MissingKind),
}

impl<'a> Chunk<'a> {
    /// A chunk of `pieces` that no call moved and no segment timed (what
    /// a parser makes up to say bytes are missing, and what tests feed).
    pub fn untimed(seq: u32, offset: u64, pieces: &'a [Piece<'a>]) -> Self {
        Chunk {
            seq,
            offset,
            len: pieces.iter().map(Piece::len).sum(),
            op: None,
            seg_ts_ns: None,
            pieces,
        }
    }

    /// Walks the chunk for a consumer that fed the stream up to offset
    /// `fed` (`None`: nothing yet): first the gap between `fed` and the
    /// chunk (a hole, in no call), then the chunk's pieces without the bytes
    /// already fed, each with its position. Returns the new end of what was
    /// fed. Chunks come in stream order; a chunk that overlaps what was fed
    /// (a forced delivery, then the rest) is fed only past it.
    pub fn walk(&self, fed: Option<u64>, mut f: impl FnMut(Part<'a>, Pos)) -> u64 {
        let mut pos = Pos {
            offset: self.offset,
            seq: self.seq,
            op: self.op,
            seg_ts: self.seg_ts_ns,
        };
        let mut skip = 0u64;
        if let Some(expected) = fed {
            if self.offset > expected {
                let gap = self.offset - expected;
                let at = Pos {
                    op: None,
                    seg_ts: None,
                    ..pos.back(gap)
                };
                f(Part::Missing(gap, MissingKind::Hole), at);
            } else {
                skip = expected - self.offset;
            }
        }
        for p in self.pieces {
            let len = u64::from(p.len());
            if skip >= len {
                skip -= len;
                pos = pos.advance(len);
                continue;
            }
            let at = pos.advance(skip);
            match *p {
                Piece::Data(d) => f(Part::Data(d.get(skip as usize..).unwrap_or_default()), at),
                Piece::Missing { why, .. } => f(Part::Missing(len - skip, why), at),
            }
            skip = 0;
            pos = pos.advance(len);
        }
        fed.map_or(pos.offset, |e| e.max(pos.offset))
    }
}

impl Chunk<'_> {
    /// Number of bytes of the given kind of missing range.
    pub fn missing(&self, why: MissingKind) -> u64 {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Missing { len, why: w } if *w == why => u64::from(*len),
                _ => 0,
            })
            .sum()
    }

    /// Number of captured bytes.
    pub fn captured(&self) -> u64 {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Data(d) => d.len() as u64,
                Piece::Missing { .. } => 0,
            })
            .sum()
    }

    /// Offset just past the last byte.
    pub fn end_offset(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// Bounds on what one [`StreamReassembler`] buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Buffered byte ranges (about one per segment).
    pub max_segments: usize,
    /// Buffered captured bytes.
    pub max_bytes: usize,
    /// Buffered operations.
    pub max_ops: usize,
    /// How long to wait for missing segments or operation records before
    /// delivering without them (nanoseconds).
    pub hole_timeout_ns: u64,
    /// How long to wait for bytes missing before bytes already captured,
    /// in a stream captured in the order it was sent (see
    /// [`StreamReassembler::set_sent_order`]): only a record still on its
    /// way (another CPU's, held up) can fill such a gap, since a
    /// retransmission is never the first copy captured.
    pub lost_gap_timeout_ns: u64,
    /// In a receive stream ([`StreamReassembler::set_receive`]), how long
    /// captured bytes that no call claims wait for the call that reads
    /// them (never less than `hole_timeout_ns`). A process reads what
    /// arrived when it gets to it: a busy server, or one with a backlog of
    /// connections, reads a request long after its packets came.
    pub unread_timeout_ns: u64,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_segments: 1024,
            max_bytes: 256 * 1024,
            max_ops: 1024,
            hole_timeout_ns: 200_000_000,
            lost_gap_timeout_ns: 20_000_000,
            unread_timeout_ns: 5_000_000_000,
        }
    }
}

/// What a [`StreamReassembler`] saw and did. Delivered bytes add up:
/// `bytes_captured + bytes_truncated + bytes_skipped + bytes_hole` is the
/// offset reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamCounters {
    /// Segments pushed (including empty ones).
    pub segments: u64,
    /// Operations pushed (including empty ones).
    pub ops: u64,
    /// Chunks delivered.
    pub chunks: u64,
    /// Captured bytes delivered.
    pub bytes_captured: u64,
    /// Bytes delivered as [`MissingKind::Truncated`].
    pub bytes_truncated: u64,
    /// Bytes delivered as [`MissingKind::Hole`].
    pub bytes_hole: u64,
    /// Bytes delivered as [`MissingKind::Skipped`].
    pub bytes_skipped: u64,
    /// Bytes delivered with `op: None`.
    pub bytes_unattributed: u64,
    /// Segment bytes already buffered or delivered (retransmits, overlaps).
    pub bytes_duplicate: u64,
    /// Segments (or buffered ranges) dropped because a limit was reached.
    pub segments_dropped_limit: u64,
    /// Operations (or parts of them) dropped because a limit was reached.
    pub ops_dropped_limit: u64,
    /// Operations entirely before the delivered position (late or
    /// duplicated records).
    pub ops_stale: u64,
    /// Operations overlapping an operation already buffered (the
    /// overlapping part is ignored).
    pub ops_overlapping: u64,
    /// Operation chunks delivered without any segment coverage.
    pub ops_without_bytes: u64,
    /// Chunks delivered with at least one hole.
    pub chunks_with_holes: u64,
    /// Chunks delivered early because a limit was near.
    pub chunks_forced: u64,
    /// Records whose sequence number could not be placed (too far before
    /// the start of the stream).
    pub records_unplaceable: u64,
    /// Ranges the consumer asked to skip ([`StreamReassembler::skip`]).
    pub skips: u64,
    /// Ranges not skipped because the buffered ranges were at their bound
    /// (the bytes are then reported and delivered as usual).
    pub skips_refused: u64,
}

impl std::ops::AddAssign<&StreamCounters> for StreamCounters {
    /// Sums counters (e.g. over the streams of many connections).
    fn add_assign(&mut self, o: &StreamCounters) {
        self.segments += o.segments;
        self.ops += o.ops;
        self.chunks += o.chunks;
        self.bytes_captured += o.bytes_captured;
        self.bytes_truncated += o.bytes_truncated;
        self.bytes_hole += o.bytes_hole;
        self.bytes_skipped += o.bytes_skipped;
        self.bytes_unattributed += o.bytes_unattributed;
        self.bytes_duplicate += o.bytes_duplicate;
        self.segments_dropped_limit += o.segments_dropped_limit;
        self.ops_dropped_limit += o.ops_dropped_limit;
        self.ops_stale += o.ops_stale;
        self.ops_overlapping += o.ops_overlapping;
        self.ops_without_bytes += o.ops_without_bytes;
        self.chunks_with_holes += o.chunks_with_holes;
        self.chunks_forced += o.chunks_forced;
        self.records_unplaceable += o.records_unplaceable;
        self.skips += o.skips;
        self.skips_refused += o.skips_refused;
    }
}

/// Position given to the first sequence number seen: leaves room for
/// records that turn out to be earlier.
const ORIGIN_BASE: u64 = 1 << 40;

/// One buffered operation range `[start, end)`.
#[derive(Debug, Clone, Copy)]
struct PendingOp {
    start: u64,
    end: u64,
    meta: OpMeta,
    noticed: u64,
}

/// Reassembles one direction of one TCP connection. See the [module
/// documentation](self).
#[derive(Debug)]
pub struct StreamReassembler {
    limits: StreamLimits,
    counters: StreamCounters,
    /// `(position, seq)` of the first sequence number seen.
    anchor: Option<(u64, u32)>,
    /// Next position to deliver.
    next: u64,
    /// Position of the first delivered byte.
    origin: Option<u64>,
    /// `[next, contig_end)` is covered by buffered spans.
    contig_end: u64,
    spans: SpanStore,
    ops: VecDeque<PendingOp>,
    /// Highest record timestamp seen.
    clock: u64,
    /// Allocation reused for the pieces of each chunk.
    piece_buf: Vec<Piece<'static>>,
    /// Sequence number of the FIN, once seen.
    fin: Option<u32>,
    /// Bytes are captured in the order they were sent.
    sent_order: bool,
    /// The socket's receive direction: bytes arrive before the calls that
    /// read them.
    receive: bool,
    /// The range at the front was reported unread ([`take_unread`]).
    ///
    /// [`take_unread`]: Self::take_unread
    unread_reported: bool,
    /// From this position on the source copies nothing and reports no
    /// call ([`stop_copying`](Self::stop_copying)); `u64::MAX` while it
    /// does.
    uncopied_from: u64,
}

/// Reuses a vector's allocation for another lifetime (in-place collect of an
/// emptied vector keeps the buffer). `filter_map` rather than `filter`:
/// the item type changes.
#[allow(clippy::unnecessary_filter_map)]
fn recycle<'b>(mut v: Vec<Piece<'_>>) -> Vec<Piece<'b>> {
    v.clear();
    v.into_iter().filter_map(|_| None).collect()
}

/// Which range `deliver` emits next.
struct Unit {
    end: u64,
    op: Option<OpMeta>,
    forced: bool,
}

impl Unit {
    /// When the range happened (its call's time; a range no call claims
    /// goes first).
    fn ts(&self) -> u64 {
        self.op.map_or(0, |o| o.ts_ns)
    }
}

impl StreamReassembler {
    /// A reassembler with the given limits (zero limits are raised to one).
    pub fn new(limits: StreamLimits) -> Self {
        let limits = StreamLimits {
            max_segments: limits.max_segments.max(4),
            max_bytes: limits.max_bytes.max(1),
            max_ops: limits.max_ops.max(1),
            hole_timeout_ns: limits.hole_timeout_ns,
            lost_gap_timeout_ns: limits.lost_gap_timeout_ns.min(limits.hole_timeout_ns),
            unread_timeout_ns: limits.unread_timeout_ns.max(limits.hole_timeout_ns),
        };
        StreamReassembler {
            limits,
            counters: StreamCounters::default(),
            anchor: None,
            next: 0,
            origin: None,
            contig_end: 0,
            spans: SpanStore::default(),
            ops: VecDeque::new(),
            clock: 0,
            piece_buf: Vec::new(),
            fin: None,
            sent_order: false,
            receive: false,
            unread_reported: false,
            uncopied_from: u64::MAX,
        }
    }

    /// Back to the state of [`new`](Self::new) (counters included), keeping
    /// the buffers' allocations: agents reuse reassemblers across
    /// connections.
    pub fn reset(&mut self) {
        self.spans.clear();
        self.ops.clear();
        self.counters = StreamCounters::default();
        self.anchor = None;
        self.next = 0;
        self.origin = None;
        self.contig_end = 0;
        self.clock = 0;
        self.uncopied_from = u64::MAX;
        self.fin = None;
        self.sent_order = false;
        self.unread_reported = false;
    }

    /// Frees what is allocated but holds nothing beyond what a small
    /// connection uses (a few list entries, two spare buffers of at most
    /// 512 bytes): a closed connection that waits only for late records
    /// then costs little, a storm of short connections does not keep every
    /// one's buffers, and a reassembler reused from the pool serves its
    /// next short connection without allocating (freeing it all made each
    /// pooled reassembler allocate again: 15 allocations per span instead
    /// of 5 in the chain replay). Buffered bytes and operations stay.
    pub fn trim(&mut self) {
        self.spans.trim();
        self.ops.shrink_to(crate::TRIM_KEEP_ENTRIES);
        self.piece_buf.shrink_to(crate::TRIM_KEEP_ENTRIES);
    }

    /// Heap bytes allocated by the buffers (tests of [`trim`](Self::trim)).
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.spans.heap_bytes()
            + self.ops.capacity() * std::mem::size_of::<PendingOp>()
            + self.piece_buf.capacity() * std::mem::size_of::<Piece<'_>>()
    }

    /// The peer's FIN carries sequence number `seq`. A FIN takes one
    /// sequence number, and a receive call that reads the last bytes and the
    /// FIN together reports the sequence number past the FIN as its end:
    /// [`push_op`](Self::push_op) takes that one back off.
    pub fn push_fin(&mut self, seq: u32) {
        self.fin = Some(seq);
    }

    /// The counters so far.
    pub fn counters(&self) -> &StreamCounters {
        &self.counters
    }

    /// The limits in force.
    pub fn limits(&self) -> &StreamLimits {
        &self.limits
    }

    /// TCP sequence number of the next byte to deliver, once any record
    /// was seen.
    pub fn next_seq(&self) -> Option<u32> {
        self.anchor.map(|_| self.seq_of(self.next))
    }

    /// Offset (as in [`Chunk::offset`]) of the next byte to deliver.
    pub fn next_offset(&self) -> u64 {
        self.origin.map_or(0, |o| self.next - o)
    }

    /// Number of buffered byte ranges, captured bytes and operations.
    pub fn buffered(&self) -> (usize, usize, usize) {
        (self.spans.len(), self.spans.bytes(), self.ops.len())
    }

    /// Kernel time of the oldest record still held undelivered (bytes, or
    /// a call waiting for its bytes), if any, at `now`: a message those may
    /// yet make, or lose, started no earlier. Received bytes no call has
    /// claimed for the hole timeout are not counted any more: they wait
    /// for a read that has not happened (see [`take_unread`]).
    ///
    /// [`take_unread`]: Self::take_unread
    pub fn pending_since(&self, now: u64) -> Option<u64> {
        let call = self.ops.front().map(|o| o.meta.ts_ns);
        let bytes = self.spans.front().map(|s| s.ts);
        let bytes = bytes.filter(|_| self.unread_since(now).is_none());
        bytes.into_iter().chain(call).min()
    }

    /// In a receive stream, the kernel time of the bytes at the front when
    /// no call has claimed them for the hole timeout.
    fn unread_since(&self, now: u64) -> Option<u64> {
        if !self.receive || !self.ops.is_empty() {
            return None;
        }
        let s = self.spans.front()?;
        self.deadline_passed(s.noticed, now).then_some(s.ts)
    }

    /// In a receive stream, the kernel time of received bytes that no call
    /// has read for the hole timeout, once per range: a read the capture
    /// missed would look the same, so the caller counts the bytes as a
    /// possible loss (the request they may hold is not known) while they
    /// wait on for their read, up to `unread_timeout_ns`.
    pub fn take_unread(&mut self, now: u64) -> Option<u64> {
        if self.unread_reported {
            return None;
        }
        let at = self.unread_since(now)?;
        self.unread_reported = true;
        Some(at)
    }

    /// This stream is a socket's receive direction: captured bytes wait
    /// `unread_timeout_ns` for the call that reads them, not the hole
    /// timeout. Kept across [`reset`](Self::reset).
    pub fn set_receive(&mut self, yes: bool) {
        self.receive = yes;
    }

    /// True when buffers are close enough to a limit that the next
    /// [`poll`](Self::poll) delivers early; callers may poll sooner.
    pub fn wants_poll(&self) -> bool {
        let l = &self.limits;
        self.spans.len() * 4 > l.max_segments * 3
            || self.spans.bytes() * 4 > l.max_bytes * 3
            || self.ops.len() * 4 > l.max_ops * 3
    }

    fn seq_of(&self, pos: u64) -> u32 {
        match self.anchor {
            Some((apos, aseq)) => aseq.wrapping_add(pos.wrapping_sub(apos) as u32),
            None => 0,
        }
    }

    /// Places `seq` at the position nearest to the next byte to deliver,
    /// anchoring the stream on the first record.
    fn place(&mut self, seq: u32) -> Option<u64> {
        if self.anchor.is_none() {
            self.anchor = Some((ORIGIN_BASE, seq));
            self.next = ORIGIN_BASE;
            self.contig_end = ORIGIN_BASE;
            return Some(ORIGIN_BASE);
        }
        let d = i64::from(seq.wrapping_sub(self.seq_of(self.next)) as i32);
        let pos = (self.next as i64).checked_add(d).filter(|p| *p >= 0);
        if pos.is_none() {
            self.counters.records_unplaceable += 1;
        }
        pos.map(|p| p as u64)
    }

    /// Before anything is delivered, a record that starts earlier than
    /// everything seen moves the start of the stream back.
    fn maybe_move_start(&mut self, start: u64) {
        if self.origin.is_none() && start < self.next {
            self.next = start;
            self.contig_end = self.spans.contiguous_end(start);
        }
    }

    /// Adds a captured segment: `payload_len` bytes of payload starting at
    /// sequence number `seq`, of which `captured` is a prefix (longer
    /// captures are cut to `payload_len`).
    pub fn push_segment(&mut self, seq: u32, payload_len: u32, captured: &[u8], ts_ns: u64) {
        self.counters.segments += 1;
        if payload_len == 0 {
            return;
        }
        self.clock = self.clock.max(ts_ns);
        let noticed = self.clock;
        let Some(mut start) = self.place(seq) else {
            return;
        };
        let end = start + u64::from(payload_len);
        let cap_len = captured
            .len()
            .min(payload_len as usize)
            .min(self.limits.max_bytes);
        let mut cap = captured.get(..cap_len).unwrap_or_default();
        self.maybe_move_start(start);
        if end <= self.next {
            self.counters.bytes_duplicate += u64::from(payload_len);
            return;
        }
        if start < self.next {
            let skip = self.next - start;
            self.counters.bytes_duplicate += skip;
            cap = cap
                .get(skip.min(cap.len() as u64) as usize..)
                .unwrap_or_default();
            start = self.next;
        }
        if !self.make_room(start, cap.len()) {
            self.counters.segments_dropped_limit += 1;
            return;
        }
        let cap_end = start + cap.len() as u64;
        let mut dup = self.spans.insert(start, cap_end, Some(cap), ts_ns, noticed);
        dup += self.spans.insert(cap_end, end, None, ts_ns, noticed);
        self.counters.bytes_duplicate += dup;
        if start <= self.contig_end {
            self.contig_end = self.spans.contiguous_end(self.contig_end.max(self.next));
        }
    }

    /// The consumer will not look at the `len` bytes from `offset` (as in
    /// [`Chunk::offset`]; a message body of known length): they count as
    /// covered by a [`MissingKind::Skipped`] range wherever no segment
    /// covers them, so their source may stop reporting them. Bytes already
    /// delivered are left as they were. Returns the TCP sequence numbers of
    /// the range still ahead, `[from, to)`, for the source, or `None` when
    /// nothing is ahead (or nothing was delivered yet to count from).
    pub fn skip(&mut self, offset: u64, len: u64) -> Option<(u32, u32)> {
        let origin = self.origin?;
        // The range fills the gaps between buffered spans: bounded like them.
        if self.spans.len() >= self.limits.max_segments {
            self.counters.skips_refused += 1;
            return None;
        }
        let start = origin.checked_add(offset)?.max(self.next);
        let end = origin.checked_add(offset)?.checked_add(len)?;
        if end <= start {
            return None;
        }
        let noticed = self.clock;
        self.counters.skips += 1;
        self.spans.insert_skipped(start, end, noticed);
        if start <= self.contig_end {
            self.contig_end = self.spans.contiguous_end(self.contig_end.max(self.next));
        }
        Some((self.seq_of(start), self.seq_of(end)))
    }

    /// Makes room for a segment starting at `start` with `cap` captured
    /// bytes by evicting buffered ranges that lie further in the stream.
    /// Returns false when the segment itself must be dropped.
    fn make_room(&mut self, start: u64, cap: usize) -> bool {
        let full = |s: &SpanStore, l: &StreamLimits| {
            s.len() + 3 > l.max_segments || s.bytes() + cap > l.max_bytes
        };
        while full(&self.spans, &self.limits) {
            match self.spans.back() {
                Some(b) if b.start > start => {}
                _ => return false,
            }
            if let Some((s, _)) = self.spans.pop_back() {
                self.counters.segments_dropped_limit += 1;
                self.contig_end = self.contig_end.min(s).max(self.next);
            }
        }
        true
    }

    /// The source stops copying this direction and reporting its calls
    /// (the consumer's verdict that the connection is not parsed): a call
    /// reported just before the verdict landed in the source can be
    /// followed by packets it no longer copied, and packets copied just
    /// before by no call. From the next undelivered byte on, bytes no
    /// segment covers are delivered as [`MissingKind::Skipped`], not as a
    /// hole, and bytes no call claims are not counted unattributed.
    pub fn stop_copying(&mut self) {
        self.uncopied_from = self.uncopied_from.min(self.next);
    }

    /// Bytes and records pushed from now on count as noticed at `ts_ns` at
    /// the earliest: bytes held elsewhere until then (loopback packets
    /// waiting for their socket to be known) wait their full time for the
    /// call that read them, however old their packets are.
    pub fn noticed_from(&mut self, ts_ns: u64) {
        self.clock = self.clock.max(ts_ns);
    }

    /// Adds an operation: one call that moved the bytes
    /// `[seq_end - len, seq_end)`.
    pub fn push_op(&mut self, seq_end: u32, len: u32, meta: OpMeta) {
        self.counters.ops += 1;
        let seq_end = match self.fin {
            Some(fin) if seq_end == fin.wrapping_add(1) => fin,
            _ => seq_end,
        };
        if len == 0 {
            return;
        }
        self.clock = self.clock.max(meta.ts_ns);
        let noticed = self.clock;
        let Some(end) = self.place(seq_end) else {
            return;
        };
        let Some(start) = end.checked_sub(u64::from(len)) else {
            self.counters.records_unplaceable += 1;
            return;
        };
        self.maybe_move_start(start);
        if end <= self.next {
            self.counters.ops_stale += 1;
            return;
        }
        let start = start.max(self.next);
        // Keep the lowest ranges: evict later operations, or drop this one.
        while self.ops.len() >= self.limits.max_ops {
            match self.ops.back() {
                Some(b) if b.start > start => {
                    self.ops.pop_back();
                    self.counters.ops_dropped_limit += 1;
                }
                _ => {
                    self.counters.ops_dropped_limit += 1;
                    return;
                }
            }
        }
        let op = PendingOp {
            start,
            end,
            meta,
            noticed,
        };
        if self.ops.back().is_none_or(|b| b.end <= start) {
            self.ops.push_back(op);
            return;
        }
        // Insert the parts not covered by buffered operations.
        let mut idx = self.ops.partition_point(|o| o.end <= start);
        let mut cur = start;
        let mut overlapped = false;
        while cur < end {
            match self.ops.get(idx).map(|o| (o.start, o.end)) {
                Some((os, oe)) if os <= cur => {
                    overlapped = true;
                    cur = oe.min(end);
                    idx += 1;
                }
                other => {
                    let to = other.map_or(end, |(os, _)| os.min(end));
                    if self.ops.len() >= self.limits.max_ops {
                        self.counters.ops_dropped_limit += 1;
                        break;
                    }
                    self.ops.insert(
                        idx,
                        PendingOp {
                            start: cur,
                            end: to,
                            ..op
                        },
                    );
                    idx += 1;
                    cur = to;
                }
            }
        }
        if overlapped {
            self.counters.ops_overlapping += 1;
        }
    }

    /// Delivers, in stream order, every range that is ready at `now_ns`
    /// (the clock of the records' timestamps).
    pub fn poll(&mut self, now_ns: u64, out: &mut impl FnMut(Chunk<'_>)) {
        self.deliver(now_ns, out);
    }

    /// The connection closed or is evicted: delivers everything buffered,
    /// declaring missing bytes as holes. The reassembler stays usable.
    pub fn flush(&mut self, out: &mut impl FnMut(Chunk<'_>)) {
        self.deliver(u64::MAX, out);
        // Nothing can remain, but stay bounded whatever happens.
        self.spans.clear();
        self.ops.clear();
        self.contig_end = self.next;
    }

    /// This stream's bytes are captured in the order they were sent (a
    /// socket's own sends; a loopback receive fed from the peer's sends),
    /// not as they arrive from a network that may retransmit a lost
    /// segment later: a gap before captured bytes is then a lost record,
    /// and waiting the hole timeout for it would hold every later request
    /// of the connection (both directions) that long.
    pub fn set_sent_order(&mut self, yes: bool) {
        self.sent_order = yes;
    }

    fn deadline_passed(&self, noticed: u64, now: u64) -> bool {
        now >= noticed.saturating_add(self.limits.hole_timeout_ns)
    }

    /// Whether to stop waiting for bytes missing before bytes captured
    /// (noticed at `noticed`).
    fn gap_deadline_passed(&self, noticed: u64, now: u64) -> bool {
        if !self.sent_order {
            return self.deadline_passed(noticed, now);
        }
        now >= noticed.saturating_add(self.limits.lost_gap_timeout_ns)
    }

    /// Chooses the next range to deliver, or `None` to wait.
    fn next_unit(&mut self, now: u64) -> Option<Unit> {
        let next = self.next;
        while self.ops.front().is_some_and(|o| o.end <= next) {
            self.ops.pop_front();
            self.counters.ops_stale += 1;
        }
        if let Some(o) = self.ops.front_mut() {
            o.start = o.start.max(next);
        }
        let pressure = self.wants_poll();
        let op = self.ops.front().copied();
        let first_span = self.spans.front().map(|s| (s.start, s.noticed));
        let unit = |end: u64, op: Option<OpMeta>, forced: bool| {
            Some(Unit {
                end: end.min(next + u64::from(u32::MAX)),
                op,
                forced,
            })
        };
        if let Some(op) = op.filter(|o| o.start <= next) {
            // An operation covers the next byte.
            // Missing bytes of the op: a gap is known once a segment lies
            // beyond it; otherwise wait while coverage keeps growing.
            let passed = match self.spans.first_after(self.contig_end) {
                Some(sp) => self.gap_deadline_passed(sp.noticed, now),
                None => {
                    let since = self
                        .spans
                        .back()
                        .map_or(op.noticed, |b| b.noticed.max(op.noticed));
                    self.deadline_passed(since, now)
                }
            };
            if self.contig_end >= op.end || passed {
                return unit(op.end, Some(op.meta), false);
            }
            if !pressure {
                return None;
            }
            let end = if self.contig_end > next {
                self.contig_end
            } else {
                first_span.map_or(op.end, |(s, _)| s.min(op.end))
            };
            return unit(end, Some(op.meta), true);
        }
        let bound = op.map(|o| o.start);
        if self.contig_end > next {
            // Bytes that no operation claims (yet).
            let end = self.contig_end.min(bound.unwrap_or(u64::MAX));
            let noticed = first_span.map_or(0, |(_, n)| n);
            let wait = if self.receive {
                self.limits.unread_timeout_ns
            } else {
                self.limits.hole_timeout_ns
            };
            if bound.is_some() || now >= noticed.saturating_add(wait) {
                return unit(end, None, false);
            }
            return if pressure {
                unit(end, None, true)
            } else {
                None
            };
        }
        // Nothing covers the next byte: a gap up to the next known record.
        let gap_end = match (first_span, op) {
            (Some((s, _)), Some(o)) => s.min(o.start),
            (Some((s, _)), None) => s,
            (None, Some(o)) => o.start,
            (None, None) => return None,
        };
        let passed = first_span.is_some_and(|(_, n)| self.gap_deadline_passed(n, now))
            || op.is_some_and(|o| self.deadline_passed(o.noticed, now));
        if passed {
            unit(gap_end, None, false)
        } else if pressure {
            unit(gap_end, None, true)
        } else {
            None
        }
    }

    fn deliver(&mut self, now: u64, out: &mut impl FnMut(Chunk<'_>)) {
        while let Some(unit) = self.next_ready(now) {
            self.emit_unit(unit, out);
        }
    }

    /// The next range ready at `now`, or `None` when nothing is.
    /// The time of the call whose bytes this direction waits for, when it
    /// has nothing ready.
    fn waiting_call(&self) -> Option<u64> {
        self.ops.front().map(|o| o.meta.ts_ns)
    }

    fn next_ready(&mut self, now: u64) -> Option<Unit> {
        self.anchor?;
        self.next_unit(now).filter(|u| u.end > self.next)
    }

    /// Delivers `unit`, just returned by [`next_ready`](Self::next_ready).
    fn emit_unit(&mut self, unit: Unit, out: &mut impl FnMut(Chunk<'_>)) {
        let (a, b) = (self.next, unit.end);
        let origin = *self.origin.get_or_insert(a);
        let mut pieces = recycle(std::mem::take(&mut self.piece_buf));
        let st = self
            .spans
            .build_pieces(a, b, self.uncopied_from, &mut pieces);
        let len = (b - a) as u32;
        out(Chunk {
            seq: self.seq_of(a),
            offset: a - origin,
            len,
            op: unit.op,
            seg_ts_ns: st.first_ts,
            pieces: &pieces,
        });
        self.piece_buf = recycle(pieces);

        let c = &mut self.counters;
        c.chunks += 1;
        c.bytes_captured += st.captured;
        c.bytes_truncated += st.truncated;
        c.bytes_skipped += st.skipped;
        c.bytes_hole += st.hole;
        if unit.op.is_none() {
            c.bytes_unattributed += self.uncopied_from.clamp(a, b) - a;
        } else if st.captured + st.truncated + st.skipped == 0 {
            c.ops_without_bytes += 1;
        }
        if st.hole > 0 {
            c.chunks_with_holes += 1;
        }
        if unit.forced {
            c.chunks_forced += 1;
        }

        self.spans.consume_to(b);
        self.next = b;
        self.unread_reported = false;
        if let Some(o) = self.ops.front_mut() {
            if o.end <= b {
                self.ops.pop_front();
            } else {
                o.start = o.start.max(b);
            }
        }
        if self.contig_end < b {
            self.contig_end = self.spans.contiguous_end(b);
        }
    }
}

/// Delivers what both directions of a connection have ready at `now`, the
/// two merged in the order their calls happened (`out` gets the index of
/// the direction). Polled one after the other, a direction that waited on
/// missing bytes would hand all its ranges over before the other's older
/// ones: a server's responses before the requests they answer.
pub fn poll_pair(
    streams: &mut [StreamReassembler; 2],
    now_ns: u64,
    out: &mut impl FnMut(usize, Chunk<'_>),
) {
    // A direction's next range stays what it was while the other one
    // delivers.
    let mut ready = [streams[0].next_ready(now_ns), streams[1].next_ready(now_ns)];
    loop {
        let i = match &ready {
            [None, None] => return,
            [Some(a), Some(b)] => usize::from(b.ts() < a.ts()),
            [Some(u), None] | [None, Some(u)] => {
                let i = usize::from(ready[0].is_none());
                // The other direction waits on bytes of an earlier call (a
                // request whose packet is late or lost): what happened
                // after it waits too, unless a bound forces it out.
                if !u.forced && streams[1 - i].waiting_call().is_some_and(|t| t < u.ts()) {
                    return;
                }
                i
            }
        };
        let Some(unit) = ready[i].take() else {
            return;
        };
        streams[i].emit_unit(unit, &mut |c| out(i, c));
        ready[i] = streams[i].next_ready(now_ns);
    }
}
