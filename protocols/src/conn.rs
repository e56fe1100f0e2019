//! One protocol seam for every parser: detection, one per-connection
//! parser, one message view.
//!
//! A [`ConnParser`] takes the chunks of both directions of one connection
//! (named [`Dir::A`] and [`Dir::B`] by the caller, e.g. sent and received
//! by the local process), finds out what they carry from their first bytes
//! ([`detect`]), and hands them to the HTTP/1 parser
//! ([`Http1Connection`]) or the HTTP/2 parser ([`Http2Connection`]), or
//! ignores them (opaque: TLS, other protocols). Every message reaches the
//! caller as one [`MessageView`], whatever the protocol, with the
//! direction its bytes travelled.
//!
//! - Which side is the client may be given ([`ConnParser::new`]) or not
//!   (a connection that predates the capture): it is then read off the
//!   first bytes (an HTTP/1 request line, the HTTP/2 preface, a server's
//!   first SETTINGS) or, for HTTP/2 joined mid-way, off the first header
//!   block whose `:method` or `:status` decodes.
//! - `Upgrade: h2c`: an HTTP/1 request asking for it is held until its
//!   outcome is known. A `101` switches the connection to HTTP/2 (the
//!   request is then reported with stream id 1 and answered by the HTTP/2
//!   response on stream 1; the 101 itself is not reported); any other
//!   response releases it as a plain HTTP/1 request.
//! - A connection joined mid-way: HTTP/1 text is scanned for a message
//!   start by the HTTP/1 parser; binary bytes are HTTP/2 only when a chain
//!   of frame heads proves it ([`detect`] answers
//!   [`Detected::Http2Frames`]); anything else is opaque.

use crate::hpack::{Field, Unknown};
use crate::http1::{self, Http1Config, Http1Connection, Likely, MessageRef};
use crate::http2::frames::{Head, SETTINGS};
use crate::http2::{
    GrpcCounts, Http2Config, Http2Connection, Http2MessageRef, Start, StreamEnd, PREFACE,
};
use crate::stream::{Chunk, OpMeta, Piece};

/// One of the two directions of a connection, as the caller names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    /// The first direction (e.g. bytes the local process sent).
    A,
    /// The other one.
    B,
}

impl Dir {
    /// The other direction.
    pub fn other(self) -> Dir {
        match self {
            Dir::A => Dir::B,
            Dir::B => Dir::A,
        }
    }

    fn index(self) -> usize {
        match self {
            Dir::A => 0,
            Dir::B => 1,
        }
    }

    fn from_index(i: usize) -> Dir {
        if i == 0 {
            Dir::A
        } else {
            Dir::B
        }
    }
}

/// What the first bytes of a direction look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detected {
    /// Too few bytes to tell.
    NeedMore,
    /// An HTTP/1 request line: this direction is the client's.
    Http1Request,
    /// An HTTP/1 status line: this direction is the server's.
    Http1Response,
    /// The HTTP/2 client preface: the client's direction, from its start.
    Http2Preface,
    /// A SETTINGS frame: an HTTP/2 server's first bytes.
    Http2Settings,
    /// A chain of plausible HTTP/2 frame heads (a connection joined
    /// mid-way); the direction is not known from these bytes alone.
    Http2Frames,
    /// A TLS record.
    Tls,
    /// Nothing known.
    Unknown,
}

/// Most settings a server's first SETTINGS frame is taken to carry: more
/// than the nine that RFC 9113, 8441 and 9218 define, plus a few unknown or
/// GREASE ones (Python's `h2`, under hypercorn, sends seven: 42 bytes).
const MAX_FIRST_SETTINGS: u32 = 16;

/// Classifies the first captured bytes of a direction (see [`Detected`]).
pub fn detect(first: &[u8]) -> Detected {
    if first.is_empty() {
        return Detected::NeedMore;
    }
    let n = first.len().min(PREFACE.len());
    if first[..n] == PREFACE[..n] {
        return if n == PREFACE.len() {
            Detected::Http2Preface
        } else {
            Detected::NeedMore
        };
    }
    match http1::classify_request(first) {
        Likely::Yes => return Detected::Http1Request,
        Likely::NeedMore if first.len() < 16 => return Detected::NeedMore,
        _ => {}
    }
    match http1::classify_response(first) {
        Likely::Yes => return Detected::Http1Response,
        Likely::NeedMore if first.len() < 16 => return Detected::NeedMore,
        _ => {}
    }
    if matches!(first, [0x14..=0x17, 0x03, 0x00..=0x04, ..]) {
        return Detected::Tls;
    }
    let Some(h) = first.first_chunk::<9>() else {
        return Detected::NeedMore;
    };
    let h = Head::parse(h);
    if h.kind == SETTINGS
        && h.flags == 0
        && h.stream == 0
        && !h.reserved
        && h.len.is_multiple_of(6)
        && h.len <= MAX_FIRST_SETTINGS * 6
    {
        return Detected::Http2Settings;
    }
    if crate::http2::chained_heads(first, 2) {
        return Detected::Http2Frames;
    }
    Detected::Unknown
}

/// Protocol version of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
    /// HTTP/2
    Http2,
}

/// What a connection turned out to carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Not decided yet (no captured byte seen).
    Undecided,
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 (from the start, after an upgrade, or joined mid-way).
    Http2,
    /// Not parsed: TLS or another protocol.
    Opaque,
}

/// Positions and calls of a message, whatever its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewInfo {
    /// TCP sequence number of the message's first byte (HTTP/2: of the
    /// HEADERS frame that opened it).
    pub seq: u32,
    /// Stream offset of that byte.
    pub offset: u64,
    /// Stream offset just past the message's last byte.
    pub end_offset: u64,
    /// The call that moved the first byte.
    pub first_op: Option<OpMeta>,
    /// The call that moved the last byte.
    pub last_op: Option<OpMeta>,
    /// Segment timestamp of the first byte's chunk.
    pub first_seg_ts_ns: Option<u64>,
    /// Segment timestamp of the last byte's chunk.
    pub last_seg_ts_ns: Option<u64>,
    /// The headers are incomplete: why (HTTP/1: a head cut by missing
    /// bytes; HTTP/2: a header block cut).
    pub headers_cut: Option<Unknown>,
    /// HTTP/1: what its direction skipped since the message before (see
    /// [`http1::MessageInfo::skipped_before`]); HTTP/2 pairs by stream id.
    pub skipped_before: http1::Skipped,
}

/// A message of any protocol, borrowed for the duration of the callback.
#[derive(Debug, Clone, Copy)]
pub struct MessageView<'a> {
    dir: Dir,
    kind: ViewKind<'a>,
}

#[derive(Debug, Clone, Copy)]
enum ViewKind<'a> {
    Http1(MessageRef<'a>),
    /// An `Upgrade: h2c` request held until its answer.
    Held(&'a http1::Request, Option<u32>),
    Http2(Http2MessageRef<'a>),
}

impl<'a> MessageView<'a> {
    /// The direction the message's bytes travelled.
    pub fn dir(&self) -> Dir {
        self.dir
    }

    /// True for a request.
    pub fn is_request(&self) -> bool {
        match &self.kind {
            ViewKind::Http1(m) => m.is_request(),
            ViewKind::Held(..) => true,
            ViewKind::Http2(m) => m.is_request(),
        }
    }

    /// The protocol version.
    pub fn version(&self) -> Version {
        let minor = match &self.kind {
            ViewKind::Http1(m) => m.version(),
            ViewKind::Held(r, _) => r.version,
            ViewKind::Http2(_) => return Version::Http2,
        };
        if minor == 0 {
            Version::Http10
        } else {
            Version::Http11
        }
    }

    /// HTTP/2 stream id (also the upgraded HTTP/1 request: 1).
    pub fn stream_id(&self) -> Option<u32> {
        match &self.kind {
            ViewKind::Http1(_) => None,
            ViewKind::Held(_, s) => *s,
            ViewKind::Http2(m) => Some(m.info.stream_id),
        }
    }

    /// Request method (`None`: not a request, or absent), or why unknown.
    pub fn method(&self) -> Option<Result<&'a str, Unknown>> {
        match &self.kind {
            ViewKind::Http1(m) => m.method().map(Ok),
            ViewKind::Held(r, _) => Some(Ok(r.method.as_str())),
            ViewKind::Http2(m) => m.is_request().then(|| m.method()).flatten(),
        }
    }

    /// Request target (HTTP/2 `:path`), or why unknown.
    pub fn target(&self) -> Option<Result<&'a str, Unknown>> {
        match &self.kind {
            ViewKind::Http1(m) => m.target().map(Ok),
            ViewKind::Held(r, _) => Some(Ok(r.target.as_str())),
            ViewKind::Http2(m) => m.is_request().then(|| m.path()).flatten(),
        }
    }

    /// Response status, or why unknown.
    pub fn status(&self) -> Option<Result<u16, Unknown>> {
        match &self.kind {
            ViewKind::Http1(m) => m.status().map(Ok),
            ViewKind::Held(..) => None,
            ViewKind::Http2(m) => (!m.is_request()).then(|| m.status()).flatten(),
        }
    }

    /// HTTP/2 `:authority` or HTTP/1 `Host`, or why unknown.
    pub fn authority(&self) -> Option<Result<&'a str, Unknown>> {
        match &self.kind {
            ViewKind::Http2(m) => m.authority(),
            _ => self
                .header("host")
                .map(|v| std::str::from_utf8(v).map_err(|_| Unknown::Invalid)),
        }
    }

    /// HTTP/2 `:scheme` (`None` for HTTP/1: the connection tells).
    pub fn scheme(&self) -> Option<Result<&'a str, Unknown>> {
        match &self.kind {
            ViewKind::Http2(m) => m.scheme(),
            _ => None,
        }
    }

    /// Header fields in order (HTTP/2 pseudo-headers excluded; fields
    /// whose name is unknown included, as they may be regular headers).
    pub fn headers(&self) -> Fields<'a> {
        match &self.kind {
            ViewKind::Http1(m) => Fields::H1(m.headers()),
            ViewKind::Held(r, _) => Fields::Held(&r.headers),
            ViewKind::Http2(m) => Fields::H2(m.fields()),
        }
    }

    /// The first known value of header `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers().iter().find_map(|f| match (f.name, f.value) {
            (Some(n), Some(v)) if n.eq_ignore_ascii_case(name.as_bytes()) => Some(v),
            _ => None,
        })
    }

    /// Positions and calls.
    pub fn info(&self) -> ViewInfo {
        match &self.kind {
            ViewKind::Http1(m) => h1_info(&m.info),
            ViewKind::Held(r, _) => h1_info(&r.info),
            ViewKind::Http2(m) => {
                let i = &m.info;
                ViewInfo {
                    seq: i.seq,
                    offset: i.offset,
                    end_offset: i.end_offset,
                    first_op: i.first_op,
                    last_op: i.last_op,
                    first_seg_ts_ns: i.first_seg_ts_ns,
                    last_seg_ts_ns: i.last_seg_ts_ns,
                    headers_cut: i.headers_cut,
                    skipped_before: http1::Skipped::default(),
                }
            }
        }
    }

    /// How an HTTP/2 stream ended (responses), `None` for HTTP/1.
    pub fn stream_end(&self) -> Option<StreamEnd> {
        match &self.kind {
            ViewKind::Http2(m) => Some(m.info.end),
            _ => None,
        }
    }

    /// gRPC message counts (HTTP/2 responses of gRPC streams).
    pub fn grpc(&self) -> Option<GrpcCounts> {
        match &self.kind {
            ViewKind::Http2(m) => m.info.grpc,
            _ => None,
        }
    }

    /// The HTTP/1 message, when it is one (all its details).
    pub fn http1(&self) -> Option<&MessageRef<'a>> {
        match &self.kind {
            ViewKind::Http1(m) => Some(m),
            _ => None,
        }
    }

    /// The HTTP/2 message, when it is one.
    pub fn http2(&self) -> Option<&Http2MessageRef<'a>> {
        match &self.kind {
            ViewKind::Http2(m) => Some(m),
            _ => None,
        }
    }
}

fn h1_info(i: &http1::MessageInfo) -> ViewInfo {
    ViewInfo {
        seq: i.seq,
        offset: i.offset,
        end_offset: i.end_offset,
        first_op: i.first_op,
        last_op: i.last_op,
        first_seg_ts_ns: i.first_seg_ts_ns,
        last_seg_ts_ns: i.last_seg_ts_ns,
        headers_cut: (i.end == http1::MessageEnd::HeadTruncated).then_some(Unknown::Truncated),
        skipped_before: i.skipped_before,
    }
}

/// The header fields of a [`MessageView`].
#[derive(Debug, Clone, Copy)]
pub enum Fields<'a> {
    /// Of an HTTP/1 message.
    H1(http1::Headers<'a>),
    /// Of a held HTTP/1 request.
    Held(&'a [http1::Header]),
    /// Of an HTTP/2 message.
    H2(&'a crate::hpack::HeaderList),
}

impl<'a> Fields<'a> {
    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = Field<'a>> + 'a {
        let known = |n: &'a [u8], v: &'a [u8]| Field {
            name: Some(n),
            value: Some(v),
            why: None,
        };
        let (a, b, c) = match *self {
            Fields::H1(h) => (Some(h.raw().map(move |(n, v)| known(n, v))), None, None),
            Fields::Held(h) => (
                None,
                Some(h.iter().map(move |x| known(x.name.as_bytes(), &x.value))),
                None,
            ),
            Fields::H2(l) => (
                None,
                None,
                Some(
                    l.iter()
                        .filter(|f| f.name.is_none_or(|n| n.first() != Some(&b':'))),
                ),
            ),
        };
        a.into_iter()
            .flatten()
            .chain(b.into_iter().flatten())
            .chain(c.into_iter().flatten())
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Tunables of a [`ConnParser`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnConfig {
    /// HTTP/1 parser.
    pub http1: Http1Config,
    /// HTTP/2 parser.
    pub http2: Http2Config,
}

/// What a [`ConnParser`] decided and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnCounters {
    /// Chunks seen before the protocol was decided (not parsed).
    pub chunks_undecided: u64,
    /// Upgrades to HTTP/2 (h2c).
    pub h2c_upgrades: u64,
    /// HTTP/2 detected mid-connection.
    pub h2_mid_stream: u64,
    /// Binary connections scanned for HTTP/2 frames in vain, then opaque.
    pub probes_failed: u64,
}

sum_counters!(ConnCounters {
    chunks_undecided,
    h2c_upgrades,
    h2_mid_stream,
    probes_failed,
});

/// Bytes of a binary connection joined mid-way scanned for HTTP/2 frames
/// before it is declared opaque.
const PROBE_BUDGET: u64 = 64 * 1024;

fn looks_binary(d: &[u8]) -> bool {
    d.iter()
        .take(64)
        .any(|c| !(c.is_ascii_graphic() || c.is_ascii_whitespace()))
}

#[derive(Debug)]
enum Kind {
    Undecided,
    Http1 {
        conn: Box<Http1Connection>,
        /// An `Upgrade: h2c` request waiting for its answer.
        held: Option<Box<http1::Request>>,
        /// HTTP/2 after an upgrade, with the sides already switched.
        h2: Option<Box<Http2Connection>>,
        req_h2: bool,
        resp_h2: bool,
    },
    Http2(Box<Http2Connection>),
    Opaque,
}

/// One connection's parser. See the [module documentation](self).
#[derive(Debug)]
pub struct ConnParser {
    cfg: ConnConfig,
    /// The client's direction, once known.
    client: Option<Dir>,
    kind: Kind,
    counters: ConnCounters,
    /// Bytes scanned so far while probing a binary connection for HTTP/2.
    probing: Option<u64>,
    /// With the client known (given by the caller), offset 0 is where a
    /// call began, maybe not the connection's first byte (see
    /// [`joined_at_call`](Self::joined_at_call)).
    at_call: bool,
    /// An HTTP/1 parser kept from the last connection (allocations reused).
    spare_h1: Option<Box<Http1Connection>>,
}

fn first_data<'a>(chunk: &Chunk<'a>) -> Option<&'a [u8]> {
    match chunk.pieces.first() {
        Some(Piece::Data(d)) => Some(d),
        _ => None,
    }
}

fn asks_h2c(r: &MessageRef<'_>) -> bool {
    r.headers().values("upgrade").any(|v| {
        v.split(|c| *c == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"h2c"))
    })
}

impl ConnParser {
    /// A parser for one connection; `client`: the direction that carries
    /// requests, when known.
    pub fn new(cfg: ConnConfig, client: Option<Dir>) -> ConnParser {
        ConnParser {
            cfg,
            client,
            kind: Kind::Undecided,
            counters: ConnCounters::default(),
            probing: None,
            at_call: false,
            spare_h1: None,
        }
    }

    /// Offset 0 may not be the connection's first byte though the client
    /// is known, but is where a call began: the plaintext of a TLS
    /// connection, whose process may have got its probes after the
    /// connection began (a program started after the agent that connects
    /// at once, before its TLS library is read). A protocol then shows
    /// itself there as at a first byte, or as HTTP/2 frames, read from
    /// that boundary (tentatively) rather than scanned for: a call writes
    /// or reads whole frames nearly always, and a scan would skip the
    /// first header blocks, with the HPACK entries they add. Nothing
    /// changes while the client is not known.
    pub fn joined_at_call(&mut self) {
        self.at_call = true;
    }

    /// What the connection carries.
    pub fn protocol(&self) -> Protocol {
        match &self.kind {
            Kind::Undecided => Protocol::Undecided,
            Kind::Http1 {
                req_h2, resp_h2, ..
            } if *req_h2 && *resp_h2 => Protocol::Http2,
            Kind::Http1 { .. } => Protocol::Http1,
            Kind::Http2(_) => Protocol::Http2,
            Kind::Opaque => Protocol::Opaque,
        }
    }

    /// The client's direction, once known.
    pub fn client(&self) -> Option<Dir> {
        self.client
    }

    /// Counters of the seam itself.
    pub fn counters(&self) -> &ConnCounters {
        &self.counters
    }

    /// The HTTP/1 parser, when the connection is (or was) HTTP/1.
    pub fn http1(&self) -> Option<&Http1Connection> {
        match &self.kind {
            Kind::Http1 { conn, .. } => Some(conn),
            _ => None,
        }
    }

    /// The HTTP/2 parser, when the connection is HTTP/2.
    pub fn http2(&self) -> Option<&Http2Connection> {
        match &self.kind {
            Kind::Http1 { h2: Some(h), .. } => Some(h),
            Kind::Http2(h) => Some(h),
            _ => None,
        }
    }

    /// Feeds a chunk of direction `dir` (in stream order per direction;
    /// the directions may interleave in any way).
    pub fn feed(&mut self, dir: Dir, chunk: &Chunk<'_>, out: &mut impl FnMut(MessageView<'_>)) {
        if matches!(self.kind, Kind::Undecided) && !self.decide(dir, chunk) {
            self.counters.chunks_undecided += 1;
            return;
        }
        let client = self.client;
        match &mut self.kind {
            Kind::Undecided | Kind::Opaque => {}
            Kind::Http2(h) => {
                if let Some(seen) = &mut self.probing {
                    if h.resynced() {
                        self.probing = None;
                        self.counters.h2_mid_stream += 1;
                    } else {
                        *seen += u64::from(chunk.len);
                        if *seen > PROBE_BUDGET {
                            self.counters.probes_failed += 1;
                            self.kind = Kind::Opaque;
                            return;
                        }
                    }
                }
                h.feed_side(dir.index(), chunk, &mut |m| out(h2_view(m, client)));
                if self.client.is_none() {
                    self.client = h.client_side().map(Dir::from_index);
                }
            }
            Kind::Http1 { .. } => self.feed_http1(dir, chunk, out),
        }
    }

    /// Feeds a chunk of the client's direction (the client must be known:
    /// otherwise this is [`Dir::A`]).
    pub fn feed_requests(&mut self, chunk: &Chunk<'_>, out: &mut impl FnMut(MessageView<'_>)) {
        let d = self.client.unwrap_or(Dir::A);
        self.feed(d, chunk, out);
    }

    /// Feeds a chunk of the server's direction.
    pub fn feed_responses(&mut self, chunk: &Chunk<'_>, out: &mut impl FnMut(MessageView<'_>)) {
        let d = self.client.unwrap_or(Dir::A).other();
        self.feed(d, chunk, out);
    }

    /// The connection closed: emits what is pending. Ready for reuse
    /// after [`reset`](Self::reset).
    pub fn flush(&mut self, out: &mut impl FnMut(MessageView<'_>)) {
        let client = self.client.unwrap_or(Dir::A);
        let copt = self.client;
        match &mut self.kind {
            Kind::Http1 { conn, held, h2, .. } => {
                if let Some(r) = held.take() {
                    out(MessageView {
                        dir: client,
                        kind: ViewKind::Held(&r, None),
                    });
                }
                // Both directions flush here: a close-delimited response
                // ends now, and goes the server's way.
                conn.flush(&mut |m| {
                    let dir = if m.is_request() {
                        client
                    } else {
                        client.other()
                    };
                    out(h1_view(m, dir))
                });
                if let Some(h) = h2 {
                    h.flush(&mut |m| out(h2_view(m, copt)));
                }
            }
            Kind::Http2(h) => h.flush(&mut |m| out(h2_view(m, copt))),
            Kind::Undecided | Kind::Opaque => {}
        }
    }

    /// The connection was closed: buffers an idle HTTP/1 parser keeps for
    /// the next message, and the spare HTTP/1 parser, are freed (late
    /// records still parse).
    pub fn trim(&mut self) {
        if let Kind::Http1 { conn, .. } = &mut self.kind {
            conn.trim();
        }
        self.spare_h1 = None;
    }

    /// Back to a new connection's state with `client` known or not,
    /// keeping the parsers' allocations where the protocol repeats.
    pub fn reset(&mut self, client: Option<Dir>) {
        self.client = client;
        if let Kind::Http1 { mut conn, .. } = std::mem::replace(&mut self.kind, Kind::Undecided) {
            conn.reset();
            self.spare_h1 = Some(conn);
        }
        self.counters = ConnCounters::default();
        self.probing = None;
        self.at_call = false;
    }

    /// Chooses the parser from the first captured bytes of `dir`. False
    /// when they do not tell yet.
    fn decide(&mut self, dir: Dir, chunk: &Chunk<'_>) -> bool {
        let Some(d) = first_data(chunk) else {
            return false;
        };
        let h2 = |cfg: &ConnConfig, client: Option<usize>, start: Start| {
            Kind::Http2(Box::new(Http2Connection::with(cfg.http2, client, start)))
        };
        let client_idx = self.client.map(Dir::index);
        let detected = detect(d);
        if chunk.offset == 0 && self.client.is_some() {
            if let Detected::NeedMore = detected {
                if looks_binary(d) || PREFACE.starts_with(d) {
                    return false;
                }
                // A short first write of text (a prefix of a request or
                // status line): the HTTP/1 parser waits for the rest, as
                // it would have from the start.
                self.kind = self.http1_kind();
                return true;
            }
            // The client given, offset 0 is the connection's first byte
            // (or a call's): the protocol shows itself there (as HTTP/1,
            // the preface or a server's SETTINGS, each from its side; or
            // frames at a call), or the connection is not one this parses;
            // no scanning for a later start.
            let client = self.client == Some(dir);
            let fits = match detected {
                Detected::Http1Request | Detected::Http2Preface => client,
                Detected::Http1Response | Detected::Http2Settings => !client,
                Detected::Http2Frames => self.at_call,
                Detected::NeedMore | Detected::Tls | Detected::Unknown => false,
            };
            if !fits {
                self.kind = Kind::Opaque;
                return true;
            }
        }
        self.kind = match detected {
            Detected::NeedMore => return false,
            Detected::Http1Request => {
                self.client.get_or_insert(dir);
                self.http1_kind()
            }
            Detected::Http1Response => {
                self.client.get_or_insert(dir.other());
                self.http1_kind()
            }
            Detected::Http2Preface => {
                let c = *self.client.get_or_insert(dir);
                h2(&self.cfg, Some(c.index()), Start::Beginning)
            }
            Detected::Http2Settings => {
                let c = *self.client.get_or_insert(dir.other());
                h2(&self.cfg, Some(c.index()), Start::Beginning)
            }
            Detected::Http2Frames if self.at_call && client_idx.is_some() && chunk.offset == 0 => {
                h2(&self.cfg, client_idx, Start::Call)
            }
            Detected::Http2Frames => {
                self.probing = Some(0);
                h2(&self.cfg, client_idx, Start::Middle)
            }
            Detected::Tls => Kind::Opaque,
            Detected::Unknown if looks_binary(d) => {
                // Maybe HTTP/2 joined mid-frame: scan for a chain of frame
                // heads within a budget, then give up (opaque).
                self.probing = Some(0);
                h2(&self.cfg, client_idx, Start::Middle)
            }
            Detected::Unknown => {
                // Text (not binary, by the arm above) may be the middle of
                // an HTTP/1 body: the HTTP/1 parser scans for a message
                // start within its budget.
                if self.client.is_some() {
                    self.http1_kind()
                } else {
                    // Which side is the client is not known either: wait
                    // for a chunk that starts a message.
                    return false;
                }
            }
        };
        true
    }

    fn http1_kind(&mut self) -> Kind {
        let cfg = self.cfg.http1;
        Kind::Http1 {
            conn: self
                .spare_h1
                .take()
                .unwrap_or_else(|| Box::new(Http1Connection::new(cfg))),
            held: None,
            h2: None,
            req_h2: false,
            resp_h2: false,
        }
    }

    fn feed_http1(&mut self, dir: Dir, chunk: &Chunk<'_>, out: &mut impl FnMut(MessageView<'_>)) {
        let client = self.client.unwrap_or(Dir::A);
        let cfg = self.cfg.http2;
        let Kind::Http1 {
            conn,
            held,
            h2,
            req_h2,
            resp_h2,
        } = &mut self.kind
        else {
            return;
        };
        let ci = client.index();
        if dir == client {
            if *req_h2 {
                if let Some(h) = h2 {
                    h.feed_side(ci, chunk, &mut |m| out(h2_view(m, Some(client))));
                }
                return;
            }
            let mut upgrade_end = None;
            let answered = *resp_h2;
            conn.feed_requests(chunk, &mut |m| {
                if asks_h2c(&m) {
                    if let http1::Message::Request(r) = m.to_owned() {
                        upgrade_end = Some(r.info.end_offset);
                        if answered {
                            // The 101 came first: stream 1 is this request.
                            out(MessageView {
                                dir: client,
                                kind: ViewKind::Held(&r, Some(1)),
                            });
                        } else {
                            *held = Some(Box::new(r));
                        }
                    }
                } else {
                    out(h1_view(m, client));
                }
            });
            if answered {
                if let (Some(at), Some(h)) = (upgrade_end, h2.as_mut()) {
                    h.start_side_at(ci, at);
                    *req_h2 = true;
                    h.feed_side(ci, chunk, &mut |m| out(h2_view(m, Some(client))));
                    return;
                }
            }
            // The upgrade request was followed by non-HTTP/1 bytes (the
            // preface): this side is HTTP/2 from the request's end.
            if conn.requests().is_upgraded() && held.is_some() {
                let h = h2.get_or_insert_with(|| {
                    Box::new(Http2Connection::with(cfg, Some(ci), Start::Upgrade))
                });
                if let Some(r) = held.take() {
                    h.start_side_at(ci, r.info.end_offset);
                    out(MessageView {
                        dir: client,
                        kind: ViewKind::Held(&r, Some(1)),
                    });
                }
                *req_h2 = true;
                h.feed_side(ci, chunk, &mut |m| out(h2_view(m, Some(client))));
            }
        } else {
            let si = 1 - ci;
            if *resp_h2 {
                if let Some(h) = h2 {
                    h.feed_side(si, chunk, &mut |m| out(h2_view(m, Some(client))));
                }
                return;
            }
            let mut switch_at = None;
            let held_ref = &mut *held;
            conn.feed_responses(chunk, &mut |m| {
                let status = m.status().unwrap_or(0);
                // A 101 naming h2c answers an h2c upgrade request, seen or
                // not yet fed.
                if status == 101 && asks_h2c(&m) {
                    switch_at = Some(m.info.end_offset);
                    return;
                }
                if let Some(r) = held_ref.take() {
                    out(MessageView {
                        dir: client,
                        kind: ViewKind::Held(&r, None),
                    });
                }
                out(h1_view(m, client.other()));
            });
            if let Some(at) = switch_at {
                self.counters.h2c_upgrades += 1;
                let h = h2.get_or_insert_with(|| {
                    Box::new(Http2Connection::with(cfg, Some(ci), Start::Upgrade))
                });
                if let Some(r) = held.take() {
                    h.start_side_at(ci, r.info.end_offset);
                    out(MessageView {
                        dir: client,
                        kind: ViewKind::Held(&r, Some(1)),
                    });
                }
                h.start_side_at(si, at);
                *resp_h2 = true;
                h.feed_side(si, chunk, &mut |m| out(h2_view(m, Some(client))));
            }
        }
    }
}

fn h1_view<'a>(m: MessageRef<'a>, dir: Dir) -> MessageView<'a> {
    MessageView {
        dir,
        kind: ViewKind::Http1(m),
    }
}

fn h2_view(m: Http2MessageRef<'_>, client: Option<Dir>) -> MessageView<'_> {
    let c = client.unwrap_or(Dir::A);
    MessageView {
        dir: if m.is_request() { c } else { c.other() },
        kind: ViewKind::Http2(m),
    }
}
