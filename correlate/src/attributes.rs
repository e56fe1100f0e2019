//! Span names, semantic-convention attributes and status.
//!
//! Only chosen fields are copied into attributes (method, target, `Host`,
//! `User-Agent`, `X-Forwarded-For`/`Forwarded`, `content-type`,
//! `grpc-status`): header values such as `Authorization`, `Cookie` or
//! `Set-Cookie` are never read here, so they cannot leak. Userinfo in an
//! authority (`user:pass@host`) is dropped, and query values are redacted
//! unless configured otherwise.
//!
//! Naming: `"{method} {templated path}"`, where path segments that look like
//! identifiers (all digits, UUIDs, long hex strings, long mixed tokens)
//! become `{id}`: `/users/123/orders/9f8e...` names `GET
//! /users/{id}/orders/{id}`. The raw path stays in `url.path`. Methods
//! outside the HTTP standard set are `_OTHER` (original kept in
//! `http.request.method_original`) and the span is then named `HTTP
//! {path}`. gRPC requests are named `pkg.Service/Method`.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};

use crate::attr_key::Key;
use crate::config::Config;
use crate::model::{Header, Request, Response, SpanKind, Status, Texts};
use crate::propagation::{header_value, trim_ows};

/// What a request contributes to its span besides its texts.
pub(crate) struct RequestFacts {
    /// A gRPC call (status comes from `grpc-status`).
    pub grpc: bool,
    /// Hash of method and target, to recognise the same request at both
    /// ends of a translated connection, and a request a proxy forwards.
    pub fingerprint: u64,
    /// The declared body length ([`declared_body`]).
    pub body: u64,
}

/// [`declared_body`] of a request without a body (no `Content-Length`, or 0).
pub(crate) const BODY_NONE: u64 = u64::MAX;
/// [`declared_body`] of a chunked request (length not declared).
pub(crate) const BODY_CHUNKED: u64 = u64::MAX - 1;

/// The body length a request declares: its `Content-Length`,
/// [`BODY_CHUNKED`] for `Transfer-Encoding: chunked`, [`BODY_NONE`] for
/// none (or 0: a request without a body and one declaring 0 bytes say the
/// same).
pub(crate) fn declared_body(headers: &[Header<'_>]) -> u64 {
    let mut body = BODY_NONE;
    for h in headers {
        if h.is("transfer-encoding") {
            return BODY_CHUNKED;
        }
        if h.is("content-length") {
            let v = trim_ows(h.value());
            let n = std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            body = match n {
                Some(0) => BODY_NONE,
                // A value that does not parse: the message's framing is
                // unknown, like a chunked one.
                Some(n) => n.min(BODY_CHUNKED - 1),
                None => BODY_CHUNKED,
            };
        }
    }
    body
}

/// Whether two declared body lengths can be the same body: equal, or
/// either chunked (a proxy may re-frame a body it buffered).
pub(crate) fn same_body(a: u64, b: u64) -> bool {
    a == b || a == BODY_CHUNKED || b == BODY_CHUNKED
}

const KNOWN_METHODS: [&str; 9] = [
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

/// Longest span name (bytes).
const MAX_NAME_LEN: usize = 256;

/// `s` cut to at most `max` bytes on a char boundary.
pub(crate) fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while cut > 0 && !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// What a forwarded request repeats of the request it forwards: method,
/// target and `Host` (or `:authority`), with separators, hashed with the
/// correlator's seeded hasher (targets come from the network: they must
/// not be able to aim at another request's fingerprint). `Host` is what
/// tells a reverse proxy's hop (nginx with `proxy_set_header Host`,
/// haproxy, Envoy and traefik keep it) from a service's own call to
/// another service under the same path, e.g. a poller's `GET /config`
/// while a client's `GET /config` is in flight.
pub(crate) fn fingerprint(
    hasher: &impl BuildHasher,
    method: &str,
    target: &str,
    host: Option<&[u8]>,
) -> u64 {
    let mut h = hasher.build_hasher();
    h.write(method.as_bytes());
    h.write_u8(0);
    h.write(target.as_bytes());
    match host {
        Some(host) => {
            h.write_u8(1);
            h.write(host);
        }
        None => h.write_u8(0),
    }
    h.finish()
}

/// The parts of a request target.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    /// Path (origin or absolute form, or `*`).
    pub path: Option<&'a str>,
    /// Query without the `?`.
    pub query: Option<&'a str>,
    /// Authority (absolute or authority form), userinfo removed.
    pub authority: Option<&'a str>,
}

/// Path and query of a target, the fragment dropped. Byte searches: these
/// run for every span, and `str`'s char patterns cost several times more
/// on strings this short.
fn split_query(s: &str) -> (&str, Option<&str>) {
    let b = s.as_bytes();
    let Some(i) = memchr::memchr2(b'?', b'#', b) else {
        return (s, None);
    };
    if b[i] == b'#' {
        return (&s[..i], None);
    }
    let end = memchr::memchr(b'#', &b[i + 1..]).map_or(b.len(), |j| i + 1 + j);
    (&s[..i], Some(&s[i + 1..end]))
}

fn strip_userinfo(a: &str) -> &str {
    match a.bytes().rposition(|c| c == b'@') {
        Some(i) => &a[i + 1..],
        None => a,
    }
}

/// Split a request target into path, query and authority.
pub(crate) fn split_target(t: &str) -> Target<'_> {
    if t.starts_with('/') {
        let (path, query) = split_query(t);
        return Target {
            path: Some(path),
            query,
            authority: None,
        };
    }
    if t == "*" {
        return Target {
            path: Some("*"),
            query: None,
            authority: None,
        };
    }
    if let Some(i) = t.find("://") {
        let rest = &t[i + 3..];
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = strip_userinfo(&rest[..end]);
        let (path, query) = split_query(&rest[end..]);
        let path = if path.is_empty() { "/" } else { path };
        return Target {
            path: Some(path),
            query,
            authority: (!authority.is_empty()).then_some(authority),
        };
    }
    let authority = strip_userinfo(t);
    Target {
        path: None,
        query: None,
        authority: (!authority.is_empty()).then_some(authority),
    }
}

/// Headers the correlator reads (besides the configured request-id
/// headers); a caller may drop the others before handing messages over.
const READ_HEADERS: [&str; 14] = [
    "host",
    "content-length",
    "transfer-encoding",
    ":authority",
    "user-agent",
    "content-type",
    "traceparent",
    "tracestate",
    "b3",
    "forwarded",
    "x-forwarded-for",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
];

/// Whether the correlator reads header `name` (ASCII case-insensitive):
/// the attributes, propagation (W3C, B3 single and `x-b3-*`), gRPC status
/// and body framing (`content-length`, `transfer-encoding`: a forwarded
/// request repeats its body length) headers. Configured request-id headers
/// come on top.
pub fn reads_header(name: &str) -> bool {
    READ_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h))
        || name
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("x-b3-"))
}

/// Replace every query value with `REDACTED`, keeping keys (a part with no
/// `=` is a key and is kept as is).
pub fn redact_query(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    write_redacted_query(&mut out, q);
    out
}

fn write_redacted_query(out: &mut String, q: &str) {
    for (i, part) in q.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match part.split_once('=') {
            Some((k, _)) => {
                out.push_str(k);
                out.push_str("=REDACTED");
            }
            None => out.push_str(part),
        }
    }
}

fn is_uuid(s: &[u8]) -> bool {
    s.len() == 36
        && s.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Whether a path segment looks like an identifier rather than a route word.
pub(crate) fn id_like(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    let has_digit = b.iter().any(u8::is_ascii_digit);
    if b.iter().all(u8::is_ascii_digit) || is_uuid(b) {
        return true;
    }
    if b.len() >= 16 && has_digit && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    b.len() >= 20
        && has_digit
        && b.iter().any(u8::is_ascii_alphabetic)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// The path with identifier-like segments replaced by `{id}`.
#[cfg(test)]
pub(crate) fn templated_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    write_templated_path(&mut out, path);
    out
}

fn write_templated_path(out: &mut String, path: &str) {
    let b = path.as_bytes();
    let mut start = 0;
    loop {
        let end = b[start..]
            .iter()
            .position(|&c| c == b'/')
            .map_or(b.len(), |i| start + i);
        let seg = &path[start..end];
        out.push_str(if id_like(seg) { "{id}" } else { seg });
        if end == b.len() {
            return;
        }
        out.push('/');
        start = end + 1;
    }
}

/// `host[:port]` (IPv6 in brackets) into host and port; userinfo dropped.
pub(crate) fn parse_authority(a: &str) -> Option<(&str, Option<u16>)> {
    let a = strip_userinfo(a.trim());
    if a.is_empty() {
        return None;
    }
    if let Some(rest) = a.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((host, port));
    }
    let b = a.as_bytes();
    let Some(i) = b.iter().position(|&c| c == b':') else {
        return Some((a, None));
    };
    if b[i + 1..].contains(&b':') {
        // Two colons without brackets: an IPv6 literal, no port.
        return Some((a, None));
    }
    if i == 0 {
        return None;
    }
    Some((&a[..i], a[i + 1..].parse().ok()))
}

fn grpc_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// First address in `X-Forwarded-For`, else in `Forwarded: for=`.
fn forwarded_client<'a>(headers: &'a [Header<'a>]) -> Option<Cow<'a, str>> {
    if let Some(v) = header_value(headers, "x-forwarded-for") {
        let first = trim_ows(v.split(|b| *b == b',').next().unwrap_or(&[]));
        if !first.is_empty() {
            return Some(String::from_utf8_lossy(first));
        }
    }
    let v = header_value(headers, "forwarded")?;
    let first = v.split(|b| *b == b',').next()?;
    for pair in first.split(|b| *b == b';') {
        let pair = trim_ows(pair);
        let Some(eq) = pair.iter().position(|b| *b == b'=') else {
            continue;
        };
        if !pair[..eq].eq_ignore_ascii_case(b"for") {
            continue;
        }
        let val = trim_ows(&pair[eq + 1..]);
        let val = val.strip_prefix(b"\"").unwrap_or(val);
        let val = val.strip_suffix(b"\"").unwrap_or(val);
        let val = match val.strip_prefix(b"[") {
            Some(v) => v.split(|b| *b == b']').next().unwrap_or(v),
            None => val,
        };
        if !val.is_empty() {
            return Some(String::from_utf8_lossy(val));
        }
    }
    None
}

/// Writes an address as the conventions want it: IPv4-mapped IPv6 as IPv4,
/// IPv4 without the formatting machinery (it is on every span).
pub(crate) fn write_ip(out: &mut String, ip: IpAddr) {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if o >= 100 {
                    out.push(char::from(b'0' + o / 100));
                }
                if o >= 10 {
                    out.push(char::from(b'0' + o / 10 % 10));
                }
                out.push(char::from(b'0' + o % 10));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Cuts what was written to `out` since `start` to at most `max` bytes.
fn truncate_clip(out: &mut String, start: usize, max: usize) {
    let keep = clip(&out[start..], max).len();
    out.truncate(start + keep);
}

fn write_query(out: &mut String, q: &str, redact: bool) {
    if redact {
        write_redacted_query(out, q);
    } else {
        out.push_str(q);
    }
}

/// The server's host: a name (Host header, authority) or the socket's
/// address.
#[derive(Clone, Copy)]
enum Host<'a> {
    Name(&'a str),
    Ip(IpAddr),
}

impl Host<'_> {
    /// `in_url`: IPv6 literals in brackets.
    fn write(self, out: &mut String, in_url: bool) {
        let v6 = match self {
            Host::Name(h) => h.contains(':'),
            // Canonical already: the correlator keeps socket addresses so.
            Host::Ip(ip) => ip.is_ipv6(),
        };
        if in_url && v6 {
            out.push('[');
        }
        match self {
            Host::Name(h) => out.push_str(h),
            Host::Ip(ip) => write_ip(out, ip),
        }
        if in_url && v6 {
            out.push(']');
        }
    }
}

/// Name and request attributes of a span; `addrs` is `(local, remote)`.
pub(crate) fn request_facts(
    kind: SpanKind,
    req: &Request<'_>,
    addrs: Option<(SocketAddr, SocketAddr)>,
    cfg: &Config,
    hasher: &impl BuildHasher,
    mut texts: Texts,
) -> (Texts, RequestFacts) {
    let max = cfg.max_attribute_len;
    let host_value =
        header_value(&req.headers, "host").or_else(|| header_value(&req.headers, ":authority"));
    let user_agent = header_value(&req.headers, "user-agent");
    // url.path, url.query and url.full each repeat the target, the name
    // templates it, addresses and the user agent come on top: room for
    // all, so the texts rarely grow.
    let estimate = 4 * req.target.len()
        + 2 * host_value.map_or(0, <[u8]>::len)
        + user_agent.map_or(0, <[u8]>::len)
        + 160;
    texts.reserve(estimate.min(16 * 1024));
    let t = &mut texts;
    let method: &str = &req.method;
    let known = KNOWN_METHODS.contains(&method);
    if known {
        t.push_str(Key::HttpRequestMethod, method);
    } else if !method.is_empty() {
        t.push_str(Key::HttpRequestMethod, "_OTHER");
        t.push_str(Key::HttpRequestMethodOriginal, clip(method, max));
    }
    if let Some(why) = req.unknown {
        // A header the agent could not decode: said so, never guessed.
        t.push_str(Key::HeadersUnknown, why);
    }
    let target = split_target(&req.target);
    if let Some(p) = target.path {
        t.push_str(Key::UrlPath, clip(p, max));
    }
    let query = target.query.map(|q| {
        t.push_with(Key::UrlQuery, |out| {
            let start = out.len();
            write_query(out, q, cfg.redact_query);
            truncate_clip(out, start, max);
        })
    });
    t.push_str(Key::UrlScheme, req.scheme.as_str());
    t.push_str(Key::NetworkProtocolVersion, req.version.as_str());

    // server.address / server.port: Host (or :authority), else the target's
    // authority, else the socket (remote for a client, local for a server).
    let host_header = host_value.map(String::from_utf8_lossy);
    let host = host_header
        .as_deref()
        .and_then(parse_authority)
        .or_else(|| target.authority.and_then(parse_authority));
    let server = match host {
        Some((h, p)) => Some((
            Host::Name(clip(h, max)),
            p.unwrap_or(req.scheme.default_port()),
        )),
        None => addrs.map(|(local, remote)| {
            let a = match kind {
                SpanKind::Client => remote,
                SpanKind::Server => local,
            };
            (Host::Ip(a.ip()), a.port())
        }),
    };
    if let Some((h, p)) = server {
        t.push_with(Key::ServerAddress, |out| h.write(out, false));
        t.push_int(Key::ServerPort, i64::from(p));
    }
    if kind == SpanKind::Client {
        if let (Some((h, port)), Some(p)) = (server, target.path) {
            t.push_with(Key::UrlFull, |out| {
                let start = out.len();
                out.push_str(req.scheme.as_str());
                out.push_str("://");
                h.write(out, true);
                if port != req.scheme.default_port() {
                    let _ = write!(out, ":{port}");
                }
                out.push_str(clip(p, max));
                if let Some((a, b)) = query {
                    // url.query's bytes: already redacted and clipped.
                    out.push('?');
                    out.extend_from_within(a as usize..b as usize);
                }
                truncate_clip(out, start, max);
            });
        }
    }
    if kind == SpanKind::Server {
        match forwarded_client(&req.headers) {
            Some(c) => t.push_str(Key::ClientAddress, clip(&c, max)),
            None => {
                if let Some((_, r)) = addrs {
                    t.push_with(Key::ClientAddress, |out| write_ip(out, r.ip()));
                }
            }
        }
    }
    if let Some((_, remote)) = addrs {
        t.push_with(Key::NetworkPeerAddress, |out| write_ip(out, remote.ip()));
        t.push_int(Key::NetworkPeerPort, i64::from(remote.port()));
    }
    if let Some(ua) = user_agent {
        t.push_str(
            Key::UserAgentOriginal,
            clip(&String::from_utf8_lossy(trim_ows(ua)), max),
        );
    }

    let grpc = header_value(&req.headers, "content-type")
        .map(|v| {
            let v = trim_ows(v);
            v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/grpc")
        })
        .unwrap_or(false);
    let mut named = false;
    if grpc {
        t.push_str(Key::RpcSystem, "grpc");
        if let Some((service, method)) = target.path.and_then(grpc_path) {
            t.push_str(Key::RpcService, clip(service, max));
            t.push_str(Key::RpcMethod, clip(method, max));
            let name = t.put_with(|out| {
                let start = out.len();
                out.push_str(service);
                out.push('/');
                out.push_str(method);
                truncate_clip(out, start, MAX_NAME_LEN);
            });
            t.set_name_range(name);
            named = true;
        }
    }
    if !named {
        let name = t.put_with(|out| {
            let start = out.len();
            out.push_str(if known { method } else { "HTTP" });
            if let Some(p) = target.path {
                out.push(' ');
                write_templated_path(out, p);
            }
            truncate_clip(out, start, MAX_NAME_LEN);
        });
        t.set_name_range(name);
    }
    let facts = RequestFacts {
        grpc,
        fingerprint: fingerprint(hasher, method, &req.target, host_value),
        body: declared_body(&req.headers),
    };
    (texts, facts)
}

/// gRPC codes that make a server span an error (semantic conventions):
/// UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
/// DATA_LOSS.
const GRPC_SERVER_ERRORS: [i64; 6] = [2, 4, 12, 13, 14, 15];

/// Add the response attributes and compute the status.
pub(crate) fn response_status(
    kind: SpanKind,
    grpc: bool,
    resp: &Response<'_>,
    t: &mut Texts,
) -> Status {
    if resp.status != 0 {
        t.push_int(Key::HttpResponseStatusCode, i64::from(resp.status));
    }
    if let Some(why) = resp.unknown {
        t.push_str(Key::ResponseHeadersUnknown, why);
    }
    if grpc {
        let code = header_value(&resp.headers, "grpc-status").and_then(|v| {
            std::str::from_utf8(trim_ows(v))
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
        });
        if let Some(m) = resp.grpc_messages {
            // This side's view: a client sends what the client sent.
            let (sent, received) = match kind {
                SpanKind::Client => (m.by_client, m.by_server),
                SpanKind::Server => (m.by_server, m.by_client),
            };
            t.push_int(Key::RpcMessagesSent, i64::from(sent));
            t.push_int(Key::RpcMessagesReceived, i64::from(received));
            if !m.exact {
                t.push_str(Key::RpcMessagesLowerBound, "true");
            }
        }
        if let Some(code) = code {
            t.push_int(Key::RpcGrpcStatusCode, code);
            let error = match kind {
                SpanKind::Client => code != 0,
                SpanKind::Server => GRPC_SERVER_ERRORS.contains(&code),
            };
            if error {
                t.push_with(Key::ErrorType, |out| {
                    let _ = write!(out, "{code}");
                });
                return Status::Error(String::new());
            }
            return Status::Unset;
        }
        if resp.reset && kind == SpanKind::Client {
            // No status reached the client and the stream was reset: the
            // call failed (cancelled, deadline, refused...); which code the
            // client library reported is not on the wire.
            t.push_str(Key::ErrorType, "stream_reset");
            return Status::Error(String::new());
        }
    }
    let s = resp.status;
    if s == 0 {
        if resp.reset && kind == SpanKind::Client {
            // Reset before any response: the request failed for its client.
            t.push_str(Key::ErrorType, "stream_reset");
            return Status::Error(String::new());
        }
        // Not known: no status is better than a wrong one.
        return Status::Unset;
    }
    let error = match kind {
        SpanKind::Server => s >= 500,
        SpanKind::Client => s >= 400,
    } || !(100..=599).contains(&s);
    if error {
        t.push_with(Key::ErrorType, |out| {
            let _ = write!(out, "{s}");
        });
        Status::Error(String::new())
    } else {
        Status::Unset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templating_table() {
        let cases = [
            ("/", "/"),
            ("/users/123", "/users/{id}"),
            ("/users/123/orders/", "/users/{id}/orders/"),
            ("/v1/items", "/v1/items"),
            ("/o/550e8400-e29b-41d4-a716-446655440000", "/o/{id}"),
            ("/blob/5f2b8c1e9a7d3f60", "/blob/{id}"),
            ("/blob/deadbeefdeadbeef", "/blob/deadbeefdeadbeef"),
            ("/t/AbCdEf0123456789_xyz-Q", "/t/{id}"),
            ("/static/main.css", "/static/main.css"),
            ("/2024-01-02", "/2024-01-02"),
            ("", ""),
            ("*", "*"),
            ("//42//", "//{id}//"),
            ("42", "{id}"),
        ];
        for (p, want) in cases {
            assert_eq!(templated_path(p), want, "{p}");
        }
    }

    #[test]
    fn targets() {
        assert_eq!(
            split_target("/a/b?x=1&y=2#frag"),
            Target {
                path: Some("/a/b"),
                query: Some("x=1&y=2"),
                authority: None
            }
        );
        assert_eq!(
            split_target("http://user:pw@example.com:8080?q=1"),
            Target {
                path: Some("/"),
                query: Some("q=1"),
                authority: Some("example.com:8080")
            }
        );
        assert_eq!(
            split_target("example.com:443"),
            Target {
                path: None,
                query: None,
                authority: Some("example.com:443")
            }
        );
        assert_eq!(split_target("*").path, Some("*"));
        let cases = [
            ("/p#f?x", "/p", None),
            ("/p?#", "/p", Some("")),
            ("/p?a?b#c#d", "/p", Some("a?b")),
            ("/p?", "/p", Some("")),
            ("/#", "/", None),
        ];
        for (t, path, query) in cases {
            let got = split_target(t);
            assert_eq!((got.path, got.query), (Some(path), query), "{t}");
        }
    }

    #[test]
    fn redaction_table() {
        let cases = [
            ("a=1&b=2", "a=REDACTED&b=REDACTED"),
            ("token=s3cr3t", "token=REDACTED"),
            ("flag&x=", "flag&x=REDACTED"),
            ("", ""),
            ("a=b=c", "a=REDACTED"),
        ];
        for (q, want) in cases {
            assert_eq!(redact_query(q), want, "{q}");
        }
    }

    #[test]
    fn authority_table() {
        type Want<'a> = Option<(&'a str, Option<u16>)>;
        let cases: [(&str, Want); 10] = [
            ("example.com", Some(("example.com", None))),
            ("::1", Some(("::1", None))),
            (":80", None),
            (" a@b@host:2 ", Some(("host", Some(2)))),
            ("example.com:8080", Some(("example.com", Some(8080)))),
            ("[::1]:9000", Some(("::1", Some(9000)))),
            ("[::1]", Some(("::1", None))),
            ("u:p@host:1", Some(("host", Some(1)))),
            ("", None),
            ("host:notaport", Some(("host", None))),
        ];
        for (a, want) in cases {
            let got = parse_authority(a);
            assert_eq!(got, want, "{a}");
        }
    }

    #[test]
    fn clip_on_char_boundary() {
        assert_eq!(clip("héllo", 2), "h");
        assert_eq!(clip("abc", 10), "abc");
        assert_eq!(clip("abc", 0), "");
    }
}
