//! Fuzzes the stream reassembler with arbitrary records, checks that
//! delivery is contiguous and bounded, and feeds the chunks to an HTTP/1
//! parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::http1::{Http1Config, Http1Parser, Role};
use protocols::stream::{OpMeta, StreamLimits, StreamReassembler};

fn u32_at(d: &[u8], i: usize) -> u32 {
    let mut b = [0u8; 4];
    for (k, x) in b.iter_mut().enumerate() {
        *x = d.get(i + k).copied().unwrap_or(0);
    }
    u32::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let limits = StreamLimits { max_segments: 16, max_bytes: 2048, max_ops: 8, hole_timeout_ns: 50, lost_gap_timeout_ns: 10, unread_timeout_ns: 150 };
    let mut r = StreamReassembler::new(limits);
    r.set_sent_order(data.first().is_some_and(|b| b & 1 != 0));
    r.set_receive(data.first().is_some_and(|b| b & 2 != 0));
    let mut p = Http1Parser::new(Role::Request, Http1Config::default());
    let mut next = 0u64;
    let mut now = 0u64;
    let base = u32_at(data, 0);
    let mut i = 4;
    while i + 6 <= data.len() {
        let tag = data[i];
        // Sequence numbers near a base (so records overlap), sometimes far.
        let seq = if tag & 0x40 != 0 { u32_at(data, i + 1) } else { base.wrapping_add(u32::from(u16::from_le_bytes([data[i + 1], data[i + 2]]))) };
        let len = u32::from(u16::from_le_bytes([data[i + 3], data[i + 4]])) % 2000;
        let cap = usize::from(data[i + 5]);
        i += 6;
        now += u64::from(tag & 7);
        match tag >> 6 & 1 | (tag >> 3 & 2) {
            0 | 1 => {
                let end = (i + cap).min(data.len());
                r.push_segment(seq, len, &data[i..end], now);
                i = end;
            }
            2 => r.push_op(seq, len, OpMeta { pid: 1, tid: u32::from(tag), ts_ns: now }),
            _ => {
                // A body the consumer will not look at.
                let _ = r.skip(u64::from(seq % 4096), u64::from(len) * 8);
            }
        }
        let (spans, bytes, ops) = r.buffered();
        assert!(spans <= 40 && bytes <= 2048 && ops <= 8, "unbounded: {spans} {bytes} {ops}");
        if tag & 0x80 != 0 {
            if let Some(at) = r.take_unread(now) {
                assert!(at <= now, "unread bytes from the future");
            }
            let _ = r.pending_since(now);
            r.poll(now, &mut |c| {
                assert_eq!(c.offset, next, "not contiguous");
                assert_eq!(c.pieces.iter().map(|p| u64::from(p.len())).sum::<u64>(), u64::from(c.len));
                next += u64::from(c.len);
                p.feed(&c, &mut |_| {});
            });
        }
    }
    r.flush(&mut |c| {
        assert_eq!(c.offset, next, "not contiguous");
        next += u64::from(c.len);
        p.feed(&c, &mut |_| {});
    });
    p.flush(&mut |_| {});
    let c = r.counters();
    assert_eq!(c.bytes_captured + c.bytes_truncated + c.bytes_skipped + c.bytes_hole, next);
});
