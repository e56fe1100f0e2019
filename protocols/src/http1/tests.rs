//! Table tests for the HTTP/1 parser.

use super::*;
use crate::stream::{MissingKind, OpMeta, Piece};

/// What a test looks at in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct M {
    /// "GET /x" or "200 OK"
    line: String,
    offset: u64,
    end_offset: u64,
    framing: BodyFraming,
    body_len: Option<u64>,
    body_missing: u64,
    end: MessageEnd,
}

fn m(line: &str, offset: u64, end_offset: u64, framing: BodyFraming, body_len: Option<u64>) -> M {
    M {
        line: line.to_owned(),
        offset,
        end_offset,
        framing,
        body_len,
        body_missing: 0,
        end: MessageEnd::Complete,
    }
}

fn summary(msg: &Message) -> M {
    let line = match msg {
        Message::Request(r) => format!("{} {}", r.method.as_str(), r.target),
        Message::Response(r) => format!("{} {}", r.status, r.reason),
    };
    let i = msg.info();
    M {
        line,
        offset: i.offset,
        end_offset: i.end_offset,
        framing: i.framing,
        body_len: i.body_len,
        body_missing: i.body_missing,
        end: i.end,
    }
}

enum In<'a> {
    D(&'a [u8]),
    T(u32),
    H(u32),
}

fn run(p: &mut Http1Parser, input: &[In<'_>]) -> Vec<Message> {
    let mut v = Vec::new();
    for i in input {
        match i {
            In::D(d) => p.feed_bytes(d, &mut |m| v.push(m.to_owned())),
            In::T(n) => p.feed_missing(*n, MissingKind::Truncated, &mut |m| v.push(m.to_owned())),
            In::H(n) => p.feed_missing(*n, MissingKind::Hole, &mut |m| v.push(m.to_owned())),
        }
    }
    v
}

fn req() -> Http1Parser {
    Http1Parser::new(Role::Request, Http1Config::default())
}

fn resp() -> Http1Parser {
    Http1Parser::new(Role::Response, Http1Config::default())
}

fn resp_expecting(kinds: &[RequestKind]) -> Http1Parser {
    let mut p = resp();
    for k in kinds {
        p.expect_request(*k);
    }
    p
}

fn sums(v: &[Message]) -> Vec<M> {
    v.iter().map(summary).collect()
}

const GET: &[u8] = b"GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";

#[test]
fn simple_get() {
    let mut p = req();
    let v = run(&mut p, &[In::D(GET)]);
    assert_eq!(
        sums(&v),
        vec![m(
            "GET /index.html?q=1",
            0,
            GET.len() as u64,
            BodyFraming::None,
            Some(0)
        )]
    );
    let Message::Request(r) = &v[0] else { panic!() };
    assert_eq!(r.version, 1);
    assert_eq!(r.method, Method::Get);
    assert_eq!(r.header("HOST"), Some(&b"example.com"[..]));
    assert_eq!(r.header("user-agent"), Some(&b"curl/8.5.0"[..]));
    assert_eq!(r.header("missing"), None);
    assert_eq!(
        find_header(&r.headers, "accept").map(|h| h.value_str()),
        Some("*/*".into())
    );
    assert_eq!(r.info.head_len as usize, GET.len());
    assert_eq!(p.take_request_kind(), Some(RequestKind::Other));
    assert_eq!(p.take_request_kind(), None);
}

#[test]
fn trim_keeps_small_head_buffers_and_frees_large_ones() {
    let mut p = req();
    assert_eq!(run(&mut p, &[In::D(GET)]).len(), 1);
    let small = p.head_heap_bytes();
    assert!(small > 0);
    p.trim();
    assert_eq!(p.head_heap_bytes(), small, "kept for the next connection");
    // A 3 KiB head: its buffers go at the trim.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nCookie: {}\r\n\r\n",
        "c".repeat(3000)
    );
    assert_eq!(run(&mut p, &[In::D(big.as_bytes())]).len(), 1);
    assert!(p.head_heap_bytes() > 3000);
    p.trim();
    assert!(p.head_heap_bytes() <= 2048, "{}", p.head_heap_bytes());
    assert_eq!(
        sums(&run(&mut p, &[In::D(GET)]))[0].line,
        "GET /index.html?q=1"
    );
}

#[test]
fn trim_keeps_what_a_message_in_progress_needs() {
    // A head cut in two, trimmed between the halves.
    let mut p = req();
    assert!(run(&mut p, &[In::D(&GET[..10])]).is_empty());
    p.trim();
    let v = run(&mut p, &[In::D(&GET[10..])]);
    assert_eq!(sums(&v)[0].line, "GET /index.html?q=1");
    // A body in progress, and a request kind still expected (HEAD).
    let mut p = resp_expecting(&[RequestKind::Other, RequestKind::Head]);
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe";
    assert!(run(&mut p, &[In::D(head)]).is_empty());
    p.trim();
    let v = run(&mut p, &[In::D(b"llo")]);
    assert_eq!(
        sums(&v),
        vec![m(
            "200 OK",
            0,
            head.len() as u64 + 3,
            BodyFraming::ContentLength(5),
            Some(5)
        )]
    );
    p.trim();
    let next = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
    let v = run(&mut p, &[In::D(next)]);
    let start = head.len() as u64 + 3;
    assert_eq!(
        sums(&v),
        vec![m(
            "200 OK",
            start,
            start + next.len() as u64,
            BodyFraming::None,
            Some(0)
        )],
        "the answer to HEAD has no body"
    );
}

#[test]
fn byte_by_byte() {
    let mut p = req();
    let v: Vec<Message> = GET
        .iter()
        .flat_map(|b| run(&mut p, &[In::D(std::slice::from_ref(b))]))
        .collect();
    assert_eq!(
        sums(&v),
        vec![m(
            "GET /index.html?q=1",
            0,
            GET.len() as u64,
            BodyFraming::None,
            Some(0)
        )]
    );
}

#[test]
fn post_with_content_length_and_pipelining() {
    let s = b"POST /api HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.0\r\n\r\n";
    let mut p = req();
    let v = run(&mut p, &[In::D(&s[..45]), In::D(&s[45..])]);
    assert_eq!(
        sums(&v),
        vec![
            m("POST /api", 0, 46, BodyFraming::ContentLength(5), Some(5)),
            m("GET /a", 46, 65, BodyFraming::None, Some(0)),
            m("GET /b", 65, 84, BodyFraming::None, Some(0)),
        ]
    );
    let Message::Request(r) = &v[2] else { panic!() };
    assert_eq!(r.version, 0);
}

#[test]
fn chunked_request_with_trailers() {
    let s = b"PUT /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Sum: 1\r\n\r\nDELETE /u HTTP/1.1\r\n\r\n";
    let mut p = req();
    let v = run(&mut p, &[In::D(s)]);
    let first_end = s.len() as u64 - 22;
    assert_eq!(
        sums(&v),
        vec![
            m("PUT /u", 0, first_end, BodyFraming::Chunked, Some(9)),
            m(
                "DELETE /u",
                first_end,
                s.len() as u64,
                BodyFraming::None,
                Some(0)
            ),
        ]
    );
}

#[test]
fn leading_empty_lines_between_messages() {
    let s = b"GET /a HTTP/1.1\r\n\r\n\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
    let v = run(&mut req(), &[In::D(s)]);
    assert_eq!(sums(&v)[1].line, "GET /b");
    assert_eq!(v.len(), 2);
}

#[test]
fn truncated_body_skipped_by_count() {
    let mut p = req();
    let head = b"POST /upload HTTP/1.1\r\nContent-Length: 10000\r\n\r\n";
    let v = run(
        &mut p,
        &[
            In::D(head),
            In::D(b"abc"),
            In::T(9000),
            In::D(b"xyz"),
            In::H(994),
            In::D(b"GET / HTTP/1.1\r\n\r\n"),
        ],
    );
    let hl = head.len() as u64;
    let mut first = m(
        "POST /upload",
        0,
        hl + 10000,
        BodyFraming::ContentLength(10000),
        Some(10000),
    );
    first.body_missing = 9994;
    assert_eq!(
        sums(&v),
        vec![
            first,
            m("GET /", hl + 10000, hl + 10018, BodyFraming::None, Some(0))
        ]
    );
    assert_eq!(p.counters().body_bytes_missing, 9994);
    assert_eq!(p.counters().resyncs, 0);
}

#[test]
fn missing_inside_head_emits_partial_and_resyncs() {
    let mut p = req();
    let v = run(
        &mut p,
        &[
            In::D(b"GET /long?x=1 HTTP/1.1\r\nHost: a\r\nCookie: aaaa"),
            In::T(3000),
            In::D(b"more cookie\r\n\r\nPOST /next HTTP/1.1\r\nContent-Length: 2\r\n\r\nok"),
        ],
    );
    assert_eq!(v.len(), 2);
    let a = summary(&v[0]);
    assert_eq!(a.line, "GET /long?x=1");
    assert_eq!(a.end, MessageEnd::HeadTruncated);
    assert_eq!(a.framing, BodyFraming::Unknown);
    assert_eq!(v[0].headers().len(), 1);
    let b = summary(&v[1]);
    assert_eq!(b.line, "POST /next");
    assert_eq!(b.body_len, Some(2));
    assert_eq!(p.counters().heads_truncated, 1);
    assert_eq!(p.counters().resyncs, 1);
    assert_eq!(p.take_request_kind(), Some(RequestKind::Other));
    assert_eq!(p.take_request_kind(), Some(RequestKind::Other));
}

#[test]
fn hole_between_messages_resyncs_at_line_start() {
    let mut p = req();
    let v = run(
        &mut p,
        &[
            In::D(b"GET /a HTTP/1.1\r\n\r\n"),
            In::H(100),
            In::D(b"tail of something GET /fake HTTP/1.1\r\n"),
            In::D(b"x\r\nGET /b HTTP/1.1\r\n\r\n"),
        ],
    );
    assert_eq!(
        sums(&v).iter().map(|m| m.line.as_str()).collect::<Vec<_>>(),
        vec!["GET /a", "GET /b"]
    );
    assert!(p.counters().bytes_skipped >= 100);
}

#[test]
fn head_too_large() {
    let cfg = Http1Config {
        max_head_bytes: 256,
        ..Http1Config::default()
    };
    let mut p = Http1Parser::new(Role::Request, cfg);
    let mut big = b"GET /big HTTP/1.1\r\n".to_vec();
    for i in 0..40 {
        big.extend_from_slice(format!("X-H{i}: value\r\n").as_bytes());
    }
    big.extend_from_slice(b"\r\nGET /after HTTP/1.1\r\n\r\n");
    let v = run(&mut p, &[In::D(&big)]);
    assert_eq!(p.counters().heads_too_large, 1);
    let lines: Vec<_> = sums(&v).into_iter().map(|m| (m.line, m.end)).collect();
    assert_eq!(
        lines,
        vec![
            ("GET /big".to_owned(), MessageEnd::HeadTruncated),
            ("GET /after".to_owned(), MessageEnd::Complete)
        ]
    );
}

#[test]
fn response_framings() {
    use RequestKind::Other;
    let s = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\nHTTP/1.1 304 Not Modified\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.0 200 OK\r\n\r\nuntil close";
    let mut p = resp_expecting(&[Other, Other, Other, Other, Other]);
    let mut v = run(&mut p, &[In::D(s)]);
    assert_eq!(v.len(), 4);
    p.flush(&mut |m| v.push(m.to_owned()));
    let got: Vec<_> = sums(&v)
        .into_iter()
        .map(|m| (m.line, m.framing, m.body_len, m.end))
        .collect();
    use BodyFraming::*;
    assert_eq!(
        got,
        vec![
            (
                "200 OK".into(),
                ContentLength(3),
                Some(3),
                MessageEnd::Complete
            ),
            ("204 No Content".into(), None, Some(0), MessageEnd::Complete),
            (
                "304 Not Modified".into(),
                None,
                Some(0),
                MessageEnd::Complete
            ),
            ("200 OK".into(), Chunked, Some(3), MessageEnd::Complete),
            (
                "200 OK".into(),
                CloseDelimited,
                Some(11),
                MessageEnd::Complete
            ),
        ]
    );
    assert_eq!(v[4].info().end_offset, s.len() as u64);
}

#[test]
fn head_response_has_no_body() {
    let s = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi";
    let mut p = resp_expecting(&[RequestKind::Head, RequestKind::Other]);
    let v = run(&mut p, &[In::D(s)]);
    let got: Vec<_> = sums(&v)
        .into_iter()
        .map(|m| (m.framing, m.body_len))
        .collect();
    assert_eq!(
        got,
        vec![
            (BodyFraming::None, Some(0)),
            (BodyFraming::ContentLength(2), Some(2))
        ]
    );
    assert_eq!(p.counters().head_guesses, 0);
}

#[test]
fn head_response_guessed_without_request() {
    let s = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nhi";
    let mut p = resp();
    let v = run(&mut p, &[In::D(&s[..40]), In::D(&s[40..])]);
    let got: Vec<_> = sums(&v).into_iter().map(|m| (m.line, m.body_len)).collect();
    assert_eq!(
        got,
        vec![
            ("200 OK".into(), Some(0)),
            ("404 Not Found".into(), Some(2))
        ]
    );
    assert_eq!(p.counters().head_guesses, 1);
    assert_eq!(p.counters().responses_unpaired, 2);
}

#[test]
fn interim_responses_do_not_consume_the_request() {
    let s = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
    let mut p = resp_expecting(&[RequestKind::Head]);
    let v = run(&mut p, &[In::D(s)]);
    assert_eq!(
        sums(&v),
        vec![m("200 OK", 69, s.len() as u64, BodyFraming::None, Some(0))]
    );
    assert_eq!(p.counters().interim_responses, 2);
    let cfg = Http1Config {
        emit_interim: true,
        ..Http1Config::default()
    };
    let mut p = Http1Parser::new(Role::Response, cfg);
    p.expect_request(RequestKind::Head);
    let v = run(&mut p, &[In::D(s)]);
    assert_eq!(v.len(), 3);
    assert!(matches!(&v[0], Message::Response(r) if r.is_interim()));
}

#[test]
fn expect_continue_request() {
    let s = b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n";
    let mut p = req();
    let mut v = run(&mut p, &[In::D(s)]);
    assert!(v.is_empty(), "waits for the body");
    v.extend(run(&mut p, &[In::D(b"data")]));
    assert_eq!(sums(&v)[0].body_len, Some(4));
    assert_eq!(
        p.take_request_kind(),
        Some(RequestKind::Other),
        "reported before the body"
    );
}

#[test]
fn upgrade_101_stops_both_sides() {
    let mut c = Http1Connection::new(Http1Config::default());
    let mut v = Vec::new();
    let rq = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let rs = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello";
    let chunk =
        |d: &'static [u8], off: u64, pieces: &'static [Piece<'static>]| crate::stream::Chunk {
            seq: 0,
            offset: off,
            len: d.len() as u32,
            op: None,
            seg_ts_ns: None,
            pieces,
        };
    let rq_pieces: &'static [Piece<'static>] = Box::leak(Box::new([Piece::Data(rq)]));
    let rs_pieces: &'static [Piece<'static>] = Box::leak(Box::new([Piece::Data(rs)]));
    c.feed_requests(&chunk(rq, 0, rq_pieces), &mut |m| v.push(m.to_owned()));
    c.feed_responses(&chunk(rs, 0, rs_pieces), &mut |m| v.push(m.to_owned()));
    assert_eq!(v.len(), 2);
    assert!(c.responses().is_upgraded());
    assert!(c.requests().is_upgraded());
    assert_eq!(summary(&v[1]).framing, BodyFraming::Tunnel);
}

#[test]
fn upgrade_request_then_frames_without_response() {
    let mut p = req();
    let v = run(
        &mut p,
        &[
            In::D(b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
            In::D(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"),
        ],
    );
    assert_eq!(v.len(), 1);
    assert!(p.is_upgraded());
    assert_eq!(p.counters().parse_errors, 0);
    assert_eq!(p.counters().bytes_skipped, 0);
}

#[test]
fn upgrade_declined_keeps_parsing() {
    let mut p = req();
    let v = run(
        &mut p,
        &[
            In::D(b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"),
            In::D(b"GET /plain HTTP/1.1\r\n\r\n"),
        ],
    );
    assert_eq!(v.len(), 2);
    assert!(!p.is_upgraded());
}

#[test]
fn connect_tunnel() {
    let mut p = resp_expecting(&[RequestKind::Connect]);
    let v = run(
        &mut p,
        &[In::D(
            b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01\x02\x00",
        )],
    );
    assert_eq!(v.len(), 1);
    assert!(p.is_upgraded());
    assert_eq!(p.counters().upgrades, 1);
    // Refused CONNECT: not a tunnel.
    let mut p = resp_expecting(&[RequestKind::Connect, RequestKind::Other]);
    let v = run(
        &mut p,
        &[In::D(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")],
    );
    assert_eq!(v.len(), 2);
    assert!(!p.is_upgraded());
    // The request side after CONNECT sees tunnel bytes.
    let mut p = req();
    let v = run(&mut p, &[In::D(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01\x00\xa5")]);
    assert_eq!(v.len(), 1);
    assert_eq!(p.take_request_kind(), Some(RequestKind::Connect));
    assert!(p.is_upgraded());
}

#[test]
fn chunked_framing_lost_then_terminator() {
    let mut p = resp_expecting(&[RequestKind::Other, RequestKind::Other]);
    let v = run(
        &mut p,
        &[
            In::D(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\nabc"),
            In::T(9000), // covers the rest of the chunk, its CRLF and the next size line
            In::D(b"zzz\r\n0\r\n\r\n"),
            In::D(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ],
    );
    let got = sums(&v);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].end, MessageEnd::FramingLost);
    assert_eq!(got[0].body_len, None);
    assert_eq!(got[0].end_offset, got[1].offset);
    assert_eq!(got[1].end, MessageEnd::Complete);
    assert_eq!(p.counters().framing_lost, 1);
}

#[test]
fn chunked_framing_lost_then_next_message() {
    let mut p = resp_expecting(&[RequestKind::Other, RequestKind::Other]);
    let v = run(
        &mut p,
        &[
            In::D(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n"),
            In::H(40),
            In::D(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        ],
    );
    let got = sums(&v);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].end, MessageEnd::FramingLost);
    assert_eq!(got[1].line, "404 Not Found");
}

#[test]
fn chunked_data_skipped_by_count() {
    let mut p = resp_expecting(&[RequestKind::Other]);
    let v = run(
        &mut p,
        &[
            In::D(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\nab"),
            In::T(1022),
            In::D(b"\r\n0\r\n\r\n"),
        ],
    );
    let got = sums(&v);
    assert_eq!(got[0].body_len, Some(1024));
    assert_eq!(got[0].body_missing, 1022);
    assert_eq!(got[0].end, MessageEnd::Complete);
}

#[test]
fn binary_and_other_protocols_are_not_http() {
    for start in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
    ] {
        let mut p = req();
        let v = run(&mut p, &[In::D(start), In::D(b"GET / HTTP/1.1\r\n\r\n")]);
        assert!(v.is_empty());
        assert!(p.is_not_http());
        assert_eq!(p.counters().not_http, 1);
    }
}

#[test]
fn text_garbage_exhausts_the_budget() {
    let cfg = Http1Config {
        detect_budget: 1000,
        ..Http1Config::default()
    };
    let mut p = Http1Parser::new(Role::Response, cfg);
    for _ in 0..100 {
        run(
            &mut p,
            &[In::D(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")],
        );
    }
    assert!(p.is_not_http());
}

#[test]
fn preexisting_connection_mid_body() {
    let mut p = resp_expecting(&[RequestKind::Other]);
    let v = run(
        &mut p,
        &[
            In::D(b"ody of an earlier response\r\nmore text\r\n"),
            In::D(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ],
    );
    assert_eq!(v.len(), 1);
    assert!(!p.is_not_http());
    assert!(p.counters().bytes_skipped > 0);
}

#[test]
fn parse_error_mid_stream_resyncs() {
    let mut p = req();
    let v = run(
        &mut p,
        &[In::D(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nBad Header\x01: x\r\n\r\nGET /c HTTP/1.1\r\n\r\n")],
    );
    let lines: Vec<_> = sums(&v).into_iter().map(|m| m.line).collect();
    assert_eq!(lines, vec!["GET /a", "GET /c"]);
    assert_eq!(p.counters().parse_errors, 1);
    assert_eq!(p.counters().resyncs, 1);
}

#[test]
fn invalid_content_length() {
    let mut p = req();
    let v = run(
        &mut p,
        &[In::D(b"POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhelloxGET /b HTTP/1.1\r\n\r\n")],
    );
    let got = sums(&v);
    assert_eq!(got[0].end, MessageEnd::FramingLost);
    assert_eq!(got[0].framing, BodyFraming::Unknown);
    assert_eq!(got.len(), 1, "GET /b is not at a line start");
    assert_eq!(p.counters().parse_errors, 1);
}

#[test]
fn flush_cuts_messages() {
    let mut p = resp_expecting(&[RequestKind::Other]);
    let mut v = run(
        &mut p,
        &[In::D(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")],
    );
    assert!(v.is_empty());
    p.flush(&mut |m| v.push(m.to_owned()));
    assert_eq!(sums(&v)[0].end, MessageEnd::Closed);
    assert_eq!(p.counters().closed_incomplete, 1);
    // A partial head at close.
    let mut p = req();
    let mut v = run(&mut p, &[In::D(b"GET /x HTTP/1.1\r\nHost: a\r\nAcc")]);
    p.flush(&mut |m| v.push(m.to_owned()));
    assert_eq!(sums(&v)[0].end, MessageEnd::HeadTruncated);
}

#[test]
fn ops_and_positions_from_chunks() {
    let op = |tid: u32, ts: u64| {
        Some(OpMeta {
            pid: 9,
            tid,
            ts_ns: ts,
        })
    };
    let mut p = req();
    let mut v = Vec::new();
    let a: &[u8] = b"POST /p HTTP/1.1\r\nContent-Length: 6\r\n\r\nab";
    let b: &[u8] = b"cdef";
    let pa = [Piece::Data(a)];
    let pb = [Piece::Data(b)];
    let ca = crate::stream::Chunk {
        seq: u32::MAX - 10,
        offset: 100,
        len: a.len() as u32,
        op: op(1, 10),
        seg_ts_ns: Some(9),
        pieces: &pa,
    };
    let cb = crate::stream::Chunk {
        seq: (u32::MAX - 10).wrapping_add(a.len() as u32),
        offset: 100 + a.len() as u64,
        len: 4,
        op: op(2, 20),
        seg_ts_ns: Some(19),
        pieces: &pb,
    };
    p.feed(&ca, &mut |m| v.push(m.to_owned()));
    p.feed(&cb, &mut |m| v.push(m.to_owned()));
    let i = v[0].info();
    assert_eq!(i.seq, u32::MAX - 10);
    assert_eq!(i.offset, 100);
    assert_eq!(i.end_offset, 100 + a.len() as u64 + 4);
    assert_eq!(i.first_op, op(1, 10));
    assert_eq!(i.last_op, op(2, 20));
    assert_eq!(i.first_seg_ts_ns, Some(9));
    assert_eq!(i.last_seg_ts_ns, Some(19));
    // A chunk after a gap: the gap is a hole; a repeated chunk is ignored.
    let mut v = Vec::new();
    let c = [Piece::Data(&b"GET /z HTTP/1.1\r\n\r\n"[..])];
    let cc = crate::stream::Chunk {
        seq: 0,
        offset: 500,
        len: 19,
        op: op(3, 30),
        seg_ts_ns: None,
        pieces: &c,
    };
    p.feed(&cc, &mut |m| v.push(m.to_owned()));
    p.feed(&cc, &mut |m| v.push(m.to_owned()));
    assert_eq!(
        sums(&v),
        vec![m("GET /z", 500, 519, BodyFraming::None, Some(0))]
    );
}

#[test]
fn head_split_across_missing_piece_of_second_message() {
    // A request whose first bytes are lost: the rest is skipped, the next
    // one is found.
    let mut p = req();
    let v = run(
        &mut p,
        &[
            In::H(5),
            In::D(b"/x HTTP/1.1\r\nHost: a\r\n\r\n"),
            In::D(b"GET /y HTTP/1.1\r\n\r\n"),
        ],
    );
    assert_eq!(
        sums(&v).into_iter().map(|m| m.line).collect::<Vec<_>>(),
        vec!["GET /y"]
    );
}

#[test]
fn resync_candidate_split_across_chunks() {
    let mut p = resp_expecting(&[RequestKind::Other]);
    let v = run(
        &mut p,
        &[
            In::H(10),
            In::D(b"junk\r\nHT"),
            In::D(b"TP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ],
    );
    assert_eq!(v.len(), 1);
    assert_eq!(summary(&v[0]).offset, 16);
}

#[test]
fn connection_pairs_head_requests() {
    let mut c = Http1Connection::new(Http1Config::default());
    let mut v = Vec::new();
    let rq = [Piece::Data(
        &b"HEAD /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"[..],
    )];
    let rs = [Piece::Data(&b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..])];
    let ch = |pieces| crate::stream::Chunk {
        seq: 0,
        offset: 0,
        len: 0,
        op: None,
        seg_ts_ns: None,
        pieces,
    };
    c.feed_requests(&ch(&rq), &mut |m| v.push(m.to_owned()));
    c.feed_responses(&ch(&rs), &mut |m| v.push(m.to_owned()));
    let got: Vec<_> = sums(&v).into_iter().map(|m| (m.line, m.body_len)).collect();
    assert_eq!(
        got,
        vec![
            ("HEAD /a".into(), Some(0)),
            ("GET /b".into(), Some(0)),
            ("200 OK".into(), Some(0)),
            ("200 OK".into(), Some(2))
        ]
    );
    assert_eq!(c.responses().counters().head_guesses, 0);
    assert_eq!(c.responses().counters().responses_unpaired, 0);
}

#[test]
fn lf_only_line_endings() {
    let v = run(
        &mut req(),
        &[In::D(b"GET /lf HTTP/1.1\nHost: a\n\nGET /lf2 HTTP/1.1\n\n")],
    );
    assert_eq!(v.len(), 2);
}

#[test]
fn bad_head_detected_before_its_end() {
    let mut p = req();
    let mut v = run(
        &mut p,
        &[
            In::D(b"GET /a HTTP/1.1\r\n\r\n"),
            In::D(b"GET /b HTTP/1.1\r\nX\x01: y\r\n"),
        ],
    );
    assert_eq!(p.counters().parse_errors, 1, "seen before the blank line");
    v.extend(run(&mut p, &[In::D(b"\r\nGET /c HTTP/1.1\r\n\r\n")]));
    let lines: Vec<_> = sums(&v).into_iter().map(|m| m.line).collect();
    assert_eq!(lines, vec!["GET /a", "GET /c"]);
}

/// A response whose head went unseen leaves its body alone in the stream:
/// the next response says how many bytes were skipped before it and when
/// the first of them came, so that its request pairing can leave out the
/// request the lost response answered.
#[test]
fn a_response_after_skipped_bytes_says_what_was_skipped_and_when() {
    let mut p = resp_expecting(&[RequestKind::Other, RequestKind::Other]);
    let mut v = Vec::new();
    let op = |ts_ns| {
        Some(OpMeta {
            pid: 1,
            tid: 1,
            ts_ns,
        })
    };
    let mut feed = |p: &mut Http1Parser, offset: u64, data: &[u8], ts: u64| {
        let pieces = [Piece::Data(data)];
        let chunk = Chunk {
            seq: offset as u32,
            offset,
            len: data.len() as u32,
            op: op(ts),
            seg_ts_ns: None,
            pieces: &pieces,
        };
        p.feed(&chunk, &mut |m| v.push(m.to_owned()));
    };
    let body = b"backend /inner/e1\n";
    let next = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    feed(&mut p, 0, body, 100);
    feed(&mut p, body.len() as u64, next, 200);
    feed(&mut p, (body.len() + next.len()) as u64, next, 300);
    assert_eq!(v.len(), 2, "{v:?}");
    assert_eq!(
        v[0].info().skipped_before,
        Skipped {
            bytes: body.len() as u64,
            since_ns: Some(100)
        }
    );
    assert_eq!(v[1].info().skipped_before, Skipped::default());
}
