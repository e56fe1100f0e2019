//! OTLP export of finished spans: encoded on the caller's thread, sent by
//! the export worker.
//!
//! [`Exporter::submit`] encodes the span at once ([`TraceEncoder`]: OTLP
//! protobuf straight from the span, no allocation) into the open request,
//! batched per resource; a request closes at
//! [`ExportConfig::batch_spans`] spans or [`ExportConfig::batch_bytes`]
//! bytes, or once its first span waited [`ExportConfig::interval`]
//! (checked by [`Exporter::tick`]), and only its bytes cross to the
//! [`Worker`] thread, behind a queue bounded by
//! [`ExportConfig::queue_spans`] and [`ExportConfig::queue_bytes`]; the
//! finished span is freed where it was made.
//!
//! Why encode here rather than on the worker (`cargo bench -p tracer
//! --bench encode`, thread CPU per span): encoding and freeing a span here
//! costs the pipeline thread about 300 ns; handing it over a channel costs
//! it about 190 ns, and the export thread then spends about 350 ns encoding
//! it and freeing it (allocations freed on another thread than made them).
//! Encoding here is less CPU in all, on a machine where the agent competes
//! with the traced services for cores, and the queue then holds compact
//! bytes (400-500 per span), so its memory is bounded in bytes.
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use correlate::Span;

use super::config::ExportConfig;
use super::encode::{encodable, BatchLimits, TraceEncoder, TraceRequest};
use super::resource::Resource;
use super::transport::OtlpDeliver;
use super::worker::{DropReason, Worker, WorkerConfig, WorkerCounters, WorkerError};
use crate::clock::Clock;

/// What the exporter did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportCounters {
    /// Spans handed to [`Exporter::submit`].
    pub spans_submitted: u64,
    /// Spans encoded into the request not closed yet.
    pub spans_pending: u64,
    /// Requests (in spans and bytes) through the worker: exported,
    /// rejected, dropped by reason (invalid spans included), queued.
    pub worker: WorkerCounters,
}

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ExportError(#[from] WorkerError);

/// The OTLP exporter: see the module docs.
pub struct Exporter {
    encoder: TraceEncoder,
    worker: Worker<TraceRequest>,
    /// Bodies the worker sent, back for reuse.
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
    interval: Duration,
    /// When the open request got its first span.
    opened: Option<Instant>,
}

impl Exporter {
    /// Starts the export thread. Fails when the configuration cannot make
    /// a client (bad endpoint or header); does not contact the backend.
    pub fn start(cfg: ExportConfig, clock: Clock) -> Result<Exporter, ExportError> {
        let spare = Arc::new(Mutex::new(Vec::new()));
        let worker_cfg = WorkerConfig {
            thread: "tracer-export".into(),
            what: "OTLP export",
            endpoint: cfg.endpoint.clone(),
            queue_items: cfg.queue_spans as u64,
            queue_bytes: cfg.queue_bytes as u64,
            in_flight: cfg.in_flight,
            timeout: cfg.timeout,
            retry: cfg.retry,
        };
        let encoder = TraceEncoder::new(
            clock,
            BatchLimits {
                max_spans: cfg.batch_spans,
                max_bytes: cfg.batch_bytes,
                max_resources: cfg.max_resources,
            },
        );
        let interval = cfg.interval;
        let returned = spare.clone();
        let worker = Worker::start(worker_cfg, move || OtlpDeliver::new(&cfg, returned))?;
        Ok(Exporter {
            encoder,
            worker,
            spare,
            interval,
            opened: None,
        })
    }

    /// Encodes a finished span of the process described by `resource`.
    /// Never blocks: when the queue is full a closed request is dropped
    /// (its spans counted), and a span whose open request the queue could
    /// not take is dropped before it is encoded (counted alike).
    pub fn submit(&mut self, span: &Span, resource: &Arc<Resource>) {
        if encodable(span) && !self.open_request_fits() {
            // Its request would be dropped when it closes: not worth
            // encoding (an endpoint that is down or slower than the spans
            // made this CPU the pipeline could not spare).
            self.worker.count_dropped(DropReason::QueueFull, 1);
            return;
        }
        if self.encoder.push(span, resource).is_err() {
            self.worker.count_dropped(DropReason::Invalid, 1);
            return;
        }
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
        }
        self.hand_over();
    }

    /// Whether the queue can still take the open request with one more
    /// span in it.
    fn open_request_fits(&self) -> bool {
        let (items, bytes) = self.worker.room();
        items > self.encoder.pending_spans() as u64 && bytes > self.encoder.pending_bytes() as u64
    }

    /// Closes the open request when its first span waited the export
    /// interval (call it periodically, e.g. every 50-100 ms).
    pub fn tick(&mut self) {
        if self.opened.is_some_and(|t| t.elapsed() >= self.interval) {
            self.flush();
        }
    }

    /// Closes the open request now and hands it to the worker.
    pub fn flush(&mut self) {
        self.encoder.flush();
        self.hand_over();
    }

    /// Closed requests to the worker.
    fn hand_over(&mut self) {
        let mut any = false;
        while let Some(req) = self.encoder.take() {
            any = true;
            if let Err(req) = self.worker.submit(req) {
                self.encoder.recycle(req.body);
            }
        }
        if any {
            if self.encoder.pending_spans() == 0 {
                self.opened = None;
            }
            let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
            for body in spare.drain(..) {
                self.encoder.recycle(body);
            }
        }
    }

    /// The counters now.
    pub fn counters(&self) -> ExportCounters {
        let worker = self.worker.counters();
        // A span is in the open request until its request goes to the
        // worker (at once: closed requests are handed over as they close).
        let spans_pending = self.encoder.pending_spans() as u64;
        ExportCounters {
            spans_submitted: worker.submitted + spans_pending,
            spans_pending,
            worker,
        }
    }

    /// Sends what is pending and queued, waiting at most `timeout` (what is
    /// left then is dropped and counted), stops the thread and returns the
    /// final counters ([`counters`](Self::counters) still reads them
    /// after). Blocks the calling thread for up to `timeout`.
    pub fn shutdown(&mut self, timeout: Duration) -> ExportCounters {
        self.flush();
        self.worker.shutdown(timeout);
        self.counters()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::config::{ExportConfig, Protocol};
    use crate::export::console::tests::{res, span};
    use crate::export::worker::tests::silent_receiver;

    /// An exporter whose exports hang (see [`silent_receiver`]): its queue
    /// stays full. The listener must outlive the exporter.
    fn stalled(queue_spans: usize, batch_spans: usize) -> (Exporter, std::net::TcpListener) {
        let (silent, port) = silent_receiver();
        let url = format!("http://127.0.0.1:{port}/v1/traces");
        let mut cfg = ExportConfig::new(&url, Protocol::HttpProtobuf);
        cfg.queue_spans = queue_spans;
        cfg.batch_spans = batch_spans;
        cfg.in_flight = 1;
        cfg.timeout = Duration::from_secs(60);
        (Exporter::start(cfg, Clock::new()).unwrap(), silent)
    }

    #[test]
    fn queue_bound_drops_and_counts_without_blocking() {
        let (mut e, _silent) = stalled(4, 2);
        let r = Arc::new(res("svc"));
        let t = Instant::now();
        for i in 0..10u8 {
            e.submit(&span(1, i + 1, None, 0, 1), &r);
        }
        let mut bad = span(1, 1, None, 0, 1);
        bad.span_id = correlate::SpanId([0; 8]);
        e.submit(&bad, &r);
        assert!(t.elapsed() < Duration::from_millis(100), "submit blocked");
        let c = e.counters();
        assert_eq!(c.spans_submitted, 11);
        // Five requests of two: two fit in the queue of four spans.
        assert_eq!(c.worker.dropped_queue_full, 6, "{c:?}");
        assert_eq!(c.worker.dropped_invalid, 1);
        // A request hangs; shutdown cuts it short.
        let t = Instant::now();
        let c = e.shutdown(Duration::from_millis(300));
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        let w = c.worker;
        assert_eq!(w.exported, 0);
        assert_eq!(w.dropped_failed + w.dropped_shutdown, 4, "{c:?}");
        assert_eq!((w.queued, w.queued_bytes), (0, 0));
        assert_eq!(c.spans_submitted, w.submitted, "{c:?}");
        assert_eq!(w.submitted, w.dropped(), "{c:?}");
    }

    #[test]
    fn spans_the_queue_cannot_take_are_not_encoded() {
        let (mut e, _silent) = stalled(4, 4);
        let r = Arc::new(res("svc"));
        for i in 0..7u8 {
            e.submit(&span(1, i + 1, None, 0, 1), &r);
        }
        let c = e.counters();
        // The first request of four went to the queue; the next three
        // spans would make a request it cannot take: dropped unencoded.
        assert_eq!(c.spans_pending, 0, "{c:?}");
        assert_eq!(c.worker.dropped_queue_full, 3, "{c:?}");
        assert_eq!(c.spans_submitted, 7);
        e.shutdown(Duration::from_millis(100));
    }

    #[test]
    fn requests_wait_at_most_the_interval() {
        let mut cfg = ExportConfig::new("http://127.0.0.1:9/v1/traces", Protocol::HttpProtobuf);
        cfg.interval = Duration::from_millis(50);
        let mut e = Exporter::start(cfg, Clock::new()).unwrap();
        e.submit(&span(1, 1, None, 0, 1), &Arc::new(res("svc")));
        e.tick();
        assert_eq!(e.counters().spans_pending, 1, "not due yet");
        std::thread::sleep(Duration::from_millis(60));
        e.tick();
        let c = e.counters();
        assert_eq!((c.spans_pending, c.worker.submitted), (0, 1), "{c:?}");
        e.shutdown(Duration::from_millis(100));
    }

    #[test]
    fn starts_and_stops_inside_another_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let cfg = ExportConfig::new("http://127.0.0.1:9", Protocol::Grpc);
            let mut e = Exporter::start(cfg, Clock::new()).unwrap();
            e.submit(&span(1, 1, None, 0, 1), &Arc::new(res("a")));
            let c = e.shutdown(Duration::from_millis(200));
            assert_eq!(c.spans_submitted, 1);
            assert_eq!(c.worker.queued, 0);
        });
    }

    #[test]
    fn bad_config_fails_at_start() {
        let cfg = ExportConfig::new("not a url", Protocol::Grpc);
        let err = crate::error::chain(&Exporter::start(cfg, Clock::new()).err().unwrap());
        assert!(
            err.starts_with("configuring the OTLP export to not a url: gRPC endpoint: "),
            "{err}"
        );
    }
}
