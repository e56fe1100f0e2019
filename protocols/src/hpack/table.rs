//! The dynamic table, with entries whose content or place may be unknown.
//!
//! The table is the list of entries inserted since the last loss, newest
//! last, plus a *tail*: after a loss, older entries may exist whose number,
//! sizes and contents are unknown. The real table (the encoder's) is always
//! the newest few entries of the full insertion sequence, so a valid index
//! `d` (1 = newest) that is at most the number of entries kept here names
//! the same entry on both sides; a larger index names something in the
//! tail: unknown. Evictions are applied only when certain, i.e. when a lower
//! bound of the entries' sizes exceeds an upper bound of the table's
//! maximum size; keeping an entry the encoder evicted is harmless (a valid
//! encoder never names it), dropping one it still holds is not, so an
//! uncertain drop (memory cap) turns into an unknown tail.

use std::collections::VecDeque;

use super::Unknown;

/// Bytes an entry costs besides its name and value (RFC 7541 §4.1).
pub(crate) const ENTRY_OVERHEAD: usize = 32;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Absolute arena position of the name (then the value).
    off: usize,
    /// Stored name length (0 when unknown).
    name_len: u32,
    /// Value length as sent (stored only when `value` is known).
    value_len: u32,
    name_known: bool,
    value_known: bool,
    /// Why the unknown parts are unknown.
    why: Unknown,
}

impl Entry {
    /// Size per RFC 7541 §4.1; a lower bound when the name is unknown.
    fn size_lb(&self) -> usize {
        self.name_len as usize + self.value_len as usize + ENTRY_OVERHEAD
    }

    fn stored(&self) -> usize {
        self.name_len as usize
            + if self.value_known {
                self.value_len as usize
            } else {
                0
            }
    }
}

/// What an index names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lookup<'a> {
    pub name: Result<&'a [u8], Unknown>,
    pub value: Result<&'a [u8], Unknown>,
}

/// The dynamic table of one decoder.
#[derive(Debug)]
pub(crate) struct Table {
    /// Entry bytes; the live ones start at `head - base`.
    arena: Vec<u8>,
    /// Absolute position of `arena[0]`.
    base: usize,
    /// Absolute position of the oldest live byte.
    head: usize,
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes (lower bounds for unknown names).
    size_lb: usize,
    /// Bytes stored in the arena for live entries.
    stored: usize,
    /// The current maximum size, when known exactly.
    pub max: Option<usize>,
    /// An upper bound of the maximum size (the peer's
    /// SETTINGS_HEADER_TABLE_SIZE), when known.
    pub bound: Option<usize>,
    /// Older entries may exist, unknown (and why).
    pub tail: Option<Unknown>,
    /// Most bytes stored.
    cap: usize,
}

impl Table {
    pub fn new(cap: usize) -> Table {
        Table {
            arena: Vec::new(),
            base: 0,
            head: 0,
            entries: VecDeque::new(),
            size_lb: 0,
            stored: 0,
            max: Some(4096),
            bound: Some(4096),
            tail: None,
            cap,
        }
    }

    /// Number of entries kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when every entry the encoder may name is known here.
    pub fn is_exact(&self) -> bool {
        self.tail.is_none() && self.entries.iter().all(|e| e.name_known && e.value_known)
    }

    /// The upper bound used for certain evictions.
    fn upper(&self) -> Option<usize> {
        self.max.or(self.bound)
    }

    fn bytes(&self, off: usize, len: usize) -> &[u8] {
        let a = off.wrapping_sub(self.base);
        self.arena.get(a..a + len).unwrap_or_default()
    }

    /// Dynamic index `d` (1 = newest), or `None` when no such entry can
    /// exist (an invalid index for a table known to be complete).
    pub fn get(&self, d: usize) -> Option<Lookup<'_>> {
        let n = self.entries.len();
        if d == 0 {
            return None;
        }
        if d > n {
            return self.tail.map(|why| Lookup {
                name: Err(why),
                value: Err(why),
            });
        }
        let e = self.entries[n - d];
        let name = if e.name_known {
            Ok(self.bytes(e.off, e.name_len as usize))
        } else {
            Err(e.why)
        };
        let value = if e.value_known {
            Ok(self.bytes(e.off + e.name_len as usize, e.value_len as usize))
        } else {
            Err(e.why)
        };
        Some(Lookup { name, value })
    }

    fn pop_oldest(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.size_lb -= e.size_lb();
            self.stored -= e.stored();
            self.head = e.off + e.stored();
        }
        if self.entries.is_empty() {
            self.head = self.base + self.arena.len();
        }
    }

    /// Drops every entry (and the tail) with certainty.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.arena.clear();
        self.base = 0;
        self.head = 0;
        self.size_lb = 0;
        self.stored = 0;
        self.tail = None;
    }

    /// A loss: every entry kept may have moved by an unknown amount.
    /// `size_may_change`: the lost bytes may hold a size update.
    pub fn lose(&mut self, why: Unknown, size_may_change: bool) {
        self.clear();
        self.tail = Some(why);
        if size_may_change {
            self.max = None;
        }
    }

    /// Applies certain evictions and, when no older entry can fit any
    /// more, forgets the unknown tail.
    fn settle(&mut self) {
        let Some(upper) = self.upper() else {
            return;
        };
        // Older entries go first: if one survived, every entry held here
        // would too, and they already leave no room for it.
        if self.size_lb + ENTRY_OVERHEAD > upper {
            self.tail = None;
        }
        while self.size_lb > upper && !self.entries.is_empty() {
            self.pop_oldest();
        }
    }

    /// A dynamic table size update to `max`.
    pub fn set_max(&mut self, max: usize) {
        self.max = Some(max);
        if let Some(b) = &mut self.bound {
            *b = (*b).max(max);
        }
        if max == 0 {
            self.clear();
        }
        self.settle();
    }

    /// Inserts an entry. `name`: its bytes, or why unknown; `value`: its
    /// bytes (always known: it is a literal of the block being decoded).
    pub fn insert(&mut self, name: Result<&[u8], Unknown>, value: &[u8]) {
        let name_len = name.map_or(0, |n| n.len());
        let size_lb = name_len + value.len() + ENTRY_OVERHEAD;
        if self.upper().is_some_and(|u| size_lb > u) {
            // Certainly larger than the table: it empties the table
            // (RFC 7541 §4.4) and is not inserted.
            self.clear();
            return;
        }
        let why = match name {
            Err(w) => w,
            Ok(_) => Unknown::Evicted,
        };
        let store_value = name_len + value.len() <= self.cap / 2;
        let stored = if store_value {
            name_len + value.len()
        } else {
            0
        };
        // Uncertain drops to stay under the memory cap: what they held
        // becomes unknown.
        while self.stored + stored > self.cap && !self.entries.is_empty() {
            self.pop_oldest();
            self.tail = Some(Unknown::Evicted);
        }
        self.compact(stored);
        let off = self.base + self.arena.len();
        if store_value {
            if let Ok(n) = name {
                self.arena.extend_from_slice(n);
            }
            self.arena.extend_from_slice(value);
        }
        let e = Entry {
            off,
            name_len: if store_value { name_len as u32 } else { 0 },
            value_len: value.len() as u32,
            name_known: store_value && name.is_ok(),
            value_known: store_value,
            why,
        };
        // A placeholder (value too large to keep) counts value and
        // overhead: still a lower bound of the real size.
        self.size_lb += e.size_lb();
        self.stored += e.stored();
        self.entries.push_back(e);
        self.settle();
    }

    /// Makes room at the end of the arena, dropping dead bytes at its
    /// front when they are at least half of it.
    fn compact(&mut self, more: usize) {
        let dead = self.head - self.base;
        if dead > 0 && (dead >= self.arena.len() / 2 || self.arena.len() + more > self.cap * 2) {
            self.arena.drain(..dead);
            self.base = self.head;
        }
    }

    /// Sum of the entries' sizes (a lower bound when some names are
    /// unknown).
    #[cfg(test)]
    pub fn size_lb(&self) -> usize {
        self.size_lb
    }
}
