//! Reading the kernel's records: the per-CPU lanes (mapped into the agent
//! and read in place), merged into one stream in kernel-time order, and the
//! ring of CPU samples.
//!
//! Each lane is in time order on its own; lanes of different CPUs are not
//! ordered against each other, and a response must never reach the parsers
//! before the request it answers. So a drain at time `now` hands out, by a
//! k-way merge on the records' timestamps, every record older than
//! `now - HOLD_NS` and leaves younger ones in place for the next drain: a
//! record is written within microseconds of its timestamp, so by then every
//! lane holds all records up to that time. A record that still arrives
//! after younger ones went out (its program was held up for longer) is
//! handed out at once and counted as late.
//!
//! CPU samples come through a ring of their own, as they are taken; they
//! are held and handed out in the same time order as the lanes' records
//! (a sample taken after a process's exec must reach the profiler after
//! that exec, and one taken before it, before). Wake-up records only wake
//! the reader.
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    os::fd::{AsFd, AsRawFd, RawFd},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, RingBuf};
use tracer_common::{
    record_ts, LaneCtl, Tag, FRAME_HDR, LANE_CHUNK, MAX_FRAME, NESTED_LANE, NESTED_PER_CPU,
};

/// How far behind the reader's clock a drain stops handing out records.
pub const HOLD_NS: u64 = 2_000_000;

/// A read-only or read-write shared mapping of an mmapable array map.
struct Mapping {
    ptr: *mut u8,
    len: usize,
    _map: MapData,
}

impl Mapping {
    fn new(map: MapData, len: usize, write: bool) -> std::io::Result<Mapping> {
        let prot = libc::PROT_READ | if write { libc::PROT_WRITE } else { 0 };
        // SAFETY: a shared mapping of the map's fd over its mmapable size;
        // the kernel checks the length against the map.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr as *mut u8,
            len,
            _map: map,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// One lane: its bytes (a ring of `chunk`-sized chunks) and positions.
struct Lane {
    /// The agent is behind on this lane: call and packet records are passed
    /// over until it has caught up.
    shedding: bool,
    base: *const u8,
    bytes: u64,
    chunk: u64,
    ctl: *mut LaneCtl,
    /// Next position to read.
    pos: u64,
    /// What the agent last stored in `cons`.
    published: u64,
    /// `prod` read at the start of this drain.
    prod: u64,
    /// Length of the frame at `pos`, as [`lane_head`] checked it.
    head_len: u64,
}

/// Counters of the reader.
#[derive(Clone, Copy, Debug, Default)]
pub struct LaneCounters {
    /// Call records passed over unread because the agent was behind (see
    /// [`Events::drain`]).
    pub shed_op: u64,
    /// Packet records passed over unread because the agent was behind.
    pub shed_segment: u64,
    /// Records handed out after younger records of another lane (their
    /// program was held up past the reader's hold time).
    pub records_late: u64,
    /// Lane frames that made no sense (a length beyond the lane's rules):
    /// the rest of that lane's published bytes was skipped.
    pub frames_corrupt: u64,
    /// The most any lane had waiting at a look, in percent of its size
    /// (how close the agent came to losing records).
    pub peak_fill_percent: u64,
    /// The longest time between two drains, in milliseconds.
    pub longest_gap_ms: u64,
    /// CPU samples handed out ahead of their time because too many
    /// waited (see [`MAX_HELD_SAMPLE_BYTES`]).
    pub samples_unordered: u64,
}

/// Bytes of CPU samples held for their turn at most (each carries a copy of
/// the top of a user stack): a few drains' worth at the default rate.
const MAX_HELD_SAMPLE_BYTES: usize = 8 << 20;
/// Sample buffers kept for reuse.
const SPARE_SAMPLE_BUFFERS: usize = 64;

/// CPU samples read from their ring, waiting to be handed out in time
/// order with the lanes' records.
#[derive(Default)]
struct HeldSamples {
    /// (time, record), in time order once [`sort`](Self::sort) ran.
    queue: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
    spare: Vec<Vec<u8>>,
}

impl HeldSamples {
    /// Holds a copy of `rec`; when too many bytes wait, the oldest go out
    /// through `f` at once (counted).
    fn hold(&mut self, rec: &[u8], counters: &mut LaneCounters, f: &mut impl FnMut(&[u8])) {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(rec);
        self.bytes += buf.len();
        self.queue.push_back((record_ts(rec).unwrap_or(0), buf));
        while self.bytes > MAX_HELD_SAMPLE_BYTES {
            counters.samples_unordered += 1;
            self.release_one(f);
        }
    }

    /// Samples from several CPUs' rings come interleaved.
    fn sort(&mut self) {
        self.queue.make_contiguous().sort_by_key(|(ts, _)| *ts);
    }

    /// Hands out every held sample taken at or before `ts`.
    fn release_until(&mut self, ts: u64, f: &mut impl FnMut(&[u8])) {
        while self.queue.front().is_some_and(|(t, _)| *t <= ts) {
            self.release_one(f);
        }
    }

    fn release_one(&mut self, f: &mut impl FnMut(&[u8])) {
        let Some((_, buf)) = self.queue.pop_front() else {
            return;
        };
        self.bytes -= buf.len();
        f(&buf);
        if self.spare.len() < SPARE_SAMPLE_BUFFERS {
            self.spare.push(buf);
        }
    }
}

/// Sizes the agent chose for the lanes.
#[derive(Clone, Copy, Debug)]
pub struct LaneLayout {
    /// CPU ids with lanes.
    pub cpus: u32,
    /// Chunks per packet lane (a power of two).
    pub chunks: u32,
    /// Chunks per op lane (a power of two).
    pub op_chunks: u32,
}

impl LaneLayout {
    /// Bytes of the packet and op lanes' map.
    pub fn chunked_bytes(&self) -> usize {
        self.cpus as usize * (self.chunks + self.op_chunks) as usize * LANE_CHUNK
    }
    /// Bytes of the nested lanes' map.
    pub fn nested_bytes(&self) -> usize {
        (self.cpus * NESTED_PER_CPU) as usize * NESTED_LANE
    }
    /// Lanes in all: packet, op and nested lanes of every CPU.
    pub fn lanes(&self) -> u32 {
        self.cpus * (2 + NESTED_PER_CPU)
    }
}

fn page_round(n: usize) -> usize {
    n.div_ceil(4096) * 4096
}

/// Everything the kernel sends, read as one time-ordered stream.
pub struct Events {
    merger: Merger,
    /// The reader's clock at the last drain.
    last_drain_ns: u64,
    _mappings: [Mapping; 3],
    samples: RingBuf<MapData>,
    held: HeldSamples,
}

/// The k-way merge of the lanes by time (see the module documentation).
struct Merger {
    lanes: Vec<Lane>,
    /// Lanes with a record ready, by the time of that record.
    heads: BinaryHeap<Reverse<(u64, usize)>>,
    /// Highest timestamp handed out so far.
    high_water: u64,
    counters: LaneCounters,
    /// Time of the oldest record shed since the last
    /// [`Events::take_shed_since`].
    shed_since: Option<u64>,
}

impl Events {
    /// Maps the lanes and takes the samples ring.
    pub fn new(
        layout: LaneLayout,
        lanes: MapData,
        nested: MapData,
        ctl: MapData,
        samples: RingBuf<MapData>,
    ) -> std::io::Result<Events> {
        let chunked = Mapping::new(lanes, page_round(layout.chunked_bytes()), false)?;
        let nested = Mapping::new(nested, page_round(layout.nested_bytes()), false)?;
        let ctl_len = page_round(layout.lanes() as usize * std::mem::size_of::<LaneCtl>());
        let ctl = Mapping::new(ctl, ctl_len, true)?;
        let packet_bytes = layout.chunks as usize * LANE_CHUNK;
        let op_bytes = layout.op_chunks as usize * LANE_CHUNK;
        let cpus = layout.cpus as usize;
        let mut out = Vec::with_capacity(layout.lanes() as usize);
        for i in 0..layout.lanes() as usize {
            let (base, bytes, chunk) = if i < cpus {
                // SAFETY: inside the chunked mapping (packet lanes first).
                let base = unsafe { chunked.ptr.add(i * packet_bytes) };
                (base as *const u8, packet_bytes as u64, LANE_CHUNK as u64)
            } else if i < 2 * cpus {
                // SAFETY: inside the chunked mapping (op lanes after them).
                let base = unsafe { chunked.ptr.add(cpus * packet_bytes + (i - cpus) * op_bytes) };
                (base as *const u8, op_bytes as u64, LANE_CHUNK as u64)
            } else {
                let j = i - 2 * cpus;
                // SAFETY: inside the nested mapping.
                let base = unsafe { nested.ptr.add(j * NESTED_LANE) };
                (base as *const u8, NESTED_LANE as u64, NESTED_LANE as u64)
            };
            // SAFETY: inside the control mapping.
            let ctl = unsafe { (ctl.ptr as *mut LaneCtl).add(i) };
            // SAFETY: the lane and its control block, mapped for as long as
            // the Events lives.
            out.push(unsafe { Lane::new(base, bytes, chunk, ctl) });
        }
        Ok(Events {
            merger: Merger::new(out),
            last_drain_ns: 0,
            _mappings: [chunked, nested, ctl],
            samples,
            held: HeldSamples::default(),
        })
    }

    /// The reader's counters.
    pub fn counters(&self) -> &LaneCounters {
        &self.merger.counters
    }

    /// Time of the oldest call or packet record shed since the last call
    /// (`None`: none was): what it carried is lost to the parsers.
    pub fn take_shed_since(&mut self) -> Option<u64> {
        self.merger.shed_since.take()
    }

    /// Hands every record older than `now_ns - HOLD_NS` to `f`, in time
    /// order, CPU samples included.
    ///
    /// When the agent falls behind a lane (more than five eighths of it
    /// waiting), its call and packet records are passed over, counted, until
    /// less than three eighths wait: the kernel keeps the last quarter of
    /// every lane for connection records, and they must be read, not lost,
    /// however far behind the agent is on payload.
    pub fn drain(&mut self, now_ns: u64, f: &mut impl FnMut(&[u8])) {
        self.drain_until(now_ns.saturating_sub(HOLD_NS), f);
    }

    /// Hands out every record there is (the agent is stopping).
    pub fn drain_all(&mut self, f: &mut impl FnMut(&[u8])) {
        self.drain_until(u64::MAX, f);
    }

    fn drain_until(&mut self, until: u64, f: &mut impl FnMut(&[u8])) {
        let now = until.saturating_add(HOLD_NS);
        if self.last_drain_ns != 0 && until != u64::MAX {
            let gap = now.saturating_sub(self.last_drain_ns) / 1_000_000;
            let c = &mut self.merger.counters;
            c.longest_gap_ms = c.longest_gap_ms.max(gap);
        }
        self.last_drain_ns = now;
        let held = &mut self.held;
        while let Some(item) = self.samples.next() {
            if item.first() != Some(&(Tag::Wakeup as u8)) {
                held.hold(&item, &mut self.merger.counters, f);
            }
        }
        merge_with_samples(&mut self.merger, held, until, f);
    }
}

/// The lanes' records up to `until`, each preceded by the held samples
/// taken before it, then the rest of the samples up to `until`.
fn merge_with_samples(
    merger: &mut Merger,
    held: &mut HeldSamples,
    until: u64,
    f: &mut impl FnMut(&[u8]),
) {
    held.sort();
    merger.drain_until(until, &mut |rec: &[u8]| {
        // Most drains hold no sample: no time read per record then.
        if !held.queue.is_empty() {
            if let Some(ts) = record_ts(rec) {
                held.release_until(ts, f);
            }
        }
        f(rec);
    });
    held.release_until(until, f);
}

impl Lane {
    /// A lane of `bytes` bytes (a ring of `chunk`-sized chunks) at `base`,
    /// read from the consumer position in `ctl`.
    ///
    /// # Safety
    /// `base .. base + bytes` and `ctl` must stay valid while the lane is
    /// read.
    unsafe fn new(base: *const u8, bytes: u64, chunk: u64, ctl: *mut LaneCtl) -> Lane {
        // SAFETY: the caller's promise.
        let pos = unsafe { (*ctl).cons };
        Lane {
            shedding: false,
            base,
            bytes,
            chunk,
            ctl,
            pos,
            published: pos,
            prod: pos,
            head_len: 0,
        }
    }
}

impl Merger {
    fn new(lanes: Vec<Lane>) -> Merger {
        Merger {
            lanes,
            heads: BinaryHeap::new(),
            high_water: 0,
            shed_since: None,
            counters: LaneCounters::default(),
        }
    }

    /// Hands out, in time order, every record up to time `until`.
    fn drain_until(&mut self, until: u64, f: &mut impl FnMut(&[u8])) {
        self.heads.clear();
        self.refresh(true);
        // The oldest head among the lanes, while it is old enough.
        let mut since_refresh = 0;
        while let Some(&Reverse((ts, i))) = self.heads.peek() {
            if ts > until {
                break;
            }
            if ts < self.high_water {
                self.counters.records_late += 1;
            } else {
                self.high_water = ts;
            }
            self.heads.pop();
            let lane = &mut self.lanes[i];
            let (rec, next) = lane_record(lane);
            let shed = match rec.first() {
                Some(&t) if lane.shedding && t == Tag::SockOp as u8 => {
                    self.counters.shed_op += 1;
                    true
                }
                Some(&t) if lane.shedding && t == Tag::Segment as u8 => {
                    self.counters.shed_segment += 1;
                    true
                }
                _ => {
                    f(rec);
                    false
                }
            };
            if shed {
                self.shed_since = Some(self.shed_since.map_or(ts, |s| s.min(ts)));
            }
            lane.pos = next;
            if let Some(ts) = lane_head(lane, &mut self.counters) {
                self.heads.push(Reverse((ts, i)));
            }
            // A long drain (the stages are slow) gives the programs room
            // and looks again how far behind each lane is.
            since_refresh += 1;
            if since_refresh == REFRESH_EVERY {
                since_refresh = 0;
                self.refresh(false);
            }
        }
        self.publish_cons();
    }

    /// Reads each lane's producer position, decides whether to shed its
    /// payload records, and puts lanes with a record ready (and none in
    /// the heap yet, unless `all`) into the heap.
    fn refresh(&mut self, all: bool) {
        if !all {
            self.publish_cons();
        }
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            let had_head = lane.pos < lane.prod;
            // SAFETY: the lane's control block; `prod` is published by the
            // programs after the frames it covers.
            lane.prod =
                unsafe { AtomicU64::from_ptr(&mut (*lane.ctl).prod) }.load(Ordering::Acquire);
            let waiting = lane.prod.saturating_sub(lane.pos);
            let c = &mut self.counters;
            c.peak_fill_percent = c.peak_fill_percent.max(waiting * 100 / lane.bytes);
            if waiting > lane.bytes / 8 * 5 {
                lane.shedding = true;
            } else if waiting < lane.bytes / 8 * 3 {
                lane.shedding = false;
            }
            if all || !had_head {
                if let Some(ts) = lane_head(lane, &mut self.counters) {
                    self.heads.push(Reverse((ts, i)));
                }
            }
        }
    }

    /// Gives the frames read so far back to the programs (a lane nothing
    /// was read from is not written: its cache line stays shared).
    fn publish_cons(&mut self) {
        for lane in self.lanes.iter_mut().filter(|l| l.pos != l.published) {
            // SAFETY: the lane's control block; the frames before `pos`
            // are no longer read.
            unsafe { AtomicU64::from_ptr(&mut (*lane.ctl).cons) }
                .store(lane.pos, Ordering::Release);
            lane.published = lane.pos;
        }
    }
}

/// Records handed out between two looks at the producers during a drain.
const REFRESH_EVERY: u32 = 256;

/// The timestamp of the lane's next record, skipping the unused ends of
/// chunks (its frame's length kept for [`lane_record`]); `None` when the
/// lane has nothing more published.
fn lane_head(lane: &mut Lane, counters: &mut LaneCounters) -> Option<u64> {
    loop {
        if lane.pos >= lane.prod {
            return None;
        }
        let off = lane.pos % lane.bytes;
        let in_chunk = off % lane.chunk;
        // SAFETY: off < bytes: inside the lane; frames are 8-aligned.
        let len =
            unsafe { std::ptr::read_volatile(lane.base.add(off as usize) as *const u32) } as u64;
        if len == 0 {
            lane.pos += lane.chunk - in_chunk;
            continue;
        }
        if len < FRAME_HDR as u64 + 1
            || len > MAX_FRAME as u64
            || !len.is_multiple_of(8)
            || in_chunk + len > lane.chunk
            || lane.pos + len > lane.prod
        {
            counters.frames_corrupt += 1;
            lane.pos = lane.prod;
            return None;
        }
        // SAFETY: the frame lies inside the lane (checked above).
        let rec = unsafe {
            std::slice::from_raw_parts(
                lane.base.add(off as usize + FRAME_HDR),
                len as usize - FRAME_HDR,
            )
        };
        lane.head_len = len;
        return Some(record_ts(rec).unwrap_or(0));
    }
}

/// The lane's next record (after `lane_head` returned its time) and the
/// position after it.
fn lane_record(lane: &Lane) -> (&[u8], u64) {
    let off = lane.pos % lane.bytes;
    let len = lane.head_len as usize;
    // SAFETY: the frame lane_head checked.
    let rec = unsafe {
        std::slice::from_raw_parts(lane.base.add(off as usize + FRAME_HDR), len - FRAME_HDR)
    };
    (rec, lane.pos + lane.head_len)
}

impl AsRawFd for Events {
    /// The samples ring, which the programs also use to wake the reader.
    fn as_raw_fd(&self) -> RawFd {
        self.samples.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{ConnState, SockOp};

    /// A lane in ordinary memory, written the way the programs write.
    struct TestLane {
        buf: Vec<u64>,
        ctl: Box<LaneCtl>,
        chunk: u64,
    }

    impl TestLane {
        fn new(bytes: usize, chunk: u64) -> TestLane {
            TestLane {
                buf: vec![0; bytes / 8],
                ctl: Box::default(),
                chunk,
            }
        }

        fn bytes(&self) -> u64 {
            self.buf.len() as u64 * 8
        }

        /// Publishes one record (framed, chunk ends padded).
        fn push(&mut self, rec: &[u8]) {
            let frame = tracer_common::frame_len(rec.len()) as u64;
            let lane_bytes = self.bytes();
            let mut pos = self.ctl.prod;
            let in_chunk = pos % self.chunk;
            if in_chunk + frame > self.chunk {
                self.buf[((pos % lane_bytes) / 8) as usize] = 0;
                pos += self.chunk - in_chunk;
            }
            assert!(pos + frame <= self.ctl.cons + lane_bytes, "test lane full");
            let off = (pos % lane_bytes) as usize;
            let bytes: &mut [u8] = bytemuck_bytes(&mut self.buf);
            bytes[off..off + 8].copy_from_slice(&frame.to_le_bytes());
            bytes[off + 8..off + 8 + rec.len()].copy_from_slice(rec);
            self.ctl.prod = pos + frame;
        }

        fn lane(&mut self) -> Lane {
            let bytes = self.bytes();
            // SAFETY: the test keeps the buffer and control block alive and
            // in place while the merger reads them.
            unsafe {
                Lane::new(
                    self.buf.as_ptr() as *const u8,
                    bytes,
                    self.chunk,
                    &mut *self.ctl,
                )
            }
        }
    }

    fn bytemuck_bytes(v: &mut [u64]) -> &mut [u8] {
        // SAFETY: u64 memory viewed as bytes.
        unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 8) }
    }

    fn as_bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: a repr(C) record viewed as bytes.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, size_of::<T>()).to_vec() }
    }

    fn op(ts: u64) -> Vec<u8> {
        as_bytes(&SockOp {
            tag: Tag::SockOp as u8,
            dir: 0,
            _pad: [0; 2],
            len: 1,
            ts_ns: ts,
            cookie: 1,
            pid: 1,
            tid: 1,
            seq_end: 1,
            _pad2: 0,
            comm: [0; 16],
        })
    }

    fn state(ts: u64) -> Vec<u8> {
        as_bytes(&ConnState {
            tag: Tag::ConnState as u8,
            family: 2,
            old_state: 2,
            new_state: 1,
            local_port: 1,
            remote_port: 2,
            ts_ns: ts,
            cookie: 1,
            pid: 1,
            tid: 1,
            local_addr: [0; 16],
            remote_addr: [0; 16],
        })
    }

    fn times(m: &mut Merger, until: u64) -> Vec<u64> {
        let mut out = Vec::new();
        m.drain_until(until, &mut |r| out.push(record_ts(r).unwrap()));
        out
    }

    use std::mem::size_of;

    #[test]
    fn lanes_merge_in_time_order_and_young_records_wait() {
        let (mut a, mut b) = (TestLane::new(4096, 4096), TestLane::new(4096, 4096));
        for t in [10, 30, 50] {
            a.push(&op(t));
        }
        for t in [20, 40] {
            b.push(&state(t));
        }
        let mut m = Merger::new(vec![a.lane(), b.lane()]);
        assert_eq!(times(&mut m, 35), vec![10, 20, 30]);
        assert_eq!(a.ctl.cons, 2 * 64, "read frames given back");
        assert_eq!(times(&mut m, u64::MAX), vec![40, 50]);
        assert_eq!(m.counters.records_late, 0);
    }

    fn sample(ts: u64) -> Vec<u8> {
        // SAFETY: a plain-data record; all zeroes is a valid value.
        let mut h: tracer_common::SampleHeader = unsafe { std::mem::zeroed() };
        h.tag = Tag::Sample as u8;
        h.ts_ns = ts;
        as_bytes(&h)
    }

    #[test]
    fn samples_go_out_in_time_order_among_the_lanes_records() {
        let (mut a, mut b) = (TestLane::new(4096, 4096), TestLane::new(4096, 4096));
        for t in [10, 30, 50] {
            a.push(&op(t));
        }
        b.push(&state(40));
        let mut m = Merger::new(vec![a.lane(), b.lane()]);
        let mut held = HeldSamples::default();
        let mut c = LaneCounters::default();
        let mut out = Vec::new();
        // As two CPUs' samples come from their ring: not in time order.
        for t in [45, 5, 35, 60] {
            held.hold(&sample(t), &mut c, &mut |_| unreachable!());
        }
        let mut take = |r: &[u8]| out.push((r[0] == Tag::Sample as u8, record_ts(r).unwrap()));
        merge_with_samples(&mut m, &mut held, 55, &mut take);
        // The sample of 60 waits, as the lanes' younger records do.
        merge_with_samples(&mut m, &mut held, u64::MAX, &mut take);
        let want = [
            (true, 5),
            (false, 10),
            (false, 30),
            (true, 35),
            (false, 40),
            (true, 45),
            (false, 50),
            (true, 60),
        ];
        assert_eq!(out, want);
        assert_eq!(
            (c.samples_unordered, held.bytes, held.spare.len()),
            (0, 0, 4)
        );
    }

    #[test]
    fn too_many_held_samples_go_out_at_once_and_are_counted() {
        let mut held = HeldSamples::default();
        let mut c = LaneCounters::default();
        let mut early = Vec::new();
        let n = MAX_HELD_SAMPLE_BYTES / sample(0).len() + 3;
        for t in 0..n as u64 {
            held.hold(&sample(t), &mut c, &mut |r| {
                early.push(record_ts(r).unwrap())
            });
        }
        assert_eq!(early, vec![0, 1, 2]);
        assert_eq!(c.samples_unordered, 3);
        assert!(held.bytes <= MAX_HELD_SAMPLE_BYTES);
    }

    #[test]
    fn chunk_ends_are_skipped_and_the_ring_wraps() {
        // Four chunks of 160 bytes: two 64-byte frames per chunk, 32 bytes
        // left unused at each chunk end; 50 frames go round many times.
        let mut a = TestLane::new(640, 160);
        let mut m = Merger::new(vec![a.lane()]);
        let mut seen = Vec::new();
        for t in 1..=50u64 {
            a.push(&op(t));
            if t % 3 == 0 {
                seen.extend(times(&mut m, u64::MAX));
            }
        }
        seen.extend(times(&mut m, u64::MAX));
        assert_eq!(seen, (1..=50).collect::<Vec<_>>());
        assert_eq!((m.counters.frames_corrupt, m.counters.shed_op), (0, 0));
    }

    #[test]
    fn a_record_older_than_those_handed_out_is_counted_late() {
        let (mut a, mut b) = (TestLane::new(4096, 4096), TestLane::new(4096, 4096));
        a.push(&op(100));
        let mut m = Merger::new(vec![a.lane(), b.lane()]);
        assert_eq!(times(&mut m, u64::MAX), vec![100]);
        b.push(&op(50));
        assert_eq!(times(&mut m, u64::MAX), vec![50]);
        assert_eq!(m.counters.records_late, 1);
    }

    #[test]
    fn far_behind_payload_records_are_passed_over_but_not_connection_records() {
        let mut a = TestLane::new(64 * 16, 64 * 16);
        // 11 of 16 frames waiting: more than five eighths.
        for t in 1..=11 {
            if t % 4 == 0 {
                a.push(&state(t));
            } else {
                a.push(&op(t));
            }
        }
        let mut m = Merger::new(vec![a.lane()]);
        let got = times(&mut m, u64::MAX);
        assert_eq!(got, vec![4, 8], "connection records only");
        assert_eq!(m.counters.shed_op, 9);
        assert_eq!(
            m.shed_since.take(),
            Some(1),
            "the oldest shed, for the loss report"
        );
        // Caught up: payload records are read again.
        a.push(&op(12));
        assert_eq!(times(&mut m, u64::MAX), vec![12]);
        assert_eq!(m.shed_since, None);
    }

    #[test]
    fn a_nonsense_frame_skips_the_rest_of_its_lane() {
        let mut a = TestLane::new(4096, 4096);
        a.push(&op(1));
        a.push(&op(2));
        // Corrupt the second frame's length.
        bytemuck_bytes(&mut a.buf)[64..72].copy_from_slice(&7u64.to_le_bytes());
        let mut m = Merger::new(vec![a.lane()]);
        assert_eq!(times(&mut m, u64::MAX), vec![1]);
        assert_eq!(m.counters.frames_corrupt, 1);
        assert_eq!(a.ctl.cons, a.ctl.prod, "the lane was given back");
    }
}
