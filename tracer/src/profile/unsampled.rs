//! Server spans that finished without a sample, kept so that a sample
//! arriving after its span finished (the unwinding worker was behind) is
//! still named.
//!
//! Nearly every span finishes without a sample (at 99 Hz per CPU a few
//! hundred of tens of thousands of spans per second have one), and a late
//! sample is rare, so this is shaped for the write: a ring of fixed slots
//! whose name buffers are reused (no allocation per span once warm), and a
//! lookup that scans the ids (tens of microseconds, paid only by the first
//! sample of a span not already known).
use correlate::{SpanId, TraceId};

/// A span that finished with no sample: its trace, end and name.
pub struct Unsampled<'a> {
    pub trace_id: TraceId,
    pub end_ns: u64,
    pub name: &'a str,
}

struct Slot {
    trace_id: TraceId,
    end_ns: u64,
    name: String,
}

/// The last `capacity` spans that finished with no sample, oldest first.
pub struct UnsampledSpans {
    /// Span ids as integers, scanned by [`UnsampledSpans::take`]; 0 marks a
    /// free slot (span ids are never all zero).
    ids: Vec<u64>,
    slots: Vec<Slot>,
    capacity: usize,
    /// The slot the next span goes to.
    next: usize,
    /// Slots in use, counting back from `next`.
    len: usize,
}

/// Names longer than this give their buffer back when their slot is
/// reused, so that one long name does not stay held in every slot.
const KEEP_NAME_BYTES: usize = 256;

fn key(id: SpanId) -> u64 {
    u64::from_ne_bytes(id.0)
}

impl UnsampledSpans {
    /// An empty ring of at most `capacity` spans (at least one).
    pub fn new(capacity: usize) -> UnsampledSpans {
        UnsampledSpans {
            ids: Vec::new(),
            slots: Vec::new(),
            capacity: capacity.max(1),
            next: 0,
            len: 0,
        }
    }

    /// Spans held.
    pub fn held(&self) -> usize {
        self.len
    }

    /// Heap bytes held: the slots and their name buffers.
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.ids.capacity() * std::mem::size_of::<u64>()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.slots.iter().map(|s| s.name.capacity()).sum::<usize>()
    }

    /// Adds a span that finished with no sample; the oldest goes when the
    /// ring is full.
    pub fn push(&mut self, id: SpanId, trace_id: TraceId, end_ns: u64, name: &str) {
        if !id.is_valid() {
            return;
        }
        if self.slots.len() < self.capacity && self.next == self.slots.len() {
            self.ids.push(key(id));
            self.slots.push(Slot {
                trace_id,
                end_ns,
                name: name.to_owned(),
            });
        } else {
            let slot = &mut self.slots[self.next];
            if slot.name.capacity() > KEEP_NAME_BYTES {
                slot.name = String::new();
            }
            slot.name.clear();
            slot.name.push_str(name);
            slot.trace_id = trace_id;
            slot.end_ns = end_ns;
            self.ids[self.next] = key(id);
        }
        self.next = (self.next + 1) % self.capacity;
        self.len = (self.len + 1).min(self.capacity);
    }

    fn position(&self, id: SpanId) -> Option<usize> {
        let k = key(id);
        if k == 0 {
            return None;
        }
        self.ids.iter().position(|&x| x == k)
    }

    /// Takes the span `id` out, if held (it has a sample now and is kept
    /// elsewhere).
    pub fn take(&mut self, id: SpanId) -> Option<Unsampled<'_>> {
        let i = self.position(id)?;
        self.ids[i] = 0;
        let s = &self.slots[i];
        Some(Unsampled {
            trace_id: s.trace_id,
            end_ns: s.end_ns,
            name: &s.name,
        })
    }

    /// Whether the span `id` is held.
    #[cfg(test)]
    fn holds(&self, id: SpanId) -> bool {
        self.position(id).is_some()
    }

    /// Forgets the spans that ended before `end_ns`, oldest first, stopping
    /// at the first that did not (spans finish roughly in end order).
    pub fn expire(&mut self, end_ns: u64) {
        while self.len > 0 {
            let oldest = (self.next + self.capacity - self.len) % self.capacity;
            if self.ids[oldest] != 0 && self.slots[oldest].end_ns >= end_ns {
                break;
            }
            self.ids[oldest] = 0;
            self.len -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> SpanId {
        SpanId([n, 0, 0, 0, 0, 0, 0, 1])
    }

    #[test]
    fn keeps_the_last_spans_and_reuses_their_buffers() {
        let mut r = UnsampledSpans::new(3);
        for n in 1..=3 {
            r.push(id(n), TraceId([n; 16]), u64::from(n), &format!("GET /{n}"));
        }
        assert!(r.holds(id(2)));
        let bytes = r.heap_bytes();
        // A fourth span takes the oldest slot, in the same buffers.
        r.push(id(4), TraceId([4; 16]), 4, "GET /4");
        assert!(!r.holds(id(1)));
        assert_eq!((r.held(), r.heap_bytes()), (3, bytes));
        assert_eq!(r.take(id(4)).unwrap().name, "GET /4");
        // A long name gives its buffer back when its slot is reused.
        let long = "x".repeat(KEEP_NAME_BYTES * 4);
        r.push(id(5), TraceId([5; 16]), 5, &long);
        assert_eq!(r.take(id(5)).unwrap().name, long);
        for n in 6..=8 {
            r.push(id(n), TraceId([n; 16]), u64::from(n), "GET /");
        }
        assert!(r.heap_bytes() < bytes + KEEP_NAME_BYTES);
    }

    #[test]
    fn forgets_and_expires() {
        let mut r = UnsampledSpans::new(4);
        for n in 1..=4 {
            r.push(id(n), TraceId([n; 16]), u64::from(n) * 10, "GET /");
        }
        let s = r.take(id(3)).unwrap();
        assert_eq!(
            (s.name, s.end_ns, s.trace_id),
            ("GET /", 30, TraceId([3; 16]))
        );
        assert!(!r.holds(id(3)) && r.take(id(3)).is_none());
        assert!(!r.holds(SpanId::default()));
        r.expire(25);
        assert!(!r.holds(id(1)) && !r.holds(id(2)));
        assert!(r.holds(id(4)));
        // The forgotten slot goes with the expiry of older spans.
        r.expire(40);
        assert_eq!(r.held(), 1);
        r.expire(u64::MAX);
        assert_eq!(r.held(), 0);
        // Invalid ids are not kept.
        r.push(SpanId::default(), TraceId([1; 16]), 1, "GET /");
        assert_eq!(r.held(), 0);
    }
}
