//! What the correlator knows about its own blind spots: inputs that may
//! have held a request some process read were lost (a stream hole, a
//! message without its call, records the kernel could not deliver), and
//! how far the driver has delivered its inputs.
//!
//! Rules that link by uniqueness (a forwarded request, a request id: "the
//! one request in flight in the process that matches") are proof only
//! when every request in flight is known. A request lost on its way in is
//! exactly what would make a wrong candidate look unique, so those rules
//! wait until the inputs from before a call are complete, and do not apply
//! where a loss may hide a request.
use std::collections::HashMap;

use crate::model::Pid;

/// Processes with their own loss mark, at most; past it, a loss marks
/// every process.
const MAX_PROCESSES: usize = 1024;

/// Where requests may have been lost, as time intervals (inclusive).
#[derive(Default)]
pub(crate) struct LossMarks {
    /// A loss no process could be named for: it may hide a request of any.
    any: Option<(u64, u64)>,
    by_pid: HashMap<Pid, (u64, u64)>,
}

/// `a` widened to cover `b` as well: marks only ever grow until pruned.
fn cover(a: Option<(u64, u64)>, b: (u64, u64)) -> (u64, u64) {
    match a {
        Some((f, u)) => (f.min(b.0), u.max(b.1)),
        None => b,
    }
}

impl LossMarks {
    /// A request of `pid` (`None`: of any process) read from `from` on may
    /// have been lost; it may still have been in flight until `until`.
    pub fn mark(&mut self, pid: Option<Pid>, from: u64, until: u64) {
        let span = (from, until.max(from));
        match pid {
            Some(p) if self.by_pid.len() < MAX_PROCESSES || self.by_pid.contains_key(&p) => {
                let m = cover(self.by_pid.get(&p).copied(), span);
                self.by_pid.insert(p, m);
            }
            _ => self.any = Some(cover(self.any, span)),
        }
    }

    /// May a lost request of `pid` have been in flight at `t`?
    pub fn covers(&self, pid: Pid, t: u64) -> bool {
        let within = |m: &(u64, u64)| m.0 <= t && t <= m.1;
        self.any.as_ref().is_some_and(within) || self.by_pid.get(&pid).is_some_and(within)
    }

    /// Forget marks that ended before `before`.
    pub fn prune(&mut self, before: u64) {
        if self.any.is_some_and(|m| m.1 < before) {
            self.any = None;
        }
        self.by_pid.retain(|_, m| m.1 >= before);
    }

    /// Heap bytes, estimated from capacity.
    pub fn heap_bytes(&self) -> usize {
        crate::index::table_bytes::<(Pid, (u64, u64))>(self.by_pid.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_covers_its_process_or_every_process() {
        let mut m = LossMarks::default();
        m.mark(Some(Pid(7)), 100, 200);
        assert!(m.covers(Pid(7), 100) && m.covers(Pid(7), 200));
        assert!(!m.covers(Pid(7), 99) && !m.covers(Pid(7), 201));
        assert!(!m.covers(Pid(8), 150));
        m.mark(None, 300, 400);
        assert!(m.covers(Pid(8), 350) && m.covers(Pid(7), 350));
        m.prune(250);
        assert!(!m.covers(Pid(7), 150) && m.covers(Pid(8), 350));
    }

    #[test]
    fn past_the_bound_a_loss_marks_every_process() {
        let mut m = LossMarks::default();
        for p in 0..MAX_PROCESSES as u32 {
            m.mark(Some(Pid(p)), 10, 20);
        }
        m.mark(Some(Pid(u32::MAX)), 30, 40);
        assert!(m.covers(Pid(0), 35), "an unmarked-space loss covers all");
        assert!(m.by_pid.len() <= MAX_PROCESSES);
    }
}
