//! Adoption: a trace the agent made up gives way to the one a process
//! started itself.
//!
//! A proxy or an instrumented service at the edge of a mesh starts a trace
//! for a request that came without context and propagates it on its calls.
//! The agent made up a trace for the same request's first spans (the
//! caller's client span, the proxy's server span), so its spans of one
//! request would split in two traces at the proxy's call (the header wins).
//! When nothing of the made-up trace has been exported yet, it is replaced
//! by the propagated one: every span of it is exported in that trace, and
//! the call keeps the parent the rules found.
//!
//! Spans of the made-up trace may finish before the call's parent is
//! decided (the decision waits for the call's end), so those that finish
//! while a call carrying another trace may be their child is undecided are
//! held, bounded: until the calls are decided, for at most the retention,
//! and never past a flush or the memory bound (counted as cut).

use foldhash::{HashMap, HashSet};
use smallvec::SmallVec;

use crate::classify::Mode;
use crate::config::IdGen;
use crate::correlator::{CallCause, Correlator, SpanRec, TraceCtx};
use crate::index::{table_bytes, SpanKey};

/// A made-up trace that a propagated one may replace.
struct Adoption {
    /// Undecided calls carrying another trace that may be its children.
    pending: u32,
    /// Finished spans of the trace held until those calls are decided.
    held: Vec<SpanKey>,
    /// The propagated trace that replaced it.
    into: Option<TraceCtx>,
    /// When held spans began to wait, or when the trace was replaced: the
    /// entry goes a retention later.
    since: u64,
}

impl Adoption {
    fn new(now: u64) -> Self {
        Adoption {
            pending: 0,
            held: Vec::new(),
            into: None,
            since: now,
        }
    }
}

/// Made-up traces that may be replaced, and the calls that may do it.
#[derive(Default)]
pub(crate) struct Adoptions {
    /// By anchor: the span that made the trace up, or a server span whose
    /// trace is not known yet (merged into its trace's entry once it is).
    by_anchor: HashMap<SpanKey, Adoption>,
    /// Undecided client spans carrying a propagated trace, and the server
    /// spans in flight they may be children of.
    calls: HashMap<SpanKey, SmallVec<[SpanKey; 2]>>,
    /// When the records were last walked for the replaced traces they
    /// still carry.
    walked: u64,
}

impl Adoptions {
    pub fn is_empty(&self) -> bool {
        self.by_anchor.is_empty() && self.calls.is_empty()
    }

    /// Heap bytes, estimated from capacities.
    pub fn heap_bytes(&self) -> usize {
        let held: usize = self
            .by_anchor
            .values()
            .map(|a| a.held.capacity() * std::mem::size_of::<SpanKey>())
            .sum();
        table_bytes::<(SpanKey, Adoption)>(self.by_anchor.capacity())
            + table_bytes::<(SpanKey, SmallVec<[SpanKey; 2]>)>(self.calls.capacity())
            + held
    }
}

/// What `emit` does with a finished span of a made-up trace.
pub(crate) enum AtEmit {
    /// Export it in its trace.
    Plain,
    /// Export it in the trace that replaced its own.
    Into(TraceCtx),
    /// Not yet: a call that may replace its trace is undecided.
    Held,
}

impl<G: IdGen> Correlator<G> {
    /// The entry a server span's trace is under: its trace's maker, or the
    /// span itself while its trace is not known; `None` when its trace was
    /// propagated to it (nothing to replace).
    fn anchor_of(&self, s: SpanKey) -> Option<SpanKey> {
        let r = self.spans.get(&s)?;
        match &r.ctx {
            None => Some(s),
            Some(ctx) => ctx.made_by,
        }
    }

    /// Whether a span of the trace `root` made up was exported already (or
    /// may have been: `root` is forgotten).
    fn trace_exported(&self, root: SpanKey) -> bool {
        self.spans.get(&root).is_none_or(|r| r.trace_exported)
    }

    /// Client span `c` carries a propagated trace: the made-up traces of
    /// the requests in flight it may have been made for wait for its
    /// decision before any of their spans is exported.
    pub(crate) fn note_propagating_call(&mut self, c: SpanKey) {
        let Some(rec) = self.spans.get(&c) else {
            return;
        };
        if rec.header.is_none() {
            return;
        }
        let (pid, tid, t) = (rec.pid, rec.tid, rec.start);
        let (fingerprint, body, rids) = (rec.fingerprint, rec.body, rec.request_ids);
        // Every candidate, however many: the parent may be any of them
        // (identical requests in flight, told apart by a runtime hook).
        let mut found: SmallVec<[SpanKey; 4]> = SmallVec::new();
        let mut add = |sk: SpanKey, s: &SpanRec| {
            let in_flight = s.start <= t && s.end.is_none_or(|e| t <= e);
            if in_flight && !found.contains(&sk) {
                found.push(sk);
            }
        };
        self.forwarded_servers(pid, fingerprint, body, &mut add);
        self.id_servers(pid, &rids, &mut add);
        if let Some(CallCause::Conn(cause)) = self.call_causes.get(&c) {
            for &sk in self.conn_servers.get(&cause.conn.0) {
                if let Some(s) = self.spans.get(&sk).filter(|s| s.pid == pid) {
                    add(sk, s);
                }
            }
        }
        // The request in progress on the thread is a candidate only where
        // rule 4 may name it.
        if self.classify.mode(pid) == Mode::ThreadPerRequest {
            let spans = &self.spans;
            self.threads.in_progress(pid, tid, t, |sk| {
                if let Some(s) = spans.get(&sk) {
                    add(sk, s);
                }
            });
        }
        // Bounded like the records: past it, calls do not hold spans (their
        // header may then win, counted as a conflict).
        if self.adoptions.by_anchor.len() >= self.cfg.max_spans {
            self.counters.adoption_overflow += 1;
            return;
        }
        let mut marked: SmallVec<[SpanKey; 2]> = SmallVec::new();
        for sk in found {
            let Some(anchor) = self.anchor_of(sk) else {
                continue;
            };
            let made_up = anchor != sk || self.spans.get(&sk).is_some_and(|s| s.ctx.is_some());
            if made_up && self.trace_exported(anchor) {
                continue;
            }
            let now = self.clock;
            self.adoptions
                .by_anchor
                .entry(anchor)
                .or_insert_with(|| Adoption::new(now))
                .pending += 1;
            marked.push(sk);
        }
        if !marked.is_empty() {
            self.adoptions.calls.insert(c, marked);
        }
    }

    /// Span `k` was given its trace: a server span's entry moves to its
    /// trace's (or goes, when the trace was propagated), and a call's
    /// decision releases the traces it held.
    pub(crate) fn trace_settled(&mut self, k: SpanKey) {
        if self.adoptions.is_empty() {
            return;
        }
        if let Some(a) = self.adoptions.by_anchor.remove(&k) {
            match self.anchor_of(k) {
                Some(root) if root == k => {
                    self.adoptions.by_anchor.insert(k, a);
                }
                Some(root) => {
                    let e = self
                        .adoptions
                        .by_anchor
                        .entry(root)
                        .or_insert_with(|| Adoption::new(a.since));
                    e.pending += a.pending;
                    e.held.extend(a.held);
                    e.since = e.since.min(a.since);
                }
                // Nothing held: held spans have a trace, `k` had none.
                None => {}
            }
        }
        if let Some(marked) = self.adoptions.calls.remove(&k) {
            for sk in marked {
                let Some(anchor) = self.anchor_of(sk) else {
                    continue;
                };
                let done = match self.adoptions.by_anchor.get_mut(&anchor) {
                    Some(a) => {
                        a.pending = a.pending.saturating_sub(1);
                        a.pending == 0
                    }
                    None => false,
                };
                if done {
                    self.release(anchor, false);
                }
            }
        }
    }

    /// A call carrying trace `into` was made for a request of the trace
    /// `root` made up: replace that trace, unless part of it was exported
    /// or another trace replaced it. Returns whether it is replaced.
    pub(crate) fn adopt(&mut self, root: SpanKey, into: &TraceCtx) -> bool {
        if self.trace_exported(root) {
            return false;
        }
        let full = self.adoptions.by_anchor.len() >= self.cfg.max_spans;
        if full && !self.adoptions.by_anchor.contains_key(&root) {
            self.counters.adoption_overflow += 1;
            return false;
        }
        let now = self.clock;
        let a = self
            .adoptions
            .by_anchor
            .entry(root)
            .or_insert_with(|| Adoption::new(now));
        match &a.into {
            Some(t) => t.trace_id == into.trace_id,
            None => {
                a.into = Some(into.clone());
                a.since = now;
                true
            }
        }
    }

    /// What to do with finished span `k` of the trace `root` made up, about
    /// to be exported (unless held; `force`: never held).
    pub(crate) fn at_emit(&mut self, k: SpanKey, root: SpanKey, force: bool) -> AtEmit {
        let entry = if self.adoptions.by_anchor.is_empty() {
            None
        } else {
            self.adoptions.by_anchor.get_mut(&root)
        };
        let at = match entry {
            Some(a) => match &a.into {
                Some(t) => AtEmit::Into(t.clone()),
                None if a.pending > 0 && force => {
                    self.counters.adoption_holds_cut += 1;
                    AtEmit::Plain
                }
                None if a.pending > 0 => {
                    if a.held.is_empty() {
                        a.since = self.clock;
                    }
                    a.held.push(k);
                    self.counters.adoption_holds += 1;
                    AtEmit::Held
                }
                None => AtEmit::Plain,
            },
            None => AtEmit::Plain,
        };
        if matches!(at, AtEmit::Plain) {
            if let Some(r) = self.spans.get_mut(&root) {
                r.trace_exported = true;
            }
        }
        at
    }

    /// Export the spans held for `anchor`'s trace; `cut`: before the calls
    /// that held them were decided. An entry that replaced nothing goes.
    fn release(&mut self, anchor: SpanKey, cut: bool) {
        let Some(a) = self.adoptions.by_anchor.get_mut(&anchor) else {
            return;
        };
        let held = std::mem::take(&mut a.held);
        if a.into.is_none() {
            self.adoptions.by_anchor.remove(&anchor);
        }
        for k in held {
            if self.spans.get(&k).is_some_and(|r| !r.emitted) {
                if cut {
                    self.counters.adoption_holds_cut += 1;
                }
                self.emit_now(k, true);
            }
        }
    }

    /// Export what waited a retention. A replaced trace is forgotten once
    /// no record carries it any more: a span finishing later, or a late
    /// child of a retained one, would otherwise be exported in the
    /// made-up trace, apart from its parent. The records are walked for
    /// that at most once a retention (an edge proxy replaces a trace per
    /// request: a walk at every prune would cost a pass over every record
    /// each window), so a replaced trace is kept up to two retentions.
    pub(crate) fn expire_adoptions(&mut self) {
        if self.adoptions.is_empty() {
            return;
        }
        let retention = self.cfg.retention_ns;
        let before = self.clock.saturating_sub(retention);
        let walk_due = self.clock.saturating_sub(self.adoptions.walked) >= retention;
        let mut replaced: HashSet<SpanKey> = HashSet::default();
        let mut unreplaced: Vec<SpanKey> = Vec::new();
        for (&k, a) in &self.adoptions.by_anchor {
            if a.since >= before {
                continue;
            }
            if a.into.is_none() {
                unreplaced.push(k);
            } else if walk_due {
                replaced.insert(k);
            }
        }
        for k in unreplaced {
            self.release(k, true);
        }
        if !replaced.is_empty() {
            self.adoptions.walked = self.clock;
            for r in self.spans.values() {
                if let Some(root) = r.ctx.as_ref().and_then(|c| c.made_by) {
                    replaced.remove(&root);
                    if replaced.is_empty() {
                        break;
                    }
                }
            }
            // Nothing held: spans of a replaced trace are never held.
            for k in replaced {
                self.adoptions.by_anchor.remove(&k);
            }
        }
        let spans = &self.spans;
        self.adoptions
            .calls
            .retain(|c, _| spans.get(c).is_some_and(|r| r.ctx.is_none()));
    }
}
