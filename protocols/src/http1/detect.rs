//! Cheap first-bytes classification and resynchronisation candidates.

/// Methods recognised when classifying or resynchronising (any token is
/// accepted once a direction is known to be HTTP).
pub(crate) const METHODS: &[&[u8]] = &[
    b"GET",
    b"POST",
    b"PUT",
    b"DELETE",
    b"HEAD",
    b"OPTIONS",
    b"PATCH",
    b"CONNECT",
    b"TRACE",
    b"PROPFIND",
    b"PROPPATCH",
    b"MKCOL",
    b"COPY",
    b"MOVE",
    b"LOCK",
    b"UNLOCK",
    b"REPORT",
    b"SEARCH",
    b"PURGE",
];

/// Answer of a first-bytes classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Likely {
    /// The bytes start like this kind of message.
    Yes,
    /// The bytes are a prefix of such a start: more are needed.
    NeedMore,
    /// The bytes cannot start such a message.
    No,
}

/// True when `buf` is a prefix of `pat` (shorter) or starts with it.
fn prefix_match(buf: &[u8], pat: &[u8]) -> Likely {
    if buf.len() >= pat.len() {
        if buf.starts_with(pat) {
            Likely::Yes
        } else {
            Likely::No
        }
    } else if pat.starts_with(buf) {
        Likely::NeedMore
    } else {
        Likely::No
    }
}

/// Classifies the first bytes of a message as an HTTP/1.x request start:
/// a known method, a space, and the first byte of a request target.
pub fn classify_request(buf: &[u8]) -> Likely {
    let mut need_more = false;
    for m in METHODS {
        match prefix_match(buf, m) {
            Likely::No => continue,
            Likely::NeedMore => need_more = true,
            Likely::Yes => match buf.get(m.len()) {
                None => need_more = true,
                Some(b' ') => match buf.get(m.len() + 1) {
                    None => need_more = true,
                    Some(c)
                        if *c == b'/' || *c == b'*' || c.is_ascii_alphanumeric() || *c == b'[' =>
                    {
                        return Likely::Yes;
                    }
                    Some(_) => {}
                },
                Some(_) => {}
            },
        }
    }
    if need_more {
        Likely::NeedMore
    } else {
        Likely::No
    }
}

/// Classifies the first bytes of a message as an HTTP/1.x status line
/// start: `HTTP/1.x ` followed by a digit.
pub fn classify_response(buf: &[u8]) -> Likely {
    match prefix_match(buf, b"HTTP/1.") {
        Likely::Yes => {}
        other => return other,
    }
    let rest = buf.get(7..).unwrap_or_default();
    let ok = [
        |c: u8| c == b'0' || c == b'1',
        |c: u8| c == b' ',
        |c: u8| c.is_ascii_digit(),
    ];
    for (i, check) in ok.iter().enumerate() {
        match rest.get(i) {
            None => return Likely::NeedMore,
            Some(c) if check(*c) => {}
            Some(_) => return Likely::No,
        }
    }
    Likely::Yes
}

/// True when `buf` starts like an HTTP/1.x request (see
/// [`classify_request`]; a prefix that needs more bytes is false).
pub fn looks_like_http1_request(buf: &[u8]) -> bool {
    classify_request(buf) == Likely::Yes
}

/// True when `buf` starts like an HTTP/1.x response (see
/// [`classify_response`]).
pub fn looks_like_http1_response(buf: &[u8]) -> bool {
    classify_response(buf) == Likely::Yes
}

/// Other protocols recognised at once at the start of a direction: TLS
/// records, the HTTP/2 connection preface.
pub(crate) fn is_other_protocol(buf: &[u8]) -> bool {
    match buf {
        [0x14..=0x17, 0x03, ..] => true,
        _ => buf.starts_with(b"PRI * HTTP/2"),
    }
}

/// Scans `buf` for the first place where a message may start: a position
/// at the start of a line (position 0 counts when `line_start` says the
/// byte before it ended a line or is unknown). Returns the position and
/// whether the match is complete (`Yes`) or a prefix reaching the end of
/// `buf` (`NeedMore`).
pub(crate) fn find_start(
    buf: &[u8],
    line_start: bool,
    classify: fn(&[u8]) -> Likely,
) -> Option<(usize, Likely)> {
    let mut i = 0;
    while i < buf.len() {
        let allowed = if i == 0 {
            line_start
        } else {
            buf[i - 1] == b'\n'
        };
        if allowed {
            match classify(&buf[i..]) {
                Likely::No => {}
                found => return Some((i, found)),
            }
        }
        // Jump to the next line start.
        match buf[i..].iter().position(|b| *b == b'\n') {
            Some(p) => i += p + 1,
            None => break,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(classify_request(b"GET / HTTP/1.1\r\n"), Likely::Yes);
        assert_eq!(classify_request(b"OPTIONS * HTTP/1.1\r\n"), Likely::Yes);
        assert_eq!(
            classify_request(b"CONNECT example.com:443 HTTP/1.1"),
            Likely::Yes
        );
        assert_eq!(classify_request(b"GET http://x/ HTTP/1.1"), Likely::Yes);
        assert_eq!(classify_request(b"GE"), Likely::NeedMore);
        assert_eq!(classify_request(b"GET "), Likely::NeedMore);
        assert_eq!(classify_request(b"P"), Likely::NeedMore);
        assert_eq!(classify_request(b""), Likely::NeedMore);
        assert_eq!(classify_request(b"GETX / HTTP/1.1"), Likely::No);
        assert_eq!(classify_request(b"GET  /"), Likely::No);
        assert_eq!(classify_request(b"\x16\x03\x01"), Likely::No);
        assert_eq!(classify_request(b"HTTP/1.1 200 OK"), Likely::No);
        assert!(looks_like_http1_request(b"POST /api HTTP/1.1"));
        assert!(!looks_like_http1_request(b"POS"));
    }

    #[test]
    fn responses() {
        assert_eq!(classify_response(b"HTTP/1.1 200 OK\r\n"), Likely::Yes);
        assert_eq!(classify_response(b"HTTP/1.0 404"), Likely::Yes);
        assert_eq!(classify_response(b"HTTP/1.1 "), Likely::NeedMore);
        assert_eq!(classify_response(b"HTT"), Likely::NeedMore);
        assert_eq!(classify_response(b"HTTP/2 200"), Likely::No);
        assert_eq!(classify_response(b"HTTP/1.1 OK"), Likely::No);
        assert_eq!(classify_response(b"GET / HTTP/1.1"), Likely::No);
        assert!(looks_like_http1_response(b"HTTP/1.1 101 Switching"));
    }

    #[test]
    fn other_protocols() {
        assert!(is_other_protocol(b"\x16\x03\x01\x02\x00"));
        assert!(is_other_protocol(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!is_other_protocol(b"GET / HTTP/1.1"));
    }

    #[test]
    fn find_start_at_line_starts() {
        let buf = b"xxGET / HTTP/1.1\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            find_start(buf, true, classify_request),
            Some((18, Likely::Yes))
        );
        assert_eq!(
            find_start(b"GET / H", true, classify_request),
            Some((0, Likely::Yes))
        );
        assert_eq!(find_start(b"GET / H", false, classify_request), None);
        assert_eq!(
            find_start(b"body\nPO", false, classify_request),
            Some((5, Likely::NeedMore))
        );
        assert_eq!(
            find_start(b"abc\r\nHTTP/1.1 200", false, classify_response),
            Some((5, Likely::Yes))
        );
        assert_eq!(find_start(b"no start here", true, classify_response), None);
    }
}
