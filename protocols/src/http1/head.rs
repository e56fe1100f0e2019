//! Heads: end detection, httparse, framing rules.

use super::{header_values, BodyFraming, Header, Method, Request, RequestKind, Response, Role};

/// Most headers a head may have.
pub(crate) const MAX_HEADERS: usize = 128;

/// A parsed start line and headers, before positions are known.
#[derive(Debug)]
pub(crate) enum Head {
    Request {
        method: Method,
        target: String,
        version: u8,
        headers: Vec<Header>,
    },
    Response {
        status: u16,
        reason: String,
        version: u8,
        headers: Vec<Header>,
    },
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
    let mut i = 0;
    while let Some(p) = data[i..].iter().position(|b| *b == b'\n') {
        let at = i + p;
        match data.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if data.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => {}
        }
        i = at + 1;
    }
    None
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

/// Headers the parser itself reads: always kept.
fn frames_messages(name: &str) -> bool {
    ["content-length", "transfer-encoding", "upgrade"]
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f))
}

fn own_headers(hs: &[httparse::Header<'_>], keep: Option<fn(&str) -> bool>) -> Vec<Header> {
    hs.iter()
        .filter(|h| keep.is_none_or(|k| k(h.name) || frames_messages(h.name)))
        .map(|h| Header {
            name: h.name.to_owned(),
            value: h.value.to_vec(),
        })
        .collect()
}

/// Parses a complete head (`buf` ends with its blank line).
pub(crate) fn parse_head(
    role: Role,
    buf: &[u8],
    keep: Option<fn(&str) -> bool>,
) -> Result<Head, HeadError> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let cfg = config(role);
    let err = |e: httparse::Error| match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        _ => HeadError::Invalid,
    };
    match role {
        Role::Request => {
            let mut req = httparse::Request::new(&mut hs);
            match cfg.parse_request(&mut req, buf).map_err(err)? {
                httparse::Status::Complete(_) => {}
                httparse::Status::Partial => return Err(HeadError::Invalid),
            }
            Ok(Head::Request {
                method: Method::from_token(req.method.unwrap_or_default()),
                target: req.path.unwrap_or_default().to_owned(),
                version: req.version.unwrap_or(1),
                headers: own_headers(req.headers, keep),
            })
        }
        Role::Response => {
            let mut resp = httparse::Response::new(&mut hs);
            match cfg.parse_response(&mut resp, buf).map_err(err)? {
                httparse::Status::Complete(_) => {}
                httparse::Status::Partial => return Err(HeadError::Invalid),
            }
            Ok(Head::Response {
                status: resp.code.unwrap_or_default(),
                reason: resp.reason.unwrap_or_default().to_owned(),
                version: resp.version.unwrap_or(1),
                headers: own_headers(resp.headers, keep),
            })
        }
    }
}

/// Checks a head that is not complete yet: `Err` when what is there
/// already cannot be a valid head.
pub(crate) fn check_partial(role: Role, buf: &[u8]) -> Result<(), HeadError> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let cfg = config(role);
    let r = match role {
        Role::Request => cfg
            .parse_request(&mut httparse::Request::new(&mut hs), buf)
            .map(|_| ()),
        Role::Response => cfg
            .parse_response(&mut httparse::Response::new(&mut hs), buf)
            .map(|_| ()),
    };
    r.map_err(|e| match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        _ => HeadError::Invalid,
    })
}

/// Parses the complete lines of a head cut short: the bytes up to the last
/// line end, followed by a blank line. `scratch` is reused.
pub(crate) fn parse_partial_head(
    role: Role,
    buf: &[u8],
    scratch: &mut Vec<u8>,
    keep: Option<fn(&str) -> bool>,
) -> Option<Head> {
    let last_nl = buf.iter().rposition(|b| *b == b'\n')?;
    scratch.clear();
    scratch.extend_from_slice(&buf[..=last_nl]);
    scratch.extend_from_slice(b"\r\n");
    parse_head(role, scratch, keep).ok()
}

/// Splits a comma-separated header value into trimmed, non-empty tokens.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// `Transfer-Encoding`: `Some(true)` when its last coding is chunked,
/// `Some(false)` when present otherwise.
fn transfer_encoding(headers: &[Header]) -> Option<bool> {
    let mut last: Option<&[u8]> = None;
    let mut present = false;
    for v in header_values(headers, "transfer-encoding") {
        present = true;
        if let Some(t) = tokens(v).last() {
            last = Some(t);
        }
    }
    present.then(|| last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")))
}

/// `Content-Length`: `Ok(None)` when absent, `Err` when invalid or
/// conflicting.
fn content_length(headers: &[Header]) -> Result<Option<u64>, ()> {
    let mut found: Option<u64> = None;
    for v in header_values(headers, "content-length") {
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
    }
    Ok(found)
}

/// True when the header lists `token` (comma-separated, case-insensitive).
pub(crate) fn has_token(headers: &[Header], name: &str, token: &[u8]) -> bool {
    header_values(headers, name).any(|v| tokens(v).any(|t| t.eq_ignore_ascii_case(token)))
}

/// Body framing of a request.
pub(crate) fn request_framing(headers: &[Header]) -> Result<BodyFraming, ()> {
    match transfer_encoding(headers) {
        Some(true) => return Ok(BodyFraming::Chunked),
        // A request whose last coding is not chunked cannot be delimited.
        Some(false) => return Err(()),
        None => {}
    }
    Ok(match content_length(headers)? {
        Some(0) | None => BodyFraming::None,
        Some(n) => BodyFraming::ContentLength(n),
    })
}

/// Body framing of a response to a request of kind `kind` (when known).
pub(crate) fn response_framing(
    status: u16,
    kind: Option<RequestKind>,
    headers: &[Header],
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
    match transfer_encoding(headers) {
        Some(true) => return Ok(BodyFraming::Chunked),
        Some(false) => return Ok(BodyFraming::CloseDelimited),
        None => {}
    }
    Ok(match content_length(headers)? {
        Some(0) => BodyFraming::None,
        Some(n) => BodyFraming::ContentLength(n),
        None => BodyFraming::CloseDelimited,
    })
}

/// True when a request asks to leave HTTP/1 (CONNECT, or an `Upgrade`
/// header with `Connection: upgrade`).
pub(crate) fn requests_upgrade(method: &Method, headers: &[Header]) -> bool {
    *method == Method::Connect
        || (super::find_header(headers, "upgrade").is_some()
            && has_token(headers, "connection", b"upgrade"))
}

/// Builds the public message types (positions filled in by the parser).
pub(crate) fn into_request(
    method: Method,
    target: String,
    version: u8,
    headers: Vec<Header>,
    info: super::MessageInfo,
) -> Request {
    Request {
        method,
        target,
        version,
        headers,
        info,
    }
}

/// See [`into_request`].
pub(crate) fn into_response(
    status: u16,
    reason: String,
    version: u8,
    headers: Vec<Header>,
    info: super::MessageInfo,
) -> Response {
    Response {
        status,
        reason,
        version,
        headers,
        info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(list: &[(&str, &str)]) -> Vec<Header> {
        list.iter()
            .map(|(n, v)| Header {
                name: (*n).to_owned(),
                value: v.as_bytes().to_vec(),
            })
            .collect()
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
    }

    #[test]
    fn framing_rules() {
        assert_eq!(request_framing(&hs(&[])), Ok(BodyFraming::None));
        assert_eq!(
            request_framing(&hs(&[("Content-Length", "5")])),
            Ok(BodyFraming::ContentLength(5))
        );
        assert_eq!(
            request_framing(&hs(&[("content-length", "5, 5")])),
            Ok(BodyFraming::ContentLength(5))
        );
        assert_eq!(
            request_framing(&hs(&[("content-length", "5"), ("Content-Length", "6")])),
            Err(())
        );
        assert_eq!(request_framing(&hs(&[("content-length", "-1")])), Err(()));
        assert_eq!(
            request_framing(&hs(&[
                ("Transfer-Encoding", "gzip, chunked"),
                ("content-length", "3")
            ])),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            request_framing(&hs(&[("Transfer-Encoding", "gzip")])),
            Err(())
        );
        let some = Some(RequestKind::Other);
        assert_eq!(
            response_framing(200, some, &hs(&[])),
            Ok(BodyFraming::CloseDelimited)
        );
        assert_eq!(
            response_framing(
                200,
                Some(RequestKind::Head),
                &hs(&[("content-length", "9")])
            ),
            Ok(BodyFraming::None)
        );
        assert_eq!(
            response_framing(204, some, &hs(&[("content-length", "9")])),
            Ok(BodyFraming::None)
        );
        assert_eq!(response_framing(304, some, &hs(&[])), Ok(BodyFraming::None));
        assert_eq!(
            response_framing(101, some, &hs(&[])),
            Ok(BodyFraming::Tunnel)
        );
        assert_eq!(
            response_framing(200, Some(RequestKind::Connect), &hs(&[])),
            Ok(BodyFraming::Tunnel)
        );
        assert_eq!(
            response_framing(
                407,
                Some(RequestKind::Connect),
                &hs(&[("content-length", "0")])
            ),
            Ok(BodyFraming::None)
        );
        assert_eq!(
            response_framing(200, None, &hs(&[("transfer-encoding", "chunked")])),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            response_framing(200, None, &hs(&[("transfer-encoding", "gzip")])),
            Ok(BodyFraming::CloseDelimited)
        );
        assert_eq!(
            response_framing(
                200,
                None,
                &hs(&[("content-length", "99999999999999999999")])
            ),
            Err(())
        );
    }

    #[test]
    fn upgrade_requests() {
        assert!(requests_upgrade(&Method::Connect, &[]));
        assert!(requests_upgrade(
            &Method::Get,
            &hs(&[
                ("Connection", "keep-alive, Upgrade"),
                ("Upgrade", "websocket")
            ])
        ));
        assert!(!requests_upgrade(
            &Method::Get,
            &hs(&[("Upgrade", "websocket")])
        ));
    }

    #[test]
    fn kept_headers_and_framing() {
        fn host_only(n: &str) -> bool {
            n.eq_ignore_ascii_case("host")
        }
        let h = parse_head(
            Role::Response,
            b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 3\r\nHost: h\r\nSet-Cookie: s\r\n\r\n",
            Some(host_only),
        );
        match h {
            Ok(Head::Response { headers, .. }) => {
                let names: Vec<&str> = headers.iter().map(|h| h.name.as_str()).collect();
                assert_eq!(names, ["Content-Length", "Host"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_heads() {
        let mut s = Vec::new();
        let h = parse_partial_head(
            Role::Request,
            b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nCookie: abc",
            &mut s,
            None,
        );
        match h {
            Some(Head::Request {
                method,
                target,
                headers,
                ..
            }) => {
                assert_eq!(method, Method::Get);
                assert_eq!(target, "/a?b=c");
                assert_eq!(headers.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_partial_head(Role::Request, b"GET /a?b=c HTTP/1", &mut s, None).is_none());
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
