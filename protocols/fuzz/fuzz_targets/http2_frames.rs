//! Fuzzes the HTTP/2 parser (frames, HPACK, streams) through the seam:
//! the input is cut into captured and missing pieces and fed to both
//! directions; messages are read back whole; memory stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::conn::{ConnConfig, ConnParser, Dir, MessageView};
use protocols::http2::{Http2Config, Http2Connection};
use protocols::stream::{Chunk, MissingKind, Piece};

fn check(m: &MessageView<'_>) {
    let _ = (m.method(), m.target(), m.status(), m.authority(), m.grpc(), m.stream_id());
    let i = m.info();
    assert!(i.end_offset >= i.offset || m.http2().is_some());
    for f in m.headers().iter() {
        assert_eq!(f.why.is_some(), !f.is_known());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let mut pieces = Vec::new();
    let mut i = 0;
    // Start like a real connection half of the time.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    if ctl & 1 != 0 {
        pieces.push((Dir::A, Piece::Data(&preface[..])));
    }
    while i < rest.len() {
        let c = rest[i];
        i += 1;
        let dir = if c & 0x40 != 0 { Dir::B } else { Dir::A };
        let n = usize::from(c & 0x1f) * 3 + 1;
        if c & 0x80 != 0 && c & 0x20 != 0 {
            let why = if n % 2 == 0 { MissingKind::Hole } else { MissingKind::Truncated };
            pieces.push((dir, Piece::Missing { len: (n * 101) as u32, why }));
        } else {
            let end = (i + n).min(rest.len());
            pieces.push((dir, Piece::Data(&rest[i..end])));
            i = end;
        }
    }
    let cfg = ConnConfig {
        http2: Http2Config { max_header_block: 1024, max_streams: 8, ..Http2Config::default() },
        ..ConnConfig::default()
    };
    let mut conn = ConnParser::new(cfg, if ctl & 2 != 0 { Some(Dir::A) } else { None });
    let mut h2 = if ctl & 4 != 0 { Http2Connection::mid_stream(cfg.http2) } else { Http2Connection::new(cfg.http2) };
    let mut offs = [0u64; 2];
    for (dir, p) in &pieces {
        let k = if *dir == Dir::A { 0 } else { 1 };
        let ps = [*p];
        let chunk = Chunk { seq: offs[k] as u32, offset: offs[k], len: p.len(), op: None, seg_ts_ns: None, pieces: &ps };
        offs[k] += u64::from(p.len());
        conn.feed(*dir, &chunk, &mut |m| check(&m));
        if k == 0 {
            h2.feed_requests(&chunk, &mut |m| { let _ = (m.method(), m.path(), m.status()); });
        } else {
            h2.feed_responses(&chunk, &mut |m| { let _ = (m.method(), m.path(), m.status()); });
        }
        assert!(h2.open_streams() <= 8);
    }
    conn.flush(&mut |m| check(&m));
    h2.flush(&mut |_| {});
});
