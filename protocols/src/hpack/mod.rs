//! HPACK header block decoding (RFC 7541) that never guesses and heals.
//!
//! One [`HpackDecoder`] per direction of an HTTP/2 connection. Captures
//! lose bytes, and HPACK is stateful: every header block may insert entries
//! into a dynamic table that later blocks name by position. A decoder that
//! misses one block would read every later index off the wrong entry.
//! This one keeps, instead of "the table", what is *known* of it:
//!
//! - static entries and literals always decode;
//! - after a loss ([`HpackDecoder::lose`]: a hole, a truncated or
//!   oversized block, a connection joined mid-way, lost frame sync) the
//!   entries held so far are forgotten: the lost bytes may have inserted
//!   any number of entries, so an old entry's index is unknown. A field
//!   that names them decodes as *unknown* (with the reason), never as a
//!   neighbour's value;
//! - entries inserted after the loss are known and name the right fields
//!   (the encoder's table is always the newest entries of the insertion
//!   sequence, so index `d` is the `d`-th newest insertion whenever the
//!   encoder may use it);
//! - once the known entries fill an upper bound of the table size (the
//!   peer's SETTINGS_HEADER_TABLE_SIZE, or the exact size after a size
//!   update), or after a dynamic table size update to 0, nothing unknown
//!   can remain: the decoder is exact again ([`HpackDecoder::is_exact`]).
//!
//! Values of `:method`, `:path`, `:status`, `:scheme` and `:authority`
//! that do not have the shape the protocol requires are reported unknown
//! ([`Unknown::Invalid`]) rather than passed on.
//!
//! Memory is bounded: the table keeps at most `max_table_bytes` of entry
//! bytes (entries dropped to stay under it become unknown, counted), and a
//! block's decoded output at most `max_decoded_bytes` (fields past it are
//! dropped, counted, while their insertions are still applied).

mod huffman;
mod static_table;
mod table;

pub use huffman::HuffmanError;

use static_table::STATIC;
use table::Table;

/// Why something is not known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unknown {
    /// The connection was joined after it started: its earlier header
    /// blocks were never seen.
    Attach,
    /// Bytes of the stream never arrived (lost records).
    Hole,
    /// Bytes were beyond the captured prefix of their packet.
    Truncated,
    /// Frame boundaries were lost; header blocks may have gone unseen.
    SyncLost,
    /// A header block was larger than the decoder's bound and skipped.
    TooLarge,
    /// A header block did not decode (bad encoding or index).
    Corrupt,
    /// The entry was dropped from the table to stay within its memory
    /// bound (or not kept, being too large).
    Evicted,
    /// The value does not have the shape its name requires.
    Invalid,
}

impl Unknown {
    /// A short stable name (for attributes and counters).
    pub fn as_str(&self) -> &'static str {
        match self {
            Unknown::Attach => "attach",
            Unknown::Hole => "hole",
            Unknown::Truncated => "truncated",
            Unknown::SyncLost => "sync_lost",
            Unknown::TooLarge => "too_large",
            Unknown::Corrupt => "corrupt",
            Unknown::Evicted => "evicted",
            Unknown::Invalid => "invalid",
        }
    }
}

/// A byte range `[start, end)` of a [`HeaderList`].
pub(crate) type Span32 = (u32, u32);

/// One decoded field, as ranges of its list's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FieldRec {
    pub name: Option<Span32>,
    pub value: Option<Span32>,
    /// Why the unknown part is unknown (set when either is `None`).
    pub why: Option<Unknown>,
}

/// Decoded header fields, stored in one buffer (reused: no allocation per
/// block once warm).
#[derive(Debug, Clone, Default)]
pub struct HeaderList {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fields: Vec<FieldRec>,
}

/// A field of a [`HeaderList`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The name, when known.
    pub name: Option<&'a [u8]>,
    /// The value, when known.
    pub value: Option<&'a [u8]>,
    /// Why the name or value is unknown (`None` when both are known).
    pub why: Option<Unknown>,
}

impl Field<'_> {
    /// True when name and value are known.
    pub fn is_known(&self) -> bool {
        self.name.is_some() && self.value.is_some()
    }
}

fn range(bytes: &[u8], (a, b): Span32) -> &[u8] {
    bytes.get(a as usize..b as usize).unwrap_or_default()
}

impl HeaderList {
    /// Empties the list, keeping its allocations.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.fields.clear();
    }

    /// Number of fields (known or not).
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True when there are no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Bytes held for the fields' names and values (what
    /// [`HpackConfig::max_decoded_bytes`] bounds, per block decoded).
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// Number of fields whose name or value is unknown.
    pub fn unknown(&self) -> usize {
        self.fields.iter().filter(|f| f.why.is_some()).count()
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = Field<'_>> + '_ {
        let b = &self.bytes;
        self.fields.iter().map(move |f| Field {
            name: f.name.map(|s| range(b, s)),
            value: f.value.map(|s| range(b, s)),
            why: f.why,
        })
    }

    /// The first known value of `name` (exact bytes: HTTP/2 names are
    /// lower case).
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter()
            .find(|f| f.name == Some(name) && f.value.is_some())
            .and_then(|f| f.value)
    }

    /// `name`'s value, or why it is not known: a field with that name
    /// whose value is unknown, else the reason of any field whose name is
    /// unknown (it may be that one), else `None`: absent.
    pub fn lookup(&self, name: &[u8]) -> Option<Result<&[u8], Unknown>> {
        let mut unnamed = None;
        for f in self.iter() {
            match (f.name, f.value) {
                (Some(n), Some(v)) if n == name => return Some(Ok(v)),
                (Some(n), None) if n == name => {
                    return Some(Err(f.why.unwrap_or(Unknown::Corrupt)))
                }
                (None, _) => unnamed = unnamed.or(f.why),
                _ => {}
            }
        }
        unnamed.map(Err)
    }

    fn push_bytes(&mut self, b: &[u8]) -> Span32 {
        let a = self.bytes.len() as u32;
        self.bytes.extend_from_slice(b);
        (a, self.bytes.len() as u32)
    }
}

/// How a block handed to [`HpackDecoder::decode`] ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockEnd {
    /// The bytes are the whole block.
    Complete,
    /// The bytes are only the block's beginning: the rest was lost for
    /// this reason.
    Lost(Unknown),
}

/// What decoding a block gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decoded {
    /// Fields appended to the output (known or not).
    pub fields: u32,
    /// Of which with an unknown name or value.
    pub unknown: u32,
    /// Fields not appended because the output bound was reached.
    pub dropped: u32,
    /// The block's end was not decoded: why (a loss, or an encoding
    /// error: `Corrupt`). The fields decoded before it are correct.
    pub cut: Option<Unknown>,
}

/// Tunables of an [`HpackDecoder`].
#[derive(Debug, Clone, Copy)]
pub struct HpackConfig {
    /// Most bytes of dynamic table entries kept (the protocol's default
    /// table is 4 KiB; peers may announce more).
    pub max_table_bytes: usize,
    /// Most decoded bytes appended per block.
    pub max_decoded_bytes: usize,
    /// Most fields appended per block.
    pub max_fields: usize,
}

impl Default for HpackConfig {
    fn default() -> Self {
        HpackConfig {
            max_table_bytes: 64 * 1024,
            max_decoded_bytes: 64 * 1024,
            max_fields: 256,
        }
    }
}

/// What a decoder saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HpackCounters {
    /// Blocks decoded (whole or partly).
    pub blocks: u64,
    /// Fields decoded with name and value known.
    pub fields_known: u64,
    /// Fields whose name or value was unknown (table losses).
    pub fields_unknown: u64,
    /// Pseudo-header values rejected by validation.
    pub fields_invalid: u64,
    /// Fields dropped by the output bound.
    pub fields_dropped: u64,
    /// Entries inserted.
    pub inserts: u64,
    /// Dynamic table size updates.
    pub size_updates: u64,
    /// Losses, by reason.
    pub lost_attach: u64,
    /// Losses: holes.
    pub lost_hole: u64,
    /// Losses: truncation.
    pub lost_truncated: u64,
    /// Losses: frame sync.
    pub lost_sync: u64,
    /// Losses: blocks too large.
    pub lost_too_large: u64,
    /// Losses: blocks that did not decode.
    pub lost_corrupt: u64,
    /// Entries dropped by the memory bound while possibly still in use.
    pub evicted_uncertain: u64,
    /// Times the table became exact again after a loss.
    pub resyncs: u64,
}

sum_counters!(HpackCounters {
    blocks,
    fields_known,
    fields_unknown,
    fields_invalid,
    fields_dropped,
    inserts,
    size_updates,
    lost_attach,
    lost_hole,
    lost_truncated,
    lost_sync,
    lost_too_large,
    lost_corrupt,
    evicted_uncertain,
    resyncs,
});

/// Decodes the header blocks of one direction. See the [module
/// documentation](self).
#[derive(Debug)]
pub struct HpackDecoder {
    cfg: HpackConfig,
    table: Table,
    counters: HpackCounters,
}

/// Result of reading one representation.
enum Rep {
    /// Not all of its bytes are in the block.
    Incomplete,
    /// Malformed.
    Error,
    /// Consumed up to the given position.
    Done(usize),
}

/// Decodes an HPACK integer with an `n`-bit prefix at `buf[pos..]`.
/// `Ok(None)`: the block ends inside it.
fn integer(buf: &[u8], pos: usize, n: u32) -> Result<Option<(usize, usize)>, ()> {
    let Some(&first) = buf.get(pos) else {
        return Ok(None);
    };
    let mask = (1u32 << n) - 1;
    let mut v = u64::from(u32::from(first) & mask);
    let mut p = pos + 1;
    if v < u64::from(mask) {
        return Ok(Some((v as usize, p)));
    }
    let mut shift = 0;
    loop {
        let Some(&b) = buf.get(p) else {
            return Ok(None);
        };
        p += 1;
        v += u64::from(b & 0x7f) << shift;
        if v > u64::from(u32::MAX) {
            return Err(());
        }
        if b & 0x80 == 0 {
            return Ok(Some((v as usize, p)));
        }
        shift += 7;
        if shift > 28 {
            return Err(());
        }
    }
}

/// A string literal at `buf[pos..]`: `(raw bytes, huffman, end)`.
/// A string literal's raw bytes, Huffman flag and end position.
type Lit<'a> = (&'a [u8], bool, usize);

fn string(buf: &[u8], pos: usize) -> Result<Option<Lit<'_>>, ()> {
    let Some(&first) = buf.get(pos) else {
        return Ok(None);
    };
    let Some((len, p)) = integer(buf, pos, 7)? else {
        return Ok(None);
    };
    match buf.get(p..p.saturating_add(len)) {
        Some(s) => Ok(Some((s, first & 0x80 != 0, p + len))),
        None => Ok(None),
    }
}

/// Appends a string literal's decoded bytes to `out`.
fn push_string(out: &mut Vec<u8>, raw: &[u8], huff: bool) -> Result<Span32, ()> {
    let a = out.len();
    if huff {
        if huffman::decode(raw, out).is_err() {
            out.truncate(a);
            return Err(());
        }
    } else {
        out.extend_from_slice(raw);
    }
    Ok((a as u32, out.len() as u32))
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// True when a pseudo-header's value has the shape its name requires
/// (other names always pass).
pub fn valid_pseudo(name: &[u8], v: &[u8]) -> bool {
    let visible = |v: &[u8]| v.iter().all(|c| (0x21..0x7f).contains(c));
    match name {
        b":method" => !v.is_empty() && v.iter().all(|c| is_tchar(*c)),
        b":path" => (v.first() == Some(&b'/') || v == b"*") && visible(v),
        b":status" => {
            v.len() == 3 && v.iter().all(u8::is_ascii_digit) && (b'1'..=b'5').contains(&v[0])
        }
        b":scheme" => {
            v.first().is_some_and(u8::is_ascii_alphabetic)
                && v.iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"+-.".contains(c))
        }
        b":authority" => visible(v),
        _ => true,
    }
}

impl HpackDecoder {
    /// A decoder at the start of a connection: empty table of 4096 bytes,
    /// exact.
    pub fn new(cfg: HpackConfig) -> Self {
        let cfg = HpackConfig {
            max_table_bytes: cfg.max_table_bytes.max(64),
            max_decoded_bytes: cfg.max_decoded_bytes.max(64),
            max_fields: cfg.max_fields.max(1),
        };
        HpackDecoder {
            cfg,
            table: Table::new(cfg.max_table_bytes),
            counters: HpackCounters::default(),
        }
    }

    /// Back to a new connection's state (counters included), keeping
    /// allocations.
    pub fn reset(&mut self) {
        self.table.clear();
        self.table.max = Some(4096);
        self.table.bound = Some(4096);
        self.counters = HpackCounters::default();
    }

    /// The counters so far.
    pub fn counters(&self) -> &HpackCounters {
        &self.counters
    }

    /// True when every entry the encoder may name is known (no loss since
    /// the start or since the last full resync).
    pub fn is_exact(&self) -> bool {
        self.table.is_exact()
    }

    /// Number of dynamic table entries held (known or partly known).
    pub fn entries(&self) -> usize {
        self.table.len()
    }

    /// The peer (the decoding side) announced SETTINGS_HEADER_TABLE_SIZE:
    /// the encoder may use up to this much. Values are combined by
    /// maximum (a change is in force only once acknowledged).
    pub fn peer_table_size(&mut self, size: u32) {
        if let Some(b) = &mut self.table.bound {
            *b = (*b).max(size as usize);
        }
    }

    /// The peer's settings may have been missed (their frames were lost,
    /// or the connection was joined late): no upper bound of the table
    /// size is known any more.
    pub fn peer_table_size_unknown(&mut self) {
        self.table.bound = None;
    }

    /// Header blocks (or parts of one) were lost for `why`: the entries
    /// held so far become unknown. `size_may_change`: the lost bytes may
    /// hold the start of a block (and so a table size update).
    pub fn lose(&mut self, why: Unknown, size_may_change: bool) {
        let c = &mut self.counters;
        match why {
            Unknown::Attach => c.lost_attach += 1,
            Unknown::Hole => c.lost_hole += 1,
            Unknown::Truncated => c.lost_truncated += 1,
            Unknown::SyncLost => c.lost_sync += 1,
            Unknown::TooLarge => c.lost_too_large += 1,
            Unknown::Corrupt | Unknown::Invalid => c.lost_corrupt += 1,
            Unknown::Evicted => c.evicted_uncertain += 1,
        }
        self.table.lose(why, size_may_change);
    }

    /// Decodes a header block (or its beginning, see [`BlockEnd`]),
    /// appending its fields to `out`, and updates the table.
    pub fn decode(&mut self, block: &[u8], end: BlockEnd, out: &mut HeaderList) -> Decoded {
        self.counters.blocks += 1;
        let was_exact = self.table.is_exact();
        let start_bytes = out.bytes.len();
        let mut d = Decoded::default();
        let mut pos = 0;
        let mut fields_seen = false;
        while pos < block.len() {
            match self.representation(block, pos, &mut fields_seen, start_bytes, out, &mut d) {
                Rep::Done(p) => pos = p,
                Rep::Incomplete => {
                    d.cut = Some(match end {
                        BlockEnd::Complete => Unknown::Corrupt,
                        BlockEnd::Lost(w) => w,
                    });
                    break;
                }
                Rep::Error => {
                    d.cut = Some(Unknown::Corrupt);
                    break;
                }
            }
        }
        if d.cut.is_none() {
            if let BlockEnd::Lost(w) = end {
                d.cut = Some(w);
            }
        }
        if let Some(w) = d.cut {
            // The rest of the block may insert entries: older ones move.
            self.lose(w, !fields_seen);
        } else if !was_exact && self.table.is_exact() {
            self.counters.resyncs += 1;
        }
        d
    }

    /// Appends a field (or counts it dropped at the output bound, and
    /// takes its bytes, copied from `mark` on, back out of `out`).
    fn emit(
        &mut self,
        out: &mut HeaderList,
        start_bytes: usize,
        mark: usize,
        d: &mut Decoded,
        name: Result<Span32, Unknown>,
        value: Result<Span32, Unknown>,
    ) {
        let mut value = value;
        if let (Ok(n), Ok(v)) = (name, value) {
            let n = range(&out.bytes, n);
            if n.first() == Some(&b':') && !valid_pseudo(n, range(&out.bytes, v)) {
                self.counters.fields_invalid += 1;
                value = Err(Unknown::Invalid);
            }
        }
        let why = match (name, value) {
            (Err(w), _) | (_, Err(w)) => Some(w),
            _ => None,
        };
        // Once one field is dropped, all later ones are too (a smaller
        // one would fit again now that the bytes are taken back).
        if d.dropped > 0
            || d.fields as usize >= self.cfg.max_fields
            || out.bytes.len() - start_bytes > self.cfg.max_decoded_bytes
        {
            out.bytes.truncate(mark);
            d.dropped += 1;
            self.counters.fields_dropped += 1;
            return;
        }
        d.fields += 1;
        if why.is_some() {
            d.unknown += 1;
            self.counters.fields_unknown += 1;
        } else {
            self.counters.fields_known += 1;
        }
        out.fields.push(FieldRec {
            name: name.ok(),
            value: value.ok(),
            why,
        });
    }

    /// Decodes the representation at `block[pos..]`.
    fn representation(
        &mut self,
        block: &[u8],
        pos: usize,
        fields_seen: &mut bool,
        start_bytes: usize,
        out: &mut HeaderList,
        d: &mut Decoded,
    ) -> Rep {
        let b = block[pos];
        if b & 0x80 != 0 {
            // Indexed field.
            let (idx, p) = match integer(block, pos, 7) {
                Ok(Some(x)) => x,
                Ok(None) => return Rep::Incomplete,
                Err(()) => return Rep::Error,
            };
            *fields_seen = true;
            let mark = out.bytes.len();
            let Some((name, value)) = self.lookup(idx, true, out) else {
                return self.bad_index(out, start_bytes, d);
            };
            self.emit(out, start_bytes, mark, d, name, value);
            return Rep::Done(p);
        }
        if b & 0xe0 == 0x20 {
            // Dynamic table size update: only before the first field.
            let (size, p) = match integer(block, pos, 5) {
                Ok(Some(x)) => x,
                Ok(None) => return Rep::Incomplete,
                Err(()) => return Rep::Error,
            };
            if *fields_seen {
                return Rep::Error;
            }
            self.counters.size_updates += 1;
            self.table.set_max(size);
            return Rep::Done(p);
        }
        // Literal: with incremental indexing (01), without (0000), never
        // indexed (0001).
        let (prefix, indexing) = if b & 0xc0 == 0x40 {
            (6, true)
        } else {
            (4, false)
        };
        let (idx, mut p) = match integer(block, pos, prefix) {
            Ok(Some(x)) => x,
            Ok(None) => return Rep::Incomplete,
            Err(()) => return Rep::Error,
        };
        // Everything is read before anything is applied: a representation
        // cut by the block's end changes nothing.
        let lit_name = if idx == 0 {
            match string(block, p) {
                Ok(Some((raw, h, e))) => {
                    p = e;
                    Some((raw, h))
                }
                Ok(None) => return Rep::Incomplete,
                Err(()) => return Rep::Error,
            }
        } else {
            None
        };
        let (raw_v, huff_v) = match string(block, p) {
            Ok(Some((raw, h, e))) => {
                p = e;
                (raw, h)
            }
            Ok(None) => return Rep::Incomplete,
            Err(()) => return Rep::Error,
        };
        *fields_seen = true;
        let mark = out.bytes.len();
        let name = match lit_name {
            Some((raw, h)) => match push_string(&mut out.bytes, raw, h) {
                Ok(s) => Ok(s),
                Err(()) => return Rep::Error,
            },
            None => match self.lookup(idx, false, out) {
                Some((n, _)) => n,
                None => {
                    out.bytes.truncate(mark);
                    return self.bad_index(out, start_bytes, d);
                }
            },
        };
        let value = match push_string(&mut out.bytes, raw_v, huff_v) {
            Ok(s) => s,
            Err(()) => {
                out.bytes.truncate(mark);
                return Rep::Error;
            }
        };
        if indexing {
            self.counters.inserts += 1;
            let n = name.map(|s| range(&out.bytes, s));
            self.table.insert(n, range(&out.bytes, value));
        }
        self.emit(out, start_bytes, mark, d, name, Ok(value));
        Rep::Done(p)
    }

    /// An index beyond a table believed complete: the table is not what
    /// the encoder has. Forget it; the field is unknown.
    fn bad_index(&mut self, out: &mut HeaderList, start_bytes: usize, d: &mut Decoded) -> Rep {
        let mark = out.bytes.len();
        self.emit(
            out,
            start_bytes,
            mark,
            d,
            Err(Unknown::Corrupt),
            Err(Unknown::Corrupt),
        );
        Rep::Error
    }

    /// Resolves index `idx` (static or dynamic), copying what is known
    /// into `out`. `None`: no such entry can exist.
    #[allow(clippy::type_complexity)]
    fn lookup(
        &mut self,
        idx: usize,
        with_value: bool,
        out: &mut HeaderList,
    ) -> Option<(Result<Span32, Unknown>, Result<Span32, Unknown>)> {
        if idx == 0 {
            return None;
        }
        if let Some((n, v)) = STATIC.get(idx - 1) {
            let n = out.push_bytes(n);
            let v = if with_value {
                out.push_bytes(v)
            } else {
                (0, 0)
            };
            return Some((Ok(n), Ok(v)));
        }
        let l = self.table.get(idx - STATIC.len())?;
        let name = l.name.map(|n| out.push_bytes(n));
        let value = if with_value {
            l.value.map(|v| out.push_bytes(v))
        } else {
            Ok((0, 0))
        };
        Some((name, value))
    }
}

#[cfg(test)]
mod tests;
