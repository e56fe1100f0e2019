//! Writing records into this CPU's lane (see the lane section of
//! `tracer_common`): no lock, no cache line shared with another CPU.
//!
//! [`reserve`] counts the program in on its CPU and finds room for a frame
//! of at most `MAX` bytes in the lane that belongs to its nesting depth;
//! the program writes the record after the frame header and [`Held::publish`]es
//! it with its real length, or drops the [`Held`] to publish nothing. The
//! time of a record is taken while the lane is held, so the records of a
//! lane are in time order.
use core::intrinsics::{atomic_xadd, atomic_xchg, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::generated::bpf_get_smp_processor_id,
    macros::map,
    maps::{Array, PerCpuArray},
};
use tracer_common::{DropReason, LaneCtl, FRAME_HDR, LANE_CHUNK, NESTED_LANE, NESTED_PER_CPU};

use crate::{count_drop, global, wake_reader, LANE_MASK, NR_CPUS, WAKEUP_BYTES};

/// One chunk of a primary lane.
#[repr(C)]
pub struct Chunk([u8; LANE_CHUNK]);

/// A nested lane.
#[repr(C)]
pub struct NestedChunk([u8; NESTED_LANE]);

/// Primary lanes: `NR_CPUS * (LANE_MASK + 1)` chunks, set at load.
#[map]
static LANES: Array<Chunk> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Nested lanes: `NR_CPUS * NESTED_PER_CPU`, set at load.
#[map]
static NESTED: Array<NestedChunk> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Positions: primary lanes (one per CPU id), then nested lanes.
#[map]
static LANE_CTL: Array<LaneCtl> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Programs running on this CPU right now (the outermost is 1). 64-bit and
/// sequentially consistent: for a relaxed 32-bit fetch-and-add, LLVM's BPF
/// backend emits an add that does not fetch (and the "old value" is then
/// the operand).
#[map]
static NEST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Room for one frame in a lane, held by the running program.
pub struct Held {
    nest: *mut u64,
    ctl: *mut LaneCtl,
    frame: *mut u8,
    pos: u64,
    /// Published bytes after which the reader is woken.
    wake_at: u64,
}

/// Why no room was found.
pub enum NoRoom {
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

/// Finds room for a frame of at most `MAX` bytes (a multiple of 8, at most
/// `tracer_common::MAX_FRAME`).
#[inline(always)]
pub fn reserve<const MAX: usize>() -> Result<Held, NoRoom> {
    let nest = NEST.get_ptr_mut(0).ok_or(NoRoom::NoLane)?;
    // SAFETY: this CPU's counter. An atomic add: a program that interrupts
    // this one between a load and a store must not be lost.
    let depth = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(nest, 1) } as u32;
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let ncpus = global(&NR_CPUS);
    if cpu >= ncpus {
        leave(nest);
        return Err(NoRoom::NoLane);
    }
    // The reader is woken once a quarter of the lane waits, at the latest.
    let wake = global(&WAKEUP_BYTES);
    let (r, lane_bytes) = if depth == 0 {
        let mask = global(&LANE_MASK);
        let bytes = (u64::from(mask) + 1) * LANE_CHUNK as u64;
        (primary::<MAX>(cpu, mask), bytes)
    } else if depth <= NESTED_PER_CPU {
        let lane = cpu * NESTED_PER_CPU + depth - 1;
        (nested::<MAX>(ncpus + lane, lane), NESTED_LANE as u64)
    } else {
        count_drop(DropReason::NestedTooDeep);
        (Err(NoRoom::NoLane), 0)
    };
    match r {
        Ok((ctl, frame, pos)) => Ok(Held {
            nest,
            ctl,
            frame,
            pos,
            wake_at: if wake < lane_bytes / 4 {
                wake
            } else {
                lane_bytes / 4
            },
        }),
        Err(e) => {
            leave(nest);
            Err(e)
        }
    }
}

/// Room in primary lane `cpu` (chunks `cpu * (mask + 1) ..`).
#[inline(always)]
fn primary<const MAX: usize>(cpu: u32, mask: u32) -> Result<(*mut LaneCtl, *mut u8, u64), NoRoom> {
    let ctl = LANE_CTL.get_ptr_mut(cpu).ok_or(NoRoom::NoLane)?;
    // SAFETY: map value; `prod` is written only by the program holding
    // the lane (this one), `cons` by the agent (a stale value only
    // understates the room).
    let (mut pos, cons) = unsafe {
        (
            core::ptr::read_volatile(&(*ctl).prod),
            core::ptr::read_volatile(&(*ctl).cons),
        )
    };
    let lane_bytes = (u64::from(mask) + 1) * LANE_CHUNK as u64;
    // Positions are multiples of 8; the mask keeps that visible.
    let mut off = (pos & (LANE_CHUNK as u64 - 8)) as usize;
    let pad = if off > LANE_CHUNK - MAX {
        (LANE_CHUNK - off) as u64
    } else {
        0
    };
    if pos + pad + MAX as u64 > cons + lane_bytes {
        return Err(NoRoom::Full);
    }
    let index = |pos: u64| cpu * (mask + 1) + ((pos / LANE_CHUNK as u64) as u32 & mask);
    if pad > 0 {
        let chunk = LANES.get_ptr_mut(index(pos)).ok_or(NoRoom::NoLane)?;
        // SAFETY: off <= LANE_CHUNK - 8: a zero-length frame ends the chunk.
        unsafe { core::ptr::write_volatile((chunk as *mut u8).add(off) as *mut u64, 0) };
        pos += pad;
        off = 0;
    }
    let chunk = LANES.get_ptr_mut(index(pos)).ok_or(NoRoom::NoLane)?;
    // SAFETY: off <= LANE_CHUNK - MAX: the frame fits in the chunk.
    Ok((ctl, unsafe { (chunk as *mut u8).add(off) }, pos))
}

/// Room in nested lane `lane` (its positions at `ctl_index`).
#[inline(always)]
fn nested<const MAX: usize>(
    ctl_index: u32,
    lane: u32,
) -> Result<(*mut LaneCtl, *mut u8, u64), NoRoom> {
    let ctl = LANE_CTL.get_ptr_mut(ctl_index).ok_or(NoRoom::NoLane)?;
    let chunk = NESTED.get_ptr_mut(lane).ok_or(NoRoom::NoLane)? as *mut u8;
    // SAFETY: as in `primary`.
    let (mut pos, cons) = unsafe {
        (
            core::ptr::read_volatile(&(*ctl).prod),
            core::ptr::read_volatile(&(*ctl).cons),
        )
    };
    let mut off = (pos & (NESTED_LANE as u64 - 8)) as usize;
    let pad = if off > NESTED_LANE - MAX {
        (NESTED_LANE - off) as u64
    } else {
        0
    };
    if pos + pad + MAX as u64 > cons + NESTED_LANE as u64 {
        return Err(NoRoom::Full);
    }
    if pad > 0 {
        // SAFETY: off <= NESTED_LANE - 8.
        unsafe { core::ptr::write_volatile(chunk.add(off) as *mut u64, 0) };
        pos += pad;
        off = 0;
    }
    // SAFETY: off <= NESTED_LANE - MAX.
    Ok((ctl, unsafe { chunk.add(off) }, pos))
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
        // SAFETY: the frame header is inside the reserved room; `prod` is
        // published with an atomic exchange, a full barrier, after the
        // record is written (the agent reads `prod` with acquire order).
        unsafe {
            core::ptr::write_volatile(self.frame as *mut u64, frame);
            atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(&mut (*self.ctl).prod, self.pos + frame);
            let unsignalled = core::ptr::read_volatile(&(*self.ctl).unsignalled) + frame;
            if unsignalled >= self.wake_at {
                core::ptr::write_volatile(&mut (*self.ctl).unsignalled, 0);
                wake_reader();
            } else {
                core::ptr::write_volatile(&mut (*self.ctl).unsignalled, unsignalled);
            }
        }
        // Drop leaves the CPU's count.
    }
}

impl Drop for Held {
    #[inline(always)]
    fn drop(&mut self) {
        leave(self.nest);
    }
}
