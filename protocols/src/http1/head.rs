//! Heads: end detection, httparse, framing rules.

use std::{mem::MaybeUninit, sync::LazyLock};

use memchr::memmem;

use super::{BodyFraming, RequestKind, Role};

/// Most headers a head may have.
pub(crate) const MAX_HEADERS: usize = 128;

/// A byte range `[start, end)` of a head.
pub(crate) type Span32 = (u32, u32);

/// One header field of a parsed head, as ranges of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    pub name: Span32,
    pub value: Span32,
}

/// The start line of a parsed head, as ranges of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line {
    Request {
        method: Span32,
        target: Span32,
        version: u8,
    },
    Response {
        status: u16,
        reason: Span32,
        version: u8,
    },
}

/// A parsed head: its bytes and where its parts are in them. Kept by the
/// parser until the message ends, then lent out as a
/// [`MessageRef`](super::MessageRef): nothing is copied per header.
#[derive(Debug, Clone)]
pub(crate) struct ParsedHead {
    pub bytes: Vec<u8>,
    pub fields: Vec<Field>,
    pub line: Line,
}

impl Default for ParsedHead {
    fn default() -> Self {
        ParsedHead {
            bytes: Vec::new(),
            fields: Vec::new(),
            line: Line::Response {
                status: 0,
                reason: (0, 0),
                version: 1,
            },
        }
    }
}

/// The text of a range of a parsed head (heads are validated by httparse:
/// tokens and targets are ASCII; anything else reads as empty).
pub(crate) fn text(bytes: &[u8], (a, b): Span32) -> &str {
    bytes
        .get(a as usize..b as usize)
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or("")
}

/// The bytes of a range of a parsed head.
pub(crate) fn raw(bytes: &[u8], (a, b): Span32) -> &[u8] {
    bytes.get(a as usize..b as usize).unwrap_or_default()
}

/// The header fields of a head, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) fields: &'a [Field],
}

impl<'a> Headers<'a> {
    /// `(name, value)` of every field, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        let bytes = self.bytes;
        self.fields
            .iter()
            .map(move |f| (text(bytes, f.name), raw(bytes, f.value)))
    }

    /// `(name, value)` of every field as bytes, in order (no UTF-8 check).
    pub fn raw(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let bytes = self.bytes;
        self.fields
            .iter()
            .map(move |f| (raw(bytes, f.name), raw(bytes, f.value)))
    }

    /// The values of every field named `name` (ASCII case-insensitive).
    pub fn values(&self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let bytes = self.bytes;
        // Compared as bytes: no UTF-8 check of every name on every lookup.
        self.fields
            .iter()
            .filter(move |f| raw(bytes, f.name).eq_ignore_ascii_case(name.as_bytes()))
            .map(move |f| raw(bytes, f.value))
    }

    /// The first value of `name` (ASCII case-insensitive).
    pub fn get(&self, name: &'a str) -> Option<&'a [u8]> {
        self.values(name).next()
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

impl ParsedHead {
    pub(crate) fn headers(&self) -> Headers<'_> {
        Headers {
            bytes: &self.bytes,
            fields: &self.fields,
        }
    }
}

/// Why a head could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// httparse rejected it (or it was incomplete when it should not be).
    Invalid,
    /// More than [`MAX_HEADERS`] headers.
    TooManyHeaders,
}

/// Index just past the blank line ending a head, searching `data` given
/// that `tail` (at most the last 2 bytes buffered before it) precedes it.
/// The blank line is the first `\n\n` or `\n\r\n`.
pub(crate) fn find_head_end(tail: &[u8], data: &[u8]) -> Option<usize> {
    // Patterns straddling tail and data.
    let t = tail.len();
    for i in 0..t {
        let rest = &tail[i..];
        for pat in [&b"\n\n"[..], &b"\n\r\n"[..]] {
            if pat.starts_with(rest) && rest.len() < pat.len() {
                let need = &pat[rest.len()..];
                if data.starts_with(need) {
                    return Some(need.len());
                }
            }
        }
    }
    // Every head byte is scanned here, so by a vector search for the end
    // itself: one per pattern, where searching line end by line end
    // restarted a search for every header line. A bare-LF end counts only
    // before the first CRLF end.
    static CRLF_END: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\n\r\n"));
    static LF_END: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"\n\n"));
    let crlf = CRLF_END.find(data);
    let before = crlf.map_or(data.len(), |at| at + 1);
    match LF_END.find(&data[..before]) {
        Some(at) => Some(at + 2),
        None => crlf.map(|at| at + 3),
    }
}

fn config(role: Role) -> httparse::ParserConfig {
    let mut c = httparse::ParserConfig::default();
    match role {
        Role::Request => {
            c.allow_multiple_spaces_in_request_line_delimiters(true);
        }
        Role::Response => {
            c.allow_multiple_spaces_in_response_status_delimiters(true);
            c.allow_spaces_after_header_name_in_responses(true);
            c.allow_obsolete_multiline_headers_in_responses(true);
        }
    }
    c
}

/// Room for httparse's headers, left uninitialised: httparse writes those
/// it finds, and filling 128 empty ones (4 KiB) for every head cost more
/// than parsing a small head.
fn no_headers<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

fn range_of(base: &[u8], part: &[u8]) -> Span32 {
    // httparse hands out subslices of `base`: their place is their address
    // minus the base's.
    let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    if start > base.len() || part.len() > base.len() - start {
        return (0, 0);
    }
    (start as u32, (start + part.len()) as u32)
}

fn fields(base: &[u8], hs: &[httparse::Header<'_>], out: &mut Vec<Field>) {
    out.clear();
    out.extend(hs.iter().map(|h| Field {
        name: range_of(base, h.name.as_bytes()),
        value: range_of(base, h.value),
    }));
}

/// Parses a complete head (`buf` ends with its blank line) into `out`,
/// whose bytes are then exchanged with `buf` (the caller's buffer gets
/// `out`'s old, cleared allocation back): the head is never copied.
pub(crate) fn parse_head(
    role: Role,
    buf: &mut Vec<u8>,
    out: &mut ParsedHead,
) -> Result<(), HeadError> {
    let mut hs = no_headers();
    let cfg = config(role);
    let err = |e: httparse::Error| match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        _ => HeadError::Invalid,
    };
    let base: &[u8] = buf;
    match role {
        Role::Request => {
            let mut req = httparse::Request::new(&mut []);
            match cfg
                .parse_request_with_uninit_headers(&mut req, base, &mut hs)
                .map_err(err)?
            {
                httparse::Status::Complete(_) => {}
                httparse::Status::Partial => return Err(HeadError::Invalid),
            }
            out.line = Line::Request {
                method: req.method.map_or((0, 0), |m| range_of(base, m.as_bytes())),
                target: req.path.map_or((0, 0), |p| range_of(base, p.as_bytes())),
                version: req.version.unwrap_or(1),
            };
            fields(base, req.headers, &mut out.fields);
        }
        Role::Response => {
            let mut resp = httparse::Response::new(&mut []);
            match cfg
                .parse_response_with_uninit_headers(&mut resp, base, &mut hs)
                .map_err(err)?
            {
                httparse::Status::Complete(_) => {}
                httparse::Status::Partial => return Err(HeadError::Invalid),
            }
            out.line = Line::Response {
                status: resp.code.unwrap_or_default(),
                reason: resp.reason.map_or((0, 0), |r| range_of(base, r.as_bytes())),
                version: resp.version.unwrap_or(1),
            };
            fields(base, resp.headers, &mut out.fields);
        }
    }
    std::mem::swap(buf, &mut out.bytes);
    buf.clear();
    Ok(())
}

/// Checks a head that is not complete yet: `Err` when what is there
/// already cannot be a valid head.
pub(crate) fn check_partial(role: Role, buf: &[u8]) -> Result<(), HeadError> {
    let mut hs = no_headers();
    let cfg = config(role);
    let r = match role {
        Role::Request => cfg
            .parse_request_with_uninit_headers(&mut httparse::Request::new(&mut []), buf, &mut hs)
            .map(|_| ()),
        Role::Response => cfg
            .parse_response_with_uninit_headers(&mut httparse::Response::new(&mut []), buf, &mut hs)
            .map(|_| ()),
    };
    r.map_err(|e| match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        _ => HeadError::Invalid,
    })
}

/// Parses the complete lines of a head cut short (the bytes up to the
/// last line end, followed by a blank line) into `out`. `scratch` is reused;
/// `buf` is left as it was.
pub(crate) fn parse_partial_head(
    role: Role,
    buf: &[u8],
    scratch: &mut Vec<u8>,
    out: &mut ParsedHead,
) -> bool {
    let Some(last_nl) = buf.iter().rposition(|b| *b == b'\n') else {
        return false;
    };
    scratch.clear();
    scratch.extend_from_slice(&buf[..=last_nl]);
    scratch.extend_from_slice(b"\r\n");
    parse_head(role, scratch, out).is_ok()
}

/// Splits a comma-separated header value into trimmed, non-empty tokens.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// What the framing of a body depends on, read in one pass over the
/// fields (every message asks; two passes cost ~2.5% of the span path).
struct BodyHeaders {
    /// `Transfer-Encoding`: `Some(true)` when its last coding is chunked,
    /// `Some(false)` when present otherwise.
    transfer_encoding: Option<bool>,
    /// `Content-Length`: `Ok(None)` when absent, `Err` when invalid or
    /// conflicting.
    content_length: Result<Option<u64>, ()>,
}

fn body_headers(headers: &Headers<'_>) -> BodyHeaders {
    let mut last_coding: Option<&[u8]> = None;
    let mut te_present = false;
    let mut length: Result<Option<u64>, ()> = Ok(None);
    for (name, v) in headers.raw() {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te_present = true;
            if let Some(t) = tokens(v).last() {
                last_coding = Some(t);
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if let Ok(found) = length {
                length = content_length_value(v, found);
            }
        }
    }
    BodyHeaders {
        transfer_encoding: te_present
            .then(|| last_coding.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))),
        content_length: length,
    }
}

/// One `Content-Length` field's value, given the length found before.
fn content_length_value(v: &[u8], mut found: Option<u64>) -> Result<Option<u64>, ()> {
    for t in tokens(v) {
        if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
            return Err(());
        }
        let n = t.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        match found {
            Some(f) if f != n => return Err(()),
            _ => found = Some(n),
        }
    }
    Ok(found)
}

/// True when the header lists `token` (comma-separated, case-insensitive).
pub(crate) fn has_token(headers: &Headers<'_>, name: &str, token: &[u8]) -> bool {
    headers
        .values(name)
        .any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(token)))
}

/// Body framing of a request.
pub(crate) fn request_framing(headers: &Headers<'_>) -> Result<BodyFraming, ()> {
    let h = body_headers(headers);
    match h.transfer_encoding {
        Some(true) => return Ok(BodyFraming::Chunked),
        // A request whose last coding is not chunked cannot be delimited.
        Some(false) => return Err(()),
        None => {}
    }
    Ok(match h.content_length? {
        Some(0) | None => BodyFraming::None,
        Some(n) => BodyFraming::ContentLength(n),
    })
}

/// Body framing of a response to a request of kind `kind` (when known).
pub(crate) fn response_framing(
    status: u16,
    kind: Option<RequestKind>,
    headers: &Headers<'_>,
) -> Result<BodyFraming, ()> {
    if status == 101 || (kind == Some(RequestKind::Connect) && (200..300).contains(&status)) {
        return Ok(BodyFraming::Tunnel);
    }
    if kind == Some(RequestKind::Head)
        || (100..200).contains(&status)
        || status == 204
        || status == 304
    {
        return Ok(BodyFraming::None);
    }
    let h = body_headers(headers);
    match h.transfer_encoding {
        Some(true) => return Ok(BodyFraming::Chunked),
        Some(false) => return Ok(BodyFraming::CloseDelimited),
        None => {}
    }
    Ok(match h.content_length? {
        Some(0) => BodyFraming::None,
        Some(n) => BodyFraming::ContentLength(n),
        None => BodyFraming::CloseDelimited,
    })
}

/// True when a request asks to leave HTTP/1 (CONNECT, or an `Upgrade`
/// header with `Connection: upgrade`).
pub(crate) fn requests_upgrade(method: &str, headers: &Headers<'_>) -> bool {
    method == "CONNECT"
        || (headers.get("upgrade").is_some() && has_token(headers, "connection", b"upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(list: &[(&str, &str)]) -> ParsedHead {
        let mut p = ParsedHead::default();
        for (n, v) in list {
            let a = p.bytes.len() as u32;
            p.bytes.extend_from_slice(n.as_bytes());
            let b = p.bytes.len() as u32;
            p.bytes.extend_from_slice(v.as_bytes());
            let c = p.bytes.len() as u32;
            p.fields.push(Field {
                name: (a, b),
                value: (b, c),
            });
        }
        p
    }

    #[test]
    fn head_end() {
        assert_eq!(find_head_end(b"", b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(find_head_end(b"", b"GET / HTTP/1.1\n\nrest"), Some(16));
        assert_eq!(find_head_end(b"\r\n", b"\r\nX"), Some(2));
        assert_eq!(find_head_end(b"\n\r", b"\nX"), Some(1));
        assert_eq!(find_head_end(b"a\n", b"\nX"), Some(1));
        assert_eq!(find_head_end(b"\r\n", b"Host: x\r\n"), None);
        assert_eq!(find_head_end(b"", b"a\r\nb\r\n"), None);
        assert_eq!(find_head_end(b"\n", b"\r"), None);
        assert_eq!(find_head_end(b"", b"a\n\nb\n\r\n"), Some(3));
        assert_eq!(find_head_end(b"", b"a\n\r\nb\n\n"), Some(4));
        assert_eq!(find_head_end(b"", b"\n\n\r\n"), Some(2));
        assert_eq!(find_head_end(b"", b"\n\r\n\n"), Some(3));
    }

    proptest::proptest! {
        /// The end is the first blank line, LF or CRLF, wherever it is.
        #[test]
        fn head_end_is_first_blank_line(
            data in proptest::collection::vec(proptest::sample::select(b"\r\na".to_vec()), 0..64)
        ) {
            let want = (0..data.len()).find_map(|at| match &data[at..] {
                [b'\n', b'\n', ..] => Some(at + 2),
                [b'\n', b'\r', b'\n', ..] => Some(at + 3),
                _ => None,
            });
            proptest::prop_assert_eq!(find_head_end(b"", &data), want);
        }
    }

    #[test]
    fn framing_rules() {
        assert_eq!(request_framing(&hs(&[]).headers()), Ok(BodyFraming::None));
        assert_eq!(
            request_framing(&hs(&[("Content-Length", "5")]).headers()),
            Ok(BodyFraming::ContentLength(5))
        );
        assert_eq!(
            request_framing(&hs(&[("content-length", "5, 5")]).headers()),
            Ok(BodyFraming::ContentLength(5))
        );
        assert_eq!(
            request_framing(&hs(&[("content-length", "5"), ("Content-Length", "6")]).headers()),
            Err(())
        );
        assert_eq!(
            request_framing(&hs(&[("content-length", "-1")]).headers()),
            Err(())
        );
        assert_eq!(
            request_framing(
                &hs(&[
                    ("Transfer-Encoding", "gzip, chunked"),
                    ("content-length", "3")
                ])
                .headers()
            ),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            request_framing(&hs(&[("Transfer-Encoding", "gzip")]).headers()),
            Err(())
        );
        let some = Some(RequestKind::Other);
        assert_eq!(
            response_framing(200, some, &hs(&[]).headers()),
            Ok(BodyFraming::CloseDelimited)
        );
        assert_eq!(
            response_framing(
                200,
                Some(RequestKind::Head),
                &hs(&[("content-length", "9")]).headers()
            ),
            Ok(BodyFraming::None)
        );
        assert_eq!(
            response_framing(204, some, &hs(&[("content-length", "9")]).headers()),
            Ok(BodyFraming::None)
        );
        assert_eq!(
            response_framing(304, some, &hs(&[]).headers()),
            Ok(BodyFraming::None)
        );
        assert_eq!(
            response_framing(101, some, &hs(&[]).headers()),
            Ok(BodyFraming::Tunnel)
        );
        assert_eq!(
            response_framing(200, Some(RequestKind::Connect), &hs(&[]).headers()),
            Ok(BodyFraming::Tunnel)
        );
        assert_eq!(
            response_framing(
                407,
                Some(RequestKind::Connect),
                &hs(&[("content-length", "0")]).headers()
            ),
            Ok(BodyFraming::None)
        );
        assert_eq!(
            response_framing(
                200,
                None,
                &hs(&[("transfer-encoding", "chunked")]).headers()
            ),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            response_framing(200, None, &hs(&[("transfer-encoding", "gzip")]).headers()),
            Ok(BodyFraming::CloseDelimited)
        );
        assert_eq!(
            response_framing(
                200,
                None,
                &hs(&[("content-length", "99999999999999999999")]).headers()
            ),
            Err(())
        );
    }

    #[test]
    fn upgrade_requests() {
        assert!(requests_upgrade("CONNECT", &hs(&[]).headers()));
        assert!(requests_upgrade(
            "GET",
            &hs(&[
                ("Connection", "keep-alive, Upgrade"),
                ("Upgrade", "websocket")
            ])
            .headers()
        ));
        assert!(!requests_upgrade(
            "GET",
            &hs(&[("Upgrade", "websocket")]).headers()
        ));
    }

    #[test]
    fn partial_heads() {
        let mut s = Vec::new();
        let mut h = ParsedHead::default();
        assert!(parse_partial_head(
            Role::Request,
            b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nCookie: abc",
            &mut s,
            &mut h,
        ));
        match h.line {
            Line::Request { method, target, .. } => {
                assert_eq!(text(&h.bytes, method), "GET");
                assert_eq!(text(&h.bytes, target), "/a?b=c");
            }
            other => panic!("{other:?}"),
        }
        let names: Vec<&str> = h.headers().iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["Host"]);
        assert!(!parse_partial_head(
            Role::Request,
            b"GET /a?b=c HTTP/1",
            &mut s,
            &mut h
        ));
        assert_eq!(
            check_partial(Role::Request, b"GET /a HTTP/1.1\r\nHost: x\r\nAcc"),
            Ok(())
        );
        assert_eq!(
            check_partial(Role::Request, b"GET /a HTTP/1.1\r\nHo\x01st: x\r\n"),
            Err(HeadError::Invalid)
        );
        assert_eq!(
            check_partial(Role::Response, b"HTTP/1.1 2x"),
            Err(HeadError::Invalid)
        );
    }
}
