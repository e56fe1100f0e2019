//! Packet payloads (cgroup_skb egress and ingress on the root cgroup v2).
use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_socket_cookie, bpf_ktime_get_ns,
        generated::bpf_skb_load_bytes,
    },
    macros::cgroup_skb,
    programs::SkBuffContext,
    EbpfContext,
};
use tracer_common::{
    Dir, DropReason, SegmentHeader, Tag, AF_INET, AF_INET6, LOOPBACK_IFINDEX, MAX_FRAME, MAX_HEAD,
    SEG_LOOPBACK, TCP_FIN,
};

use crate::{
    count_drop, global,
    lane::{self, NoRoom},
    AGENT_PID, ENABLED, SNAP_LEN,
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

/// `N` bytes at `off` of the packet's linear part (the IP and TCP headers of
/// a packet at the socket layer are there), read in place.
#[inline(always)]
fn header<const N: usize>(ctx: &SkBuffContext, off: usize) -> Result<[u8; N], ()> {
    // SAFETY: the context's __sk_buff; data/data_end are readable in
    // cgroup_skb programs, and the bounds check below is the one the
    // verifier asks for before the read.
    unsafe {
        let data = (*ctx.skb.skb).data as usize;
        let end = (*ctx.skb.skb).data_end as usize;
        if data + off + N > end {
            count_drop(DropReason::BadPacket);
            return Err(());
        }
        Ok(core::ptr::read_unaligned((data + off) as *const [u8; N]))
    }
}

#[inline(always)]
fn capture(ctx: &SkBuffContext, dir: Dir) -> Result<(), ()> {
    if global(&ENABLED) == 0 {
        return Ok(());
    }
    // SAFETY: the context's __sk_buff, readable in cgroup_skb programs.
    let (ifindex, ingress_ifindex) =
        unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).ingress_ifindex) };
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
    // __sk_buff->protocol is the big-endian ethertype.
    let proto = u16::from_be(ctx.skb.protocol() as u16);
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let (family, ip_len) = if proto == ETH_P_IP {
        let ip: [u8; 20] = header(ctx, 0)?;
        if ip[9] != IPPROTO_TCP {
            return Ok(());
        }
        src[..4].copy_from_slice(&ip[12..16]);
        dst[..4].copy_from_slice(&ip[16..20]);
        (AF_INET, ((ip[0] & 0x0f) as usize) * 4)
    } else if proto == ETH_P_IPV6 {
        let ip: [u8; 40] = header(ctx, 0)?;
        match ip[6] {
            IPPROTO_TCP => {}
            // hop-by-hop, routing, fragment, destination options
            0 | 43 | 44 | 60 => {
                count_drop(DropReason::Ipv6ExtHeader);
                return Ok(());
            }
            _ => return Ok(()),
        }
        src.copy_from_slice(&ip[8..24]);
        dst.copy_from_slice(&ip[24..40]);
        (AF_INET6, 40)
    } else {
        return Ok(());
    };
    let tcp: [u8; 20] = header(ctx, ip_len & 0x3c)?;
    let doff = ((tcp[12] >> 4) as u32) * 4;
    let payload_off = ip_len as u32 + doff;
    let skb_len = ctx.len();
    // No payload: ACKs and SYNs leave here. A FIN is kept (once per
    // direction): it takes a sequence number, which user space needs to
    // line up a receive call that read the last bytes and the FIN together.
    let payload_len = if payload_off >= skb_len {
        if tcp[13] & TCP_FIN == 0 {
            return Ok(());
        }
        0
    } else {
        skb_len - payload_off
    };
    let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let (local_port, remote_port, local_addr, remote_addr) = match dir {
        Dir::Send => (sport, dport, src, dst),
        Dir::Recv => (dport, sport, dst, src),
    };
    let mut n = payload_len;
    let snap = global(&SNAP_LEN);
    if n > snap {
        n = snap;
    }
    if n > MAX_HEAD as u32 {
        n = MAX_HEAD as u32;
    }

    let held = match lane::reserve::<MAX_FRAME>() {
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
                rec.add(size_of::<SegmentHeader>()) as *mut c_void,
                n,
            )
        };
        if r < 0 {
            count_drop(DropReason::BadPacket);
            return Err(());
        }
    }
    let hdr = SegmentHeader {
        tag: Tag::Segment as u8,
        dir: dir as u8,
        family,
        tcp_flags: tcp[13],
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        payload_len,
        captured_len: n,
        // SAFETY: helper without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        // SAFETY: the skb context is what the helper expects here.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        local_port,
        remote_port,
        seg_flags,
        _pad: [0; 3],
        local_addr,
        remote_addr,
    };
    // SAFETY: the frame has room for the header, 8-aligned.
    unsafe { core::ptr::write(rec as *mut SegmentHeader, hdr) };
    held.publish(size_of::<SegmentHeader>() + n as usize);
    Ok(())
}
