//! What runtime hooks say about causes: a thread of a process working for
//! the request that came on a connection, between two instants (an
//! *extent*), and the connections it opened meanwhile.
//!
//! A call written by that thread inside an extent, or the first call on a
//! connection opened inside one, is made for that request (the hooked
//! program says so: e.g. nginx's `ngx_http_upstream_init(r)`). Which
//! request of the connection it was is decided later, among the requests
//! in flight on it then ([`Correlator`](crate::Correlator) rule "runtime").
//!
//! Bounded: extents kept for a while after they end, a bounded number of
//! them, of threads and of opened connections, each kept until it is used or expires (socket
//! cookies are never reused, so a cause cannot outlive its connection into
//! another); what is forgotten only leaves a call without this evidence.
use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};

use crate::model::{ConnId, Pid, Tid};

/// Extents remembered in all (a call's message may come a reorder window
/// after its extent, and an event loop steps tasks thousands of times a
/// second: extents are kept by time, see `forget_before`, and this bounds
/// their memory, 32 bytes each).
const MAX_EXTENTS: usize = 1 << 18;

/// How long after a connection was opened or chosen for a request its
/// next call is taken as that request's (a connect takes a round trip, a
/// chosen connection is written to at once): a call much later, whose own
/// cause was lost, must not take it.
const OPENED_WAIT_NS: u64 = 1_000_000_000;

/// How long an extent whose end was not seen covers calls: a hooked
/// function runs for microseconds, and a lost end record (a full lane,
/// counted in the kernel) must not make later calls look caused.
const OPEN_EXTENT_NS: u64 = 50_000_000;

/// What a hook saw a thread do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CauseEvent {
    /// The thread starts working for the request that came on `conn`.
    Enter {
        /// The connection of that request.
        conn: ConnId,
    },
    /// The thread is done with that work (or with the task's step).
    Leave,
    /// The thread starts stepping asyncio task `task` (an address).
    TaskEnter {
        /// The task.
        task: u64,
    },
    /// Task `task` was created while task `parent` was being stepped (0:
    /// outside any task).
    TaskCreate {
        /// The new task.
        task: u64,
        /// Its creator.
        parent: u64,
    },
    /// Inside that work, the thread opened connection `conn` (or chose it
    /// for its next request) for the request that came on `cause`: the
    /// next call on `conn` is made for it.
    Connect {
        /// The connection opened or chosen.
        conn: ConnId,
        /// The connection of the request it was opened for.
        cause: ConnId,
        /// When the work for that request began (the request was in
        /// flight then), if before this event.
        since: Option<u64>,
    },
}

/// A call's cause, as the hooks said: the request in flight on `conn` at
/// `at_ns` (in the call's process).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cause {
    pub conn: ConnId,
    pub at_ns: u64,
}

/// An asyncio task: its address and when it was created (0: before the
/// agent saw it). Addresses are reused once a task is freed; the creation
/// time tells the tasks at one address apart.
pub(crate) type TaskId = (u64, u64);

/// What is known of a task: when it was created, and by which task.
#[derive(Clone, Copy)]
struct TaskInfo {
    created: u64,
    parent: Option<TaskId>,
}

/// What a thread works for during an extent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum For {
    /// The request on a connection.
    Conn(ConnId),
    /// An asyncio task.
    Task(TaskId),
}

#[derive(Clone, Copy)]
struct Extent {
    start: u64,
    end: Option<u64>,
    what: For,
}

/// Ancestors followed from a task.
const MAX_TASK_DEPTH: usize = 32;

/// The key of a task in the correlator's indexes (within its process).
pub(crate) fn task_key(id: TaskId) -> u64 {
    id.0 ^ id.1.rotate_left(29) ^ 0x7461_736b_0000_0000
}

/// The extents and opened connections of the hooked processes.
pub(crate) struct Causes {
    /// Per thread, in time order.
    threads: HashMap<(Pid, Tid), VecDeque<Extent>>,
    extents: usize,
    /// By connection: the process, the cause, and when it was said.
    opened: HashMap<ConnId, (Pid, Cause, u64)>,
    /// asyncio tasks' creation and creators, by process and address.
    tasks: HashMap<(Pid, u64), TaskInfo>,
    max_threads: usize,
    max_opened: usize,
}

impl Causes {
    pub fn new(max_threads: usize, max_opened: usize) -> Causes {
        Causes {
            threads: HashMap::new(),
            extents: 0,
            opened: HashMap::new(),
            tasks: HashMap::new(),
            max_threads: max_threads.max(1),
            max_opened: max_opened.max(1),
        }
    }

    /// Nothing was ever said (the common case: no hooked process): calls
    /// need no look-up.
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty() && self.opened.is_empty()
    }

    fn push_extent(&mut self, pid: Pid, tid: Tid, t: u64, what: For) -> u64 {
        let mut forgot = 0;
        let new_thread = !self.threads.contains_key(&(pid, tid));
        if self.extents >= MAX_EXTENTS || (new_thread && self.threads.len() >= self.max_threads) {
            forgot = self.extents as u64;
            self.threads.clear();
            self.extents = 0;
        }
        let v = self.threads.entry((pid, tid)).or_default();
        // One extent at a time per thread: one still open lost its end
        // record.
        if let Some(prev) = v.back_mut().filter(|e| e.end.is_none()) {
            prev.end = Some(t);
        }
        v.push_back(Extent {
            start: t,
            end: None,
            what,
        });
        self.extents += 1;
        forgot
    }

    /// The extent thread `tid` of `pid` was in at `t`.
    fn extent_at(&self, pid: Pid, tid: Tid, t: u64) -> Option<&Extent> {
        let v = self.threads.get(&(pid, tid))?;
        let i = v.partition_point(|e| e.start <= t).checked_sub(1)?;
        let e = &v[i];
        (t <= e.end.unwrap_or(e.start + OPEN_EXTENT_NS)).then_some(e)
    }

    /// The task at `addr` now.
    fn task(&self, pid: Pid, addr: u64) -> TaskId {
        (addr, self.tasks.get(&(pid, addr)).map_or(0, |i| i.created))
    }

    /// The asyncio task thread `tid` of `pid` was stepping at `t`.
    pub fn task_at(&self, pid: Pid, tid: Tid, t: u64) -> Option<TaskId> {
        match self.extent_at(pid, tid, t)?.what {
            For::Task(id) => Some(id),
            For::Conn(_) => None,
        }
    }

    /// Task `id` and its ancestors, nearest first, as far as they are known
    /// (a creator whose address now holds another task ends the line).
    pub fn lineage(&self, pid: Pid, id: TaskId) -> Vec<TaskId> {
        let mut out = vec![id];
        let mut cur = id;
        while out.len() < MAX_TASK_DEPTH {
            match self.tasks.get(&(pid, cur.0)) {
                Some(i) if i.created == cur.1 => match i.parent {
                    Some(p) if !out.contains(&p) => {
                        out.push(p);
                        cur = p;
                    }
                    _ => break,
                },
                _ => break,
            }
        }
        out
    }

    /// One event of thread `tid` of `pid` at `t`. Returns how many
    /// remembered items a bound made it forget.
    pub fn event(&mut self, pid: Pid, tid: Tid, t: u64, ev: CauseEvent) -> u64 {
        match ev {
            CauseEvent::Enter { conn } => self.push_extent(pid, tid, t, For::Conn(conn.socket())),
            CauseEvent::TaskEnter { task } => {
                let id = self.task(pid, task);
                self.push_extent(pid, tid, t, For::Task(id))
            }
            CauseEvent::TaskCreate { task, parent } => {
                let mut forgot = 0;
                if self.tasks.len() >= self.max_opened {
                    forgot = self.tasks.len() as u64;
                    self.tasks.clear();
                }
                let parent = (parent != 0).then(|| self.task(pid, parent));
                self.tasks
                    .insert((pid, task), TaskInfo { created: t, parent });
                forgot
            }
            CauseEvent::Leave => {
                if let Some(e) = self
                    .threads
                    .get_mut(&(pid, tid))
                    .and_then(|v| v.back_mut())
                    .filter(|e| e.end.is_none())
                {
                    e.end = Some(t);
                }
                0
            }
            CauseEvent::Connect { conn, cause, since } => {
                let mut forgot = 0;
                if self.opened.len() >= self.max_opened {
                    forgot = self.opened.len() as u64;
                    self.opened.clear();
                }
                let at_ns = since.unwrap_or(t).min(t);
                let cause = Cause {
                    conn: cause.socket(),
                    at_ns,
                };
                self.opened.insert(conn.socket(), (pid, cause, t));
                forgot
            }
        }
    }

    /// The cause of a call written on `conn` by thread `tid` of `pid` at
    /// `t`: the extent it was written in, else the one its connection was
    /// opened in (for its first call only: any call takes that away).
    /// Hooks name sockets: a call on a layer over one (TLS plaintext) is
    /// the socket's, and so is the connection of the request in a cause.
    pub fn of_call(&mut self, pid: Pid, tid: Tid, conn: ConnId, t: u64) -> Option<Cause> {
        let opened = self.opened.remove(&conn.socket());
        if let Some(&Extent {
            start,
            what: For::Conn(c),
            ..
        }) = self.extent_at(pid, tid, t)
        {
            return Some(Cause {
                conn: c,
                at_ns: start,
            });
        }
        match opened {
            Some((p, c, said)) if p == pid && said <= t && t - said <= OPENED_WAIT_NS => Some(c),
            _ => None,
        }
    }

    /// Extents that ended, and opened connections that waited, before
    /// `before` go (their calls have been decided). Task creators stay
    /// until their bound: a task lives as long as it likes.
    pub fn forget_before(&mut self, before: u64) {
        let mut left = 0;
        self.threads.retain(|_, v| {
            // In time order: the old ones are at the front.
            while v
                .front()
                .is_some_and(|e| e.end.unwrap_or(e.start + OPEN_EXTENT_NS) < before)
            {
                v.pop_front();
            }
            left += v.len();
            !v.is_empty()
        });
        self.extents = left;
        self.opened.retain(|_, (_, _, said)| *said >= before);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Pid = Pid(10);
    const T: Tid = Tid(11);
    const C: ConnId = ConnId(1);
    const U: ConnId = ConnId(2);

    #[test]
    fn a_call_inside_an_extent_has_its_cause_and_one_outside_has_none() {
        let mut c = Causes::new(16, 16);
        c.event(P, T, 100, CauseEvent::Enter { conn: C });
        c.event(P, T, 200, CauseEvent::Leave);
        let inside = c.of_call(P, T, U, 150);
        assert_eq!(
            inside,
            Some(Cause {
                conn: C,
                at_ns: 100
            })
        );
        assert_eq!(c.of_call(P, T, U, 250), None);
        assert_eq!(c.of_call(P, Tid(12), U, 150), None, "another thread");
        assert_eq!(c.of_call(Pid(9), T, U, 150), None, "another process");
    }

    #[test]
    fn an_open_extent_covers_what_follows_its_entry() {
        let mut c = Causes::new(16, 16);
        c.event(P, T, 100, CauseEvent::Enter { conn: C });
        assert!(c.of_call(P, T, U, 99).is_none());
        assert_eq!(c.of_call(P, T, U, 101).map(|x| x.conn), Some(C));
        assert!(
            c.of_call(P, T, U, 100 + OPEN_EXTENT_NS + 1).is_none(),
            "an end record lost does not extend it for ever"
        );
        c.event(P, T, 300, CauseEvent::Enter { conn: ConnId(7) });
        assert_eq!(c.of_call(P, T, U, 350).map(|x| x.conn), Some(ConnId(7)));
        assert_eq!(c.of_call(P, T, U, 250).map(|x| x.conn), Some(C));
    }

    #[test]
    fn a_connection_opened_in_an_extent_gives_its_first_call_only() {
        let mut c = Causes::new(16, 16);
        c.event(P, T, 100, CauseEvent::Enter { conn: C });
        c.event(
            P,
            T,
            110,
            CauseEvent::Connect {
                conn: U,
                cause: C,
                since: None,
            },
        );
        c.event(P, T, 120, CauseEvent::Leave);
        // Sent once the connection is up, outside the extent.
        assert_eq!(c.of_call(P, T, U, 500).map(|x| x.conn), Some(C));
        assert_eq!(c.of_call(P, T, U, 900), None, "the next call on it");
    }

    #[test]
    fn a_chosen_connection_names_when_its_work_began_and_expires() {
        let mut c = Causes::new(16, 16);
        let chosen = |c: &mut Causes, t| {
            c.event(
                P,
                T,
                t,
                CauseEvent::Connect {
                    conn: U,
                    cause: C,
                    since: Some(50),
                },
            )
        };
        chosen(&mut c, 100);
        assert_eq!(
            c.of_call(P, Tid(12), U, 120),
            Some(Cause { conn: C, at_ns: 50 })
        );
        chosen(&mut c, 100);
        assert_eq!(
            c.of_call(P, T, U, 100 + OPENED_WAIT_NS + 1),
            None,
            "too late"
        );
        chosen(&mut c, 100);
        assert_eq!(c.of_call(Pid(3), T, U, 120), None, "another process");
    }

    #[test]
    fn a_task_s_lineage_stops_where_an_address_was_reused() {
        let mut c = Causes::new(16, 16);
        let create = |c: &mut Causes, t, task, parent| {
            c.event(P, T, t, CauseEvent::TaskCreate { task, parent });
        };
        create(&mut c, 10, 0xa, 0);
        create(&mut c, 20, 0xb, 0xa);
        create(&mut c, 30, 0xc, 0xb);
        c.event(P, T, 40, CauseEvent::TaskEnter { task: 0xc });
        c.event(P, T, 50, CauseEvent::Leave);
        let id = c.task_at(P, T, 45).expect("stepping c");
        assert_eq!(c.lineage(P, id), vec![(0xc, 30), (0xb, 20), (0xa, 10)]);
        assert_eq!(c.task_at(P, T, 55), None);
        // b freed, its address reused by a task nobody created: c's line
        // ends at b.
        create(&mut c, 60, 0xb, 0);
        assert_eq!(c.lineage(P, id), vec![(0xc, 30), (0xb, 20)]);
    }

    #[test]
    fn bounds_forget_rather_than_grow() {
        let mut c = Causes::new(2, 2);
        for t in 0..3u32 {
            c.event(P, Tid(t), 10, CauseEvent::Enter { conn: C });
        }
        assert!(c.threads.len() <= 2);
        for i in 0..20u64 {
            c.event(P, T, 10 + i, CauseEvent::Enter { conn: C });
        }
        assert!(c.extents <= 22);
        for i in 0..3u64 {
            c.event(
                P,
                T,
                10,
                CauseEvent::Connect {
                    conn: ConnId(100 + i),
                    cause: C,
                    since: None,
                },
            );
        }
        assert!(c.opened.len() <= 2);
        c.forget_before(1_000);
        assert!(!c.is_empty(), "an extent still open is kept for a while");
        c.forget_before(1_000 + OPEN_EXTENT_NS);
        assert!(c.is_empty());
    }
}
