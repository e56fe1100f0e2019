//! The protocol seam: detection table, h2c upgrade and HTTP/2 joined
//! mid-way with unknown roles, on the recorded corpus.

use std::path::Path;

use protocols::conn::{detect, ConnConfig, ConnParser, Detected, Dir, Protocol, Version};
use protocols::stream::{Chunk, Piece};

fn corpus(case: &str) -> (Vec<u8>, Vec<u8>) {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/h2")
        .join(case);
    (
        std::fs::read(d.join("0.c2s.bin")).expect("c2s"),
        std::fs::read(d.join("0.s2c.bin")).expect("s2c"),
    )
}

#[test]
fn detection_table() {
    let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
    // Python's h2 (hypercorn) opens with seven settings.
    let mut seven = vec![0, 0, 42, 4, 0, 0, 0, 0, 0];
    for id in [1u16, 2, 4, 5, 8, 3, 6] {
        seven.extend(id.to_be_bytes());
        seven.extend(100u32.to_be_bytes());
    }
    let (grpc_c2s, grpc_s2c) = corpus("grpcio_calls");
    let cases: &[(&[u8], Detected)] = &[
        (b"", Detected::NeedMore),
        (b"GET / HTTP/1.1\r\n", Detected::Http1Request),
        (b"HTTP/1.1 200 OK\r\n", Detected::Http1Response),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Detected::Http2Preface),
        (b"PRI * HTTP/2.0\r\n", Detected::NeedMore),
        (&settings, Detected::Http2Settings),
        (&seven, Detected::Http2Settings),
        (&grpc_s2c, Detected::Http2Settings),
        (&grpc_c2s, Detected::Http2Preface),
        (b"\x16\x03\x01\x02\x00\x01\x00", Detected::Tls),
        (
            b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09",
            Detected::Unknown,
        ),
        (b"some text in the middle of a body", Detected::Unknown),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            detect(bytes),
            *want,
            "{:02x?}",
            &bytes[..bytes.len().min(16)]
        );
    }
    // Mid-connection: a frame boundary inside the recorded stream.
    let mid = &grpc_c2s[24..];
    assert_eq!(detect(mid), Detected::Http2Settings);
}

fn chunk<'a>(offset: usize, pieces: &'a [Piece<'a>]) -> Chunk<'a> {
    Chunk::untimed(100 + offset as u32, offset as u64, pieces)
}

/// (is_request, version, stream, method or status, path)
type Row = (bool, Version, Option<u32>, String, String);

fn run(p: &mut ConnParser, feeds: &[(Dir, &[u8], usize)]) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut note = |m: protocols::conn::MessageView<'_>| {
        let what = if m.is_request() {
            format!("{:?}", m.method())
        } else {
            format!("{:?}", m.status())
        };
        rows.push((
            m.is_request(),
            m.version(),
            m.stream_id(),
            what,
            format!("{:?}", m.target()),
        ));
    };
    for (dir, data, from) in feeds {
        for (k, c) in data[*from..].chunks(700).enumerate() {
            let pieces = [Piece::Data(c)];
            p.feed(*dir, &chunk(k * 700, &pieces), &mut note);
        }
    }
    p.flush(&mut note);
    rows
}

#[test]
fn h2c_upgrade_from_nghttp() {
    let (c2s, s2c) = corpus("nghttp_upgrade");
    assert!(c2s.starts_with(b"GET /a.txt HTTP/1.1"));
    for order in [[0, 1], [1, 0]] {
        let mut p = ConnParser::new(ConnConfig::default(), Some(Dir::A));
        let feeds = [(Dir::A, &c2s[..], 0), (Dir::B, &s2c[..], 0)];
        let rows = run(&mut p, &[feeds[order[0]], feeds[order[1]]]);
        assert_eq!(p.protocol(), Protocol::Http2, "{order:?}");
        let reqs: Vec<_> = rows.iter().filter(|r| r.0).collect();
        let resps: Vec<_> = rows.iter().filter(|r| !r.0).collect();
        // The upgraded request on stream 1 (sent as HTTP/1.1), then b.txt
        // on stream 3 in HTTP/2.
        assert_eq!(reqs[0].1, Version::Http11);
        assert_eq!(reqs[0].2, Some(1));
        assert_eq!(reqs[0].4, "Some(Ok(\"/a.txt\"))");
        assert!(reqs
            .iter()
            .any(|r| r.1 == Version::Http2 && r.4 == "Some(Ok(\"/b.txt\"))"));
        assert!(
            resps
                .iter()
                .all(|r| r.1 == Version::Http2 && r.3 == "Some(Ok(200))"),
            "{order:?} {rows:?}"
        );
        assert_eq!(resps.len(), reqs.len(), "{rows:?}");
        assert!(resps.iter().any(|r| r.2 == Some(1)));
        assert_eq!(p.counters().h2c_upgrades, 1);
    }
}

#[test]
fn mid_stream_http2_with_unknown_roles() {
    let (c2s, s2c) = corpus("grpcio_50_concurrent");
    // Join at a third of each direction, roles not given.
    let mut p = ConnParser::new(ConnConfig::default(), None);
    let rows = run(
        &mut p,
        &[
            (Dir::B, &s2c[..], s2c.len() / 3),
            (Dir::A, &c2s[..], c2s.len() / 3),
        ],
    );
    assert_eq!(p.protocol(), Protocol::Http2);
    assert_eq!(p.client(), Some(Dir::A));
    let reqs: Vec<_> = rows.iter().filter(|r| r.0).collect();
    assert!(!reqs.is_empty());
    // grpcio indexes :path: after joining late it is unknown, never wrong.
    for r in &reqs {
        assert!(
            r.4 == "Some(Err(Attach))" || r.4 == "Some(Ok(\"/demo.Demo/Echo\"))",
            "{r:?}"
        );
        assert_eq!(r.3, "Some(Ok(\"POST\"))");
    }
}

#[test]
fn http1_still_works_through_the_seam() {
    let rq = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    let rs = b"HTTP/1.1 204 No Content\r\n\r\n";
    let mut p = ConnParser::new(ConnConfig::default(), None);
    let rows = run(&mut p, &[(Dir::B, rq, 0), (Dir::A, rs, 0)]);
    assert_eq!(p.protocol(), Protocol::Http1);
    assert_eq!(p.client(), Some(Dir::B));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].4, "Some(Ok(\"/x\"))");
    assert_eq!(rows[1].3, "Some(Ok(204))");
}

/// A response whose body runs until the connection closes (HTTP/1.0
/// without a length: gnutls-serv, simple servers) ends at the flush, on
/// the server's side, as every other response does.
#[test]
fn a_close_delimited_response_flushes_on_the_server_side() {
    let rq = b"GET /old HTTP/1.1\r\nHost: a\r\n\r\n";
    let rs = b"HTTP/1.0 200 OK\r\nContent-type: text/html\r\n\r\n<p>until close";
    for client in [Dir::A, Dir::B] {
        let mut p = ConnParser::new(ConnConfig::default(), None);
        let mut seen = Vec::new();
        let pieces = [Piece::Data(rq)];
        p.feed(client, &chunk(0, &pieces), &mut |m| {
            seen.push((m.dir(), m.is_request()))
        });
        let pieces = [Piece::Data(rs)];
        p.feed(client.other(), &chunk(0, &pieces), &mut |m| {
            seen.push((m.dir(), m.is_request()))
        });
        assert_eq!(seen, [(client, true)], "the body has not ended yet");
        p.flush(&mut |m| seen.push((m.dir(), m.is_request())));
        assert_eq!(seen, [(client, true), (client.other(), false)]);
    }
}

#[test]
fn tls_is_opaque() {
    let mut p = ConnParser::new(ConnConfig::default(), Some(Dir::A));
    let rows = run(
        &mut p,
        &[(Dir::A, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 0)],
    );
    assert!(rows.is_empty());
    assert_eq!(p.protocol(), Protocol::Opaque);
}

/// Feeds one chunk per `(dir, bytes)` in order, offsets per direction.
fn feed_chunks(p: &mut ConnParser, feeds: &[(Dir, &[u8])]) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut offs = [0usize; 2];
    for (dir, data) in feeds {
        let k = usize::from(*dir == Dir::B);
        let pieces = [Piece::Data(data)];
        p.feed(*dir, &chunk(offs[k], &pieces), &mut |m| {
            rows.push((
                m.is_request(),
                m.version(),
                m.stream_id(),
                format!(
                    "{:?}",
                    m.method().or(m.status().map(|s| s.map(|_| "status")))
                ),
                format!("{:?}", m.target()),
            ))
        });
        offs[k] += data.len();
    }
    rows
}

#[test]
fn seen_from_its_start_a_connection_shows_its_protocol_at_once() {
    // The client known (the opening was seen): a first chunk that starts
    // no protocol this parses, from either side, is opaque right away.
    for (dir, first) in [
        (Dir::A, &b"*1\r\n$4\r\nPING\r\n"[..]),
        (Dir::B, &b"+OK\r\n some text that is long enough"[..]),
        (
            Dir::A,
            &b"\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a"[..],
        ),
        // A status line from the client's side, a request from the
        // server's, a preface from the server's.
        (Dir::A, &b"HTTP/1.1 200 OK\r\n\r\n"[..]),
        (Dir::B, &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..]),
        (Dir::B, &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]),
    ] {
        let mut p = ConnParser::new(ConnConfig::default(), Some(Dir::A));
        feed_chunks(&mut p, &[(dir, first)]);
        assert_eq!(p.protocol(), Protocol::Opaque, "{first:?}");
    }
    // A short first write of text waits in the HTTP/1 parser for the rest.
    let mut p = ConnParser::new(ConnConfig::default(), Some(Dir::A));
    let rows = feed_chunks(
        &mut p,
        &[
            (Dir::A, b"GE"),
            (Dir::A, b"T /short HTTP/1.1\r\nHost: a\r\n\r\n"),
            (Dir::B, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ],
    );
    assert_eq!(p.protocol(), Protocol::Http1);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].4, "Some(Ok(\"/short\"))");
    // A first write that is part of the preface waits for the rest.
    let mut p = ConnParser::new(ConnConfig::default(), Some(Dir::A));
    feed_chunks(&mut p, &[(Dir::A, b"PRI * HTTP/2")]);
    assert_eq!(p.protocol(), Protocol::Undecided);
}

#[test]
fn text_of_a_connection_older_than_the_agent_waits_for_a_message_start() {
    // Roles unknown, the middle of a body: neither opaque nor guessed; the
    // next chunk that starts a request decides.
    let mut p = ConnParser::new(ConnConfig::default(), None);
    let rows = feed_chunks(
        &mut p,
        &[
            (Dir::B, b"the rest of some body text"),
            (Dir::B, b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"),
            (Dir::A, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ],
    );
    assert_eq!(p.protocol(), Protocol::Http1);
    assert_eq!(p.client(), Some(Dir::B));
    assert_eq!(p.counters().chunks_undecided, 1);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].4, "Some(Ok(\"/next\"))");
}

/// Offset of the first frame of `kind` in `data`, whose frames start at
/// `from`.
fn first_frame(data: &[u8], mut from: usize, kind: u8) -> usize {
    while from + 9 <= data.len() {
        let len = u32::from_be_bytes([0, data[from], data[from + 1], data[from + 2]]) as usize;
        if data[from + 3] == kind {
            return from;
        }
        from += 9 + len;
    }
    panic!("no frame of type {kind}");
}

#[test]
fn tls_plaintext_joined_at_a_call_is_read_from_that_frame() {
    // A TLS client probed after its connection began: its plaintext starts
    // at its first request's HEADERS, the server's at its first response's,
    // the preface and SETTINGS before them unseen.
    const HEADERS: u8 = 1;
    let (c2s, s2c) = corpus("grpcio_calls");
    let feeds = |c: usize, s: usize| [(Dir::A, &c2s[..], c), (Dir::B, &s2c[..], s)];
    let mut whole = ConnParser::new(ConnConfig::default(), Some(Dir::A));
    let all = run(&mut whole, &feeds(0, 0));
    let (c, s) = (
        first_frame(&c2s, 24, HEADERS),
        first_frame(&s2c, 0, HEADERS),
    );
    let mut joined = ConnParser::new(ConnConfig::default(), Some(Dir::A));
    joined.joined_at_call();
    let rows = run(&mut joined, &feeds(c, s));
    assert_eq!(joined.protocol(), Protocol::Http2);
    // Nothing before the first HEADERS added to the HPACK tables: every
    // request and response is decoded as from the start.
    assert!(all.iter().filter(|r| r.0).count() >= 3, "{all:?}");
    assert_eq!(rows, all);
    // Seen from its first byte, the same bytes are not HTTP.
    let mut start = ConnParser::new(ConnConfig::default(), Some(Dir::A));
    run(&mut start, &feeds(c, s));
    assert_eq!(start.protocol(), Protocol::Opaque);
    // Another protocol at a call (Redis over TLS) is not scanned for HTTP:
    // opaque at once, as from the first byte.
    let mut redis = ConnParser::new(ConnConfig::default(), Some(Dir::A));
    redis.joined_at_call();
    feed_chunks(&mut redis, &[(Dir::A, b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n")]);
    assert_eq!(redis.protocol(), Protocol::Opaque);
}
