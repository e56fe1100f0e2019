//! Work that would stall the event loop, done on a thread of its own:
//! closing uprobes and reading executables.
//!
//! - The kernel removes a uprobe only after RCU grace periods (about
//!   100 ms per probe on this project's machines), so closing a file's
//!   probes on the event loop stalled the ring readers for a third of a
//!   second each time a probed program exited or exec'd another: long
//!   enough for the CPU sample ring to overflow.
//! - Reading a Go executable's symbols, function table and DWARF takes
//!   25-35 ms for a 10-60 MiB program whose pages are cached, and 200-350 ms
//!   when they must come from disk (kubectl, 57 MiB).
//!
//! Each job's result comes back through [`Worker::finished`]; a job that
//! does not fit in the bounded queue is handed back to be done inline.
//! When the worker is dropped, the jobs still queued are dropped undone:
//! the links a closing job holds close as they drop, and a file not read
//! yet needs no reading.
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError},
        Arc,
    },
    thread::JoinHandle,
};

/// One thread, its bounded queue of jobs (`J`) and their results (`R`).
pub struct Worker<J: Send + 'static, R: Send + 'static> {
    jobs: Option<SyncSender<J>>,
    done: Receiver<R>,
    thread: Option<JoinHandle<()>>,
    /// Set when the worker is dropped: the jobs left are dropped undone.
    stopping: Arc<AtomicBool>,
    /// Jobs queued whose result was not taken yet.
    pending: usize,
    /// The work, for jobs done inline.
    work: fn(J) -> R,
}

impl<J: Send + 'static, R: Send + 'static> Worker<J, R> {
    /// Starts thread `name` doing `work`, with room for `queue` jobs
    /// (without a thread, every job is handed back, logged once).
    pub fn new(name: &str, queue: usize, work: fn(J) -> R) -> Worker<J, R> {
        let (jobs, jobs_rx) = mpsc::sync_channel::<J>(queue);
        // Unbounded, yet holds at most one result per job queued.
        let (done_tx, done) = mpsc::channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = stopping.clone();
        let spawned = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for job in jobs_rx {
                    if stop.load(Ordering::Relaxed) {
                        drop(job);
                    } else if done_tx.send(work(job)).is_err() {
                        return;
                    }
                }
            });
        let (jobs, thread) = match spawned {
            Ok(t) => (Some(jobs), Some(t)),
            Err(e) => {
                tracing::warn!(thread = name, error = %e, "cannot start a worker thread: its work is done on the event loop");
                (None, None)
            }
        };
        Worker {
            jobs,
            done,
            thread,
            stopping,
            pending: 0,
            work,
        }
    }

    /// Queues `job`; handed back when the queue is full (or there is no
    /// thread): do it inline with [`Worker::run_here`].
    pub fn submit(&mut self, job: J) -> Result<(), J> {
        let Some(jobs) = &self.jobs else {
            return Err(job);
        };
        match jobs.try_send(job) {
            Ok(()) => {
                self.pending += 1;
                Ok(())
            }
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => Err(job),
        }
    }

    /// Does `job` on the caller's thread.
    pub fn run_here(&self, job: J) -> R {
        (self.work)(job)
    }

    /// The results of the jobs finished since the last call.
    pub fn finished(&mut self) -> Vec<R> {
        let mut out = Vec::new();
        while self.pending > 0 {
            match self.done.try_recv() {
                Ok(r) => {
                    self.pending -= 1;
                    out.push(r);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        out
    }
}

impl<J: Send + 'static, R: Send + 'static> Drop for Worker<J, R> {
    /// Waits until every job queued is done or dropped: probes being closed
    /// are closed once the agent says it detached.
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc, Barrier,
        },
        time::Duration,
    };

    use super::*;

    /// A job that waits at a barrier (a uprobe's close waits for the
    /// kernel); it counts itself released when dropped, done or not.
    struct Job(u32, Option<Arc<Barrier>>, Arc<AtomicUsize>);

    impl Drop for Job {
        fn drop(&mut self) {
            self.2.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn work(job: Job) -> u32 {
        if let Some(gate) = &job.1 {
            gate.wait();
        }
        job.0
    }

    #[test]
    fn results_come_back_only_once_done() {
        let (gate, done) = (Arc::new(Barrier::new(2)), Arc::new(AtomicUsize::new(0)));
        let mut w = Worker::new("test", 4, work);
        // Returns while the job is still running.
        assert!(w.submit(Job(7, Some(gate.clone()), done.clone())).is_ok());
        assert_eq!(w.pending, 1);
        std::thread::sleep(Duration::from_millis(20));
        assert!(w.finished().is_empty(), "given back before it was done");
        gate.wait();
        let mut back = Vec::new();
        for _ in 0..500 {
            back.extend(w.finished());
            if !back.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(back, [7]);
        assert_eq!(w.pending, 0);
    }

    #[test]
    fn a_full_queue_hands_the_job_back_and_dropping_releases_the_rest() {
        let (gate, done) = (Arc::new(Barrier::new(2)), Arc::new(AtomicUsize::new(0)));
        let queue = 8;
        let mut w = Worker::new("test", queue, work);
        // The thread is held on the first job; the queue fills behind it.
        assert!(w.submit(Job(0, Some(gate.clone()), done.clone())).is_ok());
        let mut n = 1;
        let back = loop {
            match w.submit(Job(n, None, done.clone())) {
                Ok(()) => n += 1,
                Err(job) => break job,
            }
            assert!(n < queue as u32 + 3, "the queue is not bounded");
        };
        assert_eq!(w.run_here(back), n);
        assert_eq!(done.load(Ordering::SeqCst), 1);
        gate.wait();
        drop(w);
        // Every queued job was released (its links closed) before the
        // worker was gone.
        assert_eq!(done.load(Ordering::SeqCst), n as usize + 1);
    }
}
