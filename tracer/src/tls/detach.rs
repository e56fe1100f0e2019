//! Closes uprobe links on a thread of their own. The kernel removes a
//! uprobe only after RCU grace periods (about 100 ms per probe closed, on
//! this project's machines), so closing a file's probes on the event loop
//! stalled the ring readers for a third of a second each time a probed
//! program exited or exec'd another: long enough for the CPU sample ring to
//! overflow.
//!
//! What was closed comes back as its token, so that whatever the probes
//! referred to (a map slot given as their cookie) is reused only once no
//! probe can fire with it.
use std::{
    sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError},
    thread::JoinHandle,
};

/// Files whose links may wait to be closed; past it they are closed on the
/// caller's thread (counted), so memory stays bounded when programs exit by
/// the hundred.
const QUEUE: usize = 256;

/// One file's links (`L`: `aya`'s `UProbeLink`, whose drop closes it) and
/// the token given back once they are closed.
type Job<L, T> = (Vec<L>, T);

/// The closing thread, and what it finished.
pub struct Detacher<L: Send + 'static, T: Send + 'static> {
    jobs: Option<SyncSender<Job<L, T>>>,
    done: Receiver<T>,
    thread: Option<JoinHandle<()>>,
    /// Closings queued and not yet reported done.
    pending: usize,
    /// Tokens of the links closed inline, to be given back.
    ready: Vec<T>,
    /// Files whose links were closed on the caller's thread: the queue was
    /// full or the thread could not be started.
    pub closed_inline: u64,
}

impl<L: Send + 'static, T: Send + 'static> Detacher<L, T> {
    /// Starts the thread (without one, links are closed inline, logged).
    pub fn new() -> Detacher<L, T> {
        let (jobs, jobs_rx) = mpsc::sync_channel::<Job<L, T>>(QUEUE);
        // Unbounded, yet holds at most QUEUE + 1 tokens: one per job.
        let (done_tx, done) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("tracer-detach".into())
            .spawn(move || {
                for (links, token) in jobs_rx {
                    drop(links);
                    if done_tx.send(token).is_err() {
                        return;
                    }
                }
            });
        let (jobs, thread) = match spawned {
            Ok(t) => (Some(jobs), Some(t)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the thread that detaches probes: they are detached on the event loop");
                (None, None)
            }
        };
        Detacher {
            jobs,
            done,
            thread,
            pending: 0,
            ready: Vec::new(),
            closed_inline: 0,
        }
    }

    /// Closes `links`; `token` comes back from [`Detacher::finished`] once
    /// they are closed.
    pub fn detach(&mut self, links: Vec<L>, token: T) {
        let (links, token) = match &self.jobs {
            Some(jobs) => match jobs.try_send((links, token)) {
                Ok(()) => {
                    self.pending += 1;
                    return;
                }
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => job,
            },
            None => (links, token),
        };
        self.closed_inline += 1;
        drop(links);
        self.ready.push(token);
    }

    /// The tokens of the closings finished since the last call.
    pub fn finished(&mut self) -> Vec<T> {
        let mut out = std::mem::take(&mut self.ready);
        while self.pending > 0 {
            match self.done.try_recv() {
                Ok(t) => {
                    self.pending -= 1;
                    out.push(t);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        out
    }
}

impl<L: Send + 'static, T: Send + 'static> Drop for Detacher<L, T> {
    /// Waits for every queued closing: nothing stays attached once the
    /// agent says it detached.
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Barrier},
        time::Duration,
    };

    use super::*;

    /// A link whose closing waits at a barrier, as a uprobe's waits for
    /// the kernel.
    struct SlowLink(Arc<Barrier>);

    impl Drop for SlowLink {
        fn drop(&mut self) {
            self.0.wait();
        }
    }

    #[test]
    fn tokens_come_back_only_after_their_links_closed() {
        let gate = Arc::new(Barrier::new(2));
        let mut d = Detacher::new();
        // Returns while the link is still being closed.
        d.detach(vec![SlowLink(gate.clone())], 7u32);
        assert_eq!(d.pending, 1);
        std::thread::sleep(Duration::from_millis(20));
        assert!(d.finished().is_empty(), "given back before its link closed");
        gate.wait();
        let mut back = Vec::new();
        for _ in 0..500 {
            back.extend(d.finished());
            if !back.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(back, [7]);
        assert_eq!((d.pending, d.closed_inline), (0, 0));
    }

    /// A link that counts its closing.
    struct Counted(Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_full_queue_closes_inline_and_dropping_waits_for_the_rest() {
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let gate = Arc::new(Barrier::new(2));
        let mut d = Detacher::<Box<dyn Send>, usize>::new();
        // The thread is held on the first job; the queue fills behind it.
        d.detach(vec![Box::new(SlowLink(gate.clone()))], 0);
        let mut i = 1;
        while d.closed_inline == 0 {
            d.detach(vec![Box::new(Counted(closed.clone()))], i);
            i += 1;
            assert!(i < QUEUE + 10, "the queue is not bounded");
        }
        // The one that did not fit was closed at once, its token ready.
        let inline = closed.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(inline, 1);
        assert_eq!(d.finished(), [i - 1]);
        gate.wait();
        drop(d);
        assert_eq!(closed.load(std::sync::atomic::Ordering::SeqCst), i - 1);
    }
}
