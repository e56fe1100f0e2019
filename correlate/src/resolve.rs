//! Parent decisions (rules 3, 4 and 5), trace-context propagation down the
//! span tree, emission, and the bounds on held spans.

use crate::adopt::AtEmit;
use crate::attributes::same_body;
use crate::classify::Mode;
use crate::config::IdGen;
use crate::correlator::{
    forward_key, CallCause, Correlator, Parent, RootReason, SpanRec, Timer, TraceCtx,
};
use crate::index::SpanKey;
use crate::model::{ParentSource, Pid, Span, SpanKind, Status};
use crate::propagation::RequestIds;

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
}

/// Whether a client call nests in a server request's time.
enum Nest {
    /// The request was in flight when the call started and was answered
    /// after the call's response (or not yet).
    Yes,
    /// Not in flight when the call started: not a candidate at all.
    Outside,
    /// In flight at the call's start, but answered before the call was.
    Outlived,
    /// The call is still outstanding: judged when it ends.
    Unknown,
}

/// The client call being decided.
struct Call {
    start: u64,
    end: Option<u64>,
    /// The capture lost the call's data: it may well have nested, so only
    /// its start is judged.
    end_lost: bool,
    force: bool,
}

impl Call {
    fn nests_in(&self, s: &SpanRec) -> Nest {
        let in_flight = s.start < self.start && s.end.is_none_or(|e| self.start < e);
        if !in_flight {
            return Nest::Outside;
        }
        if self.end_lost {
            return Nest::Yes;
        }
        match (self.end, s.end) {
            (Some(ce), Some(se)) if ce <= se => Nest::Yes,
            (Some(_), Some(_)) => Nest::Outlived,
            (Some(_), None) => Nest::Yes,
            // The call's response may be late, or lost with the capture's
            // data: judged when the call ends.
            (None, _) if !self.force => Nest::Unknown,
            (None, _) => Nest::Outlived,
        }
    }
}

/// What one rule found for a client span.
#[derive(Default)]
struct Evidence {
    one: One,
    /// A candidate's nesting cannot be judged before the call ends.
    unknown: bool,
    /// A candidate was refused because the call outlived it.
    refused: bool,
}

impl Evidence {
    fn consider(&mut self, k: SpanKey, n: Nest) {
        match n {
            Nest::Yes => self.one.add(k),
            Nest::Unknown => {
                self.unknown = true;
                self.one.add(k);
            }
            Nest::Outlived => self.refused = true,
            Nest::Outside => {}
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

impl<G: IdGen> Correlator<G> {
    fn parent_ref(&self, key: SpanKey) -> Option<Parent> {
        self.spans.get(&key).map(|r| Parent::Span(key, r.span_id))
    }

    fn schedule_decision(&mut self, key: SpanKey) {
        let deadline = self.clock.saturating_add(self.window.get());
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
            self.decide(key, false);
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
            self.decide(key, false);
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
        self.note_propagating_call(key);
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
    /// evidence at hand. A client span's decision may wait for its end or
    /// for an inbound response, unless `force` (flush, memory bound).
    pub(crate) fn decide(&mut self, key: SpanKey, force: bool) {
        self.cancel_decision(key);
        let Some(rec) = self.spans.get(&key) else {
            return;
        };
        if rec.parent != Parent::Undecided {
            return;
        }
        let decision = match rec.kind {
            SpanKind::Server => {
                let reason = if rec.waiting_mirror {
                    self.counters.mirror_expired += 1;
                    RootReason::NoClientSpan
                } else {
                    RootReason::Entry
                };
                let (parent, source) = header_or_root(rec);
                Some((parent, source, reason))
            }
            SpanKind::Client => self.decide_client(key, force),
        };
        let Some((parent, source, reason)) = decision else {
            return; // waits for more evidence
        };
        if let Some(r) = self.spans.get_mut(&key) {
            r.parent = parent;
            r.source = source;
            r.root_reason = reason;
            r.waiting_mirror = false;
            r.await_end = false;
        }
        self.resolve(key);
    }

    /// Decide the client spans that waited for complete inputs, once they
    /// are (or once waiting longer would outlive the records they need).
    pub(crate) fn decide_completed(&mut self) {
        if self.await_complete.is_empty() {
            return;
        }
        let complete = self.complete.unwrap_or(u64::MAX);
        let give_up = self.clock.saturating_sub(self.cfg.retention_ns);
        let mut due = Vec::new();
        self.await_complete.retain(|&(start, key)| {
            let ready = start <= complete || start < give_up;
            if ready {
                due.push(key);
            }
            !ready
        });
        for key in due {
            self.decide(key, false);
        }
    }

    /// Server spans of `pid` whose request carried one of `ids`, or whose
    /// response returned it.
    pub(crate) fn id_servers(
        &self,
        pid: Pid,
        ids: &RequestIds,
        mut each: impl FnMut(SpanKey, &SpanRec),
    ) {
        for &id in ids.as_slice() {
            for &sk in self.rid_servers.get(&forward_key(pid, id)) {
                if let Some(s) = self.spans.get(&sk) {
                    if s.kind == SpanKind::Server && s.pid == pid && s.request_ids.contains(id) {
                        each(sk, s);
                    }
                }
            }
        }
    }

    /// Server spans of `pid` whose request a call with this fingerprint and
    /// declared body repeats.
    pub(crate) fn forwarded_servers(
        &self,
        pid: Pid,
        fingerprint: u64,
        body: u64,
        mut each: impl FnMut(SpanKey, &SpanRec),
    ) {
        for &sk in self.fwd_servers.get(&forward_key(pid, fingerprint)) {
            if let Some(s) = self.spans.get(&sk) {
                if s.kind == SpanKind::Server
                    && s.pid == pid
                    && s.fingerprint == fingerprint
                    && same_body(s.body, body)
                {
                    each(sk, s);
                }
            }
        }
    }

    /// Rules 4 and 5 for a client span (see `Evidence`): its parent, or
    /// `None` when the decision must wait (for the call's end, or a window
    /// for an inbound response to return its request id).
    fn decide_client(
        &mut self,
        key: SpanKey,
        force: bool,
    ) -> Option<(Parent, ParentSource, RootReason)> {
        // `decide` found the record.
        let c = self.spans.get(&key)?;
        let call = Call {
            start: c.start,
            end: c.end,
            end_lost: c.end_lost,
            force,
        };
        let (pid, tid, t) = (c.pid, c.tid, c.start);
        let (rids, fingerprint, body) = (c.request_ids, c.fingerprint, c.body);
        let trace = c.header.as_ref().map(|h| h.trace_id);
        let (busy, waited, awaited) = (c.busy, c.waited, c.awaited_complete);
        let (fallback, fallback_source) = header_or_root(c);

        // Rule 5: a request in flight in the process that carried one of
        // the call's request ids, or returned it in its response.
        let mut rid = Evidence::default();
        self.id_servers(pid, &rids, |sk, s| rid.consider(sk, call.nests_in(s)));
        // Forwarding: a request in flight in the process that the call
        // repeats (method, target, body length).
        let mut fwd = Evidence::default();
        self.forwarded_servers(pid, fingerprint, body, |sk, s| {
            fwd.consider(sk, call.nests_in(s))
        });
        // Both link by uniqueness among the process's requests in flight:
        // proof only when all of them are known.
        let unique = matches!(fwd.one, One::Only(_)) || matches!(rid.one, One::Only(_));
        if unique {
            let complete = self.complete.is_none_or(|w| t <= w);
            let gave_up = self.clock.saturating_sub(self.cfg.retention_ns) > t;
            if !complete && !force && !gave_up {
                if let Some(r) = self.spans.get_mut(&key).filter(|r| !r.awaited_complete) {
                    r.awaited_complete = true;
                    self.await_complete.push((t, key));
                    self.counters.unique_waits += 1;
                }
                return None;
            }
            // After a wait, a candidate that ended long before now may have
            // been forgotten already, and another would look unique.
            let retention = self.window.scale(self.cfg.retention_ns);
            let expired = awaited && self.clock > call.end.unwrap_or(t).saturating_add(retention);
            let refused = if !complete || expired {
                Some(&mut self.counters.unique_refused_unconfirmed)
            } else if self.losses.covers(pid, t) {
                Some(&mut self.counters.unique_refused_loss)
            } else {
                None
            };
            if let Some(n) = refused {
                *n += 1;
                for e in [&mut fwd, &mut rid] {
                    if matches!(e.one, One::Only(_)) {
                        e.one = One::None;
                    }
                }
            }
        }
        // Rule 4: the request in progress on the thread, where the process
        // serves one request per thread; and, whatever the process, the
        // request in progress on the thread whose propagated trace the call
        // carries.
        let mut ctx = Evidence::default();
        let spans = &self.spans;
        let q = self.threads.in_progress(pid, tid, t, |sk| {
            if let (Some(trace), Some(s)) = (trace, spans.get(&sk)) {
                if s.header.as_ref().map(|h| h.trace_id) == Some(trace) {
                    ctx.consider(sk, call.nests_in(s));
                }
            }
        });
        // Runtime hooks: the one request in flight, when the hook said, on
        // the connection of the request the call was made for; or (asyncio)
        // the one whose response the call's task, or an ancestor, wrote.
        let mut runtime = Evidence::default();
        let cause = self.call_causes.get(&key);
        let hooked = cause.is_some();
        match cause {
            Some(CallCause::Conn(cause)) => {
                for &sk in self.conn_servers.get(&cause.conn.0) {
                    if let Some(s) = self.spans.get(&sk) {
                        let then = s.start <= cause.at_ns && s.end.is_none_or(|e| cause.at_ns <= e);
                        if s.kind == SpanKind::Server && s.pid == pid && then {
                            runtime.consider(sk, call.nests_in(s));
                        }
                    }
                }
            }
            Some(CallCause::Tasks(line)) => {
                for t in line {
                    for &sk in self.task_servers.get(t) {
                        if let Some(s) = self.spans.get(&sk) {
                            if s.kind == SpanKind::Server && s.pid == pid {
                                runtime.consider(sk, call.nests_in(s));
                            }
                        }
                    }
                }
            }
            None => {}
        }
        let task = matches!(cause, Some(CallCause::Tasks(_)));
        let mut thread = Evidence::default();
        let mut refused = None;
        if q.count == 1 && !q.lossy {
            if let Some(sk) = q.first {
                match self.classify.mode(pid) {
                    Mode::ThreadPerRequest => {
                        if let Some(s) = self.spans.get(&sk) {
                            thread.consider(sk, call.nests_in(s));
                        }
                    }
                    mode => refused = Some(mode),
                }
            }
        }
        let background = q.count == 0 && q.served_before;

        let all = [
            (&runtime, ParentSource::Runtime),
            (&rid, ParentSource::RequestId),
            (&ctx, ParentSource::ThreadContext),
            (&fwd, ParentSource::Forwarded),
            (&thread, ParentSource::Thread),
        ];
        let pending = all.iter().any(|(e, _)| e.unknown);
        let mut chosen: Option<(SpanKey, ParentSource)> = None;
        let mut conflict = false;
        for (e, source) in all {
            if let One::Only(k) = e.one {
                match chosen {
                    None => chosen = Some((k, source)),
                    Some((c, _)) if c == k => {}
                    Some(_) => conflict = true,
                }
            }
        }
        // An inbound response may still return the call's request id, or
        // be written by its task or an ancestor.
        let id_may_come =
            (!rids.as_slice().is_empty() || task) && !waited && self.classify.serving(pid);
        if !force {
            if pending {
                // Nesting is judged once the call has ended.
                if let Some(r) = self.spans.get_mut(&key) {
                    r.await_end = true;
                }
                return None;
            }
            if chosen.is_none() && id_may_come {
                // A request in flight may still return the call's id in its
                // response, which comes after the call's own.
                if let Some(r) = self.spans.get_mut(&key) {
                    if r.end.is_none() {
                        r.await_end = true;
                    } else {
                        r.waited = true;
                        self.counters.response_id_waits += 1;
                        self.schedule_decision(key);
                    }
                }
                return None;
            }
        } else if pending || (chosen.is_none() && id_may_come) {
            self.counters.decisions_cut += 1;
        }

        // Final: count what the rules said.
        if hooked {
            self.call_causes.remove(&key);
        }
        let k = &mut self.counters;
        if hooked {
            match runtime.one {
                One::None if !runtime.refused => k.runtime_no_request += 1,
                One::Several => k.runtime_ambiguous += 1,
                _ => {}
            }
        }
        if background {
            self.classify.background_call(pid, t, k);
        }
        match refused {
            Some(Mode::Unproven) => k.thread_refused_unproven += 1,
            Some(Mode::Multiplexing) => k.thread_refused_multiplexing += 1,
            Some(Mode::HandOff) => k.thread_refused_handoff += 1,
            Some(Mode::ThreadPerRequest) | None => {}
        }
        if all.iter().any(|(e, _)| e.refused) {
            k.not_nested += 1;
        }
        if rid.one == One::Several {
            k.request_id_ambiguous += 1;
        }
        if fwd.one == One::Several {
            k.forward_ambiguous += 1;
        }
        if waited && chosen.is_none() {
            k.response_id_wait_expired += 1;
        }
        if conflict {
            k.evidence_conflict += 1;
            k.ambiguous_parent += 1;
            return Some((fallback, fallback_source, RootReason::Ambiguous));
        }
        if let Some((sk, source)) = chosen {
            if let Some(p) = self.parent_ref(sk) {
                return Some((p, source, RootReason::Lost));
            }
            return Some((fallback, fallback_source, RootReason::Lost));
        }
        if all.iter().any(|(e, _)| e.one == One::Several) || q.count > 1 {
            k.ambiguous_parent += 1;
            return Some((fallback, fallback_source, RootReason::Ambiguous));
        }
        let serving = busy || q.count > 0 || all.iter().any(|(e, _)| e.refused);
        let reason = if serving {
            RootReason::Unproven
        } else {
            RootReason::Idle
        };
        Some((fallback, fallback_source, reason))
    }

    /// Give `start` its trace context once its parent's is known, and pass
    /// it on to the children waiting for it; emit the finished ones.
    pub(crate) fn resolve(&mut self, start: SpanKey) {
        enum Next {
            Fresh,
            Header,
            Inherit(TraceCtx),
            Wait(SpanKey),
            Orphan,
        }
        let mut work = std::mem::take(&mut self.work);
        let mut finished = std::mem::take(&mut self.finished);
        work.clear();
        finished.clear();
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
                        Some(ctx) => match rec.header.as_ref() {
                            Some(h) if h.trace_id != ctx.trace_id => {
                                // The parent's trace was made up here: the
                                // process's own trace may replace it.
                                let own = TraceCtx::propagated(h);
                                let root = ctx.made_by;
                                if root.is_some_and(|root| self.adopt(root, &own)) {
                                    self.counters.context_adopted += 1;
                                    Next::Inherit(own)
                                } else {
                                    self.counters.context_conflict += 1;
                                    Next::Header
                                }
                            }
                            _ => Next::Inherit(ctx.clone()),
                        },
                        None => Next::Wait(p),
                    },
                    // The parent was forgotten before its trace was known.
                    None => Next::Orphan,
                },
            };
            let next = match next {
                Next::Orphan => {
                    let Some(r) = self.spans.get_mut(&k) else {
                        continue;
                    };
                    r.root_reason = RootReason::Lost;
                    if r.header.is_some() {
                        Next::Header
                    } else {
                        Next::Fresh
                    }
                }
                next => next,
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
                Next::Header => match self.spans.get(&k).and_then(|r| r.header.as_ref()) {
                    Some(h) => {
                        let ctx = TraceCtx::propagated(h);
                        if let Some(r) = self.spans.get_mut(&k) {
                            r.parent = Parent::Remote;
                            r.source = ParentSource::Header;
                        }
                        ctx
                    }
                    None => self.fresh_root(k),
                },
                Next::Fresh | Next::Orphan => self.fresh_root(k),
            };
            let Some(r) = self.spans.get_mut(&k) else {
                continue;
            };
            r.ctx = Some(ctx);
            work.extend(r.waiting_children.drain(..));
            if r.end.is_some() && !r.emitted {
                finished.push(k);
            }
            self.trace_settled(k);
        }
        // Emitted once the whole subtree has its trace: a span's made-up
        // trace may wait for a call below it (see `adopt`).
        for &k in &finished {
            self.emit(k);
        }
        self.work = work;
        self.finished = finished;
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
            made_by: Some(key),
        }
    }

    /// Hand a finished span with a known trace to the output (unless its
    /// made-up trace may yet be replaced, see `adopt`).
    pub(crate) fn emit(&mut self, key: SpanKey) {
        self.emit_now(key, false);
    }

    /// [`emit`](Self::emit); `force`: never held.
    pub(crate) fn emit_now(&mut self, key: SpanKey, force: bool) {
        let retention = self.window.scale(self.cfg.retention_ns);
        let expire = self.clock.saturating_add(retention);
        let Some(r) = self.spans.get(&key) else {
            return;
        };
        let (Some(mut ctx), Some(end)) = (r.ctx.clone(), r.end) else {
            return;
        };
        if r.emitted {
            return;
        }
        if let Some(root) = ctx.made_by {
            match self.at_emit(key, root, force) {
                AtEmit::Held => return,
                AtEmit::Into(t) => ctx = t,
                AtEmit::Plain => {}
            }
        }
        let Some(r) = self.spans.get_mut(&key) else {
            return;
        };
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
                self.text_bytes.remove(&r.texts);
                std::mem::take(&mut r.texts)
            },
        };
        let c = &mut self.counters;
        c.spans_emitted += 1;
        match span.parent_source {
            ParentSource::Root => {
                c.roots += 1;
                match r.root_reason {
                    RootReason::Lost => c.roots_lost += 1,
                    RootReason::Entry => c.roots_entry += 1,
                    RootReason::NoClientSpan => c.roots_no_client_span += 1,
                    RootReason::Idle => c.roots_idle += 1,
                    RootReason::Unproven => c.roots_unproven += 1,
                    RootReason::Ambiguous => c.roots_ambiguous += 1,
                }
            }
            ParentSource::Mirror => c.mirror_parent += 1,
            ParentSource::Nat => {
                c.mirror_parent += 1;
                c.nat_parent += 1;
            }
            ParentSource::Thread => c.thread_parent += 1,
            ParentSource::RequestId => c.request_id_parent += 1,
            ParentSource::Forwarded => c.forwarded_parent += 1,
            ParentSource::ThreadContext => c.thread_context_parent += 1,
            ParentSource::Runtime => c.runtime_parent += 1,
            ParentSource::Header => c.header_parent += 1,
        }
        let kind = span.kind;
        self.ready.push(span);
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
                Parent::Undecided => self.decide(cur, true),
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
                r.root_reason = RootReason::Lost;
            }
            self.resolve(key);
        }
        // Held or not, it goes now.
        self.emit_now(key, true);
    }

    /// Make room for one more span record of `incoming` bytes under
    /// `max_spans` and `max_span_bytes`: forget the oldest retained span,
    /// else an emitted client span, else settle and emit the oldest
    /// unemitted one now.
    pub(crate) fn make_room(&mut self, incoming: usize) {
        let max = self.cfg.max_spans.max(1);
        let max_bytes = self.cfg.max_span_bytes;
        // Spare texts go first, only as many as the room needs: dropping
        // them all whenever the bound was reached (where a fast service
        // runs steadily) made nearly every request allocate anew.
        while self.span_bytes() + incoming > max_bytes && self.pop_spare_text().is_some() {}
        while self.spans.len() >= max || self.span_bytes() + incoming > max_bytes {
            if let Some((_, k)) = self.retained.pop_front() {
                if self.spans.discard_if(k, |_| true) {
                    self.counters.retained_evicted += 1;
                }
                continue;
            }
            // Emitted client spans wait for the next poll to go; when
            // records run out before one, they go first (no emit is under
            // way here, so nothing resolves from them now).
            if !self.done_clients.is_empty() {
                let k = self.done_clients.swap_remove(0);
                if self.spans.discard_if(k, |_| true) {
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
                self.text_bytes.remove(&r.texts);
            }
        }
    }

    /// Forget emitted spans older than the retention.
    pub(crate) fn expire_retained(&mut self) {
        let mut done = std::mem::take(&mut self.done_clients);
        for k in done.drain(..) {
            self.spans.discard_if(k, |_| true);
        }
        self.done_clients = done;
        while let Some(&(at, k)) = self.retained.front() {
            if at > self.clock {
                break;
            }
            self.retained.pop_front();
            self.spans.discard_if(k, |r| r.emitted);
        }
    }

    /// How far back the parent rules ask about what was in progress (what
    /// the indexes keep; only CPU samples, which come back after unwinding,
    /// ask about older instants).
    pub(crate) fn rules_horizon_ns(&self) -> u64 {
        self.cfg
            .retention_ns
            .max(self.cfg.window_ns.saturating_mul(2))
    }

    /// Drop index entries of forgotten spans and thread entries that ended
    /// before the retention.
    pub(crate) fn prune_indexes(&mut self) {
        let keep = self.rules_horizon_ns();
        let samples = self.cfg.sample_window_ns.max(keep);
        self.threads.prune(self.clock.saturating_sub(samples));
        let spans = &self.spans;
        self.seq_clients.prune(|k| spans.contains_key(&k));
        self.seq_servers.prune(|k| spans.contains_key(&k));
        self.rid_servers.prune(|k| spans.contains_key(&k));
        self.fwd_servers.prune(|k| spans.contains_key(&k));
        self.conn_servers.prune(|k| spans.contains_key(&k));
        self.call_causes.retain(|k, _| spans.contains_key(k));
        self.task_servers.prune(|k| spans.contains_key(&k));
        self.causes.forget_before(self.clock.saturating_sub(keep));
        self.expire_adoptions();
        self.losses.prune(self.clock.saturating_sub(keep));
        let memory = self.cfg.classify_memory_ns;
        self.classify.prune(
            self.clock.saturating_sub(keep),
            self.clock.saturating_sub(memory),
        );
    }
}
