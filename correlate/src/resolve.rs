//! Parent decisions (rules 3, 4 and 5), trace-context propagation down the
//! span tree, emission, and the bounds on held spans.

use crate::config::IdGen;
use crate::correlator::{Correlator, Parent, SpanRec, Timer, TraceCtx};
use crate::index::SpanKey;
use crate::model::{ParentSource, Span, SpanKind, Status};

/// Counts distinct candidates, keeping the one when there is one.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum One {
    #[default]
    None,
    Only(SpanKey),
    Several,
}

impl One {
    fn add(&mut self, k: SpanKey) {
        *self = match *self {
            One::None => One::Only(k),
            One::Only(o) if o == k => One::Only(o),
            _ => One::Several,
        };
    }

    fn only(self) -> Option<SpanKey> {
        match self {
            One::Only(k) => Some(k),
            _ => None,
        }
    }
}

/// Longest parent chain walked when settling a span early.
const MAX_CHAIN: usize = 256;

/// The parent a span gets when no span of ours is its parent: the
/// propagated header's span, else none.
fn header_or_root(rec: &SpanRec) -> (Parent, ParentSource) {
    if rec.header.is_some() {
        (Parent::Remote, ParentSource::Header)
    } else {
        (Parent::Root, ParentSource::Root)
    }
}

/// Do a client span `c` and a server span `s` have mirrored addresses?
fn mirrored(c: &SpanRec, s: &SpanRec) -> bool {
    match (c.addrs, s.addrs) {
        (Some((cl, cr)), Some((sl, sr))) => cl == sr && cr == sl,
        _ => false,
    }
}

/// Could client `c` and server `s` be one request through address
/// translation: same sequence number (checked by the caller), same method
/// and target, client first and within the window.
fn nat_pair(c: &SpanRec, s: &SpanRec, window: u64) -> bool {
    c.fingerprint == s.fingerprint
        && c.start <= s.start
        && s.start - c.start <= window
        && !mirrored(c, s)
}

fn shares_request_id(a: &SpanRec, b: &SpanRec) -> bool {
    a.request_ids.shares(&b.request_ids)
}

impl<G: IdGen> Correlator<G> {
    fn parent_ref(&self, key: SpanKey) -> Option<Parent> {
        self.spans.get(&key).map(|r| Parent::Span(key, r.span_id))
    }

    fn schedule_decision(&mut self, key: SpanKey) {
        let deadline = self.clock.saturating_add(self.cfg.window_ns);
        if let Some(r) = self.spans.get_mut(&key) {
            // A replaced deadline stays queued; it is skipped when due.
            r.decide_at = Some(deadline);
            self.timers.push_back((deadline, Timer::Decide(key)));
        }
    }

    fn cancel_decision(&mut self, key: SpanKey) {
        if let Some(r) = self.spans.get_mut(&key) {
            r.decide_at = None;
        }
    }

    /// A server span's request was read: find the client span that wrote it
    /// (rule 3), else wait for it if the peer is on this host, else settle.
    pub(crate) fn server_arrived(&mut self, key: SpanKey) {
        let Some(s) = self.spans.get(&key) else {
            return;
        };
        let Some((_, remote)) = s.addrs else {
            self.decide(key);
            return;
        };
        let window = self.cfg.window_ns;
        let seq = s.seq;
        let mut exact = None;
        let mut nat = Vec::new();
        for &ck in self.seq_clients.get(&seq) {
            let Some(c) = self.spans.get(&ck) else {
                continue;
            };
            if c.kind != SpanKind::Client || c.matched || c.seq != s.seq {
                continue;
            }
            if mirrored(c, s) {
                if c.start <= s.start {
                    exact = Some(ck);
                    break;
                }
                self.counters.clock_anomaly += 1;
            } else if self.cfg.nat_matching && nat_pair(c, s, window) {
                nat.push(ck);
            }
        }
        if let Some(ck) = exact {
            self.link_mirror(key, ck, false);
            return;
        }
        if nat.len() == 1 {
            self.link_mirror(key, nat[0], true);
            return;
        }
        if self.is_local(remote.ip()) {
            if let Some(s) = self.spans.get_mut(&key) {
                s.waiting_mirror = true;
            }
            let spans = &self.spans;
            self.seq_servers
                .insert(seq, key, |k| spans.contains_key(&k));
            self.schedule_decision(key);
        } else {
            self.decide(key);
        }
    }

    /// A client span's request was written: give it to a server span waiting
    /// for it (rule 3), remember it for one still to come, and schedule its
    /// own parent decision (rule 4 needs the reorder window).
    pub(crate) fn client_arrived(&mut self, key: SpanKey) {
        let Some(c) = self.spans.get(&key) else {
            return;
        };
        let window = self.cfg.window_ns;
        let remote_local = c.addrs.is_some_and(|(_, r)| self.is_local(r.ip()));
        let seq = c.seq;
        let mut exact = None;
        let mut late = false;
        let mut nat = Vec::new();
        if c.addrs.is_some() {
            for &sk in self.seq_servers.get(&seq) {
                let Some(s) = self.spans.get(&sk) else {
                    continue;
                };
                if s.kind != SpanKind::Server || s.seq != seq {
                    continue;
                }
                let waiting = s.parent == Parent::Undecided && s.waiting_mirror;
                if mirrored(c, s) {
                    if !waiting {
                        late = true;
                    } else if c.start <= s.start {
                        exact = Some(sk);
                        break;
                    } else {
                        self.counters.clock_anomaly += 1;
                    }
                } else if waiting && self.cfg.nat_matching && nat_pair(c, s, window) {
                    nat.push(sk);
                }
            }
        }
        let linked = match (exact, nat.as_slice()) {
            (Some(sk), _) => Some((sk, false)),
            (None, [sk]) => Some((*sk, true)),
            _ => None,
        };
        match linked {
            Some((sk, via_nat)) => self.link_mirror(sk, key, via_nat),
            None => {
                if late {
                    self.counters.late_mirror += 1;
                }
                if remote_local || self.cfg.nat_matching {
                    let spans = &self.spans;
                    self.seq_clients
                        .insert(seq, key, |k| spans.contains_key(&k));
                }
            }
        }
        self.schedule_decision(key);
    }

    /// Server span `s` is the other end of client span `c` (rule 3).
    fn link_mirror(&mut self, s: SpanKey, c: SpanKey, via_nat: bool) {
        let Some(parent) = self.parent_ref(c) else {
            return;
        };
        self.cancel_decision(s);
        if let Some(cr) = self.spans.get_mut(&c) {
            cr.matched = true;
            let seq = cr.seq;
            self.seq_clients.remove(&seq, c);
        }
        if let Some(sr) = self.spans.get_mut(&s) {
            sr.parent = parent;
            sr.source = if via_nat {
                ParentSource::Nat
            } else {
                ParentSource::Mirror
            };
            sr.waiting_mirror = false;
        }
        self.resolve(s);
    }

    /// Settle the parent of a span that is still undecided, with the
    /// evidence at hand.
    pub(crate) fn decide(&mut self, key: SpanKey) {
        self.cancel_decision(key);
        let Some(rec) = self.spans.get(&key) else {
            return;
        };
        if rec.parent != Parent::Undecided {
            return;
        }
        let (parent, source) = match rec.kind {
            SpanKind::Server => {
                if rec.waiting_mirror {
                    self.counters.mirror_expired += 1;
                }
                header_or_root(rec)
            }
            SpanKind::Client => self.decide_client(key),
        };
        if let Some(r) = self.spans.get_mut(&key) {
            r.parent = parent;
            r.source = source;
            r.waiting_mirror = false;
        }
        self.resolve(key);
    }

    /// Rules 4 and 5 for a client span: the server span in progress on its
    /// thread when it is the only one, or the one a request id or the
    /// propagated trace id singles out; else the header's span or none.
    /// Never a guess: several candidates and no evidence is counted.
    fn decide_client(&mut self, key: SpanKey) -> (Parent, ParentSource) {
        let Some(c) = self.spans.get(&key) else {
            return (Parent::Root, ParentSource::Root);
        };
        let fallback = header_or_root(c);
        let (pid, tid, t) = (c.pid, c.tid, c.start);
        let q = self.threads.in_progress(pid, tid, t);
        if q.count == 1 && !q.lossy {
            return match q.first.and_then(|k| self.parent_ref(k)) {
                Some(p) => (p, ParentSource::Thread),
                None => fallback, // the only candidate is forgotten
            };
        }
        if q.count > 0 {
            let trace = c.header.as_ref().map(|h| h.trace_id);
            let (mut by_rid, mut by_trace) = (One::default(), One::default());
            self.threads.each_in_progress(pid, tid, t, |k| {
                let Some(s) = self.spans.get(&k) else {
                    return;
                };
                if shares_request_id(s, c) {
                    by_rid.add(k);
                }
                if trace.is_some() && s.header.as_ref().map(|h| h.trace_id) == trace {
                    by_trace.add(k);
                }
            });
            if let Some(p) = by_rid.only().and_then(|k| self.parent_ref(k)) {
                return (p, ParentSource::RequestId);
            }
            if let Some(p) = by_trace.only().and_then(|k| self.parent_ref(k)) {
                return (p, ParentSource::ThreadContext);
            }
            self.counters.ambiguous_parent += 1;
            return fallback;
        }
        // Nothing visible on the thread: a server span of the same process
        // (any thread) in progress and sharing a request id.
        let mut found = One::default();
        for rid in c.request_ids.as_slice() {
            for &sk in self.rid_servers.get(rid) {
                let Some(s) = self.spans.get(&sk) else {
                    continue;
                };
                let in_progress = s.start < t && s.end.is_none_or(|e| t < e);
                if s.kind == SpanKind::Server
                    && s.pid == pid
                    && in_progress
                    && shares_request_id(s, c)
                {
                    found.add(sk);
                }
            }
        }
        match found {
            One::None => fallback,
            One::Only(k) => self
                .parent_ref(k)
                .map_or(fallback, |p| (p, ParentSource::RequestId)),
            One::Several => {
                self.counters.ambiguous_parent += 1;
                fallback
            }
        }
    }

    /// Give `start` its trace context once its parent's is known, and pass
    /// it on to the children waiting for it; emit the finished ones.
    pub(crate) fn resolve(&mut self, start: SpanKey) {
        enum Next {
            Fresh,
            Header,
            Inherit(TraceCtx),
            Wait(SpanKey),
        }
        let mut work = std::mem::take(&mut self.work);
        work.clear();
        work.push(start);
        while let Some(k) = work.pop() {
            let Some(rec) = self.spans.get(&k) else {
                continue;
            };
            if rec.ctx.is_some() {
                continue;
            }
            let next = match rec.parent {
                Parent::Undecided => continue,
                Parent::Root => Next::Fresh,
                Parent::Remote => Next::Header,
                Parent::Span(p, _) => match self.spans.get(&p) {
                    Some(pr) => match &pr.ctx {
                        Some(ctx) => {
                            let conflict = rec
                                .header
                                .as_ref()
                                .is_some_and(|h| h.trace_id != ctx.trace_id);
                            if conflict {
                                self.counters.context_conflict += 1;
                                Next::Header
                            } else {
                                Next::Inherit(ctx.clone())
                            }
                        }
                        None => Next::Wait(p),
                    },
                    // The parent was forgotten before its trace was known.
                    None => {
                        if rec.header.is_some() {
                            Next::Header
                        } else {
                            Next::Fresh
                        }
                    }
                },
            };
            let ctx = match next {
                Next::Wait(p) => {
                    if let Some(pr) = self.spans.get_mut(&p) {
                        if !pr.waiting_children.contains(&k) {
                            pr.waiting_children.push(k);
                        }
                    }
                    continue;
                }
                Next::Inherit(ctx) => ctx,
                Next::Header => match rec.header.as_ref() {
                    Some(h) => {
                        let ctx = TraceCtx {
                            trace_id: h.trace_id,
                            flags: h.flags,
                            state: h.trace_state.clone(),
                        };
                        if let Some(r) = self.spans.get_mut(&k) {
                            r.parent = Parent::Remote;
                            r.source = ParentSource::Header;
                        }
                        ctx
                    }
                    None => self.fresh_root(k),
                },
                Next::Fresh => self.fresh_root(k),
            };
            let Some(r) = self.spans.get_mut(&k) else {
                continue;
            };
            r.ctx = Some(ctx);
            work.append(&mut r.waiting_children);
            if r.end.is_some() && !r.emitted {
                self.emit(k);
            }
        }
        self.work = work;
    }

    /// Make `key` a root of a new trace and return that trace.
    fn fresh_root(&mut self, key: SpanKey) -> TraceCtx {
        let trace_id = self.fresh_trace_id();
        if let Some(r) = self.spans.get_mut(&key) {
            r.parent = Parent::Root;
            r.source = ParentSource::Root;
        }
        TraceCtx {
            trace_id,
            flags: 1,
            state: None,
        }
    }

    /// Hand a finished span with a known trace to the output.
    pub(crate) fn emit(&mut self, key: SpanKey) {
        let retention = self.cfg.retention_ns;
        let expire = self.clock.saturating_add(retention);
        let Some(r) = self.spans.get_mut(&key) else {
            return;
        };
        let (Some(ctx), Some(end)) = (r.ctx.clone(), r.end) else {
            return;
        };
        if r.emitted {
            return;
        }
        r.emitted = true;
        let parent_span_id = match r.parent {
            Parent::Span(_, id) => Some(id),
            Parent::Remote => r.header.as_ref().map(|h| h.parent_id),
            Parent::Root | Parent::Undecided => None,
        };
        let span = Span {
            trace_id: ctx.trace_id,
            span_id: r.span_id,
            parent_span_id,
            trace_flags: ctx.flags,
            trace_state: ctx.state,
            parent_source: r.source,
            kind: r.kind,
            start_ns: r.start,
            end_ns: end,
            pid: r.pid,
            tid: r.tid,
            status: std::mem::replace(&mut r.status, Status::Unset),
            texts: {
                self.text_bytes = self.text_bytes.saturating_sub(r.texts.heap_bytes());
                std::mem::take(&mut r.texts)
            },
        };
        let c = &mut self.counters;
        c.spans_emitted += 1;
        match span.parent_source {
            ParentSource::Root => c.roots += 1,
            ParentSource::Mirror => c.mirror_parent += 1,
            ParentSource::Nat => {
                c.mirror_parent += 1;
                c.nat_parent += 1;
            }
            ParentSource::Thread => c.thread_parent += 1,
            ParentSource::RequestId => c.request_id_parent += 1,
            ParentSource::ThreadContext => c.thread_context_parent += 1,
            ParentSource::Header => c.header_parent += 1,
        }
        let kind = span.kind;
        self.ready.push(span);
        self.unemitted_live = self.unemitted_live.saturating_sub(1);
        // A server span's record is kept for late children (rule 4) and
        // request-id lookups. A client span is the parent only of the server
        // span at the other end, which links when it arrives (with the same
        // packet), long before the client's response: its record goes at the
        // next poll (not now: children may still be resolving from it).
        match kind {
            SpanKind::Server => self.retained.push_back((expire, key)),
            SpanKind::Client => self.done_clients.push(key),
        }
    }

    /// Settle `key` now: decide it and every undecided ancestor, then emit it
    /// if finished.
    pub(crate) fn settle_now(&mut self, key: SpanKey) {
        let mut cur = key;
        for _ in 0..MAX_CHAIN {
            let Some(r) = self.spans.get(&cur) else {
                break;
            };
            if r.ctx.is_some() {
                break;
            }
            match r.parent {
                Parent::Undecided => self.decide(cur),
                Parent::Span(p, _) => cur = p,
                Parent::Root | Parent::Remote => {
                    self.resolve(cur);
                    break;
                }
            }
        }
        let stuck = self.spans.get(&key).is_some_and(|r| r.ctx.is_none());
        if stuck {
            // Chain too long to settle: cut it here rather than hold on.
            if let Some(r) = self.spans.get_mut(&key) {
                let (parent, source) = header_or_root(r);
                r.parent = parent;
                r.source = source;
            }
            self.resolve(key);
        }
    }

    /// Make room for one more span record of `incoming` bytes under
    /// `max_spans` and `max_span_bytes`: forget the oldest retained span,
    /// else settle and emit the oldest unemitted one now.
    pub(crate) fn make_room(&mut self, incoming: usize) {
        let max = self.cfg.max_spans.max(1);
        let max_bytes = self.cfg.max_span_bytes;
        while self.spans.len() >= max || self.span_bytes() + incoming > max_bytes {
            if let Some((_, k)) = self.retained.pop_front() {
                if self.spans.remove(&k).is_some() {
                    self.counters.retained_evicted += 1;
                }
                continue;
            }
            let spans = &self.spans;
            while self
                .unemitted
                .front()
                .is_some_and(|k| spans.get(k).is_none_or(|r| r.emitted))
            {
                self.unemitted.pop_front();
            }
            let Some(k) = self.unemitted.pop_front() else {
                break;
            };
            self.counters.span_overflow += 1;
            let incomplete = self.spans.get(&k).is_some_and(|r| r.end.is_none());
            if incomplete {
                // Its key stays queued on the connection, so later responses
                // still pair in order (this one then finds nothing).
                self.fail(k, self.clock, "evicted before response", "evicted");
            }
            self.settle_now(k);
            if self.retained.back().is_some_and(|(_, b)| *b == k) {
                self.retained.pop_back();
            }
            self.cancel_decision(k);
            if let Some(r) = self.spans.remove(&k).filter(|r| !r.emitted) {
                self.unemitted_live = self.unemitted_live.saturating_sub(1);
                self.text_bytes = self.text_bytes.saturating_sub(r.texts.heap_bytes());
            }
        }
    }

    /// Forget emitted spans older than the retention.
    pub(crate) fn expire_retained(&mut self) {
        for k in std::mem::take(&mut self.done_clients) {
            self.spans.remove(&k);
        }
        while let Some(&(at, k)) = self.retained.front() {
            if at > self.clock {
                break;
            }
            self.retained.pop_front();
            if self.spans.get(&k).is_some_and(|r| r.emitted) {
                self.spans.remove(&k);
            }
        }
    }

    /// Drop index entries of forgotten spans and thread entries that ended
    /// before the retention.
    pub(crate) fn prune_indexes(&mut self) {
        let keep = self
            .cfg
            .retention_ns
            .max(self.cfg.window_ns.saturating_mul(2));
        let samples = self.cfg.sample_window_ns.max(keep);
        self.threads.prune(self.clock.saturating_sub(samples));
        let spans = &self.spans;
        self.seq_clients.prune(|k| spans.contains_key(&k));
        self.seq_servers.prune(|k| spans.contains_key(&k));
        self.rid_servers.prune(|k| spans.contains_key(&k));
    }
}
