//! The span records in flight: a slab of records with a small map from
//! span key to slot. Records are a few hundred bytes; a map holding them
//! moved every record at each growth (a fresh agent's first thousand spans
//! spent several percent of their time there), a slab grows in place and
//! reuses freed slots.
use std::collections::hash_map::Entry;

use foldhash::{HashMap, HashMapExt};

use crate::{correlator::SpanRec, index::SpanKey};

pub(crate) struct SpanTable {
    slots: HashMap<SpanKey, u32>,
    recs: Vec<Option<SpanRec>>,
    free: Vec<u32>,
}

impl SpanTable {
    pub fn new() -> Self {
        SpanTable {
            slots: HashMap::new(),
            recs: Vec::new(),
            free: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Heap bytes, estimated from capacities.
    pub fn heap_bytes(&self) -> usize {
        self.recs.capacity() * std::mem::size_of::<Option<SpanRec>>()
            + crate::index::table_bytes::<(SpanKey, u32)>(self.slots.capacity())
            + self.free.capacity() * std::mem::size_of::<u32>()
    }

    pub fn contains_key(&self, key: &SpanKey) -> bool {
        self.slots.contains_key(key)
    }

    pub fn get(&self, key: &SpanKey) -> Option<&SpanRec> {
        let &i = self.slots.get(key)?;
        self.recs.get(i as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, key: &SpanKey) -> Option<&mut SpanRec> {
        let &i = self.slots.get(key)?;
        self.recs.get_mut(i as usize)?.as_mut()
    }

    /// Inserts `rec` under `key`; returns the record it replaced, if any
    /// (none in practice: keys are never reused). One lookup.
    pub fn insert(&mut self, key: SpanKey, rec: SpanRec) -> Option<SpanRec> {
        match self.slots.entry(key) {
            Entry::Occupied(e) => self.recs[*e.get() as usize].replace(rec),
            Entry::Vacant(e) => {
                let i = match self.free.pop() {
                    Some(i) => {
                        self.recs[i as usize] = Some(rec);
                        i
                    }
                    None => {
                        self.recs.push(Some(rec));
                        // Bounded by the correlator's max_spans, far below u32.
                        (self.recs.len() - 1) as u32
                    }
                };
                e.insert(i);
                None
            }
        }
    }

    /// Drops the record under `key` in place when `pred` holds for it (one
    /// lookup, the record not moved out); whether it did.
    pub fn discard_if(&mut self, key: SpanKey, pred: impl FnOnce(&SpanRec) -> bool) -> bool {
        let Entry::Occupied(e) = self.slots.entry(key) else {
            return false;
        };
        let i = *e.get() as usize;
        if !self.recs.get(i).and_then(Option::as_ref).is_some_and(pred) {
            return false;
        }
        e.remove();
        self.recs[i] = None;
        self.free.push(i as u32);
        true
    }

    pub fn remove(&mut self, key: &SpanKey) -> Option<SpanRec> {
        let i = self.slots.remove(key)?;
        let rec = self.recs.get_mut(i as usize)?.take();
        self.free.push(i);
        rec
    }
}
