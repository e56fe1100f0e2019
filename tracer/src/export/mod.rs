//! Where finished spans go: OTLP (gRPC or HTTP/protobuf) to a collector,
//! or, with no endpoint configured, the terminal.
//!
//! - [`resource`]: who produced a span. The correlator's spans carry a pid;
//!   [`ResourceCache`](resource::ResourceCache) turns it into the OpenTelemetry resource of that
//!   process (service name, process, host and container attributes), read
//!   from /proc once while the process lives and kept after it exits.
//! - [`service_name`]: which name users know a process by (its
//!   `OTEL_SERVICE_NAME`, the script or application an interpreter runs,
//!   `argv[0]`...), and the user's `--service-name` rules.
//! - [`cmdline`]: credentials out of exported command lines.
//! - [`container`]: `container.id` from a cgroup path.
//! - [`config`]: `--otlp-*`/`--export-*` flags over the standard
//!   `OTEL_EXPORTER_OTLP_*` variables, validated once into an
//!   [`ExportConfig`](config::ExportConfig) (`None`: print to the terminal).
//! - [`encode`]: the [`TraceEncoder`](encode::TraceEncoder): spans as OTLP
//!   protobuf request bodies, batched per resource, written straight from
//!   the spans into reused buffers (usable without any transport, e.g. by
//!   benchmarks).
//! - [`worker`]: the [`Worker`](worker::Worker) every exporter uses (OTLP
//!   spans, Pyroscope profiles): its own thread and runtime, a queue
//!   bounded in items and bytes that never blocks the capture loop,
//!   retries with backoff and jitter, typed counters of every item by how
//!   it left, shutdown with a deadline.
//! - `transport`: OTLP/gRPC and OTLP/HTTP of ready bytes (the worker's
//!   `Deliver` for spans), compression, partial success, server delays.
//! - [`otlp`]: the [`Exporter`](otlp::Exporter): the encoder on the
//!   caller's thread, the worker and transport behind it.
//! - [`console`]: the [`ConsoleSink`](console::ConsoleSink): traces as indented trees once quiet,
//!   or one JSON object per span.
//! - [`sink`]: the [`SpanSink`](sink::SpanSink), all of the above as the
//!   pipeline's last stage.
//!
//! Wiring: flatten [`ExportArgs`](config::ExportArgs) into `run`'s flags
//! and resolve it with the others; in the pipeline, make one
//! `SpanSink::start(export, format, stdout, clock, ResourceCache::from_env()?)`,
//! call `saw_pid` on a new pid's first event (so short-lived processes are
//! described while alive), `span` for each finished span, `tick` from a
//! periodic timer, `counters` in the periodic report and `finish` at exit.
//! No item is re-exported: use the module paths.
pub mod cmdline;
pub mod config;
pub mod console;
pub mod container;
pub mod encode;
pub mod otlp;
pub mod resource;
pub mod service_name;
pub mod sink;
pub(crate) mod transport;
pub mod worker;

#[cfg(test)]
mod receiver_tests;
