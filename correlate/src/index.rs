//! Bounded lookup structures: server spans in progress per thread (rules 4
//! and 6) and span keys by sequence number or request id (rules 3 and 5).
//!
//! Entries may outlive the span records they name; lookups check that a
//! record still exists. Losing an entry can only turn a parent into "no
//! parent", except for the thread index, where a lost in-progress span could
//! make a busy thread look idle: there the thread is marked lossy and its
//! single-in-flight shortcut is off until the lost span must have ended.

use std::collections::BTreeMap;
use std::ops::Bound;

use foldhash::{HashMap, HashMapExt};
use std::hash::Hash;

use crate::model::{Pid, SpanId, Tid};

/// Internal, never reused handle of a span record (creation order).
pub(crate) type SpanKey = u64;

/// Heap bytes of a hash table of `T` entries that can hold `capacity`
/// (hashbrown: one control byte per bucket, buckets at most 8/7 of it).
pub(crate) fn table_bytes<T>(capacity: usize) -> usize {
    capacity * 8 / 7 * (std::mem::size_of::<T>() + 1)
}

/// Heap bytes of a B-tree map of `len` entries: nodes of 11 pairs, which
/// appends in key order leave a little over half full.
fn btree_bytes<K, V>(len: usize) -> usize {
    len * (std::mem::size_of::<K>() + std::mem::size_of::<V>()) * 2
}

/// One server span on a thread.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ThreadEntry {
    pub key: SpanKey,
    pub span_id: SpanId,
    pub start: u64,
    pub end: Option<u64>,
}

impl ThreadEntry {
    /// In progress at `t`: started before (strictly, when `strict`) and not
    /// yet ended.
    fn covers(&self, t: u64, strict: bool) -> bool {
        let started = if strict {
            self.start < t
        } else {
            self.start <= t
        };
        started && self.end.is_none_or(|e| t < e)
    }
}

/// What a thread's server span keeps besides its (start, key): 16 bytes,
/// the end without an `Option` tag (a monotonic time never reaches
/// `u64::MAX`).
#[derive(Clone, Copy)]
struct Slot {
    span_id: SpanId,
    end: u64,
}

impl Slot {
    const OPEN: u64 = u64::MAX;

    fn end(&self) -> Option<u64> {
        (self.end != Slot::OPEN).then_some(self.end)
    }
}

fn thread_entry(&(start, key): &(u64, SpanKey), s: &Slot) -> ThreadEntry {
    ThreadEntry {
        key,
        span_id: s.span_id,
        start,
        end: s.end(),
    }
}

/// A thread's server spans, ordered by (start, key), with what bounds a
/// lookup: spans still open are listed apart, and so are finished spans
/// that lasted longer than [`SHORT_NS`], so the spans in progress at `t`
/// are the open ones that started before `t`, the long ones that cover
/// `t`, and the short ones that started in `(t - SHORT_NS, t)`. A busy
/// thread keeps tens of thousands of entries for the retention time; a
/// lookup looks at a handful, however long a few of its requests lasted (a
/// long poll, a request failed at its connection's close).
///
/// A B-tree, not a sorted array: spans arrive in start order only within
/// the reorder window, and a connection whose stream waits on a hole
/// delivers its requests up to the hole timeout (200 ms) late; at 50k
/// requests/s an array insert then moved ~10k entries (18% of the agent's
/// instructions in the replay of a keep-alive nginx recording).
#[derive(Default)]
struct ThreadSpans {
    entries: BTreeMap<(u64, SpanKey), Slot>,
    /// (start, key) of the entries without an end.
    open: Vec<(u64, SpanKey)>,
    /// (start, end, key) of the finished entries longer than `SHORT_NS`,
    /// sorted by end: those that cover a recent instant are at the back.
    long: Vec<(u64, u64, SpanKey)>,
    /// The latest end of a short finished entry ever held: no short entry
    /// covers an instant at or after it. On a thread that serves one
    /// request after another, a new request starts after every earlier one
    /// ended, and the scan of the last `SHORT_NS` of starts (dozens of
    /// entries at tens of thousands of requests/s) is skipped.
    short_end_max: u64,
    lossy_until: u64,
}

/// Finished spans up to this long are found by their start alone.
const SHORT_NS: u64 = 1_000_000;

impl ThreadSpans {
    fn get(&self, start: u64, key: SpanKey) -> Option<ThreadEntry> {
        let k = (start, key);
        self.entries.get(&k).map(|s| thread_entry(&k, s))
    }

    fn insert(&mut self, entry: ThreadEntry) {
        // An end before its start would escape `prune`: the correlator
        // clamps ends.
        debug_assert!(entry.end.is_none_or(|end| end >= entry.start));
        match entry.end {
            None => self.open.push((entry.start, entry.key)),
            Some(end) => self.ended(entry.start, end, entry.key),
        }
        let slot = Slot {
            span_id: entry.span_id,
            end: entry.end.unwrap_or(Slot::OPEN),
        };
        self.entries.insert((entry.start, entry.key), slot);
    }

    fn ended(&mut self, start: u64, end: u64, key: SpanKey) {
        if end.saturating_sub(start) > SHORT_NS {
            let i = self.long.partition_point(|l| l.1 <= end);
            self.long.insert(i, (start, end, key));
        } else {
            self.short_end_max = self.short_end_max.max(end);
        }
    }

    fn removed(&mut self, e: &ThreadEntry) {
        match e.end {
            None => self.open.retain(|o| o.1 != e.key),
            Some(end) if end.saturating_sub(e.start) > SHORT_NS => {
                self.long.retain(|l| l.2 != e.key)
            }
            Some(_) => {}
        }
    }

    /// Entries in progress at `t` (see [`ThreadEntry::covers`]).
    fn covering(&self, t: u64, strict: bool) -> impl Iterator<Item = ThreadEntry> + '_ {
        self.covering_finished(t, strict)
            .chain(self.covering_open(t, strict))
    }

    /// The finished entries in progress at `t`.
    fn covering_finished(&self, t: u64, strict: bool) -> impl Iterator<Item = ThreadEntry> + '_ {
        let from = t.saturating_sub(SHORT_NS);
        let until = if strict {
            Bound::Excluded((t, 0))
        } else {
            Bound::Included((t, SpanKey::MAX))
        };
        // Covering `t` needs an end after `t`.
        let short = (self.short_end_max > t)
            .then(|| self.entries.range((Bound::Included((from, 0)), until)))
            .into_iter()
            .flatten()
            .map(|(k, s)| thread_entry(k, s))
            .filter(move |e| {
                e.end
                    .is_some_and(|end| end.saturating_sub(e.start) <= SHORT_NS)
                    && e.covers(t, strict)
            });
        let ended_after = self.long.partition_point(|l| l.1 <= t);
        let long = self.long[ended_after..]
            .iter()
            .filter(move |&&(start, end, _)| {
                (if strict { start < t } else { start <= t }) && t < end
            })
            .filter_map(move |&(start, _, key)| self.get(start, key));
        short.chain(long)
    }

    /// The open entries that started before `t`.
    fn covering_open(&self, t: u64, strict: bool) -> impl Iterator<Item = ThreadEntry> + '_ {
        self.open
            .iter()
            .filter(move |(start, _)| if strict { *start < t } else { *start <= t })
            .filter_map(move |&(start, key)| self.get(start, key))
    }
}

/// Server spans in progress (and recently finished) per thread.
pub(crate) struct ThreadIndex {
    threads: HashMap<(Pid, Tid), ThreadSpans>,
    lossy_until: u64,
    max_threads: usize,
    max_per_thread: usize,
}

/// What [`ThreadIndex::insert`] had to forget, ordered from nothing to
/// the worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ThreadInsert {
    /// Nothing.
    Clean,
    /// A span that ended before the instants the parent rules ask about:
    /// only a CPU sample that comes back later than that loses its span.
    Trimmed,
    /// Entries the rules may still ask about: the thread is uncertain
    /// for the instants they covered.
    Lost,
}

/// Server spans in progress on a thread at some instant.
pub(crate) struct InProgress {
    /// How many.
    pub count: usize,
    /// The first of them (the only one when `count` is 1).
    pub first: Option<SpanKey>,
    /// Entries of this thread were lost: others may have been in progress.
    pub lossy: bool,
    /// The thread read a server request before (that is still
    /// remembered): it serves.
    pub served_before: bool,
}

impl ThreadIndex {
    /// Heap bytes, estimated from capacities.
    pub fn heap_bytes(&self) -> usize {
        let per_thread: usize = self
            .threads
            .values()
            .map(|t| {
                btree_bytes::<(u64, SpanKey), Slot>(t.entries.len())
                    + t.open.capacity() * std::mem::size_of::<(u64, SpanKey)>()
                    + t.long.capacity() * std::mem::size_of::<(u64, u64, SpanKey)>()
            })
            .sum();
        table_bytes::<((Pid, Tid), ThreadSpans)>(self.threads.capacity()) + per_thread
    }

    pub fn new(max_threads: usize, max_per_thread: usize) -> ThreadIndex {
        ThreadIndex {
            threads: HashMap::new(),
            lossy_until: 0,
            max_threads: max_threads.max(1),
            max_per_thread: max_per_thread.max(1),
        }
    }

    /// Record a server span, and say what had to be forgotten for it.
    /// `hold` is how long a lost entry may still have been in progress;
    /// `recent` is the oldest instant the parent rules still ask about
    /// (only late CPU samples ask about older ones).
    pub fn insert(
        &mut self,
        pid: Pid,
        tid: Tid,
        entry: ThreadEntry,
        clock: u64,
        hold: u64,
        recent: u64,
    ) -> ThreadInsert {
        let mut kept = ThreadInsert::Clean;
        if !self.threads.contains_key(&(pid, tid)) && self.threads.len() >= self.max_threads {
            self.prune(clock.saturating_sub(hold));
            if self.threads.len() >= self.max_threads {
                self.threads.clear();
                self.lossy_until = clock.saturating_add(hold);
                kept = ThreadInsert::Lost;
            }
        }
        let max = self.max_per_thread;
        let t = self.threads.entry((pid, tid)).or_default();
        if t.entries.len() >= max {
            // Lose the oldest finished span if there is one: only questions
            // about instants before its end become uncertain. Else the
            // oldest in-progress one, whose end is unknown: assume it ends
            // within `hold`.
            let finished = t
                .entries
                .iter()
                .find(|(_, s)| s.end().is_some())
                .map(|(&k, _)| k);
            let lost_until = match finished {
                Some(k) => {
                    let end = t.entries.remove(&k).and_then(|s| {
                        t.removed(&thread_entry(&k, &s));
                        s.end()
                    });
                    end.unwrap_or(clock)
                }
                None => {
                    if let Some((k, s)) = t.entries.pop_first() {
                        t.removed(&thread_entry(&k, &s));
                    }
                    clock.saturating_add(hold)
                }
            };
            t.lossy_until = t.lossy_until.max(lost_until);
            // A busy event loop fills its bound with finished spans inside
            // the samples' window: forgetting one that ended before the
            // rules' horizon costs only a late sample its span.
            kept = kept.max(if lost_until >= recent {
                ThreadInsert::Lost
            } else {
                ThreadInsert::Trimmed
            });
        }
        t.insert(entry);
        kept
    }

    /// The span that started at `start` ended at `end`. Returns whether
    /// another span of the thread started while it was in progress.
    pub fn set_end(&mut self, pid: Pid, tid: Tid, key: SpanKey, start: u64, end: u64) -> bool {
        // An end before its start would escape `prune`: the correlator
        // clamps ends.
        debug_assert!(end >= start, "an end before its start");
        let Some(t) = self.threads.get_mut(&(pid, tid)) else {
            return false;
        };
        let at = (start, key);
        // One descent: the entries from this start on are those that
        // started with it (before it in key order), then it, then the next.
        let mut from = t
            .entries
            .range_mut((Bound::Included((start, 0)), Bound::Unbounded));
        let mut same = false;
        let mut found = false;
        for (k, slot) in from.by_ref() {
            if *k < at {
                same = true;
                continue;
            }
            if *k == at && slot.end().is_none() {
                slot.end = end;
                found = true;
            }
            break;
        }
        if !found {
            return false;
        }
        let next = from.next().is_some_and(|(k, _)| k.0 < end);
        t.open.retain(|o| o.1 != key);
        t.ended(start, end, key);
        next || same
    }

    fn lossy(&self, t: Option<&ThreadSpans>, at: u64) -> bool {
        at < self.lossy_until || t.is_some_and(|t| at < t.lossy_until)
    }

    /// Server spans of `pid`/`tid` that started strictly before `t` and had
    /// not ended at `t` (the rule-4 candidates of a request written at `t`),
    /// each also given to `each`.
    pub fn in_progress(
        &self,
        pid: Pid,
        tid: Tid,
        t: u64,
        mut each: impl FnMut(SpanKey),
    ) -> InProgress {
        let spans = self.threads.get(&(pid, tid));
        let mut q = InProgress {
            count: 0,
            first: None,
            lossy: self.lossy(spans, t),
            served_before: spans
                .and_then(|s| s.entries.first_key_value())
                .is_some_and(|(k, _)| k.0 < t),
        };
        if let Some(s) = spans {
            for e in s.covering(t, true) {
                q.count += 1;
                q.first = q.first.or(Some(e.key));
                each(e.key);
            }
        }
        q
    }

    /// Whether a server span read on `pid`/`tid` at `t` started while
    /// another one there, already ended, was in progress. (One whose end
    /// is not known yet is judged by [`Self::set_end`]: its response may
    /// only be late.)
    pub fn overlaps_ended(&self, pid: Pid, tid: Tid, t: u64) -> bool {
        self.threads
            .get(&(pid, tid))
            .is_some_and(|s| s.covering_finished(t, false).next().is_some())
    }

    /// The one server span in progress on `pid`/`tid` at `t`, if exactly one
    /// is known to be (rule 6).
    pub fn at(&self, pid: Pid, tid: Tid, t: u64) -> Option<SpanId> {
        let spans = self.threads.get(&(pid, tid))?;
        if self.lossy(Some(spans), t) {
            return None;
        }
        let mut found = spans.covering(t, false);
        match (found.next(), found.next()) {
            (Some(e), None) => Some(e.span_id),
            _ => None,
        }
    }

    /// Forget spans that ended before `before`, and empty threads.
    pub fn prune(&mut self, before: u64) {
        self.threads.retain(|_, t| {
            // An entry ends no earlier than it starts (the correlator clamps
            // ends; `insert` and `set_end` assert it), so only those that
            // started before the cut can have ended before it: a walk of
            // every entry (a second of a busy thread's spans, at every
            // prune) is not needed.
            t.entries
                .extract_if(..(before, 0), |_, s| {
                    s.end().is_some_and(|end| end < before)
                })
                .for_each(drop);
            let gone = t.long.partition_point(|l| l.1 < before);
            t.long.drain(..gone);
            !t.entries.is_empty() || t.lossy_until > before
        });
    }

    /// Threads tracked.
    #[cfg(test)]
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Keys held for one thread, in start order.
    #[cfg(test)]
    fn held(&self, pid: Pid, tid: Tid) -> Vec<SpanKey> {
        self.threads
            .get(&(pid, tid))
            .map(|t| t.entries.keys().map(|&(_, k)| k).collect())
            .unwrap_or_default()
    }
}

/// The span keys under one index key: nearly always one, so it is kept
/// inline (no allocation per indexed span). Several are kept sorted, so
/// that adding one is a look at the last (keys are handed out in
/// increasing order, so a new span's key goes last) or a binary search:
/// under a benchmark hitting one URL, thousands of spans share one key.
enum Keys {
    One(SpanKey),
    Many(Vec<SpanKey>),
}

impl Keys {
    fn as_slice(&self) -> &[SpanKey] {
        match self {
            Keys::One(k) => std::slice::from_ref(k),
            Keys::Many(v) => v,
        }
    }

    /// Adds `key`; false when it was there.
    fn add(&mut self, key: SpanKey) -> bool {
        match self {
            Keys::One(k) if *k == key => false,
            Keys::One(k) => {
                *self = Keys::Many(vec![(*k).min(key), (*k).max(key)]);
                true
            }
            Keys::Many(v) => match v.last() {
                Some(&last) if last < key => {
                    v.push(key);
                    true
                }
                _ => match v.binary_search(&key) {
                    Ok(_) => false,
                    Err(i) => {
                        v.insert(i, key);
                        true
                    }
                },
            },
        }
    }

    /// Keeps the keys `keep` accepts; returns how many are left.
    fn retain(&mut self, mut keep: impl FnMut(SpanKey) -> bool) -> usize {
        match self {
            Keys::One(k) => usize::from(keep(*k)),
            Keys::Many(v) => {
                v.retain(|k| keep(*k));
                if let [only] = v.as_slice() {
                    *self = Keys::One(*only);
                }
                self.as_slice().len()
            }
        }
    }
}

/// Span keys by some key (sequence number, request id), bounded.
pub(crate) struct MultiIndex<K> {
    map: HashMap<K, Keys>,
    entries: usize,
    cap: usize,
}

impl<K: Hash + Eq> MultiIndex<K> {
    /// Heap bytes, estimated from capacities.
    pub fn heap_bytes(&self) -> usize {
        let lists: usize = self
            .map
            .values()
            .map(|k| match k {
                Keys::Many(v) => v.capacity() * std::mem::size_of::<SpanKey>(),
                Keys::One(_) => 0,
            })
            .sum();
        table_bytes::<(K, Keys)>(self.map.capacity()) + lists
    }

    pub fn new(cap: usize) -> MultiIndex<K> {
        MultiIndex {
            map: HashMap::new(),
            entries: 0,
            cap: cap.max(1),
        }
    }

    /// Add `key` under `k`. At the bound, forgets entries whose records are
    /// gone (`live`), and everything if that is not enough: returns false
    /// when live entries were forgotten.
    pub fn insert(&mut self, k: K, key: SpanKey, live: impl FnMut(SpanKey) -> bool) -> bool {
        let mut clean = true;
        if self.entries >= self.cap {
            self.prune(live);
            if self.entries >= self.cap {
                self.map.clear();
                self.entries = 0;
                clean = false;
            }
        }
        match self.map.entry(k) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Keys::One(key));
                self.entries += 1;
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                if o.get_mut().add(key) {
                    self.entries += 1;
                }
            }
        }
        clean
    }

    /// The keys under `k`, in increasing order.
    pub fn get(&self, k: &K) -> &[SpanKey] {
        self.map.get(k).map(Keys::as_slice).unwrap_or(&[])
    }

    /// Remove `key` from under `k`.
    pub fn remove(&mut self, k: &K, key: SpanKey) {
        if let Some(v) = self.map.get_mut(k) {
            let before = v.as_slice().len();
            let left = v.retain(|x| x != key);
            self.entries = self.entries.saturating_sub(before - left);
            if left == 0 {
                self.map.remove(k);
            }
        }
    }

    /// Keep only entries for which `live` holds.
    pub fn prune(&mut self, mut live: impl FnMut(SpanKey) -> bool) {
        let mut n = 0;
        self.map.retain(|_, v| {
            let left = v.retain(&mut live);
            n += left;
            left > 0
        });
        self.entries = n;
    }

    /// Entries held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Distinct keys held.
    #[cfg(test)]
    pub fn keys(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy;

    fn e(key: SpanKey, start: u64, end: Option<u64>) -> ThreadEntry {
        ThreadEntry {
            key,
            span_id: SpanId([(key as u8).wrapping_add(1); 8]),
            start,
            end,
        }
    }

    fn keys(ix: &ThreadIndex, p: Pid, t: Tid, at: u64) -> Vec<SpanKey> {
        let mut v = Vec::new();
        let q = ix.in_progress(p, t, at, |k| v.push(k));
        assert_eq!(q.count, v.len());
        assert_eq!(q.first, v.first().copied());
        v.sort_unstable();
        v
    }

    #[test]
    fn in_progress_is_strict_at_start_and_end() {
        let mut ix = ThreadIndex::new(8, 8);
        let (p, t) = (Pid(1), Tid(1));
        assert_eq!(
            ix.insert(p, t, e(1, 10, Some(20)), 0, 100, 0),
            ThreadInsert::Clean
        );
        assert_eq!(
            ix.insert(p, t, e(2, 15, None), 0, 100, 0),
            ThreadInsert::Clean
        );
        assert_eq!(keys(&ix, p, t, 10), Vec::<u64>::new());
        assert_eq!(keys(&ix, p, t, 12), vec![1]);
        assert_eq!(keys(&ix, p, t, 16), vec![1, 2]);
        assert_eq!(keys(&ix, p, t, 20), vec![2]);
        assert_eq!(ix.at(p, t, 10), Some(SpanId([2; 8])));
        assert_eq!(ix.at(p, t, 16), None);
        assert_eq!(ix.at(p, t, 25), Some(SpanId([3; 8])));
        assert_eq!(ix.at(p, Tid(2), 25), None);
        ix.set_end(p, t, 2, 15, 30);
        assert_eq!(ix.at(p, t, 31), None);
        ix.prune(25);
        assert_eq!(keys(&ix, p, t, 12), Vec::<u64>::new());
        ix.prune(31);
        assert_eq!(ix.threads(), 0);
    }

    #[test]
    fn per_thread_overflow_prefers_finished_then_marks_lossy() {
        let mut ix = ThreadIndex::new(8, 2);
        let (p, t) = (Pid(1), Tid(1));
        ix.insert(p, t, e(1, 1, Some(2)), 0, 100, 0);
        ix.insert(p, t, e(2, 3, None), 0, 100, 0);
        assert_eq!(
            ix.insert(p, t, e(3, 4, None), 5, 100, 0),
            ThreadInsert::Lost
        );
        assert_eq!(keys(&ix, p, t, 6), vec![2, 3]);
        assert!(!ix.in_progress(p, t, 6, |_| {}).lossy);
        // Entry 1 ended at 2: instants before that are uncertain now.
        assert!(ix.in_progress(p, t, 1, |_| {}).lossy);
        assert_eq!(
            ix.insert(p, t, e(4, 7, None), 8, 100, 0),
            ThreadInsert::Lost
        );
        assert_eq!(keys(&ix, p, t, 9), vec![3, 4]);
        assert!(ix.in_progress(p, t, 9, |_| {}).lossy);
        assert_eq!(ix.at(p, t, 9), None);
        assert!(!ix.in_progress(p, t, 200, |_| {}).lossy);
    }

    #[test]
    fn overflow_past_the_rules_horizon_is_a_trim_not_a_loss() {
        let mut ix = ThreadIndex::new(8, 2);
        let (p, t) = (Pid(1), Tid(1));
        ix.insert(p, t, e(1, 1, Some(2)), 0, 100, 0);
        ix.insert(p, t, e(2, 3, Some(4)), 0, 100, 0);
        // Entry 1 ended at 2, before the oldest instant the rules ask
        // about (500): a trim. Only instants before its end are uncertain.
        assert_eq!(
            ix.insert(p, t, e(3, 600, None), 1000, 100, 500),
            ThreadInsert::Trimmed
        );
        assert!(ix.in_progress(p, t, 1, |_| {}).lossy);
        assert!(!ix.in_progress(p, t, 500, |_| {}).lossy);
        assert_eq!(keys(&ix, p, t, 601), vec![3]);
        // Entry 2 ended at 4, inside the horizon now asked about: a loss.
        assert_eq!(
            ix.insert(p, t, e(4, 700, None), 1000, 100, 3),
            ThreadInsert::Lost
        );
        // Only in-progress entries left: whichever goes, it is a loss.
        assert_eq!(
            ix.insert(p, t, e(5, 800, None), 1000, 100, 0),
            ThreadInsert::Lost
        );
        assert!(ix.in_progress(p, t, 900, |_| {}).lossy);
    }

    #[test]
    fn long_and_open_spans_are_found_among_many_short_ones() {
        let mut ix = ThreadIndex::new(8, 100_000);
        let (p, t) = (Pid(1), Tid(1));
        // A long span, then an open one, then thousands of short ones.
        ix.insert(p, t, e(1, 100, None), 0, 1, 0);
        ix.insert(p, t, e(2, 150, None), 0, 1, 0);
        ix.set_end(p, t, 1, 100, 50_000);
        for k in 3..5000u64 {
            ix.insert(p, t, e(k, 200 + k * 10, None), 0, 1, 0);
            ix.set_end(p, t, k, 200 + k * 10, 200 + k * 10 + 5);
        }
        assert_eq!(keys(&ix, p, t, 40_003), vec![1, 2, 3980]);
        assert_eq!(keys(&ix, p, t, 60_000), vec![2]);
        // Out-of-order arrival keeps the order by start.
        ix.insert(p, t, e(9000, 40_001, None), 0, 1, 0);
        assert_eq!(keys(&ix, p, t, 40_003), vec![1, 2, 3980, 9000]);
    }

    #[test]
    fn thread_overflow_clears_and_marks_all_lossy() {
        let mut ix = ThreadIndex::new(1, 4);
        ix.insert(Pid(1), Tid(1), e(1, 1, None), 0, 100, 0);
        assert_eq!(
            ix.insert(Pid(1), Tid(2), e(2, 2, None), 10, 100, 0),
            ThreadInsert::Lost
        );
        assert!(ix.in_progress(Pid(1), Tid(2), 50, |_| {}).lossy);
        assert!(!ix.in_progress(Pid(1), Tid(2), 500, |_| {}).lossy);
    }

    #[test]
    fn multi_index_bounds() {
        let mut ix: MultiIndex<u32> = MultiIndex::new(2);
        ix.insert(1, 10, |_| true);
        ix.insert(1, 10, |_| true);
        ix.insert(2, 11, |_| true);
        assert_eq!(ix.len(), 2);
        ix.insert(3, 12, |k| k != 10);
        assert_eq!(ix.get(&1), &[] as &[u64]);
        assert_eq!(ix.len(), 2);
        ix.insert(4, 13, |_| true);
        assert_eq!(ix.len(), 1);
        ix.remove(&4, 13);
        assert_eq!(ix.len(), 0);
        ix.remove(&4, 13);
        assert_eq!(ix.len(), 0);
    }

    #[test]
    fn keys_under_one_index_key_stay_sorted_and_distinct() {
        let mut ix: MultiIndex<u32> = MultiIndex::new(100);
        // New spans come in key order; a response's ids add an older span.
        for k in [20, 10, 30, 40, 25, 40, 10, 5] {
            ix.insert(1, k, |_| true);
        }
        assert_eq!(ix.get(&1), &[5, 10, 20, 25, 30, 40]);
        assert_eq!(ix.len(), 6);
        ix.remove(&1, 25);
        ix.insert(1, 50, |_| true);
        assert_eq!(ix.get(&1), &[5, 10, 20, 30, 40, 50]);
    }

    proptest::proptest! {
        /// Spans reported late (out of start order, as a stream held up by
        /// a hole delivers them), short and long, open and ended: every
        /// query answers what a scan of all spans answers.
        #[test]
        fn late_inserts_answer_like_a_scan(
            spans in proptest::collection::vec(
                // Coarse times: equal starts and probes on a boundary are
                // common; spans shorter and longer than SHORT_NS.
                (0u64..40, 0u64..30, proptest::bool::ANY, proptest::bool::ANY)
                    .prop_map(|(s, l, a, b)| (s * 100_000, l * 100_000, a, b)),
                1..60,
            ),
            probes in proptest::collection::vec((0u64..160).prop_map(|q| q * 50_000), 1..20),
            cut in (0u64..160).prop_map(|q| q * 50_000),
        ) {
            let (p, t) = (Pid(1), Tid(1));
            let mut ix = ThreadIndex::new(8, 1 << 20);
            // What a scan of every span answers from.
            let mut model: Vec<ThreadEntry> = Vec::new();
            for (i, &(start, len, ends, ended_at_insert)) in spans.iter().enumerate() {
                let key = i as SpanKey;
                let end = (ends && ended_at_insert).then_some(start + len);
                proptest::prop_assert_eq!(ix.insert(p, t, e(key, start, end), 0, 100, 0), ThreadInsert::Clean);
                model.push(e(key, start, end));
            }
            for (i, &(start, len, ends, ended_at_insert)) in spans.iter().enumerate() {
                if !ends || ended_at_insert {
                    continue;
                }
                let key = i as SpanKey;
                let end = start + len;
                let mut sorted = model.clone();
                sorted.sort_by_key(|m| (m.start, m.key));
                let at = sorted.iter().position(|m| m.key == key).unwrap();
                let next = sorted.get(at + 1).is_some_and(|m| m.start < end);
                let same = at > 0 && sorted[at - 1].start == start;
                proptest::prop_assert_eq!(ix.set_end(p, t, key, start, end), next || same);
                model[i].end = Some(end);
            }
            for &at in &probes {
                let scan = |strict: bool| {
                    let mut v: Vec<SpanKey> = model
                        .iter()
                        .filter(|m| m.covers(at, strict))
                        .map(|m| m.key)
                        .collect();
                    v.sort_unstable();
                    v
                };
                proptest::prop_assert_eq!(keys(&ix, p, t, at), scan(true));
                let loose = scan(false);
                let one = (loose.len() == 1).then(|| SpanId([(loose[0] as u8).wrapping_add(1); 8]));
                proptest::prop_assert_eq!(ix.at(p, t, at), one);
                let ended = model
                    .iter()
                    .any(|m| m.end.is_some() && m.covers(at, false));
                proptest::prop_assert_eq!(ix.overlaps_ended(p, t, at), ended);
            }
            // Pruning what ended before `cut` changes no answer from `cut` on.
            let answers = |ix: &ThreadIndex| -> Vec<_> {
                probes
                    .iter()
                    .filter(|&&at| at >= cut)
                    .map(|&at| (keys(ix, p, t, at), ix.at(p, t, at), ix.overlaps_ended(p, t, at)))
                    .collect()
            };
            let before = answers(&ix);
            ix.prune(cut);
            proptest::prop_assert_eq!(before, answers(&ix));
            // And exactly what ended before it is gone.
            let mut kept: Vec<_> = model.iter().filter(|m| m.end.is_none_or(|end| end >= cut)).collect();
            kept.sort_by_key(|m| (m.start, m.key));
            let kept: Vec<SpanKey> = kept.iter().map(|m| m.key).collect();
            proptest::prop_assert_eq!(ix.held(p, t), kept);
        }
    }
}
