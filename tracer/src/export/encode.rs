//! Finished spans as OTLP protobuf, written straight from the agent's own
//! span values into reused buffers: no SDK value, no per-span allocation.
//!
//! One request is an `ExportTraceServiceRequest` with one `ResourceSpans`
//! per process that has spans in it, each with one `ScopeSpans` (scope
//! `tracer` and the agent's version). Spans arrive interleaved across
//! processes, so each is encoded at once, in arrival order, into one staging
//! buffer, with an index entry (its resource, its end); closing the request
//! writes each resource's header (its attributes encoded once, when the
//! resource is first seen) and copies the spans behind their resource's
//! header. The staging buffer, the index and the request bodies handed back
//! with [`TraceEncoder::recycle`] are reused, so in steady state encoding
//! allocates nothing; memory is bounded by [`BatchLimits::max_bytes`] (plus
//! one span) and the resources held (at most [`BatchLimits::max_resources`]).
//!
//! A request closes when it holds [`BatchLimits::max_spans`] spans or
//! reaches [`BatchLimits::max_bytes`] (a span that would take it past that
//! goes to the next request), or when the owner calls
//! [`TraceEncoder::flush`] (e.g. on a timer). Finished requests wait in the
//! encoder until [`TraceEncoder::take`].
//!
//! Fields are those the OpenTelemetry SDK path set (ids, parent id, kind,
//! name, times in Unix ns, attributes, status, W3C trace state as the SDK
//! parses and prints it, flags with the OTLP "is remote known" bit and the
//! "is remote" bit for a parent in another process).
use std::{collections::HashMap, sync::Arc};

use correlate::{AttrRef, AttrValue, ParentSource, Span, SpanKind, Status};
use prost::encoding::{encode_varint, encoded_len_varint};

use super::resource::Resource;
use crate::clock::Clock;

/// Default [`BatchLimits::max_spans`].
pub const DEFAULT_BATCH_SPANS: usize = 8192;
/// Default [`BatchLimits::max_bytes`]: well under the 4 MiB that gRPC
/// servers (the OpenTelemetry Collector among them) accept by default.
pub const DEFAULT_BATCH_BYTES: usize = 1 << 20;
/// Default [`BatchLimits::max_resources`].
pub const DEFAULT_MAX_RESOURCES: usize = 512;

/// When a request closes, and how many resources are remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Spans per request at most.
    pub max_spans: usize,
    /// Bytes per request at most (uncompressed), unless a single span is
    /// larger.
    pub max_bytes: usize,
    /// Resources whose encoded attributes are kept (least recently used
    /// ones go first).
    pub max_resources: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_spans: DEFAULT_BATCH_SPANS,
            max_bytes: DEFAULT_BATCH_BYTES,
            max_resources: DEFAULT_MAX_RESOURCES,
        }
    }
}

/// A finished `ExportTraceServiceRequest`.
#[derive(Debug, Default)]
pub struct TraceRequest {
    /// The protobuf bytes.
    pub body: Vec<u8>,
    /// Spans in it.
    pub spans: u64,
}

/// The span could not be encoded: its trace or span id is all zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("span with an all-zero trace or span id")]
pub struct InvalidSpan;

/// Whether OTLP can carry `span` (see [`InvalidSpan`]).
pub fn encodable(span: &Span) -> bool {
    span.trace_id.is_valid() && span.span_id.is_valid()
}

// Wire types.
const LEN: u8 = 2;
const VARINT: u8 = 0;
const I64: u8 = 1;
const I32: u8 = 5;

const fn key(field: u8, wire: u8) -> u8 {
    (field << 3) | wire
}

// ExportTraceServiceRequest.resource_spans; ResourceSpans.resource and
// .scope_spans; ScopeSpans.scope and .spans; Resource.attributes;
// InstrumentationScope.name and .version.
const REQUEST_RESOURCE_SPANS: u8 = key(1, LEN);
const RESOURCE_SPANS_RESOURCE: u8 = key(1, LEN);
const RESOURCE_SPANS_SCOPE_SPANS: u8 = key(2, LEN);
const SCOPE_SPANS_SCOPE: u8 = key(1, LEN);
const SCOPE_SPANS_SPANS: u8 = key(2, LEN);
const RESOURCE_ATTRIBUTES: u8 = key(1, LEN);
const SCOPE_NAME: u8 = key(1, LEN);
const SCOPE_VERSION: u8 = key(2, LEN);
// Span.
const SPAN_TRACE_ID: u8 = key(1, LEN);
const SPAN_SPAN_ID: u8 = key(2, LEN);
const SPAN_TRACE_STATE: u8 = key(3, LEN);
const SPAN_PARENT_SPAN_ID: u8 = key(4, LEN);
const SPAN_NAME: u8 = key(5, LEN);
const SPAN_KIND: u8 = key(6, VARINT);
const SPAN_START: u8 = key(7, I64);
const SPAN_END: u8 = key(8, I64);
const SPAN_ATTRIBUTES: u8 = key(9, LEN);
const SPAN_STATUS: u8 = key(15, LEN);
/// Field 16 (fixed32): its key takes two bytes.
const SPAN_FLAGS: [u8; 2] = [(16 << 3 | I32) | 0x80, 1];
// KeyValue, AnyValue, Status.
const KV_KEY: u8 = key(1, LEN);
const KV_VALUE: u8 = key(2, LEN);
const ANY_STRING: u8 = key(1, LEN);
const ANY_INT: u8 = key(3, VARINT);
const STATUS_MESSAGE: u8 = key(2, LEN);
const STATUS_CODE: u8 = key(3, VARINT);

const KIND_SERVER: u8 = 2;
const KIND_CLIENT: u8 = 3;
const STATUS_CODE_ERROR: u8 = 2;
/// OTLP `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`.
pub const FLAG_HAS_IS_REMOTE: u32 = 0x100;
/// OTLP `SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK`.
pub const FLAG_IS_REMOTE: u32 = 0x200;

/// Most lengths here take one byte: that case is one push.
#[inline(always)]
fn put_len(buf: &mut Vec<u8>, n: usize) {
    if n < 0x80 {
        buf.push(n as u8);
    } else {
        encode_varint(n as u64, buf);
    }
}

#[inline]
fn put_bytes_field(buf: &mut Vec<u8>, key: u8, bytes: &[u8]) {
    buf.push(key);
    put_len(buf, bytes.len());
    buf.extend_from_slice(bytes);
}

/// Bytes of a length-delimited field holding `n` bytes.
fn field_len(n: usize) -> usize {
    1 + encoded_len_varint(n as u64) + n
}

fn any_value_len(v: AttrRef<'_>) -> usize {
    match v {
        AttrRef::Str(s) => field_len(s.len()),
        AttrRef::Int(i) => 1 + encoded_len_varint(i as u64),
    }
}

/// A `KeyValue` as field `key` of the enclosing message.
#[inline]
fn put_key_value(buf: &mut Vec<u8>, field: u8, k: &str, v: AttrRef<'_>) {
    let any = any_value_len(v);
    let kv = field_len(k.len()) + field_len(any);
    buf.reserve(field_len(kv));
    buf.push(field);
    put_len(buf, kv);
    put_bytes_field(buf, KV_KEY, k.as_bytes());
    buf.push(KV_VALUE);
    put_len(buf, any);
    match v {
        AttrRef::Str(s) => put_bytes_field(buf, ANY_STRING, s.as_bytes()),
        AttrRef::Int(i) => {
            buf.push(ANY_INT);
            encode_varint(i as u64, buf);
        }
    }
}

/// The W3C trace state as the SDK kept it: list members trimmed of
/// optional white space, empty ones skipped, at most 32; `None` when a key
/// or value is invalid (the SDK then dropped the whole state).
fn trace_state_members(s: &str) -> Option<impl Iterator<Item = (&str, &str)> + Clone> {
    let members = s
        .split_terminator(',')
        .take(32)
        .map(|m| m.trim_matches([' ', '\t']))
        .filter(|m| !m.is_empty());
    for m in members.clone() {
        let (k, v) = m.split_at(m.find('=')?);
        if !valid_trace_state_key(k) || !valid_trace_state_value(v.trim_start_matches('=')) {
            return None;
        }
    }
    Some(members.map(|m| {
        let (k, v) = m.split_at(m.find('=').unwrap_or(m.len()));
        (k, v.trim_start_matches('='))
    }))
}

fn valid_trace_state_key(key: &str) -> bool {
    if key.is_empty() || key.len() > 256 {
        return key.is_empty();
    }
    let mut vendor_start = None;
    for (i, &b) in key.as_bytes().iter().enumerate() {
        let lower_digit = b.is_ascii_lowercase() || b.is_ascii_digit();
        if !(lower_digit || matches!(b, b'_' | b'-' | b'*' | b'/' | b'@')) {
            return false;
        }
        if i == 0 && !lower_digit {
            return false;
        } else if b == b'@' {
            if vendor_start.is_some() || i + 14 < key.len() {
                return false;
            }
            vendor_start = Some(i);
        } else if vendor_start.is_some_and(|s| i == s + 1) && !lower_digit {
            return false;
        }
    }
    true
}

fn valid_trace_state_value(v: &str) -> bool {
    v.len() <= 256 && !v.contains([',', '='])
}

/// Writes `members` joined by `,` as field `key`; nothing when empty.
fn put_trace_state<'a>(
    buf: &mut Vec<u8>,
    members: impl Iterator<Item = (&'a str, &'a str)> + Clone,
) {
    let mut len = 0;
    for (i, (k, v)) in members.clone().enumerate() {
        len += usize::from(i > 0) + k.len() + 1 + v.len();
    }
    if len == 0 {
        return;
    }
    buf.push(SPAN_TRACE_STATE);
    put_len(buf, len);
    for (i, (k, v)) in members.enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(k.as_bytes());
        buf.push(b'=');
        buf.extend_from_slice(v.as_bytes());
    }
}

/// Appends `span` as field `spans` of a `ScopeSpans`.
fn put_span(buf: &mut Vec<u8>, span: &Span, clock: Clock) {
    buf.push(SCOPE_SPANS_SPANS);
    // Two bytes hold the length of a span of 128 B to 16 KiB, nearly all
    // of them; others are moved into place below.
    let len_at = buf.len();
    buf.extend_from_slice(&[0, 0]);
    let body = buf.len();

    buf.extend_from_slice(&[SPAN_TRACE_ID, 16]);
    buf.extend_from_slice(&span.trace_id.0);
    buf.extend_from_slice(&[SPAN_SPAN_ID, 8]);
    buf.extend_from_slice(&span.span_id.0);
    if let Some(members) = span.trace_state.as_deref().and_then(trace_state_members) {
        put_trace_state(buf, members);
    }
    if let Some(p) = span.parent_span_id.filter(|p| p.is_valid()) {
        buf.extend_from_slice(&[SPAN_PARENT_SPAN_ID, 8]);
        buf.extend_from_slice(&p.0);
    }
    put_bytes_field(buf, SPAN_NAME, span.name().as_bytes());
    let kind = match span.kind {
        SpanKind::Server => KIND_SERVER,
        SpanKind::Client => KIND_CLIENT,
    };
    buf.extend_from_slice(&[SPAN_KIND, kind, SPAN_START]);
    buf.extend_from_slice(&clock.unix_ns(span.start_ns).to_le_bytes());
    buf.push(SPAN_END);
    buf.extend_from_slice(&clock.unix_ns(span.end_ns.max(span.start_ns)).to_le_bytes());
    for (k, v) in span.attributes() {
        put_key_value(buf, SPAN_ATTRIBUTES, k, v);
    }
    if let Status::Error(message) = &span.status {
        let len = if message.is_empty() {
            2
        } else {
            field_len(message.len()) + 2
        };
        buf.push(SPAN_STATUS);
        put_len(buf, len);
        if !message.is_empty() {
            put_bytes_field(buf, STATUS_MESSAGE, message.as_bytes());
        }
        buf.extend_from_slice(&[STATUS_CODE, STATUS_CODE_ERROR]);
    }
    // The parent is remote when it lives in another process: the client
    // span at the other end of the connection, or a propagated header's.
    let remote = span.parent_span_id.is_some()
        && matches!(
            span.parent_source,
            ParentSource::Header | ParentSource::Mirror | ParentSource::Nat
        );
    let flags =
        u32::from(span.trace_flags) | FLAG_HAS_IS_REMOTE | if remote { FLAG_IS_REMOTE } else { 0 };
    buf.extend_from_slice(&SPAN_FLAGS);
    buf.extend_from_slice(&flags.to_le_bytes());

    let len = buf.len() - body;
    if (128..16384).contains(&len) {
        buf[len_at] = (len as u8) | 0x80;
        buf[len_at + 1] = (len >> 7) as u8;
    } else {
        let n = encoded_len_varint(len as u64);
        let end = buf.len();
        if n < 2 {
            buf.copy_within(body..end, len_at + n);
            buf.truncate(end - (2 - n));
        } else {
            let extra = n - 2;
            buf.resize(end + extra, 0);
            buf.copy_within(body..end, body + extra);
        }
        encode_varint(len as u64, &mut &mut buf[len_at..len_at + n]);
    }
}

/// A resource's attributes as field `resource` of a `ResourceSpans`.
fn resource_field(res: &Resource) -> Vec<u8> {
    let mut attrs = Vec::new();
    for (k, v) in res.attrs() {
        let v = match v {
            AttrValue::Str(s) => AttrRef::Str(s),
            AttrValue::Int(i) => AttrRef::Int(*i),
        };
        put_key_value(&mut attrs, RESOURCE_ATTRIBUTES, k, v);
    }
    let mut out = Vec::with_capacity(attrs.len() + 6);
    put_bytes_field(&mut out, RESOURCE_SPANS_RESOURCE, &attrs);
    out
}

/// The scope as field `scope` of a `ScopeSpans`.
fn scope_field() -> Vec<u8> {
    let mut scope = Vec::new();
    put_bytes_field(&mut scope, SCOPE_NAME, b"tracer");
    put_bytes_field(
        &mut scope,
        SCOPE_VERSION,
        env!("CARGO_PKG_VERSION").as_bytes(),
    );
    let mut out = Vec::new();
    put_bytes_field(&mut out, SCOPE_SPANS_SCOPE, &scope);
    out
}

/// A resource seen recently.
struct Slot {
    resource: Arc<Resource>,
    /// `ResourceSpans.resource`, encoded once.
    header: Vec<u8>,
    /// Spans and their bytes in the open request.
    spans: u32,
    span_bytes: usize,
    /// Its place in `active` while it has spans in the open request.
    rank: u32,
    /// Request counter when last used (least recently used goes first).
    used: u64,
}

/// Spans in, `ExportTraceServiceRequest` bodies out: see the module docs.
pub struct TraceEncoder {
    clock: Clock,
    limits: BatchLimits,
    scope: Vec<u8>,
    slots: Vec<Slot>,
    /// `Arc<Resource>` address -> slot. The slot holds the `Arc`, so an
    /// address is not reused while it is a key.
    by_ptr: HashMap<usize, u32, foldhash::fast::RandomState>,
    /// Slots with spans in the open request, in order of their first span.
    active: Vec<u32>,
    /// Encoded spans of the open request, in arrival order...
    stage: Vec<u8>,
    /// ...and for each its slot and end in `stage`.
    index: Vec<(u32, u32)>,
    /// Upper bound of the open request's size.
    pending_bytes: usize,
    /// Requests closed so far (the clock of `Slot::used`).
    requests: u64,
    ready: std::collections::VecDeque<TraceRequest>,
    /// Bodies given back, reused for the next requests.
    spare: Vec<Vec<u8>>,
    /// A span moved to the next request (reused).
    carry: Vec<u8>,
    /// `index` positions grouped by resource, and where each group
    /// starts (reused by `flush`).
    order: Vec<u32>,
    starts: Vec<u32>,
}

/// Bodies kept for reuse at most.
const SPARE_BODIES: usize = 2;

impl TraceEncoder {
    /// An encoder converting kernel times with `clock`.
    pub fn new(clock: Clock, limits: BatchLimits) -> TraceEncoder {
        TraceEncoder {
            clock,
            limits: BatchLimits {
                max_spans: limits.max_spans.max(1),
                max_bytes: limits.max_bytes.max(1),
                max_resources: limits.max_resources.max(1),
            },
            scope: scope_field(),
            slots: Vec::new(),
            by_ptr: HashMap::default(),
            active: Vec::new(),
            // Room for a whole request at once: growing by doubling would
            // copy it several times (pages are only touched as it fills).
            stage: Vec::with_capacity(limits.max_bytes.max(1)),
            index: Vec::new(),
            pending_bytes: 0,
            requests: 0,
            ready: std::collections::VecDeque::new(),
            spare: Vec::new(),
            carry: Vec::new(),
            order: Vec::new(),
            starts: Vec::new(),
        }
    }

    /// Encodes a span of the process described by `resource` into the open
    /// request, closing it when full.
    pub fn push(&mut self, span: &Span, resource: &Arc<Resource>) -> Result<(), InvalidSpan> {
        if !encodable(span) {
            return Err(InvalidSpan);
        }
        let slot = self.slot(resource);
        let start = self.stage.len();
        put_span(&mut self.stage, span, self.clock);
        let n = self.stage.len() - start;
        if !self.index.is_empty() && self.pending_bytes + self.cost(slot, n) > self.limits.max_bytes
        {
            // Too big for this request: it opens the next one.
            self.carry.clear();
            self.carry.extend_from_slice(&self.stage[start..]);
            self.stage.truncate(start);
            self.flush();
            self.stage.extend_from_slice(&self.carry);
        }
        self.pending_bytes += self.cost(slot, n);
        let s = &mut self.slots[slot as usize];
        if s.spans == 0 {
            s.rank = self.active.len() as u32;
            self.active.push(slot);
        }
        s.spans += 1;
        s.span_bytes += n;
        self.index.push((slot, self.stage.len() as u32));
        if self.index.len() >= self.limits.max_spans || self.pending_bytes >= self.limits.max_bytes
        {
            self.flush();
        }
        Ok(())
    }

    /// What adding `n` bytes of a span of `slot` adds to the request, at
    /// most (its resource's headers the first time).
    fn cost(&self, slot: u32, n: usize) -> usize {
        let s = &self.slots[slot as usize];
        if s.spans > 0 {
            n
        } else {
            // Two field keys and two lengths of at most 5 bytes each.
            n + s.header.len() + self.scope.len() + 12
        }
    }

    /// The slot of `resource`, made (and its attributes encoded) on first
    /// sight.
    fn slot(&mut self, resource: &Arc<Resource>) -> u32 {
        let ptr = Arc::as_ptr(resource) as usize;
        if let Some(&i) = self.by_ptr.get(&ptr) {
            return i;
        }
        if self.slots.len() >= self.limits.max_resources {
            self.evict();
        }
        let i = self.slots.len() as u32;
        self.slots.push(Slot {
            resource: resource.clone(),
            header: resource_field(resource),
            spans: 0,
            span_bytes: 0,
            rank: 0,
            used: self.requests,
        });
        self.by_ptr.insert(ptr, i);
        i
    }

    /// Forgets the least recently used resource (closing the open request
    /// first if every resource has spans in it).
    fn evict(&mut self) {
        if self.slots.iter().all(|s| s.spans > 0) {
            self.flush();
        }
        let Some(victim) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.spans == 0)
            .min_by_key(|(_, s)| s.used)
            .map(|(i, _)| i)
        else {
            return;
        };
        let gone = self.slots.swap_remove(victim);
        self.by_ptr.remove(&(Arc::as_ptr(&gone.resource) as usize));
        if let Some(moved) = self.slots.get(victim) {
            let ptr = Arc::as_ptr(&moved.resource) as usize;
            self.by_ptr.insert(ptr, victim as u32);
            let (from, to) = (self.slots.len() as u32, victim as u32);
            for a in &mut self.active {
                if *a == from {
                    *a = to;
                }
            }
            for e in &mut self.index {
                if e.0 == from {
                    e.0 = to;
                }
            }
        }
    }

    /// Spans in the open request.
    pub fn pending_spans(&self) -> usize {
        self.index.len()
    }

    /// Bytes the open request will take at most.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Resources remembered now.
    #[cfg(test)]
    fn resources(&self) -> usize {
        self.slots.len()
    }

    /// Closes the open request (if it has spans): it can then be taken.
    pub fn flush(&mut self) {
        if self.index.is_empty() {
            return;
        }
        let mut body = self.spare.pop().unwrap_or_default();
        body.clear();
        body.reserve(self.pending_bytes);
        // Group the spans by resource, in arrival order within each (a
        // counting sort: linear in spans, however many resources).
        self.starts.clear();
        self.starts.resize(self.active.len() + 1, 0);
        for &(slot, _) in &self.index {
            self.starts[self.slots[slot as usize].rank as usize + 1] += 1;
        }
        for k in 1..self.starts.len() {
            self.starts[k] += self.starts[k - 1];
        }
        self.order.clear();
        self.order.resize(self.index.len(), 0);
        for (j, &(slot, _)) in self.index.iter().enumerate() {
            let next = &mut self.starts[self.slots[slot as usize].rank as usize];
            self.order[*next as usize] = j as u32;
            *next += 1;
        }
        // Each resource's header, then its spans; spans staged one after
        // the other are copied at once.
        let mut group = 0;
        for &i in &self.active {
            let s = &self.slots[i as usize];
            let scope_spans = self.scope.len() + s.span_bytes;
            let resource_spans = s.header.len() + field_len(scope_spans);
            body.push(REQUEST_RESOURCE_SPANS);
            put_len(&mut body, resource_spans);
            body.extend_from_slice(&s.header);
            body.push(RESOURCE_SPANS_SCOPE_SPANS);
            put_len(&mut body, scope_spans);
            body.extend_from_slice(&self.scope);
            // After the loop above, `starts[r]` is where group r ends.
            let end = self.starts[s.rank as usize] as usize;
            let mut run = 0..0;
            for &j in &self.order[group..end] {
                let j = j as usize;
                let start = if j == 0 {
                    0
                } else {
                    self.index[j - 1].1 as usize
                };
                if start != run.end {
                    body.extend_from_slice(&self.stage[run]);
                    run = start..start;
                }
                run.end = self.index[j].1 as usize;
            }
            body.extend_from_slice(&self.stage[run]);
            group = end;
        }
        self.requests += 1;
        for &i in &self.active {
            let s = &mut self.slots[i as usize];
            s.spans = 0;
            s.span_bytes = 0;
            s.used = self.requests;
        }
        let spans = self.index.len() as u64;
        self.active.clear();
        self.index.clear();
        self.stage.clear();
        self.pending_bytes = 0;
        self.ready.push_back(TraceRequest { body, spans });
    }

    /// The next finished request, oldest first.
    pub fn take(&mut self) -> Option<TraceRequest> {
        self.ready.pop_front()
    }

    /// Gives a request body back for reuse (a few are kept).
    pub fn recycle(&mut self, body: Vec<u8>) {
        if self.spare.len() < SPARE_BODIES && body.capacity() <= 2 * self.limits.max_bytes {
            self.spare.push(body);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::export::console::tests::{res, span};
    use correlate::SpanId;
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{any_value::Value, AnyValue, KeyValue},
        trace::v1::{span::SpanKind as PbKind, status::StatusCode},
    };
    use prost::Message;

    pub(crate) fn decode(body: &[u8]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(body).expect("a valid ExportTraceServiceRequest")
    }

    fn attr<'a>(kvs: &'a [KeyValue], k: &str) -> Option<&'a Value> {
        kvs.iter()
            .find(|kv| kv.key == k)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    fn one(enc: &mut TraceEncoder) -> ExportTraceServiceRequest {
        enc.flush();
        let r = enc.take().expect("a request");
        assert!(enc.take().is_none());
        decode(&r.body)
    }

    #[test]
    fn every_field_decodes_as_the_sdk_set_it() {
        let clock = Clock::new();
        let mut enc = TraceEncoder::new(clock, BatchLimits::default());
        let r = Arc::new(res("users"));
        let mut s = span(3, 2, Some(1), 10, 12);
        s.trace_state = Some(" vendor=x ,, b@v=2\t".into());
        s.status = Status::Error("boom".into());
        s.kind = SpanKind::Client;
        s.trace_flags = 0;
        s.push_str("url.path", "/users/42");
        s.push_str("empty", "");
        s.push_int("negative", -5);
        enc.push(&s, &r).unwrap();
        let req = one(&mut enc);
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        let resource = rs.resource.as_ref().unwrap();
        assert_eq!(resource.attributes.len(), r.attrs().len());
        for (k, v) in r.attrs() {
            let want = match v {
                AttrValue::Str(s) => Value::StringValue(s.clone()),
                AttrValue::Int(i) => Value::IntValue(*i),
            };
            assert_eq!(attr(&resource.attributes, k), Some(&want), "{k}");
        }
        assert_eq!(rs.scope_spans.len(), 1);
        let scope = rs.scope_spans[0].scope.as_ref().unwrap();
        assert_eq!(scope.name, "tracer");
        assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
        let spans = &rs.scope_spans[0].spans;
        assert_eq!(spans.len(), 1);
        let p = &spans[0];
        assert_eq!(p.trace_id, vec![3; 16]);
        assert_eq!(p.span_id, vec![2; 8]);
        assert_eq!(p.parent_span_id, vec![1; 8]);
        assert_eq!(p.trace_state, "vendor=x,b@v=2");
        assert_eq!(p.name, "GET /s2");
        assert_eq!(p.kind, PbKind::Client as i32);
        assert_eq!(p.start_time_unix_nano, clock.unix_ns(10_000_000));
        assert_eq!(p.end_time_unix_nano, clock.unix_ns(12_000_000));
        // The test span's parent is a mirror (another process); flags 0.
        assert_eq!(p.flags, FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE);
        let st = p.status.as_ref().unwrap();
        assert_eq!(st.code, StatusCode::Error as i32);
        assert_eq!(st.message, "boom");
        let want: Vec<KeyValue> = s
            .attributes()
            .map(|(k, v)| KeyValue {
                key: k.into(),
                value: Some(AnyValue {
                    value: Some(match v {
                        AttrRef::Str(s) => Value::StringValue(s.into()),
                        AttrRef::Int(i) => Value::IntValue(i),
                    }),
                }),
                ..KeyValue::default()
            })
            .collect();
        assert_eq!(p.attributes, want);
        assert_eq!(attr(&p.attributes, "negative"), Some(&Value::IntValue(-5)));
        assert_eq!(
            attr(&p.attributes, "empty"),
            Some(&Value::StringValue(String::new()))
        );
        assert!(p.events.is_empty() && p.links.is_empty());
        assert_eq!(p.dropped_attributes_count, 0);
    }

    #[test]
    fn roots_local_parents_and_odd_values() {
        let clock = Clock::new();
        let mut enc = TraceEncoder::new(clock, BatchLimits::default());
        let r = Arc::new(res("a"));
        let mut root = span(3, 1, None, 5, 4);
        root.trace_state = Some("Bad=key".into());
        root.status = Status::Error(String::new());
        let mut child = span(3, 2, Some(1), 0, 1);
        child.parent_source = ParentSource::Thread;
        child.set_name(&"x".repeat(20_000));
        let mut header = span(3, 3, Some(9), 0, 1);
        header.parent_source = ParentSource::Header;
        header.trace_state = Some("a=1,b=2".into());
        let mut tiny = correlate::Span::new(
            correlate::TraceId([4; 16]),
            SpanId([4; 8]),
            SpanKind::Server,
            "",
        );
        tiny.end_ns = 1;
        for s in [&root, &child, &header, &tiny] {
            enc.push(s, &r).unwrap();
        }
        let req = one(&mut enc);
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 4);
        let (root_pb, child_pb, header_pb, tiny_pb) = (&spans[0], &spans[1], &spans[2], &spans[3]);
        assert!(root_pb.parent_span_id.is_empty());
        assert_eq!(root_pb.flags, 1 | FLAG_HAS_IS_REMOTE, "root: no remote bit");
        assert_eq!(root_pb.trace_state, "", "invalid trace state dropped");
        assert_eq!(
            root_pb.end_time_unix_nano, root_pb.start_time_unix_nano,
            "the end is never before the start"
        );
        let st = root_pb.status.as_ref().unwrap();
        assert_eq!(
            (st.code, st.message.as_str()),
            (StatusCode::Error as i32, "")
        );
        assert_eq!(
            child_pb.flags,
            1 | FLAG_HAS_IS_REMOTE,
            "same-process parent"
        );
        assert_eq!(child_pb.name.len(), 20_000, "a long span's length moved");
        assert_eq!(
            header_pb.flags,
            1 | FLAG_HAS_IS_REMOTE | FLAG_IS_REMOTE,
            "header parent"
        );
        assert_eq!(header_pb.parent_span_id, vec![9; 8]);
        assert_eq!(header_pb.trace_state, "a=1,b=2");
        assert_eq!(tiny_pb.name, "", "a short span's length moved");
        assert_eq!(tiny_pb.span_id, vec![4; 8]);
        assert!(tiny_pb.status.is_none() || tiny_pb.status.as_ref().unwrap().code == 0);
    }

    #[test]
    fn trace_state_as_the_sdk_parses_it() {
        let ok = |s: &str| {
            trace_state_members(s).map(|m| m.map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>())
        };
        assert_eq!(ok("a=1,b=2").unwrap(), ["a=1", "b=2"]);
        assert_eq!(ok("tenant@vendor=x").unwrap(), ["tenant@vendor=x"]);
        assert_eq!(
            ok("a==b").unwrap(),
            ["a=b"],
            "leading '=' of a value trimmed"
        );
        assert!(ok("A=1").is_none(), "upper-case key");
        assert!(ok("a").is_none(), "no '='");
        assert!(ok("a=1=2").is_none(), "'=' in the value");
        assert!(ok("@a=1").is_none());
        assert!(ok(&format!("a={}", "v".repeat(257))).is_none());
        assert_eq!(
            ok(&(0..40)
                .map(|i| format!("k{i}=v"))
                .collect::<Vec<_>>()
                .join(","))
            .unwrap()
            .len(),
            32
        );
    }

    #[test]
    fn spans_are_grouped_by_resource_in_one_request() {
        let mut enc = TraceEncoder::new(Clock::new(), BatchLimits::default());
        let (a, b) = (Arc::new(res("a")), Arc::new(res("b")));
        for i in 1..=6u8 {
            enc.push(&span(1, i, None, 0, 1), if i % 2 == 1 { &a } else { &b })
                .unwrap();
        }
        assert_eq!(enc.pending_spans(), 6);
        let req = one(&mut enc);
        let ids = |i: usize| -> Vec<u8> {
            req.resource_spans[i].scope_spans[0]
                .spans
                .iter()
                .map(|s| s.span_id[0])
                .collect()
        };
        let svc = |i: usize| {
            attr(
                &req.resource_spans[i].resource.as_ref().unwrap().attributes,
                "service.name",
            )
            .cloned()
        };
        assert_eq!(req.resource_spans.len(), 2);
        assert_eq!(svc(0), Some(Value::StringValue("a".into())));
        assert_eq!(ids(0), [1, 3, 5]);
        assert_eq!(svc(1), Some(Value::StringValue("b".into())));
        assert_eq!(ids(1), [2, 4, 6]);
    }

    #[test]
    fn requests_close_by_count_and_by_size() {
        let r = Arc::new(res("a"));
        let mut enc = TraceEncoder::new(
            Clock::new(),
            BatchLimits {
                max_spans: 3,
                ..BatchLimits::default()
            },
        );
        for i in 1..=7u8 {
            enc.push(&span(1, i, None, 0, 1), &r).unwrap();
        }
        let counts: Vec<u64> = std::iter::from_fn(|| enc.take().map(|r| r.spans)).collect();
        assert_eq!(counts, [3, 3]);
        assert_eq!(enc.pending_spans(), 1);

        let one_span = {
            let mut e = TraceEncoder::new(Clock::new(), BatchLimits::default());
            e.push(&span(1, 1, None, 0, 1), &r).unwrap();
            e.flush();
            e.take().unwrap().body.len()
        };
        let max_bytes = one_span * 5 / 2;
        let mut enc = TraceEncoder::new(
            Clock::new(),
            BatchLimits {
                max_bytes,
                ..BatchLimits::default()
            },
        );
        let mut seen = Vec::new();
        for i in 1..=9u8 {
            enc.push(&span(1, i, None, 0, 1), &r).unwrap();
            while let Some(req) = enc.take() {
                assert!(
                    req.body.len() <= max_bytes,
                    "{} > {max_bytes}",
                    req.body.len()
                );
                let d = decode(&req.body);
                let spans = &d.resource_spans[0].scope_spans[0].spans;
                assert_eq!(spans.len() as u64, req.spans);
                seen.extend(spans.iter().map(|s| s.span_id[0]));
                enc.recycle(req.body);
            }
        }
        enc.flush();
        while let Some(req) = enc.take() {
            seen.extend(
                decode(&req.body).resource_spans[0].scope_spans[0]
                    .spans
                    .iter()
                    .map(|s| s.span_id[0]),
            );
        }
        assert_eq!(seen, (1..=9).collect::<Vec<u8>>(), "none lost, order kept");
    }

    #[test]
    fn invalid_spans_are_refused() {
        let mut enc = TraceEncoder::new(Clock::new(), BatchLimits::default());
        let r = Arc::new(res("a"));
        let mut s = span(1, 1, None, 0, 1);
        s.span_id = SpanId([0; 8]);
        assert_eq!(enc.push(&s, &r), Err(InvalidSpan));
        let mut s = span(1, 1, None, 0, 1);
        s.trace_id = correlate::TraceId([0; 16]);
        assert_eq!(enc.push(&s, &r), Err(InvalidSpan));
        assert_eq!(enc.pending_spans(), 0);
        enc.flush();
        assert!(enc.take().is_none());
    }

    #[test]
    fn resources_are_bounded_and_evicted_least_recently_used_first() {
        let mut enc = TraceEncoder::new(
            Clock::new(),
            BatchLimits {
                max_resources: 2,
                ..BatchLimits::default()
            },
        );
        let rs: Vec<Arc<Resource>> = (0..4).map(|i| Arc::new(res(&format!("s{i}")))).collect();
        enc.push(&span(1, 1, None, 0, 1), &rs[0]).unwrap();
        enc.push(&span(1, 2, None, 0, 1), &rs[1]).unwrap();
        // Both resources have spans open: the request closes to make room.
        enc.push(&span(1, 3, None, 0, 1), &rs[2]).unwrap();
        assert_eq!(enc.resources(), 2);
        enc.push(&span(1, 4, None, 0, 1), &rs[3]).unwrap();
        enc.push(&span(1, 5, None, 0, 1), &rs[2]).unwrap();
        assert_eq!(enc.resources(), 2);
        enc.flush();
        let mut by_service: Vec<(String, Vec<u8>)> = Vec::new();
        while let Some(r) = enc.take() {
            for rs in decode(&r.body).resource_spans {
                let Some(Value::StringValue(svc)) =
                    attr(&rs.resource.unwrap().attributes, "service.name").cloned()
                else {
                    panic!("no service.name")
                };
                by_service.push((
                    svc,
                    rs.scope_spans[0]
                        .spans
                        .iter()
                        .map(|s| s.span_id[0])
                        .collect(),
                ));
            }
        }
        by_service.sort();
        assert_eq!(
            by_service,
            [
                ("s0".into(), vec![1]),
                ("s1".into(), vec![2]),
                ("s2".into(), vec![3, 5]),
                ("s3".into(), vec![4]),
            ]
        );
    }

    #[test]
    fn steady_state_reuses_its_buffers() {
        let mut enc = TraceEncoder::new(
            Clock::new(),
            BatchLimits {
                max_spans: 4,
                ..BatchLimits::default()
            },
        );
        let r = Arc::new(res("a"));
        let mut last = None;
        for round in 0..3 {
            for i in 1..=4u8 {
                enc.push(&span(1, i, None, 0, 1), &r).unwrap();
            }
            let req = enc.take().unwrap();
            let ptr = req.body.as_ptr();
            if round > 0 {
                assert_eq!(Some(ptr), last, "the recycled body is reused");
            }
            last = Some(ptr);
            enc.recycle(req.body);
        }
    }
}
