//! Packet payloads (cgroup_skb egress and ingress on the root cgroup v2).
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_ktime_get_ns,
        generated::{bpf_skb_load_bytes, bpf_skc_to_tcp_sock},
    },
    macros::cgroup_skb,
    programs::SkBuffContext,
    EbpfContext,
};
use tracer_common::{
    Dir, DropReason, SegmentHeader, AF_INET, AF_INET6, LOOPBACK_IFINDEX, MAX_FRAME, MAX_HEAD,
    SEG_LOOPBACK, TCP_FIN,
};

use crate::{
    count_drop, field, global,
    lane::{self, NoRoom},
    records::Seg,
    sock::note_transmit,
    AGENT_PID, ENABLED, OFF_CLOCK, OFF_COOKIE, SNAP_LEN,
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
        return Ok(());
    }
    // The agent's own traffic (OTLP and profile exports): egress runs in the
    // sending task here, and with loopback ingress skipped above, a local
    // collector never sees those bytes parsed into spans of its own, which
    // would be exported in turn, forever.
    if dir == Dir::Send && (bpf_get_current_pid_tgid() >> 32) as u32 == global(&AGENT_PID) {
        return Ok(());
    }
    let seg_flags = if dir == Dir::Send && ifindex == LOOPBACK_IFINDEX {
        SEG_LOOPBACK
    } else {
        0
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
    // Ports in network order in the first word of the TCP header.
    let sport = u16::from_be(ports as u16);
    let dport = u16::from_be((ports >> 16) as u16);
    let (local_port, remote_port) = match dir {
        Dir::Send => (sport, dport),
        Dir::Recv => (dport, sport),
    };
    let mut n = payload_len;
    let snap = global(&SNAP_LEN);
    if n > snap {
        n = snap;
    }
    if n > MAX_HEAD as u32 {
        n = MAX_HEAD as u32;
    }

    let held = match lane::reserve_packet::<MAX_FRAME>() {
        Ok(h) => h,
        Err(NoRoom::Full) => {
            count_drop(DropReason::RingFullSegment);
            return Ok(());
        }
        Err(NoRoom::NoLane) => return Ok(()),
    };
    let rec = held.record();
    if n > 0 {
        // SAFETY: n <= MAX_HEAD: the payload fits in the held frame after
        // the header.
        let r = unsafe {
            bpf_skb_load_bytes(
                ctx.as_ptr(),
                payload_off,
                rec.add(core::mem::size_of::<SegmentHeader>()) as *mut c_void,
                n,
            )
        };
        if r < 0 {
            count_drop(DropReason::BadPacket);
            return Err(());
        }
    }
    // The time: a packet leaving was sent right after TCP refreshed the
    // socket's clock (`tcp_clock_cache`, CLOCK_MONOTONIC ns, what
    // bpf_ktime_get_ns reads, at a fraction of its cost); on the way in the
    // refresh comes after this hook, so the clock is read.
    // SAFETY: tp is the helper's typed tcp_sock pointer.
    let clock: u64 = unsafe { field(tp, global(&OFF_CLOCK)) };
    let ts_ns = if dir == Dir::Send && clock != 0 {
        clock
    } else {
        // SAFETY: helper without arguments.
        unsafe { bpf_ktime_get_ns() }
    };
    // SAFETY: tp is typed; the helper assigns a cookie the socket lacks.
    let cookie = match unsafe { field::<u64>(tp, global(&OFF_COOKIE)) } {
        0 => unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        c => c,
    };
    if dir == Dir::Send {
        note_transmit(cookie, clock);
    }
    let seg = Seg {
        dir: dir as u8,
        family,
        tcp_flags,
        seq: u32::from_be(seq_be),
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
    // SAFETY: the frame has room for the header, 8-aligned.
    unsafe { seg.write(rec as *mut u64) };
    held.publish(core::mem::size_of::<SegmentHeader>() + n as usize);
    Ok(())
}
