//! Incremental HTTP/2 parser (RFC 9113), fed with the [`Chunk`]s of
//! [`crate::stream`], both directions of one connection.
//!
//! # Layers
//! - Frames: per direction, the client preface, 9-byte frame heads and
//!   payloads, read piece by piece. Header blocks (HEADERS or
//!   PUSH_PROMISE and their CONTINUATIONs, padding and priority removed)
//!   are reassembled up to [`Http2Config::max_header_block`]; of DATA only
//!   lengths and the gRPC message prefixes are looked at.
//! - HPACK: one [`HpackDecoder`](crate::hpack::HpackDecoder) per direction
//!   decodes every header block (pushed ones too, to keep its table).
//! - Streams: per stream id, a request (the client's first header block)
//!   and a response (the server's first final header block, its trailers,
//!   and how the stream ended), emitted as [`Http2MessageRef`] views.
//!
//! # Missing bytes
//! - Inside a DATA payload (the capture skips bodies): counted, no loss of
//!   anything but gRPC message counts that may lie there.
//! - Inside a header block: the block is decoded up to the gap; its fields
//!   so far are reported, the message says its headers were cut, and the
//!   direction's HPACK table becomes partly unknown (it heals, see
//!   [`crate::hpack`]). Frame sync is kept: the frame's length is known.
//! - Covering a frame head: frame sync is lost (counted). The reader then
//!   scans captured bytes for a chain of [`Http2Config::resync_frames`]
//!   frame heads that each pass strict checks (known type, defined flags,
//!   stream and length rules) and point exactly at the next; the HPACK
//!   table is treated as lost. Until a header block decodes cleanly the
//!   resync is tentative: a block that does not decode means the chain was
//!   false, and the direction goes back to scanning without emitting it.
//!
//! # When messages are emitted
//! - A request as soon as its header block is complete (the correlator
//!   pairs by stream id), with the stream still open
//!   ([`StreamEnd::Open`]) unless END_STREAM came with it.
//! - A response when the stream ends: END_STREAM from the server (after
//!   trailers or DATA), RST_STREAM from either side, GOAWAY, loss of sync
//!   on the server's side, or [`Http2Connection::flush`]; and once the
//!   client's side has ended too (so gRPC message counts of both
//!   directions are final), unless that side's end cannot be seen any
//!   more. Informational (1xx) header blocks are counted, not emitted.
//! - Responses to requests never seen (a connection joined late) are
//!   emitted when they have headers.

pub(crate) mod frames;
#[cfg(test)]
mod tests;

use crate::hpack::{BlockEnd, HeaderList, HpackConfig, HpackCounters, HpackDecoder, Unknown};
use crate::stream::{Chunk, OpMeta, Pos};
use frames::{Event, FrameReader, Verdict};
pub use frames::{FrameCounters, PREFACE};

/// True when `buf` starts with `n` chained plausible frame heads (each
/// pointing exactly at the next, all captured in `buf`).
pub(crate) fn chained_heads(buf: &[u8], n: usize) -> bool {
    let mut at = 0usize;
    for _ in 0..n {
        let Some(h) = buf.get(at..at + 9) else {
            return false;
        };
        let mut b = [0u8; 9];
        b.copy_from_slice(h);
        let h = frames::Head::parse(&b);
        if !frames::plausible(&h, (1 << 24) - 1, None) || h.kind == frames::CONTINUATION {
            return false;
        }
        at += 9 + h.len as usize;
    }
    true
}

/// How a stream ended (as far as a message can tell).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamEnd {
    /// Still open (a request emitted when its headers were complete).
    Open,
    /// END_STREAM.
    EndStream,
    /// RST_STREAM with this error code (`None`: code not captured).
    Reset(Option<u32>),
    /// A GOAWAY said the stream was not processed.
    GoAway,
    /// The connection closed first ([`Http2Connection::flush`]).
    Closed,
    /// Frame sync was lost on the server's side while the response was
    /// open.
    SyncLost,
    /// Dropped to stay within [`Http2Config::max_streams`].
    Evicted,
}

/// Length-prefixed gRPC messages seen on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GrpcCounts {
    /// Messages the client sent (prefixes seen).
    pub sent_by_client: u32,
    /// False when part of the client's DATA was missing where a prefix
    /// could lie: the count is then a lower bound.
    pub client_exact: bool,
    /// Messages the server sent.
    pub sent_by_server: u32,
    /// As `client_exact`, for the server.
    pub server_exact: bool,
}

/// Where a message lies and which calls moved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Info {
    /// Stream id.
    pub stream_id: u32,
    /// TCP sequence number of the first byte of the frame that opened the
    /// message (the HEADERS frame head; for a response without headers,
    /// the RST_STREAM frame). Identical at both ends of the connection.
    pub seq: u32,
    /// Stream offset of that byte.
    pub offset: u64,
    /// Stream offset just past the message's last byte (a request: its
    /// header block; a response: the frame that ended the stream).
    pub end_offset: u64,
    /// The call that moved the first byte.
    pub first_op: Option<OpMeta>,
    /// The call that moved the last byte.
    pub last_op: Option<OpMeta>,
    /// Segment timestamp of the chunk holding the first byte.
    pub first_seg_ts_ns: Option<u64>,
    /// Segment timestamp of the chunk holding the last byte.
    pub last_seg_ts_ns: Option<u64>,
    /// How the stream ended, seen from this message.
    pub end: StreamEnd,
    /// The header block(s) were not decoded to their end: why. Fields
    /// before the cut are reported; later ones are missing.
    pub headers_cut: Option<Unknown>,
    /// DATA payload bytes of this direction so far.
    pub data_len: u64,
    /// Of which not captured.
    pub data_missing: u64,
    /// gRPC message counts (responses of streams whose request or
    /// response says `content-type: application/grpc*`).
    pub grpc: Option<GrpcCounts>,
    /// Informational (1xx) responses that preceded this one.
    pub informational: u16,
}

/// An HTTP/2 request or response, borrowed from the parser for the
/// duration of the callback that receives it.
#[derive(Debug, Clone, Copy)]
pub struct Http2MessageRef<'a> {
    headers: &'a HeaderList,
    trailers_from: usize,
    request: bool,
    /// Position, calls, end.
    pub info: Http2Info,
}

impl<'a> Http2MessageRef<'a> {
    /// True for a request (the client's header block).
    pub fn is_request(&self) -> bool {
        self.request
    }

    /// Every field in order, pseudo-headers first, trailers last.
    pub fn fields(&self) -> &'a HeaderList {
        self.headers
    }

    /// Index of the first trailer field in [`fields`](Self::fields)
    /// (the length when there are none).
    pub fn trailers_from(&self) -> usize {
        self.trailers_from
    }

    /// A pseudo-header or header: its value, why it is unknown, or `None`
    /// when absent (see [`HeaderList::lookup`]).
    pub fn lookup(&self, name: &str) -> Option<Result<&'a [u8], Unknown>> {
        match self.headers.lookup(name.as_bytes()) {
            None => self.info.headers_cut.map(Err),
            found => found,
        }
    }

    /// `:method`, or why unknown.
    pub fn method(&self) -> Option<Result<&'a str, Unknown>> {
        self.text(":method")
    }

    /// `:path`, or why unknown.
    pub fn path(&self) -> Option<Result<&'a str, Unknown>> {
        self.text(":path")
    }

    /// `:authority`, or why unknown.
    pub fn authority(&self) -> Option<Result<&'a str, Unknown>> {
        self.text(":authority")
    }

    /// `:scheme`, or why unknown.
    pub fn scheme(&self) -> Option<Result<&'a str, Unknown>> {
        self.text(":scheme")
    }

    /// `:status`, or why unknown.
    pub fn status(&self) -> Option<Result<u16, Unknown>> {
        self.text(":status")
            .map(|r| r.and_then(|s| s.parse::<u16>().map_err(|_| Unknown::Invalid)))
    }

    fn text(&self, name: &str) -> Option<Result<&'a str, Unknown>> {
        self.lookup(name)
            .map(|r| r.and_then(|v| std::str::from_utf8(v).map_err(|_| Unknown::Invalid)))
    }

    /// The first known value of a regular header (lower-case name).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers.get(name.as_bytes())
    }

    /// An owned copy (tests, keeping a message).
    pub fn to_owned(&self) -> Http2Message {
        Http2Message {
            request: self.request,
            fields: self
                .headers
                .iter()
                .map(|f| {
                    (
                        f.name.map(<[u8]>::to_vec),
                        f.value.map(<[u8]>::to_vec),
                        f.why,
                    )
                })
                .collect(),
            trailers_from: self.trailers_from,
            info: self.info,
        }
    }
}

/// An owned HTTP/2 message (see [`Http2MessageRef::to_owned`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2Message {
    /// A request (else a response).
    pub request: bool,
    /// `(name, value, why unknown)` in order.
    #[allow(clippy::type_complexity)]
    pub fields: Vec<(Option<Vec<u8>>, Option<Vec<u8>>, Option<Unknown>)>,
    /// Index of the first trailer field.
    pub trailers_from: usize,
    /// Position, calls, end.
    pub info: Http2Info,
}

/// Tunables.
#[derive(Debug, Clone, Copy)]
pub struct Http2Config {
    /// Largest header block reassembled (the rest is cut, counted).
    pub max_header_block: usize,
    /// Streams tracked at once (the oldest is dropped past it, counted).
    pub max_streams: usize,
    /// HPACK bounds per direction.
    pub hpack: HpackConfig,
    /// Frame heads in a row that must chain before frame sync is taken as
    /// found again (at least 2).
    pub resync_frames: u8,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_header_block: 64 * 1024,
            max_streams: 512,
            hpack: HpackConfig::default(),
            resync_frames: 3,
        }
    }
}

/// What a connection saw (frame and HPACK counters are per direction:
/// [`Http2Connection::frame_counters`], [`Http2Connection::hpack_counters`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Http2Counters {
    /// Requests emitted.
    pub requests: u64,
    /// Responses emitted.
    pub responses: u64,
    /// Of which to requests never seen.
    pub responses_without_request: u64,
    /// Requests whose stream ended without any response data.
    pub responses_headerless: u64,
    /// Informational (1xx) header blocks.
    pub informational: u64,
    /// Trailer blocks.
    pub trailers: u64,
    /// PUSH_PROMISE blocks (decoded for the table, not emitted).
    pub pushes: u64,
    /// Streams dropped at [`Http2Config::max_streams`].
    pub streams_evicted: u64,
    /// Header blocks whose direction's role was not known and that did
    /// not tell it (no known `:method` or `:status`): not emitted.
    pub blocks_unclassified: u64,
    /// Header blocks dropped because they did not decode right after a
    /// resync (the resync was undone).
    pub blocks_discarded: u64,
    /// DATA, END_STREAM, RST_STREAM or response headers for streams not
    /// tracked (or already answered).
    pub frames_unknown_stream: u64,
    /// Requests whose response was fed (and emitted) first.
    pub late_requests: u64,
}

sum_counters!(Http2Counters {
    requests,
    responses,
    responses_without_request,
    responses_headerless,
    informational,
    trailers,
    pushes,
    streams_evicted,
    blocks_unclassified,
    blocks_discarded,
    frames_unknown_stream,
    late_requests,
});

/// The gRPC length prefixes of one direction of a stream.
#[derive(Debug, Clone, Copy, Default)]
struct GrpcCounter {
    got: u8,
    len: u32,
    body_left: u64,
    count: u32,
    lost: bool,
}

impl GrpcCounter {
    fn data(&mut self, mut d: &[u8]) {
        while !d.is_empty() {
            if self.body_left > 0 {
                let k = self.body_left.min(d.len() as u64);
                self.body_left -= k;
                d = &d[k as usize..];
                continue;
            }
            let b = d[0];
            d = &d[1..];
            if self.got > 0 {
                self.len = self.len << 8 | u32::from(b);
            }
            self.got += 1;
            if self.got == 5 {
                self.count += 1;
                self.body_left = u64::from(self.len);
                self.got = 0;
                self.len = 0;
            }
        }
    }

    fn missing(&mut self, n: u64) {
        if self.got == 0 && self.body_left >= n {
            self.body_left -= n;
        } else {
            self.lost = true;
        }
    }
}

/// One direction of a stream.
#[derive(Debug, Default)]
struct Half {
    headers: HeaderList,
    trailers_from: usize,
    /// A header block was seen (for a response: a final one).
    seen: bool,
    first: Option<Pos>,
    last: Pos,
    ended: Option<StreamEnd>,
    /// Its END_STREAM may have gone unseen (sync lost on its side).
    end_unseen: bool,
    cut: Option<Unknown>,
    data_len: u64,
    data_missing: u64,
    grpc: GrpcCounter,
    informational: u16,
}

impl Half {
    fn clear(&mut self) {
        let mut headers = std::mem::take(&mut self.headers);
        headers.clear();
        *self = Half {
            headers,
            ..Half::default()
        };
    }

    fn is_grpc(&self) -> bool {
        self.headers
            .get(b"content-type")
            .is_some_and(|v| v.starts_with(b"application/grpc"))
    }
}

#[derive(Debug, Default)]
struct Stream {
    id: u32,
    /// Indexed by side: the client's half is the request.
    halves: [Half; 2],
    request_emitted: bool,
}

/// Both directions of one HTTP/2 connection. See the [module
/// documentation](self).
#[derive(Debug)]
pub struct Http2Connection {
    cfg: Http2Config,
    readers: [FrameReader; 2],
    hpack: [HpackDecoder; 2],
    /// Which side (0 or 1) is the client, once known.
    client: Option<usize>,
    slots: Vec<Stream>,
    /// Indexes of live slots, oldest first.
    live: Vec<usize>,
    free: Vec<usize>,
    counters: Http2Counters,
    scratch: HeaderList,
    recent: std::collections::VecDeque<u32>,
}

/// Where a connection's bytes start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// At the start: the client's preface, the server's first frame.
    Beginning,
    /// After an HTTP/1 upgrade: as `Beginning`, with stream 1 already open
    /// (its request was the HTTP/1 one).
    Upgrade,
    /// Somewhere in the middle (the connection predates the capture).
    Middle,
    /// Where a call began, in a connection joined late (see
    /// `conn::Origin::Call`): each side is read from its first byte as a
    /// frame boundary, tentatively (an implausible head or a header block
    /// that does not decode loses sync, and frames are scanned for);
    /// HPACK tables unknown.
    Call,
}

impl Start {
    /// The client's side starts with the preface.
    fn preface(self) -> bool {
        matches!(self, Start::Beginning | Start::Upgrade)
    }
}

impl Http2Connection {
    /// A connection seen from its start: requests travel on the side fed
    /// with [`feed_requests`](Self::feed_requests).
    pub fn new(cfg: Http2Config) -> Self {
        Self::with(cfg, Some(0), Start::Beginning)
    }

    /// A connection joined mid-way (the agent started after it opened):
    /// both directions start out of sync with unknown HPACK tables.
    pub fn mid_stream(cfg: Http2Config) -> Self {
        Self::with(cfg, Some(0), Start::Middle)
    }

    pub(crate) fn with(cfg: Http2Config, client: Option<usize>, start: Start) -> Self {
        let cfg = Http2Config {
            max_header_block: cfg.max_header_block.max(64),
            max_streams: cfg.max_streams.max(1),
            ..cfg
        };
        // Set for `start` by `reset_to`, the one place that knows how.
        let mk = || FrameReader::new(None, false, true, cfg.max_header_block, cfg.resync_frames);
        let mut c = Http2Connection {
            cfg,
            readers: [mk(), mk()],
            hpack: [HpackDecoder::new(cfg.hpack), HpackDecoder::new(cfg.hpack)],
            client,
            slots: Vec::new(),
            live: Vec::new(),
            free: Vec::new(),
            counters: Http2Counters::default(),
            scratch: HeaderList::default(),
            recent: std::collections::VecDeque::new(),
        };
        c.reset_to(client, start);
        c
    }

    fn begin(&mut self, start: Start) {
        match start {
            Start::Beginning => {}
            Start::Upgrade => {
                // The server's table bound came in HTTP2-Settings (not
                // decoded here): unknown.
                for h in &mut self.hpack {
                    h.peer_table_size_unknown();
                }
                if let Some(client) = self.client {
                    let i = self.open(1);
                    let s = &mut self.slots[i];
                    s.request_emitted = true;
                    s.halves[client].seen = true;
                    s.halves[client].ended = Some(StreamEnd::EndStream);
                }
            }
            Start::Middle | Start::Call => {
                for h in &mut self.hpack {
                    h.peer_table_size_unknown();
                    h.lose(Unknown::Attach, true);
                }
            }
        }
    }

    /// Back to a new connection's state (counters included), keeping
    /// allocations.
    pub fn reset(&mut self) {
        self.reset_to(Some(0), Start::Beginning);
    }

    pub(crate) fn reset_to(&mut self, client: Option<usize>, start: Start) {
        self.client = client;
        for (side, r) in self.readers.iter_mut().enumerate() {
            r.reset(
                client.map(|c| c == side),
                client == Some(side) && start.preface(),
                start != Start::Middle,
            );
            if start == Start::Call {
                r.tentative_boundary();
            }
        }
        for h in &mut self.hpack {
            h.reset();
        }
        for i in self.live.drain(..) {
            self.slots[i].halves[0].clear();
            self.slots[i].halves[1].clear();
            self.free.push(i);
        }
        self.counters = Http2Counters::default();
        self.recent.clear();
        self.begin(start);
    }

    /// The counters so far.
    pub fn counters(&self) -> &Http2Counters {
        &self.counters
    }

    /// Frame counters of the requests' side (`false`) or responses' side
    /// (`true`); for a connection whose roles are not known yet, the
    /// sides in the order they were created.
    pub fn frame_counters(&self, responses: bool) -> &FrameCounters {
        &self.readers[self.side_index(responses)].counters
    }

    /// HPACK counters of a side (as [`frame_counters`](Self::frame_counters)).
    pub fn hpack_counters(&self, responses: bool) -> &HpackCounters {
        self.hpack[self.side_index(responses)].counters()
    }

    fn side_index(&self, responses: bool) -> usize {
        let c = self.client.unwrap_or(0);
        if responses {
            1 - c
        } else {
            c
        }
    }

    /// Which side (0 or 1, in the order of [`feed_side`](Self::feed_side))
    /// is the client, once known.
    pub(crate) fn client_side(&self) -> Option<usize> {
        self.client
    }

    /// True once either direction found frame boundaries by scanning.
    pub(crate) fn resynced(&self) -> bool {
        self.readers.iter().any(|r| r.counters.resyncs > 0)
    }

    /// Streams tracked now.
    pub fn open_streams(&self) -> usize {
        self.live.len()
    }

    /// Feeds a chunk of the client's direction.
    pub fn feed_requests(&mut self, chunk: &Chunk<'_>, out: &mut impl FnMut(Http2MessageRef<'_>)) {
        let side = self.client.unwrap_or(0);
        self.feed_side(side, chunk, out);
    }

    /// Feeds a chunk of the server's direction.
    pub fn feed_responses(&mut self, chunk: &Chunk<'_>, out: &mut impl FnMut(Http2MessageRef<'_>)) {
        let side = 1 - self.client.unwrap_or(0);
        self.feed_side(side, chunk, out);
    }

    /// Ignores bytes of `side` before `offset` (HTTP/2 after an upgrade).
    pub(crate) fn start_side_at(&mut self, side: usize, offset: u64) {
        self.readers[side & 1].start_at(offset);
    }

    /// Feeds a chunk of side 0 or 1 (roles possibly unknown).
    pub(crate) fn feed_side(
        &mut self,
        side: usize,
        chunk: &Chunk<'_>,
        out: &mut impl FnMut(Http2MessageRef<'_>),
    ) {
        let side = side & 1;
        let Http2Connection {
            readers,
            hpack,
            client,
            slots,
            live,
            free,
            counters,
            scratch,
            cfg,
            recent,
        } = self;
        let [r0, r1] = readers;
        let (reader, other) = if side == 0 { (r0, r1) } else { (r1, r0) };
        let mut st = Streams {
            slots,
            live,
            free,
            recent,
            max: cfg.max_streams,
        };
        let mut ctx = Ctx {
            side,
            hpack,
            client,
            counters,
            scratch,
            other_max_frame: None,
        };
        reader.feed(chunk, &mut |ev| ctx.event(ev, &mut st, out));
        if let Some(m) = ctx.other_max_frame {
            other.max_frame = other.max_frame.max(m);
        }
        if let Some(c) = *client {
            for (s, r) in readers_mut(&mut self.readers) {
                r.set_client(s == c);
            }
        }
    }

    /// The connection closed: every open stream ends ([`StreamEnd::Closed`])
    /// and its response is emitted; the parser is then ready for a new
    /// connection (counters kept).
    pub fn flush(&mut self, out: &mut impl FnMut(Http2MessageRef<'_>)) {
        let client = self.client.unwrap_or(0);
        let live = std::mem::take(&mut self.live);
        for &i in &live {
            let s = &mut self.slots[i];
            for h in &mut s.halves {
                h.ended.get_or_insert(StreamEnd::Closed);
            }
            emit_response(&mut self.slots[i], client, &mut self.counters, out);
            self.slots[i].halves[0].clear();
            self.slots[i].halves[1].clear();
            self.free.push(i);
        }
        self.live = live;
        self.live.clear();
    }

    fn open(&mut self, id: u32) -> usize {
        let mut st = Streams {
            slots: &mut self.slots,
            live: &mut self.live,
            free: &mut self.free,
            recent: &mut self.recent,
            max: self.cfg.max_streams,
        };
        let client = self.client.unwrap_or(0);
        st.open(id, client, &mut self.counters, &mut |_| {})
    }
}

fn readers_mut(r: &mut [FrameReader; 2]) -> impl Iterator<Item = (usize, &mut FrameReader)> {
    r.iter_mut().enumerate()
}

/// The stream table, borrowed apart from the readers.
struct Streams<'a> {
    slots: &'a mut Vec<Stream>,
    live: &'a mut Vec<usize>,
    free: &'a mut Vec<usize>,
    /// Ids of the streams released last (late frames for them are not
    /// new streams).
    recent: &'a mut std::collections::VecDeque<u32>,
    max: usize,
}

/// Released stream ids remembered.
const RECENT: usize = 64;

impl Streams<'_> {
    fn find(&self, id: u32) -> Option<usize> {
        self.live
            .iter()
            .rev()
            .copied()
            .find(|&i| self.slots[i].id == id)
    }

    /// A slot for stream `id`, not tracked yet (evicting the oldest
    /// stream past the bound).
    fn open(
        &mut self,
        id: u32,
        client: usize,
        counters: &mut Http2Counters,
        out: &mut impl FnMut(Http2MessageRef<'_>),
    ) -> usize {
        if self.live.len() >= self.max {
            let old = self.live.remove(0);
            counters.streams_evicted += 1;
            let s = &mut self.slots[old];
            for h in &mut s.halves {
                h.ended.get_or_insert(StreamEnd::Evicted);
            }
            emit_response(s, client, counters, out);
            self.recycle(old);
        }
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Stream::default());
                self.slots.len() - 1
            }
        };
        self.slots[i].id = id;
        self.slots[i].request_emitted = false;
        self.live.push(i);
        i
    }

    /// Stops tracking slot `i`.
    fn release(&mut self, i: usize) {
        self.live.retain(|&j| j != i);
        self.recycle(i);
    }

    /// Frees slot `i`, already out of `live`.
    fn recycle(&mut self, i: usize) {
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(self.slots[i].id);
        let s = &mut self.slots[i];
        s.halves[0].clear();
        s.halves[1].clear();
        self.free.push(i);
    }
}

/// The info of a message of stream `id` from `first` to `last`, with
/// nothing cut and no DATA.
fn info_at(id: u32, first: Pos, last: Pos, end: StreamEnd) -> Http2Info {
    Http2Info {
        stream_id: id,
        seq: first.seq,
        offset: first.offset,
        end_offset: last.offset + 1,
        first_op: first.op,
        last_op: last.op,
        first_seg_ts_ns: first.seg_ts,
        last_seg_ts_ns: last.seg_ts,
        end,
        headers_cut: None,
        data_len: 0,
        data_missing: 0,
        grpc: None,
        informational: 0,
    }
}

/// Builds the info of one half.
fn info(s: &Stream, half: usize, end: StreamEnd, grpc: Option<GrpcCounts>) -> Http2Info {
    let h = &s.halves[half];
    Http2Info {
        headers_cut: h.cut,
        data_len: h.data_len,
        data_missing: h.data_missing,
        grpc,
        informational: h.informational,
        ..info_at(s.id, h.first.unwrap_or(h.last), h.last, end)
    }
}

/// Emits the response of a stream whose server half ended (if it has
/// anything to say).
fn emit_response(
    s: &mut Stream,
    client: usize,
    counters: &mut Http2Counters,
    out: &mut impl FnMut(Http2MessageRef<'_>),
) {
    let server = 1 - client;
    let (c, v) = (&s.halves[client], &s.halves[server]);
    if !s.request_emitted && !v.seen {
        return;
    }
    let grpc = (c.is_grpc() || v.is_grpc()).then_some(GrpcCounts {
        sent_by_client: c.grpc.count,
        client_exact: !c.grpc.lost,
        sent_by_server: v.grpc.count,
        server_exact: !v.grpc.lost,
    });
    let end = v.ended.or(c.ended).unwrap_or(StreamEnd::Closed);
    counters.responses += 1;
    if !s.request_emitted {
        counters.responses_without_request += 1;
    }
    if !v.seen {
        counters.responses_headerless += 1;
    }
    let trailers_from = if v.trailers_from > 0 {
        v.trailers_from
    } else {
        v.headers.len()
    };
    out(Http2MessageRef {
        headers: &v.headers,
        trailers_from,
        request: false,
        info: info(s, server, end, grpc),
    });
}

/// The per-event logic, with the connection's parts borrowed apart.
struct Ctx<'a> {
    side: usize,
    hpack: &'a mut [HpackDecoder; 2],
    client: &'a mut Option<usize>,
    counters: &'a mut Http2Counters,
    scratch: &'a mut HeaderList,
    other_max_frame: Option<u32>,
}

impl Ctx<'_> {
    fn event(
        &mut self,
        ev: Event<'_>,
        st: &mut Streams<'_>,
        out: &mut impl FnMut(Http2MessageRef<'_>),
    ) -> Verdict {
        let side = self.side;
        match ev {
            Event::Block {
                stream,
                end_stream,
                push,
                block,
                lost,
                first,
                last,
                tentative,
            } => {
                return self.block(
                    stream, end_stream, push, block, lost, first, last, tentative, st, out,
                );
            }
            Event::Data {
                stream,
                data,
                missing,
                last,
            } => match st.find(stream) {
                Some(i) => {
                    let h = &mut st.slots[i].halves[side];
                    h.data_len += data.len() as u64 + u64::from(missing);
                    h.data_missing += u64::from(missing);
                    if missing > 0 {
                        h.grpc.missing(u64::from(missing));
                    } else {
                        h.grpc.data(data);
                    }
                    h.last = last;
                }
                None => self.counters.frames_unknown_stream += 1,
            },
            Event::DataLost { stream } => {
                if let Some(i) = st.find(stream) {
                    st.slots[i].halves[side].grpc.lost = true;
                }
            }
            Event::EndStream { stream, last } => match st.find(stream) {
                Some(i) => {
                    let h = &mut st.slots[i].halves[side];
                    h.last = last;
                    h.ended.get_or_insert(StreamEnd::EndStream);
                    self.settle(i, st, out);
                }
                None => self.counters.frames_unknown_stream += 1,
            },
            Event::Reset {
                stream,
                code,
                first,
                last,
            } => match st.find(stream) {
                Some(i) => {
                    let client = self.client.unwrap_or(0);
                    let s = &mut st.slots[i];
                    for h in &mut s.halves {
                        h.ended.get_or_insert(StreamEnd::Reset(code));
                    }
                    let v = &mut s.halves[1 - client];
                    v.first.get_or_insert(first);
                    v.last = last;
                    self.settle(i, st, out);
                }
                None => self.counters.frames_unknown_stream += 1,
            },
            Event::GoAway {
                last_stream, last, ..
            } => {
                // From the server: client streams above `last_stream` were
                // not processed.
                if let (Some(ls), Some(c)) = (last_stream, *self.client) {
                    if side != c {
                        let ids: Vec<usize> = st
                            .live
                            .iter()
                            .copied()
                            .filter(|&i| st.slots[i].id > ls && st.slots[i].id % 2 == 1)
                            .collect();
                        for i in ids {
                            for h in &mut st.slots[i].halves {
                                h.ended.get_or_insert(StreamEnd::GoAway);
                            }
                            st.slots[i].halves[side].last = last;
                            self.settle(i, st, out);
                        }
                    }
                }
            }
            Event::Settings {
                table_size,
                max_frame,
                lost,
            } => {
                // This side's settings bound the other side's encoder.
                let other = &mut self.hpack[1 - side];
                if lost {
                    other.peer_table_size_unknown();
                } else if let Some(t) = table_size {
                    other.peer_table_size(t);
                }
                self.other_max_frame = max_frame.filter(|_| !lost);
            }
            Event::SyncLost { why } => {
                self.hpack[side].lose(why, true);
                // This side's SETTINGS may be among the lost frames.
                self.hpack[1 - side].peer_table_size_unknown();
                let server_side = self.client.map(|c| c != side);
                let ids: Vec<usize> = st.live.clone();
                for i in ids {
                    let h = &mut st.slots[i].halves[side];
                    if h.ended.is_some() {
                        continue;
                    }
                    h.end_unseen = true;
                    if server_side == Some(true) && h.seen {
                        h.ended = Some(StreamEnd::SyncLost);
                    }
                    self.settle(i, st, out);
                }
            }
        }
        Verdict::Fine
    }

    /// Emits the response (and frees the stream) once the server's half
    /// ended and the client's half ended or cannot be followed.
    fn settle(
        &mut self,
        i: usize,
        st: &mut Streams<'_>,
        out: &mut impl FnMut(Http2MessageRef<'_>),
    ) {
        let Some(client) = *self.client else {
            return;
        };
        let s = &mut st.slots[i];
        let (c, v) = (&s.halves[client], &s.halves[1 - client]);
        let client_done = c.ended.is_some() || c.end_unseen || !s.request_emitted;
        if v.ended.is_some() && client_done {
            emit_response(s, client, self.counters, out);
            st.release(i);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &mut self,
        stream: u32,
        end_stream: bool,
        push: bool,
        block: &[u8],
        lost: Option<Unknown>,
        first: Pos,
        last: Pos,
        tentative: bool,
        st: &mut Streams<'_>,
        out: &mut impl FnMut(Http2MessageRef<'_>),
    ) -> Verdict {
        let side = self.side;
        let end = lost.map_or(BlockEnd::Complete, BlockEnd::Lost);
        self.scratch.clear();
        let d = self.hpack[side].decode(block, end, self.scratch);
        if tentative && d.cut == Some(Unknown::Corrupt) {
            self.counters.blocks_discarded += 1;
            return Verdict::Desync;
        }
        if push {
            self.counters.pushes += 1;
            return Verdict::Fine;
        }
        let cut = d.cut;
        let client = match *self.client {
            Some(c) => c,
            None => {
                let req = matches!(self.scratch.lookup(b":method"), Some(Ok(_)));
                let resp = matches!(self.scratch.lookup(b":status"), Some(Ok(_)));
                match (req, resp) {
                    (true, false) => side,
                    (false, true) => 1 - side,
                    _ => {
                        self.counters.blocks_unclassified += 1;
                        return Verdict::Fine;
                    }
                }
            }
        };
        *self.client = Some(client);
        let request_end = if end_stream {
            StreamEnd::EndStream
        } else {
            StreamEnd::Open
        };
        let i = match st.find(stream) {
            Some(i) => i,
            None if st.recent.contains(&stream) => {
                // The stream was already answered and released (the two
                // directions are fed in any order): a late request is
                // still reported, for pairing by stream id; late response
                // frames (after a reset) are not a new stream.
                if side == client {
                    self.counters.requests += 1;
                    self.counters.late_requests += 1;
                    out(Http2MessageRef {
                        headers: self.scratch,
                        trailers_from: self.scratch.len(),
                        request: true,
                        info: Http2Info {
                            headers_cut: cut,
                            ..info_at(stream, first, last, request_end)
                        },
                    });
                } else {
                    self.counters.frames_unknown_stream += 1;
                }
                return Verdict::Fine;
            }
            None => st.open(stream, client, self.counters, out),
        };
        let s = &mut st.slots[i];
        let h = &mut s.halves[side];
        if side == client {
            if !h.seen {
                std::mem::swap(&mut h.headers, self.scratch);
                h.seen = true;
                h.first = Some(first);
                h.last = last;
                h.cut = cut;
                if end_stream {
                    h.ended = Some(StreamEnd::EndStream);
                }
                s.request_emitted = true;
                self.counters.requests += 1;
                let inf = info(s, side, request_end, None);
                let h = &s.halves[side];
                out(Http2MessageRef {
                    headers: &h.headers,
                    trailers_from: h.headers.len(),
                    request: true,
                    info: inf,
                });
            } else {
                self.counters.trailers += 1;
                append(&mut h.headers, self.scratch);
                h.last = last;
                h.cut = h.cut.or(cut);
                if end_stream {
                    h.ended.get_or_insert(StreamEnd::EndStream);
                }
            }
        } else {
            let informational = !h.seen
                && matches!(self.scratch.lookup(b":status"), Some(Ok(v)) if v.first() == Some(&b'1'));
            h.first.get_or_insert(first);
            h.last = last;
            if informational {
                self.counters.informational += 1;
                h.informational = h.informational.saturating_add(1);
            } else if !h.seen {
                std::mem::swap(&mut h.headers, self.scratch);
                h.seen = true;
                h.cut = cut;
            } else {
                self.counters.trailers += 1;
                h.trailers_from = h.headers.len();
                append(&mut h.headers, self.scratch);
                h.cut = h.cut.or(cut);
            }
            if end_stream {
                h.ended.get_or_insert(StreamEnd::EndStream);
            }
        }
        self.settle(i, st, out);
        Verdict::Fine
    }
}

/// Appends the fields of `from` to `to`.
fn append(to: &mut HeaderList, from: &HeaderList) {
    let base = to.bytes.len() as u32;
    to.bytes.extend_from_slice(&from.bytes);
    let shift = |s: Option<(u32, u32)>| s.map(|(a, b)| (a + base, b + base));
    for f in &from.fields {
        to.fields.push(crate::hpack::FieldRec {
            name: shift(f.name),
            value: shift(f.value),
            why: f.why,
        });
    }
}
