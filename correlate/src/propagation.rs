//! Propagated context in request headers: W3C `traceparent`/`tracestate`,
//! B3 (single `b3` header and the `X-B3-*` multi-header form), and
//! request-id headers.
//!
//! Precedence: a valid `traceparent` wins, then `b3`, then `X-B3-*`. An
//! invalid header is counted and the next format is tried.

use std::hash::{BuildHasher, Hasher};

use crate::config::Counters;
use crate::model::{Header, SpanId, TraceId};

/// Context found in a request's headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HeaderContext {
    /// The propagated trace.
    pub trace_id: TraceId,
    /// The sender's span: the parent of the spans of this request when the
    /// agent knows no nearer one.
    pub parent_id: SpanId,
    /// W3C trace flags (bit 0 sampled).
    pub flags: u8,
    /// W3C tracestate, when valid.
    pub trace_state: Option<String>,
}

/// All values of header `name` (case-insensitive), in order.
pub(crate) fn header_values<'a>(
    headers: &'a [Header<'a>],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.is(name))
        .map(|h| h.value())
}

/// The first value of header `name` (case-insensitive).
pub(crate) fn header_value<'a>(headers: &'a [Header<'a>], name: &'a str) -> Option<&'a [u8]> {
    header_values(headers, name).next()
}

/// Strip optional whitespace (SP / HTAB) at both ends.
pub(crate) fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Extract the propagated context of a request, counting invalid headers.
pub(crate) fn extract(headers: &[Header<'_>], counters: &mut Counters) -> Option<HeaderContext> {
    let mut tps = header_values(headers, "traceparent");
    if let Some(first) = tps.next() {
        let parsed = if tps.next().is_some() {
            None // several traceparent headers: invalid per W3C
        } else {
            parse_traceparent(trim_ows(first))
        };
        match parsed {
            Some((trace_id, parent_id, flags)) => {
                let trace_state = tracestate(headers, counters);
                return Some(HeaderContext {
                    trace_id,
                    parent_id,
                    flags,
                    trace_state,
                });
            }
            None => counters.invalid_traceparent += 1,
        }
    }
    if let Some(v) = header_value(headers, "b3") {
        match parse_b3_single(trim_ows(v)) {
            B3::Context(ctx) => return Some(ctx),
            B3::SamplingOnly => {}
            B3::Invalid => counters.invalid_b3 += 1,
        }
    }
    let trace = header_value(headers, "x-b3-traceid");
    let span = header_value(headers, "x-b3-spanid");
    match (trace, span) {
        (None, None) => None,
        (Some(t), Some(s)) => {
            let sampled = header_value(headers, "x-b3-sampled").map(trim_ows);
            let debug = header_value(headers, "x-b3-flags").map(trim_ows) == Some(b"1");
            let flags = match sampled {
                Some(b"0" | b"false") if !debug => Some(0),
                Some(b"1" | b"true") | None => Some(1),
                Some(b"0" | b"false") => Some(1),
                Some(_) => None,
            };
            let parent_ok = match header_value(headers, "x-b3-parentspanid") {
                None => true,
                Some(p) => parse_b3_span_id(trim_ows(p)).is_some(),
            };
            match (
                parse_b3_trace_id(trim_ows(t)),
                parse_b3_span_id(trim_ows(s)),
                flags,
            ) {
                (Some(trace_id), Some(parent_id), Some(flags)) if parent_ok => {
                    Some(HeaderContext {
                        trace_id,
                        parent_id,
                        flags,
                        trace_state: None,
                    })
                }
                _ => {
                    counters.invalid_b3 += 1;
                    None
                }
            }
        }
        _ => {
            counters.invalid_b3 += 1;
            None
        }
    }
}

fn lower_hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn any_hex_val(b: u8) -> Option<u8> {
    lower_hex_val(b.to_ascii_lowercase())
}

/// Decode `out.len() * 2` hex digits with `val` deciding which digits count.
fn decode_hex(s: &[u8], out: &mut [u8], val: fn(u8) -> Option<u8>) -> bool {
    if s.len() != out.len() * 2 {
        return false;
    }
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        match (val(pair[0]), val(pair[1])) {
            (Some(h), Some(l)) => *o = (h << 4) | l,
            _ => return false,
        }
    }
    true
}

/// Parse a W3C traceparent value: `version-traceid-parentid-flags`.
/// Lowercase hex only; version `ff` is invalid; version `00` must be exactly
/// 55 characters; a later version may append `-`-prefixed fields.
pub(crate) fn parse_traceparent(v: &[u8]) -> Option<(TraceId, SpanId, u8)> {
    if v.len() < 55 {
        return None;
    }
    let mut version = [0u8; 1];
    if !decode_hex(&v[0..2], &mut version, lower_hex_val) || version[0] == 0xff {
        return None;
    }
    if version[0] == 0 && v.len() != 55 {
        return None;
    }
    if v.len() > 55 && v[55] != b'-' {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    let mut flags = [0u8; 1];
    if !decode_hex(&v[3..35], &mut trace, lower_hex_val)
        || !decode_hex(&v[36..52], &mut span, lower_hex_val)
        || !decode_hex(&v[53..55], &mut flags, lower_hex_val)
    {
        return None;
    }
    let (trace, span) = (TraceId(trace), SpanId(span));
    if !trace.is_valid() || !span.is_valid() {
        return None;
    }
    Some((trace, span, flags[0]))
}

/// Join and check the `tracestate` headers (kept raw when well-formed:
/// printable ASCII, at most 32 members, at most 512 bytes).
fn tracestate(headers: &[Header<'_>], counters: &mut Counters) -> Option<String> {
    let mut joined: Vec<u8> = Vec::new();
    for v in header_values(headers, "tracestate") {
        let v = trim_ows(v);
        if v.is_empty() {
            continue;
        }
        if !joined.is_empty() {
            joined.push(b',');
        }
        joined.extend_from_slice(v);
    }
    if joined.is_empty() {
        return None;
    }
    let printable = joined.iter().all(|b| (0x20..=0x7e).contains(b));
    let members = joined
        .split(|b| *b == b',')
        .filter(|m| !trim_ows(m).is_empty())
        .collect::<Vec<_>>();
    let members_ok = members.iter().all(|m| {
        let m = trim_ows(m);
        match m.iter().position(|b| *b == b'=') {
            Some(eq) => eq > 0 && eq + 1 < m.len(),
            None => false,
        }
    });
    if joined.len() > 512 || !printable || members.len() > 32 || !members_ok {
        counters.invalid_tracestate += 1;
        return None;
    }
    String::from_utf8(joined).ok()
}

enum B3 {
    Context(HeaderContext),
    SamplingOnly,
    Invalid,
}

fn parse_b3_trace_id(s: &[u8]) -> Option<TraceId> {
    let mut t = [0u8; 16];
    let ok = match s.len() {
        32 => decode_hex(s, &mut t, any_hex_val),
        16 => decode_hex(s, &mut t[8..], any_hex_val),
        _ => false,
    };
    let t = TraceId(t);
    (ok && t.is_valid()).then_some(t)
}

fn parse_b3_span_id(s: &[u8]) -> Option<SpanId> {
    let mut b = [0u8; 8];
    if !decode_hex(s, &mut b, any_hex_val) {
        return None;
    }
    let id = SpanId(b);
    id.is_valid().then_some(id)
}

/// `b3: {TraceId}-{SpanId}[-{SamplingState}[-{ParentSpanId}]]` or just a
/// sampling state (`0`, `1`, `d`), which carries no context.
fn parse_b3_single(v: &[u8]) -> B3 {
    if matches!(v, b"0" | b"1" | b"d") {
        return B3::SamplingOnly;
    }
    let parts: Vec<&[u8]> = v.split(|b| *b == b'-').collect();
    if parts.len() < 2 || parts.len() > 4 {
        return B3::Invalid;
    }
    let (Some(trace_id), Some(parent_id)) =
        (parse_b3_trace_id(parts[0]), parse_b3_span_id(parts[1]))
    else {
        return B3::Invalid;
    };
    let flags = match parts.get(2).copied() {
        None | Some(b"1") | Some(b"d") => 1,
        Some(b"0") => 0,
        Some(_) => return B3::Invalid,
    };
    if let Some(p) = parts.get(3) {
        if parse_b3_span_id(p).is_none() {
            return B3::Invalid;
        }
    }
    B3::Context(HeaderContext {
        trace_id,
        parent_id,
        flags,
        trace_state: None,
    })
}

/// Longest request-id value used (longer ones are ignored).
const MAX_REQUEST_ID_LEN: usize = 256;

/// Request-id values one request carries at most (more are ignored and
/// counted).
pub(crate) const MAX_REQUEST_IDS: usize = 4;

/// The request-id keys of a request, each the hash of `name\0value` (name
/// lower-cased) under the correlator's seeded hasher: compared, never shown,
/// and the seed keeps values from the network from being aimed at each
/// other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RequestIds {
    ids: [u64; MAX_REQUEST_IDS],
    len: u8,
}

impl RequestIds {
    /// The keys.
    pub fn as_slice(&self) -> &[u64] {
        &self.ids[..self.len as usize]
    }

    /// Whether the two share a key.
    #[cfg(test)]
    pub fn shares(&self, other: &RequestIds) -> bool {
        self.as_slice().iter().any(|x| other.as_slice().contains(x))
    }

    /// Whether `k` is one of the keys.
    pub fn contains(&self, k: u64) -> bool {
        self.as_slice().contains(&k)
    }

    /// Adds a key unless present; false when full.
    pub fn push(&mut self, k: u64) -> bool {
        if self.as_slice().contains(&k) {
            return true;
        }
        if self.len as usize == MAX_REQUEST_IDS {
            return false;
        }
        self.ids[self.len as usize] = k;
        self.len += 1;
        true
    }
}

/// The request-id keys of a request: one per configured header present with
/// a usable value; values beyond [`MAX_REQUEST_IDS`] are counted.
pub(crate) fn request_ids(
    headers: &[Header<'_>],
    names: &[String],
    hasher: &impl BuildHasher,
    counters: &mut Counters,
) -> RequestIds {
    let mut out = RequestIds::default();
    for name in names {
        for v in header_values(headers, name) {
            let v = trim_ows(v);
            if v.is_empty() || v.len() > MAX_REQUEST_ID_LEN {
                continue;
            }
            let mut h = hasher.build_hasher();
            for b in name.bytes() {
                h.write_u8(b.to_ascii_lowercase());
            }
            h.write_u8(0);
            h.write(v);
            if !out.push(h.finish()) {
                counters.request_ids_ignored += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<Header<'a>> {
        pairs.iter().map(|(n, v)| Header::new(*n, *v)).collect()
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_table() {
        let cases: &[(&str, bool)] = &[
            (TP, true),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                true,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                false,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                false,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz",
                true,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01xyz",
                false,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
            ("", false),
            ("garbage", false),
        ];
        for (v, ok) in cases {
            assert_eq!(parse_traceparent(v.as_bytes()).is_some(), *ok, "{v}");
        }
        let (t, s, f) = parse_traceparent(TP.as_bytes()).unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        assert_eq!(f, 1);
    }

    #[test]
    fn w3c_with_tracestate_and_precedence_over_b3() {
        let mut c = Counters::default();
        let hs = h(&[
            ("TraceParent", TP),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("tracestate", "rojo=00f067aa0ba902b7"),
            ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ]);
        let ctx = extract(&hs, &mut c).unwrap();
        assert_eq!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            ctx.trace_state.as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        assert_eq!(c, Counters::default());
    }

    #[test]
    fn invalid_tracestate_dropped_context_kept() {
        let mut c = Counters::default();
        let hs = h(&[("traceparent", TP), ("tracestate", "nokeyvalue")]);
        let ctx = extract(&hs, &mut c).unwrap();
        assert_eq!(ctx.trace_state, None);
        assert_eq!(c.invalid_tracestate, 1);
    }

    #[test]
    fn two_traceparents_invalid() {
        let mut c = Counters::default();
        let hs = h(&[("traceparent", TP), ("traceparent", TP)]);
        assert!(extract(&hs, &mut c).is_none());
        assert_eq!(c.invalid_traceparent, 1);
    }

    #[test]
    fn invalid_traceparent_falls_back_to_b3() {
        let mut c = Counters::default();
        let hs = h(&[
            ("traceparent", "00-xyz"),
            (
                "b3",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
            ),
        ]);
        let ctx = extract(&hs, &mut c).unwrap();
        assert_eq!(ctx.trace_id.to_string(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!(ctx.parent_id.to_string(), "e457b5a2e4d86bd1");
        assert_eq!(c.invalid_traceparent, 1);
    }

    #[test]
    fn b3_single_table() {
        // (value, Some(trace hex, span hex, flags)) or None = invalid, "s" = sampling only
        type Want<'a> = Option<(&'a str, &'a str, u8)>;
        let cases: &[(&str, Want, bool)] = &[
            (
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1",
                Some(("80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1", 1)),
                false,
            ),
            (
                "64fe8b2a57d3eff7-e457b5a2e4d86bd1",
                Some(("000000000000000064fe8b2a57d3eff7", "e457b5a2e4d86bd1", 1)),
                false,
            ),
            (
                "64FE8B2A57D3EFF7-E457B5A2E4D86BD1-0",
                Some(("000000000000000064fe8b2a57d3eff7", "e457b5a2e4d86bd1", 0)),
                false,
            ),
            (
                "64fe8b2a57d3eff7-e457b5a2e4d86bd1-d",
                Some(("000000000000000064fe8b2a57d3eff7", "e457b5a2e4d86bd1", 1)),
                false,
            ),
            ("0", None, false),
            ("1", None, false),
            ("d", None, false),
            ("64fe8b2a57d3eff7-e457b5a2e4d86bd1-x", None, true),
            ("64fe8b2a57d3eff7", None, true),
            ("0000000000000000-e457b5a2e4d86bd1", None, true),
            ("64fe8b2a57d3eff7-0000000000000000", None, true),
            ("64fe8b2a57d3eff-e457b5a2e4d86bd1", None, true),
            ("64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-zz", None, true),
            (
                "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-e457b5a2e4d86bd1-9",
                None,
                true,
            ),
        ];
        for (v, want, invalid) in cases {
            let mut c = Counters::default();
            let got = extract(&h(&[("b3", v)]), &mut c);
            match want {
                Some((t, s, f)) => {
                    let g = got.unwrap_or_else(|| panic!("{v}"));
                    assert_eq!(g.trace_id.to_string(), *t, "{v}");
                    assert_eq!(g.parent_id.to_string(), *s, "{v}");
                    assert_eq!(g.flags, *f, "{v}");
                }
                None => assert!(got.is_none(), "{v}"),
            }
            assert_eq!(c.invalid_b3, u64::from(*invalid), "{v}");
        }
    }

    #[test]
    fn b3_multi_table() {
        let ok = [
            ("X-B3-TraceId", "463ac35c9f6413ad48485a3953bb6124"),
            ("X-B3-SpanId", "a2fb4a1d1a96d312"),
            ("X-B3-ParentSpanId", "0020000000000001"),
            ("X-B3-Sampled", "1"),
        ];
        let mut c = Counters::default();
        let g = extract(&h(&ok), &mut c).unwrap();
        assert_eq!(g.trace_id.to_string(), "463ac35c9f6413ad48485a3953bb6124");
        assert_eq!(g.parent_id.to_string(), "a2fb4a1d1a96d312");
        assert_eq!(g.flags, 1);

        let short = [
            ("x-b3-traceid", "48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "0"),
        ];
        let g = extract(&h(&short), &mut c).unwrap();
        assert_eq!(g.trace_id.to_string(), "000000000000000048485a3953bb6124");
        assert_eq!(g.flags, 0);

        let bad: &[&[(&str, &str)]] = &[
            &[("x-b3-traceid", "48485a3953bb6124")],
            &[("x-b3-spanid", "a2fb4a1d1a96d312")],
            &[
                ("x-b3-traceid", "zz485a3953bb6124"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ],
            &[
                ("x-b3-traceid", "00000000000000000000000000000000"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ],
            &[
                ("x-b3-traceid", "48485a3953bb6124"),
                ("x-b3-spanid", "a2fb4a1d1a96d3"),
            ],
            &[
                ("x-b3-traceid", "48485a3953bb6124"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
                ("x-b3-sampled", "maybe"),
            ],
            &[
                ("x-b3-traceid", "48485a3953bb6124"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
                ("x-b3-parentspanid", "1"),
            ],
        ];
        for hs in bad {
            let mut c = Counters::default();
            assert!(extract(&h(hs), &mut c).is_none(), "{hs:?}");
            assert_eq!(c.invalid_b3, 1, "{hs:?}");
        }
    }

    #[test]
    fn request_ids_keys() {
        let names = vec!["x-request-id".to_string(), "x-correlation-id".to_string()];
        let hasher = foldhash::fast::FixedState::with_seed(7);
        let mut c = Counters::default();
        let hs = h(&[
            ("X-Request-Id", " abc "),
            ("x-correlation-id", "abc"),
            ("x-request-id", ""),
        ]);
        let ids = request_ids(&hs, &names, &hasher, &mut c);
        assert_eq!(ids.as_slice().len(), 2, "names are part of the key");
        let same = request_ids(&h(&[("x-request-id", "abc")]), &names, &hasher, &mut c);
        assert!(ids.shares(&same));
        let other = request_ids(&h(&[("x-request-id", "abd")]), &names, &hasher, &mut c);
        assert!(!ids.shares(&other));
        let long = "x".repeat(300);
        let none = request_ids(&h(&[("x-request-id", &long)]), &names, &hasher, &mut c);
        assert!(none.as_slice().is_empty());
        let many: Vec<String> = (0..6).map(|i| format!("id{i}")).collect();
        let pairs: Vec<(&str, &str)> = many.iter().map(|v| ("x-request-id", v.as_str())).collect();
        let full = request_ids(&h(&pairs), &names, &hasher, &mut c);
        assert_eq!(full.as_slice().len(), MAX_REQUEST_IDS);
        assert_eq!(c.request_ids_ignored, 2);
    }

    #[test]
    fn never_panics_on_short_or_weird_bytes() {
        let mut c = Counters::default();
        for n in 0..70 {
            let v: Vec<u8> = (0..n).map(|i| b"0-f\xff"[i % 4]).collect();
            let hs = vec![
                Header::new("traceparent", &v),
                Header::new("b3", &v),
                Header::new("x-b3-traceid", &v),
                Header::new("x-b3-spanid", &v),
                Header::new("tracestate", &v),
            ];
            let _ = extract(&hs, &mut c);
        }
    }
}
