//! Helpers shared by the HTTP/2 tests.
#![allow(dead_code)]

use std::fmt::Write as _;

use protocols::http2::Http2Message;
use protocols::stream::{MissingKind, Piece};

/// Captured (`true`) and missing ranges of one direction as the kernel
/// side copies an HTTP/2 socket: frame heads and every non-DATA payload
/// whole, the first 16 bytes of each DATA payload. `preface`: the
/// direction starts with the client preface.
pub fn frame_aware_pieces(data: &[u8], preface: bool) -> Vec<(usize, usize, bool)> {
    let mut v = Vec::new();
    let mut at = if preface && data.starts_with(b"PRI * HTTP/2.0") {
        24
    } else {
        find_h2_start(data).unwrap_or_default()
    };
    if at > 0 {
        v.push((0, at, true));
    }
    while at + 9 <= data.len() {
        let len = u32::from_be_bytes([0, data[at], data[at + 1], data[at + 2]]) as usize;
        let kind = data[at + 3];
        let end = (at + 9 + len).min(data.len());
        if kind == 0 && len > 16 {
            v.push((at, at + 9 + 16, true));
            v.push((at + 9 + 16, end, false));
        } else {
            v.push((at, end, true));
        }
        at = end;
    }
    if at < data.len() {
        v.push((at, data.len(), true));
    }
    v
}

/// The pieces of `data[at..end]` as `ranges` (captured or not, from
/// [`frame_aware_pieces`] or the like) say, bytes not captured missing for
/// `why`.
pub fn pieces_between<'a>(
    ranges: &[(usize, usize, bool)],
    data: &'a [u8],
    at: usize,
    end: usize,
    why: MissingKind,
) -> Vec<Piece<'a>> {
    ranges
        .iter()
        .filter(|(s, e, _)| *e > at && *s < end)
        .map(|&(s, e, cap)| {
            let (s, e) = (s.max(at), e.min(end));
            if cap {
                Piece::Data(&data[s..e])
            } else {
                Piece::Missing {
                    len: (e - s) as u32,
                    why,
                }
            }
        })
        .collect()
}

/// After an HTTP/1 upgrade: where the frames start (after the preface or
/// the 101 response head).
fn find_h2_start(data: &[u8]) -> Option<usize> {
    if let Some(p) = data
        .windows(24)
        .position(|w| w == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    {
        return Some(p + 24);
    }
    if data.starts_with(b"HTTP/1.1 101") {
        return data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4);
    }
    None
}

fn text(b: &Option<Vec<u8>>) -> String {
    match b {
        Some(b) => {
            let s = String::from_utf8_lossy(b);
            if s.len() > 60 {
                format!("{}...({} bytes)", &s[..40], b.len())
            } else {
                s.into_owned()
            }
        }
        None => "?".to_owned(),
    }
}

/// One message as stable text.
pub fn render_h2(out: &mut String, m: &Http2Message) {
    let i = &m.info;
    let op = |o: Option<protocols::stream::OpMeta>| {
        o.map_or("-".to_owned(), |o| {
            format!("{}/{}@{}", o.pid, o.tid, o.ts_ns)
        })
    };
    let _ = writeln!(
        out,
        "{} stream={} seq={} bytes={}..{} end={:?} cut={:?} data={} missing={} grpc={:?} 1xx={} ops={}..{}",
        if m.request { "request" } else { "response" },
        i.stream_id,
        i.seq,
        i.offset,
        i.end_offset,
        i.end,
        i.headers_cut,
        i.data_len,
        i.data_missing,
        i.grpc,
        i.informational,
        op(i.first_op),
        op(i.last_op),
    );
    for (k, (n, v, why)) in m.fields.iter().enumerate() {
        let t = if k >= m.trailers_from {
            " (trailer)"
        } else {
            ""
        };
        let w = why.map_or(String::new(), |w| format!(" [{}]", w.as_str()));
        let _ = writeln!(out, "    {}: {}{}{}", text(n), text(v), t, w);
    }
}
