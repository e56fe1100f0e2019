//! Golden tests: recorded-looking request/response streams (curl talking
//! to nginx) in `tests/golden/<case>/{requests,responses}.bin`, parsed
//! whole and through the stream reassembler (one send per message,
//! 1448-byte segments captured to 256 bytes); the
//! output is compared with `expected.txt` / `expected_captured.txt`.
//!
//! Set `UPDATE_GOLDEN=1` to rewrite the expected files after a deliberate
//! change (and review the diff).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use protocols::http1::{Http1Config, Http1Connection, Message};
use protocols::stream::{OpMeta, StreamLimits, StreamReassembler};

fn render(out: &mut String, m: &Message) {
    let i = m.info();
    let op = |o: Option<OpMeta>| {
        o.map_or("-".to_owned(), |o| {
            format!("{}/{}@{}", o.pid, o.tid, o.ts_ns)
        })
    };
    match m {
        Message::Request(r) => {
            let _ = write!(
                out,
                "request {} {} HTTP/1.{}",
                r.method.as_str(),
                r.target,
                r.version
            );
        }
        Message::Response(r) => {
            let _ = write!(
                out,
                "response {} {:?} HTTP/1.{}",
                r.status, r.reason, r.version
            );
        }
    }
    let _ = writeln!(
        out,
        " bytes={}..{} seq={} head={} framing={:?} body={:?} missing={} end={:?} ops={}..{}",
        i.offset,
        i.end_offset,
        i.seq,
        i.head_len,
        i.framing,
        i.body_len,
        i.body_missing,
        i.end,
        op(i.first_op),
        op(i.last_op),
    );
    for h in m.headers() {
        let _ = writeln!(out, "    {}: {}", h.name, h.value_str());
    }
}

fn finish(out: &mut String, conn: &Http1Connection) {
    let _ = writeln!(out, "requests: {:?}", conn.requests().counters());
    let _ = writeln!(out, "responses: {:?}", conn.responses().counters());
}

/// Both streams, each fed as one piece; also returns where messages start
/// and end in each direction.
fn parse_whole(rq: &[u8], rs: &[u8]) -> (String, Vec<u64>, Vec<u64>) {
    let mut conn = Http1Connection::new(Http1Config::default());
    let mut out = String::new();
    let (mut bq, mut bs) = (vec![0u64], vec![0u64]);
    let note = |out: &mut String, b: &mut Vec<u64>, m: &Message| {
        render(out, m);
        b.push(m.info().offset);
        b.push(m.info().end_offset);
    };
    let pieces = [protocols::stream::Piece::Data(rq)];
    let chunk = |pieces| protocols::stream::Chunk {
        seq: 1000,
        offset: 0,
        len: 0,
        op: None,
        seg_ts_ns: None,
        pieces,
    };
    conn.feed_requests(&chunk(&pieces), &mut |m| {
        note(&mut out, &mut bq, &m.to_owned())
    });
    let pieces = [protocols::stream::Piece::Data(rs)];
    conn.feed_responses(&chunk(&pieces), &mut |m| {
        note(&mut out, &mut bs, &m.to_owned())
    });
    conn.flush(&mut |m| note(&mut out, &mut bs, &m.to_owned()));
    finish(&mut out, &conn);
    (out, bq, bs)
}

/// Pushes `data` through a reassembler the way the kernel would see it:
/// one send per message (cut at `bounds`), sent as 1448-byte segments
/// captured to `cap` bytes and recorded out of order by pairs; one op per
/// message (per 16 KiB for larger ones).
fn through_stream(
    data: &[u8],
    bounds: &[u64],
    isn: u32,
    cap: usize,
    tid0: u32,
    mut sink: impl FnMut(&protocols::stream::Chunk<'_>),
) {
    let mut cuts: Vec<usize> = bounds
        .iter()
        .map(|b| *b as usize)
        .filter(|b| *b < data.len())
        .collect();
    cuts.push(0);
    cuts.push(data.len());
    cuts.sort_unstable();
    cuts.dedup();
    let mut sends = Vec::new();
    for w in cuts.windows(2) {
        for s in (w[0]..w[1]).step_by(16 * 1024) {
            sends.push((s, (s + 16 * 1024).min(w[1])));
        }
    }
    let mut r = StreamReassembler::new(StreamLimits::default());
    let mut t = 0u64;
    for (k, &(s0, e0)) in sends.iter().enumerate() {
        let segs: Vec<(usize, usize)> = (s0..e0)
            .step_by(1448)
            .map(|s| (s, (s + 1448).min(e0)))
            .collect();
        let mut order: Vec<usize> = (0..segs.len()).collect();
        for pair in order.chunks_mut(2) {
            pair.reverse();
        }
        for i in order {
            let (s, e) = segs[i];
            r.push_segment(
                isn.wrapping_add(s as u32),
                (e - s) as u32,
                &data[s..e.min(s + cap)],
                t,
            );
            t += 1;
        }
        let meta = OpMeta {
            pid: 42,
            tid: tid0 + k as u32,
            ts_ns: t,
        };
        r.push_op(isn.wrapping_add(e0 as u32), (e0 - s0) as u32, meta);
        t += 1;
        r.poll(t, &mut |c| sink(&c));
    }
    r.flush(&mut |c| sink(&c));
}

fn parse_captured(rq: &[u8], rs: &[u8], bq: &[u64], bs: &[u64]) -> String {
    let mut conn = Http1Connection::new(Http1Config::default());
    let mut out = String::new();
    through_stream(rq, bq, u32::MAX - 300, 256, 1, |c| {
        conn.feed_requests(c, &mut |m| render(&mut out, &m.to_owned()))
    });
    through_stream(rs, bs, 7_000_000, 256, 100, |c| {
        conn.feed_responses(c, &mut |m| render(&mut out, &m.to_owned()))
    });
    conn.flush(&mut |m| render(&mut out, &m.to_owned()));
    finish(&mut out, &conn);
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

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

#[test]
fn golden_streams() {
    let cases = cases();
    assert!(cases.len() >= 5);
    for case in cases {
        let rq = std::fs::read(case.join("requests.bin")).expect("requests.bin");
        let rs = std::fs::read(case.join("responses.bin")).expect("responses.bin");
        let (whole, bq, bs) = parse_whole(&rq, &rs);
        check(&case.join("expected.txt"), &whole);
        check(
            &case.join("expected_captured.txt"),
            &parse_captured(&rq, &rs, &bq, &bs),
        );
    }
}
