//! Writing records into this CPU's lanes (see the lane section of
//! `tracer_common`): no lock, no cache line shared with another CPU.
//!
//! - the packet programs (cgroup_skb) and the state program run in process
//!   context or in a softirq that may interrupt one of them on the same
//!   CPU: each CPU counts these programs running on it (an atomic counter),
//!   the outermost writes to the CPU's packet lane, the ones nested in it to
//!   one of two small nested lanes;
//! - the call programs (tracepoints) run with preemption off and never in
//!   interrupts: they write to the packet lane when it is free (no packet
//!   program under them on the CPU), else to the CPU's op lane.
//!
//! [`reserve_op`] / [`reserve_packet`] find room for a frame of at most
//! `MAX` bytes; the program writes the record after the frame header and
//! [`Held::publish`]es it with its real length, or drops the [`Held`] to
//! publish nothing. A record's time is taken while the lane is held, so the
//! records of a lane are in time order.
use core::intrinsics::{atomic_xadd, atomic_xchg, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::generated::bpf_get_smp_processor_id,
    macros::map,
    maps::{Array, PerCpuArray},
};
use tracer_common::{
    DropReason, KernelStat, LaneCtl, FRAME_HDR, LANE_CHUNK, NESTED_LANE, NESTED_PER_CPU,
};

use crate::{
    add_stat, count_drop, global, wake_reader, LANE_MASK, NR_CPUS, OP_LANE_MASK, OP_WAKE_SHIFT,
    STRICT_PUBLISH, WAKE_SHIFT,
};

/// One chunk of a packet or op lane.
#[repr(C)]
pub struct Chunk([u8; LANE_CHUNK]);

/// A nested lane.
#[repr(C)]
pub struct NestedChunk([u8; NESTED_LANE]);

/// Packet lanes (`NR_CPUS * (LANE_MASK + 1)` chunks), then op lanes
/// (`NR_CPUS * (OP_LANE_MASK + 1)` chunks); the size is set at load.
#[map]
static LANES: Array<Chunk> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Nested lanes: `NR_CPUS * NESTED_PER_CPU`, set at load.
#[map]
static NESTED: Array<NestedChunk> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Positions: packet lanes (one per CPU id), op lanes, nested lanes.
#[map]
static LANE_CTL: Array<LaneCtl> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Packet programs running on this CPU right now (the outermost is 1).
/// 64-bit and sequentially consistent: for a relaxed 32-bit fetch-and-add,
/// LLVM's BPF backend emits an add that does not fetch (and the "old
/// value" is then the operand).
#[map]
static NEST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Set while a call program writes to this CPU's op lane.
#[map]
static OP_BUSY: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Nested lanes wake the reader every quarter lane.
const NESTED_WAKE_SHIFT: u32 = NESTED_LANE.trailing_zeros() - 2;

enum Release {
    /// Leave the CPU's packet-program count (atomically).
    Nest(*mut u64),
    /// Clear a flag of the CPU (a call program's hold on a lane).
    Plain(*mut u64),
}

/// Room for one frame in a lane, held by the running program.
pub struct Held {
    release: Release,
    ctl: *mut LaneCtl,
    frame: *mut u8,
    /// Position of the frame.
    pos: u64,
    /// `prod` before this frame (and the padding before it).
    start: u64,
    /// The reader is woken when `prod` crosses a multiple of 1 << this.
    wake_shift: u32,
}

/// Why no room was found.
enum NoRoom {
    /// The lane is full (the reader is behind): the record is lost.
    Full,
    /// Nested deeper than the lanes go, or no lane for this CPU (counted).
    NoLane,
}

#[inline(always)]
fn leave(nest: *mut u64) {
    // SAFETY: this CPU's counter, a valid per-CPU map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(nest, u64::MAX) };
}

/// Room for a call record (see [`try_reserve_op`]); a full lane counts
/// the record as lost under `full`.
#[inline(always)]
pub fn reserve_op<const MAX: usize>(full: DropReason) -> Option<Held> {
    counted(try_reserve_op::<MAX>(), full)
}

/// Room for a packet or connection record (see [`try_reserve_packet`]); a
/// full lane counts the record as lost under `full`.
#[inline(always)]
pub fn reserve_packet<const MAX: usize>(data: bool, full: DropReason) -> Option<Held> {
    counted(try_reserve_packet::<MAX>(data), full)
}

#[inline(always)]
fn counted(r: Result<Held, NoRoom>, full: DropReason) -> Option<Held> {
    match r {
        Ok(h) => Some(h),
        Err(NoRoom::Full) => {
            count_drop(full);
            None
        }
        // Counted where it happened, when it is a loss.
        Err(NoRoom::NoLane) => None,
    }
}

/// Finds room for a call record (at most `MAX` bytes): in this CPU's packet
/// lane when no packet program is running on the CPU (the common case: one
/// write frontier per CPU keeps the lane's cache lines warm), else in its
/// op lane.
///
/// Call programs run with preemption off and never in interrupts, so none
/// can interrupt a packet program or another call program on its CPU, and
/// plain loads and stores of the CPU's counters suffice here: a packet
/// program that interrupts this one either finishes before this one takes
/// the packet lane, or sees it taken and goes to a nested lane.
#[inline(always)]
fn try_reserve_op<const MAX: usize>() -> Result<Held, NoRoom> {
    let nest = NEST.get_ptr_mut(0).ok_or(NoRoom::NoLane)?;
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let ncpus = global(&NR_CPUS);
    if cpu >= ncpus {
        return Err(NoRoom::NoLane);
    }
    // SAFETY: this CPU's counter (see above).
    if unsafe { core::ptr::read_volatile(nest) } == 0 {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(nest, 1) };
        let mask = global(&LANE_MASK);
        return match chunked::<MAX>(cpu, cpu * (mask + 1), mask, true) {
            Ok((ctl, frame, pos, start)) => Ok(Held {
                release: Release::Plain(nest),
                ctl,
                frame,
                pos,
                start,
                wake_shift: global(&WAKE_SHIFT),
            }),
            Err(e) => {
                // SAFETY: as above.
                unsafe { core::ptr::write_volatile(nest, 0) };
                Err(e)
            }
        };
    }
    let busy = OP_BUSY.get_ptr_mut(0).ok_or(NoRoom::NoLane)?;
    // SAFETY: this CPU's flag; it only guards the assumption above.
    unsafe {
        if *busy != 0 {
            count_drop(DropReason::NestedTooDeep);
            return Err(NoRoom::NoLane);
        }
        *busy = 1;
    }
    let mask = global(&OP_LANE_MASK);
    let base = ncpus * (global(&LANE_MASK) + 1) + cpu * (mask + 1);
    match chunked::<MAX>(ncpus + cpu, base, mask, true) {
        Ok((ctl, frame, pos, start)) => Ok(Held {
            release: Release::Plain(busy),
            ctl,
            frame,
            pos,
            start,
            wake_shift: global(&OP_WAKE_SHIFT),
        }),
        Err(e) => {
            // SAFETY: as above.
            unsafe { *busy = 0 };
            Err(e)
        }
    }
}

/// Finds room for a packet or connection record (at most `MAX` bytes, a
/// multiple of 8, at most `tracer_common::MAX_FRAME`) in the lane of this
/// CPU and nesting depth. Call and packet records (`data`) leave the last
/// quarter of a lane free; connection records may use it, so that a flood
/// of payload the agent cannot keep up with never crowds them out.
#[inline(always)]
fn try_reserve_packet<const MAX: usize>(data: bool) -> Result<Held, NoRoom> {
    let nest = NEST.get_ptr_mut(0).ok_or(NoRoom::NoLane)?;
    // SAFETY: this CPU's counter. An atomic add: a program that interrupts
    // this one (or, on a preemptible kernel, preempts it) between a load and
    // a store must not be lost.
    let depth = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(nest, 1) } as u32;
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let ncpus = global(&NR_CPUS);
    let r = if cpu >= ncpus {
        Err(NoRoom::NoLane)
    } else if depth == 0 {
        let mask = global(&LANE_MASK);
        chunked::<MAX>(cpu, cpu * (mask + 1), mask, data).map(|r| (r, global(&WAKE_SHIFT)))
    } else if depth <= NESTED_PER_CPU {
        add_stat(KernelStat::NestedRecords, 1);
        let lane = cpu * NESTED_PER_CPU + depth - 1;
        nested::<MAX>(2 * ncpus + lane, lane, data).map(|r| (r, NESTED_WAKE_SHIFT))
    } else {
        count_drop(DropReason::NestedTooDeep);
        Err(NoRoom::NoLane)
    };
    match r {
        Ok(((ctl, frame, pos, start), wake_shift)) => Ok(Held {
            release: Release::Nest(nest),
            ctl,
            frame,
            pos,
            start,
            wake_shift,
        }),
        Err(e) => {
            leave(nest);
            Err(e)
        }
    }
}

type Room = (*mut LaneCtl, *mut u8, u64, u64);

/// Room in the lane whose positions are at `ctl_index` and whose `mask + 1`
/// chunks start at chunk `base` of `LANES`; a `data` record leaves the last
/// quarter of the lane free.
#[inline(always)]
fn chunked<const MAX: usize>(
    ctl_index: u32,
    base: u32,
    mask: u32,
    data: bool,
) -> Result<Room, NoRoom> {
    let ctl = LANE_CTL.get_ptr_mut(ctl_index).ok_or(NoRoom::NoLane)?;
    // SAFETY: map value; `prod` is written only by the program holding
    // the lane (this one), `cons` by the agent (a stale value only
    // understates the room).
    let (start, cons) = unsafe {
        (
            core::ptr::read_volatile(&(*ctl).prod),
            core::ptr::read_volatile(&(*ctl).cons),
        )
    };
    let lane_bytes = (u64::from(mask) + 1) * LANE_CHUNK as u64;
    // Positions are multiples of 8; the mask keeps that visible.
    let mut off = (start & (LANE_CHUNK as u64 - 8)) as usize;
    let mut pos = start;
    let pad = if off > LANE_CHUNK - MAX {
        (LANE_CHUNK - off) as u64
    } else {
        0
    };
    let room = if data {
        lane_bytes - lane_bytes / 4
    } else {
        lane_bytes
    };
    if pos + pad + MAX as u64 > cons + room {
        return Err(NoRoom::Full);
    }
    let index = |pos: u64| base + ((pos / LANE_CHUNK as u64) as u32 & mask);
    if pad > 0 {
        let chunk = LANES.get_ptr_mut(index(pos)).ok_or(NoRoom::NoLane)?;
        // SAFETY: off <= LANE_CHUNK - 8: a zero-length frame ends the chunk.
        unsafe { core::ptr::write_volatile((chunk as *mut u8).add(off) as *mut u64, 0) };
        pos += pad;
        off = 0;
    }
    let chunk = LANES.get_ptr_mut(index(pos)).ok_or(NoRoom::NoLane)?;
    let off = within::<MAX>(off, LANE_CHUNK)?;
    // SAFETY: off <= LANE_CHUNK - MAX: the frame fits in the chunk.
    Ok((ctl, unsafe { (chunk as *mut u8).add(off) }, pos, start))
}

/// Room in nested lane `lane` (its positions at `ctl_index`).
#[inline(always)]
fn nested<const MAX: usize>(ctl_index: u32, lane: u32, data: bool) -> Result<Room, NoRoom> {
    let ctl = LANE_CTL.get_ptr_mut(ctl_index).ok_or(NoRoom::NoLane)?;
    let chunk = NESTED.get_ptr_mut(lane).ok_or(NoRoom::NoLane)? as *mut u8;
    // SAFETY: as in `chunked`.
    let (start, cons) = unsafe {
        (
            core::ptr::read_volatile(&(*ctl).prod),
            core::ptr::read_volatile(&(*ctl).cons),
        )
    };
    let mut off = (start & (NESTED_LANE as u64 - 8)) as usize;
    let mut pos = start;
    let pad = if off > NESTED_LANE - MAX {
        (NESTED_LANE - off) as u64
    } else {
        0
    };
    let room = if data {
        NESTED_LANE - NESTED_LANE / 4
    } else {
        NESTED_LANE
    } as u64;
    if pos + pad + MAX as u64 > cons + room {
        return Err(NoRoom::Full);
    }
    if pad > 0 {
        // SAFETY: off <= NESTED_LANE - 8.
        unsafe { core::ptr::write_volatile(chunk.add(off) as *mut u64, 0) };
        pos += pad;
        off = 0;
    }
    let off = within::<MAX>(off, NESTED_LANE)?;
    // SAFETY: off <= NESTED_LANE - MAX.
    Ok((ctl, unsafe { chunk.add(off) }, pos, start))
}

/// `off`, checked again (it always holds) right where the frame's pointer
/// is formed: the compiler may test a copy of `off` and spill the value
/// itself, and 6.1's verifier does not carry a test over to a value
/// reloaded from the stack, so the pointer's bound would be lost. The
/// opaque copy keeps the compiler from dropping the test as redundant.
#[inline(always)]
fn within<const MAX: usize>(off: usize, lane: usize) -> Result<usize, NoRoom> {
    let off = core::hint::black_box(off);
    if off > lane - MAX {
        return Err(NoRoom::NoLane);
    }
    Ok(off)
}

impl Held {
    /// Where the record goes (8-aligned, `MAX - FRAME_HDR` bytes of room).
    #[inline(always)]
    pub fn record(&self) -> *mut u8 {
        // SAFETY: inside the frame reserved.
        unsafe { self.frame.add(FRAME_HDR) }
    }

    /// Publishes a record of `len` bytes (at most the room reserved).
    #[inline(always)]
    pub fn publish(self, len: usize) {
        let frame = tracer_common::frame_len(len) as u64;
        let prod = self.pos + frame;
        // SAFETY: the frame header is inside the reserved room; `prod` is
        // written after the record. On x86 stores are not reordered with
        // one another, so a plain store publishes; elsewhere the agent sets
        // STRICT_PUBLISH and an atomic exchange (a full barrier) does.
        unsafe {
            core::ptr::write_volatile(self.frame as *mut u64, frame);
            if global(&STRICT_PUBLISH) != 0 {
                atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(&mut (*self.ctl).prod, prod);
            } else {
                core::ptr::write_volatile(&mut (*self.ctl).prod, prod);
            }
        }
        if (prod >> self.wake_shift) != (self.start >> self.wake_shift) {
            wake_reader();
        }
        // Drop leaves the lane.
    }
}

impl Drop for Held {
    #[inline(always)]
    fn drop(&mut self) {
        match self.release {
            Release::Nest(nest) => leave(nest),
            // SAFETY: this CPU's flag.
            Release::Plain(flag) => unsafe { core::ptr::write_volatile(flag, 0) },
        }
    }
}
