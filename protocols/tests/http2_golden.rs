//! Golden tests: HTTP/2 connections recorded from real tools
//! (`tests/capture_h2.py`: nghttp/nghttpd, nghttpx, curl, grpcio) in
//! `tests/data/h2/<case>/<n>.{c2s,s2c}.bin`, parsed three ways and compared
//! with `expected.txt`:
//! - whole: every byte captured;
//! - captured: as the kernel side copies an HTTP/2 socket (frame heads and
//!   header blocks whole, the first 16 bytes of each DATA payload, the
//!   rest missing), in chunks of 1448 bytes;
//! - attach: the same, joined mid-connection (the first third of each
//!   direction never seen).
//!
//! Set `UPDATE_GOLDEN=1` to rewrite the expected files after a deliberate
//! change (and review the diff).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use protocols::http2::{Http2Config, Http2Connection, Http2Message};
use protocols::stream::{Chunk, MissingKind, OpMeta};

mod common;
use common::{frame_aware_pieces, pieces_between, render_h2};

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/h2");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("h2 corpus dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

/// Feeds one direction as chunks of `step` bytes made of `pieces`
/// (captured or missing ranges), starting at byte `from`.
fn feed(
    conn: &mut Http2Connection,
    requests: bool,
    pieces: &[(usize, usize, bool)],
    data: &[u8],
    from: usize,
    out: &mut Vec<Http2Message>,
) {
    let step = 1448;
    let mut at = from;
    let mut n = 0u32;
    while at < data.len() {
        let end = (at + step).min(data.len());
        let ps = pieces_between(pieces, data, at, end, MissingKind::Truncated);
        n += 1;
        let chunk = Chunk {
            seq: 5000u32.wrapping_add(at as u32),
            offset: (at - from) as u64,
            len: (end - at) as u32,
            op: Some(OpMeta {
                pid: 7,
                tid: if requests { 1 } else { 2 },
                ts_ns: u64::from(n),
            }),
            seg_ts_ns: None,
            pieces: &ps,
        };
        if requests {
            conn.feed_requests(&chunk, &mut |m| out.push(m.to_owned()));
        } else {
            conn.feed_responses(&chunk, &mut |m| out.push(m.to_owned()));
        }
        at = end;
    }
}

fn run(c2s: &[u8], s2c: &[u8], mode: &str) -> String {
    let mut conn = match mode {
        "attach" => Http2Connection::mid_stream(Http2Config::default()),
        _ => Http2Connection::new(Http2Config::default()),
    };
    let (pq, ps) = match mode {
        "whole" => (vec![(0, c2s.len(), true)], vec![(0, s2c.len(), true)]),
        _ => (
            frame_aware_pieces(c2s, true),
            frame_aware_pieces(s2c, false),
        ),
    };
    let (fq, fs) = match mode {
        "attach" => (c2s.len() / 3, s2c.len() / 3),
        _ => (0, 0),
    };
    let mut msgs = Vec::new();
    // Requests first, then responses, in slices, as an agent polls.
    feed(&mut conn, true, &pq, c2s, fq, &mut msgs);
    feed(&mut conn, false, &ps, s2c, fs, &mut msgs);
    conn.flush(&mut |m| msgs.push(m.to_owned()));
    let mut out = String::new();
    for m in &msgs {
        render_h2(&mut out, m);
    }
    let _ = writeln!(out, "connection: {:?}", conn.counters());
    for (side, resp) in [("requests", false), ("responses", true)] {
        let _ = writeln!(out, "{side} frames: {:?}", conn.frame_counters(resp));
        let _ = writeln!(out, "{side} hpack: {:?}", conn.hpack_counters(resp));
    }
    out
}

fn check(path: &Path, got: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(path, got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert_eq!(got, want, "{} differs", path.display());
}

#[test]
fn golden_h2_connections() {
    let cases = cases();
    assert!(cases.len() >= 8);
    for case in cases {
        if case.join("0.c2s.bin").exists() && !case.ends_with("nghttp_upgrade") {
            let c2s = std::fs::read(case.join("0.c2s.bin")).expect("c2s");
            let s2c = std::fs::read(case.join("0.s2c.bin")).expect("s2c");
            for mode in ["whole", "captured", "attach"] {
                check(
                    &case.join(format!("expected_{mode}.txt")),
                    &run(&c2s, &s2c, mode),
                );
            }
        }
    }
}
