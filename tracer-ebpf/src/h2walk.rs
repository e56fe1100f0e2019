//! The HTTP/2 frame walk: for a socket user space marked HTTP/2, the
//! packets' frames are followed by their 9-byte heads, and what the parsers
//! need beyond the packet's first record (every frame head, the whole
//! payload of every frame but DATA up to `FRAME_KEEP`, the first
//! `DATA_KEEP` bytes of DATA) goes out as extra segment records. The
//! stream layer lets their bytes replace the truncated range the packet's
//! first record left, so a header block behind a large DATA frame in a
//! 64 KiB GSO packet reaches the HPACK decoder. Nothing here reads past a
//! frame head: the type and length decide what is copied.
//!
//! Sync is taken at a packet start whose frame heads chain, kept across
//! packets (a head split between two packets included) and lost when a
//! packet was missed or a budget ran out: the frames' bytes then reach user
//! space truncated, which its reader and HPACK decoder count as a loss.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_skb_load_bytes},
    programs::SkBuffContext,
    EbpfContext,
};
use tracer_common::{DropReason, KernelStat, SegmentHeader, MAX_FRAME, MAX_HEAD, TCP_FIN};

use crate::{add_stat, count_drop, lane, records::Seg, state::H2Walk};

const HEAD: u32 = 9;
const DATA: u8 = 0;
/// DATA bytes copied: a pad length, the 5-byte gRPC message prefix, a little.
const DATA_KEEP: u32 = 16;
/// Payload bytes copied of any other frame (HEADERS, CONTINUATION,
/// PUSH_PROMISE, SETTINGS, RST_STREAM, GOAWAY...): one record's room.
const FRAME_KEEP: u32 = MAX_HEAD as u32 - HEAD;
/// Frame heads walked per packet: about 80 small gRPC calls (HEADERS, DATA,
/// trailers; tonic answers 50 concurrent calls with 150 frames in one
/// packet). `bpf_loop` has the verifier check one frame's turn, whatever
/// the count; each turn costs a few tens of ns.
const MAX_FRAMES: u32 = 256;
/// A gap of bytes not wanted (DATA past its first bytes) at most this long
/// is copied with the ranges around it instead of starting another record:
/// small responses batched in one packet (HEADERS, a short DATA, trailers)
/// then take one record, not one each, and a packet has few records.
const MERGE_GAP: u32 = 1024;
/// A frame longer than this at a packet start does not give sync (the
/// largest frame size a peer may allow is 2^24 - 1; the usual is 16 KiB).
const SYNC_MAX_LEN: u32 = 1 << 20;
/// Highest frame type of RFC 9113 (CONTINUATION).
const MAX_TYPE: u8 = 9;

/// `n` copied from `off` in the packet to `dst` (`1..=8` bytes).
#[inline(always)]
fn load_small(ctx: &SkBuffContext, off: u32, dst: *mut u8, n: u32) -> bool {
    let n = (n.wrapping_sub(1) & 7) + 1;
    // SAFETY: dst has at least 8 bytes of room (see callers).
    unsafe { bpf_skb_load_bytes(ctx.as_ptr(), off, dst as *mut c_void, n) >= 0 }
}

/// Length and type of the frame head at `h` (at least 4 bytes).
#[inline(always)]
fn len_type(h: &[u8; 24]) -> (u32, u8) {
    (
        u32::from(h[0]) << 16 | u32::from(h[1]) << 8 | u32::from(h[2]),
        h[3],
    )
}

/// Whether a frame head at the packet's start, and the one after it when
/// the packet holds it, look like HTTP/2 frame heads.
#[inline(always)]
fn sync_at_start(ctx: &SkBuffContext, w: &mut H2Walk, base: u32, plen: u32) -> bool {
    if plen < HEAD || !load_small(ctx, base, w.head.as_mut_ptr(), 8) {
        return false;
    }
    let (len, kind) = len_type(&w.head);
    // The stream id's reserved bit is zero.
    if kind > MAX_TYPE || len > SYNC_MAX_LEN || w.head[5] & 0x80 != 0 {
        return false;
    }
    let second = HEAD + len;
    if second + 4 <= plen {
        if !load_small(ctx, base + second, w.head.as_mut_ptr(), 4) {
            return false;
        }
        let (len2, kind2) = len_type(&w.head);
        if kind2 > MAX_TYPE || len2 > SYNC_MAX_LEN {
            return false;
        }
    }
    true
}

/// The client's connection preface (RFC 9113 section 3.4).
const PREFACE_LEN: u32 = 24;

/// What the first copied bytes of a packet (at least 9) say: 1, the HTTP/2
/// client preface; 2, a SETTINGS frame (not an ACK) on stream 0, what a
/// server sends first; 0, neither. A first-bytes check, not a parser.
#[inline(always)]
pub fn starts_h2(data: *const u8) -> u32 {
    // SAFETY: at least nine bytes were copied there.
    let h = unsafe { core::ptr::read_unaligned(data as *const [u8; 9]) };
    if &h[..4] == b"PRI " {
        return 1;
    }
    let len = u32::from(h[0]) << 16 | u32::from(h[1]) << 8 | u32::from(h[2]);
    let ok = h[3] == 4 && h[4] == 0 && h[5..] == [0; 4] && len % 6 == 0 && len <= 6 * 16;
    if ok {
        2
    } else {
        0
    }
}

/// Starts the walk of a direction at a packet that `starts_h2` (`what`).
#[inline(always)]
pub fn start(w: &mut H2Walk, seq: u32, what: u32) {
    if what == 1 {
        w.sync = 1;
        w.pos = seq;
        w.next = seq.wrapping_add(PREFACE_LEN);
        w.keep_end = w.next;
        w.head_got = 0;
    } else {
        // sync_at_start takes it at this packet.
        w.sync = 0;
    }
}

/// One packet's walk, shared with the `bpf_loop` callback (one call per
/// frame: the verifier checks the callback once instead of every turn of a
/// bounded loop). What changes from turn to turn is in `H2Walk`, in map
/// memory (see there). Chunks go out as they close, from the callback: no
/// queue on the packet program's stack (the verifier bounds the stack of
/// the chain packet program, callback, `emit` at 512 bytes) and no limit
/// on how many ranges a packet has but the frame budget.
struct Walk {
    ctx: *const SkBuffContext,
    w: *mut H2Walk,
    seg: *const Seg,
    base: u32,
    /// Bytes the packet's first record captured.
    first: u32,
}

/// Walks the frames of a packet whose first record (`seg`, `first` bytes
/// captured from `base`) went out, and emits the extra records. Inlined:
/// a frame of its own would take the chain (see `Walk`) past 512 bytes of
/// stack on 6.1, though the verifier walks 100k fewer instructions so.
#[inline(always)]
pub fn walk(ctx: &SkBuffContext, w: &mut H2Walk, seg: &Seg, base: u32, first: u32) {
    let (seq, plen) = (seg.seq, seg.payload_len);
    if plen == 0 {
        return;
    }
    add_stat(KernelStat::H2Walked, 1);
    if w.sync != 0 {
        let off = w.pos.wrapping_sub(seq);
        if off >= plen {
            if (seq.wrapping_sub(w.pos) as i32) <= 0 {
                // Walked already (a retransmit): the first record has it.
                return;
            }
            // Bytes between the walk and this packet were never seen.
            add_stat(KernelStat::H2SyncLost, 1);
            w.sync = 0;
        }
    }
    if w.sync == 0 {
        if !sync_at_start(ctx, w, base, plen) {
            add_stat(KernelStat::H2Uncopied, u64::from(plen - first.min(plen)));
            return;
        }
        add_stat(KernelStat::H2Synced, 1);
        w.sync = 1;
        w.pos = seq;
        w.next = seq;
        w.keep_end = seq;
        w.head_got = 0;
    }
    let start = w.pos.wrapping_sub(seq);
    w.cs = start;
    w.ce = start;
    w.copied = 0;
    w.end = 0;
    // The wanted rest of the frame the walk was inside.
    let keep = w.keep_end.wrapping_sub(seq);
    if keep > start && keep < (1 << 31) {
        w.ce = keep.min(plen);
    }
    let st = Walk {
        ctx,
        w,
        seg,
        base,
        first,
    };
    // SAFETY: the callback only reads `st`, through the pointer, while the
    // helper runs.
    unsafe {
        bpf_loop(
            MAX_FRAMES,
            frame as *mut c_void,
            &st as *const Walk as *mut c_void,
            0,
        )
    };
    // The frames walked go out however the walk ended: a budget that ran
    // out (or a failed load) loses what follows them, not them.
    flush(&st, w);
    if w.end == 1 {
        w.pos = seq.wrapping_add(plen);
    } else {
        // Sync lost, or more frames than one walk follows.
        add_stat(KernelStat::H2SyncLost, 1);
        w.sync = 0;
        w.head_got = 0;
    }
    let rest = plen - first.min(plen);
    add_stat(KernelStat::H2Uncopied, u64::from(rest - w.copied.min(rest)));
}

/// Sends the pending chunk (the part the first record did not capture).
#[inline(always)]
fn flush(st: &Walk, w: &mut H2Walk) {
    let from = w.ce.min(w.cs.max(st.first));
    // SAFETY: the walk's context and segment outlive it.
    let (ctx, seg) = unsafe { (&*st.ctx, &*st.seg) };
    if w.ce > from && w.ce <= seg.payload_len && emit(ctx, seg, st.base, from, w.ce - from) {
        w.copied += w.ce - from;
    }
}

/// Adds `[at, end)` to the copy: merged with the pending chunk when they
/// touch (or `MERGE_GAP` apart) and fit one record, else the pending chunk
/// goes out first.
#[inline(always)]
fn add(st: &Walk, w: &mut H2Walk, at: u32, end: u32) {
    if at <= w.ce + MERGE_GAP && end.max(w.ce) - w.cs <= MAX_HEAD as u32 {
        w.ce = end.max(w.ce);
        return;
    }
    let old = w.ce;
    flush(st, w);
    // Bytes of the old chunk are not copied twice.
    w.cs = if at < old { old } else { at };
    w.ce = end;
}

/// One frame of the walk (the `bpf_loop` callback): 0 goes on, 1 stops.
extern "C" fn frame(_i: u64, p: *mut c_void) -> i64 {
    // SAFETY: the walk's state, on the caller's stack.
    let st = unsafe { &*(p as *const Walk) };
    // SAFETY: as above.
    let (ctx, seg, w) = unsafe { (&*st.ctx, &*st.seg, &mut *st.w) };
    let (seq, plen, base) = (seg.seq, seg.payload_len, st.base);
    let at; // where the frame head starts in the packet (0 when split)
    let head_end;
    let got = w.head_got;
    if got != 0 {
        // The head began in the last packet: its rest starts this one.
        let need = HEAD - got.min(8);
        let dst = w.head.as_mut_ptr().wrapping_add((got & 15) as usize);
        if need > plen || !load_small(ctx, base, dst, need) {
            w.end = 2;
            return 1;
        }
        w.head_got = 0;
        at = 0;
        head_end = need;
    } else {
        let off = w.next.wrapping_sub(seq);
        if off >= plen {
            w.end = 1;
            return 1;
        }
        if off + HEAD > plen {
            // The head is split: keep its first bytes for the next packet.
            let k = plen - off;
            if !load_small(ctx, base + off, w.head.as_mut_ptr(), k) {
                w.end = 2;
                return 1;
            }
            w.head_got = k;
            add(st, w, off, plen);
            if w.end == 0 {
                w.end = 1;
            }
            return 1;
        }
        if !load_small(ctx, base + off, w.head.as_mut_ptr(), 4) {
            w.end = 2;
            return 1;
        }
        at = off;
        head_end = off + HEAD;
    }
    let (len, kind) = len_type(&w.head);
    let want = if kind == DATA {
        len.min(DATA_KEEP)
    } else if len > FRAME_KEEP {
        add_stat(KernelStat::H2FrameCut, 1);
        FRAME_KEEP
    } else {
        len
    };
    let head_seq = w.next;
    w.keep_end = head_seq.wrapping_add(HEAD + want);
    w.next = head_seq.wrapping_add(HEAD + len);
    add(st, w, at, (head_end + want).min(plen));
    0
}

/// One extra record: `n` bytes (`1..=MAX_HEAD`) from `off` in the packet.
/// A function of its own: its code once, not at every chunk of the loop
/// that calls it (nothing in it may call a function of its own: memset's
/// frame would pass the 512-byte chain).
#[inline(never)]
fn emit(ctx: &SkBuffContext, seg: &Seg, base: u32, off: u32, n: u32) -> bool {
    let Some(held) = lane::reserve_packet::<MAX_FRAME>(true, DropReason::RingFullSegment) else {
        return false;
    };
    let rec = held.record();
    let n = (n.wrapping_sub(1) & (MAX_HEAD as u32 - 1)) + 1;
    // SAFETY: the payload room of the held frame (MAX_HEAD bytes).
    let data = unsafe { rec.add(core::mem::size_of::<SegmentHeader>()) };
    // SAFETY: n is in 1..=MAX_HEAD.
    if unsafe { bpf_skb_load_bytes(ctx.as_ptr(), base + off, data as *mut c_void, n) } < 0 {
        count_drop(DropReason::BadPacket);
        return false;
    }
    let extra = Seg {
        dir: seg.dir,
        family: seg.family,
        // A FIN belongs to the packet's end, which the first record holds.
        tcp_flags: seg.tcp_flags & !TCP_FIN,
        seq: seg.seq.wrapping_add(off),
        payload_len: n,
        captured_len: n,
        ts_ns: seg.ts_ns,
        cookie: seg.cookie,
        local_port: seg.local_port,
        remote_port: seg.remote_port,
        seg_flags: seg.seg_flags,
        local: seg.local,
        remote: seg.remote,
    };
    // SAFETY: the frame has room for the header, 8-aligned.
    unsafe { extra.write(rec as *mut u64) };
    held.publish(core::mem::size_of::<SegmentHeader>() + n as usize);
    add_stat(KernelStat::H2Records, 1);
    true
}
