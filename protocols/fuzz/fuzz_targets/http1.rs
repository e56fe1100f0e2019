//! Fuzzes the HTTP/1 parsers: the input is cut into captured and missing
//! pieces, fed to a request or response parser (or to both sides of a
//! connection), and the messages are checked for consistency.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::http1::{Http1Config, Http1Connection, Http1Parser, MessageRef, Role};
use protocols::stream::{Chunk, MissingKind, Piece};

fn check(last: &mut u64, m: &MessageRef<'_>) {
    // Every view must read back without panicking.
    let _ = (m.line(), m.version(), m.headers().iter().count());
    let i = m.info;
    assert!(i.end_offset >= i.offset, "message ends before it starts");
    assert!(i.offset >= *last, "messages out of order");
    *last = i.offset;
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let cfg = Http1Config {
        max_head_bytes: 64 + usize::from(ctl >> 4) * 64,
        detect_budget: 4096,
        emit_interim: ctl & 4 != 0,
        ..Http1Config::default()
    };
    // Pieces: a control byte, then that many data bytes (high bit: a
    // missing range of that length instead).
    let mut pieces = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        let c = rest[i];
        i += 1;
        let n = usize::from(c & 0x3f) + 1;
        if c & 0x80 != 0 {
            let why = if c & 0x40 != 0 { MissingKind::Hole } else { MissingKind::Truncated };
            pieces.push(Piece::Missing { len: (n * 37) as u32, why });
        } else {
            let end = (i + n).min(rest.len());
            pieces.push(Piece::Data(&rest[i..end]));
            i = end;
        }
    }
    let mut offset = 0u64;
    let chunks: Vec<Chunk<'_>> = pieces
        .chunks(1 + usize::from(ctl & 3))
        .map(|ps| {
            let len: u32 = ps.iter().map(Piece::len).sum();
            let c = Chunk { seq: offset as u32, offset, len, op: None, seg_ts_ns: None, pieces: ps };
            offset += u64::from(len);
            c
        })
        .collect();
    let mut last = 0u64;
    if ctl & 8 == 0 {
        let role = if ctl & 16 == 0 { Role::Request } else { Role::Response };
        let mut p = Http1Parser::new(role, cfg);
        for c in &chunks {
            p.feed(c, &mut |m| check(&mut last, &m));
        }
        p.flush(&mut |m| check(&mut last, &m));
    } else {
        // Same bytes as both directions of one connection.
        let mut conn = Http1Connection::new(cfg);
        let mut last_rs = 0u64;
        for c in &chunks {
            conn.feed_requests(c, &mut |m| check(&mut last, &m));
            conn.feed_responses(c, &mut |m| check(&mut last_rs, &m));
        }
        conn.flush(&mut |_| {});
    }
});
