//! The per-direction frame reader: preface, frame heads, payloads, header
//! block reassembly, and frame resynchronisation after a loss.

use crate::hpack::Unknown;
use crate::stream::{Chunk, MissingKind, Part, Pos};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(crate) const DATA: u8 = 0;
pub(crate) const HEADERS: u8 = 1;
pub(crate) const PRIORITY: u8 = 2;
pub(crate) const RST_STREAM: u8 = 3;
pub(crate) const SETTINGS: u8 = 4;
pub(crate) const PUSH_PROMISE: u8 = 5;
pub(crate) const PING: u8 = 6;
pub(crate) const GOAWAY: u8 = 7;
pub(crate) const WINDOW_UPDATE: u8 = 8;
pub(crate) const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// A frame head (RFC 9113 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub reserved: bool,
}

impl Head {
    pub(crate) fn parse(b: &[u8; 9]) -> Head {
        Head {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5] & 0x7f, b[6], b[7], b[8]]),
            reserved: b[5] & 0x80 != 0,
        }
    }

    fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// Bytes before the body: pad length, priority, promised stream id,
    /// error codes.
    fn prefix_len(&self) -> u32 {
        let pad = u32::from(self.has(PADDED));
        match self.kind {
            DATA => pad,
            HEADERS => pad + if self.has(PRIORITY_FLAG) { 5 } else { 0 },
            PUSH_PROMISE => pad + 4,
            RST_STREAM => 4,
            GOAWAY => 8,
            _ => 0,
        }
    }
}

/// Strict checks for a head found by scanning (RFC 9113 §6): a known
/// type, only defined flags, the stream id and length rules of its type.
pub(crate) fn plausible(h: &Head, max_len: u32, client: Option<bool>) -> bool {
    if h.reserved || h.len > max_len {
        return false;
    }
    let on_stream = h.stream != 0;
    let (flags, stream_ok, len_ok) = match h.kind {
        DATA => (END_STREAM | PADDED, on_stream, true),
        HEADERS => (
            END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG,
            on_stream,
            h.len >= h.prefix_len(),
        ),
        PRIORITY => (0, on_stream, h.len == 5),
        RST_STREAM => (0, on_stream, h.len == 4),
        SETTINGS => (
            ACK,
            !on_stream,
            if h.has(ACK) {
                h.len == 0
            } else {
                h.len.is_multiple_of(6)
            },
        ),
        PUSH_PROMISE => (
            END_HEADERS | PADDED,
            on_stream && client != Some(true),
            h.len >= h.prefix_len(),
        ),
        PING => (ACK, !on_stream, h.len == 8),
        GOAWAY => (0, !on_stream, h.len >= 8),
        WINDOW_UPDATE => (0, true, h.len == 4),
        CONTINUATION => (END_HEADERS, on_stream, true),
        _ => return false,
    };
    // Clients open odd streams only.
    let parity_ok = !(client == Some(true)
        && matches!(h.kind, DATA | HEADERS | CONTINUATION)
        && h.stream.is_multiple_of(2));
    h.flags & !flags == 0 && stream_ok && len_ok && parity_ok
}

/// What the reader tells the connection.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// A header block (HEADERS or PUSH_PROMISE and its CONTINUATIONs) is
    /// complete, or was cut (`lost`: the bytes are its beginning only).
    Block {
        stream: u32,
        end_stream: bool,
        push: bool,
        block: &'a [u8],
        lost: Option<Unknown>,
        first: Pos,
        last: Pos,
        /// Read after a resync, before any header block decoded: a block
        /// that does not decode means the resync was false.
        tentative: bool,
    },
    /// Payload bytes of a DATA frame: captured, or `missing` uncaptured
    /// bytes (`Unknown::Truncated`: skipped by the capture).
    Data {
        stream: u32,
        data: &'a [u8],
        missing: u32,
        last: Pos,
    },
    /// The boundaries of a DATA frame's content were lost (its padding
    /// length was not captured).
    DataLost { stream: u32 },
    /// A DATA frame with END_STREAM ended.
    EndStream { stream: u32, last: Pos },
    /// RST_STREAM (error code unknown when not captured).
    Reset {
        stream: u32,
        code: Option<u32>,
        first: Pos,
        last: Pos,
    },
    /// GOAWAY: streams above `last_stream` were not processed.
    GoAway { last_stream: Option<u32>, last: Pos },
    /// A SETTINGS frame (not an ACK): values of interest, or `lost`.
    Settings {
        table_size: Option<u32>,
        max_frame: Option<u32>,
        lost: bool,
    },
    /// Frame sync was lost: frames (and header blocks) may go unseen
    /// until the reader resynchronises.
    SyncLost { why: Unknown },
}

/// The connection's answer to an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Fine,
    /// The block did not decode: after a resync, the frame boundaries
    /// found were wrong.
    Desync,
}

/// What one reader saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameCounters {
    /// Frames read (heads parsed in sync).
    pub frames: u64,
    /// DATA payload bytes not captured (skipped by the capture or in
    /// holes), counted without loss of sync.
    pub data_bytes_missing: u64,
    /// Header blocks cut by missing bytes.
    pub blocks_cut: u64,
    /// Header blocks larger than the bound.
    pub blocks_too_large: u64,
    /// Times frame sync was lost.
    pub sync_lost: u64,
    /// Times frame sync was found again by chaining frame heads.
    pub resyncs: u64,
    /// Resyncs undone because what followed did not decode.
    pub resyncs_failed: u64,
    /// Bytes skipped while out of sync (captured or not).
    pub bytes_out_of_sync: u64,
    /// Frames that broke the protocol's rules (sync is then dropped).
    pub protocol_errors: u64,
    /// A preface that was not the HTTP/2 preface.
    pub bad_preface: u64,
}

sum_counters!(FrameCounters {
    frames,
    data_bytes_missing,
    blocks_cut,
    blocks_too_large,
    sync_lost,
    resyncs,
    resyncs_failed,
    bytes_out_of_sync,
    protocol_errors,
    bad_preface,
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Preface(u8),
    Head,
    Payload,
    OutOfSync,
}

/// The frame being read.
#[derive(Debug, Clone, Copy)]
struct Cur {
    h: Head,
    first: Pos,
    /// Payload bytes left (prefix, body and padding).
    left: u32,
    pre: [u8; 8],
    pre_got: u8,
    /// Some prefix byte was not captured.
    pre_lost: bool,
    /// Body bytes left, once the prefix is read; `None` before.
    body_left: Option<u32>,
    /// The body's extent is unknown (pad length lost or invalid).
    body_unknown: bool,
    /// SETTINGS: entry being assembled.
    set_buf: [u8; 6],
    set_got: u8,
    set_lost: bool,
    table_size: Option<u32>,
    max_frame: Option<u32>,
}

/// A header block being reassembled.
#[derive(Debug, Clone, Copy)]
struct BlockState {
    stream: u32,
    end_stream: bool,
    push: bool,
    first: Pos,
    lost: Option<Unknown>,
}

/// A resync candidate: a plausible head was seen, and the next one is
/// expected at `next`.
#[derive(Debug, Clone, Copy)]
struct Cand {
    next: u64,
    chain: u8,
    /// The chain is inside a header block of this stream (expects a
    /// CONTINUATION).
    cont: Option<u32>,
}

/// Most resync candidates followed at once.
const MAX_CANDS: usize = 8;

/// Reads the frames of one direction.
#[derive(Debug)]
pub(crate) struct FrameReader {
    st: St,
    /// True for the client's direction, false for the server's, `None`
    /// when not known (stream parity checks then relax).
    client: Option<bool>,
    head: [u8; 9],
    head_got: u8,
    head_pos: Pos,
    cur: Option<Cur>,
    block: Vec<u8>,
    block_st: Option<BlockState>,
    max_block: usize,
    /// Largest frame length accepted (the peer's SETTINGS_MAX_FRAME_SIZE
    /// when seen, 16 KiB by default for scanning).
    pub max_frame: u32,
    /// Heads in a row a resync needs.
    chain_needed: u8,
    /// After a resync, until a header block decodes.
    tentative: bool,
    win: [u8; 9],
    run: u32,
    cands: Vec<Cand>,
    next_offset: Option<u64>,
    pub counters: FrameCounters,
}

impl FrameReader {
    /// `preface`: the direction starts with the client preface;
    /// `in_sync`: the direction starts at a frame boundary (else it is
    /// scanned for one).
    pub fn new(
        client: Option<bool>,
        preface: bool,
        in_sync: bool,
        max_block: usize,
        chain: u8,
    ) -> FrameReader {
        FrameReader {
            st: if !in_sync {
                St::OutOfSync
            } else if preface {
                St::Preface(0)
            } else {
                St::Head
            },
            client,
            head: [0; 9],
            head_got: 0,
            head_pos: Pos::default(),
            cur: None,
            block: Vec::new(),
            block_st: None,
            max_block,
            // Until the peer's SETTINGS_MAX_FRAME_SIZE is seen, any length
            // (gRPC peers announce up to 16 MiB).
            max_frame: if in_sync { 16_384 } else { (1 << 24) - 1 },
            chain_needed: chain.max(2),
            tentative: !in_sync,
            win: [0; 9],
            run: 0,
            cands: Vec::new(),
            next_offset: None,
            counters: FrameCounters::default(),
        }
    }

    /// Back to a fresh state (counters included), keeping allocations.
    pub fn reset(&mut self, client: Option<bool>, preface: bool, in_sync: bool) {
        let mut block = std::mem::take(&mut self.block);
        let mut cands = std::mem::take(&mut self.cands);
        block.clear();
        cands.clear();
        *self = FrameReader {
            block,
            cands,
            ..FrameReader::new(client, preface, in_sync, self.max_block, self.chain_needed)
        };
    }

    /// The direction starts at what is probably a frame boundary: read in
    /// sync, but as after a resync (an implausible head loses sync, a
    /// header block that does not decode means the boundary was not one),
    /// with any frame length (the peer's SETTINGS were not seen).
    pub fn tentative_boundary(&mut self) {
        self.tentative = true;
        self.max_frame = (1 << 24) - 1;
    }

    pub fn set_client(&mut self, client: bool) {
        self.client = Some(client);
    }

    /// Ignores stream bytes before `offset` (the start of HTTP/2 after an
    /// upgrade).
    pub fn start_at(&mut self, offset: u64) {
        self.next_offset = Some(offset);
    }

    /// Feeds a chunk in stream order (a gap counts as a hole; bytes
    /// already fed are ignored).
    pub fn feed(&mut self, chunk: &Chunk<'_>, out: &mut impl FnMut(Event<'_>) -> Verdict) {
        let end = chunk.walk(self.next_offset, |part, at| match part {
            Part::Data(d) => self.on_data(d, at, out),
            Part::Missing(n, why) => {
                let why = match why {
                    MissingKind::Hole => Unknown::Hole,
                    // A skipped range is known in length but its bytes
                    // were not captured: inside a DATA payload that is
                    // harmless, elsewhere it costs what a cut prefix costs.
                    MissingKind::Truncated | MissingKind::Skipped => Unknown::Truncated,
                };
                self.on_missing(n, why, at, out);
            }
        });
        self.next_offset = Some(end);
    }

    /// Loses frame sync.
    fn lose_sync(&mut self, why: Unknown, out: &mut impl FnMut(Event<'_>) -> Verdict) {
        self.counters.sync_lost += 1;
        self.st = St::OutOfSync;
        self.cur = None;
        self.head_got = 0;
        self.block_st = None;
        self.block.clear();
        self.run = 0;
        self.cands.clear();
        self.tentative = true;
        out(Event::SyncLost { why });
    }

    fn on_missing(
        &mut self,
        mut len: u64,
        why: Unknown,
        mut pos: Pos,
        out: &mut impl FnMut(Event<'_>) -> Verdict,
    ) {
        while len > 0 {
            match self.st {
                St::Preface(got) => {
                    let n = (PREFACE.len() as u64 - u64::from(got)).min(len);
                    let got = got as u64 + n;
                    self.st = if got as usize >= PREFACE.len() {
                        St::Head
                    } else {
                        St::Preface(got as u8)
                    };
                    len -= n;
                    pos = pos.advance(n);
                }
                St::Head => {
                    self.lose_sync(why, out);
                }
                St::OutOfSync => {
                    self.counters.bytes_out_of_sync += len;
                    self.run = 0;
                    return;
                }
                St::Payload => {
                    let Some(cur) = self.cur.as_mut() else {
                        self.st = St::Head;
                        continue;
                    };
                    let n = u64::from(cur.left).min(len) as u32;
                    self.payload_missing(n, why, pos, out);
                    len -= u64::from(n);
                    pos = pos.advance(u64::from(n));
                }
            }
        }
    }

    fn on_data(
        &mut self,
        mut data: &[u8],
        mut pos: Pos,
        out: &mut impl FnMut(Event<'_>) -> Verdict,
    ) {
        while !data.is_empty() {
            let used = match self.st {
                St::Preface(got) => {
                    let want = &PREFACE[got as usize..];
                    let n = want.len().min(data.len());
                    if data[..n] != want[..n] {
                        self.counters.bad_preface += 1;
                        self.lose_sync(Unknown::SyncLost, out);
                        continue;
                    }
                    let got = got as usize + n;
                    self.st = if got >= PREFACE.len() {
                        St::Head
                    } else {
                        St::Preface(got as u8)
                    };
                    n
                }
                St::Head => {
                    if self.head_got == 0 {
                        self.head_pos = pos;
                    }
                    let n = (9 - self.head_got as usize).min(data.len());
                    let g = self.head_got as usize;
                    self.head[g..g + n].copy_from_slice(&data[..n]);
                    self.head_got += n as u8;
                    if self.head_got == 9 {
                        self.head_got = 0;
                        let h = Head::parse(&self.head);
                        self.start_frame(h, self.head_pos, pos.advance(n as u64), out);
                    }
                    n
                }
                St::Payload => {
                    let Some(cur) = self.cur.as_ref() else {
                        self.st = St::Head;
                        continue;
                    };
                    let n = (cur.left as usize).min(data.len());
                    self.payload_data(&data[..n], pos, out);
                    n
                }
                St::OutOfSync => self.scan(data, pos, out),
            };
            data = &data[used..];
            pos = pos.advance(used as u64);
        }
    }

    /// A head was read in sync: checks it and starts its payload.
    /// `after`: the position just past the head.
    fn start_frame(
        &mut self,
        h: Head,
        first: Pos,
        after: Pos,
        out: &mut impl FnMut(Event<'_>) -> Verdict,
    ) {
        let in_block = self.block_st.map(|b| b.stream);
        // In sync every head is taken as it is (unknown types and flags
        // are ignored by the protocol); right after a resync, only what a
        // scan would accept.
        let bad = self.tentative && !plausible(&h, self.max_frame, self.client);
        // A header block must be followed by its CONTINUATIONs only, and a
        // CONTINUATION must follow one.
        let cont_error = match in_block {
            Some(s) => h.kind != CONTINUATION || s != h.stream,
            None => h.kind == CONTINUATION,
        };
        if bad || cont_error {
            self.counters.protocol_errors += 1;
            if let Some(b) = self.block_st.take() {
                self.emit_block(b, Some(Unknown::Corrupt), first, out);
            }
            self.lose_sync(Unknown::SyncLost, out);
            return;
        }
        self.counters.frames += 1;
        let pre = h.prefix_len();
        let mut cur = Cur {
            h,
            first,
            left: h.len,
            pre: [0; 8],
            pre_got: 0,
            pre_lost: false,
            body_left: None,
            body_unknown: false,
            set_buf: [0; 6],
            set_got: 0,
            set_lost: false,
            table_size: None,
            max_frame: None,
        };
        if h.len < pre {
            // Too short for its own prefix: malformed.
            cur.body_unknown = true;
            cur.body_left = Some(0);
            self.counters.protocol_errors += 1;
        } else if pre == 0 {
            Self::body_extent(&mut cur);
        }
        if matches!(h.kind, HEADERS | PUSH_PROMISE) {
            self.block.clear();
            self.block_st = Some(BlockState {
                stream: h.stream,
                end_stream: h.kind == HEADERS && h.has(END_STREAM),
                push: h.kind == PUSH_PROMISE,
                first,
                lost: None,
            });
        }
        self.cur = Some(cur);
        self.st = St::Payload;
        if h.len == 0 {
            self.end_frame(after, out);
        }
    }

    /// Records `n` payload bytes as missing.
    fn payload_missing(
        &mut self,
        n: u32,
        why: Unknown,
        pos: Pos,
        out: &mut impl FnMut(Event<'_>) -> Verdict,
    ) {
        let Some(mut cur) = self.cur else {
            return;
        };
        let mut left = n;
        while left > 0 {
            let pre = cur.h.prefix_len();
            if u32::from(cur.pre_got) < pre {
                let k = (pre - u32::from(cur.pre_got)).min(left);
                if cur.pre_got == 0 && cur.h.has(PADDED) {
                    cur.body_unknown = true;
                }
                cur.pre_lost = true;
                cur.pre_got += k as u8;
                left -= k;
                if u32::from(cur.pre_got) == pre {
                    Self::body_extent(&mut cur);
                }
                continue;
            }
            let body = cur.body_left.unwrap_or(0);
            let k = if body > 0 { body.min(left) } else { left };
            if body > 0 {
                cur.body_left = Some(body - k);
            }
            match cur.h.kind {
                DATA if body > 0 && !cur.body_unknown => {
                    self.counters.data_bytes_missing += u64::from(k);
                    out(Event::Data {
                        stream: cur.h.stream,
                        data: &[],
                        missing: k,
                        last: pos,
                    });
                }
                HEADERS | PUSH_PROMISE | CONTINUATION if body > 0 => {
                    if let Some(b) = self.block_st.as_mut() {
                        if b.lost.is_none() {
                            b.lost = Some(why);
                            self.counters.blocks_cut += 1;
                        }
                    }
                }
                SETTINGS => cur.set_lost = true,
                _ => {}
            }
            left -= k;
        }
        cur.left -= n;
        self.cur = Some(cur);
        if cur.left == 0 {
            self.end_frame(pos.advance(u64::from(n)), out);
        }
    }

    /// The prefix is read: where the body ends.
    fn body_extent(cur: &mut Cur) {
        let pre = cur.h.prefix_len();
        let pad = if cur.h.has(PADDED) && !cur.body_unknown {
            u32::from(cur.pre[0])
        } else {
            0
        };
        match cur.h.len.checked_sub(pre + pad) {
            Some(b) if !cur.body_unknown => cur.body_left = Some(b),
            _ => {
                cur.body_unknown = true;
                cur.body_left = Some(cur.h.len.saturating_sub(pre));
            }
        }
    }

    fn payload_data(&mut self, data: &[u8], pos: Pos, out: &mut impl FnMut(Event<'_>) -> Verdict) {
        let Some(mut cur) = self.cur else {
            return;
        };
        let mut d = data;
        let mut p = pos;
        while !d.is_empty() {
            let pre = cur.h.prefix_len();
            if u32::from(cur.pre_got) < pre {
                let k = ((pre - u32::from(cur.pre_got)) as usize).min(d.len());
                let g = cur.pre_got as usize;
                cur.pre[g..g + k].copy_from_slice(&d[..k]);
                cur.pre_got += k as u8;
                if u32::from(cur.pre_got) == pre {
                    Self::body_extent(&mut cur);
                }
                d = &d[k..];
                p = p.advance(k as u64);
                continue;
            }
            let body = cur.body_left.unwrap_or(0);
            let k = if body > 0 {
                (body as usize).min(d.len())
            } else {
                d.len()
            };
            let bytes = &d[..k];
            if body > 0 {
                cur.body_left = Some(body - k as u32);
                match cur.h.kind {
                    DATA if !cur.body_unknown => {
                        out(Event::Data {
                            stream: cur.h.stream,
                            data: bytes,
                            missing: 0,
                            last: p,
                        });
                    }
                    HEADERS | PUSH_PROMISE | CONTINUATION if !cur.body_unknown => {
                        self.append_block(bytes)
                    }
                    HEADERS | PUSH_PROMISE | CONTINUATION => {
                        if let Some(b) = self.block_st.as_mut() {
                            b.lost.get_or_insert(Unknown::Corrupt);
                        }
                    }
                    SETTINGS => Self::settings_bytes(&mut cur, bytes),
                    _ => {}
                }
            }
            d = &d[k..];
            p = p.advance(k as u64);
        }
        cur.left -= data.len() as u32;
        self.cur = Some(cur);
        if cur.left == 0 {
            self.end_frame(pos.advance(data.len() as u64), out);
        }
    }

    fn append_block(&mut self, bytes: &[u8]) {
        let Some(b) = self.block_st.as_mut() else {
            return;
        };
        if b.lost.is_some() {
            return;
        }
        let room = self.max_block.saturating_sub(self.block.len());
        if bytes.len() > room {
            self.block.extend_from_slice(&bytes[..room]);
            b.lost = Some(Unknown::TooLarge);
            self.counters.blocks_too_large += 1;
        } else {
            self.block.extend_from_slice(bytes);
        }
    }

    fn settings_bytes(cur: &mut Cur, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let g = cur.set_got as usize;
            let k = (6 - g).min(bytes.len());
            cur.set_buf[g..g + k].copy_from_slice(&bytes[..k]);
            cur.set_got += k as u8;
            bytes = &bytes[k..];
            if cur.set_got == 6 {
                cur.set_got = 0;
                let b = cur.set_buf;
                let v = u32::from_be_bytes([b[2], b[3], b[4], b[5]]);
                match u16::from_be_bytes([b[0], b[1]]) {
                    1 => cur.table_size = Some(v),
                    5 => cur.max_frame = Some(v),
                    _ => {}
                }
            }
        }
    }

    fn emit_block(
        &mut self,
        b: BlockState,
        lost: Option<Unknown>,
        last: Pos,
        out: &mut impl FnMut(Event<'_>) -> Verdict,
    ) -> Verdict {
        out(Event::Block {
            stream: b.stream,
            end_stream: b.end_stream,
            push: b.push,
            block: &self.block,
            lost: b.lost.or(lost),
            first: b.first,
            last,
            tentative: self.tentative,
        })
    }

    /// The current frame's last byte was read; `end` is just past it.
    fn end_frame(&mut self, end: Pos, out: &mut impl FnMut(Event<'_>) -> Verdict) {
        self.st = St::Head;
        let Some(cur) = self.cur.take() else {
            return;
        };
        let h = cur.h;
        let last = end.back(1);
        let word = |i: usize| {
            u32::from_be_bytes([cur.pre[i], cur.pre[i + 1], cur.pre[i + 2], cur.pre[i + 3]])
        };
        match h.kind {
            DATA => {
                if cur.body_unknown {
                    out(Event::DataLost { stream: h.stream });
                }
                if h.has(END_STREAM) {
                    out(Event::EndStream {
                        stream: h.stream,
                        last,
                    });
                }
            }
            HEADERS | PUSH_PROMISE | CONTINUATION if h.has(END_HEADERS) => {
                if let Some(b) = self.block_st.take() {
                    let v = self.emit_block(b, None, last, out);
                    self.block.clear();
                    if v == Verdict::Desync {
                        self.counters.resyncs_failed += 1;
                        self.lose_sync(Unknown::SyncLost, out);
                    } else if b.lost.is_none() {
                        self.tentative = false;
                    }
                }
            }
            RST_STREAM => {
                out(Event::Reset {
                    stream: h.stream,
                    code: (!cur.pre_lost).then(|| word(0)),
                    first: cur.first,
                    last,
                });
            }
            GOAWAY => {
                out(Event::GoAway {
                    last_stream: (!cur.pre_lost).then(|| word(0) & 0x7fff_ffff),
                    last,
                });
            }
            SETTINGS if !h.has(ACK) => {
                out(Event::Settings {
                    table_size: cur.table_size,
                    max_frame: cur.max_frame,
                    lost: cur.set_lost,
                });
            }
            _ => {}
        }
    }

    /// Out of sync: looks for a chain of plausible frame heads. Returns
    /// the bytes consumed (all of them, or up to the end of the head that
    /// completed a chain).
    fn scan(&mut self, data: &[u8], pos: Pos, out: &mut impl FnMut(Event<'_>) -> Verdict) -> usize {
        for (i, &b) in data.iter().enumerate() {
            self.win.copy_within(1.., 0);
            self.win[8] = b;
            self.run = self.run.saturating_add(1);
            if self.run < 9 {
                continue;
            }
            let at = pos.offset + i as u64 - 8;
            let h = Head::parse(&self.win);
            let ok = plausible(&h, self.max_frame, self.client);
            let mut adopt = None;
            self.cands.retain(|c| c.next >= at);
            for c in self.cands.iter_mut().filter(|c| c.next == at) {
                let fits = ok
                    && match c.cont {
                        Some(s) => h.kind == CONTINUATION && h.stream == s,
                        None => h.kind != CONTINUATION,
                    };
                if fits {
                    c.chain += 1;
                    c.next = at + 9 + u64::from(h.len);
                    c.cont = match h.kind {
                        HEADERS | PUSH_PROMISE | CONTINUATION if !h.has(END_HEADERS) => {
                            Some(h.stream)
                        }
                        _ => None,
                    };
                    if c.chain >= self.chain_needed && c.cont.is_none() {
                        adopt = Some(*c);
                    }
                } else {
                    c.next = 0;
                }
            }
            self.cands.retain(|c| c.next != 0);
            if adopt.is_some() {
                self.counters.resyncs += 1;
                self.counters.bytes_out_of_sync += i as u64 + 1;
                self.cands.clear();
                self.run = 0;
                self.st = St::Head;
                self.block_st = None;
                let first = pos.advance(i as u64).back(8);
                // The chained frame's payload is read normally (chains end
                // outside header blocks).
                self.start_frame(h, first, pos.advance(i as u64 + 1), out);
                return i + 1;
            }
            if ok && h.kind != CONTINUATION && self.cands.len() < MAX_CANDS {
                self.cands.push(Cand {
                    next: at + 9 + u64::from(h.len),
                    chain: 1,
                    cont: match h.kind {
                        HEADERS | PUSH_PROMISE if !h.has(END_HEADERS) => Some(h.stream),
                        _ => None,
                    },
                });
            }
        }
        self.counters.bytes_out_of_sync += data.len() as u64;
        data.len()
    }
}
