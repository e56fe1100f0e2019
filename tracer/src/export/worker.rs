//! One export worker for every destination (OTLP spans, Pyroscope
//! profiles): a queue that never blocks the submitter, bounded in items
//! and in bytes; a thread with its own single-threaded tokio runtime
//! running a few concurrent senders; retries with exponential backoff and
//! jitter (or the delay the server asked for); a failure log limited to one
//! line every [`LOG_EVERY`]; typed counters of everything that entered and
//! how it left; and a shutdown that drains what it can before a deadline
//! and counts the rest.
//!
//! What is sent and how is a [`Deliver`]: it turns a queued [`Job`] into
//! what goes on the wire once ([`Deliver::prepare`]: compression,
//! encoding), then makes attempts ([`Deliver::send`]) that say whether the
//! job was delivered, is worth retrying, or failed for good.
//!
//! Accounting: every item offered ([`WorkerCounters::submitted`]) ends in
//! exactly one of exported, rejected (refused by the receiver in a partial
//! success), the `dropped_*` reasons, or is still queued (queued, being
//! prepared or being sent).
use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use correlate::{IdGen, SplitMix64};
use tokio::sync::{mpsc, watch};

use super::config::RetryConfig;

/// Failures are logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// One unit of work: a request with the items it carries.
pub trait Job: Send + 'static {
    /// Items (spans, profiles) the job carries: what the counters count.
    fn items(&self) -> u64;
    /// Bytes the job holds while it waits (what the byte bound counts).
    fn bytes(&self) -> usize;
}

/// What one attempt gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver took the job; `rejected` of its items it refused
    /// (an OTLP partial success), with its message.
    Delivered {
        /// Items refused.
        rejected: u64,
        /// The receiver's reason, if it gave one.
        message: String,
    },
    /// Worth another attempt (network error, timeout, overload); `after`
    /// is the delay the server asked for, if it did.
    Retry {
        /// What went wrong.
        error: String,
        /// Retry-After / RetryInfo.
        after: Option<Duration>,
    },
    /// Not worth retrying: the job is dropped.
    Failed(String),
}

/// Sends the jobs of one destination.
pub trait Deliver: Send + Sync + 'static {
    /// What is queued.
    type Job: Job;
    /// What is sent, made once per job (kept for the retries).
    type Ready: Send + Sync + 'static;
    /// Why the destination could not be set up or a job prepared.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Makes what goes on the wire and its size in bytes (counted when
    /// delivered). An error drops the job (counted as failed).
    fn prepare(&self, job: Self::Job) -> Result<(Self::Ready, usize), Self::Error>;

    /// One attempt. The worker bounds it with the configured timeout.
    fn send(&self, ready: &Self::Ready) -> impl Future<Output = Attempt> + Send;

    /// The job left the worker (delivered or dropped): buffers may be
    /// reused.
    fn recycle(&self, _ready: Self::Ready) {}
}

/// The bound of a queue in items and in bytes, shared by the side that
/// fills it ([`admit`](Self::admit), never blocking) and the side that
/// empties it ([`release`](Self::release)). What is admitted is held until
/// released: queued, and being worked on.
#[derive(Debug)]
pub struct QueueBound {
    max_items: u64,
    max_bytes: u64,
    items: AtomicU64,
    bytes: AtomicU64,
    peak_bytes: AtomicU64,
    /// The destination's last attempt failed: see [`Self::set_failing`].
    failing: AtomicBool,
}

/// While the destination fails, the bound admits this fraction of itself.
const FAILING_SHARE: u64 = 4;

impl QueueBound {
    /// At most `max_items` items and `max_bytes` bytes held (each at
    /// least 1).
    pub fn new(max_items: u64, max_bytes: u64) -> QueueBound {
        QueueBound {
            max_items: max_items.max(1),
            max_bytes: max_bytes.max(1),
            items: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            peak_bytes: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    /// Whether the destination is failing now. While it is, a quarter of
    /// the bound is admitted: what would only wait for a receiver that may
    /// not come back is held in less memory (an endpoint down for the whole
    /// run would otherwise keep the whole bound), and what no longer fits
    /// is dropped as queue-full, as it soon would be anyway. The first
    /// delivery restores the whole bound.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    /// Holds `items`/`bytes` if they fit; `false` (nothing held) when they
    /// do not. What is larger than the whole bound fits when nothing else
    /// is held: it could never go otherwise.
    pub fn admit(&self, items: u64, bytes: u64) -> bool {
        let held_items = self.items.fetch_add(items, Ordering::Relaxed);
        let held_bytes = self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let (max_items, max_bytes) = self.limits();
        let fits = held_items + items <= max_items && held_bytes + bytes <= max_bytes;
        if fits || held_items == 0 {
            self.peak_bytes
                .fetch_max(held_bytes + bytes, Ordering::Relaxed);
            return true;
        }
        self.release(items, bytes);
        false
    }

    /// The bound in force now: (items, bytes).
    fn limits(&self) -> (u64, u64) {
        let share = if self.failing.load(Ordering::Relaxed) {
            FAILING_SHARE
        } else {
            1
        };
        (
            (self.max_items / share).max(1),
            (self.max_bytes / share).max(1),
        )
    }

    /// Lets go of what [`admit`](Self::admit) held.
    pub fn release(&self, items: u64, bytes: u64) {
        self.items.fetch_sub(items, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Items and bytes held now.
    pub fn held(&self) -> (u64, u64) {
        (
            self.items.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// Items and bytes that would still fit now.
    pub fn room(&self) -> (u64, u64) {
        let (items, bytes) = self.held();
        let (max_items, max_bytes) = self.limits();
        (
            max_items.saturating_sub(items),
            max_bytes.saturating_sub(bytes),
        )
    }

    /// The most bytes held at once so far.
    pub fn peak_bytes(&self) -> u64 {
        self.peak_bytes.load(Ordering::Relaxed)
    }
}

/// Why items were dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The queue was full (items or bytes).
    QueueFull,
    /// A permanent error, or the retry budget ran out.
    Failed,
    /// Still queued or being retried when the shutdown deadline came.
    Shutdown,
    /// Not sendable (e.g. an all-zero trace id); decided by the submitter.
    Invalid,
}

/// Settings of one worker.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Thread name (e.g. `tracer-export`).
    pub thread: String,
    /// What is exported, for log lines (e.g. `OTLP export`).
    pub what: &'static str,
    /// Where to, for log lines.
    pub endpoint: String,
    /// Bound on items queued or in flight.
    pub queue_items: u64,
    /// Bound on bytes queued or in flight.
    pub queue_bytes: u64,
    /// Jobs sent at the same time.
    pub in_flight: usize,
    /// Time limit of one attempt.
    pub timeout: Duration,
    /// Retry policy.
    pub retry: RetryConfig,
}

/// What the worker did so far (readable at any time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerCounters {
    /// Items offered (queued, or dropped at the door).
    pub submitted: u64,
    /// Items the receiver accepted.
    pub exported: u64,
    /// Items the receiver refused in a partial success.
    pub rejected: u64,
    /// Items dropped: queue full.
    pub dropped_queue_full: u64,
    /// Items dropped: permanent error or retry budget spent.
    pub dropped_failed: u64,
    /// Items dropped: shutdown deadline.
    pub dropped_shutdown: u64,
    /// Items dropped: not sendable.
    pub dropped_invalid: u64,
    /// Requests the receiver accepted.
    pub requests: u64,
    /// Bytes (as sent, compressed when compressing) the receiver accepted.
    pub bytes: u64,
    /// Failed attempts.
    pub errors: u64,
    /// Attempts after the first of a job.
    pub retries: u64,
    /// Items queued or in flight now.
    pub queued: u64,
    /// Bytes queued or in flight now.
    pub queued_bytes: u64,
    /// The most bytes queued or in flight at once so far.
    pub peak_queued_bytes: u64,
}

impl WorkerCounters {
    /// Items dropped, all reasons.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full + self.dropped_failed + self.dropped_shutdown + self.dropped_invalid
    }
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The tokio runtime could not be built.
    #[error("starting the {what} runtime")]
    Runtime {
        /// The worker.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The thread could not be spawned.
    #[error("spawning the {what} thread")]
    Thread {
        /// The worker.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The destination could not be set up (bad endpoint, header...).
    #[error("configuring the {what} to {endpoint}")]
    Setup {
        /// The worker.
        what: &'static str,
        /// The endpoint.
        endpoint: String,
        /// What was wrong (the [`Deliver::Error`] of the destination).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The thread ended before it said whether it started (it panicked).
    #[error("the {what} thread to {endpoint} stopped while starting")]
    Stopped {
        /// The worker.
        what: &'static str,
        /// The endpoint.
        endpoint: String,
    },
}

struct Counts {
    submitted: AtomicU64,
    exported: AtomicU64,
    rejected: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_failed: AtomicU64,
    dropped_shutdown: AtomicU64,
    dropped_invalid: AtomicU64,
    requests: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    queue: QueueBound,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counts {
    fn new(max_items: u64, max_bytes: u64) -> Counts {
        let z = || AtomicU64::new(0);
        Counts {
            submitted: z(),
            exported: z(),
            rejected: z(),
            dropped_queue_full: z(),
            dropped_failed: z(),
            dropped_shutdown: z(),
            dropped_invalid: z(),
            requests: z(),
            bytes: z(),
            errors: z(),
            retries: z(),
            queue: QueueBound::new(max_items, max_bytes),
        }
    }

    fn snapshot(&self) -> WorkerCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (queued, queued_bytes) = self.queue.held();
        WorkerCounters {
            submitted: get(&self.submitted),
            exported: get(&self.exported),
            rejected: get(&self.rejected),
            dropped_queue_full: get(&self.dropped_queue_full),
            dropped_failed: get(&self.dropped_failed),
            dropped_shutdown: get(&self.dropped_shutdown),
            dropped_invalid: get(&self.dropped_invalid),
            requests: get(&self.requests),
            bytes: get(&self.bytes),
            errors: get(&self.errors),
            retries: get(&self.retries),
            queued,
            queued_bytes,
            peak_queued_bytes: self.queue.peak_bytes(),
        }
    }

    fn dropped(&self, reason: DropReason, items: u64) {
        let c = match reason {
            DropReason::QueueFull => &self.dropped_queue_full,
            DropReason::Failed => &self.dropped_failed,
            DropReason::Shutdown => &self.dropped_shutdown,
            DropReason::Invalid => &self.dropped_invalid,
        };
        add(c, items);
    }

    /// A job of `items`/`bytes` left the worker.
    fn release(&self, items: u64, bytes: u64) {
        self.queue.release(items, bytes);
    }
}

/// A queued job with what it was counted as.
struct Queued<J> {
    job: J,
    items: u64,
    bytes: u64,
}

/// The export worker: see the module docs.
pub struct Worker<J: Job> {
    tx: Option<mpsc::UnboundedSender<Queued<J>>>,
    counts: Arc<Counts>,
    stop: watch::Sender<Option<Instant>>,
    done: std::sync::mpsc::Receiver<()>,
    thread: Option<thread::JoinHandle<()>>,
}

impl<J: Job> Worker<J> {
    /// Starts the worker thread. `make` builds the [`Deliver`] on that
    /// thread, inside its runtime (gRPC channels spawn tasks there); its
    /// error fails the start. Does not contact the destination.
    pub fn start<D, F>(cfg: WorkerConfig, make: F) -> Result<Worker<J>, WorkerError>
    where
        D: Deliver<Job = J>,
        F: FnOnce() -> Result<D, D::Error> + Send + 'static,
    {
        let counts = Arc::new(Counts::new(cfg.queue_items, cfg.queue_bytes));
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(None);
        let (done_tx, done) = std::sync::mpsc::channel();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let what = cfg.what;
        let endpoint = cfg.endpoint.clone();
        let run_counts = counts.clone();
        let thread = thread::Builder::new()
            .name(cfg.thread.clone())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(source) => {
                        let _ = ready_tx.send(Err(WorkerError::Runtime {
                            what: cfg.what,
                            source,
                        }));
                        return;
                    }
                };
                rt.block_on(async move {
                    let deliver = match make() {
                        Ok(d) => Arc::new(d),
                        Err(e) => {
                            let _ = ready_tx.send(Err(WorkerError::Setup {
                                what: cfg.what,
                                endpoint: cfg.endpoint.clone(),
                                source: Box::new(e),
                            }));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    run(cfg, deliver, run_counts, rx, stop_rx).await;
                });
                let _ = done_tx.send(());
            })
            .map_err(|source| WorkerError::Thread { what, source })?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Worker {
                tx: Some(tx),
                counts,
                stop,
                done,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(WorkerError::Stopped { what, endpoint })
            }
        }
    }

    /// Queues a job. Never blocks: when the queue is full (in items or in
    /// bytes) the job is dropped and counted, and it is given back.
    pub fn submit(&self, job: J) -> Result<(), J> {
        let (items, bytes) = (job.items(), job.bytes() as u64);
        let c = &self.counts;
        add(&c.submitted, items);
        if !c.queue.admit(items, bytes) {
            add(&c.dropped_queue_full, items);
            return Err(job);
        }
        let queued = Queued { job, items, bytes };
        let sent = match &self.tx {
            Some(tx) => tx.send(queued).map_err(|e| e.0),
            None => Err(queued),
        };
        sent.map_err(|q| {
            // The worker is gone (it only stops at shutdown).
            c.release(items, bytes);
            add(&c.dropped_shutdown, items);
            q.job
        })
    }

    /// Items and bytes the queue would still take now (it only grows
    /// until the next submit: the worker frees room, nothing else takes it).
    pub fn room(&self) -> (u64, u64) {
        self.counts.queue.room()
    }

    /// Counts items dropped before they became a job (e.g. invalid spans).
    pub fn count_dropped(&self, reason: DropReason, items: u64) {
        add(&self.counts.submitted, items);
        self.counts.dropped(reason, items);
    }

    /// The counters now.
    pub fn counters(&self) -> WorkerCounters {
        self.counts.snapshot()
    }

    /// Sends what is queued, waiting at most `timeout` (what is left then
    /// is dropped and counted), stops the thread and returns the final
    /// counters; [`counters`](Self::counters) still reads them after, and
    /// what is submitted then is counted as dropped at shutdown. Blocks the
    /// calling thread for up to `timeout` (and a second of grace for
    /// closing connections); once stopped, returns at once.
    pub fn shutdown(&mut self, timeout: Duration) -> WorkerCounters {
        if self.thread.is_none() {
            return self.counts.snapshot();
        }
        let _ = self.stop.send(Some(Instant::now() + timeout));
        self.tx = None;
        if self
            .done
            .recv_timeout(timeout + Duration::from_secs(1))
            .is_ok()
        {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        } else {
            tracing::warn!("the export thread did not stop in time; leaving it");
        }
        self.counts.snapshot()
    }
}

impl<J: Job> Drop for Worker<J> {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Dropped without shutdown: stop at once, without waiting.
            let _ = self.stop.send(Some(Instant::now()));
        }
    }
}

/// Logs failures at most every [`LOG_EVERY`], with how many were not
/// logged, and the recovery once.
#[derive(Default)]
struct FailureLog {
    last: Option<Instant>,
    suppressed: u64,
    failing: bool,
}

impl FailureLog {
    fn failure(&mut self, what: &str, endpoint: &str, err: &str, items: u64, gave_up: bool) {
        self.failing = true;
        if self.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            endpoint,
            error = err,
            items,
            dropped = gave_up,
            failures_not_logged = self.suppressed,
            "{what} failed"
        );
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }

    fn success(&mut self, what: &str, endpoint: &str) {
        if self.failing {
            self.failing = false;
            tracing::info!(endpoint, "{what} works again");
        }
    }
}

/// What the senders share.
struct Inner<D: Deliver> {
    cfg: WorkerConfig,
    deliver: Arc<D>,
    counts: Arc<Counts>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Queued<D::Job>>>,
    log: Mutex<FailureLog>,
    /// Jitter draws, shared: one per retry.
    rng: Mutex<SplitMix64>,
}

impl<D: Deliver> Inner<D> {
    fn log(&self) -> std::sync::MutexGuard<'_, FailureLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `delay` with jitter: a uniform draw from [delay/2, delay].
    fn jitter(&self, delay: Duration) -> Duration {
        let draw = self
            .rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_u64();
        let half = delay / 2;
        let nanos = half.as_nanos() as u64;
        half + Duration::from_nanos(draw % nanos.saturating_add(1))
    }
}

/// The worker thread's main task: `in_flight` senders, a queue-full
/// reporter, and at the end the shutdown accounting.
async fn run<D: Deliver>(
    cfg: WorkerConfig,
    deliver: Arc<D>,
    counts: Arc<Counts>,
    rx: mpsc::UnboundedReceiver<Queued<D::Job>>,
    stop: watch::Receiver<Option<Instant>>,
) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let inner = Arc::new(Inner {
        cfg,
        deliver,
        counts,
        rx: tokio::sync::Mutex::new(rx),
        log: Mutex::new(FailureLog::default()),
        rng: Mutex::new(SplitMix64::new(seed)),
    });
    let senders: Vec<_> = (0..inner.cfg.in_flight.max(1))
        .map(|_| tokio::spawn(sender(inner.clone(), stop.clone())))
        .collect();
    let reporter = tokio::spawn(report_queue_full(inner.clone(), stop.clone()));
    for s in senders {
        let _ = s.await;
    }
    reporter.abort();
    // What the senders did not take before the deadline.
    let mut rx = inner.rx.lock().await;
    rx.close();
    let mut left = 0;
    while let Ok(q) = rx.try_recv() {
        inner.counts.release(q.items, q.bytes);
        inner.counts.dropped(DropReason::Shutdown, q.items);
        left += q.items;
    }
    if left > 0 {
        tracing::warn!(
            items = left,
            "{} stopped with items not sent (shutdown deadline)",
            inner.cfg.what
        );
    }
    report_dropped(&inner, &mut 0);
}

fn past(stop: &watch::Receiver<Option<Instant>>) -> bool {
    stop.borrow().is_some_and(|d| Instant::now() >= d)
}

/// Takes jobs until the queue is closed and empty, or the deadline passed.
async fn sender<D: Deliver>(inner: Arc<Inner<D>>, mut stop: watch::Receiver<Option<Instant>>) {
    loop {
        if past(&stop) {
            return;
        }
        let next = {
            let mut rx = inner.rx.lock().await;
            tokio::select! {
                q = rx.recv() => q,
                // A deadline was set: look again (it may be now).
                r = stop.changed() => match r {
                    Ok(()) => continue,
                    Err(_) => return,
                },
            }
        };
        let Some(q) = next else { return };
        deliver_one(&inner, &mut stop, q).await;
    }
}

/// Sends one job, retrying; it leaves the worker either way.
async fn deliver_one<D: Deliver>(
    inner: &Inner<D>,
    stop: &mut watch::Receiver<Option<Instant>>,
    q: Queued<D::Job>,
) {
    let (items, bytes) = (q.items, q.bytes);
    let counts = &inner.counts;
    let cfg = &inner.cfg;
    let leave = |reason: Option<DropReason>| {
        counts.release(items, bytes);
        if let Some(r) = reason {
            counts.dropped(r, items);
        }
    };
    let (ready, wire_bytes) = match inner.deliver.prepare(q.job) {
        Ok(r) => r,
        Err(e) => {
            add(&counts.errors, 1);
            inner.log().failure(
                cfg.what,
                &cfg.endpoint,
                &crate::error::chain(&e),
                items,
                true,
            );
            leave(Some(DropReason::Failed));
            return;
        }
    };
    let retry = cfg.retry;
    let first = Instant::now();
    let mut delay = retry.initial;
    let mut attempt = 1u32;
    loop {
        let started = Instant::now();
        let send = inner.deliver.send(&ready);
        tokio::pin!(send);
        // The deadline may come closer during the attempt (shutdown).
        let mut watching = true;
        let outcome = loop {
            let deadline = *stop.borrow();
            let limit = deadline.map_or(started + cfg.timeout, |d| d.min(started + cfg.timeout));
            tokio::select! {
                o = &mut send => break Some(o),
                _ = tokio::time::sleep_until(limit.into()) => break None,
                r = stop.changed(), if watching => watching = r.is_ok(),
            }
        };
        let outcome = match outcome {
            Some(o) => o,
            None if stop.borrow().is_some_and(|d| Instant::now() >= d) => {
                leave(Some(DropReason::Shutdown));
                break;
            }
            None => Attempt::Retry {
                error: format!("no answer within {} ms", cfg.timeout.as_millis()),
                after: None,
            },
        };
        let (error, after) = match outcome {
            Attempt::Delivered { rejected, message } => {
                let rejected = rejected.min(items);
                add(&counts.exported, items - rejected);
                add(&counts.rejected, rejected);
                add(&counts.requests, 1);
                add(&counts.bytes, wire_bytes as u64);
                counts.queue.set_failing(false);
                if rejected > 0 {
                    inner.log().failure(
                        cfg.what,
                        &cfg.endpoint,
                        &format!("partial success, {rejected} rejected: {message}"),
                        rejected,
                        true,
                    );
                } else {
                    inner.log().success(cfg.what, &cfg.endpoint);
                }
                leave(None);
                break;
            }
            Attempt::Failed(e) => {
                add(&counts.errors, 1);
                inner
                    .log()
                    .failure(cfg.what, &cfg.endpoint, &e, items, true);
                leave(Some(DropReason::Failed));
                break;
            }
            Attempt::Retry { error, after } => {
                counts.queue.set_failing(true);
                (error, after)
            }
        };
        add(&counts.errors, 1);
        let wait = after.unwrap_or_else(|| inner.jitter(delay));
        let wake = Instant::now() + wait;
        if attempt >= retry.max_attempts || wake.duration_since(first) > retry.max_elapsed {
            inner
                .log()
                .failure(cfg.what, &cfg.endpoint, &error, items, true);
            leave(Some(DropReason::Failed));
            break;
        }
        if stop.borrow().is_some_and(|d| wake >= d) {
            inner
                .log()
                .failure(cfg.what, &cfg.endpoint, &error, items, true);
            leave(Some(DropReason::Shutdown));
            break;
        }
        inner
            .log()
            .failure(cfg.what, &cfg.endpoint, &error, items, false);
        add(&counts.retries, 1);
        attempt += 1;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => break,
                r = stop.changed() => {
                    if r.is_err() || stop.borrow().is_some_and(|d| wake >= d) {
                        // Shutdown: the next attempt is cut to the deadline.
                        break;
                    }
                }
            }
        }
        delay = (delay * 2).min(retry.max_delay);
    }
    inner.deliver.recycle(ready);
}

/// Logs queue-full drops (counted on the submitting thread, which does
/// not log) at most every [`LOG_EVERY`].
async fn report_queue_full<D: Deliver>(
    inner: Arc<Inner<D>>,
    mut stop: watch::Receiver<Option<Instant>>,
) {
    let mut seen = 0;
    let mut every = tokio::time::interval(LOG_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => report_dropped(&inner, &mut seen),
            r = stop.changed() => if r.is_err() { return },
        }
    }
}

fn report_dropped<D: Deliver>(inner: &Inner<D>, seen: &mut u64) {
    let n = inner.counts.dropped_queue_full.load(Ordering::Relaxed);
    if n > *seen {
        tracing::warn!(
            dropped = n - *seen,
            items = inner.cfg.queue_items,
            bytes = inner.cfg.queue_bytes,
            "{} queue full: items dropped",
            inner.cfg.what
        );
        *seen = n;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A loopback port that accepts connections and never answers, and the
    /// listener that must outlive the exporter sending to it: its exports
    /// hang without failing, so a queue test's bound stays whole (a failing
    /// destination shrinks it, and a refused port fails as soon as the
    /// first job is tried, mid-submit).
    pub(crate) fn silent_receiver() -> (std::net::TcpListener, u16) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    #[derive(Debug)]
    struct Bytes(u64, usize);
    impl Job for Bytes {
        fn items(&self) -> u64 {
            self.0
        }
        fn bytes(&self) -> usize {
            self.1
        }
    }

    /// Answers from a script: one outcome per attempt, then Delivered.
    struct Script {
        answers: Mutex<Vec<Attempt>>,
        attempts: Arc<AtomicUsize>,
        hold: Duration,
        recycled: Arc<AtomicUsize>,
    }

    impl Deliver for Script {
        type Job = Bytes;
        type Ready = u64;
        type Error = std::io::Error;
        fn prepare(&self, job: Bytes) -> Result<(u64, usize), std::io::Error> {
            if job.1 == 13 {
                return Err(std::io::Error::other("unlucky"));
            }
            Ok((job.0, job.1))
        }
        fn send(&self, _: &u64) -> impl Future<Output = Attempt> + Send {
            self.attempts.fetch_add(1, Ordering::Relaxed);
            let next = {
                let mut a = self.answers.lock().unwrap();
                if a.is_empty() {
                    None
                } else {
                    Some(a.remove(0))
                }
            };
            let hold = self.hold;
            async move {
                tokio::time::sleep(hold).await;
                next.unwrap_or(Attempt::Delivered {
                    rejected: 0,
                    message: String::new(),
                })
            }
        }
        fn recycle(&self, _: u64) {
            self.recycled.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn cfg() -> WorkerConfig {
        WorkerConfig {
            thread: "test-worker".into(),
            what: "test export",
            endpoint: "test".into(),
            queue_items: 100,
            queue_bytes: 1000,
            in_flight: 2,
            timeout: Duration::from_secs(5),
            retry: RetryConfig {
                initial: Duration::from_millis(10),
                max_delay: Duration::from_millis(40),
                max_attempts: 5,
                max_elapsed: Duration::from_secs(10),
            },
        }
    }

    struct Probe {
        attempts: Arc<AtomicUsize>,
        recycled: Arc<AtomicUsize>,
    }

    fn start(cfg: WorkerConfig, answers: Vec<Attempt>, hold: Duration) -> (Worker<Bytes>, Probe) {
        let attempts = Arc::new(AtomicUsize::new(0));
        let recycled = Arc::new(AtomicUsize::new(0));
        let probe = Probe {
            attempts: attempts.clone(),
            recycled: recycled.clone(),
        };
        let w = Worker::start(cfg, move || {
            Ok(Script {
                answers: Mutex::new(answers),
                attempts,
                hold,
                recycled,
            })
        })
        .unwrap();
        (w, probe)
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn retry(error: &str, after: Option<Duration>) -> Attempt {
        Attempt::Retry {
            error: error.into(),
            after,
        }
    }

    #[test]
    fn every_item_is_accounted_for() {
        let answers = vec![
            retry("503", None),
            Attempt::Delivered {
                rejected: 2,
                message: "too old".into(),
            },
            Attempt::Failed("400".into()),
        ];
        let mut c = cfg();
        c.in_flight = 1;
        let (mut w, probe) = start(c, answers, Duration::ZERO);
        w.submit(Bytes(5, 10)).unwrap();
        w.submit(Bytes(3, 10)).unwrap();
        w.submit(Bytes(1, 13)).unwrap();
        w.submit(Bytes(4, 10)).unwrap();
        w.count_dropped(DropReason::Invalid, 2);
        wait_until("all sent", || w.counters().queued == 0);
        let c = w.shutdown(Duration::from_secs(1));
        // 5: retried then delivered with 2 rejected; 3: failed; 1: could
        // not be prepared; 4: delivered.
        assert_eq!(c.submitted, 15);
        assert_eq!((c.exported, c.rejected), (3 + 4, 2), "{c:?}");
        assert_eq!((c.dropped_failed, c.dropped_invalid), (3 + 1, 2), "{c:?}");
        assert_eq!((c.retries, c.errors, c.requests), (1, 3, 2), "{c:?}");
        assert_eq!(c.bytes, 20);
        assert_eq!(
            c.submitted,
            c.exported + c.rejected + c.dropped() + c.queued,
            "{c:?}"
        );
        assert_eq!(probe.attempts.load(Ordering::Relaxed), 4);
        assert_eq!(probe.recycled.load(Ordering::Relaxed), 3);
        assert_eq!(c.queued_bytes, 0);
        // After the shutdown: the same counters, and what comes late is
        // counted.
        assert_eq!(w.counters(), c);
        assert!(w.submit(Bytes(2, 10)).is_err());
        let late = w.shutdown(Duration::from_secs(1));
        assert_eq!((late.submitted, late.dropped_shutdown), (17, 2));
    }

    #[test]
    fn the_queue_is_bounded_in_items_and_bytes_and_never_blocks() {
        // Each attempt takes 10 s: the first jobs stay in flight.
        let mut c = cfg();
        c.in_flight = 1;
        c.queue_items = 10;
        c.queue_bytes = 100;
        let (mut w, _) = start(c, vec![], Duration::from_secs(10));
        let t = Instant::now();
        assert!(w.submit(Bytes(6, 10)).is_ok());
        assert!(w.submit(Bytes(5, 10)).is_err(), "11 items > 10");
        assert!(w.submit(Bytes(4, 80)).is_ok());
        assert!(w.submit(Bytes(0, 11)).is_err(), "101 bytes > 100");
        assert!(t.elapsed() < Duration::from_millis(50));
        let c = w.counters();
        assert_eq!((c.queued, c.queued_bytes), (10, 90), "{c:?}");
        assert_eq!(c.dropped_queue_full, 5);
        let t = Instant::now();
        let c = w.shutdown(Duration::from_millis(100));
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(c.dropped_shutdown, 10, "{c:?}");
        assert_eq!((c.queued, c.queued_bytes, c.exported), (0, 0, 0), "{c:?}");
    }

    #[test]
    fn a_failing_destination_holds_a_quarter_of_the_bound() {
        // The first attempt fails and waits 300 ms before its retry.
        let answers = vec![retry(
            "connection refused",
            Some(Duration::from_millis(300)),
        )];
        let mut c = cfg();
        c.in_flight = 1;
        let (mut w, _) = start(c, answers, Duration::ZERO);
        w.submit(Bytes(1, 100)).unwrap();
        wait_until("the failure", || w.counters().retries == 1);
        assert_eq!(w.room(), (24, 150), "a quarter of 100 items and 1000 bytes");
        assert!(w.submit(Bytes(1, 150)).is_ok());
        assert!(w.submit(Bytes(1, 10)).is_err(), "260 bytes > 250");
        wait_until("delivery", || w.counters().queued == 0);
        // Delivered again: the whole bound.
        assert_eq!(w.room(), (100, 1000));
        assert!(w.submit(Bytes(1, 600)).is_ok());
        let c = w.shutdown(Duration::from_secs(2));
        assert_eq!((c.exported, c.dropped_queue_full), (3, 1), "{c:?}");
    }

    #[test]
    fn a_job_larger_than_the_bound_goes_alone() {
        let mut c = cfg();
        c.queue_bytes = 10;
        let (mut w, _) = start(c, vec![], Duration::ZERO);
        w.submit(Bytes(1, 50)).unwrap();
        let c = w.shutdown(Duration::from_secs(2));
        assert_eq!(c.exported, 1, "{c:?}");
    }

    #[test]
    fn retries_back_off_and_honour_the_servers_delay() {
        let answers = vec![
            retry("unavailable", Some(Duration::from_millis(300))),
            retry("unavailable", None),
        ];
        let (mut w, probe) = start(cfg(), answers, Duration::ZERO);
        let t = Instant::now();
        w.submit(Bytes(1, 1)).unwrap();
        wait_until("delivery", || w.counters().exported == 1);
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert_eq!(probe.attempts.load(Ordering::Relaxed), 3);
        let c = w.shutdown(Duration::from_secs(1));
        assert_eq!((c.retries, c.errors), (2, 2), "{c:?}");
    }

    #[test]
    fn the_retry_budget_is_bounded() {
        let answers = (0..10).map(|_| retry("down", None)).collect();
        let (mut w, probe) = start(cfg(), answers, Duration::ZERO);
        w.submit(Bytes(2, 1)).unwrap();
        wait_until("the drop", || w.counters().dropped_failed == 2);
        assert_eq!(probe.attempts.load(Ordering::Relaxed), 5);
        let c = w.shutdown(Duration::from_secs(1));
        assert_eq!((c.retries, c.errors, c.exported), (4, 5, 0), "{c:?}");
    }

    #[test]
    fn shutdown_cuts_a_long_backoff() {
        let answers = (0..3)
            .map(|_| retry("down", Some(Duration::from_secs(30))))
            .collect();
        let mut c = cfg();
        c.retry.max_elapsed = Duration::from_secs(60);
        let (mut w, _) = start(c, answers, Duration::ZERO);
        w.submit(Bytes(3, 1)).unwrap();
        wait_until("the first attempt", || w.counters().errors == 1);
        let t = Instant::now();
        let c = w.shutdown(Duration::from_millis(200));
        assert!(
            t.elapsed() < Duration::from_millis(1000),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(c.dropped_shutdown, 3, "{c:?}");
    }

    #[test]
    fn senders_run_concurrently() {
        let mut c = cfg();
        c.in_flight = 4;
        let (mut w, _) = start(c, vec![], Duration::from_millis(300));
        let t = Instant::now();
        for _ in 0..4 {
            w.submit(Bytes(1, 1)).unwrap();
        }
        wait_until("delivery", || w.counters().exported == 4);
        assert!(
            t.elapsed() < Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        w.shutdown(Duration::from_secs(1));
    }

    #[test]
    fn setup_errors_fail_the_start() {
        let e = Worker::<Bytes>::start(cfg(), || {
            Err::<Script, _>(std::io::Error::other("bad header"))
        })
        .err()
        .unwrap();
        assert_eq!(
            crate::error::chain(&e),
            "configuring the test export to test: bad header"
        );
    }

    #[test]
    fn starts_and_stops_inside_another_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut w, _) = start(cfg(), vec![], Duration::ZERO);
            w.submit(Bytes(1, 1)).unwrap();
            let c = w.shutdown(Duration::from_secs(1));
            assert_eq!((c.submitted, c.queued), (1, 0), "{c:?}");
        });
    }
}
