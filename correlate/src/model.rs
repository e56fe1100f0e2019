//! Identifiers, the input messages and the output spans.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;

use crate::attr_key::{self, Key};

/// A connection as the kernel names it: the socket cookie. Unique per
/// socket for the lifetime of the boot, so both ends of a loopback
/// connection have different ids.
///
/// A layer carried over a TCP connection (its TLS plaintext) is a
/// connection of its own, with [`ConnId::LAYER_BIT`] set on the socket's
/// cookie: its messages and the ciphertext under them never meet. What a
/// runtime hook says of a socket holds for the layer over it too
/// ([`ConnId::socket`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// Set on the id of a layer over a socket (kernel cookies count up
    /// from 1 and never reach it).
    pub const LAYER_BIT: u64 = 1 << 63;

    /// The socket under this connection: itself, or the one a layer is
    /// carried over.
    pub fn socket(self) -> ConnId {
        ConnId(self.0 & !Self::LAYER_BIT)
    }
}

/// A process id (the thread-group id, as the host's pid namespace sees it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid(pub u32);

/// A thread id (as the host's pid namespace sees it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tid(pub u32);

/// A W3C / OpenTelemetry trace id (16 bytes, never all zero when emitted).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TraceId(pub [u8; 16]);

/// A W3C / OpenTelemetry span id (8 bytes, never all zero when emitted).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// Whether the id is usable (not all zero).
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 16]
    }
}

impl SpanId {
    /// Whether the id is usable (not all zero).
    pub fn is_valid(&self) -> bool {
        self.0 != [0; 8]
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId(")?;
        write_hex(f, &self.0)?;
        write!(f, ")")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId(")?;
        write_hex(f, &self.0)?;
        write!(f, ")")
    }
}

// ---------------------------------------------------------------- input

/// The addresses of a connection as seen by the socket that `conn` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The socket.
    pub conn: ConnId,
    /// This socket's own address.
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
}

/// Which way a message crossed the socket, from the traced process's view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The process read this message (a request read makes a server span).
    Inbound,
    /// The process wrote this message (a request written makes a client span).
    Outbound,
}

impl Side {
    /// The other direction.
    pub fn opposite(self) -> Side {
        match self {
            Side::Inbound => Side::Outbound,
            Side::Outbound => Side::Inbound,
        }
    }
}

/// HTTP version of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.0.
    Http10,
    /// HTTP/1.1.
    Http11,
    /// HTTP/2 (also carries gRPC).
    Http2,
}

impl HttpVersion {
    /// The `network.protocol.version` value.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "1.0",
            HttpVersion::Http11 => "1.1",
            HttpVersion::Http2 => "2",
        }
    }
}

/// URL scheme of a request (`https` when the bytes came from a TLS library
/// probe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain text.
    Http,
    /// Seen in clear through a TLS library.
    Https,
}

impl Scheme {
    /// The `url.scheme` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The port a URL of this scheme has when it names none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// One header field. Names compare case-insensitively; values are raw bytes.
///
/// Fields borrow from the parser's buffers in the agent (no copy per
/// message); tests and tools may own them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// Field name as it was on the wire (any case; bytes, as parsers hand
    /// them over). HTTP/2 pseudo-headers keep their colon (`:authority`).
    pub name: Cow<'a, [u8]>,
    /// Field value as it was on the wire.
    pub value: Cow<'a, [u8]>,
}

impl<'a> Header<'a> {
    /// A header borrowing `name` and `value`.
    pub fn new(
        name: &'a (impl AsRef<[u8]> + ?Sized),
        value: &'a (impl AsRef<[u8]> + ?Sized),
    ) -> Header<'a> {
        Header {
            name: Cow::Borrowed(name.as_ref()),
            value: Cow::Borrowed(value.as_ref()),
        }
    }

    /// A header owning copies of `name` and `value`.
    pub fn owned(name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Header<'static> {
        Header {
            name: Cow::Owned(name.as_ref().to_vec()),
            value: Cow::Owned(value.as_ref().to_vec()),
        }
    }

    /// Whether the name is `name` (ASCII case-insensitive).
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }

    /// The value's bytes.
    pub fn value(&self) -> &[u8] {
        &self.value
    }
}

/// A request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// Method as sent (case kept: `get` is not `GET`).
    pub method: Cow<'a, str>,
    /// Request target: origin form `/path?query`, absolute form
    /// `http://host/path`, authority form `host:port` or `*`. For HTTP/2
    /// the `:path` pseudo-header.
    pub target: Cow<'a, str>,
    /// Protocol version.
    pub version: HttpVersion,
    /// `http`, or `https` when seen through a TLS probe.
    pub scheme: Scheme,
    /// Header fields in wire order.
    pub headers: Cow<'a, [Header<'a>]>,
    /// Why the method (then empty) or the target (then empty) is not
    /// known: an HTTP/2 header that could not be decoded (a short stable
    /// reason such as `attach` or `truncated`). `None` when both are.
    pub unknown: Option<&'static str>,
}

/// A final (non-1xx) response head. For HTTP/2 the parser may deliver it at
/// the end of the stream with the trailers appended to `headers`, which is
/// where `grpc-status` is looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    /// Status code; 0 when not known (an HTTP/2 `:status` that could not
    /// be decoded, or a stream reset before any response header).
    pub status: u16,
    /// Protocol version.
    pub version: HttpVersion,
    /// Header fields (and trailers, if any) in wire order.
    pub headers: Cow<'a, [Header<'a>]>,
    /// The HTTP/2 stream was ended by RST_STREAM (from either side), not by
    /// END_STREAM. A gRPC call so ended without `grpc-status` failed for
    /// its client (gRPC requires trailers to end a call).
    pub reset: bool,
    /// Length-prefixed gRPC messages seen on the stream (HTTP/2 gRPC
    /// calls); `None` where they are not counted.
    pub grpc_messages: Option<GrpcMessages>,
    /// Why a header or trailer field of the response (then left out) was
    /// not decoded, or its stream's end was not seen (HTTP/2: a short
    /// stable reason such as `sync_lost`). A gRPC call so answered has no
    /// status rather than a guessed one, and its span says why.
    pub unknown: Option<&'static str>,
}

/// The gRPC messages of one call, per direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrpcMessages {
    /// Messages the client sent.
    pub by_client: u32,
    /// Messages the server sent.
    pub by_server: u32,
    /// False when part of a DATA payload was not captured where a message
    /// prefix could lie: the counts are then lower bounds.
    pub exact: bool,
}

/// What a message is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageKind<'a> {
    /// A request head.
    Request(Request<'a>),
    /// A final response head.
    Response(Response<'a>),
}

/// One protocol message moved by a process over a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// The socket it crossed.
    pub conn: ConnId,
    /// Read or written by the process.
    pub side: Side,
    /// The process that moved the first byte.
    pub pid: Pid,
    /// The thread whose call moved the first byte.
    pub tid: Tid,
    /// TCP sequence number of the message's first byte. Identical at both
    /// ends of a connection: the client's written request and the server's
    /// read request carry the same value on mirrored 4-tuples.
    pub seq: u32,
    /// Monotonic kernel time of the call that moved the first byte.
    pub start_ns: u64,
    /// Monotonic kernel time of the call that moved the last byte of the
    /// head (for an HTTP/2 response delivered at end of stream: the last
    /// byte of the stream).
    pub end_ns: u64,
    /// HTTP/2 stream id; `None` for HTTP/1 (paired in order).
    pub stream_id: Option<u32>,
    /// The request or response.
    pub kind: MessageKind<'a>,
}

// --------------------------------------------------------------- output

/// Span kind (OpenTelemetry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    /// The process served the request (it read it).
    Server,
    /// The process sent the request (it wrote it).
    Client,
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrValue {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
}

impl AttrValue {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            AttrValue::Int(_) => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            AttrValue::Int(i) => Some(*i),
            AttrValue::Str(_) => None,
        }
    }
}

/// Span status (OpenTelemetry). `Ok` is never set by instrumentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// No error.
    Unset,
    /// An error. The message is empty when the status code says it all
    /// (the semantic conventions ask for no description then).
    Error(String),
}

/// Which rule gave a span its parent (for debugging and tests; the agent
/// may export it as an attribute).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParentSource {
    /// No parent: a new trace.
    Root,
    /// Rule 3: the client span of the same request at the other end of the
    /// connection (mirrored 4-tuple, same sequence number).
    Mirror,
    /// Rule 3 through address translation: the client span with the same
    /// sequence number, method and target whose addresses differ (e.g. a
    /// Kubernetes service's DNAT).
    Nat,
    /// Rule 4: the only server span in progress on the thread, in a
    /// process known to serve one request per thread.
    Thread,
    /// Rule 5: the one server span in flight in the same process sharing a
    /// request-id header value (carried by its request, or returned in its
    /// response).
    RequestId,
    /// Rule 4 in a proxy: the one request in flight in the same process
    /// that the outgoing request repeats (same method, target and body
    /// length).
    Forwarded,
    /// Rule 4 disambiguated by rule 5: the server span in progress on the
    /// thread whose incoming trace context has the same trace id.
    ThreadContext,
    /// A runtime hook in the process said which request the call was made
    /// for (the one in flight on a given connection).
    Runtime,
    /// Rule 5: the parent span id of a propagated header (a span the agent
    /// does not see itself).
    Header,
}

/// A span attribute's value, borrowed from its span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttrRef<'a> {
    /// A string.
    Str(&'a str),
    /// An integer.
    Int(i64),
}

impl<'a> AttrRef<'a> {
    /// The string, if this is one.
    pub fn as_str(self) -> Option<&'a str> {
        match self {
            AttrRef::Str(s) => Some(s),
            AttrRef::Int(_) => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_int(self) -> Option<i64> {
        match self {
            AttrRef::Int(i) => Some(i),
            AttrRef::Str(_) => None,
        }
    }

    /// An owned copy.
    pub fn to_owned_value(self) -> AttrValue {
        match self {
            AttrRef::Str(s) => AttrValue::Str(s.to_owned()),
            AttrRef::Int(i) => AttrValue::Int(i),
        }
    }
}

/// One attribute: its key (a [`Key`]'s index, or past the last of them an
/// index into the span's other keys) and its value: a range of the span's
/// text, or an integer split in two halves. Twelve bytes, where a `&str`
/// key and an enum value took 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attr {
    key: u16,
    int: bool,
    a: u32,
    b: u32,
}

impl Attr {
    fn str(key: u16, (a, b): (u32, u32)) -> Attr {
        Attr {
            key,
            int: false,
            a,
            b,
        }
    }

    fn int(key: u16, v: i64) -> Attr {
        let v = v as u64;
        Attr {
            key,
            int: true,
            a: v as u32,
            b: (v >> 32) as u32,
        }
    }
}

/// A span's name and attributes. Every string lives in one buffer, so a
/// span costs one allocation for its texts and one for its attribute list,
/// whatever it carries, and none when it reuses a finished span's
/// (`Correlator::recycle`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Texts {
    text: String,
    name: (u32, u32),
    attrs: Vec<Attr>,
    /// Keys that are not a [`Key`] (added through [`Span`]'s API by other
    /// stages or users): rare, and allocated only then (boxed: the field
    /// is in every span record).
    #[expect(
        clippy::box_collection,
        reason = "8 bytes in every span record, where a Vec takes 24"
    )]
    other_keys: Option<Box<Vec<&'static str>>>,
}

/// Attributes a span usually carries: the list is made with room for them.
const ATTRS_USUAL: usize = 16;

impl Texts {
    /// Empty, with room for `text_bytes` of texts.
    pub(crate) fn with_capacity(text_bytes: usize) -> Texts {
        Texts {
            text: String::with_capacity(text_bytes),
            name: (0, 0),
            attrs: Vec::with_capacity(ATTRS_USUAL),
            other_keys: None,
        }
    }

    /// Empty again, keeping its buffers (a finished span's, reused).
    pub(crate) fn clear(&mut self) {
        self.text.clear();
        self.name = (0, 0);
        self.attrs.clear();
        self.other_keys = None;
    }

    /// Room for `text_bytes` of texts and the usual attributes.
    pub(crate) fn reserve(&mut self, text_bytes: usize) {
        self.text.reserve(text_bytes);
        self.attrs.reserve(ATTRS_USUAL);
    }

    /// Asks for the first lines of the buffers a request's texts are
    /// written into first.
    pub(crate) fn prefetch_buffers(&self) {
        crate::prefetch::bytes(self.text.as_ptr(), self.text.capacity().min(256));
        crate::prefetch::bytes(
            self.attrs.as_ptr().cast::<u8>(),
            (self.attrs.capacity() * std::mem::size_of::<Attr>()).min(192),
        );
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.text.capacity()
            + self.attrs.capacity() * std::mem::size_of::<Attr>()
            + self.other_keys.as_ref().map_or(0, |k| {
                std::mem::size_of::<Vec<&str>>() + k.capacity() * std::mem::size_of::<&str>()
            })
    }

    fn range(&self, (a, b): (u32, u32)) -> &str {
        self.text.get(a as usize..b as usize).unwrap_or("")
    }

    /// Appends `s` to the text buffer and returns its range.
    pub(crate) fn put(&mut self, s: &str) -> (u32, u32) {
        let a = self.text.len() as u32;
        self.text.push_str(s);
        (a, self.text.len() as u32)
    }

    /// Appends what `f` writes to the text buffer and returns its range.
    pub(crate) fn put_with(&mut self, f: impl FnOnce(&mut String)) -> (u32, u32) {
        let a = self.text.len() as u32;
        f(&mut self.text);
        (a, self.text.len() as u32)
    }

    pub(crate) fn name(&self) -> &str {
        self.range(self.name)
    }

    pub(crate) fn set_name_range(&mut self, r: (u32, u32)) {
        self.name = r;
    }

    /// Adds attribute `key` with the text `f` appends; returns its range.
    pub(crate) fn push_with(&mut self, key: Key, f: impl FnOnce(&mut String)) -> (u32, u32) {
        let r = self.put_with(f);
        self.attrs.push(Attr::str(key as u16, r));
        r
    }

    pub(crate) fn set_name(&mut self, name: &str) {
        self.name = self.put(name);
    }

    pub(crate) fn push_str(&mut self, key: Key, v: &str) {
        let r = self.put(v);
        self.attrs.push(Attr::str(key as u16, r));
    }

    pub(crate) fn push_int(&mut self, key: Key, v: i64) {
        self.attrs.push(Attr::int(key as u16, v));
    }

    /// The stored key of `key`: its [`Key`]'s, else its place among the
    /// other keys (added the first time). `None` past 65,535 distinct keys
    /// on one span, which `&'static str` keys cannot reach in practice.
    fn key_of(&mut self, key: &'static str) -> Option<u16> {
        if let Some(k) = Key::find(key) {
            return Some(k);
        }
        let others = self.other_keys.get_or_insert_with(Box::default);
        let i = match others.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                others.push(key);
                others.len() - 1
            }
        };
        u16::try_from(attr_key::COUNT + i).ok()
    }

    /// Adds attribute `key` (any key) with string value `v`.
    pub(crate) fn push_named_str(&mut self, key: &'static str, v: &str) {
        if let Some(k) = self.key_of(key) {
            let r = self.put(v);
            self.attrs.push(Attr::str(k, r));
        }
    }

    /// Adds attribute `key` (any key) with integer value `v`.
    pub(crate) fn push_named_int(&mut self, key: &'static str, v: i64) {
        if let Some(k) = self.key_of(key) {
            self.attrs.push(Attr::int(k, v));
        }
    }

    fn key_str(&self, k: u16) -> &'static str {
        let k = k as usize;
        match Key::name_at(k) {
            Some(name) => name,
            None => self
                .other_keys
                .as_ref()
                .and_then(|o| o.get(k - attr_key::COUNT))
                .copied()
                .unwrap_or(""),
        }
    }

    pub(crate) fn attrs(&self) -> impl ExactSizeIterator<Item = (&'static str, AttrRef<'_>)> {
        self.attrs.iter().map(move |at| {
            let v = if at.int {
                AttrRef::Int((u64::from(at.b) << 32 | u64::from(at.a)) as i64)
            } else {
                AttrRef::Str(self.range((at.a, at.b)))
            };
            (self.key_str(at.key), v)
        })
    }

    pub(crate) fn clear_attrs(&mut self) {
        self.attrs.clear();
        self.other_keys = None;
    }
}

/// A finished span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// Trace id: the parent's, the propagated one, or a fresh one.
    pub trace_id: TraceId,
    /// This span's id.
    pub span_id: SpanId,
    /// Parent span id (`None` for a root).
    pub parent_span_id: Option<SpanId>,
    /// W3C trace flags of the trace (bit 0: sampled); `1` unless a
    /// propagated header said otherwise.
    pub trace_flags: u8,
    /// W3C `tracestate` of the trace, when one was propagated.
    pub trace_state: Option<String>,
    /// Which rule chose the parent.
    pub parent_source: ParentSource,
    /// Server or client.
    pub kind: SpanKind,
    /// Monotonic kernel ns: server: request read; client: request written.
    pub start_ns: u64,
    /// Monotonic kernel ns: server: response written; client: response read.
    pub end_ns: u64,
    /// The process.
    pub pid: Pid,
    /// The thread that moved the request's first byte.
    pub tid: Tid,
    /// Error or unset.
    pub status: Status,
    /// Name and semantic-convention attributes.
    pub(crate) texts: Texts,
}

impl Span {
    /// A span with no attributes, a root of `trace_id` unless
    /// `parent_span_id` is set, sampled, unset status, pid/tid 0.
    pub fn new(trace_id: TraceId, span_id: SpanId, kind: SpanKind, name: &str) -> Span {
        let mut texts = Texts::with_capacity(name.len() + 64);
        texts.set_name(name);
        Span {
            trace_id,
            span_id,
            parent_span_id: None,
            trace_flags: 1,
            trace_state: None,
            parent_source: ParentSource::Root,
            kind,
            start_ns: 0,
            end_ns: 0,
            pid: Pid(0),
            tid: Tid(0),
            status: Status::Unset,
            texts,
        }
    }

    /// A hint for a caller about to read this span's name and attributes
    /// (an exporter, one span ahead): asks for their memory to be brought
    /// into the cache. Changes nothing else.
    pub fn prefetch_texts(&self) {
        self.texts.prefetch_buffers();
    }

    /// `"{method} {templated path}"`, or `"pkg.Service/Method"` for gRPC.
    pub fn name(&self) -> &str {
        self.texts.name()
    }

    /// Replaces the name.
    pub fn set_name(&mut self, name: &str) {
        self.texts.set_name(name);
    }

    /// The OpenTelemetry semantic-convention attributes, in the order they
    /// were added.
    pub fn attributes(&self) -> impl ExactSizeIterator<Item = (&'static str, AttrRef<'_>)> {
        self.texts.attrs()
    }

    /// Adds a string attribute.
    pub fn push_str(&mut self, key: &'static str, value: &str) {
        self.texts.push_named_str(key, value);
    }

    /// Adds an integer attribute.
    pub fn push_int(&mut self, key: &'static str, value: i64) {
        self.texts.push_named_int(key, value);
    }

    /// Adds an attribute.
    pub fn push_attr(&mut self, key: &'static str, value: AttrRef<'_>) {
        match value {
            AttrRef::Str(s) => self.push_str(key, s),
            AttrRef::Int(i) => self.push_int(key, i),
        }
    }

    /// Removes every attribute.
    pub fn clear_attributes(&mut self) {
        self.texts.clear_attrs();
    }

    /// The value of attribute `key`, if present.
    pub fn attr(&self, key: &str) -> Option<AttrRef<'_>> {
        self.attributes().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The string value of attribute `key`, if present and a string.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(AttrRef::as_str)
    }

    /// The integer value of attribute `key`, if present and an integer.
    pub fn attr_int(&self, key: &str) -> Option<i64> {
        self.attr(key).and_then(AttrRef::as_int)
    }
}

#[cfg(test)]
mod tests {
    use super::{AttrRef, Span, SpanId, SpanKind, TraceId};

    #[test]
    fn attributes_keep_their_order_keys_and_values_whatever_the_key() {
        let mut s = Span::new(TraceId([1; 16]), SpanId([2; 8]), SpanKind::Server, "GET /");
        s.push_str("url.path", "/a");
        s.push_int("custom.count", i64::MIN);
        s.push_str("custom.label", "x");
        s.push_int("http.response.status_code", 204);
        s.push_int("custom.count", -1);
        s.push_int("big", i64::MAX);
        let got: Vec<_> = s.attributes().collect();
        assert_eq!(
            got,
            [
                ("url.path", AttrRef::Str("/a")),
                ("custom.count", AttrRef::Int(i64::MIN)),
                ("custom.label", AttrRef::Str("x")),
                ("http.response.status_code", AttrRef::Int(204)),
                ("custom.count", AttrRef::Int(-1)),
                ("big", AttrRef::Int(i64::MAX)),
            ]
        );
        assert_eq!(s.attr("custom.label"), Some(AttrRef::Str("x")));
        s.clear_attributes();
        assert_eq!(s.attributes().len(), 0);
        s.push_int("other", 7);
        assert_eq!(
            s.attributes().collect::<Vec<_>>(),
            [("other", AttrRef::Int(7))]
        );
    }
}
