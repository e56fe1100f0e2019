//! Incremental HTTP/1.x parser, fed with the [`Chunk`]s of
//! [`crate::stream`].
//!
//! One [`Http1Parser`] per direction of a connection, in the role of that
//! direction ([`Role::Request`] or [`Role::Response`]); an
//! [`Http1Connection`] holds both and passes what the response side must
//! know from the request side (HEAD and CONNECT requests, upgrades).
//!
//! Heads are parsed with `httparse` once the blank line that ends them has
//! arrived (they are buffered up to [`Http1Config::max_head_bytes`]);
//! bodies are never buffered: `Content-Length` bodies are skipped by count
//! (captured or [missing](crate::stream::Piece::Missing)), chunked bodies
//! are followed through their size lines while these are captured,
//! close-delimited bodies run until [`Http1Parser::flush`]. A message is
//! emitted when its last byte is seen, with the position and the call
//! ([`OpMeta`]) of its first and last bytes.
//!
//! Lost bytes are never guessed at: a head cut by a missing range is
//! emitted as far as its complete lines go ([`MessageEnd::HeadTruncated`]),
//! chunked framing lost in a missing range is recovered at the terminating
//! `0\r\n\r\n` or at the next message ([`MessageEnd::FramingLost`]), and
//! the parser resynchronises at the next line that starts like a request
//! line (a known method and a space) or a status line (`HTTP/1.x NNN`).
//! Everything dropped is counted in [`Http1Counters`].
//!
//! A direction that does not start like HTTP/1 (binary bytes, TLS, the
//! HTTP/2 preface, or no message start within
//! [`Http1Config::detect_budget`] bytes) is declared not HTTP and ignored
//! from then on; [`looks_like_http1_request`] and
//! [`looks_like_http1_response`] are the cheap classifiers used for this,
//! exported for callers that want to decide before creating a parser.

mod chunked;
mod detect;
mod head;
mod parser;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

pub use detect::{
    classify_request, classify_response, looks_like_http1_request, looks_like_http1_response,
    Likely,
};
pub use head::Headers;
pub use parser::Http1Parser;

use crate::stream::{Chunk, OpMeta};

/// Which kind of message a direction carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Requests (the client's sending direction).
    Request,
    /// Responses (the server's sending direction).
    Response,
}

/// A request method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// CONNECT
    Connect,
    /// OPTIONS
    Options,
    /// TRACE
    Trace,
    /// PATCH
    Patch,
    /// Any other token, as sent.
    Other(String),
}

impl Method {
    /// The method from its token.
    pub fn from_token(t: &str) -> Method {
        match t {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "CONNECT" => Method::Connect,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_owned()),
        }
    }

    /// The token.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Other(s) => s,
        }
    }

    /// What the response parser needs to know about this method.
    pub fn kind(&self) -> RequestKind {
        RequestKind::of_method(self.as_str())
    }
}

/// What a response parser must know about the request a response answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// HEAD: the response has no body whatever its headers say.
    Head,
    /// CONNECT: a 2xx response turns the connection into a tunnel.
    Connect,
    /// Anything else.
    Other,
}

impl RequestKind {
    /// The kind of a request with this method token.
    pub fn of_method(method: &str) -> RequestKind {
        match method {
            "HEAD" => RequestKind::Head,
            "CONNECT" => RequestKind::Connect,
            _ => RequestKind::Other,
        }
    }
}

/// A header as sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Header {
    /// Name as sent (compare with [`Header::is`]).
    pub name: String,
    /// Value bytes as sent (usually ASCII).
    pub value: Vec<u8>,
}

impl Header {
    /// True when the name is `name`, ASCII case-insensitively.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// The value as text (invalid UTF-8 replaced).
    pub fn value_str(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.value)
    }
}

/// The first header named `name` (ASCII case-insensitive).
pub fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a Header> {
    headers.iter().find(|h| h.is(name))
}

/// The values of every header named `name` (ASCII case-insensitive), in
/// order.
pub fn header_values<'a>(
    headers: &'a [Header],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.is(name))
        .map(|h| h.value.as_slice())
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyFraming {
    /// No body.
    None,
    /// `Content-Length`.
    ContentLength(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    CloseDelimited,
    /// The connection stops being HTTP after this message (101 Switching
    /// Protocols, 2xx to CONNECT).
    Tunnel,
    /// Not known: the head was incomplete.
    Unknown,
}

/// How a message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageEnd {
    /// Head and body framing were followed to the end (body bytes may
    /// still be uncaptured, see [`MessageInfo::body_missing`]).
    Complete,
    /// The head was cut by a missing range or was too large: the headers
    /// are those of its complete lines; the body was not followed.
    HeadTruncated,
    /// Chunked framing was lost in a missing range; the end is the
    /// terminating chunk found by scanning, or the start of the next
    /// message.
    FramingLost,
    /// The connection was flushed before the message ended.
    Closed,
}

/// Where a message lies in the stream and which calls moved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageInfo {
    /// TCP sequence number of the first byte.
    pub seq: u32,
    /// Stream offset (as in [`Chunk::offset`]) of the first byte.
    pub offset: u64,
    /// Stream offset just past the last byte.
    pub end_offset: u64,
    /// Length of the head (start line, headers, blank line) as buffered.
    pub head_len: u32,
    /// The call that moved the first byte.
    pub first_op: Option<OpMeta>,
    /// The call that moved the last byte.
    pub last_op: Option<OpMeta>,
    /// Segment timestamp of the chunk holding the first byte.
    pub first_seg_ts_ns: Option<u64>,
    /// Segment timestamp of the chunk holding the last byte.
    pub last_seg_ts_ns: Option<u64>,
    /// How the body is delimited.
    pub framing: BodyFraming,
    /// Body length (decoded, without chunk framing) when known.
    pub body_len: Option<u64>,
    /// Body bytes that were not captured (skipped by count).
    pub body_missing: u64,
    /// How the message ended.
    pub end: MessageEnd,
    /// What its direction could not read as messages since the one before
    /// (lost or cut bytes, or bytes that were no message): a response
    /// after such bytes may not answer the oldest request left.
    pub skipped_before: Skipped,
}

/// Bytes a direction skipped between two messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// How many.
    pub bytes: u64,
    /// When the first of them moved (its call's time, else its segment's),
    /// if known.
    pub since_ns: Option<u64>,
}

/// An HTTP/1.x request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Request target as sent (path and query, or absolute form).
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Headers in order.
    pub headers: Vec<Header>,
    /// Position, calls and body.
    pub info: MessageInfo,
}

/// An HTTP/1.x response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase as sent.
    pub reason: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Headers in order.
    pub headers: Vec<Header>,
    /// Position, calls and body.
    pub info: MessageInfo,
}

impl Request {
    /// The first header named `name` (ASCII case-insensitive) as bytes.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name).map(|h| h.value.as_slice())
    }
}

impl Response {
    /// The first header named `name` (ASCII case-insensitive) as bytes.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name).map(|h| h.value.as_slice())
    }

    /// True for 1xx responses other than 101: they do not answer the
    /// request (only emitted with [`Http1Config::emit_interim`]).
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// The start line of a message, borrowed from its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// A request line.
    Request {
        /// Method token as sent.
        method: &'a str,
        /// Request target as sent.
        target: &'a str,
    },
    /// A status line.
    Response {
        /// Status code.
        status: u16,
        /// Reason phrase as sent.
        reason: &'a str,
    },
}

/// A message as the parser emits it: a view of its head in the parser's own
/// buffer, valid for the duration of the callback that receives it. Nothing
/// is copied per message; [`MessageRef::to_owned`] makes an owned
/// [`Message`] when one must be kept.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    head: &'a head::ParsedHead,
    /// Position, calls and body.
    pub info: MessageInfo,
}

impl<'a> MessageRef<'a> {
    pub(crate) fn new(head: &'a head::ParsedHead, info: MessageInfo) -> Self {
        MessageRef { head, info }
    }

    /// The request or status line.
    pub fn line(&self) -> StartLine<'a> {
        let b = &self.head.bytes;
        match self.head.line {
            head::Line::Request { method, target, .. } => StartLine::Request {
                method: head::text(b, method),
                target: head::text(b, target),
            },
            head::Line::Response { status, reason, .. } => StartLine::Response {
                status,
                reason: head::text(b, reason),
            },
        }
    }

    /// True for a request (no text decoded: the span stage asks this and
    /// the fields below several times per message).
    pub fn is_request(&self) -> bool {
        matches!(self.head.line, head::Line::Request { .. })
    }

    /// The request method; `None` for a response.
    pub fn method(&self) -> Option<&'a str> {
        match self.head.line {
            head::Line::Request { method, .. } => Some(head::text(&self.head.bytes, method)),
            head::Line::Response { .. } => None,
        }
    }

    /// The request target; `None` for a response.
    pub fn target(&self) -> Option<&'a str> {
        match self.head.line {
            head::Line::Request { target, .. } => Some(head::text(&self.head.bytes, target)),
            head::Line::Response { .. } => None,
        }
    }

    /// The response status; `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match self.head.line {
            head::Line::Response { status, .. } => Some(status),
            head::Line::Request { .. } => None,
        }
    }

    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub fn version(&self) -> u8 {
        match self.head.line {
            head::Line::Request { version, .. } | head::Line::Response { version, .. } => version,
        }
    }

    /// Header fields in order.
    pub fn headers(&self) -> Headers<'a> {
        self.head.headers()
    }

    /// The first header named `name` (ASCII case-insensitive) as bytes.
    pub fn header(&self, name: &'a str) -> Option<&'a [u8]> {
        self.headers().get(name)
    }

    /// An owned copy.
    pub fn to_owned(&self) -> Message {
        let headers = self
            .headers()
            .iter()
            .map(|(n, v)| Header {
                name: n.to_owned(),
                value: v.to_vec(),
            })
            .collect();
        let version = self.version();
        match self.line() {
            StartLine::Request { method, target } => Message::Request(Request {
                method: Method::from_token(method),
                target: target.to_owned(),
                version,
                headers,
                info: self.info,
            }),
            StartLine::Response { status, reason } => Message::Response(Response {
                status,
                reason: reason.to_owned(),
                version,
                headers,
                info: self.info,
            }),
        }
    }
}

/// A parsed message, owned (see [`MessageRef::to_owned`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// From a [`Role::Request`] parser.
    Request(Request),
    /// From a [`Role::Response`] parser.
    Response(Response),
}

impl Message {
    /// Position, calls and body.
    pub fn info(&self) -> &MessageInfo {
        match self {
            Message::Request(r) => &r.info,
            Message::Response(r) => &r.info,
        }
    }

    /// Headers in order.
    pub fn headers(&self) -> &[Header] {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }
}

/// Tunables of a parser.
#[derive(Debug, Clone, Copy)]
pub struct Http1Config {
    /// Largest head (start line and headers) buffered; larger ones are
    /// emitted truncated and counted.
    pub max_head_bytes: usize,
    /// Bytes (captured or missing) skipped before a first message is
    /// found, after which a direction is declared not HTTP. A direction
    /// whose very first captured bytes are binary, TLS or the HTTP/2
    /// preface is declared not HTTP at once; text that is not a message
    /// start (e.g. the middle of a body on a connection that predates the
    /// agent) is scanned up to this budget.
    pub detect_budget: u64,
    /// Request kinds a response parser keeps waiting for responses.
    pub max_expected: usize,
    /// Emit interim (1xx other than 101) responses.
    pub emit_interim: bool,
}

impl Default for Http1Config {
    fn default() -> Self {
        Http1Config {
            max_head_bytes: 16 * 1024,
            detect_budget: 64 * 1024,
            max_expected: 256,
            emit_interim: false,
        }
    }
}

/// What a parser saw and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Http1Counters {
    /// Messages emitted (interim responses included when emitted).
    pub messages: u64,
    /// Interim (1xx other than 101) responses seen.
    pub interim_responses: u64,
    /// Bytes skipped while looking for the start of a message (captured or
    /// missing).
    pub bytes_skipped: u64,
    /// Times the parser lost the message boundary and had to scan.
    pub resyncs: u64,
    /// Heads httparse rejected (or whose framing headers were invalid).
    pub parse_errors: u64,
    /// Heads larger than [`Http1Config::max_head_bytes`].
    pub heads_too_large: u64,
    /// Heads cut by a missing range.
    pub heads_truncated: u64,
    /// Chunked bodies whose framing was lost.
    pub framing_lost: u64,
    /// Connections upgraded or tunnelled (parsing stopped).
    pub upgrades: u64,
    /// Directions declared not HTTP (0 or 1).
    pub not_http: u64,
    /// Body bytes skipped by count (not captured).
    pub body_bytes_missing: u64,
    /// Responses with a length but no known request whose body turned out
    /// to be the next response (HEAD guessed).
    pub head_guesses: u64,
    /// Messages cut by [`Http1Parser::flush`].
    pub closed_incomplete: u64,
    /// Request kinds dropped because the response side had too many
    /// pending.
    pub expectations_dropped: u64,
    /// Final responses for which no request kind was known.
    pub responses_unpaired: u64,
}

impl std::ops::AddAssign<&Http1Counters> for Http1Counters {
    /// Sums counters (e.g. over the parsers of many connections).
    fn add_assign(&mut self, o: &Http1Counters) {
        let Http1Counters {
            messages,
            interim_responses,
            bytes_skipped,
            resyncs,
            parse_errors,
            heads_too_large,
            heads_truncated,
            framing_lost,
            upgrades,
            not_http,
            body_bytes_missing,
            head_guesses,
            closed_incomplete,
            expectations_dropped,
            responses_unpaired,
        } = *o;
        self.messages += messages;
        self.interim_responses += interim_responses;
        self.bytes_skipped += bytes_skipped;
        self.resyncs += resyncs;
        self.parse_errors += parse_errors;
        self.heads_too_large += heads_too_large;
        self.heads_truncated += heads_truncated;
        self.framing_lost += framing_lost;
        self.upgrades += upgrades;
        self.not_http += not_http;
        self.body_bytes_missing += body_bytes_missing;
        self.head_guesses += head_guesses;
        self.closed_incomplete += closed_incomplete;
        self.expectations_dropped += expectations_dropped;
        self.responses_unpaired += responses_unpaired;
    }
}

/// Both directions of one HTTP/1.x connection: the response parser learns
/// from the request parser which requests were HEAD or CONNECT, and an
/// upgrade seen in the response stops the request parser too.
///
/// Feed each direction's chunks in stream order; the two directions may be
/// fed in any interleaving, though a HEAD request whose head reaches the
/// parser after its response is handled by a heuristic only.
#[derive(Debug)]
pub struct Http1Connection {
    requests: Http1Parser,
    responses: Http1Parser,
}

impl Http1Connection {
    /// Parsers for both directions.
    pub fn new(config: Http1Config) -> Self {
        Http1Connection {
            requests: Http1Parser::new(Role::Request, config),
            responses: Http1Parser::new(Role::Response, config),
        }
    }

    /// Feeds a chunk of the request direction.
    pub fn feed_requests(&mut self, chunk: &Chunk<'_>, out: &mut impl FnMut(MessageRef<'_>)) {
        self.requests.feed(chunk, out);
        self.pass_kinds();
    }

    /// Feeds a chunk of the response direction.
    pub fn feed_responses(&mut self, chunk: &Chunk<'_>, out: &mut impl FnMut(MessageRef<'_>)) {
        self.pass_kinds();
        self.responses.feed(chunk, out);
        if self.responses.is_upgraded() {
            self.requests.confirm_upgrade();
        }
    }

    fn pass_kinds(&mut self) {
        while let Some(k) = self.requests.take_request_kind() {
            self.responses.expect_request(k);
        }
    }

    /// Frees the idle directions' buffers (see [`Http1Parser::trim`]).
    pub fn trim(&mut self) {
        self.requests.trim();
        self.responses.trim();
    }

    /// Back to a fresh connection's state, keeping allocations.
    pub fn reset(&mut self) {
        self.requests.reset();
        self.responses.reset();
    }

    /// The connection closed: ends both directions (see
    /// [`Http1Parser::flush`]).
    pub fn flush(&mut self, out: &mut impl FnMut(MessageRef<'_>)) {
        self.requests.flush(out);
        self.pass_kinds();
        self.responses.flush(out);
    }

    /// The request direction's parser.
    pub fn requests(&self) -> &Http1Parser {
        &self.requests
    }

    /// The response direction's parser.
    pub fn responses(&self) -> &Http1Parser {
        &self.responses
    }
}
