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

use std::net::{IpAddr, SocketAddr};

use crate::config::Config;
use crate::model::{AttrValue, Request, Response, SpanKind, Status};
use crate::propagation::{header_value, trim_ows};

/// Attribute list of a span.
pub(crate) type Attrs = Vec<(&'static str, AttrValue)>;

/// What a request contributes to its span.
pub(crate) struct RequestFacts {
    /// Span name.
    pub name: String,
    /// Request-side attributes.
    pub attrs: Attrs,
    /// A gRPC call (status comes from `grpc-status`).
    pub grpc: bool,
    /// Hash of method and target, to recognise the same request at both
    /// ends of a translated connection.
    pub fingerprint: u64,
}

const KNOWN_METHODS: [&str; 9] = [
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE",
];

/// Longest span name (bytes).
const MAX_NAME_LEN: usize = 256;

/// Cut `s` to at most `max` bytes on a char boundary.
pub(crate) fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while cut > 0 && !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn text(v: &[u8], max: usize) -> String {
    clip(String::from_utf8_lossy(trim_ows(v)).into_owned(), max)
}

/// FNV-1a over method, a separator and target.
pub(crate) fn fingerprint(method: &str, target: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in method
        .bytes()
        .chain(std::iter::once(0))
        .chain(target.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
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

fn split_query(s: &str) -> (&str, Option<&str>) {
    let s = s.split('#').next().unwrap_or("");
    match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s, None),
    }
}

fn strip_userinfo(a: &str) -> &str {
    match a.rfind('@') {
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
const READ_HEADERS: [&str; 12] = [
    "host",
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
/// the attributes, propagation (W3C, B3 single and `x-b3-*`) and gRPC
/// status headers. Configured request-id headers come on top.
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
    out
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
pub(crate) fn templated_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if id_like(seg) {
            out.push_str("{id}");
        } else {
            out.push_str(seg);
        }
    }
    out
}

/// `host[:port]` (IPv6 in brackets) into host and port; userinfo dropped.
pub(crate) fn parse_authority(a: &str) -> Option<(String, Option<u16>)> {
    let a = strip_userinfo(a.trim());
    if a.is_empty() {
        return None;
    }
    if let Some(rest) = a.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((host.to_string(), port));
    }
    match a.split_once(':') {
        Some((h, p)) if !p.contains(':') => {
            if h.is_empty() {
                return None;
            }
            Some((h.to_string(), p.parse().ok()))
        }
        _ => Some((a.to_string(), None)),
    }
}

fn grpc_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

/// First address in `X-Forwarded-For`, else in `Forwarded: for=`.
fn forwarded_client(req: &Request, max: usize) -> Option<String> {
    if let Some(v) = header_value(&req.headers, "x-forwarded-for") {
        let first = v.split(|b| *b == b',').next().unwrap_or(&[]);
        let s = text(first, max);
        if !s.is_empty() {
            return Some(s);
        }
    }
    let v = header_value(&req.headers, "forwarded")?;
    let v = String::from_utf8_lossy(v);
    let first = v.split(',').next()?;
    for pair in first.split(';') {
        if let Some((k, val)) = pair.trim().split_once('=') {
            if k.eq_ignore_ascii_case("for") {
                let val = val.trim().trim_matches('"');
                let val = val
                    .strip_prefix('[')
                    .map_or(val, |v| v.split(']').next().unwrap_or(v));
                if !val.is_empty() {
                    return Some(clip(val.to_string(), max));
                }
            }
        }
    }
    None
}

fn ip_string(ip: IpAddr) -> String {
    ip.to_canonical().to_string()
}

fn host_for_url(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Name and request attributes of a span. `addrs` is `(local, remote)`.
pub(crate) fn request_facts(
    kind: SpanKind,
    req: &Request,
    addrs: Option<(SocketAddr, SocketAddr)>,
    cfg: &Config,
) -> RequestFacts {
    let max = cfg.max_attribute_len;
    let mut attrs: Attrs = Vec::with_capacity(16);
    let known = KNOWN_METHODS.contains(&req.method.as_str());
    if known {
        attrs.push(("http.request.method", AttrValue::Str(req.method.clone())));
    } else {
        attrs.push(("http.request.method", AttrValue::Str("_OTHER".into())));
        attrs.push((
            "http.request.method_original",
            AttrValue::Str(clip(req.method.clone(), max)),
        ));
    }
    let target = split_target(&req.target);
    if let Some(p) = target.path {
        attrs.push(("url.path", AttrValue::Str(clip(p.to_string(), max))));
    }
    let query = target.query.map(|q| {
        let q = if cfg.redact_query {
            redact_query(q)
        } else {
            q.to_string()
        };
        clip(q, max)
    });
    if let Some(q) = &query {
        attrs.push(("url.query", AttrValue::Str(q.clone())));
    }
    attrs.push(("url.scheme", AttrValue::Str(req.scheme.as_str().into())));
    attrs.push((
        "network.protocol.version",
        AttrValue::Str(req.version.as_str().into()),
    ));

    // server.address / server.port: Host (or :authority), else the target's
    // authority, else the socket (remote for a client, local for a server).
    let host = header_value(&req.headers, "host")
        .or_else(|| header_value(&req.headers, ":authority"))
        .and_then(|v| parse_authority(&String::from_utf8_lossy(v)))
        .or_else(|| target.authority.and_then(parse_authority));
    let socket_server = addrs.map(|(local, remote)| match kind {
        SpanKind::Client => remote,
        SpanKind::Server => local,
    });
    let server = match host {
        Some((h, p)) => Some((clip(h, max), p.unwrap_or(req.scheme.default_port()))),
        None => socket_server.map(|a| (ip_string(a.ip()), a.port())),
    };
    if let Some((h, p)) = &server {
        attrs.push(("server.address", AttrValue::Str(h.clone())));
        attrs.push(("server.port", AttrValue::Int(i64::from(*p))));
    }
    if kind == SpanKind::Client {
        if let (Some((h, p)), Some(path)) = (&server, target.path) {
            let port = if *p == req.scheme.default_port() {
                String::new()
            } else {
                format!(":{p}")
            };
            let q = query.as_ref().map(|q| format!("?{q}")).unwrap_or_default();
            let full = format!(
                "{}://{}{port}{path}{q}",
                req.scheme.as_str(),
                host_for_url(h)
            );
            attrs.push(("url.full", AttrValue::Str(clip(full, max))));
        }
    }
    if kind == SpanKind::Server {
        let client = forwarded_client(req, max).or_else(|| addrs.map(|(_, r)| ip_string(r.ip())));
        if let Some(c) = client {
            attrs.push(("client.address", AttrValue::Str(c)));
        }
    }
    if let Some((_, remote)) = addrs {
        attrs.push((
            "network.peer.address",
            AttrValue::Str(ip_string(remote.ip())),
        ));
        attrs.push((
            "network.peer.port",
            AttrValue::Int(i64::from(remote.port())),
        ));
    }
    if let Some(ua) = header_value(&req.headers, "user-agent") {
        attrs.push(("user_agent.original", AttrValue::Str(text(ua, max))));
    }

    let grpc = header_value(&req.headers, "content-type")
        .map(|v| {
            let v = trim_ows(v);
            v.len() >= 16 && v[..16].eq_ignore_ascii_case(b"application/grpc")
        })
        .unwrap_or(false);
    let mut name = None;
    if grpc {
        attrs.push(("rpc.system", AttrValue::Str("grpc".into())));
        if let Some((service, method)) = target.path.and_then(grpc_path) {
            attrs.push((
                "rpc.service",
                AttrValue::Str(clip(service.to_string(), max)),
            ));
            attrs.push(("rpc.method", AttrValue::Str(clip(method.to_string(), max))));
            name = Some(format!("{service}/{method}"));
        }
    }
    let name = name.unwrap_or_else(|| {
        let m = if known { req.method.as_str() } else { "HTTP" };
        match target.path {
            Some(p) => format!("{m} {}", templated_path(p)),
            None => m.to_string(),
        }
    });
    RequestFacts {
        name: clip(name, MAX_NAME_LEN),
        attrs,
        grpc,
        fingerprint: fingerprint(&req.method, &req.target),
    }
}

/// gRPC codes that make a server span an error (semantic conventions):
/// UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE,
/// DATA_LOSS.
const GRPC_SERVER_ERRORS: [i64; 6] = [2, 4, 12, 13, 14, 15];

/// Add the response attributes and compute the status.
pub(crate) fn response_status(
    kind: SpanKind,
    grpc: bool,
    resp: &Response,
    attrs: &mut Attrs,
) -> Status {
    attrs.push((
        "http.response.status_code",
        AttrValue::Int(i64::from(resp.status)),
    ));
    if grpc {
        let code = header_value(&resp.headers, "grpc-status").and_then(|v| {
            std::str::from_utf8(trim_ows(v))
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
        });
        if let Some(code) = code {
            attrs.push(("rpc.grpc.status_code", AttrValue::Int(code)));
            let error = match kind {
                SpanKind::Client => code != 0,
                SpanKind::Server => GRPC_SERVER_ERRORS.contains(&code),
            };
            if error {
                attrs.push(("error.type", AttrValue::Str(code.to_string())));
                return Status::Error(String::new());
            }
            return Status::Unset;
        }
    }
    let s = resp.status;
    let error = match kind {
        SpanKind::Server => s >= 500,
        SpanKind::Client => s >= 400,
    } || !(100..=599).contains(&s);
    if error {
        attrs.push(("error.type", AttrValue::Str(s.to_string())));
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
        let cases: [(&str, Want); 7] = [
            ("example.com", Some(("example.com", None))),
            ("example.com:8080", Some(("example.com", Some(8080)))),
            ("[::1]:9000", Some(("::1", Some(9000)))),
            ("[::1]", Some(("::1", None))),
            ("u:p@host:1", Some(("host", Some(1)))),
            ("", None),
            ("host:notaport", Some(("host", None))),
        ];
        for (a, want) in cases {
            let got = parse_authority(a);
            assert_eq!(got.as_ref().map(|(h, p)| (h.as_str(), *p)), want, "{a}");
        }
    }

    #[test]
    fn clip_on_char_boundary() {
        assert_eq!(clip("héllo".to_string(), 2), "h");
        assert_eq!(clip("abc".to_string(), 10), "abc");
        assert_eq!(clip("abc".to_string(), 0), "");
    }
}
