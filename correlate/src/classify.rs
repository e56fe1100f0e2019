//! How each process serves requests, learnt from what the correlator
//! observes: one request per thread with blocking calls (a pool: Java
//! executors, Python threading servers), where rule 4 is proof, or
//! multiplexing (event loops, async clients, M:N runtimes), where it is not.
//!
//! A process starts *unproven*. It becomes *thread per request* once it
//! has answered [`Config::pool_min_requests`] requests, each on the thread
//! that read it, on at least two threads, with no sign of multiplexing. Any
//! sign makes it *multiplexing* for as long as it is remembered (signs are
//! sticky: one is enough to show the process can interleave work):
//! - two server requests in progress at once on one thread (a pipelined
//!   connection shows the same way: rule 4 could not tell them apart
//!   either);
//! - a thread moving any message on another connection while one of its
//!   calls is waiting for its response (a blocking call blocks its thread
//!   until the response comes), or writing a second call meanwhile. Once
//!   the response has begun, traffic elsewhere is no sign: a blocking
//!   proxy streams a response on as it reads it (Apache's mod_proxy
//!   writes the response head downstream before the body has come);
//! - a call made outside any request on a thread that serves requests
//!   (timers, pollers and health checks that share the serving thread);
//! - *hand-off*: a request read on one thread and answered on another, or
//!   a call written on one thread and its response read on another.
//!
//! A single-threaded process (Node, asyncio, an nginx worker) is never
//! proven: it cannot be told from an event loop by its traffic alone.
//! A multi-threaded event loop whose every thread happens to serve
//! sequentially, without timers, shows no sign until it does; the minimum
//! of answered requests gives it time to.

use foldhash::{HashMap, HashMapExt};

use crate::config::{Config, Counters};
use crate::index::SpanKey;
use crate::model::{ConnId, Pid, Tid};

/// Signs that a process does not serve one request per thread.
pub(crate) mod sign {
    /// Two requests in progress at once on one thread.
    pub const OVERLAP: u8 = 1;
    /// Traffic on a thread while one of its calls was outstanding.
    pub const CALL_OVERLAP: u8 = 2;
    /// A call outside any request on a thread that serves.
    pub const BACKGROUND: u8 = 4;
    /// A request or call moved between threads.
    pub const HANDOFF: u8 = 8;
}

/// What rule 4 may assume of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Each thread serves one request at a time with blocking calls.
    ThreadPerRequest,
    /// Not known yet (or a single serving thread).
    Unproven,
    /// Seen to interleave work on a thread.
    Multiplexing,
    /// Seen to move requests or calls between threads.
    HandOff,
}

#[derive(Default)]
struct Proc {
    /// The first thread seen answering a request it read.
    first_tid: Option<Tid>,
    /// Another thread did too.
    several_threads: bool,
    /// Requests answered on the thread that read them.
    clean: u32,
    /// [`sign`] bits seen.
    signs: u8,
    /// Server requests read and not ended.
    open: u32,
    /// Counted in `processes_thread_per_request`.
    counted_pool: bool,
    last_seen: u64,
}

impl Proc {
    /// Serves one request per thread: no sign, and `pool_min` requests
    /// answered on the thread that read them, on two threads at least.
    fn proven(&self, pool_min: u32) -> bool {
        self.signs == 0 && self.several_threads && self.clean >= pool_min
    }
}

/// The call a thread is waiting for (the latest it wrote), to see whether
/// the thread moves other traffic meanwhile.
struct Caller {
    key: SpanKey,
    conn: ConnId,
    start: u64,
    /// When the thread stopped waiting for it: its response's first byte
    /// was read, or the call failed; `None` while it waits.
    waited_until: Option<u64>,
    /// Earliest time the thread moved something on another connection after
    /// the call started, seen while its end was unknown.
    first_foreign: u64,
    last_seen: u64,
}

/// Process classification and per-thread call tracking, bounded.
pub(crate) struct Classifier {
    procs: HashMap<Pid, Proc>,
    callers: HashMap<(Pid, Tid), Caller>,
    max: usize,
    pool_min: u32,
}

impl Classifier {
    pub fn new(cfg: &Config) -> Classifier {
        Classifier {
            procs: HashMap::new(),
            callers: HashMap::new(),
            max: cfg.max_threads.max(1),
            pool_min: cfg.pool_min_requests.max(1),
        }
    }

    fn proc(&mut self, pid: Pid, now: u64, k: &mut Counters) -> &mut Proc {
        if self.procs.len() >= self.max && !self.procs.contains_key(&pid) {
            // Forget idle processes first; if all are busy, everything
            // (they start over unproven: safe, rule 4 just stops).
            self.procs.retain(|_, p| p.open > 0);
            if self.procs.len() >= self.max {
                self.procs.clear();
            }
            k.classify_overflow += 1;
        }
        let p = self.procs.entry(pid).or_default();
        p.last_seen = now;
        p
    }

    fn sign(&mut self, pid: Pid, bits: u8, now: u64, k: &mut Counters) {
        let p = self.proc(pid, now, k);
        if p.signs == 0 {
            k.processes_multiplexing += 1;
        }
        p.signs |= bits;
    }

    /// A server request was read on `tid` at `t`; `overlap`: another was in
    /// progress on that thread.
    pub fn server_read(&mut self, pid: Pid, overlap: bool, now: u64, k: &mut Counters) {
        self.proc(pid, now, k).open += 1;
        if overlap {
            self.sign(pid, sign::OVERLAP, now, k);
        }
    }

    /// A server request read on `read` was answered by thread `answer`.
    pub fn server_answered(
        &mut self,
        pid: Pid,
        read: Tid,
        answer: Tid,
        now: u64,
        k: &mut Counters,
    ) {
        if read != answer {
            self.sign(pid, sign::HANDOFF, now, k);
            return;
        }
        let pool_min = self.pool_min;
        let p = self.proc(pid, now, k);
        p.clean = p.clean.saturating_add(1);
        match p.first_tid {
            None => p.first_tid = Some(read),
            Some(t) if t != read => p.several_threads = true,
            Some(_) => {}
        }
        if !p.counted_pool && p.proven(pool_min) {
            p.counted_pool = true;
            k.processes_thread_per_request += 1;
        }
    }

    /// Two server requests were in progress at once on one thread.
    pub fn overlap(&mut self, pid: Pid, now: u64, k: &mut Counters) {
        self.sign(pid, sign::OVERLAP, now, k);
    }

    /// A server request ended (answered or not).
    pub fn server_ended(&mut self, pid: Pid) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.open = p.open.saturating_sub(1);
        }
    }

    /// Whether the process had server requests in flight (read, not ended).
    pub fn serving(&self, pid: Pid) -> bool {
        self.procs.get(&pid).is_some_and(|p| p.open > 0)
    }

    /// A call outside any request on a thread that serves.
    pub fn background_call(&mut self, pid: Pid, now: u64, k: &mut Counters) {
        self.sign(pid, sign::BACKGROUND, now, k);
    }

    /// Any message moved by `pid`/`tid` on `conn` at `t` (before the call
    /// it may be is recorded by [`Self::call_written`]).
    pub fn message(&mut self, pid: Pid, tid: Tid, conn: ConnId, t: u64, k: &mut Counters) {
        if self.callers.is_empty() {
            return;
        }
        let Some(c) = self.callers.get_mut(&(pid, tid)) else {
            return;
        };
        if conn == c.conn || t <= c.start {
            return;
        }
        match c.waited_until {
            Some(until) => {
                if t < until {
                    self.sign(pid, sign::CALL_OVERLAP, t, k);
                }
            }
            // Judged when the response is read: it may only be late.
            None => c.first_foreign = c.first_foreign.min(t),
        }
    }

    /// Thread `tid` wrote call `key` on `conn` at `t`.
    pub fn call_written(
        &mut self,
        pid: Pid,
        tid: Tid,
        conn: ConnId,
        key: SpanKey,
        t: u64,
        k: &mut Counters,
    ) {
        let fresh = Caller {
            key,
            conn,
            start: t,
            waited_until: None,
            first_foreign: u64::MAX,
            last_seen: t,
        };
        if let Some(c) = self.callers.get_mut(&(pid, tid)) {
            if c.waited_until.is_none() && c.start < t {
                // The thread's previous call is still outstanding: judged
                // when it is answered (a second call on the same connection
                // is pipelining, not a sign).
                c.last_seen = t;
            } else {
                *c = fresh;
            }
            return;
        }
        if self.callers.len() >= self.max {
            self.callers.retain(|_, c| c.waited_until.is_none());
            if self.callers.len() >= self.max {
                self.callers.clear();
            }
            k.classify_overflow += 1;
        }
        self.callers.insert((pid, tid), fresh);
    }

    /// Call `key`, written by `writer`, was answered by a response read by
    /// `reader`, from `began` (its first byte) to `end`.
    pub fn call_answered(
        &mut self,
        pid: Pid,
        writer: Tid,
        key: SpanKey,
        (began, end): (u64, u64),
        reader: Tid,
        k: &mut Counters,
    ) {
        if writer != reader {
            self.sign(pid, sign::HANDOFF, end, k);
        }
        let Some(c) = self.callers.get_mut(&(pid, writer)) else {
            return;
        };
        if c.key != key {
            return;
        }
        c.waited_until = Some(began);
        c.last_seen = end;
        if c.first_foreign < began {
            self.sign(pid, sign::CALL_OVERLAP, end, k);
        }
    }

    /// Call `key` ended without a response (closed, reset, evicted): the
    /// thread may have given up on it, so nothing is judged.
    pub fn call_failed(&mut self, pid: Pid, writer: Tid, key: SpanKey, end: u64) {
        if let Some(c) = self.callers.get_mut(&(pid, writer)) {
            if c.key == key {
                c.waited_until = Some(end);
                c.first_foreign = u64::MAX;
            }
        }
    }

    /// What rule 4 may assume of `pid` now.
    pub fn mode(&self, pid: Pid) -> Mode {
        let Some(p) = self.procs.get(&pid) else {
            return Mode::Unproven;
        };
        if p.signs & sign::HANDOFF != 0 {
            Mode::HandOff
        } else if p.signs != 0 {
            Mode::Multiplexing
        } else if p.proven(self.pool_min) {
            Mode::ThreadPerRequest
        } else {
            Mode::Unproven
        }
    }

    /// Forget threads whose last call ended before `calls_before` and
    /// processes idle since `procs_before`.
    pub fn prune(&mut self, calls_before: u64, procs_before: u64) {
        self.callers
            .retain(|_, c| c.waited_until.is_none() || c.last_seen >= calls_before);
        self.procs
            .retain(|_, p| p.open > 0 || p.last_seen >= procs_before);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cl() -> (Classifier, Counters) {
        let cfg = Config {
            pool_min_requests: 3,
            ..Config::default()
        };
        (Classifier::new(&cfg), Counters::default())
    }

    #[test]
    fn a_pool_is_proven_by_clean_answers_on_two_threads() {
        let (mut c, mut k) = cl();
        let p = Pid(1);
        for (i, t) in [1u32, 1, 1].iter().enumerate() {
            c.server_read(p, false, i as u64, &mut k);
            c.server_answered(p, Tid(*t), Tid(*t), i as u64, &mut k);
        }
        assert_eq!(c.mode(p), Mode::Unproven, "one thread is no pool");
        c.server_answered(p, Tid(2), Tid(2), 9, &mut k);
        assert_eq!(c.mode(p), Mode::ThreadPerRequest);
        assert_eq!(k.processes_thread_per_request, 1);
        c.server_answered(p, Tid(3), Tid(4), 10, &mut k);
        assert_eq!(c.mode(p), Mode::HandOff, "signs are sticky");
        assert_eq!(k.processes_multiplexing, 1);
    }

    #[test]
    fn traffic_while_a_call_is_outstanding_is_judged_when_it_is_answered() {
        let (mut c, mut k) = cl();
        let (p, t) = (Pid(1), Tid(1));
        c.call_written(p, t, ConnId(1), 7, 100, &mut k);
        // Another connection moves at 150; the call's response is only
        // reported later.
        c.message(p, t, ConnId(2), 150, &mut k);
        c.call_answered(p, t, 7, (140, 140), t, &mut k);
        assert_eq!(c.mode(p), Mode::Unproven, "the call ended at 140, before");
        c.call_written(p, t, ConnId(1), 8, 200, &mut k);
        c.message(p, t, ConnId(3), 250, &mut k);
        c.call_answered(p, t, 8, (300, 300), t, &mut k);
        assert_eq!(c.mode(p), Mode::Multiplexing);
    }

    #[test]
    fn a_response_streamed_on_while_it_is_read_is_no_sign() {
        let (mut c, mut k) = cl();
        let (p, t) = (Pid(1), Tid(1));
        // A blocking proxy: the backend's response head is read at 140,
        // the head written downstream at 150, the body read by 170 and
        // written on; the thread waited for nothing else.
        c.call_written(p, t, ConnId(1), 7, 100, &mut k);
        c.message(p, t, ConnId(2), 150, &mut k);
        c.call_answered(p, t, 7, (140, 170), t, &mut k);
        c.message(p, t, ConnId(2), 160, &mut k);
        assert_eq!(c.mode(p), Mode::Unproven);
        // Traffic elsewhere before the response began is a sign, whether
        // it is reported before the response or after.
        c.call_written(p, t, ConnId(1), 8, 200, &mut k);
        c.call_answered(p, t, 8, (240, 260), t, &mut k);
        c.message(p, t, ConnId(3), 230, &mut k);
        assert_eq!(c.mode(p), Mode::Multiplexing);
        let (mut c, mut k) = cl();
        c.call_written(p, t, ConnId(1), 9, 300, &mut k);
        c.message(p, t, ConnId(3), 330, &mut k);
        c.call_answered(p, t, 9, (340, 360), t, &mut k);
        assert_eq!(c.mode(p), Mode::Multiplexing);
    }

    #[test]
    fn a_response_read_on_another_thread_is_a_hand_off() {
        let (mut c, mut k) = cl();
        c.call_written(Pid(1), Tid(1), ConnId(1), 1, 10, &mut k);
        c.call_answered(Pid(1), Tid(1), 1, (20, 20), Tid(2), &mut k);
        assert_eq!(c.mode(Pid(1)), Mode::HandOff);
    }

    #[test]
    fn bounded() {
        let cfg = Config {
            max_threads: 2,
            ..Config::default()
        };
        let (mut c, mut k) = (Classifier::new(&cfg), Counters::default());
        for i in 0..10 {
            c.server_read(Pid(i), false, 0, &mut k);
            c.server_ended(Pid(i));
            c.call_written(Pid(i), Tid(i), ConnId(1), 1, 1, &mut k);
        }
        assert!(c.procs.len() <= 2 && c.callers.len() <= 2);
        assert!(k.classify_overflow > 0);
    }
}
