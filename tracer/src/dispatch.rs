//! The one record dispatcher: kernel records in, spans, profiles and
//! printed events out. The live agent feeds it from the ring buffer
//! ([`crate::pipeline`]); replays feed it from a recording
//! ([`crate::replay`]), so benchmarks and tests run exactly the live code.
//!
//! records -> connection table (byte streams lined up with calls) ->
//! [event printer] -> HTTP/1 parser -> correlator -> span sink (OTLP,
//! terminal); CPU samples -> profiling stage. Time only moves when the
//! caller says so ([`Dispatcher::record`] by the records' own timestamps,
//! [`Dispatcher::sweep`] with the caller's clock), so a replay decides the
//! same way on every host.
use std::{io::Write, sync::Arc};

use correlate::{Pid, Span};
use protocols::stream::Chunk;
use tracer_common::{Dir, Record, Silence, SockCtl};

use crate::{
    comm::Comm,
    conntrack::{ConnInfo, ConnLimits, Conns, CtlRequest, Sink},
    export::{
        resource::{KernelName, Resource},
        sink::SpanSink,
    },
    http_spans::HttpSpans,
    lanes,
    print::EventPrinter,
    profile::stage::ProfileStage,
    replay::Recorder,
    tls::streams::{Out as TlsOut, TlsStreams},
};

/// Where finished spans go, and who describes their processes: the
/// agent's [`SpanSink`] (OTLP or terminal), or a replay's collector.
pub trait SpanOut {
    /// A process was seen (its first record): describe it while it lives.
    /// `hint` is the kernel's name for the thread that made the record.
    fn saw_pid(&mut self, pid: Pid, hint: Option<KernelName<'_>>, now_ns: u64);
    /// A process started another program at `at_ns`: its next record
    /// describes it anew; its spans that began before keep what it was.
    fn exec(&mut self, pid: Pid, at_ns: u64);
    /// The resource of a process for what it did at `at_ns`: the program
    /// it ran then.
    fn resource_at(&mut self, pid: Pid, at_ns: u64, now_ns: u64) -> Arc<Resource>;
    /// A finished span (its buffers are reused once this returns).
    fn span(&mut self, span: &Span, now_ns: u64);
    /// Periodic work.
    fn tick(&mut self, now_ns: u64);
}

impl<W: Write> SpanOut for SpanSink<W> {
    fn saw_pid(&mut self, pid: Pid, hint: Option<KernelName<'_>>, now_ns: u64) {
        SpanSink::saw_pid(self, pid, hint, now_ns);
    }

    fn exec(&mut self, pid: Pid, at_ns: u64) {
        SpanSink::exec(self, pid, at_ns);
    }

    fn resource_at(&mut self, pid: Pid, at_ns: u64, now_ns: u64) -> Arc<Resource> {
        SpanSink::resource_at(self, pid, at_ns, now_ns)
    }

    fn span(&mut self, span: &Span, now_ns: u64) {
        SpanSink::span(self, span, now_ns);
    }

    fn tick(&mut self, now_ns: u64) {
        SpanSink::tick(self, now_ns);
    }
}

/// Counters of the reading stage.
#[derive(Clone, Copy, Default, Debug)]
pub struct ReaderCounters {
    /// Records read.
    pub records: u64,
    /// Records that could not be decoded.
    pub bad_records: u64,
}

/// Everything after the connection table: event printing (optional),
/// HTTP parsing and correlation, and where finished spans go.
pub struct Stages<O: SpanOut> {
    /// `--print events`.
    pub events: Option<EventPrinter<Box<dyn Write>>>,
    /// None with `--no-spans`.
    pub http: Option<HttpSpans>,
    /// Where finished spans go.
    pub spans: O,
    /// `--record`: raw records to a file.
    pub recorder: Option<Recorder>,
    /// CPU profiles, when profiling is on.
    pub profile: Option<ProfileStage>,
    /// TLS plaintext, per connection.
    pub tls: TlsStreams,
    /// Processes described lately, to skip the resource lookup on the
    /// records that follow.
    recent: RecentPids,
    /// The dispatcher's clock (kernel monotonic ns).
    now_ns: u64,
}

impl<O: SpanOut> Stages<O> {
    /// The stages; `events`, `http`, `recorder` and `profile` are optional.
    pub fn new(
        events: Option<EventPrinter<Box<dyn Write>>>,
        http: Option<HttpSpans>,
        spans: O,
        recorder: Option<Recorder>,
        profile: Option<ProfileStage>,
    ) -> Stages<O> {
        Stages {
            events,
            http,
            spans,
            recorder,
            profile,
            tls: TlsStreams::new(),
            recent: RecentPids::default(),
            now_ns: 0,
        }
    }
}

/// Pids described lately, each with the name the kernel gave its thread
/// and when (a small direct-mapped table). The records of a busy process
/// alternate with its peers', and describing it again at each one (a
/// name converted, a map lookup, a shared count taken and dropped) took
/// 2-2.6 % of the agent's samples at full load; one check per pid and name every
/// [`RECHECK_NS`] answers the same, since the resource cache paces its own
/// reads no faster (reuse every 10 s, a process caught mid-exec every
/// 10 ms). A new name for a pid is checked at once (pid reuse).
struct RecentPids {
    slots: [Option<(u32, Comm, u64)>; RECENT_PIDS],
}

const RECENT_PIDS: usize = 64;
const RECHECK_NS: u64 = crate::export::resource::RETRY_INCOMPLETE_NS;

impl Default for RecentPids {
    fn default() -> Self {
        RecentPids {
            slots: [None; RECENT_PIDS],
        }
    }
}

impl RecentPids {
    /// Forgets `pid` (it started another program): its next record
    /// describes it.
    fn forget(&mut self, pid: u32) {
        let slot = &mut self.slots[pid as usize % RECENT_PIDS];
        if slot.is_some_and(|(p, _, _)| p == pid) {
            *slot = None;
        }
    }

    /// Whether `pid` was described with this `comm` less than
    /// [`RECHECK_NS`] before `now`; if not, it is noted as described now.
    fn seen(&mut self, pid: u32, comm: Comm, now: u64) -> bool {
        let slot = &mut self.slots[pid as usize % RECENT_PIDS];
        if let Some((p, c, at)) = slot {
            if *p == pid && *c == comm && now.saturating_sub(*at) < RECHECK_NS {
                return true;
            }
        }
        *slot = Some((pid, comm, now));
        false
    }
}

impl<O: SpanOut> Sink for Stages<O> {
    fn chunk(&mut self, conn: &ConnInfo, dir: Dir, chunk: &Chunk<'_>) {
        if let Some(events) = &mut self.events {
            events.chunk(conn, dir, chunk);
        }
        if let Some(http) = &mut self.http {
            http.chunk(conn, dir, chunk);
        }
    }

    fn closing(&mut self, conn: &ConnInfo) {
        if let Some(http) = &mut self.http {
            http.closing(conn.cookie);
        }
    }

    fn lost(&mut self, at_ns: u64) {
        if let Some(http) = &mut self.http {
            http.inbound_lost(0, at_ns);
        }
    }

    fn unread(&mut self, conn: &ConnInfo, at_ns: u64) {
        if let Some(http) = &mut self.http {
            http.unread(conn, at_ns);
        }
    }

    fn closed(&mut self, conn: &ConnInfo) {
        let Stages {
            events,
            http,
            tls,
            now_ns,
            ..
        } = self;
        let plain = tls.closed(conn.cookie, &mut tls_out(events, http));
        if let Some(http) = http {
            http.closed(conn, *now_ns);
            if let Some(plain) = plain {
                http.closed(&plain, *now_ns);
            }
        }
    }

    fn flush(&mut self) {
        if let Some(events) = &mut self.events {
            events.flush();
        }
        if let Some(r) = &mut self.recorder {
            r.flush();
        }
    }
}

/// Where the TLS plaintext stage's output goes: chunks to the event printer
/// and the HTTP stage, dropped reads to the HTTP stage (they may have been
/// requests).
fn tls_out<'a>(
    events: &'a mut Option<EventPrinter<Box<dyn Write>>>,
    http: &'a mut Option<HttpSpans>,
) -> impl FnMut(TlsOut<'_>) + 'a {
    move |o| match o {
        TlsOut::Chunk(conn, dir, chunk) => {
            if let Some(events) = events {
                events.chunk(conn, dir, chunk);
            }
            if let Some(http) = http {
                http.chunk(conn, dir, chunk);
            }
        }
        TlsOut::LostRead { pid, start_ns } => {
            if let Some(http) = http {
                http.inbound_lost(pid, start_ns);
            }
        }
        TlsOut::ReadLost(conn, at_ns) => {
            if let Some(http) = http {
                http.read_lost(conn, at_ns);
            }
        }
    }
}

impl<O: SpanOut> Stages<O> {
    /// Describes a process at its first record, while it is alive: short
    /// processes (curl) are gone by the time their spans finish; the
    /// kernel's `comm` stands in when /proc no longer has them.
    fn saw_pid(&mut self, pid: u32, tid: u32, comm: Comm, now: u64) {
        if !self.recent.seen(pid, comm, now) {
            let name = comm.text();
            let hint = KernelName {
                name: &name,
                main_thread: tid == pid,
            };
            self.spans.saw_pid(Pid(pid), Some(hint), now);
        }
    }

    /// A TLS call's plaintext: a chunk of its connection's plaintext
    /// stream, to the same stages as cleartext.
    fn tls_data(&mut self, hdr: &tracer_common::TlsData, data: &[u8], tcp: Option<&ConnInfo>) {
        let Stages {
            events, http, tls, ..
        } = self;
        tls.on_data(hdr, data, tcp, &mut tls_out(events, http));
    }

    /// A CPU sample, to the profiling worker; its process is described
    /// now, while it is alive (the kernel's name stands in when it is not).
    fn sample(&mut self, hdr: &tracer_common::SampleHeader, stack: &[u8]) {
        let Some(profile) = &mut self.profile else {
            return;
        };
        profile.sample(hdr, stack);
        self.saw_pid(hdr.pid, hdr.tid, Comm::new(hdr.comm), hdr.ts_ns);
    }

    /// Stacks the profiling worker finished: attributed to the server span
    /// in progress on their thread at their time (rule 6), described by
    /// their process's resource.
    fn collect_samples(&mut self) {
        let Some(profile) = &mut self.profile else {
            return;
        };
        let http = &self.http;
        let spans = &mut self.spans;
        let now = self.now_ns;
        profile.collect(
            |pid, tid, t| http.as_ref().and_then(|h| h.server_span_at(pid, tid, t)),
            |pid, at| spans.resource_at(pid, at, now),
        );
    }

    /// Moves finished spans on, then prints traces that went quiet.
    fn settle(&mut self, mut spans: Vec<Span>) {
        for i in 0..spans.len() {
            // Its texts were written when its request came, a window or
            // more ago: asked for one span ahead, they arrive while this
            // one is encoded.
            if let Some(next) = spans.get(i + 1) {
                next.prefetch_texts();
            }
            let span = &mut spans[i];
            if let Some(p) = &mut self.profile {
                p.span_finished(span);
            }
            self.spans.span(span, self.now_ns);
        }
        if let Some(http) = &mut self.http {
            http.recycle(spans);
        }
        self.spans.tick(self.now_ns);
    }
}

/// Finished spans the HTTP stage holds at most before they are moved on:
/// after a drain (spans whose parent was known at once, e.g. propagated
/// context, finish between sweeps) and within a sweep (a late sweep, after a backlog, finds many due
/// at once). Held all together they were seen to take 11 MiB of span
/// structs alone at overload (65,536 spans), beside their texts.
const SETTLE_READY: usize = 8192;

/// Closed connections retired after each drain at most.
const REAP_PER_DRAIN: usize = 256;

/// Records in, every stage driven; see the module docs.
pub struct Dispatcher<O: SpanOut> {
    conns: Conns,
    stages: Stages<O>,
    reader: ReaderCounters,
    /// Processes whose connections were found to carry TLS ciphertext
    /// since the last [`Dispatcher::take_tls_seen`].
    tls_seen: Vec<u32>,
    /// TLS connections no plaintext came for yet: cookie -> (pid, when
    /// their ciphertext was recognised).
    tls_waiting: foldhash::HashMap<u64, (u32, u64)>,
    /// Processes whose TLS connection carried no plaintext in time, with
    /// when that connection's ciphertext was recognised.
    tls_unseen: Vec<(u32, u64)>,
}

/// TLS connections waiting for their first plaintext, at most.
const TLS_WAITING_MAX: usize = 4096;

/// A TLS connection whose plaintext did not show up this long after its
/// ciphertext was recognised is one the probes do not cover.
const TLS_PLAINTEXT_WAIT_NS: u64 = 2_000_000_000;

impl<O: SpanOut> Dispatcher<O> {
    /// A dispatcher over fresh connection state.
    pub fn new(stages: Stages<O>, limits: ConnLimits) -> Dispatcher<O> {
        Dispatcher {
            conns: Conns::new(limits),
            stages,
            reader: ReaderCounters::default(),
            tls_seen: Vec::new(),
            tls_waiting: Default::default(),
            tls_unseen: Vec::new(),
        }
    }

    /// One ring-buffer record, as the kernel wrote it. Returns its kernel
    /// timestamp (None when it did not decode).
    pub fn record(&mut self, item: &[u8]) -> Option<u64> {
        self.reader.records += 1;
        let s = &mut self.stages;
        if let Some(r) = &mut s.recorder {
            r.write(item);
        }
        let ts = match Record::parse(item) {
            Ok(Record::SockOp(op)) => {
                s.now_ns = s.now_ns.max(op.ts_ns);
                s.saw_pid(op.pid, op.tid, Comm::new(op.comm), op.ts_ns);
                self.conns.on_op(&op, s);
                op.ts_ns
            }
            Ok(Record::Segment(hdr, data)) => {
                s.now_ns = s.now_ns.max(hdr.ts_ns);
                self.conns.on_segment(&hdr, data, s);
                hdr.ts_ns
            }
            Ok(Record::ConnState(st)) => {
                s.now_ns = s.now_ns.max(st.ts_ns);
                self.conns.on_state(&st, s);
                st.ts_ns
            }
            Ok(Record::Sample(hdr, stack)) => {
                s.sample(&hdr, stack);
                hdr.ts_ns
            }
            Ok(Record::Exec(e)) => {
                s.now_ns = s.now_ns.max(e.ts_ns);
                s.recent.forget(e.pid);
                s.spans.exec(Pid(e.pid), e.ts_ns);
                if let Some(p) = &mut s.profile {
                    p.exec(e.pid);
                }
                e.ts_ns
            }
            Ok(Record::SockTotals(t)) => {
                self.conns.on_totals(&t);
                t.ts_ns
            }
            Ok(Record::TlsData(hdr, data)) => {
                s.now_ns = s.now_ns.max(hdr.ts_ns);
                s.saw_pid(hdr.pid, hdr.tid, Comm::new(hdr.comm), hdr.ts_ns);
                self.tls_waiting.remove(&hdr.cookie);
                let tcp = (hdr.cookie != 0).then(|| self.conns.touch(hdr.cookie, hdr.ts_ns));
                s.tls_data(&hdr, data, tcp);
                hdr.ts_ns
            }
            Ok(Record::Cause(c)) => {
                s.now_ns = s.now_ns.max(c.ts_ns);
                if let Some(http) = &mut s.http {
                    http.cause(&c);
                }
                c.ts_ns
            }
            Err(_) => {
                self.reader.bad_records += 1;
                return None;
            }
        };
        Some(ts)
    }

    /// Records the kernel could not deliver since `since_ns` (a full ring):
    /// any of them may have held a request some process read.
    pub fn records_lost(&mut self, since_ns: u64) {
        if let Some(http) = &mut self.stages.http {
            http.inbound_lost(0, since_ns);
        }
    }

    /// Periodic work at `now_ns` (kernel monotonic): streams that waited
    /// long enough are delivered, closed and idle connections removed,
    /// finished spans moved on, profiles pushed when an interval ended.
    pub fn sweep(&mut self, now_ns: u64) {
        let s = &mut self.stages;
        s.now_ns = s.now_ns.max(now_ns);
        self.conns.sweep(s.now_ns, s);
        s.tls
            .expire_shared(s.now_ns, &mut tls_out(&mut s.events, &mut s.http));
        if let Some(http) = &mut s.http {
            // The reader hands out every record older than its hold; what
            // the streams and the TLS reads still hold bounds what is
            // complete.
            let read = now_ns.saturating_sub(lanes::HOLD_NS);
            let held = self
                .conns
                .pending_since()
                .into_iter()
                .chain(s.tls.held_since())
                .min()
                .unwrap_or(u64::MAX);
            http.complete_until(read.min(held));
        }
        s.collect_samples();
        // In parts: a late sweep finds many spans due at once.
        while let Some(http) = &mut s.http {
            let spans = http.poll_at_most(now_ns, SETTLE_READY);
            let more = spans.len() >= SETTLE_READY;
            s.settle(spans);
            if !more {
                break;
            }
        }
        if let Some(p) = &mut s.profile {
            p.tick(now_ns);
        }
    }

    /// After a drain: closed connections retired (at most a few hundred,
    /// so a storm of short connections is retired in steps between reads
    /// of the kernel's records), finished spans moved on if many are
    /// waiting for the next sweep, then the parsers' requests to the capture
    /// (silence a connection, skip a body) turned into updates of the
    /// kernel's per-socket map: `(updates, entries the map will hold)`.
    /// Nothing is asked while events are printed: whoever asked to see every
    /// call sees them all.
    pub fn after_drain(&mut self, now_ns: u64) -> (Vec<(u64, Option<SockCtl>)>, usize) {
        let s = &mut self.stages;
        s.now_ns = s.now_ns.max(now_ns);
        self.conns.reap(s.now_ns, REAP_PER_DRAIN, s);
        if s.http
            .as_ref()
            .is_some_and(|h| h.ready_len() >= SETTLE_READY)
        {
            s.collect_samples();
            let spans = s
                .http
                .as_mut()
                .map(HttpSpans::take_ready)
                .unwrap_or_default();
            s.settle(spans);
        }
        if let Some(http) = &mut s.http {
            let requests = http.take_ctl_requests();
            for r in &requests {
                if let CtlRequest::Silence {
                    cookie,
                    reason: Silence::Tls,
                } = r
                {
                    let pid = self.conns.pid_of(*cookie);
                    tracing::debug!(cookie, ?pid, "TLS ciphertext recognised");
                    if let Some(pid) = pid {
                        self.tls_seen.push(pid);
                        if self.tls_waiting.len() < TLS_WAITING_MAX && !s.tls.has_plaintext(*cookie)
                        {
                            self.tls_waiting.insert(*cookie, (pid, s.now_ns));
                        }
                    }
                }
            }
            if s.events.is_none() {
                for r in requests {
                    self.conns.request(r);
                }
            }
        }
        let now = s.now_ns;
        let unseen = &mut self.tls_unseen;
        self.tls_waiting.retain(|_, &mut (pid, since)| {
            let waiting = now.saturating_sub(since) < TLS_PLAINTEXT_WAIT_NS;
            if !waiting {
                unseen.push((pid, since));
            }
            waiting
        });
        self.conns.take_ctl_updates()
    }

    /// Processes whose TLS connection carried no plaintext in time since
    /// the last call: the TLS attachment reports them as not covered.
    pub fn take_tls_without_plaintext(&mut self) -> Vec<(u32, u64)> {
        std::mem::take(&mut self.tls_unseen)
    }

    /// Processes seen speaking TLS on a connection since the last call
    /// (repeats possible): the TLS attachment checks that they are covered.
    pub fn take_tls_seen(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.tls_seen)
    }

    /// End of a batch of records: push out buffered output.
    pub fn flush_output(&mut self) {
        self.stages.flush();
    }

    /// The end: every connection flushed, every span still held settled
    /// and handed on, the profiling worker stopped.
    pub fn finish(&mut self, now_ns: u64) {
        let s = &mut self.stages;
        s.now_ns = s.now_ns.max(now_ns);
        self.conns.flush_all(s);
        if let Some(http) = &mut s.http {
            // Every stream was delivered: no input can come any more.
            http.complete_until(u64::MAX);
        }
        if let Some(p) = &mut s.profile {
            p.close();
        }
        s.collect_samples();
        let now = s.now_ns;
        let mut spans = s.http.as_mut().map(|h| h.poll(now)).unwrap_or_default();
        spans.extend(s.http.as_mut().map(|h| h.flush()).unwrap_or_default());
        s.settle(spans);
        s.flush();
    }

    /// Describes programs just started, while they run (see
    /// [`crate::tls::attach::TlsAttach::started`]).
    pub fn describe_started(&mut self, pids: impl Iterator<Item = Pid>) {
        let now = crate::clock::monotonic_ns();
        for pid in pids {
            self.stages.spans.saw_pid(pid, None, now);
        }
    }

    /// The host's addresses changed (interfaces come and go).
    pub fn set_local_addrs(&mut self, local: &[std::net::IpAddr]) {
        if let Some(http) = &mut self.stages.http {
            http.set_local_addrs(local);
        }
    }

    /// The stages (for their counters and to shut them down).
    pub fn stages(&self) -> &Stages<O> {
        &self.stages
    }

    /// The stages, mutably.
    pub fn stages_mut(&mut self) -> &mut Stages<O> {
        &mut self.stages
    }

    /// The connection table.
    pub fn conns(&self) -> &Conns {
        &self.conns
    }

    /// The reading stage's counters.
    pub fn reader(&self) -> &ReaderCounters {
        &self.reader
    }
}

#[cfg(test)]
mod tests {
    use super::{Comm, RecentPids, RECENT_PIDS, RECHECK_NS};

    fn comm(name: &str) -> Comm {
        let mut c = [0; 16];
        c[..name.len()].copy_from_slice(name.as_bytes());
        Comm::new(c)
    }

    #[test]
    fn a_process_is_described_again_after_a_pause_a_new_name_or_a_collision() {
        let mut r = RecentPids::default();
        let (nginx, curl) = (comm("nginx"), comm("curl"));
        assert!(!r.seen(7, nginx, 1_000), "first sight");
        assert!(r.seen(7, nginx, 1_000 + RECHECK_NS - 1), "within the pause");
        assert!(!r.seen(7, curl, 1_001), "same pid, another name: reused");
        assert!(r.seen(7, curl, 1_002));
        assert!(!r.seen(7, curl, 1_001 + RECHECK_NS), "the pause is over");
        // Another pid in the same slot takes it: both are described again.
        let other = 7 + RECENT_PIDS as u32;
        assert!(!r.seen(other, curl, 2_000));
        assert!(!r.seen(7, curl, 2_001));
        // A record older than the last check (another CPU's lane) counts as
        // within the pause.
        assert!(r.seen(7, curl, 1_000));
    }
}
