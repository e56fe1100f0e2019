//! OTLP export of finished spans, off the capture thread.
//!
//! The agent builds spans itself (ids, parents, kernel times), so spans do
//! not go through an OpenTelemetry SDK tracer: each is converted to the
//! SDK's `SpanData` and handed to `opentelemetry-otlp`'s `SpanExporter`.
//! An OTLP exporter carries one resource, so there is one per distinct
//! [`Resource`] (one per traced process), created lazily, at most
//! [`ExportConfig::max_exporters`] (the least recently used is flushed and
//! dropped). They share one gRPC channel (one HTTP/2 connection) or one
//! HTTP client.
//!
//! [`Exporter::start`] spawns a thread running its own single-threaded tokio
//! runtime; [`Exporter::submit`] never blocks: it hands the span over a
//! channel guarded by a counter of spans in the exporter (queued, batched or
//! being sent), and drops (counts) the span when that reaches
//! [`ExportConfig::queue_spans`]. The thread batches spans per resource and
//! sends a batch when it is full or every [`ExportConfig::interval`]. A
//! failed request (connection refused, timeout, gRPC UNAVAILABLE, HTTP
//! 429/502/503/504) is retried with exponential backoff
//! ([`RetryConfig`](super::config::RetryConfig)); a permanent error or an exhausted retry budget drops
//! the batch (counted). While a batch is retried nothing else is sent, and
//! new spans queue up to the bound. Failures are logged at most every
//! [`LOG_EVERY`].
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use correlate::{AttrRef, AttrValue, ParentSource, Span};
use opentelemetry::{
    trace::{self as ot, TraceFlags, TraceState},
    InstrumentationScope, KeyValue, Value,
};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use tokio::sync::{mpsc, Notify};

use super::config::ExportConfig;
use super::resource::Resource;
use super::transport::Transport;
use crate::clock::Clock;

/// Export failures are logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// What the exporter did so far (readable at any time).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportCounters {
    /// Spans handed to [`Exporter::submit`].
    pub spans_submitted: u64,
    /// Spans the backend accepted.
    pub spans_exported: u64,
    /// Spans dropped because the queue was full.
    pub spans_dropped_queue_full: u64,
    /// Spans dropped with a batch that failed for good.
    pub spans_dropped_export_failed: u64,
    /// Spans still queued when the shutdown timeout ran out.
    pub spans_dropped_shutdown: u64,
    /// Spans dropped because their trace or span id was all zero.
    pub spans_dropped_invalid: u64,
    /// Failed requests (each attempt counts).
    pub export_errors: u64,
    /// Requests the backend accepted.
    pub batches_exported: u64,
    /// Attempts after the first of a batch.
    pub retries: u64,
    /// Spans in the exporter now (queued, batched or being sent).
    pub queued: u64,
}

impl std::fmt::Display for ExportCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "submitted={} exported={} batches={} dropped_queue_full={} dropped_export_failed={} \
             dropped_shutdown={} dropped_invalid={} export_errors={} retries={} queued={}",
            self.spans_submitted,
            self.spans_exported,
            self.batches_exported,
            self.spans_dropped_queue_full,
            self.spans_dropped_export_failed,
            self.spans_dropped_shutdown,
            self.spans_dropped_invalid,
            self.export_errors,
            self.retries,
            self.queued
        )
    }
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The tokio runtime could not be built.
    #[error("starting the export runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The export thread could not be spawned.
    #[error("spawning the export thread: {0}")]
    Thread(#[source] std::io::Error),
    /// The OTLP exporter rejected the configuration.
    #[error("configuring the OTLP exporter for {endpoint}: {message}")]
    Build {
        /// The endpoint.
        endpoint: String,
        /// What was wrong.
        message: String,
    },
}

#[derive(Default)]
struct Shared {
    submitted: AtomicU64,
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_export_failed: AtomicU64,
    dropped_shutdown: AtomicU64,
    dropped_invalid: AtomicU64,
    export_errors: AtomicU64,
    batches: AtomicU64,
    retries: AtomicU64,
    /// Spans submitted and not yet exported or dropped.
    queued: AtomicUsize,
    /// When set, the worker must be done by then.
    deadline: Mutex<Option<Instant>>,
    wake: Notify,
}

impl Shared {
    fn add(c: &AtomicU64, n: usize) {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stop_by(&self, at: Instant) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
        self.wake.notify_one();
    }

    /// `n` spans left the exporter (sent or dropped).
    fn release(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::Relaxed);
    }
}

struct Queued {
    span: Span,
    resource: Arc<Resource>,
}

/// The OTLP exporter: a thread with its own runtime; see the module docs.
pub struct Exporter {
    tx: Option<mpsc::UnboundedSender<Queued>>,
    shared: Arc<Shared>,
    bound: usize,
    done: std::sync::mpsc::Receiver<()>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Exporter {
    /// Starts the export thread. Fails when the configuration cannot make
    /// an OTLP exporter (bad endpoint, unsupported compression set in
    /// `OTEL_EXPORTER_OTLP_COMPRESSION`…); does not contact the backend.
    pub fn start(cfg: ExportConfig, clock: Clock) -> Result<Exporter, ExportError> {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let bound = cfg.queue_spans.max(1);
        let endpoint = cfg.endpoint.clone();
        let worker_shared = shared.clone();
        // Everything async is built on the export thread: this function may
        // be called from inside another runtime.
        let thread = thread::Builder::new()
            .name("tracer-export".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ExportError::Runtime(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    // tonic spawns its connection task on this runtime.
                    let transport = Transport::new(&cfg).and_then(|t| {
                        t.exporter(&cfg, &Resource::new([]))?;
                        Ok(t)
                    });
                    let transport = match transport {
                        Ok(t) => t,
                        Err(message) => {
                            let endpoint = cfg.endpoint.clone();
                            let _ = ready_tx.send(Err(ExportError::Build { endpoint, message }));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let worker = Worker {
                        scope: InstrumentationScope::builder("tracer")
                            .with_version(env!("CARGO_PKG_VERSION"))
                            .build(),
                        cfg,
                        clock,
                        shared: worker_shared,
                        transport,
                        slots: HashMap::new(),
                        tick: 0,
                        log: FailureLog::default(),
                        queue_full_seen: 0,
                    };
                    worker.run(rx).await;
                });
                let _ = done_tx.send(());
            })
            .map_err(ExportError::Thread)?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Exporter {
                tx: Some(tx),
                shared,
                bound,
                done,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(ExportError::Build {
                    endpoint,
                    message: "the export thread stopped while starting".into(),
                })
            }
        }
    }

    /// Queues a finished span of the process described by `resource`.
    /// Never blocks: when the queue is full the span is dropped (counted).
    pub fn submit(&self, span: Span, resource: Arc<Resource>) {
        let s = &self.shared;
        s.submitted.fetch_add(1, Ordering::Relaxed);
        if !span.trace_id.is_valid() || !span.span_id.is_valid() {
            s.dropped_invalid.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if s.queued.fetch_add(1, Ordering::Relaxed) >= self.bound {
            s.release(1);
            s.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Queued { span, resource }).is_ok());
        if !sent {
            // The worker is gone (it only stops at shutdown).
            s.release(1);
            s.dropped_shutdown.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters now.
    pub fn counters(&self) -> ExportCounters {
        let s = &self.shared;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ExportCounters {
            spans_submitted: get(&s.submitted),
            spans_exported: get(&s.exported),
            spans_dropped_queue_full: get(&s.dropped_queue_full),
            spans_dropped_export_failed: get(&s.dropped_export_failed),
            spans_dropped_shutdown: get(&s.dropped_shutdown),
            spans_dropped_invalid: get(&s.dropped_invalid),
            export_errors: get(&s.export_errors),
            batches_exported: get(&s.batches),
            retries: get(&s.retries),
            queued: s.queued.load(Ordering::Relaxed) as u64,
        }
    }

    /// Sends what is queued, waiting at most `timeout` (what is left then
    /// is dropped and counted), stops the thread and returns the final
    /// counters. Blocks the calling thread for up to `timeout`.
    pub fn shutdown(mut self, timeout: Duration) -> ExportCounters {
        self.shared.stop_by(Instant::now() + timeout);
        self.tx = None;
        // The worker honours the deadline; the grace covers closing.
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
        self.counters()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // Dropped without shutdown: stop at once, without waiting.
            self.shared.stop_by(Instant::now());
        }
    }
}

fn otel_value(v: &AttrValue) -> Value {
    match v {
        AttrValue::Str(s) => Value::from(s.clone()),
        AttrValue::Int(i) => Value::I64(*i),
    }
}

/// The SDK resource of a [`Resource`].
pub(super) fn sdk_resource(res: &Resource) -> opentelemetry_sdk::Resource {
    opentelemetry_sdk::Resource::builder_empty()
        .with_attributes(
            res.attrs()
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), otel_value(v))),
        )
        .build()
}

fn unix_time(clock: Clock, mono_ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(clock.unix_ns(mono_ns))
}

/// The SDK's view of a finished span. The parent is remote when it lives
/// in another process: a client span at the other end of the connection
/// (rule 3) or a propagated header's span.
pub fn to_span_data(span: &Span, clock: Clock, scope: &InstrumentationScope) -> SpanData {
    let trace_state = span
        .trace_state
        .as_deref()
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    SpanData {
        span_context: ot::SpanContext::new(
            ot::TraceId::from_bytes(span.trace_id.0),
            ot::SpanId::from_bytes(span.span_id.0),
            TraceFlags::new(span.trace_flags),
            false,
            trace_state,
        ),
        parent_span_id: span
            .parent_span_id
            .map_or(ot::SpanId::INVALID, |p| ot::SpanId::from_bytes(p.0)),
        parent_span_is_remote: span.parent_span_id.is_some()
            && matches!(
                span.parent_source,
                ParentSource::Header | ParentSource::Mirror | ParentSource::Nat
            ),
        span_kind: match span.kind {
            correlate::SpanKind::Server => ot::SpanKind::Server,
            correlate::SpanKind::Client => ot::SpanKind::Client,
        },
        name: span.name().to_owned().into(),
        start_time: unix_time(clock, span.start_ns),
        end_time: unix_time(clock, span.end_ns.max(span.start_ns)),
        attributes: span
            .attributes()
            .map(|(k, v)| {
                KeyValue::new(
                    k,
                    match v {
                        AttrRef::Str(s) => Value::from(s.to_owned()),
                        AttrRef::Int(i) => Value::I64(i),
                    },
                )
            })
            .collect(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match &span.status {
            correlate::Status::Unset => ot::Status::Unset,
            correlate::Status::Error(m) => ot::Status::error(m.clone()),
        },
        instrumentation_scope: scope.clone(),
    }
}

/// Whether a failed export is worth retrying (OTLP specification: gRPC
/// CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, OUT_OF_RANGE,
/// UNAVAILABLE, DATA_LOSS; HTTP 429, 502, 503, 504; network errors and
/// timeouts). Reads the error text of `opentelemetry-otlp`.
fn retryable(err: &str) -> bool {
    let after = |tag: &str| {
        err.find(tag).map(|i| {
            err[i + tag.len()..]
                .split(|c: char| !c.is_ascii_alphanumeric())
                .next()
                .unwrap_or("")
        })
    };
    if let Some(code) = after("gRPC code: ") {
        return matches!(
            code,
            "Cancelled"
                | "DeadlineExceeded"
                | "ResourceExhausted"
                | "Aborted"
                | "OutOfRange"
                | "Unavailable"
                | "DataLoss"
        );
    }
    if let Some(code) = after("status code: ") {
        return matches!(code, "429" | "502" | "503" | "504");
    }
    true
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
    fn failure(&mut self, endpoint: &str, err: &str, spans: usize, gave_up: bool) {
        self.failing = true;
        if self.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            endpoint,
            error = err,
            spans,
            dropped = gave_up,
            failures_not_logged = self.suppressed,
            "OTLP export failed"
        );
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }

    fn success(&mut self, endpoint: &str) {
        if self.failing {
            self.failing = false;
            tracing::info!(endpoint, "OTLP export works again");
        }
    }
}

struct Slot {
    exporter: Option<opentelemetry_otlp::SpanExporter>,
    pending: Vec<SpanData>,
    used: u64,
}

struct Worker {
    cfg: ExportConfig,
    clock: Clock,
    shared: Arc<Shared>,
    transport: Transport,
    slots: HashMap<Arc<Resource>, Slot>,
    tick: u64,
    scope: InstrumentationScope,
    log: FailureLog,
    queue_full_seen: u64,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Queued>) {
        let mut interval = tokio::time::interval(self.cfg.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        let shared = self.shared.clone();
        loop {
            if shared.deadline().is_some() {
                break;
            }
            tokio::select! {
                q = rx.recv() => match q {
                    Some(q) => self.add(q, false).await,
                    None => break,
                },
                _ = interval.tick() => {
                    self.export_all().await;
                    self.report_queue_full();
                }
                _ = shared.wake.notified() => {}
            }
        }
        // Shutting down: take what is queued, send it before the deadline.
        rx.close();
        while let Ok(q) = rx.try_recv() {
            self.add(q, true).await;
        }
        self.export_all().await;
        let left: usize = self.slots.values().map(|s| s.pending.len()).sum();
        if left > 0 {
            Shared::add(&self.shared.dropped_shutdown, left);
            self.shared.release(left);
            tracing::warn!(
                spans = left,
                "export stopped with spans not sent (shutdown timeout)"
            );
        }
        self.report_queue_full();
        self.slots.clear();
    }

    fn report_queue_full(&mut self) {
        let n = self.shared.dropped_queue_full.load(Ordering::Relaxed);
        if n > self.queue_full_seen {
            tracing::warn!(
                dropped = n - self.queue_full_seen,
                bound = self.cfg.queue_spans,
                "export queue full: spans dropped"
            );
            self.queue_full_seen = n;
        }
    }

    fn past_deadline(&self) -> bool {
        self.shared.deadline().is_some_and(|d| Instant::now() >= d)
    }

    async fn add(&mut self, q: Queued, draining: bool) {
        let data = to_span_data(&q.span, self.clock, &self.scope);
        self.tick += 1;
        if !self.slots.contains_key(&q.resource) && self.slots.len() >= self.cfg.max_exporters {
            self.evict_one().await;
        }
        let slot = self
            .slots
            .entry(q.resource.clone())
            .or_insert_with(|| Slot {
                exporter: None,
                pending: Vec::new(),
                used: 0,
            });
        slot.used = self.tick;
        slot.pending.push(data);
        if slot.pending.len() >= self.cfg.batch_spans && !draining {
            self.export_slot(&q.resource, false).await;
        }
    }

    /// Flushes and drops the least recently used exporter.
    async fn evict_one(&mut self) {
        let Some(res) = self
            .slots
            .iter()
            .min_by_key(|(_, s)| (!s.pending.is_empty(), s.used))
            .map(|(r, _)| r.clone())
        else {
            return;
        };
        self.export_slot(&res, true).await;
        if let Some(slot) = self.slots.remove(&res) {
            // Spans left by a failed flush are accounted as failed.
            let n = slot.pending.len();
            if n > 0 {
                Shared::add(&self.shared.dropped_export_failed, n);
                self.shared.release(n);
            }
        }
    }

    async fn export_all(&mut self) {
        let mut keys: Vec<(u64, Arc<Resource>)> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.pending.is_empty())
            .map(|(r, s)| (s.used, r.clone()))
            .collect();
        keys.sort_by_key(|(used, _)| *used);
        for (_, res) in keys {
            self.export_slot(&res, true).await;
        }
    }

    /// Sends the slot's spans in batches: all of them, or only full batches.
    async fn export_slot(&mut self, res: &Arc<Resource>, all: bool) {
        loop {
            if self.past_deadline() {
                return;
            }
            let Some(slot) = self.slots.get_mut(res) else {
                return;
            };
            let n = slot.pending.len().min(self.cfg.batch_spans);
            if n == 0 || (!all && n < self.cfg.batch_spans) {
                return;
            }
            let batch: Vec<SpanData> = slot.pending.drain(..n).collect();
            let exporter = match slot.exporter.take() {
                Some(e) => e,
                None => match self.transport.exporter(&self.cfg, res) {
                    Ok(e) => e,
                    Err(e) => {
                        self.shared.export_errors.fetch_add(1, Ordering::Relaxed);
                        self.give_up(&e, n);
                        continue;
                    }
                },
            };
            self.send(&exporter, batch).await;
            if let Some(slot) = self.slots.get_mut(res) {
                slot.exporter = Some(exporter);
            }
        }
    }

    fn give_up(&mut self, err: &str, n: usize) {
        Shared::add(&self.shared.dropped_export_failed, n);
        self.shared.release(n);
        self.log.failure(&self.cfg.endpoint, err, n, true);
    }

    /// Sends one batch, retrying; the spans leave the exporter either way.
    async fn send(&mut self, exporter: &opentelemetry_otlp::SpanExporter, batch: Vec<SpanData>) {
        let n = batch.len();
        let retry = self.cfg.retry;
        let first = Instant::now();
        let mut delay = retry.initial;
        let mut attempt = 1u32;
        loop {
            let mut limit = Instant::now() + self.cfg.timeout;
            if let Some(d) = self.shared.deadline() {
                limit = limit.min(d);
            }
            let outcome =
                tokio::time::timeout_at(limit.into(), exporter.export(batch.clone())).await;
            let err = match outcome {
                Ok(Ok(())) => {
                    Shared::add(&self.shared.exported, n);
                    self.shared.batches.fetch_add(1, Ordering::Relaxed);
                    self.shared.release(n);
                    self.log.success(&self.cfg.endpoint);
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} ms", self.cfg.timeout.as_millis()),
            };
            self.shared.export_errors.fetch_add(1, Ordering::Relaxed);
            let wake = Instant::now() + delay;
            let out_of_budget = attempt >= retry.max_attempts
                || wake.duration_since(first) > retry.max_elapsed
                || self.shared.deadline().is_some_and(|d| wake >= d);
            if !retryable(&err) || out_of_budget {
                self.give_up(&err, n);
                return;
            }
            self.log.failure(&self.cfg.endpoint, &err, n, false);
            self.shared.retries.fetch_add(1, Ordering::Relaxed);
            attempt += 1;
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                // Shutdown: the next attempt is cut to the deadline.
                _ = self.shared.wake.notified() => {}
            }
            delay = (delay * 2).min(retry.max_delay);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::config::{ExportConfig, Protocol};
    use crate::export::console::tests::{res, span};

    #[test]
    fn converts_spans() {
        let clock = Clock::new();
        let scope = InstrumentationScope::builder("tracer").build();
        let mut s = span(3, 2, Some(1), 10, 12);
        s.trace_state = Some("vendor=x".into());
        s.status = correlate::Status::Error("boom".into());
        s.kind = correlate::SpanKind::Client;
        let d = to_span_data(&s, clock, &scope);
        assert_eq!(d.span_context.trace_id(), ot::TraceId::from_bytes([3; 16]));
        assert_eq!(d.span_context.span_id(), ot::SpanId::from_bytes([2; 8]));
        assert_eq!(d.parent_span_id, ot::SpanId::from_bytes([1; 8]));
        assert!(
            d.parent_span_is_remote,
            "mirror parent lives in another process"
        );
        assert!(d.span_context.is_sampled());
        assert_eq!(d.span_context.trace_state().get("vendor"), Some("x"));
        assert_eq!(d.span_kind, ot::SpanKind::Client);
        assert_eq!(d.status, ot::Status::error("boom"));
        assert_eq!(
            d.end_time.duration_since(d.start_time).unwrap(),
            Duration::from_millis(2)
        );
        assert_eq!(
            d.start_time.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64,
            clock.unix_ns(10_000_000)
        );
        assert_eq!(
            d.attributes[0],
            KeyValue::new("http.response.status_code", 200i64)
        );
        let mut root = span(3, 1, None, 0, 1);
        root.parent_source = ParentSource::Thread;
        let d = to_span_data(&root, clock, &scope);
        assert_eq!(d.parent_span_id, ot::SpanId::INVALID);
        assert!(!d.parent_span_is_remote);
    }

    #[test]
    fn classifies_errors() {
        assert!(retryable(
            "TonicTracesClient export failed with gRPC code: Unavailable: tcp connect error"
        ));
        assert!(!retryable(
            "TonicTracesClient export failed with gRPC code: InvalidArgument"
        ));
        assert!(retryable("HTTP export failed with status code: 503"));
        assert!(!retryable("HTTP export failed with status code: 400"));
        assert!(retryable("HTTP export failed: network error"));
        assert!(retryable("no answer within 10 ms"));
    }

    #[test]
    fn queue_bound_drops_and_counts_without_blocking() {
        // Nothing listens on port 9 of the loopback: every export fails fast.
        let mut cfg = ExportConfig::new("http://127.0.0.1:9/v1/traces", Protocol::HttpProtobuf);
        cfg.queue_spans = 4;
        cfg.batch_spans = 4;
        cfg.interval = Duration::from_secs(60);
        cfg.retry.max_elapsed = Duration::from_secs(60);
        cfg.retry.initial = Duration::from_secs(10);
        let e = Exporter::start(cfg, Clock::new()).unwrap();
        let r = Arc::new(res("svc"));
        let t = Instant::now();
        for i in 0..10u8 {
            e.submit(span(1, i + 1, None, 0, 1), r.clone());
        }
        let mut bad = span(1, 1, None, 0, 1);
        bad.span_id = correlate::SpanId([0; 8]);
        e.submit(bad, r.clone());
        assert!(t.elapsed() < Duration::from_millis(100), "submit blocked");
        let c = e.counters();
        assert_eq!(c.spans_submitted, 11);
        assert_eq!(c.spans_dropped_queue_full, 6);
        assert_eq!(c.spans_dropped_invalid, 1);
        // The batch of 4 is retried (10 s backoff); shutdown cuts it short.
        let t = Instant::now();
        let c = e.shutdown(Duration::from_millis(300));
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(c.spans_exported, 0);
        assert_eq!(
            c.spans_dropped_export_failed + c.spans_dropped_shutdown,
            4,
            "{c}"
        );
        assert!(c.export_errors >= 1);
        assert_eq!(c.queued, 0);
    }

    #[test]
    fn starts_and_stops_inside_another_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let cfg = ExportConfig::new("http://127.0.0.1:9", Protocol::Grpc);
            let e = Exporter::start(cfg, Clock::new()).unwrap();
            e.submit(span(1, 1, None, 0, 1), Arc::new(res("a")));
            let c = e.shutdown(Duration::from_millis(200));
            assert_eq!(c.spans_submitted, 1);
            assert_eq!(c.queued, 0);
        });
    }

    #[test]
    fn bad_config_fails_at_start() {
        let cfg = ExportConfig::new("not a url", Protocol::Grpc);
        let err = Exporter::start(cfg, Clock::new())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a url"), "{err}");
    }
}
