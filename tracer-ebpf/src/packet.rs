//! Packet payloads (cgroup_skb egress and ingress on the root cgroup v2).
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_socket_cookie, bpf_ktime_get_ns,
        generated::{bpf_skb_load_bytes, bpf_skc_to_tcp_sock},
    },
    macros::cgroup_skb,
    programs::SkBuffContext,
    EbpfContext,
};
use tracer_common::{
    Dir, DropReason, KernelStat, SegmentHeader, AF_INET, AF_INET6, LOOPBACK_IFINDEX, MAX_FRAME,
    MAX_HEAD, SEG_LOOPBACK, TCP_FIN,
};

use crate::{
    add_stat, count_drop, field, global, h2walk, lane,
    records::Seg,
    sock::note_transmit,
    state::{self, SockState},
    ENABLED, HEAD_MAX, KPROBE_CALLS, OFF_CLOCK, OFF_COOKIE, SNAP_LEN,
};

const IPPROTO_TCP: u8 = 6;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

#[cgroup_skb]
pub fn capture_egress(ctx: SkBuffContext) -> i32 {
    let _ = capture(&ctx, Dir::Send);
    1 // always let the packet through
}

#[cgroup_skb]
pub fn capture_ingress(ctx: SkBuffContext) -> i32 {
    let _ = capture(&ctx, Dir::Recv);
    1
}

/// Copies `n` payload bytes (at most `MAX_HEAD`) from `off` in the packet
/// to `dst`, the payload room of a held frame.
#[inline(always)]
fn copy(ctx: &SkBuffContext, off: u32, dst: *mut u8, n: u32) -> Result<(), ()> {
    if n == 0 {
        return Ok(());
    }
    let n = if n > MAX_HEAD as u32 {
        MAX_HEAD as u32
    } else {
        n
    };
    let n = head_bound(n);
    // SAFETY: dst has MAX_HEAD bytes of room; n is bounded above.
    let r = unsafe { bpf_skb_load_bytes(ctx.as_ptr(), off, dst as *mut c_void, n) };
    if r < 0 {
        count_drop(DropReason::BadPacket);
        return Err(());
    }
    Ok(())
}

/// Whether copied payload starts like an HTTP/1 message: a request method
/// or `HTTP` (a first-bytes check, not a parser; user space decides).
#[inline(always)]
fn starts_message(data: *const u8) -> bool {
    // SAFETY: at least four bytes were copied there.
    let w = u32::from_le(unsafe { core::ptr::read_volatile(data as *const u32) });
    matches!(
        &w.to_le_bytes(),
        b"GET "
            | b"POST"
            | b"PUT "
            | b"HEAD"
            | b"DELE"
            | b"PATC"
            | b"OPTI"
            | b"CONN"
            | b"TRAC"
            | b"HTTP"
    )
}

/// `n`, known to be in `1..=MAX_HEAD`, with a bound the verifier of every
/// supported kernel sees: older verifiers (6.1) lose the bound a compare
/// puts on a copy of a register or on a 32-bit value spilled to the stack,
/// but keep the one a mask puts on the value itself. MAX_HEAD is a power of
/// two, so this changes nothing.
#[inline(always)]
fn head_bound(n: u32) -> u32 {
    (core::hint::black_box(n).wrapping_sub(1) & (MAX_HEAD as u32 - 1)) + 1
}

/// Whether the `n` copied bytes end with the blank line that ends a head
/// (the usual request without a body, or a head sent apart from its body).
#[inline(always)]
fn ends_head(data: *const u8, n: u32) -> bool {
    if n < 4 || n > MAX_HEAD as u32 {
        return false;
    }
    let n = head_bound(n).max(4);
    // SAFETY: n - 4 + 4 <= n bytes copied, inside the frame.
    let w = unsafe { core::ptr::read_unaligned(data.add(n as usize - 4) as *const [u8; 4]) };
    &w == b"\r\n\r\n"
}

/// A value at `p` in the packet's linear part.
///
/// # Safety
/// `p .. p + size_of::<T>()` must have been checked against `data_end`.
#[inline(always)]
unsafe fn pkt<T: Copy>(p: usize) -> T {
    // Packet headers are at least 2-byte aligned; the architectures the
    // agent runs on load unaligned words, and the verifier allows it there.
    unsafe { core::ptr::read_volatile(p as *const T) }
}

#[inline(always)]
fn capture(ctx: &SkBuffContext, dir: Dir) -> Result<(), ()> {
    if global(&ENABLED) == 0 {
        return Ok(());
    }
    let skb = ctx.skb.skb;
    // SAFETY: the context's __sk_buff, readable in cgroup_skb programs.
    let (ifindex, ingress_ifindex) = unsafe { ((*skb).ifindex, (*skb).ingress_ifindex) };
    // Loopback payloads were already copied on egress (see SEG_LOOPBACK).
    if dir == Dir::Recv && ingress_ifindex == LOOPBACK_IFINDEX {
        if global(&KPROBE_CALLS) != 0 {
            // SAFETY: the context's skb; assigns its socket a cookie.
            unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        }
        return Ok(());
    }
    let seg_flags = if dir == Dir::Send && ifindex == LOOPBACK_IFINDEX {
        SEG_LOOPBACK
    } else {
        0
    };
    // __sk_buff->protocol is the big-endian ethertype.
    let proto = u16::from_be(ctx.skb.protocol() as u16);
    // SAFETY: the context's __sk_buff.
    let (data, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    let (family, ip_len, local, remote) = if proto == ETH_P_IP {
        if data + 20 > end {
            count_drop(DropReason::BadPacket);
            return Err(());
        }
        // SAFETY: checked against data_end above.
        let (vihl, p, src, dst) = unsafe {
            (
                pkt::<u8>(data),
                pkt::<u8>(data + 9),
                u64::from(pkt::<u32>(data + 12)),
                u64::from(pkt::<u32>(data + 16)),
            )
        };
        if p != IPPROTO_TCP {
            return Ok(());
        }
        let (l, r) = match dir {
            Dir::Send => (src, dst),
            Dir::Recv => (dst, src),
        };
        (AF_INET, ((vihl & 0x0f) as usize) * 4, [l, 0], [r, 0])
    } else if proto == ETH_P_IPV6 {
        if data + 40 > end {
            count_drop(DropReason::BadPacket);
            return Err(());
        }
        // SAFETY: checked against data_end above.
        let (next, src, dst) = unsafe {
            (
                pkt::<u8>(data + 6),
                [pkt::<u64>(data + 8), pkt::<u64>(data + 16)],
                [pkt::<u64>(data + 24), pkt::<u64>(data + 32)],
            )
        };
        match next {
            IPPROTO_TCP => {}
            // hop-by-hop, routing, fragment, destination options
            0 | 43 | 44 | 60 => {
                count_drop(DropReason::Ipv6ExtHeader);
                return Ok(());
            }
            _ => return Ok(()),
        }
        let (l, r) = match dir {
            Dir::Send => (src, dst),
            Dir::Recv => (dst, src),
        };
        (AF_INET6, 40, l, r)
    } else {
        return Ok(());
    };
    let th = data + (ip_len & 0x3c);
    if th + 20 > end {
        count_drop(DropReason::BadPacket);
        return Err(());
    }
    // SAFETY: checked against data_end above.
    let (ports, seq_be, doff, tcp_flags) = unsafe {
        (
            pkt::<u32>(th),
            pkt::<u32>(th + 4),
            pkt::<u8>(th + 12),
            pkt::<u8>(th + 13),
        )
    };
    let payload_off = (ip_len & 0x3c) as u32 + u32::from(doff >> 4) * 4;
    let skb_len = ctx.len();
    // No payload: ACKs and SYNs leave here. A FIN is kept (once per
    // direction): it takes a sequence number, which user space needs to
    // line up a receive call that read the last bytes and the FIN together.
    let payload_len = if payload_off >= skb_len {
        if tcp_flags & TCP_FIN == 0 {
            return Ok(());
        }
        0
    } else {
        skb_len - payload_off
    };
    // The socket: its cookie, and its TCP clock (see below).
    // SAFETY: the context's __sk_buff.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk } as *mut c_void;
    if sk.is_null() {
        return Ok(());
    }
    // SAFETY: a socket pointer from the context.
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) } as *const u8;
    if tp.is_null() {
        return Ok(());
    }
    // The agent's own traffic (OTLP and profile exports) is not copied, so
    // that a local collector never sees those bytes parsed into spans of
    // its own, which would be exported in turn, forever. The current task
    // does not say whose packet this is: egress also runs in softirq (data
    // Nagle held until an ACK, data past the congestion window,
    // retransmits), in whatever task it interrupted. So the socket decides:
    // the agent's own are marked when it connects (see sock.rs); a socket
    // without storage (most) costs one load to rule out.
    if dir == Dir::Send && state::is_agent(tp as *mut c_void) {
        return Ok(());
    }
    // Ports in network order in the first word of the TCP header.
    let sport = u16::from_be(ports as u16);
    let dport = u16::from_be((ports >> 16) as u16);
    let (local_port, remote_port) = match dir {
        Dir::Send => (sport, dport),
        Dir::Recv => (dport, sport),
    };
    // SAFETY: tp is typed; the helper assigns a cookie the socket lacks.
    let cookie = match unsafe { field::<u64>(tp, global(&OFF_COOKIE)) } {
        0 => unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        c => c,
    };
    let mut seq = u32::from_be(seq_be);
    let mut payload_off = payload_off;
    let mut payload_len = payload_len;
    let d = dir as usize & 1;

    // What user space asked for this socket: silence it, skip a body.
    let mut st: *mut SockState = core::ptr::null_mut();
    let mut skipped_to_start = false;
    if let Some(gen) = state::ctl_generation() {
        st = state::get(tp as *mut c_void, true);
        if !st.is_null() {
            state::refresh(st, cookie, gen);
            // SAFETY: this socket's storage.
            let s = unsafe { &mut *st };
            if s.ctl.silence != 0 {
                s.uncopied[d] += u64::from(payload_len);
                add_stat(KernelStat::SilencedPackets, 1);
                add_stat(KernelStat::SilencedBytes, u64::from(payload_len));
                return Ok(());
            }
            if s.ctl.skip_dirs & (1 << d) != 0 && payload_len > 0 {
                let (from, to) = (s.ctl.skip_from[d], s.ctl.skip_to[d]);
                // Wrapping sequence arithmetic: is seq in [from, to)?
                let inside = seq.wrapping_sub(from);
                let span = to.wrapping_sub(from);
                if inside < span {
                    let skip = span - inside;
                    if skip >= payload_len {
                        s.uncopied[d] += u64::from(payload_len);
                        add_stat(KernelStat::SkippedPackets, 1);
                        add_stat(KernelStat::SkippedBytes, u64::from(payload_len));
                        if tcp_flags & TCP_FIN == 0 {
                            return Ok(());
                        }
                        // The FIN still lines up a last receive.
                        seq = seq.wrapping_add(payload_len);
                        payload_off += payload_len;
                        payload_len = 0;
                    } else {
                        // The body ends in this packet: report it from the
                        // end of the body on, where the next message starts.
                        s.uncopied[d] += u64::from(skip);
                        add_stat(KernelStat::SkippedBytes, u64::from(skip));
                        seq = to;
                        payload_off += skip;
                        payload_len -= skip;
                        skipped_to_start = true;
                    }
                    if seq.wrapping_sub(from) >= span {
                        s.ctl.skip_dirs &= !(1 << d);
                    }
                }
            }
        }
    }

    // An HTTP/2 socket's frames are walked before the packet's first record
    // goes out: the extra records must reach the stream layer before the
    // record that leaves their range truncated, or a call record could have
    // that range delivered as truncated first. Their time is the packet's.
    let mut early_ts = 0u64;
    let mut walked = false;
    if !st.is_null() {
        // SAFETY: this socket's storage.
        let s = unsafe { &mut *st };
        if s.ctl.h2 != 0 || s.h2_seen != 0 {
            early_ts = packet_time(tp, dir, cookie);
            let seg = Seg {
                dir: dir as u8,
                family,
                tcp_flags,
                seq,
                payload_len,
                captured_len: 0,
                ts_ns: early_ts,
                cookie,
                local_port,
                remote_port,
                seg_flags,
                local,
                remote,
            };
            let first = payload_len.min(global(&SNAP_LEN));
            h2walk::walk(ctx, &mut s.h2[d], &seg, payload_off, first);
            walked = true;
        }
    }

    let Some(held) = lane::reserve_packet::<MAX_FRAME>(true, DropReason::RingFullSegment) else {
        return Ok(());
    };
    let rec = held.record();
    // SAFETY: the payload room of the held frame (MAX_HEAD bytes).
    let data = unsafe { rec.add(core::mem::size_of::<SegmentHeader>()) };
    let snap = global(&SNAP_LEN);
    let mut n = if payload_len > snap {
        snap
    } else {
        payload_len
    };
    copy(ctx, payload_off, data, n)?;
    // A packet whose first bytes start an HTTP/1 message (or that starts
    // where a skipped body ended) opens a head window: it is copied up to
    // HEAD_MAX bytes, and when it ends before the head may have (it does
    // not end with a blank line), the packets after it are copied up to
    // HEAD_MAX bytes from its start too. A packet inside an open window is
    // copied to the window's end. Everything else is copied up to SNAP_LEN.
    let head_max = global(&HEAD_MAX);
    if skipped_to_start || (n >= 4 && starts_message(data)) {
        add_stat(KernelStat::HeadStarts, 1);
        let want = if payload_len > head_max {
            add_stat(KernelStat::HeadWindowFull, 1);
            head_max
        } else {
            payload_len
        };
        if want > n {
            n = want;
            copy(ctx, payload_off, data, n)?;
        }
        let open = n == payload_len && n < head_max && !ends_head(data, n);
        if open || !st.is_null() {
            if st.is_null() {
                st = state::get(tp as *mut c_void, true);
            }
            if !st.is_null() {
                // SAFETY: this socket's storage.
                let s = unsafe { &mut *st };
                if open {
                    s.win_end[d] = seq.wrapping_add(head_max);
                    s.win_dirs |= 1 << d;
                } else {
                    s.win_dirs &= !(1 << d);
                }
            }
        }
    } else if payload_len > n {
        if st.is_null() {
            st = state::get(tp as *mut c_void, false);
        }
        if !st.is_null() {
            // SAFETY: this socket's storage.
            let s = unsafe { &mut *st };
            if s.win_dirs & (1 << d) != 0 {
                let left = s.win_end[d].wrapping_sub(seq);
                if left > 0 && left <= head_max {
                    let want = if payload_len > left {
                        left
                    } else {
                        payload_len
                    };
                    if want > n {
                        add_stat(KernelStat::HeadContinued, 1);
                        n = want;
                        copy(ctx, payload_off, data, n)?;
                    }
                } else {
                    s.win_dirs &= !(1 << d);
                }
            }
        }
    }
    let ts_ns = if walked {
        early_ts
    } else {
        packet_time(tp, dir, cookie)
    };
    let seg = Seg {
        dir: dir as u8,
        family,
        tcp_flags,
        seq,
        payload_len,
        captured_len: n,
        ts_ns,
        cookie,
        local_port,
        remote_port,
        seg_flags,
        local,
        remote,
    };
    // A connection's first HTTP/2 bytes start the frame walk at once: user
    // space marks it too, but only after a few milliseconds, when a large
    // message may already be on its way. (This packet, the connection's
    // first in its direction, is small: its extra records, if any, follow
    // its first record.)
    let what = if !walked && n >= 9 && !skipped_to_start {
        h2walk::starts_h2(data)
    } else {
        0
    };
    // SAFETY: the frame has room for the header, 8-aligned.
    unsafe { seg.write(rec as *mut u64) };
    held.publish(core::mem::size_of::<SegmentHeader>() + n as usize);
    if what != 0 {
        if st.is_null() {
            st = state::get(tp as *mut c_void, true);
        }
        if !st.is_null() {
            // SAFETY: this socket's storage.
            let s = unsafe { &mut *st };
            s.h2_seen = 1;
            h2walk::start(&mut s.h2[d], seq, what);
            state::activate();
            h2walk::walk(ctx, &mut s.h2[d], &seg, payload_off, n);
        }
    }
    Ok(())
}

/// The time of a packet: one leaving was sent right after TCP refreshed the
/// socket's clock (`tcp_clock_cache`, CLOCK_MONOTONIC ns, what
/// bpf_ktime_get_ns reads, at a fraction of its cost); on the way in the
/// refresh comes after this hook, so the clock is read.
#[inline(always)]
fn packet_time(tp: *const u8, dir: Dir, cookie: u64) -> u64 {
    // SAFETY: tp is the helper's typed tcp_sock pointer.
    let clock: u64 = unsafe { field(tp, global(&OFF_CLOCK)) };
    if dir == Dir::Send {
        note_transmit(cookie, clock);
    }
    if dir == Dir::Send && clock != 0 {
        clock
    } else {
        // SAFETY: helper without arguments.
        unsafe { bpf_ktime_get_ns() }
    }
}
