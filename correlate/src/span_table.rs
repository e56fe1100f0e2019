//! The span records in flight: a slab of records addressed by their keys.
//! A key is a counter in its high bits, so keys order as the requests came,
//! and the record's slot in its low bits, so a lookup is one index into the
//! slab (a hash map from key to slot cost a cache miss per lookup at full
//! load, as much as the record's own). The record's key is kept beside it:
//! a key whose record is gone finds nothing, never another record.
use crate::index::SpanKey;
use crate::prefetch;

/// Bits of a key that name its slot.
const SLOT_BITS: u32 = 24;

/// Records the table can hold at once.
pub(crate) const MAX_SLOTS: usize = 1 << SLOT_BITS;

fn slot(key: SpanKey) -> usize {
    (key & (MAX_SLOTS as u64 - 1)) as usize
}

pub(crate) struct SpanTable<T> {
    recs: Vec<Option<(SpanKey, T)>>,
    free: Vec<u32>,
    len: usize,
    /// Keys handed out: 40 bits of it go into a key, a trillion requests
    /// before they wrap (then keys still never meet a live record's: the
    /// records are bounded far below that).
    made: u64,
}

impl<T> SpanTable<T> {
    pub fn new() -> Self {
        SpanTable {
            recs: Vec::new(),
            free: Vec::new(),
            len: 0,
            made: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Heap bytes, estimated from capacities.
    pub fn heap_bytes(&self) -> usize {
        self.recs.capacity() * std::mem::size_of::<Option<(SpanKey, T)>>()
            + self.free.capacity() * std::mem::size_of::<u32>()
    }

    /// A key for the next record, its slot set aside for
    /// [`insert`](Self::insert).
    pub fn new_key(&mut self) -> SpanKey {
        let slot = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.recs.push(None);
                self.recs.len() - 1
            }
        };
        let key = (self.made << SLOT_BITS) | slot as u64;
        self.made += 1;
        // The next record goes into the slot freed last, usually one not
        // touched since its record was retained (hundreds of ms): its
        // first write was the largest stall of the correlator at full load.
        // Fetched now, it arrives while this record is built.
        if let Some(&next) = self.free.last() {
            if let Some(s) = self.recs.get(next as usize) {
                prefetch::lines(s);
            }
        }
        key
    }

    fn entry(&self, key: SpanKey) -> Option<&T> {
        match self.recs.get(slot(key)) {
            Some(Some((k, rec))) if *k == key => Some(rec),
            _ => None,
        }
    }

    /// The records held.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.recs.iter().flatten().map(|(_, r)| r)
    }

    pub fn contains_key(&self, key: &SpanKey) -> bool {
        self.entry(*key).is_some()
    }

    pub fn get(&self, key: &SpanKey) -> Option<&T> {
        self.entry(*key)
    }

    pub fn get_mut(&mut self, key: &SpanKey) -> Option<&mut T> {
        match self.recs.get_mut(slot(*key)) {
            Some(Some((k, rec))) if k == key => Some(rec),
            _ => None,
        }
    }

    /// Puts `rec` under `key`, from [`new_key`](Self::new_key).
    pub fn insert(&mut self, key: SpanKey, rec: T) {
        if let Some(s) = self.recs.get_mut(slot(key)) {
            // Assigned in place: `replace` would first copy the old slot
            // out, a second pass over a record of several cache lines.
            if s.is_none() {
                self.len += 1;
            }
            *s = Some((key, rec));
        }
    }

    /// Drops the record under `key` in place when `pred` holds for it (the
    /// record not moved out); whether it did.
    pub fn discard_if(&mut self, key: SpanKey, pred: impl FnOnce(&T) -> bool) -> bool {
        let i = slot(key);
        match self.recs.get(i) {
            Some(Some((k, rec))) if *k == key && pred(rec) => {}
            _ => return false,
        }
        self.recs[i] = None;
        self.free.push(i as u32);
        self.len -= 1;
        true
    }

    pub fn remove(&mut self, key: &SpanKey) -> Option<T> {
        let i = slot(*key);
        let s = self.recs.get_mut(i)?;
        if !matches!(s, Some((k, _)) if k == key) {
            return None;
        }
        let (_, rec) = s.take()?;
        self.free.push(i as u32);
        self.len -= 1;
        Some(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::SpanTable;

    #[test]
    fn keys_order_as_made_and_a_gone_record_is_never_found_in_its_reused_slot() {
        let mut t = SpanTable::new();
        let a = t.new_key();
        t.insert(a, "a");
        let b = t.new_key();
        t.insert(b, "b");
        assert!(a < b);
        assert_eq!((t.len(), t.get(&a), t.get(&b)), (2, Some(&"a"), Some(&"b")));
        assert_eq!(t.remove(&a), Some("a"));
        assert_eq!(t.remove(&a), None);
        // The freed slot is reused by a later key: the old key finds nothing.
        let c = t.new_key();
        t.insert(c, "c");
        assert!(c > b);
        assert_eq!((t.get(&a), t.get(&c), t.len()), (None, Some(&"c"), 2));
        assert!(!t.contains_key(&a) && t.contains_key(&c));
        assert!(!t.discard_if(c, |v| *v == "b"));
        assert!(t.discard_if(c, |v| *v == "c"));
        assert!(!t.discard_if(c, |_| true));
        if let Some(v) = t.get_mut(&b) {
            *v = "B";
        }
        assert_eq!((t.get(&b), t.len()), (Some(&"B"), 1));
        assert!(t.get_mut(&c).is_none());
    }
}
