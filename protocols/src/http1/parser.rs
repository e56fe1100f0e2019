//! The per-direction state machine.

use std::collections::VecDeque;

use super::chunked::{Decoder, Found, LostScanner, Step};
use super::detect::{self, Likely};
use super::head::{self, HeadError, Line, ParsedHead};
use super::{
    BodyFraming, Http1Config, Http1Counters, MessageEnd, MessageInfo, MessageRef, RequestKind,
    Role, Skipped,
};
use crate::stream::{Chunk, MissingKind, Part, Piece, Pos};

/// Smallest accepted `max_head_bytes`.
const MIN_HEAD: usize = 64;

/// What a trimmed parser keeps room for (see [`Http1Parser::trim`]): a
/// small head's bytes and fields.
const KEEP_HEAD_BYTES: usize = 1024;
const KEEP_FIELDS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting or buffering a head.
    Head,
    /// In a `Content-Length` body: bytes left.
    Length(u64),
    /// In a chunked body.
    Chunked,
    /// In a chunked body whose framing was lost.
    ChunkedLost,
    /// In a close-delimited body.
    Close,
    /// Not HTTP/1 any more (upgrade, tunnel).
    Upgraded,
    /// Never was HTTP/1.
    NotHttp,
}

/// The message whose body is being read (its head is the parser's
/// `cur_head`).
#[derive(Debug)]
struct Current {
    info: MessageInfo,
    /// Position of the chunk holding the last byte so far.
    last: Pos,
    body_seen: u64,
    body_missing: u64,
    /// Response with a length but no known request: check whether the
    /// body is in fact the next response (the request was HEAD).
    check_head: bool,
    /// Request asking for an upgrade: after it, the next bytes decide.
    upgrade_after: bool,
}

/// Incremental HTTP/1.x parser for one direction of a connection. See the
/// [module documentation](super).
#[derive(Debug)]
pub struct Http1Parser {
    role: Role,
    cfg: Http1Config,
    counters: Http1Counters,
    state: State,
    cur: Option<Current>,
    /// The head being buffered: it never holds bytes past its blank line.
    head: Vec<u8>,
    /// The head of the message being emitted or read (exchanged with
    /// `head` when parsed, so neither is copied).
    cur_head: ParsedHead,
    /// `(index in head, position of that byte)` for each appended piece.
    marks: Vec<(usize, Pos)>,
    scratch: Vec<u8>,
    chunked: Decoder,
    lost: LostScanner,
    /// The message boundary was lost: the head must start like a message.
    resync: bool,
    /// The byte before the next one ended a line (or is unknown).
    line_start: bool,
    /// After an upgrade request: non-HTTP bytes mean the upgrade happened.
    upgrade_pending: bool,
    seen_input: bool,
    seen_message: bool,
    skipped_before_first: u64,
    /// Bytes skipped since the last message (told with the next one).
    skipped: Skipped,
    /// Time of the input being read (its call's, else its segment's).
    input_ns: Option<u64>,
    /// Response role: kinds of the requests still unanswered.
    expected: VecDeque<RequestKind>,
    /// Request role: kinds of the requests parsed, for the response side.
    kinds_out: VecDeque<RequestKind>,
    next_offset: Option<u64>,
}

fn looks_binary(d: &[u8]) -> bool {
    d.iter()
        .take(32)
        .any(|b| (*b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || *b == 0x7f)
}

impl Http1Parser {
    /// Back to the state of [`new`](Self::new) (counters included), keeping
    /// the buffers' allocations: agents reuse parsers across connections.
    pub fn reset(&mut self) {
        let mut head = std::mem::take(&mut self.head);
        let cur_head = std::mem::take(&mut self.cur_head);
        let mut marks = std::mem::take(&mut self.marks);
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut expected = std::mem::take(&mut self.expected);
        let mut kinds_out = std::mem::take(&mut self.kinds_out);
        head.clear();
        marks.clear();
        scratch.clear();
        expected.clear();
        kinds_out.clear();
        *self = Http1Parser {
            head,
            cur_head,
            marks,
            scratch,
            expected,
            kinds_out,
            ..Http1Parser::new(self.role, self.cfg)
        };
    }

    /// Frees buffer capacity beyond what a small message uses while no
    /// message is open and nothing is buffered (the state stays): a closed
    /// connection that lingers for late records then holds at most small
    /// head buffers, which the parser reused from the pool for the next
    /// connection needs (freeing them all made it allocate them again).
    pub fn trim(&mut self) {
        /// Empty, and freed when larger than `max`.
        fn keep<T>(v: &mut Vec<T>, max: usize) {
            v.clear();
            if v.capacity() > max {
                *v = Vec::new();
            }
        }
        if matches!(self.state, State::Head) && self.head.is_empty() && self.cur.is_none() {
            keep(&mut self.head, KEEP_HEAD_BYTES);
            keep(&mut self.scratch, KEEP_HEAD_BYTES);
            keep(&mut self.cur_head.bytes, KEEP_HEAD_BYTES);
            keep(&mut self.cur_head.fields, KEEP_FIELDS);
            self.cur_head.line = ParsedHead::default().line;
        }
        self.marks.shrink_to(crate::TRIM_KEEP_ENTRIES);
        self.expected.shrink_to(crate::TRIM_KEEP_ENTRIES);
        self.kinds_out.shrink_to(crate::TRIM_KEEP_ENTRIES);
    }

    /// Heap bytes of the head buffers (tests of [`trim`](Self::trim)).
    #[cfg(test)]
    pub(crate) fn head_heap_bytes(&self) -> usize {
        self.head.capacity()
            + self.scratch.capacity()
            + self.cur_head.bytes.capacity()
            + self.cur_head.fields.capacity() * std::mem::size_of::<super::head::Field>()
    }

    /// A parser for a direction carrying `role` messages.
    pub fn new(role: Role, config: Http1Config) -> Self {
        let cfg = Http1Config {
            max_head_bytes: config.max_head_bytes.max(MIN_HEAD),
            max_expected: config.max_expected.max(1),
            ..config
        };
        Http1Parser {
            role,
            cfg,
            counters: Http1Counters::default(),
            state: State::Head,
            cur: None,
            head: Vec::new(),
            cur_head: ParsedHead::default(),
            marks: Vec::new(),
            scratch: Vec::new(),
            chunked: Decoder::new(),
            lost: LostScanner::default(),
            resync: false,
            line_start: true,
            upgrade_pending: false,
            seen_input: false,
            seen_message: false,
            skipped_before_first: 0,
            skipped: Skipped::default(),
            input_ns: None,
            expected: VecDeque::new(),
            kinds_out: VecDeque::new(),
            next_offset: None,
        }
    }

    /// The role given at creation.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The counters so far.
    pub fn counters(&self) -> &Http1Counters {
        &self.counters
    }

    /// True once the direction was declared not HTTP/1 (nothing more is
    /// parsed).
    pub fn is_not_http(&self) -> bool {
        self.state == State::NotHttp
    }

    /// True once the connection left HTTP/1 (101 Switching Protocols, a
    /// tunnel after CONNECT): nothing more is parsed.
    pub fn is_upgraded(&self) -> bool {
        self.state == State::Upgraded
    }

    /// Response role: the next unanswered request on this connection is of
    /// this kind (call once per request, in order; [`Http1Connection`]
    /// does it).
    ///
    /// [`Http1Connection`]: super::Http1Connection
    pub fn expect_request(&mut self, kind: RequestKind) {
        if self.expected.len() >= self.cfg.max_expected {
            self.expected.pop_front();
            self.counters.expectations_dropped += 1;
        }
        self.expected.push_back(kind);
    }

    /// Request role: the kind of the next request parsed since the last
    /// call, in order (heads are reported as soon as they are parsed, before
    /// their bodies end).
    pub fn take_request_kind(&mut self) -> Option<RequestKind> {
        self.kinds_out.pop_front()
    }

    /// Request role: the response side saw the upgrade (101, 2xx to
    /// CONNECT) that the last request asked for: stop parsing.
    pub fn confirm_upgrade(&mut self) {
        let asked = self.upgrade_pending || self.cur.as_ref().is_some_and(|c| c.upgrade_after);
        if asked && self.state != State::Upgraded {
            self.cur = None;
            self.enter_upgraded();
        }
    }

    /// The body bytes that directly follow what was fed, when their number
    /// is known (a `Content-Length` body in progress): `(stream offset,
    /// length)`. Their source may skip copying them; they must still be
    /// fed, as missing bytes.
    pub fn body_ahead(&self) -> Option<(u64, u64)> {
        match (self.state, self.next_offset) {
            (State::Length(left), Some(offset)) if left > 0 => Some((offset, left)),
            _ => None,
        }
    }

    /// Feeds the next chunk of the direction. Chunks are expected in
    /// stream order: a chunk starting after the previous one's end counts
    /// the gap as a hole; bytes already fed are ignored.
    pub fn feed(&mut self, chunk: &Chunk<'_>, out: &mut impl FnMut(MessageRef<'_>)) {
        let end = chunk.walk(self.next_offset, |part, at| match part {
            Part::Data(d) => self.on_data(d, at, out),
            Part::Missing(n, _) => self.on_missing(n, at, out),
        });
        self.next_offset = Some(end);
    }

    /// Feeds captured bytes that directly follow what was fed before, with
    /// no call information (tests, fuzzing, other sources).
    pub fn feed_bytes(&mut self, data: &[u8], out: &mut impl FnMut(MessageRef<'_>)) {
        let offset = self.next_offset.unwrap_or(0);
        let pieces = [Piece::Data(data)];
        self.feed(&Chunk::untimed(offset as u32, offset, &pieces), out);
    }

    /// Feeds `len` bytes missing for the given reason, directly following
    /// what was fed before.
    pub fn feed_missing(
        &mut self,
        len: u32,
        why: MissingKind,
        out: &mut impl FnMut(MessageRef<'_>),
    ) {
        let offset = self.next_offset.unwrap_or(0);
        let pieces = [Piece::Missing { len, why }];
        self.feed(&Chunk::untimed(offset as u32, offset, &pieces), out);
    }

    /// The direction ended (connection closed or evicted): a
    /// close-delimited body ends here; a message cut short is emitted as
    /// [`MessageEnd::Closed`]. The parser is ready for a new stream
    /// afterwards (counters kept).
    pub fn flush(&mut self, out: &mut impl FnMut(MessageRef<'_>)) {
        let end = self.next_offset.unwrap_or(0);
        match self.state {
            State::Close => self.finish(MessageEnd::Complete, end, out),
            State::Length(_) | State::Chunked | State::ChunkedLost => {
                self.counters.closed_incomplete += 1;
                self.finish(MessageEnd::Closed, end, out);
            }
            State::Head => {
                if !self.head.is_empty() && !self.upgrade_pending {
                    self.counters.heads_truncated += 1;
                    self.emit_partial(out);
                }
            }
            State::Upgraded | State::NotHttp => {}
        }
        self.cur = None;
        self.clear_head();
        self.state = State::Head;
        self.resync = false;
        self.line_start = true;
        self.upgrade_pending = false;
        self.seen_input = false;
        self.seen_message = false;
        self.skipped_before_first = 0;
        self.skipped = Skipped::default();
        self.expected.clear();
        self.next_offset = None;
    }

    fn classifier(&self) -> fn(&[u8]) -> Likely {
        match self.role {
            Role::Request => detect::classify_request,
            Role::Response => detect::classify_response,
        }
    }

    fn on_data(&mut self, mut data: &[u8], mut pos: Pos, out: &mut impl FnMut(MessageRef<'_>)) {
        if data.is_empty() {
            return;
        }
        self.input_ns = pos.op.map(|o| o.ts_ns).or(pos.seg_ts);
        if !self.seen_input {
            self.seen_input = true;
            if self.state == State::Head && (detect::is_other_protocol(data) || looks_binary(data))
            {
                self.declare_not_http();
            }
        }
        let mut stalls = 0;
        while !data.is_empty() {
            let before = self.state;
            let used = match self.state {
                State::Head => self.head_data(data, pos, out),
                State::Length(left) => self.length_data(left, data, pos, out),
                State::Chunked => self.chunked_data(data, pos, out),
                State::ChunkedLost => self.lost_data(data, pos, out),
                State::Close => {
                    if let Some(c) = &mut self.cur {
                        c.body_seen += data.len() as u64;
                        c.last = pos;
                    }
                    data.len()
                }
                State::Upgraded | State::NotHttp => data.len(),
            }
            .min(data.len());
            if used == 0 {
                stalls = if self.state == before { stalls + 1 } else { 0 };
                if stalls > 2 {
                    // Defensive: a state that makes no progress skips the rest.
                    self.skip(data.len() as u64);
                    self.resync = true;
                    self.line_start = false;
                    return;
                }
                continue;
            }
            stalls = 0;
            self.line_start = data[used - 1] == b'\n';
            data = &data[used..];
            pos = pos.advance(used as u64);
        }
    }

    fn on_missing(&mut self, mut len: u64, mut pos: Pos, out: &mut impl FnMut(MessageRef<'_>)) {
        self.seen_input = true;
        self.input_ns = pos.op.map(|o| o.ts_ns).or(pos.seg_ts);
        while len > 0 {
            match self.state {
                State::Head => {
                    if self.upgrade_pending {
                        self.enter_upgraded();
                        break;
                    }
                    if !self.head.is_empty() {
                        self.counters.heads_truncated += 1;
                        self.emit_partial(out);
                        self.clear_head();
                    }
                    if !self.resync {
                        self.resync = true;
                        self.counters.resyncs += 1;
                    }
                    self.skip(len);
                    break;
                }
                State::Length(left) => {
                    let n = left.min(len);
                    if let Some(c) = &mut self.cur {
                        c.body_missing += n;
                        c.last = pos;
                        c.check_head = false;
                    }
                    len -= n;
                    pos = pos.advance(n);
                    if n == left {
                        self.finish(MessageEnd::Complete, pos.offset, out);
                    } else {
                        self.state = State::Length(left - n);
                    }
                }
                State::Chunked => {
                    let (n, ok) = self.chunked.missing(len);
                    if let Some(c) = &mut self.cur {
                        c.body_missing += n;
                        c.last = pos;
                    }
                    if !ok {
                        self.framing_lost();
                    }
                    break;
                }
                State::ChunkedLost | State::Close => {
                    self.lost.reset();
                    if let Some(c) = &mut self.cur {
                        c.body_missing += len;
                        c.last = pos;
                    }
                    break;
                }
                State::Upgraded | State::NotHttp => break,
            }
        }
        self.line_start = true;
    }

    /// Counts bytes skipped while looking for a message; too many before
    /// any message means the direction is not HTTP.
    fn skip(&mut self, n: u64) {
        self.counters.bytes_skipped += n;
        if n > 0 {
            if self.skipped.bytes == 0 {
                self.skipped.since_ns = self.input_ns;
            }
            self.skipped.bytes += n;
        }
        if !self.seen_message {
            self.skipped_before_first += n;
            if self.skipped_before_first > self.cfg.detect_budget {
                self.declare_not_http();
            }
        }
    }

    fn declare_not_http(&mut self) {
        if self.state != State::NotHttp {
            self.counters.not_http = 1;
        }
        self.state = State::NotHttp;
        self.cur = None;
        self.clear_head();
    }

    fn enter_upgraded(&mut self) {
        self.state = State::Upgraded;
        self.counters.upgrades += 1;
        self.upgrade_pending = false;
        self.clear_head();
    }

    fn clear_head(&mut self) {
        self.head.clear();
        self.marks.clear();
    }

    /// Drops the first `p` buffered head bytes.
    fn drain_head(&mut self, p: usize) {
        self.head.drain(..p.min(self.head.len()));
        let keep_from = self.marks.iter().rposition(|(i, _)| *i <= p).unwrap_or(0);
        self.marks.drain(..keep_from);
        for (i, pos) in &mut self.marks {
            if *i <= p {
                *pos = pos.advance((p - *i) as u64);
                *i = 0;
            } else {
                *i -= p;
            }
        }
    }

    fn strict(&self) -> bool {
        self.resync || !self.seen_message || self.upgrade_pending
    }

    /// Head state: buffers bytes up to the end of the head; returns the
    /// number consumed.
    fn head_data(&mut self, data: &[u8], pos: Pos, out: &mut impl FnMut(MessageRef<'_>)) -> usize {
        if self.head.is_empty() {
            let newlines = data
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            if newlines > 0 {
                return newlines;
            }
            if self.resync {
                match detect::find_start(data, self.line_start, self.classifier()) {
                    None => {
                        self.skip(data.len() as u64);
                        return data.len();
                    }
                    Some((p, _)) if p > 0 => {
                        self.skip(p as u64);
                        return p;
                    }
                    Some(_) => {}
                }
            }
        }
        let prev = self.head.len();
        let end = head::find_head_end(&self.head[prev.saturating_sub(2)..], data);
        let room = self.cfg.max_head_bytes.saturating_sub(prev).max(1);
        let take = end.unwrap_or(data.len()).min(room).min(data.len());
        self.marks.push((prev, pos));
        self.head.extend_from_slice(&data[..take]);
        let complete = end.is_some_and(|e| e <= take);
        let new_line = data[..take].contains(&b'\n');
        self.evaluate_head(complete, new_line, out);
        take
    }

    /// Checks the buffered head: parses it when complete, gives up on it
    /// when it cannot be a message start.
    /// `new_line`: a line end was just appended (worth asking httparse
    /// whether the lines so far are valid).
    fn evaluate_head(
        &mut self,
        complete: bool,
        mut new_line: bool,
        out: &mut impl FnMut(MessageRef<'_>),
    ) {
        while !self.head.is_empty() && self.state == State::Head {
            if self.strict() {
                match (self.classifier())(&self.head) {
                    Likely::No => {
                        if self.fail_head() {
                            continue;
                        }
                        return;
                    }
                    Likely::NeedMore => return,
                    Likely::Yes => {}
                }
            }
            if !complete && new_line {
                new_line = false;
                if let Err(e) = head::check_partial(self.role, &self.head) {
                    self.count_head_error(e);
                    if self.fail_head() {
                        // The buffer changed: check it again from the top.
                        new_line = true;
                        continue;
                    }
                    return;
                }
            }
            if !complete {
                if self.head.len() >= self.cfg.max_head_bytes {
                    self.counters.heads_too_large += 1;
                    self.emit_partial(out);
                    self.skip(self.head.len() as u64);
                    self.clear_head();
                    self.resync = true;
                    self.counters.resyncs += 1;
                }
                return;
            }
            let head_len = self.head.len();
            match head::parse_head(self.role, &mut self.head, &mut self.cur_head) {
                Ok(()) => {
                    self.start_message(head_len, out);
                    return;
                }
                Err(e) => {
                    self.count_head_error(e);
                    if !self.fail_head() {
                        return;
                    }
                }
            }
        }
    }

    fn count_head_error(&mut self, e: HeadError) {
        match e {
            HeadError::TooManyHeaders => self.counters.heads_too_large += 1,
            HeadError::Invalid => self.counters.parse_errors += 1,
        }
    }

    /// The buffered head is not a message: look for a message start later
    /// in it. Returns true when one was found (the buffer now starts there).
    fn fail_head(&mut self) -> bool {
        if self.upgrade_pending {
            self.enter_upgraded();
            return false;
        }
        if !self.resync {
            self.resync = true;
            self.counters.resyncs += 1;
        }
        let found = detect::find_start(
            self.head.get(1..).unwrap_or_default(),
            false,
            self.classifier(),
        );
        match found {
            Some((p, _)) => {
                self.skip(p as u64 + 1);
                self.drain_head(p + 1);
                true
            }
            None => {
                self.skip(self.head.len() as u64);
                self.clear_head();
                false
            }
        }
    }

    fn head_span(&self) -> (Pos, Pos) {
        let first = self.marks.first().map(|m| m.1).unwrap_or_default();
        let last = self.marks.last().map(|m| m.1).unwrap_or_default();
        (first, last)
    }

    fn push_kind(&mut self, kind: RequestKind) {
        if self.role == Role::Request {
            if self.kinds_out.len() >= self.cfg.max_expected {
                self.kinds_out.pop_front();
                self.counters.expectations_dropped += 1;
            }
            self.kinds_out.push_back(kind);
        }
    }

    /// Emits the complete lines of a head cut short (no body followed).
    fn emit_partial(&mut self, out: &mut impl FnMut(MessageRef<'_>)) {
        if !head::parse_partial_head(self.role, &self.head, &mut self.scratch, &mut self.cur_head) {
            return;
        }
        let (first, last) = self.head_span();
        let head_len = self.head.len();
        let info = MessageInfo {
            seq: first.seq,
            offset: first.offset,
            end_offset: first.offset + head_len as u64,
            head_len: head_len as u32,
            first_op: first.op,
            last_op: last.op,
            first_seg_ts_ns: first.seg_ts,
            last_seg_ts_ns: last.seg_ts,
            framing: BodyFraming::Unknown,
            body_len: None,
            body_missing: 0,
            end: MessageEnd::HeadTruncated,
            skipped_before: std::mem::take(&mut self.skipped),
        };
        match self.cur_head.line {
            Line::Request { method, .. } => {
                let kind = RequestKind::of_method(head::text(&self.cur_head.bytes, method));
                self.push_kind(kind);
            }
            Line::Response { status, .. } => {
                let interim = (100..200).contains(&status) && status != 101;
                if interim {
                    return;
                }
                self.expected.pop_front();
            }
        }
        self.seen_message = true;
        self.counters.messages += 1;
        out(MessageRef::new(&self.cur_head, info));
    }

    /// A complete head of `head_len` bytes was parsed into `cur_head`:
    /// emit it or start reading its body.
    fn start_message(&mut self, head_len: usize, out: &mut impl FnMut(MessageRef<'_>)) {
        let (first, last) = self.head_span();
        let body_start = first.offset + head_len as u64;
        self.clear_head();
        self.seen_message = true;
        self.skipped_before_first = 0;
        self.resync = false;
        self.upgrade_pending = false;
        let framing_ok = |f: Result<BodyFraming, ()>, c: &mut Http1Counters| {
            f.unwrap_or_else(|()| {
                c.parse_errors += 1;
                BodyFraming::Unknown
            })
        };
        let mut info = MessageInfo {
            seq: first.seq,
            offset: first.offset,
            end_offset: body_start,
            head_len: head_len as u32,
            first_op: first.op,
            last_op: last.op,
            first_seg_ts_ns: first.seg_ts,
            last_seg_ts_ns: last.seg_ts,
            framing: BodyFraming::None,
            body_len: None,
            body_missing: 0,
            end: MessageEnd::Complete,
            skipped_before: std::mem::take(&mut self.skipped),
        };
        let mut check_head = false;
        let mut upgrade_after = false;
        let headers = self.cur_head.headers();
        match self.cur_head.line {
            Line::Request { method, .. } => {
                let method = head::text(&self.cur_head.bytes, method);
                info.framing = framing_ok(head::request_framing(&headers), &mut self.counters);
                upgrade_after = head::requests_upgrade(method, &headers);
                let kind = RequestKind::of_method(method);
                self.push_kind(kind);
            }
            Line::Response { status, .. } => {
                if (100..200).contains(&status) && status != 101 {
                    self.counters.interim_responses += 1;
                    if self.cfg.emit_interim {
                        self.counters.messages += 1;
                        info.body_len = Some(0);
                        out(MessageRef::new(&self.cur_head, info));
                    }
                    return;
                }
                let kind = self.expected.pop_front();
                if kind.is_none() {
                    self.counters.responses_unpaired += 1;
                }
                info.framing = framing_ok(
                    head::response_framing(status, kind, &headers),
                    &mut self.counters,
                );
                check_head =
                    kind.is_none() && matches!(info.framing, BodyFraming::ContentLength(_));
            }
        }
        let framing = info.framing;
        self.cur = Some(Current {
            info,
            last,
            body_seen: 0,
            body_missing: 0,
            check_head,
            upgrade_after,
        });
        match framing {
            BodyFraming::None => self.finish(MessageEnd::Complete, body_start, out),
            BodyFraming::Unknown => {
                // Invalid framing headers: the end of the body is unknown.
                self.finish(MessageEnd::FramingLost, body_start, out);
                self.resync = true;
                self.counters.resyncs += 1;
            }
            BodyFraming::ContentLength(n) => self.state = State::Length(n),
            BodyFraming::Chunked => {
                self.chunked.reset();
                self.state = State::Chunked;
            }
            BodyFraming::CloseDelimited => self.state = State::Close,
            BodyFraming::Tunnel => {
                self.finish(MessageEnd::Complete, body_start, out);
                self.enter_upgraded();
            }
        }
    }

    /// Emits the current message, ending at `end_offset`.
    fn finish(&mut self, end: MessageEnd, end_offset: u64, out: &mut impl FnMut(MessageRef<'_>)) {
        self.state = State::Head;
        let Some(mut cur) = self.cur.take() else {
            return;
        };
        let decoded = self.chunked.body;
        let (last, seen, missing) = (cur.last, cur.body_seen, cur.body_missing);
        let info = &mut cur.info;
        info.end_offset = end_offset;
        info.last_op = last.op;
        info.last_seg_ts_ns = last.seg_ts;
        info.body_missing = missing;
        info.end = end;
        info.body_len = match (end, info.framing) {
            (MessageEnd::Complete, BodyFraming::None | BodyFraming::Tunnel) => Some(0),
            (MessageEnd::Complete, BodyFraming::ContentLength(n)) => Some(n),
            (MessageEnd::Complete, BodyFraming::Chunked) => Some(decoded),
            (MessageEnd::Complete, BodyFraming::CloseDelimited) => Some(seen + missing),
            _ => None,
        };
        self.counters.messages += 1;
        self.counters.body_bytes_missing += missing;
        if cur.upgrade_after {
            self.upgrade_pending = true;
        }
        out(MessageRef::new(&self.cur_head, cur.info));
    }

    fn length_data(
        &mut self,
        left: u64,
        data: &[u8],
        pos: Pos,
        out: &mut impl FnMut(MessageRef<'_>),
    ) -> usize {
        if let Some(c) = self.cur.as_mut().filter(|c| c.check_head) {
            c.check_head = false;
            let looks = match detect::classify_response(data) {
                Likely::Yes => true,
                Likely::NeedMore => data.len() >= 5,
                Likely::No => false,
            };
            if looks {
                // The body is the next response: the request was HEAD.
                c.info.framing = BodyFraming::None;
                self.counters.head_guesses += 1;
                self.finish(MessageEnd::Complete, pos.offset, out);
                return 0;
            }
        }
        let n = left.min(data.len() as u64);
        if let Some(c) = &mut self.cur {
            c.body_seen += n;
            c.last = pos;
        }
        if n == left {
            self.finish(MessageEnd::Complete, pos.offset + n, out);
        } else {
            self.state = State::Length(left - n);
        }
        n as usize
    }

    fn framing_lost(&mut self) {
        self.counters.framing_lost += 1;
        self.lost.reset();
        self.state = State::ChunkedLost;
    }

    fn chunked_data(
        &mut self,
        data: &[u8],
        pos: Pos,
        out: &mut impl FnMut(MessageRef<'_>),
    ) -> usize {
        if let Some(c) = &mut self.cur {
            c.last = pos;
        }
        match self.chunked.data(data, self.cfg.max_head_bytes) {
            Step::More => data.len(),
            Step::Done(n) => {
                self.finish(MessageEnd::Complete, pos.offset + n as u64, out);
                n
            }
            Step::Error(n) => {
                self.framing_lost();
                n
            }
        }
    }

    fn lost_data(&mut self, data: &[u8], pos: Pos, out: &mut impl FnMut(MessageRef<'_>)) -> usize {
        match self.lost.scan(data, self.line_start, self.classifier()) {
            Found::Nothing => {
                if let Some(c) = &mut self.cur {
                    c.last = pos;
                }
                data.len()
            }
            Found::Terminator(n) => {
                if let Some(c) = &mut self.cur {
                    c.last = pos;
                }
                self.finish(MessageEnd::FramingLost, pos.offset + n as u64, out);
                n
            }
            Found::NextMessage(i) => {
                if i > 0 {
                    if let Some(c) = &mut self.cur {
                        c.last = pos;
                    }
                }
                self.finish(MessageEnd::FramingLost, pos.offset + i as u64, out);
                i
            }
        }
    }
}
