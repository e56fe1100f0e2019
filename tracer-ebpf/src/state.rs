//! Per-socket state: what user space asked for the socket (silence it, skip
//! a body), the head windows the packet programs opened, and what was
//! counted instead of reported.
//!
//! The state lives in socket storage (freed with the socket, found through
//! the socket in a few loads). User space cannot reach socket storage by
//! cookie, so it writes its requests to the `SOCK_CTL` hash map and bumps a
//! generation; a program copies a socket's request into its state when the
//! generation it saw last is older. While `SOCK_CTL` is empty the call
//! programs and the head-start packets that end their head skip all of
//! this.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    btf_maps::SkStorage,
    helpers::generated::bpf_sk_storage_get,
    macros::{btf_map, map},
    maps::{Array, HashMap},
};
use tracer_common::{SockCtl, CTL_ENTRIES, CTL_GEN, SOCK_CTL_MAX};

/// A socket's state.
#[repr(C)]
pub struct SockState {
    /// `CTL_STATE[CTL_GEN]` when `SOCK_CTL` was last read for this socket.
    pub gen: u64,
    /// The socket's `SockCtl`, as last read.
    pub ctl: SockCtl,
    /// Bit `1 << dir`: `win_end` of that direction is set.
    pub win_dirs: u32,
    /// Per direction: sequence number up to which packets are copied whole
    /// (the head window opened by the last head-start packet).
    pub win_end: [u32; 2],
    /// 1: the agent opened this socket (its own exports).
    pub agent: u32,
    /// Calls not reported (silenced), per direction.
    pub silenced_calls: [u64; 2],
    /// Bytes those calls moved.
    pub silenced_bytes: [u64; 2],
    /// Payload bytes of packets not copied (silenced or skipped).
    pub uncopied: [u64; 2],
    /// 1: the packets showed the HTTP/2 preface or a first SETTINGS frame
    /// (the walk starts there, before user space can say so).
    pub h2_seen: u32,
    pub _pad: u32,
    /// The HTTP/2 frame walk (see h2walk.rs), per direction.
    pub h2: [H2Walk; 2],
}

/// Where the HTTP/2 frame walk of one direction stands.
#[repr(C)]
pub struct H2Walk {
    /// 1: in sync (the fields below are meaningful).
    pub sync: u32,
    /// Sequence number up to which packets were walked.
    pub pos: u32,
    /// Sequence number of the next frame head.
    pub next: u32,
    /// Sequence number up to which the current frame is copied.
    pub keep_end: u32,
    /// Bytes of the next frame head that the last packet ended with.
    pub head_got: u32,
    pub _pad: u32,
    /// Those bytes, and room for the rest of the head.
    pub head: [u8; 24],
    /// The packet walk in progress (see h2walk.rs): its pending chunk
    /// `[cs, ce)` of packet offsets to copy, the bytes copied by the chunks
    /// sent, and how it ended. Kept here, in map memory, not on the stack:
    /// the verifier tracks the value of every stack slot through each turn
    /// of the frame loop, and values it tracks there multiply the states it
    /// must explore until the program passes its limit (Linux 6.18.44 gave
    /// up at 1,000,000 instructions); map memory reads back as unknown.
    /// One walk per socket and direction at a time, as for the fields
    /// above: the socket's lock serialises its transmits, and its receives.
    pub cs: u32,
    pub ce: u32,
    pub copied: u32,
    /// 0: walking; 1: the packet's frames are all walked; 2: sync lost.
    pub end: u32,
}

#[btf_map]
static SOCKS: SkStorage<SockState> = SkStorage::new();

#[map]
static SOCK_CTL: HashMap<u64, SockCtl> = HashMap::with_max_entries(SOCK_CTL_MAX, 0);

/// `[CTL_GEN]`: bumped by the agent after each change to `SOCK_CTL`;
/// `[CTL_ENTRIES]`: the number of entries.
#[map]
static CTL_STATE: Array<u64> = Array::with_max_entries(2, 0);

/// The control generation when user space has requests in `SOCK_CTL`.
#[inline(always)]
pub fn ctl_generation() -> Option<u64> {
    let entries = CTL_STATE.get(CTL_ENTRIES).copied().unwrap_or(0);
    if entries == 0 {
        return None;
    }
    CTL_STATE.get(CTL_GEN).copied()
}

/// Turns the per-socket path on before user space has a request in
/// `SOCK_CTL` (a socket found HTTP/2 by its first bytes): user space
/// overwrites the count with its own after its next batch of requests,
/// which marks that socket too.
#[inline(always)]
pub fn activate() {
    if let Some(n) = CTL_STATE.get_ptr_mut(CTL_ENTRIES) {
        // SAFETY: an array slot; a lost race leaves another non-zero value.
        unsafe {
            if *n == 0 {
                *n = 1;
            }
        }
    }
}

/// The socket's state, created when `create` (null when the socket has
/// none, or when memory for one is short).
#[inline(always)]
pub fn get(sk: *mut c_void, create: bool) -> *mut SockState {
    let flags = if create {
        BPF_SK_STORAGE_GET_F_CREATE as u64
    } else {
        0
    };
    // SAFETY: sk is a socket pointer the verifier knows (a tracepoint's
    // argument, a helper's BTF result, or a packet's socket).
    unsafe {
        bpf_sk_storage_get(
            core::ptr::addr_of!(SOCKS) as *mut c_void,
            sk,
            core::ptr::null_mut(),
            flags,
        ) as *mut SockState
    }
}

/// Marks a socket the agent is opening as its own.
#[inline(always)]
pub fn mark_agent(sk: *mut c_void) {
    let st = get(sk, true);
    if !st.is_null() {
        // SAFETY: this socket's storage.
        unsafe { (*st).agent = 1 };
    }
}

/// Whether the agent opened this socket.
#[inline(always)]
pub fn is_agent(sk: *mut c_void) -> bool {
    let st = get(sk, false);
    // SAFETY: this socket's storage when not null.
    !st.is_null() && unsafe { (*st).agent } != 0
}

/// The silence user space asked for the socket with this cookie (0: none),
/// for the sources that cannot reach socket storage.
#[inline(always)]
pub fn silence_of(cookie: u64) -> u8 {
    // SAFETY: a copy of the entry is read at once.
    match unsafe { SOCK_CTL.get(&cookie) } {
        Some(c) => c.silence,
        None => 0,
    }
}

/// Brings the socket's copy of its `SOCK_CTL` entry up to generation `gen`.
#[inline(always)]
pub fn refresh(st: *mut SockState, cookie: u64, gen: u64) {
    // SAFETY: st is this socket's storage (a map value).
    unsafe {
        if (*st).gen == gen {
            return;
        }
        (*st).gen = gen;
        (*st).ctl = match SOCK_CTL.get(cookie) {
            Some(c) => *c,
            None => SockCtl::default(),
        };
    }
}
